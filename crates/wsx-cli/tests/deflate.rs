//! permessage-deflate on the hub's fan-out with Node `ws` clients (from the registry):
//! a publication is compressed once for the subscribers without server context
//! takeover, with its own context for the others, and beyond `--max-deflate-contexts`
//! new connections are answered without context takeover.
#![allow(clippy::unwrap_used)]

use std::path::Path;

mod common;

#[tokio::test]
async fn fan_out_compresses_for_ws_clients_with_and_without_context_takeover() {
    let key = "deflate-test-key-0123456789";
    let (_server, addr) = common::serve(&["--api-key", key, "--max-deflate-contexts", "1"]).await;
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/deflate/fanout_ws.mjs");
    let out = tokio::process::Command::new("node")
        .arg(script)
        .args([&addr, key])
        .current_dir(Path::new(env!("CARGO_MANIFEST_DIR")).join("../.."))
        .output()
        .await
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success() && stdout.contains("OK passed"),
        "{stdout}\n{stderr}"
    );
    println!("{stdout}");
}
