//! The native protocol's codec: commands decoded into one [`Command`] enum, replies and
//! pushes encoded as JSON text. Pure: no I/O, no hub state (fuzzable).

use base64::Engine as _;
use serde::Deserialize;
use serde_json::value::RawValue;
use serde_json::{json, Map, Value};

use crate::hub::client::ClientInfo;
use crate::hub::publication::{PayloadKind, Publication, StreamPosition};

/// Error codes of replies (`{"id":N,"error":{"code":C,"message":"..."}}`).
pub mod codes {
    /// The server failed.
    pub const INTERNAL: u16 = 100;
    /// No or a bad token where one is needed.
    pub const UNAUTHORIZED: u16 = 101;
    /// The channel (or its namespace) does not exist.
    pub const UNKNOWN_CHANNEL: u16 = 102;
    /// The client may not do this.
    pub const PERMISSION_DENIED: u16 = 103;
    /// No such command.
    pub const METHOD_NOT_FOUND: u16 = 104;
    /// Already subscribed to the channel.
    pub const ALREADY_SUBSCRIBED: u16 = 105;
    /// A limit was exceeded.
    pub const LIMIT_EXCEEDED: u16 = 106;
    /// The command is malformed.
    pub const BAD_REQUEST: u16 = 107;
    /// The feature is off for this channel's namespace.
    pub const NOT_AVAILABLE: u16 = 108;
    /// The connection token expired.
    pub const TOKEN_EXPIRED: u16 = 109;
    /// Not subscribed to the channel.
    pub const NOT_SUBSCRIBED: u16 = 110;
    /// The backplane is unavailable; the command was not done and may be retried.
    pub const UNAVAILABLE: u16 = 111;
    /// `history`'s `since` names another epoch of the stream (it was reset: the server
    /// restarted, say); its offsets mean nothing now.
    pub const EPOCH_CHANGED: u16 = 112;
    /// No such client (HTTP API `disconnect` and `unsubscribe` by client id).
    pub const UNKNOWN_CLIENT: u16 = 113;
    /// Over the connection's rate of commands (`HubConfig::commands`): slow down.
    pub const TOO_MANY_REQUESTS: u16 = 114;
}

/// Close codes of the native protocol (RFC 6455 §7.4.2 private range).
pub mod close {
    /// Repeated malformed commands.
    pub const BAD_REQUEST: u16 = 3001;
    /// The outbound queue overflowed: reconnect and recover.
    pub const SLOW_CONSUMER: u16 = 3008;
    /// The first command was not `connect`.
    pub const NOT_CONNECTED: u16 = 3009;
    /// Commands kept coming far over the rate (more than `max_refused` refused).
    pub const TOO_MANY_COMMANDS: u16 = 3010;
    /// The node may have missed publications (its backplane link dropped): reconnect
    /// and recover.
    pub const INSUFFICIENT_STATE: u16 = crate::hub::queue::INSUFFICIENT_STATE;
}

/// `connect`'s arguments.
#[derive(Debug, Deserialize, Default, PartialEq, Eq)]
pub struct ConnectReq {
    /// A connection token.
    #[serde(default)]
    pub token: Option<String>,
    /// The client library's name.
    #[serde(default)]
    pub name: String,
    /// The client library's version.
    #[serde(default)]
    pub version: String,
    /// Free-form info shown in presence.
    #[serde(default)]
    pub info: String,
}

/// Arguments naming one channel.
#[derive(Debug, Deserialize, PartialEq, Eq)]
pub struct ChannelReq {
    /// The channel.
    pub channel: String,
}

/// `subscribe`'s arguments.
#[derive(Debug, Deserialize, PartialEq, Eq)]
pub struct SubscribeReq {
    /// The channel.
    pub channel: String,
    /// A channel token (private channels).
    #[serde(default)]
    pub token: Option<String>,
    /// Recover from `offset` and `epoch`.
    #[serde(default)]
    pub recover: bool,
    /// The last offset seen.
    #[serde(default)]
    pub offset: u64,
    /// The epoch of that offset.
    #[serde(default)]
    pub epoch: String,
}

/// `publish`'s arguments.
#[derive(Debug, Deserialize)]
pub struct PublishReq {
    /// The channel.
    pub channel: String,
    /// Any JSON value, kept as its text.
    pub data: Box<RawValue>,
}

