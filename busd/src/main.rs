//! `busd`: flags → [`busd::Config`] → [`busd::Server`], until SIGINT/SIGTERM.

use std::{path::PathBuf, process::ExitCode, time::Duration};

use busd::{systemd::Inherited, Config, Server};
use clap::Parser;
use tokio_util::sync::CancellationToken;

mod log;
use busd::sys;

#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// The bus daemon: routes messages between local processes over a Unix socket.
///
/// With no flags it runs the embedded default configuration on the default
/// socket ($BUS_ADDRESS, else $XDG_RUNTIME_DIR/bus/busd.sock, else
/// /tmp/bus-$UID/busd.sock). Settings come from the defaults, then a TOML
/// file (same names with underscores): --config FILE, else the first of
/// $XDG_CONFIG_HOME/bus/busd.toml and /etc/bus/busd.toml that exists; then
/// flags.
/// Logs go to stderr; set RUST_LOG (e.g. debug).
#[derive(Debug, Clone, Parser)]
#[command(version)]
struct Args {
    /// TOML file with settings (see --print-config for every key)
    /// [default: $XDG_CONFIG_HOME/bus/busd.toml, else /etc/bus/busd.toml, if one exists].
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
    /// Print the effective configuration as TOML and exit.
    #[arg(long)]
    print_config: bool,
    /// Check a config file (settings and [[permissions]]) and exit: 0 if
    /// it is valid, else 2 with the line and the problem.
    #[arg(long, value_name = "FILE")]
    check_config: Option<PathBuf>,
    /// Print busd's man page (roff) and exit: `busd --manpage > busd.1`.
    #[arg(long)]
    manpage: bool,
    /// Unix socket path to listen on.
    #[arg(long, value_name = "PATH")]
    socket: Option<PathBuf>,
    /// Permission bits of the socket file, in octal [default: 600].
    #[arg(long, value_name = "MODE", value_parser = busd::config::parse_mode)]
    socket_mode: Option<u32>,
    /// Largest frame accepted (e.g. 1MiB, 65536) [default: 1MiB].
    #[arg(long, value_name = "SIZE", value_parser = parse_size)]
    max_frame: Option<u64>,
    /// Largest frame accepted before the handshake (and token check) [default: 4KiB].
    #[arg(long, value_name = "SIZE", value_parser = parse_size)]
    max_handshake_frame: Option<u64>,
    /// Bytes queued per connection before its messages are dropped (and reported) [default: 8MiB].
    #[arg(long, value_name = "SIZE", value_parser = parse_size)]
    max_pending: Option<u64>,
    /// Send buffer (SO_SNDBUF) of each local connection; 0 = system default [default: 1MiB].
    #[arg(long, value_name = "SIZE", value_parser = parse_size)]
    socket_buffer: Option<u64>,
    /// Time a new connection has to complete the handshake [default: 5s].
    #[arg(long, value_name = "DURATION", value_parser = humantime::parse_duration)]
    handshake_timeout: Option<Duration>,
    /// Ping connections silent for this long; close after --max-pings-missed [default: 30s].
    #[arg(long, value_name = "DURATION", value_parser = humantime::parse_duration)]
    ping_interval: Option<Duration>,
    /// Unanswered pings before a connection is closed [default: 2].
    #[arg(long, value_name = "N")]
    max_pings_missed: Option<u32>,
    /// Largest header block of one message, in bytes [default: 64KiB].
    #[arg(long, value_name = "SIZE", value_parser = parse_size)]
    max_header_bytes: Option<u64>,
    /// Log format: text (coloured only on a terminal) or json (one object per line) [default: text].
    #[arg(long, value_name = "FORMAT", value_enum)]
    log_format: Option<busd::config::LogFormat>,
    /// Closed connections remembered for `bus-cli list --closed` [default: 1000].
    #[arg(long, value_name = "N")]
    max_closed: Option<usize>,
    /// Well-known names one connection may own or queue for [default: 512].
    #[arg(long, value_name = "N")]
    max_names_per_connection: Option<usize>,
    /// Unanswered requests tracked per connection [default: 4096].
    #[arg(long, value_name = "N")]
    max_replies_per_connection: Option<usize>,
    /// Live connections at once [default: 10000].
    #[arg(long, value_name = "N")]
    max_connections: Option<usize>,
    /// Connections of one Unix user, from accept [default: 1024].
    #[arg(long, value_name = "N")]
    max_connections_per_uid: Option<usize>,
    /// Connection slots only the daemon's uid and root may use [default: 16].
    #[arg(long, value_name = "N")]
    reserved_connections: Option<usize>,
    /// Network (TCP/TLS) connections together [default: 1024].
    #[arg(long, value_name = "N")]
    max_tcp_connections: Option<usize>,
    /// Network connections still in their handshake and token check [default: 128].
    #[arg(long, value_name = "N")]
    max_pending_handshakes: Option<usize>,
    /// Backlog of the TCP listener [default: 1024].
    #[arg(long, value_name = "N")]
    tcp_backlog: Option<u32>,
    /// Subscriptions per connection [default: 10000].
    #[arg(long, value_name = "N")]
    max_subscriptions: Option<usize>,
    /// Subscriptions of one user's connections together [default: 1000000].
    #[arg(long, value_name = "N")]
    max_subscriptions_per_uid: Option<usize>,
    /// Bytes queued for one user's connections together [default: 64MiB].
    #[arg(long, value_name = "SIZE", value_parser = parse_size)]
    max_pending_per_uid: Option<u64>,
    /// Bytes in a subject or pattern [default: 1024].
    #[arg(long, value_name = "N")]
    max_subject_len: Option<usize>,
    /// Dot-separated tokens in a subject or pattern [default: 64].
    #[arg(long, value_name = "N")]
    max_subject_tokens: Option<usize>,
    /// How long connections may flush on shutdown [default: 2s].
    #[arg(long, value_name = "DURATION", value_parser = humantime::parse_duration)]
    shutdown_grace: Option<Duration>,
    /// File descriptors one message may carry [default: 16].
    #[arg(long, value_name = "N")]
    max_fds_per_message: Option<usize>,
    /// File descriptors queued for one connection before messages with
    /// more are dropped for it [default: 256].
    #[arg(long, value_name = "N")]
    max_fds_pending: Option<usize>,
    /// Longest a lossless subscriber may hold a publisher back before it is
    /// disconnected as a slow consumer [default: 5s].
    #[arg(long, value_name = "DURATION", value_parser = humantime::parse_duration)]
    max_stall: Option<Duration>,
    /// Also let this Unix user connect (repeatable; the daemon's user and root always may).
    #[arg(long, value_name = "UID")]
    allow_uid: Vec<u32>,
    /// Also let members of this primary group connect (repeatable).
    #[arg(long, value_name = "GID")]
    allow_gid: Vec<u32>,
    /// Also listen on TCP (e.g. 0.0.0.0:7420; port 0 picks one, shown by `bus-cli info`).
    #[arg(long, value_name = "ADDR")]
    tcp: Option<String>,
    /// Serve Prometheus metrics on HTTP GET /metrics at this address (e.g. 127.0.0.1:9464; port 0 picks one, shown by `bus-cli info`).
    #[arg(long, value_name = "ADDR")]
    metrics: Option<String>,
    /// File whose first line is the token network peers must present ($BUS_TOKEN wins).
    #[arg(long, value_name = "PATH")]
    token_file: Option<PathBuf>,
    /// Allow TCP without a token (logs a warning).
    #[arg(long)]
    tcp_insecure: bool,
    /// PEM certificate chain: TCP speaks TLS (with --tls-key).
    #[arg(long, value_name = "PEM")]
    tls_cert: Option<PathBuf>,
    /// PEM private key of --tls-cert.
    #[arg(long, value_name = "PEM")]
    tls_key: Option<PathBuf>,
    /// PEM CA of client certificates: TLS clients may present one, mapped to a [[users]] cert_name (mTLS).
    #[arg(long, value_name = "PEM")]
    tls_client_ca: Option<PathBuf>,
    /// Bridge with the daemon at this address (tcp://host:port or tls://host:port; repeatable).
    #[arg(long, value_name = "ADDRESS")]
    bridge: Vec<String>,
    /// Bytes held per bridge link while it is down [default: 8MiB].
    #[arg(long, value_name = "SIZE", value_parser = parse_size)]
    bridge_buffer: Option<u64>,
    /// How long messages held for a bridge link wait for the other side to want them again [default: 10s].
    #[arg(long, value_name = "DURATION", value_parser = humantime::parse_duration)]
    bridge_hold: Option<Duration>,
    /// Bridge keep-alive interval [default: 1s].
    #[arg(long, value_name = "DURATION", value_parser = humantime::parse_duration)]
    link_ping_interval: Option<Duration>,
    /// A bridge link silent this long is down [default: 3s].
    #[arg(long, value_name = "DURATION", value_parser = humantime::parse_duration)]
    link_timeout: Option<Duration>,
    /// File whose first line is the token presented to bridged daemons [default: this daemon's token].
    #[arg(long, value_name = "PATH")]
    bridge_token_file: Option<PathBuf>,
    /// CA (PEM) for tls:// bridges [default: $BUS_CA].
    #[arg(long, value_name = "PEM")]
    bridge_ca: Option<PathBuf>,
    /// Join this NATS server (nats://host:port or tls://host:port; repeatable, for cluster seeds); see [upstream] in the config.
    #[arg(long, value_name = "URL")]
    upstream: Vec<String>,
    /// Bytes held for the NATS upstream while it is down [default: 8MiB].
    #[arg(long, value_name = "SIZE", value_parser = parse_size)]
    upstream_buffer: Option<u64>,
    /// After the NATS upstream returns with messages held, how long they wait for other hosts to resubscribe [default: 3s].
    #[arg(long, value_name = "DURATION", value_parser = humantime::parse_duration)]
    upstream_settle: Option<Duration>,
    /// This daemon's node id among bridged daemons [default: hostname-<hash of socket path>].
    #[arg(long, value_name = "ID")]
    node_id: Option<String>,
    /// Threads that run the connections; 0 = half the CPUs, at least one [default: 0].
    #[arg(long, value_name = "N")]
    workers: Option<usize>,
}

