//! The STOMP front-end: STOMP 1.0, 1.1 and 1.2 over WebSocket (`/stomp`, subprotocols
//! `v12.stomp`, `v11.stomp`, `v10.stomp`, or none) and over plain or TLS TCP
//! ([`serve_stream`], on a listener of the server's). `/topic/<channel>` is the hub's
//! channel, `/queue/<name>` a work queue. See `docs/protocol.md`.
//!
//! [`frame`] is the pure codec, [`heartbeat`] the pure heart-beat rules, [`session`] the
//! session logic over a [`HubSession`](crate::HubSession); this module carries a
//! session over a transport.

pub mod frame;
pub mod heartbeat;
mod on_loop;
pub mod session;

pub use self::on_loop::{OnLoop, StompLoops};

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use axum::body::Body;
use axum::extract::{ConnectInfo, State};
use axum::response::Response;
use axum::routing::get;
use axum::Router;
use bytes::Bytes;
use futures_util::{FutureExt, StreamExt};
use http::Request;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use wsx::{Message, WebSocket};

use self::session::{Output, SharedMessage};
pub use self::session::{StompConfig, StompSession, FRONTEND};
use crate::hub::session::HubSession;
use crate::transport::Gate;

/// Where [`router`] mounts STOMP over WebSocket.
pub const PATH: &str = "/stomp";

/// The subprotocols offered, the server's preference first.
pub const SUBPROTOCOLS: [&str; 3] = ["v12.stomp", "v11.stomp", "v10.stomp"];

#[derive(Clone)]
struct Endpoint {
    gate: Gate,
    ws: Arc<wsx::ServerConfig>,
    cfg: Arc<StompConfig>,
    loops: Option<Arc<StompLoops>>,
}

/// The STOMP front-end's routes: `GET /stomp` (WebSocket). The server must give each
/// request its peer address (`ConnectInfo<SocketAddr>`).
pub fn router(gate: &Gate, cfg: StompConfig) -> Router {
    router_on(gate, cfg, None)
}

/// [`router`], its WebSockets run on `loops` ([`StompLoops`], for a server on plain
/// TCP: over TLS, pass `None` and each runs on a task).
pub fn router_on(gate: &Gate, cfg: StompConfig, loops: Option<Arc<StompLoops>>) -> Router {
    let ws = gate.config().clone().subprotocols(
        SUBPROTOCOLS
            .iter()
            .map(|s| s.to_string())
            .collect::<Vec<_>>(),
    );
    Router::new()
        .route(PATH, get(endpoint))
        .with_state(Endpoint {
            gate: gate.clone(),
            ws: Arc::new(ws),
            cfg: Arc::new(cfg),
            loops,
        })
}

async fn endpoint(
    State(ep): State<Endpoint>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    mut req: Request<Body>,
) -> Response {
    let hub = ep.gate.hub().clone();
    let (cfg, loops) = (ep.cfg.clone(), ep.loops.clone());
    ep.gate
        .upgrade_holding(peer, &mut req, Some(&ep.ws), move |ws, _, stop, held| {
            let session = new_session(hub, cfg, "websocket");
            async move {
                match loops {
                    Some(loops) => {
                        drop(stop);
                        if let Err(e) = loops.adopt(ws, held, OnLoop::new(session)) {
                            tracing::debug!(%peer, error = %e, "stomp: not handed to an event loop");
                        }
                    }
                    None => {
                        let _held = held;
                        run(session, WsWire(ws), stop).await
                    }
                }
            }
        })
}

/// A STOMP session for a new connection, starting its CONNECT deadline now.
fn new_session(
    hub: Arc<crate::Hub>,
    cfg: Arc<StompConfig>,
    transport: &'static str,
) -> StompSession {
    let session = HubSession::new_via(hub, FRONTEND, String::new(), transport);
    StompSession::new(session, cfg, Instant::now())
}

