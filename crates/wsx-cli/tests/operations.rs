//! Running `wsx serve` for real users: reloading settings and certificates without
//! dropping anyone (SIGHUP, `POST /api/reload`), and draining a node without a reconnect
//! storm (SIGTERM, `POST /api/drain`).
#![allow(clippy::unwrap_used)]

use std::time::{Duration, Instant};

use futures_util::StreamExt;
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use wsx::{ClientConfig, Message};

mod common;

use common::{api_call, http, launch_watched, log_line, pki_in, signal, temp_dir};

const KEY: &str = "operations-key-0123456789";

/// A TLS client trusting only `ca`: the leaf certificate the server presented, or
/// `None` when the handshake fails (the server's certificate is not from `ca`).
async fn leaf_seen(port: &str, ca: &str) -> Option<Vec<u8>> {
    let tls = tls_to(port, ca).await.ok()?;
    let (_, conn) = tls.get_ref();
    Some(conn.peer_certificates()?[0].to_vec())
}

fn der_of(pem: &str) -> Vec<u8> {
    wsx::tls::load_certs(pem).unwrap().remove(0).to_vec()
}

async fn echo(ws: &mut wsx::WebSocket<wsx::MaybeTlsStream>, text: &str) {
    ws.send(Message::text(text)).await.unwrap();
    match tokio::time::timeout(Duration::from_secs(5), ws.next()).await {
        Ok(Some(Ok(Message::Text(t)))) => assert_eq!(t.as_str(), text),
        other => panic!("no echo of {text}: {other:?}"),
    }
}

#[tokio::test]
async fn a_reload_serves_a_new_certificate_to_new_clients_while_open_ones_stay() {
    let dir = temp_dir("ops-tls");
    let (_, ca_a, cert_a, key_a) = pki_in(dir.join("a"));
    let (_, ca_b, cert_b, key_b) = pki_in(dir.join("b"));
    // The files the server reads: A's now, B's after the renewal.
    let (cert, key) = (dir.join("cert.pem"), dir.join("key.pem"));
    std::fs::copy(&cert_a, &cert).unwrap();
    std::fs::copy(&key_a, &key).unwrap();
    let config = dir.join("wsx.toml");
    std::fs::write(
        &config,
        format!(
            "tls_cert = {:?}\ntls_key = {:?}\napi_key = {KEY:?}\n",
            cert.display().to_string(),
            key.display().to_string()
        ),
    )
    .unwrap();
    let (server, addr, mut log) =
        launch_watched(&["--config", &config.display().to_string()], "https").await;
    let port = addr.rsplit(':').next().unwrap().to_string();
    assert_eq!(leaf_seen(&port, &ca_a).await, Some(der_of(&cert_a)));
    let url = format!("wss://localhost:{port}/echo");
    let trust_a = ClientConfig::default().ca_cert(wsx::tls::load_certs(&ca_a).unwrap().remove(0));
    let (mut open, _) = wsx::connect(&url, &trust_a).await.unwrap();
    echo(&mut open, "before the renewal").await;

    // The certificate is renewed in place, and the server told with SIGHUP.
    std::fs::copy(&cert_b, &cert).unwrap();
    std::fs::copy(&key_b, &key).unwrap();
    signal(&server, "HUP");
    let line = log_line(&mut log, "settings reloaded").await;
    assert!(!line.contains("restart_needed=[\""), "{line}");
    // New clients see B's certificate (and a client trusting only A no longer connects);
    // the client that was open stays open over A's session.
    assert_eq!(leaf_seen(&port, &ca_b).await, Some(der_of(&cert_b)));
    assert_eq!(leaf_seen(&port, &ca_a).await, None);
    echo(&mut open, "after the renewal").await;
    let trust_b = ClientConfig::default().ca_cert(wsx::tls::load_certs(&ca_b).unwrap().remove(0));
    let (mut fresh, _) = wsx::connect(&url, &trust_b).await.unwrap();
    echo(&mut fresh, "a new client").await;

    // A key that does not load changes nothing, and the reply says why.
    std::fs::write(&key, "not a key").unwrap();
    let tls_addr = format!("localhost:{port}");
    let (status, body) = https_reload(&tls_addr, &ca_b).await;
    assert_eq!(status, 400, "{body}");
    assert!(body.contains("TLS certificate"), "{body}");
    assert_eq!(leaf_seen(&port, &ca_b).await, Some(der_of(&cert_b)));
    echo(&mut open, "still open").await;
    let _ = std::fs::remove_dir_all(&dir);
}

/// A TLS connection to `localhost:port` trusting only `ca`.
async fn tls_to(
    port: &str,
    ca: &str,
) -> std::io::Result<tokio_rustls::client::TlsStream<tokio::net::TcpStream>> {
    let cfg = ClientConfig::default().ca_cert(wsx::tls::load_certs(ca).unwrap().remove(0));
    let connector = tokio_rustls::TlsConnector::from(wsx::tls::client_tls_config(&cfg).unwrap());
    let tcp = tokio::net::TcpStream::connect(format!("127.0.0.1:{port}")).await?;
    let name = rustls_pki_types::ServerName::try_from("localhost").unwrap();
    connector.connect(name, tcp).await
}

