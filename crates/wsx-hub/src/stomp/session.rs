//! One STOMP session: frames in, frames out, mapped onto a protocol-neutral
//! [`HubSession`]. Transport-independent (WebSocket or TCP) and clock-independent:
//! bytes and the time go in, frames to send and a close come out.

use std::collections::HashMap;
use std::sync::{Arc, LazyLock, OnceLock};
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use wsx::SharedFrame;

use super::frame::{self, Command, Decoder, Frame, FrameError, Item, Limits, Version};
use super::heartbeat::{self, Beat, HeartBeat};
use crate::hub::auth::{same_secret, TokenError};
use crate::hub::error::HubError;
use crate::hub::publication::{EncodingSlot, Payload, PayloadKind, Publication, StreamPosition};
use crate::hub::queue::{Delivery, Disconnect};
use crate::hub::rate::{Bucket, Verdict};
use crate::hub::session::{ConnectRequest, HubSession};
use crate::hub::workqueue::AckMode;

/// The `/metrics` label of this front-end.
pub const FRONTEND: &str = "stomp";

/// Header of `MESSAGE` frames: the publication's offset in its channel's stream.
pub const OFFSET_HEADER: &str = "wsx-offset";
/// Header of `MESSAGE` frames (and of a recovering `SUBSCRIBE`'s `RECEIPT`): the
/// stream's epoch.
pub const EPOCH_HEADER: &str = "wsx-epoch";
/// `SUBSCRIBE` headers asking to recover what was missed after this offset and epoch.
pub const SINCE_OFFSET_HEADER: &str = "wsx-since-offset";
/// See [`SINCE_OFFSET_HEADER`].
pub const SINCE_EPOCH_HEADER: &str = "wsx-since-epoch";
/// `RECEIPT` header of a recovering `SUBSCRIBE`: `true` when every missed message
/// follows, `false` when history could not cover the gap (nothing missed is sent).
pub const RECOVERED_HEADER: &str = "wsx-recovered";
/// `SUBSCRIBE` header: `true` asks for the channel's join and leave events as
/// `MESSAGE` frames (where the namespace sends them).
pub const PRESENCE_HEADER: &str = "wsx-presence";
/// `MESSAGE` header of a join or leave event: `join` or `leave`.
pub const EVENT_HEADER: &str = "wsx-event";
/// `MESSAGE` header of a work-queue message handed out before (NACKed, or its consumer
/// left without acknowledging it); the name RabbitMQ uses.
pub const REDELIVERED_HEADER: &str = "redelivered";
/// `ERROR` header: the kind of hub error (see [`error_kind`]).
pub const ERROR_HEADER: &str = "wsx-error";
/// `ERROR` header: whether the client should reconnect (server-side disconnects).
pub const RECONNECT_HEADER: &str = "wsx-reconnect";

/// STOMP front-end settings.
#[derive(Clone)]
#[non_exhaustive]
pub struct StompConfig {
    /// Frame limits (headers, header bytes, body).
    pub limits: Limits,
    /// The server's `heart-beat`: the shortest interval it sends at, the shortest it
    /// asks of clients, in ms; each direction uses the larger of the two sides' wishes
    /// (0 on either side: none). Default: (1000, 1000), i.e. what the client asks, down
    /// to one second.
    pub heart_beat: (u64, u64),
    /// STOMP logins (`login`, `passcode`), as a broker's user list: a `CONNECT` with a
    /// `login` must match one, and that login is then the user. Empty (the default):
    /// logins are ignored, and a passcode counts only when it is a connection token.
    pub users: Vec<(String, String)>,
    /// Time allowed from the connection's start to its `CONNECT` frame. Default: 10 s.
    pub connect_timeout: Duration,
    /// Transactions open at once per session. Default: 16.
    pub max_transactions: usize,
    /// Frames buffered in one transaction. Default: 1024.
    pub max_transaction_frames: usize,
}

impl std::fmt::Debug for StompConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let logins: Vec<&str> = self.users.iter().map(|(l, _)| l.as_str()).collect();
        f.debug_struct("StompConfig")
            .field("limits", &self.limits)
            .field("heart_beat", &self.heart_beat)
            .field("users", &logins)
            .field("connect_timeout", &self.connect_timeout)
            .field("max_transactions", &self.max_transactions)
            .field("max_transaction_frames", &self.max_transaction_frames)
            .finish()
    }
}

impl Default for StompConfig {
    fn default() -> Self {
        StompConfig {
            limits: Limits::default(),
            heart_beat: (1000, 1000),
            users: Vec::new(),
            connect_timeout: Duration::from_secs(10),
            max_transactions: 16,
            max_transaction_frames: 1024,
        }
    }
}

/// The kind of a hub error in an `ERROR` frame's `wsx-error` header: the STOMP
/// front-end's one table.
pub fn error_kind(e: &HubError) -> &'static str {
    match e {
        HubError::BadChannel(_) => "bad-destination",
        HubError::UnknownNamespace(_) => "unknown-namespace",
        HubError::UnknownChannel => "unknown-channel",
        HubError::EpochChanged => "epoch-changed",
        HubError::Unauthorized(TokenError::Expired) => "token-expired",
        HubError::Unauthorized(_) => "unauthorized",
        HubError::PermissionDenied(_) => "permission-denied",
        HubError::AlreadySubscribed => "already-subscribed",
        HubError::NotSubscribed => "not-subscribed",
        HubError::LimitExceeded(_) => "limit-exceeded",
        HubError::NotAvailable(_) => "not-available",
        HubError::UnknownMessage => "unknown-message",
        HubError::NotConnected => "not-connected",
        HubError::AlreadyConnected => "already-connected",
        HubError::Unavailable(_) => "unavailable",
    }
}

/// A `MESSAGE` frame that every recipient alike gets (same version, subscription id,
/// ack mode and epoch): its bytes, and the WebSocket frame made of them, each made once
/// and shared.
#[derive(Debug)]
pub struct SharedMessage {
    bytes: Bytes,
    binary: bool,
    ws: OnceLock<SharedFrame>,
}

impl SharedMessage {
    fn new(bytes: Bytes, binary: bool) -> SharedMessage {
        SharedMessage {
            bytes,
            binary,
            ws: OnceLock::new(),
        }
    }

