//! The protocol-neutral session every front-end drives: one client connection's
//! identity, tokens, permissions, limits, subscriptions, metrics and outbound queue,
//! and the cleanup when it ends. A front-end decodes its wire into calls on a
//! [`HubSession`], encodes what [`HubSession::poll_delivery`] yields, and maps
//! [`HubError`] onto its own errors; the rules below live here once.

use std::borrow::Cow;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::task::{Context, Poll};

use crate::hub::backplane::{HistoryPage, HistoryQuery};
use crate::hub::broker::Subscribed;
use crate::hub::channel::ChannelName;
use crate::hub::client::{ClientId, ClientInfo};
use crate::hub::error::{Denied, Feature, HubError, Limit};
use crate::hub::metrics::FrontendMetrics;
use crate::hub::options::ChannelOptions;
use crate::hub::publication::{Payload, Publication, StreamPosition};
use crate::hub::queue::{Delivery, Disconnect, Outbound};
use crate::hub::workqueue::AckMode;
use crate::hub::Hub;

/// What a client gives when it connects.
#[derive(Debug, Clone, Default)]
pub struct ConnectRequest {
    /// A connection token (JWT), if any.
    pub token: Option<String>,
    /// The client's name (its library, say), shown in presence.
    pub name: String,
    /// Free-form info (a nickname, say), shown in presence.
    pub info: String,
}

/// The result of [`HubSession::connect`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Connected {
    /// Channels the token's `channels` claim subscribed at once.
    pub subscribed: Vec<String>,
}

/// One client connection, whatever its protocol. Dropping it ends the session: its
/// subscriptions and presence are removed (on a spawned task, as that needs the
/// backplane); [`close`](Self::close) does the same and waits for it.
pub struct HubSession {
    hub: Arc<Hub>,
    frontend: Arc<FrontendMetrics>,
    info: Arc<ClientInfo>,
    queue: Arc<Outbound>,
    connected: bool,
    subscriptions: Vec<String>,
    /// Work-queue consumers: (queue, key).
    consumers: Vec<(String, u64)>,
    ended: bool,
    /// The slow-consumer disconnect was counted (seen from the queue).
    slow_counted: bool,
}

impl std::fmt::Debug for HubSession {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HubSession")
            .field("info", &self.info)
            .field("connected", &self.connected)
            .field("subscriptions", &self.subscriptions)
            .finish()
    }
}

impl HubSession {
    /// A session for a new connection of the front-end `frontend` (its `/metrics`
    /// label). `user` is who the transport already authenticated ("" for nobody); a
    /// connection token's subject takes its place at [`connect`](Self::connect).
    pub fn new(hub: Arc<Hub>, frontend: &'static str, user: String) -> HubSession {
        HubSession::new_via(hub, frontend, user, "")
    }

    /// [`new`](Self::new) for a connection that reached the server by `transport`, as
    /// [`set_transport`](Self::set_transport) records it (the client info is made and
    /// registered once, not twice).
    pub fn new_via(
        hub: Arc<Hub>,
        frontend: &'static str,
        user: String,
        transport: impl Into<Cow<'static, str>>,
    ) -> HubSession {
        let client = hub.next_client_id();
        let queue = Outbound::new(hub.config().queue);
        let frontend_name = frontend;
        let frontend = hub.metrics().frontend(frontend);
        frontend.connections.fetch_add(1, Ordering::Relaxed);
        let info = Arc::new(ClientInfo {
            client,
            user,
            protocol: frontend_name.into(),
            transport: transport.into(),
            ..ClientInfo::default()
        });
        hub.register(info.clone(), queue.clone());
        HubSession {
            info,
            hub,
            frontend,
            queue,
            connected: false,
            subscriptions: Vec::new(),
            consumers: Vec::new(),
            ended: false,
            slow_counted: false,
        }
    }

    /// The hub.
    pub fn hub(&self) -> &Arc<Hub> {
        &self.hub
    }

    /// This connection's id.
    pub fn client(&self) -> ClientId {
        self.info.client
    }

    /// Who this connection is.
    pub fn info(&self) -> &Arc<ClientInfo> {
        &self.info
    }

