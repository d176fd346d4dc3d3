//! Lossless subscriptions: a subscriber that falls behind holds its
//! publishers back (their sockets fill, their `publish` waits) instead of
//! losing messages; nobody else is held; a subscriber that stalls longer
//! than `max_stall` is disconnected; and nothing deadlocks.

use std::time::Duration;

use bus_tests::{server_info, until, within, Got, TestBus};
use libbus::{
    proto::{self, ClientFrame, ErrorCode},
    Bus, ConnectOptions, Delivery, SubscribeOptions, Subscription,
};

/// Small queues everywhere, so a few megabytes overflow them all.
const MAX_PENDING: usize = 64 << 10;
const N: u64 = 20_000;
const SIZE: usize = 1024;

fn small_queues(c: &mut busd::Config) {
    c.max_pending = MAX_PENDING;
    c.max_frame = 16 << 10;
}

/// Why the daemon closed connection `name`, as `$BUS.api.closed` says.
async fn close_reason(bus: &Bus, name: &str) -> proto::api::CloseReason {
    let closed: Vec<proto::api::ClosedConn> = within("closed", bus.request(proto::api::CLOSED, []))
        .await
        .unwrap()
        .decode()
        .unwrap();
    closed
        .into_iter()
        .find(|c| c.conn.name == name)
        .expect("listed as closed")
        .reason
}

/// [`small_queues`], and `max_stall` 300 ms.
fn stall_after_300ms(c: &mut busd::Config) {
    small_queues(c);
    c.max_stall = Duration::from_millis(300);
}

/// [`client`], not reconnecting once the daemon closes it.
async fn client_once(bus: &TestBus, name: &str) -> Bus {
    bus.client_with(
        ConnectOptions::default()
            .name(name)
            .subscription_capacity(64)
            .reconnect(None),
    )
    .await
}

/// A client whose subscriptions buffer 64 messages before it stops reading.
async fn client(bus: &TestBus, name: &str) -> Bus {
    bus.client_with(ConnectOptions::default().name(name).subscription_capacity(64))
        .await
}

async fn lossless(bus: &Bus, pattern: &str) -> Subscription {
    within(
        "subscribe",
        bus.subscribe_with(pattern, SubscribeOptions::new().lossless()),
    )
    .await
    .expect("lossless subscription")
}

fn numbered(i: u64) -> Vec<u8> {
    let mut body = vec![0u8; SIZE];
    body[..8].copy_from_slice(&i.to_le_bytes());
    body
}

/// Publishes `n` numbered messages as fast as the connection takes them.
fn publish_all(bus: &Bus, subject: &'static str, n: u64) -> tokio::task::JoinHandle<()> {
    let bus = bus.clone();
    tokio::spawn(async move {
        for i in 0..n {
            bus.publish(subject, numbered(i)).await.expect("publish");
        }
        bus.flush().await.expect("flush");
    })
}

