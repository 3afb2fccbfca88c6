//! Socket.IO v5 packets, pure: `<type>[<attachments>-][<nsp>,][<ack id>][JSON]`, each
//! carried in one Engine.IO message packet; a binary packet's attachments follow as
//! Engine.IO binary messages, and its JSON holds `{"_placeholder":true,"num":i}` where
//! they go. Arguments stay raw JSON (no reordering of object keys, no float rounding)
//! until the application asks for a type.

use bytes::Bytes;
use serde::de::DeserializeOwned;
use serde::Serialize;
use serde_json::value::RawValue;

/// A packet's type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// `0`: connect to a namespace (with an auth payload), or the server's accept.
    Connect,
    /// `1`: leave a namespace.
    Disconnect,
    /// `2`: an event.
    Event,
    /// `3`: the acknowledgement of an event.
    Ack,
    /// `4`: the server refused a namespace connection.
    ConnectError,
    /// `5`: an event with binary attachments.
    BinaryEvent,
    /// `6`: an acknowledgement with binary attachments.
    BinaryAck,
}

impl Kind {
    fn digit(self) -> u8 {
        b'0' + self as u8
    }

    fn of(d: u8) -> Option<Kind> {
        Some(match d {
            b'0' => Kind::Connect,
            b'1' => Kind::Disconnect,
            b'2' => Kind::Event,
            b'3' => Kind::Ack,
            b'4' => Kind::ConnectError,
            b'5' => Kind::BinaryEvent,
            b'6' => Kind::BinaryAck,
            _ => return None,
        })
    }
}

/// A malformed packet: the connection is closed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BadPacket(pub &'static str);

impl std::fmt::Display for BadPacket {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "invalid Socket.IO packet: {}", self.0)
    }
}

impl std::error::Error for BadPacket {}

/// Event or acknowledgement arguments: raw JSON values, and the binary attachments
/// their placeholders point at.
#[derive(Debug, Clone, Default)]
pub struct Args {
    values: Vec<Box<RawValue>>,
    attachments: Vec<Bytes>,
}

impl PartialEq for Args {
    fn eq(&self, other: &Self) -> bool {
        self.values.len() == other.values.len()
            && self
                .values
                .iter()
                .zip(&other.values)
                .all(|(a, b)| a.get() == b.get())
            && self.attachments == other.attachments
    }
}

fn raw<T: Serialize + ?Sized>(v: &T) -> Box<RawValue> {
    // Serializing plain data to JSON does not fail; a map with non-string keys would,
    // and becomes null.
    serde_json::value::to_raw_value(v).unwrap_or_else(|_| RawValue::NULL.to_owned())
}

impl Args {
    /// No arguments.
    pub fn new() -> Args {
        Args::default()
    }

    /// The elements of `v` if it serializes to an array (a tuple, a `Vec`), else `v`
    /// as the one argument.
    pub fn of<T: Serialize + ?Sized>(v: &T) -> Args {
        let r = raw(v);
        match serde_json::from_str::<Vec<Box<RawValue>>>(r.get()) {
            Ok(values) => Args {
                values,
                attachments: Vec::new(),
            },
            Err(_) => Args {
                values: vec![r],
                attachments: Vec::new(),
            },
        }
    }

    /// Add an argument.
    pub fn push<T: Serialize + ?Sized>(mut self, v: &T) -> Args {
        self.values.push(raw(v));
        self
    }

    /// Add raw JSON as an argument.
    pub fn push_raw(mut self, v: Box<RawValue>) -> Args {
        self.values.push(v);
        self
    }

    /// Add a binary argument (a `Buffer`/`ArrayBuffer` on the client).
    pub fn push_binary(mut self, data: Bytes) -> Args {
        let p = self.placeholder(data);
        self.values.push(raw(&p));
        self
    }

    /// Register `data` as an attachment and give the placeholder to put where it goes,
    /// at any depth of an argument.
    pub fn placeholder(&mut self, data: Bytes) -> serde_json::Value {
        self.attachments.push(data);
        serde_json::json!({"_placeholder": true, "num": self.attachments.len() - 1})
    }

    /// How many arguments.
    pub fn len(&self) -> usize {
        self.values.len()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.values.is_empty()
    }

    /// Argument `i` as raw JSON.
    pub fn raw(&self, i: usize) -> Option<&RawValue> {
        self.values.get(i).map(|v| &**v)
    }

    /// Argument `i` as a `T`.
    pub fn get<T: DeserializeOwned>(&self, i: usize) -> Option<T> {
        serde_json::from_str(self.values.get(i)?.get()).ok()
    }

    /// All arguments as one `T` (a tuple, a `Vec`, a struct from an array).
    pub fn parse<T: DeserializeOwned>(&self) -> Result<T, serde_json::Error> {
        serde_json::from_str(&self.to_json())
    }

