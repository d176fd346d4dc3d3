//! What crosses to and from the NATS upstream, and under which names. Pure:
//! no I/O, tested with plain values.
//!
//! - Subjects map one to one; `$BUS.` never crosses.
//! - A local request's reply subject `R` goes up as
//!   `_BUSR.<node>.<l|n>.R`, under the one upstream subscription
//!   `_BUSR.<node>.>` this daemon keeps. `l` says local responders got the
//!   request too, so an upstream "no responders" for it is ignored; `n`
//!   says none did, so it fails the request.
//! - A reply subject `R` that came down with a request is delivered as
//!   `_BUSN.R` (unless it is another daemon's `_BUSR.` subject, kept as it
//!   is), so the answer, published here to that subject, goes back up as
//!   `R` whatever `export` says.
//! - Headers map to NATS headers. The sender rides as `Bus-Sender`
//!   (`<conn id> <uid or -> <node>`), and the queue groups a message was
//!   already given to at its origin as `Bus-Queue-Handled`.

use libbus::{headers::Headers, proto::link::Origin, subject::RESERVED_PREFIX};

/// Where replies to this daemon's requests come back, under its node token.
pub const REPLY_PREFIX: &str = "_BUSR.";
/// A reply subject that came from upstream, as local responders see it.
pub const NATIVE_REPLY_PREFIX: &str = "_BUSN.";
/// The header that carries the sender across the upstream.
pub const SENDER: &str = "Bus-Sender";
/// The header naming the queue groups already served at the origin.
pub const QUEUE_HANDLED: &str = "Bus-Queue-Handled";
/// NATS services' error headers (the `micro` API).
const NATS_ERROR_CODE: &str = "Nats-Service-Error-Code";
const NATS_ERROR_TEXT: &str = "Nats-Service-Error";

/// `node` as one subject token: `.`, `*`, `>` and whitespace become `_`.
pub fn node_token(node: &str) -> String {
    let t: String = node
        .chars()
        .map(|c| match c {
            '.' | '*' | '>' => '_',
            c if c.is_whitespace() || c.is_control() => '_',
            c => c,
        })
        .collect();
    if t.is_empty() {
        "_".into()
    } else {
        t
    }
}

/// The subjects that match both patterns, as one pattern, or `None` if no
/// subject matches both. (Two patterns always meet in one pattern or none.)
///
/// ```
/// use busd::upstream::mapping::meet;
/// assert_eq!(meet(">", "orders.>").as_deref(), Some("orders.>"));
/// assert_eq!(meet("*.new", "orders.*").as_deref(), Some("orders.new"));
/// assert_eq!(meet("orders.*", "stock.*"), None);
/// ```
pub fn meet(a: &str, b: &str) -> Option<String> {
    let (mut x, mut y) = (a.split('.'), b.split('.'));
    let mut out: Vec<&str> = Vec::new();
    loop {
        match (x.next(), y.next()) {
            (None, None) => return Some(out.join(".")),
            (Some(">"), Some(t)) => {
                out.push(t);
                out.extend(y);
                return Some(out.join("."));
            }
            (Some(t), Some(">")) => {
                out.push(t);
                out.extend(x);
                return Some(out.join("."));
            }
            (Some("*"), Some(t)) | (Some(t), Some("*")) => out.push(t),
            (Some(s), Some(t)) if s == t => out.push(s),
            _ => return None,
        }
    }
}

/// `patterns` without those another one covers (the first of equal ones
/// stays): fewer upstream subscriptions, and fewer messages that come
/// twice.
pub fn without_covered(patterns: &[String]) -> Vec<String> {
    let covered = |i: usize| {
        patterns.iter().enumerate().any(|(j, other)| {
            j != i
                && crate::acl::subset(&patterns[i], other)
                && (!crate::acl::subset(other, &patterns[i]) || j < i)
        })
    };
    (0..patterns.len())
        .filter(|i| !covered(*i))
        .map(|i| patterns[i].clone())
        .collect()
}

