//! Every hand-written encoding and decoding of the wire protocol, in one
//! place: the frames on the hot path are read and written here without
//! serde, byte for byte what postcard writes for the types in
//! [`proto`] (the property tests in `libbus/tests/properties.rs`
//! and the tests below pin each one to postcard).
//!
//! - Writing: [`encode_pub`] (a publish), [`encode_msg_from_pub`] (the
//!   daemon's delivery: a publish body with the sid spliced in), and
//!   [`encode_run_head`] (the head of a `Run` of forwarded publishes).
//! - Reading in place: [`raw_pub`], [`raw_msg`], [`raw_run`] and
//!   [`run_msg`] locate a frame's fields without allocating; anything they
//!   do not recognise goes to postcard ([`decode`](crate::codec::decode)).
//! - A stream's repeated frame head, copied when encoding (`Encoder`)
//!   and compared when decoding (`Decoded`).
//! - One varint ([`varint_len`], LEB128 as postcard writes it).

use std::ops::Range;

use crate::{
    codec::CodecError,
    proto::{self, LEN_PREFIX},
};

/// postcard's variant index of `ClientFrame::Pub`.
pub const PUB_TAG: u8 = 1;
/// postcard's variant index of `ServerFrame::Msg`.
pub const MSG_TAG: u8 = 1;
/// postcard's variant index of `ServerFrame::Run`.
pub const RUN_TAG: u8 = 8;
/// postcard's variant index of `ClientFrame::HPub`.
pub const HPUB_TAG: u8 = 6;
/// postcard's variant index of `ServerFrame::HMsg`.
pub const HMSG_TAG: u8 = 10;
/// postcard's variant index of `ServerFrame::SMsg`.
pub const SMSG_TAG: u8 = 11;

/// Appends a `ClientFrame::Pub` frame to `buf`, byte for byte what
/// [`encode_into`](crate::codec::encode_into) writes (the `pub_encoding_matches_postcard` property test
/// pins this), without going through serde: publishing is the hot path.
///
/// On error `buf` is left as it was.
pub fn encode_pub(p: &proto::Pub<'_>, buf: &mut Vec<u8>, max_frame: u32) -> Result<(), CodecError> {
    encode_publish(p.subject, p.reply_to, None, p.payload, buf, max_frame)
}

/// Appends a `ClientFrame::HPub` frame to `buf`, as [`encode_pub`] does a
/// `Pub` (the `deliveries_of_hpub_match_postcard...` test pins it).
pub fn encode_hpub(p: &proto::HPub<'_>, buf: &mut Vec<u8>, max_frame: u32) -> Result<(), CodecError> {
    encode_publish(p.subject, p.reply_to, Some(p.headers), p.payload, buf, max_frame)
}

/// A `Pub` frame, or an `HPub` one when there is a header block.
#[inline]
fn encode_publish(
    subject: &str,
    reply_to: Option<&str>,
    headers: Option<&[u8]>,
    payload: &[u8],
    buf: &mut Vec<u8>,
    max_frame: u32,
) -> Result<(), CodecError> {
    let subject = subject.as_bytes();
    let reply_to = reply_to.map(str::as_bytes);
    // The body's length is known up front: the prefix is written first and
    // nothing is written for a frame that is too large.
    let len = 1
        + bytes_len(subject)
        + 1
        + reply_to.map_or(0, bytes_len)
        + headers.map_or(0, bytes_len)
        + bytes_len(payload);
    if len > max_frame as usize {
        return Err(CodecError::TooLarge { len, max: max_frame });
    }
    buf.reserve(LEN_PREFIX + len);
    // `len <= max_frame`, a u32, so the cast is lossless.
    buf.extend_from_slice(&(len as u32).to_le_bytes());
    buf.push(if headers.is_some() { HPUB_TAG } else { PUB_TAG });
    push_bytes(buf, subject);
    match reply_to {
        None => buf.push(0),
        Some(r) => {
            buf.push(1);
            push_bytes(buf, r);
        }
    }
    if let Some(h) = headers {
        push_bytes(buf, h);
    }
    push_bytes(buf, payload);
    Ok(())
}

