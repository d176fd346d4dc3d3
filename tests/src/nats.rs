//! Real `nats-server` processes for the upstream tests: one server, or a
//! cluster of them routed on loopback, each with its config file in a temp
//! dir, killed (and its files removed) on drop.

use std::{
    io::{BufRead, BufReader},
    path::PathBuf,
    process::{Child, Command, Stdio},
    sync::mpsc,
    time::Duration,
};

/// The `nats-server` binary, or `None` (with the reason printed) if this
/// machine has none: the caller then skips, saying so.
pub fn binary() -> Option<PathBuf> {
    let found = std::env::var_os("PATH")
        .into_iter()
        .flat_map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
        .chain([PathBuf::from("/usr/sbin"), PathBuf::from("/usr/bin")])
        .map(|d| d.join("nats-server"))
        .find(|p| p.is_file());
    if found.is_none() {
        eprintln!("SKIPPED: nats-server is not installed (apt-get install nats-server); .ci/run installs it");
    }
    found
}

/// One running nats-server.
pub struct NatsServer {
    child: Option<Child>,
    binary: PathBuf,
    name: String,
    /// Route ports of the cluster members it routes to (`None`: no cluster).
    routes: Option<Vec<u16>>,
    /// More config lines (authorization, TLS).
    extra: String,
    config: PathBuf,
    /// Its client port.
    pub port: u16,
    /// Its route port, in a cluster.
    pub route_port: Option<u16>,
    _dir: tempfile::TempDir,
}

impl NatsServer {
    /// A lone server on a free port.
    pub fn start(binary: &std::path::Path, name: &str) -> Self {
        Self::start_with(binary, name, None)
    }

    /// A lone server with more config lines (`authorization { ... }`,
    /// `tls { ... }`).
    pub fn start_configured(binary: &std::path::Path, name: &str, extra: &str) -> Self {
        let mut s = Self::new(binary, name, None);
        s.extra = extra.to_owned();
        s.spawn();
        s
    }

    /// A server named `name`; with `routes`, a cluster member that routes to
    /// them.
    fn start_with(binary: &std::path::Path, name: &str, routes: Option<Vec<u16>>) -> Self {
        let mut s = Self::new(binary, name, routes);
        s.spawn();
        s
    }

    fn new(binary: &std::path::Path, name: &str, routes: Option<Vec<u16>>) -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        Self {
            child: None,
            binary: binary.to_owned(),
            name: name.to_owned(),
            routes,
            extra: String::new(),
            config: dir.path().join("nats.conf"),
            port: 0,
            route_port: None,
            _dir: dir,
        }
    }

    /// Writes its config (ports it had before, else any free ones: `-1`),
    /// starts the process and reads its ports from its log.
    fn spawn(&mut self) {
        let port = |p: Option<u16>| p.filter(|p| *p != 0).map_or(-1, i32::from);
        let mut text = format!(
            "server_name: {}\nlisten: 127.0.0.1:{}\n",
            self.name,
            port(Some(self.port))
        );
        if let Some(routes) = &self.routes {
            let list: Vec<String> = routes
                .iter()
                .map(|p| format!("nats-route://127.0.0.1:{p}"))
                .collect();
            text.push_str(&format!(
                "cluster {{\n  name: bus\n  listen: 127.0.0.1:{}\n  routes: [{}]\n}}\n",
                port(self.route_port),
                list.join(", ")
            ));
        }
        text.push_str(&self.extra);
        std::fs::write(&self.config, text).expect("write nats.conf");
        let mut child = Command::new(&self.binary)
            .arg("-c")
            .arg(&self.config)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start nats-server");
        let stderr = child.stderr.take().expect("stderr");
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                let port = |what: &str| {
                    line.split(what)
                        .nth(1)
                        .and_then(|rest| rest.trim().rsplit(':').next())
                        .and_then(|p| p.trim().parse::<u16>().ok())
                };
                if let Some(p) = port("Listening for client connections on") {
                    let _ = tx.send((true, p));
                }
                if let Some(p) = port("Listening for route connections on") {
                    let _ = tx.send((false, p));
                }
                if line.contains("Server is ready") {
                    let _ = tx.send((true, 0));
                }
            }
        });
        // A cluster member listens for routes after it says it is ready.
        let (mut ready, mut routing) = (false, self.routes.is_none());
        while !(ready && routing) {
            let (client, port) = rx
                .recv_timeout(Duration::from_secs(10))
                .expect("nats-server started and listening within 10 s");
            match (client, port) {
                (true, 0) => ready = true,
                (true, p) => self.port = p,
                (false, p) => (self.route_port, routing) = (Some(p), true),
            }
        }
        self.child = Some(child);
    }

    /// `nats://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    /// Kills it with SIGKILL (no goodbye to anyone).
    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Starts it again on the same ports.
    pub fn restart(&mut self) {
        assert!(self.child.is_none(), "kill it first");
        self.spawn();
    }
}

impl Drop for NatsServer {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// A cluster of `n` servers (`n1`, `n2`, ...), each routing to the first;
/// NATS meshes the rest itself.
pub fn cluster(binary: &std::path::Path, n: usize) -> Vec<NatsServer> {
    let first = NatsServer::start_with(binary, "n1", Some(Vec::new()));
    let seed = first.route_port.expect("n1 listens for routes");
    let mut all = vec![first];
    for i in 2..=n {
        all.push(NatsServer::start_with(binary, &format!("n{i}"), Some(vec![seed])));
    }
    all
}
