//! Each subscriber connection's bounded outbound queue. Publishing never waits: a queue
//! that is full marks its consumer slow, and the connection is closed (with a documented
//! code) so the client reconnects and recovers, instead of the server's memory growing.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Waker};

use crate::hub::client::ClientInfo;
use crate::hub::publication::{Publication, SharedEncodings};
use crate::hub::seats::{Seat, SeatItem};
use crate::hub::shards::lock;

/// What a connection receives from the broker: protocol-neutral; each front-end
/// encodes it (once per event, through the event's encodings).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Delivery {
    /// A publication on a channel.
    Publication {
        /// The channel.
        channel: Arc<str>,
        /// The publication (shared by every subscriber).
        publication: Arc<Publication>,
    },
    /// A client joined a channel (presence with join/leave on).
    Join {
        /// The channel.
        channel: Arc<str>,
        /// Who joined.
        info: Arc<ClientInfo>,
        /// The front-ends' encodings, made once for every recipient of this event.
        encodings: SharedEncodings,
    },
    /// The server removed this connection's subscription to a channel.
    Unsubscribed {
        /// The channel.
        channel: Arc<str>,
    },
    /// A work-queue message for one of this connection's consumers.
    Queued {
        /// The queue.
        queue: Arc<str>,
        /// The consumer's key within the session.
        consumer: u64,
        /// The delivery tag, to acknowledge it by.
        tag: u64,
        /// The message (its `offset` is its sequence number in the queue).
        message: Arc<Publication>,
        /// Whether it was handed out before (NACKed, or its consumer left).
        redelivered: bool,
    },
    /// A client left a channel.
    Leave {
        /// The channel.
        channel: Arc<str>,
        /// Who left.
        info: Arc<ClientInfo>,
        /// The front-ends' encodings, made once for every recipient of this event.
        encodings: SharedEncodings,
    },
}

impl Delivery {
    /// What it counts for in a queue's byte bound.
    pub(crate) fn cost(&self) -> usize {
        match self {
            Delivery::Publication { publication, .. } => publication.data.len() + 64,
            Delivery::Queued { message, .. } => message.data.len() + 64,
            Delivery::Join { .. } | Delivery::Leave { .. } | Delivery::Unsubscribed { .. } => 128,
        }
    }
}

/// Limits of one queue.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct QueueLimits {
    /// Most deliveries waiting. Default: 4096.
    pub max_messages: usize,
    /// Most payload bytes waiting. Default: 4 MiB.
    pub max_bytes: usize,
}

impl Default for QueueLimits {
    fn default() -> Self {
        QueueLimits {
            max_messages: 4096,
            max_bytes: 4 << 20,
        }
    }
}

/// The consumer could not keep up; its queue is closed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SlowConsumer;

/// Why the server ends a connection through its queue. Each front-end says it its own
/// way (a native `disconnect` push and close code, a STOMP `ERROR` frame, …).
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Disconnect {
    /// The outbound queue overflowed: the client should reconnect and recover.
    SlowConsumer,
    /// The server's operator or application ended the connection (HTTP API
    /// `disconnect`).
    Server {
        /// The application's code (3000-4999).
        code: u16,
        /// Why, for people.
        reason: String,
        /// Whether the client should reconnect.
        reconnect: bool,
    },
    /// The server is shutting down: reconnect (to another node).
    Shutdown,
}

/// The close code of [`Disconnect::insufficient_state`].
pub const INSUFFICIENT_STATE: u16 = 3011;

impl Disconnect {
    /// This node may have missed publications of a channel the client is subscribed to
    /// (its backplane link dropped): reconnect, and recovery gets exactly what was
    /// missed (code 3011).
    pub fn insufficient_state() -> Disconnect {
        Disconnect::Server {
            code: INSUFFICIENT_STATE,
            reason: "insufficient state: reconnect to recover".into(),
            reconnect: true,
        }
    }

    /// Whether the client should reconnect.
    pub fn reconnect(&self) -> bool {
        match self {
            Disconnect::SlowConsumer | Disconnect::Shutdown => true,
            Disconnect::Server { reconnect, .. } => *reconnect,
        }
    }

    /// Why, for people.
    pub fn reason(&self) -> &str {
        match self {
            Disconnect::SlowConsumer => "slow consumer",
            Disconnect::Server { reason, .. } => reason,
            Disconnect::Shutdown => "server shutting down",
        }
    }
}

