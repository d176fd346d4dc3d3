//! Received messages, in one place: [`Message`] (owned, one reference
//! count on the receive buffer), [`Messages`] (everything a subscription
//! had received, taken at once by
//! [`Subscription::next_batch`](crate::Subscription::next_batch)) and
//! [`MessageRef`] (one message of a batch, borrowed from it), and where the
//! reader found each message in its receive buffer (`Found`).
//!
//! [`Subscription::next()`](crate::Subscription::next) builds a [`Message`]
//! per message. A consumer of many small messages can instead take
//! everything received in one [`Messages`] (one reference count) and read
//! each as a [`MessageRef`].

use std::{fmt, sync::Arc};

use bytes::Bytes;
use serde::de::DeserializeOwned;

use crate::{
    codec,
    headers::{self, Headers},
    output::Output,
    proto, wire,
    wire::Decoded,
    Error, Result,
};

/// A message received on a subscription, or a reply to a request.
///
/// Subject, reply subject and payload are ranges of the received frame,
/// which is shared with the receive buffer: no copy, and one reference count
/// per message. So a `Message` keeps the whole buffer of the read it came in
/// alive ([`ConnectOptions::read_buffer`](crate::ConnectOptions::read_buffer),
/// 64 KiB by default, up to [`max_read_buffer`](crate::ConnectOptions::max_read_buffer),
/// 1 MiB, when messages are large): to keep messages for long, keep a copy
/// of what you need (`msg.payload().to_vec()`) instead.
#[derive(Clone)]
pub struct Message {
    frame: Bytes,
    subject: Span,
    reply_to: Option<Span>,
    payload: Span,
    /// The encoded header block, if the message has headers.
    headers: Option<Span>,
    /// The encoded sender, for a subscription made with it.
    sender: Option<Span>,
    /// Connection to respond on; `None` for messages that cannot be answered.
    shared: Option<Arc<Output>>,
    /// What few messages carry beyond their frame, boxed so that every
    /// other message stays small to move.
    attached: Option<Box<Attached>>,
}

/// What a [`Message`] may carry beyond its frame.
#[derive(Clone, Default)]
struct Attached {
    /// File descriptors that came with it, until taken ([`Message::take_fds`]).
    fds: Option<Arc<std::sync::Mutex<Vec<std::os::fd::OwnedFd>>>>,
    /// The payload when it came in a sealed memfd (mapped read-only), not
    /// in the frame.
    body: Option<Bytes>,
}

/// Where a message's fields lie in its frame body (see [`Found`]).
#[derive(Debug, Clone, Copy)]
pub(crate) struct Parts {
    subject: Span,
    reply_to: Option<Span>,
    payload: Span,
    headers: Option<Span>,
    sender: Option<Span>,
}

/// A message the reader found in a received chunk: where its frame body
/// lies in the chunk, and its parts. The subscription turns it into a
/// [`Message`] ([`Message::found_in`]) when the application takes it, so the
/// reference count on the chunk is taken and dropped on the consumer's
/// thread.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Found {
    start: usize,
    end: usize,
    parts: Parts,
}

impl Found {
    /// The message whose frame body `frame` starts at `start` in its chunk,
    /// with its `subject`, `reply_to` and `payload` borrowed from `frame`.
    pub(crate) fn new(
        start: usize,
        frame: &[u8],
        subject: &[u8],
        reply_to: Option<&[u8]>,
        payload: &[u8],
    ) -> Self {
        Self {
            start,
            end: start + frame.len(),
            parts: Parts {
                subject: Span::of(frame, subject),
                reply_to: reply_to.map(|r| Span::of(frame, r)),
                payload: Span::of(frame, payload),
                headers: None,
                sender: None,
            },
        }
    }

    /// The message a `Pub` or `HPub` frame body `body` (found at `start`)
    /// holds, as read by [`wire::run_msg`].
    pub(crate) fn of_pub(start: usize, body: &[u8], p: &wire::RawPub<'_>) -> Self {
        let found = Self::new(start, body, p.subject, p.reply_to, p.payload);
        match p.headers {
            Some(h) => found.with_headers(body, h),
            None => found,
        }
    }

