//! Limits and admin policy: each refusal names its limit and value, leaves the
//! connection (and everyone else) working, and is counted in `$BUS.api.info`.

use bus_tests::{assert_serving, server_info, within, Got, TestBus};
use libbus::{
    proto::{self, api, ClientFrame, ErrorCode},
    Bus, ConnectOptions, Error, Event,
};

fn refused(info: &api::ServerInfo, limit: &str) -> u64 {
    info.refused
        .iter()
        .find(|(n, _)| n == limit)
        .map_or(0, |(_, c)| *c)
}

#[tokio::test]
async fn ten_thousand_subscriptions_hit_the_limit_cleanly() {
    let bus = TestBus::start(); // default max_subscriptions = 10,000
    let client = bus.client("greedy").await;
    let mut subs = Vec::with_capacity(10_000);
    for i in 0..10_000 {
        subs.push(
            client
                .subscribe(&format!("s.{i}"))
                .await
                .expect("within the limit"),
        );
    }
    match client.subscribe("s.one-too-many").await {
        Err(Error::Server { code, message }) => {
            assert_eq!(code, ErrorCode::LimitExceeded);
            assert_eq!(message, "limit exceeded: max_subscriptions = 10000");
        }
        other => panic!("expected a limit error, got {other:?}"),
    }
    // The connection and its subscriptions still work.
    client.publish("s.9999", "still").await.unwrap();
    let m = within("msg", subs[9999].next()).await.unwrap();
    assert_eq!(m.payload(), b"still");
    // Dropping one frees a slot.
    subs.pop();
    client.subscribe("s.again").await.expect("a slot was freed");
    assert_eq!(refused(&server_info(&client).await, "max_subscriptions"), 1);
    assert_serving(&bus).await;
}

#[tokio::test]
async fn subject_length_and_token_limits() {
    let bus = TestBus::with_config(|c| {
        c.max_subject_len = 32;
        c.max_subject_tokens = 4;
    });
    let client = bus.client("wordy").await;
    let mut events = client.events();
    assert!(matches!(
        within("event", events.next()).await,
        Some(Event::Connected { .. })
    ));

    match client.subscribe("a.b.c.d.e").await {
        Err(Error::Server { code, message }) => {
            assert_eq!(code, ErrorCode::LimitExceeded);
            assert!(
                message.starts_with("limit exceeded: max_subject_tokens = 4"),
                "{message}"
            );
        }
        other => panic!("expected a limit error, got {other:?}"),
    }
    let long = "x".repeat(33);
    match client.subscribe(&long).await {
        Err(Error::Server { message, .. }) => {
            assert!(
                message.starts_with("limit exceeded: max_subject_len = 32"),
                "{message}"
            )
        }
        other => panic!("expected a limit error, got {other:?}"),
    }
    // A publish over the limit is refused (not routed); the connection stays.
    let mut ok = client.subscribe("a.b.c.d").await.unwrap();
    let mut raw = bus.raw().await;
    raw.handshake().await;
    raw.send(&ClientFrame::Pub(proto::Pub {
        subject: &long,
        reply_to: None,
        payload: b"",
    }))
    .await;
    match raw.next().await {
        Some(Got::Error(ErrorCode::LimitExceeded, m)) => {
            assert!(m.contains("max_subject_len = 32"), "{m}")
        }
        other => panic!("expected a limit error, got {other:?}"),
    }
    raw.send(&ClientFrame::Ping).await;
    assert_eq!(raw.next().await, Some(Got::Pong), "still connected");
    client.publish("a.b.c.d", "fits").await.unwrap();
    assert_eq!(within("msg", ok.next()).await.unwrap().payload(), b"fits");

    let i = server_info(&client).await;
    assert_eq!(refused(&i, "max_subject_tokens"), 1);
    assert_eq!(refused(&i, "max_subject_len"), 2);
    assert!(i.limits.contains(&("max_subject_len".into(), 32)));
}

