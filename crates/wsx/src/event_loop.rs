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
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::Waker;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use bytes::{Buf, BytesMut};
use mio::net::TcpStream;
use mio::{Events, Interest, Poll, Token};
use wsx_proto::{CloseCode, CloseFrame, Connection, Event, Message, Role, SharedFrame, State};

use crate::config::IoConfig;
use crate::error::{Error, Result};

/// What a loop does with its connections' messages. Runs on the loop's thread: it must
/// not block (hand slow work to another thread or runtime).
pub trait Handler: Send + 'static {
    /// `conn` was adopted with `guard` ([`LoopHandle::adopt`]); what this returns is
    /// what the connection holds until it ends (the guard itself, by default). A
    /// handler keeping state of its own per connection takes it from the guard here.
    fn on_open(
        &mut self,
        _conn: &mut Conn<'_>,
        guard: Option<Box<dyn Any + Send>>,
    ) -> Option<Box<dyn Any + Send>> {
        guard
    }
    /// A whole text or binary message arrived on `conn`.
    fn on_message(&mut self, conn: &mut Conn<'_>, msg: Message);
    /// `conn`'s [`waker`](Conn::waker) was woken (or its output drained after
    /// [`Conn::wake_when_writable`]); a waker may be woken more than once, and a stale
    /// one may wake a connection that took its slot: each must be harmless.
    fn on_wake(&mut self, _conn: &mut Conn<'_>) {}
    /// [`LoopHandle::notify`] was called (once or more since the last time).
    fn on_notify(&mut self, _conns: &mut Conns<'_>) {}
    /// `id` is gone (closed, failed, or the peer went away); its id may be reused.
    fn on_close(&mut self, _id: ConnId) {}
}

/// A connection's id within its loop (its slot; reused after [`Handler::on_close`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ConnId(pub usize);

/// The connection a message came on, to answer it.
pub struct Conn<'a> {
    id: ConnId,
    slot: &'a mut Slot,
    shared: &'a Arc<Shared>,
    now: Instant,
    /// The loop's batch of sends, lent to a fan-out ([`Conns::get`]).
    batch: Option<&'a mut Batch>,
}

impl Conn<'_> {
    /// This connection's id.
    pub fn id(&self) -> ConnId {
        self.id
    }

    /// Queue a message; it is written when the handler returns (with whatever else was
    /// queued meanwhile, in one write).
    pub fn send(&mut self, msg: Message) -> Result<()> {
        self.slot.conn.send(msg).map_err(Error::from)
    }

    /// Queue a pre-encoded frame, shared with every other connection it is sent to
    /// (compressed once for all that reset their deflate context).
    pub fn send_shared(&mut self, frame: &SharedFrame) -> Result<()> {
        self.slot.conn.send_shared(frame).map_err(Error::from)
    }

    /// [`send_shared`](Self::send_shared) and write at once: when nothing waits before
    /// it (and it goes uncompressed), the socket takes the frame's bytes straight from
    /// the shared frame, and only what it does not take now is queued (written when the
    /// loop drives the connection after the handler returns). For the last frame a
    /// fan-out gives a connection: no copy, one send. From [`Handler::on_notify`], on a
    /// loop with io_uring ([`LoopConfig::uring`]), the send is queued with the others
    /// and made with them (up to 512 in one system call, the rest when the handler
    /// returns); the frame counts as written meanwhile ([`buffered_amount`](Self::buffered_amount)),
    /// and what is sent to this connection after it waits behind it.
    pub fn send_shared_now(&mut self, frame: &SharedFrame) -> Result<()> {
        let io = &self.slot.io;
        let id = self.id.0;
        let batch = self.batch.as_deref_mut();
        let sent = if batch.as_ref().is_some_and(|b| b.holds(id)) {
            // A send of this connection's is in the batch: the frame waits behind it.
            self.slot.conn.send_shared(frame)
        } else {
            // In the batch if there is one (made with the others in one system call, at
            // the latest when the handler returns; counted as written meanwhile, and
            // what the socket does not take is put back in front of the output then).
            self.slot.conn.send_shared_with(frame, |b| {
                if batch.is_some_and(|batch| batch.push(io, id, frame.as_bytes())) {
                    b.len()
                } else {
                    crate::sys::send(io, b).unwrap_or(0)
                }
            })
        };
        sent.map_err(Error::from)
    }

    /// Write what is queued now, within the handler's call, instead of when it returns:
    /// for a handler writing to many connections in a row (a fan-out), so the first
    /// need not wait for the last. What the socket does not take now, and an error, are
    /// dealt with when the loop drives the connection after the handler returns.
    pub fn flush(&mut self) {
        // Not while a send of its is in the batch: what is queued goes after it.
        if !self.batch.as_ref().is_some_and(|b| b.holds(self.id.0)) {
            let _ = write_out(self.slot);
        }
    }

    /// Start the close handshake.
    pub fn close(&mut self, code: CloseCode, reason: &str) -> Result<()> {
        self.slot
            .conn
            .close(self.now, Some(CloseFrame::new(code, reason)))
            .map_err(Error::from)
    }

    /// Bytes queued and not yet written (the peer is slow when this grows).
    pub fn buffered_amount(&self) -> usize {
        self.slot.conn.output_len()
    }

    /// Whether the output has reached the loop's `write_buffer_size`: the peer is not
    /// keeping up (see [`wake_when_writable`](Self::wake_when_writable)).
    pub fn is_full(&self) -> bool {
        self.slot.conn.output_len() >= self.shared.write_buffer_size
    }

    /// Have [`Handler::on_wake`] called at `at` (a deadline of the handler's own, such
    /// as a heart-beat's; `None`: none). One per connection: a later call replaces it.
    pub fn wake_at(&mut self, at: Option<Instant>) {
        self.slot.wake_at = at;
    }

    /// A waker that has [`Handler::on_wake`] called for this connection on the loop's
    /// thread: for work done elsewhere (a queue filled by another thread, a future
    /// polled by the handler). A new one each call (an allocation): keep it.
    pub fn waker(&self) -> Waker {
        Waker::from(Arc::new(ConnWake {
            shared: self.shared.clone(),
            slot: self.id.0,
        }))
    }

    /// Stop handing this connection's messages to the handler (and reading it) until
    /// [`resume`](Self::resume): a handler waiting on something before the next message.
    pub fn pause(&mut self) {
        self.slot.paused = true;
    }

    /// Hand messages over again after [`pause`](Self::pause).
    pub fn resume(&mut self) {
        self.slot.paused = false;
    }

    /// Have [`Handler::on_wake`] called once the output falls below the write buffer's
    /// size (for a handler that stopped sending because it was full).
    pub fn wake_when_writable(&mut self) {
        self.slot.wake_writable = true;
    }
}

