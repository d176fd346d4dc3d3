//! `--metrics ADDR`: the daemon's counters for Prometheus, on HTTP
//! `GET /metrics` (OpenMetrics text, which Prometheus reads).
//!
//! A scrape reads the counters `$BUS.api.info` reads, at scrape time
//! (`Snapshot`), so serving metrics adds no work to the path of a
//! message: no counter exists only for this endpoint. HTTP is hyper's; at
//! most [`MAX_SCRAPERS`] scrapes are served at once, and a client that
//! does not send its request within [`HEADER_TIMEOUT`] is dropped.

use std::{convert::Infallible, net::SocketAddr, sync::Arc, time::Duration};

use bytes::Bytes;
use http_body_util::Full;
use hyper::{body::Incoming, header, Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use prometheus_client::{
    collector::Collector,
    encoding::{DescriptorEncoder, EncodeCounterValue, EncodeGaugeValue, EncodeMetric, MetricEncoder},
    metrics::{counter::ConstCounter, gauge::ConstGauge, MetricType},
    registry::Registry,
};
use tokio::net::TcpListener;
use tokio_util::{sync::CancellationToken, task::TaskTracker};

use crate::{registry, state::State, Error};

/// Scrapes served at once; more wait in the listen backlog.
pub const MAX_SCRAPERS: usize = 8;

/// How long a scraper may take to send its request headers.
pub const HEADER_TIMEOUT: Duration = Duration::from_secs(5);

/// The OpenMetrics content type the body is written in.
const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// The bound metrics listener.
#[derive(Debug)]
pub struct MetricsEndpoint {
    listener: TcpListener,
    address: SocketAddr,
}

impl MetricsEndpoint {
    /// Binds `address` (`host:port`; port 0 picks one). Must run inside a
    /// tokio runtime.
    pub fn bind(address: &str) -> Result<MetricsEndpoint, Error> {
        let io = |source| Error::Io {
            what: format!("binding the metrics address {address}"),
            source,
        };
        let std = std::net::TcpListener::bind(address).map_err(io)?;
        std.set_nonblocking(true).map_err(io)?;
        let address = std.local_addr().map_err(io)?;
        let listener = TcpListener::from_std(std).map_err(io)?;
        Ok(MetricsEndpoint { listener, address })
    }

    /// The bound address.
    pub fn address(&self) -> SocketAddr {
        self.address
    }

    /// The URL Prometheus scrapes.
    pub fn url(&self) -> String {
        format!("http://{}/metrics", self.address)
    }

    /// Serves scrapes until `shutdown`.
    pub async fn serve(self, state: Arc<State>, shutdown: CancellationToken) {
        let tracker = TaskTracker::new();
        let slots = Arc::new(tokio::sync::Semaphore::new(MAX_SCRAPERS));
        loop {
            let permit = tokio::select! {
                _ = shutdown.cancelled() => break,
                p = slots.clone().acquire_owned() => match p {
                    Ok(p) => p,
                    Err(_) => break,
                },
            };
            let stream = tokio::select! {
                _ = shutdown.cancelled() => break,
                accepted = self.listener.accept() => match accepted {
                    Ok((stream, _)) => stream,
                    Err(e) => {
                        tracing::debug!("metrics accept failed: {e}");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        continue;
                    }
                },
            };
            let state = state.clone();
            let shutdown = shutdown.clone();
            tracker.spawn(async move {
                let _permit = permit;
                let service = hyper::service::service_fn(move |req| {
                    let response = respond(&state, &req);
                    async move { Ok::<_, Infallible>(response) }
                });
                let conn = hyper::server::conn::http1::Builder::new()
                    .timer(TokioTimer::new())
                    .header_read_timeout(HEADER_TIMEOUT)
                    .serve_connection(TokioIo::new(stream), service);
                tokio::select! {
                    _ = shutdown.cancelled() => {}
                    r = conn => if let Err(e) = r {
                        tracing::debug!("metrics connection: {e}");
                    },
                }
            });
        }
        tracker.close();
        tracker.wait().await;
    }
}

/// `GET /metrics` (or `HEAD`): the exposition; anything else: 404 or 405.
fn respond(state: &State, req: &Request<Incoming>) -> Response<Full<Bytes>> {
    let reply = |status, content_type, body: String| {
        let mut r = Response::new(Full::new(Bytes::from(body)));
        *r.status_mut() = status;
        if let Ok(v) = header::HeaderValue::from_str(content_type) {
            r.headers_mut().insert(header::CONTENT_TYPE, v);
        }
        r
    };
    if req.uri().path() != "/metrics" {
        return reply(
            StatusCode::NOT_FOUND,
            "text/plain",
            "not found: try /metrics\n".into(),
        );
    }
    if req.method() != Method::GET && req.method() != Method::HEAD {
        let mut r = reply(
            StatusCode::METHOD_NOT_ALLOWED,
            "text/plain",
            "only GET and HEAD\n".into(),
        );
        r.headers_mut()
            .insert(header::ALLOW, header::HeaderValue::from_static("GET, HEAD"));
        return r;
    }
    match render(state) {
        Ok(body) if req.method() == Method::HEAD => {
            let mut r = reply(StatusCode::OK, CONTENT_TYPE, String::new());
            r.headers_mut().insert(header::CONTENT_LENGTH, body.len().into());
            r
        }
        Ok(body) => reply(StatusCode::OK, CONTENT_TYPE, body),
        Err(e) => reply(
            StatusCode::INTERNAL_SERVER_ERROR,
            "text/plain",
            format!("encoding metrics failed: {e}\n"),
        ),
    }
}

/// The exposition of `state` now.
pub fn render(state: &State) -> Result<String, std::fmt::Error> {
    let mut registry = Registry::default();
    registry.register_collector(Box::new(Snapshot::take(state)));
    let mut out = String::new();
    prometheus_client::encoding::text::encode(&mut out, &registry)?;
    Ok(out)
}

/// Every value a scrape reports, read at once.
#[derive(Debug)]
struct Snapshot {
    build: Vec<(&'static str, String)>,
    start_time_s: f64,
    cpu_s: f64,
    rss_bytes: u64,
    connections: Vec<(&'static str, u64)>,
    opened: Vec<(&'static str, u64)>,
    closed: Vec<(&'static str, u64)>,
    msgs_in: u64,
    msgs_out: u64,
    bytes_in: u64,
    bytes_out: u64,
    dropped: u64,
    pending_bytes: u64,
    subscriptions: u64,
    names: u64,
    refused: Vec<(String, u64)>,
    denials: Vec<libbus::proto::api::Denial>,
    limits: Vec<(String, u64)>,
    reloads: u64,
    bridges: Vec<libbus::proto::api::BridgeInfo>,
    upstream: Option<libbus::proto::api::UpstreamInfo>,
}

impl Snapshot {
    fn take(state: &State) -> Snapshot {
        // One snapshot of the connections for the totals and the rest.
        let conns = state.registry.snapshot();
        let info = crate::api::info_of(state, &conns);
        let mut connections = vec![("unix", 0), ("tcp", 0), ("tls", 0)];
        for c in &conns {
            match connections.iter_mut().find(|(t, _)| *t == c.transport) {
                Some((_, n)) => *n += 1,
                None => connections.push((c.transport, 1)),
            }
        }
        let pending_bytes = conns.iter().map(|c| c.outbox.pending_bytes() as u64).sum();
        let started = std::time::SystemTime::now() - state.started.elapsed();
        Snapshot {
            build: vec![
                ("version", info.version),
                ("protocol", info.protocol.to_string()),
                ("server_id", info.server_id),
                ("node_id", info.node_id),
            ],
            start_time_s: started
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0.0, |d| d.as_secs_f64()),
            cpu_s: info.cpu_us as f64 / 1e6,
            rss_bytes: info.rss_bytes,
            connections,
            opened: state.registry.opened(),
            closed: state.registry.ended_by(),
            msgs_in: info.msgs_in,
            msgs_out: info.msgs_out,
            bytes_in: info.bytes_in,
            bytes_out: info.bytes_out,
            dropped: info.dropped,
            pending_bytes,
            subscriptions: info.subscriptions,
            names: state.names.lock().len() as u64,
            refused: info.refused,
            denials: state.policy.denials(),
            limits: info.limits,
            reloads: registry::lock(&state.config_source).reloads,
            bridges: info.bridges,
            upstream: info.upstream,
        }
    }
}

/// Writes metric families: a descriptor, then its samples.
struct Family<'a, 'e> {
    encoder: &'a mut DescriptorEncoder<'e>,
}

/// A sample's value: integer counts, or seconds and the like as `f64`.
trait Value: EncodeCounterValue + EncodeGaugeValue + Copy + std::fmt::Debug + Send + Sync + 'static {}
impl Value for u64 {}
impl Value for f64 {}

/// Encodes `value` as a `kind` sample.
fn sample<V: Value>(kind: MetricType, value: V, encoder: MetricEncoder) -> std::fmt::Result {
    match kind {
        MetricType::Counter => ConstCounter::new(value).encode(encoder),
        _ => ConstGauge::new(value).encode(encoder),
    }
}

impl Family<'_, '_> {
    /// A family of one sample without labels.
    fn one<V: Value>(&mut self, kind: MetricType, name: &str, help: &str, value: V) -> std::fmt::Result {
        sample(
            kind,
            value,
            self.encoder.encode_descriptor(name, help, None, kind)?,
        )
    }

    /// A family of one sample per `(label value, value)`.
    fn by<K: AsRef<str>, V: Value>(
        &mut self,
        kind: MetricType,
        name: &str,
        help: &str,
        label: &str,
        values: &[(K, V)],
    ) -> std::fmt::Result {
        let mut family = self.encoder.encode_descriptor(name, help, None, kind)?;
        for (key, value) in values {
            sample(kind, *value, family.encode_family(&[(label, key.as_ref())])?)?;
        }
        Ok(())
    }
}

impl Collector for Snapshot {
    fn encode(&self, mut encoder: DescriptorEncoder) -> std::fmt::Result {
        use MetricType::{Counter, Gauge};
        let mut f = Family {
            encoder: &mut encoder,
        };
        {
            let mut family = f.encoder.encode_descriptor(
                "bus_build_info",
                "The daemon's version, protocol and identity (value 1).",
                None,
                Gauge,
            )?;
            let labels: Vec<(&str, &str)> = self.build.iter().map(|(k, v)| (*k, v.as_str())).collect();
            ConstGauge::new(1i64).encode(family.encode_family(&labels)?)?;
        }
        f.one(
            Gauge,
            "process_start_time_seconds",
            "When the daemon started, seconds since the Unix epoch.",
            self.start_time_s,
        )?;
        f.one(
            Counter,
            "process_cpu_seconds",
            "CPU time the daemon used, user and system, in seconds.",
            self.cpu_s,
        )?;
        f.one(
            Gauge,
            "process_resident_memory_bytes",
            "Resident memory of the daemon, in bytes.",
            self.rss_bytes,
        )?;
        f.by(
            Gauge,
            "bus_connections",
            "Live connections, by transport.",
            "transport",
            &self.connections,
        )?;
        f.by(
            Counter,
            "bus_connections_opened",
            "Connections that completed their handshake, by transport.",
            "transport",
            &self.opened,
        )?;
        f.by(
            Counter,
            "bus_connections_closed",
            "Connections that ended, by reason.",
            "reason",
            &self.closed,
        )?;
        f.one(Counter, "bus_messages_in", "Messages published.", self.msgs_in)?;
        f.one(Counter, "bus_messages_out", "Messages delivered.", self.msgs_out)?;
        f.one(Counter, "bus_bytes_in", "Payload bytes published.", self.bytes_in)?;
        f.one(
            Counter,
            "bus_bytes_out",
            "Payload bytes delivered.",
            self.bytes_out,
        )?;
        f.one(
            Counter,
            "bus_messages_dropped",
            "Messages dropped because a subscriber's queue was full (max_pending).",
            self.dropped,
        )?;
        f.one(
            Gauge,
            "bus_pending_bytes",
            "Bytes queued for connections, not yet written to their sockets.",
            self.pending_bytes,
        )?;
        f.one(
            Gauge,
            "bus_subscriptions",
            "Live subscriptions.",
            self.subscriptions,
        )?;
        f.one(Gauge, "bus_names", "Well-known names with an owner.", self.names)?;

        f.by(
            Counter,
            "bus_refused",
            "Things a limit or the policy refused, by limit (permission_denied: the policy).",
            "limit",
            &self.refused,
        )?;

        f.by(
            Gauge,
            "bus_limit",
            "The running value of each limit (sizes in bytes, times in milliseconds).",
            "name",
            &self.limits,
        )?;
        {
            let mut family = f.encoder.encode_descriptor(
                "bus_denied",
                "What the access policy denied, by principal and rule.",
                None,
                Counter,
            )?;
            for d in &self.denials {
                let labels = [("principal", d.principal.as_str()), ("rule", d.rule.as_str())];
                sample(Counter, d.count, family.encode_family(&labels)?)?;
            }
        }
        f.one(
            Counter,
            "bus_config_reloads",
            "Configuration reloads (SIGHUP) taken.",
            self.reloads,
        )?;
        self.encode_bridges(&mut f)?;
        self.encode_upstream(&mut f)
    }
}

impl Snapshot {
    /// The NATS upstream's families, if the daemon has one.
    fn encode_upstream(&self, f: &mut Family) -> std::fmt::Result {
        let Some(u) = &self.upstream else { return Ok(()) };
        let families: [(&str, &str, MetricType, u64); 7] = [
            (
                "bus_upstream_up",
                "1 while the NATS upstream is connected.",
                MetricType::Gauge,
                u64::from(u.state == "up"),
            ),
            (
                "bus_upstream_messages_in",
                "Messages received from the NATS upstream and delivered here.",
                MetricType::Counter,
                u.msgs_in,
            ),
            (
                "bus_upstream_messages_out",
                "Messages sent to the NATS upstream.",
                MetricType::Counter,
                u.msgs_out,
            ),
            (
                "bus_upstream_buffered_bytes",
                "Bytes waiting to go up (held while the upstream is down).",
                MetricType::Gauge,
                u.buffered_bytes,
            ),
            (
                "bus_upstream_dropped",
                "Messages given up on the way to or from the upstream (upstream_buffer full, refused by the server, or the client fell behind).",
                MetricType::Counter,
                u.dropped,
            ),
            (
                "bus_upstream_subscriptions",
                "Upstream subscriptions: one per distinct local pattern within import, plus replies.",
                MetricType::Gauge,
                u.subscriptions,
            ),
            (
                "bus_upstream_connects",
                "Times the upstream link came up.",
                MetricType::Counter,
                u.connects,
            ),
        ];
        for (name, help, kind, value) in families {
            f.one(kind, name, help, value)?;
        }
        Ok(())
    }

    fn encode_bridges(&self, f: &mut Family) -> std::fmt::Result {
        type Field = fn(&libbus::proto::api::BridgeInfo) -> u64;
        let families: [(&str, &str, MetricType, Field); 5] = [
            (
                "bus_bridge_up",
                "1 while a bridge link is up, 0 while it connects or is down.",
                MetricType::Gauge,
                |b| u64::from(b.state == "up"),
            ),
            (
                "bus_bridge_messages_in",
                "Messages received over a bridge link.",
                MetricType::Counter,
                |b| b.msgs_in,
            ),
            (
                "bus_bridge_messages_out",
                "Messages sent over a bridge link.",
                MetricType::Counter,
                |b| b.msgs_out,
            ),
            (
                "bus_bridge_buffered_bytes",
                "Bytes held for a bridge link (while it is down).",
                MetricType::Gauge,
                |b| b.buffered_bytes,
            ),
            (
                "bus_bridge_dropped",
                "Messages dropped for a bridge link (bridge_buffer full or bridge_hold passed).",
                MetricType::Counter,
                |b| b.dropped,
            ),
        ];
        for (name, help, kind, field) in families {
            let mut family = f.encoder.encode_descriptor(name, help, None, kind)?;
            for b in &self.bridges {
                let labels = [
                    ("node", b.node.as_str()),
                    ("address", b.address.as_str()),
                    ("direction", if b.outbound { "out" } else { "in" }),
                ];
                sample(kind, field(b), family.encode_family(&labels)?)?;
            }
        }
        Ok(())
    }
}
