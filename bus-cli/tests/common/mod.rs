//! Helpers shared by the `bus-cli` end-to-end tests (each test file uses a
//! subset).

#![allow(dead_code)]

use std::{
    process::{Child, Command, Output, Stdio},
    sync::RwLock,
    time::{Duration, Instant},
};

/// The `bus-cli` binary under test.
pub const CLI: &str = env!("CARGO_BIN_EXE_bus-cli");

/// Children are forked under its read side, and an executable is written
/// under its write side. A child forked while another thread holds a file
/// open for writing inherits that descriptor until it execs, and executing
/// the file meanwhile fails with "Text file busy" (ETXTBSY).
static FORK: RwLock<()> = RwLock::new(());

/// Spawns `cmd` (see [`FORK`]).
pub fn spawn(cmd: &mut Command) -> std::io::Result<Child> {
    let _forking = FORK.read().unwrap_or_else(|e| e.into_inner());
    cmd.spawn()
}

/// Copies the executable `from` to `to`, mode 0755, with no child forked
/// meanwhile (see [`FORK`]).
pub fn copy_executable(from: &str, to: &std::path::Path) {
    use std::os::unix::fs::PermissionsExt;
    let _writing = FORK.write().unwrap_or_else(|e| e.into_inner());
    std::fs::copy(from, to).unwrap();
    std::fs::set_permissions(to, std::fs::Permissions::from_mode(0o755)).unwrap();
}

/// Runs with a deadline so a hung command fails the test instead of hanging it.
pub fn run(mut cmd: Command) -> Output {
    let mut child = spawn(cmd.stdout(Stdio::piped()).stderr(Stdio::piped())).unwrap();
    let start = Instant::now();
    while child.try_wait().unwrap().is_none() {
        if start.elapsed() > Duration::from_secs(20) {
            child.kill().unwrap();
            panic!("bus-cli did not finish: {cmd:?}");
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    child.wait_with_output().unwrap()
}

pub fn stdout(o: &Output) -> String {
    assert!(
        o.status.success(),
        "failed: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8(o.stdout.clone()).unwrap()
}

/// A child process killed and reaped when dropped, so a failing test
/// leaves none behind.
pub struct KillOnDrop(pub Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}
