//! The bus side of `bus-cli bench`: workloads over libbus against an
//! in-process or external daemon.

use std::{
    sync::{
        atomic::{AtomicU64, Ordering::Relaxed},
        Arc,
    },
    time::{Duration, Instant},
};

use hdrhistogram::Histogram;
use indicatif::{ProgressBar, ProgressStyle};
use libbus::{proto::api, Address, Bus, ConnectOptions, Delivery, Error, Messages, Result, Subscription};

use super::{BenchArgs, Latency, Mode, Rate, Report};

/// Subject of pubsub and fanout runs.
pub const SUBJECT: &str = "bench.pubsub";
/// Upper bound on any one benchmark phase.
const PHASE_LIMIT: Duration = Duration::from_secs(300);

fn io_err(e: impl std::fmt::Display) -> Error {
    Error::Io(std::io::Error::other(e.to_string()))
}

async fn connect(address: &Address, name: String) -> Result<Bus> {
    Bus::connect_with(address, ConnectOptions::default().name(name)).await
}

/// How a report names a daemon the bench started itself.
pub const IN_PROCESS: &str = "in-process";

/// A daemon for the run: started in-process, or an external one.
pub struct Target {
    /// Where it listens.
    pub address: Address,
    /// How the report names it.
    pub desc: String,
    /// The in-process daemon and its socket's directory, kept alive for the
    /// whole run (the baselines after the workload use it too).
    pub own: Option<(busd::Daemon, tempfile::TempDir)>,
}

impl Target {
    /// `address`, or a new in-process daemon on a socket in a temp dir.
    pub fn new(address: Option<Address>) -> Result<Target> {
        if let Some(a) = address {
            return Ok(Target {
                desc: format!("external at {a}"),
                address: a,
                own: None,
            });
        }
        let dir = tempfile::tempdir()?;
        let mut config = busd::Config::with_socket(dir.path().join("busd.sock"));
        config.max_subscriptions = usize::MAX;
        let daemon = busd::Daemon::start(config).map_err(io_err)?;
        Ok(Target {
            address: daemon.address().clone(),
            desc: IN_PROCESS.to_owned(),
            own: Some((daemon, dir)),
        })
    }

    /// The daemon's `$BUS.api.info` record, over a connection of its own.
    pub async fn info(&self) -> Result<api::ServerInfo> {
        let probe = connect(&self.address, "bench-probe".into()).await?;
        let info = probe.request(api::INFO, []).await?.decode()?;
        probe.close().await?;
        Ok(info)
    }
}

/// The daemon's `max_pending` (bytes queued per connection), from its info.
pub fn max_pending(info: &api::ServerInfo) -> u64 {
    limit(info, "max_pending").unwrap_or(8 << 20)
}

fn limit(info: &api::ServerInfo, name: &str) -> Option<u64> {
    info.limits.iter().find(|(n, _)| n == name).map(|(_, v)| *v)
}

/// Messages of `size` bytes a publisher keeps in flight per subscriber: half
/// of `max_pending`, so a run measures the sustained rate with zero loss
/// rather than the daemon's drop rate.
pub fn flow_window(max_pending: u64, size: usize) -> u64 {
    let frame_cost = (size + 64) as u64;
    (max_pending / 2 / frame_cost).max(1)
}

/// How often, in messages, a publisher within `window` checks its
/// subscribers' progress: several times per window, so it never waits on a
/// count a subscriber has not yet reached and reported.
pub fn check_every(window: u64) -> u64 {
    (window / 4).clamp(1, 256)
}

