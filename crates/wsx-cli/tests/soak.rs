//! A bounded soak of the Redis backplane: three `wsx serve` nodes on one Redis (with
//! persistence), 3,000 native subscribers spread over the nodes and ten channels, an
//! HTTP API publisher on every node; in the middle Redis restarts, then one node is
//! killed and started again. Subscribers behave as clients do: on any drop they
//! reconnect (to the next node when theirs is down) and resubscribe recovering from the
//! last offset seen. At the end every subscriber's stream is checked whole: each
//! publication of its channel exactly once, in order (counted, not sampled).
#![allow(clippy::unwrap_used)]

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use serde_json::{json, Value};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};
use wsx::{ClientConfig, Message};

mod common;

const KEY: &str = "soak-test-key-0123456789abc";
const SUBSCRIBERS: usize = 3000;
const CHANNELS: usize = 10;

use common::free_port;

async fn wait_for_line(child: &mut Child, stderr: bool, marker: &str) {
    let out: Box<dyn tokio::io::AsyncRead + Unpin + Send> = if stderr {
        Box::new(child.stderr.take().unwrap())
    } else {
        Box::new(child.stdout.take().unwrap())
    };
    let mut lines = BufReader::new(out).lines();
    let found = tokio::time::timeout(Duration::from_secs(20), async {
        while let Some(line) = lines.next_line().await.unwrap() {
            if line.contains(marker) {
                return true;
            }
        }
        false
    })
    .await;
    assert_eq!(found, Ok(true), "no `{marker}` line");
    tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
}

async fn redis(port: u16, dir: &str) -> Child {
    let p = port.to_string();
    common::redis_with(&[
        "--port",
        &p,
        "--appendonly",
        "yes",
        "--appendfsync",
        "always",
        "--dir",
        dir,
    ])
    .await
}

async fn node(port: u16, redis_port: u16, config: &str) -> Child {
    node_with(port, redis_port, config, &[]).await
}

async fn node_with(port: u16, redis_port: u16, config: &str, extra: &[&str]) -> Child {
    let mut child = Command::new(common::WSX)
        .args([
            "serve",
            "--listen",
            &format!("127.0.0.1:{port}"),
            "--log-format",
            "text",
        ])
        .args(["--backplane", &format!("redis://127.0.0.1:{redis_port}")])
        .args(["--api-key", KEY, "--demo", "off", "--config", config])
        .args(["--max-connections", "5000", "--redis-timeout", "1s"])
        .args(extra)
        .env("RUST_LOG", "info")
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    wait_for_line(&mut child, true, "open http://").await;
    child
}

/// `POST /api/METHOD`: the result, or `None` on any failure.
async fn api(port: u16, method: &str, body: Value) -> Option<Value> {
    let body = body.to_string();
    let req = format!(
        "POST /api/{method} HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: apikey {KEY}\r\nConnection: close\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    let resp = tokio::time::timeout(Duration::from_secs(3), async {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut tcp = tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .ok()?;
        tcp.write_all(req.as_bytes()).await.ok()?;
        let mut out = String::new();
        tcp.read_to_string(&mut out).await.ok()?;
        Some(out)
    })
    .await
    .ok()??;
    if !resp.starts_with("HTTP/1.1 200") {
        return None;
    }
    let v: Value = serde_json::from_str(resp.split("\r\n\r\n").nth(1)?).ok()?;
    Some(v["result"].clone())
}

#[derive(Default)]
struct Tally {
    /// Publications seen out of order (a gap or a duplicate).
    violations: AtomicUsize,
    /// Resubscriptions that could not recover.
    unrecovered: AtomicUsize,
    /// Reconnections.
    reconnects: AtomicUsize,
    /// Subscribers subscribed at least once.
    ready: AtomicUsize,
    /// When each `disconnect` push (a drain's, a shutdown's) arrived.
    departures: Mutex<Vec<Instant>>,
    first_problem: Mutex<Option<String>>,
}

impl Tally {
    fn problem(&self, what: String) {
        let mut p = self.first_problem.lock().unwrap();
        p.get_or_insert(what);
    }
}

