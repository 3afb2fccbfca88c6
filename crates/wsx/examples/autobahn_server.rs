//! Echo server for the Autobahn|Testsuite (`wstest -m fuzzingclient`), compression on.
//!
//! `cargo run --release -p wsx --example autobahn_server -- --port 9001`

use futures_util::StreamExt;
use wsx::{Config, DeflateConfig, Message, OriginPolicy, ServerConfig};

#[tokio::main(flavor = "current_thread")]
async fn main() -> std::io::Result<()> {
    let mut args = std::env::args().skip(1);
    let mut port = 9001u16;
    while let Some(a) = args.next() {
        if a == "--port" {
            port = args.next().and_then(|p| p.parse().ok()).unwrap_or(port);
        }
    }
    let cfg = ServerConfig::default()
        .origin(OriginPolicy::Any)
        .deflate(Some(DeflateConfig::default()))
        .protocol(
            Config::default()
                .max_frame_size(64 << 20)
                .max_message_size(64 << 20),
        );
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", port)).await?;
    eprintln!("autobahn echo server on ws://127.0.0.1:{port}");
    loop {
        let (tcp, _) = listener.accept().await?;
        let cfg = cfg.clone();
        tokio::spawn(async move {
            let _ = tcp.set_nodelay(true);
            let Ok((mut ws, _)) = wsx::accept(tcp, &cfg).await else {
                return;
            };
            while let Some(Ok(msg)) = ws.next().await {
                if let Message::Text(_) | Message::Binary(_) = msg {
                    if ws.send(msg).await.is_err() {
                        break;
                    }
                }
            }
        });
    }
}
