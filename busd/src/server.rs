//! The daemon as a whole: binding, the accept loop, shutdown, and
//! [`Daemon`], a handle that runs one on its own thread (for tests, examples
//! and benchmarks).

use std::{
    sync::Arc,
    time::{Duration, Instant},
};

use libbus::{
    proto::{api::Peer, ErrorCode},
    transport::{Reader, Writer},
    Address,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_util::{sync::CancellationToken, task::TaskTracker};

use crate::{
    cluster::Cluster,
    config::Config,
    conn, control,
    deliver::Router,
    listener::UnixListener,
    loglimit::LogLimit,
    metrics::MetricsEndpoint,
    policy::Policy,
    registry::Registry,
    state::{Clock, State, CONN_LOG_LINES_PER_SECOND, LOG_LINES_PER_SECOND},
    systemd::{self, Inherited},
    tcp::{self, TcpEndpoint},
    Error,
};

/// Replaces a running daemon's configuration (SIGHUP), from
/// [`Server::reloader`].
#[derive(Debug, Clone)]
pub struct Reloader(Arc<State>);

impl Reloader {
    /// Records where the running configuration came from (`None`: the
    /// embedded defaults), for `$BUS.api.config`.
    pub fn loaded_from(&self, file: Option<&std::path::Path>) {
        crate::registry::lock(&self.0.config_source).file = file.map(|f| f.display().to_string());
    }

    /// Takes `new` (read again from `file`) without dropping a connection:
    /// limits apply from now on (those a connection took at its start, as
    /// `max_pending` and `max_frame`, to the connections that start after),
    /// the access policy to connections accepted from now on. Settings of
    /// listeners, bridges, threads and the log keep their running values
    /// until a restart; their names are returned (and reported by
    /// `$BUS.api.config`). An invalid `new` changes nothing.
    pub fn reload(
        &self,
        mut new: Config,
        file: Option<&std::path::Path>,
    ) -> Result<Vec<&'static str>, String> {
        let state = &self.0;
        let old = state.config();
        let mut restart = Vec::new();
        macro_rules! at_restart {
            ($($field:ident),*) => {$(
                if new.$field != old.$field {
                    restart.push(stringify!($field));
                    new.$field = old.$field.clone();
                }
            )*};
        }
        at_restart!(
            socket,
            socket_mode,
            tcp,
            tcp_insecure,
            token_file,
            token,
            tls_cert,
            tls_client_ca,
            tls_key,
            node_id,
            bridge,
            bridge_ca,
            bridge_token_file,
            bridge_buffer,
            bridge_hold,
            link_ping_interval,
            link_timeout,
            tcp_backlog,
            workers,
            log_format,
            metrics,
            upstream,
            upstream_buffer,
            upstream_settle
        );
        drop(old);
        new.validate()?;
        let users = crate::tcp::load_users(&new).map_err(|e| e.to_string())?;
        state.users.store(Arc::new(users));
        state.policy.reconfigure(&new);
        state
            .cluster
            .set_access(crate::acl::Rights::of_bridges(&new.permissions), &state.policy);
        state.config.store(Arc::new(new));
        crate::access::reload(state);
        let mut source = crate::registry::lock(&state.config_source);
        source.file = file.map(|f| f.display().to_string());
        source.loaded_at_ms = crate::registry::unix_ms(std::time::SystemTime::now());
        source.reloads += 1;
        source.pending_restart = restart.iter().map(|s| (*s).to_owned()).collect();
        Ok(restart)
    }
}

/// Least time between two connection counts sent to systemd (`STATUS=`).
const STATUS_EVERY: Duration = Duration::from_secs(2);

/// A bound daemon, ready to [`run`](Server::run).
#[derive(Debug)]
pub struct Server {
    state: Arc<State>,
    listener: UnixListener,
    tcp: Option<TcpEndpoint>,
    metrics: Option<MetricsEndpoint>,
}

impl Server {
    /// The tokio runtime a server with `config` runs on: `workers` threads
    /// ([`Config::worker_threads`]), named `busd-worker`.
    pub fn runtime(config: &Config) -> std::io::Result<tokio::runtime::Runtime> {
        Self::runtime_builder(config).build()
    }

    /// The builder of [`runtime`](Self::runtime), for a binary to add to
    /// (`busd` hands idle memory back when a worker parks).
    pub fn runtime_builder(config: &Config) -> tokio::runtime::Builder {
        let mut b = tokio::runtime::Builder::new_multi_thread();
        b.worker_threads(config.worker_threads())
            .thread_name("busd-worker")
            .enable_all();
        b
    }

