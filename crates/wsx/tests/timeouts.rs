//! Deadlines, on tokio's paused clock: no real waiting.
#![allow(clippy::unwrap_used)]

use std::time::Duration;

use futures_util::StreamExt;
use tokio::io::{AsyncReadExt, AsyncWriteExt, DuplexStream};
use wsx::{ClientConfig, CloseCode, Config, Error, Message, ServerConfig, TimeoutKind};

const REQUEST: &[u8] =
    b"GET / HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n";

/// Read from a raw peer until `pat` has been seen; returns everything read.
async fn read_until(io: &mut DuplexStream, pat: &[u8]) -> Vec<u8> {
    let mut got = Vec::new();
    let mut buf = [0u8; 1024];
    while !got.windows(pat.len()).any(|w| w == pat) {
        let n = io.read(&mut buf).await.unwrap();
        assert!(n > 0, "EOF before {pat:?}; got {got:?}");
        got.extend_from_slice(&buf[..n]);
    }
    got
}

#[tokio::test(start_paused = true)]
async fn handshake_timeout() {
    let (server_io, _client_io) = tokio::io::duplex(4096);
    let cfg = ServerConfig::default().handshake_timeout(Duration::from_secs(7));
    let start = tokio::time::Instant::now();
    let err = wsx::accept(server_io, &cfg).await.unwrap_err();
    assert!(
        matches!(err, Error::Timeout(TimeoutKind::Handshake)),
        "{err:?}"
    );
    assert_eq!(start.elapsed().as_secs(), 7);
}

#[tokio::test(start_paused = true)]
async fn client_handshake_timeout_when_the_server_never_answers() {
    let (client_io, _server_io) = tokio::io::duplex(4096);
    let cfg = ClientConfig::default();
    let err = wsx::client_handshake(client_io, "x", "/", &cfg)
        .await
        .unwrap_err();
    assert!(
        matches!(err, Error::Timeout(TimeoutKind::Handshake)),
        "{err:?}"
    );
}

#[tokio::test(start_paused = true)]
async fn keepalive_failure_closes_with_1011() {
    let (server_io, mut peer) = tokio::io::duplex(64 * 1024);
    peer.write_all(REQUEST).await.unwrap();
    let cfg = ServerConfig::default().protocol(
        Config::default()
            .ping_interval(Some(Duration::from_secs(10)))
            .pong_timeout(Duration::from_secs(5)),
    );
    let (mut ws, _) = wsx::accept(server_io, &cfg).await.unwrap();
    read_until(&mut peer, b"\r\n\r\n").await;
    let start = tokio::time::Instant::now();
    // The peer never answers: after 10 s a ping, after 5 s more the failure.
    let err = ws.next().await.unwrap().unwrap_err();
    assert!(
        matches!(err, Error::Timeout(TimeoutKind::Keepalive)),
        "{err:?}"
    );
    assert_eq!(err.close_code(), Some(CloseCode(1011)));
    assert_eq!(start.elapsed().as_secs(), 15);
    let mut wire = Vec::new();
    let _ = ws.next().await; // finish: flush and shut down
    peer.read_to_end(&mut wire).await.unwrap();
    assert_eq!(
        &wire[..2],
        &[0x89, 8],
        "a keepalive ping with an 8-byte payload"
    );
    assert_eq!(wire[10], 0x88, "then a close frame");
    assert_eq!(&wire[12..14], &1011u16.to_be_bytes(), "with code 1011");
}

#[tokio::test(start_paused = true)]
async fn keepalive_is_answered_by_a_live_peer() {
    let listener_cfg = ServerConfig::default().protocol(
        Config::default()
            .ping_interval(Some(Duration::from_secs(10)))
            .pong_timeout(Duration::from_secs(5)),
    );
    let (server_io, client_io) = tokio::io::duplex(64 * 1024);
    let server = tokio::spawn(async move {
        let (mut ws, _) = wsx::accept(server_io, &listener_cfg).await.unwrap();
        let mut pongs = 0;
        while let Some(msg) = ws.next().await {
            match msg.unwrap() {
                Message::Pong(_) => pongs += 1,
                Message::Close(_) => break,
                _ => {}
            }
        }
        pongs
    });
    let (mut ws, _) = wsx::client_handshake(client_io, "x", "/", &ClientConfig::default())
        .await
        .unwrap();
    let mut pings = 0;
    while pings < 5 {
        if let Message::Ping(_) = ws.next().await.unwrap().unwrap() {
            pings += 1;
        }
    }
    ws.close(CloseCode::NORMAL, "").await.unwrap();
    assert_eq!(server.await.unwrap(), 5, "each ping was answered in time");
}

#[tokio::test(start_paused = true)]
async fn close_timeout_when_the_peer_never_answers() {
    let (client_io, mut peer) = tokio::io::duplex(64 * 1024);
    let cfg =
        ClientConfig::default().protocol(Config::default().close_timeout(Duration::from_secs(3)));
    let fake_server = tokio::spawn(async move {
        let req = read_until(&mut peer, b"\r\n\r\n").await;
        let req = String::from_utf8(req).unwrap();
        let key = req
            .lines()
            .find_map(|l| l.strip_prefix("Sec-WebSocket-Key: "))
            .unwrap()
            .trim()
            .to_string();
        let accept = wsx::wsx_proto::handshake::accept_key(key.as_bytes());
        let resp = format!(
            "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: {accept}\r\n\r\n"
        );
        peer.write_all(resp.as_bytes()).await.unwrap();
        // Read the close frame but never answer it; hold the connection open.
        let mut buf = [0u8; 64];
        let _ = peer.read(&mut buf).await;
        std::future::pending::<()>().await;
    });
    let (mut ws, _) = wsx::client_handshake(client_io, "x", "/", &cfg)
        .await
        .unwrap();
    let start = tokio::time::Instant::now();
    ws.close(CloseCode::NORMAL, "bye").await.unwrap();
    assert_eq!(start.elapsed().as_secs(), 3);
    assert!(ws.next().await.is_none());
    fake_server.abort();
}

#[tokio::test(start_paused = true)]
async fn idle_timeout_closes_with_1001() {
    let (server_io, mut peer) = tokio::io::duplex(64 * 1024);
    peer.write_all(REQUEST).await.unwrap();
    let cfg = ServerConfig::default()
        .protocol(Config::default().idle_timeout(Some(Duration::from_secs(30))));
    let (mut ws, _) = wsx::accept(server_io, &cfg).await.unwrap();
    let err = ws.next().await.unwrap().unwrap_err();
    assert!(matches!(err, Error::Timeout(TimeoutKind::Idle)));
    assert_eq!(err.close_code(), Some(CloseCode::GOING_AWAY));
}
