//! One bridge link to another daemon: its queue (which holds messages while
//! the link is down, up to `bridge_buffer`), its state and counters. The
//! tasks that run it are in [`super::session`].

use std::{
    collections::VecDeque,
    sync::{
        atomic::{AtomicU64, Ordering::Relaxed},
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
    /// The encoded `LinkFrame::Msg` (its routing fields are read back from
    /// it in the rare case it has to be checked again).
    pub(super) frame: Bytes,
    /// The sync epoch it was routed under (`None`: the link was down, or up
    /// but the other side's current state had not arrived yet).
    pub(super) epoch: Option<u64>,
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

    /// Queues a message; held while the link is down, dropped (and counted)
    /// beyond `bridge_buffer`.
    pub fn send_msg(&self, frame: Bytes) {
        let mut q = lock(&self.queue);
        if q.bytes + frame.len() > self.max_bytes {
            drop(q);
            self.dropped.fetch_add(1, Relaxed);
            return;
        }
        q.bytes += frame.len();
        let epoch = q.synced;
        q.items.push_back(Held { frame, epoch });
        drop(q);
        self.ready.notify_one();
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
        lock(&self.queue).synced = None;
        *lock(&self.status) = status;
        *lock(&self.down_since) = (status != Status::Up).then(Instant::now);
        if status != Status::Up {
            lock(&self.control).clear();
        }
    }

    /// Drops everything held (the link is gone for good), counting it.
    pub(super) fn drop_held(&self) {
        let mut q = lock(&self.queue);
        self.dropped.fetch_add(q.items.len() as u64, Relaxed);
        q.items.clear();
        q.bytes = 0;
    }
}
