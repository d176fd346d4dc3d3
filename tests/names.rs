//! Well-known names (D-Bus `RequestName`): ownership with every flag, the
//! queue, calls addressed to a name, owner-changed events, and bad input.

use std::time::{Duration, Instant};

use bus_tests::{within, Got, TestBus};
use libbus::{
    names::NameEvent,
    proto::{
        self,
        api::{self, NameOwnerChanged},
        ClientFrame, ErrorCode,
    },
    Bus, Error, Name, NameFlags, NameReply, NameState,
};

async fn next_state(name: &mut Name) -> NameState {
    within("a change of standing", name.next_state())
        .await
        .expect("connection open")
}

async fn owner_id(bus: &Bus, name: &str) -> Option<u64> {
    bus.name_owner(name).await.unwrap().map(|o| o.conn_id)
}

/// Answers every call on `name` with `<who>:<method>:<payload>`.
fn serve(mut name: Name, who: &'static str) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        while let Some(event) = name.next_event().await {
            if let NameEvent::Call(call) = event {
                let payload = String::from_utf8_lossy(call.payload()).into_owned();
                let text = format!("{who}:{}:{payload}", call.subject());
                call.respond(text).await.unwrap();
            }
        }
    })
}

#[tokio::test]
async fn the_first_owns_the_rest_queue_and_do_not_queue_gets_exists() {
    let bus = TestBus::start();
    let a = bus.client("a").await;
    let b = bus.client("b").await;
    let c = bus.client("c").await;

    let mut na = a.request_name("org.test.svc", NameFlags::NONE).await.unwrap();
    assert_eq!(na.reply(), NameReply::PrimaryOwner);
    assert_eq!(next_state(&mut na).await, NameState::Primary);
    // Asking again: the newer handle takes over the calls.
    let mut again = a.request_name("org.test.svc", NameFlags::NONE).await.unwrap();
    assert_eq!(again.reply(), NameReply::AlreadyOwner);
    assert_eq!(next_state(&mut na).await, NameState::Lost);
    assert_eq!(next_state(&mut again).await, NameState::Primary);

    let mut nb = b.request_name("org.test.svc", NameFlags::NONE).await.unwrap();
    assert_eq!(nb.reply(), NameReply::InQueue);
    assert_eq!(next_state(&mut nb).await, NameState::Queued);
    let nc = c
        .request_name("org.test.svc", NameFlags::DO_NOT_QUEUE)
        .await
        .unwrap();
    assert_eq!(nc.reply(), NameReply::Exists);
    // REPLACE_EXISTING does not take a name whose owner did not allow it.
    let nc2 = c
        .request_name(
            "org.test.svc",
            NameFlags::REPLACE_EXISTING | NameFlags::DO_NOT_QUEUE,
        )
        .await
        .unwrap();
    assert_eq!(nc2.reply(), NameReply::Exists);
    assert_eq!(owner_id(&c, "org.test.svc").await, Some(a.conn_id()));

    let names: Vec<api::NameInfo> = c.request_value(api::NAMES, &api::Page::default()).await.unwrap();
    assert_eq!(names.len(), 1);
    assert_eq!(names[0].name, "org.test.svc");
    assert_eq!(names[0].owner.conn_id, a.conn_id());
    assert_eq!(names[0].owner.client, "a");
    let queue: Vec<u64> = names[0].queue.iter().map(|o| o.conn_id).collect();
    assert_eq!(queue, [b.conn_id()], "c asked not to queue");

    // Released: the next in the queue owns it, and hears so. (The
    // superseded handle holds nothing to release.)
    assert_eq!(na.release().await.unwrap(), NameReply::NotOwner);
    assert_eq!(again.release().await.unwrap(), NameReply::Released);
    assert_eq!(next_state(&mut nb).await, NameState::Primary);
    assert_eq!(owner_id(&c, "org.test.svc").await, Some(b.conn_id()));
    // Releasing what one does not hold is an answer, not a failure.
    assert_eq!(a.release_name("org.test.svc").await.unwrap(), NameReply::NotOwner);
    assert_eq!(
        a.release_name("org.test.none").await.unwrap(),
        NameReply::NonExistent
    );
    // Dropping the handle releases it: nobody owns it then.
    drop(nb);
    bus_tests::until("the name is gone", || async {
        owner_id(&c, "org.test.svc").await.is_none()
    })
    .await;
}

