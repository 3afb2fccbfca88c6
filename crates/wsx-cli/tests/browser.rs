//! In Chromium (playwright-core) against `wsx serve`: `web/wsx.js` (reconnect with
//! backoff, recovery of missed publications, reconnect after a server restart) and the
//! demo pages (grading with the real judge, chat, chart), also over each protocol of
//! their switch and with WebSocket blocked. Screenshots go to
//! `target/screenshots/`.
#![allow(clippy::unwrap_used)]

use std::path::{Path, PathBuf};
use std::process::Command;

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// One browser script at a time: each starts Chromium and servers, and the demo's
/// judge measures time limits; run side by side on two cores they starve each other.
static ONE_AT_A_TIME: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// Run `tests/browser/<script>` with the wsx binary, a free port (reused across server
/// restarts inside the script) and `args`; it prints OK on success.
fn run_script(script: &str, args: &[&str]) {
    let _turn = ONE_AT_A_TIME
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    let root = root();
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
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let out = Command::new("node")
        .arg(
            Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("tests/browser")
                .join(script),
        )
        .arg(env!("CARGO_BIN_EXE_wsx"))
        .arg(port.to_string())
        .args(args)
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

fn screenshots() -> PathBuf {
    let dir = root().join("target/screenshots");
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

#[test]
fn js_client_reconnects_and_recovers_in_chromium() {
    let shot = screenshots().join("js-client.png");
    run_script("js_client.mjs", &[shot.to_str().unwrap()]);
}

#[test]
fn demo_grading_page_with_the_real_judge() {
    run_script("demo.mjs", &[screenshots().to_str().unwrap(), "grading"]);
}

#[test]
fn demo_chat_between_two_windows() {
    run_script("demo.mjs", &[screenshots().to_str().unwrap(), "chat"]);
}

#[test]
fn demo_chart_receives_ticks_and_recovers() {
    run_script("demo.mjs", &[screenshots().to_str().unwrap(), "chart"]);
}

#[test]
fn demo_chat_between_six_windows_on_six_protocols() {
    run_script("demo_switch.mjs", &["chat"]);
}

#[test]
fn demo_grading_over_every_protocol_of_the_switch() {
    run_script("demo_switch.mjs", &["grading"]);
}

#[test]
fn demo_chart_recovers_over_every_protocol_of_the_switch() {
    run_script("demo_switch.mjs", &["chart"]);
}

#[test]
fn demo_pages_work_and_recover_with_websocket_blocked() {
    run_script("demo_switch.mjs", &["blocked"]);
}

#[test]
fn stompjs_in_chromium_over_the_browsers_websocket() {
    run_script("stompjs.mjs", &[]);
}

#[test]
fn socket_io_client_in_chromium_polls_upgrades_and_recovers() {
    run_script("socketio.mjs", &[]);
}

#[test]
fn sockjs_client_in_chromium_on_every_browser_transport() {
    run_script("sockjs.mjs", &[]);
}

#[test]
fn js_client_falls_back_to_sse_polling_and_sockjs_and_recovers() {
    run_script("fallback.mjs", &[]);
}

#[test]
fn admin_page_logs_in_shows_live_figures_and_disconnects_a_client() {
    let shot = screenshots().join("admin.png");
    run_script("admin.mjs", &[shot.to_str().unwrap()]);
}
