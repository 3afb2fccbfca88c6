//! Client core ↔ server core over in-memory buffers with a virtual clock.

#![allow(clippy::unwrap_used)]

mod common;

use std::time::Duration;

use bytes::Bytes;
use common::{Pair, PairConfig};
use wsx_proto::{
    CloseCode, CloseFrame, Config, DataKind, DeflateConfig, Error, Event, Message, State,
    TimeoutKind,
};

fn messages(events: &[Event]) -> Vec<Message> {
    events
        .iter()
        .filter_map(|e| match e {
            Event::Message(m) => Some(m.clone()),
            Event::Frame(_) => None,
        })
        .collect()
}

fn big_config() -> Config {
    Config::default()
        .max_frame_size(20 << 20)
        .max_message_size(20 << 20)
}

#[test]
fn messages_of_every_size_class_cross_both_ways() {
    let mut p = Pair::with(PairConfig {
        client: big_config(),
        server: big_config(),
        ..Default::default()
    });
    for len in [
        0usize,
        1,
        125,
        126,
        127,
        65535,
        65536,
        65537,
        1 << 20,
        16 << 20,
    ] {
        let data = Bytes::from((0..len).map(|i| (i % 251) as u8).collect::<Vec<_>>());
        let text: String = (0..len)
            .map(|i| char::from(b'a' + (i % 26) as u8))
            .collect();
        p.client.send(Message::Binary(data.clone())).unwrap();
        p.server.send(Message::text(text.clone())).unwrap();
        let (c, s) = p.drive();
        assert!(
            c.errors.is_empty() && s.errors.is_empty(),
            "{:?} {:?}",
            c.errors,
            s.errors
        );
        assert_eq!(
            messages(&s.events),
            vec![Message::Binary(data)],
            "len {len}"
        );
        assert_eq!(messages(&c.events), vec![Message::text(text)], "len {len}");
    }
}

#[test]
fn any_chunking_of_the_stream_is_parsed_the_same() {
    for chunk in [1, 2, 3, 7, 13, 100] {
        let mut p = Pair::new();
        p.chunk = chunk;
        p.client.send(Message::text("κόσμε 𝄞 ".repeat(20))).unwrap();
        p.client.send(Message::binary(vec![1u8; 300])).unwrap();
        let (_, s) = p.drive();
        assert_eq!(
            messages(&s.events),
            vec![
                Message::text("κόσμε 𝄞 ".repeat(20)),
                Message::binary(vec![1u8; 300])
            ]
        );
    }
}

#[test]
fn fragmented_messages_are_reassembled() {
    let mut p = Pair::with(PairConfig {
        client: Config::default().fragment_size(Some(10)),
        ..Default::default()
    });
    let text = "fragmented κόσμε message that spans several frames";
    p.client.send(Message::text(text)).unwrap();
    let (_, s) = p.drive();
    assert_eq!(messages(&s.events), vec![Message::text(text)]);
}

#[test]
fn control_frames_between_fragments_are_delivered_in_order() {
    let mut p = Pair::new();
    p.client
        .send_frame(DataKind::Text, Bytes::from_static(b"Hel"), false)
        .unwrap();
    p.client
        .send(Message::Ping(Bytes::from_static(b"p")))
        .unwrap();
    p.client
        .send_frame(DataKind::Text, Bytes::from_static(b"lo"), true)
        .unwrap();
    let (c, s) = p.drive();
    assert_eq!(
        messages(&s.events),
        vec![
            Message::Ping(Bytes::from_static(b"p")),
            Message::text("Hello")
        ]
    );
    // The server answered the ping by itself.
    assert_eq!(
        messages(&c.events),
        vec![Message::Pong(Bytes::from_static(b"p"))]
    );
}

#[test]
fn frame_mode_streams_large_messages_frame_by_frame() {
    let mut p = Pair::with(PairConfig {
        server: Config::default().frame_mode(true).max_message_size(1000),
        ..Default::default()
    });
    for i in 0..10 {
        p.client
            .send_frame(DataKind::Binary, Bytes::from(vec![i as u8; 1000]), i == 9)
            .unwrap();
    }
    let (_, s) = p.drive();
    assert!(s.errors.is_empty(), "{:?}", s.errors);
    assert_eq!(s.events.len(), 10);
    let mut total = 0;
    for (i, e) in s.events.iter().enumerate() {
        let Event::Frame(f) = e else { panic!("{e:?}") };
        assert_eq!((f.first, f.fin, f.kind), (i == 0, i == 9, DataKind::Binary));
        total += f.payload.len();
    }
    assert_eq!(
        total, 10_000,
        "a message ten times max_message_size streamed through"
    );
}

