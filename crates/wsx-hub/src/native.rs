//! The native protocol: JSON commands over a raw WebSocket (`/connection/websocket`).
//! See `docs/protocol.md` for every command with an example.
//!
//! Codec (this module's first half) is pure parsing and encoding; the session (second
//! half) maps commands onto the [`Broker`](crate::Broker) and drains the connection's
//! outbound queue.

use crate::backplane::HistoryQuery;
use std::sync::Arc;

use bytes::Bytes;
use futures_util::StreamExt;
use serde::Deserialize;
use serde_json::value::RawValue;
use serde_json::{json, Value};
use tokio::io::{AsyncRead, AsyncWrite};
use wsx::{CloseCode, Message, SharedFrame, WebSocket};

use crate::broker::{BrokerError, ClientInfo};
use crate::channel::ChannelName;
use crate::history::{Publication, StreamPosition};
use crate::hub::Hub;
use crate::queue::{Delivery, Outbound};

/// Error codes of replies (`{"id":N,"error":{"code":C,"message":"..."}}`).
pub mod codes {
    /// The server failed.
    pub const INTERNAL: u16 = 100;
    /// No or a bad token where one is needed.
    pub const UNAUTHORIZED: u16 = 101;
    /// The channel does not exist.
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
}

/// Close codes of the native protocol (RFC 6455 §7.4.2 private range).
pub mod close {
    /// Repeated malformed commands.
    pub const BAD_REQUEST: u16 = 3001;
    /// The outbound queue overflowed: reconnect and recover.
    pub const SLOW_CONSUMER: u16 = 3008;
    /// The first command was not `connect`.
    pub const NOT_CONNECTED: u16 = 3009;
}

/// How many malformed commands a connection may send before it is closed.
pub const MAX_BAD_COMMANDS: u32 = 10;

#[derive(Debug, Deserialize)]
struct Command {
    #[serde(default)]
    id: u64,
    #[serde(flatten)]
    method: serde_json::Map<String, Value>,
}

#[derive(Debug, Deserialize, Default)]
struct ConnectReq {
    #[serde(default)]
    token: Option<String>,
    #[serde(default)]
    name: String,
    #[serde(default)]
    version: String,
    #[serde(default)]
    info: String,
}

#[derive(Debug, Deserialize)]
struct ChannelReq {
    channel: String,
}

#[derive(Debug, Deserialize)]
struct SubscribeReq {
    channel: String,
    #[serde(default)]
    token: Option<String>,
    #[serde(default)]
    recover: bool,
    #[serde(default)]
    offset: u64,
    #[serde(default)]
    epoch: String,
}

#[derive(Debug, Deserialize)]
struct PublishReq {
    channel: String,
    data: Box<RawValue>,
}

#[derive(Debug, Deserialize)]
struct HistoryReq {
    channel: String,
    #[serde(default = "default_limit")]
    limit: usize,
    #[serde(default)]
    since: Option<SinceReq>,
    #[serde(default)]
    reverse: bool,
}

#[derive(Debug, Deserialize)]
struct SinceReq {
    offset: u64,
    #[serde(default)]
    epoch: String,
}

fn default_limit() -> usize {
    100
}

/// A reply error.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReplyError {
    /// One of [`codes`].
    pub code: u16,
    /// A human-readable message.
    pub message: String,
}

pub(crate) fn err(code: u16, message: impl Into<String>) -> ReplyError {
    ReplyError {
        code,
        message: message.into(),
    }
}

impl From<BrokerError> for ReplyError {
    fn from(e: BrokerError) -> Self {
        match e {
            BrokerError::AlreadySubscribed => err(codes::ALREADY_SUBSCRIBED, "already subscribed"),
            BrokerError::NotSubscribed => err(codes::NOT_SUBSCRIBED, "not subscribed"),
            BrokerError::UnknownChannel => err(codes::UNKNOWN_CHANNEL, "unknown channel"),
            BrokerError::NotAvailable => {
                err(codes::NOT_AVAILABLE, "not available for this channel")
            }
        }
    }
}

