//! Faults and load against the `busd` binary in its own process: kill -9 and
//! restart under traffic (alone, and as the end of a bridged chain whose
//! middle holds messages for it), 10,000 idle connections, a stalled subscriber among
//! fast ones, and a million-message soak. Memory is read from the daemon's
//! own `$BUS.api.info` (`rss_bytes`). Timing and memory figures are printed
//! (`cargo test -- --nocapture`); only stable properties are asserted.

use std::{
    io::{Read, Write},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc,
    },
    time::{Duration, Instant},
};

use libbus::{
    codec,
    proto::{self, api, ClientFrame},
    Address, Bus, ConnectOptions, Event,
};

mod common;
use common::{info, until, until_answered, wait_listening, within, BUSD, WAIT};

/// A busd child process on a socket in its own temp dir; killed on drop.
struct Daemon {
    child: Child,
    socket: PathBuf,
    args: Vec<String>,
    _dir: Option<tempfile::TempDir>,
}

impl Daemon {
    fn start(args: &[&str]) -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        let socket = dir.path().join("busd.sock");
        let args: Vec<String> = args.iter().map(|a| a.to_string()).collect();
        let child = spawn(&socket, &args);
        wait_listening(&socket);
        Self {
            child,
            socket,
            args,
            _dir: Some(dir),
        }
    }

    fn address(&self) -> Address {
        Address::Unix(self.socket.clone())
    }

    /// SIGKILL: no cleanup, the socket file stays behind.
    fn kill_9(&mut self) {
        self.child.kill().expect("kill -9");
        self.child.wait().expect("reap");
    }

    /// A new daemon on the same socket (replacing the stale file).
    fn restart(&mut self) {
        self.child = spawn(&self.socket, &self.args);
        wait_listening(&self.socket);
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn spawn(socket: &Path, args: &[String]) -> Child {
    Command::new(BUSD)
        .arg("--socket")
        .arg(socket)
        .args(args)
        .env("RUST_LOG", "error")
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("spawn busd")
}

fn mib(bytes: u64) -> f64 {
    bytes as f64 / (1 << 20) as f64
}

fn hello_frame(name: &str) -> Vec<u8> {
    let mut buf = Vec::new();
    let hello = ClientFrame::Hello(proto::Hello {
        version: proto::PROTOCOL_VERSION,
        name,
        role: proto::Role::Client,
        auth: None,
    });
    codec::encode_into(&hello, &mut buf, u32::MAX).expect("encode");
    buf
}

/// A raw blocking connection that completed the handshake.
fn raw_connect(socket: &Path, name: &str) -> std::os::unix::net::UnixStream {
    let mut s = std::os::unix::net::UnixStream::connect(socket).expect("connect");
    s.set_read_timeout(Some(WAIT)).expect("timeout");
    s.write_all(&hello_frame(name)).expect("hello");
    let mut len = [0u8; 4];
    s.read_exact(&mut len).expect("welcome length");
    let mut body = vec![0u8; u32::from_le_bytes(len) as usize];
    s.read_exact(&mut body).expect("welcome");
    match codec::decode::<proto::ServerFrame>(&body) {
        Ok(proto::ServerFrame::Welcome(_)) => s,
        other => panic!("expected Welcome, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_and_restart_under_traffic_clients_heal() {
    let mut daemon = Daemon::start(&[]);
    let sub_conn = Bus::connect_with(&daemon.address(), ConnectOptions::default().name("sub"))
        .await
        .expect("connect");
    let mut sub_events = sub_conn.events();
    let mut sub = sub_conn.subscribe("tick").await.expect("subscribe");
    let publisher = Bus::connect_with(&daemon.address(), ConnectOptions::default().name("pub"))
        .await
        .expect("connect");

    // Publish a numbered tick every millisecond, through the outage.
    let published = Arc::new(AtomicU64::new(0));
    let counter = published.clone();
    let ticker = tokio::spawn(async move {
        for seq in 0u64..60_000 {
            if publisher.publish_value("tick", &seq).await.is_err() {
                break;
            }
            counter.store(seq + 1, Ordering::Relaxed);
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    });
    for _ in 0..50 {
        within("ticks before the crash", sub.next()).await.expect("tick");
    }

    daemon.kill_9();
    assert!(daemon.socket.exists(), "kill -9 leaves the socket file behind");
    let killed_at = published.load(Ordering::Relaxed);
    loop {
        match within("disconnect event", sub_events.next()).await {
            Some(Event::Disconnected { .. }) => break,
            Some(_) => continue,
            None => panic!("events ended"),
        }
    }
    tokio::time::sleep(Duration::from_millis(300)).await; // an outage, with ticks buffered
    daemon.restart();
    let restarted = Instant::now();

    loop {
        match within("reconnect event", sub_events.next()).await {
            Some(Event::Reconnected { attempts, .. }) => {
                println!(
                    "subscriber reconnected {:?} after the restart ({attempts} attempts)",
                    restarted.elapsed()
                );
                break;
            }
            Some(Event::Closed { reason }) => panic!("gave up: {reason}"),
            _ => continue,
        }
    }
    // Traffic resumes: a tick published after the crash arrives.
    loop {
        let m = within("ticks after the restart", sub.next()).await.expect("tick");
        let seq: u64 = m.decode().expect("seq");
        if seq > killed_at {
            println!(
                "traffic resumed {:?} after the restart (first tick seen: {seq}, {killed_at} published before the crash)",
                restarted.elapsed()
            );
            break;
        }
    }
    ticker.abort();
}

fn strs(v: &[String]) -> Vec<&str> {
    v.iter().map(String::as_str).collect()
}

/// The bridge link `node`, as `watcher`'s daemon sees it.
async fn bridge_to(watcher: &Bus, node: &str) -> Option<api::BridgeInfo> {
    info(watcher).await.bridges.into_iter().find(|b| b.node == node)
}

/// Polls `bridge_to(watcher, node)` until `done` holds (bounded by WAIT).
async fn wait_bridge(watcher: &Bus, node: &str, what: &str, done: impl Fn(&api::BridgeInfo) -> bool) {
    within(what, async {
        loop {
            if bridge_to(watcher, node).await.is_some_and(|b| done(&b)) {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
}

/// A chain a - b - c of busd processes; c (with a subscriber on it) is
/// killed with SIGKILL, a publishes meanwhile, and c is restarted: b held
/// what c wanted and delivers it, in order and once, when c is back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_one_daemon_of_a_chain_the_link_heals_and_held_messages_arrive() {
    let cfg = tempfile::tempdir().expect("temp dir");
    let token = cfg.path().join("token");
    std::fs::write(&token, "chain-token\n").expect("token");
    let config = cfg.path().join("busd.toml");
    std::fs::write(
        &config,
        "link_ping_interval = \"100ms\"\nlink_timeout = \"600ms\"\nbridge_hold = \"20s\"\n",
    )
    .expect("config");
    let common = |node: &'static str| -> Vec<String> {
        vec![
            "--config".into(),
            config.display().to_string(),
            "--token-file".into(),
            token.display().to_string(),
            "--node-id".into(),
            node.into(),
        ]
    };

    let mut b_args = common("b");
    b_args.extend(["--tcp".into(), "127.0.0.1:0".into()]);
    let b = Daemon::start(&strs(&b_args));
    let watcher = Bus::connect_with(&b.address(), ConnectOptions::default().name("watcher"))
        .await
        .expect("connect b");
    let b_tcp = info(&watcher)
        .await
        .listen
        .into_iter()
        .find(|l| l.starts_with("tcp://"))
        .expect("b listens on TCP");
    let mut a_args = common("a");
    a_args.extend(["--bridge".into(), b_tcp.clone()]);
    let a = Daemon::start(&strs(&a_args));
    let mut c_args = common("c");
    c_args.extend(["--bridge".into(), b_tcp]);
    let mut c = Daemon::start(&strs(&c_args));

    let sub_conn = Bus::connect_with(&c.address(), ConnectOptions::default().name("subscriber"))
        .await
        .expect("connect c");
    let mut sub = sub_conn.subscribe("held.>").await.expect("subscribe");
    let mut ping = sub_conn.subscribe("ping.c").await.expect("subscribe");
    tokio::spawn(async move {
        while let Some(m) = ping.next().await {
            let _ = m.respond("pong").await;
        }
    });
    let publisher = Bus::connect_with(&a.address(), ConnectOptions::default().name("publisher"))
        .await
        .expect("connect a");
    until_answered(&publisher, "ping.c").await;

    c.kill_9();
    wait_bridge(&watcher, "c", "b sees the link to c down", |l| l.state == "down").await;
    for seq in 0u64..300 {
        publisher.publish_value("held.x", &seq).await.expect("publish");
    }
    wait_bridge(&watcher, "c", "b holds messages for c", |l| l.buffered_bytes > 0).await;

    c.restart();
    let restarted = Instant::now();
    for expected in 0u64..300 {
        let m = within("held delivery", sub.next()).await.expect("open");
        let seq: u64 = m.decode().expect("seq");
        assert_eq!(seq, expected, "in order, no gaps, no duplicates");
    }
    println!(
        "held messages delivered {:?} after c restarted",
        restarted.elapsed()
    );
    let extra = tokio::time::timeout(Duration::from_millis(300), sub.next()).await;
    assert!(extra.is_err(), "a duplicate arrived");
    let link = bridge_to(&watcher, "c").await.expect("link to c");
    assert_eq!(
        (link.state.as_str(), link.buffered_bytes, link.dropped),
        ("up", 0, 0)
    );
}

/// Raises the soft open-file limit so that `n` descriptors fit, in this
/// process and in daemons it spawns (they inherit it). Without
/// CAP_SYS_RESOURCE the hard limit cannot grow; then it must already suffice.
fn raise_nofile(n: u64) {
    use nix::sys::resource::{getrlimit, setrlimit, Resource};
    let (soft, hard) = getrlimit(Resource::RLIMIT_NOFILE).expect("getrlimit");
    if soft >= n {
        return;
    }
    let hard = if hard >= n {
        hard
    } else {
        // Only root with CAP_SYS_RESOURCE may raise the hard limit.
        setrlimit(Resource::RLIMIT_NOFILE, n, n)
            .map(|()| n)
            .unwrap_or_else(|e| panic!("RLIMIT_NOFILE hard limit {hard} < {n} and cannot be raised: {e}"))
    };
    setrlimit(Resource::RLIMIT_NOFILE, n.min(hard), hard).expect("raise RLIMIT_NOFILE");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_thousand_idle_connections() {
    const N: usize = 10_000;
    // Each process holds one end of every connection.
    raise_nofile(N as u64 + 1024);
    let daemon = Daemon::start(&["--max-connections", "10100", "--max-connections-per-uid", "10100"]);
    let probe = Bus::connect(&daemon.address()).await.expect("connect");
    let before = info(&probe).await;

    let socket = daemon.socket.clone();
    let conns = tokio::task::spawn_blocking(move || {
        (0..N)
            .map(|i| raw_connect(&socket, &format!("idle-{i}")))
            .collect::<Vec<_>>()
    })
    .await
    .expect("connect 10k");
    let after = info(&probe).await;
    assert_eq!(after.connections, N as u64 + 1, "all held at once");
    let per_conn = after.rss_bytes.saturating_sub(before.rss_bytes) / N as u64;
    println!(
        "{N} idle connections: daemon RSS {:.1} MiB -> {:.1} MiB, {per_conn} bytes per connection",
        mib(before.rss_bytes),
        mib(after.rss_bytes)
    );
    // A leak guard only (the figure itself is reported, see README).
    assert!(per_conn < 64 << 10, "{per_conn} bytes per idle connection");

    drop(conns);
    // All are released again.
    let start = Instant::now();
    while info(&probe).await.connections > 1 {
        assert!(start.elapsed() < WAIT, "connections were not released");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stalled_subscriber_among_four_fast_ones_is_bounded() {
    const MAX_PENDING: u64 = 8 << 20; // the default
    const SLACK: u64 = 16 << 20;
    const N: u64 = 60_000;
    const SIZE: usize = 1024; // 60 MB published in all
    let daemon = Daemon::start(&[]);
    let probe = Bus::connect(&daemon.address()).await.expect("connect");

    // Subscribes, then never reads again.
    let mut stalled = raw_connect(&daemon.socket, "stalled");
    let mut sub = Vec::new();
    codec::encode_into(
        &ClientFrame::Sub(proto::Sub {
            sid: 1,
            pattern: "load",
            queue: None,
        }),
        &mut sub,
        u32::MAX,
    )
    .expect("encode");
    stalled.write_all(&sub).expect("subscribe");

    let received: Arc<Vec<AtomicU64>> = Arc::new((0..4).map(|_| AtomicU64::new(0)).collect());
    let mut fast = Vec::new();
    for i in 0..4 {
        let conn = Bus::connect(&daemon.address()).await.expect("connect");
        let mut s = conn.subscribe("load").await.expect("subscribe");
        let received = received.clone();
        fast.push(tokio::spawn(async move {
            let _conn = conn;
            for _ in 0..N {
                let m = within("fast delivery", s.next()).await.expect("message");
                assert_eq!(m.payload().len(), SIZE);
                received[i].fetch_add(1, Ordering::Relaxed);
            }
            s.dropped()
        }));
    }
    let publisher = Bus::connect(&daemon.address()).await.expect("connect");
    publisher.flush().await.expect("flush");
    let baseline = info(&probe).await.rss_bytes;

    let payload = vec![0x5a; SIZE];
    let mut peak = baseline;
    for chunk in 0..N / 1000 {
        for _ in 0..1000 {
            publisher.publish("load", &payload).await.expect("publish");
        }
        publisher.flush().await.expect("flush");
        // Pace by the slowest fast subscriber: they must lose nothing.
        let sent = (chunk + 1) * 1000;
        let start = Instant::now();
        while received
            .iter()
            .map(|r| r.load(Ordering::Relaxed))
            .min()
            .unwrap_or(0)
            + 2000
            < sent
        {
            assert!(start.elapsed() < WAIT, "fast subscribers stalled");
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        if chunk % 5 == 0 {
            peak = peak.max(info(&probe).await.rss_bytes);
        }
    }
    for f in fast {
        assert_eq!(
            within("fast subscriber", f).await.expect("task"),
            0,
            "a fast subscriber lost messages"
        );
    }
    peak = peak.max(info(&probe).await.rss_bytes);
    let list: Vec<api::ConnInfo> = within("list", probe.request(api::LIST, []))
        .await
        .expect("list")
        .decode()
        .expect("decode");
    let stalled_info = list
        .iter()
        .find(|c| c.name == "stalled")
        .expect("stalled still listed");
    println!(
        "stalled subscriber: {} dropped, {} KiB pending; daemon RSS baseline {:.1} MiB, peak {:.1} MiB (bound {:.1} MiB)",
        stalled_info.dropped,
        stalled_info.pending_bytes >> 10,
        mib(baseline),
        mib(peak),
        mib(baseline + MAX_PENDING + SLACK)
    );
    assert!(stalled_info.dropped > 0);
    assert!(stalled_info.pending_bytes <= MAX_PENDING);
    assert!(
        peak < baseline + MAX_PENDING + SLACK,
        "daemon grew past baseline + max_pending + slack"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn soak_a_million_messages_without_leaking() {
    const N: u64 = 1_000_000;
    const MARGIN: u64 = 16 << 20;
    let daemon = Daemon::start(&[]);
    let probe = Bus::connect(&daemon.address()).await.expect("connect");
    let sub_conn = Bus::connect(&daemon.address()).await.expect("connect");
    let mut sub = sub_conn.subscribe("soak").await.expect("subscribe");
    let publisher = Bus::connect(&daemon.address()).await.expect("connect");
    publisher.flush().await.expect("flush");
    let idle = info(&probe).await.rss_bytes;

    let received = Arc::new(AtomicU64::new(0));
    let progress = received.clone();
    let reader = tokio::spawn(async move {
        let mut n = 0u64;
        while n < N {
            within("soak delivery", sub.next()).await.expect("message");
            n += 1;
            progress.store(n, Ordering::Relaxed);
        }
        (n, sub.dropped())
    });
    let started = Instant::now();
    let payload = [0xa5u8; 128];
    for i in 0..N {
        publisher.publish("soak", payload).await.expect("publish");
        // Stay under the limits: at most WINDOW messages (~3 MB) ahead of the
        // subscriber, well inside max_pending (8 MiB), so nothing may be lost.
        const WINDOW: u64 = 20_000;
        if i % (WINDOW / 2) == WINDOW / 2 - 1 {
            publisher.flush().await.expect("flush");
            let start = Instant::now();
            while received.load(Ordering::Relaxed) + WINDOW / 2 < i {
                assert!(start.elapsed() < WAIT, "subscriber stalled");
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
        }
    }
    publisher.flush().await.expect("flush");
    let (n, dropped) = within("all delivered", reader).await.expect("reader");
    let took = started.elapsed();
    assert_eq!((n, dropped), (N, 0));
    let busy = info(&probe).await;
    assert_eq!(
        busy.msgs_out,
        N + 1,
        "every message delivered (plus the first info reply)"
    );
    drop(sub_conn);
    drop(publisher);
    // Measured once the daemon has let go of both connections.
    until("the clients' connections closed", || async {
        info(&probe).await.connections == 1
    })
    .await;
    let after = info(&probe).await.rss_bytes;
    println!(
        "soak: {N} messages in {took:?}; daemon RSS idle {:.1} MiB, after {:.1} MiB (margin {:.0} MiB)",
        mib(idle),
        mib(after),
        mib(MARGIN)
    );
    assert!(after < idle + MARGIN, "RSS did not return near idle");
}

/// RSS that closed connections may leave behind (the README's margin).
const RETURN_MARGIN: u64 = 8 << 20;

/// What a peer makes the daemon hold, sent as raw bytes on `n` connections
/// made by `connect`: RSS before, at the peak (all held open), and after
/// they close, from the daemon's own info. Returns the growth per
/// connection at the peak and what is left after, in bytes.
async fn rss_held_by(
    probe: &Bus,
    label: &str,
    n: usize,
    mut connect: impl FnMut() -> Box<dyn std::any::Any>,
    taken: impl Fn(&api::ServerInfo) -> bool,
) -> (u64, u64) {
    let before = info(probe).await.rss_bytes;
    let held: Vec<_> = (0..n).map(|_| connect()).collect();
    // Wait until the daemon shows it has taken the peers in.
    until("the daemon has taken the peers in", || async {
        taken(&info(probe).await)
    })
    .await;
    let mut peak = info(probe).await.rss_bytes;
    for _ in 0..10 {
        peak = peak.max(info(probe).await.rss_bytes);
    }
    drop(held);
    until("the peers' connections closed", || async {
        info(probe).await.connections == 1
    })
    .await;
    // The allocator hands freed memory back lazily: give it a bounded while.
    let start = Instant::now();
    let mut after = info(probe).await.rss_bytes;
    while after > before + RETURN_MARGIN / 2 && start.elapsed() < Duration::from_secs(5) {
        tokio::time::sleep(Duration::from_millis(100)).await;
        after = info(probe).await.rss_bytes;
    }
    let per_conn = peak.saturating_sub(before) / n as u64;
    println!(
        "{label}: {n} connections, daemon RSS {:.1} MiB before, {:.1} MiB peak ({per_conn} bytes each), {:.1} MiB after",
        mib(before),
        mib(peak),
        mib(after)
    );
    (per_conn, after.saturating_sub(before))
}

/// A peer that declares a large frame costs the daemon what it sent, not
/// what it declared: before the handshake it is refused beyond
/// `max_handshake_frame` (Unix and TCP alike, the token unchecked yet), and
/// after it a partial frame's buffer grows with the bytes received.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn declared_frames_cost_what_arrives_not_what_is_declared() {
    const N: usize = 300;
    raise_nofile(4 * N as u64 + 1024);
    let dir = tempfile::tempdir().expect("temp dir");
    let token = dir.path().join("token");
    std::fs::write(&token, "s3cret-token\n").expect("token");
    let token = token.to_string_lossy().into_owned();
    // The pending-handshake budget is not what this test is about: room
    // for all of them at once.
    let daemon = Daemon::start(&[
        "--tcp",
        "127.0.0.1:0",
        "--token-file",
        &token,
        "--max-pending-handshakes",
        "1000",
    ]);
    let probe = Bus::connect(&daemon.address()).await.expect("connect");
    let tcp = info(&probe)
        .await
        .listen
        .iter()
        .find_map(|a| a.strip_prefix("tcp://").map(str::to_owned))
        .expect("a tcp listener");
    let socket = daemon.socket.clone();
    let refused = |i: &api::ServerInfo| {
        i.refused
            .iter()
            .find(|(n, _)| n == "max_handshake_frame")
            .map_or(0, |(_, c)| *c)
    };
    let declare_1mib = {
        let mut bytes = (1u32 << 20).to_le_bytes().to_vec();
        bytes.extend_from_slice(&[0u8; 60 << 10]);
        bytes
    };

    // Before the handshake, declaring 1 MiB and sending 60 KiB of it.
    let unix_pre = rss_held_by(
        &probe,
        "unix, 1 MiB declared before Hello",
        N,
        || {
            let mut s = std::os::unix::net::UnixStream::connect(&socket).expect("connect");
            let _ = s.write_all(&declare_1mib);
            Box::new(s)
        },
        |i| refused(i) >= N as u64,
    )
    .await;
    let tcp_pre = rss_held_by(
        &probe,
        "tcp, 1 MiB declared before the token",
        N,
        || {
            let mut s = std::net::TcpStream::connect(&tcp).expect("connect");
            let _ = s.write_all(&declare_1mib);
            Box::new(s)
        },
        |i| refused(i) >= 2 * N as u64,
    )
    .await;
    // A Hello that never completes, within max_handshake_frame.
    let dribble = rss_held_by(
        &probe,
        "unix, a partial Hello",
        N,
        || {
            let mut s = std::os::unix::net::UnixStream::connect(&socket).expect("connect");
            let mut partial = 3000u32.to_le_bytes().to_vec();
            partial.extend_from_slice(&[1, 0, 3]);
            s.write_all(&partial).expect("partial hello");
            Box::new(s)
        },
        |_| true,
    )
    .await;
    // After the handshake: 1 MiB declared, 60 KiB of it sent.
    let post = rss_held_by(
        &probe,
        "unix, 1 MiB declared after the handshake",
        N,
        || {
            let mut s = raw_connect(&socket, "declarer");
            s.write_all(&declare_1mib).expect("partial frame");
            Box::new(s)
        },
        |i| i.connections > N as u64,
    )
    .await;
    for (what, (per_conn, _), bound) in [
        ("before Hello", unix_pre, 64 << 10),
        ("before the token", tcp_pre, 64 << 10),
        ("a partial Hello", dribble, 64 << 10),
        ("a partial frame after the handshake", post, 256 << 10),
    ] {
        assert!(
            per_conn < bound,
            "{what}: {per_conn} bytes per connection (bound {bound})"
        );
    }
    // What closed connections leave behind goes back to the system (each
    // worker collects its allocator's free pages when it goes idle).
    for (what, (_, left)) in [
        ("before Hello", unix_pre),
        ("before the token", tcp_pre),
        ("a partial Hello", dribble),
        ("a partial frame after the handshake", post),
    ] {
        assert!(
            left < RETURN_MARGIN,
            "{what}: {left} bytes of RSS left after the connections closed (margin {RETURN_MARGIN})"
        );
    }
    let refused = info(&probe).await.refused;
    let count = |name: &str| refused.iter().find(|(n, _)| n == name).map_or(0, |(_, c)| *c);
    assert!(count("max_handshake_frame") >= 2 * N as u64, "{refused:?}");
}