#[tokio::test]
async fn per_uid_connection_limit() {
    // Every test client runs as the same uid.
    let bus = TestBus::with_config(|c| c.max_connections_per_uid = 2);
    let a = bus.client("a").await;
    let _b = bus.client("b").await;
    let third = Bus::connect_with(&bus.address(), ConnectOptions::default().name("c")).await;
    match third {
        Err(Error::Server { code, message }) => {
            assert_eq!(code, ErrorCode::LimitExceeded);
            assert!(
                message.starts_with("limit exceeded: max_connections_per_uid = 2"),
                "{message}"
            );
        }
        other => panic!("expected a limit error, got {other:?}"),
    }
    assert_eq!(refused(&server_info(&a).await, "max_connections_per_uid"), 1);
    // A slot frees when a connection ends.
    a.close().await.unwrap();
    let c = within("connect", async {
        // The daemon releases the slot when it sees the close; retry briefly.
        for _ in 0..100 {
            match Bus::connect(&bus.address()).await {
                Ok(c) => return c,
                Err(_) => tokio::time::sleep(std::time::Duration::from_millis(20)).await,
            }
        }
        panic!("slot never freed");
    })
    .await;
    c.flush().await.unwrap();
}

#[tokio::test]
async fn kick_closes_a_connection_for_good() {
    let bus = TestBus::start();
    let admin = bus.client("admin").await; // same uid as the daemon: allowed
    let victim = bus.client("victim").await;
    let mut events = victim.events();
    assert!(matches!(
        within("event", events.next()).await,
        Some(Event::Connected { .. })
    ));
    let mut sub = victim.subscribe("x").await.unwrap();
    let mut monitor = admin.subscribe(api::EVENT_CONN_CLOSE).await.unwrap();

    let reply: api::AdminReply = admin.request_value(api::KICK, &victim.conn_id()).await.unwrap();
    assert_eq!(
        reply,
        Ok(format!("closed connection {} (victim)", victim.conn_id()))
    );

    // The victim is told why and does not reconnect.
    loop {
        match within("event", events.next()).await {
            Some(Event::Closed { reason }) => {
                assert!(reason.contains("closed by an administrator"), "{reason}");
                break;
            }
            Some(Event::Lagged { .. }) => {}
            // The reason comes first, as the daemon's error.
            Some(Event::Error { code, .. }) => assert_eq!(code, ErrorCode::Kicked),
            other => panic!("expected Closed, got {other:?}"),
        }
    }
    assert!(within("sub end", sub.next()).await.is_none());
    let ev: api::ConnEvent = within("close event", monitor.next())
        .await
        .unwrap()
        .decode()
        .unwrap();
    assert_eq!(ev.conn.name, "victim");
    assert_eq!(ev.reason, Some(api::CloseReason::Kicked { by: admin.conn_id() }));

    let missing: api::AdminReply = admin.request_value(api::KICK, &999_999u64).await.unwrap();
    assert_eq!(
        missing,
        Err((ErrorCode::Protocol, "no connection with id 999999".into()))
    );
}

#[tokio::test]
async fn max_connections_refuses_with_the_limit_named() {
    let bus = TestBus::with_config(|c| c.max_connections = 2);
    let a = bus.client("a").await;
    let _b = bus.client("b").await;
    for _ in 0..3 {
        match Bus::connect_with(&bus.address(), ConnectOptions::default().name("c")).await {
            Err(Error::Server { code, message }) => {
                assert_eq!(code, ErrorCode::LimitExceeded);
                assert_eq!(message, "limit exceeded: max_connections = 2");
            }
            other => panic!("expected a limit error, got {other:?}"),
        }
    }
    assert_eq!(refused(&server_info(&a).await, "max_connections"), 3);
    assert_serving_with(&a).await;
}

