//! Helpers for the interop tests: a wsx echo server that records what it sees, test
//! certificates, and third-party peers run as child processes.
#![allow(dead_code, clippy::unwrap_used)]

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;

use futures_util::StreamExt;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::net::TcpListener;
use tokio::process::{Child, Command};
use tokio::sync::mpsc;
use wsx::{CloseCode, Config, DeflateConfig, Message, OriginPolicy, ServerConfig};

/// What the echo server observed on one connection.
#[derive(Debug, Clone, PartialEq)]
pub enum Seen {
    /// Negotiated on accept: subprotocol, deflate parameters.
    Accepted(Option<String>, Option<wsx::wsx_proto::DeflateParams>),
    /// A close frame from the peer.
    Close(Option<wsx::CloseFrame>),
    /// A pong.
    Pong(Vec<u8>),
}

pub fn server_config(deflate: Option<DeflateConfig>) -> ServerConfig {
    ServerConfig::default()
        .origin(OriginPolicy::Any)
        .subprotocols(["chat", "superchat"])
        .deflate(deflate)
        .protocol(
            Config::default()
                .max_frame_size(64 << 20)
                .max_message_size(64 << 20),
        )
}

/// Serve one connection's echo protocol: data is echoed; the text `close CODE REASON`
/// makes the server close with that code; `ping PAYLOAD` makes it send a ping;
/// `fragmented` makes it send a fragmented message.
pub async fn serve_echo<S>(mut ws: wsx::WebSocket<S>, seen: mpsc::UnboundedSender<Seen>)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    while let Some(msg) = ws.next().await {
        let Ok(msg) = msg else { return };
        match &msg {
            Message::Text(t) if t.as_str().starts_with("close ") => {
                let rest = &t.as_str()[6..];
                let (code, reason) = rest.split_once(' ').unwrap_or((rest, ""));
                let frame = wsx::CloseFrame::new(CloseCode(code.parse().unwrap()), reason);
                // Keep reading: the pong and the close reply are recorded below.
                if ws.send(Message::Close(Some(frame))).await.is_err() {
                    return;
                }
            }
            Message::Text(t) if t.as_str().starts_with("ping ") => {
                let payload = bytes::Bytes::copy_from_slice(&t.as_bytes()[5..]);
                if ws.send(Message::Ping(payload)).await.is_err() {
                    return;
                }
            }
            Message::Text(t) if t.as_str() == "fragmented" => {
                let parts = ["frag", "mented ", "κόσμε"];
                for (i, p) in parts.iter().enumerate() {
                    let payload = bytes::Bytes::from(p.as_bytes().to_vec());
                    if ws
                        .send_frame(wsx::DataKind::Text, payload, i == parts.len() - 1)
                        .await
                        .is_err()
                    {
                        return;
                    }
                }
            }
            Message::Close(frame) => {
                let _ = seen.send(Seen::Close(frame.clone()));
            }
            Message::Pong(p) => {
                let _ = seen.send(Seen::Pong(p.to_vec()));
            }
            Message::Ping(_) => {}
            data => {
                if ws.send(data.clone()).await.is_err() {
                    return;
                }
            }
        }
    }
}

/// A wsx echo server on a free port (TLS if `tls` is given). Returns its port and the
/// stream of observations.
pub async fn echo_server(
    cfg: ServerConfig,
    tls: Option<Arc<rustls::ServerConfig>>,
) -> (u16, mpsc::UnboundedReceiver<Seen>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let (tx, rx) = mpsc::unbounded_channel();
    let acceptor = tls.map(tokio_rustls::TlsAcceptor::from);
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            tcp.set_nodelay(true).unwrap();
            let (cfg, tx, acceptor) = (cfg.clone(), tx.clone(), acceptor.clone());
            tokio::spawn(async move {
                match acceptor {
                    Some(acc) => {
                        let Ok(tls) = acc.accept(tcp).await else {
                            return;
                        };
                        let Ok((ws, a)) = wsx::accept(tls, &cfg).await else {
                            return;
                        };
                        let _ = tx.send(Seen::Accepted(a.subprotocol.clone(), a.deflate));
                        serve_echo(ws, tx).await;
                    }
                    None => {
                        let Ok((ws, a)) = wsx::accept(tcp, &cfg).await else {
                            return;
                        };
                        let _ = tx.send(Seen::Accepted(a.subprotocol.clone(), a.deflate));
                        serve_echo(ws, tx).await;
                    }
                }
            });
        }
    });
    (port, rx)
}