    /// The same message, with its encoded `sender` (borrowed from `frame`).
    pub(crate) fn with_sender(mut self, frame: &[u8], sender: &[u8]) -> Self {
        self.parts.sender = Some(Span::of(frame, sender));
        self
    }

    /// [`new`](Self::new) for a message with a header block `headers`
    /// (borrowed from `frame` too).
    pub(crate) fn with_headers(mut self, frame: &[u8], headers: &[u8]) -> Self {
        self.parts.headers = Some(Span::of(frame, headers));
        self
    }

    /// The message's subject, read from the `chunk` it was found in.
    pub(crate) fn subject_in<'a>(&self, chunk: &'a [u8]) -> &'a str {
        self.view(chunk).subject()
    }

    /// The message, borrowed from the `chunk` it was found in.
    pub(crate) fn view<'a>(&self, chunk: &'a [u8]) -> MessageRef<'a> {
        let frame = chunk.get(self.start..self.end).unwrap_or_default();
        MessageRef {
            subject: self.parts.subject.get(frame),
            reply_to: self.parts.reply_to.map(|r| r.get(frame)),
            payload: self.parts.payload.get(frame),
            headers: self.parts.headers.map(|h| h.get(frame)),
            sender: self.parts.sender.map(|h| h.get(frame)),
        }
    }
}

/// A range of a message's frame.
#[derive(Debug, Clone, Copy)]
struct Span {
    start: u32,
    end: u32,
}

impl Span {
    /// Where `part` (borrowed from `frame`) lies in it.
    fn of(frame: &[u8], part: &[u8]) -> Span {
        let start = (part.as_ptr() as usize).wrapping_sub(frame.as_ptr() as usize);
        debug_assert!(start + part.len() <= frame.len(), "part is not within the frame");
        Span {
            start: start as u32,
            end: (start + part.len()) as u32,
        }
    }

    fn get(self, frame: &[u8]) -> &[u8] {
        frame
            .get(self.start as usize..self.end as usize)
            .unwrap_or_default()
    }
}

impl Message {
    /// The message made of `frame` and the [`Parts`] located in it.
    pub(crate) fn new(frame: Bytes, parts: Parts, shared: Option<Arc<Output>>) -> Self {
        Self {
            frame,
            subject: parts.subject,
            reply_to: parts.reply_to,
            payload: parts.payload,
            headers: parts.headers,
            sender: parts.sender,
            shared,
            attached: None,
        }
    }

    /// The same message, its payload `body` (a mapped memfd).
    pub(crate) fn with_body(mut self, body: Bytes) -> Self {
        self.attached.get_or_insert_with(Default::default).body = Some(body);
        self
    }

    /// The same message, carrying `fds`.
    pub(crate) fn with_fds(mut self, fds: Vec<std::os::fd::OwnedFd>) -> Self {
        self.attached.get_or_insert_with(Default::default).fds = Some(Arc::new(std::sync::Mutex::new(fds)));
        self
    }

    fn fds(&self) -> Option<&Arc<std::sync::Mutex<Vec<std::os::fd::OwnedFd>>>> {
        self.attached.as_ref()?.fds.as_ref()
    }

    fn body(&self) -> Option<&Bytes> {
        self.attached.as_ref()?.body.as_ref()
    }

    /// Takes the file descriptors that came with the message (published
    /// with [`Bus::publish_with_fds`](crate::Bus::publish_with_fds)), each
    /// this process's own copy: the first call gets them, later calls (and
    /// clones of the message) get none. Those never taken are closed when
    /// the last clone is dropped.
    ///
    /// ```no_run
    /// # async fn f(mut sub: libbus::Subscription) {
    /// if let Some(msg) = sub.next().await {
    ///     for fd in msg.take_fds() {
    ///         let file = std::fs::File::from(fd);
    ///         // read it ...
    ///     }
    /// }
    /// # }
    /// ```
    pub fn take_fds(&self) -> Vec<std::os::fd::OwnedFd> {
        self.fds()
            .map(|f| std::mem::take(&mut *crate::sync::lock(f)))
            .unwrap_or_default()
    }

