//! The HTTP server API: auth, errors, and publishing to WebSocket subscribers.
#![allow(clippy::unwrap_used)]

use axum::routing::get;
use futures_util::StreamExt;
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use wsx::upgrade::WebSocketUpgrade;
use wsx::{ClientConfig, CloseCode, Message};
use wsx_hub::api::ApiConfig;
use wsx_hub::{Hub, HubConfig};

const KEY: &str = "test-key-0123456789";

async fn server() -> String {
    let mut cfg = HubConfig::default();
    // `judge:42` needs its namespace (with the default namespace's options).
    let opts = cfg.default_options.clone();
    cfg.namespaces.push(("judge".into(), opts));
    let hub = Hub::new(cfg);
    let mut api = ApiConfig::default();
    api.api_key = Some(KEY.into());
    api.max_body = 64 * 1024;
    let ws_hub = hub.clone();
    let app = axum::Router::new()
        .route(
            "/connection/websocket",
            get(move |up: WebSocketUpgrade| {
                let hub = ws_hub.clone();
                async move {
                    let user = up
                        .headers()
                        .get_str("x-user")
                        .unwrap_or_default()
                        .to_string();
                    up.on_upgrade(move |ws| wsx_hub::Session::new(hub, user).run(ws))
                }
            }),
        )
        .merge(wsx_hub::api::router(hub, api));
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    addr.to_string()
}

