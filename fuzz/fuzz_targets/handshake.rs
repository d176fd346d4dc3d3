//! The daemon's handshake on arbitrary input: the first frame goes through
//! `busd::conn::check_hello` exactly as a connection's would; only a valid
//! `Hello` of the current protocol version is accepted, and every refusal has
//! a message. After an accepted `Hello`, the following frames go through the
//! same decoding and subject checks as the connection's reader.
#![no_main]

use libbus::{
    codec::{self, Next},
    proto::{self, ClientFrame, LEN_PREFIX},
    subject,
};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let first = match codec::next_frame(data, 4096) {
        Ok(Next::Frame(f)) => f,
        _ => return, // needs more bytes, or refused by the frame splitter
    };
    let mut at = LEN_PREFIX + first.len();
    match busd::conn::check_hello(first) {
        Ok(hello) => {
            let Ok(ClientFrame::Hello(h)) = codec::decode::<ClientFrame>(first) else {
                panic!("accepted something that is not a Hello");
            };
            assert!((proto::MIN_PROTOCOL_VERSION..=proto::PROTOCOL_VERSION).contains(&h.version));
            assert_eq!(h.version, hello.version);
            assert_eq!(h.name, hello.name);
            assert_eq!(h.auth, hello.auth.as_deref());
            assert_eq!(h.role, hello.role);
            // The token check never panics, whatever was presented.
            let _ = busd::tcp::token_matches("expected-token", hello.auth.as_deref());
        }
        Err((_, message)) => {
            assert!(!message.is_empty());
            return;
        }
    }
    while let Ok(Next::Frame(frame)) = codec::next_frame(&data[at..], 4096) {
        at += LEN_PREFIX + frame.len();
        match codec::decode::<ClientFrame>(frame) {
            Ok(ClientFrame::Pub(p)) => {
                if subject::validate_subject(p.subject).is_ok() {
                    assert!(!p.subject.is_empty());
                }
            }
            Ok(ClientFrame::Sub(s)) => {
                if subject::validate_pattern(s.pattern).is_ok() {
                    assert!(!s.pattern.is_empty());
                }
            }
            // The reader closes the connection on a second Hello.
            Ok(ClientFrame::Hello(_)) => break,
            _ => {}
        }
    }
});
