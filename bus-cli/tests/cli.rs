//! `bus-cli` end to end: the real binary against a real daemon.

use std::{
    io::Write,
    process::{Child, Command, Output, Stdio},
    time::{Duration, Instant},
};

use busd::{Config, Daemon};

mod common;

use common::{run, stdout, CLI};

struct Bus {
    daemon: Daemon,
    _dir: tempfile::TempDir,
}

fn daemon() -> Bus {
    let dir = tempfile::tempdir().unwrap();
    let daemon = Daemon::start(Config::with_socket(dir.path().join("busd.sock"))).unwrap();
    Bus { daemon, _dir: dir }
}

fn cli(bus: &Bus) -> Command {
    let mut c = Command::new(CLI);
    c.env("BUS_ADDRESS", bus.daemon.address().to_string());
    c
}

/// A `bus-cli sub` child process, killed and reaped on drop.
struct SubProc(Option<Child>);

impl SubProc {
    fn id(&self) -> u32 {
        self.0.as_ref().map_or(0, Child::id)
    }

    /// Reads its standard output until it has printed every one of
    /// `needles` (polled, for at most 20 s), and returns what it printed.
    fn read_until(&mut self, needles: &[&str]) -> String {
        use std::io::Read;
        let mut pipe = self
            .0
            .as_mut()
            .and_then(|c| c.stdout.take())
            .expect("stdout piped");
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            while let Ok(n @ 1..) = pipe.read(&mut buf) {
                if tx.send(buf[..n].to_vec()).is_err() {
                    break;
                }
            }
        });
        let deadline = Instant::now() + Duration::from_secs(20);
        let mut text = String::new();
        while !needles.iter().all(|n| text.contains(n)) {
            let left = deadline.saturating_duration_since(Instant::now());
            match rx.recv_timeout(left) {
                Ok(bytes) => text.push_str(&String::from_utf8_lossy(&bytes)),
                Err(_) => panic!("did not print all of {needles:?}; printed:\n{text}"),
            }
        }
        text
    }

    /// Waits (at most 20 s) for it to exit by itself and returns its output.
    fn output(mut self) -> Output {
        let mut child = self.0.take().expect("not yet waited");
        let start = Instant::now();
        while child.try_wait().unwrap().is_none() {
            if start.elapsed() > Duration::from_secs(20) {
                let _ = child.kill();
                let _ = child.wait();
                panic!("bus-cli sub did not exit");
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        child.wait_with_output().unwrap()
    }
}

impl Drop for SubProc {
    fn drop(&mut self) {
        if let Some(mut c) = self.0.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// Starts `bus-cli sub` and waits until the daemon lists its subscription.
/// Starts `bus-cli` with `args` (a subscribing command) and waits until the
/// daemon lists a subscription to `pattern`.
fn start_listed(bus: &Bus, args: &[&str], pattern: &str) -> SubProc {
    let mut cmd = cli(bus);
    cmd.args(args).stdout(Stdio::piped()).stderr(Stdio::piped());
    let proc = SubProc(Some(cmd.spawn().unwrap()));
    wait_listed(bus, pattern);
    proc
}

/// Starts `bus-cli sub` and waits until the daemon lists its subscription.
fn start_sub(bus: &Bus, args: &[&str]) -> SubProc {
    let mut full = vec!["sub"];
    full.extend_from_slice(args);
    start_listed(bus, &full, args[0])
}

/// Polls `bus-cli list --json` (for at most 20 s) until some connection
/// subscribes to `pattern`.
fn wait_listed(bus: &Bus, pattern: &str) {
    let start = Instant::now();
    loop {
        let out = stdout(&run({
            let mut c = cli(bus);
            c.args(["list", "--json"]);
            c
        }));
        if out.contains(&format!("\"pattern\": \"{pattern}\"")) {
            return;
        }
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "no subscription to {pattern} appeared"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn send_and_sub_with_count() {
    let bus = daemon();
    let sub = start_sub(&bus, &["chat.*", "--count", "3"]);
    for (subject, payload) in [("chat.lobby", "hello"), ("other.x", "skip"), ("chat.dev", "hi")] {
        let mut c = cli(&bus);
        c.args(["send", subject, payload]);
        stdout(&run(c));
    }
    // Payload from stdin, not UTF-8: printed as hex.
    let mut c = cli(&bus);
    let mut child = c
        .args(["send", "chat.bin"])
        .stdin(Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(&[0xff, 0x00]).unwrap();
    assert!(child.wait().unwrap().success());
    let out = sub.output();
    assert_eq!(stdout(&out), "chat.lobby hello\nchat.dev hi\nchat.bin 0xff00\n");
}

#[test]
fn list_shows_connections() {
    let bus = daemon();
    let sub = start_sub(&bus, &["orders.>"]);
    let mut c = cli(&bus);
    c.arg("list");
    let out = stdout(&run(c));
    let mut lines = out.lines();
    let header = lines.next().unwrap();
    for col in [
        "ID",
        "NAME",
        "TRANSPORT",
        "PEER",
        "SUBS",
        "MSGS IN",
        "MSGS OUT",
        "PENDING",
        "DROPPED",
        "AGE",
        "IDLE",
        "RTT",
    ] {
        assert!(header.contains(col), "{header}");
    }
    let sub_line = lines
        .find(|l| l.contains(&format!("pid {} ", sub.id())))
        .unwrap_or_else(|| panic!("subscriber's pid listed: {out}"));
    assert!(
        sub_line.contains("bus-cli") && sub_line.contains("unix"),
        "{sub_line}"
    );

    // The daemon's first ping measures each round trip: in the JSON as
    // rtt_us, in the table as the RTT column.
    let start = Instant::now();
    let pid = u64::from(sub.id());
    loop {
        let mut c = cli(&bus);
        c.args(["list", "--json", "--sort", "rtt"]);
        let conns: serde_json::Value = serde_json::from_str(&stdout(&run(c))).unwrap();
        let mine = conns
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["peer"]["Unix"]["pid"] == pid);
        if mine.is_some_and(|c| c["rtt_us"].as_u64().is_some_and(|us| us > 0)) {
            break;
        }
        assert!(start.elapsed() < Duration::from_secs(20), "no rtt_us: {conns}");
        std::thread::sleep(Duration::from_millis(20));
    }
    let mut c = cli(&bus);
    c.arg("list");
    let out = stdout(&run(c));
    let sub_line = out
        .lines()
        .find(|l| l.contains(&format!("pid {} ", sub.id())))
        .unwrap();
    let rtt = sub_line.split_whitespace().last().unwrap();
    let number = ["µs", "ms", "s"].iter().find_map(|unit| rtt.strip_suffix(unit));
    assert!(
        number.is_some_and(|n| n.parse::<f64>().is_ok_and(|v| v > 0.0)),
        "{sub_line}"
    );
}

#[test]
fn request_prints_reply() {
    let bus = daemon();
    // A responder written with libbus, in this process.
    let rt = tokio::runtime::Runtime::new().unwrap();
    let address = bus.daemon.address().clone();
    let _responder = rt.block_on(async move {
        let c = libbus::Bus::connect(&address).await.unwrap();
        let mut s = c.subscribe("time.now").await.unwrap();
        tokio::spawn(async move {
            while let Some(m) = s.next().await {
                m.respond("twelve o'clock").await.unwrap();
            }
        });
        c
    });
    let mut c = cli(&bus);
    c.args(["request", "time.now", "?"]);
    assert_eq!(stdout(&run(c)), "twelve o'clock\n");

    let mut c = cli(&bus);
    c.args(["request", "nobody.home", "x", "--timeout", "2s"]);
    let out = run(c);
    assert!(!out.status.success());
    assert_eq!(
        String::from_utf8_lossy(&out.stderr),
        "error: no responders for \"nobody.home\"\n"
    );
}

#[test]
fn info_prints_version_and_limits() {
    let bus = daemon();
    let mut c = cli(&bus);
    c.arg("info");
    let out = stdout(&run(c));
    assert!(
        out.starts_with(&format!("busd {}", env!("CARGO_PKG_VERSION"))),
        "{out}"
    );
    assert!(out.contains("max_pending") && out.contains("8388608"), "{out}");
    assert!(out.contains(&bus.daemon.address().to_string()), "{out}");
}

#[test]
fn no_daemon_is_one_clear_line() {
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("nothing.sock");
    for args in [
        &["list"][..],
        &["send", "a", "b"],
        &["sub", "a"],
        &["request", "a", "b"],
        &["monitor"],
        &["info"],
    ] {
        let out = run({
            let mut c = Command::new(CLI);
            c.env("BUS_ADDRESS", format!("unix:{}", sock.display()))
                .args(args);
            c
        });
        assert!(!out.status.success(), "{args:?}");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(
            stderr,
            format!(
                "error: no bus daemon at unix:{} (is busd running?)\n",
                sock.display()
            ),
            "{args:?}"
        );
    }
}

#[test]
fn bad_subjects_are_named_with_or_without_a_daemon() {
    let bus = daemon();
    let dir = tempfile::tempdir().unwrap();
    let nowhere = format!("unix:{}", dir.path().join("nothing.sock").display());
    let cases: [(&[&str], &str); 5] = [
        (
            &["send", "a..b", "x"],
            "error: invalid subject \"a..b\": empty token\n",
        ),
        (
            &["request", "a.*", "x"],
            "error: invalid subject \"a.*\": wildcards are only allowed in subscriptions\n",
        ),
        (
            &["send", "$BUS.x", "x"],
            "error: subject \"$BUS.x\" is reserved for the daemon ($BUS.)\n",
        ),
        (
            &["sub", "a.>.b"],
            "error: invalid pattern \"a.>.b\": '>' must be the last token\n",
        ),
        (&["sub", ""], "error: invalid subject \"\": empty\n"),
    ];
    for address in [bus.daemon.address().to_string(), nowhere] {
        for (args, expected) in cases {
            let out = run({
                let mut c = Command::new(CLI);
                c.env("BUS_ADDRESS", &address).args(args);
                c
            });
            assert_eq!(out.status.code(), Some(1), "{args:?} at {address}");
            assert_eq!(
                String::from_utf8_lossy(&out.stderr),
                expected,
                "{args:?} at {address}"
            );
        }
    }
    // None of them connected: the daemon numbers connections from 1, and
    // `list`'s own is the first.
    let list = stdout(&run({
        let mut c = cli(&bus);
        c.arg("list");
        c
    }));
    let first = list.lines().nth(1).unwrap_or_default();
    assert!(first.starts_with("1 ") && first.contains("bus-cli"), "{list}");
}

#[test]
fn address_flag_overrides_environment() {
    let bus = daemon();
    let out = run({
        let mut c = Command::new(CLI);
        c.env("BUS_ADDRESS", "/nonexistent/busd.sock").args([
            "--address",
            &bus.daemon.address().to_string(),
            "list",
        ]);
        c
    });
    assert!(stdout(&out).starts_with("ID"));
}

#[test]
fn monitor_shows_messages_and_lifecycle_events() {
    let bus = daemon();
    let mut monitor = start_listed(&bus, &["monitor"], ">");
    let mut c = cli(&bus);
    c.args(["send", "audit.login", "alice"]);
    stdout(&run(c));
    let text = monitor.read_until(&[
        " audit.login alice\n",
        "$BUS.event.conn.open id=",
        "$BUS.event.conn.close id=",
        "reason=end",
    ]);
    assert!(text.contains("$BUS.event.conn.close id="), "{text}");
}

/// `bench conns` against its own in-process daemon reports memory that
/// includes the clients', and says so.
#[test]
fn bench_conns_in_process_says_whose_memory_it_measured() {
    let out = run({
        let mut c = Command::new(CLI);
        c.args(["bench", "conns", "--conns", "20"]);
        c
    });
    assert!(out.status.success(), "{out:?}");
    let text = stdout(&out);
    assert!(
        text.starts_with("bench conns: 20 idle connections, daemon in-process\n"),
        "{text}"
    );
    assert!(text.contains("bytes per connection"), "{text}");
    assert!(text.contains("measure an external busd with --address"), "{text}");
}

/// The benchmark runs end to end and accounts for every message. Only counts
/// are checked, never timings.
#[test]
fn bench_smoke() {
    let bus = daemon();
    // conns: holds idle connections and reports the daemon's RSS.
    let out = run({
        let mut c = cli(&bus);
        c.args(["--address", &bus.daemon.address().to_string()])
            .args(["bench", "conns", "--conns", "50", "--json"]);
        c
    });
    let report: serde_json::Value = serde_json::from_str(&stdout(&out)).unwrap();
    assert!(report["rss_before"].as_u64().unwrap() > 0, "{report}");
    assert!(report["rss_per_conn"].as_f64().is_some(), "{report}");
    for args in [
        &["bench", "pubsub", "--msgs", "5000", "--subs", "2", "--json"][..],
        // Three tasks share each of two publishers' connections; 2500
        // messages a connection split 834 + 833 + 833.
        &[
            "bench", "pubsub", "--msgs", "5000", "--pubs", "2", "--tasks", "3", "--json",
        ],
        &[
            "bench", "fanout", "--msgs", "2000", "--subs", "3", "--size", "1024", "--json",
        ],
        // More subjects than a reader's route cache holds.
        &[
            "bench",
            "pubsub",
            "--msgs",
            "6000",
            "--subjects",
            "2000",
            "--json",
        ],
        &[
            "bench",
            "reqrep",
            "--msgs",
            "300",
            "--requesters",
            "2",
            "--baseline",
            "--json",
        ],
        // Payloads in sealed memfds: only descriptors cross the daemon.
        &[
            "bench", "pubsub", "--msgs", "200", "--size", "65536", "--memfd", "--json",
        ],
        &[
            "bench",
            "routing",
            "--msgs",
            "4096",
            "--subscriptions",
            "2000",
            "--json",
        ],
    ] {
        let out = run({
            let mut c = cli(&bus);
            c.args(["--address", &bus.daemon.address().to_string()])
                .args(args);
            c
        });
        let report: serde_json::Value = serde_json::from_str(&stdout(&out)).unwrap();
        let (sent, delivered) = (
            report["sent"].as_u64().unwrap(),
            report["delivered"].as_u64().unwrap(),
        );
        let subs = report["subs"].as_u64().unwrap();
        assert!(sent > 0, "{args:?}: {report}");
        if args.contains(&"--subjects") {
            assert_eq!(report["subjects"].as_u64(), Some(2000), "{report}");
        }
        if args.contains(&"--memfd") {
            assert_eq!(report["memfd"].as_bool(), Some(true), "{report}");
            assert_eq!(report["delivered"].as_u64(), Some(200), "{report}");
        }
        if args.contains(&"--tasks") {
            assert_eq!(report["tasks"].as_u64(), Some(3), "{report}");
            assert_eq!(sent, 5000, "{report}");
        }
        assert_eq!(
            delivered + report["dropped"].as_u64().unwrap(),
            sent * subs,
            "{args:?}: {report}"
        );
        if args[1] != "routing" {
            // CPU per message, for the daemon and for the bench's clients.
            assert!(report["cpu_daemon_ns_per_msg"].as_f64().is_some(), "{report}");
            assert!(report["cpu_clients_ns_per_msg"].as_f64().is_some(), "{report}");
        }
        if args.contains(&"--baseline") {
            assert!(report["baseline_pingpong"]["p50_us"].as_f64().unwrap() > 0.0);
            assert!(report["baseline_relay_pingpong"]["p50_us"].as_f64().unwrap() > 0.0);
            assert!(!report["ratios"].as_array().unwrap().is_empty());
            // The raw stream runs for at least 500 ms: its CPU time shows.
            assert!(report["baseline_stream_cpu_ns_per_msg"].as_f64().unwrap() > 0.0);
        }
    }
}

/// 1 → 1 with `--baseline` also sends the raw frames through the daemon
/// between raw clients (no libbus), which splits the bus's cost between the
/// daemon and the client library. Every frame must arrive (the run fails
/// otherwise); timings are not checked.
#[test]
fn bench_baseline_runs_raw_clients_through_the_daemon() {
    let bus = daemon();
    let report = raw_clients_report(&bus, "128", "5000");
    let raw = &report["baseline_raw_clients"];
    assert!(raw["msgs_per_s"].as_f64().unwrap() > 0.0, "{report}");
    assert!(
        report["baseline_raw_clients_cpu_ns_per_msg"].as_f64().is_some(),
        "{report}"
    );
    assert!(
        report["baseline_raw_clients_daemon_cpu_ns_per_msg"]
            .as_f64()
            .is_some(),
        "{report}"
    );
    let ratios: Vec<&str> = report["ratios"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|r| r[0].as_str())
        .collect();
    assert!(ratios.contains(&"raw_clients_via_busd / raw_stream"), "{report}");
    assert!(
        ratios.contains(&"deliver_msgs_per_s / raw_clients_via_busd"),
        "{report}"
    );
}

/// The raw clients' run of `bench pubsub --baseline` with `--size` and `--msgs`.
fn raw_clients_report(bus: &Bus, size: &str, msgs: &str) -> serde_json::Value {
    let out = run({
        let mut c = cli(bus);
        c.args(["--address", &bus.daemon.address().to_string()]).args([
            "bench",
            "pubsub",
            "--size",
            size,
            "--msgs",
            msgs,
            "--baseline",
            "--json",
        ]);
        c
    });
    serde_json::from_str(&stdout(&out)).unwrap()
}

/// With 16 KiB frames the flow window is only ~255 messages: the raw
/// subscriber reports progress, and the raw publisher flushes before it
/// waits, well within it (they once waited on each other until the 10 s
/// bound and the run failed).
#[test]
fn bench_baseline_raw_clients_carry_large_frames() {
    let bus = daemon();
    let report = raw_clients_report(&bus, "16384", "2000");
    assert!(
        report["baseline_raw_clients"]["msgs_per_s"].as_f64().unwrap() > 0.0,
        "{report}"
    );
    assert_eq!(report["dropped"].as_u64(), Some(0), "{report}");
}

/// `--rounds N` repeats the run and its baselines N times: one line per
/// round on a terminal, and each rate and ratio's median, min and max over
/// all rounds. Only the shape and the order min <= median <= max are
/// checked, never timings.
#[test]
fn bench_rounds_report_each_figure_over_all_rounds() {
    let bus = daemon();
    let bench = |extra: &[&str]| {
        let mut c = cli(&bus);
        c.args(["--address", &bus.daemon.address().to_string()])
            .args(["bench", "pubsub", "--msgs", "3000", "--rounds", "3", "--baseline"])
            .args(extra);
        stdout(&run(c))
    };
    let report: serde_json::Value = serde_json::from_str(&bench(&["--json"])).unwrap();
    let spread = report["spread"].as_array().unwrap();
    let find = |name: &str| {
        spread
            .iter()
            .find(|s| s["name"] == name)
            .unwrap_or_else(|| panic!("no {name:?} in {report}"))
    };
    for name in [
        "deliver msgs/s",
        "raw stream msgs/s",
        "ratio deliver_msgs_per_s / raw_stream",
        "ratio raw_clients_via_busd / raw_stream",
    ] {
        let s = find(name);
        assert_eq!(s["rounds"].as_u64(), Some(3), "{s}");
        let (min, median, max) = (
            s["min"].as_f64().unwrap(),
            s["median"].as_f64().unwrap(),
            s["max"].as_f64().unwrap(),
        );
        assert!(0.0 < min && min <= median && median <= max, "{s}");
    }
    // The rest of the report is the last round's, which lies in the spread.
    let last = report["deliver"]["msgs_per_s"].as_f64().unwrap();
    let d = find("deliver msgs/s");
    assert!(d["min"].as_f64().unwrap() <= last && last <= d["max"].as_f64().unwrap());

    let text = bench(&[]);
    for round in ["round 1/3:", "round 2/3:", "round 3/3:", "over 3 rounds"] {
        assert!(text.contains(round), "{round:?} missing: {text}");
    }
}

#[test]
fn every_command_works_over_tcp_with_a_token() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = Config::with_socket(dir.path().join("busd.sock"));
    config.tcp = Some("127.0.0.1:0".into());
    config.token = Some("tok".into());
    let daemon = Daemon::start(config).unwrap();
    let tcp = daemon.tcp_address().unwrap().to_string();
    let remote = |args: &[&str]| {
        let mut c = Command::new(CLI);
        c.arg("--address").arg(&tcp).args(args).env("BUS_TOKEN", "tok");
        c
    };
    let out = stdout(&run(remote(&["list"])));
    assert!(out.contains(" tcp "), "{out}");
    assert!(out.contains("127.0.0.1:"), "{out}");
    stdout(&run(remote(&["send", "x.y", "over tcp"])));
    let info = stdout(&run(remote(&["info"])));
    assert!(info.contains(&tcp), "info lists the TCP address: {info}");
    let denied = run({
        let mut c = remote(&["list"]);
        c.env("BUS_TOKEN", "nope");
        c
    });
    assert!(!denied.status.success());
    assert!(String::from_utf8_lossy(&denied.stderr).contains("authentication failed"));
    // Counted, and shown by `bus-cli info` among the refusals.
    let info = stdout(&run(remote(&["info"])));
    let line = info
        .lines()
        .find(|l| l.trim_start().starts_with("auth_failed"))
        .unwrap_or_else(|| panic!("no auth_failed line: {info}"));
    assert_eq!(
        line.split_whitespace().collect::<Vec<_>>(),
        ["auth_failed", "-", "1"]
    );
}

/// `bus-cli info | head -1` and the like: when the reader of stdout is gone,
/// the command ends quietly and successfully instead of panicking.
#[test]
fn closed_stdout_ends_quietly() {
    let bus = daemon();
    for args in [&["info"][..], &["list"]] {
        let mut child = cli(&bus)
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        // Close the read end before the command writes anything.
        drop(child.stdout.take());
        let out = child.wait_with_output().unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "{args:?}: {:?} {stderr}", out.status);
        assert!(!stderr.contains("panicked"), "{args:?}: {stderr}");
    }
}

/// A bench count of zero is refused up front, naming the flag, rather than
/// running an empty or silently adjusted workload.
/// The publishers' flow control keeps even near-maximum messages within the
/// daemon's queue bound, so the run measures delivery, not loss (a floor of
/// 16 messages in flight lost a third of 1 MB messages).
#[test]
fn bench_large_messages_lose_nothing() {
    let bus = daemon();
    let out = run({
        let mut c = cli(&bus);
        c.args(["--address", &bus.daemon.address().to_string()]).args([
            "bench", "pubsub", "--size", "900000", "--msgs", "40", "--subs", "2", "--json",
        ]);
        c
    });
    let report: serde_json::Value = serde_json::from_str(&stdout(&out)).unwrap();
    assert_eq!(report["dropped"].as_u64(), Some(0), "{report}");
    assert_eq!(report["delivered"].as_u64(), Some(80), "{report}");
}

#[test]
fn bench_refuses_zero_counts() {
    for (args, flag) in [
        (&["bench", "pubsub", "--msgs", "0"][..], "--msgs"),
        (&["bench", "pubsub", "--pubs", "0"], "--pubs"),
        (&["bench", "pubsub", "--tasks", "0"], "--tasks"),
        (&["bench", "fanout", "--subs", "0"], "--subs"),
        (&["bench", "reqrep", "--requesters", "0"], "--requesters"),
        (&["bench", "pubsub", "--rounds", "0"], "--rounds"),
    ] {
        let out = Command::new(CLI).args(args).output().unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{args:?}");
        assert!(stderr.contains(flag), "{args:?}: {stderr}");
    }
}

/// A message count and a duration are two ways to end a run: asking for
/// both is refused, naming both, rather than one silently winning.
#[test]
fn bench_refuses_a_count_and_a_duration_together() {
    let out = Command::new(CLI)
        .args(["bench", "pubsub", "--msgs", "10", "--duration", "1s"])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("--msgs") && stderr.contains("--duration"),
        "{stderr}"
    );
}

/// The scenario of a responder process that stops (SIGSTOP) with a request
/// in hand and is then killed (SIGKILL): the queue group passes over it
/// meanwhile, and its request fails as soon as it dies, not at the
/// requester's timeout.
#[test]
fn a_stopped_then_killed_responder_process_costs_no_timeouts() {
    let bus = daemon();
    let mut member = start_sub(&bus, &["svc.work", "--queue", "workers"]);
    let signal = |sig| {
        let pid = nix::unistd::Pid::from_raw(member.id() as i32);
        nix::sys::signal::kill(pid, sig).unwrap();
    };
    signal(nix::sys::signal::Signal::SIGSTOP);
    let rt = tokio::runtime::Runtime::new().unwrap();
    let address = bus.daemon.address().clone();
    let long = Duration::from_secs(120);
    let (caller, stuck) = rt.block_on(async {
        let caller = libbus::Bus::connect(&address).await.unwrap();
        let stuck = tokio::spawn({
            let c = caller.clone();
            async move { c.request_with_timeout("svc.work", "stuck", long).await }
        });
        // Delivered to the stopped process (its socket takes it).
        bus_test_support::until("the request delivered", || async {
            let list: Vec<libbus::proto::api::ConnInfo> =
                caller.request_value(libbus::proto::api::LIST, &()).await.unwrap();
            list.iter().any(|c| c.name == "bus-cli" && c.msgs_out >= 1)
        })
        .await;
        let healthy = libbus::Bus::connect(&address).await.unwrap();
        let mut work = healthy.queue_subscribe("svc.work", "workers").await.unwrap();
        tokio::spawn(async move {
            let _keep = healthy;
            while let Some(m) = work.next().await {
                m.respond("done").await.unwrap();
            }
        });
        for i in 0..20 {
            let reply = bus_test_support::within("a reply from the healthy member", {
                caller.request_with_timeout("svc.work", format!("{i}"), long)
            })
            .await
            .unwrap();
            assert_eq!(reply.payload(), b"done");
        }
        (caller, stuck)
    });
    signal(nix::sys::signal::Signal::SIGKILL);
    let _ = member.0.take().map(|mut c| c.wait());
    let err = rt
        .block_on(bus_test_support::within(
            "the killed responder's request fails",
            stuck,
        ))
        .unwrap()
        .unwrap_err();
    assert!(matches!(err, libbus::Error::ResponderGone { .. }), "{err}");
    drop(caller);
}

#[test]
fn headers_from_send_show_in_sub_and_error_replies_exit_1() {
    let bus = daemon();
    let sub = start_sub(&bus, &["traced.*", "--headers", "--count", "1"]);
    let mut c = cli(&bus);
    c.args([
        "send",
        "traced.x",
        "hello",
        "-H",
        "Trace-Id=t-7",
        "-H",
        "Hop=a=b",
        "--header",
        "Hop=c",
    ]);
    stdout(&run(c));
    assert_eq!(
        stdout(&sub.output()),
        "traced.x hello\n  Trace-Id: t-7\n  Hop: a=b\n  Hop: c\n"
    );

    // A bad header is named before anything is sent.
    let mut c = cli(&bus);
    c.args(["send", "traced.x", "x", "-H", "no-equals-sign"]);
    let out = run(c);
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("NAME=VALUE"),
        "{out:?}"
    );

    // An error reply: `error: service error CODE: TEXT`, exit status 1.
    let rt = tokio::runtime::Runtime::new().unwrap();
    let address = bus.daemon.address().clone();
    let _responder = rt.block_on(async move {
        let c = libbus::Bus::connect(&address).await.unwrap();
        let mut s = c.subscribe("orders.get").await.unwrap();
        tokio::spawn(async move {
            while let Some(m) = s.next().await {
                let trace = m.headers().get("Trace-Id").unwrap_or("-").to_owned();
                m.respond_error(404, &format!("no such order (trace {trace})"))
                    .await
                    .unwrap();
            }
        });
        c
    });
    let mut c = cli(&bus);
    c.args(["request", "orders.get", "9", "-H", "Trace-Id=t-8"]);
    let out = run(c);
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(
        String::from_utf8_lossy(&out.stderr),
        "error: service error 404: no such order (trace t-8)\n"
    );
}

#[test]
fn list_closed_shows_connections_that_ended_and_why() {
    let bus = daemon();
    let mut c = cli(&bus);
    c.args(["send", "some.subject", "x"]);
    stdout(&run(c));
    let mut c = cli(&bus);
    c.args(["list", "--closed"]);
    let out = stdout(&run(c));
    let mut lines = out.lines();
    let header = lines.next().unwrap();
    for col in ["ID", "NAME", "PEER", "MSGS IN", "LIFETIME", "CLOSED", "REASON"] {
        assert!(header.contains(col), "{header}");
    }
    let row = lines
        .next()
        .unwrap_or_else(|| panic!("a closed connection listed: {out}"));
    assert!(
        row.contains("bus-cli") && row.trim_end().ends_with("end"),
        "{row}"
    );
    let mut c = cli(&bus);
    c.args(["list", "--closed", "--json"]);
    let json: serde_json::Value = serde_json::from_str(&stdout(&run(c))).unwrap();
    assert_eq!(json[0]["reason"], "End", "{json}");
    assert_eq!(json[0]["conn"]["msgs_in"], 1, "{json}");
}

/// Runs `bus-cli` with `args`, `input` on its stdin, and returns its output.
fn run_with_stdin(bus: &Bus, args: &[&str], input: &[u8]) -> Output {
    let mut c = cli(bus);
    let mut child = c
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(input).unwrap();
    let start = Instant::now();
    while child.try_wait().unwrap().is_none() {
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "bus-cli {args:?} did not finish"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    child.wait_with_output().unwrap()
}

#[test]
fn reply_serves_requests_with_echo_or_a_command() {
    let bus = daemon();
    let echo = start_listed(&bus, &["reply", "svc.echo", "--echo", "--count", "1"], "svc.echo");
    let mut c = cli(&bus);
    c.args(["request", "svc.echo", "ping", "-H", "Trace-Id=r1"]);
    assert_eq!(stdout(&run(c)), "ping\n");
    assert!(echo.output().status.success(), "exits after --count");

    let _upper = start_listed(
        &bus,
        &[
            "reply",
            "svc.upper",
            "--queue",
            "workers",
            "--command",
            "tr a-z A-Z; test \"$(cat)\" != fail || exit 3",
        ],
        "svc.upper",
    );
    let mut c = cli(&bus);
    c.args(["request", "svc.upper", "shout"]);
    assert_eq!(stdout(&run(c)), "SHOUT\n");

    let _failing = start_listed(
        &bus,
        &[
            "reply",
            "svc.fail",
            "--command",
            "echo 'no such thing' >&2; exit 4",
        ],
        "svc.fail",
    );
    let mut c = cli(&bus);
    c.args(["request", "svc.fail", "x"]);
    let out = run(c);
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(
        String::from_utf8_lossy(&out.stderr),
        "error: service error 4: no such thing\n"
    );
}

#[test]
fn send_lines_and_sub_raw_json_and_timestamps() {
    let bus = daemon();
    let raw = start_sub(&bus, &["lines.>", "--raw", "--count", "3"]);
    let json = start_sub(&bus, &["lines.>", "--json", "--timestamps", "--count", "3"]);
    let out = run_with_stdin(
        &bus,
        &["send", "lines.in", "--lines", "-H", "Kind=line"],
        b"one\ntwo\n\xff\xfe\n",
    );
    assert!(out.status.success(), "{out:?}");

    let raw = raw.output();
    assert_eq!(raw.stdout, b"one\ntwo\n\xff\xfe\n", "payloads as they came");
    let text = stdout(&json.output());
    let records: Vec<serde_json::Value> = text.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(records.len(), 3, "{text}");
    assert_eq!(records[0]["subject"], "lines.in");
    assert_eq!(records[0]["payload"], "one");
    assert_eq!(records[0]["headers"], serde_json::json!([["Kind", "line"]]));
    assert!(records[0]["reply"].is_null());
    assert!(
        records[0]["time"].as_str().is_some_and(|t| t.ends_with('Z')),
        "{text}"
    );
    assert_eq!(records[2]["payload_base64"], "//4=", "not UTF-8: base64");
}

#[test]
fn monitor_match_shows_only_the_patterns_given() {
    let bus = daemon();
    let mut monitor = start_listed(
        &bus,
        &["monitor", "--match", "audit.>", "--match", "alerts.*"],
        "alerts.*",
    );
    for (subject, payload) in [
        ("noise.x", "skip"),
        ("audit.login", "alice"),
        ("alerts.disk", "full"),
    ] {
        let mut c = cli(&bus);
        c.args(["send", subject, payload]);
        stdout(&run(c));
    }
    let text = monitor.read_until(&[" audit.login alice\n", " alerts.disk full\n"]);
    assert!(
        !text.contains("noise.x") && !text.contains("$BUS.event"),
        "{text}"
    );
}

/// `list` fetches every page: more connections than one frame describes.
#[test]
fn list_shows_every_connection_across_pages() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = Config::with_socket(dir.path().join("busd.sock"));
    config.max_frame = 16 << 10;
    let bus = Bus {
        daemon: Daemon::start(config).unwrap(),
        _dir: dir,
    };
    let rt = tokio::runtime::Runtime::new().unwrap();
    let address = bus.daemon.address().clone();
    let _clients = rt.block_on(async move {
        let mut v = Vec::new();
        for i in 0..80 {
            let opts = libbus::ConnectOptions::default().name(format!("client-{i:02}-{}", "n".repeat(250)));
            v.push(libbus::Bus::connect_with(&address, opts).await.unwrap());
        }
        v
    });
    let mut c = cli(&bus);
    c.args(["list", "--json"]);
    let json: serde_json::Value = serde_json::from_str(&stdout(&run(c))).unwrap();
    let names: Vec<&str> = json
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|c| c["name"].as_str())
        .collect();
    assert_eq!(
        names.iter().filter(|n| n.starts_with("client-")).count(),
        80,
        "{}",
        names.len()
    );
}

