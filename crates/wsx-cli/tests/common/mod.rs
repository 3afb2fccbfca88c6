//! Helpers shared by the CLI's integration tests: `wsx serve` on a free port, raw
//! HTTP, running the binary, a test PKI.
#![allow(dead_code, clippy::unwrap_used)]

use std::process::Stdio;
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::process::{Child, Command};

pub const WSX: &str = env!("CARGO_BIN_EXE_wsx");

/// `wsx serve` on a free port; returns the child and its address once it logged it.
pub async fn serve(extra: &[&str]) -> (Child, String) {
    launch(extra, "http").await
}

/// `wsx serve` with `extra` arguments, waiting for its `open SCHEME://ADDR/` log line.
pub async fn launch(extra: &[&str], scheme: &str) -> (Child, String) {
    let (child, addr, _) = launch_logged(extra, scheme).await;
    (child, addr)
}

/// `wsx serve` with a STOMP TCP listener on a free port too: (child, HTTP address,
/// STOMP address).
pub async fn serve_stomp(extra: &[&str]) -> (Child, String, String) {
    serve_stomp_scheme(extra, "http").await
}

/// [`serve_stomp`] for a server whose listener is `scheme` (`https` with TLS settings
/// in `extra`).
pub async fn serve_stomp_scheme(extra: &[&str], scheme: &str) -> (Child, String, String) {
    let mut args = vec!["--stomp-listen", "127.0.0.1:0"];
    args.extend_from_slice(extra);
    let (child, addr, before) = launch_logged(&args, scheme).await;
    let stomp = before
        .iter()
        .find_map(|l| l.split("STOMP over TCP: ").nth(1))
        .and_then(|rest| rest.split("://").nth(1))
        .and_then(|rest| rest.split_whitespace().next())
        .expect("the STOMP listener's log line")
        .to_string();
    (child, addr, stomp)
}

/// [`launch`], also giving the log lines before the `open` line.
pub async fn launch_logged(extra: &[&str], scheme: &str) -> (Child, String, Vec<String>) {
    let (child, addr, before, mut lines) = start(extra, scheme).await;
    // Keep draining the log so the server never blocks on a full pipe.
    tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
    (child, addr, before)
}

/// `wsx serve` with `extra` arguments once it logged its `open SCHEME://ADDR/` line:
/// (child, address, every log line from then on).
pub async fn launch_watched(
    extra: &[&str],
    scheme: &str,
) -> (Child, String, tokio::sync::mpsc::UnboundedReceiver<String>) {
    let (child, addr, _, mut lines) = start(extra, scheme).await;
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Ok(Some(line)) = lines.next_line().await {
            let _ = tx.send(line);
        }
    });
    (child, addr, rx)
}

type LogLines = tokio::io::Lines<BufReader<tokio::process::ChildStderr>>;

/// Start `wsx serve` and read its log up to the `open SCHEME://ADDR/` line: (child,
/// address, the lines before, the rest of the log).
async fn start(extra: &[&str], scheme: &str) -> (Child, String, Vec<String>, LogLines) {
    let mut child = Command::new(WSX)
        .args(["serve", "--listen", "127.0.0.1:0", "--log-format", "text"])
        .args(extra)
        .env("RUST_LOG", "info")
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
    let marker = format!("open {scheme}://");
    let mut before = Vec::new();
    let addr = tokio::time::timeout(Duration::from_secs(20), async {
        while let Some(line) = lines.next_line().await.unwrap() {
            if let Some(rest) = line.split(marker.as_str()).nth(1) {
                return rest.split('/').next().unwrap().to_string();
            }
            before.push(line);
        }
        panic!("wsx serve exited before listening");
    })
    .await
    .unwrap();
    (child, addr, before, lines)
}

