//! The test applications of the SockJS protocol suite (`sockjs-protocol.py`), built on
//! the library API (`wsx_hub::sockjs`):
//!
//! - `/echo`: every message back (streaming responses limited to 4,096 bytes);
//! - `/close`: each session is closed at once with `c[3000,"Go away!"]`;
//! - `/disabled_websocket_echo`: echo with the WebSocket transports off;
//! - `/cookie_needed_echo`: echo with the `JSESSIONID` cookie;
//! - `/broadcast`: every message to every open session.
//!
//! The iframe page loads sockjs-client from `--sockjs-url` (default
//! `http://localhost:8080/lib/sockjs.js`, what sockjs-node's test server uses).
//!
//! ```text
//! cargo run --release -p wsx-hub --example sockjs_conformance -- --listen 127.0.0.1:8081
//! ```

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use futures_util::FutureExt;
use tokio::sync::watch;
use tokio_util::task::TaskTracker;
use wsx::{OriginPolicy, ServerConfig};
use wsx_hub::sockjs::{SessionHandle, SockJs, SockJsConfig};
use wsx_hub::{Gate, Hub, HubConfig};

fn echo(gate: &Gate, cfg: SockJsConfig) -> SockJs {
    SockJs::new(
        gate,
        cfg,
        Arc::new(|mut s| {
            async move {
                let h = s.handle().clone();
                while let Some(m) = s.recv().await {
                    h.send(m);
                }
            }
            .boxed()
        }),
    )
}

#[tokio::main]
async fn main() {
    let mut listen: SocketAddr = "127.0.0.1:8081".parse().expect("address");
    let mut sockjs_url = "http://localhost:8080/lib/sockjs.js".to_string();
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--listen" => {
                listen = args
                    .next()
                    .and_then(|v| v.parse().ok())
                    .expect("--listen HOST:PORT")
            }
            "--sockjs-url" => sockjs_url = args.next().expect("--sockjs-url URL"),
            other => panic!("unknown argument {other} (use --listen HOST:PORT, --sockjs-url URL)"),
        }
    }
    let hub = Hub::new(HubConfig::default());
    let (_stop, stopped) = watch::channel(false);
    let gate = Gate::new(
        hub,
        ServerConfig::default().origin(OriginPolicy::Any),
        10_000,
        stopped,
        TaskTracker::new(),
    );
    let base = SockJsConfig::default().sockjs_url(sockjs_url);

    let close = SockJs::new(
        &gate,
        base.clone(),
        Arc::new(|s| {
            async move {
                s.handle().close(3000, "Go away!");
            }
            .boxed()
        }),
    );
    let members: Arc<Mutex<Vec<SessionHandle>>> = Arc::default();
    let broadcast = SockJs::new(
        &gate,
        base.clone(),
        Arc::new(move |mut s| {
            let members = members.clone();
            async move {
                members.lock().expect("members").push(s.handle().clone());
                while let Some(m) = s.recv().await {
                    let all = members.lock().expect("members").clone();
                    for h in all {
                        h.send(m.clone());
                    }
                }
                members.lock().expect("members").retain(|h| !h.is_closed());
            }
            .boxed()
        }),
    );
    let app = echo(&gate, base.clone().response_limit(4096))
        .router("/echo")
        .merge(close.router("/close"))
        .merge(echo(&gate, base.clone().websocket(false)).router("/disabled_websocket_echo"))
        .merge(echo(&gate, base.clone().cookie_needed(true)).router("/cookie_needed_echo"))
        .merge(broadcast.router("/broadcast"));
    let listener = tokio::net::TcpListener::bind(listen).await.expect("bind");
    println!(
        "listening on http://{}",
        listener.local_addr().expect("addr")
    );
    axum::serve(
        listener,
        app.into_make_service_with_connect_info::<SocketAddr>(),
    )
    .await
    .expect("serve");
}