fn reply(id: u64, method: &str, result: Value) -> String {
    json!({ "id": id, method: result }).to_string()
}

fn error_reply(id: u64, e: &ReplyError) -> String {
    json!({ "id": id, "error": { "code": e.code, "message": e.message } }).to_string()
}

fn publication_push(channel: &str, p: &Publication) -> String {
    // The payload is JSON text already: embed it without re-parsing.
    let data = std::str::from_utf8(&p.data).unwrap_or("null");
    format!(
        "{{\"push\":{{\"channel\":{},\"pub\":{{\"offset\":{},\"data\":{}}}}}}}",
        Value::String(channel.to_string()),
        p.offset,
        data
    )
}

fn presence_push(kind: &str, channel: &str, info: &ClientInfo) -> String {
    json!({ "push": { "channel": channel, kind: client_json(info) } }).to_string()
}

/// A client as presence shows it (native replies, pushes and the HTTP API).
pub(crate) fn client_json(m: &ClientInfo) -> Value {
    json!({ "client": m.client.to_string(), "user": m.user, "name": m.name, "info": m.info })
}

/// The `presence` result: members by client id.
pub(crate) fn presence_json(members: &[Arc<ClientInfo>]) -> Value {
    let map: serde_json::Map<String, Value> = members
        .iter()
        .map(|m| (m.client.to_string(), client_json(m)))
        .collect();
    json!({ "presence": map })
}

/// The `history` result.
pub(crate) fn history_json(pubs: &[Arc<Publication>], pos: &StreamPosition) -> Value {
    let pubs: Vec<Value> = pubs
        .iter()
        .map(|p| json!({ "offset": p.offset, "data": serde_json::from_slice::<Value>(&p.data).unwrap_or(Value::Null) }))
        .collect();
    json!({ "publications": pubs, "offset": pos.offset, "epoch": pos.epoch })
}

pub(crate) fn channel(name: &str) -> Result<ChannelName, ReplyError> {
    ChannelName::parse(name)
        .map_err(|e| err(codes::BAD_REQUEST, format!("bad channel name: {e:?}")))
}

fn parse<T: for<'de> Deserialize<'de>>(v: Value) -> Result<T, ReplyError> {
    serde_json::from_value(v).map_err(|e| err(codes::BAD_REQUEST, e.to_string()))
}

/// One native-protocol connection.
pub struct Session {
    hub: Arc<Hub>,
    info: Arc<ClientInfo>,
    queue: Arc<Outbound>,
    connected: bool,
    subscriptions: Vec<String>,
    bad_commands: u32,
}

/// What handling a command asks of the connection.
enum Outcome {
    Reply(String),
    Close(u16, &'static str),
}

impl Session {
    /// A session for a new connection of `user` (empty: anonymous).
    pub fn new(hub: Arc<Hub>, user: String) -> Session {
        let client = hub.next_client_id();
        let queue = Outbound::new(hub.config().queue);
        hub.register(client, &user, queue.clone());
        Session {
            info: Arc::new(ClientInfo {
                client,
                user,
                name: String::new(),
                info: String::new(),
            }),
            hub,
            queue,
            connected: false,
            subscriptions: Vec::new(),
            bad_commands: 0,
        }
    }

    async fn handle(&mut self, text: &str) -> Outcome {
        self.count_in(text.len());
        let cmd: Command = match serde_json::from_str(text) {
            Ok(c) => c,
            Err(e) => return self.bad(0, err(codes::BAD_REQUEST, format!("malformed JSON: {e}"))),
        };
        let id = cmd.id;
        let Some((method, body)) = cmd.method.into_iter().next() else {
            return self.bad(id, err(codes::BAD_REQUEST, "no command"));
        };
        if !self.connected && method != "connect" {
            return Outcome::Close(close::NOT_CONNECTED, "connect first");
        }
        match self.dispatch(&method, body).await {
            Ok(result) => Outcome::Reply(reply(id, &method, result)),
            Err(e) if e.code == codes::METHOD_NOT_FOUND || e.code == codes::BAD_REQUEST => {
                self.bad(id, e)
            }
            Err(e) => Outcome::Reply(error_reply(id, &e)),
        }
    }

