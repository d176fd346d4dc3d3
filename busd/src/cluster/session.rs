//! The tasks that run bridge links: the dialer of each `--bridge` address
//! (reconnecting with backoff), the accepted side, and each session's reader
//! and writer.

use std::{
    sync::{atomic::Ordering::Relaxed, Arc},
    time::{Duration, Instant},
};

use libbus::{
    codec,
    proto::{
        self,
        api::{self},
        link::LinkFrame,
        ClientFrame, ServerFrame,
    },
    transport::Writer,
    Address, ConnectOptions, Reconnect,
};
use tokio::io::AsyncWriteExt;

use super::link::{Link, Status};
use crate::{control, registry::lock, state::State};

/// Bytes the writer gathers before one `write` call.
const WRITE_BATCH: usize = 64 << 10;

/// Starts the dialer of every `--bridge` address.
pub fn start_dialers(state: &Arc<State>, tracker: &tokio_util::task::TaskTracker) {
    for address in &state.config().bridge {
        // Checked by `Config::validate`.
        let Ok(address) = address.parse::<Address>() else {
            continue;
        };
        let link = Link::new(
            Some(address),
            String::new(),
            String::new(),
            state.config().bridge_buffer,
        );
        state.cluster.add_link(link.clone());
        tracker.spawn(dial_loop(state.clone(), link));
    }
}

/// Keeps one outbound link connected: connect, handshake, run, back off, again.
async fn dial_loop(state: Arc<State>, link: Arc<Link>) {
    let Some(address) = link.dial.clone() else { return };
    let backoff = Reconnect {
        initial_delay: Duration::from_millis(100),
        max_delay: Duration::from_secs(10),
        max_attempts: None,
    };
    let mut failures = 0u32;
    loop {
        if state.shutdown.is_cancelled() {
            return;
        }
        link.set_status(Status::Connecting);
        match dial(&state, &address).await {
            Ok((frames, writer, node, version)) => {
                failures = 0;
                let remote = Remote {
                    node,
                    peer: address.to_string(),
                    version,
                };
                run_session(&state, &link, frames, writer, remote).await;
            }
            Err(e) => {
                failures = failures.saturating_add(1);
                if failures % 10 == 1 {
                    tracing::warn!(%address, failures, "bridge connect failed: {e}");
                } else {
                    tracing::debug!(%address, failures, "bridge connect failed: {e}");
                }
                link.set_status(Status::Down);
            }
        }
        tokio::select! {
            _ = state.shutdown.cancelled() => return,
            _ = tokio::time::sleep(backoff.delay(failures)) => {}
        }
    }
}

type Frames = codec::FrameReader<libbus::transport::Reader>;

/// Connects and completes the bridge handshake; returns the remote node id
/// and protocol version.
async fn dial(state: &State, address: &Address) -> libbus::Result<(Frames, Writer, String, u16)> {
    let mut opts = ConnectOptions::default();
    opts.token = state.bridge_token.clone();
    opts.ca_file = state.config().bridge_ca.clone().or(opts.ca_file);
    let t = state.config().handshake_timeout;
    let fut = async {
        let (rx, mut tx) = libbus::session::connect(address, &opts).await?;
        let mut buf = Vec::new();
        let hello = ClientFrame::Hello(proto::Hello {
            version: proto::PROTOCOL_VERSION,
            name: &state.cluster.node_id,
            role: proto::Role::Bridge,
            auth: opts.token.as_deref(),
        });
        codec::encode_into(&hello, &mut buf, u32::MAX).map_err(|e| libbus::Error::Protocol(e.to_string()))?;
        tx.write_all(&buf).await?;
        tx.flush().await?;
        let mut frames = Frames::new(rx, link_max_frame(state));
        let first = frames.read_frame().await?.ok_or(libbus::Error::Disconnected {
            reason: Some("closed during the bridge handshake".into()),
        })?;
        match codec::decode::<ServerFrame>(&first).map_err(|e| libbus::Error::Protocol(e.to_string()))? {
            ServerFrame::Welcome(w) => Ok((frames, tx, w.server_id.to_owned(), w.version)),
            ServerFrame::Error { code, message } => Err(libbus::Error::Server {
                code,
                message: message.into(),
            }),
            other => Err(libbus::Error::Protocol(format!(
                "expected Welcome, got {other:?}"
            ))),
        }
    };
    tokio::time::timeout(t, fut)
        .await
        .map_err(|_| libbus::Error::Timeout(t))?
}