/// `POST /api/reload` over HTTPS (the server trusted through `ca`): (status, body).
async fn https_reload(addr: &str, ca: &str) -> (u16, String) {
    let port = addr.rsplit(':').next().unwrap();
    let mut tls = tls_to(port, ca).await.unwrap();
    let req = format!(
        "POST /api/reload HTTP/1.1\r\nHost: {addr}\r\nAuthorization: apikey {KEY}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
    );
    tls.write_all(req.as_bytes()).await.unwrap();
    let mut out = Vec::new();
    let _ = tls.read_to_end(&mut out).await;
    let out = String::from_utf8_lossy(&out).to_string();
    (out[9..12].parse().unwrap(), out)
}

#[tokio::test]
async fn a_reload_applies_keys_namespaces_and_limits_and_a_bad_file_changes_nothing() {
    let dir = temp_dir("ops-keys");
    let config = dir.join("wsx.toml");
    std::fs::write(&config, format!("api_key = {KEY:?}\n")).unwrap();
    let (_server, addr, _log) = launch_watched(
        &["--config", &config.display().to_string(), "--demo", "off"],
        "http",
    )
    .await;
    let publish = r#"{"channel":"news:1","data":{"n":1}}"#;
    let (status, body) = api_call(&addr, KEY, "publish", publish).await;
    assert_eq!(status, 404, "no namespace news yet: {body}");
    let other = "another-operations-key-987";
    std::fs::write(
        &config,
        format!(
            "api_key = {other:?}\nmax_message_size = \"2MiB\"\ncommands_per_second = 50\n[namespaces.news]\nhistory_size = 10\n"
        ),
    )
    .unwrap();
    let (status, body) = api_call(&addr, KEY, "reload", "").await;
    assert_eq!(status, 200, "{body}");
    let names = |v: &Value| -> Vec<String> {
        v.as_array()
            .unwrap()
            .iter()
            .map(|s| s.as_str().unwrap().to_string())
            .collect()
    };
    let mut changed = names(&body["result"]["changed"]);
    changed.sort();
    assert_eq!(changed, ["api_key", "commands_per_second", "namespaces"]);
    assert_eq!(
        names(&body["result"]["restart_needed"]),
        ["max_message_size"]
    );
    // The old key is refused, the new one publishes into the new namespace.
    assert_eq!(api_call(&addr, KEY, "publish", publish).await.0, 403);
    let (status, body) = api_call(&addr, other, "publish", publish).await;
    assert_eq!(status, 200, "{body}");

    // A file that does not parse, or a value that does not validate: nothing changes.
    for bad in ["api_key = \"short\"\n", "[namespaces.news\n"] {
        std::fs::write(&config, bad).unwrap();
        let (status, body) = api_call(&addr, other, "reload", "").await;
        assert_eq!(status, 400, "{body}");
        assert!(
            body["error"]["message"]
                .as_str()
                .unwrap()
                .starts_with("nothing changed: invalid setting"),
            "{body}"
        );
        assert_eq!(api_call(&addr, other, "publish", publish).await.0, 200);
    }
    // Without the key, no reload and no drain.
    assert_eq!(
        api_call(&addr, "wrong-key-0123456789", "reload", "")
            .await
            .0,
        403
    );
    assert_eq!(
        api_call(&addr, "wrong-key-0123456789", "drain", "").await.0,
        403
    );
    let _ = std::fs::remove_dir_all(&dir);
}

/// A native client subscribed to `channel`.
async fn subscriber(addr: &str, channel: &str) -> wsx::WebSocket<wsx::MaybeTlsStream> {
    common::native(
        addr,
        &[
            json!({"id": 1, "connect": {}}),
            json!({"id": 2, "subscribe": {"channel": channel}}),
        ],
    )
    .await
    .0
}

/// What a native client receives until its connection ends: (the disconnect push, when
/// it came, the close code).
async fn until_closed(
    mut ws: wsx::WebSocket<wsx::MaybeTlsStream>,
) -> (Option<Value>, Option<Instant>, Option<u16>) {
    let (mut push, mut at) = (None, None);
    loop {
        match tokio::time::timeout(Duration::from_secs(20), ws.next()).await {
            Ok(Some(Ok(Message::Text(t)))) => {
                let v: Value = serde_json::from_str(t.as_str()).unwrap();
                if let Some(d) = v["push"].get("disconnect") {
                    push = Some(d.clone());
                    at = Some(Instant::now());
                }
            }
            Ok(Some(Ok(Message::Close(c)))) => return (push, at, c.map(|c| c.code.0)),
            Ok(Some(Ok(_))) => {}
            _ => return (push, at, None),
        }
    }
}