    fn bad(&mut self, id: u64, e: ReplyError) -> Outcome {
        self.bad_commands += 1;
        if self.bad_commands > MAX_BAD_COMMANDS {
            Outcome::Close(close::BAD_REQUEST, "too many bad commands")
        } else {
            Outcome::Reply(error_reply(id, &e))
        }
    }

    async fn dispatch(&mut self, method: &str, body: Value) -> Result<Value, ReplyError> {
        let hub = self.hub.clone();
        match method {
            "connect" => {
                if self.connected {
                    return Err(err(codes::BAD_REQUEST, "already connected"));
                }
                let req: ConnectReq = parse(body)?;
                let claims = self
                    .hub
                    .config()
                    .auth
                    .verify(req.token.as_deref())
                    .map_err(|e| match e {
                        crate::auth::TokenError::Expired => {
                            err(codes::TOKEN_EXPIRED, "token expired")
                        }
                        crate::auth::TokenError::Missing => {
                            err(codes::UNAUTHORIZED, "a token is required")
                        }
                        crate::auth::TokenError::Invalid(why) => {
                            err(codes::UNAUTHORIZED, format!("invalid token: {why}"))
                        }
                    })?;
                let max = self.hub.config().max_info_size;
                if req.info.len() > max || req.name.len() > max {
                    return Err(err(
                        codes::LIMIT_EXCEEDED,
                        format!("name and info are limited to {max} bytes"),
                    ));
                }
                let mut subscribed = Vec::new();
                self.info = Arc::new(ClientInfo {
                    client: self.info.client,
                    user: claims.as_ref().map(|c| c.sub.clone()).unwrap_or_default(),
                    name: req.name,
                    info: req.info,
                });
                if let Some(c) = &claims {
                    self.hub
                        .register(self.info.client, &c.sub, self.queue.clone());
                }
                self.connected = true;
                // Channels the token grants are subscribed at once.
                for name in claims.map(|c| c.channels).unwrap_or_default() {
                    let ch = channel(&name)?;
                    let opts = self.hub.options(&ch);
                    hub.subscribe(&ch, &opts, self.info.clone(), self.queue.clone(), None)
                        .await?;
                    self.subscriptions.push(name.clone());
                    subscribed.push(name);
                }
                let _ = req.version;
                Ok(json!({
                    "client": self.info.client.to_string(),
                    "user": self.info.user,
                    "version": env!("CARGO_PKG_VERSION"),
                    "ping": self.hub.config().ping_interval_secs,
                    "subscribed": subscribed,
                }))
            }
            "subscribe" => {
                let req: SubscribeReq = parse(body)?;
                let ch = channel(&req.channel)?;
                if self.subscriptions.len() >= self.hub.config().max_subscriptions {
                    return Err(err(codes::LIMIT_EXCEEDED, "too many subscriptions"));
                }
                let opts = self.hub.options(&ch);
                self.may_subscribe(&ch, &opts, req.token.as_deref())?;
                if req.recover && !(opts.recovery && opts.history_size > 0) {
                    return Err(err(
                        codes::NOT_AVAILABLE,
                        "recovery is off for this namespace",
                    ));
                }
                let pos = req.recover.then(|| StreamPosition {
                    offset: req.offset,
                    epoch: req.epoch.clone(),
                });
                let r = hub
                    .subscribe(
                        &ch,
                        &opts,
                        self.info.clone(),
                        self.queue.clone(),
                        pos.as_ref(),
                    )
                    .await?;
                self.subscriptions.push(req.channel);
                self.hub
                    .metrics()
                    .subscriptions
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                let mut out = serde_json::Map::new();
                if let Some(p) = r.position {
                    out.insert("offset".into(), json!(p.offset));
                    out.insert("epoch".into(), json!(p.epoch));
                }
                if let Some(rec) = r.recovered {
                    out.insert("recovered".into(), json!(rec));
                }
                Ok(Value::Object(out))
            }
            "unsubscribe" => {
                let req: ChannelReq = parse(body)?;
                if !self.subscriptions.contains(&req.channel) {
                    return Err(BrokerError::NotSubscribed.into());
                }
                hub.unsubscribe_client(&req.channel, self.info.client)
                    .await?;
                self.subscriptions.retain(|c| *c != req.channel);
                self.hub
                    .metrics()
                    .subscriptions
                    .fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
                Ok(json!({}))
            }
            "publish" => {
                let req: PublishReq = parse(body)?;
                let ch = channel(&req.channel)?;
                if !self.hub.options(&ch).client_publish {
                    return Err(err(
                        codes::PERMISSION_DENIED,
                        "clients may not publish here",
                    ));
                }
                let restricted = ch.name().starts_with('$') || ch.name().contains('#');
                if restricted && !self.subscriptions.contains(&req.channel) {
                    return Err(err(
                        codes::PERMISSION_DENIED,
                        "subscribe to this channel first",
                    ));
                }
                let p = hub
                    .publish(
                        &req.channel,
                        Bytes::from(req.data.get().as_bytes().to_vec()),
                    )
                    .await?;
                Ok(json!({ "offset": p.offset }))
            }
            "presence" => {
                let req: ChannelReq = parse(body)?;
                Ok(presence_json(&hub.presence(&req.channel).await?))
            }
            "presence_stats" => {
                let req: ChannelReq = parse(body)?;
                let (clients, users) = hub.presence_stats(&req.channel).await?;
                Ok(json!({ "num_clients": clients, "num_users": users }))
            }
            "history" => {
                let req: HistoryReq = parse(body)?;
                let page = hub
                    .history(
                        &req.channel,
                        HistoryQuery {
                            limit: req.limit,
                            since: req.since.as_ref().map(|s| s.offset),
                            reverse: req.reverse,
                        },
                    )
                    .await?;
                if let Some(s) = &req.since {
                    if s.epoch != page.position.epoch && !s.epoch.is_empty() {
                        return Err(err(codes::UNKNOWN_CHANNEL, "epoch changed"));
                    }
                }
                Ok(history_json(&page.publications, &page.position))
            }
            "ping" => Ok(json!({})),
            other => Err(err(
                codes::METHOD_NOT_FOUND,
                format!("unknown command `{other}`"),
            )),
        }
    }

