//! Shared by the tests that run the `busd` binary: bounded waits and
//! bus-level probes (from `bus-test-support`). Each test file uses a subset.
#![allow(dead_code, unused_imports)]

pub use bus_test_support::{info, until, until_answered, within, WAIT};

/// The daemon binary under test.
pub const BUSD: &str = env!("CARGO_BIN_EXE_busd");
