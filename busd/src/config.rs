//! Every setting of the daemon, with its default. `Config::default()` is the
//! embedded default configuration that `busd` runs with when given no flags.
//!
//! The same names are used everywhere: as TOML keys in `busd --config FILE`,
//! as flags (`max_frame` is `--max-frame`), in `busd --print-config` and in
//! the `limits` of `bus-cli info`. Sizes are written as integers or strings
//! like `"8MiB"`, durations as strings like `"30s"`.

use std::{path::PathBuf, time::Duration};

use serde::{Deserialize, Serialize};

/// Daemon configuration. Precedence: defaults, then the config file, then flags.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// Unix socket path. Default: `$XDG_RUNTIME_DIR/bus/busd.sock`, else
    /// `/tmp/bus-$UID/busd.sock` (`$BUS_ADDRESS` if it names a `unix:` path).
    pub socket: PathBuf,
    /// Permission bits of the socket file. Default `0o600` (owner only). The
    /// access policy (`allow_uid`, `allow_gid`) is checked in addition.
    #[serde(with = "octal")]
    pub socket_mode: u32,
    /// `max_frame`: largest frame body accepted, in bytes. Default 1 MiB.
    #[serde(with = "size")]
    pub max_frame: u32,
    /// `max_handshake_frame`: largest frame body accepted before a
    /// connection has completed its handshake (and, over TCP, its token
    /// check), in bytes. Default 4 KiB: a `Hello` is small, and a peer that
    /// has not authenticated can make the daemon hold no more than this for
    /// it.
    #[serde(with = "size")]
    pub max_handshake_frame: u32,
    /// `max_header_bytes`: largest header block of one message, in bytes,
    /// counted within `max_frame`. Default 64 KiB. A larger one is refused
    /// (`LimitExceeded`, not routed); the connection stays.
    #[serde(with = "size")]
    pub max_header_bytes: u32,
    /// `max_pending`: bytes queued per connection before new messages for it
    /// are dropped (and reported with `Lagged`). Default 8 MiB. It counts
    /// frame bytes; a run of 16 KiB or more shared with other subscribers
    /// keeps its whole read buffer (64 KiB plus a frame) alive while queued,
    /// so in the worst case a queue holds a few times this in memory.
    #[serde(with = "size")]
    pub max_pending: usize,
    /// `socket_buffer`: send buffer (`SO_SNDBUF`) of each local (Unix
    /// socket) connection: bytes the kernel may hold on their way to a
    /// client, in addition to `max_pending`. Default 1 MiB; 0 keeps the
    /// system default (about 208 KiB). The kernel caps it at
    /// `net.core.wmem_max`.
    #[serde(with = "size")]
    pub socket_buffer: usize,
    /// `handshake_timeout`: time a new connection has to send `Hello`. Default 5 s.
    #[serde(with = "humantime_serde")]
    pub handshake_timeout: Duration,
    /// `ping_interval`: a connection silent this long is pinged. Default 30 s.
    #[serde(with = "humantime_serde")]
    pub ping_interval: Duration,
    /// `max_pings_missed`: pings left unanswered before the connection is closed. Default 2.
    pub max_pings_missed: u32,
    /// `max_replies_per_connection`: requests one connection has received
    /// and not answered that the daemon tracks, so that their requesters
    /// get `ResponderGone` at once if it closes (D-Bus has the same
    /// setting). Beyond it, answered and abandoned ones are swept out; if
    /// it is still full, a new request is not tracked there and its
    /// requester waits out its timeout. Default 4,096.
    pub max_replies_per_connection: usize,
    /// `max_closed`: closed connections remembered for `bus-cli list
    /// --closed` (`$BUS.api.closed`), the oldest forgotten first. Default
    /// 1,000; 0 remembers none.
    pub max_closed: usize,
    /// `max_names_per_connection`: well-known names one connection may own
    /// or wait for at once (D-Bus has the same setting). Default 512.
    pub max_names_per_connection: usize,
    /// `max_connections`: live connections at once. Default 10,000.
    pub max_connections: usize,
    /// `max_connections_per_uid`: connections of one Unix user, counted from
    /// accept (before the handshake). Default 1,024: below the total, so one
    /// user cannot take every slot.
    pub max_connections_per_uid: usize,
    /// `reserved_connections`: slots of `max_connections` that only the
    /// daemon's uid and root may use, so an administrator can always
    /// connect and kick. Default 16; at `max_connections` or above, only
    /// they can connect.
    pub reserved_connections: usize,
    /// `max_tcp_connections`: network (TCP and TLS) connections together,
    /// authenticated or not: they can never take the local peers' slots.
    /// Default 1,024.
    pub max_tcp_connections: usize,
    /// `max_pending_handshakes`: network connections that have not completed
    /// their handshake and token check. Default 128: unauthenticated
    /// sockets cannot starve authenticated peers, and `handshake_timeout`
    /// ends them. (A local user's are bounded by its quota.)
    pub max_pending_handshakes: usize,
    /// `tcp_backlog`: the TCP listener's backlog of connections the kernel
    /// completed and the daemon has not accepted yet. Default 1,024.
    pub tcp_backlog: u32,
    /// `max_subscriptions`: subscriptions per connection. Default 10,000.
    pub max_subscriptions: usize,
    /// `max_subscriptions_per_uid`: subscriptions of all the connections of
    /// one user together (a local uid other than the daemon's and root, a
    /// network user, or `tcp`). Default 1,000,000: a tenth of what
    /// `max_connections_per_uid`
    /// connections could hold, so one user cannot fill the table everyone
    /// shares, while the routing benchmark's 100,000 fit.
    pub max_subscriptions_per_uid: usize,
    /// `max_pending_per_uid`: bytes of messages queued for all the
    /// connections of one user together (as `max_subscriptions_per_uid`
    /// counts users), beyond which new messages for them are dropped and
    /// reported with `Lagged`. Default 64 MiB: eight connections' worth of
    /// `max_pending`, so one user's stalled readers cannot hold the memory
    /// every user shares.
    #[serde(with = "size")]
    pub max_pending_per_uid: usize,
    /// `max_subject_len`: bytes in a subject or pattern. Default 1024.
    pub max_subject_len: usize,
    /// `max_subject_tokens`: dot-separated tokens in a subject or pattern. Default 64.
    pub max_subject_tokens: usize,
    /// `shutdown_grace`: how long connections may flush on shutdown or close. Default 2 s.
    #[serde(with = "humantime_serde")]
    pub shutdown_grace: Duration,
    /// `max_fds_per_message`: file descriptors one message may carry (at
    /// most 253, the kernel's limit). More: an error, and the connection
    /// is closed. Default 16.
    pub max_fds_per_message: usize,
    /// `max_fds_pending`: file descriptors queued for one connection;
    /// beyond it, messages with descriptors for it are dropped and
    /// reported (`Lagged`). Default 256.
    pub max_fds_pending: usize,
    /// `max_stall`: longest a lossless subscriber may hold a publisher back
    /// (its queue full, the publisher unread); then it is disconnected as
    /// a slow consumer and the publisher goes on. Default 5 s.
    #[serde(with = "humantime_serde")]
    pub max_stall: Duration,
    /// `allow_uid`: Unix users allowed to connect besides the daemon's own
    /// user and root. Default: none.
    pub allow_uid: Vec<u32>,
    /// `allow_gid`: Unix groups (the peer's primary group, from `SO_PEERCRED`)
    /// whose members may connect. Default: none.
    pub allow_gid: Vec<u32>,
    /// `tcp`: also listen on TCP at this address (e.g. `0.0.0.0:7420`; port 0
    /// picks a free one). Default: off.
    pub tcp: Option<String>,
    /// `tcp_insecure`: allow TCP without a token. Default false.
    pub tcp_insecure: bool,
    /// `token_file`: file whose first line is the shared token network peers
    /// must present. `BUS_TOKEN` takes precedence.
    pub token_file: Option<PathBuf>,
    /// The token itself (from `BUS_TOKEN`, or set in-process); never printed.
    #[serde(skip)]
    pub token: Option<String>,
    /// `tls_client_ca`: PEM CA of client certificates. With it, the TLS
    /// listener asks clients for a certificate (mTLS) and maps one it
    /// verifies to the `[[users]]` entry with its `cert_name`; a client
    /// may still present none and a token instead. Default: off.
    pub tls_client_ca: Option<PathBuf>,
    /// `tls_cert`: PEM certificate chain; with `tls_key`, TCP speaks TLS.
    pub tls_cert: Option<PathBuf>,
    /// `tls_key`: PEM private key for `tls_cert`.
    pub tls_key: Option<PathBuf>,
    /// `node_id`: this daemon's name among bridged daemons. Default: the host
    /// name and a hash of the socket path (stable across restarts).
    pub node_id: Option<String>,
    /// `bridge`: daemons to bridge with (`tcp://host:port`, `tls://host:port`),
    /// dialed with `bridge_token_file` (else this daemon's token) and kept
    /// connected. Default: none.
    pub bridge: Vec<String>,
    /// `bridge_ca`: CA (PEM) for `tls://` bridges. Default: `$BUS_CA`.
    pub bridge_ca: Option<PathBuf>,
    /// `bridge_token_file`: file whose first line is the token presented to
    /// the daemons this one bridges to. Default: this daemon's own token
    /// (`token_file` / `BUS_TOKEN`), for a cluster sharing one token.
    pub bridge_token_file: Option<PathBuf>,
    /// `bridge_buffer`: bytes of messages held per bridge link while it is
    /// down; beyond it they are dropped and counted. Default 8 MiB.
    #[serde(with = "size")]
    pub bridge_buffer: usize,
    /// `bridge_hold`: how long held messages wait, after the link is back,
    /// for the other side to want them again (it may have restarted), and how
    /// long an accepted link that went away is remembered. Default 10 s.
    #[serde(with = "humantime_serde")]
    pub bridge_hold: Duration,
    /// `link_ping_interval`: bridge keep-alive. Default 1 s.
    #[serde(with = "humantime_serde")]
    pub link_ping_interval: Duration,
    /// `link_timeout`: a bridge link silent this long is down. Default 3 s.
    #[serde(with = "humantime_serde")]
    pub link_timeout: Duration,
    /// `workers`: threads that run the connections. Default 0: half the
    /// CPUs, at least one ([`worker_threads`](Config::worker_threads)).
    ///
    /// The daemon shares the host with its clients, and they spend more CPU
    /// per message than it does; with more workers than it needs it mostly
    /// moves each connection's reads and writes between cores: on 2 CPUs
    /// one worker streams 1 → 1 as fast as two, while two deliver a fan-out
    /// a few percent faster for more CPU per delivery
    /// (`docs/performance.md`).
    pub workers: usize,
    /// `log_format`: `text` (default) or `json`, one object per line for
    /// log shippers. Text has ANSI colours only on a terminal (and never
    /// with `NO_COLOR` set), and under systemd's journal (`JOURNAL_STREAM`)
    /// carries no timestamp of its own and the level as a syslog priority
    /// prefix.
    pub log_format: LogFormat,
    /// `metrics`: serve Prometheus metrics on HTTP `GET /metrics` at this
    /// address (e.g. `127.0.0.1:9464`; port 0 picks one, shown by
    /// `bus-cli info`). Anyone who can reach it reads the daemon's
    /// counters, so keep it on loopback or behind a firewall. Default: off.
    pub metrics: Option<String>,
    /// `[[permissions]]`: what each local user or group (by `uid` or
    /// `gid`), or network user (`user`, of `[[users]]`) may publish,
    /// subscribe to, own and call, and the `default`
    /// for everyone else who may connect (`docs/security.md`). A user or
    /// group named here may connect. Default: none, so every peer let in
    /// may do anything but watch (`>`, events, others' replies); the
    /// daemon's uid and root may do everything.
    pub permissions: Vec<crate::acl::Permissions>,
    /// `[[users]]`: named network users, each with a token of its own (the
    /// first line of `token_file`), so that `[[permissions]]` entries with
    /// `user = NAME` give remote peers different rights. A peer presenting
    /// the shared token (`token_file`) is the principal `tcp`. Default:
    /// none.
    pub users: Vec<NetUser>,
    /// `upstream_buffer`: bytes of messages held for the NATS upstream while
    /// it is down (and while it is slower than what is published here);
    /// beyond it they are dropped and counted. Default 8 MiB.
    #[serde(with = "size")]
    pub upstream_buffer: usize,
    /// `upstream_settle`: after the upstream link returns with messages
    /// held, how long they (and what is published meanwhile, behind them)
    /// wait before going up, so that the other hosts, reconnecting to a
    /// restarted server within the same backoff (at most 2.5 s), have
    /// subscribed again and get them. Default 3 s; 0 sends at once.
    #[serde(with = "humantime_serde")]
    pub upstream_settle: Duration,
    /// `[upstream]`: a NATS server or cluster this daemon joins, so that
    /// hosts share one bus through it (`docs/upstream.md`). Default: none.
    pub upstream: UpstreamConfig,
}

