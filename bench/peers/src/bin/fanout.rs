//! Fan-out benchmark: N WebSocket subscribers on one channel of `wsx serve`, one
//! publisher at a fixed rate through the HTTP API; latency from publish to each receipt
//! and to the last receipt of each publication; rates stepped up to find where latency
//! climbs. Server pinned to core 0, this process to core 1 (by scripts/bench).
//!
//! fanout WSX_BIN [--subscribers N] [--seconds S] [--rates 10,50,100,...] [--floor]
//!        [--protocol native|stomp|socketio|socketio-polling] [--publisher api|stomp]
//!        [--stomp-broker WS_URL] [--socketio-server node] [--uws-pubsub PATH] [--floor-uring]
//!
//! `--protocol sse` / `poll`: native-protocol subscribers over server-sent events
//! (`/connection/sse`, read as an HTTP/1.0 close-delimited stream) or long-polling
//! (`/connection/poll`), commands by POST.
//!
//! `--protocol socketio`: the subscribers are Socket.IO clients over WebSocket
//! (`/socket.io/`, `subscribe("fanout")` with an ack, `publication` events);
//! `socketio-polling`: the same over HTTP long-polling (a GET connection and a POST
//! connection each). `--socketio-server node`: instead of `wsx serve`, the Node.js
//! `socket.io` server of `bench/peers/socketio_server.mjs` (npm, pinned the same way),
//! whose `POST /api/publish` does `io.to(channel).emit("publication", ...)`.
//! Every table row also has the server's CPU time per delivery (utime + stime of the
//! server process over the step).
//!
//! `--protocol stomp`: the subscribers speak STOMP 1.2 over WebSocket (`/stomp`,
//! `SUBSCRIBE /topic/fanout`). `--publisher stomp`: one STOMP client publishes (a `SEND`
//! with a receipt per publication, awaited as the HTTP API's response is).
//! `--stomp-broker ws://127.0.0.1:15674/ws`: no `wsx serve`; STOMP subscribers and a
//! STOMP publisher against that broker (RabbitMQ Web-STOMP, say, started and pinned by
//! the caller). Every publication's body carries its sequence number (`"o"`), so the
//! same latency accounting works for any broker.
//!
//! `--backplane redis://HOST:PORT`: two `wsx serve` nodes on that Redis: the
//! subscribers on one (core 0, as a single node), the HTTP API publisher on the other
//! (core 1, with this process and, by scripts/bench, Redis), so every publication
//! crosses the backplane (cross-node latency).
//!
//! `--uws-pubsub PATH` replaces `wsx serve` by uWebSockets' topics (`bench/uws/pubsub.cpp`
//! built by `bench/uws/build.sh`): the same subscribers and HTTP publisher, pinned the
//! same way.
//!
//! `--floor` replaces `wsx serve` by the loopback floor: a process (pinned the same way)
//! that holds N plain TCP connections and writes each pre-built push frame to all of
//! them in a loop, one `write` per connection: what one core's kernel costs for the
//! same fan-out, with no WebSocket server at all. The subscribers read it the same way.
//! `--floor-uring`: the same floor with its sends batched through io_uring (a
//! submission per 4,096 connections instead of a `write` each): what the syscalls
//! themselves cost of the floor.
//!
//! `--server-cores LIST`: `wsx serve` pinned to these cores instead of core 0 (`0,1`:
//! two event loops, one per core, the second shared with this client).
//!
//! `fanout --ratios FILE`: wsx's paired ratios to each other server of the runs in FILE
//! (each run after a line `### SERVER REP`).
//!
//! `FANOUT_LAST_RECEIPTS=FILE` appends each step's last receipts, one per publication
//! in publishing order, to FILE (`RATE ms ms ...`), then their first receipts (`first
//! RATE ms ms ...`): where a p99 comes from.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const KEY: &str = "fanout-bench-key-0123456789";

/// The middle value (the mean of the two middle ones for an even count).
fn median(v: &mut [f64]) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap_or(std::cmp::Ordering::Equal));
    match v.len() {
        0 => f64::NAN,
        n if n % 2 == 1 => v[n / 2],
        n => (v[n / 2 - 1] + v[n / 2]) / 2.0,
    }
}

fn pct(v: &mut [f64], p: f64) -> f64 {
    if v.is_empty() {
        return 0.0;
    }
    v.sort_by(|a, b| a.partial_cmp(b).unwrap_or(std::cmp::Ordering::Equal));
    v[((v.len() - 1) as f64 * p).round() as usize]
}

/// Parse `"offset":N` out of a pub push without a JSON parser.
fn offset_of(text: &str) -> Option<u64> {
    number_after(text, "\"offset\":")
}

/// The sequence number a publication's body carries (`{"k":K,"o":N}`).
fn seq_of(text: &str) -> Option<u64> {
    number_after(text, "\"o\":")
}