#[test]
fn list_id_shows_one_connection_in_full_live_or_closed() {
    let bus = daemon();
    let sub = start_sub(&bus, &["orders.>", "--queue", "billing"]);
    let list = || {
        let mut c = cli(&bus);
        c.args(["list", "--json"]);
        let v: serde_json::Value = serde_json::from_str(&stdout(&run(c))).unwrap();
        v
    };
    let all = list();
    let id = all
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["subs"].as_array().is_some_and(|s| !s.is_empty()))
        .unwrap()["id"]
        .as_u64()
        .unwrap();
    let mut c = cli(&bus);
    c.args(["list", &id.to_string()]);
    let out = stdout(&run(c));
    assert!(out.contains(&format!("id:            {id}\n")), "{out}");
    assert!(out.contains(&format!("pid {} ", sub.id())), "{out}");
    assert!(out.contains("orders.> (queue billing)"), "{out}");
    assert!(out.contains("idle:"), "{out}");
    drop(sub);
    // Once it has closed, the same command finds it among the closed.
    let start = Instant::now();
    let out = loop {
        let mut c = cli(&bus);
        c.args(["list", &id.to_string()]);
        let out = stdout(&run(c));
        if out.contains("closed:") {
            break out;
        }
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "never listed as closed: {out}"
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(out.contains("orders.> (queue billing)"), "{out}");
    let mut c = cli(&bus);
    c.args(["list", "99999"]);
    let out = run(c);
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("no connection with id 99999"),
        "{out:?}"
    );
}

