//! What a namespace enables for its channels.

use std::time::Duration;

/// What a namespace enables for its channels.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct ChannelOptions {
    /// Keep presence.
    pub presence: bool,
    /// Push join and leave events to subscribers.
    pub join_leave: bool,
    /// Publications kept for history and recovery (0: none).
    pub history_size: usize,
    /// How long publications are kept.
    pub history_ttl: Duration,
    /// Clients may ask to recover missed publications (needs history).
    pub recovery: bool,
    /// Anonymous connections may subscribe.
    pub anonymous_subscribe: bool,
    /// Clients may publish (the HTTP API always may).
    pub client_publish: bool,
}

impl Default for ChannelOptions {
    fn default() -> Self {
        ChannelOptions {
            presence: false,
            join_leave: false,
            history_size: 0,
            history_ttl: Duration::from_secs(300),
            recovery: true,
            anonymous_subscribe: true,
            client_publish: true,
        }
    }
}
