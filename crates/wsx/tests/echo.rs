//! wsx client ↔ wsx server over real TCP.
#![allow(clippy::unwrap_used)]

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use tokio::net::TcpListener;
use wsx::{
    ClientConfig, CloseCode, CloseFrame, Config, DeflateConfig, Error, HandshakeError, Message,
    OriginPolicy, Refusal, ServerConfig,
};

/// An echo server on a free port; closes with the code and reason it is sent as text
/// "close CODE REASON".
async fn echo_server(cfg: ServerConfig) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let cfg = cfg.clone();
            tokio::spawn(async move {
                let check = |req: &wsx::Request| {
                    if req.path.starts_with("/missing") {
                        Err(Refusal::new(404, "no such endpoint"))
                    } else {
                        Ok(vec![("X-Served-By".to_string(), "wsx".to_string())])
                    }
                };
                let Ok((mut ws, _)) = wsx::accept_with(tcp, &cfg, check).await else {
                    return;
                };
                while let Some(Ok(msg)) = ws.next().await {
                    if let Message::Text(t) = &msg {
                        if let Some(rest) = t.as_str().strip_prefix("close ") {
                            let (code, reason) = rest.split_once(' ').unwrap_or((rest, ""));
                            let _ = ws.close(CloseCode(code.parse().unwrap()), reason).await;
                            return;
                        }
                    }
                    if msg.is_data() && ws.send(msg).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    format!("ws://{addr}")
}

fn big() -> Config {
    Config::default()
        .max_frame_size(32 << 20)
        .max_message_size(32 << 20)
}

#[tokio::test]
async fn echo_every_size_text_and_binary() {
    let url = echo_server(ServerConfig::default().protocol(big())).await;
    let (mut ws, accepted) = wsx::connect(&url, &ClientConfig::default().protocol(big()))
        .await
        .unwrap();
    assert_eq!(accepted.headers.get_str("x-served-by"), Some("wsx"));
    for len in [0usize, 125, 126, 65535, 65536, 16 << 20] {
        let bin = Bytes::from((0..len).map(|i| (i % 253) as u8).collect::<Vec<_>>());
        ws.send(Message::Binary(bin.clone())).await.unwrap();
        assert_eq!(ws.next().await.unwrap().unwrap(), Message::Binary(bin));
        let text = "é".repeat(len / 2);
        ws.send(Message::text(text.clone())).await.unwrap();
        assert_eq!(ws.next().await.unwrap().unwrap(), Message::text(text));
    }
    ws.close(CloseCode::NORMAL, "done").await.unwrap();
}

#[tokio::test]
async fn echo_with_compression_both_ways() {
    for (client, server) in [
        (DeflateConfig::default(), DeflateConfig::default()),
        (
            DeflateConfig::default()
                .server_no_context_takeover(true)
                .client_no_context_takeover(true),
            DeflateConfig::default(),
        ),
        (
            DeflateConfig::default().client_max_window_bits(9),
            DeflateConfig::default().server_max_window_bits(10),
        ),
    ] {
        let url = echo_server(ServerConfig::default().deflate(Some(server))).await;
        let cfg = ClientConfig::default().deflate(Some(client));
        let (mut ws, accepted) = wsx::connect(&url, &cfg).await.unwrap();
        assert!(accepted.deflate.is_some());
        for i in 0..20 {
            let text = format!("{{\"n\":{i},\"data\":\"{}\"}}", "abc".repeat(200));
            ws.send(Message::text(text.clone())).await.unwrap();
            assert_eq!(ws.next().await.unwrap().unwrap(), Message::text(text));
        }
        ws.close(CloseCode::NORMAL, "").await.unwrap();
    }
}

#[tokio::test]
async fn fragmented_messages_and_pings() {
    let url = echo_server(ServerConfig::default()).await;
    let cfg = ClientConfig::default().protocol(Config::default().fragment_size(Some(100)));
    let (mut ws, _) = wsx::connect(&url, &cfg).await.unwrap();
    ws.send(Message::Ping(Bytes::from_static(b"are you there")))
        .await
        .unwrap();
    assert_eq!(
        ws.next().await.unwrap().unwrap(),
        Message::Pong(Bytes::from_static(b"are you there"))
    );
    let text = "x".repeat(1000);
    ws.send(Message::text(text.clone())).await.unwrap();
    assert_eq!(ws.next().await.unwrap().unwrap(), Message::text(text));
}

#[tokio::test]
async fn server_close_code_and_reason_reach_the_client() {
    let url = echo_server(ServerConfig::default()).await;
    let (mut ws, _) = wsx::connect(&url, &ClientConfig::default()).await.unwrap();
    ws.send(Message::text("close 4321 gone fishing"))
        .await
        .unwrap();
    assert_eq!(
        ws.next().await.unwrap().unwrap(),
        Message::Close(Some(CloseFrame::new(CloseCode(4321), "gone fishing")))
    );
    assert!(
        ws.next().await.is_none(),
        "the stream ends after the close handshake"
    );
    assert!(matches!(
        ws.send(Message::text("late")).await,
        Err(Error::AlreadyClosed)
    ));
}

#[tokio::test]
async fn subprotocol_negotiation() {
    let url = echo_server(ServerConfig::default().subprotocols(["v12.stomp", "v11.stomp"])).await;
    let cfg = ClientConfig::default().subprotocols(["v10.stomp", "v11.stomp", "v12.stomp"]);
    let (_, accepted) = wsx::connect(&url, &cfg).await.unwrap();
    assert_eq!(accepted.subprotocol.as_deref(), Some("v12.stomp"));
    let (_, accepted) = wsx::connect(&url, &ClientConfig::default().subprotocols(["mqtt"]))
        .await
        .unwrap();
    assert_eq!(accepted.subprotocol, None);
}

#[tokio::test]
async fn refused_handshakes_carry_status_and_reason() {
    let url = echo_server(ServerConfig::default()).await;
    let err = wsx::connect(&format!("{url}/missing"), &ClientConfig::default())
        .await
        .unwrap_err();
    assert!(
        matches!(&err, Error::Handshake(HandshakeError::Refused { status: 404, reason }) if reason == "no such endpoint"),
        "{err:?}"
    );
    let origin_url = echo_server(ServerConfig::default().origin(OriginPolicy::AllowList {
        origins: vec!["https://app.example".into()],
        require: false,
    }))
    .await;
    let err = wsx::connect(
        &origin_url,
        &ClientConfig::default().origin("https://evil.example"),
    )
    .await
    .unwrap_err();
    assert!(
        matches!(
            &err,
            Error::Handshake(HandshakeError::Refused { status: 403, .. })
        ),
        "{err:?}"
    );
    wsx::connect(
        &origin_url,
        &ClientConfig::default().origin("https://app.example"),
    )
    .await
    .unwrap();
}

#[tokio::test]
async fn split_halves_work_from_two_tasks() {
    let url = echo_server(ServerConfig::default()).await;
    let (ws, _) = wsx::connect(&url, &ClientConfig::default()).await.unwrap();
    let (mut reader, mut writer) = ws.split();
    let sender = tokio::spawn(async move {
        for i in 0..1000 {
            writer.feed(Message::text(format!("m{i}"))).await.unwrap();
        }
        writer.flush().await.unwrap();
        writer
    });
    for i in 0..1000 {
        assert_eq!(
            reader.next().await.unwrap().unwrap(),
            Message::text(format!("m{i}"))
        );
    }
    let mut writer = sender.await.unwrap();
    writer.close(CloseCode::NORMAL, "").await.unwrap();
    assert!(matches!(reader.next().await, Some(Ok(Message::Close(_)))));
    assert!(reader.next().await.is_none());
}

#[tokio::test]
async fn sink_and_stream_compose() {
    let url = echo_server(ServerConfig::default()).await;
    let (mut ws, _) = wsx::connect(&url, &ClientConfig::default()).await.unwrap();
    let msgs: Vec<_> = (0..10).map(|i| Ok(Message::text(format!("{i}")))).collect();
    ws.send_all(&mut futures_util::stream::iter(msgs))
        .await
        .unwrap();
    let got: Vec<Message> = ws.by_ref().take(10).map(|m| m.unwrap()).collect().await;
    assert_eq!(
        got,
        (0..10)
            .map(|i| Message::text(format!("{i}")))
            .collect::<Vec<_>>()
    );
    SinkExt::close(&mut ws).await.unwrap();
    assert!(
        matches!(ws.next().await, Some(Ok(Message::Close(Some(f)))) if f.code == CloseCode::NORMAL)
    );
}

#[tokio::test]
async fn frame_level_api_streams_a_message_larger_than_the_limit() {
    // The server takes frames one by one with a 64 KiB message limit; the client streams
    // 8 MiB in 64 KiB frames. Neither side holds the message whole.
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let server = tokio::spawn(async move {
        let (tcp, _) = listener.accept().await.unwrap();
        let cfg = ServerConfig::default().protocol(
            Config::default()
                .frame_mode(true)
                .max_message_size(64 << 10)
                .max_frame_size(64 << 10),
        );
        let (mut ws, _) = wsx::accept(tcp, &cfg).await.unwrap();
        let (mut total, mut frames, mut largest) = (0usize, 0usize, 0usize);
        while let Some(ev) = ws.next_event().await {
            match ev.unwrap() {
                wsx::Event::Frame(f) => {
                    assert_eq!(f.kind, wsx::DataKind::Binary);
                    total += f.payload.len();
                    largest = largest.max(f.payload.len());
                    frames += 1;
                    if f.fin {
                        break;
                    }
                }
                other => panic!("{other:?}"),
            }
        }
        (total, frames, largest)
    });
    let (mut ws, _) = wsx::connect(&format!("ws://{addr}"), &ClientConfig::default())
        .await
        .unwrap();
    for i in 0..128 {
        ws.send_frame(
            wsx::DataKind::Binary,
            Bytes::from(vec![i as u8; 64 << 10]),
            i == 127,
        )
        .await
        .unwrap();
    }
    let (total, frames, largest) = server.await.unwrap();
    assert_eq!((total, frames, largest), (8 << 20, 128, 64 << 10));
}

/// Past `max_deflate_contexts` open connections with context takeover, new ones are
/// answered with `server_no_context_takeover`; a slot comes back when its connection
/// goes. Messages cross compressed either way.
#[tokio::test]
async fn deflate_contexts_beyond_the_limit_are_refused_context_takeover() {
    let cfg = ServerConfig::default()
        .deflate(Some(DeflateConfig::default()))
        .max_deflate_contexts(1);
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("ws://{}/", listener.local_addr().unwrap());
    let (ended_tx, mut ended) = tokio::sync::mpsc::unbounded_channel();
    let server_cfg = cfg.clone();
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let (cfg, ended_tx) = (server_cfg.clone(), ended_tx.clone());
            tokio::spawn(async move {
                let (mut ws, _) = wsx::accept(tcp, &cfg).await.unwrap();
                while let Some(Ok(m)) = ws.next().await {
                    if m.is_data() {
                        ws.send(m).await.unwrap();
                    }
                }
                drop(ws);
                let _ = ended_tx.send(());
            });
        }
    });
    let client = ClientConfig::default().deflate(Some(DeflateConfig::default()));
    let text = Message::text("compressible ".repeat(100));
    let (mut first, a) = wsx::connect(&url, &client).await.unwrap();
    assert!(!a.deflate.unwrap().server_no_context_takeover);
    let (mut second, b) = wsx::connect(&url, &client).await.unwrap();
    assert!(b.deflate.unwrap().server_no_context_takeover);
    assert_eq!(cfg.deflate_contexts(), 1);
    for ws in [&mut first, &mut second] {
        for _ in 0..3 {
            ws.send(text.clone()).await.unwrap();
            assert_eq!(ws.next().await.unwrap().unwrap(), text);
        }
    }
    first.close(CloseCode::NORMAL, "").await.unwrap();
    while first.next().await.is_some() {}
    ended.recv().await.unwrap();
    assert_eq!(cfg.deflate_contexts(), 0);
    let (_third, c) = wsx::connect(&url, &client).await.unwrap();
    assert!(!c.deflate.unwrap().server_no_context_takeover);
}
