//! The admin API (`$BUS.api.*`) and lifecycle events (`$BUS.event.*`).

use bus_tests::{within, TestBus};
use libbus::proto::api::{self, CloseReason, ConnEvent, ConnInfo, Peer, ServerInfo};

#[tokio::test]
async fn list_reports_own_credentials_and_subscriptions() {
    let bus = TestBus::start();
    let me = bus.client("inspector").await;
    let _s1 = me.subscribe("orders.>").await.unwrap();
    let _s2 = me.queue_subscribe("jobs.*", "workers").await.unwrap();
    me.publish("orders.new", "12345").await.unwrap();
    me.flush().await.unwrap();
    let conns: Vec<ConnInfo> = within("list", me.request(api::LIST, []))
        .await
        .unwrap()
        .decode()
        .unwrap();
    let mine = conns
        .iter()
        .find(|c| c.id == me.conn_id())
        .expect("own connection listed");
    assert_eq!(mine.name, "inspector");
    assert_eq!(mine.transport, "unix");
    let uid = nix_uid();
    assert_eq!(
        mine.peer,
        Peer::Unix {
            pid: std::process::id() as i32,
            uid,
            gid: nix_gid()
        },
        "credentials come from the kernel"
    );
    let patterns: Vec<_> = mine
        .subs
        .iter()
        .map(|s| (s.pattern.as_str(), s.queue.as_deref()))
        .collect();
    assert!(patterns.contains(&("orders.>", None)));
    assert!(patterns.contains(&("jobs.*", Some("workers"))));
    assert_eq!(mine.msgs_in, 2, "one publish plus the list request itself");
    assert_eq!(mine.bytes_in, 5);
    assert!(mine.msgs_out >= 1, "received its own orders.new");
    assert_eq!(mine.dropped, 0);
}

fn nix_uid() -> u32 {
    std::fs::metadata("/proc/self")
        .map(|m| std::os::unix::fs::MetadataExt::uid(&m))
        .unwrap()
}

fn nix_gid() -> u32 {
    std::fs::metadata("/proc/self")
        .map(|m| std::os::unix::fs::MetadataExt::gid(&m))
        .unwrap()
}

#[tokio::test]
async fn info_reports_totals_and_limits() {
    let bus = TestBus::with_config(|c| c.max_pending = 1 << 21);
    let c = bus.client("c").await;
    let mut s = c.subscribe("x").await.unwrap();
    for _ in 0..10 {
        c.publish("x", "0123456789").await.unwrap();
    }
    for _ in 0..10 {
        within("msg", s.next()).await.unwrap();
    }
    let info: ServerInfo = within("info", c.request(api::INFO, []))
        .await
        .unwrap()
        .decode()
        .unwrap();
    assert_eq!(info.connections, 1);
    assert_eq!(info.subscriptions, 2, "x plus the request inbox");
    assert!(info.msgs_in >= 10 && info.msgs_out >= 10);
    assert_eq!(info.listen, vec![bus.address().to_string()]);
    assert!(info.limits.contains(&("max_pending".into(), 1 << 21)));
    assert_eq!(info.pid, std::process::id() as i32);
}

#[tokio::test]
async fn lifecycle_events_with_reasons() {
    let bus = TestBus::start();
    let watcher = bus.client("watcher").await;
    let mut events = watcher.subscribe("$BUS.event.conn.>").await.unwrap();

    let visitor = bus.client("visitor").await;
    let id = visitor.conn_id();
    let open: ConnEvent = within("open event", events.next())
        .await
        .unwrap()
        .decode()
        .unwrap();
    assert_eq!(
        (open.conn.id, open.conn.name.as_str(), open.reason),
        (id, "visitor", None)
    );
    visitor.close().await.unwrap();
    let m = within("close event", events.next()).await.unwrap();
    assert_eq!(m.subject(), api::EVENT_CONN_CLOSE);
    let close: ConnEvent = m.decode().unwrap();
    assert_eq!((close.conn.id, close.reason), (id, Some(CloseReason::End)));

    // A protocol violation closes with an error reason.
    let mut raw = bus.raw().await;
    let raw_id = raw.handshake().await;
    let _open: ConnEvent = within("open event", events.next())
        .await
        .unwrap()
        .decode()
        .unwrap();
    raw.send_bytes(&u32::MAX.to_le_bytes()).await;
    raw.expect_error_then_close().await;
    let close: ConnEvent = within("close event", events.next())
        .await
        .unwrap()
        .decode()
        .unwrap();
    assert_eq!(close.conn.id, raw_id);
    assert!(
        matches!(close.reason, Some(CloseReason::Error(ref e)) if e.contains("max_frame")),
        "{close:?}"
    );
}

