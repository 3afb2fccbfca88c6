//! Interop with Python's `websockets` (installed by scripts/test), both directions.
#![allow(clippy::unwrap_used)]

mod common;

use common::*;

const PYTHON: Peer = Peer {
    name: "py",
    program: "python3",
    client_script: "py_client.py",
    server_script: "py_server.py",
    require: require_python_websockets,
    server_subprotocol: "superchat",
    plain_suffix: "[]",
    deflate_marker: "PerMessageDeflate",
};

#[tokio::test]
async fn python_client_plain() {
    peer_client_against_wsx(&PYTHON, "plain", false).await;
}

#[tokio::test]
async fn python_client_deflate() {
    peer_client_against_wsx(&PYTHON, "deflate", false).await;
}

#[tokio::test]
async fn python_client_deflate_no_context_takeover() {
    peer_client_against_wsx(&PYTHON, "deflate-nct", false).await;
}

#[tokio::test]
async fn python_client_wss() {
    peer_client_against_wsx(&PYTHON, "deflate", true).await;
}

#[tokio::test]
async fn wsx_client_to_python_plain() {
    wsx_client_against_peer(&PYTHON, "plain", false).await;
}

#[tokio::test]
async fn wsx_client_to_python_deflate() {
    wsx_client_against_peer(&PYTHON, "deflate", false).await;
}

#[tokio::test]
async fn wsx_client_to_python_deflate_no_context_takeover() {
    wsx_client_against_peer(&PYTHON, "deflate-nct", false).await;
}

#[tokio::test]
async fn wsx_client_to_python_wss() {
    wsx_client_against_peer(&PYTHON, "deflate", true).await;
}
