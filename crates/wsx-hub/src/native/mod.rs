//! The native front-end: JSON commands over a raw WebSocket (`/connection/websocket`).
//! See `docs/protocol.md` for every command with an example.
//!
//! [`codec`] is pure decoding and encoding; [`Session`] maps commands onto a
//! protocol-neutral [`HubSession`], [`HubError`] onto error codes ([`error_code`], the
//! one table), and drains the session's deliveries into WebSocket frames.

pub mod codec;
mod on_loop;

pub use on_loop::{NativeLoops, OnLoop};

use std::borrow::Cow;
use std::net::SocketAddr;
use std::sync::{Arc, LazyLock};

use axum::body::Body;
use axum::extract::{ConnectInfo, State};
use axum::response::Response;
use axum::routing::get;
use axum::Router;
use bytes::Bytes;
use futures_util::{FutureExt, StreamExt};
use http::Request;
use serde_json::{json, Value};
use tokio::io::{AsyncRead, AsyncWrite};
use wsx::{CloseCode, Message, SharedFrame, WebSocket};

use crate::hub::rate::{Bucket, Verdict};

pub use self::codec::{close, codes};
use self::codec::{Command, DecodeError};
use crate::hub::auth::TokenError;
use crate::hub::backplane::HistoryQuery;
use crate::hub::error::HubError;
use crate::hub::publication::{EncodingSlot, Payload, StreamPosition};
use crate::hub::queue::{Delivery, Disconnect};
use crate::hub::session::{ConnectRequest, HubSession};
use crate::hub::Hub;
use crate::transport::Gate;

/// How many malformed commands a connection may send before it is closed.
pub const MAX_BAD_COMMANDS: u32 = 10;

/// The `/metrics` label of this front-end.
pub const FRONTEND: &str = "native";

/// Each publication's and presence event's frame, encoded once for every native
/// subscriber.
static FRAME: LazyLock<EncodingSlot<SharedFrame>> = LazyLock::new(EncodingSlot::register);

/// The native error code of a hub error: the one table.
pub fn error_code(e: &HubError) -> u16 {
    match e {
        HubError::BadChannel(_)
        | HubError::NotConnected
        | HubError::AlreadyConnected
        | HubError::UnknownMessage => codes::BAD_REQUEST,
        HubError::UnknownNamespace(_) | HubError::UnknownChannel => codes::UNKNOWN_CHANNEL,
        HubError::EpochChanged => codes::EPOCH_CHANGED,
        HubError::Unauthorized(TokenError::Expired) => codes::TOKEN_EXPIRED,
        HubError::Unauthorized(_) => codes::UNAUTHORIZED,
        HubError::PermissionDenied(_) => codes::PERMISSION_DENIED,
        HubError::AlreadySubscribed => codes::ALREADY_SUBSCRIBED,
        HubError::NotSubscribed => codes::NOT_SUBSCRIBED,
        HubError::LimitExceeded(_) => codes::LIMIT_EXCEEDED,
        HubError::NotAvailable(_) => codes::NOT_AVAILABLE,
        HubError::Unavailable(_) => codes::UNAVAILABLE,
    }
}

/// A reply error: a code of [`codes`] and its message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReplyError {
    /// One of [`codes`].
    pub code: u16,
    /// A human-readable message.
    pub message: String,
}

impl From<HubError> for ReplyError {
    fn from(e: HubError) -> Self {
        ReplyError {
            code: error_code(&e),
            message: e.to_string(),
        }
    }
}

impl From<DecodeError> for ReplyError {
    fn from(e: DecodeError) -> Self {
        ReplyError {
            code: e.code(),
            message: e.to_string(),
        }
    }
}

/// The close code and reason a disconnect is sent with.
pub fn close_for(d: &Disconnect) -> (u16, &str) {
    match d {
        Disconnect::SlowConsumer => (close::SLOW_CONSUMER, d.reason()),
        Disconnect::Server { code, reason, .. } => (*code, reason),
        _ => (CloseCode::GOING_AWAY.0, d.reason()),
    }
}

/// The native front-end's routes: `GET /connection/websocket`. The server must give
/// each request its peer address (`ConnectInfo<SocketAddr>`).
pub fn router(gate: &Gate) -> Router {
    router_on(gate, None)
}

