//! Counters for `/metrics` (Prometheus text format). Plain atomics: no lock, no
//! allocation on the hot path.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// Upper bounds of the publish-latency histogram, in seconds.
const BUCKETS: [f64; 10] = [
    0.00001, 0.00005, 0.0001, 0.0005, 0.001, 0.005, 0.01, 0.05, 0.1, 1.0,
];

/// One front-end's counters (`{frontend="…"}` in `/metrics`).
#[derive(Debug, Default)]
pub struct FrontendMetrics {
    /// Open hub sessions of this front-end.
    pub connections: AtomicI64,
    /// Messages received (commands, frames).
    pub messages_in: AtomicU64,
    /// Messages sent (replies and pushes).
    pub messages_out: AtomicU64,
    /// Bytes received in messages.
    pub bytes_in: AtomicU64,
    /// Payload bytes sent.
    pub bytes_out: AtomicU64,
}

impl FrontendMetrics {
    /// Count one message received.
    pub fn count_in(&self, bytes: usize) {
        self.messages_in.fetch_add(1, Ordering::Relaxed);
        self.bytes_in.fetch_add(bytes as u64, Ordering::Relaxed);
    }

    /// Count one message sent.
    pub fn count_out(&self, bytes: usize) {
        self.messages_out.fetch_add(1, Ordering::Relaxed);
        self.bytes_out.fetch_add(bytes as u64, Ordering::Relaxed);
    }
}

/// The hub's metrics.
#[derive(Debug, Default)]
pub struct Metrics {
    /// Open hub sessions, every front-end.
    pub connections: AtomicI64,
    /// Subscriptions held.
    pub subscriptions: AtomicI64,
    frontends: Mutex<Vec<(&'static str, Arc<FrontendMetrics>)>>,
    /// Publications accepted (clients and the HTTP API).
    pub publications: AtomicU64,
    /// Connections closed as slow consumers.
    pub slow_consumers: AtomicU64,
    publish_latency: [AtomicU64; BUCKETS.len() + 1],
    publish_latency_sum_ns: AtomicU64,
    refusals: Mutex<Vec<(u16, String, u64)>>,
}

/// The counters' values at one moment: what the admin page's figures are made of.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Totals {
    /// Messages received, every front-end.
    pub messages_in: u64,
    /// Messages sent, every front-end.
    pub messages_out: u64,
    /// Bytes received in messages.
    pub bytes_in: u64,
    /// Bytes sent in messages.
    pub bytes_out: u64,
    /// Publications accepted.
    pub publications: u64,
    /// Connections closed as slow consumers.
    pub slow_consumers: u64,
    /// Handshakes refused (every status and reason).
    pub refused: u64,
    /// Publishes per latency bucket (upper bounds [`LATENCY_BUCKETS`], then the rest).
    pub publish_latency: Vec<u64>,
    /// Open sessions per front-end.
    pub frontends: Vec<(&'static str, i64)>,
}

/// Upper bounds of the publish-latency buckets of [`Totals`], in seconds.
pub const LATENCY_BUCKETS: [f64; 10] = BUCKETS;

impl Totals {
    /// The latency below which `q` (0..1) of the publishes between `before` and `self`
    /// took, as a bucket's upper bound in seconds (`None`: no publish; `inf`: over the
    /// last bound).
    pub fn latency_quantile(&self, before: &Totals, q: f64) -> Option<f64> {
        let counts = self.latency_since(before);
        let total: u64 = counts.iter().sum();
        if total == 0 {
            return None;
        }
        let want = (q * total as f64).ceil().max(1.0) as u64;
        let mut seen = 0;
        for (i, n) in counts.iter().enumerate() {
            seen += n;
            if seen >= want {
                return Some(BUCKETS.get(i).copied().unwrap_or(f64::INFINITY));
            }
        }
        Some(f64::INFINITY)
    }
}

impl Totals {
    /// Publishes per latency bucket between `before` and `self`.
    pub fn latency_since(&self, before: &Totals) -> Vec<u64> {
        self.publish_latency
            .iter()
            .enumerate()
            .map(|(i, n)| n.saturating_sub(before.publish_latency.get(i).copied().unwrap_or(0)))
            .collect()
    }
}

impl Metrics {
    /// Every counter's value now.
    pub fn totals(&self) -> Totals {
        let load = |a: &AtomicU64| a.load(Ordering::Relaxed);
        let mut t = Totals {
            publications: load(&self.publications),
            slow_consumers: load(&self.slow_consumers),
            refused: self
                .refusals
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .iter()
                .map(|(_, _, n)| n)
                .sum(),
            publish_latency: self.publish_latency.iter().map(load).collect(),
            ..Totals::default()
        };
        for (name, m) in self
            .frontends
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
        {
            t.messages_in += load(&m.messages_in);
            t.messages_out += load(&m.messages_out);
            t.bytes_in += load(&m.bytes_in);
            t.bytes_out += load(&m.bytes_out);
            t.frontends
                .push((name, m.connections.load(Ordering::Relaxed)));
        }
        t
    }

