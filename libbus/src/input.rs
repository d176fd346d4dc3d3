//! The input side of a connection: the reader loop of each link, dispatch
//! of the daemon's frames, and delivery to subscriptions and waiting
//! requests.
//!
//! [`read_loop`] reads as much as the socket has ([`codec::FrameReader`]),
//! walks the whole frames in place ([`codec::whole_frames`]) and dispatches
//! each ([`handle_frame`]): a `Msg` is located without decoding
//! ([`wire::raw_msg`]) and joins its subscription's pending batch; a `Run`
//! is handed over as it came, and the subscription decodes it as it is
//! taken; a reply completes its request. What one read brought in is
//! handed over per subscription in batches ([`Input::deliver_all`]), so a
//! busy subscription costs one channel send per read, not per message.

use std::{
    collections::HashMap,
    future::Future,
    ops::Range,
    pin::Pin,
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc, Mutex,
    },
};

use bytes::Bytes;
use tokio::sync::{mpsc, oneshot, Semaphore, TryAcquireError};

use crate::{
    codec,
    error::codec_err,
    events::Event,
    message::{Found, Messages},
    output::Output,
    proto::{self, ClientFrame, ErrorCode, NameReply, NameState, ServerFrame},
    subject,
    sync::lock,
    wire, ConnectOptions, Error, Message, Result,
};

/// The reading side of a link.
pub(crate) type Frames = codec::FrameReader<crate::transport::Reader>;

/// Deliveries handed to a subscription at once: the reader groups what one
/// socket read brought in, so a busy subscription costs one channel send per
/// read rather than per message.
#[derive(Debug)]
pub(crate) enum Batch {
    /// One message with file descriptors, made whole by the reader.
    One(Message),
    /// Messages in one received chunk, located by the reader or (a `Run`'s
    /// frames) decoded by the subscription as they are taken.
    Messages(Messages),
    /// The daemon dropped this many messages.
    Lagged(u64),
}

impl Batch {
    /// Deliveries in the batch (each takes one unit of subscription capacity).
    pub(crate) fn len(&self) -> usize {
        match self {
            Batch::Messages(m) => m.len(),
            Batch::One(_) | Batch::Lagged(_) => 1,
        }
    }
}

/// Deliveries gathered from one read, per subscription, in arrival order.
type Pending = Vec<(u64, Batch)>;

/// Largest batch; also bounded by the subscription's capacity.
const MAX_BATCH: usize = 256;

/// A request waiting for its reply: its subject (for errors) and where the reply goes.
type PendingReply = (String, oneshot::Sender<Result<Message>>);

/// A live subscription: where its deliveries go, and what to re-send after a
/// reconnect.
#[derive(Debug)]
struct SubEntry {
    tx: mpsc::UnboundedSender<Batch>,
    /// Deliveries the subscription may still take: `subscription_capacity`
    /// permits, taken per delivery handed over, returned as it consumes them.
    space: Arc<Semaphore>,
    pattern: String,
    queue: Option<String>,
    /// [`proto::sub_flags`] it was made with.
    flags: u32,
    /// Set for the calls to a well-known name (`pattern` is the name).
    name: Option<NameClaim>,
}

/// A name asked for: how, and where its changes of state go.
#[derive(Debug)]
struct NameClaim {
    flags: u8,
    states: mpsc::UnboundedSender<NameState>,
}

/// What a subscription's [`Subscription`](crate::Subscription) takes its
/// deliveries from.
#[derive(Debug)]
pub(crate) struct Receiver {
    /// The batches the reader hands over.
    pub rx: mpsc::UnboundedReceiver<Batch>,
    /// Room for deliveries (see `SubEntry::space`).
    pub space: Arc<Semaphore>,
}

/// The state the input side keeps across links: subscriptions, waiting
/// requests, and the request inbox.
#[derive(Debug)]
pub(crate) struct Input {
    subs: Mutex<HashMap<u64, SubEntry>>,
    /// Subscribes waiting for the daemon's verdict: `Some` once refused.
    refused: Mutex<HashMap<u64, Option<Error>>>,
    next_sid: AtomicU64,
    /// Sid of the `_INBOX.<id>.>` subscription (0 = not yet made).
    inbox_sid: AtomicU64,
    inbox_prefix: String,
    requests: Mutex<HashMap<u64, PendingReply>>,
    next_request: AtomicU64,
    /// `RequestName` / `ReleaseName` waiting for their answer, by serial.
    name_ops: Mutex<HashMap<u64, oneshot::Sender<Result<NameReply>>>>,
    /// The daemon's last `Error`, reported when it then closes.
    pub last_error: Mutex<Option<(ErrorCode, String)>>,
    /// An `Error` came in the last read: if the next read brings more, the
    /// connection went on (a refusal), and `last_error` is no reason for
    /// an end.
    error_seen: std::sync::atomic::AtomicBool,
    subscription_capacity: usize,
    room: ReadRoom,
}