/// The bus still routes for an existing client.
async fn assert_serving_with(client: &Bus) {
    let mut sub = client.subscribe("still.serving").await.unwrap();
    client.publish("still.serving", "yes").await.unwrap();
    assert_eq!(within("msg", sub.next()).await.unwrap().payload(), b"yes");
}

/// Network peers that never authenticate hold at most
/// `max_pending_handshakes` connections; the rest are refused at once, and
/// local clients connect and are served throughout.
#[tokio::test]
async fn unauthenticated_network_peers_cannot_lock_out_local_ones() {
    let bus = TestBus::with_config(|c| {
        c.tcp = Some("127.0.0.1:0".into());
        c.token = Some("s3cret".into());
        c.max_pending_handshakes = 8;
        c.max_tcp_connections = 16;
        c.max_connections = 40;
    });
    let tcp = bus.tcp_address().to_string();
    let host_port = tcp.trim_start_matches("tcp://").to_owned();
    let idle: Vec<_> = (0..40)
        .map(|_| std::net::TcpStream::connect(&host_port).expect("tcp connect"))
        .collect();
    let local = bus.client("local").await;
    bus_tests::until("the idle network peers refused", || async {
        refused(&server_info(&local).await, "max_pending_handshakes") >= 32
    })
    .await;
    // Local clients still connect and are served, idle sockets or not.
    let more = bus.client("local-2").await;
    let mut sub = more.subscribe("still.here").await.unwrap();
    local.publish("still.here", "yes").await.unwrap();
    assert_eq!(within("delivery", sub.next()).await.unwrap().payload(), b"yes");
    assert_eq!(refused(&server_info(&local).await, "max_pending_handshakes"), 32);
    drop(idle);
}

/// A user's quota counts its connections from accept, handshaken or not:
/// sockets that never say Hello use it up too.
#[tokio::test]
async fn the_per_uid_quota_counts_from_accept() {
    let bus = TestBus::with_config(|c| c.max_connections_per_uid = 3);
    let silent: Vec<_> = (0..3)
        .map(|_| std::os::unix::net::UnixStream::connect(bus.socket()).expect("connect"))
        .collect();
    let uid = nix::unistd::geteuid().as_raw();
    let err = within("connect", Bus::connect(&bus.address()))
        .await
        .expect_err("the quota is used up by the silent sockets");
    match err {
        Error::Server { code, message } => {
            assert_eq!(code, ErrorCode::LimitExceeded);
            assert_eq!(
                message,
                format!("limit exceeded: max_connections_per_uid = 3 (uid {uid})")
            );
        }
        e => panic!("expected a limit error, got {e}"),
    }
    drop(silent);
    // Given back when they close.
    let bus_ok = bus_tests::within("a connection once they closed", async {
        loop {
            match Bus::connect(&bus.address()).await {
                Ok(b) => break b,
                Err(_) => tokio::time::sleep(std::time::Duration::from_millis(20)).await,
            }
        }
    })
    .await;
    bus_ok.flush().await.unwrap();
}

/// A daemon with a TCP listener where the tokens "alice" and "bob" are two
/// network users, each its own principal with its own share.
fn two_users(adjust: impl FnOnce(&mut busd::Config)) -> (TestBus, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let users = ["alice", "bob"].map(|name| {
        let path = dir.path().join(name);
        std::fs::write(&path, name).unwrap();
        busd::config::NetUser {
            name: name.into(),
            token_file: Some(path),
            cert_name: None,
        }
    });
    let bus = TestBus::with_config(|c| {
        c.tcp = Some("127.0.0.1:0".into());
        c.users = users.to_vec();
        adjust(c);
    });
    (bus, dir)
}

async fn as_user(bus: &TestBus, user: &str, opts: ConnectOptions) -> Bus {
    within(
        "connect",
        Bus::connect_with(&bus.tcp_address(), opts.token(user).name(user)),
    )
    .await
    .unwrap()
}

