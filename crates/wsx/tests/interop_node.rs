//! Interop with Node's `ws` (installed by scripts/test), both directions.
#![allow(clippy::unwrap_used)]

mod common;

use common::*;

const NODE: Peer = Peer {
    name: "node",
    program: "node",
    client_script: "node_client.mjs",
    server_script: "node_server.mjs",
    require: require_ws,
    server_subprotocol: "superchat",
    plain_suffix: "{}",
    deflate_marker: "permessage-deflate",
};

#[tokio::test]
async fn node_client_plain() {
    peer_client_against_wsx(&NODE, "plain", false).await;
}

#[tokio::test]
async fn node_client_deflate() {
    peer_client_against_wsx(&NODE, "deflate", false).await;
}

#[tokio::test]
async fn node_client_deflate_no_context_takeover() {
    peer_client_against_wsx(&NODE, "deflate-nct", false).await;
}

#[tokio::test]
async fn node_client_wss() {
    peer_client_against_wsx(&NODE, "deflate", true).await;
}

#[tokio::test]
async fn wsx_client_to_node_plain() {
    wsx_client_against_peer(&NODE, "plain", false).await;
}

#[tokio::test]
async fn wsx_client_to_node_deflate() {
    wsx_client_against_peer(&NODE, "deflate", false).await;
}

#[tokio::test]
async fn wsx_client_to_node_deflate_no_context_takeover() {
    wsx_client_against_peer(&NODE, "deflate-nct", false).await;
}

#[tokio::test]
async fn wsx_client_to_node_wss() {
    wsx_client_against_peer(&NODE, "deflate", true).await;
}

fn require_ws() {
    require_node_module("ws");
}
