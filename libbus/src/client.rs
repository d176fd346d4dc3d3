//! The client: a cheap-to-clone [`Bus`] handle over one daemon connection.
//!
//! Two tasks own the socket. The writer drains one shared output buffer: every
//! call encodes its frame straight into that buffer (under a short std mutex)
//! and wakes the writer, so many frames leave in one `write`. The reader
//! decodes frames and routes them: messages to their subscription's channel,
//! replies to the waiting request, `Pong`s to waiting flushes, and it answers
//! the daemon's `Ping`s itself.

use std::{
    collections::{HashMap, VecDeque},
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc, Mutex, MutexGuard,
    },
    time::Duration,
};

use futures_util::StreamExt;
use serde::{de::DeserializeOwned, Serialize};
use tokio::{
    io::AsyncWriteExt,
    sync::{mpsc, oneshot, Notify},
    task::JoinHandle,
};
use tokio_util::codec::FramedRead;

use crate::{
    codec::{self, CodecError},
    proto::{self, ClientFrame, ServerFrame},
    subject,
    transport::{self, Half},
    Address, Delivery, Error, Message, Result, Subscription,
};

/// Tunables for one connection. `ConnectOptions::default()` is what
/// [`Bus::connect`] uses.
#[derive(Debug, Clone)]
pub struct ConnectOptions {
    /// Name shown by `bus-cli list`. Default: the program's file name.
    pub name: String,
    /// Bound on connecting plus the handshake. Default 5 s.
    pub connect_timeout: Duration,
    /// Default bound on [`Bus::request`] and [`Bus::flush`]. Default 5 s.
    pub request_timeout: Duration,
    /// Deliveries buffered per subscription before the connection stops
    /// reading (and the daemon starts queueing, then dropping). Default 8192.
    pub subscription_capacity: usize,
    /// Bytes of unsent frames after which `publish` waits for the socket.
    /// Default 8 MiB.
    pub max_write_buffer: usize,
}

impl Default for ConnectOptions {
    fn default() -> Self {
        let name = std::env::args_os()
            .next()
            .and_then(|a| {
                std::path::Path::new(&a)
                    .file_name()
                    .map(|n| n.to_string_lossy().into_owned())
            })
            .unwrap_or_else(|| "libbus".into());
        Self {
            name,
            connect_timeout: Duration::from_secs(5),
            request_timeout: Duration::from_secs(5),
            subscription_capacity: 8192,
            max_write_buffer: 8 << 20,
        }
    }
}

impl ConnectOptions {
    /// Sets the client name.
    pub fn name(mut self, name: impl Into<String>) -> Self {
        self.name = name.into();
        self
    }
    /// Sets the default request timeout.
    pub fn request_timeout(mut self, t: Duration) -> Self {
        self.request_timeout = t;
        self
    }
    /// Sets the per-subscription buffer.
    pub fn subscription_capacity(mut self, n: usize) -> Self {
        self.subscription_capacity = n.max(1);
        self
    }
}

/// A connection to the bus. Clone it freely: clones share the connection,
/// which closes when the last clone (and the last [`Subscription`]) is dropped
/// or on [`Bus::close`].
#[derive(Clone, Debug)]
pub struct Bus {
    pub(crate) shared: Arc<Shared>,
    handle: Arc<Handle>,
}

/// Owns the tasks; dropping it ends the connection.
#[derive(Debug)]
struct Handle {
    shared: Arc<Shared>,
    reader: JoinHandle<()>,
    writer: Mutex<Option<JoinHandle<()>>>,
}

impl Drop for Handle {
    fn drop(&mut self) {
        // The writer sends what is buffered, then drops its half (EOF for the daemon).
        self.shared.close_output(None);
        self.reader.abort();
    }
}

/// Frames waiting for the writer.
#[derive(Debug, Default)]
struct Output {
    buf: Vec<u8>,
    /// No more frames are accepted; the writer exits once `buf` is sent.
    closed: bool,
}