/// The `HPub` in `body`, read in place like [`raw_pub`] (subjects and
/// header block not checked), its block in `headers`.
pub fn raw_hpub(body: &[u8]) -> Option<RawPub<'_>> {
    let (&tag, rest) = body.split_first()?;
    if tag != HPUB_TAG {
        return None;
    }
    let (subject, reply_to, rest) = take_subjects(rest)?;
    let (headers, rest) = take_bytes(rest)?;
    let (payload, _) = take_bytes(rest)?;
    Some(RawPub {
        subject,
        reply_to,
        payload,
        headers: Some(headers),
    })
}

/// The `HMsg` in `body`, read in place like [`raw_msg`] (subjects checked
/// to be UTF-8), with its header block.
pub fn raw_hmsg(body: &[u8]) -> Option<(RawMsg<'_>, &[u8])> {
    let (&tag, rest) = body.split_first()?;
    if tag != HMSG_TAG {
        return None;
    }
    let (sid, rest) = take_varint(rest)?;
    let (subject, reply_to, rest) = take_subjects(rest)?;
    let (headers, rest) = take_bytes(rest)?;
    let (payload, _) = take_bytes(rest)?;
    if !is_utf8(subject) || !reply_to.is_none_or(is_utf8) {
        return None;
    }
    Some((
        RawMsg {
            sid,
            subject,
            reply_to,
            payload,
        },
        headers,
    ))
}

/// A subject and an optional reply subject, and what follows them (the
/// same shape as [`MessageFields`], with the rest last).
#[inline]
fn take_subjects(b: &[u8]) -> Option<MessageFields<'_>> {
    let (subject, rest) = take_bytes(b)?;
    match rest.split_first()? {
        (0, rest) => Some((subject, None, rest)),
        (1, rest) => {
            let (r, rest) = take_bytes(rest)?;
            Some((subject, Some(r), rest))
        }
        _ => None,
    }
}

/// Bytes postcard takes for the byte string `bytes`: a varint length, then
/// the bytes.
fn bytes_len(bytes: &[u8]) -> usize {
    varint_len(bytes.len() as u64) + bytes.len()
}

/// postcard's encoding of a `str`: varint length, then bytes.
pub(crate) fn push_str(buf: &mut Vec<u8>, s: &str) {
    push_bytes(buf, s.as_bytes());
}

/// postcard's varint encoding of `v` (LEB128), appended a byte at a time:
/// lengths and sids take one or two bytes, and a copy of a variable
/// number of bytes would be a call to memcpy.
#[inline]
pub(crate) fn push_varint(buf: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        buf.push(v as u8 | 0x80);
        v >>= 7;
    }
    buf.push(v as u8);
}

/// postcard's encoding of a byte string or `str`: varint length, then bytes.
fn push_bytes(buf: &mut Vec<u8>, bytes: &[u8]) {
    push_varint(buf, bytes.len() as u64);
    buf.extend_from_slice(bytes);
}

/// Appends a complete `ServerFrame::Msg` frame (length prefix included) for
/// subscription `sid`, built from the body of a `ClientFrame::Pub` frame.
///
/// `Msg { sid, subject, reply_to, payload }` is `Pub { subject, reply_to,
/// payload }` with `sid` in front, and both are variant 1 of their enums, so a
/// delivery is the publish body with the sid's varint spliced in after the tag:
/// the daemon never decodes or re-encodes a message per subscriber. The
/// `msg_from_pub_matches_postcard` test pins this to postcard's own encoding.
///
/// `pub_body` must be a `Pub` body (first byte [`PUB_TAG`]); anything else is
/// appended as given, and the receiving client rejects it.
pub fn encode_msg_from_pub(pub_body: &[u8], sid: u64, out: &mut Vec<u8>) {
    let rest = pub_body.get(1..).unwrap_or_default();
    let len = 1 + varint_len(sid) + rest.len();
    out.reserve(LEN_PREFIX + len);
    out.extend_from_slice(&(len as u32).to_le_bytes());
    out.push(MSG_TAG);
    push_varint(out, sid);
    out.extend_from_slice(rest);
}