/// A CA and a leaf certificate for localhost / 127.0.0.1, written to a temp dir.
pub struct TestPki {
    pub dir: PathBuf,
    pub ca_pem: PathBuf,
    pub cert_pem: PathBuf,
    pub key_pem: PathBuf,
    pub ca_der: rustls_pki_types::CertificateDer<'static>,
    /// base64(SHA-256(SPKI)) of the leaf, for Chromium's
    /// `--ignore-certificate-errors-spki-list` (trusts exactly this key).
    pub leaf_spki_sha256: String,
}

pub fn test_pki(name: &str) -> TestPki {
    use base64::Engine as _;
    use rcgen::{
        BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair, PublicKeyData,
    };
    let ca_key = KeyPair::generate().unwrap();
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(DnType::CommonName, "wsx test CA");
    let ca = ca_params.self_signed(&ca_key).unwrap();
    let issuer = Issuer::new(ca_params, ca_key);
    let leaf_key = KeyPair::generate().unwrap();
    let mut params =
        CertificateParams::new(vec!["localhost".to_string(), "127.0.0.1".to_string()]).unwrap();
    params
        .distinguished_name
        .push(DnType::CommonName, "localhost");
    let leaf = params.signed_by(&leaf_key, &issuer).unwrap();
    let dir = std::env::temp_dir().join(format!("wsx-pki-{name}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let write = |file: &str, data: String| {
        let p = dir.join(file);
        std::fs::write(&p, data).unwrap();
        p
    };
    let spki = leaf_key.subject_public_key_info();
    let hash = ring::digest::digest(&ring::digest::SHA256, &spki);
    TestPki {
        ca_pem: write("ca.pem", ca.pem()),
        cert_pem: write("cert.pem", format!("{}{}", leaf.pem(), ca.pem())),
        key_pem: write("key.pem", leaf_key.serialize_pem()),
        ca_der: ca.der().clone(),
        leaf_spki_sha256: base64::engine::general_purpose::STANDARD.encode(hash.as_ref()),
        dir,
    }
}

impl TestPki {
    pub fn server_tls(&self) -> Arc<rustls::ServerConfig> {
        wsx::tls::server_config(
            wsx::tls::load_certs(&self.cert_pem).unwrap(),
            wsx::tls::load_key(&self.key_pem).unwrap(),
        )
        .unwrap()
    }
}

/// The repository root (where package.json and node_modules live).
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../..")
        .canonicalize()
        .unwrap()
}

pub fn peer_script(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/peers")
        .join(name)
}

/// Fail with a clear message when a third-party peer is not installed; `scripts/test`
/// installs them all.
pub fn require(what: &str, check: &[&str]) {
    let ok = std::process::Command::new(check[0])
        .args(&check[1..])
        .current_dir(repo_root())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .map(|s| s.success())
        .unwrap_or(false);
    assert!(
        ok,
        "{what} is not installed: run scripts/test, which installs the interop peers"
    );
}

pub fn require_python_websockets() {
    require(
        "Python `websockets`",
        &["python3", "-c", "import websockets"],
    );
}

pub fn require_node_module(module: &str) {
    require(
        &format!("npm package {module}"),
        &["node", "-e", &format!("require.resolve('{module}')")],
    );
}

/// Run a peer client to completion; panics with its output when it fails.
pub async fn run_client(program: &str, args: &[String]) -> String {
    let out = Command::new(program)
        .args(args)
        .current_dir(repo_root())
        .kill_on_drop(true)
        .output();
    let out = tokio::time::timeout(std::time::Duration::from_secs(180), out)
        .await
        .expect("peer client timed out")
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "{program} {args:?} failed:\n{stdout}\n{stderr}"
    );
    stdout
}

/// A peer server: started, and ready once it printed `listening`. Its later stdout
/// lines arrive on `lines`.
pub struct PeerServer {
    pub child: Child,
    /// The port from the `listening PORT` line.
    pub port: u16,
    pub lines: mpsc::UnboundedReceiver<String>,
}

pub async fn start_server(program: &str, args: &[String]) -> PeerServer {
    let mut child = Command::new(program)
        .args(args)
        .current_dir(repo_root())
        .stdout(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let (tx, mut rx) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        let mut lines = BufReader::new(stdout).lines();
        while let Ok(Some(line)) = lines.next_line().await {
            let _ = tx.send(line);
        }
    });
    let first = tokio::time::timeout(std::time::Duration::from_secs(30), rx.recv())
        .await
        .expect("peer server did not start")
        .expect("peer server exited");
    let port = first
        .strip_prefix("listening ")
        .and_then(|p| p.trim().parse().ok())
        .unwrap_or_else(|| panic!("unexpected first line: {first}"));
    PeerServer {
        child,
        port,
        lines: rx,
    }
}

