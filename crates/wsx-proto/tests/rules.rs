//! RFC 6455 / RFC 7692 rules checked against raw frames, in both roles.

#![allow(clippy::unwrap_used)]

mod common;

use std::time::Instant;

use common::{feed_raw, raw_frame, written_frames};
use wsx_proto::{
    CapacityKind, CloseCode, CloseFrame, Config, Connection, DeflateConfig, DeflateParams, Error,
    Event, Message, ProtocolError, Role, State,
};

const KEY: [u8; 4] = [0x37, 0xfa, 0x21, 0x3d];

fn server() -> Connection {
    Connection::new(Role::Server, Config::default(), Instant::now())
}

fn client() -> Connection {
    Connection::new(Role::Client, Config::default(), Instant::now())
}

/// A frame as the peer of `role` would send it (masked towards a server).
fn peer_frame(role: Role, b0: u8, payload: &[u8]) -> Vec<u8> {
    raw_frame(
        b0,
        payload,
        if role == Role::Server {
            Some(KEY)
        } else {
            None
        },
    )
}

/// Feed bytes, expect one error, and check the close frame the core sent for it.
fn expect_failure(conn: &mut Connection, bytes: &[u8], err: Error, code: u16) {
    let seen = feed_raw(conn, bytes);
    assert_eq!(seen.errors, vec![err.clone()], "events: {:?}", seen.events);
    assert_eq!(err.close_code(), Some(CloseCode(code)));
    let frames = written_frames(conn);
    let close = frames
        .iter()
        .find(|(b0, _)| *b0 == 0x88)
        .expect("a close frame was sent");
    assert_eq!(u16::from_be_bytes([close.1[0], close.1[1]]), code);
    assert_eq!(conn.state(), State::Closed);
    // Nothing more is processed.
    let again = feed_raw(conn, &peer_frame(conn.role(), 0x81, b"after"));
    assert!(again.events.is_empty() && again.errors.is_empty());
}

fn both_roles(mut f: impl FnMut(Role, Connection)) {
    f(Role::Server, server());
    f(Role::Client, client());
}

#[test]
fn server_rejects_unmasked_frame() {
    let mut s = server();
    expect_failure(
        &mut s,
        &raw_frame(0x81, b"hi", None),
        ProtocolError::UnmaskedFrame.into(),
        1002,
    );
}

#[test]
fn client_rejects_masked_frame() {
    let mut c = client();
    expect_failure(
        &mut c,
        &raw_frame(0x81, b"hi", Some(KEY)),
        ProtocolError::MaskedFrame.into(),
        1002,
    );
}

#[test]
fn rejects_reserved_bits_without_an_extension() {
    for b0 in [0xc1u8, 0xa1, 0x91] {
        both_roles(|role, mut c| {
            expect_failure(
                &mut c,
                &peer_frame(role, b0, b"x"),
                ProtocolError::ReservedBits.into(),
                1002,
            )
        });
    }
}

#[test]
fn rejects_reserved_opcodes() {
    for op in [3u8, 7, 0xb, 0xf] {
        both_roles(|role, mut c| {
            expect_failure(
                &mut c,
                &peer_frame(role, 0x80 | op, b""),
                ProtocolError::UnknownOpcode(op).into(),
                1002,
            )
        });
    }
}

#[test]
fn rejects_control_frame_over_125_bytes() {
    both_roles(|role, mut c| {
        expect_failure(
            &mut c,
            &peer_frame(role, 0x89, &[0; 126]),
            ProtocolError::ControlFrameTooLong.into(),
            1002,
        )
    });
}

#[test]
fn rejects_fragmented_control_frame() {
    both_roles(|role, mut c| {
        expect_failure(
            &mut c,
            &peer_frame(role, 0x09, b"x"),
            ProtocolError::FragmentedControlFrame.into(),
            1002,
        )
    });
}

#[test]
fn rejects_64_bit_length_with_msb_set() {
    let mut c = client();
    expect_failure(
        &mut c,
        &[0x82, 0x7f, 0x80, 0, 0, 0, 0, 0, 0, 0],
        ProtocolError::InvalidLength.into(),
        1002,
    );
}

#[test]
fn rejects_continuation_without_a_message() {
    both_roles(|role, mut c| {
        expect_failure(
            &mut c,
            &peer_frame(role, 0x80, b"x"),
            ProtocolError::UnexpectedContinuation.into(),
            1002,
        )
    });
}

#[test]
fn rejects_new_data_frame_inside_a_fragmented_message() {
    both_roles(|role, mut c| {
        let mut bytes = peer_frame(role, 0x01, b"frag");
        bytes.extend(peer_frame(role, 0x81, b"new"));
        expect_failure(
            &mut c,
            &bytes,
            ProtocolError::ExpectedContinuation.into(),
            1002,
        )
    });
}