/// Appends the delivery of a publish body for subscription `sid`: a `Pub`
/// becomes a `Msg` ([`encode_msg_from_pub`]); an `HPub` becomes an `HMsg`
/// the same way (tag and sid spliced in) for a client that reads headers
/// (`headers`), else a `Msg` without its header block. Nothing is decoded
/// or re-encoded but that one field.
pub fn encode_delivery(pub_body: &[u8], sid: u64, headers: bool, out: &mut Vec<u8>) {
    if pub_body.first() != Some(&HPUB_TAG) {
        return encode_msg_from_pub(pub_body, sid, out);
    }
    let (head, tail) = match hpub_split(pub_body) {
        Some(split) if !headers => split,
        // An `HMsg` for a reader of headers (and what could not be split,
        // which the client rejects).
        _ => (pub_body.get(1..).unwrap_or_default(), &[][..]),
    };
    let tag = if headers { HMSG_TAG } else { MSG_TAG };
    let len = 1 + varint_len(sid) + head.len() + tail.len();
    out.reserve(LEN_PREFIX + len);
    out.extend_from_slice(&(len as u32).to_le_bytes());
    out.push(tag);
    push_varint(out, sid);
    out.extend_from_slice(head);
    out.extend_from_slice(tail);
}

/// Appends an `SMsg` frame for subscription `sid`: the encoded `sender`,
/// then the publish body (`Pub` or `HPub`) as it came.
pub fn encode_smsg(pub_body: &[u8], sid: u64, sender: &[u8], out: &mut Vec<u8>) {
    let len = smsg_len(pub_body, sid, sender) - LEN_PREFIX;
    out.reserve(LEN_PREFIX + len);
    out.extend_from_slice(&(len as u32).to_le_bytes());
    out.push(SMSG_TAG);
    push_varint(out, sid);
    push_bytes(out, sender);
    push_bytes(out, pub_body);
}

/// Bytes [`encode_smsg`] appends.
pub fn smsg_len(pub_body: &[u8], sid: u64, sender: &[u8]) -> usize {
    LEN_PREFIX + 1 + varint_len(sid) + bytes_len(sender) + bytes_len(pub_body)
}

/// The `SMsg` in `body`: its sid, encoded sender, and the publish it holds
/// (subjects checked to be UTF-8). `None` for anything else.
pub fn raw_smsg(body: &[u8]) -> Option<(u64, &[u8], RawPub<'_>)> {
    let (&tag, rest) = body.split_first()?;
    if tag != SMSG_TAG {
        return None;
    }
    let (sid, rest) = take_varint(rest)?;
    let (sender, rest) = take_bytes(rest)?;
    let (publish, _) = take_bytes(rest)?;
    Some((sid, sender, run_msg(publish)?))
}

/// Bytes [`encode_delivery`] appends.
pub fn delivery_len(pub_body: &[u8], sid: u64, headers: bool) -> usize {
    if pub_body.first() != Some(&HPUB_TAG) || headers {
        return msg_from_pub_len(pub_body, sid);
    }
    match hpub_split(pub_body) {
        Some((head, tail)) => LEN_PREFIX + 1 + varint_len(sid) + head.len() + tail.len(),
        None => msg_from_pub_len(pub_body, sid),
    }
}

/// An `HPub` body around its header block: the subject and reply subject
/// before it, the payload after it.
fn hpub_split(body: &[u8]) -> Option<(&[u8], &[u8])> {
    let fields = body.get(1..)?;
    let (_, _, rest) = take_subjects(fields)?;
    let head = &fields[..fields.len() - rest.len()];
    let (_, tail) = take_bytes(rest)?;
    Some((head, tail))
}

/// Bytes [`encode_msg_from_pub`] appends for `pub_body` and `sid`.
pub fn msg_from_pub_len(pub_body: &[u8], sid: u64) -> usize {
    LEN_PREFIX + 1 + varint_len(sid) + pub_body.len().saturating_sub(1)
}