    /// Whether [`connect`](Self::connect) succeeded.
    pub fn is_connected(&self) -> bool {
        self.connected
    }

    /// This front-end's counters.
    pub fn metrics(&self) -> &FrontendMetrics {
        &self.frontend
    }

    /// The channels subscribed now.
    pub fn subscriptions(&self) -> &[String] {
        &self.subscriptions
    }

    /// The front-end authenticated this connection as `user` by its own means (a STOMP
    /// login, say): [`connect`](Self::connect) then needs no token. Before `connect`.
    pub fn authenticated(&mut self, user: String) {
        if self.connected || user == self.info.user {
            return;
        }
        self.set_info(ClientInfo {
            user,
            ..ClientInfo::clone(&self.info)
        });
    }

    /// Who this connection is now, for this session and the hub's list.
    fn set_info(&mut self, info: ClientInfo) {
        self.info = Arc::new(info);
        self.hub.register(self.info.clone(), self.queue.clone());
    }

    /// Record how this connection reached the server (presence shows it): a
    /// transport that cannot change for the session's life. Before `connect`.
    pub fn set_transport(&mut self, transport: impl Into<Cow<'static, str>>) {
        if !self.connected {
            self.set_info(ClientInfo {
                transport: transport.into(),
                ..ClientInfo::clone(&self.info)
            });
        }
    }

    /// Check the token, record who this is and subscribe the channels the token grants.
    /// Without a token, a user the transport or front-end authenticated stands in for
    /// one; otherwise anonymous connections must be allowed.
    pub async fn connect(&mut self, req: ConnectRequest) -> Result<Connected, HubError> {
        if self.connected {
            return Err(HubError::AlreadyConnected);
        }
        let vouched = !self.info.user.is_empty() && req.token.as_deref().is_none_or(str::is_empty);
        let claims = if vouched {
            None
        } else {
            self.hub
                .config()
                .auth
                .verify(req.token.as_deref())
                .map_err(HubError::Unauthorized)?
        };
        let max = self.hub.config().max_info_size;
        if req.info.len() > max || req.name.len() > max {
            return Err(HubError::LimitExceeded(Limit::InfoSize(max)));
        }
        let user = match &claims {
            Some(c) => c.sub.clone(),
            None => self.info.user.clone(),
        };
        if let Some(max) = self.hub.config().max_connections_per_user {
            // This session counts already when the transport vouched for the user.
            let others = self
                .hub
                .user_connections(&user)
                .saturating_sub(usize::from(user == self.info.user));
            if !user.is_empty() && others >= max {
                return Err(HubError::LimitExceeded(Limit::UserConnections(max)));
            }
        }
        self.become_connected(user, req.name, req.info);
        let mut subscribed = Vec::new();
        for name in claims.map(|c| c.channels).unwrap_or_default() {
            let ch = self.hub.channel(&name)?;
            let opts = self.hub.options(&ch);
            self.add_subscription(&ch, &opts, None).await?;
            subscribed.push(name);
        }
        Ok(Connected { subscribed })
    }

    /// Mark the session connected on the application's authority (an embedding
    /// server that authenticated the client itself): no token is checked. `user` is
    /// who it is ("" for anonymous).
    pub fn connect_trusted(&mut self, user: String, name: String, info: String) {
        if !self.connected {
            self.become_connected(user, name, info);
        }
    }

    /// Record who this connection is and mark it connected.
    fn become_connected(&mut self, user: String, name: String, info: String) {
        self.set_info(ClientInfo {
            user,
            name,
            info,
            ..ClientInfo::clone(&self.info)
        });
        self.connected = true;
    }