fn parse_size(s: &str) -> Result<u64, String> {
    s.parse::<bytesize::ByteSize>().map(|b| b.as_u64())
}

impl Args {
    /// Defaults, then the config file, then flags.
    /// The configuration: the file (`--config`, else the first of
    /// [`search_path`] that exists, else none: the embedded defaults), then
    /// the flags. Also returns the file read.
    fn into_config(self) -> Result<(Config, Option<PathBuf>), String> {
        let file = self
            .config
            .clone()
            .or_else(|| search_path().into_iter().find(|p| p.exists()));
        let mut c = match &file {
            Some(path) => {
                let text =
                    std::fs::read_to_string(path).map_err(|e| format!("reading {}: {e}", path.display()))?;
                Config::check(&text).map_err(|e| format!("{}: {e}", path.display()))?
            }
            None => Config::default(),
        };
        fn set<T>(slot: &mut T, flag: Option<T>) {
            if let Some(v) = flag {
                *slot = v;
            }
        }
        set(&mut c.socket, self.socket);
        set(&mut c.socket_mode, self.socket_mode);
        if let Some(v) = self.max_frame {
            c.max_frame = u32::try_from(v).map_err(|_| "--max-frame must be below 4 GiB".to_owned())?;
        }
        if let Some(v) = self.max_handshake_frame {
            c.max_handshake_frame =
                u32::try_from(v).map_err(|_| "--max-handshake-frame must be below 4 GiB".to_owned())?;
        }
        if let Some(v) = self.max_pending {
            c.max_pending = usize::try_from(v).map_err(|_| "--max-pending is too large".to_owned())?;
        }
        if let Some(v) = self.socket_buffer {
            c.socket_buffer = usize::try_from(v).map_err(|_| "--socket-buffer is too large".to_owned())?;
        }
        set(&mut c.handshake_timeout, self.handshake_timeout);
        set(&mut c.ping_interval, self.ping_interval);
        set(&mut c.max_pings_missed, self.max_pings_missed);
        set(&mut c.max_connections, self.max_connections);
        set(&mut c.max_connections_per_uid, self.max_connections_per_uid);
        set(&mut c.reserved_connections, self.reserved_connections);
        set(&mut c.max_closed, self.max_closed);
        set(&mut c.max_names_per_connection, self.max_names_per_connection);
        if let Some(v) = self.max_header_bytes {
            c.max_header_bytes =
                u32::try_from(v).map_err(|_| "--max-header-bytes must be below 4 GiB".to_owned())?;
        }
        set(&mut c.max_replies_per_connection, self.max_replies_per_connection);
        set(&mut c.max_tcp_connections, self.max_tcp_connections);
        set(&mut c.max_pending_handshakes, self.max_pending_handshakes);
        set(&mut c.tcp_backlog, self.tcp_backlog);
        set(&mut c.max_subscriptions, self.max_subscriptions);
        set(&mut c.max_subscriptions_per_uid, self.max_subscriptions_per_uid);
        if let Some(v) = self.max_pending_per_uid {
            c.max_pending_per_uid =
                usize::try_from(v).map_err(|_| "--max-pending-per-uid is too large".to_owned())?;
        }
        set(&mut c.max_subject_len, self.max_subject_len);
        set(&mut c.max_subject_tokens, self.max_subject_tokens);
        set(&mut c.shutdown_grace, self.shutdown_grace);
        set(&mut c.max_stall, self.max_stall);
        set(&mut c.max_fds_per_message, self.max_fds_per_message);
        set(&mut c.max_fds_pending, self.max_fds_pending);
        c.allow_uid.extend(self.allow_uid);
        c.allow_gid.extend(self.allow_gid);
        set(&mut c.tcp, self.tcp.map(Some));
        set(&mut c.metrics, self.metrics.map(Some));
        set(&mut c.token_file, self.token_file.map(Some));
        c.tcp_insecure |= self.tcp_insecure;
        set(&mut c.tls_cert, self.tls_cert.map(Some));
        set(&mut c.tls_key, self.tls_key.map(Some));
        set(&mut c.tls_client_ca, self.tls_client_ca.map(Some));
        c.bridge.extend(self.bridge);
        if let Some(v) = self.bridge_buffer {
            c.bridge_buffer = usize::try_from(v).map_err(|_| "--bridge-buffer is too large".to_owned())?;
        }
        set(&mut c.bridge_ca, self.bridge_ca.map(Some));
        set(&mut c.bridge_token_file, self.bridge_token_file.map(Some));
        set(&mut c.bridge_hold, self.bridge_hold);
        set(&mut c.link_ping_interval, self.link_ping_interval);
        set(&mut c.link_timeout, self.link_timeout);
        c.upstream.urls.extend(self.upstream);
        if let Some(v) = self.upstream_buffer {
            c.upstream_buffer =
                usize::try_from(v).map_err(|_| "--upstream-buffer is too large".to_owned())?;
        }
        set(&mut c.upstream_settle, self.upstream_settle);
        set(&mut c.node_id, self.node_id.map(Some));
        set(&mut c.workers, self.workers);
        set(&mut c.log_format, self.log_format);
        c.token = std::env::var(libbus::client::ENV_TOKEN)
            .ok()
            .filter(|t| !t.is_empty());
        c.validate()?;
        Ok((c, file))
    }
}

