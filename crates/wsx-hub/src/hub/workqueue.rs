//! Work queues: competing consumers. Each message goes to one consumer, round-robin;
//! with client acknowledgement it stays pending until acked, and a NACK or the
//! consumer's going away puts it back, marked redelivered, for another consumer. This
//! is how judge workers take submissions one each while verdicts go out on channels.
//!
//! Node-local (in memory), or shared by the cluster's nodes ([`WorkQueues::shared`],
//! when the backplane keeps queues): then messages wait in the backplane, each node
//! pulls as many as its own consumers have room for, and what it settles or gives back
//! becomes an [`Effect`] for the hub to apply to the backplane.
//! Synchronous: the lock is held only for map updates and non-blocking queue pushes.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::{Arc, Mutex};

use crate::hub::client::ClientId;
use crate::hub::error::{HubError, Limit};
use crate::hub::publication::{Payload, Publication};
use crate::hub::queue::{Delivery, Outbound};
use crate::hub::shards::lock;

/// How a consumer acknowledges.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AckMode {
    /// A message counts as acknowledged once handed to the consumer's queue.
    Auto,
    /// An ACK acknowledges that message and every earlier one of the consumer.
    Cumulative,
    /// An ACK acknowledges that message only.
    Individual,
}

/// Limits of work queues.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct WorkQueueLimits {
    /// Most messages waiting in one queue (not yet handed out). Default: 10,000.
    pub max_messages: usize,
    /// Most payload bytes waiting in one queue. Default: 16 MiB.
    pub max_bytes: usize,
    /// Most unacknowledged messages per consumer (client ack modes). Default: 256.
    pub prefetch: usize,
    /// Most work queues holding messages or consumers at once; a message to a new
    /// queue beyond it is refused. Default: 10,000.
    pub max_queues: usize,
}

impl Default for WorkQueueLimits {
    fn default() -> Self {
        WorkQueueLimits {
            max_messages: 10_000,
            max_bytes: 16 << 20,
            prefetch: 256,
            max_queues: 10_000,
        }
    }
}

struct Consumer {
    client: ClientId,
    /// The consumer's key within its session (a subscription).
    key: u64,
    queue: Arc<Outbound>,
    ack: AckMode,
    in_flight: usize,
}

struct Unacked {
    client: ClientId,
    key: u64,
    message: Arc<Publication>,
}

/// What a shared queue's local state asks of the backplane (message ids).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Effect {
    /// Acknowledged: forget them.
    Done(Vec<u64>),
    /// Refused, or their consumer left: back to the queue, redelivered.
    Back(Vec<u64>),
}

#[derive(Default)]
struct WorkQueue {
    name: Arc<str>,
    /// The cluster's queue: messages come from the backplane, settle there.
    shared: bool,
    effects: Vec<Effect>,
    ready: VecDeque<(Arc<Publication>, bool)>,
    bytes: usize,
    consumers: Vec<Consumer>,
    next: usize,
    unacked: BTreeMap<u64, Unacked>,
    next_tag: u64,
    next_seq: u64,
}

impl WorkQueue {
    fn unused(&self) -> bool {
        self.ready.is_empty() && self.consumers.is_empty() && self.unacked.is_empty()
    }

    /// Put `tags`' messages back at the front of the queue, oldest first, as
    /// redelivered.
    fn requeue(&mut self, tags: Vec<u64>) {
        let mut back = Vec::with_capacity(tags.len());
        for tag in tags {
            if let Some(u) = self.unacked.remove(&tag) {
                if let Some(c) = self
                    .consumers
                    .iter_mut()
                    .find(|c| c.client == u.client && c.key == u.key)
                {
                    c.in_flight = c.in_flight.saturating_sub(1);
                }
                back.push(u.message);
            }
        }
        back.sort_by_key(|m| m.offset);
        if self.shared {
            // Back to the cluster's queue, for any node's consumer.
            if !back.is_empty() {
                self.effects
                    .push(Effect::Back(back.iter().map(|m| m.offset).collect()));
            }
            return;
        }
        for m in back.into_iter().rev() {
            self.bytes += m.data.len();
            self.ready.push_front((m, true));
        }
    }

    fn tags_of(&self, client: ClientId, key: u64) -> Vec<u64> {
        self.unacked
            .iter()
            .filter(|(_, u)| u.client == client && u.key == key)
            .map(|(t, _)| *t)
            .collect()
    }

