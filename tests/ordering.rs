//! Under the limits, delivery is lossless and ordered per publisher →
//! subscriber pair: every message carries (publisher, sequence number), and
//! every subscriber sees each publisher's sequence exactly once, in order.

use bus_tests::{within, TestBus};

const PUBLISHERS: u32 = 3;
const SUBSCRIBERS: usize = 3;
const PER_PUBLISHER: u64 = 20_000;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_loss_no_reorder_per_publisher_subscriber_pair() {
    let bus = TestBus::start();
    let mut readers = Vec::new();
    for s in 0..SUBSCRIBERS {
        let conn = bus.client(&format!("sub-{s}")).await;
        let mut sub = conn.subscribe("seq.*").await.unwrap();
        readers.push(tokio::spawn(async move {
            let _conn = conn;
            let mut next = [0u64; PUBLISHERS as usize];
            for _ in 0..PER_PUBLISHER * u64::from(PUBLISHERS) {
                let m = within("next sequenced message", sub.next()).await.expect("open");
                let (p, seq): (u32, u64) = m.decode().unwrap();
                assert_eq!(m.subject(), format!("seq.{p}"));
                assert_eq!(
                    seq, next[p as usize],
                    "subscriber {s}, publisher {p}: gap or reorder"
                );
                next[p as usize] += 1;
            }
            assert_eq!(sub.dropped(), 0);
            next
        }));
    }
    let mut writers = Vec::new();
    for p in 0..PUBLISHERS {
        let conn = bus.client(&format!("pub-{p}")).await;
        writers.push(tokio::spawn(async move {
            let subject = format!("seq.{p}");
            for seq in 0..PER_PUBLISHER {
                conn.publish_value(&subject, &(p, seq)).await.unwrap();
                // Keep well under max_pending: each subscriber's queue holds at
                // most a few flush windows of everyone's messages.
                if seq % 500 == 499 {
                    conn.flush().await.unwrap();
                }
            }
            conn.flush().await.unwrap();
        }));
    }
    for w in writers {
        within("publisher", w).await.unwrap();
    }
    for r in readers {
        let seen = within("subscriber", r).await.unwrap();
        assert_eq!(seen, [PER_PUBLISHER; PUBLISHERS as usize]);
    }
}

/// Tasks publishing through one shared connection (`Bus` clones) at once,
/// some one message at a time and some in batches (which hold the output
/// buffer's lock for many encodes, so the others wait on it): each task's
/// messages arrive exactly once and in its order, none torn.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tasks_sharing_one_connection_keep_their_order() {
    const TASKS: u32 = 4;
    const PER_TASK: u64 = 10_000;
    let bus = TestBus::start();
    let reader = bus.client("sub").await;
    let mut sub = reader.subscribe("shared.*").await.unwrap();
    let conn = bus.client("pub").await;
    let mut writers = Vec::new();
    for t in 0..TASKS {
        let conn = conn.clone();
        writers.push(tokio::spawn(async move {
            let subject = format!("shared.{t}");
            let mut seq = 0;
            while seq < PER_TASK {
                if t % 2 == 0 {
                    conn.publish_value(&subject, &(t, seq)).await.unwrap();
                    seq += 1;
                } else {
                    let end = (seq + 64).min(PER_TASK);
                    let mut msgs = Vec::new();
                    for s in seq..end {
                        msgs.push((subject.clone(), postcard::to_allocvec(&(t, s)).unwrap()));
                    }
                    conn.publish_batch(msgs).await.unwrap();
                    seq = end;
                }
                if seq % 512 == 0 {
                    conn.flush().await.unwrap();
                }
            }
            conn.flush().await.unwrap();
        }));
    }
    let mut next = [0u64; TASKS as usize];
    for _ in 0..PER_TASK * u64::from(TASKS) {
        let m = within("next message from a shared connection", sub.next())
            .await
            .expect("open");
        let (t, seq): (u32, u64) = m.decode().unwrap();
        assert_eq!(m.subject(), format!("shared.{t}"));
        assert_eq!(seq, next[t as usize], "task {t}: gap or reorder");
        next[t as usize] += 1;
    }
    for w in writers {
        within("publishing task", w).await.unwrap();
    }
    assert_eq!(next, [PER_TASK; TASKS as usize]);
    assert_eq!(sub.dropped(), 0);
}

/// A request or a reply that finds the output idle is written by its caller,
/// bypassing the writer task; it must never overtake what was published
/// before it on the same connection. A responder counts the messages it
/// saw before each request (one subscription, so one order); each request
/// follows a burst of publishes, and from several tasks sharing the
/// connection, requests and publishes interleave. The bursts (up to 1 MiB
/// a task) outgrow the socket's buffer, so the writer task is often in the
/// middle of a write when a request comes: a request written then would
/// overtake, or split a frame.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_never_overtakes_earlier_publishes() {
    const TASKS: u64 = 3;
    const ROUNDS: u64 = 40;
    let bus = TestBus::start();
    let responder = bus.client("responder").await;
    let mut sub = responder.subscribe("order.>").await.unwrap();
    let counter = tokio::spawn(async move {
        // Per task: data messages seen so far.
        let mut seen = [0u64; TASKS as usize];
        while let Some(m) = sub.next().await {
            let (task, _, _): (u64, u64, Vec<u8>) = m.decode().unwrap();
            assert_eq!(
                sub.dropped(),
                0,
                "the responder fell behind: the counts mean nothing"
            );
            if m.subject() == "order.data" {
                seen[task as usize] += 1;
            } else {
                m.respond(postcard::to_allocvec(&seen[task as usize]).unwrap())
                    .await
                    .unwrap();
            }
        }
    });
    let client = bus.client("client").await;
    let mut tasks = Vec::new();
    for task in 0..TASKS {
        let client = client.clone();
        tasks.push(tokio::spawn(async move {
            let mut sent = 0u64;
            for round in 0..ROUNDS {
                // 0 to 63 publishes, then a request: the request must see
                // every one of them.
                for i in 0..(round * 13 + task * 7) % 64 {
                    client
                        .publish_value("order.data", &(task, i, vec![0u8; 16 << 10]))
                        .await
                        .unwrap();
                    sent += 1;
                }
                let reply: u64 = within(
                    "a reply",
                    client.request_value("order.req", &(task, round, Vec::<u8>::new())),
                )
                .await
                .unwrap();
                assert_eq!(
                    reply, sent,
                    "task {task}, round {round}: a request overtook a publish"
                );
            }
        }));
    }
    for t in tasks {
        within("a requesting task", t).await.unwrap();
    }
    counter.abort();
}