/// Where busd looks for its file without `--config`, in order:
/// `$XDG_CONFIG_HOME/bus/busd.toml` (`~/.config` when unset), then
/// `/etc/bus/busd.toml`.
fn search_path() -> Vec<PathBuf> {
    let config_home = std::env::var_os("XDG_CONFIG_HOME")
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".config")));
    config_home
        .map(|d| d.join("bus/busd.toml"))
        .into_iter()
        .chain([PathBuf::from("/etc/bus/busd.toml")])
        .collect()
}

/// `busd --check-config FILE`.
fn check_config(path: &std::path::Path) -> ExitCode {
    let checked = std::fs::read_to_string(path)
        .map_err(|e| format!("reading it: {e}"))
        .and_then(|text| Config::check(&text));
    match checked {
        Ok(config) => {
            let entries: Vec<String> = config.permissions.iter().map(|p| p.label()).collect();
            let policy = match entries.len() {
                0 => "no [[permissions]] entries".to_owned(),
                n => format!("{n} [[permissions]] entries: {}", entries.join(", ")),
            };
            println!("{}: valid; {policy}", path.display());
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("busd: {}: {e}", path.display());
            ExitCode::from(2)
        }
    }
}

fn main() -> ExitCode {
    // Before anything opens a descriptor or starts a thread.
    let inherited = match sys::inherited_sockets() {
        Ok(fds) => fds,
        Err(e) => {
            eprintln!("busd: error: reading the sockets systemd passed: {e}");
            return ExitCode::FAILURE;
        }
    };
    let args = Args::parse();
    if args.manpage {
        let man = clap_mangen::Man::new(<Args as clap::CommandFactory>::command());
        return match man.render(&mut std::io::stdout()) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("busd: error: writing the man page: {e}");
                ExitCode::FAILURE
            }
        };
    }
    if let Some(path) = &args.check_config {
        return check_config(path);
    }
    let print_config = args.print_config;
    let (config, file) = match args.clone().into_config() {
        Ok(c) => c,
        Err(e) => {
            eprintln!("busd: error: {e}");
            return ExitCode::from(2);
        }
    };
    if print_config {
        match &file {
            Some(f) => println!("# from {} and the flags", f.display()),
            None => {
                let looked: Vec<String> = search_path().iter().map(|p| p.display().to_string()).collect();
                println!(
                    "# embedded defaults and the flags (no --config; none of {})",
                    looked.join(", ")
                );
            }
        }
        print!("{}", config.to_toml());
        return ExitCode::SUCCESS;
    }
    log::init(config.log_format);
    match &file {
        Some(f) => tracing::info!(file = %f.display(), "configuration read"),
        None => tracing::info!("no configuration file: embedded defaults"),
    }
    let rt = match Server::runtime_builder(&config)
        .on_thread_park(sys::on_idle)
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("busd: error: starting the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    rt.block_on(async move {
        // Handlers first: once the socket is bound a client (or a test) may
        // see the daemon and signal it at once.
        let shutdown = CancellationToken::new();
        let (reload_tx, reload_rx) = tokio::sync::mpsc::unbounded_channel();
        if let Err(e) = watch_signals(shutdown.clone(), reload_tx) {
            eprintln!("busd: error: installing signal handlers: {e}");
            return ExitCode::FAILURE;
        }
        let server = match Inherited::sort(inherited).and_then(|i| Server::bind_with(config, i)) {
            Ok(s) => s,
            Err(e) => {
                eprintln!("busd: error: {e}");
                return ExitCode::FAILURE;
            }
        };
        let reloader = server.reloader();
        reloader.loaded_from(file.as_deref());
        tokio::spawn(reload_on_hangup(reload_rx, reloader, args));
        server.run(shutdown).await;
        ExitCode::SUCCESS
    })
}