    /// Validates `config` and binds the socket. Must run inside a tokio runtime.
    pub fn bind(config: Config) -> Result<Server, Error> {
        Self::bind_with(config, Inherited::default())
    }

    /// [`bind`](Self::bind), serving the sockets systemd passed instead of
    /// binding `socket` (and `tcp`) where it passed one.
    pub fn bind_with(config: Config, inherited: Inherited) -> Result<Server, Error> {
        config.validate().map_err(Error::Config)?;
        let token = tcp::load_token(&config)?;
        let bridge_token = tcp::load_bridge_token(&config, token.as_deref())?;
        let users = tcp::load_users(&config)?;
        let tcp_wanted = config.tcp.is_some() || inherited.tcp.is_some();
        if tcp_wanted && token.is_none() && users.is_empty() && !config.tcp_insecure {
            return Err(Error::Config(
                "--tcp needs a token (--token-file or BUS_TOKEN, or [[users]]), or --tcp-insecure to accept anyone"
                    .into(),
            ));
        }
        let tls_bridge = config.bridge.iter().any(|b| b.starts_with("tls://"));
        if tls_bridge && config.bridge_ca.is_none() && libbus::ConnectOptions::default().ca_file.is_none() {
            return Err(Error::Config(
                "a tls:// bridge needs the CA of the remote daemon's certificate: --bridge-ca PEM (or BUS_CA)".into(),
            ));
        }
        let listener = match inherited.unix {
            Some(fd) => UnixListener::inherited(fd)?,
            None => UnixListener::bind(&config.socket, config.socket_mode)?,
        };
        let tcp = TcpEndpoint::bind(&config, inherited.tcp)?;
        let metrics = config.metrics.as_deref().map(MetricsEndpoint::bind).transpose()?;
        let address = Address::Unix(listener.path().to_owned());
        let mut listen = vec![address.to_string()];
        if let Some(t) = &tcp {
            if token.is_none() {
                tracing::warn!(address = %t.address, "TCP without a token (--tcp-insecure): anyone who can reach it may connect");
            }
            listen.push(t.address.clone());
        }
        let policy = Arc::new(Policy::new(&config, nix::unistd::geteuid().as_raw()));
        let node_id = config.effective_node_id();
        let cluster = Cluster::new(node_id.clone(), config.bridge_hold);
        cluster.set_access(crate::acl::Rights::of_bridges(&config.permissions), &policy);
        let upstream = crate::upstream::Upstream::new(&config, &node_id)?.map(Arc::new);
        let state = Arc::new(State {
            policy,
            config: arc_swap::ArcSwap::from_pointee(config),
            config_source: std::sync::Mutex::new(libbus::proto::api::ConfigSource {
                loaded_at_ms: crate::registry::unix_ms(std::time::SystemTime::now()),
                metrics: metrics.as_ref().map(MetricsEndpoint::url),
                ..Default::default()
            }),
            router: Router::default(),
            registry: Registry::default(),
            shutdown: CancellationToken::new(),
            server_id: format!("{:016x}", fastrand::u64(..)),
            started: Instant::now(),
            clock: Clock::new(),
            listen,
            token,
            users: arc_swap::ArcSwap::from_pointee(users),
            bridge_token,
            upstream,
            cluster,
            names: Default::default(),
            inboxes: Default::default(),
            accept_log: LogLimit::new(LOG_LINES_PER_SECOND),
            refusal_log: LogLimit::new(LOG_LINES_PER_SECOND),
            conn_log: LogLimit::new(CONN_LOG_LINES_PER_SECOND),
            fds_held: Default::default(),
            fd_budget: crate::state::fd_budget(),
        });
        Ok(Server {
            state,
            listener,
            tcp,
            metrics,
        })
    }

    /// A handle that reloads this daemon's configuration while it runs.
    pub fn reloader(&self) -> Reloader {
        Reloader(self.state.clone())
    }

    /// The address clients connect to.
    pub fn address(&self) -> Address {
        Address::Unix(self.listener.path().to_owned())
    }

    /// The TCP (or TLS) address, with the bound port, if `tcp` is set.
    pub fn tcp_address(&self) -> Option<Address> {
        self.tcp.as_ref().and_then(|t| t.address.parse().ok())
    }

    /// Where Prometheus scrapes, if `metrics` is set.
    pub fn metrics_address(&self) -> Option<std::net::SocketAddr> {
        self.metrics.as_ref().map(MetricsEndpoint::address)
    }

