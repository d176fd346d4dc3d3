//! The output side of a connection: one buffer that every call encodes its
//! frame into, the writer task that sends it, and the link's state.
//!
//! `Bus::publish` → [`Output::publish`] encodes a `Pub` frame into the
//! buffer under a short lock and wakes the writer; [`write_loop`] swaps the
//! whole buffer out and sends it in one `write`, so many frames share a
//! system call. The buffer outlives links: while disconnected it keeps
//! publishes (up to `reconnect_buffer`) for the next link, and `closed`
//! ends it for good.

use std::{
    collections::VecDeque,
    sync::{
        atomic::{AtomicU32, Ordering},
        Mutex, MutexGuard,
    },
};

use tokio::{
    io::AsyncWriteExt,
    sync::{broadcast, oneshot, Notify},
};

use crate::{
    codec,
    error::codec_err,
    events::Event,
    proto::{self, ClientFrame},
    subject,
    sync::lock,
    transport::Writer,
    wire, ConnectOptions, Error, Result,
};

/// Most file descriptors the output buffer holds for messages not yet
/// written; a publish with more waits for the writer.
const MAX_BUFFERED_FDS: usize = 256;

/// Frames waiting for the writer, and the link state. Behind
/// [`Output::lock`].
#[derive(Debug, Default)]
pub(crate) struct Buffer {
    /// Encoded frames, in order.
    pub buf: Vec<u8>,
    /// No more frames are accepted; the writer exits once `buf` is sent.
    pub closed: bool,
    /// A link is up (else frames wait for the next one).
    pub connected: bool,
    /// Encodes publishes; its last subject passed validation, so a stream
    /// of publishes to one subject checks it once.
    pub pubs: wire::Encoder,
    /// File descriptors to send with the frame starting at each offset of
    /// `buf` (a `PubFds`), in order.
    pub fds: Vec<(usize, Vec<std::os::fd::OwnedFd>)>,
    /// The writer has taken bytes it has not finished sending.
    pub writing: bool,
    /// The current link's socket, while its writer runs, on a Unix
    /// connection: a request or a reply that finds nothing buffered and
    /// the writer idle is written by its caller ([`Output::buffer`]).
    pub direct: Option<crate::transport::DirectWriter>,
}

/// The output side of one `Bus`, shared by its handles, its session and the
/// messages that may answer a request on it.
///
/// Lock order: `buffer`, then `pongs`, `closed` or `down`.
#[derive(Debug)]
pub(crate) struct Output {
    buffer: Mutex<Buffer>,
    /// Wakes the writer: frames were added, or output closed.
    ready: Notify,
    /// Wakes publishers waiting for buffer space.
    space: Notify,
    max_write_buffer: usize,
    reconnect_buffer: usize,
    /// The current link's `max_frame`.
    max_frame: AtomicU32,
    /// Flushes waiting for their `Pong`, in the order of their `Ping`s
    /// (pushed under the buffer's lock, so the orders agree).
    pongs: Mutex<VecDeque<oneshot::Sender<()>>>,
    /// Why the connection ended for good, once it has.
    closed: Mutex<Option<String>>,
    /// Why the current link is down, while reconnecting.
    down: Mutex<Option<String>>,
    events: broadcast::Sender<Event>,
    /// The current link's writer failed (cleared when a link comes up): a
    /// reader waiting for a full subscription stops waiting and ends the
    /// link, rather than never read the end the writer saw.
    broken: std::sync::atomic::AtomicBool,
    broken_notify: Notify,
}

/// What became of a frame offered to the buffer.
enum Put {
    Buffered,
    /// Over `max_write_buffer`: wait for space.
    Full,
    /// The connection is closed for good.
    Closed,
}

impl Output {
    /// An output for a link whose `max_frame` is known.
    pub(crate) fn new(opts: &ConnectOptions, max_frame: u32) -> Self {
        Self {
            buffer: Mutex::new(Buffer {
                buf: Vec::with_capacity(64 << 10),
                ..Buffer::default()
            }),
            ready: Notify::new(),
            space: Notify::new(),
            max_write_buffer: opts.max_write_buffer,
            reconnect_buffer: opts.reconnect_buffer,
            max_frame: AtomicU32::new(max_frame),
            pongs: Mutex::new(VecDeque::new()),
            closed: Mutex::new(None),
            down: Mutex::new(None),
            events: broadcast::channel(256).0,
            broken: Default::default(),
            broken_notify: Notify::new(),
        }
    }

