//! `bus-cli info`: a request on `$BUS.api.info`.

use std::time::Duration;

use libbus::{proto::api, Address, Bus};

use crate::render;

pub async fn run(bus: &Bus, address: &Address, json: bool) -> libbus::Result<()> {
    let info: api::ServerInfo = bus.request(api::INFO, []).await?.decode()?;
    if json {
        println!(
            "{}",
            serde_json::to_string_pretty(&info).map_err(|e| libbus::Error::Protocol(e.to_string()))?
        );
        return Ok(());
    }
    println!(
        "busd {} (protocol {}), server id {}, pid {}",
        info.version, info.protocol, info.server_id, info.pid
    );
    println!("address:       {address}");
    println!("listening on:  {}", info.listen.join(", "));
    println!(
        "uptime:        {}",
        render::duration(Duration::from_millis(info.uptime_ms))
    );
    println!(
        "connections:   {} live, {} since start",
        info.connections, info.total_connections
    );
    println!("subscriptions: {}", info.subscriptions);
    println!(
        "messages:      {} in, {} out, {} dropped",
        info.msgs_in, info.msgs_out, info.dropped
    );
    println!(
        "bytes:         {} in, {} out",
        render::bytes(info.bytes_in),
        render::bytes(info.bytes_out)
    );
    println!("memory:        {} resident", render::bytes(info.rss_bytes));
    println!("limits:");
    for (name, value) in &info.limits {
        println!("  {name:<22} {value}");
    }
    Ok(())
}
