//! `wsx-proto`: the WebSocket protocol (RFC 6455) and permessage-deflate (RFC 7692) as a
//! deterministic state machine with no I/O and no clock of its own.
//!
//! Bytes go in ([`Connection::handle_input`]), time goes in
//! ([`Connection::handle_timeout`]), and the caller polls for events
//! ([`Connection::poll_event`]), bytes to write ([`Connection::output`]) and the next
//! deadline ([`Connection::poll_timeout`]), in the manner of `quinn-proto`. The opening
//! handshake lives in [`handshake`]. Every rule of the RFCs is decided here, once.
//!
//! ```
//! use std::time::Instant;
//! use bytes::Buf;
//! use wsx_proto::handshake::{client, server};
//! use wsx_proto::{Config, Connection, Event, Message, Role};
//!
//! // Handshake.
//! let (hs, request) = client::ClientHandshake::new("localhost", "/", &Default::default());
//! let scfg = server::ServerHandshakeConfig::default();
//! let (req, _) = server::parse_request(&request, &scfg).unwrap().unwrap();
//! let accepted = server::respond(&req, &scfg).unwrap();
//! hs.parse_response(&accepted.response, false).unwrap().unwrap();
//!
//! // Messages.
//! let now = Instant::now();
//! let mut client = Connection::new(Role::Client, Config::default(), now);
//! let mut server = Connection::new(Role::Server, Config::default(), now);
//! client.send(Message::text("ping me")).unwrap();
//! let n = client.output_len();
//! let wire = client.output().copy_to_bytes(n);
//! server.handle_input(now, &wire);
//! match server.poll_event().unwrap() {
//!     Some(Event::Message(Message::Text(t))) => assert_eq!(t.as_str(), "ping me"),
//!     other => panic!("{other:?}"),
//! }
//! ```

#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod close;
pub mod config;
pub mod connection;
mod deframer;
pub mod error;
pub mod extensions;
pub mod fragmenter;
pub mod frame;
pub mod handshake;
pub mod mask;
pub mod message;
pub mod utf8;

pub use close::{CloseCode, CloseFrame};
pub use config::Config;
pub use connection::{Connection, Role, State};
pub use deframer::KEEP_BUFFER_UP_TO;
pub use error::{
    CapacityError, CapacityKind, Error, HandshakeError, Initiator, ProtocolError, TimeoutKind,
};
pub use extensions::permessage_deflate::{DeflateConfig, DeflateParams};
pub use fragmenter::{OutBuffer, SharedFrame};
pub use message::{DataFrame, DataKind, Event, Message, Text};
