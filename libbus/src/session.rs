//! One [`Bus`](crate::Bus)'s life on the socket: the handshake, the reader
//! and writer of each link, and the driver that reconnects when a link fails.
//!
//! The driver task runs the reader of the current link; the writer is its own
//! task, so reading and writing proceed in parallel. When a link fails the
//! driver stops its writer, marks the bus disconnected (in-flight requests
//! fail, publishes keep buffering up to `reconnect_buffer`), reconnects with
//! exponential backoff and jitter, re-sends every live subscription ahead of
//! what was buffered, and starts the next link.

use std::{
    ops::Range,
    os::fd::AsRawFd,
    sync::{atomic::Ordering, Arc},
    time::Duration,
};

use bytes::Bytes;
use rustls::pki_types::ServerName;
use tokio::{io::AsyncWriteExt, net::TcpStream};

use crate::{
    batch::Messages,
    client::{lock, Batch, Pending, Shared},
    codec,
    message::Found,
    proto::{self, ClientFrame, ServerFrame},
    transport::{self, Reader, Writer},
    wire, Address, ConnectOptions, Error, Message, Result,
};

/// The reading side of a link.
pub(crate) type Frames = codec::FrameReader<Reader>;

/// A handshaken connection, ready to run.
pub(crate) struct Link {
    pub frames: Frames,
    pub writer: Writer,
    pub conn_id: u64,
    pub server_id: String,
    pub max_frame: u32,
}

/// Opens the byte stream to `address`: a Unix socket, TCP, or TLS over TCP
/// (with `opts.ca_file`). No handshake yet. busd's bridge dialer uses it too.
pub async fn connect(address: &Address, opts: &ConnectOptions) -> Result<(Reader, Writer)> {
    let no_daemon = |source| Error::NoDaemon {
        address: address.to_string(),
        source,
    };
    match address {
        Address::Unix(path) => {
            let stream = transport::connect_unix(path).await.map_err(no_daemon)?;
            transport::set_send_buffer(&stream, opts.socket_buffer);
            Ok(transport::split_unix(stream))
        }
        Address::Tcp(host_port) => {
            let tcp = TcpStream::connect(host_port.as_str()).await.map_err(no_daemon)?;
            transport::configure_tcp(&tcp)?;
            Ok(transport::split_tcp(tcp))
        }
        Address::Tls(host_port) => {
            let ca = opts.ca_file.as_deref().ok_or_else(|| {
                Error::Tls(format!(
                    "{address} needs the CA that signed the daemon's certificate (set {}, bus-cli --ca, or ConnectOptions::ca_file)",
                    crate::client::ENV_CA
                ))
            })?;
            let host = host_port
                .rsplit_once(':')
                .map_or(host_port.as_str(), |(h, _)| h)
                .trim_start_matches('[')
                .trim_end_matches(']');
            let name = ServerName::try_from(host.to_owned())
                .map_err(|e| Error::InvalidAddress(format!("{address}: {e}")))?;
            let tcp = TcpStream::connect(host_port.as_str()).await.map_err(no_daemon)?;
            transport::configure_tcp(&tcp)?;
            let fd = tcp.as_raw_fd();
            let tls = tokio_rustls::TlsConnector::from(crate::tls::client_config(ca)?)
                .connect(name, tcp)
                .await
                .map_err(|e| Error::Tls(e.to_string()))?;
            Ok(transport::split_layered(tls, fd))
        }
    }
}

