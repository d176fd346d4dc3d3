//! Delivery: what the router found becomes frames in subscribers'
//! outboxes. The reader gathers the publishes of one socket read
//! ([`Deliveries`]) and queues them together: a run of messages to the same
//! subscribers takes each subscriber's queue lock once, and, when they lie
//! back to back in the read, is forwarded as they came (one `Run` frame).
//! Queueing never waits: a full outbox counts a drop instead.

use std::sync::Arc;

use bytes::Bytes;

use libbus::proto::{self, ServerFrame};

use crate::{
    control,
    inflight::{Inflight, Owing, Requester},
    outbox::{PubFrame, RunSpan},
    registry::Conn,
    router,
};

/// One subscription of one connection: what the router indexes.
#[derive(Debug, Clone)]
pub struct Target {
    /// The subscribing connection.
    pub conn: Arc<Conn>,
    /// Its subscription id.
    pub sid: u64,
    /// It gets each message with its sender (`SMsg`).
    pub sender: bool,
    /// Lossless: a local publisher is held back rather than the message
    /// dropped when its queue is full.
    pub lossless: bool,
}

impl Target {
    /// Subscription `sid` of `conn`.
    pub fn new(conn: &Arc<Conn>, sid: u64) -> Self {
        Self {
            conn: conn.clone(),
            sid,
            sender: false,
            lossless: false,
        }
    }

    /// The same subscription, delivered with senders if `sender`.
    pub fn with_sender(mut self, sender: bool) -> Self {
        self.sender = sender;
        self
    }

    /// The same subscription, lossless if `lossless`.
    pub fn lossless(mut self, lossless: bool) -> Self {
        self.lossless = lossless;
        self
    }

    /// Queues `msg` for it unless its queue is full (false).
    fn push(&self, msg: PubFrame<'_>) -> bool {
        self.conn.outbox.try_push(self.sid, self.sender, msg)
    }

    /// What to do with `msg` when its queue is full: a lossless
    /// subscription takes it all the same, and its connection joins `held`
    /// (when the sender can be held back); any other counts a drop.
    fn full(&self, msg: PubFrame<'_>, held: Option<&mut Held>) {
        match held {
            Some(held) if self.lossless => {
                self.conn.outbox.push_over(self.sid, self.sender, msg);
                held.add(&self.conn);
            }
            _ => self.conn.outbox.record_drop(self.sid),
        }
    }
}

impl PartialEq for Target {
    fn eq(&self, other: &Self) -> bool {
        self.sid == other.sid && Arc::ptr_eq(&self.conn, &other.conn)
    }
}

impl Eq for Target {}

/// As equality: the connection (by address) and the sid.
impl std::hash::Hash for Target {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        (Arc::as_ptr(&self.conn) as usize, self.sid).hash(state);
    }
}

/// The daemon's subscription index.
pub type Router = router::Router<Target>;
/// The subscribers of one subject.
pub type Routes = router::Routes<Target>;
/// A reader's cache of routes.
pub type RouteCache = router::RouteCache<Target>;

impl Routes {
    /// Queues `msg` for every plain subscriber and one member per group. A
    /// subscriber whose queue is full gets a drop counted instead; within a
    /// group, the next member with room is tried first. Never waits.
    ///
    /// For senders that cannot be held back (bridges, the NATS upstream,
    /// the daemon's own events): lossless subscriptions are treated as
    /// plain ones.
    pub fn deliver(&self, msg: PubFrame<'_>) {
        self.deliver_filtered(msg, |_| true);
    }

