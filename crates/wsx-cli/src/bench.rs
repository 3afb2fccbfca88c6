//! `wsx bench URL`: a load generator for WebSocket echo servers.
//!
//! Each connection does the opening handshake with wsx, then drives the raw stream
//! itself: its frame is built and masked once, `depth` copies of it are kept in flight,
//! and replies are counted by parsing frame headers in place (payloads are skipped, not
//! copied). No allocation per message; round-trip times go to per-connection HDR
//! histograms merged at the end.

use std::collections::VecDeque;
use std::process::ExitCode;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use serde::Serialize;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use wsx::wsx_proto::frame::{FrameHeader, OpCode};
use wsx::{ClientConfig, Config};

use crate::units::{parse_duration, parse_size};

#[derive(clap::Args, Debug, Clone)]
pub struct BenchArgs {
    /// ws:// or wss:// URL of an echo endpoint.
    pub url: String,
    /// Connections.
    #[arg(short = 'c', long, default_value_t = 10)]
    pub connections: usize,
    /// Message payload size (e.g. 20, 1KiB, 64KiB).
    #[arg(short = 's', long, default_value = "20", value_parser = parse_size)]
    pub size: usize,
    /// Send binary messages instead of text.
    #[arg(long)]
    pub binary: bool,
    /// Messages in flight per connection.
    #[arg(long, default_value_t = 1)]
    pub depth: usize,
    /// Warm-up before measuring.
    #[arg(short = 'w', long, default_value = "1s", value_parser = parse_duration)]
    pub warmup: Duration,
    /// Measured duration (as in wrk, oha and hey).
    #[arg(short = 'd', long, default_value = "5s", value_parser = parse_duration)]
    pub duration: Duration,
    /// Target total rate in messages/s (default: as fast as the server answers).
    #[arg(long)]
    pub rate: Option<f64>,
    /// Connections opened per second.
    #[arg(long, default_value_t = 2000.0)]
    pub ramp: f64,
    /// Worker threads (default: one per core). With 1, a current-thread runtime: the
    /// multi-thread scheduler's one worker spills the connections one epoll turn wakes
    /// past its 256-slot local queue and delays them by tens of milliseconds, which
    /// would show as the server's tail latency.
    #[arg(long)]
    pub threads: Option<usize>,
    /// Accept any server certificate for wss:// (testing only).
    #[arg(long)]
    pub insecure: bool,
    /// Print the result as JSON on stdout.
    #[arg(long)]
    pub json: bool,
}

/// The final figures.
#[derive(Debug, Serialize)]
pub struct Report {
    pub url: String,
    pub connections: usize,
    pub size: usize,
    pub binary: bool,
    pub depth: usize,
    pub seconds: f64,
    pub messages: u64,
    pub messages_per_sec: f64,
    pub mb_per_sec: f64,
    pub rtt_us_p50: u64,
    pub rtt_us_p90: u64,
    pub rtt_us_p99: u64,
    pub rtt_us_max: u64,
    pub connect_errors: u64,
    pub protocol_errors: u64,
    pub bench_cpu_seconds: f64,
}

struct Shared {
    received: AtomicU64,
    connect_errors: AtomicU64,
    protocol_errors: AtomicU64,
}

struct Outcome {
    hist: Histogram<u64>,
    messages: u64,
}

pub fn main(args: BenchArgs) -> ExitCode {
    if args.connections == 0 || args.depth == 0 {
        eprintln!("wsx: --connections and --depth must be at least 1");
        return ExitCode::from(2);
    }
    let mut rt = match args.threads {
        Some(1) => tokio::runtime::Builder::new_current_thread(),
        Some(t) => {
            let mut b = tokio::runtime::Builder::new_multi_thread();
            b.worker_threads(t.max(1));
            b
        }
        None => tokio::runtime::Builder::new_multi_thread(),
    };
    let rt = match rt.enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("wsx: {e}");
            return ExitCode::FAILURE;
        }
    };
    let report = rt.block_on(run(args.clone()));
    if args.json {
        println!(
            "{}",
            serde_json::to_string_pretty(&report).unwrap_or_default()
        );
    } else {
        print_table(&report);
    }
    if report.messages == 0 {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}

fn print_table(r: &Report) {
    let kind = if r.binary { "binary" } else { "text" };
    println!(
        "wsx bench {}: {} connections, {} B {kind}, depth {}, {:.1} s measured",
        r.url, r.connections, r.size, r.depth, r.seconds
    );
    println!("  messages/s       {:>12.0}", r.messages_per_sec);
    println!("  MB/s (echoed)    {:>12.2}", r.mb_per_sec);
    println!(
        "  round trip (µs)  p50 {}  p90 {}  p99 {}  max {}",
        r.rtt_us_p50, r.rtt_us_p90, r.rtt_us_p99, r.rtt_us_max
    );
    println!("  connect errors   {:>12}", r.connect_errors);
    println!("  protocol errors  {:>12}", r.protocol_errors);
    println!(
        "  bench CPU        {:>12.2} s ({:.0}% of one core)",
        r.bench_cpu_seconds,
        100.0 * r.bench_cpu_seconds / r.seconds.max(1e-9)
    );
}