#[tokio::test]
async fn a_drain_refuses_new_sessions_spreads_the_reconnects_over_its_window_and_exits() {
    const CLIENTS: usize = 40;
    let window = Duration::from_secs(4);
    let (mut server, addr, mut log) = launch_watched(
        &["--api-key", KEY, "--demo", "off", "--drain-window", "4s"],
        "http",
    )
    .await;
    let mut clients = Vec::new();
    for i in 0..CLIENTS {
        clients.push(subscriber(&addr, &format!("room{}", i % 4)).await);
    }
    assert!(http(
        &addr,
        "GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    )
    .await
    .starts_with("HTTP/1.1 200"));
    let waiting: Vec<_> = clients
        .into_iter()
        .map(|ws| tokio::spawn(until_closed(ws)))
        .collect();
    let began = Instant::now();
    let (status, body) = api_call(&addr, KEY, "drain", "").await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["result"]["sessions"], CLIENTS);
    assert_eq!(body["result"]["window_ms"], 4000);
    log_line(&mut log, "draining").await;
    // A load balancer's health check sees it; a new session is refused with a retry hint.
    let health = http(
        &addr,
        "GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert!(health.starts_with("HTTP/1.1 503"), "{health}");
    assert!(health.ends_with("draining\n"), "{health}");
    let refused = wsx::connect(
        &format!("ws://{addr}/connection/websocket"),
        &ClientConfig::default(),
    )
    .await
    .err()
    .map(|e| e.to_string())
    .unwrap_or_default();
    assert!(refused.contains("503"), "{refused}");

    let mut departures = Vec::new();
    for w in waiting {
        let (push, at, code) = w.await.unwrap();
        let push = push.expect("a disconnect push");
        assert_eq!(push["reconnect"], true, "{push}");
        assert_eq!(code, Some(1001));
        departures.push(at.unwrap().duration_since(began));
    }
    departures.sort();
    // Evenly over the window: the first near its start, the last near its end, and no
    // stretch of it without departures (the k-th of n goes at k/n of the window).
    let (first, last) = (departures[0], departures[CLIENTS - 1]);
    let gaps = departures.windows(2).map(|w| w[1] - w[0]).max().unwrap();
    eprintln!("drain: {CLIENTS} departures from {first:?} to {last:?}, largest gap {gaps:?}");
    assert!(first < window / 4, "first at {first:?}");
    assert!(
        last >= window * 3 / 4 && last < window + Duration::from_secs(2),
        "last at {last:?}"
    );
    assert!(gaps < window / 4, "a gap of {gaps:?}");
    // Every quarter of the window has about a quarter of the departures.
    for q in 0..4u32 {
        let n = departures
            .iter()
            .filter(|d| **d >= window * q / 4 && **d < window * (q + 1) / 4)
            .count();
        assert!(
            (CLIENTS / 8..=CLIENTS / 2).contains(&n),
            "quarter {q}: {n} of {CLIENTS}"
        );
    }
    // Empty: the server exits by itself, successfully.
    exits_successfully(&mut server).await;
}

/// The drained server exits by itself (within 10 s), with success.
async fn exits_successfully(server: &mut tokio::process::Child) {
    let status = tokio::time::timeout(Duration::from_secs(10), server.wait())
        .await
        .expect("the drained server exits")
        .unwrap();
    assert!(status.success(), "{status}");
}

#[tokio::test]
async fn sigterm_drains_stomp_clients_with_an_error_saying_to_reconnect() {
    let (mut server, _addr, stomp) = common::serve_stomp(&["--drain-window", "1s"]).await;
    let mut tcp = tokio::net::TcpStream::connect(&stomp).await.unwrap();
    tcp.write_all(b"CONNECT\naccept-version:1.2\nhost:localhost\nheart-beat:0,0\n\n\0")
        .await
        .unwrap();
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    while !String::from_utf8_lossy(&got).contains("CONNECTED") {
        let n = tcp.read(&mut buf).await.unwrap();
        assert!(n > 0, "closed before CONNECTED");
        got.extend_from_slice(&buf[..n]);
    }
    signal(&server, "TERM");
    let mut rest = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(10), tcp.read_to_end(&mut rest)).await;
    let rest = String::from_utf8_lossy(&rest).to_string();
    assert!(rest.starts_with("ERROR\n"), "{rest:?}");
    assert!(rest.contains("\nwsx-reconnect:true\n"), "{rest:?}");
    exits_successfully(&mut server).await;
}

#[tokio::test]
async fn a_drain_tells_socket_io_and_sockjs_clients_to_reconnect_their_own_way() {
    let (_server, addr) = common::serve(&["--api-key", KEY, "--drain-window", "1s"]).await;
    common::node_script("drain/clients.mjs", &[KEY, &addr], "OK").await;
}
