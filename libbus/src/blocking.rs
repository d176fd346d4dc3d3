//! A blocking client, for programs without an async runtime.
//!
//! [`Bus`] runs the async [`crate::Bus`] on a runtime of its own, driven by
//! one thread it starts (`libbus-runtime`) and stops when the last handle
//! is dropped. Each call blocks the calling thread until the async call
//! completes; reconnecting, keep-alive and delivery carry on in the
//! background as they do for the async client. Everything else (messages,
//! errors, options, headers) is the async client's.
//!
//! Do not call it from async code: a blocking call there stalls the task's
//! thread, and panics inside a tokio runtime. Use [`crate::Bus`] there.
//!
//! ```no_run
//! use libbus::blocking::Bus;
//!
//! fn main() -> libbus::Result<()> {
//!     let bus = Bus::connect_default()?;
//!     let temps = bus.subscribe("sensors.*.temp")?;
//!     bus.publish("sensors.kitchen.temp", "21.5")?;
//!     for msg in temps.iter().take(1) {
//!         println!("{} {:?}", msg.subject(), msg.payload());
//!     }
//!     let reply = bus.request("svc.echo", "hi")?;
//!     println!("{:?}", reply.payload());
//!     bus.close()
//! }
//! ```

use std::{
    future::Future,
    sync::{Arc, Mutex},
    thread::JoinHandle,
    time::Duration,
};

use crate::{Address, ConnectOptions, Error, Headers, Message, Result};

/// The runtime every handle of one connection shares; stopped (and its
/// thread joined) when the last one is dropped.
#[derive(Debug)]
struct Driver {
    handle: tokio::runtime::Handle,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl Driver {
    fn start() -> Result<Driver> {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        let handle = rt.handle().clone();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let thread = std::thread::Builder::new()
            .name("libbus-runtime".into())
            .spawn(move || {
                // Drives the connection's tasks, I/O and timers until stopped.
                let _ = rt.block_on(stopped);
            })?;
        Ok(Driver {
            handle,
            stop: Some(stop),
            thread: Some(thread),
        })
    }

    /// Runs `fut` to completion on the calling thread, with the runtime's
    /// thread driving its I/O and timers.
    fn block_on<F: Future>(&self, fut: F) -> F::Output {
        self.handle.block_on(fut)
    }
}

impl Drop for Driver {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(thread) = self.thread.take() {
            // Never join from the runtime's own thread.
            if thread.thread().id() != std::thread::current().id() {
                let _ = thread.join();
            }
        }
    }
}

/// A blocking connection to the bus: [`crate::Bus`] with every call made
/// synchronous. Cheap to clone; clones share the connection and its
/// runtime thread, as clones of the async client share the connection.
#[derive(Debug, Clone)]
pub struct Bus {
    bus: crate::Bus,
    driver: Arc<Driver>,
}

impl Bus {
    /// Connects to `address`; see [`crate::Bus::connect`].
    ///
    /// ```no_run
    /// let bus = libbus::blocking::Bus::connect(&"unix:/run/user/1000/bus/busd.sock".parse()?)?;
    /// # Ok::<(), libbus::Error>(())
    /// ```
    pub fn connect(address: &Address) -> Result<Bus> {
        Self::connect_with(address, ConnectOptions::default())
    }

    /// Connects to the default address (`$BUS_ADDRESS`, else the default
    /// socket path).
    ///
    /// ```no_run
    /// let bus = libbus::blocking::Bus::connect_default()?;
    /// # Ok::<(), libbus::Error>(())
    /// ```
    pub fn connect_default() -> Result<Bus> {
        Self::connect(&Address::from_env()?)
    }

    /// Connects with explicit options; see [`crate::Bus::connect_with`].
    ///
    /// ```no_run
    /// use libbus::{blocking::Bus, Address, ConnectOptions};
    /// let bus = Bus::connect_with(&Address::from_env()?, ConnectOptions::default().retry_on_initial_connect())?;
    /// # Ok::<(), libbus::Error>(())
    /// ```
    pub fn connect_with(address: &Address, opts: ConnectOptions) -> Result<Bus> {
        let driver = Arc::new(Driver::start()?);
        let bus = driver.block_on(crate::Bus::connect_with(address, opts))?;
        Ok(Bus { bus, driver })
    }

    /// The async client underneath, for what this API does not wrap. Its
    /// futures may be awaited on any runtime, or through [`Bus::block_on`].
    pub fn as_async(&self) -> &crate::Bus {
        &self.bus
    }

    /// Runs a future of the async API to completion, blocking, on this
    /// connection's runtime.
    ///
    /// ```no_run
    /// # let bus = libbus::blocking::Bus::connect_default()?;
    /// let name = bus.block_on(bus.as_async().request_name("org.example.db", libbus::NameFlags::NONE))?;
    /// # Ok::<(), libbus::Error>(())
    /// ```
    pub fn block_on<F: Future>(&self, fut: F) -> F::Output {
        self.driver.block_on(fut)
    }

