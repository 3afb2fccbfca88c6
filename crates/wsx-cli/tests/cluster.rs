//! Several `wsx serve` nodes on one Redis (`--backplane redis://...`), driven by
//! third-party clients (`cluster/cluster.mjs`: ws, @stomp/stompjs, socket.io-client).
#![allow(clippy::unwrap_used)]

mod common;

const KEY: &str = "cluster-test-key-0123456789";

/// Three `wsx serve` nodes on `backplane` run `cluster/cluster.mjs`.
async fn three_nodes_on(backplane: &str) {
    let dir = std::env::temp_dir().join(format!(
        "wsx-cluster-{}-{}",
        std::process::id(),
        backplane.len()
    ));
    std::fs::create_dir_all(&dir).unwrap();
    let config = dir.join("namespaces.toml");
    std::fs::write(
        &config,
        "[namespaces.room]\npresence = true\njoin_leave = true\nhistory_size = 100\n",
    )
    .unwrap();
    let config = config.display().to_string();
    let args = [
        "--backplane",
        backplane,
        "--presence-ttl",
        "2s",
        "--api-key",
        KEY,
        "--demo",
        "off",
        "--config",
        config.as_str(),
    ];
    let (_a, addr_a) = common::serve(&args).await;
    let (_b, addr_b) = common::serve(&args).await;
    let (c, addr_c) = common::serve(&args).await;
    let pid_c = c.id().unwrap().to_string();
    common::node_script(
        "cluster/cluster.mjs",
        &[KEY, &addr_a, &addr_b, &addr_c, &pid_c],
        "OK",
    )
    .await;
    drop(c);
}