#[test]
fn streaming_send_refuses_bad_sequences() {
    let mut p = Pair::new();
    p.client
        .send_frame(DataKind::Text, Bytes::from_static(&[0xce]), false)
        .unwrap();
    assert!(matches!(
        p.client.send(Message::text("x")),
        Err(Error::InvalidInput(_))
    ));
    assert!(matches!(
        p.client.send_frame(DataKind::Binary, Bytes::new(), true),
        Err(Error::InvalidInput(_))
    ));
    assert!(matches!(
        p.client.send_frame(DataKind::Text, Bytes::new(), true),
        Err(Error::InvalidInput("text message ends inside a code point"))
    ));
    p.client
        .send_frame(DataKind::Text, Bytes::from_static(&[0xba]), true)
        .unwrap();
    let (_, s) = p.drive();
    assert_eq!(messages(&s.events), vec![Message::text("κ")]);
}

#[test]
fn ping_is_answered_with_the_same_payload() {
    let mut p = Pair::new();
    p.server
        .send(Message::Ping(Bytes::from_static(b"hello")))
        .unwrap();
    let (c, s) = p.drive();
    assert_eq!(
        messages(&c.events),
        vec![Message::Ping(Bytes::from_static(b"hello"))]
    );
    assert_eq!(
        messages(&s.events),
        vec![Message::Pong(Bytes::from_static(b"hello"))]
    );
}

#[test]
fn close_started_by_the_client() {
    let mut p = Pair::new();
    p.client
        .close(p.now, Some(CloseFrame::new(CloseCode(4000), "bye")))
        .unwrap();
    assert_eq!(p.client.state(), State::Closing);
    assert_eq!(
        p.client.send(Message::text("late")),
        Err(Error::AlreadyClosed)
    );
    let (c, s) = p.drive();
    assert_eq!(
        messages(&s.events),
        vec![Message::Close(Some(CloseFrame::new(
            CloseCode(4000),
            "bye"
        )))]
    );
    // The server echoed the code.
    assert_eq!(
        messages(&c.events),
        vec![Message::Close(Some(CloseFrame::new(CloseCode(4000), "")))]
    );
    assert_eq!(p.client.state(), State::Closed);
    assert_eq!(p.server.state(), State::Closed);
    assert_eq!(
        p.server.send(Message::text("late")),
        Err(Error::AlreadyClosed)
    );
}

#[test]
fn close_started_by_the_server_without_status() {
    let mut p = Pair::new();
    p.server.close(p.now, None).unwrap();
    let (c, s) = p.drive();
    assert_eq!(messages(&c.events), vec![Message::Close(None)]);
    assert_eq!(messages(&s.events), vec![Message::Close(None)]);
    assert_eq!(
        (p.client.state(), p.server.state()),
        (State::Closed, State::Closed)
    );
}

#[test]
fn messages_still_arrive_while_closing() {
    let mut p = Pair::new();
    p.server.send(Message::text("in flight")).unwrap();
    p.client
        .close(p.now, Some(CloseFrame::new(CloseCode::NORMAL, "")))
        .unwrap();
    let (c, _) = p.drive();
    assert_eq!(messages(&c.events)[0], Message::text("in flight"));
}

#[test]
fn close_code_not_allowed_on_the_wire_is_refused_locally() {
    let mut p = Pair::new();
    for code in [1005, 1006, 1015, 999] {
        assert!(matches!(
            p.client
                .close(p.now, Some(CloseFrame::new(CloseCode(code), ""))),
            Err(Error::InvalidInput(_))
        ));
    }
    assert_eq!(p.client.state(), State::Open);
}

#[test]
fn close_timeout_when_the_peer_never_answers() {
    let mut p = Pair::with(PairConfig {
        client: Config::default().close_timeout(Duration::from_secs(3)),
        ..Default::default()
    });
    p.client
        .close(p.now, Some(CloseFrame::new(CloseCode::NORMAL, "")))
        .unwrap();
    Pair::drop_output(&mut p.client);
    assert_eq!(
        p.client.poll_timeout(),
        Some(p.now + Duration::from_secs(3))
    );
    let (c, _) = p.advance(Duration::from_millis(2999));
    assert!(c.errors.is_empty());
    let (c, _) = p.advance(Duration::from_millis(1));
    assert_eq!(c.errors, vec![Error::Timeout(TimeoutKind::Close)]);
    assert_eq!(p.client.state(), State::Closed);
    assert_eq!(p.client.poll_timeout(), None);
}