    /// The frame's bytes (for a byte-stream transport).
    pub fn bytes(&self) -> &Bytes {
        &self.bytes
    }

    /// The frame as a WebSocket message, encoded on first use: binary when its body
    /// is not UTF-8 (a text message would make browsers fail the connection).
    pub fn ws_frame(&self) -> &SharedFrame {
        self.ws
            .get_or_init(|| match std::str::from_utf8(&self.bytes) {
                Ok(text) if !self.binary => SharedFrame::text(text),
                _ => SharedFrame::binary(&self.bytes),
            })
    }
}

impl PartialEq for SharedMessage {
    fn eq(&self, other: &Self) -> bool {
        self.bytes == other.bytes && self.binary == other.binary
    }
}

impl Eq for SharedMessage {}

/// What the session asks of its transport.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Output {
    /// Send a frame shared with other recipients.
    Shared(Arc<SharedMessage>),
    /// Send these bytes (one or more frames, or a heart-beat); `binary`: as a binary
    /// WebSocket message (a body that is not UTF-8).
    Send {
        /// The bytes.
        bytes: Bytes,
        /// Whether they are not UTF-8.
        binary: bool,
    },
    /// Close the connection after what was sent.
    Close,
}

/// A fatal error: an `ERROR` frame, then the close.
#[derive(Debug)]
struct Fatal {
    message: String,
    detail: String,
    headers: Vec<(String, String)>,
}

impl Fatal {
    fn new(message: impl Into<String>) -> Fatal {
        Fatal {
            message: message.into(),
            detail: String::new(),
            headers: Vec::new(),
        }
    }

    fn header(mut self, name: &str, value: impl Into<String>) -> Fatal {
        self.headers.push((name.into(), value.into()));
        self
    }
}

impl From<HubError> for Fatal {
    fn from(e: HubError) -> Self {
        Fatal::new(e.to_string()).header(ERROR_HEADER, error_kind(&e))
    }
}

