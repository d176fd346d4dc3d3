//! Publish/subscribe through a real daemon.

use std::collections::HashMap;

use bus_tests::{within, Got, TestBus};
use libbus::{
    codec,
    proto::{self, ClientFrame},
    subject, Error,
};

#[tokio::test]
async fn round_trip() {
    let bus = TestBus::start();
    let a = bus.client("a").await;
    let b = bus.client("b").await;
    let mut sub = a.subscribe("greet.world").await.unwrap();
    b.publish("greet.world", "hello").await.unwrap();
    let m = within("message", sub.next()).await.unwrap();
    assert_eq!(m.subject(), "greet.world");
    assert_eq!(m.payload(), b"hello");
    assert_eq!(m.reply_to(), None);
}

#[tokio::test]
async fn wildcard_matrix() {
    let patterns = [
        "a", "a.b", "a.*", "a.>", "*", ">", "*.b", "a.*.c", "*.*.*", "a.b.>", "b.>",
    ];
    let subjects = [
        "a", "b", "a.b", "a.c", "b.b", "a.b.c", "a.x.c", "a.b.c.d", "x.y.z",
    ];
    let bus = TestBus::start();
    let subscriber = bus.client("matrix-sub").await;
    let publisher = bus.client("matrix-pub").await;
    let mut subs = Vec::new();
    for p in patterns {
        subs.push((p, subscriber.subscribe(p).await.unwrap()));
    }
    for s in subjects {
        publisher.publish(s, s).await.unwrap();
    }
    // A final marker every pattern except the literal ones sees; flushing then
    // guarantees all earlier deliveries were queued.
    publisher.flush().await.unwrap();
    for (p, sub) in &mut subs {
        let want: Vec<&str> = subjects
            .iter()
            .copied()
            .filter(|s| subject::matches(p, s))
            .collect();
        let mut got = Vec::new();
        for _ in 0..want.len() {
            let m = within("matrix delivery", sub.next()).await.unwrap();
            assert_eq!(m.subject().as_bytes(), m.payload());
            got.push(m.subject().to_owned());
        }
        assert_eq!(got, want, "pattern {p}");
    }
    // Nothing extra arrived: a new marker is the very next message for each.
    publisher.publish("a.b.c", "marker").await.unwrap();
    for (p, sub) in &mut subs {
        if subject::matches(p, "a.b.c") {
            let m = within("marker", sub.next()).await.unwrap();
            assert_eq!(m.payload(), b"marker", "pattern {p} got an unexpected message");
        }
    }
}

#[tokio::test]
async fn queue_group_delivers_each_message_once() {
    let bus = TestBus::start();
    let publisher = bus.client("pub").await;
    let mut members = Vec::new();
    for i in 0..3 {
        let c = bus.client(&format!("worker-{i}")).await;
        let s = c.queue_subscribe("jobs.*", "workers").await.unwrap();
        members.push((c, s));
    }
    let watcher = bus.client("watcher").await;
    let mut all = watcher.subscribe("jobs.>").await.unwrap();
    const N: usize = 300;
    for i in 0..N {
        publisher.publish("jobs.build", i.to_string()).await.unwrap();
    }
    publisher.flush().await.unwrap();
    for _ in 0..N {
        within("watcher", all.next()).await.unwrap();
    }
    let mut seen = HashMap::new();
    let mut per_member = Vec::new();
    for (c, s) in &mut members {
        c.flush().await.unwrap();
        let mut n = 0;
        while let Ok(Some(m)) = tokio::time::timeout(std::time::Duration::from_millis(200), s.next()).await {
            *seen.entry(m.payload_bytes()).or_insert(0) += 1;
            n += 1;
        }
        per_member.push(n);
    }
    assert_eq!(seen.len(), N, "every message delivered");
    assert!(seen.values().all(|&n| n == 1), "no message delivered twice");
    assert!(
        per_member.iter().all(|&n| n > 0),
        "every member got some: {per_member:?}"
    );
}

#[tokio::test]
async fn hundred_thousand_in_order() {
    let bus = TestBus::start();
    let a = bus.client("sink").await;
    let b = bus.client("source").await;
    let mut sub = a.subscribe("seq").await.unwrap();
    const N: u64 = 100_000;
    let producer = tokio::spawn(async move {
        for i in 0..N {
            b.publish("seq", i.to_le_bytes()).await.unwrap();
        }
        b.flush().await.unwrap();
        b
    });
    for i in 0..N {
        let m = within("sequenced message", sub.next())
            .await
            .expect("stream open");
        let got = u64::from_le_bytes(m.payload().try_into().unwrap());
        assert_eq!(got, i, "message out of order or missing");
    }
    within("producer", producer).await.unwrap();
    assert_eq!(sub.dropped(), 0);
}

/// A publisher that keeps publishing to one subject takes busd's fast path
/// (the subject's routes cached per connection); subscriptions made and
/// removed meanwhile still change who gets what, from the next publish on.
#[tokio::test]
async fn routes_follow_subscriptions_on_a_busy_subject() {
    let bus = TestBus::start();
    let publisher = bus.client("publisher").await;
    let a = bus.client("a").await;
    let b = bus.client("b").await;
    // Cached with nobody subscribed.
    for _ in 0..3 {
        publisher.publish("news", "nobody").await.unwrap();
    }
    publisher.flush().await.unwrap();
    let mut sub_a = a.subscribe("news").await.unwrap();
    publisher.publish("news", "1").await.unwrap();
    assert_eq!(within("a", sub_a.next()).await.unwrap().payload(), b"1");
    let mut sub_b = b.subscribe("*").await.unwrap();
    publisher.publish("news", "2").await.unwrap();
    // "2" is routed (to a too) before a unsubscribes.
    publisher.flush().await.unwrap();
    drop(sub_a);
    a.flush().await.unwrap();
    publisher.publish("news", "3").await.unwrap();
    publisher.flush().await.unwrap();
    let mut got_b = Vec::new();
    for _ in 0..2 {
        got_b.push(within("b", sub_b.next()).await.unwrap().payload().to_vec());
    }
    assert_eq!(got_b, [&b"2"[..], b"3"]);
    // The daemon sent a "1" and "2" only: "3" came after the unsubscribe.
    let conns: Vec<libbus::proto::api::ConnInfo> =
        within("list", publisher.request(libbus::proto::api::LIST, []))
            .await
            .unwrap()
            .decode()
            .unwrap();
    let a_info = conns.iter().find(|c| c.id == a.conn_id()).unwrap();
    assert_eq!(a_info.msgs_out, 2, "{a_info:?}");
}

