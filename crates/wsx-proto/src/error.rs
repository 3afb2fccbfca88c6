//! The error type of the protocol core.
//!
//! Every protocol error maps to exactly one close code ([`Error::close_code`]) and knows
//! who caused it ([`Error::initiator`]), so the I/O layer can report it precisely and a
//! test can assert the exact cause.

use std::fmt;

use crate::close::CloseCode;

/// Who caused an error or started a close.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Initiator {
    /// This endpoint (a local decision, a local timeout, or misuse of the API).
    Local,
    /// The remote endpoint (it sent something invalid).
    Peer,
}

/// The error type of `wsx-proto`.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Error {
    /// The peer broke a rule of RFC 6455 or RFC 7692.
    Protocol(ProtocolError),
    /// A frame, message or inflated message exceeded a configured limit (close code 1009).
    Capacity(CapacityError),
    /// A deadline passed.
    Timeout(TimeoutKind),
    /// The opening handshake failed.
    Handshake(HandshakeError),
    /// The caller tried to send after this endpoint sent its close frame, or after the
    /// connection closed. Not a protocol error: nothing is sent to the peer.
    AlreadyClosed,
    /// The caller misused the API (for example a control frame longer than 125 bytes,
    /// a continuation frame with no message in progress, or a close code that may not
    /// be sent on the wire).
    InvalidInput(&'static str),
}

/// What exactly the peer did wrong. Each variant has one close code.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum ProtocolError {
    /// RFC 6455 §5.1: a client MUST mask every frame it sends to the server.
    UnmaskedFrame,
    /// RFC 6455 §5.1: a server MUST NOT mask any frame it sends to the client.
    MaskedFrame,
    /// RFC 6455 §5.2: RSV1-3 MUST be 0 unless an extension defines them.
    ReservedBits,
    /// RFC 6455 §5.2: an opcode that is not defined.
    UnknownOpcode(u8),
    /// RFC 6455 §5.5: control frames MUST have a payload length of 125 bytes or less.
    ControlFrameTooLong,
    /// RFC 6455 §5.5: control frames MUST NOT be fragmented.
    FragmentedControlFrame,
    /// RFC 6455 §5.2: the most significant bit of a 64-bit length MUST be 0.
    InvalidLength,
    /// RFC 6455 §5.4: a continuation frame with no fragmented message in progress.
    UnexpectedContinuation,
    /// RFC 6455 §5.4: a new text or binary frame while a fragmented message is in progress.
    ExpectedContinuation,
    /// RFC 6455 §8.1: a text message (or close reason) that is not valid UTF-8 (close code 1007).
    InvalidUtf8,
    /// RFC 6455 §5.5.1: a close payload of one byte.
    InvalidClosePayload,
    /// RFC 6455 §7.4: a close code that is not allowed on the wire.
    InvalidCloseCode(u16),
    /// RFC 7692 §6.1: RSV1 set on a control frame or a continuation frame.
    InvalidCompressionBit,
    /// RFC 7692 §6.2: a compressed message that does not inflate (close code 1007).
    Inflate,
    /// The peer sent a frame after its close frame.
    FrameAfterClose,
}

/// A limit that was exceeded: which one, how large the input was, and the limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CapacityError {
    /// Which limit.
    pub kind: CapacityKind,
    /// The size seen (or at least this much, for inflated data, which stops at the limit).
    pub size: u64,
    /// The configured maximum.
    pub max: u64,
}

/// The kinds of size limits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum CapacityKind {
    /// `Config::max_frame_size`.
    Frame,
    /// `Config::max_message_size`.
    Message,
}

/// The deadlines the core keeps.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum TimeoutKind {
    /// No data arrived within `pong_timeout` of a keepalive ping (close code 1011).
    Keepalive,
    /// Nothing arrived within `idle_timeout` (close code 1001).
    Idle,
    /// The peer did not answer our close frame within `close_timeout`.
    Close,
    /// The opening handshake did not complete in time (kept by the I/O layer).
    Handshake,
}

