//! Every connection of `wsx serve` is bounded in time in each state and in number:
//! clients that do exactly what an attacker would (send nothing, send a head one line
//! at a time, idle after a request, never finish TLS, open more sockets than allowed),
//! and a peer still sending when the server closes for a limit (lingering close).
#![allow(clippy::unwrap_used)]

use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

mod common;
use common::{pki, serve, serve_tls};

/// Read until EOF (or a reset); how long it took and what was read. Bounded.
async fn until_closed(tcp: &mut TcpStream, within: Duration) -> (Duration, Vec<u8>) {
    let start = Instant::now();
    let mut got = Vec::new();
    let read = tokio::time::timeout(within, async {
        let mut buf = [0u8; 4096];
        loop {
            match tcp.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => got.extend_from_slice(&buf[..n]),
            }
        }
    })
    .await;
    assert!(read.is_ok(), "still open after {within:?}");
    (start.elapsed(), got)
}

#[tokio::test]
async fn a_connection_that_sends_nothing_is_closed_after_the_header_timeout() {
    let (_server, addr) = serve(&["--header-timeout", "1s"]).await;
    let mut tcp = TcpStream::connect(&addr).await.unwrap();
    let (took, _) = until_closed(&mut tcp, Duration::from_secs(10)).await;
    assert!(
        took >= Duration::from_millis(900),
        "closed too early: {took:?}"
    );
}

#[tokio::test]
async fn a_body_announced_but_not_sent_is_cut_off_after_the_body_timeout() {
    let (_server, addr) =
        serve(&["--body-timeout", "1s", "--api-key", "bounds-key-0123456789"]).await;
    // 100 bytes announced, 10 sent, then nothing: the API's handler must not wait for ever.
    let mut tcp = TcpStream::connect(&addr).await.unwrap();
    tcp.write_all(
        b"POST /api/publish HTTP/1.1\r\nHost: x\r\nAuthorization: apikey bounds-key-0123456789\r\nContent-Length: 100\r\n\r\n{\"channel\"",
    )
    .await
    .unwrap();
    let (took, got) = until_closed(&mut tcp, Duration::from_secs(10)).await;
    assert!(took >= Duration::from_millis(900), "too early: {took:?}");
    let got = String::from_utf8_lossy(&got);
    assert!(got.starts_with("HTTP/1.1 408"), "{got}");
}

#[tokio::test]
async fn a_head_sent_one_line_at_a_time_is_cut_off() {
    let (_server, addr) = serve(&["--header-timeout", "1s"]).await;
    let tcp = TcpStream::connect(&addr).await.unwrap();
    let (mut rd, mut wr) = tcp.into_split();
    let start = Instant::now();
    // Slowloris: a header line every 100 ms, for up to 10 s.
    let sender = tokio::spawn(async move {
        if wr
            .write_all(b"GET / HTTP/1.1\r\nHost: x\r\n")
            .await
            .is_err()
        {
            return;
        }
        for i in 0..100 {
            tokio::time::sleep(Duration::from_millis(100)).await;
            if wr
                .write_all(format!("X-{i}: y\r\n").as_bytes())
                .await
                .is_err()
            {
                return;
            }
        }
    });
    let mut buf = [0u8; 1024];
    let closed = tokio::time::timeout(Duration::from_secs(5), async {
        loop {
            match rd.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(_) => {}
            }
        }
    })
    .await;
    assert!(closed.is_ok(), "a slow head kept the connection open");
    assert!(start.elapsed() < Duration::from_secs(4));
    sender.abort();
}

