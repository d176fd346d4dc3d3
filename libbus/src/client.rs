//! The public API: [`Bus`], a cheap-to-clone handle over a self-healing
//! daemon connection, and the [`ConnectOptions`] it is opened with.
//!
//! Every call encodes its frame straight into the connection's output
//! buffer (`output.rs`) and wakes the writer, so many frames leave in
//! one `write`. The driver task ([`crate::session`]) reads and dispatches
//! what the daemon sends (`input.rs`), and reconnects when the link
//! fails; the buffer, the subscriptions and the `Bus` handles survive.

use std::{sync::Arc, time::Duration};

use serde::{de::DeserializeOwned, Serialize};

pub use crate::options::{ConnectOptions, ENV_CA, ENV_TOKEN};
use crate::{
    events::{Event, Events},
    proto,
    session::{self, Handle, Shared},
    subject,
    sync::lock,
    Address, Error, Message, Result, Subscription,
};

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
    pub(crate) handle: Arc<Handle>,
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
        let (shared, handle) = session::start(address, opts).await?;
        Ok(Bus { shared, handle })
    }

    /// This connection's id in the daemon (the ID column of `bus-cli list`);
    /// changes when the `Bus` reconnects.
    pub fn conn_id(&self) -> u64 {
        self.shared.conn_id.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// The daemon instance's random id (changes if the daemon restarted).
    pub fn server_id(&self) -> String {
        lock(&self.shared.server_id).clone()
    }

    /// Largest frame the daemon accepts; bigger publishes fail with
    /// [`Error::LimitExceeded`].
    pub fn max_frame(&self) -> u32 {
        self.shared.output.max_frame()
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
                reason: self.shared.output.closed_reason().unwrap_or_default(),
            }
        } else if out.connected {
            Event::Connected {
                conn_id: self.conn_id(),
            }
        } else {
            Event::Disconnected {
                reason: self.shared.output.down_reason().unwrap_or_default(),
            }
        };
        Events::new(current, self.shared.output.events())
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
        self.shared.output.publish(subject, None, payload.as_ref()).await
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
        self.shared.output.publish_all(msgs.into_iter()).await
    }

    /// Publishes with headers: ordered (name, value) pairs, names
    /// repeatable, as in NATS. Without headers it is [`publish`](Self::publish).
    /// Subscribers read them with [`Message::headers`](crate::Message::headers);
    /// clients older than protocol 4 get the message without them.
    ///
    /// ```no_run
    /// # async fn f(bus: libbus::Bus) -> libbus::Result<()> {
    /// let mut h = libbus::Headers::new();
    /// h.append("Content-Type", "application/json");
    /// bus.publish_with_headers("orders.new", &h, r#"{"id":7}"#).await?;
    /// # Ok(()) }
    /// ```
    pub async fn publish_with_headers(
        &self,
        subject: &str,
        headers: &crate::Headers,
        payload: impl AsRef<[u8]>,
    ) -> Result<()> {
        subject::validate_publish(subject)?;
        self.shared
            .output
            .publish_with_headers(subject, None, headers, payload.as_ref())
            .await
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
            .output
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
        self.subscribe_inner(pattern, None, 0).await
    }

    /// [`subscribe`](Self::subscribe) with [`SubscribeOptions`]: a queue
    /// group, senders, and lossless delivery.
    ///
    /// ```no_run
    /// # async fn f(bus: libbus::Bus) -> libbus::Result<()> {
    /// use libbus::SubscribeOptions;
    /// // Every message, however fast the publishers: they wait for us.
    /// let mut sub = bus.subscribe_with("audit.>", SubscribeOptions::new().lossless()).await?;
    /// # Ok(()) }
    /// ```
    pub async fn subscribe_with(&self, pattern: &str, opts: SubscribeOptions) -> Result<Subscription> {
        if let Some(group) = &opts.queue {
            check_group(group)?;
        }
        self.subscribe_inner(pattern, opts.queue.as_deref(), opts.flags())
            .await
    }

    /// [`subscribe`](Self::subscribe), with each message's sender stamped
    /// by the daemon ([`Message::sender`](crate::Message::sender)): its
    /// connection id and name, and for a local peer its pid, uid and gid
    /// from the kernel. A client cannot set or forge it. Needs a daemon of
    /// protocol 4.
    ///
    /// ```no_run
    /// # async fn f(bus: libbus::Bus) -> libbus::Result<()> {
    /// let mut sub = bus.subscribe_with_sender("orders.>").await?;
    /// # Ok(()) }
    /// ```
    pub async fn subscribe_with_sender(&self, pattern: &str) -> Result<Subscription> {
        self.subscribe_inner(pattern, None, proto::sub_flags::SENDER)
            .await
    }

    /// Subscribes as a member of queue group `group`: each message matching
    /// `pattern` goes to exactly one member of the group.
    pub async fn queue_subscribe(&self, pattern: &str, group: &str) -> Result<Subscription> {
        check_group(group)?;
        self.subscribe_inner(pattern, Some(group), 0).await
    }

    async fn subscribe_inner(&self, pattern: &str, queue: Option<&str>, flags: u32) -> Result<Subscription> {
        subject::validate_pattern(pattern)?;
        let shared = &self.shared;
        let (sid, receiver) = shared.input.register(pattern, queue, flags);
        // From here on, dropping `sub` unsubscribes, also on the error path.
        let sub = self.subscription(sid, receiver);
        let sent = shared
            .output
            .send_now(&crate::input::sub_frame(sid, pattern, queue, flags));
        // The daemon answers a refusal before the flush's Pong.
        let flushed = match sent {
            Ok(()) => self.flush().await,
            Err(e) => Err(e),
        };
        let refusal = shared.input.verdict(sid);
        match (refusal, flushed) {
            (Some(e), _) | (None, Err(e)) => Err(e),
            (None, Ok(())) => Ok(sub),
        }
    }

    /// The subscription that takes what the reader hands over for `sid`.
    pub(crate) fn subscription(&self, sid: u64, receiver: crate::input::Receiver) -> Subscription {
        Subscription {
            sid,
            rx: receiver.rx,
            space: receiver.space,
            taken: 0,
            current: Default::default(),
            shared: self.shared.clone(),
            _handle: self.handle.clone(),
            dropped: 0,
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
        let none = crate::Headers::new();
        self.request_with_headers(subject, &none, payload, timeout).await
    }

    /// [`request_with_timeout`](Self::request_with_timeout) with headers.
    /// A responder's error reply ([`Message::respond_error`]) fails it with
    /// [`Error::Service`].
    ///
    /// ```no_run
    /// # async fn f(bus: libbus::Bus) -> libbus::Result<()> {
    /// let h = libbus::Headers::from_iter([("Trace-Id", "4bf92f35")]);
    /// match bus.request_with_headers("orders.get", &h, "7", std::time::Duration::from_secs(1)).await {
    ///     Err(libbus::Error::Service { code: 404, text }) => println!("not found: {text}"),
    ///     other => println!("{other:?}"),
    /// }
    /// # Ok(()) }
    /// ```
    pub async fn request_with_headers(
        &self,
        subject: &str,
        headers: &crate::Headers,
        payload: impl AsRef<[u8]>,
        timeout: Duration,
    ) -> Result<Message> {
        subject::validate_publish(subject)?;
        let payload = payload.as_ref();
        let output = &self.shared.output;
        let send = async |reply_to: &str| {
            output
                .publish_with_headers(subject, Some(reply_to), headers, payload)
                .await
        };
        self.request_via(subject, timeout, send).await
    }

    /// Publishes `payload` to `subject` with file descriptors (an open
    /// file, a pipe or socket end, a memfd): each local subscriber gets
    /// its own copy of each ([`Message::take_fds`]). Unix connections only,
    /// 1 to 253 descriptors (the daemon's `max_fds_per_message`, 16 by
    /// default, is the usual bound). They are passed with the frame's bytes
    /// and closed here once sent. Fails at once while disconnected: a
    /// message with descriptors is never held for the next link.
    ///
    /// The daemon passes them only where they can go: a subscriber over
    /// TCP or of an older protocol, a bridge or the NATS upstream gets
    /// nothing, and this connection gets
    /// [`ErrorCode::FdsNotPassed`](crate::proto::ErrorCode::FdsNotPassed)
    /// (an [`Event::Error`]) naming them.
    ///
    /// ```no_run
    /// # async fn f(bus: libbus::Bus) -> Result<(), Box<dyn std::error::Error>> {
    /// let log = std::fs::File::open("/var/log/app.log")?;
    /// bus.publish_with_fds("logs.handoff", "app.log", vec![log.into()]).await?;
    /// # Ok(()) }
    /// ```
    pub async fn publish_with_fds(
        &self,
        subject: &str,
        payload: impl AsRef<[u8]>,
        fds: Vec<std::os::fd::OwnedFd>,
    ) -> Result<()> {
        self.check_fds()?;
        self.shared
            .output
            .publish_with_fds(subject, None, payload.as_ref(), fds)
            .await
    }

    /// [`publish_with_fds`](Self::publish_with_fds) with headers.
    ///
    /// ```no_run
    /// # async fn f(bus: libbus::Bus, fd: std::os::fd::OwnedFd) -> libbus::Result<()> {
    /// let h = libbus::Headers::from_iter([("Content-Type", "image/png")]);
    /// bus.publish_with_headers_and_fds("images.new", &h, "cat.png", vec![fd]).await?;
    /// # Ok(()) }
    /// ```
    pub async fn publish_with_headers_and_fds(
        &self,
        subject: &str,
        headers: &crate::Headers,
        payload: impl AsRef<[u8]>,
        fds: Vec<std::os::fd::OwnedFd>,
    ) -> Result<()> {
        self.check_fds()?;
        self.shared
            .output
            .send_with_fds(subject, None, headers, payload.as_ref(), fds)
            .await
    }

    /// Publishes a large `payload` without copying it through the daemon:
    /// it is written once into a memfd sealed against any change
    /// (`F_SEAL_WRITE | F_SEAL_SHRINK | F_SEAL_GROW`), and only the
    /// descriptor travels, as [`publish_with_fds`](Self::publish_with_fds)
    /// sends it. A subscriber reads it with [`Message::payload`] as any
    /// other payload: libbus maps it read-only, and no one can change it
    /// meanwhile. Its `Bus-Memfd` header gives the length. The same limits
    /// and transports apply as to any descriptor.
    ///
    /// ```no_run
    /// # async fn f(bus: libbus::Bus) -> libbus::Result<()> {
    /// let frame = vec![0u8; 8 << 20];
    /// bus.publish_memfd("camera.frame", &frame).await?;
    /// # Ok(()) }
    /// ```
    pub async fn publish_memfd(&self, subject: &str, payload: &[u8]) -> Result<()> {
        self.check_fds()?;
        let fd = sealed_memfd(payload)?;
        let headers = crate::Headers::from_iter([(crate::headers::MEMFD, payload.len().to_string())]);
        self.shared
            .output
            .send_with_fds(subject, None, &headers, &[], vec![fd])
            .await
    }

    /// [`request`](Self::request) with file descriptors, as
    /// [`publish_with_fds`](Self::publish_with_fds) sends them; the reply
    /// may carry some too ([`Message::respond_with_fds`]).
    pub async fn request_with_fds(
        &self,
        subject: &str,
        payload: impl AsRef<[u8]>,
        fds: Vec<std::os::fd::OwnedFd>,
        timeout: Duration,
    ) -> Result<Message> {
        self.check_fds()?;
        subject::validate_publish(subject)?;
        let payload = payload.as_ref();
        let output = &self.shared.output;
        let send = async |reply_to: &str| {
            output
                .publish_with_fds(subject, Some(reply_to), payload, fds)
                .await
        };
        self.request_via(subject, timeout, send).await
    }

    /// File descriptors pass only over a Unix connection.
    fn check_fds(&self) -> Result<()> {
        match self.shared.address {
            crate::Address::Unix(_) => Ok(()),
            _ => Err(Error::Protocol(
                "file descriptors pass only over a Unix socket connection".into(),
            )),
        }
    }

    /// Sends a request with `send` (given the reply subject) and waits up
    /// to `timeout` for its reply; an error reply fails it with
    /// [`Error::Service`]. `what` names it in errors.
    pub(crate) async fn request_via(
        &self,
        what: &str,
        timeout: Duration,
        send: impl AsyncFnOnce(&str) -> Result<()>,
    ) -> Result<Message> {
        let shared = &self.shared;
        shared.input.ensure_inbox(&shared.output)?;
        // Registered first: a link lost from here on fails this request.
        let (reply_to, rx, _pending) = shared.input.new_request(what);
        if !self.is_connected() {
            return Err(shared.output.disconnected());
        }
        send(&reply_to).await?;
        match tokio::time::timeout(timeout, rx).await {
            Ok(Ok(result)) => result.and_then(|reply| match reply.service_error() {
                Some(e) => Err(e),
                None => Ok(reply),
            }),
            Ok(Err(_)) => Err(shared.output.disconnected()),
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
        let rx = self.shared.output.send_ping()?;
        let t = self.shared.opts.request_timeout;
        match tokio::time::timeout(t, rx).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(_)) => Err(self.shared.output.disconnected()),
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
        self.shared.output.close(Some("closed by the client".into()));
        self.shared
            .stop_writer(Some(self.shared.opts.request_timeout))
            .await;
        self.handle.abort();
        // End subscriptions and fail waiters (the driver no longer will).
        self.shared.fail("closed by the client".into());
        flushed
    }

    /// True once the connection has ended for good.
    pub fn is_closed(&self) -> bool {
        self.shared.output.is_closed()
    }

    /// [`Error::Disconnected`] with the reason the connection ended (if it has).
    pub fn disconnected_error(&self) -> Error {
        self.shared.output.disconnected()
    }
}

