//! The server side of the SockJS protocol (0.3.3, what sockjs-client 1.x speaks): every
//! transport — `websocket` (SockJS framing over RFC 6455) and the raw WebSocket,
//! `xhr-streaming`, `xhr-polling`, `eventsource`, `htmlfile`, `jsonp-polling` — the
//! `iframe.html` page, `/info`, heartbeats, close frames, session timeouts, the
//! one-receiver rule, response limits for streaming, `JSESSIONID`, CORS and caching
//! headers. A [`SockJs`] endpoint hands each new session to an application as a
//! [`SockJsSession`] (messages in) with a [`SessionHandle`] (messages out, close).
//!
//! Bounds: each HTTP session holds one of the [`Gate`]'s connection slots; a session
//! with no receiving request for `disconnect_delay` is closed and forgotten; a
//! streaming response ends after `response_limit` bytes; a client's POST is at most
//! `max_message_bytes`; messages waiting for a receiver are at most `max_buffer` bytes
//! (beyond, the session closes as a slow consumer).

pub mod frame;

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::body::Body;
use axum::extract::{ConnectInfo, State};
use axum::response::{IntoResponse, Response};
use axum::routing::any;
use axum::Router;
use bytes::Bytes;
use futures_util::future::BoxFuture;
use futures_util::StreamExt;
use http::{header, HeaderMap, HeaderValue, Method, Request, StatusCode};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::{mpsc, Notify, OwnedSemaphorePermit};
use tokio_util::sync::CancellationToken;
use wsx::{CloseCode, Message, WebSocket};

use self::frame::Frame;
use crate::hub::shards::lock;
use crate::transport::Gate;

/// Settings of a SockJS endpoint.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct SockJsConfig {
    /// Bytes a streaming response carries before it ends (the client opens another).
    /// Default: 128 KiB.
    pub response_limit: usize,
    /// A heartbeat frame after this long without a frame. Default: 25 s.
    pub heartbeat: Duration,
    /// A session with no receiving request this long is closed. Default: 5 s.
    pub disconnect_delay: Duration,
    /// Whether the WebSocket transports are on. Default: yes.
    pub websocket: bool,
    /// Whether to set a `JSESSIONID` cookie (for sticky load balancers). Default: no.
    pub cookie_needed: bool,
    /// Where the iframe page loads sockjs-client from.
    pub sockjs_url: String,
    /// Largest POST body (`xhr_send`, `jsonp_send`) or WebSocket message. Default: 1 MiB.
    pub max_message_bytes: usize,
    /// Most bytes of messages waiting for a receiver. Default: 4 MiB.
    pub max_buffer: usize,
    /// Most messages received and not yet taken by the application. Default: 256.
    pub max_inbound: usize,
}

impl Default for SockJsConfig {
    fn default() -> Self {
        SockJsConfig {
            response_limit: 128 << 10,
            heartbeat: Duration::from_secs(25),
            disconnect_delay: Duration::from_secs(5),
            websocket: true,
            cookie_needed: false,
            sockjs_url: "https://cdn.jsdelivr.net/npm/sockjs-client@1/dist/sockjs.min.js".into(),
            max_message_bytes: 1 << 20,
            max_buffer: 4 << 20,
            max_inbound: 256,
        }
    }
}

impl SockJsConfig {
    /// The streaming response limit.
    pub fn response_limit(mut self, bytes: usize) -> Self {
        self.response_limit = bytes;
        self
    }

    /// The WebSocket transports on or off.
    pub fn websocket(mut self, on: bool) -> Self {
        self.websocket = on;
        self
    }

    /// The `JSESSIONID` cookie on or off.
    pub fn cookie_needed(mut self, on: bool) -> Self {
        self.cookie_needed = on;
        self
    }

    /// The sockjs-client URL of the iframe page.
    pub fn sockjs_url(mut self, url: impl Into<String>) -> Self {
        self.sockjs_url = url.into();
        self
    }

    /// Heartbeat and session timeout.
    pub fn timing(mut self, heartbeat: Duration, disconnect_delay: Duration) -> Self {
        self.heartbeat = heartbeat;
        self.disconnect_delay = disconnect_delay;
        self
    }
}

/// The application run for each session.
pub type OnSession = Arc<dyn Fn(SockJsSession) -> BoxFuture<'static, ()> + Send + Sync>;

/// A SockJS endpoint: its sessions and what runs each one.
#[derive(Clone)]
pub struct SockJs {
    inner: Arc<Inner>,
}

struct Inner {
    cfg: SockJsConfig,
    gate: Gate,
    sessions: Mutex<HashMap<String, Arc<Session>>>,
    app: OnSession,
    iframe: String,
    etag: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Phase {
    /// Created; its `o` not sent yet.
    New,
    Open,
    Closed(u16, String),
}

struct St {
    outbox: VecDeque<String>,
    bytes: usize,
    phase: Phase,
    receiver: bool,
    /// Bumped at each detach: an expiry check compares it.
    generation: u64,
}

struct Session {
    id: String,
    st: Mutex<St>,
    notify: Notify,
    closed: CancellationToken,
    inbound: mpsc::Sender<String>,
    max_buffer: usize,
    _slot: Mutex<Option<OwnedSemaphorePermit>>,
}

/// Sends to a session and closes it; cheap to clone.
#[derive(Clone)]
pub struct SessionHandle {
    s: Arc<Session>,
}

/// A session as the application sees it.
pub struct SockJsSession {
    handle: SessionHandle,
    rx: mpsc::Receiver<String>,
    /// The peer's address.
    pub peer: SocketAddr,
    /// The headers of the request that opened the session.
    pub headers: HeaderMap,
    /// The transport of the request that opened it: `websocket`, `raw-websocket`,
    /// `xhr-streaming`, `xhr-polling`, `eventsource`, `htmlfile`, `jsonp-polling`, or
    /// the plain fallbacks `sse` and `polling`.
    pub transport: &'static str,
}

impl SockJsSession {
    /// The handle to send with.
    pub fn handle(&self) -> &SessionHandle {
        &self.handle
    }

