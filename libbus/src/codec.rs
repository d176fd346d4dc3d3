//! Framing: a 4-byte little-endian length, then a postcard body.
//!
//! Reading checks each length against the maximum *before* allocating for the
//! frame; "not enough bytes yet" is simply not an error. Readers (client,
//! daemon, bridge links) take many frames per system call and walk them in
//! place ([`next_frame`], [`FrameReader`]). Writing appends frames to a
//! caller-owned buffer so many frames go out in one `write` call.

use bytes::{Bytes, BytesMut};
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncRead, AsyncReadExt};

use crate::proto::LEN_PREFIX;

/// Why a frame could not be encoded or decoded.
#[derive(Debug, thiserror::Error)]
pub enum CodecError {
    /// The body is larger than the frame limit.
    #[error("frame of {len} bytes exceeds max_frame ({max})")]
    TooLarge {
        /// Encoded body length.
        len: usize,
        /// The limit.
        max: u32,
    },
    /// postcard rejected the bytes.
    #[error("malformed frame: {0}")]
    Postcard(#[from] postcard::Error),
}

/// The peer closed its side in the middle of a frame.
#[derive(Debug, thiserror::Error)]
#[error("truncated frame: connection ended inside a frame")]
pub struct Truncated;

/// True if `err` is a reader refusing a length prefix above the maximum.
pub fn is_frame_too_large(err: &std::io::Error) -> bool {
    err.get_ref()
        .is_some_and(|e| matches!(e.downcast_ref::<CodecError>(), Some(CodecError::TooLarge { .. })))
}

/// True if `err` is the stream ending inside a frame.
pub fn is_truncated(err: &std::io::Error) -> bool {
    err.get_ref().is_some_and(|e| e.is::<Truncated>())
}

/// Appends one frame (length prefix + postcard body) to `buf`.
///
/// On error `buf` is left as it was.
pub fn encode_into<T: Serialize>(frame: &T, buf: &mut Vec<u8>, max_frame: u32) -> Result<(), CodecError> {
    let start = buf.len();
    buf.extend_from_slice(&[0; LEN_PREFIX]);
    let taken = std::mem::take(buf);
    match postcard::to_extend(frame, taken) {
        Ok(out) => *buf = out,
        Err(e) => {
            // to_extend consumed the buffer; postcard only fails on unsupported
            // types, which our frames never contain. Keep the contract anyway.
            buf.truncate(start);
            return Err(e.into());
        }
    }
    finish_frame(buf, start, max_frame)
}

/// Fills in the length prefix of the frame that starts at `start`, or
/// removes the frame if its body exceeds `max_frame`.
fn finish_frame(buf: &mut Vec<u8>, start: usize, max_frame: u32) -> Result<(), CodecError> {
    let len = buf.len() - start - LEN_PREFIX;
    if len > max_frame as usize {
        buf.truncate(start);
        return Err(CodecError::TooLarge { len, max: max_frame });
    }
    // `len <= max_frame`, a u32, so the cast is lossless.
    buf[start..start + LEN_PREFIX].copy_from_slice(&(len as u32).to_le_bytes());
    Ok(())
}

/// What the front of a receive buffer holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Next<'a> {
    /// A complete frame body; the frame takes `LEN_PREFIX + body.len()` bytes.
    Frame(&'a [u8]),
    /// Not a whole frame yet: the buffer must hold `needed` bytes (length
    /// prefix included) before the next frame is complete.
    Incomplete {
        /// Bytes the buffer needs in total.
        needed: usize,
    },
}

/// Finds the frame at the front of `buf` in place, checking its length
/// against `max_frame` before anything is read or allocated for it.
///
/// The daemon and the client read many frames per system call and walk the
/// buffer with this, instead of splitting each frame off into its own
/// reference-counted buffer (as `tokio_util`'s `LengthDelimitedCodec` does),
/// which profiles showed to be a per-message cost on both sides.
#[inline]
pub fn next_frame(buf: &[u8], max_frame: u32) -> Result<Next<'_>, CodecError> {
    let Some(prefix) = buf.first_chunk::<LEN_PREFIX>() else {
        return Ok(Next::Incomplete { needed: LEN_PREFIX });
    };
    let len = u32::from_le_bytes(*prefix);
    if len > max_frame {
        return Err(CodecError::TooLarge {
            len: len as usize,
            max: max_frame,
        });
    }
    let end = LEN_PREFIX + len as usize;
    match buf.get(LEN_PREFIX..end) {
        Some(body) => Ok(Next::Frame(body)),
        None => Ok(Next::Incomplete { needed: end }),
    }
}

