//! `bench pubsub --processes`: the publishers and each subscriber run as
//! separate `bus-cli` processes, as a user's programs are, rather than as
//! tasks sharing the bench's runtime (where a subscriber that falls behind
//! slows the publisher's threads too, and a lossless daemon looks like a
//! paced one).
//!
//! The parent starts every subscriber (`bus-cli bench-worker '<json>'`),
//! waits for each to say it is subscribed, then starts the publishers; each
//! worker prints one JSON [`Outcome`] when done. Times are wall-clock
//! nanoseconds, so the processes' figures line up. Pacing, when asked for,
//! travels over the bus: subscribers publish their progress to a subject of
//! the run's own, which publishers read to stay within the flow window.

use std::{
    process::Stdio,
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use libbus::{Address, Bus, ConnectOptions, Delivery, Error, Result, SubscribeOptions};
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncBufReadExt, BufReader};

use super::{
    workload::{check_every, flow_window},
    BenchArgs, Rate, Report,
};

/// Upper bound on a run of the workers.
const RUN_LIMIT: Duration = Duration::from_secs(300);

/// What one worker process does.
#[derive(Debug, Serialize, Deserialize)]
pub struct Worker {
    address: String,
    role: Role,
    size: usize,
    batch: usize,
    /// Subscribers: subscribe lossless.
    lossless: bool,
    /// The flow window publishers keep per subscriber; `None`: unpaced.
    window: Option<u64>,
    /// Subject subscribers report their progress to, when paced.
    progress: String,
}

#[derive(Debug, Serialize, Deserialize)]
enum Role {
    /// Subscriber `index` of `subs`: reads `pattern` until `expected`
    /// messages are delivered or reported lost.
    Sub {
        index: usize,
        pattern: String,
        expected: u64,
    },
    /// Publishes `msgs` messages, cycling through `subjects`, to `subs`
    /// subscribers.
    Pub {
        subjects: Vec<String>,
        msgs: u64,
        pubs: usize,
        subs: usize,
    },
}

/// What a worker reports when done.
#[derive(Debug, Default, Serialize, Deserialize)]
struct Outcome {
    /// Messages published, or received.
    count: u64,
    /// Messages reported lost (subscribers).
    lagged: u64,
    /// When it started publishing, or when it had subscribed (wall clock, ns).
    start_ns: u64,
    /// When it finished.
    end_ns: u64,
    /// Its CPU time, µs.
    cpu_us: u64,
}

fn now_ns() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64)
}

fn io_err(e: impl std::fmt::Display) -> Error {
    Error::Io(std::io::Error::other(e.to_string()))
}