/// `history`'s arguments.
#[derive(Debug, Deserialize, PartialEq, Eq)]
pub struct HistoryReq {
    /// The channel.
    pub channel: String,
    /// Most publications (default 100).
    #[serde(default = "default_limit")]
    pub limit: usize,
    /// Only publications after this position.
    #[serde(default)]
    pub since: Option<SinceReq>,
    /// Newest first.
    #[serde(default)]
    pub reverse: bool,
}

/// A position in `history`'s `since`.
#[derive(Debug, Deserialize, PartialEq, Eq)]
pub struct SinceReq {
    /// The last offset seen.
    pub offset: u64,
    /// Its epoch ("" not checked).
    #[serde(default)]
    pub epoch: String,
}

fn default_limit() -> usize {
    100
}

/// One command.
#[derive(Debug)]
pub enum Command {
    /// `connect`.
    Connect(ConnectReq),
    /// `subscribe`.
    Subscribe(SubscribeReq),
    /// `unsubscribe`.
    Unsubscribe(ChannelReq),
    /// `publish`.
    Publish(PublishReq),
    /// `presence`.
    Presence(ChannelReq),
    /// `presence_stats`.
    PresenceStats(ChannelReq),
    /// `history`.
    History(HistoryReq),
    /// `ping`.
    Ping,
}

impl Command {
    /// The method name, which keys the reply.
    pub fn method(&self) -> &'static str {
        match self {
            Command::Connect(_) => "connect",
            Command::Subscribe(_) => "subscribe",
            Command::Unsubscribe(_) => "unsubscribe",
            Command::Publish(_) => "publish",
            Command::Presence(_) => "presence",
            Command::PresenceStats(_) => "presence_stats",
            Command::History(_) => "history",
            Command::Ping => "ping",
        }
    }
}

/// Why a command could not be decoded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DecodeError {
    /// Not a JSON object.
    Malformed(String),
    /// An `id` that is not a non-negative integer.
    BadId,
    /// No method key.
    NoCommand,
    /// More than one method key.
    SeveralCommands(Vec<String>),
    /// A method this server does not know.
    UnknownMethod(String),
    /// The method's arguments are wrong.
    BadArguments {
        /// The method.
        method: &'static str,
        /// What is wrong.
        why: String,
    },
}

impl DecodeError {
    /// The reply's error code.
    pub fn code(&self) -> u16 {
        match self {
            DecodeError::UnknownMethod(_) => codes::METHOD_NOT_FOUND,
            _ => codes::BAD_REQUEST,
        }
    }
}

impl std::fmt::Display for DecodeError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            DecodeError::Malformed(why) => write!(f, "malformed JSON: {why}"),
            DecodeError::BadId => f.write_str("`id` must be a non-negative integer"),
            DecodeError::NoCommand => f.write_str("no command"),
            DecodeError::SeveralCommands(m) => {
                write!(f, "one command per message, got {}", m.join(", "))
            }
            DecodeError::UnknownMethod(m) => write!(f, "unknown command `{m}`"),
            DecodeError::BadArguments { method, why } => write!(f, "bad `{method}`: {why}"),
        }
    }
}

#[derive(Deserialize)]
struct Envelope {
    #[serde(default)]
    id: Option<Value>,
    #[serde(flatten)]
    methods: Map<String, Value>,
}

fn args<T: for<'de> Deserialize<'de>>(method: &'static str, body: Value) -> Result<T, DecodeError> {
    serde_json::from_value(body).map_err(|e| DecodeError::BadArguments {
        method,
        why: e.to_string(),
    })
}

