//! File descriptors with messages: each local subscriber gets its own
//! working copy; they never silently vanish (a subscriber that cannot take
//! them is named to the publisher); limits end only the offending
//! connection; a full queue drops and reports; nothing leaks.

use std::{
    io::Write,
    os::{
        fd::{AsRawFd, OwnedFd},
        unix::fs::FileExt,
    },
    time::Duration,
};

use bus_tests::{assert_serving, within, TestBus};
use libbus::{proto::ErrorCode, Bus, ConnectOptions, Delivery, Error, Event};

/// A temp file holding `text`, opened read-only.
fn file_with(text: &[u8]) -> (tempfile::NamedTempFile, OwnedFd) {
    let mut f = tempfile::NamedTempFile::new().unwrap();
    f.write_all(text).unwrap();
    let fd = std::fs::File::open(f.path()).unwrap().into();
    (f, fd)
}

/// What the file behind `fd` holds (read from offset 0, whatever its offset).
fn contents(fd: &OwnedFd) -> Vec<u8> {
    let f = std::fs::File::from(fd.try_clone().unwrap());
    let mut buf = vec![0u8; 64];
    let n = f.read_at(&mut buf, 0).unwrap();
    buf.truncate(n);
    buf
}

/// Descriptors this process has open.
fn open_fds() -> usize {
    std::fs::read_dir("/proc/self/fd").unwrap().count()
}

#[tokio::test]
async fn each_subscriber_gets_its_own_working_descriptor() {
    let bus = TestBus::start();
    let a = bus.client("a").await;
    let b = bus.client("b").await;
    let mut sub_a = a.subscribe("files.>").await.unwrap();
    let mut sub_b = b.subscribe("files.>").await.unwrap();
    let publisher = bus.client("publisher").await;
    let (_file, fd) = file_with(b"hello");
    publisher
        .publish_with_fds("files.new", "greeting", vec![fd])
        .await
        .unwrap();
    let ma = within("a", sub_a.next()).await.unwrap();
    let mb = within("b", sub_b.next()).await.unwrap();
    assert_eq!(ma.payload(), b"greeting");
    assert_eq!((ma.fd_count(), mb.fd_count()), (1, 1));
    let fa = ma.take_fds().pop().unwrap();
    let fb = mb.take_fds().pop().unwrap();
    assert_ne!(fa.as_raw_fd(), fb.as_raw_fd(), "each has its own descriptor");
    assert_eq!(contents(&fa), b"hello");
    assert_eq!(contents(&fb), b"hello");
    assert!(ma.take_fds().is_empty(), "taken once");
}

#[tokio::test]
async fn requests_and_replies_carry_descriptors() {
    let bus = TestBus::start();
    let responder = bus.client("responder").await;
    let mut requests = responder.subscribe("svc.open").await.unwrap();
    tokio::spawn(async move {
        while let Some(req) = requests.next().await {
            let asked = contents(&req.take_fds()[0]);
            let (_keep, fd) = file_with(&[asked, b" back".to_vec()].concat());
            req.respond_with_fds("here", vec![fd]).await.unwrap();
        }
    });
    let client = bus.client("client").await;
    let (_file, fd) = file_with(b"ping");
    let reply = within(
        "reply",
        client.request_with_fds("svc.open", "please", vec![fd], Duration::from_secs(5)),
    )
    .await
    .unwrap();
    assert_eq!(reply.payload(), b"here");
    assert_eq!(contents(&reply.take_fds()[0]), b"ping back");
    // Nobody there: no responders, at once.
    let (_file, fd) = file_with(b"x");
    let none = client
        .request_with_fds("nobody.home", "x", vec![fd], Duration::from_secs(5))
        .await;
    assert!(matches!(none, Err(Error::NoResponders { .. })), "{none:?}");
}