/// Why an opening handshake failed.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum HandshakeError {
    /// The server refused the request: status, one-line reason.
    /// On the client side this carries the server's status and body.
    Refused {
        /// The HTTP status.
        status: u16,
        /// The reason (server side) or the response body (client side, lossy UTF-8).
        reason: String,
    },
    /// The bytes are not a valid HTTP message.
    Malformed(&'static str),
    /// The server's answer broke RFC 6455 §4.1 (wrong accept key, unoffered subprotocol
    /// or extension, bad extension parameters).
    InvalidResponse(&'static str),
    /// The request or response headers exceed the configured size or count.
    TooLarge,
}

impl Error {
    /// The close code this error sends to the peer, if any.
    ///
    /// Handshake errors and API misuse send no close frame; a close timeout has already
    /// sent one.
    pub fn close_code(&self) -> Option<CloseCode> {
        match self {
            Error::Protocol(p) => Some(p.close_code()),
            Error::Capacity(_) => Some(CloseCode::TOO_BIG),
            Error::Timeout(TimeoutKind::Keepalive) => Some(CloseCode::INTERNAL_ERROR),
            Error::Timeout(TimeoutKind::Idle) => Some(CloseCode::GOING_AWAY),
            Error::Timeout(_)
            | Error::Handshake(_)
            | Error::AlreadyClosed
            | Error::InvalidInput(_) => None,
        }
    }

    /// Who caused the error.
    pub fn initiator(&self) -> Initiator {
        match self {
            Error::Protocol(_) | Error::Capacity(_) | Error::Handshake(_) => Initiator::Peer,
            Error::Timeout(_) | Error::AlreadyClosed | Error::InvalidInput(_) => Initiator::Local,
        }
    }
}

impl ProtocolError {
    /// The close code for this violation: 1007 for bad payload data, 1002 otherwise.
    pub fn close_code(self) -> CloseCode {
        match self {
            ProtocolError::InvalidUtf8 | ProtocolError::Inflate => CloseCode::INVALID_DATA,
            _ => CloseCode::PROTOCOL_ERROR,
        }
    }

    /// A short reason suitable for a close frame.
    pub fn reason(self) -> &'static str {
        match self {
            ProtocolError::UnmaskedFrame => "client frame not masked",
            ProtocolError::MaskedFrame => "server frame masked",
            ProtocolError::ReservedBits => "reserved bits set",
            ProtocolError::UnknownOpcode(_) => "unknown opcode",
            ProtocolError::ControlFrameTooLong => "control frame over 125 bytes",
            ProtocolError::FragmentedControlFrame => "fragmented control frame",
            ProtocolError::InvalidLength => "invalid frame length",
            ProtocolError::UnexpectedContinuation => "continuation without a message",
            ProtocolError::ExpectedContinuation => "expected a continuation frame",
            ProtocolError::InvalidUtf8 => "invalid UTF-8",
            ProtocolError::InvalidClosePayload => "invalid close payload",
            ProtocolError::InvalidCloseCode(_) => "invalid close code",
            ProtocolError::InvalidCompressionBit => "RSV1 on a control or continuation frame",
            ProtocolError::Inflate => "invalid compressed data",
            ProtocolError::FrameAfterClose => "frame after close",
        }
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::Protocol(ProtocolError::UnknownOpcode(op)) => {
                write!(f, "protocol error: unknown opcode {op:#x}")
            }
            Error::Protocol(ProtocolError::InvalidCloseCode(c)) => {
                write!(f, "protocol error: invalid close code {c}")
            }
            Error::Protocol(p) => write!(f, "protocol error: {}", p.reason()),
            Error::Capacity(c) => write!(
                f,
                "{} too large: {} bytes, limit {}",
                match c.kind {
                    CapacityKind::Frame => "frame",
                    CapacityKind::Message => "message",
                },
                c.size,
                c.max
            ),
            Error::Timeout(t) => write!(
                f,
                "{} timeout",
                match t {
                    TimeoutKind::Keepalive => "keepalive (pong)",
                    TimeoutKind::Idle => "idle",
                    TimeoutKind::Close => "close handshake",
                    TimeoutKind::Handshake => "opening handshake",
                }
            ),
            Error::Handshake(h) => write!(f, "handshake failed: {h}"),
            Error::AlreadyClosed => f.write_str("the connection is closed"),
            Error::InvalidInput(what) => write!(f, "invalid input: {what}"),
        }
    }
}

impl fmt::Display for HandshakeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            HandshakeError::Refused { status, reason } => write!(f, "{status} {reason}"),
            HandshakeError::Malformed(what) => write!(f, "malformed HTTP: {what}"),
            HandshakeError::InvalidResponse(what) => write!(f, "invalid response: {what}"),
            HandshakeError::TooLarge => f.write_str("headers too large"),
        }
    }
}

impl std::error::Error for Error {}
impl std::error::Error for HandshakeError {}

impl From<ProtocolError> for Error {
    fn from(e: ProtocolError) -> Self {
        Error::Protocol(e)
    }
}

impl From<CapacityError> for Error {
    fn from(e: CapacityError) -> Self {
        Error::Capacity(e)
    }
}

impl From<HandshakeError> for Error {
    fn from(e: HandshakeError) -> Self {
        Error::Handshake(e)
    }
}
