//! `busd --metrics ADDR`: a real HTTP GET of `/metrics` from a busd
//! process, and a real Prometheus server scraping it.

use std::{
    io::{BufRead, BufReader, Read, Write},
    net::{SocketAddr, TcpStream},
    path::Path,
    process::{Child, Command, Stdio},
};

use libbus::{proto::api, Bus};

mod common;
use common::{until, wait_listening, within, Proc, BUSD, WAIT};

/// busd on `socket` with metrics on a free loopback port.
fn busd(socket: &Path) -> Proc {
    busd_with(socket, &[])
}

/// [`busd`] with more flags.
fn busd_with(socket: &Path, flags: &[&str]) -> Proc {
    let child = Command::new(BUSD)
        .arg("--socket")
        .arg(socket)
        .args(["--metrics", "127.0.0.1:0"])
        .args(flags)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("spawn busd");
    let busd = Proc(child);
    wait_listening(socket);
    busd
}

/// An HTTP/1.0 response: status, headers (lower-case names), body.
struct Response {
    status: u16,
    headers: Vec<(String, String)>,
    body: String,
}

impl Response {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }
}

/// One HTTP/1.0 request (the server closes after answering, so the body
/// is whatever follows the headers). Bounded by [`WAIT`].
fn http(method: &str, addr: SocketAddr, path: &str) -> Response {
    let mut s = TcpStream::connect(addr).expect("connect to the HTTP server");
    s.set_read_timeout(Some(WAIT)).unwrap();
    write!(s, "{method} {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n").unwrap();
    let mut raw = String::new();
    s.read_to_string(&mut raw).expect("read the response");
    let (head, body) = raw.split_once("\r\n\r\n").expect("a header block");
    let mut lines = head.lines();
    let status = lines
        .next()
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|c| c.parse().ok())
        .expect("a status line");
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_owned()))
        .collect();
    Response {
        status,
        headers,
        body: body.to_owned(),
    }
}

/// The samples of an exposition: `name{labels}` → value.
fn samples(body: &str) -> Vec<(String, f64)> {
    body.lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .map(|l| {
            let (key, value) = l.rsplit_once(' ').expect("sample NAME VALUE");
            (key.to_owned(), value.parse().expect("a numeric value"))
        })
        .collect()
}

fn value(body: &str, key: &str) -> f64 {
    samples(body)
        .into_iter()
        .find(|(k, _)| k == key)
        .unwrap_or_else(|| panic!("no sample {key} in:\n{body}"))
        .1
}

/// Where busd serves its metrics, as `bus-cli info` learns it.
async fn metrics_address(bus: &Bus) -> SocketAddr {
    let source: api::ConfigSource = within("config", bus.request(api::CONFIG, []))
        .await
        .unwrap()
        .decode()
        .unwrap();
    let url = source.metrics.expect("$BUS.api.config names the metrics URL");
    url.strip_prefix("http://")
        .and_then(|u| u.strip_suffix("/metrics"))
        .and_then(|a| a.parse().ok())
        .unwrap_or_else(|| panic!("metrics URL {url} is not http://ADDR/metrics"))
}

/// busd in a temp dir with metrics on, a client connected, and where
/// its metrics are served.
async fn start() -> (tempfile::TempDir, Proc, Bus, SocketAddr) {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("busd.sock");
    let busd = busd(&socket);
    let bus = Bus::connect(&libbus::Address::Unix(socket)).await.unwrap();
    let addr = metrics_address(&bus).await;
    (dir, busd, bus, addr)
}

fn scrape(addr: SocketAddr) -> String {
    let r = http("GET", addr, "/metrics");
    assert_eq!(r.status, 200, "{}", r.body);
    r.body
}

#[tokio::test]
async fn an_upstream_that_cannot_be_reached_is_reported_with_what_it_holds() {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("busd.sock");
    // Nothing listens on loopback port 1: the upstream stays "connecting".
    let _busd = busd_with(
        &socket,
        &["--upstream", "nats://127.0.0.1:1", "--upstream-buffer", "1KiB"],
    );
    let bus = Bus::connect(&libbus::Address::Unix(socket)).await.unwrap();
    let addr = metrics_address(&bus).await;
    for _ in 0..20 {
        bus.publish("orders.new", [0u8; 100]).await.unwrap();
    }
    bus.flush().await.unwrap();
    let body = scrape(addr);
    assert_eq!(value(&body, "bus_upstream_up"), 0.0);
    assert_eq!(value(&body, "bus_upstream_messages_out_total"), 0.0);
    assert_eq!(value(&body, "bus_upstream_subscriptions"), 1.0, "replies only");
    let held = value(&body, "bus_upstream_buffered_bytes");
    let dropped = value(&body, "bus_upstream_dropped_total");
    // Each takes its payload, subject and sender header: about 9 fit in 1 KiB.
    assert!(held > 900.0 && held <= 1024.0, "{held} bytes held");
    assert!((10.0..20.0).contains(&dropped), "{dropped}");
}

