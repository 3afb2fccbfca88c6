//! Echo server for the Autobahn|Testsuite (`wstest -m fuzzingclient`), compression on.
//!
//! `cargo run --release -p wsx --example autobahn_server -- --port 9001 [--event-loop]`
//!
//! `--event-loop`: each accepted WebSocket is handed to a [`wsx::event_loop`] (the
//! handshake on tokio, the connection on the loop) instead of a task of its own.

use futures_util::StreamExt;
use wsx::event_loop::{Conn, EventLoop, Handler};
use wsx::{Config, DeflateConfig, IoConfig, Message, OriginPolicy, ServerConfig};

struct Echo;

impl Handler for Echo {
    fn on_message(&mut self, conn: &mut Conn<'_>, msg: Message) {
        let _ = conn.send(msg);
    }
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> std::io::Result<()> {
    let mut args = std::env::args().skip(1);
    let mut port = 9001u16;
    let mut event_loop = None;
    while let Some(a) = args.next() {
        match a.as_str() {
            "--port" => port = args.next().and_then(|p| p.parse().ok()).unwrap_or(port),
            "--event-loop" => event_loop = Some(EventLoop::start(IoConfig::default(), Echo)?),
            _ => {}
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
        let handle = event_loop.as_ref().map(EventLoop::handle);
        tokio::spawn(async move {
            let _ = tcp.set_nodelay(true);
            let Ok((mut ws, _)) = wsx::accept(tcp, &cfg).await else {
                return;
            };
            if let Some(handle) = handle {
                let _ = handle.adopt_websocket(ws);
                return;
            }
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
