//! Property tests: any message, any fragmentation, any chunking round-trips; arbitrary
//! bytes never panic, in both roles, with and without deflate.

#![allow(clippy::unwrap_used)]

mod common;

use std::time::Instant;

use bytes::Bytes;
use common::{Pair, PairConfig};
use proptest::prelude::*;
use wsx_proto::{Config, Connection, DeflateConfig, DeflateParams, Event, Message, Role};

fn message() -> impl Strategy<Value = Message> {
    prop_oneof![
        any::<String>().prop_map(Message::text),
        proptest::collection::vec(any::<u8>(), 0..3000).prop_map(Message::binary),
        proptest::collection::vec(any::<u8>(), 0..125).prop_map(|v| Message::Ping(Bytes::from(v))),
    ]
}

fn deflate_cfg() -> impl Strategy<Value = Option<DeflateConfig>> {
    prop_oneof![
        Just(None),
        (
            any::<bool>(),
            any::<bool>(),
            8u8..=15,
            8u8..=15,
            0u32..=9,
            0usize..200
        )
            .prop_map(|(snct, cnct, sb, cb, level, threshold)| Some(
                DeflateConfig::default()
                    .server_no_context_takeover(snct)
                    .client_no_context_takeover(cnct)
                    .server_max_window_bits(sb)
                    .client_max_window_bits(cb)
                    .level(level)
                    .threshold(threshold)
            )),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 200, ..ProptestConfig::default() })]

    #[test]
    fn any_messages_any_fragmentation_any_chunking_round_trip(
        msgs in proptest::collection::vec(message(), 1..8),
        fragment in proptest::option::of(1usize..500),
        chunk in 1usize..4000,
        deflate in deflate_cfg(),
    ) {
        let mut p = Pair::with(PairConfig {
            client: Config::default().fragment_size(fragment),
            server: Config::default().fragment_size(fragment),
            client_deflate: deflate.clone(),
            server_deflate: deflate.map(|_| DeflateConfig::default()),
        });
        p.chunk = chunk;
        for m in &msgs {
            p.client.send(m.clone()).unwrap();
            p.server.send(m.clone()).unwrap();
        }
        let (c, s) = p.drive();
        prop_assert!(c.errors.is_empty(), "{:?}", c.errors);
        prop_assert!(s.errors.is_empty(), "{:?}", s.errors);
        for seen in [&c, &s] {
            // Each side sees the other's messages, plus pongs for its own pings.
            let got: Vec<Message> = seen.events.iter().filter_map(|e| match e {
                Event::Message(m @ (Message::Text(_) | Message::Binary(_) | Message::Ping(_))) => Some(m.clone()),
                _ => None,
            }).collect();
            prop_assert_eq!(&got, &msgs);
        }
    }

    #[test]
    fn arbitrary_bytes_never_panic(
        data in proptest::collection::vec(any::<u8>(), 0..2000),
        server in any::<bool>(),
        deflate in any::<bool>(),
        chunk in 1usize..64,
        frame_mode in any::<bool>(),
    ) {
        let role = if server { Role::Server } else { Role::Client };
        let cfg = Config::default().max_message_size(4096).max_frame_size(4096).frame_mode(frame_mode);
        let mut c = Connection::new(role, cfg, Instant::now());
        if deflate {
            c.enable_deflate(DeflateParams {
                server_no_context_takeover: false,
                client_no_context_takeover: false,
                server_max_window_bits: 15,
                client_max_window_bits: 15,
            }, &DeflateConfig::default());
        }
        for piece in data.chunks(chunk) {
            c.handle_input(Instant::now(), piece);
            while let Ok(Some(_)) = c.poll_event() {}
        }
    }

    #[test]
    fn arbitrary_handshake_bytes_never_panic(data in proptest::collection::vec(any::<u8>(), 0..600)) {
        use wsx_proto::handshake::{client, server};
        let cfg = server::ServerHandshakeConfig::default();
        if let Ok(Some((req, _))) = server::parse_request(&data, &cfg) {
            let _ = server::respond(&req, &cfg);
        }
        let (hs, _) = client::ClientHandshake::new("h", "/", &client::ClientHandshakeConfig::default());
        let _ = hs.parse_response(&data, true);
    }
}
