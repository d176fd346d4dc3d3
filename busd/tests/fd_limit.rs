//! busd under a low `ulimit -n`: messages may hold at most half its
//! descriptors, so when they pile up (a subscriber that does not read),
//! further messages with descriptors are refused with a clear error, and
//! new connections are still accepted.

use std::{
    os::fd::OwnedFd,
    process::{Command, Stdio},
};

use libbus::{proto::ErrorCode, Bus, ConnectOptions, Event};

mod common;
use common::{info, wait_listening, within, Proc, BUSD};

/// `RLIMIT_NOFILE` busd runs with: messages may hold 64.
const NOFILE: u32 = 128;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_descriptor_budget_refuses_messages_not_connections() {
    if Command::new("prlimit").arg("--version").output().is_err() {
        println!("SKIPPED: prlimit (util-linux) is not installed");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("busd.sock");
    let _busd = Proc(
        Command::new("prlimit")
            .arg(format!("--nofile={NOFILE}:{NOFILE}"))
            .arg(BUSD)
            .arg("--socket")
            .arg(&socket)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    wait_listening(&socket);
    let address = libbus::Address::Unix(socket.clone());
    let connect = |name: &str| Bus::connect_with(&address, ConnectOptions::default().name(name));
    // Reads one delivery, then nothing: what is sent to it stays queued.
    let stalled = within(
        "connect",
        Bus::connect_with(
            &address,
            ConnectOptions::default().name("stalled").subscription_capacity(1),
        ),
    )
    .await
    .unwrap();
    let _sub = stalled.subscribe("files.>").await.unwrap();
    let publisher = within("connect", connect("publisher")).await.unwrap();
    let mut events = publisher.events();
    let fd: OwnedFd = tempfile::tempfile().unwrap().into();
    for _ in 0..200 {
        publisher
            .publish_with_fds("files.new", "x", vec![fd.try_clone().unwrap()])
            .await
            .unwrap();
    }
    publisher.flush().await.unwrap();
    let message = within("a refusal", async {
        loop {
            if let Some(Event::Error { code, message }) = events.next().await {
                assert_eq!(code, ErrorCode::FdsNotPassed);
                return message;
            }
        }
    })
    .await;
    assert!(message.contains("its limit is 64"), "{message}");
    let refused = info(&publisher).await.refused;
    assert!(
        refused.iter().any(|(n, c)| n == "fd_budget" && *c > 0),
        "{refused:?}"
    );
    // New connections still come in, and work.
    let mut more = Vec::new();
    for i in 0..20 {
        let c = within("a new connection", connect(&format!("late-{i}")))
            .await
            .unwrap();
        c.flush().await.unwrap();
        more.push(c);
    }
    assert!(info(&more[19]).await.connections >= 22);
}
