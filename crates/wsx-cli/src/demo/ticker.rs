//! Simulated price ticks for the live chart: a seeded random walk published at a fixed
//! rate to one channel. Not market data.

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use wsx_hub::Payload;

/// The namespace of the tick channel.
pub const NAMESPACE: &str = "ticks";
/// The channel the chart subscribes to.
pub const CHANNEL: &str = "ticks:SIM";
/// Ticks per second.
pub const RATE_HZ: u64 = 20;

/// A random walk with a little pull back to its start, from a fixed seed: the same
/// server start gives the same series.
#[derive(Debug, Clone)]
pub struct Walk {
    state: u64,
    price: f64,
    seq: u64,
}

impl Walk {
    /// A walk from `seed`, starting at 100.
    pub fn new(seed: u64) -> Walk {
        Walk {
            state: seed,
            price: 100.0,
            seq: 0,
        }
    }

    /// The next tick: (sequence number, price).
    pub fn step(&mut self) -> (u64, f64) {
        // xorshift64*; two uniforms summed for a softer step distribution.
        let mut uniform = || {
            self.state ^= self.state >> 12;
            self.state ^= self.state << 25;
            self.state ^= self.state >> 27;
            (self.state.wrapping_mul(0x2545_F491_4F6C_DD1D) >> 11) as f64 / (1u64 << 53) as f64
        };
        let step = (uniform() + uniform() - 1.0) * 0.35;
        self.price = (self.price + step + (100.0 - self.price) * 0.002).max(1.0);
        let seq = self.seq;
        self.seq += 1;
        (seq, (self.price * 100.0).round() / 100.0)
    }
}

/// Publish ticks to [`CHANNEL`] until the runtime stops.
pub fn spawn(hub: Arc<wsx_hub::Hub>, seed: u64) {
    tokio::spawn(async move {
        let mut walk = Walk::new(seed.max(1));
        let mut every = tokio::time::interval(Duration::from_millis(1000 / RATE_HZ));
        every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            every.tick().await;
            let (seq, price) = walk.step();
            let t = SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map(|d| d.as_millis() as u64)
                .unwrap_or_default();
            let data = format!("{{\"seq\":{seq},\"t\":{t},\"price\":{price},\"simulated\":true}}");
            if let Err(e) = hub.publish(CHANNEL, Payload::json(data)).await {
                // A backplane hiccup loses this tick; the chart shows the gap.
                tracing::warn!(error = %e, "ticker could not publish");
            }
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_walk_is_seeded_and_stays_positive() {
        let a: Vec<_> = {
            let mut w = Walk::new(7);
            (0..1000).map(|_| w.step()).collect()
        };
        let b: Vec<_> = {
            let mut w = Walk::new(7);
            (0..1000).map(|_| w.step()).collect()
        };
        assert_eq!(a, b);
        assert_eq!(a[999].0, 999);
        assert!(a.iter().all(|(_, p)| *p >= 1.0));
        let mut c = Walk::new(8);
        assert_ne!(a[10], c.nth_step(10));
    }

    impl Walk {
        fn nth_step(&mut self, n: usize) -> (u64, f64) {
            (0..n).for_each(|_| {
                self.step();
            });
            self.step()
        }
    }
}
