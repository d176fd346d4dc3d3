//! The daemon's shared state: what every connection task reaches through
//! one `Arc<State>`, built by [`Server::bind`](crate::Server::bind).

use std::{
    sync::{
        atomic::{AtomicU64, Ordering::Relaxed},
        Arc,
    },
    time::{Instant, SystemTime},
};

use arc_swap::{ArcSwap, Guard};
use libbus::proto::api::ConfigSource;
use tokio_util::sync::CancellationToken;

use crate::{
    cluster::Cluster,
    config::Config,
    deliver::Router,
    loglimit::LogLimit,
    names::Names,
    policy::Policy,
    registry::{unix_ms, Registry},
};

/// A millisecond wall clock updated by a ticker, so hot paths can stamp
/// activity without a system call.
#[derive(Debug)]
pub struct Clock(AtomicU64);

impl Clock {
    /// A clock set to now.
    pub(crate) fn new() -> Self {
        Self(AtomicU64::new(unix_ms(SystemTime::now())))
    }

    /// Milliseconds since the Unix epoch, at most ~100 ms old.
    pub fn now_ms(&self) -> u64 {
        self.0.load(Relaxed)
    }
    pub(crate) fn tick(&self) {
        self.0.store(unix_ms(SystemTime::now()), Relaxed);
    }
}

/// Lines a second that each rate-limited log (failed accepts, refused
/// handshakes) lets through; the rest are counted and the count is logged
/// with the next line let through.
pub const LOG_LINES_PER_SECOND: u32 = 5;

/// Lines a second of connections opening and closing (info) that the log
/// lets through; a storm beyond is counted, and the count logged with the
/// next line let through.
pub const CONN_LOG_LINES_PER_SECOND: u32 = 50;

/// Everything connections share.
#[derive(Debug)]
pub struct State {
    /// Effective configuration; swapped whole by a reload
    /// ([`config`](Self::config) reads it).
    pub(crate) config: ArcSwap<Config>,
    /// Where the configuration came from, and when.
    pub(crate) config_source: std::sync::Mutex<ConfigSource>,
    /// Subscription index.
    pub router: Router,
    /// Live connections.
    pub registry: Registry,
    /// Cancelled when the daemon shuts down.
    pub shutdown: CancellationToken,
    /// Random id of this daemon instance.
    pub server_id: String,
    /// Start time, for uptime.
    pub started: Instant,
    /// Coarse wall clock.
    pub clock: Clock,
    /// Addresses listened on.
    pub listen: Vec<String>,
    /// Access policy, per-uid quotas and refusal counters.
    pub policy: Arc<Policy>,
    /// The token network peers must present (`None`: TCP off or insecure).
    pub token: Option<String>,
    /// The `[[users]]` and their tokens; replaced by a reload.
    pub users: ArcSwap<Vec<crate::tcp::UserCred>>,
    /// The token this daemon presents when it dials a bridge.
    pub bridge_token: Option<String>,
    /// Bridge links and cross-daemon routing.
    pub cluster: Cluster,
    /// The NATS upstream, if configured.
    pub upstream: crate::upstream::Shared,
    /// Well-known names and their owners.
    pub names: Names,
    /// Who holds each reply inbox.
    pub inboxes: crate::acl::Inboxes,
    /// Limits the warnings of failed accepts (say, at the fd limit).
    pub accept_log: LogLimit,
    /// Limits the lines of refused handshakes.
    pub refusal_log: LogLimit,
    /// Limits the lines of connections opening and closing.
    pub conn_log: LogLimit,
    /// File descriptors the daemon holds in messages, against
    /// [`fd_budget`](Self::fd_budget).
    pub fds_held: Arc<std::sync::atomic::AtomicUsize>,
    /// Most descriptors messages may hold at once: half the process's
    /// `RLIMIT_NOFILE`, so that connections and listeners always have the
    /// other half (a message beyond it is refused, never an accept).
    pub fd_budget: usize,
}

/// Half the soft `RLIMIT_NOFILE` (see [`State::fd_budget`]).
pub fn fd_budget() -> usize {
    use nix::sys::resource::{getrlimit, Resource};
    getrlimit(Resource::RLIMIT_NOFILE).map_or(512, |(soft, _)| (soft / 2).min(usize::MAX as u64) as usize)
}

impl State {
    /// The configuration now (a reload may replace it between two calls).
    /// Not to be held across an `.await`: read the values needed first.
    pub fn config(&self) -> Guard<Arc<Config>> {
        self.config.load()
    }

    /// Local subscriptions changed (the router's interest may have): the
    /// upstream, if any, catches up.
    pub fn interest_changed(&self) {
        if let Some(up) = &self.upstream {
            up.interest_changed();
        }
    }
}