#[derive(Debug, Default)]
struct State {
    items: VecDeque<Delivery>,
    bytes: usize,
    overflowed: bool,
    closed: bool,
    /// Boxed: rare, and a connection's queue is kept small.
    disconnect: Option<Box<Disconnect>>,
    waker: Option<Waker>,
    /// Where this queue's depth counts ([`Outbound::count_in`]).
    backlog: Option<Arc<Backlog>>,
    /// The loop its connection sits on ([`Outbound::set_seat`]).
    seat: Option<Seat>,
}

impl State {
    /// The queue may hold something now (an item, an overflow, a close, a
    /// disconnect): a fan-out of its loop looks at it before writing past it.
    fn waits(&self) {
        if let Some(seat) = &self.seat {
            seat.seats.waits(seat.slot);
        }
    }

    fn is_clear(&self) -> bool {
        self.items.is_empty() && !self.overflowed && !self.closed && self.disconnect.is_none()
    }

    /// After the queue went from `before` items to what it holds now: keep its share
    /// of the backlog it counts in.
    fn counted(&self, before: usize) {
        if let Some(b) = &self.backlog {
            let (was, now) = (before.min(BACKLOG_CAP), self.items.len().min(BACKLOG_CAP));
            if now > was {
                b.items.fetch_add(now - was, Ordering::Relaxed);
            } else if was > now {
                b.items.fetch_sub(was - now, Ordering::Relaxed);
            }
        }
    }
}

/// The most one queue adds to its [`Backlog`]: a few consumers stuck with full queues
/// must not make a whole node look behind.
pub(crate) const BACKLOG_CAP: usize = 128;

/// How deep a node's queues are on average: the deliveries waiting in them (each queue
/// counting at most [`BACKLOG_CAP`]) over the queues. Wherever the consumers are —
/// waiting for their turn, ready to run, or blocked on their sockets — a node whose
/// average queue holds `n` deliveries is about `n` publications behind.
#[derive(Debug, Default)]
pub(crate) struct Backlog {
    items: AtomicUsize,
    queues: AtomicUsize,
}

impl Backlog {
    /// The average depth (deliveries waiting per queue).
    pub(crate) fn depth(&self) -> usize {
        let queues = self.queues.load(Ordering::Relaxed).max(1);
        self.items.load(Ordering::Relaxed) / queues
    }
}

/// A bounded queue with one consumer (the connection) and many producers (publishers).
#[derive(Debug, Default)]
pub struct Outbound {
    limits: QueueLimits,
    state: Mutex<State>,
}

impl Outbound {
    /// An empty queue.
    pub fn new(limits: QueueLimits) -> Arc<Outbound> {
        Arc::new(Outbound {
            limits,
            state: Mutex::new(State::default()),
        })
    }

    /// Queue a delivery without waiting. Fails, and closes the queue for good, when the
    /// consumer is too far behind.
    pub fn push(&self, d: Delivery) -> Result<(), SlowConsumer> {
        if let Some(w) = self.push_quiet(d)? {
            w.wake();
        }
        Ok(())
    }

    /// [`push`](Self::push), but the consumer's waker (if it was waiting) is returned
    /// instead of woken: a fan-out wakes its consumers in turns
    /// ([`Wakes`](crate::hub::wakes::Wakes)). An overflow still wakes it at once.
    pub(crate) fn push_quiet(&self, d: Delivery) -> Result<Option<Waker>, SlowConsumer> {
        let mut s = lock(&self.state);
        if s.overflowed || s.closed {
            return Err(SlowConsumer);
        }
        s.waits();
        let cost = d.cost();
        let before = s.items.len();
        if before >= self.limits.max_messages || s.bytes + cost > self.limits.max_bytes {
            s.overflowed = true;
            s.items.clear();
            s.counted(before);
            s.bytes = 0;
            if let Some(w) = s.waker.take() {
                w.wake();
            }
            return Err(SlowConsumer);
        }
        s.bytes += cost;
        s.items.push_back(d);
        s.counted(before);
        Ok(s.waker.take())
    }

    /// The next delivery; `Err` once the queue overflowed or the server
    /// asked to disconnect; `None` after [`close`](Self::close).
    pub fn poll_next(&self, cx: &mut Context<'_>) -> Poll<Option<Result<Delivery, Disconnect>>> {
        self.next(Some(cx.waker()))
    }

    /// [`poll_next`](Self::poll_next) without registering for a wake-up: a consumer
    /// taking what else is queued before it writes. (A waker left here would stand for
    /// a consumer waiting on its queue while it is busy writing.)
    pub fn try_next(&self) -> Poll<Option<Result<Delivery, Disconnect>>> {
        self.next(None)
    }