#[test]
fn keepalive_ping_then_pong_keeps_the_connection() {
    let mut p = Pair::with(PairConfig {
        server: Config::default()
            .ping_interval(Some(Duration::from_secs(10)))
            .pong_timeout(Duration::from_secs(5)),
        ..Default::default()
    });
    for _ in 0..5 {
        let (_, s) = p.advance(Duration::from_secs(10));
        assert!(s.errors.is_empty());
        let (c, s) = p.drive();
        assert_eq!(
            messages(&c.events).len(),
            1,
            "one keepalive ping per interval"
        );
        assert!(matches!(messages(&c.events)[0], Message::Ping(_)));
        assert!(matches!(messages(&s.events)[0], Message::Pong(_)));
    }
    assert_eq!(p.server.state(), State::Open);
}

#[test]
fn keepalive_timeout_fails_with_1011() {
    let mut p = Pair::with(PairConfig {
        server: Config::default()
            .ping_interval(Some(Duration::from_secs(10)))
            .pong_timeout(Duration::from_secs(5)),
        ..Default::default()
    });
    let (_, s) = p.advance(Duration::from_secs(10));
    assert!(s.errors.is_empty());
    Pair::drop_output(&mut p.server); // the ping is lost: the client is gone
    let (_, s) = p.advance(Duration::from_millis(4999));
    assert!(s.errors.is_empty());
    let (_, s) = p.advance(Duration::from_millis(1));
    assert_eq!(s.errors, vec![Error::Timeout(TimeoutKind::Keepalive)]);
    assert_eq!(s.errors[0].close_code(), Some(CloseCode(1011)));
    let frames = common::written_frames(&mut p.server);
    assert_eq!(frames.len(), 1);
    assert_eq!(frames[0].0, 0x88);
    assert_eq!(&frames[0].1[..2], &1011u16.to_be_bytes());
    assert_eq!(p.server.state(), State::Closed);
}

#[test]
fn traffic_postpones_keepalive_pings() {
    let mut p = Pair::with(PairConfig {
        server: Config::default().ping_interval(Some(Duration::from_secs(10))),
        ..Default::default()
    });
    for _ in 0..5 {
        p.advance(Duration::from_secs(6));
        p.client.send(Message::text("tick")).unwrap();
        let (c, _) = p.drive();
        assert!(messages(&c.events).is_empty(), "no ping while data flows");
    }
}

#[test]
fn idle_timeout_closes_with_1001() {
    let mut p = Pair::with(PairConfig {
        server: Config::default().idle_timeout(Some(Duration::from_secs(60))),
        ..Default::default()
    });
    p.advance(Duration::from_secs(30));
    p.client.send(Message::text("still here")).unwrap();
    p.drive();
    let (_, s) = p.advance(Duration::from_secs(59));
    assert!(s.errors.is_empty());
    let (_, s) = p.advance(Duration::from_secs(1));
    assert_eq!(s.errors, vec![Error::Timeout(TimeoutKind::Idle)]);
    let (c, _) = p.drive();
    assert_eq!(
        messages(&c.events),
        vec![Message::Close(Some(CloseFrame::new(
            CloseCode::GOING_AWAY,
            "idle timeout"
        )))]
    );
}

fn deflate_pair(client: DeflateConfig, server: DeflateConfig) -> Pair {
    Pair::with(PairConfig {
        client_deflate: Some(client),
        server_deflate: Some(server),
        ..Default::default()
    })
}

#[test]
fn compression_with_each_parameter_set() {
    let sets = [
        (DeflateConfig::default(), DeflateConfig::default()),
        (
            DeflateConfig::default().server_no_context_takeover(true),
            DeflateConfig::default(),
        ),
        (
            DeflateConfig::default().client_no_context_takeover(true),
            DeflateConfig::default(),
        ),
        (
            DeflateConfig::default(),
            DeflateConfig::default().client_no_context_takeover(true),
        ),
        (
            DeflateConfig::default().server_max_window_bits(9),
            DeflateConfig::default(),
        ),
        (
            DeflateConfig::default().client_max_window_bits(9),
            DeflateConfig::default(),
        ),
        (
            DeflateConfig::default(),
            DeflateConfig::default().client_max_window_bits(10),
        ),
        (
            DeflateConfig::default()
                .server_max_window_bits(8)
                .client_max_window_bits(8),
            DeflateConfig::default(),
        ),
        (
            DeflateConfig::default()
                .server_no_context_takeover(true)
                .client_no_context_takeover(true)
                .server_max_window_bits(12)
                .client_max_window_bits(11),
            DeflateConfig::default(),
        ),
    ];
    let text =
        "{\"channel\":\"prices\",\"data\":{\"symbol\":\"ACME\",\"price\":101.25}} ".repeat(20);
    for (ccfg, scfg) in sets {
        let mut p = deflate_pair(ccfg.clone(), scfg.clone());
        assert!(p.client.is_compressed() && p.server.is_compressed());
        for _ in 0..3 {
            p.client.send(Message::text(text.clone())).unwrap();
            p.server.send(Message::text(text.clone())).unwrap();
            let wire_to_server = p.client.output_len();
            let (c, s) = p.drive();
            assert_eq!(
                messages(&s.events),
                vec![Message::text(text.clone())],
                "{ccfg:?}"
            );
            assert_eq!(
                messages(&c.events),
                vec![Message::text(text.clone())],
                "{ccfg:?}"
            );
            if ccfg.client_max_window_bits > 8 {
                assert!(
                    wire_to_server < text.len() / 2,
                    "compressed: {wire_to_server}"
                );
            }
        }
    }
}