/// The next log line of [`launch_watched`]'s that contains `marker` (within 20 s).
pub async fn log_line(
    log: &mut tokio::sync::mpsc::UnboundedReceiver<String>,
    marker: &str,
) -> String {
    tokio::time::timeout(Duration::from_secs(20), async {
        while let Some(line) = log.recv().await {
            if line.contains(marker) {
                return line;
            }
        }
        panic!("the server's log ended before `{marker}`");
    })
    .await
    .unwrap_or_else(|_| panic!("no `{marker}` in the log"))
}

/// `POST /api/METHOD` with `key`: (status, JSON body).
pub async fn api_call(addr: &str, key: &str, method: &str, body: &str) -> (u16, serde_json::Value) {
    let resp = http(
        addr,
        &format!(
            "POST /api/{method} HTTP/1.1\r\nHost: {addr}\r\nAuthorization: apikey {key}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        ),
    )
    .await;
    let status = resp[9..12].parse().unwrap();
    let json = resp.split("\r\n\r\n").nth(1).unwrap_or("");
    (
        status,
        serde_json::from_str(json).unwrap_or(serde_json::Value::Null),
    )
}

/// Send a signal (`HUP`, `TERM`) to a child.
pub fn signal(child: &Child, name: &str) {
    let pid = child.id().unwrap().to_string();
    let ok = std::process::Command::new("kill")
        .args([&format!("-{name}"), &pid])
        .status()
        .unwrap()
        .success();
    assert!(ok, "kill -{name} {pid}");
}

/// Send one raw HTTP/1.1 request (with `Connection: close`) and read the whole answer.
pub async fn http(addr: &str, request: &str) -> String {
    let mut tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    tcp.write_all(request.as_bytes()).await.unwrap();
    let mut resp = String::new();
    tcp.read_to_string(&mut resp).await.unwrap();
    resp
}

pub async fn run(args: &[&str], stdin: &str) -> (i32, String, String) {
    let mut child = Command::new(WSX)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut input = child.stdin.take().unwrap();
    input.write_all(stdin.as_bytes()).await.unwrap();
    drop(input);
    let out = tokio::time::timeout(Duration::from_secs(60), child.wait_with_output())
        .await
        .unwrap()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into(),
        String::from_utf8_lossy(&out.stderr).into(),
    )
}

/// A CA and a leaf for localhost, as PEM files: (dir, ca, cert, key).
pub fn pki() -> (std::path::PathBuf, String, String, String) {
    let dir = std::env::temp_dir().join(format!("wsx-cli-tls-{}", std::process::id()));
    pki_in(dir)
}

/// [`pki`] in `dir` (created): a new CA and leaf at each call.
pub fn pki_in(dir: std::path::PathBuf) -> (std::path::PathBuf, String, String, String) {
    use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair};
    let ca_key = KeyPair::generate().unwrap();
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(DnType::CommonName, "wsx cli test CA");
    let ca = ca_params.self_signed(&ca_key).unwrap();
    let issuer = Issuer::new(ca_params, ca_key);
    let key = KeyPair::generate().unwrap();
    let leaf = CertificateParams::new(vec!["localhost".to_string()])
        .unwrap()
        .signed_by(&key, &issuer)
        .unwrap();
    std::fs::create_dir_all(&dir).unwrap();
    let write = |name: &str, data: String| {
        let p = dir.join(name);
        std::fs::write(&p, data).unwrap();
        p.display().to_string()
    };
    let ca_pem = write("ca.pem", ca.pem());
    let cert = write("cert.pem", leaf.pem());
    let key = write("key.pem", key.serialize_pem());
    (dir, ca_pem, cert, key)
}

pub async fn serve_tls(cert: &str, key: &str, extra: &[&str]) -> (Child, String) {
    let mut args = vec!["--tls-cert", cert, "--tls-key", key];
    args.extend_from_slice(extra);
    launch(&args, "https").await
}

