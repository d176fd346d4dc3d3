//! Two bridged daemons on loopback, and a message crossing from one to the
//! other. Each daemon runs in this process (`busd::Daemon`) with its own
//! Unix socket, as it would on its own host; the bridge is TCP.
//!
//! Run:
//!     cargo run -p bus-examples --example bridge

use std::time::Duration;

use busd::{Config, Daemon};
use libbus::{proto::api, Bus, Error};

fn daemon(
    dir: &std::path::Path,
    node: &str,
    bridge_to: Option<&libbus::Address>,
) -> Result<Daemon, busd::Error> {
    let mut c = Config::with_socket(dir.join(format!("{node}.sock")));
    c.node_id = Some(node.into());
    c.tcp = Some("127.0.0.1:0".into()); // any free port
    c.token = Some("example-token".into());
    c.bridge = bridge_to.map(|a| vec![a.to_string()]).unwrap_or_default();
    Daemon::start(c)
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let dir = tempfile::tempdir()?;
    let east = daemon(dir.path(), "east", None)?;
    let east_tcp = east.tcp_address().ok_or("east has no TCP address")?.clone();
    let west = daemon(dir.path(), "west", Some(&east_tcp))?;
    println!("east listens on {} and {east_tcp}", east.address());
    println!("west listens on {} and bridges to {east_tcp}", west.address());

    // A subscriber on east, a publisher on west: each talks to its local daemon.
    let on_east = Bus::connect(east.address()).await?;
    let mut orders = on_east.subscribe("orders.>").await?;
    let mut svc = on_east.subscribe("svc.stock").await?;
    tokio::spawn(async move {
        while let Some(req) = svc.next().await {
            let _ = req.respond("3 left").await;
        }
    });
    let on_west = Bus::connect(west.address()).await?;

    // Interest travels over the bridge; wait until west knows about east's service.
    // Bounded: give up after 5 s.
    let mut attempts = 0;
    let reply = loop {
        attempts += 1;
        match on_west
            .request_with_timeout("svc.stock", "widgets?", Duration::from_millis(200))
            .await
        {
            Ok(reply) => break reply,
            Err(Error::NoResponders { .. } | Error::Timeout(_)) if attempts < 25 => {
                tokio::time::sleep(Duration::from_millis(50)).await
            }
            Err(e) => return Err(e.into()),
        }
    };
    println!(
        "west asked east's svc.stock: {}",
        String::from_utf8_lossy(reply.payload())
    );

    on_west.publish("orders.new", "order 42 from west").await?;
    let msg = tokio::time::timeout(Duration::from_secs(5), orders.next())
        .await?
        .ok_or("subscription closed")?;
    println!(
        "east received {}: {}",
        msg.subject(),
        String::from_utf8_lossy(msg.payload())
    );

    let info: api::ServerInfo = on_west.request(api::INFO, []).await?.decode()?;
    for b in info.bridges {
        println!(
            "west's bridge to {} at {}: {}, {} messages out",
            b.node, b.address, b.state, b.msgs_out
        );
    }
    Ok(())
}