#[tokio::test]
async fn an_idle_keep_alive_connection_is_closed() {
    let (_server, addr) = serve(&["--header-timeout", "1s"]).await;
    let mut tcp = TcpStream::connect(&addr).await.unwrap();
    tcp.write_all(format!("GET /healthz HTTP/1.1\r\nHost: {addr}\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let (took, got) = until_closed(&mut tcp, Duration::from_secs(10)).await;
    let text = String::from_utf8_lossy(&got);
    assert!(text.starts_with("HTTP/1.1 200"), "{text}");
    assert!(text.ends_with("ok\n"), "{text}");
    assert!(took >= Duration::from_millis(900), "{took:?}");
}

#[tokio::test]
async fn a_tls_client_that_never_finishes_the_handshake_is_closed() {
    let (_dir, _ca, cert, key) = pki();
    let (_server, addr) = serve_tls(&cert, &key, &["--tls-handshake-timeout", "1s"]).await;
    let mut tcp = TcpStream::connect(&addr).await.unwrap();
    // The first bytes of a ClientHello record, then nothing.
    tcp.write_all(&[0x16, 0x03, 0x01, 0x02, 0x00])
        .await
        .unwrap();
    let (took, _) = until_closed(&mut tcp, Duration::from_secs(10)).await;
    assert!(took >= Duration::from_millis(900), "{took:?}");
}

#[tokio::test]
async fn open_tcp_connections_are_limited_not_only_upgrades() {
    let (_server, addr) = serve(&["--max-tcp-connections", "2"]).await;
    let held: Vec<TcpStream> = vec![
        TcpStream::connect(&addr).await.unwrap(),
        TcpStream::connect(&addr).await.unwrap(),
    ];
    let mut third = TcpStream::connect(&addr).await.unwrap();
    third
        .write_all(format!("GET /healthz HTTP/1.1\r\nHost: {addr}\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let (_, got) = until_closed(&mut third, Duration::from_secs(5)).await;
    let text = String::from_utf8_lossy(&got);
    assert!(text.starts_with("HTTP/1.1 503"), "{text}");
    assert!(text.contains("retry-after: 1"), "{text}");
    // A slot is given back when a connection closes.
    drop(held);
    let served = tokio::time::timeout(Duration::from_secs(5), async {
        loop {
            let mut tcp = TcpStream::connect(&addr).await.unwrap();
            tcp.write_all(
                format!("GET /healthz HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n")
                    .as_bytes(),
            )
            .await
            .unwrap();
            let mut resp = String::new();
            let _ = tcp.read_to_string(&mut resp).await;
            if resp.starts_with("HTTP/1.1 200") {
                break;
            }
            tokio::task::yield_now().await;
        }
    })
    .await;
    assert!(served.is_ok(), "the slots were never released");
}

#[tokio::test]
async fn a_peer_still_sending_past_the_limit_gets_the_close_frame_and_no_reset() {
    let (_server, addr) = serve(&["--max-message-size", "64KiB"]).await;
    let mut tcp = TcpStream::connect(&addr).await.unwrap();
    tcp.write_all(
        format!(
            "GET /echo HTTP/1.1\r\nHost: {addr}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
             Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
        )
        .as_bytes(),
    )
    .await
    .unwrap();
    let mut head = Vec::new();
    while !head.ends_with(b"\r\n\r\n") {
        let mut b = [0u8; 1];
        tcp.read_exact(&mut b).await.unwrap();
        head.push(b[0]);
    }
    assert!(head.starts_with(b"HTTP/1.1 101"));
    let (mut rd, mut wr) = tcp.into_split();
    // A 16 MiB binary frame (masked with a zero key), 8 MiB of it sent.
    let writer = tokio::spawn(async move {
        let mut header = vec![0x82u8, 0xFF];
        header.extend_from_slice(&(16u64 << 20).to_be_bytes());
        header.extend_from_slice(&[0, 0, 0, 0]);
        wr.write_all(&header).await?;
        let chunk = vec![0u8; 64 << 10];
        for _ in 0..128 {
            wr.write_all(&chunk).await?;
        }
        wr.shutdown().await?;
        Ok::<_, std::io::Error>(())
    });
    let mut got = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(20), async {
        let mut buf = [0u8; 4096];
        loop {
            match rd.read(&mut buf).await {
                Ok(0) => return Ok(()),
                Ok(n) => got.extend_from_slice(&buf[..n]),
                Err(e) => return Err(e),
            }
        }
    })
    .await
    .unwrap();
    assert!(got.len() >= 4, "no close frame: {got:?}");
    assert_eq!(got[0], 0x88, "a close frame first");
    assert_eq!(&got[2..4], &[0x03, 0xF1], "code 1009");
    read.expect("a clean end (FIN), not a reset");
    writer
        .await
        .unwrap()
        .expect("every byte sent was taken: the server drained instead of resetting");
}

/// Accepted connections have TCP keepalive on (a vanished peer is found even when the
/// protocol on top has no heart-beat): the kernel shows a keepalive timer on the
/// server's side of an idle connection.
#[tokio::test]
async fn accepted_connections_have_tcp_keepalive() {
    let (_server, addr) = serve(&["--demo", "off"]).await;
    let tcp = TcpStream::connect(&addr).await.unwrap();
    let port = addr.rsplit(':').next().unwrap().to_string();
    let client_port = tcp.local_addr().unwrap().port();
    let filter = format!("( sport = :{port} and dport = :{client_port} )");
    let mut shown = String::new();
    for _ in 0..50 {
        let out = std::process::Command::new("ss")
            .args(["-tnoH", "state", "established", &filter])
            .output()
            .expect("ss (iproute2, installed by scripts/test)");
        shown = String::from_utf8_lossy(&out.stdout).into_owned();
        // The kernel lists the connection before the server has accepted it (and set
        // keepalive): look again, a bounded number of times.
        if shown.contains("keepalive") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(shown.contains("timer:(keepalive,"), "{shown}");
    drop(tcp);
}

/// A TCP connection to `addr` from the loopback address `src`.
async fn connect_from(addr: &str, src: [u8; 4]) -> TcpStream {
    let sock = tokio::net::TcpSocket::new_v4().unwrap();
    sock.bind(std::net::SocketAddr::from((src, 0))).unwrap();
    sock.connect(addr.parse().unwrap()).await.unwrap()
}

/// Send a WebSocket upgrade for the echo endpoint (with `extra` header lines) from `src`;
/// the response head, lower-cased, and the connection.
async fn upgrade_from(addr: &str, src: [u8; 4], extra: &str) -> (String, TcpStream) {
    let mut tcp = connect_from(addr, src).await;
    let req = format!(
        "GET /echo HTTP/1.1\r\nHost: {addr}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n{extra}\r\n"
    );
    tcp.write_all(req.as_bytes()).await.unwrap();
    let mut got = Vec::new();
    let mut buf = [0u8; 1024];
    while !got.windows(4).any(|w| w == b"\r\n\r\n") {
        match tcp.read(&mut buf).await.unwrap() {
            0 => break,
            n => got.extend_from_slice(&buf[..n]),
        }
    }
    (String::from_utf8_lossy(&got).to_ascii_lowercase(), tcp)
}

#[tokio::test]
async fn connections_per_source_address_are_limited_websockets_included() {
    let (_server, addr) = serve(&["--max-connections-per-ip", "3", "--limit-exempt", "none"]).await;
    // Two WebSockets and an idle connection from 127.0.0.1 fill its three.
    let (a, _ws1) = upgrade_from(&addr, [127, 0, 0, 1], "").await;
    let (b, _ws2) = upgrade_from(&addr, [127, 0, 0, 1], "").await;
    assert!(
        a.starts_with("http/1.1 101") && b.starts_with("http/1.1 101"),
        "{a}{b}"
    );
    let _idle = connect_from(&addr, [127, 0, 0, 1]).await;
    let mut fourth = connect_from(&addr, [127, 0, 0, 1]).await;
    let (_, got) = until_closed(&mut fourth, Duration::from_secs(5)).await;
    let text = String::from_utf8_lossy(&got).to_ascii_lowercase();
    assert!(
        text.starts_with("http/1.1 503") && text.contains("retry-after: 1"),
        "{text}"
    );
    assert!(text.contains("from your address"), "{text}");
    // Another address is not affected.
    let (c, _ws3) = upgrade_from(&addr, [127, 0, 0, 2], "").await;
    assert!(c.starts_with("http/1.1 101"), "{c}");
}

#[tokio::test]
async fn handshakes_per_source_address_get_429_beyond_the_rate_and_proxies_are_trusted_by_setting()
{
    let (_server, addr) = serve(&[
        "--handshakes-per-ip",
        "1",
        "--handshake-burst-per-ip",
        "2",
        "--limit-exempt",
        "none",
        "--trusted-proxies",
        "127.0.0.3",
    ])
    .await;
    for _ in 0..2 {
        let (head, _) = upgrade_from(&addr, [127, 0, 0, 1], "").await;
        assert!(head.starts_with("http/1.1 101"), "{head}");
    }
    let (head, _) = upgrade_from(&addr, [127, 0, 0, 1], "").await;
    assert!(head.starts_with("http/1.1 429"), "{head}");
    assert!(head.contains("retry-after: 1"), "{head}");
    // From anyone but a trusted proxy, X-Forwarded-For is ignored: still 127.0.0.1's.
    let (head, _) = upgrade_from(&addr, [127, 0, 0, 1], "X-Forwarded-For: 203.0.113.5\r\n").await;
    assert!(head.starts_with("http/1.1 429"), "{head}");
    // Through the trusted proxy, each client has its own bucket.
    for client in ["203.0.113.5", "203.0.113.5", "198.51.100.7"] {
        let xff = format!("X-Forwarded-For: {client}\r\n");
        let (head, _) = upgrade_from(&addr, [127, 0, 0, 3], &xff).await;
        assert!(head.starts_with("http/1.1 101"), "{client}: {head}");
    }
    let (head, _) = upgrade_from(&addr, [127, 0, 0, 3], "X-Forwarded-For: 203.0.113.5\r\n").await;
    assert!(head.starts_with("http/1.1 429"), "{head}");
    // Loopback is exempt by default; here `--limit-exempt none` took that away, and a
    // polling session's handshake is limited like an upgrade.
    let mut tcp = connect_from(&addr, [127, 0, 0, 1]).await;
    tcp.write_all(
        format!("GET /socket.io/?EIO=4&transport=polling HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n")
            .as_bytes(),
    )
    .await
    .unwrap();
    let mut resp = String::new();
    let _ = tcp.read_to_string(&mut resp).await;
    assert!(resp.starts_with("HTTP/1.1 429"), "{resp}");
}
