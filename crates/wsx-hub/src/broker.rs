//! The broker: channels, subscriptions, publish with fan-out, presence, history and
//! recovery. Every front-end (native, STOMP, Socket.IO, SockJS) maps onto this one
//! model. In-process and synchronous: locks are held only for map updates and queue
//! pushes, never across I/O, and publishing never waits for a subscriber.

use std::collections::hash_map::DefaultHasher;
use std::collections::HashMap;
use std::hash::{Hash, Hasher};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use bytes::Bytes;

use crate::channel::ChannelName;
use crate::history::{History, Publication, Recovery, StreamPosition};
use crate::queue::{Delivery, Outbound, SlowConsumer};

/// A connection's id, unique within the hub.
pub type ClientId = u64;

/// Who a connection is: presence shows this.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ClientInfo {
    /// The connection.
    pub client: ClientId,
    /// The authenticated user ("" for anonymous).
    pub user: String,
    /// The client's name (`connect`'s `name`, e.g. `wsx.js`).
    pub name: String,
    /// Free-form connection info the client gave at `connect` (a nickname, say).
    pub info: String,
}

/// What a namespace enables for its channels.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct ChannelOptions {
    /// Keep presence.
    pub presence: bool,
    /// Push join and leave events to subscribers.
    pub join_leave: bool,
    /// Publications kept for history and recovery (0: none).
    pub history_size: usize,
    /// How long publications are kept.
    pub history_ttl: Duration,
    /// Clients may ask to recover missed publications (needs history).
    pub recovery: bool,
    /// Anonymous connections may subscribe.
    pub anonymous_subscribe: bool,
    /// Clients may publish (the HTTP API always may).
    pub client_publish: bool,
}

impl Default for ChannelOptions {
    fn default() -> Self {
        ChannelOptions {
            presence: false,
            join_leave: false,
            history_size: 0,
            history_ttl: Duration::from_secs(300),
            recovery: true,
            anonymous_subscribe: true,
            client_publish: true,
        }
    }
}

/// Errors of broker operations.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum BrokerError {
    /// The client is already subscribed to the channel.
    AlreadySubscribed,
    /// The client is not subscribed to the channel.
    NotSubscribed,
    /// The channel does not exist (nobody subscribed, no history).
    UnknownChannel,
    /// The operation needs a feature the namespace does not enable.
    NotAvailable,
}

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
    info: Arc<ClientInfo>,
    queue: Arc<Outbound>,
}

struct Channel {
    name: Arc<str>,
    opts: ChannelOptions,
    subscribers: HashMap<ClientId, Subscriber>,
    history: History,
}

const SHARDS: usize = 32;

/// The in-memory broker.
pub struct Broker {
    shards: Vec<Mutex<HashMap<String, Channel>>>,
    /// Changes with every process start: recovery across a restart is refused.
    epoch: String,
}

impl Default for Broker {
    fn default() -> Self {
        Self::new()
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Broker {
    /// An empty broker with a fresh epoch.
    pub fn new() -> Broker {
        let epoch: u64 = rand::random();
        Broker {
            shards: (0..SHARDS).map(|_| Mutex::new(HashMap::new())).collect(),
            epoch: format!("{epoch:016x}"),
        }
    }

    fn shard(&self, channel: &str) -> &Mutex<HashMap<String, Channel>> {
        let mut h = DefaultHasher::new();
        channel.hash(&mut h);
        &self.shards[(h.finish() as usize) % SHARDS]
    }

    /// The channel, created with `opts` if it does not exist yet.
    fn channel_entry<'a>(
        &self,
        shard: &'a mut HashMap<String, Channel>,
        channel: &ChannelName,
        opts: &ChannelOptions,
    ) -> &'a mut Channel {
        shard
            .entry(channel.as_str().to_string())
            .or_insert_with(|| Channel {
                name: Arc::from(channel.as_str()),
                opts: opts.clone(),
                subscribers: HashMap::new(),
                history: History::new(opts.history_size, opts.history_ttl, self.epoch.clone()),
            })
    }

