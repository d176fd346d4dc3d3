//! The daemon's own subjects: `$BUS.api.*` requests and `$BUS.event.*` events.
//!
//! Both go through the normal router, so `bus-cli list` is just a request and
//! `bus-cli monitor` just a subscription: one mechanism.

use std::sync::atomic::Ordering::Relaxed;

use libbus::proto::{
    api::{self, CloseReason, ConnEvent, ServerInfo},
    ErrorCode, ServerFrame,
};

use crate::{control, outbox::Published, registry::Conn, state::State};

/// Answers a request published to `$BUS.api.<name>`.
pub fn handle(state: &State, conn: &Conn, subject: &str, reply_to: Option<&str>, payload: &[u8]) {
    let Some(reply_to) = reply_to else {
        return; // not a request: nothing to answer
    };
    let body = match subject {
        api::LIST => {
            let page = page(payload);
            let conns = state.registry.snapshot();
            let live = conns
                .iter()
                .filter(|c| c.id > page.after && may_see(conn, &c.peer, c.id))
                .map(|c| c.info());
            paged(state, page, live)
        }
        api::RTT => {
            let page = page(payload);
            let conns = state.registry.snapshot();
            let rtts = conns
                .iter()
                .filter(|c| c.id > page.after && may_see(conn, &c.peer, c.id))
                .map(|c| api::ConnRtt {
                    id: c.id,
                    rtt_us: c.stats.rtt_us.load(Relaxed),
                });
            paged(state, page, rtts)
        }
        api::CLOSED => {
            // In the order they closed: `after` counts the records already had.
            let page = page(payload);
            let closed = state
                .registry
                .closed()
                .into_iter()
                .filter(|c| may_see(conn, &c.conn.peer, c.conn.id))
                .skip(page.after as usize);
            paged(state, page, closed)
        }
        api::NAMES => {
            let page = page(payload);
            let table = state.names.lock();
            paged(state, page, table.list(page.after as usize))
        }
        api::NAME_OWNER => postcard::to_allocvec(&name_owner(state, payload)),
        api::INFO => postcard::to_allocvec(&info(state)),
        api::CONFIG => postcard::to_allocvec(&*crate::registry::lock(&state.config_source)),
        api::DENIALS => postcard::to_allocvec(&state.policy.denials()),
        api::KICK => postcard::to_allocvec(&kick(state, conn, payload)),
        _ => {
            conn.outbox
                .push_frame(&control::server(&ServerFrame::NoResponders { reply_to }));
            return;
        }
    };
    match body {
        Ok(body) => publish(state, reply_to, body),
        Err(e) => tracing::error!("encoding {subject} reply: {e}"),
    }
}

/// May `viewer` see `other`'s details (pid, subscriptions, counters) in
/// `$BUS.api.list` and the like? A privileged principal sees everyone,
/// others the connections of their own uid (a network peer: itself).
pub fn may_see(viewer: &Conn, peer: &api::Peer, id: u64) -> bool {
    if viewer.rights.load().privileged {
        return true;
    }
    match (&viewer.peer, peer) {
        (api::Peer::Unix { uid: a, .. }, api::Peer::Unix { uid: b, .. }) => a == b,
        _ => viewer.id == id,
    }
}

/// The page a listing request asks for (an empty or unreadable payload:
/// the first).
fn page(payload: &[u8]) -> api::Page {
    postcard::from_bytes(payload).unwrap_or_default()
}

/// Room a page leaves under `max_frame` for the frame around it.
const PAGE_SLACK: usize = 4 << 10;

/// One page of `records`: at most `page.limit` of them, and no more than
/// fit in a frame the client accepts (always at least one).
fn paged<T: serde::Serialize>(
    state: &State,
    page: api::Page,
    records: impl Iterator<Item = T>,
) -> postcard::Result<Vec<u8>> {
    let budget = (state.config().max_frame as usize).saturating_sub(PAGE_SLACK);
    let limit = if page.limit == 0 {
        usize::MAX
    } else {
        page.limit as usize
    };
    let mut out: Vec<T> = Vec::new();
    let mut size = 0;
    for r in records.take(limit) {
        let len = postcard::experimental::serialized_size(&r)?;
        if size + len > budget && !out.is_empty() {
            break;
        }
        size += len;
        out.push(r);
    }
    postcard::to_allocvec(&out)
}

/// Daemon facts and totals.
pub fn info(state: &State) -> ServerInfo {
    info_of(state, &state.registry.snapshot())
}