    /// Subscribe to `channel` on the application's authority (a server-side join):
    /// the permission rules are not applied, the limits are.
    pub async fn join(
        &mut self,
        channel: &str,
        recover: Option<StreamPosition>,
    ) -> Result<Subscribed, HubError> {
        self.check_connected()?;
        let ch = self.hub.channel(channel)?;
        if self.subscriptions.iter().any(|c| c == channel) {
            return Err(HubError::AlreadySubscribed);
        }
        let max = self.hub.config().max_subscriptions;
        if self.subscriptions.len() >= max {
            return Err(HubError::LimitExceeded(Limit::Subscriptions(max)));
        }
        let opts = self.hub.options(&ch);
        if recover.is_some() && !(opts.recovery && opts.history_size > 0) {
            return Err(HubError::NotAvailable(Feature::Recovery));
        }
        self.add_subscription(&ch, &opts, recover.as_ref()).await
    }

    /// The outbound queue, for a front-end that drains it on its own task (then it
    /// passes each item to [`observe`](Self::observe)).
    pub fn outbound(&self) -> Arc<Outbound> {
        self.queue.clone()
    }

    /// Keep the session's books on an item taken from its queue: subscriptions the
    /// server removed, slow consumers counted. [`poll_delivery`](Self::poll_delivery)
    /// does this by itself.
    pub fn observe(&mut self, next: &Option<Result<Delivery, Disconnect>>) {
        match next {
            Some(Ok(Delivery::Unsubscribed { channel })) => {
                if let Some(i) = self
                    .subscriptions
                    .iter()
                    .position(|c| c.as_str() == channel.as_ref())
                {
                    self.subscriptions.swap_remove(i);
                    self.hub
                        .metrics()
                        .subscriptions
                        .fetch_sub(1, Ordering::Relaxed);
                }
            }
            Some(Err(Disconnect::SlowConsumer)) if !self.slow_counted => {
                self.slow_counted = true;
                self.hub
                    .metrics()
                    .slow_consumers
                    .fetch_add(1, Ordering::Relaxed);
            }
            _ => {}
        }
    }

    fn check_connected(&self) -> Result<(), HubError> {
        if self.connected {
            Ok(())
        } else {
            Err(HubError::NotConnected)
        }
    }

    /// Subscribe to `channel`, with a channel token for a private channel, recovering
    /// what was missed since `recover` if given.
    pub async fn subscribe(
        &mut self,
        channel: &str,
        token: Option<&str>,
        recover: Option<StreamPosition>,
    ) -> Result<Subscribed, HubError> {
        self.check_connected()?;
        let ch = self.hub.channel(channel)?;
        let max = self.hub.config().max_subscriptions;
        if self.subscriptions.len() >= max {
            return Err(HubError::LimitExceeded(Limit::Subscriptions(max)));
        }
        let opts = self.hub.options(&ch);
        self.may_subscribe(&ch, &opts, token)?;
        if recover.is_some() && !(opts.recovery && opts.history_size > 0) {
            return Err(HubError::NotAvailable(Feature::Recovery));
        }
        self.add_subscription(&ch, &opts, recover.as_ref()).await
    }

    async fn add_subscription(
        &mut self,
        ch: &ChannelName,
        opts: &ChannelOptions,
        recover: Option<&StreamPosition>,
    ) -> Result<Subscribed, HubError> {
        let r = self
            .hub
            .subscribe(ch, opts, self.info.clone(), self.queue.clone(), recover)
            .await?;
        self.subscriptions.push(ch.as_str().to_string());
        self.hub
            .metrics()
            .subscriptions
            .fetch_add(1, Ordering::Relaxed);
        Ok(r)
    }

    /// Namespace, user-limited (`name#user1,user2`) and private (`$name`, with a channel
    /// token) rules.
    fn may_subscribe(
        &self,
        ch: &ChannelName,
        opts: &ChannelOptions,
        token: Option<&str>,
    ) -> Result<(), HubError> {
        let user = self.info.user.as_str();
        if user.is_empty() && !opts.anonymous_subscribe {
            return Err(HubError::PermissionDenied(Denied::AnonymousSubscribe));
        }
        if let Some((_, users)) = ch.name().split_once('#') {
            if user.is_empty() || !users.split(',').any(|u| u == user) {
                return Err(HubError::PermissionDenied(Denied::OtherUsers));
            }
        }
        if ch.name().starts_with('$') {
            let token = token.ok_or(HubError::PermissionDenied(Denied::ChannelTokenRequired))?;
            self.hub
                .config()
                .auth
                .verify_channel(token, user, ch.as_str())
                .map_err(|e| HubError::PermissionDenied(Denied::ChannelToken(e)))?;
        }
        Ok(())
    }