#[test]
fn small_messages_skip_compression_below_the_threshold() {
    let mut p = deflate_pair(
        DeflateConfig::default().threshold(100),
        DeflateConfig::default(),
    );
    p.client.send(Message::text("short")).unwrap();
    let frames = common::written_frames(&mut p.client);
    assert_eq!(frames[0].0, 0x81, "no RSV1");
    p.client.send(Message::text("x".repeat(200))).unwrap();
    let frames = common::written_frames(&mut p.client);
    assert_eq!(frames[0].0, 0xc1, "RSV1 on a compressed message");
}

#[test]
fn compressed_fragmented_messages_set_rsv1_on_the_first_frame_only() {
    let mut p = Pair::with(PairConfig {
        client: Config::default().fragment_size(Some(8)),
        client_deflate: Some(DeflateConfig::default().level(0)),
        server_deflate: Some(DeflateConfig::default()),
        ..Default::default()
    });
    let text = "abcdefghijklmnopqrstuvwxyz".repeat(5);
    p.client.send(Message::text(text.clone())).unwrap();
    let wire = Pair::drop_output(&mut p.client);
    let mut q = wire.to_vec();
    // Inspect the frames, then deliver them.
    let mut rest = &wire[..];
    let mut first_bytes = Vec::new();
    while !rest.is_empty() {
        let (h, n) = wsx_proto::frame::FrameHeader::parse(rest).unwrap().unwrap();
        first_bytes.push(rest[0]);
        rest = &rest[n + h.payload_len as usize..];
    }
    assert!(first_bytes.len() > 2);
    assert_eq!(first_bytes[0], 0x41, "text, RSV1, not FIN");
    assert!(first_bytes[1..first_bytes.len() - 1]
        .iter()
        .all(|b| *b == 0x00));
    assert_eq!(*first_bytes.last().unwrap(), 0x80);
    p.to_server.append(&mut q);
    let (_, s) = p.drive();
    assert_eq!(messages(&s.events), vec![Message::text(text)]);
}

#[test]
fn compression_declined_when_the_server_does_not_enable_it() {
    let p = Pair::with(PairConfig {
        client_deflate: Some(DeflateConfig::default()),
        server_deflate: None,
        ..Default::default()
    });
    assert!(!p.client.is_compressed() && !p.server.is_compressed());
}

#[test]
fn shared_frames_reach_many_connections_from_one_encoding() {
    let frame = wsx_proto::SharedFrame::text("broadcast");
    let mut pairs: Vec<Pair> = (0..3).map(|_| Pair::new()).collect();
    for p in &mut pairs {
        p.server.send_shared(&frame).unwrap();
        let (c, _) = p.drive();
        assert_eq!(messages(&c.events), vec![Message::text("broadcast")]);
    }
    assert!(matches!(
        pairs[0].client.send_shared(&frame),
        Err(Error::InvalidInput(_))
    ));
}

/// The first chunk of a connection's pending output, as queued.
fn first_chunk(conn: &mut wsx_proto::Connection) -> Bytes {
    use bytes::Buf;
    let out = conn.output();
    Bytes::copy_from_slice(out.chunk())
}

