//! `bus-cli bench`: throughput and latency of the bus, side by side with a raw
//! Unix-socket baseline measured in the same run (`--baseline`).
//!
//! Modes: `pubsub` (P publishers → S subscribers on one subject), `fanout`
//! (1 → N), `reqrep` (request/reply, sequential per requester), `routing`
//! (1 → 1 publish rate with K extra non-matching subscriptions vs with none).
//! `--baseline` adds a raw stream, a raw relay (the same bytes forwarded by a
//! thread, the floor of any broker) and a raw ping-pong; for pubsub 1 → 1 on
//! a Unix socket also raw clients through the daemon (the same frames between
//! a blocking publisher and subscriber, no libbus), which splits the bus's
//! cost between the daemon and the client library.
//! By default it starts its own daemon in-process; `--address` measures an
//! external `busd` (the honest mode: the daemon in its own process).

mod baseline;
pub mod procs;
mod raw_clients;
mod upstream;
mod workload;

use std::time::Duration;

use clap::{Args, ValueEnum};
use hdrhistogram::Histogram;
use libbus::{codec, proto};
use serde::Serialize;

/// What to measure.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// P publishers → S subscribers on one subject.
    Pubsub,
    /// 1 publisher → N subscribers (`--subs`).
    Fanout,
    /// Request/reply with a responder service; `--requesters` run concurrently.
    Reqrep,
    /// Publish rate with `--subscriptions` non-matching subscriptions vs with none.
    Routing,
    /// Daemon memory per idle connection, holding `--conns` connections.
    Conns,
    /// Time to remove `--subscriptions` subscriptions that share one
    /// pattern (run it with 10,000 and 100,000 to see how it scales).
    Unsubscribe,
    /// 1 → 1 across two busd hosts joined through one NATS server
    /// (publisher on `--address`, subscriber on `--to`), against two
    /// native NATS clients through the same server (`--nats`).
    Upstream,
}

