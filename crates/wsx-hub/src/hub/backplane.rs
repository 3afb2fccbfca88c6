//! The backplane: what the nodes of a cluster share — each channel's stream (offsets,
//! epoch, history), presence, and the delivery of publications and join/leave events to
//! every node that has subscribers of the channel.
//!
//! The [`Broker`](crate::Broker) is node-local (subscribers, queues, fan-out); the
//! [`Hub`](crate::Hub) drives both. Every method is async and fallible because a real
//! backplane (Redis) is a network away: an error means "not done, may be retried",
//! and the hub turns it into [`HubError::Unavailable`](crate::HubError::Unavailable),
//! which each front-end reports its own way.
//!
//! Ordering contract: a node receives a channel's events in offset order, and a node
//! that called [`listen`](Backplane::listen) receives every event published after
//! `listen` returned. Recovery relies on that: the hub listens first, buffers what
//! arrives, reads history since the client's offset, and merges by offset.
//!
//! [`MemoryBackplane`] is the in-process implementation (one node, or several hubs in
//! one process sharing it, as the multi-node tests do).

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Instant;

use crate::hub::client::{ClientId, ClientInfo};
use crate::hub::history::History;
use crate::hub::options::ChannelOptions;
use crate::hub::publication::{Payload, Publication, StreamPosition};
use crate::hub::shards::{self, lock, SHARDS};

/// A boxed future, as the trait's methods return.
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// Why a backplane operation failed.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum BackplaneError {
    /// The channel has no state: nobody present, nothing retained.
    UnknownChannel,
    /// The backplane could not be reached or failed; the operation was not done and
    /// may be retried.
    Unavailable(String),
    /// A shared work queue holds its maximum of waiting messages.
    QueueFull(usize),
}

impl std::fmt::Display for BackplaneError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            BackplaneError::UnknownChannel => f.write_str("unknown channel"),
            BackplaneError::Unavailable(why) => write!(f, "backplane unavailable: {why}"),
            BackplaneError::QueueFull(max) => write!(f, "the queue holds {max} messages"),
        }
    }
}

impl std::error::Error for BackplaneError {}

/// What the backplane delivers to the nodes listening on a channel.
#[derive(Debug, Clone)]
pub enum Event {
    /// A publication, with its offset.
    Publication(Arc<Publication>),
    /// A client joined (presence with join/leave on).
    Join(Arc<ClientInfo>),
    /// A client left (presence with join/leave on).
    Leave(Arc<ClientInfo>),
    /// The node may have missed some of the channel's events (its link to a remote
    /// backplane dropped, or offsets jumped): its subscribers must recover, the way a
    /// reconnecting client does.
    Lost,
}

/// A node's receiver of events (the hub).
pub trait Deliver: Send + Sync {
    /// Hand `event` of `channel` to this node's subscribers. Must not block.
    fn deliver(&self, channel: &str, event: Event);

    /// Whether this node is behind its deliveries, as deep as its publishers are paced
    /// at: a backplane that [shares lag](Backplane::shares_lag) asks after each event it
    /// delivers and tells the other nodes at once.
    fn behind(&self) -> bool {
        false
    }

    /// A shared work queue has new messages ([`Backplane::shares_queues`]).
    fn queue_ready(&self, queue: &str) {
        let _ = queue;
    }

    /// Answer a [`survey`](Backplane::survey) (the hub's cluster-wide operations: a
    /// JSON request, a JSON answer).
    fn answer(&self, request: Vec<u8>) -> BoxFuture<'static, Vec<u8>> {
        drop(request);
        Box::pin(std::future::ready(Vec::new()))
    }
}

/// A node's handle on the backplane, from [`Backplane::attach`].
pub type NodeId = u64;

/// A message a node took from a shared work queue: its id, payload, and whether it
/// was handed out before.
pub type Pulled = (u64, Payload, bool);

/// A history request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HistoryQuery {
    /// Most publications returned (0: only the position).
    pub limit: usize,
    /// Only publications after this offset.
    pub since: Option<u64>,
    /// Newest first.
    pub reverse: bool,
}

/// A history answer: publications and the stream's current position.
#[derive(Debug, Clone)]
pub struct HistoryPage {
    /// The publications asked for.
    pub publications: Vec<Arc<Publication>>,
    /// The stream's position when they were read.
    pub position: StreamPosition,
    /// The oldest offset still retained (`position.offset + 1` when nothing is).
    pub first_retained: u64,
}

