//! Property tests (proptest): every frame survives encode → decode, arbitrary
//! bytes never panic the decoder, and subject validation and wildcard
//! matching agree with simple reference implementations.

use libbus::{
    codec,
    proto::{self, api, ClientFrame, ErrorCode, ServerFrame},
    subject, wire,
};
use proptest::prelude::*;

fn text() -> impl Strategy<Value = String> {
    prop_oneof!["[a-z.*>]{0,12}", any::<String>(), Just(String::new()),]
}

fn bytes() -> impl Strategy<Value = Vec<u8>> {
    prop::collection::vec(any::<u8>(), 0..300)
}

fn error_code() -> impl Strategy<Value = ErrorCode> {
    prop_oneof![
        Just(ErrorCode::Protocol),
        Just(ErrorCode::FrameTooLarge),
        Just(ErrorCode::VersionMismatch),
        Just(ErrorCode::HandshakeTimeout),
        Just(ErrorCode::InvalidSubject),
        Just(ErrorCode::Reserved),
        Just(ErrorCode::LimitExceeded),
        Just(ErrorCode::PermissionDenied),
        Just(ErrorCode::PingTimeout),
        Just(ErrorCode::Kicked),
        Just(ErrorCode::AuthenticationFailed),
        Just(ErrorCode::SlowConsumer),
        Just(ErrorCode::FdsNotPassed),
    ]
}

/// Encodes `frame`, finds it in the buffer with the frame splitter, decodes it.
fn through_the_wire<'a, T>(frame: &T, wire: &'a mut Vec<u8>) -> T
where
    T: serde::Serialize + serde::Deserialize<'a>,
{
    codec::encode_into(frame, wire, u32::MAX).expect("encodes");
    let Ok(codec::Next::Frame(body)) = codec::next_frame(wire, u32::MAX) else {
        panic!("one whole frame");
    };
    assert_eq!(proto::LEN_PREFIX + body.len(), wire.len(), "exactly one frame");
    assert_eq!(body, &wire[proto::LEN_PREFIX..]);
    codec::decode(&wire[proto::LEN_PREFIX..]).expect("decodes")
}