/// The `[upstream]` section: which NATS servers, how to log in, and what
/// crosses.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct UpstreamConfig {
    /// `urls`: NATS servers to connect to (`nats://host:port`,
    /// `tls://host:port`; several seed a cluster). Empty: no upstream.
    pub urls: Vec<String>,
    /// `token_file`: a file whose first line is the NATS token.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub token_file: Option<PathBuf>,
    /// `user` and `password_file`: NATS user and a file whose first line is
    /// its password.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
    /// See `user`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub password_file: Option<PathBuf>,
    /// `creds_file`: a NATS credentials file (JWT and NKey seed).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub creds_file: Option<PathBuf>,
    /// `ca`: CA (PEM) for `tls://` servers. Default: the system's roots.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ca: Option<PathBuf>,
    /// `export`: patterns of local subjects that go up. Default `[">"]`.
    pub export: Vec<String>,
    /// `import`: patterns of upstream subjects that may come down to local
    /// subscribers. Default `[">"]`.
    pub import: Vec<String>,
}

impl Default for UpstreamConfig {
    fn default() -> Self {
        Self {
            urls: Vec::new(),
            token_file: None,
            user: None,
            password_file: None,
            creds_file: None,
            ca: None,
            export: vec![">".into()],
            import: vec![">".into()],
        }
    }
}

