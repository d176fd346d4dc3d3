//! Requests in flight: which connections each local request was delivered
//! to, so that when all of them close without replying the requester hears
//! at once (`ResponderGone`) rather than waiting out its timeout, as D-Bus
//! callers get `NoReply` when the callee disconnects.
//!
//! A publish with a reply subject, from a local connection, that only local
//! subscribers receive is a tracked request: one [`Inflight`] is shared by
//! the connections it was delivered to, each of which records it in its
//! [`Owed`] table under the reply subject. A publish to that subject by one
//! of them answers it. When a connection ends, every request it still owes
//! loses a responder; the last one to go tells the requester.
//!
//! Not tracked: requests that also go across a bridge (a remote responder
//! may still answer), and requests beyond `max_replies_per_connection` owed
//! by one connection. Their requesters fall back to their timeout.

use std::{
    collections::HashMap,
    sync::{
        atomic::{AtomicUsize, Ordering::Relaxed},
        Arc, Mutex, Weak,
    },
};

/// Whoever sent a request: told when it will get no answer.
pub trait Requester {
    /// Every responder of the request answered on `reply_to` is gone.
    fn responder_gone(&self, reply_to: &str);
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// One request delivered to local responders, sent by an `R`.
#[derive(Debug)]
pub struct Inflight<R> {
    reply_to: Box<str>,
    requester: Weak<R>,
    /// Responders that may still answer; 0 once one has.
    left: AtomicUsize,
}

impl<R: Requester> Inflight<R> {
    /// A request from `requester` answered on `reply_to`, not yet delivered.
    pub fn new(reply_to: &str, requester: &Arc<R>) -> Arc<Self> {
        Arc::new(Self {
            reply_to: reply_to.into(),
            requester: Arc::downgrade(requester),
            left: AtomicUsize::new(0),
        })
    }

    /// True once answered, or once its requester is gone.
    fn settled(&self) -> bool {
        self.left.load(Relaxed) == 0 || self.requester.strong_count() == 0
    }

    /// One responder left without answering; the last tells the requester.
    fn abandon(&self) {
        if self.left.fetch_update(Relaxed, Relaxed, |n| n.checked_sub(1)) == Ok(1) {
            self.tell_requester();
        }
    }

    /// Tells the requester that no answer will come.
    pub fn tell_requester(&self) {
        if let Some(requester) = self.requester.upgrade() {
            requester.responder_gone(&self.reply_to);
        }
    }
}

/// The requests one connection has received and not answered, by reply
/// subject.
#[derive(Debug)]
pub struct Owed<R> {
    /// Entries in `map`: read on every publish, so the common case (nothing
    /// owed) takes no lock.
    count: AtomicUsize,
    map: Mutex<Table<R>>,
}

impl<R> Default for Owed<R> {
    fn default() -> Self {
        Self {
            count: AtomicUsize::new(0),
            map: Mutex::new(Table {
                requests: HashMap::new(),
                closed: false,
            }),
        }
    }
}

#[derive(Debug)]
struct Table<R> {
    requests: HashMap<Box<str>, Arc<Inflight<R>>>,
    /// The connection has ended: it will answer nothing more.
    closed: bool,
}

/// What [`Owed::owe`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Owing {
    /// Recorded: the connection may answer.
    Tracked,
    /// Not recorded: `max_replies_per_connection` reached.
    Untracked,
    /// The connection has ended (a route looked up just before it did).
    Closed,
}

impl<R: Requester> Owed<R> {
    /// Requests owed: what a queue group weighs when it chooses a member.
    pub fn len(&self) -> usize {
        self.count.load(Relaxed)
    }

    /// True when nothing is owed.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Records that this connection received `req`. At `max` entries,
    /// settled ones are swept out first; if it is still full, the request
    /// is not tracked here.
    pub fn owe(&self, req: &Arc<Inflight<R>>, max: usize) -> Owing {
        let mut table = lock(&self.map);
        if table.closed {
            return Owing::Closed;
        }
        let map = &mut table.requests;
        if map.len() >= max {
            map.retain(|_, r| !r.settled());
            self.count.store(map.len(), Relaxed);
            if map.len() >= max {
                return Owing::Untracked;
            }
        }
        req.left.fetch_add(1, Relaxed);
        // The same reply subject again (a requester that reuses one): the
        // older request is no longer tracked here. It is not told its
        // responder is gone, since the requester could not tell which of
        // the two that meant; it waits for its reply or its timeout.
        map.insert(req.reply_to.clone(), req.clone());
        self.count.store(map.len(), Relaxed);
        Owing::Tracked
    }

    /// True if this connection owes a reply on `subject` (a request it
    /// received and has not answered).
    pub fn owes(&self, subject: &str) -> bool {
        lock(&self.map).requests.contains_key(subject)
    }

    /// This connection published to `subject`: a reply, if it owes one
    /// there. (Callers check [`is_empty`](Self::is_empty) first.)
    #[inline(never)]
    pub fn answer(&self, subject: &str) {
        let mut table = lock(&self.map);
        if let Some(req) = table.requests.remove(subject) {
            req.left.store(0, Relaxed);
        }
        self.count.store(table.requests.len(), Relaxed);
    }

    /// The connection ended: it takes no more, and each request it owes
    /// loses a responder (unless `daemon_stopping`: then the requesters are
    /// about to be disconnected, which says more).
    pub fn abandon_all(&self, daemon_stopping: bool) {
        let requests = {
            let mut table = lock(&self.map);
            table.closed = true;
            std::mem::take(&mut table.requests)
        };
        self.count.store(0, Relaxed);
        if !daemon_stopping {
            for req in requests.into_values() {
                req.abandon();
            }
        }
    }
}
