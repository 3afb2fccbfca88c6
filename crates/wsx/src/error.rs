//! The error type of the async layer.

use std::fmt;
use std::io;

pub use wsx_proto::{CloseCode, HandshakeError, Initiator, TimeoutKind};

/// What went wrong with a WebSocket. Each variant says what happened: the peer broke the
/// protocol (and which close code we sent), a deadline passed (which one), the handshake
/// failed (with the server's status and body), or the transport failed.
#[derive(Debug)]
#[non_exhaustive]
pub enum Error {
    /// The peer broke RFC 6455/7692 or exceeded a limit; the close frame with
    /// [`Error::close_code`] was sent.
    Protocol(wsx_proto::Error),
    /// A deadline passed: keepalive (close code 1011 sent), idle (1001 sent), close
    /// handshake, or opening handshake.
    Timeout(TimeoutKind),
    /// The opening handshake failed. A server that refused us gives its status and body
    /// (`HandshakeError::Refused`).
    Handshake(HandshakeError),
    /// The transport ended without a close frame (what a browser reports as 1006).
    AbnormalClose,
    /// The connection is closed (or this end already sent its close frame); nothing more
    /// can be sent.
    AlreadyClosed,
    /// The write buffer is full (`try_send` only); the message is handed back.
    Full(wsx_proto::Message),
    /// The URL is not a `ws://` or `wss://` URL this client can use.
    InvalidUrl(String),
    /// TLS set-up failed (certificates, keys, server name).
    Tls(String),
    /// The API was misused (for example a control frame over 125 bytes).
    InvalidInput(&'static str),
    /// An I/O error from the transport.
    Io(io::Error),
}

impl Error {
    /// The close code this end sent because of the error, if any.
    pub fn close_code(&self) -> Option<CloseCode> {
        match self {
            Error::Protocol(e) => e.close_code(),
            // The core decides which timeout sends which code.
            Error::Timeout(t) => wsx_proto::Error::Timeout(*t).close_code(),
            _ => None,
        }
    }

    /// Who caused it.
    pub fn initiator(&self) -> Initiator {
        match self {
            Error::Protocol(_) | Error::Handshake(_) | Error::AbnormalClose => Initiator::Peer,
            _ => Initiator::Local,
        }
    }
}

impl From<wsx_proto::Error> for Error {
    fn from(e: wsx_proto::Error) -> Self {
        match e {
            wsx_proto::Error::Timeout(t) => Error::Timeout(t),
            wsx_proto::Error::Handshake(h) => Error::Handshake(h),
            wsx_proto::Error::AlreadyClosed => Error::AlreadyClosed,
            wsx_proto::Error::InvalidInput(what) => Error::InvalidInput(what),
            other => Error::Protocol(other),
        }
    }
}

impl From<io::Error> for Error {
    fn from(e: io::Error) -> Self {
        Error::Io(e)
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::Protocol(e) => match e.close_code() {
                Some(code) => write!(f, "{e} (sent close {code})"),
                None => write!(f, "{e}"),
            },
            Error::Timeout(t) => wsx_proto::Error::Timeout(*t).fmt(f),
            Error::Handshake(h) => write!(f, "handshake failed: {h}"),
            Error::AbnormalClose => f.write_str("connection closed without a close frame (1006)"),
            Error::AlreadyClosed => f.write_str("the connection is closed"),
            Error::Full(_) => f.write_str("write buffer full"),
            Error::InvalidUrl(u) => write!(f, "invalid WebSocket URL: {u}"),
            Error::Tls(e) => write!(f, "TLS: {e}"),
            Error::InvalidInput(what) => write!(f, "invalid input: {what}"),
            Error::Io(e) => write!(f, "I/O: {e}"),
        }
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Error::Protocol(e) => Some(e),
            Error::Io(e) => Some(e),
            _ => None,
        }
    }
}

/// `Result` with [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;
