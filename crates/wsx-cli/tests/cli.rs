//! The `wsx` binary end to end: serve, connect, bench, config errors, shutdown.
#![allow(clippy::unwrap_used)]

use std::process::Stdio;
use std::time::Duration;

use futures_util::StreamExt;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::Command;
use wsx::{ClientConfig, CloseCode, CloseFrame, Message};

mod common;
use common::{http, pki, run, serve, serve_tls, WSX};

#[tokio::test]
async fn connect_in_a_pipeline_prints_the_echo_and_exits_0() {
    let (_server, addr) = serve(&[]).await;
    let url = format!("ws://{addr}/echo");
    let (code, out, err) = run(&["connect", &url], "hi\nthere κόσμε\n").await;
    assert_eq!((code, out.as_str()), (0, "hi\nthere κόσμε\n"), "{err}");
}

#[tokio::test]
async fn refused_handshake_exits_non_zero_with_the_reason() {
    let (_server, addr) = serve(&[]).await;
    let url = format!("ws://{addr}/echo");
    let (code, _, err) = run(&["connect", &url, "--origin", "https://evil.example"], "").await;
    assert_eq!(code, 3);
    assert!(
        err.contains("403") && err.contains("Origin not allowed"),
        "{err}"
    );
    let (code, _, err) = run(&["connect", &format!("ws://{addr}/nope")], "").await;
    assert_eq!(code, 3, "{err}");
    let (code, _, err) = run(&["connect", "ws://127.0.0.1:1/echo"], "").await;
    assert_eq!(code, 3, "{err}");
}

#[tokio::test]
async fn allow_listed_origin_connects() {
    let (_server, addr) = serve(&[
        "--allowed-origins",
        "https://app.example,https://other.example",
    ])
    .await;
    let url = format!("ws://{addr}/echo");
    let (code, out, err) = run(
        &["connect", &url, "--origin", "https://app.example"],
        "ok\n",
    )
    .await;
    assert_eq!((code, out.as_str()), (0, "ok\n"), "{err}");
    let (code, _, _) = run(&["connect", &url, "--origin", "https://evil.example"], "").await;
    assert_eq!(code, 3);
}