/// Carry STOMP over a byte stream (a TCP connection, plain or TLS) until either side
/// closes or `stop` resolves. The caller bounds the connection's number and the TLS
/// handshake; the session bounds the time to `CONNECT` and the heart-beats.
pub async fn serve_stream<S, F>(gate: &Gate, cfg: Arc<StompConfig>, io: S, stop: F)
where
    S: AsyncRead + AsyncWrite + Unpin + Send,
    F: std::future::Future<Output = ()> + Send,
{
    run(
        new_session(gate.hub().clone(), cfg, "tcp"),
        TcpWire {
            io,
            buf: vec![0u8; 8 << 10],
            out: Vec::new(),
        },
        stop,
    )
    .await
}

/// A transport for STOMP frames.
trait Wire {
    /// The next bytes received; `None` once the peer closed or failed.
    async fn recv(&mut self) -> Option<Bytes>;
    /// Queue bytes to send (a binary WebSocket message when `binary`).
    async fn send(&mut self, bytes: Bytes, binary: bool) -> bool;
    /// Queue a frame shared with other recipients.
    async fn send_shared(&mut self, m: &SharedMessage) -> bool;
    /// Send what was queued.
    async fn flush(&mut self) -> bool;
    /// Close after an `ERROR` or `DISCONNECT`, with a lingering close.
    async fn close(&mut self);
}

struct WsWire<S>(WebSocket<S>);

impl<S: AsyncRead + AsyncWrite + Unpin> Wire for WsWire<S> {
    async fn recv(&mut self) -> Option<Bytes> {
        loop {
            match self.0.next().await {
                Some(Ok(Message::Text(t))) => return Some(t.into_bytes()),
                Some(Ok(Message::Binary(b))) => return Some(b),
                Some(Ok(_)) => continue,
                Some(Err(_)) => {
                    // The close frame is on its way: read on until the peer's EOF or the
                    // close timeout (a lingering close).
                    while self.0.next().await.is_some() {}
                    return None;
                }
                None => return None,
            }
        }
    }

    async fn send(&mut self, bytes: Bytes, binary: bool) -> bool {
        self.0.feed(on_loop::message(bytes, binary)).await.is_ok()
    }

    async fn send_shared(&mut self, m: &SharedMessage) -> bool {
        self.0.send_shared(m.ws_frame()).await.is_ok()
    }

    async fn flush(&mut self) -> bool {
        self.0.flush().await.is_ok()
    }

    async fn close(&mut self) {
        let _ = self.0.close(wsx::CloseCode::NORMAL, "").await;
    }
}

struct TcpWire<S> {
    io: S,
    buf: Vec<u8>,
    /// What was queued since the last flush: written in one go.
    out: Vec<u8>,
}

impl<S: AsyncRead + AsyncWrite + Unpin> Wire for TcpWire<S> {
    async fn recv(&mut self) -> Option<Bytes> {
        match self.io.read(&mut self.buf).await {
            Ok(0) | Err(_) => None,
            Ok(n) => Some(Bytes::copy_from_slice(&self.buf[..n])),
        }
    }

    async fn send(&mut self, bytes: Bytes, _binary: bool) -> bool {
        self.out.extend_from_slice(&bytes);
        true
    }

    async fn send_shared(&mut self, m: &SharedMessage) -> bool {
        self.out.extend_from_slice(m.bytes());
        true
    }

    async fn flush(&mut self) -> bool {
        let out = std::mem::take(&mut self.out);
        let ok = self.io.write_all(&out).await.is_ok() && self.io.flush().await.is_ok();
        // Keep a small buffer for the next batch; give a large one back.
        if out.capacity() <= 64 << 10 {
            self.out = out;
            self.out.clear();
        }
        ok
    }

    async fn close(&mut self) {
        // Shut the write side down, then drain what the peer still sends for a while:
        // closing with unread input would reset the connection and lose the ERROR.
        let _ = self.io.shutdown().await;
        let _ = tokio::time::timeout(std::time::Duration::from_secs(2), async {
            while matches!(self.io.read(&mut self.buf).await, Ok(n) if n > 0) {}
        })
        .await;
    }
}

