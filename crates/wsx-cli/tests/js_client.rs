//! `web/wsx.js` in Chromium (playwright-core) against `wsx serve`: reconnect with
//! backoff, recovery of missed publications, reconnect after a server restart.
#![allow(clippy::unwrap_used)]

use std::path::Path;
use std::process::Command;

#[test]
fn js_client_reconnects_and_recovers_in_chromium() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let has = |check: &[&str]| {
        Command::new(check[0])
            .args(&check[1..])
            .current_dir(&root)
            .output()
            .map(|o| o.status.success())
            .unwrap_or(false)
    };
    assert!(
        has(&["node", "-e", "require.resolve('playwright-core')"])
            && Path::new("/usr/bin/chromium").exists(),
        "playwright-core and chromium are not installed: run scripts/test"
    );
    // A free port, reused across the server restart inside the script.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let shots = root.join("target/screenshots");
    std::fs::create_dir_all(&shots).unwrap();
    let out = Command::new("node")
        .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/browser/js_client.mjs"))
        .arg(env!("CARGO_BIN_EXE_wsx"))
        .arg(port.to_string())
        .arg(shots.join("js-client.png"))
        .current_dir(&root)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success() && stdout.starts_with("OK"),
        "{stdout}\n{stderr}"
    );
}