#[test]
fn list_sort_orders_by_the_column_given() {
    let bus = daemon();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let address = bus.daemon.address().clone();
    let _clients = rt.block_on(async move {
        let mut v = Vec::new();
        for (name, msgs) in [("alpha", 0), ("zulu", 5), ("mike", 2)] {
            let opts = libbus::ConnectOptions::default().name(name);
            let c = libbus::Bus::connect_with(&address, opts).await.unwrap();
            for _ in 0..msgs {
                c.publish("x", "y").await.unwrap();
            }
            c.flush().await.unwrap();
            v.push(c);
        }
        v
    });
    let names = |sort: &str| -> Vec<String> {
        let mut c = cli(&bus);
        c.args(["list", "--json", "--sort", sort]);
        let v: serde_json::Value = serde_json::from_str(&stdout(&run(c))).unwrap();
        v.as_array()
            .unwrap()
            .iter()
            .map(|c| c["name"].as_str().unwrap().to_owned())
            .filter(|n| n != "bus-cli")
            .collect()
    };
    assert_eq!(names("msgs-in"), ["zulu", "mike", "alpha"]);
    assert_eq!(names("name"), ["alpha", "mike", "zulu"]);
    assert_eq!(names("id"), ["alpha", "zulu", "mike"]);
}

/// Polls `bus-cli names --json` (for at most 20 s) until `ready` holds.
fn wait_names(bus: &Bus, what: &str, ready: impl Fn(&serde_json::Value) -> bool) -> serde_json::Value {
    let start = Instant::now();
    loop {
        let mut c = cli(bus);
        c.args(["names", "--json"]);
        let names: serde_json::Value = serde_json::from_str(&stdout(&run(c))).unwrap();
        if ready(&names) {
            return names;
        }
        assert!(start.elapsed() < Duration::from_secs(20), "{what}: {names}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// `reply --name` serves a well-known name from a shell, a second one
/// waits in its queue, `names` shows both, `call` reaches the owner only,
/// and kill -9 of the owner's process passes the name on.
#[test]
fn reply_serves_a_name_whose_queue_takes_over_when_the_owner_is_killed() {
    let bus = daemon();
    let serve = |answer: &str| {
        let mut c = cli(&bus);
        c.args(["reply", "--name", "org.cli.svc", "--command", answer])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        SubProc(Some(common::spawn(&mut c).unwrap()))
    };
    let first = serve("echo first");
    let owner_pid = |n: &serde_json::Value| n[0]["owner"]["peer"]["Unix"]["pid"].as_u64();
    wait_names(&bus, "the first owns the name", |n| {
        owner_pid(n) == Some(u64::from(first.id()))
    });
    let mut second = serve("echo second");
    let names = wait_names(&bus, "the second is queued", |n| {
        n[0]["queue"].as_array().is_some_and(|q| q.len() == 1)
    });
    assert_eq!(names[0]["name"], "org.cli.svc");

    let mut c = cli(&bus);
    c.arg("names");
    let table = stdout(&run(c));
    assert!(table.starts_with("NAME"), "{table}");
    assert!(table.contains(&format!("pid {}", first.id())), "{table}");
    for (who, line) in [
        (&names[0]["owner"], "org.cli.svc (owner)"),
        (&names[0]["queue"][0], "org.cli.svc (queued, 1 ahead)"),
    ] {
        let mut c = cli(&bus);
        c.args(["list", &who["conn_id"].to_string()]);
        let full = stdout(&run(c));
        assert!(full.contains(&format!("names:         1\n  {line}\n")), "{full}");
    }

    // A subscriber to the method's subject does not get calls.
    let _snoop = start_sub(&bus, &["get"]);
    let call = |bus: &Bus| {
        let mut c = cli(bus);
        c.args(["call", "org.cli.svc", "get", "x"]);
        run(c)
    };
    assert_eq!(stdout(&call(&bus)), "first\n");

    let pid = nix::unistd::Pid::from_raw(first.id() as i32);
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGKILL).unwrap();
    wait_names(&bus, "the queued one owns the name", |n| {
        owner_pid(n) == Some(u64::from(second.id()))
    });
    assert_eq!(stdout(&call(&bus)), "second\n");
    let mut err = second.0.as_mut().and_then(|c| c.stderr.take()).unwrap();
    drop(second);
    let mut said = String::new();
    std::io::Read::read_to_string(&mut err, &mut said).unwrap();
    assert!(said.contains("queued for org.cli.svc"), "{said}");
    assert!(said.contains("owner of org.cli.svc: serving"), "{said}");

    // Nobody owns it: the call fails at once, exit status 1.
    wait_names(&bus, "the name is gone", |n| {
        n.as_array().is_some_and(Vec::is_empty)
    });
    let out = call(&bus);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("no responders"), "{err}");
    drop(first);
}

/// Shell completions and the man page, generated from the command-line
/// definitions: each completion script names the subcommands (the bash one
/// parses as bash), and the man page is roff (busd's: `process.rs`).
#[test]
fn completions_and_man_pages_are_generated() {
    let dir = tempfile::tempdir().unwrap();
    for shell in ["bash", "zsh", "fish"] {
        let mut c = Command::new(CLI);
        c.args(["completions", shell]);
        let script = stdout(&run(c));
        for sub in ["names", "call", "reply", "list"] {
            assert!(script.contains(sub), "{shell} completion lacks {sub}");
        }
        if shell == "bash" {
            let path = dir.path().join("bus-cli.bash");
            std::fs::write(&path, &script).unwrap();
            let check = Command::new("bash").arg("-n").arg(&path).output();
            match check {
                Ok(out) => assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr)),
                Err(e) => println!("SKIPPED (part): no bash to check the script's syntax: {e}"),
            }
        }
    }
    let mut c = Command::new(CLI);
    c.arg("manpage");
    let man = stdout(&run(c));
    assert!(man.contains(".TH bus-cli 1"), "{man}");
    assert!(man.contains("names"), "the subcommands are listed");
}