/// True if a local subscription's interest is a reply inbox or a reply
/// alias: those never become upstream subscriptions (replies come back
/// under [`REPLY_PREFIX`]).
pub fn is_reply_interest(pattern: &str) -> bool {
    pattern.starts_with(libbus::subject::INBOX_PREFIX)
        || pattern.starts_with(REPLY_PREFIX)
        || pattern.starts_with(NATIVE_REPLY_PREFIX)
}

/// What a local publish to `subject` becomes upstream: `Some(subject)` to
/// send, `None` to keep it here. Replies to upstream requests always go;
/// local inboxes never; anything else if an `export` pattern matches.
///
/// ```
/// use busd::upstream::mapping::{export_subject, reply_root};
/// let (export, own) = (vec!["orders.>".to_owned()], reply_root("host-a"));
/// assert_eq!(export_subject("orders.new", &export, &own), Some("orders.new"));
/// assert_eq!(export_subject("stock.new", &export, &own), None);
/// // An answer to a native NATS requester goes back under its own inbox.
/// assert_eq!(export_subject("_BUSN._INBOX.x.1", &export, &own), Some("_INBOX.x.1"));
/// ```
pub fn export_subject<'s>(subject: &'s str, export: &[String], own: &str) -> Option<&'s str> {
    if let Some(native) = subject.strip_prefix(NATIVE_REPLY_PREFIX) {
        return Some(native);
    }
    if subject.starts_with(REPLY_PREFIX) {
        // Another daemon's reply subject goes back up; ours stays here.
        return (!subject.starts_with(own)).then_some(subject);
    }
    if subject.starts_with(RESERVED_PREFIX) || subject.starts_with(libbus::subject::INBOX_PREFIX) {
        return None;
    }
    export
        .iter()
        .any(|p| libbus::subject::matches(p, subject))
        .then_some(subject)
}

/// The reply subject a local request goes up with. `own` is
/// [`reply_root`]; `local_takers`: local responders got it too.
pub fn outbound_reply(reply: &str, own: &str, local_takers: bool) -> String {
    if let Some(native) = reply.strip_prefix(NATIVE_REPLY_PREFIX) {
        return native.to_owned();
    }
    if reply.starts_with(REPLY_PREFIX) {
        return reply.to_owned();
    }
    let flag = if local_takers { "l." } else { "n." };
    let mut s = String::with_capacity(own.len() + 2 + reply.len());
    s.push_str(own);
    s.push_str(flag);
    s.push_str(reply);
    s
}

/// `_BUSR.<node>.`: the root of this daemon's upstream reply subjects.
pub fn reply_root(node: &str) -> String {
    format!("{REPLY_PREFIX}{}.", node_token(node))
}

/// A reply that came back under [`reply_root`]: the local reply subject, and
/// whether local responders also had the request.
pub fn inbound_reply<'s>(subject: &'s str, own: &str) -> Option<(&'s str, bool)> {
    let rest = subject.strip_prefix(own)?;
    let (flag, local) = rest.split_once('.')?;
    match flag {
        "l" => Some((local, true)),
        "n" => Some((local, false)),
        _ => None,
    }
}

/// A reply subject that came down with a request, as local responders see it.
pub fn alias_reply(reply: &str) -> String {
    if reply.starts_with(REPLY_PREFIX) {
        reply.to_owned()
    } else {
        format!("{NATIVE_REPLY_PREFIX}{reply}")
    }
}

/// `Bus-Sender`'s value: `<conn id> <uid or -> <node>`.
pub fn sender_value(node: &str, from: Origin) -> String {
    match from.uid {
        Some(uid) => format!("{} {uid} {node}", from.conn_id),
        None => format!("{} - {node}", from.conn_id),
    }
}

/// Reads a `Bus-Sender` value: (node, origin).
pub fn parse_sender(v: &str) -> Option<(&str, Origin)> {
    let mut it = v.splitn(3, ' ');
    let conn_id = it.next()?.parse().ok()?;
    let uid = match it.next()? {
        "-" => None,
        u => Some(u.parse().ok()?),
    };
    let node = it.next().filter(|n| !n.is_empty())?;
    Some((node, Origin { conn_id, uid }))
}

