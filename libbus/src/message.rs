//! Received messages and subscription deliveries.

use std::{fmt, sync::Arc};

use bytes::Bytes;
use serde::de::DeserializeOwned;

use crate::{client::Shared, Error, Result};

/// A message received on a subscription, or a reply to a request.
///
/// Subject, reply subject and payload share the receive buffer: no copy.
#[derive(Clone)]
pub struct Message {
    pub(crate) subject: Bytes,
    pub(crate) reply_to: Option<Bytes>,
    pub(crate) payload: Bytes,
    /// Connection to respond on; `None` for messages that cannot be answered.
    pub(crate) shared: Option<Arc<Shared>>,
}

fn as_str(b: &Bytes) -> &str {
    // The bytes were checked to be UTF-8 when the frame was decoded, so this
    // never yields the fallback.
    std::str::from_utf8(b).unwrap_or_default()
}

impl Message {
    /// Subject the message was published to.
    pub fn subject(&self) -> &str {
        as_str(&self.subject)
    }

    /// Reply subject, set when the message is a request.
    pub fn reply_to(&self) -> Option<&str> {
        self.reply_to.as_ref().map(as_str)
    }

    /// The message body.
    pub fn payload(&self) -> &Bytes {
        &self.payload
    }

    /// Takes the body out of the message.
    pub fn into_payload(self) -> Bytes {
        self.payload
    }

    /// Decodes a postcard-encoded body (the counterpart of
    /// [`Bus::publish_value`](crate::Bus::publish_value)).
    pub fn decode<T: DeserializeOwned>(&self) -> Result<T> {
        Ok(postcard::from_bytes(&self.payload)?)
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
            .field("payload_len", &self.payload.len())
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