    /// Argument `i` if it is binary (a placeholder): its bytes.
    pub fn binary(&self, i: usize) -> Option<&Bytes> {
        let p: Placeholder = serde_json::from_str(self.values.get(i)?.get()).ok()?;
        p.placeholder.then(|| self.attachments.get(p.num)).flatten()
    }

    /// The attachment a placeholder's `num` points at.
    pub fn attachment(&self, num: usize) -> Option<&Bytes> {
        self.attachments.get(num)
    }

    /// Every attachment, in order.
    pub fn attachments(&self) -> &[Bytes] {
        &self.attachments
    }

    /// Remove and return the last argument.
    pub fn pop(&mut self) -> Option<Box<RawValue>> {
        self.values.pop()
    }

    /// The arguments as a JSON array (placeholders where attachments go).
    pub fn to_json(&self) -> String {
        let mut s = String::from("[");
        for (i, v) in self.values.iter().enumerate() {
            if i > 0 {
                s.push(',');
            }
            s.push_str(v.get());
        }
        s.push(']');
        s
    }

    /// Take the attachments (to encode them).
    pub fn into_parts(self) -> (Vec<Box<RawValue>>, Vec<Bytes>) {
        (self.values, self.attachments)
    }

    /// Arguments from raw values and attachments.
    pub fn from_parts(values: Vec<Box<RawValue>>, attachments: Vec<Bytes>) -> Args {
        Args {
            values,
            attachments,
        }
    }
}

#[derive(serde::Deserialize)]
struct Placeholder {
    #[serde(rename = "_placeholder")]
    placeholder: bool,
    num: usize,
}

/// A decoded packet, before its attachments arrive.
#[derive(Debug, Clone)]
pub struct Packet {
    /// The type.
    pub kind: Kind,
    /// The namespace (`/` when absent).
    pub nsp: String,
    /// The acknowledgement id.
    pub id: Option<u64>,
    /// The JSON payload: the auth object (CONNECT), the arguments (EVENT, ACK, with the
    /// event name first for events), or nothing.
    pub data: Option<Box<RawValue>>,
    /// How many binary attachments follow.
    pub attachments: usize,
}

/// Decode a packet from an Engine.IO text message, checking its payload's shape.
/// `max_attachments` bounds the attachments a packet may announce.
pub fn decode(text: &str, max_attachments: usize) -> Result<Packet, BadPacket> {
    let b = text.as_bytes();
    let kind = b
        .first()
        .and_then(|&d| Kind::of(d))
        .ok_or(BadPacket("unknown packet type"))?;
    let mut i = 1;
    let mut attachments = 0;
    if matches!(kind, Kind::BinaryEvent | Kind::BinaryAck) {
        let start = i;
        while i < b.len() && b[i].is_ascii_digit() {
            i += 1;
        }
        if i == start || b.get(i) != Some(&b'-') {
            return Err(BadPacket("bad attachment count"));
        }
        attachments = text[start..i]
            .parse()
            .map_err(|_| BadPacket("bad attachment count"))?;
        if attachments > max_attachments {
            return Err(BadPacket("too many attachments"));
        }
        i += 1;
    }
    let mut nsp = "/".to_string();
    if b.get(i) == Some(&b'/') {
        let end = text[i..].find(',').map(|e| i + e).unwrap_or(b.len());
        nsp = text[i..end].to_string();
        i = (end + 1).min(b.len());
    }
    let start = i;
    while i < b.len() && b[i].is_ascii_digit() {
        i += 1;
    }
    let id = if i > start {
        Some(
            text[start..i]
                .parse()
                .map_err(|_| BadPacket("bad ack id"))?,
        )
    } else {
        None
    };
    let rest = &text[i..];
    let data: Option<Box<RawValue>> = if rest.is_empty() {
        None
    } else {
        Some(serde_json::from_str(rest).map_err(|_| BadPacket("invalid JSON"))?)
    };
    let first = data.as_ref().map(|d| d.get().trim_start().as_bytes()[0]);
    let valid = match kind {
        Kind::Connect => first.is_none_or(|c| c == b'{'),
        Kind::Disconnect => data.is_none(),
        Kind::Event | Kind::BinaryEvent => data.as_ref().is_some_and(|d| {
            serde_json::from_str::<Vec<Box<RawValue>>>(d.get())
                .ok()
                .and_then(|v| v.first().map(|e| e.get().starts_with('"')))
                .unwrap_or(false)
        }),
        Kind::Ack | Kind::BinaryAck => first == Some(b'[') && id.is_some(),
        Kind::ConnectError => first.is_some_and(|c| c == b'{' || c == b'"'),
    };
    if !valid {
        return Err(BadPacket("invalid payload"));
    }
    Ok(Packet {
        kind,
        nsp,
        id,
        data,
        attachments,
    })
}

