//! A connection's bounded outbound queue.
//!
//! The queue is a chain of byte chunks holding encoded frames ([`Frames`]),
//! written straight from the publisher's receive buffer: a run of publishes
//! as one `Run` frame (the `Pub` frames as they came, behind a head naming
//! the subscription), or a single delivery as the `Msg` frame the subscriber
//! will read (its `Pub` frame with the subscription id spliced in). A large
//! run for several subscribers is not copied: the chain holds a reference
//! to the read buffer. No per-message allocation, reference count or queue
//! node; the writer swaps the whole chain out and sends it with vectored
//! writes.
//!
//! Publishers' reader tasks push into it and never wait: when the queued bytes
//! (including the batch the writer is still sending) would exceed
//! `max_pending`, the message is dropped and counted per subscription. A
//! `Lagged` notice for a subscription is queued in front of its next message,
//! or as soon as the queue drains, so loss is never silent and the count is
//! exact.

use std::{
    collections::VecDeque,
    io::IoSlice,
    ops::Range,
    sync::{
        atomic::{AtomicUsize, Ordering::Relaxed},
        Arc, Mutex, MutexGuard,
    },
};

use bytes::{Buf, Bytes};
use libbus::{
    codec,
    proto::{self, ServerFrame, LEN_PREFIX},
    wire,
};
use tokio::sync::Notify;

/// One published message to deliver: its validated `Pub` frame, length
/// prefix included, usually borrowed from the publisher's receive buffer.
#[derive(Debug, Clone, Copy)]
pub struct PubFrame<'a> {
    /// The whole `Pub` frame.
    pub frame: &'a [u8],
    /// Payload bytes within it, for the byte counters.
    pub payload_len: u32,
    /// Its sender, encoded (`proto::Sender`), for subscriptions that want
    /// it; empty when not known.
    pub sender: &'a [u8],
}

impl<'a> PubFrame<'a> {
    /// A validated `Pub` frame (prefix and body) carrying `payload_len`
    /// payload bytes.
    pub fn new(frame: &'a [u8], payload_len: usize) -> Self {
        Self {
            frame,
            payload_len: payload_len as u32,
            sender: &[],
        }
    }

    /// The same message, sent by `sender` (encoded `proto::Sender`).
    pub fn from(mut self, sender: &'a [u8]) -> Self {
        self.sender = sender;
        self
    }

    /// The frame's body.
    pub fn body(&self) -> &'a [u8] {
        self.frame.get(LEN_PREFIX..).unwrap_or_default()
    }

    /// Bytes of the `Msg` (or `HMsg`) frame it becomes for `sid`, charged
    /// against `max_pending` while queued; `headers`: the subscriber reads
    /// headers.
    pub fn cost(&self, sid: u64, headers: bool) -> usize {
        wire::delivery_len(self.body(), sid, headers)
    }

    /// Bytes of the `SMsg` frame it becomes for `sid` (with its sender).
    fn cost_with_sender(&self, sid: u64) -> usize {
        wire::smsg_len(self.body(), sid, self.sender)
    }

    /// True if it is an `HPub` (a publish with headers).
    pub fn has_headers(&self) -> bool {
        self.body().first() == Some(&wire::HPUB_TAG)
    }
}

/// Consecutive `Pub` frames of one read, `read[range]`, to forward verbatim
/// as one `Run` frame to each subscriber that speaks version 3.
#[derive(Debug, Clone)]
pub struct RunSpan<'a> {
    /// The read the frames came in.
    pub read: &'a Bytes,
    /// Where they lie in it.
    pub range: Range<usize>,
    /// How many messages.
    pub msgs: u64,
    /// Their payload bytes.
    pub payload: u64,
    /// Several subscribers get the run: if it is large, each queue holds a
    /// reference to the read rather than a copy.
    pub fan_out: bool,
    /// Some of the frames are `HPub`s: only a peer that reads headers gets
    /// the run as it is.
    pub headers: bool,
}

impl RunSpan<'_> {
    /// Bytes of the `Run` frame for `sid`, charged against `max_pending`.
    fn cost(&self, sid: u64) -> usize {
        wire::run_head_len(sid, self.range.len()) + self.range.len()
    }
}

/// A message that did not arrive as a `Pub` frame (from the daemon itself, or
/// over a bridge), encoded as one.
#[derive(Debug, Clone)]
pub struct Published {
    frame: Vec<u8>,
    payload_len: usize,
    /// Its sender, encoded, if known.
    sender: Vec<u8>,
}

impl Published {
    /// Encodes a message from the daemon itself (events, API replies).
    pub fn from_daemon(subject: &str, payload: &[u8]) -> Self {
        Self::encode(subject, None, payload)
    }

    /// Encodes a message as an `HPub` frame with the (checked) header
    /// block `headers`, or a `Pub` frame without.
    pub fn with_headers(
        subject: &str,
        reply_to: Option<&str>,
        headers: Option<&[u8]>,
        payload: &[u8],
    ) -> Self {
        let Some(headers) = headers else {
            return Self::encode(subject, reply_to, payload);
        };
        let mut frame = Vec::new();
        let p = proto::ClientFrame::HPub(proto::HPub {
            subject,
            reply_to,
            headers,
            payload,
        });
        if let Err(e) = libbus::codec::encode_into(&p, &mut frame, u32::MAX) {
            tracing::error!("encoding a message on {subject}: {e}");
        }
        Self {
            frame,
            payload_len: payload.len(),
            sender: Vec::new(),
        }
    }

