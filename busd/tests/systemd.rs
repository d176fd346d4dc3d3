//! busd under systemd: socket activation (`systemd-socket-activate` passes
//! the listening sockets, as a `.socket` unit does) and readiness
//! notification (`READY=1` on a `NOTIFY_SOCKET` datagram socket the test
//! binds). Needs `systemd-socket-activate` (Debian package `systemd`);
//! without it the test says so and does nothing.

use std::{
    os::unix::net::UnixDatagram,
    path::Path,
    process::{Command, Stdio},
    time::{Duration, Instant},
};

mod common;
use common::{Proc, BUSD, WAIT};

const ACTIVATE: &str = "systemd-socket-activate";

fn available() -> bool {
    Command::new(ACTIVATE)
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// Everything `notify` receives within `WAIT` until `until` is among it.
fn notifications_until(notify: &UnixDatagram, until: &str) -> Vec<String> {
    notify.set_read_timeout(Some(Duration::from_millis(200))).unwrap();
    let start = Instant::now();
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    while !got.iter().any(|m: &String| m.lines().any(|l| l == until)) {
        assert!(start.elapsed() < WAIT, "no {until} from busd; got {got:?}");
        if let Ok(n) = notify.recv(&mut buf) {
            got.push(String::from_utf8_lossy(&buf[..n]).into_owned());
        }
    }
    got
}

fn start(dir: &Path, listen: &[&str], busd_args: &[&str]) -> (Proc, UnixDatagram) {
    let notify_path = dir.join("notify.sock");
    let notify = UnixDatagram::bind(&notify_path).unwrap();
    let mut cmd = Command::new(ACTIVATE);
    for l in listen {
        cmd.args(["-l", l]);
    }
    cmd.arg("-E")
        .arg(format!("NOTIFY_SOCKET={}", notify_path.display()))
        .args(["-E", "RUST_LOG=info"])
        .arg(BUSD)
        .args(busd_args)
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    (Proc(cmd.spawn().expect("spawn systemd-socket-activate")), notify)
}

#[test]
fn socket_activation_serves_the_inherited_sockets_and_notifies_readiness() {
    if !available() {
        println!("SKIPPED: {ACTIVATE} is not installed (Debian package systemd); socket activation untested");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("busd.sock");
    let socket_arg = socket.to_str().unwrap();
    // The configured socket path is another one: busd serves the socket it
    // was given. (systemd-socket-activate takes no port 0, so the TCP
    // socket's inheritance is tested in-process, in tests/inherited.rs.)
    let (mut busd, notify) = start(
        dir.path(),
        &[socket_arg],
        &["--socket", dir.path().join("unused.sock").to_str().unwrap()],
    );
    // systemd-socket-activate binds, then listens, and starts busd on the
    // first connection, as systemd does: connect until it listens.
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let address = libbus::Address::Unix(socket.clone());
    let info = rt.block_on(async {
        let start = Instant::now();
        let bus = loop {
            match libbus::Bus::connect(&address).await {
                Ok(bus) => break bus,
                Err(e) => {
                    assert!(start.elapsed() < WAIT, "not served on the inherited socket: {e}");
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            }
        };
        bus.request_value::<_, libbus::proto::api::ServerInfo>(libbus::proto::api::INFO, &())
            .await
            .unwrap()
    });
    let got = notifications_until(&notify, "READY=1");
    assert!(got.iter().any(|m| m.contains("STATUS=serving")), "{got:?}");
    assert!(
        !dir.path().join("unused.sock").exists(),
        "busd bound nothing of its own"
    );
    assert_eq!(info.listen, [format!("unix:{}", socket.display())]);

    // SIGTERM: STOPPING=1, exit 0, and the socket file stays (systemd's).
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(busd.0.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    notifications_until(&notify, "STOPPING=1");
    let start = Instant::now();
    let status = loop {
        if let Some(s) = busd.0.try_wait().unwrap() {
            break s;
        }
        assert!(start.elapsed() < WAIT, "busd did not exit");
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(status.success(), "{status}");
    assert!(socket.exists(), "an inherited socket's file is left to systemd");
}