/// Send what the session produced; `false` when the connection is done.
async fn drain_output<W: Wire>(
    session: &mut StompSession,
    wire: &mut W,
    write_timeout: std::time::Duration,
) -> bool {
    let out = session.take_output();
    if out.is_empty() {
        return true;
    }
    let work = async {
        for o in out {
            match o {
                Output::Send { bytes, binary } => {
                    if !wire.send(bytes, binary).await {
                        return false;
                    }
                }
                Output::Shared(m) => {
                    if !wire.send_shared(&m).await {
                        return false;
                    }
                }
                Output::Close => {
                    if wire.flush().await {
                        Box::pin(wire.close()).await;
                    }
                    return false;
                }
            }
        }
        wire.flush().await
    };
    // No timer unless the transport is slow to take the bytes.
    tokio::pin!(work);
    match (&mut work).now_or_never() {
        Some(done) => done,
        None => matches!(
            Box::pin(tokio::time::timeout(write_timeout, work)).await,
            Ok(true)
        ),
    }
}

// Not an `async fn`, which would keep its arguments twice in the future every open
// connection holds; the paths a connection takes now and then (input, a slow write,
// the end) are boxed for the same reason (`a_waiting_connection_holds_a_small_future`).
#[allow(clippy::manual_async_fn)]
fn run<W: Wire, F: std::future::Future<Output = ()>>(
    mut session: StompSession,
    mut wire: W,
    stop: F,
) -> impl std::future::Future<Output = ()> {
    async move {
        tokio::pin!(stop);
        let write_timeout = session.hub().hub().config().write_timeout;
        let mut stopping = false;
        // One timer, moved when the session's deadline moves (not one per loop).
        let far = || tokio::time::Instant::now() + std::time::Duration::from_secs(86_400 * 365);
        let sleep = tokio::time::sleep_until(far());
        tokio::pin!(sleep);
        let mut armed: Option<Instant> = None;
        let mut closed = false;
        loop {
            // Move the timer only when the deadline comes earlier: a later one (the
            // heart-beat's, pushed back by each frame sent) is looked at when it fires.
            let deadline = session.deadline();
            let earlier = match (deadline, armed) {
                (Some(d), Some(a)) => d < a,
                (Some(_), None) => true,
                (None, _) => false,
            };
            if earlier {
                armed = deadline;
                let at = deadline.map_or_else(far, tokio::time::Instant::from_std);
                sleep.as_mut().reset(at);
            }
            let connected = session.is_connected();
            tokio::select! {
                _ = &mut stop, if !stopping => {
                    stopping = true;
                    session.on_disconnect(&crate::hub::queue::Disconnect::Shutdown);
                }
                input = wire.recv() => match input {
                    Some(bytes) => Box::pin(session.on_input(&bytes, Instant::now())).await,
                    None => break,
                },
                d = session.hub().next_delivery(), if connected => {
                    let now = Instant::now();
                    let mut next = d;
                    let mut taken = 0;
                    // Take what else is queued now (up to a batch), then write it at once.
                    loop {
                        match next {
                            Some(Ok(d)) => session.on_delivery(d, now),
                            Some(Err(why)) => {
                                session.on_disconnect(&why);
                                break;
                            }
                            None => {
                                closed = true;
                                break;
                            }
                        }
                        taken += 1;
                        if taken == 64 {
                            break;
                        }
                        match session.hub().try_delivery() {
                            Some(d) => next = d,
                            None => break,
                        }
                    }
                },
                _ = &mut sleep, if armed.is_some() => {
                    armed = None;
                    session.on_time(Instant::now());
                }
            }
            if !drain_output(&mut session, &mut wire, write_timeout).await
                || session.is_closing()
                || closed
            {
                break;
            }
        }
        Box::pin(session.close()).await;
    }
}

#[cfg(test)]
mod tests {
    /// Every open connection holds this future for its life.
    #[tokio::test]
    async fn a_waiting_connection_holds_a_small_future() {
        let hub = crate::Hub::new(crate::HubConfig::default());
        let (ws, _peer) = crate::transport::tests::websocket();
        let session = super::new_session(hub, Default::default(), "websocket");
        let held = std::mem::size_of_val(&ws) + std::mem::size_of_val(&session);
        let future = super::run(session, super::WsWire(ws), std::future::pending::<()>());
        crate::transport::tests::assert_small_session_future(held, std::mem::size_of_val(&future));
    }
}