    /// [`deliver`](Self::deliver) for consecutive messages from a local
    /// publisher: each plain subscriber's queue is locked once for all of
    /// them, and gets them as one `Run` frame if they lie together in one
    /// read (`run`). Lossless subscribers with full queues join `held`.
    fn deliver_run(&self, msgs: &[PubFrame<'_>], run: Option<&RunSpan<'_>>, held: &mut Held) {
        for t in &self.plain {
            if t.conn.outbox.push_many(t.sid, (t.sender, t.lossless), msgs, run) {
                held.add(&t.conn);
            }
        }
        if !self.groups.is_empty() {
            for msg in msgs {
                self.deliver_groups(*msg, |_| true, Some(held));
            }
        }
    }

    /// [`deliver`](Self::deliver), but only to the groups `group_here` accepts
    /// (a message from another node names the node whose member gets it).
    pub fn deliver_filtered(&self, msg: PubFrame<'_>, group_here: impl Fn(&str) -> bool) {
        for t in &self.plain {
            if !t.push(msg) {
                t.conn.outbox.record_drop(t.sid);
            }
        }
        self.deliver_groups(msg, group_here, None);
    }

    /// Queues `msg` for one member of each group `group_here` accepts; when
    /// none has room, the turn's member takes it as [`Target::full`] says.
    fn deliver_groups(
        &self,
        msg: PubFrame<'_>,
        group_here: impl Fn(&str) -> bool,
        mut held: Option<&mut Held>,
    ) {
        for (group, members) in &self.groups {
            if !group_here(group) {
                continue;
            }
            let n = members.len();
            let start = self.group_start(n);
            let taken = (0..n).any(|i| {
                let t = &members[(start + i) % n];
                t.push(msg)
            });
            if !taken {
                members[start].full(msg, held.as_deref_mut());
            }
        }
    }
}

/// Connections a local publisher's messages went to over their bound
/// (lossless subscriptions): the publisher is not read again until each
/// has room.
#[derive(Debug, Default)]
pub struct Held(Vec<Arc<Conn>>);

impl Held {
    /// Adds `conn`, once.
    fn add(&mut self, conn: &Arc<Conn>) {
        if !self.0.iter().any(|c| Arc::ptr_eq(c, conn)) {
            self.0.push(conn.clone());
        }
    }

    /// None.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Takes them all.
    pub fn drain(&mut self) -> impl Iterator<Item = Arc<Conn>> + '_ {
        self.0.drain(..)
    }
}

impl Requester for Conn {
    /// `ResponderGone`, or `NoResponders` for a client older than it.
    fn responder_gone(&self, reply_to: &str) {
        let frame = if self.version >= proto::GONE_VERSION {
            ServerFrame::ResponderGone { reply_to }
        } else {
            ServerFrame::NoResponders { reply_to }
        };
        self.outbox.push_frame(&control::server(&frame));
    }
}

/// Members a queue group weighs when it chooses one for a request: the
/// next few in turn, of which the one owing the fewest replies (with room
/// in its queue) gets it. A member that stopped answering (stopped, hung,
/// or not reading) owes more and more, and is passed over while the others
/// have room; the requests it holds stay queued for it, and fail at once
/// with `ResponderGone` if its connection closes.
const REQUEST_CHOICES: usize = 8;

impl Routes {
    /// Delivers a request (`msg`, from a local connection, with a reply
    /// subject) like [`deliver`](Self::deliver), but records `req` with
    /// every connection that got it, and chooses group members by the
    /// replies they owe (`REQUEST_CHOICES`). `max_owed` is
    /// `max_replies_per_connection`.
    pub fn deliver_request(
        &self,
        msg: PubFrame<'_>,
        req: &Arc<Inflight<Conn>>,
        max_owed: usize,
        held: &mut Held,
    ) {
        let mut delivered = Delivered::default();
        for t in &self.plain {
            if t.push(msg) {
                delivered.add(t.conn.owed.owe(req, max_owed));
            } else if t.lossless {
                t.full(msg, Some(&mut *held));
                delivered.add(t.conn.owed.owe(req, max_owed));
            } else {
                t.conn.outbox.record_drop(t.sid);
            }
        }
        for (_, members) in &self.groups {
            let n = members.len();
            let start = self.group_start(n);
            let window = n.min(REQUEST_CHOICES);
            // Stable: members owing the same stay in turn.
            let mut best: Vec<usize> = (0..window).collect();
            best.sort_by_key(|i| members[(start + i) % n].conn.owed.len());
            let order = best.into_iter().chain(window..n);
            let taken = order.map(|i| &members[(start + i) % n]).find(|t| t.push(msg));
            match taken {
                Some(t) => delivered.add(t.conn.owed.owe(req, max_owed)),
                None if members[start].lossless => {
                    let t = &members[start];
                    t.full(msg, Some(&mut *held));
                    delivered.add(t.conn.owed.owe(req, max_owed));
                }
                None => members[start].conn.outbox.record_drop(members[start].sid),
            }
        }
        if delivered.closed && !delivered.live {
            // Every connection it reached had just closed.
            req.tell_requester();
        }
    }
}

/// Where a request went.
#[derive(Debug, Default)]
struct Delivered {
    /// To a connection that may answer.
    live: bool,
    /// To a connection that had just ended.
    closed: bool,
}

