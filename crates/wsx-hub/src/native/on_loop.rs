//! The native front-end on [`wsx::event_loop`]: each connection a slot of a loop and
//! its [`Session`] in the loop's handler, with no task or future of its own.
//!
//! A command that completes at once (most do: the broker is in memory) is answered
//! inline; one that waits (the backplane, a paced publisher) is polled again when it
//! wakes the connection, and the connection's input waits meanwhile (its commands stay
//! in order). Deliveries wake the connection through its queue's waker: the loop then
//! writes every woken subscriber in a row, each with whatever its queue holds, which
//! is the `write()` loop of a fan-out plus the framing. Shutdown and drains say
//! `disconnect` and close 1001 as the task path does, a drain's departures spread
//! over its window.

use std::any::Any;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc;
use std::sync::Arc;
use std::task::{Context, Poll, Waker};

use tokio_util::task::TaskTracker;
use wsx::event_loop::{Conn, ConnId, Conns, EventLoop, Handler, LoopConfig, LoopHandle};
use wsx::upgrade::UpgradedIo;
use wsx::{CloseCode, IoConfig, Message, WebSocket};

use super::codec::{self, close, codes};
use super::{close_for, Outcome, ReplyError, Session};
use crate::hub::client::ClientId;
use crate::hub::queue::Disconnect;
use crate::transport::{Draining, Gate, Held};

/// Deliveries written for one connection before the others have their turn.
const BATCH: usize = 64;

/// The event loops native WebSockets over plain TCP are handed to, in turn.
pub struct NativeLoops {
    loops: Vec<(LoopHandle, mpsc::Sender<Ctl>)>,
    next: AtomicUsize,
}

/// What a loop's handler is told from outside.
enum Ctl {
    /// Say `disconnect` and close every connection (shutdown).
    StopAll,
    /// A drain began: give each connection its departure.
    Drain(Draining),
    /// A drain's departure: this connection, if it is still this client.
    Stop(ConnId, ClientId),
}

impl NativeLoops {
    /// `n` loops (a thread each) with `cfg`; their connections are told to go at
    /// shutdown and at their points of a drain, as the gate's sessions are; `tasks`
    /// waits for the loops to end.
    pub fn start(
        n: usize,
        cfg: LoopConfig,
        gate: &Gate,
        tasks: &TaskTracker,
    ) -> std::io::Result<Arc<NativeLoops>> {
        let mut loops = Vec::with_capacity(n);
        for _ in 0..n.max(1) {
            let (tx, rx) = mpsc::channel();
            let handler = Native {
                conns: Vec::new(),
                ctl: rx,
                ctl_tx: tx.clone(),
                io: cfg.io.clone(),
                gate: gate.clone(),
            };
            let ev = EventLoop::start_with(cfg.clone(), handler)?;
            let handle = ev.handle();
            // A loop writing a fan-out for longer than a turn should take is behind:
            // publishers are then paced by the subscribers' queues.
            let probe = handle.clone();
            gate.hub()
                .broker()
                .watch_late(move || probe.busy_for() >= crate::hub::broker::LATE);
            loops.push((handle.clone(), tx.clone()));
            let (gate, tell) = (gate.clone(), tx);
            tasks.spawn(async move {
                let shutdown = gate.shutting_down();
                tokio::pin!(shutdown);
                tokio::select! {
                    _ = &mut shutdown => {}
                    d = gate.drain_begun() => {
                        let _ = tell.send(Ctl::Drain(d));
                        handle.notify();
                        shutdown.await;
                    }
                }
                let _ = tell.send(Ctl::StopAll);
                handle.notify();
                handle.shutdown(CloseCode::GOING_AWAY, "server shutting down");
                let _ = tokio::task::spawn_blocking(move || ev.join()).await;
            });
        }
        Ok(Arc::new(NativeLoops {
            loops,
            next: AtomicUsize::new(0),
        }))
    }

    /// Hand `ws` (upgraded over plain TCP) and its session to the next loop, with the
    /// connection's places.
    pub fn adopt(
        &self,
        ws: WebSocket<UpgradedIo>,
        held: Held,
        session: Session,
    ) -> std::io::Result<()> {
        let (tcp, conn, deflate) = crate::transport::loop_parts(ws)?;
        self.hand_over(tcp, conn, Box::new((held, deflate)), session)
    }