/// One subscriber: (its last offset, epoch) once done.
async fn subscriber(
    id: usize,
    ports: Arc<Vec<u16>>,
    tally: Arc<Tally>,
    finals: Arc<Mutex<Option<Vec<u64>>>>,
) -> u64 {
    let channel = format!("soak:{}", id % CHANNELS);
    let mut node = id % ports.len();
    let mut last: Option<(u64, String)> = None;
    let mut counted = false;
    loop {
        let target = finals.lock().unwrap().as_ref().map(|f| f[id % CHANNELS]);
        let seen = last.as_ref().map_or(0, |(o, _)| *o);
        if target.is_some_and(|t| seen >= t) {
            return seen;
        }
        let url = format!("ws://127.0.0.1:{}/connection/websocket", ports[node]);
        let Ok(Ok((mut ws, _))) = tokio::time::timeout(
            Duration::from_secs(3),
            wsx::connect(&url, &ClientConfig::default()),
        )
        .await
        else {
            node = (node + 1) % ports.len();
            tokio::time::sleep(Duration::from_millis(100 + (id % 200) as u64)).await;
            continue;
        };
        let mut sub = json!({ "channel": channel });
        if let Some((o, e)) = &last {
            sub = json!({ "channel": channel, "recover": true, "offset": o, "epoch": e });
        }
        let hello = ws
            .send(Message::text(r#"{"id":1,"connect":{}}"#))
            .await
            .is_ok()
            && ws
                .send(Message::text(
                    json!({ "id": 2, "subscribe": sub }).to_string(),
                ))
                .await
                .is_ok();
        if !hello {
            node = (node + 1) % ports.len();
            continue;
        }
        loop {
            let msg = tokio::time::timeout(Duration::from_secs(2), ws.next()).await;
            let text = match msg {
                Ok(Some(Ok(Message::Text(t)))) => t.as_str().to_string(),
                Ok(Some(Ok(_))) => continue,
                // Quiet: see whether the run is over.
                Err(_) => {
                    let target = finals.lock().unwrap().as_ref().map(|f| f[id % CHANNELS]);
                    let seen = last.as_ref().map_or(0, |(o, _)| *o);
                    if target.is_some_and(|t| seen >= t) {
                        return seen;
                    }
                    continue;
                }
                _ => break,
            };
            let v: Value = serde_json::from_str(&text).unwrap();
            if v["id"] == 2 {
                if v.get("error").is_some() {
                    break;
                }
                let r = &v["subscribe"];
                if last.is_some() && r["recovered"] != true {
                    tally.unrecovered.fetch_add(1, Ordering::Relaxed);
                    tally.problem(format!("subscriber {id}: not recovered: {v}"));
                }
                if last.is_none() {
                    last = Some((
                        r["offset"].as_u64().unwrap_or(0),
                        r["epoch"].as_str().unwrap_or_default().to_string(),
                    ));
                }
                if !counted {
                    counted = true;
                    tally.ready.fetch_add(1, Ordering::Relaxed);
                }
            } else if let Some(p) = v["push"].get("pub") {
                let off = p["offset"].as_u64().unwrap();
                let (prev, epoch) = last.clone().unwrap_or((0, String::new()));
                if off != prev + 1 {
                    tally.violations.fetch_add(1, Ordering::Relaxed);
                    tally.problem(format!(
                        "subscriber {id} on {channel}: offset {off} after {prev}"
                    ));
                }
                last = Some((off.max(prev), epoch));
            } else if v["push"].get("disconnect").is_some() {
                tally.departures.lock().unwrap().push(Instant::now());
                break;
            }
        }
        tally.reconnects.fetch_add(1, Ordering::Relaxed);
        node = (node + 1) % ports.len();
        tokio::time::sleep(Duration::from_millis(50 + (id % 100) as u64)).await;
    }
}

/// A run's subscribers: spawned over `ports`, each on the node `id % ports.len()`.
struct Crowd {
    tally: Arc<Tally>,
    finals: Arc<Mutex<Option<Vec<u64>>>>,
    subs: Vec<tokio::task::JoinHandle<u64>>,
}

impl Crowd {
    /// `n` subscribers, once every one is subscribed.
    async fn ready(n: usize, ports: &[u16]) -> Crowd {
        let ports = Arc::new(ports.to_vec());
        let tally = Arc::new(Tally::default());
        let finals: Arc<Mutex<Option<Vec<u64>>>> = Arc::new(Mutex::new(None));
        let subs = (0..n)
            .map(|id| tokio::spawn(subscriber(id, ports.clone(), tally.clone(), finals.clone())))
            .collect();
        let started = Instant::now();
        while tally.ready.load(Ordering::Relaxed) < n {
            assert!(
                started.elapsed() < Duration::from_secs(60),
                "subscribers not ready: {}",
                tally.ready.load(Ordering::Relaxed)
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        Crowd {
            tally,
            finals,
            subs,
        }
    }

    /// Tell the subscribers where each channel's stream ended (asking the node at
    /// `port`), wait for each to have all of its channel's publications in order, and
    /// check that none saw a gap or a duplicate or failed to recover. At least
    /// `accepted` publications must be in the streams. Returns their total.
    async fn check(self, port: u16, accepted: u64) -> u64 {
        let mut end = Vec::new();
        for c in 0..CHANNELS {
            let h = api(
                port,
                "history",
                json!({ "channel": format!("soak:{c}"), "limit": 0 }),
            )
            .await
            .expect("history");
            end.push(h["offset"].as_u64().unwrap());
        }
        let total: u64 = end.iter().sum();
        // Every accepted publication has its offset; a few more may (a reply lost while
        // Redis restarted, or late past the publisher's timeout, after the script ran).
        assert!(
            total >= accepted,
            "{total} in the streams, {accepted} accepted"
        );
        *self.finals.lock().unwrap() = Some(end.clone());
        let deadline = Instant::now() + Duration::from_secs(90);
        let mut short = 0;
        for (id, s) in self.subs.into_iter().enumerate() {
            let left = deadline.saturating_duration_since(Instant::now());
            match tokio::time::timeout(left, s).await {
                Ok(Ok(last)) => assert_eq!(last, end[id % CHANNELS], "subscriber {id}"),
                _ => short += 1,
            }
        }
        let tally = &self.tally;
        let problem = tally.first_problem.lock().unwrap().clone();
        assert_eq!(
            short, 0,
            "subscribers that did not catch up; first problem: {problem:?}"
        );
        assert_eq!(tally.violations.load(Ordering::Relaxed), 0, "{problem:?}");
        assert_eq!(tally.unrecovered.load(Ordering::Relaxed), 0, "{problem:?}");
        total
    }
}

/// Publishers through the HTTP API of each node in `ports`, one every 20 ms each over
/// the channels, until `stop`; counts the accepted ones (a failed publish is not in any
/// stream).
fn publishers(
    ports: &[u16],
    stop: Arc<AtomicBool>,
    published: Arc<AtomicU64>,
) -> Vec<tokio::task::JoinHandle<()>> {
    let n = ports.len();
    ports
        .iter()
        .enumerate()
        .map(|(i, &port)| {
            let (stop, published) = (stop.clone(), published.clone());
            tokio::spawn(async move {
                let mut k = i;
                while !stop.load(Ordering::Relaxed) {
                    let ch = format!("soak:{}", k % CHANNELS);
                    if api(
                        port,
                        "publish",
                        json!({ "channel": ch, "data": { "k": k } }),
                    )
                    .await
                    .is_some()
                    {
                        published.fetch_add(1, Ordering::Relaxed);
                    }
                    k += n;
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            })
        })
        .collect()
}

/// A directory for a run, with the `soak` namespace's config file in it.
fn run_dir(name: &str) -> (std::path::PathBuf, String) {
    let dir = std::env::temp_dir().join(format!("wsx-{name}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let config = dir.join("namespaces.toml");
    std::fs::write(
        &config,
        "[namespaces.soak]\nhistory_size = 10000\nhistory_ttl = \"10m\"\n",
    )
    .unwrap();
    let config = config.display().to_string();
    (dir, config)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_nodes_3000_subscribers_through_a_redis_restart_and_a_node_restart_lose_nothing() {
    let (dir, config) = run_dir("soak");
    let data = dir.display().to_string();
    let redis_port = free_port();
    let mut redis_server = redis(redis_port, &data).await;
    let ports: Vec<u16> = (0..3).map(|_| free_port()).collect();
    let mut nodes = Vec::new();
    for &p in &ports {
        nodes.push(node(p, redis_port, &config).await);
    }
    let crowd = Crowd::ready(SUBSCRIBERS, &ports).await;
    let tally = crowd.tally.clone();
    // Publishers on every node for 15 s.
    let stop = Arc::new(AtomicBool::new(false));
    let published = Arc::new(AtomicU64::new(0));
    let pubs = publishers(&ports, stop.clone(), published.clone());
    // The schedule: Redis restarts at 4 s (SHUTDOWN, so its log is complete), node 1 is
    // killed at 9 s and back at 11 s, publishing stops at 15 s.
    tokio::time::sleep(Duration::from_secs(4)).await;
    {
        let _ = redis_cli(redis_port, &["shutdown"]).await;
        let _ = redis_server.wait().await;
        tokio::time::sleep(Duration::from_millis(500)).await;
        redis_server = redis(redis_port, &data).await;
    }
    tokio::time::sleep(Duration::from_secs(5)).await;
    nodes[1].kill().await.unwrap();
    tokio::time::sleep(Duration::from_secs(2)).await;
    nodes[1] = node(ports[1], redis_port, &config).await;
    tokio::time::sleep(Duration::from_secs(4)).await;
    stop.store(true, Ordering::Relaxed);
    for p in pubs {
        p.await.unwrap();
    }
    let total = crowd
        .check(ports[0], published.load(Ordering::Relaxed))
        .await;
    assert!(total > 300, "publishing went on: {total}");
    let reconnects = tally.reconnects.load(Ordering::Relaxed);
    assert!(
        reconnects >= SUBSCRIBERS / 3,
        "the killed node's subscribers moved: {reconnects}"
    );
    eprintln!("soak: {total} publications, {SUBSCRIBERS} subscribers each got all of their channel's, {reconnects} reconnections");
    drop(redis_server);
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn draining_a_node_while_publishing_moves_its_subscribers_spread_over_the_window_with_no_gap()
{
    const N: usize = 600;
    let window = Duration::from_secs(3);
    let (dir, config) = run_dir("drain");
    let redis_port = free_port();
    let redis_server = redis(redis_port, &dir.display().to_string()).await;
    let ports: Vec<u16> = (0..2).map(|_| free_port()).collect();
    let node_a = node_with(ports[0], redis_port, &config, &[]).await;
    let mut node_b = node_with(ports[1], redis_port, &config, &["--drain-window", "3s"]).await;
    let crowd = Crowd::ready(N, &ports).await;
    let tally = crowd.tally.clone();
    let stop = Arc::new(AtomicBool::new(false));
    let published = Arc::new(AtomicU64::new(0));
    // Publishing goes on through node A while B drains.
    let pubs = publishers(&ports[..1], stop.clone(), published.clone());
    tokio::time::sleep(Duration::from_millis(500)).await;
    let began = Instant::now();
    let drained = api(ports[1], "drain", json!({})).await.expect("drain");
    assert_eq!(drained["sessions"], N / 2, "{drained}");
    let exited = tokio::time::timeout(Duration::from_secs(15), node_b.wait())
        .await
        .expect("the drained node exits")
        .unwrap();
    assert!(exited.success(), "{exited}");
    let took = began.elapsed();
    tokio::time::sleep(Duration::from_millis(500)).await;
    stop.store(true, Ordering::Relaxed);
    for p in pubs {
        p.await.unwrap();
    }
    let total = crowd
        .check(ports[0], published.load(Ordering::Relaxed))
        .await;
    let mut departures: Vec<Duration> = tally
        .departures
        .lock()
        .unwrap()
        .iter()
        .map(|t| t.duration_since(began))
        .collect();
    departures.sort();
    assert_eq!(departures.len(), N / 2, "every subscriber of B was told");
    // Spread: each tenth of the window saw about a tenth of the departures.
    let tenths: Vec<usize> = (0..10u32)
        .map(|t| {
            departures
                .iter()
                .filter(|d| **d >= window * t / 10 && **d < window * (t + 1) / 10)
                .count()
        })
        .collect();
    let last = *departures.last().unwrap();
    eprintln!(
        "drain: {} subscribers left B over {last:?} (node exited after {took:?}), per tenth of the window {tenths:?}; {total} publications, every subscriber got all of its channel's",
        N / 2
    );
    let even = N / 2 / 10;
    assert!(
        tenths.iter().all(|n| (even / 2..=even * 2).contains(n)),
        "not spread: {tenths:?}"
    );
    drop((node_a, redis_server));
    let _ = std::fs::remove_dir_all(&dir);
}

async fn redis_cli(port: u16, args: &[&str]) -> bool {
    Command::new("redis-cli")
        .args(["-p", &port.to_string()])
        .args(args)
        .output()
        .await
        .is_ok_and(|o| o.status.success())
}
