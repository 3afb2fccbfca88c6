//! The side-by-side benchmark behind `scripts/bench`: every server of the matrix, each
//! point repeated, servers alternated within a repetition, server and load generator
//! pinned to different cores; medians, ratios (also paired within each repetition),
//! server CPU split into user and system time per message, idle memory; JSON and a PNG.
//!
//! bench-matrix WSX_BIN PEER_BIN OUT_DIR [--quick] [--reps N] [--duration SECS]
//!              [--warmup SECS] [--depth N] [--idle N] [--sizes 20,1024] [--conns 10,100]
//!              [--uws DIR] [--servers wsx,wsx-serve,...] [--idle-paths /connection/websocket,...]
//!
//! `--idle-paths`: idle memory of `wsx serve`'s other WebSocket endpoints too (the hub's
//! front-ends: `/connection/websocket`, `/stomp`, ...), measured as `/echo` is.
//! Servers: `wsx` (the library's echo in `echo-peer`), `wsx-loop` (the same echo on
//! `wsx::event_loop`: the handshake on tokio, the connection a slot of the loop), `wsx-serve` (`wsx serve`'s `/echo`,
//! through its HTTP stack and limits), `fastwebsockets`, `tungstenite`, `raw` (TCP echo),
//! `raw-epoll` and `raw-uring` (the same TCP echo on one thread's epoll or io_uring: the
//! kernel's part of an echo, with no server code),
//! and `uws` (uWebSockets' `EchoServer` example, `DIR/uws-echo` as `bench/uws/build.sh`
//! makes it) when `--uws` is given.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde::Serialize;

const SERVERS: [&str; 9] = [
    "wsx",
    "wsx-loop",
    "wsx-serve",
    "fastwebsockets",
    "tungstenite",
    "raw",
    "raw-epoll",
    "raw-uring",
    "uws",
];

/// The pairs whose per-repetition ratios are printed (first / second).
const PAIRS: [(&str, &str); 9] = [
    ("wsx-loop", "uws"),
    ("wsx-loop", "wsx"),
    ("wsx", "fastwebsockets"),
    ("wsx", "tungstenite"),
    ("wsx", "uws"),
    ("wsx-serve", "uws"),
    ("wsx-serve", "wsx"),
    // What no code of a server's own can pass: the loop alone, on epoll and io_uring.
    ("raw-epoll", "uws"),
    ("raw-uring", "uws"),
];

#[derive(Debug, Clone, Serialize)]
struct Run {
    server: String,
    size: usize,
    connections: usize,
    rep: usize,
    messages_per_sec: f64,
    rtt_us_p50: u64,
    rtt_us_p99: u64,
    server_cpu_seconds: f64,
    /// The server's CPU time in its own code (user) and in the kernel (system).
    server_user_seconds: f64,
    server_sys_seconds: f64,
    seconds: f64,
    errors: u64,
}

#[derive(Debug, Clone, Serialize)]
struct Point {
    server: String,
    size: usize,
    connections: usize,
    messages_per_sec: f64,
    rtt_us_p50: u64,
    rtt_us_p99: u64,
    server_cpu_percent: f64,
    messages_per_server_cpu_second: f64,
    /// The server's user-space CPU per message: what its own code costs (all servers make
    /// the same syscalls per message, so the kernel's share is the loopback's).
    user_ns_per_message: f64,
    sys_ns_per_message: f64,
}

#[derive(Debug, Clone, Serialize)]
struct Idle {
    server: String,
    connections: usize,
    rss_before_kib: u64,
    rss_after_kib: u64,
    bytes_per_connection: f64,
}

/// Clock ticks per second of /proc/PID/stat (USER_HZ, 100 on Linux).
const CLK_TCK: f64 = 100.0;

/// A process's (user, system) CPU seconds.
fn proc_cpu_seconds(pid: u32) -> (f64, f64) {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return (0.0, 0.0);
    };
    let rest = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
    let f: Vec<&str> = rest.split_whitespace().collect();
    let t = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    (t(11) / CLK_TCK, t(12) / CLK_TCK)
}

fn proc_rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        })
        .unwrap_or(0)
}

