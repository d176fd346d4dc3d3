//! Headers (protocol 4): ordered, repeatable (name, value) pairs forwarded
//! as they came; error replies; what older clients get; bad and oversized
//! header blocks.

use std::time::Duration;

use bus_tests::{within, Got, TestBus};
use libbus::{
    codec,
    proto::{self, ClientFrame, ErrorCode},
    Error, Headers,
};

fn sample() -> Headers {
    Headers::from_iter([
        ("Trace-Id", "4bf92f3577b34da6"),
        ("Accept", "text/plain"),
        ("accept", "application/json"),
        ("Empty", ""),
    ])
}

#[tokio::test]
async fn headers_arrive_in_order_with_repeats_and_messages_without_have_none() {
    let bus = TestBus::start();
    let sub_conn = bus.client("sub").await;
    let mut sub = sub_conn.subscribe("h.>").await.unwrap();
    let mut batch_sub = sub_conn.subscribe("h.>").await.unwrap();
    let publisher = bus.client("pub").await;
    publisher
        .publish_with_headers("h.one", &sample(), "body")
        .await
        .unwrap();
    publisher.publish("h.two", "plain").await.unwrap();
    publisher
        .publish_with_headers("h.three", &Headers::new(), "no headers given")
        .await
        .unwrap();

    let m = within("h.one", sub.next()).await.unwrap();
    assert_eq!((m.subject(), m.payload()), ("h.one", &b"body"[..]));
    assert_eq!(m.headers(), sample());
    assert_eq!(
        m.headers().get_all("ACCEPT").collect::<Vec<_>>(),
        ["text/plain", "application/json"]
    );
    for subject in ["h.two", "h.three"] {
        let m = within(subject, sub.next()).await.unwrap();
        assert_eq!(m.subject(), subject);
        assert!(m.headers().is_empty());
    }
    // The same through a batch.
    let mut seen = Vec::new();
    while seen.len() < 3 {
        let batch = within("a batch", batch_sub.next_batch()).await.unwrap();
        seen.extend(batch.iter().map(|m| (m.subject().to_owned(), m.headers())));
    }
    assert_eq!(seen[0], ("h.one".to_owned(), sample()));
    assert!(seen[1].1.is_empty() && seen[2].1.is_empty());
}

#[tokio::test]
async fn requests_and_replies_carry_headers_and_error_replies_are_errors() {
    let bus = TestBus::start();
    let service = bus.client("svc").await;
    let mut reqs = service.subscribe("svc.orders.get").await.unwrap();
    tokio::spawn(async move {
        while let Some(r) = reqs.next().await {
            let trace = r.headers().get("Trace-Id").unwrap_or("none").to_owned();
            if r.payload() == b"7" {
                let h = Headers::from_iter([("Trace-Id", trace)]);
                r.respond_with_headers(&h, "order 7").await.unwrap();
            } else {
                r.respond_error(404, &format!("no order {}", String::from_utf8_lossy(r.payload())))
                    .await
                    .unwrap();
            }
        }
    });
    let caller = bus.client("caller").await;
    let h = Headers::from_iter([("Trace-Id", "abc")]);
    let t = Duration::from_secs(10);
    let reply = within("reply", caller.request_with_headers("svc.orders.get", &h, "7", t))
        .await
        .unwrap();
    assert_eq!(reply.payload(), b"order 7");
    assert_eq!(reply.headers().get("trace-id"), Some("abc"));
    let err = within(
        "error reply",
        caller.request_with_headers("svc.orders.get", &h, "8", t),
    )
    .await
    .unwrap_err();
    assert!(
        matches!(&err, Error::Service { code: 404, text } if text == "no order 8"),
        "{err}"
    );
    assert_eq!(err.to_string(), "service error 404: no order 8");
    // "No responders" keeps its own variant.
    let err = within("no responders", caller.request("svc.nobody", "x"))
        .await
        .unwrap_err();
    assert!(matches!(err, Error::NoResponders { .. }), "{err}");
}

/// A raw subscriber speaking `version`, subscribed to `h.x` as sid 1.
async fn raw_sub(bus: &TestBus, version: u16) -> bus_tests::Raw {
    let mut raw = bus.raw().await;
    raw.handshake_as(version).await;
    raw.send(&ClientFrame::Sub(proto::Sub {
        sid: 1,
        pattern: "h.x",
        queue: None,
    }))
    .await;
    raw.send(&ClientFrame::Ping).await;
    assert_eq!(raw.next().await, Some(Got::Pong));
    raw
}

