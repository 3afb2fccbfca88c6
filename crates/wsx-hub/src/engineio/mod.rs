//! Engine.IO v4, the transport layer under Socket.IO: sessions over HTTP long-polling
//! and WebSocket, the upgrade from one to the other, heartbeats, and the spec's errors.
//! An [`Engine`] serves one path; each new session is handed to the application as an
//! [`EngineSocket`] (messages in) and an [`EngineHandle`] (frames out, close).
//!
//! Every session is bounded: its outbound buffer (bytes; beyond it the session closes
//! as a slow consumer), its inbound messages ([`EngineConfig::max_payload`] per HTTP
//! body or WebSocket message), its time (a client that neither polls nor answers pings
//! is closed after `ping_interval + ping_timeout`), and the number of sessions (each
//! holds one of the [`Gate`]'s connection slots).

pub mod packet;

use std::collections::{HashMap, VecDeque};
use std::future::Future;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use axum::body::Body;
use axum::extract::{ConnectInfo, State};
use axum::response::{IntoResponse, Response};
use axum::routing::any;
use axum::Router;
use base64::Engine as _;
use bytes::Bytes;
use futures_util::future::BoxFuture;
use futures_util::{FutureExt, StreamExt};
use http::{header, HeaderMap, HeaderValue, Method, Request, StatusCode};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::{mpsc, Notify, OwnedSemaphorePermit};
use tokio_util::sync::CancellationToken;
use tracing::debug;
use wsx::{CloseCode, Message, SharedFrame, WebSocket};

pub use self::packet::Packet;
use crate::hub::shards::lock;
use crate::transport::Gate;

/// Settings of an Engine.IO endpoint.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct EngineConfig {
    /// How often the server pings. Default: 25 s.
    pub ping_interval: Duration,
    /// How long a pong may take before the session is closed. Default: 20 s.
    pub ping_timeout: Duration,
    /// Most bytes in one HTTP body or WebSocket message from a client. Default: 1,000,000.
    pub max_payload: usize,
    /// Most bytes waiting to be sent to one session; beyond it the session is closed
    /// (a slow consumer). Default: 4 MiB.
    pub max_buffer: usize,
    /// Most messages received and not yet taken by the application. Default: 256.
    pub max_inbound: usize,
    /// How long an upgrade may take from the probe to the `5`. Default: 10 s.
    pub upgrade_timeout: Duration,
    /// Whether polling clients may upgrade to WebSocket. Default: yes.
    pub allow_upgrades: bool,
    /// Which transports clients may use. Default: both.
    pub transports: Transports,
    /// Send `Access-Control-Allow-Credentials: true` to allowed cross-origin
    /// requests. Default: no.
    pub cors_credentials: bool,
}

impl Default for EngineConfig {
    fn default() -> Self {
        EngineConfig {
            ping_interval: Duration::from_secs(25),
            ping_timeout: Duration::from_secs(20),
            max_payload: 1_000_000,
            max_buffer: 4 << 20,
            max_inbound: 256,
            upgrade_timeout: Duration::from_secs(10),
            allow_upgrades: true,
            transports: Transports::Both,
            cors_credentials: false,
        }
    }
}

impl EngineConfig {
    /// Heartbeat settings.
    pub fn heartbeat(mut self, interval: Duration, timeout: Duration) -> Self {
        self.ping_interval = interval;
        self.ping_timeout = timeout;
        self
    }

    /// The largest client payload.
    pub fn max_payload(mut self, bytes: usize) -> Self {
        self.max_payload = bytes;
        self
    }

    /// The transports clients may use.
    pub fn transports(mut self, t: Transports) -> Self {
        self.transports = t;
        self
    }

    /// Whether to allow credentials on cross-origin requests.
    pub fn cors_credentials(mut self, on: bool) -> Self {
        self.cors_credentials = on;
        self
    }
}

/// Which transports an endpoint offers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transports {
    /// HTTP long-polling and WebSocket.
    Both,
    /// HTTP long-polling only.
    Polling,
    /// WebSocket only.
    WebSocket,
}

impl Transports {
    fn polling(self) -> bool {
        self != Transports::WebSocket
    }

    fn websocket(self) -> bool {
        self != Transports::Polling
    }
}

/// A message from the client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Inbound {
    /// A text message (valid UTF-8).
    Text(Bytes),
    /// A binary message.
    Binary(Bytes),
}

/// Why a session ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CloseReason {
    /// The client sent a close packet.
    ClientClose,
    /// The application closed it.
    ServerClose,
    /// The transport ended (the socket closed, a poll was abandoned).
    TransportClose,
    /// The transport failed (an error on the socket, a protocol violation).
    TransportError,
    /// A malformed packet.
    ParseError,
    /// No pong within the ping timeout.
    PingTimeout,
    /// The outbound buffer overflowed.
    SlowConsumer,
    /// The server is shutting down.
    Shutdown,
    /// The server ended the session and asked the client to reconnect (and recover).
    Reconnect,
}