    /// Encodes a message as a `Pub` frame.
    pub fn encode(subject: &str, reply_to: Option<&str>, payload: &[u8]) -> Self {
        let mut frame = Vec::new();
        let p = proto::Pub {
            subject,
            reply_to,
            payload,
        };
        if let Err(e) = wire::encode_pub(&p, &mut frame, u32::MAX) {
            tracing::error!("encoding a daemon message on {subject}: {e}");
        }
        Self {
            frame,
            payload_len: payload.len(),
            sender: Vec::new(),
        }
    }

    /// The same message, sent by `sender` (encoded `proto::Sender`).
    pub fn sent_by(mut self, sender: Vec<u8>) -> Self {
        self.sender = sender;
        self
    }

    /// The message as a frame to deliver.
    pub fn frame(&self) -> PubFrame<'_> {
        PubFrame::new(&self.frame, self.payload_len).from(&self.sender)
    }
}

/// Slack above `max_pending` for control frames, which are never dropped.
const CONTROL_SLACK: usize = 64 << 10;

/// First chunk of a queue; each next one doubles, up to [`CHUNK`].
const FIRST_CHUNK: usize = 1 << 10;
/// Largest chunk (a larger frame gets a chunk of its own size).
const CHUNK: usize = 64 << 10;

/// A run of frames at least this long going to several subscribers is
/// queued as a reference to the read it came in rather than copied into each
/// queue. A reference keeps that whole read buffer (about 64 KiB, or one
/// large frame) alive until written, so what a queue holds stays within a
/// few times what it counts against `max_pending`; and the reader then needs
/// a fresh buffer, which costs more than one copy for a single subscriber
/// (faster for several), so a run for one subscriber is copied.
pub const SHARE_MIN: usize = 16 << 10;

/// One piece of the queue.
#[derive(Debug)]
enum Chunk {
    /// Frames written into the queue's own memory (new frames go at its end).
    Own(Vec<u8>),
    /// Frames shared with the read they came in.
    Shared(Bytes),
}

impl Chunk {
    fn bytes(&self) -> &[u8] {
        match self {
            Self::Own(v) => v,
            Self::Shared(b) => b,
        }
    }
}

/// Encoded frames in order, in chunks of up to 64 KiB (`CHUNK`) and runs
/// shared with the reads they came in, so that a long queue grows without
/// reallocating and copying what it holds. As a [`Buf`] it is what the
/// writer sends (several chunks per `writev`).
#[derive(Debug, Default)]
pub struct Frames {
    chunks: VecDeque<Chunk>,
    /// Bytes of the front chunk already consumed.
    head: usize,
    /// Bytes not yet consumed.
    len: usize,
    /// One consumed chunk kept for reuse.
    spare: Option<Vec<u8>>,
    /// Bytes consumed over its life: the origin of `fds`' positions.
    consumed: usize,
    /// File descriptors to send with the frame at each position (from
    /// the start of the queue's life), in order: `MsgFds` frames.
    fds: VecDeque<(usize, Fds)>,
}

/// The descriptors of one message, shared by every subscriber it is queued
/// for; closed when the last queue lets go (sent, dropped, or closed).
pub type Fds = Arc<HeldFds>;

/// A message's descriptors, counted in the daemon's total while held.
#[derive(Debug)]
pub struct HeldFds {
    fds: Vec<std::os::fd::OwnedFd>,
    held: Arc<AtomicUsize>,
}

impl HeldFds {
    /// Takes `fds` into the count `held`, unless that would pass `budget`:
    /// then they are closed at once, and `Err` says how many are held.
    pub fn hold(
        fds: Vec<std::os::fd::OwnedFd>,
        held: &Arc<AtomicUsize>,
        budget: usize,
    ) -> Result<Fds, usize> {
        let n = fds.len();
        let before = held.fetch_add(n, Relaxed);
        if before + n > budget {
            held.fetch_sub(n, Relaxed);
            return Err(before);
        }
        Ok(Arc::new(Self {
            fds,
            held: held.clone(),
        }))
    }

    /// How many.
    pub fn len(&self) -> usize {
        self.fds.len()
    }

    /// None (never, for a message's).
    pub fn is_empty(&self) -> bool {
        self.fds.is_empty()
    }

    /// Them, borrowed, to send.
    pub fn borrowed(&self) -> Vec<std::os::fd::BorrowedFd<'_>> {
        self.fds.iter().map(std::os::fd::AsFd::as_fd).collect()
    }
}

impl Drop for HeldFds {
    fn drop(&mut self) {
        self.held.fetch_sub(self.fds.len(), Relaxed);
    }
}

impl Frames {
    /// Appends with `write`, which adds about `need` bytes, to the last chunk
    /// or to a new one if it has no room.
    fn append(&mut self, need: usize, write: impl FnOnce(&mut Vec<u8>)) {
        let fits = matches!(self.chunks.back(), Some(Chunk::Own(c)) if c.capacity() - c.len() >= need);
        if !fits {
            let size = self
                .chunks
                .back()
                .map_or(FIRST_CHUNK, |c| c.bytes().len().saturating_mul(2))
                .clamp(FIRST_CHUNK, CHUNK)
                .max(need);
            let chunk = match self.spare.take() {
                Some(spare) if spare.capacity() >= size => spare,
                _ => Vec::with_capacity(size),
            };
            self.chunks.push_back(Chunk::Own(chunk));
        }
        let Some(Chunk::Own(last)) = self.chunks.back_mut() else {
            return;
        };
        let before = last.len();
        write(last);
        self.len += last.len() - before;
        if last.is_empty() {
            // Nothing was written: no empty chunk in the chain.
            self.chunks.pop_back();
        }
    }