/// `sub --wait` started before the daemon waits for it, then subscribes;
/// without `--wait` it fails at once.
#[test]
fn sub_wait_waits_for_the_daemon() {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("busd.sock");
    let address = format!("unix:{}", socket.display());
    let mut c = Command::new(CLI);
    c.env("BUS_ADDRESS", &address)
        .args(["sub", "early.x", "--count", "1"]);
    let out = run(c);
    assert_eq!(out.status.code(), Some(1), "without --wait: fails at once");

    let mut c = Command::new(CLI);
    c.env("BUS_ADDRESS", &address)
        .args(["sub", "early.x", "--count", "1", "--wait"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut sub = SubProc(Some(common::spawn(&mut c).unwrap()));
    let daemon = Daemon::start(Config::with_socket(socket)).unwrap();
    let bus = Bus { daemon, _dir: dir };
    wait_listed(&bus, "early.x");
    assert!(
        sub.0.as_mut().unwrap().try_wait().unwrap().is_none(),
        "still running"
    );
    let mut c = cli(&bus);
    c.args(["send", "early.x", "made it"]);
    assert!(run(c).status.success());
    let out = sub.output();
    assert!(out.status.success());
    assert_eq!(String::from_utf8_lossy(&out.stdout), "early.x made it\n");
}

/// `send --fd PATH` attaches the file; `sub` says what came with a message.
#[test]
fn send_attaches_files_and_sub_shows_them() {
    let bus = daemon();
    let mut sub = start_sub(&bus, &["files.>", "--count", "1"]);
    let mut json = start_sub(&bus, &["files.>", "--count", "1", "--json"]);
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("note.txt");
    std::fs::write(&path, "inside").unwrap();
    let mut c = cli(&bus);
    c.args(["send", "files.note", "look", "--fd"]).arg(&path);
    run(c);
    let text = sub.read_until(&["files.note look", "fd: 1 attached"]);
    assert!(text.contains("fd: 1 attached"), "{text}");
    let text = json.read_until(&["\"fds\":1"]);
    assert!(text.contains("\"subject\":\"files.note\""), "{text}");
    // A file that cannot be opened is an error naming it, before sending.
    let mut c = cli(&bus);
    c.args(["send", "files.note", "x", "--fd", "/nonexistent/file"]);
    let out = c.output().unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("/nonexistent/file"));
}
