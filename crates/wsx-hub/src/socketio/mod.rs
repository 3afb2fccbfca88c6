//! The Socket.IO front-end: the Socket.IO v5 protocol over [Engine.IO v4](crate::engineio),
//! as a server library in the shape of Node's `socket.io` — namespaces with auth
//! middleware and a connection handler, sockets with named event handlers, acks both
//! ways, binary attachments, rooms, broadcasts, connection state recovery — whose
//! rooms are the hub's channels. [`standalone`] maps a documented event vocabulary
//! onto the hub for `wsx serve`.
//!
//! ```no_run
//! # async fn app(hub: std::sync::Arc<wsx_hub::Hub>, gate: wsx_hub::Gate) -> axum::Router {
//! use wsx_hub::socketio::{Args, SocketIo, SocketIoConfig};
//! let io = SocketIo::new(hub, SocketIoConfig::default());
//! io.of("/").on_connection(|socket| async move {
//!     socket.on("join", |socket, args, ack| async move {
//!         let room: String = args.get(0).unwrap_or_default();
//!         let joined = socket.join(&room).await.is_ok();
//!         if let Some(ack) = ack {
//!             ack.send(Args::of(&[joined]));
//!         }
//!     });
//! });
//! io.router(&gate, "/socket.io/")
//! # }
//! ```
//!
//! Handlers of one socket run one at a time, in the order the events arrived (an
//! acknowledgement the server awaits inside a handler is still received). A
//! broadcast to a room is a publication on the hub channel of that name, so it
//! reaches the room's members wherever they are connected, and is kept in the
//! channel's history for recovery.

pub mod packet;
pub mod standalone;

use std::collections::{HashMap, VecDeque};
use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, LazyLock, Mutex, RwLock, Weak};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use axum::Router;
use base64::Engine as _;
use bytes::Bytes;
use futures_util::future::BoxFuture;
use futures_util::FutureExt;
use serde::de::DeserializeOwned;
use serde_json::value::RawValue;
use tokio::sync::{mpsc, oneshot};
use tracing::debug;

pub use self::packet::Args;
use self::packet::{Kind, Packet};
use crate::engineio::{
    CloseReason, Engine, EngineConfig, EngineHandle, EngineSocket, Frame, Inbound, RequestInfo,
    Source,
};
use crate::hub::client::ClientInfo;
use crate::hub::error::HubError;
use crate::hub::publication::{EncodingSlot, Payload, PayloadKind, Publication, StreamPosition};
use crate::hub::queue::{Delivery, Disconnect};
use crate::hub::rate::{Bucket, Verdict};
use crate::hub::session::{ConnectRequest, HubSession};
use crate::hub::shards::lock;
use crate::hub::Hub;
use crate::transport::Gate;

/// The `/metrics` label of this front-end.
pub const FRONTEND: &str = "socketio";

/// Where `wsx serve` mounts Socket.IO (the clients' default path).
pub const PATH: &str = "/socket.io/";

/// Headers of a publication that a Socket.IO application broadcast to a room: its
/// namespace, the socket it excludes, and its attachments (base64, in order).
const H_NSP: &str = "socketio-nsp";
const H_EXCEPT: &str = "socketio-except";
const H_ATTACHMENT: &str = "socketio-attachment";

/// Settings of a Socket.IO server.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct SocketIoConfig {
    /// The Engine.IO layer's settings.
    pub engine: EngineConfig,
    /// How long a client may take to connect to a namespace. Default: 45 s.
    pub connect_timeout: Duration,
    /// Connection state recovery: how long a disconnected socket's state is kept
    /// (`None`: off, the default of the library; `wsx serve` turns it on).
    pub recovery: Option<Duration>,
    /// Most disconnected sockets kept for recovery at once. Default: 10,000.
    pub max_recovery_sessions: usize,
    /// Most binary attachments of one packet. Default: 10.
    pub max_attachments: usize,
    /// Most events of one socket waiting for its handlers. Default: 1,024.
    pub max_pending_events: usize,
}

impl Default for SocketIoConfig {
    fn default() -> Self {
        SocketIoConfig {
            engine: EngineConfig::default(),
            connect_timeout: Duration::from_secs(45),
            recovery: None,
            max_recovery_sessions: 10_000,
            max_attachments: 10,
            max_pending_events: 1024,
        }
    }
}

impl SocketIoConfig {
    /// The Engine.IO settings.
    pub fn engine(mut self, engine: EngineConfig) -> Self {
        self.engine = engine;
        self
    }

    /// The namespace connection timeout.
    pub fn connect_timeout(mut self, t: Duration) -> Self {
        self.connect_timeout = t;
        self
    }

    /// Connection state recovery for `window` after a disconnection (`None`: off).
    pub fn recovery(mut self, window: Option<Duration>) -> Self {
        self.recovery = window;
        self
    }
}

type AuthFn =
    Arc<dyn Fn(Handshake) -> BoxFuture<'static, Result<Identity, ConnectError>> + Send + Sync>;