#[tokio::test]
async fn unsubscribe_on_drop() {
    let bus = TestBus::start();
    let a = bus.client("a").await;
    let b = bus.client("b").await;
    let sub = a.subscribe("gone").await.unwrap();
    drop(sub);
    a.flush().await.unwrap();
    // With the subscription gone, a request finds no responders.
    assert!(matches!(
        b.request("gone", "x").await,
        Err(Error::NoResponders { .. })
    ));
}

#[tokio::test]
async fn invalid_and_reserved_subjects_rejected_locally() {
    let bus = TestBus::start();
    let c = bus.client("c").await;
    for bad in ["", "a..b", "a b", "a.*", "a.>", "\tx"] {
        assert!(
            matches!(c.publish(bad, "x").await, Err(Error::InvalidSubject(_))),
            "{bad:?}"
        );
        // A valid subject in between (the client remembers the last one it
        // checked) does not let the next bad one through.
        c.publish("a.b", "x").await.unwrap();
    }
    assert!(matches!(
        c.subscribe("a.>.b").await,
        Err(Error::InvalidSubject(_))
    ));
    let err = c.publish("$BUS.event.conn.open", "x").await.unwrap_err();
    assert!(err.to_string().contains("reserved"), "{err}");
    // The connection is still fine.
    c.flush().await.unwrap();
}

#[tokio::test]
async fn payload_over_max_frame_is_a_named_limit_error() {
    let bus = TestBus::with_config(|c| c.max_frame = 4096);
    let c = bus.client("c").await;
    assert_eq!(c.max_frame(), 4096);
    let err = c.publish("big", vec![0u8; 5000]).await.unwrap_err();
    assert!(
        matches!(
            err,
            Error::LimitExceeded {
                limit: "max_frame",
                value: 4096
            }
        ),
        "{err}"
    );
    c.flush().await.unwrap();
}

#[tokio::test]
async fn typed_values_round_trip() {
    #[derive(serde::Serialize, serde::Deserialize, Debug, PartialEq)]
    struct Reading {
        sensor: String,
        celsius: f32,
    }
    let bus = TestBus::start();
    let c = bus.client("c").await;
    let mut sub = c.subscribe("t").await.unwrap();
    let r = Reading {
        sensor: "kitchen".into(),
        celsius: 21.5,
    };
    c.publish_value("t", &r).await.unwrap();
    let m = within("typed", sub.next()).await.unwrap();
    assert_eq!(m.decode::<Reading>().unwrap(), r);
}

/// Subscribes a raw connection speaking `version` to `burst` as sid 1 and
/// waits until the daemon has taken the subscription.
async fn raw_subscriber(bus: &TestBus, version: u16) -> bus_tests::Raw {
    let mut raw = bus.raw().await;
    raw.handshake_as(version).await;
    raw.send(&ClientFrame::Sub(proto::Sub {
        sid: 1,
        pattern: "burst",
        queue: None,
    }))
    .await;
    raw.send(&ClientFrame::Ping).await;
    assert_eq!(raw.next().await, Some(Got::Pong));
    raw
}

#[tokio::test]
async fn a_burst_is_forwarded_in_runs_and_version_2_clients_get_msgs() {
    let bus = TestBus::start();
    let mut current = raw_subscriber(&bus, proto::PROTOCOL_VERSION).await;
    let mut old = raw_subscriber(&bus, proto::MIN_PROTOCOL_VERSION).await;
    let lib = bus.client("lib").await;
    let mut sub = lib.subscribe("burst").await.unwrap();

    // Twenty publishes in one write, so the daemon reads them together; one
    // to a subject nobody wants sits in the middle and splits the run.
    let mut publisher = bus.raw().await;
    publisher.handshake().await;
    let mut wire = Vec::new();
    for i in 0..20u8 {
        let subject = if i == 10 { "elsewhere" } else { "burst" };
        let p = ClientFrame::Pub(proto::Pub {
            subject,
            reply_to: None,
            payload: &[i; 40],
        });
        codec::encode_into(&p, &mut wire, u32::MAX).unwrap();
    }
    publisher.send_bytes(&wire).await;

    let expected: Vec<Got> = (0..20u8)
        .filter(|&i| i != 10)
        .map(|i| Got::Msg {
            sid: 1,
            subject: "burst".into(),
            payload: vec![i; 40],
        })
        .collect();
    for raw in [&mut current, &mut old] {
        let mut got = Vec::new();
        for _ in 0..expected.len() {
            got.push(raw.next().await.expect("a delivery"));
        }
        assert_eq!(got, expected);
    }
    assert!(current.runs >= 1, "a burst read together goes as a Run");
    assert_eq!(old.runs, 0, "a version 2 client never gets a Run");
    for i in (0..20u8).filter(|&i| i != 10) {
        let m = within("message", sub.next()).await.unwrap();
        assert_eq!((m.subject(), m.payload()), ("burst", &[i; 40][..]));
    }
}
