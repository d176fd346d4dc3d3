//! Every setting of the daemon, with its default. `Config::default()` is the
//! embedded default configuration that `busd` runs with when given no flags.

use std::{path::PathBuf, time::Duration};

/// Daemon configuration. Each limit is named as in `busd --help` and in the
/// `limits` of `bus-cli info`.
#[derive(Debug, Clone)]
pub struct Config {
    /// Unix socket path. Default: `$XDG_RUNTIME_DIR/bus/busd.sock`, else
    /// `/tmp/bus-$UID/busd.sock` (`$BUS_ADDRESS` if it names a `unix:` path).
    pub socket: PathBuf,
    /// Permission bits of the socket file. Default `0o600` (owner only).
    pub socket_mode: u32,
    /// `max_frame`: largest frame body accepted, in bytes. Default 1 MiB.
    pub max_frame: u32,
    /// `max_pending`: bytes queued per connection before new messages for it
    /// are dropped (and reported with `Lagged`). Default 8 MiB.
    pub max_pending: usize,
    /// `handshake_timeout`: time a new connection has to send `Hello`. Default 5 s.
    pub handshake_timeout: Duration,
    /// `ping_interval`: a connection silent this long is pinged. Default 30 s.
    pub ping_interval: Duration,
    /// `max_pings_missed`: pings left unanswered before the connection is closed. Default 2.
    pub max_pings_missed: u32,
    /// `max_connections`: live connections at once. Default 10,000.
    pub max_connections: usize,
    /// `max_subscriptions`: subscriptions per connection. Default 10,000.
    pub max_subscriptions: usize,
    /// `shutdown_grace`: how long connections may flush on shutdown or close. Default 2 s.
    pub shutdown_grace: Duration,
}

impl Default for Config {
    fn default() -> Self {
        let socket = libbus::Address::from_env()
            .ok()
            .and_then(|a| a.unix_path().map(ToOwned::to_owned))
            .unwrap_or_else(libbus::addr::default_socket_path);
        Self {
            socket,
            socket_mode: 0o600,
            max_frame: libbus::proto::DEFAULT_MAX_FRAME,
            max_pending: 8 << 20,
            handshake_timeout: Duration::from_secs(5),
            ping_interval: Duration::from_secs(30),
            max_pings_missed: 2,
            max_connections: 10_000,
            max_subscriptions: 10_000,
            shutdown_grace: Duration::from_secs(2),
        }
    }
}

impl Config {
    /// A default configuration listening on `socket`.
    pub fn with_socket(socket: impl Into<PathBuf>) -> Self {
        Self {
            socket: socket.into(),
            ..Self::default()
        }
    }

    /// Checks that the values fit together.
    pub fn validate(&self) -> Result<(), String> {
        if self.max_pending < self.max_frame as usize {
            return Err(format!(
                "max_pending ({}) must be at least max_frame ({}), or no large message could ever be queued",
                self.max_pending, self.max_frame
            ));
        }
        if self.max_frame < 64 {
            return Err(format!(
                "max_frame ({}) must be at least 64 bytes",
                self.max_frame
            ));
        }
        if self.ping_interval.is_zero() || self.handshake_timeout.is_zero() {
            return Err("ping_interval and handshake_timeout must be greater than zero".into());
        }
        if self.max_connections == 0 {
            return Err("max_connections must be at least 1".into());
        }
        Ok(())
    }

    /// The limits as (name, value) pairs, as reported by `$BUS.api.info`.
    pub fn limits(&self) -> Vec<(String, u64)> {
        let ms = |d: Duration| d.as_millis().try_into().unwrap_or(u64::MAX);
        vec![
            ("max_frame".into(), self.max_frame.into()),
            ("max_pending".into(), self.max_pending as u64),
            ("max_connections".into(), self.max_connections as u64),
            ("max_subscriptions".into(), self.max_subscriptions as u64),
            ("max_pings_missed".into(), self.max_pings_missed.into()),
            ("handshake_timeout_ms".into(), ms(self.handshake_timeout)),
            ("ping_interval_ms".into(), ms(self.ping_interval)),
            ("shutdown_grace_ms".into(), ms(self.shutdown_grace)),
        ]
    }
}
