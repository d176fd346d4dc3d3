//! Subscribers killed with SIGKILL while messages with file descriptors are
//! on their way leave nothing open in the daemon. The daemon runs in this
//! process, so `/proc/self/fd` counts its descriptors; this file holds one
//! test, so nothing else runs beside it to move the count.

use std::{
    os::fd::OwnedFd,
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use busd::{Config, Daemon};

mod common;

const WAIT: Duration = Duration::from_secs(20);

fn open_fds() -> Vec<std::path::PathBuf> {
    std::fs::read_dir("/proc/self/fd")
        .unwrap()
        .filter_map(|e| std::fs::read_link(e.ok()?.path()).ok())
        .collect()
}

/// A daemon in a temp dir.
fn daemon() -> (Daemon, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let mut config = Config::with_socket(dir.path().join("busd.sock"));
    config.max_fds_pending = 64;
    (Daemon::start(config).unwrap(), dir)
}

#[test]
fn killed_subscribers_leak_no_descriptors() {
    // The first daemon and runtime of a process open what lives as long as
    // it (tokio's signal pipe): counted before, not as a leak.
    drop(daemon());
    drop(tokio::runtime::Runtime::new().unwrap());
    let before = open_fds().len();
    {
        let (daemon, _dir) = daemon();
        let address = daemon.address().clone();
        let rt = tokio::runtime::Runtime::new().unwrap();
        rt.block_on(async {
            let probe = libbus::Bus::connect(&address).await.unwrap();
            // Four subscriber processes whose output nobody reads: once
            // their pipes fill they stop reading, and their queues fill
            // and drop. Three are killed and one kicked while messages
            // flow.
            let mut subs: Vec<common::KillOnDrop> = (0..4)
                .map(|_| {
                    let mut c = Command::new(common::CLI);
                    c.env("BUS_ADDRESS", address.to_string())
                        .args(["sub", "leak.>"])
                        .stdout(Stdio::piped())
                        .stderr(Stdio::null());
                    common::KillOnDrop(common::spawn(&mut c).unwrap())
                })
                .collect();
            let start = Instant::now();
            while bus_test_support::info(&probe).await.subscriptions < 5 {
                assert!(start.elapsed() < WAIT, "subscribers did not subscribe");
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            let publisher = libbus::Bus::connect(&address).await.unwrap();
            let fd: OwnedFd = tempfile::tempfile().unwrap().into();
            for i in 0..100_000u32 {
                publisher
                    .publish_with_fds("leak.x", "x", vec![fd.try_clone().unwrap()])
                    .await
                    .unwrap();
                if i % 25_000 == 10_000 && subs.len() > 1 {
                    // Mid-delivery: SIGKILL, no goodbye.
                    let mut child = subs.remove(0);
                    child.0.kill().unwrap();
                    child.0.wait().unwrap();
                }
                if i == 90_000 {
                    let pid = subs[0].0.id();
                    let conns: Vec<libbus::proto::api::ConnInfo> =
                        probe.request(libbus::proto::api::LIST, []).await.unwrap().decode().unwrap();
                    let id = conns
                        .iter()
                        .find(|c| matches!(c.peer, libbus::proto::api::Peer::Unix { pid: p, .. } if p == pid as i32))
                        .expect("the last subscriber listed")
                        .id;
                    let kicked: libbus::proto::api::AdminReply =
                        probe.request_value(libbus::proto::api::KICK, &id).await.unwrap();
                    assert!(kicked.is_ok(), "{kicked:?}");
                }
            }
            publisher.flush().await.unwrap();
            publisher.close().await.unwrap();
            probe.close().await.unwrap();
        });
    }
    let start = Instant::now();
    while open_fds().len() > before {
        if start.elapsed() > WAIT {
            panic!(
                "{} descriptors left open: {:?}",
                open_fds().len() - before,
                open_fds()
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}