/// Flags of `bus-cli bench`.
#[derive(Debug, Args)]
pub struct BenchArgs {
    /// Workload.
    #[arg(value_enum)]
    pub mode: Mode,
    /// Payload bytes per message.
    #[arg(long, default_value_t = 128)]
    pub size: usize,
    /// Messages (requests in reqrep) in total.
    #[arg(long, default_value_t = 1_000_000, value_parser = at_least_one::<u64>())]
    pub msgs: u64,
    /// Run for this long instead of a message count (e.g. 5s).
    #[arg(long, value_parser = humantime::parse_duration, conflicts_with = "msgs")]
    pub duration: Option<Duration>,
    /// Publishers (pubsub).
    #[arg(long, default_value_t = 1, value_parser = at_least_one::<usize>())]
    pub pubs: usize,
    /// Publishing tasks per publisher connection (pubsub, fanout), sharing
    /// it through clones of one `Bus` and splitting its messages: measures
    /// publishers contending for a connection.
    #[arg(long, default_value_t = 1, value_parser = at_least_one::<usize>())]
    pub tasks: usize,
    /// Subscribers (pubsub, fanout).
    #[arg(long, value_parser = at_least_one::<usize>())]
    pub subs: Option<usize>,
    /// Concurrent requesters (reqrep).
    #[arg(long, default_value_t = 1, value_parser = at_least_one::<usize>())]
    pub requesters: usize,
    /// Distinct subjects each publisher cycles through (pubsub, fanout);
    /// subscribers take them all with one wildcard. More subjects than a
    /// reader's route cache holds measure the uncached routing path.
    #[arg(long, default_value_t = 1, value_parser = at_least_one::<usize>())]
    pub subjects: usize,
    /// Non-matching subscriptions to add (routing).
    #[arg(long, default_value_t = 100_000)]
    pub subscriptions: usize,
    /// Idle connections to hold (conns).
    #[arg(long, default_value_t = 1000, value_parser = at_least_one::<usize>())]
    pub conns: usize,
    /// Messages per publish call (`Bus::publish_batch`), with subscribers
    /// taking all they have received at once (`Subscription::next_batch`)
    /// (pubsub, fanout). 1: one `publish` and one `next` per message, the
    /// plain API.
    #[arg(long, default_value_t = 1, value_parser = at_least_one::<usize>())]
    pub batch: usize,
    /// Subscription changes a second by another client, on subjects the
    /// run does not use (pubsub, fanout): what route caches pay for others'
    /// churn.
    #[arg(long, default_value_t = 0)]
    pub churn: u32,
    /// Small headers to give each message (pubsub, fanout; with --batch 1),
    /// to measure what headers cost.
    #[arg(long, default_value_t = 0)]
    pub headers: usize,
    /// Subscribers ask for each message's sender (pubsub, fanout), to
    /// measure what sender identity costs.
    #[arg(long)]
    pub sender: bool,
    /// Routing: the extra subscriptions are wildcard patterns
    /// (`bench.*.nN`, which the trie follows for every subject) rather
    /// than literal ones.
    #[arg(long)]
    pub wildcard: bool,
    /// Publish each payload in a sealed memfd (pubsub, fanout; with
    /// --batch 1): only the descriptor goes through the daemon, and each
    /// subscriber maps it and reads a byte of every page.
    #[arg(long)]
    pub memfd: bool,
    /// Publishers publish as fast as they can, without waiting for the
    /// subscribers (pubsub, fanout): the report says what was published,
    /// delivered, and dropped and reported.
    #[arg(long)]
    pub unpaced: bool,
    /// Subscribers subscribe lossless (pubsub, fanout): a full queue holds
    /// the publishers back instead of dropping.
    #[arg(long)]
    pub lossless: bool,
    /// Run each publisher and each subscriber as a separate process
    /// (pubsub, fanout), as a user's programs are.
    #[arg(long)]
    pub processes: bool,
    /// Also measure the raw Unix-socket baseline and print ratios (pubsub
    /// 1 → 1 on a Unix socket adds raw clients through the daemon).
    #[arg(long)]
    pub baseline: bool,
    /// Repeat the whole run (the bus, then its baselines) this many times
    /// and also report each rate's and ratio's median, min and max: on a
    /// noisy machine one run proves little.
    #[arg(long, default_value_t = 1, value_parser = at_least_one::<usize>())]
    pub rounds: usize,
    /// Print the report as JSON.
    #[arg(long)]
    pub json: bool,
    /// The subscriber's busd (upstream).
    #[arg(long, value_name = "ADDRESS")]
    pub to: Option<String>,
    /// The NATS server both hosts are joined to, for the native baseline (upstream).
    #[arg(long, value_name = "URL")]
    pub nats: Option<String>,
}

/// A count flag that must be 1 or more (clap says so, naming the flag).
fn at_least_one<T>() -> clap::builder::RangedU64ValueParser<T>
where
    T: TryFrom<u64> + Clone + Send + Sync + 'static,
{
    clap::builder::RangedU64ValueParser::new().range(1..)
}

/// Latency percentiles, in microseconds.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct Latency {
    /// Median.
    pub p50_us: f64,
    /// 90th percentile.
    pub p90_us: f64,
    /// 99th percentile.
    pub p99_us: f64,
    /// 99.9th percentile.
    pub p999_us: f64,
    /// Samples.
    pub samples: u64,
}

impl From<&Histogram<u64>> for Latency {
    fn from(h: &Histogram<u64>) -> Self {
        let us = |q: f64| h.value_at_quantile(q) as f64 / 1000.0;
        Latency {
            p50_us: us(0.5),
            p90_us: us(0.9),
            p99_us: us(0.99),
            p999_us: us(0.999),
            samples: h.len(),
        }
    }
}

/// A rate: messages and megabytes (10^6 bytes of payload) per second.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct Rate {
    /// Messages per second.
    pub msgs_per_s: f64,
    /// Payload megabytes per second.
    pub mb_per_s: f64,
}

impl Rate {
    fn new(msgs: u64, size: usize, elapsed: Duration) -> Self {
        let s = elapsed.as_secs_f64().max(1e-9);
        Rate {
            msgs_per_s: msgs as f64 / s,
            mb_per_s: (msgs as f64 * size as f64) / s / 1e6,
        }
    }
}

