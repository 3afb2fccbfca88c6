//! An event loop of our own: many WebSockets on one thread, each a slot of a slab
//! holding its socket and its sans-IO [`Connection`], with no task, future, timer or
//! waker per connection.
//!
//! The tokio API ([`WebSocket`](crate::WebSocket)) gives every connection a task and
//! the futures it awaits: each open connection holds the task (256 bytes), tokio's
//! readiness record (256), the session's future and a timer; together about 1.9 KiB for
//! an echo. Here a connection holds its slot (the socket and the core's state), one
//! entry in the loop's timer heap, and nothing else while it is idle: its read buffer
//! is lent by the loop for the read and given back when no partial frame is left.
//! The handler sees whole messages through [`Handler::on_message`] and answers with
//! [`Conn::send`]; pings are answered, keepalive pings, the idle timeout and the close
//! handshake (with its lingering close) are run by the loop from the core's deadlines.
//!
//! A connection comes in already upgraded ([`LoopHandle::adopt`], or
//! [`LoopHandle::adopt_websocket`] for one accepted with [`accept`](crate::accept)):
//! the handshake stays on tokio, where its timeouts and limits are. Plain TCP only
//! (a TLS stream stays on the tokio API), whole messages only (no frame mode).
//!
//! ```no_run
//! # async fn run() -> std::io::Result<()> {
//! use wsx::event_loop::{Conn, EventLoop, Handler};
//! use wsx::Message;
//!
//! struct Echo;
//! impl Handler for Echo {
//!     fn on_message(&mut self, conn: &mut Conn<'_>, msg: Message) {
//!         let _ = conn.send(msg);
//!     }
//! }
//!
//! let ev = EventLoop::start(wsx::IoConfig::default(), Echo)?;
//! let listener = tokio::net::TcpListener::bind("127.0.0.1:9001").await?;
//! loop {
//!     let (tcp, _) = listener.accept().await?;
//!     let handle = ev.handle();
//!     tokio::spawn(async move {
//!         if let Ok((ws, _)) = wsx::accept(tcp, &wsx::ServerConfig::default()).await {
//!             let _ = handle.adopt_websocket(ws);
//!         }
//!     });
//! }
//! # }
//! ```

use std::any::Any;
use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::io::{self, IoSlice, Read, Write};
use std::net::Shutdown;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Instant;

use bytes::{Buf, BytesMut};
use mio::net::TcpStream;
use mio::{Events, Interest, Poll, Token, Waker};
use wsx_proto::{CloseCode, CloseFrame, Connection, Event, Message, Role, State};

use crate::config::IoConfig;
use crate::error::{Error, Result};

/// What a loop does with its connections' messages. Runs on the loop's thread: it must
/// not block (hand slow work to another thread or runtime).
pub trait Handler: Send + 'static {
    /// A whole text or binary message arrived on `conn`.
    fn on_message(&mut self, conn: &mut Conn<'_>, msg: Message);
    /// `id` is gone (closed, failed, or the peer went away); its id may be reused.
    fn on_close(&mut self, _id: ConnId) {}
}

/// A connection's id within its loop (its slot; reused after [`Handler::on_close`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ConnId(pub usize);

/// The connection a message came on, to answer it.
pub struct Conn<'a> {
    id: ConnId,
    conn: &'a mut Connection,
    now: Instant,
}

impl Conn<'_> {
    /// This connection's id.
    pub fn id(&self) -> ConnId {
        self.id
    }

    /// Queue a message; it is written when the handler returns (with whatever else was
    /// queued meanwhile, in one write).
    pub fn send(&mut self, msg: Message) -> Result<()> {
        self.conn.send(msg).map_err(Error::from)
    }

    /// Start the close handshake.
    pub fn close(&mut self, code: CloseCode, reason: &str) -> Result<()> {
        self.conn
            .close(self.now, Some(CloseFrame::new(code, reason)))
            .map_err(Error::from)
    }

    /// Bytes queued and not yet written (the peer is slow when this grows).
    pub fn buffered_amount(&self) -> usize {
        self.conn.output_len()
    }
}