#[tokio::test]
async fn a_network_subscriber_is_named_not_silently_skipped() {
    let bus = TestBus::with_config(|c| {
        c.tcp = Some("127.0.0.1:0".into());
        c.tcp_insecure = true;
    });
    let local = bus.client("local").await;
    let mut local_sub = local.subscribe("files.>").await.unwrap();
    let remote = within(
        "tcp connect",
        Bus::connect_with(&bus.tcp_address(), ConnectOptions::default().name("remote")),
    )
    .await
    .unwrap();
    let mut remote_sub = remote.subscribe("files.>").await.unwrap();
    let publisher = bus.client("publisher").await;
    let mut events = publisher.events();
    let (_file, fd) = file_with(b"data");
    publisher
        .publish_with_fds("files.new", "with fd", vec![fd])
        .await
        .unwrap();
    publisher.publish("files.new", "plain").await.unwrap();
    publisher.flush().await.unwrap();
    let m = within("local", local_sub.next()).await.unwrap();
    assert_eq!((m.payload(), m.fd_count()), (&b"with fd"[..], 1));
    // The network subscriber's next message is the plain one.
    let m = within("remote", remote_sub.next()).await.unwrap();
    assert_eq!(m.payload(), b"plain");
    let (code, message) = within("the publisher's error", async {
        loop {
            if let Some(Event::Error { code, message }) = events.next().await {
                return (code, message);
            }
        }
    })
    .await;
    assert_eq!(code, ErrorCode::FdsNotPassed);
    assert!(message.contains("(tcp, protocol 6)"), "{message}");
    // Counted where `bus-cli info` shows refusals.
    let refused = bus_test_support::info(&publisher).await.refused;
    assert!(
        refused.iter().any(|(n, c)| n == "fds_not_passed" && *c == 1),
        "{refused:?}"
    );
    // And a TCP client cannot send them at all.
    let (_file, fd) = file_with(b"x");
    let e = remote
        .publish_with_fds("files.new", "x", vec![fd])
        .await
        .unwrap_err();
    assert!(e.to_string().contains("Unix socket"), "{e}");
}

#[tokio::test]
async fn an_older_subscriber_is_named_too() {
    let bus = TestBus::start();
    let mut old = bus.raw().await;
    old.handshake_as(5).await;
    old.send(&libbus::proto::ClientFrame::Sub(libbus::proto::Sub {
        sid: 1,
        pattern: "files.>",
        queue: None,
    }))
    .await;
    let publisher = bus.client("publisher").await;
    libbus_flush_until_subscribed(&publisher).await;
    let mut events = publisher.events();
    let (_file, fd) = file_with(b"x");
    publisher
        .publish_with_fds("files.new", "x", vec![fd])
        .await
        .unwrap();
    publisher.flush().await.unwrap();
    let message = within("the publisher's error", async {
        loop {
            if let Some(Event::Error { code, message }) = events.next().await {
                assert_eq!(code, ErrorCode::FdsNotPassed);
                return message;
            }
        }
    })
    .await;
    assert!(message.contains("(unix, protocol 5)"), "{message}");
}

/// Waits until the daemon counts the raw client's subscription.
async fn libbus_flush_until_subscribed(bus: &Bus) {
    bus_tests::until("the subscription", || async {
        bus_tests::server_info(bus).await.subscriptions >= 2
    })
    .await;
}

