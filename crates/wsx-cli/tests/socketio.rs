//! Socket.IO on `wsx serve`: socket.io-client 4 from the registry, in Node
//! (`socketio/sio_node.mjs`) and in Chromium (`browser/socketio.mjs`).
#![allow(clippy::unwrap_used)]

use std::path::{Path, PathBuf};
use std::process::Command;

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

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn run_node(script: &Path) {
    let out = Command::new("node")
        .arg(script)
        .arg(env!("CARGO_BIN_EXE_wsx"))
        .arg(free_port().to_string())
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
