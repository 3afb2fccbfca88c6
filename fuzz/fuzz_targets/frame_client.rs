#![no_main]
//! Frame decoding in the client role: any bytes, any chunking, never a panic; text is
//! always UTF-8 and every error has a close code.
use libfuzzer_sys::fuzz_target;

#[path = "frames.rs"]
mod frames;

fuzz_target!(|data: &[u8]| frames::run(wsx_proto::Role::Client, data));