impl PeerServer {
    /// The next stdout line that starts with `prefix`.
    pub async fn line(&mut self, prefix: &str) -> String {
        loop {
            let line = tokio::time::timeout(std::time::Duration::from_secs(30), self.lines.recv())
                .await
                .unwrap_or_else(|_| panic!("no line starting with {prefix:?}"))
                .expect("peer server exited");
            if line.starts_with(prefix) {
                return line;
            }
        }
    }
}

/// Payload sizes every interop test exchanges.
pub const SIZES: [usize; 6] = [0, 125, 126, 65535, 65536, 16 << 20];

/// The cases a wsx client runs against a third-party echo server: every size as text
/// and binary, fragmented messages, ping/pong, and a close the server starts with a code
/// and reason. Returns what the handshake negotiated.
pub async fn wsx_client_cases(url: &str, cfg: &wsx::ClientConfig) -> wsx::ClientAccepted {
    use bytes::Bytes;
    use wsx::{CloseFrame, DataKind};

    let (mut ws, accepted) = wsx::connect(url, cfg).await.unwrap();
    for size in SIZES {
        let text: String = (0..size)
            .map(|i| char::from(b'a' + (i % 26) as u8))
            .collect();
        ws.send(Message::text(text.clone())).await.unwrap();
        assert_eq!(
            ws.next().await.unwrap().unwrap(),
            Message::text(text),
            "text {size}"
        );
        let bin = Bytes::from((0..size).map(|i| (i % 251) as u8).collect::<Vec<_>>());
        ws.send(Message::Binary(bin.clone())).await.unwrap();
        assert_eq!(
            ws.next().await.unwrap().unwrap(),
            Message::Binary(bin),
            "binary {size}"
        );
    }
    // A fragmented message, with a ping between its fragments.
    ws.send_frame(DataKind::Text, Bytes::from_static("Hel".as_bytes()), false)
        .await
        .unwrap();
    ws.send(Message::Ping(Bytes::from_static(b"wsx-ping")))
        .await
        .unwrap();
    ws.send_frame(
        DataKind::Text,
        Bytes::from("lo κόσμε".as_bytes().to_vec()),
        true,
    )
    .await
    .unwrap();
    assert_eq!(
        ws.next().await.unwrap().unwrap(),
        Message::Pong(Bytes::from_static(b"wsx-ping"))
    );
    assert_eq!(
        ws.next().await.unwrap().unwrap(),
        Message::text("Hello κόσμε")
    );
    // The server closes with a code and reason.
    ws.send(Message::text("close 4001 bye from server"))
        .await
        .unwrap();
    assert_eq!(
        ws.next().await.unwrap().unwrap(),
        Message::Close(Some(CloseFrame::new(CloseCode(4001), "bye from server")))
    );
    assert!(ws.next().await.is_none());
    // We close with a code and reason: the server echoes the code.
    let (mut ws, _) = wsx::connect(url, cfg).await.unwrap();
    ws.send(Message::Close(Some(CloseFrame::new(
        CloseCode(4002),
        "bye from client",
    ))))
    .await
    .unwrap();
    match ws.next().await.unwrap().unwrap() {
        Message::Close(Some(f)) => assert_eq!(f.code, CloseCode(4002)),
        other => panic!("{other:?}"),
    }
    assert!(ws.next().await.is_none());
    accepted
}

/// Drain what the wsx echo server saw until the client's close arrives.
pub async fn seen_until_close(rx: &mut mpsc::UnboundedReceiver<Seen>) -> Vec<Seen> {
    let mut all = Vec::new();
    loop {
        let s = tokio::time::timeout(std::time::Duration::from_secs(30), rx.recv())
            .await
            .expect("server saw no close")
            .unwrap();
        let done = matches!(s, Seen::Close(_));
        all.push(s);
        if done {
            return all;
        }
    }
}

/// The wsx client configuration for a deflate mode: plain, deflate, deflate-nct.
pub fn client_config(mode: &str) -> wsx::ClientConfig {
    let deflate = match mode {
        "plain" => None,
        "deflate" => Some(DeflateConfig::default()),
        _ => Some(
            DeflateConfig::default()
                .server_no_context_takeover(true)
                .client_no_context_takeover(true),
        ),
    };
    wsx::ClientConfig::default()
        .subprotocols(["chat", "superchat"])
        .deflate(deflate)
        .protocol(
            Config::default()
                .max_frame_size(64 << 20)
                .max_message_size(64 << 20),
        )
}

