//! `bus-cli bench upstream`: 1 → 1 across two busd hosts joined through
//! one NATS server (publisher on `--address`, subscriber on `--to`), and in
//! the same round the same flow between two native async-nats clients
//! through that server (`--nats`). Both keep the same window of messages in
//! flight, so each measures a sustained rate without loss rather than how
//! fast something drops.

use std::{
    sync::{
        atomic::{AtomicU64, Ordering::Relaxed},
        Arc,
    },
    time::{Duration, Instant},
};

use futures_util::StreamExt;
use libbus::{Address, Bus, ConnectOptions, Error, Result};

use super::{BenchArgs, Rate, Report};

/// Where the data goes; probes go to `.probe` under the same pattern.
const DATA: &str = "bench.upstream.data";
const PROBE: &str = "bench.upstream.probe";
const PATTERN: &str = "bench.upstream.>";
/// Messages in flight: publishers wait when this many are unreceived.
const WINDOW: u64 = 8192;
/// A run ends early if nothing arrives for this long (what is missing is
/// reported as lost).
const STALL: Duration = Duration::from_secs(3);
/// Longest wait for a subscription to be known upstream.
const CONVERGE: Duration = Duration::from_secs(10);

fn err(e: impl std::fmt::Display) -> Error {
    Error::Io(std::io::Error::other(e.to_string()))
}

/// One measured round: bus, then native.
pub async fn run(args: &BenchArgs, from: &Address, report: &mut Report) -> Result<()> {
    let (Some(to), Some(nats)) = (&args.to, &args.nats) else {
        return Err(Error::Protocol(
            "bench upstream needs --address (the publisher's busd), --to (the subscriber's busd) and --nats (their server)".into(),
        ));
    };
    let to: Address = to.parse()?;
    report.pubs = 1;
    report.subs = 1;
    let n = args.msgs;
    let daemons = || async { Ok::<_, Error>(cpu_us(from).await? + cpu_us(&to).await?) };
    let (daemons_before, own_before) = (daemons().await?, busd::api::cpu_time_us());
    let (received, elapsed) = bus(from, &to, n, args.size).await?;
    let per_msg = |us: u64| us as f64 * 1000.0 / received.max(1) as f64;
    report.cpu_daemon_ns_per_msg = Some(per_msg(daemons().await?.saturating_sub(daemons_before)));
    report.cpu_clients_ns_per_msg = Some(per_msg(busd::api::cpu_time_us().saturating_sub(own_before)));
    report.sent = n;
    report.delivered = received;
    report.dropped = n - received;
    report.deliver = Some(Rate::new(received, args.size, elapsed));
    let own_before = busd::api::cpu_time_us();
    let (native_received, native_elapsed) = native(nats, n, args.size).await?;
    let native = Rate::new(native_received, args.size, native_elapsed);
    report.baseline_nats = Some(native);
    report.baseline_nats_cpu_ns_per_msg = Some(
        busd::api::cpu_time_us().saturating_sub(own_before) as f64 * 1000.0 / native_received.max(1) as f64,
    );
    if let Some(d) = report.deliver {
        report.ratio(
            "deliver_msgs_per_s / native_nats",
            d.msgs_per_s / native.msgs_per_s,
        );
    }
    Ok(())
}

/// A daemon's CPU time so far (`$BUS.api.info`), in microseconds.
async fn cpu_us(address: &Address) -> Result<u64> {
    let probe = Bus::connect_with(address, ConnectOptions::default().name("bench-probe")).await?;
    let info: libbus::proto::api::ServerInfo = probe.request(libbus::proto::api::INFO, []).await?.decode()?;
    probe.close().await?;
    Ok(info.cpu_us)
}

/// Counts what a subscriber received, for the publisher's window.
#[derive(Default)]
struct Progress {
    received: AtomicU64,
    notify: tokio::sync::Notify,
}