impl From<FrameError> for Fatal {
    fn from(e: FrameError) -> Self {
        Fatal::new(e.to_string()).header(ERROR_HEADER, "bad-frame")
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Dest {
    Topic(String),
    Queue(String),
}

impl Dest {
    fn parse(s: &str) -> Result<Dest, Fatal> {
        match (s.strip_prefix("/topic/"), s.strip_prefix("/queue/")) {
            (Some(t), _) if !t.is_empty() => Ok(Dest::Topic(t.to_string())),
            (_, Some(q)) if !q.is_empty() => Ok(Dest::Queue(q.to_string())),
            _ => Err(Fatal::new(format!("unknown destination `{s}`"))
                .header(ERROR_HEADER, "unknown-destination")),
        }
    }
}

#[derive(Debug)]
struct Sub {
    dest: Dest,
    ack: AckMode,
    key: u64,
    /// Join and leave events wanted (`wsx-presence: true`).
    presence: bool,
}

/// The `MESSAGE` tail (destination, content and body) of a publication, made once per
/// STOMP version and shared by every STOMP recipient.
type Tails = Arc<[OnceLock<Bytes>; 3]>;

static TAILS: LazyLock<EncodingSlot<Tails>> = LazyLock::new(EncodingSlot::register);

/// Whole `MESSAGE` frames of a publication by what makes them differ between
/// recipients: clients mostly use the same subscription ids (`sub-0`), so a few
/// variants serve thousands of subscribers, each encoded once.
#[derive(Default)]
struct Messages {
    /// The first variant made: most recipients want it, and it is read without a lock.
    first: OnceLock<(MessageKey, Arc<SharedMessage>)>,
    /// The others.
    variants: std::sync::Mutex<Vec<(MessageKey, Arc<SharedMessage>)>>,
}

#[derive(PartialEq, Eq)]
struct MessageKey {
    version: Version,
    subscription: String,
    ack: bool,
    epoch: Option<String>,
}

/// At most this many variants of one publication are kept (others are encoded for
/// their recipient alone).
const MAX_VARIANTS: usize = 16;

static MESSAGES: LazyLock<EncodingSlot<Arc<Messages>>> = LazyLock::new(EncodingSlot::register);

/// Headers the server sets on `MESSAGE` frames; a publisher's own headers of these
/// names are not passed on.
const RESERVED: [&str; 12] = [
    "destination",
    "subscription",
    "message-id",
    "ack",
    "content-length",
    "content-type",
    "receipt",
    "transaction",
    OFFSET_HEADER,
    EPOCH_HEADER,
    REDELIVERED_HEADER,
    "wsx-token",
];

fn version_index(v: Version) -> usize {
    match v {
        Version::V1_0 => 0,
        Version::V1_1 => 1,
        Version::V1_2 => 2,
    }
}

/// The content-type a STOMP client sees for a payload.
fn content_type(p: &Publication) -> &str {
    if let Some((_, ct)) = p.headers.iter().find(|(n, _)| n == "content-type") {
        return ct;
    }
    match p.kind {
        PayloadKind::Json => "application/json",
        PayloadKind::Text => "text/plain;charset=utf-8",
        PayloadKind::Binary => "application/octet-stream",
    }
}

fn tail(p: &Publication, destination: &str, offset: bool, version: Version) -> Bytes {
    let tails = p.encodings.get_or_init(*TAILS, Tails::default);
    tails[version_index(version)]
        .get_or_init(|| {
            let escaped = Command::Message.escapes_headers(version);
            let mut out = Vec::with_capacity(128 + p.data.len());
            let mut h = |n: &str, v: &str| frame::encode_header(n, v, escaped, version, &mut out);
            h("destination", destination);
            h("content-type", content_type(p));
            h("content-length", &p.data.len().to_string());
            if offset {
                h(OFFSET_HEADER, &p.offset.to_string());
            }
            for (n, v) in &p.headers {
                if !RESERVED.contains(&n.as_str()) {
                    h(n, v);
                }
            }
            out.push(b'\n');
            out.extend_from_slice(&p.data);
            out.push(0);
            Bytes::from(out)
        })
        .clone()
}

/// The `MESSAGE` frame of a topic publication for one recipient: taken from the
/// publication's variants when another recipient needed the same one.
fn message(
    messages: &Messages,
    p: &Arc<Publication>,
    channel: &str,
    version: Version,
    subscription: &str,
    ack: bool,
    epoch: Option<&str>,
) -> Arc<SharedMessage> {
    let same = |k: &MessageKey| {
        k.version == version
            && k.ack == ack
            && k.subscription == subscription
            && k.epoch.as_deref() == epoch
    };
    if let Some((k, m)) = messages.first.get() {
        if same(k) {
            return m.clone();
        }
    }
    let mut variants = crate::hub::shards::lock(&messages.variants);
    // Another recipient may have made it meanwhile.
    let made = messages.first.get().into_iter().chain(variants.iter());
    if let Some((_, m)) = made.into_iter().find(|(k, _)| same(k)) {
        return m.clone();
    }
    let tail = tail(p, &format!("/topic/{channel}"), true, version);
    let escaped = Command::Message.escapes_headers(version);
    let mut bytes = Vec::with_capacity(96 + tail.len());
    bytes.extend_from_slice(b"MESSAGE\n");
    // Unique within a session: one channel's offsets never repeat.
    let mid = format!("t{}@{channel}", p.offset);
    frame::encode_header("subscription", subscription, escaped, version, &mut bytes);
    frame::encode_header("message-id", &mid, escaped, version, &mut bytes);
    if ack {
        frame::encode_header("ack", &mid, escaped, version, &mut bytes);
    }
    if let Some(e) = epoch {
        frame::encode_header(EPOCH_HEADER, e, escaped, version, &mut bytes);
    }
    bytes.extend_from_slice(&tail);
    let m = Arc::new(SharedMessage::new(
        Bytes::from(bytes),
        p.kind == PayloadKind::Binary,
    ));
    let key = MessageKey {
        version,
        subscription: subscription.to_string(),
        ack,
        epoch: epoch.map(str::to_string),
    };
    // Made under the lock, so `first` is set at most once, by its first maker.
    if messages.first.get().is_none() {
        let _ = messages.first.set((key, m.clone()));
    } else if variants.len() + 1 < MAX_VARIANTS {
        // `first` counts among the kept variants.
        variants.push((key, m.clone()));
    }
    m
}

/// A STOMP `SEND`'s body as a hub payload, by the rules of `docs/protocol.md`:
/// `application/json` with a JSON body is JSON; UTF-8 without a content-type or with a
/// `text/*` one (or JSON that does not parse) is text; anything else is binary. The
/// publisher's own headers (content-type included) travel with it.
pub fn payload_of(frame: &Frame) -> Payload {
    let ct = frame
        .get("content-type")
        .map(|c| c.trim().to_ascii_lowercase());
    let utf8 = std::str::from_utf8(&frame.body).is_ok();
    let is_json = ct
        .as_deref()
        .is_some_and(|c| c.split(';').next().map(str::trim) == Some("application/json"))
        && serde_json::from_slice::<serde::de::IgnoredAny>(&frame.body).is_ok();
    let textual = match ct.as_deref() {
        None => true,
        Some(c) => c.starts_with("text/") || c.starts_with("application/json"),
    };
    let mut payload = if is_json {
        Payload::json(frame.body.clone())
    } else if textual && utf8 {
        Payload::text(frame.body.clone())
    } else {
        Payload::binary(frame.body.clone())
    };
    let mut seen: Vec<&str> = Vec::new();
    for (n, v) in &frame.headers {
        // The first of repeated headers wins.
        if seen.contains(&n.as_str()) {
            continue;
        }
        seen.push(n);
        if n == "content-type" || !RESERVED.contains(&n.as_str()) {
            payload.headers.push((n.clone(), v.clone()));
        }
    }
    payload
}

/// One STOMP session.
pub struct StompSession {
    hub: HubSession,
    cfg: Arc<StompConfig>,
    decoder: Decoder,
    version: Option<Version>,
    heartbeat: HeartBeat,
    connect_deadline: Instant,
    subs: HashMap<String, Sub>,
    /// STOMP subscriptions of each topic channel (one hub subscription per channel).
    topics: HashMap<String, Vec<String>>,
    /// The stream epoch of each topic channel, when its namespace keeps history.
    epochs: HashMap<String, String>,
    next_key: u64,
    transactions: HashMap<String, Vec<Frame>>,
    out: Vec<Output>,
    closing: bool,
    rate: Bucket,
}

impl StompSession {
    /// A session for a new connection; `subprotocol` is the WebSocket subprotocol
    /// chosen, if any (its version must then be among `CONNECT`'s).
    pub fn new(hub: HubSession, cfg: Arc<StompConfig>, now: Instant) -> StompSession {
        StompSession {
            rate: Bucket::new(&hub.hub().config().commands),
            decoder: Decoder::new(cfg.limits),
            connect_deadline: now + cfg.connect_timeout,
            hub,
            cfg,
            version: None,
            heartbeat: HeartBeat::off(now),
            subs: HashMap::new(),
            topics: HashMap::new(),
            epochs: HashMap::new(),
            next_key: 0,
            transactions: HashMap::new(),
            out: Vec::new(),
            closing: false,
        }
    }

    /// The hub session (for its deliveries).
    pub fn hub(&mut self) -> &mut HubSession {
        &mut self.hub
    }

    /// Its hub session's queue (to seat it on an event loop).
    pub(crate) fn queue(&self) -> &std::sync::Arc<crate::hub::queue::Outbound> {
        self.hub.queue()
    }

    /// Whether `CONNECT` succeeded.
    pub fn is_connected(&self) -> bool {
        self.version.is_some()
    }

    /// Whether the session has asked to close.
    pub fn is_closing(&self) -> bool {
        self.closing
    }

    /// What to send (and whether to close) since the last call.
    pub fn take_output(&mut self) -> Vec<Output> {
        std::mem::take(&mut self.out)
    }

    /// When [`on_time`](Self::on_time) must next be called.
    pub fn deadline(&self) -> Option<Instant> {
        if self.closing {
            return None;
        }
        if self.version.is_none() {
            return Some(self.connect_deadline);
        }
        self.heartbeat.deadline()
    }

    fn version(&self) -> Version {
        self.version.unwrap_or(Version::V1_0)
    }

    fn push_frame(&mut self, frame: &Frame, binary: bool) {
        let bytes = frame::encode(frame, self.version());
        self.push_bytes(Bytes::from(bytes), binary);
    }

    fn push_bytes(&mut self, bytes: Bytes, binary: bool) {
        self.hub.metrics().count_out(bytes.len());
        self.out.push(Output::Send { bytes, binary });
    }

    fn fail(&mut self, f: Fatal, receipt: Option<&str>) {
        if self.closing {
            return;
        }
        let mut frame = Frame::new(Command::Error).header("message", f.message.clone());
        if let Some(r) = receipt {
            frame = frame.header("receipt-id", r);
        }
        for (n, v) in f.headers {
            frame = frame.header(n, v);
        }
        let detail = if f.detail.is_empty() {
            f.message
        } else {
            f.detail
        };
        frame = frame
            .header("content-type", "text/plain")
            .header("content-length", detail.len().to_string())
            .body(detail);
        self.push_frame(&frame, false);
        self.out.push(Output::Close);
        self.closing = true;
    }

    /// Time passed: send a heart-beat, or end a session whose client went silent or
    /// never connected.
    pub fn on_time(&mut self, now: Instant) {
        if self.closing {
            return;
        }
        if self.version.is_none() {
            if now >= self.connect_deadline {
                self.fail(Fatal::new("no CONNECT frame in time"), None);
            }
            return;
        }
        match self.heartbeat.poll(now) {
            Beat::Idle => {}
            Beat::Send => {
                self.heartbeat.sent(now);
                self.push_bytes(Bytes::from_static(b"\n"), false);
            }
            Beat::Dead => self.fail(
                Fatal::new("no heart-beat from the client in time")
                    .header(ERROR_HEADER, "heart-beat"),
                None,
            ),
        }
    }

    /// Bytes arrived (a WebSocket message or a TCP read; any split of frames).
    pub async fn on_input(&mut self, bytes: &[u8], now: Instant) {
        if self.closing {
            return;
        }
        self.heartbeat.received(now);
        self.decoder.push(bytes);
        let mut buffered = self.decoder.buffered();
        loop {
            match self.decoder.next() {
                Ok(None) => break,
                Ok(Some(Item::HeartBeat)) => {}
                Ok(Some(Item::Frame(f))) => {
                    let left = self.decoder.buffered();
                    self.hub.metrics().count_in(buffered - left);
                    buffered = left;
                    let receipt = f.get("receipt").map(str::to_string);
                    if let Err(e) = self.on_frame(f, now).await {
                        self.fail(e, receipt.as_deref());
                    }
                    if self.closing {
                        break;
                    }
                }
                Err(e) => {
                    self.fail(e.into(), None);
                    break;
                }
            }
        }
        if self.heartbeat.send_every().is_some() && !self.out.is_empty() {
            self.heartbeat.sent(now);
        }
    }

    fn receipt(&mut self, frame: &Frame, extra: Vec<(String, String)>) {
        if let Some(r) = frame.get("receipt") {
            let mut f = Frame::new(Command::Receipt).header("receipt-id", r);
            f.headers.extend(extra);
            self.push_frame(&f, false);
        }
    }

    async fn on_frame(&mut self, frame: Frame, now: Instant) -> Result<(), Fatal> {
        if self.version.is_none() {
            return match frame.command {
                Command::Connect | Command::Stomp => self.connect(frame, now).await,
                other => Err(Fatal::new(format!(
                    "{} before CONNECT: connect first",
                    other.as_str()
                ))
                .header(ERROR_HEADER, "not-connected")),
            };
        }
        if frame.command != Command::Disconnect {
            // Over the rate a frame is held back until it fits (the connection is not
            // read meanwhile, so TCP slows the client); far over it, the connection ends.
            loop {
                let rate = &self.hub.hub().config().commands;
                match self.rate.take(rate, std::time::Instant::now()) {
                    Verdict::Allowed => break,
                    Verdict::Refused { wait } => tokio::time::sleep(wait).await,
                    Verdict::Abusive => {
                        return Err(Fatal::new(format!(
                            "too many frames: at most {} per second",
                            self.hub.hub().config().commands.per_second
                        ))
                        .header(ERROR_HEADER, "rate-limited"))
                    }
                }
            }
        }
        if let Some(tx) = frame.get("transaction") {
            if matches!(frame.command, Command::Send | Command::Ack | Command::Nack) {
                let max = self.cfg.max_transaction_frames;
                let Some(buffered) = self.transactions.get_mut(tx) else {
                    return Err(Fatal::new(format!("unknown transaction `{tx}`")));
                };
                if buffered.len() >= max {
                    return Err(Fatal::new(format!(
                        "more than {max} frames in transaction `{tx}`"
                    ))
                    .header(ERROR_HEADER, "limit-exceeded"));
                }
                buffered.push(frame.clone());
                self.receipt(&frame, Vec::new());
                return Ok(());
            }
        }
        match frame.command {
            Command::Send => self.send(&frame).await?,
            Command::Subscribe => return self.subscribe(frame).await,
            Command::Unsubscribe => self.unsubscribe(&frame).await?,
            Command::Ack | Command::Nack => self.settle(&frame)?,
            Command::Begin => self.begin(&frame)?,
            Command::Commit => {
                let frames = self.end_transaction(&frame)?;
                for f in frames {
                    match f.command {
                        Command::Send => self.send(&f).await?,
                        _ => self.settle(&f)?,
                    }
                }
            }
            Command::Abort => {
                self.end_transaction(&frame)?;
            }
            Command::Disconnect => {
                self.receipt(&frame, Vec::new());
                self.out.push(Output::Close);
                self.closing = true;
                return Ok(());
            }
            Command::Connect | Command::Stomp => {
                return Err(
                    Fatal::new("already connected").header(ERROR_HEADER, "already-connected")
                )
            }
            other => return Err(Fatal::new(format!("{} is a server frame", other.as_str()))),
        }
        self.receipt(&frame, Vec::new());
        Ok(())
    }

    async fn connect(&mut self, frame: Frame, now: Instant) -> Result<(), Fatal> {
        let offered: Vec<Version> = match frame.get("accept-version") {
            None => vec![Version::V1_0],
            Some(list) => list.split(',').filter_map(Version::parse).collect(),
        };
        let Some(version) = offered.into_iter().max() else {
            return Err(Fatal::new(
                "no common protocol version: this server speaks 1.0, 1.1 and 1.2",
            )
            .header("version", "1.2,1.1,1.0"));
        };
        let client_beat = match frame.get("heart-beat") {
            None => (0, 0),
            Some(v) => heartbeat::parse(v).ok_or_else(|| {
                Fatal::new(format!("malformed heart-beat `{v}`")).header(ERROR_HEADER, "bad-frame")
            })?,
        };
        // The hub's connection token may come as the passcode (or a `token` header).
        let token = frame
            .get("token")
            .or_else(|| frame.get("passcode").filter(|p| looks_like_jwt(p)))
            .map(str::to_string);
        // Other credentials (guest/guest) count only against a configured user list.
        if let (Some(login), false, None) = (
            frame.get("login"),
            self.cfg.users.is_empty(),
            token.as_ref(),
        ) {
            let passcode = frame.get("passcode").unwrap_or_default();
            let known = self
                .cfg
                .users
                .iter()
                .any(|(l, p)| l == login && same_secret(p.as_bytes(), passcode.as_bytes()));
            if !known {
                return Err(
                    Fatal::new("bad login or passcode").header(ERROR_HEADER, "unauthorized")
                );
            }
            self.hub.authenticated(login.to_string());
        }
        let connected = self
            .hub
            .connect(ConnectRequest {
                token,
                name: "stomp".into(),
                info: frame
                    .get("login")
                    .unwrap_or_default()
                    .chars()
                    .take(64)
                    .collect(),
            })
            .await;
        let connected = match connected {
            Ok(c) => c,
            // `login` is free text for presence: a long one is cut, not refused.
            Err(e) => return Err(e.into()),
        };
        self.version = Some(version);
        self.decoder.set_version(version);
        let server_beat = if version == Version::V1_0 {
            (0, 0)
        } else {
            self.cfg.heart_beat
        };
        self.heartbeat = HeartBeat::negotiate(client_beat, server_beat, now);
        // Channels a token grants are subscribed in the hub; STOMP has no frame for
        // them, so they deliver nothing until the client SUBSCRIBEs (which then reuses
        // the subscription).
        for ch in connected.subscribed {
            self.topics.entry(ch).or_default();
        }
        let reply = Frame::new(Command::Connected)
            .header("version", version.as_str())
            .header(
                "heart-beat",
                format!(
                    "{},{}",
                    self.heartbeat.send_every().map_or(0, |d| d.as_millis()),
                    self.heartbeat.expect_every().map_or(0, |d| d.as_millis())
                ),
            )
            .header("session", self.hub.client().to_string())
            .header("server", concat!("wsx/", env!("CARGO_PKG_VERSION")))
            .header("user-name", self.hub.info().user.clone());
        self.push_frame(&reply, false);
        self.receipt(&frame, Vec::new());
        Ok(())
    }

    fn required<'a>(frame: &'a Frame, name: &str) -> Result<&'a str, Fatal> {
        frame.get(name).ok_or_else(|| {
            Fatal::new(format!(
                "{} without a `{name}` header",
                frame.command.as_str()
            ))
            .header(ERROR_HEADER, "bad-frame")
        })
    }