    /// The next message from the client; `None` once the session is closed.
    pub async fn recv(&mut self) -> Option<String> {
        crate::transport::recv_or_closed(&mut self.rx, &self.handle.s.closed).await
    }
}

impl SessionHandle {
    /// The session id.
    pub fn id(&self) -> &str {
        &self.s.id
    }

    /// Send a message. `false` when the session is closed.
    pub fn send(&self, msg: impl Into<String>) -> bool {
        let msg = msg.into();
        let overflow = {
            let mut st = lock(&self.s.st);
            if matches!(st.phase, Phase::Closed(..)) {
                return false;
            }
            st.bytes += msg.len() + 8;
            st.outbox.push_back(msg);
            st.bytes > self.s.max_buffer
        };
        if overflow {
            self.close(3008, "slow consumer");
            return false;
        }
        self.s.notify.notify_waiters();
        true
    }

    /// Close the session with `code` and `reason` (every later request is told so
    /// until the session expires).
    pub fn close(&self, code: u16, reason: &str) {
        self.s.close(code, reason);
    }

    /// Whether the session is closed.
    pub fn is_closed(&self) -> bool {
        self.s.closed.is_cancelled()
    }

    /// Resolves once the session is closed.
    pub async fn closed(&self) {
        self.s.closed.cancelled().await
    }
}

impl Session {
    fn new(
        id: String,
        cfg: &SockJsConfig,
        slot: Option<OwnedSemaphorePermit>,
    ) -> (Arc<Session>, mpsc::Receiver<String>) {
        let (tx, rx) = mpsc::channel(cfg.max_inbound.max(1));
        let s = Arc::new(Session {
            id,
            st: Mutex::new(St {
                outbox: VecDeque::new(),
                bytes: 0,
                phase: Phase::New,
                receiver: false,
                generation: 0,
            }),
            notify: Notify::new(),
            closed: CancellationToken::new(),
            inbound: tx,
            max_buffer: cfg.max_buffer,
            _slot: Mutex::new(slot),
        });
        (s, rx)
    }

    fn close(&self, code: u16, reason: &str) {
        {
            let mut st = lock(&self.st);
            if matches!(st.phase, Phase::Closed(..)) {
                return;
            }
            st.phase = Phase::Closed(code, reason.to_string());
            st.outbox.clear();
            st.bytes = 0;
        }
        self.closed.cancel();
        self.notify.notify_waiters();
    }

    /// Messages from the client, in order; `false` if the session is closed.
    async fn deliver(&self, msgs: Vec<String>) -> bool {
        for m in msgs {
            let sent = tokio::select! {
                r = self.inbound.send(m) => r.is_ok(),
                _ = self.closed.cancelled() => false,
            };
            if !sent {
                return false;
            }
        }
        true
    }

    /// The next frame for a receiver: the open frame, messages, the close, or a
    /// heartbeat after `heartbeat` of nothing.
    async fn next_frame(&self, heartbeat: Duration) -> Frame {
        let sleep = tokio::time::sleep(heartbeat);
        tokio::pin!(sleep);
        loop {
            let notified = self.notify.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            {
                let mut st = lock(&self.st);
                match &st.phase {
                    Phase::New => {
                        st.phase = Phase::Open;
                        return Frame::Open;
                    }
                    Phase::Closed(code, reason) => return Frame::Close(*code, reason.clone()),
                    Phase::Open if !st.outbox.is_empty() => {
                        st.bytes = 0;
                        return Frame::Messages(st.outbox.drain(..).collect());
                    }
                    Phase::Open => {}
                }
            }
            tokio::select! {
                _ = notified => {}
                _ = &mut sleep => return Frame::Heartbeat,
            }
        }
    }
}

/// A receiving request's hold on its session: released (and the session's expiry
/// started) when dropped; a receiver that ends before it finished (the client went
/// away) closes the session with 1002.
struct Receiver {
    engine: Weak<Inner>,
    s: Arc<Session>,
    done: bool,
}

impl Receiver {
    /// Become `s`'s receiving request; `None` when another one is attached.
    fn attach(js: &SockJs, s: &Arc<Session>) -> Option<Receiver> {
        let busy = std::mem::replace(&mut lock(&s.st).receiver, true);
        (!busy).then(|| Receiver {
            engine: Arc::downgrade(&js.inner),
            s: s.clone(),
            done: false,
        })
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        let generation = {
            let mut st = lock(&self.s.st);
            st.receiver = false;
            st.generation += 1;
            st.generation
        };
        if !self.done {
            self.s.close(1002, "Connection interrupted");
        }
        let Some(engine) = self.engine.upgrade() else {
            return;
        };
        let delay = engine.cfg.disconnect_delay;
        let s = self.s.clone();
        let engine = Arc::downgrade(&engine);
        tokio::spawn(async move {
            tokio::time::sleep(delay).await;
            let expired = {
                let st = lock(&s.st);
                !st.receiver && st.generation == generation
            };
            if expired {
                s.close(1000, "session expired");
                lock(&s._slot).take();
                if let Some(engine) = engine.upgrade() {
                    let mut all = lock(&engine.sessions);
                    if all.get(&s.id).is_some_and(|x| Arc::ptr_eq(x, &s)) {
                        all.remove(&s.id);
                        if !s.id.contains('.') {
                            engine.gate.hub().register_session_later(&s.id, false);
                        }
                    }
                }
            }
        });
    }
}

/// How a receiving transport wraps frames.
#[derive(Debug, Clone)]
enum Wrap {
    /// xhr, xhr_streaming: a line.
    Line,
    /// eventsource.
    Event,
    /// htmlfile: a script element calling `p`.
    Script,
    /// jsonp: a call of the callback.
    Jsonp(String),
}

impl Wrap {
    fn content_type(&self) -> &'static str {
        match self {
            Wrap::Line | Wrap::Jsonp(_) => "application/javascript; charset=UTF-8",
            Wrap::Event => "text/event-stream",
            Wrap::Script => "text/html; charset=UTF-8",
        }
    }

