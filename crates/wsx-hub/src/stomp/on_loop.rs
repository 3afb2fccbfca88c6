//! STOMP over WebSocket on [`wsx::event_loop`] ([`FrontLoops`]): each connection a slot
//! of a loop and its [`StompSession`] in the loop's handler. The session is sans-IO:
//! input in, frames out, a deadline (the `CONNECT` timeout, the heart-beats) the loop
//! wakes it at; input that has to wait for the hub (the backplane) is a future polled
//! again when it wakes the connection, and the connection's input waits meanwhile.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, Waker};
use std::time::Instant;

use bytes::Bytes;
use wsx::event_loop::Conn;
use wsx::{CloseCode, Message};

use super::session::{Output, StompSession};
use crate::hub::client::ClientId;
use crate::hub::queue::{Delivery, Disconnect, Outbound};
use crate::transport::loops::{FrontLoops, LoopSession};

/// The loops STOMP WebSockets run on: [`OnLoop::new`] makes what they take.
pub type StompLoops = FrontLoops<OnLoop>;

/// Deliveries taken for one connection before the others have their turn.
const BATCH: usize = 64;

type Input = Pin<Box<dyn Future<Output = StompSession> + Send>>;

/// A STOMP session on a loop.
pub struct OnLoop {
    /// `None` while its input is handled (the future holds the session).
    session: Option<StompSession>,
    input: Option<Input>,
    waker: Waker,
    client: ClientId,
    /// Closing: no more input or deliveries.
    done: bool,
}

impl OnLoop {
    /// `session`, to run on a loop ([`StompLoops::adopt`]).
    pub fn new(mut session: StompSession) -> OnLoop {
        OnLoop {
            client: session.hub().client(),
            session: Some(session),
            input: None,
            waker: Waker::noop().clone(),
            done: false,
        }
    }

    /// Poll the input under way; when it is done, hand the next input over.
    fn poll_input(&mut self, conn: &mut Conn<'_>) {
        let Some(input) = self.input.as_mut() else {
            return;
        };
        if let Poll::Ready(session) = input.as_mut().poll(&mut Context::from_waker(&self.waker)) {
            self.input = None;
            self.session = Some(session);
            conn.resume();
        }
    }

    /// Take deliveries (a batch at most), the deadline's turn if it came, and write
    /// what the session produced.
    fn run(&mut self, conn: &mut Conn<'_>) {
        let Some(session) = self.session.as_mut() else {
            return;
        };
        let now = Instant::now();
        if session.deadline().is_some_and(|d| d <= now) {
            session.on_time(now);
        }
        if !self.done && session.is_connected() {
            let mut cx = Context::from_waker(&self.waker);
            let mut taken = 0;
            loop {
                if taken == BATCH {
                    // More may be queued: after the others' turn.
                    self.waker.wake_by_ref();
                    break;
                }
                if conn.is_full() {
                    // The peer is behind: written once the output drains.
                    conn.wake_when_writable();
                    break;
                }
                match session.hub().poll_delivery(&mut cx) {
                    Poll::Ready(Some(Ok(d))) => session.on_delivery(d, now),
                    Poll::Ready(Some(Err(why))) => {
                        session.on_disconnect(&why);
                        break;
                    }
                    Poll::Ready(None) => {
                        let _ = conn.close(CloseCode::GOING_AWAY, "session ended");
                        self.done = true;
                        break;
                    }
                    Poll::Pending => break,
                }
                taken += 1;
            }
        }
        self.write(conn);
    }

    /// Send what the session produced; close when it asked to.
    fn write(&mut self, conn: &mut Conn<'_>) {
        let Some(session) = self.session.as_mut() else {
            return;
        };
        for o in session.take_output() {
            if self.done {
                break;
            }
            let sent = match o {
                Output::Send { bytes, binary } => conn.send(message(bytes, binary)),
                Output::Shared(m) => conn.send_shared(m.ws_frame()),
                Output::Close => {
                    let _ = conn.close(CloseCode::NORMAL, "");
                    self.done = true;
                    Ok(())
                }
            };
            self.done |= sent.is_err();
        }
        if session.is_closing() && !self.done {
            let _ = conn.close(CloseCode::NORMAL, "");
            self.done = true;
        }
        conn.wake_at(if self.done { None } else { session.deadline() });
    }
}

/// A STOMP frame's bytes as a WebSocket message: text unless asked for binary or not
/// UTF-8.
pub(super) fn message(bytes: Bytes, binary: bool) -> Message {
    if binary {
        return Message::Binary(bytes);
    }
    match wsx::Text::try_from_bytes(bytes) {
        Ok(t) => Message::Text(t),
        Err(b) => Message::Binary(b),
    }
}

impl LoopSession for OnLoop {
    fn client(&self) -> ClientId {
        self.client
    }

    fn on_open(&mut self, conn: &mut Conn<'_>) {
        self.waker = conn.waker();
        self.run(conn);
    }

    fn on_message(&mut self, conn: &mut Conn<'_>, msg: Message) {
        if self.done {
            return;
        }
        let bytes = match msg {
            Message::Text(t) => t.into_bytes(),
            Message::Binary(b) => b,
            _ => return,
        };
        let Some(mut session) = self.session.take() else {
            return;
        };
        self.input = Some(Box::pin(async move {
            session.on_input(&bytes, Instant::now()).await;
            session
        }));
        self.poll_input(conn);
        if self.input.is_some() {
            // Handled in order: the next input once this one is.
            conn.pause();
            return;
        }
        self.run(conn);
    }

    fn on_wake(&mut self, conn: &mut Conn<'_>) {
        self.poll_input(conn);
        self.run(conn);
    }

    fn queue(&self) -> Option<Arc<Outbound>> {
        Some(self.session.as_ref()?.queue().clone())
    }

    fn deliver_now(&mut self, conn: &mut Conn<'_>, d: &Delivery, _last: bool) -> bool {
        if self.done {
            // Closing: nothing more is written.
            return true;
        }
        // Input under way holds the session, and a full output means the peer is
        // behind: the queue keeps it meanwhile.
        let Some(session) = self.session.as_mut().filter(|_| !conn.is_full()) else {
            return false;
        };
        session.on_delivery(d.clone(), Instant::now());
        self.write(conn);
        true
    }

    fn stop(&mut self, conn: &mut Conn<'_>) {
        if let Some(session) = self.session.as_mut() {
            session.on_disconnect(&Disconnect::Shutdown);
            self.write(conn);
        } else if !self.done {
            let _ = conn.close(CloseCode::GOING_AWAY, "server shutting down");
            self.done = true;
        }
    }
}
