//! An axum app with a WebSocket echo route.
//!
//! `cargo run -p wsx --features axum --example axum_echo` then connect to
//! `ws://127.0.0.1:3001/echo` (e.g. `wsx connect ws://127.0.0.1:3001/echo`).

use axum::routing::get;
use axum::Router;
use futures_util::StreamExt;
use wsx::upgrade::WebSocketUpgrade;
use wsx::{DeflateConfig, ServerConfig};

async fn echo(upgrade: WebSocketUpgrade) -> axum::response::Response {
    let cfg = ServerConfig::default().deflate(Some(DeflateConfig::default()));
    upgrade.config(cfg).on_upgrade(|mut ws| async move {
        while let Some(Ok(msg)) = ws.next().await {
            if msg.is_data() && ws.send(msg).await.is_err() {
                break;
            }
        }
    })
}

#[tokio::main]
async fn main() -> std::io::Result<()> {
    let addr = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "127.0.0.1:3001".into());
    let app = Router::new()
        .route("/echo", get(echo))
        .route("/", get(|| async { "wsx axum echo: connect to /echo" }));
    let listener = tokio::net::TcpListener::bind(&addr).await?;
    eprintln!("listening on http://{addr}, WebSocket at ws://{addr}/echo");
    axum::serve(listener, app).await
}
