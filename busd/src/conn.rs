//! One client connection: handshake, then a reader loop (this task) and a
//! writer loop (a second task), until either side ends it.
//!
//! Reader: one `read` of up to 64 KiB → every complete frame in it, parsed in
//! place → decode → validate → route → each subscriber's outbox (runs of
//! frames forwarded as they came; never waits). A publish to a subject whose
//! routes the connection has cached skips decode and validation
//! (`publish_cached`).
//! Writer: takes the outbox's whole buffer → one `write`. A frame error gets
//! an `Error` frame naming the problem, then the connection closes; other
//! connections are unaffected.

use std::{
    sync::{atomic::Ordering::Relaxed, Arc, Mutex},
    time::SystemTime,
};

use bytes::{Buf, Bytes};
use libbus::{
    codec::{self, CodecError},
    proto::{
        self,
        api::{CloseReason, Peer, SubInfo},
        sub_flags, ClientFrame, ErrorCode, ServerFrame,
    },
    subject,
    transport::{Reader, Writer},
    wire,
};
use tokio::io::AsyncWriteExt;

use crate::{
    access::{self, Verdict},
    acl::Action,
    api, cluster, control,
    deliver::{Deliveries, Held, RouteCache, Routes, Target},
    inflight::Inflight,
    outbox::{Frames, Outbox, PubFrame},
    policy::Ticket,
    registry::{lock, Conn, Kicked, Stats},
    service,
    state::State,
};

/// Room a connection's read buffer offers each read (more for a larger frame).
const READ_BUFFER: usize = 64 << 10;

/// The reading side of a connection (client or bridge).
pub(crate) type Incoming = codec::FrameReader<Reader>;

/// Why reading stopped; becomes the close event's reason.
struct Fatal(CloseReason);

/// Serves one accepted connection to the end.
///
/// `ticket` holds the connection's share of the budgets, taken at accept;
/// it is given back when the connection ends.
pub async fn serve(
    state: Arc<State>,
    rd: Reader,
    mut wr: Writer,
    peer: Peer,
    creds: Creds,
    transport: &'static str,
    mut ticket: Ticket,
) {
    let (groups, cert_names) = match creds {
        Creds::Groups(g) => (g, Vec::new()),
        Creds::CertNames(n) => (Vec::new(), n),
    };
    // Before the handshake a peer gets only `max_handshake_frame`: an
    // unauthenticated peer can make us hold no more than that.
    let small = state.config().max_handshake_frame;
    let received_fds = rd.received_fds();
    let mut frames = Incoming::new(rd, small).with_read_room(small as usize);

    let admitted = handshake(&state, &mut frames).await.and_then(|h| {
        admit(&state, &peer, &groups, &cert_names, transport, h.auth.as_deref()).map(|user| (h, user))
    });
    // A bridge link is trusted with everything it carries: only the shared
    // token (or no token on an insecure listener), or the daemon's uid or
    // root on the Unix socket, may open one; not a user the policy limits.
    let admitted = admitted.and_then(|(h, user)| {
        let trusted = match &peer {
            Peer::Net { .. } => user.is_none(),
            Peer::Unix { .. } => state.policy.is_privileged(&peer),
        };
        if h.role == proto::Role::Bridge && !trusted {
            state
                .policy
                .count_denial(&peer_label(&peer, user.as_deref()), "bridge link");
            return Err((
                ErrorCode::PermissionDenied,
                "permission denied: only the daemon's token, uid or root may open a bridge link".into(),
            ));
        }
        if h.role == proto::Role::Bridge && state.upstream.is_some() {
            return Err((
                ErrorCode::Protocol,
                "this daemon has a NATS upstream and takes no bridge links: a message could reach a host both ways"
                    .into(),
            ));
        }
        Ok((h, user))
    });
    let (hello, user) = match admitted {
        Ok(h) => h,
        Err((code, message)) => {
            if let Some(held_back) = state.refusal_log.allow(state.clock.now_ms()) {
                tracing::info!(?peer, transport, message, held_back, "handshake refused");
            }
            // Best effort: the peer may already be gone.
            if matches!(
                code,
                ErrorCode::PermissionDenied | ErrorCode::AuthenticationFailed
            ) {
                api::refused_event(&state, &peer, transport, &message);
            }
            let _ = wr.write_all(&control::error(code, &message)).await;
            let _ = wr.flush().await;
            return;
        }
    };

    ticket.handshaken();
    // Reads of up to 64 KiB: a fast publisher is drained in few syscalls.
    frames.set_max_frame(state.config().max_frame);
    frames.set_read_room(READ_BUFFER);

    if hello.role == proto::Role::Bridge {
        let welcome = control::server(&ServerFrame::Welcome(proto::Welcome {
            version: proto::PROTOCOL_VERSION,
            conn_id: 0,
            server_id: &state.cluster.node_id,
            max_frame: state.config().max_frame,
        }));
        if wr.write_all(&welcome).await.is_err() || wr.flush().await.is_err() {
            return;
        }
        frames.set_max_frame(crate::cluster::session::link_max_frame(&state));
        let peer = match &peer {
            Peer::Net { addr } => addr.clone(),
            Peer::Unix { pid, uid, .. } => format!("unix pid {pid} uid {uid}"),
        };
        let remote = crate::cluster::session::Remote {
            node: hello.name,
            peer,
            version: hello.version,
        };
        crate::cluster::session::accept(state, frames, wr, remote).await;
        return;
    }

    let connected_at = SystemTime::now();
    let id = state.registry.next_id();
    let sender = sender_of(&state.cluster.node_id, id, &hello.name, &peer);
    let rights = state.policy.rights(&peer, &groups, user.as_deref());
    // The daemon's uid and root are not held to a user's share.
    let budget = (!rights.all).then(|| state.policy.budget(&rights.principal.label));
    let conn = Arc::new(Conn {
        id,
        sender,
        name: hello.name,
        transport,
        peer,
        connected_at,
        outbox: Outbox::new(state.config().max_pending, hello.version >= proto::RUN_VERSION)
            .reading_headers(hello.version >= proto::HEADERS_VERSION)
            .with_budget(budget),
        stats: Stats::default(),
        subs: Mutex::new(Default::default()),
        kick: Default::default(),
        version: hello.version,
        owed: Default::default(),
        groups: groups.into(),
        user: user.map(Into::into),
        rights: arc_swap::ArcSwap::from_pointee(rights),
        allowed: Default::default(),
        upstream_sender: Default::default(),
        received_fds,
    });
    if let (Some(fds), true) = (&conn.received_fds, conn.version >= proto::FDS_VERSION) {
        // One message's worth, and the next one's that may come in the
        // same read.
        fds.set_limit(2 * state.config().max_fds_per_message);
    }
    let now_ms = crate::registry::unix_ms(connected_at);
    conn.stats.last_activity_ms.store(now_ms, Relaxed);
    conn.stats.last_read_ms.store(now_ms, Relaxed);
    conn.outbox
        .push_frame(&control::server(&ServerFrame::Welcome(proto::Welcome {
            version: proto::PROTOCOL_VERSION,
            conn_id: conn.id,
            server_id: &state.server_id,
            max_frame: state.config().max_frame,
        })));
    // A first ping measures the round trip (`bus-cli list` RTT).
    conn.outbox.push_frame(&control::server(&ServerFrame::Ping));
    conn.stats.ping_sent(uptime_us(&state));
    state.registry.insert(conn.clone());
    let writer = tokio::spawn(write_loop(conn.clone(), wr));
    match state.conn_log.allow(state.clock.now_ms()) {
        Some(0) => tracing::info!(id = conn.id, name = %conn.name, peer = ?conn.peer, "connection open"),
        Some(held_back) => {
            tracing::info!(id = conn.id, name = %conn.name, peer = ?conn.peer, held_back, "connection open")
        }
        None => {}
    }
    api::conn_event(&state, proto::api::EVENT_CONN_OPEN, &conn, None);

    let Fatal(reason) = read_loop(&state, &conn, &mut frames).await;
    // Recorded as it was at the end, subscriptions included.
    state
        .registry
        .record_closed(&conn, reason.clone(), state.config().max_closed);

    let subs = std::mem::take(&mut *lock(&conn.subs));
    for s in subs.values() {
        access::ended(&state, &conn, &s.pattern);
    }
    state.router.unsubscribe(
        subs.iter()
            .map(|(sid, s)| (s.pattern.as_str(), s.queue.as_deref(), Target::new(&conn, *sid))),
    );
    state.interest_changed();
    state.registry.remove(&conn);
    // Its names pass to the next in their queues.
    service::release_all(&state, &conn);
    // Requests it received and never answered fail now, not at their timeout.
    conn.owed.abandon_all(state.shutdown.is_cancelled());
    conn.outbox.close();
    drop(frames);
    let mut writer = writer;
    if tokio::time::timeout(state.config().shutdown_grace, &mut writer)
        .await
        .is_err()
    {
        writer.abort();
    }
    conn.outbox.clear();
    match state.conn_log.allow(state.clock.now_ms()) {
        Some(0) => tracing::info!(id = conn.id, name = %conn.name, %reason, "connection closed"),
        Some(held_back) => {
            tracing::info!(id = conn.id, name = %conn.name, %reason, held_back, "connection closed")
        }
        None => {}
    }
    api::conn_event(&state, proto::api::EVENT_CONN_CLOSE, &conn, Some(reason));
}