/// Runs the chosen workload against `target`.
pub async fn run(args: &BenchArgs, target: &Target) -> Result<Report> {
    let address = target.address.clone();
    let info = target.info().await?;
    let max_pending = max_pending(&info);
    let max_subs = limit(&info, "max_subscriptions").unwrap_or(10_000).max(1);
    let cpu_before = (info.cpu_us, busd::api::cpu_time_us());

    let mut report = Report {
        mode: Some(args.mode),
        daemon: target.desc.clone(),
        size: args.size,
        ..Report::default()
    };
    match args.mode {
        Mode::Pubsub | Mode::Fanout => {
            let pubs = if args.mode == Mode::Fanout {
                1
            } else {
                args.pubs.max(1)
            };
            let subs = args
                .subs
                .unwrap_or(if args.mode == Mode::Fanout { 4 } else { 1 })
                .max(1);
            let subjects = if args.subjects == 1 {
                vec![SUBJECT]
            } else {
                numbered_subjects(args.subjects)
            };
            report.subjects = subjects.len();
            report.headers = args.headers;
            report.sender = args.sender;
            if args.headers > 0 && args.batch > 1 {
                return Err(libbus::Error::Protocol(
                    "--headers goes with --batch 1 (publish_batch sends no headers)".into(),
                ));
            }
            report.unpaced = args.unpaced;
            report.lossless = args.lossless;
            report.memfd = args.memfd;
            if args.memfd && (args.batch > 1 || args.processes) {
                return Err(Error::Protocol(
                    "--memfd goes with --batch 1, in one process".into(),
                ));
            }
            report.processes = args.processes;
            if args.processes {
                super::procs::pubsub(&address, (pubs, subs), args, max_pending, &subjects, &mut report)
                    .await?;
            } else {
                pubsub(&address, pubs, subs, args, max_pending, &subjects, &mut report).await?;
            }
        }
        Mode::Reqrep => reqrep(&address, args, &mut report).await?,
        Mode::Routing => routing(&address, args, max_pending, max_subs, &mut report).await?,
        Mode::Conns => conns(&address, args.conns, &mut report).await?,
        Mode::Unsubscribe => unsubscribe(target, args.subscriptions, max_subs, &mut report).await?,
        Mode::Upstream => {
            if target.own.is_some() {
                return Err(Error::Protocol(
                    "bench upstream measures two external busd hosts: give --address, --to and --nats".into(),
                ));
            }
            super::upstream::run(args, &address, &mut report).await?
        }
    }
    if matches!(args.mode, Mode::Pubsub | Mode::Fanout | Mode::Reqrep) {
        let info = target.info().await?;
        let own = busd::api::cpu_time_us().saturating_sub(cpu_before.1);
        let messages = if args.mode == Mode::Reqrep {
            report.sent
        } else {
            report.delivered
        };
        let per_msg = |us: u64| us as f64 * 1000.0 / messages.max(1) as f64;
        // In-process, the daemon's time is part of this process's.
        if target.own.is_none() {
            report.cpu_daemon_ns_per_msg = Some(per_msg(info.cpu_us.saturating_sub(cpu_before.0)));
        }
        report.cpu_clients_ns_per_msg = Some(per_msg(own + report.workers_cpu_us.unwrap_or(0)));
    }
    Ok(report)
}