/// Every connection of a loop, for [`Handler::on_notify`].
pub struct Conns<'a> {
    slots: &'a mut Vec<Option<Slot>>,
    again: &'a mut Vec<usize>,
    shared: &'a Arc<Shared>,
    now: Instant,
    batch: Option<&'a mut Batch>,
}

impl Conns<'_> {
    /// The connection `id`, if it is open. What is sent and not written by
    /// [`Conn::flush`] or [`Conn::send_shared_now`] is written once the handler returns,
    /// later in the same turn ([`Lent`]).
    pub fn get(&mut self, id: ConnId) -> Option<Lent<'_>> {
        if let Some(batch) = self.batch.as_deref_mut().filter(|b| !b.has_room()) {
            let made = batch.complete(self.slots, self.again);
            self.shared.count_uring_sends(made);
        }
        let slot = self.slots.get_mut(id.0)?.as_mut()?;
        if slot.finish != Finish::Running {
            return None;
        }
        let before = Asked::of(slot);
        Some(Lent {
            conn: Conn {
                id,
                slot,
                shared: self.shared,
                now: self.now,
                batch: self.batch.as_deref_mut(),
            },
            again: self.again,
            before,
        })
    }

    /// The ids of the open connections.
    pub fn ids(&self) -> Vec<ConnId> {
        (self.slots.iter().enumerate())
            .filter(|(_, s)| s.as_ref().is_some_and(|s| s.finish == Finish::Running))
            .map(|(i, _)| ConnId(i))
            .collect()
    }

    /// A handle on this loop (to notify it later, from a task of the handler's).
    pub fn handle(&self) -> LoopHandle {
        LoopHandle {
            shared: self.shared.clone(),
        }
    }
}

