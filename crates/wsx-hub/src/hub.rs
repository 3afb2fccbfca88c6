//! The hub: the broker plus configuration, shared by every front-end.

use std::sync::atomic::{AtomicU64, Ordering};

use crate::broker::{Broker, ChannelOptions, ClientId};
use crate::channel::ChannelName;
use crate::queue::QueueLimits;

/// Hub settings.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct HubConfig {
    /// Options per namespace (`""` is the default namespace). Namespaces not listed use
    /// `default_options`.
    pub namespaces: Vec<(String, ChannelOptions)>,
    /// Options of unlisted namespaces. Default: presence with join/leave, history of 100
    /// publications for 5 minutes.
    pub default_options: ChannelOptions,
    /// Each connection's outbound queue limits.
    pub queue: QueueLimits,
    /// Subscriptions one connection may hold. Default: 128.
    pub max_subscriptions: usize,
    /// The ping interval announced to clients, in seconds. Default: 25.
    pub ping_interval_secs: u64,
}

impl Default for HubConfig {
    fn default() -> Self {
        HubConfig {
            namespaces: Vec::new(),
            default_options: ChannelOptions {
                presence: true,
                join_leave: true,
                history_size: 100,
                ..ChannelOptions::default()
            },
            queue: QueueLimits::default(),
            max_subscriptions: 128,
            ping_interval_secs: 25,
        }
    }
}

/// The hub.
pub struct Hub {
    broker: Broker,
    config: HubConfig,
    next_client: AtomicU64,
}

impl Hub {
    /// A hub with an in-memory broker.
    pub fn new(config: HubConfig) -> Hub {
        Hub {
            broker: Broker::new(),
            config,
            next_client: AtomicU64::new(1),
        }
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