/// Subscribes `n` times to one pattern (over as many connections as
/// `max_subscriptions` needs), then drops them all and times until the
/// daemon counts them gone.
async fn unsubscribe(target: &Target, n: usize, max_subs: u64, report: &mut Report) -> Result<()> {
    let per_conn = (max_subs as usize).min(50_000);
    let before = target.info().await?.subscriptions;
    let mut holders = Vec::new();
    let mut tasks = Vec::new();
    for c in 0..n.div_ceil(per_conn) {
        let bus = connect(&target.address, format!("bench-unsub-{c}")).await?;
        let count = per_conn.min(n - c * per_conn);
        let b = bus.clone();
        tasks.push(tokio::spawn(async move {
            let mut subs = Vec::with_capacity(count);
            for _ in 0..count {
                subs.push(b.subscribe("bench.unsubscribe.shared").await?);
            }
            Ok::<_, Error>(subs)
        }));
        holders.push(bus);
    }
    let mut kept = Vec::new();
    for t in tasks {
        kept.push(t.await.map_err(io_err)??);
    }
    let start = Instant::now();
    drop(kept);
    for bus in &holders {
        bus.flush().await?;
    }
    let deadline = start + PHASE_LIMIT;
    loop {
        let now = target.info().await?.subscriptions;
        if now <= before {
            break;
        }
        if Instant::now() >= deadline {
            return Err(io_err(format!("{} subscriptions still there", now - before)));
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    report.unsubscribe_ms = Some(start.elapsed().as_secs_f64() * 1000.0);
    report.extra_subscriptions = Some(n);
    drop(holders);
    Ok(())
}

/// Subscribes to a subject the run does not use and drops it again,
/// `per_s` times a second until aborted (or for [`PHASE_LIMIT`]): the
/// subscription changes of other clients a busy bus sees.
async fn churn(address: Address, per_s: u32) -> Result<()> {
    let bus = connect(&address, "bench-churn".into()).await?;
    let every = Duration::from_secs(1) / per_s.max(1);
    let mut tick = tokio::time::interval(every);
    let end = Instant::now() + PHASE_LIMIT;
    let mut i = 0u64;
    while Instant::now() < end {
        tick.tick().await;
        let sub = bus.subscribe(&format!("bench.churn.{}", i % 64)).await?;
        drop(sub);
        i += 1;
    }
    Ok(())
}

fn progress(total: u64, what: &str) -> ProgressBar {
    let bar = ProgressBar::new(total);
    if let Ok(style) = ProgressStyle::with_template("{msg} [{elapsed_precise}] {wide_bar} {pos}/{len}") {
        bar.set_style(style);
    }
    bar.set_message(what.to_owned());
    bar
}

/// One subscriber's count: messages received plus messages reported lost,
/// i.e. how far through the stream it is, published to `counter` every
/// `report_every` messages (an atomic per message would be a cost of the
/// bench, not of the bus) and on every loss notice, waking publishers that
/// wait on flow control.
struct Tally {
    counter: Arc<AtomicU64>,
    progress: Arc<tokio::sync::Notify>,
    report_every: u64,
    /// Messages until the next report (a countdown: no division per message).
    until_report: u64,
    received: u64,
    lagged: u64,
    /// Read one byte of each 4 KiB page of every payload (`--memfd`: a
    /// mapped payload costs its page faults only when read).
    touch: bool,
}

impl Tally {
    fn accounted(&self) -> u64 {
        self.received + self.lagged
    }

    /// Counts one delivery; false once the subscription has ended.
    fn record(&mut self, d: Option<Delivery>) -> bool {
        match d {
            Some(Delivery::Message(m)) => {
                if self.touch {
                    let sum = m.payload().iter().step_by(4096).fold(0u8, |a, b| a ^ b);
                    std::hint::black_box(sum);
                }
                self.received += 1;
                self.until_report -= 1;
                if self.until_report == 0 {
                    self.until_report = self.report_every;
                    self.report();
                }
            }
            Some(Delivery::Lagged(n)) => {
                self.lagged += n;
                self.report();
            }
            None => return false,
        }
        true
    }

    /// Counts a batch of deliveries, reading each message, and the loss
    /// notices the subscription has counted (`dropped`, its total); false
    /// once the subscription has ended.
    fn record_batch(&mut self, batch: Option<Messages>, dropped: u64) -> bool {
        let Some(batch) = batch else {
            return false;
        };
        // Walking the batch decodes each message, as reading it would.
        let n = batch.iter().count() as u64;
        self.received += n;
        let lost = dropped - self.lagged;
        self.lagged = dropped;
        if n >= self.until_report || lost > 0 {
            self.until_report = self.report_every;
            self.report();
        } else {
            self.until_report -= n;
        }
        true
    }

    /// Takes and counts the next delivery (`batched`: all that has arrived);
    /// false once the subscription has ended.
    async fn take(&mut self, sub: &mut Subscription, batched: bool) -> bool {
        if batched {
            let batch = sub.next_batch().await;
            self.record_batch(batch, sub.dropped())
        } else {
            self.record(sub.next_delivery().await)
        }
    }

    fn report(&self) {
        self.counter.store(self.accounted(), Relaxed);
        self.progress.notify_waiters();
    }
}

/// P publishers → S subscribers; publishers cycle through `subjects`, which
/// the subscribers' pattern must all match, within [`flow_window`].
async fn pubsub(
    address: &Address,
    pubs: usize,
    subs: usize,
    args: &BenchArgs,
    max_pending: u64,
    subjects: &[&'static str],
    report: &mut Report,
) -> Result<()> {
    let pattern = if subjects.len() == 1 {
        subjects[0].to_owned()
    } else {
        "bench.routing.*".to_owned()
    };
    let window = if args.unpaced {
        u64::MAX
    } else if args.memfd {
        // Each message holds a descriptor (and its payload's memory) until
        // read: a window within the descriptor quotas, and 256 MiB.
        ((256 << 20) / args.size.max(1) as u64).clamp(4, 64)
    } else {
        flow_window(max_pending, args.size)
    };
    let touch = args.memfd;
    let check_every = check_every(window);
    // Subscribers publish their progress every `report_every` messages (an
    // atomic per message would be a cost of the bench, not of the bus). It
    // stays well under `window`, so flow control never waits on a count
    // that is not yet reported.
    let report_every = (window / 4).clamp(1, 64);

    // Per subscriber: messages received plus messages reported lost (Lagged),
    // i.e. how far through the stream it is.
    let accounted: Vec<Arc<AtomicU64>> = (0..subs).map(|_| Arc::new(AtomicU64::new(0))).collect();
    let sent = Arc::new(AtomicU64::new(0));
    let (done_tx, done_rx) = tokio::sync::watch::channel(false);
    let mut sub_tasks = Vec::new();
    let per_pub = args.msgs / pubs as u64;
    // What each subscriber gets, when the run is a message count.
    let expected = args.duration.is_none().then_some(per_pub * pubs as u64);
    let start_gate = Arc::new(tokio::sync::Barrier::new(subs + pubs * args.tasks + 1));
    let batched = args.batch > 1;
    // Subscribers' progress reports wake publishers waiting on flow control.
    let progressed = Arc::new(tokio::sync::Notify::new());
    for (i, counter) in accounted.iter().enumerate() {
        let bus = connect(address, format!("bench-sub-{i}")).await?;
        let mut opts = libbus::SubscribeOptions::new();
        if args.sender {
            opts = opts.with_sender();
        }
        if args.lossless {
            opts = opts.lossless();
        }
        let mut sub = bus.subscribe_with(&pattern, opts).await?;
        let (counter, sent, gate) = (counter.clone(), sent.clone(), start_gate.clone());
        let progress = progressed.clone();
        let mut done_rx = done_rx.clone();
        sub_tasks.push(tokio::spawn(async move {
            gate.wait().await;
            let mut tally = Tally {
                counter,
                progress,
                report_every,
                until_report: report_every,
                received: 0,
                lagged: 0,
                touch,
            };
            if let Some(expected) = expected {
                // With a message count, each subscriber knows when it has
                // all (every message is delivered or reported lost): it runs
                // the plain loop an application would, nothing else polled.
                // The loop awaits the subscription directly: a nested
                // future per message (`take`) cost 28 instructions of ~795
                // (callgrind, both clients), a cost of the bench.
                if batched {
                    while tally.accounted() < expected
                        && tally.record_batch(sub.next_batch().await, sub.dropped())
                    {}
                } else {
                    while tally.accounted() < expected && tally.record(sub.next_delivery().await) {}
                }
            } else {
                // Finishes on the publishers' "done" signal plus its own
                // count: no polling timer, no clock read per message. One
                // registration for the whole run, polled only when no
                // delivery is ready.
                let done = done_rx.changed();
                tokio::pin!(done);
                let mut publishers_done = false;
                while !publishers_done || tally.accounted() < sent.load(Relaxed) {
                    tokio::select! {
                        biased;
                        more = tally.take(&mut sub, batched) => if !more {
                            break;
                        },
                        changed = &mut done, if !publishers_done => match changed {
                            Ok(()) => publishers_done = true,
                            Err(_) => break,
                        },
                    }
                    if publishers_done {
                        tally.report();
                    }
                }
            }
            tally.report();
            let Tally { received, lagged, .. } = tally;
            let last = Instant::now();
            drop(bus);
            (received, lagged, last)
        }));
    }

    let payload = libbus::Bytes::from(vec![0u8; args.size]);
    let headers: libbus::Headers = (0..args.headers)
        .map(|i| (format!("Bench-{i}"), format!("value-{i}")))
        .collect();
    let batch = args.batch as u64;
    let mut pub_tasks = Vec::new();
    // Each publisher's connection is shared by `tasks` tasks (clones of one
    // `Bus`), which split its messages.
    let tasks = args.tasks as u64;
    for i in 0..pubs {
        let shared_bus = connect(address, format!("bench-pub-{i}")).await?;
        for t in 0..tasks {
            let per_pub = per_pub / tasks + u64::from(t < per_pub % tasks);
            let bus = shared_bus.clone();
            let (sent, gate, accounted) = (sent.clone(), start_gate.clone(), accounted.clone());
            let progress = progressed.clone();
            let (payload, subjects, headers) = (payload.clone(), subjects.to_vec(), headers.clone());
            let (duration, memfd) = (args.duration, args.memfd);
            pub_tasks.push(tokio::spawn(async move {
                gate.wait().await;
                let start = Instant::now();
                let deadline = start + duration.unwrap_or(PHASE_LIMIT);
                let mut n = 0u64;
                let mut past_deadline = false;
                // A cycle and a countdown rather than `%`: a division per
                // message showed in profiles as a cost of the bench, not of the bus.
                let mut subject = (0..subjects.len()).cycle();
                let mut until_check = check_every;
                while (duration.is_some() || n < per_pub) && !past_deadline {
                    let left = if duration.is_some() { u64::MAX } else { per_pub - n };
                    let k = batch.min(until_check).min(left);
                    if batch == 1 {
                        if let Some(i) = subject.next() {
                            if memfd {
                                bus.publish_memfd(subjects[i], &payload).await?;
                            } else if headers.is_empty() {
                                bus.publish(subjects[i], &payload).await?;
                            } else {
                                bus.publish_with_headers(subjects[i], &headers, &payload).await?;
                            }
                        }
                    } else {
                        let msgs = subject.by_ref().take(k as usize).map(|i| (subjects[i], &payload));
                        bus.publish_batch(msgs).await?;
                    }
                    n += k;
                    until_check -= k;
                    if until_check == 0 {
                        until_check = check_every;
                        // The clock is read here, not per message.
                        past_deadline = Instant::now() >= deadline;
                        let total = sent.fetch_add(check_every, Relaxed) + check_every;
                        // Flow control: stay within the subscribers' bound,
                        // woken by their progress reports (a fixed sleep left
                        // the pipeline idle in bursts).
                        loop {
                            let progressed = progress.notified();
                            tokio::pin!(progressed);
                            progressed.as_mut().enable();
                            let slowest = accounted.iter().map(|c| c.load(Relaxed)).min().unwrap_or(0);
                            if total.saturating_sub(slowest) <= window || Instant::now() >= deadline {
                                break;
                            }
                            // Bounded: a subscriber that died wakes nobody.
                            let _ = tokio::time::timeout(Duration::from_millis(10), progressed).await;
                        }
                    }
                }
                sent.fetch_add(check_every - until_check, Relaxed);
                bus.flush().await?;
                Ok::<_, Error>((n, start.elapsed()))
            }));
        }
    }

    let total_expected = if args.duration.is_some() {
        0
    } else {
        per_pub * pubs as u64 * subs as u64
    };
    let bar = progress(total_expected, "delivered");
    let ticker = {
        let (bar, accounted) = (bar.clone(), accounted.clone());
        tokio::spawn(async move {
            loop {
                bar.set_position(accounted.iter().map(|c| c.load(Relaxed)).sum());
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        })
    };
    let churn = match args.churn {
        0 => None,
        per_s => Some(tokio::spawn(churn(address.clone(), per_s))),
    };
    start_gate.wait().await;
    let start = Instant::now();
    let mut published = 0;
    let mut pub_elapsed = Duration::ZERO;
    for t in pub_tasks {
        let (n, e) = t.await.map_err(io_err)??;
        published += n;
        pub_elapsed = pub_elapsed.max(e);
    }
    if let Some(c) = churn {
        c.abort();
    }
    let _ = done_tx.send(true);
    let (mut delivered, mut lagged) = (0, 0);
    let mut last = start;
    for t in sub_tasks {
        // Every message is either delivered or reported in a Lagged notice, so
        // subscribers finish; the timeout only guards against a broken daemon.
        let (r, l, at) = tokio::time::timeout(PHASE_LIMIT, t)
            .await
            .map_err(|_| io_err("subscribers did not finish"))?
            .map_err(io_err)?;
        delivered += r;
        lagged += l;
        last = last.max(at);
    }
    ticker.abort();
    bar.finish_and_clear();
    report.pubs = pubs;
    report.tasks = args.tasks;
    report.subs = subs;
    report.batch = args.batch;
    report.sent = published;
    report.delivered = delivered;
    report.dropped = lagged;
    report.publish = Some(Rate::new(published, args.size, pub_elapsed));
    report.deliver = Some(Rate::new(delivered, args.size, last.duration_since(start)));
    Ok(())
}

/// Request/reply: one responder, `--requesters` concurrent sequential requesters.
async fn reqrep(address: &Address, args: &BenchArgs, report: &mut Report) -> Result<()> {
    let responder = connect(address, "bench-responder".into()).await?;
    let mut requests = responder.subscribe("bench.echo").await?;
    let serve = tokio::spawn(async move {
        while let Some(m) = requests.next().await {
            if m.respond(m.payload()).await.is_err() {
                break;
            }
        }
    });
    let requesters = args.requesters.max(1);
    let per = (args.msgs / requesters as u64).max(1);
    let payload = libbus::Bytes::from(vec![0u8; args.size]);
    let bar = progress(
        if args.duration.is_some() {
            0
        } else {
            per * requesters as u64
        },
        "requests",
    );
    let mut tasks = Vec::new();
    let start = Instant::now();
    for i in 0..requesters {
        let bus = connect(address, format!("bench-requester-{i}")).await?;
        let (payload, bar, duration) = (payload.clone(), bar.clone(), args.duration);
        tasks.push(tokio::spawn(async move {
            let mut hist = Histogram::<u64>::new_with_bounds(1, 60_000_000_000, 3).map_err(io_err)?;
            let deadline = Instant::now() + duration.unwrap_or(PHASE_LIMIT);
            let mut n = 0u64;
            while (duration.is_some() || n < per) && Instant::now() < deadline {
                let t = Instant::now();
                bus.request("bench.echo", &payload).await?;
                let _ = hist.record(t.elapsed().as_nanos().max(1) as u64);
                n += 1;
                if n % 1024 == 0 {
                    bar.inc(1024);
                }
            }
            Ok::<_, Error>(hist)
        }));
    }
    let mut all = Histogram::<u64>::new_with_bounds(1, 60_000_000_000, 3).map_err(io_err)?;
    for t in tasks {
        let h = t.await.map_err(io_err)??;
        all.add(&h).map_err(io_err)?;
    }
    let elapsed = start.elapsed();
    bar.finish_and_clear();
    serve.abort();
    report.pubs = requesters;
    report.subs = 1;
    report.sent = all.len();
    report.delivered = all.len();
    report.requests_per_s = Some(all.len() as f64 / elapsed.as_secs_f64());
    report.latency = Some(Latency::from(&all));
    Ok(())
}

/// `n` subjects `bench.routing.0` ... (all matched by `bench.routing.*`),
/// leaked: a bench run makes them once.
fn numbered_subjects(n: usize) -> Vec<&'static str> {
    (0..n)
        .map(|i| &*Box::leak(format!("bench.routing.{i}").into_boxed_str()))
        .collect()
}

/// 1 → 1 publish rate over 4096 distinct subjects (more than a reader's route
/// cache holds, so the trie is consulted), without and then with
/// `--subscriptions` extra non-matching subscriptions.
async fn routing(
    address: &Address,
    args: &BenchArgs,
    max_pending: u64,
    max_subs: u64,
    report: &mut Report,
) -> Result<()> {
    let subjects = numbered_subjects(4096);
    let mut without = Report::default();
    pubsub(address, 1, 1, args, max_pending, &subjects, &mut without).await?;

    let extra = args.subscriptions;
    let wildcard = args.wildcard;
    let per_conn = (max_subs as usize).min(50_000);
    let mut holders = Vec::new();
    let mut tasks = Vec::new();
    for c in 0..extra.div_ceil(per_conn) {
        let bus = connect(address, format!("bench-noise-{c}")).await?;
        let range = c * per_conn..((c + 1) * per_conn).min(extra);
        let b = bus.clone();
        tasks.push(tokio::spawn(async move {
            let mut subs = Vec::with_capacity(range.len());
            for i in range {
                // Literal, or a wildcard the trie must follow for every
                // subject of the run (`*` matches `routing`).
                let pattern = if wildcard {
                    format!("bench.*.n{i}")
                } else {
                    format!("bench.routing.{i}.x")
                };
                subs.push(b.subscribe(&pattern).await?);
            }
            Ok::<_, Error>(subs)
        }));
        holders.push(bus);
    }
    let mut kept = Vec::new();
    for t in tasks {
        kept.push(t.await.map_err(io_err)??);
    }
    pubsub(address, 1, 1, args, max_pending, &subjects, report).await?;
    report.rate_without_extra_subs = without.publish;
    report.extra_subscriptions = Some(extra);
    if let (Some(with), Some(wo)) = (report.publish, without.publish) {
        report.ratio(
            "publish_with_extra / publish_without",
            with.msgs_per_s / wo.msgs_per_s,
        );
    }
    drop(kept);
    drop(holders);
    Ok(())
}

/// Daemon RSS (from `$BUS.api.info`) before and while holding `n` idle,
/// handshaken connections. Memory shared with the daemon's own process makes
/// this meaningful only against an external daemon.
async fn conns(address: &Address, n: usize, report: &mut Report) -> Result<()> {
    let probe = connect(address, "bench-probe".into()).await?;
    let rss = |info: api::ServerInfo| info.rss_bytes;
    let before = rss(probe.request(api::INFO, []).await?.decode()?);
    let bar = progress(n as u64, "connections");
    let mut held = Vec::with_capacity(n);
    for i in 0..n {
        held.push(connect(address, format!("bench-idle-{i}")).await?);
        bar.inc(1);
    }
    bar.finish_and_clear();
    probe.flush().await?;
    let after = rss(probe.request(api::INFO, []).await?.decode()?);
    report.subs = n;
    report.rss_before = Some(before);
    report.rss_after = Some(after);
    report.rss_per_conn = Some(after.saturating_sub(before) as f64 / n.max(1) as f64);
    drop(held);
    Ok(())
}
