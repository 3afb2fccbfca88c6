//! The hub core: channels, subscriptions, publish and fan-out, presence, history and
//! recovery, the backplane between nodes, and the protocol-neutral [`HubSession`] that
//! every front-end drives. Nothing here knows a wire format: errors are [`HubError`],
//! deliveries are [`Delivery`], disconnects are [`Disconnect`]; each front-end
//! (`crate::native`, `crate::api`, …) encodes them its own way.

pub mod auth;
pub mod backplane;
pub(crate) mod broker;
pub mod channel;
pub mod client;
#[cfg(test)]
pub(crate) mod contract;
pub mod error;
pub mod figures;
pub mod history;
pub mod metrics;
pub mod options;
pub mod publication;
pub mod queue;
pub mod rate;
pub(crate) mod seats;
pub mod session;
pub(crate) mod shards;
pub(crate) mod wakes;
pub mod workqueue;

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use serde_json::{json, Value};

use self::backplane::{
    Backplane, BackplaneError, BoxFuture, Deliver, HistoryPage, HistoryQuery, MemoryBackplane,
    NodeId,
};
use self::broker::{Broker, Subscribed};
use self::channel::ChannelName;
use self::client::{ClientId, ClientInfo};
use self::error::{Feature, HubError, Limit};
use self::options::ChannelOptions;
use self::publication::{Payload, Publication, StreamPosition};
use self::queue::{Delivery, Disconnect, Outbound, QueueLimits};
use self::shards::lock;

pub use self::session::HubSession;

/// Hub settings.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct HubConfig {
    /// The namespaces and their options. A channel `ns:name` must be in one of them
    /// (otherwise [`HubError::UnknownNamespace`]). Default: none.
    pub namespaces: Vec<(String, ChannelOptions)>,
    /// Options of the default namespace: channel names without `:`. Default: presence
    /// (without join/leave pushes, which cost O(subscribers) per join), history of 100
    /// publications for 5 minutes.
    pub default_options: ChannelOptions,
    /// Each connection's outbound queue limits.
    pub queue: QueueLimits,
    /// Subscriptions one connection may hold. Default: 128.
    pub max_subscriptions: usize,
    /// The keepalive interval announced to native clients in the `connect` reply, in
    /// seconds (0: none); a server sets it to the WebSocket ping interval it uses.
    /// Default: 30 (wsx's default `ping_interval`).
    pub ping_interval_secs: u64,
    /// Connection tokens.
    pub auth: auth::AuthConfig,
    /// A connection whose peer takes no data for this long while a push is being
    /// written is dropped (its queue is already bounded; this frees the task and the
    /// socket). Default: 30 s.
    pub write_timeout: std::time::Duration,
    /// Longest `name` and `info` a client may give at `connect` (shown in presence).
    /// Default: 256 bytes.
    pub max_info_size: usize,
    /// Work queues' limits.
    pub work_queues: workqueue::WorkQueueLimits,
    /// Commands per second per connection, every front-end.
    pub commands: rate::CommandRate,
    /// Connections one user (a token's subject, or whom the transport vouched for) may
    /// have open on this node; a `connect` beyond is refused (native error 106).
    /// Default: none (no limit).
    pub max_connections_per_user: Option<usize>,
    /// Pacing of publishers: a publication made while this node's event loops are
    /// behind waits (before its publisher is answered) until it is fewer than this many
    /// publications behind: the subscriber that has waited longest for its turn, and
    /// the average subscriber queue, hold fewer deliveries. A publisher
    /// faster than the node can deliver is slowed to its pace, and publications
    /// coalesce (up to this many per subscriber write) instead of latency growing until
    /// queues overflow. 0: publishers are never slowed. Default: 16.
    pub pace_depth: usize,
    /// The longest a publication waits for [`pace_depth`](Self::pace_depth).
    /// Default: 1 s.
    pub pace_max_wait: std::time::Duration,
}

impl Default for HubConfig {
    fn default() -> Self {
        HubConfig {
            namespaces: Vec::new(),
            default_options: ChannelOptions {
                presence: true,
                join_leave: false,
                history_size: 100,
                ..ChannelOptions::default()
            },
            queue: QueueLimits::default(),
            max_subscriptions: 128,
            ping_interval_secs: 30,
            auth: auth::AuthConfig::default(),
            write_timeout: std::time::Duration::from_secs(30),
            max_info_size: 256,
            work_queues: workqueue::WorkQueueLimits::default(),
            commands: rate::CommandRate::default(),
            max_connections_per_user: None,
            pace_depth: 16,
            pace_max_wait: std::time::Duration::from_secs(1),
        }
    }
}