/// Connects to `address` and completes the handshake (unbounded; callers
/// apply `connect_timeout`).
pub(crate) async fn open(address: &Address, opts: &ConnectOptions) -> Result<Link> {
    let (rx, mut tx) = connect(address, opts).await?;
    let name = opts.name.as_str();
    let mut buf = Vec::new();
    let hello = ClientFrame::Hello(proto::Hello {
        version: proto::PROTOCOL_VERSION,
        name,
        role: proto::Role::Client,
        auth: opts.token.as_deref(),
    });
    codec::encode_into(&hello, &mut buf, proto::DEFAULT_MAX_FRAME).map_err(crate::client::codec_err)?;
    let written = async {
        tx.write_all(&buf).await?;
        tx.flush().await
    }
    .await;

    let mut frames = Frames::new(rx, proto::DEFAULT_MAX_FRAME).with_read_room(opts.read_buffer);
    if let Err(e) = written {
        // A daemon that refuses at once (max_connections) may have closed
        // before our Hello arrived; its Error frame says why.
        if let Ok(Ok(Some(frame))) =
            tokio::time::timeout(Duration::from_millis(200), frames.read_frame()).await
        {
            if let Ok(ServerFrame::Error { code, message }) = codec::decode::<ServerFrame>(&frame) {
                return Err(Error::Server {
                    code,
                    message: message.into(),
                });
            }
        }
        return Err(e.into());
    }
    let first = frames.read_frame().await?.ok_or(Error::Disconnected {
        reason: Some("daemon closed the connection during the handshake".into()),
    })?;
    let welcome = match codec::decode::<ServerFrame>(&first).map_err(crate::client::codec_err)? {
        ServerFrame::Welcome(w) => w,
        ServerFrame::Error { code, message } => {
            return Err(Error::Server {
                code,
                message: message.into(),
            })
        }
        other => return Err(Error::Protocol(format!("expected Welcome, got {other:?}"))),
    };
    // A delivery carries the published frame plus a sid: allow some slack.
    frames.set_max_frame(welcome.max_frame.saturating_add(64));
    Ok(Link {
        conn_id: welcome.conn_id,
        server_id: welcome.server_id.to_owned(),
        max_frame: welcome.max_frame,
        frames,
        writer: tx,
    })
}

/// Reconnection policy. Delays double from `initial_delay` up to
/// `max_delay`; each wait is drawn uniformly from [delay/2, delay] so that
/// many clients do not reconnect in lockstep.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reconnect {
    /// First delay. Default 50 ms.
    pub initial_delay: Duration,
    /// Largest delay. Default 1 s (a local daemon restarts fast; a failed
    /// connect to a Unix socket costs one system call).
    pub max_delay: Duration,
    /// Give up (and close the `Bus`) after this many failed attempts in a
    /// row. Default: never.
    pub max_attempts: Option<u32>,
}

impl Default for Reconnect {
    fn default() -> Self {
        Self {
            initial_delay: Duration::from_millis(50),
            max_delay: Duration::from_secs(1),
            max_attempts: None,
        }
    }
}

impl Reconnect {
    /// The wait before attempt `n` (0-based), with jitter.
    pub fn delay(&self, n: u32) -> Duration {
        let exp = self
            .initial_delay
            .saturating_mul(1u32.checked_shl(n.min(31)).unwrap_or(u32::MAX))
            .min(self.max_delay);
        let half = exp / 2;
        half + half.mul_f64(fastrand::f64())
    }
}

/// Runs links until the bus closes: the driver task.
pub(crate) async fn drive(shared: Arc<Shared>, first: Frames) {
    let mut frames = first;
    loop {
        let reason = read_loop(&shared, frames).await;
        shared.stop_writer().await;
        let permanent = lock(&shared.last_error)
            .as_ref()
            .is_some_and(|(code, _)| code.is_permanent());
        let reason = match lock(&shared.last_error).take() {
            Some((_, err)) => format!("{reason}: {err}"),
            None => reason,
        };
        let Some(policy) = shared.opts.reconnect.clone().filter(|_| !permanent) else {
            shared.fail(reason);
            return;
        };
        if !shared.lose(&reason) {
            return; // closed by the application meanwhile
        }
        tracing::warn!(%reason, "bus connection lost; reconnecting");
        match reconnect(&shared, &policy).await {
            Some(next) => frames = next,
            None => return,
        }
    }
}