/// A running loop: its thread and a handle to give it connections.
pub struct EventLoop {
    handle: LoopHandle,
    thread: JoinHandle<()>,
}

/// Gives connections to a loop and stops it; cheap to clone, usable from any thread.
#[derive(Clone)]
pub struct LoopHandle {
    shared: Arc<Shared>,
}

struct Shared {
    inbox: Mutex<Vec<Command>>,
    waker: Waker,
    open: AtomicUsize,
    stopping: AtomicBool,
}

// Commands live only in the inbox until the loop's next turn; boxing the connection
// would cost an allocation per adopted connection.
#[allow(clippy::large_enum_variant)]
enum Command {
    Adopt(std::net::TcpStream, Connection, Option<Box<dyn Any + Send>>),
    Shutdown(CloseCode, String),
}

// (`usize::MAX` is taken: mio keeps it for itself.)
const WAKER: Token = Token(usize::MAX - 1);

impl EventLoop {
    /// Start a loop on a thread of its own, with `handler` for its messages. `io_cfg`:
    /// a connection whose unwritten output reaches `write_buffer_size` is not read
    /// until it falls below (the peer is not reading; TCP slows it down in turn).
    pub fn start<H: Handler>(io_cfg: IoConfig, handler: H) -> io::Result<EventLoop> {
        let poll = Poll::new()?;
        let waker = Waker::new(poll.registry(), WAKER)?;
        let shared = Arc::new(Shared {
            inbox: Mutex::new(Vec::new()),
            waker,
            open: AtomicUsize::new(0),
            stopping: AtomicBool::new(false),
        });
        let run = Runner {
            poll,
            shared: shared.clone(),
            handler,
            io_cfg,
            slots: Vec::new(),
            free: Vec::new(),
            timers: BinaryHeap::new(),
            again: Vec::new(),
            spare: BytesMut::new(),
            scratch: vec![0; SCRATCH].into_boxed_slice(),
            closing: None,
        };
        let thread = std::thread::Builder::new()
            .name("wsx-loop".into())
            .spawn(move || run.run())?;
        Ok(EventLoop {
            handle: LoopHandle { shared },
            thread,
        })
    }

    /// A handle to give this loop connections.
    pub fn handle(&self) -> LoopHandle {
        self.handle.clone()
    }

    /// Wait until the loop has ended (after [`LoopHandle::shutdown`], once every
    /// connection has finished its close handshake or its close timeout has passed).
    pub fn join(self) {
        let _ = self.thread.join();
    }
}

impl LoopHandle {
    /// Give the loop an upgraded connection: `tcp` (made non-blocking here), the core's
    /// state with any bytes already read in its input buffer, and a guard dropped when
    /// the connection ends (a connection slot, say). Refused once the loop is stopping.
    pub fn adopt(
        &self,
        tcp: std::net::TcpStream,
        conn: Connection,
        guard: Option<Box<dyn Any + Send>>,
    ) -> io::Result<()> {
        if self.shared.stopping.load(Ordering::Acquire) {
            return Err(io::Error::other("the event loop is stopping"));
        }
        if conn.config().frame_mode || conn.role() != Role::Server {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "the event loop runs server connections, whole messages (no frame mode)",
            ));
        }
        tcp.set_nonblocking(true)?;
        self.shared.open.fetch_add(1, Ordering::AcqRel);
        self.send(Command::Adopt(tcp, conn, guard))
    }

    /// Give the loop a WebSocket accepted on tokio (its handshake done there). Leaves
    /// the tokio runtime's reactor; the deflate context it holds, if any, stays counted
    /// until it ends.
    pub fn adopt_websocket(&self, ws: crate::WebSocket<tokio::net::TcpStream>) -> io::Result<()> {
        let (tcp, conn, slot) = ws.into_parts();
        let guard = slot.map(|s| Box::new(s) as Box<dyn Any + Send>);
        self.adopt(tcp.into_std()?, conn, guard)
    }

    /// Close every connection with `code` and `reason` (a close handshake each, bounded
    /// by its close timeout), refuse new ones, and end the loop when none is left.
    pub fn shutdown(&self, code: CloseCode, reason: &str) {
        self.shared.stopping.store(true, Ordering::Release);
        let _ = self.send(Command::Shutdown(code, reason.to_string()));
    }

    /// Connections given to the loop and not yet ended.
    pub fn open(&self) -> usize {
        self.shared.open.load(Ordering::Acquire)
    }

    fn send(&self, cmd: Command) -> io::Result<()> {
        self.shared
            .inbox
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(cmd);
        self.shared.waker.wake()
    }
}

