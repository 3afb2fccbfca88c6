//! Upgrading through axum's extractor and through plain hyper.
#![allow(clippy::unwrap_used)]

use std::convert::Infallible;

use axum::routing::get;
use axum::Router;
use futures_util::StreamExt;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use wsx::upgrade::WebSocketUpgrade;
use wsx::{ClientConfig, DeflateConfig, Error, HandshakeError, Message, ServerConfig};

async fn echo(ws: &mut wsx::WebSocket<wsx::upgrade::UpgradedIo>) {
    while let Some(Ok(msg)) = ws.next().await {
        if msg.is_data() && ws.send(msg).await.is_err() {
            break;
        }
    }
}

async fn axum_server() -> String {
    let app = Router::new().route(
        "/echo",
        get(|up: WebSocketUpgrade| async move {
            let cfg = ServerConfig::default()
                .subprotocols(["chat"])
                .deflate(Some(DeflateConfig::default()));
            up.config(cfg)
                .on_upgrade(|mut ws| async move { echo(&mut ws).await })
        }),
    );
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    format!("127.0.0.1:{}", addr.port())
}

#[tokio::test]
async fn axum_extractor_upgrades_and_echoes() {
    let addr = axum_server().await;
    let cfg = ClientConfig::default()
        .subprotocols(["chat"])
        .deflate(Some(DeflateConfig::default()));
    let (mut ws, accepted) = wsx::connect(&format!("ws://{addr}/echo"), &cfg)
        .await
        .unwrap();
    assert_eq!(accepted.subprotocol.as_deref(), Some("chat"));
    assert!(accepted.deflate.is_some());
    let text = "compressible ".repeat(100);
    ws.send(Message::text(text.clone())).await.unwrap();
    assert_eq!(ws.next().await.unwrap().unwrap(), Message::text(text));
    ws.close(wsx::CloseCode::NORMAL, "").await.unwrap();
}

#[tokio::test]
async fn axum_refusal_is_an_http_status() {
    let addr = axum_server().await;
    let mut tcp = TcpStream::connect(&addr).await.unwrap();
    let req = format!(
        "GET /echo HTTP/1.1\r\nHost: {addr}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: bad\r\nSec-WebSocket-Version: 13\r\n\r\n"
    );
    tcp.write_all(req.as_bytes()).await.unwrap();
    let mut buf = vec![0u8; 1024];
    let n = tcp.read(&mut buf).await.unwrap();
    let resp = String::from_utf8_lossy(&buf[..n]);
    assert!(resp.starts_with("HTTP/1.1 400"), "{resp}");
    assert!(
        resp.contains("Sec-WebSocket-Key is not base64 of 16 bytes"),
        "{resp}"
    );
    let err = wsx::connect(
        &format!("ws://{addr}/echo"),
        &ClientConfig::default().header("Sec-WebSocket-Version", "8"),
    )
    .await
    .unwrap_err();
    assert!(
        matches!(
            err,
            Error::Handshake(HandshakeError::Refused {
                status: 400 | 426,
                ..
            })
        ),
        "{err:?}"
    );
}

#[tokio::test]
async fn plain_hyper_upgrade() {
    use hyper::body::Incoming;
    use hyper::service::service_fn;
    use hyper_util::rt::TokioIo;

    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let (tcp, _) = listener.accept().await.unwrap();
        let service = service_fn(|mut req: hyper::Request<Incoming>| async move {
            let cfg = ServerConfig::default();
            Ok::<_, Infallible>(match wsx::upgrade::upgrade(&mut req, &cfg) {
                Ok((resp, upgrade)) => {
                    tokio::spawn(async move {
                        let (mut ws, _) = upgrade.websocket().await.unwrap();
                        echo(&mut ws).await;
                    });
                    resp
                }
                Err(refusal) => refusal,
            })
        });
        let conn = hyper::server::conn::http1::Builder::new()
            .serve_connection(TokioIo::new(tcp), service)
            .with_upgrades();
        let _ = conn.await;
    });
    let (mut ws, _) = wsx::connect(&format!("ws://{addr}/"), &ClientConfig::default())
        .await
        .unwrap();
    ws.send(Message::binary(vec![1, 2, 3])).await.unwrap();
    assert_eq!(
        ws.next().await.unwrap().unwrap(),
        Message::binary(vec![1, 2, 3])
    );
}