impl CloseReason {
    /// Socket.IO's name for it (what `disconnect` reasons say).
    pub fn as_str(self) -> &'static str {
        match self {
            CloseReason::ClientClose => "client namespace disconnect",
            CloseReason::ServerClose => "server namespace disconnect",
            CloseReason::TransportClose => "transport close",
            CloseReason::TransportError => "transport error",
            CloseReason::ParseError => "parse error",
            CloseReason::PingTimeout => "ping timeout",
            CloseReason::SlowConsumer => "slow consumer",
            CloseReason::Shutdown => "server shutting down",
            CloseReason::Reconnect => "server requested reconnect",
        }
    }

    /// Whether the client went away without saying so (what connection state
    /// recovery is for).
    pub fn is_abnormal(self) -> bool {
        !matches!(self, CloseReason::ClientClose | CloseReason::ServerClose)
    }
}

/// An encoded packet, ready for either transport. Made once and shared when the same
/// packet goes to many sessions.
#[derive(Debug, Clone)]
pub struct Frame {
    text: bool,
    /// Text: the type digit and the data. Binary: the bytes.
    data: Bytes,
    /// The WebSocket frame, when made ahead (for fan-out).
    ws: Option<SharedFrame>,
}

impl Frame {
    /// A frame of `packet`.
    pub fn new(packet: &Packet) -> Frame {
        let (text, data) = packet.to_ws();
        Frame {
            text,
            data,
            ws: None,
        }
    }

    /// A message packet of `text` (the `4` is added).
    pub fn message(text: &[u8]) -> Frame {
        let mut data = Vec::with_capacity(1 + text.len());
        data.push(b'4');
        data.extend_from_slice(text);
        Frame {
            text: true,
            data: Bytes::from(data),
            ws: None,
        }
    }

    /// A binary message packet.
    pub fn binary(data: Bytes) -> Frame {
        Frame {
            text: false,
            data,
            ws: None,
        }
    }

    /// The same frame with its WebSocket encoding made now (to share it).
    pub fn shared(mut self) -> Frame {
        self.ws = Some(if self.text {
            // Text frames are made from UTF-8 text only.
            SharedFrame::text(std::str::from_utf8(&self.data).unwrap_or_default())
        } else {
            SharedFrame::binary(&self.data)
        });
        self
    }

    fn cost(&self) -> usize {
        self.data.len() + 16
    }

    fn write_polling(&self, out: &mut Vec<u8>) {
        if self.text {
            out.extend_from_slice(&self.data);
        } else {
            out.push(b'b');
            out.extend_from_slice(
                base64::engine::general_purpose::STANDARD
                    .encode(&self.data)
                    .as_bytes(),
            );
        }
    }

    fn is(&self, p: &[u8]) -> bool {
        self.text && self.data == p
    }
}

/// Frames an application hands to a session's carrier when it asks, instead of queueing
/// them: the carrier (the WebSocket's task, or a pending long-poll) polls its sources
/// itself, so a delivery costs no task of the application's and waits in the
/// application's own bounded queue while the client does not read.
pub trait Source: Send + Sync + 'static {
    /// Append what is ready to `out`: `Ready(true)` when something was appended,
    /// `Ready(false)` when the source has ended (it is then dropped), `Pending` (with
    /// `cx`'s waker registered) when nothing is ready.
    fn poll_frames(&self, cx: &mut Context<'_>, out: &mut Vec<Frame>) -> Poll<bool>;
}

/// The application run for each session.
pub type OnConnection = Arc<dyn Fn(EngineSocket) -> BoxFuture<'static, ()> + Send + Sync>;

/// An Engine.IO endpoint: its sessions and what runs each one.
#[derive(Clone)]
pub struct Engine {
    inner: Arc<EngineInner>,
}

struct EngineInner {
    cfg: EngineConfig,
    gate: Gate,
    sessions: Mutex<HashMap<Arc<str>, Arc<Shared>>>,
    app: OnConnection,
}

/// How a session is carried now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Carrier {
    Polling,
    /// A WebSocket with this session's id was accepted; its probe is awaited.
    Probing,
    /// A WebSocket answered the probe; polls get a noop until the `5`.
    Upgrading,
    WebSocket,
}

struct Out {
    frames: VecDeque<Frame>,
    bytes: usize,
    carrier: Carrier,
    get_busy: bool,
    post_busy: bool,
    closed: Option<CloseReason>,
}

/// One session's state, shared by its transports, its heartbeat and the application.
struct Shared {
    sid: Arc<str>,
    engine: std::sync::Weak<EngineInner>,
    max_buffer: usize,
    /// How long one write to a WebSocket may wait for the peer.
    write_timeout: Duration,
    out: Mutex<Out>,
    /// Frames were queued, a source was added, or the carrier changed.
    readable: Notify,
    /// The application's sources, polled by the carrier (copied on change).
    sources: Mutex<Arc<[Arc<dyn Source>]>>,
    pong: Notify,
    closed: CancellationToken,
    _slot: Mutex<Option<OwnedSemaphorePermit>>,
    inbound: mpsc::Sender<Inbound>,
}