/// A connection lent to [`Handler::on_notify`] ([`Conns::get`]): a [`Conn`] that, when
/// dropped, has the loop drive the connection this turn only if what was done with it
/// needs that (output the socket did not take, a close, a pause or resume, a deadline):
/// a fan-out that wrote everything it gave 10,000 connections leaves the loop no second
/// visit to each of them.
pub struct Lent<'a> {
    conn: Conn<'a>,
    again: &'a mut Vec<usize>,
    before: Asked,
}

/// What a handler can ask of the loop for a connection, besides sending.
#[derive(PartialEq, Eq, Clone, Copy)]
struct Asked {
    paused: bool,
    wake_at: Option<Instant>,
    wake_writable: bool,
}

impl Asked {
    fn of(s: &Slot) -> Asked {
        Asked {
            paused: s.paused,
            wake_at: s.wake_at,
            wake_writable: s.wake_writable,
        }
    }
}

impl<'a> std::ops::Deref for Lent<'a> {
    type Target = Conn<'a>;
    fn deref(&self) -> &Conn<'a> {
        &self.conn
    }
}

impl<'a> std::ops::DerefMut for Lent<'a> {
    fn deref_mut(&mut self) -> &mut Conn<'a> {
        &mut self.conn
    }
}

impl Drop for Lent<'_> {
    fn drop(&mut self) {
        let s = &mut *self.conn.slot;
        // Anything a drive would act on: output left, a close begun or received, a
        // read or a stall under way, a change to what the handler asked.
        let idle = s.conn.output_len() == 0
            && s.conn.state() == State::Open
            && !s.read_more
            && s.stalled.is_none()
            && Asked::of(s) == self.before;
        if !idle {
            list_again(self.again, s, self.conn.id.0);
        }
    }
}

/// What a connection's waker holds: its loop and its slot.
struct ConnWake {
    shared: Arc<Shared>,
    slot: usize,
}

impl std::task::Wake for ConnWake {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        let mut ready = self.shared.ready.lock().unwrap_or_else(|e| e.into_inner());
        ready.push(self.slot);
        // The first since the loop took the list wakes it; the others find it woken.
        if ready.len() == 1 {
            drop(ready);
            let _ = self.shared.waker.wake();
        }
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
    /// Connections whose wakers were woken since the loop last looked.
    ready: Mutex<Vec<usize>>,
    notified: AtomicBool,
    waker: mio::Waker,
    open: AtomicUsize,
    stopping: AtomicBool,
    /// When the loop's current turn began, in nanoseconds after `base`, plus one (0:
    /// waiting for events).
    turn_began: AtomicU64,
    base: Instant,
    write_buffer_size: usize,
    /// Sends made through the loop's io_uring; `NO_URING` while it has none.
    uring_sends: AtomicU64,
}

/// [`Shared::uring_sends`] of a loop without io_uring.
const NO_URING: u64 = u64::MAX;