#[tokio::test]
async fn bad_config_is_one_line_naming_the_key_and_exit_2() {
    let (code, _, err) = run(&["serve", "--max-message-size", "lots"], "").await;
    assert_eq!(code, 2);
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(err.contains("max_message_size"), "{err}");

    let dir = std::env::temp_dir().join(format!("wsx-cli-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("wsx.toml");
    std::fs::write(
        &file,
        "listen = \"127.0.0.1:0\"\nmax_mesage_size = \"1MiB\"\n",
    )
    .unwrap();
    let (code, _, err) = run(&["serve", "--config", file.to_str().unwrap()], "").await;
    assert_eq!(code, 2);
    assert!(
        err.contains("max_mesage_size") && err.contains("unknown key"),
        "{err}"
    );

    let out = Command::new(WSX)
        .args(["serve"])
        .env("WSX_PING_INTERVAL", "often")
        .output()
        .await
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("ping_interval"));

    let (code, _, err) = run(&["serve", "--log-format", "xml"], "").await;
    assert_eq!(code, 2);
    assert!(err.contains("log_format"), "{err}");

    let (code, _, err) = run(&["serve", "--workers", "0"], "").await;
    assert_eq!(code, 2);
    assert!(err.contains("workers"), "{err}");
}

/// `--workers 3`: three event-loop threads; connections dealt to each in turn share one
/// hub (a publication reaches subscribers on every worker).
#[tokio::test]
async fn connections_on_every_worker_share_one_hub() {
    let key = "cli-test-key-0123456789";
    let (server, addr) = serve(&["--api-key", key, "--workers", "3"]).await;
    let pid = server.id().unwrap();
    let mut names: Vec<String> = std::fs::read_dir(format!("/proc/{pid}/task"))
        .unwrap()
        .filter_map(|t| std::fs::read_to_string(t.ok()?.path().join("comm")).ok())
        .map(|n| n.trim().to_string())
        .filter(|n| n.starts_with("wsx-worker"))
        .collect();
    names.sort();
    assert_eq!(names, ["wsx-worker-1", "wsx-worker-2"]);
    // Six in a row: two on each of the three loops.
    let mut subscribers = Vec::new();
    for _ in 0..6 {
        let (ws, _) = common::native(
            &addr,
            &[
                serde_json::json!({"id": 1, "connect": {}}),
                serde_json::json!({"id": 2, "subscribe": {"channel": "w"}}),
            ],
        )
        .await;
        subscribers.push(ws);
    }
    let body = r#"{"channel":"w","data":"to all"}"#;
    let req = format!(
        "POST /api/publish HTTP/1.1\r\nHost: {addr}\r\nAuthorization: apikey {key}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    assert!(http(&addr, &req).await.starts_with("HTTP/1.1 200"));
    for ws in &mut subscribers {
        let Message::Text(t) = ws.next().await.unwrap().unwrap() else {
            panic!()
        };
        let v: serde_json::Value = serde_json::from_str(t.as_str()).unwrap();
        assert_eq!(v["push"]["pub"]["data"], "to all");
    }
}

#[tokio::test]
async fn config_file_and_env_settings_apply() {
    let dir = std::env::temp_dir().join(format!("wsx-cli-cfg-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("wsx.toml");
    std::fs::write(
        &file,
        "max_message_size = \"100\"\nsubprotocols = [\"chat\", \"v12.stomp\"]\n",
    )
    .unwrap();
    let (_server, addr) = serve(&["--config", file.to_str().unwrap()]).await;
    let cfg = ClientConfig::default().subprotocols(["v12.stomp"]);
    let (mut ws, accepted) = wsx::connect(&format!("ws://{addr}/echo"), &cfg)
        .await
        .unwrap();
    assert_eq!(accepted.subprotocol.as_deref(), Some("v12.stomp"));
    ws.send(Message::text("x".repeat(100))).await.unwrap();
    assert_eq!(
        ws.next().await.unwrap().unwrap(),
        Message::text("x".repeat(100))
    );
    ws.send(Message::text("x".repeat(101))).await.unwrap();
    match ws.next().await.unwrap().unwrap() {
        Message::Close(Some(f)) => assert_eq!(f.code, CloseCode::TOO_BIG),
        other => panic!("{other:?}"),
    }
}

#[tokio::test]
async fn ctrl_c_closes_every_websocket_with_1001_and_exits_0() {
    let (mut server, addr) = serve(&[]).await;
    let mut clients = Vec::new();
    for _ in 0..3 {
        let (ws, _) = wsx::connect(&format!("ws://{addr}/echo"), &ClientConfig::default())
            .await
            .unwrap();
        clients.push(ws);
    }
    // Make sure each is open end to end.
    for ws in &mut clients {
        ws.send(Message::text("up?")).await.unwrap();
        assert_eq!(ws.next().await.unwrap().unwrap(), Message::text("up?"));
    }
    let pid = server.id().unwrap().to_string();
    let status = std::process::Command::new("kill")
        .args(["-INT", &pid])
        .status()
        .unwrap();
    assert!(status.success());
    for ws in &mut clients {
        assert_eq!(
            ws.next().await.unwrap().unwrap(),
            Message::Close(Some(CloseFrame::new(
                CloseCode::GOING_AWAY,
                "server shutting down"
            )))
        );
        assert!(ws.next().await.is_none());
    }
    let status = tokio::time::timeout(Duration::from_secs(10), server.wait())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(status.code(), Some(0));
}

#[tokio::test]
async fn serves_the_console_page() {
    let (_server, addr) = serve(&[]).await;
    let resp = http(
        &addr,
        &format!("GET /console HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"),
    )
    .await;
    assert!(resp.starts_with("HTTP/1.1 200"), "{resp}");
    assert!(resp.contains("Echo console"), "{resp}");
}

#[tokio::test]
async fn bench_against_a_wsx_server_produces_a_report() {
    let (_server, addr) = serve(&[]).await;
    let url = format!("ws://{addr}/echo");
    let (code, out, err) = run(
        &[
            "bench", &url, "-c", "4", "--depth", "2", "-s", "1KiB", "-w", "200ms", "-d", "1s",
            "--json",
        ],
        "",
    )
    .await;
    assert_eq!(code, 0, "{err}");
    let r: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert!(r["messages"].as_u64().unwrap() > 100, "{r}");
    assert_eq!(r["connect_errors"], 0);
    assert_eq!(r["protocol_errors"], 0);
    assert!(r["rtt_us_p50"].as_u64().unwrap() > 0);
    assert!(r["rtt_us_p99"].as_u64().unwrap() >= r["rtt_us_p50"].as_u64().unwrap());
    let (code, out, err) = run(
        &["bench", &url, "-c", "2", "-w", "100ms", "-d", "500ms"],
        "",
    )
    .await;
    assert_eq!(code, 0, "{err}");
    for row in [
        "messages/s",
        "MB/s",
        "round trip",
        "p99",
        "connect errors",
        "protocol errors",
        "bench CPU",
    ] {
        assert!(out.contains(row), "{row} missing:\n{out}");
    }
}

#[tokio::test]
async fn bench_reports_connect_errors() {
    let (code, out, _) = run(
        &[
            "bench",
            "ws://127.0.0.1:1/echo",
            "-c",
            "2",
            "-w",
            "0s",
            "-d",
            "200ms",
            "--json",
        ],
        "",
    )
    .await;
    assert_ne!(code, 0);
    let r: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(r["connect_errors"], 2);
}

#[tokio::test]
async fn serve_over_tls_and_connect_with_a_ca() {
    let (_dir, ca, cert, key) = pki();
    let (_server, addr) = serve_tls(&cert, &key, &[]).await;
    let port = addr.rsplit(':').next().unwrap();
    let url = format!("wss://localhost:{port}/echo");
    let (code, out, err) = run(&["connect", &url, "--ca", &ca], "secure\n").await;
    assert_eq!((code, out.as_str()), (0, "secure\n"), "{err}");
    // Without the CA the certificate is not trusted.
    let (code, _, err) = run(&["connect", &url], "").await;
    assert_eq!(code, 3, "{err}");
    // --insecure accepts it (testing only).
    let (code, out, _) = run(&["connect", &url, "--insecure"], "anyway\n").await;
    assert_eq!((code, out.as_str()), (0, "anyway\n"));
}

#[tokio::test]
async fn json_logs_have_one_line_per_refused_handshake() {
    let mut child = Command::new(WSX)
        .args(["serve", "--listen", "127.0.0.1:0", "--log-format", "json"])
        .env("RUST_LOG", "info")
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
    let first = lines.next_line().await.unwrap().unwrap();
    let v: serde_json::Value = serde_json::from_str(&first).unwrap();
    let addr = v["fields"]["addr"].as_str().unwrap().to_string();
    let (code, _, _) = run(
        &[
            "connect",
            &format!("ws://{addr}/echo"),
            "--origin",
            "https://evil.example",
        ],
        "",
    )
    .await;
    assert_eq!(code, 3);
    let line = tokio::time::timeout(Duration::from_secs(10), lines.next_line())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    let v: serde_json::Value = serde_json::from_str(&line).unwrap();
    assert_eq!(v["level"], "WARN");
    assert_eq!(v["fields"]["message"], "handshake refused");
    assert_eq!(v["fields"]["status"], 403);
    assert_eq!(v["fields"]["reason"], "Origin not allowed");
}

#[tokio::test]
async fn connect_prints_binary_as_hex_or_raw() {
    // An in-test server that sends one binary message and closes.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        for _ in 0..2 {
            let (tcp, _) = listener.accept().await.unwrap();
            let (mut ws, _) = wsx::accept(tcp, &wsx::ServerConfig::default())
                .await
                .unwrap();
            ws.send(Message::binary(vec![0xde, 0xad, 0xbe, 0xef]))
                .await
                .unwrap();
            // The client may close first (its stdin is empty): either way ends normally.
            let _ = ws.close(CloseCode::NORMAL, "").await;
        }
    });
    let url = format!("ws://{addr}/");
    let (code, out, err) = run(&["connect", &url], "").await;
    assert_eq!((code, out.as_str()), (0, "deadbeef\n"), "{err}");
    let mut child = Command::new(WSX)
        .args(["connect", &url, "--binary"])
        .stdin(Stdio::null())
        .output()
        .await
        .unwrap();
    assert_eq!(child.status.code(), Some(0));
    assert_eq!(
        std::mem::take(&mut child.stdout),
        vec![0xde, 0xad, 0xbe, 0xef]
    );
}

#[tokio::test]
async fn serve_mounts_the_hub_native_protocol_and_http_api() {
    let key = "cli-test-key-0123456789";
    let (_server, addr) = serve(&["--api-key", key]).await;
    let (mut ws, _) = wsx::connect(
        &format!("ws://{addr}/connection/websocket"),
        &ClientConfig::default(),
    )
    .await
    .unwrap();
    ws.send(Message::text(r#"{"id":1,"connect":{}}"#))
        .await
        .unwrap();
    ws.send(Message::text(
        r#"{"id":2,"subscribe":{"channel":"judge:7"}}"#,
    ))
    .await
    .unwrap();
    for _ in 0..2 {
        let Message::Text(t) = ws.next().await.unwrap().unwrap() else {
            panic!()
        };
        assert!(!t.as_str().contains("error"), "{t}");
    }
    let body = r#"{"channel":"judge:7","data":{"case":1,"verdict":"AC"}}"#;
    let req = format!(
        "POST /api/publish HTTP/1.1\r\nHost: {addr}\r\nAuthorization: apikey {key}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    let resp = http(&addr, &req).await;
    assert!(resp.starts_with("HTTP/1.1 200"), "{resp}");
    let Message::Text(t) = ws.next().await.unwrap().unwrap() else {
        panic!()
    };
    let v: serde_json::Value = serde_json::from_str(t.as_str()).unwrap();
    assert_eq!(v["push"]["pub"]["data"]["verdict"], "AC");
}

#[tokio::test]
async fn metrics_and_healthz() {
    // Without the demo's ticker, so that the counts below are this test's alone.
    let (_server, addr) = serve(&["--demo", "off"]).await;
    // One refused handshake, one live native connection with a subscription.
    let (code, _, _) = run(
        &[
            "connect",
            &format!("ws://{addr}/echo"),
            "--origin",
            "https://evil.example",
        ],
        "",
    )
    .await;
    assert_eq!(code, 3);
    let (mut ws, _) = wsx::connect(
        &format!("ws://{addr}/connection/websocket"),
        &ClientConfig::default(),
    )
    .await
    .unwrap();
    let commands = [
        r#"{"id":1,"connect":{}}"#,
        r#"{"id":2,"subscribe":{"channel":"m"}}"#,
        r#"{"id":3,"publish":{"channel":"m","data":1}}"#,
    ];
    for c in commands {
        ws.send(Message::text(c)).await.unwrap();
    }
    // Three replies and one push.
    let mut sent_to_us = 0;
    for _ in 0..4 {
        match ws.next().await.unwrap().unwrap() {
            Message::Text(t) => sent_to_us += t.as_str().len(),
            other => panic!("{other:?}"),
        }
    }
    let bytes_in: usize = commands.iter().map(|c| c.len()).sum();
    let get = |path: &'static str| {
        let addr = addr.clone();
        async move {
            http(
                &addr,
                &format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"),
            )
            .await
        }
    };
    assert!(get("/healthz").await.ends_with("ok\n"));
    let m = get("/metrics").await;
    for line in [
        "wsx_connections 1\n",
        "wsx_subscriptions 1\n",
        "wsx_channels 1\n",
        "wsx_publications_total 1\n",
        "wsx_messages_in_total{frontend=\"native\"} 3\n",
        &format!("wsx_bytes_in_total{{frontend=\"native\"}} {bytes_in}\n"),
        &format!("wsx_bytes_out_total{{frontend=\"native\"}} {sent_to_us}\n"),
        "wsx_handshake_refusals_total{status=\"403\",reason=\"Origin not allowed\"} 1\n",
        "wsx_publish_seconds_count 1\n",
    ] {
        assert!(m.contains(line), "{line} missing in\n{m}");
    }
}

#[tokio::test]
async fn connections_beyond_the_limit_get_503() {
    let (_server, addr) = serve(&["--max-connections", "1"]).await;
    let url = format!("ws://{addr}/echo");
    let (mut first, _) = wsx::connect(&url, &ClientConfig::default()).await.unwrap();
    first.send(Message::text("held")).await.unwrap();
    assert_eq!(first.next().await.unwrap().unwrap(), Message::text("held"));
    let (code, _, err) = run(&["connect", &url], "").await;
    assert_eq!(code, 3);
    assert!(
        err.contains("503") && err.contains("too many connections"),
        "{err}"
    );
    // The slot is given back when the first connection ends.
    first.close(CloseCode::NORMAL, "").await.unwrap();
    let mut ok = false;
    for _ in 0..50 {
        let (code, out, _) = run(&["connect", &url], "again\n").await;
        if code == 0 {
            assert_eq!(out, "again\n");
            ok = true;
            break;
        }
        tokio::task::yield_now().await;
    }
    assert!(ok, "the slot was never released");
}

/// POST a JSON body with extra header lines; returns the whole response.
async fn post(addr: &str, path: &str, headers: &str, body: &str) -> String {
    http(
        addr,
        &format!(
            "POST {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n{headers}Content-Length: {}\r\n\r\n{body}",
            body.len()
        ),
    )
    .await
}

#[tokio::test]
async fn demo_judge_refuses_what_a_browser_page_elsewhere_could_send() {
    let (_server, addr) = serve(&["--demo-judge-max-code", "1KiB"]).await;
    let json = "Content-Type: application/json\r\n";
    let ok_body = r#"{"session":"abcdefgh12345678","code":"print(1)"}"#;
    // A cross-site form post: not JSON.
    let r = post(
        &addr,
        "/demo/judge/submit",
        "Content-Type: text/plain\r\n",
        ok_body,
    )
    .await;
    assert!(r.starts_with("HTTP/1.1 415"), "{r}");
    // JSON from another origin.
    let r = post(
        &addr,
        "/demo/judge/submit",
        &format!("{json}Origin: http://evil.example\r\n"),
        ok_body,
    )
    .await;
    assert!(r.starts_with("HTTP/1.1 403"), "{r}");
    // A host name that is not loopback (DNS rebinding) is refused too.
    let r = http(
        &addr,
        &format!("POST /demo/judge/submit HTTP/1.1\r\nHost: rebind.example:3000\r\nConnection: close\r\n{json}Content-Length: {}\r\n\r\n{ok_body}", ok_body.len()),
    )
    .await;
    assert!(r.starts_with("HTTP/1.1 403"), "{r}");
    let r = post(
        &addr,
        "/demo/judge/submit",
        json,
        r#"{"session":"x","code":""}"#,
    )
    .await;
    assert!(
        r.starts_with("HTTP/1.1 400") && r.contains("session"),
        "{r}"
    );
    let r = post(&addr, "/demo/judge/submit", json, "{not json").await;
    assert!(r.starts_with("HTTP/1.1 400"), "{r}");
    let big = format!(
        r#"{{"session":"abcdefgh12345678","code":"{}"}}"#,
        "x".repeat(2048)
    );
    let r = post(&addr, "/demo/judge/submit", json, &big).await;
    assert!(r.starts_with("HTTP/1.1 413"), "{r}");
    // Same origin, loopback host, JSON: accepted.
    let r = post(
        &addr,
        "/demo/judge/submit",
        &format!("{json}Origin: http://{addr}\r\n"),
        ok_body,
    )
    .await;
    assert!(
        r.starts_with("HTTP/1.1 202") && r.contains(r#""channel":"judge:abcdefgh12345678""#),
        "{r}"
    );
}

#[tokio::test]
async fn demo_judge_says_when_python_is_missing_and_demo_off_removes_it() {
    let (_server, addr) = serve(&["--demo-judge-python", "/nonexistent/python3"]).await;
    let get =
        format!("GET /demo/judge/problem HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    let r = http(&addr, &get).await;
    assert!(r.starts_with("HTTP/1.1 200"), "{r}");
    assert!(
        r.contains("was not found") && r.contains(r#""python":null"#),
        "{r}"
    );
    let r = post(
        &addr,
        "/demo/judge/submit",
        "Content-Type: application/json\r\n",
        r#"{"session":"abcdefgh12345678","code":"print(1)"}"#,
    )
    .await;
    assert!(
        r.starts_with("HTTP/1.1 503") && r.contains("was not found"),
        "{r}"
    );

    let (_server, addr) = serve(&["--demo", "off"]).await;
    let get =
        format!("GET /demo/judge/problem HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    let r = http(&addr, &get).await;
    assert!(r.starts_with("HTTP/1.1 404"), "{r}");
}

#[tokio::test]
async fn argument_errors_print_clap_s_whole_message_and_exit_2() {
    let (code, _, err) = run(&["bench"], "").await;
    assert_eq!(code, 2);
    assert!(err.contains("<URL>"), "names the missing argument: {err}");
    assert!(err.contains("Usage:"), "{err}");
    let (code, _, err) = run(&["serve", "--max-conections", "5"], "").await;
    assert_eq!(code, 2);
    assert!(err.contains("--max-connections"), "keeps clap's tip: {err}");
}

#[tokio::test]
async fn bench_takes_d_as_the_duration_and_depth_by_name_and_stops_when_nothing_connects() {
    let (_server, addr) = serve(&[]).await;
    let url = format!("ws://{addr}/echo");
    let (code, out, err) = run(
        &[
            "bench", &url, "-c", "1", "--depth", "3", "-w", "300ms", "-d", "500ms", "--json",
        ],
        "",
    )
    .await;
    assert_eq!(code, 0, "{err}");
    let r: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(r["depth"], 3);
    assert_eq!(r["seconds"], 0.5);
    // A dead port: every connection fails, the run stops at once (not after the 1 s
    // warm-up and 5 s duration) and says why.
    let start = std::time::Instant::now();
    let (code, _, err) = run(&["bench", "ws://127.0.0.1:1/echo", "-c", "3"], "").await;
    assert_ne!(code, 0);
    assert!(err.contains("connect failed"), "{err}");
    assert!(
        start.elapsed() < Duration::from_secs(4),
        "took {:?}",
        start.elapsed()
    );
}

#[tokio::test]
async fn connect_says_what_went_wrong_with_a_url() {
    let (_server, addr) = serve(&[]).await;
    // wss:// to a plain server.
    let (code, _, err) = run(&["connect", &format!("wss://{addr}/echo")], "").await;
    assert_eq!(code, 3);
    assert!(
        err.contains("did not answer with TLS") && err.contains("ws://"),
        "{err}"
    );
    // Not a URL: a usage error.
    let (code, _, err) = run(&["connect", "localhost:3000/echo"], "").await;
    assert_eq!(code, 2, "{err}");
    // http:// is taken as ws://, and --help says so and lists the exit statuses.
    let (code, out, _) = run(&["connect", &format!("http://{addr}/echo")], "hi\n").await;
    assert_eq!((code, out.as_str()), (0, "hi\n"));
    let (_, help, _) = run(&["connect", "--help"], "").await;
    assert!(help.contains("http://"), "{help}");
    for status in ["0  ", "1  ", "2  ", "3  ", "4  "] {
        assert!(help.contains(status), "exit status {status} in:\n{help}");
    }
}

#[tokio::test]
async fn serve_errors_name_the_address_and_the_place_in_the_file() {
    let (_server, addr) = serve(&[]).await;
    let (code, _, err) = run(&["serve", "--listen", &addr], "").await;
    assert_ne!(code, 0);
    assert!(err.contains(&addr) && err.contains("in use"), "{err}");
    let dir = std::env::temp_dir().join(format!("wsx-toml-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("bad.toml");
    std::fs::write(&file, "listen = \"127.0.0.1:0\"\nmax_connections = = 5\n").unwrap();
    let (code, _, err) = run(&["serve", "--config", file.to_str().unwrap()], "").await;
    assert_eq!(code, 2);
    assert!(err.contains("bad.toml:2:"), "line and column: {err}");
    let (_, help, _) = run(&["serve", "--help"], "").await;
    assert!(!help.contains("WSX_CONFIG="), "{help}");
}

#[tokio::test]
async fn http_edges_answer_with_what_to_do() {
    let key = "cli-edges-api-key-0123456789";
    let (_server, addr) = serve(&["--api-key", key, "--ping-interval", "10s"]).await;
    // The connect reply reports the keepalive the server really uses.
    let (_ws, replies) =
        common::native(&addr, &[serde_json::json!({"id": 1, "connect": {}})]).await;
    assert_eq!(replies[0]["connect"]["ping"], 10, "{}", replies[0]);
    // GET on an API method: 405, Allow, a JSON error.
    let r = http(
        &addr,
        &format!("GET /api/publish HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"),
    )
    .await;
    assert!(r.starts_with("HTTP/1.1 405"), "{r}");
    assert!(r.to_ascii_lowercase().contains("allow: post"), "{r}");
    assert!(r.contains("\"error\""), "{r}");
    // Disconnecting a client that does not exist.
    let r = post(
        &addr,
        "/api/disconnect",
        &format!("Authorization: apikey {key}\r\n"),
        r#"{"client":"12345"}"#,
    )
    .await;
    assert!(r.starts_with("HTTP/1.1 404"), "{r}");
    assert!(r.contains("no such client") && r.contains("113"), "{r}");
    // A browser opening the echo endpoint: what it is and how to use it.
    let r = http(
        &addr,
        &format!("GET /echo HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"),
    )
    .await;
    assert!(r.starts_with("HTTP/1.1 426"), "{r}");
    assert!(r.contains("/echo is a WebSocket endpoint"), "{r}");
}

#[tokio::test]
async fn demo_presence_and_history_answer_for_public_channels_only() {
    let key = "demo-test-key-0123456789";
    let (_server, addr) = serve(&["--api-key", key]).await;
    let get =
        |path: &str| format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    for i in 1..=3 {
        let r = post(
            &addr,
            "/api/publish",
            &format!("Authorization: apikey {key}\r\n"),
            &format!(r#"{{"channel":"chat:lobby","data":{{"n":{i}}}}}"#),
        )
        .await;
        assert!(r.starts_with("HTTP/1.1 200"), "{r}");
    }
    let r = http(
        &addr,
        &get("/demo/history?channel=chat%3Alobby&limit=2&reverse=true"),
    )
    .await;
    assert!(r.starts_with("HTTP/1.1 200"), "{r}");
    let body: serde_json::Value =
        serde_json::from_str(r.split("\r\n\r\n").nth(1).unwrap()).unwrap();
    let got: Vec<&serde_json::Value> = body["publications"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| &p["data"]["n"])
        .collect();
    assert_eq!(got, [3, 2], "the newest two, newest first: {body}");
    let r = http(&addr, &get("/demo/presence?channel=chat:lobby")).await;
    assert!(
        r.starts_with("HTTP/1.1 200") && r.contains(r#"{"presence":{}}"#),
        "{r}"
    );
    // A submission's verdicts are not for anyone to read, nor is anything else.
    for path in [
        "/demo/history?channel=judge:abc",
        "/demo/presence?channel=other",
        "/demo/history",
    ] {
        let r = http(&addr, &get(path)).await;
        assert!(r.starts_with("HTTP/1.1 403"), "{path}: {r}");
    }
}

/// `/echo` over plain TCP runs on `wsx::event_loop`: Node `ws` clients (from the
/// registry) with and without permessage-deflate, every length class, fragments, a
/// ping, 200 clients at once, and the close handshake.
#[tokio::test]
async fn node_ws_clients_get_everything_echoed_by_the_event_loop() {
    let (_server, addr) = serve(&[]).await;
    let out = common::node_script("echo/echo_ws.mjs", &[&addr], "OK passed").await;
    println!("{out}");
}

/// A frame sent right behind the upgrade request (read by hyper with the request) is
/// handed to the event loop with the connection, not lost.
#[tokio::test]
async fn a_frame_sent_with_the_upgrade_request_is_echoed() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let (_server, addr) = serve(&[]).await;
    let mut tcp = tokio::net::TcpStream::connect(&addr).await.unwrap();
    let mut bytes = format!(
        "GET /echo HTTP/1.1\r\nHost: {addr}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
    )
    .into_bytes();
    // "early", masked with a zero key, in the same write as the request.
    bytes.extend_from_slice(&[0x81, 0x85, 0, 0, 0, 0]);
    bytes.extend_from_slice(b"early");
    tcp.write_all(&bytes).await.unwrap();
    let mut got = Vec::new();
    let want: &[u8] = &[0x81, 0x05, b'e', b'a', b'r', b'l', b'y'];
    let read = async {
        let mut buf = [0u8; 1024];
        while !got.windows(want.len()).any(|w| w == want) {
            let n = tcp.read(&mut buf).await.unwrap();
            assert!(n > 0, "EOF before the echo: {got:?}");
            got.extend_from_slice(&buf[..n]);
        }
    };
    tokio::time::timeout(Duration::from_secs(10), read)
        .await
        .expect("the early frame was never echoed");
    assert!(got.starts_with(b"HTTP/1.1 101"));
}