    async fn send(&mut self, frame: &Frame) -> Result<(), Fatal> {
        let dest = Dest::parse(Self::required(frame, "destination")?)?;
        let payload = payload_of(frame);
        match dest {
            Dest::Topic(ch) => {
                self.hub.publish(&ch, payload).await?;
            }
            Dest::Queue(q) => self.hub.enqueue(&q, payload).await?,
        }
        Ok(())
    }

    async fn subscribe(&mut self, frame: Frame) -> Result<(), Fatal> {
        let destination = Self::required(&frame, "destination")?;
        let dest = Dest::parse(destination)?;
        let id = match (frame.get("id"), self.version()) {
            (Some(id), _) => id.to_string(),
            (None, Version::V1_0) => destination.to_string(),
            (None, _) => {
                return Err(Fatal::new("SUBSCRIBE without an `id` header")
                    .header(ERROR_HEADER, "bad-frame"))
            }
        };
        if self.subs.contains_key(&id) {
            return Err(Fatal::new(format!("subscription id `{id}` is in use"))
                .header(ERROR_HEADER, "already-subscribed"));
        }
        let ack = match frame.get("ack").unwrap_or("auto") {
            "auto" => AckMode::Auto,
            "client" => AckMode::Cumulative,
            "client-individual" => AckMode::Individual,
            other => {
                return Err(Fatal::new(format!("unknown ack mode `{other}`"))
                    .header(ERROR_HEADER, "bad-frame"))
            }
        };
        let token = frame.get("token");
        self.next_key += 1;
        let key = self.next_key;
        let mut extra = Vec::new();
        match &dest {
            Dest::Topic(ch) => {
                let since = match (
                    frame.get(SINCE_OFFSET_HEADER),
                    frame.get(SINCE_EPOCH_HEADER),
                ) {
                    (Some(o), Some(e)) => Some(StreamPosition {
                        offset: o.trim().parse().map_err(|_| {
                            Fatal::new(format!("{SINCE_OFFSET_HEADER} `{o}` is not an offset"))
                                .header(ERROR_HEADER, "bad-frame")
                        })?,
                        epoch: e.to_string(),
                    }),
                    (None, None) => None,
                    _ => {
                        return Err(Fatal::new(format!(
                            "{SINCE_OFFSET_HEADER} and {SINCE_EPOCH_HEADER} go together"
                        ))
                        .header(ERROR_HEADER, "bad-frame"))
                    }
                };
                let first = self.topics.get(ch).is_none_or(|subs| subs.is_empty())
                    && !self.hub.subscriptions().contains(ch);
                if first {
                    let r = self.hub.subscribe(ch, token, since).await?;
                    if let Some(p) = &r.position {
                        self.epochs.insert(ch.clone(), p.epoch.clone());
                        extra.push((OFFSET_HEADER.to_string(), p.offset.to_string()));
                        extra.push((EPOCH_HEADER.to_string(), p.epoch.clone()));
                    }
                    if let Some(rec) = r.recovered {
                        extra.push((RECOVERED_HEADER.to_string(), rec.to_string()));
                    }
                } else if since.is_some() {
                    // Already receiving this channel: nothing can be recovered for a
                    // second subscription without duplicating the first's messages.
                    extra.push((RECOVERED_HEADER.to_string(), "false".to_string()));
                }
                self.topics.entry(ch.clone()).or_default().push(id.clone());
            }
            Dest::Queue(q) => self.hub.consume(q, key, ack, token)?,
        }
        let presence = frame.get(PRESENCE_HEADER) == Some("true");
        self.subs.insert(
            id,
            Sub {
                dest,
                ack,
                key,
                presence,
            },
        );
        self.receipt(&frame, extra);
        Ok(())
    }

