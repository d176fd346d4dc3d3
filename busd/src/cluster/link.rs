//! One bridge link to another daemon: its queue (which holds messages while
//! the link is down, up to `bridge_buffer`), its state and counters. The
//! tasks that run it are in [`super::session`].

use std::{
    collections::VecDeque,
    sync::{
        atomic::{AtomicBool, AtomicU16, AtomicU64, Ordering::Relaxed},
        Arc, Mutex,
    },
    time::Instant,
};

use bytes::Bytes;
use libbus::{proto::api::BridgeInfo, Address};

use crate::registry::lock;

/// Whether a link is up.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Status {
    Connecting,
    Up,
    Down,
}

/// A message waiting in a link's queue.
#[derive(Debug)]
pub(super) struct Held {
    /// The encoded `LinkFrame::Msg` or `Sent` (its routing fields are read back from
    /// it in the rare case it has to be checked again).
    pub(super) frame: Bytes,
    /// The sync epoch it was routed under (`None`: the link was down, or up
    /// but the other side's current state had not arrived yet).
    pub(super) epoch: Option<u64>,
    /// Its place among everything queued on the link, parked or not.
    pub(super) seq: u64,
}

/// A message parked on a link for nodes that were reached through it and
/// no longer are ([`Ghost`](super::routing::Ghost)s): sent once they are
/// reachable through it again, dropped (and counted) at `until`. Parked
/// messages never hold up the ones queued behind them for nodes that are
/// reachable.
#[derive(Debug)]
pub(super) struct Parked {
    pub(super) frame: Bytes,
    pub(super) seq: u64,
    /// The nodes it waits for.
    pub(super) awaiting: Vec<String>,
    pub(super) until: Instant,
}

#[derive(Debug, Default)]
pub(super) struct Queue {
    pub(super) items: VecDeque<Held>,
    pub(super) bytes: usize,
    /// Set while the link is up and the other side's own state has arrived
    /// on this connection, so routing reflects it as it is now (not as it
    /// was before a restart); a new number for every such connection.
    pub(super) synced: Option<u64>,
    /// Last epoch handed out.
    pub(super) epochs: u64,
    /// Messages waiting for nodes to return, oldest first.
    pub(super) parked: VecDeque<Parked>,
    /// Last sequence number handed out.
    pub(super) seq: u64,
    /// The other side is shutting down (it sent `Closing`): send it no
    /// more messages on this connection.
    pub(super) draining: bool,
    /// Losses to tell the other side of (`LinkFrame::Lost`), each once
    /// what was queued before it has gone.
    pub(super) lost: VecDeque<LostNote>,
}

/// Messages lost on their way through a link, to tell the far side of.
#[derive(Debug)]
pub(super) struct LostNote {
    /// Sent once every message queued before the loss has gone: the last
    /// sequence number handed out then.
    pub(super) after: u64,
    pub(super) origin: String,
    pub(super) subject: String,
    pub(super) count: u64,
}

/// Most notes of loss a link keeps; beyond, losses are only counted.
const MAX_LOST_NOTES: usize = 1024;

impl Queue {
    /// `count` messages from `origin` on `subject` were lost here: the far
    /// side hears of it after what was queued before them.
    fn note_lost(&mut self, origin: &str, subject: &str, count: u64) {
        let after = self.seq;
        if let Some(last) = self.lost.back_mut() {
            if last.after == after && last.origin == origin && last.subject == subject {
                last.count += count;
                return;
            }
        }
        if self.lost.len() < MAX_LOST_NOTES {
            self.lost.push_back(LostNote {
                after,
                origin: origin.into(),
                subject: subject.into(),
                count,
            });
        }
    }
}

/// One bridge link.
#[derive(Debug)]
pub struct Link {
    /// The address this side dials (`--bridge`), or `None` if accepted.
    pub dial: Option<Address>,
    pub(super) node: Mutex<String>,
    pub(super) peer: Mutex<String>,
    pub(super) status: Mutex<Status>,
    pub(super) down_since: Mutex<Option<Instant>>,
    pub(super) queue: Mutex<Queue>,
    pub(super) control: Mutex<Vec<Bytes>>,
    pub(super) ready: tokio::sync::Notify,
    max_bytes: usize,
    pub(super) msgs_in: AtomicU64,
    pub(super) msgs_out: AtomicU64,
    pub(super) dropped: AtomicU64,
    /// The other side's protocol version on this connection.
    pub(super) version: AtomicU16,
    /// The other side answered our `Closing`.
    pub(super) closed: AtomicBool,
    pub(super) closed_notify: tokio::sync::Notify,
}

impl Link {
    pub(super) fn new(dial: Option<Address>, node: String, peer: String, max_bytes: usize) -> Arc<Self> {
        Arc::new(Self {
            status: Mutex::new(if dial.is_some() {
                Status::Connecting
            } else {
                Status::Down
            }),
            dial,
            node: Mutex::new(node),
            peer: Mutex::new(peer),
            down_since: Mutex::new(None),
            queue: Mutex::new(Queue::default()),
            control: Mutex::new(Vec::new()),
            ready: tokio::sync::Notify::new(),
            max_bytes,
            msgs_in: AtomicU64::new(0),
            msgs_out: AtomicU64::new(0),
            dropped: AtomicU64::new(0),
            version: AtomicU16::new(0),
            closed: AtomicBool::new(false),
            closed_notify: tokio::sync::Notify::new(),
        })
    }

