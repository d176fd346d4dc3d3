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

use crate::proto::{self, LEN_PREFIX};

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

/// Appends a `ClientFrame::Pub` frame to `buf`, byte for byte what
/// [`encode_into`] writes (the `pub_encoding_matches_postcard` property test
/// pins this), without going through serde: publishing is the hot path.
///
/// On error `buf` is left as it was.
pub fn encode_pub(p: &proto::Pub<'_>, buf: &mut Vec<u8>, max_frame: u32) -> Result<(), CodecError> {
    let subject = p.subject.as_bytes();
    let reply_to = p.reply_to.map(str::as_bytes);
    // The body's length is known up front: the prefix is written first and
    // nothing is written for a frame that is too large.
    let len = 1 + bytes_len(subject) + 1 + reply_to.map_or(0, bytes_len) + bytes_len(p.payload);
    if len > max_frame as usize {
        return Err(CodecError::TooLarge { len, max: max_frame });
    }
    buf.reserve(LEN_PREFIX + len);
    // `len <= max_frame`, a u32, so the cast is lossless.
    buf.extend_from_slice(&(len as u32).to_le_bytes());
    buf.push(proto::PUB_TAG);
    push_bytes(buf, subject);
    match reply_to {
        None => buf.push(0),
        Some(r) => {
            buf.push(1);
            push_bytes(buf, r);
        }
    }
    push_bytes(buf, p.payload);
    Ok(())
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

/// Longest varint of a `u64`.
const VARINT_MAX: usize = 10;

/// Bytes postcard takes for the byte string `bytes`: a varint length, then
/// the bytes.
fn bytes_len(bytes: &[u8]) -> usize {
    proto::varint_len(bytes.len() as u64) + bytes.len()
}

/// postcard's encoding of a byte string or `str`: varint length, then bytes.
fn push_bytes(buf: &mut Vec<u8>, bytes: &[u8]) {
    let mut n = bytes.len() as u64;
    while n >= 0x80 {
        buf.push((n as u8) | 0x80);
        n >>= 7;
    }
    buf.push(n as u8);
    buf.extend_from_slice(bytes);
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
/// has (at least 8 KiB of room by default, more for a larger frame), and all the whole
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

    /// Reads once, with room for `needed` bytes in all. False at a clean end.
    async fn fill(&mut self, needed: usize) -> std::io::Result<bool> {
        let room = needed.saturating_sub(self.buf.len()).max(self.read_room);
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

/// Decodes a frame body from the daemon: a `Msg` (the hot path) is read
/// directly, anything else, or a `Msg` in an unusual but valid encoding, goes
/// through postcard. The `msg_decoding_matches_postcard` property test pins
/// the direct path to postcard's result.
pub fn decode_server_frame(body: &[u8]) -> Result<proto::ServerFrame<'_>, CodecError> {
    match decode_msg(body) {
        Some(m) => Ok(proto::ServerFrame::Msg(m)),
        None => decode(body),
    }
}

/// The `Msg` in `body` if it is one in postcard's plain encoding; `None`
/// when postcard has to decide.
fn decode_msg(body: &[u8]) -> Option<proto::Msg<'_>> {
    let m = raw_msg(body)?;
    Some(proto::Msg {
        sid: m.sid,
        subject: std::str::from_utf8(m.subject).ok()?,
        reply_to: m.reply_to.map(std::str::from_utf8).transpose().ok()?,
        payload: m.payload,
    })
}

/// A `Msg` frame's fields as byte slices of its body (see [`raw_msg`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RawMsg<'a> {
    /// The subscription the delivery is for.
    pub sid: u64,
    /// The subject, checked to be UTF-8.
    pub subject: &'a [u8],
    /// The reply subject, checked to be UTF-8.
    pub reply_to: Option<&'a [u8]>,
    /// The payload.
    pub payload: &'a [u8],
}