/// Largest link frame: a message (up to `max_frame`) plus routing fields,
/// or a node state (which lists every interest).
pub fn link_max_frame(state: &State) -> u32 {
    state.config().max_frame.max(16 << 20).saturating_add(64 << 10)
}

/// An accepted bridge connection from `node` (after `Welcome`): resumes the
/// link it had (and what it held), or makes a new one.
pub async fn accept(state: Arc<State>, frames: Frames, writer: Writer, remote: Remote) {
    let (node, peer) = (remote.node.clone(), remote.peer.clone());
    if node == state.cluster.node_id {
        tracing::warn!(peer, "refusing a bridge from our own node id");
        return;
    }
    let link = match state.cluster.link_to(&node) {
        Some(l) if l.is_up() => {
            tracing::warn!(node, peer, "refusing a second bridge link to the same node");
            return;
        }
        Some(l) => l,
        None => {
            let l = Link::new(None, node.clone(), peer.clone(), state.config().bridge_buffer);
            state.cluster.add_link(l.clone());
            l
        }
    };
    run_session(&state, &link, frames, writer, remote).await;
    if link.dial.is_none() {
        // Hold what is queued for a while; forget the link if it stays away.
        let hold = state.config().bridge_hold;
        tokio::select! {
            _ = state.shutdown.cancelled() => {}
            _ = tokio::time::sleep(hold) => {
                if !link.is_up() && lock(&link.down_since).is_some_and(|t| t.elapsed() >= hold) {
                    tracing::info!(node = %link.node(), "bridge link gone for good; dropping what it held");
                    link.drop_held();
                    state.cluster.remove_link(&state.router, &link);
                }
            }
        }
    }
}

/// Who is at the other end of a link connection.
pub struct Remote {
    /// Its node id.
    pub node: String,
    /// Its address, or its Unix credentials.
    pub peer: String,
    /// The protocol version it speaks.
    pub version: u16,
}

/// Runs one connection of `link` until it fails.
async fn run_session(state: &Arc<State>, link: &Arc<Link>, frames: Frames, writer: Writer, remote: Remote) {
    let Remote { node, peer, version } = remote;
    *lock(&link.node) = node.clone();
    *lock(&link.peer) = peer;
    link.version.store(version, Relaxed);
    link.set_status(Status::Up);
    state.cluster.sync_link(&state.router, link);
    tracing::info!(node, address = %link.info().address, "bridge link up");
    bridge_event(state, api::EVENT_BRIDGE_UP, link);

    let mut writer_task = tokio::spawn(write_loop(state.clone(), link.clone(), writer));
    let reason = read_loop(state, link, frames).await;
    // Shutting down, it may write what it can: the other side has stopped
    // sending and reads until we close.
    let written = state.shutdown.is_cancelled()
        && tokio::time::timeout(state.config().shutdown_grace, &mut writer_task)
            .await
            .is_ok();
    if !written {
        // (A task that finished must not be awaited again.)
        writer_task.abort();
        let _ = writer_task.await;
    }

    link.set_status(Status::Down);
    state.cluster.topology_changed(&state.router);
    tracing::warn!(node, %reason, "bridge link down");
    bridge_event(state, api::EVENT_BRIDGE_DOWN, link);
}

fn bridge_event(state: &State, subject: &'static str, link: &Link) {
    crate::api::event(state, subject, || link.info());
}