#[tokio::test]
async fn replacement_moves_the_old_owner_to_the_queue_or_out() {
    let bus = TestBus::start();
    let x = bus.client("x").await;
    let y = bus.client("y").await;
    let z = bus.client("z").await;

    // x allows replacement and may queue: replaced, it waits first in line.
    let mut nx = x
        .request_name("org.test.r", NameFlags::ALLOW_REPLACEMENT)
        .await
        .unwrap();
    assert_eq!(next_state(&mut nx).await, NameState::Primary);
    let mut nz = z.request_name("org.test.r", NameFlags::NONE).await.unwrap();
    assert_eq!(nz.reply(), NameReply::InQueue);
    let mut ny = y
        .request_name(
            "org.test.r",
            NameFlags::REPLACE_EXISTING | NameFlags::ALLOW_REPLACEMENT | NameFlags::DO_NOT_QUEUE,
        )
        .await
        .unwrap();
    assert_eq!(ny.reply(), NameReply::PrimaryOwner);
    assert_eq!(next_state(&mut ny).await, NameState::Primary);
    assert_eq!(next_state(&mut nx).await, NameState::Queued);
    let names: Vec<api::NameInfo> = z.request_value(api::NAMES, &api::Page::default()).await.unwrap();
    let queue: Vec<u64> = names[0].queue.iter().map(|o| o.conn_id).collect();
    assert_eq!(queue, [x.conn_id(), z.conn_id()], "the replaced owner goes first");

    // y asked not to queue: replaced by x, it loses the name.
    let nx2 = x
        .request_name("org.test.r", NameFlags::REPLACE_EXISTING)
        .await
        .unwrap();
    assert_eq!(nx2.reply(), NameReply::PrimaryOwner);
    assert_eq!(next_state(&mut ny).await, NameState::Lost);
    assert_eq!(owner_id(&z, "org.test.r").await, Some(x.conn_id()));
    // x's queued claim was its first handle's: the new one holds it now.
    assert_eq!(next_state(&mut nx).await, NameState::Lost);
    let mut nx2 = nx2;
    assert_eq!(next_state(&mut nx2).await, NameState::Primary);
    // Asking again with DO_NOT_QUEUE leaves the queue.
    let nz2 = z
        .request_name("org.test.r", NameFlags::DO_NOT_QUEUE)
        .await
        .unwrap();
    assert_eq!(nz2.reply(), NameReply::Exists);
    assert_eq!(next_state(&mut nz).await, NameState::Queued);
    assert_eq!(next_state(&mut nz).await, NameState::Lost);
}

#[tokio::test]
async fn a_call_reaches_only_the_owner_with_its_sender() {
    let bus = TestBus::start();
    let owner = bus.client("owner").await;
    let queued = bus.client("queued").await;
    let snoop = bus.client("snoop").await;
    let caller = bus.client("caller").await;

    // Nobody owns it: the call fails at once, although a subscriber to
    // the method's subject exists.
    let _method_sub = snoop.subscribe("get").await.unwrap();
    let _all = snoop.subscribe(">").await.unwrap();
    let started = Instant::now();
    let err = caller.call("org.test.kv", "get", "k").await.unwrap_err();
    assert!(matches!(err, Error::NoResponders { .. }), "{err}");
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "at once, not at a timeout"
    );

    let n = owner.request_name("org.test.kv", NameFlags::NONE).await.unwrap();
    let served = serve(n, "owner");
    let q = queued.request_name("org.test.kv", NameFlags::NONE).await.unwrap();
    let _queued_served = serve(q, "queued");
    for i in 0..20 {
        let reply = caller.call("org.test.kv", "get", format!("{i}")).await.unwrap();
        assert_eq!(reply.payload(), format!("owner:get:{i}").as_bytes());
    }

    // The owner's handle goes (its task ends): the name passes on.
    served.abort();
    let _ = served.await;
    drop(owner);
    // The queued connection owns it now.
    bus_tests::until("the queued connection owns the name", || async {
        owner_id(&caller, "org.test.kv").await == Some(queued.conn_id())
    })
    .await;
    let reply = caller.call("org.test.kv", "put", "x").await.unwrap();
    assert_eq!(reply.payload(), b"queued:put:x");
}