impl UpstreamConfig {
    /// Checks the urls and patterns.
    fn check(&self) -> Result<(), String> {
        for url in &self.urls {
            let ok = ["nats://", "tls://"]
                .iter()
                .any(|s| url.strip_prefix(s).is_some_and(|rest| rest.contains(':')));
            if !ok {
                return Err(format!(
                    "upstream url {url:?} must be nats://host:port or tls://host:port"
                ));
            }
        }
        for p in self.export.iter().chain(&self.import) {
            if let Err(e) = libbus::subject::validate_pattern(p) {
                return Err(format!("upstream pattern {p:?}: {e}"));
            }
            if p.starts_with(libbus::subject::RESERVED_PREFIX) {
                return Err(format!(
                    "upstream pattern {p:?}: $BUS. never crosses the upstream"
                ));
            }
        }
        if self.user.is_some() != self.password_file.is_some() {
            return Err("[upstream] user and password_file go together".into());
        }
        let logins = [
            self.token_file.is_some(),
            self.user.is_some(),
            self.creds_file.is_some(),
        ];
        if logins.iter().filter(|b| **b).count() > 1 {
            return Err("[upstream] takes one of token_file, user/password_file or creds_file".into());
        }
        Ok(())
    }
}

/// One `[[users]]` entry: a network user, and how it proves who it is.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NetUser {
    /// Its name (`user = NAME` in `[[permissions]]`, `{user}` in patterns).
    pub name: String,
    /// A file whose first line is its token (never printed or logged).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token_file: Option<PathBuf>,
    /// A DNS name (subject alternative name) of its TLS client
    /// certificate, signed by `tls_client_ca` (mTLS).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cert_name: Option<String>,
}

