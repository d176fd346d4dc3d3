//! Message headers: an ordered list of (name, value) pairs, names repeatable,
//! as in NATS. On the wire a block is postcard's encoding of the pairs (a
//! count, then each name and value as a length and UTF-8 bytes); the daemon
//! checks a block once ([`check`]) and forwards it as it came.

use std::fmt;

use crate::wire;

/// Most bytes of an encoded header block the daemon accepts by default
/// (`max_header_bytes`).
pub const DEFAULT_MAX_HEADER_BYTES: u32 = 64 << 10;

/// The header a responder's error reply carries: its code.
pub const ERROR_CODE: &str = "Bus-Error-Code";
/// The header a responder's error reply carries: its text.
pub const ERROR_TEXT: &str = "Bus-Error-Text";
/// Header of a message whose payload is in the sealed memfd it carries
/// ([`Bus::publish_memfd`](crate::Bus::publish_memfd)): the payload's
/// length in bytes.
pub const MEMFD: &str = "Bus-Memfd";

/// Headers of a message, in order.
///
/// ```
/// let mut h = libbus::Headers::new();
/// h.append("Trace-Id", "4bf92f3577b34da6");
/// h.append("Accept", "text/plain");
/// h.append("Accept", "application/json");
/// assert_eq!(h.get("accept"), Some("text/plain"));
/// assert_eq!(h.get_all("Accept").count(), 2);
/// ```
#[derive(Debug, Clone, Default)]
pub struct Headers {
    pairs: Vec<(String, String)>,
    /// The checked block, kept from the first [`encode`](Self::encode)
    /// until the next change: a stream published with the same headers
    /// encodes them once.
    encoded: std::sync::OnceLock<Vec<u8>>,
}

impl PartialEq for Headers {
    fn eq(&self, other: &Self) -> bool {
        self.pairs == other.pairs
    }
}

impl Eq for Headers {}

/// Why a header block or a header was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HeaderError {
    /// A name is empty, or has a character other than printable ASCII, a
    /// space or `:`.
    #[error("invalid header name {0:?}: names are printable ASCII, without spaces or ':'")]
    Name(String),
    /// A value has a control character other than tab.
    #[error("invalid value for header {0:?}: no control characters except tab")]
    Value(String),
    /// The block is not a valid encoding (truncated, bad length, not UTF-8).
    #[error("malformed header block: {0}")]
    Malformed(&'static str),
    /// The block is larger than the limit.
    #[error("header block of {len} bytes exceeds max_header_bytes ({max} bytes)")]
    TooLarge {
        /// Its size.
        len: usize,
        /// The limit.
        max: u32,
    },
}

impl Headers {
    /// No headers.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a (name, value) pair after the others, keeping any with the same
    /// name. Checked when the message is published.
    pub fn append(&mut self, name: impl Into<String>, value: impl Into<String>) -> &mut Self {
        self.pairs.push((name.into(), value.into()));
        self.encoded = Default::default();
        self
    }

    /// Replaces every pair named `name` (any case) with one.
    pub fn insert(&mut self, name: impl Into<String>, value: impl Into<String>) -> &mut Self {
        let name = name.into();
        self.pairs.retain(|(n, _)| !n.eq_ignore_ascii_case(&name));
        self.append(name, value)
    }

    /// The first value of `name` (compared without regard to ASCII case).
    pub fn get(&self, name: &str) -> Option<&str> {
        self.pairs
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// Every value of `name`, in order.
    pub fn get_all<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a str> + 'a {
        self.pairs
            .iter()
            .filter(move |(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// Every pair, in order.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &str)> {
        self.pairs.iter().map(|(n, v)| (n.as_str(), v.as_str()))
    }

    /// Number of pairs.
    pub fn len(&self) -> usize {
        self.pairs.len()
    }

    /// True when there are none.
    pub fn is_empty(&self) -> bool {
        self.pairs.is_empty()
    }

    /// The block as sent on the wire, after checking every name and value.
    pub fn encode(&self) -> Result<Vec<u8>, HeaderError> {
        self.encoded().map(<[u8]>::to_vec)
    }

    /// [`encode`](Self::encode), borrowed: computed once until the headers
    /// change.
    pub fn encoded(&self) -> Result<&[u8], HeaderError> {
        if let Some(block) = self.encoded.get() {
            return Ok(block);
        }
        let mut out = Vec::new();
        wire::push_varint(&mut out, self.pairs.len() as u64);
        for (n, v) in &self.pairs {
            check_pair(n, v)?;
            wire::push_str(&mut out, n);
            wire::push_str(&mut out, v);
        }
        Ok(self.encoded.get_or_init(|| out))
    }

    /// Reads a block (checked as [`check`] does).
    pub fn decode(block: &[u8]) -> Result<Headers, HeaderError> {
        let mut pairs = Vec::new();
        walk(block, |n, v| pairs.push((n.to_owned(), v.to_owned())))?;
        Ok(Headers {
            pairs,
            encoded: Default::default(),
        })
    }
}

impl fmt::Display for Headers {
    /// One `Name: value` line per pair.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (n, v) in self.iter() {
            writeln!(f, "{n}: {v}")?;
        }
        Ok(())
    }
}

