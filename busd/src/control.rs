//! Control frames, encoded in one place: what the daemon says to a client
//! besides its deliveries (`Welcome`, `Error`, `Ping`, `Pong`,
//! `NoResponders`, `SubRefused`, ...) and the frames of a bridge link.
//! Deliveries are written by [`crate::outbox`] through `libbus::wire`.

use bytes::Bytes;
use libbus::{
    codec,
    proto::{link::LinkFrame, ErrorCode, ServerFrame},
};

/// A daemon frame, length prefix included.
pub fn server(frame: &ServerFrame<'_>) -> Bytes {
    let mut buf = Vec::new();
    // Control frames are small and all their fields serialize: this cannot fail.
    if let Err(e) = codec::encode_into(frame, &mut buf, u32::MAX) {
        tracing::error!("encoding a control frame failed: {e}");
    }
    buf.into()
}

/// An `Error` frame.
pub fn error(code: ErrorCode, message: &str) -> Bytes {
    server(&ServerFrame::Error { code, message })
}

/// A bridge link frame, length prefix included.
pub fn link(frame: &LinkFrame<'_>) -> Bytes {
    let mut buf = Vec::new();
    if let Err(e) = codec::encode_into(frame, &mut buf, u32::MAX) {
        tracing::error!("encoding a link frame: {e}");
    }
    buf.into()
}
