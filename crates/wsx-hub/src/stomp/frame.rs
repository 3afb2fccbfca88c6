//! STOMP frames (stomp.github.io, 1.0, 1.1 and 1.2): an incremental decoder (bytes in,
//! frames and heart-beats out, any split of the input) and an encoder. Pure: no I/O,
//! no clock, no hub.
//!
//! ```text
//! frame   = command EOL *(header EOL) EOL body NUL *(EOL)
//! EOL     = [CR] LF
//! header  = name ":" value        (1.1+: \r \n \c \\ escaped; 1.0, CONNECT, CONNECTED: raw)
//! ```
//!
//! A body is read up to `content-length` bytes when the header is present (it may then
//! hold NUL bytes), else up to the first NUL. Repeated headers: the first one wins
//! (§ "Repeated Header Entries"), all are kept in order.

use bytes::{Buf, Bytes, BytesMut};

/// A STOMP protocol version.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Version {
    /// STOMP 1.0: no header escaping.
    V1_0,
    /// STOMP 1.1: `\n \c \\` escaped.
    V1_1,
    /// STOMP 1.2: `\r \n \c \\` escaped, CRLF line ends.
    V1_2,
}

impl Version {
    /// The version's name in `accept-version` and `version` headers.
    pub fn as_str(self) -> &'static str {
        match self {
            Version::V1_0 => "1.0",
            Version::V1_1 => "1.1",
            Version::V1_2 => "1.2",
        }
    }

    /// Parse "1.0", "1.1" or "1.2".
    pub fn parse(s: &str) -> Option<Version> {
        match s.trim() {
            "1.0" => Some(Version::V1_0),
            "1.1" => Some(Version::V1_1),
            "1.2" => Some(Version::V1_2),
            _ => None,
        }
    }

    /// The WebSocket subprotocol naming this version (`v12.stomp`, …).
    pub fn subprotocol(self) -> &'static str {
        match self {
            Version::V1_0 => "v10.stomp",
            Version::V1_1 => "v11.stomp",
            Version::V1_2 => "v12.stomp",
        }
    }

    /// The version a WebSocket subprotocol names.
    pub fn from_subprotocol(s: &str) -> Option<Version> {
        [Version::V1_2, Version::V1_1, Version::V1_0]
            .into_iter()
            .find(|v| v.subprotocol() == s)
    }
}

/// The commands of STOMP frames, client and server.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Command {
    /// Client: open a session.
    Connect,
    /// Client: open a session (1.1+ name of CONNECT).
    Stomp,
    /// Client: send a message to a destination.
    Send,
    /// Client: subscribe to a destination.
    Subscribe,
    /// Client: end a subscription.
    Unsubscribe,
    /// Client: acknowledge a message.
    Ack,
    /// Client: refuse a message.
    Nack,
    /// Client: start a transaction.
    Begin,
    /// Client: commit a transaction.
    Commit,
    /// Client: roll a transaction back.
    Abort,
    /// Client: end the session.
    Disconnect,
    /// Server: the session is open.
    Connected,
    /// Server: a message for a subscription.
    Message,
    /// Server: a frame with `receipt` was processed.
    Receipt,
    /// Server: an error; the connection closes after it.
    Error,
}

impl Command {
    /// Every command, client and server.
    pub const ALL: [Command; 15] = [
        Command::Connect,
        Command::Stomp,
        Command::Send,
        Command::Subscribe,
        Command::Unsubscribe,
        Command::Ack,
        Command::Nack,
        Command::Begin,
        Command::Commit,
        Command::Abort,
        Command::Disconnect,
        Command::Connected,
        Command::Message,
        Command::Receipt,
        Command::Error,
    ];