impl Delivered {
    fn add(&mut self, owing: Owing) {
        match owing {
            Owing::Closed => self.closed = true,
            Owing::Tracked | Owing::Untracked => self.live = true,
        }
    }
}

/// Publishes a reader has routed but not yet queued: delivered together, so
/// that a run of messages to the same subscribers takes each subscriber's
/// queue lock once rather than once per message, and, when they came back to
/// back in one read, is forwarded as they came (one `Run` frame). The reader
/// delivers them before it handles any other kind of frame and before it
/// waits for input, so effects stay in the order the frames came in.
#[derive(Debug)]
pub struct Deliveries<'a> {
    /// The read the messages are in.
    read: &'a Bytes,
    /// Most bytes of frames in one `Run`.
    max_run: usize,
    /// Runs of consecutive messages with the same routes.
    runs: Vec<Run>,
    /// The messages, in order.
    msgs: Vec<PubFrame<'a>>,
    /// Lossless subscribers whose queues they filled.
    pub held: Held,
}

/// Consecutive messages with the same routes, back to back in the read.
#[derive(Debug)]
struct Run {
    routes: Arc<Routes>,
    /// How many.
    len: usize,
    /// Their frames' bytes.
    bytes: usize,
    /// Some are `HPub`s: the run goes as one `Run` only to subscribers
    /// that read headers (others get each message without its headers).
    headers: bool,
}

/// Publishes a reader gathers before delivering them.
const DELIVERIES_MAX: usize = 256;

/// Most bytes of frames forwarded in one `Run` (a single larger frame makes
/// a run of its own): no dearer for the daemon than runs as long as the
/// whole read, and cheaper for a subscriber of large messages, which
/// reassembles smaller frames.
const RUN_MAX: usize = 16 << 10;

impl<'a> Deliveries<'a> {
    /// Deliveries of messages that all lie in `read`, forwarded in runs of
    /// at most `RUN_MAX` bytes of frames, and no more than `max_frame`
    /// (the daemon's, which its clients accept).
    pub fn in_read(read: &'a Bytes, max_frame: u32) -> Self {
        Self {
            read,
            max_run: RUN_MAX.min(max_frame as usize),
            runs: Vec::new(),
            msgs: Vec::new(),
            held: Held::default(),
        }
    }

    /// Adds a message for `routes` (shared only when a new run starts);
    /// delivers everything once enough gathered.
    pub fn push(&mut self, routes: &Arc<Routes>, msg: PubFrame<'a>) {
        let size = msg.frame.len();
        let headers = msg.has_headers();
        match (self.runs.last_mut(), self.msgs.last()) {
            (Some(run), Some(prev))
                if run.routes.same_as(routes)
                    && prev.frame.as_ptr_range().end == msg.frame.as_ptr()
                    && run.bytes + size <= self.max_run =>
            {
                run.len += 1;
                run.bytes += size;
                run.headers |= headers;
            }
            _ => self.runs.push(Run {
                routes: routes.clone(),
                len: 1,
                bytes: size,
                headers,
            }),
        }
        self.msgs.push(msg);
        if self.msgs.len() >= DELIVERIES_MAX {
            self.deliver();
        }
    }

    /// Queues everything gathered, in order.
    pub fn deliver(&mut self) {
        let mut rest = &self.msgs[..];
        for run in self.runs.drain(..) {
            let (msgs, after) = rest.split_at(run.len);
            let span = span(self.read, msgs, run.routes.plain.len() > 1, run.headers);
            run.routes.deliver_run(msgs, span.as_ref(), &mut self.held);
            rest = after;
        }
        self.msgs.clear();
    }
}

/// Where adjacent frames `msgs` lie in `read`, as a run to forward.
fn span<'a>(read: &'a Bytes, msgs: &[PubFrame<'_>], fan_out: bool, headers: bool) -> Option<RunSpan<'a>> {
    let base = read.as_ptr() as usize;
    let start = (msgs.first()?.frame.as_ptr() as usize).checked_sub(base)?;
    let end = (msgs.last()?.frame.as_ptr_range().end as usize).checked_sub(base)?;
    (end <= read.len()).then(|| RunSpan {
        read,
        range: start..end,
        msgs: msgs.len() as u64,
        payload: msgs.iter().map(|m| u64::from(m.payload_len)).sum(),
        fan_out,
        headers,
    })
}