/// The encoded [`proto::Sender`] stamped on what connection `id` publishes.
fn sender_of(node: &str, id: u64, name: &str, peer: &Peer) -> Box<[u8]> {
    let mut sender = proto::Sender {
        node: node.to_owned(),
        conn_id: id,
        name: name.to_owned(),
        ..Default::default()
    };
    match peer {
        Peer::Unix { pid, uid, gid } => {
            sender.pid = Some(*pid);
            sender.uid = Some(*uid);
            sender.gid = Some(*gid);
        }
        Peer::Net { addr } => sender.addr = Some(addr.clone()),
    }
    postcard::to_allocvec(&sender)
        .unwrap_or_default()
        .into_boxed_slice()
}

/// What the kernel or the TLS handshake says about a peer, beyond
/// [`Peer`].
#[derive(Debug)]
pub enum Creds {
    /// A local peer's groups, the primary one first.
    Groups(Vec<u32>),
    /// The DNS names of a network peer's verified client certificate.
    CertNames(Vec<String>),
}

/// How denials name a peer before it has rights.
fn peer_label(peer: &Peer, user: Option<&str>) -> String {
    match (peer, user) {
        (Peer::Unix { uid, .. }, _) => format!("uid {uid}"),
        (Peer::Net { .. }, Some(u)) => format!("user {u}"),
        (Peer::Net { .. }, None) => "tcp".into(),
    }
}

/// Applies the token check (network peers) and the access policy to a
/// peer that sent a valid `Hello`. Its budgets were taken at accept.
/// A network peer that presented a `[[users]]` token is that user.
fn admit(
    state: &State,
    peer: &Peer,
    groups: &[u32],
    cert_names: &[String],
    transport: &str,
    auth: Option<&str>,
) -> Result<Option<String>, (ErrorCode, String)> {
    if transport != "unix" {
        let users = state.users.load();
        let Some(user) = crate::tcp::identify(state.token.as_deref(), &users, cert_names, auth) else {
            state.policy.refused.count("auth_failed");
            return Err((ErrorCode::AuthenticationFailed, "authentication failed".into()));
        };
        return Ok(user);
    }
    state
        .policy
        .check_connect(peer, groups)
        .map(|()| None)
        .map_err(|m| (ErrorCode::PermissionDenied, m))
}

/// What a valid `Hello` said.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HelloInfo {
    /// Protocol version the peer speaks (within what the daemon accepts).
    pub version: u16,
    /// Client name (for a bridge: the remote node id).
    pub name: String,
    /// Credential presented (network transports).
    pub auth: Option<String>,
    /// Client or bridge.
    pub role: proto::Role,
}

/// Reads and checks `Hello`. Returns what it said, or the error to send.
async fn handshake(state: &State, frames: &mut Incoming) -> Result<HelloInfo, (ErrorCode, String)> {
    let t = state.config().handshake_timeout;
    let body = match tokio::time::timeout(t, frames.read_frame()).await {
        Err(_) => {
            state.policy.refused.count("handshake_timeout");
            return Err((
                ErrorCode::HandshakeTimeout,
                format!("no Hello within handshake_timeout ({t:?})"),
            ));
        }
        Ok(Ok(None)) => return Err((ErrorCode::Protocol, "connection ended before Hello".into())),
        Ok(Err(e)) if codec::is_frame_too_large(&e) => {
            state.policy.refused.count("max_handshake_frame");
            return Err((
                ErrorCode::FrameTooLarge,
                format!(
                    "frame before the handshake exceeds max_handshake_frame ({} bytes)",
                    state.config().max_handshake_frame
                ),
            ));
        }
        Ok(Err(e)) => return Err(read_error(state, &e)),
        Ok(Ok(Some(body))) => body,
    };
    check_hello(&body)
}