    /// Remove a subscription.
    pub async fn unsubscribe(&mut self, channel: &str) -> Result<(), HubError> {
        self.check_connected()?;
        let Some(i) = self.subscriptions.iter().position(|c| c == channel) else {
            return Err(HubError::NotSubscribed);
        };
        self.subscriptions.swap_remove(i);
        self.hub
            .metrics()
            .subscriptions
            .fetch_sub(1, Ordering::Relaxed);
        self.hub.unsubscribe_client(channel, self.info.client).await
    }

    /// Publish to `channel` as this client.
    pub async fn publish(
        &mut self,
        channel: &str,
        payload: Payload,
    ) -> Result<Arc<Publication>, HubError> {
        self.check_connected()?;
        let ch = self.hub.channel(channel)?;
        if !self.hub.options(&ch).client_publish {
            return Err(HubError::PermissionDenied(Denied::ClientPublish));
        }
        let restricted = ch.name().starts_with('$') || ch.name().contains('#');
        if restricted && !self.subscriptions.iter().any(|c| c == channel) {
            return Err(HubError::PermissionDenied(Denied::SubscribeFirst));
        }
        self.hub.publish(channel, payload).await
    }

    /// Put a message on the work queue `queue` (named as a channel: namespace rules
    /// apply); one consumer will get it.
    pub async fn enqueue(&mut self, queue: &str, payload: Payload) -> Result<(), HubError> {
        self.check_connected()?;
        let ch = self.hub.channel(queue)?;
        if !self.hub.options(&ch).client_publish {
            return Err(HubError::PermissionDenied(Denied::ClientPublish));
        }
        self.hub.enqueue(queue, payload).await
    }

    /// Consume from the work queue `queue` as the consumer `key` (unique within this
    /// session); its messages arrive as [`Delivery::Queued`]. The subscribe rules of
    /// channels apply to the queue's name.
    pub fn consume(
        &mut self,
        queue: &str,
        key: u64,
        ack: AckMode,
        token: Option<&str>,
    ) -> Result<(), HubError> {
        self.check_connected()?;
        let ch = self.hub.channel(queue)?;
        let max = self.hub.config().max_subscriptions;
        if self.subscriptions.len() + self.consumers.len() >= max {
            return Err(HubError::LimitExceeded(Limit::Subscriptions(max)));
        }
        if self.consumers.iter().any(|(q, k)| q == queue && *k == key) {
            return Err(HubError::AlreadySubscribed);
        }
        let opts = self.hub.options(&ch);
        self.may_subscribe(&ch, &opts, token)?;
        self.consumers.push((queue.to_string(), key));
        self.hub
            .queues()
            .consume(queue, self.info.client, key, self.queue.clone(), ack);
        Ok(())
    }

    /// Stop consuming; unacknowledged messages go back to the queue.
    pub fn cancel(&mut self, queue: &str, key: u64) -> Result<(), HubError> {
        let Some(i) = self
            .consumers
            .iter()
            .position(|(q, k)| q == queue && *k == key)
        else {
            return Err(HubError::NotSubscribed);
        };
        self.consumers.swap_remove(i);
        self.hub.queues().cancel(queue, self.info.client, key);
        Ok(())
    }

    /// Acknowledge a work-queue delivery.
    pub fn ack(&mut self, queue: &str, tag: u64) -> Result<(), HubError> {
        self.hub.queues().ack(queue, self.info.client, tag)
    }

    /// Refuse a work-queue delivery: it goes back to the queue for another consumer.
    pub fn nack(&mut self, queue: &str, tag: u64) -> Result<(), HubError> {
        self.hub.queues().nack(queue, self.info.client, tag)
    }

    /// Who is in `channel`.
    pub async fn presence(&self, channel: &str) -> Result<Vec<Arc<ClientInfo>>, HubError> {
        self.check_connected()?;
        self.hub.presence(channel).await
    }

