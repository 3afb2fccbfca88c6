//! The node-local broker: this node's subscribers of each channel, their queues, and
//! the fan-out of what the [`Backplane`](crate::backplane::Backplane) delivers. Every
//! front-end maps onto this one model through the [`Hub`](crate::Hub). Synchronous: locks are held only for map updates and queue
//! pushes, never across I/O, and a delivery never waits for a subscriber.

use crate::hub::backplane::{Deliver, Event};
use crate::hub::client::ClientId;
use crate::hub::error::HubError;
use crate::hub::publication::{Publication, StreamPosition};
use crate::hub::queue::{Backlog, Delivery, Disconnect, Outbound, QueueLimits, SlowConsumer};
use crate::hub::seats::{Seat, SeatItem, Seats};
use crate::hub::shards::{self, lock, SHARDS};
use crate::hub::wakes::{Wake, Wakes};
use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::Waker;

/// The result of a subscription.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Subscribed {
    /// The stream position at the moment of subscribing (with history on).
    pub position: Option<StreamPosition>,
    /// With a recovery request: whether the missed publications were recovered (they
    /// are queued, in order, before any later publication).
    pub recovered: Option<bool>,
}

struct Subscriber {
    queue: Arc<Outbound>,
    /// While the subscription recovers: events held back until the missed publications
    /// are queued ([`Broker::go_live`]).
    held: Option<Vec<Delivery>>,
    /// The last publication offset queued: a remote backplane may deliver one that
    /// recovery already gave (it was on its way while history was read), never twice.
    last: u64,
    /// The event loop its connection sits on: once live, its deliveries go through the
    /// loop ([`seats`](crate::hub::seats)), not through this entry.
    seat: Option<Seat>,
    /// Its deliveries go through its loop (it has a seat and is live).
    seated: bool,
}

impl Subscriber {
    /// Queue `d` (returning the consumer's waker, to be woken after) or hold it;
    /// `Err` when the consumer is too slow.
    fn offer(&mut self, d: &Delivery) -> Result<Option<Waker>, SlowConsumer> {
        if let Delivery::Publication { publication, .. } = d {
            if self.held.is_none() {
                if publication.offset <= self.last {
                    return Ok(None);
                }
                self.last = publication.offset;
            }
        }
        match &mut self.held {
            None => self.queue.push_quiet(d.clone()),
            Some(held) if held.len() < self.queue.limits().max_messages => {
                held.push(d.clone());
                Ok(None)
            }
            Some(_) => {
                self.queue.mark_slow();
                Err(SlowConsumer)
            }
        }
    }
}

struct LocalChannel {
    name: Arc<str>,
    subscribers: HashMap<ClientId, Subscriber>,
    /// Subscribers whose deliveries the broker queues itself (not seated on a loop).
    unseated: usize,
    /// The loops seated subscribers sit on, with how many sit on each.
    loops: Vec<(Arc<Seats>, usize)>,
}

impl LocalChannel {
    /// Hand `client`'s deliveries to its loop from now on (it has those up to `last`).
    fn seat(&mut self, client: ClientId, seat: &Seat, queue: &Arc<Outbound>, last: u64) {
        match self
            .loops
            .iter_mut()
            .find(|l| Arc::ptr_eq(&l.0, &seat.seats))
        {
            Some(l) => l.1 += 1,
            None => self.loops.push((seat.seats.clone(), 1)),
        }
        seat.seats.push(SeatItem::Seat {
            channel: self.name.clone(),
            slot: seat.slot,
            client,
            queue: queue.clone(),
            last,
        });
    }

    /// `sub` (`client`'s) has left: its loop stops delivering to it.
    fn gone(&mut self, client: ClientId, sub: &Subscriber) {
        let Some(seat) = sub.seat.as_ref().filter(|_| sub.seated) else {
            self.unseated -= 1;
            return;
        };
        if let Some(i) = self
            .loops
            .iter()
            .position(|l| Arc::ptr_eq(&l.0, &seat.seats))
        {
            self.loops[i].1 -= 1;
            if self.loops[i].1 == 0 {
                self.loops.swap_remove(i);
            }
        }
        seat.seats.push(SeatItem::Unseat {
            channel: self.name.clone(),
            client,
        });
    }
}

