//! Helpers shared by the `bus-cli` end-to-end tests.

use std::{
    process::{Command, Output, Stdio},
    time::{Duration, Instant},
};

/// The `bus-cli` binary under test.
pub const CLI: &str = env!("CARGO_BIN_EXE_bus-cli");

/// Runs with a deadline so a hung command fails the test instead of hanging it.
pub fn run(mut cmd: Command) -> Output {
    let mut child = cmd.stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap();
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
