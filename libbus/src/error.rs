//! The one error type of libbus.

use std::time::Duration;

use crate::{proto::ErrorCode, subject::SubjectError};

/// Everything that can go wrong talking to the bus. Match on the variant.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// Nothing is listening at the address.
    #[error("no bus daemon at {address} (is busd running?)")]
    NoDaemon {
        /// The address tried.
        address: String,
        /// The underlying connect error.
        #[source]
        source: std::io::Error,
    },
    /// A request found no subscriber on its subject.
    #[error("no responders for {subject:?}")]
    NoResponders {
        /// The request subject.
        subject: String,
    },
    /// Every responder a request was delivered to closed its connection
    /// without replying: no answer will come (D-Bus's `NoReply` when the
    /// callee disconnects). Only for responders on the same daemon; a
    /// request answered from across a bridge can only time out.
    #[error(
        "responder gone: every connection that received the request to {subject:?} closed without replying"
    )]
    ResponderGone {
        /// The request subject.
        subject: String,
    },
    /// The responder answered with an error
    /// ([`Message::respond_error`](crate::Message::respond_error)).
    #[error("service error {code}: {text}")]
    Service {
        /// The responder's error code.
        code: u32,
        /// Its explanation.
        text: String,
    },
    /// A header or header block was refused (before sending, or by the daemon).
    #[error(transparent)]
    Header(#[from] crate::headers::HeaderError),
    /// A request, flush, connect or handshake did not complete in time.
    #[error("timed out after {0:?}")]
    Timeout(Duration),
    /// The connection to the daemon is gone.
    #[error("disconnected from the bus daemon{}", reason.as_deref().map(|r| format!(": {r}")).unwrap_or_default())]
    Disconnected {
        /// What the daemon said last, or what failed.
        reason: Option<String>,
    },
    /// A configured limit was hit.
    #[error("limit exceeded: {limit} = {value}")]
    LimitExceeded {
        /// Name of the limit, as in the daemon's configuration (`max_frame`, ...).
        limit: &'static str,
        /// Its value.
        value: u64,
    },
    /// A subject or pattern was rejected before sending.
    #[error(transparent)]
    InvalidSubject(#[from] SubjectError),
    /// The daemon refused (handshake, version, policy).
    #[error("daemon error ({code:?}): {message}")]
    Server {
        /// Class of error.
        code: ErrorCode,
        /// The daemon's explanation.
        message: String,
    },
    /// The peer broke the protocol.
    #[error("protocol error: {0}")]
    Protocol(String),
    /// A payload could not be encoded or decoded with postcard.
    #[error("payload encoding: {0}")]
    Encoding(#[from] postcard::Error),
    /// The address could not be parsed.
    #[error("invalid address {0}")]
    InvalidAddress(String),
    /// TLS could not be set up: a certificate, key or CA file could not be
    /// read, no CA was given for `tls://`, or the handshake failed (e.g. the
    /// daemon's certificate is not signed by the configured CA).
    #[error("TLS: {0}")]
    Tls(String),
    /// The daemon behind a `unix:` address runs as another user than the
    /// one expected ([`ConnectOptions::daemon_uid`](crate::ConnectOptions::daemon_uid);
    /// by default this process's own uid or root): nothing was sent to it.
    #[error("the daemon at {address} runs as uid {uid}, not as {expected}: refusing to talk to it")]
    UntrustedDaemon {
        /// The address.
        address: String,
        /// The uid the kernel reports for the daemon's end.
        uid: u32,
        /// Who was expected, in words.
        expected: String,
    },
    /// Any other I/O error.
    #[error(transparent)]
    Io(#[from] std::io::Error),
}

/// `Result` with [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// The error a frame that cannot be encoded or decoded becomes.
pub(crate) fn codec_err(e: crate::codec::CodecError) -> Error {
    match e {
        crate::codec::CodecError::TooLarge { max, .. } => Error::LimitExceeded {
            limit: "max_frame",
            value: max.into(),
        },
        crate::codec::CodecError::Postcard(e) => Error::Protocol(e.to_string()),
    }
}