    async fn unsubscribe(&mut self, frame: &Frame) -> Result<(), Fatal> {
        let id = match (frame.get("id"), self.version()) {
            (Some(id), _) => id,
            (None, Version::V1_0) => Self::required(frame, "destination")?,
            (None, _) => Self::required(frame, "id")?,
        };
        let Some(sub) = self.subs.remove(id) else {
            return Err(Fatal::new(format!("no subscription `{id}`"))
                .header(ERROR_HEADER, "not-subscribed"));
        };
        match &sub.dest {
            Dest::Topic(ch) => {
                let subs = self.topics.entry(ch.clone()).or_default();
                subs.retain(|s| s != id);
                if subs.is_empty() {
                    self.topics.remove(ch);
                    self.epochs.remove(ch);
                    // Already gone when the server unsubscribed it.
                    match self.hub.unsubscribe(ch).await {
                        Ok(()) | Err(HubError::NotSubscribed) => {}
                        Err(e) => return Err(e.into()),
                    }
                }
            }
            Dest::Queue(q) => {
                let _ = self.hub.cancel(q, sub.key);
            }
        }
        Ok(())
    }

    fn settle(&mut self, frame: &Frame) -> Result<(), Fatal> {
        let id = match self.version() {
            Version::V1_2 => Self::required(frame, "id")?,
            _ => Self::required(frame, "message-id")?,
        };
        // Topic messages need no acknowledgement: theirs are accepted and ignored.
        if id.starts_with('t') {
            return Ok(());
        }
        let unknown = || {
            Fatal::new(format!("no pending message `{id}`")).header(ERROR_HEADER, "unknown-message")
        };
        let (key, tag) = id
            .strip_prefix('q')
            .and_then(|rest| rest.split_once('.'))
            .and_then(|(k, t)| Some((k.parse::<u64>().ok()?, t.parse::<u64>().ok()?)))
            .ok_or_else(unknown)?;
        let Some(queue) = self.subs.values().find_map(|s| match &s.dest {
            Dest::Queue(q) if s.key == key => Some(q.clone()),
            _ => None,
        }) else {
            // Its subscription ended: the message already went back to the queue.
            return Ok(());
        };
        let r = if frame.command == Command::Ack {
            self.hub.ack(&queue, tag)
        } else {
            self.hub.nack(&queue, tag)
        };
        r.map_err(|_| unknown())
    }