    /// Publishes `payload` on `subject`; see [`crate::Bus::publish`].
    ///
    /// ```no_run
    /// # let bus = libbus::blocking::Bus::connect_default()?;
    /// bus.publish("sensors.kitchen.temp", "21.5")?;
    /// # Ok::<(), libbus::Error>(())
    /// ```
    pub fn publish(&self, subject: &str, payload: impl AsRef<[u8]>) -> Result<()> {
        self.block_on(self.bus.publish(subject, payload))
    }

    /// Publishes with headers; see [`crate::Bus::publish_with_headers`].
    ///
    /// ```no_run
    /// # let bus = libbus::blocking::Bus::connect_default()?;
    /// let h = libbus::Headers::from_iter([("Trace-Id", "4bf92f35")]);
    /// bus.publish_with_headers("orders.new", &h, "{}")?;
    /// # Ok::<(), libbus::Error>(())
    /// ```
    pub fn publish_with_headers(
        &self,
        subject: &str,
        headers: &Headers,
        payload: impl AsRef<[u8]>,
    ) -> Result<()> {
        self.block_on(self.bus.publish_with_headers(subject, headers, payload))
    }

    /// Subscribes to `pattern` (wildcards `*` and `>`); see
    /// [`crate::Bus::subscribe`].
    ///
    /// ```no_run
    /// # let bus = libbus::blocking::Bus::connect_default()?;
    /// for msg in bus.subscribe("sensors.>")?.iter() {
    ///     println!("{} {:?}", msg.subject(), msg.payload());
    /// }
    /// # Ok::<(), libbus::Error>(())
    /// ```
    pub fn subscribe(&self, pattern: &str) -> Result<Subscription> {
        let sub = self.block_on(self.bus.subscribe(pattern))?;
        Ok(self.wrap(sub))
    }

    /// Joins queue group `group` on `pattern`: each message goes to one
    /// member; see [`crate::Bus::queue_subscribe`].
    ///
    /// ```no_run
    /// # let bus = libbus::blocking::Bus::connect_default()?;
    /// let jobs = bus.queue_subscribe("jobs.>", "workers")?;
    /// # Ok::<(), libbus::Error>(())
    /// ```
    pub fn queue_subscribe(&self, pattern: &str, group: &str) -> Result<Subscription> {
        let sub = self.block_on(self.bus.queue_subscribe(pattern, group))?;
        Ok(self.wrap(sub))
    }

    /// Subscribes with [`SubscribeOptions`](crate::SubscribeOptions); see
    /// [`crate::Bus::subscribe_with`].
    ///
    /// ```no_run
    /// # let bus = libbus::blocking::Bus::connect_default()?;
    /// let audit = bus.subscribe_with("audit.>", libbus::SubscribeOptions::new().lossless())?;
    /// # Ok::<(), libbus::Error>(())
    /// ```
    pub fn subscribe_with(&self, pattern: &str, opts: crate::SubscribeOptions) -> Result<Subscription> {
        let sub = self.block_on(self.bus.subscribe_with(pattern, opts))?;
        Ok(self.wrap(sub))
    }

    fn wrap(&self, sub: crate::Subscription) -> Subscription {
        Subscription {
            sub: Mutex::new(sub),
            driver: self.driver.clone(),
        }
    }

    /// Sends a request and waits for its reply (the default timeout, 5 s);
    /// see [`crate::Bus::request`].
    ///
    /// ```no_run
    /// # let bus = libbus::blocking::Bus::connect_default()?;
    /// let reply = bus.request("svc.echo", "hi")?;
    /// # Ok::<(), libbus::Error>(())
    /// ```
    pub fn request(&self, subject: &str, payload: impl AsRef<[u8]>) -> Result<Message> {
        self.block_on(self.bus.request(subject, payload))
    }

    /// [`request`](Self::request) with its own timeout.
    ///
    /// ```no_run
    /// # let bus = libbus::blocking::Bus::connect_default()?;
    /// let reply = bus.request_with_timeout("svc.echo", "hi", std::time::Duration::from_millis(200))?;
    /// # Ok::<(), libbus::Error>(())
    /// ```
    pub fn request_with_timeout(
        &self,
        subject: &str,
        payload: impl AsRef<[u8]>,
        timeout: Duration,
    ) -> Result<Message> {
        self.block_on(self.bus.request_with_timeout(subject, payload, timeout))
    }

    /// Answers `request` (a message received on a subscription) with
    /// `payload`; see [`Message::respond`].
    ///
    /// ```no_run
    /// # let bus = libbus::blocking::Bus::connect_default()?;
    /// for req in bus.subscribe("svc.echo")?.iter() {
    ///     bus.respond(&req, req.payload())?;
    /// }
    /// # Ok::<(), libbus::Error>(())
    /// ```
    pub fn respond(&self, request: &Message, payload: impl AsRef<[u8]>) -> Result<()> {
        self.block_on(request.respond(payload))
    }