#[test]
fn invalid_utf8_fails_at_the_first_bad_byte_before_the_frame_ends() {
    both_roles(|role, mut c| {
        // A 1000-byte text frame whose 6th byte is invalid: only 10 bytes of payload
        // have arrived, and the connection already fails.
        let mut payload = b"hello".to_vec();
        payload.push(0xff);
        payload.resize(1000, b'a');
        let frame = peer_frame(role, 0x81, &payload);
        let header_len = frame.len() - 1000;
        expect_failure(
            &mut c,
            &frame[..header_len + 10],
            ProtocolError::InvalidUtf8.into(),
            1007,
        )
    });
}

#[test]
fn code_point_split_across_fragments_is_valid() {
    both_roles(|role, mut c| {
        let mut bytes = peer_frame(role, 0x01, &[b'a', 0xf0, 0x9d]);
        bytes.extend(peer_frame(role, 0x00, &[0x84]));
        bytes.extend(peer_frame(role, 0x80, &[0x9e, b'b']));
        let seen = feed_raw(&mut c, &bytes);
        assert!(seen.errors.is_empty());
        assert_eq!(seen.events, vec![Event::Message(Message::text("a𝄞b"))]);
    });
}

#[test]
fn invalid_code_point_split_across_fragments_fails_1007() {
    both_roles(|role, mut c| {
        let mut bytes = peer_frame(role, 0x01, &[b'a', 0xf4]);
        bytes.extend(peer_frame(role, 0x80, &[0x90, 0x80, 0x80]));
        expect_failure(&mut c, &bytes, ProtocolError::InvalidUtf8.into(), 1007)
    });
}

#[test]
fn text_ending_inside_a_code_point_fails_1007() {
    both_roles(|role, mut c| {
        expect_failure(
            &mut c,
            &peer_frame(role, 0x81, &[b'a', 0xe2, 0x82]),
            ProtocolError::InvalidUtf8.into(),
            1007,
        )
    });
}

#[test]
fn binary_is_not_validated() {
    both_roles(|role, mut c| {
        let seen = feed_raw(&mut c, &peer_frame(role, 0x82, &[0xff, 0xfe]));
        assert_eq!(
            seen.events,
            vec![Event::Message(Message::binary(vec![0xff, 0xfe]))]
        );
    });
}

#[test]
fn frame_over_the_limit_fails_1009_at_its_header() {
    let mut s = Connection::new(
        Role::Server,
        Config::default().max_frame_size(100),
        Instant::now(),
    );
    let frame = peer_frame(Role::Server, 0x82, &[0; 101]);
    let seen = feed_raw(&mut s, &frame[..8]);
    assert!(matches!(
        seen.errors.as_slice(),
        [Error::Capacity(e)] if e.kind == CapacityKind::Frame && e.size == 101 && e.max == 100
    ));
    assert_eq!(written_frames(&mut s)[0].1[..2], 1009u16.to_be_bytes());
}

#[test]
fn message_over_the_limit_fails_1009_across_fragments() {
    let mut c = Connection::new(
        Role::Client,
        Config::default().max_message_size(100),
        Instant::now(),
    );
    let mut bytes = raw_frame(0x02, &[0; 60], None);
    bytes.extend(raw_frame(0x80, &[0; 60], None));
    let seen = feed_raw(&mut c, &bytes);
    assert!(matches!(
        seen.errors.as_slice(),
        [Error::Capacity(e)] if e.kind == CapacityKind::Message && e.size == 120
    ));
}

#[test]
fn close_payload_of_one_byte_fails_1002() {
    both_roles(|role, mut c| {
        expect_failure(
            &mut c,
            &peer_frame(role, 0x88, &[0x03]),
            ProtocolError::InvalidClosePayload.into(),
            1002,
        )
    });
}

#[test]
fn close_codes_not_allowed_on_the_wire_fail_1002() {
    for code in [
        0u16, 999, 1004, 1005, 1006, 1015, 1016, 2000, 2999, 5000, 65535,
    ] {
        both_roles(|role, mut c| {
            expect_failure(
                &mut c,
                &peer_frame(role, 0x88, &code.to_be_bytes()),
                ProtocolError::InvalidCloseCode(code).into(),
                1002,
            )
        });
    }
}

#[test]
fn close_reason_with_invalid_utf8_fails_1007() {
    both_roles(|role, mut c| {
        expect_failure(
            &mut c,
            &peer_frame(role, 0x88, &[0x03, 0xe8, 0xff]),
            ProtocolError::InvalidUtf8.into(),
            1007,
        )
    });
}

#[test]
fn close_is_answered_with_a_close_echoing_the_code() {
    for code in [1000u16, 1001, 1003, 1007, 1014, 3000, 4999] {
        both_roles(|role, mut c| {
            let mut payload = code.to_be_bytes().to_vec();
            payload.extend_from_slice(b"reason");
            let seen = feed_raw(&mut c, &peer_frame(role, 0x88, &payload));
            assert_eq!(
                seen.events,
                vec![Event::Message(Message::Close(Some(CloseFrame::new(
                    CloseCode(code),
                    "reason"
                ))))]
            );
            let frames = written_frames(&mut c);
            assert_eq!(frames, vec![(0x88, code.to_be_bytes().to_vec())]);
            assert_eq!(c.state(), State::Closed);
            assert_eq!(c.send(Message::text("x")), Err(Error::AlreadyClosed));
        });
    }
}