#[test]
fn shared_frames_are_compressed_once_for_connections_that_reset_their_context() {
    let text = "the same publication to every subscriber; ".repeat(40);
    let frame = wsx_proto::SharedFrame::text(&text);
    let client = DeflateConfig::default().server_no_context_takeover(true);
    let mut pairs: Vec<Pair> = (0..3)
        .map(|_| deflate_pair(client.clone(), DeflateConfig::default()))
        .collect();
    let mut wire = Vec::new();
    for p in &mut pairs {
        p.server.send_shared(&frame).unwrap();
        // Compressed (RSV1 set), much shorter than the text.
        assert!(
            p.server.output_len() < text.len() / 4,
            "{}",
            p.server.output_len()
        );
        let chunk = first_chunk(&mut p.server);
        assert_eq!(chunk[0], 0xc1, "FIN + RSV1 + text");
        wire.push(chunk);
        let (c, _) = p.drive();
        assert_eq!(messages(&c.events), vec![Message::text(text.clone())]);
    }
    // One compression, the same bytes for all.
    assert!(wire.windows(2).all(|w| w[0] == w[1]));
    // Twice on one connection: the same again (no context carried over).
    let p = &mut pairs[0];
    p.server.send_shared(&frame).unwrap();
    assert_eq!(first_chunk(&mut p.server), wire[0]);
    let (c, _) = p.drive();
    assert_eq!(messages(&c.events), vec![Message::text(text.clone())]);
}

#[test]
fn shared_frames_use_the_connection_s_own_context_when_it_keeps_one() {
    let text = "a message that repeats and repeats and repeats; ".repeat(20);
    let frame = wsx_proto::SharedFrame::text(&text);
    let mut p = deflate_pair(DeflateConfig::default(), DeflateConfig::default());
    let mut sizes = Vec::new();
    for _ in 0..3 {
        p.server.send_shared(&frame).unwrap();
        sizes.push(p.server.output_len());
        let (c, _) = p.drive();
        assert_eq!(messages(&c.events), vec![Message::text(text.clone())]);
    }
    // The context carries over: the second copy costs a back-reference or two.
    assert!(sizes[1] < sizes[0] / 2, "{sizes:?}");
    // Below the threshold: as it is.
    let small = wsx_proto::SharedFrame::text("hi");
    p.server.send_shared(&small).unwrap();
    assert_eq!(first_chunk(&mut p.server), small.as_bytes());
    let (c, _) = p.drive();
    assert_eq!(messages(&c.events), vec![Message::text("hi")]);
    // A binary frame keeps its opcode.
    let bin = wsx_proto::SharedFrame::binary(&[7u8; 300]);
    p.server.send_shared(&bin).unwrap();
    assert_eq!(first_chunk(&mut p.server)[0], 0xc2);
    let (c, _) = p.drive();
    assert_eq!(
        messages(&c.events),
        vec![Message::Binary(Bytes::from(vec![7u8; 300]))]
    );
}

#[test]
fn a_shared_frame_offered_to_the_socket_first_is_queued_only_for_what_it_did_not_take() {
    let frame = wsx_proto::SharedFrame::text("to every subscriber");
    let mut p = Pair::new();
    // Nothing waits: the socket takes all of it, nothing is queued.
    let mut offered = Vec::new();
    p.server
        .send_shared_with(&frame, |b| {
            offered.push(b.to_vec());
            b.len()
        })
        .unwrap();
    assert_eq!(offered, [frame.as_bytes().to_vec()]);
    assert_eq!(p.server.output_len(), 0);
    p.to_client.extend_from_slice(&offered.concat());
    let (c, _) = p.drive();
    assert_eq!(
        messages(&c.events),
        vec![Message::text("to every subscriber")]
    );

    // It takes 5 bytes: the rest is queued, and the frame arrives whole.
    let mut taken = Vec::new();
    p.server
        .send_shared_with(&frame, |b| {
            taken.extend_from_slice(&b[..5]);
            5
        })
        .unwrap();
    assert_eq!(p.server.output_len(), frame.as_bytes().len() - 5);
    // Something waits now: the next frame is not offered, it goes behind.
    p.server
        .send_shared_with(&frame, |_| panic!("offered past what waits"))
        .unwrap();
    p.to_client.extend_from_slice(&taken);
    let (c, _) = p.drive();
    assert_eq!(
        messages(&c.events),
        vec![Message::text("to every subscriber"); 2]
    );

    // A connection that compresses it is not offered the shared bytes.
    let text = "compressed for this connection; ".repeat(20);
    let big = wsx_proto::SharedFrame::text(&text);
    let mut d = deflate_pair(DeflateConfig::default(), DeflateConfig::default());
    d.server
        .send_shared_with(&big, |_| panic!("offered uncompressed"))
        .unwrap();
    let (c, _) = d.drive();
    assert_eq!(messages(&c.events), vec![Message::text(text)]);

    // After the close (its frame written: nothing waits), nothing is offered.
    p.server.close(p.now, None).unwrap();
    p.drive();
    assert_eq!(p.server.output_len(), 0);
    assert!(matches!(
        p.server
            .send_shared_with(&frame, |_| panic!("offered after close")),
        Err(Error::AlreadyClosed)
    ));
}