/// The handshake's verdict on the first frame body: what the `Hello` said,
/// or the error code and message to refuse with. Pure, so it can be fuzzed.
pub fn check_hello(body: &[u8]) -> Result<HelloInfo, (ErrorCode, String)> {
    match codec::decode::<ClientFrame>(body) {
        Ok(ClientFrame::Hello(h))
            if (proto::MIN_PROTOCOL_VERSION..=proto::PROTOCOL_VERSION).contains(&h.version) =>
        {
            Ok(HelloInfo {
                version: h.version,
                name: h.name.to_owned(),
                auth: h.auth.map(ToOwned::to_owned),
                role: h.role,
            })
        }
        Ok(ClientFrame::Hello(h)) => Err((
            ErrorCode::VersionMismatch,
            format!(
                "protocol version mismatch: client speaks {}, daemon speaks {} to {}",
                h.version,
                proto::MIN_PROTOCOL_VERSION,
                proto::PROTOCOL_VERSION
            ),
        )),
        Ok(other) => Err((
            ErrorCode::Protocol,
            format!("expected Hello as the first frame, got {}", frame_name(&other)),
        )),
        Err(e) => Err((ErrorCode::Protocol, e.to_string())),
    }
}

fn frame_name(f: &ClientFrame<'_>) -> &'static str {
    match f {
        ClientFrame::Hello(_) => "Hello",
        ClientFrame::Pub(_) => "Pub",
        ClientFrame::Sub(_) => "Sub",
        ClientFrame::Unsub { .. } => "Unsub",
        ClientFrame::Ping => "Ping",
        ClientFrame::Pong => "Pong",
        ClientFrame::HPub(_) => "HPub",
        ClientFrame::SubWith(_) => "SubWith",
        ClientFrame::SubFlags(_) => "SubFlags",
        ClientFrame::PubFds(_) => "PubFds",
        ClientFrame::RequestName(_) => "RequestName",
        ClientFrame::ReleaseName { .. } => "ReleaseName",
        ClientFrame::Call(_) => "Call",
    }
}

/// Classifies a read error: a frame over `max_frame`, the peer closing
/// inside a frame, or the socket failing.
fn read_error(state: &State, e: &std::io::Error) -> (ErrorCode, String) {
    if codec::is_frame_too_large(e) {
        state.policy.refused.count("max_frame");
        (
            ErrorCode::FrameTooLarge,
            format!(
                "frame length exceeds max_frame ({} bytes)",
                state.config().max_frame
            ),
        )
    } else if codec::is_truncated(e) {
        (
            ErrorCode::Protocol,
            "truncated frame: connection ended inside a frame".into(),
        )
    } else {
        (ErrorCode::Protocol, format!("read error: {e}"))
    }
}

/// Reads and handles frames until the connection ends; returns why.
async fn read_loop(state: &State, conn: &Arc<Conn>, frames: &mut Incoming) -> Fatal {
    let cfg = state.config();
    let mut cache = RouteCache::default();
    let mut ping =
        tokio::time::interval_at(tokio::time::Instant::now() + cfg.ping_interval, cfg.ping_interval);
    ping.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut missed = 0u32;
    let mut held = Held::default();
    let shutdown = state.shutdown.cancelled();
    tokio::pin!(shutdown);
    loop {
        if !held.is_empty() {
            if let Err(f) = hold_back(state, conn, &mut held, shutdown.as_mut()).await {
                return f;
            }
            // Its pongs were not read meanwhile.
            missed = 0;
        }
        tokio::select! {
            biased;
            read = frames.read_frames() => match read {
                Ok(Some(chunk)) => {
                    missed = 0;
                    let now = state.clock.now_ms();
                    conn.stats.last_read_ms.store(now, Relaxed);
                    match handle_frames(state, conn, &chunk, &mut cache, &mut held) {
                        Ok(true) => conn.stats.last_activity_ms.store(now, Relaxed),
                        Ok(false) => {}
                        Err(f) => return f,
                    }
                    if let Some(fds) = conn.received_fds.as_ref().filter(|f| !f.is_empty()) {
                        // Descriptors come with the first bytes of the frame
                        // that carries them: with every frame read whole,
                        // these came with none.
                        if frames.buffered() == 0 {
                            let message = format!("{} file descriptors came with no frame that carries them", fds.len());
                            fds.clear();
                            return fatal(conn, ErrorCode::Protocol, message);
                        }
                    }
                }
                Ok(None) => return Fatal(CloseReason::End),
                Err(e) => {
                    let (code, message) = read_error(state, &e);
                    return fatal(conn, code, message);
                }
            },
            _ = &mut shutdown => return Fatal(CloseReason::Shutdown),
            kick = conn.kick.requested() => return kicked(conn, kick),
            _ = ping.tick() => {
                let idle_ms = state.clock.now_ms().saturating_sub(conn.stats.last_read_ms.load(Relaxed));
                if u128::from(idle_ms) + 50 < cfg.ping_interval.as_millis() {
                    // Active: a ping only to measure the round trip again
                    // (not counted as missed if unanswered).
                    if !conn.stats.ping_outstanding()
                        && conn.outbox.push_frame(&control::server(&ServerFrame::Ping))
                    {
                        conn.stats.ping_sent(uptime_us(state));
                    }
                    continue;
                }
                if missed >= cfg.max_pings_missed {
                    state.policy.refused.count("max_pings_missed");
                    let reason = if conn.outbox.pending_bytes() > 0 { CloseReason::SlowConsumer } else { CloseReason::Timeout };
                    let message = format!("no answer to {missed} pings (ping_interval {:?})", cfg.ping_interval);
                    conn.outbox.push_frame(&control::error(ErrorCode::PingTimeout, &message));
                    return Fatal(reason);
                }
                missed += 1;
                if !conn.outbox.push_frame(&control::server(&ServerFrame::Ping)) {
                    return Fatal(CloseReason::SlowConsumer);
                }
                conn.stats.ping_sent(uptime_us(state));
            }
        }
    }
}

/// Ends the connection as `kick` asked.
fn kicked(conn: &Conn, kick: Kicked) -> Fatal {
    match kick {
        Kicked::Admin { by } => {
            let message = format!("connection closed by an administrator (request from connection {by})");
            conn.outbox
                .push_frame(&control::error(ErrorCode::Kicked, &message));
            Fatal(CloseReason::Kicked { by })
        }
        Kicked::Stalled { publisher, stall } => {
            let message = format!(
                "slow consumer: a lossless subscription held connection {publisher} back longer than max_stall ({stall:?})"
            );
            conn.outbox
                .push_frame(&control::error(ErrorCode::SlowConsumer, &message));
            Fatal(CloseReason::SlowConsumer)
        }
    }
}

/// Holds `conn`, a publisher, back until every connection in `held` (its
/// lossless subscribers with full queues) has room again: it is not read
/// meanwhile, so its socket fills and its `publish` waits. One that is
/// still full after `max_stall` is disconnected as a slow consumer, and the
/// publisher goes on. A kick or shutdown ends the wait (and the
/// connection).
async fn hold_back(
    state: &State,
    conn: &Arc<Conn>,
    held: &mut Held,
    mut shutdown: std::pin::Pin<&mut tokio_util::sync::WaitForCancellationFuture<'_>>,
) -> Result<(), Fatal> {
    let stall = state.config().max_stall;
    let deadline = tokio::time::Instant::now() + stall;
    for sub in held.drain() {
        if sub.outbox.has_room() {
            continue;
        }
        tokio::select! {
            biased;
            _ = &mut shutdown => return Err(Fatal(CloseReason::Shutdown)),
            kick = conn.kick.requested() => return Err(kicked(conn, kick)),
            () = sub.outbox.room() => {}
            () = tokio::time::sleep_until(deadline) => {
                state.policy.refused.count("max_stall");
                tracing::info!(id = sub.id, publisher = conn.id, ?stall, "lossless subscriber stalled a publisher: disconnecting it");
                sub.outbox.give_up();
                sub.kick.stalled(conn.id, stall);
            }
        }
    }
    Ok(())
}

/// Handles the whole frames of one read, in place. Publishes are delivered
/// together once the frames are handled (or before the first frame of
/// another kind); those accepted before a fatal frame are still delivered.
/// True if any was an application frame (not a ping or pong). Lossless
/// subscribers whose queues the publishes filled are left in `held`.
fn handle_frames(
    state: &State,
    conn: &Arc<Conn>,
    chunk: &Bytes,
    cache: &mut RouteCache,
    held: &mut Held,
) -> Result<bool, Fatal> {
    let mut pending = Pending {
        deliveries: Deliveries::in_read(chunk, state.config().max_frame),
        msgs: 0,
        bytes: 0,
        app: false,
    };
    let mut result = Ok(());
    for (at, body) in codec::whole_frames(chunk) {
        let frame = &chunk[at..at + proto::LEN_PREFIX + body.len()];
        result = handle_frame(state, conn, frame, cache, &mut pending);
        if result.is_err() {
            break;
        }
    }
    pending.settle(&conn.stats);
    *held = std::mem::take(&mut pending.deliveries.held);
    result.map(|()| pending.app)
}

/// What handling one read accumulates: the deliveries of its publishes,
/// queued together, and their counts, added to the connection's stats
/// together (two atomic adds per read rather than per message).
struct Pending<'a> {
    deliveries: Deliveries<'a>,
    msgs: u64,
    bytes: u64,
    /// An application frame (publish, subscribe, unsubscribe) was read.
    app: bool,
}

