//! Messages and events.

use bytes::Bytes;

use crate::close::CloseFrame;

/// A UTF-8 text payload, validated once, shared without copying.
#[derive(Clone, PartialEq, Eq, Hash, Default)]
pub struct Text(Bytes);

impl Text {
    /// Check that `bytes` is UTF-8.
    pub fn try_from_bytes(bytes: Bytes) -> Result<Text, Bytes> {
        if simdutf8::basic::from_utf8(&bytes).is_ok() {
            Ok(Text(bytes))
        } else {
            Err(bytes)
        }
    }

    /// Wrap bytes the core has already validated.
    pub(crate) fn from_validated(bytes: Bytes) -> Text {
        debug_assert!(std::str::from_utf8(&bytes).is_ok());
        Text(bytes)
    }

    /// The text. (Validation is repeated here: it runs at several GB/s with `simdutf8`
    /// and keeps the crate free of `unsafe`.)
    pub fn as_str(&self) -> &str {
        simdutf8::basic::from_utf8(&self.0).unwrap_or_default()
    }

    /// The UTF-8 bytes.
    pub fn as_bytes(&self) -> &Bytes {
        &self.0
    }

    /// The UTF-8 bytes, owned.
    pub fn into_bytes(self) -> Bytes {
        self.0
    }

    /// The length in bytes.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Whether the text is empty.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl std::fmt::Debug for Text {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        std::fmt::Debug::fmt(self.as_str(), f)
    }
}

impl std::fmt::Display for Text {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl From<String> for Text {
    fn from(s: String) -> Self {
        Text(Bytes::from(s))
    }
}

impl From<&str> for Text {
    fn from(s: &str) -> Self {
        Text(Bytes::copy_from_slice(s.as_bytes()))
    }
}

impl From<&'static str> for Message {
    fn from(s: &'static str) -> Self {
        Message::Text(Text(Bytes::from_static(s.as_bytes())))
    }
}

impl From<String> for Message {
    fn from(s: String) -> Self {
        Message::Text(s.into())
    }
}

impl From<Vec<u8>> for Message {
    fn from(v: Vec<u8>) -> Self {
        Message::Binary(v.into())
    }
}

impl From<Bytes> for Message {
    fn from(b: Bytes) -> Self {
        Message::Binary(b)
    }
}

/// A WebSocket message, or a control frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Message {
    /// A text message.
    Text(Text),
    /// A binary message.
    Binary(Bytes),
    /// A ping (the core answers it by itself unless `auto_pong` is off).
    Ping(Bytes),
    /// A pong.
    Pong(Bytes),
    /// A close frame; `None` when it carried no status code.
    Close(Option<CloseFrame>),
}

impl Message {
    /// A text message.
    pub fn text(s: impl Into<Text>) -> Message {
        Message::Text(s.into())
    }

    /// A binary message.
    pub fn binary(b: impl Into<Bytes>) -> Message {
        Message::Binary(b.into())
    }

    /// The payload bytes (empty for close).
    pub fn payload(&self) -> &[u8] {
        match self {
            Message::Text(t) => t.as_bytes(),
            Message::Binary(b) | Message::Ping(b) | Message::Pong(b) => b,
            Message::Close(_) => &[],
        }
    }

    /// Whether this is a text or binary message.
    pub fn is_data(&self) -> bool {
        matches!(self, Message::Text(_) | Message::Binary(_))
    }
}

/// The kind of a data message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DataKind {
    /// UTF-8 text.
    Text,
    /// Binary data.
    Binary,
}

/// One data frame, in frame-by-frame mode (`Config::frame_mode`): large messages stream
/// through without being held whole. Text frames are UTF-8-validated across frames (a
/// frame may end inside a code point; the message as a whole is checked at its end).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DataFrame {
    /// The message's kind.
    pub kind: DataKind,
    /// The first frame of its message.
    pub first: bool,
    /// The last frame of its message.
    pub fin: bool,
    /// The payload (inflated, when the message was compressed).
    pub payload: Bytes,
}

/// What the core tells its caller.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// A whole message or a control frame.
    Message(Message),
    /// A data frame (frame-by-frame mode only).
    Frame(DataFrame),
}