    /// The message alone as a batch (without its descriptors). A payload
    /// mapped from a memfd is copied in after the frame: a batch's
    /// messages are spans of one buffer.
    pub(crate) fn as_batch(&self) -> Messages {
        let (frame, payload) = match self.body() {
            None => (self.frame.clone(), self.payload),
            Some(body) => {
                let mut joined = Vec::with_capacity(self.frame.len() + body.len());
                joined.extend_from_slice(&self.frame);
                joined.extend_from_slice(body);
                let span = Span::of(&joined, &joined[self.frame.len()..]);
                (Bytes::from(joined), span)
            }
        };
        let found = Found {
            start: 0,
            end: frame.len(),
            parts: Parts {
                subject: self.subject,
                reply_to: self.reply_to,
                payload,
                headers: self.headers,
                sender: self.sender,
            },
        };
        Messages::found(frame, vec![found])
    }

    /// How many file descriptors it carries and nobody took yet.
    pub fn fd_count(&self) -> usize {
        self.fds().map_or(0, |f| crate::sync::lock(f).len())
    }

    /// Answers a request with file descriptors (see
    /// [`Bus::publish_with_fds`](crate::Bus::publish_with_fds)).
    pub async fn respond_with_fds(
        &self,
        payload: impl AsRef<[u8]>,
        fds: Vec<std::os::fd::OwnedFd>,
    ) -> Result<()> {
        let (reply, shared) = self.answer_on()?;
        shared.publish_with_fds(reply, None, payload.as_ref(), fds).await
    }

    /// The message `found` in `chunk`: a shared slice of it, no copy. A
    /// request keeps the connection `on` to answer it; other messages skip
    /// that reference count.
    pub(crate) fn found_in(chunk: &Bytes, found: Found, on: &Arc<Output>) -> Self {
        let answer_on = found.parts.reply_to.is_some().then(|| on.clone());
        Self::new(chunk.slice(found.start..found.end), found.parts, answer_on)
    }

    fn text(&self, span: Span) -> &str {
        text(span.get(&self.frame))
    }

    /// Subject the message was published to.
    pub fn subject(&self) -> &str {
        self.text(self.subject)
    }

    /// Reply subject, set when the message is a request.
    pub fn reply_to(&self) -> Option<&str> {
        self.reply_to.map(|r| self.text(r))
    }

    /// The message body.
    pub fn payload(&self) -> &[u8] {
        match self.body() {
            Some(body) => body,
            None => self.payload.get(&self.frame),
        }
    }

    /// The message body as [`Bytes`]: a shared slice of the frame, no copy.
    pub fn payload_bytes(&self) -> Bytes {
        match self.body() {
            Some(body) => body.clone(),
            None => self
                .frame
                .slice(self.payload.start as usize..self.payload.end as usize),
        }
    }

    /// Takes the body out of the message (no copy).
    pub fn into_payload(self) -> Bytes {
        self.payload_bytes()
    }

    /// The message's headers, in the order they were set (none for a
    /// message published without them).
    ///
    /// ```no_run
    /// # async fn f(msg: libbus::Message) {
    /// if let Some(trace) = msg.headers().get("Trace-Id") {
    ///     println!("trace {trace}");
    /// }
    /// # }
    /// ```
    pub fn headers(&self) -> Headers {
        headers_of(self.headers.map(|h| h.get(&self.frame)))
    }

    /// Who sent the message, as the daemon stamped it (a client cannot set
    /// it): for a subscription made with
    /// [`subscribe_with_sender`](crate::Bus::subscribe_with_sender), else `None`.
    ///
    /// ```no_run
    /// # async fn f(bus: libbus::Bus) -> libbus::Result<()> {
    /// let mut sub = bus.subscribe_with_sender("audit.>").await?;
    /// while let Some(msg) = sub.next().await {
    ///     if let Some(s) = msg.sender() {
    ///         println!("{} from uid {:?} pid {:?}", msg.subject(), s.uid, s.pid);
    ///     }
    /// }
    /// # Ok(()) }
    /// ```
    pub fn sender(&self) -> Option<proto::Sender> {
        sender_of(self.sender.map(|s| s.get(&self.frame)))
    }

