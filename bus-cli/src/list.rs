//! `bus-cli list`: a request on `$BUS.api.list`.

use libbus::{proto::api, Bus};

use crate::render;

/// A column `list --sort` orders by.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum SortBy {
    /// Connection id, ascending.
    Id,
    /// Client name, ascending.
    Name,
    /// Subscriptions, most first.
    Subs,
    /// Messages published, most first.
    MsgsIn,
    /// Messages delivered, most first.
    MsgsOut,
    /// Bytes queued, most first.
    Pending,
    /// Messages dropped, most first.
    Dropped,
    /// Oldest first.
    Age,
    /// Longest idle first.
    Idle,
    /// Longest round trip first.
    Rtt,
}

impl SortBy {
    fn sort(self, conns: &mut [Live]) {
        use std::cmp::Reverse;
        match self {
            Self::Id => conns.sort_by_key(|c| c.conn.id),
            Self::Name => conns.sort_by(|a, b| a.conn.name.cmp(&b.conn.name).then(a.conn.id.cmp(&b.conn.id))),
            Self::Subs => conns.sort_by_key(|c| Reverse(c.conn.subs.len())),
            Self::MsgsIn => conns.sort_by_key(|c| Reverse(c.conn.msgs_in)),
            Self::MsgsOut => conns.sort_by_key(|c| Reverse(c.conn.msgs_out)),
            Self::Pending => conns.sort_by_key(|c| Reverse(c.conn.pending_bytes)),
            Self::Dropped => conns.sort_by_key(|c| Reverse(c.conn.dropped)),
            Self::Age => conns.sort_by_key(|c| c.conn.connected_at_ms),
            Self::Idle => conns.sort_by_key(|c| c.conn.last_activity_ms),
            Self::Rtt => conns.sort_by_key(|c| Reverse(c.rtt_us)),
        }
    }
}

/// A live connection as `list` shows it: its record and its round trip.
#[derive(serde::Serialize)]
struct Live {
    #[serde(flatten)]
    conn: api::ConnInfo,
    /// Microseconds (absent: not measured yet, or a daemon that does not
    /// report it).
    #[serde(skip_serializing_if = "Option::is_none")]
    rtt_us: Option<u64>,
}

pub async fn run(bus: &Bus, json: bool, closed: bool, sort: SortBy) -> libbus::Result<()> {
    if closed {
        return run_closed(bus, json).await;
    }
    let rtts: std::collections::HashMap<u64, u64> = rtts(bus)
        .await?
        .into_iter()
        .filter(|r| r.rtt_us > 0)
        .map(|r| (r.id, r.rtt_us))
        .collect();
    let mut conns: Vec<Live> = live(bus)
        .await?
        .into_iter()
        .map(|conn| Live {
            rtt_us: rtts.get(&conn.id).copied(),
            conn,
        })
        .collect();
    sort.sort(&mut conns);
    if json {
        return print_json(&conns);
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
        "IDLE",
        "RTT",
    ];
    let rows: Vec<Vec<String>> = conns
        .iter()
        .map(|Live { conn: c, rtt_us }| {
            let mut row = cells(c);
            row.insert(7, render::bytes(c.pending_bytes));
            row.push(render::age(c.connected_at_ms));
            row.push(render::age(c.last_activity_ms));
            row.push(rtt_us.map_or_else(|| "-".into(), render::micros));
            row
        })
        .collect();
    out!("{}", render::table(&header, &rows));

    // Bridge links come from $BUS.api.info (the JSON above stays a list of
    // connections; `bus-cli info --json` has the bridges).
    let info: api::ServerInfo = bus.request(api::INFO, []).await?.decode()?;
    if !info.bridges.is_empty() || info.upstream.is_some() {
        outln!();
        let header = [
            "NODE",
            "TRANSPORT",
            "ADDRESS",
            "DIRECTION",
            "STATE",
            "MSGS IN",
            "MSGS OUT",
            "BUFFERED",
            "DROPPED",
        ];
        let mut rows: Vec<Vec<String>> = info.bridges.iter().map(bridge_row).collect();
        rows.extend(info.upstream.as_ref().map(upstream_row));
        out!("{}", render::table(&header, &rows));
    }
    Ok(())
}

