//! Batch publish (`Bus::publish_batch`) and batch receive
//! (`Subscription::next_batch`) through a real daemon.

use bus_tests::{within, TestBus};
use libbus::{ConnectOptions, Error, Subscription};

/// Takes batches until `n` messages have come: (subject, reply_to, payload).
async fn take_batches(sub: &mut Subscription, n: usize) -> (Vec<(String, Option<String>, Vec<u8>)>, usize) {
    let mut got = Vec::new();
    let mut batches = 0;
    while got.len() < n {
        let batch = within("a batch", sub.next_batch())
            .await
            .expect("connection open");
        assert!(!batch.is_empty(), "a batch holds at least one message");
        let before = got.len();
        for m in &batch {
            got.push((
                m.subject().to_owned(),
                m.reply_to().map(str::to_owned),
                m.payload().to_vec(),
            ));
        }
        assert_eq!(got.len() - before, batch.len(), "len() counts what iter() yields");
        batches += 1;
    }
    (got, batches)
}

fn numbered(i: u32) -> (String, Vec<u8>) {
    let subject = if i.is_multiple_of(3) { "batch.b" } else { "batch.a" };
    (subject.to_owned(), i.to_le_bytes().to_vec())
}

#[tokio::test]
async fn a_batch_publish_arrives_in_order_and_is_read_in_batches() {
    const N: u32 = 20_000;
    let bus = TestBus::start();
    let publisher = bus.client("batch-pub").await;
    let subscriber = bus.client("batch-sub").await;
    let mut sub = subscriber.subscribe("batch.*").await.unwrap();
    // In calls of 1000, so the daemon sees long runs of publishes.
    for chunk in (0..N).collect::<Vec<_>>().chunks(1000) {
        publisher
            .publish_batch(chunk.iter().map(|&i| numbered(i)))
            .await
            .unwrap();
    }
    publisher.flush().await.unwrap();

    // The first few one by one, the rest in batches: both read the same stream.
    let mut got = Vec::new();
    for _ in 0..5 {
        let m = within("message", sub.next()).await.unwrap();
        got.push((m.subject().to_owned(), None, m.payload().to_vec()));
    }
    let (rest, batches) = take_batches(&mut sub, N as usize - 5).await;
    got.extend(rest);
    let want: Vec<_> = (0..N)
        .map(|i| {
            let (s, p) = numbered(i);
            (s, None, p)
        })
        .collect();
    assert_eq!(got, want);
    assert!(
        batches < (N as usize - 5) / 2,
        "messages came in batches: {batches} for {N}"
    );
    assert_eq!(sub.dropped(), 0);
}

#[tokio::test]
async fn queue_members_and_requests_read_in_batches() {
    // Queue groups get single `Msg` deliveries (not runs): the other way
    // a batch locates its messages.
    let bus = TestBus::start();
    let client = bus.client("batch-q").await;
    let mut member = client.queue_subscribe("jobs.*", "workers").await.unwrap();
    let publisher = bus.client("batch-q-pub").await;
    for i in 0..50u32 {
        publisher
            .publish_with_reply(&format!("jobs.{i}"), "answers.here", i.to_le_bytes())
            .await
            .unwrap();
    }
    publisher.flush().await.unwrap();
    let (got, _) = take_batches(&mut member, 50).await;
    for (i, (subject, reply_to, payload)) in got.into_iter().enumerate() {
        assert_eq!(subject, format!("jobs.{i}"));
        assert_eq!(reply_to.as_deref(), Some("answers.here"));
        assert_eq!(payload, (i as u32).to_le_bytes());
    }
}

#[tokio::test]
async fn a_batch_publish_stops_at_an_invalid_subject() {
    let bus = TestBus::start();
    let client = bus.client("batch-bad").await;
    let mut sub = client.subscribe("ok.>").await.unwrap();
    let err = client
        .publish_batch([("ok.1", "one"), ("not..valid", "two"), ("ok.3", "three")])
        .await
        .unwrap_err();
    assert!(matches!(err, Error::InvalidSubject(_)), "{err:?}");
    client.publish("ok.end", "end").await.unwrap();
    client.flush().await.unwrap();
    let (got, _) = take_batches(&mut sub, 2).await;
    let subjects: Vec<&str> = got.iter().map(|(s, _, _)| s.as_str()).collect();
    assert_eq!(
        subjects,
        ["ok.1", "ok.end"],
        "the messages before the bad one went out, none after"
    );
}