    /// The counters of the front-end `name` (made on first use).
    pub fn frontend(&self, name: &'static str) -> Arc<FrontendMetrics> {
        let mut all = self.frontends.lock().unwrap_or_else(|e| e.into_inner());
        if let Some((_, m)) = all.iter().find(|(n, _)| *n == name) {
            return m.clone();
        }
        let m = Arc::new(FrontendMetrics::default());
        all.push((name, m.clone()));
        m
    }

    /// Record how long one publish (history + fan-out to every queue) took.
    pub fn observe_publish(&self, d: Duration) {
        let secs = d.as_secs_f64();
        let i = BUCKETS
            .iter()
            .position(|b| secs <= *b)
            .unwrap_or(BUCKETS.len());
        self.publish_latency[i].fetch_add(1, Ordering::Relaxed);
        self.publish_latency_sum_ns
            .fetch_add(d.as_nanos() as u64, Ordering::Relaxed);
    }

    /// Count a refused handshake.
    pub fn refused(&self, status: u16, reason: &str) {
        let mut r = self.refusals.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(entry) = r
            .iter_mut()
            .find(|(s, why, _)| *s == status && why == reason)
        {
            entry.2 += 1;
        } else if r.len() < 64 {
            // Reasons are a fixed set; the cap only guards against unbounded labels.
            r.push((status, reason.to_string(), 1));
        }
    }