    /// Appends frames shared with the buffer they are in.
    fn share(&mut self, frames: Bytes) {
        if !frames.is_empty() {
            self.len += frames.len();
            self.chunks.push_back(Chunk::Shared(frames));
        }
    }

    fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Appends a frame that goes with `fds`.
    fn append_with_fds(&mut self, frame: &[u8], fds: Fds) {
        self.fds.push_back((self.consumed + self.len, fds));
        self.append(frame.len(), |buf| buf.extend_from_slice(frame));
    }

    /// The next descriptors to send, and how many bytes come before the
    /// frame they go with.
    pub fn next_fds(&self) -> Option<(usize, &Fds)> {
        self.fds.front().map(|(at, fds)| (at - self.consumed, fds))
    }

    /// What may go in one send with the next descriptors: the front
    /// chunk, up to the frame of the descriptors after them.
    pub fn fds_chunk(&self) -> &[u8] {
        let chunk = self.chunk();
        match self.fds.get(1) {
            Some((at, _)) => &chunk[..chunk.len().min(at - self.consumed)],
            None => chunk,
        }
    }

    /// The next descriptors were sent.
    pub fn sent_fds(&mut self) -> Option<Fds> {
        self.fds.pop_front().map(|(_, fds)| fds)
    }
}

impl Buf for Frames {
    fn remaining(&self) -> usize {
        self.len
    }

    fn chunk(&self) -> &[u8] {
        self.chunks.front().map_or(&[], |c| &c.bytes()[self.head..])
    }

    fn advance(&mut self, mut cnt: usize) {
        assert!(cnt <= self.len, "advance past the end of the queue");
        self.len -= cnt;
        self.consumed += cnt;
        while cnt > 0 {
            let Some(front) = self.chunks.front() else { break };
            let rest = front.bytes().len() - self.head;
            if cnt < rest {
                self.head += cnt;
                break;
            }
            cnt -= rest;
            self.head = 0;
            if let Some(Chunk::Own(mut done)) = self.chunks.pop_front() {
                if done.capacity() <= CHUNK {
                    done.clear();
                    self.spare = Some(done);
                }
            }
        }
    }

    fn chunks_vectored<'a>(&'a self, dst: &mut [IoSlice<'a>]) -> usize {
        let mut n = 0;
        for (i, c) in self.chunks.iter().enumerate() {
            let Some(slot) = dst.get_mut(n) else { break };
            let from = if i == 0 { self.head } else { 0 };
            *slot = IoSlice::new(&c.bytes()[from..]);
            n += 1;
        }
        n
    }
}

/// What the writer took: messages and payload bytes in the batch, for the
/// connection's counters.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Taken {
    /// `Msg` frames in the batch.
    pub msgs: u64,
    /// Their payload bytes.
    pub bytes: u64,
}

/// What all the connections of one principal (a uid other than the
/// daemon's and root, a network user, `tcp`) hold together: bytes of
/// messages queued for them, bounded by `max_pending_per_uid`, and
/// subscriptions, bounded by `max_subscriptions_per_uid`. So one user
/// with many connections cannot take the memory every user shares.
#[derive(Debug, Default)]
pub struct Budget {
    pending: AtomicUsize,
    limit: AtomicUsize,
    /// Live subscriptions of the principal.
    pub subs: AtomicUsize,
}

impl Budget {
    /// A budget of `limit` queued bytes.
    pub fn new(limit: usize) -> Self {
        Self {
            limit: AtomicUsize::new(limit),
            ..Self::default()
        }
    }

    /// Sets the bound (a reload).
    pub fn set_limit(&self, limit: usize) {
        self.limit.store(limit, Relaxed);
    }

    /// Message bytes queued now for the principal's connections.
    pub fn pending(&self) -> usize {
        self.pending.load(Relaxed)
    }

    fn fits(&self, cost: usize) -> bool {
        self.pending.load(Relaxed) + cost <= self.limit.load(Relaxed)
    }
}

#[derive(Debug, Default)]
struct State {
    /// Encoded frames, in order. Allocated on first use.
    frames: Frames,
    /// Message bytes charged to the principal's [`Budget`]: at most
    /// `pending()`, given back as the queue drains below it.
    charged: usize,
    /// Counters for the messages in `buf`.
    taken: Taken,
    /// Bytes of the batch the writer took that the socket has not taken yet.
    in_flight: usize,
    /// Drops not yet reported, by sid (few entries; usually none).
    lag: Vec<(u64, u64)>,
    /// Messages dropped over the connection's life.
    dropped_total: u64,
    /// File descriptors queued (and in the batch being written), against
    /// `max_fds_pending`.
    fds: usize,
    /// No more items are accepted; the writer exits once drained.
    closed: bool,
    /// Messages for a lossless subscription went in over `max_pending`
    /// (their publishers are held back until it drains): control frames
    /// are taken whatever the queue holds until then.
    over: bool,
}

impl State {
    fn pending(&self) -> usize {
        self.frames.len + self.in_flight
    }