struct Server {
    child: Child,
    port: u16,
    /// The echo endpoint's path.
    path: &'static str,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// How to start each server: the binaries it needs.
struct Bins {
    wsx: String,
    peer: String,
    uws: Option<String>,
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

/// Start `server` pinned to core 0; returns once it listens.
fn start_server(bins: &Bins, server: &str) -> Server {
    let (mut cmd, ready): (Command, &str) = match server {
        "wsx-serve" | "uws" => {
            // A port free on 127.0.0.1 may still be taken on another loopback address
            // by a client socket of the previous run (in TIME_WAIT), which stops a
            // server that listens on every address: try again with another port.
            for _ in 0..10 {
                let port = free_port();
                let mut c = Command::new("taskset");
                let (ready, on_stdout) = if server == "uws" {
                    let dir = bins.uws.as_deref().expect("--uws DIR");
                    c.args(["-c", "0", &format!("{dir}/uws-echo"), &port.to_string()])
                        .stdout(Stdio::piped());
                    ("Listening on port", true)
                } else {
                    c.args(["-c", "0", &bins.wsx, "serve", "--listen"])
                        .arg(format!("127.0.0.1:{port}"))
                        .args(["--demo", "off", "--max-connections", "100000"])
                        .args(["--max-message-size", "64MiB", "--ping-interval", "off"])
                        .stderr(Stdio::piped());
                    ("open http://", false)
                };
                if let Some(s) = wait_ready(c, port, ready, on_stdout) {
                    return s;
                }
            }
            panic!("{server} did not start");
        }
        other => {
            let mut c = Command::new("taskset");
            c.args(["-c", "0", &bins.peer, other, "0"])
                .stdout(Stdio::piped());
            (c, "listening ")
        }
    };
    let mut child = cmd.spawn().expect("start echo-peer");
    let mut line = String::new();
    BufReader::new(child.stdout.take().expect("stdout"))
        .read_line(&mut line)
        .expect("read port");
    let port = line
        .trim()
        .strip_prefix(ready)
        .and_then(|p| p.parse().ok())
        .expect("port line");
    Server {
        child,
        port,
        path: "/",
    }
}

/// Spawn `cmd` and wait for a line containing `ready` on its stdout (or stderr); the
/// rest of that output is drained by a thread. `None` if it ended first.
fn wait_ready(mut cmd: Command, port: u16, ready: &str, stdout: bool) -> Option<Server> {
    let mut child = cmd.spawn().expect("start the server");
    let out: Box<dyn std::io::Read + Send> = if stdout {
        Box::new(child.stdout.take().expect("stdout"))
    } else {
        Box::new(child.stderr.take().expect("stderr"))
    };
    let mut lines = BufReader::new(out).lines();
    loop {
        match lines.next() {
            Some(Ok(l)) if l.contains(ready) => break,
            Some(Ok(_)) => {}
            _ => {
                let _ = child.wait();
                return None;
            }
        }
    }
    std::thread::spawn(move || for _ in lines {});
    let path = if ready.starts_with("open") {
        "/echo"
    } else {
        "/"
    };
    Some(Server { child, port, path })
}

#[allow(clippy::too_many_arguments)]
fn run_point(
    bins: &Bins,
    server: &str,
    size: usize,
    conns: usize,
    depth: usize,
    warmup: f64,
    duration: f64,
    rep: usize,
) -> Run {
    let s = start_server(bins, server);
    let pid = s.child.id();
    let url = format!("ws://127.0.0.1:{}{}", s.port, s.path);
    let bench = Command::new("taskset")
        .args(["-c", "1", &bins.wsx, "bench", &url])
        .args([
            "-c",
            &conns.to_string(),
            "-s",
            &size.to_string(),
            "--depth",
            &depth.to_string(),
        ])
        .args([
            "-w",
            &format!("{warmup}s"),
            "-d",
            &format!("{duration}s"),
            "--threads",
            "1",
            "--binary",
            "--json",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start wsx bench");
    // Sample the server's CPU over the measured window only: wsx bench marks its start.
    let mut bench = bench;
    let mut err = BufReader::new(bench.stderr.take().expect("stderr"));
    let mut line = String::new();
    while err.read_line(&mut line).map(|n| n > 0).unwrap_or(false) && !line.contains("measuring") {
        line.clear();
    }
    let cpu0 = proc_cpu_seconds(pid);
    let t0 = Instant::now();
    std::thread::sleep(Duration::from_secs_f64(duration * 0.9));
    let cpu1 = proc_cpu_seconds(pid);
    let window = t0.elapsed().as_secs_f64();
    let scale = duration / window.max(1e-9);
    let (user, sys) = ((cpu1.0 - cpu0.0) * scale, (cpu1.1 - cpu0.1) * scale);
    let out = bench.wait_with_output().expect("wsx bench output");
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
    Run {
        server: server.to_string(),
        size,
        connections: conns,
        rep,
        messages_per_sec: v["messages_per_sec"].as_f64().unwrap_or(0.0),
        rtt_us_p50: v["rtt_us_p50"].as_u64().unwrap_or(0),
        rtt_us_p99: v["rtt_us_p99"].as_u64().unwrap_or(0),
        server_cpu_seconds: user + sys,
        server_user_seconds: user,
        server_sys_seconds: sys,
        seconds: duration,
        errors: v["connect_errors"].as_u64().unwrap_or(0)
            + v["protocol_errors"].as_u64().unwrap_or(0),
    }
}

impl Run {
    fn messages(&self) -> f64 {
        self.messages_per_sec * self.seconds
    }
}

/// `a / b`, or 0 when there is nothing to divide by.
fn ratio(a: f64, b: f64) -> f64 {
    if b > 0.0 {
        a / b
    } else {
        0.0
    }
}

fn ns_per_message(cpu_seconds: f64, r: &Run) -> f64 {
    ratio(cpu_seconds * 1e9, r.messages())
}

/// `first`'s ratio to `peer` within each repetition (the two ran next to each other, so slow
/// drifts of a shared machine cancel): the median of those ratios, and in how many
/// repetitions wsx came out ahead. `value` picks what is compared.
fn paired(
    runs: &[Run],
    first: &str,
    peer: &str,
    size: usize,
    c: usize,
    value: fn(&Run) -> f64,
) -> (f64, usize, usize) {
    let pick = |server: &str, rep: usize| {
        runs.iter()
            .find(|r| r.server == server && r.size == size && r.connections == c && r.rep == rep)
            .map(value)
    };
    let ratios: Vec<f64> = (0..)
        .map_while(|rep| Some((pick(first, rep)?, pick(peer, rep)?)))
        .filter(|(_, b)| *b > 0.0)
        .map(|(a, b)| a / b)
        .collect();
    let wins = ratios.iter().filter(|r| **r >= 1.0).count();
    (median(ratios.clone()), wins, ratios.len())
}

fn messages_per_cpu_second(r: &Run) -> f64 {
    ratio(r.messages(), r.server_cpu_seconds)
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap_or(std::cmp::Ordering::Equal));
    match v.len() {
        0 => 0.0,
        n if n % 2 == 1 => v[n / 2],
        n => (v[n / 2 - 1] + v[n / 2]) / 2.0,
    }
}

/// Open `n` idle WebSockets to the server (at `path` instead of its own, if given) and
/// measure its RSS growth.
fn idle_memory(bins: &Bins, server: &str, n: usize, at: Option<&str>) -> Idle {
    let mut s = start_server(bins, server);
    if let Some(p) = at {
        s.path = Box::leak(p.to_string().into_boxed_str());
    }
    let pid = s.child.id();
    std::thread::sleep(Duration::from_millis(300));
    let before = proc_rss_kib(pid);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .expect("runtime");
    let (port, path) = (s.port, s.path);
    let held = rt.block_on(async move {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut held = Vec::with_capacity(n);
        for i in 0..n {
            // Spread over 127.0.0.x sources so ephemeral ports never run short.
            let src = std::net::SocketAddr::from(([127, 0, 0, 2 + (i % 50) as u8], 0));
            let sock = tokio::net::TcpSocket::new_v4().expect("socket");
            if sock.bind(src).is_err() {
                continue;
            }
            let Ok(mut tcp) = sock.connect(([127, 0, 0, 1], port).into()).await else { continue };
            let req = format!("GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n");
            if tcp.write_all(req.as_bytes()).await.is_err() {
                continue;
            }
            let mut buf = [0u8; 512];
            let mut got = Vec::new();
            while !got.windows(4).any(|w| w == b"\r\n\r\n") {
                match tcp.read(&mut buf).await {
                    Ok(0) | Err(_) => break,
                    Ok(k) => got.extend_from_slice(&buf[..k]),
                }
            }
            if got.starts_with(b"HTTP/1.1 101") {
                held.push(tcp);
            }
        }
        held
    });
    std::thread::sleep(Duration::from_secs(1));
    let after = proc_rss_kib(pid);
    let count = held.len();
    drop(held);
    drop(rt);
    Idle {
        server: match at {
            Some(p) => format!("{server} {p}"),
            None => server.to_string(),
        },
        connections: count,
        rss_before_kib: before,
        rss_after_kib: after,
        bytes_per_connection: (after.saturating_sub(before) * 1024) as f64 / count.max(1) as f64,
    }
}

fn chart(
    servers: &[&str],
    points: &[Point],
    sizes: &[usize],
    conns: &[usize],
    path: &str,
) -> Result<(), Box<dyn std::error::Error>> {
    use plotters::prelude::*;
    let font = [
        "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf",
        "/usr/share/fonts/truetype/liberation/LiberationSans-Regular.ttf",
    ]
    .iter()
    .find_map(|p| std::fs::read(p).ok())
    .ok_or("no TTF font found (apt-get install fonts-dejavu-core)")?;
    let font: &'static [u8] = Box::leak(font.into_boxed_slice());
    plotters::style::register_font("sans-serif", FontStyle::Normal, font)
        .map_err(|_| "bad font")?;
    let root = BitMapBackend::new(path, (1400, 1000)).into_drawing_area();
    root.fill(&WHITE)?;
    let root = root.titled(
        "Echo throughput: messages/s by connections (median of repetitions)",
        ("sans-serif", 26),
    )?;
    let areas = root.split_evenly((2, 2));
    let colors = [
        RGBColor(47, 111, 222),
        RGBColor(214, 69, 69),
        RGBColor(31, 157, 85),
        RGBColor(120, 120, 120),
        RGBColor(230, 140, 20),
        RGBColor(140, 60, 170),
    ];
    for (area, size) in areas.iter().zip(sizes) {
        let max = points
            .iter()
            .filter(|p| p.size == *size)
            .map(|p| p.messages_per_sec)
            .fold(1.0, f64::max)
            * 1.1;
        let mut c = ChartBuilder::on(area)
            .caption(format!("{size} B messages"), ("sans-serif", 20))
            .margin(15)
            .margin_right(45)
            .x_label_area_size(35)
            .y_label_area_size(70)
            .build_cartesian_2d(0usize..conns.len() - 1, 0.0..max)?;
        c.configure_mesh()
            .x_labels(conns.len())
            .x_label_formatter(&|i| {
                conns
                    .get(*i)
                    .map(|c| format!("{c} conns"))
                    .unwrap_or_default()
            })
            .y_label_formatter(&|v| format!("{:.0}k", v / 1000.0))
            .draw()?;
        for (si, server) in servers.iter().enumerate() {
            let color = colors[si % colors.len()];
            let series: Vec<(usize, f64)> = conns
                .iter()
                .enumerate()
                .filter_map(|(i, c)| {
                    points
                        .iter()
                        .find(|p| p.server == *server && p.size == *size && p.connections == *c)
                        .map(|p| (i, p.messages_per_sec))
                })
                .collect();
            c.draw_series(LineSeries::new(series.clone(), color.stroke_width(3)))?
                .label(*server)
                .legend(move |(x, y)| {
                    PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(3))
                });
            c.draw_series(
                series
                    .iter()
                    .map(|(x, y)| Circle::new((*x, *y), 4, color.filled())),
            )?;
        }
        c.configure_series_labels()
            .background_style(WHITE.mix(0.8))
            .border_style(BLACK)
            .position(SeriesLabelPosition::LowerRight)
            .draw()?;
    }
    root.present()?;
    Ok(())
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.len() < 4 {
        eprintln!("usage: bench-matrix WSX_BIN PEER_BIN OUT_DIR [--quick] [--reps N] [--duration S] [--warmup S] [--depth N] [--idle N] [--sizes A,B] [--conns A,B] [--uws DIR] [--servers A,B]");
        std::process::exit(2);
    }
    let text = |name: &str| {
        args.iter()
            .position(|a| a == name)
            .and_then(|i| args.get(i + 1))
            .cloned()
    };
    let bins = Bins {
        wsx: args[1].clone(),
        peer: args[2].clone(),
        uws: text("--uws"),
    };
    let out = &args[3];
    let flag = |name: &str| text(name).and_then(|v| v.parse::<f64>().ok());
    let quick = args.iter().any(|a| a == "--quick");
    let reps = flag("--reps")
        .map(|v| v as usize)
        .unwrap_or(if quick { 1 } else { 5 });
    let duration = flag("--duration").unwrap_or(if quick { 1.0 } else { 2.0 });
    let warmup = flag("--warmup").unwrap_or(0.5);
    let depth = flag("--depth").map(|v| v as usize).unwrap_or(1);
    let idle_n = flag("--idle")
        .map(|v| v as usize)
        .unwrap_or(if quick { 1000 } else { 10_000 });
    let list = |name: &str, default: &[usize]| -> Vec<usize> {
        text(name)
            .map(|v| v.split(',').filter_map(|x| x.parse().ok()).collect())
            .unwrap_or_else(|| default.to_vec())
    };
    let sizes = list("--sizes", &[20, 1024, 16 * 1024, 64 * 1024]);
    let conns = list("--conns", &[10, 100, 500]);
    let chosen = text("--servers");
    let servers: Vec<&str> = SERVERS
        .iter()
        .copied()
        .filter(|s| match &chosen {
            Some(list) => list.split(',').any(|c| c == *s),
            None => true,
        })
        .filter(|s| *s != "uws" || bins.uws.is_some())
        .collect();
    if bins.uws.is_none() {
        println!(
            "(uWebSockets skipped: no --uws DIR; scripts/bench passes it when UWS_DIR is set)"
        );
    }
    std::fs::create_dir_all(out).expect("out dir");

    let mut runs = Vec::new();
    for &size in &sizes {
        for &c in &conns {
            for rep in 0..reps {
                // Alternate the order of servers between repetitions.
                let mut order = servers.clone();
                order.rotate_left(rep % servers.len());
                for server in order {
                    let r = run_point(&bins, server, size, c, depth, warmup, duration, rep);
                    eprintln!(
                        "{:>14} {:>6} B {:>4} conns rep {rep}: {:>10.0} msgs/s, p50 {} µs, p99 {} µs, server CPU {:.2}s",
                        server, size, c, r.messages_per_sec, r.rtt_us_p50, r.rtt_us_p99, r.server_cpu_seconds
                    );
                    runs.push(r);
                }
            }
        }
    }
    let mut points = Vec::new();
    for &size in &sizes {
        for &c in &conns {
            for &server in &servers {
                let rs: Vec<&Run> = runs
                    .iter()
                    .filter(|r| r.server == server && r.size == size && r.connections == c)
                    .collect();
                let mps = median(rs.iter().map(|r| r.messages_per_sec).collect());
                let cpu = median(
                    rs.iter()
                        .map(|r| r.server_cpu_seconds / r.seconds)
                        .collect(),
                );
                points.push(Point {
                    server: server.into(),
                    size,
                    connections: c,
                    messages_per_sec: mps,
                    rtt_us_p50: median(rs.iter().map(|r| r.rtt_us_p50 as f64).collect()) as u64,
                    rtt_us_p99: median(rs.iter().map(|r| r.rtt_us_p99 as f64).collect()) as u64,
                    server_cpu_percent: cpu * 100.0,
                    messages_per_server_cpu_second: ratio(mps, cpu),
                    user_ns_per_message: median(
                        rs.iter()
                            .map(|r| ns_per_message(r.server_user_seconds, r))
                            .collect(),
                    ),
                    sys_ns_per_message: median(
                        rs.iter()
                            .map(|r| ns_per_message(r.server_sys_seconds, r))
                            .collect(),
                    ),
                });
            }
        }
    }
    let mut idle: Vec<Idle> = servers
        .iter()
        .filter(|s| !s.starts_with("raw"))
        .map(|s| idle_memory(&bins, s, idle_n, None))
        .collect();
    for path in text("--idle-paths").iter().flat_map(|v| v.split(',')) {
        idle.push(idle_memory(&bins, "wsx-serve", idle_n, Some(path)));
    }

    // The tables.
    let get = |s: &str, size: usize, c: usize| {
        points
            .iter()
            .find(|p| p.server == s && p.size == size && p.connections == c)
    };
    let row = |size: usize, c: usize, f: &dyn Fn(&Point) -> String| {
        let cells: Vec<String> = servers
            .iter()
            .map(|s| get(s, size, c).map(f).unwrap_or_default())
            .collect();
        println!("| {size} | {c} | {} |", cells.join(" | "));
    };
    let head = |what: &str| {
        println!("\n{what}\n");
        println!("| size | conns | {} |", servers.join(" | "));
        println!("|---|---|{}", "---|".repeat(servers.len()));
    };
    head(&format!(
        "messages/s (median of {reps}); depth {depth}, {duration}s per run"
    ));
    for &size in &sizes {
        for &c in &conns {
            row(size, c, &|p| format!("{:.0}", p.messages_per_sec));
        }
    }
    head("messages per server CPU-second (server CPU %)");
    for &size in &sizes {
        for &c in &conns {
            row(size, c, &|p| {
                format!(
                    "{:.0} ({:.0}%)",
                    p.messages_per_server_cpu_second, p.server_cpu_percent
                )
            });
        }
    }
    head("round trip p50 / p99 µs (median of repetitions)");
    for &size in &sizes {
        for &c in &conns {
            row(size, c, &|p| format!("{} / {}", p.rtt_us_p50, p.rtt_us_p99));
        }
    }
    head("server CPU per message: its own code (user) / the kernel (system), ns");
    for &size in &sizes {
        for &c in &conns {
            row(size, c, &|p| {
                format!("{:.0} / {:.0}", p.user_ns_per_message, p.sys_ns_per_message)
            });
        }
    }
    let pairs_here: Vec<(&str, &str)> = PAIRS
        .iter()
        .copied()
        .filter(|(a, b)| servers.contains(a) && servers.contains(b))
        .collect();
    println!("\nratios within each repetition (the two ran next to each other, so slow drifts of a shared machine cancel): median of the per-repetition ratios, and in how many repetitions the first was ahead\n");
    let names: Vec<String> = pairs_here
        .iter()
        .flat_map(|(a, b)| [format!("msgs/s {a}/{b}"), format!("per CPU-s {a}/{b}")])
        .collect();
    println!("| size | conns | {} |", names.join(" | "));
    println!("|---|---|{}", "---|".repeat(names.len()));
    let mut pairs = Vec::new();
    for &size in &sizes {
        for &c in &conns {
            let mut cells = Vec::new();
            for (a, b) in &pairs_here {
                for (what, value) in [
                    (
                        "messages_per_sec",
                        (|r: &Run| r.messages_per_sec) as fn(&Run) -> f64,
                    ),
                    ("messages_per_cpu_second", messages_per_cpu_second),
                ] {
                    let (r, wins, n) = paired(&runs, a, b, size, c, value);
                    pairs.push(serde_json::json!({ "size": size, "connections": c, "first": a, "peer": b, "measure": what, "median_ratio": r, "first_ahead": wins, "repetitions": n }));
                    cells.push(format!("{r:.2} ({wins}/{n})"));
                }
            }
            println!("| {size} | {c} | {} |", cells.join(" | "));
        }
    }
    println!("\nidle memory ({} connections each)\n", idle_n);
    println!("| server | connections | RSS before | RSS after | bytes per connection |");
    println!("|---|---|---|---|---|");
    for i in &idle {
        println!(
            "| {} | {} | {} KiB | {} KiB | {:.0} |",
            i.server, i.connections, i.rss_before_kib, i.rss_after_kib, i.bytes_per_connection
        );
    }
    let json = serde_json::json!({ "depth": depth, "reps": reps, "duration": duration, "runs": runs, "points": points, "paired": pairs, "idle": idle });
    let jpath = format!("{out}/results.json");
    std::fs::write(
        &jpath,
        serde_json::to_string_pretty(&json).unwrap_or_default(),
    )
    .expect("write json");
    let ppath = format!("{out}/matrix.png");
    match chart(&servers, &points, &sizes, &conns, &ppath) {
        Ok(()) => println!("\nwrote {jpath} and {ppath}"),
        Err(e) => println!("\nwrote {jpath}; chart failed: {e}"),
    }
}
