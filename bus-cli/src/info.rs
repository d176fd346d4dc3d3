//! `bus-cli info`: a request on `$BUS.api.info`.

use std::time::Duration;

use libbus::{proto::api, Address, Bus};

use crate::render;

pub async fn run(bus: &Bus, address: &Address, json: bool) -> libbus::Result<()> {
    let info: api::ServerInfo = bus.request(api::INFO, []).await?.decode()?;
    if json {
        outln!(
            "{}",
            serde_json::to_string_pretty(&info).map_err(|e| libbus::Error::Protocol(e.to_string()))?
        );
        return Ok(());
    }
    outln!(
        "busd {} (protocol {}), server id {}, pid {}",
        info.version,
        info.protocol,
        info.server_id,
        info.pid
    );
    outln!("address:       {address}");
    outln!("listening on:  {}", info.listen.join(", "));
    // A daemon without $BUS.api.config (older) has nothing to say here.
    if let Ok(reply) = bus.request(api::CONFIG, []).await {
        let source: api::ConfigSource = reply.decode()?;
        let file = source.file.as_deref().unwrap_or("embedded defaults");
        let reloads = match source.reloads {
            0 => String::new(),
            1 => ", 1 reload".into(),
            n => format!(", {n} reloads"),
        };
        outln!(
            "config:        {file} (loaded {} ago{reloads})",
            render::age(source.loaded_at_ms)
        );
        if let Some(url) = &source.metrics {
            outln!("metrics:       {url}");
        }
        if !source.pending_restart.is_empty() {
            outln!(
                "               changed, for the next start: {}",
                source.pending_restart.join(", ")
            );
        }
    }
    outln!(
        "uptime:        {}",
        render::duration(Duration::from_millis(info.uptime_ms))
    );
    outln!(
        "connections:   {} live, {} since start",
        info.connections,
        info.total_connections
    );
    outln!("subscriptions: {}", info.subscriptions);
    outln!(
        "messages:      {} in, {} out, {} dropped",
        info.msgs_in,
        info.msgs_out,
        info.dropped
    );
    outln!(
        "bytes:         {} in, {} out",
        render::bytes(info.bytes_in),
        render::bytes(info.bytes_out)
    );
    outln!("memory:        {} resident", render::bytes(info.rss_bytes));
    outln!("cpu time:      {:.2} s (user + system)", info.cpu_us as f64 / 1e6);
    outln!("node id:       {}", info.node_id);
    if info.bridges.is_empty() {
        outln!("bridges:       none");
    } else {
        outln!("bridges:");
        for b in &info.bridges {
            let row = crate::list::bridge_row(b);
            outln!(
                "  {} {} ({}, {}), {} in, {} out, {} buffered, {} dropped",
                row[0],
                row[2],
                row[3],
                row[4],
                row[5],
                row[6],
                row[7],
                row[8]
            );
        }
    }
    if let Some(u) = &info.upstream {
        outln!("upstream:      {} ({})", u.urls.join(" "), u.state);
        if !u.server.is_empty() {
            outln!("  server:      {} {}", u.server, u.server_name);
        }
        outln!("  export:      {}", u.export.join(" "));
        outln!("  import:      {}", u.import.join(" "));
        outln!(
            "  traffic:     {} in, {} out, {} buffered (of {}), {} dropped",
            u.msgs_in,
            u.msgs_out,
            render::bytes(u.buffered_bytes),
            render::bytes(u.buffer_limit),
            u.dropped
        );
        outln!(
            "  subscriptions: {}, connected {} time(s)",
            u.subscriptions,
            u.connects
        );
    }
    outln!("limits:                    value    refused");
    for (name, value) in &info.limits {
        let base = name.trim_end_matches("_ms");
        let refused = info
            .refused
            .iter()
            .find(|(n, _)| n == base)
            .map_or(0, |(_, c)| *c);
        outln!("  {name:<24} {value:>8} {refused:>10}");
    }
    // Refusals that are not limits: always the policy and token checks, then
    // any other counter the daemon reports.
    let is_limit = |n: &str| info.limits.iter().any(|(l, _)| l.trim_end_matches("_ms") == n);
    let mut others: Vec<(&str, u64)> = ["permission_denied", "auth_failed"]
        .into_iter()
        .map(|n| (n, 0))
        .collect();
    for (name, count) in &info.refused {
        if is_limit(name) {
            continue;
        }
        match others.iter_mut().find(|(n, _)| n == name) {
            Some(slot) => slot.1 = *count,
            None => others.push((name, *count)),
        }
    }
    for (name, count) in others {
        outln!("  {name:<24} {:>8} {count:>10}", "-");
    }
    // A daemon without $BUS.api.denials (older) has no access policy.
    if let Ok(reply) = bus.request(api::DENIALS, []).await {
        let denials: Vec<api::Denial> = reply.decode()?;
        if !denials.is_empty() {
            outln!("denied by the access policy:");
            for d in denials {
                outln!("  {:>8}  {}: {}", d.count, d.principal, d.rule);
            }
        }
    }
    Ok(())
}

/// `bus-cli kick ID`: a request on `$BUS.api.kick`.
pub async fn kick(bus: &Bus, id: u64) -> libbus::Result<()> {
    let reply: api::AdminReply = bus.request_value(api::KICK, &id).await?;
    match reply {
        Ok(done) => {
            outln!("{done}");
            Ok(())
        }
        Err((code, message)) => Err(libbus::Error::Server { code, message }),
    }
}