/// Appends the head of a `ServerFrame::Run` frame for `sid` whose `frames`
/// are `frames_len` bytes: length prefix, tag, sid, byte count. The frames
/// themselves follow, written (or shared) by the caller. The
/// `run_head_matches_postcard` test pins this to postcard's own encoding.
pub fn encode_run_head(sid: u64, frames_len: usize, out: &mut Vec<u8>) {
    let len = 1 + varint_len(sid) + varint_len(frames_len as u64) + frames_len;
    out.extend_from_slice(&(len as u32).to_le_bytes());
    out.push(RUN_TAG);
    push_varint(out, sid);
    push_varint(out, frames_len as u64);
}

/// Bytes [`encode_run_head`] appends for `sid` and `frames_len`.
pub fn run_head_len(sid: u64, frames_len: usize) -> usize {
    LEN_PREFIX + 1 + varint_len(sid) + varint_len(frames_len as u64)
}

/// Bytes postcard's varint encoding of `v` takes (7 bits per byte).
pub fn varint_len(v: u64) -> usize {
    let bits = u64::BITS - (v | 1).leading_zeros();
    bits.div_ceil(7) as usize
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
/// for anything else, which postcard ([`decode`](crate::codec::decode)) then decides.
pub fn raw_msg(body: &[u8]) -> Option<RawMsg<'_>> {
    let (&tag, rest) = body.split_first()?;
    if tag != MSG_TAG {
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
    if tag != RUN_TAG {
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
    let p = raw_pub(body).or_else(|| raw_hpub(body))?;
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
    /// The header block of an `HPub` (**not** checked); `None` for a `Pub`.
    pub headers: Option<&'a [u8]>,
}

/// The `Pub` in `body` if it is one in postcard's plain encoding, its
/// subjects left unchecked: the daemon's hot path only compares the subject
/// with ones it validated before, and hands everything else to postcard
/// ([`decode`](crate::codec::decode)). `None` for anything else.
#[inline]
pub fn raw_pub(body: &[u8]) -> Option<RawPub<'_>> {
    let (&tag, rest) = body.split_first()?;
    if tag != PUB_TAG {
        return None;
    }
    let (subject, reply_to, payload) = take_message(rest)?;
    Some(RawPub {
        subject,
        reply_to,
        payload,
        headers: None,
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
pub(crate) fn take_varint(b: &[u8]) -> Option<(u64, &[u8])> {
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
pub(crate) fn take_bytes(b: &[u8]) -> Option<(&[u8], &[u8])> {
    let (len, rest) = take_varint(b)?;
    let len = usize::try_from(len).ok()?;
    (len <= rest.len()).then(|| rest.split_at(len))
}

/// Longest varint of a `u64`.
const VARINT_MAX: usize = 10;

// A stream of messages to one subject, all of one size, repeats every byte
// of each `Pub` frame before the payload: the length prefix, tag, subject,
// reply subject and payload length (the frame's *head*). Both ends of the
// client use that: the publisher copies the last frame's head instead of
// encoding it again ([`Encoder`]), and a subscription reading a `Run`
// decodes a frame whose head is byte for byte the previous one's by that
// one comparison ([`Decoded`]). It is worth about a fifth of the 1 -> 1
// rate at 128 B (the A/B is in docs/performance.md).

/// Encodes `Pub` frames, reusing the head of the last one.
#[derive(Debug, Default)]
pub(crate) struct Encoder {
    /// The last frame's head (empty: none encoded yet).
    head: Vec<u8>,
    /// Where its subject lies in `head`.
    subject: Range<usize>,
    /// It had no reply subject: the head is reused only for another without.
    reusable: bool,
    /// Its payload length.
    payload_len: usize,
    /// The `max_frame` it was checked against.
    max_frame: u32,
}

impl Encoder {
    /// True if `subject` is the last frame's (which was validated then).
    pub(crate) fn is_last_subject(&self, subject: &str) -> bool {
        !self.head.is_empty() && self.head.get(self.subject.clone()) == Some(subject.as_bytes())
    }

    /// Appends `p` to `buf`, byte for byte what [`encode_pub`]
    /// writes. `same_subject` must be [`is_last_subject`](Self::is_last_subject)
    /// for `p.subject` (the caller has just compared them).
    pub(crate) fn encode(
        &mut self,
        p: &proto::Pub<'_>,
        same_subject: bool,
        buf: &mut Vec<u8>,
        max_frame: u32,
    ) -> Result<(), CodecError> {
        if same_subject
            && self.reusable
            && p.reply_to.is_none()
            && p.payload.len() == self.payload_len
            && max_frame == self.max_frame
        {
            buf.reserve(self.head.len() + p.payload.len());
            buf.extend_from_slice(&self.head);
            buf.extend_from_slice(p.payload);
            return Ok(());
        }
        let start = buf.len();
        encode_pub(p, buf, max_frame)?;
        self.head.clear();
        self.head
            .extend_from_slice(&buf[start..buf.len() - p.payload.len()]);
        let subject_at = LEN_PREFIX + 1 + varint_len(p.subject.len() as u64);
        self.subject = subject_at..subject_at + p.subject.len();
        self.reusable = p.reply_to.is_none();
        self.payload_len = p.payload.len();
        self.max_frame = max_frame;
        Ok(())
    }
}

/// Where the last `Pub` frame decoded from a chunk lies: enough to tell
/// whether the next frame repeats its head ([`repeats`](Self::repeats)).
#[derive(Debug, Clone)]
pub(crate) struct Decoded {
    /// Where the frame (its length prefix) starts in the chunk.
    frame: usize,
    /// Length of its head.
    head: usize,
    /// Length of the whole frame, prefix included.
    len: usize,
}

impl Decoded {
    /// Remembers the frame whose body starts at `start` in `chunk` and was
    /// decoded as `p`.
    pub(crate) fn new(chunk: &[u8], start: usize, body: &[u8], p: &RawPub<'_>) -> Self {
        let frame = start - LEN_PREFIX;
        Self {
            frame,
            head: p.payload.as_ptr() as usize - chunk.as_ptr() as usize - frame,
            len: LEN_PREFIX + body.len(),
        }
    }

    /// The length of the frame at `at` in `chunk` (its prefix included)
    /// if its head is this frame's, byte for byte: then so are its length,
    /// subject, reply subject and payload length, the subject is known to
    /// be UTF-8, and its parts lie where this frame's do.
    #[inline]
    pub(crate) fn repeats(&self, chunk: &[u8], at: usize) -> Option<usize> {
        let head = chunk.get(at..at.checked_add(self.head)?)?;
        (head == chunk.get(self.frame..self.frame + self.head)? && at + self.len <= chunk.len())
            .then_some(self.len)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{codec, proto::*};

    #[test]
    fn msg_from_pub_matches_postcard() {
        let long = vec![7u8; 300];
        let cases: [(&str, Option<&str>, &[u8], u64); 4] = [
            ("a", None, b"", 1),
            ("sensors.kitchen.temp", Some("_INBOX.ab.1"), b"21.5", 300),
            ("x.y", None, &long, u64::MAX),
            ("ünïcode.subject", Some("r"), b"\0\xff", 127),
        ];
        for (subject, reply_to, payload, sid) in cases {
            let mut pub_frame = Vec::new();
            let p = ClientFrame::Pub(Pub {
                subject,
                reply_to,
                payload,
            });
            codec::encode_into(&p, &mut pub_frame, u32::MAX).unwrap();
            assert_eq!(pub_frame[LEN_PREFIX], PUB_TAG);
            let mut spliced = Vec::new();
            encode_msg_from_pub(&pub_frame[LEN_PREFIX..], sid, &mut spliced);
            assert_eq!(spliced.len(), msg_from_pub_len(&pub_frame[LEN_PREFIX..], sid));
            let mut expected = Vec::new();
            let m = ServerFrame::Msg(Msg {
                sid,
                subject,
                reply_to,
                payload,
            });
            codec::encode_into(&m, &mut expected, u32::MAX).unwrap();
            assert_eq!(spliced, expected, "{subject} sid {sid}");
        }
    }

    #[test]
    fn deliveries_of_hpub_match_postcard_with_and_without_headers() {
        let block = crate::Headers::from_iter([("Trace-Id", "t1"), ("A", "b")])
            .encode()
            .unwrap();
        for (subject, reply_to, payload, sid) in [
            ("a", None, &b""[..], 1u64),
            ("sensors.x", Some("_INBOX.q.7"), &b"21.5"[..], 300),
            ("ü.x", None, &[9u8; 300][..], u64::MAX),
        ] {
            let mut frame = Vec::new();
            let hpub = ClientFrame::HPub(HPub {
                subject,
                reply_to,
                headers: &block,
                payload,
            });
            codec::encode_into(&hpub, &mut frame, u32::MAX).unwrap();
            let ClientFrame::HPub(h) = &hpub else {
                unreachable!()
            };
            let mut direct = Vec::new();
            encode_hpub(h, &mut direct, u32::MAX).unwrap();
            assert_eq!(direct, frame, "encode_hpub matches postcard");
            let body = &frame[LEN_PREFIX..];
            assert_eq!(body[0], HPUB_TAG);
            let raw = raw_hpub(body).unwrap();
            assert_eq!(
                (raw.subject, raw.payload, raw.headers),
                (subject.as_bytes(), payload, Some(&block[..]))
            );
            assert_eq!(run_msg(body), Some(raw), "a Run may carry it");
            for headers in [true, false] {
                let mut out = Vec::new();
                encode_delivery(body, sid, headers, &mut out);
                assert_eq!(out.len(), delivery_len(body, sid, headers));
                let mut expected = Vec::new();
                let m = if headers {
                    ServerFrame::HMsg(HMsg {
                        sid,
                        subject,
                        reply_to,
                        headers: &block,
                        payload,
                    })
                } else {
                    ServerFrame::Msg(Msg {
                        sid,
                        subject,
                        reply_to,
                        payload,
                    })
                };
                codec::encode_into(&m, &mut expected, u32::MAX).unwrap();
                assert_eq!(out, expected, "{subject} headers {headers}");
                // (A sid of 2^63 or more is left to postcard.)
                if headers && sid < 1 << 63 {
                    let (raw, block_read) = raw_hmsg(&out[LEN_PREFIX..]).unwrap();
                    assert_eq!((raw.sid, raw.payload, block_read), (sid, payload, &block[..]));
                }
            }
        }
    }

    #[test]
    fn varint_len_counts_what_push_varint_writes_as_postcard_does() {
        for v in [0, 1, 127, 128, 16_383, 16_384, u32::MAX as u64, u64::MAX] {
            let mut ours = Vec::new();
            push_varint(&mut ours, v);
            assert_eq!(varint_len(v), ours.len(), "{v}");
            assert_eq!(ours, postcard::to_allocvec(&v).unwrap(), "{v}");
        }
    }

    #[test]
    fn run_head_matches_postcard() {
        let mut inner = Vec::new();
        for (i, subject) in ["a", "b.c", "ünï"].iter().enumerate() {
            let p = ClientFrame::Pub(Pub {
                subject,
                reply_to: None,
                payload: &vec![i as u8; 100 * i],
            });
            codec::encode_into(&p, &mut inner, u32::MAX).unwrap();
        }
        for sid in [0, 1, 127, 128, 300, u64::MAX] {
            for frames in [&inner[..0], &inner[..], &[7u8; 200][..]] {
                let mut head = Vec::new();
                encode_run_head(sid, frames.len(), &mut head);
                assert_eq!(head.len(), run_head_len(sid, frames.len()));
                head.extend_from_slice(frames);
                let mut expected = Vec::new();
                codec::encode_into(&ServerFrame::Run { sid, frames }, &mut expected, u32::MAX).unwrap();
                assert_eq!(head, expected, "sid {sid}, {} bytes", frames.len());
            }
        }
    }
}

#[cfg(test)]
pub(crate) mod same_head_tests {
    use super::*;
    use crate::{codec, proto::Pub};

    /// Publishes whose heads repeat in every way a stream's can (same
    /// subject and size; another size; a reply subject; large; empty),
    /// and ways they stop repeating.
    pub(crate) fn pubs() -> Vec<Pub<'static>> {
        let big: &'static [u8] = Box::leak(vec![7u8; 300].into_boxed_slice());
        let list: [(&str, Option<&str>, &[u8]); 11] = [
            ("a.b", None, b"one"),
            ("a.b", None, b"two"),
            ("a.b", None, b"three"),
            ("a.c", None, b"four!"),
            ("a.c", Some("r.1"), b"five!"),
            ("a.c", Some("r.2"), b"six!!"),
            ("a.c", None, b"seven"),
            ("a.c", None, big),
            ("a.c", None, big),
            ("ü.ß", None, b""),
            ("ü.ß", None, b""),
        ];
        list.into_iter()
            .map(|(subject, reply_to, payload)| Pub {
                subject,
                reply_to,
                payload,
            })
            .collect()
    }

    #[test]
    fn encoder_writes_what_encode_pub_writes() {
        let (mut enc, mut reused, mut plain) = (Encoder::default(), Vec::new(), Vec::new());
        for p in pubs() {
            let same = enc.is_last_subject(p.subject);
            enc.encode(&p, same, &mut reused, u32::MAX).unwrap();
            assert!(enc.is_last_subject(p.subject));
            encode_pub(&p, &mut plain, u32::MAX).unwrap();
            assert_eq!(reused, plain, "after {p:?}");
        }
    }

    #[test]
    fn encoder_checks_each_max_frame() {
        let mut enc = Encoder::default();
        let p = Pub {
            subject: "a",
            reply_to: None,
            payload: &[0; 100],
        };
        let mut buf = Vec::new();
        enc.encode(&p, false, &mut buf, 1000).unwrap();
        // The same frame, under a smaller limit, is refused and not written.
        let before = buf.len();
        assert!(enc.encode(&p, true, &mut buf, 50).is_err());
        assert_eq!(buf.len(), before);
    }

    #[test]
    fn empty_encoder_knows_no_subject() {
        assert!(!Encoder::default().is_last_subject(""));
    }

    #[test]
    fn a_repeated_head_is_found_where_the_head_repeats() {
        let mut chunk = Vec::new();
        for p in pubs() {
            encode_pub(&p, &mut chunk, u32::MAX).unwrap();
        }
        let (mut last, mut repeats): (Option<(Decoded, &[u8])>, usize) = (None, 0);
        let mut n = 0;
        for (off, body) in codec::whole_frames(&chunk) {
            let full = run_msg(body).unwrap();
            let start = off + LEN_PREFIX;
            let head = &chunk[off..off + LEN_PREFIX + body.len() - full.payload.len()];
            if let Some((l, last_head)) = &last {
                let found = l.repeats(&chunk, off);
                assert_eq!(found.is_some(), head == *last_head);
                if let Some(len) = found {
                    assert_eq!(len, LEN_PREFIX + body.len());
                    repeats += 1;
                }
            }
            last = Some((Decoded::new(&chunk, start, body, &full), head));
            n += 1;
        }
        assert_eq!(n, pubs().len());
        // "two" (same length as "one"), the second big one, the second "ü.ß".
        assert_eq!(repeats, 3);
    }

    #[test]
    fn a_truncated_repeat_is_not_decoded() {
        let mut chunk = Vec::new();
        let p = Pub {
            subject: "a.b",
            reply_to: None,
            payload: b"xyz",
        };
        encode_pub(&p, &mut chunk, u32::MAX).unwrap();
        let first_len = chunk.len();
        encode_pub(&p, &mut chunk, u32::MAX).unwrap();
        chunk.pop();
        let body = &chunk[LEN_PREFIX..first_len];
        let last = Decoded::new(&chunk, LEN_PREFIX, body, &run_msg(body).unwrap());
        assert!(last.repeats(&chunk, first_len).is_none());
    }
}