    /// Serves until `shutdown` is cancelled, then stops accepting, lets each
    /// connection flush (bounded by `shutdown_grace`) and removes the socket file.
    pub async fn run(self, shutdown: CancellationToken) {
        let Server {
            state,
            listener,
            tcp,
            metrics,
        } = self;
        let tracker = TaskTracker::new();
        if let Some(m) = metrics {
            tracing::info!(url = %m.url(), "serving metrics");
            tracker.spawn(m.serve(state.clone(), state.shutdown.clone()));
        }
        let clock_state = state.clone();
        let clock = tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_millis(100));
            let watchdog = systemd::watchdog_every();
            let (mut petted, mut reported) = (Instant::now(), (Instant::now(), 0));
            loop {
                tick.tick().await;
                clock_state.clock.tick();
                // Interest changes reach bridged daemons even without traffic.
                clock_state.cluster.announce_if_changed(&clock_state.router);
                let now = Instant::now();
                if watchdog.is_some_and(|every| now - petted >= every) {
                    systemd::watchdog();
                    petted = now;
                }
                let conns = clock_state.registry.len();
                if now - reported.0 >= STATUS_EVERY && conns != reported.1 {
                    systemd::report(conns);
                    reported = (now, conns);
                }
            }
        });
        crate::cluster::session::start_dialers(&state, &tracker);
        crate::upstream::session::start(&state, &tracker);
        let inherited = if listener.is_inherited() {
            " (from systemd)"
        } else {
            ""
        };
        tracing::info!(address = %listener.path().display(), "busd listening{inherited}");
        if let Some(t) = &tcp {
            tracing::info!(address = %t.address, "busd listening");
        }
        systemd::ready(0);
        let acceptor = tcp.as_ref().map(TcpEndpoint::acceptor);
        loop {
            let incoming = tokio::select! {
                _ = shutdown.cancelled() => break,
                accepted = listener.accept() => accepted.map(|(stream, peer, groups)| {
                    libbus::transport::set_send_buffer(&stream, state.config().socket_buffer);
                    let (r, w) = libbus::transport::split_unix(stream);
                    Incoming::Ready(r, w, peer, groups)
                }),
                accepted = accept_tcp(tcp.as_ref()) => accepted.map(|(stream, addr)| Incoming::Tcp(stream, addr)),
            };
            let incoming = match incoming {
                Ok(i) => i,
                Err(e) => {
                    // Typically EMFILE: back off instead of spinning.
                    state.policy.refused.count("accept_failed");
                    if let Some(held_back) = state.accept_log.allow(state.clock.now_ms()) {
                        tracing::warn!(held_back, "accept failed: {e}");
                    }
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            };
            let peer = match &incoming {
                Incoming::Ready(_, _, peer, _) => peer.clone(),
                Incoming::Tcp(_, addr) => Peer::Net {
                    addr: addr.to_string(),
                },
            };
            // Every budget is taken here, in accept order, before the
            // handshake (and before a TLS handshake).
            let admitted = state.policy.admit(&peer);
            let state = state.clone();
            let acceptor = acceptor.clone();
            tracker.spawn(async move {
                let (r, w, creds, transport) = match incoming {
                    Incoming::Ready(r, w, _, groups) => (r, w, conn::Creds::Groups(groups), "unix"),
                    Incoming::Tcp(stream, addr) => {
                        let Some(acceptor) = acceptor else { return };
                        match acceptor.establish(stream, state.config().handshake_timeout).await {
                            Ok((r, w, names)) => (r, w, conn::Creds::CertNames(names), acceptor.transport()),
                            Err(e) => {
                                tracing::debug!(%addr, "TLS/TCP setup failed: {e}");
                                state.policy.refused.count("tls_handshake");
                                return;
                            }
                        }
                    }
                };
                match admitted {
                    Ok(ticket) => conn::serve(state, r, w, peer, creds, transport, ticket).await,
                    Err(message) => {
                        if let Some(held_back) = state.refusal_log.allow(state.clock.now_ms()) {
                            tracing::info!(?peer, transport, message, held_back, "connection refused");
                        }
                        refuse(r, w, ErrorCode::LimitExceeded, message).await;
                    }
                }
            });
        }
        tracing::info!("shutting down");
        systemd::stopping();
        state.cluster.close();
        drop(listener); // stop accepting; removes the socket file
                        // Bridged daemons stop sending first, so what they wrote is read.
        state.cluster.drain(state.config().shutdown_grace).await;
        state.shutdown.cancel();
        tracker.close();
        let grace = state.config().shutdown_grace + Duration::from_secs(1);
        if tokio::time::timeout(grace, tracker.wait()).await.is_err() {
            tracing::warn!("connections did not finish within shutdown_grace");
        }
        clock.abort();
    }

    /// The shared state (for in-process inspection).
    pub fn state(&self) -> &Arc<State> {
        &self.state
    }
}