    /// Hand ready messages to consumers with room, round-robin.
    fn dispatch(&mut self, prefetch: usize) {
        while !self.ready.is_empty() && !self.consumers.is_empty() {
            let n = self.consumers.len();
            let Some(i) = (0..n).map(|k| (self.next + k) % n).find(|i| {
                let c = &self.consumers[*i];
                c.ack == AckMode::Auto || c.in_flight < prefetch
            }) else {
                return;
            };
            let Some((message, redelivered)) = self.ready.pop_front() else {
                return;
            };
            self.bytes -= message.data.len();
            self.next_tag += 1;
            let tag = self.next_tag;
            let c = &mut self.consumers[i];
            let d = Delivery::Queued {
                queue: self.name.clone(),
                consumer: c.key,
                tag,
                message: message.clone(),
                redelivered,
            };
            if c.queue.push(d).is_err() {
                // A consumer too slow to take it: it is dropped (its connection closes
                // as a slow consumer) and what it held goes back to the queue.
                let gone = self.consumers.remove(i);
                self.bytes += message.data.len();
                self.ready.push_front((message, redelivered));
                let tags = self.tags_of(gone.client, gone.key);
                self.requeue(tags);
                continue;
            }
            if c.ack == AckMode::Auto && self.shared {
                self.effects.push(Effect::Done(vec![message.offset]));
            }
            if c.ack != AckMode::Auto {
                c.in_flight += 1;
                let (client, key) = (c.client, c.key);
                self.unacked.insert(
                    tag,
                    Unacked {
                        client,
                        key,
                        message,
                    },
                );
            }
            self.next = i + 1;
        }
    }
}

/// This node's work queues.
#[derive(Default)]
pub struct WorkQueues {
    queues: Mutex<HashMap<String, WorkQueue>>,
    limits: WorkQueueLimits,
    shared: bool,
    /// Effects of shared queues, for the hub to apply.
    effects: Mutex<Vec<(String, Effect)>>,
    /// Something changed (room for more, effects waiting): wakes the hub's pump.
    changed: Arc<tokio::sync::Notify>,
}

impl WorkQueues {
    /// No queues yet.
    pub fn new(limits: WorkQueueLimits) -> WorkQueues {
        WorkQueues {
            limits,
            ..WorkQueues::default()
        }
    }

    /// Queues the cluster shares: local consumers, messages from the backplane.
    pub(crate) fn shared(limits: WorkQueueLimits) -> WorkQueues {
        WorkQueues {
            limits,
            shared: true,
            ..WorkQueues::default()
        }
    }

    /// Whether these are the cluster's queues.
    pub(crate) fn is_shared(&self) -> bool {
        self.shared
    }

    fn with<R>(&self, name: &str, f: impl FnOnce(&mut WorkQueue) -> R) -> R {
        let mut all = lock(&self.queues);
        let q = all.entry(name.to_string()).or_insert_with(|| WorkQueue {
            name: Arc::from(name),
            shared: self.shared,
            ..WorkQueue::default()
        });
        let r = f(q);
        q.dispatch(self.limits.prefetch);
        if q.shared && q.consumers.is_empty() && !q.ready.is_empty() {
            // Nobody here to take them: back to the cluster.
            let ids = q.ready.drain(..).map(|(m, _)| m.offset).collect();
            q.bytes = 0;
            q.effects.push(Effect::Back(ids));
        }
        if self.shared {
            let effects = std::mem::take(&mut q.effects);
            if !effects.is_empty() {
                lock(&self.effects).extend(effects.into_iter().map(|e| (name.to_string(), e)));
            }
            self.changed.notify_one();
        }
        if q.unused() {
            all.remove(name);
        }
        r
    }

    /// A message this node took from the cluster's queue `name` (its id as offset).
    pub(crate) fn push_pulled(&self, name: &str, id: u64, payload: Payload, redelivered: bool) {
        self.with(name, |q| {
            q.bytes += payload.data.len();
            q.ready
                .push_back((Arc::new(Publication::new(id, payload)), redelivered));
        });
    }

    /// How many more messages `name`'s consumers here have room for.
    pub(crate) fn wants(&self, name: &str) -> usize {
        let prefetch = self.limits.prefetch;
        lock(&self.queues).get(name).map_or(0, |q| {
            let room: usize = q
                .consumers
                .iter()
                .map(|c| match c.ack {
                    AckMode::Auto => 1,
                    _ => prefetch.saturating_sub(c.in_flight),
                })
                .sum();
            room.saturating_sub(q.ready.len())
        })
    }

    /// Queues with consumers on this node.
    pub(crate) fn consumed(&self) -> Vec<String> {
        lock(&self.queues)
            .iter()
            .filter(|(_, q)| !q.consumers.is_empty())
            .map(|(n, _)| n.clone())
            .collect()
    }

    /// What the backplane must be told, by queue.
    pub(crate) fn take_effects(&self) -> Vec<(String, Effect)> {
        std::mem::take(&mut *lock(&self.effects))
    }