/// [`router`], its WebSockets run on `loops` ([`NativeLoops`], for a server on plain
/// TCP: over TLS, pass `None` and each runs on a task).
pub fn router_on(gate: &Gate, loops: Option<Arc<NativeLoops>>) -> Router {
    Router::new()
        .route(PATH, get(endpoint))
        .with_state((gate.clone(), loops))
}

/// Where [`router`] mounts the native protocol.
pub const PATH: &str = "/connection/websocket";

async fn endpoint(
    State((gate, loops)): State<(Gate, Option<Arc<NativeLoops>>)>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    mut req: Request<Body>,
) -> Response {
    let hub = gate.hub().clone();
    gate.upgrade_holding(peer, &mut req, None, move |ws, _, stop, held| {
        let session = Session::new_via(hub, String::new(), "websocket");
        async move {
            match loops {
                Some(loops) => {
                    drop(stop);
                    if let Err(e) = loops.adopt(ws, held, session.on_loop()) {
                        tracing::debug!(%peer, error = %e, "native: not handed to an event loop");
                    }
                }
                None => {
                    let _held = held;
                    session.run_until(ws, stop).await
                }
            }
        }
    })
}

/// A transport of whole text messages the native protocol can run over (a SockJS
/// session, say): [`Session::run_messages`].
pub trait MessageTransport: Send {
    /// The next message from the client; `None` once the transport is closed.
    fn recv(&mut self) -> impl std::future::Future<Output = Option<String>> + Send;
    /// Send a message; `false` once the transport is closed.
    fn send(&mut self, text: String) -> bool;
    /// Close the transport with a close code and reason.
    fn close(&mut self, code: u16, reason: &str);
}

impl MessageTransport for crate::sockjs::SockJsSession {
    async fn recv(&mut self) -> Option<String> {
        crate::sockjs::SockJsSession::recv(self).await
    }

    fn send(&mut self, text: String) -> bool {
        self.handle().send(text)
    }

    fn close(&mut self, code: u16, reason: &str) {
        self.handle().close(code, reason);
    }
}

/// The SockJS endpoint carrying the native protocol (`/connection/sockjs`), for
/// clients that cannot hold a WebSocket open: sockjs-client's transports, the same
/// commands and pushes. The same sessions are also served without SockJS framing, for
/// `web/wsx.js` when WebSocket cannot get through: server-sent events at
/// `/connection/sse` and long-polling at `/connection/poll` (see
/// [`SockJs::fallback_router`](crate::sockjs::SockJs::fallback_router)).
pub fn sockjs_router(gate: &Gate, cfg: crate::sockjs::SockJsConfig) -> Router {
    let hub = gate.hub().clone();
    let js = crate::sockjs::SockJs::new(
        gate,
        cfg,
        Arc::new(move |s| {
            let via = match s.transport {
                t @ ("sse" | "polling") => Cow::Borrowed(t),
                t => Cow::Owned(format!("sockjs/{t}")),
            };
            Session::new_via(hub.clone(), String::new(), via)
                .run_messages(s)
                .boxed()
        }),
    );
    js.router(SOCKJS_PATH)
        .merge(js.fallback_router(SSE_PATH, POLL_PATH))
}

/// Where [`sockjs_router`] mounts the native protocol over SockJS.
pub const SOCKJS_PATH: &str = "/connection/sockjs";

/// Where [`sockjs_router`] mounts the native protocol over server-sent events.
pub const SSE_PATH: &str = "/connection/sse";

/// Where [`sockjs_router`] mounts the native protocol over long-polling.
pub const POLL_PATH: &str = "/connection/poll";

/// One native-protocol connection.
pub struct Session {
    hub: HubSession,
    bad_commands: u32,
    rate: Bucket,
}

/// What handling a command asks of the connection.
enum Outcome {
    Reply(String),
    Close(u16, &'static str),
}

impl Session {
    /// A session for a new connection of `user`, whom the transport authenticated (""
    /// for nobody; a connection token's subject takes its place).
    pub fn new(hub: Arc<Hub>, user: String) -> Session {
        Session::new_via(hub, user, "")
    }

