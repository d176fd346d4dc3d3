//! Bad input on the socket: the offending connection gets an Error frame and is
//! closed; the daemon keeps serving everyone else.

use std::time::Duration;

use bus_tests::{assert_serving, within, Got, Raw, TestBus};
use libbus::{
    codec,
    proto::{self, ClientFrame, ErrorCode},
};

/// A healthy subscriber that must keep receiving throughout.
async fn bystander(bus: &TestBus) -> (libbus::Bus, libbus::Subscription) {
    let c = bus.client("bystander").await;
    let s = c.subscribe("bystander.>").await.unwrap();
    (c, s)
}

async fn bystander_still_served(bus: &TestBus, (_c, sub): &mut (libbus::Bus, libbus::Subscription)) {
    let p = bus.client("bystander-pub").await;
    p.publish("bystander.ping", "ok").await.unwrap();
    let m = within("bystander delivery", sub.next()).await.unwrap();
    assert_eq!(m.payload(), b"ok");
    assert_serving(bus).await;
}

#[tokio::test]
async fn random_bytes() {
    let bus = TestBus::start();
    let mut b = bystander(&bus).await;
    let mut rng = fastrand::Rng::with_seed(7);
    for round in 0..20 {
        let mut raw = bus.raw().await;
        let junk: Vec<u8> = (0..rng.usize(1..512)).map(|_| rng.u8(..)).collect();
        raw.send_bytes(&junk).await;
        // Either an immediate error (too large / malformed / not Hello), or the
        // daemon waits for the rest of a frame: end our side to force a verdict.
        raw.stream.shutdown().await.ok();
        let mut saw_error = false;
        while let Some(f) = raw.next().await {
            assert!(matches!(f, Got::Error(..)), "round {round}: unexpected {f:?}");
            saw_error = true;
        }
        assert!(saw_error, "round {round}: no Error frame before close");
    }
    bystander_still_served(&bus, &mut b).await;
}

use tokio::io::AsyncWriteExt;

#[tokio::test]
async fn four_gib_length_before_handshake() {
    let bus = TestBus::start();
    let mut b = bystander(&bus).await;
    let mut raw = bus.raw().await;
    raw.send_bytes(&u32::MAX.to_le_bytes()).await;
    let (code, msg) = raw.expect_error_then_close().await;
    assert_eq!(code, ErrorCode::FrameTooLarge);
    // Before the handshake the limit is max_handshake_frame, and says so.
    assert!(msg.contains("max_handshake_frame (4096 bytes)"), "{msg}");
    bystander_still_served(&bus, &mut b).await;
}

#[tokio::test]
async fn four_gib_length_after_handshake() {
    let bus = TestBus::start();
    let mut raw = bus.raw().await;
    raw.handshake().await;
    raw.send_bytes(&u32::MAX.to_le_bytes()).await;
    let (code, msg) = raw.expect_error_then_close().await;
    assert_eq!(code, ErrorCode::FrameTooLarge);
    assert!(msg.contains("1048576"), "names the limit's value: {msg}");
    assert_serving(&bus).await;
}

#[tokio::test]
async fn truncated_frame() {
    let bus = TestBus::start();
    let mut b = bystander(&bus).await;
    let mut raw = bus.raw().await;
    raw.handshake().await;
    let mut bytes = 100u32.to_le_bytes().to_vec();
    bytes.extend_from_slice(&[1; 10]);
    raw.send_bytes(&bytes).await;
    raw.stream.shutdown().await.unwrap();
    let (code, msg) = raw.expect_error_then_close().await;
    assert_eq!(code, ErrorCode::Protocol);
    assert!(msg.contains("truncated"), "{msg}");
    bystander_still_served(&bus, &mut b).await;
}

#[tokio::test]
async fn frame_before_handshake() {
    let bus = TestBus::start();
    let mut raw = bus.raw().await;
    raw.send(&ClientFrame::Pub(proto::Pub {
        subject: "a",
        reply_to: None,
        payload: b"x",
    }))
    .await;
    let (code, msg) = raw.expect_error_then_close().await;
    assert_eq!(code, ErrorCode::Protocol);
    assert!(msg.contains("expected Hello"), "{msg}");
    assert_serving(&bus).await;
}

#[tokio::test]
async fn version_mismatch() {
    let bus = TestBus::start();
    let mut raw = bus.raw().await;
    raw.send(&ClientFrame::Hello(proto::Hello {
        version: 999,
        name: "old",
        role: proto::Role::Client,
        auth: None,
    }))
    .await;
    let (code, msg) = raw.expect_error_then_close().await;
    assert_eq!(code, ErrorCode::VersionMismatch);
    assert!(
        msg.contains("999") && msg.contains(&proto::PROTOCOL_VERSION.to_string()),
        "{msg}"
    );
}