    /// Woken when something changed.
    pub(crate) fn changed(&self) -> Arc<tokio::sync::Notify> {
        self.changed.clone()
    }

    /// Append a message; it goes to one consumer. Refused when the queue is full, or
    /// when it would be a new queue beyond `max_queues`.
    pub fn send(&self, name: &str, payload: Payload) -> Result<(), HubError> {
        let limits = self.limits;
        {
            let all = lock(&self.queues);
            if all.len() >= limits.max_queues && !all.contains_key(name) {
                return Err(HubError::LimitExceeded(Limit::Queues(limits.max_queues)));
            }
        }
        self.with(name, |q| {
            if q.ready.len() >= limits.max_messages
                || q.bytes + payload.data.len() > limits.max_bytes
            {
                return Err(HubError::LimitExceeded(Limit::QueueFull(
                    limits.max_messages,
                )));
            }
            q.next_seq += 1;
            q.bytes += payload.data.len();
            q.ready
                .push_back((Arc::new(Publication::new(q.next_seq, payload)), false));
            Ok(())
        })
    }

    /// Add a consumer (`key` names it within the client's session).
    pub fn consume(
        &self,
        name: &str,
        client: ClientId,
        key: u64,
        queue: Arc<Outbound>,
        ack: AckMode,
    ) {
        self.with(name, |q| {
            q.consumers.push(Consumer {
                client,
                key,
                queue,
                ack,
                in_flight: 0,
            })
        });
    }

    /// Remove a consumer; what it had not acknowledged goes back to the queue.
    pub fn cancel(&self, name: &str, client: ClientId, key: u64) {
        self.with(name, |q| {
            q.consumers
                .retain(|c| !(c.client == client && c.key == key));
            let tags = q.tags_of(client, key);
            q.requeue(tags);
        });
    }

    fn settle(
        &self,
        name: &str,
        client: ClientId,
        tag: u64,
        requeue: bool,
    ) -> Result<(), HubError> {
        self.with(name, |q| {
            let Some(u) = q.unacked.get(&tag) else {
                return Err(HubError::UnknownMessage);
            };
            if u.client != client {
                return Err(HubError::UnknownMessage);
            }
            let key = u.key;
            let mode = q
                .consumers
                .iter()
                .find(|c| c.client == client && c.key == key)
                .map_or(AckMode::Individual, |c| c.ack);
            let tags: Vec<u64> = match mode {
                AckMode::Cumulative => q
                    .tags_of(client, key)
                    .into_iter()
                    .filter(|t| *t <= tag)
                    .collect(),
                _ => vec![tag],
            };
            if requeue {
                q.requeue(tags);
                // Round-robin on from the consumer that refused it.
                if let Some(i) = q
                    .consumers
                    .iter()
                    .position(|c| c.client == client && c.key == key)
                {
                    q.next = i + 1;
                }
            } else {
                let mut done = Vec::new();
                for t in tags {
                    if let Some(u) = q.unacked.get(&t) {
                        done.push(u.message.offset);
                    }
                    q.unacked.remove(&t);
                    if let Some(c) = q
                        .consumers
                        .iter_mut()
                        .find(|c| c.client == client && c.key == key)
                    {
                        c.in_flight = c.in_flight.saturating_sub(1);
                    }
                }
                if q.shared && !done.is_empty() {
                    q.effects.push(Effect::Done(done));
                }
            }
            Ok(())
        })
    }

    /// Acknowledge delivery `tag` (and, for a cumulative consumer, every earlier one).
    pub fn ack(&self, name: &str, client: ClientId, tag: u64) -> Result<(), HubError> {
        self.settle(name, client, tag, false)
    }

    /// Refuse delivery `tag` (and, for a cumulative consumer, every earlier one): back
    /// to the queue, marked redelivered, for the next consumer.
    pub fn nack(&self, name: &str, client: ClientId, tag: u64) -> Result<(), HubError> {
        self.settle(name, client, tag, true)
    }

