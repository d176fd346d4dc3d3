//! Runnable examples for libbus; see `chat.rs`, `echo_service.rs` and
//! `telemetry.rs` in this directory. Each starts with the command that runs it.
