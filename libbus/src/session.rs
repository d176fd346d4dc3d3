//! One `Bus`'s life on the socket: dialing, the handshake, and the driver
//! task that runs each link and reconnects when one fails. It owns the
//! connection's shared state (`Shared`): the output side
//! (`output.rs`), the input side (`input.rs`) and the link's
//! identity.
//!
//! The driver task runs the reader of the current link
//! (`input::read_loop`); the writer (`output::write_loop`) is a task of
//! its own, so reading and writing proceed in parallel. When a link fails
//! the driver stops its writer, marks the bus disconnected (in-flight
//! requests fail, publishes keep buffering up to `reconnect_buffer`),
//! reconnects with exponential backoff and jitter, re-sends every live
//! subscription ahead of what was buffered, and starts the next link.

use std::{
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc, Mutex,
    },
    time::Duration,
};

use tokio::{io::AsyncWriteExt, net::TcpStream, task::JoinHandle};

use crate::{
    codec,
    error::codec_err,
    events::Event,
    input::{self, Frames, Input},
    output::{self, Output},
    proto::{self, ClientFrame, ServerFrame},
    sync::lock,
    transport::{self, Reader, Writer},
    Address, ConnectOptions, Error, Result,
};

pub use crate::options::Reconnect;

/// State shared by a `Bus`'s handles, its tasks and its subscriptions.
#[derive(Debug)]
pub(crate) struct Shared {
    pub opts: ConnectOptions,
    pub address: Address,
    /// The current link's connection id.
    pub conn_id: AtomicU64,
    /// The daemon instance's id.
    pub server_id: Mutex<String>,
    /// Frames to send, the writer's wake-ups, the link's state and events.
    pub output: Arc<Output>,
    /// Subscriptions and waiting requests.
    pub input: Input,
    /// The current link's writer task.
    writer: Mutex<Option<JoinHandle<()>>>,
}

/// Owns the driver task; dropping the last one ends the connection.
#[derive(Debug)]
pub(crate) struct Handle {
    shared: Arc<Shared>,
    driver: JoinHandle<()>,
}

impl Handle {
    /// Stops the driver (the connection was closed).
    pub(crate) fn abort(&self) {
        self.driver.abort();
    }
}

impl Drop for Handle {
    fn drop(&mut self) {
        // The writer sends what is buffered, then drops its half (EOF for the daemon).
        self.shared.output.close(None);
        self.driver.abort();
    }
}

/// A handshaken connection, ready to run.
pub(crate) struct Link {
    pub frames: Frames,
    pub writer: Writer,
    pub conn_id: u64,
    pub server_id: String,
    pub max_frame: u32,
}

/// Connects to `address` (bounded by `connect_timeout`), and starts the
/// link's writer and the driver. The first connection is not retried.
pub(crate) async fn start(address: &Address, opts: ConnectOptions) -> Result<(Arc<Shared>, Arc<Handle>)> {
    let link = first_link(address, &opts).await?;
    let shared = Arc::new(Shared {
        conn_id: AtomicU64::new(link.conn_id),
        server_id: Mutex::new(String::new()),
        address: address.clone(),
        output: Arc::new(Output::new(&opts, link.max_frame)),
        input: Input::new(&opts),
        writer: Mutex::new(None),
        opts,
    });
    let frames = shared.start_link(link, None);
    let driver = tokio::spawn(drive(shared.clone(), frames));
    let handle = Arc::new(Handle {
        shared: shared.clone(),
        driver,
    });
    Ok((shared, handle))
}