    /// Subscribe `info.client` with its queue. With `recover`, the publications after
    /// that position are queued first (or `recovered: Some(false)` when history cannot
    /// cover the gap), then every later publication: no gap, no duplicate.
    pub fn subscribe(
        &self,
        channel: &ChannelName,
        opts: &ChannelOptions,
        info: Arc<ClientInfo>,
        queue: Arc<Outbound>,
        recover: Option<&StreamPosition>,
        now: Instant,
    ) -> Result<Subscribed, BrokerError> {
        let mut shard = lock(self.shard(channel.as_str()));
        let ch = self.channel_entry(&mut shard, channel, opts);
        if ch.subscribers.contains_key(&info.client) {
            return Err(BrokerError::AlreadySubscribed);
        }
        let mut recovered = None;
        if let Some(pos) = recover {
            match ch.history.recover(now, pos) {
                Recovery::Recovered(missed) => {
                    for p in missed {
                        if queue
                            .push(Delivery::Publication {
                                channel: ch.name.clone(),
                                publication: p,
                            })
                            .is_err()
                        {
                            return Ok(Subscribed {
                                position: None,
                                recovered: Some(false),
                            });
                        }
                    }
                    recovered = Some(true);
                }
                Recovery::NotRecovered => recovered = Some(false),
            }
        }
        if ch.opts.presence && ch.opts.join_leave {
            let join = Delivery::Join {
                channel: ch.name.clone(),
                info: info.clone(),
                native_frame: Arc::default(),
            };
            for s in ch.subscribers.values() {
                let _ = s.queue.push(join.clone());
            }
        }
        let position = (ch.opts.history_size > 0).then(|| ch.history.position());
        ch.subscribers
            .insert(info.client, Subscriber { info, queue });
        Ok(Subscribed {
            position,
            recovered,
        })
    }

    /// Remove a subscription (pushes a leave event when enabled).
    pub fn unsubscribe(&self, channel: &str, client: ClientId) -> Result<(), BrokerError> {
        let mut shard = lock(self.shard(channel));
        let ch = shard.get_mut(channel).ok_or(BrokerError::NotSubscribed)?;
        let sub = ch
            .subscribers
            .remove(&client)
            .ok_or(BrokerError::NotSubscribed)?;
        if ch.opts.presence && ch.opts.join_leave {
            let leave = Delivery::Leave {
                channel: ch.name.clone(),
                info: sub.info,
                native_frame: Arc::default(),
            };
            for s in ch.subscribers.values() {
                let _ = s.queue.push(leave.clone());
            }
        }
        if ch.subscribers.is_empty() && ch.history.is_empty() {
            shard.remove(channel);
        }
        Ok(())
    }

    /// Publish to a channel: record it in history (when on) and queue it for every
    /// subscriber without waiting. Returns the publication and the clients found too
    /// slow (their queues are closed; their connections should be closed).
    pub fn publish(
        &self,
        channel: &ChannelName,
        opts: &ChannelOptions,
        data: Bytes,
        now: Instant,
    ) -> (Arc<Publication>, Vec<ClientId>) {
        let mut shard = lock(self.shard(channel.as_str()));
        let ch = self.channel_entry(&mut shard, channel, opts);
        let publication = ch.history.push(now, data);
        let mut slow = Vec::new();
        let delivery = Delivery::Publication {
            channel: ch.name.clone(),
            publication: publication.clone(),
        };
        for (id, s) in &ch.subscribers {
            if s.queue.push(delivery.clone()) == Err(SlowConsumer) {
                slow.push(*id);
            }
        }
        for id in &slow {
            ch.subscribers.remove(id);
        }
        if ch.subscribers.is_empty() && ch.history.is_empty() {
            shard.remove(channel.as_str());
        }
        (publication, slow)
    }

    /// Who is in a channel.
    pub fn presence(&self, channel: &str) -> Result<Vec<Arc<ClientInfo>>, BrokerError> {
        let shard = lock(self.shard(channel));
        let ch = shard.get(channel).ok_or(BrokerError::UnknownChannel)?;
        if !ch.opts.presence {
            return Err(BrokerError::NotAvailable);
        }
        Ok(ch.subscribers.values().map(|s| s.info.clone()).collect())
    }