    /// Takes the buffer's lock. Never held across an `.await`.
    pub(crate) fn lock(&self) -> MutexGuard<'_, Buffer> {
        lock(&self.buffer)
    }

    /// Largest frame body the daemon accepts.
    pub(crate) fn max_frame(&self) -> u32 {
        self.max_frame.load(Ordering::Relaxed)
    }

    /// Wakes the writer.
    pub(crate) fn wake_writer(&self) {
        self.ready.notify_one();
    }

    /// Reports `event` to [`events`](Self::events) subscribers.
    pub(crate) fn emit(&self, event: Event) {
        // No receivers is fine: nobody asked for events.
        let _ = self.events.send(event);
    }

    /// A receiver of every event from now on.
    pub(crate) fn events(&self) -> broadcast::Receiver<Event> {
        self.events.subscribe()
    }

    /// True if anyone listens to events.
    pub(crate) fn has_listeners(&self) -> bool {
        self.events.receiver_count() > 0
    }

    /// True once the connection has ended for good.
    pub(crate) fn is_closed(&self) -> bool {
        lock(&self.closed).is_some()
    }

    /// Why the connection ended for good, if it has.
    pub(crate) fn closed_reason(&self) -> Option<String> {
        lock(&self.closed).clone()
    }

    /// Why the current link is down, if it is.
    pub(crate) fn down_reason(&self) -> Option<String> {
        lock(&self.down).clone()
    }

    /// [`Error::Disconnected`] with the reason the connection ended or the
    /// link is down.
    pub(crate) fn disconnected(&self) -> Error {
        let reason = self.closed_reason().or_else(|| self.down_reason());
        Error::Disconnected { reason }
    }

    /// Completes once the current link's writer has failed.
    pub(crate) async fn broken(&self) {
        loop {
            let notified = self.broken_notify.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if self.broken.load(Ordering::Relaxed) {
                return;
            }
            notified.await;
        }
    }

    /// A new link is up with this `max_frame`: `preamble` (its
    /// subscriptions) goes out ahead of what was buffered meanwhile.
    pub(crate) fn link_up(&self, max_frame: u32, preamble: Option<Vec<u8>>, event: Event) {
        self.max_frame.store(max_frame, Ordering::Relaxed);
        self.broken.store(false, Ordering::Relaxed);
        let mut out = self.lock();
        if let Some(mut preamble) = preamble {
            preamble.extend_from_slice(&out.buf);
            out.buf = preamble;
        }
        out.connected = true;
        *lock(&self.down) = None;
        self.emit(event);
        drop(out);
        self.ready.notify_one();
    }

    /// The link failed and a reconnect follows: keep the publishes for the
    /// next link, drop the rest (control frames of a lost link are stale),
    /// and fail waiting flushes. False if the connection is closed.
    pub(crate) fn link_down(&self, reason: &str) -> bool {
        let mut out = self.lock();
        if out.closed {
            return false;
        }
        out.connected = false;
        // The writer is stopped (perhaps mid-write): nothing bypasses it
        // until the next link's starts.
        out.direct = None;
        out.writing = false;
        keep_publishes(&mut out.buf);
        // A message with descriptors is not kept for the next link: its
        // publish already returned, and nothing tells it apart from loss
        // in flight (see `publish_with_fds`).
        out.fds.clear();
        *lock(&self.down) = Some(reason.to_owned());
        lock(&self.pongs).clear();
        self.emit(Event::Disconnected {
            reason: reason.to_owned(),
        });
        drop(out);
        // Publishers waiting for space now see the disconnected bound.
        self.space.notify_waiters();
        true
    }

    /// Stops accepting frames; the writer exits after sending what is
    /// buffered. With a reason, also marks the connection as ended.
    pub(crate) fn close(&self, reason: Option<String>) {
        let mut out = self.lock();
        out.closed = true;
        let mut closed = lock(&self.closed);
        if closed.is_none() {
            let reason = reason.unwrap_or_else(|| "closed by the client".into());
            self.emit(Event::Closed {
                reason: reason.clone(),
            });
            *closed = Some(reason);
        }
        drop(closed);
        lock(&self.pongs).clear();
        drop(out);
        self.ready.notify_one();
        self.space.notify_waiters();
    }

    /// Buffers a publish, waiting while the buffer is over its bound.
    pub(crate) async fn publish(&self, subject: &str, reply_to: Option<&str>, payload: &[u8]) -> Result<()> {
        let frame = ClientFrame::Pub(proto::Pub {
            subject,
            reply_to,
            payload,
        });
        // Not through `send`: one future fewer on the hot path. A request
        // is written at once if it can be (see `buffer`).
        let urgent = reply_to.is_some();
        self.until_buffered(|| self.buffer(&frame, true, urgent)).await
    }

    /// Buffers a reply to a request, written at once if it can be (see
    /// [`buffer`](Self::buffer)): someone is waiting for it.
    pub(crate) async fn reply(&self, subject: &str, payload: &[u8]) -> Result<()> {
        let frame = ClientFrame::Pub(proto::Pub {
            subject,
            reply_to: None,
            payload,
        });
        self.until_buffered(|| self.buffer(&frame, true, true)).await
    }

    /// Buffers any frame as a publish is, waiting while the buffer is over
    /// its bound.
    pub(crate) async fn send(&self, frame: &ClientFrame<'_>) -> Result<()> {
        self.until_buffered(|| self.buffer(frame, true, false)).await
    }

    /// [`publish`](Self::publish) with headers (a plain `Pub` when there are none).
    pub(crate) async fn publish_with_headers(
        &self,
        subject: &str,
        reply_to: Option<&str>,
        headers: &crate::Headers,
        payload: &[u8],
    ) -> Result<()> {
        if headers.is_empty() {
            return self.publish(subject, reply_to, payload).await;
        }
        let frame = ClientFrame::HPub(proto::HPub {
            subject,
            reply_to,
            headers: headers.encoded()?,
            payload,
        });
        self.send(&frame).await
    }

    /// Buffers the messages `msgs` yields, in order, waiting while the
    /// buffer is full; takes its lock once per bufferful rather than once
    /// per message.
    pub(crate) async fn publish_all<S, P, I>(&self, msgs: I) -> Result<()>
    where
        S: AsRef<str>,
        P: AsRef<[u8]>,
        I: Iterator<Item = (S, P)>,
    {
        let mut msgs = msgs.peekable();
        self.until_buffered(|| self.buffer_all(&mut msgs)).await
    }

    /// Buffers a small control frame without waiting for space.
    pub(crate) fn send_now(&self, frame: &ClientFrame<'_>) -> Result<()> {
        self.buffer(frame, false, false).map(|_| ())
    }

    /// Buffers a `Ping` and registers for its `Pong`.
    pub(crate) fn send_ping(&self) -> Result<oneshot::Receiver<()>> {
        let (tx, rx) = oneshot::channel();
        let mut out = self.lock();
        if out.closed {
            drop(out);
            return Err(self.disconnected());
        }
        codec::encode_into(&ClientFrame::Ping, &mut out.buf, self.max_frame()).map_err(codec_err)?;
        lock(&self.pongs).push_back(tx);
        drop(out);
        self.ready.notify_one();
        Ok(rx)
    }

    /// The daemon answered the oldest `Ping`.
    pub(crate) fn pong(&self) {
        if let Some(tx) = lock(&self.pongs).pop_front() {
            let _ = tx.send(());
        }
    }

    /// Calls `offer` (which buffers what it can: `Ok(true)` once all is
    /// buffered, `Ok(false)` while the buffer is full) until it has buffered
    /// everything, waiting for the writer to make room in between.
    async fn until_buffered(&self, mut offer: impl FnMut() -> Result<bool>) -> Result<()> {
        loop {
            if offer()? {
                return Ok(());
            }
            // Full: register for "space", then look again so a wake-up that
            // came in between is not lost.
            let space = self.space.notified();
            tokio::pin!(space);
            space.as_mut().enable();
            if offer()? {
                return Ok(());
            }
            space.await;
        }
    }

    /// Buffers a message with file descriptors (a `PubFds` frame; they go
    /// with its bytes), waiting while the buffer is over its bound. Only
    /// while connected: descriptors are not held for a next link.
    pub(crate) async fn publish_with_fds(
        &self,
        subject: &str,
        reply_to: Option<&str>,
        payload: &[u8],
        fds: Vec<std::os::fd::OwnedFd>,
    ) -> Result<()> {
        self.send_with_fds(subject, reply_to, &crate::Headers::new(), payload, fds)
            .await
    }

    /// [`publish_with_fds`](Self::publish_with_fds) with headers.
    pub(crate) async fn send_with_fds(
        &self,
        subject: &str,
        reply_to: Option<&str>,
        headers: &crate::Headers,
        payload: &[u8],
        fds: Vec<std::os::fd::OwnedFd>,
    ) -> Result<()> {
        subject::validate_publish(subject)?;
        let n = u8::try_from(fds.len())
            .ok()
            .filter(|n| (1..=crate::sys::MAX_FDS_PER_READ as u8).contains(n))
            .ok_or(Error::LimitExceeded {
                limit: "file descriptors per message (1 to 253)",
                value: fds.len() as u64,
            })?;
        let headers = if headers.is_empty() {
            &[][..]
        } else {
            headers.encoded()?
        };
        let frame = ClientFrame::PubFds(proto::PubFds {
            sid: 0,
            subject,
            reply_to,
            headers,
            payload,
            fds: n,
        });
        let mut fds = Some(fds);
        self.until_buffered(|| {
            let mut out = self.lock();
            if !out.connected && !out.closed {
                drop(out);
                return Err(self.disconnected());
            }
            let held: usize = out.fds.iter().map(|(_, f)| f.len()).sum();
            if held > 0 && held + usize::from(n) > MAX_BUFFERED_FDS {
                // Wait for the writer: descriptors held here count against
                // this process's limit.
                return Ok(false);
            }
            let was_empty = out.buf.is_empty();
            let at = out.buf.len();
            let put = self.put(&mut out, &frame, true);
            if matches!(put, Ok(Put::Buffered)) {
                if let Some(fds) = fds.take() {
                    out.fds.push((at, fds));
                }
            }
            self.buffered(out, was_empty, put)
        })
        .await
    }

    /// Buffers messages from `msgs` while there is room; `Ok(true)` once all
    /// are buffered. Stops at the first that fails, leaving it in `msgs`.
    fn buffer_all<S, P, I>(&self, msgs: &mut std::iter::Peekable<I>) -> Result<bool>
    where
        S: AsRef<str>,
        P: AsRef<[u8]>,
        I: Iterator<Item = (S, P)>,
    {
        let mut out = self.lock();
        let was_empty = out.buf.is_empty();
        let mut put = Ok(Put::Buffered);
        while let Some((subject, payload)) = msgs.peek() {
            let frame = ClientFrame::Pub(proto::Pub {
                subject: subject.as_ref(),
                reply_to: None,
                payload: payload.as_ref(),
            });
            put = self.put(&mut out, &frame, true);
            if !matches!(put, Ok(Put::Buffered)) {
                break;
            }
            msgs.next();
        }
        self.buffered(out, was_empty, put)
    }

    /// Encodes `frame` into the buffer and wakes the writer. With `bounded`,
    /// returns `Ok(false)` instead when the buffer is full, or (while
    /// disconnected) fails when `reconnect_buffer` would be exceeded.
    ///
    /// An `urgent` frame (a request or a reply: someone waits for what it
    /// brings back) that finds nothing else buffered and the writer idle
    /// is written here, by its caller, without waiting: what the socket
    /// takes never wakes the writer task, whose hand-over costs a request
    /// a context switch or a wait for a busy CPU. Nothing buffered and
    /// nothing being written means nothing can be overtaken. Whatever the
    /// socket does not take stays for the writer.
    fn buffer(&self, frame: &ClientFrame<'_>, bounded: bool, urgent: bool) -> Result<bool> {
        let mut out = self.lock();
        let was_empty = out.buf.is_empty();
        let put = self.put(&mut out, frame, bounded);
        if urgent
            && was_empty
            && out.connected
            && !out.writing
            && out.fds.is_empty()
            && matches!(put, Ok(Put::Buffered))
        {
            if let Some(Ok(n)) = out.direct.as_ref().map(|d| d.try_write(&out.buf)) {
                out.buf.drain(..n);
            }
        }
        self.buffered(out, was_empty, put)
    }

    /// Ends a `buffer*` call: releases the buffer, wakes the writer if it
    /// was empty and is no longer, and turns `put`'s outcome into the
    /// caller's (`Ok(false)`: full).
    fn buffered(&self, out: MutexGuard<'_, Buffer>, was_empty: bool, put: Result<Put>) -> Result<bool> {
        // The writer only waits once it has found the buffer empty.
        let wake = was_empty && out.connected && !out.buf.is_empty();
        drop(out);
        if wake {
            self.ready.notify_one();
        }
        match put? {
            Put::Buffered => Ok(true),
            Put::Full => Ok(false),
            Put::Closed => Err(self.disconnected()),
        }
    }

    /// Encodes `frame` into `out` (see [`buffer`](Self::buffer)).
    fn put(&self, out: &mut Buffer, frame: &ClientFrame<'_>, bounded: bool) -> Result<Put> {
        let same_subject = match frame {
            ClientFrame::Pub(p) => {
                let same = out.pubs.is_last_subject(p.subject);
                if !same {
                    subject::validate_publish(p.subject)?;
                }
                same
            }
            _ => false,
        };
        if out.closed {
            return Ok(Put::Closed);
        }
        if bounded && out.connected && out.buf.len() >= self.max_write_buffer {
            return Ok(Put::Full);
        }
        let before = out.buf.len();
        let max_frame = self.max_frame();
        match frame {
            ClientFrame::Pub(p) => {
                let Buffer { buf, pubs, .. } = out;
                pubs.encode(p, same_subject, buf, max_frame)
            }
            ClientFrame::HPub(h) => wire::encode_hpub(h, &mut out.buf, max_frame),
            other => codec::encode_into(other, &mut out.buf, max_frame),
        }
        .map_err(codec_err)?;
        if bounded && !out.connected && out.buf.len() > self.reconnect_buffer {
            out.buf.truncate(before);
            return Err(Error::LimitExceeded {
                limit: "reconnect_buffer",
                value: self.reconnect_buffer as u64,
            });
        }
        Ok(Put::Buffered)
    }
}