/// This node's subscribers, by channel.
pub struct Broker {
    shards: Vec<Mutex<HashMap<String, LocalChannel>>>,
    wakes: Wakes,
    /// The depth of this node's subscriber queues.
    backlog: Arc<Backlog>,
    /// How late this node's event loop runs ([`watch_loop`]).
    late: LoopLate,
    /// Whether other loops delivering this broker's fan-outs are behind
    /// ([`Broker::watch_late`]).
    late_probes: Mutex<Vec<LateProbe>>,
    /// The event loops seated subscribers sit on ([`Broker::seats`]).
    seats: Mutex<Vec<std::sync::Weak<Seats>>>,
}

/// Says whether a loop delivering fan-outs is behind.
type LateProbe = Box<dyn Fn() -> bool + Send + Sync>;

/// How late a timer on the event loop fires: the loop's own measure of being behind,
/// as load-shedding servers use (Fastify's under-pressure, Node's toobusy). A loop that
/// keeps up fires a 50 ms timer within a millisecond or two.
struct LoopLate {
    start: std::time::Instant,
    /// Nanoseconds after `start` at which the current probe is due (0: no probe).
    due: std::sync::atomic::AtomicU64,
    /// How late the last probe fired, in nanoseconds.
    last: std::sync::atomic::AtomicU64,
}

/// How often the loop is probed, and how late a probe may fire before the loop counts
/// as behind.
const PROBE_EVERY: std::time::Duration = std::time::Duration::from_millis(50);
pub(crate) const LATE: std::time::Duration = std::time::Duration::from_millis(20);

impl LoopLate {
    fn new() -> LoopLate {
        LoopLate {
            start: std::time::Instant::now(),
            due: Default::default(),
            last: Default::default(),
        }
    }

    fn now(&self) -> u64 {
        self.start.elapsed().as_nanos() as u64
    }

    fn is_late(&self) -> bool {
        use std::sync::atomic::Ordering::Relaxed;
        let late = LATE.as_nanos() as u64;
        let due = self.due.load(Relaxed);
        self.last.load(Relaxed) >= late || due != 0 && self.now() > due + late
    }
}

/// Probe how late `broker`'s event loop runs, for as long as the broker lives.
pub(crate) async fn watch_loop(broker: std::sync::Weak<Broker>) {
    use std::sync::atomic::Ordering::Relaxed;
    loop {
        let Some(b) = broker.upgrade() else {
            return;
        };
        let due = b.late.now() + PROBE_EVERY.as_nanos() as u64;
        b.late.due.store(due, Relaxed);
        drop(b);
        tokio::time::sleep(PROBE_EVERY).await;
        let Some(b) = broker.upgrade() else {
            return;
        };
        b.late.last.store(b.late.now().saturating_sub(due), Relaxed);
    }
}

impl Default for Broker {
    fn default() -> Self {
        Self::new()
    }
}

impl Broker {
    /// A broker with no subscribers.
    pub fn new() -> Broker {
        Broker {
            shards: (0..SHARDS).map(|_| Mutex::new(HashMap::new())).collect(),
            wakes: Wakes::default(),
            backlog: Arc::default(),
            late: LoopLate::new(),
            late_probes: Mutex::new(Vec::new()),
            seats: Mutex::new(Vec::new()),
        }
    }

    /// Seats for an event loop whose connections take this broker's fan-outs there
    /// ([`seats`](crate::hub::seats)), holding at most `limits` (a subscriber queue's)
    /// of what it has still to write; publications waiting for it count in how far
    /// behind this node is ([`lag`](Self::lag)).
    pub(crate) fn seats(&self, limits: QueueLimits) -> Arc<Seats> {
        let seats = Seats::new(limits);
        let mut all = lock(&self.seats);
        all.retain(|s| s.strong_count() > 0);
        all.push(Arc::downgrade(&seats));
        seats
    }

    /// The most publications any loop has still to write.
    fn seats_lag(&self) -> usize {
        lock(&self.seats)
            .iter()
            .filter_map(|s| s.upgrade())
            .map(|s| s.pending())
            .max()
            .unwrap_or(0)
    }