impl Input {
    pub(crate) fn new(opts: &ConnectOptions) -> Self {
        Self {
            subs: Mutex::new(HashMap::new()),
            refused: Mutex::new(HashMap::new()),
            next_sid: AtomicU64::new(1),
            inbox_sid: AtomicU64::new(0),
            inbox_prefix: format!("{}{:016x}.", subject::INBOX_PREFIX, fastrand::u64(..)),
            requests: Mutex::new(HashMap::new()),
            next_request: AtomicU64::new(1),
            name_ops: Mutex::new(HashMap::new()),
            last_error: Mutex::new(None),
            error_seen: Default::default(),
            subscription_capacity: opts.subscription_capacity.max(1),
            room: ReadRoom::new(opts),
        }
    }

    /// Registers a new subscription to `pattern` and returns its sid and
    /// receiving end; its `Sub` frame is the caller's to send. Until
    /// [`verdict`](Self::verdict), a refusal from the daemon is kept.
    pub(crate) fn register(&self, pattern: &str, queue: Option<&str>, flags: u32) -> (u64, Receiver) {
        let (sid, receiver) = self.add(pattern, queue, flags, None);
        lock(&self.refused).insert(sid, None);
        (sid, receiver)
    }

    /// Registers the calls to well-known name `name`, asked for with
    /// `flags`: its sid, the receiving end of its calls, and where its
    /// changes of state come. Its `RequestName` is the caller's to send.
    pub(crate) fn register_name(
        &self,
        name: &str,
        flags: u8,
    ) -> (u64, Receiver, mpsc::UnboundedReceiver<NameState>) {
        let (states, states_rx) = mpsc::unbounded_channel();
        let (sid, receiver) = self.add(name, None, 0, Some(NameClaim { flags, states }));
        (sid, receiver, states_rx)
    }

    /// Adds an entry for a new sid: a subscription, or a name's calls.
    fn add(
        &self,
        pattern: &str,
        queue: Option<&str>,
        flags: u32,
        name: Option<NameClaim>,
    ) -> (u64, Receiver) {
        let sid = self.next_sid.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = mpsc::unbounded_channel();
        let space = Arc::new(Semaphore::new(self.subscription_capacity));
        let entry = SubEntry {
            tx,
            space: space.clone(),
            pattern: pattern.to_owned(),
            queue: queue.map(ToOwned::to_owned),
            flags,
            name,
        };
        lock(&self.subs).insert(sid, entry);
        (sid, Receiver { rx, space })
    }

    /// Stops taking calls on `sid` without releasing its name (the caller
    /// releases it).
    pub(crate) fn forget(&self, sid: u64) {
        lock(&self.subs).remove(&sid);
    }

    /// A serial for a `RequestName` or `ReleaseName`, and where its answer
    /// will come. The entry goes when the guard drops.
    pub(crate) fn new_name_op(&self) -> (u64, oneshot::Receiver<Result<NameReply>>, NameOpGuard<'_>) {
        let serial = self.next_request.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = oneshot::channel();
        lock(&self.name_ops).insert(serial, tx);
        (serial, rx, NameOpGuard { input: self, serial })
    }

    fn complete_name_op(&self, serial: u64, result: Result<NameReply>) {
        if let Some(tx) = lock(&self.name_ops).remove(&serial) {
            let _ = tx.send(result);
        }
    }

    /// A name's standing changed.
    fn name_state(&self, sid: u64, state: NameState) {
        if let Some(claim) = lock(&self.subs).get(&sid).and_then(|e| e.name.as_ref()) {
            let _ = claim.states.send(state);
        }
    }

    /// The daemon's refusal of subscription `sid`, if it refused it; stops
    /// keeping one.
    pub(crate) fn verdict(&self, sid: u64) -> Option<Error> {
        lock(&self.refused).remove(&sid).flatten()
    }