/// The first link: one attempt (bounded by `connect_timeout`), or, with
/// `retry_on_initial_connect`, attempts with the reconnect policy's backoff
/// until one works, a refusal retrying cannot fix, or `max_attempts`.
async fn first_link(address: &Address, opts: &ConnectOptions) -> Result<Link> {
    let attempt = || async {
        let t = opts.connect_timeout;
        tokio::time::timeout(t, open(address, opts))
            .await
            .map_err(|_| Error::Timeout(t))?
    };
    if !opts.retry_on_initial_connect {
        return attempt().await;
    }
    let policy = opts.reconnect.clone().unwrap_or_default();
    let mut failed = 0u32;
    loop {
        match attempt().await {
            Ok(link) => return Ok(link),
            // Not there yet, or not answering yet: worth another try.
            Err(
                e @ (Error::NoDaemon { .. } | Error::Timeout(_) | Error::Disconnected { .. } | Error::Io(_)),
            ) => {
                failed += 1;
                if policy.max_attempts.is_some_and(|max| failed >= max) {
                    return Err(e);
                }
                tracing::debug!(failed, "first connection failed, retrying: {e}");
                tokio::time::sleep(policy.delay(failed - 1)).await;
            }
            // A refusal (version, policy, token, an untrusted daemon, a
            // bad address): retrying cannot fix it.
            Err(e) => return Err(e),
        }
    }
}

impl Shared {
    /// Takes a handshaken link into use: records its identity, spawns its
    /// writer and returns its reader. After a reconnect (`attempts` set),
    /// every live subscription is sent again, ahead of whatever was
    /// buffered meanwhile.
    fn start_link(self: &Arc<Self>, link: Link, attempts: Option<u32>) -> Frames {
        let Link {
            frames,
            writer,
            conn_id,
            server_id,
            max_frame,
        } = link;
        self.conn_id.store(conn_id, Ordering::Relaxed);
        *lock(&self.server_id) = server_id;
        let preamble = attempts.map(|_| self.input.encode_subscriptions(max_frame));
        let event = match attempts {
            Some(attempts) => Event::Reconnected { conn_id, attempts },
            None => Event::Connected { conn_id },
        };
        self.output.link_up(max_frame, preamble, event);
        let task = tokio::spawn(output::write_loop(self.output.clone(), writer));
        *lock(&self.writer) = Some(task);
        frames
    }

    /// Stops the current link's writer (the link has failed, or the bus is
    /// closing: then it is given `timeout` to send what is buffered).
    pub(crate) async fn stop_writer(&self, timeout: Option<Duration>) {
        let writer = lock(&self.writer).take();
        if let Some(w) = writer {
            match timeout {
                Some(t) => {
                    let _ = tokio::time::timeout(t, w).await;
                }
                None => {
                    w.abort();
                    let _ = w.await;
                }
            }
        }
    }

    /// The connection ended for good: wake and fail everyone waiting on it.
    pub(crate) fn fail(&self, reason: String) {
        tracing::debug!(%reason, "bus connection closed");
        self.output.close(Some(reason));
        self.input.end(|| self.output.disconnected());
    }
}

/// Runs links until the bus closes: the driver task.
async fn drive(shared: Arc<Shared>, first: Frames) {
    let mut frames = first;
    loop {
        let reason = input::read_loop(&shared.input, &shared.output, frames).await;
        shared.stop_writer(None).await;
        let last_error = lock(&shared.input.last_error).take();
        let permanent = last_error.as_ref().is_some_and(|(code, _)| code.is_permanent());
        let reason = match last_error {
            Some((_, err)) => format!("{reason}: {err}"),
            None => reason,
        };
        let Some(policy) = shared.opts.reconnect.clone().filter(|_| !permanent) else {
            shared.fail(reason);
            return;
        };
        if !shared.output.link_down(&reason) {
            return; // closed by the application meanwhile
        }
        shared.input.fail_requests(|| shared.output.disconnected());
        tracing::warn!(%reason, "bus connection lost; reconnecting");
        match reconnect(&shared, &policy).await {
            Some(next) => frames = next,
            None => return,
        }
    }
}