impl<'a> Pending<'a> {
    /// Counts one accepted publish of `payload` bytes.
    fn count(&mut self, payload: usize) {
        self.msgs += 1;
        self.bytes += payload as u64;
        self.app = true;
    }

    /// Delivers and counts what was published so far: at the end of the
    /// read, and before a frame of another kind takes effect.
    fn settle(&mut self, stats: &Stats) {
        self.deliveries.deliver();
        if self.msgs > 0 {
            stats.msgs_in.fetch_add(std::mem::take(&mut self.msgs), Relaxed);
            stats.bytes_in.fetch_add(std::mem::take(&mut self.bytes), Relaxed);
        }
    }
}

/// Microseconds since the daemon started: the clock of round trips.
fn uptime_us(state: &State) -> u64 {
    state.started.elapsed().as_micros() as u64
}

/// Queues an `Error` frame and ends the connection with it as the reason.
fn fatal(conn: &Conn, code: ErrorCode, message: String) -> Fatal {
    conn.outbox.push_frame(&control::error(code, &message));
    Fatal(CloseReason::Error(message))
}

/// Handles one whole frame (`frame`: prefix and body).
///
/// The one publish path: a `Pub` is read in place ([`wire::raw_pub`]), as
/// is an `HPub` ([`wire::raw_hpub`], its header block checked once),
/// then checked and routed ([`publish`]); postcard decodes everything else
/// (and a publish in an encoding the direct readers leave to it). One measured
/// shortcut comes first: a frame that begins like the last publish (its
/// head, every byte before the payload) is that subject again, and goes
/// straight to [`route`] with the routes the cache holds for it
/// ([`Router::repeated`](crate::router::Router::repeated)).
fn handle_frame<'a>(
    state: &State,
    conn: &'a Arc<Conn>,
    frame: &'a [u8],
    cache: &mut RouteCache,
    pending: &mut Pending<'a>,
) -> Result<(), Fatal> {
    let body = &frame[proto::LEN_PREFIX..];
    if let Some((p, routes)) = state.router.repeated(frame, cache) {
        pending.count(p.payload.len());
        route(state, conn, frame, p, None, routes, pending);
        return Ok(());
    }
    if let Some(p) = wire::raw_pub(body) {
        return publish(state, conn, frame, p, cache, pending);
    }
    if let Some(p) = wire::raw_hpub(body) {
        pending.app = true;
        return publish_with_headers(state, conn, frame, p, cache, pending);
    }
    decoded_frame(state, conn, frame, cache, pending)
}