#[tokio::test]
async fn shutdown_closes_connections_with_reason() {
    let mut bus = TestBus::start();
    let c = bus.client("c").await;
    let mut closed = bus.raw().await;
    closed.handshake().await;
    bus.stop();
    assert_eq!(closed.next().await, None);
    assert!(c.flush().await.is_err());
}

/// `$BUS.api.closed` keeps the last `max_closed` connections, oldest
/// first, each with its subscriptions, counters and close reason.
#[tokio::test]
async fn closed_connections_are_remembered_with_reasons_and_bounded() {
    let bus = TestBus::with_config(|c| c.max_closed = 3);
    let admin = bus.client("admin").await;
    let closed = |admin: &libbus::Bus| {
        let admin = admin.clone();
        async move {
            let v: Vec<api::ClosedConn> = within("closed", admin.request(api::CLOSED, []))
                .await
                .unwrap()
                .decode()
                .unwrap();
            v
        }
    };
    // Five clients end, each its own way; only the last three are kept.
    for i in 0..4 {
        let c = bus.client(&format!("gone-{i}")).await;
        let _s = c.subscribe(&format!("topic.{i}")).await.unwrap();
        c.publish("topic.x", "hello").await.unwrap();
        c.close().await.unwrap();
    }
    let victim = bus.client("victim").await;
    let victim_id: u64 = {
        let list: Vec<ConnInfo> = admin.request(api::LIST, []).await.unwrap().decode().unwrap();
        list.iter().find(|c| c.name == "victim").unwrap().id
    };
    let reply = admin
        .request_value::<_, api::AdminReply>(api::KICK, &victim_id)
        .await
        .unwrap();
    assert!(reply.is_ok(), "{reply:?}");
    drop(victim);
    bus_tests::until("five closed", || async {
        closed(&admin)
            .await
            .last()
            .is_some_and(|r| r.conn.name == "victim")
    })
    .await;
    let got = closed(&admin).await;
    let names: Vec<&str> = got.iter().map(|r| r.conn.name.as_str()).collect();
    assert_eq!(
        names,
        ["gone-2", "gone-3", "victim"],
        "bounded by max_closed, oldest first"
    );
    let gone = &got[1];
    assert_eq!(gone.reason, CloseReason::End);
    assert_eq!(gone.conn.msgs_in, 1);
    assert_eq!(
        gone.conn
            .subs
            .iter()
            .map(|s| s.pattern.as_str())
            .collect::<Vec<_>>(),
        ["topic.3"]
    );
    assert!(gone.closed_at_ms >= gone.conn.connected_at_ms);
    assert!(
        matches!(got[2].reason, CloseReason::Kicked { .. }),
        "{:?}",
        got[2].reason
    );
}

/// `last_activity_ms` (IDLE in `list`) moves with application frames only:
/// keep-alive pings and pongs do not count, and it is never before the
/// connection time.
#[tokio::test]
async fn idle_counts_application_frames_not_pongs() {
    use bus_tests::Got;
    use libbus::proto::{self, ClientFrame};
    let bus = TestBus::with_config(|c| c.ping_interval = std::time::Duration::from_millis(100));
    let admin = bus.client("admin").await;
    let mut raw = bus.raw().await;
    let id = raw.handshake().await;
    let record = |admin: &libbus::Bus| {
        let admin = admin.clone();
        async move {
            let list: Vec<ConnInfo> = admin.request(api::LIST, []).await.unwrap().decode().unwrap();
            list.into_iter().find(|c| c.id == id).unwrap()
        }
    };
    let first = record(&admin).await;
    assert!(first.last_activity_ms >= first.connected_at_ms);
    // Three pings from the daemon, each answered: keep-alive only.
    for _ in 0..3 {
        loop {
            match raw.next_any().await {
                Some(Got::Ping) => break,
                Some(Got::Welcome(_)) => continue,
                other => panic!("expected a ping, got {other:?}"),
            }
        }
        raw.send(&ClientFrame::Pong).await;
    }
    let later = record(&admin).await;
    assert_eq!(
        later.last_activity_ms, first.last_activity_ms,
        "pongs are not activity"
    );
    // A publish is.
    raw.send(&ClientFrame::Pub(proto::Pub {
        subject: "x",
        reply_to: None,
        payload: b"now",
    }))
    .await;
    bus_tests::until("the publish counted as activity", || async {
        record(&admin).await.last_activity_ms > first.last_activity_ms
    })
    .await;
}