/// Tell the other nodes while this one is behind its deliveries (by `pace_depth` or more
/// publications: [`Broker::lag`](broker::Broker::lag)), so that their
/// publishers wait as this node's do: checked at each turn of the fan-out wake-ups (and
/// by the backplane after each event it delivers, which a busy event loop cannot
/// delay); the backplane says it when it changes and repeats it while it lasts.
async fn lag_reports(me: std::sync::Weak<Hub>, wakes: wakes::Wakes) {
    let mut last_behind: Option<Instant> = None;
    loop {
        let Some(hub) = me.upgrade() else {
            return;
        };
        let lagging = hub.behind();
        if lagging {
            last_behind = Some(Instant::now());
        }
        hub.backplane.report_lag(lagging).await;
        drop(hub);
        // Look often while behind and for a while after (the backplane repeats what it
        // said then), seldom otherwise (turns wake it anyway).
        let recent = last_behind.is_some_and(|t| t.elapsed() < std::time::Duration::from_secs(2));
        let max = if recent {
            std::time::Duration::from_millis(50)
        } else {
            std::time::Duration::from_secs(1)
        };
        wakes.turned(max).await;
    }
}

/// Shared work queues: tell the backplane what this node settled or gave back, and
/// take as many messages as this node's consumers have room for; then wait for a
/// change here or a new message anywhere (at most a second).
async fn pump(me: std::sync::Weak<Hub>) {
    loop {
        let Some(hub) = me.upgrade() else {
            return;
        };
        let changed = hub.queues.changed();
        for (queue, effect) in hub.queues.take_effects() {
            let r = match effect {
                workqueue::Effect::Done(ids) => hub.backplane.queue_done(&queue, ids).await,
                workqueue::Effect::Back(ids) => hub.backplane.queue_back(&queue, ids).await,
            };
            if let Err(e) = r {
                tracing::warn!(queue, "work queue: {e}");
            }
        }
        for queue in hub.queues.consumed() {
            for _ in 0..hub.queues.wants(&queue) {
                match hub.backplane.queue_pull(&queue).await {
                    Ok(Some((id, payload, redelivered))) => {
                        hub.queues.push_pulled(&queue, id, payload, redelivered)
                    }
                    Ok(None) => break,
                    Err(e) => {
                        tracing::debug!(queue, "work queue: {e}");
                        break;
                    }
                }
            }
        }
        drop(hub);
        tokio::select! {
            _ = changed.notified() => {}
            _ = tokio::time::sleep(std::time::Duration::from_secs(1)) => {}
        }
    }
}

/// What the backplane sees of a node: events go to its broker, surveys to its hub.
struct Node {
    broker: Arc<Broker>,
    hub: std::sync::Weak<Hub>,
}

impl Deliver for Node {
    fn deliver(&self, channel: &str, event: backplane::Event) {
        self.broker.deliver(channel, event);
    }

    fn behind(&self) -> bool {
        self.hub.upgrade().is_some_and(|hub| hub.behind())
    }

    fn queue_ready(&self, _queue: &str) {
        if let Some(hub) = self.hub.upgrade() {
            hub.queues.changed().notify_one();
        }
    }

    fn answer(&self, request: Vec<u8>) -> BoxFuture<'static, Vec<u8>> {
        let hub = self.hub.clone();
        Box::pin(async move {
            let (Some(hub), Ok(req)) = (hub.upgrade(), serde_json::from_slice::<Value>(&request))
            else {
                return Vec::new();
            };
            hub.answer(&req).await.to_string().into_bytes()
        })
    }
}

/// The connections of this node: who each is and its queue.
type Sessions = HashMap<ClientId, (Arc<ClientInfo>, Arc<Outbound>)>;

/// The hub.
pub struct Hub {
    broker: Arc<Broker>,
    /// Where this node serves (for `/api/info`), once known.
    address: Mutex<String>,
    started: std::time::SystemTime,
    backplane: Arc<dyn Backplane>,
    node: NodeId,
    /// Serialises listen/unlisten decisions per shard of channels, so that "this node
    /// listens on a channel" always matches "it has subscribers of it".
    listen_locks: Vec<tokio::sync::Mutex<()>>,
    config: crate::live::Live<HubConfig>,
    next_client: AtomicU64,
    sessions: Mutex<Sessions>,
    /// Open connections per user (not counting anonymous ones).
    users: Mutex<HashMap<String, usize>>,
    metrics: Arc<metrics::Metrics>,
    queues: workqueue::WorkQueues,
}

impl Hub {
    /// A single-node hub with an in-memory backplane.
    pub fn new(config: HubConfig) -> Arc<Hub> {
        Hub::with_backplane(config, Arc::new(MemoryBackplane::new()))
    }