/// Sends the output buffer over one link until the buffer is closed and
/// empty, or writing fails (then the socket is shut down so the reader ends
/// the link too).
pub(crate) async fn write_loop(output: std::sync::Arc<Output>, mut tx: Writer) {
    let mut batch = Vec::with_capacity(64 << 10);
    output.lock().direct = tx.direct();
    loop {
        let (closed, fds) = {
            let mut out = output.lock();
            std::mem::swap(&mut out.buf, &mut batch);
            out.writing = !batch.is_empty();
            (out.closed, std::mem::take(&mut out.fds))
        };
        if batch.is_empty() {
            if closed {
                break;
            }
            output.ready.notified().await;
            // Let the task that woke us add more before we take the buffer:
            // bigger writes, fewer wake-ups (a lone request costs one yield).
            tokio::task::yield_now().await;
            continue;
        }
        output.space.notify_waiters();
        if let Err(e) = write_batch(&mut tx, &batch, fds).await {
            tracing::debug!("bus write failed: {e}");
            tx.shutdown_both();
            output.broken.store(true, Ordering::Relaxed);
            output.broken_notify.notify_waiters();
            break;
        }
        batch.clear();
        if batch.capacity() > 4 << 20 {
            batch.shrink_to(64 << 10);
        }
    }
    let mut out = output.lock();
    out.direct = None;
    out.writing = false;
}