#[tokio::test]
async fn invalid_subject_and_pattern() {
    let bus = TestBus::start();
    let mut b = bystander(&bus).await;
    for bad in ["a..b", "a b", "a.*", "", "x.>"] {
        let mut raw = bus.raw().await;
        raw.handshake().await;
        raw.send(&ClientFrame::Pub(proto::Pub {
            subject: bad,
            reply_to: None,
            payload: b"x",
        }))
        .await;
        let (code, msg) = raw.expect_error_then_close().await;
        assert_eq!(code, ErrorCode::InvalidSubject, "{bad:?}");
        assert!(msg.contains("invalid subject"), "{msg}");
    }
    let mut raw = bus.raw().await;
    raw.handshake().await;
    raw.send(&ClientFrame::Sub(proto::Sub {
        sid: 1,
        pattern: "a.>.b",
        queue: None,
    }))
    .await;
    let (code, _) = raw.expect_error_then_close().await;
    assert_eq!(code, ErrorCode::InvalidSubject);
    bystander_still_served(&bus, &mut b).await;
}

#[tokio::test]
async fn reserved_subject_is_an_error_but_not_fatal() {
    let bus = TestBus::start();
    let mut raw = bus.raw().await;
    raw.handshake().await;
    raw.send(&ClientFrame::Pub(proto::Pub {
        subject: "$BUS.event.conn.open",
        reply_to: None,
        payload: b"",
    }))
    .await;
    match raw.next().await {
        Some(Got::Error(ErrorCode::Reserved, msg)) => assert!(msg.contains("reserved"), "{msg}"),
        other => panic!("expected Reserved error, got {other:?}"),
    }
    raw.send(&ClientFrame::Ping).await;
    assert_eq!(raw.next().await, Some(Got::Pong));
}

#[tokio::test]
async fn handshake_timeout() {
    let bus = TestBus::with_config(|c| c.handshake_timeout = Duration::from_millis(200));
    let mut raw = bus.raw().await;
    let (code, msg) = raw.expect_error_then_close().await;
    assert_eq!(code, ErrorCode::HandshakeTimeout);
    assert!(msg.contains("handshake_timeout"), "{msg}");
    assert_serving(&bus).await;
}

#[tokio::test]
async fn silent_peer_is_pinged_then_closed() {
    let bus = TestBus::with_config(|c| c.ping_interval = Duration::from_millis(150));
    let mut raw = bus.raw().await;
    raw.handshake().await;
    let mut pings = 0;
    loop {
        match raw.next_any().await {
            Some(Got::Ping) => pings += 1,
            Some(Got::Error(code, msg)) => {
                assert_eq!(code, ErrorCode::PingTimeout, "{msg}");
                break;
            }
            other => panic!("unexpected {other:?}"),
        }
    }
    // The first measures the round trip, and is not counted as missed.
    assert_eq!(pings, 3, "closed after missing max_pings_missed (2) pings");
    assert_eq!(raw.next().await, None);
}

#[tokio::test]
async fn libbus_answers_pings_and_stays_connected() {
    let bus = TestBus::with_config(|c| c.ping_interval = Duration::from_millis(100));
    let c = bus.client("idle").await;
    tokio::time::sleep(Duration::from_millis(800)).await;
    within("flush after idling", c.flush())
        .await
        .expect("still connected");
}

#[tokio::test]
async fn pongs_answer_pings_in_order() {
    let bus = TestBus::start();
    let mut raw: Raw = bus.raw().await;
    raw.handshake().await;
    for _ in 0..3 {
        raw.send(&ClientFrame::Ping).await;
    }
    for _ in 0..3 {
        assert_eq!(raw.next().await, Some(Got::Pong));
    }
}

#[tokio::test]
async fn unknown_frame_tags() {
    let bus = TestBus::start();
    let mut b = bystander(&bus).await;
    // Tags past the last ClientFrame variant, before and after the handshake.
    for (tag, handshake) in [(6u8, false), (6, true), (42, true), (255, true), (0x80, true)] {
        let mut raw = bus.raw().await;
        if handshake {
            raw.handshake().await;
        }
        raw.send_bytes(&[1, 0, 0, 0, tag]).await;
        let (code, msg) = raw.expect_error_then_close().await;
        assert_eq!(code, ErrorCode::Protocol, "tag {tag}: {msg}");
    }
    bystander_still_served(&bus, &mut b).await;
}