    /// The error a responder answered with ([`respond_error`](Self::respond_error)),
    /// if this reply is one.
    pub fn service_error(&self) -> Option<Error> {
        service_error(&self.headers())
    }

    /// Decodes a postcard-encoded body (the counterpart of
    /// [`Bus::publish_value`](crate::Bus::publish_value)).
    pub fn decode<T: DeserializeOwned>(&self) -> Result<T> {
        Ok(postcard::from_bytes(self.payload())?)
    }

    /// Where an answer goes: the reply subject and the connection; an
    /// error if the message is not a request.
    fn answer_on(&self) -> Result<(&str, &Arc<Output>)> {
        match (self.reply_to(), self.shared.as_ref()) {
            (Some(reply), Some(shared)) => Ok((reply, shared)),
            _ => Err(Error::Protocol(format!(
                "message on {:?} has no reply subject",
                self.subject()
            ))),
        }
    }

    /// Answers a request: publishes `payload` to this message's reply subject.
    ///
    /// Fails with [`Error::Protocol`] if the message is not a request.
    pub async fn respond(&self, payload: impl AsRef<[u8]>) -> Result<()> {
        let (reply, shared) = self.answer_on()?;
        shared.reply(reply, payload.as_ref()).await
    }

    /// Answers a request with headers.
    pub async fn respond_with_headers(&self, headers: &Headers, payload: impl AsRef<[u8]>) -> Result<()> {
        let (reply, shared) = self.answer_on()?;
        shared
            .publish_with_headers(reply, None, headers, payload.as_ref())
            .await
    }

    /// Answers a request with an error: the requester's
    /// [`request`](crate::Bus::request) fails with
    /// [`Error::Service`] `{ code, text }` instead of returning a reply.
    ///
    /// ```no_run
    /// # async fn f(req: libbus::Message) -> libbus::Result<()> {
    /// req.respond_error(404, "no such order").await?;
    /// # Ok(()) }
    /// ```
    pub async fn respond_error(&self, code: u32, text: &str) -> Result<()> {
        let mut h = Headers::new();
        h.append(headers::ERROR_CODE, code.to_string());
        h.append(headers::ERROR_TEXT, text);
        self.respond_with_headers(&h, []).await
    }

    /// Answers a request with a postcard-encoded value.
    pub async fn respond_value<T: serde::Serialize>(&self, value: &T) -> Result<()> {
        self.respond(postcard::to_allocvec(value)?).await
    }
}

impl fmt::Debug for Message {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Message")
            .field("subject", &self.subject())
            .field("reply_to", &self.reply_to())
            .field("payload_len", &self.payload().len())
            .field("fds", &self.fd_count())
            .finish()
    }
}

/// What a subscription yields: a message, or a notice that messages were lost.
#[derive(Debug, Clone)]
pub enum Delivery {
    /// The next message.
    Message(Message),
    /// The daemon dropped this many messages for this subscription because the
    /// connection fell behind. Sent before the next message after the gap.
    Lagged(u64),
}

/// Messages a subscription had received, taken at once by
/// [`Subscription::next_batch`](crate::Subscription::next_batch), in
/// delivery order. They lie in the receive buffer (no copy), which the
/// batch keeps alive until it is dropped.
#[derive(Debug, Default)]
pub struct Messages {
    /// The received bytes the messages lie in.
    chunk: bytes::Bytes,
    located: Located,
    /// Messages not yet taken.
    left: usize,
}

/// How the messages of a batch are found in its chunk.
#[derive(Debug)]
enum Located {
    /// By the reader, as it took them out of `Msg` frames; `next` is the
    /// first not yet taken.
    Found { found: Vec<Found>, next: usize },
    /// `Pub` frames forwarded as they were published, back to back from
    /// the cursor to the end of the chunk, decoded as they are read.
    Frames(Cursor),
}

