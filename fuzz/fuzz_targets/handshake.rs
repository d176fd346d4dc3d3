//! The daemon's handshake on arbitrary input: the first frame goes through
//! `busd::conn::check_hello` exactly as a connection's would; only a valid
//! `Hello` of the current protocol version is accepted, and every refusal has
//! a message. After an accepted `Hello`, the following frames go through the
//! same decoding and subject checks as the connection's reader.
#![no_main]

use bytes::BytesMut;
use libbus::{
    codec,
    proto::{self, ClientFrame},
    subject,
};
use libfuzzer_sys::fuzz_target;
use tokio_util::codec::Decoder;

fuzz_target!(|data: &[u8]| {
    let mut codec = codec::frame_codec(4096);
    let mut buf = BytesMut::from(data);
    let first = match codec.decode(&mut buf) {
        Ok(Some(f)) => f,
        _ => return, // needs more bytes, or refused by the frame splitter
    };
    match busd::conn::check_hello(&first) {
        Ok(hello) => {
            let Ok(ClientFrame::Hello(h)) = codec::decode::<ClientFrame>(&first) else {
                panic!("accepted something that is not a Hello");
            };
            assert_eq!(h.version, proto::PROTOCOL_VERSION);
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
    while let Ok(Some(frame)) = codec.decode(&mut buf) {
        match codec::decode::<ClientFrame>(&frame) {
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
