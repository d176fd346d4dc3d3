//! `busd`: flags → [`busd::Config`] → [`busd::Server`], until SIGINT/SIGTERM.

use std::{path::PathBuf, process::ExitCode, time::Duration};

use busd::{Config, Server};
use clap::Parser;
use tokio_util::sync::CancellationToken;

/// The bus daemon: routes messages between local processes over a Unix socket.
///
/// With no flags it runs the embedded default configuration on the default
/// socket ($BUS_ADDRESS, else $XDG_RUNTIME_DIR/bus/busd.sock, else
/// /tmp/bus-$UID/busd.sock). Logs go to stderr; set RUST_LOG (e.g. debug).
#[derive(Debug, Parser)]
#[command(version)]
struct Args {
    /// Unix socket path to listen on.
    #[arg(long, value_name = "PATH")]
    socket: Option<PathBuf>,
    /// Permission bits of the socket file, in octal.
    #[arg(long, value_name = "MODE", value_parser = parse_mode, default_value = "600")]
    socket_mode: u32,
    /// Largest frame accepted (e.g. 1MiB, 65536).
    #[arg(long, value_name = "SIZE", value_parser = parse_size, default_value = "1MiB")]
    max_frame: u64,
    /// Bytes queued per connection before its messages are dropped (and reported).
    #[arg(long, value_name = "SIZE", value_parser = parse_size, default_value = "8MiB")]
    max_pending: u64,
    /// Time a new connection has to complete the handshake.
    #[arg(long, value_name = "DURATION", value_parser = humantime::parse_duration, default_value = "5s")]
    handshake_timeout: Duration,
    /// Ping connections silent for this long; close after --max-pings-missed.
    #[arg(long, value_name = "DURATION", value_parser = humantime::parse_duration, default_value = "30s")]
    ping_interval: Duration,
    /// Unanswered pings before a connection is closed.
    #[arg(long, value_name = "N", default_value_t = 2)]
    max_pings_missed: u32,
    /// Live connections at once.
    #[arg(long, value_name = "N", default_value_t = 10_000)]
    max_connections: usize,
    /// Subscriptions per connection.
    #[arg(long, value_name = "N", default_value_t = 10_000)]
    max_subscriptions: usize,
    /// How long connections may flush on shutdown.
    #[arg(long, value_name = "DURATION", value_parser = humantime::parse_duration, default_value = "2s")]
    shutdown_grace: Duration,
}

fn parse_size(s: &str) -> Result<u64, String> {
    s.parse::<bytesize::ByteSize>().map(|b| b.as_u64())
}

fn parse_mode(s: &str) -> Result<u32, String> {
    u32::from_str_radix(s.trim_start_matches("0o"), 8)
        .ok()
        .filter(|m| *m <= 0o777)
        .ok_or_else(|| format!("{s:?} is not an octal permission mode like 600"))
}

impl Args {
    fn into_config(self) -> Result<Config, String> {
        let mut c = Config::default();
        if let Some(s) = self.socket {
            c.socket = s;
        }
        c.socket_mode = self.socket_mode;
        c.max_frame =
            u32::try_from(self.max_frame).map_err(|_| "--max-frame must be below 4 GiB".to_owned())?;
        c.max_pending =
            usize::try_from(self.max_pending).map_err(|_| "--max-pending is too large".to_owned())?;
        c.handshake_timeout = self.handshake_timeout;
        c.ping_interval = self.ping_interval;
        c.max_pings_missed = self.max_pings_missed;
        c.max_connections = self.max_connections;
        c.max_subscriptions = self.max_subscriptions;
        c.shutdown_grace = self.shutdown_grace;
        Ok(c)
    }
}

fn main() -> ExitCode {
    let args = Args::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    let config = match args.into_config() {
        Ok(c) => c,
        Err(e) => {
            eprintln!("busd: error: {e}");
            return ExitCode::from(2);
        }
    };
    let rt = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("busd: error: starting the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    rt.block_on(async move {
        let server = match Server::bind(config) {
            Ok(s) => s,
            Err(e) => {
                eprintln!("busd: error: {e}");
                return ExitCode::FAILURE;
            }
        };
        let shutdown = CancellationToken::new();
        if let Err(e) = watch_signals(shutdown.clone()) {
            eprintln!("busd: error: installing signal handlers: {e}");
            return ExitCode::FAILURE;
        }
        server.run(shutdown).await;
        ExitCode::SUCCESS
    })
}

/// Cancels `shutdown` on SIGINT or SIGTERM.
fn watch_signals(shutdown: CancellationToken) -> std::io::Result<()> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut int = signal(SignalKind::interrupt())?;
    let mut term = signal(SignalKind::terminate())?;
    tokio::spawn(async move {
        tokio::select! {
            _ = int.recv() => tracing::info!("SIGINT received"),
            _ = term.recv() => tracing::info!("SIGTERM received"),
        }
        shutdown.cancel();
    });
    Ok(())
}
