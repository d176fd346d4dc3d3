//! `bus-cli list`: a request on `$BUS.api.list`.

use libbus::{proto::api, Bus};

use crate::render;

pub async fn run(bus: &Bus, json: bool) -> libbus::Result<()> {
    let conns: Vec<api::ConnInfo> = bus.request(api::LIST, []).await?.decode()?;
    if json {
        println!(
            "{}",
            serde_json::to_string_pretty(&conns).map_err(|e| libbus::Error::Protocol(e.to_string()))?
        );
        return Ok(());
    }
    let header = [
        "ID",
        "NAME",
        "TRANSPORT",
        "PEER",
        "SUBS",
        "MSGS IN",
        "MSGS OUT",
        "PENDING",
        "DROPPED",
        "AGE",
    ];
    let rows: Vec<Vec<String>> = conns
        .iter()
        .map(|c| {
            vec![
                c.id.to_string(),
                c.name.clone(),
                c.transport.clone(),
                render::peer(&c.peer),
                c.subs.len().to_string(),
                c.msgs_in.to_string(),
                c.msgs_out.to_string(),
                render::bytes(c.pending_bytes),
                c.dropped.to_string(),
                render::age(c.connected_at_ms),
            ]
        })
        .collect();
    print!("{}", render::table(&header, &rows));
    Ok(())
}