fn number_after(text: &str, key: &str) -> Option<u64> {
    let i = text.find(key)? + key.len();
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

/// A STOMP 1.2 client over WebSocket: CONNECT, then `SUBSCRIBE /topic/fanout` (with a
/// receipt) when `subscribe`; returns once the broker has confirmed.
async fn stomp_client(
    tcp: TcpStream,
    host: &str,
    path: &str,
    subscribe: bool,
) -> wsx::WebSocket<TcpStream> {
    let cfg = wsx::ClientConfig::default().subprotocols(["v12.stomp"]);
    let (mut ws, _) = wsx::client_handshake(tcp, host, path, &cfg)
        .await
        .expect("STOMP handshake");
    ws.send(wsx::Message::text(
        "CONNECT\naccept-version:1.2\nhost:/\nlogin:guest\npasscode:guest\nheart-beat:0,0\n\n\0",
    ))
    .await
    .expect("CONNECT");
    let want = if subscribe {
        ws.send(wsx::Message::text(
            "SUBSCRIBE\nid:0\ndestination:/topic/fanout\nreceipt:ready\n\n\0",
        ))
        .await
        .expect("SUBSCRIBE");
        "RECEIPT"
    } else {
        "CONNECTED"
    };
    while let Some(Ok(msg)) = ws.next().await {
        let bytes = match &msg {
            wsx::Message::Text(t) => t.as_str().as_bytes(),
            wsx::Message::Binary(b) => &b[..],
            _ => continue,
        };
        if bytes.starts_with(b"ERROR") {
            panic!("STOMP ERROR: {}", String::from_utf8_lossy(bytes));
        }
        if bytes.starts_with(want.as_bytes()) {
            break;
        }
    }
    ws
}

/// Publish one message with a STOMP `SEND` and wait for its receipt.
async fn stomp_publish(ws: &mut wsx::WebSocket<TcpStream>, k: usize, seq: usize) -> bool {
    let body = format!("{{\"k\":{k},\"o\":{seq}}}");
    let frame = format!(
        "SEND\ndestination:/topic/fanout\ncontent-type:application/json\nreceipt:{seq}\ncontent-length:{}\n\n{body}\0",
        body.len()
    );
    if ws.send(wsx::Message::text(frame)).await.is_err() {
        return false;
    }
    while let Some(Ok(msg)) = ws.next().await {
        if let wsx::Message::Text(t) = &msg {
            if t.as_str().starts_with("RECEIPT") {
                return true;
            }
            if t.as_str().starts_with("ERROR") {
                return false;
            }
        }
    }
    false
}

/// The floor's sender: accept `n` connections on `port`, then for each stdin line
/// `K OFFSET` write one push frame to every connection (one `write` each, or with
/// `uring` one io_uring submission per 4,096 sends) and answer `ok` on stdout.
fn floor_sender(port: u16, n: usize, uring: bool) {
    use std::io::Write;
    let listener = std::net::TcpListener::bind(("127.0.0.1", port)).expect("bind");
    eprintln!("floor: open http://127.0.0.1:{port}/");
    let mut socks = Vec::with_capacity(n);
    for _ in 0..n {
        let (s, _) = listener.accept().expect("accept");
        s.set_nodelay(true).ok();
        socks.push(s);
    }
    let mut ring = uring.then(|| io_uring::IoUring::new(RING as u32).expect("io_uring"));
    let stdin = std::io::stdin();
    let mut out = std::io::stdout();
    for line in stdin.lock().lines() {
        let Ok(line) = line else { break };
        let mut it = line.split_whitespace();
        let (Some(k), Some(off)) = (it.next(), it.next()) else {
            break;
        };
        let payload =
            format!("{{\"push\":{{\"channel\":\"fanout\",\"pub\":{{\"offset\":{off},\"data\":{{\"k\":{k}}}}}}}}}");
        let mut frame = vec![0x81, payload.len() as u8];
        frame.extend_from_slice(payload.as_bytes());
        match &mut ring {
            Some(ring) => send_all_uring(ring, &socks, &frame),
            None => {
                for s in &mut socks {
                    let _ = s.write_all(&frame);
                }
            }
        }
        let _ = writeln!(out, "ok");
        let _ = out.flush();
    }
}

/// Submissions queued at once by the io_uring floor.
const RING: usize = 4096;

/// `frame` to every socket through io_uring: a `Send` each, submitted `RING` at a time,
/// each batch awaited before the next.
fn send_all_uring(ring: &mut io_uring::IoUring, socks: &[std::net::TcpStream], frame: &[u8]) {
    use io_uring::{opcode, types};
    use std::os::fd::AsRawFd;
    for batch in socks.chunks(RING) {
        for (i, s) in batch.iter().enumerate() {
            let send =
                opcode::Send::new(types::Fd(s.as_raw_fd()), frame.as_ptr(), frame.len() as u32)
                    .build()
                    .user_data(i as u64);
            // SAFETY: `frame` and the sockets outlive the submission: it is awaited
            // below before this function returns.
            unsafe { ring.submission().push(&send) }.expect("room in the ring");
        }
        ring.submit_and_wait(batch.len()).expect("submit");
        let short = ring
            .completion()
            .filter(|c| c.result() != frame.len() as i32)
            .count();
        if short > 0 {
            eprintln!("floor-uring: {short} sends short or failed");
        }
    }
}

/// `fanout --ratios FILE`: FILE holds runs of this program, each after a line
/// `### SERVER REP` (as `scripts/bench --fanout` writes them); for each server beside
/// `wsx`, per rate, the median over repetitions of wsx's ratio to it (each ratio within
/// one repetition, whose runs were next to each other) and in how many wsx was at or
/// below it (at or above for deliveries per second).
fn ratios(text: &str) -> String {
    use std::collections::BTreeMap;
    use std::fmt::Write;
    // (server, rep, rate) -> the row's numbers.
    let mut rows: BTreeMap<(String, String, u64), Vec<f64>> = BTreeMap::new();
    let mut at: Option<(String, String)> = None;
    for line in text.lines() {
        if let Some(head) = line.strip_prefix("### ") {
            let mut it = head.split_whitespace();
            at = it.next().zip(it.next()).map(|(a, b)| (a.into(), b.into()));
            continue;
        }
        let Some((server, rep)) = at.as_ref().filter(|_| line.starts_with('|')) else {
            continue;
        };
        let cells: Vec<&str> = line
            .trim()
            .trim_matches('|')
            .split('|')
            .map(str::trim)
            .collect();
        let Some(Ok(rate)) = cells.first().map(|c| c.parse::<u64>()) else {
            continue;
        };
        if cells.len() < 8 {
            continue;
        }
        // rate, deliveries/s, delivered, pd p50, pd p99, last p50, last p99, server CPU
        let num: Vec<f64> = cells
            .iter()
            .map(|c| c.parse().unwrap_or(f64::NAN))
            .collect();
        rows.insert((server.clone(), rep.clone(), rate), num);
    }
    // (column, name, lower is better)
    let cols = [
        (6, "last-receipt p99", true),
        (5, "last-receipt p50", true),
        (3, "per-delivery p50", true),
        (7, "server CPU per delivery", true),
        (1, "deliveries/s", false),
    ];
    let mut servers: Vec<&String> = rows.keys().map(|k| &k.0).collect();
    servers.dedup();
    let mut rates: Vec<u64> = rows.keys().map(|k| k.2).collect();
    rates.sort();
    rates.dedup();
    let mut out = String::new();
    let _ = writeln!(
        out,
        "\nwsx / each server, paired within each repetition: median (repetitions where wsx was at or below; at or above for deliveries/s)\n"
    );
    let names: Vec<&str> = cols.iter().map(|c| c.1).collect();
    let _ = writeln!(out, "| server | publishes/s | {} |", names.join(" | "));
    let _ = writeln!(out, "|---|---|{}", "---|".repeat(cols.len()));
    for other in servers.iter().filter(|s| s.as_str() != "wsx") {
        for rate in &rates {
            let mut cells = Vec::new();
            for (col, _, lower) in cols {
                let mut r: Vec<f64> = rows
                    .iter()
                    .filter(|((s, _, k), _)| s == *other && k == rate)
                    .filter_map(|((_, rep, _), v)| {
                        let w = rows.get(&("wsx".to_string(), rep.clone(), *rate))?;
                        Some(w[col] / v[col])
                    })
                    .filter(|x| x.is_finite())
                    .collect();
                if r.is_empty() {
                    cells.push("-".to_string());
                    continue;
                }
                let ahead = r
                    .iter()
                    .filter(|x| if lower { **x <= 1.0 } else { **x >= 1.0 })
                    .count();
                let n = r.len();
                cells.push(format!("{:.2} ({ahead} of {n})", median(&mut r)));
            }
            let _ = writeln!(out, "| {other} | {rate} | {} |", cells.join(" | "));
        }
    }
    out
}

/// Receipts recorded so far by all subscribers, over all steps (the drain waits on it).
static RECEIVED: AtomicUsize = AtomicUsize::new(0);

/// A subscriber got publication `off` at `at`.
fn record(got: &Mutex<Vec<(u64, Instant)>>, off: u64, at: Instant) {
    got.lock()
        .unwrap_or_else(|e| e.into_inner())
        .push((off, at));
    RECEIVED.fetch_add(1, Ordering::Relaxed);
}

/// Read the floor's frames (unmasked, unfragmented, short) off a plain TCP stream.
async fn floor_reader(mut tcp: TcpStream, got: Arc<Mutex<Vec<(u64, Instant)>>>) {
    let mut buf = Vec::with_capacity(4096);
    let mut tmp = [0u8; 4096];
    loop {
        let Ok(n) = tcp.read(&mut tmp).await else {
            return;
        };
        if n == 0 {
            return;
        }
        let now = Instant::now();
        buf.extend_from_slice(&tmp[..n]);
        while buf.len() >= 2 && buf.len() >= 2 + buf[1] as usize {
            let len = buf[1] as usize;
            if let Some(off) = offset_of(&String::from_utf8_lossy(&buf[2..2 + len])) {
                record(&got, off, now);
            }
            buf.drain(..2 + len);
        }
    }
}

/// A native-protocol subscriber over server-sent events: connect and subscribe by
/// POST, pushes from the stream.
async fn sse_subscriber(
    mut stream: TcpStream,
    mut post: TcpStream,
    host: &str,
    got: Arc<Mutex<Vec<(u64, Instant)>>>,
    ready: impl FnOnce(),
) {
    let req = format!("GET /connection/sse HTTP/1.0\r\nHost: {host}\r\n\r\n");
    stream.write_all(req.as_bytes()).await.expect("SSE request");
    let mut ready = Some(ready);
    let mut buf = Vec::with_capacity(8192);
    let mut tmp = [0u8; 8192];
    let mut id: Option<String> = None;
    loop {
        let Ok(n) = stream.read(&mut tmp).await else {
            return;
        };
        if n == 0 {
            return;
        }
        let now = Instant::now();
        buf.extend_from_slice(&tmp[..n]);
        while let Some(i) = buf.iter().position(|&b| b == b'\n') {
            let line = String::from_utf8_lossy(&buf[..i]).into_owned();
            buf.drain(..=i);
            let Some(data) = line.strip_prefix("data: ") else {
                continue;
            };
            if id.is_none() {
                if let Some(s) = data
                    .split("\"session\":\"")
                    .nth(1)
                    .and_then(|r| r.split('"').next())
                {
                    let sid = s.to_string();
                    let body = "{\"id\":1,\"connect\":{}}\n{\"id\":2,\"subscribe\":{\"channel\":\"fanout\"}}";
                    http_call(
                        &mut post,
                        host,
                        "POST",
                        &format!("/connection/sse/{sid}"),
                        body.as_bytes(),
                    )
                    .await;
                    id = Some(sid);
                }
                continue;
            }
            if data.starts_with("{\"push\"") {
                if let Some(off) = offset_of(data) {
                    record(&got, off, now);
                }
            } else if data.contains("\"id\":2") {
                if let Some(r) = ready.take() {
                    r();
                }
            }
        }
    }
}

/// A native-protocol subscriber over long-polling.
async fn poll_subscriber(
    mut get: TcpStream,
    mut post: TcpStream,
    host: &str,
    got: Arc<Mutex<Vec<(u64, Instant)>>>,
    ready: impl FnOnce(),
) {
    let open = http_call(&mut post, host, "POST", "/connection/poll", b"")
        .await
        .expect("open");
    let open = String::from_utf8_lossy(&open).into_owned();
    let sid = open
        .split("\"session\":\"")
        .nth(1)
        .and_then(|r| r.split('"').next())
        .expect("session")
        .to_string();
    let target = format!("/connection/poll/{sid}");
    let body = "{\"id\":1,\"connect\":{}}\n{\"id\":2,\"subscribe\":{\"channel\":\"fanout\"}}";
    http_call(&mut post, host, "POST", &target, body.as_bytes())
        .await
        .expect("commands");
    let mut ready = Some(ready);
    while let Some(body) = http_call(&mut get, host, "GET", &target, b"").await {
        let now = Instant::now();
        let text = String::from_utf8_lossy(&body);
        // The array's items, split at each push object's start.
        for item in text.split("{\"push\"").skip(1) {
            if let Some(off) = offset_of(item) {
                record(&got, off, now);
            }
        }
        if text.contains("\"id\":2") {
            if let Some(r) = ready.take() {
                r();
            }
        }
    }
}

/// One HTTP/1.1 request on a kept-alive connection: the response body, if 200.
async fn http_call(
    conn: &mut TcpStream,
    host: &str,
    method: &str,
    target: &str,
    body: &[u8],
) -> Option<Vec<u8>> {
    let head = format!(
        "{method} {target} HTTP/1.1\r\nHost: {host}\r\nContent-Type: text/plain;charset=UTF-8\r\nContent-Length: {}\r\n\r\n",
        body.len()
    );
    conn.write_all(head.as_bytes()).await.ok()?;
    conn.write_all(body).await.ok()?;
    let mut buf = Vec::with_capacity(1024);
    let mut tmp = [0u8; 8192];
    loop {
        let n = conn.read(&mut tmp).await.ok()?;
        if n == 0 {
            return None;
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
                return head
                    .starts_with("http/1.1 2")
                    .then(|| buf[h + 4..h + 4 + len].to_vec());
            }
        }
    }
}