/// Tries to connect again until it works, the bus is closed, or the policy
/// gives up. Returns the new link's reader.
async fn reconnect(shared: &Arc<Shared>, policy: &Reconnect) -> Option<Frames> {
    let mut attempts = 0u32;
    loop {
        tokio::time::sleep(policy.delay(attempts)).await;
        if shared.is_closed() {
            return None;
        }
        attempts += 1;
        let t = shared.opts.connect_timeout;
        let result = match tokio::time::timeout(t, open(&shared.address, &shared.opts)).await {
            Ok(r) => r,
            Err(_) => Err(Error::Timeout(t)),
        };
        match result {
            Ok(link) => return shared.resume(link, attempts),
            Err(Error::Server { code, message }) if code.is_permanent() => {
                shared.fail(format!("reconnect refused: {message}"));
                return None;
            }
            Err(e) => {
                tracing::debug!(attempts, "reconnect failed: {e}");
                if policy.max_attempts.is_some_and(|max| attempts >= max) {
                    shared.fail(format!("gave up reconnecting after {attempts} attempts: {e}"));
                    return None;
                }
            }
        }
    }
}

/// Sends the shared output buffer over one link until the buffer is closed
/// and empty, or writing fails (then the socket is shut down so the reader
/// ends the link too).
pub(crate) async fn write_loop(shared: Arc<Shared>, mut tx: Writer) {
    let mut batch = Vec::with_capacity(64 << 10);
    loop {
        let closed = {
            let mut out = shared.output.lock();
            std::mem::swap(&mut out.buf, &mut batch);
            out.closed
        };
        if batch.is_empty() {
            if closed {
                break;
            }
            shared.output_ready.notified().await;
            // Let the task that woke us add more before we take the buffer:
            // bigger writes, fewer wake-ups (a lone request costs one yield).
            tokio::task::yield_now().await;
            continue;
        }
        shared.output_space.notify_waiters();
        if let Err(e) = write_batch(&mut tx, &batch).await {
            tracing::debug!("bus write failed: {e}");
            tx.shutdown_both();
            break;
        }
        batch.clear();
        if batch.capacity() > 4 << 20 {
            batch.shrink_to(64 << 10);
        }
    }
}

/// Writes one batch and flushes it (a no-op on raw sockets; TLS buffers).
async fn write_batch(tx: &mut Writer, batch: &[u8]) -> std::io::Result<()> {
    tx.write_all(batch).await?;
    tx.flush().await
}

/// How deliveries are gathered: at most `max` per batch; a new batch is
/// sized for the deliveries still in this read, estimated as frames like the
/// current one (a stream is uniform).
#[derive(Debug, Clone, Copy)]
struct Batching {
    max: usize,
    /// Bytes of the read from the current frame on.
    left: usize,
    /// The current frame's length, prefix included.
    frame: usize,
}

impl Batching {
    /// For the frame `body` at `at` in `chunk`, in batches of at most `max`.
    fn at(max: usize, chunk: &[u8], at: usize, body: &[u8]) -> Self {
        Self {
            max,
            left: chunk.len() - at,
            frame: proto::LEN_PREFIX + body.len(),
        }
    }

    /// Capacity for a new batch (computed only when one starts: a division
    /// per frame showed in profiles).
    fn capacity(&self) -> usize {
        (self.left / self.frame.max(1)).clamp(1, self.max)
    }
}

/// Adds message `found` (in `chunk`) to the pending batch of `sid`; true if
/// that batch is now full.
fn add_message(pending: &mut Pending, sid: u64, chunk: &Bytes, found: Found, b: Batching) -> bool {
    // The latest batch of `sid`, unless a loss notice or a `Run` came after it.
    if let Some((_, Batch::Messages(m))) = pending.iter_mut().rev().find(|(s, _)| *s == sid) {
        if m.push(found) {
            return m.len() >= b.max;
        }
    }
    let mut list = Vec::with_capacity(b.capacity());
    list.push(found);
    let full = list.len() >= b.max;
    pending.push((sid, Batch::Messages(Messages::found(chunk.clone(), list))));
    full
}

