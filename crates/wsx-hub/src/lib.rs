//! `wsx-hub`: the real-time server library.
//!
//! This first layer is the broker every client protocol maps onto: channels
//! (`namespace:name`), subscriptions, publish with fan-out (one shared publication per
//! message), presence with join/leave, history with offsets and an epoch, recovery of
//! missed publications, and a bounded outbound queue per connection that drops slow
//! consumers instead of growing memory. The front-ends (native JSON protocol, STOMP,
//! Socket.IO, SockJS), the HTTP API and the Redis backplane build on it.

#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod auth;
pub mod broker;
pub mod channel;
pub mod history;
pub mod http;
pub mod hub;
pub mod metrics;
pub mod native;
pub mod queue;

pub use broker::{Broker, BrokerError, ChannelOptions, ClientId, ClientInfo, Subscribed};
pub use channel::{BadChannel, ChannelName};
pub use history::{History, Publication, Recovery, StreamPosition};
pub use hub::{Hub, HubConfig};
pub use native::Session;
pub use queue::{Delivery, Outbound, QueueLimits, SlowConsumer};