/// Sends to a session and closes it; cheap to clone.
#[derive(Clone)]
pub struct EngineHandle {
    shared: Arc<Shared>,
}

/// A session as the application sees it: messages in, and a handle to send.
pub struct EngineSocket {
    handle: EngineHandle,
    rx: mpsc::Receiver<Inbound>,
    /// The request that opened the session.
    pub request: RequestInfo,
}

/// What the request that opened a session said.
#[derive(Debug, Clone)]
pub struct RequestInfo {
    /// The peer's address.
    pub peer: SocketAddr,
    /// The query string.
    pub query: String,
    /// The headers.
    pub headers: HeaderMap,
}

impl EngineSocket {
    /// The handle to send with.
    pub fn handle(&self) -> &EngineHandle {
        &self.handle
    }

    /// The next message; `None` once the session closed.
    pub async fn recv(&mut self) -> Option<Inbound> {
        crate::transport::recv_or_closed(&mut self.rx, &self.handle.shared.closed).await
    }
}

impl EngineHandle {
    /// The session id.
    pub fn sid(&self) -> &str {
        &self.shared.sid
    }

    /// Queue a frame. `false` when the session is closed (or was closed now because
    /// its buffer overflowed).
    pub fn send(&self, frame: Frame) -> bool {
        self.shared.push(frame)
    }

    /// Queue frames together (a packet and its attachments).
    pub fn send_all(&self, frames: Vec<Frame>) -> bool {
        self.shared.push_all(frames)
    }

    /// Add a source the carrier polls for frames (until it ends or the session closes).
    pub fn add_source(&self, source: Arc<dyn Source>) {
        {
            let mut sources = lock(&self.shared.sources);
            let mut all = sources.to_vec();
            all.push(source);
            *sources = Arc::from(all);
        }
        self.shared.readable.notify_waiters();
    }

    /// Close the session.
    pub fn close(&self, reason: CloseReason) {
        self.shared.close(reason);
    }

    /// Why the session closed, once it has.
    pub fn closed_reason(&self) -> Option<CloseReason> {
        lock(&self.shared.out).closed
    }

    /// Resolves once the session is closed.
    pub async fn closed(&self) {
        self.shared.closed.cancelled().await
    }

    /// The transport now: `"polling"` or `"websocket"`.
    pub fn transport(&self) -> &'static str {
        match lock(&self.shared.out).carrier {
            Carrier::WebSocket => "websocket",
            _ => "polling",
        }
    }
}

impl Shared {
    fn push(&self, frame: Frame) -> bool {
        self.push_all(vec![frame])
    }

    fn push_all(&self, frames: Vec<Frame>) -> bool {
        let overflow = {
            let mut out = lock(&self.out);
            if out.closed.is_some() {
                return false;
            }
            for f in frames {
                out.bytes += f.cost();
                out.frames.push_back(f);
            }
            out.bytes > self.max_buffer
        };
        if overflow {
            self.close(CloseReason::SlowConsumer);
            return false;
        }
        self.readable.notify_waiters();
        true
    }

    fn take(&self, out: &mut Out) -> Vec<Frame> {
        out.bytes = 0;
        std::mem::take(&mut out.frames).into()
    }

    /// The queued frames and what the sources have ready now, if any.
    async fn take_ready(&self) -> Option<Vec<Frame>> {
        let mut frames = {
            let mut out = lock(&self.out);
            self.take(&mut out)
        };
        if let Poll::Ready(more) =
            std::future::poll_fn(|cx| Poll::Ready(self.poll_sources(cx))).await
        {
            frames.extend(more);
        }
        (!frames.is_empty()).then_some(frames)
    }

    /// Poll the sources: `Ready` with their frames when some are ready.
    fn poll_sources(&self, cx: &mut Context<'_>) -> Poll<Vec<Frame>> {
        let sources = lock(&self.sources).clone();
        let mut out = Vec::new();
        let mut ended = Vec::new();
        for (i, s) in sources.iter().enumerate() {
            if let Poll::Ready(false) = s.poll_frames(cx, &mut out) {
                ended.push(i);
            }
        }
        if !ended.is_empty() {
            let mut now = lock(&self.sources);
            let keep: Vec<_> = now
                .iter()
                .filter(|s| !ended.iter().any(|&i| Arc::ptr_eq(s, &sources[i])))
                .cloned()
                .collect();
            *now = Arc::from(keep);
        }
        if out.is_empty() {
            Poll::Pending
        } else {
            Poll::Ready(out)
        }
    }

