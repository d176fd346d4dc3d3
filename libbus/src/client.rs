//! The client: a cheap-to-clone [`Bus`] handle over a self-healing daemon
//! connection.
//!
//! Every call encodes its frame straight into one shared output buffer (under
//! a short spin lock, `OutputLock`) and wakes the writer task, so many frames
//! leave in one `write`. The driver task reads frames and routes them:
//! messages to their subscription's channel, replies to the waiting request,
//! `Pong`s to waiting flushes, and it answers the daemon's `Ping`s itself.
//! When the link fails it reconnects ([`crate::session`]); the buffer, the
//! subscriptions and the `Bus` handles survive.

use std::{
    collections::{HashMap, VecDeque},
    marker::PhantomData,
    sync::{
        atomic::{AtomicU32, AtomicU64, Ordering},
        Arc, Mutex, MutexGuard,
    },
    time::Duration,
};

use serde::{de::DeserializeOwned, Serialize};
use tokio::{
    sync::{broadcast, mpsc, oneshot, Notify, Semaphore, TryAcquireError},
    task::JoinHandle,
};

use crate::{
    batch::Messages,
    codec::{self, CodecError},
    events::{Event, Events},
    proto::{self, ClientFrame, ErrorCode},
    same_head,
    session::{self, Link, Reconnect},
    subject, wire, Address, Error, Message, Result, Subscription,
};

/// Tunables for one connection. `ConnectOptions::default()` is what
/// [`Bus::connect`] uses.
#[derive(Debug, Clone)]
pub struct ConnectOptions {
    /// Name shown by `bus-cli list`. Default: the program's file name.
    pub name: String,
    /// Bound on connecting plus the handshake (also per reconnect attempt). Default 5 s.
    pub connect_timeout: Duration,
    /// Default bound on [`Bus::request`] and [`Bus::flush`]. Default 5 s.
    pub request_timeout: Duration,
    /// Deliveries buffered per subscription before the connection stops
    /// reading (and the daemon starts queueing, then dropping). Default 8192.
    pub subscription_capacity: usize,
    /// Bytes of unsent frames after which `publish` waits for the socket
    /// (which holds `socket_buffer` more). Default 1 MiB: a publisher that
    /// outruns the daemon then waits while what it wrote is still in cache
    /// (measured against 8 MiB: 1 -> 1 at 128 B ran 6-7% faster with either
    /// publish API; 16 KiB and fan-out the same).
    pub max_write_buffer: usize,
    /// Room offered to each read of the socket, in bytes (more for a larger
    /// frame). Received messages share the buffer of the read they arrived
    /// in. Default 64 KiB: a busy subscriber takes in about 400 messages of
    /// 128 B per system call (8 KiB cost it about a quarter more CPU per
    /// message).
    pub read_buffer: usize,
    /// Largest room offered to one read, in bytes: reads grow from
    /// `read_buffer` toward it to take in about 64 messages at a time when
    /// messages are large (a 16 KiB stream reads 1 MiB at a time). A
    /// received message keeps the buffer of its read alive, so this also
    /// bounds what one kept message can hold on to. Default 1 MiB.
    pub max_read_buffer: usize,
    /// Send buffer (`SO_SNDBUF`) of a Unix-socket connection, in bytes; 0
    /// keeps the system default. Default 1 MiB
    /// ([`DEFAULT_SOCKET_BUFFER`](crate::transport::DEFAULT_SOCKET_BUFFER)).
    /// TCP connections keep the kernel's autotuning.
    pub socket_buffer: usize,
    /// How to reconnect after the link fails; `None` closes the `Bus`
    /// instead. Default: [`Reconnect::default`].
    pub reconnect: Option<Reconnect>,
    /// `reconnect_buffer`: bytes of publishes held while disconnected (sent
    /// after reconnecting); beyond it `publish` fails with
    /// [`Error::LimitExceeded`]. Default 8 MiB.
    pub reconnect_buffer: usize,
    /// Token for `tcp://` and `tls://` daemons. Default: `$BUS_TOKEN`.
    pub token: Option<String>,
    /// PEM file of the CA that signed a `tls://` daemon's certificate.
    /// Default: `$BUS_CA`.
    pub ca_file: Option<std::path::PathBuf>,
}

/// Environment variable with the token for TCP and TLS daemons.
pub const ENV_TOKEN: &str = "BUS_TOKEN";
/// Environment variable naming the CA file (PEM) for `tls://` daemons.
pub const ENV_CA: &str = "BUS_CA";

