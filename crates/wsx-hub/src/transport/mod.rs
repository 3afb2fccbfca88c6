//! What carries sessions, shared by every front-end: admission of WebSocket upgrades
//! (a bound on open WebSockets, refusals counted and logged, the handshake's own time
//! bound), the shutdown signal and the tracking of connection tasks, so that a server
//! mounts front-end routers that all obey one limit and stop together.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;

use axum::body::Body;
use axum::response::{IntoResponse, Response};
use http::Request;
use tokio::sync::{watch, OwnedSemaphorePermit, Semaphore};
use tokio_util::task::TaskTracker;
use tracing::{debug, warn};
use wsx::upgrade::{refusal_response, try_upgrade, UpgradedIo};
use wsx::{Accepted, Refusal, ServerConfig, WebSocket};

use crate::hub::Hub;

pub mod limits;
pub mod loops;

use limits::{IpSlot, Limiter};

/// The header a forwarded request carries, so that it is never forwarded again.
pub const FORWARDED_HEADER: &str = "x-wsx-forwarded";

/// Whether `req` was already forwarded by another node.
pub fn was_forwarded(req: &Request<Body>) -> bool {
    req.headers().contains_key(FORWARDED_HEADER)
}

/// Pass an HTTP request (a poll, a send) for a session another node holds to that node
/// at `address` (`http://host:port`), and its answer back: what lets polling clients
/// work behind a load balancer without sticky sessions. One connection per request;
/// 502 if the node cannot be reached (5 s) or does not begin its answer (2 min).
pub async fn forward(address: &str, mut req: Request<Body>) -> Response {
    let bad_gateway = |why: String| {
        debug!(address, "forwarding failed: {why}");
        (
            http::StatusCode::BAD_GATEWAY,
            "the node holding this session cannot be reached",
        )
            .into_response()
    };
    let Some(host) = address.strip_prefix("http://") else {
        return bad_gateway("only http:// nodes are forwarded to".into());
    };
    let tcp = match tokio::time::timeout(
        FORWARD_CONNECT_TIMEOUT,
        tokio::net::TcpStream::connect(host),
    )
    .await
    {
        Ok(Ok(t)) => t,
        Ok(Err(e)) => return bad_gateway(e.to_string()),
        Err(_) => return bad_gateway("connect timed out".into()),
    };
    let _ = tcp.set_nodelay(true);
    let (mut sender, conn) =
        match hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(tcp)).await {
            Ok(c) => c,
            Err(e) => return bad_gateway(e.to_string()),
        };
    tokio::spawn(conn);
    req.headers_mut()
        .insert(FORWARDED_HEADER, http::HeaderValue::from_static("1"));
    match tokio::time::timeout(FORWARD_HEAD_TIMEOUT, sender.send_request(req)).await {
        Ok(Ok(resp)) => resp.map(Body::new),
        Ok(Err(e)) => bad_gateway(e.to_string()),
        Err(_) => bad_gateway("no answer in time".into()),
    }
}

/// How long a forward waits to reach the node holding the session.
const FORWARD_CONNECT_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);

/// How long a forward waits for that node's answer to begin: longer than any poll
/// holds (a long-poll answers within its heartbeat, 25 s by default). Each forward
/// belongs to one incoming request, so their number is bounded as requests are.
const FORWARD_HEAD_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(120);

/// A request body that must arrive whole within a time from the end of its head: a
/// client that announces a body and sends it slowly, or not at all, gets
/// [`BodyTimedOut`] (the API answers 408, the connection ends) instead of holding its
/// connection and a task for ever. A server wraps every request's body in one.
pub struct TimedBody<B> {
    inner: B,
    deadline: std::pin::Pin<Box<tokio::time::Sleep>>,
}

/// The error of a [`TimedBody`] that did not arrive in time.
#[derive(Debug, Clone, Copy)]
pub struct BodyTimedOut;

impl std::fmt::Display for BodyTimedOut {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("the request body did not arrive in time")
    }
}

impl std::error::Error for BodyTimedOut {}