    fn close(&self, reason: CloseReason) {
        let keep = {
            let mut out = lock(&self.out);
            if out.closed.is_some() {
                return;
            }
            out.closed = Some(reason);
            // What a pending poll answers: a noop when the client closed, else a close.
            let last = if reason == CloseReason::ClientClose {
                Packet::Noop
            } else {
                Packet::Close
            };
            out.frames.push_back(Frame::new(&last));
            // When the client closed with no poll pending, the next poll (one that raced
            // the close) still gets the noop; then the session is gone.
            reason == CloseReason::ClientClose
                && !matches!(out.carrier, Carrier::WebSocket)
                && !out.get_busy
        };
        if let Some(engine) = self.engine.upgrade() {
            if keep {
                let sid = self.sid.clone();
                let engine = Arc::downgrade(&engine);
                tokio::spawn(async move {
                    tokio::time::sleep(CLOSED_GRACE).await;
                    if let Some(engine) = engine.upgrade() {
                        lock(&engine.sessions).remove(&sid);
                    }
                });
            } else {
                lock(&engine.sessions).remove(&self.sid);
            }
        }
        lock(&self._slot).take();
        // Sources may hold the application's state, which holds this session.
        *lock(&self.sources) = Arc::from(Vec::new());
        self.closed.cancel();
        self.readable.notify_waiters();
    }

    /// A WebSocket for this polling session arrived: `false` if one is upgrading
    /// already (or it is not polling).
    fn begin_probe(&self) -> bool {
        let mut out = lock(&self.out);
        if out.carrier != Carrier::Polling || out.closed.is_some() {
            return false;
        }
        out.carrier = Carrier::Probing;
        true
    }

    /// The upgrade failed: back to polling.
    fn end_probe(&self) {
        {
            let mut out = lock(&self.out);
            if matches!(out.carrier, Carrier::Probing | Carrier::Upgrading) {
                out.carrier = Carrier::Polling;
            }
        }
        self.readable.notify_waiters();
    }

    /// Handle a packet from the client (either transport). `Err`: close with this.
    async fn receive(&self, p: Packet) -> Result<(), CloseReason> {
        match p {
            Packet::Message(data) => self.deliver(Inbound::Text(data)).await,
            Packet::Binary(data) => self.deliver(Inbound::Binary(data)).await,
            Packet::Pong(_) => {
                self.pong.notify_one();
                Ok(())
            }
            Packet::Close => Err(CloseReason::ClientClose),
            Packet::Noop => Ok(()),
            // Pings come from the server; opens and upgrades are not for here.
            _ => Err(CloseReason::ParseError),
        }
    }

    async fn deliver(&self, m: Inbound) -> Result<(), CloseReason> {
        tokio::select! {
            r = self.inbound.send(m) => r.map_err(|_| CloseReason::ServerClose),
            _ = self.closed.cancelled() => Err(CloseReason::ServerClose),
        }
    }
}

/// Ping every interval; close the session when a pong does not come in time.
async fn heartbeat(shared: Arc<Shared>, interval: Duration, timeout: Duration) {
    let ping = Frame::new(&Packet::Ping(Bytes::new()));
    loop {
        tokio::select! {
            _ = tokio::time::sleep(interval) => {}
            _ = shared.closed.cancelled() => return,
        }
        if !shared.push(ping.clone()) {
            return;
        }
        tokio::select! {
            _ = shared.pong.notified() => {}
            _ = tokio::time::sleep(timeout) => {
                debug!(sid = %shared.sid, "ping timeout");
                shared.close(CloseReason::PingTimeout);
                return;
            }
            _ = shared.closed.cancelled() => return,
        }
    }
}

/// The spec's errors.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum EioError {
    UnknownTransport,
    UnknownSid,
    BadHandshakeMethod,
    BadRequest,
    Forbidden,
    UnsupportedVersion,
}

impl EioError {
    fn response(self) -> Response {
        let (code, message) = match self {
            EioError::UnknownTransport => (0, "Transport unknown"),
            EioError::UnknownSid => (1, "Session ID unknown"),
            EioError::BadHandshakeMethod => (2, "Bad handshake method"),
            EioError::BadRequest => (3, "Bad request"),
            EioError::Forbidden => (4, "Forbidden"),
            EioError::UnsupportedVersion => (5, "Unsupported protocol version"),
        };
        let status = if self == EioError::Forbidden {
            StatusCode::FORBIDDEN
        } else {
            StatusCode::BAD_REQUEST
        };
        (
            status,
            [(header::CONTENT_TYPE, "application/json")],
            format!(r#"{{"code":{code},"message":"{message}"}}"#),
        )
            .into_response()
    }
}

struct Query<'a> {
    eio: Option<&'a str>,
    transport: Option<&'a str>,
    sid: Option<&'a str>,
}

fn parse_query(q: &str) -> Query<'_> {
    let mut out = Query {
        eio: None,
        transport: None,
        sid: None,
    };
    for pair in q.split('&') {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        match k {
            "EIO" => out.eio = Some(v),
            "transport" => out.transport = Some(v),
            "sid" => out.sid = Some(v),
            _ => {}
        }
    }
    out
}

/// A session id: this node's id, then 120 random bits (so that another node receiving
/// a poll of it knows where to forward it).
fn new_sid(gate: &Gate) -> Arc<str> {
    let bytes: [u8; 15] = rand::random();
    let random = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes);
    Arc::from(gate.hub().session_id(&random))
}