/// The whole frames at the front of `buf`, in order, found with
/// [`next_frame`] (no length limit: for buffers whose frames were checked
/// when they were read). Each item is the frame's offset in `buf` (where its
/// length prefix starts) and its body. Stops at the first incomplete frame;
/// [`WholeFrames::end`] then says how far it got.
pub fn whole_frames(buf: &[u8]) -> WholeFrames<'_> {
    WholeFrames { buf, at: 0 }
}

/// Iterator returned by [`whole_frames`].
#[derive(Debug, Clone)]
pub struct WholeFrames<'a> {
    buf: &'a [u8],
    at: usize,
}

impl WholeFrames<'_> {
    /// Where the frames walked so far end: `buf.len()` once all of `buf`
    /// was whole frames.
    pub fn end(&self) -> usize {
        self.at
    }
}

impl<'a> Iterator for WholeFrames<'a> {
    type Item = (usize, &'a [u8]);

    #[inline]
    fn next(&mut self) -> Option<Self::Item> {
        let Ok(Next::Frame(body)) = next_frame(self.buf.get(self.at..)?, u32::MAX) else {
            return None;
        };
        let at = self.at;
        self.at += LEN_PREFIX + body.len();
        Some((at, body))
    }
}

/// Default smallest room offered to one read of a [`FrameReader`].
const READ_ROOM: usize = 8 << 10;

/// Reads length-prefixed frames: every read takes in as much as the socket
/// has (at least 8 KiB of room by default, more as a larger frame arrives), and all the whole
/// frames it completed come out together as one shared chunk, walked with
/// [`next_frame`]. Each frame handed on from a chunk costs one reference
/// count, not a split of the receive buffer.
#[derive(Debug)]
pub struct FrameReader<R> {
    io: R,
    buf: BytesMut,
    max_frame: u32,
    read_room: usize,
}

impl<R: AsyncRead + Unpin> FrameReader<R> {
    /// Frames with bodies of at most `max_frame` bytes from `io`.
    pub fn new(io: R, max_frame: u32) -> Self {
        Self {
            io,
            buf: BytesMut::new(),
            max_frame,
            read_room: READ_ROOM,
        }
    }

    /// Offers each read at least `room` bytes (default 8 KiB). The daemon
    /// takes 64 KiB at a time, so a fast publisher is drained in few reads.
    pub fn with_read_room(mut self, room: usize) -> Self {
        self.read_room = room.max(LEN_PREFIX);
        self
    }

    /// Changes the room offered to the next reads (see [`with_read_room`](Self::with_read_room)).
    pub fn set_read_room(&mut self, room: usize) {
        self.read_room = room.max(LEN_PREFIX);
    }

    /// Bytes read and not yet handed out: the start of a frame still
    /// arriving.
    pub fn buffered(&self) -> usize {
        self.buf.len()
    }

    /// The stream it reads.
    pub fn get_ref(&self) -> &R {
        &self.io
    }

    /// Changes the largest accepted body.
    pub fn set_max_frame(&mut self, max_frame: u32) {
        self.max_frame = max_frame;
    }

    /// The whole frames at the front of the buffer (with their length
    /// prefixes), reading once if there is none yet; `Ok(None)` when the
    /// peer closed between frames. Errors: I/O, a frame over the maximum
    /// ([`is_frame_too_large`]), the stream ending inside a frame
    /// ([`is_truncated`]). Cancel-safe.
    pub async fn read_frames(&mut self) -> std::io::Result<Option<Bytes>> {
        loop {
            let mut used = 0;
            let needed = loop {
                match next_frame(&self.buf[used..], self.max_frame) {
                    Ok(Next::Frame(body)) => used += LEN_PREFIX + body.len(),
                    Ok(Next::Incomplete { needed }) => break used + needed,
                    Err(e) => return Err(std::io::Error::new(std::io::ErrorKind::InvalidData, e)),
                }
            };
            if used > 0 {
                return Ok(Some(self.buf.split_to(used).freeze()));
            }
            if !self.fill(needed).await? {
                return Ok(None);
            }
        }
    }