/// Bytes read at once (onto the loop's scratch buffer, then into the lent buffer).
const SCRATCH: usize = 64 * 1024;
/// Reads a connection gets per turn of the loop before the others have theirs.
const READS_PER_TURN: usize = 16;

/// How far a connection has gone after its close handshake.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Finish {
    Running,
    /// Write what is left (the close frame), then shut the write side down; given up
    /// at the deadline (a peer that reads nothing would hold the slot for ever).
    Flushing(Instant),
    /// Drain the peer's input until its EOF or the close timeout (a lingering close:
    /// closing with unread input would reset the connection and lose the close frame).
    AwaitEof(Instant),
}

struct Slot {
    io: TcpStream,
    conn: Connection,
    finish: Finish,
    /// Input may be waiting: reading stopped short of `WouldBlock` (output full, or the
    /// turn's reads used up).
    read_more: bool,
    /// The deadline this slot has in the timer heap (at most one live entry).
    scheduled: Option<Instant>,
    _guard: Option<Box<dyn Any + Send>>,
}

struct Runner<H> {
    poll: Poll,
    shared: Arc<Shared>,
    handler: H,
    io_cfg: IoConfig,
    slots: Vec<Option<Slot>>,
    free: Vec<usize>,
    timers: BinaryHeap<Reverse<(Instant, usize)>>,
    /// Slots to drive again next turn without waiting for an event.
    again: Vec<usize>,
    /// The read buffer lent to a connection for a read, taken back when it is empty.
    spare: BytesMut,
    scratch: Box<[u8]>,
    /// Set by a shutdown: the close every connection gets, adopted later ones too.
    closing: Option<(CloseCode, String)>,
}

enum Step {
    Keep,
    Remove,
}

impl<H: Handler> Runner<H> {
    fn run(mut self) {
        let mut events = Events::with_capacity(1024);
        let mut again = Vec::new();
        loop {
            let timeout = if self.again.is_empty() {
                self.timers
                    .peek()
                    .map(|Reverse((at, _))| at.saturating_duration_since(Instant::now()))
            } else {
                Some(std::time::Duration::ZERO)
            };
            if let Err(e) = self.poll.poll(&mut events, timeout) {
                if e.kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                // Not expected of epoll; the connections end with the loop.
                break;
            }
            let now = Instant::now();
            for ev in events.iter() {
                if ev.token() == WAKER {
                    let cmds = std::mem::take(
                        &mut *self.shared.inbox.lock().unwrap_or_else(|e| e.into_inner()),
                    );
                    for cmd in cmds {
                        match cmd {
                            Command::Adopt(tcp, conn, guard) => self.insert(tcp, conn, guard, now),
                            Command::Shutdown(code, reason) => {
                                self.close_all(code, &reason, now);
                                self.closing = Some((code, reason));
                            }
                        }
                    }
                    continue;
                }
                // Edge-triggered: a readable edge means read until `WouldBlock` (or a
                // short read, see `read`).
                let readable = ev.is_readable() || ev.is_read_closed() || ev.is_error();
                self.drive(ev.token().0, now, readable);
            }
            std::mem::swap(&mut again, &mut self.again);
            for i in again.drain(..) {
                self.drive(i, now, false);
            }
            while let Some(&Reverse((at, i))) = self.timers.peek() {
                if at > now {
                    break;
                }
                self.timers.pop();
                let live = match self.slots.get_mut(i) {
                    Some(Some(s)) if s.scheduled == Some(at) => {
                        s.scheduled = None;
                        if s.finish == Finish::Running {
                            s.conn.handle_timeout(now);
                        }
                        true
                    }
                    _ => false,
                };
                if live {
                    self.drive(i, now, false);
                }
            }
            // `open` counts an adopted connection from before its command is sent, so
            // none is still on its way when it reaches 0.
            if self.closing.is_some() && self.shared.open.load(Ordering::Acquire) == 0 {
                break;
            }
        }
    }