/// `body` with one byte flipped, cut short, followed by `noise`, and `noise` alone.
fn variants(body: &[u8], noise: &[u8], cut: prop::sample::Index, flip: prop::sample::Index) -> [Vec<u8>; 4] {
    let mut damaged = body.to_vec();
    let i = flip.index(damaged.len());
    damaged[i] ^= noise.first().copied().unwrap_or(0x80);
    let mut trailing = body.to_vec();
    trailing.extend_from_slice(noise);
    [
        damaged,
        body[..cut.index(body.len() + 1)].to_vec(),
        trailing,
        noise.to_vec(),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn client_frames_round_trip(
        kind in 0u8..11, a in text(), b in text(), opt in proptest::option::of(text()),
        n in any::<u64>(), v in any::<u16>(), payload in bytes(), flag in any::<bool>(),
    ) {
        let block = libbus::Headers::from_iter([(b.replace([' ', ':'], "_"), a.clone())]).encode().unwrap_or_default();
        let frame = match kind {
            0 => ClientFrame::Hello(proto::Hello {
                version: v, name: &a, role: proto::Role::Client, auth: opt.as_deref(),
            }),
            1 => ClientFrame::Pub(proto::Pub { subject: &a, reply_to: opt.as_deref(), payload: &payload }),
            2 => ClientFrame::Sub(proto::Sub { sid: n, pattern: &b, queue: opt.as_deref() }),
            3 => ClientFrame::Unsub { sid: n },
            4 => ClientFrame::Ping,
            5 => ClientFrame::Pong,
            6 => ClientFrame::HPub(proto::HPub { subject: &a, reply_to: opt.as_deref(), headers: &block, payload: &payload }),
            7 => ClientFrame::SubWith(proto::SubWith { sid: n, pattern: &b, queue: opt.as_deref(), sender: flag }),
            8 => ClientFrame::RequestName(proto::RequestName { serial: n, sid: !n, name: &a, flags: v as u8 }),
            9 => ClientFrame::ReleaseName { serial: n, name: &b, sid: u64::from(v) },
            _ => ClientFrame::Call(proto::Call { name: &a, subject: &b, reply_to: opt.as_deref(), headers: &block, payload: &payload }),
        };
        let mut wire = Vec::new();
        prop_assert_eq!(through_the_wire(&frame, &mut wire), frame);
    }

    #[test]
    fn server_frames_round_trip(
        kind in 0u8..14, a in text(), opt in proptest::option::of(text()),
        n in any::<u64>(), m in any::<u64>(), v in any::<u16>(), max in any::<u32>(),
        code in error_code(), payload in bytes(),
    ) {
        let replies = [
            proto::NameReply::PrimaryOwner, proto::NameReply::InQueue, proto::NameReply::Exists,
            proto::NameReply::AlreadyOwner, proto::NameReply::Released,
            proto::NameReply::NonExistent, proto::NameReply::NotOwner,
        ];
        let states = [proto::NameState::Primary, proto::NameState::Queued, proto::NameState::Lost];
        let frame = match kind {
            0 => ServerFrame::Welcome(proto::Welcome { version: v, conn_id: n, server_id: &a, max_frame: max }),
            1 => ServerFrame::Msg(proto::Msg { sid: n, subject: &a, reply_to: opt.as_deref(), payload: &payload }),
            2 => ServerFrame::Lagged { sid: n, dropped: m },
            3 => ServerFrame::NoResponders { reply_to: &a },
            4 => ServerFrame::Error { code, message: &a },
            5 => ServerFrame::Ping,
            6 => ServerFrame::Pong,
            7 => ServerFrame::ResponderGone { reply_to: &a },
            8 => ServerFrame::HMsg(proto::HMsg { sid: n, subject: &a, reply_to: opt.as_deref(), headers: &payload, payload: &payload }),
            9 => ServerFrame::SubRefused { sid: n, code, message: &a },
            10 => ServerFrame::NameReply { serial: n, reply: replies[v as usize % replies.len()] },
            11 => ServerFrame::NameRefused { serial: n, code, message: &a },
            12 => ServerFrame::NameState { sid: n, name: &a, state: states[v as usize % states.len()] },
            _ => ServerFrame::SMsg { sid: n, sender: &payload, publish: &payload },
        };
        let mut wire = Vec::new();
        prop_assert_eq!(through_the_wire(&frame, &mut wire), frame);
    }

    #[test]
    fn link_frames_round_trip(
        kind in 0u8..9, a in text(), b in text(), opt in proptest::option::of(text()),
        n in any::<u64>(), payload in bytes(), uid in proptest::option::of(any::<u32>()),
        links in prop::collection::vec(text(), 0..4),
        targets in prop::collection::vec((text(), text()), 0..3),
    ) {
        use libbus::proto::link::{Interest, LinkFrame, NodeState, Origin, Routed};
        let routed = Routed {
            origin: &a,
            subject: &b,
            reply_to: opt.as_deref(),
            payload: &payload,
            queue_targets: targets.iter().map(|(g, n)| (g.as_str(), n.as_str())).collect(),
        };
        let frame = match kind {
            0 => LinkFrame::State(NodeState {
                node: a.clone(),
                version: n,
                links: links.clone(),
                interest: vec![Interest { pattern: b.clone(), queue: opt.clone() }],
            }),
            1 => LinkFrame::Msg(routed),
            2 => LinkFrame::Ping,
            3 => LinkFrame::Pong,
            4 => LinkFrame::Closing,
            5 => LinkFrame::Closed,
            6 => LinkFrame::HMsg(&payload, routed),
            7 => LinkFrame::Lost { origin: &a, subject: &b, count: n },
            _ => LinkFrame::Sent(Origin { conn_id: n, uid }, &payload, routed),
        };
        let mut wire = Vec::new();
        prop_assert_eq!(through_the_wire(&frame, &mut wire), frame);
    }

    #[test]
    fn pub_encoding_matches_postcard(
        a in text(), opt in proptest::option::of(text()), payload in bytes(), max in prop_oneof![any::<u32>(), 0u32..300],
    ) {
        let p = proto::Pub { subject: &a, reply_to: opt.as_deref(), payload: &payload };
        let (mut generic, mut direct) = (vec![9u8], vec![9u8]);
        let g = codec::encode_into(&ClientFrame::Pub(p.clone()), &mut generic, max);
        let d = wire::encode_pub(&p, &mut direct, max);
        prop_assert_eq!(g.is_ok(), d.is_ok());
        prop_assert_eq!(generic, direct);
    }

    #[test]
    fn run_decoding_matches_postcard(
        sid in any::<u64>(), frames in bytes(),
        noise in prop::collection::vec(any::<u8>(), 0..64), cut in any::<prop::sample::Index>(),
        flip in any::<prop::sample::Index>(),
    ) {
        let run = ServerFrame::Run { sid, frames: &frames };
        let mut wire = Vec::new();
        codec::encode_into(&run, &mut wire, u32::MAX).unwrap();
        let body = &wire[proto::LEN_PREFIX..];
        prop_assert_eq!(wire::raw_run(body).is_some(), sid < 1 << 63);
        // Whatever the direct reader accepts, damaged or not, postcard
        // decodes to the same Run.
        for b in &variants(body, &noise, cut, flip) {
            if let Some((sid, frames)) = wire::raw_run(b) {
                prop_assert_eq!(codec::decode::<ServerFrame>(b).ok(), Some(ServerFrame::Run { sid, frames }));
            }
        }
    }

    #[test]
    fn msg_decoding_matches_postcard(
        a in text(), opt in proptest::option::of(text()), sid in any::<u64>(), payload in bytes(),
        noise in prop::collection::vec(any::<u8>(), 0..64), cut in any::<prop::sample::Index>(),
        flip in any::<prop::sample::Index>(),
    ) {
        let msg = ServerFrame::Msg(proto::Msg { sid, subject: &a, reply_to: opt.as_deref(), payload: &payload });
        let mut wire = Vec::new();
        codec::encode_into(&msg, &mut wire, u32::MAX).unwrap();
        let body = &wire[proto::LEN_PREFIX..];
        prop_assert_eq!(codec::decode::<ServerFrame>(body).unwrap(), msg);
        // The client's receive path reads plain encodings without postcard
        // (sids from 2^63 take a 10-byte varint, left to postcard).
        prop_assert_eq!(wire::raw_msg(body).is_some(), sid < 1 << 63);
        // Damaged, cut short, or followed by bytes postcard ignores.
        for b in &variants(body, &noise, cut, flip) {
            let generic = codec::decode::<ServerFrame>(b);
            // Whatever the raw path accepts, postcard decodes to the same Msg
            // (UTF-8 checks included); what it leaves, the reader hands to postcard.
            if let Some(raw) = wire::raw_msg(b) {
                let Ok(ServerFrame::Msg(m)) = &generic else {
                    return Err(TestCaseError::fail(format!("raw path accepted {b:?}")));
                };
                prop_assert_eq!(
                    (raw.sid, raw.subject, raw.reply_to, raw.payload),
                    (m.sid, m.subject.as_bytes(), m.reply_to.map(str::as_bytes), m.payload)
                );
            }
        }
    }

    #[test]
    fn raw_pub_agrees_with_postcard(
        a in text(), opt in proptest::option::of(text()), payload in bytes(),
        noise in prop::collection::vec(any::<u8>(), 0..64), cut in any::<prop::sample::Index>(),
        flip in any::<prop::sample::Index>(),
    ) {
        let frame = ClientFrame::Pub(proto::Pub { subject: &a, reply_to: opt.as_deref(), payload: &payload });
        let mut wire = Vec::new();
        codec::encode_into(&frame, &mut wire, u32::MAX).unwrap();
        let body = &wire[proto::LEN_PREFIX..];
        let raw = wire::raw_pub(body).unwrap();
        prop_assert_eq!(
            (raw.subject, raw.reply_to, raw.payload),
            (a.as_bytes(), opt.as_deref().map(str::as_bytes), &payload[..])
        );
        // On damaged, cut or padded frames: whatever the raw path accepts
        // with UTF-8 subjects, postcard decodes to the same Pub.
        for b in &variants(body, &noise, cut, flip) {
            let Some(raw) = wire::raw_pub(b) else { continue };
            let utf8 = std::str::from_utf8(raw.subject).is_ok()
                && raw.reply_to.is_none_or(|r| std::str::from_utf8(r).is_ok());
            let generic = codec::decode::<ClientFrame>(b);
            prop_assert_eq!(utf8, generic.is_ok(), "{:?}", b);
            if let Ok(ClientFrame::Pub(p)) = generic {
                prop_assert_eq!(
                    (raw.subject, raw.reply_to, raw.payload),
                    (p.subject.as_bytes(), p.reply_to.map(str::as_bytes), p.payload)
                );
            } else if utf8 {
                return Err(TestCaseError::fail(format!("raw path accepted {b:?}")));
            }
        }
    }

    #[test]
    fn deliveries_spliced_from_publishes_decode_as_msg(
        a in text(), opt in proptest::option::of(text()), sid in any::<u64>(), payload in bytes(),
    ) {
        let mut wire = Vec::new();
        let p = ClientFrame::Pub(proto::Pub { subject: &a, reply_to: opt.as_deref(), payload: &payload });
        codec::encode_into(&p, &mut wire, u32::MAX).unwrap();
        let mut spliced = Vec::new();
        wire::encode_msg_from_pub(&wire[proto::LEN_PREFIX..], sid, &mut spliced);
        let got: ServerFrame = codec::decode(&spliced[proto::LEN_PREFIX..]).unwrap();
        prop_assert_eq!(got, ServerFrame::Msg(proto::Msg {
            sid, subject: &a, reply_to: opt.as_deref(), payload: &payload,
        }));
    }

    #[test]
    fn hpub_deliveries_decode_with_and_without_headers(
        a in text(), opt in proptest::option::of(text()), sid in any::<u64>(), payload in bytes(),
        pairs in prop::collection::vec(("[A-Za-z0-9-]{1,12}", "[ -~]{0,20}"), 0..5),
    ) {
        let block = libbus::Headers::from_iter(pairs).encode().unwrap();
        let mut wire = Vec::new();
        let p = ClientFrame::HPub(proto::HPub { subject: &a, reply_to: opt.as_deref(), headers: &block, payload: &payload });
        codec::encode_into(&p, &mut wire, u32::MAX).unwrap();
        for headers in [true, false] {
            let mut out = Vec::new();
            wire::encode_delivery(&wire[proto::LEN_PREFIX..], sid, headers, &mut out);
            prop_assert_eq!(out.len(), wire::delivery_len(&wire[proto::LEN_PREFIX..], sid, headers));
            let got: ServerFrame = codec::decode(&out[proto::LEN_PREFIX..]).unwrap();
            let want = if headers {
                ServerFrame::HMsg(proto::HMsg { sid, subject: &a, reply_to: opt.as_deref(), headers: &block, payload: &payload })
            } else {
                ServerFrame::Msg(proto::Msg { sid, subject: &a, reply_to: opt.as_deref(), payload: &payload })
            };
            prop_assert_eq!(got, want);
        }
    }

    #[test]
    fn arbitrary_header_blocks_never_panic(data in prop::collection::vec(any::<u8>(), 0..512), sid in any::<u64>()) {
        let _ = libbus::headers::check(&data, u32::MAX);
        let _ = libbus::Headers::decode(&data);
        // An HPub body made of noise still splices without panicking.
        let mut body = vec![wire::HPUB_TAG];
        body.extend_from_slice(&data);
        for headers in [true, false] {
            let mut out = Vec::new();
            wire::encode_delivery(&body, sid, headers, &mut out);
            prop_assert_eq!(out.len(), wire::delivery_len(&body, sid, headers));
        }
    }

    #[test]
    fn arbitrary_bytes_never_panic_the_decoder(data in prop::collection::vec(any::<u8>(), 0..2048), max in 0u32..4096) {
        let mut at = 0;
        // Each successful step consumes at least the 4-byte prefix: bounded.
        for _ in 0..=data.len() / 4 {
            match codec::next_frame(&data[at..], max) {
                Ok(codec::Next::Frame(body)) => {
                    at += proto::LEN_PREFIX + body.len();
                    prop_assert!(body.len() <= max as usize);
                    let _ = codec::decode::<ClientFrame>(body);
                    let _ = codec::decode::<ServerFrame>(body);
                    let _ = codec::decode::<api::ServerInfo>(body);
                    let _ = codec::decode::<Vec<api::ConnInfo>>(body);
                    let _ = codec::decode::<proto::link::LinkFrame>(body);
                }
                Ok(codec::Next::Incomplete { .. }) | Err(_) => break,
            }
        }
        // Whole input as a body, too (no framing).
        let _ = codec::decode::<ClientFrame>(&data);
        let _ = codec::decode::<ServerFrame>(&data);
        let _ = codec::decode::<api::ConnEvent>(&data);
    }

    #[test]
    fn validation_agrees_with_reference(s in prop_oneof!["[ab.*> \t]{0,10}", any::<String>()]) {
        prop_assert_eq!(subject::validate_subject(&s).is_ok(), reference_valid(&s, false), "subject {:?}", s);
        prop_assert_eq!(subject::validate_pattern(&s).is_ok(), reference_valid(&s, true), "pattern {:?}", s);
    }

    #[test]
    fn matching_agrees_with_reference(p in pattern(), s in literal()) {
        prop_assert_eq!(subject::matches(&p, &s), reference_match(&tokens(&p), &tokens(&s)), "{} vs {}", p, s);
    }
}

/// Patterns over a tiny alphabet so that matches are frequent.
fn pattern() -> impl Strategy<Value = String> {
    (
        prop::collection::vec(prop_oneof!["a", "b", "c", Just("*".to_owned())], 0..5),
        any::<bool>(),
    )
        .prop_map(|(mut t, tail)| {
            if tail || t.is_empty() {
                t.push(">".into());
            }
            t.join(".")
        })
}

fn literal() -> impl Strategy<Value = String> {
    prop::collection::vec(prop_oneof!["a", "b", "c"], 1..6).prop_map(|t| t.join("."))
}

fn tokens(s: &str) -> Vec<&str> {
    s.split('.').collect()
}

/// The specification, written as plainly as possible: tokens are separated by
/// dots and non-empty; no whitespace or control characters; wildcards are
/// whole tokens, allowed only in patterns, `>` only last.
fn reference_valid(s: &str, patterns: bool) -> bool {
    let t = tokens(s);
    let n = t.len();
    !s.is_empty()
        && t.iter().all(|tok| !tok.is_empty())
        && !s.chars().any(|c| c.is_whitespace() || c.is_control())
        && t.iter().enumerate().all(|(i, tok)| match *tok {
            "*" => patterns,
            ">" => patterns && i == n - 1,
            _ => true,
        })
}

/// Recursive matcher over token lists: `*` eats one token, `>` one or more.
fn reference_match(p: &[&str], s: &[&str]) -> bool {
    match (p.split_first(), s.split_first()) {
        (None, None) => true,
        (Some((&">", _)), Some(_)) => true,
        (Some((&"*", pr)), Some((_, sr))) => reference_match(pr, sr),
        (Some((pt, pr)), Some((st, sr))) => pt == st && reference_match(pr, sr),
        _ => false,
    }
}