/// A local header block (checked) as NATS headers, with the sender, the
/// queue groups served here, and for an error reply NATS's service error
/// headers too.
pub fn to_nats(block: Option<&[u8]>, sender: &str, handled: &[&str]) -> async_nats::HeaderMap {
    let mut h = async_nats::HeaderMap::new();
    if let Some(local) = block.and_then(|b| Headers::decode(b).ok()) {
        for (name, value) in local.iter() {
            h.append(name, value);
        }
        if let Some(code) = local.get(libbus::headers::ERROR_CODE) {
            h.insert(NATS_ERROR_CODE, code);
            h.insert(
                NATS_ERROR_TEXT,
                local.get(libbus::headers::ERROR_TEXT).unwrap_or(""),
            );
        }
    }
    h.insert(SENDER, sender);
    if !handled.is_empty() {
        h.insert(QUEUE_HANDLED, handled.join(" ").as_str());
    }
    h
}

/// What came down with a message's NATS headers: the local header block
/// (`None` if nothing is left), its sender if told, and the queue groups
/// its origin already served. A NATS service error becomes a bus error
/// reply.
#[derive(Debug, Default, PartialEq)]
pub struct Inbound<'h> {
    /// The encoded local header block.
    pub block: Option<Vec<u8>>,
    /// Its `Bus-Sender` value, as it came ([`parse_sender`] reads it).
    pub sender: Option<&'h str>,
    /// Queue groups already served at the origin.
    pub handled: Vec<&'h str>,
}

