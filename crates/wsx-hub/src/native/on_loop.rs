//! The native front-end on [`wsx::event_loop`] ([`FrontLoops`]): each connection a slot
//! of a loop and its [`Session`] in the loop's handler, with no task or future of its
//! own.
//!
//! A command that completes at once (most do: the broker is in memory) is answered
//! inline; one that waits (the backplane, a paced publisher) is polled again when it
//! wakes the connection, and the connection's input waits meanwhile (its commands stay
//! in order). A fan-out reaches the loop once (`hub::seats`), which
//! writes each subscriber's frame in a row ([`LoopSession::deliver_now`]): the
//! `write()` loop of a fan-out plus the framing. What cannot be written at once waits
//! in the session's queue, whose waker wakes the connection.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, Waker};

use wsx::event_loop::Conn;
use wsx::{CloseCode, Message};

use super::codec::{self, close, codes};
use super::{close_for, Outcome, ReplyError, Session};
use crate::hub::client::ClientId;
use crate::hub::queue::{Delivery, Disconnect, Outbound};
use crate::transport::loops::{FrontLoops, LoopSession};

/// The loops native WebSockets run on: [`Session::on_loop`] makes what they take.
pub type NativeLoops = FrontLoops<OnLoop>;

/// Deliveries written for one connection before the others have their turn.
const BATCH: usize = 64;

type Command = Pin<Box<dyn Future<Output = (Session, Outcome)> + Send>>;

/// A native session on a loop.
pub struct OnLoop {
    /// `None` while a command runs (it holds the session).
    session: Option<Session>,
    command: Option<Command>,
    waker: Waker,
    client: ClientId,
    /// Closing: no more commands or deliveries.
    done: bool,
}

impl Session {
    /// This session, to run on a loop ([`NativeLoops::adopt`]).
    pub fn on_loop(self) -> OnLoop {
        OnLoop {
            client: self.hub.client(),
            session: Some(self),
            command: None,
            waker: Waker::noop().clone(),
            done: false,
        }
    }
}

impl OnLoop {
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
    fn deliver(&mut self, conn: &mut Conn<'_>) {
        if self.done {
            return;
        }
        let Some(session) = self.session.as_mut() else {
            return;
        };
        let mut cx = Context::from_waker(&self.waker);
        for _ in 0..BATCH {
            if conn.is_full() {
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

    /// End the connection for `d`: a `disconnect` push, then its close.
    fn part(&mut self, conn: &mut Conn<'_>, d: &Disconnect) {
        let (code, reason) = close_for(d);
        let push = codec::disconnect_push(code, reason, d.reconnect());
        let _ = conn.send(Message::text(push));
        let _ = conn.close(CloseCode(code), reason);
        self.done = true;
    }
}

impl LoopSession for OnLoop {
    fn client(&self) -> ClientId {
        self.client
    }

    fn on_open(&mut self, conn: &mut Conn<'_>) {
        self.waker = conn.waker();
        // Registers the queue's waker.
        self.deliver(conn);
    }

    fn on_message(&mut self, conn: &mut Conn<'_>, msg: Message) {
        if self.done {
            return;
        }
        let Some(mut session) = self.session.take() else {
            return;
        };
        match msg {
            Message::Text(t) => {
                self.command = Some(Box::pin(async move {
                    let outcome = session.handle(t.as_str()).await;
                    (session, outcome)
                }));
                self.poll_command(conn);
                if self.command.is_some() {
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
                self.session = Some(session);
                self.answer(conn, outcome);
            }
            _ => self.session = Some(session),
        }
        self.deliver(conn);
    }

    fn on_wake(&mut self, conn: &mut Conn<'_>) {
        self.poll_command(conn);
        self.deliver(conn);
    }

    fn stop(&mut self, conn: &mut Conn<'_>) {
        if !self.done {
            self.part(conn, &Disconnect::Shutdown);
        }
    }

    fn queue(&self) -> Option<Arc<Outbound>> {
        Some(self.session.as_ref()?.hub.queue().clone())
    }

    fn deliver_now(&mut self, conn: &mut Conn<'_>, d: &Delivery, last: bool) -> bool {
        if self.done {
            // Closing: nothing more is written.
            return true;
        }
        // A command under way holds the session (its answer goes first), and a full
        // output means the peer is behind: the queue keeps it meanwhile.
        let Some(session) = self.session.as_ref().filter(|_| !conn.is_full()) else {
            return false;
        };
        let frame = Session::frame_for(d);
        session.hub.metrics().count_out(frame.payload_len());
        let sent = if last {
            conn.send_shared_now(&frame)
        } else {
            conn.send_shared(&frame)
        };
        if sent.is_err() {
            self.done = true;
        }
        true
    }
}
