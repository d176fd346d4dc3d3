//! Subjects and patterns, with NATS conventions.
//!
//! A *subject* is a dot-separated list of non-empty tokens (`sensors.kitchen.temp`).
//! A *pattern* may also use wildcards as whole tokens: `*` matches exactly one token,
//! `>` matches one or more trailing tokens and may only be the last token.
//! Whitespace and control characters are never allowed. Subjects starting with
//! [`RESERVED_PREFIX`] belong to the daemon.

use std::fmt;

/// Subjects under this prefix belong to the daemon (`$BUS.api.*`, `$BUS.event.*`).
pub const RESERVED_PREFIX: &str = "$BUS.";
/// Requests to the daemon's admin API are published under this prefix.
pub const API_PREFIX: &str = "$BUS.api.";
/// Reply subjects for request/reply live under this prefix.
pub const INBOX_PREFIX: &str = "_INBOX.";

/// Why a subject or pattern was rejected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SubjectError {
    /// The subject is the empty string.
    #[error("invalid subject \"\": empty")]
    Empty,
    /// Two dots in a row, or a leading/trailing dot.
    #[error("invalid subject {0:?}: empty token")]
    EmptyToken(String),
    /// A space, tab, newline or other control character.
    #[error("invalid subject {0:?}: whitespace or control character")]
    Whitespace(String),
    /// `*` or `>` in a subject that is published to.
    #[error("invalid subject {0:?}: wildcards are only allowed in subscriptions")]
    Wildcard(String),
    /// `>` somewhere other than the last token of a pattern.
    #[error("invalid pattern {0:?}: '>' must be the last token")]
    WildcardNotLast(String),
    /// Publishing under `$BUS.` (other than a request to `$BUS.api.*`).
    #[error("subject {0:?} is reserved for the daemon ($BUS.)")]
    Reserved(String),
}

fn check_tokens(s: &str, allow_wildcards: bool) -> Result<(), SubjectError> {
    if valid_printable_ascii(s.as_bytes(), allow_wildcards) {
        return Ok(());
    }
    check_tokens_slow(s, allow_wildcards)
}

/// Classes of a subject's bytes, for [`valid_printable_ascii`].
const BAD: u8 = 1;
const DOT: u8 = 2;
const WILD: u8 = 4;
/// Set when a dot follows a dot (or starts the subject): an empty token.
const EMPTY: u8 = DOT << 2;
static CLASS: [u8; 256] = {
    let mut t = [BAD; 256];
    let mut c = 0x21;
    while c <= 0x7e {
        t[c] = 0;
        c += 1;
    }
    t[b'.' as usize] = DOT;
    t[b'*' as usize] = WILD;
    t[b'>' as usize] = WILD;
    t
};

/// The common case in one pass over the bytes, without a branch per byte:
/// true if `b` is a valid subject (or pattern) made of printable ASCII.
/// Anything else, valid or not, is left to [`check_tokens_slow`], which
/// names the problem. A stream over many subjects validates each one it
/// publishes to, so this is on its path.
fn valid_printable_ascii(b: &[u8], allow_wildcards: bool) -> bool {
    let (mut seen, mut prev) = (0u8, DOT);
    for &c in b {
        let class = CLASS[c as usize];
        seen |= class | ((prev & class & DOT) << 2);
        prev = class;
    }
    if seen & (BAD | EMPTY) != 0 || prev == DOT {
        return false;
    }
    seen & WILD == 0 || wildcards_ok(b, allow_wildcards)
}

/// True if the tokens of `b` (which holds `*` or `>`) use them as a
/// subject or pattern may: within a longer token they are plain bytes; as
/// a whole token only in a pattern, and `>` only last.
fn wildcards_ok(b: &[u8], allow_wildcards: bool) -> bool {
    let mut tokens = b.split(|&c| c == b'.').peekable();
    while let Some(token) = tokens.next() {
        match token {
            b"*" if !allow_wildcards => return false,
            b">" if !allow_wildcards || tokens.peek().is_some() => return false,
            _ => {}
        }
    }
    true
}