/// [`handle_frame`] for every frame the direct readers leave to postcard:
/// out of line, so that the publish path stays small.
#[inline(never)]
fn decoded_frame<'a>(
    state: &State,
    conn: &'a Arc<Conn>,
    frame: &'a [u8],
    cache: &mut RouteCache,
    pending: &mut Pending<'a>,
) -> Result<(), Fatal> {
    let body = &frame[proto::LEN_PREFIX..];
    let decoded = match codec::decode::<ClientFrame>(body) {
        Ok(f) => f,
        Err(CodecError::Postcard(e)) => {
            return Err(fatal(conn, ErrorCode::Protocol, format!("malformed frame: {e}")))
        }
        Err(e) => return Err(fatal(conn, ErrorCode::Protocol, e.to_string())),
    };
    if !matches!(decoded, ClientFrame::Pub(_) | ClientFrame::HPub(_)) {
        // Everything published before this frame is queued before its effects.
        pending.settle(&conn.stats);
    }
    if !matches!(decoded, ClientFrame::Ping | ClientFrame::Pong) {
        pending.app = true;
    }
    match decoded {
        ClientFrame::Pub(p) => {
            let p = wire::RawPub {
                subject: p.subject.as_bytes(),
                reply_to: p.reply_to.map(str::as_bytes),
                payload: p.payload,
                headers: None,
            };
            publish(state, conn, frame, p, cache, pending)
        }
        ClientFrame::HPub(h) => {
            let p = wire::RawPub {
                subject: h.subject.as_bytes(),
                reply_to: h.reply_to.map(str::as_bytes),
                payload: h.payload,
                headers: Some(h.headers),
            };
            publish_with_headers(state, conn, frame, p, cache, pending)
        }
        ClientFrame::Sub(s) => subscribe(state, conn, s, 0),
        ClientFrame::SubWith(s) => {
            let sub = proto::Sub {
                sid: s.sid,
                pattern: s.pattern,
                queue: s.queue,
            };
            subscribe(state, conn, sub, if s.sender { sub_flags::SENDER } else { 0 })
        }
        ClientFrame::PubFds(p) => publish_fds(state, conn, p, cache, pending),
        ClientFrame::SubFlags(s) => {
            let sub = proto::Sub {
                sid: s.sid,
                pattern: s.pattern,
                queue: s.queue,
            };
            subscribe(state, conn, sub, s.flags)
        }
        ClientFrame::Unsub { sid } => {
            if let Some(sub) = lock(&conn.subs).remove(&sid) {
                let target = Target::new(conn, sid);
                state
                    .router
                    .unsubscribe([(sub.pattern.as_str(), sub.queue.as_deref(), target)]);
                state.interest_changed();
                access::ended(state, conn, &sub.pattern);
            }
            Ok(())
        }
        ClientFrame::Ping => {
            if conn.outbox.push_frame(&control::server(&ServerFrame::Pong)) {
                Ok(())
            } else {
                Err(Fatal(CloseReason::SlowConsumer))
            }
        }
        ClientFrame::Pong => {
            conn.stats.pong(uptime_us(state));
            Ok(())
        }
        ClientFrame::RequestName(r) => {
            if let Err(message) = checked_name(state, conn, r.name)? {
                service::refuse(conn, r.serial, ErrorCode::LimitExceeded, &message);
            } else if r.name.starts_with(subject::RESERVED_PREFIX) {
                let e = subject::SubjectError::Reserved(r.name.into());
                service::refuse(conn, r.serial, ErrorCode::Reserved, &e.to_string());
            } else if let Err(message) = access::name(state, conn, Action::Own, r.name) {
                service::refuse(conn, r.serial, ErrorCode::PermissionDenied, &message);
            } else {
                service::request_name(state, conn, &r);
            }
            Ok(())
        }
        ClientFrame::ReleaseName { serial, name, sid } => {
            // A name over the limits was never given: it is released by nobody.
            checked_name(state, conn, name)?.ok();
            service::release_name(state, conn, serial, name, sid);
            Ok(())
        }
        ClientFrame::Call(c) => call(state, conn, c, pending),
        ClientFrame::Hello(_) => Err(fatal(conn, ErrorCode::Protocol, "duplicate Hello".into())),
    }
}

/// A well-known name from a frame, checked: subject syntax without
/// wildcards (else the connection ends), then `max_subject_len` and
/// `max_subject_tokens` (`Ok(Err)`: the message to refuse it with).
fn checked_name(state: &State, conn: &Conn, name: &str) -> Result<Result<(), String>, Fatal> {
    if let Err(e) = subject::validate_subject(name) {
        return Err(fatal(conn, ErrorCode::InvalidSubject, format!("name: {e}")));
    }
    Ok(subject_limits(state, "name", name))
}

/// A `Call`: its name, method, reply subject and headers checked as a
/// publish's are, then handed to [`service::call`].
fn call<'a>(
    state: &State,
    conn: &'a Arc<Conn>,
    c: proto::Call<'_>,
    pending: &mut Pending<'a>,
) -> Result<(), Fatal> {
    let refuse = |message: &str| {
        conn.outbox
            .push_frame(&control::error(ErrorCode::LimitExceeded, message));
        Ok(())
    };
    if let Err(message) = checked_name(state, conn, c.name)? {
        return refuse(&message);
    }
    if let Err(e) = subject::validate_subject(c.subject) {
        return Err(fatal(conn, ErrorCode::InvalidSubject, format!("method: {e}")));
    }
    if let Err(message) = subject_limits(state, "method", c.subject) {
        return refuse(&message);
    }
    if let Some(r) = c.reply_to {
        if reply_subject(state, conn, r.as_bytes())?.is_none() {
            return Ok(());
        }
    }
    if !c.headers.is_empty() && !headers_ok(state, conn, c.headers)? {
        return Ok(());
    }
    if let Err(message) = access::name(state, conn, Action::Call, c.name) {
        conn.outbox
            .push_frame(&control::error(ErrorCode::PermissionDenied, &message));
        if let Some(reply_to) = c.reply_to {
            access::refuse_call(state, reply_to, &message);
        }
        return Ok(());
    }
    pending.count(c.payload.len());
    service::call(state, conn, &c);
    Ok(())
}