    /// [`new`](Self::new) for a client that reached the server by `transport` (as
    /// [`via`](Self::via) records it).
    pub fn new_via(
        hub: Arc<Hub>,
        user: String,
        transport: impl Into<Cow<'static, str>>,
    ) -> Session {
        Session {
            rate: Bucket::new(&hub.config().commands),
            hub: HubSession::new_via(hub, FRONTEND, user, transport),
            bad_commands: 0,
        }
    }

    /// A session the server authenticated and subscribed itself (an admin page's
    /// feed, say): connected as `user` with the client name `name`, reached `via` a
    /// transport, subscribed to `channels` on the server's authority (no permission
    /// rule applies; the limits do).
    pub async fn trusted(
        hub: Arc<Hub>,
        user: &str,
        name: &str,
        via: &'static str,
        channels: &[&str],
    ) -> Result<Session, HubError> {
        let mut s = Session::new_via(hub, String::new(), via);
        s.hub
            .connect_trusted(user.to_string(), name.to_string(), String::new());
        for c in channels {
            s.hub.join(c, None).await?;
        }
        Ok(s)
    }

    /// Record how the client reached the server (presence shows it): `websocket`,
    /// `sse`, `polling`, `sockjs/<transport>`.
    pub fn via(mut self, transport: impl Into<Cow<'static, str>>) -> Session {
        self.hub.set_transport(transport);
        self
    }

    async fn handle(&mut self, text: &str) -> Outcome {
        self.hub.metrics().count_in(text.len());
        let (id, command) = codec::decode(text);
        let command = match command {
            Ok(c) => c,
            // Before `connect`, anything but a `connect` closes the connection (3009),
            // a malformed command included.
            Err(_) if !self.hub.is_connected() => {
                return Outcome::Close(close::NOT_CONNECTED, "connect first")
            }
            Err(e) => return self.bad(id, e.into()),
        };
        if !self.hub.is_connected() && !matches!(command, Command::Connect(_)) {
            return Outcome::Close(close::NOT_CONNECTED, "connect first");
        }
        let rate = &self.hub.hub().config().commands;
        match self.rate.take(rate, std::time::Instant::now()) {
            Verdict::Allowed => {}
            Verdict::Refused { .. } => {
                return Outcome::Reply(codec::error_reply(
                    id,
                    codes::TOO_MANY_REQUESTS,
                    "too many commands: slow down",
                ))
            }
            Verdict::Abusive => {
                return Outcome::Close(close::TOO_MANY_COMMANDS, "too many commands")
            }
        }
        let method = command.method();
        match self.dispatch(command).await {
            Ok(result) => Outcome::Reply(codec::reply(id, method, result)),
            Err(e) if e.code == codes::BAD_REQUEST => self.bad(id, e),
            Err(e) => Outcome::Reply(codec::error_reply(id, e.code, &e.message)),
        }
    }

    fn bad(&mut self, id: Option<u64>, e: ReplyError) -> Outcome {
        self.bad_commands += 1;
        if self.bad_commands > MAX_BAD_COMMANDS {
            Outcome::Close(close::BAD_REQUEST, "too many bad commands")
        } else {
            Outcome::Reply(codec::error_reply(id, e.code, &e.message))
        }
    }

    async fn dispatch(&mut self, command: Command) -> Result<Value, ReplyError> {
        let s = &mut self.hub;
        Ok(match command {
            Command::Connect(req) => {
                let connected = s
                    .connect(ConnectRequest {
                        token: req.token,
                        name: req.name,
                        info: req.info,
                    })
                    .await?;
                json!({
                    "client": s.client().to_string(),
                    "user": s.info().user,
                    "version": env!("CARGO_PKG_VERSION"),
                    "ping": s.hub().config().ping_interval_secs,
                    "subscribed": connected.subscribed,
                })
            }
            Command::Subscribe(req) => {
                let pos = req.recover.then_some(StreamPosition {
                    offset: req.offset,
                    epoch: req.epoch,
                });
                let r = s.subscribe(&req.channel, req.token.as_deref(), pos).await?;
                codec::subscribed_json(&r)
            }
            Command::Unsubscribe(req) => {
                s.unsubscribe(&req.channel).await?;
                json!({})
            }
            Command::Publish(req) => {
                let data = Bytes::from(req.data.get().as_bytes().to_vec());
                let p = s.publish(&req.channel, Payload::json(data)).await?;
                json!({ "offset": p.offset })
            }
            Command::Presence(req) => codec::presence_json(&s.presence(&req.channel).await?),
            Command::PresenceStats(req) => {
                let (clients, users) = s.presence_stats(&req.channel).await?;
                json!({ "num_clients": clients, "num_users": users })
            }
            Command::History(req) => {
                let query = HistoryQuery {
                    limit: req.limit,
                    since: req.since.as_ref().map(|s| s.offset),
                    reverse: req.reverse,
                };
                let epoch = req.since.as_ref().map(|s| s.epoch.as_str());
                let page = s.history(&req.channel, query, epoch).await?;
                codec::history_json(&page.publications, &page.position)
            }
            Command::Ping => json!({}),
        })
    }