/// This process's CPU time (user + system), from /proc/self/stat.
pub fn cpu_seconds() -> f64 {
    let Ok(stat) = std::fs::read_to_string("/proc/self/stat") else {
        return 0.0;
    };
    // Fields after the command name (which may contain spaces) start after ')'.
    let rest = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    // utime and stime are fields 14 and 15 of the whole line: 11 and 12 here.
    (ticks(11) + ticks(12)) / 100.0
}

async fn run(args: BenchArgs) -> Report {
    let shared = Arc::new(Shared {
        received: AtomicU64::new(0),
        connect_errors: AtomicU64::new(0),
        protocol_errors: AtomicU64::new(0),
    });
    let progress = indicatif::ProgressBar::new_spinner();
    progress.set_draw_target(indicatif::ProgressDrawTarget::stderr());
    progress.set_message("connecting");

    // Open the connections at the ramp rate.
    let mut cfg = ClientConfig::default().protocol(
        Config::default()
            .max_message_size(usize::MAX >> 1)
            .max_frame_size(usize::MAX >> 1),
    );
    cfg.danger_accept_invalid_certs = args.insecure;
    let cfg = Arc::new(cfg);
    let gap = Duration::from_secs_f64(1.0 / args.ramp.max(1.0));
    let mut handles = Vec::with_capacity(args.connections);
    let (ready_tx, ready_rx) = tokio::sync::watch::channel::<Option<(Instant, Instant)>>(None);
    for i in 0..args.connections {
        let (conn_args, cfg, shared, ready) =
            (args.clone(), cfg.clone(), shared.clone(), ready_rx.clone());
        handles.push(tokio::spawn(async move {
            connection(i, conn_args, cfg, shared, ready).await
        }));
        if i + 1 < args.connections {
            tokio::time::sleep(gap).await;
        }
        progress.set_message(format!("connecting {}/{}", i + 1, args.connections));
        progress.tick();
    }
    let start = Instant::now() + args.warmup;
    let end = start + args.duration;
    let _ = ready_tx.send(Some((start, end)));
    // The CPU time at the start of the measured window, once it starts.
    let mut cpu_at_start: Option<f64> = None;
    // Progress: current rate every 250 ms until the end.
    let mut last = (Instant::now(), shared.received.load(Ordering::Relaxed));
    while Instant::now() < end {
        tokio::time::sleep(Duration::from_millis(250)).await;
        if shared.connect_errors.load(Ordering::Relaxed) as usize >= args.connections {
            // Every connection failed (the error was printed): nothing to wait for.
            break;
        }
        let now = Instant::now();
        if cpu_at_start.is_none() && now >= start {
            cpu_at_start = Some(cpu_seconds());
            if !std::io::IsTerminal::is_terminal(&std::io::stderr()) {
                // A marker for scripts that sample the server's CPU over this window.
                eprintln!("wsx bench: measuring");
            }
        }
        let n = shared.received.load(Ordering::Relaxed);
        let rate = (n - last.1) as f64 / now.duration_since(last.0).as_secs_f64();
        let phase = if now < start { "warm-up" } else { "measuring" };
        progress.set_message(format!("{phase}: {rate:.0} msgs/s"));
        progress.tick();
        last = (now, n);
    }
    let cpu = cpu_seconds() - cpu_at_start.unwrap_or_else(cpu_seconds);
    progress.finish_and_clear();
    let mut hist = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3)
        .unwrap_or_else(|_| Histogram::new(3).unwrap_or_else(|_| unreachable!()));
    let mut messages = 0;
    for h in handles {
        if let Ok(Some(o)) = h.await {
            let _ = hist.add(&o.hist);
            messages += o.messages;
        }
    }
    let seconds = args.duration.as_secs_f64();
    Report {
        url: args.url.clone(),
        connections: args.connections,
        size: args.size,
        binary: args.binary,
        depth: args.depth,
        seconds,
        messages,
        messages_per_sec: messages as f64 / seconds,
        mb_per_sec: messages as f64 * args.size as f64 / seconds / 1e6,
        rtt_us_p50: hist.value_at_quantile(0.50),
        rtt_us_p90: hist.value_at_quantile(0.90),
        rtt_us_p99: hist.value_at_quantile(0.99),
        rtt_us_max: hist.max(),
        connect_errors: shared.connect_errors.load(Ordering::Relaxed),
        protocol_errors: shared.protocol_errors.load(Ordering::Relaxed),
        bench_cpu_seconds: cpu,
    }
}

/// Build one client frame, masked with a key of this connection.
fn build_frame(size: usize, binary: bool, seed: usize) -> Vec<u8> {
    let opcode = if binary { OpCode::Binary } else { OpCode::Text };
    let key = [0x5a ^ seed as u8, 0x3c, 0xa5 ^ (seed >> 8) as u8, 0x0f];
    let header = FrameHeader {
        fin: true,
        rsv1: false,
        rsv2: false,
        rsv3: false,
        opcode,
        mask: Some(key),
        payload_len: size as u64,
    };
    let mut h = [0u8; 14];
    let n = header.encode(&mut h);
    let mut frame = h[..n].to_vec();
    let start = frame.len();
    frame.extend((0..size).map(|i| b'a' + (i % 26) as u8));
    wsx::wsx_proto::mask::apply_mask(&mut frame[start..], key, 0);
    frame
}

