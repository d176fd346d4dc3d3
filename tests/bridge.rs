//! Bridged daemons on loopback: every topology delivers each message exactly
//! once to each subscriber; request/reply, "no responders" and queue groups
//! work across hosts; interest is withdrawn; a restarted node gets what was
//! held for it, in order.

use std::{collections::HashMap, time::Duration};

use bus_tests::{server_info, until, within, TestBus};
use libbus::{Bus, Error, Subscription};

const TOKEN: &str = "bridge-token";

/// A daemon named `node` listening on TCP, bridged to `peers`.
fn node(node: &str, peers: &[&TestBus]) -> TestBus {
    node_with(node, peers, |_| {})
}

/// [`node`], its configuration then adjusted by `f`.
fn node_with(node: &str, peers: &[&TestBus], f: impl FnOnce(&mut busd::Config)) -> TestBus {
    let bridges: Vec<String> = peers.iter().map(|p| p.tcp_address().to_string()).collect();
    let node = node.to_owned();
    TestBus::with_config(move |c| {
        c.node_id = Some(node);
        c.tcp = Some("127.0.0.1:0".into());
        c.token = Some(TOKEN.into());
        c.bridge = bridges;
        c.link_ping_interval = Duration::from_millis(100);
        c.link_timeout = Duration::from_millis(600);
        c.bridge_hold = Duration::from_secs(10);
        f(c);
    })
}

/// Waits until every node answers `ping.<name>` from `from`: routes and
/// interest have converged (subscriptions made before the responders are
/// known too, since they were announced no later).
async fn converge(from: &Bus, names: &[&str], responders: &[&Bus]) {
    let mut keep = Vec::new();
    for (name, bus) in names.iter().zip(responders) {
        let mut sub = bus.subscribe(&format!("ping.{name}")).await.unwrap();
        keep.push(tokio::spawn(async move {
            while let Some(m) = sub.next().await {
                let _ = m.respond("pong").await;
            }
        }));
    }
    for name in names {
        within("convergence", async {
            loop {
                match from
                    .request_with_timeout(&format!("ping.{name}"), "", Duration::from_millis(500))
                    .await
                {
                    Ok(_) => break,
                    Err(Error::NoResponders { .. } | Error::Timeout(_)) => {
                        tokio::time::sleep(Duration::from_millis(20)).await
                    }
                    Err(e) => panic!("ping {name}: {e}"),
                }
            }
        })
        .await;
    }
    for k in keep {
        k.abort();
    }
}

/// Receives exactly `n` numbered messages (0..n, each once), then checks
/// that nothing more arrives.
async fn expect_exactly(sub: &mut Subscription, n: u64, who: &str) {
    let mut seen: HashMap<u64, usize> = HashMap::new();
    for _ in 0..n {
        let m = within("bridged delivery", sub.next()).await.expect("open");
        let seq: u64 = m.decode().unwrap();
        *seen.entry(seq).or_default() += 1;
    }
    assert_eq!(seen.len() as u64, n, "{who}: some messages missing or duplicated");
    assert!(seen.values().all(|c| *c == 1), "{who}: duplicates");
    let extra = tokio::time::timeout(Duration::from_millis(300), sub.next()).await;
    assert!(
        extra.is_err(),
        "{who}: a duplicate arrived late: {:?}",
        extra.ok().flatten().map(|m| m.subject().to_owned())
    );
}

async fn publish_numbered(bus: &Bus, subject: &str, n: u64) {
    for i in 0..n {
        bus.publish_value(subject, &i).await.unwrap();
    }
    bus.flush().await.unwrap();
}