/// Adds the `Pub` frames `chunk[frames]` of a `Run` for subscription `sid`
/// to `pending` as they are, in batches of at most `max`, having checked
/// only that they are whole frames. Returns whether a batch is full, and
/// how many messages the run held.
fn add_run(
    pending: &mut Pending,
    sid: u64,
    chunk: &Bytes,
    frames: Range<usize>,
    max: usize,
) -> std::result::Result<(bool, usize), String> {
    let mut inner = codec::whole_frames(&chunk[frames.clone()]);
    let (mut full, mut msgs) = (false, 0);
    loop {
        let from = frames.start + inner.end();
        let count = inner.by_ref().take(max).count();
        if count == 0 {
            break;
        }
        let piece = from..frames.start + inner.end();
        pending.push((sid, Batch::Messages(Messages::frames(chunk.slice(piece), count))));
        full |= count == max;
        msgs += count;
    }
    if inner.end() != frames.len() {
        return Err(MALFORMED_RUN.to_owned());
    }
    Ok((full, msgs))
}

/// Why a link ends when a `Run` is not whole `Pub` frames.
const MALFORMED_RUN: &str = "bad frame from daemon: malformed Run";

/// Completes the request each reply in the `Run` `chunk[frames]` answers;
/// returns how many replies it held.
fn complete_replies(
    shared: &Arc<Shared>,
    chunk: &Bytes,
    frames: Range<usize>,
) -> std::result::Result<usize, String> {
    let mut inner = codec::whole_frames(&chunk[frames.clone()]);
    let mut msgs = 0;
    for (at, body) in &mut inner {
        msgs += 1;
        let p = wire::run_msg(body).ok_or(MALFORMED_RUN)?;
        let start = frames.start + at + proto::LEN_PREFIX;
        reply(
            shared,
            chunk,
            Found::new(start, body, p.subject, p.reply_to, p.payload),
        );
    }
    if inner.end() != frames.len() {
        return Err(MALFORMED_RUN.to_owned());
    }
    Ok(msgs)
}

/// Sizes each read of a link to the messages coming in: room for about
/// [`READ_MSGS`] messages like those of the last read, from
/// `ConnectOptions::read_buffer` up to `max_read_buffer`.
#[derive(Debug, Clone, Copy)]
struct ReadRoom {
    min: usize,
    max: usize,
}

/// Messages a read should have room for. Small messages fill the minimum
/// room many times over; large ones get larger reads (measured against a
/// fixed 64 KiB, 1 -> 1, 5 interleaved rounds: 4 KiB +8%, 16 KiB +9%,
/// 64 KiB +25% messages/s, with 10-25% less client CPU per message; 128 B,
/// 1 KiB and fan-out the same. A fixed 1 MiB was 0.5-4% slower at 128 B).
const READ_MSGS: usize = 64;

impl ReadRoom {
    fn new(opts: &ConnectOptions) -> Self {
        Self {
            min: opts.read_buffer,
            max: opts.max_read_buffer.max(opts.read_buffer),
        }
    }

    /// Room for the next read, after one that brought `bytes` holding
    /// `msgs` messages.
    fn after(self, bytes: usize, msgs: usize) -> usize {
        match bytes.checked_div(msgs) {
            // A power of two, so that similar reads ask for the same room
            // and the buffer can be reused rather than reallocated.
            Some(each) => each
                .saturating_mul(READ_MSGS)
                .checked_next_power_of_two()
                .unwrap_or(usize::MAX)
                .clamp(self.min, self.max),
            None => self.min,
        }
    }
}

/// Reads one link until it ends; returns why.
async fn read_loop(shared: &Arc<Shared>, mut frames: Frames) -> String {
    let max_batch = shared.batch_size();
    let room = ReadRoom::new(&shared.opts);
    let mut pending = Pending::new();
    let reason = 'link: loop {
        // Hand over what the last read brought in before waiting on the socket.
        if !pending.is_empty() {
            shared.deliver_all(&mut pending).await;
        }
        let chunk = match frames.read_frames().await {
            Ok(Some(chunk)) => chunk,
            Ok(None) => break "daemon closed the connection".to_owned(),
            Err(e) => break format!("read failed: {e}"),
        };
        let mut msgs = 0;
        for (at, body) in codec::whole_frames(&chunk) {
            let batching = Batching::at(max_batch, &chunk, at, body);
            let start = at + proto::LEN_PREFIX;
            let full = match handle_frame(shared, &chunk, start, body, &mut pending, batching) {
                Ok(Handled::Other) => false,
                Ok(Handled::Msg { full }) => {
                    msgs += 1;
                    full
                }
                Ok(Handled::Run { sid, frames }) => {
                    // Replies are completed here; a subscription's run is
                    // handed over as it came, and the subscription decodes it.
                    let handled = if sid == shared.inbox_sid.load(Ordering::Acquire) {
                        complete_replies(shared, &chunk, frames).map(|n| (false, n))
                    } else {
                        add_run(&mut pending, sid, &chunk, frames, max_batch)
                    };
                    match handled {
                        Ok((full, n)) => {
                            msgs += n;
                            full
                        }
                        Err(reason) => break 'link reason,
                    }
                }
                Err(reason) => break 'link reason,
            };
            if full {
                shared.deliver_all(&mut pending).await;
            }
        }
        frames.set_read_room(room.after(chunk.len(), msgs));
    };
    // What arrived before the end is still handed over, without waiting.
    shared.deliver_now(&mut pending);
    reason
}

