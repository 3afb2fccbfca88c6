//! `wsx-hub`: the real-time server library.
//!
//! The [`hub`] is the one channel model every client protocol maps onto: channels
//! (`namespace:name`), subscriptions, publish with fan-out (one shared publication per
//! message), presence with join/leave, history with offsets and an epoch, recovery of
//! missed publications, and a bounded outbound queue per connection that drops slow
//! consumers instead of growing memory. What a cluster's nodes share sits behind the
//! async [`Backplane`] trait ([`MemoryBackplane`] in process, `redis::RedisBackplane`
//! with the `redis` feature). The core
//! knows no wire format: each front-end drives a protocol-neutral [`HubSession`] and
//! maps [`HubError`] and [`Delivery`] onto its own protocol.
//!
//! Front-ends, each depending on the core and never the reverse:
//! - [`native`]: JSON commands over a WebSocket (`/connection/websocket`);
//! - [`stomp`]: STOMP 1.0-1.2 over WebSocket (`/stomp`) and TCP;
//! - [`socketio`]: Socket.IO v5 over [`engineio`] v4 (long-polling, WebSocket, the
//!   upgrade), as a server library and as the hub's vocabulary (`/socket.io/`);
//! - [`sockjs`]: the SockJS protocol's server side, every transport;
//! - [`api`]: the HTTP server API (`/api/*`).

#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod api;
pub mod engineio;
pub mod hub;
pub mod live;
pub mod native;
#[cfg(feature = "redis")]
pub mod redis;
pub mod socketio;
pub mod sockjs;
pub mod stomp;
pub mod transport;

pub use hub::auth;
pub use hub::backplane::{self, Backplane, BackplaneError, MemoryBackplane};
pub use hub::broker::{Broker, Subscribed};
pub use hub::channel::{BadChannel, ChannelName};
pub use hub::client::{ClientId, ClientInfo};
pub use hub::error::{Denied, Feature, HubError, Limit};
pub use hub::history::History;
pub use hub::options::ChannelOptions;
pub use hub::publication::{Payload, PayloadKind, Publication, StreamPosition};
pub use hub::queue::{Delivery, Disconnect, Outbound, QueueLimits, SlowConsumer};
pub use hub::session::{ConnectRequest, Connected, HubSession};
pub use hub::workqueue::{AckMode, WorkQueueLimits};
pub use hub::{Hub, HubConfig};
pub use native::Session;
pub use transport::Gate;