#[tokio::test]
async fn calls_carry_the_sender_and_error_replies() {
    let bus = TestBus::start();
    let owner = bus.client("owner").await;
    let caller = bus.client("caller").await;
    let mut n = owner.request_name("org.test.who", NameFlags::NONE).await.unwrap();
    let call = tokio::spawn({
        let caller = caller.clone();
        async move { caller.call("org.test.who", "whoami", "").await }
    });
    let got = within("the call", n.next_call()).await.unwrap();
    assert_eq!(got.subject(), "whoami");
    let sender = got.sender().expect("calls always carry their sender");
    assert_eq!(sender.conn_id, caller.conn_id());
    assert_eq!(sender.name, "caller");
    assert_eq!(sender.pid, Some(std::process::id() as i32));
    assert_eq!(sender.uid, Some(nix::unistd::getuid().as_raw()));
    got.respond_error(403, "not you").await.unwrap();
    let err = call.await.unwrap().unwrap_err();
    assert!(
        matches!(&err, Error::Service { code: 403, text } if text == "not you"),
        "{err}"
    );

    // An owner that goes without answering: the caller hears at once.
    let pending = tokio::spawn({
        let caller = caller.clone();
        async move {
            let h = libbus::Headers::from_iter([("Trace-Id", "t1")]);
            caller
                .call_with_headers("org.test.who", "slow", &h, "", Duration::from_secs(120))
                .await
        }
    });
    let got = within("the second call", n.next_call()).await.unwrap();
    assert_eq!(got.headers().get("Trace-Id"), Some("t1"));
    drop(got);
    drop(n);
    owner.close().await.unwrap();
    let err = within("the abandoned call fails", pending)
        .await
        .unwrap()
        .unwrap_err();
    assert!(matches!(err, Error::ResponderGone { .. }), "{err}");
}

#[tokio::test]
async fn owner_changes_are_published_in_order() {
    let bus = TestBus::start();
    let watcher = bus.client("watcher").await;
    let mut events = watcher.subscribe(api::EVENT_NAME_OWNER).await.unwrap();
    let a = bus.client("a").await;
    let b = bus.client("b").await;
    let na = a
        .request_name("org.test.ev", NameFlags::ALLOW_REPLACEMENT)
        .await
        .unwrap();
    let _queued = b.request_name("org.test.ev", NameFlags::NONE).await.unwrap();
    let nb = b
        .request_name("org.test.ev", NameFlags::REPLACE_EXISTING)
        .await
        .unwrap();
    // b releases: a, queued when replaced, owns it again.
    assert_eq!(nb.release().await.unwrap(), NameReply::Released);
    assert_eq!(na.release().await.unwrap(), NameReply::Released);
    let id = |o: &Option<api::NameOwner>| o.as_ref().map(|o| o.conn_id);
    let (ai, bi) = (Some(a.conn_id()), Some(b.conn_id()));
    let want = [(None, ai), (ai, bi), (bi, ai), (ai, None)];
    for (old, new) in want {
        let m = within("an owner event", events.next()).await.unwrap();
        let e: NameOwnerChanged = m.decode().unwrap();
        assert_eq!(e.name, "org.test.ev");
        assert_eq!((id(&e.old), id(&e.new)), (old, new), "{e:?}");
    }
}

/// kill -9 of the owner's process is a connection that ends: its queue
/// takes over (the CLI test kills a real process; here the connection is
/// dropped without a release).
#[tokio::test]
async fn the_queue_takes_over_when_the_owner_disconnects() {
    let bus = TestBus::start();
    let mut raw = bus.raw().await;
    let raw_id = raw.handshake().await;
    raw.send(&ClientFrame::RequestName(proto::RequestName {
        serial: 9,
        sid: 1,
        name: "org.test.q",
        flags: 0,
    }))
    .await;
    assert_eq!(raw.next().await, Some(Got::NameReply(9, NameReply::PrimaryOwner)));
    assert_eq!(
        raw.next().await,
        Some(Got::NameState(1, "org.test.q".into(), NameState::Primary))
    );
    let b = bus.client("b").await;
    let c = bus.client("c").await;
    let mut nb = b.request_name("org.test.q", NameFlags::NONE).await.unwrap();
    let mut nc = c.request_name("org.test.q", NameFlags::NONE).await.unwrap();
    assert_eq!(owner_id(&b, "org.test.q").await, Some(raw_id));
    assert_eq!(next_state(&mut nb).await, NameState::Queued);
    assert_eq!(next_state(&mut nc).await, NameState::Queued);
    drop(raw);
    assert_eq!(next_state(&mut nb).await, NameState::Primary);
    assert_eq!(owner_id(&c, "org.test.q").await, Some(b.conn_id()));
    b.close().await.unwrap();
    assert_eq!(next_state(&mut nc).await, NameState::Primary);
}