    /// (connections, distinct users) in a channel.
    pub fn presence_stats(&self, channel: &str) -> Result<(usize, usize), BrokerError> {
        let members = self.presence(channel)?;
        let mut users: Vec<&str> = members.iter().map(|m| m.user.as_str()).collect();
        users.sort_unstable();
        users.dedup();
        Ok((members.len(), users.len()))
    }

    /// Retained history of a channel.
    pub fn history(
        &self,
        channel: &str,
        limit: usize,
        since: Option<u64>,
        reverse: bool,
        now: Instant,
    ) -> Result<(Vec<Arc<Publication>>, StreamPosition), BrokerError> {
        let mut shard = lock(self.shard(channel));
        let ch = shard.get_mut(channel).ok_or(BrokerError::UnknownChannel)?;
        if ch.opts.history_size == 0 {
            return Err(BrokerError::NotAvailable);
        }
        Ok((
            ch.history.query(now, limit, since, reverse),
            ch.history.position(),
        ))
    }

    /// Active channels with their subscriber counts.
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
            .filter(|(_, n)| *n > 0)
            .collect();
        all.sort();
        all
    }

    /// The broker's epoch.
    pub fn epoch(&self) -> &str {
        &self.epoch
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicU64, Ordering};

    use super::*;
    use crate::queue::QueueLimits;

    static NEXT: AtomicU64 = AtomicU64::new(1);

    fn client(user: &str) -> (Arc<ClientInfo>, Arc<Outbound>) {
        let id = NEXT.fetch_add(1, Ordering::Relaxed);
        (
            Arc::new(ClientInfo {
                client: id,
                user: user.into(),
                name: String::new(),
                info: String::new(),
            }),
            Outbound::new(QueueLimits::default()),
        )
    }

    fn offsets(q: &Outbound) -> Vec<u64> {
        q.drain()
            .unwrap()
            .into_iter()
            .filter_map(|d| match d {
                Delivery::Publication { publication, .. } => Some(publication.offset),
                _ => None,
            })
            .collect()
    }

    fn with_history() -> ChannelOptions {
        ChannelOptions {
            history_size: 100,
            presence: true,
            join_leave: true,
            ..Default::default()
        }
    }

    #[test]
    fn publish_fans_out_shared_bytes_to_every_subscriber() {
        let b = Broker::new();
        let ch = ChannelName::parse("chat:room").unwrap();
        let opts = ChannelOptions::default();
        let subs: Vec<_> = (0..3).map(|_| client("u")).collect();
        for (info, q) in &subs {
            b.subscribe(&ch, &opts, info.clone(), q.clone(), None, Instant::now())
                .unwrap();
        }
        let (p, slow) = b.publish(&ch, &opts, Bytes::from_static(b"{\"x\":1}"), Instant::now());
        assert!(slow.is_empty());
        for (_, q) in &subs {
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
    fn double_subscribe_is_refused() {
        let b = Broker::new();
        let ch = ChannelName::parse("a").unwrap();
        let (info, q) = client("u");
        let opts = ChannelOptions::default();
        b.subscribe(&ch, &opts, info.clone(), q.clone(), None, Instant::now())
            .unwrap();
        assert_eq!(
            b.subscribe(&ch, &opts, info, q, None, Instant::now()),
            Err(BrokerError::AlreadySubscribed)
        );
    }

    #[test]
    fn recovery_gives_exactly_the_missed_publications_then_live_ones() {
        let b = Broker::new();
        let ch = ChannelName::parse("news:x").unwrap();
        let opts = with_history();
        let now = Instant::now();
        let (info, q) = client("u");
        let sub = b
            .subscribe(&ch, &opts, info.clone(), q.clone(), None, now)
            .unwrap();
        b.publish(&ch, &opts, Bytes::from_static(b"1"), now);
        let last = StreamPosition {
            offset: offsets(&q).last().copied().unwrap(),
            epoch: sub.position.unwrap().epoch,
        };
        b.unsubscribe(ch.as_str(), info.client).unwrap();
        for _ in 0..10 {
            b.publish(&ch, &opts, Bytes::from_static(b"missed"), now);
        }
        let (info2, q2) = client("u");
        let res = b
            .subscribe(&ch, &opts, info2, q2.clone(), Some(&last), now)
            .unwrap();
        assert_eq!(res.recovered, Some(true));
        b.publish(&ch, &opts, Bytes::from_static(b"live"), now);
        assert_eq!(
            offsets(&q2),
            (2..=12).collect::<Vec<_>>(),
            "10 missed, then live, no gap or duplicate"
        );
    }

    #[test]
    fn recovery_from_another_epoch_is_refused() {
        let b = Broker::new();
        let ch = ChannelName::parse("news:y").unwrap();
        let opts = with_history();
        let now = Instant::now();
        b.publish(&ch, &opts, Bytes::from_static(b"1"), now);
        let (info, q) = client("u");
        let stale = StreamPosition {
            offset: 1,
            epoch: "before-restart".into(),
        };
        let res = b
            .subscribe(&ch, &opts, info, q.clone(), Some(&stale), now)
            .unwrap();
        assert_eq!(res.recovered, Some(false));
        assert!(offsets(&q).is_empty(), "no partial stream");
    }

    #[test]
    fn slow_consumer_is_dropped_while_others_get_everything() {
        let b = Broker::new();
        let ch = ChannelName::parse("ticks").unwrap();
        let opts = ChannelOptions::default();
        let (slow_info, _) = client("slow");
        let slow_q = Outbound::new(QueueLimits {
            max_messages: 10,
            max_bytes: 1 << 20,
        });
        b.subscribe(
            &ch,
            &opts,
            slow_info.clone(),
            slow_q.clone(),
            None,
            Instant::now(),
        )
        .unwrap();
        let (fast_info, fast_q) = client("fast");
        b.subscribe(&ch, &opts, fast_info, fast_q.clone(), None, Instant::now())
            .unwrap();
        let mut dropped = Vec::new();
        let mut got = Vec::new();
        for i in 0..100 {
            let (_, slow) = b.publish(&ch, &opts, Bytes::from(format!("{i}")), Instant::now());
            dropped.extend(slow);
            got.extend(offsets(&fast_q)); // the fast consumer keeps up
        }
        assert_eq!(dropped, vec![slow_info.client]);
        assert_eq!(got, (1..=100).collect::<Vec<_>>());
        assert_eq!(b.channels(), vec![("ticks".to_string(), 1)]);
    }

    #[test]
    fn presence_and_join_leave() {
        let b = Broker::new();
        let ch = ChannelName::parse("room:1").unwrap();
        let opts = with_history();
        let (a, qa) = client("alice");
        let (c, qc) = client("bob");
        b.subscribe(&ch, &opts, a.clone(), qa.clone(), None, Instant::now())
            .unwrap();
        b.subscribe(&ch, &opts, c.clone(), qc.clone(), None, Instant::now())
            .unwrap();
        assert_eq!(b.presence_stats("room:1"), Ok((2, 2)));
        assert!(
            matches!(qa.drain().unwrap().as_slice(), [Delivery::Join { info, .. }] if info.user == "bob")
        );
        b.unsubscribe("room:1", c.client).unwrap();
        assert!(
            matches!(qa.drain().unwrap().as_slice(), [Delivery::Leave { info, .. }] if info.user == "bob")
        );
        assert_eq!(b.presence("room:1").unwrap().len(), 1);
        assert_eq!(b.presence("nope"), Err(BrokerError::UnknownChannel));
    }

    #[test]
    fn history_is_unavailable_where_not_enabled() {
        let b = Broker::new();
        let ch = ChannelName::parse("plain").unwrap();
        b.publish(
            &ch,
            &ChannelOptions::default(),
            Bytes::new(),
            Instant::now(),
        );
        let (info, q) = client("u");
        b.subscribe(
            &ch,
            &ChannelOptions::default(),
            info,
            q,
            None,
            Instant::now(),
        )
        .unwrap();
        assert_eq!(
            b.history("plain", 10, None, false, Instant::now())
                .map(|_| ()),
            Err(BrokerError::NotAvailable)
        );
    }
}
