//! A fan-out handed to each event loop once: the loop's seats in the broker.
//!
//! A connection on a [`wsx::event_loop`] is *seated* there: its queue knows its loop
//! and slot ([`Outbound::set_seat`]). The broker then keeps, for each channel, the loops
//! its live subscribers sit on, and a publication costs the broker one item per loop
//! ([`Seats::push`]) instead of a queue push and a wake-up per subscriber. The loop
//! keeps its own list of each channel's subscribers ([`LoopTopics`]) and writes the
//! publication to each of them in a row from its thread: straight into the
//! connection's output when its queue is empty and its output has room (what uWebSockets'
//! topics do), into its queue (behind what waits there, in order) otherwise.
//!
//! Order: everything the broker says about a seated subscriber (seated, unseated,
//! deliveries, and a push that must follow them, such as the server's `unsubscribe`)
//! goes through the one list in the order the broker said it, under the channel's lock;
//! what its queue already holds is written first (a delivery goes behind it).

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};

use crate::hub::client::ClientId;
use crate::hub::queue::{Delivery, Outbound, QueueLimits};
use crate::hub::shards::lock;

/// One event loop's share of the broker's fan-outs: what the broker told it, in order,
/// until the loop takes it.
///
/// Bounded as a subscriber's queue is ([`QueueLimits`]): what the loop has still to
/// write is, for each of its subscribers, as if it waited in their queues. When a
/// publication would take it past the bound (a loop that fell behind for good), it is
/// not added: the broker drops that loop's subscribers of the channel as slow
/// consumers instead ([`Seats::deliver`]), as their own queues' bound would.
#[derive(Default)]
pub struct Seats {
    items: Mutex<VecDeque<SeatItem>>,
    /// Deliveries in `items`, not yet written or queued: how far behind the loop is.
    pending: AtomicUsize,
    /// Their payload bytes, counted as a queue counts them.
    pending_bytes: AtomicUsize,
    limits: QueueLimits,
    /// Which slots' queues may hold something.
    waiting: Waiting,
    /// Wakes the loop (set once it runs).
    notify: OnceLock<Box<dyn Fn() + Send + Sync>>,
}

/// A flag per slot of a loop, set when the queue seated there may hold something, be
/// closed or hold a disconnect (whatever makes it so sets it, under the queue's lock),
/// cleared by the loop under the same lock when it finds the queue clear: a fan-out
/// then looks at this dense array instead of each subscriber's queue (a cache miss
/// apiece). A flag may be set for nothing (a slot's earlier connection, a queue since
/// drained): that costs a look at the queue, never a delivery out of order.
struct Waiting {
    pages: Box<[OnceLock<Box<[AtomicBool]>>]>,
}

/// Slots per page of [`Waiting`], and pages: slots past `PAGE * PAGES` (4M) always
/// count as waiting.
const PAGE: usize = 4096;
const PAGES: usize = 1024;

impl Default for Waiting {
    fn default() -> Self {
        Waiting {
            pages: (0..PAGES).map(|_| OnceLock::new()).collect(),
        }
    }
}

impl Waiting {
    /// Set `slot`'s flag (under its queue's lock).
    fn set(&self, slot: usize) {
        if let Some(page) = self.pages.get(slot / PAGE) {
            page.get_or_init(|| (0..PAGE).map(|_| AtomicBool::new(false)).collect())[slot % PAGE]
                .store(true, Ordering::Relaxed);
        }
    }

    /// Clear `slot`'s flag (under its queue's lock, the queue found clear).
    fn clear(&self, slot: usize) {
        if let Some(page) = self.pages.get(slot / PAGE).and_then(OnceLock::get) {
            page[slot % PAGE].store(false, Ordering::Relaxed);
        }
    }

    /// Whether `slot`'s queue may hold something. What was set before the broker
    /// handed the loop a delivery is seen: the flag is set under the queue's lock,
    /// before the delivery went through the seats' lock.
    fn get(&self, slot: usize) -> bool {
        match self.pages.get(slot / PAGE) {
            Some(page) => page
                .get()
                .is_some_and(|p| p[slot % PAGE].load(Ordering::Relaxed)),
            None => true,
        }
    }
}

/// Where a connection sits: its loop's seats and its slot there.
#[derive(Clone)]
pub struct Seat {
    pub(crate) seats: Arc<Seats>,
    pub(crate) slot: usize,
}

