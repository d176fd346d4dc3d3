//! busd hosts joined through a real NATS server or cluster (`[upstream]`):
//! interest, exactly-once delivery, queue groups, request/reply with native
//! NATS clients, and outages (kill -9 of a server) with every message
//! counted. Each test starts its own nats-server processes on loopback
//! (any free port); without nats-server installed it says so and skips.

use std::{
    collections::{BTreeMap, HashMap},
    sync::{
        atomic::{AtomicU64, Ordering::SeqCst},
        Arc,
    },
    time::Duration,
};

use bus_tests::{
    nats::{self, NatsServer},
    server_info, until, until_answered, within, TestBus,
};
use futures_util::StreamExt;
use libbus::{proto::api, Bus, Error, Headers, Subscription};

/// The nats-server binary, or return from the test (it printed why).
macro_rules! nats_or_skip {
    () => {
        match nats::binary() {
            Some(b) => b,
            None => return,
        }
    };
}

/// A daemon named `node` joined to `urls`.
fn host(node: &str, urls: &[String]) -> TestBus {
    host_with(node, urls, |_| {})
}

fn host_with(node: &str, urls: &[String], f: impl FnOnce(&mut busd::Config)) -> TestBus {
    let (node, urls) = (node.to_owned(), urls.to_vec());
    TestBus::with_config(move |c| {
        c.node_id = Some(node);
        c.upstream.urls = urls;
        f(c);
    })
}

/// Answers every request on `subject` on `bus` with its payload.
async fn echo(bus: &Bus, subject: &str) -> tokio::task::JoinHandle<()> {
    let mut sub = bus.subscribe(subject).await.unwrap();
    tokio::spawn(async move {
        while let Some(m) = sub.next().await {
            let _ = m.respond(m.payload()).await;
        }
    })
}

/// The next message's payload, decoded (within the test's bound).
async fn next_value<T: serde::de::DeserializeOwned>(sub: &mut Subscription, what: &str) -> T {
    let m = within(what, sub.next()).await.expect("subscription open");
    m.decode().expect("a numbered payload")
}

/// Receives exactly `n` messages numbered 0..n (in order), then checks that
/// nothing more arrives.
async fn expect_in_order(sub: &mut Subscription, n: u64, who: &str) {
    for i in 0..n {
        assert_eq!(next_value::<u64>(sub, who).await, i, "{who}: in order, once each");
    }
    let extra = tokio::time::timeout(Duration::from_millis(300), sub.next()).await;
    assert!(extra.is_err(), "{who}: a duplicate arrived");
}

async fn publish_numbered(bus: &Bus, subject: &str, n: u64) {
    for i in 0..n {
        bus.publish_value(subject, &i).await.unwrap();
    }
    bus.flush().await.unwrap();
}