    fn frame_for(d: &Delivery) -> SharedFrame {
        match d {
            Delivery::Publication {
                channel,
                publication,
            } => publication.encodings.get_or_init(*FRAME, || {
                SharedFrame::text(&codec::publication_push(channel, publication))
            }),
            Delivery::Join {
                channel,
                info,
                encodings,
            } => encodings.get_or_init(*FRAME, || {
                SharedFrame::text(&codec::presence_push("join", channel, info))
            }),
            Delivery::Leave {
                channel,
                info,
                encodings,
            } => encodings.get_or_init(*FRAME, || {
                SharedFrame::text(&codec::presence_push("leave", channel, info))
            }),
            Delivery::Unsubscribed { channel } => {
                SharedFrame::text(&codec::unsubscribe_push(channel))
            }
            // The native protocol has no work-queue consumers; were one added, its
            // messages would read as publications of a channel named after the queue.
            Delivery::Queued { queue, message, .. } => {
                SharedFrame::text(&codec::publication_push(queue, message))
            }
        }
    }

    /// Run the session over a message transport (SockJS, say) until either side
    /// closes it: the same commands, replies and pushes as over a WebSocket.
    pub async fn run_messages<T: MessageTransport>(mut self, mut t: T) {
        loop {
            tokio::select! {
                msg = t.recv() => {
                    let Some(text) = msg else { break };
                    match Box::pin(self.handle(&text)).await {
                        Outcome::Reply(r) => {
                            self.hub.metrics().count_out(r.len());
                            if !t.send(r) {
                                break;
                            }
                        }
                        Outcome::Close(code, reason) => {
                            t.close(code, reason);
                            break;
                        }
                    }
                }
                d = self.hub.next_delivery() => match d {
                    Some(Ok(d)) => {
                        let frame = Self::frame_for(&d);
                        let bytes = frame.as_bytes();
                        let payload = &bytes[bytes.len() - frame.payload_len()..];
                        self.hub.metrics().count_out(payload.len());
                        // The frame's payload is the push's JSON text.
                        if !t.send(String::from_utf8_lossy(payload).into_owned()) {
                            break;
                        }
                    }
                    Some(Err(d)) => {
                        let (code, reason) = close_for(&d);
                        t.send(codec::disconnect_push(code, reason, d.reconnect()));
                        t.close(code, reason);
                        break;
                    }
                    None => break,
                }
            }
        }
        self.hub.close().await;
    }

    /// Run the session over an accepted WebSocket until either side closes.
    pub async fn run<S: AsyncRead + AsyncWrite + Unpin>(self, ws: WebSocket<S>) {
        self.run_until(ws, std::future::pending()).await
    }

