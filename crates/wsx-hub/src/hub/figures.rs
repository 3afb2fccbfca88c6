//! A node's figures for an admin page: connections by front-end and transport,
//! channels by subscribers, messages and bytes per second, publish latency, slow
//! consumers and refused handshakes, and who is connected. A node publishes them once a
//! period on a privileged channel ([`CHANNEL`]) of the hub itself, so that an admin page
//! on any node sees every node through the backplane, without polling anything.

use std::sync::Weak;
use std::time::{Duration, Instant};

use bytes::Bytes;
use serde_json::{json, Value};

use super::metrics::Totals;
use super::options::ChannelOptions;
use super::publication::Payload;
use super::Hub;

/// The namespace of [`CHANNEL`]; a server that publishes figures configures it with
/// [`namespace_options`].
pub const NAMESPACE: &str = "wsx-admin";

/// Where figures are published. A private channel (`$`): a client subscribes only with
/// a channel token signed with the server's token secret; the admin page's session is
/// subscribed by the server itself.
pub const CHANNEL: &str = "wsx-admin:$figures";

/// Most channels (the largest) and clients a node's figures list.
pub const LISTED: usize = 200;

/// [`NAMESPACE`]'s options: nothing kept (no history, no presence), clients may not
/// publish, anonymous connections may not subscribe.
pub fn namespace_options() -> ChannelOptions {
    ChannelOptions {
        presence: false,
        join_leave: false,
        history_size: 0,
        recovery: false,
        anonymous_subscribe: false,
        client_publish: false,
        ..ChannelOptions::default()
    }
}

/// Takes a node's figures: rates are over the time since the previous sample.
pub struct Sampler {
    before: Totals,
    at: Instant,
}

impl Sampler {
    /// A sampler whose first rates count from now.
    pub fn new(hub: &Hub) -> Sampler {
        Sampler {
            before: hub.metrics().totals(),
            at: Instant::now(),
        }
    }

    /// `hub`'s figures now, as JSON, with `extra` fields of the server's (draining,
    /// say) merged in.
    pub fn sample(&mut self, hub: &Hub, extra: Value) -> Value {
        let now = hub.metrics().totals();
        let secs = self.at.elapsed().as_secs_f64().max(1e-3);
        let rate = |a: u64, b: u64| (a.saturating_sub(b) as f64 / secs * 10.0).round() / 10.0;
        let b = &self.before;
        let clients = hub.clients();
        let mut by: Vec<((&str, &str), usize)> = Vec::new();
        for c in &clients {
            let key = (&*c.protocol, &*c.transport);
            match by.iter_mut().find(|(k, _)| *k == key) {
                Some((_, n)) => *n += 1,
                None => by.push((key, 1)),
            }
        }
        by.sort();
        let mut channels = hub.channels();
        let channel_count = channels.len();
        channels.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
        channels.truncate(LISTED);
        let micros = |q: f64| {
            now.latency_quantile(b, q).map(|s| {
                if s.is_finite() {
                    json!((s * 1e6).round() as u64)
                } else {
                    json!("over 1 s")
                }
            })
        };
        let publishes: u64 = now.latency_since(b).iter().sum();
        let mut listed: Vec<_> = clients.iter().collect();
        listed.sort_by_key(|c| c.client);
        let mut figures = json!({
            "node": format!("{:x}", hub.node()),
            "address": hub.address(),
            "at": std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_millis() as u64),
            "uptime": hub.started().elapsed().map_or(0, |d| d.as_secs()),
            "connections": clients.len(),
            "by": by.iter().map(|((p, t), n)| json!({"protocol": p, "transport": t, "n": n})).collect::<Vec<_>>(),
            "subscriptions": hub.metrics().subscriptions.load(std::sync::atomic::Ordering::Relaxed),
            "channel_count": channel_count,
            "channels": channels.iter().map(|(c, n)| json!([c, n])).collect::<Vec<_>>(),
            "rates": {
                "messages_in": rate(now.messages_in, b.messages_in),
                "messages_out": rate(now.messages_out, b.messages_out),
                "bytes_in": rate(now.bytes_in, b.bytes_in),
                "bytes_out": rate(now.bytes_out, b.bytes_out),
                "publications": rate(now.publications, b.publications),
            },
            "publish_latency_us": {
                "count": publishes,
                "p50": micros(0.5),
                "p99": micros(0.99),
            },
            "slow_consumers": now.slow_consumers,
            "refused_handshakes": now.refused,
            "clients": listed.iter().take(LISTED).map(|c| json!({
                "client": c.client.to_string(),
                "user": c.user,
                "protocol": c.protocol,
                "transport": c.transport,
                "name": c.name,
            })).collect::<Vec<_>>(),
        });
        if let (Some(f), Value::Object(extra)) = (figures.as_object_mut(), extra) {
            f.extend(extra);
        }
        self.before = now;
        self.at = Instant::now();
        figures
    }
}