    /// Queues `msg` for `sid` (after any unreported loss of `sid`) if it fits
    /// under `max_pending` (`None`: it goes in regardless, for a lossless
    /// subscription); false if it does not.
    /// `headers`: the peer reads headers; `sender`: the subscription gets
    /// senders (`SMsg`, protocol 4, so headers too).
    fn push_msg(
        &mut self,
        sid: u64,
        msg: PubFrame<'_>,
        max_pending: Option<usize>,
        headers: bool,
        sender: bool,
        budget: Option<&Budget>,
    ) -> bool {
        let cost = if sender {
            msg.cost_with_sender(sid)
        } else {
            msg.cost(sid, headers)
        };
        if !self.admit(cost, max_pending, budget) {
            return false;
        }
        self.over |= max_pending.is_none();
        self.report_lag(sid);
        self.frames.append(cost, |buf| {
            if sender {
                wire::encode_smsg(msg.body(), sid, msg.sender, buf);
            } else {
                wire::encode_delivery(msg.body(), sid, headers, buf);
            }
        });
        self.taken.msgs += 1;
        self.taken.bytes += u64::from(msg.payload_len);
        true
    }

    /// Queues `run` for `sid` as one `Run` frame (after any unreported
    /// loss of `sid`) if it fits under `max_pending`; false if it does not.
    fn push_run(&mut self, sid: u64, run: &RunSpan<'_>, max_pending: usize, budget: Option<&Budget>) -> bool {
        let cost = run.cost(sid);
        if !self.admit(cost, Some(max_pending), budget) {
            return false;
        }
        self.report_lag(sid);
        let frames = &run.read[run.range.clone()];
        if run.fan_out && frames.len() >= SHARE_MIN {
            self.frames.append(cost - frames.len(), |buf| {
                wire::encode_run_head(sid, frames.len(), buf);
            });
            self.frames.share(run.read.slice(run.range.clone()));
        } else {
            self.frames.append(cost, |buf| {
                wire::encode_run_head(sid, frames.len(), buf);
                buf.extend_from_slice(frames);
            });
        }
        self.taken.msgs += run.msgs;
        self.taken.bytes += run.payload;
        true
    }

    /// Whether `cost` more bytes fit under `max_pending` and the budget, and
    /// if so charges them to the budget. `None`: they go in regardless
    /// (lossless), charged all the same.
    fn admit(&mut self, cost: usize, max_pending: Option<usize>, budget: Option<&Budget>) -> bool {
        if let Some(max) = max_pending {
            if self.pending() + cost > max || budget.is_some_and(|b| !b.fits(cost)) {
                return false;
            }
        }
        if let Some(b) = budget {
            b.pending.fetch_add(cost, Relaxed);
            self.charged += cost;
        }
        true
    }

    /// Gives back what is charged beyond what is still queued.
    fn settle(&mut self, budget: Option<&Budget>) {
        let excess = self.charged.saturating_sub(self.pending());
        if let (Some(b), true) = (budget, excess > 0) {
            b.pending.fetch_sub(excess, Relaxed);
            self.charged -= excess;
        }
    }

    /// Queues the `Lagged` notice `sid` has pending, if any.
    fn report_lag(&mut self, sid: u64) {
        if let Some(i) = self.lag.iter().position(|(s, _)| *s == sid) {
            let (_, dropped) = self.lag.swap_remove(i);
            self.push_lagged(sid, dropped);
        }
    }

    fn push_lagged(&mut self, sid: u64, dropped: u64) {
        self.frames.append(32, |buf| {
            // A small frame of plain integers: encoding cannot fail.
            let _ = codec::encode_into(&ServerFrame::Lagged { sid, dropped }, buf, u32::MAX);
        });
    }

    /// Counts one message for `sid` as dropped, to be reported.
    fn count_drop(&mut self, sid: u64) {
        self.dropped_total += 1;
        self.add_lag(sid, 1);
    }

    /// `n` more messages for `sid` to report as lost.
    fn add_lag(&mut self, sid: u64, n: u64) {
        match self.lag.iter_mut().find(|(s, _)| *s == sid) {
            Some((_, lag)) => *lag += n,
            None => self.lag.push((sid, n)),
        }
    }
}

/// The queue. One per connection, shared by the router and the writer.
#[derive(Debug)]
pub struct Outbox {
    state: Mutex<State>,
    ready: Notify,
    /// Wakes publishers held back by a lossless subscription here once the
    /// queue has drained to half of `max_pending` ([`room`](Self::room)).
    room: Notify,
    /// Publishers waiting on `room`: only then does a write wake anyone.
    held: AtomicUsize,
    /// A publisher was held back here longer than `max_stall`: this peer is
    /// being disconnected, and nobody waits for it any more.
    given_up: std::sync::atomic::AtomicBool,
    max_pending: usize,
    /// The peer reads `Run` frames (protocol version 3).
    runs: bool,
    /// The peer reads headers (`HMsg`, protocol version 4); others get
    /// messages without them.
    headers: bool,
    /// Its principal's budget (none for the daemon's uid and root).
    budget: Option<Arc<Budget>>,
}

impl Outbox {
    /// An empty queue bounded at `max_pending` bytes, for a peer that reads
    /// `Run` frames if `runs`.
    pub fn new(max_pending: usize, runs: bool) -> Self {
        Self {
            state: Mutex::new(State::default()),
            ready: Notify::new(),
            room: Notify::new(),
            held: AtomicUsize::new(0),
            given_up: Default::default(),
            max_pending,
            runs,
            headers: false,
            budget: None,
        }
    }

    /// The same queue, charging its messages to `budget` as well.
    pub fn with_budget(mut self, budget: Option<Arc<Budget>>) -> Self {
        self.budget = budget;
        self
    }

