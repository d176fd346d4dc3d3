//! A subscriber that stops reading must not stall anyone, must not grow the
//! daemon past `max_pending`, and must learn exactly how much it lost.

use bus_tests::{within, TestBus};
use libbus::{proto::api, ConnectOptions, Delivery};

const MAX_PENDING: usize = 256 << 10;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stalled_subscriber_is_bounded_and_told_exactly_what_it_lost() {
    let bus = TestBus::with_config(|c| {
        c.max_pending = MAX_PENDING;
        c.max_frame = 64 << 10;
    });
    // Small client-side buffer: once it is full the client stops reading the
    // socket, and the daemon's queue for it fills up.
    let stalled_conn = bus
        .client_with(
            ConnectOptions::default()
                .name("stalled")
                .subscription_capacity(16),
        )
        .await;
    let mut stalled = stalled_conn.subscribe("load").await.unwrap();
    let fast_conn = bus.client("fast").await;
    let mut fast = fast_conn.subscribe("load").await.unwrap();
    let publisher = bus.client("publisher").await;

    const N: u64 = 20_000;
    // Chunks well under MAX_PENDING, each consumed by the fast subscriber
    // before the next: the fast one never falls behind, so it must get every
    // message, while the stalled one overflows.
    const CHUNK: u64 = 500;
    let payload_len = 200;
    for chunk in 0..N / CHUNK {
        for i in chunk * CHUNK..(chunk + 1) * CHUNK {
            let mut body = vec![0u8; payload_len];
            body[..8].copy_from_slice(&i.to_le_bytes());
            within("publish", publisher.publish("load", body)).await.unwrap();
        }
        within("publisher flush", publisher.flush()).await.unwrap();
        for i in chunk * CHUNK..(chunk + 1) * CHUNK {
            let Some(m) = within("fast subscriber", fast.next()).await else {
                panic!("fast subscriber stream ended: {}", fast_conn.disconnected_error())
            };
            assert_eq!(u64::from_le_bytes(m.payload()[..8].try_into().unwrap()), i);
        }
    }
    assert_eq!(fast.dropped(), 0);

    let conns: Vec<api::ConnInfo> = within("list", publisher.request(api::LIST, []))
        .await
        .unwrap()
        .decode()
        .unwrap();
    let info = conns
        .iter()
        .find(|c| c.name == "stalled")
        .expect("stalled conn listed");
    assert!(
        info.pending_bytes <= MAX_PENDING as u64,
        "pending {} over bound",
        info.pending_bytes
    );
    assert!(
        info.dropped > 0,
        "{N} messages of {payload_len} B must overflow {MAX_PENDING} B"
    );
    let dropped_by_daemon = info.dropped;

    // Now read: every message is either delivered (in order) or counted in a
    // Lagged notice, and the notices add up to the daemon's count.
    let (mut received, mut lagged, mut last) = (0u64, 0u64, None::<u64>);
    while received + lagged < N {
        match within("stalled subscriber catching up", stalled.next_delivery()).await {
            Some(Delivery::Message(m)) => {
                let seq = u64::from_le_bytes(m.payload()[..8].try_into().unwrap());
                assert!(last.is_none_or(|l| seq > l), "out of order: {seq} after {last:?}");
                last = Some(seq);
                received += 1;
            }
            Some(Delivery::Lagged(n)) => lagged += n,
            None => panic!("connection closed"),
        }
    }
    assert_eq!(
        lagged, dropped_by_daemon,
        "Lagged notices must match the daemon's drop count"
    );
    assert_eq!(received + lagged, N);
    assert_eq!(stalled.dropped(), dropped_by_daemon);

    // After the gap it receives new messages normally.
    publisher.publish("load", vec![1u8; 8]).await.unwrap();
    let next = within("message after catching up", stalled.next()).await.unwrap();
    assert_eq!(next.payload(), &[1u8; 8]);
}

/// `subscription_capacity` counts deliveries, however they arrive: messages
/// trickling in one per socket read (each its own batch) fill it only after
/// that many messages, and until then the connection keeps reading (here: a
/// flush's Pong gets through while the subscription is not being read).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subscription_capacity_counts_deliveries_not_reads() {
    let bus = TestBus::start();
    let idle_conn = bus
        .client_with(ConnectOptions::default().name("idle").subscription_capacity(1000))
        .await;
    let mut idle = idle_conn.subscribe("trickle").await.unwrap();
    let publisher = bus.client("publisher").await;
    for i in 0u64..300 {
        publisher.publish_value("trickle", &i).await.unwrap();
        // One message per daemon write, so (nearly always) one per read.
        within("publisher flush", publisher.flush()).await.unwrap();
    }
    // 300 unread deliveries are well under the capacity: the connection
    // still reads, so its own flush completes.
    within("flush with unread deliveries", idle_conn.flush())
        .await
        .expect("the connection kept reading");
    for i in 0u64..300 {
        let m = within("message", idle.next()).await.expect("open");
        assert_eq!(m.decode::<u64>().unwrap(), i);
    }
}