type ConnFn = Arc<dyn Fn(Socket) -> BoxFuture<'static, ()> + Send + Sync>;
type EventFn = Arc<dyn Fn(Socket, Args, Option<Ack>) -> BoxFuture<'static, ()> + Send + Sync>;
type DisconnectFn = Arc<dyn Fn(Socket, &'static str) -> BoxFuture<'static, ()> + Send + Sync>;

/// A Socket.IO server: its namespaces, over one hub.
#[derive(Clone)]
pub struct SocketIo {
    inner: Arc<IoInner>,
}

struct IoInner {
    hub: Arc<Hub>,
    cfg: SocketIoConfig,
    namespaces: RwLock<HashMap<String, Namespace>>,
    saved: Mutex<HashMap<String, Saved>>,
}

/// Who a namespace's auth middleware says the client is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Identity {
    /// Nobody in particular.
    Anonymous,
    /// A user the application authenticated.
    User(String),
    /// A hub connection token (JWT) to verify by the hub's rules: its subject is the
    /// user ("": no token, so anonymous if the hub allows it).
    Token(String),
}

/// A refused namespace connection: the client's `connect_error` gets `message` (and
/// `data`).
#[derive(Debug, Clone, PartialEq)]
pub struct ConnectError {
    /// Why.
    pub message: String,
    /// Details for the client (`err.data`).
    pub data: Option<serde_json::Value>,
}

impl ConnectError {
    /// A refusal saying `message`.
    pub fn new(message: impl Into<String>) -> ConnectError {
        ConnectError {
            message: message.into(),
            data: None,
        }
    }
}

/// What a client sent to connect to a namespace.
#[derive(Debug, Clone)]
pub struct Handshake {
    /// The namespace.
    pub nsp: String,
    /// The CONNECT packet's auth payload (`io({ auth })`), raw JSON.
    pub auth: Option<Box<RawValue>>,
    /// The HTTP request that opened the Engine.IO session.
    pub request: RequestInfo,
}

impl Handshake {
    /// A field of the auth payload as a `T`.
    pub fn auth_field<T: DeserializeOwned>(&self, key: &str) -> Option<T> {
        let auth: HashMap<String, Box<RawValue>> =
            serde_json::from_str(self.auth.as_ref()?.get()).ok()?;
        serde_json::from_str(auth.get(key)?.get()).ok()
    }
}

/// A namespace: its middleware, its connection handler, its sockets on this node.
#[derive(Clone)]
pub struct Namespace {
    inner: Arc<NsInner>,
}

struct NsInner {
    name: String,
    io: Weak<IoInner>,
    auth: RwLock<Option<AuthFn>>,
    on_connection: RwLock<Option<ConnFn>>,
    sockets: Mutex<HashMap<String, Socket>>,
}

impl SocketIo {
    /// A server over `hub`.
    pub fn new(hub: Arc<Hub>, cfg: SocketIoConfig) -> SocketIo {
        SocketIo {
            inner: Arc::new(IoInner {
                hub,
                cfg,
                namespaces: RwLock::new(HashMap::new()),
                saved: Mutex::new(HashMap::new()),
            }),
        }
    }

    /// The hub.
    pub fn hub(&self) -> &Arc<Hub> {
        &self.inner.hub
    }

    /// The settings.
    pub fn config(&self) -> &SocketIoConfig {
        &self.inner.cfg
    }

    /// The namespace `name` (`/` is the main one), created on first use; clients may
    /// connect only to namespaces created here.
    pub fn of(&self, name: &str) -> Namespace {
        let mut map = self
            .inner
            .namespaces
            .write()
            .unwrap_or_else(|e| e.into_inner());
        map.entry(name.to_string())
            .or_insert_with(|| Namespace {
                inner: Arc::new(NsInner {
                    name: name.to_string(),
                    io: Arc::downgrade(&self.inner),
                    auth: RwLock::new(None),
                    on_connection: RwLock::new(None),
                    sockets: Mutex::new(HashMap::new()),
                }),
            })
            .clone()
    }

    /// The routes of the server at `path` (`/socket.io/` for the clients' default),
    /// admitted by `gate`.
    pub fn router(&self, gate: &Gate, path: &str) -> Router {
        self.engine(gate).router(path)
    }

    /// The Engine.IO endpoint carrying this server.
    pub fn engine(&self, gate: &Gate) -> Engine {
        let io = self.inner.clone();
        Engine::new(
            gate,
            self.inner.cfg.engine.clone(),
            Arc::new(move |eio| run_connection(io.clone(), eio).boxed()),
        )
    }
}

impl Namespace {
    /// The namespace's name.
    pub fn name(&self) -> &str {
        &self.inner.name
    }

    /// Check each connecting client: `Ok` with who it is, or `Err` to refuse it
    /// (`connect_error` on the client). Without this, clients connect anonymously.
    pub fn use_auth<F, Fut>(&self, f: F)
    where
        F: Fn(Handshake) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<Identity, ConnectError>> + Send + 'static,
    {
        *self.inner.auth.write().unwrap_or_else(|e| e.into_inner()) =
            Some(Arc::new(move |h| f(h).boxed()));
    }

    /// Run `f` for each socket that connects (register its event handlers there).
    pub fn on_connection<F, Fut>(&self, f: F)
    where
        F: Fn(Socket) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        *self
            .inner
            .on_connection
            .write()
            .unwrap_or_else(|e| e.into_inner()) = Some(Arc::new(move |s| f(s).boxed()));
    }

    /// Broadcast to the members of `room` (a hub channel), on every node.
    pub fn to(&self, room: &str) -> Broadcast {
        Broadcast {
            ns: self.clone(),
            room: room.to_string(),
            except: None,
        }
    }

    /// Emit to every socket of this namespace on this node.
    pub fn emit(&self, event: &str, args: Args) {
        for s in self.sockets() {
            s.emit(event, args.clone());
        }
    }

    /// The sockets connected to this namespace on this node.
    pub fn sockets(&self) -> Vec<Socket> {
        lock(&self.inner.sockets).values().cloned().collect()
    }

    fn hub(&self) -> Option<Arc<Hub>> {
        self.inner.io.upgrade().map(|io| io.hub.clone())
    }
}