/// Sends `Error` to a connection refused before its handshake, then reads
/// (and discards) what it sent for a moment before closing, so the client's
/// `Hello` does not meet a closed socket (a broken pipe instead of the reason).
/// Bounded: one second, 64 KiB.
async fn refuse(mut rd: Reader, mut wr: Writer, code: ErrorCode, message: String) {
    let frame = control::error(code, &message);
    let _ = tokio::time::timeout(Duration::from_secs(1), async {
        wr.write_all(&frame).await?;
        wr.flush().await?;
        let mut sink = [0u8; 4096];
        for _ in 0..16 {
            if rd.read(&mut sink).await? == 0 {
                break;
            }
        }
        std::io::Result::Ok(())
    })
    .await;
}

/// An accepted connection, before its handshake.
enum Incoming {
    /// A Unix stream, with kernel credentials and groups.
    Ready(Reader, Writer, Peer, Vec<u32>),
    /// A TCP stream, still to be set up (options, TLS).
    Tcp(tokio::net::TcpStream, std::net::SocketAddr),
}

/// The next TCP connection, or never when TCP is off.
async fn accept_tcp(
    tcp: Option<&TcpEndpoint>,
) -> std::io::Result<(tokio::net::TcpStream, std::net::SocketAddr)> {
    match tcp {
        Some(t) => t.accept().await,
        None => std::future::pending().await,
    }
}

/// A daemon running on its own thread and runtime. Stopped (and its socket
/// removed) on [`stop`](Daemon::stop) or drop.
#[derive(Debug)]
pub struct Daemon {
    address: Address,
    tcp_address: Option<Address>,
    metrics_address: Option<std::net::SocketAddr>,
    reloader: Reloader,
    shutdown: CancellationToken,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Daemon {
    /// Binds `config` and starts serving on a background thread.
    pub fn start(config: Config) -> Result<Daemon, Error> {
        let (tx, rx) = std::sync::mpsc::channel();
        let shutdown = CancellationToken::new();
        let token = shutdown.clone();
        let thread = std::thread::Builder::new()
            .name("busd".into())
            .spawn(move || {
                let rt = match Server::runtime(&config) {
                    Ok(rt) => rt,
                    Err(e) => {
                        let _ = tx.send(Err(Error::Io {
                            what: "starting runtime".into(),
                            source: e,
                        }));
                        return;
                    }
                };
                rt.block_on(async move {
                    match Server::bind(config) {
                        Ok(server) => {
                            let _ = tx.send(Ok((
                                server.address(),
                                server.tcp_address(),
                                server.metrics_address(),
                                server.reloader(),
                            )));
                            server.run(token).await;
                        }
                        Err(e) => {
                            let _ = tx.send(Err(e));
                        }
                    }
                });
            })
            .map_err(|e| Error::Io {
                what: "spawning the daemon thread".into(),
                source: e,
            })?;
        let (address, tcp_address, metrics_address, reloader) = rx
            .recv()
            .map_err(|_| Error::Config("daemon thread exited during startup".into()))??;
        Ok(Daemon {
            address,
            tcp_address,
            metrics_address,
            reloader,
            shutdown,
            thread: Some(thread),
        })
    }

    /// The address clients connect to.
    pub fn address(&self) -> &Address {
        &self.address
    }

    /// The TCP (or TLS) address with its bound port, if `tcp` is set.
    pub fn tcp_address(&self) -> Option<&Address> {
        self.tcp_address.as_ref()
    }

    /// Where Prometheus scrapes (`http://ADDR/metrics`), if `metrics` is set.
    pub fn metrics_address(&self) -> Option<std::net::SocketAddr> {
        self.metrics_address
    }

    /// Takes `config` as a SIGHUP would (see [`Reloader::reload`]).
    pub fn reload(&self, config: Config) -> Result<Vec<&'static str>, String> {
        self.reloader.reload(config, None)
    }

    /// Shuts down and waits for the daemon to finish.
    pub fn stop(mut self) {
        self.stop_inner();
    }

    fn stop_inner(&mut self) {
        self.shutdown.cancel();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        self.stop_inner();
    }
}