/// A memfd holding `payload`, sealed against writing, shrinking, growing
/// and further sealing.
fn sealed_memfd(payload: &[u8]) -> Result<std::os::fd::OwnedFd> {
    use nix::{
        fcntl::{fcntl, FcntlArg},
        sys::memfd::{memfd_create, MFdFlags},
    };
    use std::io::Write;
    let fd = memfd_create(
        c"bus-payload",
        MFdFlags::MFD_CLOEXEC | MFdFlags::MFD_ALLOW_SEALING,
    )
    .map_err(std::io::Error::from)?;
    let mut file = std::fs::File::from(fd);
    file.write_all(payload)?;
    fcntl(&file, FcntlArg::F_ADD_SEALS(crate::sys::payload_seals())).map_err(std::io::Error::from)?;
    Ok(file.into())
}

/// A queue group's name: not empty, no whitespace or control characters.
fn check_group(group: &str) -> Result<()> {
    if group.is_empty() || group.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(Error::InvalidSubject(subject::SubjectError::Whitespace(
            group.into(),
        )));
    }
    Ok(())
}

/// How [`Bus::subscribe_with`] subscribes. The default is a plain
/// subscription, as [`Bus::subscribe`] makes.
///
/// ```
/// use libbus::SubscribeOptions;
/// let opts = SubscribeOptions::new().queue("workers").lossless().with_sender();
/// ```
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SubscribeOptions {
    queue: Option<String>,
    sender: bool,
    lossless: bool,
}