    /// The command as written on the wire.
    pub fn as_str(self) -> &'static str {
        match self {
            Command::Connect => "CONNECT",
            Command::Stomp => "STOMP",
            Command::Send => "SEND",
            Command::Subscribe => "SUBSCRIBE",
            Command::Unsubscribe => "UNSUBSCRIBE",
            Command::Ack => "ACK",
            Command::Nack => "NACK",
            Command::Begin => "BEGIN",
            Command::Commit => "COMMIT",
            Command::Abort => "ABORT",
            Command::Disconnect => "DISCONNECT",
            Command::Connected => "CONNECTED",
            Command::Message => "MESSAGE",
            Command::Receipt => "RECEIPT",
            Command::Error => "ERROR",
        }
    }

    fn parse(s: &[u8]) -> Option<Command> {
        Command::ALL
            .into_iter()
            .find(|c| c.as_str().as_bytes() == s)
    }

    /// Whether header values of this frame are escaped in `version` (never in 1.0,
    /// never in CONNECT and CONNECTED frames).
    pub fn escapes_headers(self, version: Version) -> bool {
        version != Version::V1_0
            && !matches!(self, Command::Connect | Command::Stomp | Command::Connected)
    }
}

/// One STOMP frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frame {
    /// The command.
    pub command: Command,
    /// Headers in order, unescaped; repeated names are kept (the first wins).
    pub headers: Vec<(String, String)>,
    /// The body.
    pub body: Bytes,
}

impl Frame {
    /// A frame with no headers and no body.
    pub fn new(command: Command) -> Frame {
        Frame {
            command,
            headers: Vec::new(),
            body: Bytes::new(),
        }
    }

    /// Add a header.
    pub fn header(mut self, name: impl Into<String>, value: impl Into<String>) -> Frame {
        self.headers.push((name.into(), value.into()));
        self
    }

    /// Set the body.
    pub fn body(mut self, body: impl Into<Bytes>) -> Frame {
        self.body = body.into();
        self
    }

    /// The first value of header `name`.
    pub fn get(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }
}

/// Limits of the decoder; every one is answered with an `ERROR` naming it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct Limits {
    /// Most headers in a frame. Default: 64.
    pub max_headers: usize,
    /// Most bytes of the command and headers of a frame. Default: 8 KiB.
    pub max_header_bytes: usize,
    /// Most bytes of a body. Default: 1 MiB.
    pub max_body: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_headers: 64,
            max_header_bytes: 8 << 10,
            max_body: 1 << 20,
        }
    }
}

/// Why input is not a STOMP frame. Each is fatal: the session answers with an `ERROR`
/// frame saying this, then closes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FrameError {
    /// The command is not one of STOMP's.
    UnknownCommand(String),
    /// A header line without `:`.
    BadHeader(String),
    /// A backslash escape that the version does not define.
    BadEscape(String),
    /// A header or command that is not UTF-8.
    NotUtf8,
    /// `content-length` is not a number.
    BadContentLength(String),
    /// The bytes after a `content-length` body are not the NUL that ends the frame.
    MissingNul,
    /// More headers than allowed.
    TooManyHeaders(usize),
    /// Command and headers longer than allowed.
    HeadersTooLarge(usize),
    /// A body longer than allowed.
    BodyTooLarge(usize),
}

impl std::fmt::Display for FrameError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            FrameError::UnknownCommand(c) => write!(f, "unknown command `{c}`"),
            FrameError::BadHeader(h) => write!(f, "malformed header line `{h}`"),
            FrameError::BadEscape(h) => write!(f, "undefined escape sequence in header `{h}`"),
            FrameError::NotUtf8 => f.write_str("command or header is not UTF-8"),
            FrameError::BadContentLength(v) => write!(f, "content-length `{v}` is not a length"),
            FrameError::MissingNul => f.write_str("frame body not followed by NUL"),
            FrameError::TooManyHeaders(max) => write!(f, "more than {max} headers"),
            FrameError::HeadersTooLarge(max) => {
                write!(f, "command and headers longer than {max} bytes")
            }
            FrameError::BodyTooLarge(max) => write!(f, "body longer than {max} bytes"),
        }
    }
}