    fn next(&self, waker: Option<&Waker>) -> Poll<Option<Result<Delivery, Disconnect>>> {
        let mut s = lock(&self.state);
        if s.overflowed {
            return Poll::Ready(Some(Err(Disconnect::SlowConsumer)));
        }
        if let Some(d) = s.disconnect.take() {
            s.closed = true;
            return Poll::Ready(Some(Err(*d)));
        }
        if let Some(d) = s.items.pop_front() {
            s.bytes -= d.cost();
            s.counted(s.items.len() + 1);
            return Poll::Ready(Some(Ok(d)));
        }
        if s.closed {
            return Poll::Ready(None);
        }
        if let Some(w) = waker {
            s.waker = Some(w.clone());
        }
        Poll::Pending
    }

    /// Take everything queued now (for a consumer that writes in batches).
    pub fn drain(&self) -> Result<Vec<Delivery>, SlowConsumer> {
        let mut s = lock(&self.state);
        if s.overflowed {
            return Err(SlowConsumer);
        }
        s.bytes = 0;
        let before = s.items.len();
        let all = s.items.drain(..).collect();
        s.counted(before);
        Ok(all)
    }

    /// The limits.
    pub fn limits(&self) -> QueueLimits {
        self.limits
    }

    /// Mark the consumer slow, as an overflowing push does: the queue closes and its
    /// connection is dropped ([`Disconnect::SlowConsumer`]).
    pub fn mark_slow(&self) {
        let mut s = lock(&self.state);
        s.overflowed = true;
        s.waits();
        let before = s.items.len();
        s.items.clear();
        s.counted(before);
        s.bytes = 0;
        if let Some(w) = s.waker.take() {
            w.wake();
        }
    }

    /// Ask the connection to close with this code and reason (server-side disconnect).
    pub fn disconnect(&self, d: Disconnect) {
        let mut s = lock(&self.state);
        s.disconnect = Some(Box::new(d));
        s.waits();
        if let Some(w) = s.waker.take() {
            w.wake();
        }
    }

    /// Stop accepting deliveries (the connection is going away).
    pub fn close(&self) {
        let mut s = lock(&self.state);
        s.closed = true;
        s.waits();
        if let Some(w) = s.waker.take() {
            w.wake();
        }
    }

    /// Count this queue's depth in `backlog` from now on (the first backlog it is given
    /// is kept).
    pub(crate) fn count_in(&self, backlog: &Arc<Backlog>) {
        let mut s = lock(&self.state);
        if s.backlog.is_none() {
            backlog.queues.fetch_add(1, Ordering::Relaxed);
            s.backlog = Some(backlog.clone());
            s.counted(0);
        }
    }

    /// Seat this queue's connection on an event loop: from now on the broker hands its
    /// subscriptions' deliveries to the loop, which writes them or queues them here
    /// ([`seats`](crate::hub::seats)). The first seat counts.
    pub(crate) fn set_seat(&self, seat: Seat) {
        let mut s = lock(&self.state);
        s.seat.get_or_insert(seat);
        if !s.is_clear() {
            s.waits();
        }
    }

    /// The loop this queue's connection sits on.
    pub(crate) fn seat(&self) -> Option<Seat> {
        lock(&self.state).seat.clone()
    }

    /// [`push`](Self::push) after every delivery the broker handed the connection's
    /// loop before (for a seated connection, through the loop).
    pub fn push_in_order(self: &Arc<Self>, d: Delivery) -> Result<(), SlowConsumer> {
        match self.seat() {
            Some(seat) => {
                seat.seats.push(SeatItem::Queue {
                    queue: self.clone(),
                    delivery: d,
                });
                Ok(())
            }
            None => self.push(d),
        }
    }

    /// Whether the queue overflowed (its consumer was too slow).
    pub fn overflowed(&self) -> bool {
        lock(&self.state).overflowed
    }

    /// Deliveries waiting.
    pub fn len(&self) -> usize {
        lock(&self.state).items.len()
    }

    /// Whether nothing waits.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Whether a delivery may bypass the queue: nothing waits in it, and it is neither
    /// closed nor overflowed nor holding a disconnect (what the consumer must see first).
    /// And calls `then` under the queue's lock when it is.
    pub(crate) fn is_clear_then(&self, then: impl FnOnce()) -> bool {
        let s = lock(&self.state);
        let clear = s.is_clear();
        if clear {
            then();
        }
        clear
    }
}

impl Drop for Outbound {
    fn drop(&mut self) {
        let s = self.state.get_mut().unwrap_or_else(|e| e.into_inner());
        if let Some(b) = s.backlog.take() {
            b.items
                .fetch_sub(s.items.len().min(BACKLOG_CAP), Ordering::Relaxed);
            b.queues.fetch_sub(1, Ordering::Relaxed);
        }
    }
}