impl Engine {
    /// An endpoint with `cfg`, admitted by `gate`, running `app` for each session.
    pub fn new(gate: &Gate, cfg: EngineConfig, app: OnConnection) -> Engine {
        Engine {
            inner: Arc::new(EngineInner {
                cfg,
                gate: gate.clone(),
                sessions: Mutex::new(HashMap::new()),
                app,
            }),
        }
    }

    /// The settings.
    pub fn config(&self) -> &EngineConfig {
        &self.inner.cfg
    }

    /// Open sessions now.
    pub fn sessions(&self) -> usize {
        lock(&self.inner.sessions).len()
    }

    /// The routes: every method at `path` (with and without its trailing slash).
    pub fn router(&self, path: &str) -> Router {
        let trimmed = path.trim_end_matches('/');
        let mut r = Router::new().route(&format!("{trimmed}/"), any(endpoint));
        if !trimmed.is_empty() {
            r = r.route(trimmed, any(endpoint));
        }
        r.with_state(self.clone())
    }

    fn session(&self, sid: &str) -> Option<Arc<Shared>> {
        lock(&self.inner.sessions).get(sid).cloned()
    }

    /// A new session: registered, its heartbeat and application started.
    fn open(
        &self,
        carrier: Carrier,
        request: RequestInfo,
        slot: Option<OwnedSemaphorePermit>,
    ) -> (Arc<Shared>, String) {
        let cfg = &self.inner.cfg;
        let sid = new_sid(&self.inner.gate);
        let (tx, rx) = mpsc::channel(cfg.max_inbound.max(1));
        let shared = Arc::new(Shared {
            sid: sid.clone(),
            engine: Arc::downgrade(&self.inner),
            max_buffer: cfg.max_buffer,
            write_timeout: cfg.ping_interval + cfg.ping_timeout,
            out: Mutex::new(Out {
                frames: VecDeque::new(),
                bytes: 0,
                carrier,
                get_busy: false,
                post_busy: false,
                closed: None,
            }),
            readable: Notify::new(),
            sources: Mutex::new(Arc::from(Vec::new())),
            pong: Notify::new(),
            closed: CancellationToken::new(),
            _slot: Mutex::new(slot),
            inbound: tx,
        });
        lock(&self.inner.sessions).insert(sid.clone(), shared.clone());
        let upgrades =
            if carrier == Carrier::Polling && cfg.allow_upgrades && cfg.transports.websocket() {
                r#"["websocket"]"#
            } else {
                "[]"
            };
        let open = format!(
            r#"{{"sid":"{sid}","upgrades":{upgrades},"pingInterval":{},"pingTimeout":{},"maxPayload":{}}}"#,
            cfg.ping_interval.as_millis(),
            cfg.ping_timeout.as_millis(),
            cfg.max_payload
        );
        let gate = &self.inner.gate;
        gate.spawn(heartbeat(
            shared.clone(),
            cfg.ping_interval,
            cfg.ping_timeout,
        ));
        let socket = EngineSocket {
            handle: EngineHandle {
                shared: shared.clone(),
            },
            rx,
            request,
        };
        let app = (self.inner.app)(socket);
        let s = shared.clone();
        let stop = gate.stopped();
        gate.spawn(async move {
            tokio::select! {
                _ = app => s.close(CloseReason::ServerClose),
                _ = stop => s.close(CloseReason::Shutdown),
            }
        });
        (shared, open)
    }
}

fn cors(engine: &Engine, headers: &HeaderMap, resp: &mut Response) {
    let Some(origin) = headers.get(header::ORIGIN) else {
        return;
    };
    let h = resp.headers_mut();
    h.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, origin.clone());
    h.insert(header::VARY, HeaderValue::from_static("Origin"));
    if engine.inner.cfg.cors_credentials {
        h.insert(
            header::ACCESS_CONTROL_ALLOW_CREDENTIALS,
            HeaderValue::from_static("true"),
        );
    }
}

async fn endpoint(
    State(engine): State<Engine>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    req: Request<Body>,
) -> Response {
    let headers = req.headers().clone();
    let mut resp = route(&engine, peer, req).await;
    cors(&engine, &headers, &mut resp);
    resp
}