    /// Hand a WebSocket accepted on tokio over plain TCP ([`wsx::accept`]) and its
    /// session to the next loop.
    pub fn adopt_websocket(
        &self,
        ws: WebSocket<tokio::net::TcpStream>,
        session: Session,
    ) -> std::io::Result<()> {
        let (tcp, conn, deflate) = ws.into_parts();
        let deflate = deflate.map(|d| Box::new(d) as Box<dyn Any + Send>);
        self.hand_over(tcp.into_std()?, conn, Box::new(deflate), session)
    }

    fn hand_over(
        &self,
        tcp: std::net::TcpStream,
        conn: wsx::wsx_proto::Connection,
        places: Box<dyn Any + Send>,
        session: Session,
    ) -> std::io::Result<()> {
        let i = self.next.fetch_add(1, Ordering::Relaxed) % self.loops.len();
        let adopted = Adopted {
            places,
            session: Some(session),
        };
        self.loops[i].0.adopt(tcp, conn, Some(Box::new(adopted)))
    }
}

/// What a connection comes to its loop with: what it holds while open (its places
/// among the server's connections, its deflate context) and its session.
struct Adopted {
    places: Box<dyn Any + Send>,
    session: Option<Session>,
}

type Command = Pin<Box<dyn Future<Output = (Session, Outcome)> + Send>>;

/// One connection's state on its loop.
struct Live {
    /// `None` while a command runs (it holds the session).
    session: Option<Session>,
    command: Option<Command>,
    waker: Waker,
    client: ClientId,
    /// Closing: no more commands or deliveries.
    done: bool,
}

struct Native {
    conns: Vec<Option<Live>>,
    ctl: mpsc::Receiver<Ctl>,
    ctl_tx: mpsc::Sender<Ctl>,
    io: IoConfig,
    gate: Gate,
}

impl Native {
    fn live(&mut self, id: ConnId) -> Option<&mut Live> {
        self.conns.get_mut(id.0).and_then(Option::as_mut)
    }
}

impl Live {
    /// Poll the running command; when it is done, answer and hand input over again.
    fn poll_command(&mut self, conn: &mut Conn<'_>) {
        let Some(cmd) = self.command.as_mut() else {
            return;
        };
        let mut cx = Context::from_waker(&self.waker);
        if let Poll::Ready((session, outcome)) = cmd.as_mut().poll(&mut cx) {
            self.command = None;
            self.session = Some(session);
            self.answer(conn, outcome);
            conn.resume();
        }
    }

    fn answer(&mut self, conn: &mut Conn<'_>, outcome: Outcome) {
        if self.done {
            return;
        }
        match outcome {
            Outcome::Reply(r) => {
                if let Some(s) = &self.session {
                    s.hub.metrics().count_out(r.len());
                }
                let _ = conn.send(Message::text(r));
            }
            Outcome::Close(code, reason) => {
                let _ = conn.close(CloseCode(code), reason);
                self.done = true;
            }
        }
    }

    /// Write what the queue holds (a batch at most; the rest on the next turn).
    fn deliver(&mut self, conn: &mut Conn<'_>, io: &IoConfig) {
        if self.done {
            return;
        }
        let Some(session) = self.session.as_mut() else {
            return;
        };
        let mut cx = Context::from_waker(&self.waker);
        for _ in 0..BATCH {
            if conn.is_full(io) {
                // The peer is behind: the queue keeps the rest (and overflows if it
                // stays behind); written once the output drains.
                conn.wake_when_writable();
                return;
            }
            match session.hub.poll_delivery(&mut cx) {
                Poll::Ready(Some(Ok(d))) => {
                    let frame = Session::frame_for(&d);
                    session.hub.metrics().count_out(frame.payload_len());
                    if conn.send_shared(&frame).is_err() {
                        self.done = true;
                        return;
                    }
                }
                Poll::Ready(Some(Err(d))) => return self.part(conn, &d),
                Poll::Ready(None) => {
                    let _ = conn.close(CloseCode::GOING_AWAY, "session ended");
                    self.done = true;
                    return;
                }
                Poll::Pending => return,
            }
        }
        // More may be queued: after the others' turn.
        self.waker.wake_by_ref();
    }

    /// Shutdown or drain: tell the client to reconnect (to another node) and close.
    fn stop(&mut self, conn: &mut Conn<'_>) {
        if !self.done {
            self.part(conn, &Disconnect::Shutdown);
        }
    }

