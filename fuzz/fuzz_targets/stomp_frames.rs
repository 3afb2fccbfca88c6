//! The STOMP frame decoder on arbitrary bytes in arbitrary pieces: never panics, stays
//! within its limits, and every escaped frame it decodes re-encodes to bytes that decode
//! to the same frame (STOMP 1.2).
#![no_main]

use libfuzzer_sys::fuzz_target;

// The codec is pure (it needs only `bytes`): built from its source, so the fuzz build
// does not compile the hub's server dependencies.
#[path = "../../crates/wsx-hub/src/stomp/frame.rs"]
#[allow(dead_code, missing_docs)]
mod frame;

use frame::{encode, Decoder, Item, Limits, Version};

fuzz_target!(|data: &[u8]| {
    let Some((&opts, stream)) = data.split_first() else {
        return;
    };
    let limits = Limits {
        max_headers: 8,
        max_header_bytes: 256,
        max_body: 1024,
    };
    let version = [Version::V1_0, Version::V1_1, Version::V1_2][opts as usize % 3];
    let mut d = Decoder::new(limits);
    d.set_version(version);
    let piece = 1 + (opts as usize >> 2);
    for chunk in stream.chunks(piece) {
        d.push(chunk);
        loop {
            match d.next() {
                Ok(Some(Item::Frame(f))) => {
                    assert!(f.headers.len() <= limits.max_headers);
                    assert!(f.body.len() <= limits.max_body);
                    // Escaped frames round-trip exactly (unescaped ones cannot carry a
                    // value's trailing carriage return).
                    if version == Version::V1_2 && f.command.escapes_headers(version) {
                        let bytes = encode(&f, version);
                        let mut again = Decoder::new(Limits {
                            max_headers: 64,
                            max_header_bytes: 1 << 16,
                            max_body: 1 << 16,
                        });
                        again.set_version(version);
                        again.push(&bytes);
                        match again.next() {
                            Ok(Some(Item::Frame(g))) => assert_eq!(f, g),
                            other => panic!("re-encoded frame did not decode: {other:?}"),
                        }
                    }
                }
                Ok(Some(Item::HeartBeat)) => {}
                Ok(None) | Err(_) => break,
            }
        }
    }
});
