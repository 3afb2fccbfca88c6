//! Interop with Node's `ws` (installed by scripts/test), both directions.
#![allow(clippy::unwrap_used)]

mod common;

use common::*;
use wsx::DeflateConfig;

async fn node_client_against_wsx(mode: &str, tls: bool) {
    require_node_module("ws");
    let pki = tls.then(|| test_pki(&format!("node-{mode}")));
    let (port, mut seen) = echo_server(
        server_config(Some(DeflateConfig::default())),
        pki.as_ref().map(|p| p.server_tls()),
    )
    .await;
    let scheme = if tls { "wss" } else { "ws" };
    let host = if tls { "localhost" } else { "127.0.0.1" };
    let mut args = vec![
        peer_script("node_client.mjs").display().to_string(),
        format!("{scheme}://{host}:{port}/"),
        mode.to_string(),
    ];
    if let Some(p) = &pki {
        args.push(p.ca_pem.display().to_string());
    }
    let out = run_client("node", &args).await;
    assert!(out.contains("OK"), "{out}");
    // What the server saw on the first connection.
    let first = seen_until_close(&mut seen).await;
    let Seen::Accepted(proto, deflate) = &first[0] else {
        panic!("{first:?}")
    };
    assert_eq!(proto.as_deref(), Some("chat"), "server preference wins");
    assert_mode(mode, *deflate);
    assert!(
        first.contains(&Seen::Pong(b"from-wsx".to_vec())),
        "{first:?}"
    );
    // ws echoes the code and the reason.
    assert_eq!(
        first.last(),
        Some(&Seen::Close(Some(wsx::CloseFrame::new(
            wsx::CloseCode(4001),
            "bye from server"
        ))))
    );
    // The second connection: the client's close code and reason.
    let second = seen_until_close(&mut seen).await;
    assert_eq!(
        second.last(),
        Some(&Seen::Close(Some(wsx::CloseFrame::new(
            wsx::CloseCode(4002),
            "bye from client"
        ))))
    );
}

#[tokio::test]
async fn node_client_plain() {
    node_client_against_wsx("plain", false).await;
}

#[tokio::test]
async fn node_client_deflate() {
    node_client_against_wsx("deflate", false).await;
}

#[tokio::test]
async fn node_client_deflate_no_context_takeover() {
    node_client_against_wsx("deflate-nct", false).await;
}

#[tokio::test]
async fn node_client_wss() {
    node_client_against_wsx("deflate", true).await;
}

async fn wsx_client_against_node(mode: &str, tls: bool) {
    require_node_module("ws");
    let pki = tls.then(|| test_pki(&format!("nodes-{mode}")));
    let mut args = vec![
        peer_script("node_server.mjs").display().to_string(),
        mode.to_string(),
    ];
    if let Some(p) = &pki {
        args.push(p.cert_pem.display().to_string());
        args.push(p.key_pem.display().to_string());
    }
    let mut server = start_server("node", &args).await;
    let port = server.port;
    let mut cfg = client_config(mode);
    let url = match &pki {
        Some(p) => {
            cfg = cfg.ca_cert(p.ca_der.clone());
            format!("wss://localhost:{port}/")
        }
        None => format!("ws://127.0.0.1:{port}/"),
    };
    let accepted = wsx_client_cases(&url, &cfg).await;
    assert_eq!(
        accepted.subprotocol.as_deref(),
        Some("superchat"),
        "the ws server's handleProtocols"
    );
    assert_mode(mode, accepted.deflate);
    let line = server.line("accepted").await;
    if mode == "plain" {
        assert!(line.ends_with("{}"), "{line}");
    } else {
        assert!(line.contains("permessage-deflate"), "{line}");
    }
    assert_eq!(
        server.line("closed").await,
        "closed 4001 ",
        "wsx echoes the code, not the reason"
    );
    server.line("accepted").await;
    assert_eq!(server.line("closed").await, "closed 4002 bye from client");
}

#[tokio::test]
async fn wsx_client_to_node_plain() {
    wsx_client_against_node("plain", false).await;
}

#[tokio::test]
async fn wsx_client_to_node_deflate() {
    wsx_client_against_node("deflate", false).await;
}

#[tokio::test]
async fn wsx_client_to_node_deflate_no_context_takeover() {
    wsx_client_against_node("deflate-nct", false).await;
}

#[tokio::test]
async fn wsx_client_to_node_wss() {
    wsx_client_against_node("deflate", true).await;
}
