//! How a connection behaves: [`ConnectOptions`] and the [`Reconnect`]
//! policy. Plain data, read by the session, the input and the output side.

use std::time::Duration;

/// Tunables for one connection. `ConnectOptions::default()` is what
/// [`Bus::connect`](crate::Bus::connect) uses.
#[derive(Debug, Clone)]
pub struct ConnectOptions {
    /// Name shown by `bus-cli list`. Default: the program's file name.
    pub name: String,
    /// Bound on connecting plus the handshake (also per reconnect attempt). Default 5 s.
    pub connect_timeout: Duration,
    /// Default bound on [`Bus::request`](crate::Bus::request) and [`Bus::flush`](crate::Bus::flush). Default 5 s.
    pub request_timeout: Duration,
    /// Deliveries buffered per subscription before the connection stops
    /// reading (and the daemon starts queueing, then dropping). Default 8192.
    pub subscription_capacity: usize,
    /// Bytes of unsent frames after which `publish` waits for the socket
    /// (which holds `socket_buffer` more). Default 1 MiB: a publisher that
    /// outruns the daemon then waits while what it wrote is still in cache.
    pub max_write_buffer: usize,
    /// Room offered to each read of the socket, in bytes (more for a larger
    /// frame). Received messages share the buffer of the read they arrived
    /// in. Default 64 KiB: a busy subscriber takes in hundreds of small
    /// messages per system call.
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
    /// [`Error::LimitExceeded`](crate::Error::LimitExceeded). Default 8 MiB.
    pub reconnect_buffer: usize,
    /// Token for `tcp://` and `tls://` daemons. Default: `$BUS_TOKEN`.
    pub token: Option<String>,
    /// The uid the daemon behind a `unix:` address must run as. `None` (the
    /// default): this process's own uid or root. The kernel's word for it
    /// (`SO_PEERCRED`) is checked before anything is sent, so a socket that
    /// another user put in the daemon's place never sees a frame. A mismatch
    /// is [`Error::UntrustedDaemon`](crate::Error::UntrustedDaemon).
    pub daemon_uid: Option<u32>,
    /// PEM file of the CA that signed a `tls://` daemon's certificate.
    /// Default: `$BUS_CA`.
    pub ca_file: Option<std::path::PathBuf>,
    /// A client certificate chain and its key (PEM files) this client
    /// presents to a `tls://` daemon that asks for one (mTLS): the daemon
    /// may map it to a user, in place of a token. Default: none.
    pub client_cert: Option<(std::path::PathBuf, std::path::PathBuf)>,
    /// Keep trying the first connection, with the `reconnect` policy's
    /// backoff and `max_attempts`, instead of failing at once with
    /// [`Error::NoDaemon`](crate::Error::NoDaemon): for a service started
    /// before busd (as async-nats's `retry_on_initial_connect`). A refusal
    /// that retrying cannot fix (wrong version, policy, token) still fails
    /// at once. Default: false.
    pub retry_on_initial_connect: bool,
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
            daemon_uid: None,
            token: env_nonempty(ENV_TOKEN),
            ca_file: env_nonempty(ENV_CA).map(Into::into),
            client_cert: None,
            retry_on_initial_connect: false,
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
    /// Sets the uid the daemon must run as ([`daemon_uid`](Self::daemon_uid)).
    ///
    /// ```
    /// let opts = libbus::ConnectOptions::default().daemon_uid(0);
    /// assert_eq!(opts.daemon_uid, Some(0));
    /// ```
    pub fn daemon_uid(mut self, uid: u32) -> Self {
        self.daemon_uid = Some(uid);
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
    /// Presents the certificate chain `cert` (PEM) with its key `key` to
    /// `tls://` daemons that ask for one.
    ///
    /// ```no_run
    /// let opts = libbus::ConnectOptions::default()
    ///     .ca_file("/etc/bus/ca.pem")
    ///     .client_cert("/etc/bus/alice.pem", "/etc/bus/alice.key");
    /// ```
    pub fn client_cert(
        mut self,
        cert: impl Into<std::path::PathBuf>,
        key: impl Into<std::path::PathBuf>,
    ) -> Self {
        self.client_cert = Some((cert.into(), key.into()));
        self
    }
    /// Sets [`socket_buffer`](Self::socket_buffer) (0: the system default).
    pub fn socket_buffer(mut self, bytes: usize) -> Self {
        self.socket_buffer = bytes;
        self
    }
    /// Keeps trying the first connection until the daemon is there (see
    /// [`retry_on_initial_connect`](Self::retry_on_initial_connect)).
    ///
    /// ```no_run
    /// # async fn f() -> libbus::Result<()> {
    /// let opts = libbus::ConnectOptions::default().retry_on_initial_connect();
    /// let bus = libbus::Bus::connect_with(&libbus::Address::from_env()?, opts).await?;
    /// # Ok(()) }
    /// ```
    pub fn retry_on_initial_connect(mut self) -> Self {
        self.retry_on_initial_connect = true;
        self
    }
    /// Sets the bound on publishes buffered while disconnected.
    pub fn reconnect_buffer(mut self, bytes: usize) -> Self {
        self.reconnect_buffer = bytes;
        self
    }
}

/// Reconnection policy. Delays double from `initial_delay` up to
/// `max_delay`; each wait is drawn uniformly from [delay/2, delay] so that
/// many clients do not reconnect in lockstep.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reconnect {
    /// First delay. Default 50 ms.
    pub initial_delay: Duration,
    /// Largest delay. Default 1 s (a local daemon restarts fast; a failed
    /// connect to a Unix socket costs one system call).
    pub max_delay: Duration,
    /// Give up (and close the `Bus`) after this many failed attempts in a
    /// row. Default: never.
    pub max_attempts: Option<u32>,
}

impl Default for Reconnect {
    fn default() -> Self {
        Self {
            initial_delay: Duration::from_millis(50),
            max_delay: Duration::from_secs(1),
            max_attempts: None,
        }
    }
}

impl Reconnect {
    /// The wait before attempt `n` (0-based), with jitter.
    pub fn delay(&self, n: u32) -> Duration {
        let exp = self
            .initial_delay
            .saturating_mul(1u32.checked_shl(n.min(31)).unwrap_or(u32::MAX))
            .min(self.max_delay);
        let half = exp / 2;
        half + half.mul_f64(fastrand::f64())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