/// Every live connection (`$BUS.api.list`, all pages), by id.
async fn live(bus: &Bus) -> libbus::Result<Vec<api::ConnInfo>> {
    all_pages(bus, api::LIST, |page, c: &api::ConnInfo| page.after = c.id).await
}

/// Every live connection's round trip (`$BUS.api.rtt`, all pages); none
/// from a daemon that does not report it.
async fn rtts(bus: &Bus) -> libbus::Result<Vec<api::ConnRtt>> {
    match all_pages(bus, api::RTT, |page, r: &api::ConnRtt| page.after = r.id).await {
        Err(libbus::Error::NoResponders { .. }) => Ok(Vec::new()),
        other => other,
    }
}

/// Every closed connection remembered (`$BUS.api.closed`, all pages), in
/// the order they closed.
async fn closed(bus: &Bus) -> libbus::Result<Vec<api::ClosedConn>> {
    all_pages(bus, api::CLOSED, |page, _: &api::ClosedConn| page.after += 1).await
}

/// Every well-known name (`$BUS.api.names`, all pages), by name.
async fn all_names(bus: &Bus) -> libbus::Result<Vec<api::NameInfo>> {
    all_pages(bus, api::NAMES, |page, _: &api::NameInfo| page.after += 1).await
}

/// `names`: each well-known name, its owner and its queue.
pub async fn names(bus: &Bus, json: bool) -> libbus::Result<()> {
    let names = all_names(bus).await?;
    if json {
        return print_json(&names);
    }
    let who = |o: &api::NameOwner| format!("{} {} ({})", o.conn_id, o.client, render::peer(&o.peer));
    let rows: Vec<Vec<String>> = names
        .iter()
        .map(|n| {
            let queue: Vec<String> = n.queue.iter().map(|o| o.conn_id.to_string()).collect();
            vec![
                n.name.clone(),
                who(&n.owner),
                if queue.is_empty() {
                    "-".into()
                } else {
                    queue.join(" ")
                },
            ]
        })
        .collect();
    out!("{}", render::table(&["NAME", "OWNER", "QUEUE"], &rows));
    Ok(())
}

/// The columns a live and a closed connection share: id, name, transport,
/// peer, subscriptions, messages in and out, dropped.
fn cells(c: &api::ConnInfo) -> Vec<String> {
    vec![
        c.id.to_string(),
        c.name.clone(),
        c.transport.clone(),
        render::peer(&c.peer),
        c.subs.len().to_string(),
        c.msgs_in.to_string(),
        c.msgs_out.to_string(),
        c.dropped.to_string(),
    ]
}

/// Every record of a paged listing (`$BUS.api.list`, `$BUS.api.closed`):
/// pages are asked for until one comes back empty; `next` moves the page
/// past each record received.
async fn all_pages<T: serde::de::DeserializeOwned>(
    bus: &Bus,
    subject: &str,
    next: impl Fn(&mut api::Page, &T),
) -> libbus::Result<Vec<T>> {
    let mut page = api::Page::default();
    let mut all = Vec::new();
    // Bounded: each page moves past at least one record, and a listing
    // holds at most max_connections (or max_closed) of them.
    for _ in 0..1_000_000 {
        let records: Vec<T> = bus.request_value(subject, &page).await?;
        if records.is_empty() {
            break;
        }
        for r in &records {
            next(&mut page, r);
        }
        all.extend(records);
    }
    Ok(all)
}

fn print_json(records: &impl serde::Serialize) -> libbus::Result<()> {
    let text = serde_json::to_string_pretty(records).map_err(|e| libbus::Error::Protocol(e.to_string()))?;
    outln!("{text}");
    Ok(())
}