#[test]
fn empty_close_is_answered_with_an_empty_close() {
    both_roles(|role, mut c| {
        let seen = feed_raw(&mut c, &peer_frame(role, 0x88, &[]));
        assert_eq!(seen.events, vec![Event::Message(Message::Close(None))]);
        assert_eq!(written_frames(&mut c), vec![(0x88, vec![])]);
    });
}

#[test]
fn frames_after_the_peers_close_are_ignored() {
    both_roles(|role, mut c| {
        let mut bytes = peer_frame(role, 0x88, &[]);
        bytes.extend(peer_frame(role, 0x81, b"late"));
        let seen = feed_raw(&mut c, &bytes);
        assert_eq!(seen.events, vec![Event::Message(Message::Close(None))]);
    });
}

#[test]
fn pong_is_not_sent_after_our_close() {
    let mut s = server();
    s.close(Instant::now(), None).unwrap();
    written_frames(&mut s);
    let seen = feed_raw(&mut s, &peer_frame(Role::Server, 0x89, b"p"));
    assert_eq!(seen.events.len(), 1);
    assert!(written_frames(&mut s).is_empty());
}

fn deflate_conn(role: Role, cfg: Config) -> Connection {
    let mut c = Connection::new(role, cfg, Instant::now());
    c.enable_deflate(
        DeflateParams {
            server_no_context_takeover: false,
            client_no_context_takeover: false,
            server_max_window_bits: 15,
            client_max_window_bits: 15,
        },
        &DeflateConfig::default(),
    );
    c
}

#[test]
fn rsv1_on_control_or_continuation_fails_1002_with_deflate() {
    both_roles(|role, _| {
        let mut c = deflate_conn(role, Config::default());
        expect_failure(
            &mut c,
            &peer_frame(role, 0xc9, b""),
            ProtocolError::InvalidCompressionBit.into(),
            1002,
        );
        let mut c = deflate_conn(role, Config::default());
        let mut bytes = peer_frame(role, 0x02, b"x");
        bytes.extend(peer_frame(role, 0xc0, b"y"));
        expect_failure(
            &mut c,
            &bytes,
            ProtocolError::InvalidCompressionBit.into(),
            1002,
        );
    });
}

#[test]
fn rfc_7692_hello_arrives_compressed() {
    both_roles(|role, _| {
        let mut c = deflate_conn(role, Config::default());
        let seen = feed_raw(
            &mut c,
            &peer_frame(role, 0xc1, &[0xf2, 0x48, 0xcd, 0xc9, 0xc9, 0x07, 0x00]),
        );
        assert_eq!(seen.events, vec![Event::Message(Message::text("Hello"))]);
        // RFC 7692 §7.2.3.1, fragmented: the compressed data split over two frames.
        let mut bytes = peer_frame(role, 0x41, &[0xf2, 0x48, 0xcd]);
        bytes.extend(peer_frame(role, 0x80, &[0xc9, 0xc9, 0x07, 0x00]));
        let seen = feed_raw(&mut c, &bytes);
        assert_eq!(seen.events, vec![Event::Message(Message::text("Hello"))]);
    });
}

#[test]
fn undecodable_compressed_data_fails_1007() {
    let mut c = deflate_conn(Role::Client, Config::default());
    expect_failure(
        &mut c,
        &raw_frame(0xc2, &[0xff, 0xff, 0xff], None),
        ProtocolError::Inflate.into(),
        1007,
    );
}

#[test]
fn compressed_invalid_utf8_fails_1007() {
    let mut tx = deflate_conn(Role::Server, Config::default());
    tx.send(Message::binary(vec![0xffu8; 100])).unwrap();
    let frames = written_frames(&mut tx);
    assert_eq!(frames[0].0, 0xc2);
    let mut c = deflate_conn(Role::Client, Config::default());
    expect_failure(
        &mut c,
        &raw_frame(0xc1, &frames[0].1, None),
        ProtocolError::InvalidUtf8.into(),
        1007,
    );
}

#[test]
fn decompression_bomb_fails_1009() {
    let mut tx = deflate_conn(Role::Server, Config::default().max_message_size(64 << 20));
    tx.send(Message::binary(vec![0u8; 8 << 20])).unwrap();
    let frames = written_frames(&mut tx);
    assert!(
        frames[0].1.len() < 1 << 17,
        "small on the wire: {}",
        frames[0].1.len()
    );
    let mut c = deflate_conn(Role::Client, Config::default());
    let seen = feed_raw(&mut c, &raw_frame(0xc2, &frames[0].1, None));
    assert!(matches!(
        seen.errors.as_slice(),
        [Error::Capacity(e)] if e.kind == CapacityKind::Message && e.max == 1 << 20
    ));
}