impl<N: Into<String>, V: Into<String>> FromIterator<(N, V)> for Headers {
    fn from_iter<I: IntoIterator<Item = (N, V)>>(iter: I) -> Self {
        let mut h = Headers::new();
        for (n, v) in iter {
            h.append(n, v);
        }
        h
    }
}

/// Names are printable ASCII without spaces or ':' (HTTP's and NATS's
/// header names); values are UTF-8 without ASCII control characters other
/// than tab (so no CR or LF). Checked byte by byte: the daemon does this
/// once per message with headers.
fn check_pair(name: &str, value: &str) -> Result<(), HeaderError> {
    if name.is_empty() || !name.bytes().all(|b| b.is_ascii_graphic() && b != b':') {
        return Err(HeaderError::Name(name.to_owned()));
    }
    if value.bytes().any(|b| b.is_ascii_control() && b != b'\t') {
        return Err(HeaderError::Value(name.to_owned()));
    }
    Ok(())
}

/// Checks an encoded block: at most `max` bytes, well formed, every name
/// and value valid. What the daemon does once per message with headers.
pub fn check(block: &[u8], max: u32) -> Result<(), HeaderError> {
    if block.len() > max as usize {
        return Err(HeaderError::TooLarge {
            len: block.len(),
            max,
        });
    }
    walk(block, |_, _| {})
}

/// Calls `each` with every pair of a block, checking it.
fn walk<'a>(block: &'a [u8], mut each: impl FnMut(&'a str, &'a str)) -> Result<(), HeaderError> {
    let (count, mut rest) = wire::take_varint(block).ok_or(HeaderError::Malformed("bad count"))?;
    for _ in 0..count {
        let (n, r) = take_str(rest)?;
        let (v, r) = take_str(r)?;
        check_pair(n, v)?;
        each(n, v);
        rest = r;
    }
    if !rest.is_empty() {
        return Err(HeaderError::Malformed("trailing bytes"));
    }
    Ok(())
}

fn take_str(b: &[u8]) -> Result<(&str, &[u8]), HeaderError> {
    let (bytes, rest) = wire::take_bytes(b).ok_or(HeaderError::Malformed("truncated"))?;
    let s = std::str::from_utf8(bytes).map_err(|_| HeaderError::Malformed("not UTF-8"))?;
    Ok((s, rest))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_matches_postcard_and_keeps_order_and_repeats() {
        let h: Headers = [("A", "1"), ("b", "two"), ("a", "3"), ("Empty", "")]
            .into_iter()
            .collect();
        let block = h.encode().unwrap();
        let pairs: Vec<(&str, &str)> = h.iter().collect();
        assert_eq!(block, postcard::to_allocvec(&pairs).unwrap());
        assert_eq!(Headers::decode(&block).unwrap(), h);
        assert_eq!(h.get_all("a").collect::<Vec<_>>(), ["1", "3"]);
        check(&block, 64).unwrap();
        assert!(matches!(check(&block, 8), Err(HeaderError::TooLarge { .. })));
    }

    #[test]
    fn bad_names_values_and_blocks_are_refused() {
        for name in ["", "a b", "a:b", "a\nb"] {
            let h: Headers = [(name, "v")].into_iter().collect();
            assert!(matches!(h.encode(), Err(HeaderError::Name(_))), "{name:?}");
        }
        let h: Headers = [("a", "line\r\nInjected: yes")].into_iter().collect();
        assert!(matches!(h.encode(), Err(HeaderError::Value(_))));
        for block in [
            &[][..],
            &[1][..],
            &[1, 5, b'a'][..],
            &[1, 1, 0xff, 0][..],
            &[0, 0][..],
        ] {
            assert!(check(block, 64).is_err(), "{block:?}");
        }
    }
}
