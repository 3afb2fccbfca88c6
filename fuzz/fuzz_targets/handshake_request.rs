#![no_main]
//! Server handshake parsing: any bytes give a request, a need for more, or a refusal
//! whose response is a complete HTTP message.
use libfuzzer_sys::fuzz_target;
use wsx_proto::handshake::server::{parse_request, respond, ServerHandshakeConfig};
use wsx_proto::DeflateConfig;

fuzz_target!(|data: &[u8]| {
    let cfg = ServerHandshakeConfig::default()
        .subprotocols(["a", "b"])
        .deflate(Some(DeflateConfig::default()));
    match parse_request(data, &cfg) {
        Ok(Some((req, used))) => {
            assert!(used <= data.len());
            match respond(&req, &cfg) {
                Ok(a) => assert!(a.response.starts_with(b"HTTP/1.1 101 ")),
                Err(r) => assert!((400..600).contains(&r.status)),
            }
        }
        Ok(None) => {}
        Err(r) => assert!((400..600).contains(&r.status)),
    }
});