/// Decode one command: its `id` (`None` when absent or unreadable: the reply then has
/// none) and the command.
pub fn decode(text: &str) -> (Option<u64>, Result<Command, DecodeError>) {
    let env: Envelope = match serde_json::from_str(text) {
        Ok(e) => e,
        Err(e) => return (None, Err(DecodeError::Malformed(e.to_string()))),
    };
    let id = match env.id {
        None => None,
        Some(v) => match v.as_u64() {
            Some(id) => Some(id),
            None => return (None, Err(DecodeError::BadId)),
        },
    };
    let mut methods = env.methods.into_iter();
    let (method, body) = match (methods.next(), methods.len()) {
        (None, _) => return (id, Err(DecodeError::NoCommand)),
        (Some(first), 0) => first,
        (Some((first, _)), _) => {
            let mut all = vec![first];
            all.extend(methods.map(|(k, _)| k));
            return (id, Err(DecodeError::SeveralCommands(all)));
        }
    };
    let command = match method.as_str() {
        "connect" => args("connect", body).map(Command::Connect),
        "subscribe" => args("subscribe", body).map(Command::Subscribe),
        "unsubscribe" => args("unsubscribe", body).map(Command::Unsubscribe),
        "publish" => args("publish", body).map(Command::Publish),
        "presence" => args("presence", body).map(Command::Presence),
        "presence_stats" => args("presence_stats", body).map(Command::PresenceStats),
        "history" => args("history", body).map(Command::History),
        "ping" => Ok(Command::Ping),
        _ => Err(DecodeError::UnknownMethod(method)),
    };
    (id, command)
}

/// A successful reply (with the command's `id`, if it had one).
pub fn reply(id: Option<u64>, method: &str, result: Value) -> String {
    match id {
        Some(id) => json!({ "id": id, method: result }),
        None => json!({ method: result }),
    }
    .to_string()
}

/// An error reply (with the command's `id`, if it had one).
pub fn error_reply(id: Option<u64>, code: u16, message: &str) -> String {
    let error = json!({ "code": code, "message": message });
    match id {
        Some(id) => json!({ "id": id, "error": error }),
        None => json!({ "error": error }),
    }
    .to_string()
}

/// A publication's `data` as JSON text, by the payload rules of `docs/protocol.md`:
/// JSON as it is, text as a JSON string, binary as a base64 string (and `true`: the
/// push then says `"encoding": "base64"`).
fn data_text(p: &Publication) -> (String, bool) {
    match p.kind {
        PayloadKind::Json => match std::str::from_utf8(&p.data) {
            Ok(s) => (s.to_string(), false),
            Err(_) => ("null".to_string(), false),
        },
        PayloadKind::Text => (
            Value::String(String::from_utf8_lossy(&p.data).into_owned()).to_string(),
            false,
        ),
        PayloadKind::Binary => (
            Value::String(base64::engine::general_purpose::STANDARD.encode(&p.data)).to_string(),
            true,
        ),
    }
}

/// The `pub` object: `{"offset":N,"data":…}` (plus `"encoding":"base64"` for binary).
fn pub_object(p: &Publication) -> String {
    let (data, base64) = data_text(p);
    let encoding = if base64 {
        ",\"encoding\":\"base64\""
    } else {
        ""
    };
    format!("{{\"offset\":{},\"data\":{data}{encoding}}}", p.offset)
}

/// A `pub` push.
pub fn publication_push(channel: &str, p: &Publication) -> String {
    format!(
        "{{\"push\":{{\"channel\":{},\"pub\":{}}}}}",
        Value::String(channel.to_string()),
        pub_object(p)
    )
}

/// A `join` or `leave` push.
pub fn presence_push(kind: &str, channel: &str, info: &ClientInfo) -> String {
    json!({ "push": { "channel": channel, kind: client_json(info) } }).to_string()
}

/// An `unsubscribe` push (the server removed the subscription).
pub fn unsubscribe_push(channel: &str) -> String {
    json!({ "push": { "channel": channel, "unsubscribe": {} } }).to_string()
}

/// A `disconnect` push.
pub fn disconnect_push(code: u16, reason: &str, reconnect: bool) -> String {
    json!({ "push": { "disconnect": { "code": code, "reason": reason, "reconnect": reconnect } } })
        .to_string()
}

/// A client as presence shows it (native replies, pushes and the HTTP API).
pub fn client_json(m: &ClientInfo) -> Value {
    json!({
        "client": m.client.to_string(),
        "user": m.user,
        "name": m.name,
        "info": m.info,
        "protocol": m.protocol,
        "transport": m.transport,
    })
}

/// The `presence` result: members by client id.
pub fn presence_json(members: &[std::sync::Arc<ClientInfo>]) -> Value {
    let map: Map<String, Value> = members
        .iter()
        .map(|m| (m.client.to_string(), client_json(m)))
        .collect();
    json!({ "presence": map })
}