    /// (connections, distinct users) in `channel`.
    pub async fn presence_stats(&self, channel: &str) -> Result<(usize, usize), HubError> {
        self.check_connected()?;
        self.hub.presence_stats(channel).await
    }

    /// `channel`'s history. With `since`, the epoch must be the stream's
    /// ([`HubError::EpochChanged`] otherwise; an empty epoch is not checked).
    pub async fn history(
        &self,
        channel: &str,
        query: HistoryQuery,
        since_epoch: Option<&str>,
    ) -> Result<HistoryPage, HubError> {
        self.check_connected()?;
        let page = self.hub.history(channel, query).await?;
        match since_epoch {
            Some(e) if !e.is_empty() && e != page.position.epoch => Err(HubError::EpochChanged),
            _ => Ok(page),
        }
    }

    /// This connection's queue (to seat it on an event loop).
    pub(crate) fn queue(&self) -> &Arc<Outbound> {
        &self.queue
    }

    /// The next delivery for this connection; `Err` when the server ends it (a slow
    /// consumer, a server-side disconnect); `None` after the queue closed. Keeps the
    /// session's subscriptions in step with server-side unsubscribes.
    pub fn poll_delivery(
        &mut self,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Delivery, Disconnect>>> {
        let next = self.queue.poll_next(cx);
        if let Poll::Ready(n) = &next {
            self.observe(n);
        }
        next
    }

    /// The next delivery if one is there now (`None` otherwise), without registering
    /// for a wake-up: what a delivery loop takes after the first delivery of a batch.
    pub fn try_delivery(&mut self) -> Option<Option<Result<Delivery, Disconnect>>> {
        match self.queue.try_next() {
            Poll::Ready(n) => {
                self.observe(&n);
                Some(n)
            }
            Poll::Pending => None,
        }
    }

    /// The next delivery (see [`poll_delivery`](Self::poll_delivery)).
    pub async fn next_delivery(&mut self) -> Option<Result<Delivery, Disconnect>> {
        std::future::poll_fn(|cx| self.poll_delivery(cx)).await
    }

    /// End the session: leave every channel and the hub's registry, and wait until the
    /// backplane has been told.
    pub async fn close(mut self) {
        let (hub, client, channels) = self.end();
        cleanup(hub, client, channels).await;
    }

    /// Mark the session ended and take what cleaning up needs.
    fn end(&mut self) -> (Arc<Hub>, ClientId, Vec<String>) {
        self.ended = true;
        // A consumer dropped before it took the overflow from its queue (its writes
        // timed out first) is a slow consumer too.
        if !self.slow_counted && self.queue.overflowed() {
            self.slow_counted = true;
            self.hub
                .metrics()
                .slow_consumers
                .fetch_add(1, Ordering::Relaxed);
        }
        self.queue.close();
        self.hub.unregister(self.info.client);
        self.frontend.connections.fetch_sub(1, Ordering::Relaxed);
        for (queue, key) in std::mem::take(&mut self.consumers) {
            self.hub.queues().cancel(&queue, self.info.client, key);
        }
        let channels = std::mem::take(&mut self.subscriptions);
        self.hub
            .metrics()
            .subscriptions
            .fetch_sub(channels.len() as i64, Ordering::Relaxed);
        (self.hub.clone(), self.info.client, channels)
    }
}

async fn cleanup(hub: Arc<Hub>, client: ClientId, channels: Vec<String>) {
    for ch in channels {
        let _ = hub.unsubscribe_client(&ch, client).await;
    }
}

impl Drop for HubSession {
    fn drop(&mut self) {
        if self.ended {
            return;
        }
        let (hub, client, channels) = self.end();
        if channels.is_empty() {
            return;
        }
        match tokio::runtime::Handle::try_current() {
            Ok(rt) => {
                rt.spawn(cleanup(hub, client, channels));
            }
            // No runtime (the process is ending): this node's broker forgets the
            // subscriptions; the backplane's presence entries expire on their own.
            Err(_) => {
                for ch in channels {
                    hub.forget(&ch, client);
                }
            }
        }
    }
}