/// `$BUS.api.rtt`: the daemon pings each connection right after its
/// handshake; a client that answers has its round trip measured, one that
/// never answers has none, and neither is closed for it.
#[tokio::test]
async fn rtt_is_measured_by_the_daemons_first_ping() {
    use bus_tests::Got;
    use libbus::proto::ClientFrame;
    let bus = TestBus::start();
    let admin = bus.client("admin").await;
    let mut answering = bus.raw().await;
    let answering_id = answering.handshake().await;
    let mut silent = bus.raw().await;
    let silent_id = silent.handshake().await;
    assert_eq!(
        answering.next_any().await,
        Some(Got::Ping),
        "a ping follows Welcome"
    );
    // Answered late on purpose: the round trip covers the delay.
    tokio::time::sleep(std::time::Duration::from_millis(30)).await;
    answering.send(&ClientFrame::Pong).await;
    let rtt = |id: u64| {
        let admin = admin.clone();
        async move {
            let page = api::Page::default();
            let rtts: Vec<api::ConnRtt> = admin.request_value(api::RTT, &page).await.unwrap();
            rtts.into_iter().find(|r| r.id == id).map(|r| r.rtt_us)
        }
    };
    bus_tests::until("the answering client's round trip", || async {
        rtt(answering_id).await.is_some_and(|us| us > 0)
    })
    .await;
    let measured = rtt(answering_id).await.unwrap();
    assert!(
        measured >= 30_000,
        "{measured} µs: from the ping to its late pong"
    );
    assert_eq!(rtt(silent_id).await, Some(0), "never answered: unknown");
    // libbus answers on its own.
    bus_tests::until("the admin client's round trip", || async {
        rtt(admin.conn_id()).await.is_some_and(|us| us > 0)
    })
    .await;
    assert_eq!(silent.next_any().await, Some(Got::Ping));
}

/// `$BUS.api.list` comes in pages that fit `max_frame`, so a daemon with
/// more connections than one frame can describe still lists them all.
#[tokio::test]
async fn list_pages_fit_max_frame_and_cover_every_connection() {
    let bus = TestBus::with_config(|c| c.max_frame = 16 << 10);
    let admin = bus.client("admin").await;
    // 100 connections with long names: about 30 KB of records, two frames' worth.
    let mut clients = Vec::new();
    for i in 0..100 {
        clients.push(bus.client(&format!("{i:03}-{}", "x".repeat(250))).await);
    }
    let first: Vec<ConnInfo> = within("first page", admin.request(api::LIST, []))
        .await
        .unwrap()
        .decode()
        .unwrap();
    assert!(
        !first.is_empty() && first.len() < 101,
        "one page: {}",
        first.len()
    );

    let mut page = api::Page::default();
    let mut seen = Vec::new();
    for _ in 0..200 {
        let records: Vec<ConnInfo> = within("a page", admin.request_value(api::LIST, &page))
            .await
            .unwrap();
        let Some(last) = records.last() else { break };
        page.after = last.id;
        seen.extend(records.into_iter().map(|c| c.id));
    }
    let mut sorted = seen.clone();
    sorted.sort_unstable();
    sorted.dedup();
    assert_eq!(sorted, seen, "each id once, in order");
    assert_eq!(seen.len(), 101, "every connection, the admin's own included");
    // A limit is honoured too.
    let two: Vec<ConnInfo> = admin
        .request_value(api::LIST, &api::Page { after: 0, limit: 2 })
        .await
        .unwrap();
    assert_eq!(two.len(), 2);
}
