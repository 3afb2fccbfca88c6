//! `wsx-hub`: the real-time server library.
//!
//! The [`Hub`] is the one channel model every client protocol maps onto: channels
//! (`namespace:name`), subscriptions, publish with fan-out (one shared publication per
//! message), presence with join/leave, history with offsets and an epoch, recovery of
//! missed publications, and a bounded outbound queue per connection that drops slow
//! consumers instead of growing memory. What a cluster's nodes share sits behind the
//! async [`Backplane`] trait ([`MemoryBackplane`] in process; Redis later); the
//! node-local [`Broker`] fans out. The front-ends (native JSON protocol here; STOMP,
//! Socket.IO, SockJS later) and the HTTP API build on the hub.

#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod auth;
pub mod backplane;
pub mod broker;
pub mod channel;
pub mod history;
pub mod http;
pub mod hub;
pub mod metrics;
pub mod native;
pub mod queue;
mod shards;

pub use backplane::{Backplane, BackplaneError, MemoryBackplane};
pub use broker::{Broker, BrokerError, ChannelOptions, ClientId, ClientInfo, Subscribed};
pub use channel::{BadChannel, ChannelName};
pub use history::{History, Publication, StreamPosition};
pub use hub::{Hub, HubConfig};
pub use native::Session;
pub use queue::{Delivery, Outbound, QueueLimits, SlowConsumer};
