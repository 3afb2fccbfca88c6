//! Commands per second per connection on every front-end of `wsx serve`
//! (`--commands-per-second`, `--command-burst`): the native protocol answers error 114
//! over the rate and closes with 3010 far over it; STOMP holds frames back (none is
//! lost); Socket.IO answers the ack with the error and disconnects far over it
//! (socket.io-client from the registry).
#![allow(clippy::unwrap_used)]

use std::time::{Duration, Instant};

use futures_util::StreamExt;
use wsx::{ClientConfig, Message};

mod common;

const RATE: [&str; 4] = ["--commands-per-second", "5", "--command-burst", "5"];

#[tokio::test]
async fn native_commands_over_the_rate_get_114_and_far_over_it_close_3010() {
    let (_server, addr) = common::serve(&RATE).await;
    let (mut ws, _) = common::native(&addr, &[serde_json::json!({"id": 1, "connect": {}})]).await;
    // Four more fit in the burst of five (connect took one); the rest are refused.
    assert_eq!(refused_of(&mut ws, 2..9).await, 3);
    // Far over it: closed with 3010.
    for id in 100..220 {
        if ws
            .send(Message::text(format!(r#"{{"id":{id},"ping":{{}}}}"#)))
            .await
            .is_err()
        {
            break;
        }
    }
    let mut code = None;
    while let Some(m) = ws.next().await {
        if let Ok(Message::Close(Some(f))) = m {
            code = Some(f.code.0);
        }
    }
    assert_eq!(code, Some(3010));
}

/// Send pings `ids` and count the replies refused with 114.
async fn refused_of(
    ws: &mut wsx::WebSocket<wsx::MaybeTlsStream>,
    ids: std::ops::Range<u64>,
) -> usize {
    for id in ids.clone() {
        ws.send(Message::text(format!(r#"{{"id":{id},"ping":{{}}}}"#)))
            .await
            .unwrap();
    }
    let mut refused = 0;
    for id in ids {
        let Some(Ok(Message::Text(t))) = ws.next().await else {
            panic!("no reply")
        };
        let v: serde_json::Value = serde_json::from_str(t.as_str()).unwrap();
        assert_eq!(v["id"], id);
        if v["error"]["code"] == 114 {
            refused += 1;
        } else {
            assert!(v["error"].is_null(), "{v}");
        }
    }
    refused
}

#[tokio::test]
async fn a_reloaded_rate_applies_to_connections_already_open() {
    let dir = common::temp_dir("rate-reload");
    let config = dir.join("wsx.toml");
    std::fs::write(
        &config,
        "commands_per_second = 1000\ncommand_burst = 1000\n",
    )
    .unwrap();
    let (server, addr, mut log) =
        common::launch_watched(&["--config", &config.display().to_string()], "http").await;
    let (mut ws, _) = common::native(&addr, &[serde_json::json!({"id": 1, "connect": {}})]).await;
    assert_eq!(refused_of(&mut ws, 2..12).await, 0, "well within the rate");
    std::fs::write(&config, "commands_per_second = 1\ncommand_burst = 2\n").unwrap();
    common::signal(&server, "HUP");
    common::log_line(&mut log, "settings reloaded").await;
    // The open connection's bucket holds at most the new burst: two pass, the rest wait.
    let refused = refused_of(&mut ws, 20..30).await;
    assert!(
        refused >= 7,
        "the open connection is held to the new rate: {refused} refused"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test]
async fn stomp_frames_over_the_rate_are_held_back_not_lost() {
    let (_server, addr) = common::serve(&RATE).await;
    let (mut ws, _) = wsx::connect(
        &format!("ws://{addr}/stomp"),
        &ClientConfig::default().subprotocols(["v12.stomp"]),
    )
    .await
    .unwrap();
    ws.send(Message::text("CONNECT\naccept-version:1.2\nhost:x\n\n\0"))
        .await
        .unwrap();
    let Some(Ok(Message::Text(t))) = ws.next().await else {
        panic!()
    };
    assert!(t.as_str().starts_with("CONNECTED"), "{t}");
    let start = Instant::now();
    for n in 0..14 {
        ws.send(Message::text(format!(
            "SEND\ndestination:/topic/r\nreceipt:{n}\n\nbody {n}\0"
        )))
        .await
        .unwrap();
    }
    for n in 0..14 {
        let Some(Ok(Message::Text(t))) = ws.next().await else {
            panic!("receipt {n} missing")
        };
        assert!(
            t.as_str()
                .starts_with(&format!("RECEIPT\nreceipt-id:{n}\n")),
            "{t}"
        );
    }
    // CONNECT and four SENDs in the burst, the other ten at five a second.
    assert!(
        start.elapsed() >= Duration::from_millis(1800),
        "{:?}",
        start.elapsed()
    );
}

#[tokio::test]
async fn socketio_events_over_the_rate_get_an_error_ack_and_far_over_it_a_disconnect() {
    let (_server, addr) = common::serve(&RATE).await;
    common::node_script("socketio/rate.mjs", &[&addr], "OK passed").await;
}