#[tokio::test]
async fn invalid_utf8_in_subjects() {
    let bus = TestBus::start();
    let mut b = bystander(&bus).await;
    // Pub { subject: [ff fe], reply_to: None, payload: [] } and
    // Sub { sid: 1, pattern: [c3 28], queue: None }, encoded by hand; the
    // bad Pub again after valid publishes on the same connection (which
    // take busd's fast path for subjects it has seen).
    let valid: &[u8] = &[1, 2, b'o', b'k', 0, 0];
    let bad_pub: &[u8] = &[1, 2, 0xff, 0xfe, 0, 0];
    for bodies in [
        &[bad_pub][..],
        &[&[2, 1, 2, 0xc3, 0x28, 0][..]],
        &[valid, valid, bad_pub],
    ] {
        let mut raw = bus.raw().await;
        raw.handshake().await;
        let mut frame = Vec::new();
        for body in bodies {
            frame.extend_from_slice(&(body.len() as u32).to_le_bytes());
            frame.extend_from_slice(body);
        }
        raw.send_bytes(&frame).await;
        let (code, msg) = raw.expect_error_then_close().await;
        assert_eq!(code, ErrorCode::Protocol, "{msg}");
        assert!(msg.contains("malformed frame"), "{msg}");
    }
    bystander_still_served(&bus, &mut b).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_that_stops_reading_is_dropped_as_slow_consumer() {
    let bus = TestBus::with_config(|c| {
        c.max_pending = 256 << 10;
        c.max_frame = 64 << 10;
        c.ping_interval = Duration::from_millis(200);
    });
    let watcher = bus.client("watcher").await;
    let mut closes = watcher.subscribe(proto::api::EVENT_CONN_CLOSE).await.unwrap();
    let fast_conn = bus.client("fast").await;
    let mut fast = fast_conn.subscribe("flood").await.unwrap();

    // Subscribes, then never reads again (not even pings).
    let mut stuck = bus.raw().await;
    let stuck_id = stuck.handshake().await;
    stuck
        .send(&ClientFrame::Sub(proto::Sub {
            sid: 1,
            pattern: "flood",
            queue: None,
        }))
        .await;

    let publisher = bus.client("publisher").await;
    const N: usize = 4000;
    let payload = vec![7u8; 4096]; // 16 MB in all: far past max_pending and the socket buffer
                                   // Chunks well under max_pending, each consumed by the fast subscriber
                                   // before the next: the fast one must lose nothing.
    for chunk in 0..N / 32 {
        for _ in 0..32 {
            publisher.publish("flood", &payload).await.unwrap();
        }
        for i in 0..32 {
            let m = within("fast delivery", fast.next())
                .await
                .expect("fast subscriber served");
            assert_eq!(m.payload().len(), 4096, "chunk {chunk} message {i}");
        }
    }
    assert_eq!(fast.dropped(), 0);

    let ev: proto::api::ConnEvent = loop {
        let ev: proto::api::ConnEvent = within("close event", closes.next())
            .await
            .unwrap()
            .decode()
            .unwrap();
        if ev.conn.id == stuck_id {
            break ev;
        }
    };
    assert_eq!(ev.reason, Some(proto::api::CloseReason::SlowConsumer));
    assert!(
        ev.conn.dropped > 0,
        "messages beyond max_pending were dropped and counted"
    );
    assert!(
        ev.conn.pending_bytes <= 256 << 10,
        "queue stayed bounded: {}",
        ev.conn.pending_bytes
    );
    drop(stuck);
    assert_serving(&bus).await;
}

/// File descriptors sent where no frame carries them end that connection
/// with an error naming them (they are closed at once, not held), and no
/// other.
#[tokio::test]
async fn descriptors_without_a_frame_are_an_error() {
    // A client that may send descriptors (protocol 6), and one that may not.
    for version in [proto::PROTOCOL_VERSION, 5] {
        descriptors_with_a_ping(version).await;
    }
}

async fn descriptors_with_a_ping(version: u16) {
    use nix::sys::socket::{sendmsg, ControlMessage, MsgFlags};
    use std::os::fd::AsRawFd;
    let bus = TestBus::start();
    let mut raw = bus.raw().await;
    raw.handshake_as(version).await;
    let (r, _w) = nix::unistd::pipe().unwrap();
    let mut ping = Vec::new();
    codec::encode_into(&ClientFrame::Ping, &mut ping, u32::MAX).unwrap();
    let fds = [r.as_raw_fd()];
    sendmsg::<()>(
        raw.stream.as_raw_fd(),
        &[std::io::IoSlice::new(&ping)],
        &[ControlMessage::ScmRights(&fds)],
        MsgFlags::empty(),
        None,
    )
    .unwrap();
    let (code, msg) = within("the error", raw.expect_error_then_close()).await;
    assert_eq!(code, ErrorCode::Protocol);
    assert!(
        msg.contains("1 file descriptors") && msg.contains("no frame"),
        "{msg}"
    );
    assert_serving(&bus).await;
}