    /// A hub that shares channel streams, history and presence with other nodes through
    /// `backplane`.
    pub fn with_backplane(config: HubConfig, backplane: Arc<dyn Backplane>) -> Arc<Hub> {
        let shared_queues = backplane.shares_queues();
        let hub = Arc::new_cyclic(|me| {
            let broker = Arc::new(Broker::new());
            if tokio::runtime::Handle::try_current().is_ok() {
                tokio::spawn(broker::watch_loop(Arc::downgrade(&broker)));
            }
            let node = backplane.attach(Arc::new(Node {
                broker: broker.clone(),
                hub: me.clone(),
            }));
            Hub::parts(config, backplane, broker, node)
        });
        if shared_queues {
            tokio::spawn(pump(Arc::downgrade(&hub)));
        }
        if hub.backplane.shares_lag() {
            tokio::spawn(lag_reports(Arc::downgrade(&hub), hub.broker.wakes()));
        }
        hub
    }

    /// Whether this node is `pace_depth` or more publications behind its deliveries.
    fn behind(&self) -> bool {
        self.broker.behind(self.config().pace_depth)
    }

    /// Put a message on the work queue `queue` (the cluster's, where the backplane
    /// shares queues); one consumer gets it.
    pub async fn enqueue(&self, queue: &str, payload: Payload) -> Result<(), HubError> {
        if self.queues.is_shared() {
            let limits = self.config().work_queues;
            if payload.data.len() > limits.max_bytes {
                return Err(HubError::LimitExceeded(Limit::QueueFull(
                    limits.max_messages,
                )));
            }
            Ok(self
                .backplane
                .queue_push(queue, &payload, limits.max_messages)
                .await?)
        } else {
            self.queues.send(queue, payload)
        }
    }

    fn parts(
        config: HubConfig,
        backplane: Arc<dyn Backplane>,
        broker: Arc<Broker>,
        node: NodeId,
    ) -> Hub {
        let queues = if backplane.shares_queues() {
            workqueue::WorkQueues::shared(config.work_queues)
        } else {
            workqueue::WorkQueues::new(config.work_queues)
        };
        Hub {
            address: Mutex::new(String::new()),
            started: std::time::SystemTime::now(),
            broker,
            backplane,
            node,
            listen_locks: (0..shards::SHARDS)
                .map(|_| tokio::sync::Mutex::new(()))
                .collect(),
            queues,
            config: crate::live::Live::new(config),
            // Unique in the cluster: the backplane's node id above a per-node counter.
            next_client: AtomicU64::new((node << 40) + 1),
            sessions: Mutex::new(HashMap::new()),
            users: Mutex::new(HashMap::new()),
            metrics: Arc::default(),
        }
    }

    /// Where this node serves (`http://127.0.0.1:3000`, say), as `/api/info` shows it
    /// and other nodes forward requests for this node's sessions to.
    pub async fn set_address(&self, address: &str) -> Result<(), HubError> {
        *lock(&self.address) = address.to_string();
        Ok(self.backplane.announce(self.node, address).await?)
    }

    /// A session id that names this node, so that any node can tell whose it is: the
    /// node id in hex, `.`, then `random`.
    pub fn session_id(&self, random: &str) -> String {
        format!("{:x}.{random}", self.node)
    }

    /// Where to forward a request for the session `id` ([`session_id`](Self::session_id))
    /// that this node does not hold: the address of the node that does, if it is another
    /// node and announced one.
    pub async fn owner_of(&self, id: &str) -> Option<String> {
        let node = match id.split_once('.') {
            Some((node, _)) => NodeId::from_str_radix(node, 16).ok()?,
            // A client-chosen id: the registry says (register_session).
            None => self.backplane.session_node(id).await.ok().flatten()?,
        };
        if node == self.node {
            return None;
        }
        self.backplane.address_of(node).await.ok().flatten()
    }

    /// Record that the session `id`, whose id its client chose, lives on this node
    /// (`true`) or ended (`false`), so that other nodes forward its requests here
    /// ([`owner_of`](Self::owner_of)). Best effort: a failure is logged.
    pub async fn register_session(&self, id: &str, live: bool) {
        let node = live.then_some(self.node);
        if let Err(e) = self.backplane.register_session(id, node).await {
            tracing::debug!(id, "session registry: {e}");
        }
    }

    /// [`register_session`](Self::register_session) in the background.
    pub fn register_session_later(self: &Arc<Self>, id: &str, live: bool) {
        let (hub, id) = (self.clone(), id.to_string());
        tokio::spawn(async move {
            let node = live.then_some(hub.node);
            if let Err(e) = hub.backplane.register_session(&id, node).await {
                tracing::debug!(id, "session registry: {e}");
            }
        });
    }