#[tokio::test]
async fn next_batch_ends_when_the_connection_closes() {
    let mut bus = TestBus::start();
    let client = bus
        .client_with(ConnectOptions::default().name("batch-end").reconnect(None))
        .await;
    let mut sub = client.subscribe("x").await.unwrap();
    bus.stop();
    assert!(within("end of the stream", sub.next_batch()).await.is_none());
}

/// Message `i` of a stream in which subject, reply subject and size repeat
/// for a while and then change: what each end reuses from the frame before
/// (its head) must never carry over to a frame that differs.
fn varied(i: u32) -> (&'static str, Option<&'static str>, Vec<u8>) {
    let subject = if (i / 7).is_multiple_of(2) {
        "head.a"
    } else {
        "head.bb"
    };
    let reply_to = (i % 11 == 5).then_some(if i.is_multiple_of(2) { "r.x" } else { "r.yy" });
    let size = [8, 8, 8, 9, 9, 0, 0, 200, 200, 8][(i % 10) as usize];
    // The content differs even where the size does not.
    let payload = (0..size).map(|k| (i as usize * 31 + k) as u8).collect();
    (subject, reply_to, payload)
}

#[tokio::test]
async fn repeated_heads_never_carry_over_to_a_different_frame() {
    const N: u32 = 3_000;
    let bus = TestBus::start();
    let publisher = bus.client("head-pub").await;
    let subscriber = bus.client("head-sub").await;
    let mut sub = subscriber.subscribe("head.*").await.unwrap();
    for i in 0..N {
        match varied(i) {
            (s, None, p) => publisher.publish(s, p).await.unwrap(),
            (s, Some(r), p) => publisher.publish_with_reply(s, r, p).await.unwrap(),
        }
    }
    publisher.flush().await.unwrap();

    // Half one by one, half in batches: both decoders read the stream.
    let mut got = Vec::new();
    while got.len() < N as usize / 2 {
        let m = within("message", sub.next()).await.unwrap();
        got.push((
            m.subject().to_owned(),
            m.reply_to().map(str::to_owned),
            m.payload().to_vec(),
        ));
    }
    let rest = N as usize - got.len();
    got.extend(take_batches(&mut sub, rest).await.0);
    let want: Vec<_> = (0..N)
        .map(|i| {
            let (s, r, p) = varied(i);
            (s.to_owned(), r.map(str::to_owned), p)
        })
        .collect();
    assert_eq!(got.len(), want.len());
    for (i, (g, w)) in got.iter().zip(&want).enumerate() {
        assert_eq!(g, w, "message {i}");
    }
}

/// Payload `i` of `size` bytes, different for every message.
fn sized(i: usize, size: usize) -> Vec<u8> {
    (0..size).map(|k| (i * 7 + k) as u8).collect()
}

#[tokio::test]
async fn messages_arrive_intact_as_reads_grow_for_large_ones_and_shrink_back() {
    // Large messages make the subscriber's reads grow (room for about 64),
    // small ones bring them back: every message must come through whole.
    let phases = [
        (200, 16 << 10),
        (3_000, 100),
        (20, 200 << 10),
        (1_000, 10),
        (64, 64 << 10),
    ];
    let bus = TestBus::start();
    let publisher = bus.client("sizes-pub").await;
    let subscriber = bus.client("sizes-sub").await;
    let mut sub = subscriber.subscribe("sizes").await.unwrap();
    let mut want = Vec::new();
    for (count, size) in phases {
        for _ in 0..count {
            let payload = sized(want.len(), size);
            publisher.publish("sizes", &payload).await.unwrap();
            want.push(payload);
        }
    }
    publisher.flush().await.unwrap();
    for (i, payload) in want.iter().enumerate() {
        let m = within("message", sub.next()).await.expect("connection open");
        assert!(
            m.payload() == payload.as_slice(),
            "message {i} ({} bytes)",
            payload.len()
        );
    }
    assert_eq!(sub.dropped(), 0);
}
