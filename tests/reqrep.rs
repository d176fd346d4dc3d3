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
