//! Arbitrary bytes through the frame splitter and every frame decoder
//! (client, server, bridge link): no
//! panic, no allocation beyond the limit, and every frame that decodes
//! re-encodes to something that decodes to the same value.
#![no_main]

use bytes::BytesMut;
use libbus::{
    codec,
    proto::{link::LinkFrame, ClientFrame, ServerFrame, LEN_PREFIX},
    wire,
};
use libfuzzer_sys::fuzz_target;
use tokio_util::codec::{Decoder, LengthDelimitedCodec};

/// Small, so the fuzzer reaches the "too large" path often.
const MAX_FRAME: u32 = 4096;

/// Decodes `body` as `$t`; if that works, encode → decode → encode must
/// reproduce the same bytes and value.
macro_rules! round_trip {
    ($t:ty, $body:expr) => {
        if let Ok(value) = codec::decode::<$t>($body) {
            let mut again = Vec::new();
            codec::encode_into(&value, &mut again, u32::MAX).expect("a decoded frame encodes");
            let value2: $t = codec::decode(&again[LEN_PREFIX..]).expect("an encoded frame decodes");
            assert_eq!(value, value2);
            let mut again2 = Vec::new();
            codec::encode_into(&value2, &mut again2, u32::MAX).expect("encodes");
            assert_eq!(again, again2, "encoding is stable");
        }
    };
}

fuzz_target!(|data: &[u8]| {
    // tokio-util's codec is the independent reference: the in-place splitter
    // (every reader of the bus) must agree with it frame by frame, including
    // where it refuses, and the direct Msg and Pub readers must agree with
    // postcard.
    let mut reference = LengthDelimitedCodec::builder()
        .little_endian()
        .length_field_length(LEN_PREFIX)
        .max_frame_length(MAX_FRAME as usize)
        .new_codec();
    let mut buf = BytesMut::from(data);
    let mut at = 0;
    loop {
        let in_place = codec::next_frame(&data[at..], MAX_FRAME);
        match reference.decode(&mut buf) {
            Ok(Some(frame)) => {
                assert_eq!(in_place.ok(), Some(codec::Next::Frame(&frame[..])));
                at += LEN_PREFIX + frame.len();
                assert!(frame.len() <= MAX_FRAME as usize);
                // The client's direct Msg reader must agree with postcard.
                if let Some(raw) = wire::raw_msg(&frame) {
                    let Ok(ServerFrame::Msg(m)) = codec::decode::<ServerFrame>(&frame) else {
                        panic!("raw_msg accepted what postcard refuses");
                    };
                    assert_eq!(
                        (raw.sid, raw.subject, raw.reply_to, raw.payload),
                        (
                            m.sid,
                            m.subject.as_bytes(),
                            m.reply_to.map(str::as_bytes),
                            m.payload
                        )
                    );
                }
                // busd's fast path reads a Pub without postcard and without
                // checking UTF-8: where the subjects are UTF-8, it must agree
                // with postcard exactly.
                if let Some(raw) = wire::raw_pub(&frame) {
                    let utf8 = std::str::from_utf8(raw.subject).is_ok()
                        && raw.reply_to.is_none_or(|r| std::str::from_utf8(r).is_ok());
                    match codec::decode::<ClientFrame>(&frame) {
                        Ok(ClientFrame::Pub(p)) => assert_eq!(
                            (raw.subject, raw.reply_to, raw.payload),
                            (p.subject.as_bytes(), p.reply_to.map(str::as_bytes), p.payload)
                        ),
                        _ => assert!(!utf8, "raw_pub accepted what postcard refuses"),
                    }
                }
                // A client's direct Run reader must agree with postcard too.
                if let Some((sid, frames)) = wire::raw_run(&frame) {
                    assert_eq!(
                        codec::decode::<ServerFrame>(&frame).ok(),
                        Some(ServerFrame::Run { sid, frames })
                    );
                }
                // The protocol 4 readers (headers, senders) likewise.
                if let Some(raw) = wire::raw_hpub(&frame) {
                    let utf8 = std::str::from_utf8(raw.subject).is_ok()
                        && raw.reply_to.is_none_or(|r| std::str::from_utf8(r).is_ok());
                    match codec::decode::<ClientFrame>(&frame) {
                        Ok(ClientFrame::HPub(p)) => assert_eq!(
                            (raw.subject, raw.reply_to, raw.headers, raw.payload),
                            (
                                p.subject.as_bytes(),
                                p.reply_to.map(str::as_bytes),
                                Some(p.headers),
                                p.payload
                            )
                        ),
                        _ => assert!(!utf8, "raw_hpub accepted what postcard refuses"),
                    }
                    // The daemon's check of a block never panics.
                    let _ = libbus::headers::check(raw.headers.unwrap_or_default(), MAX_FRAME);
                }
                if let Some((raw, headers)) = wire::raw_hmsg(&frame) {
                    let Ok(ServerFrame::HMsg(m)) = codec::decode::<ServerFrame>(&frame) else {
                        panic!("raw_hmsg accepted what postcard refuses");
                    };
                    assert_eq!((raw.sid, raw.payload, headers), (m.sid, m.payload, m.headers));
                }
                if let Some((sid, sender, _)) = wire::raw_smsg(&frame) {
                    let Ok(ServerFrame::SMsg {
                        sid: s, sender: b, ..
                    }) = codec::decode::<ServerFrame>(&frame)
                    else {
                        panic!("raw_smsg accepted what postcard refuses");
                    };
                    assert_eq!((sid, sender), (s, b));
                }
                // A delivery spliced from any publish body never panics.
                for headers in [true, false] {
                    let mut out = Vec::new();
                    wire::encode_delivery(&frame, 1, headers, &mut out);
                    assert_eq!(out.len(), wire::delivery_len(&frame, 1, headers));
                }
                round_trip!(ClientFrame, &frame);
                round_trip!(ServerFrame, &frame);
                round_trip!(LinkFrame, &frame);
            }
            Ok(None) => {
                assert!(matches!(in_place, Ok(codec::Next::Incomplete { .. })));
                return;
            }
            Err(e) => {
                assert!(matches!(in_place, Err(codec::CodecError::TooLarge { .. })), "{e}");
                return;
            }
        }
    }
});