fn env_nonempty(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.is_empty())
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
            max_write_buffer: 1 << 20,
            read_buffer: 64 << 10,
            max_read_buffer: 1 << 20,
            socket_buffer: crate::transport::DEFAULT_SOCKET_BUFFER,
            reconnect: Some(Reconnect::default()),
            reconnect_buffer: 8 << 20,
            token: env_nonempty(ENV_TOKEN),
            ca_file: env_nonempty(ENV_CA).map(Into::into),
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
    /// Sets the reconnection policy; `None` disables reconnecting.
    pub fn reconnect(mut self, policy: Option<Reconnect>) -> Self {
        self.reconnect = policy;
        self
    }
    /// Sets the token for TCP and TLS daemons.
    pub fn token(mut self, token: impl Into<String>) -> Self {
        self.token = Some(token.into());
        self
    }
    /// Sets the CA file (PEM) that `tls://` daemons are verified against.
    pub fn ca_file(mut self, path: impl Into<std::path::PathBuf>) -> Self {
        self.ca_file = Some(path.into());
        self
    }
    /// Sets [`socket_buffer`](Self::socket_buffer) (0: the system default).
    pub fn socket_buffer(mut self, bytes: usize) -> Self {
        self.socket_buffer = bytes;
        self
    }
    /// Sets the bound on publishes buffered while disconnected.
    pub fn reconnect_buffer(mut self, bytes: usize) -> Self {
        self.reconnect_buffer = bytes;
        self
    }
}

/// A connection to the bus. Clone it freely: clones share the connection,
/// which closes when the last clone (and the last [`Subscription`]) is dropped
/// or on [`Bus::close`].
///
/// If the daemon goes away, the `Bus` reconnects (see
/// [`ConnectOptions::reconnect`]): subscriptions are re-established and carry
/// on, publishes are buffered meanwhile, in-flight requests fail with
/// [`Error::Disconnected`]. [`Bus::events`] reports each step.
#[derive(Clone, Debug)]
pub struct Bus {
    pub(crate) shared: Arc<Shared>,
    handle: Arc<Handle>,
}

/// Owns the driver task; dropping it ends the connection.
#[derive(Debug)]
struct Handle {
    shared: Arc<Shared>,
    driver: JoinHandle<()>,
}

impl Drop for Handle {
    fn drop(&mut self) {
        // The writer sends what is buffered, then drops its half (EOF for the daemon).
        self.shared.close_output(None);
        self.driver.abort();
    }
}

/// Frames waiting for the writer, and the link state.
#[derive(Debug, Default)]
pub(crate) struct Output {
    pub buf: Vec<u8>,
    /// No more frames are accepted; the writer exits once `buf` is sent.
    pub closed: bool,
    /// A link is up (else frames wait for the next one).
    pub connected: bool,
    /// Encodes publishes; its last subject passed validation, so a stream
    /// of publishes to one subject checks it once.
    pub pubs: same_head::Encoder,
}

/// The lock on [`Output`]. Every publish takes it, so it is a spin lock:
/// its release is a plain store, where `std::sync::Mutex`'s is an atomic
/// swap that waits for the frame just encoded to reach the cache (a futex
/// lock must look for sleepers as it lets go). 1 -> 1 at 128 B, 7 rounds
/// against `std::sync::Mutex`: plain publishes +6.6% msgs/s (13.76 ->
/// 14.67 M), batched +2%, fan-out +4%. [`lock`](Self::lock) spins
/// briefly, then yields.
#[derive(Debug)]
pub(crate) struct OutputLock(spin::mutex::SpinMutex<Output>);

/// The held [`OutputLock`]. Not `Send`, like `std::sync::MutexGuard`: a
/// task cannot hold it across an `.await`, where a thread waiting for the
/// lock would spin until that task ran again.
pub(crate) struct OutputGuard<'a> {
    guard: spin::mutex::SpinMutexGuard<'a, Output>,
    _not_send: PhantomData<*const ()>,
}

/// Looks at a held output lock this many times before yielding the thread
/// between looks. Holders keep it for one frame's encode or a buffer swap
/// (tens of ns), so a wait is usually over within a few looks; but
/// `publish_batch` encodes up to `max_write_buffer` under it, and a holder
/// can be preempted, and spinning then would only delay it.
const OUTPUT_SPINS: u32 = 100;

impl OutputLock {
    pub(crate) fn new(output: Output) -> Self {
        Self(spin::mutex::SpinMutex::new(output))
    }

    /// Takes the lock: looks [`OUTPUT_SPINS`] times, then yields the
    /// thread between looks.
    pub(crate) fn lock(&self) -> OutputGuard<'_> {
        let mut spins = 0;
        loop {
            if let Some(guard) = self.0.try_lock() {
                return OutputGuard {
                    guard,
                    _not_send: PhantomData,
                };
            }
            while self.0.is_locked() {
                if spins < OUTPUT_SPINS {
                    spins += 1;
                    std::hint::spin_loop();
                } else {
                    std::thread::yield_now();
                }
            }
        }
    }
}