/// Deliveries handed to a subscription at once: the reader groups what one
/// socket read brought in, so a busy subscription costs one channel send per
/// read rather than per message.
pub(crate) type Batch = Vec<Delivery>;

/// Largest batch; also bounded by the subscription's capacity.
const MAX_BATCH: usize = 256;

/// A request waiting for its reply: its subject (for errors) and where the reply goes.
type PendingReply = (String, oneshot::Sender<Result<Message>>);

/// State shared by handles, tasks, subscriptions and messages.
#[derive(Debug)]
pub(crate) struct Shared {
    opts: ConnectOptions,
    conn_id: u64,
    server_id: String,
    max_frame: u32,
    output: Mutex<Output>,
    /// Wakes the writer: frames were added, or output closed.
    output_ready: Notify,
    /// Wakes publishers waiting for buffer space.
    output_space: Notify,
    subs: Mutex<HashMap<u64, mpsc::Sender<Batch>>>,
    next_sid: AtomicU64,
    /// Flushes waiting for their `Pong`, in send order. Locked inside `output`.
    pongs: Mutex<VecDeque<oneshot::Sender<()>>>,
    /// Sid of the `_INBOX.<id>.>` subscription (0 = not yet made).
    inbox_sid: AtomicU64,
    inbox_prefix: String,
    requests: Mutex<HashMap<u64, PendingReply>>,
    next_request: AtomicU64,
    /// Why the connection ended, once it has.
    closed: Mutex<Option<String>>,
    /// The daemon's last `Error` message, reported when it then closes.
    last_error: Mutex<Option<String>>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A poisoned lock only means another thread panicked mid-update of plain
    // data; the data is still usable.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Bus {
    /// Connects to the daemon at `address` with default options.
    ///
    /// ```no_run
    /// # async fn f() -> libbus::Result<()> {
    /// let bus = libbus::Bus::connect(&"unix:/run/user/1000/bus/busd.sock".parse()?).await?;
    /// # Ok(()) }
    /// ```
    pub async fn connect(address: &Address) -> Result<Bus> {
        Self::connect_with(address, ConnectOptions::default()).await
    }

    /// Connects to the default address (`$BUS_ADDRESS`, else the default socket path).
    pub async fn connect_default() -> Result<Bus> {
        Self::connect(&Address::from_env()?).await
    }

    /// Connects with explicit options.
    pub async fn connect_with(address: &Address, opts: ConnectOptions) -> Result<Bus> {
        let t = opts.connect_timeout;
        tokio::time::timeout(t, Self::connect_inner(address, opts))
            .await
            .map_err(|_| Error::Timeout(t))?
    }