/// POST a body; returns (status, JSON body).
async fn post(addr: &str, path: &str, key: Option<&str>, body: &str) -> (u16, Value) {
    let mut tcp = TcpStream::connect(addr).await.unwrap();
    let auth = key
        .map(|k| format!("Authorization: apikey {k}\r\n"))
        .unwrap_or_default();
    let req = format!(
        "POST {path} HTTP/1.1\r\nHost: {addr}\r\n{auth}Content-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    tcp.write_all(req.as_bytes()).await.unwrap();
    let mut resp = Vec::new();
    tcp.read_to_end(&mut resp).await.unwrap();
    let resp = String::from_utf8_lossy(&resp).to_string();
    let status: u16 = resp[9..12].parse().unwrap();
    let body = resp.split_once("\r\n\r\n").map(|(_, b)| b).unwrap_or("");
    (status, serde_json::from_str(body).unwrap_or(Value::Null))
}

async fn subscriber(addr: &str, user: &str, channel: &str) -> wsx::WebSocket<wsx::MaybeTlsStream> {
    let cfg = ClientConfig::default().header("X-User", user);
    let (mut ws, _) = wsx::connect(&format!("ws://{addr}/connection/websocket"), &cfg)
        .await
        .unwrap();
    for (id, cmd) in [
        (1, json!({"connect": {}})),
        (2, json!({"subscribe": {"channel": channel}})),
    ] {
        let mut c = cmd.as_object().unwrap().clone();
        c.insert("id".into(), json!(id));
        ws.send(Message::text(Value::Object(c).to_string()))
            .await
            .unwrap();
        loop {
            let Message::Text(t) = ws.next().await.unwrap().unwrap() else {
                continue;
            };
            let v: Value = serde_json::from_str(t.as_str()).unwrap();
            if v["id"] == id {
                assert!(v["error"].is_null(), "{v}");
                break;
            }
        }
    }
    ws
}

async fn next_pub(ws: &mut wsx::WebSocket<wsx::MaybeTlsStream>) -> Value {
    loop {
        let Message::Text(t) = ws.next().await.unwrap().unwrap() else {
            continue;
        };
        let v: Value = serde_json::from_str(t.as_str()).unwrap();
        if v["push"]["pub"].is_object() {
            return v["push"]["pub"].clone();
        }
    }
}

#[tokio::test]
async fn publish_over_http_reaches_websocket_subscribers() {
    let addr = server().await;
    let mut ws = subscriber(&addr, "alice", "judge:42").await;
    let (status, body) = post(
        &addr,
        "/api/publish",
        Some(KEY),
        r#"{"channel":"judge:42","data":{"case":3,"verdict":"AC"}}"#,
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["result"]["offset"], 1);
    let p = next_pub(&mut ws).await;
    assert_eq!(p["data"], json!({"case": 3, "verdict": "AC"}));

    let (status, body) = post(
        &addr,
        "/api/broadcast",
        Some(KEY),
        r#"{"channels":["judge:42","judge:43","bad name"],"data":"x"}"#,
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(body["result"]["responses"][0]["offset"], 2);
    assert_eq!(body["result"]["responses"][2]["error"]["code"], 107);
    assert_eq!(next_pub(&mut ws).await["data"], "x");

    let (_, body) = post(&addr, "/api/channels", Some(KEY), "{}").await;
    assert_eq!(body["result"]["channels"]["judge:42"]["num_clients"], 1);
    let (_, body) = post(
        &addr,
        "/api/presence_stats",
        Some(KEY),
        r#"{"channel":"judge:42"}"#,
    )
    .await;
    assert_eq!(body["result"]["num_users"], 1);
    let (_, body) = post(
        &addr,
        "/api/presence",
        Some(KEY),
        r#"{"channel":"judge:42"}"#,
    )
    .await;
    assert_eq!(body["result"]["presence"].as_object().unwrap().len(), 1);
    let (_, body) = post(
        &addr,
        "/api/history",
        Some(KEY),
        r#"{"channel":"judge:42","limit":10}"#,
    )
    .await;
    assert_eq!(body["result"]["publications"].as_array().unwrap().len(), 2);
}

#[tokio::test]
async fn auth_and_errors() {
    let addr = server().await;
    let publish = r#"{"channel":"c","data":1}"#;
    assert_eq!(post(&addr, "/api/publish", None, publish).await.0, 401);
    let (status, body) = post(&addr, "/api/publish", Some("wrong-key-0123456789"), publish).await;
    assert_eq!((status, body["error"]["code"].as_u64()), (403, Some(103)));
    let (status, body) = post(&addr, "/api/publish", Some(KEY), "{nope").await;
    assert_eq!((status, body["error"]["code"].as_u64()), (400, Some(107)));
    // Nobody present: an empty answer, whether or not the channel ever had state.
    let (status, body) = post(&addr, "/api/presence", Some(KEY), r#"{"channel":"nobody"}"#).await;
    assert_eq!((status, &body["result"]["presence"]), (200, &json!({})));
    let (status, _) = post(&addr, "/api/frobnicate", Some(KEY), "{}").await;
    assert_eq!(status, 404);
    let big = format!(r#"{{"channel":"c","data":"{}"}}"#, "x".repeat(70 * 1024));
    let (status, body) = post(&addr, "/api/publish", Some(KEY), &big).await;
    assert_eq!((status, body["error"]["code"].as_u64()), (413, Some(106)));
}

#[tokio::test]
async fn api_is_off_without_a_key() {
    let hub = Hub::new(HubConfig::default());
    let app = wsx_hub::api::router(hub, ApiConfig::default());
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    let (status, body) = post(
        &addr,
        "/api/publish",
        Some(KEY),
        r#"{"channel":"c","data":1}"#,
    )
    .await;
    assert_eq!(status, 403, "{body}");
}

#[tokio::test]
async fn disconnect_a_user() {
    let addr = server().await;
    let mut a = subscriber(&addr, "mallory", "room").await;
    let mut b = subscriber(&addr, "mallory", "room").await;
    let mut c = subscriber(&addr, "bob", "room").await;
    let (status, body) = post(
        &addr,
        "/api/disconnect",
        Some(KEY),
        r#"{"user":"mallory","code":4003,"reason":"banned"}"#,
    )
    .await;
    assert_eq!(
        (status, body["result"]["disconnected"].as_u64()),
        (200, Some(2))
    );
    for ws in [&mut a, &mut b] {
        let mut saw_push = false;
        loop {
            match ws.next().await.unwrap().unwrap() {
                Message::Text(t) => {
                    let v: Value = serde_json::from_str(t.as_str()).unwrap();
                    saw_push |= v["push"]["disconnect"]["code"] == 4003
                        && v["push"]["disconnect"]["reconnect"] == false;
                }
                Message::Close(Some(f)) => {
                    assert_eq!((f.code, f.reason.as_str()), (CloseCode(4003), "banned"));
                    break;
                }
                _ => {}
            }
        }
        assert!(saw_push, "disconnect advice pushed first");
    }
    // Bob is still there.
    post(
        &addr,
        "/api/publish",
        Some(KEY),
        r#"{"channel":"room","data":"still here"}"#,
    )
    .await;
    assert_eq!(next_pub(&mut c).await["data"], "still here");
}

#[tokio::test]
async fn server_side_unsubscribe() {
    let addr = server().await;
    let mut mallory = subscriber(&addr, "mallory", "room").await;
    let mut bob = subscriber(&addr, "bob", "room").await;
    let (status, body) = post(
        &addr,
        "/api/unsubscribe",
        Some(KEY),
        r#"{"channel":"room","user":"mallory"}"#,
    )
    .await;
    assert_eq!(
        (status, body["result"]["unsubscribed"].as_u64()),
        (200, Some(1)),
        "{body}"
    );
    loop {
        let Message::Text(t) = mallory.next().await.unwrap().unwrap() else {
            continue;
        };
        let v: Value = serde_json::from_str(t.as_str()).unwrap();
        if v["push"]["unsubscribe"].is_object() {
            assert_eq!(v["push"]["channel"], "room");
            break;
        }
    }
    post(
        &addr,
        "/api/publish",
        Some(KEY),
        r#"{"channel":"room","data":"only bob"}"#,
    )
    .await;
    assert_eq!(next_pub(&mut bob).await["data"], "only bob");
    let (_, body) = post(
        &addr,
        "/api/presence_stats",
        Some(KEY),
        r#"{"channel":"room"}"#,
    )
    .await;
    assert_eq!(body["result"]["num_clients"], 1);
    // Mallory's connection is still open and can subscribe again.
    mallory
        .send(Message::text(r#"{"id":7,"ping":{}}"#))
        .await
        .unwrap();
    loop {
        let Message::Text(t) = mallory.next().await.unwrap().unwrap() else {
            continue;
        };
        let v: Value = serde_json::from_str(t.as_str()).unwrap();
        assert!(
            v["push"]["pub"].is_null(),
            "no publication after the server unsubscribed: {v}"
        );
        if v["id"] == 7 {
            break;
        }
    }
}

#[tokio::test]
async fn a_client_that_does_not_exist_is_404_not_zero() {
    let addr = server().await;
    for (method, body) in [
        ("/api/disconnect", r#"{"client":"987654321"}"#),
        (
            "/api/unsubscribe",
            r#"{"channel":"c","client":"987654321"}"#,
        ),
    ] {
        let (status, body) = post(&addr, method, Some(KEY), body).await;
        assert_eq!(status, 404, "{method}: {body}");
        assert_eq!(body["error"]["code"], 113, "{method}: {body}");
        assert_eq!(body["error"]["message"], "no such client");
    }
    // A user with no connection is not an error: there was nothing to do.
    let (status, body) = post(&addr, "/api/disconnect", Some(KEY), r#"{"user":"nobody"}"#).await;
    assert_eq!((status, &body["result"]["disconnected"]), (200, &json!(0)));
}