/// Reads `n` messages, checking they are 0..n in order with no loss;
/// `slow`: pauses now and then, to fall behind.
async fn expect_all(sub: &mut Subscription, n: u64, slow: bool) {
    for i in 0..n {
        match within("lossless delivery", sub.next_delivery()).await {
            Some(Delivery::Message(m)) => {
                let seq = u64::from_le_bytes(m.payload()[..8].try_into().unwrap());
                assert_eq!(seq, i, "out of order or lost");
            }
            Some(Delivery::Lagged(d)) => panic!("a lossless subscription lost {d} messages at {i}"),
            None => panic!("subscription ended at {i}"),
        }
        if slow && i % 500 == 0 {
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    }
    assert_eq!(sub.dropped(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_lossless_subscriber_gets_every_message() {
    let bus = TestBus::with_config(small_queues);
    let sub_conn = client(&bus, "slow").await;
    let mut sub = lossless(&sub_conn, "load").await;
    // A plain subscriber of the same publisher may still lose messages
    // (when it falls behind on its own), reported as always.
    let plain_conn = client(&bus, "plain").await;
    let mut plain = plain_conn.subscribe("load").await.unwrap();
    let publisher = client(&bus, "publisher").await;
    let published = publish_all(&publisher, "load", N);
    let plain_reader = tokio::spawn(async move {
        let (mut received, mut lagged) = (0, 0);
        while received + lagged < N {
            match within("plain delivery", plain.next_delivery()).await {
                Some(Delivery::Message(_)) => received += 1,
                Some(Delivery::Lagged(n)) => lagged += n,
                None => panic!("plain subscription ended"),
            }
        }
        lagged
    });
    expect_all(&mut sub, N, true).await;
    within("publisher", published).await.unwrap();
    let plain_lost = within("plain subscriber", plain_reader).await.unwrap();
    assert_eq!(server_info(&publisher).await.dropped, plain_lost);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_held_publisher_waits_and_nobody_else_does() {
    let bus = TestBus::with_config(|c| {
        small_queues(c);
        c.max_stall = Duration::from_secs(600);
    });
    let sub_conn = client(&bus, "paused").await;
    let mut sub = lossless(&sub_conn, "held.load").await;
    let publisher = client(&bus, "publisher").await;
    // 20 MB: more than every queue and socket buffer on the way hold.
    let published = publish_all(&publisher, "held.load", N);

    // The publisher is held: the daemon stops reading it, so its frames
    // stop arriving while the subscriber reads nothing.
    let observer = bus.client("observer").await;
    let publisher_in = || async {
        let conns: Vec<proto::api::ConnInfo> = observer
            .request(proto::api::LIST, [])
            .await
            .unwrap()
            .decode()
            .unwrap();
        conns
            .iter()
            .find(|c| c.name == "publisher")
            .map_or(0, |c| c.msgs_in)
    };
    within("the publisher to be held back", async {
        let mut last = publisher_in().await;
        loop {
            tokio::time::sleep(Duration::from_millis(100)).await;
            let now = publisher_in().await;
            if now == last && now > 0 {
                break;
            }
            last = now;
        }
    })
    .await;
    assert!(
        !published.is_finished(),
        "publish of {N} messages finished against a paused subscriber"
    );

    // Everyone else goes on.
    let mut other = observer.subscribe("other").await.unwrap();
    let other_pub = bus.client("other-publisher").await;
    for i in 0..10u64 {
        other_pub.publish("other", numbered(i)).await.unwrap();
    }
    expect_all(&mut other, 10, false).await;

    // Once the subscriber reads, everything arrives and the publisher ends.
    expect_all(&mut sub, N, false).await;
    within("publisher", published).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_subscriber_is_disconnected_after_max_stall() {
    let bus = TestBus::with_config(stall_after_300ms);
    let sub_conn = client_once(&bus, "stalled").await;
    let _sub = lossless(&sub_conn, "stall").await;
    let publisher = client(&bus, "publisher").await;
    // The subscriber never reads: after max_stall it is cut off, and the
    // publisher finishes.
    within("publisher", publish_all(&publisher, "stall", N))
        .await
        .unwrap();
    // It is not reading, so it never sees the error frame; the daemon
    // records why it closed it.
    until("the stalled subscriber to be gone", || async {
        server_info(&publisher).await.connections == 1
    })
    .await;
    assert_eq!(
        close_reason(&publisher, "stalled").await,
        proto::api::CloseReason::SlowConsumer
    );
    let refused = server_info(&publisher).await.refused;
    assert!(
        refused.iter().any(|(n, c)| n == "max_stall" && *c >= 1),
        "{refused:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publishing_to_its_own_lossless_subscription_does_not_deadlock() {
    let bus = TestBus::with_config(small_queues);
    let conn = client(&bus, "self").await;
    let mut sub = lossless(&conn, "self.load").await;
    let published = publish_all(&conn, "self.load", N);
    expect_all(&mut sub, N, true).await;
    within("publisher", published).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_that_never_reads_its_own_lossless_subscription_is_cut_off() {
    let bus = TestBus::with_config(stall_after_300ms);
    let conn = client_once(&bus, "self").await;
    let _sub = lossless(&conn, "self.load").await;
    // One task publishes and never reads: it would wait on itself forever;
    // max_stall ends it.
    let ended = within("the publisher to end", async {
        for i in 0..N * 10 {
            if conn.publish("self.load", numbered(i)).await.is_err() {
                return true;
            }
        }
        conn.flush().await.is_err()
    })
    .await;
    assert!(
        ended,
        "{} MB to a subscription nobody reads went through",
        (N * 10 * SIZE as u64) >> 20
    );
    let observer = bus.client("observer").await;
    assert_eq!(
        close_reason(&observer, "self").await,
        proto::api::CloseReason::SlowConsumer
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_connections_feeding_each_other_do_not_deadlock() {
    let bus = TestBus::with_config(small_queues);
    let a = client(&bus, "a").await;
    let b = client(&bus, "b").await;
    let mut to_a = lossless(&a, "to.a").await;
    let mut to_b = lossless(&b, "to.b").await;
    // b echoes everything it gets back to a, from the task that reads it:
    // when a's queue is full, b's reader waits in publish.
    let echo = {
        let b = b.clone();
        tokio::spawn(async move {
            for _ in 0..N {
                let m = within("echo", to_b.next()).await.expect("to.b");
                b.publish("to.a", m.payload()).await.expect("echo");
            }
        })
    };
    // Both publish to each other at full speed at the same time.
    let from_a = publish_all(&a, "to.b", N);
    expect_all(&mut to_a, N, true).await;
    within("a's publisher", from_a).await.unwrap();
    within("b's echo", echo).await.unwrap();
    assert_eq!(server_info(&a).await.dropped, 0);
}

#[tokio::test]
async fn unknown_subscription_flags_are_refused() {
    let bus = TestBus::start();
    let mut raw = bus.raw().await;
    raw.handshake().await;
    raw.send(&ClientFrame::SubFlags(proto::SubFlags {
        sid: 1,
        pattern: "x",
        queue: None,
        flags: 0x80,
    }))
    .await;
    match within("refusal", raw.next()).await {
        Some(Got::SubRefused(1, code, message)) => {
            assert_eq!(code, ErrorCode::Protocol);
            assert!(message.contains("0x80"), "{message}");
        }
        other => panic!("expected SubRefused, got {other:?}"),
    }
}