    /// Its principal's budget, if it has one.
    pub fn budget(&self) -> Option<&Arc<Budget>> {
        self.budget.as_ref()
    }

    /// The same queue for a peer that reads headers if `headers`.
    pub fn reading_headers(mut self, headers: bool) -> Self {
        self.headers = headers;
        self
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Queues a delivery unless that would pass the bound. Returns false when
    /// it did not fit (the caller decides whom to charge the drop to).
    /// `sender`: the subscription gets each message with its sender.
    pub fn try_push(&self, sid: u64, sender: bool, msg: PubFrame<'_>) -> bool {
        let mut st = self.lock();
        if st.closed {
            return true;
        }
        let was_empty = st.frames.is_empty();
        let fits = st.push_msg(
            sid,
            msg,
            Some(self.max_pending),
            self.headers,
            sender,
            self.budget.as_deref(),
        );
        drop(st);
        if fits && was_empty {
            self.ready.notify_one();
        }
        fits
    }

    /// Queues a delivery for a lossless subscription whether or not it
    /// fits: the caller then holds its publisher back until there is
    /// [`room`](Self::room).
    pub fn push_over(&self, sid: u64, sender: bool, msg: PubFrame<'_>) {
        let mut st = self.lock();
        if st.closed {
            return;
        }
        let was_empty = st.frames.is_empty();
        st.push_msg(sid, msg, None, self.headers, sender, self.budget.as_deref());
        drop(st);
        if was_empty {
            self.ready.notify_one();
        }
    }

    /// [`try_push`](Self::try_push) for consecutive messages to `sid` under
    /// one lock: as one `Run` frame if they lie together in one read (`run`)
    /// and the peer reads runs and the whole run fits; otherwise one by one,
    /// and those that do not fit are counted as dropped, or, for a
    /// `lossless` subscription, queued all the same.
    /// `sender`: the subscription gets each message with its sender (then
    /// never as a `Run`). True if anything went in over the bound (the
    /// caller then holds its publisher back until there is
    /// [`room`](Self::room)).
    pub fn push_many(
        &self,
        sid: u64,
        (sender, lossless): (bool, bool),
        msgs: &[PubFrame<'_>],
        run: Option<&RunSpan<'_>>,
    ) -> bool {
        let mut st = self.lock();
        if st.closed {
            return false;
        }
        let mut over = false;
        let was_empty = st.frames.is_empty();
        let ran = self.runs
            && !sender
            && run.is_some_and(|run| {
                (self.headers || !run.headers)
                    && st.push_run(sid, run, self.max_pending, self.budget.as_deref())
            });
        if !ran {
            let (headers, budget) = (self.headers, self.budget.as_deref());
            for msg in msgs {
                if !st.push_msg(sid, *msg, Some(self.max_pending), headers, sender, budget) {
                    if lossless {
                        st.push_msg(sid, *msg, None, headers, sender, budget);
                        over = true;
                    } else {
                        st.count_drop(sid);
                    }
                }
            }
        }
        let notify = was_empty && !st.frames.is_empty();
        drop(st);
        if notify {
            self.ready.notify_one();
        }
        over
    }

    /// Whether a publisher held back for this queue may go on: it has
    /// drained to half of `max_pending` (so a held publisher resumes with
    /// room for a good many messages, not one), or it is closed or given
    /// up on.
    pub fn has_room(&self) -> bool {
        self.given_up.load(Relaxed) || {
            let st = self.lock();
            st.closed || st.pending() <= self.max_pending / 2
        }
    }

    /// Waits until [`has_room`](Self::has_room).
    pub async fn room(&self) {
        struct Waiting<'a>(&'a AtomicUsize);
        impl Drop for Waiting<'_> {
            fn drop(&mut self) {
                self.0.fetch_sub(1, Relaxed);
            }
        }
        self.held.fetch_add(1, Relaxed);
        let _waiting = Waiting(&self.held);
        loop {
            let room = self.room.notified();
            tokio::pin!(room);
            room.as_mut().enable();
            if self.has_room() {
                return;
            }
            room.await;
        }
    }

    /// Nobody waits for this queue any more ([`room`](Self::room) returns at
    /// once): its peer held a publisher back too long and is being
    /// disconnected.
    pub fn give_up(&self) {
        self.given_up.store(true, Relaxed);
        self.room.notify_waiters();
    }

    /// Queues `frame`, a `MsgFds` for `sid` (encoded by the caller), with
    /// the descriptors it carries, unless that would pass `max_pending` or
    /// `max_fds` descriptors queued: then counts a drop and returns false.
    /// `payload`: its payload bytes, for the counters.
    pub fn push_with_fds(&self, sid: u64, frame: &[u8], payload: usize, fds: &Fds, max_fds: usize) -> bool {
        let mut st = self.lock();
        if st.closed {
            return true;
        }
        if st.fds + fds.len() > max_fds
            || !st.admit(frame.len(), Some(self.max_pending), self.budget.as_deref())
        {
            st.count_drop(sid);
            return false;
        }
        let was_empty = st.frames.is_empty();
        st.report_lag(sid);
        st.frames.append_with_fds(frame, fds.clone());
        st.fds += fds.len();
        st.taken.msgs += 1;
        st.taken.bytes += payload as u64;
        drop(st);
        if was_empty {
            self.ready.notify_one();
        }
        true
    }

    /// The writer sent `n` queued descriptors.
    pub fn sent_fds(&self, n: usize) {
        let mut st = self.lock();
        st.fds = st.fds.saturating_sub(n);
    }