    /// Ends subscription `sid` and tells the daemon (for a name's calls:
    /// releases the name).
    pub(crate) fn unsubscribe(&self, output: &Output, sid: u64) {
        let Some(entry) = lock(&self.subs).remove(&sid) else {
            return;
        };
        // Fails only when the connection is gone, and then there is nothing to undo.
        let _ = match entry.name {
            Some(_) => output.send_now(&ClientFrame::ReleaseName {
                serial: 0,
                name: &entry.pattern,
                sid,
            }),
            None => output.send_now(&ClientFrame::Unsub { sid }),
        };
    }

    /// A reply subject for a new request, and where its reply will come.
    /// The request's entry goes when the returned guard drops.
    pub(crate) fn new_request(
        &self,
        subject: &str,
    ) -> (String, oneshot::Receiver<Result<Message>>, RequestGuard<'_>) {
        let n = self.next_request.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = oneshot::channel();
        lock(&self.requests).insert(n, (subject.to_owned(), tx));
        (
            format!("{}{n}", self.inbox_prefix),
            rx,
            RequestGuard { input: self, n },
        )
    }

    /// Subscribes the request inbox once, before the first request.
    pub(crate) fn ensure_inbox(&self, output: &Output) -> Result<()> {
        if self.inbox_sid.load(Ordering::Acquire) != 0 {
            return Ok(());
        }
        // Hold the output lock so two first requests make one inbox.
        let mut out = output.lock();
        if self.inbox_sid.load(Ordering::Acquire) != 0 {
            return Ok(());
        }
        if out.closed {
            drop(out);
            return Err(output.disconnected());
        }
        let sid = self.next_sid.fetch_add(1, Ordering::Relaxed);
        let pattern = format!("{}>", self.inbox_prefix);
        let frame = ClientFrame::Sub(proto::Sub {
            sid,
            pattern: &pattern,
            queue: None,
        });
        codec::encode_into(&frame, &mut out.buf, output.max_frame()).map_err(codec_err)?;
        self.inbox_sid.store(sid, Ordering::Release);
        drop(out);
        output.wake_writer();
        Ok(())
    }

    /// `Sub` frames for every live subscription and the request inbox: what
    /// a new link must hear first.
    pub(crate) fn encode_subscriptions(&self, max_frame: u32) -> Vec<u8> {
        let mut buf = Vec::new();
        let subs = lock(&self.subs);
        let mut sids: Vec<_> = subs.keys().copied().collect();
        sids.sort_unstable();
        let inbox = self.inbox_sid.load(Ordering::Acquire);
        let inbox_pattern = format!("{}>", self.inbox_prefix);
        let all = sids
            .iter()
            .filter_map(|sid| subs.get(sid).map(|e| (*sid, e)))
            .map(|(sid, e)| match &e.name {
                // A name is asked for again; what it gets comes as `NameState`.
                Some(claim) => ClientFrame::RequestName(proto::RequestName {
                    serial: 0,
                    sid,
                    name: &e.pattern,
                    flags: claim.flags,
                }),
                None => sub_frame(sid, &e.pattern, e.queue.as_deref(), e.flags),
            })
            .chain((inbox != 0).then(|| sub_frame(inbox, &inbox_pattern, None, 0)));
        for frame in all {
            if let Err(e) = codec::encode_into(&frame, &mut buf, max_frame) {
                tracing::warn!(?frame, "cannot re-send subscription: {e}");
            }
        }
        buf
    }

    /// The link is down: fails every request waiting for a reply, and
    /// every name operation, with `err()`; every name is lost (and asked
    /// for again on the next link).
    pub(crate) fn fail_requests(&self, err: impl Fn() -> Error) {
        let pending: Vec<_> = lock(&self.requests).drain().collect();
        for (_, (_, tx)) in pending {
            let _ = tx.send(Err(err()));
        }
        let ops: Vec<_> = lock(&self.name_ops).drain().collect();
        for (_, tx) in ops {
            let _ = tx.send(Err(err()));
        }
        for claim in lock(&self.subs).values().filter_map(|e| e.name.as_ref()) {
            let _ = claim.states.send(NameState::Lost);
        }
    }

    /// The connection ended for good: end every subscription and request.
    pub(crate) fn end(&self, err: impl Fn() -> Error) {
        lock(&self.subs).clear();
        self.fail_requests(err);
    }

    /// The daemon refused subscription `sid`: end it, and tell the waiting
    /// `subscribe` call (if any) why.
    fn sub_refused(&self, sid: u64, code: ErrorCode, message: &str) {
        tracing::warn!(sid, ?code, message, "subscription refused by the daemon");
        lock(&self.subs).remove(&sid);
        if let Some(slot) = lock(&self.refused).get_mut(&sid) {
            *slot = Some(Error::Server {
                code,
                message: message.to_owned(),
            });
        }
    }