fn check_tokens_slow(s: &str, allow_wildcards: bool) -> Result<(), SubjectError> {
    if s.is_empty() {
        return Err(SubjectError::Empty);
    }
    if s.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(SubjectError::Whitespace(s.to_owned()));
    }
    let mut tokens = s.split('.').peekable();
    while let Some(tok) = tokens.next() {
        match tok {
            "" => return Err(SubjectError::EmptyToken(s.to_owned())),
            "*" | ">" if !allow_wildcards => return Err(SubjectError::Wildcard(s.to_owned())),
            ">" if tokens.peek().is_some() => return Err(SubjectError::WildcardNotLast(s.to_owned())),
            _ => {}
        }
    }
    Ok(())
}

/// Checks a subject that a message is published to: no wildcards.
pub fn validate_subject(s: &str) -> Result<(), SubjectError> {
    check_tokens(s, false)
}

/// Checks a subscription pattern: wildcards allowed, `>` only last.
pub fn validate_pattern(s: &str) -> Result<(), SubjectError> {
    check_tokens(s, true)
}

/// Checks that a client may publish to `s`: a valid subject outside `$BUS.`,
/// except requests to the admin API under `$BUS.api.`.
pub fn validate_publish(s: &str) -> Result<(), SubjectError> {
    validate_subject(s)?;
    if s.starts_with(RESERVED_PREFIX) && !s.starts_with(API_PREFIX) {
        return Err(SubjectError::Reserved(s.to_owned()));
    }
    Ok(())
}

/// Reference matcher: does `pattern` match the literal `subject`?
///
/// The daemon routes with a trie (`busd::router`); this linear version is the
/// specification the trie is tested against, and what clients use locally.
pub fn matches(pattern: &str, subject: &str) -> bool {
    let mut pat = pattern.split('.');
    let mut sub = subject.split('.');
    loop {
        match (pat.next(), sub.next()) {
            (Some(">"), Some(_)) => return true,
            (Some("*"), Some(_)) => {}
            (Some(p), Some(s)) if p == s => {}
            (None, None) => return true,
            _ => return false,
        }
    }
}

/// A validated subject, for APIs that want to carry one around.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Subject(String);

