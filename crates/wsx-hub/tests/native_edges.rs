//! The native front-end over the protocol-neutral core: commands decoded into one
//! enum, the subscriptions gauge, errors on the wire, payload kinds, cleanup.
#![allow(clippy::unwrap_used)]

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use serde_json::{json, Value};
use tokio::net::TcpListener;
use wsx::{ClientConfig, MaybeTlsStream, Message, WebSocket};
use wsx_hub::{Hub, HubConfig, Payload};

async fn server(cfg: HubConfig) -> (Arc<Hub>, String) {
    let hub = Hub::new(cfg);
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let h = hub.clone();
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let hub = h.clone();
            tokio::spawn(async move {
                let Ok((ws, _)) = wsx::accept(tcp, &wsx::ServerConfig::default()).await else {
                    return;
                };
                wsx_hub::Session::new(hub, String::new()).run(ws).await;
            });
        }
    });
    (hub, format!("ws://{addr}/connection/websocket"))
}

async fn open(url: &str) -> WebSocket<MaybeTlsStream> {
    wsx::connect(url, &ClientConfig::default()).await.unwrap().0
}

async fn send(ws: &mut WebSocket<MaybeTlsStream>, text: &str) -> Value {
    ws.send(Message::text(text)).await.unwrap();
    recv(ws).await
}

async fn recv(ws: &mut WebSocket<MaybeTlsStream>) -> Value {
    match ws.next().await.unwrap().unwrap() {
        Message::Text(t) => serde_json::from_str(t.as_str()).unwrap(),
        other => panic!("{other:?}"),
    }
}

