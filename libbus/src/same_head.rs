//! A stream of messages to one subject, all of one size, repeats every byte
//! of each `Pub` frame before the payload: the length prefix, tag, subject,
//! reply subject and payload length (the frame's *head*). Both ends of the
//! client use that: the publisher copies the last frame's head instead of
//! encoding it again, and a subscription reading a `Run` decodes a frame
//! whose head is byte for byte the previous one's by that one comparison.
//!
//! It is worth about a fifth of the 1 -> 1 rate at 128 B (the A/B is in
//! `docs/performance.md`).

use std::ops::Range;

use crate::{
    codec::CodecError,
    proto::{self, LEN_PREFIX},
    wire::{self, RawPub},
};

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

    /// Appends `p` to `buf`, byte for byte what [`wire::encode_pub`]
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
        wire::encode_pub(p, buf, max_frame)?;
        self.head.clear();
        self.head
            .extend_from_slice(&buf[start..buf.len() - p.payload.len()]);
        let subject_at = LEN_PREFIX + 1 + wire::varint_len(p.subject.len() as u64);
        self.subject = subject_at..subject_at + p.subject.len();
        self.reusable = p.reply_to.is_none();
        self.payload_len = p.payload.len();
        self.max_frame = max_frame;
        Ok(())
    }
}

/// Where the last `Pub` frame decoded from a chunk lies, and its fields,
/// relative to its start.
#[derive(Debug, Clone)]
pub(crate) struct Decoded {
    /// Where the frame (its length prefix) starts in the chunk.
    frame: usize,
    /// Length of its head.
    head: usize,
    /// Length of the whole frame, prefix included.
    len: usize,
    subject: Range<usize>,
    reply_to: Option<Range<usize>>,
}

/// A `Pub` frame found in a chunk: where its body starts, the body, and
/// its fields.
pub(crate) type PubAt<'a> = (usize, &'a [u8], RawPub<'a>);

impl Decoded {
    /// Remembers the frame whose body starts at `start` in `chunk` and was
    /// decoded as `p`.
    pub(crate) fn new(chunk: &[u8], start: usize, body: &[u8], p: &RawPub<'_>) -> Self {
        let frame = start - LEN_PREFIX;
        let at = |part: &[u8]| {
            let from = part.as_ptr() as usize - chunk.as_ptr() as usize - frame;
            from..from + part.len()
        };
        Self {
            frame,
            head: at(p.payload).start,
            len: LEN_PREFIX + body.len(),
            subject: at(p.subject),
            reply_to: p.reply_to.map(at),
        }
    }

    /// The frame at `at` in `chunk` if its head is this frame's, byte for
    /// byte: then so are its length, subject, reply subject and payload
    /// length, and the subject is known to be UTF-8.
    #[inline]
    pub(crate) fn repeated<'a>(&self, chunk: &'a [u8], at: usize) -> Option<PubAt<'a>> {
        let frame = chunk.get(at..at + self.len)?;
        if frame.get(..self.head)? != chunk.get(self.frame..self.frame + self.head)? {
            return None;
        }
        let part = |r: &Range<usize>| frame.get(r.clone()).unwrap_or_default();
        let p = RawPub {
            subject: part(&self.subject),
            reply_to: self.reply_to.as_ref().map(part),
            payload: frame.get(self.head..).unwrap_or_default(),
        };
        Some((at + LEN_PREFIX, frame.get(LEN_PREFIX..).unwrap_or_default(), p))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::Pub;

    fn pubs() -> Vec<Pub<'static>> {
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
            wire::encode_pub(&p, &mut plain, u32::MAX).unwrap();
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
    fn repeated_heads_decode_as_the_full_decoder_does() {
        let mut chunk = Vec::new();
        for p in pubs() {
            wire::encode_pub(&p, &mut chunk, u32::MAX).unwrap();
        }
        let (mut last, mut repeats): (Option<Decoded>, usize) = (None, 0);
        let mut n = 0;
        for (off, body) in crate::codec::whole_frames(&chunk) {
            let full = wire::run_msg(body).unwrap();
            let start = off + LEN_PREFIX;
            if let Some((s, b, p)) = last.as_ref().and_then(|l| l.repeated(&chunk, off)) {
                assert_eq!((s, b, p), (start, body, full));
                repeats += 1;
            }
            last = Some(Decoded::new(&chunk, start, body, &full));
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
        wire::encode_pub(&p, &mut chunk, u32::MAX).unwrap();
        let first_len = chunk.len();
        wire::encode_pub(&p, &mut chunk, u32::MAX).unwrap();
        chunk.pop();
        let body = &chunk[LEN_PREFIX..first_len];
        let last = Decoded::new(&chunk, LEN_PREFIX, body, &wire::run_msg(body).unwrap());
        assert!(last.repeated(&chunk, first_len).is_none());
    }
}
