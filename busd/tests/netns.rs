//! Two daemons in two network namespaces joined by a veth pair (created here,
//! removed on drop), bridged over TCP. The link is cut (`ip link set down`)
//! while messages are published, then restored: the held messages arrive in
//! order, once. Needs root and iproute2; skipped with a printed reason
//! otherwise. Clients reach both daemons through their Unix sockets, which
//! live in the shared filesystem.

use std::{
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use libbus::{proto::api, Address, Bus, ConnectOptions};

mod common;
use common::{until_answered, within, BUSD, WAIT};

fn ip(args: &[&str]) -> Result<(), String> {
    let out = Command::new("ip")
        .args(args)
        .output()
        .map_err(|e| format!("ip: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "ip {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

/// Two namespaces and a veth pair between them; deleted on drop.
struct Net {
    a: String,
    b: String,
    veth_b: String,
}

impl Net {
    fn create() -> Result<Net, String> {
        let id = std::process::id() % 100_000;
        let net = Net {
            a: format!("bus-a-{id}"),
            b: format!("bus-b-{id}"),
            veth_b: format!("vbb{id}"),
        };
        let veth_a = format!("vba{id}");
        ip(&["netns", "add", &net.a])?;
        ip(&["netns", "add", &net.b])?;
        ip(&[
            "link",
            "add",
            &veth_a,
            "type",
            "veth",
            "peer",
            "name",
            &net.veth_b,
        ])?;
        ip(&["link", "set", &veth_a, "netns", &net.a])?;
        ip(&["link", "set", &net.veth_b, "netns", &net.b])?;
        ip(&["-n", &net.a, "addr", "add", "10.213.7.1/24", "dev", &veth_a])?;
        ip(&["-n", &net.b, "addr", "add", "10.213.7.2/24", "dev", &net.veth_b])?;
        for (ns, dev) in [(&net.a, veth_a.as_str()), (&net.b, net.veth_b.as_str())] {
            ip(&["-n", ns, "link", "set", "lo", "up"])?;
            ip(&["-n", ns, "link", "set", dev, "up"])?;
        }
        Ok(net)
    }

    fn set_link(&self, up: bool) {
        ip(&[
            "-n",
            &self.b,
            "link",
            "set",
            &self.veth_b,
            if up { "up" } else { "down" },
        ])
        .expect("toggle the link");
    }
}

impl Drop for Net {
    fn drop(&mut self) {
        // Deleting a namespace also deletes the veth end inside it.
        let _ = ip(&["netns", "del", &self.a]);
        let _ = ip(&["netns", "del", &self.b]);
    }
}

/// A busd child process inside a namespace; killed on drop.
struct Daemon {
    child: Child,
    socket: PathBuf,
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn daemon(ns: &str, dir: &Path, name: &str, extra: &[&str]) -> Daemon {
    let socket = dir.join(format!("{name}.sock"));
    let config = dir.join(format!("{name}.toml"));
    std::fs::write(
        &config,
        "link_ping_interval = \"100ms\"\nlink_timeout = \"600ms\"\nbridge_hold = \"20s\"\n",
    )
    .expect("config");
    let child = Command::new("ip")
        .args(["netns", "exec", ns, BUSD, "--config"])
        .arg(&config)
        .arg("--socket")
        .arg(&socket)
        .args(["--node-id", name, "--token-file"])
        .arg(dir.join("token"))
        .args(extra)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("spawn busd");
    let start = Instant::now();
    while std::os::unix::net::UnixStream::connect(&socket).is_err() {
        assert!(start.elapsed() < WAIT, "busd {name} did not start");
        std::thread::sleep(Duration::from_millis(20));
    }
    Daemon { child, socket }
}

async fn bridge_state(bus: &Bus) -> Option<api::BridgeInfo> {
    let info: api::ServerInfo = within("info", bus.request(api::INFO, []))
        .await
        .ok()?
        .decode()
        .ok()?;
    info.bridges.into_iter().next()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn link_cut_between_namespaces_holds_and_delivers_in_order() {
    if !nix::unistd::geteuid().is_root() {
        println!("skipped: creating network namespaces needs root");
        return;
    }
    let net = match Net::create() {
        Ok(n) => n,
        Err(e) => {
            println!("skipped: cannot create network namespaces here: {e}");
            return;
        }
    };
    let dir = tempfile::tempdir().expect("temp dir");
    std::fs::write(dir.path().join("token"), "netns-test-token\n").expect("token");
    let a = daemon(&net.a, dir.path(), "node-a", &["--tcp", "10.213.7.1:7420"]);
    let b = daemon(
        &net.b,
        dir.path(),
        "node-b",
        &["--bridge", "tcp://10.213.7.1:7420"],
    );

    let (addr_a, addr_b) = (Address::Unix(a.socket.clone()), Address::Unix(b.socket.clone()));
    let connect = |s: &'static str| ConnectOptions::default().name(s);
    let sub_conn = within("connect a", Bus::connect_with(&addr_a, connect("subscriber")))
        .await
        .expect("connect a");
    let mut sub = sub_conn.subscribe("cross.>").await.expect("subscribe");
    let mut ready = sub_conn.subscribe("ready").await.expect("subscribe");
    tokio::spawn(async move {
        while let Some(m) = ready.next().await {
            let _ = m.respond("yes").await;
        }
    });
    let publisher = within("connect b", Bus::connect_with(&addr_b, connect("publisher")))
        .await
        .expect("connect b");
    // Converged once b can reach a's responder across the veth.
    until_answered(&publisher, "ready").await;
    for i in 0u64..50 {
        publisher
            .publish_value("cross.before", &i)
            .await
            .expect("publish");
    }
    for i in 0u64..50 {
        let m = within("delivery before the cut", sub.next()).await.expect("open");
        assert_eq!(m.decode::<u64>().expect("seq"), i);
    }

    net.set_link(false);
    let cut = Instant::now();
    within("b to notice the cut", async {
        while bridge_state(&publisher).await.is_some_and(|l| l.state == "up") {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await;
    println!("link down noticed {:?} after the cut", cut.elapsed());
    for i in 50u64..250 {
        publisher
            .publish_value("cross.during", &i)
            .await
            .expect("publish");
    }
    publisher.flush().await.expect("flush");
    let held = bridge_state(&publisher).await.expect("bridge listed");
    assert!(
        held.buffered_bytes > 0,
        "messages are held while the link is down: {held:?}"
    );
    tokio::time::sleep(Duration::from_millis(500)).await;

    net.set_link(true);
    let restored = Instant::now();
    for i in 50u64..250 {
        let m = within("held delivery after the restore", sub.next())
            .await
            .expect("open");
        assert_eq!(
            m.decode::<u64>().expect("seq"),
            i,
            "in order, no gaps, no duplicates"
        );
    }
    println!(
        "held messages delivered {:?} after the restore",
        restored.elapsed()
    );
    let extra = tokio::time::timeout(Duration::from_millis(500), sub.next()).await;
    assert!(extra.is_err(), "a duplicate arrived");
    let link = bridge_state(&publisher).await.expect("bridge listed");
    assert_eq!(
        (link.state.as_str(), link.buffered_bytes, link.dropped),
        ("up", 0, 0)
    );
}
