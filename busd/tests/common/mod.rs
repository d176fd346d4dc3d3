//! Shared by the tests that run the `busd` binary: bounded waits and
//! bus-level probes (from `bus-test-support`). Each test file uses a subset.
#![allow(dead_code, unused_imports)]

pub use bus_test_support::{info, until, until_answered, within, WAIT};

/// The daemon binary under test.
pub const BUSD: &str = env!("CARGO_BIN_EXE_busd");

/// A child process (busd, or a tool a test runs beside it), killed and
/// reaped on drop.
pub struct Proc(pub std::process::Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Waits (bounded by [`WAIT`]) until something accepts connections on
/// `socket`.
pub fn wait_listening(socket: &std::path::Path) {
    let start = std::time::Instant::now();
    while std::os::unix::net::UnixStream::connect(socket).is_err() {
        assert!(
            start.elapsed() < WAIT,
            "busd did not start listening on {}",
            socket.display()
        );
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
}