    /// Namespace, user-limited (`name#user1,user2`) and private (`$name`, with a channel
    /// token) rules.
    fn may_subscribe(
        &self,
        ch: &ChannelName,
        opts: &crate::broker::ChannelOptions,
        token: Option<&str>,
    ) -> Result<(), ReplyError> {
        let user = self.info.user.as_str();
        if user.is_empty() && !opts.anonymous_subscribe {
            return Err(err(
                codes::PERMISSION_DENIED,
                "anonymous connections may not subscribe here",
            ));
        }
        if let Some((_, users)) = ch.name().split_once('#') {
            if user.is_empty() || !users.split(',').any(|u| u == user) {
                return Err(err(
                    codes::PERMISSION_DENIED,
                    "this channel is limited to other users",
                ));
            }
        }
        if ch.name().starts_with('$') {
            let token = token
                .ok_or_else(|| err(codes::PERMISSION_DENIED, "a channel token is required"))?;
            self.hub
                .config()
                .auth
                .verify_channel(token, user, ch.as_str())
                .map_err(|e| {
                    err(
                        codes::PERMISSION_DENIED,
                        format!("channel token refused: {e:?}"),
                    )
                })?;
        }
        Ok(())
    }

    fn count_in(&self, bytes: usize) {
        use std::sync::atomic::Ordering::Relaxed;
        self.hub.metrics().messages_in.fetch_add(1, Relaxed);
        self.hub.metrics().bytes_in.fetch_add(bytes as u64, Relaxed);
    }

    fn count_out(&self, bytes: usize) {
        use std::sync::atomic::Ordering::Relaxed;
        self.hub.metrics().messages_out.fetch_add(1, Relaxed);
        self.hub
            .metrics()
            .bytes_out
            .fetch_add(bytes as u64, Relaxed);
    }