/// The line (from 1) of `text` that a validation error is about: the
/// first holding the value it quotes, else the start of the
/// `[[permissions]]` or `[[users]]` entry it names.
fn locate(text: &str, error: &str) -> Option<usize> {
    let quoted = error.split('"').nth(1).filter(|q| !q.is_empty());
    if let Some(q) = quoted {
        let needle = format!("\"{q}\"");
        if let Some(i) = text.lines().position(|l| l.contains(&needle)) {
            return Some(i + 1);
        }
    }
    // "[[table]] entry N: ..."
    let (table, rest) = error.split_once(" entry ").filter(|(t, _)| t.starts_with("[["))?;
    let entry: usize = rest.split(':').next()?.parse().ok()?;
    text.lines()
        .enumerate()
        .filter(|(_, l)| l.trim_start().starts_with(table))
        .nth(entry.checked_sub(1)?)
        .map(|(i, _)| i + 1)
}

/// How busd writes its log (`log_format`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Lines for people (and journald).
    #[default]
    Text,
    /// One JSON object per line.
    Json,
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
            max_handshake_frame: 4 << 10,
            max_header_bytes: libbus::headers::DEFAULT_MAX_HEADER_BYTES,
            max_pending: 8 << 20,
            socket_buffer: libbus::transport::DEFAULT_SOCKET_BUFFER,
            handshake_timeout: Duration::from_secs(5),
            ping_interval: Duration::from_secs(30),
            max_pings_missed: 2,
            max_replies_per_connection: 4096,
            max_closed: 1000,
            max_names_per_connection: 512,
            max_connections: 10_000,
            max_connections_per_uid: 1024,
            reserved_connections: 16,
            max_tcp_connections: 1024,
            max_pending_handshakes: 128,
            tcp_backlog: 1024,
            max_subscriptions: 10_000,
            max_subscriptions_per_uid: 1_000_000,
            max_pending_per_uid: 64 << 20,
            max_subject_len: 1024,
            max_subject_tokens: 64,
            shutdown_grace: Duration::from_secs(2),
            max_stall: Duration::from_secs(5),
            max_fds_per_message: 16,
            max_fds_pending: 256,
            allow_uid: Vec::new(),
            allow_gid: Vec::new(),
            tcp: None,
            tcp_insecure: false,
            token_file: None,
            token: None,
            tls_client_ca: None,
            tls_cert: None,
            tls_key: None,
            node_id: None,
            bridge: Vec::new(),
            bridge_ca: None,
            bridge_token_file: None,
            bridge_buffer: 8 << 20,
            bridge_hold: Duration::from_secs(10),
            link_ping_interval: Duration::from_secs(1),
            link_timeout: Duration::from_secs(3),
            workers: 0,
            log_format: LogFormat::Text,
            metrics: None,
            permissions: Vec::new(),
            users: Vec::new(),
            upstream_buffer: 8 << 20,
            upstream_settle: Duration::from_secs(3),
            upstream: UpstreamConfig::default(),
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

    /// Parses a TOML config file's text. Missing keys keep their defaults;
    /// unknown keys are an error (a typo must not silently do nothing).
    pub fn from_toml(text: &str) -> Result<Self, String> {
        toml::from_str(text).map_err(|e: toml::de::Error| {
            // One line, for the log: where, then what.
            let message = e.message().trim().replace('\n', " ");
            match e.span() {
                Some(span) => {
                    let before = &text[..span.start.min(text.len())];
                    let line = before.matches('\n').count() + 1;
                    let source = text.lines().nth(line - 1).unwrap_or_default().trim();
                    format!("line {line} ({source}): {message}")
                }
                None => message,
            }
        })
    }

    /// Parses and validates a config file's text (`busd --check-config`).
    /// An error names its line: where the parser stopped, or for a value
    /// that does not validate, the line that holds it (or the
    /// `[[permissions]]` entry it is in).
    pub fn check(text: &str) -> Result<Self, String> {
        let config = Self::from_toml(text)?;
        config.validate().map_err(|e| match locate(text, &e) {
            Some(line) => {
                let source = text.lines().nth(line - 1).unwrap_or_default().trim();
                format!("line {line} ({source}): {e}")
            }
            None => e,
        })?;
        Ok(config)
    }

    /// The configuration as TOML, in the config file's format.
    pub fn to_toml(&self) -> String {
        toml::to_string(self).unwrap_or_else(|e| format!("# cannot render configuration: {e}\n"))
    }

    /// The number of worker threads `workers` asks for: itself, or for 0
    /// half the CPUs this process may run on (at least one).
    pub fn worker_threads(&self) -> usize {
        if self.workers > 0 {
            return self.workers;
        }
        let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
        (cpus / 2).max(1)
    }

    /// Checks that the values fit together.
    pub fn validate(&self) -> Result<(), String> {
        for (i, p) in self.permissions.iter().enumerate() {
            p.validate()
                .map_err(|e| format!("[[permissions]] entry {}: {e}", i + 1))?;
        }
        for (i, u) in self.users.iter().enumerate() {
            if u.name.is_empty()
                || u.name
                    .chars()
                    .any(|c| c.is_whitespace() || c.is_control() || c == '.')
            {
                return Err(format!(
                    "[[users]] entry {}: the name {:?} must be non-empty, without dots or whitespace",
                    i + 1,
                    u.name
                ));
            }
            if u.token_file.is_none() && u.cert_name.is_none() {
                return Err(format!(
                    "[[users]] entry {}: {:?} needs a token_file or a cert_name",
                    i + 1,
                    u.name
                ));
            }
            if u.cert_name.is_some() && self.tls_client_ca.is_none() {
                return Err(format!(
                    "[[users]] entry {}: a cert_name needs tls_client_ca, the CA of client certificates",
                    i + 1
                ));
            }
            if self.users[..i].iter().any(|o| o.name == u.name) {
                return Err(format!("[[users]] entry {}: {:?} is named twice", i + 1, u.name));
            }
        }
        if self.permissions.iter().filter(|p| p.default).count() > 1 {
            return Err("at most one [[permissions]] entry may say default = true".into());
        }
        if self.max_pending < self.max_frame as usize {
            return Err(format!(
                "max_pending ({}) must be at least max_frame ({}), or no large message could ever be queued",
                self.max_pending, self.max_frame
            ));
        }
        if self.max_pending_per_uid < self.max_frame as usize {
            return Err(format!(
                "max_pending_per_uid ({}) must be at least max_frame ({})",
                self.max_pending_per_uid, self.max_frame
            ));
        }
        if self.max_frame < 64 {
            return Err(format!(
                "max_frame ({}) must be at least 64 bytes",
                self.max_frame
            ));
        }
        if self.max_handshake_frame < 64 || self.max_handshake_frame > self.max_frame {
            return Err(format!(
                "max_handshake_frame ({}) must be at least 64 bytes and at most max_frame ({})",
                self.max_handshake_frame, self.max_frame
            ));
        }
        if !(1..=253).contains(&self.max_fds_per_message) {
            return Err(format!(
                "max_fds_per_message ({}) must be 1 to 253 (the kernel passes at most 253 at once)",
                self.max_fds_per_message
            ));
        }
        if self.socket_mode > 0o777 {
            return Err(format!(
                "socket_mode ({:o}) is not a permission mode",
                self.socket_mode
            ));
        }
        if self.ping_interval.is_zero() || self.handshake_timeout.is_zero() || self.max_stall.is_zero() {
            return Err("ping_interval, handshake_timeout and max_stall must be greater than zero".into());
        }
        if self.link_ping_interval.is_zero() || self.link_timeout < self.link_ping_interval {
            return Err(format!(
                "link_ping_interval ({:?}) must be greater than zero and at most link_timeout ({:?})",
                self.link_ping_interval, self.link_timeout
            ));
        }
        for address in &self.bridge {
            match address.parse::<libbus::Address>() {
                Ok(libbus::Address::Tcp(_) | libbus::Address::Tls(_)) => {}
                Ok(_) => {
                    return Err(format!(
                        "bridge address {address:?} must be tcp://host:port or tls://host:port"
                    ))
                }
                Err(e) => return Err(format!("bridge address: {e}")),
            }
        }
        self.upstream.check()?;
        if !self.upstream.urls.is_empty() && !self.bridge.is_empty() {
            return Err(
                "an upstream and bridges cannot be combined: a message could reach a host both ways \
                 and be delivered twice; link the hosts through the NATS upstream only"
                    .into(),
            );
        }
        for (name, v) in [
            ("max_connections", self.max_connections),
            ("max_connections_per_uid", self.max_connections_per_uid),
            ("max_subscriptions_per_uid", self.max_subscriptions_per_uid),
            ("max_tcp_connections", self.max_tcp_connections),
            ("max_pending_handshakes", self.max_pending_handshakes),
            ("max_subject_len", self.max_subject_len),
            ("max_subject_tokens", self.max_subject_tokens),
        ] {
            if v == 0 {
                return Err(format!("{name} must be at least 1"));
            }
        }
        Ok(())
    }

    /// The limits as (name, value) pairs, as reported by `$BUS.api.info`.
    pub fn limits(&self) -> Vec<(String, u64)> {
        let ms = |d: Duration| d.as_millis().try_into().unwrap_or(u64::MAX);
        vec![
            ("max_frame".into(), self.max_frame.into()),
            ("max_handshake_frame".into(), self.max_handshake_frame.into()),
            ("max_header_bytes".into(), self.max_header_bytes.into()),
            ("max_pending".into(), self.max_pending as u64),
            ("socket_buffer".into(), self.socket_buffer as u64),
            ("max_connections".into(), self.max_connections as u64),
            ("max_closed".into(), self.max_closed as u64),
            (
                "max_names_per_connection".into(),
                self.max_names_per_connection as u64,
            ),
            (
                "max_replies_per_connection".into(),
                self.max_replies_per_connection as u64,
            ),
            (
                "max_connections_per_uid".into(),
                self.max_connections_per_uid as u64,
            ),
            ("reserved_connections".into(), self.reserved_connections as u64),
            ("max_tcp_connections".into(), self.max_tcp_connections as u64),
            (
                "max_pending_handshakes".into(),
                self.max_pending_handshakes as u64,
            ),
            ("tcp_backlog".into(), self.tcp_backlog.into()),
            ("max_subscriptions".into(), self.max_subscriptions as u64),
            (
                "max_subscriptions_per_uid".into(),
                self.max_subscriptions_per_uid as u64,
            ),
            ("max_pending_per_uid".into(), self.max_pending_per_uid as u64),
            ("max_subject_len".into(), self.max_subject_len as u64),
            ("max_subject_tokens".into(), self.max_subject_tokens as u64),
            ("max_pings_missed".into(), self.max_pings_missed.into()),
            ("handshake_timeout_ms".into(), ms(self.handshake_timeout)),
            ("ping_interval_ms".into(), ms(self.ping_interval)),
            ("shutdown_grace_ms".into(), ms(self.shutdown_grace)),
            ("max_stall_ms".into(), ms(self.max_stall)),
            ("max_fds_per_message".into(), self.max_fds_per_message as u64),
            ("max_fds_pending".into(), self.max_fds_pending as u64),
            ("bridge_buffer".into(), self.bridge_buffer as u64),
            ("bridge_hold_ms".into(), ms(self.bridge_hold)),
            ("link_ping_interval_ms".into(), ms(self.link_ping_interval)),
            ("link_timeout_ms".into(), ms(self.link_timeout)),
            ("upstream_buffer".into(), self.upstream_buffer as u64),
            ("upstream_settle_ms".into(), ms(self.upstream_settle)),
        ]
    }

    /// `node_id`, or the default: host name plus a hash of the socket path.
    pub fn effective_node_id(&self) -> String {
        if let Some(id) = self.node_id.clone().filter(|s| !s.is_empty()) {
            return id;
        }
        use std::hash::{Hash, Hasher};
        let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
            .map(|h| h.trim().to_owned())
            .unwrap_or_else(|_| "localhost".into());
        // DefaultHasher::new() has fixed keys: the same path gives the same id.
        let mut h = std::hash::DefaultHasher::new();
        self.socket.hash(&mut h);
        format!("{host}-{:08x}", h.finish() as u32)
    }
}

