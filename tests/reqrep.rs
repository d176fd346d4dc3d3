//! Request/reply, timeouts and "no responders".

use std::time::{Duration, Instant};

use bus_tests::{until, within, TestBus};
use libbus::{
    proto::api::{self, ConnInfo},
    Error,
};

#[tokio::test]
async fn request_reply() {
    let bus = TestBus::start();
    let service = bus.client("echo").await;
    let mut reqs = service.subscribe("svc.echo").await.unwrap();
    tokio::spawn(async move {
        while let Some(r) = reqs.next().await {
            let mut body = b"echo: ".to_vec();
            body.extend_from_slice(r.payload());
            r.respond(body).await.unwrap();
        }
    });
    let client = bus.client("caller").await;
    for i in 0..50 {
        let reply = within("reply", client.request("svc.echo", format!("{i}")))
            .await
            .unwrap();
        assert_eq!(reply.payload(), format!("echo: {i}").as_bytes());
    }
}

#[tokio::test]
async fn concurrent_requests_get_their_own_replies() {
    let bus = TestBus::start();
    let service = bus.client("double").await;
    let mut reqs = service.queue_subscribe("svc.double", "q").await.unwrap();
    tokio::spawn(async move {
        while let Some(r) = reqs.next().await {
            let n: u64 = r.decode().unwrap();
            r.respond_value(&(n * 2)).await.unwrap();
        }
    });
    let client = bus.client("caller").await;
    let mut tasks = Vec::new();
    for i in 0..200u64 {
        let c = client.clone();
        tasks.push(tokio::spawn(async move {
            let r: u64 = c.request_value("svc.double", &i).await.unwrap();
            assert_eq!(r, i * 2);
        }));
    }
    for t in tasks {
        within("request task", t).await.unwrap();
    }
}

#[tokio::test]
async fn per_call_timeout() {
    let bus = TestBus::start();
    let silent = bus.client("silent").await;
    let _sub = silent.subscribe("svc.silent").await.unwrap();
    let client = bus.client("caller").await;
    let start = Instant::now();
    let err = within(
        "timeout",
        client.request_with_timeout("svc.silent", "x", Duration::from_millis(300)),
    )
    .await
    .unwrap_err();
    assert!(
        matches!(err, Error::Timeout(d) if d == Duration::from_millis(300)),
        "{err}"
    );
    assert!(start.elapsed() >= Duration::from_millis(300));
    // The connection is still usable afterwards.
    client.flush().await.unwrap();
}

#[tokio::test]
async fn no_responders_fails_at_once() {
    let bus = TestBus::start();
    let client = bus.client("caller").await;
    // Far below the default 5 s timeout: the daemon answers "no responders".
    let err = within("no responders", client.request("svc.nobody", "x"))
        .await
        .unwrap_err();
    assert!(
        matches!(&err, Error::NoResponders { subject } if subject == "svc.nobody"),
        "{err}"
    );
}

#[tokio::test]
async fn unknown_admin_api_has_no_responders() {
    let bus = TestBus::start();
    let client = bus.client("caller").await;
    let err = within("api", client.request("$BUS.api.nope", ""))
        .await
        .unwrap_err();
    assert!(matches!(err, Error::NoResponders { .. }), "{err}");
}

#[tokio::test]
async fn requests_fail_with_disconnected_when_daemon_stops() {
    let mut bus = TestBus::start();
    let silent = bus.client("silent").await;
    let _sub = silent.subscribe("svc.slow").await.unwrap();
    let client = bus.client("caller").await;
    let pending = tokio::spawn({
        let c = client.clone();
        async move {
            c.request_with_timeout("svc.slow", "x", Duration::from_secs(15))
                .await
        }
    });
    // Stop once the request has reached its (silent) responder.
    until("the request delivered", || async {
        let list: Vec<ConnInfo> = client.request_value(api::LIST, &()).await.expect("list");
        list.iter().any(|c| c.name == "silent" && c.msgs_out >= 1)
    })
    .await;
    bus.stop();
    let err = within("disconnect", pending).await.unwrap().unwrap_err();
    assert!(matches!(err, Error::Disconnected { .. }), "{err}");
}

/// Waits until the daemon has written at least `n` messages to each of the
/// connections named in `names`.
async fn until_delivered(client: &libbus::Bus, names: &[&str], n: u64) {
    until("the request delivered to its responders", || async {
        let list: Vec<ConnInfo> = client.request_value(api::LIST, &()).await.expect("list");
        names
            .iter()
            .all(|name| list.iter().any(|c| c.name == *name && c.msgs_out >= n))
    })
    .await;
}