/// Everything one run measured.
#[derive(Debug, Default, Serialize)]
pub struct Report {
    /// Workload.
    pub mode: Option<Mode>,
    /// Where the daemon ran.
    pub daemon: String,
    /// Payload size.
    pub size: usize,
    /// Publishers / subscribers / requesters.
    pub pubs: usize,
    /// Publishing tasks sharing each publisher's connection.
    pub tasks: usize,
    /// Subscribers.
    pub subs: usize,
    /// Messages per publish call, and whether subscribers take batches
    /// (above 1); 1: the plain per-message API.
    pub batch: usize,
    /// Distinct subjects the publishers cycled through.
    pub subjects: usize,
    /// Headers on each message.
    pub headers: usize,
    /// Subscribers got each message's sender.
    pub sender: bool,
    /// Publishers ran unpaced (`--unpaced`).
    pub unpaced: bool,
    /// Subscribers were lossless (`--lossless`).
    pub lossless: bool,
    /// Payloads went in sealed memfds (`--memfd`).
    pub memfd: bool,
    /// Publishers and subscribers ran as separate processes (`--processes`).
    pub processes: bool,
    /// The worker processes' CPU time, µs (`--processes`).
    #[serde(skip)]
    pub workers_cpu_us: Option<u64>,
    /// Messages published (or requests made).
    pub sent: u64,
    /// Messages delivered, all subscribers together.
    pub delivered: u64,
    /// Messages the daemon reported dropped (Lagged) to the subscribers.
    pub dropped: u64,
    /// Publisher-side rate, all publishers together.
    pub publish: Option<Rate>,
    /// Subscriber-side rate, all subscribers together.
    pub deliver: Option<Rate>,
    /// Round-trip latency (reqrep).
    pub latency: Option<Latency>,
    /// Requests per second (reqrep).
    pub requests_per_s: Option<f64>,
    /// Routing mode: publish rate with no extra subscriptions.
    pub rate_without_extra_subs: Option<Rate>,
    /// Routing mode: extra non-matching subscriptions; unsubscribe mode:
    /// the subscriptions removed.
    pub extra_subscriptions: Option<usize>,
    /// Unsubscribe mode: from the first unsubscribe sent until the daemon
    /// counted them all gone, ms.
    pub unsubscribe_ms: Option<f64>,
    /// Raw-socket stream of the same frames.
    pub baseline_stream: Option<Rate>,
    /// Upstream mode: the same flow between two native NATS clients.
    pub baseline_nats: Option<Rate>,
    /// Upstream mode: CPU time of those two native clients per message, ns
    /// (the NATS server's is in neither figure).
    pub baseline_nats_cpu_ns_per_msg: Option<f64>,
    /// The same frames through a forwarding thread: the floor of any broker.
    pub baseline_relay: Option<Rate>,
    /// Raw-socket ping-pong of the same frame.
    pub baseline_pingpong: Option<Latency>,
    /// The same ping-pong through a relay thread (four socket transits, as
    /// any brokered round trip): the floor of request/reply.
    pub baseline_relay_pingpong: Option<Latency>,
    /// CPU time (user + system) the external daemon used per delivered
    /// message (per request in reqrep), ns.
    pub cpu_daemon_ns_per_msg: Option<f64>,
    /// CPU time this process (publishers, subscribers, requesters; and the
    /// daemon when in-process) used per delivered message or request, ns.
    pub cpu_clients_ns_per_msg: Option<f64>,
    /// CPU time of the raw stream (both ends) per frame, ns.
    pub baseline_stream_cpu_ns_per_msg: Option<f64>,
    /// CPU time of the raw relay (all three threads) per frame, ns.
    pub baseline_relay_cpu_ns_per_msg: Option<f64>,
    /// Pubsub 1 → 1: the same frames through the daemon between a raw
    /// publisher and subscriber (blocking threads, no libbus).
    pub baseline_raw_clients: Option<Rate>,
    /// This process's CPU time per frame of that run, ns: the two raw
    /// clients (and the daemon, when it runs in-process).
    pub baseline_raw_clients_cpu_ns_per_msg: Option<f64>,
    /// The external daemon's CPU time per frame of that run, ns.
    pub baseline_raw_clients_daemon_cpu_ns_per_msg: Option<f64>,
    /// Conns mode: daemon RSS before opening the idle connections, bytes.
    pub rss_before: Option<u64>,
    /// Conns mode: daemon RSS with all of them open, bytes.
    pub rss_after: Option<u64>,
    /// Conns mode: (rss_after - rss_before) / connections, bytes.
    pub rss_per_conn: Option<f64>,
    /// Bus figure ÷ baseline figure.
    pub ratios: Vec<(String, f64)>,
    /// With `--rounds` above 1: each rate, CPU figure and ratio over all
    /// rounds (the rest of the report is the last round's).
    pub spread: Vec<Spread>,
}