/// A Socket.IO subscriber over WebSocket: connect the main namespace, `subscribe` the
/// channel (acknowledged), then record each `publication` event; pings answered.
async fn sio_ws_subscriber(
    tcp: TcpStream,
    host: &str,
    got: Arc<Mutex<Vec<(u64, Instant)>>>,
    ready: impl FnOnce(),
) {
    let (mut ws, _) = wsx::client_handshake(
        tcp,
        host,
        "/socket.io/?EIO=4&transport=websocket",
        &wsx::ClientConfig::default(),
    )
    .await
    .expect("Socket.IO handshake");
    let mut ready = Some(ready);
    while let Some(Ok(msg)) = ws.next().await {
        let wsx::Message::Text(t) = msg else { continue };
        let s = t.as_str();
        if s == "2" {
            let _ = ws.send(wsx::Message::text("3")).await;
        } else if s.starts_with("42[\"publication\"") {
            if let Some(seq) = seq_of(s) {
                record(&got, seq, Instant::now());
            }
        } else if s.starts_with('0') {
            ws.send(wsx::Message::text("40")).await.expect("CONNECT");
        } else if s.starts_with("40") {
            ws.send(wsx::Message::text(r#"420["subscribe","fanout"]"#))
                .await
                .expect("subscribe");
        } else if s.starts_with("430") {
            if let Some(r) = ready.take() {
                r();
            }
        }
    }
}

/// A Socket.IO subscriber over HTTP long-polling.
async fn sio_polling_subscriber(
    mut get: TcpStream,
    mut post: TcpStream,
    host: &str,
    got: Arc<Mutex<Vec<(u64, Instant)>>>,
    ready: impl FnOnce(),
) {
    let open = http_call(
        &mut get,
        host,
        "GET",
        "/socket.io/?EIO=4&transport=polling",
        b"",
    )
    .await
    .expect("handshake");
    let open = String::from_utf8_lossy(&open);
    let sid = open
        .split("\"sid\":\"")
        .nth(1)
        .and_then(|r| r.split('"').next())
        .expect("sid")
        .to_string();
    let target = format!("/socket.io/?EIO=4&transport=polling&sid={sid}");
    http_call(&mut post, host, "POST", &target, b"40")
        .await
        .expect("CONNECT");
    http_call(
        &mut post,
        host,
        "POST",
        &target,
        br#"420["subscribe","fanout"]"#,
    )
    .await
    .expect("subscribe");
    let mut ready = Some(ready);
    while let Some(body) = http_call(&mut get, host, "GET", &target, b"").await {
        let now = Instant::now();
        for packet in body.split(|&b| b == 0x1e) {
            let s = String::from_utf8_lossy(packet);
            if s == "2" {
                if http_call(&mut post, host, "POST", &target, b"3")
                    .await
                    .is_none()
                {
                    return;
                }
            } else if s.starts_with("42[\"publication\"") {
                if let Some(seq) = seq_of(&s) {
                    record(&got, seq, now);
                }
            } else if s.starts_with("430") {
                if let Some(r) = ready.take() {
                    r();
                }
            }
        }
    }
}

/// The CPU time (user + system) a process has used so far.
fn cpu_time(pid: u32) -> Duration {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // The fields after the command name (which may hold spaces) end with ')'.
    let rest = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
    let f: Vec<u64> = rest
        .split_whitespace()
        .filter_map(|v| v.parse().ok())
        .collect();
    // utime and stime are fields 14 and 15 of the line: 11 and 12 after ')' (state is not a number).
    let ticks = f.get(10).copied().unwrap_or(0) + f.get(11).copied().unwrap_or(0);
    Duration::from_millis(ticks * 10)
}

// One thread, as the servers under test: a current-thread runtime (the multi-thread
// scheduler's one worker would delay some of the many subscribers one epoll turn wakes
// by tens of milliseconds, and that would show as the server's latency).
#[tokio::main(flavor = "current_thread")]
async fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.get(1).map(String::as_str) == Some("--ratios") {
        let path = args.get(2).expect("--ratios FILE");
        let text = std::fs::read_to_string(path).expect("read the runs");
        return print!("{}", ratios(&text));
    }
    if args.get(1).map(String::as_str) == Some("--floor-sender") {
        let port = args[2].parse().expect("port");
        let n = args[3].parse().expect("count");
        return floor_sender(port, n, false);
    }
    if args.get(1).map(String::as_str) == Some("--floor-uring-sender") {
        let port = args[2].parse().expect("port");
        let n = args[3].parse().expect("count");
        return floor_sender(port, n, true);
    }
    let uring = args.iter().any(|a| a == "--floor-uring");
    let floor = uring || args.iter().any(|a| a == "--floor");
    let value = |name: &str| {
        args.iter()
            .position(|a| a == name)
            .and_then(|i| args.get(i + 1))
            .cloned()
    };
    let broker = value("--stomp-broker");
    let stomp = broker.is_some() || value("--protocol").as_deref() == Some("stomp");
    let node_sio = value("--socketio-server").as_deref() == Some("node");
    let protocol = value("--protocol").unwrap_or_default();
    let sio_polling = protocol == "socketio-polling";
    let sio = node_sio || sio_polling || protocol == "socketio";
    let sse = protocol == "sse";
    let long_poll = protocol == "poll";
    let stomp_publisher = broker.is_some() || value("--publisher").as_deref() == Some("stomp");
    // The broker's host:port and WebSocket path.
    let (broker_host, broker_path) = match &broker {
        Some(url) => {
            let rest = url.strip_prefix("ws://").expect("ws:// broker URL");
            let (hp, path) = rest.split_once('/').unwrap_or((rest, ""));
            (Some(hp.to_string()), format!("/{path}"))
        }
        None => (None, "/stomp".to_string()),
    };
    let wsx = args
        .get(1)
        .cloned()
        .unwrap_or_else(|| "target/release/wsx".into());
    let backplane = value("--backplane");
    let uws_pubsub = value("--uws-pubsub");
    // `--deflate shared|own`: native subscribers offer permessage-deflate, asking the
    // server to reset its context after each message (shared: one compression per
    // publication for all) or not (own: each connection compresses with its context).
    let deflate = value("--deflate");
    let client_cfg = match deflate.as_deref() {
        Some("shared") => wsx::ClientConfig::default().deflate(Some(
            wsx::DeflateConfig::default().server_no_context_takeover(true),
        )),
        Some("own") => wsx::ClientConfig::default().deflate(Some(wsx::DeflateConfig::default())),
        _ => wsx::ClientConfig::default(),
    };
    // `--pad N`: N more bytes of (compressible) JSON text in each publication.
    let pad: usize = value("--pad").and_then(|v| v.parse().ok()).unwrap_or(0);
    let padding = if pad == 0 {
        String::new()
    } else {
        let words = "{\"price\":101.25,\"size\":300,\"side\":\"buy\"},";
        format!(
            ",\"pad\":\"{}\"",
            words.repeat(pad / words.len() + 1)[..pad].replace('"', "'")
        )
    };
    // `--server-cores 0,1`: `wsx serve` may run on these cores (its loops: one per
    // core, `--workers auto`); the single-core figures are the default, core 0.
    let server_cores = value("--server-cores").unwrap_or_else(|| "0".into());
    let node_args = |port: u16, core: &str| -> Vec<String> {
        let mut v: Vec<String> = [
            "-c",
            core,
            &wsx,
            "serve",
            "--listen",
            &format!("127.0.0.1:{port}"),
            "--api-key",
            KEY,
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        if let Some(b) = &backplane {
            v.extend(["--backplane".to_string(), b.clone()]);
        }
        v
    };
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

    let port = match &broker_host {
        Some(hp) => hp
            .rsplit(':')
            .next()
            .and_then(|p| p.parse().ok())
            .expect("broker port"),
        None => std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map(|a| a.port())
            .unwrap_or(3999),
    };
    let mut server = if broker.is_some() {
        // An external broker: a placeholder child so the code below stays one path.
        Command::new("sleep")
            .arg("infinity")
            .stderr(Stdio::piped())
            .spawn()
            .expect("sleep")
    } else if node_sio {
        let script = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("socketio_server.mjs");
        Command::new("taskset")
            .args(["-c", "0", "node"])
            .arg(script)
            .arg(port.to_string())
            .arg(KEY)
            .stderr(Stdio::piped())
            .spawn()
            .expect("start the Node.js socket.io server")
    } else if let Some(uws) = &uws_pubsub {
        Command::new("taskset")
            .args(["-c", "0", uws, &port.to_string()])
            .stderr(Stdio::piped())
            .spawn()
            .expect("start the uWebSockets pub/sub server")
    } else if floor {
        let me = std::env::current_exe().expect("own path");
        Command::new("taskset")
            .args(["-c", "0"])
            .arg(me)
            .args([
                if uring {
                    "--floor-uring-sender"
                } else {
                    "--floor-sender"
                },
                &port.to_string(),
                &n.to_string(),
            ])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start the floor sender")
    } else {
        Command::new("taskset")
            .args(node_args(port, &server_cores))
            .args([
                "--max-connections",
                &(n + 100).to_string(),
                "--ping-interval",
                "off",
                "--demo",
                "off",
                // Every subscriber that asks keeps its own context (--deflate own).
                "--max-deflate-contexts",
                &(n + 100).to_string(),
            ])
            .stderr(Stdio::piped())
            .spawn()
            .expect("start wsx serve")
    };
    let mut lines = BufReader::new(server.stderr.take().expect("stderr")).lines();
    while broker.is_none() {
        match lines.next() {
            Some(Ok(l)) if l.contains("open http://") => break,
            Some(Ok(_)) => {}
            _ => panic!("the server ended before listening"),
        }
    }
    std::thread::spawn(move || for _ in lines {});
    let host = format!("127.0.0.1:{port}");
    // With a backplane, the publisher's node: another process on the same Redis.
    let mut publisher_node = None;
    let publish_host = match &backplane {
        None => host.clone(),
        Some(_) => {
            let pport = std::net::TcpListener::bind("127.0.0.1:0")
                .and_then(|l| l.local_addr())
                .map(|a| a.port())
                .expect("a free port");
            let mut node = Command::new("taskset")
                // Beside the load generator: the subscribers' node has core 0 to
                // itself, as the single node has.
                .args(node_args(pport, "1"))
                .args(["--demo", "off"])
                .stderr(Stdio::piped())
                .spawn()
                .expect("start the publisher's node");
            let mut lines = BufReader::new(node.stderr.take().expect("stderr")).lines();
            loop {
                match lines.next() {
                    Some(Ok(l)) if l.contains("open http://") => break,
                    Some(Ok(_)) => {}
                    _ => panic!("the publisher's node ended before listening"),
                }
            }
            std::thread::spawn(move || for _ in lines {});
            publisher_node = Some(node);
            format!("127.0.0.1:{pport}")
        }
    };

    // Subscribers.
    let t0 = Instant::now();
    let mut receipts = Vec::with_capacity(n);
    let (ready_tx, mut ready_rx) = tokio::sync::mpsc::unbounded_channel::<()>();
    let gate = Arc::new(tokio::sync::Semaphore::new(64));
    for i in 0..n {
        let client_cfg = client_cfg.clone();
        let got: Arc<Mutex<Vec<(u64, Instant)>>> = Arc::new(Mutex::new(Vec::new()));
        receipts.push(got.clone());
        let ready = ready_tx.clone();
        let host = host.clone();
        let path = broker_path.clone();
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
            if floor {
                drop(permit);
                let _ = ready.send(());
                return floor_reader(tcp, got).await;
            }
            if sse || long_poll {
                let post = TcpStream::connect(("127.0.0.1", port))
                    .await
                    .expect("connect");
                post.set_nodelay(true).ok();
                let on_ready = move || {
                    drop(permit);
                    let _ = ready.send(());
                };
                return if sse {
                    sse_subscriber(tcp, post, &host, got, on_ready).await
                } else {
                    poll_subscriber(tcp, post, &host, got, on_ready).await
                };
            }
            if sio_polling {
                let post = TcpStream::connect(("127.0.0.1", port))
                    .await
                    .expect("connect");
                post.set_nodelay(true).ok();
                let on_ready = move || {
                    drop(permit);
                    let _ = ready.send(());
                };
                return sio_polling_subscriber(tcp, post, &host, got, on_ready).await;
            }
            if sio {
                let on_ready = move || {
                    drop(permit);
                    let _ = ready.send(());
                };
                return sio_ws_subscriber(tcp, &host, got, on_ready).await;
            }
            if stomp {
                let mut ws = stomp_client(tcp, &host, &path, true).await;
                drop(permit);
                let _ = ready.send(());
                while let Some(Ok(msg)) = ws.next().await {
                    let bytes = match &msg {
                        wsx::Message::Text(t) => t.as_str().as_bytes(),
                        wsx::Message::Binary(b) => &b[..],
                        _ => continue,
                    };
                    if bytes.starts_with(b"MESSAGE") {
                        if let Some(seq) = seq_of(&String::from_utf8_lossy(bytes)) {
                            record(&got, seq, Instant::now());
                        }
                    }
                }
                return;
            }
            let (mut ws, _) =
                wsx::client_handshake(tcp, &host, "/connection/websocket", &client_cfg)
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
                            record(&got, off, now);
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

    let mut stomp_pub = if stomp_publisher {
        let tcp = TcpStream::connect(&host).await.expect("STOMP publisher");
        tcp.set_nodelay(true).ok();
        Some(stomp_client(tcp, &host, &broker_path, false).await)
    } else {
        None
    };
    let mut publisher = if floor || stomp_publisher {
        None
    } else {
        let p = TcpStream::connect(&publish_host).await.expect("publisher");
        p.set_nodelay(true).ok();
        Some(p)
    };
    // The floor's answers, read by a thread: this runtime (one thread) must go on
    // reading the subscribers' sockets while the floor writes.
    let mut floor_io = floor.then(|| {
        let stdin = server.stdin.take().expect("floor stdin");
        let stdout = BufReader::new(server.stdout.take().expect("floor stdout"));
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        std::thread::spawn(move || {
            for line in stdout.lines() {
                if line.is_err() || tx.send(()).is_err() {
                    break;
                }
            }
        });
        (stdin, rx)
    });
    let mut published: Vec<Instant> = vec![Instant::now()]; // index = offset (1-based)
    let what = match (&broker, floor, stomp, stomp_publisher) {
        _ if uws_pubsub.is_some() => " of uWebSockets' topics (bench/uws/pubsub.cpp: the native protocol's connect, subscribe and pub push; HTTP publisher)".into(),
        _ if node_sio && sio_polling => " of the Node.js socket.io server, Socket.IO over HTTP long-polling (HTTP publisher)".into(),
        _ if node_sio => " of the Node.js socket.io server, Socket.IO over WebSocket (HTTP publisher)".into(),
        _ if sio_polling => " of wsx, Socket.IO over HTTP long-polling (HTTP API publisher)".into(),
        _ if sse => " of wsx, native protocol over server-sent events (HTTP API publisher)".into(),
        _ if long_poll => " of wsx, native protocol over long-polling (HTTP API publisher)".into(),
        _ if sio => " of wsx, Socket.IO over WebSocket (HTTP API publisher)".into(),
        (Some(url), ..) => format!(" of the STOMP broker at {url} (STOMP subscribers and publisher)"),
        (None, true, ..) => " floor (plain TCP, one write per connection, no server)".into(),
        (None, false, true, true) => " of wsx over STOMP (STOMP subscribers and publisher)".into(),
        (None, false, true, false) => " of wsx over STOMP (STOMP subscribers, HTTP API publisher)".into(),
        (None, false, false, _) if backplane.is_some() => " of wsx, native protocol, across two nodes on Redis (HTTP API publisher on the other node)".into(),
        (None, false, false, _) => " of wsx, native protocol (HTTP API publisher)".into(),
    };
    let rss = if broker.is_some() { 0 } else { rss };
    let what = match deflate.as_deref() {
        Some("shared") => format!("{what}, permessage-deflate without server context takeover"),
        Some("own") => format!("{what}, permessage-deflate with context takeover"),
        _ => what,
    };
    let what = if pad > 0 {
        format!("{what}, {pad} B padding")
    } else {
        what
    };
    println!(
        "\nfan-out{what}: {n} subscribers on one channel; server RSS with them open: {} MiB\n",
        rss / 1024
    );
    println!("| publishes/s | deliveries/s | delivered | per-delivery p50 ms | p99 ms | last-receipt p50 ms | p99 ms | server CPU µs/delivery | client CPU µs/delivery | first-receipt p50 ms |");
    println!("|---|---|---|---|---|---|---|---|---|---|");
    let server_pid = server.id();
    for rate in rates {
        let first = published.len() as u64;
        let cpu0 = cpu_time(server_pid);
        let client0 = cpu_time(std::process::id());
        let count = (rate * seconds).round() as usize;
        let period = Duration::from_secs_f64(1.0 / rate);
        let start = Instant::now();
        for k in 0..count {
            let at = start + period * k as u32;
            tokio::time::sleep_until(at.into()).await;
            published.push(Instant::now());
            let seq = published.len() - 1;
            let ok = match (&mut publisher, &mut floor_io) {
                _ if stomp_pub.is_some() => match &mut stomp_pub {
                    Some(ws) => stomp_publish(ws, k, seq).await,
                    None => false,
                },
                (Some(p), _) => {
                    let body = format!(
                        "{{\"channel\":\"fanout\",\"data\":{{\"k\":{k},\"o\":{seq}{padding}}}}}"
                    );
                    post(p, &publish_host, &body).await
                }
                (None, Some((stdin, stdout))) => {
                    use std::io::Write;
                    let off = published.len() - 1;
                    writeln!(stdin, "{k} {off}").is_ok()
                        && stdin.flush().is_ok()
                        && stdout.recv().await.is_some()
                }
                (None, None) => false,
            };
            if !ok {
                eprintln!("publish failed");
                break;
            }
        }
        let last = published.len() as u64 - 1;
        // Let deliveries drain: until every subscriber has every publication so far
        // (offsets 1..=last), or 10 s (what is still missing then counts as not delivered).
        let drain_until = Instant::now() + Duration::from_secs(10);
        while RECEIVED.load(Ordering::Relaxed) < n * last as usize && Instant::now() < drain_until {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let mut per_delivery = Vec::new();
        let mut last_receipt = vec![0f64; (last - first + 1) as usize];
        // Per publication, its first receipt: how long before its pass began.
        let mut first_of = vec![f64::MAX; (last - first + 1) as usize];
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
                let f = &mut first_of[(off - first) as usize];
                *f = f.min(lat);
                delivered += 1;
                first_receipt = Some(first_receipt.map_or(t, |f: Instant| f.min(t)));
                last_seen = Some(last_seen.map_or(t, |l: Instant| l.max(t)));
            }
        }
        let cpu = cpu_time(server_pid).saturating_sub(cpu0);
        let client_cpu = cpu_time(std::process::id()).saturating_sub(client0);
        let span = match (first_receipt, last_seen) {
            (Some(a), Some(b)) => b.duration_since(a).as_secs_f64().max(1e-3),
            _ => 1.0,
        };
        if let Ok(path) = std::env::var("FANOUT_LAST_RECEIPTS") {
            // Every publication's last receipt in publishing order, a line per step:
            // which publications make the p99 (at 2/s over 12 s it is their maximum).
            use std::io::Write;
            let line: Vec<String> = last_receipt.iter().map(|v| format!("{v:.1}")).collect();
            // One per publication, `-` for one nobody received.
            let firsts: Vec<String> = first_of
                .iter()
                .map(|v| {
                    if *v < f64::MAX {
                        format!("{v:.1}")
                    } else {
                        "-".into()
                    }
                })
                .collect();
            if let Ok(mut f) = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(path)
            {
                let _ = writeln!(f, "{rate:.0} {}", line.join(" "));
                let _ = writeln!(f, "first {rate:.0} {}", firsts.join(" "));
            }
        }
        first_of.retain(|f| *f < f64::MAX);
        println!(
            "| {rate:.0} | {:.0} | {delivered}/{} | {:.2} | {:.2} | {:.2} | {:.2} | {:.2} | {:.2} | {:.2} |",
            delivered as f64 / span,
            n * count,
            pct(&mut per_delivery, 0.5),
            pct(&mut per_delivery, 0.99),
            pct(&mut last_receipt, 0.5),
            pct(&mut last_receipt, 0.99),
            cpu.as_secs_f64() * 1e6 / delivered.max(1) as f64,
            client_cpu.as_secs_f64() * 1e6 / delivered.max(1) as f64,
            pct(&mut first_of, 0.5),
        );
    }
    let _ = server.kill();
    let _ = server.wait();
    if let Some(mut node) = publisher_node {
        let _ = node.kill();
        let _ = node.wait();
    }
}