/// Wait (bounded) until `cond` holds; the hub's cleanup runs on the server's tasks.
async fn eventually(what: &str, cond: impl Fn() -> bool) {
    let waited = tokio::time::timeout(Duration::from_secs(5), async {
        while !cond() {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await;
    assert!(waited.is_ok(), "never: {what}");
}

fn token(secret: &str, sub: &str, channels: &[&str]) -> String {
    let exp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
        + 60;
    jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        &json!({"sub": sub, "exp": exp, "channels": channels}),
        &jsonwebtoken::EncodingKey::from_secret(secret.as_bytes()),
    )
    .unwrap()
}

#[tokio::test]
async fn a_command_with_two_method_keys_is_107_and_runs_neither() {
    let (hub, url) = server(HubConfig::default()).await;
    let mut ws = open(&url).await;
    send(&mut ws, r#"{"id":1,"connect":{}}"#).await;
    let r = send(
        &mut ws,
        r#"{"id":2,"subscribe":{"channel":"a"},"history":{"channel":"a"}}"#,
    )
    .await;
    assert_eq!(r["id"], 2);
    assert_eq!(r["error"]["code"], 107, "{r}");
    assert!(
        hub.channels().is_empty(),
        "the subscribe did not run either"
    );
}

#[tokio::test]
async fn channels_from_a_token_count_in_the_subscriptions_gauge() {
    let mut cfg = HubConfig::default();
    cfg.auth.hmac_secret = Some("s".into());
    let (hub, url) = server(cfg).await;
    let gauge = || hub.metrics().subscriptions.load(Ordering::Relaxed);
    let mut ws = open(&url).await;
    let r = send(
        &mut ws,
        &json!({"id": 1, "connect": {"token": token("s", "alice", &["a", "b"])}}).to_string(),
    )
    .await;
    assert_eq!(r["connect"]["subscribed"], json!(["a", "b"]), "{r}");
    assert_eq!(gauge(), 2);
    let r = send(&mut ws, r#"{"id":2,"unsubscribe":{"channel":"a"}}"#).await;
    assert!(r["error"].is_null(), "{r}");
    assert_eq!(gauge(), 1);
    drop(ws);
    eventually("the session ends", || hub.connections() == 0).await;
    eventually("the channels are left", || hub.channels().is_empty()).await;
    assert_eq!(gauge(), 0, "never negative");
}

#[tokio::test]
async fn errors_reach_the_wire_as_text_not_debug() {
    let (_hub, url) = server(HubConfig::default()).await;
    let mut ws = open(&url).await;
    send(&mut ws, r#"{"id":1,"connect":{}}"#).await;
    let r = send(&mut ws, r#"{"id":2,"subscribe":{"channel":"a b"}}"#).await;
    assert_eq!(r["error"]["code"], 107);
    assert_eq!(
        r["error"]["message"],
        "bad channel name: white space or a control character"
    );
}

#[tokio::test]
async fn text_and_binary_publications_reach_native_clients_as_json() {
    let (hub, url) = server(HubConfig::default()).await;
    let mut ws = open(&url).await;
    send(&mut ws, r#"{"id":1,"connect":{}}"#).await;
    send(&mut ws, r#"{"id":2,"subscribe":{"channel":"k"}}"#).await;
    hub.publish("k", Payload::json(r#"{"n":1}"#)).await.unwrap();
    hub.publish("k", Payload::text("not {json")).await.unwrap();
    hub.publish("k", Payload::binary(vec![0u8, 0xff, 0x10]))
        .await
        .unwrap();
    let got: Vec<Value> = [
        recv(&mut ws).await,
        recv(&mut ws).await,
        recv(&mut ws).await,
    ]
    .into_iter()
    .map(|p| p["push"]["pub"].clone())
    .collect();
    assert_eq!(got[0], json!({"offset": 1, "data": {"n": 1}}));
    assert_eq!(got[1], json!({"offset": 2, "data": "not {json"}));
    assert_eq!(
        got[2],
        json!({"offset": 3, "data": "AP8Q", "encoding": "base64"})
    );
    // History says the same.
    let r = send(&mut ws, r#"{"id":3,"history":{"channel":"k"}}"#).await;
    assert_eq!(r["history"]["publications"], json!(got));
}

#[tokio::test]
async fn a_session_dropped_mid_flight_leaves_no_subscription_or_presence() {
    let (hub, _url) = server(HubConfig::default()).await;
    let mut s = wsx_hub::HubSession::new(hub.clone(), "test", String::new());
    s.connect(wsx_hub::ConnectRequest::default()).await.unwrap();
    s.subscribe("room", None, None).await.unwrap();
    assert_eq!(hub.presence_stats("room").await.unwrap(), (1, 1));
    assert_eq!(hub.connections(), 1);
    drop(s); // as when a front-end's task is aborted
    assert_eq!(hub.connections(), 0);
    eventually("the subscription is removed", || hub.channels().is_empty()).await;
    let presence = hub.presence_stats("room").await;
    assert!(
        matches!(
            presence,
            Err(wsx_hub::HubError::UnknownChannel) | Ok((0, 0))
        ),
        "{presence:?}"
    );
    assert_eq!(hub.metrics().subscriptions.load(Ordering::Relaxed), 0);
}

#[tokio::test]
async fn before_connect_anything_but_connect_closes_with_3009_malformed_or_binary_too() {
    let (_hub, url) = server(HubConfig::default()).await;
    for first in [Message::text("{not json"), Message::binary(vec![1u8, 2, 3])] {
        let mut ws = open(&url).await;
        ws.send(first).await.unwrap();
        match ws.next().await.unwrap().unwrap() {
            Message::Close(Some(f)) => assert_eq!(f.code, wsx::CloseCode(3009)),
            other => panic!("{other:?}"),
        }
    }
}

#[tokio::test]
async fn ids_are_echoed_when_given_and_must_be_integers() {
    let (_hub, url) = server(HubConfig::default()).await;
    let mut ws = open(&url).await;
    send(&mut ws, r#"{"id":1,"connect":{}}"#).await;
    let r = send(&mut ws, r#"{"ping":{}}"#).await;
    assert_eq!(r, json!({"ping": {}}), "no id given, none answered");
    let r = send(&mut ws, r#"{"id":"seven","ping":{}}"#).await;
    assert_eq!(r["error"]["code"], 107);
    assert!(r.get("id").is_none(), "{r}");
    let r = send(&mut ws, r#"{"id":7,"ping":{}}"#).await;
    assert_eq!(r, json!({"id": 7, "ping": {}}));
}

#[tokio::test]
async fn history_since_another_epoch_has_its_own_code() {
    let (_hub, url) = server(HubConfig::default()).await;
    let mut ws = open(&url).await;
    send(&mut ws, r#"{"id":1,"connect":{}}"#).await;
    send(&mut ws, r#"{"id":2,"publish":{"channel":"h","data":1}}"#).await;
    let r = send(
        &mut ws,
        r#"{"id":3,"history":{"channel":"h","since":{"offset":0,"epoch":"not-this-one"}}}"#,
    )
    .await;
    assert_eq!(r["error"]["code"], 112, "{r}");
    let r = send(&mut ws, r#"{"id":4,"history":{"channel":"nothing-here"}}"#).await;
    assert!(r["error"].is_null() || r["error"]["code"] == 102, "{r}");
}