async fn read_loop(state: &Arc<State>, link: &Arc<Link>, mut frames: Frames) -> String {
    let ping_every = state.config().link_ping_interval;
    let timeout = state.config().link_timeout;
    let mut ping = tokio::time::interval_at(tokio::time::Instant::now() + ping_every, ping_every);
    let mut last_heard = Instant::now();
    let shutdown = state.shutdown.cancelled();
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            frame = frames.read_frame() => {
                let body = match frame {
                    Ok(None) => return "closed by the other side".into(),
                    Err(e) => return format!("read failed: {e}"),
                    Ok(Some(b)) => b,
                };
                last_heard = Instant::now();
                match codec::decode::<LinkFrame>(&body) {
                    Ok(LinkFrame::State(s)) => {
                        let own = s.node == link.node();
                        state.cluster.merge(&state.router, link, s);
                        if own {
                            let mut q = lock(&link.queue);
                            if q.synced.is_none() {
                                q.epochs += 1;
                                q.synced = Some(q.epochs);
                                drop(q);
                                link.ready.notify_one();
                            }
                        }
                    }
                    Ok(LinkFrame::Msg(m)) => {
                        link.msgs_in.fetch_add(1, Relaxed);
                        state.cluster.receive(&state.router, link, m, None, None);
                    }
                    Ok(LinkFrame::HMsg(headers, m)) => {
                        link.msgs_in.fetch_add(1, Relaxed);
                        if headers_ok(headers, m.subject) {
                            state.cluster.receive(&state.router, link, m, None, Some(headers));
                        }
                    }
                    Ok(LinkFrame::Sent(from, headers, m)) => {
                        link.msgs_in.fetch_add(1, Relaxed);
                        let headers = (!headers.is_empty()).then_some(headers);
                        if headers.is_none_or(|h| headers_ok(h, m.subject)) {
                            state.cluster.receive(&state.router, link, m, Some(from), headers);
                        }
                    }
                    Ok(LinkFrame::Lost { origin, subject, count }) => {
                        state.cluster.receive_lost(&state.router, link, origin, subject, count);
                    }
                    Ok(LinkFrame::Ping) => link.send_control(control::link(&LinkFrame::Pong)),
                    Ok(LinkFrame::Pong) => {}
                    Ok(LinkFrame::Closing) => {
                        // Messages from now on wait for the other side's
                        // return; `Closed` follows the last one written.
                        lock(&link.queue).draining = true;
                        link.send_control(control::link(&LinkFrame::Closed));
                    }
                    Ok(LinkFrame::Closed) => {
                        link.closed.store(true, Relaxed);
                        link.closed_notify.notify_waiters();
                    }
                    Err(e) => return format!("bad frame: {e}"),
                }
            }
            _ = ping.tick() => {
                if last_heard.elapsed() >= timeout {
                    return format!("nothing heard for {timeout:?}");
                }
                link.send_control(control::link(&LinkFrame::Ping));
            }
            _ = &mut shutdown => return "daemon shutdown".into(),
        }
    }
}