impl std::error::Error for FrameError {}

/// What the decoder found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Item {
    /// A frame.
    Frame(Frame),
    /// A heart-beat (an EOL between frames).
    HeartBeat,
}

/// An incremental decoder: [`push`](Self::push) bytes as they arrive (any split), then
/// call [`next`](Self::next) until it returns `Ok(None)`.
#[derive(Debug)]
pub struct Decoder {
    buf: BytesMut,
    limits: Limits,
    version: Version,
}

fn line_end(buf: &[u8], from: usize) -> Option<usize> {
    buf[from..]
        .iter()
        .position(|b| *b == b'\n')
        .map(|i| from + i)
}

/// A line without its EOL (LF or CRLF).
fn trim_cr(line: &[u8]) -> &[u8] {
    line.strip_suffix(b"\r").unwrap_or(line)
}

/// Unescape a 1.1+ header name or value.
fn unescape(s: &str, version: Version, line: &[u8]) -> Result<String, FrameError> {
    if !s.contains('\\') {
        return Ok(s.to_string());
    }
    let bad = || FrameError::BadEscape(String::from_utf8_lossy(line).into_owned());
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        if c != '\\' {
            out.push(c);
            continue;
        }
        match chars.next() {
            Some('n') => out.push('\n'),
            Some('c') => out.push(':'),
            Some('\\') => out.push('\\'),
            Some('r') if version == Version::V1_2 => out.push('\r'),
            _ => return Err(bad()),
        }
    }
    Ok(out)
}

/// Escape a 1.1+ header name or value.
fn escape(s: &str, version: Version, out: &mut Vec<u8>) {
    for c in s.chars() {
        match c {
            '\\' => out.extend_from_slice(b"\\\\"),
            '\n' => out.extend_from_slice(b"\\n"),
            ':' => out.extend_from_slice(b"\\c"),
            '\r' if version == Version::V1_2 => out.extend_from_slice(b"\\r"),
            c => {
                let mut b = [0u8; 4];
                out.extend_from_slice(c.encode_utf8(&mut b).as_bytes());
            }
        }
    }
}

impl Decoder {
    /// A decoder for frames before the version is negotiated (CONNECT: no escaping).
    pub fn new(limits: Limits) -> Decoder {
        Decoder {
            buf: BytesMut::new(),
            limits,
            version: Version::V1_2,
        }
    }

    /// The negotiated version: how later frames' headers are unescaped.
    pub fn set_version(&mut self, version: Version) {
        self.version = version;
    }

    /// Add received bytes.
    pub fn push(&mut self, bytes: &[u8]) {
        self.buf.extend_from_slice(bytes);
    }

    /// Bytes received and not yet decoded.
    pub fn buffered(&self) -> usize {
        self.buf.len()
    }