impl BodyTimedOut {
    /// Whether `e` (or an error it wraps) is a body that did not arrive in time.
    pub fn caused(e: &(dyn std::error::Error + 'static)) -> bool {
        let mut cause = Some(e);
        while let Some(c) = cause {
            if c.is::<BodyTimedOut>() {
                return true;
            }
            cause = c.source();
        }
        false
    }
}

impl<B> TimedBody<B> {
    /// `inner`, which must end within `limit` from now.
    pub fn new(inner: B, limit: std::time::Duration) -> TimedBody<B> {
        TimedBody {
            inner,
            deadline: Box::pin(tokio::time::sleep(limit)),
        }
    }
}

impl<B> hyper::body::Body for TimedBody<B>
where
    B: hyper::body::Body<Data = bytes::Bytes> + Unpin,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    type Data = bytes::Bytes;
    type Error = Box<dyn std::error::Error + Send + Sync>;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<hyper::body::Frame<Self::Data>, Self::Error>>> {
        use std::task::Poll;
        if let Poll::Ready(frame) = std::pin::Pin::new(&mut self.inner).poll_frame(cx) {
            return Poll::Ready(frame.map(|f| f.map_err(Into::into)));
        }
        match self.deadline.as_mut().poll(cx) {
            Poll::Ready(()) => Poll::Ready(Some(Err(Box::new(BodyTimedOut)))),
            Poll::Pending => Poll::Pending,
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        self.inner.size_hint()
    }
}

/// A socket, its protocol core and what it holds: see [`loop_parts`].
pub type LoopParts = (
    std::net::TcpStream,
    wsx::wsx_proto::Connection,
    Option<Box<dyn std::any::Any + Send>>,
);

/// What an [`event_loop`](wsx::event_loop) adopts of a WebSocket upgraded over plain
/// TCP: the socket, the protocol core (with the bytes hyper read behind the upgrade
/// request put first in its input) and its hold on a deflate context. Fails for any
/// other transport (TLS).
pub fn loop_parts(ws: WebSocket<UpgradedIo>) -> std::io::Result<LoopParts> {
    let (io, mut conn, deflate) = ws.into_parts();
    let parts = io
        .into_inner()
        .downcast::<hyper_util::rt::TokioIo<tokio::net::TcpStream>>()
        .map_err(|_| std::io::Error::other("not a plain TCP connection"))?;
    if !parts.read_buf.is_empty() {
        // What the client sent right behind its request comes first.
        let buf = conn.input_buffer();
        let later = buf.split();
        buf.extend_from_slice(&parts.read_buf);
        buf.extend_from_slice(&later);
    }
    let tcp = parts.io.into_inner().into_std()?;
    let deflate = deflate.map(|d| Box::new(d) as Box<dyn std::any::Any + Send>);
    Ok((tcp, conn, deflate))
}

/// Resolves when the server starts shutting down (handed to each session).
pub type Stopped = std::pin::Pin<Box<dyn Future<Output = ()> + Send>>;

/// A WebSocket's places, taken when its upgrade was admitted: its slot among the
/// gate's open sessions and its place in its address's count. Given back on drop.
pub struct Held {
    _slot: OwnedSemaphorePermit,
    _ip: Option<Arc<IpSlot>>,
}

/// Admission and lifetime shared by every WebSocket endpoint of a server.
#[derive(Clone)]
pub struct Gate {
    hub: Arc<Hub>,
    cfg: Arc<ServerConfig>,
    slots: Arc<Semaphore>,
    max_sessions: usize,
    shutdown: watch::Receiver<bool>,
    drain: Arc<DrainState>,
    tasks: TaskTracker,
    limiter: Option<Arc<Limiter>>,
}

/// A drain under way: since when, over how long, and how many sessions were open when
/// it began (each is told to go at its own point of the window).
#[derive(Debug, Clone, Copy)]
pub struct Draining {
    /// When the drain began.
    pub since: tokio::time::Instant,
    /// The window the sessions' departures are spread over.
    pub window: std::time::Duration,
    /// Sessions open when it began.
    pub sessions: usize,
}

#[derive(Debug)]
struct DrainState {
    state: watch::Sender<Option<Draining>>,
    /// Sessions told so far: the next one's place in the window.
    told: std::sync::atomic::AtomicUsize,
}

impl DrainState {
    /// Claim the next session's point in `drain`'s window.
    fn departure(&self, drain: &Draining) -> tokio::time::Instant {
        let k = self.told.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        drain.departure(k)
    }
}

impl Draining {
    /// When the `k`-th session (from 0) is to go: evenly over the window, the first at
    /// its start.
    pub fn departure(&self, k: usize) -> tokio::time::Instant {
        let share = (k as f64 / self.sessions.max(1) as f64).min(1.0);
        self.since + self.window.mul_f64(share)
    }
}

/// The next item of `rx`; once `closed` is cancelled, only what is left in it.
pub async fn recv_or_closed<T>(
    rx: &mut tokio::sync::mpsc::Receiver<T>,
    closed: &tokio_util::sync::CancellationToken,
) -> Option<T> {
    tokio::select! {
        biased;
        m = rx.recv() => m,
        _ = closed.cancelled() => rx.try_recv().ok(),
    }
}

/// A copy of `headers` that owns its bytes. hyper parses a request's header values as
/// slices of its read buffer: a session that keeps them (an Engine.IO or SockJS
/// session's request headers) would keep that whole buffer (8 KiB) for its life.
/// (Names need no copy: `HeaderName::from_bytes`, which hyper uses, copies a custom
/// name, and a standard one is static.)
pub fn owned_headers(headers: &http::HeaderMap) -> http::HeaderMap {
    let mut owned = http::HeaderMap::with_capacity(headers.len());
    for (name, value) in headers {
        let mut copy =
            http::HeaderValue::from_bytes(value.as_bytes()).unwrap_or_else(|_| value.clone());
        copy.set_sensitive(value.is_sensitive());
        owned.append(name.clone(), copy);
    }
    owned
}

/// The drain, once `rx` says one has begun; `None` if its gate is gone first.
async fn drain_begins(rx: &mut watch::Receiver<Option<Draining>>) -> Option<Draining> {
    rx.wait_for(Option::is_some).await.ok().and_then(|d| *d)
}

/// Resolves once `rx` says the server is shutting down.
pub async fn stopped(mut rx: watch::Receiver<bool>) {
    let _ = rx.wait_for(|s| *s).await;
}

impl Gate {
    /// A gate for `hub`: at most `max_websockets` open at once (503 beyond), closed by
    /// `shutdown` turning true; connection tasks are spawned on `tasks`.
    pub fn new(
        hub: Arc<Hub>,
        cfg: ServerConfig,
        max_websockets: usize,
        shutdown: watch::Receiver<bool>,
        tasks: TaskTracker,
    ) -> Gate {
        Gate {
            hub,
            cfg: Arc::new(cfg),
            slots: Arc::new(Semaphore::new(max_websockets)),
            max_sessions: max_websockets,
            shutdown,
            drain: Arc::new(DrainState {
                state: watch::Sender::new(None),
                told: 0.into(),
            }),
            tasks,
            limiter: None,
        }
    }