#[tokio::test]
async fn bad_names_are_refused_clearly() {
    let bus = TestBus::with_config(|c| c.max_names_per_connection = 2);
    let a = bus.client("a").await;
    // Caught before sending.
    for bad in ["org.*", "org.>", "", "a..b"] {
        let err = a.request_name(bad, NameFlags::NONE).await.unwrap_err();
        assert!(matches!(err, Error::InvalidSubject(_)), "{bad:?}: {err}");
    }
    let err = a.request_name("$BUS.mine", NameFlags::NONE).await.unwrap_err();
    assert!(
        matches!(
            &err,
            Error::Server {
                code: ErrorCode::Reserved,
                ..
            }
        ),
        "{err}"
    );
    let _one = a.request_name("org.test.one", NameFlags::NONE).await.unwrap();
    let _two = a.request_name("org.test.two", NameFlags::NONE).await.unwrap();
    let err = a
        .request_name("org.test.three", NameFlags::NONE)
        .await
        .unwrap_err();
    match &err {
        Error::Server {
            code: ErrorCode::LimitExceeded,
            message,
        } => assert!(message.contains("max_names_per_connection = 2"), "{message}"),
        other => panic!("expected the limit, got {other}"),
    }
    // Asking again for a name it holds is not one more.
    let again = a.request_name("org.test.one", NameFlags::NONE).await.unwrap();
    assert_eq!(again.reply(), NameReply::AlreadyOwner);
    bus_tests::assert_serving(&bus).await;

    // A raw client that sends a wildcard name, in each frame that carries
    // one, gets an error naming it and is closed; others carry on.
    let frames: [ClientFrame<'_>; 3] = [
        ClientFrame::RequestName(proto::RequestName {
            serial: 1,
            sid: 1,
            name: "org.*",
            flags: 0,
        }),
        ClientFrame::ReleaseName {
            serial: 1,
            name: "org.>",
            sid: 0,
        },
        ClientFrame::Call(proto::Call {
            name: "org.a b",
            subject: "m",
            reply_to: None,
            headers: &[],
            payload: &[],
        }),
    ];
    for frame in frames {
        let mut raw = bus.raw().await;
        raw.handshake().await;
        raw.send(&frame).await;
        let (code, message) = raw.expect_error_then_close().await;
        assert_eq!(code, ErrorCode::InvalidSubject, "{message}");
        assert!(message.starts_with("name: "), "{message}");
    }
    // A call with a bad method closes too; a good one to nobody does not.
    let mut raw = bus.raw().await;
    raw.handshake().await;
    raw.send(&ClientFrame::Call(proto::Call {
        name: "org.test.one",
        subject: "m.*",
        reply_to: None,
        headers: &[],
        payload: &[],
    }))
    .await;
    let (code, message) = raw.expect_error_then_close().await;
    assert_eq!(code, ErrorCode::InvalidSubject);
    assert!(message.starts_with("method: "), "{message}");
    let mut raw = bus.raw().await;
    raw.handshake().await;
    raw.send(&ClientFrame::Call(proto::Call {
        name: "org.test.nobody",
        subject: "m",
        reply_to: Some("_INBOX.r.1"),
        headers: &[],
        payload: &[],
    }))
    .await;
    assert_eq!(raw.next().await, Some(Got::NoResponders("_INBOX.r.1".into())));
    bus_tests::assert_serving(&bus).await;
}

/// A `Bus` that reconnects loses its names with the link and asks for them
/// again on the next one.
#[tokio::test]
async fn names_are_asked_for_again_after_a_reconnect() {
    let mut bus = TestBus::start();
    let a = bus.client("a").await;
    let mut n = a.request_name("org.test.back", NameFlags::NONE).await.unwrap();
    assert_eq!(next_state(&mut n).await, NameState::Primary);
    bus.stop();
    assert_eq!(next_state(&mut n).await, NameState::Lost);
    bus.restart();
    assert_eq!(next_state(&mut n).await, NameState::Primary);
    let caller = bus.client("caller").await;
    assert_eq!(owner_id(&caller, "org.test.back").await, Some(a.conn_id()));
}

#[tokio::test]
async fn next_event_gives_changes_of_standing_and_calls_in_order() {
    let bus = TestBus::start();
    let a = bus.client("a").await;
    let b = bus.client("b").await;
    let caller = bus.client("caller").await;
    let na = a.request_name("org.test.ev", NameFlags::NONE).await.unwrap();
    let mut nb = b.request_name("org.test.ev", NameFlags::NONE).await.unwrap();
    let mut event = async || within("a name event", nb.next_event()).await.expect("open");
    assert!(matches!(event().await, NameEvent::State(NameState::Queued)));

    // A lets go; B's change comes before the call made after it.
    na.release().await.unwrap();
    let call = tokio::spawn(async move { caller.call("org.test.ev", "ping", "1").await });
    assert!(matches!(event().await, NameEvent::State(NameState::Primary)));
    match event().await {
        NameEvent::Call(c) => {
            assert_eq!(c.subject(), "ping");
            c.respond("pong").await.unwrap();
        }
        other => panic!("expected the call, got {other:?}"),
    }
    let reply = within("the reply", call).await.unwrap().unwrap();
    assert_eq!(reply.payload(), b"pong");
}
