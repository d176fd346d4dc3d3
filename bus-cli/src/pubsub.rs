//! `send`, `sub`, `request` and `monitor`.

use std::{io::Read, time::Duration};

use libbus::{
    proto::api::{self, ConnEvent},
    Bus, Delivery, Event, Headers, Message,
};

use crate::render;

/// The payload argument, or stdin when it is absent or "-".
fn payload(arg: Option<String>) -> libbus::Result<Vec<u8>> {
    match arg.as_deref() {
        Some(p) if p != "-" => Ok(p.as_bytes().to_vec()),
        _ => {
            let mut buf = Vec::new();
            std::io::stdin().read_to_end(&mut buf)?;
            Ok(buf)
        }
    }
}

/// `-H NAME=VALUE`, split at the first `=`.
pub fn parse_header(arg: &str) -> Result<(String, String), String> {
    let (name, value) = arg
        .split_once('=')
        .ok_or_else(|| format!("expected NAME=VALUE, got {arg:?}"))?;
    // Checked here, so a bad one is named before anything is sent.
    Headers::from_iter([(name, value)])
        .encode()
        .map_err(|e| e.to_string())?;
    Ok((name.to_owned(), value.to_owned()))
}

pub async fn send(bus: &Bus, subject: &str, arg: Option<String>, headers: Headers) -> libbus::Result<()> {
    bus.publish_with_headers(subject, &headers, payload(arg)?).await?;
    bus.flush().await
}

pub async fn request(
    bus: &Bus,
    subject: &str,
    arg: Option<String>,
    timeout: Duration,
    headers: Headers,
) -> libbus::Result<()> {
    let reply = bus
        .request_with_headers(subject, &headers, payload(arg)?, timeout)
        .await?;
    outln!("{}", render::payload(reply.payload()));
    Ok(())
}

pub async fn sub(
    bus: &Bus,
    pattern: &str,
    queue: Option<&str>,
    show_headers: bool,
    count: Option<u64>,
) -> libbus::Result<()> {
    let mut sub = match queue {
        Some(q) => bus.queue_subscribe(pattern, q).await?,
        None => bus.subscribe(pattern).await?,
    };
    report_link_changes(bus);
    let mut seen = 0;
    while count.is_none_or(|n| seen < n) {
        match sub.next_delivery().await {
            Some(Delivery::Message(m)) => {
                outln!("{}", line(&m));
                if show_headers {
                    for (name, value) in m.headers().iter() {
                        outln!("  {name}: {value}");
                    }
                }
                seen += 1;
            }
            Some(Delivery::Lagged(n)) => {
                eprintln!("warning: {n} messages dropped (this subscriber fell behind)")
            }
            None => return Err(bus.disconnected_error()),
        }
    }
    Ok(())
}

pub async fn monitor(bus: &Bus) -> libbus::Result<()> {
    let mut sub = bus.subscribe(">").await?;
    eprintln!("monitoring all subjects (Ctrl-C to stop)");
    report_link_changes(bus);
    while let Some(d) = sub.next_delivery().await {
        let now = humantime::format_rfc3339_millis(std::time::SystemTime::now());
        match d {
            Delivery::Message(m) => outln!("{now} {}", line(&m)),
            Delivery::Lagged(n) => outln!("{now} !! monitor fell behind: {n} messages dropped"),
        }
    }
    Err(bus.disconnected_error())
}

/// Tells the user on stderr when the daemon goes away and comes back (the
/// subscription carries on after a reconnect).
fn report_link_changes(bus: &Bus) {
    let mut events = bus.events();
    tokio::spawn(async move {
        while let Some(e) = events.next().await {
            match e {
                Event::Disconnected { reason } => eprintln!("bus-cli: {reason}; reconnecting"),
                Event::Reconnected { attempts, .. } => {
                    eprintln!("bus-cli: reconnected after {attempts} attempt(s)")
                }
                _ => {}
            }
        }
    });
}

/// One message as a line: `subject payload`, with lifecycle events decoded.
fn line(m: &Message) -> String {
    let subject = m.subject();
    if subject == api::EVENT_CONN_OPEN || subject == api::EVENT_CONN_CLOSE {
        if let Ok(ev) = m.decode::<ConnEvent>() {
            let c = &ev.conn;
            let reason = ev.reason.map(|r| format!(" reason={r}")).unwrap_or_default();
            return format!(
                "{subject} id={} name={} peer=\"{}\" msgs_in={} msgs_out={} dropped={}{reason}",
                c.id,
                c.name,
                render::peer(&c.peer),
                c.msgs_in,
                c.msgs_out,
                c.dropped
            );
        }
    }
    if subject == api::EVENT_BRIDGE_UP || subject == api::EVENT_BRIDGE_DOWN {
        if let Ok(b) = m.decode::<api::BridgeInfo>() {
            return format!(
                "{subject} node={} address={} state={} buffered={} dropped={}",
                b.node, b.address, b.state, b.buffered_bytes, b.dropped
            );
        }
    }
    if subject == api::EVENT_CONN_REFUSED {
        if let Ok(r) = m.decode::<api::RefusedEvent>() {
            return format!(
                "{subject} peer=\"{}\" transport={} reason=\"{}\"",
                render::peer(&r.peer),
                r.transport,
                r.reason
            );
        }
    }
    match m.reply_to() {
        Some(r) => format!("{subject} (reply to {r}) {}", render::payload(m.payload())),
        None => format!("{subject} {}", render::payload(m.payload())),
    }
}