/// Subscribes one client per node to `data.>`, converges, publishes from
/// each node in turn, and checks exactly-once everywhere.
async fn exactly_once(nodes: &[(&str, &TestBus)]) {
    let mut clients = Vec::new();
    let mut subs = Vec::new();
    for (name, bus) in nodes {
        let c = bus.client(&format!("sub-{name}")).await;
        subs.push(c.subscribe("data.>").await.unwrap());
        clients.push(c);
    }
    let names: Vec<&str> = nodes.iter().map(|(n, _)| *n).collect();
    let refs: Vec<&Bus> = clients.iter().collect();
    for from in &clients {
        converge(from, &names, &refs).await;
    }
    for (i, from) in clients.iter().enumerate() {
        publish_numbered(from, &format!("data.from.{}", names[i]), 200).await;
        for (j, sub) in subs.iter_mut().enumerate() {
            expect_exactly(sub, 200, &format!("{} from {}", names[j], names[i])).await;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chain_delivers_exactly_once() {
    let b = node("b", &[]);
    let a = node("a", &[&b]);
    let c = node("c", &[&b]);
    exactly_once(&[("a", &a), ("b", &b), ("c", &c)]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn triangle_delivers_exactly_once() {
    let a = node("a", &[]);
    let b = node("b", &[&a]);
    let c = node("c", &[&a, &b]);
    exactly_once(&[("a", &a), ("b", &b), ("c", &c)]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn star_delivers_exactly_once() {
    let hub = node("hub", &[]);
    let x = node("x", &[&hub]);
    let y = node("y", &[&hub]);
    let z = node("z", &[&hub]);
    exactly_once(&[("hub", &hub), ("x", &x), ("y", &y), ("z", &z)]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_reply_and_no_responders_across_a_chain() {
    let b = node("b", &[]);
    let a = node("a", &[&b]);
    let c = node("c", &[&b]);
    let asker = a.client("asker").await;
    let server = c.client("server").await;
    let mut svc = server.subscribe("svc.time").await.unwrap();
    tokio::spawn(async move {
        while let Some(req) = svc.next().await {
            let _ = req
                .respond(format!("answer to {}", String::from_utf8_lossy(req.payload())))
                .await;
        }
    });
    converge(&asker, &["c"], &[&server]).await;
    for i in 0..50 {
        let reply = within("request", asker.request("svc.time", format!("q{i}")))
            .await
            .unwrap();
        assert_eq!(reply.payload(), format!("answer to q{i}").as_bytes());
    }
    // Nobody anywhere: fails at once, not after the timeout.
    let started = std::time::Instant::now();
    let r = asker
        .request_with_timeout("svc.nobody", "?", Duration::from_secs(10))
        .await;
    assert!(matches!(r, Err(Error::NoResponders { .. })), "{r:?}");
    assert!(started.elapsed() < Duration::from_secs(5));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queue_group_across_hosts_once_overall_preferring_local() {
    let b = node("b", &[]);
    let a = node("a", &[&b]);
    let c = node("c", &[&b]);
    let mut members = Vec::new();
    let mut clients = Vec::new();
    for (name, bus) in [("a", &a), ("c1", &c), ("c2", &c)] {
        let cl = bus.client(name).await;
        members.push((name, cl.queue_subscribe("work.>", "workers").await.unwrap()));
        clients.push(cl);
    }
    let pb = b.client("publisher-b").await;
    let pa = a.client("publisher-a").await;
    converge(&pb, &["a", "c"], &[&clients[0], &clients[1]]).await;

    // From b (no local member): each message to exactly one member overall.
    publish_numbered(&pb, "work.job", 300).await;
    let mut seen: HashMap<u64, usize> = HashMap::new();
    let mut per_member = Vec::new();
    for (name, sub) in members.iter_mut() {
        let mut n = 0;
        while let Ok(Some(m)) = tokio::time::timeout(Duration::from_millis(500), sub.next()).await {
            *seen.entry(m.decode::<u64>().unwrap()).or_default() += 1;
            n += 1;
        }
        per_member.push((*name, n));
    }
    assert_eq!(seen.len(), 300, "every job delivered: {per_member:?}");
    assert!(seen.values().all(|c| *c == 1), "no job twice: {per_member:?}");
    assert!(
        per_member.iter().filter(|(_, n)| *n > 0).count() >= 2,
        "spread over hosts: {per_member:?}"
    );

    // From a (a local member): all stay local.
    publish_numbered(&pa, "work.local", 100).await;
    expect_exactly(&mut members[0].1, 100, "a's member").await;
    for (name, sub) in members.iter_mut().skip(1) {
        let got = tokio::time::timeout(Duration::from_millis(300), sub.next()).await;
        assert!(got.is_err(), "{name} got a job that had a local member");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_traffic_crosses_a_link_without_interest() {
    let b = node("b", &[]);
    let a = node("a", &[&b]);
    let pa = a.client("publisher").await;
    let cb = b.client("subscriber").await;
    let sub = cb.subscribe("w.>").await.unwrap();
    converge(&pa, &["b"], &[&cb]).await;
    publish_numbered(&pa, "w.x", 10).await;
    drop(sub); // withdraws the interest
    cb.flush().await.unwrap();
    // Wait until a no longer knows of any w.> interest: a request there
    // then finds no responders at once.
    until("a forgets the withdrawn interest", || async {
        matches!(
            pa.request_with_timeout("w.probe", "", Duration::from_secs(2))
                .await,
            Err(Error::NoResponders { .. })
        )
    })
    .await;
    let out = || async { server_info(&pa).await.bridges[0].msgs_out };
    let before = out().await;
    publish_numbered(&pa, "w.y", 100).await;
    pa.flush().await.unwrap();
    // An absence has no event to wait for: give a wrongly routed message
    // time to cross.
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(out().await, before, "messages crossed a link with no interest");
    // Unrelated subjects never cross either.
    publish_numbered(&pa, "other", 100).await;
    assert_eq!(out().await, before);
    let i = server_info(&pa).await;
    assert_eq!(i.node_id, "a");
    assert_eq!(i.bridges[0].node, "b");
    assert_eq!(i.bridges[0].state, "up");
    assert!(i.bridges[0].outbound);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restarted_node_gets_held_messages_in_order() {
    let b = node("b", &[]);
    let a = node("a", &[&b]);
    let mut c = node("c", &[&b]);
    let pa = a.client("publisher").await;
    let watcher = b.client("watcher").await;
    let sub_conn = c.client("subscriber").await;
    let mut sub = sub_conn.subscribe("held.>").await.unwrap();
    converge(&pa, &["c"], &[&sub_conn]).await;

    c.stop();
    // b notices the link is down.
    within("link down at b", async {
        loop {
            let i = server_info(&watcher).await;
            if i.bridges.iter().any(|l| l.node == "c" && l.state == "down") {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    publish_numbered(&pa, "held.x", 300).await;
    // All 300 held at b before c comes back: a message that reaches b only
    // after c's new state (with no subscriber yet) is not held for it, by
    // design (docs/bridging.md). The link frames they make, byte for byte:
    let held_bytes: u64 = (0..300u64)
        .map(|i| {
            let payload = postcard::to_allocvec(&i).unwrap();
            let routed = libbus::proto::link::Routed {
                origin: "a",
                subject: "held.x",
                reply_to: None,
                payload: &payload,
                queue_targets: Vec::new(),
            };
            let from = libbus::proto::link::Origin {
                conn_id: pa.conn_id(),
                uid: Some(nix::unistd::getuid().as_raw()),
            };
            let sent = libbus::proto::link::LinkFrame::Sent(from, &[], routed);
            let mut frame = Vec::new();
            libbus::codec::encode_into(&sent, &mut frame, u32::MAX).unwrap();
            frame.len() as u64
        })
        .sum();
    bus_tests::until("all 300 held at b", || async {
        server_info(&watcher)
            .await
            .bridges
            .iter()
            .any(|l| l.node == "c" && l.buffered_bytes == held_bytes)
    })
    .await;

    c.restart();
    // The subscriber reconnects to the new c and resubscribes; b releases
    // what it held once c wants it again.
    let mut next = 0u64;
    while next < 300 {
        let m = match tokio::time::timeout(Duration::from_secs(15), sub.next()).await {
            Ok(m) => m.expect("open"),
            Err(_) => {
                let watcher_c = c.client("diag").await;
                panic!(
                    "no held delivery {next} within 15 s; b's links: {:?}; c: {:?}; c's connections: {:?}",
                    server_info(&watcher).await.bridges,
                    server_info(&watcher_c).await.bridges,
                    watcher_c
                        .request(libbus::proto::api::LIST, [])
                        .await
                        .unwrap()
                        .decode::<Vec<libbus::proto::api::ConnInfo>>()
                        .unwrap()
                        .iter()
                        .map(|i| (i.name.clone(), i.subs.len(), i.msgs_out, i.dropped))
                        .collect::<Vec<_>>()
                );
            }
        };
        let seq: u64 = m.decode().unwrap();
        assert_eq!(seq, next, "in order, no gaps, no duplicates");
        next += 1;
    }
    let extra = tokio::time::timeout(Duration::from_millis(300), sub.next()).await;
    assert!(extra.is_err(), "a duplicate arrived");
    let link = server_info(&watcher)
        .await
        .bridges
        .into_iter()
        .find(|l| l.node == "c")
        .unwrap();
    assert_eq!(
        (link.state.as_str(), link.buffered_bytes, link.dropped),
        ("up", 0, 0)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_bridge_with_events() {
    let dir = tempfile::tempdir().unwrap();
    let pki = bus_tests::TestPki::generate(dir.path(), "cluster");
    let (cert, key, ca) = (pki.cert.clone(), pki.key.clone(), pki.ca.clone());
    let a = TestBus::with_config(move |c| {
        c.node_id = Some("a".into());
        c.tcp = Some("127.0.0.1:0".into());
        c.token = Some(TOKEN.into());
        c.tls_cert = Some(cert);
        c.tls_key = Some(key);
        c.link_ping_interval = Duration::from_millis(100);
        c.link_timeout = Duration::from_millis(600);
    });
    let libbus::Address::Tls(host_port) = a.tcp_address() else {
        panic!("expected tls://")
    };
    let port = host_port.rsplit_once(':').unwrap().1.to_owned();
    let watcher = a.client("watcher").await;
    let mut events = watcher.subscribe("$BUS.event.bridge.>").await.unwrap();
    let mut b = TestBus::with_config(move |c| {
        c.node_id = Some("b".into());
        c.token = Some(TOKEN.into());
        c.bridge = vec![format!("tls://localhost:{port}")];
        c.bridge_ca = Some(ca);
        c.link_ping_interval = Duration::from_millis(100);
        c.link_timeout = Duration::from_millis(600);
    });
    let up: libbus::proto::api::BridgeInfo = within("bridge.up", events.next())
        .await
        .unwrap()
        .decode()
        .unwrap();
    assert_eq!(
        (up.node.as_str(), up.state.as_str(), up.outbound),
        ("b", "up", false)
    );

    let sub_conn = a.client("sub").await;
    let mut sub = sub_conn.subscribe("secure.>").await.unwrap();
    let pb = b.client("pub").await;
    converge(&pb, &["a"], &[&sub_conn]).await;
    publish_numbered(&pb, "secure.x", 50).await;
    expect_exactly(&mut sub, 50, "a over TLS").await;

    b.stop();
    let m = within("bridge.down", events.next()).await.unwrap();
    assert_eq!(m.subject(), libbus::proto::api::EVENT_BRIDGE_DOWN);
    let down: libbus::proto::api::BridgeInfo = m.decode().unwrap();
    assert_eq!((down.node.as_str(), down.state.as_str()), ("b", "down"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn held_messages_beyond_bridge_buffer_are_dropped_and_counted() {
    let a = node("a", &[]);
    let b = TestBus::with_config({
        let peer = a.tcp_address().to_string();
        move |c| {
            c.node_id = Some("b".into());
            c.token = Some(TOKEN.into());
            c.bridge = vec![peer];
            c.bridge_buffer = 16 << 10;
            c.link_ping_interval = Duration::from_millis(100);
            c.link_timeout = Duration::from_millis(600);
        }
    });
    let mut a = a;
    let sub_conn = a.client("sub").await;
    let _sub = sub_conn.subscribe("big.>").await.unwrap();
    let pb = b.client("pub").await;
    converge(&pb, &["a"], &[&sub_conn]).await;
    a.stop();
    within("link down", async {
        while server_info(&pb).await.bridges[0].state == "up" {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    let payload = vec![7u8; 1000];
    for _ in 0..50 {
        pb.publish("big.x", &payload).await.unwrap();
    }
    pb.flush().await.unwrap();
    let link = server_info(&pb).await.bridges.remove(0);
    assert!(link.buffered_bytes <= 16 << 10, "{link:?}");
    assert!(link.buffered_bytes > 10 << 10, "held up to the bound: {link:?}");
    assert!(link.dropped >= 30, "the rest dropped and counted: {link:?}");
}

/// A leaf with no listener and no token of its own bridges to a hub with the
/// hub's token from `bridge_token_file`; a leaf presenting a wrong token is
/// refused (counted as `auth_failed` at the hub) and its link never comes up.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bridge_token_file_authenticates_to_the_remote_side() {
    let hub = node("hub", &[]);
    let files = tempfile::tempdir().unwrap();
    let (good, bad) = (files.path().join("good"), files.path().join("bad"));
    std::fs::write(&good, format!("{TOKEN}\n")).unwrap();
    std::fs::write(&bad, "not-the-token\n").unwrap();
    let leaf = |name: &'static str, token_file: std::path::PathBuf| {
        let hub_addr = hub.tcp_address().to_string();
        TestBus::with_config(move |c| {
            c.node_id = Some(name.into());
            c.bridge = vec![hub_addr];
            c.bridge_token_file = Some(token_file);
        })
    };
    let good_leaf = leaf("good-leaf", good);
    let bad_leaf = leaf("bad-leaf", bad);

    let at_hub = hub.client("watcher").await;
    let mut sub = at_hub.subscribe("leaf.>").await.unwrap();
    let at_leaf = good_leaf.client("publisher").await;
    converge(&at_leaf, &["hub"], &[&at_hub]).await;
    at_leaf.publish("leaf.hello", "hi").await.unwrap();
    let m = within("message from the leaf", sub.next()).await.unwrap();
    assert_eq!(m.payload(), b"hi");

    within("the hub refuses the wrong token", async {
        loop {
            let refused = server_info(&at_hub).await.refused;
            if refused.iter().any(|(k, n)| k == "auth_failed" && *n > 0) {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    let at_bad = bad_leaf.client("watcher").await;
    let links = server_info(&at_bad).await.bridges;
    assert_eq!(links.len(), 1);
    assert_ne!(links[0].state, "up", "{links:?}");
    let hub_links = server_info(&at_hub).await.bridges;
    assert!(hub_links.iter().all(|l| l.node != "bad-leaf"), "{hub_links:?}");
}

/// Messages a node's links gave up on, plus those its connections named
/// `subscriber` dropped: every loss the bus reports.
async fn reported_losses(bus: &TestBus) -> u64 {
    let probe = bus.client("probe").await;
    let links: u64 = server_info(&probe).await.bridges.iter().map(|l| l.dropped).sum();
    let conns: Vec<libbus::proto::api::ConnInfo> =
        probe.request_value(libbus::proto::api::LIST, &()).await.unwrap();
    links
        + conns
            .iter()
            .filter(|c| c.name == "subscriber")
            .map(|c| c.dropped)
            .sum::<u64>()
}

/// The chain a - b - c with each link dialed by the side given, a
/// publisher on a and a subscriber on c; b is restarted while messages
/// flow. Every message is delivered or reported lost, exactly.
async fn restart_middle_node(a_dials_b: bool, c_dials_b: bool) {
    let wiring = format!(
        "a{}b, b{}c",
        if a_dials_b { "->" } else { "<-" },
        if c_dials_b { "<-" } else { "->" }
    );
    let a_first = (!a_dials_b).then(|| node("a", &[]));
    let c_first = (!c_dials_b).then(|| node("c", &[]));
    let b_peers: Vec<&TestBus> = a_first.iter().chain(c_first.iter()).collect();
    let mut b = node("b", &b_peers);
    let a = a_first.unwrap_or_else(|| node("a", &[&b]));
    let c = c_first.unwrap_or_else(|| node("c", &[&b]));

    let publisher = a.client("publisher").await;
    let sub_conn = c.client("subscriber").await;
    let mut sub = sub_conn.subscribe("counted.>").await.unwrap();
    converge(&publisher, &["c"], &[&sub_conn]).await;

    // Received sequence numbers, and how many arrived twice.
    let received = std::sync::Arc::new(std::sync::Mutex::new((std::collections::HashSet::new(), 0u64)));
    let receiver = tokio::spawn({
        let received = received.clone();
        async move {
            while let Some(m) = sub.next().await {
                let seq: u64 = m.decode().unwrap();
                let mut r = received.lock().unwrap();
                if !r.0.insert(seq) {
                    r.1 += 1;
                }
            }
        }
    });
    let published = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
    let stop = tokio_util::sync::CancellationToken::new();
    let sender = tokio::spawn({
        let (published, stop, publisher) = (published.clone(), stop.clone(), publisher.clone());
        async move {
            let mut tick = tokio::time::interval(Duration::from_millis(1));
            for i in 0..30_000u64 {
                tokio::select! {
                    _ = stop.cancelled() => break,
                    _ = tick.tick() => {}
                }
                publisher.publish_value("counted.x", &i).await.unwrap();
                published.store(i + 1, std::sync::atomic::Ordering::SeqCst);
            }
            publisher.flush().await.unwrap();
        }
    });
    let count = || published.load(std::sync::atomic::Ordering::SeqCst);
    until("traffic flowing", || async { count() >= 300 }).await;
    tokio::task::block_in_place(|| b.stop());
    b.restart();
    let watcher = b.client("watcher").await;
    until("b's links up again", || async {
        let links = server_info(&watcher).await.bridges;
        links.len() == 2 && links.iter().all(|l| l.state == "up")
    })
    .await;
    let resumed = count();
    until("traffic flowing after the restart", || async {
        count() >= resumed + 300
    })
    .await;
    stop.cancel();
    within("the publisher stops", sender).await.unwrap();
    let total = count();

    let mut accounted = (0, 0);
    let settled = tokio::time::timeout(bus_tests::WAIT, async {
        loop {
            let delivered = received.lock().unwrap().0.len() as u64;
            let lost = reported_losses(&a).await + reported_losses(&b).await + reported_losses(&c).await;
            accounted = (delivered, lost);
            if delivered + lost >= total {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    receiver.abort();
    let (delivered, lost) = accounted;
    let twice = received.lock().unwrap().1;
    println!("{wiring}: published {total}, delivered {delivered}, reported lost {lost}, duplicates {twice}");
    assert!(
        settled.is_ok(),
        "{wiring}: {} of {total} messages neither delivered nor reported lost",
        total - delivered - lost
    );
    assert_eq!(
        delivered + lost,
        total,
        "{wiring}: delivered + reported lost == published"
    );
    assert_eq!(twice, 0, "{wiring}: duplicates");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restarting_a_middle_node_loses_nothing_silently_ends_dial_the_middle() {
    restart_middle_node(true, true).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restarting_a_middle_node_loses_nothing_silently_middle_dials_the_ends() {
    restart_middle_node(false, false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restarting_a_middle_node_loses_nothing_silently_dialed_one_way() {
    restart_middle_node(true, false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restarting_a_middle_node_loses_nothing_silently_dialed_the_other_way() {
    restart_middle_node(false, true).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn headers_and_error_replies_cross_bridges() {
    let b = node("b", &[]);
    let a = node("a", &[&b]);
    let c = node("c", &[&b]);
    let publisher = a.client("publisher").await;
    let sub_conn = c.client("subscriber").await;
    let mut sub = sub_conn.subscribe("traced.>").await.unwrap();
    let mut stamped = sub_conn.subscribe_with_sender("traced.>").await.unwrap();
    let mut reqs = sub_conn.subscribe("svc.fail").await.unwrap();
    converge(&publisher, &["c"], &[&sub_conn]).await;

    let h = libbus::Headers::from_iter([("Trace-Id", "t-1"), ("Hop", "a"), ("Hop", "b")]);
    publisher
        .publish_with_headers("traced.x", &h, "payload")
        .await
        .unwrap();
    let m = within("across two links", sub.next()).await.unwrap();
    assert_eq!(m.payload(), b"payload");
    assert_eq!(m.headers(), h);
    // From across a bridge, the sender names the node it was published on,
    // and the publisher's connection id and uid there, as that node said.
    let m = within("stamped, across two links", stamped.next()).await.unwrap();
    let s = m.sender().expect("stamped");
    assert_eq!(s.node, "a");
    assert_eq!(s.conn_id, publisher.conn_id());
    assert_eq!(s.uid, Some(nix::unistd::getuid().as_raw()));
    assert_eq!((s.pid, s.gid), (None, None), "only what the origin reports");

    tokio::spawn(async move {
        while let Some(r) = reqs.next().await {
            r.respond_error(503, "busy").await.unwrap();
        }
    });
    let err = within(
        "an error reply from two links away",
        publisher.request("svc.fail", "x"),
    )
    .await
    .unwrap_err();
    assert!(
        matches!(&err, Error::Service { code: 503, text } if text == "busy"),
        "{err}"
    );
}

/// Messages a link drops while it is down (beyond `bridge_buffer`) reach
/// the far side's subscribers as a loss notice with the exact count, after
/// the messages held before them, as a local subscriber's own drops do.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn messages_dropped_on_a_down_link_are_reported_to_far_subscribers() {
    let b = node_with("b", &[], |c| c.bridge_buffer = 4 << 10);
    let a = node("a", &[&b]);
    let mut c = node("c", &[&b]);
    let pa = a.client("publisher").await;
    let watcher = b.client("watcher").await;
    let sub_conn = c.client("subscriber").await;
    let mut sub = sub_conn.subscribe("lossy.>").await.unwrap();
    converge(&pa, &["c"], &[&sub_conn]).await;

    c.stop();
    let link_to = |node: &'static str| {
        let watcher = watcher.clone();
        async move {
            let i = server_info(&watcher).await;
            i.bridges.into_iter().find(|l| l.node == node).unwrap()
        }
    };
    bus_tests::until("link down at b", || async { link_to("c").await.state == "down" }).await;
    let from_a = link_to("a").await.msgs_in;
    const N: u64 = 300;
    publish_numbered(&pa, "lossy.x", N).await;
    // All of them have reached b: held there, or dropped beyond 4 KiB.
    bus_tests::until("all 300 at b", || async {
        link_to("a").await.msgs_in >= from_a + N
    })
    .await;
    let held = link_to("c").await;
    assert!(held.dropped > 0 && held.buffered_bytes > 0, "{held:?}");
    let dropped = held.dropped;

    c.restart();
    let mut next = 0u64;
    let mut lagged = 0u64;
    while next + lagged < N {
        match within("held messages, then the loss notice", sub.next_delivery()).await {
            Some(libbus::Delivery::Message(m)) => {
                assert_eq!(lagged, 0, "the notice comes after what was held before it");
                assert_eq!(m.decode::<u64>().unwrap(), next, "in order");
                next += 1;
            }
            Some(libbus::Delivery::Lagged(n)) => lagged += n,
            None => panic!("subscription ended"),
        }
    }
    assert_eq!(lagged, dropped, "the far side is told exactly what b dropped");
    assert_eq!(next + lagged, N);
    assert_eq!(sub.dropped(), dropped);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bridge_carries_only_what_the_policy_lets_it() {
    let b = node_with("b", &[], |c| {
        let list = |p: &[&str]| p.iter().map(|s| (*s).to_owned()).collect::<Vec<_>>();
        c.permissions = vec![busd::acl::Permissions {
            bridge: true,
            // In: what other daemons' publishers may reach here.
            publish: list(&["shared.>", "ping.>", "_INBOX.>"]),
            // Out: what may leave for other daemons.
            subscribe: list(&["shared.>", "ping.>", "_INBOX.>"]),
            ..Default::default()
        }];
    });
    let a = node("a", &[&b]);
    let (ca, cb) = (a.client("at-a").await, b.client("at-b").await);
    let mut shared_b = cb.subscribe("shared.>").await.unwrap();
    let mut secret_b = cb.subscribe("secret.>").await.unwrap();
    let mut shared_a = ca.subscribe("shared.>").await.unwrap();
    let mut secret_a = ca.subscribe("secret.>").await.unwrap();
    converge(&ca, &["b"], &[&cb]).await;
    converge(&cb, &["a"], &[&ca]).await;

    // Links keep order, so a secret let through would come before what
    // was sent after it. Each side's own subscribers get its own messages.
    let none = Duration::from_millis(100);
    // In: a's secret never reaches b; what a sent after it does.
    ca.publish("secret.in", "no").await.unwrap();
    ca.publish("shared.in", "yes").await.unwrap();
    assert_eq!(
        within("at b", shared_b.next()).await.unwrap().subject(),
        "shared.in"
    );
    assert!(
        tokio::time::timeout(none, secret_b.next()).await.is_err(),
        "secret crossed into b"
    );
    assert_eq!(
        within("a's own", secret_a.next()).await.unwrap().subject(),
        "secret.in"
    );
    assert_eq!(
        within("a's own", shared_a.next()).await.unwrap().subject(),
        "shared.in"
    );
    // Out: b's secret never leaves; what b sent after it does.
    cb.publish("secret.out", "no").await.unwrap();
    cb.publish("shared.out", "yes").await.unwrap();
    assert_eq!(
        within("at a", shared_a.next()).await.unwrap().subject(),
        "shared.out"
    );
    assert!(
        tokio::time::timeout(none, secret_a.next()).await.is_err(),
        "secret left b"
    );

    let denials = bus_tests::denials(&cb).await;
    let rules: Vec<(&str, &str)> = denials.iter().map(|(p, r)| (p.as_str(), r.as_str())).collect();
    assert!(
        rules.contains(&("bridge", "bridge publish (no pattern allows it)")),
        "{rules:?}"
    );
    assert!(
        rules.contains(&("bridge", "bridge subscribe (no pattern allows it)")),
        "{rules:?}"
    );
}