    fn wrap(&self, frame: &Frame) -> Bytes {
        let f = frame.encode();
        Bytes::from(match self {
            Wrap::Line => format!("{f}\n"),
            Wrap::Event => format!("data: {f}\r\n\r\n"),
            Wrap::Script => format!("<script>\np({});\n</script>\r\n", frame::js_string(&f)),
            Wrap::Jsonp(cb) => format!("/**/{cb}({});\r\n", frame::js_string(&f)),
        })
    }
}

const HTMLFILE_HEAD: &str = r#"<!doctype html>
<html><head>
  <meta http-equiv="X-UA-Compatible" content="IE=edge" />
  <meta http-equiv="Content-Type" content="text/html; charset=UTF-8" />
</head><body><h2>Don't panic!</h2>
  <script>
    document.domain = document.domain;
    var c = parent.{{ callback }};
    c.start();
    function p(d) {c.message(d);};
    window.onload = function() {c.stop();};
  </script>"#;

const NOT_CACHED: &str = "no-store, no-cache, no-transform, must-revalidate, max-age=0";
const ONE_YEAR: u64 = 31_536_000;

/// An HTTP date (RFC 7231 IMF-fixdate) `secs` seconds from now.
fn http_date(from_now: u64) -> String {
    let t = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
        + from_now;
    let (days, secs) = (t / 86_400, t % 86_400);
    // Civil from days (Howard Hinnant's algorithm).
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    let weekday = ["Thu", "Fri", "Sat", "Sun", "Mon", "Tue", "Wed"][(days % 7) as usize];
    let mon = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ][(month - 1) as usize];
    format!(
        "{weekday}, {day:02} {mon} {year} {:02}:{:02}:{:02} GMT",
        secs / 3600,
        secs / 60 % 60,
        secs % 60
    )
}

fn hv(s: &str) -> HeaderValue {
    HeaderValue::from_str(s).unwrap_or_else(|_| HeaderValue::from_static(""))
}

/// What a request needs for its answer's headers.
struct Ctx {
    origin: Option<HeaderValue>,
    cookie: Option<String>,
}

impl Ctx {
    fn of(headers: &HeaderMap, cookie_needed: bool) -> Ctx {
        let cookie = cookie_needed.then(|| {
            headers
                .get_all(header::COOKIE)
                .iter()
                .filter_map(|v| v.to_str().ok())
                .flat_map(|v| v.split(';'))
                .find_map(|c| c.trim().strip_prefix("JSESSIONID=").map(str::to_string))
                .unwrap_or_else(|| "dummy".into())
        });
        Ctx {
            origin: headers.get(header::ORIGIN).cloned(),
            cookie,
        }
    }

    fn cors(&self, h: &mut HeaderMap) {
        match &self.origin {
            Some(o) => {
                h.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, o.clone());
                h.insert(
                    header::ACCESS_CONTROL_ALLOW_CREDENTIALS,
                    HeaderValue::from_static("true"),
                );
            }
            None => {
                h.insert(
                    header::ACCESS_CONTROL_ALLOW_ORIGIN,
                    HeaderValue::from_static("*"),
                );
            }
        }
    }

    fn dynamic(&self, h: &mut HeaderMap, content_type: &'static str) {
        h.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
        h.insert(header::CACHE_CONTROL, HeaderValue::from_static(NOT_CACHED));
        if let Some(c) = &self.cookie {
            h.insert(header::SET_COOKIE, hv(&format!("JSESSIONID={c}; path=/")));
        }
    }
}

fn text(status: StatusCode, body: &'static str) -> Response {
    (
        status,
        [(header::CONTENT_TYPE, "text/plain; charset=UTF-8")],
        body,
    )
        .into_response()
}

fn not_found() -> Response {
    text(StatusCode::NOT_FOUND, "Not found")
}

fn method_not_allowed(allow: &str) -> Response {
    let mut r = Response::new(Body::empty());
    *r.status_mut() = StatusCode::METHOD_NOT_ALLOWED;
    r.headers_mut().insert(header::ALLOW, hv(allow));
    r
}