/// [`publish`] for an `HPub`: its header block is checked first
/// ([`headers_ok`]), then forwarded as it came.
fn publish_with_headers<'a>(
    state: &State,
    conn: &'a Arc<Conn>,
    frame: &'a [u8],
    p: wire::RawPub<'_>,
    cache: &mut RouteCache,
    pending: &mut Pending<'a>,
) -> Result<(), Fatal> {
    if headers_ok(state, conn, p.headers.unwrap_or_default())? {
        publish(state, conn, frame, p, cache, pending)?;
    }
    Ok(())
}

/// Checks a header block once: over `max_header_bytes` it is refused and
/// reported (`Ok(false)`; the connection stays), a malformed one ends the
/// connection.
fn headers_ok(state: &State, conn: &Conn, block: &[u8]) -> Result<bool, Fatal> {
    match libbus::headers::check(block, state.config().max_header_bytes) {
        Ok(()) => Ok(true),
        Err(e @ libbus::headers::HeaderError::TooLarge { .. }) => {
            state.policy.refused.count("max_header_bytes");
            conn.outbox
                .push_frame(&control::error(ErrorCode::LimitExceeded, &e.to_string()));
            Ok(false)
        }
        Err(e) => Err(fatal(conn, ErrorCode::Protocol, e.to_string())),
    }
}

/// A publish read from `frame`, its subjects not yet checked: counted,
/// checked and routed. A subject found in the route cache was validated
/// when it was cached; any other is checked here, then looked up (and
/// cached).
fn publish<'a>(
    state: &State,
    conn: &'a Arc<Conn>,
    frame: &'a [u8],
    p: wire::RawPub<'_>,
    cache: &mut RouteCache,
    pending: &mut Pending<'a>,
) -> Result<(), Fatal> {
    let reply_to = match p.reply_to.map(|r| reply_subject(state, conn, r)).transpose()? {
        Some(None) => return Ok(()), // refused by a limit, and reported
        Some(Some(r)) => Some(r),
        None => None,
    };
    pending.count(p.payload.len());
    // A reply-less publish's head (every byte before its payload) lets the
    // next frame like it skip decoding.
    let head = match (reply_to, p.headers) {
        (None, None) => &frame[..frame.len() - p.payload.len()],
        _ => &[][..],
    };
    if let Some(routes) = state.router.cached(p.subject, head, cache) {
        route(state, conn, frame, p, reply_to, routes, pending);
        return Ok(());
    }
    let Ok(subject) = std::str::from_utf8(p.subject) else {
        return Err(fatal(conn, ErrorCode::Protocol, NOT_UTF8.into()));
    };
    if !subject_ok(state, conn, subject)? {
        return Ok(());
    }
    if subject.starts_with(subject::RESERVED_PREFIX) {
        if subject.starts_with(subject::API_PREFIX) {
            pending.settle(&conn.stats);
            api::handle(state, conn, subject, reply_to, p.payload);
        } else {
            let e = subject::SubjectError::Reserved(subject.into());
            conn.outbox
                .push_frame(&control::error(ErrorCode::Reserved, &e.to_string()));
        }
        return Ok(());
    }
    let Some(routes) = allowed_routes(state, conn, subject, cache) else {
        return Ok(());
    };
    route(state, conn, frame, p, reply_to, &routes, pending);
    Ok(())
}

/// Checks the subject of a publish not found in the route cache: an
/// invalid one ends the connection, one over a length limit is refused and
/// reported (`Ok(false)`).
fn subject_ok(state: &State, conn: &Conn, subject: &str) -> Result<bool, Fatal> {
    if let Err(e) = subject::validate_subject(subject) {
        return Err(fatal(conn, ErrorCode::InvalidSubject, e.to_string()));
    }
    if let Err(message) = subject_limits(state, "subject", subject) {
        conn.outbox
            .push_frame(&control::error(ErrorCode::LimitExceeded, &message));
        return Ok(false);
    }
    Ok(true)
}

/// Where a publish to a checked `subject` goes, if the access policy lets
/// `conn` publish there (a reply to a request it got is looked up without
/// filling the cache); `None` if it is denied (and reported).
fn allowed_routes(
    state: &State,
    conn: &Arc<Conn>,
    subject: &str,
    cache: &mut RouteCache,
) -> Option<Arc<Routes>> {
    match access::publish(state, conn, subject) {
        Verdict::Allowed => Some(state.router.lookup(subject, cache)),
        Verdict::Reply => Some(state.router.lookup_uncached(subject)),
        Verdict::Denied => None,
    }
}