/// What handling one frame left to do.
enum Handled {
    /// A delivery, handled; `full`: a batch is full, hand the pending ones
    /// over first.
    Msg { full: bool },
    /// Another kind of frame, handled.
    Other,
    /// Walk the deliveries of a `Run` for `sid`: its `Pub` frames are
    /// `chunk[frames]`.
    Run { sid: u64, frames: Range<usize> },
}

/// Handles one frame `body`, which starts at `start` in the received
/// `chunk`. `Err` ends the link.
fn handle_frame(
    shared: &Arc<Shared>,
    chunk: &Bytes,
    start: usize,
    body: &[u8],
    pending: &mut Pending,
    batching: Batching,
) -> std::result::Result<Handled, String> {
    // The hot path: a delivery, located without building a `ServerFrame`.
    let at = |msg: wire::RawMsg<'_>| {
        let found = Found::new(start, body, msg.subject, msg.reply_to, msg.payload);
        (msg.sid, found)
    };
    // Where a `Run`'s frames lie in `chunk`.
    let run = |sid: u64, frames: &[u8]| {
        let at = start + (frames.as_ptr() as usize - body.as_ptr() as usize);
        Handled::Run {
            sid,
            frames: at..at + frames.len(),
        }
    };
    if let Some(msg) = wire::raw_msg(body) {
        let (sid, found) = at(msg);
        let full = on_msg(shared, chunk, sid, found, pending, batching);
        return Ok(Handled::Msg { full });
    }
    if let Some((sid, frames)) = wire::raw_run(body) {
        return Ok(run(sid, frames));
    }
    // Everything else goes to postcard (`decode_server_frame` would only
    // repeat the `raw_msg` attempt first).
    let decoded = match codec::decode::<ServerFrame>(body) {
        Ok(f) => f,
        Err(e) => return Err(format!("bad frame from daemon: {e}")),
    };
    match decoded {
        ServerFrame::Msg(m) => {
            let (sid, found) = at(wire::RawMsg {
                sid: m.sid,
                subject: m.subject.as_bytes(),
                reply_to: m.reply_to.map(str::as_bytes),
                payload: m.payload,
            });
            let full = on_msg(shared, chunk, sid, found, pending, batching);
            return Ok(Handled::Msg { full });
        }
        ServerFrame::Run { sid, frames } => return Ok(run(sid, frames)),
        ServerFrame::Lagged { sid, dropped } => {
            shared.lagged(sid, dropped);
            pending.push((sid, Batch::Lagged(dropped)));
        }
        ServerFrame::NoResponders { reply_to } => {
            shared.complete_request(reply_to, |subject| Err(Error::NoResponders { subject }));
        }
        ServerFrame::SubRefused { sid, code, message } => shared.sub_refused(sid, code, message),
        ServerFrame::Ping => {
            if shared.send_now(&ClientFrame::Pong).is_err() {
                return Err("connection closed".into());
            }
        }
        ServerFrame::Pong => shared.pong(),
        ServerFrame::Error { code, message } => {
            // Fatal errors are followed by a close; keep reading until then
            // and report the message as the reason.
            tracing::warn!(?code, message, "bus daemon reported an error");
            *lock(&shared.last_error) = Some((code, message.to_owned()));
        }
        ServerFrame::Welcome(_) => return Err("unexpected Welcome from daemon".into()),
    }
    Ok(Handled::Other)
}