async fn upstream_info(bus: &Bus) -> api::UpstreamInfo {
    server_info(bus)
        .await
        .upstream
        .expect("the daemon has an upstream")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hosts_share_one_bus_through_a_nats_cluster() {
    let bin = nats_or_skip!();
    let cluster = nats::cluster(&bin, 3);
    let a = host("host-a", &[cluster[0].url()]);
    let b = host("host-b", &[cluster[1].url()]);
    let (ca, cb) = (a.client("a").await, b.client("b").await);
    let native = within("native connect", async_nats::connect(cluster[2].url()))
        .await
        .unwrap();

    // Overlapping patterns on one host, a local subscriber on the
    // publisher's host, and a native NATS subscriber on a third node.
    let mut b_star = cb.subscribe("orders.*").await.unwrap();
    let mut b_full = cb.subscribe("orders.>").await.unwrap();
    let mut b_sender = cb.subscribe_with_sender("who.>").await.unwrap();
    let mut a_local = ca.subscribe("orders.>").await.unwrap();
    let mut n_sub = native.subscribe("orders.>").await.unwrap();
    let mut n_ping = native.subscribe("ping.native").await.unwrap();
    let n_client = native.clone();
    let n_responder = tokio::spawn(async move {
        while let Some(m) = n_ping.next().await {
            if let Some(r) = m.reply {
                let _ = n_client.publish(r, "pong".into()).await;
            }
        }
    });
    let ping_b = echo(&cb, "ping.b").await;
    // Subscriptions made before the responders are in place upstream by
    // the time the responders answer.
    until_answered(&ca, "ping.b").await;
    until_answered(&ca, "ping.native").await;

    publish_numbered(&ca, "orders.new", 100).await;
    expect_in_order(&mut b_star, 100, "host-b orders.*").await;
    expect_in_order(&mut b_full, 100, "host-b orders.>").await;
    expect_in_order(&mut a_local, 100, "host-a local").await;
    for i in 0..100u64 {
        let m = within("native", n_sub.next()).await.unwrap();
        assert_eq!(m.subject.as_str(), "orders.new");
        assert_eq!(postcard::from_bytes::<u64>(&m.payload).unwrap(), i);
    }

    // The other way: a native publisher reaches both hosts, once each.
    for i in 0..100u64 {
        let payload = postcard::to_allocvec(&i).unwrap();
        native.publish("orders.native", payload.into()).await.unwrap();
    }
    native.flush().await.unwrap();
    expect_in_order(&mut b_star, 100, "host-b orders.* from NATS").await;
    expect_in_order(&mut b_full, 100, "host-b orders.> from NATS").await;
    expect_in_order(&mut a_local, 100, "host-a from NATS").await;

    // Headers cross both ways; the sender names its host.
    let mut h = Headers::new();
    h.insert("trace-id", "t-1");
    ca.publish_with_headers("who.am.i", &h, "x").await.unwrap();
    let m = within("with sender", b_sender.next()).await.unwrap();
    assert_eq!(m.headers().get("trace-id"), Some("t-1"));
    let sender = m.sender().expect("a sender");
    assert_eq!(sender.node, "host-a");
    assert_eq!(sender.uid, Some(nix::unistd::getuid().as_raw()));

    // replies, orders.*, orders.>, who.>, ping.b (counted once the
    // interest task's pass ends, just after the last one went out).
    until("host-b's five upstream subscriptions", || async {
        upstream_info(&cb).await.subscriptions == 5
    })
    .await;
    assert_eq!(upstream_info(&cb).await.state, "up");
    let a_info = upstream_info(&ca).await;
    assert!(a_info.msgs_out >= 101, "{a_info:?}");
    assert_eq!(a_info.dropped, 0);

    // Interest withdrawn here is withdrawn upstream.
    drop((b_star, b_full, b_sender));
    until("host-b's upstream subscriptions withdrawn", || async {
        upstream_info(&cb).await.subscriptions == 2
    })
    .await;
    ping_b.abort();
    n_responder.abort();
}

/// A message's (origin tag, number), as the queue-group test sends them.
type Tagged = (u8, u64);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_queue_group_across_hosts_delivers_each_message_once_preferring_a_local_member() {
    let bin = nats_or_skip!();
    let cluster = nats::cluster(&bin, 3);
    let a = host("host-a", &[cluster[0].url()]);
    let b = host("host-b", &[cluster[1].url()]);
    let c = host("host-c", &[cluster[2].url()]);
    let (ca, cb, cc) = (a.client("a").await, b.client("b").await, c.client("c").await);
    let native = within("native connect", async_nats::connect(cluster[2].url()))
        .await
        .unwrap();
    let got: Arc<std::sync::Mutex<HashMap<Tagged, Vec<&'static str>>>> = Arc::default();
    let mut members = Vec::new();
    for (who, bus) in [("a", &ca), ("b", &cb)] {
        let mut sub = bus.queue_subscribe("jobs.*", "workers").await.unwrap();
        let got = got.clone();
        members.push(tokio::spawn(async move {
            while let Some(m) = sub.next().await {
                let t: Tagged = m.decode().unwrap();
                got.lock().unwrap().entry(t).or_default().push(who);
            }
        }));
    }
    let pings = [echo(&ca, "ping.a").await, echo(&cb, "ping.b").await];
    until_answered(&cc, "ping.a").await;
    until_answered(&cc, "ping.b").await;

    const N: u64 = 100;
    for i in 0..N {
        ca.publish_value("jobs.x", &(0u8, i)).await.unwrap();
        cc.publish_value("jobs.x", &(1u8, i)).await.unwrap();
        let p = postcard::to_allocvec(&(2u8, i)).unwrap();
        native.publish("jobs.x", p.into()).await.unwrap();
    }
    ca.flush().await.unwrap();
    cc.flush().await.unwrap();
    native.flush().await.unwrap();
    until("every job delivered", || async {
        got.lock().unwrap().len() as u64 == 3 * N
    })
    .await;
    // Anything sent twice would arrive within this.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let got = got.lock().unwrap();
    let mut per: BTreeMap<(u8, &str), usize> = BTreeMap::new();
    for ((origin, _), whom) in got.iter() {
        assert_eq!(whom.len(), 1, "one member per message: {whom:?}");
        *per.entry((*origin, whom[0])).or_default() += 1;
    }
    println!("deliveries per (origin, member): {per:?}");
    assert_eq!(
        per.get(&(0, "a")),
        Some(&(N as usize)),
        "host-a's own member takes host-a's jobs"
    );
    assert_eq!(per.get(&(0, "b")), None, "{per:?}");
    for m in members.into_iter().chain(pings) {
        m.abort();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_cross_hosts_and_reach_native_nats_services() {
    let bin = nats_or_skip!();
    let server = NatsServer::start(&bin, "solo");
    let a = host("host-a", &[server.url()]);
    let b = host("host-b", &[server.url()]);
    let (ca, cb) = (a.client("a").await, b.client("b").await);
    let native = within("native connect", async_nats::connect(server.url()))
        .await
        .unwrap();

    let echo_b = echo(&cb, "svc.echo").await;
    let mut fail = cb.subscribe("svc.fail").await.unwrap();
    let fail_b = tokio::spawn(async move {
        while let Some(m) = fail.next().await {
            let _ = m.respond_error(404, "no such order").await;
        }
    });
    let mut n_svc = native.subscribe("native.echo").await.unwrap();
    let n_client = native.clone();
    let native_echo = tokio::spawn(async move {
        while let Some(m) = n_svc.next().await {
            if let Some(r) = m.reply {
                let _ = n_client.publish(r, m.payload).await;
            }
        }
    });
    until_answered(&ca, "svc.echo").await;
    until_answered(&ca, "native.echo").await;

    // Host to host, and host to a native service.
    let r = within("request", ca.request("svc.echo", "hi")).await.unwrap();
    assert_eq!(r.payload(), b"hi");
    let r = within("request", ca.request("native.echo", "hey")).await.unwrap();
    assert_eq!(r.payload(), b"hey");
    // An error reply crosses as one.
    match within("error reply", ca.request("svc.fail", "")).await {
        Err(Error::Service { code, text }) => assert_eq!((code, text.as_str()), (404, "no such order")),
        other => panic!("expected a service error, got {other:?}"),
    }
    // A native requester reaches a bus service, errors in NATS's headers too.
    let r = within("native request", native.request("svc.echo", "yo".into()))
        .await
        .unwrap();
    assert_eq!(&r.payload[..], b"yo");
    let r = within("native request", native.request("svc.fail", "".into()))
        .await
        .unwrap();
    let h = r.headers.expect("error headers");
    assert_eq!(h.get("Nats-Service-Error-Code").map(|v| v.as_str()), Some("404"));

    // Nobody anywhere: "no responders", at once.
    let t = std::time::Instant::now();
    match within("no responders", ca.request("svc.nobody", "")).await {
        Err(Error::NoResponders { .. }) => {}
        other => panic!("expected no responders, got {other:?}"),
    }
    assert!(t.elapsed() < Duration::from_secs(5), "answered, not timed out");
    // A local responder answers, and NATS's "no responders" for the copy
    // that went up does not fail the request.
    let local = echo(&ca, "svc.local").await;
    for i in 0..50u32 {
        let r = within("local request", ca.request("svc.local", i.to_string())).await;
        assert_eq!(r.expect("answered locally").payload(), i.to_string().as_bytes());
    }
    for t in [echo_b, fail_b, native_echo, local] {
        t.abort();
    }
}

/// A TCP relay on loopback that the test can close to new connections: a
/// host behind it stays away from the server until the test lets it back.
struct Gate {
    port: u16,
    open: Arc<std::sync::atomic::AtomicBool>,
    task: tokio::task::JoinHandle<()>,
}

impl Gate {
    async fn to(port: u16) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let open = Arc::new(std::sync::atomic::AtomicBool::new(true));
        let gate = open.clone();
        let local = listener.local_addr().unwrap().port();
        let task = tokio::spawn(async move {
            while let Ok((mut inbound, _)) = listener.accept().await {
                if !gate.load(SeqCst) {
                    continue; // dropped: refused
                }
                tokio::spawn(async move {
                    if let Ok(mut out) = tokio::net::TcpStream::connect(("127.0.0.1", port)).await {
                        let _ = tokio::io::copy_bidirectional(&mut inbound, &mut out).await;
                    }
                });
            }
        });
        Self {
            port: local,
            open,
            task,
        }
    }
}

impl Drop for Gate {
    fn drop(&mut self) {
        self.task.abort();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_outage_holds_messages_in_order_counts_drops_and_restores_subscriptions() {
    let bin = nats_or_skip!();
    let mut server = NatsServer::start(&bin, "solo");
    let gate = Gate::to(server.port).await;
    // About 30 of the 100 messages published during the outage fit.
    const HELD: usize = 2048;
    let a = host_with("host-a", &[format!("nats://127.0.0.1:{}", gate.port)], |c| {
        c.upstream_buffer = HELD;
        // host-b is known to be back before host-a: no need to wait.
        c.upstream_settle = Duration::ZERO;
    });
    let b = host("host-b", &[server.url()]);
    let (ca, cb) = (a.client("a").await, b.client("b").await);
    let mut local = ca.subscribe("orders.>").await.unwrap();
    let mut remote = cb.subscribe("orders.>").await.unwrap();
    let ping = echo(&cb, "ping.b").await;
    until_answered(&ca, "ping.b").await;
    let mut events = ca.subscribe("$BUS.event.upstream.>").await.unwrap();
    let base = upstream_info(&ca).await.msgs_out;

    publish_numbered(&ca, "orders.new", 10).await;
    for i in 0..10u64 {
        assert_eq!(next_value::<u64>(&mut remote, "before the outage").await, i);
    }

    // The server dies; host-a may not reach it again until host-b has.
    gate.open.store(false, SeqCst);
    server.kill9();
    let down = within("upstream.down", events.next()).await.unwrap();
    assert_eq!(down.subject(), api::EVENT_UPSTREAM_DOWN);
    until("host-a sees the upstream down", || async {
        upstream_info(&ca).await.state == "down"
    })
    .await;

    for i in 10..110u64 {
        ca.publish_value("orders.new", &(i, [0u8; 32])).await.unwrap();
    }
    ca.flush().await.unwrap();
    // Local traffic is untouched.
    for i in 0..10u64 {
        assert_eq!(next_value::<u64>(&mut local, "local").await, i);
    }
    for i in 10..110u64 {
        let (seq, _): (u64, [u8; 32]) = next_value(&mut local, "local").await;
        assert_eq!(seq, i);
    }
    let held = upstream_info(&ca).await;
    assert!(
        held.buffered_bytes > 0 && held.buffered_bytes <= HELD as u64,
        "{held:?}"
    );
    assert!(
        held.dropped > 0,
        "beyond upstream_buffer, dropped and counted: {held:?}"
    );
    let kept = 100 - held.dropped;

    // The server is back; host-b resubscribes by itself.
    server.restart();
    let native = within("native connect", async_nats::connect(server.url()))
        .await
        .unwrap();
    within("host-b's subscriptions restored", async {
        loop {
            let r = native.request("ping.b", "".into()).await;
            if r.is_ok_and(|m| m.status.is_none()) {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    gate.open.store(true, SeqCst);
    let up = within("upstream.up", events.next()).await.unwrap();
    assert_eq!(up.subject(), api::EVENT_UPSTREAM_UP);

    // What was held arrives, oldest first; what did not fit never does.
    for i in 10..10 + kept {
        let (seq, _): (u64, [u8; 32]) = next_value(&mut remote, "held messages").await;
        assert_eq!(seq, i, "in order, the oldest kept");
    }
    publish_numbered(&ca, "orders.after", 3).await;
    for i in 0..3u64 {
        let m = within("after", remote.next()).await.unwrap();
        assert_eq!((m.subject(), m.decode::<u64>().unwrap()), ("orders.after", i));
    }
    let after = upstream_info(&ca).await;
    assert_eq!(after.buffered_bytes, 0);
    assert_eq!(after.dropped, held.dropped, "nothing else dropped");
    assert_eq!(after.msgs_out - base, 10 + kept + 3, "{after:?}");
    // Every message is accounted for: delivered + dropped == published.
    println!(
        "published 113, delivered {}, dropped {}",
        10 + kept + 3,
        after.dropped
    );
    ping.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_a_server_restart_held_messages_wait_for_the_other_hosts_to_resubscribe() {
    let bin = nats_or_skip!();
    let mut server = NatsServer::start(&bin, "solo");
    // The default upstream_settle (3 s) outlasts the reconnect backoff.
    let a = host("host-a", &[server.url()]);
    let b = host("host-b", &[server.url()]);
    let (ca, cb) = (a.client("a").await, b.client("b").await);
    let mut remote = cb.subscribe("orders.>").await.unwrap();
    let ping = echo(&cb, "ping.b").await;
    until_answered(&ca, "ping.b").await;
    server.kill9();
    until("host-a sees the upstream down", || async {
        upstream_info(&ca).await.state == "down"
    })
    .await;
    until("host-b sees the upstream down", || async {
        upstream_info(&cb).await.state == "down"
    })
    .await;
    publish_numbered(&ca, "orders.new", 5).await;
    assert!(upstream_info(&ca).await.buffered_bytes > 0);
    // Both reconnect, in whichever order; host-a's held messages wait.
    server.restart();
    expect_in_order(&mut remote, 5, "held messages after the restart").await;
    ping.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_of_a_cluster_node_while_traffic_flows_loses_nothing_published_after_the_host_knew() {
    let bin = nats_or_skip!();
    let mut cluster = nats::cluster(&bin, 3);
    let seeds = [cluster[0].url(), cluster[1].url()];
    let a = host("host-a", &seeds);
    let b = host("host-b", &[cluster[2].url()]);
    let (ca, cb) = (a.client("a").await, b.client("b").await);
    let mut sub = cb.subscribe("ticks").await.unwrap();
    let mut events = ca.subscribe("$BUS.event.upstream.down").await.unwrap();
    let ping = echo(&cb, "ping.b").await;
    until_answered(&ca, "ping.b").await;
    // The node host-a is on now.
    let on = upstream_info(&ca).await.server;
    let victim = cluster
        .iter()
        .position(|s| on.ends_with(&format!(":{}", s.port)))
        .expect("host-a is on a seed");

    const N: u64 = 3000;
    const KILL_AT: u64 = 1000;
    let knew = Arc::new(AtomicU64::new(u64::MAX));
    let publisher = {
        let (ca, knew) = (ca.clone(), knew.clone());
        tokio::spawn(async move {
            for i in 0..N {
                ca.publish_value("ticks", &i).await.unwrap();
                if knew.load(SeqCst) == u64::MAX {
                    if let Ok(Some(_)) = tokio::time::timeout(Duration::ZERO, events.next()).await {
                        // Everything from here on was published after
                        // host-a knew its server was gone.
                        knew.store(i, SeqCst);
                    }
                }
                if i % 10 == 0 {
                    ca.flush().await.unwrap();
                    tokio::time::sleep(Duration::from_millis(1)).await;
                }
                if i == KILL_AT {
                    while knew.load(SeqCst) == u64::MAX {
                        // Bounded: the down event comes within the test's wait.
                        match within("upstream.down", events.next()).await {
                            Some(_) => knew.store(i, SeqCst),
                            None => panic!("events ended"),
                        }
                    }
                }
            }
            ca.flush().await.unwrap();
        })
    };
    // Kill the node while the publisher runs (it waits at KILL_AT until
    // host-a has seen the loss).
    until("the traffic reaches the kill point", || async {
        upstream_info(&ca).await.msgs_out >= KILL_AT - 100
    })
    .await;
    cluster[victim].kill9();
    within("publisher", publisher).await.unwrap();
    let knew = knew.load(SeqCst);
    let mut seen = Vec::new();
    within("the last tick", async {
        while seen.last() != Some(&(N - 1)) {
            let m = sub.next().await.expect("open");
            seen.push(m.decode::<u64>().unwrap());
        }
    })
    .await;
    let extra = tokio::time::timeout(Duration::from_millis(300), sub.next()).await;
    assert!(extra.is_err(), "a duplicate arrived late");
    assert!(seen.windows(2).all(|w| w[0] < w[1]), "in order, no duplicates");
    let info = upstream_info(&ca).await;
    let missing: Vec<u64> = (0..N).filter(|i| seen.binary_search(i).is_err()).collect();
    println!(
        "published {N}, delivered {}, dropped {}, lost in flight at the kill {} (host-a knew at {knew}): {:?}",
        seen.len(),
        info.dropped,
        missing.len(),
        missing.first()..missing.last()
    );
    assert_eq!(info.dropped, 0, "the buffer was large enough");
    assert!(
        missing.iter().all(|m| *m <= knew),
        "only what was in flight before host-a knew may be lost: {missing:?}"
    );
    assert_eq!(info.state, "up", "host-a moved to another seed");
    // And the node comes back into the cluster while traffic flows on.
    cluster[victim].restart();
    publish_numbered(&ca, "ticks", 5).await;
    for i in 0..5u64 {
        assert_eq!(next_value::<u64>(&mut sub, "after restart").await, i);
    }
    ping.abort();
}

#[test]
fn bridges_and_an_upstream_are_refused_together() {
    let mut c = busd::Config::default();
    c.upstream.urls = vec!["nats://127.0.0.1:4222".into()];
    c.bridge = vec!["tcp://127.0.0.1:7420".into()];
    let e = c.validate().expect_err("refused");
    assert!(e.contains("upstream and bridges cannot be combined"), "{e}");
    c.bridge.clear();
    c.upstream.urls = vec!["127.0.0.1:4222".into()];
    let e = c.validate().expect_err("refused");
    assert!(e.contains("nats://host:port"), "{e}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn overlapping_import_patterns_deliver_once_and_import_limits_what_comes_down() {
    let bin = nats_or_skip!();
    let server = NatsServer::start(&bin, "solo");
    let a = host_with("host-a", &[server.url()], |c| {
        // orders.* and *.new overlap on orders.new; audit.> lies within
        // audit.> twice over and is kept once.
        c.upstream.import = vec![
            "orders.*".into(),
            "*.new".into(),
            "audit.x".into(),
            "audit.>".into(),
        ];
    });
    let ca = a.client("a").await;
    let mut sub = ca.subscribe(">").await.unwrap();
    let native = within("native connect", async_nats::connect(server.url()))
        .await
        .unwrap();
    // orders.*, *.new and audit.> upstream (cut down from >), plus replies.
    until("host-a's upstream subscriptions", || async {
        upstream_info(&ca).await.subscriptions == 4
    })
    .await;
    // Wait until what host-a asked for is in place at the server.
    within("the subscriptions reach the server", async {
        loop {
            native.publish("orders.probe", "".into()).await.unwrap();
            native.flush().await.unwrap();
            if let Ok(Some(_)) = tokio::time::timeout(Duration::from_millis(50), sub.next()).await {
                break;
            }
        }
    })
    .await;
    while tokio::time::timeout(Duration::from_millis(300), sub.next())
        .await
        .is_ok()
    {}
    for s in [
        "stock.new",
        "orders.new",
        "orders.a.b",
        "orders.old",
        "audit.x",
        "audit.y.z",
        "other",
    ] {
        native.publish(s, "x".into()).await.unwrap();
    }
    native.flush().await.unwrap();
    let mut got = Vec::new();
    while let Ok(Some(m)) = tokio::time::timeout(Duration::from_millis(300), sub.next()).await {
        got.push(m.subject().to_owned());
    }
    // Through different upstream subscriptions, so in no set order.
    got.sort();
    assert_eq!(
        got,
        ["audit.x", "audit.y.z", "orders.new", "orders.old", "stock.new"],
        "once each, and nothing outside import"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_daemon_with_an_upstream_refuses_bridge_links() {
    // No server is needed: the refusal comes at the handshake. (Nothing
    // listens on loopback port 1.)
    let a = host("host-a", &["nats://127.0.0.1:1".into()]);
    let mut raw = a.raw().await;
    raw.send(&libbus::proto::ClientFrame::Hello(libbus::proto::Hello {
        version: libbus::proto::PROTOCOL_VERSION,
        name: "host-x",
        role: libbus::proto::Role::Bridge,
        auth: None,
    }))
    .await;
    let (_, message) = raw.expect_error_then_close().await;
    assert!(message.contains("takes no bridge links"), "{message}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_upstream_logs_in_with_a_token_a_password_or_over_tls() {
    let bin = nats_or_skip!();
    let dir = tempfile::tempdir().unwrap();
    let secret = |name: &str, value: &str| {
        let p = dir.path().join(name);
        std::fs::write(&p, format!("{value}\n")).unwrap();
        p
    };
    let pki = bus_tests::TestPki::generate(dir.path(), "nats");
    let token = NatsServer::start_configured(&bin, "token", "authorization { token: \"s3cret\" }\n");
    let password = NatsServer::start_configured(
        &bin,
        "password",
        "authorization { user: bus, password: \"pa55\" }\n",
    );
    let tls = NatsServer::start_configured(
        &bin,
        "tls",
        &format!(
            "tls {{ cert_file: {:?}, key_file: {:?} }}\n",
            pki.cert.display().to_string(),
            pki.key.display().to_string()
        ),
    );
    let token_file = secret("token", "s3cret");
    let password_file = secret("password", "pa55");
    let hosts = [
        host_with("by-token", &[token.url()], |c| {
            c.upstream.token_file = Some(token_file)
        }),
        host_with("by-password", &[password.url()], |c| {
            c.upstream.user = Some("bus".into());
            c.upstream.password_file = Some(password_file);
        }),
        host_with("over-tls", &[format!("tls://127.0.0.1:{}", tls.port)], |c| {
            c.upstream.ca = Some(pki.ca.clone())
        }),
    ];
    for h in &hosts {
        let bus = h.client("probe").await;
        until("the upstream is up", || async {
            upstream_info(&bus).await.state == "up"
        })
        .await;
    }
    // A wrong token never gets in.
    let wrong = secret("wrong", "guess");
    let refused = host_with("refused", &[token.url()], |c| c.upstream.token_file = Some(wrong));
    let bus = refused.client("probe").await;
    // By the time a good host has connected again, the bad one has tried.
    let again = host_with("again", &[token.url()], |c| {
        c.upstream.token_file = Some(dir.path().join("token"))
    });
    let probe = again.client("probe").await;
    until("the good host is up", || async {
        upstream_info(&probe).await.state == "up"
    })
    .await;
    let info = upstream_info(&bus).await;
    assert_eq!(
        (info.state.as_str(), info.connects),
        ("connecting", 0),
        "{info:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_local_request_keeps_its_local_tracking_with_an_upstream() {
    let bin = nats_or_skip!();
    let server = NatsServer::start(&bin, "solo");
    let a = host("host-a", &[server.url()]);
    let caller = a.client("caller").await;
    until("the upstream is up", || async {
        upstream_info(&caller).await.state == "up"
    })
    .await;
    let responder = a.client("responder").await;
    let mut sub = responder.subscribe("svc.flaky").await.unwrap();
    let pending = tokio::spawn({
        let c = caller.clone();
        async move {
            c.request_with_timeout("svc.flaky", "x", Duration::from_secs(120))
                .await
        }
    });
    // It went up too, where nobody answers; the local responder has it.
    within("the request", sub.next()).await.expect("delivered");
    responder.close().await.unwrap();
    let err = within("ResponderGone, not the timeout", pending)
        .await
        .unwrap()
        .unwrap_err();
    assert!(matches!(&err, Error::ResponderGone { .. }), "{err}");
}

#[test]
fn unreadable_upstream_secrets_stop_the_daemon_at_start() {
    let dir = tempfile::tempdir().unwrap();
    let mut c = busd::Config::with_socket(dir.path().join("busd.sock"));
    c.upstream.urls = vec!["nats://127.0.0.1:1".into()];
    c.upstream.token_file = Some(dir.path().join("missing"));
    let e = busd::Daemon::start(c.clone()).expect_err("refused").to_string();
    assert!(e.contains("reading the token file"), "{e}");
    c.upstream.token_file = None;
    let creds = dir.path().join("bad.creds");
    std::fs::write(&creds, "not a credentials file\n").unwrap();
    c.upstream.creds_file = Some(creds);
    let e = busd::Daemon::start(c).expect_err("refused").to_string();
    assert!(e.contains("credentials file"), "{e}");
}