impl Progress {
    fn add(&self) {
        let r = self.received.fetch_add(1, Relaxed) + 1;
        if r % 256 == 0 {
            self.notify.notify_waiters();
        }
    }

    /// Waits while `sent` is a window ahead of what was received.
    async fn room(&self, sent: u64) {
        while sent >= self.received.load(Relaxed) + WINDOW {
            let wait = self.notify.notified();
            if sent < self.received.load(Relaxed) + WINDOW {
                break;
            }
            let _ = tokio::time::timeout(Duration::from_millis(5), wait).await;
        }
    }

    /// Waits until `n` arrived, or nothing did for [`STALL`]: how many did.
    async fn finish(&self, n: u64) -> u64 {
        let mut last = (self.received.load(Relaxed), Instant::now());
        loop {
            let r = self.received.load(Relaxed);
            if r >= n {
                return r;
            }
            if r != last.0 {
                last = (r, Instant::now());
            } else if last.1.elapsed() > STALL {
                return r;
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    }
}

/// The bus path: a libbus publisher on `from`, a subscriber on `to`.
async fn bus(from: &Address, to: &Address, n: u64, size: usize) -> Result<(u64, Duration)> {
    let publisher = Bus::connect_with(from, ConnectOptions::default().name("bench-upstream-pub")).await?;
    let subscriber = Bus::connect_with(to, ConnectOptions::default().name("bench-upstream-sub")).await?;
    let mut sub = subscriber.subscribe(PATTERN).await?;
    // Until a probe crosses, the subscription is not yet known upstream.
    let t = Instant::now();
    loop {
        publisher.publish(PROBE, []).await?;
        if let Ok(Some(_)) = tokio::time::timeout(Duration::from_millis(20), sub.next()).await {
            break;
        }
        if t.elapsed() > CONVERGE {
            return Err(err(
                "no probe crossed the upstream within 10 s: are both hosts joined to --nats?",
            ));
        }
    }
    let progress = Arc::new(Progress::default());
    let counting = progress.clone();
    let reader = tokio::spawn(async move {
        while let Some(m) = sub.next().await {
            if m.subject() == DATA {
                counting.add();
            }
        }
    });
    let payload = vec![0u8; size];
    let start = Instant::now();
    for i in 0..n {
        progress.room(i).await;
        publisher.publish(DATA, &payload).await?;
    }
    publisher.flush().await?;
    let received = progress.finish(n).await;
    let elapsed = start.elapsed();
    reader.abort();
    publisher.close().await?;
    subscriber.close().await?;
    Ok((received, elapsed))
}

/// The same flow between two async-nats clients through `url`.
async fn native(url: &str, n: u64, size: usize) -> Result<(u64, Duration)> {
    let publisher = async_nats::connect(url).await.map_err(err)?;
    let subscriber = async_nats::connect(url).await.map_err(err)?;
    let mut sub = subscriber.subscribe(PATTERN).await.map_err(err)?;
    subscriber.flush().await.map_err(err)?;
    let t = Instant::now();
    loop {
        publisher.publish(PROBE, "".into()).await.map_err(err)?;
        if let Ok(Some(_)) = tokio::time::timeout(Duration::from_millis(20), sub.next()).await {
            break;
        }
        if t.elapsed() > CONVERGE {
            return Err(err("no probe crossed the NATS server within 10 s"));
        }
    }
    let progress = Arc::new(Progress::default());
    let counting = progress.clone();
    let reader = tokio::spawn(async move {
        while let Some(m) = sub.next().await {
            if m.subject.as_str() == DATA {
                counting.add();
            }
        }
    });
    let payload = bytes::Bytes::from(vec![0u8; size]);
    let start = Instant::now();
    for i in 0..n {
        progress.room(i).await;
        publisher.publish(DATA, payload.clone()).await.map_err(err)?;
    }
    publisher.flush().await.map_err(err)?;
    let received = progress.finish(n).await;
    let elapsed = start.elapsed();
    reader.abort();
    Ok((received, elapsed))
}