    /// Counts one message for `sid` as dropped.
    pub fn record_drop(&self, sid: u64) {
        self.lock().count_drop(sid);
    }

    /// `n` messages for `sid` were lost before they reached this daemon
    /// (on a bridge link): reported with `Lagged` as this queue's own drops
    /// are (before the next message, or once it is empty), but not counted
    /// as this connection's drops.
    pub fn report_lost(&self, sid: u64, n: u64) {
        self.lock().add_lag(sid, n);
        self.ready.notify_one();
    }

    /// Queues an encoded control frame. Returns false if even the slack above
    /// the bound is used up: the peer is not reading at all.
    pub fn push_frame(&self, frame: &[u8]) -> bool {
        let mut st = self.lock();
        if st.closed {
            return true;
        }
        if st.pending() + frame.len() > self.max_pending + CONTROL_SLACK && !st.over {
            return false;
        }
        let was_empty = st.frames.is_empty();
        st.frames.append(frame.len(), |buf| buf.extend_from_slice(frame));
        drop(st);
        if was_empty {
            self.ready.notify_one();
        }
        true
    }

    /// Swaps everything queued into `batch` (which must be consumed), waiting
    /// while the queue is empty. The batch counts against the bound until
    /// the socket takes it ([`wrote`](Self::wrote)). Returns `None` once the
    /// queue is closed and drained.
    pub async fn take(&self, batch: &mut Frames) -> Option<Taken> {
        debug_assert!(batch.is_empty());
        loop {
            {
                let mut st = self.lock();
                if st.frames.is_empty() && !st.lag.is_empty() {
                    // Caught up after a gap: report it now rather than with
                    // the next message, which may never come.
                    for (sid, dropped) in std::mem::take(&mut st.lag) {
                        st.push_lagged(sid, dropped);
                    }
                }
                if !st.frames.is_empty() {
                    std::mem::swap(&mut st.frames, batch);
                    st.in_flight = batch.len;
                    return Some(std::mem::take(&mut st.taken));
                }
                if st.closed {
                    return None;
                }
            }
            self.ready.notified().await;
        }
    }

    /// The socket took `n` more bytes of the batch being written: they no
    /// longer count against the bound. (Counting the whole batch until its
    /// last byte is out let a reader that keeps up see drops: with 16 KiB
    /// messages, `bench pubsub` lost a few dozen in 200,000.)
    pub fn wrote(&self, n: usize) {
        let mut st = self.lock();
        st.in_flight = st.in_flight.saturating_sub(n);
        st.settle(self.budget.as_deref());
        st.over &= st.pending() > self.max_pending;
        let room = self.held.load(Relaxed) > 0 && st.pending() <= self.max_pending / 2;
        drop(st);
        if room {
            self.room.notify_waiters();
        }
    }

    /// Stops accepting items; the writer drains what is queued, then stops.
    pub fn close(&self) {
        self.lock().closed = true;
        self.ready.notify_one();
        self.room.notify_waiters();
    }

    /// Drops everything still queued (after the writer gave up).
    pub fn clear(&self) {
        let mut st = self.lock();
        st.frames = Frames::default();
        st.taken = Taken::default();
        st.in_flight = 0;
        st.fds = 0;
        st.settle(self.budget.as_deref());
    }

    /// Bytes queued now, including the batch being written.
    pub fn pending_bytes(&self) -> usize {
        self.lock().pending()
    }

    /// Messages dropped so far.
    pub fn dropped(&self) -> u64 {
        self.lock().dropped_total
    }
}

