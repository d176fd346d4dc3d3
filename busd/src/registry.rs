//! Live connections: what `$BUS.api.list` reports and what routes point at.

use std::{
    collections::{BTreeMap, HashMap, VecDeque},
    sync::{
        atomic::{AtomicU64, Ordering::Relaxed},
        Arc, Mutex, MutexGuard,
    },
    time::{SystemTime, UNIX_EPOCH},
};

use libbus::proto::api::{CloseReason, ClosedConn, ConnInfo, Peer, SubInfo};

use crate::outbox::Outbox;

/// Milliseconds since the Unix epoch.
pub fn unix_ms(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}

pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Counters of one connection; each is written by one task only.
#[derive(Debug, Default)]
pub struct Stats {
    /// Messages published (reader task).
    pub msgs_in: AtomicU64,
    /// Payload bytes published (reader task).
    pub bytes_in: AtomicU64,
    /// Messages handed to the socket (writer task; counted as each batch is written).
    pub msgs_out: AtomicU64,
    /// Payload bytes written to the socket (writer task).
    pub bytes_out: AtomicU64,
    /// Last application frame received (publish, subscribe, unsubscribe),
    /// Unix ms (reader task, coarse clock).
    pub last_activity_ms: AtomicU64,
    /// Last frame of any kind received, pongs included: liveness for the
    /// keep-alive (reader task, coarse clock).
    pub last_read_ms: AtomicU64,
    /// The round trip of the daemon's last answered ping, in microseconds
    /// (0: none answered yet).
    pub rtt_us: AtomicU64,
    /// When the oldest unanswered ping was sent, in microseconds of the
    /// daemon's uptime (0: none outstanding).
    pub ping_sent_us: AtomicU64,
}

impl Stats {
    /// A ping is sent at `now_us` (of uptime); the oldest outstanding one
    /// is what the next pong answers.
    pub fn ping_sent(&self, now_us: u64) {
        let _ = self
            .ping_sent_us
            .compare_exchange(0, now_us.max(1), Relaxed, Relaxed);
    }

    /// A pong came at `now_us`: the round trip of the ping it answers.
    pub fn pong(&self, now_us: u64) {
        let sent = self.ping_sent_us.swap(0, Relaxed);
        if sent != 0 {
            self.rtt_us.store(now_us.saturating_sub(sent).max(1), Relaxed);
        }
    }

    /// True while a ping waits for its pong.
    pub fn ping_outstanding(&self) -> bool {
        self.ping_sent_us.load(Relaxed) != 0
    }
}

/// One connection after its handshake. Routes hold an `Arc` to it; it is
/// removed from the registry and the router when the connection ends.
#[derive(Debug)]
pub struct Conn {
    /// Daemon-unique id.
    pub id: u64,
    /// Its identity as stamped on what it publishes (an encoded
    /// `proto::Sender`: node, id, name, and the kernel's pid, uid, gid).
    pub sender: Box<[u8]>,
    /// Client name from `Hello`.
    pub name: String,
    /// `unix` for now.
    pub transport: &'static str,
    /// Who is connected.
    pub peer: Peer,
    /// When the handshake completed.
    pub connected_at: SystemTime,
    /// Outbound queue, drained by the connection's writer.
    pub outbox: Outbox,
    /// Counters.
    pub stats: Stats,
    /// Subscriptions by sid (for listing and cleanup).
    pub subs: Mutex<BTreeMap<u64, SubInfo>>,
    /// Set by an administrator's kick; the reader closes the connection.
    pub kick: Kick,
    /// Protocol version from `Hello`.
    pub version: u16,
    /// Requests delivered here and not yet answered. Boxed: kept out of
    /// the way of the fields every message touches.
    pub owed: Box<crate::inflight::Owed<Conn>>,
    /// Every group of a local peer, the primary one first (from the
    /// kernel); empty for a network peer.
    pub groups: Box<[u32]>,
    /// The `[[users]]` user a network peer authenticated as.
    pub user: Option<Box<str>>,
    /// What it may do; replaced when the policy is reloaded.
    pub rights: arc_swap::ArcSwap<crate::acl::Rights>,
    /// Subjects it was allowed to publish to (its reader's; checked only
    /// when a subject misses the route cache).
    pub allowed: Mutex<crate::acl::Allowed>,
    /// Its `Bus-Sender` header value for the NATS upstream, made once.
    pub upstream_sender: std::sync::OnceLock<String>,
    /// Descriptors it sent, waiting for the `PubFds` frames that carry
    /// them (a Unix connection).
    pub received_fds: Option<libbus::transport::ReceivedFds>,
}

