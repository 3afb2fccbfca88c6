//! The hub: the broker plus configuration, shared by every front-end.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use bytes::Bytes;

use crate::broker::{Broker, ChannelOptions, ClientId};
use crate::channel::ChannelName;
use crate::history::Publication;
use crate::native::ReplyError;
use crate::queue::{Disconnect, Outbound, QueueLimits};

/// Hub settings.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct HubConfig {
    /// Options per namespace (`""` is the default namespace). Namespaces not listed use
    /// `default_options`.
    pub namespaces: Vec<(String, ChannelOptions)>,
    /// Options of unlisted namespaces. Default: presence (without join/leave pushes, which
    /// cost O(subscribers) per join), history of 100 publications for 5 minutes.
    pub default_options: ChannelOptions,
    /// Each connection's outbound queue limits.
    pub queue: QueueLimits,
    /// Subscriptions one connection may hold. Default: 128.
    pub max_subscriptions: usize,
    /// The ping interval announced to clients, in seconds. Default: 25.
    pub ping_interval_secs: u64,
    /// Connection tokens.
    pub auth: crate::auth::AuthConfig,
    /// A connection whose peer takes no data for this long while a push is being
    /// written is dropped (its queue is already bounded; this frees the task and the
    /// socket). Default: 30 s.
    pub write_timeout: std::time::Duration,
    /// Longest `name` and `info` a client may give at `connect` (shown in presence).
    /// Default: 256 bytes.
    pub max_info_size: usize,
}

impl Default for HubConfig {
    fn default() -> Self {
        HubConfig {
            namespaces: Vec::new(),
            default_options: ChannelOptions {
                presence: true,
                join_leave: false,
                history_size: 100,
                ..ChannelOptions::default()
            },
            queue: QueueLimits::default(),
            max_subscriptions: 128,
            ping_interval_secs: 25,
            auth: crate::auth::AuthConfig::default(),
            write_timeout: std::time::Duration::from_secs(30),
            max_info_size: 256,
        }
    }
}

/// The hub.
pub struct Hub {
    broker: Broker,
    config: HubConfig,
    next_client: AtomicU64,
    sessions: Mutex<HashMap<ClientId, (String, Arc<Outbound>)>>,
    metrics: crate::metrics::Metrics,
}

impl Hub {
    /// A hub with an in-memory broker.
    pub fn new(config: HubConfig) -> Hub {
        Hub {
            broker: Broker::new(),
            config,
            next_client: AtomicU64::new(1),
            sessions: Mutex::new(HashMap::new()),
            metrics: crate::metrics::Metrics::default(),
        }
    }

    /// The metrics.
    pub fn metrics(&self) -> &crate::metrics::Metrics {
        &self.metrics
    }

    fn sessions(&self) -> std::sync::MutexGuard<'_, HashMap<ClientId, (String, Arc<Outbound>)>> {
        self.sessions.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Record a live connection (for server-side disconnects).
    pub fn register(&self, client: ClientId, user: &str, queue: Arc<Outbound>) {
        if self
            .sessions()
            .insert(client, (user.to_string(), queue))
            .is_none()
        {
            self.metrics.connections.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Forget a connection.
    pub fn unregister(&self, client: ClientId) {
        if self.sessions().remove(&client).is_some() {
            self.metrics.connections.fetch_sub(1, Ordering::Relaxed);
        }
    }

    /// Close every connection of `user` (and/or the connection `client`) with `code`.
    /// Returns how many were asked to close.
    pub fn disconnect(
        &self,
        user: Option<&str>,
        client: Option<ClientId>,
        code: u16,
        reason: &str,
        reconnect: bool,
    ) -> usize {
        let sessions = self.sessions();
        let mut n = 0;
        for (id, (u, q)) in sessions.iter() {
            if user.is_some_and(|want| want == u) || client == Some(*id) {
                q.disconnect(Disconnect {
                    code,
                    reason: reason.to_string(),
                    reconnect,
                });
                n += 1;
            }
        }
        n
    }

    /// Remove the subscriptions of `user`'s connections (and/or the connection `client`)
    /// to `channel`; each gets an `unsubscribe` push. Returns how many were removed.
    pub fn unsubscribe(
        &self,
        channel: &str,
        user: Option<&str>,
        client: Option<ClientId>,
    ) -> usize {
        let targets: Vec<(ClientId, Arc<Outbound>)> = self
            .sessions()
            .iter()
            .filter(|(id, (u, _))| user.is_some_and(|want| want == u) || client == Some(**id))
            .map(|(id, (_, q))| (*id, q.clone()))
            .collect();
        let mut n = 0;
        for (id, q) in targets {
            if self.broker.unsubscribe(channel, id).is_ok() {
                let _ = q.push(crate::queue::Delivery::Unsubscribed {
                    channel: Arc::from(channel),
                });
                n += 1;
            }
        }
        n
    }

    /// Connections open now.
    pub fn connections(&self) -> usize {
        self.sessions().len()
    }

    /// Publish `data` (JSON text for the native protocol) to a channel.
    pub fn publish(&self, channel: &str, data: Bytes) -> Result<Arc<Publication>, ReplyError> {
        let ch = crate::native::channel(channel)?;
        let opts = self.options(&ch);
        let start = Instant::now();
        let (p, slow) = self.broker.publish(&ch, &opts, data, start);
        self.metrics.observe_publish(start.elapsed());
        self.metrics.publications.fetch_add(1, Ordering::Relaxed);
        self.metrics
            .slow_consumers
            .fetch_add(slow.len() as u64, Ordering::Relaxed);
        Ok(p)
    }

    /// The broker.
    pub fn broker(&self) -> &Broker {
        &self.broker
    }

    /// The settings.
    pub fn config(&self) -> &HubConfig {
        &self.config
    }

    /// A fresh connection id.
    pub fn next_client_id(&self) -> ClientId {
        self.next_client.fetch_add(1, Ordering::Relaxed)
    }

    /// The options of a channel's namespace.
    pub fn options(&self, channel: &ChannelName) -> ChannelOptions {
        self.config
            .namespaces
            .iter()
            .find(|(ns, _)| ns == channel.namespace())
            .map(|(_, o)| o.clone())
            .unwrap_or_else(|| self.config.default_options.clone())
    }
}