    /// The next frame's body alone (for handshakes: what follows stays
    /// buffered); `Ok(None)` when the peer closed between frames.
    pub async fn read_frame(&mut self) -> std::io::Result<Option<Bytes>> {
        loop {
            match next_frame(&self.buf, self.max_frame) {
                Ok(Next::Frame(body)) => {
                    let len = body.len();
                    let mut frame = self.buf.split_to(LEN_PREFIX + len);
                    return Ok(Some(frame.split_off(LEN_PREFIX).freeze()));
                }
                Ok(Next::Incomplete { needed }) => {
                    if !self.fill(needed).await? {
                        return Ok(None);
                    }
                }
                Err(e) => return Err(std::io::Error::new(std::io::ErrorKind::InvalidData, e)),
            }
        }
    }

    /// Reads once toward `needed` bytes in all. False at a clean end.
    ///
    /// The room offered grows with what has arrived, never with what a
    /// length prefix claims: at least the read room, and for a frame larger
    /// than that, at most as much again as is buffered. A peer that declares
    /// a large frame and sends little of it costs little.
    async fn fill(&mut self, needed: usize) -> std::io::Result<bool> {
        let missing = needed.saturating_sub(self.buf.len());
        let room = missing.min(self.buf.len()).max(self.read_room);
        self.buf.reserve(room);
        if self.io.read_buf(&mut self.buf).await? > 0 {
            Ok(true)
        } else if self.buf.is_empty() {
            Ok(false)
        } else {
            Err(std::io::Error::new(std::io::ErrorKind::UnexpectedEof, Truncated))
        }
    }
}

/// Decodes one frame body (without its length prefix).
pub fn decode<'a, T: Deserialize<'a>>(body: &'a [u8]) -> Result<T, CodecError> {
    Ok(postcard::from_bytes(body)?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::*;

    #[test]
    fn whole_frames_walks_to_the_first_incomplete_frame() {
        let mut buf = Vec::new();
        for body in [&b"ab"[..], b"", b"cde"] {
            buf.extend_from_slice(&(body.len() as u32).to_le_bytes());
            buf.extend_from_slice(body);
        }
        let whole = buf.len();
        // A frame cut short after them.
        buf.extend_from_slice(&9u32.to_le_bytes());
        buf.extend_from_slice(b"xy");
        let mut frames = whole_frames(&buf);
        let got: Vec<_> = frames.by_ref().collect();
        assert_eq!(got, [(0, &b"ab"[..]), (6, b""), (10, b"cde")]);
        assert_eq!(frames.end(), whole);
        assert_eq!(whole_frames(&buf[..whole]).end(), 0);
        assert_eq!(whole_frames(&[1, 0]).count(), 0);
    }

    #[tokio::test]
    async fn round_trip_through_codec() {
        let frames = [
            ClientFrame::Hello(Hello {
                version: 1,
                name: "t",
                role: Role::Client,
                auth: None,
            }),
            ClientFrame::Pub(Pub {
                subject: "a.b",
                reply_to: Some("_INBOX.x.1"),
                payload: b"hi",
            }),
            ClientFrame::Sub(Sub {
                sid: 7,
                pattern: "a.*",
                queue: Some("q"),
            }),
            ClientFrame::Unsub { sid: 7 },
            ClientFrame::Ping,
            ClientFrame::Pong,
        ];
        let mut buf = Vec::new();
        for f in &frames {
            encode_into(f, &mut buf, DEFAULT_MAX_FRAME).unwrap();
        }
        let mut r = FrameReader::new(&buf[..], DEFAULT_MAX_FRAME);
        for f in &frames {
            let body = r.read_frame().await.unwrap().unwrap();
            let got: ClientFrame = decode(&body).unwrap();
            assert_eq!(&got, f);
        }
        assert!(r.read_frame().await.unwrap().is_none());
    }

    #[tokio::test]
    async fn a_declared_frame_is_not_allocated_before_it_arrives() {
        let mut wire = (1u32 << 20).to_le_bytes().to_vec();
        wire.extend_from_slice(&[7; 100]);
        let mut r = FrameReader::new(&wire[..], 2 << 20).with_read_room(4096);
        assert!(is_truncated(&r.read_frame().await.unwrap_err()));
        assert!(
            r.buf.capacity() < 64 << 10,
            "{} bytes for 104 received",
            r.buf.capacity()
        );
        // A frame that does arrive is read whole, its buffer growing with it.
        let mut wire = (1u32 << 20).to_le_bytes().to_vec();
        wire.extend((0..1u32 << 20).map(|i| i as u8));
        let mut r = FrameReader::new(&wire[..], 2 << 20).with_read_room(4096);
        let body = r.read_frame().await.unwrap().unwrap();
        assert_eq!(&body[..], &wire[LEN_PREFIX..]);
    }

    #[tokio::test]
    async fn oversized_length_rejected_before_allocation() {
        let huge = u32::MAX.to_le_bytes();
        let mut r = FrameReader::new(&huge[..], 1024);
        let err = r.read_frame().await.unwrap_err();
        assert!(is_frame_too_large(&err));
        assert!(r.buf.capacity() < 1 << 20);
    }

    #[test]
    fn partial_frame_is_not_an_error() {
        let mut buf = Vec::new();
        encode_into(&ClientFrame::Ping, &mut buf, 64).unwrap();
        assert!(matches!(
            next_frame(&buf[..buf.len() - 1], 64),
            Ok(Next::Incomplete { .. })
        ));
    }

    #[tokio::test]
    async fn eof_inside_a_frame_is_truncated() {
        let cut = [10, 0, 0, 0, 1, 2];
        let err = FrameReader::new(&cut[..], 64).read_frame().await.unwrap_err();
        assert!(is_truncated(&err));
        let empty: &[u8] = &[];
        assert!(FrameReader::new(empty, 64).read_frame().await.unwrap().is_none());
    }

    #[test]
    fn next_frame_walks_a_buffer_in_place() {
        let mut buf = Vec::new();
        encode_into(&ClientFrame::Ping, &mut buf, 64).unwrap();
        encode_into(&ClientFrame::Unsub { sid: 300 }, &mut buf, 64).unwrap();
        let mut at = 0;
        let mut got = Vec::new();
        while let Next::Frame(body) = next_frame(&buf[at..], 64).unwrap() {
            got.push(decode::<ClientFrame>(body).unwrap());
            at += LEN_PREFIX + body.len();
        }
        assert_eq!(got, [ClientFrame::Ping, ClientFrame::Unsub { sid: 300 }]);
        assert_eq!(
            next_frame(&buf[at..], 64).unwrap(),
            Next::Incomplete { needed: 4 }
        );
        // A partial frame says how much it needs; a long one is refused early.
        assert_eq!(
            next_frame(&[10, 0, 0, 0, 1], 64).unwrap(),
            Next::Incomplete { needed: 14 }
        );
        assert!(matches!(
            next_frame(&u32::MAX.to_le_bytes(), 64),
            Err(CodecError::TooLarge { max: 64, .. })
        ));
    }

    #[tokio::test]
    async fn frame_reader_chunks_frames_and_reports_errors() {
        let mut wire = Vec::new();
        encode_into(&ClientFrame::Ping, &mut wire, 64).unwrap();
        encode_into(&ClientFrame::Unsub { sid: 9 }, &mut wire, 64).unwrap();
        encode_into(&ClientFrame::Pong, &mut wire, 64).unwrap();
        let mut r = FrameReader::new(&wire[..], 64);
        // One frame alone, then the rest as one chunk, then a clean end.
        let first = r.read_frame().await.unwrap().unwrap();
        assert_eq!(decode::<ClientFrame>(&first).unwrap(), ClientFrame::Ping);
        let chunk = r.read_frames().await.unwrap().unwrap();
        let mut at = 0;
        let mut got = Vec::new();
        while let Next::Frame(body) = next_frame(&chunk[at..], 64).unwrap() {
            got.push(decode::<ClientFrame>(body).unwrap());
            at += LEN_PREFIX + body.len();
        }
        assert_eq!(got, [ClientFrame::Unsub { sid: 9 }, ClientFrame::Pong]);
        assert!(r.read_frames().await.unwrap().is_none());

        let cut = &wire[..wire.len() - 1];
        let mut r = FrameReader::new(cut, 64);
        r.read_frames().await.unwrap().unwrap();
        assert!(is_truncated(&r.read_frames().await.unwrap_err()));

        let huge = u32::MAX.to_le_bytes();
        let mut r = FrameReader::new(&huge[..], 64);
        assert!(is_frame_too_large(&r.read_frames().await.unwrap_err()));
    }

    #[test]
    fn encode_enforces_max() {
        let mut buf = vec![9];
        let big = [0u8; 100];
        let f = ClientFrame::Pub(Pub {
            subject: "a",
            reply_to: None,
            payload: &big,
        });
        assert!(matches!(
            encode_into(&f, &mut buf, 50),
            Err(CodecError::TooLarge { .. })
        ));
        assert_eq!(buf, vec![9]);
    }
}
