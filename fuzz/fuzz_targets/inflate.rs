#![no_main]
//! Inflate with a bomb limit: any compressed input yields at most the limit, or an error.
use libfuzzer_sys::fuzz_target;
use wsx_proto::extensions::permessage_deflate::DeflateCodec;
use wsx_proto::DeflateParams;

fuzz_target!(|data: &[u8]| {
    let Some((&opts, rest)) = data.split_first() else {
        return;
    };
    let params = DeflateParams {
        server_no_context_takeover: opts & 1 != 0,
        client_no_context_takeover: opts & 2 != 0,
        server_max_window_bits: 9 + ((opts >> 2) & 7).min(6),
        client_max_window_bits: 15,
    };
    let mut codec = DeflateCodec::new(params, false, 1, 0);
    let limit = 1 << 16;
    let mut out = Vec::new();
    let mid = rest.len() / 2;
    if codec
        .decompress(&rest[..mid], false, &mut out, limit)
        .is_ok()
    {
        let _ = codec.decompress(&rest[mid..], true, &mut out, limit);
    }
    assert!(out.len() <= limit + 64 * 1024);
});