/// A delivery `found` in `chunk` for subscription `sid`: a reply completes
/// its request, anything else joins the subscription's pending batch. True
/// if that batch is now full.
fn on_msg(
    shared: &Arc<Shared>,
    chunk: &Bytes,
    sid: u64,
    found: Found,
    pending: &mut Pending,
    batching: Batching,
) -> bool {
    if sid != shared.inbox_sid.load(Ordering::Acquire) {
        return add_message(pending, sid, chunk, found, batching);
    }
    reply(shared, chunk, found);
    false
}

/// A reply `found` in `chunk` completes its request; the message shares the
/// chunk, no copy.
fn reply(shared: &Arc<Shared>, chunk: &Bytes, found: Found) {
    let msg = Message::found_in(chunk, found, shared);
    shared.complete_request(found.subject_in(chunk), |_| Ok(msg));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_make_room_for_about_64_messages_within_the_bounds() {
        let room = ReadRoom {
            min: 64 << 10,
            max: 1 << 20,
        };
        // 128 B messages (in runs) and 1 KiB ones: the minimum, or the
        // power of two above 64 of them.
        assert_eq!(room.after(64 << 10, 440), 64 << 10);
        assert_eq!(room.after(66_000, 62), 128 << 10);
        // 16 KiB and 64 KiB messages: up to the maximum.
        assert_eq!(room.after(4 * 16_400, 4), 1 << 20);
        assert_eq!(room.after(65_600, 1), 1 << 20);
        // A read with no message (a Pong, a loss notice): back to the minimum.
        assert_eq!(room.after(9, 0), 64 << 10);
        // A maximum below the minimum is the minimum.
        let flat = ReadRoom::new(&ConnectOptions {
            read_buffer: 64 << 10,
            max_read_buffer: 1,
            ..ConnectOptions::default()
        });
        assert_eq!(flat.after(65_600, 1), 64 << 10);
    }

    /// `n` whole `Pub` frames after `skip` bytes of something else.
    fn run_of(n: usize, skip: usize) -> Bytes {
        let mut buf = vec![0xEE; skip];
        for i in 0..n {
            let payload = [i as u8; 3];
            let p = proto::Pub {
                subject: "s",
                reply_to: None,
                payload: &payload,
            };
            wire::encode_pub(&p, &mut buf, 1 << 20).unwrap();
        }
        Bytes::from(buf)
    }

    #[test]
    fn a_run_is_handed_over_in_pieces_of_at_most_a_batch() {
        let chunk = run_of(10, 5);
        let mut pending = Pending::new();
        let (full, msgs) = add_run(&mut pending, 7, &chunk, 5..chunk.len(), 4).unwrap();
        assert!(full, "a piece reached the batch size");
        assert_eq!(msgs, 10);
        let counts: Vec<usize> = pending
            .iter()
            .map(|(sid, b)| match b {
                Batch::Messages(m) if *sid == 7 => m.len(),
                other => panic!("unexpected {other:?}"),
            })
            .collect();
        assert_eq!(counts, [4, 4, 2]);
        // The pieces cover the run exactly, in order.
        let joined: Vec<u8> = pending
            .iter()
            .flat_map(|(_, b)| match b {
                Batch::Messages(m) => m.chunk().to_vec(),
                _ => unreachable!(),
            })
            .collect();
        assert_eq!(joined, chunk[5..]);

        let mut pending = Pending::new();
        assert_eq!(
            add_run(&mut pending, 7, &chunk, 5..chunk.len(), 256).unwrap(),
            (false, 10)
        );
        assert_eq!(pending.len(), 1);
    }

    #[test]
    fn a_run_that_is_not_whole_frames_ends_the_link() {
        let chunk = run_of(3, 0);
        let mut pending = Pending::new();
        assert!(add_run(&mut pending, 1, &chunk, 0..chunk.len() - 1, 256).is_err());
    }
}
