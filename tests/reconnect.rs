//! Self-healing clients: a `Bus` outlives its daemon, reconnects, re-sends
//! its subscriptions and buffered publishes, and reports each step as events.

use std::time::{Duration, Instant};

use bus_tests::{within, TestBus};
use libbus::{ConnectOptions, Error, Event, Reconnect};

/// Next event, skipping `Lagged`.
async fn next_event(events: &mut libbus::Events) -> Event {
    loop {
        match within("a bus event", events.next()).await {
            Some(Event::Lagged { .. }) => continue,
            Some(e) => return e,
            None => panic!("event stream ended"),
        }
    }
}

/// Stops the daemon and waits for the client's `Disconnected` event.
async fn stop_and_see_disconnect(bus: &mut TestBus, events: &mut libbus::Events) {
    bus.stop();
    assert!(matches!(next_event(events).await, Event::Disconnected { .. }));
}

#[tokio::test]
async fn resubscribes_and_sends_buffered_publishes_after_restart() {
    let mut bus = TestBus::start();
    let client = bus.client("survivor").await;
    let mut events = client.events();
    assert!(matches!(next_event(&mut events).await, Event::Connected { .. }));
    let mut sub = client.subscribe("jobs.>").await.unwrap();
    let mut queue = client.queue_subscribe("work", "pool").await.unwrap();
    client.publish("jobs.1", "before").await.unwrap();
    assert_eq!(within("msg", sub.next()).await.unwrap().payload(), b"before");
    let old_server = client.server_id();

    stop_and_see_disconnect(&mut bus, &mut events).await;
    assert!(!client.is_connected());
    // Publishes while the daemon is gone are held and sent after reconnecting,
    // behind the re-sent subscriptions, so this subscriber gets them.
    for i in 0..100 {
        client.publish("jobs.2", format!("during {i}")).await.unwrap();
    }
    client.publish("work", "queued work").await.unwrap();

    let restarted = Instant::now();
    bus.restart();
    match next_event(&mut events).await {
        Event::Reconnected { conn_id, attempts } => {
            assert!(attempts >= 1);
            assert_eq!(conn_id, client.conn_id());
        }
        other => panic!("expected Reconnected, got {other:?}"),
    }
    println!("reconnected {:?} after the restart", restarted.elapsed());
    assert_ne!(client.server_id(), old_server, "connected to the new daemon");
    for i in 0..100 {
        let m = within("buffered msg", sub.next()).await.unwrap();
        assert_eq!(m.payload(), format!("during {i}").as_bytes());
    }
    assert_eq!(
        within("queue msg", queue.next()).await.unwrap().payload(),
        b"queued work"
    );

    // And traffic from other clients reaches the re-established subscription.
    let other = bus.client("other").await;
    other.publish("jobs.3", "after").await.unwrap();
    assert_eq!(within("msg", sub.next()).await.unwrap().payload(), b"after");
    // Requests work again too (the reply inbox was re-sent).
    let responder = bus.client("responder").await;
    let mut svc = responder.subscribe("svc").await.unwrap();
    tokio::spawn(async move {
        while let Some(req) = svc.next().await {
            let _ = req.respond("pong").await;
        }
    });
    let reply = within("request", client.request("svc", "ping")).await.unwrap();
    assert_eq!(reply.payload(), b"pong");
}

#[tokio::test]
async fn in_flight_requests_fail_at_once_on_disconnect() {
    let mut bus = TestBus::start();
    let client = bus.client("asker").await;
    let silent = bus.client("silent").await;
    let _svc = silent.subscribe("never.answers").await.unwrap();

    let long = Duration::from_secs(15);
    let asker = client.clone();
    let pending = tokio::spawn(async move {
        let start = Instant::now();
        let r = asker.request_with_timeout("never.answers", "?", long).await;
        (r, start.elapsed())
    });
    // Let the request reach the daemon before pulling the plug.
    client.flush().await.unwrap();
    silent.flush().await.unwrap();
    bus.stop();
    let (result, took) = within("failed request", pending).await.unwrap();
    assert!(matches!(result, Err(Error::Disconnected { .. })), "{result:?}");
    assert!(took < long, "failed at once, not at the timeout");
    // New requests while disconnected fail at once as well.
    let r = client.request_with_timeout("never.answers", "?", long).await;
    assert!(matches!(r, Err(Error::Disconnected { .. })), "{r:?}");
}