impl Drop for Outbox {
    fn drop(&mut self) {
        // What is still queued goes with the connection.
        let charged = std::mem::take(&mut self.lock().charged);
        if let Some(b) = &self.budget {
            b.pending.fetch_sub(charged, Relaxed);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The rest of the batch being written went out.
    fn sent(ob: &Outbox) {
        ob.wrote(usize::MAX);
    }

    /// What a batch says, message by message: (sid, Some(dropped)) for a
    /// Lagged notice, (sid, None) for a message (alone or in a run).
    fn frames(batch: &mut Frames) -> Vec<(u64, Option<u64>)> {
        server_frames(batch)
            .into_iter()
            .flat_map(|(sid, what)| match what {
                Kind::Msg => vec![(sid, None)],
                Kind::Run(n) => vec![(sid, None); n],
                Kind::Lagged(d) => vec![(sid, Some(d))],
            })
            .collect()
    }

    #[derive(Debug, Clone, PartialEq, Eq)]
    enum Kind {
        Msg,
        /// A run of this many messages.
        Run(usize),
        Lagged(u64),
    }

    /// The frames of a batch, as sent: each one's sid and kind.
    fn server_frames(batch: &mut Frames) -> Vec<(u64, Kind)> {
        let batch = batch.copy_to_bytes(batch.remaining());
        let mut out = Vec::new();
        for_each_frame(&batch, |body| match codec::decode::<ServerFrame>(body).unwrap() {
            ServerFrame::Msg(m) => out.push((m.sid, Kind::Msg)),
            ServerFrame::Run { sid, frames } => {
                let mut n = 0;
                for_each_frame(frames, |f| {
                    assert!(wire::raw_pub(f).is_some(), "a run holds Pub frames");
                    n += 1;
                });
                out.push((sid, Kind::Run(n)));
            }
            ServerFrame::Lagged { sid, dropped } => out.push((sid, Kind::Lagged(dropped))),
            other => panic!("unexpected {other:?}"),
        });
        out
    }

    /// Calls `each` with every frame body of `bytes`, which holds whole frames.
    fn for_each_frame(bytes: &[u8], mut each: impl FnMut(&[u8])) {
        let mut frames = codec::whole_frames(bytes);
        for (_, body) in &mut frames {
            each(body);
        }
        assert_eq!(frames.end(), bytes.len());
    }

    /// `n` messages of `size` payload bytes back to back, as one read.
    fn read_of(n: usize, size: usize) -> Bytes {
        let m = msg(size);
        m.frame.repeat(n).into()
    }

    /// The messages in `read` (from [`read_of`]) and the run they make.
    fn run_in(read: &Bytes, n: usize, size: usize) -> (Vec<PubFrame<'_>>, RunSpan<'_>) {
        let each = read.len() / n;
        let msgs = read.chunks(each).map(|f| PubFrame::new(f, size)).collect();
        let run = RunSpan {
            read,
            range: 0..read.len(),
            msgs: n as u64,
            payload: (n * size) as u64,
            fan_out: true,
            headers: false,
        };
        (msgs, run)
    }

    fn msg(n: usize) -> Published {
        Published::encode("s", None, &vec![0; n])
    }

    #[tokio::test]
    async fn bound_drop_and_lag_in_order() {
        let m = msg(30);
        let m = m.frame();
        let cost = m.cost(1, false);
        let ob = Outbox::new(2 * cost + cost / 2, true);
        assert!(ob.try_push(1, false, m));
        assert!(ob.try_push(1, false, m));
        assert!(!ob.try_push(1, false, m));
        ob.record_drop(1);
        assert!(!ob.try_push(1, false, m));
        ob.record_drop(1);
        assert_eq!(ob.pending_bytes(), 2 * cost);
        assert_eq!(ob.dropped(), 2);

        let mut batch = Frames::default();
        let taken = ob.take(&mut batch).await.unwrap();
        assert_eq!(taken, Taken { msgs: 2, bytes: 60 });
        assert_eq!(frames(&mut batch), [(1, None), (1, None)]);
        // The batch being written still counts against the bound.
        assert!(!ob.try_push(1, false, m));
        ob.record_drop(1);
        sent(&ob);
        // Queue drained with unreported drops: the notice comes out on its own.
        assert_eq!(ob.take(&mut batch).await, Some(Taken::default()));
        assert_eq!(frames(&mut batch), [(1, Some(3))]);
        sent(&ob);

        // A later drop is reported in front of the next delivery.
        ob.record_drop(1);
        assert!(ob.try_push(1, false, m));
        ob.take(&mut batch).await.unwrap();
        assert_eq!(frames(&mut batch), [(1, Some(1)), (1, None)]);
        sent(&ob);
        ob.close();
        assert_eq!(ob.take(&mut batch).await, None);
        assert_eq!(ob.pending_bytes(), 0);
    }

    #[tokio::test]
    async fn a_budget_bounds_every_queue_of_a_principal_together() {
        let m = msg(30);
        let m = m.frame();
        let cost = m.cost(7, false);
        let budget = Arc::new(Budget::new(3 * cost));
        let a = Outbox::new(10 * cost, true).with_budget(Some(budget.clone()));
        let b = Outbox::new(10 * cost, true).with_budget(Some(budget.clone()));
        // Each queue has room for ten; the two together for three.
        a.push_many(7, (false, false), &[m; 2], None);
        b.push_many(7, (false, false), &[m; 2], None);
        assert_eq!((a.dropped(), b.dropped()), (0, 1));
        assert_eq!(budget.pending(), 3 * cost);
        // Written out, the bytes are given back.
        let mut batch = Frames::default();
        a.take(&mut batch).await.unwrap();
        assert_eq!(budget.pending(), 3 * cost, "in flight still counts");
        sent(&a);
        assert_eq!(budget.pending(), cost);
        // A closed connection's queue goes with it.
        drop(b);
        assert_eq!(budget.pending(), 0);
    }

    #[tokio::test]
    async fn push_many_matches_one_at_a_time() {
        let m = msg(30);
        let m = m.frame();
        let cost = m.cost(7, false);
        let ob = Outbox::new(2 * cost + cost / 2, true);
        // Two fit, three are dropped and counted.
        ob.push_many(7, (false, false), &[m; 5], None);
        assert_eq!((ob.pending_bytes(), ob.dropped()), (2 * cost, 3));
        let mut batch = Frames::default();
        ob.take(&mut batch).await.unwrap();
        assert_eq!(frames(&mut batch), [(7, None), (7, None)]);
        sent(&ob);
        // The loss is reported ahead of the next message that fits.
        ob.push_many(7, (false, false), &[m], None);
        ob.take(&mut batch).await.unwrap();
        assert_eq!(frames(&mut batch), [(7, Some(3)), (7, None)]);
    }

    #[tokio::test]
    async fn written_bytes_stop_counting_before_the_batch_is_done() {
        let m = msg(30);
        let m = m.frame();
        let cost = m.cost(1, false);
        let ob = Outbox::new(2 * cost, true);
        assert!(ob.try_push(1, false, m));
        assert!(ob.try_push(1, false, m));
        let mut batch = Frames::default();
        ob.take(&mut batch).await.unwrap();
        // All of it is being written: no room.
        assert!(!ob.try_push(1, false, m));
        // The socket took the first message: room for one.
        ob.wrote(cost);
        assert!(ob.try_push(1, false, m));
        assert!(!ob.try_push(1, false, m));
        assert_eq!(ob.pending_bytes(), 2 * cost);
        ob.wrote(cost);
        sent(&ob);
        assert_eq!(ob.pending_bytes(), cost);
    }

    #[test]
    fn frames_grow_in_chunks_and_read_back_in_order() {
        let mut f = Frames::default();
        let mut expected = Vec::new();
        for i in 0..5000u32 {
            let item = vec![(i % 251) as u8; 1 + (i as usize * 7) % 300];
            expected.extend_from_slice(&item);
            f.append(item.len(), |b| b.extend_from_slice(&item));
        }
        // One frame larger than a chunk gets its own.
        let big = vec![9u8; CHUNK + 1];
        expected.extend_from_slice(&big);
        f.append(big.len(), |b| b.extend_from_slice(&big));
        assert!(f.chunks.len() > 2);
        assert!(f.chunks.iter().all(|c| c.bytes().len() <= CHUNK + 1));
        assert_eq!(f.remaining(), expected.len());

        // Read back partly through vectored slices, then by chunk.
        let mut got = Vec::new();
        f.advance(0);
        let first = f.chunk().len() - 3;
        got.extend_from_slice(&f.chunk()[..first]);
        f.advance(first);
        let mut slices = [IoSlice::new(&[]); 4];
        let n = f.chunks_vectored(&mut slices);
        assert_eq!(n, 4);
        let taken: usize = slices.iter().map(|s| s.len()).sum();
        for s in &slices {
            got.extend_from_slice(s);
        }
        f.advance(taken);
        while f.has_remaining() {
            let c = f.chunk().len();
            got.extend_from_slice(f.chunk());
            f.advance(c);
        }
        assert_eq!(got, expected);
        assert!(f.chunks.is_empty() && f.spare.is_some());
    }

    #[tokio::test]
    async fn control_frames_use_the_slack() {
        let m = msg(30);
        let ob = Outbox::new(m.frame().cost(1, false), true);
        assert!(ob.try_push(1, false, m.frame()));
        // Over the bound for messages, still room for a control frame.
        assert!(!ob.try_push(1, false, m.frame()));
        assert!(ob.push_frame(&[0; 100]));
        assert!(!ob.push_frame(&vec![0; CONTROL_SLACK]));
    }

    #[tokio::test]
    async fn a_run_goes_as_one_frame_copied_or_shared() {
        // Small: copied into the queue.
        let read = read_of(10, 100);
        let (msgs, run) = run_in(&read, 10, 100);
        assert!(read.len() < SHARE_MIN);
        let ob = Outbox::new(1 << 20, true);
        ob.push_many(3, (false, false), &msgs, Some(&run));
        assert_eq!(ob.pending_bytes(), run.cost(3));
        let mut batch = Frames::default();
        assert_eq!(
            ob.take(&mut batch).await,
            Some(Taken {
                msgs: 10,
                bytes: 1000
            })
        );
        assert!(batch.chunks.iter().all(|c| matches!(c, Chunk::Own(_))));
        assert_eq!(server_frames(&mut batch), [(3, Kind::Run(10))]);
        sent(&ob);

        // Large, for several subscribers: the queue holds the read itself,
        // behind the run's head. For one subscriber: a copy.
        let read = read_of(3, SHARE_MIN / 2);
        let (msgs, run) = run_in(&read, 3, SHARE_MIN / 2);
        let alone = RunSpan {
            fan_out: false,
            headers: false,
            ..run.clone()
        };
        for (run, shared) in [(&run, true), (&alone, false)] {
            ob.push_many(3, (false, false), &msgs, Some(run));
            ob.take(&mut batch).await.unwrap();
            let at = batch.chunks.iter().find_map(|c| match c {
                Chunk::Shared(b) => Some(b.as_ptr()),
                Chunk::Own(_) => None,
            });
            assert_eq!(at, shared.then(|| read.as_ptr()));
            assert_eq!(server_frames(&mut batch), [(3, Kind::Run(3))]);
            sent(&ob);
        }
    }

    #[tokio::test]
    async fn a_run_that_does_not_fit_or_cannot_be_read_goes_one_by_one() {
        let read = read_of(5, 30);
        let (msgs, run) = run_in(&read, 5, 30);
        let cost = msgs[0].cost(7, false);
        // Room for two messages, not for the run: two go, three are dropped.
        let ob = Outbox::new(2 * cost + cost / 2, true);
        ob.push_many(7, (false, false), &msgs, Some(&run));
        assert_eq!((ob.pending_bytes(), ob.dropped()), (2 * cost, 3));
        let mut batch = Frames::default();
        ob.take(&mut batch).await.unwrap();
        assert_eq!(server_frames(&mut batch), [(7, Kind::Msg), (7, Kind::Msg)]);
        sent(&ob);
        // The loss is reported ahead of the next run.
        let one_run = RunSpan {
            range: 0..msgs[0].frame.len(),
            msgs: 1,
            ..run.clone()
        };
        ob.push_many(7, (false, false), &msgs[..1], Some(&one_run));
        ob.take(&mut batch).await.unwrap();
        assert_eq!(
            server_frames(&mut batch),
            [(7, Kind::Lagged(3)), (7, Kind::Run(1))]
        );
        sent(&ob);

        // A version 2 peer gets every message as a `Msg`.
        let old = Outbox::new(1 << 20, false);
        old.push_many(7, (false, false), &msgs, Some(&run));
        old.take(&mut batch).await.unwrap();
        assert_eq!(server_frames(&mut batch), vec![(7, Kind::Msg); 5]);
    }
}