/// The state the nodes of a cluster share. See the module documentation.
pub trait Backplane: Send + Sync + 'static {
    /// Register a node's receiver; the id names it in `listen`/`unlisten`.
    fn attach(&self, node: Arc<dyn Deliver>) -> NodeId;

    /// Give `channel`'s events to `node` from now on (idempotent).
    fn listen<'a>(
        &'a self,
        node: NodeId,
        channel: &'a str,
    ) -> BoxFuture<'a, Result<(), BackplaneError>>;

    /// Stop giving `channel`'s events to `node` (idempotent).
    fn unlisten<'a>(
        &'a self,
        node: NodeId,
        channel: &'a str,
    ) -> BoxFuture<'a, Result<(), BackplaneError>>;

    /// Append to the channel's stream (assigning the next offset, keeping it in history
    /// as `opts` say) and deliver it to every listening node.
    fn publish<'a>(
        &'a self,
        channel: &'a str,
        opts: &'a ChannelOptions,
        payload: Payload,
    ) -> BoxFuture<'a, Result<Arc<Publication>, BackplaneError>>;

    /// Read the channel's history and position.
    fn history<'a>(
        &'a self,
        channel: &'a str,
        opts: &'a ChannelOptions,
        query: HistoryQuery,
    ) -> BoxFuture<'a, Result<HistoryPage, BackplaneError>>;

    /// Add a client to the channel's presence (and deliver a join when `opts.join_leave`).
    fn join<'a>(
        &'a self,
        channel: &'a str,
        opts: &'a ChannelOptions,
        info: Arc<ClientInfo>,
    ) -> BoxFuture<'a, Result<(), BackplaneError>>;

    /// Remove a client from the channel's presence (and deliver a leave when
    /// `opts.join_leave`).
    fn leave<'a>(
        &'a self,
        channel: &'a str,
        opts: &'a ChannelOptions,
        client: ClientId,
    ) -> BoxFuture<'a, Result<(), BackplaneError>>;

    /// Who is in the channel.
    fn presence<'a>(
        &'a self,
        channel: &'a str,
    ) -> BoxFuture<'a, Result<Vec<Arc<ClientInfo>>, BackplaneError>>;

    /// Ask every node of the cluster (this one included) to [`answer`](Deliver::answer)
    /// `request`; their answers, from the nodes that answered in time.
    fn survey(&self, request: Vec<u8>) -> BoxFuture<'_, Result<Vec<Vec<u8>>, BackplaneError>>;

    /// Record where `node` serves HTTP (`http://10.0.0.5:3000`), for requests another
    /// node receives for a session it holds.
    fn announce<'a>(
        &'a self,
        node: NodeId,
        address: &'a str,
    ) -> BoxFuture<'a, Result<(), BackplaneError>>;

    /// Where `node` serves, if it said.
    fn address_of(&self, node: NodeId) -> BoxFuture<'_, Result<Option<String>, BackplaneError>>;

    /// Record that the session `id` (one whose id a client chose, as SockJS's) lives on
    /// `node`, or (`None`) that it ended.
    fn register_session<'a>(
        &'a self,
        id: &'a str,
        node: Option<NodeId>,
    ) -> BoxFuture<'a, Result<(), BackplaneError>>;

    /// The node holding the session `id`, if one registered it.
    fn session_node<'a>(
        &'a self,
        id: &'a str,
    ) -> BoxFuture<'a, Result<Option<NodeId>, BackplaneError>>;

    /// Whether work queues are the cluster's (the `queue_*` methods), rather than each
    /// node's own.
    fn shares_queues(&self) -> bool {
        false
    }

    /// Whether nodes tell each other when they are behind their deliveries
    /// ([`report_lag`](Self::report_lag)), so that a publisher on one node is paced by
    /// subscribers on another.
    fn shares_lag(&self) -> bool {
        false
    }

    /// Tell the other nodes that this node is behind its deliveries (`true`) or no
    /// longer is (`false`). Called again and again while the state lasts: the backplane
    /// says it when it changes and repeats a `true` often enough to stay fresh.
    fn report_lag(&self, _lagging: bool) -> BoxFuture<'_, ()> {
        Box::pin(std::future::ready(()))
    }

    /// Wait while another node says it is behind, at most until `deadline`; after one
    /// said it no longer is, at most `depth` publications go before it speaks again (a
    /// node that just caught up is not flooded before it could say it is behind again).
    fn remote_pace(&self, _depth: usize, _deadline: tokio::time::Instant) -> BoxFuture<'_, ()> {
        Box::pin(std::future::ready(()))
    }

    /// Append a message to the shared queue (at most `max` waiting).
    fn queue_push<'a>(
        &'a self,
        queue: &'a str,
        payload: &'a Payload,
        max: usize,
    ) -> BoxFuture<'a, Result<(), BackplaneError>> {
        let _ = (queue, payload, max);
        Box::pin(std::future::ready(Err(BackplaneError::Unavailable(
            "queues are not shared".into(),
        ))))
    }

    /// Take the next waiting message for this node.
    fn queue_pull<'a>(
        &'a self,
        queue: &'a str,
    ) -> BoxFuture<'a, Result<Option<Pulled>, BackplaneError>> {
        let _ = queue;
        Box::pin(std::future::ready(Ok(None)))
    }

    /// Messages this node took are done (acknowledged): forget them.
    fn queue_done<'a>(
        &'a self,
        queue: &'a str,
        ids: Vec<u64>,
    ) -> BoxFuture<'a, Result<(), BackplaneError>> {
        let _ = (queue, ids);
        Box::pin(std::future::ready(Ok(())))
    }

    /// Messages this node took go back to the front of the queue, redelivered.
    fn queue_back<'a>(
        &'a self,
        queue: &'a str,
        ids: Vec<u64>,
    ) -> BoxFuture<'a, Result<(), BackplaneError>> {
        let _ = (queue, ids);
        Box::pin(std::future::ready(Ok(())))
    }
}