/// An emit to a room's members.
pub struct Broadcast {
    ns: Namespace,
    room: String,
    except: Option<String>,
}

impl Broadcast {
    /// Publish the event on the room's hub channel: every member socket of this
    /// namespace receives it (but the excluded one, for `socket.to(room)`).
    pub async fn emit(self, event: &str, args: Args) -> Result<(), HubError> {
        let hub = self
            .ns
            .hub()
            .ok_or(HubError::Unavailable("server stopped".into()))?;
        let json = packet::event_json(event, &args);
        let (_, attachments) = args.into_parts();
        let mut payload = Payload::json(Bytes::from(json));
        payload
            .headers
            .push((H_NSP.into(), self.ns.name().to_string()));
        if let Some(sid) = self.except {
            payload.headers.push((H_EXCEPT.into(), sid));
        }
        for a in attachments {
            payload.headers.push((
                H_ATTACHMENT.into(),
                base64::engine::general_purpose::STANDARD.encode(&a),
            ));
        }
        hub.publish(&self.room, payload).await.map(|_| ())
    }
}

/// One client's connection to one namespace.
#[derive(Clone)]
pub struct Socket {
    inner: Arc<SockInner>,
}

struct SockInner {
    id: String,
    pid: String,
    ns: Namespace,
    engine: EngineHandle,
    handshake: Handshake,
    recovered: bool,
    user: String,
    hub: tokio::sync::Mutex<Option<HubSession>>,
    handlers: Mutex<HashMap<String, EventFn>>,
    on_disconnect: Mutex<Vec<DisconnectFn>>,
    acks: Mutex<HashMap<u64, oneshot::Sender<Args>>>,
    next_ack: AtomicU64,
    work: mpsc::Sender<Work>,
    connected: AtomicBool,
    tracker: Mutex<Tracker>,
    recovery: bool,
}

enum Work {
    Event(String, Args, Option<u64>),
    Disconnect(&'static str),
}

/// The acknowledgement a client asked for with an event.
pub struct Ack {
    socket: Socket,
    id: u64,
}

impl Ack {
    /// Answer the event with `args`.
    pub fn send(self, args: Args) -> bool {
        let json = args.to_json();
        let (_, attachments) = args.into_parts();
        self.socket
            .send_packet(Kind::Ack, Some(self.id), &json, attachments)
    }
}

/// Why an `emit_with_ack` got no answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AckError {
    /// Not within the timeout.
    Timeout,
    /// The socket disconnected first.
    Disconnected,
}

impl std::fmt::Display for AckError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            AckError::Timeout => "operation has timed out",
            AckError::Disconnected => "socket has been disconnected",
        })
    }
}

impl std::error::Error for AckError {}

impl std::fmt::Debug for Socket {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Socket")
            .field("id", &self.inner.id)
            .field("nsp", &self.inner.ns.name())
            .finish()
    }
}

impl Socket {
    /// The socket's id (per namespace; kept across a recovery).
    pub fn id(&self) -> &str {
        &self.inner.id
    }

    /// The namespace.
    pub fn namespace(&self) -> &Namespace {
        &self.inner.ns
    }

    /// What the client sent to connect.
    pub fn handshake(&self) -> &Handshake {
        &self.inner.handshake
    }

    /// The user the auth middleware named ("" for anonymous).
    pub fn user(&self) -> &str {
        &self.inner.user
    }

    /// Whether this socket is a recovered one (state and missed events restored).
    pub fn recovered(&self) -> bool {
        self.inner.recovered
    }

    /// Whether it is still connected.
    pub fn connected(&self) -> bool {
        self.inner.connected.load(Ordering::Acquire)
    }

