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