async fn connection(
    i: usize,
    args: BenchArgs,
    cfg: Arc<ClientConfig>,
    shared: Arc<Shared>,
    mut ready: tokio::sync::watch::Receiver<Option<(Instant, Instant)>>,
) -> Option<Outcome> {
    let (ws, _) = match wsx::connect(&args.url, &cfg).await {
        Ok(ok) => ok,
        Err(e) => {
            if shared.connect_errors.fetch_add(1, Ordering::Relaxed) == 0 {
                eprintln!("wsx bench: connect failed: {e}");
            }
            return None;
        }
    };
    let (mut io, pending) = ws.into_inner();
    let frame = build_frame(args.size, args.binary, i);
    let batch = frame.repeat(args.depth);
    let mut hist = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).ok()?;
    let mut sent_at: VecDeque<Instant> = VecDeque::with_capacity(args.depth);
    let mut buf = vec![0u8; (64 * 1024).max(args.size.min(1 << 20) + 14)];
    let mut have = pending.len().min(buf.len());
    buf[..have].copy_from_slice(&pending[..have]);
    let mut skip = 0usize; // payload bytes of the current frame still to skip
    let mut messages = 0u64;

    // Wait for every connection to be open.
    let (start, end) = loop {
        if let Some(t) = *ready.borrow_and_update() {
            break t;
        }
        if ready.changed().await.is_err() {
            return None;
        }
    };
    let period = args
        .rate
        .map(|r| Duration::from_secs_f64(args.connections as f64 / r.max(1e-9)));
    let mut next_send = Instant::now();

    // Fill the pipeline.
    let first = if period.is_some() { 1 } else { args.depth };
    for _ in 0..first {
        sent_at.push_back(Instant::now());
    }
    if io.write_all(&batch[..first * frame.len()]).await.is_err() {
        shared.protocol_errors.fetch_add(1, Ordering::Relaxed);
        return None;
    }
    loop {
        // Parse what we have.
        let mut pos = 0;
        let mut done = 0usize;
        loop {
            if skip > 0 {
                let n = skip.min(have - pos);
                skip -= n;
                pos += n;
                if skip > 0 {
                    break;
                }
                continue;
            }
            match FrameHeader::parse(&buf[pos..have]) {
                Ok(Some((h, n))) => {
                    pos += n;
                    skip = h.payload_len as usize;
                    match h.opcode {
                        OpCode::Text | OpCode::Binary | OpCode::Continuation if h.fin => done += 1,
                        OpCode::Text
                        | OpCode::Binary
                        | OpCode::Continuation
                        | OpCode::Ping
                        | OpCode::Pong => {}
                        OpCode::Close => {
                            shared.protocol_errors.fetch_add(1, Ordering::Relaxed);
                            return Some(Outcome { hist, messages });
                        }
                    }
                }
                Ok(None) => break,
                Err(_) => {
                    shared.protocol_errors.fetch_add(1, Ordering::Relaxed);
                    return Some(Outcome { hist, messages });
                }
            }
        }
        buf.copy_within(pos..have, 0);
        have -= pos;
        let now = Instant::now();
        if done > 0 {
            shared.received.fetch_add(done as u64, Ordering::Relaxed);
            for _ in 0..done {
                if let Some(t) = sent_at.pop_front() {
                    if t >= start && now < end {
                        let _ = hist.record(now.duration_since(t).as_micros().max(1) as u64);
                        messages += 1;
                    }
                }
            }
            if now >= end {
                // Polite end: a close frame; do not wait for the reply.
                let close = [0x88u8, 0x82, 0, 0, 0, 0, 0x03, 0xe8];
                let _ = io.write_all(&close).await;
                let _ = io.shutdown().await;
                return Some(Outcome { hist, messages });
            }
            // Refill: one new message per reply (or on the rate schedule).
            let n = match period {
                None => done,
                Some(p) => {
                    next_send += p;
                    if next_send > now {
                        tokio::time::sleep_until(next_send.into()).await;
                    }
                    1
                }
            };
            let t = Instant::now();
            for _ in 0..n {
                sent_at.push_back(t);
            }
            if io.write_all(&batch[..n * frame.len()]).await.is_err() {
                shared.protocol_errors.fetch_add(1, Ordering::Relaxed);
                return Some(Outcome { hist, messages });
            }
        }
        if have == buf.len() {
            // A header longer than the buffer cannot happen (14 bytes); stay safe.
            have = 0;
        }
        match io.read(&mut buf[have..]).await {
            Ok(0) | Err(_) => {
                shared.protocol_errors.fetch_add(1, Ordering::Relaxed);
                return Some(Outcome { hist, messages });
            }
            Ok(n) => have += n,
        }
    }
}