/// On each SIGHUP (a message on `hangups`): reads the configuration again
/// as at start (the file, then the same flags) and has the daemon take it.
/// A bad file is one error line, and the running configuration stays.
async fn reload_on_hangup(
    mut hangups: tokio::sync::mpsc::UnboundedReceiver<()>,
    reloader: busd::Reloader,
    args: Args,
) {
    while hangups.recv().await.is_some() {
        let read = args.clone().into_config();
        match read.and_then(|(config, file)| {
            let restart = reloader.reload(config, file.as_deref())?;
            Ok((file, restart))
        }) {
            Ok((file, restart)) => {
                let from =
                    file.map_or_else(|| "the embedded defaults".to_owned(), |f| f.display().to_string());
                if restart.is_empty() {
                    tracing::info!(from, "configuration reloaded");
                } else {
                    let restart = restart.join(", ");
                    tracing::warn!(
                        from,
                        restart,
                        "configuration reloaded; these settings changed and take effect at the next start"
                    );
                }
            }
            Err(e) => tracing::error!("configuration reload refused, the running configuration stays: {e}"),
        }
    }
}

/// Cancels `shutdown` on SIGINT or SIGTERM; on SIGHUP, which would otherwise
/// end the daemon without removing its socket, asks for a reload
/// (`reload`).
fn watch_signals(
    shutdown: CancellationToken,
    reload: tokio::sync::mpsc::UnboundedSender<()>,
) -> std::io::Result<()> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut int = signal(SignalKind::interrupt())?;
    let mut term = signal(SignalKind::terminate())?;
    let mut hup = signal(SignalKind::hangup())?;
    tokio::spawn(async move {
        loop {
            tokio::select! {
                _ = int.recv() => {
                    tracing::info!("SIGINT received");
                    break;
                }
                _ = term.recv() => {
                    tracing::info!("SIGTERM received");
                    break;
                }
                _ = hup.recv() => {
                    tracing::info!("SIGHUP received: reloading the configuration");
                    let _ = reload.send(());
                }
            }
        }
        shutdown.cancel();
    });
    Ok(())
}