/// A publish with file descriptors (`PubFds`, protocol 6). Its descriptors
/// are claimed from those the connection sent (a frame claiming more than
/// came, or more than `max_fds_per_message`, ends the connection); the
/// message is checked as any publish is, then queued as a `MsgFds` for each
/// local subscriber that can take descriptors, all sharing one set (the
/// kernel gives each its own copy as it is sent; ours close once every
/// queue has let go). Where descriptors cannot go (a network or older
/// subscriber, a bridge, the NATS upstream) the message does not go
/// either, and the publisher hears `FdsNotPassed` naming where. A queue
/// group's member is chosen among those that can take them.
#[inline(never)]
fn publish_fds(
    state: &State,
    conn: &Arc<Conn>,
    p: proto::PubFds<'_>,
    cache: &mut RouteCache,
    pending: &mut Pending<'_>,
) -> Result<(), Fatal> {
    let cfg = state.config();
    let n = usize::from(p.fds);
    if n == 0 || n > cfg.max_fds_per_message {
        state.policy.refused.count("max_fds_per_message");
        let message = format!(
            "limit exceeded: max_fds_per_message = {} (a message with {n})",
            cfg.max_fds_per_message
        );
        return Err(fatal(conn, ErrorCode::LimitExceeded, message));
    }
    let Some(fds) = conn.received_fds.as_ref().and_then(|f| f.take(n)) else {
        let message = format!("a message claims {n} file descriptors that did not come with it");
        return Err(fatal(conn, ErrorCode::Protocol, message));
    };
    pending.settle(&conn.stats);
    let fds = match crate::outbox::HeldFds::hold(fds, &state.fds_held, state.fd_budget) {
        Ok(fds) => fds,
        Err(held) => {
            state.policy.refused.count("fd_budget");
            let message = format!(
                "file descriptors not passed: the daemon holds {held} in messages, its limit is {} (half its RLIMIT_NOFILE); the message was not sent",
                state.fd_budget
            );
            conn.outbox
                .push_frame(&control::error(ErrorCode::FdsNotPassed, &message));
            return Ok(());
        }
    };
    if !p.headers.is_empty() && !headers_ok(state, conn, p.headers)? {
        return Ok(());
    }
    let reply_to = match p
        .reply_to
        .map(|r| reply_subject(state, conn, r.as_bytes()))
        .transpose()?
    {
        Some(None) => return Ok(()),
        Some(Some(r)) => Some(r),
        None => None,
    };
    if !subject_ok(state, conn, p.subject)? {
        return Ok(());
    }
    if p.subject.starts_with(subject::RESERVED_PREFIX) {
        let e = subject::SubjectError::Reserved(p.subject.into());
        conn.outbox
            .push_frame(&control::error(ErrorCode::Reserved, &e.to_string()));
        return Ok(());
    }
    let Some(routes) = allowed_routes(state, conn, p.subject, cache) else {
        return Ok(());
    };
    pending.count(p.payload.len());
    pending.settle(&conn.stats);
    if !conn.owed.is_empty() {
        conn.owed.answer(p.subject);
    }
    let mut not_passed = Vec::new();
    let mut delivered = 0;
    let offer = |t: &Target| {
        let frame = control::server(&ServerFrame::MsgFds(proto::PubFds {
            sid: t.sid,
            reply_to,
            ..p.clone()
        }));
        t.conn
            .outbox
            .push_with_fds(t.sid, &frame, p.payload.len(), &fds, cfg.max_fds_pending);
    };
    for t in &routes.plain {
        if t.conn.takes_fds() {
            offer(t);
            delivered += 1;
        } else {
            not_passed.push(format!(
                "connection {} ({}, protocol {})",
                t.conn.id, t.conn.transport, t.conn.version
            ));
        }
    }
    for (group, members) in &routes.groups {
        let n = members.len();
        let start = routes.group_start(n);
        match (0..n)
            .map(|i| &members[(start + i) % n])
            .find(|t| t.conn.takes_fds())
        {
            Some(t) => {
                offer(t);
                delivered += 1;
            }
            None => not_passed.push(format!("queue group {group}")),
        }
    }
    if state.cluster.wants(p.subject) {
        not_passed.push("the bridges".into());
    }
    if state.upstream.as_ref().is_some_and(|up| up.exports(p.subject)) {
        not_passed.push("the NATS upstream".into());
    }
    if !not_passed.is_empty() {
        state.policy.refused.count("fds_not_passed");
        let message = format!(
            "file descriptors pass only to local subscribers on Unix sockets (protocol 6): \
             the message on {:?} did not go to {}",
            p.subject,
            not_passed.join(", ")
        );
        conn.outbox
            .push_frame(&control::error(ErrorCode::FdsNotPassed, &message));
    }
    if let (Some(reply_to), 0) = (reply_to, delivered) {
        conn.outbox
            .push_frame(&control::server(&ServerFrame::NoResponders { reply_to }));
    }
    Ok(())
}

/// Why a frame whose subject is not UTF-8 ends its connection.
const NOT_UTF8: &str = "malformed frame: a subject is not UTF-8";

/// A publish's reply subject, checked: `Ok(None)` if a limit refused it
/// (reported to the publisher; the message is not routed), an error that
/// ends the connection if it is invalid.
fn reply_subject<'p>(state: &State, conn: &Conn, reply_to: &'p [u8]) -> Result<Option<&'p str>, Fatal> {
    let Ok(reply_to) = std::str::from_utf8(reply_to) else {
        return Err(fatal(conn, ErrorCode::Protocol, NOT_UTF8.into()));
    };
    if let Err(e) = subject::validate_subject(reply_to) {
        return Err(fatal(
            conn,
            ErrorCode::InvalidSubject,
            format!("reply subject: {e}"),
        ));
    }
    if let Err(message) = subject_limits(state, "reply subject", reply_to) {
        conn.outbox
            .push_frame(&control::error(ErrorCode::LimitExceeded, &message));
        return Ok(None);
    }
    Ok(Some(reply_to))
}

/// Sends a valid publish on: to the bridges that want it, and to the local
/// subscribers (`routes`); a request nobody anywhere takes gets `NoResponders`.
fn route<'a>(
    state: &State,
    conn: &'a Arc<Conn>,
    frame: &'a [u8],
    p: wire::RawPub<'_>,
    reply_to: Option<&str>,
    routes: &Arc<Routes>,
    pending: &mut Pending<'a>,
) {
    // The subject was validated before it was routed: it is UTF-8.
    let subject = || std::str::from_utf8(p.subject).unwrap_or_default();
    let message = || cluster::Message {
        subject: subject(),
        reply_to,
        headers: p.headers,
        payload: p.payload,
        from: conn.origin(),
    };
    let bridged = state.cluster.is_active() && state.cluster.publish(&state.router, message(), routes);
    let upstream = upstream(state, conn, message, routes);
    if !conn.owed.is_empty() {
        conn.owed.answer(subject());
    }
    let msg = PubFrame::new(frame, p.payload.len()).from(&conn.sender);
    match reply_to {
        // Queued from the receive buffer: nothing is allocated per message.
        None if !routes.is_empty() => pending.deliveries.push(routes, msg),
        None => {}
        Some(reply_to) => route_request(state, conn, msg, reply_to, routes, (bridged, upstream), pending),
    }
}

/// Hands a publish to the NATS upstream, if there is one and the publish
/// goes up; true if it took it.
fn upstream<'m>(
    state: &State,
    conn: &Conn,
    message: impl FnOnce() -> cluster::Message<'m>,
    routes: &Routes,
) -> bool {
    let Some(up) = &state.upstream else { return false };
    let message = message();
    state
        .cluster
        .allows(crate::acl::Action::Subscribe, message.subject)
        && up.export(message, &conn.upstream_sender, routes)
}