impl Shared {
    fn count_uring_sends(&self, n: usize) {
        if n > 0 {
            self.uring_sends.fetch_add(n as u64, Ordering::Relaxed);
        }
    }
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

/// A loop's settings.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct LoopConfig {
    /// A connection whose unwritten output reaches `write_buffer_size` is not read
    /// until it falls below (the peer is not reading; TCP slows it down in turn).
    /// A read is given room for what the frame in progress still needs, or between
    /// messages for as much as the last run of messages took, plus `read_size`, at most
    /// `max_read_size` (in a buffer the loop lends an idle connection and takes back
    /// once its messages are handled).
    pub io: IoConfig,
    /// A connection whose output makes no progress for this long (its peer stopped
    /// reading) is dropped. Default: 30 s.
    pub write_timeout: Duration,
    /// Batch the sends a fan-out makes from [`Handler::on_notify`] with
    /// [`Conn::send_shared_now`] in an io_uring: one system call for up to
    /// 512 of them instead of one each. Only with the crate's `uring` feature on Linux;
    /// where io_uring is missing or refused the loop sends one by one. Default: on.
    pub uring: bool,
}

impl Default for LoopConfig {
    fn default() -> Self {
        LoopConfig {
            io: IoConfig::default(),
            write_timeout: Duration::from_secs(30),
            uring: true,
        }
    }
}

impl LoopConfig {
    /// Settings with these buffers.
    pub fn io(mut self, io: IoConfig) -> Self {
        self.io = io;
        self
    }

    /// Set [`write_timeout`](Self::write_timeout).
    pub fn write_timeout(mut self, t: Duration) -> Self {
        self.write_timeout = t;
        self
    }

    /// Set [`uring`](Self::uring).
    pub fn uring(mut self, on: bool) -> Self {
        self.uring = on;
        self
    }
}

impl EventLoop {
    /// Start a loop on a thread of its own, with `handler` for its messages and the
    /// default [`LoopConfig`] but these buffers.
    pub fn start<H: Handler>(io_cfg: IoConfig, handler: H) -> io::Result<EventLoop> {
        Self::start_with(LoopConfig::default().io(io_cfg), handler)
    }

