//! # busd
//!
//! The bus daemon. Local processes connect over a Unix socket (through
//! `libbus`); busd routes each published message to every matching
//! subscription and keeps per-connection state for inspection.
//!
//! ## Layout
//! - [`config`]: every setting and limit, with its default.
//! - [`listener`]: the Unix socket (0700 directory, 0600 socket, stale-file
//!   check) and kernel peer credentials.
//! - [`server`]: shared [`State`](state::State), the accept loop, shutdown, and
//!   [`Daemon`] for running one in-process.
//! - [`tcp`]: the optional TCP/TLS listener for remote clients, and the token.
//! - [`conn`]: one connection: handshake, reader loop, writer loop, keep-alive.
//! - [`router`]: the subject trie ([`router::sublist`], pure) and per-reader
//!   route caches.
//! - [`outbox`]: each connection's bounded queue; drops are counted and
//!   reported with `Lagged`.
//! - [`registry`]: live connections and their counters.
//! - [`policy`]: who may connect and administer, per-uid quotas, refusal counters.
//! - [`api`]: `$BUS.api.*` requests and `$BUS.event.*` events.
//!
//! ## The path of one message
//! `conn` reader (frames parsed in place: `libbus::codec::next_frame`, postcard
//! decode) → `router::Router::lookup` (cached trie match) →
//! `router::Deliveries` (the publishes of one read, in runs by subscribers) →
//! each subscriber's `outbox::Outbox` (a `Run` of the `Pub` frames as they
//! came, or a `Msg` per message; never waits) → that connection's writer
//! (the whole queue, vectored writes) → socket.

#![cfg_attr(not(test), deny(clippy::unwrap_used, clippy::expect_used))]

pub mod api;
pub mod cluster;
pub mod config;
pub mod conn;
pub mod control;
pub mod deliver;
pub mod listener;
pub mod outbox;
pub mod policy;
pub mod registry;
pub mod router;
pub mod server;
pub mod state;
pub mod tcp;

use std::path::PathBuf;

pub use config::Config;
pub use server::{Daemon, Server};

/// Why the daemon could not start.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// Another daemon answers on the socket.
    #[error("another bus daemon is already listening on {}", .0.display())]
    AlreadyRunning(PathBuf),
    /// The socket path exists and is not a socket.
    #[error("{} exists and is not a socket; refusing to replace it", .0.display())]
    NotASocket(PathBuf),
    /// Inconsistent settings.
    #[error("invalid configuration: {0}")]
    Config(String),
    /// An I/O step failed.
    #[error("{what}: {source}")]
    Io {
        /// What was being done.
        what: String,
        /// The error.
        #[source]
        source: std::io::Error,
    },
}