async fn route(engine: &Engine, peer: SocketAddr, mut req: Request<Body>) -> Response {
    let cfg = &engine.inner.cfg;
    let query_string = req.uri().query().unwrap_or("").to_string();
    let q = parse_query(&query_string);
    let transport = match q.transport {
        Some("polling") if cfg.transports.polling() => Carrier::Polling,
        Some("websocket") if cfg.transports.websocket() => Carrier::WebSocket,
        _ => return EioError::UnknownTransport.response(),
    };
    // The Origin allow-list applies to polling as to WebSocket.
    if !engine.inner.gate.origin_allowed(req.headers()) {
        return EioError::Forbidden.response();
    }
    if req.method() == Method::OPTIONS {
        let mut r = StatusCode::NO_CONTENT.into_response();
        let h = r.headers_mut();
        h.insert(
            header::ACCESS_CONTROL_ALLOW_METHODS,
            HeaderValue::from_static("GET, POST, OPTIONS"),
        );
        if let Some(v) = req.headers().get(header::ACCESS_CONTROL_REQUEST_HEADERS) {
            h.insert(header::ACCESS_CONTROL_ALLOW_HEADERS, v.clone());
        }
        return r;
    }
    let info = |req: &Request<Body>| RequestInfo {
        peer,
        query: query_string.clone(),
        headers: crate::transport::owned_headers(req.headers()),
    };
    match (q.sid, transport) {
        (None, _) if q.eio != Some("4") => EioError::UnsupportedVersion.response(),
        (None, _) if req.method() != Method::GET => EioError::BadHandshakeMethod.response(),
        (None, Carrier::Polling) => {
            let slot = match engine.inner.gate.admit_from(peer, req.headers()) {
                Ok(s) => s,
                Err(refusal) => return engine.inner.gate.refuse(peer, refusal),
            };
            let (_, open) = engine.open(Carrier::Polling, info(&req), Some(slot));
            polling_response(format!("0{open}").into_bytes())
        }
        (None, _) if !wsx::upgrade::is_upgrade_request(&req) => EioError::BadRequest.response(),
        (None, _) => {
            let e = engine.clone();
            let request = info(&req);
            let ws_cfg = engine.inner.gate.config().clone();
            let ws_cfg = limit_ws(ws_cfg, cfg.max_payload);
            engine.inner.gate.upgrade(
                peer,
                &mut req,
                Some(&ws_cfg),
                move |mut ws, _, _| async move {
                    let (shared, open) = e.open(Carrier::WebSocket, request, None);
                    shared.push(Frame::new(&Packet::Open(open)));
                    run_websocket(shared, &mut ws).await;
                },
            )
        }
        (Some(sid), carrier) => {
            let Some(shared) = engine.session(sid) else {
                // Another node's session (no sticky load balancing): its polls and
                // sends go there. An upgrade cannot be forwarded; the client keeps
                // polling.
                if carrier == Carrier::Polling && !crate::transport::was_forwarded(&req) {
                    if let Some(owner) = engine.inner.gate.hub().owner_of(sid).await {
                        return crate::transport::forward(&owner, req).await;
                    }
                }
                return EioError::UnknownSid.response();
            };
            if lock(&shared.out).closed.is_some() {
                // Closed: only its last frames are left, for one poll.
                return match (carrier, req.method() == Method::GET) {
                    (Carrier::Polling, true) => last_poll(engine, &shared),
                    _ => EioError::UnknownSid.response(),
                };
            }
            match carrier {
                Carrier::WebSocket => {
                    if !wsx::upgrade::is_upgrade_request(&req) {
                        return EioError::BadRequest.response();
                    }
                    let ws_cfg = limit_ws(engine.inner.gate.config().clone(), cfg.max_payload);
                    let timeout = cfg.upgrade_timeout;
                    // From the 101 on, a poll waits to see how the upgrade ends.
                    let probing = cfg.allow_upgrades && shared.begin_probe();
                    // Back to polling however the upgrade fails (the WebSocket's
                    // hand-over included: then this closure is dropped uncalled).
                    let s = shared.clone();
                    let guard = probing.then(|| ProbeGuard(shared.clone()));
                    let resp = engine.inner.gate.upgrade(
                        peer,
                        &mut req,
                        Some(&ws_cfg),
                        move |mut ws, _, _| async move {
                            let _guard = guard;
                            if probing {
                                upgrade(s, &mut ws, timeout).await;
                            } else {
                                let _ = ws
                                    .close(CloseCode::POLICY, "no upgrade for this session")
                                    .await;
                            }
                        },
                    );
                    resp
                }
                _ if req.method() == Method::GET => poll(&shared).await,
                _ if req.method() == Method::POST => post(&shared, req.into_body(), cfg).await,
                _ => EioError::BadRequest.response(),
            }
        }
    }
}

/// Ends a probe that did not become an upgrade (a no-op after one did).
struct ProbeGuard(Arc<Shared>);

impl Drop for ProbeGuard {
    fn drop(&mut self) {
        self.0.end_probe();
    }
}

fn limit_ws(cfg: wsx::ServerConfig, max_payload: usize) -> wsx::ServerConfig {
    let mut protocol = cfg.protocol.clone();
    protocol.max_message_size = protocol.max_message_size.min(max_payload.max(1));
    cfg.protocol(protocol)
}

/// Frames as one polling payload, joined by the record separator.
fn polling_body(frames: &[Frame]) -> Vec<u8> {
    let mut body = Vec::new();
    for (i, f) in frames.iter().enumerate() {
        if i > 0 {
            body.push(packet::SEPARATOR);
        }
        f.write_polling(&mut body);
    }
    body
}

fn polling_response(body: Vec<u8>) -> Response {
    (
        [
            (header::CONTENT_TYPE, "text/plain; charset=UTF-8"),
            (header::CACHE_CONTROL, "no-store"),
        ],
        body,
    )
        .into_response()
}

/// How long a polling session the client closed keeps its noop for a poll to come.
const CLOSED_GRACE: Duration = Duration::from_secs(1);