    fn begin(&mut self, frame: &Frame) -> Result<(), Fatal> {
        let tx = Self::required(frame, "transaction")?;
        if self.transactions.contains_key(tx) {
            return Err(Fatal::new(format!("transaction `{tx}` is already open")));
        }
        let max = self.cfg.max_transactions;
        if self.transactions.len() >= max {
            return Err(Fatal::new(format!("more than {max} open transactions"))
                .header(ERROR_HEADER, "limit-exceeded"));
        }
        self.transactions.insert(tx.to_string(), Vec::new());
        Ok(())
    }

    fn end_transaction(&mut self, frame: &Frame) -> Result<Vec<Frame>, Fatal> {
        let tx = Self::required(frame, "transaction")?;
        self.transactions
            .remove(tx)
            .ok_or_else(|| Fatal::new(format!("unknown transaction `{tx}`")))
    }

    /// A delivery from the hub: `MESSAGE` frames for the subscriptions it concerns.
    pub fn on_delivery(&mut self, d: Delivery, now: Instant) {
        if self.closing || self.version.is_none() {
            return;
        }
        let version = self.version();
        match d {
            Delivery::Publication {
                channel,
                publication,
            } => {
                // Disjoint borrows: the subscriptions are read while frames are queued.
                let StompSession {
                    topics,
                    epochs,
                    subs,
                    out,
                    hub,
                    ..
                } = self;
                let Some(ids) = topics.get(channel.as_ref()) else {
                    return;
                };
                let epoch = epochs.get(channel.as_ref()).map(String::as_str);
                let messages = publication
                    .encodings
                    .get_or_init(*MESSAGES, Arc::<Messages>::default);
                for id in ids {
                    let Some(sub) = subs.get(id) else {
                        continue;
                    };
                    let ack = version == Version::V1_2 && sub.ack != AckMode::Auto;
                    let m = message(&messages, &publication, &channel, version, id, ack, epoch);
                    hub.metrics().count_out(m.bytes.len());
                    out.push(Output::Shared(m));
                }
            }
            Delivery::Queued {
                queue,
                consumer,
                tag,
                message,
                redelivered,
            } => {
                let Some((id, ack)) = self
                    .subs
                    .iter()
                    .find(|(_, s)| s.key == consumer)
                    .map(|(id, s)| (id.clone(), s.ack))
                else {
                    return;
                };
                let dest = format!("/queue/{queue}");
                let tail = tail(&message, &dest, false, version);
                let mid = format!("q{consumer}.{tag}");
                let mut head = Vec::with_capacity(96);
                self.message_head(&mut head, &id, &mid, ack, redelivered);
                self.push_message(head, &tail, message.kind == PayloadKind::Binary);
            }
            Delivery::Unsubscribed { channel } => {
                // The server ended the subscription (HTTP API); STOMP has no frame
                // for that: the subscriptions of the channel simply stop.
                if let Some(ids) = self.topics.remove(channel.as_ref()) {
                    for id in ids {
                        self.subs.remove(&id);
                    }
                }
                self.epochs.remove(channel.as_ref());
            }
            Delivery::Join { channel, info, .. } => self.presence_event(&channel, &info, "join"),
            Delivery::Leave { channel, info, .. } => self.presence_event(&channel, &info, "leave"),
        }
        self.heartbeat.sent(now);
    }