/// The `Msg` in `body` if it is one in postcard's plain encoding, without
/// building `&str`s: the client's receive path keeps only where the fields
/// lie, and [`Message`](crate::Message) makes the `&str` when asked. `None`
/// for anything else, which [`decode_server_frame`] (postcard) then decides.
pub fn raw_msg(body: &[u8]) -> Option<RawMsg<'_>> {
    let (&tag, rest) = body.split_first()?;
    if tag != proto::MSG_TAG {
        return None;
    }
    let (sid, rest) = take_varint(rest)?;
    let (subject, reply_to, payload) = take_message(rest)?;
    if !is_utf8(subject) || !reply_to.is_none_or(is_utf8) {
        return None;
    }
    Some(RawMsg {
        sid,
        subject,
        reply_to,
        payload,
    })
}

/// The `Run` in `body` if it is one in postcard's plain encoding: its
/// subscription id and its inner frames. `None` for anything else, which
/// postcard then decides.
pub fn raw_run(body: &[u8]) -> Option<(u64, &[u8])> {
    let (&tag, rest) = body.split_first()?;
    if tag != proto::RUN_TAG {
        return None;
    }
    let (sid, rest) = take_varint(rest)?;
    let (frames, _) = take_bytes(rest)?;
    Some((sid, frames))
}

/// One delivery of a `Run`: the `Pub` frame body `body`, read as a client
/// reads a `Msg` (subjects checked to be UTF-8). `None` if it is not a `Pub`
/// in postcard's plain encoding, which the daemon never sends.
#[inline]
pub fn run_msg(body: &[u8]) -> Option<RawPub<'_>> {
    let p = raw_pub(body)?;
    (is_utf8(p.subject) && p.reply_to.is_none_or(is_utf8)).then_some(p)
}

/// A `Pub` frame's fields as byte slices of its body (see [`raw_pub`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RawPub<'a> {
    /// The subject, **not** checked to be UTF-8.
    pub subject: &'a [u8],
    /// The reply subject, **not** checked to be UTF-8.
    pub reply_to: Option<&'a [u8]>,
    /// The payload.
    pub payload: &'a [u8],
}

/// The `Pub` in `body` if it is one in postcard's plain encoding, its
/// subjects left unchecked: the daemon's hot path only compares the subject
/// with ones it validated before, and hands everything else to postcard
/// ([`decode`]). `None` for anything else.
#[inline]
pub fn raw_pub(body: &[u8]) -> Option<RawPub<'_>> {
    let (&tag, rest) = body.split_first()?;
    if tag != proto::PUB_TAG {
        return None;
    }
    let (subject, reply_to, payload) = take_message(rest)?;
    Some(RawPub {
        subject,
        reply_to,
        payload,
    })
}

/// The fields `Pub` and `Msg` share, in order: subject, optional reply
/// subject, payload (postcard: byte strings, an option tag of 0 or 1).
type MessageFields<'a> = (&'a [u8], Option<&'a [u8]>, &'a [u8]);

#[inline]
fn take_message(b: &[u8]) -> Option<MessageFields<'_>> {
    let (subject, rest) = take_bytes(b)?;
    let (reply_to, rest) = match rest.split_first()? {
        (0, rest) => (None, rest),
        (1, rest) => {
            let (r, rest) = take_bytes(rest)?;
            (Some(r), rest)
        }
        _ => return None,
    };
    let (payload, _) = take_bytes(rest)?;
    Some((subject, reply_to, payload))
}

/// UTF-8 check with an ASCII fast path: subjects are nearly always ASCII,
/// and for short strings `is_ascii` costs a fraction of `str::from_utf8`.
#[inline]
fn is_utf8(b: &[u8]) -> bool {
    b.is_ascii() || std::str::from_utf8(b).is_ok()
}

/// A varint of at most 9 bytes (up to 2^63 - 1); longer ones go to postcard.
#[inline]
fn take_varint(b: &[u8]) -> Option<(u64, &[u8])> {
    let mut v = 0u64;
    for (i, &byte) in b.iter().take(VARINT_MAX - 1).enumerate() {
        v |= u64::from(byte & 0x7f) << (7 * i);
        if byte & 0x80 == 0 {
            return Some((v, &b[i + 1..]));
        }
    }
    None
}

/// A length-prefixed byte string.
#[inline]
fn take_bytes(b: &[u8]) -> Option<(&[u8], &[u8])> {
    let (len, rest) = take_varint(b)?;
    let len = usize::try_from(len).ok()?;
    (len <= rest.len()).then(|| rest.split_at(len))
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
