//! `libbus::blocking` from plain threads, with no async runtime of the
//! test's own: publish, subscribe, request, respond, close.

use std::time::{Duration, Instant};

use bus_tests::{TestBus, WAIT};
use libbus::{blocking::Bus, Error};

/// Threads of this process named like the blocking client's runtime.
fn runtime_threads() -> usize {
    std::fs::read_dir("/proc/self/task")
        .expect("/proc/self/task")
        .filter_map(|t| std::fs::read_to_string(t.ok()?.path().join("comm")).ok())
        .filter(|name| name.trim_end() == "libbus-runtime")
        .count()
}

// One test, in phases: the runtime-thread count below would see another
// test's client.
#[test]
fn blocking_client_from_plain_threads() {
    // Nothing here runs inside a tokio runtime.
    assert!(tokio::runtime::Handle::try_current().is_err());
    let bus = TestBus::start();
    let address = bus.address();

    // No daemon: the error at once, and no thread left behind.
    let missing = libbus::Address::Unix(address.unix_path().unwrap().with_extension("missing"));
    assert!(matches!(Bus::connect(&missing), Err(Error::NoDaemon { .. })));
    assert_eq!(runtime_threads(), 0);

    // A service on its own thread: adds the numbers in each request.
    let service = Bus::connect(&address).unwrap();
    let requests = service.subscribe("calc.add").unwrap();
    let service_ctl = service.clone();
    let worker = std::thread::spawn(move || {
        let mut served = 0;
        for req in requests.iter() {
            let text = String::from_utf8_lossy(req.payload()).into_owned();
            let sum: Result<i64, _> = text.split('+').map(|n| n.trim().parse::<i64>()).sum();
            match sum {
                Ok(sum) => service.respond(&req, sum.to_string()).unwrap(),
                Err(e) => service.respond_error(&req, 400, &e.to_string()).unwrap(),
            }
            served += 1;
        }
        served
    });

    let client = Bus::connect(&address).unwrap();
    let reply = client.request("calc.add", "2 + 3 + 37").unwrap();
    assert_eq!(reply.payload(), b"42");
    match client.request("calc.add", "2 + x") {
        Err(Error::Service { code: 400, .. }) => {}
        other => panic!("expected a service error, got {other:?}"),
    }
    assert!(matches!(
        client.request_with_timeout("nobody.home", "", Duration::from_secs(1)),
        Err(Error::NoResponders { .. })
    ));

    // Publish and subscribe, in order, with headers.
    let sub = client.subscribe("blocking.>").unwrap();
    for i in 0..100 {
        client.publish(&format!("blocking.{i}"), i.to_string()).unwrap();
    }
    let h = libbus::Headers::from_iter([("Trace-Id", "7")]);
    client
        .publish_with_headers("blocking.h", &h, "with headers")
        .unwrap();
    for i in 0..100 {
        let msg = sub.next_timeout(WAIT).unwrap().expect("a message");
        assert_eq!(msg.subject(), format!("blocking.{i}"));
        assert_eq!(msg.payload(), i.to_string().as_bytes());
    }
    let msg = sub.next_timeout(WAIT).unwrap().unwrap();
    assert_eq!(msg.headers().get("trace-id"), Some("7"));

    // A bounded wait that ends without a message.
    let start = Instant::now();
    assert!(matches!(
        sub.next_timeout(Duration::from_millis(100)),
        Err(Error::Timeout(_))
    ));
    assert!(start.elapsed() >= Duration::from_millis(100));

    // A queue group member gets the message; the async client underneath
    // is there for the rest of the API.
    let q = client.queue_subscribe("jobs.run", "workers").unwrap();
    client.publish("jobs.run", "job 1").unwrap();
    assert_eq!(q.next_timeout(WAIT).unwrap().unwrap().payload(), b"job 1");
    assert!(client.as_async().is_connected());
    client.flush().unwrap();

    // Closing ends the subscriptions: the iterator ends.
    client.close().unwrap();
    assert!(sub.next_timeout(WAIT).unwrap().is_none());
    assert!(matches!(
        client.publish("x", "y"),
        Err(Error::Disconnected { .. })
    ));
    drop((sub, q, client));

    // Closed from another thread (a clone), the service's iterator ends
    // and its thread returns how many requests it served.
    service_ctl.close().unwrap();
    let start = Instant::now();
    while !worker.is_finished() {
        assert!(start.elapsed() < WAIT, "the service's iterator did not end");
        std::thread::sleep(Duration::from_millis(10));
    }
    let served = worker.join().unwrap();
    drop(service_ctl);
    assert_eq!(served, 2);

    // Every handle dropped: every runtime thread has stopped.
    assert_eq!(runtime_threads(), 0);
}
