//! `/echo`: every message back. Over plain TCP a connection runs on one of a few event
//! loops of its own (`wsx::event_loop`: a slot holding the socket and the protocol
//! core, ~600 bytes, no task or future per connection); over TLS on a task, as the
//! hub's front-ends do.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use axum::body::Body;
use axum::extract::{ConnectInfo, Extension, State};
use axum::response::Response;
use futures_util::StreamExt;
use http::Request;
use tokio_util::task::TaskTracker;
use tracing::debug;
use wsx::event_loop::{Conn, EventLoop, Handler, LoopHandle};
use wsx::upgrade::UpgradedIo;
use wsx::{CloseCode, IoConfig, Message, WebSocket};
use wsx_hub::transport::{Gate, Held};

/// The event loops `/echo` hands its plain-TCP connections to, in turn.
pub struct EchoLoops {
    loops: Vec<LoopHandle>,
    next: AtomicUsize,
}

struct Echo;

impl Handler for Echo {
    fn on_message(&mut self, conn: &mut Conn<'_>, msg: Message) {
        let _ = conn.send(msg);
    }
}

impl EchoLoops {
    /// `n` loops (a thread each), closed with 1001 when `gate` says the server stops
    /// (at shutdown, or at the first departure of a drain); `tasks` waits for them.
    pub fn start(
        n: usize,
        io: &IoConfig,
        gate: &Gate,
        tasks: &TaskTracker,
    ) -> std::io::Result<Arc<EchoLoops>> {
        let mut loops = Vec::with_capacity(n);
        for _ in 0..n.max(1) {
            let ev = EventLoop::start(io.clone(), Echo)?;
            let handle = ev.handle();
            loops.push(handle.clone());
            let stop = gate.stopped();
            tasks.spawn(async move {
                stop.await;
                handle.shutdown(CloseCode::GOING_AWAY, "server shutting down");
                let _ = tokio::task::spawn_blocking(move || ev.join()).await;
            });
        }
        Ok(Arc::new(EchoLoops {
            loops,
            next: AtomicUsize::new(0),
        }))
    }

    /// Hand `ws` (upgraded over plain TCP) to the next loop with its places held.
    fn adopt(&self, ws: WebSocket<UpgradedIo>, held: Held) -> std::io::Result<()> {
        let (tcp, conn, deflate) = wsx_hub::transport::loop_parts(ws)?;
        let i = self.next.fetch_add(1, Ordering::Relaxed) % self.loops.len();
        self.loops[i].adopt(tcp, conn, Some(Box::new((held, deflate))))
    }
}

pub async fn echo(
    State(gate): State<Gate>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    Extension(loops): Extension<Option<Arc<EchoLoops>>>,
    mut req: Request<Body>,
) -> Response {
    gate.upgrade_holding(peer, &mut req, None, move |mut ws, accepted, stop, held| async move {
        debug!(%peer, path = %accepted.path, subprotocol = ?accepted.subprotocol, deflate = accepted.deflate.is_some(), "WebSocket open");
        // The request's headers are not needed any more: not kept for the connection's life.
        drop(accepted);
        if let Some(loops) = loops {
            drop(stop);
            if let Err(e) = loops.adopt(ws, held) {
                debug!(%peer, error = %e, "echo: not handed to an event loop");
            }
            return;
        }
        let _held = held;
        tokio::pin!(stop);
        loop {
            tokio::select! {
                msg = ws.next() => match msg {
                    Some(Ok(m)) if m.is_data() => {
                        if let Err(e) = ws.feed(m).await {
                            debug!(%peer, error = %e, "send failed");
                            break;
                        }
                    }
                    Some(Ok(_)) => {}
                    Some(Err(e)) => {
                        debug!(%peer, error = %e, close_code = ?e.close_code(), "WebSocket error");
                    }
                    None => break,
                },
                _ = &mut stop => {
                    let _ = ws.close(CloseCode::GOING_AWAY, "server shutting down").await;
                    break;
                }
            }
        }
        debug!(%peer, "WebSocket closed");
    })
}