    /// The daemon dropped `dropped` messages for `sid`: tell the event stream.
    fn lagged(&self, output: &Output, sid: u64, dropped: u64) {
        if !output.has_listeners() {
            return;
        }
        let subject = lock(&self.subs).get(&sid).map(|e| e.pattern.clone());
        if let Some(subject) = subject {
            output.emit(Event::Lagged { subject, dropped });
        }
    }

    /// Deliveries per batch: at most `MAX_BATCH` and the subscription capacity.
    fn batch_size(&self) -> usize {
        self.subscription_capacity.clamp(1, MAX_BATCH)
    }

    /// Hands each pending batch to its subscription, in order. False if
    /// the link's writer failed meanwhile (`broken`, the link's
    /// [`Output::broken`]): the link is over.
    async fn deliver_all(
        &self,
        pending: &mut Pending,
        mut broken: Pin<&mut impl Future<Output = ()>>,
    ) -> bool {
        for (sid, batch) in pending.drain(..) {
            if !self.deliver(sid, batch, broken.as_mut()).await {
                // What follows would arrive after a gap: it goes with the
                // link (the drain drops it).
                return false;
            }
        }
        true
    }

    /// Hands over what can be handed over without waiting (the link ended).
    fn deliver_now(&self, pending: &mut Pending) {
        let subs = lock(&self.subs);
        for (sid, batch) in pending.drain(..) {
            if let Some(e) = subs.get(&sid) {
                if let Ok(permits) = e.space.try_acquire_many(batch.len() as u32) {
                    permits.forget();
                    let _ = e.tx.send(batch);
                }
            }
        }
    }

    /// False if it had to wait and the link's writer failed meanwhile.
    async fn deliver(&self, sid: u64, batch: Batch, broken: Pin<&mut impl Future<Output = ()>>) -> bool {
        // A batch holds at most `batch_size()` <= `subscription_capacity`
        // deliveries, so it always fits once the subscriber has caught up.
        let n = batch.len() as u32;
        let (tx, space) = {
            let subs = lock(&self.subs);
            let Some(e) = subs.get(&sid) else { return true };
            let room = match e.space.try_acquire_many(n) {
                Ok(permits) => {
                    permits.forget();
                    true
                }
                Err(TryAcquireError::Closed) => return true,
                Err(TryAcquireError::NoPermits) => false,
            };
            if room {
                let _ = e.tx.send(batch);
                return true;
            }
            (e.tx.clone(), e.space.clone())
        };
        // The subscriber is behind: stop reading until it catches up, so the
        // daemon's bounded queue (not our memory) absorbs the burst.
        tokio::select! {
            room = space.acquire_many(n) => {
                if let Ok(permits) = room {
                    permits.forget();
                    let _ = tx.send(batch);
                }
                true
            }
            () = broken => false,
        }
    }

    fn complete_request(&self, reply_subject: &str, result: impl FnOnce(String) -> Result<Message>) {
        let Some(n) = reply_subject
            .strip_prefix(self.inbox_prefix.as_str())
            .and_then(|t| t.parse::<u64>().ok())
        else {
            return;
        };
        if let Some((subject, tx)) = lock(&self.requests).remove(&n) {
            let _ = tx.send(result(subject));
        }
    }
}

/// The frame that subscribes `sid` with [`proto::sub_flags`] `flags`: `Sub`
/// without any, `SubWith` for senders alone, else `SubFlags`.
pub(crate) fn sub_frame<'a>(
    sid: u64,
    pattern: &'a str,
    queue: Option<&'a str>,
    flags: u32,
) -> ClientFrame<'a> {
    match flags {
        0 => ClientFrame::Sub(proto::Sub { sid, pattern, queue }),
        proto::sub_flags::SENDER => ClientFrame::SubWith(proto::SubWith {
            sid,
            pattern,
            queue,
            sender: true,
        }),
        flags => ClientFrame::SubFlags(proto::SubFlags {
            sid,
            pattern,
            queue,
            flags,
        }),
    }
}

/// Removes a name operation's entry when it ends early.
pub(crate) struct NameOpGuard<'a> {
    input: &'a Input,
    serial: u64,
}

impl Drop for NameOpGuard<'_> {
    fn drop(&mut self) {
        lock(&self.input.name_ops).remove(&self.serial);
    }
}

/// Removes a request's entry when the request ends early (timeout, drop).
pub(crate) struct RequestGuard<'a> {
    input: &'a Input,
    n: u64,
}