impl Conn {
    /// It can be sent messages with file descriptors: a Unix connection of
    /// protocol 6 or later.
    pub fn takes_fds(&self) -> bool {
        self.transport == "unix" && self.version >= libbus::proto::FDS_VERSION
    }
}

impl Conn {
    /// Who it is, as this daemon reports it to others over a bridge.
    pub fn origin(&self) -> libbus::proto::link::Origin {
        libbus::proto::link::Origin {
            conn_id: self.id,
            uid: match self.peer {
                Peer::Unix { uid, .. } => Some(uid),
                Peer::Net { .. } => None,
            },
        }
    }
}

/// A request to close a connection, and why.
#[derive(Debug, Default)]
pub struct Kick {
    why: Mutex<Option<Kicked>>,
    notify: tokio::sync::Notify,
}

/// Why a connection is to close.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kicked {
    /// An administrator asked, from connection `by`.
    Admin {
        /// The connection that asked.
        by: u64,
    },
    /// A lossless subscription of it held connection `publisher` back
    /// longer than `max_stall` (`stall`).
    Stalled {
        /// The publisher held back.
        publisher: u64,
        /// `max_stall`.
        stall: std::time::Duration,
    },
}

impl Kick {
    /// Asks the connection's reader to close it (from connection `by`).
    pub fn request(&self, by: u64) {
        self.ask(Kicked::Admin { by });
    }

    /// Asks the connection's reader to close it as a slow consumer: it
    /// held `publisher` back longer than `stall`.
    pub fn stalled(&self, publisher: u64, stall: std::time::Duration) {
        self.ask(Kicked::Stalled { publisher, stall });
    }

    fn ask(&self, why: Kicked) {
        lock(&self.why).get_or_insert(why);
        // notify_one keeps a permit if the reader is not waiting right now.
        self.notify.notify_one();
    }

    /// Completes once a kick was requested; yields why.
    pub async fn requested(&self) -> Kicked {
        self.notify.notified().await;
        lock(&self.why).unwrap_or(Kicked::Admin { by: 0 })
    }
}

impl Conn {
    /// A snapshot for the admin API and events.
    pub fn info(&self) -> ConnInfo {
        ConnInfo {
            id: self.id,
            name: self.name.clone(),
            transport: self.transport.into(),
            peer: self.peer.clone(),
            connected_at_ms: unix_ms(self.connected_at),
            // The coarse clock may read a little before the exact connect time.
            last_activity_ms: self
                .stats
                .last_activity_ms
                .load(Relaxed)
                .max(unix_ms(self.connected_at)),
            subs: lock(&self.subs).values().cloned().collect(),
            msgs_in: self.stats.msgs_in.load(Relaxed),
            bytes_in: self.stats.bytes_in.load(Relaxed),
            msgs_out: self.stats.msgs_out.load(Relaxed),
            bytes_out: self.stats.bytes_out.load(Relaxed),
            pending_bytes: self.outbox.pending_bytes() as u64,
            dropped: self.outbox.dropped(),
        }
    }
}

/// Totals of connections that have ended, so daemon totals survive them.
#[derive(Debug, Default)]
pub struct Totals {
    /// Messages published.
    pub msgs_in: AtomicU64,
    /// Messages delivered.
    pub msgs_out: AtomicU64,
    /// Payload bytes published.
    pub bytes_in: AtomicU64,
    /// Payload bytes delivered.
    pub bytes_out: AtomicU64,
    /// Messages dropped.
    pub dropped: AtomicU64,
}