/// The answer to a CORS preflight.
fn options(ctx: &Ctx, req: &HeaderMap, methods: &'static str) -> Response {
    let mut r = Response::new(Body::empty());
    *r.status_mut() = StatusCode::NO_CONTENT;
    let h = r.headers_mut();
    h.insert(
        header::CACHE_CONTROL,
        hv(&format!("public, max-age={ONE_YEAR}")),
    );
    h.insert(header::EXPIRES, hv(&http_date(ONE_YEAR)));
    h.insert(header::ACCESS_CONTROL_MAX_AGE, hv(&ONE_YEAR.to_string()));
    h.insert(
        header::ACCESS_CONTROL_ALLOW_METHODS,
        HeaderValue::from_static(methods),
    );
    if let Some(v) = req
        .get(header::ACCESS_CONTROL_REQUEST_HEADERS)
        .filter(|v| !v.is_empty())
    {
        h.insert(header::ACCESS_CONTROL_ALLOW_HEADERS, v.clone());
    }
    ctx.cors(h);
    r
}

fn new_entropy() -> u32 {
    rand::random()
}

impl SockJs {
    /// An endpoint with `cfg`, admitted by `gate`, running `app` for each session.
    pub fn new(gate: &Gate, cfg: SockJsConfig, app: OnSession) -> SockJs {
        let iframe = format!(
            r#"<!DOCTYPE html>
<html>
<head>
  <meta http-equiv="X-UA-Compatible" content="IE=edge" />
  <meta http-equiv="Content-Type" content="text/html; charset=UTF-8" />
  <script src="{}"></script>
  <script>
    document.domain = document.domain;
    SockJS.bootstrap_iframe();
  </script>
</head>
<body>
  <h2>Don't panic!</h2>
  <p>This is a SockJS hidden iframe. It's used for cross domain magic.</p>
</body>
</html>"#,
            cfg.sockjs_url.replace('"', "%22")
        );
        let etag = {
            use std::hash::{Hash, Hasher};
            let mut h = std::collections::hash_map::DefaultHasher::new();
            iframe.hash(&mut h);
            format!("\"{:016x}\"", h.finish())
        };
        SockJs {
            inner: Arc::new(Inner {
                cfg,
                gate: gate.clone(),
                sessions: Mutex::new(HashMap::new()),
                app,
                iframe,
                etag,
            }),
        }
    }

    /// The settings.
    pub fn config(&self) -> &SockJsConfig {
        &self.inner.cfg
    }

    /// Sessions open now (HTTP transports; WebSocket sessions are not in the table).
    pub fn sessions(&self) -> usize {
        lock(&self.inner.sessions).len()
    }

    /// The routes: everything under `prefix` (no trailing slash, e.g. `/echo`).
    pub fn router(&self, prefix: &str) -> Router {
        let prefix = prefix.trim_end_matches('/').to_string();
        let ep = Endpoint {
            js: self.clone(),
            prefix: Arc::from(prefix.as_str()),
        };
        let mut r = Router::new()
            .route(&format!("{prefix}/"), any(endpoint))
            .route(&format!("{prefix}/{{*rest}}"), any(endpoint));
        if !prefix.is_empty() {
            r = r.route(&prefix, any(endpoint));
        }
        r.with_state(ep)
    }

    /// Start the application on a new session.
    fn start(
        &self,
        s: &Arc<Session>,
        rx: mpsc::Receiver<String>,
        peer: SocketAddr,
        headers: HeaderMap,
        transport: &'static str,
    ) {
        let handle = SessionHandle { s: s.clone() };
        let app = (self.inner.app)(SockJsSession {
            handle: handle.clone(),
            rx,
            peer,
            headers: crate::transport::owned_headers(&headers),
            transport,
        });
        let stop = self.inner.gate.stopped();
        self.inner.gate.spawn(async move {
            tokio::select! {
                _ = app => handle.close(3000, "Go away!"),
                _ = stop => handle.close(1001, "Server shutting down"),
            }
        });
    }
}

#[derive(Clone)]
struct Endpoint {
    js: SockJs,
    prefix: Arc<str>,
}

async fn endpoint(
    State(ep): State<Endpoint>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    req: Request<Body>,
) -> Response {
    let path = req.uri().path().to_string();
    let rest = path.strip_prefix(&*ep.prefix).unwrap_or("").to_string();
    route(ep.js, peer, rest, req).await
}