/// How long a poll that raced an upgrade waits before its 400.
const LATE_POLL_DELAY: Duration = Duration::from_millis(20);

/// A GET poll: wait for frames (or the session's end), answer them as one payload.
async fn poll(shared: &Arc<Shared>) -> Response {
    let arrived = {
        let mut out = lock(&shared.out);
        match out.carrier {
            Carrier::WebSocket => return EioError::BadRequest.response(),
            Carrier::Upgrading => return polling_response(b"6".to_vec()),
            Carrier::Polling | Carrier::Probing => {}
        }
        if out.get_busy {
            drop(out);
            // A second concurrent poll: the session is broken.
            shared.close(CloseReason::TransportError);
            return EioError::BadRequest.response();
        }
        out.get_busy = true;
        out.carrier
    };
    // Cleared however this request ends (a client that goes away mid-poll included).
    struct Busy<'a>(&'a Shared);
    impl Drop for Busy<'_> {
        fn drop(&mut self) {
            lock(&self.0.out).get_busy = false;
        }
    }
    let _busy = Busy(shared);
    loop {
        let notified = shared.readable.notified();
        tokio::pin!(notified);
        notified.as_mut().enable();
        let late = {
            let out = lock(&shared.out);
            match out.carrier {
                // The poll pending when the upgrade began ends with a noop.
                Carrier::Upgrading => return polling_response(b"6".to_vec()),
                Carrier::WebSocket if arrived == Carrier::Polling => {
                    return polling_response(b"6".to_vec())
                }
                // A poll sent while the upgrade was under way, which completed: as if
                // it came after (400), below.
                Carrier::WebSocket => true,
                Carrier::Polling | Carrier::Probing => false,
            }
        };
        if late {
            // The answer waits a moment so that it does not overtake the `3probe` written
            // just before on the WebSocket (the engine.io suite's client drops a message
            // that comes in after it stopped listening).
            tokio::time::sleep(LATE_POLL_DELAY).await;
            return EioError::BadRequest.response();
        }
        let frames = match shared.take_ready().await {
            Some(frames) => frames,
            None => tokio::select! {
                _ = notified => continue,
                frames = std::future::poll_fn(|cx| shared.poll_sources(cx)) => frames,
            },
        };
        return polling_response(polling_body(&frames));
    }
}

/// The poll after a session closed with no poll pending: its last frames, once.
fn last_poll(engine: &Engine, shared: &Shared) -> Response {
    lock(&engine.inner.sessions).remove(&shared.sid);
    let frames = {
        let mut out = lock(&shared.out);
        shared.take(&mut out)
    };
    if frames.is_empty() {
        return EioError::UnknownSid.response();
    }
    polling_response(polling_body(&frames))
}

/// A POST: the client's packets.
async fn post(shared: &Arc<Shared>, body: Body, cfg: &EngineConfig) -> Response {
    {
        let mut out = lock(&shared.out);
        if out.carrier == Carrier::WebSocket {
            return EioError::BadRequest.response();
        }
        if out.post_busy {
            drop(out);
            shared.close(CloseReason::TransportError);
            return EioError::BadRequest.response();
        }
        out.post_busy = true;
    }
    struct Busy<'a>(&'a Shared);
    impl Drop for Busy<'_> {
        fn drop(&mut self) {
            lock(&self.0.out).post_busy = false;
        }
    }
    let _busy = Busy(shared);
    let body = match axum::body::to_bytes(body, cfg.max_payload).await {
        Ok(b) => b,
        Err(_) => {
            shared.close(CloseReason::TransportError);
            return (StatusCode::PAYLOAD_TOO_LARGE, "payload too large").into_response();
        }
    };
    let Ok(packets) = packet::decode_payload(body) else {
        shared.close(CloseReason::ParseError);
        return EioError::BadRequest.response();
    };
    for p in packets {
        if let Err(reason) = shared.receive(p).await {
            shared.close(reason);
            if reason != CloseReason::ClientClose {
                return EioError::BadRequest.response();
            }
            break;
        }
    }
    ([(header::CONTENT_TYPE, "text/html; charset=UTF-8")], "ok").into_response()
}