/// One figure over several rounds.
#[derive(Debug, Clone, Serialize)]
pub struct Spread {
    /// The figure: a ratio's name, or a rate's or CPU line's.
    pub name: String,
    /// Median over the rounds (the mean of the middle two for an even count).
    pub median: f64,
    /// Lowest.
    pub min: f64,
    /// Highest.
    pub max: f64,
    /// Rounds that measured it.
    pub rounds: usize,
}

impl Report {
    /// Adds the ratio `name` (bus figure ÷ baseline figure).
    fn ratio(&mut self, name: &str, value: f64) {
        self.ratios.push((name.to_owned(), value));
    }
}

/// The raw stream runs at least this long, so it is a stable reference.
const MIN_BASELINE: Duration = Duration::from_millis(500);

/// The bytes of one `Pub` frame as the bus would carry it, length prefix included.
fn frame_bytes(size: usize) -> Vec<u8> {
    let payload = vec![0u8; size];
    let frame = proto::ClientFrame::Pub(proto::Pub {
        subject: workload::SUBJECT,
        reply_to: None,
        payload: &payload,
    });
    let mut buf = Vec::new();
    // u32::MAX: the baseline is not bound by the daemon's max_frame.
    let _ = codec::encode_into(&frame, &mut buf, u32::MAX);
    buf
}

/// Runs `run` (a stream of `size`-byte payloads) long enough on a blocking
/// thread: its rate, and this process's CPU time per frame (nothing else
/// runs meanwhile).
async fn measure<F>(run: F, size: usize) -> libbus::Result<(Rate, f64, u64)>
where
    F: Fn(&[u8], u64) -> std::io::Result<Duration> + Send + 'static,
{
    let frame = frame_bytes(size);
    let cpu = busd::api::cpu_time_us();
    let (msgs, elapsed, all) =
        tokio::task::spawn_blocking(move || baseline::long_enough(run, &frame, MIN_BASELINE))
            .await
            .map_err(|e| libbus::Error::Protocol(e.to_string()))??;
    let cpu_ns = busd::api::cpu_time_us().saturating_sub(cpu) as f64 * 1000.0;
    Ok((Rate::new(msgs, size, elapsed), cpu_ns / all.max(1) as f64, all))
}

/// Runs the benchmark (`--rounds` times) and prints the report.
pub async fn run(args: BenchArgs, address: Option<libbus::Address>) -> libbus::Result<()> {
    let target = workload::Target::new(address)?;
    let mut reports = Vec::with_capacity(args.rounds);
    for round in 1..=args.rounds {
        let report = run_once(&args, &target).await?;
        if args.rounds > 1 && !args.json {
            print_round(round, args.rounds, &report);
        }
        reports.push(report);
    }
    let spread = if args.rounds > 1 {
        spread(&reports)
    } else {
        Vec::new()
    };
    let Some(mut report) = reports.pop() else {
        return Ok(());
    };
    report.spread = spread;
    if args.json {
        outln!(
            "{}",
            serde_json::to_string_pretty(&report).map_err(|e| libbus::Error::Protocol(e.to_string()))?
        );
    } else {
        print_report(&report);
    }
    Ok(())
}

/// The report's rates: (name in `--rounds` summaries, label, rate).
fn rates(r: &Report) -> [(&'static str, &'static str, Option<Rate>); 7] {
    [
        ("publish", "publish", r.publish),
        ("deliver", "deliver (all subscribers)", r.deliver),
        (
            "publish, no extra subs",
            "publish, no extra subs",
            r.rate_without_extra_subs,
        ),
        ("raw stream", "raw unix stream (baseline)", r.baseline_stream),
        ("native nats", "native NATS clients (baseline)", r.baseline_nats),
        ("raw relay", "raw relay (baseline)", r.baseline_relay),
        (
            "raw clients via busd",
            "raw clients via busd",
            r.baseline_raw_clients,
        ),
    ]
}