    /// Count `probe` among the loops whose lateness says this node is behind its
    /// deliveries (an event loop of connections' own, beside the runtime's:
    /// [`NativeLoops`](crate::native::NativeLoops) adds each of its loops).
    pub fn watch_late(&self, probe: impl Fn() -> bool + Send + Sync + 'static) {
        lock(&self.late_probes).push(Box::new(probe));
    }

    fn is_late(&self) -> bool {
        self.late.is_late() || lock(&self.late_probes).iter().any(|p| p())
    }

    fn shard(&self, channel: &str) -> MutexGuard<'_, HashMap<String, LocalChannel>> {
        lock(&self.shards[shards::of(channel)])
    }

    /// Add a subscriber. With `recovering`, its events are held back until
    /// [`go_live`](Self::go_live). Returns whether it is the channel's first subscriber
    /// on this node (the node must then listen on the backplane).
    pub(crate) fn add(
        &self,
        channel: &str,
        client: ClientId,
        queue: Arc<Outbound>,
        recovering: bool,
    ) -> Result<bool, HubError> {
        let mut shard = self.shard(channel);
        let ch = shard
            .entry(channel.to_string())
            .or_insert_with(|| LocalChannel {
                name: Arc::from(channel),
                subscribers: HashMap::new(),
                unseated: 0,
                loops: Vec::new(),
            });
        if ch.subscribers.contains_key(&client) {
            return Err(HubError::AlreadySubscribed);
        }
        queue.count_in(&self.backlog);
        let mut sub = Subscriber {
            seat: queue.seat(),
            queue,
            held: recovering.then(Vec::new),
            last: 0,
            seated: false,
        };
        match &sub.seat {
            Some(seat) if !recovering => {
                ch.seat(client, seat, &sub.queue, 0);
                sub.seated = true;
            }
            _ => ch.unseated += 1,
        }
        ch.subscribers.insert(client, sub);
        Ok(ch.subscribers.len() == 1)
    }

    /// Remove a subscriber. Returns whether the channel has no subscriber left on this
    /// node (the node may then stop listening).
    pub(crate) fn remove(&self, channel: &str, client: ClientId) -> Result<bool, HubError> {
        let mut shard = self.shard(channel);
        let ch = shard.get_mut(channel).ok_or(HubError::NotSubscribed)?;
        let sub = ch
            .subscribers
            .remove(&client)
            .ok_or(HubError::NotSubscribed)?;
        ch.gone(client, &sub);
        let empty = ch.subscribers.is_empty();
        if empty {
            shard.remove(channel);
        }
        Ok(empty)
    }

    /// Slow a publisher while this node's fan-outs are `depth` or more publications
    /// behind ([`lag`](Self::lag)), at most until `deadline`.
    pub(crate) async fn pace(&self, depth: usize, deadline: tokio::time::Instant) {
        if depth == 0 {
            return;
        }
        self.wakes.pace(deadline, || self.behind(depth)).await
    }

    /// Whether this node is `depth` or more publications behind (0: pacing off, never).
    pub(crate) fn behind(&self, depth: usize) -> bool {
        depth > 0 && self.lag() >= depth
    }

    /// How many publications behind this node's fan-outs are: the deliveries queued for
    /// the subscriber that has waited longest for its turn; and while the event loop
    /// runs late ([`watch_loop`]), those queued for the average subscriber if more (the
    /// first sees a turn that is late, the second consumers busy writing or ready to
    /// run, which wait for no turn). A consumer stuck while the loop keeps up is its own
    /// problem: its queue bound drops it; it does not slow publishers.
    pub(crate) fn lag(&self) -> usize {
        let turn = self.wakes.lag().max(self.seats_lag());
        if self.is_late() {
            turn.max(self.backlog.depth())
        } else {
            turn
        }
    }

    /// This node's fan-out wake-ups (to watch how far behind it is).
    pub(crate) fn wakes(&self) -> Wakes {
        self.wakes.share()
    }

    /// Whether anyone on this node is subscribed to `channel`.
    pub fn has_subscribers(&self, channel: &str) -> bool {
        self.shard(channel).contains_key(channel)
    }

    /// End a recovery: queue `missed` in order, then what was held back meanwhile
    /// (publications after the last missed one, and presence events), and deliver live
    /// from now on: no gap, no duplicate. `Err` if the consumer overflowed (it is then
    /// dropped with 3008 and should recover again).
    pub(crate) fn go_live(
        &self,
        channel: &str,
        client: ClientId,
        missed: Vec<Arc<Publication>>,
    ) -> Result<(), SlowConsumer> {
        let mut shard = self.shard(channel);
        let Some(ch) = shard.get_mut(channel) else {
            return Err(SlowConsumer);
        };
        let name = ch.name.clone();
        let Some(sub) = ch.subscribers.get_mut(&client) else {
            return Err(SlowConsumer);
        };
        let mut last = 0;
        for p in missed {
            last = p.offset;
            sub.queue.push(Delivery::Publication {
                channel: name.clone(),
                publication: p,
            })?;
        }
        sub.last = last;
        for d in sub.held.take().unwrap_or_default() {
            if let Some(w) = sub.offer(&d)? {
                w.wake();
            }
        }
        if let Some(seat) = sub.seat.clone() {
            // Later deliveries go through its loop, behind what was just queued.
            sub.seated = true;
            let (queue, last) = (sub.queue.clone(), sub.last);
            ch.seat(client, &seat, &queue, last);
            ch.unseated -= 1;
        }
        Ok(())
    }

    /// Channels with subscribers on this node, with their counts.
    pub fn channels(&self) -> Vec<(String, usize)> {
        let mut all: Vec<(String, usize)> = self
            .shards
            .iter()
            .flat_map(|s| {
                lock(s)
                    .iter()
                    .map(|(k, c)| (k.clone(), c.subscribers.len()))
                    .collect::<Vec<_>>()
            })
            .collect();
        all.sort();
        all
    }
}

