//! STOMP on `wsx serve`: real clients from the registries (`@stomp/stompjs` in Node,
//! `stomp.py` over WebSocket and TCP), the payload rules across protocols (STOMP, the
//! native protocol, the HTTP API), `/queue/` semantics, recovery, and bad input.
#![allow(clippy::unwrap_used)]

use std::collections::HashMap;
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use wsx::{ClientConfig, Message};
use wsx_hub::stomp::frame::{Command, Decoder, Frame, Item, Limits};

mod common;
use common::{pki, serve_stomp, serve_stomp_scheme};

const KEY: &str = "stomp-test-api-key-0123";

fn root() -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// The namespaces these tests' channels are in (`/topic/x:mix` is the channel `x:mix`
/// of the namespace `x`); `news` keeps history for recovery.
const NAMESPACES: &str = "[namespaces.x]\n[namespaces.node]\n[namespaces.py]\n\
                          [namespaces.news]\nhistory_size = 100\n\
                          [namespaces.room]\npresence = true\njoin_leave = true\n";

fn config_file() -> String {
    let dir = std::env::temp_dir().join(format!("wsx-stomp-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("namespaces.toml");
    std::fs::write(&path, NAMESPACES).unwrap();
    path.display().to_string()
}

async fn server() -> (tokio::process::Child, String, String) {
    let config = config_file();
    serve_stomp(&[
        "--stomp-users",
        "guest:guest",
        "--api-key",
        KEY,
        "--demo",
        "off",
        "--config",
        &config,
    ])
    .await
}

trait Io: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send {}
impl<T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send> Io for T {}

/// A raw STOMP client over TCP (or TLS), or over a WebSocket when its address is a
/// `ws://` URL, decoding with the front-end's own codec (the third-party clients are
/// in the interop tests above).
struct Raw {
    wire: Wire,
    decoder: Decoder,
}

enum Wire {
    Tcp(Box<dyn Io>),
    Ws(Box<wsx::WebSocket<wsx::MaybeTlsStream>>),
}

impl Raw {
    async fn open(addr: &str) -> Raw {
        if addr.starts_with("ws://") {
            let (ws, _) = wsx::connect(addr, &wsx::ClientConfig::default())
                .await
                .unwrap();
            return Raw::with(Wire::Ws(Box::new(ws)));
        }
        Raw::over(Box::new(TcpStream::connect(addr).await.unwrap()))
    }

    fn over(tcp: Box<dyn Io>) -> Raw {
        Raw::with(Wire::Tcp(tcp))
    }

    fn with(wire: Wire) -> Raw {
        let mut limits = Limits::default();
        limits.max_body = 64 << 20;
        Raw {
            wire,
            decoder: Decoder::new(limits),
        }
    }

    async fn connected(addr: &str, extra: &str) -> Raw {
        let mut c = Raw::open(addr).await;
        c.send(&format!(
            "CONNECT\naccept-version:1.2\nhost:h\nlogin:guest\npasscode:guest\n{extra}\n\0"
        ))
        .await;
        let f = c.frame().await;
        assert_eq!(f.command, Command::Connected, "{f:?}");
        c
    }

    async fn send(&mut self, s: &str) {
        self.send_bytes(s.as_bytes()).await;
    }

    async fn send_bytes(&mut self, b: &[u8]) {
        match &mut self.wire {
            Wire::Tcp(tcp) => tcp.write_all(b).await.unwrap(),
            Wire::Ws(ws) => {
                let msg = match std::str::from_utf8(b) {
                    Ok(t) => wsx::Message::text(t),
                    Err(_) => wsx::Message::binary(b.to_vec()),
                };
                ws.send(msg).await.unwrap()
            }
        }
    }

    /// The next frame (heart-beats skipped), within 5 s.
    async fn frame(&mut self) -> Frame {
        self.try_frame(Duration::from_secs(5))
            .await
            .expect("a frame in time")
    }

    async fn try_frame(&mut self, within: Duration) -> Option<Frame> {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            while let Some(item) = self.decoder.next().unwrap() {
                if let Item::Frame(f) = item {
                    return Some(f);
                }
            }
            match &mut self.wire {
                Wire::Tcp(tcp) => {
                    let mut buf = [0u8; 8192];
                    match tokio::time::timeout_at(deadline, tcp.read(&mut buf)).await {
                        Ok(Ok(0)) | Ok(Err(_)) | Err(_) => return None,
                        Ok(Ok(n)) => self.decoder.push(&buf[..n]),
                    }
                }
                Wire::Ws(ws) => match tokio::time::timeout_at(deadline, ws.next()).await {
                    Ok(Some(Ok(wsx::Message::Text(t)))) => self.decoder.push(t.as_bytes()),
                    Ok(Some(Ok(wsx::Message::Binary(b)))) => self.decoder.push(&b),
                    Ok(Some(Ok(_))) => {}
                    Ok(Some(Err(_)) | None) | Err(_) => return None,
                },
            }
        }
    }

    /// An ERROR frame, then the connection's end.
    async fn error_then_close(&mut self) -> Frame {
        let f = self.frame().await;
        assert_eq!(f.command, Command::Error, "{f:?}");
        assert!(
            self.try_frame(Duration::from_secs(5)).await.is_none(),
            "closed after the ERROR"
        );
        f
    }

    /// Subscribe (`extra`: more header lines, each ending in a line feed).
    async fn subscribe(&mut self, id: &str, dest: &str, extra: &str) -> Frame {
        self.send(&format!(
            "SUBSCRIBE\nid:{id}\ndestination:{dest}\nreceipt:sub-{id}\n{extra}\n\0"
        ))
        .await;
        let r = self.frame().await;
        assert_eq!(r.command, Command::Receipt, "{r:?}");
        r
    }
}

async fn api(addr: &str, method: &str, body: Value) -> Value {
    let body = body.to_string();
    let mut tcp = TcpStream::connect(addr).await.unwrap();
    tcp.write_all(
        format!(
            "POST /api/{method} HTTP/1.1\r\nHost: {addr}\r\nAuthorization: apikey {KEY}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        )
        .as_bytes(),
    )
    .await
    .unwrap();
    let mut resp = String::new();
    tcp.read_to_string(&mut resp).await.unwrap();
    let json = resp.split("\r\n\r\n").nth(1).unwrap();
    serde_json::from_str(json).unwrap()
}

fn run_peer(program: &str, args: &[&str]) -> String {
    let out = std::process::Command::new(program)
        .args(args)
        .current_dir(root())
        .output()
        .unwrap_or_else(|e| panic!("{program}: {e} (run scripts/test to install the peers)"));
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "{program} {args:?}\n{stdout}\n{stderr}"
    );
    stdout
}

#[tokio::test(flavor = "multi_thread")]
async fn stompjs_in_node_connects_sends_acks_and_reconnects() {
    let (_server, addr, _) = server().await;
    let script = root().join("crates/wsx-cli/tests/stomp/stompjs_node.mjs");
    let url = format!("ws://{addr}/stomp");
    let out =
        tokio::task::spawn_blocking(move || run_peer("node", &[script.to_str().unwrap(), &url]))
            .await
            .unwrap();
    assert!(out.contains("passed 7"), "{out}");
}

#[tokio::test(flavor = "multi_thread")]
async fn stomp_py_over_websocket_and_tcp() {
    let (_server, addr, stomp) = server().await;
    let script = root().join("crates/wsx-cli/tests/stomp/stomp_py.py");
    let ws_port = addr.rsplit(':').next().unwrap().to_string();
    let tcp_port = stomp.rsplit(':').next().unwrap().to_string();
    let out = tokio::task::spawn_blocking(move || {
        run_peer(
            "python3",
            &[script.to_str().unwrap(), "127.0.0.1", &ws_port, &tcp_port],
        )
    })
    .await
    .unwrap();
    assert_eq!(out, "ok websocket\nok tcp12\nok tcp11\n");
}

/// A native-protocol client, connected and subscribed to `channel`.
async fn native(addr: &str, channel: &str) -> wsx::WebSocket<wsx::MaybeTlsStream> {
    let commands = [
        json!({"id": 1, "connect": {}}),
        json!({"id": 2, "subscribe": {"channel": channel}}),
    ];
    common::native(addr, &commands).await.0
}

async fn native_pub(ws: &mut wsx::WebSocket<wsx::MaybeTlsStream>) -> Value {
    loop {
        let Some(Ok(Message::Text(t))) = ws.next().await else {
            panic!("closed")
        };
        let v: Value = serde_json::from_str(t.as_str()).unwrap();
        if v["push"]["pub"].is_object() {
            return v["push"]["pub"].clone();
        }
    }
}

#[tokio::test]
async fn payloads_cross_between_stomp_native_and_the_http_api() {
    let (_server, addr, stomp) = server().await;
    let mut s = Raw::connected(&stomp, "").await;
    s.subscribe("1", "/topic/x:mix", "").await;
    let mut n = native(&addr, "x:mix").await;

    // API and native publications reach STOMP as JSON bodies (the API's first: its
    // reply means it was published).
    api(
        &addr,
        "publish",
        json!({"channel": "x:mix", "data": [1, "two"]}),
    )
    .await;
    n.send(Message::text(
        json!({"id": 3, "publish": {"channel": "x:mix", "data": {"from": "native"}}}).to_string(),
    ))
    .await
    .unwrap();
    let m = s.frame().await;
    assert_eq!(m.get("content-type"), Some("application/json"));
    assert_eq!(m.get("destination"), Some("/topic/x:mix"));
    assert_eq!(
        serde_json::from_slice::<Value>(&m.body).unwrap(),
        json!([1, "two"])
    );
    let m = s.frame().await;
    assert_eq!(
        serde_json::from_slice::<Value>(&m.body).unwrap(),
        json!({"from": "native"})
    );

    // STOMP sends reach native clients by the payload rules.
    s.send("SEND\ndestination:/topic/x:mix\ncontent-type:application/json\n\n{\"a\":[1,2]}\0")
        .await;
    s.send("SEND\ndestination:/topic/x:mix\n\nhello\0").await;
    s.send_bytes(b"SEND\ndestination:/topic/x:mix\ncontent-type:application/octet-stream\ncontent-length:2\n\n\xff\x00\0")
        .await;
    s.send("SEND\ndestination:/topic/x:mix\ncontent-type:application/json\n\n{oops\0")
        .await;
    let got = [
        native_pub(&mut n).await, // the API's
        native_pub(&mut n).await, // its own
        native_pub(&mut n).await,
        native_pub(&mut n).await,
        native_pub(&mut n).await,
        native_pub(&mut n).await,
    ];
    assert_eq!(got[2]["data"], json!({"a": [1, 2]}), "JSON stays JSON");
    assert_eq!(got[3]["data"], json!("hello"), "text becomes a string");
    assert_eq!(got[4]["data"], json!("/wA="), "binary becomes base64");
    assert_eq!(got[4]["encoding"], json!("base64"));
    assert_eq!(
        got[5]["data"],
        json!("{oops"),
        "JSON that does not parse is text"
    );
    // The STOMP subscriber gets them back with their kinds.
    assert_eq!(
        s.frame().await.get("content-type"),
        Some("application/json")
    );
    let text = s.frame().await;
    assert_eq!(text.get("content-type"), Some("text/plain;charset=utf-8"));
    let bin = s.frame().await;
    assert_eq!(&bin.body[..], b"\xff\x00");
    assert_eq!(bin.get("content-type"), Some("application/octet-stream"));
    // STOMP sessions count in the metrics under their own label.
    let metrics = common::http(
        &addr,
        &format!("GET /metrics HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"),
    )
    .await;
    assert!(
        metrics.contains("wsx_frontend_connections{frontend=\"stomp\"} 1\n"),
        "{metrics}"
    );
    assert!(
        metrics.contains("wsx_frontend_connections{frontend=\"native\"} 1\n"),
        "{metrics}"
    );
}

#[tokio::test]
async fn a_queue_shares_messages_among_auto_consumers_without_loss_or_duplicate() {
    let (_server, _addr, stomp) = server().await;
    let mut consumers = Vec::new();
    for i in 0..3 {
        let mut c = Raw::connected(&stomp, "").await;
        c.subscribe(&format!("c{i}"), "/queue/work", "").await;
        consumers.push(c);
    }
    let mut producer = Raw::connected(&stomp, "").await;
    let n = 300;
    let mut batch = String::new();
    for i in 0..n {
        batch.push_str(&format!("SEND\ndestination:/queue/work\n\n{i}\0"));
    }
    batch.push_str("DISCONNECT\nreceipt:done\n\n\0");
    producer.send(&batch).await;
    assert_eq!(producer.frame().await.get("receipt-id"), Some("done"));
    let mut seen = HashMap::new();
    let mut per_consumer = Vec::new();
    for c in consumers.iter_mut() {
        let mut count = 0;
        while let Some(f) = c.try_frame(Duration::from_millis(500)).await {
            let body = String::from_utf8(f.body.to_vec()).unwrap();
            *seen.entry(body).or_insert(0) += 1;
            count += 1;
        }
        per_consumer.push(count);
    }
    assert_eq!(seen.len(), n, "no loss");
    assert!(seen.values().all(|c| *c == 1), "no duplicate");
    assert_eq!(per_consumer, vec![100, 100, 100], "round-robin");
}

#[tokio::test]
async fn client_individual_acks_survive_nacks_and_a_consumer_leaving_mid_stream() {
    let (_server, _addr, stomp) = server().await;
    let ack = "ack:client-individual\n";
    let mut nacker = Raw::connected(&stomp, "").await;
    nacker.subscribe("n", "/queue/jobs", ack).await;
    let mut leaver = Raw::connected(&stomp, "").await;
    leaver.subscribe("l", "/queue/jobs", ack).await;
    let mut worker = Raw::connected(&stomp, "").await;
    worker.subscribe("w", "/queue/jobs", ack).await;
    let mut producer = Raw::connected(&stomp, "").await;
    let n = 60;
    for i in 0..n {
        producer
            .send(&format!("SEND\ndestination:/queue/jobs\n\njob{i}\0"))
            .await;
    }
    let mut acked: HashMap<String, u32> = HashMap::new();
    let mut redelivered = 0;
    // The leaver acks its first three messages, then disconnects holding the rest.
    for _ in 0..3 {
        let f = leaver.frame().await;
        let id = f.get("ack").unwrap().to_string();
        leaver.send(&format!("ACK\nid:{id}\n\n\0")).await;
        *acked
            .entry(String::from_utf8(f.body.to_vec()).unwrap())
            .or_default() += 1;
    }
    leaver.send("DISCONNECT\nreceipt:bye\n\n\0").await;
    while let Some(f) = leaver.try_frame(Duration::from_secs(2)).await {
        if f.command == Command::Receipt {
            break;
        }
    }
    drop(leaver);
    // The nacker refuses everything; the worker acks everything; until all are acked.
    let deadline = Instant::now() + Duration::from_secs(20);
    while acked.values().sum::<u32>() < n && Instant::now() < deadline {
        if let Some(f) = nacker.try_frame(Duration::from_millis(20)).await {
            let id = f.get("ack").unwrap().to_string();
            nacker.send(&format!("NACK\nid:{id}\n\n\0")).await;
        }
        while let Some(f) = worker.try_frame(Duration::from_millis(20)).await {
            if f.get("redelivered") == Some("true") {
                redelivered += 1;
            }
            let id = f.get("ack").unwrap().to_string();
            worker.send(&format!("ACK\nid:{id}\n\n\0")).await;
            *acked
                .entry(String::from_utf8(f.body.to_vec()).unwrap())
                .or_default() += 1;
        }
    }
    assert_eq!(acked.len(), n as usize, "every job acked");
    assert!(
        acked.values().all(|c| *c == 1),
        "each exactly once: {acked:?}"
    );
    assert!(
        redelivered > 0,
        "NACKed and abandoned jobs came back marked"
    );
}

#[tokio::test]
async fn recovery_over_stomp_gives_exactly_the_missed_ten() {
    let (_server, addr, stomp) = server().await;
    let mut s = Raw::connected(&stomp, "").await;
    let r = s.subscribe("1", "/topic/news:r", "").await;
    let epoch = r.get("wsx-epoch").unwrap().to_string();
    api(&addr, "publish", json!({"channel": "news:r", "data": 0})).await;
    let first = s.frame().await;
    let last: u64 = first.get("wsx-offset").unwrap().parse().unwrap();
    assert_eq!(first.get("wsx-epoch"), Some(epoch.as_str()));
    drop(s);
    for i in 1..=10 {
        api(&addr, "publish", json!({"channel": "news:r", "data": i})).await;
    }
    let mut back = Raw::connected(&stomp, "").await;
    let r = back
        .subscribe(
            "1",
            "/topic/news:r",
            &format!("wsx-since-offset:{last}\nwsx-since-epoch:{epoch}\n"),
        )
        .await;
    assert_eq!(r.get("wsx-recovered"), Some("true"));
    api(&addr, "publish", json!({"channel": "news:r", "data": 11})).await;
    let mut bodies = Vec::new();
    for _ in 0..11 {
        bodies.push(String::from_utf8(back.frame().await.body.to_vec()).unwrap());
    }
    let want: Vec<String> = (1..=11).map(|i| i.to_string()).collect();
    assert_eq!(bodies, want, "the ten missed, in order, then live");
    // Another epoch cannot be recovered, and says so.
    let mut stale = Raw::connected(&stomp, "").await;
    let r = stale
        .subscribe(
            "1",
            "/topic/news:r",
            "wsx-since-offset:1\nwsx-since-epoch:other\n",
        )
        .await;
    assert_eq!(r.get("wsx-recovered"), Some("false"));
}

#[tokio::test]
async fn a_subscription_with_wsx_presence_gets_join_and_leave_messages() {
    let (_server, addr, stomp) = server().await;
    let mut a = Raw::connected(&stomp, "").await;
    a.subscribe("p", "/topic/room:1", "wsx-presence:true\n")
        .await;
    let mut b = Raw::connected(&stomp, "").await;
    b.subscribe("q", "/topic/room:1", "").await;
    let join = a.frame().await;
    assert_eq!(join.command, Command::Message, "{join:?}");
    assert_eq!(join.get("wsx-event"), Some("join"));
    assert_eq!(join.get("subscription"), Some("p"));
    assert_eq!(join.get("content-type"), Some("application/json"));
    let member: Value = serde_json::from_slice(&join.body).unwrap();
    assert_eq!(member["protocol"], "stomp", "{member}");
    assert_eq!(member["transport"], "tcp", "{member}");
    assert_eq!(member["info"], "guest", "the login is the info: {member}");
    // Presence over the API shows the same member.
    let p = api(&addr, "presence", json!({"channel": "room:1"})).await;
    let id = member["client"].as_str().unwrap();
    assert_eq!(p["result"]["presence"][id]["protocol"], "stomp", "{p}");
    // b did not ask for events: its next frame is the publication.
    api(&addr, "publish", json!({"channel": "room:1", "data": "hi"})).await;
    let m = b.frame().await;
    assert_eq!(m.get("wsx-event"), None, "{m:?}");
    assert_eq!(&m.body[..], b"\"hi\"");
    assert_eq!(&a.frame().await.body[..], b"\"hi\"");
    drop(b);
    let leave = a.frame().await;
    assert_eq!(leave.get("wsx-event"), Some("leave"), "{leave:?}");
    let gone: Value = serde_json::from_slice(&leave.body).unwrap();
    assert_eq!(gone["client"], member["client"]);
}

#[tokio::test]
async fn bad_input_gets_an_error_frame_and_the_server_serves_others() {
    bad_input(false).await
}

/// The same over WebSocket (`/stomp`, whose sessions run on the server's event loops).
#[tokio::test]
async fn bad_input_over_websocket_gets_an_error_frame_and_the_server_serves_others() {
    bad_input(true).await
}

async fn bad_input(over_ws: bool) {
    let (_server, addr, stomp) = serve_stomp(&[
        "--stomp-users",
        "guest:guest",
        "--stomp-max-header-bytes",
        "1KiB",
        "--stomp-max-body",
        "64KiB",
        "--stomp-connect-timeout",
        "1s",
        "--stomp-heart-beat",
        "200,200",
    ])
    .await;
    let stomp = if over_ws {
        format!("ws://{addr}/stomp")
    } else {
        stomp
    };
    let mut witness = Raw::connected(&stomp, "").await;
    witness.subscribe("1", "/topic/w", "").await;

    // A frame before CONNECT.
    let mut c = Raw::open(&stomp).await;
    c.send("SEND\ndestination:/topic/w\n\nx\0").await;
    let e = c.error_then_close().await;
    assert!(e.get("message").unwrap().contains("connect first"), "{e:?}");
    // Malformed frames: a header line without a colon, an unknown command.
    for (bad, what) in [
        ("SEND\nno-colon-here\n\n\0", "malformed header"),
        ("FLY\n\n\0", "unknown command"),
        ("SEND\ndestination:/nowhere\n\nx\0", "unknown destination"),
    ] {
        let mut c = Raw::connected(&stomp, "").await;
        c.send(bad).await;
        let e = c.error_then_close().await;
        assert!(e.get("message").unwrap().contains(what), "{what}: {e:?}");
    }
    // Oversized headers and bodies: the ERROR names the limit.
    let mut c = Raw::connected(&stomp, "").await;
    c.send(&format!(
        "SEND\ndestination:/topic/w\nbig:{}\n\n\0",
        "x".repeat(2048)
    ))
    .await;
    let e = c.error_then_close().await;
    assert!(
        e.get("message").unwrap().contains("longer than 1024 bytes"),
        "{e:?}"
    );
    let mut c = Raw::connected(&stomp, "").await;
    c.send(&format!(
        "SEND\ndestination:/topic/w\ncontent-length:100000\n\n{}\0",
        "x".repeat(100_000)
    ))
    .await;
    let e = c.error_then_close().await;
    assert!(
        e.get("message").unwrap().contains("body longer than 65536"),
        "{e:?}"
    );
    // Wrong credentials.
    let mut c = Raw::open(&stomp).await;
    c.send("CONNECT\naccept-version:1.2\nlogin:guest\npasscode:nope\n\n\0")
        .await;
    let e = c.error_then_close().await;
    assert_eq!(e.get("wsx-error"), Some("unauthorized"));
    // No CONNECT in time (timed from before the connection: its deadline starts after).
    let start = Instant::now();
    let mut c = Raw::open(&stomp).await;
    let e = c.error_then_close().await;
    assert!(e.get("message").unwrap().contains("CONNECT"), "{e:?}");
    assert!(start.elapsed() >= Duration::from_millis(900));
    // A client that promised heart-beats and went silent.
    let mut c = Raw::connected(&stomp, "heart-beat:200,0\n").await;
    let e = c.error_then_close().await;
    assert_eq!(e.get("wsx-error"), Some("heart-beat"));

    // The witness was not affected; it still receives.
    let mut p = Raw::connected(&stomp, "").await;
    p.send("SEND\ndestination:/topic/w\n\nstill here\0").await;
    let m = loop {
        let f = witness.frame().await;
        if f.command == Command::Message {
            break f;
        }
    };
    assert_eq!(&m.body[..], b"still here");
}

#[tokio::test]
async fn a_stomp_subscriber_that_never_reads_is_dropped_while_others_get_everything() {
    let (_server, addr, stomp) = server().await;
    let mut stuck = Raw::connected(&stomp, "").await;
    stuck.subscribe("1", "/topic/flood", "").await;
    let mut fine = Raw::connected(&stomp, "").await;
    fine.subscribe("1", "/topic/flood", "").await;
    // 3,000 publications of 4 KiB: more than a socket buffer and the queue (4 MiB).
    // They go out in batches that the reading subscriber keeps up with, so only the
    // one that never reads falls behind, however loaded the machine is.
    let big = "y".repeat(4096);
    let n = 3000;
    let got = Arc::new(AtomicUsize::new(0));
    let counter = got.clone();
    let reader = tokio::spawn(async move {
        while counter.load(Ordering::Relaxed) < n {
            match fine.try_frame(Duration::from_secs(10)).await {
                Some(f) if f.command == Command::Message => {
                    counter.fetch_add(1, Ordering::Relaxed);
                }
                Some(_) => {}
                None => break,
            }
        }
    });
    for batch in 1..=n / 100 {
        let channels: Vec<&str> = vec!["flood"; 100];
        let r = api(
            &addr,
            "broadcast",
            json!({"channels": channels, "data": big}),
        )
        .await;
        assert!(r["result"].is_object(), "{r}");
        let caught_up = tokio::time::timeout(Duration::from_secs(10), async {
            while got.load(Ordering::Relaxed) < batch * 100 {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        })
        .await;
        assert!(caught_up.is_ok(), "the reading subscriber fell behind");
    }
    reader.await.unwrap();
    assert_eq!(
        got.load(Ordering::Relaxed),
        n,
        "the reading subscriber got everything"
    );
    // The stuck one is told why (once it reads), then closed.
    let mut saw_error = None;
    while let Some(f) = stuck.try_frame(Duration::from_secs(10)).await {
        if f.command == Command::Error {
            saw_error = Some(f);
        }
    }
    let e = saw_error.expect("an ERROR after the flood");
    assert_eq!(e.get("wsx-error"), Some("slow-consumer"));
    assert_eq!(e.get("wsx-reconnect"), Some("true"));
}

#[tokio::test]
async fn stomp_over_tls_with_a_jwt_passcode_and_namespace_rules() {
    let (_dir, ca, cert, key) = pki();
    let secret = "stomp-token-secret-0123456789";
    let (_server, _addr, stomp) = serve_stomp_scheme(
        &[
            "--tls-cert",
            &cert,
            "--tls-key",
            &key,
            "--token-hmac-secret",
            secret,
        ],
        "https",
    )
    .await;
    let cfg = ClientConfig::default().ca_cert(wsx::tls::load_certs(&ca).unwrap().remove(0));
    let connector = tokio_rustls::TlsConnector::from(wsx::tls::client_tls_config(&cfg).unwrap());
    let tls = |port: String| {
        let connector = connector.clone();
        async move {
            let tcp = TcpStream::connect(format!("127.0.0.1:{port}"))
                .await
                .unwrap();
            let name = rustls_pki_types::ServerName::try_from("localhost").unwrap();
            Raw::over(Box::new(connector.connect(name, tcp).await.unwrap()))
        }
    };
    let port = stomp.rsplit(':').next().unwrap().to_string();
    let exp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
        + 60;
    let token = jsonwebtoken::encode(
        &jsonwebtoken::Header::default(),
        &json!({"sub": "alice", "exp": exp}),
        &jsonwebtoken::EncodingKey::from_secret(secret.as_bytes()),
    )
    .unwrap();
    // guest/guest is not a token, and anonymous connections are off with a token key.
    let mut c = tls(port.clone()).await;
    c.send("CONNECT\naccept-version:1.2\nlogin:guest\npasscode:guest\n\n\0")
        .await;
    let e = c.error_then_close().await;
    assert_eq!(e.get("wsx-error"), Some("unauthorized"), "{e:?}");
    // The token as the passcode: the user is its subject.
    let mut c = tls(port.clone()).await;
    c.send(&format!(
        "CONNECT\naccept-version:1.2\nlogin:alice\npasscode:{token}\n\n\0"
    ))
    .await;
    let f = c.frame().await;
    assert_eq!(f.command, Command::Connected, "{f:?}");
    assert_eq!(f.get("user-name"), Some("alice"));
    // Channel rules apply as for native clients: a channel limited to other users.
    c.subscribe("1", "/topic/room#alice,bob", "").await;
    c.send("SUBSCRIBE\nid:2\ndestination:/topic/room#carol\n\n\0")
        .await;
    let e = c.error_then_close().await;
    assert_eq!(e.get("wsx-error"), Some("permission-denied"), "{e:?}");
}