/// The report's CPU time per message, ns: (name in `--rounds` summaries,
/// label, value). In-process, the daemon's time is part of the bench
/// process's, and the labels say so.
fn cpu_figures(r: &Report) -> [(&'static str, &'static str, Option<f64>); 7] {
    let external = r.cpu_daemon_ns_per_msg.is_some();
    [
        ("daemon", "daemon", r.cpu_daemon_ns_per_msg),
        (
            "bench process",
            if external {
                "bench clients"
            } else {
                "bench + daemon"
            },
            r.cpu_clients_ns_per_msg,
        ),
        ("raw stream", "raw stream", r.baseline_stream_cpu_ns_per_msg),
        (
            "native nats clients",
            "native NATS clients",
            r.baseline_nats_cpu_ns_per_msg,
        ),
        ("raw relay", "raw relay", r.baseline_relay_cpu_ns_per_msg),
        (
            "daemon (raw clients)",
            "daemon (raw)",
            r.baseline_raw_clients_daemon_cpu_ns_per_msg,
        ),
        (
            "raw clients",
            if external {
                "raw clients"
            } else {
                "raw clients + daemon"
            },
            r.baseline_raw_clients_cpu_ns_per_msg,
        ),
    ]
}

/// The figures of one round that `--rounds` summarises, by name.
fn figures(r: &Report) -> Vec<(String, f64)> {
    let rates = rates(r)
        .into_iter()
        .filter_map(|(name, _, rate)| Some((format!("{name} msgs/s"), rate?.msgs_per_s)));
    let cpu = cpu_figures(r)
        .into_iter()
        .filter_map(|(name, _, ns)| Some((format!("cpu ns per msg: {name}"), ns?)));
    let latency = [
        ("unsubscribe ms", r.unsubscribe_ms),
        ("round trip p50 µs", r.latency.map(|l| l.p50_us)),
        ("round trip p99 µs", r.latency.map(|l| l.p99_us)),
        ("raw ping-pong p50 µs", r.baseline_pingpong.map(|l| l.p50_us)),
        (
            "relay ping-pong p50 µs",
            r.baseline_relay_pingpong.map(|l| l.p50_us),
        ),
    ]
    .into_iter()
    .filter_map(|(name, v)| Some((name.to_owned(), v?)));
    let ratios = r.ratios.iter().map(|(n, v)| (format!("ratio {n}"), *v));
    rates.chain(cpu).chain(latency).chain(ratios).collect()
}

/// Median, min and max of every figure over `reports`, in first-seen order.
fn spread(reports: &[Report]) -> Vec<Spread> {
    let mut seen: Vec<(String, Vec<f64>)> = Vec::new();
    for (name, v) in reports.iter().flat_map(figures) {
        match seen.iter_mut().find(|(n, _)| *n == name) {
            Some((_, values)) => values.push(v),
            None => seen.push((name, vec![v])),
        }
    }
    seen.into_iter()
        .map(|(name, mut v)| {
            v.sort_by(f64::total_cmp);
            let mid = v.len() / 2;
            let median = if v.len() % 2 == 0 {
                (v[mid - 1] + v[mid]) / 2.0
            } else {
                v[mid]
            };
            Spread {
                name,
                median,
                min: v[0],
                max: v[v.len() - 1],
                rounds: v.len(),
            }
        })
        .collect()
}

/// One line per round: its headline rate and ratios.
fn print_round(round: usize, rounds: usize, r: &Report) {
    let mut line = format!("round {round}/{rounds}:");
    if let Some(d) = r.deliver {
        line.push_str(&format!(" deliver {:.0} msgs/s", d.msgs_per_s));
    }
    if let Some(l) = r.latency {
        line.push_str(&format!(" p50 {:.1} µs", l.p50_us));
    }
    for (name, v) in &r.ratios {
        line.push_str(&format!(", {name} {v:.3}x"));
    }
    outln!("{line}");
}