/// Publish `hub`'s figures on [`CHANNEL`] every `period` while `on()` says so, with
/// `extra()` merged in, until the hub is dropped. A failed publish (the backplane
/// down) is logged and the next one tried.
pub async fn publish_every(
    hub: Weak<Hub>,
    period: Duration,
    on: impl Fn() -> bool,
    extra: impl Fn() -> Value,
) {
    let mut sampler = match hub.upgrade() {
        Some(h) => Sampler::new(&h),
        None => return,
    };
    let mut tick = tokio::time::interval(period);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let Some(hub) = hub.upgrade() else { return };
        if !on() {
            continue;
        }
        let figures = sampler.sample(&hub, extra());
        let payload = Payload::json(Bytes::from(figures.to_string()));
        if let Err(e) = hub.publish(CHANNEL, payload).await {
            tracing::debug!("admin figures not published: {e}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hub::HubConfig;

    #[tokio::test]
    async fn figures_count_connections_channels_and_rates() {
        let mut cfg = HubConfig::default();
        cfg.namespaces.push((NAMESPACE.into(), namespace_options()));
        let hub = Hub::new(cfg);
        let mut sampler = Sampler::new(&hub);
        let mut a = crate::HubSession::new(hub.clone(), "native", String::new());
        a.set_transport("websocket");
        a.connect_trusted("alice".into(), "probe".into(), String::new());
        a.join("news", None).await.unwrap();
        let mut b = crate::HubSession::new(hub.clone(), "stomp", String::new());
        b.connect_trusted(String::new(), String::new(), String::new());
        b.join("news", None).await.unwrap();
        b.join("other", None).await.unwrap();
        a.metrics().count_in(100);
        hub.publish("news", Payload::json(Bytes::from_static(b"1")))
            .await
            .unwrap();
        let f = sampler.sample(&hub, json!({"draining": false}));
        assert_eq!(f["connections"], 2);
        assert_eq!(
            f["by"],
            json!([
                {"protocol": "native", "transport": "websocket", "n": 1},
                {"protocol": "stomp", "transport": "", "n": 1},
            ])
        );
        assert_eq!(f["channels"], json!([["news", 2], ["other", 1]]));
        assert_eq!(f["channel_count"], 2);
        assert!(f["rates"]["messages_in"].as_f64().unwrap() > 0.0, "{f}");
        assert!(f["rates"]["publications"].as_f64().unwrap() > 0.0, "{f}");
        assert_eq!(f["publish_latency_us"]["count"], 1);
        assert!(f["publish_latency_us"]["p99"].is_u64(), "{f}");
        assert_eq!(f["clients"][0]["user"], "alice");
        assert_eq!(f["clients"][0]["name"], "probe");
        assert_eq!(f["draining"], false);
        // The next sample counts from this one: nothing happened since.
        let f = sampler.sample(&hub, Value::Null);
        assert_eq!(f["rates"]["messages_in"], 0.0);
        assert_eq!(f["publish_latency_us"]["count"], 0);
        assert!(f["publish_latency_us"]["p50"].is_null());
        // A client cannot subscribe to the figures without a channel token, nor publish.
        let mut c = crate::HubSession::new(hub.clone(), "native", String::new());
        c.connect_trusted("mallory".into(), String::new(), String::new());
        assert!(c.subscribe(CHANNEL, None, None).await.is_err());
        assert!(c
            .publish(CHANNEL, Payload::json(Bytes::from_static(b"1")))
            .await
            .is_err());
    }
}