/// A native-protocol client of `wsx serve` at `addr`: sends each command and waits for
/// its reply (which must not be an error); returns the socket and the replies.
pub async fn native(
    addr: &str,
    commands: &[serde_json::Value],
) -> (wsx::WebSocket<wsx::MaybeTlsStream>, Vec<serde_json::Value>) {
    use futures_util::StreamExt;
    let (mut ws, _) = wsx::connect(
        &format!("ws://{addr}/connection/websocket"),
        &wsx::ClientConfig::default(),
    )
    .await
    .unwrap();
    let mut replies = Vec::new();
    for cmd in commands {
        ws.send(wsx::Message::text(cmd.to_string())).await.unwrap();
        let Some(Ok(wsx::Message::Text(t))) = ws.next().await else {
            panic!("no reply to {cmd}")
        };
        let v: serde_json::Value = serde_json::from_str(t.as_str()).unwrap();
        assert!(v["error"].is_null(), "{v}");
        replies.push(v);
    }
    (ws, replies)
}

/// A fresh directory for this test process (`wsx-NAME-PID` under the system's).
pub fn temp_dir(name: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("wsx-{name}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// A free loopback port.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// `redis-server` with `args` (after `--bind 127.0.0.1 --save ""`), once it is ready;
/// killed on drop.
pub async fn redis_with(args: &[&str]) -> Child {
    let mut child = Command::new("redis-server")
        .args(["--bind", "127.0.0.1", "--save", ""])
        .args(args)
        .stdout(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("redis-server is not installed: run scripts/test");
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    while let Some(line) = lines.next_line().await.unwrap() {
        if line.contains("Ready to accept connections") {
            break;
        }
    }
    tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
    child
}

/// A `redis-server` on a free loopback port (no persistence), killed on drop; its port.
pub async fn redis_server() -> (Child, u16) {
    let port = free_port();
    let child = redis_with(&["--port", &port.to_string(), "--appendonly", "no"]).await;
    (child, port)
}

/// A Redis Cluster of three masters on free loopback ports (`redis-cli --cluster
/// create`), settled; the servers (killed on drop) and their URLs.
pub async fn redis_cluster(dir: &std::path::Path) -> (Vec<Child>, Vec<String>) {
    let mut servers = Vec::new();
    let mut ports = Vec::new();
    for i in 0..3 {
        let port = free_port();
        let conf = format!("nodes-{i}.conf");
        let d = dir.display().to_string();
        let args = [
            "--port",
            &port.to_string(),
            "--cluster-enabled",
            "yes",
            "--cluster-config-file",
            &conf,
            "--dir",
            &d,
        ];
        servers.push(redis_with(&args).await);
        ports.push(port);
    }
    let addrs: Vec<String> = ports.iter().map(|p| format!("127.0.0.1:{p}")).collect();
    let out = Command::new("redis-cli")
        .args(["--cluster", "create"])
        .args(&addrs)
        .args(["--cluster-replicas", "0", "--cluster-yes"])
        .output()
        .await
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    for p in &ports {
        let mut settled = false;
        for _ in 0..200 {
            let info = Command::new("redis-cli")
                .args(["-p", &p.to_string(), "cluster", "info"])
                .output()
                .await
                .unwrap();
            if String::from_utf8_lossy(&info.stdout).contains("cluster_state:ok") {
                settled = true;
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert!(settled, "the cluster did not settle");
    }
    let urls = ports
        .iter()
        .map(|p| format!("redis://127.0.0.1:{p}"))
        .collect();
    (servers, urls)
}

/// Run `node tests/SCRIPT ARGS...` (from the repository root, where `node_modules` is)
/// and return its stdout; fails the test unless it exits 0 and printed `ok_marker`.
pub async fn node_script(script: &str, args: &[&str], ok_marker: &str) -> String {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let out = Command::new("node")
        .arg(dir.join("tests").join(script))
        .args(args)
        .current_dir(dir.join("../.."))
        .output()
        .await
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success() && stdout.contains(ok_marker),
        "{stdout}\n{stderr}"
    );
    stdout
}