    async fn connect_inner(address: &Address, opts: ConnectOptions) -> Result<Bus> {
        let Address::Unix(path) = address;
        let no_daemon = |source| Error::NoDaemon {
            address: address.to_string(),
            source,
        };
        let stream = transport::connect_unix(path).await.map_err(no_daemon)?;
        let (rx, mut tx) = transport::split(stream);

        let mut buf = Vec::new();
        let hello = ClientFrame::Hello(proto::Hello {
            version: proto::PROTOCOL_VERSION,
            name: &opts.name,
            role: proto::Role::Client,
            auth: None,
        });
        codec::encode_into(&hello, &mut buf, proto::DEFAULT_MAX_FRAME).map_err(codec_err)?;
        tx.write_all(&buf).await?;

        let mut frames = FramedRead::new(rx, codec::frame_codec(proto::DEFAULT_MAX_FRAME));
        let first = frames.next().await.ok_or(Error::Disconnected {
            reason: Some("daemon closed the connection during the handshake".into()),
        })??;
        let welcome = match codec::decode::<ServerFrame>(&first).map_err(codec_err)? {
            ServerFrame::Welcome(w) => w,
            ServerFrame::Error { code, message } => {
                return Err(Error::Server {
                    code,
                    message: message.into(),
                })
            }
            other => return Err(Error::Protocol(format!("expected Welcome, got {other:?}"))),
        };
        // A delivery carries the published frame plus a sid: allow some slack.
        frames
            .decoder_mut()
            .set_max_frame(welcome.max_frame as usize + 64);

        let shared = Arc::new(Shared {
            conn_id: welcome.conn_id,
            server_id: welcome.server_id.to_owned(),
            max_frame: welcome.max_frame,
            output: Mutex::new(Output {
                buf: Vec::with_capacity(64 << 10),
                closed: false,
            }),
            output_ready: Notify::new(),
            output_space: Notify::new(),
            subs: Mutex::new(HashMap::new()),
            next_sid: AtomicU64::new(1),
            pongs: Mutex::new(VecDeque::new()),
            inbox_sid: AtomicU64::new(0),
            inbox_prefix: format!("{}{:016x}.", subject::INBOX_PREFIX, fastrand::u64(..)),
            requests: Mutex::new(HashMap::new()),
            next_request: AtomicU64::new(1),
            closed: Mutex::new(None),
            last_error: Mutex::new(None),
            opts,
        });
        let writer = tokio::spawn(write_loop(shared.clone(), tx));
        let reader = tokio::spawn(read_loop(shared.clone(), frames));
        let handle = Arc::new(Handle {
            shared: shared.clone(),
            reader,
            writer: Mutex::new(Some(writer)),
        });
        Ok(Bus { shared, handle })
    }

    /// This connection's id in the daemon (the ID column of `bus-cli list`).
    pub fn conn_id(&self) -> u64 {
        self.shared.conn_id
    }

    /// The daemon instance's random id.
    pub fn server_id(&self) -> &str {
        &self.shared.server_id
    }

    /// Largest frame the daemon accepts; bigger publishes fail with
    /// [`Error::LimitExceeded`].
    pub fn max_frame(&self) -> u32 {
        self.shared.max_frame
    }

    /// Publishes `payload` to `subject`. Returns once the frame is buffered;
    /// waits only while the output buffer is full. Use [`flush`](Self::flush)
    /// to wait until the daemon has routed it.
    ///
    /// ```no_run
    /// # async fn f(bus: libbus::Bus) -> libbus::Result<()> {
    /// bus.publish("sensors.kitchen.temp", "21.5").await?;
    /// # Ok(()) }
    /// ```
    pub async fn publish(&self, subject: &str, payload: impl AsRef<[u8]>) -> Result<()> {
        self.shared.publish(subject, None, payload.as_ref()).await
    }

    /// Publishes with an explicit reply subject.
    pub async fn publish_with_reply(
        &self,
        subject: &str,
        reply_to: &str,
        payload: impl AsRef<[u8]>,
    ) -> Result<()> {
        subject::validate_subject(reply_to)?;
        self.shared
            .publish(subject, Some(reply_to), payload.as_ref())
            .await
    }

    /// Publishes a value encoded with postcard; decode it with [`Message::decode`].
    pub async fn publish_value<T: Serialize>(&self, subject: &str, value: &T) -> Result<()> {
        self.publish(subject, postcard::to_allocvec(value)?).await
    }

    /// Subscribes to `pattern` (`*` = one token, `>` = the rest). Returns after
    /// the daemon has registered it, so messages published afterwards by anyone
    /// are delivered.
    ///
    /// ```no_run
    /// # async fn f(bus: libbus::Bus) -> libbus::Result<()> {
    /// let mut sub = bus.subscribe("sensors.*.temp").await?;
    /// while let Some(msg) = sub.next().await {
    ///     println!("{}: {:?}", msg.subject(), msg.payload());
    /// }
    /// # Ok(()) }
    /// ```
    pub async fn subscribe(&self, pattern: &str) -> Result<Subscription> {
        self.subscribe_inner(pattern, None).await
    }