#[tokio::test]
async fn one_user_cannot_take_every_subscription() {
    let (bus, _dir) = two_users(|c| c.max_subscriptions_per_uid = 5);
    let alice = [
        as_user(&bus, "alice", ConnectOptions::default()).await,
        as_user(&bus, "alice", ConnectOptions::default()).await,
    ];
    // Five across her two connections, then the limit, named.
    let mut held = Vec::new();
    for i in 0..5 {
        held.push(alice[i % 2].subscribe(&format!("a.{i}")).await.unwrap());
    }
    match alice[1].subscribe("a.more").await {
        Err(Error::Server { code, message }) => {
            assert_eq!(code, ErrorCode::LimitExceeded);
            assert!(
                message.contains("max_subscriptions_per_uid = 5 (user alice)"),
                "{message}"
            );
        }
        other => panic!("expected the limit, got {:?}", other.map(|_| ())),
    }
    // Bob has a share of his own; giving one back makes room for alice.
    let _bob = as_user(&bus, "bob", ConnectOptions::default())
        .await
        .subscribe("b.x")
        .await
        .unwrap();
    held.pop();
    within("room again", async {
        loop {
            if alice[0].subscribe("a.again").await.is_ok() {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
    })
    .await;
    let info = server_info(&bus.client("admin").await).await;
    assert_eq!(refused(&info, "max_subscriptions_per_uid"), 1);
}

#[tokio::test]
async fn one_users_stalled_readers_cannot_hold_more_than_its_share() {
    const SHARE: usize = 160 << 10;
    let (bus, _dir) = two_users(|c| {
        c.max_frame = 32 << 10;
        c.max_pending = 128 << 10;
        c.max_pending_per_uid = SHARE;
    });
    // Alice: four connections that subscribe and never read (each stops
    // reading its socket once a few deliveries wait).
    let mut stalled = Vec::new();
    for _ in 0..4 {
        let a = as_user(&bus, "alice", ConnectOptions::default().subscription_capacity(4)).await;
        stalled.push((a.subscribe("flood").await.unwrap(), a));
    }
    // Bob reads everything.
    let bob = as_user(&bus, "bob", ConnectOptions::default()).await;
    let mut at_bob = bob.subscribe("flood").await.unwrap();
    let publisher = bus.client("publisher").await;
    let payload = vec![7u8; 16 << 10];
    // Far more than the kernel's socket buffers of four connections hold,
    // in steps small enough for Bob's own queue (128 KiB, where the step
    // before may still count until the writer has settled it).
    const MSGS: usize = 8_000;
    const STEP: usize = 2;
    for step in 0..MSGS / STEP {
        for _ in 0..STEP {
            publisher.publish("flood", &payload).await.unwrap();
        }
        for _ in 0..STEP {
            let m = tokio::time::timeout(bus_tests::WAIT, at_bob.next()).await;
            let dropped = at_bob.dropped();
            let m = m.unwrap_or_else(|_| panic!("step {step}: no delivery for bob ({dropped} dropped)"));
            assert_eq!(m.unwrap().payload().len(), payload.len(), "step {step}");
        }
    }
    assert_eq!(at_bob.dropped(), 0, "bob lost nothing");
    let list: Vec<api::ConnInfo> = bus
        .client("admin")
        .await
        .request(api::LIST, [])
        .await
        .unwrap()
        .decode()
        .unwrap();
    let alice: Vec<&api::ConnInfo> = list.iter().filter(|c| c.name == "alice").collect();
    assert_eq!(alice.len(), 4);
    let held: u64 = alice.iter().map(|c| c.pending_bytes).sum();
    let dropped: u64 = alice.iter().map(|c| c.dropped).sum();
    // Her four queues could hold 512 KiB; together they hold her share.
    assert!(
        held <= SHARE as u64 + (4 << 10),
        "alice's queues hold {held} bytes"
    );
    assert!(held > (64 << 10), "her queues did fill: {held}");
    assert!(dropped > 0, "what did not fit was dropped and counted");
    drop(stalled);
}
