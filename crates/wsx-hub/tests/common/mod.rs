//! Helpers shared by the hub's integration tests that serve HTTP transports: a gate
//! that allows any origin, an axum server on a free port, raw HTTP, a Node peer.
#![allow(dead_code, clippy::unwrap_used)]

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio_util::task::TaskTracker;
use wsx::{OriginPolicy, ServerConfig};
use wsx_hub::{Gate, Hub};

/// A gate for `hub` with `slots` connection slots, any origin, never shut down.
pub fn gate(hub: Arc<Hub>, slots: usize) -> Gate {
    let (stop_tx, stop) = watch::channel(false);
    std::mem::forget(stop_tx);
    Gate::new(
        hub,
        ServerConfig::default().origin(OriginPolicy::Any),
        slots,
        stop,
        TaskTracker::new(),
    )
}

/// Serve `router` on a free loopback port.
pub async fn serve(router: axum::Router) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        axum::serve(
            listener,
            router.into_make_service_with_connect_info::<SocketAddr>(),
        )
        .await
        .unwrap();
    });
    addr
}

/// One HTTP/1.1 request on a fresh connection: (status, body).
pub async fn http(addr: SocketAddr, method: &str, target: &str, body: &[u8]) -> (u16, String) {
    let mut tcp = TcpStream::connect(addr).await.unwrap();
    let head = format!(
        "{method} {target} HTTP/1.1\r\nHost: {addr}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    tcp.write_all(head.as_bytes()).await.unwrap();
    tcp.write_all(body).await.unwrap();
    let mut out = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), tcp.read_to_end(&mut out))
        .await
        .unwrap()
        .unwrap();
    let text = String::from_utf8_lossy(&out).into_owned();
    let status = text[9..12].parse().unwrap();
    let body = text.split_once("\r\n\r\n").map(|(_, b)| b).unwrap_or("");
    (status, body.to_string())
}

/// Run `node tests/SCRIPT ARGS...`; it must exit 0 and print "OK passed".
pub async fn node(script: &str, args: Vec<String>) {
    let script = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests")
        .join(script);
    let out = tokio::task::spawn_blocking(move || {
        std::process::Command::new("node")
            .arg(script)
            .args(args)
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success() && stdout.contains("OK passed"),
        "{stdout}\n{stderr}"
    );
}