impl SubscribeOptions {
    /// A plain subscription.
    pub fn new() -> Self {
        Self::default()
    }

    /// Joins queue group `group`: each message goes to one member
    /// (as [`Bus::queue_subscribe`]).
    pub fn queue(mut self, group: impl Into<String>) -> Self {
        self.queue = Some(group.into());
        self
    }

    /// Each message comes with its sender, stamped by the daemon (as
    /// [`Bus::subscribe_with_sender`]).
    pub fn with_sender(mut self) -> Self {
        self.sender = true;
        self
    }

    /// Lossless: when this subscription falls behind and the daemon's
    /// queue for it is full (`max_pending`), the daemon stops reading from
    /// the local publishers that feed it, so their `publish` waits, rather
    /// than drop messages and report `Lagged`. Those publishers' other
    /// subscribers slow down with it; nobody else does. A subscriber that
    /// holds a publisher back longer than the daemon's `max_stall` is
    /// disconnected as a slow consumer. Messages from a bridge, a NATS
    /// upstream or the daemon itself are still dropped and reported when
    /// the queue is full: those senders cannot be held back one subscriber
    /// at a time.
    pub fn lossless(mut self) -> Self {
        self.lossless = true;
        self
    }

    /// The [`proto::sub_flags`] these options ask for.
    fn flags(&self) -> u32 {
        let mut flags = 0;
        if self.sender {
            flags |= proto::sub_flags::SENDER;
        }
        if self.lossless {
            flags |= proto::sub_flags::LOSSLESS;
        }
        flags
    }
}
