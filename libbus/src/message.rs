//! Received messages and subscription deliveries.

use std::{fmt, sync::Arc};

use bytes::Bytes;
use serde::de::DeserializeOwned;

use crate::{batch::MessageRef, client::Shared, Error, Result};

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
    /// Connection to respond on; `None` for messages that cannot be answered.
    shared: Option<Arc<Shared>>,
}

/// Where a message's fields lie in its frame (see [`Message::locate`]).
#[derive(Debug, Clone, Copy)]
pub(crate) struct Parts {
    subject: Span,
    reply_to: Option<Span>,
    payload: Span,
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
            },
        }
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
    pub(crate) fn new(frame: Bytes, parts: Parts, shared: Option<Arc<Shared>>) -> Self {
        Self {
            frame,
            subject: parts.subject,
            reply_to: parts.reply_to,
            payload: parts.payload,
            shared,
        }
    }

    /// The message `found` in `chunk`: a shared slice of it, no copy. A
    /// request keeps the connection `on` to answer it; other messages skip
    /// that reference count.
    pub(crate) fn found_in(chunk: &Bytes, found: Found, on: &Arc<Shared>) -> Self {
        let answer_on = found.parts.reply_to.is_some().then(|| on.clone());
        Self::new(chunk.slice(found.start..found.end), found.parts, answer_on)
    }

    fn text(&self, span: Span) -> &str {
        crate::batch::text(span.get(&self.frame))
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
        self.payload.get(&self.frame)
    }

    /// The message body as [`Bytes`]: a shared slice of the frame, no copy.
    pub fn payload_bytes(&self) -> Bytes {
        self.frame
            .slice(self.payload.start as usize..self.payload.end as usize)
    }

    /// Takes the body out of the message (no copy).
    pub fn into_payload(self) -> Bytes {
        self.payload_bytes()
    }

    /// Decodes a postcard-encoded body (the counterpart of
    /// [`Bus::publish_value`](crate::Bus::publish_value)).
    pub fn decode<T: DeserializeOwned>(&self) -> Result<T> {
        Ok(postcard::from_bytes(self.payload())?)
    }

    /// Answers a request: publishes `payload` to this message's reply subject.
    ///
    /// Fails with [`Error::Protocol`] if the message is not a request.
    pub async fn respond(&self, payload: impl AsRef<[u8]>) -> Result<()> {
        let (Some(reply), Some(shared)) = (self.reply_to(), self.shared.as_ref()) else {
            return Err(Error::Protocol(format!(
                "message on {:?} has no reply subject",
                self.subject()
            )));
        };
        shared.publish(reply, None, payload.as_ref()).await
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