    /// The remote node id ("" until first connected).
    pub fn node(&self) -> String {
        lock(&self.node).clone()
    }

    /// Whether routing should count this link: up, or configured (we keep
    /// dialing it), or accepted and down for less than `bridge_hold`
    /// (messages for it are held meanwhile).
    pub fn in_topology(&self) -> bool {
        !lock(&self.node).is_empty()
    }

    pub(super) fn is_up(&self) -> bool {
        *lock(&self.status) == Status::Up
    }

    /// Queues a state or keep-alive frame, sent before any message; dropped
    /// while the link is down (a full sync follows the reconnect).
    pub fn send_control(&self, frame: Bytes) {
        if self.is_up() {
            lock(&self.control).push(frame);
            self.ready.notify_one();
        }
    }

    /// Queues a message (`frame`, published on `origin` to `subject`);
    /// held while the link is down, dropped (counted, and told to the far
    /// side) beyond `bridge_buffer`.
    pub fn send_msg(&self, frame: Bytes, origin: &str, subject: &str) {
        self.enqueue(frame, origin, subject, |q, frame, seq| {
            let epoch = q.synced;
            q.items.push_back(Held { frame, epoch, seq });
        });
    }

    /// Tells the far side, after what is queued now, that `count` messages
    /// from `origin` on `subject` were lost on their way to it.
    pub fn send_lost(&self, origin: &str, subject: &str, count: u64) {
        lock(&self.queue).note_lost(origin, subject, count);
        self.ready.notify_one();
    }

    /// Parks a message for `awaiting`, nodes reached through this link
    /// until lately, until they return or `until`; within `bridge_buffer`.
    pub fn park(&self, frame: Bytes, origin: &str, subject: &str, awaiting: Vec<String>, until: Instant) {
        self.enqueue(frame, origin, subject, |q, frame, seq| {
            q.parked.push_back(Parked {
                frame,
                seq,
                awaiting,
                until,
            });
        });
    }

    /// Counts `frame` against `bridge_buffer` (beyond it, the message is
    /// dropped, counted, and noted for the far side), numbers it, and has
    /// `put` place it.
    fn enqueue(&self, frame: Bytes, origin: &str, subject: &str, put: impl FnOnce(&mut Queue, Bytes, u64)) {
        let mut q = lock(&self.queue);
        if q.bytes + frame.len() > self.max_bytes {
            q.note_lost(origin, subject, 1);
            drop(q);
            self.count_dropped(1);
            return;
        }
        q.bytes += frame.len();
        q.seq += 1;
        let seq = q.seq;
        put(&mut q, frame, seq);
        drop(q);
        self.ready.notify_one();
    }

    /// Counts messages this link failed to carry to a node that wanted them.
    pub fn count_dropped(&self, n: u64) {
        self.dropped.fetch_add(n, Relaxed);
    }

    /// True if the other side reads headers and senders (`LinkFrame::Sent`).
    pub(super) fn carries_headers(&self) -> bool {
        self.version.load(Relaxed) >= libbus::proto::HEADERS_VERSION
    }

    /// True if the other side understands `Closing`.
    pub(super) fn speaks_closing(&self) -> bool {
        self.version.load(Relaxed) >= libbus::proto::GONE_VERSION
    }

    /// A snapshot for `bus-cli list` / `info` and events.
    pub fn info(&self) -> BridgeInfo {
        let q = lock(&self.queue);
        BridgeInfo {
            node: self.node(),
            address: match &self.dial {
                Some(a) => a.to_string(),
                None => lock(&self.peer).clone(),
            },
            state: match *lock(&self.status) {
                Status::Up => "up",
                Status::Connecting => "connecting",
                Status::Down => "down",
            }
            .into(),
            outbound: self.dial.is_some(),
            msgs_in: self.msgs_in.load(Relaxed),
            msgs_out: self.msgs_out.load(Relaxed),
            buffered_bytes: q.bytes as u64,
            dropped: self.dropped.load(Relaxed),
        }
    }

    pub(super) fn set_status(&self, status: Status) {
        {
            let mut q = lock(&self.queue);
            q.synced = None;
            q.draining = false;
        }
        self.closed.store(false, Relaxed);
        *lock(&self.status) = status;
        *lock(&self.down_since) = (status != Status::Up).then(Instant::now);
        if status != Status::Up {
            lock(&self.control).clear();
        }
    }

    /// Drops everything held (the link is gone for good), counting it.
    pub(super) fn drop_held(&self) {
        let mut q = lock(&self.queue);
        self.count_dropped((q.items.len() + q.parked.len()) as u64);
        q.items.clear();
        q.parked.clear();
        q.lost.clear();
        q.bytes = 0;
    }
}