    /// End the connection for `d`: a `disconnect` push, then its close.
    fn part(&mut self, conn: &mut Conn<'_>, d: &Disconnect) {
        let (code, reason) = close_for(d);
        let push = codec::disconnect_push(code, reason, d.reconnect());
        let _ = conn.send(Message::text(push));
        let _ = conn.close(CloseCode(code), reason);
        self.done = true;
    }
}

impl Handler for Native {
    fn on_open(
        &mut self,
        conn: &mut Conn<'_>,
        guard: Option<Box<dyn Any + Send>>,
    ) -> Option<Box<dyn Any + Send>> {
        let mut adopted = guard?.downcast::<Adopted>().ok()?;
        let session = adopted.session.take()?;
        let id = conn.id().0;
        if self.conns.len() <= id {
            self.conns.resize_with(id + 1, || None);
        }
        let mut live = Live {
            client: session.hub.client(),
            session: Some(session),
            command: None,
            waker: conn.waker(),
            done: false,
        };
        // Registers the queue's waker.
        live.deliver(conn, &self.io);
        self.conns[id] = Some(live);
        Some(adopted.places)
    }

    fn on_message(&mut self, conn: &mut Conn<'_>, msg: Message) {
        let io = self.io.clone();
        let Some(live) = self.live(conn.id()) else {
            return;
        };
        if live.done {
            return;
        }
        let Some(mut session) = live.session.take() else {
            return;
        };
        match msg {
            Message::Text(t) => {
                live.command = Some(Box::pin(async move {
                    let outcome = session.handle(t.as_str()).await;
                    (session, outcome)
                }));
                live.poll_command(conn);
                if live.command.is_some() {
                    // Its answer first, then the next command.
                    conn.pause();
                    return;
                }
            }
            Message::Binary(_) => {
                let outcome = if session.hub.is_connected() {
                    session.bad(
                        None,
                        ReplyError {
                            code: codes::BAD_REQUEST,
                            message: "binary frames are not commands".into(),
                        },
                    )
                } else {
                    Outcome::Close(close::NOT_CONNECTED, "connect first")
                };
                live.session = Some(session);
                live.answer(conn, outcome);
            }
            _ => live.session = Some(session),
        }
        live.deliver(conn, &io);
    }

    fn on_wake(&mut self, conn: &mut Conn<'_>) {
        let io = self.io.clone();
        if let Some(live) = self.live(conn.id()) {
            live.poll_command(conn);
            live.deliver(conn, &io);
        }
    }

    fn on_notify(&mut self, conns: &mut Conns<'_>) {
        while let Ok(ctl) = self.ctl.try_recv() {
            match ctl {
                Ctl::StopAll => {
                    for id in conns.ids() {
                        if let (Some(live), Some(mut conn)) = (self.live(id), conns.get(id)) {
                            live.stop(&mut conn);
                        }
                    }
                }
                Ctl::Stop(id, client) => {
                    if let (Some(live), Some(mut conn)) = (self.live(id), conns.get(id)) {
                        if live.client == client {
                            live.stop(&mut conn);
                        }
                    }
                }
                Ctl::Drain(d) => {
                    let mut plan: Vec<_> = conns
                        .ids()
                        .into_iter()
                        .filter_map(|id| {
                            let live = self.conns.get(id.0)?.as_ref()?;
                            Some((self.gate.departure(&d), id, live.client))
                        })
                        .collect();
                    plan.sort_by_key(|p| p.0);
                    let (tell, handle) = (self.ctl_tx.clone(), conns.handle());
                    let Ok(rt) = tokio::runtime::Handle::try_current() else {
                        // No runtime to time the departures on: all go now.
                        let _ = self.ctl_tx.send(Ctl::StopAll);
                        handle.notify();
                        continue;
                    };
                    rt.spawn(async move {
                        for (at, id, client) in plan {
                            tokio::time::sleep_until(at).await;
                            if tell.send(Ctl::Stop(id, client)).is_err() {
                                return;
                            }
                            handle.notify();
                        }
                    });
                }
            }
        }
    }

    fn on_close(&mut self, id: ConnId) {
        let Some(live) = self.conns.get_mut(id.0).and_then(Option::take) else {
            return;
        };
        // A command still running is dropped, and its session with it (the session's
        // drop cleans up on a task, as `close` does).
        if let Some(session) = live.session {
            match tokio::runtime::Handle::try_current() {
                Ok(rt) => drop(rt.spawn(session.hub.close())),
                Err(_) => drop(session),
            }
        }
    }
}