#[tokio::test]
async fn publishes_beyond_the_reconnect_buffer_are_a_limit_error() {
    let mut bus = TestBus::start();
    let client = bus
        .client_with(ConnectOptions::default().name("buffered").reconnect_buffer(4096))
        .await;
    let mut events = client.events();
    next_event(&mut events).await;
    stop_and_see_disconnect(&mut bus, &mut events).await;
    let payload = [0u8; 100];
    let mut accepted = 0;
    let err = loop {
        match client.publish("x", payload).await {
            Ok(()) => accepted += 1,
            Err(e) => break e,
        }
        assert!(accepted < 1000, "the bound was never hit");
    };
    match err {
        Error::LimitExceeded { limit, value } => {
            assert_eq!(limit, "reconnect_buffer");
            assert_eq!(value, 4096);
        }
        other => panic!("expected a limit error, got {other:?}"),
    }
    // ~4096 / (100 bytes + frame overhead)
    assert!((30..=40).contains(&accepted), "accepted {accepted}");

    // After reconnecting, exactly the accepted publishes are delivered.
    bus.restart();
    assert!(matches!(next_event(&mut events).await, Event::Reconnected { .. }));
    let info: libbus::proto::api::ServerInfo = within("info", client.request(libbus::proto::api::INFO, []))
        .await
        .unwrap()
        .decode()
        .unwrap();
    // msgs_in counts the info request itself, too.
    assert_eq!(
        info.msgs_in,
        accepted + 1,
        "every buffered publish arrived, no more"
    );
}

#[tokio::test]
async fn without_reconnect_the_bus_closes() {
    let mut bus = TestBus::start();
    let client = bus
        .client_with(ConnectOptions::default().name("one-shot").reconnect(None))
        .await;
    let mut events = client.events();
    next_event(&mut events).await;
    let mut sub = client.subscribe("x").await.unwrap();
    bus.stop();
    assert!(within("end of subscription", sub.next()).await.is_none());
    assert!(matches!(next_event(&mut events).await, Event::Closed { .. }));
    assert!(within("end of events", events.next()).await.is_none());
    assert!(client.is_closed());
    assert!(matches!(
        client.publish("x", "late").await,
        Err(Error::Disconnected { .. })
    ));
}

#[tokio::test]
async fn gives_up_after_max_attempts() {
    let mut bus = TestBus::start();
    let policy = Reconnect {
        initial_delay: Duration::from_millis(10),
        max_delay: Duration::from_millis(20),
        max_attempts: Some(3),
    };
    let client = bus
        .client_with(ConnectOptions::default().name("quitter").reconnect(Some(policy)))
        .await;
    let mut events = client.events();
    next_event(&mut events).await;
    stop_and_see_disconnect(&mut bus, &mut events).await;
    match next_event(&mut events).await {
        Event::Closed { reason } => assert!(reason.contains("after 3 attempts"), "{reason}"),
        other => panic!("expected Closed, got {other:?}"),
    }
}

#[tokio::test]
async fn close_ends_subscriptions_and_events() {
    let bus = TestBus::start();
    let client = bus.client("closer").await;
    let mut events = client.events();
    next_event(&mut events).await;
    let mut sub = client.subscribe("x").await.unwrap();
    client.close().await.unwrap();
    assert!(within("end of subscription", sub.next()).await.is_none());
    match next_event(&mut events).await {
        Event::Closed { reason } => assert_eq!(reason, "closed by the client"),
        other => panic!("expected Closed, got {other:?}"),
    }
}

/// `retry_on_initial_connect`: a client started before its daemon waits
/// for it instead of failing with `NoDaemon`; without it, it fails at once;
/// with `max_attempts`, it gives up after them.
#[tokio::test]
async fn the_first_connection_can_wait_for_the_daemon() {
    let mut bus = TestBus::start();
    bus.stop();
    let address = bus.address();
    let err = libbus::Bus::connect(&address).await.unwrap_err();
    assert!(matches!(err, Error::NoDaemon { .. }), "{err}");

    let bounded = ConnectOptions::default()
        .retry_on_initial_connect()
        .reconnect(Some(Reconnect {
            initial_delay: Duration::from_millis(5),
            max_delay: Duration::from_millis(10),
            max_attempts: Some(3),
        }));
    let err = within("three attempts", libbus::Bus::connect_with(&address, bounded))
        .await
        .unwrap_err();
    assert!(matches!(err, Error::NoDaemon { .. }), "{err}");

    let waiting = tokio::spawn({
        let address = address.clone();
        async move {
            let opts = ConnectOptions::default().name("early").retry_on_initial_connect();
            libbus::Bus::connect_with(&address, opts).await
        }
    });
    // Not connected while there is no daemon.
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(!waiting.is_finished(), "it waits for the daemon");
    bus.restart();
    let early = within("connected once the daemon is up", waiting)
        .await
        .unwrap()
        .expect("connects");
    early.flush().await.unwrap();
}