impl std::ops::Deref for OutputGuard<'_> {
    type Target = Output;

    fn deref(&self) -> &Output {
        &self.guard
    }
}

impl std::ops::DerefMut for OutputGuard<'_> {
    fn deref_mut(&mut self) -> &mut Output {
        &mut self.guard
    }
}

/// Deliveries handed to a subscription at once: the reader groups what one
/// socket read brought in, so a busy subscription costs one channel send per
/// read rather than per message.
#[derive(Debug)]
pub(crate) enum Batch {
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
            Batch::Lagged(_) => 1,
        }
    }
}

/// Deliveries gathered from one read, per subscription, in arrival order.
pub(crate) type Pending = Vec<(u64, Batch)>;

/// What became of a frame offered to the output buffer.
enum Put {
    Buffered,
    /// Over `max_write_buffer`: wait for space.
    Full,
    /// The connection is closed for good.
    Closed,
}

/// Largest batch; also bounded by the subscription's capacity.
const MAX_BATCH: usize = 256;

/// A request waiting for its reply: its subject (for errors) and where the reply goes.
type PendingReply = (String, oneshot::Sender<Result<Message>>);

/// A live subscription: where its deliveries go, and what to re-send after a
/// reconnect.
#[derive(Debug)]
pub(crate) struct SubEntry {
    tx: mpsc::UnboundedSender<Batch>,
    /// Deliveries the subscription may still take: `subscription_capacity`
    /// permits, taken per delivery handed over, returned as it consumes them.
    space: Arc<Semaphore>,
    pattern: String,
    queue: Option<String>,
}

/// State shared by handles, tasks, subscriptions and messages.
#[derive(Debug)]
pub(crate) struct Shared {
    pub opts: ConnectOptions,
    pub address: Address,
    conn_id: AtomicU64,
    max_frame: AtomicU32,
    server_id: Mutex<String>,
    pub output: OutputLock,
    /// Wakes the writer: frames were added, or output closed.
    pub output_ready: Notify,
    /// Wakes publishers waiting for buffer space.
    pub output_space: Notify,
    /// The current link's writer task.
    writer: Mutex<Option<JoinHandle<()>>>,
    subs: Mutex<HashMap<u64, SubEntry>>,
    /// Subscribes waiting for the daemon's verdict: `Some` once refused.
    refused: Mutex<HashMap<u64, Option<Error>>>,
    next_sid: AtomicU64,
    /// Flushes waiting for their `Pong`, in send order. Locked inside `output`.
    pongs: Mutex<VecDeque<oneshot::Sender<()>>>,
    /// Sid of the `_INBOX.<id>.>` subscription (0 = not yet made).
    pub inbox_sid: AtomicU64,
    inbox_prefix: String,
    requests: Mutex<HashMap<u64, PendingReply>>,
    next_request: AtomicU64,
    /// Why the connection ended for good, once it has.
    closed: Mutex<Option<String>>,
    /// Why the current link is down, while reconnecting.
    down: Mutex<Option<String>>,
    /// The daemon's last `Error`, reported when it then closes.
    pub last_error: Mutex<Option<(ErrorCode, String)>>,
    events: broadcast::Sender<Event>,
}

pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
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

    /// Connects with explicit options. The first connection is not retried:
    /// with no daemon this fails at once with [`Error::NoDaemon`].
    pub async fn connect_with(address: &Address, opts: ConnectOptions) -> Result<Bus> {
        let t = opts.connect_timeout;
        let link = tokio::time::timeout(t, session::open(address, &opts))
            .await
            .map_err(|_| Error::Timeout(t))??;
        let shared = Arc::new(Shared {
            conn_id: AtomicU64::new(link.conn_id),
            max_frame: AtomicU32::new(link.max_frame),
            server_id: Mutex::new(String::new()),
            address: address.clone(),
            output: OutputLock::new(Output {
                buf: Vec::with_capacity(64 << 10),
                ..Output::default()
            }),
            output_ready: Notify::new(),
            output_space: Notify::new(),
            writer: Mutex::new(None),
            subs: Mutex::new(HashMap::new()),
            refused: Mutex::new(HashMap::new()),
            next_sid: AtomicU64::new(1),
            pongs: Mutex::new(VecDeque::new()),
            inbox_sid: AtomicU64::new(0),
            inbox_prefix: format!("{}{:016x}.", subject::INBOX_PREFIX, fastrand::u64(..)),
            requests: Mutex::new(HashMap::new()),
            next_request: AtomicU64::new(1),
            closed: Mutex::new(None),
            down: Mutex::new(None),
            last_error: Mutex::new(None),
            events: broadcast::channel(256).0,
            opts,
        });
        let frames = shared.start_link(link, None);
        let driver = tokio::spawn(session::drive(shared.clone(), frames));
        let handle = Arc::new(Handle {
            shared: shared.clone(),
            driver,
        });
        Ok(Bus { shared, handle })
    }

    /// This connection's id in the daemon (the ID column of `bus-cli list`);
    /// changes when the `Bus` reconnects.
    pub fn conn_id(&self) -> u64 {
        self.shared.conn_id.load(Ordering::Relaxed)
    }

    /// The daemon instance's random id (changes if the daemon restarted).
    pub fn server_id(&self) -> String {
        lock(&self.shared.server_id).clone()
    }

    /// Largest frame the daemon accepts; bigger publishes fail with
    /// [`Error::LimitExceeded`].
    pub fn max_frame(&self) -> u32 {
        self.shared.max_frame.load(Ordering::Relaxed)
    }

    /// Connection events: the current state first, then every change.
    ///
    /// ```no_run
    /// # async fn f(bus: libbus::Bus) {
    /// let mut events = bus.events();
    /// while let Some(e) = events.next().await {
    ///     eprintln!("bus: {e:?}");
    /// }
    /// # }
    /// ```
    pub fn events(&self) -> Events {
        let out = self.shared.output.lock();
        // Under the output lock no state change is in progress, so the
        // current state and the change stream line up.
        let current = if out.closed {
            Event::Closed {
                reason: lock(&self.shared.closed).clone().unwrap_or_default(),
            }
        } else if out.connected {
            Event::Connected {
                conn_id: self.conn_id(),
            }
        } else {
            Event::Disconnected {
                reason: lock(&self.shared.down).clone().unwrap_or_default(),
            }
        };
        Events::new(current, self.shared.events.subscribe())
    }

    /// True while a link to the daemon is up.
    pub fn is_connected(&self) -> bool {
        let out = self.shared.output.lock();
        out.connected && !out.closed
    }

    /// Publishes `payload` to `subject`. Returns once the frame is buffered;
    /// waits only while the output buffer is full. Use [`flush`](Self::flush)
    /// to wait until the daemon has routed it. While disconnected, publishes
    /// are held (up to `reconnect_buffer` bytes) and sent after reconnecting.
    ///
    /// ```no_run
    /// # async fn f(bus: libbus::Bus) -> libbus::Result<()> {
    /// bus.publish("sensors.kitchen.temp", "21.5").await?;
    /// # Ok(()) }
    /// ```
    pub async fn publish(&self, subject: &str, payload: impl AsRef<[u8]>) -> Result<()> {
        self.shared.publish(subject, None, payload.as_ref()).await
    }

    /// Publishes each `(subject, payload)` in order, as [`publish`](Self::publish)
    /// would one by one, but taking the connection's output buffer once per
    /// call (or per bufferful) rather than once per message: for producers
    /// of many small messages. On an error, the messages before the one that
    /// failed are published, the rest are not.
    ///
    /// ```no_run
    /// # async fn f(bus: libbus::Bus) -> libbus::Result<()> {
    /// let readings = [("sensors.kitchen.temp", "21.5"), ("sensors.hall.temp", "19.0")];
    /// bus.publish_batch(readings).await?;
    /// # Ok(()) }
    /// ```
    pub async fn publish_batch<S, P>(&self, msgs: impl IntoIterator<Item = (S, P)>) -> Result<()>
    where
        S: AsRef<str>,
        P: AsRef<[u8]>,
    {
        self.shared.publish_all(msgs.into_iter()).await
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
    /// are delivered. Fails with [`Error::Server`] if the daemon refuses it
    /// (e.g. `max_subscriptions`).
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
        let shared = &self.shared;
        let sid = shared.next_sid.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = mpsc::unbounded_channel();
        let space = Arc::new(Semaphore::new(shared.opts.subscription_capacity.max(1)));
        let entry = SubEntry {
            tx,
            space: space.clone(),
            pattern: pattern.to_owned(),
            queue: queue.map(ToOwned::to_owned),
        };
        lock(&shared.subs).insert(sid, entry);
        lock(&shared.refused).insert(sid, None);
        // From here on, dropping `sub` unsubscribes, also on the error path.
        let sub = Subscription {
            sid,
            rx,
            space,
            taken: 0,
            current: Default::default(),
            bus: self.clone(),
            dropped: 0,
        };
        let sent = shared.send_now(&ClientFrame::Sub(proto::Sub { sid, pattern, queue }));
        // The daemon answers a refusal before the flush's Pong.
        let flushed = match sent {
            Ok(()) => self.flush().await,
            Err(e) => Err(e),
        };
        let refusal = lock(&shared.refused).remove(&sid).flatten();
        match (refusal, flushed) {
            (Some(e), _) | (None, Err(e)) => Err(e),
            (None, Ok(())) => Ok(sub),
        }
    }

    /// Sends a request and waits for the first reply, up to the default
    /// request timeout. Fails at once with [`Error::NoResponders`] when nothing
    /// subscribes to `subject`, with [`Error::Disconnected`] if the link is
    /// down or fails before the reply, else with [`Error::Timeout`].
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
        // Registered first: a link lost from here on fails this request.
        if !self.is_connected() {
            return Err(shared.disconnected());
        }
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
    /// `Ping`/`Pong` round trip), bounded by the request timeout. While
    /// disconnected it waits for the next link; it fails with
    /// [`Error::Disconnected`] if its link is lost.
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
        let flushed = if self.is_connected() {
            self.flush().await
        } else {
            Ok(())
        };
        self.shared.close_output(Some("closed by the client".into()));
        let writer = lock(&self.shared.writer).take();
        if let Some(w) = writer {
            let _ = tokio::time::timeout(self.shared.opts.request_timeout, w).await;
        }
        self.handle.driver.abort();
        // End subscriptions and fail waiters (the driver no longer will).
        self.shared.fail("closed by the client".into());
        flushed
    }

    /// True once the connection has ended for good.
    pub fn is_closed(&self) -> bool {
        self.shared.is_closed()
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

pub(crate) fn codec_err(e: CodecError) -> Error {
    match e {
        CodecError::TooLarge { max, .. } => Error::LimitExceeded {
            limit: "max_frame",
            value: max.into(),
        },
        CodecError::Postcard(e) => Error::Protocol(e.to_string()),
    }
}

/// Keeps only the `Pub` frames of `buf`: control frames of a lost link are
/// stale (their subscriptions are re-sent, their pings were failed).
fn keep_publishes(buf: &mut Vec<u8>) {
    let mut kept = Vec::with_capacity(buf.len());
    let mut rest = &buf[..];
    while let Some(len) = rest.get(..proto::LEN_PREFIX) {
        let n = proto::LEN_PREFIX + u32::from_le_bytes([len[0], len[1], len[2], len[3]]) as usize;
        let Some(frame) = rest.get(..n) else { break };
        if frame.get(proto::LEN_PREFIX) == Some(&wire::PUB_TAG) {
            kept.extend_from_slice(frame);
        }
        rest = &rest[n..];
    }
    *buf = kept;
}

impl Shared {
    pub(crate) fn is_closed(&self) -> bool {
        lock(&self.closed).is_some()
    }

    pub(crate) fn disconnected(&self) -> Error {
        let reason = lock(&self.closed).clone().or_else(|| lock(&self.down).clone());
        Error::Disconnected { reason }
    }

    fn emit(&self, event: Event) {
        // No receivers is fine: nobody asked for events.
        let _ = self.events.send(event);
    }

    /// Takes a handshaken link into use: records its identity, spawns its
    /// writer and returns its reader. After a reconnect (`resubscribe` set to
    /// the attempt count), every live subscription is sent again, ahead of
    /// whatever was buffered meanwhile.
    pub(crate) fn start_link(self: &Arc<Self>, link: Link, attempts: Option<u32>) -> session::Frames {
        let Link {
            frames,
            writer,
            conn_id,
            server_id,
            max_frame,
        } = link;
        self.conn_id.store(conn_id, Ordering::Relaxed);
        self.max_frame.store(max_frame, Ordering::Relaxed);
        *lock(&self.server_id) = server_id;
        {
            let mut out = self.output.lock();
            if attempts.is_some() {
                let mut preamble = Vec::new();
                self.encode_subscriptions(&mut preamble, max_frame);
                preamble.extend_from_slice(&out.buf);
                out.buf = preamble;
            }
            out.connected = true;
            *lock(&self.down) = None;
            self.emit(match attempts {
                Some(attempts) => Event::Reconnected { conn_id, attempts },
                None => Event::Connected { conn_id },
            });
        }
        let task = tokio::spawn(session::write_loop(self.clone(), writer));
        *lock(&self.writer) = Some(task);
        self.output_ready.notify_one();
        frames
    }

    /// `Sub` frames for every live subscription and the request inbox.
    fn encode_subscriptions(&self, buf: &mut Vec<u8>, max_frame: u32) {
        let subs = lock(&self.subs);
        let mut sids: Vec<_> = subs.keys().copied().collect();
        sids.sort_unstable();
        let inbox = self.inbox_sid.load(Ordering::Acquire);
        let inbox_pattern = format!("{}>", self.inbox_prefix);
        let all = sids
            .iter()
            .filter_map(|sid| {
                subs.get(sid)
                    .map(|e| (*sid, e.pattern.as_str(), e.queue.as_deref()))
            })
            .chain((inbox != 0).then_some((inbox, inbox_pattern.as_str(), None)));
        for (sid, pattern, queue) in all {
            let frame = ClientFrame::Sub(proto::Sub { sid, pattern, queue });
            if let Err(e) = codec::encode_into(&frame, buf, max_frame) {
                tracing::warn!(sid, pattern, "cannot re-send subscription: {e}");
            }
        }
    }

    /// After a successful reconnect: resume with `link`. `None` if the bus
    /// was closed meanwhile.
    pub(crate) fn resume(self: &Arc<Self>, link: Link, attempts: u32) -> Option<session::Frames> {
        if self.is_closed() {
            return None;
        }
        tracing::info!(conn_id = link.conn_id, attempts, "bus connection re-established");
        Some(self.start_link(link, Some(attempts)))
    }

    /// Stops the current link's writer (the link has failed).
    pub(crate) async fn stop_writer(&self) {
        let writer = lock(&self.writer).take();
        if let Some(w) = writer {
            w.abort();
            let _ = w.await;
        }
    }

    /// The link failed and a reconnect follows: fail what waited on this
    /// link, keep what can be re-sent. False if the bus is closed.
    pub(crate) fn lose(&self, reason: &str) -> bool {
        let pending: Vec<_> = {
            let mut out = self.output.lock();
            if out.closed {
                return false;
            }
            out.connected = false;
            keep_publishes(&mut out.buf);
            *lock(&self.down) = Some(reason.to_owned());
            lock(&self.pongs).clear();
            self.emit(Event::Disconnected {
                reason: reason.to_owned(),
            });
            lock(&self.requests).drain().collect()
        };
        for (_, (_, tx)) in pending {
            let _ = tx.send(Err(self.disconnected()));
        }
        // Publishers waiting for space now see the disconnected bound.
        self.output_space.notify_waiters();
        true
    }

    /// Buffers a publish, waiting while the output buffer is over its bound.
    pub(crate) async fn publish(&self, subject: &str, reply_to: Option<&str>, payload: &[u8]) -> Result<()> {
        let frame = ClientFrame::Pub(proto::Pub {
            subject,
            reply_to,
            payload,
        });
        // The common case, room in the buffer, without entering the
        // waiting loop's future.
        if self.buffer(&frame, true)? {
            return Ok(());
        }
        self.until_buffered(|| self.buffer(&frame, true)).await
    }

    /// Calls `offer` (which buffers what it can: `Ok(true)` once all is
    /// buffered, `Ok(false)` while the buffer is full) until it has buffered
    /// everything, waiting for the writer to make room in between.
    async fn until_buffered(&self, mut offer: impl FnMut() -> Result<bool>) -> Result<()> {
        loop {
            if offer()? {
                return Ok(());
            }
            // Full: register for "space", then look again so a wake-up that
            // came in between is not lost.
            let space = self.output_space.notified();
            tokio::pin!(space);
            space.as_mut().enable();
            if offer()? {
                return Ok(());
            }
            space.await;
        }
    }

    /// Buffers the messages `msgs` yields, in order, waiting while the
    /// output buffer is full; takes the buffer's lock once per bufferful
    /// rather than once per message.
    pub(crate) async fn publish_all<S, P, I>(&self, msgs: I) -> Result<()>
    where
        S: AsRef<str>,
        P: AsRef<[u8]>,
        I: Iterator<Item = (S, P)>,
    {
        let mut msgs = msgs.peekable();
        self.until_buffered(|| self.buffer_all(&mut msgs)).await
    }

    /// Buffers messages from `msgs` while there is room; `Ok(true)` once all
    /// are buffered. Stops at the first that fails, leaving it in `msgs`.
    fn buffer_all<S, P, I>(&self, msgs: &mut std::iter::Peekable<I>) -> Result<bool>
    where
        S: AsRef<str>,
        P: AsRef<[u8]>,
        I: Iterator<Item = (S, P)>,
    {
        let mut out = self.output.lock();
        let was_empty = out.buf.is_empty();
        let mut put = Ok(Put::Buffered);
        while let Some((subject, payload)) = msgs.peek() {
            let frame = ClientFrame::Pub(proto::Pub {
                subject: subject.as_ref(),
                reply_to: None,
                payload: payload.as_ref(),
            });
            put = self.put(&mut out, &frame, true);
            if !matches!(put, Ok(Put::Buffered)) {
                break;
            }
            msgs.next();
        }
        self.buffered(out, was_empty, put)
    }

    /// Encodes `frame` into the output buffer and wakes the writer. With
    /// `bounded`, returns `Ok(false)` instead when the buffer is full, or
    /// (while disconnected) fails when `reconnect_buffer` would be exceeded.
    fn buffer(&self, frame: &ClientFrame<'_>, bounded: bool) -> Result<bool> {
        let mut out = self.output.lock();
        let was_empty = out.buf.is_empty();
        let put = self.put(&mut out, frame, bounded);
        self.buffered(out, was_empty, put)
    }

    /// Ends a `buffer*` call: releases the buffer, wakes the writer if it
    /// was empty and is no longer, and turns `put`'s outcome into the
    /// caller's (`Ok(false)`: full).
    fn buffered(&self, out: OutputGuard<'_>, was_empty: bool, put: Result<Put>) -> Result<bool> {
        // The writer only waits once it has found the buffer empty.
        let wake = was_empty && out.connected && !out.buf.is_empty();
        drop(out);
        if wake {
            self.output_ready.notify_one();
        }
        match put? {
            Put::Buffered => Ok(true),
            Put::Full => Ok(false),
            Put::Closed => Err(self.disconnected()),
        }
    }

    /// Encodes `frame` into `out` (see [`buffer`](Self::buffer)).
    fn put(&self, out: &mut Output, frame: &ClientFrame<'_>, bounded: bool) -> Result<Put> {
        let same_subject = match frame {
            ClientFrame::Pub(p) => {
                let same = out.pubs.is_last_subject(p.subject);
                if !same {
                    subject::validate_publish(p.subject)?;
                }
                same
            }
            _ => false,
        };
        if out.closed {
            return Ok(Put::Closed);
        }
        if bounded && out.connected && out.buf.len() >= self.opts.max_write_buffer {
            return Ok(Put::Full);
        }
        let before = out.buf.len();
        let max_frame = self.max_frame.load(Ordering::Relaxed);
        match frame {
            ClientFrame::Pub(p) => out.pubs.encode(p, same_subject, &mut out.buf, max_frame),
            other => codec::encode_into(other, &mut out.buf, max_frame),
        }
        .map_err(codec_err)?;
        if bounded && !out.connected && out.buf.len() > self.opts.reconnect_buffer {
            out.buf.truncate(before);
            return Err(Error::LimitExceeded {
                limit: "reconnect_buffer",
                value: self.opts.reconnect_buffer as u64,
            });
        }
        Ok(Put::Buffered)
    }

    /// Buffers a small control frame without waiting for space.
    pub(crate) fn send_now(&self, frame: &ClientFrame<'_>) -> Result<()> {
        self.buffer(frame, false).map(|_| ())
    }

    /// Buffers a `Ping` and registers for its `Pong`.
    fn send_ping(&self) -> Result<oneshot::Receiver<()>> {
        let (tx, rx) = oneshot::channel();
        let mut out = self.output.lock();
        if out.closed {
            drop(out);
            return Err(self.disconnected());
        }
        let max_frame = self.max_frame.load(Ordering::Relaxed);
        codec::encode_into(&ClientFrame::Ping, &mut out.buf, max_frame).map_err(codec_err)?;
        lock(&self.pongs).push_back(tx);
        drop(out);
        self.output_ready.notify_one();
        Ok(rx)
    }

    pub(crate) fn pong(&self) {
        if let Some(tx) = lock(&self.pongs).pop_front() {
            let _ = tx.send(());
        }
    }

    fn ensure_inbox(&self) -> Result<()> {
        if self.inbox_sid.load(Ordering::Acquire) != 0 {
            return Ok(());
        }
        // Hold the output lock so two first requests make one inbox.
        let mut out = self.output.lock();
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
        let max_frame = self.max_frame.load(Ordering::Relaxed);
        codec::encode_into(&frame, &mut out.buf, max_frame).map_err(codec_err)?;
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

    /// The daemon refused subscription `sid`: end it, and tell the waiting
    /// `subscribe` call (if any) why.
    pub(crate) fn sub_refused(&self, sid: u64, code: ErrorCode, message: &str) {
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
    pub(crate) fn lagged(&self, sid: u64, dropped: u64) {
        if self.events.receiver_count() == 0 {
            return;
        }
        let subject = lock(&self.subs).get(&sid).map(|e| e.pattern.clone());
        if let Some(subject) = subject {
            self.emit(Event::Lagged { subject, dropped });
        }
    }

    /// Stops accepting frames; the writer exits after sending what is buffered.
    /// With a reason, also marks the connection as ended.
    pub(crate) fn close_output(&self, reason: Option<String>) {
        let mut out = self.output.lock();
        out.closed = true;
        let mut closed = lock(&self.closed);
        if closed.is_none() {
            let reason = reason.unwrap_or_else(|| "closed by the client".into());
            self.emit(Event::Closed {
                reason: reason.clone(),
            });
            *closed = Some(reason);
        }
        drop(closed);
        drop(out);
        self.output_ready.notify_one();
        self.output_space.notify_waiters();
    }

    /// The connection ended for good: wake and fail everyone waiting on it.
    pub(crate) fn fail(&self, reason: String) {
        tracing::debug!(%reason, "bus connection closed");
        self.close_output(Some(reason));
        lock(&self.subs).clear();
        lock(&self.pongs).clear();
        let pending: Vec<_> = lock(&self.requests).drain().collect();
        for (_, (_, tx)) in pending {
            let _ = tx.send(Err(self.disconnected()));
        }
    }

    /// Deliveries per batch: at most `MAX_BATCH` and the subscription capacity.
    pub(crate) fn batch_size(&self) -> usize {
        self.opts.subscription_capacity.clamp(1, MAX_BATCH)
    }

    /// Hands each pending batch to its subscription, in order.
    pub(crate) async fn deliver_all(&self, pending: &mut Pending) {
        for (sid, batch) in pending.drain(..) {
            self.deliver(sid, batch).await;
        }
    }

    /// Hands over what can be handed over without waiting (the link ended).
    pub(crate) fn deliver_now(&self, pending: &mut Pending) {
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

    async fn deliver(&self, sid: u64, batch: Batch) {
        // A batch holds at most `batch_size()` <= `subscription_capacity`
        // deliveries, so it always fits once the subscriber has caught up.
        let n = batch.len() as u32;
        let (tx, space) = {
            let subs = lock(&self.subs);
            let Some(e) = subs.get(&sid) else { return };
            let room = match e.space.try_acquire_many(n) {
                Ok(permits) => {
                    permits.forget();
                    true
                }
                Err(TryAcquireError::Closed) => return,
                Err(TryAcquireError::NoPermits) => false,
            };
            if room {
                let _ = e.tx.send(batch);
                return;
            }
            (e.tx.clone(), e.space.clone())
        };
        // The subscriber is behind: stop reading until it catches up, so the
        // daemon's bounded queue (not our memory) absorbs the burst.
        let room = space.acquire_many(n).await.map(|permits| permits.forget());
        if room.is_ok() {
            let _ = tx.send(batch);
        }
    }

    pub(crate) fn complete_request(
        &self,
        reply_subject: &str,
        result: impl FnOnce(String) -> Result<Message>,
    ) {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn output_lock_excludes_and_outwaits_a_long_holder() {
        let output = Arc::new(OutputLock::new(Output::default()));
        // One thread holds the lock far past the spins, so the others go on
        // to yield; every append must still land, none interleaved.
        let held = output.lock();
        let threads: Vec<_> = (0..3u8)
            .map(|t| {
                let output = output.clone();
                std::thread::spawn(move || {
                    for _ in 0..1000 {
                        let mut out = output.lock();
                        out.buf.extend_from_slice(&[t; 8]);
                    }
                })
            })
            .collect();
        std::thread::sleep(Duration::from_millis(20));
        drop(held);
        for t in threads {
            t.join().expect("appending thread");
        }
        let out = output.lock();
        assert_eq!(out.buf.len(), 3 * 1000 * 8);
        assert!(out.buf.chunks(8).all(|c| c.iter().all(|&b| b == c[0])));
    }

    #[test]
    fn keep_publishes_drops_control_frames_only() {
        let mut buf = Vec::new();
        let frames = [
            ClientFrame::Ping,
            ClientFrame::Pub(proto::Pub {
                subject: "a",
                reply_to: None,
                payload: b"1",
            }),
            ClientFrame::Sub(proto::Sub {
                sid: 1,
                pattern: "x",
                queue: None,
            }),
            ClientFrame::Unsub { sid: 1 },
            ClientFrame::Pub(proto::Pub {
                subject: "b",
                reply_to: Some("r"),
                payload: b"2",
            }),
            ClientFrame::Pong,
        ];
        for f in &frames {
            codec::encode_into(f, &mut buf, u32::MAX).unwrap();
        }
        keep_publishes(&mut buf);
        let mut expected = Vec::new();
        codec::encode_into(&frames[1], &mut expected, u32::MAX).unwrap();
        codec::encode_into(&frames[4], &mut expected, u32::MAX).unwrap();
        assert_eq!(buf, expected);
    }

    #[test]
    fn backoff_doubles_to_the_cap_with_jitter() {
        let r = Reconnect {
            initial_delay: Duration::from_millis(100),
            max_delay: Duration::from_secs(2),
            max_attempts: None,
        };
        for (n, full) in [(0, 100), (1, 200), (3, 800), (5, 2000), (40, 2000)] {
            let d = r.delay(n).as_millis();
            assert!(d >= full / 2 && d <= full, "attempt {n}: {d} ms");
        }
    }
}