    fn frame_for(&self, d: &Delivery) -> SharedFrame {
        match d {
            Delivery::Publication {
                channel,
                publication,
            } => publication
                .native_frame
                .get_or_init(|| SharedFrame::text(&publication_push(channel, publication)))
                .clone(),
            Delivery::Join {
                channel,
                info,
                native_frame,
            } => native_frame
                .get_or_init(|| SharedFrame::text(&presence_push("join", channel, info)))
                .clone(),
            Delivery::Leave {
                channel,
                info,
                native_frame,
            } => native_frame
                .get_or_init(|| SharedFrame::text(&presence_push("leave", channel, info)))
                .clone(),
            Delivery::Unsubscribed { channel } => SharedFrame::text(
                &json!({ "push": { "channel": channel.as_ref(), "unsubscribe": {} } }).to_string(),
            ),
        }
    }

    /// Run the session over an accepted WebSocket until either side closes.
    pub async fn run<S: AsyncRead + AsyncWrite + Unpin>(self, ws: WebSocket<S>) {
        self.run_until(ws, std::future::pending()).await
    }

    /// [`run`](Self::run), closing with 1001 when `stop` resolves (server shutdown).
    pub async fn run_until<S, F>(mut self, mut ws: WebSocket<S>, stop: F)
    where
        S: AsyncRead + AsyncWrite + Unpin,
        F: std::future::Future<Output = ()>,
    {
        tokio::pin!(stop);
        loop {
            tokio::select! {
                _ = &mut stop => {
                    let _ = ws.close(CloseCode::GOING_AWAY, "server shutting down").await;
                    break;
                }
                msg = ws.next() => {
                    let outcome = match msg {
                        Some(Ok(Message::Text(t))) => self.handle(t.as_str()).await,
                        Some(Ok(Message::Binary(_))) => {
                            self.bad(0, err(codes::BAD_REQUEST, "binary frames are not commands"))
                        }
                        Some(Ok(_)) => continue,
                        Some(Err(_)) | None => break,
                    };
                    match outcome {
                        Outcome::Reply(r) => {
                            self.count_out(r.len());
                            let write = tokio::time::timeout(self.hub.config().write_timeout, ws.feed(Message::text(r)));
                            if !matches!(write.await, Ok(Ok(()))) {
                                break;
                            }
                        }
                        Outcome::Close(code, reason) => {
                            let _ = ws.close(CloseCode(code), reason).await;
                            break;
                        }
                    }
                }
                d = std::future::poll_fn(|cx| self.queue.poll_next(cx)) => match d {
                    Some(Ok(d)) => {
                        if let Delivery::Unsubscribed { channel } = &d {
                            if let Some(i) = self.subscriptions.iter().position(|c| c.as_str() == channel.as_ref()) {
                                self.subscriptions.swap_remove(i);
                                self.hub.metrics().subscriptions.fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
                            }
                        }
                        let frame = self.frame_for(&d);
                        self.count_out(frame.payload_len());
                        let write = tokio::time::timeout(self.hub.config().write_timeout, ws.send_shared(&frame));
                        if !matches!(write.await, Ok(Ok(()))) {
                            break;
                        }
                    }
                    Some(Err(d)) => {
                        if d.code == close::SLOW_CONSUMER {
                            self.hub.metrics().slow_consumers.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        }
                        let push = json!({ "push": { "disconnect": { "code": d.code, "reason": d.reason, "reconnect": d.reconnect } } });
                        let _ = ws.feed(Message::text(push.to_string())).await;
                        let _ = ws.close(CloseCode(d.code), &d.reason).await;
                        break;
                    }
                    None => break,
                },
            }
        }
        self.queue.close();
        self.hub.unregister(self.info.client);
        for ch in std::mem::take(&mut self.subscriptions) {
            let _ = self.hub.unsubscribe_client(&ch, self.info.client).await;
            self.hub
                .metrics()
                .subscriptions
                .fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
        }
    }
}