/// Tries to connect again until it works, the bus is closed, or the policy
/// gives up. Returns the new link's reader.
async fn reconnect(shared: &Arc<Shared>, policy: &Reconnect) -> Option<Frames> {
    let mut attempts = 0u32;
    loop {
        tokio::time::sleep(policy.delay(attempts)).await;
        if shared.output.is_closed() {
            return None;
        }
        attempts += 1;
        let t = shared.opts.connect_timeout;
        let result = match tokio::time::timeout(t, open(&shared.address, &shared.opts)).await {
            Ok(r) => r,
            Err(_) => Err(Error::Timeout(t)),
        };
        match result {
            Ok(link) => {
                if shared.output.is_closed() {
                    return None;
                }
                tracing::info!(conn_id = link.conn_id, attempts, "bus connection re-established");
                return Some(shared.start_link(link, Some(attempts)));
            }
            Err(Error::Server { code, message }) if code.is_permanent() => {
                shared.fail(format!("reconnect refused: {message}"));
                return None;
            }
            Err(e) => {
                tracing::debug!(attempts, "reconnect failed: {e}");
                if policy.max_attempts.is_some_and(|max| attempts >= max) {
                    shared.fail(format!("gave up reconnecting after {attempts} attempts: {e}"));
                    return None;
                }
            }
        }
    }
}

/// Opens the byte stream to `address`: a Unix socket, TCP, or TLS over TCP
/// (with `opts.ca_file`). No handshake yet. busd's bridge dialer uses it too.
pub async fn connect(address: &Address, opts: &ConnectOptions) -> Result<(Reader, Writer)> {
    let no_daemon = |source| Error::NoDaemon {
        address: address.to_string(),
        source,
    };
    match address {
        Address::Unix(path) => {
            let stream = transport::connect_unix(path).await.map_err(no_daemon)?;
            check_daemon_uid(address, &stream, opts.daemon_uid)?;
            transport::set_send_buffer(&stream, opts.socket_buffer);
            Ok(transport::split_unix(stream))
        }
        Address::Tcp(host_port) => {
            let tcp = TcpStream::connect(host_port.as_str()).await.map_err(no_daemon)?;
            transport::configure_tcp(&tcp)?;
            Ok(transport::split_tcp(tcp))
        }
        Address::Tls(host_port) => dial_tls(address, host_port, opts).await,
    }
}

/// Dials `tls://host_port` and sets up TLS, trusting `opts.ca_file`.
#[cfg(feature = "tls")]
async fn dial_tls(address: &Address, host_port: &str, opts: &ConnectOptions) -> Result<(Reader, Writer)> {
    let ca = opts.ca_file.as_deref().ok_or_else(|| {
        Error::Tls(format!(
            "{address} needs the CA that signed the daemon's certificate (set {}, bus-cli --ca, or ConnectOptions::ca_file)",
            crate::options::ENV_CA
        ))
    })?;
    let host = host_port
        .rsplit_once(':')
        .map_or(host_port, |(h, _)| h)
        .trim_start_matches('[')
        .trim_end_matches(']');
    let name = rustls::pki_types::ServerName::try_from(host.to_owned())
        .map_err(|e| Error::InvalidAddress(format!("{address}: {e}")))?;
    let tcp = TcpStream::connect(host_port)
        .await
        .map_err(|source| Error::NoDaemon {
            address: address.to_string(),
            source,
        })?;
    transport::configure_tcp(&tcp)?;
    let fd = std::os::fd::AsRawFd::as_raw_fd(&tcp);
    let client = opts.client_cert.as_ref().map(|(c, k)| (c.as_path(), k.as_path()));
    let tls = tokio_rustls::TlsConnector::from(crate::tls::client_config(ca, client)?)
        .connect(name, tcp)
        .await
        .map_err(|e| Error::Tls(e.to_string()))?;
    Ok(transport::split_layered(tls, fd))
}