    /// Subscribes as a member of queue group `group`: each message matching
    /// `pattern` goes to exactly one member of the group.
    pub async fn queue_subscribe(&self, pattern: &str, group: &str) -> Result<Subscription> {
        if group.is_empty() || group.chars().any(|c| c.is_whitespace() || c.is_control()) {
            return Err(Error::InvalidSubject(subject::SubjectError::Whitespace(
                group.into(),
            )));
        }
        self.subscribe_inner(pattern, Some(group)).await
    }

    async fn subscribe_inner(&self, pattern: &str, queue: Option<&str>) -> Result<Subscription> {
        subject::validate_pattern(pattern)?;
        let sid = self.shared.next_sid.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = mpsc::channel(self.shared.batches_per_subscription());
        lock(&self.shared.subs).insert(sid, tx);
        // From here on, dropping `sub` unsubscribes, also on the error path.
        let sub = Subscription {
            sid,
            rx,
            buffered: Vec::new().into_iter(),
            bus: self.clone(),
            dropped: 0,
        };
        self.shared
            .send_now(&ClientFrame::Sub(proto::Sub { sid, pattern, queue }))?;
        self.flush().await?;
        Ok(sub)
    }

    /// Sends a request and waits for the first reply, up to the default
    /// request timeout. Fails at once with [`Error::NoResponders`] when nothing
    /// subscribes to `subject`, else with [`Error::Timeout`].
    ///
    /// ```no_run
    /// # async fn f(bus: libbus::Bus) -> libbus::Result<()> {
    /// let reply = bus.request("echo", "ping").await?;
    /// # Ok(()) }
    /// ```
    pub async fn request(&self, subject: &str, payload: impl AsRef<[u8]>) -> Result<Message> {
        self.request_with_timeout(subject, payload, self.shared.opts.request_timeout)
            .await
    }

    /// [`request`](Self::request) with its own timeout.
    pub async fn request_with_timeout(
        &self,
        subject: &str,
        payload: impl AsRef<[u8]>,
        timeout: Duration,
    ) -> Result<Message> {
        subject::validate_publish(subject)?;
        let shared = &self.shared;
        shared.ensure_inbox()?;
        let n = shared.next_request.fetch_add(1, Ordering::Relaxed);
        let reply_to = format!("{}{n}", shared.inbox_prefix);
        let (tx, rx) = oneshot::channel();
        lock(&shared.requests).insert(n, (subject.to_owned(), tx));
        let _pending = PendingRequest { shared, n };
        shared.publish(subject, Some(&reply_to), payload.as_ref()).await?;
        match tokio::time::timeout(timeout, rx).await {
            Ok(Ok(result)) => result,
            Ok(Err(_)) => Err(shared.disconnected()),
            Err(_) => Err(Error::Timeout(timeout)),
        }
    }

    /// Sends a postcard-encoded request and decodes the postcard reply.
    pub async fn request_value<T: Serialize, R: DeserializeOwned>(
        &self,
        subject: &str,
        value: &T,
    ) -> Result<R> {
        self.request(subject, postcard::to_allocvec(value)?)
            .await?
            .decode()
    }

    /// Waits until the daemon has processed everything sent so far (a
    /// `Ping`/`Pong` round trip), bounded by the request timeout.
    pub async fn flush(&self) -> Result<()> {
        let rx = self.shared.send_ping()?;
        let t = self.shared.opts.request_timeout;
        match tokio::time::timeout(t, rx).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(_)) => Err(self.shared.disconnected()),
            Err(_) => Err(Error::Timeout(t)),
        }
    }

    /// Flushes, then ends the connection. Other clones see
    /// [`Error::Disconnected`] afterwards.
    pub async fn close(&self) -> Result<()> {
        let flushed = self.flush().await;
        self.shared.close_output(Some("closed by the client".into()));
        let writer = lock(&self.handle.writer).take();
        if let Some(w) = writer {
            let _ = tokio::time::timeout(self.shared.opts.request_timeout, w).await;
        }
        self.handle.reader.abort();
        flushed
    }

    /// True once the connection has ended.
    pub fn is_closed(&self) -> bool {
        lock(&self.shared.closed).is_some()
    }

    /// [`Error::Disconnected`] with the reason the connection ended (if it has).
    pub fn disconnected_error(&self) -> Error {
        self.shared.disconnected()
    }
}