    /// Where this node serves, as [`set_address`](Self::set_address) gave it.
    pub fn address(&self) -> String {
        lock(&self.address).clone()
    }

    /// When this hub started.
    pub fn started(&self) -> std::time::SystemTime {
        self.started
    }

    /// This node's id in the cluster.
    pub fn node(&self) -> NodeId {
        self.node
    }

    /// Run `request` on every node of the cluster and gather the answers.
    async fn survey(&self, request: Value) -> Result<Vec<Value>, HubError> {
        let answers = self
            .backplane
            .survey(request.to_string().into_bytes())
            .await?;
        Ok(answers
            .iter()
            .filter_map(|a| serde_json::from_slice(a).ok())
            .collect())
    }

    /// A survey whose answers are counts (`{"n"}`): their sum.
    async fn survey_count(&self, request: Value) -> Result<usize, HubError> {
        let answers = self.survey(request).await?;
        Ok(answers.iter().filter_map(|a| a["n"].as_u64()).sum::<u64>() as usize)
    }

    /// This node's part of a survey.
    async fn answer(&self, request: &Value) -> Value {
        let user = request["user"].as_str();
        let client = request["client"].as_u64();
        match request["op"].as_str() {
            Some("disconnect") => {
                let why = Disconnect::Server {
                    code: request["code"].as_u64().unwrap_or(3000) as u16,
                    reason: request["reason"].as_str().unwrap_or_default().to_string(),
                    reconnect: request["reconnect"].as_bool().unwrap_or(false),
                };
                json!({ "n": self.disconnect(user, client, why) })
            }
            Some("unsubscribe") => {
                let channel = request["channel"].as_str().unwrap_or_default();
                json!({ "n": self.unsubscribe(channel, user, client).await })
            }
            Some("has_client") => {
                json!({ "n": u64::from(client.is_some_and(|c| self.has_client(c))) })
            }
            Some("channels") => {
                let all: serde_json::Map<String, Value> = self
                    .channels()
                    .into_iter()
                    .map(|(ch, n)| (ch, json!(n)))
                    .collect();
                json!({ "channels": all })
            }
            Some("info") => {
                let started = self
                    .started
                    .duration_since(std::time::UNIX_EPOCH)
                    .map_or(0, |d| d.as_secs());
                json!({
                    "node": self.node,
                    "address": *lock(&self.address),
                    "connections": self.connections(),
                    "channels": self.broker.channels().len(),
                    "started": started,
                    "version": env!("CARGO_PKG_VERSION"),
                })
            }
            _ => Value::Null,
        }
    }

    /// Disconnect `user`'s connections and/or the connection `client` on every node;
    /// how many there were.
    pub async fn disconnect_everywhere(
        &self,
        user: Option<&str>,
        client: Option<ClientId>,
        code: u16,
        reason: &str,
        reconnect: bool,
    ) -> Result<usize, HubError> {
        let req = json!({ "op": "disconnect", "user": user, "client": client, "code": code, "reason": reason, "reconnect": reconnect });
        self.survey_count(req).await
    }

    /// Remove `user`'s (and/or `client`'s) subscriptions to `channel` on every node;
    /// how many there were.
    pub async fn unsubscribe_everywhere(
        &self,
        channel: &str,
        user: Option<&str>,
        client: Option<ClientId>,
    ) -> Result<usize, HubError> {
        let req =
            json!({ "op": "unsubscribe", "channel": channel, "user": user, "client": client });
        self.survey_count(req).await
    }

    /// Whether the connection `client` is open on any node.
    pub async fn has_client_everywhere(&self, client: ClientId) -> Result<bool, HubError> {
        let req = json!({ "op": "has_client", "client": client });
        Ok(self
            .survey(req)
            .await?
            .iter()
            .any(|a| a["n"].as_u64() == Some(1)))
    }

    /// Channels with subscribers on any node, with the cluster's subscriber counts.
    pub async fn channels_everywhere(&self) -> Result<Vec<(String, usize)>, HubError> {
        let mut all: HashMap<String, usize> = HashMap::new();
        for a in self.survey(json!({ "op": "channels" })).await? {
            if let Some(m) = a["channels"].as_object() {
                for (ch, n) in m {
                    *all.entry(ch.clone()).or_default() += n.as_u64().unwrap_or(0) as usize;
                }
            }
        }
        let mut v: Vec<(String, usize)> = all.into_iter().collect();
        v.sort();
        Ok(v)
    }

    /// Every node that answered: id, address, connections, channels, start time.
    pub async fn nodes(&self) -> Result<Vec<Value>, HubError> {
        let mut v = self.survey(json!({ "op": "info" })).await?;
        v.retain(|a| a.is_object());
        v.sort_by_key(|a| a["node"].as_u64());
        Ok(v)
    }