    /// The next heart-beat or frame, `Ok(None)` when more input is needed.
    #[allow(clippy::should_implement_trait)]
    pub fn next(&mut self) -> Result<Option<Item>, FrameError> {
        // Heart-beats: EOLs between frames.
        if self.buf.first() == Some(&b'\n') {
            self.buf.advance(1);
            return Ok(Some(Item::HeartBeat));
        }
        if self.buf.starts_with(b"\r\n") {
            self.buf.advance(2);
            return Ok(Some(Item::HeartBeat));
        }
        if self.buf.as_ref() == b"\r" {
            return Ok(None);
        }
        // The command and headers end at an empty line.
        let mut lines: Vec<(usize, usize)> = Vec::new();
        let mut at = 0;
        let head_end = loop {
            let Some(end) = line_end(&self.buf, at) else {
                if self.buf.len() > self.limits.max_header_bytes {
                    return Err(FrameError::HeadersTooLarge(self.limits.max_header_bytes));
                }
                return Ok(None);
            };
            if end > self.limits.max_header_bytes {
                return Err(FrameError::HeadersTooLarge(self.limits.max_header_bytes));
            }
            let line = trim_cr(&self.buf[at..end]);
            if line.is_empty() {
                break end + 1;
            }
            if lines.len() > self.limits.max_headers {
                return Err(FrameError::TooManyHeaders(self.limits.max_headers));
            }
            lines.push((at, at + line.len()));
            at = end + 1;
        };
        let (c0, c1) = lines[0];
        let command = Command::parse(&self.buf[c0..c1]).ok_or_else(|| {
            FrameError::UnknownCommand(String::from_utf8_lossy(&self.buf[c0..c1]).into_owned())
        })?;
        let escaped = command.escapes_headers(self.version);
        let mut headers = Vec::with_capacity(lines.len() - 1);
        for &(s, e) in &lines[1..] {
            let line = &self.buf[s..e];
            let text = std::str::from_utf8(line).map_err(|_| FrameError::NotUtf8)?;
            let (name, value) = text
                .split_once(':')
                .ok_or_else(|| FrameError::BadHeader(text.to_string()))?;
            let (name, value) = if escaped {
                (
                    unescape(name, self.version, line)?,
                    unescape(value, self.version, line)?,
                )
            } else {
                (name.to_string(), value.to_string())
            };
            headers.push((name, value));
        }
        let content_length = headers
            .iter()
            .find(|(n, _)| n == "content-length")
            .map(|(_, v)| {
                v.trim()
                    .parse::<usize>()
                    .map_err(|_| FrameError::BadContentLength(v.clone()))
            })
            .transpose()?;
        let body_len = match content_length {
            Some(n) => {
                if n > self.limits.max_body {
                    return Err(FrameError::BodyTooLarge(self.limits.max_body));
                }
                if self.buf.len() < head_end + n + 1 {
                    return Ok(None);
                }
                if self.buf[head_end + n] != 0 {
                    return Err(FrameError::MissingNul);
                }
                n
            }
            None => match self.buf[head_end..].iter().position(|b| *b == 0) {
                Some(n) if n > self.limits.max_body => {
                    return Err(FrameError::BodyTooLarge(self.limits.max_body))
                }
                Some(n) => n,
                None if self.buf.len() - head_end > self.limits.max_body => {
                    return Err(FrameError::BodyTooLarge(self.limits.max_body))
                }
                None => return Ok(None),
            },
        };
        let mut frame = self.buf.split_to(head_end + body_len + 1);
        frame.advance(head_end);
        frame.truncate(body_len);
        Ok(Some(Item::Frame(Frame {
            command,
            headers,
            body: frame.freeze(),
        })))
    }
}

/// Encode a frame for a session of `version` (LF line ends; `content-length` is the
/// caller's to add when the body may hold NUL bytes).
pub fn encode(frame: &Frame, version: Version) -> Vec<u8> {
    let mut out = Vec::with_capacity(64 + frame.body.len());
    encode_head(frame.command, &frame.headers, version, &mut out);
    out.extend_from_slice(b"\n");
    out.extend_from_slice(&frame.body);
    out.push(0);
    out
}

/// Write a command line and header lines (no blank line after them).
pub fn encode_head(
    command: Command,
    headers: &[(String, String)],
    version: Version,
    out: &mut Vec<u8>,
) {
    out.extend_from_slice(command.as_str().as_bytes());
    out.push(b'\n');
    let escaped = command.escapes_headers(version);
    for (name, value) in headers {
        encode_header(name, value, escaped, version, out);
    }
}