/// `list ID`: one connection in full, live or closed: every field, and each
/// subscription on its own line.
pub async fn one(bus: &Bus, id: u64, json: bool) -> libbus::Result<()> {
    let conns = live(bus).await?;
    let (conn, closed) = match conns.into_iter().find(|c| c.id == id) {
        Some(c) => (c, None),
        None => {
            let gone = closed(bus).await?;
            match gone.into_iter().find(|r| r.conn.id == id) {
                Some(r) => (r.conn.clone(), Some(r)),
                None => {
                    return Err(libbus::Error::Server {
                        code: libbus::proto::ErrorCode::Protocol,
                        message: format!(
                            "no connection with id {id}, live or among the closed ones remembered"
                        ),
                    })
                }
            }
        }
    };
    if json {
        return match &closed {
            Some(r) => print_json(r),
            None => print_json(&conn),
        };
    }
    let c = &conn;
    outln!("id:            {}", c.id);
    outln!("name:          {}", c.name);
    outln!("transport:     {}", c.transport);
    outln!("peer:          {}", render::peer(&c.peer));
    outln!("age:           {}", render::age(c.connected_at_ms));
    match &closed {
        Some(r) => {
            outln!(
                "closed:        {} ago ({})",
                render::age(r.closed_at_ms),
                r.reason
            );
        }
        None => {
            outln!("idle:          {}", render::age(c.last_activity_ms));
            let rtt = rtts(bus).await?.into_iter().find(|r| r.id == id && r.rtt_us > 0);
            outln!(
                "rtt:           {}",
                rtt.map_or_else(|| "-".into(), |r| render::micros(r.rtt_us))
            );
        }
    }
    outln!("messages in:   {} ({})", c.msgs_in, render::bytes(c.bytes_in));
    outln!("messages out:  {} ({})", c.msgs_out, render::bytes(c.bytes_out));
    outln!("pending:       {}", render::bytes(c.pending_bytes));
    outln!("dropped:       {}", c.dropped);
    outln!("subscriptions: {}", c.subs.len());
    for sub in &c.subs {
        match &sub.queue {
            Some(q) => outln!("  {} {} (queue {q})", sub.sid, sub.pattern),
            None => outln!("  {} {}", sub.sid, sub.pattern),
        }
    }
    if closed.is_none() {
        let names = all_names(bus).await?;
        let mine: Vec<String> = names
            .iter()
            .filter_map(|n| {
                if n.owner.conn_id == id {
                    return Some(format!("  {} (owner)", n.name));
                }
                let at = n.queue.iter().position(|o| o.conn_id == id)?;
                Some(format!("  {} (queued, {} ahead)", n.name, at + 1))
            })
            .collect();
        outln!("names:         {}", mine.len());
        for line in mine {
            outln!("{line}");
        }
    }
    Ok(())
}

/// `list --closed`: the connections the daemon remembers closing
/// (`max_closed`), oldest first, with why each ended.
async fn run_closed(bus: &Bus, json: bool) -> libbus::Result<()> {
    let closed = closed(bus).await?;
    if json {
        return print_json(&closed);
    }
    let header = [
        "ID",
        "NAME",
        "TRANSPORT",
        "PEER",
        "SUBS",
        "MSGS IN",
        "MSGS OUT",
        "DROPPED",
        "LIFETIME",
        "CLOSED",
        "REASON",
    ];
    let rows: Vec<Vec<String>> = closed
        .iter()
        .map(|r| {
            let c = &r.conn;
            let mut row = cells(c);
            row.extend([
                render::duration(std::time::Duration::from_millis(
                    r.closed_at_ms.saturating_sub(c.connected_at_ms),
                )),
                format!("{} ago", render::age(r.closed_at_ms)),
                r.reason.to_string(),
            ]);
            row
        })
        .collect();
    out!("{}", render::table(&header, &rows));
    Ok(())
}

/// The NATS upstream as a row of the links table: the server connected
/// to (else the configured ones).
pub fn upstream_row(u: &api::UpstreamInfo) -> Vec<String> {
    vec![
        if u.server_name.is_empty() {
            "?".into()
        } else {
            u.server_name.clone()
        },
        "upstream".into(),
        if u.server.is_empty() {
            u.urls.join(",")
        } else {
            format!("nats://{}", u.server)
        },
        "out".into(),
        u.state.clone(),
        u.msgs_in.to_string(),
        u.msgs_out.to_string(),
        render::bytes(u.buffered_bytes),
        u.dropped.to_string(),
    ]
}

/// One bridge link as a table row.
pub fn bridge_row(b: &api::BridgeInfo) -> Vec<String> {
    vec![
        if b.node.is_empty() {
            "?".into()
        } else {
            b.node.clone()
        },
        "bridge".into(),
        b.address.clone(),
        if b.outbound { "out" } else { "in" }.into(),
        b.state.clone(),
        b.msgs_in.to_string(),
        b.msgs_out.to_string(),
        render::bytes(b.buffered_bytes),
        b.dropped.to_string(),
    ]
}
