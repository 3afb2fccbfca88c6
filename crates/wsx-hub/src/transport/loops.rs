//! Front-end sessions on [`wsx::event_loop`]s: each WebSocket a slot of a loop and its
//! session ([`LoopSession`]) in the loop's handler, with no task or future of its own.
//!
//! What every front-end on a loop shares lives here: handing connections to the loops
//! in turn with their places held, telling sessions to go at shutdown and at their
//! points of a drain (spread over its window as the gate spreads its tasks'),
//! counting a loop that runs late as the node being behind (its publishers paced), and
//! the loop's seats in the broker's fan-outs (`hub::seats`): a
//! publication comes to the loop once and is written to its subscribers from here.

use std::any::Any;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc;
use std::sync::Arc;

use tokio_util::task::TaskTracker;
use wsx::event_loop::{Conn, ConnId, Conns, EventLoop, Handler, LoopConfig, LoopHandle};
use wsx::upgrade::UpgradedIo;
use wsx::{CloseCode, Message, WebSocket};

use crate::hub::client::ClientId;
use crate::hub::queue::{Delivery, Outbound};
use crate::hub::seats::{LoopTopics, Seats, Step};
use crate::transport::{Draining, Gate, Held};

/// One connection's session on a loop: the front-end's protocol over the loop's
/// callbacks. Runs on the loop's thread: it must not block (a command that waits is a
/// future it polls again when its waker, [`Conn::waker`], wakes it).
pub trait LoopSession: Send + 'static {
    /// The hub's id of this connection (a drain's departure checks it).
    fn client(&self) -> ClientId;
    /// The connection is on its loop: register for deliveries.
    fn on_open(&mut self, conn: &mut Conn<'_>);
    /// A whole message from the client.
    fn on_message(&mut self, conn: &mut Conn<'_>, msg: Message);
    /// Woken: a command's future, deliveries, the output drained, a deadline.
    fn on_wake(&mut self, conn: &mut Conn<'_>);
    /// Shutdown or a drain's departure: tell the client to reconnect and close.
    fn stop(&mut self, conn: &mut Conn<'_>);
    /// Its queue, to seat it on the loop at open: the broker's fan-outs to it then go
    /// through the loop (`hub::seats`). `None`: not seated.
    fn queue(&self) -> Option<Arc<Outbound>> {
        None
    }
    /// A delivery of a fan-out, its queue empty: write it now if it can (`false`: it is
    /// queued and comes through the queue's waker). `last`: nothing more is given it
    /// before the flush, so it may go to the socket at once.
    fn deliver_now(&mut self, conn: &mut Conn<'_>, d: &Delivery, last: bool) -> bool {
        let _ = (conn, d, last);
        false
    }
}

// A session whose connection is gone is dropped, a command still under way with it:
// its `HubSession`'s drop leaves the hub (subscriptions, presence through the
// backplane) on a task of the runtime the loop's thread entered, as `close` would.

/// The event loops a front-end's WebSockets over plain TCP are handed to, in turn.
pub struct FrontLoops<S> {
    loops: Vec<LoopHandle>,
    next: AtomicUsize,
    _session: std::marker::PhantomData<fn(S)>,
}

/// What a loop's handler is told from outside.
enum Ctl {
    /// Stop every session (shutdown).
    StopAll,
    /// A drain began: give each session its departure.
    Drain(Draining),
    /// A drain's departure: this connection, if it is still this client.
    Stop(ConnId, ClientId),
}

impl<S: LoopSession> FrontLoops<S> {
    /// `n` loops (a thread each) with `cfg`; their sessions are stopped at shutdown and
    /// at their points of a drain, as the gate's tasks are; `tasks` waits for the loops
    /// to end. Call inside the runtime the sessions' work runs on.
    pub fn start(
        n: usize,
        cfg: LoopConfig,
        gate: &Gate,
        tasks: &TaskTracker,
    ) -> std::io::Result<Arc<FrontLoops<S>>> {
        let mut loops = Vec::with_capacity(n);
        for _ in 0..n.max(1) {
            let (tell, ctl) = mpsc::channel();
            let seats = gate.hub().broker().seats(gate.hub().config().queue);
            let handler = Sessions::<S> {
                conns: Vec::new(),
                ctl,
                tell: tell.clone(),
                gate: gate.clone(),
                seats: seats.clone(),
                topics: LoopTopics::default(),
            };
            let ev = EventLoop::start_with(cfg.clone(), handler)?;
            let handle = ev.handle();
            let notify = handle.clone();
            seats.on_push(move || notify.notify());
            // A loop writing a fan-out for longer than a turn should take is behind:
            // publishers are then paced by the subscribers' queues.
            let probe = handle.clone();
            gate.hub()
                .broker()
                .watch_late(move || probe.busy_for() >= crate::hub::broker::LATE);
            loops.push(handle.clone());
            let gate = gate.clone();
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
        Ok(Arc::new(FrontLoops {
            loops,
            next: AtomicUsize::new(0),
            _session: std::marker::PhantomData,
        }))
    }

    /// Hand `ws` (upgraded over plain TCP) and its session to the next loop, with the
    /// connection's places.
    pub fn adopt(&self, ws: WebSocket<UpgradedIo>, held: Held, session: S) -> std::io::Result<()> {
        let (tcp, conn, deflate) = crate::transport::loop_parts(ws)?;
        self.hand_over(tcp, conn, Box::new((held, deflate)), session)
    }

    /// Hand a WebSocket accepted on tokio over plain TCP ([`wsx::accept`]) and its
    /// session to the next loop.
    pub fn adopt_websocket(
        &self,
        ws: WebSocket<tokio::net::TcpStream>,
        session: S,
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
        session: S,
    ) -> std::io::Result<()> {
        let i = self.next.fetch_add(1, Ordering::Relaxed) % self.loops.len();
        let adopted = Adopted {
            places,
            session: Some(session),
        };
        self.loops[i].adopt(tcp, conn, Some(Box::new(adopted)))
    }
}

/// What a connection comes to its loop with: what it holds while open (its places
/// among the server's connections, its deflate context) and its session.
struct Adopted<S> {
    places: Box<dyn Any + Send>,
    session: Option<S>,
}

/// A loop's handler: its sessions by connection.
struct Sessions<S> {
    conns: Vec<Option<S>>,
    ctl: mpsc::Receiver<Ctl>,
    tell: mpsc::Sender<Ctl>,
    gate: Gate,
    /// The broker's fan-outs to this loop's connections.
    seats: Arc<Seats>,
    /// Who subscribes to what on this loop.
    topics: LoopTopics,
}

impl<S: LoopSession> Sessions<S> {
    fn session(&mut self, id: ConnId) -> Option<&mut S> {
        self.conns.get_mut(id.0).and_then(Option::as_mut)
    }

    /// Time each session's departure in `drain`'s window, on a task.
    fn plan_drain(&mut self, conns: &mut Conns<'_>, d: Draining) {
        let handle = conns.handle();
        let mut plan: Vec<_> = conns
            .ids()
            .into_iter()
            .filter_map(|id| {
                let s = self.conns.get(id.0)?.as_ref()?;
                Some((self.gate.departure(&d), id, s.client()))
            })
            .collect();
        plan.sort_by_key(|p| p.0);
        let tell = self.tell.clone();
        // On the runtime `start` was called in: the loop's thread entered it.
        tokio::spawn(async move {
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

impl<S: LoopSession> Handler for Sessions<S> {
    fn on_open(
        &mut self,
        conn: &mut Conn<'_>,
        guard: Option<Box<dyn Any + Send>>,
    ) -> Option<Box<dyn Any + Send>> {
        let mut adopted = guard?.downcast::<Adopted<S>>().ok()?;
        let mut session = adopted.session.take()?;
        let id = conn.id().0;
        if self.conns.len() <= id {
            self.conns.resize_with(id + 1, || None);
        }
        session.on_open(conn);
        if let Some(q) = session.queue() {
            q.set_seat(self.seats.seat(id));
        }
        self.conns[id] = Some(session);
        Some(adopted.places)
    }

    fn on_message(&mut self, conn: &mut Conn<'_>, msg: Message) {
        if let Some(s) = self.session(conn.id()) {
            s.on_message(conn, msg);
        }
    }

    fn on_wake(&mut self, conn: &mut Conn<'_>) {
        if let Some(s) = self.session(conn.id()) {
            s.on_wake(conn);
        }
    }

    fn on_notify(&mut self, conns: &mut Conns<'_>) {
        while let Ok(ctl) = self.ctl.try_recv() {
            match ctl {
                Ctl::StopAll => {
                    for id in conns.ids() {
                        if let (Some(s), Some(mut conn)) = (self.session(id), conns.get(id)) {
                            s.stop(&mut conn);
                        }
                    }
                }
                Ctl::Stop(id, client) => {
                    if let (Some(s), Some(mut conn)) = (self.session(id), conns.get(id)) {
                        if s.client() == client {
                            s.stop(&mut conn);
                        }
                    }
                }
                Ctl::Drain(d) => self.plan_drain(conns, d),
            }
        }
        let sessions = &mut self.conns;
        self.seats.take(&mut self.topics, |m, step| {
            // Gone (its slot may be another's by now): nothing to write.
            let session = sessions.get_mut(m.slot).and_then(Option::as_mut);
            let Some(s) = session.filter(|s| s.client() == m.client) else {
                return true;
            };
            let Some(mut conn) = conns.get(ConnId(m.slot)) else {
                return true;
            };
            match step {
                Step::Write { delivery, last } => s.deliver_now(&mut conn, delivery, last),
                // Sent now: the next subscriber's turn need not wait for the last one's.
                Step::Flush => {
                    conn.flush();
                    true
                }
            }
        });
    }

    fn on_close(&mut self, id: ConnId) {
        if let Some(slot) = self.conns.get_mut(id.0) {
            *slot = None;
        }
    }
}