/// The upgrade of a polling session: the probe, the noop to the pending poll, the `5`,
/// then the WebSocket carries the session. The session is `Probing` already.
async fn upgrade<S: AsyncRead + AsyncWrite + Unpin>(
    shared: Arc<Shared>,
    ws: &mut WebSocket<S>,
    timeout: Duration,
) {
    let probe = async {
        let mut peeked = None;
        loop {
            let msg = match peeked.take() {
                Some(m) => m,
                None => ws.next().await,
            };
            let packet = match msg {
                Some(Ok(Message::Text(t))) => Packet::decode_text(t.into_bytes()),
                Some(Ok(Message::Ping(_) | Message::Pong(_))) => continue,
                _ => return false,
            };
            match packet {
                Ok(Packet::Ping(d)) if &d[..] == b"probe" => {
                    {
                        let mut out = lock(&shared.out);
                        if out.carrier != Carrier::Probing || out.closed.is_some() {
                            return false;
                        }
                        out.carrier = Carrier::Upgrading;
                    }
                    if ws.send(Message::text("3probe")).await.is_err() {
                        return false;
                    }
                    // A client that sent its `5` with the probe completes now, before
                    // polls hear of the upgrade.
                    match ws.next().now_or_never() {
                        Some(m) => peeked = Some(m),
                        None => shared.readable.notify_waiters(),
                    }
                }
                Ok(Packet::Upgrade) => {
                    let mut out = lock(&shared.out);
                    if out.carrier != Carrier::Upgrading {
                        return false;
                    }
                    out.carrier = Carrier::WebSocket;
                    return true;
                }
                Ok(Packet::Noop) => {}
                _ => return false,
            }
        }
    };
    let upgraded = tokio::select! {
        r = tokio::time::timeout(timeout, probe) => r.unwrap_or(false),
        _ = shared.closed.cancelled() => false,
    };
    if !upgraded {
        shared.end_probe();
        let _ = ws.close(CloseCode::NORMAL, "").await;
        return;
    }
    // Polls still pending end (a noop, or 400 for those sent during the upgrade).
    shared.readable.notify_waiters();
    run_websocket(shared, ws).await;
}

/// Carry a session over a WebSocket until either side closes it. The WebSocket is
/// borrowed: the connection's task keeps it once (an `async fn` keeps what it is given
/// twice, once as passed and once bound, in the future an open connection holds).
async fn run_websocket<S: AsyncRead + AsyncWrite + Unpin>(
    shared: Arc<Shared>,
    ws: &mut WebSocket<S>,
) {
    let reason = loop {
        let notified = shared.readable.notified();
        tokio::pin!(notified);
        notified.as_mut().enable();
        if let Some(frames) = shared.take_ready().await {
            if !write_frames(ws, &frames, shared.write_timeout).await {
                break CloseReason::TransportError;
            }
            continue;
        }
        if shared.closed.is_cancelled() {
            break lock(&shared.out).closed.unwrap_or(CloseReason::ServerClose);
        }
        tokio::select! {
            _ = notified => {}
            frames = std::future::poll_fn(|cx| shared.poll_sources(cx)) => {
                if !write_frames(ws, &frames, shared.write_timeout).await {
                    break CloseReason::TransportError;
                }
            }
            msg = ws.next() => {
                let packet = match msg {
                    Some(Ok(Message::Text(t))) => Packet::decode_text(t.into_bytes()),
                    Some(Ok(Message::Binary(b))) => Ok(Packet::Binary(b)),
                    Some(Ok(_)) => continue,
                    Some(Err(_)) => break CloseReason::TransportError,
                    None => break CloseReason::TransportClose,
                };
                let r = match packet {
                    Ok(p) => shared.receive(p).await,
                    Err(_) => Err(CloseReason::ParseError),
                };
                if let Err(reason) = r {
                    break reason;
                }
            }
        }
    };
    shared.close(reason);
    let (code, why) = match reason {
        CloseReason::ParseError => (CloseCode::PROTOCOL_ERROR, "invalid packet"),
        CloseReason::PingTimeout => (CloseCode::POLICY, "ping timeout"),
        CloseReason::SlowConsumer => (CloseCode::POLICY, "slow consumer"),
        CloseReason::Shutdown => (CloseCode::GOING_AWAY, "server shutting down"),
        CloseReason::Reconnect => (CloseCode::SERVICE_RESTART, "reconnect"),
        _ => (CloseCode::NORMAL, ""),
    };
    if !matches!(
        reason,
        CloseReason::TransportClose | CloseReason::TransportError
    ) {
        let _ = Box::pin(ws.close(code, why)).await;
    }
}

/// Write frames; a timer (`timeout`) only when the socket cannot take them at once.
async fn write_frames<S: AsyncRead + AsyncWrite + Unpin>(
    ws: &mut WebSocket<S>,
    frames: &[Frame],
    timeout: Duration,
) -> bool {
    let mut write = std::pin::pin!(write_all(ws, frames));
    match std::future::poll_fn(|cx| Poll::Ready(write.as_mut().poll(cx))).await {
        Poll::Ready(ok) => ok,
        Poll::Pending => matches!(tokio::time::timeout(timeout, write).await, Ok(true)),
    }
}

async fn write_all<S: AsyncRead + AsyncWrite + Unpin>(
    ws: &mut WebSocket<S>,
    frames: &[Frame],
) -> bool {
    for f in frames {
        // The session's own close packet is the WebSocket's close frame.
        if f.is(b"1") || f.is(b"6") {
            continue;
        }
        let r = match &f.ws {
            Some(shared) => ws.send_shared(shared).await,
            None if f.text => match wsx::Text::try_from_bytes(f.data.clone()) {
                Ok(t) => ws.feed(Message::Text(t)).await,
                Err(_) => continue,
            },
            None => ws.feed(Message::Binary(f.data.clone())).await,
        };
        if r.is_err() {
            return false;
        }
    }
    ws.flush().await.is_ok()
}
