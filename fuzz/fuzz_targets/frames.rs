// Shared by the frame decoding targets: the first byte picks options, the rest is the
// byte stream, delivered in pieces whose sizes come from the options byte.
use std::time::Instant;

use wsx_proto::{Config, Connection, DeflateConfig, DeflateParams, Event, Message, Role};

pub fn run(role: Role, data: &[u8]) {
    let Some((&opts, stream)) = data.split_first() else {
        return;
    };
    let cfg = Config::default()
        .max_frame_size(1 << 16)
        .max_message_size(1 << 16)
        .frame_mode(opts & 1 != 0);
    let mut conn = Connection::new(role, cfg, Instant::now());
    if opts & 2 != 0 {
        conn.enable_deflate(
            DeflateParams {
                server_no_context_takeover: opts & 4 != 0,
                client_no_context_takeover: opts & 8 != 0,
                server_max_window_bits: 15,
                client_max_window_bits: 8 + (opts >> 5),
            },
            &DeflateConfig::default(),
        );
    }
    let chunk = 1 + (opts as usize >> 4) * 97;
    for piece in stream.chunks(chunk) {
        conn.handle_input(Instant::now(), piece);
        loop {
            match conn.poll_event() {
                Ok(Some(Event::Message(Message::Text(t)))) => {
                    assert!(std::str::from_utf8(t.as_bytes()).is_ok())
                }
                Ok(Some(_)) => {}
                Ok(None) => break,
                Err(e) => {
                    assert!(e.close_code().is_some());
                    return;
                }
            }
        }
    }
}