#[tokio::test]
async fn scrape_counts_traffic_connections_and_closes() {
    let (dir, _busd, bus, addr) = start().await;
    let socket = dir.path().join("busd.sock");

    let r = http("GET", addr, "/metrics");
    assert_eq!(r.status, 200);
    assert!(
        r.header("content-type")
            .is_some_and(|t| t.starts_with("application/openmetrics-text")),
        "content type {:?}",
        r.header("content-type")
    );
    assert!(
        r.body.ends_with("# EOF\n"),
        "an OpenMetrics exposition ends with # EOF"
    );
    assert_eq!(value(&r.body, r#"bus_connections{transport="unix"}"#), 1.0);
    assert!(value(&r.body, "process_resident_memory_bytes") > 0.0);
    assert!(r.body.contains("bus_build_info{version=\""));

    // Traffic between two scrapes shows as its exact difference.
    let before = scrape(addr);
    let mut sub = bus.subscribe("metrics.x").await.unwrap();
    for _ in 0..10 {
        bus.publish("metrics.x", vec![7u8; 100]).await.unwrap();
    }
    for _ in 0..10 {
        within("a message", sub.next()).await.unwrap();
    }
    let delta = |after: &str, key: &str| value(after, key) - value(&before, key);
    let after = scrape(addr);
    assert_eq!(delta(&after, "bus_messages_in_total"), 10.0);
    assert_eq!(delta(&after, "bus_bytes_in_total"), 1000.0);
    assert_eq!(delta(&after, "bus_subscriptions"), 1.0);
    // The writer counts a batch once it is written, perhaps just after
    // the reader saw it.
    until("messages out counted", || async {
        delta(&scrape(addr), "bus_bytes_out_total") == 1000.0
    })
    .await;

    // A second connection opens and ends; its end is counted by reason.
    let other = Bus::connect(&libbus::Address::Unix(socket.clone()))
        .await
        .unwrap();
    let opened = scrape(addr);
    assert_eq!(value(&opened, r#"bus_connections{transport="unix"}"#), 2.0);
    assert_eq!(
        value(&opened, r#"bus_connections_opened_total{transport="unix"}"#),
        2.0
    );
    other.close().await.unwrap();
    until("the close counted", || async {
        samples(&scrape(addr)).contains(&(r#"bus_connections_closed_total{reason="end"}"#.into(), 1.0))
    })
    .await;

    // HEAD has the length and no body; other paths and methods are refused.
    let head = http("HEAD", addr, "/metrics");
    assert_eq!(head.status, 200);
    assert!(head.body.is_empty());
    assert!(head.header("content-length").is_some_and(|n| n != "0"));
    assert_eq!(http("GET", addr, "/").status, 404);
    let post = http("POST", addr, "/metrics");
    assert_eq!(post.status, 405);
    assert_eq!(post.header("allow"), Some("GET, HEAD"));
}

/// Waits for the line of `prometheus`'s log that says where it listens.
fn prometheus_address(child: &mut Child) -> SocketAddr {
    let stderr = child.stderr.take().expect("piped stderr");
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        // Drains the log to its end, so prometheus never blocks writing it.
        let mut sent = false;
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if !sent && line.contains("msg=\"Listening on\"") {
                let addr = line.rsplit("address=").next().map(|a| a.trim().to_owned());
                sent = tx.send(addr).is_ok();
            }
        }
    });
    let addr = rx
        .recv_timeout(WAIT)
        .expect("prometheus logs where it listens")
        .expect("an address");
    addr.parse()
        .unwrap_or_else(|_| panic!("prometheus address {addr}"))
}

/// One instant query against Prometheus's HTTP API: the first result's
/// value, if any.
fn query(prometheus: SocketAddr, q: &str) -> Option<f64> {
    let escaped: String = q
        .bytes()
        .map(|b| match b {
            b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' | b'_' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect();
    let r = http("GET", prometheus, &format!("/api/v1/query?query={escaped}"));
    let json: serde_json::Value = serde_json::from_str(&r.body).ok()?;
    json["data"]["result"][0]["value"][1].as_str()?.parse().ok()
}

#[tokio::test]
async fn prometheus_scrapes_busd() {
    let Ok(version) = Command::new("prometheus").arg("--version").output() else {
        println!("skipped: prometheus is not installed (Debian package prometheus; .ci/run installs it)");
        return;
    };
    assert!(version.status.success());
    let (dir, _busd, bus, target) = start().await;
    for _ in 0..25 {
        bus.publish("metrics.prom", "x").await.unwrap();
    }

    let config = dir.path().join("prometheus.yml");
    std::fs::write(
        &config,
        format!(
            "global:\n  scrape_interval: 1s\nscrape_configs:\n  - job_name: busd\n    \
             static_configs:\n      - targets: ['{target}']\n"
        ),
    )
    .unwrap();
    let mut child = Command::new("prometheus")
        .arg(format!("--config.file={}", config.display()))
        .arg(format!(
            "--storage.tsdb.path={}",
            dir.path().join("data").display()
        ))
        .arg("--web.listen-address=127.0.0.1:0")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn prometheus");
    let prometheus = prometheus_address(&mut child);
    let _prometheus = Proc(child);

    // `up` is 1 only if the scrape succeeded and the exposition parsed.
    until("prometheus scraped busd", || async {
        query(prometheus, "up{job=\"busd\"}") == Some(1.0)
    })
    .await;
    until("prometheus has the message count", || async {
        query(prometheus, "bus_messages_in_total").is_some_and(|n| n >= 25.0)
    })
    .await;
    assert_eq!(
        query(prometheus, "bus_connections{transport=\"unix\"}"),
        Some(1.0)
    );
}