/// Write one header line, escaped where the version and command say so. Unescaped (1.0,
/// CONNECT, CONNECTED), a line feed or a trailing carriage return cannot be written: it
/// becomes a space.
pub fn encode_header(name: &str, value: &str, escaped: bool, version: Version, out: &mut Vec<u8>) {
    if escaped {
        escape(name, version, out);
        out.push(b':');
        escape(value, version, out);
    } else {
        // Unescaped, a line feed would end the header and a carriage return before it
        // would be taken as part of the line end: both become spaces.
        let clean = |s: &str| {
            let mut s = s.replace('\n', " ");
            if s.ends_with('\r') {
                s.pop();
                s.push(' ');
            }
            s
        };
        out.extend_from_slice(clean(name).replace(':', " ").as_bytes());
        out.push(b':');
        out.extend_from_slice(clean(value).as_bytes());
    }
    out.push(b'\n');
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decode_all(input: &[u8], version: Version) -> Result<Vec<Item>, FrameError> {
        let mut d = Decoder::new(Limits::default());
        d.set_version(version);
        d.push(input);
        let mut out = Vec::new();
        while let Some(item) = d.next()? {
            out.push(item);
        }
        Ok(out)
    }

    fn one(input: &[u8], version: Version) -> Frame {
        match decode_all(input, version).unwrap().as_slice() {
            [Item::Frame(f)] => f.clone(),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn a_frame_ends_at_the_first_nul_without_content_length() {
        let f = one(b"SEND\ndestination:/topic/a\n\nhello\0", Version::V1_2);
        assert_eq!(f.command, Command::Send);
        assert_eq!(f.get("destination"), Some("/topic/a"));
        assert_eq!(&f.body[..], b"hello");
    }

    #[test]
    fn content_length_bodies_may_hold_nul_bytes() {
        let f = one(
            b"SEND\ndestination:/q\ncontent-length:5\n\na\0b\0c\0",
            Version::V1_2,
        );
        assert_eq!(&f.body[..], b"a\0b\0c");
    }

    #[test]
    fn crlf_and_lf_line_ends_are_both_accepted() {
        let a = one(b"SEND\r\ndestination:/t\r\n\r\nx\0", Version::V1_2);
        let b = one(b"SEND\ndestination:/t\n\nx\0", Version::V1_2);
        assert_eq!(a, b);
    }

    #[test]
    fn eols_between_frames_are_heart_beats() {
        let items = decode_all(b"\n\r\nSEND\ndestination:/t\n\n\0\n", Version::V1_2).unwrap();
        assert_eq!(items.len(), 4);
        assert_eq!(items[0], Item::HeartBeat);
        assert_eq!(items[1], Item::HeartBeat);
        assert!(matches!(items[2], Item::Frame(_)));
        assert_eq!(items[3], Item::HeartBeat);
    }

    #[test]
    fn repeated_headers_first_one_wins() {
        let f = one(b"MESSAGE\nfoo:World\nfoo:Hello\n\n\0", Version::V1_2);
        assert_eq!(f.get("foo"), Some("World"));
        assert_eq!(f.headers.len(), 2);
    }

    #[test]
    fn header_escapes_per_version() {
        let f = one(b"SEND\na\\cb:c\\nd\\\\e\\rf\n\n\0", Version::V1_2);
        assert_eq!(f.headers[0], ("a:b".into(), "c\nd\\e\rf".into()));
        // \r is undefined in 1.1.
        assert!(matches!(
            decode_all(b"SEND\nk:v\\r\n\n\0", Version::V1_1),
            Err(FrameError::BadEscape(_))
        ));
        assert!(matches!(
            decode_all(b"SEND\nk:v\\t\n\n\0", Version::V1_2),
            Err(FrameError::BadEscape(_))
        ));
        // 1.0 has no escaping at all: the backslashes stay.
        let f = one(b"SEND\nk:a\\cb\n\n\0", Version::V1_0);
        assert_eq!(f.get("k"), Some("a\\cb"));
    }

    #[test]
    fn connect_and_connected_headers_are_never_unescaped() {
        let f = one(b"CONNECT\npasscode:a\\cb\n\n\0", Version::V1_2);
        assert_eq!(f.get("passcode"), Some("a\\cb"));
        let mut out = Vec::new();
        encode_head(
            Command::Connected,
            &[("server".into(), "a:b".into())],
            Version::V1_2,
            &mut out,
        );
        assert_eq!(out, b"CONNECTED\nserver:a:b\n");
    }

    #[test]
    fn values_keep_colons_after_the_first() {
        let f = one(b"SEND\ndestination:/topic/chat:room\n\n\0", Version::V1_0);
        assert_eq!(f.get("destination"), Some("/topic/chat:room"));
    }

    #[test]
    fn partial_frames_across_reads_decode_once_complete() {
        let input = b"SEND\ndestination:/t\ncontent-length:3\n\nabc\0SUBSCRIBE\nid:1\ndestination:/topic/x\n\n\0";
        for split in 1..input.len() {
            let mut d = Decoder::new(Limits::default());
            let mut frames = Vec::new();
            for chunk in [&input[..split], &input[split..]] {
                d.push(chunk);
                while let Some(item) = d.next().unwrap() {
                    frames.push(item);
                }
            }
            assert_eq!(frames.len(), 2, "split at {split}");
        }
    }

    #[test]
    fn unknown_commands_and_malformed_headers_are_errors() {
        assert_eq!(
            decode_all(b"FLY\n\n\0", Version::V1_2),
            Err(FrameError::UnknownCommand("FLY".into()))
        );
        assert_eq!(
            decode_all(b"SEND\nnocolon\n\n\0", Version::V1_2),
            Err(FrameError::BadHeader("nocolon".into()))
        );
        assert_eq!(
            decode_all(b"SEND\ncontent-length:x\n\n\0", Version::V1_2),
            Err(FrameError::BadContentLength("x".into()))
        );
        assert_eq!(
            decode_all(b"SEND\ncontent-length:1\n\nab\0", Version::V1_2),
            Err(FrameError::MissingNul)
        );
    }

    #[test]
    fn limits_are_errors_naming_the_limit() {
        let limits = Limits {
            max_headers: 2,
            max_header_bytes: 64,
            max_body: 4,
        };
        let run = |input: &[u8]| {
            let mut d = Decoder::new(limits);
            d.push(input);
            d.next()
        };
        assert_eq!(
            run(b"SEND\na:1\nb:2\nc:3\n\n\0"),
            Err(FrameError::TooManyHeaders(2))
        );
        assert_eq!(
            run(format!("SEND\na:{}\n\n\0", "x".repeat(100)).as_bytes()),
            Err(FrameError::HeadersTooLarge(64))
        );
        // Without a line end yet, but already too long.
        assert_eq!(
            run("S".repeat(100).as_bytes()),
            Err(FrameError::HeadersTooLarge(64))
        );
        assert_eq!(
            run(b"SEND\ncontent-length:5\n\n"),
            Err(FrameError::BodyTooLarge(4))
        );
        assert_eq!(run(b"SEND\n\nabcdef"), Err(FrameError::BodyTooLarge(4)));
    }

    #[test]
    fn encoding_escapes_per_version() {
        let f = Frame::new(Command::Message)
            .header("k:1", "a\nb\\c\r")
            .body("x");
        assert_eq!(
            encode(&f, Version::V1_2),
            b"MESSAGE\nk\\c1:a\\nb\\\\c\\r\n\nx\0".to_vec()
        );
        assert_eq!(
            encode(&f, Version::V1_1),
            b"MESSAGE\nk\\c1:a\\nb\\\\c\r\n\nx\0".to_vec()
        );
        assert_eq!(
            encode(&f, Version::V1_0),
            b"MESSAGE\nk 1:a b\\c \n\nx\0".to_vec()
        );
        let mid = Frame::new(Command::Message).header("k", "a\rb");
        assert_eq!(
            encode(&mid, Version::V1_0),
            b"MESSAGE\nk:a\rb\n\n\0".to_vec(),
            "a carriage return inside a value is kept"
        );
    }
}