    /// The transport now: `polling` or `websocket`.
    pub fn transport(&self) -> &'static str {
        self.inner.engine.transport()
    }

    /// Handle the event `event`: `f` gets the socket, the arguments and, when the
    /// client asked for one, the acknowledgement to send.
    pub fn on<F, Fut>(&self, event: &str, f: F)
    where
        F: Fn(Socket, Args, Option<Ack>) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        lock(&self.inner.handlers).insert(
            event.to_string(),
            Arc::new(move |s, a, ack| f(s, a, ack).boxed()),
        );
    }

    /// Handle `event` with its arguments parsed as a `T` (a tuple, say). Arguments
    /// that do not parse are acknowledged with `{"error": …}` when an ack was asked
    /// for, and otherwise dropped.
    pub fn on_typed<T, F, Fut>(&self, event: &str, f: F)
    where
        T: DeserializeOwned + Send + 'static,
        F: Fn(Socket, T, Option<Ack>) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        let f = Arc::new(f);
        self.on(event, move |s, args, ack| {
            let f = f.clone();
            async move {
                match args.parse::<T>() {
                    Ok(t) => f(s, t, ack).await,
                    Err(e) => {
                        if let Some(ack) = ack {
                            ack.send(Args::of(&[serde_json::json!({"error": e.to_string()})]));
                        }
                    }
                }
            }
        });
    }

    /// Run `f` when the socket disconnects, with the reason (`transport close`,
    /// `client namespace disconnect`, `ping timeout`, …).
    pub fn on_disconnect<F, Fut>(&self, f: F)
    where
        F: Fn(Socket, &'static str) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        lock(&self.inner.on_disconnect).push(Arc::new(move |s, r| f(s, r).boxed()));
    }

    /// Emit `event` to this client. `false` when it is gone.
    pub fn emit(&self, event: &str, args: Args) -> bool {
        let json = packet::event_json(event, &args);
        let (_, attachments) = args.into_parts();
        self.send_packet(Kind::Event, None, &json, attachments)
    }

    /// Emit `event` and wait for the client's acknowledgement.
    pub async fn emit_with_ack(
        &self,
        event: &str,
        args: Args,
        timeout: Duration,
    ) -> Result<Args, AckError> {
        let id = self.inner.next_ack.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = oneshot::channel();
        lock(&self.inner.acks).insert(id, tx);
        let json = packet::event_json(event, &args);
        let (_, attachments) = args.into_parts();
        if !self.send_packet(Kind::Event, Some(id), &json, attachments) {
            lock(&self.inner.acks).remove(&id);
            return Err(AckError::Disconnected);
        }
        match tokio::time::timeout(timeout, rx).await {
            Ok(Ok(args)) => Ok(args),
            Ok(Err(_)) => Err(AckError::Disconnected),
            Err(_) => {
                lock(&self.inner.acks).remove(&id);
                Err(AckError::Timeout)
            }
        }
    }

    /// Join `room` (the hub channel of that name).
    pub async fn join(&self, room: &str) -> Result<(), HubError> {
        let mut hub = self.inner.hub.lock().await;
        let s = hub.as_mut().ok_or(HubError::NotConnected)?;
        let r = s.join(room, None).await?;
        lock(&self.inner.tracker).subscribed(room, r.position);
        Ok(())
    }

    /// Leave `room`.
    pub async fn leave(&self, room: &str) -> Result<(), HubError> {
        let mut hub = self.inner.hub.lock().await;
        let s = hub.as_mut().ok_or(HubError::NotConnected)?;
        s.unsubscribe(room).await?;
        lock(&self.inner.tracker).channels.remove(room);
        Ok(())
    }

    /// The rooms this socket is in.
    pub async fn rooms(&self) -> Vec<String> {
        let hub = self.inner.hub.lock().await;
        hub.as_ref()
            .map(|s| s.subscriptions().to_vec())
            .unwrap_or_default()
    }

    /// Broadcast to `room`'s members but this socket.
    pub fn to(&self, room: &str) -> Broadcast {
        Broadcast {
            ns: self.inner.ns.clone(),
            room: room.to_string(),
            except: Some(self.inner.id.clone()),
        }
    }

    /// The hub session behind this socket (for subscribe, publish, presence and
    /// history with the hub's own rules).
    pub fn hub_session(&self) -> &tokio::sync::Mutex<Option<HubSession>> {
        &self.inner.hub
    }

    /// Remember the stream position of a channel subscribed through
    /// [`hub_session`](Self::hub_session), for connection state recovery.
    pub fn track(&self, channel: &str, position: Option<StreamPosition>) {
        lock(&self.inner.tracker).subscribed(channel, position);
    }

    /// Disconnect the client from this namespace (it does not reconnect by itself).
    pub fn disconnect(&self) {
        if self.send_packet(Kind::Disconnect, None, "", Vec::new()) {
            self.finish(CloseReason::ServerClose);
        }
    }

    fn send_packet(
        &self,
        kind: Kind,
        id: Option<u64>,
        json: &str,
        attachments: Vec<Bytes>,
    ) -> bool {
        if !self.connected() {
            return false;
        }
        let text = packet::encode(kind, self.inner.ns.name(), id, attachments.len(), json);
        let mut frames = Vec::with_capacity(1 + attachments.len());
        frames.push(Frame::message(text.as_bytes()));
        frames.extend(attachments.into_iter().map(Frame::binary));
        self.inner.engine.send_all(frames)
    }

    /// The socket ends: handlers hear of it, its state is kept for recovery when the
    /// client went away abnormally, its subscriptions end.
    fn finish(&self, reason: CloseReason) {
        if !self.inner.connected.swap(false, Ordering::AcqRel) {
            return;
        }
        lock(&self.inner.ns.inner.sockets).remove(&self.inner.id);
        lock(&self.inner.acks).clear();
        let why = match reason {
            CloseReason::ClientClose => "client namespace disconnect",
            r => r.as_str(),
        };
        let _ = self.inner.work.try_send(Work::Disconnect(why));
        let me = self.clone();
        tokio::spawn(async move {
            let session = me.inner.hub.lock().await.take();
            let Some(session) = session else { return };
            if me.inner.recovery && reason.is_abnormal() {
                me.save(&session);
            }
            session.close().await;
        });
    }

    fn save(&self, session: &HubSession) {
        let Some(io) = self.inner.ns.inner.io.upgrade() else {
            return;
        };
        let Some(window) = io.cfg.recovery else {
            return;
        };
        let tracker = std::mem::take(&mut *lock(&self.inner.tracker));
        let mut saved = lock(&io.saved);
        let now = Instant::now();
        saved.retain(|_, s| s.expires > now);
        if saved.len() >= io.cfg.max_recovery_sessions {
            return;
        }
        saved.insert(
            self.inner.pid.clone(),
            Saved {
                nsp: self.inner.ns.name().to_string(),
                sid: self.inner.id.clone(),
                user: self.inner.user.clone(),
                channels: session.subscriptions().to_vec(),
                tracker,
                expires: now + window,
            },
        );
    }
}