struct ChannelState {
    history: History,
    presence: HashMap<ClientId, Arc<ClientInfo>>,
    listeners: Vec<(NodeId, Arc<dyn Deliver>)>,
}

impl ChannelState {
    fn unused(&self) -> bool {
        self.listeners.is_empty() && self.presence.is_empty() && self.history.is_empty()
    }

    fn deliver(&self, channel: &str, event: Event) {
        for (_, node) in &self.listeners {
            node.deliver(channel, event.clone());
        }
    }
}

/// The in-process backplane: channel streams and presence in memory, delivery by direct
/// call. Events are delivered while the channel's lock is held, which gives the
/// per-channel order. The epoch is random per instance, so recovery across a restart is
/// refused.
pub struct MemoryBackplane {
    shards: Vec<Mutex<HashMap<String, ChannelState>>>,
    addresses: Mutex<HashMap<NodeId, String>>,
    sessions: Mutex<HashMap<String, NodeId>>,
    nodes: Mutex<HashMap<NodeId, Arc<dyn Deliver>>>,
    next_node: AtomicU64,
    epoch: String,
}

impl Default for MemoryBackplane {
    fn default() -> Self {
        Self::new()
    }
}

fn ready<'a, T: Send + 'a>(v: T) -> BoxFuture<'a, T> {
    Box::pin(std::future::ready(v))
}

impl MemoryBackplane {
    /// An empty backplane with a fresh epoch.
    pub fn new() -> MemoryBackplane {
        let epoch: u64 = rand::random();
        MemoryBackplane {
            shards: (0..SHARDS).map(|_| Mutex::new(HashMap::new())).collect(),
            addresses: Mutex::new(HashMap::new()),
            sessions: Mutex::new(HashMap::new()),
            nodes: Mutex::new(HashMap::new()),
            next_node: AtomicU64::new(1),
            epoch: format!("{epoch:016x}"),
        }
    }

    /// The epoch of every stream of this backplane.
    pub fn epoch(&self) -> &str {
        &self.epoch
    }

    fn shard(&self, channel: &str) -> MutexGuard<'_, HashMap<String, ChannelState>> {
        lock(&self.shards[shards::of(channel)])
    }

    fn with_channel<R>(
        &self,
        channel: &str,
        opts: Option<&ChannelOptions>,
        f: impl FnOnce(&mut ChannelState) -> R,
    ) -> Option<R> {
        let mut shard = self.shard(channel);
        if !shard.contains_key(channel) {
            let opts = opts?;
            shard.insert(
                channel.to_string(),
                ChannelState {
                    history: History::new(opts.history_size, opts.history_ttl, self.epoch.clone()),
                    presence: HashMap::new(),
                    listeners: Vec::new(),
                },
            );
        }
        let state = shard.get_mut(channel)?;
        let r = f(state);
        if state.unused() {
            shard.remove(channel);
        }
        Some(r)
    }
}

impl Backplane for MemoryBackplane {
    fn attach(&self, node: Arc<dyn Deliver>) -> NodeId {
        let id = self.next_node.fetch_add(1, Ordering::Relaxed);
        lock(&self.nodes).insert(id, node);
        id
    }