/// [`route`] for a publish with a reply subject, which went to bridges
/// and to the NATS upstream as `(bridged, upstream)` say. A request local
/// responders take is delivered now, in order after what came before it,
/// and tracked until answered (unless bridges took it too: a responder
/// there may still answer when the local ones are gone); a request nobody
/// anywhere takes gets `NoResponders` (from NATS, for one that went up).
#[inline(never)]
fn route_request<'a>(
    state: &State,
    conn: &'a Arc<Conn>,
    msg: PubFrame<'a>,
    reply_to: &str,
    routes: &Arc<Routes>,
    (bridged, upstream): (bool, bool),
    pending: &mut Pending<'a>,
) {
    if routes.is_empty() {
        if !bridged && !upstream {
            conn.outbox
                .push_frame(&control::server(&ServerFrame::NoResponders { reply_to }));
        }
    } else if bridged {
        pending.deliveries.push(routes, msg);
    } else {
        pending.settle(&conn.stats);
        let req = Inflight::new(reply_to, conn);
        let max_owed = state.config().max_replies_per_connection;
        routes.deliver_request(msg, &req, max_owed, &mut pending.deliveries.held);
    }
}

/// Subscribes `conn` as `s` asks, with [`sub_flags`] `flags`.
fn subscribe(state: &State, conn: &Arc<Conn>, s: proto::Sub<'_>, flags: u32) -> Result<(), Fatal> {
    if let Err(e) = subject::validate_pattern(s.pattern) {
        return Err(fatal(conn, ErrorCode::InvalidSubject, e.to_string()));
    }
    if let Some(q) = s.queue {
        if q.is_empty() || q.chars().any(|c| c.is_whitespace() || c.is_control()) {
            return Err(fatal(
                conn,
                ErrorCode::InvalidSubject,
                format!("invalid queue group name {q:?}"),
            ));
        }
    }
    let refuse = |code: ErrorCode, message: String| {
        conn.outbox.push_frame(&control::server(&ServerFrame::SubRefused {
            sid: s.sid,
            code,
            message: &message,
        }));
        Ok(())
    };
    if flags & !sub_flags::KNOWN != 0 {
        return refuse(
            ErrorCode::Protocol,
            format!("unknown subscription flags {:#x}", flags & !sub_flags::KNOWN),
        );
    }
    if let Err(message) = subject_limits(state, "pattern", s.pattern) {
        return refuse(ErrorCode::LimitExceeded, message);
    }
    if let Err(message) = access::subscribe(state, conn, s.pattern) {
        return refuse(ErrorCode::PermissionDenied, message);
    }
    let mut subs = lock(&conn.subs);
    if let Some(old) = subs.get(&s.sid) {
        // Reusing a live sid replaces the subscription.
        let target = Target::new(conn, s.sid);
        state
            .router
            .unsubscribe([(old.pattern.as_str(), old.queue.as_deref(), target)]);
        access::unsubscribed(state, conn, &old.pattern);
    } else if subs.len() >= state.config().max_subscriptions {
        drop(subs);
        access::unsubscribed(state, conn, s.pattern);
        state.policy.refused.count("max_subscriptions");
        return refuse(
            ErrorCode::LimitExceeded,
            format!(
                "limit exceeded: max_subscriptions = {}",
                state.config().max_subscriptions
            ),
        );
    } else if let Some(b) = conn.outbox.budget() {
        let max = state.config().max_subscriptions_per_uid;
        if b.subs.fetch_add(1, Relaxed) >= max {
            b.subs.fetch_sub(1, Relaxed);
            drop(subs);
            access::unsubscribed(state, conn, s.pattern);
            state.policy.refused.count("max_subscriptions_per_uid");
            let who = conn.rights.load().principal.label.clone();
            return refuse(
                ErrorCode::LimitExceeded,
                format!("limit exceeded: max_subscriptions_per_uid = {max} ({who})"),
            );
        }
    }
    subs.insert(
        s.sid,
        SubInfo {
            sid: s.sid,
            pattern: s.pattern.into(),
            queue: s.queue.map(Into::into),
        },
    );
    let target = Target::new(conn, s.sid)
        .with_sender(flags & sub_flags::SENDER != 0)
        .lossless(flags & sub_flags::LOSSLESS != 0);
    state.router.subscribe(s.pattern, s.queue, target);
    state.interest_changed();
    Ok(())
}

/// Writes one batch (vectored) and flushes it (a no-op on raw sockets; TLS
/// buffers). What the socket takes stops counting against `max_pending` at
/// once, not when the whole batch is out.
async fn write_batch(wr: &mut Writer, batch: &mut Frames, outbox: &Outbox) -> std::io::Result<()> {
    while batch.has_remaining() {
        let n = match batch.next_fds() {
            None => wr.write_buf(batch).await?,
            // The bytes before a frame with descriptors, then that frame
            // with them attached to its first bytes.
            Some((0, fds)) => {
                let fds = fds.clone();
                let n = wr.send_with_fds(batch.fds_chunk(), &fds.borrowed()).await?;
                if n > 0 {
                    batch.sent_fds();
                    batch.advance(n);
                    outbox.sent_fds(fds.len());
                }
                n
            }
            Some((before, _)) => wr.write_buf(&mut Buf::take(&mut *batch, before)).await?,
        };
        if n == 0 {
            return Err(std::io::ErrorKind::WriteZero.into());
        }
        outbox.wrote(n);
    }
    wr.flush().await
}

/// Checks `max_subject_len` and `max_subject_tokens` for a subject or pattern
/// (already validated); the error names the limit and its value.
fn subject_limits(state: &State, what: &str, s: &str) -> Result<(), String> {
    let cfg = state.config();
    let (limit, max) = if s.len() > cfg.max_subject_len {
        ("max_subject_len", cfg.max_subject_len)
    } else if s.bytes().filter(|&b| b == b'.').count() >= cfg.max_subject_tokens {
        ("max_subject_tokens", cfg.max_subject_tokens)
    } else {
        return Ok(());
    };
    state.policy.refused.count(limit);
    Err(format!(
        "limit exceeded: {limit} = {max} ({what} of {} bytes)",
        s.len()
    ))
}

async fn write_loop(conn: Arc<Conn>, mut wr: Writer) {
    // Swapped with the outbox's queue: empty when taken, empty when written.
    let mut batch = Frames::default();
    while let Some(taken) = conn.outbox.take(&mut batch).await {
        // Counted before the write, so that a client that has seen a Pong
        // also sees every delivery written ahead of it in the counters.
        conn.stats.msgs_out.fetch_add(taken.msgs, Relaxed);
        conn.stats.bytes_out.fetch_add(taken.bytes, Relaxed);
        if let Err(e) = write_batch(&mut wr, &mut batch, &conn.outbox).await {
            tracing::debug!(id = conn.id, "write failed: {e}");
            break;
        }
    }
}