impl Deliver for Broker {
    /// Fan `event` out to this node's subscribers of `channel`; one [`Delivery`] (one
    /// shared publication, one encoded frame per front-end) for all of them. Consumers
    /// that overflow are dropped from the channel (their connections close with 3008).
    fn deliver(&self, channel: &str, event: Event) {
        let mut shard = self.shard(channel);
        let Some(ch) = shard.get_mut(channel) else {
            return;
        };
        let name = ch.name.clone();
        if let Event::Lost = event {
            // Reconnecting with recovery gets each subscriber exactly what it missed.
            for s in ch.subscribers.values() {
                s.queue.disconnect(Disconnect::insufficient_state());
            }
            return;
        }
        // The joiner itself is not told of its own join.
        let joiner = match &event {
            Event::Join(info) => Some(info.client),
            _ => None,
        };
        let d = match event {
            Event::Publication(publication) => Delivery::Publication {
                channel: name,
                publication,
            },
            Event::Join(info) => Delivery::Join {
                channel: name,
                info,
                encodings: Arc::default(),
            },
            Event::Leave(info) => Delivery::Leave {
                channel: name,
                info,
                encodings: Arc::default(),
            },
            Event::Lost => return,
        };
        // One item for each loop with seated subscribers: the loop writes them all.
        let mut full = Vec::new();
        for (seats, _) in &ch.loops {
            if !seats.deliver(ch.name.clone(), d.clone(), joiner) {
                full.push(seats.clone());
            }
        }
        if ch.unseated == 0 && full.is_empty() {
            return;
        }
        let mut slow = Vec::new();
        let mut wakers = Vec::with_capacity(ch.unseated);
        for (id, s) in ch.subscribers.iter_mut() {
            if Some(*id) == joiner {
                continue;
            }
            if s.seated {
                // Its loop is too far behind to take this: it misses it, as a
                // subscriber whose queue is full does.
                if s.seat
                    .as_ref()
                    .is_some_and(|seat| full.iter().any(|f| Arc::ptr_eq(f, &seat.seats)))
                {
                    s.queue.mark_slow();
                    slow.push(*id);
                }
                continue;
            }
            match s.offer(&d) {
                Ok(Some(waker)) => wakers.push(Wake {
                    waker,
                    queue: s.queue.clone(),
                }),
                Ok(None) => {}
                Err(SlowConsumer) => slow.push(*id),
            }
        }
        for id in slow {
            if let Some(s) = ch.subscribers.remove(&id) {
                ch.gone(id, &s);
            }
        }
        if ch.subscribers.is_empty() {
            shard.remove(channel);
        }
        drop(shard);
        self.wakes.wake(wakers);
    }
}

