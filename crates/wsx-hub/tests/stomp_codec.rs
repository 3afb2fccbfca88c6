//! Properties of the STOMP codec: any frame round-trips through encode and decode
//! (in any split of its bytes), and arbitrary bytes never panic the decoder.
#![allow(clippy::unwrap_used)]

use proptest::prelude::*;
use wsx_hub::stomp::frame::{encode, Command, Decoder, Frame, Item, Limits, Version};

/// Commands whose headers are escaped (CONNECT, STOMP and CONNECTED never are).
fn command() -> impl Strategy<Value = Command> {
    let escaped: Vec<Command> = Command::ALL
        .into_iter()
        .filter(|c| c.escapes_headers(Version::V1_2))
        .collect();
    prop::sample::select(escaped)
}

fn frame() -> impl Strategy<Value = Frame> {
    (
        command(),
        // Names and values with every character escaping must handle.
        prop::collection::vec(("[a-z:\\\\\\n\\r-]{1,8}", "[ -~:\\\\\\n\\r]{0,12}"), 0..6),
        prop::collection::vec(any::<u8>(), 0..64),
    )
        .prop_map(|(command, headers, body)| {
            let mut f = Frame::new(command);
            f.headers = headers;
            f.headers.retain(|(n, _)| n != "content-length");
            f.headers
                .insert(0, ("content-length".into(), body.len().to_string()));
            f.body = body.into();
            f
        })
}

fn decode_in_pieces(bytes: &[u8], piece: usize) -> Vec<Frame> {
    let mut limits = Limits::default();
    limits.max_headers = 16;
    let mut d = Decoder::new(limits);
    d.set_version(Version::V1_2);
    let mut out = Vec::new();
    for chunk in bytes.chunks(piece.max(1)) {
        d.push(chunk);
        while let Some(item) = d.next().unwrap() {
            if let Item::Frame(f) = item {
                out.push(f);
            }
        }
    }
    out
}

proptest! {
    #[test]
    fn any_frame_round_trips_in_any_split(frames in prop::collection::vec(frame(), 1..4), piece in 1usize..40) {
        let mut bytes = Vec::new();
        for f in &frames {
            bytes.extend_from_slice(&encode(f, Version::V1_2));
            bytes.push(b'\n'); // a heart-beat between frames
        }
        prop_assert_eq!(decode_in_pieces(&bytes, piece), frames);
    }

    #[test]
    fn arbitrary_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..512), piece in 1usize..64) {
        let mut limits = Limits::default();
        limits.max_body = 128;
        limits.max_header_bytes = 128;
        let mut d = Decoder::new(limits);
        for chunk in bytes.chunks(piece) {
            d.push(chunk);
            while let Ok(Some(_)) = d.next() {}
        }
    }
}
