//! Several `wsx serve` nodes on one Redis (`--backplane redis://...`), driven by
//! third-party clients (`cluster/cluster.mjs`: ws, @stomp/stompjs, socket.io-client).
#![allow(clippy::unwrap_used)]

use std::path::Path;

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
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/cluster/cluster.mjs");
    let out = tokio::process::Command::new("node")
        .arg(script)
        .args([KEY, &addr_a, &addr_b, &addr_c, &pid_c])
        .current_dir(Path::new(env!("CARGO_MANIFEST_DIR")).join("../.."))
        .output()
        .await
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success() && stdout.starts_with("OK"),
        "{stdout}\n{stderr}"
    );
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

#[tokio::test]
async fn a_node_that_cannot_reach_redis_says_so_and_exits() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
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