    fn insert(
        &mut self,
        tcp: std::net::TcpStream,
        conn: Connection,
        guard: Option<Box<dyn Any + Send>>,
        now: Instant,
    ) {
        let i = self.free.pop().unwrap_or_else(|| {
            self.slots.push(None);
            self.slots.len() - 1
        });
        let mut io = TcpStream::from_std(tcp);
        let interest = Interest::READABLE | Interest::WRITABLE;
        if self
            .poll
            .registry()
            .register(&mut io, Token(i), interest)
            .is_err()
        {
            // Dropped: its peer sees the TCP connection close.
            self.free.push(i);
            self.shared.open.fetch_sub(1, Ordering::AcqRel);
            return;
        }
        self.slots[i] = Some(Slot {
            io,
            conn,
            finish: Finish::Running,
            // Bytes may have come with the handshake, or before the registration.
            read_more: true,
            scheduled: None,
            _guard: guard,
        });
        if let (Some((code, reason)), Some(Some(s))) = (&self.closing, self.slots.get_mut(i)) {
            // Adopted after the shutdown: closed as the others were.
            let _ = s.conn.close(now, Some(CloseFrame::new(*code, reason)));
        }
        self.drive(i, now, false);
    }

    fn close_all(&mut self, code: CloseCode, reason: &str, now: Instant) {
        for i in 0..self.slots.len() {
            let Some(Some(s)) = self.slots.get_mut(i) else {
                continue;
            };
            if s.finish == Finish::Running && s.conn.state() == State::Open {
                let _ = s.conn.close(now, Some(CloseFrame::new(code, reason)));
                self.drive(i, now, false);
            }
        }
    }

    /// Do everything slot `i` can do now: read, handle, write, finish, and schedule its
    /// next deadline.
    fn drive(&mut self, i: usize, now: Instant, readable: bool) {
        let Some(Some(mut slot)) = self.slots.get_mut(i).map(Option::take) else {
            return;
        };
        slot.read_more |= readable;
        let step = self.step(i, &mut slot, now);
        match step {
            Step::Keep => {
                let want = match slot.finish {
                    Finish::Running => slot.conn.poll_timeout(),
                    Finish::Flushing(at) | Finish::AwaitEof(at) => Some(at),
                };
                if let Some(at) = want {
                    if slot.scheduled.is_none_or(|s| at < s) {
                        slot.scheduled = Some(at);
                        self.timers.push(Reverse((at, i)));
                    }
                }
                self.slots[i] = Some(slot);
            }
            Step::Remove => {
                let _ = self.poll.registry().deregister(&mut slot.io);
                drop(slot);
                self.free.push(i);
                self.shared.open.fetch_sub(1, Ordering::AcqRel);
                self.handler.on_close(ConnId(i));
            }
        }
    }

    fn step(&mut self, i: usize, s: &mut Slot, now: Instant) -> Step {
        if s.finish == Finish::Running {
            self.handle_events(i, s, now);
            if s.read_more && s.conn.state() != State::Closed {
                // `Ok(false)`: EOF before a close (abnormal); `Err`: the socket failed.
                if !matches!(self.read(i, s, now), Ok(true)) {
                    return Step::Remove;
                }
            }
            if write_out(s).is_err() {
                return Step::Remove;
            }
            if s.read_more
                && s.conn.output_len() < self.io_cfg.write_buffer_size
                && s.conn.state() != State::Closed
            {
                // The output drained (or the turn's reads ran out): read on next turn.
                self.again.push(i);
            }
            if s.conn.state() == State::Closed {
                s.finish = Finish::Flushing(now + s.conn.config().close_timeout);
            }
        }
        if let Finish::Flushing(at) = s.finish {
            if write_out(s).is_err() || now >= at {
                return Step::Remove;
            }
            if s.conn.output_len() > 0 {
                return Step::Keep; // the rest when the socket is writable
            }
            // RFC 6455 §7.1.1: the server closes the TCP connection first.
            let _ = s.io.shutdown(Shutdown::Write);
            s.finish = Finish::AwaitEof(now + s.conn.config().close_timeout);
        }
        if let Finish::AwaitEof(at) = s.finish {
            if now >= at {
                return Step::Remove;
            }
            loop {
                match (&s.io).read(&mut self.scratch) {
                    Ok(0) => return Step::Remove,
                    Ok(_) => continue, // data after the close: discarded
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Step::Keep,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                    Err(_) => return Step::Remove,
                }
            }
        }
        Step::Keep
    }