/// Runs P publishers → S subscribers as separate processes against the
/// daemon at `address`, filling `report` as the in-process run does.
pub async fn pubsub(
    address: &Address,
    (pubs, subs): (usize, usize),
    args: &BenchArgs,
    max_pending: u64,
    subjects: &[&str],
    report: &mut Report,
) -> Result<()> {
    if args.duration.is_some() || args.headers > 0 || args.sender || args.tasks > 1 {
        return Err(Error::Protocol(
            "--processes runs a message count, without --duration, --headers, --sender or --tasks".into(),
        ));
    }
    let pattern = if subjects.len() == 1 {
        subjects[0].to_owned()
    } else {
        "bench.routing.*".to_owned()
    };
    let per_pub = args.msgs / pubs as u64;
    let worker = |role| Worker {
        address: address.to_string(),
        role,
        size: args.size,
        batch: args.batch,
        lossless: args.lossless,
        window: (!args.unpaced).then(|| flow_window(max_pending, args.size)),
        progress: format!("bench-progress.{}", std::process::id()),
    };
    let mut sub_procs = Vec::with_capacity(subs);
    for index in 0..subs {
        let mut p = spawn(&worker(Role::Sub {
            index,
            pattern: pattern.clone(),
            expected: per_pub * pubs as u64,
        }))?;
        // Subscribed before anything is published.
        let line = tokio::time::timeout(RUN_LIMIT, p.lines.next_line())
            .await
            .map_err(|_| io_err("a subscriber did not start"))??;
        if line.as_deref() != Some("ready") {
            return Err(io_err(format!("subscriber {index} failed to start: {line:?}")));
        }
        sub_procs.push(p);
    }
    let mut pub_procs = Vec::with_capacity(pubs);
    for _ in 0..pubs {
        pub_procs.push(spawn(&worker(Role::Pub {
            subjects: subjects.iter().map(|s| (*s).to_owned()).collect(),
            msgs: per_pub,
            pubs,
            subs,
        }))?);
    }
    let mut published = Vec::with_capacity(pubs);
    for p in &mut pub_procs {
        published.push(p.outcome().await?);
    }
    let mut received = Vec::with_capacity(subs);
    for p in &mut sub_procs {
        received.push(p.outcome().await?);
    }
    let start = published.iter().map(|o| o.start_ns).min().unwrap_or(0);
    let ns = |end: u64| Duration::from_nanos(end.saturating_sub(start));
    let sent: u64 = published.iter().map(|o| o.count).sum();
    let delivered: u64 = received.iter().map(|o| o.count).sum();
    report.pubs = pubs;
    report.tasks = 1;
    report.subs = subs;
    report.batch = args.batch;
    report.sent = sent;
    report.delivered = delivered;
    report.dropped = received.iter().map(|o| o.lagged).sum();
    report.publish = Some(Rate::new(
        sent,
        args.size,
        ns(published.iter().map(|o| o.end_ns).max().unwrap_or(0)),
    ));
    report.deliver = Some(Rate::new(
        delivered,
        args.size,
        ns(received.iter().map(|o| o.end_ns).max().unwrap_or(0)),
    ));
    report.workers_cpu_us = Some(published.iter().chain(&received).map(|o| o.cpu_us).sum());
    Ok(())
}

/// A running worker: its process and its output lines.
struct Proc {
    child: tokio::process::Child,
    lines: tokio::io::Lines<BufReader<tokio::process::ChildStdout>>,
}

impl Proc {
    /// Its outcome, once it is done (bounded by `RUN_LIMIT`).
    async fn outcome(&mut self) -> Result<Outcome> {
        let line = tokio::time::timeout(RUN_LIMIT, self.lines.next_line())
            .await
            .map_err(|_| io_err("a bench worker did not finish"))??
            .ok_or_else(|| io_err("a bench worker failed (its error is above)"))?;
        let _ = self.child.wait().await;
        serde_json::from_str(&line).map_err(io_err)
    }
}

/// Starts `bus-cli bench-worker` for `w` (killed if dropped).
fn spawn(w: &Worker) -> Result<Proc> {
    let spec = serde_json::to_string(w).map_err(io_err)?;
    let mut child = tokio::process::Command::new(std::env::current_exe()?)
        .arg("bench-worker")
        .arg(spec)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .kill_on_drop(true)
        .spawn()?;
    let stdout = child.stdout.take().ok_or_else(|| io_err("no stdout"))?;
    Ok(Proc {
        child,
        lines: BufReader::new(stdout).lines(),
    })
}

/// `bus-cli bench-worker '<json>'`: runs one worker and prints its outcome.
pub async fn worker(spec: &str) -> Result<()> {
    let w: Worker = serde_json::from_str(spec).map_err(io_err)?;
    let address: Address = w.address.parse()?;
    let bus = Bus::connect_with(&address, ConnectOptions::default().name("bench-worker")).await?;
    let outcome = match &w.role {
        Role::Sub {
            index,
            pattern,
            expected,
        } => subscriber(&bus, &w, *index, pattern, *expected).await?,
        Role::Pub {
            subjects,
            msgs,
            pubs,
            subs,
        } => publisher(&bus, &w, subjects, *msgs, (*pubs, *subs)).await?,
    };
    bus.close().await?;
    println!("{}", serde_json::to_string(&outcome).map_err(io_err)?);
    Ok(())
}