/// The offsets of the publications queued now (tests).
#[cfg(test)]
pub(crate) fn drain_offsets(q: &Outbound) -> Vec<u64> {
    q.drain()
        .expect("queue open")
        .into_iter()
        .filter_map(|d| match d {
            Delivery::Publication { publication, .. } => Some(publication.offset),
            _ => None,
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;

    use super::*;
    use crate::hub::publication::Payload;

    fn publication(n: usize) -> Delivery {
        Delivery::Publication {
            channel: Arc::from("c"),
            publication: Arc::new(Publication::new(
                n as u64,
                Payload::binary(Bytes::from(vec![0u8; 100])),
            )),
        }
    }

    #[test]
    fn an_idle_queue_is_small() {
        // Every connection has one: what is rare (a server's disconnect) is boxed.
        let size = std::mem::size_of::<Outbound>();
        assert!(size <= 120, "{size} bytes");
    }

    #[test]
    fn delivers_in_order() {
        let q = Outbound::new(QueueLimits::default());
        for i in 0..10 {
            q.push(publication(i)).unwrap();
        }
        let got = q.drain().unwrap();
        assert_eq!(got, (0..10).map(publication).collect::<Vec<_>>());
    }

    #[test]
    fn a_backlog_counts_every_queue_in_it_up_to_the_cap() {
        let b = Arc::new(Backlog::default());
        let (q1, q2) = (Outbound::new(QueueLimits::default()), Outbound::default());
        let q2 = Arc::new(q2);
        q1.push(publication(0)).unwrap();
        q1.count_in(&b);
        q1.count_in(&b);
        assert_eq!(b.depth(), 1, "what was queued counts; counted once");
        q2.count_in(&b);
        for i in 0..10 {
            q1.push(publication(i)).unwrap();
        }
        assert_eq!(b.depth(), 11 / 2);
        let _ = q1.try_next();
        assert_eq!(b.items.load(Ordering::Relaxed), 10);
        q1.drain().unwrap();
        assert_eq!(b.depth(), 0);
        // A stuck consumer counts at most the cap.
        for i in 0..BACKLOG_CAP + 50 {
            q2.push(publication(i)).unwrap();
        }
        assert_eq!(b.items.load(Ordering::Relaxed), BACKLOG_CAP);
        for _ in 0..60 {
            let _ = q2.try_next();
        }
        assert_eq!(b.items.load(Ordering::Relaxed), BACKLOG_CAP - 10);
        q2.mark_slow();
        assert_eq!(b.items.load(Ordering::Relaxed), 0);
        q1.push(publication(1)).unwrap();
        drop(q1);
        assert_eq!(b.items.load(Ordering::Relaxed), 0, "a dropped queue leaves");
        assert_eq!(b.queues.load(Ordering::Relaxed), 1);
    }

    #[test]
    fn a_full_queue_marks_the_consumer_slow_and_frees_its_memory() {
        let q = Outbound::new(QueueLimits {
            max_messages: 5,
            max_bytes: 1 << 20,
        });
        for i in 0..5 {
            q.push(publication(i)).unwrap();
        }
        assert_eq!(q.push(publication(5)), Err(SlowConsumer));
        assert_eq!(q.len(), 0, "memory released at once");
        assert_eq!(q.push(publication(6)), Err(SlowConsumer), "stays closed");
        assert_eq!(q.drain(), Err(SlowConsumer));
    }

    #[test]
    fn byte_limit_counts_payloads() {
        let q = Outbound::new(QueueLimits {
            max_messages: 1000,
            max_bytes: 500,
        });
        for i in 0..3 {
            q.push(publication(i)).unwrap();
        }
        assert_eq!(q.push(publication(3)), Err(SlowConsumer));
    }

    #[test]
    fn taking_what_is_queued_leaves_no_waker_behind() {
        let q = Outbound::new(QueueLimits::default());
        let waker = futures_util::task::noop_waker();
        let mut cx = Context::from_waker(&waker);
        // A consumer waiting on its queue is handed back by the next push ...
        assert!(q.poll_next(&mut cx).is_pending());
        assert!(q.push_quiet(publication(1)).unwrap().is_some());
        // ... but one that only took what was there (and went on writing) is not.
        assert!(matches!(q.try_next(), Poll::Ready(Some(Ok(_)))));
        assert!(q.try_next().is_pending());
        assert!(q.push_quiet(publication(2)).unwrap().is_none());
    }
}