/// Every frame of `frames`, encoded back to back (one write, so the daemon
/// reads them together).
fn wire(frames: &[ClientFrame<'_>]) -> Vec<u8> {
    let mut out = Vec::new();
    for f in frames {
        codec::encode_into(f, &mut out, u32::MAX).unwrap();
    }
    out
}

#[tokio::test]
async fn old_clients_get_the_message_without_headers_and_new_ones_get_runs_with_them() {
    let bus = TestBus::start();
    let mut v4 = raw_sub(&bus, proto::PROTOCOL_VERSION).await;
    let mut v3 = raw_sub(&bus, 3).await;
    let block = sample().encode().unwrap();
    let plain = |payload: &'static [u8]| {
        ClientFrame::Pub(proto::Pub {
            subject: "h.x",
            reply_to: None,
            payload,
        })
    };
    let with = ClientFrame::HPub(proto::HPub {
        subject: "h.x",
        reply_to: None,
        headers: &block,
        payload: b"2",
    });
    // Plain, plain, with headers, plain, plain: in one read.
    let mut publisher = bus.raw().await;
    publisher.handshake().await;
    publisher
        .send_bytes(&wire(&[plain(b"0"), plain(b"1"), with, plain(b"3"), plain(b"4")]))
        .await;

    let msg = |payload: &[u8]| Got::Msg {
        sid: 1,
        subject: "h.x".into(),
        payload: payload.to_vec(),
    };
    let mut got_v4 = Vec::new();
    let mut got_v3 = Vec::new();
    for _ in 0..5 {
        got_v4.push(v4.next().await.unwrap());
        got_v3.push(v3.next().await.unwrap());
    }
    let hmsg = Got::HMsg {
        sid: 1,
        subject: "h.x".into(),
        headers: block.clone(),
        payload: b"2".to_vec(),
    };
    assert_eq!(got_v4, [msg(b"0"), msg(b"1"), hmsg, msg(b"3"), msg(b"4")]);
    assert_eq!(got_v3, [msg(b"0"), msg(b"1"), msg(b"2"), msg(b"3"), msg(b"4")]);
    // The protocol 4 subscriber got the five forwarded as they came (one
    // Run, headers and all); the protocol 3 one, which cannot read an HPub,
    // got each message on its own.
    assert_eq!((v4.runs, v3.runs), (1, 0));
}

#[tokio::test]
async fn oversized_headers_are_refused_and_malformed_ones_close_only_that_connection() {
    let bus = TestBus::with_config(|c| c.max_header_bytes = 64);
    let watcher = bus.client("watcher").await;
    let mut sub = watcher.subscribe("h.x").await.unwrap();

    // Over max_header_bytes: refused with the limit named, not routed; the
    // connection stays.
    let mut raw = bus.raw().await;
    raw.handshake().await;
    let big = Headers::from_iter([("Big", "x".repeat(100))]).encode().unwrap();
    raw.send(&ClientFrame::HPub(proto::HPub {
        subject: "h.x",
        reply_to: None,
        headers: &big,
        payload: b"too big",
    }))
    .await;
    match raw.next().await {
        Some(Got::Error(ErrorCode::LimitExceeded, m)) => {
            assert!(m.contains("max_header_bytes") && m.contains("64"), "{m}")
        }
        other => panic!("expected LimitExceeded, got {other:?}"),
    }
    raw.send(&ClientFrame::Ping).await;
    assert_eq!(raw.next().await, Some(Got::Pong), "the connection stays");

    // Malformed blocks: named, and that connection closes.
    for (block, needle) in [
        (&[2u8, 1, b'a'][..], "malformed"),
        (&[1u8, 1, 0xff, 1, b'v'][..], "UTF-8"),
        (&[1u8, 3, b'a', b' ', b'b', 1, b'v'][..], "invalid header name"),
        (&[1u8, 1, b'a', 2, b'\r', b'\n'][..], "invalid value"),
    ] {
        let mut raw = bus.raw().await;
        raw.handshake().await;
        raw.send(&ClientFrame::HPub(proto::HPub {
            subject: "h.x",
            reply_to: None,
            headers: block,
            payload: b"bad",
        }))
        .await;
        let (code, message) = raw.expect_error_then_close().await;
        assert_eq!(code, ErrorCode::Protocol, "{message}");
        assert!(message.contains(needle), "{needle}: {message}");
    }

    // Nothing bad was delivered, and the bus serves the others.
    watcher.publish("h.x", "fine").await.unwrap();
    let m = within("the watcher's own message", sub.next()).await.unwrap();
    assert_eq!(m.payload(), b"fine");
    // libbus refuses a bad header before sending.
    let err = watcher
        .publish_with_headers("h.x", &Headers::from_iter([("a b", "v")]), "x")
        .await
        .unwrap_err();
    assert!(matches!(err, Error::Header(_)), "{err}");
}
