//! The zlib stream pool of permessage-deflate: codecs give their streams back when they
//! drop, the next codecs take them (no new allocation), a reused stream starts clean, and
//! a peer that resets its context after each message holds no stream between messages.
//! One test in its own binary: the pool is process-wide.

use wsx_proto::extensions::permessage_deflate::{
    pooled_streams, DeflateCodec, POOL_DEFLATERS, POOL_INFLATERS,
};
use wsx_proto::DeflateParams;

fn params(client_resets: bool) -> DeflateParams {
    DeflateParams {
        server_no_context_takeover: false,
        client_no_context_takeover: client_resets,
        server_max_window_bits: 15,
        client_max_window_bits: 15,
    }
}

/// "Hello", compressed (RFC 7692 §7.2.3.1).
const HELLO: [u8; 7] = [0xf2, 0x48, 0xcd, 0xc9, 0xc9, 0x07, 0x00];

fn receive(codec: &mut DeflateCodec, data: &[u8]) -> Result<Vec<u8>, wsx_proto::Error> {
    let mut out = Vec::new();
    codec.decompress(data, true, &mut out, 1 << 20)?;
    Ok(out)
}

#[test]
fn streams_are_pooled_reset_and_not_held_by_resetting_peers() {
    assert_eq!(pooled_streams(), (0, 0));

    // Ten server codecs that received and sent with context takeover, then dropped.
    let mut codecs: Vec<DeflateCodec> = (0..10)
        .map(|_| DeflateCodec::new(params(false), true, 1, 0))
        .collect();
    for c in &mut codecs {
        assert_eq!(receive(c, &HELLO).unwrap(), b"Hello");
        assert!(!c.compress(b"Hello, Hello").is_empty());
    }
    assert_eq!(pooled_streams(), (0, 0), "live codecs hold their streams");
    drop(codecs);
    assert_eq!(pooled_streams(), (10, 10.min(POOL_DEFLATERS)));

    // The next ones take those streams instead of allocating.
    let mut again: Vec<DeflateCodec> = (0..4)
        .map(|_| DeflateCodec::new(params(false), true, 1, 0))
        .collect();
    for c in &mut again {
        assert_eq!(receive(c, &HELLO).unwrap(), b"Hello");
    }
    assert_eq!(pooled_streams().0, 6);

    // A stream left broken by bad data goes back reset: every later codec decodes.
    let mut broken = DeflateCodec::new(params(false), true, 1, 0);
    assert!(receive(&mut broken, &[0xff; 16]).is_err());
    drop(broken);
    drop(again);
    for _ in 0..20 {
        let mut c = DeflateCodec::new(params(false), true, 1, 0);
        assert_eq!(receive(&mut c, &HELLO).unwrap(), b"Hello");
    }

    // A client that resets its context after each message: its codec gives the stream
    // back at the end of every message, so the pool is whole again between messages.
    let before = pooled_streams().0;
    let mut resetting = DeflateCodec::new(params(true), true, 1, 0);
    for _ in 0..3 {
        assert_eq!(receive(&mut resetting, &HELLO).unwrap(), b"Hello");
        assert_eq!(pooled_streams().0, before);
    }

    // The pool is bounded.
    let many: Vec<DeflateCodec> = (0..POOL_INFLATERS + 10)
        .map(|_| {
            let mut c = DeflateCodec::new(params(false), true, 1, 0);
            receive(&mut c, &HELLO).unwrap();
            c
        })
        .collect();
    drop(many);
    assert_eq!(pooled_streams().0, POOL_INFLATERS);
    let compressing: Vec<DeflateCodec> = (0..POOL_DEFLATERS + 4)
        .map(|_| {
            let mut c = DeflateCodec::new(params(false), true, 1, 0);
            assert!(!c.compress(b"Hello, Hello").is_empty());
            c
        })
        .collect();
    drop(compressing);
    assert_eq!(pooled_streams().1, POOL_DEFLATERS);
}