/// Removes a request's entry when the request ends early (timeout, drop).
struct PendingRequest<'a> {
    shared: &'a Shared,
    n: u64,
}

impl Drop for PendingRequest<'_> {
    fn drop(&mut self) {
        lock(&self.shared.requests).remove(&self.n);
    }
}

fn codec_err(e: CodecError) -> Error {
    match e {
        CodecError::TooLarge { max, .. } => Error::LimitExceeded {
            limit: "max_frame",
            value: max.into(),
        },
        CodecError::Postcard(e) => Error::Protocol(e.to_string()),
    }
}

impl Shared {
    pub(crate) fn disconnected(&self) -> Error {
        Error::Disconnected {
            reason: lock(&self.closed).clone(),
        }
    }

    /// Buffers a publish, waiting while the output buffer is over its bound.
    pub(crate) async fn publish(&self, subject: &str, reply_to: Option<&str>, payload: &[u8]) -> Result<()> {
        subject::validate_publish(subject)?;
        let frame = ClientFrame::Pub(proto::Pub {
            subject,
            reply_to,
            payload,
        });
        loop {
            if self.buffer(&frame, true)? {
                return Ok(());
            }
            // Full: register for "space", then look again so a wake-up that
            // came in between is not lost.
            let space = self.output_space.notified();
            tokio::pin!(space);
            space.as_mut().enable();
            if self.buffer(&frame, true)? {
                return Ok(());
            }
            space.await;
        }
    }

    /// Encodes `frame` into the output buffer and wakes the writer. With
    /// `bounded`, returns `Ok(false)` instead when the buffer is full.
    fn buffer(&self, frame: &ClientFrame<'_>, bounded: bool) -> Result<bool> {
        let mut out = lock(&self.output);
        if out.closed {
            drop(out);
            return Err(self.disconnected());
        }
        if bounded && out.buf.len() >= self.opts.max_write_buffer {
            return Ok(false);
        }
        let was_empty = out.buf.is_empty();
        codec::encode_into(frame, &mut out.buf, self.max_frame).map_err(codec_err)?;
        drop(out);
        // The writer only waits once it has found the buffer empty.
        if was_empty {
            self.output_ready.notify_one();
        }
        Ok(true)
    }

    /// Buffers a small control frame without waiting for space.
    fn send_now(&self, frame: &ClientFrame<'_>) -> Result<()> {
        self.buffer(frame, false).map(|_| ())
    }

    /// Buffers a `Ping` and registers for its `Pong`.
    fn send_ping(&self) -> Result<oneshot::Receiver<()>> {
        let (tx, rx) = oneshot::channel();
        let mut out = lock(&self.output);
        if out.closed {
            drop(out);
            return Err(self.disconnected());
        }
        codec::encode_into(&ClientFrame::Ping, &mut out.buf, self.max_frame).map_err(codec_err)?;
        lock(&self.pongs).push_back(tx);
        drop(out);
        self.output_ready.notify_one();
        Ok(rx)
    }