    /// This node's work queues.
    pub fn queues(&self) -> &workqueue::WorkQueues {
        &self.queues
    }

    /// The metrics.
    pub fn metrics(&self) -> &metrics::Metrics {
        &self.metrics
    }

    fn sessions(&self) -> std::sync::MutexGuard<'_, Sessions> {
        shards::lock(&self.sessions)
    }

    fn listen_lock(&self, channel: &str) -> &tokio::sync::Mutex<()> {
        &self.listen_locks[shards::of(channel)]
    }

    /// Record a live connection, or who it is now (for server-side disconnects, the
    /// per-user count and the admin page).
    pub fn register(&self, info: Arc<ClientInfo>, queue: Arc<Outbound>) {
        let user = info.user.clone();
        match self.sessions().insert(info.client, (info, queue)) {
            None => {
                self.metrics.connections.fetch_add(1, Ordering::Relaxed);
            }
            Some((before, _)) => self.count_user(&before.user, false),
        }
        self.count_user(&user, true);
    }

    /// Forget a connection.
    pub fn unregister(&self, client: ClientId) {
        if let Some((info, _)) = self.sessions().remove(&client) {
            self.metrics.connections.fetch_sub(1, Ordering::Relaxed);
            self.count_user(&info.user, false);
        }
    }

    /// Who is connected to this node now.
    pub fn clients(&self) -> Vec<Arc<ClientInfo>> {
        self.sessions().values().map(|(i, _)| i.clone()).collect()
    }

    fn count_user(&self, user: &str, up: bool) {
        if user.is_empty() {
            return;
        }
        let mut users = shards::lock(&self.users);
        if up {
            *users.entry(user.to_string()).or_default() += 1;
        } else if let Some(n) = users.get_mut(user) {
            *n -= 1;
            if *n == 0 {
                users.remove(user);
            }
        }
    }

    /// Open connections of `user` on this node.
    pub fn user_connections(&self, user: &str) -> usize {
        shards::lock(&self.users).get(user).copied().unwrap_or(0)
    }

    /// End every connection of `user` (and/or the connection `client`) for the reason
    /// `why`. Returns how many were asked to close.
    pub fn disconnect(
        &self,
        user: Option<&str>,
        client: Option<ClientId>,
        why: Disconnect,
    ) -> usize {
        let sessions = self.sessions();
        let mut n = 0;
        for (id, (info, q)) in sessions.iter() {
            if user.is_some_and(|want| want == info.user) || client == Some(*id) {
                q.disconnect(why.clone());
                n += 1;
            }
        }
        n
    }

    /// Parse a channel name: `ns:name` needs the namespace `ns` configured (a typo in a
    /// namespace is an error, not a channel with the default options); a name without
    /// `:` is in the default namespace.
    pub fn channel(&self, name: &str) -> Result<ChannelName, HubError> {
        let ch = ChannelName::parse(name)?;
        let ns = ch.namespace();
        if !ns.is_empty() && !self.config().namespaces.iter().any(|(n, _)| n == ns) {
            return Err(HubError::UnknownNamespace(ns.to_string()));
        }
        Ok(ch)
    }

    /// Drop a subscription from this node's broker only (no backplane: for cleanup
    /// without a runtime).
    pub(crate) fn forget(&self, channel: &str, client: ClientId) {
        let _ = self.broker.remove(channel, client);
    }

    /// Subscribe a connection (front-ends go through [`HubSession::subscribe`], which
    /// applies permissions and limits first). With `recover`, the publications after that position
    /// are queued first (or `recovered: Some(false)` when history cannot cover the gap),
    /// then every later one: no gap, no duplicate. The node listens on the backplane
    /// first and holds back what arrives while it reads history, then merges by offset.
    pub(crate) async fn subscribe(
        &self,
        channel: &ChannelName,
        opts: &ChannelOptions,
        info: Arc<ClientInfo>,
        queue: Arc<Outbound>,
        recover: Option<&StreamPosition>,
    ) -> Result<Subscribed, HubError> {
        let name = channel.as_str();
        let client = info.client;
        {
            let _guard = self.listen_lock(name).lock().await;
            let first = self
                .broker
                .add(name, client, queue.clone(), recover.is_some())?;
            if first {
                if let Err(e) = self.backplane.listen(self.node, name).await {
                    let _ = self.broker.remove(name, client);
                    return Err(e.into());
                }
            }
        }
        let undo = |e: BackplaneError| async move {
            self.drop_subscription(name, opts, client).await;
            Err(e.into())
        };
        if opts.presence {
            if let Err(e) = self.backplane.join(name, opts, info.clone()).await {
                return undo(e).await;
            }
        }
        let query = HistoryQuery {
            limit: if recover.is_some() { usize::MAX } else { 0 },
            since: recover.map(|p| p.offset),
            reverse: false,
        };
        let page = if opts.history_size > 0 || recover.is_some() {
            match self.backplane.history(name, opts, query).await {
                Ok(page) => Some(page),
                Err(e) => return undo(e).await,
            }
        } else {
            None
        };
        let mut recovered = None;
        if let (Some(since), Some(page)) = (recover, &page) {
            let whole = broker::covers(page, since);
            let missed = if whole {
                page.publications.clone()
            } else {
                Vec::new()
            };
            // A consumer that overflows here is dropped (3008) and will recover again.
            let _ = self.broker.go_live(name, client, missed);
            recovered = Some(whole);
        }
        Ok(Subscribed {
            position: page.filter(|_| opts.history_size > 0).map(|p| p.position),
            recovered,
        })
    }

    /// Remove a subscription: from this node, from presence (a leave event where
    /// enabled), and stop listening when it was the node's last one.
    pub(crate) async fn unsubscribe_client(
        &self,
        channel: &str,
        client: ClientId,
    ) -> Result<(), HubError> {
        let ch = self.channel(channel)?;
        let opts = self.options(&ch);
        // Presence is left even when the subscription was already gone (dropped as a
        // slow consumer).
        if self.drop_subscription(channel, &opts, client).await {
            Ok(())
        } else {
            Err(HubError::NotSubscribed)
        }
    }

    /// Remove a subscription everywhere; whether this node still had it.
    async fn drop_subscription(
        &self,
        channel: &str,
        opts: &ChannelOptions,
        client: ClientId,
    ) -> bool {
        let removed = {
            let _guard = self.listen_lock(channel).lock().await;
            let removed = self.broker.remove(channel, client).is_ok();
            if !self.broker.has_subscribers(channel) {
                let _ = self.backplane.unlisten(self.node, channel).await;
            }
            removed
        };
        if opts.presence {
            // Best effort: a backplane that lost the presence entry has nothing to undo.
            let _ = self.backplane.leave(channel, opts, client).await;
        }
        removed
    }

    /// Remove the subscriptions of `user`'s connections (and/or the connection `client`)
    /// to `channel`; each gets an `unsubscribe` push. Returns how many were removed.
    pub async fn unsubscribe(
        &self,
        channel: &str,
        user: Option<&str>,
        client: Option<ClientId>,
    ) -> usize {
        let targets: Vec<(ClientId, Arc<Outbound>)> = self
            .sessions()
            .iter()
            .filter(|(id, (info, _))| {
                user.is_some_and(|want| want == info.user) || client == Some(**id)
            })
            .map(|(id, (_, q))| (*id, q.clone()))
            .collect();
        let mut n = 0;
        for (id, q) in targets {
            if self.unsubscribe_client(channel, id).await.is_ok() {
                let _ = q.push_in_order(Delivery::Unsubscribed {
                    channel: Arc::from(channel),
                });
                n += 1;
            }
        }
        n
    }

    /// Connections open now.
    pub fn connections(&self) -> usize {
        self.sessions().len()
    }

    /// Whether the connection `client` is open on this node.
    pub fn has_client(&self, client: ClientId) -> bool {
        self.sessions().contains_key(&client)
    }

    /// Publish to a channel as the server (the HTTP API, the application): no
    /// permission applies.
    pub async fn publish(
        &self,
        channel: &str,
        payload: Payload,
    ) -> Result<Arc<Publication>, HubError> {
        let ch = self.channel(channel)?;
        let opts = self.options(&ch);
        let start = Instant::now();
        let p = self.backplane.publish(ch.as_str(), &opts, payload).await?;
        self.metrics.observe_publish(start.elapsed());
        self.metrics.publications.fetch_add(1, Ordering::Relaxed);
        let config = self.config();
        if config.pace_depth > 0 {
            let deadline = tokio::time::Instant::now() + config.pace_max_wait;
            self.broker.pace(config.pace_depth, deadline).await;
            self.backplane
                .remote_pace(config.pace_depth, deadline)
                .await;
        }
        Ok(p)
    }

    /// Who is in a channel (where its namespace keeps presence).
    pub async fn presence(&self, channel: &str) -> Result<Vec<Arc<ClientInfo>>, HubError> {
        let ch = self.channel(channel)?;
        if !self.options(&ch).presence {
            return Err(HubError::NotAvailable(Feature::Presence));
        }
        // Nobody present is one answer, whether or not the channel ever had state.
        match self.backplane.presence(ch.as_str()).await {
            Ok(members) => Ok(members),
            Err(BackplaneError::UnknownChannel) => Ok(Vec::new()),
            Err(e) => Err(e.into()),
        }
    }

    /// (connections, distinct users) in a channel.
    pub async fn presence_stats(&self, channel: &str) -> Result<(usize, usize), HubError> {
        let members = self.presence(channel).await?;
        let mut users: Vec<&str> = members.iter().map(|m| m.user.as_str()).collect();
        users.sort_unstable();
        users.dedup();
        Ok((members.len(), users.len()))
    }

    /// A channel's retained history (where its namespace keeps one).
    pub async fn history(
        &self,
        channel: &str,
        query: HistoryQuery,
    ) -> Result<HistoryPage, HubError> {
        let ch = self.channel(channel)?;
        let opts = self.options(&ch);
        if opts.history_size == 0 {
            return Err(HubError::NotAvailable(Feature::History));
        }
        Ok(self.backplane.history(ch.as_str(), &opts, query).await?)
    }

    /// This node's broker (read-only from outside the core: subscriptions change
    /// through sessions, under the hub's listen locks).
    pub fn broker(&self) -> &Broker {
        &self.broker
    }

    /// Channels with subscribers on this node, with their subscriber counts.
    pub fn channels(&self) -> Vec<(String, usize)> {
        self.broker.channels()
    }

    /// The settings (as they are now: a reload may replace them).
    pub fn config(&self) -> std::sync::Arc<HubConfig> {
        self.config.get()
    }

    /// Replace the settings (a reload): namespaces, tokens and limits apply from the
    /// next command on; a connection's command rate and queue limits stay those it
    /// opened with; the work queues keep their limits.
    pub fn set_config(&self, config: HubConfig) {
        self.config.set(config);
    }

    /// A fresh connection id.
    pub fn next_client_id(&self) -> ClientId {
        self.next_client.fetch_add(1, Ordering::Relaxed)
    }

    /// The options of a channel's namespace.
    pub fn options(&self, channel: &ChannelName) -> ChannelOptions {
        let config = self.config();
        config
            .namespaces
            .iter()
            .find(|(ns, _)| ns == channel.namespace())
            .map(|(_, o)| o.clone())
            .unwrap_or_else(|| config.default_options.clone())
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::AtomicBool;

    use bytes::Bytes;

    use super::*;
    use crate::hub::backplane::{BoxFuture, Deliver};

    fn history_opts() -> ChannelOptions {
        ChannelOptions {
            history_size: 100,
            presence: true,
            join_leave: true,
            ..ChannelOptions::default()
        }
    }

    fn hub_on(backplane: Arc<dyn Backplane>) -> Arc<Hub> {
        let cfg = HubConfig {
            default_options: history_opts(),
            namespaces: vec![
                ("news".into(), history_opts()),
                ("room".into(), history_opts()),
            ],
            ..HubConfig::default()
        };
        Hub::with_backplane(cfg, backplane)
    }

    use crate::hub::contract::{client, name, publish_n};
    use crate::hub::queue::drain_offsets as offsets;

    /// A backplane that fails on demand (a Redis that went away).
    struct Flaky {
        inner: MemoryBackplane,
        down: AtomicBool,
    }

    impl Flaky {
        fn check(&self) -> Result<(), BackplaneError> {
            if self.down.load(Ordering::Relaxed) {
                Err(BackplaneError::Unavailable("connection refused".into()))
            } else {
                Ok(())
            }
        }
    }

    macro_rules! flaky {
        ($self:ident . $m:ident ( $($a:expr),* )) => {
            match $self.check() {
                Ok(()) => $self.inner.$m($($a),*),
                Err(e) => Box::pin(std::future::ready(Err(e))),
            }
        };
    }

    impl Backplane for Flaky {
        fn attach(&self, node: Arc<dyn Deliver>) -> NodeId {
            self.inner.attach(node)
        }
        fn listen<'a>(
            &'a self,
            node: NodeId,
            channel: &'a str,
        ) -> BoxFuture<'a, Result<(), BackplaneError>> {
            flaky!(self.listen(node, channel))
        }
        fn unlisten<'a>(
            &'a self,
            node: NodeId,
            channel: &'a str,
        ) -> BoxFuture<'a, Result<(), BackplaneError>> {
            flaky!(self.unlisten(node, channel))
        }
        fn publish<'a>(
            &'a self,
            channel: &'a str,
            opts: &'a ChannelOptions,
            payload: Payload,
        ) -> BoxFuture<'a, Result<Arc<Publication>, BackplaneError>> {
            flaky!(self.publish(channel, opts, payload))
        }
        fn history<'a>(
            &'a self,
            channel: &'a str,
            opts: &'a ChannelOptions,
            q: HistoryQuery,
        ) -> BoxFuture<'a, Result<HistoryPage, BackplaneError>> {
            flaky!(self.history(channel, opts, q))
        }
        fn join<'a>(
            &'a self,
            channel: &'a str,
            opts: &'a ChannelOptions,
            info: Arc<ClientInfo>,
        ) -> BoxFuture<'a, Result<(), BackplaneError>> {
            flaky!(self.join(channel, opts, info))
        }
        fn leave<'a>(
            &'a self,
            channel: &'a str,
            opts: &'a ChannelOptions,
            client: ClientId,
        ) -> BoxFuture<'a, Result<(), BackplaneError>> {
            flaky!(self.leave(channel, opts, client))
        }
        fn presence<'a>(
            &'a self,
            channel: &'a str,
        ) -> BoxFuture<'a, Result<Vec<Arc<ClientInfo>>, BackplaneError>> {
            flaky!(self.presence(channel))
        }
        fn survey(&self, request: Vec<u8>) -> BoxFuture<'_, Result<Vec<Vec<u8>>, BackplaneError>> {
            flaky!(self.survey(request))
        }
        fn announce<'a>(
            &'a self,
            node: NodeId,
            address: &'a str,
        ) -> BoxFuture<'a, Result<(), BackplaneError>> {
            flaky!(self.announce(node, address))
        }
        fn address_of(
            &self,
            node: NodeId,
        ) -> BoxFuture<'_, Result<Option<String>, BackplaneError>> {
            flaky!(self.address_of(node))
        }
        fn register_session<'a>(
            &'a self,
            id: &'a str,
            node: Option<NodeId>,
        ) -> BoxFuture<'a, Result<(), BackplaneError>> {
            flaky!(self.register_session(id, node))
        }
        fn session_node<'a>(
            &'a self,
            id: &'a str,
        ) -> BoxFuture<'a, Result<Option<NodeId>, BackplaneError>> {
            flaky!(self.session_node(id))
        }
    }

    #[tokio::test]
    async fn a_failing_backplane_gives_clear_errors_and_leaves_nothing_behind() {
        let flaky = Arc::new(Flaky {
            inner: MemoryBackplane::new(),
            down: AtomicBool::new(true),
        });
        let hub = hub_on(flaky.clone());
        let ch = name("news:down");
        let opts = hub.options(&ch);
        let e = hub
            .publish("news:down", Payload::binary(Bytes::new()))
            .await
            .unwrap_err();
        assert_eq!(e, HubError::Unavailable("connection refused".into()));
        let (info, q) = client(&hub);
        let e = hub
            .subscribe(&ch, &opts, info.clone(), q.clone(), None)
            .await
            .unwrap_err();
        assert!(matches!(e, HubError::Unavailable(_)));
        assert!(
            hub.broker().channels().is_empty(),
            "no half-made subscription"
        );
        assert!(matches!(
            hub.presence("news:down").await.unwrap_err(),
            HubError::Unavailable(_)
        ));
        // Back up: the same client subscribes and receives.
        flaky.down.store(false, Ordering::Relaxed);
        hub.subscribe(&ch, &opts, info, q.clone(), None)
            .await
            .unwrap();
        publish_n(&hub, "news:down", 1).await;
        assert_eq!(offsets(&q), vec![1]);
    }

    #[tokio::test]
    async fn a_namespace_must_be_configured_and_names_without_one_are_in_the_default() {
        let hub = hub_on(Arc::new(MemoryBackplane::new()));
        assert_eq!(
            hub.publish("zzz:room", Payload::json("1"))
                .await
                .unwrap_err(),
            HubError::UnknownNamespace("zzz".into())
        );
        assert_eq!(
            hub.presence("typo:x").await.unwrap_err(),
            HubError::UnknownNamespace("typo".into())
        );
        assert!(hub.publish("news:x", Payload::json("1")).await.is_ok());
        assert!(hub.publish("lobby", Payload::json("1")).await.is_ok());
    }

    #[tokio::test]
    async fn presence_and_history_only_where_enabled() {
        let cfg = HubConfig {
            default_options: ChannelOptions::default(),
            ..HubConfig::default()
        };
        let hub = Hub::new(cfg);
        let ch = name("plain");
        let (info, q) = client(&hub);
        hub.subscribe(&ch, &hub.options(&ch), info, q, None)
            .await
            .unwrap();
        assert_eq!(
            hub.presence("plain").await.unwrap_err(),
            HubError::NotAvailable(Feature::Presence)
        );
        let q = HistoryQuery {
            limit: 10,
            since: None,
            reverse: false,
        };
        assert_eq!(
            hub.history("plain", q).await.unwrap_err(),
            HubError::NotAvailable(Feature::History)
        );
        let hub = Hub::new(HubConfig::default());
        assert_eq!(hub.presence("nobody").await, Ok(Vec::new()), "nobody there");
    }
}