/// Reads NATS headers (see [`Inbound`]).
pub fn from_nats(h: Option<&async_nats::HeaderMap>) -> Inbound<'_> {
    let mut out = Inbound::default();
    let Some(h) = h else { return out };
    let mut local = Headers::new();
    for (name, values) in h.iter() {
        let name: &str = name.as_ref();
        for v in values {
            let v = v.as_str();
            if name.eq_ignore_ascii_case(SENDER) {
                out.sender = Some(v);
            } else if name.eq_ignore_ascii_case(QUEUE_HANDLED) {
                out.handled.extend(v.split(' ').filter(|g| !g.is_empty()));
            } else {
                local.append(name, v);
            }
        }
    }
    if local.get(libbus::headers::ERROR_CODE).is_none() {
        if let Some(code) = local.get(NATS_ERROR_CODE).map(str::to_owned) {
            let text = local.get(NATS_ERROR_TEXT).unwrap_or("").to_owned();
            local.insert(libbus::headers::ERROR_CODE, code);
            local.insert(libbus::headers::ERROR_TEXT, text);
        }
    }
    if !local.is_empty() {
        out.block = local.encode().ok();
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn patterns_meet_in_one_pattern_or_none() {
        let cases = [
            (">", "orders.>", Some("orders.>")),
            ("orders.*", "orders.>", Some("orders.*")),
            ("*.b", "a.*", Some("a.b")),
            ("a.>", "a.b.c", Some("a.b.c")),
            ("a.*", "a.b.c", None),
            ("a.b", "a.c", None),
            ("*", ">", Some("*")),
            ("a.*.c", "a.b.>", Some("a.b.c")),
        ];
        for (a, b, want) in cases {
            assert_eq!(meet(a, b).as_deref(), want, "{a} ∧ {b}");
            assert_eq!(meet(b, a).as_deref(), want, "{b} ∧ {a}");
        }
        // The meet matches exactly what both match.
        for (a, b) in [("a.*.>", "*.x.y"), ("a.>", "*.*"), ("*.b.>", "a.*.c")] {
            let m = meet(a, b);
            for s in ["a.x.y", "a.b", "a.b.c", "q.x.y", "a.x.y.z", "a.b.c.d"] {
                let both = libbus::subject::matches(a, s) && libbus::subject::matches(b, s);
                let got = m.as_deref().is_some_and(|m| libbus::subject::matches(m, s));
                assert_eq!(got, both, "{a} ∧ {b} on {s}");
            }
        }
    }

    #[test]
    fn covered_patterns_are_dropped() {
        let v = |s: &[&str]| s.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        assert_eq!(
            without_covered(&v(&["a.*", "a.>", "b", "b", "*.c"])),
            v(&["a.>", "b", "*.c"])
        );
        assert_eq!(without_covered(&v(&[">", "a.b"])), v(&[">"]));
    }

    #[test]
    fn replies_map_out_and_back() {
        let own = reply_root("host.a");
        assert_eq!(own, "_BUSR.host_a.");
        let up = outbound_reply("_INBOX.x.1", &own, false);
        assert_eq!(up, "_BUSR.host_a.n._INBOX.x.1");
        assert_eq!(inbound_reply(&up, &own), Some(("_INBOX.x.1", false)));
        let up = outbound_reply("_INBOX.x.1", &own, true);
        assert_eq!(inbound_reply(&up, &own), Some(("_INBOX.x.1", true)));
        assert_eq!(inbound_reply("_BUSR.host_b.n._INBOX.x.1", &own), None);
        // A native requester's inbox, and another daemon's, as responders here see them.
        assert_eq!(alias_reply("_INBOX.abc.7"), "_BUSN._INBOX.abc.7");
        assert_eq!(
            alias_reply("_BUSR.host_b.n._INBOX.x.1"),
            "_BUSR.host_b.n._INBOX.x.1"
        );
        // Answers go back up under the subject they came with.
        let export = vec!["orders.>".to_owned()];
        assert_eq!(
            export_subject("_BUSN._INBOX.abc.7", &export, &own),
            Some("_INBOX.abc.7")
        );
        assert_eq!(
            export_subject("_BUSR.host_b.n._INBOX.x.1", &export, &own),
            Some("_BUSR.host_b.n._INBOX.x.1")
        );
        assert_eq!(export_subject("_BUSR.host_a.n._INBOX.x.1", &export, &own), None);
        assert_eq!(export_subject("_INBOX.x.1", &export, &own), None);
        assert_eq!(export_subject("orders.new", &export, &own), Some("orders.new"));
        assert_eq!(export_subject("stock.new", &export, &own), None);
        assert_eq!(outbound_reply("_BUSN._INBOX.abc.7", &own, false), "_INBOX.abc.7");
    }

    #[test]
    fn headers_carry_sender_groups_and_errors() {
        let mut local = Headers::new();
        local.insert("trace", "abc");
        local.insert(libbus::headers::ERROR_CODE, "404");
        local.insert(libbus::headers::ERROR_TEXT, "no such order");
        let block = local.encode().unwrap();
        let from = Origin {
            conn_id: 7,
            uid: Some(1000),
        };
        let h = to_nats(Some(&block), &sender_value("host a", from), &["workers", "audit"]);
        assert_eq!(h.get(NATS_ERROR_CODE).map(|v| v.as_str()), Some("404"));
        let back = from_nats(Some(&h));
        assert_eq!(back.sender.and_then(parse_sender), Some(("host a", from)));
        assert_eq!(back.handled, ["workers", "audit"]);
        let got = Headers::decode(back.block.as_deref().unwrap()).unwrap();
        assert_eq!(got.get("trace"), Some("abc"));
        assert_eq!(got.get(libbus::headers::ERROR_TEXT), Some("no such order"));
        assert_eq!(got.get(SENDER), None);

        // A NATS service's error becomes a bus error reply.
        let mut native = async_nats::HeaderMap::new();
        native.insert(NATS_ERROR_CODE, "503");
        native.insert(NATS_ERROR_TEXT, "busy");
        let back = from_nats(Some(&native));
        let got = Headers::decode(back.block.as_deref().unwrap()).unwrap();
        assert_eq!(got.get(libbus::headers::ERROR_CODE), Some("503"));
        assert_eq!(got.get(libbus::headers::ERROR_TEXT), Some("busy"));
        assert_eq!(back.sender, None);
        assert_eq!(
            parse_sender("3 - n"),
            Some((
                "n",
                Origin {
                    conn_id: 3,
                    uid: None
                }
            ))
        );
        assert_eq!(parse_sender("x 1 n"), None);
    }
}