    /// Read what the socket has (at most a turn's worth, and not while the output is
    /// full), handling each read's messages. `Ok(false)`: the peer went away.
    fn read(&mut self, i: usize, s: &mut Slot, now: Instant) -> io::Result<bool> {
        let mut reads = 0;
        loop {
            if s.conn.output_len() >= self.io_cfg.write_buffer_size || reads == READS_PER_TURN {
                // Keep `read_more`: resumed when the output drains (or next turn).
                return Ok(true);
            }
            if !s.conn.wants_input() {
                s.read_more = false;
                return Ok(true);
            }
            let n = match (&s.io).read(&mut self.scratch) {
                Ok(0) => return Ok(false),
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    s.read_more = false;
                    return Ok(true);
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            };
            reads += 1;
            let buf = s.conn.input_buffer();
            if buf.capacity() == 0 {
                // Idle until now: lend the loop's buffer for this read.
                std::mem::swap(buf, &mut self.spare);
            }
            buf.extend_from_slice(&self.scratch[..n]);
            if s.conn.tracks_input_time() {
                s.conn.input_received(now);
            }
            self.handle_events(i, s, now);
            // Every complete frame is handled: give the buffer back unless a partial
            // frame is left in it.
            let buf = s.conn.input_buffer();
            if buf.is_empty() {
                if self.spare.capacity() == 0 {
                    std::mem::swap(buf, &mut self.spare);
                } else {
                    *buf = BytesMut::new();
                }
            }
            if s.conn.state() == State::Closed {
                return Ok(true);
            }
            if n < self.scratch.len() {
                // A short read emptied the socket: on Linux a new edge comes with the
                // next bytes (as tokio assumes too), so no `recv` that would only
                // return `EAGAIN` — one `recv` per message instead of two.
                s.read_more = false;
                return Ok(true);
            }
        }
    }

    /// Hand the core's events to the handler. Errors (a protocol violation, a limit, a
    /// timeout) have queued their close frame: the slot goes on to finish.
    fn handle_events(&mut self, i: usize, s: &mut Slot, now: Instant) {
        loop {
            match s.conn.poll_event() {
                Ok(Some(Event::Message(m))) if m.is_data() => {
                    let mut conn = Conn {
                        id: ConnId(i),
                        conn: &mut s.conn,
                        now,
                    };
                    self.handler.on_message(&mut conn, m);
                }
                Ok(Some(_)) => {}
                // An error's close frame is queued and the state is closed.
                Ok(None) | Err(_) => return,
            }
        }
    }
}

/// Write what the socket takes now.
fn write_out(s: &mut Slot) -> io::Result<()> {
    while s.conn.output_len() > 0 {
        let out = s.conn.output();
        let n = if out.chunk().len() < out.remaining() {
            let mut slices = [IoSlice::new(&[]); 32];
            let cnt = out.chunks_vectored(&mut slices);
            (&s.io).write_vectored(&slices[..cnt])
        } else {
            (&s.io).write(out.chunk())
        };
        match n {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(n) => s.conn.output().advance(n),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(()),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What an open connection holds on the loop, besides its timer heap entry (24
    /// bytes) and a read buffer only while a frame is partly read: its slot, the
    /// protocol core and at most 80 bytes (socket, stage, deadline, guard).
    #[test]
    fn a_slot_is_the_socket_and_the_core_and_little_else() {
        let slot = std::mem::size_of::<Option<Slot>>();
        let core = std::mem::size_of::<Connection>();
        assert!(
            slot <= core + 80,
            "a slot is {slot} bytes for a {core}-byte protocol core"
        );
    }
}