impl Default for Located {
    fn default() -> Self {
        Located::Frames(Cursor::default())
    }
}

/// A place in a chunk of back-to-back `Pub` frames, and the frame decoded
/// last with where its parts lie (a next one with the same head decodes by
/// comparison, and its parts lie in the same places).
#[derive(Debug, Clone, Default)]
struct Cursor {
    at: usize,
    last: Option<(Decoded, Parts)>,
}

impl Cursor {
    /// The next well-formed `Pub` frame in `chunk` from the cursor, which
    /// moves past it, and how many frames that walked. The daemon
    /// validated what it forwards, so a frame that is not a well-formed
    /// `Pub` is a daemon bug: it is skipped, loudly.
    #[inline]
    fn next(&mut self, chunk: &[u8]) -> (Option<Found>, usize) {
        match self.repeated(chunk) {
            Some(found) => (Some(found), 1),
            None => self.decode(chunk),
        }
    }

    /// The next frame if its head is the last one's, byte for byte: found
    /// by one comparison, its parts where the last one's were.
    #[inline]
    fn repeated(&mut self, chunk: &[u8]) -> Option<Found> {
        let (last, parts) = self.last.as_ref()?;
        let len = last.repeats(chunk, self.at)?;
        let start = self.at + proto::LEN_PREFIX;
        self.at += len;
        Some(Found {
            start,
            end: self.at,
            parts: *parts,
        })
    }

    /// [`next`](Self::next) for a frame that does not repeat the last
    /// one's head: decoded, and remembered.
    fn decode(&mut self, chunk: &[u8]) -> (Option<Found>, usize) {
        let mut walked = 0;
        while let Some((off, body)) = chunk
            .get(self.at..)
            .and_then(|rest| codec::whole_frames(rest).next())
        {
            let start = self.at + off + proto::LEN_PREFIX;
            self.at = start + body.len();
            walked += 1;
            match wire::run_msg(body) {
                Some(p) => {
                    let found = Found::of_pub(start, body, &p);
                    self.last = Some((Decoded::new(chunk, start, body, &p), found.parts));
                    return (Some(found), walked);
                }
                None => tracing::error!("malformed message in a Run from the daemon; skipped"),
            }
        }
        (None, walked)
    }
}

impl Messages {
    /// Messages the reader located in `chunk`.
    pub(crate) fn found(chunk: bytes::Bytes, found: Vec<Found>) -> Self {
        Self {
            chunk,
            left: found.len(),
            located: Located::Found { found, next: 0 },
        }
    }

    /// `count` whole `Pub` frames that make up all of `frames`.
    pub(crate) fn frames(frames: bytes::Bytes, count: usize) -> Self {
        Self {
            chunk: frames,
            left: count,
            located: Located::Frames(Cursor::default()),
        }
    }

    /// Adds a message the reader found in the same chunk; false (and
    /// nothing added) if this batch is a `Run`'s frames.
    pub(crate) fn push(&mut self, found: Found) -> bool {
        match &mut self.located {
            Located::Found { found: list, .. } => {
                list.push(found);
                self.left += 1;
                true
            }
            Located::Frames(_) => false,
        }
    }

    /// How many messages the batch holds.
    pub fn len(&self) -> usize {
        self.left
    }

    /// True if it holds none.
    pub fn is_empty(&self) -> bool {
        self.left == 0
    }

    /// The messages, borrowed from the batch, in delivery order.
    pub fn iter(&self) -> Iter<'_> {
        Iter {
            chunk: &self.chunk,
            at: match &self.located {
                Located::Found { found, next } => At::Found(found.get(*next..).unwrap_or_default().iter()),
                Located::Frames(cursor) => At::Frames(cursor.clone()),
            },
        }
    }

    /// The buffer the messages lie in.
    pub(crate) fn chunk(&self) -> &bytes::Bytes {
        &self.chunk
    }

    /// Takes the next message out of the batch: where it lies in
    /// [`chunk`](Self::chunk).
    pub(crate) fn take(&mut self) -> Option<Found> {
        match &mut self.located {
            Located::Found { found, next } => {
                let f = *found.get(*next)?;
                *next += 1;
                self.left -= 1;
                Some(f)
            }
            Located::Frames(cursor) => {
                // `Cursor::next`, spelled out: returning the count walked
                // with every repeat costs the stream measurably more.
                if let Some(found) = cursor.repeated(&self.chunk) {
                    self.left = self.left.saturating_sub(1);
                    return Some(found);
                }
                let (next, walked) = cursor.decode(&self.chunk);
                self.left = self.left.saturating_sub(walked);
                next
            }
        }
    }
}