    /// [`run`](Self::run); when `stop` resolves (shutdown, or this session's turn in a
    /// drain), a `disconnect` push with `reconnect: true`, then close 1001.
    // Not an `async fn`: an `async fn` keeps its arguments twice in its future (once
    // as passed, once bound), and every open connection holds this future.
    #[allow(clippy::manual_async_fn)]
    pub fn run_until<S, F>(
        mut self,
        mut ws: WebSocket<S>,
        stop: F,
    ) -> impl std::future::Future<Output = ()>
    where
        S: AsyncRead + AsyncWrite + Unpin,
        F: std::future::Future<Output = ()>,
    {
        async move {
            tokio::pin!(stop);
            let write_timeout = self.hub.hub().config().write_timeout;
            loop {
                tokio::select! {
                    _ = &mut stop => {
                        // Shutdown or drain: tell the client to reconnect (to another node).
                        let d = Disconnect::Shutdown;
                        let (code, reason) = close_for(&d);
                        let push = codec::disconnect_push(code, reason, d.reconnect());
                        say_and_close(&mut ws, push, code, reason).await;
                        break;
                    }
                    msg = ws.next() => {
                        let outcome = match msg {
                            // Boxed: a command's future (a subscription with recovery, a
                            // history query through the backplane) is large and short-lived;
                            // inline, every open connection would keep its room.
                            Some(Ok(Message::Text(t))) => Box::pin(self.handle(t.as_str())).await,
                            Some(Ok(Message::Binary(_))) if !self.hub.is_connected() => {
                                Outcome::Close(close::NOT_CONNECTED, "connect first")
                            }
                            Some(Ok(Message::Binary(_))) => self.bad(None, ReplyError {
                                code: codes::BAD_REQUEST,
                                message: "binary frames are not commands".into(),
                            }),
                            Some(Ok(_)) => continue,
                            Some(Err(_)) => {
                                // The close frame is on its way: keep reading until the
                                // peer's EOF or the close timeout (a lingering close).
                                Box::pin(async { while ws.next().await.is_some() {} }).await;
                                break;
                            }
                            None => break,
                        };
                        match outcome {
                            Outcome::Reply(r) => {
                                self.hub.metrics().count_out(r.len());
                                let write = tokio::time::timeout(write_timeout, ws.feed(Message::text(r)));
                                if !matches!(Box::pin(write).await, Ok(Ok(()))) {
                                    break;
                                }
                            }
                            Outcome::Close(code, reason) => {
                                let _ = Box::pin(ws.close(CloseCode(code), reason)).await;
                                break;
                            }
                        }
                    }
                    d = self.hub.next_delivery() => {
                        // This delivery and what else is queued now (up to a batch): the
                        // frames go out in one write when the loop next polls the socket.
                        let mut next = d;
                        let mut go_on = true;
                        for taken in 1..=64 {
                            match next {
                                Some(Ok(d)) => {
                                    let frame = Self::frame_for(&d);
                                    self.hub.metrics().count_out(frame.payload_len());
                                    // No timer unless the write buffer is full.
                                    let sent = match ws.send_shared(&frame).now_or_never() {
                                        Some(r) => r.is_ok(),
                                        None => matches!(
                                            Box::pin(tokio::time::timeout(write_timeout, ws.send_shared(&frame))).await,
                                            Ok(Ok(()))
                                        ),
                                    };
                                    if !sent {
                                        go_on = false;
                                        break;
                                    }
                                }
                                Some(Err(d)) => {
                                    let (code, reason) = close_for(&d);
                                    let push = codec::disconnect_push(code, reason, d.reconnect());
                                    say_and_close(&mut ws, push, code, reason).await;
                                    go_on = false;
                                    break;
                                }
                                None => {
                                    go_on = false;
                                    break;
                                }
                            }
                            if taken == 64 {
                                break;
                            }
                            match self.hub.try_delivery() {
                                Some(d) => next = d,
                                None => break,
                            }
                        }
                        if !go_on {
                            break;
                        }
                    }
                }
            }
            Box::pin(self.hub.close()).await;
        }
    }
}

/// Send a last text message (a `disconnect` push), then close with `code`: boxed, as
/// every path a connection takes once is, so that an open connection's future keeps
/// only the room of its waiting state (see `a_waiting_connection_holds_a_small_future`).
async fn say_and_close<S: AsyncRead + AsyncWrite + Unpin>(
    ws: &mut WebSocket<S>,
    push: String,
    code: u16,
    reason: &str,
) {
    Box::pin(async move {
        let _ = ws.feed(Message::text(push)).await;
        let _ = ws.close(CloseCode(code), reason).await;
    })
    .await
}

#[cfg(test)]
mod tests {
    /// Every open connection holds this future for its life.
    #[tokio::test]
    async fn a_waiting_connection_holds_a_small_future() {
        let hub = crate::Hub::new(crate::HubConfig::default());
        let (ws, _peer) = crate::transport::tests::websocket();
        let session = super::Session::new(hub, String::new());
        let held = std::mem::size_of_val(&ws) + std::mem::size_of_val(&session);
        let future = session.run_until(ws, std::future::pending::<()>());
        crate::transport::tests::assert_small_session_future(held, std::mem::size_of_val(&future));
    }
}