    fn listen<'a>(
        &'a self,
        node: NodeId,
        channel: &'a str,
    ) -> BoxFuture<'a, Result<(), BackplaneError>> {
        let Some(deliver) = lock(&self.nodes).get(&node).cloned() else {
            return ready(Err(BackplaneError::Unavailable(format!(
                "node {node} is not attached"
            ))));
        };
        let opts = ChannelOptions::default();
        self.with_channel(channel, Some(&opts), |s| {
            if !s.listeners.iter().any(|(id, _)| *id == node) {
                s.listeners.push((node, deliver));
            }
        });
        ready(Ok(()))
    }

    fn unlisten<'a>(
        &'a self,
        node: NodeId,
        channel: &'a str,
    ) -> BoxFuture<'a, Result<(), BackplaneError>> {
        self.with_channel(channel, None, |s| s.listeners.retain(|(id, _)| *id != node));
        ready(Ok(()))
    }

    fn publish<'a>(
        &'a self,
        channel: &'a str,
        opts: &'a ChannelOptions,
        payload: Payload,
    ) -> BoxFuture<'a, Result<Arc<Publication>, BackplaneError>> {
        let p = self.with_channel(channel, Some(opts), |s| {
            // A channel created by `listen` before any publication gets its history
            // settings from the first publisher.
            s.history.configure(opts.history_size, opts.history_ttl);
            let p = s.history.push(Instant::now(), payload);
            s.deliver(channel, Event::Publication(p.clone()));
            p
        });
        ready(p.ok_or_else(|| BackplaneError::Unavailable("channel vanished".into())))
    }

    fn history<'a>(
        &'a self,
        channel: &'a str,
        opts: &'a ChannelOptions,
        q: HistoryQuery,
    ) -> BoxFuture<'a, Result<HistoryPage, BackplaneError>> {
        let now = Instant::now();
        let page = self.with_channel(channel, None, |s| {
            s.history.configure(opts.history_size, opts.history_ttl);
            HistoryPage {
                publications: s.history.query(now, q.limit, q.since, q.reverse),
                position: s.history.position(),
                first_retained: s.history.first_offset(),
            }
        });
        // A channel with no state is at offset 0 of this backplane's epoch.
        ready(Ok(page.unwrap_or_else(|| HistoryPage {
            publications: Vec::new(),
            position: StreamPosition {
                offset: 0,
                epoch: self.epoch.clone(),
            },
            first_retained: 1,
        })))
    }

    fn join<'a>(
        &'a self,
        channel: &'a str,
        opts: &'a ChannelOptions,
        info: Arc<ClientInfo>,
    ) -> BoxFuture<'a, Result<(), BackplaneError>> {
        self.with_channel(channel, Some(opts), |s| {
            s.presence.insert(info.client, info.clone());
            if opts.join_leave {
                s.deliver(channel, Event::Join(info));
            }
        });
        ready(Ok(()))
    }

    fn leave<'a>(
        &'a self,
        channel: &'a str,
        opts: &'a ChannelOptions,
        client: ClientId,
    ) -> BoxFuture<'a, Result<(), BackplaneError>> {
        self.with_channel(channel, None, |s| {
            if let Some(info) = s.presence.remove(&client) {
                if opts.join_leave {
                    s.deliver(channel, Event::Leave(info));
                }
            }
        });
        ready(Ok(()))
    }

    fn presence<'a>(
        &'a self,
        channel: &'a str,
    ) -> BoxFuture<'a, Result<Vec<Arc<ClientInfo>>, BackplaneError>> {
        let members = self.with_channel(channel, None, |s| {
            s.presence.values().cloned().collect::<Vec<_>>()
        });
        ready(members.ok_or(BackplaneError::UnknownChannel))
    }

    fn survey(&self, request: Vec<u8>) -> BoxFuture<'_, Result<Vec<Vec<u8>>, BackplaneError>> {
        let nodes: Vec<Arc<dyn Deliver>> = lock(&self.nodes).values().cloned().collect();
        Box::pin(async move {
            let mut answers = Vec::with_capacity(nodes.len());
            for n in nodes {
                answers.push(n.answer(request.clone()).await);
            }
            Ok(answers)
        })
    }

    fn announce<'a>(
        &'a self,
        node: NodeId,
        address: &'a str,
    ) -> BoxFuture<'a, Result<(), BackplaneError>> {
        lock(&self.addresses).insert(node, address.to_string());
        ready(Ok(()))
    }

    fn address_of(&self, node: NodeId) -> BoxFuture<'_, Result<Option<String>, BackplaneError>> {
        ready(Ok(lock(&self.addresses).get(&node).cloned()))
    }

    fn register_session<'a>(
        &'a self,
        id: &'a str,
        node: Option<NodeId>,
    ) -> BoxFuture<'a, Result<(), BackplaneError>> {
        let mut all = lock(&self.sessions);
        match node {
            Some(n) => all.insert(id.to_string(), n),
            None => all.remove(id),
        };
        ready(Ok(()))
    }

    fn session_node<'a>(
        &'a self,
        id: &'a str,
    ) -> BoxFuture<'a, Result<Option<NodeId>, BackplaneError>> {
        ready(Ok(lock(&self.sessions).get(id).copied()))
    }
}