async fn route(js: SockJs, peer: SocketAddr, rest: String, mut req: Request<Body>) -> Response {
    let js = &js;
    let cfg = &js.inner.cfg;
    let ctx = Ctx::of(req.headers(), cfg.cookie_needed);
    if !js.inner.gate.origin_allowed(req.headers()) {
        return text(StatusCode::FORBIDDEN, "Origin not allowed");
    }
    let method = req.method().clone();
    let segs: Vec<String> = rest
        .trim_start_matches('/')
        .split('/')
        .map(str::to_string)
        .collect();
    match rest.as_str() {
        "" | "/" => {
            return if method == Method::GET {
                text(StatusCode::OK, "Welcome to SockJS!\n")
            } else {
                method_not_allowed("GET")
            }
        }
        "/info" => {
            return match method {
                Method::GET => {
                    let body = format!(
                        r#"{{"websocket":{},"cookie_needed":{},"origins":["*:*"],"entropy":{}}}"#,
                        cfg.websocket,
                        cfg.cookie_needed,
                        new_entropy()
                    );
                    let mut r = body.into_response();
                    let h = r.headers_mut();
                    let no_cookie = Ctx {
                        origin: ctx.origin.clone(),
                        cookie: None,
                    };
                    no_cookie.dynamic(h, "application/json; charset=UTF-8");
                    no_cookie.cors(h);
                    r
                }
                Method::OPTIONS => options(&ctx, req.headers(), "OPTIONS, GET"),
                _ => method_not_allowed("OPTIONS, GET"),
            }
        }
        "/websocket" => {
            return if cfg.websocket {
                websocket(js, peer, &mut req, true, None).await
            } else {
                not_found()
            }
        }
        _ => {}
    }
    if segs.len() == 1 {
        let name = segs[0].as_str();
        let iframe = name == "iframe.html"
            || (name.starts_with("iframe-") && name.ends_with(".html") && name.len() >= 12);
        if iframe && method == Method::GET {
            return iframe_page(js, req.headers());
        }
        return not_found();
    }
    let valid = |s: &str| !s.is_empty() && !s.contains('.');
    if segs.len() != 3 || !valid(&segs[0]) || !valid(&segs[1]) {
        return not_found();
    }
    let (session_id, transport) = (segs[1].clone(), segs[2].as_str());
    // Another node's session (no sticky load balancing): its HTTP requests go there.
    // A WebSocket cannot be forwarded: it opens a session where it lands.
    if transport != "websocket"
        && !crate::transport::was_forwarded(&req)
        && !lock(&js.inner.sessions).contains_key(&session_id)
    {
        if let Some(owner) = js.inner.gate.hub().owner_of(&session_id).await {
            return crate::transport::forward(&owner, req).await;
        }
    }
    let query = req.uri().query().unwrap_or("").to_string();
    match (transport, &method) {
        ("websocket", m) if cfg.websocket => {
            if *m != Method::GET {
                return method_not_allowed("GET");
            }
            websocket(js, peer, &mut req, false, Some(session_id)).await
        }
        ("xhr" | "xhr_send" | "xhr_streaming", &Method::OPTIONS) => {
            options(&ctx, req.headers(), "OPTIONS, POST")
        }
        ("xhr", &Method::POST) => {
            receive(js, peer, req.headers(), session_id, Wrap::Line, None).await
        }
        ("xhr_streaming", &Method::POST) => {
            let prelude = Bytes::from(format!("{}\n", "h".repeat(2048)));
            receive(
                js,
                peer,
                req.headers(),
                session_id,
                Wrap::Line,
                Some(prelude),
            )
            .await
        }
        ("eventsource", &Method::GET) => {
            receive(
                js,
                peer,
                req.headers(),
                session_id,
                Wrap::Event,
                Some(Bytes::from_static(b"\r\n")),
            )
            .await
        }
        ("htmlfile" | "jsonp", &Method::GET) => {
            let cb = match frame::param(&query, "c", false) {
                None => {
                    return text(
                        StatusCode::INTERNAL_SERVER_ERROR,
                        "\"callback\" parameter required",
                    )
                }
                Some(c) if !frame::valid_callback(&c) => {
                    return text(
                        StatusCode::INTERNAL_SERVER_ERROR,
                        "invalid \"callback\" parameter",
                    )
                }
                Some(c) => c,
            };
            if transport == "jsonp" {
                receive(js, peer, req.headers(), session_id, Wrap::Jsonp(cb), None).await
            } else {
                let mut head = HTMLFILE_HEAD.replace("{{ callback }}", &cb);
                let pad = 1024usize.saturating_sub(head.len()) + 14;
                head.push_str(&" ".repeat(pad));
                head.push_str("\r\n\r\n");
                receive(
                    js,
                    peer,
                    req.headers(),
                    session_id,
                    Wrap::Script,
                    Some(Bytes::from(head)),
                )
                .await
            }
        }
        ("xhr_send", &Method::POST) => send(js, req, &session_id, false, &ctx).await,
        ("jsonp_send", &Method::POST) => send(js, req, &session_id, true, &ctx).await,
        ("xhr" | "xhr_send" | "xhr_streaming" | "jsonp_send", _) => {
            method_not_allowed("OPTIONS, POST")
        }
        ("eventsource" | "htmlfile" | "jsonp", _) => method_not_allowed("GET"),
        _ => not_found(),
    }
}

fn iframe_page(js: &SockJs, headers: &HeaderMap) -> Response {
    let etag = &js.inner.etag;
    let cached = headers
        .get(header::IF_NONE_MATCH)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v == etag);
    let mut r = if cached {
        let mut r = Response::new(Body::empty());
        *r.status_mut() = StatusCode::NOT_MODIFIED;
        r
    } else {
        let mut r = js.inner.iframe.clone().into_response();
        r.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/html; charset=UTF-8"),
        );
        r
    };
    let h = r.headers_mut();
    h.insert(
        header::CACHE_CONTROL,
        hv(&format!("public, max-age={ONE_YEAR}")),
    );
    h.insert(header::EXPIRES, hv(&http_date(ONE_YEAR)));
    h.insert(header::ETAG, hv(etag));
    r
}

/// The plain HTTP transports: the same sessions and application as the SockJS
/// endpoint, without SockJS framing, for a client of its own (`web/wsx.js`).
///
/// - Server-sent events: `GET {sse}` opens a session and streams it:
///   `event: session` with `{"session": ID}`, then each message as one `data:` line, `:`
///   comments as heartbeats, `event: close` with `{"code", "reason"}` at the end.
/// - Long-polling: `POST {poll}` opens a session (`{"session": ID}`); `GET {poll}/ID`
///   answers the messages waiting as a JSON array of the raw messages (`[]` after the
///   heartbeat interval with none), 410 with `{"code", "reason"}` once closed, 409 while
///   another poll is pending.
/// - Either: `POST {sse or poll}/ID` sends the body's messages (one per line) → 204;
///   404 for a session that does not exist or is closed.
///
/// Session ids are 128 random bits; every request must come from an allowed origin.
impl SockJs {
    /// The SSE and long-polling routes at `sse` and `poll`.
    pub fn fallback_router(&self, sse: &str, poll: &str) -> Router {
        let ep = self.clone();
        Router::new()
            .route(sse, any(sse_open))
            .route(&format!("{sse}/{{id}}"), any(fallback_send))
            .route(poll, any(poll_open))
            .route(&format!("{poll}/{{id}}"), any(poll_session))
            .with_state(ep)
    }

