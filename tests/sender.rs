//! Sender identity (protocol 4): a subscription made with it gets each
//! message with its sender as the daemon stamped it (kernel credentials for
//! a local peer), which no client can set.

use std::time::Duration;

use bus_tests::{server_info, within, TestBus};
use libbus::{
    proto::api::{self, ConnInfo},
    Headers,
};

/// The connection id the daemon gave the client named `name`.
async fn conn_id(admin: &libbus::Bus, name: &str) -> u64 {
    let list: Vec<ConnInfo> = admin.request(api::LIST, []).await.unwrap().decode().unwrap();
    list.iter().find(|c| c.name == name).unwrap().id
}

#[tokio::test]
async fn the_sender_is_the_kernels_and_cannot_be_forged() {
    let bus = TestBus::start();
    let watcher = bus.client("watcher").await;
    let mut stamped = watcher.subscribe_with_sender("audit.>").await.unwrap();
    let mut plain = watcher.subscribe("audit.>").await.unwrap();
    let publisher = bus.client("publisher").await;
    // Headers that claim another identity are only headers.
    let forged = Headers::from_iter([("Sender-Uid", "0"), ("Sender-Pid", "1")]);
    publisher
        .publish_with_headers("audit.login", &forged, "alice")
        .await
        .unwrap();
    publisher.publish("audit.logout", "alice").await.unwrap();

    let node = server_info(&watcher).await.node_id;
    let id = conn_id(&watcher, "publisher").await;
    for subject in ["audit.login", "audit.logout"] {
        let m = within("a stamped message", stamped.next()).await.unwrap();
        assert_eq!(m.subject(), subject);
        let s = m.sender().expect("stamped");
        assert_eq!(s.node, node);
        assert_eq!(s.conn_id, id);
        assert_eq!(s.name, "publisher");
        assert_eq!(s.pid, Some(std::process::id() as i32), "the kernel's pid");
        assert_eq!(s.uid, Some(nix::unistd::getuid().as_raw()));
        assert_eq!(s.gid, Some(nix::unistd::getgid().as_raw()));
        assert_eq!(s.addr, None);
        let p = within("the same, unstamped", plain.next()).await.unwrap();
        assert_eq!(p.subject(), subject);
        assert!(p.sender().is_none(), "only subscriptions that ask get senders");
    }
}

#[tokio::test]
async fn senders_come_with_every_message_of_a_burst() {
    let bus = TestBus::start();
    let watcher = bus.client("watcher").await;
    let mut stamped = watcher.subscribe_with_sender("burst").await.unwrap();
    let mut plain = watcher.subscribe("burst").await.unwrap();
    let publisher = bus.client("burster").await;
    // One batch: the daemon reads them together and forwards runs to the
    // plain subscription; the stamped one gets each with its sender.
    let msgs: Vec<(&str, Vec<u8>)> = (0..200u8).map(|i| ("burst", vec![i; 20])).collect();
    publisher.publish_batch(msgs).await.unwrap();
    for i in 0..200u8 {
        let m = within("stamped", stamped.next()).await.unwrap();
        assert_eq!(
            (m.payload()[0], m.sender().unwrap().name.as_str()),
            (i, "burster")
        );
        let p = within("plain", plain.next()).await.unwrap();
        assert_eq!(p.payload()[0], i);
    }
    // A batch read of stamped messages carries them too.
    publisher.publish("burst", "once more").await.unwrap();
    let batch = within("a batch", stamped.next_batch()).await.unwrap();
    let m = batch.iter().next().unwrap();
    assert_eq!(m.sender().unwrap().name, "burster");
}

#[tokio::test]
async fn a_sender_survives_a_reconnect_of_the_subscriber() {
    let mut bus = TestBus::start();
    let watcher = bus.client("watcher").await;
    let mut stamped = watcher.subscribe_with_sender("again").await.unwrap();
    bus.stop();
    bus.restart();
    // The subscription is re-sent as it was made: with senders.
    let publisher = bus.client("publisher").await;
    within("resubscribed", async {
        loop {
            publisher.publish("again", "x").await.unwrap();
            if let Ok(Some(m)) = tokio::time::timeout(Duration::from_millis(100), stamped.next()).await {
                break m;
            }
        }
    })
    .await
    .sender()
    .expect("still stamped after the reconnect");
}