/// Whether a history page covers everything after `since`: same epoch, not ahead of
/// the stream, and the first missed offset still retained.
pub fn covers(page: &crate::hub::backplane::HistoryPage, since: &StreamPosition) -> bool {
    since.epoch == page.position.epoch
        && since.offset <= page.position.offset
        && page.first_retained <= since.offset + 1
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;

    use super::*;
    use crate::hub::client::ClientInfo;
    use crate::hub::publication::Payload;
    use crate::hub::queue::drain_offsets as offsets;

    fn publication(offset: u64) -> Event {
        Event::Publication(Arc::new(Publication::new(offset, Payload::json("1"))))
    }

    fn info(client: ClientId) -> Arc<ClientInfo> {
        Arc::new(ClientInfo {
            client,
            user: format!("u{client}"),
            ..ClientInfo::default()
        })
    }

    #[tokio::test(flavor = "current_thread", start_paused = true)]
    async fn a_publisher_waits_while_the_average_queue_is_that_deep() {
        let b = Arc::new(Broker::new());
        let queues: Vec<_> = (0..4)
            .map(|_| Outbound::new(QueueLimits::default()))
            .collect();
        for (i, q) in queues.iter().enumerate() {
            b.add("c", i as ClientId, q.clone(), false).unwrap();
        }
        // Consumers busy elsewhere (no waker registered, so nobody waits for a turn):
        // only their queues say how far behind they are.
        for o in 1..=3 {
            b.deliver("c", publication(o));
        }
        assert_eq!(b.wakes.lag(), 0);
        assert_eq!(
            b.lag(),
            0,
            "the loop keeps up: those consumers are merely slow"
        );
        use std::sync::atomic::Ordering::Relaxed;
        b.late.last.store(LATE.as_nanos() as u64, Relaxed);
        assert_eq!(b.lag(), 3, "the loop runs late: the node is behind");
        let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(1);
        use futures_util::FutureExt;
        assert!(b.pace(4, deadline).now_or_never().is_some(), "not as deep");
        assert!(b.pace(0, deadline).now_or_never().is_some(), "pacing off");
        let start = tokio::time::Instant::now();
        let paced = {
            let b = b.clone();
            tokio::spawn(async move { b.pace(3, deadline).await })
        };
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        assert!(!paced.is_finished());
        // Three of the four consumers write what they had: the average falls below 3.
        for q in &queues[..3] {
            q.drain().unwrap();
        }
        paced.await.unwrap();
        let waited = start.elapsed();
        assert!(
            waited >= std::time::Duration::from_millis(20)
                && waited < std::time::Duration::from_millis(40),
            "{waited:?}"
        );
    }

    #[test]
    fn a_late_loop_of_connections_counts_as_the_runtime_would() {
        let b = Broker::new();
        let q = Outbound::new(QueueLimits::default());
        b.add("c", 1, q.clone(), false).unwrap();
        for o in 1..=3 {
            b.deliver("c", publication(o));
        }
        let late = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let probe = late.clone();
        b.watch_late(move || probe.load(std::sync::atomic::Ordering::Relaxed));
        assert_eq!(b.lag(), 0, "every loop keeps up");
        late.store(true, std::sync::atomic::Ordering::Relaxed);
        assert_eq!(
            b.lag(),
            3,
            "a loop of connections runs late: the node is behind"
        );
    }

    #[tokio::test(flavor = "current_thread")]
    async fn the_loop_probe_sees_a_blocked_loop_and_a_free_one() {
        let b = Arc::new(Broker::new());
        tokio::spawn(watch_loop(Arc::downgrade(&b)));
        tokio::task::yield_now().await;
        assert!(!b.late.is_late());
        // The loop blocked (this task does not yield) past the probe's time.
        std::thread::sleep(PROBE_EVERY + LATE * 2);
        assert!(b.late.is_late(), "an overdue probe counts at once");
        // Free again: the probes fire on time (on a loaded machine, eventually).
        let on_time = async {
            while b.late.is_late() {
                tokio::time::sleep(std::time::Duration::from_millis(10)).await;
            }
        };
        tokio::time::timeout(std::time::Duration::from_secs(10), on_time)
            .await
            .expect("on time again");
    }

    #[test]
    fn one_publication_is_shared_by_every_subscriber() {
        let b = Broker::new();
        let queues: Vec<_> = (0..3)
            .map(|_| Outbound::new(QueueLimits::default()))
            .collect();
        for (i, q) in queues.iter().enumerate() {
            let first = b.add("chat:room", i as ClientId, q.clone(), false).unwrap();
            assert_eq!(first, i == 0);
        }
        let Event::Publication(p) = publication(1) else {
            unreachable!()
        };
        b.deliver("chat:room", Event::Publication(p.clone()));
        for q in &queues {
            let got = q.drain().unwrap();
            let [Delivery::Publication { publication, .. }] = got.as_slice() else {
                panic!("{got:?}")
            };
            assert!(
                Arc::ptr_eq(publication, &p),
                "one publication shared by all"
            );
        }
    }

    #[test]
    fn double_subscribe_is_refused_and_removal_reports_the_last() {
        let b = Broker::new();
        let q = Outbound::new(QueueLimits::default());
        b.add("a", 1, q.clone(), false).unwrap();
        assert_eq!(
            b.add("a", 1, q.clone(), false),
            Err(HubError::AlreadySubscribed)
        );
        b.add("a", 2, q, false).unwrap();
        assert_eq!(b.remove("a", 1), Ok(false));
        assert_eq!(b.remove("a", 2), Ok(true));
        assert_eq!(b.remove("a", 2), Err(HubError::NotSubscribed));
        assert!(!b.has_subscribers("a"));
    }

    #[test]
    fn slow_consumer_is_dropped_while_others_get_everything() {
        let b = Broker::new();
        let slow = Outbound::new(QueueLimits {
            max_messages: 10,
            max_bytes: 1 << 20,
        });
        let fast = Outbound::new(QueueLimits::default());
        b.add("ticks", 1, slow.clone(), false).unwrap();
        b.add("ticks", 2, fast.clone(), false).unwrap();
        let mut got = Vec::new();
        for i in 1..=100 {
            b.deliver("ticks", publication(i));
            got.extend(offsets(&fast)); // the fast consumer keeps up
        }
        assert_eq!(got, (1..=100).collect::<Vec<_>>());
        assert!(slow.drain().is_err(), "the slow queue is closed");
        assert_eq!(b.channels(), vec![("ticks".to_string(), 1)]);
    }

    #[test]
    fn going_live_queues_missed_then_held_without_duplicates() {
        let b = Broker::new();
        let q = Outbound::new(QueueLimits::default());
        b.add("news", 1, q.clone(), true).unwrap();
        // Live publications 5 and 6 arrive while history (3..=5) is being read.
        b.deliver("news", publication(5));
        b.deliver("news", Event::Join(info(9)));
        b.deliver("news", publication(6));
        assert!(q.is_empty(), "held back while recovering");
        let missed = (3..=5)
            .map(|o| Arc::new(Publication::new(o, Payload::binary(Bytes::new()))))
            .collect();
        b.go_live("news", 1, missed).unwrap();
        let got: Vec<String> = q
            .drain()
            .unwrap()
            .into_iter()
            .map(|d| match d {
                Delivery::Publication { publication, .. } => publication.offset.to_string(),
                Delivery::Join { info, .. } => format!("join {}", info.client),
                other => format!("{other:?}"),
            })
            .collect();
        assert_eq!(got, ["3", "4", "5", "join 9", "6"]);
        b.deliver("news", publication(7));
        assert_eq!(offsets(&q), vec![7], "live after going live");
    }

    #[test]
    fn a_joiner_is_not_told_of_its_own_join() {
        let b = Broker::new();
        let (qa, qb) = (
            Outbound::new(QueueLimits::default()),
            Outbound::new(QueueLimits::default()),
        );
        b.add("room", 1, qa.clone(), false).unwrap();
        b.add("room", 2, qb.clone(), false).unwrap();
        b.deliver("room", Event::Join(info(2)));
        assert_eq!(qa.len(), 1);
        assert!(qb.is_empty());
    }
}