/// A short name for why a connection ended, without its details (a metric
/// label): `end`, `error`, `timeout`, `slow_consumer`, `shutdown`, `kicked`.
pub fn reason_label(reason: &CloseReason) -> &'static str {
    match reason {
        CloseReason::End => "end",
        CloseReason::Error(_) => "error",
        CloseReason::Timeout => "timeout",
        CloseReason::SlowConsumer => "slow_consumer",
        CloseReason::Shutdown => "shutdown",
        CloseReason::Kicked { .. } => "kicked",
    }
}

/// All live connections.
#[derive(Debug, Default)]
pub struct Registry {
    conns: Mutex<HashMap<u64, Arc<Conn>>>,
    next_id: AtomicU64,
    /// Connections accepted since start.
    pub accepted: AtomicU64,
    /// Connections that completed their handshake, by transport.
    opened: Mutex<BTreeMap<&'static str, u64>>,
    /// Connections that ended, by [`reason_label`].
    ended_by: Mutex<BTreeMap<&'static str, u64>>,
    /// Totals of ended connections.
    pub ended: Totals,
    /// The last `max_closed` connections to close, oldest first.
    closed: Mutex<VecDeque<ClosedConn>>,
}

impl Registry {
    /// A fresh connection id (ids start at 1).
    pub fn next_id(&self) -> u64 {
        self.next_id.fetch_add(1, Relaxed) + 1
    }

    /// Adds a connection that completed its handshake.
    pub fn insert(&self, conn: Arc<Conn>) {
        self.accepted.fetch_add(1, Relaxed);
        *lock(&self.opened).entry(conn.transport).or_default() += 1;
        lock(&self.conns).insert(conn.id, conn);
    }

    /// Records `conn`, which closed for `reason`, in the history of the
    /// last `max` closed connections.
    pub fn record_closed(&self, conn: &Conn, reason: CloseReason, max: usize) {
        *lock(&self.ended_by).entry(reason_label(&reason)).or_default() += 1;
        if max == 0 {
            return;
        }
        let record = ClosedConn {
            conn: conn.info(),
            closed_at_ms: unix_ms(SystemTime::now()),
            reason,
        };
        let mut closed = lock(&self.closed);
        while closed.len() >= max {
            closed.pop_front();
        }
        closed.push_back(record);
    }

    /// Connections opened since start, by transport (`unix`, `tcp`, `tls`).
    pub fn opened(&self) -> Vec<(&'static str, u64)> {
        lock(&self.opened).iter().map(|(k, v)| (*k, *v)).collect()
    }

    /// Connections closed since start, by [`reason_label`].
    pub fn ended_by(&self) -> Vec<(&'static str, u64)> {
        lock(&self.ended_by).iter().map(|(k, v)| (*k, *v)).collect()
    }

    /// The closed connections remembered, oldest first.
    pub fn closed(&self) -> Vec<ClosedConn> {
        lock(&self.closed).iter().cloned().collect()
    }

    /// Removes a connection and folds its counters into the totals.
    pub fn remove(&self, conn: &Conn) {
        lock(&self.conns).remove(&conn.id);
        let t = &self.ended;
        t.msgs_in.fetch_add(conn.stats.msgs_in.load(Relaxed), Relaxed);
        t.msgs_out.fetch_add(conn.stats.msgs_out.load(Relaxed), Relaxed);
        t.bytes_in.fetch_add(conn.stats.bytes_in.load(Relaxed), Relaxed);
        t.bytes_out.fetch_add(conn.stats.bytes_out.load(Relaxed), Relaxed);
        t.dropped.fetch_add(conn.outbox.dropped(), Relaxed);
    }

    /// The live connection with this id.
    pub fn get(&self, id: u64) -> Option<Arc<Conn>> {
        lock(&self.conns).get(&id).cloned()
    }

    /// Live connections, by id.
    pub fn snapshot(&self) -> Vec<Arc<Conn>> {
        let mut v: Vec<_> = lock(&self.conns).values().cloned().collect();
        v.sort_by_key(|c| c.id);
        v
    }

    /// Number of live connections.
    pub fn len(&self) -> usize {
        lock(&self.conns).len()
    }

    /// True when nobody is connected.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}