impl Drop for RequestGuard<'_> {
    fn drop(&mut self) {
        lock(&self.input.requests).remove(&self.n);
    }
}

/// Adds message `found` (in `chunk`) to the pending batch of `sid`; true if
/// that batch is now full.
fn add_message(pending: &mut Pending, sid: u64, chunk: &Bytes, found: Found, max: usize) -> bool {
    // The latest batch of `sid`, unless a loss notice or a `Run` came after it.
    if let Some((_, Batch::Messages(m))) = pending.iter_mut().rev().find(|(s, _)| *s == sid) {
        if m.push(found) {
            return m.len() >= max;
        }
    }
    let list = vec![found];
    let full = list.len() >= max;
    pending.push((sid, Batch::Messages(Messages::found(chunk.clone(), list))));
    full
}

/// Adds the `Pub` frames `chunk[frames]` of a `Run` for subscription `sid`
/// to `pending` as they are, in batches of at most `max`, having checked
/// only that they are whole frames. Returns whether a batch is full, and
/// how many messages the run held.
fn add_run(
    pending: &mut Pending,
    sid: u64,
    chunk: &Bytes,
    frames: Range<usize>,
    max: usize,
) -> std::result::Result<(bool, usize), String> {
    let mut inner = codec::whole_frames(&chunk[frames.clone()]);
    let (mut full, mut msgs) = (false, 0);
    loop {
        let from = frames.start + inner.end();
        let count = inner.by_ref().take(max).count();
        if count == 0 {
            break;
        }
        let piece = from..frames.start + inner.end();
        pending.push((sid, Batch::Messages(Messages::frames(chunk.slice(piece), count))));
        full |= count == max;
        msgs += count;
    }
    if inner.end() != frames.len() {
        return Err(MALFORMED_RUN.to_owned());
    }
    Ok((full, msgs))
}

/// Why a link ends when a `Run` is not whole `Pub` frames.
const MALFORMED_RUN: &str = "bad frame from daemon: malformed Run";

/// Completes the request each reply in the `Run` `chunk[frames]` answers;
/// returns how many replies it held.
fn complete_replies(
    input: &Input,
    output: &Arc<Output>,
    chunk: &Bytes,
    frames: Range<usize>,
) -> std::result::Result<usize, String> {
    let mut inner = codec::whole_frames(&chunk[frames.clone()]);
    let mut msgs = 0;
    for (at, body) in &mut inner {
        msgs += 1;
        let p = wire::run_msg(body).ok_or(MALFORMED_RUN)?;
        let start = frames.start + at + proto::LEN_PREFIX;
        reply(input, output, chunk, Found::of_pub(start, body, &p));
    }
    if inner.end() != frames.len() {
        return Err(MALFORMED_RUN.to_owned());
    }
    Ok(msgs)
}

/// Sizes each read of a link to the messages coming in: room for about
/// [`READ_MSGS`] messages like those of the last read, from
/// `ConnectOptions::read_buffer` up to `max_read_buffer`.
#[derive(Debug, Clone, Copy)]
pub(crate) struct ReadRoom {
    min: usize,
    max: usize,
}

/// Messages a read should have room for. Small messages fill the minimum
/// room many times over; large ones get larger reads, so a stream of large
/// messages takes several per system call (a fixed 64 KiB read cost a
/// 64 KiB stream about a fifth of its rate).
const READ_MSGS: usize = 64;

impl ReadRoom {
    pub(crate) fn new(opts: &ConnectOptions) -> Self {
        Self {
            min: opts.read_buffer,
            max: opts.max_read_buffer.max(opts.read_buffer),
        }
    }

    /// Room for the next read, after one that brought `bytes` holding
    /// `msgs` messages.
    fn after(self, bytes: usize, msgs: usize) -> usize {
        match bytes.checked_div(msgs) {
            // A power of two, so that similar reads ask for the same room
            // and the buffer can be reused rather than reallocated.
            Some(each) => each
                .saturating_mul(READ_MSGS)
                .checked_next_power_of_two()
                .unwrap_or(usize::MAX)
                .clamp(self.min, self.max),
            None => self.min,
        }
    }
}

