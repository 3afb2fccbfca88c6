//! Fan-out benchmark: N WebSocket subscribers on one channel of `wsx serve`, one
//! publisher at a fixed rate through the HTTP API; latency from publish to each receipt
//! and to the last receipt of each publication; rates stepped up to find where latency
//! climbs. Server pinned to core 0, this process to core 1 (by scripts/bench).
//!
//! fanout WSX_BIN [--subscribers N] [--seconds S] [--rates 10,50,100,...]

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use std::sync::Mutex;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const KEY: &str = "fanout-bench-key-0123456789";

fn pct(v: &mut [f64], p: f64) -> f64 {
    if v.is_empty() {
        return 0.0;
    }
    v.sort_by(|a, b| a.partial_cmp(b).unwrap_or(std::cmp::Ordering::Equal));
    v[((v.len() - 1) as f64 * p).round() as usize]
}

/// Parse `"offset":N` out of a pub push without a JSON parser.
fn offset_of(text: &str) -> Option<u64> {
    let i = text.find("\"offset\":")? + 9;
    let digits: String = text[i..]
        .chars()
        .take_while(|c| c.is_ascii_digit())
        .collect();
    digits.parse().ok()
}

async fn post(conn: &mut TcpStream, host: &str, body: &str) -> bool {
    let req = format!(
        "POST /api/publish HTTP/1.1\r\nHost: {host}\r\nAuthorization: apikey {KEY}\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    if conn.write_all(req.as_bytes()).await.is_err() {
        return false;
    }
    let mut buf = Vec::with_capacity(512);
    let mut tmp = [0u8; 512];
    loop {
        let Ok(n) = conn.read(&mut tmp).await else {
            return false;
        };
        if n == 0 {
            return false;
        }
        buf.extend_from_slice(&tmp[..n]);
        if let Some(h) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buf[..h]).to_ascii_lowercase();
            let len: usize = head
                .lines()
                .find_map(|l| {
                    l.strip_prefix("content-length:")
                        .map(|v| v.trim().parse().unwrap_or(0))
                })
                .unwrap_or(0);
            if buf.len() >= h + 4 + len {
                return head.starts_with("http/1.1 200");
            }
        }
    }
}

