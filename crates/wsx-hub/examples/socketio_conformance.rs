//! The test applications of the official Engine.IO and Socket.IO protocol suites,
//! built on the library API (`wsx_hub::engineio`, `wsx_hub::socketio`):
//!
//! - `/engine.io/`: the raw Engine.IO echo app (every message sent back);
//! - `/socket.io/`: the app of the socket.io-protocol suite's README — on connect,
//!   `auth` with the handshake's auth payload; `message` → `message-back` with the same
//!   arguments; `message-with-ack` → acknowledged with them; namespace `/custom` the
//!   same; plus `join(room, ack)` (acks `"joined:" + room`) and `broadcast(room, ...args)`
//!   (emits `room-message(room, ...args)` to the room).
//!
//! Both with the suites' timing: ping interval 300 ms, ping timeout 200 ms, max payload
//! 1,000,000 bytes, connect timeout 1,000 ms.
//!
//! ```text
//! cargo run --release -p wsx-hub --example socketio_conformance -- --listen 127.0.0.1:3000
//! ```

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use futures_util::FutureExt;
use tokio::sync::watch;
use tokio_util::task::TaskTracker;
use wsx::{OriginPolicy, ServerConfig};
use wsx_hub::engineio::{Engine, EngineConfig, Frame, Inbound};
use wsx_hub::socketio::{Args, Namespace, SocketIo, SocketIoConfig};
use wsx_hub::{Gate, Hub, HubConfig};

fn suite_app(ns: &Namespace) {
    ns.on_connection(|socket| async move {
        let auth =
            socket.handshake().auth.clone().unwrap_or_else(|| {
                serde_json::value::RawValue::from_string("{}".into()).expect("{}")
            });
        socket.emit("auth", Args::new().push_raw(auth));
        socket.on("message", |s, args, _| async move {
            s.emit("message-back", args);
        });
        socket.on("message-with-ack", |_, args, ack| async move {
            if let Some(ack) = ack {
                ack.send(args);
            }
        });
        socket.on("join", |s, args, ack| async move {
            let room: String = args.get(0).unwrap_or_default();
            let joined = s.join(&room).await;
            if let Some(ack) = ack {
                match joined {
                    Ok(()) => ack.send(Args::new().push(&format!("joined:{room}"))),
                    Err(e) => {
                        ack.send(Args::new().push(&serde_json::json!({"error": e.to_string()})))
                    }
                };
            }
        });
        socket.on("broadcast", |s, args, _| async move {
            let (values, attachments) = args.into_parts();
            let mut values = values.into_iter();
            let Some(room) = values.next() else { return };
            let Ok(name) = serde_json::from_str::<String>(room.get()) else {
                return;
            };
            let mut out = Args::from_parts(vec![room], attachments);
            for v in values {
                out = out.push_raw(v);
            }
            let _ = s.namespace().to(&name).emit("room-message", out).await;
        });
    });
}

#[tokio::main]
async fn main() {
    let mut listen: SocketAddr = "127.0.0.1:3000".parse().expect("address");
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--listen" => {
                listen = args
                    .next()
                    .and_then(|v| v.parse().ok())
                    .expect("--listen HOST:PORT")
            }
            other => panic!("unknown argument {other} (use --listen HOST:PORT)"),
        }
    }
    let engine_cfg = EngineConfig::default()
        .heartbeat(Duration::from_millis(300), Duration::from_millis(200))
        .max_payload(1_000_000);
    let hub = Hub::new(HubConfig::default());
    let (_stop, stopped) = watch::channel(false);
    let gate = Gate::new(
        hub.clone(),
        ServerConfig::default().origin(OriginPolicy::Any),
        10_000,
        stopped,
        TaskTracker::new(),
    );

    let echo = Engine::new(
        &gate,
        engine_cfg.clone(),
        Arc::new(|mut eio| {
            async move {
                let handle = eio.handle().clone();
                while let Some(m) = eio.recv().await {
                    let frame = match m {
                        Inbound::Text(t) => Frame::message(&t),
                        Inbound::Binary(b) => Frame::binary(b),
                    };
                    handle.send(frame);
                }
            }
            .boxed()
        }),
    );

    let io = SocketIo::new(
        hub,
        SocketIoConfig::default()
            .engine(engine_cfg)
            .connect_timeout(Duration::from_millis(1000)),
    );
    suite_app(&io.of("/"));
    suite_app(&io.of("/custom"));

    let app = echo
        .router("/engine.io/")
        .merge(io.router(&gate, "/socket.io/"));
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