/// Reads one link until it ends; returns why.
pub(crate) async fn read_loop(input: &Input, output: &Arc<Output>, mut frames: Frames) -> String {
    let max_batch = input.batch_size();
    // Descriptors the daemon sends wait here for their `MsgFds` frames; it
    // sends each message's with its own bytes, at most the kernel's limit.
    let fds = frames.get_ref().received_fds();
    if let Some(fds) = &fds {
        fds.set_limit(crate::sys::MAX_FDS_PER_READ);
    }
    let room = input.room;
    let mut pending = Pending::new();
    // Registered once for the link, not per wait.
    let broken = output.broken();
    tokio::pin!(broken);
    let reason = 'link: loop {
        // Hand over what the last read brought in before waiting on the socket.
        if !pending.is_empty() && !input.deliver_all(&mut pending, broken.as_mut()).await {
            break "write failed".to_owned();
        }
        let chunk = match frames.read_frames().await {
            Ok(Some(chunk)) => chunk,
            Ok(None) => break "daemon closed the connection".to_owned(),
            Err(e) => break format!("read failed: {e}"),
        };
        // A load first: the read path takes no read-modify-write when
        // there was no error (nearly always).
        if input.error_seen.load(Ordering::Relaxed) && input.error_seen.swap(false, Ordering::Relaxed) {
            lock(&input.last_error).take();
        }
        let mut msgs = 0;
        for (at, body) in codec::whole_frames(&chunk) {
            let start = at + proto::LEN_PREFIX;
            let full = match handle_frame(
                input,
                output,
                (&chunk, fds.as_ref()),
                start,
                body,
                &mut pending,
                max_batch,
            ) {
                Ok(Handled::Other) => false,
                Ok(Handled::Msg { full }) => {
                    msgs += 1;
                    full
                }
                Ok(Handled::Run { sid, frames }) => {
                    // Replies are completed here; a subscription's run is
                    // handed over as it came, and the subscription decodes it.
                    let handled = if sid == input.inbox_sid.load(Ordering::Acquire) {
                        complete_replies(input, output, &chunk, frames).map(|n| (false, n))
                    } else {
                        add_run(&mut pending, sid, &chunk, frames, max_batch)
                    };
                    match handled {
                        Ok((full, n)) => {
                            msgs += n;
                            full
                        }
                        Err(reason) => break 'link reason,
                    }
                }
                Err(reason) => break 'link reason,
            };
            if full && !input.deliver_all(&mut pending, broken.as_mut()).await {
                break 'link "write failed".to_owned();
            }
        }
        frames.set_read_room(room.after(chunk.len(), msgs));
    };
    // What arrived before the end is still handed over, without waiting.
    input.deliver_now(&mut pending);
    reason
}

/// `msg` with the descriptors that came with it: a payload in a sealed
/// memfd (`Bus-Memfd` names its length) is mapped read-only and becomes
/// its payload; any other descriptor is the message's to hand out
/// (`take_fds`), as is a memfd that is not sealed as it must be (logged).
fn with_memfd_payload(msg: Message, mut fds: Vec<std::os::fd::OwnedFd>) -> Message {
    let len = msg
        .headers()
        .get(crate::headers::MEMFD)
        .and_then(|l| l.parse::<usize>().ok());
    if let (Some(len), 1) = (len, fds.len()) {
        match crate::sys::map_sealed(&fds[0], len) {
            Ok(map) => {
                fds.clear(); // The mapping outlives the descriptor.
                return msg.with_body(Bytes::from_owner(map));
            }
            Err(e) => tracing::warn!("a memfd payload on {:?} is not mapped: {e}", msg.subject()),
        }
    }
    msg.with_fds(fds)
}

/// What handling one frame left to do.
enum Handled {
    /// A delivery, handled; `full`: a batch is full, hand the pending ones
    /// over first.
    Msg { full: bool },
    /// Another kind of frame, handled.
    Other,
    /// Walk the deliveries of a `Run` for `sid`: its `Pub` frames are
    /// `chunk[frames]`.
    Run { sid: u64, frames: Range<usize> },
}

