//! `wsx`: WebSocket over tokio, server and client, `ws://` and `wss://`.
//!
//! The protocol itself lives in [`wsx_proto`]; this crate drives it over any
//! `AsyncRead + AsyncWrite` stream and owns time (one timer per connection, armed at the
//! core's next deadline) and buffers (a bounded write buffer: `send().await` waits when
//! the peer is slow).
//!
//! ```no_run
//! use futures_util::{SinkExt, StreamExt};
//!
//! # async fn run() -> wsx::Result<()> {
//! // Server: echo every message.
//! let listener = tokio::net::TcpListener::bind("127.0.0.1:9001").await?;
//! tokio::spawn(async move {
//!     while let Ok((tcp, _)) = listener.accept().await {
//!         tokio::spawn(async move {
//!             let _ = tcp.set_nodelay(true);
//!             let (mut ws, _) = wsx::accept(tcp, &wsx::ServerConfig::default()).await?;
//!             while let Some(msg) = ws.next().await {
//!                 let msg = msg?;
//!                 if msg.is_data() {
//!                     ws.send(msg).await?;
//!                 }
//!             }
//!             Ok::<_, wsx::Error>(())
//!         });
//!     }
//! });
//!
//! // Client.
//! let (mut ws, _) = wsx::connect("ws://127.0.0.1:9001/", &wsx::ClientConfig::default()).await?;
//! ws.send(wsx::Message::text("hello")).await?;
//! assert_eq!(ws.recv().await.unwrap()?, wsx::Message::text("hello"));
//! ws.close(wsx::CloseCode::NORMAL, "done").await?;
//! # Ok(()) }
//! ```
//!
//! For many mostly idle server connections, [`event_loop`] runs them as slots of a slab
//! on a thread of its own (about 500 bytes each, no task per connection), with a
//! handler called per message.
//!
//! Features: `tls` (default) for `wss://` with rustls; `hyper` to upgrade a hyper 1
//! request; `axum` for an axum extractor; `uring` (Linux) for an event loop that makes
//! a fan-out's sends in batches through io_uring
//! ([`LoopConfig::uring`](event_loop::LoopConfig::uring)).

#![deny(unsafe_code)]
#![warn(missing_docs)]

mod accept;
mod config;
mod connect;
mod error;
pub mod event_loop;
mod split;
mod stream;
mod sys;
#[cfg(feature = "tls")]
pub mod tls;
mod websocket;

#[cfg(feature = "hyper")]
pub mod upgrade;

pub use accept::{accept, accept_with, Accepted};
pub use config::{ClientConfig, IoConfig, ServerConfig};
pub use connect::{client_handshake, connect, WsUrl};
pub use error::{Error, Result};
pub use split::{WsReader, WsWriter};
pub use stream::MaybeTlsStream;
pub use websocket::WebSocket;
pub use wsx_proto;
pub use wsx_proto::handshake::client::ClientAccepted;
pub use wsx_proto::handshake::server::{OriginPolicy, Refusal, Request};
pub use wsx_proto::{
    CloseCode, CloseFrame, Config, DataFrame, DataKind, DeflateConfig, Event, HandshakeError,
    Message, SharedFrame, State, Text, TimeoutKind,
};