/// The event name and arguments of an EVENT packet's data (checked by [`decode`]).
pub fn split_event(data: &RawValue) -> Option<(String, Vec<Box<RawValue>>)> {
    let mut v: Vec<Box<RawValue>> = serde_json::from_str(data.get()).ok()?;
    if v.is_empty() {
        return None;
    }
    let name: String = serde_json::from_str(v.remove(0).get()).ok()?;
    Some((name, v))
}

/// The arguments of an ACK packet's data.
pub fn ack_args(data: Option<&RawValue>) -> Vec<Box<RawValue>> {
    data.and_then(|d| serde_json::from_str(d.get()).ok())
        .unwrap_or_default()
}

/// Encode a packet's text: `kind`, attachment count for binary kinds, namespace, id,
/// then `json`.
pub fn encode(kind: Kind, nsp: &str, id: Option<u64>, attachments: usize, json: &str) -> String {
    let mut s = String::with_capacity(json.len() + nsp.len() + 24);
    let kind = match (kind, attachments) {
        (Kind::Event, n) if n > 0 => Kind::BinaryEvent,
        (Kind::Ack, n) if n > 0 => Kind::BinaryAck,
        (k, _) => k,
    };
    s.push(kind.digit() as char);
    if matches!(kind, Kind::BinaryEvent | Kind::BinaryAck) {
        s.push_str(&attachments.to_string());
        s.push('-');
    }
    if nsp != "/" {
        s.push_str(nsp);
        s.push(',');
    }
    if let Some(id) = id {
        s.push_str(&id.to_string());
    }
    s.push_str(json);
    s
}

/// The JSON array of an event: its name, then the arguments.
pub fn event_json(event: &str, args: &Args) -> String {
    let mut s = String::from("[");
    s.push_str(&serde_json::to_string(event).unwrap_or_else(|_| "\"\"".into()));
    for v in &args.values {
        s.push(',');
        s.push_str(v.get());
    }
    s.push(']');
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ok(t: &str) -> Packet {
        decode(t, 10).expect(t)
    }

    #[test]
    fn packets_decode_with_namespace_id_and_attachments() {
        let p =
            ok(r#"52-/admin,789["m",{"_placeholder":true,"num":0},{"_placeholder":true,"num":1}]"#);
        assert_eq!(
            (p.kind, p.nsp.as_str(), p.id, p.attachments),
            (Kind::BinaryEvent, "/admin", Some(789), 2)
        );
        let p = ok("0/random");
        assert_eq!(
            (p.kind, p.nsp.as_str(), p.data.is_none()),
            (Kind::Connect, "/random", true)
        );
        let p = ok(r#"0{"token":"123"}"#);
        assert_eq!(
            p.data.map(|d| d.get().to_string()).as_deref(),
            Some(r#"{"token":"123"}"#)
        );
        assert_eq!(ok("1/custom,").nsp, "/custom");
        let p = ok(r#"3456[1,"2"]"#);
        assert_eq!((p.kind, p.id), (Kind::Ack, Some(456)));
    }

    #[test]
    fn malformed_packets_are_refused() {
        for bad in [
            "abc",
            "7",
            "2{}",
            "2[]",
            "2[1]",
            r#"2abc["m"]"#,
            r#"5["m"]"#,
            r#"511-["m"]"#,
            "3[1]",
            "0[1]",
            "1{}",
            "",
        ] {
            assert!(decode(bad, 10).is_err(), "{bad}");
        }
    }

    #[test]
    fn raw_arguments_keep_their_text() {
        let p = ok(r#"2["message",1,"2",{"b":1,"a":[true]},1.0000000000000001]"#);
        let (name, args) = split_event(p.data.as_deref().expect("data")).expect("event");
        let args = Args::from_parts(args, Vec::new());
        assert_eq!(name, "message");
        assert_eq!(
            event_json("message-back", &args),
            r#"["message-back",1,"2",{"b":1,"a":[true]},1.0000000000000001]"#
        );
        assert_eq!(args.get::<u32>(0), Some(1));
        let (a, b): (u32, String) = Args::of(&(1, "x")).parse().expect("tuple");
        assert_eq!((a, b.as_str()), (1, "x"));
    }

    #[test]
    fn binary_arguments_become_placeholders() {
        let mut args = Args::new()
            .push(&"x")
            .push_binary(Bytes::from_static(b"\x01"));
        let nested = args.placeholder(Bytes::from_static(b"\x02"));
        let args = args.push(&serde_json::json!({ "deep": [nested] }));
        let json = event_json("e", &args);
        assert_eq!(
            encode(Kind::Event, "/", Some(3), args.attachments().len(), &json),
            r#"52-3["e","x",{"_placeholder":true,"num":0},{"deep":[{"_placeholder":true,"num":1}]}]"#
        );
        assert_eq!(args.binary(1).map(|b| &b[..]), Some(&b"\x01"[..]));
        assert_eq!(args.binary(0), None);
    }
}
