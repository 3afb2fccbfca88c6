//! Chromium's native WebSocket (Debian `chromium`, driven by `playwright-core`) against
//! wsx servers: sizes, fragments, ping/pong, close codes and reasons both ways,
//! subprotocols, permessage-deflate with and without context takeover, and wss.
#![allow(clippy::unwrap_used)]

mod common;

use common::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use wsx::{CloseCode, CloseFrame, DeflateConfig};

/// A tiny HTTP server that answers every request with an empty page.
async fn page_server() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move {
        while let Ok((mut tcp, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut buf = [0u8; 4096];
                let _ = tcp.read(&mut buf).await;
                let body = "<!doctype html><title>wsx interop</title><body>running</body>";
                let resp = format!(
                    "HTTP/1.1 200 OK\r\nContent-Type: text/html\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                    body.len()
                );
                let _ = tcp.write_all(resp.as_bytes()).await;
            });
        }
    });
    port
}

#[tokio::test]
async fn chromium_native_websocket() {
    require_node_module("playwright-core");
    assert!(
        std::path::Path::new("/usr/bin/chromium").exists(),
        "chromium is not installed: run scripts/test"
    );
    let page = page_server().await;
    let (ws_port, mut seen) =
        echo_server(server_config(Some(DeflateConfig::default())), None).await;
    let nct = DeflateConfig::default()
        .server_no_context_takeover(true)
        .client_no_context_takeover(true);
    let (nct_port, _) = echo_server(server_config(Some(nct)), None).await;
    let pki = test_pki("browser");
    let (wss_port, _) = echo_server(
        server_config(Some(DeflateConfig::default())),
        Some(pki.server_tls()),
    )
    .await;
    let shots = repo_root().join("target/screenshots");
    std::fs::create_dir_all(&shots).unwrap();
    let args = vec![
        peer_script("browser.mjs").display().to_string(),
        format!("http://127.0.0.1:{page}/"),
        format!("ws://127.0.0.1:{ws_port}/"),
        format!("ws://127.0.0.1:{nct_port}/"),
        format!("wss://localhost:{wss_port}/"),
        pki.leaf_spki_sha256.clone(),
        shots.join("interop-browser.png").display().to_string(),
    ];
    let out = run_client("node", &args).await;
    assert!(out.starts_with("OK"), "{out}");
    // What the server saw from the browser.
    let first = seen_until_close(&mut seen).await;
    let Seen::Accepted(proto, deflate) = &first[0] else {
        panic!("{first:?}")
    };
    assert_eq!(proto.as_deref(), Some("chat"));
    assert!(deflate.is_some(), "Chromium offers permessage-deflate");
    assert!(
        first.contains(&Seen::Pong(b"from-wsx".to_vec())),
        "the browser answered our ping: {first:?}"
    );
    // Chromium echoes the code and the reason.
    assert_eq!(
        first.last(),
        Some(&Seen::Close(Some(CloseFrame::new(
            CloseCode(4001),
            "bye from server"
        )))),
        "{first:?}"
    );
    let second = seen_until_close(&mut seen).await;
    assert_eq!(
        second.last(),
        Some(&Seen::Close(Some(CloseFrame::new(
            CloseCode(4002),
            "bye from client"
        ))))
    );
}