    /// A join or leave as a `MESSAGE` (JSON body: the member as presence shows it) to
    /// each subscription of `channel` that asked for them.
    fn presence_event(&mut self, channel: &str, info: &crate::ClientInfo, event: &str) {
        let Some(ids) = self.topics.get(channel) else {
            return;
        };
        let wanted: Vec<String> = ids
            .iter()
            .filter(|id| self.subs.get(*id).is_some_and(|s| s.presence))
            .cloned()
            .collect();
        if wanted.is_empty() {
            return;
        }
        let body = crate::native::codec::client_json(info).to_string();
        for id in wanted {
            self.next_key += 1;
            let frame = Frame::new(Command::Message)
                .header("subscription", id)
                .header("message-id", format!("e{}", self.next_key))
                .header("destination", format!("/topic/{channel}"))
                .header("content-type", "application/json")
                .header(EVENT_HEADER, event)
                .body(body.clone());
            self.push_frame(&frame, false);
        }
    }

    fn message_head(
        &self,
        head: &mut Vec<u8>,
        id: &str,
        mid: &str,
        ack: AckMode,
        redelivered: bool,
    ) {
        let version = self.version();
        let escaped = Command::Message.escapes_headers(version);
        head.extend_from_slice(b"MESSAGE\n");
        frame::encode_header("subscription", id, escaped, version, head);
        frame::encode_header("message-id", mid, escaped, version, head);
        if version == Version::V1_2 && ack != AckMode::Auto {
            frame::encode_header("ack", mid, escaped, version, head);
        }
        if redelivered {
            frame::encode_header(REDELIVERED_HEADER, "true", escaped, version, head);
        }
    }

    fn push_message(&mut self, head: Vec<u8>, tail: &Bytes, binary: bool) {
        let mut bytes = BytesMut::with_capacity(head.len() + tail.len());
        bytes.extend_from_slice(&head);
        bytes.extend_from_slice(tail);
        self.push_bytes(bytes.freeze(), binary);
    }

    /// The server ends the session (a slow consumer, a server-side disconnect, a
    /// shutdown): an `ERROR` saying why and whether to reconnect, then the close.
    pub fn on_disconnect(&mut self, d: &Disconnect) {
        let mut f =
            Fatal::new(d.reason().to_string()).header(RECONNECT_HEADER, d.reconnect().to_string());
        let kind = match d {
            Disconnect::SlowConsumer => "slow-consumer",
            Disconnect::Server { .. } => "disconnected",
            _ => "shutdown",
        };
        f = f.header(ERROR_HEADER, kind);
        if let Disconnect::Server { code, .. } = d {
            f = f.header("wsx-code", code.to_string());
        }
        self.fail(f, None);
    }

    /// End the session in the hub (subscriptions, presence, queue consumers).
    pub async fn close(self) {
        self.hub.close().await;
    }
}