/// One round: the workload, then (with `--baseline`) its baselines.
async fn run_once(args: &BenchArgs, target: &workload::Target) -> libbus::Result<Report> {
    let mut report = workload::run(args, target).await?;
    if args.baseline {
        let (stream, stream_cpu, _) = measure(baseline::stream, args.size).await?;
        let (relay, relay_cpu, _) = measure(baseline::relay, args.size).await?;
        report.baseline_stream = Some(stream);
        report.baseline_relay = Some(relay);
        report.baseline_stream_cpu_ns_per_msg = Some(stream_cpu);
        report.baseline_relay_cpu_ns_per_msg = Some(relay_cpu);
        if let Some(d) = report.deliver {
            report.ratio("deliver_msgs_per_s / raw_relay", d.msgs_per_s / relay.msgs_per_s);
            report.ratio(
                "deliver_msgs_per_s / raw_stream",
                d.msgs_per_s / stream.msgs_per_s,
            );
            report.ratio("deliver_mb_per_s / raw_stream", d.mb_per_s / stream.mb_per_s);
        }
        if let (Mode::Pubsub, 1, 1, libbus::Address::Unix(path)) =
            (args.mode, report.pubs, report.subs, &target.address)
        {
            let before = target.info().await?;
            let window = workload::flow_window(workload::max_pending(&before), args.size);
            let path = path.clone();
            let via = move |frame: &[u8], count: u64| {
                raw_clients::through_daemon(&path, workload::SUBJECT, frame, count, window)
            };
            let (raw, raw_cpu, frames) = measure(via, args.size).await?;
            report.baseline_raw_clients = Some(raw);
            report.baseline_raw_clients_cpu_ns_per_msg = Some(raw_cpu);
            // In-process, the daemon's time is already in `raw_cpu`.
            if target.own.is_none() {
                let used = target.info().await?.cpu_us.saturating_sub(before.cpu_us);
                report.baseline_raw_clients_daemon_cpu_ns_per_msg =
                    Some(used as f64 * 1000.0 / frames.max(1) as f64);
            }
            report.ratio(
                "raw_clients_via_busd / raw_stream",
                raw.msgs_per_s / stream.msgs_per_s,
            );
            if let Some(d) = report.deliver {
                report.ratio(
                    "deliver_msgs_per_s / raw_clients_via_busd",
                    d.msgs_per_s / raw.msgs_per_s,
                );
            }
        }
        if let Some(r) = report.rate_without_extra_subs {
            report.ratio("publish_with_none / raw_stream", r.msgs_per_s / stream.msgs_per_s);
        }
        let frame = frame_bytes(args.size);
        let rounds = args.msgs.clamp(1, 200_000);
        let (pp, relayed) = tokio::task::spawn_blocking(move || {
            let (_, pp) = baseline::ping_pong(&frame, rounds)?;
            let (_, relayed) = baseline::relay_ping_pong(&frame, rounds)?;
            std::io::Result::Ok((pp, relayed))
        })
        .await
        .map_err(|e| libbus::Error::Protocol(e.to_string()))??;
        report.baseline_pingpong = Some(pp);
        report.baseline_relay_pingpong = Some(relayed);
        if let Some(l) = report.latency {
            report.ratio("reqrep_p50 / raw_pingpong_p50", l.p50_us / pp.p50_us);
            report.ratio("reqrep_p99 / raw_pingpong_p99", l.p99_us / pp.p99_us);
            report.ratio("reqrep_p50 / relay_pingpong_p50", l.p50_us / relayed.p50_us);
            report.ratio("reqrep_p99 / relay_pingpong_p99", l.p99_us / relayed.p99_us);
        }
    }
    Ok(report)
}

fn print_rate(label: &str, r: &Rate) {
    outln!(
        "{label:<28} {:>14.0} msgs/s {:>10.1} MB/s",
        r.msgs_per_s,
        r.mb_per_s
    );
}

fn print_latency(label: &str, l: &Latency) {
    outln!(
        "{label:<28} p50 {:>8.1} µs  p90 {:>8.1} µs  p99 {:>8.1} µs  p99.9 {:>8.1} µs  ({} samples)",
        l.p50_us,
        l.p90_us,
        l.p99_us,
        l.p999_us,
        l.samples
    );
}