/// A disconnected socket's state, kept for recovery.
struct Saved {
    nsp: String,
    sid: String,
    user: String,
    channels: Vec<String>,
    tracker: Tracker,
    expires: Instant,
}

/// How many publications per channel a socket remembers having sent, to know where
/// to recover from.
const TRACKED: usize = 64;

/// What each channel sent a socket, in the order of the socket's sends: the client's
/// last offset (`"<offset>:<channel>"`) then says where every channel stood.
#[derive(Debug, Default)]
struct Tracker {
    seq: u64,
    channels: HashMap<String, Track>,
}

#[derive(Debug)]
struct Track {
    epoch: String,
    /// Where the channel stood at `base.0` (subscription, or the last entry dropped).
    base: (u64, u64),
    /// Whether `base` was dropped from `sent` (then an older position is unknown).
    evicted: bool,
    /// (socket sequence, channel offset) of each publication sent.
    sent: VecDeque<(u64, u64)>,
}

impl Tracker {
    fn subscribed(&mut self, channel: &str, position: Option<StreamPosition>) {
        if let Some(p) = position {
            self.channels.insert(
                channel.to_string(),
                Track {
                    epoch: p.epoch,
                    base: (self.seq, p.offset),
                    evicted: false,
                    sent: VecDeque::new(),
                },
            );
        }
    }

    fn sent(&mut self, channel: &str, offset: u64) {
        let Some(t) = self.channels.get_mut(channel) else {
            return;
        };
        self.seq += 1;
        t.sent.push_back((self.seq, offset));
        if t.sent.len() > TRACKED {
            if let Some(old) = t.sent.pop_front() {
                t.base = old;
                t.evicted = true;
            }
        }
    }

    /// Where each channel stood when the client received `last` (`None`: nothing
    /// since it connected); `None` when that is not known.
    fn positions(&self, last: Option<&str>) -> Option<Vec<(String, StreamPosition)>> {
        let seq = match last {
            None => 0,
            Some(last) => {
                let (offset, channel) = last.split_once(':')?;
                let offset: u64 = offset.parse().ok()?;
                let t = self.channels.get(channel)?;
                if t.base.1 == offset {
                    t.base.0
                } else {
                    t.sent.iter().find(|(_, o)| *o == offset)?.0
                }
            }
        };
        self.channels
            .iter()
            .map(|(ch, t)| {
                let offset = match t.sent.iter().rev().find(|(s, _)| *s <= seq) {
                    Some(&(_, o)) => o,
                    None if !t.evicted || t.base.0 <= seq => t.base.1,
                    None => return None,
                };
                Some((
                    ch.clone(),
                    StreamPosition {
                        offset,
                        epoch: t.epoch.clone(),
                    },
                ))
            })
            .collect()
    }
}