#[tokio::test(flavor = "multi_thread")]
async fn three_nodes_on_one_redis_serve_every_protocol_with_recovery_and_presence() {
    let (_redis, port) = common::redis_server().await;
    three_nodes_on(&format!("redis://127.0.0.1:{port}")).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn three_nodes_on_a_redis_cluster_of_three_masters_do_the_same() {
    let dir = std::env::temp_dir().join(format!("wsx-redis-cluster-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let (_servers, urls) = common::redis_cluster(&dir).await;
    three_nodes_on(&urls.join(",")).await;
    // The run's keys (the channel's, the node registry's) are spread over the masters.
    let mut holding = 0;
    for url in &urls {
        let port = url.rsplit(':').next().unwrap();
        let out = tokio::process::Command::new("redis-cli")
            .args(["-p", port, "dbsize"])
            .output()
            .await
            .unwrap();
        let keys: u64 = String::from_utf8_lossy(&out.stdout)
            .trim()
            .parse()
            .unwrap_or(0);
        holding += usize::from(keys > 0);
    }
    assert!(holding >= 2, "keys on {holding} of 3 masters");
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test(flavor = "multi_thread")]
async fn polling_clients_need_no_sticky_sessions() {
    let (_redis, port) = common::redis_server().await;
    let url = format!("redis://127.0.0.1:{port}");
    let args = [
        "--backplane",
        url.as_str(),
        "--api-key",
        KEY,
        "--demo",
        "off",
    ];
    let (_a, addr_a) = common::serve(&args).await;
    let (_b, addr_b) = common::serve(&args).await;
    common::node_script("cluster/polling.mjs", &[KEY, &addr_a, &addr_b], "OK").await;
}

#[tokio::test]
async fn a_node_that_cannot_reach_redis_says_so_and_exits() {
    let port = common::free_port();
    let url = format!("redis://127.0.0.1:{port}");
    let out = tokio::process::Command::new(common::WSX)
        .args([
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--backplane",
            &url,
            "--redis-timeout",
            "500ms",
        ])
        .output()
        .await
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        stderr.contains("cannot use the Redis backplane at"),
        "{stderr}"
    );
    let out = tokio::process::Command::new(common::WSX)
        .args(["serve", "--backplane", "mysql://x"])
        .output()
        .await
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("backplane"), "{stderr}");
}

/// `POST /api/publish` of `body` to the node at `addr`; the whole response.
async fn publish(addr: &str, body: &str) -> String {
    let req = format!(
        "POST /api/publish HTTP/1.1\r\nHost: {addr}\r\nAuthorization: apikey {KEY}\r\nConnection: close\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    common::http(addr, &req).await
}

/// A native client of the node at `addr`, connected and subscribed to `channel`.
async fn native_subscriber(addr: &str, channel: &str) -> wsx::WebSocket<wsx::MaybeTlsStream> {
    let url = format!("ws://{addr}/connection/websocket");
    let (mut ws, _) = wsx::connect(&url, &wsx::ClientConfig::default())
        .await
        .unwrap();
    ws.send(wsx::Message::text(r#"{"id":1,"connect":{}}"#))
        .await
        .unwrap();
    let sub = format!(r#"{{"id":2,"subscribe":{{"channel":"{channel}"}}}}"#);
    ws.send(wsx::Message::text(sub)).await.unwrap();
    text_of(&mut ws).await;
    assert!(text_of(&mut ws).await.contains(r#""id":2"#));
    ws
}

/// One message from a WebSocket as text.
async fn text_of(ws: &mut wsx::WebSocket<wsx::MaybeTlsStream>) -> String {
    use futures_util::StreamExt;
    loop {
        match tokio::time::timeout(std::time::Duration::from_secs(10), ws.next()).await {
            Ok(Some(Ok(wsx::Message::Text(t)))) => return t.as_str().to_string(),
            Ok(Some(Ok(wsx::Message::Binary(b)))) => {
                return String::from_utf8_lossy(&b).into_owned()
            }
            Ok(Some(Ok(_))) => continue,
            other => panic!("no message: {other:?}"),
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn while_redis_is_down_every_protocol_gets_a_clear_error_at_once_then_works_again() {
    use std::time::{Duration, Instant};
    let (redis, port) = common::redis_server().await;
    let url = format!("redis://127.0.0.1:{port}");
    let (_node, addr) = common::serve(&[
        "--backplane",
        &url,
        "--redis-timeout",
        "1s",
        "--api-key",
        KEY,
        "--demo",
        "off",
    ])
    .await;
    let cfg = wsx::ClientConfig::default();
    let (mut native, _) = wsx::connect(&format!("ws://{addr}/connection/websocket"), &cfg)
        .await
        .unwrap();
    native
        .send(wsx::Message::text(r#"{"id":1,"connect":{}}"#))
        .await
        .unwrap();
    assert!(text_of(&mut native).await.contains("client"));
    let (mut stomp, _) = wsx::connect(&format!("ws://{addr}/stomp"), &cfg)
        .await
        .unwrap();
    stomp
        .send(wsx::Message::text(
            "CONNECT\naccept-version:1.2\nhost:h\n\n\0",
        ))
        .await
        .unwrap();
    assert!(text_of(&mut stomp).await.starts_with("CONNECTED"));
    let (mut sio, _) = wsx::connect(
        &format!("ws://{addr}/socket.io/?EIO=4&transport=websocket"),
        &cfg,
    )
    .await
    .unwrap();
    assert!(text_of(&mut sio).await.starts_with("0{"));
    sio.send(wsx::Message::text("40")).await.unwrap();
    assert!(text_of(&mut sio).await.starts_with("40{"));
    // Redis goes away.
    drop(redis);
    let bound = Duration::from_secs(3);
    let t = Instant::now();
    native
        .send(wsx::Message::text(
            r#"{"id":2,"publish":{"channel":"x","data":1}}"#,
        ))
        .await
        .unwrap();
    let r = text_of(&mut native).await;
    assert!(r.contains(r#""code":111"#), "{r}");
    assert!(t.elapsed() < bound, "native: {:?}", t.elapsed());
    let t = Instant::now();
    let r = publish(&addr, r#"{"channel":"x","data":1}"#).await;
    assert!(r.starts_with("HTTP/1.1 503") && r.contains("111"), "{r}");
    assert!(t.elapsed() < bound, "HTTP API: {:?}", t.elapsed());
    let t = Instant::now();
    sio.send(wsx::Message::text(r#"421["publish","x",{"a":1}]"#))
        .await
        .unwrap();
    let r = loop {
        let m = text_of(&mut sio).await;
        if m != "2" {
            break m;
        }
        sio.send(wsx::Message::text("3")).await.unwrap();
    };
    assert!(r.starts_with("431[") && r.contains(r#""code":111"#), "{r}");
    assert!(t.elapsed() < bound, "Socket.IO: {:?}", t.elapsed());
    let t = Instant::now();
    stomp
        .send(wsx::Message::text("SEND\ndestination:/topic/x\n\nhello\0"))
        .await
        .unwrap();
    let r = text_of(&mut stomp).await;
    assert!(
        r.starts_with("ERROR") && r.contains("wsx-error:unavailable"),
        "{r}"
    );
    assert!(t.elapsed() < bound, "STOMP: {:?}", t.elapsed());
    // Redis is back on the same port: the node recovers by itself.
    let _back = common::redis_with(&["--port", &port.to_string(), "--appendonly", "no"]).await;
    let deadline = Instant::now() + Duration::from_secs(15);
    let mut id = 10;
    loop {
        id += 1;
        native
            .send(wsx::Message::text(format!(
                r#"{{"id":{id},"publish":{{"channel":"x","data":1}}}}"#
            )))
            .await
            .unwrap();
        let r = text_of(&mut native).await;
        if r.contains(r#""offset""#) {
            break;
        }
        assert!(Instant::now() < deadline, "the node did not recover: {r}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_password_protected_redis_and_key_prefixes_keep_clusters_apart() {
    use futures_util::StreamExt;
    let port = common::free_port();
    let _redis =
        common::redis_with(&["--port", &port.to_string(), "--requirepass", "s3cret-pass"]).await;
    // A wrong password: the node says so and does not start.
    let wrong = format!("redis://:nope@127.0.0.1:{port}");
    let out = tokio::process::Command::new(common::WSX)
        .args(["serve", "--listen", "127.0.0.1:0", "--backplane", &wrong])
        .output()
        .await
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && stderr.contains("cannot use the Redis backplane"),
        "{stderr}"
    );
    assert!(
        !stderr.contains("nope"),
        "the password is not logged: {stderr}"
    );
    // Two clusters on one Redis, told apart by their prefixes.
    let url = format!("redis://:s3cret-pass@127.0.0.1:{port}");
    let common_args = [
        "--backplane",
        url.as_str(),
        "--api-key",
        KEY,
        "--demo",
        "off",
    ];
    let (_one, addr_one) =
        common::serve(&[&common_args[..], &["--redis-prefix", "one"]].concat()).await;
    let (_two, addr_two) =
        common::serve(&[&common_args[..], &["--redis-prefix", "two"]].concat()).await;
    let mut on_two = native_subscriber(&addr_two, "news").await;
    let publish_news = |addr: String, n: u32| async move {
        let r = publish(&addr, &format!(r#"{{"channel":"news","data":{n}}}"#)).await;
        assert!(r.starts_with("HTTP/1.1 200"), "{r}");
    };
    publish_news(addr_one.clone(), 1).await;
    publish_news(addr_two.clone(), 2).await;
    let got = text_of(&mut on_two).await;
    assert!(
        got.contains(r#""data":2"#) && got.contains(r#""offset":1"#),
        "only its own cluster's: {got}"
    );
    let quiet = tokio::time::timeout(std::time::Duration::from_millis(300), on_two.next()).await;
    assert!(quiet.is_err(), "nothing else: {quiet:?}");
    let keys = tokio::process::Command::new("redis-cli")
        .args([
            "-p",
            &port.to_string(),
            "-a",
            "s3cret-pass",
            "--no-auth-warning",
            "keys",
            "*",
        ])
        .output()
        .await
        .unwrap();
    let keys = String::from_utf8_lossy(&keys.stdout);
    assert!(
        keys.lines()
            .all(|k| k.starts_with("one:") || k.starts_with("two:")),
        "{keys}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn rediss_with_the_servers_ca_carries_the_backplane_over_tls() {
    let (dir, ca, cert, key) = common::pki();
    let port = common::free_port();
    let tls = [
        "--port",
        "0",
        "--tls-port",
        &port.to_string(),
        "--tls-cert-file",
        &cert,
        "--tls-key-file",
        &key,
        "--tls-ca-cert-file",
        &ca,
        "--tls-auth-clients",
        "no",
        "--appendonly",
        "no",
    ];
    let _redis = common::redis_with(&tls).await;
    let url = format!("rediss://localhost:{port}");
    // Without the CA the server's certificate is not trusted: no start.
    let out = tokio::process::Command::new(common::WSX)
        .args([
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--backplane",
            &url,
            "--redis-timeout",
            "2s",
        ])
        .output()
        .await
        .unwrap();
    assert!(
        !out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let args = [
        "--backplane",
        url.as_str(),
        "--redis-ca",
        ca.as_str(),
        "--api-key",
        KEY,
        "--demo",
        "off",
    ];
    let (_a, addr_a) = common::serve(&args).await;
    let (_b, addr_b) = common::serve(&args).await;
    let mut ws = native_subscriber(&addr_b, "tls").await;
    let r = publish(&addr_a, r#"{"channel":"tls","data":"over TLS"}"#).await;
    assert!(r.starts_with("HTTP/1.1 200"), "{r}");
    assert!(text_of(&mut ws).await.contains("over TLS"));
    let _ = std::fs::remove_dir_all(dir);
}

#[tokio::test(flavor = "multi_thread")]
async fn one_admin_page_sees_every_node_of_a_redis_cluster() {
    use futures_util::StreamExt;
    let (_redis, port) = common::redis_server().await;
    let backplane = format!("redis://127.0.0.1:{port}");
    let password = "cluster-admin-password";
    let args = [
        "--backplane",
        backplane.as_str(),
        "--admin-password",
        password,
        "--demo",
        "off",
    ];
    let (_a, addr_a) = common::serve(&args).await;
    let (_b, addr_b) = common::serve(&args).await;
    // A client on B, to be seen from A's page.
    let (_client, replies) = common::native(
        &addr_b,
        &[serde_json::json!({"id": 1, "connect": {"name": "on-b"}})],
    )
    .await;
    let client_on_b = replies[0]["connect"]["client"]
        .as_str()
        .unwrap()
        .to_string();
    // Log in on A; its live feed carries both nodes' figures.
    let body = serde_json::json!({ "password": password }).to_string();
    let login = common::http(
        &addr_a,
        &format!(
            "POST /admin/login HTTP/1.1\r\nHost: {addr_a}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        ),
    )
    .await;
    assert!(login.starts_with("HTTP/1.1 204"), "{login}");
    let cookie = login
        .lines()
        .find_map(|l| l.strip_prefix("set-cookie: "))
        .and_then(|c| c.split(';').next())
        .unwrap()
        .to_string();
    let cfg = wsx::ClientConfig::default()
        .header("Cookie", &cookie)
        .header("Origin", format!("http://{addr_a}"));
    let (mut ws, _) = wsx::connect(&format!("ws://{addr_a}/admin/live"), &cfg)
        .await
        .unwrap();
    let mut nodes = std::collections::BTreeMap::new();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while nodes.len() < 2 {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        let Ok(Some(Ok(wsx::Message::Text(t)))) = tokio::time::timeout(left, ws.next()).await
        else {
            panic!("figures of two nodes: {nodes:?}");
        };
        let v: serde_json::Value = serde_json::from_str(t.as_str()).unwrap();
        let f = &v["push"]["pub"]["data"];
        nodes.insert(f["address"].as_str().unwrap().to_string(), f.clone());
    }
    let b = &nodes[&format!("http://{addr_b}")];
    assert!(
        b["clients"]
            .as_array()
            .unwrap()
            .iter()
            .any(|c| c["client"] == client_on_b.as_str() && c["name"] == "on-b"),
        "{b}"
    );
    assert!(nodes.contains_key(&format!("http://{addr_a}")));
}
