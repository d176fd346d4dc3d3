//! # busd
//!
//! The bus daemon. Local processes connect over a Unix socket (through
//! `libbus`); busd routes each published message to every matching
//! subscription and keeps per-connection state for inspection.
//!
//! ## Layout
//! - [`config`]: every setting and limit, with its default; [`state`]: the
//!   shared [`State`](state::State) every connection task reaches.
//! - [`server`]: binding, the accept loop, shutdown, and [`Daemon`] for
//!   running one in-process; [`systemd`]: inherited sockets and readiness; [`listener`]: the Unix socket and kernel peer
//!   credentials; [`tcp`]: the optional TCP/TLS listener and the token.
//! - [`conn`]: one connection: handshake, reader (one publish path), writer,
//!   keep-alive; [`control`]: every control frame, encoded in one place.
//! - [`router`]: pure routing (the subject trie, route caches, interest),
//!   generic over its subscriber; [`deliver`]: router results into outboxes.
//! - [`inflight`]: requests delivered and not yet answered, so a requester
//!   hears at once when every responder is gone.
//! - [`outbox`]: each connection's bounded queue; drops are counted and
//!   reported with `Lagged`.
//! - [`names`]: who owns each well-known name and who waits for it;
//!   [`service`]: `RequestName`, `ReleaseName` and calls to a name.
//! - [`registry`]: live connections and their counters; [`policy`]: who may
//!   connect and administer, per-uid quotas; [`acl`]: the access policy
//!   per subject and name (pure), and [`access`]: enforcing it on
//!   connections; [`api`]: `$BUS.api.*` and `$BUS.event.*`; [`cluster`]:
//!   bridges to other daemons; [`upstream`]: joining a NATS server or
//!   cluster (`conn.rs` `route` hands each publish that goes up to
//!   [`Upstream::export`](upstream::Upstream::export); upstream
//!   subscriptions deliver through
//!   [`Upstream::receive`](upstream::Upstream::receive)).
//! - [`metrics`]: Prometheus on `--metrics`; [`sys`]: busd's only `unsafe`
//!   (the allocator's collection, inherited sockets, a peer's groups).
//!
//! ## The path of one message
//! 1. `conn.rs` `read_loop` reads, `handle_frames` walks the whole frames in
//!    place, and `handle_frame` reads a publish: `router/mod.rs`
//!    [`Router::repeated`](router::Router::repeated) when it begins like the
//!    last one, else `libbus::wire::raw_pub`.
//! 2. `conn.rs` `publish` finds its routes:
//!    [`Router::cached`](router::Router::cached), or, after
//!    [`access::publish`] allows the subject,
//!    [`Router::lookup`](router::Router::lookup) → `router/sublist.rs`
//!    [`Sublist::matches`](router::sublist::Sublist::matches).
//! 3. `conn.rs` `route` → `deliver.rs`
//!    [`Deliveries::push`](deliver::Deliveries::push), then
//!    [`Deliveries::deliver`](deliver::Deliveries::deliver) queues the
//!    read's publishes in runs by subscriber. (A request only local
//!    responders take goes at once through
//!    [`Routes::deliver_request`](deliver::Routes::deliver_request), which
//!    records it in each responder's [`Owed`](inflight::Owed).)
//! 4. `outbox.rs` [`Outbox::push_many`](outbox::Outbox::push_many) appends
//!    to each subscriber's bounded queue (a `Run` of the `Pub` frames as they
//!    came, or a `Msg` per message), never waiting. (A lossless
//!    subscription's full queue takes it over the bound; `conn.rs`
//!    `hold_back` then reads no more from the publisher until it has room.)
//! 5. That connection's `conn.rs` `write_loop` takes the whole queue
//!    ([`Outbox::take`](outbox::Outbox::take)) and writes it, vectored.

#![cfg_attr(not(test), deny(clippy::unwrap_used, clippy::expect_used))]

pub mod access;
pub mod acl;
pub mod api;
pub mod cluster;
pub mod config;
pub mod conn;
pub mod control;
pub mod deliver;
pub mod inflight;
pub mod listener;
pub mod loglimit;
pub mod metrics;
pub mod names;
pub mod outbox;
pub mod policy;
pub mod registry;
pub mod router;
pub mod server;
pub mod service;
pub mod state;
pub mod sys;
pub mod systemd;
pub mod tcp;
pub mod upstream;

use std::path::PathBuf;

pub use config::Config;
pub use server::{Daemon, Reloader, Server};

/// Why the daemon could not start.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// Another daemon answers on the socket.
    #[error("another bus daemon is already listening on {}", .0.display())]
    AlreadyRunning(PathBuf),
    /// The socket's directory could let another user take the socket over.
    #[error("refusing the socket directory {}: {why}", dir.display())]
    UnsafeDirectory {
        /// The directory.
        dir: PathBuf,
        /// What is unsafe about it.
        why: String,
    },
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