/// Handles one frame `body`, which starts at `start` in the received
/// `chunk`. `Err` ends the link.
fn handle_frame(
    input: &Input,
    output: &Arc<Output>,
    (chunk, fds): (&Bytes, Option<&crate::transport::ReceivedFds>),
    start: usize,
    body: &[u8],
    pending: &mut Pending,
    max_batch: usize,
) -> std::result::Result<Handled, String> {
    // The hot path: a delivery, located without building a `ServerFrame`.
    let at = |msg: wire::RawMsg<'_>| {
        let found = Found::new(start, body, msg.subject, msg.reply_to, msg.payload);
        (msg.sid, found)
    };
    // Where a `Run`'s frames lie in `chunk`.
    let run = |sid: u64, frames: &[u8]| {
        let at = start + (frames.as_ptr() as usize - body.as_ptr() as usize);
        Handled::Run {
            sid,
            frames: at..at + frames.len(),
        }
    };
    if let Some(msg) = wire::raw_msg(body) {
        let (sid, found) = at(msg);
        let full = on_msg(input, output, chunk, sid, found, pending, max_batch);
        return Ok(Handled::Msg { full });
    }
    if let Some((sid, frames)) = wire::raw_run(body) {
        return Ok(run(sid, frames));
    }
    if let Some((sid, sender, p)) = wire::raw_smsg(body) {
        let found = Found::of_pub(start, body, &p).with_sender(body, sender);
        let full = on_msg(input, output, chunk, sid, found, pending, max_batch);
        return Ok(Handled::Msg { full });
    }
    if let Some((msg, headers)) = wire::raw_hmsg(body) {
        let (sid, found) = at(msg);
        let found = found.with_headers(body, headers);
        let full = on_msg(input, output, chunk, sid, found, pending, max_batch);
        return Ok(Handled::Msg { full });
    }
    // Everything else goes to postcard.
    let decoded = match codec::decode::<ServerFrame>(body) {
        Ok(f) => f,
        Err(e) => return Err(format!("bad frame from daemon: {e}")),
    };
    // A delivery in an encoding the direct reader left to postcard, or
    // one with headers.
    let delivery = match &decoded {
        ServerFrame::Msg(m) => Some((m.sid, m.subject, m.reply_to, m.payload, None)),
        ServerFrame::HMsg(m) => Some((m.sid, m.subject, m.reply_to, m.payload, Some(m.headers))),
        _ => None,
    };
    if let Some((sid, subject, reply_to, payload, headers)) = delivery {
        let (sid, mut found) = at(wire::RawMsg {
            sid,
            subject: subject.as_bytes(),
            reply_to: reply_to.map(str::as_bytes),
            payload,
        });
        if let Some(headers) = headers {
            found = found.with_headers(body, headers);
        }
        let full = on_msg(input, output, chunk, sid, found, pending, max_batch);
        return Ok(Handled::Msg { full });
    }
    match decoded {
        ServerFrame::Msg(_) | ServerFrame::HMsg(_) => {} // handled above
        ServerFrame::MsgFds(m) => {
            let claimed = fds.and_then(|f| f.take(usize::from(m.fds)));
            let Some(claimed) = claimed else {
                return Err(format!(
                    "daemon sent a message with {} descriptors that did not come",
                    m.fds
                ));
            };
            let (sid, mut found) = at(wire::RawMsg {
                sid: m.sid,
                subject: m.subject.as_bytes(),
                reply_to: m.reply_to.map(str::as_bytes),
                payload: m.payload,
            });
            if !m.headers.is_empty() {
                found = found.with_headers(body, m.headers);
            }
            let msg = with_memfd_payload(Message::found_in(chunk, found, output), claimed);
            if sid == input.inbox_sid.load(Ordering::Acquire) {
                let subject = msg.subject().to_owned();
                input.complete_request(&subject, |_| Ok(msg));
            } else {
                pending.push((sid, Batch::One(msg)));
            }
        }
        // Only ever in the encoding raw_smsg reads (or malformed).
        ServerFrame::SMsg { .. } => return Err("malformed SMsg from daemon".into()),
        ServerFrame::Run { sid, frames } => return Ok(run(sid, frames)),
        ServerFrame::Lagged { sid, dropped } => {
            input.lagged(output, sid, dropped);
            pending.push((sid, Batch::Lagged(dropped)));
        }
        ServerFrame::NoResponders { reply_to } => {
            input.complete_request(reply_to, |subject| Err(Error::NoResponders { subject }));
        }
        ServerFrame::ResponderGone { reply_to } => {
            input.complete_request(reply_to, |subject| Err(Error::ResponderGone { subject }));
        }
        ServerFrame::SubRefused { sid, code, message } => {
            input.sub_refused(sid, code, message);
            output.emit(Event::Error {
                code,
                message: message.to_owned(),
            });
        }
        ServerFrame::Ping => {
            if output.send_now(&ClientFrame::Pong).is_err() {
                return Err("connection closed".into());
            }
        }
        ServerFrame::Pong => output.pong(),
        ServerFrame::Error { code, message } => {
            // Fatal errors are followed by a close; keep reading until then
            // and report the message as the reason.
            tracing::warn!(?code, message, "bus daemon reported an error");
            *lock(&input.last_error) = Some((code, message.to_owned()));
            input.error_seen.store(true, Ordering::Relaxed);
            output.emit(Event::Error {
                code,
                message: message.to_owned(),
            });
        }
        ServerFrame::Welcome(_) => return Err("unexpected Welcome from daemon".into()),
        ServerFrame::NameReply { serial, reply } => input.complete_name_op(serial, Ok(reply)),
        ServerFrame::NameRefused {
            serial,
            code,
            message,
        } => {
            let message = message.to_owned();
            input.complete_name_op(serial, Err(Error::Server { code, message }));
        }
        ServerFrame::NameState { sid, state, .. } => input.name_state(sid, state),
    }
    Ok(Handled::Other)
}