/// A request whose every responder closes without replying fails at once
/// with `ResponderGone`, far inside its timeout; while one of them is still
/// there, it may still answer.
#[tokio::test]
async fn a_request_fails_when_every_responder_closes_without_replying() {
    let bus = TestBus::start();
    let first = bus.client("first").await;
    let second = bus.client("second").await;
    let _s1 = first.subscribe("svc.flaky").await.unwrap();
    let mut s2 = second.subscribe("svc.flaky").await.unwrap();
    let caller = bus.client("caller").await;
    let long = Duration::from_secs(120);

    // One of two responders closes: the other still answers.
    let pending = tokio::spawn({
        let c = caller.clone();
        async move { c.request_with_timeout("svc.flaky", "one", long).await }
    });
    until_delivered(&caller, &["first", "second"], 1).await;
    first.close().await.unwrap();
    drop(_s1);
    let req = within("the request at the second responder", s2.next())
        .await
        .unwrap();
    req.respond("answered").await.unwrap();
    let reply = within("the reply", pending).await.unwrap().unwrap();
    assert_eq!(reply.payload(), b"answered");

    // Its last responder closes: the requester hears at once.
    let pending = tokio::spawn({
        let c = caller.clone();
        async move { c.request_with_timeout("svc.flaky", "two", long).await }
    });
    until_delivered(&caller, &["second"], 2).await;
    second.close().await.unwrap();
    let err = within("ResponderGone, not the 120 s timeout", pending)
        .await
        .unwrap()
        .unwrap_err();
    assert!(
        matches!(&err, Error::ResponderGone { subject } if subject == "svc.flaky"),
        "{err}"
    );
    // The caller's connection is unaffected.
    caller.flush().await.unwrap();
}

/// A client older than `ResponderGone` (protocol 3) is told with the frame
/// it knows, `NoResponders`.
#[tokio::test]
async fn a_version_3_requester_gets_no_responders_when_its_responder_closes() {
    use bus_tests::Got;
    use libbus::proto::{self, ClientFrame};
    let bus = TestBus::start();
    let responder = bus.client("responder").await;
    let _sub = responder.subscribe("svc.old").await.unwrap();
    let probe = bus.client("probe").await;
    let mut raw = bus.raw().await;
    raw.handshake_as(3).await;
    raw.send(&ClientFrame::Pub(proto::Pub {
        subject: "svc.old",
        reply_to: Some("_INBOX.raw.1"),
        payload: b"x",
    }))
    .await;
    until_delivered(&probe, &["responder"], 1).await;
    responder.close().await.unwrap();
    assert_eq!(raw.next().await, Some(Got::NoResponders("_INBOX.raw.1".into())));
}

/// A queue group passes over a member that stopped answering: requests go
/// to the members owing fewer replies while they have room. The request the
/// stalled member holds fails at once when its connection closes.
#[tokio::test]
async fn a_queue_group_routes_around_a_member_that_stopped_answering() {
    let bus = TestBus::start();
    let stalled = bus.client("stalled").await;
    let _held = stalled.queue_subscribe("svc.work", "workers").await.unwrap();
    let caller = bus.client("caller").await;
    let long = Duration::from_secs(120);
    // Sent while the stalled member is the group's only member.
    let stuck = tokio::spawn({
        let c = caller.clone();
        async move { c.request_with_timeout("svc.work", "stuck", long).await }
    });
    until_delivered(&caller, &["stalled"], 1).await;

    let healthy = bus.client("healthy").await;
    let mut work = healthy.queue_subscribe("svc.work", "workers").await.unwrap();
    tokio::spawn(async move {
        while let Some(m) = work.next().await {
            m.respond("done").await.unwrap();
        }
    });
    // Each of these would wait out its 120 s timeout at the stalled member:
    // round robin would send every other one there.
    for i in 0..40 {
        let reply = within("a reply from the healthy member", {
            caller.request_with_timeout("svc.work", format!("{i}"), long)
        })
        .await
        .unwrap();
        assert_eq!(reply.payload(), b"done");
    }
    stalled.close().await.unwrap();
    let err = within("the stalled member's request fails", stuck)
        .await
        .unwrap()
        .unwrap_err();
    assert!(matches!(err, Error::ResponderGone { .. }), "{err}");
}