#[tokio::main(flavor = "multi_thread", worker_threads = 1)]
async fn main() {
    let args: Vec<String> = std::env::args().collect();
    let wsx = args
        .get(1)
        .cloned()
        .unwrap_or_else(|| "target/release/wsx".into());
    let flag = |name: &str| {
        args.iter()
            .position(|a| a == name)
            .and_then(|i| args.get(i + 1))
            .cloned()
    };
    let n: usize = flag("--subscribers")
        .and_then(|v| v.parse().ok())
        .unwrap_or(10_000);
    let seconds: f64 = flag("--seconds")
        .and_then(|v| v.parse().ok())
        .unwrap_or(3.0);
    let rates: Vec<f64> = flag("--rates")
        .unwrap_or_else(|| "10,50,100,200".into())
        .split(',')
        .filter_map(|r| r.parse().ok())
        .collect();

    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .unwrap_or(3999);
    let mut server = Command::new("taskset")
        .args([
            "-c",
            "0",
            &wsx,
            "serve",
            "--listen",
            &format!("127.0.0.1:{port}"),
            "--api-key",
            KEY,
        ])
        .args([
            "--max-connections",
            &(n + 100).to_string(),
            "--ping-interval",
            "off",
        ])
        .stderr(Stdio::piped())
        .spawn()
        .expect("start wsx serve");
    let mut lines = BufReader::new(server.stderr.take().expect("stderr")).lines();
    while let Some(Ok(l)) = lines.next() {
        if l.contains("open http://") {
            break;
        }
    }
    std::thread::spawn(move || for _ in lines {});
    let host = format!("127.0.0.1:{port}");

    // Subscribers.
    let t0 = Instant::now();
    let mut receipts = Vec::with_capacity(n);
    let (ready_tx, mut ready_rx) = tokio::sync::mpsc::unbounded_channel::<()>();
    let gate = Arc::new(tokio::sync::Semaphore::new(64));
    for i in 0..n {
        let got: Arc<Mutex<Vec<(u64, Instant)>>> = Arc::new(Mutex::new(Vec::new()));
        receipts.push(got.clone());
        let ready = ready_tx.clone();
        let host = host.clone();
        let permit = gate.clone().acquire_owned().await.expect("semaphore");
        tokio::spawn(async move {
            let src = std::net::SocketAddr::from(([127, 0, 0, 2 + (i % 50) as u8], 0));
            let sock = tokio::net::TcpSocket::new_v4().expect("socket");
            sock.bind(src).expect("bind source address");
            let tcp = sock
                .connect(([127, 0, 0, 1], port).into())
                .await
                .expect("connect");
            tcp.set_nodelay(true).ok();
            let (mut ws, _) = wsx::client_handshake(
                tcp,
                &host,
                "/connection/websocket",
                &wsx::ClientConfig::default(),
            )
            .await
            .expect("handshake");
            ws.send(wsx::Message::text(r#"{"id":1,"connect":{}}"#))
                .await
                .expect("connect");
            ws.send(wsx::Message::text(
                r#"{"id":2,"subscribe":{"channel":"fanout"}}"#,
            ))
            .await
            .expect("subscribe");
            let mut replies = 0;
            let mut permit = Some(permit);
            while let Some(Ok(msg)) = ws.next().await {
                if let wsx::Message::Text(t) = msg {
                    let s = t.as_str();
                    if s.starts_with("{\"push\"") {
                        if let Some(off) = offset_of(s) {
                            let now = Instant::now();
                            got.lock()
                                .unwrap_or_else(|e| e.into_inner())
                                .push((off, now));
                        }
                    } else {
                        replies += 1;
                        if replies == 2 {
                            permit.take();
                            let _ = ready.send(());
                        }
                    }
                }
            }
        });
    }
    for _ in 0..n {
        ready_rx.recv().await;
    }
    eprintln!(
        "{n} subscribers ready in {:.1}s",
        t0.elapsed().as_secs_f64()
    );
    let rss = std::fs::read_to_string(format!("/proc/{}/status", server.id()))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse::<u64>().ok())
        })
        .unwrap_or(0);

    let mut publisher = TcpStream::connect(&host).await.expect("publisher");
    publisher.set_nodelay(true).ok();
    let mut published: Vec<Instant> = vec![Instant::now()]; // index = offset (1-based)
    println!(
        "\nfan-out: {n} subscribers on one channel; server RSS with them open: {} MiB\n",
        rss / 1024
    );
    println!("| publishes/s | deliveries/s | delivered | per-delivery p50 ms | p99 ms | last-receipt p50 ms | p99 ms |");
    println!("|---|---|---|---|---|---|---|");
    for rate in rates {
        let first = published.len() as u64;
        let count = (rate * seconds).round() as usize;
        let period = Duration::from_secs_f64(1.0 / rate);
        let start = Instant::now();
        for k in 0..count {
            let at = start + period * k as u32;
            tokio::time::sleep_until(at.into()).await;
            published.push(Instant::now());
            let body = format!("{{\"channel\":\"fanout\",\"data\":{{\"k\":{k}}}}}");
            if !post(&mut publisher, &host, &body).await {
                eprintln!("publish failed");
                break;
            }
        }
        let last = published.len() as u64 - 1;
        // Let deliveries drain (bounded).
        tokio::time::sleep(Duration::from_millis(1500)).await;
        let mut per_delivery = Vec::new();
        let mut last_receipt = vec![0f64; (last - first + 1) as usize];
        let mut delivered = 0usize;
        let mut first_receipt = None::<Instant>;
        let mut last_seen = None::<Instant>;
        for r in &receipts {
            let mut v = r.lock().unwrap_or_else(|e| e.into_inner());
            for (off, t) in v.drain(..) {
                if off < first || off > last {
                    continue;
                }
                let lat = t.duration_since(published[off as usize]).as_secs_f64() * 1000.0;
                per_delivery.push(lat);
                let slot = &mut last_receipt[(off - first) as usize];
                *slot = slot.max(lat);
                delivered += 1;
                first_receipt = Some(first_receipt.map_or(t, |f: Instant| f.min(t)));
                last_seen = Some(last_seen.map_or(t, |l: Instant| l.max(t)));
            }
        }
        let span = match (first_receipt, last_seen) {
            (Some(a), Some(b)) => b.duration_since(a).as_secs_f64().max(1e-3),
            _ => 1.0,
        };
        println!(
            "| {rate:.0} | {:.0} | {delivered}/{} | {:.2} | {:.2} | {:.2} | {:.2} |",
            delivered as f64 / span,
            n * count,
            pct(&mut per_delivery, 0.5),
            pct(&mut per_delivery, 0.99),
            pct(&mut last_receipt, 0.5),
            pct(&mut last_receipt, 0.99),
        );
    }
    let _ = server.kill();
    let _ = server.wait();
}
