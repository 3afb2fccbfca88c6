#![no_main]
//! Client handshake response parsing: any bytes, never a panic.
use libfuzzer_sys::fuzz_target;
use wsx_proto::handshake::client::{ClientHandshake, ClientHandshakeConfig};
use wsx_proto::DeflateConfig;

fuzz_target!(|data: &[u8]| {
    let cfg = ClientHandshakeConfig::default()
        .subprotocols(["chat"])
        .deflate(Some(DeflateConfig::default()));
    let (hs, _) = ClientHandshake::with_key(*b"0123456789abcdef", "h", "/", &cfg);
    for eof in [false, true] {
        if let Ok(Some((_, used))) = hs.parse_response(data, eof) {
            assert!(used <= data.len());
        }
    }
});