    fn ensure_inbox(&self) -> Result<()> {
        if self.inbox_sid.load(Ordering::Acquire) != 0 {
            return Ok(());
        }
        // Hold the output lock so two first requests make one inbox.
        let mut out = lock(&self.output);
        if self.inbox_sid.load(Ordering::Acquire) != 0 {
            return Ok(());
        }
        if out.closed {
            drop(out);
            return Err(self.disconnected());
        }
        let sid = self.next_sid.fetch_add(1, Ordering::Relaxed);
        let pattern = format!("{}>", self.inbox_prefix);
        let frame = ClientFrame::Sub(proto::Sub {
            sid,
            pattern: &pattern,
            queue: None,
        });
        codec::encode_into(&frame, &mut out.buf, self.max_frame).map_err(codec_err)?;
        self.inbox_sid.store(sid, Ordering::Release);
        drop(out);
        self.output_ready.notify_one();
        Ok(())
    }

    pub(crate) fn unsubscribe(&self, sid: u64) {
        if lock(&self.subs).remove(&sid).is_some() {
            // Fails only when the connection is gone, and then there is nothing to undo.
            let _ = self.send_now(&ClientFrame::Unsub { sid });
        }
    }

    /// Stops accepting frames; the writer exits after sending what is buffered.
    /// With a reason, also marks the connection as ended.
    fn close_output(&self, reason: Option<String>) {
        lock(&self.output).closed = true;
        let mut closed = lock(&self.closed);
        if closed.is_none() {
            *closed = Some(reason.unwrap_or_else(|| "closed by the client".into()));
        }
        drop(closed);
        self.output_ready.notify_one();
        self.output_space.notify_waiters();
    }

    /// The connection ended: wake and fail everyone waiting on it.
    fn fail(&self, reason: String) {
        {
            let mut closed = lock(&self.closed);
            if closed.is_none() {
                *closed = Some(reason);
            }
        }
        self.close_output(None);
        lock(&self.subs).clear();
        lock(&self.pongs).clear();
        let pending: Vec<_> = lock(&self.requests).drain().collect();
        for (_, (_, tx)) in pending {
            let _ = tx.send(Err(self.disconnected()));
        }
    }

    /// Deliveries per batch: at most `MAX_BATCH` and the subscription capacity.
    fn batch_size(&self) -> usize {
        self.opts.subscription_capacity.clamp(1, MAX_BATCH)
    }

    /// Channel slots per subscription, so that about `subscription_capacity`
    /// deliveries are buffered in all.
    fn batches_per_subscription(&self) -> usize {
        (self.opts.subscription_capacity / self.batch_size()).max(1)
    }

    /// Hands each pending batch to its subscription, in order.
    async fn deliver_all(&self, pending: &mut Vec<(u64, Batch)>) {
        for (sid, batch) in pending.drain(..) {
            self.deliver(sid, batch).await;
        }
    }