/// The `subscribe` result: the stream position and, with recovery asked, whether it
/// recovered.
pub fn subscribed_json(r: &crate::hub::broker::Subscribed) -> Value {
    let mut out = Map::new();
    if let Some(p) = &r.position {
        out.insert("offset".into(), json!(p.offset));
        out.insert("epoch".into(), json!(p.epoch));
    }
    if let Some(rec) = r.recovered {
        out.insert("recovered".into(), json!(rec));
    }
    Value::Object(out)
}

/// The `history` result.
pub fn history_json(pubs: &[std::sync::Arc<Publication>], pos: &StreamPosition) -> Value {
    let pubs: Vec<Value> = pubs
        .iter()
        .map(|p| serde_json::from_str(&pub_object(p)).unwrap_or(Value::Null))
        .collect();
    json!({ "publications": pubs, "offset": pos.offset, "epoch": pos.epoch })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hub::publication::Payload;

    #[test]
    fn two_method_keys_are_a_bad_request_not_one_of_them() {
        let (id, r) = decode(r#"{"id":2,"subscribe":{"channel":"a"},"history":{"channel":"a"}}"#);
        assert_eq!(id, Some(2));
        let e = r.unwrap_err();
        assert_eq!(e.code(), codes::BAD_REQUEST);
        assert!(
            matches!(&e, DecodeError::SeveralCommands(m) if m.len() == 2),
            "{e:?}"
        );
    }

    #[test]
    fn unknown_methods_and_bad_arguments_have_their_codes() {
        let (_, r) = decode(r#"{"id":1,"fly":{}}"#);
        assert_eq!(r.unwrap_err().code(), codes::METHOD_NOT_FOUND);
        let (_, r) = decode(r#"{"id":1,"subscribe":{}}"#);
        let e = r.unwrap_err();
        assert_eq!(e.code(), codes::BAD_REQUEST);
        assert!(
            e.to_string().starts_with("bad `subscribe`: missing field"),
            "{e}"
        );
        let (_, r) = decode(r#"{"id":1}"#);
        assert_eq!(r.unwrap_err(), DecodeError::NoCommand);
        let (id, r) = decode("not json");
        assert_eq!(id, None);
        assert!(matches!(r, Err(DecodeError::Malformed(_))));
        let (id, r) = decode(r#"{"id":"7","ping":{}}"#);
        assert_eq!((id, r.unwrap_err()), (None, DecodeError::BadId));
        let (id, r) = decode(r#"{"ping":{}}"#);
        assert_eq!(id, None);
        assert!(r.is_ok());
        assert_eq!(reply(None, "ping", json!({})), r#"{"ping":{}}"#);
    }

    #[test]
    fn commands_decode_into_their_variant() {
        let (id, r) =
            decode(r#"{"id":7,"subscribe":{"channel":"c","recover":true,"offset":3,"epoch":"e"}}"#);
        assert_eq!(id, Some(7));
        let Ok(Command::Subscribe(s)) = r else {
            panic!("{r:?}")
        };
        assert_eq!((s.channel.as_str(), s.recover, s.offset), ("c", true, 3));
        assert!(matches!(
            decode(r#"{"id":1,"ping":{}}"#).1,
            Ok(Command::Ping)
        ));
    }

    #[test]
    fn payload_kinds_become_json_data() {
        let json = Publication::new(1, Payload::json(r#"{"a":1}"#));
        assert_eq!(
            publication_push("c", &json),
            r#"{"push":{"channel":"c","pub":{"offset":1,"data":{"a":1}}}}"#
        );
        let text = Publication::new(2, Payload::text("he said \"hi\""));
        let v: Value = serde_json::from_str(&publication_push("c", &text)).unwrap();
        assert_eq!(v["push"]["pub"]["data"], "he said \"hi\"");
        let bin = Publication::new(3, Payload::binary(vec![0u8, 0xff, 1]));
        let v: Value = serde_json::from_str(&publication_push("c", &bin)).unwrap();
        assert_eq!(v["push"]["pub"]["data"], "AP8B");
        assert_eq!(v["push"]["pub"]["encoding"], "base64");
    }
}