    /// A new session with a random id, its application started.
    fn open_random(
        &self,
        peer: SocketAddr,
        headers: &HeaderMap,
        open: bool,
        transport: &'static str,
    ) -> Result<Arc<Session>, wsx::Refusal> {
        // 128 random bits after this node's id: any node can tell where it lives.
        let id = {
            use base64::Engine as _;
            let bytes: [u8; 16] = rand::random();
            let random = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes);
            self.inner.gate.hub().session_id(&random)
        };
        let s = find_or_open(self, &id, peer, headers, transport)?;
        if open {
            lock(&s.st).phase = Phase::Open;
        }
        Ok(s)
    }
}

/// A plain-transport request that may not go on: from a refused origin (403), or with
/// another method than `allowed` (405).
fn refused(js: &SockJs, req: &Request<Body>, allowed: &[Method]) -> Option<Response> {
    if !js.inner.gate.origin_allowed(req.headers()) {
        return Some(text(StatusCode::FORBIDDEN, "Origin not allowed"));
    }
    if !allowed.contains(req.method()) {
        let allow: Vec<&str> = allowed.iter().map(Method::as_str).collect();
        return Some(method_not_allowed(&allow.join(", ")));
    }
    None
}

fn json_close(code: u16, reason: &str) -> String {
    let mut s = format!(r#"{{"code":{code},"reason":"#);
    frame::quote(reason, &mut s);
    s.push('}');
    s
}

async fn sse_open(
    State(js): State<SockJs>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    req: Request<Body>,
) -> Response {
    if let Some(r) = refused(&js, &req, &[Method::GET]) {
        return r;
    }
    let s = match js.open_random(peer, req.headers(), false, "sse") {
        Ok(s) => s,
        Err(refusal) => return js.inner.gate.refuse(peer, refusal),
    };
    // A new session: nobody else receives on it.
    let receiver = Receiver::attach(&js, &s);
    let heartbeat = js.inner.cfg.heartbeat;
    let stream = futures_util::stream::unfold(receiver, move |r| async move {
        let mut r = r?;
        let chunk = match r.s.next_frame(heartbeat).await {
            Frame::Open => format!("event: session\ndata: {{\"session\":\"{}\"}}\n\n", r.s.id),
            Frame::Heartbeat => ":\n\n".to_string(),
            Frame::Messages(m) => m.iter().map(|m| format!("data: {m}\n\n")).collect(),
            Frame::Close(code, reason) => {
                r.done = true;
                let last = format!("event: close\ndata: {}\n\n", json_close(code, &reason));
                return Some((Ok::<_, std::convert::Infallible>(Bytes::from(last)), None));
            }
        };
        Some((Ok(Bytes::from(chunk)), Some(r)))
    });
    let mut resp = Response::new(Body::from_stream(stream));
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/event-stream"),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static(NOT_CACHED));
    resp
}

async fn poll_open(
    State(js): State<SockJs>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    req: Request<Body>,
) -> Response {
    if let Some(r) = refused(&js, &req, &[Method::POST]) {
        return r;
    }
    let s = match js.open_random(peer, req.headers(), true, "polling") {
        Ok(s) => s,
        Err(refusal) => return js.inner.gate.refuse(peer, refusal),
    };
    // Until its first poll the session expires like one between polls.
    if let Some(mut r) = Receiver::attach(&js, &s) {
        r.done = true;
    }
    json_response(StatusCode::OK, format!(r#"{{"session":"{}"}}"#, s.id))
}

fn json_response(status: StatusCode, body: String) -> Response {
    let mut r = (status, body).into_response();
    let h = r.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static(NOT_CACHED));
    r
}

async fn poll_session(
    State(js): State<SockJs>,
    axum::extract::Path(id): axum::extract::Path<String>,
    req: Request<Body>,
) -> Response {
    if let Some(r) = refused(&js, &req, &[Method::GET, Method::POST]) {
        return r;
    }
    if req.method() == Method::POST {
        return send_lines(&js, req, &id).await;
    }
    let Some(s) = lock(&js.inner.sessions).get(&id).cloned() else {
        return elsewhere(&js, &id, req).await;
    };
    let Some(mut r) = Receiver::attach(&js, &s) else {
        return text(StatusCode::CONFLICT, "Another poll is pending");
    };
    let f = r.s.next_frame(js.inner.cfg.heartbeat).await;
    r.done = true;
    match f {
        Frame::Messages(m) => json_response(StatusCode::OK, format!("[{}]", m.join(","))),
        Frame::Close(code, reason) => json_response(StatusCode::GONE, json_close(code, &reason)),
        Frame::Open | Frame::Heartbeat => json_response(StatusCode::OK, "[]".into()),
    }
}

async fn fallback_send(
    State(js): State<SockJs>,
    axum::extract::Path(id): axum::extract::Path<String>,
    req: Request<Body>,
) -> Response {
    if let Some(r) = refused(&js, &req, &[Method::POST]) {
        return r;
    }
    send_lines(&js, req, &id).await
}

/// A request for a session this node does not hold: forwarded to the node that does
/// (its id names it; no sticky load balancing needed), else 404.
async fn elsewhere(js: &SockJs, id: &str, req: Request<Body>) -> Response {
    if !crate::transport::was_forwarded(&req) {
        if let Some(owner) = js.inner.gate.hub().owner_of(id).await {
            return crate::transport::forward(&owner, req).await;
        }
    }
    not_found()
}

/// A POST of messages, one per line.
async fn send_lines(js: &SockJs, req: Request<Body>, id: &str) -> Response {
    let Some(s) = lock(&js.inner.sessions).get(id).cloned() else {
        return elsewhere(js, id, req).await;
    };
    if matches!(lock(&s.st).phase, Phase::Closed(..)) {
        return not_found();
    }
    let body = match axum::body::to_bytes(req.into_body(), js.inner.cfg.max_message_bytes).await {
        Ok(b) => b,
        Err(_) => return text(StatusCode::PAYLOAD_TOO_LARGE, "Payload too large."),
    };
    let Ok(body) = std::str::from_utf8(&body) else {
        return text(StatusCode::BAD_REQUEST, "Messages must be UTF-8.");
    };
    let msgs: Vec<String> = body
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(str::to_string)
        .collect();
    if !s.deliver(msgs).await {
        return not_found();
    }
    StatusCode::NO_CONTENT.into_response()
}

/// Find `id`'s session, or open it (a receiving request opens sessions).
fn find_or_open(
    js: &SockJs,
    id: &str,
    peer: SocketAddr,
    headers: &HeaderMap,
    transport: &'static str,
) -> Result<Arc<Session>, wsx::Refusal> {
    let mut all = lock(&js.inner.sessions);
    if let Some(s) = all.get(id) {
        return Ok(s.clone());
    }
    let slot = js.inner.gate.admit_from(peer, headers)?;
    let (s, rx) = Session::new(id.to_string(), &js.inner.cfg, Some(slot));
    all.insert(id.to_string(), s.clone());
    drop(all);
    js.start(&s, rx, peer, headers.clone(), transport);
    Ok(s)
}

/// A receiving request: polling (one frame, then the response ends) or streaming
/// (frames as chunks until the response limit).
async fn receive(
    js: &SockJs,
    peer: SocketAddr,
    headers: &HeaderMap,
    id: String,
    wrap: Wrap,
    prelude: Option<Bytes>,
) -> Response {
    let ctx = Ctx::of(headers, js.inner.cfg.cookie_needed);
    let streaming = prelude.is_some();
    let content_type = wrap.content_type();
    let transport = match (&wrap, streaming) {
        (Wrap::Line, true) => "xhr-streaming",
        (Wrap::Line, false) => "xhr-polling",
        (Wrap::Event, _) => "eventsource",
        (Wrap::Script, _) => "htmlfile",
        (Wrap::Jsonp(_), _) => "jsonp-polling",
    };
    let new = !lock(&js.inner.sessions).contains_key(&id);
    let s = match find_or_open(js, &id, peer, headers, transport) {
        Ok(s) => s,
        Err(refusal) => return js.inner.gate.refuse(peer, refusal),
    };
    if new {
        // Registered before the client hears of the session: its next request may
        // reach another node, which then finds it here.
        js.inner.gate.hub().register_session(&id, true).await;
    }
    let receiver = Receiver::attach(js, &s);
    let busy = receiver
        .is_none()
        .then(|| wrap.wrap(&Frame::Close(2010, "Another connection still open".into())));
    let heartbeat = js.inner.cfg.heartbeat;
    let limit = js.inner.cfg.response_limit;
    let cors = matches!(wrap, Wrap::Line);
    let mut resp = if !streaming {
        let body = match (busy, receiver) {
            (Some(b), _) => b,
            (None, Some(mut r)) => {
                let f = r.s.next_frame(heartbeat).await;
                r.done = true;
                wrap.wrap(&f)
            }
            (None, None) => Bytes::new(),
        };
        Response::new(Body::from(body))
    } else {
        // prelude, then frames until the limit, the close, or a busy answer.
        struct Stream {
            prelude: Option<Bytes>,
            busy: Option<Bytes>,
            receiver: Option<Receiver>,
            sent: usize,
            ended: bool,
        }
        let state = Stream {
            prelude,
            busy,
            receiver,
            sent: 0,
            ended: false,
        };
        let stream = futures_util::stream::unfold(state, move |mut st| {
            let wrap = wrap.clone();
            async move {
                if let Some(p) = st.prelude.take() {
                    return Some((Ok::<_, std::convert::Infallible>(p), st));
                }
                if let Some(b) = st.busy.take() {
                    st.ended = true;
                    return Some((Ok(b), st));
                }
                if st.ended {
                    if let Some(r) = st.receiver.as_mut() {
                        r.done = true;
                    }
                    return None;
                }
                let r = st.receiver.as_mut()?;
                let f = r.s.next_frame(heartbeat).await;
                let chunk = wrap.wrap(&f);
                st.sent += chunk.len();
                if matches!(f, Frame::Close(..)) || st.sent >= limit {
                    st.ended = true;
                }
                Some((Ok(chunk), st))
            }
        });
        Response::new(Body::from_stream(stream))
    };
    let h = resp.headers_mut();
    ctx.dynamic(h, content_type);
    if cors {
        ctx.cors(h);
    }
    resp
}

/// `xhr_send` / `jsonp_send`: the client's messages.
async fn send(js: &SockJs, req: Request<Body>, id: &str, jsonp: bool, ctx: &Ctx) -> Response {
    let Some(s) = lock(&js.inner.sessions).get(id).cloned() else {
        return not_found();
    };
    if matches!(lock(&s.st).phase, Phase::Closed(..)) {
        return not_found();
    }
    let form = req
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/x-www-form-urlencoded"));
    let body = match axum::body::to_bytes(req.into_body(), js.inner.cfg.max_message_bytes).await {
        Ok(b) => b,
        Err(_) => return text(StatusCode::PAYLOAD_TOO_LARGE, "Payload too large."),
    };
    let body = String::from_utf8_lossy(&body).into_owned();
    let payload = if jsonp && form {
        frame::param(&body, "d", true).unwrap_or_default()
    } else {
        body
    };
    if payload.is_empty() {
        return text(StatusCode::INTERNAL_SERVER_ERROR, "Payload expected.");
    }
    let Some(msgs) = frame::parse_messages(&payload) else {
        return text(StatusCode::INTERNAL_SERVER_ERROR, "Broken JSON encoding.");
    };
    if !s.deliver(msgs).await {
        return not_found();
    }
    let mut r = if jsonp {
        Response::new(Body::from("ok"))
    } else {
        let mut r = Response::new(Body::empty());
        *r.status_mut() = StatusCode::NO_CONTENT;
        r
    };
    let h = r.headers_mut();
    ctx.dynamic(h, "text/plain; charset=UTF-8");
    if !jsonp {
        ctx.cors(h);
    }
    r
}

/// The WebSocket transports: SockJS framing (`/<server>/<session>/websocket`), or raw
/// messages (`/websocket`). Each WebSocket is a session of its own.
async fn websocket(
    js: &SockJs,
    peer: SocketAddr,
    req: &mut Request<Body>,
    raw: bool,
    id: Option<String>,
) -> Response {
    let upgrade_ok = req
        .headers()
        .get(header::UPGRADE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.eq_ignore_ascii_case("websocket"));
    if !upgrade_ok {
        return text(
            StatusCode::BAD_REQUEST,
            "Can \"Upgrade\" only to \"WebSocket\".",
        );
    }
    let connection_ok = req
        .headers()
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|t| t.trim().eq_ignore_ascii_case("upgrade"));
    if !connection_ok {
        return text(
            StatusCode::BAD_REQUEST,
            "\"Connection\" must be \"Upgrade\".",
        );
    }
    let js = js.clone();
    let headers = req.headers().clone();
    let cfg = js.inner.gate.config().clone();
    let mut protocol = cfg.protocol.clone();
    protocol.max_message_size = protocol
        .max_message_size
        .min(js.inner.cfg.max_message_bytes);
    let cfg = cfg.protocol(protocol);
    js.inner
        .gate
        .clone()
        .upgrade(peer, req, Some(&cfg), move |mut ws, _, _| async move {
            let (s, rx) = Session::new(id.unwrap_or_default(), &js.inner.cfg, None);
            let transport = if raw { "raw-websocket" } else { "websocket" };
            js.start(&s, rx, peer, headers, transport);
            run_websocket(&js, s, &mut ws, raw).await;
        })
}

/// Carry a session over a WebSocket until either side closes it. The WebSocket is
/// borrowed: the connection's task keeps it once (an `async fn` keeps what it is given
/// twice, once as passed and once bound, in the future an open connection holds).
async fn run_websocket<S: AsyncRead + AsyncWrite + Unpin>(
    js: &SockJs,
    s: Arc<Session>,
    ws: &mut WebSocket<S>,
    raw: bool,
) {
    let heartbeat = js.inner.cfg.heartbeat;
    let write_timeout = heartbeat;
    if !raw {
        lock(&s.st).phase = Phase::Open;
        if ws.send(Message::text("o")).await.is_err() {
            s.close(1006, "Connection closed");
            return;
        }
    } else {
        lock(&s.st).phase = Phase::Open;
    }
    loop {
        tokio::select! {
            f = s.next_frame(heartbeat) => {
                let out = match (&f, raw) {
                    (Frame::Close(code, reason), true) => {
                        let _ = ws.close(CloseCode(*code), reason).await;
                        return;
                    }
                    (Frame::Close(code, reason), false) => {
                        let _ = tokio::time::timeout(write_timeout, ws.send(Message::text(f.encode()))).await;
                        let _ = ws.close(CloseCode(*code), reason).await;
                        return;
                    }
                    (Frame::Messages(m), true) => m.clone(),
                    (Frame::Heartbeat, true) => continue,
                    _ => vec![f.encode()],
                };
                for m in out {
                    if !matches!(tokio::time::timeout(write_timeout, ws.feed(Message::text(m))).await, Ok(Ok(()))) {
                        s.close(1006, "Connection closed");
                        return;
                    }
                }
                if ws.flush().await.is_err() {
                    s.close(1006, "Connection closed");
                    return;
                }
            }
            msg = ws.next() => match msg {
                Some(Ok(Message::Text(t))) => {
                    let t = t.as_str();
                    let msgs = if raw {
                        Some(vec![t.to_string()])
                    } else if t.is_empty() {
                        Some(Vec::new())
                    } else {
                        frame::parse_messages(t)
                    };
                    match msgs {
                        Some(m) => {
                            if !s.deliver(m).await {
                                return;
                            }
                        }
                        None => {
                            // Broken JSON: the connection ends.
                            s.close(1002, "Broken framing.");
                            let _ = ws.close(CloseCode::PROTOCOL_ERROR, "Broken framing.").await;
                            return;
                        }
                    }
                }
                Some(Ok(_)) => {}
                Some(Err(_)) | None => {
                    s.close(1006, "Connection closed");
                    while ws.next().await.is_some() {}
                    return;
                }
            }
        }
    }
}