    /// Sessions open now (WebSockets, HTTP sessions, STOMP over TCP).
    pub fn open_sessions(&self) -> usize {
        self.max_sessions
            .saturating_sub(self.slots.available_permits())
    }

    /// Begin draining: new sessions are refused (503, `Retry-After`), and each open
    /// session is told to reconnect elsewhere at its own point of `window` (its
    /// [`stopped`](Self::stopped) future resolves then), evenly spread so that the
    /// clients do not all arrive at other nodes at once. A second call changes nothing;
    /// both return the drain under way.
    pub fn drain(&self, window: std::time::Duration) -> Draining {
        let sessions = self.open_sessions();
        self.drain.state.send_if_modified(|d| {
            if d.is_some() {
                return false;
            }
            *d = Some(Draining {
                since: tokio::time::Instant::now(),
                window,
                sessions,
            });
            true
        });
        self.draining().unwrap_or(Draining {
            since: tokio::time::Instant::now(),
            window,
            sessions,
        })
    }

    /// The drain under way, if any.
    pub fn draining(&self) -> Option<Draining> {
        *self.drain.state.borrow()
    }

    /// Resolves when a drain begins.
    pub fn drain_begun(&self) -> impl Future<Output = Draining> + Send + 'static {
        let mut rx = self.drain.state.subscribe();
        async move {
            match drain_begins(&mut rx).await {
                Some(d) => d,
                // The gate is gone: no drain will begin.
                None => std::future::pending().await,
            }
        }
    }