    /// Start a loop on a thread of its own. Started inside a tokio runtime, the loop's
    /// thread enters it: the handler may spawn tasks on it and poll futures that use
    /// its timers.
    pub fn start_with<H: Handler>(cfg: LoopConfig, handler: H) -> io::Result<EventLoop> {
        let poll = Poll::new()?;
        let waker = mio::Waker::new(poll.registry(), WAKER)?;
        let shared = Arc::new(Shared {
            inbox: Mutex::new(Vec::new()),
            ready: Mutex::new(Vec::new()),
            notified: AtomicBool::new(false),
            waker,
            open: AtomicUsize::new(0),
            stopping: AtomicBool::new(false),
            turn_began: AtomicU64::new(0),
            base: Instant::now(),
            write_buffer_size: cfg.io.write_buffer_size,
            uring_sends: AtomicU64::new(NO_URING),
        });
        let run = Runner {
            batch: None,
            poll,
            shared: shared.clone(),
            handler,
            write_timeout: cfg.write_timeout,
            read_size: cfg.io.read_size,
            max_read_size: cfg.io.max_read_size.max(cfg.io.read_size),
            read_hint: 0,
            slots: Vec::new(),
            free: Vec::new(),
            timers: BinaryHeap::new(),
            again: Vec::new(),
            woken: Vec::new(),
            spare: BytesMut::new(),
            scratch: vec![0; SCRATCH].into_boxed_slice(),
            closing: None,
        };
        let uring = cfg.uring;
        let rt = tokio::runtime::Handle::try_current().ok();
        let thread = std::thread::Builder::new()
            .name("wsx-loop".into())
            .spawn(move || {
                let _entered = rt.as_ref().map(tokio::runtime::Handle::enter);
                let mut run = run;
                // Made on the loop's thread, the one thread that submits to it.
                run.batch = uring.then(Batch::new).flatten();
                if run.batch.is_some() {
                    run.shared.uring_sends.store(0, Ordering::Relaxed);
                }
                run.run()
            })?;
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

    /// Have [`Handler::on_notify`] called on the loop's thread (once for any number
    /// of calls made before it runs).
    pub fn notify(&self) {
        if !self.shared.notified.swap(true, Ordering::AcqRel) {
            let _ = self.shared.waker.wake();
        }
    }

    /// How long the loop has been busy with its current turn (zero while it waits for
    /// events): a loop that is behind its work has long turns, as a fan-out to many
    /// connections at more than they take does.
    pub fn busy_for(&self) -> Duration {
        match self.shared.turn_began.load(Ordering::Relaxed) {
            0 => Duration::ZERO,
            began => {
                let now = self.shared.base.elapsed().as_nanos() as u64;
                Duration::from_nanos(now.saturating_sub(began - 1))
            }
        }
    }

    /// Connections given to the loop and not yet ended.
    pub fn open(&self) -> usize {
        self.shared.open.load(Ordering::Acquire)
    }

    /// How many of `on_notify`'s sends went through the loop's io_uring
    /// ([`LoopConfig::uring`]) and were taken by their sockets; `None` for a loop without
    /// one (turned off, not built with the `uring` feature, refused by the kernel), or
    /// whose thread has not started yet.
    pub fn uring_sends(&self) -> Option<u64> {
        match self.shared.uring_sends.load(Ordering::Relaxed) {
            NO_URING => None,
            n => Some(n),
        }
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

/// What a closed connection's reader discards at once.
const SCRATCH: usize = 4 * 1024;
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
    /// Messages are not handed over ([`Conn::pause`]).
    paused: bool,
    /// Call `on_wake` when the output falls below the write buffer's size.
    wake_writable: bool,
    /// Since when output has waited with no progress (a peer that does not read).
    stalled: Option<Instant>,
    /// The handler's own deadline ([`Conn::wake_at`]).
    wake_at: Option<Instant>,
    /// In the loop's list of slots to drive again this turn (listed once however often
    /// a notify touches it).
    again: bool,
    _guard: Option<Box<dyn Any + Send>>,
}

struct Runner<H> {
    /// Where `on_notify`'s sends are batched (io_uring), if the loop has one. First, so
    /// that it is dropped first: a send still queued (a handler that panicked) is made
    /// before the sockets close, never to a descriptor number reused meanwhile.
    batch: Option<Batch>,
    poll: Poll,
    shared: Arc<Shared>,
    handler: H,
    write_timeout: Duration,
    /// [`IoConfig`]'s read sizes.
    read_size: usize,
    max_read_size: usize,
    /// What the last read that emptied a connection's buffer had buffered: the size
    /// of the last run of messages.
    read_hint: usize,
    slots: Vec<Option<Slot>>,
    free: Vec<usize>,
    timers: BinaryHeap<Reverse<(Instant, usize)>>,
    /// Slots to drive again next turn without waiting for an event.
    again: Vec<usize>,
    /// Slots whose handler is to be woken next turn (their output drained).
    woken: Vec<usize>,
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
        let mut ready = Vec::new();
        loop {
            let timeout = if self.again.is_empty() && self.woken.is_empty() {
                self.timers
                    .peek()
                    .map(|Reverse((at, _))| at.saturating_duration_since(Instant::now()))
            } else {
                Some(std::time::Duration::ZERO)
            };
            self.shared.turn_began.store(0, Ordering::Relaxed);
            if let Err(e) = self.poll.poll(&mut events, timeout) {
                if e.kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                // Not expected of epoll; the connections end with the loop.
                break;
            }
            let now = Instant::now();
            let began = now.saturating_duration_since(self.shared.base).as_nanos() as u64;
            self.shared.turn_began.store(began + 1, Ordering::Relaxed);
            // The waker's event: wakers were woken (or a notify, or the inbox).
            let mut woke = false;
            for ev in events.iter() {
                if ev.token() == WAKER {
                    if self.shared.notified.swap(false, Ordering::AcqRel) {
                        let mut conns = Conns {
                            slots: &mut self.slots,
                            again: &mut self.again,
                            shared: &self.shared,
                            now,
                            batch: self.batch.as_mut(),
                        };
                        self.handler.on_notify(&mut conns);
                        if let Some(batch) = &mut self.batch {
                            let made = batch.complete(&mut self.slots, &mut self.again);
                            self.shared.count_uring_sends(made);
                        }
                    }
                    woke = true;
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
            if woke {
                std::mem::swap(
                    &mut ready,
                    &mut *self.shared.ready.lock().unwrap_or_else(|e| e.into_inner()),
                );
            }
            ready.append(&mut self.woken);
            for i in ready.drain(..) {
                self.wake(i, now);
            }
            std::mem::swap(&mut again, &mut self.again);
            for i in again.drain(..) {
                if let Some(Some(s)) = self.slots.get_mut(i) {
                    s.again = false;
                }
                self.drive(i, now, false);
            }
            while let Some(&Reverse((at, i))) = self.timers.peek() {
                if at > now {
                    break;
                }
                self.timers.pop();
                let (live, due) = match self.slots.get_mut(i) {
                    Some(Some(s)) if s.scheduled == Some(at) => {
                        s.scheduled = None;
                        let running = s.finish == Finish::Running;
                        if running {
                            s.conn.handle_timeout(now);
                        }
                        let due = running && s.wake_at.is_some_and(|t| t <= now);
                        if due {
                            s.wake_at = None;
                        }
                        (true, due)
                    }
                    _ => (false, false),
                };
                if due {
                    self.wake(i, now);
                } else if live {
                    self.drive(i, now, false);
                }
            }
            // `open` counts an adopted connection from before its command is sent, so
            // none is still on its way when it reaches 0.
            if self.closing.is_some() && self.shared.open.load(Ordering::Acquire) == 0 {
                break;
            }
        }
        // Ended: not busy (a probe of `busy_for` may outlive the loop).
        self.shared.turn_began.store(0, Ordering::Relaxed);
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
            paused: false,
            wake_writable: false,
            stalled: None,
            wake_at: None,
            again: false,
            _guard: None,
        });
        if let Some(Some(s)) = self.slots.get_mut(i) {
            let mut conn = Conn {
                id: ConnId(i),
                slot: s,
                shared: &self.shared,
                now,
                batch: None,
            };
            conn.slot._guard = self.handler.on_open(&mut conn, guard);
            if let Some((code, reason)) = &self.closing {
                // Adopted after the shutdown: closed as the others were.
                let _ = s.conn.close(now, Some(CloseFrame::new(*code, reason)));
            }
        }
        self.drive(i, now, false);
    }

    /// Slot `i`'s waker was woken: its handler's turn, then whatever it can do.
    fn wake(&mut self, i: usize, now: Instant) {
        if let Some(Some(s)) = self.slots.get_mut(i) {
            if s.finish != Finish::Running {
                return;
            }
            let mut conn = Conn {
                id: ConnId(i),
                slot: s,
                shared: &self.shared,
                now,
                batch: None,
            };
            self.handler.on_wake(&mut conn);
            self.drive(i, now, false);
        }
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
        // The slot is worked on in place, the slab set aside meanwhile (nothing a step
        // does reaches another slot): moving the slot out and back in cost two copies of
        // its ~430 bytes per drive, 1.2 % of an echo's CPU at 20 B.
        let mut slots = std::mem::take(&mut self.slots);
        if let Some(cell) = slots.get_mut(i) {
            self.drive_in(i, cell, now, readable);
        }
        self.slots = slots;
    }

    fn drive_in(&mut self, i: usize, cell: &mut Option<Slot>, now: Instant, readable: bool) {
        let Some(slot) = cell else {
            return;
        };
        slot.read_more |= readable;
        let step = self.step(i, slot, now);
        match step {
            Step::Keep => {
                let want = match slot.finish {
                    Finish::Running => {
                        let stall = slot.stalled.map(|t| t + self.write_timeout);
                        [slot.conn.poll_timeout(), stall, slot.wake_at]
                            .into_iter()
                            .flatten()
                            .min()
                    }
                    Finish::Flushing(at) | Finish::AwaitEof(at) => Some(at),
                };
                if let Some(at) = want {
                    if slot.scheduled.is_none_or(|s| at < s) {
                        slot.scheduled = Some(at);
                        self.timers.push(Reverse((at, i)));
                    }
                }
            }
            Step::Remove => {
                let _ = self.poll.registry().deregister(&mut slot.io);
                *cell = None;
                self.free.push(i);
                self.shared.open.fetch_sub(1, Ordering::AcqRel);
                self.handler.on_close(ConnId(i));
            }
        }
    }

    fn step(&mut self, i: usize, s: &mut Slot, now: Instant) -> Step {
        if s.finish == Finish::Running {
            self.handle_events(i, s, now);
            if s.read_more && !s.paused && s.conn.state() != State::Closed {
                // `Ok(false)`: EOF before a close (abnormal); `Err`: the socket failed.
                if !matches!(self.read(i, s, now), Ok(true)) {
                    return Step::Remove;
                }
            }
            let before = s.conn.output_len();
            if write_out(s).is_err() {
                return Step::Remove;
            }
            let left = s.conn.output_len();
            if left == 0 || left < before {
                s.stalled = (left > 0).then_some(now);
            } else if s.stalled.is_none() {
                s.stalled = Some(now);
            }
            if s.stalled.is_some_and(|t| now >= t + self.write_timeout) {
                // The peer has read nothing for the write timeout.
                return Step::Remove;
            }
            if s.wake_writable && left < self.shared.write_buffer_size {
                s.wake_writable = false;
                self.woken.push(i);
            }
            if s.read_more
                && !s.paused
                && left < self.shared.write_buffer_size
                && s.conn.state() != State::Closed
            {
                // The output drained (or the turn's reads ran out): read on next turn.
                list_again(&mut self.again, s, i);
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
            if s.conn.output_len() >= self.shared.write_buffer_size || reads == READS_PER_TURN {
                // Keep `read_more`: resumed when the output drains (or next turn).
                return Ok(true);
            }
            if !s.conn.wants_input() {
                s.read_more = false;
                return Ok(true);
            }
            let want = if s.conn.input_buffer().is_empty() {
                // Between messages: room for as much as the last run of messages
                // brought (one read for a large message), but no large buffer for a
                // run of small ones.
                self.read_hint
                    .saturating_add(self.read_size)
                    .min(self.max_read_size)
            } else {
                // Within a frame: the read that completes it comes back short.
                let wanted = s.conn.input_wanted().saturating_add(self.read_size);
                wanted.min(self.max_read_size)
            };
            let buf = s.conn.input_buffer();
            if buf.capacity() == 0 {
                // Idle until now: lend the loop's buffer for this read.
                std::mem::swap(buf, &mut self.spare);
            }
            let read = crate::sys::recv_into(&s.io, buf, want);
            let mut run = 0;
            if let Ok((n, _)) = read {
                if n > 0 {
                    reads += 1;
                    run = s.conn.input_buffer().len();
                    if s.conn.tracks_input_time() {
                        s.conn.input_received(now);
                    }
                    self.handle_events(i, s, now);
                }
            }
            // Every complete frame is handled: give the buffer back unless a partial
            // frame is left in it.
            let buf = s.conn.input_buffer();
            if buf.is_empty() {
                if run > 0 {
                    self.read_hint = run;
                }
                if self.spare.capacity() == 0 {
                    std::mem::swap(buf, &mut self.spare);
                } else {
                    *buf = BytesMut::new();
                }
            }
            let filled = match read {
                Ok((0, _)) => return Ok(false),
                Ok((_, filled)) => filled,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    s.read_more = false;
                    return Ok(true);
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            };
            if s.conn.state() == State::Closed || s.paused {
                // Paused: `read_more` kept, the rest is read once resumed.
                return Ok(true);
            }
            if !filled {
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
        while !s.paused {
            match s.conn.poll_event() {
                Ok(Some(Event::Message(m))) if m.is_data() => {
                    let mut conn = Conn {
                        id: ConnId(i),
                        slot: s,
                        shared: &self.shared,
                        now,
                        batch: None,
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

/// Sends of `on_notify` made together (see [`LoopConfig::uring`]): a connection with a
/// send in the batch is not written otherwise until the batch is complete (when the
/// handler returns, or earlier when it is full), and what the socket did not take is
/// then put back in front of its output.
#[cfg(all(feature = "uring", target_os = "linux", not(miri)))]
struct Batch {
    ring: crate::sys::SendRing,
    /// By slot: a send of its is in the ring.
    held: Vec<bool>,
}

#[cfg(all(feature = "uring", target_os = "linux", not(miri)))]
impl Batch {
    /// Sends made at once.
    const SIZE: usize = 512;

    fn new() -> Option<Batch> {
        Some(Batch {
            ring: crate::sys::SendRing::new(Self::SIZE).ok()?,
            held: Vec::new(),
        })
    }

    fn holds(&self, i: usize) -> bool {
        self.held.get(i).copied().unwrap_or(false)
    }

    fn has_room(&self) -> bool {
        self.ring.has_room()
    }

    fn push(&mut self, io: &TcpStream, i: usize, data: &bytes::Bytes) -> bool {
        if !self.ring.push(io, i, data.clone()) {
            return false;
        }
        if self.held.len() <= i {
            self.held.resize(i + 1, false);
        }
        self.held[i] = true;
        true
    }

    /// Make the sends; a connection whose socket did not take all of its send has the
    /// rest put back in front of its output and is driven this turn; one whose send
    /// failed (its socket's error, or an outcome unknown) is shut down and ended by its
    /// drive this turn: bytes that may have gone are never sent twice.
    /// How many sends the sockets took (all or part of).
    fn complete(&mut self, slots: &mut [Option<Slot>], again: &mut Vec<usize>) -> usize {
        let (held, mut made) = (&mut self.held, 0);
        self.ring.complete(|i, data, took| {
            held[i] = false;
            made += usize::from(took.as_ref().is_ok_and(|&n| n > 0));
            let Some(Some(s)) = slots.get_mut(i) else {
                return;
            };
            match took {
                Ok(n) if n >= data.len() => return,
                Ok(n) => s.conn.output().put_back(data.slice(n..)),
                Err(_) => {
                    // Past its deadline: the drive removes it (and tells the handler).
                    let _ = s.io.shutdown(Shutdown::Both);
                    s.finish = Finish::Flushing(Instant::now());
                }
            }
            list_again(again, s, i);
        });
        made
    }
}

/// Without io_uring: never made.
#[cfg(not(all(feature = "uring", target_os = "linux", not(miri))))]
enum Batch {}

#[cfg(not(all(feature = "uring", target_os = "linux", not(miri))))]
impl Batch {
    fn new() -> Option<Batch> {
        None
    }

    fn holds(&self, _: usize) -> bool {
        match *self {}
    }

    fn has_room(&self) -> bool {
        match *self {}
    }

    fn push(&mut self, _: &TcpStream, _: usize, _: &bytes::Bytes) -> bool {
        match *self {}
    }

    fn complete(&mut self, _: &mut [Option<Slot>], _: &mut Vec<usize>) -> usize {
        match *self {}
    }
}

/// Put slot `i` on the list of slots to drive again this turn, once.
fn list_again(again: &mut Vec<usize>, s: &mut Slot, i: usize) {
    if !s.again {
        s.again = true;
        again.push(i);
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
            crate::sys::send(&s.io, out.chunk())
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
    /// protocol core and at most 112 bytes (socket, stage, deadlines, stall, flags, guard).
    #[test]
    fn a_slot_is_the_socket_and_the_core_and_little_else() {
        let slot = std::mem::size_of::<Option<Slot>>();
        let core = std::mem::size_of::<Connection>();
        assert!(
            slot <= core + 112,
            "a slot is {slot} bytes for a {core}-byte protocol core"
        );
    }
}