/// Without the `tls` feature, a `tls://` address is refused.
#[cfg(not(feature = "tls"))]
async fn dial_tls(address: &Address, _: &str, _: &ConnectOptions) -> Result<(Reader, Writer)> {
    Err(Error::Tls(format!(
        "{address}: this libbus was built without TLS (its `tls` feature)"
    )))
}

/// Refuses a Unix-socket daemon that runs as another user than `expected`
/// (default: this process's uid or root), before anything is sent to it.
fn check_daemon_uid(address: &Address, stream: &transport::UnixStream, expected: Option<u32>) -> Result<()> {
    let uid = transport::peer_uid(stream)?;
    let me = nix::unistd::geteuid().as_raw();
    let (trusted, expected) = match expected {
        Some(want) => (uid == want, format!("uid {want}")),
        None => (uid == me || uid == 0, format!("this process's uid {me} or root")),
    };
    if trusted {
        return Ok(());
    }
    Err(Error::UntrustedDaemon {
        address: address.to_string(),
        uid,
        expected,
    })
}

/// Connects to `address` and completes the handshake (unbounded; callers
/// apply `connect_timeout`).
pub(crate) async fn open(address: &Address, opts: &ConnectOptions) -> Result<Link> {
    let (rx, mut tx) = connect(address, opts).await?;
    let name = opts.name.as_str();
    let mut buf = Vec::new();
    let hello = ClientFrame::Hello(proto::Hello {
        version: proto::PROTOCOL_VERSION,
        name,
        role: proto::Role::Client,
        auth: opts.token.as_deref(),
    });
    codec::encode_into(&hello, &mut buf, proto::DEFAULT_MAX_FRAME).map_err(codec_err)?;
    let written = async {
        tx.write_all(&buf).await?;
        tx.flush().await
    }
    .await;

    let mut frames = Frames::new(rx, proto::DEFAULT_MAX_FRAME).with_read_room(opts.read_buffer);
    if let Err(e) = written {
        // A daemon that refuses at once (max_connections) may have closed
        // before our Hello arrived; its Error frame says why.
        if let Ok(Ok(Some(frame))) =
            tokio::time::timeout(Duration::from_millis(200), frames.read_frame()).await
        {
            if let Ok(ServerFrame::Error { code, message }) = codec::decode::<ServerFrame>(&frame) {
                return Err(Error::Server {
                    code,
                    message: message.into(),
                });
            }
        }
        return Err(e.into());
    }
    let first = frames.read_frame().await?.ok_or(Error::Disconnected {
        reason: Some("daemon closed the connection during the handshake".into()),
    })?;
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
    frames.set_max_frame(welcome.max_frame.saturating_add(64));
    Ok(Link {
        conn_id: welcome.conn_id,
        server_id: welcome.server_id.to_owned(),
        max_frame: welcome.max_frame,
        frames,
        writer: tx,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Without the `tls` feature a `tls://` address fails at once, naming
    /// the feature (`cargo test -p libbus --no-default-features`).
    #[cfg(not(feature = "tls"))]
    #[tokio::test]
    async fn tls_address_without_the_feature() {
        let address: Address = "tls://127.0.0.1:1".parse().unwrap();
        match connect(&address, &ConnectOptions::default()).await {
            Err(Error::Tls(m)) => assert!(m.contains("`tls` feature"), "{m}"),
            other => panic!("expected Error::Tls, got {:?}", other.map(|_| ())),
        }
    }

    /// With it, a `tls://` address without a CA is refused before dialing.
    #[cfg(feature = "tls")]
    #[tokio::test]
    async fn tls_address_needs_a_ca() {
        let address: Address = "tls://127.0.0.1:1".parse().unwrap();
        let opts = ConnectOptions {
            ca_file: None,
            ..ConnectOptions::default()
        };
        match connect(&address, &opts).await {
            Err(Error::Tls(m)) => assert!(m.contains("needs the CA"), "{m}"),
            other => panic!("expected Error::Tls, got {:?}", other.map(|_| ())),
        }
    }
}