fn new_id() -> String {
    let bytes: [u8; 15] = rand::random();
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

/// The ack of an event refused for the rate: the standalone events' error shape with
/// the native protocol's code 114.
const TOO_MANY_EVENTS: &str = r#"[{"error":{"code":114,"message":"too many events: slow down"}}]"#;

/// One Engine.IO session: decode packets, connect namespaces, route events and acks.
async fn run_connection(io: Arc<IoInner>, mut eio: EngineSocket) {
    let handle = eio.handle().clone();
    let mut sockets: HashMap<String, Socket> = HashMap::new();
    let mut pending: Option<(Packet, Vec<Bytes>)> = None;
    let deadline = tokio::time::Instant::now() + io.cfg.connect_timeout;
    let mut ever_connected = false;
    let mut rate = Bucket::new(&io.hub.config().commands);
    loop {
        let msg = if ever_connected {
            eio.recv().await
        } else {
            match Box::pin(tokio::time::timeout_at(deadline, eio.recv())).await {
                Ok(m) => m,
                Err(_) => {
                    debug!(sid = handle.sid(), "no namespace connection in time");
                    handle.close(CloseReason::ServerClose);
                    break;
                }
            }
        };
        let Some(msg) = msg else { break };
        let complete = match (msg, pending.take()) {
            (Inbound::Text(t), None) => {
                let text = std::str::from_utf8(&t).unwrap_or("");
                match packet::decode(text, io.cfg.max_attachments) {
                    Ok(p) if p.attachments > 0 => {
                        pending = Some((p, Vec::new()));
                        None
                    }
                    Ok(p) => Some((p, Vec::new())),
                    Err(e) => {
                        debug!(sid = handle.sid(), error = %e, "closing");
                        handle.close(CloseReason::ParseError);
                        None
                    }
                }
            }
            (Inbound::Binary(b), Some((p, mut parts))) => {
                parts.push(b);
                if parts.len() == p.attachments {
                    Some((p, parts))
                } else {
                    pending = Some((p, parts));
                    None
                }
            }
            // A binary message with no packet waiting for it, or a packet while
            // attachments are due.
            _ => {
                handle.close(CloseReason::ParseError);
                None
            }
        };
        if handle.closed_reason().is_some() {
            break;
        }
        let Some((p, parts)) = complete else { continue };
        if !ever_connected && p.kind != Kind::Connect {
            handle.close(CloseReason::ParseError);
            break;
        }
        sockets.retain(|_, s| s.connected());
        match p.kind {
            Kind::Connect => {
                if sockets.contains_key(&p.nsp) {
                    continue;
                }
                let ns = io
                    .namespaces
                    .read()
                    .unwrap_or_else(|e| e.into_inner())
                    .get(&p.nsp)
                    .cloned();
                let Some(ns) = ns else {
                    refuse(&handle, &p.nsp, &ConnectError::new("Invalid namespace"));
                    continue;
                };
                let hs = Handshake {
                    nsp: p.nsp.clone(),
                    auth: p.data,
                    request: eio.request.clone(),
                };
                // Boxed: a namespace connection (auth, recovery) is large and
                // happens once; inline, the connection's future would keep its room.
                match Box::pin(connect(&io, &ns, &handle, hs)).await {
                    Ok(s) => {
                        ever_connected = true;
                        sockets.insert(p.nsp, s);
                    }
                    Err(e) => refuse(&handle, &p.nsp, &e),
                }
            }
            Kind::Disconnect => {
                if let Some(s) = sockets.remove(&p.nsp) {
                    s.finish(CloseReason::ClientClose);
                }
            }
            Kind::Event | Kind::BinaryEvent => {
                let Some(s) = sockets.get(&p.nsp) else {
                    continue;
                };
                // Events per second per connection (`HubConfig::commands`): over the
                // rate an event is refused (its ack, if asked for, says so); far over
                // it, the client is disconnected from every namespace.
                match rate.take(&io.hub.config().commands, std::time::Instant::now()) {
                    Verdict::Allowed => {}
                    Verdict::Refused { .. } => {
                        debug!(sid = handle.sid(), "event over the rate refused");
                        if let Some(id) = p.id {
                            s.send_packet(Kind::Ack, Some(id), TOO_MANY_EVENTS, Vec::new());
                        }
                        continue;
                    }
                    Verdict::Abusive => {
                        debug!(sid = handle.sid(), "far too many events: disconnected");
                        for s in sockets.values() {
                            s.disconnect();
                        }
                        // The client closes the session on its namespaces' DISCONNECT;
                        // closing it here at once could cut those packets off.
                        let _ = Box::pin(tokio::time::timeout(
                            Duration::from_secs(1),
                            handle.closed(),
                        ))
                        .await;
                        handle.close(CloseReason::ServerClose);
                        break;
                    }
                }
                let Some((name, values)) = p.data.as_deref().and_then(packet::split_event) else {
                    continue;
                };
                let args = Args::from_parts(values, parts);
                if s.inner
                    .work
                    .try_send(Work::Event(name, args, p.id))
                    .is_err()
                {
                    debug!(sid = handle.sid(), "too many events waiting for handlers");
                    handle.close(CloseReason::SlowConsumer);
                    break;
                }
            }
            Kind::Ack | Kind::BinaryAck => {
                let Some(s) = sockets.get(&p.nsp) else {
                    continue;
                };
                let values = packet::ack_args(p.data.as_deref());
                let tx = p.id.and_then(|id| lock(&s.inner.acks).remove(&id));
                if let Some(tx) = tx {
                    let _ = tx.send(Args::from_parts(values, parts));
                }
            }
            Kind::ConnectError => {
                handle.close(CloseReason::ParseError);
                break;
            }
        }
    }
    let reason = handle
        .closed_reason()
        .unwrap_or(CloseReason::TransportClose);
    for s in sockets.values() {
        s.finish(reason);
    }
}

fn refuse(handle: &EngineHandle, nsp: &str, e: &ConnectError) {
    let mut body = serde_json::json!({ "message": e.message });
    if let Some(d) = &e.data {
        body["data"] = d.clone();
    }
    let text = packet::encode(Kind::ConnectError, nsp, None, 0, &body.to_string());
    handle.send(Frame::message(text.as_bytes()));
}

/// Connect a namespace: auth, the hub session, recovery, the CONNECT reply, then the
/// socket's handler and delivery tasks.
async fn connect(
    io: &Arc<IoInner>,
    ns: &Namespace,
    handle: &EngineHandle,
    hs: Handshake,
) -> Result<Socket, ConnectError> {
    let auth = ns
        .inner
        .auth
        .read()
        .unwrap_or_else(|e| e.into_inner())
        .clone();
    let identity = match auth {
        Some(f) => f(hs.clone()).await?,
        None => Identity::Anonymous,
    };
    let mut session = HubSession::new(io.hub.clone(), FRONTEND, String::new());
    match identity {
        Identity::Anonymous => {
            session.connect_trusted(String::new(), "socket.io".into(), String::new())
        }
        Identity::User(u) => session.connect_trusted(u, "socket.io".into(), String::new()),
        Identity::Token(t) => {
            session
                .connect(ConnectRequest {
                    token: Some(t).filter(|t| !t.is_empty()),
                    name: "socket.io".into(),
                    info: hs.auth_field::<String>("info").unwrap_or_default(),
                })
                .await
                .map_err(|e| ConnectError {
                    message: e.to_string(),
                    data: Some(serde_json::json!({ "code": crate::native::error_code(&e) })),
                })?;
        }
    }
    let user = session.info().user.clone();
    // Connection state recovery: the client's pid and the last offset it saw.
    let mut restored = None;
    if io.cfg.recovery.is_some() {
        if let Some(pid) = hs.auth_field::<String>("pid") {
            let saved = lock(&io.saved).remove(&pid);
            if let Some(saved) =
                saved.filter(|s| s.expires > Instant::now() && s.nsp == ns.name() && s.user == user)
            {
                let offset = hs.auth_field::<String>("offset");
                if let Some(tracker) = recover(&mut session, &saved, offset.as_deref()).await {
                    restored = Some((pid, saved.sid, tracker));
                }
            }
        }
    }
    let recovered = restored.is_some();
    let (pid, sid, tracker) = restored.unwrap_or_else(|| (new_id(), new_id(), Tracker::default()));
    let (work_tx, work_rx) = mpsc::channel(io.cfg.max_pending_events.max(1));
    let queue = session.outbound();
    let socket = Socket {
        inner: Arc::new(SockInner {
            id: sid.clone(),
            pid: pid.clone(),
            ns: ns.clone(),
            engine: handle.clone(),
            handshake: hs,
            recovered,
            user,
            hub: tokio::sync::Mutex::new(Some(session)),
            handlers: Mutex::new(HashMap::new()),
            on_disconnect: Mutex::new(Vec::new()),
            acks: Mutex::new(HashMap::new()),
            next_ack: AtomicU64::new(0),
            work: work_tx,
            connected: AtomicBool::new(true),
            tracker: Mutex::new(tracker),
            recovery: io.cfg.recovery.is_some(),
        }),
    };
    let reply = if io.cfg.recovery.is_some() {
        serde_json::json!({ "sid": sid, "pid": pid })
    } else {
        serde_json::json!({ "sid": sid })
    };
    let text = packet::encode(Kind::Connect, ns.name(), None, 0, &reply.to_string());
    handle.send(Frame::message(text.as_bytes()));
    lock(&ns.inner.sockets).insert(sid, socket.clone());
    let on_connection = ns
        .inner
        .on_connection
        .read()
        .unwrap_or_else(|e| e.into_inner())
        .clone();
    tokio::spawn(run_handlers(socket.clone(), work_rx, on_connection));
    handle.add_source(Arc::new(HubSource {
        socket: socket.clone(),
        queue,
    }));
    Ok(socket)
}

/// Re-subscribe a saved socket's channels from where its client stood; `None` (and
/// nothing subscribed) unless every channel recovered with no gap.
async fn recover(session: &mut HubSession, saved: &Saved, last: Option<&str>) -> Option<Tracker> {
    let positions = saved.tracker.positions(last)?;
    if positions.len() != saved.channels.len() {
        return None;
    }
    let mut tracker = Tracker {
        seq: saved.tracker.seq,
        channels: HashMap::new(),
    };
    let mut ok = true;
    for (channel, pos) in positions {
        match session.join(&channel, Some(pos.clone())).await {
            Ok(r) if r.recovered == Some(true) => {
                tracker.subscribed(&channel, Some(pos));
            }
            _ => {
                ok = false;
                break;
            }
        }
    }
    if ok {
        return Some(tracker);
    }
    for ch in session.subscriptions().to_vec() {
        let _ = session.unsubscribe(&ch).await;
    }
    // What the partial recovery queued is dropped with the subscriptions.
    let queue = session.outbound();
    let waker = futures_util::task::noop_waker();
    let mut cx = std::task::Context::from_waker(&waker);
    while let std::task::Poll::Ready(Some(Ok(_))) = queue.poll_next(&mut cx) {}
    None
}

/// Run the connection handler, then each event's handler in turn.
async fn run_handlers(socket: Socket, mut rx: mpsc::Receiver<Work>, on_connection: Option<ConnFn>) {
    if let Some(f) = on_connection {
        f(socket.clone()).await;
    }
    while let Some(w) = rx.recv().await {
        match w {
            Work::Event(name, args, id) => {
                let h = lock(&socket.inner.handlers).get(&name).cloned();
                let ack = id.map(|id| Ack {
                    socket: socket.clone(),
                    id,
                });
                if let Some(h) = h {
                    h(socket.clone(), args, ack).await;
                }
            }
            Work::Disconnect(reason) => {
                let hs = lock(&socket.inner.on_disconnect).clone();
                for f in hs {
                    f(socket.clone(), reason).await;
                }
                break;
            }
        }
    }
}

/// Each event's encoding for sockets of the main namespace, made once.
#[derive(Default)]
struct Encoded {
    plain: std::sync::OnceLock<Arc<[Frame]>>,
    with_offset: std::sync::OnceLock<Arc<[Frame]>>,
}

static ENCODED: LazyLock<EncodingSlot<Arc<Encoded>>> = LazyLock::new(EncodingSlot::register);

/// A socket's hub queue as a source of its Engine.IO session: the carrier (the
/// WebSocket's task, a pending long-poll) takes deliveries straight from the hub queue,
/// up to 64 at a time, and they wait there while the client does not read (so the hub
/// queue's slow-consumer rule applies).
struct HubSource {
    socket: Socket,
    queue: Arc<crate::hub::queue::Outbound>,
}

impl Source for HubSource {
    fn poll_frames(&self, cx: &mut Context<'_>, out: &mut Vec<Frame>) -> Poll<bool> {
        let before = out.len();
        for _ in 0..64 {
            match self.queue.poll_next(cx) {
                Poll::Pending => break,
                Poll::Ready(None) => return Poll::Ready(out.len() > before),
                Poll::Ready(Some(Ok(d))) => {
                    if matches!(d, Delivery::Unsubscribed { .. }) {
                        self.socket.observe(Some(Ok(d.clone())));
                    }
                    self.socket.frames_for(&d, out);
                }
                Poll::Ready(Some(Err(d))) => {
                    self.socket.observe(Some(Err(d.clone())));
                    let engine = &self.socket.inner.engine;
                    match d {
                        Disconnect::Server {
                            reconnect: false, ..
                        } => self.socket.disconnect(),
                        Disconnect::SlowConsumer => engine.close(CloseReason::SlowConsumer),
                        Disconnect::Shutdown => engine.close(CloseReason::Shutdown),
                        _ => engine.close(CloseReason::Reconnect),
                    }
                    return Poll::Ready(out.len() > before);
                }
            }
        }
        if out.len() > before {
            Poll::Ready(true)
        } else {
            // Either nothing is queued (the waker is registered) or a whole batch was
            // for other namespaces: look again soon.
            if !self.queue.is_empty() {
                cx.waker().wake_by_ref();
            }
            Poll::Pending
        }
    }
}

impl Socket {
    /// Keep the hub session's books on an item of its queue (off the carrier's task:
    /// the session is behind an async lock).
    fn observe(&self, item: Option<Result<Delivery, Disconnect>>) {
        let me = self.clone();
        tokio::spawn(async move {
            if let Some(s) = me.inner.hub.lock().await.as_mut() {
                s.observe(&item);
            }
        });
    }

    /// The frames of a delivery for this socket (none when it is not for it).
    fn frames_for(&self, d: &Delivery, out: &mut Vec<Frame>) {
        let nsp = self.inner.ns.name();
        let csr = self.inner.recovery;
        match d {
            Delivery::Publication {
                channel,
                publication,
            } => {
                let p = publication;
                if let Some(from) = header(p, H_NSP) {
                    if from != nsp || header(p, H_EXCEPT) == Some(self.inner.id.as_str()) {
                        return;
                    }
                }
                let offset = csr && p.offset > 0;
                if offset {
                    lock(&self.inner.tracker).sent(channel, p.offset);
                }
                if nsp == "/" {
                    let enc = p.encodings.get_or_init(*ENCODED, Default::default);
                    let cell = if offset { &enc.with_offset } else { &enc.plain };
                    let frames = cell.get_or_init(|| {
                        encode_publication(channel, p, nsp, offset)
                            .into_iter()
                            .map(Frame::shared)
                            .collect()
                    });
                    out.extend(frames.iter().cloned());
                } else {
                    out.extend(encode_publication(channel, p, nsp, offset));
                }
            }
            Delivery::Queued { queue, message, .. } => {
                out.extend(encode_publication(queue, message, nsp, false));
            }
            Delivery::Join { channel, info, .. } => {
                out.push(event_frame(
                    nsp,
                    "join",
                    &serde_json::json!([&**channel, client_json(info)]),
                ));
            }
            Delivery::Leave { channel, info, .. } => {
                out.push(event_frame(
                    nsp,
                    "leave",
                    &serde_json::json!([&**channel, client_json(info)]),
                ));
            }
            Delivery::Unsubscribed { channel } => {
                out.push(event_frame(
                    nsp,
                    "unsubscribed",
                    &serde_json::json!([&**channel]),
                ));
            }
        }
    }
}

fn header<'a>(p: &'a Publication, name: &str) -> Option<&'a str> {
    p.headers
        .iter()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.as_str())
}

