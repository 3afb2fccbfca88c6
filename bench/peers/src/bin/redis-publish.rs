//! Publications per second accepted by the hub of one node: through the Redis
//! backplane (each a Lua script on one multiplexed connection, so concurrent
//! publications are pipelined) beside the in-memory backplane, with C publishers at
//! once, on one channel and spread over 100 channels.
//!
//! redis-publish redis://127.0.0.1:PORT [--seconds S] [--concurrency 1,16,256]

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use wsx_hub::{ChannelOptions, Hub, HubConfig, Payload};

async fn run(hub: Arc<Hub>, concurrency: usize, channels: usize, seconds: f64) -> f64 {
    let done = Arc::new(AtomicU64::new(0));
    let until = Instant::now() + Duration::from_secs_f64(seconds);
    let start = Instant::now();
    let mut tasks = Vec::new();
    for t in 0..concurrency {
        let hub = hub.clone();
        let done = done.clone();
        tasks.push(tokio::spawn(async move {
            let mut k = t;
            while Instant::now() < until {
                let ch = format!("bench:{}", k % channels);
                let data = format!("{{\"k\":{k},\"text\":\"a publication of about a hundred bytes, as a chat message would be\"}}");
                hub.publish(&ch, Payload::json(data)).await.expect("publish");
                done.fetch_add(1, Ordering::Relaxed);
                k += concurrency;
            }
        }));
    }
    for t in tasks {
        t.await.expect("publisher");
    }
    done.load(Ordering::Relaxed) as f64 / start.elapsed().as_secs_f64()
}

#[tokio::main]
async fn main() {
    let args: Vec<String> = std::env::args().collect();
    let url = args
        .get(1)
        .cloned()
        .expect("usage: redis-publish redis://HOST:PORT");
    let value = |name: &str| {
        args.iter()
            .position(|a| a == name)
            .and_then(|i| args.get(i + 1))
            .cloned()
    };
    let seconds: f64 = value("--seconds")
        .and_then(|v| v.parse().ok())
        .unwrap_or(3.0);
    let levels: Vec<usize> = value("--concurrency")
        .unwrap_or_else(|| "1,16,256".into())
        .split(',')
        .filter_map(|v| v.parse().ok())
        .collect();
    let mut opts = ChannelOptions::default();
    opts.history_size = 100;
    let mut cfg = HubConfig::default();
    cfg.namespaces = vec![("bench".into(), opts)];
    let redis = wsx_hub::redis::RedisConfig {
        url,
        prefix: format!("bench{}", std::process::id()),
        ..wsx_hub::redis::RedisConfig::default()
    };
    let backplane = wsx_hub::redis::RedisBackplane::connect(redis)
        .await
        .expect("Redis");
    let on_redis = Hub::with_backplane(cfg.clone(), Arc::new(backplane));
    let in_memory = Hub::new(cfg);
    println!(
        "\npublications/s accepted by one node's hub (history 100 per channel, ~100-byte JSON)\n"
    );
    println!("| publishers at once | channels | Redis backplane | memory backplane |");
    println!("|---|---|---|---|");
    for &c in &levels {
        for channels in [1, 100] {
            let r = run(on_redis.clone(), c, channels, seconds).await;
            let m = run(in_memory.clone(), c, channels, seconds).await;
            println!("| {c} | {channels} | {r:.0} | {m:.0} |");
        }
    }
}