/// Check negotiated deflate parameters against a mode.
pub fn assert_mode(mode: &str, deflate: Option<wsx::wsx_proto::DeflateParams>) {
    match mode {
        "plain" => assert_eq!(deflate, None),
        "deflate" => {
            let p = deflate.expect("deflate negotiated");
            assert!(
                !p.server_no_context_takeover && !p.client_no_context_takeover,
                "{p:?}"
            );
        }
        _ => {
            let p = deflate.expect("deflate negotiated");
            assert!(
                p.server_no_context_takeover && p.client_no_context_takeover,
                "{p:?}"
            );
        }
    }
}

/// A third-party peer: how to run its client and server scripts and what it reports.
pub struct Peer {
    /// Tag for temp files.
    pub name: &'static str,
    /// The interpreter (`python3`, `node`).
    pub program: &'static str,
    pub client_script: &'static str,
    pub server_script: &'static str,
    /// Checks it is installed.
    pub require: fn(),
    /// The subprotocol its server picks from the wsx client's offer.
    pub server_subprotocol: &'static str,
    /// How its server's `accepted` line ends without compression, and what it contains with.
    pub plain_suffix: &'static str,
    pub deflate_marker: &'static str,
}

/// The peer's client runs every case against a wsx echo server.
pub async fn peer_client_against_wsx(peer: &Peer, mode: &str, tls: bool) {
    (peer.require)();
    let pki = tls.then(|| test_pki(&format!("{}-{mode}", peer.name)));
    let (port, mut seen) = echo_server(
        server_config(Some(DeflateConfig::default())),
        pki.as_ref().map(|p| p.server_tls()),
    )
    .await;
    let (scheme, host) = if tls {
        ("wss", "localhost")
    } else {
        ("ws", "127.0.0.1")
    };
    let mut args = vec![
        peer_script(peer.client_script).display().to_string(),
        format!("{scheme}://{host}:{port}/"),
        mode.to_string(),
    ];
    if let Some(p) = &pki {
        args.push(p.ca_pem.display().to_string());
    }
    let out = run_client(peer.program, &args).await;
    assert!(out.contains("OK"), "{out}");
    // What the server saw on the first connection.
    let first = seen_until_close(&mut seen).await;
    let Seen::Accepted(proto, deflate) = &first[0] else {
        panic!("{first:?}")
    };
    assert_eq!(proto.as_deref(), Some("chat"), "server preference wins");
    assert_mode(mode, *deflate);
    assert!(
        first.contains(&Seen::Pong(b"from-wsx".to_vec())),
        "{first:?}"
    );
    // The peer echoes the code and the reason of the server's close.
    assert_eq!(
        first.last(),
        Some(&Seen::Close(Some(wsx::CloseFrame::new(
            CloseCode(4001),
            "bye from server"
        ))))
    );
    // The second connection: the client's close code and reason.
    let second = seen_until_close(&mut seen).await;
    assert_eq!(
        second.last(),
        Some(&Seen::Close(Some(wsx::CloseFrame::new(
            CloseCode(4002),
            "bye from client"
        ))))
    );
}

/// A wsx client runs every case against the peer's echo server.
pub async fn wsx_client_against_peer(peer: &Peer, mode: &str, tls: bool) {
    (peer.require)();
    let pki = tls.then(|| test_pki(&format!("{}s-{mode}", peer.name)));
    let mut args = vec![
        peer_script(peer.server_script).display().to_string(),
        mode.to_string(),
    ];
    if let Some(p) = &pki {
        args.push(p.cert_pem.display().to_string());
        args.push(p.key_pem.display().to_string());
    }
    let mut server = start_server(peer.program, &args).await;
    let port = server.port;
    let mut cfg = client_config(mode);
    let url = match &pki {
        Some(p) => {
            cfg = cfg.ca_cert(p.ca_der.clone());
            format!("wss://localhost:{port}/")
        }
        None => format!("ws://127.0.0.1:{port}/"),
    };
    let accepted = wsx_client_cases(&url, &cfg).await;
    assert_eq!(
        accepted.subprotocol.as_deref(),
        Some(peer.server_subprotocol)
    );
    assert_mode(mode, accepted.deflate);
    let line = server.line("accepted").await;
    if mode == "plain" {
        assert!(line.ends_with(peer.plain_suffix), "{line}");
    } else {
        assert!(line.contains(peer.deflate_marker), "{line}");
    }
    assert_eq!(
        server.line("closed").await,
        "closed 4001 ",
        "wsx echoes the code, not the reason"
    );
    server.line("accepted").await;
    assert_eq!(server.line("closed").await, "closed 4002 bye from client");
}