impl std::fmt::Debug for Seat {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Seat").field("slot", &self.slot).finish()
    }
}

/// What the broker tells a loop.
pub(crate) enum SeatItem {
    /// `client` (at `slot`, with `queue`) subscribed to `channel`; publications up to
    /// offset `last` it already has.
    Seat {
        channel: Arc<str>,
        slot: usize,
        client: ClientId,
        queue: Arc<Outbound>,
        last: u64,
    },
    /// `client` left `channel`.
    Unseat { channel: Arc<str>, client: ClientId },
    /// To every subscriber of `channel` on the loop, but `except`.
    Deliver {
        channel: Arc<str>,
        delivery: Delivery,
        except: Option<ClientId>,
    },
    /// Into `queue`, after what was said before.
    Queue {
        queue: Arc<Outbound>,
        delivery: Delivery,
    },
}

impl Seats {
    /// Seats for a loop holding at most `limits` of deliveries not yet written;
    /// [`on_push`](Self::on_push) says how to wake it.
    pub fn new(limits: QueueLimits) -> Arc<Seats> {
        Arc::new(Seats {
            limits,
            ..Seats::default()
        })
    }

    /// Call `notify` (it wakes the loop) when an item arrives and the loop has taken
    /// everything before it. The first call counts.
    pub fn on_push(&self, notify: impl Fn() + Send + Sync + 'static) {
        let _ = self.notify.set(Box::new(notify));
    }

    /// The queue seated at `slot` may hold something now (its lock held).
    pub(crate) fn waits(&self, slot: usize) {
        self.waiting.set(slot);
    }

    /// Whether `m` may be written to at once: nothing waits in its queue.
    fn clear(&self, m: &Member) -> bool {
        !self.waiting.get(m.slot) || m.queue.is_clear_then(|| self.waiting.clear(m.slot))
    }

    /// A seat at `slot`.
    pub fn seat(self: &Arc<Self>, slot: usize) -> Seat {
        Seat {
            seats: self.clone(),
            slot,
        }
    }

    pub(crate) fn push(&self, item: SeatItem) {
        let mut items = lock(&self.items);
        let first = items.is_empty();
        items.push_back(item);
        drop(items);
        if first {
            if let Some(notify) = self.notify.get() {
                notify();
            }
        }
    }

    /// Hand the loop `delivery` to `channel`'s subscribers there (but `except`);
    /// `false`, and nothing added, when that would take what it has still to write
    /// past its bound: those subscribers miss it and are to be dropped as slow.
    pub(crate) fn deliver(
        &self,
        channel: Arc<str>,
        delivery: Delivery,
        except: Option<ClientId>,
    ) -> bool {
        let cost = delivery.cost();
        if self.pending.load(Ordering::Relaxed) >= self.limits.max_messages
            || self.pending_bytes.load(Ordering::Relaxed) + cost > self.limits.max_bytes
        {
            return false;
        }
        self.pending.fetch_add(1, Ordering::Relaxed);
        self.pending_bytes.fetch_add(cost, Ordering::Relaxed);
        self.push(SeatItem::Deliver {
            channel,
            delivery,
            except,
        });
        true
    }

    /// Deliveries told and not yet written or queued.
    pub(crate) fn pending(&self) -> usize {
        self.pending.load(Ordering::Relaxed)
    }