/// Whether a passcode has a JWT's shape (three base64url parts): only such a passcode
/// is taken as the hub's connection token.
fn looks_like_jwt(s: &str) -> bool {
    let parts: Vec<&str> = s.split('.').collect();
    parts.len() == 3
        && parts[..2].iter().all(|p| {
            !p.is_empty()
                && p.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hub::{Hub, HubConfig};

    fn session(hub: &Arc<Hub>, cfg: StompConfig, now: Instant) -> StompSession {
        StompSession::new(
            HubSession::new(hub.clone(), FRONTEND, String::new()),
            Arc::new(cfg),
            now,
        )
    }

    /// Every frame sent so far, and whether the session closed.
    fn sent(s: &mut StompSession) -> (Vec<Frame>, bool) {
        let mut d = Decoder::new(Limits::default());
        let mut closed = false;
        for o in s.take_output() {
            match o {
                Output::Send { bytes, .. } => d.push(&bytes),
                Output::Shared(m) => d.push(m.bytes()),
                Output::Close => closed = true,
            }
        }
        let mut frames = Vec::new();
        while let Some(item) = d.next().unwrap() {
            if let Item::Frame(f) = item {
                frames.push(f);
            }
        }
        (frames, closed)
    }

    #[tokio::test]
    async fn a_frame_before_connect_is_an_error_then_the_close() {
        let hub = Hub::new(HubConfig::default());
        let t = Instant::now();
        let mut s = session(&hub, StompConfig::default(), t);
        s.on_input(b"SUBSCRIBE\nid:1\ndestination:/topic/a\nreceipt:7\n\n\0", t)
            .await;
        let (frames, closed) = sent(&mut s);
        assert!(closed);
        assert_eq!(frames[0].command, Command::Error);
        assert_eq!(frames[0].get("receipt-id"), Some("7"));
        assert_eq!(frames[0].get(ERROR_HEADER), Some("not-connected"));
    }

    #[tokio::test]
    async fn connect_picks_the_highest_common_version_and_answers_heart_beats() {
        let hub = Hub::new(HubConfig::default());
        let t = Instant::now();
        let mut s = session(&hub, StompConfig::default(), t);
        s.on_input(
            b"STOMP\naccept-version:1.0,1.1\nhost:x\nheart-beat:5000,2000\n\n\0",
            t,
        )
        .await;
        let (frames, closed) = sent(&mut s);
        assert!(!closed);
        let c = &frames[0];
        assert_eq!(c.command, Command::Connected);
        assert_eq!(c.get("version"), Some("1.1"));
        // The server sends every max(1000, 2000) and expects every max(5000, 1000).
        assert_eq!(c.get("heart-beat"), Some("2000,5000"));
        let mut s = session(&hub, StompConfig::default(), t);
        s.on_input(b"CONNECT\naccept-version:2.0\n\n\0", t).await;
        let (frames, closed) = sent(&mut s);
        assert!(closed);
        assert_eq!(frames[0].get("version"), Some("1.2,1.1,1.0"));
    }

    #[tokio::test]
    async fn heart_beats_and_deadlines_follow_the_clock_given() {
        let hub = Hub::new(HubConfig::default());
        let t = Instant::now();
        let mut s = session(&hub, StompConfig::default(), t);
        assert_eq!(
            s.deadline(),
            Some(t + Duration::from_secs(10)),
            "CONNECT deadline"
        );
        s.on_input(
            b"CONNECT\naccept-version:1.2\nheart-beat:1000,1000\n\n\0",
            t,
        )
        .await;
        sent(&mut s);
        s.on_time(t + Duration::from_millis(1000));
        let out = s.take_output();
        assert_eq!(
            out,
            vec![Output::Send {
                bytes: Bytes::from_static(b"\n"),
                binary: false
            }]
        );
        s.on_input(b"\n", t + Duration::from_millis(1500)).await;
        s.on_time(t + Duration::from_millis(3400));
        assert!(!sent(&mut s).1, "1.9 s after the last input: alive");
        s.on_time(t + Duration::from_millis(3600));
        let (frames, closed) = sent(&mut s);
        assert!(closed);
        assert_eq!(frames.last().unwrap().get(ERROR_HEADER), Some("heart-beat"));
    }

    #[tokio::test]
    async fn several_and_partial_frames_per_input() {
        let hub = Hub::new(HubConfig::default());
        let t = Instant::now();
        let mut s = session(&hub, StompConfig::default(), t);
        let all = b"CONNECT\naccept-version:1.2\n\n\0SUBSCRIBE\nid:1\ndestination:/topic/p\nreceipt:a\n\n\0SEND\ndestination:/topic/p\n\nhi\0";
        s.on_input(&all[..40], t).await;
        s.on_input(&all[40..], t).await;
        while let Some(Ok(d)) =
            futures_util::FutureExt::now_or_never(s.hub().next_delivery()).flatten()
        {
            s.on_delivery(d, t);
        }
        let (frames, _) = sent(&mut s);
        let commands: Vec<Command> = frames.iter().map(|f| f.command).collect();
        assert_eq!(
            commands,
            [Command::Connected, Command::Receipt, Command::Message]
        );
        assert_eq!(&frames[2].body[..], b"hi");
    }

    #[test]
    fn a_publication_is_encoded_once_for_every_stomp_subscriber_alike() {
        let p = Arc::new(Publication::new(1, Payload::text("shared")));
        let messages = Messages::default();
        let a = message(&messages, &p, "c", Version::V1_2, "sub-0", false, Some("e"));
        let b = message(&messages, &p, "c", Version::V1_2, "sub-0", false, Some("e"));
        assert!(Arc::ptr_eq(&a, &b), "one encoding for recipients alike");
        assert!(
            std::ptr::eq(a.ws_frame(), b.ws_frame()),
            "one WebSocket frame"
        );
        let c = message(&messages, &p, "c", Version::V1_2, "sub-1", false, Some("e"));
        assert!(
            !Arc::ptr_eq(&a, &c),
            "another subscription id is another frame"
        );
        let tails = [
            tail(&p, "/topic/c", true, Version::V1_2),
            tail(&p, "/topic/c", true, Version::V1_2),
        ];
        assert_eq!(
            tails[0].as_ptr(),
            tails[1].as_ptr(),
            "the tail is shared too"
        );
    }

    #[test]
    fn variants_past_the_cap_are_still_right_but_not_kept() {
        let p = Arc::new(Publication::new(1, Payload::text("x")));
        let messages = Messages::default();
        for i in 0..=MAX_VARIANTS {
            let m = message(
                &messages,
                &p,
                "c",
                Version::V1_2,
                &format!("s{i}"),
                false,
                None,
            );
            let text = String::from_utf8_lossy(m.bytes()).into_owned();
            assert!(text.contains(&format!("subscription:s{i}\n")), "{text}");
        }
        let kept = crate::hub::shards::lock(&messages.variants).len() + 1;
        assert_eq!(kept, MAX_VARIANTS, "the first plus the locked list");
    }

    #[tokio::test]
    async fn transactions_are_limited_in_number_and_size() {
        let hub = Hub::new(HubConfig::default());
        let t = Instant::now();
        let cfg = StompConfig {
            max_transactions: 2,
            max_transaction_frames: 3,
            ..StompConfig::default()
        };
        let mut s = session(&hub, cfg.clone(), t);
        s.on_input(b"CONNECT\naccept-version:1.2\n\n\0BEGIN\ntransaction:a\n\n\0BEGIN\ntransaction:b\n\n\0BEGIN\ntransaction:c\n\n\0", t)
            .await;
        let (frames, closed) = sent(&mut s);
        assert!(closed);
        let e = frames.last().unwrap();
        assert_eq!(e.get("message"), Some("more than 2 open transactions"));
        let mut s = session(&hub, cfg, t);
        let mut input = b"CONNECT\naccept-version:1.2\n\n\0BEGIN\ntransaction:a\n\n\0".to_vec();
        for _ in 0..4 {
            input.extend_from_slice(b"SEND\ndestination:/topic/t\ntransaction:a\n\nx\0");
        }
        s.on_input(&input, t).await;
        let (frames, closed) = sent(&mut s);
        assert!(closed);
        assert_eq!(
            frames.last().unwrap().get("message"),
            Some("more than 3 frames in transaction `a`")
        );
    }

    #[test]
    fn send_bodies_become_payloads_by_content_type() {
        let f = |ct: Option<&str>, body: &'static [u8]| {
            let mut frame = Frame::new(Command::Send).header("destination", "/topic/a");
            if let Some(ct) = ct {
                frame = frame.header("content-type", ct);
            }
            payload_of(&frame.body(body)).kind
        };
        assert_eq!(f(Some("application/json"), b"{\"a\":1}"), PayloadKind::Json);
        assert_eq!(
            f(Some("application/json;charset=utf-8"), b"[1]"),
            PayloadKind::Json
        );
        assert_eq!(f(Some("application/json"), b"{oops"), PayloadKind::Text);
        assert_eq!(
            f(None, b"{\"a\":1}"),
            PayloadKind::Text,
            "no content-type: text"
        );
        assert_eq!(f(Some("text/plain"), b"hi"), PayloadKind::Text);
        assert_eq!(f(None, b"\xff"), PayloadKind::Binary);
        assert_eq!(
            f(Some("application/octet-stream"), b"hi"),
            PayloadKind::Binary
        );
        let p = payload_of(
            &Frame::new(Command::Send)
                .header("destination", "/topic/a")
                .header("x-trace", "1")
                .header("x-trace", "2")
                .header("receipt", "r"),
        );
        assert_eq!(p.headers, vec![("x-trace".to_string(), "1".to_string())]);
    }
}