/// Where an [`Iter`] is.
#[derive(Debug, Clone)]
enum At<'a> {
    Found(std::slice::Iter<'a, Found>),
    Frames(Cursor),
}

/// Iterator over a [`Messages`] batch, from [`Messages::iter`].
#[derive(Debug, Clone)]
pub struct Iter<'a> {
    chunk: &'a [u8],
    at: At<'a>,
}

impl<'a> Iterator for Iter<'a> {
    type Item = MessageRef<'a>;

    fn next(&mut self) -> Option<MessageRef<'a>> {
        match &mut self.at {
            At::Found(found) => Some(found.next()?.view(self.chunk)),
            At::Frames(cursor) => Some(cursor.next(self.chunk).0?.view(self.chunk)),
        }
    }
}

impl<'a> IntoIterator for &'a Messages {
    type Item = MessageRef<'a>;
    type IntoIter = Iter<'a>;

    fn into_iter(self) -> Iter<'a> {
        self.iter()
    }
}

/// One message of a [`Messages`] batch, borrowed from it.
///
/// To answer a request read this way, publish to its
/// [`reply_to`](Self::reply_to) subject (what [`Message::respond`](crate::Message::respond) does).
#[derive(Debug, Clone, Copy)]
pub struct MessageRef<'a> {
    // Subjects were checked to be UTF-8 when the message was located; they
    // are kept as bytes so a consumer that never reads them never converts.
    pub(crate) subject: &'a [u8],
    pub(crate) reply_to: Option<&'a [u8]>,
    pub(crate) payload: &'a [u8],
    pub(crate) headers: Option<&'a [u8]>,
    pub(crate) sender: Option<&'a [u8]>,
}

/// A stamped sender, read.
fn sender_of(block: Option<&[u8]>) -> Option<proto::Sender> {
    postcard::from_bytes(block?).ok()
}

/// A header block, read (the daemon checked it; a block it did not
/// check, from a daemon that did not, reads as no headers).
fn headers_of(block: Option<&[u8]>) -> Headers {
    block.and_then(|b| Headers::decode(b).ok()).unwrap_or_default()
}

/// The error an error reply's headers carry.
pub(crate) fn service_error(h: &Headers) -> Option<Error> {
    let code = h.get(headers::ERROR_CODE)?;
    Some(Error::Service {
        code: code.parse().unwrap_or(u32::MAX),
        text: h.get(headers::ERROR_TEXT).unwrap_or_default().to_owned(),
    })
}

/// A subject checked to be UTF-8 when its message was located or decoded
/// (so never the fallback).
pub(crate) fn text(subject: &[u8]) -> &str {
    std::str::from_utf8(subject).unwrap_or_default()
}