    /// Messages waiting in `name` (not handed out).
    pub fn ready(&self, name: &str) -> usize {
        lock(&self.queues).get(name).map_or(0, |q| q.ready.len())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hub::queue::QueueLimits;

    fn tags(q: &Outbound) -> Vec<(u64, u64, bool)> {
        q.drain()
            .unwrap()
            .into_iter()
            .filter_map(|d| match d {
                Delivery::Queued {
                    tag,
                    message,
                    redelivered,
                    ..
                } => Some((tag, message.offset, redelivered)),
                _ => None,
            })
            .collect()
    }

    fn outbound() -> Arc<Outbound> {
        Outbound::new(QueueLimits::default())
    }

    #[test]
    fn each_message_goes_to_one_consumer_round_robin() {
        let w = WorkQueues::default();
        let (a, b) = (outbound(), outbound());
        w.consume("jobs", 1, 1, a.clone(), AckMode::Auto);
        w.consume("jobs", 2, 1, b.clone(), AckMode::Auto);
        for i in 0..6 {
            w.send("jobs", Payload::text(format!("{i}"))).unwrap();
        }
        let seqs = |q: &Outbound| tags(q).into_iter().map(|t| t.1).collect::<Vec<_>>();
        assert_eq!(seqs(&a), vec![1, 3, 5]);
        assert_eq!(seqs(&b), vec![2, 4, 6]);
    }

    #[test]
    fn messages_wait_for_a_consumer() {
        let w = WorkQueues::default();
        w.send("jobs", Payload::text("x")).unwrap();
        assert_eq!(w.ready("jobs"), 1);
        let a = outbound();
        w.consume("jobs", 1, 1, a.clone(), AckMode::Auto);
        assert_eq!(tags(&a).len(), 1);
        assert_eq!(w.ready("jobs"), 0);
    }

    #[test]
    fn a_nack_or_a_departure_redelivers_to_another_consumer() {
        let w = WorkQueues::default();
        let (a, b) = (outbound(), outbound());
        w.consume("jobs", 1, 1, a.clone(), AckMode::Individual);
        w.consume("jobs", 2, 1, b.clone(), AckMode::Individual);
        w.send("jobs", Payload::text("m1")).unwrap();
        w.send("jobs", Payload::text("m2")).unwrap();
        let ta = tags(&a);
        let tb = tags(&b);
        assert_eq!((ta.len(), tb.len()), (1, 1));
        w.nack("jobs", 1, ta[0].0).unwrap();
        let again = tags(&b);
        assert_eq!(again.len(), 1);
        assert_eq!(
            (again[0].1, again[0].2),
            (ta[0].1, true),
            "redelivered to b"
        );
        // b leaves without acking: both its messages go to a.
        w.cancel("jobs", 2, 1);
        let back: Vec<(u64, bool)> = tags(&a).into_iter().map(|t| (t.1, t.2)).collect();
        assert_eq!(back, vec![(1, true), (2, true)]);
    }

    #[test]
    fn cumulative_ack_settles_everything_before_it() {
        let w = WorkQueues::new(WorkQueueLimits {
            prefetch: 2,
            ..WorkQueueLimits::default()
        });
        let a = outbound();
        w.consume("jobs", 1, 1, a.clone(), AckMode::Cumulative);
        for i in 0..5 {
            w.send("jobs", Payload::text(format!("{i}"))).unwrap();
        }
        let got = tags(&a);
        assert_eq!(got.len(), 2, "prefetch bounds what is in flight");
        w.ack("jobs", 1, got[1].0).unwrap();
        assert_eq!(tags(&a).len(), 2, "both settled, two more sent");
        assert_eq!(
            w.ack("jobs", 2, got[1].0),
            Err(HubError::UnknownMessage),
            "another client's tag"
        );
    }

    #[test]
    fn a_full_queue_refuses_with_a_clear_error() {
        let w = WorkQueues::new(WorkQueueLimits {
            max_messages: 2,
            ..WorkQueueLimits::default()
        });
        w.send("q", Payload::text("1")).unwrap();
        w.send("q", Payload::text("2")).unwrap();
        assert_eq!(
            w.send("q", Payload::text("3")),
            Err(HubError::LimitExceeded(Limit::QueueFull(2)))
        );
        // The byte bound too.
        let w = WorkQueues::new(WorkQueueLimits {
            max_bytes: 10,
            ..WorkQueueLimits::default()
        });
        w.send("q", Payload::text("12345678")).unwrap();
        assert!(w.send("q", Payload::text("123")).is_err());
        w.send("q", Payload::text("12")).unwrap();
    }

    #[test]
    fn the_number_of_queues_is_bounded() {
        let w = WorkQueues::new(WorkQueueLimits {
            max_queues: 2,
            ..WorkQueueLimits::default()
        });
        w.send("a", Payload::text("1")).unwrap();
        w.send("b", Payload::text("1")).unwrap();
        assert_eq!(
            w.send("c", Payload::text("1")),
            Err(HubError::LimitExceeded(Limit::Queues(2)))
        );
        // Existing queues still take messages.
        w.send("a", Payload::text("2")).unwrap();
        assert_eq!(
            HubError::LimitExceeded(Limit::Queues(2)).to_string(),
            "too many work queues (at most 2)"
        );
    }
}
