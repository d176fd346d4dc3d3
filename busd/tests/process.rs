//! The `busd` binary as a process: socket file handling and signals.

use std::{
    os::unix::fs::PermissionsExt,
    path::Path,
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

mod common;
use common::{BUSD, WAIT};

/// A busd child process, killed on drop.
struct Proc(Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn spawn(socket: &Path) -> Proc {
    spawn_with(socket, &[])
}

fn spawn_with(socket: &Path, args: &[&str]) -> Proc {
    let child = Command::new(BUSD)
        .arg("--socket")
        .arg(socket)
        .args(args)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn busd");
    Proc(child)
}

/// Waits until something accepts connections on `socket`.
fn wait_listening(socket: &Path) {
    let start = Instant::now();
    while std::os::unix::net::UnixStream::connect(socket).is_err() {
        assert!(
            start.elapsed() < WAIT,
            "busd did not start listening on {}",
            socket.display()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn wait_exit(p: &mut Proc) -> std::process::ExitStatus {
    let start = Instant::now();
    loop {
        if let Some(status) = p.0.try_wait().expect("try_wait") {
            return status;
        }
        assert!(start.elapsed() < WAIT, "busd did not exit");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Threads of `p` named like the daemon's runtime workers.
fn worker_threads(p: &Proc) -> usize {
    std::fs::read_dir(format!("/proc/{}/task", p.0.id()))
        .expect("/proc/PID/task")
        .filter_map(|task| std::fs::read_to_string(task.ok()?.path().join("comm")).ok())
        .filter(|name| name.trim_end() == "busd-worker")
        .count()
}

fn signal(p: &Proc, sig: nix::sys::signal::Signal) {
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(p.0.id() as i32), sig).expect("kill");
}

#[test]
fn socket_and_directory_permissions() {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("run/bus/busd.sock");
    let _d = spawn(&socket);
    wait_listening(&socket);
    let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(socket.parent().unwrap()), 0o700);
    assert_eq!(mode(&socket), 0o600);
}

#[test]
fn socket_mode_is_exact_whatever_the_umask() {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("busd.sock");
    // The test process's umask (typically 022) would turn 666 into 644.
    let child = Command::new(BUSD)
        .arg("--socket")
        .arg(&socket)
        .args(["--socket-mode", "666"])
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn busd");
    let _d = Proc(child);
    wait_listening(&socket);
    assert_eq!(
        std::fs::metadata(&socket).unwrap().permissions().mode() & 0o777,
        0o666
    );
}

#[test]
fn sigterm_removes_socket_and_exits_zero() {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("busd.sock");
    let mut d = spawn(&socket);
    wait_listening(&socket);
    signal(&d, nix::sys::signal::Signal::SIGTERM);
    assert!(wait_exit(&mut d).success());
    assert!(!socket.exists(), "socket file removed on shutdown");
}

#[test]
fn sigint_also_shuts_down_cleanly() {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("busd.sock");
    let mut d = spawn(&socket);
    wait_listening(&socket);
    signal(&d, nix::sys::signal::Signal::SIGINT);
    assert!(wait_exit(&mut d).success());
    assert!(!socket.exists());
}

#[test]
fn second_daemon_on_live_socket_refuses() {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("busd.sock");
    let _first = spawn(&socket);
    wait_listening(&socket);
    let out = Command::new(BUSD)
        .arg("--socket")
        .arg(&socket)
        .output()
        .expect("run second busd");
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("another bus daemon is already listening"),
        "{stderr}"
    );
    // The first daemon's socket is untouched.
    assert!(std::os::unix::net::UnixStream::connect(&socket).is_ok());
}

#[test]
fn stale_socket_is_replaced() {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("busd.sock");
    // A socket file with nothing listening, as left by a crashed daemon.
    drop(std::os::unix::net::UnixListener::bind(&socket).unwrap());
    assert!(socket.exists());
    let mut d = spawn(&socket);
    wait_listening(&socket);
    signal(&d, nix::sys::signal::Signal::SIGTERM);
    assert!(wait_exit(&mut d).success());
}

#[test]
fn kill_9_leaves_a_stale_socket_that_the_next_daemon_replaces() {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("busd.sock");
    let mut d = spawn(&socket);
    wait_listening(&socket);
    signal(&d, nix::sys::signal::Signal::SIGKILL);
    wait_exit(&mut d);
    assert!(socket.exists(), "SIGKILL leaves the file behind");
    let _d2 = spawn(&socket);
    wait_listening(&socket);
}

#[test]
fn regular_file_in_the_way_is_not_deleted() {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("busd.sock");
    std::fs::write(&socket, "precious").unwrap();
    let out = Command::new(BUSD).arg("--socket").arg(&socket).output().unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("not a socket"));
    assert_eq!(std::fs::read_to_string(&socket).unwrap(), "precious");
}

#[test]
fn workers_sets_the_number_of_runtime_threads() {
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    let half = (cpus / 2).max(1);
    for (args, want) in [
        (&["--workers", "3"][..], 3),
        (&["--workers", "1"][..], 1),
        (&["--workers", "0"][..], half),
        (&[][..], half),
    ] {
        let dir = tempfile::tempdir().unwrap();
        let socket = dir.path().join("busd.sock");
        let p = spawn_with(&socket, args);
        wait_listening(&socket);
        assert_eq!(worker_threads(&p), want, "busd {args:?} on {cpus} CPUs");
    }
}

#[test]
fn bad_flag_values_are_clear_errors() {
    let out = Command::new(BUSD).args(["--max-frame", "lots"]).output().unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("--max-frame"));
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new(BUSD)
        .arg("--socket")
        .arg(dir.path().join("s"))
        .args(["--max-pending", "1KiB"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("max_pending"));
    let out = Command::new(BUSD)
        .arg("--socket")
        .arg(dir.path().join("s"))
        .args(["--link-ping-interval", "0s"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("link_ping_interval"));
    let out = Command::new(BUSD)
        .arg("--socket")
        .arg(dir.path().join("s"))
        .args(["--bridge", "nonsense"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("must be tcp://host:port or tls://host:port"));
    let out = Command::new(BUSD)
        .arg("--socket")
        .arg(dir.path().join("s"))
        .args(["--bridge", "tls://127.0.0.1:1"])
        .env_remove("BUS_CA")
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("--bridge-ca"));
}
