//! Socket.IO on `wsx serve`: socket.io-client 4 from the registry, in Node
//! (`socketio/sio_node.mjs`) and in Chromium (`browser/socketio.mjs`).
#![allow(clippy::unwrap_used)]

use std::path::{Path, PathBuf};
use std::process::Command;

mod common;

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// Every channel of the default namespace keeps presence (with join/leave events) and
/// history (for recovery).
fn config() -> PathBuf {
    let dir = std::env::temp_dir().join(format!("wsx-sio-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("namespaces.toml");
    std::fs::write(
        &path,
        "[namespaces.default]\npresence = true\njoin_leave = true\nhistory_size = 100\n",
    )
    .unwrap();
    path
}

fn run_node(script: &Path) {
    let out = Command::new("node")
        .arg(script)
        .arg(env!("CARGO_BIN_EXE_wsx"))
        .arg(common::free_port().to_string())
        .arg(config())
        .current_dir(root())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success() && stdout.contains("OK passed"),
        "{stdout}\n{stderr}"
    );
}

#[test]
fn socket_io_client_in_node_over_every_transport() {
    run_node(&Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/socketio/sio_node.mjs"));
}

/// The Origin allow-list applies to polling as to WebSocket; allowed cross-origin
/// requests get CORS headers (with credentials when configured) and preflights answers.
#[tokio::test]
async fn polling_obeys_the_origin_allow_list_and_answers_cors() {
    let poll = |addr: &str, origin: &str, method: &str| {
        format!(
            "{method} /socket.io/?EIO=4&transport=polling HTTP/1.1\r\nHost: {addr}\r\nOrigin: {origin}\r\n\
             Access-Control-Request-Headers: content-type\r\nConnection: close\r\n\r\n"
        )
    };
    // Default: same origin only.
    let (_server, addr) = common::serve(&["--demo", "off"]).await;
    let evil = common::http(&addr, &poll(&addr, "http://evil.example", "GET")).await;
    assert!(evil.starts_with("HTTP/1.1 403"), "{evil}");
    assert!(
        evil.ends_with(r#"{"code":4,"message":"Forbidden"}"#),
        "{evil}"
    );
    let same = common::http(&addr, &poll(&addr, &format!("http://{addr}"), "GET")).await;
    assert!(same.starts_with("HTTP/1.1 200"), "{same}");
    assert!(
        same.contains(&format!("access-control-allow-origin: http://{addr}")),
        "{same}"
    );
    assert!(!same.contains("access-control-allow-credentials"), "{same}");

    // An allow-list with credentials on.
    let (_server, addr) = common::serve(&[
        "--demo",
        "off",
        "--allowed-origins",
        "http://app.example",
        "--socketio-cors-credentials",
        "on",
    ])
    .await;
    let ok = common::http(&addr, &poll(&addr, "http://app.example", "GET")).await;
    assert!(ok.starts_with("HTTP/1.1 200"), "{ok}");
    assert!(
        ok.contains("access-control-allow-origin: http://app.example"),
        "{ok}"
    );
    assert!(
        ok.contains("access-control-allow-credentials: true"),
        "{ok}"
    );
    let pre = common::http(&addr, &poll(&addr, "http://app.example", "OPTIONS")).await;
    assert!(pre.starts_with("HTTP/1.1 204"), "{pre}");
    assert!(
        pre.contains("access-control-allow-methods: GET, POST, OPTIONS"),
        "{pre}"
    );
    assert!(
        pre.contains("access-control-allow-headers: content-type"),
        "{pre}"
    );
    let other = common::http(&addr, &poll(&addr, "http://other.example", "GET")).await;
    assert!(other.starts_with("HTTP/1.1 403"), "{other}");
}