    /// Apply what the broker told, in order: keep `topics`, and hand each delivery to
    /// `write` for each subscriber (`false`: it could not be written now; it is
    /// queued), then [`Step::Flush`] once per subscriber visited.
    ///
    /// A publication that arrives while a channel's subscribers are being written joins
    /// the pass under way (when nothing else came between): the subscribers not yet
    /// written get both at once, those already written get it when the pass comes round
    /// to them again, so it waits for no whole pass before it.
    pub fn take(&self, topics: &mut LoopTopics, mut write: impl FnMut(&Member, Step<'_>) -> bool) {
        // What was told until now; more is taken only to join a pass, so a loop that
        // is told things without end still comes back to its other connections.
        let mut todo = std::mem::take(&mut *lock(&self.items));
        while let Some(item) = todo.pop_front() {
            match item {
                SeatItem::Seat {
                    channel,
                    slot,
                    client,
                    queue,
                    last,
                } => topics.seat(
                    channel,
                    Member {
                        slot,
                        client,
                        queue,
                        last,
                    },
                ),
                SeatItem::Unseat { channel, client } => topics.unseat(&channel, client),
                SeatItem::Deliver {
                    channel,
                    delivery,
                    except,
                } => {
                    let first = Active {
                        delivery,
                        except,
                        left: 0,
                    };
                    let (done, bytes) = topics.pass(self, &channel, first, &mut write, || {
                        // Publications of this channel next in line (what was told
                        // before, then what came meanwhile) join the pass.
                        let next = if todo.is_empty() {
                            join(&mut lock(&self.items), &channel)
                        } else {
                            join(&mut todo, &channel)
                        };
                        next
                    });
                    self.pending.fetch_sub(done, Ordering::Relaxed);
                    self.pending_bytes.fetch_sub(bytes, Ordering::Relaxed);
                }
                SeatItem::Queue { queue, delivery } => {
                    // Overflowing marks the consumer slow; its session sees it.
                    let _ = queue.push(delivery);
                }
            }
        }
    }
}

/// The delivery first in `items` if it is to `channel`: one that may join its pass.
fn join(items: &mut VecDeque<SeatItem>, channel: &str) -> Option<(Delivery, Option<ClientId>)> {
    match items.front() {
        Some(SeatItem::Deliver { channel: c, .. }) if **c == *channel => {}
        _ => return None,
    }
    match items.pop_front() {
        Some(SeatItem::Deliver {
            delivery, except, ..
        }) => Some((delivery, except)),
        _ => None,
    }
}

/// What [`Seats::take`] asks of the loop for a subscriber.
pub enum Step<'a> {
    /// Write this delivery now if it can (`false`: it is queued instead).
    Write {
        /// The delivery.
        delivery: &'a Delivery,
        /// Whether it is the last of this visit, so it may go to the socket at once.
        last: bool,
    },
    /// Everything for this subscriber in this visit is given: send it.
    Flush,
}

/// A delivery being written to a channel's subscribers on a loop.
struct Active {
    delivery: Delivery,
    except: Option<ClientId>,
    /// Subscribers it has still to visit.
    left: usize,
}

/// Subscribers visited between looks for publications joining a pass.
const LOOK_EVERY: usize = 64;

/// A subscriber seated on a loop.
pub struct Member {
    /// Its slot on the loop.
    pub slot: usize,
    /// Its client id (a slot is reused by later connections).
    pub client: ClientId,
    /// Its queue: what cannot be written at once waits there.
    pub queue: Arc<Outbound>,
    /// The last publication offset it was given.
    last: u64,
}

/// The subscribers seated on one loop, by channel (kept by the loop's thread).
#[derive(Default)]
pub struct LoopTopics {
    channels: HashMap<Arc<str>, Members>,
}

#[derive(Default)]
struct Members {
    list: Vec<Member>,
    /// Where each client is in `list`.
    at: HashMap<ClientId, usize>,
}

impl LoopTopics {
    fn seat(&mut self, channel: Arc<str>, m: Member) {
        let ms = self.channels.entry(channel).or_default();
        if let Some(&i) = ms.at.get(&m.client) {
            ms.list[i] = m;
        } else {
            ms.at.insert(m.client, ms.list.len());
            ms.list.push(m);
        }
    }

    fn unseat(&mut self, channel: &str, client: ClientId) {
        let Some(ms) = self.channels.get_mut(channel) else {
            return;
        };
        let Some(i) = ms.at.remove(&client) else {
            return;
        };
        ms.list.swap_remove(i);
        if let Some(moved) = ms.list.get(i) {
            ms.at.insert(moved.client, i);
        }
        if ms.list.is_empty() {
            self.channels.remove(channel);
        }
    }