fn print_report(r: &Report) {
    let mode = r
        .mode
        .map(|m| format!("{m:?}").to_lowercase())
        .unwrap_or_default();
    if let (Some(before), Some(after), Some(per)) = (r.rss_before, r.rss_after, r.rss_per_conn) {
        // Conns: no messages, only memory.
        outln!("bench {mode}: {} idle connections, daemon {}", r.subs, r.daemon);
        outln!(
            "daemon RSS {before} -> {after} with {} idle connections: {per:.0} bytes per connection",
            r.subs
        );
        if r.daemon == workload::IN_PROCESS {
            outln!("(in-process, the RSS includes the clients' own memory: measure an external busd with --address)");
        }
        return;
    }
    let mut api = if r.batch > 1 {
        format!(", batches of {}", r.batch)
    } else {
        String::new()
    };
    if r.headers > 0 {
        api += &format!(", {} headers each", r.headers);
    }
    if r.sender {
        api += ", with senders";
    }
    if r.unpaced {
        api += ", unpaced";
    }
    if r.lossless {
        api += ", lossless";
    }
    if r.memfd {
        api += ", payloads in sealed memfds";
    }
    if r.processes {
        api += ", separate processes";
    }
    let tasks = if r.tasks > 1 {
        format!(" x {} task(s)", r.tasks)
    } else {
        String::new()
    };
    let subjects = if r.subjects > 1 {
        format!(" over {} subjects", r.subjects)
    } else {
        String::new()
    };
    outln!(
        "bench {mode}: {} B payloads, {} pub(s){tasks}{subjects}, {} sub(s){api}, daemon {}",
        r.size,
        r.pubs,
        r.subs,
        r.daemon
    );
    outln!(
        "sent {}, delivered {}, dropped {}",
        r.sent,
        r.delivered,
        r.dropped
    );
    for (_, label, rate) in rates(r) {
        if let Some(x) = rate {
            print_rate(label, &x);
        }
    }
    if let Some(n) = r.extra_subscriptions {
        outln!("extra subscriptions          {n}");
    }
    if let Some(ms) = r.unsubscribe_ms {
        outln!("{:<28} {ms:>14.1} ms", "removing them all");
    }
    if let Some(x) = r.requests_per_s {
        outln!("{:<28} {x:>14.0} req/s", "requests");
    }
    if let Some(x) = &r.latency {
        print_latency("round trip", x);
    }
    if let Some(x) = &r.baseline_pingpong {
        print_latency("raw ping-pong (baseline)", x);
    }
    if let Some(x) = &r.baseline_relay_pingpong {
        print_latency("relay ping-pong (baseline)", x);
    }
    for (_, label, ns) in cpu_figures(r) {
        if let Some(ns) = ns {
            outln!(
                "{:<34} {ns:>8.0} ns (user + system)",
                format!("cpu per msg: {label}")
            );
        }
    }
    for (name, v) in &r.ratios {
        outln!("ratio {name:<38} {v:>6.3}x");
    }
    if let Some(first) = r.spread.first() {
        outln!("over {} rounds (median, min - max):", first.rounds);
        for s in &r.spread {
            let (unit, decimals) = match s.name.starts_with("ratio ") {
                true => ("x", 3),
                false if s.median >= 100.0 => ("", 0),
                false => ("", 1),
            };
            let f = |v: f64| format!("{v:.decimals$}{unit}");
            outln!(
                "  {:<52} {:>12}  {} - {}",
                s.name,
                f(s.median),
                f(s.min),
                f(s.max)
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn round(deliver: f64, ratio: Option<f64>) -> Report {
        let mut r = Report {
            deliver: Some(Rate {
                msgs_per_s: deliver,
                mb_per_s: 0.0,
            }),
            ..Report::default()
        };
        if let Some(v) = ratio {
            r.ratio("x / y", v);
        }
        r
    }

    #[test]
    fn spread_takes_median_min_and_max_per_figure() {
        let rounds = [
            round(4.0, Some(0.3)),
            round(1.0, None),
            round(3.0, Some(0.1)),
            round(2.0, Some(0.2)),
        ];
        let s = spread(&rounds);
        let names: Vec<_> = s.iter().map(|s| s.name.as_str()).collect();
        assert_eq!(names, ["deliver msgs/s", "ratio x / y"]);
        // An even count: the mean of the middle two.
        assert_eq!((s[0].median, s[0].min, s[0].max, s[0].rounds), (2.5, 1.0, 4.0, 4));
        // A figure only some rounds measured counts only those.
        assert_eq!((s[1].median, s[1].min, s[1].max, s[1].rounds), (0.2, 0.1, 0.3, 3));
    }
}