impl<'a> MessageRef<'a> {
    /// Subject the message was published to.
    pub fn subject(&self) -> &'a str {
        text(self.subject)
    }

    /// Reply subject, set when the message is a request.
    pub fn reply_to(&self) -> Option<&'a str> {
        self.reply_to.map(text)
    }

    /// The message body.
    pub fn payload(&self) -> &'a [u8] {
        self.payload
    }

    /// The message's headers (see [`Message::headers`]).
    pub fn headers(&self) -> Headers {
        headers_of(self.headers)
    }

    /// Who sent it (see [`Message::sender`]).
    pub fn sender(&self) -> Option<proto::Sender> {
        sender_of(self.sender)
    }

    /// Decodes a postcard-encoded body.
    pub fn decode<T: DeserializeOwned>(&self) -> Result<T> {
        Ok(postcard::from_bytes(self.payload)?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_message_is_small_to_move() {
        // Every delivery moves a `Message` a few times; what few messages
        // carry (descriptors, a mapped payload) is boxed to keep it so.
        println!("size_of::<Message>() = {}", std::mem::size_of::<Message>());
        assert!(std::mem::size_of::<Message>() <= 104);
    }
    use crate::proto::{ClientFrame, Pub};

    fn run(frames: &[ClientFrame<'_>]) -> bytes::Bytes {
        let mut buf = Vec::new();
        for f in frames {
            codec::encode_into(f, &mut buf, u32::MAX).unwrap();
        }
        buf.into()
    }

    fn publish<'a>(subject: &'a str, payload: &'a [u8]) -> ClientFrame<'a> {
        ClientFrame::Pub(Pub {
            subject,
            reply_to: None,
            payload,
        })
    }

    #[test]
    fn frames_that_repeat_a_head_read_as_fully_decoded_ones() {
        let mut pubs = wire::same_head_tests::pubs();
        // A request repeating the last head, reply subject and all.
        pubs.insert(5, pubs[4].clone());
        let mut frames: Vec<_> = pubs.iter().cloned().map(ClientFrame::Pub).collect();
        // Frames with headers repeat a head only with the same block.
        let (one, two) = (
            crate::Headers::from_iter([("A", "1")]).encode().unwrap(),
            crate::Headers::from_iter([("A", "2")]).encode().unwrap(),
        );
        for (headers, payload) in [(&one, &b"h1"[..]), (&one, b"h2"), (&two, b"h3"), (&two, b"h4")] {
            frames.push(ClientFrame::HPub(crate::proto::HPub {
                subject: "h.x",
                reply_to: None,
                headers,
                payload,
            }));
        }
        let mut expected: Vec<_> = pubs.iter().map(|p| (p.subject, p.reply_to, p.payload)).collect();
        expected.extend([
            ("h.x", None, &b"h1"[..]),
            ("h.x", None, b"h2"),
            ("h.x", None, b"h3"),
            ("h.x", None, b"h4"),
        ]);
        let mut batch = Messages::frames(run(&frames), frames.len());
        let read: Vec<_> = batch
            .iter()
            .map(|m| (m.subject(), m.reply_to(), m.payload()))
            .collect();
        assert_eq!(read, expected);
        let values: Vec<_> = batch
            .iter()
            .filter_map(|m| m.headers().get("A").map(str::to_owned))
            .collect();
        assert_eq!(values, ["1", "1", "2", "2"]);
        let chunk = batch.chunk().clone();
        let taken: Vec<_> = std::iter::from_fn(|| batch.take())
            .map(|found| found.view(&chunk))
            .map(|m| (m.subject(), m.reply_to(), m.payload()))
            .collect();
        assert_eq!(taken, expected);
        assert!(batch.is_empty());
    }

    #[test]
    fn a_run_is_read_in_place_and_a_malformed_frame_is_skipped() {
        let frames = run(&[publish("a.b", b"one"), ClientFrame::Ping, publish("a.c", b"two")]);
        let batch = Messages::frames(frames, 3);
        let read: Vec<(&str, &[u8])> = batch.iter().map(|m| (m.subject(), m.payload())).collect();
        assert_eq!(read, [("a.b", &b"one"[..]), ("a.c", &b"two"[..])]);

        // Taking them one by one walks the same messages and ends empty.
        let mut batch = batch;
        let mut subjects = Vec::new();
        while let Some(found) = batch.take() {
            subjects.push(found.subject_in(batch.chunk()).to_owned());
        }
        assert_eq!(subjects, ["a.b", "a.c"]);
        assert!(batch.is_empty());
        // What is left after a partial take is what iter() yields.
        let mut batch = Messages::frames(run(&[publish("x", b"1"), publish("y", b"2")]), 2);
        batch.take();
        assert_eq!(batch.len(), 1);
        assert_eq!(batch.iter().map(|m| m.subject()).collect::<Vec<_>>(), ["y"]);
    }
}