    /// Limit handshakes per source address with `limiter` (which the listener also
    /// uses to count connections per address).
    pub fn with_limiter(mut self, limiter: Arc<Limiter>) -> Gate {
        self.limiter = Some(limiter);
        self
    }

    /// The hub.
    pub fn hub(&self) -> &Arc<Hub> {
        &self.hub
    }

    /// The WebSocket settings endpoints start from.
    pub fn config(&self) -> &ServerConfig {
        &self.cfg
    }

    /// Whether the server is shutting down.
    pub fn is_shutting_down(&self) -> bool {
        *self.shutdown.borrow()
    }

    /// Resolves when the server starts shutting down.
    pub fn shutting_down(&self) -> impl Future<Output = ()> + Send + 'static {
        stopped(self.shutdown.clone())
    }

    /// Claim the next session's point in `drain`'s window: when it is to go.
    pub fn departure(&self, drain: &Draining) -> tokio::time::Instant {
        self.drain.departure(drain)
    }

    /// A future that resolves when the session it is given to should end: when the
    /// server shuts down, or at the session's point of a drain's window.
    pub fn stopped(&self) -> impl Future<Output = ()> + Send + 'static {
        let mut shutdown = self.shutdown.clone();
        let mut drain_rx = self.drain.state.subscribe();
        let drain = self.drain.clone();
        // Every open connection holds this future while it waits: the wait for a drain
        // to begin is all it keeps (two watch waits); the departure's timer and second
        // wait are boxed only once a drain has begun.
        async move {
            let d = tokio::select! {
                _ = async { drop(shutdown.wait_for(|s| *s).await) } => return,
                d = drain_begins(&mut drain_rx) => match d {
                    Some(d) => d,
                    // The gate is gone: no drain will begin.
                    None => return stopped(shutdown).await,
                },
            };
            let at = drain.departure(&d);
            Box::pin(async move {
                tokio::select! {
                    _ = stopped(shutdown) => {}
                    _ = tokio::time::sleep_until(at) => {}
                }
            })
            .await
        }
    }

    /// Spawn a connection's task (tracked: shutdown waits for it).
    pub fn spawn<F: Future<Output = ()> + Send + 'static>(&self, f: F) {
        self.tasks.spawn(f);
    }

    /// Whether a request with these headers comes from an allowed origin (the
    /// WebSocket origin policy, applied to HTTP transports alike).
    pub fn origin_allowed(&self, headers: &http::HeaderMap) -> bool {
        let get = |h| {
            headers
                .get(h)
                .and_then(|v: &http::HeaderValue| v.to_str().ok())
        };
        self.cfg.handshake.origin.allows(
            get(http::header::ORIGIN),
            get(http::header::HOST).unwrap_or(""),
        )
    }

    /// Count and log a refused handshake; its response.
    pub fn refuse(&self, peer: SocketAddr, refusal: Refusal) -> Response {
        self.hub.metrics().refused(refusal.status, &refusal.reason);
        warn!(%peer, status = refusal.status, reason = %refusal.reason, "handshake refused");
        refusal_response(&refusal).into_response()
    }

    /// Take a slot for a session that is not an upgrade (STOMP over TCP, say): held
    /// until dropped; refused when the server is full or shutting down.
    pub fn admit(&self) -> Result<OwnedSemaphorePermit, Refusal> {
        let Ok(slot) = self.slots.clone().try_acquire_owned() else {
            return Err(Refusal::new(503, "too many connections").retry_after(1));
        };
        if self.is_shutting_down() {
            return Err(Refusal::new(503, "server shutting down").retry_after(1));
        }
        if self.draining().is_some() {
            return Err(Refusal::new(503, "server draining: use another node").retry_after(1));
        }
        Ok(slot)
    }

    /// [`admit`](Self::admit) a handshake from `peer` (a WebSocket upgrade, a new HTTP
    /// session) after the client's address has a handshake left (429 otherwise); the
    /// address is taken from forwarding headers when `peer` is a trusted proxy.
    pub fn admit_from(
        &self,
        peer: SocketAddr,
        headers: &http::HeaderMap,
    ) -> Result<OwnedSemaphorePermit, Refusal> {
        if let Some(l) = &self.limiter {
            l.handshake(l.client_ip(peer.ip(), headers))?;
        }
        self.admit()
    }

    /// Upgrade `req` to a WebSocket with the settings `cfg` (the gate's own, or an
    /// endpoint's variant with its subprotocols; `None`: the gate's) and run `session`
    /// on it on a tracked task, with a future that resolves when the server shuts down;
    /// returns the response to send (101, or the refusal). The slot is held until
    /// `session` ends; the hand-over of the connection is bounded by the handshake
    /// timeout.
    pub fn upgrade<F, Fut>(
        &self,
        peer: SocketAddr,
        req: &mut Request<Body>,
        cfg: Option<&ServerConfig>,
        session: F,
    ) -> Response
    where
        F: FnOnce(WebSocket<UpgradedIo>, Accepted, Stopped) -> Fut + Send + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        self.upgrade_holding(peer, req, cfg, move |ws, accepted, stop, held| {
            let session = session(ws, accepted, stop);
            async move {
                let _held = held;
                session.await
            }
        })
    }

    /// As [`upgrade`](Self::upgrade), but the session is given the connection's places
    /// ([`Held`]: its slot among the open sessions and in its address's count) to keep
    /// for as long as the connection is open: a session that hands its connection on
    /// (to a [`wsx::event_loop`], say) and ends gives them with it.
    pub fn upgrade_holding<F, Fut>(
        &self,
        peer: SocketAddr,
        req: &mut Request<Body>,
        cfg: Option<&ServerConfig>,
        session: F,
    ) -> Response
    where
        F: FnOnce(WebSocket<UpgradedIo>, Accepted, Stopped, Held) -> Fut + Send + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        if !wsx::upgrade::is_upgrade_request(req) {
            // A browser or curl opening the URL: say what the endpoint is.
            let path = req.uri().path().to_string();
            return self.refuse(
                peer,
                Refusal::new(
                    426,
                    format!("{path} is a WebSocket endpoint: open it with a WebSocket client (ws:// or wss://), e.g. wsx connect ws://HOST{path}"),
                ),
            );
        }
        let slot = match self.admit_from(peer, req.headers()) {
            Ok(slot) => slot,
            Err(refusal) => return self.refuse(peer, refusal),
        };
        // The TCP connection's place in its address's count goes with the WebSocket.
        let ip_slot = req.extensions_mut().remove::<Arc<IpSlot>>();
        let cfg = cfg.unwrap_or(&self.cfg);
        let (response, upgrade) = match try_upgrade(req, cfg) {
            Ok(ok) => ok,
            Err(refusal) => return self.refuse(peer, refusal),
        };
        // The hand-over, the shutdown future, the session's closure and the session
        // are each boxed: a task's future is as large as its largest state, and every
        // open connection would otherwise keep the room of the hand-over (the config,
        // the upgrade future) and of the closure's captures beside its session.
        let handover = Box::pin(tokio::time::timeout(
            cfg.handshake_timeout,
            upgrade.websocket(),
        ));
        let stop: Stopped = Box::pin(self.stopped());
        let session = Box::new(session);
        self.tasks.spawn(async move {
            let held = Held {
                _slot: slot,
                _ip: ip_slot,
            };
            // The session future is made in a statement of its own: a `match` on the
            // hand-over's result across the session's `.await` would keep the room of
            // that result (a whole WebSocket) in this task for the connection's life.
            let session = match handover.await {
                Ok(Ok((ws, accepted))) => Box::pin(session(ws, accepted, stop, held)),
                Ok(Err(e)) => return debug!(%peer, error = %e, "upgrade failed"),
                Err(_) => return debug!(%peer, "upgrade timed out"),
            };
            session.await
        });
        response.into_response()
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use std::time::Duration;

    use super::*;
    use crate::HubConfig;

    /// A connection's future keeps its WebSocket and session once (not twice, as an
    /// `async fn` given them would) and little beside: the paths a connection takes now
    /// and then are boxed.
    pub(crate) fn assert_small_session_future(held: usize, future: usize) {
        assert!(
            future <= held + 768,
            "the session future is {future} bytes for {held} of WebSocket and session"
        );
    }

    /// A server WebSocket over an in-memory pipe, and the pipe's other end.
    pub(crate) fn websocket() -> (WebSocket<tokio::io::DuplexStream>, tokio::io::DuplexStream) {
        let (io, peer) = tokio::io::duplex(64);
        let conn = wsx::wsx_proto::Connection::new(
            wsx::wsx_proto::Role::Server,
            Default::default(),
            std::time::Instant::now(),
        );
        (
            WebSocket::from_connection(io, conn, Default::default()),
            peer,
        )
    }

    fn new_gate() -> (Gate, watch::Sender<bool>) {
        let (tx, rx) = watch::channel(false);
        let hub = Hub::new(HubConfig::default());
        let gate = Gate::new(hub, ServerConfig::default(), 10, rx, TaskTracker::new());
        (gate, tx)
    }

    #[test]
    fn owned_headers_share_no_bytes_with_the_request() {
        let buffer = bytes::Bytes::from(b"x-custom: kept\r\n".repeat(512));
        let value = http::HeaderValue::from_maybe_shared(buffer.slice(10..14)).unwrap();
        let mut headers = http::HeaderMap::new();
        headers.insert("x-custom", value);
        headers.append("x-custom", http::HeaderValue::from_static("second"));
        let owned = owned_headers(&headers);
        assert_eq!(owned, headers);
        let within = |p: *const u8| buffer.as_ptr_range().contains(&p);
        assert!(within(headers["x-custom"].as_bytes().as_ptr()));
        assert!(!within(owned["x-custom"].as_bytes().as_ptr()));
    }

    /// Every open connection holds [`Gate::stopped`]'s future (boxed) for its life.
    #[tokio::test]
    async fn the_future_a_connection_waits_for_shutdown_on_is_small() {
        let (gate, _tx) = new_gate();
        let size = std::mem::size_of_val(&gate.stopped());
        assert!(size <= 400, "Gate::stopped's future is {size} bytes");
    }

    #[tokio::test(start_paused = true)]
    async fn stopped_resolves_at_shutdown_and_at_a_drains_departure() {
        let (gate, tx) = new_gate();
        let waiting = tokio::spawn(gate.stopped());
        tokio::task::yield_now().await;
        assert!(!waiting.is_finished());
        tx.send(true).unwrap();
        waiting.await.unwrap();

        let (gate, _tx) = new_gate();
        let _open = (gate.admit().unwrap(), gate.admit().unwrap());
        let (first, second) = (tokio::spawn(gate.stopped()), tokio::spawn(gate.stopped()));
        tokio::task::yield_now().await;
        let began = tokio::time::Instant::now();
        gate.drain(Duration::from_secs(10));
        first.await.unwrap();
        second.await.unwrap();
        // Two sessions open, spread over the window: the second leaves half-way.
        assert_eq!(began.elapsed(), Duration::from_secs(5));
    }
}