/// Writes one batch and flushes it (a no-op on raw sockets; TLS buffers).
/// Each `fds` entry goes with the bytes from its offset (at least one;
/// never past the next entry's), and is closed here once sent: the
/// kernel holds its own reference until the daemon takes it.
async fn write_batch(
    tx: &mut Writer,
    batch: &[u8],
    fds: Vec<(usize, Vec<std::os::fd::OwnedFd>)>,
) -> std::io::Result<()> {
    let mut at = 0;
    let mut marks = fds.into_iter().peekable();
    while let Some((mark, fds)) = marks.next() {
        tx.write_all(&batch[at..mark]).await?;
        let end = marks.peek().map_or(batch.len(), |(next, _)| *next);
        let borrowed: Vec<_> = fds.iter().map(std::os::fd::AsFd::as_fd).collect();
        let n = tx.send_with_fds(&batch[mark..end], &borrowed).await?;
        if n == 0 {
            return Err(std::io::ErrorKind::WriteZero.into());
        }
        at = mark + n;
    }
    tx.write_all(&batch[at..]).await?;
    tx.flush().await
}

/// Keeps only the `Pub` frames of `buf`.
fn keep_publishes(buf: &mut Vec<u8>) {
    let mut kept = Vec::with_capacity(buf.len());
    let mut frames = codec::whole_frames(buf);
    for (at, body) in frames.by_ref() {
        if body.first() == Some(&wire::PUB_TAG) {
            kept.extend_from_slice(&buf[at..at + proto::LEN_PREFIX + body.len()]);
        }
    }
    *buf = kept;
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Reads what the peer end has now (it is non-blocking).
    fn received(peer: &mut std::os::unix::net::UnixStream) -> Vec<u8> {
        use std::io::Read;
        let mut got = vec![0u8; 4096];
        match peer.read(&mut got) {
            Ok(n) => got.truncate(n),
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => got.clear(),
            Err(e) => panic!("{e}"),
        }
        got
    }

    #[tokio::test]
    async fn only_a_request_or_reply_finding_the_output_idle_bypasses_the_writer() {
        let (ours, mut peer) = crate::transport::UnixStream::pair().unwrap();
        peer.set_nonblocking(true).unwrap();
        let (_reader, writer) = crate::transport::split_unix(ours);
        let output = Output::new(&ConnectOptions::default(), 1 << 20);
        writer.direct().unwrap().writable().await.unwrap();
        {
            let mut out = output.lock();
            out.connected = true;
            out.direct = writer.direct();
        }
        let frame = |reply_to: Option<&str>| {
            let mut f = Vec::new();
            let p = ClientFrame::Pub(proto::Pub {
                subject: "svc",
                reply_to,
                payload: b"q",
            });
            codec::encode_into(&p, &mut f, u32::MAX).unwrap();
            f
        };
        // Idle: a request goes straight to the socket.
        output.publish("svc", Some("_INBOX.1"), b"q").await.unwrap();
        assert!(output.lock().buf.is_empty());
        assert_eq!(received(&mut peer), frame(Some("_INBOX.1")));
        // So does a reply.
        output.reply("svc", b"q").await.unwrap();
        assert_eq!(received(&mut peer), frame(None));
        // A plain publish is the writer's (it batches).
        output.publish("svc", None, b"q").await.unwrap();
        assert_eq!(received(&mut peer), b"");
        // Behind something buffered, a request waits its turn.
        output.publish("svc", Some("_INBOX.2"), b"q").await.unwrap();
        assert_eq!(received(&mut peer), b"");
        // As it does while the writer is sending what it took.
        {
            let mut out = output.lock();
            out.buf.clear();
            out.writing = true;
        }
        output.publish("svc", Some("_INBOX.3"), b"q").await.unwrap();
        assert_eq!(received(&mut peer), b"");
        assert_eq!(output.lock().buf, frame(Some("_INBOX.3")));
        // And after the link went down.
        {
            let mut out = output.lock();
            out.buf.clear();
            out.writing = false;
        }
        assert!(output.link_down("test"));
        output.publish("svc", Some("_INBOX.4"), b"q").await.unwrap();
        assert_eq!(received(&mut peer), b"");
    }

    #[test]
    fn keep_publishes_drops_control_frames_only() {
        let mut buf = Vec::new();
        let frames = [
            ClientFrame::Ping,
            ClientFrame::Pub(proto::Pub {
                subject: "a",
                reply_to: None,
                payload: b"1",
            }),
            ClientFrame::Sub(proto::Sub {
                sid: 1,
                pattern: "x",
                queue: None,
            }),
            ClientFrame::Unsub { sid: 1 },
            ClientFrame::Pub(proto::Pub {
                subject: "b",
                reply_to: Some("r"),
                payload: b"2",
            }),
            ClientFrame::Pong,
        ];
        for f in &frames {
            codec::encode_into(f, &mut buf, u32::MAX).unwrap();
        }
        keep_publishes(&mut buf);
        let mut expected = Vec::new();
        codec::encode_into(&frames[1], &mut expected, u32::MAX).unwrap();
        codec::encode_into(&frames[4], &mut expected, u32::MAX).unwrap();
        assert_eq!(buf, expected);
    }
}