/// Sizes: read as an integer or a string like `"8MiB"`, written as an integer.
mod size {
    use serde::{de::Error, Deserialize, Deserializer, Serializer};

    pub fn serialize<T: Copy + TryInto<u64>, S: Serializer>(v: &T, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_u64((*v).try_into().unwrap_or(u64::MAX))
    }

    pub fn deserialize<'de, T: TryFrom<u64>, D: Deserializer<'de>>(d: D) -> Result<T, D::Error> {
        let v = bytesize::ByteSize::deserialize(d)?.as_u64();
        T::try_from(v).map_err(|_| D::Error::custom(format!("{v} bytes is too large")))
    }
}

/// Permission modes: read as an integer (TOML `0o600`) or an octal string
/// (`"600"`, `"0o600"`), written as a string like `"0o600"`.
mod octal {
    use serde::{de::Error, Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(v: &u32, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&format!("0o{v:o}"))
    }

    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Mode {
        Int(u32),
        Str(String),
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<u32, D::Error> {
        match Mode::deserialize(d)? {
            Mode::Int(v) => Ok(v),
            Mode::Str(s) => super::parse_mode(&s).map_err(D::Error::custom),
        }
    }
}

/// Parses an octal permission mode like `600` or `0o600`.
pub fn parse_mode(s: &str) -> Result<u32, String> {
    u32::from_str_radix(s.trim_start_matches("0o"), 8)
        .ok()
        .filter(|m| *m <= 0o777)
        .ok_or_else(|| format!("{s:?} is not an octal permission mode like 600"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn toml_round_trip_of_the_defaults() {
        let c = Config::default();
        assert_eq!(Config::from_toml(&c.to_toml()).unwrap(), c);
    }

    #[test]
    fn file_values_are_parsed_in_their_human_forms() {
        let c = Config::from_toml(
            r#"
            socket = "/tmp/x.sock"
            socket_mode = 0o660
            max_frame = "64KiB"
            max_pending = 1048576
            ping_interval = "1m 30s"
            allow_uid = [1000, 1001]
            "#,
        )
        .unwrap();
        assert_eq!(c.socket, PathBuf::from("/tmp/x.sock"));
        assert_eq!(c.socket_mode, 0o660);
        assert_eq!(c.max_frame, 64 << 10);
        assert_eq!(c.max_pending, 1 << 20);
        assert_eq!(c.ping_interval, Duration::from_secs(90));
        assert_eq!(c.allow_uid, vec![1000, 1001]);
        assert_eq!(c.max_subscriptions, Config::default().max_subscriptions);
    }

    #[test]
    fn unknown_keys_and_bad_values_are_errors() {
        let e = Config::from_toml("max_frames = 10").unwrap_err();
        assert!(e.contains("max_frames"), "{e}");
        let e = Config::from_toml("max_frame = \"lots\"").unwrap_err();
        assert!(e.contains("max_frame"), "{e}");
        let e = Config::from_toml("socket_mode = \"999\"").unwrap_err();
        assert!(e.contains("octal"), "{e}");
    }
}