async fn subscriber(bus: &Bus, w: &Worker, index: usize, pattern: &str, expected: u64) -> Result<Outcome> {
    let mut opts = SubscribeOptions::new();
    if w.lossless {
        opts = opts.lossless();
    }
    let mut sub = bus.subscribe_with(pattern, opts).await?;
    println!("ready");
    let report_every = w.window.map_or(u64::MAX, |window| (window / 4).clamp(1, 64));
    let mut until_report = report_every;
    let (mut count, mut lagged) = (0u64, 0u64);
    let mut start_ns = 0;
    let progress = |accounted: u64| {
        let mut body = Vec::with_capacity(16);
        body.extend_from_slice(&(index as u64).to_le_bytes());
        body.extend_from_slice(&accounted.to_le_bytes());
        bus.publish(&w.progress, body)
    };
    while count + lagged < expected {
        let n = if w.batch > 1 {
            match sub.next_batch().await {
                Some(batch) => {
                    let n = batch.iter().count() as u64;
                    let lost = sub.dropped() - lagged;
                    lagged += lost;
                    count += n;
                    n + lost
                }
                None => break,
            }
        } else {
            match sub.next_delivery().await {
                Some(Delivery::Message(_)) => {
                    count += 1;
                    1
                }
                Some(Delivery::Lagged(n)) => {
                    lagged += n;
                    n
                }
                None => break,
            }
        };
        if start_ns == 0 {
            start_ns = now_ns();
        }
        if n >= until_report {
            until_report = report_every;
            progress(count + lagged).await?;
        } else {
            until_report -= n;
        }
    }
    if w.window.is_some() {
        progress(count + lagged).await?;
        bus.flush().await?;
    }
    Ok(Outcome {
        count,
        lagged,
        start_ns,
        end_ns: now_ns(),
        cpu_us: busd::api::cpu_time_us(),
    })
}

/// Publishes `msgs`, as one of `pubs` publishers to `subs` subscribers.
async fn publisher(
    bus: &Bus,
    w: &Worker,
    subjects: &[String],
    msgs: u64,
    (pubs, subs): (usize, usize),
) -> Result<Outcome> {
    // Paced: the subscribers' progress, read from the bus.
    let mut progress = match w.window {
        Some(_) => Some(bus.subscribe(&w.progress).await?),
        None => None,
    };
    let mut accounted = vec![0u64; subs];
    let window = w.window.unwrap_or(u64::MAX);
    let check = w.window.map_or(u64::MAX, check_every);
    let payload = libbus::Bytes::from(vec![0u8; w.size]);
    let batch = w.batch.max(1) as u64;
    let mut subject = (0..subjects.len()).cycle();
    let start_ns = now_ns();
    let (mut n, mut until_check) = (0u64, check);
    while n < msgs {
        let k = batch.min(until_check).min(msgs - n);
        if k == 1 {
            if let Some(i) = subject.next() {
                bus.publish(&subjects[i], &payload).await?;
            }
        } else {
            let batch = subject
                .by_ref()
                .take(k as usize)
                .map(|i| (subjects[i].as_str(), &payload));
            bus.publish_batch(batch).await?;
        }
        n += k;
        until_check -= k;
        if until_check == 0 {
            until_check = check;
            if let Some(progress) = &mut progress {
                // Within the window of the slowest subscriber, counting the
                // other publishers as this one (bounded: a subscriber that
                // died stops the run at RUN_LIMIT).
                let all = n * pubs as u64;
                while all.saturating_sub(accounted.iter().copied().min().unwrap_or(0)) > window {
                    let Some(m) = tokio::time::timeout(RUN_LIMIT, progress.next())
                        .await
                        .map_err(|_| io_err("no progress from the subscribers"))?
                    else {
                        return Err(io_err("progress subscription ended"));
                    };
                    let p = m.payload();
                    if let (Some(i), Some(a)) = (p.get(..8), p.get(8..16)) {
                        let i = u64::from_le_bytes(i.try_into().unwrap_or_default()) as usize;
                        if let Some(slot) = accounted.get_mut(i) {
                            *slot = (*slot).max(u64::from_le_bytes(a.try_into().unwrap_or_default()));
                        }
                    }
                }
            }
        }
    }
    bus.flush().await?;
    Ok(Outcome {
        count: n,
        lagged: 0,
        start_ns,
        end_ns: now_ns(),
        cpu_us: busd::api::cpu_time_us(),
    })
}