    async fn deliver(&self, sid: u64, batch: Batch) {
        let blocked = {
            let subs = lock(&self.subs);
            let Some(tx) = subs.get(&sid) else { return };
            match tx.try_send(batch) {
                Ok(()) => return,
                Err(mpsc::error::TrySendError::Full(b)) => (tx.clone(), b),
                Err(mpsc::error::TrySendError::Closed(_)) => return,
            }
        };
        // The subscriber is behind: stop reading until it catches up, so the
        // daemon's bounded queue (not our memory) absorbs the burst.
        let _ = blocked.0.send(blocked.1).await;
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

async fn write_loop(shared: Arc<Shared>, mut tx: Half) {
    let mut batch = Vec::with_capacity(64 << 10);
    loop {
        let closed = {
            let mut out = lock(&shared.output);
            std::mem::swap(&mut out.buf, &mut batch);
            out.closed
        };
        if batch.is_empty() {
            if closed {
                break;
            }
            shared.output_ready.notified().await;
            continue;
        }
        shared.output_space.notify_waiters();
        if let Err(e) = tx.write_all(&batch).await {
            shared.fail(format!("write failed: {e}"));
            break;
        }
        batch.clear();
        if batch.capacity() > 4 << 20 {
            batch.shrink_to(64 << 10);
        }
    }
    // The socket closes when the reader's half is dropped too.
}

/// True if `buf` holds at least one complete frame.
fn frame_buffered(buf: &[u8]) -> bool {
    match buf.get(..proto::LEN_PREFIX) {
        Some(len) => {
            let len = u32::from_le_bytes([len[0], len[1], len[2], len[3]]) as usize;
            buf.len() >= proto::LEN_PREFIX + len
        }
        None => false,
    }
}

/// Adds `d` to the pending batch of `sid`; true if that batch is now full.
fn add_pending(pending: &mut Vec<(u64, Batch)>, sid: u64, d: Delivery, max: usize) -> bool {
    let i = match pending.iter().position(|(s, _)| *s == sid) {
        Some(i) => i,
        None => {
            pending.push((sid, Vec::with_capacity(8)));
            pending.len() - 1
        }
    };
    pending[i].1.push(d);
    pending[i].1.len() >= max
}

async fn read_loop(shared: Arc<Shared>, mut frames: FramedRead<Half, codec::FrameCodec>) {
    let max_batch = shared.batch_size();
    let mut pending: Vec<(u64, Batch)> = Vec::new();
    let reason = loop {
        // Hand over what this read brought in before waiting on the socket.
        if !pending.is_empty() && !frame_buffered(frames.read_buffer()) {
            shared.deliver_all(&mut pending).await;
        }
        let frame = match frames.next().await {
            None => break "daemon closed the connection".to_owned(),
            Some(Err(e)) => break format!("read failed: {e}"),
            Some(Ok(f)) => f.freeze(),
        };
        let decoded = match codec::decode::<ServerFrame>(&frame) {
            Ok(f) => f,
            Err(e) => break format!("bad frame from daemon: {e}"),
        };
        match decoded {
            ServerFrame::Msg(m) => {
                let msg = Message {
                    subject: frame.slice_ref(m.subject.as_bytes()),
                    reply_to: m.reply_to.map(|r| frame.slice_ref(r.as_bytes())),
                    payload: frame.slice_ref(m.payload),
                    // Only requests can be answered; others skip the refcount.
                    shared: m.reply_to.map(|_| shared.clone()),
                };
                if m.sid == shared.inbox_sid.load(Ordering::Acquire) {
                    shared.complete_request(m.subject, |_| Ok(msg));
                } else if add_pending(&mut pending, m.sid, Delivery::Message(msg), max_batch) {
                    shared.deliver_all(&mut pending).await;
                }
            }
            ServerFrame::Lagged { sid, dropped } => {
                if add_pending(&mut pending, sid, Delivery::Lagged(dropped), max_batch) {
                    shared.deliver_all(&mut pending).await;
                }
            }
            ServerFrame::NoResponders { reply_to } => {
                shared.complete_request(reply_to, |subject| Err(Error::NoResponders { subject }));
            }
            ServerFrame::Ping => {
                if shared.send_now(&ClientFrame::Pong).is_err() {
                    break "connection closed".into();
                }
            }
            ServerFrame::Pong => {
                if let Some(tx) = lock(&shared.pongs).pop_front() {
                    let _ = tx.send(());
                }
            }
            ServerFrame::Error { code, message } => {
                // Fatal errors are followed by a close; keep reading until then
                // and report the message as the reason.
                tracing::warn!(?code, message, "bus daemon reported an error");
                *lock(&shared.last_error) = Some(message.to_owned());
            }
            ServerFrame::Welcome(_) => break "unexpected Welcome from daemon".into(),
        }
    };
    let reason = match lock(&shared.last_error).take() {
        Some(err) => format!("{reason}: {err}"),
        None => reason,
    };
    // What arrived before the end is still handed over, without waiting.
    {
        let subs = lock(&shared.subs);
        for (sid, batch) in pending.drain(..) {
            if let Some(tx) = subs.get(&sid) {
                let _ = tx.try_send(batch);
            }
        }
    }
    shared.fail(reason);
}