    /// Answers `request` with an error, which the requester gets as
    /// [`Error::Service`]; see [`Message::respond_error`].
    ///
    /// ```no_run
    /// # let bus = libbus::blocking::Bus::connect_default()?;
    /// # let req = bus.subscribe("orders.get")?.next().unwrap();
    /// bus.respond_error(&req, 404, "no such order")?;
    /// # Ok::<(), libbus::Error>(())
    /// ```
    pub fn respond_error(&self, request: &Message, code: u32, text: &str) -> Result<()> {
        self.block_on(request.respond_error(code, text))
    }

    /// Waits until everything published so far is written to the socket.
    ///
    /// ```no_run
    /// # let bus = libbus::blocking::Bus::connect_default()?;
    /// bus.flush()?;
    /// # Ok::<(), libbus::Error>(())
    /// ```
    pub fn flush(&self) -> Result<()> {
        self.block_on(self.bus.flush())
    }

    /// Flushes, then ends the connection; see [`crate::Bus::close`]. The
    /// runtime thread stops once every handle is dropped.
    ///
    /// ```no_run
    /// # let bus = libbus::blocking::Bus::connect_default()?;
    /// bus.close()?;
    /// # Ok::<(), libbus::Error>(())
    /// ```
    pub fn close(&self) -> Result<()> {
        self.block_on(self.bus.close())
    }
}

/// The messages of one subscription, blocking. Unsubscribes when dropped.
#[derive(Debug)]
pub struct Subscription {
    sub: Mutex<crate::Subscription>,
    driver: Arc<Driver>,
}

impl Subscription {
    /// The next message; `None` once the connection has closed for good.
    /// Blocks until one arrives. A loss reported by the daemon
    /// (`Lagged`) shows in [`dropped`](Self::dropped).
    ///
    /// ```no_run
    /// # let bus = libbus::blocking::Bus::connect_default()?;
    /// let sub = bus.subscribe("a.b")?;
    /// if let Some(msg) = sub.next() { println!("{:?}", msg.payload()); }
    /// # Ok::<(), libbus::Error>(())
    /// ```
    #[allow(clippy::should_implement_trait)] // `&self`: `iter` is the Iterator
    pub fn next(&self) -> Option<Message> {
        let mut sub = crate::sync::lock(&self.sub);
        self.driver.block_on(sub.next())
    }

    /// The next message, waiting at most `timeout`:
    /// `Err(Error::Timeout)` if none came, `Ok(None)` once closed.
    ///
    /// ```no_run
    /// # let bus = libbus::blocking::Bus::connect_default()?;
    /// let sub = bus.subscribe("a.b")?;
    /// match sub.next_timeout(std::time::Duration::from_secs(1)) {
    ///     Ok(Some(msg)) => println!("{:?}", msg.payload()),
    ///     Ok(None) => println!("closed"),
    ///     Err(e) => println!("{e}"),
    /// }
    /// # Ok::<(), libbus::Error>(())
    /// ```
    pub fn next_timeout(&self, timeout: Duration) -> Result<Option<Message>> {
        let mut sub = crate::sync::lock(&self.sub);
        self.driver.block_on(async {
            tokio::time::timeout(timeout, sub.next())
                .await
                .map_err(|_| Error::Timeout(timeout))
        })
    }

    /// Messages dropped for this subscription so far, as the daemon
    /// reported them; see [`crate::Subscription::dropped`].
    pub fn dropped(&self) -> u64 {
        crate::sync::lock(&self.sub).dropped()
    }

    /// An iterator over the messages, ending when the connection closes.
    ///
    /// ```no_run
    /// # let bus = libbus::blocking::Bus::connect_default()?;
    /// for msg in bus.subscribe("logs.>")?.iter().take(10) {
    ///     println!("{}", msg.subject());
    /// }
    /// # Ok::<(), libbus::Error>(())
    /// ```
    pub fn iter(&self) -> Iter<'_> {
        Iter(self)
    }
}

/// The messages of a [`Subscription`], from [`Subscription::iter`].
#[derive(Debug)]
pub struct Iter<'a>(&'a Subscription);

impl Iterator for Iter<'_> {
    type Item = Message;

    fn next(&mut self) -> Option<Message> {
        self.0.next()
    }
}

impl<'a> IntoIterator for &'a Subscription {
    type Item = Message;
    type IntoIter = Iter<'a>;

    fn into_iter(self) -> Iter<'a> {
        self.iter()
    }
}

impl IntoIterator for Subscription {
    type Item = Message;
    type IntoIter = IntoIter;

    fn into_iter(self) -> IntoIter {
        IntoIter(self)
    }
}

/// The messages of a [`Subscription`], owned.
#[derive(Debug)]
pub struct IntoIter(Subscription);

impl Iterator for IntoIter {
    type Item = Message;

    fn next(&mut self) -> Option<Message> {
        self.0.next()
    }
}