    /// Write `first` to every subscriber of `channel`, and each delivery `more` gives
    /// (asked every [`LOOK_EVERY`] subscribers of the first round) from where the pass
    /// is, round to where it joined. Returns how many deliveries were written, and their
    /// bytes as a queue counts them.
    fn pass(
        &mut self,
        seats: &Seats,
        channel: &str,
        first: Active,
        write: &mut impl FnMut(&Member, Step<'_>) -> bool,
        mut more: impl FnMut() -> Option<(Delivery, Option<ClientId>)>,
    ) -> (usize, usize) {
        let Some(ms) = self.channels.get_mut(channel) else {
            // Nobody here: it is done.
            return (1, first.delivery.cost());
        };
        let n = ms.list.len();
        let mut active = vec![Active { left: n, ..first }];
        let (mut done, mut bytes) = (0, 0);
        let mut i = 0;
        // Publications join only during the first round: a pass ends within two, so a
        // publisher that never stops does not keep the loop from its other connections
        // (what comes later waits for the next pass, on the loop's next turn).
        let mut visited = 0;
        while !active.is_empty() {
            if i % LOOK_EVERY == 0 && visited < n {
                while let Some((delivery, except)) = more() {
                    active.push(Active {
                        delivery,
                        except,
                        left: n,
                    });
                }
            }
            let m = &mut ms.list[i];
            let last = active.len() - 1;
            for (k, a) in active.iter_mut().enumerate() {
                a.left -= 1;
                give(seats, m, &a.delivery, a.except, k == last, write);
            }
            write(m, Step::Flush);
            visited += 1;
            active.retain(|a| {
                if a.left == 0 {
                    done += 1;
                    bytes += a.delivery.cost();
                }
                a.left > 0
            });
            i = (i + 1) % n;
        }
        (done, bytes)
    }

    /// Subscribers seated on `channel` (tests).
    #[cfg(test)]
    pub(crate) fn seated(&self, channel: &str) -> Vec<ClientId> {
        let mut v: Vec<_> = self
            .channels
            .get(channel)
            .map(|ms| ms.list.iter().map(|m| m.client).collect())
            .unwrap_or_default();
        v.sort();
        v
    }
}

/// Give `d` to `m` (`last`: the last of this visit): written at once when its queue
/// is empty and `write` can, queued otherwise; not at all to `except`, nor a
/// publication it already has.
fn give(
    seats: &Seats,
    m: &mut Member,
    d: &Delivery,
    except: Option<ClientId>,
    last: bool,
    write: &mut impl FnMut(&Member, Step<'_>) -> bool,
) {
    if Some(m.client) == except {
        return;
    }
    if let Delivery::Publication { publication, .. } = d {
        // One that recovery already gave (a remote backplane's, on its way while
        // history was read): never twice.
        if publication.offset <= m.last {
            return;
        }
        m.last = publication.offset;
    }
    if !(seats.clear(m) && write(m, Step::Write { delivery: d, last })) {
        let _ = m.queue.push(d.clone());
    }
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;

    use super::*;
    use crate::hub::backplane::{Deliver, Event};
    use crate::hub::broker::Broker;
    use crate::hub::client::ClientInfo;
    use crate::hub::publication::{Payload, Publication};
    use crate::hub::queue::QueueLimits;

    fn publication(offset: u64) -> Event {
        Event::Publication(Arc::new(Publication::new(offset, Payload::json("1"))))
    }

    fn what(d: &Delivery) -> String {
        match d {
            Delivery::Publication { publication, .. } => publication.offset.to_string(),
            Delivery::Join { info, .. } => format!("join {}", info.client),
            Delivery::Unsubscribed { channel } => format!("unsubscribed {channel}"),
            other => format!("{other:?}"),
        }
    }

    fn queued(q: &Outbound) -> Vec<String> {
        q.drain().unwrap().iter().map(what).collect()
    }

    /// A queue seated at `slot` of `seats`.
    fn seated(seats: &Arc<Seats>, slot: usize) -> Arc<Outbound> {
        let q = Outbound::new(QueueLimits::default());
        q.set_seat(seats.seat(slot));
        q
    }

    /// A broker with `n` subscribers of `c` seated on one loop (clients and slots
    /// 0..n), and that loop's seats and topics.
    fn seated_channel(n: usize) -> (Broker, Arc<Seats>, LoopTopics) {
        let b = Broker::new();
        let seats = b.seats(QueueLimits::default());
        for slot in 0..n {
            b.add("c", slot as ClientId, seated(&seats, slot), false)
                .unwrap();
        }
        (b, seats, LoopTopics::default())
    }

    /// Apply what `seats` holds; every write succeeds. Returns (slot, delivery) written.
    fn take(seats: &Seats, topics: &mut LoopTopics) -> Vec<(usize, String)> {
        let mut written = Vec::new();
        seats.take(topics, |m, step| {
            if let Step::Write { delivery: d, .. } = step {
                written.push((m.slot, what(d)));
            }
            true
        });
        written
    }

    /// Take what `seats` holds, every write succeeding, and call `feed` at every
    /// subscriber visited with the next offset (from 2; bounded at 10,000 so that a
    /// take that never ends still would). Returns how many visits the call made.
    fn visits_while_fed(
        seats: &Seats,
        topics: &mut LoopTopics,
        mut feed: impl FnMut(u64),
    ) -> usize {
        let (mut visits, mut next) = (0, 2);
        seats.take(topics, |_, step| {
            if let Step::Flush = step {
                visits += 1;
                if next < 10_000 {
                    feed(next);
                    next += 1;
                }
            }
            true
        });
        visits
    }

    #[test]
    fn a_fanout_is_one_item_per_loop_and_each_loop_writes_its_subscribers() {
        let b = Broker::new();
        let (a, z) = (
            b.seats(QueueLimits::default()),
            b.seats(QueueLimits::default()),
        );
        let (mut ta, mut tz) = (LoopTopics::default(), LoopTopics::default());
        let on_a: Vec<_> = (0..3).map(|slot| seated(&a, slot)).collect();
        for (i, q) in on_a.iter().enumerate() {
            b.add("c", i as ClientId, q.clone(), false).unwrap();
        }
        let on_z = seated(&z, 7);
        b.add("c", 10, on_z.clone(), false).unwrap();
        let unseated = Outbound::new(QueueLimits::default());
        b.add("c", 11, unseated.clone(), false).unwrap();
        take(&a, &mut ta);
        take(&z, &mut tz);
        assert_eq!(ta.seated("c"), vec![0, 1, 2]);

        b.deliver("c", publication(1));
        assert_eq!((a.pending(), z.pending()), (1, 1), "one item per loop");
        assert_eq!(b.lag(), 1, "a loop with a publication to write is behind");
        assert!(on_a.iter().all(|q| q.is_empty()), "nothing queued for them");
        assert_eq!(
            queued(&unseated),
            ["1"],
            "an unseated one is queued as before"
        );
        let mut got = take(&a, &mut ta);
        got.sort();
        assert_eq!(got, [(0, "1".into()), (1, "1".into()), (2, "1".into())]);
        assert_eq!(take(&z, &mut tz), [(7, "1".into())]);
        assert_eq!((a.pending(), b.lag()), (0, 0));
        assert!(on_a.iter().chain([&on_z]).all(|q| q.is_empty()));
    }

    #[test]
    fn what_waits_in_a_queue_goes_first_and_what_cannot_be_written_is_queued() {
        let b = Broker::new();
        let seats = b.seats(QueueLimits::default());
        let mut topics = LoopTopics::default();
        let (waiting, full) = (seated(&seats, 0), seated(&seats, 1));
        b.add("c", 1, waiting.clone(), false).unwrap();
        b.add("c", 2, full.clone(), false).unwrap();
        waiting
            .push(Delivery::Unsubscribed {
                channel: Arc::from("other"),
            })
            .unwrap();
        b.deliver("c", publication(1));
        let mut written = Vec::new();
        seats.take(&mut topics, |m, step| match step {
            Step::Write { delivery: d, .. } => {
                written.push((m.slot, what(d)));
                m.slot != 1 // slot 1's output is full
            }
            Step::Flush => true,
        });
        assert_eq!(written, [(1, "1".to_string())], "slot 0 has a queue");
        assert_eq!(queued(&waiting), ["unsubscribed other", "1"], "behind it");
        assert_eq!(queued(&full), ["1"]);
    }

    #[test]
    fn a_recovering_subscriber_is_seated_once_live_behind_what_it_missed() {
        let b = Broker::new();
        let seats = b.seats(QueueLimits::default());
        let mut topics = LoopTopics::default();
        let q = seated(&seats, 3);
        b.add("news", 1, q.clone(), true).unwrap();
        b.deliver("news", publication(5));
        b.deliver("news", Event::Join(Arc::new(ClientInfo::default())));
        b.deliver("news", publication(6));
        assert_eq!(
            seats.pending(),
            0,
            "held back by the broker while it recovers"
        );
        let missed = (3..=5)
            .map(|o| Arc::new(Publication::new(o, Payload::binary(Bytes::new()))))
            .collect();
        b.go_live("news", 1, missed).unwrap();
        // A remote backplane's 6, on its way while history was read, then 7.
        b.deliver("news", publication(6));
        b.deliver("news", publication(7));
        assert!(
            take(&seats, &mut topics).is_empty(),
            "its queue is not empty"
        );
        assert_eq!(queued(&q), ["3", "4", "5", "join 0", "6", "7"]);
        b.deliver("news", publication(8));
        assert_eq!(take(&seats, &mut topics), [(3, "8".to_string())]);
    }

    #[test]
    fn leaving_unseats_and_the_servers_unsubscribe_follows_what_was_delivered() {
        let b = Broker::new();
        let seats = b.seats(QueueLimits::default());
        let mut topics = LoopTopics::default();
        let (q, other) = (seated(&seats, 0), seated(&seats, 1));
        b.add("c", 1, q.clone(), false).unwrap();
        b.add("c", 2, other.clone(), false).unwrap();
        b.deliver("c", publication(1));
        b.remove("c", 1).unwrap();
        q.push_in_order(Delivery::Unsubscribed {
            channel: Arc::from("c"),
        })
        .unwrap();
        assert!(
            q.is_empty(),
            "the push waits behind the delivery, in the loop's list"
        );
        b.deliver("c", publication(2));
        let mut order = Vec::new();
        seats.take(&mut topics, |m, step| {
            if let Step::Write { delivery: d, .. } = step {
                // Written in order: 1 before the push to `q`, 2 after it.
                order.push((m.slot, what(d), q.len()));
            }
            true
        });
        order.sort();
        assert_eq!(
            order,
            [(0, "1".into(), 0), (1, "1".into(), 0), (1, "2".into(), 1)]
        );
        assert_eq!(queued(&q), ["unsubscribed c"]);
        assert_eq!(topics.seated("c"), vec![2]);
        b.remove("c", 2).unwrap();
        take(&seats, &mut topics);
        assert!(
            topics.channels.is_empty(),
            "a channel left by all is forgotten"
        );
        assert!(!b.has_subscribers("c"));
    }

    #[test]
    fn a_joiner_is_not_told_of_its_own_join_on_a_loop_either() {
        let b = Broker::new();
        let seats = b.seats(QueueLimits::default());
        let mut topics = LoopTopics::default();
        for client in [1, 2] {
            b.add("room", client, seated(&seats, client as usize), false)
                .unwrap();
        }
        let info = Arc::new(ClientInfo {
            client: 2,
            ..ClientInfo::default()
        });
        b.deliver("room", Event::Join(info));
        assert_eq!(take(&seats, &mut topics), [(1, "join 2".to_string())]);
    }

    #[test]
    fn a_recovery_that_overflows_leaves_the_loops_count_right() {
        let b = Broker::new();
        let seats = b.seats(QueueLimits::default());
        let mut topics = LoopTopics::default();
        let live = seated(&seats, 0);
        b.add("c", 1, live.clone(), false).unwrap();
        let tiny = Outbound::new(QueueLimits {
            max_messages: 1,
            max_bytes: 1 << 20,
        });
        tiny.set_seat(seats.seat(1));
        b.add("c", 2, tiny.clone(), true).unwrap();
        let missed = (1..=3)
            .map(|o| Arc::new(Publication::new(o, Payload::binary(Bytes::new()))))
            .collect();
        assert!(b.go_live("c", 2, missed).is_err(), "it overflowed");
        b.remove("c", 2).unwrap();
        b.deliver("c", publication(4));
        assert_eq!(
            take(&seats, &mut topics),
            [(0, "4".to_string())],
            "the seated one still gets everything"
        );
    }

    #[test]
    fn a_publication_that_comes_during_a_pass_joins_it_and_a_subscriber_after_it_waits() {
        let n = 200;
        let (b, seats, mut topics) = seated_channel(n);
        b.deliver("c", publication(1));
        // Per slot: what it was given, a visit ("|") at a time.
        let mut got = vec![String::new(); n + 1];
        let mut writes = 0;
        let mut loop_turn = |m: &Member, step: Step<'_>| {
            match step {
                Step::Write { delivery: d, .. } => {
                    writes += 1;
                    got[m.slot] += &what(d);
                    if writes == 100 {
                        b.deliver("c", publication(2));
                        // And a subscriber that must not get 2 before it, nor 1.
                        b.add("c", 1000, seated(&seats, n), false).unwrap();
                        b.deliver("c", publication(3));
                    }
                }
                Step::Flush => got[m.slot] += "|",
            }
            true
        };
        seats.take(&mut topics, &mut loop_turn);
        assert_eq!(seats.pending(), 1, "3 waits for the loop's next turn");
        seats.take(&mut topics, &mut loop_turn);
        assert_eq!(seats.pending(), 0);
        let newcomer = got.pop().unwrap();
        assert_eq!(newcomer, "3|", "only what came after it subscribed");
        let together = got.iter().filter(|g| g.starts_with("12|")).count();
        let apart = got.iter().filter(|g| g.starts_with("1|2|")).count();
        assert_eq!(together + apart, n, "every one gets 1 then 2: {got:?}");
        assert!(
            together >= n - 100 - LOOK_EVERY,
            "2 joined the pass: {together}"
        );
        assert!(
            apart >= 100,
            "those written before it get it on the way round"
        );
        // 3 came after the new subscriber: its own pass, to all of them.
        assert!(got.iter().all(|g| g.ends_with("3|")), "{got:?}");
        assert_eq!(topics.seated("c").len(), n + 1);
    }

    #[test]
    fn a_pass_ends_within_two_rounds_however_fast_publications_come() {
        let n = 100;
        let (b, seats, mut topics) = seated_channel(n);
        b.deliver("c", publication(1));
        // A publisher that never stops: one more at every subscriber visited.
        let visits = visits_while_fed(&seats, &mut topics, |next| {
            b.deliver("c", publication(next));
        });
        assert!(
            visits < 2 * n,
            "the pass went round {visits} times over {n}"
        );
        assert!(
            seats.pending() > 0,
            "what came later waits for the next pass"
        );
    }

    #[test]
    fn a_loop_told_things_without_end_still_comes_back_to_its_connections() {
        let (b, seats, mut topics) = seated_channel(10);
        b.deliver("c", publication(1));
        // Subscribers and publications, interleaved, without end.
        let visits = visits_while_fed(&seats, &mut topics, |next| {
            b.add("c", 100 + next, seated(&seats, 100), false).unwrap();
            b.deliver("c", publication(next));
        });
        assert!(visits < 40, "one call took {visits} visits");
    }

    #[test]
    fn a_queue_that_held_something_when_seated_is_not_written_past_until_it_drains() {
        let b = Broker::new();
        let seats = b.seats(QueueLimits::default());
        let mut topics = LoopTopics::default();
        let q = Outbound::new(QueueLimits::default());
        let other = || Delivery::Unsubscribed {
            channel: Arc::from("other"),
        };
        q.push(other()).unwrap();
        q.set_seat(seats.seat(4));
        b.add("c", 1, q.clone(), false).unwrap();
        b.deliver("c", publication(1));
        assert!(take(&seats, &mut topics).is_empty(), "it held something");
        assert_eq!(queued(&q), ["unsubscribed other", "1"]);
        // Drained: written at once again, and its flag is down (no more looks).
        b.deliver("c", publication(2));
        assert_eq!(take(&seats, &mut topics), [(4, "2".to_string())]);
        assert!(!seats.waiting.get(4));
        // Filled from elsewhere, then closed: looked at each time, never written past.
        q.push(other()).unwrap();
        b.deliver("c", publication(3));
        assert!(take(&seats, &mut topics).is_empty());
        assert_eq!(queued(&q), ["unsubscribed other", "3"]);
        b.deliver("c", publication(4));
        assert_eq!(take(&seats, &mut topics), [(4, "4".to_string())]);
        q.close();
        b.deliver("c", publication(5));
        assert!(take(&seats, &mut topics).is_empty(), "closed");
    }

    #[test]
    fn a_slots_flag_is_kept_per_slot_and_slots_past_the_pages_always_look() {
        let w = Waiting::default();
        assert!(!w.get(5) && !w.get(PAGE + 5), "no page yet: nothing waits");
        w.set(PAGE + 5);
        assert!(w.get(PAGE + 5) && !w.get(PAGE + 6) && !w.get(5));
        w.clear(PAGE + 5);
        assert!(!w.get(PAGE + 5));
        w.set(PAGE * PAGES);
        assert!(w.get(PAGE * PAGES), "past the pages: looked at always");
    }

    #[test]
    fn nothing_bypasses_a_queue_that_overflowed_or_holds_a_disconnect() {
        let b = Broker::new();
        let seats = b.seats(QueueLimits::default());
        let mut topics = LoopTopics::default();
        let tiny = Outbound::new(QueueLimits {
            max_messages: 1,
            max_bytes: 1 << 20,
        });
        tiny.set_seat(seats.seat(0));
        let told = seated(&seats, 1);
        b.add("c", 1, tiny.clone(), false).unwrap();
        b.add("c", 2, told.clone(), false).unwrap();
        // Slot 0's output is full: its queue takes one, then overflows.
        for o in 1..=2 {
            b.deliver("c", publication(o));
            seats.take(&mut topics, |m, _| m.slot != 0);
        }
        assert!(tiny.overflowed());
        told.disconnect(crate::hub::queue::Disconnect::Shutdown);
        b.deliver("c", publication(3));
        assert!(
            take(&seats, &mut topics).is_empty(),
            "neither is written to"
        );
    }

    #[test]
    fn a_loop_too_far_behind_drops_its_subscribers_as_slow_and_no_one_else() {
        let b = Broker::new();
        let limits = QueueLimits {
            max_messages: 2,
            max_bytes: 1 << 20,
        };
        let (stuck, other) = (b.seats(limits), b.seats(limits));
        let (mut ts, mut to) = (LoopTopics::default(), LoopTopics::default());
        let on_stuck: Vec<_> = (0..3).map(|slot| seated(&stuck, slot)).collect();
        for (i, q) in on_stuck.iter().enumerate() {
            b.add("c", i as ClientId, q.clone(), false).unwrap();
        }
        let of_d = seated(&stuck, 3);
        b.add("d", 9, of_d.clone(), false).unwrap();
        let elsewhere = seated(&other, 0);
        b.add("c", 10, elsewhere.clone(), false).unwrap();
        let unseated = Outbound::new(QueueLimits::default());
        b.add("c", 11, unseated.clone(), false).unwrap();
        take(&stuck, &mut ts);
        // The stuck loop takes nothing more: 1 and 2 wait there, 3 finds it full.
        for o in 1..=3 {
            b.deliver("c", publication(o));
            take(&other, &mut to);
        }
        assert_eq!(stuck.pending(), 2, "nothing past the bound is added");
        for q in &on_stuck {
            assert!(q.overflowed(), "each subscriber there missed 3: dropped");
        }
        assert_eq!(
            b.channels(),
            [("c".to_string(), 2), ("d".to_string(), 1)],
            "dropped from c only; the other loop's and the unseated stay"
        );
        assert!(!of_d.overflowed() && !elsewhere.overflowed() && !unseated.overflowed());
        assert_eq!(crate::hub::queue::drain_offsets(&unseated), [1, 2, 3]);
        // When the loop comes back it writes nothing to those it dropped (what it
        // had is queued behind the overflow, refused), and hears they left.
        assert!(take(&stuck, &mut ts).is_empty());
        assert_eq!(stuck.pending(), 0);
        assert!(ts.seated("c").is_empty());
        // A subscriber seated after the drop missed nothing and gets what follows.
        let later = seated(&stuck, 5);
        b.add("c", 5, later.clone(), false).unwrap();
        b.deliver("c", publication(4));
        assert_eq!(take(&stuck, &mut ts), [(5, "4".to_string())]);
        assert!(!later.overflowed());
    }

    #[test]
    fn a_loops_bound_counts_bytes_too() {
        let b = Broker::new();
        let seats = b.seats(QueueLimits {
            max_messages: 100,
            max_bytes: 1000,
        });
        let q = seated(&seats, 0);
        b.add("c", 1, q.clone(), false).unwrap();
        let big = |o| {
            Event::Publication(Arc::new(Publication::new(
                o,
                Payload::binary(Bytes::from(vec![0; 400])),
            )))
        };
        b.deliver("c", big(1));
        b.deliver("c", big(2));
        assert!(!q.overflowed(), "two of 464 bytes fit in 1000");
        b.deliver("c", big(3));
        assert!(q.overflowed(), "a third does not");
        assert_eq!(seats.pending(), 2);
    }
}