impl Subject {
    /// Validates `s` as a publishable subject.
    pub fn new(s: impl Into<String>) -> Result<Self, SubjectError> {
        let s = s.into();
        validate_subject(&s)?;
        Ok(Self(s))
    }
    /// The subject as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for Subject {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subjects() {
        assert!(validate_subject("a").is_ok());
        assert!(validate_subject("a.b.c").is_ok());
        assert!(validate_subject("_INBOX.x.1").is_ok());
        assert_eq!(validate_subject(""), Err(SubjectError::Empty));
        assert!(matches!(
            validate_subject("a..b"),
            Err(SubjectError::EmptyToken(_))
        ));
        assert!(matches!(validate_subject(".a"), Err(SubjectError::EmptyToken(_))));
        assert!(matches!(validate_subject("a."), Err(SubjectError::EmptyToken(_))));
        assert!(matches!(
            validate_subject("a b"),
            Err(SubjectError::Whitespace(_))
        ));
        assert!(matches!(
            validate_subject("a\tb"),
            Err(SubjectError::Whitespace(_))
        ));
        assert!(matches!(validate_subject("a.*"), Err(SubjectError::Wildcard(_))));
        assert!(matches!(validate_subject("a.>"), Err(SubjectError::Wildcard(_))));
    }

    #[test]
    fn patterns() {
        assert!(validate_pattern("a.*.c").is_ok());
        assert!(validate_pattern(">").is_ok());
        assert!(validate_pattern("a.>").is_ok());
        assert!(matches!(
            validate_pattern("a.>.b"),
            Err(SubjectError::WildcardNotLast(_))
        ));
        assert!(matches!(
            validate_pattern("a..*"),
            Err(SubjectError::EmptyToken(_))
        ));
    }

    #[test]
    fn reserved() {
        assert!(validate_publish("$BUS.api.list").is_ok());
        assert!(matches!(
            validate_publish("$BUS.event.conn.open"),
            Err(SubjectError::Reserved(_))
        ));
        assert!(matches!(
            validate_publish("$BUS.x"),
            Err(SubjectError::Reserved(_))
        ));
    }

    proptest::proptest! {
        /// The fast path agrees with the one that names the problem, on
        /// strings made of what subjects are made of (and some of what
        /// they must not be).
        #[test]
        fn fast_check_agrees_with_the_slow_one(
            s in "[a.*>\\- \t\u{7f}é~!]{0,40}",
            allow in proptest::bool::ANY,
        ) {
            let fast = valid_printable_ascii(s.as_bytes(), allow);
            let slow = check_tokens_slow(&s, allow).is_ok();
            // The fast path may leave valid non-ASCII subjects to the slow
            // one, never accept an invalid one.
            proptest::prop_assert!(!fast || slow, "{s:?} allow={allow}");
            if s.is_ascii() {
                proptest::prop_assert_eq!(fast, slow, "{:?} allow={}", s, allow);
            }
            proptest::prop_assert_eq!(check_tokens(&s, allow).is_ok(), slow);
        }
    }

    #[test]
    fn every_place_of_an_empty_token_or_a_bad_byte_is_found() {
        for len in 1..=40 {
            let valid = vec![b'a'; len];
            assert!(valid_printable_ascii(&valid, false), "{len}");
            for i in 0..len {
                for bad in [0, 0x1f, b' ', 0x7f, 0x80, 0xa1, 0xff] {
                    let mut b = valid.clone();
                    b[i] = bad;
                    assert!(!valid_printable_ascii(&b, true), "{len} {i} {bad:#x}");
                }
                let mut b = valid.clone();
                b[i] = b'*';
                assert_eq!(valid_printable_ascii(&b, false), len > 1, "{len} {i} *");
                if i + 1 < len {
                    b = valid.clone();
                    b[i] = b'.';
                    b[i + 1] = b'.';
                    assert!(!valid_printable_ascii(&b, true), "{len} {i} ..");
                }
            }
        }
    }

    proptest::proptest! {
        /// The fast check agrees with the definition (printable ASCII, and
        /// what the slow check accepts) on subjects of every length up to
        /// 40 with one byte from the edges of each class put anywhere.
        #[test]
        fn fast_check_agrees_with_the_definition(
            base in "[a-z0-9_.*>]{0,40}",
            at in proptest::sample::select((0usize..40).collect::<Vec<_>>()),
            byte in proptest::sample::select(vec![b' ', b'\t', 0, 0x7f, 0x80, 0xa1, 0xff, b'.', b'~', b'!', b'*', b'>', b'a']),
            allow in proptest::bool::ANY,
        ) {
            let mut b = base.into_bytes();
            if let Some(c) = b.get_mut(at) {
                *c = byte;
            }
            let printable = !b.is_empty() && b.iter().all(|c| (0x21..=0x7e).contains(c));
            let expected = printable && check_tokens_slow(std::str::from_utf8(&b).unwrap_or(""), allow).is_ok();
            proptest::prop_assert_eq!(valid_printable_ascii(&b, allow), expected, "{:?} allow={}", String::from_utf8_lossy(&b), allow);
        }
    }

    #[test]
    fn reference_matcher() {
        assert!(matches("a.b", "a.b"));
        assert!(!matches("a.b", "a.b.c"));
        assert!(matches("a.*", "a.b"));
        assert!(!matches("a.*", "a"));
        assert!(!matches("a.*", "a.b.c"));
        assert!(matches("a.>", "a.b.c"));
        assert!(!matches("a.>", "a"));
        assert!(matches(">", "a"));
        assert!(matches("*.b.>", "x.b.c.d"));
    }
}