/// Sends control frames first, then messages. Messages routed before the
/// other side's current state arrived on this connection (held while the link
/// was down, or queued since it came back) go only once that state wants
/// them (after a restart its subscribers may take a moment to return), or
/// are dropped after `bridge_hold`; in order either way. Parked messages
/// (for nodes out of reach) go, in their place, once those nodes are
/// reachable through this link again; until then the others pass them.
///
/// Once the other side sent `Closing`, no message goes. Once this daemon
/// shuts down, what can go is written, and the writer ends.
async fn write_loop(state: Arc<State>, link: Arc<Link>, mut wr: Writer) {
    let hold = state.config().bridge_hold;
    let deadline = tokio::time::Instant::now() + hold;
    let mut changed = state.cluster.changed.subscribe();
    let mut buf: Vec<u8> = Vec::with_capacity(WRITE_BATCH);
    loop {
        let finishing = state.shutdown.is_cancelled();
        for f in std::mem::take(&mut *lock(&link.control)) {
            buf.extend_from_slice(&f);
        }
        let mut wake_at: Option<Instant> = None;
        {
            let mut q = lock(&link.queue);
            let now = Instant::now();
            let mut sent = 0u64;
            // Checked once per batch: whether the oldest parked message's
            // nodes are back.
            let mut parked_ready = None;
            while buf.len() < WRITE_BATCH && !q.draining {
                // A loss is told once what was queued before it has gone.
                let lost_due = q.synced.is_some()
                    && q.lost
                        .front()
                        .is_some_and(|n| q.items.front().is_none_or(|m| m.seq > n.after));
                if lost_due {
                    let Some(n) = q.lost.pop_front() else { break };
                    if link.carries_headers() {
                        buf.extend_from_slice(&control::link(&LinkFrame::Lost {
                            origin: &n.origin,
                            subject: &n.subject,
                            count: n.count,
                        }));
                    }
                    continue;
                }
                let parked_first = q
                    .parked
                    .front()
                    .is_some_and(|p| q.items.front().is_none_or(|m| p.seq < m.seq));
                if parked_first {
                    let Some(p) = q.parked.front() else { break };
                    let ready = *parked_ready.get_or_insert_with(|| {
                        q.synced.is_some() && state.cluster.reaches_via(&link, &p.frame, &p.awaiting)
                    });
                    if ready || now >= p.until {
                        let Some(p) = q.parked.pop_front() else { break };
                        q.bytes -= p.frame.len();
                        parked_ready = None;
                        if ready {
                            buf.extend_from_slice(&p.frame);
                            sent += 1;
                        } else {
                            link.count_dropped(1);
                        }
                        continue;
                    }
                    let until = p.until;
                    wake_at = Some(wake_at.map_or(until, |w| w.min(until)));
                    if q.items.is_empty() {
                        break;
                    }
                }
                let Some(head) = q.items.front() else { break };
                // A message routed before the other side's current state was
                // known (held while down, or queued before it arrived) goes
                // only if that state wants it; in order, so it waits.
                if head.epoch.is_none() || head.epoch != q.synced {
                    let wanted = q.synced.is_some() && state.cluster.still_wanted(&link, &head.frame);
                    if !wanted {
                        if tokio::time::Instant::now() < deadline {
                            let until = deadline.into_std();
                            wake_at = Some(wake_at.map_or(until, |w| w.min(until)));
                            break;
                        }
                        // Held too long with nobody left wanting it.
                        let held = q.items.pop_front();
                        q.bytes -= held.map_or(0, |h| h.frame.len());
                        link.count_dropped(1);
                        continue;
                    }
                }
                let Some(item) = q.items.pop_front() else { break };
                q.bytes -= item.frame.len();
                buf.extend_from_slice(&item.frame);
                sent += 1;
            }
            link.msgs_out.fetch_add(sent, Relaxed);
            if finishing && buf.is_empty() {
                let left = q.items.len() + q.parked.len();
                if left > 0 {
                    tracing::warn!(node = %link.node(), left, "shutting down with messages held for a bridge link; they are lost");
                    link.count_dropped(left as u64);
                }
                return;
            }
        }
        if !buf.is_empty() {
            if let Err(e) = async {
                wr.write_all(&buf).await?;
                wr.flush().await
            }
            .await
            {
                tracing::debug!("bridge write failed: {e}");
                wr.shutdown_both();
                return;
            }
            buf.clear();
            continue;
        }
        let wake = async {
            match wake_at {
                Some(t) => tokio::time::sleep_until(t.into()).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            _ = changed.changed(), if wake_at.is_some() => {}
            _ = wake => {}
            _ = link.ready.notified() => {}
            _ = state.shutdown.cancelled(), if !finishing => {}
        }
    }
}

/// True if a header block from a bridge is well formed; a bad one is
/// logged, and its message dropped.
fn headers_ok(headers: &[u8], subject: &str) -> bool {
    match libbus::headers::check(headers, u32::MAX) {
        Ok(()) => true,
        Err(e) => {
            tracing::warn!(subject, "dropping a message with bad headers from a bridge: {e}");
            false
        }
    }
}