    /// The Prometheus text exposition. `channels` is the number of active channels.
    pub fn render(&self, channels: usize) -> String {
        let mut out = String::new();
        let mut gauge = |name: &str, help: &str, v: i64| {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} gauge\n{name} {v}");
        };
        gauge(
            "wsx_connections",
            "Open hub sessions, every front-end (not /echo); by front-end in wsx_frontend_connections.",
            self.connections.load(Ordering::Relaxed),
        );
        gauge(
            "wsx_subscriptions",
            "Subscriptions held.",
            self.subscriptions.load(Ordering::Relaxed),
        );
        gauge("wsx_channels", "Active channels.", channels as i64);
        let frontends: Vec<(&'static str, Arc<FrontendMetrics>)> = self
            .frontends
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        let load = |a: &AtomicU64| a.load(Ordering::Relaxed);
        let _ = writeln!(out, "# HELP wsx_frontend_connections Open hub sessions by front-end.\n# TYPE wsx_frontend_connections gauge");
        for (name, m) in &frontends {
            let _ = writeln!(
                out,
                "wsx_frontend_connections{{frontend=\"{name}\"}} {}",
                m.connections.load(Ordering::Relaxed)
            );
        }
        type Field = fn(&FrontendMetrics) -> &AtomicU64;
        let per_frontend: [(&str, &str, Field); 4] = [
            ("wsx_messages_in_total", "Messages received.", |m| {
                &m.messages_in
            }),
            ("wsx_messages_out_total", "Messages sent.", |m| {
                &m.messages_out
            }),
            ("wsx_bytes_in_total", "Bytes received in messages.", |m| {
                &m.bytes_in
            }),
            ("wsx_bytes_out_total", "Bytes sent in messages.", |m| {
                &m.bytes_out
            }),
        ];
        for (name, help, field) in per_frontend {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} counter");
            for (frontend, m) in &frontends {
                let _ = writeln!(out, "{name}{{frontend=\"{frontend}\"}} {}", load(field(m)));
            }
        }
        let mut counter = |name: &str, help: &str, labels: &str, v: u64| {
            let _ = writeln!(
                out,
                "# HELP {name} {help}\n# TYPE {name} counter\n{name}{labels} {v}"
            );
        };
        counter(
            "wsx_publications_total",
            "Publications accepted.",
            "",
            load(&self.publications),
        );
        counter(
            "wsx_slow_consumer_disconnects_total",
            "Connections closed as slow consumers.",
            "",
            load(&self.slow_consumers),
        );
        let _ = writeln!(out, "# HELP wsx_handshake_refusals_total Refused WebSocket handshakes.\n# TYPE wsx_handshake_refusals_total counter");
        for (status, reason, n) in self
            .refusals
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
        {
            let reason = reason.replace('\\', "\\\\").replace('"', "\\\"");
            let _ = writeln!(
                out,
                "wsx_handshake_refusals_total{{status=\"{status}\",reason=\"{reason}\"}} {n}"
            );
        }
        let _ = writeln!(out, "# HELP wsx_publish_seconds Time to record and fan out one publication.\n# TYPE wsx_publish_seconds histogram");
        let mut cumulative = 0;
        for (i, b) in BUCKETS.iter().enumerate() {
            cumulative += load(&self.publish_latency[i]);
            let _ = writeln!(out, "wsx_publish_seconds_bucket{{le=\"{b}\"}} {cumulative}");
        }
        cumulative += load(&self.publish_latency[BUCKETS.len()]);
        let _ = writeln!(
            out,
            "wsx_publish_seconds_bucket{{le=\"+Inf\"}} {cumulative}"
        );
        let _ = writeln!(
            out,
            "wsx_publish_seconds_sum {}",
            load(&self.publish_latency_sum_ns) as f64 / 1e9
        );
        let _ = writeln!(out, "wsx_publish_seconds_count {cumulative}");
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_prometheus_text() {
        let m = Metrics::default();
        m.connections.fetch_add(3, Ordering::Relaxed);
        m.frontend("stomp").count_in(10);
        m.frontend("native").count_out(5);
        m.frontend("stomp").count_in(2);
        m.observe_publish(Duration::from_micros(30));
        m.observe_publish(Duration::from_secs(2));
        m.refused(403, "Origin not allowed");
        m.refused(403, "Origin not allowed");
        let text = m.render(7);
        assert!(text.contains("wsx_connections 3\n"), "{text}");
        assert!(text.contains("wsx_channels 7\n"));
        assert!(
            text.contains("wsx_bytes_in_total{frontend=\"stomp\"} 12\n"),
            "{text}"
        );
        assert!(text.contains("wsx_messages_in_total{frontend=\"native\"} 0\n"));
        assert!(text.contains("wsx_messages_out_total{frontend=\"native\"} 1\n"));
        assert!(
            text.contains("wsx_publish_seconds_bucket{le=\"0.00005\"} 1\n"),
            "{text}"
        );
        assert!(text.contains("wsx_publish_seconds_bucket{le=\"+Inf\"} 2\n"));
        assert!(text.contains(
            "wsx_handshake_refusals_total{status=\"403\",reason=\"Origin not allowed\"} 2\n"
        ));
    }
}