fn client_json(info: &ClientInfo) -> serde_json::Value {
    let mut v = serde_json::json!({ "client": info.client.to_string(), "user": info.user });
    if !info.name.is_empty() {
        v["name"] = info.name.clone().into();
    }
    if !info.info.is_empty() {
        v["info"] = info.info.clone().into();
    }
    v
}

fn event_frame(nsp: &str, event: &str, args: &serde_json::Value) -> Frame {
    let mut json = format!("[{}", serde_json::Value::from(event));
    if let Some(items) = args.as_array() {
        for a in items {
            json.push(',');
            json.push_str(&a.to_string());
        }
    }
    json.push(']');
    Frame::message(packet::encode(Kind::Event, nsp, None, 0, &json).as_bytes())
}

/// A publication as a Socket.IO event: a room broadcast of a Socket.IO application as
/// the event it was, anything else as `publication(channel, data, {offset})`; with
/// recovery on, the last argument is the offset the client reconnects with.
fn encode_publication(channel: &str, p: &Publication, nsp: &str, offset: bool) -> Vec<Frame> {
    let mut attachments: Vec<Bytes> = Vec::new();
    let mut json = if header(p, H_NSP).is_some() {
        for (k, v) in &p.headers {
            if k == H_ATTACHMENT {
                attachments.push(Bytes::from(
                    base64::engine::general_purpose::STANDARD
                        .decode(v)
                        .unwrap_or_default(),
                ));
            }
        }
        let mut s = String::from_utf8_lossy(&p.data).into_owned();
        s.pop(); // the closing bracket: arguments may follow
        s
    } else {
        let data = match p.kind {
            PayloadKind::Json => String::from_utf8_lossy(&p.data).into_owned(),
            PayloadKind::Text => {
                serde_json::Value::from(String::from_utf8_lossy(&p.data)).to_string()
            }
            PayloadKind::Binary => {
                attachments.push(p.data.clone());
                r#"{"_placeholder":true,"num":0}"#.to_string()
            }
        };
        format!(
            r#"["publication",{},{},{{"offset":{}}}"#,
            serde_json::Value::from(channel),
            data,
            p.offset
        )
    };
    if offset {
        json.push(',');
        json.push_str(&serde_json::Value::from(format!("{}:{channel}", p.offset)).to_string());
    }
    json.push(']');
    let mut frames = vec![Frame::message(
        packet::encode(Kind::Event, nsp, None, attachments.len(), &json).as_bytes(),
    )];
    frames.extend(attachments.into_iter().map(Frame::binary));
    frames
}