#[tokio::test]
async fn too_many_descriptors_end_only_that_connection() {
    let bus = TestBus::with_config(|c| c.max_fds_per_message = 2);
    let bad = bus
        .client_with(ConnectOptions::default().name("bad").reconnect(None))
        .await;
    let fds = (0..3).map(|_| file_with(b"x")).collect::<Vec<_>>();
    let owned = fds.iter().map(|(_, fd)| fd.try_clone().unwrap()).collect();
    bad.publish_with_fds("files.new", "three", owned).await.unwrap();
    let _ = bad.flush().await;
    within("the connection to end", async {
        while bad.is_connected() {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await;
    let e = bad.disconnected_error().to_string();
    assert!(e.contains("max_fds_per_message = 2"), "{e}");
    assert_serving(&bus).await;
}

#[tokio::test]
async fn a_subscriber_over_its_descriptor_quota_gets_drops_reported() {
    let bus = TestBus::with_config(|c| c.max_fds_pending = 4);
    // Takes two deliveries, then stops reading until it is read.
    let slow = bus
        .client_with(ConnectOptions::default().name("slow").subscription_capacity(2))
        .await;
    let mut sub = slow.subscribe("files.>").await.unwrap();
    let publisher = bus.client("publisher").await;
    const N: u64 = 40;
    for i in 0..N {
        let (_file, fd) = file_with(&i.to_le_bytes());
        publisher
            .publish_with_fds("files.new", i.to_le_bytes(), vec![fd])
            .await
            .unwrap();
    }
    publisher.flush().await.unwrap();
    let (mut received, mut lagged) = (0, 0);
    while received + lagged < N {
        match within("delivery", sub.next_delivery()).await {
            Some(Delivery::Message(m)) => {
                assert_eq!(m.fd_count(), 1);
                let n = u64::from_le_bytes(m.payload().try_into().unwrap());
                assert_eq!(contents(&m.take_fds()[0]), n.to_le_bytes());
                received += 1;
            }
            Some(Delivery::Lagged(n)) => lagged += n,
            None => panic!("subscription ended"),
        }
    }
    assert!(
        lagged > 0,
        "{N} messages with descriptors to a reader taking 2 and a quota of 4"
    );
}

#[tokio::test]
async fn nothing_leaks_after_many_messages_with_descriptors() {
    let before = open_fds();
    {
        let bus = TestBus::with_config(|c| c.max_fds_pending = 64);
        let reader = bus.client("reader").await;
        let mut sub = reader.subscribe("files.>").await.unwrap();
        // A subscriber that never reads: its drops close their copies.
        let stalled = bus
            .client_with(ConnectOptions::default().name("stalled").subscription_capacity(1))
            .await;
        let _stalled_sub = stalled.subscribe("files.>").await.unwrap();
        let publisher = bus.client("publisher").await;
        let (_file, fd) = file_with(b"x");
        const N: u64 = 5_000;
        let consumer = tokio::spawn(async move {
            let (mut seen, mut lost) = (0, 0);
            while seen + lost < N {
                match sub.next_delivery().await {
                    Some(Delivery::Message(m)) => {
                        drop(m.take_fds());
                        seen += 1;
                    }
                    Some(Delivery::Lagged(n)) => lost += n,
                    None => break,
                }
            }
            seen
        });
        for _ in 0..N {
            publisher
                .publish_with_fds("files.new", "x", vec![fd.try_clone().unwrap()])
                .await
                .unwrap();
        }
        publisher.flush().await.unwrap();
        assert!(within("consumer", consumer).await.unwrap() > 0);
        drop(fd);
        // The stalled one is kicked with its queue full.
        drop(stalled);
        drop((reader, publisher));
    }
    // The daemon and its connections are gone: every descriptor with them.
    within("descriptors to be closed", async {
        while open_fds() > before {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
}

#[tokio::test]
async fn a_sealed_memfd_payload_reads_as_any_payload() {
    let bus = TestBus::start();
    let sub_conn = bus.client("sub").await;
    let mut sub = sub_conn.subscribe("frames.>").await.unwrap();
    let mut batches = sub_conn.subscribe("frames.>").await.unwrap();
    let publisher = bus.client("publisher").await;
    // Past max_frame (1 MiB): only the descriptor goes through the daemon.
    let big: Vec<u8> = (0..(3 << 20)).map(|i: u32| (i % 251) as u8).collect();
    publisher.publish_memfd("frames.cam", &big).await.unwrap();
    let m = within("the frame", sub.next()).await.unwrap();
    assert_eq!(m.payload().len(), big.len());
    assert!(
        m.payload() == &big[..],
        "the mapped payload is what was published"
    );
    assert_eq!(m.headers().get("Bus-Memfd"), Some((3 << 20).to_string().as_str()));
    assert_eq!(m.fd_count(), 0, "the memfd became the payload");
    assert_eq!(&m.payload_bytes()[..16], &big[..16]);
    // A batch reader gets the same payload (copied into the batch).
    let batch = within("the frame as a batch", batches.next_batch())
        .await
        .unwrap();
    assert_eq!(batch.len(), 1);
    assert!(batch.iter().next().unwrap().payload() == &big[..]);

    // A memfd that is not sealed is never mapped: the subscriber gets the
    // descriptor as a plain one, and an empty payload.
    let fd = nix::sys::memfd::memfd_create(c"unsealed", nix::sys::memfd::MFdFlags::MFD_CLOEXEC).unwrap();
    nix::unistd::write(&fd, b"mutable").unwrap();
    let h = libbus::Headers::from_iter([("Bus-Memfd", "7")]);
    publisher
        .publish_with_headers_and_fds("frames.cam", &h, "", vec![fd])
        .await
        .unwrap();
    let m = within("the unsealed one", sub.next()).await.unwrap();
    assert!(m.payload().is_empty());
    assert_eq!(m.fd_count(), 1);
}