/// [`info`], with `conns` the live connections (a snapshot the caller
/// also uses).
pub fn info_of(state: &State, conns: &[std::sync::Arc<Conn>]) -> ServerInfo {
    let t = &state.registry.ended;
    let sum = |live: fn(&Conn) -> u64, ended: &std::sync::atomic::AtomicU64| {
        conns.iter().map(|c| live(c)).sum::<u64>() + ended.load(Relaxed)
    };
    ServerInfo {
        version: env!("CARGO_PKG_VERSION").into(),
        protocol: libbus::proto::PROTOCOL_VERSION,
        server_id: state.server_id.clone(),
        listen: state.listen.clone(),
        pid: std::process::id() as i32,
        uptime_ms: state.started.elapsed().as_millis() as u64,
        connections: conns.len() as u64,
        total_connections: state.registry.accepted.load(Relaxed),
        subscriptions: state.router.len() as u64,
        msgs_in: sum(|c| c.stats.msgs_in.load(Relaxed), &t.msgs_in),
        msgs_out: sum(|c| c.stats.msgs_out.load(Relaxed), &t.msgs_out),
        bytes_in: sum(|c| c.stats.bytes_in.load(Relaxed), &t.bytes_in),
        bytes_out: sum(|c| c.stats.bytes_out.load(Relaxed), &t.bytes_out),
        dropped: sum(|c| c.outbox.dropped(), &t.dropped),
        limits: state.config().limits(),
        rss_bytes: rss_bytes(),
        refused: state.policy.refused.snapshot(),
        node_id: state.cluster.node_id.clone(),
        bridges: state.cluster.bridges(),
        cpu_us: cpu_time_us(),
        upstream: state.upstream.as_ref().map(|u| u.info()),
    }
}

/// `$BUS.api.kick`: closes the connection named by `payload`.
fn kick(state: &State, conn: &Conn, payload: &[u8]) -> api::AdminReply {
    let denied = |m| (ErrorCode::PermissionDenied, m);
    state.policy.check_admin(&conn.peer).map_err(denied)?;
    let id: u64 = postcard::from_bytes(payload).map_err(|e| {
        let m = format!("kick needs a connection id (postcard u64): {e}");
        (ErrorCode::Protocol, m)
    })?;
    let target = state
        .registry
        .get(id)
        .ok_or_else(|| (ErrorCode::Protocol, format!("no connection with id {id}")))?;
    tracing::info!(id, name = %target.name, by = conn.id, "kicking connection");
    target.kick.request(conn.id);
    Ok(format!("closed connection {id} ({})", target.name))
}

/// `$BUS.api.name_owner`: who owns the name in `payload` now.
fn name_owner(state: &State, payload: &[u8]) -> api::NameOwnerReply {
    let name: String = postcard::from_bytes(payload).map_err(|e| {
        let m = format!("name_owner needs a name (postcard string): {e}");
        (ErrorCode::Protocol, m)
    })?;
    libbus::subject::validate_subject(&name)
        .map_err(|e| (ErrorCode::InvalidSubject, format!("name: {e}")))?;
    Ok(state.names.lock().owner(&name).map(|c| c.owner()))
}

/// CPU time (user + system) this process has used, in microseconds (0 if
/// unavailable).
pub fn cpu_time_us() -> u64 {
    use nix::sys::resource::{getrusage, UsageWho};
    getrusage(UsageWho::RUSAGE_SELF).map_or(0, |u| {
        let us = |t: nix::sys::time::TimeVal| t.tv_sec() as u64 * 1_000_000 + t.tv_usec() as u64;
        us(u.user_time()) + us(u.system_time())
    })
}

/// Resident set size of this process, from `/proc/self/status` (0 if unavailable).
fn rss_bytes() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        })
        .map_or(0, |kb| kb * 1024)
}

/// Publishes `$BUS.event.conn.open` / `.close` for `conn`, if anyone listens.
pub fn conn_event(state: &State, subject: &'static str, conn: &Conn, reason: Option<CloseReason>) {
    event(state, subject, || ConnEvent {
        conn: conn.info(),
        reason,
    });
}

/// Publishes `$BUS.event.conn.refused`, if anyone listens.
pub fn refused_event(state: &State, peer: &api::Peer, transport: &str, reason: &str) {
    event(state, api::EVENT_CONN_REFUSED, || api::RefusedEvent {
        peer: peer.clone(),
        transport: transport.into(),
        reason: reason.into(),
    });
}

/// Publishes `$BUS.event.name.owner`, if anyone listens.
pub fn name_owner_event(
    state: &State,
    name: String,
    old: Option<api::NameOwner>,
    new: Option<api::NameOwner>,
) {
    event(state, api::EVENT_NAME_OWNER, || api::NameOwnerChanged {
        name,
        old,
        new,
    });
}

/// Publishes the event `make` builds on `subject`; only built if anyone
/// listens.
pub fn event<T: serde::Serialize>(state: &State, subject: &str, make: impl FnOnce() -> T) {
    let routes = state.router.lookup_uncached(subject);
    if routes.is_empty() {
        return;
    }
    match postcard::to_allocvec(&make()) {
        Ok(body) => routes.deliver(Published::from_daemon(subject, &body).frame()),
        Err(e) => tracing::error!("encoding the {subject} event: {e}"),
    }
}

/// Routes a message from the daemon itself.
fn publish(state: &State, subject: &str, body: Vec<u8>) {
    let routes = state.router.lookup_uncached(subject);
    routes.deliver(Published::from_daemon(subject, &body).frame());
}