/// A delivery `found` in `chunk` for subscription `sid`: a reply completes
/// its request, anything else joins the subscription's pending batch. True
/// if that batch is now full.
fn on_msg(
    input: &Input,
    output: &Arc<Output>,
    chunk: &Bytes,
    sid: u64,
    found: Found,
    pending: &mut Pending,
    max_batch: usize,
) -> bool {
    if sid != input.inbox_sid.load(Ordering::Acquire) {
        return add_message(pending, sid, chunk, found, max_batch);
    }
    reply(input, output, chunk, found);
    false
}

/// A reply `found` in `chunk` completes its request; the message shares the
/// chunk, no copy.
fn reply(input: &Input, output: &Arc<Output>, chunk: &Bytes, found: Found) {
    let msg = Message::found_in(chunk, found, output);
    input.complete_request(found.subject_in(chunk), |_| Ok(msg));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_make_room_for_about_64_messages_within_the_bounds() {
        let room = ReadRoom {
            min: 64 << 10,
            max: 1 << 20,
        };
        // 128 B messages (in runs) and 1 KiB ones: the minimum, or the
        // power of two above 64 of them.
        assert_eq!(room.after(64 << 10, 440), 64 << 10);
        assert_eq!(room.after(66_000, 62), 128 << 10);
        // 16 KiB and 64 KiB messages: up to the maximum.
        assert_eq!(room.after(4 * 16_400, 4), 1 << 20);
        assert_eq!(room.after(65_600, 1), 1 << 20);
        // A read with no message (a Pong, a loss notice): back to the minimum.
        assert_eq!(room.after(9, 0), 64 << 10);
        // A maximum below the minimum is the minimum.
        let flat = ReadRoom::new(&ConnectOptions {
            read_buffer: 64 << 10,
            max_read_buffer: 1,
            ..ConnectOptions::default()
        });
        assert_eq!(flat.after(65_600, 1), 64 << 10);
    }

    /// `n` whole `Pub` frames after `skip` bytes of something else.
    fn run_of(n: usize, skip: usize) -> Bytes {
        let mut buf = vec![0xEE; skip];
        for i in 0..n {
            let payload = [i as u8; 3];
            let p = proto::Pub {
                subject: "s",
                reply_to: None,
                payload: &payload,
            };
            wire::encode_pub(&p, &mut buf, 1 << 20).unwrap();
        }
        Bytes::from(buf)
    }

    #[test]
    fn a_run_is_handed_over_in_pieces_of_at_most_a_batch() {
        let chunk = run_of(10, 5);
        let mut pending = Pending::new();
        let (full, msgs) = add_run(&mut pending, 7, &chunk, 5..chunk.len(), 4).unwrap();
        assert!(full, "a piece reached the batch size");
        assert_eq!(msgs, 10);
        let counts: Vec<usize> = pending
            .iter()
            .map(|(sid, b)| match b {
                Batch::Messages(m) if *sid == 7 => m.len(),
                other => panic!("unexpected {other:?}"),
            })
            .collect();
        assert_eq!(counts, [4, 4, 2]);
        // The pieces cover the run exactly, in order.
        let joined: Vec<u8> = pending
            .iter()
            .flat_map(|(_, b)| match b {
                Batch::Messages(m) => m.chunk().to_vec(),
                _ => unreachable!(),
            })
            .collect();
        assert_eq!(joined, chunk[5..]);

        let mut pending = Pending::new();
        assert_eq!(
            add_run(&mut pending, 7, &chunk, 5..chunk.len(), 256).unwrap(),
            (false, 10)
        );
        assert_eq!(pending.len(), 1);
    }

    #[test]
    fn a_run_that_is_not_whole_frames_ends_the_link() {
        let chunk = run_of(3, 0);
        let mut pending = Pending::new();
        assert!(add_run(&mut pending, 1, &chunk, 0..chunk.len() - 1, 256).is_err());
    }
}
