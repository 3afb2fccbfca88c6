//! The Redis backplane: several hub nodes share channel streams, history, presence
//! and delivery through one Redis (7.0 or later).
//!
//! Per channel `C`, with the key prefix `P` (default `wsx`), every key carries the hash
//! tag `{C}`, so that one channel's keys live on one node of a Redis Cluster:
//!
//! | key | type | what |
//! |---|---|---|
//! | `P:{C}:m` | hash | the stream's meta: `o` (last offset), `e` (epoch) |
//! | `P:{C}:s` | stream | history: entry id `0-<offset>`, fields `d` (payload), `t` (ms) |
//! | `P:{C}:p` | hash | presence: client id → member (JSON) |
//! | `P:{C}:x` | sorted set | presence expiry: client id → deadline (ms) |
//! | `P:{C}` | pub/sub channel | `p<epoch>` + `:<offset>:<length>:<payload>` per publication, `j<member>`, `l<member>` |
//!
//! A publication is one step of a Lua script (atomic): next offset, epoch created if
//! missing, history appended and trimmed (`MAXLEN`, TTL), the message published; the
//! publications waiting at a moment go in one script call (up to 512, up to 4 calls in
//! flight), so a busy node makes few round trips and a lone publication waits for none. Every node that
//! has subscribers of `C` subscribes to `P:{C}` on a dedicated RESP3 connection and
//! hands what arrives to its broker, in the order Redis sends it (offset order, since
//! the script publishes in the order it assigns offsets). Commands from all sessions
//! share one multiplexed connection.
//!
//! Epoch: a random string written beside the offset when the meta is created. A Redis
//! restart that kept its data (AOF, RDB) keeps both; one that lost them starts a new
//! epoch at the next publication or history read, and recovery then says
//! `recovered: false` instead of giving a partial stream.
//!
//! Faults: every command has a timeout ([`RedisConfig::timeout`]); a failure is
//! [`BackplaneError::Unavailable`]. Both connections reconnect by themselves. After the
//! pub/sub connection drops, a node cannot know what it missed: when it has resubscribed
//! it compares each channel's offset in Redis with the last one it delivered, and on a
//! difference (or an offset that jumps while connected) it tells the channel's local
//! subscribers to recover ([`Event::Lost`]: they reconnect, 3011, and recover exactly).
//!
//! Presence: each member has a deadline `presence_ttl` ahead; the node holding the
//! connection renews its members every third of that (and writes them again after a
//! Redis restart lost them). Reading presence, and every renewal, first removes the
//! members whose deadline passed (a node that died) and publishes their leaves.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock, Weak};
use std::time::Duration;

use bytes::Bytes;
use redis::aio::ConnectionManager;
use redis::{Client, IntoConnectionInfo, ProtocolVersion, PushInfo, PushKind, Script, Value};
use tokio::sync::mpsc;

use crate::hub::backplane::{
    Backplane, BackplaneError, BoxFuture, Deliver, Event, HistoryPage, HistoryQuery, NodeId,
};
use crate::hub::client::{ClientId, ClientInfo};
use crate::hub::options::ChannelOptions;
use crate::hub::publication::{Payload, PayloadKind, Publication, StreamPosition};
use crate::hub::shards::lock;

/// How to reach Redis and what to keep there.
#[derive(Debug, Clone)]
pub struct RedisConfig {
    /// `redis://[user:password@]host:port[/db]` or `rediss://...` (TLS).
    pub url: String,
    /// A Redis Cluster's seed nodes (URLs as above); when given, `url` is not used,
    /// and channels spread over the cluster's slots with sharded pub/sub.
    pub cluster: Vec<String>,
    /// For `rediss://`: the CA certificate(s) to trust (PEM) instead of the system's.
    pub ca: Option<Vec<u8>>,
    /// The prefix of every key and channel name (several clusters can share a Redis).
    pub prefix: String,
    /// Longest wait for a command's reply, and for a connection; an operation that
    /// takes longer fails (the client gets "unavailable").
    pub timeout: Duration,
    /// How long a member stays in presence unless its node renews it: a node that
    /// dies leaves no ghost members after this.
    pub presence_ttl: Duration,
    /// How long a channel's offset and epoch are kept after its last publication (at
    /// least its history's TTL).
    pub meta_ttl: Duration,
}

impl Default for RedisConfig {
    fn default() -> Self {
        RedisConfig {
            url: "redis://127.0.0.1:6379".into(),
            cluster: Vec::new(),
            ca: None,
            prefix: "wsx".into(),
            timeout: Duration::from_secs(2),
            presence_ttl: Duration::from_secs(30),
            meta_ttl: Duration::from_secs(7 * 24 * 3600),
        }
    }
}

/// Publish a batch (one script call for many publications, so that a busy node sends
/// few round trips): publication `i` has the keys `2i+1` (meta) and `2i+2` (stream)
/// and the arguments `6i+1` to `6i+6` (payload, history size, history TTL in ms, meta
/// TTL in s, an epoch to use if the stream has none, pub/sub channel). For each: the
/// next offset, the epoch created if missing, history appended and trimmed, the
/// message published: one `PUBLISH` per channel per batch, carrying all of the
/// channel's publications in it (`p<epoch>` then `:<offset>:<length>:<payload>` each).
/// Returns the offsets.
const PUBLISH_BATCH: &str = r"
local t = redis.call('TIME')
local now = t[1] * 1000 + math.floor(t[2] / 1000)
local out, groups, order = {}, {}, {}
for i = 0, #KEYS / 2 - 1 do
  local meta = KEYS[2 * i + 1]
  if not groups[meta] then
    groups[meta] = {}
    order[#order + 1] = meta
  end
  local g = groups[meta]
  g[#g + 1] = i
end
for _, meta in ipairs(order) do
  local g = groups[meta]
  local stream, a = KEYS[2 * g[1] + 2], 6 * g[1]
  local e = redis.call('HGET', meta, 'e')
  if not e then
    e = ARGV[a + 5]
    redis.call('HSET', meta, 'e', e)
    redis.call('DEL', stream)
  end
  local o = redis.call('HINCRBY', meta, 'o', #g) - #g
  redis.call('EXPIRE', meta, ARGV[a + 4])
  local size = tonumber(ARGV[a + 2])
  local parts = {'p', e}
  for _, i in ipairs(g) do
    o = o + 1
    local d = ARGV[6 * i + 1]
    if size > 0 then
      redis.call('XADD', stream, '0-' .. o, 'd', d, 't', now)
    end
    parts[#parts + 1] = ':' .. o .. ':' .. #d .. ':'
    parts[#parts + 1] = d
    out[i + 1] = o
  end
  if size > 0 then
    redis.call('XTRIM', stream, 'MAXLEN', size)
    redis.call('PEXPIRE', stream, ARGV[a + 3])
  end
  redis.call('{PUBLISH}', ARGV[a + 6], table.concat(parts))
end
return out
";

const HISTORY: &str = r"
local e = redis.call('HGET', KEYS[1], 'e')
if not e then
  e = ARGV[5]
  redis.call('HSET', KEYS[1], 'e', e)
  redis.call('EXPIRE', KEYS[1], ARGV[6])
  redis.call('DEL', KEYS[2])
end
local o = tonumber(redis.call('HGET', KEYS[1], 'o') or '0')
local ttl = tonumber(ARGV[4])
local t = redis.call('TIME')
local now = t[1] * 1000 + math.floor(t[2] / 1000)
while true do
  local head = redis.call('XRANGE', KEYS[2], '-', '+', 'COUNT', 64)
  local cut = nil
  for _, ent in ipairs(head) do
    if tonumber(ent[2][4]) + ttl <= now then cut = ent[1] else break end
  end
  if cut == nil then break end
  redis.call('XTRIM', KEYS[2], 'MINID', '0-' .. (tonumber(string.sub(cut, 3)) + 1))
  if cut ~= head[#head][1] then break end
end
local first = o + 1
local oldest = redis.call('XRANGE', KEYS[2], '-', '+', 'COUNT', 1)
if #oldest > 0 then first = tonumber(string.sub(oldest[1][1], 3)) end
local out = {o, e, first}
local limit = tonumber(ARGV[2])
if limit > 0 then
  local lo = '-'
  if tonumber(ARGV[1]) >= 0 then lo = '(0-' .. ARGV[1] end
  local ents
  if ARGV[3] == '1' then
    ents = redis.call('XREVRANGE', KEYS[2], '+', lo, 'COUNT', limit)
  else
    ents = redis.call('XRANGE', KEYS[2], lo, '+', 'COUNT', limit)
  end
  for _, ent in ipairs(ents) do
    out[#out + 1] = tonumber(string.sub(ent[1], 3))
    out[#out + 1] = ent[2][2]
  end
end
return out
";

/// Remove the members whose deadline passed (publishing their leaves), then add or
/// renew the members given as (client, member) pairs from ARGV[5]. A join or a renewal
/// gets back how many it set; only a read (no members given) gets every member: a join
/// answered with the whole channel would cost O(members) each, O(members²) to fill it.
const PRESENCE_SET: &str = r"
local t = redis.call('TIME')
local now = t[1] * 1000 + math.floor(t[2] / 1000)
local dead = redis.call('ZRANGEBYSCORE', KEYS[2], '-inf', now)
for _, c in ipairs(dead) do
  local m = redis.call('HGET', KEYS[1], c)
  redis.call('HDEL', KEYS[1], c)
  if m and ARGV[4] == '1' then redis.call('{PUBLISH}', ARGV[3], 'l' .. m) end
end
if #dead > 0 then redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', now) end
local n = 0
for i = 5, #ARGV, 2 do
  redis.call('HSET', KEYS[1], ARGV[i], ARGV[i + 1])
  redis.call('ZADD', KEYS[2], now + tonumber(ARGV[1]), ARGV[i])
  n = n + 1
end
if n > 0 then
  redis.call('EXPIRE', KEYS[1], ARGV[2])
  redis.call('EXPIRE', KEYS[2], ARGV[2])
  return n
end
return redis.call('HVALS', KEYS[1])
";

/// The node registry: this node's heartbeat in, nodes silent for ARGV[2] ms out; the
/// number of live nodes.
const HEARTBEAT: &str = r"
local t = redis.call('TIME')
local now = t[1] * 1000 + math.floor(t[2] / 1000)
redis.call('ZADD', KEYS[1], now, ARGV[1])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now - tonumber(ARGV[2]))
return redis.call('ZCARD', KEYS[1])
";

/// Work queues (keys of queue Q, all with the hash tag {Q}): `qs` the id counter, `qm`
/// id → payload, `qr` the ids waiting (a list), `qt:<node>` the ids a node took, `qre`
/// the ids handed out before, `qtakers` the nodes that took some.
const QPUSH: &str = r"
if redis.call('LLEN', KEYS[3]) >= tonumber(ARGV[2]) then return -1 end
local id = redis.call('INCR', KEYS[1])
redis.call('HSET', KEYS[2], id, ARGV[1])
redis.call('RPUSH', KEYS[3], id)
return id
";

const QPULL: &str = r"
local id = redis.call('LPOP', KEYS[1])
if not id then return false end
redis.call('RPUSH', KEYS[2], id)
redis.call('SADD', KEYS[5], ARGV[1])
return {id, redis.call('HGET', KEYS[3], id) or '', redis.call('SISMEMBER', KEYS[4], id)}
";

const QDONE: &str = r"
for i = 1, #ARGV do
  redis.call('LREM', KEYS[1], 0, ARGV[i])
  redis.call('HDEL', KEYS[2], ARGV[i])
  redis.call('SREM', KEYS[3], ARGV[i])
end
return 0
";

/// Ids a node took back to the front of the waiting list (oldest first), redelivered;
/// with ARGV empty, every id of KEYS[1] (a dead node's), which is then forgotten.
const QBACK: &str = r"
local ids = ARGV
if #ids == 0 then ids = redis.call('LRANGE', KEYS[1], 0, -1) end
local n = 0
for i = #ids, 1, -1 do
  if redis.call('LREM', KEYS[1], 0, ids[i]) > 0 then
    redis.call('LPUSH', KEYS[2], ids[i])
    redis.call('SADD', KEYS[3], ids[i])
    n = n + 1
  end
end
return n
";

const LEAVE: &str = r"
local m = redis.call('HGET', KEYS[1], ARGV[1])
redis.call('HDEL', KEYS[1], ARGV[1])
redis.call('ZREM', KEYS[2], ARGV[1])
if m and ARGV[3] == '1' then redis.call('{PUBLISH}', ARGV[2], 'l' .. m) end
return m
";

fn unavailable(e: redis::RedisError) -> BackplaneError {
    BackplaneError::Unavailable(format!("redis: {e}"))
}

fn fresh_epoch() -> String {
    format!("{:016x}", rand::random::<u64>())
}

/// A payload as stored and published: kind, headers, bytes.
fn encode_payload(p: &Payload) -> Vec<u8> {
    let mut out = Vec::with_capacity(p.data.len() + 8);
    out.push(match p.kind {
        PayloadKind::Json => b'j',
        PayloadKind::Text => b't',
        PayloadKind::Binary => b'b',
    });
    out.extend_from_slice(&(p.headers.len() as u16).to_be_bytes());
    for (k, v) in &p.headers {
        out.extend_from_slice(&(k.len() as u32).to_be_bytes());
        out.extend_from_slice(k.as_bytes());
        out.extend_from_slice(&(v.len() as u32).to_be_bytes());
        out.extend_from_slice(v.as_bytes());
    }
    out.extend_from_slice(&p.data);
    out
}

fn decode_payload(b: &[u8]) -> Option<Payload> {
    let kind = match *b.first()? {
        b'j' => PayloadKind::Json,
        b't' => PayloadKind::Text,
        b'b' => PayloadKind::Binary,
        _ => return None,
    };
    let n = u16::from_be_bytes(b.get(1..3)?.try_into().ok()?);
    let mut at = 3;
    let take = |at: &mut usize| -> Option<String> {
        let len = u32::from_be_bytes(b.get(*at..*at + 4)?.try_into().ok()?) as usize;
        let s = std::str::from_utf8(b.get(*at + 4..*at + 4 + len)?).ok()?;
        *at += 4 + len;
        Some(s.to_string())
    };
    let mut headers = Vec::with_capacity(n as usize);
    for _ in 0..n {
        let k = take(&mut at)?;
        let v = take(&mut at)?;
        headers.push((k, v));
    }
    Some(Payload {
        kind,
        data: Bytes::copy_from_slice(b.get(at..)?),
        headers,
    })
}

/// A pub/sub message: publications (with their offset and epoch), a join or a leave.
type Events = Vec<(Event, Option<(u64, String)>)>;

fn decode_message(b: &[u8]) -> Option<Events> {
    match *b.first()? {
        b'p' => {
            let field = |rest: &[u8]| -> Option<(usize, usize)> {
                let c = rest.iter().position(|&c| c == b':')?;
                Some((std::str::from_utf8(&rest[..c]).ok()?.parse().ok()?, c + 1))
            };
            let c = b.iter().position(|&c| c == b':')?;
            let epoch = std::str::from_utf8(&b[1..c]).ok()?.to_string();
            let mut rest = &b[c + 1..];
            let mut out = Vec::new();
            while !rest.is_empty() {
                let (offset, n) = field(rest)?;
                let (len, m) = field(&rest[n..])?;
                let start = n + m;
                let payload = decode_payload(rest.get(start..start + len)?)?;
                let p = Arc::new(Publication::new(offset as u64, payload));
                out.push((Event::Publication(p), Some((offset as u64, epoch.clone()))));
                rest = &rest[start + len..];
                match rest.first() {
                    Some(b':') => rest = &rest[1..],
                    None => {}
                    Some(_) => return None,
                }
            }
            Some(out)
        }
        b'j' => Some(vec![(
            Event::Join(Arc::new(serde_json::from_slice(&b[1..]).ok()?)),
            None,
        )]),
        b'l' => Some(vec![(
            Event::Leave(Arc::new(serde_json::from_slice(&b[1..]).ok()?)),
            None,
        )]),
        _ => None,
    }
}

/// The command connection: one Redis, or a Redis Cluster (commands routed by their
/// keys' slot).
#[derive(Clone)]
enum Conn {
    Single(ConnectionManager),
    Cluster(redis::cluster_async::ClusterConnection),
}

impl redis::aio::ConnectionLike for Conn {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a redis::Cmd) -> redis::RedisFuture<'a, Value> {
        match self {
            Conn::Single(c) => c.req_packed_command(cmd),
            Conn::Cluster(c) => c.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        cmd: &'a redis::Pipeline,
        offset: usize,
        count: usize,
    ) -> redis::RedisFuture<'a, Vec<Value>> {
        match self {
            Conn::Single(c) => c.req_packed_commands(cmd, offset, count),
            Conn::Cluster(c) => c.req_packed_commands(cmd, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Conn::Single(c) => c.get_db(),
            Conn::Cluster(c) => c.get_db(),
        }
    }
}

impl Conn {
    /// Subscribe to a channel's topic: sharded pub/sub on a cluster (the shard that
    /// holds the channel's keys), classic otherwise.
    async fn listen(&mut self, topic: String) -> redis::RedisResult<()> {
        match self {
            Conn::Single(c) => c.subscribe(topic).await,
            Conn::Cluster(c) => c.ssubscribe(topic).await,
        }
    }

    async fn unlisten(&mut self, topic: String) -> redis::RedisResult<()> {
        match self {
            Conn::Single(c) => c.unsubscribe(topic).await,
            Conn::Cluster(c) => c.sunsubscribe(topic).await,
        }
    }

    /// Subscribe to a node-wide topic (surveys): classic pub/sub, which a cluster
    /// broadcasts to every shard.
    async fn listen_everywhere(&mut self, topic: String) -> redis::RedisResult<()> {
        match self {
            Conn::Single(c) => c.subscribe(topic).await,
            Conn::Cluster(c) => c.subscribe(topic).await,
        }
    }

    fn is_cluster(&self) -> bool {
        matches!(self, Conn::Cluster(_))
    }
}

/// This node's presence entries of one channel: whether the namespace sends joins and
/// leaves, and the members (client → member JSON).
#[derive(Debug, Default, Clone)]
struct LocalMembers {
    join_leave: bool,
    members: HashMap<ClientId, String>,
}

/// What the node knows of a channel it listens on.
#[derive(Debug, Default)]
struct Track {
    /// The last publication delivered (offset, epoch).
    last: Option<(u64, String)>,
    /// The stream's offset and epoch when listening started (before any delivery).
    baseline: Option<(u64, String)>,
    /// The pub/sub connection dropped since: check for a gap once resubscribed.
    suspect: bool,
}

struct Inner {
    cfg: RedisConfig,
    /// Commands (multiplexed: concurrent ones are pipelined).
    conn: Conn,
    /// Pub/sub (RESP3; its pushes go to the delivery task).
    sub: Conn,
    /// The command that publishes to a channel's topic: `PUBLISH`, or `SPUBLISH` on a
    /// cluster.
    publish_cmd: &'static str,
    node: NodeId,
    deliver: OnceLock<Arc<dyn Deliver>>,
    /// Channels this node listens on.
    tracks: Mutex<HashMap<String, Track>>,
    /// This node's presence entries, renewed periodically, by channel.
    members: Mutex<HashMap<String, LocalMembers>>,
    /// Surveys waiting for answers, by request id.
    surveys: Mutex<HashMap<u64, mpsc::UnboundedSender<Vec<u8>>>>,
    next_survey: std::sync::atomic::AtomicU64,
    /// What other nodes said of their lag lately.
    lagging: Mutex<HashMap<NodeId, Heard>>,
    /// Told when a node says it is, or no longer is, behind.
    lag_changed: tokio::sync::Notify,
    /// What this node last said of its own lag.
    lag_said: Mutex<Said>,
    /// Publications waiting to be sent in a batch.
    batch: mpsc::Sender<Pending>,
    publish_batch: Script,
    heartbeat: Script,
    /// Nodes alive at the last heartbeat (how many answers a survey waits for on a
    /// cluster, where `PUBLISH` counts only one shard's subscribers).
    live_nodes: AtomicUsize,
    history: Script,
    presence_set: Script,
    leave: Script,
    qpush: Script,
    qpull: Script,
    qdone: Script,
    qback: Script,
}

/// The Redis backplane. See the module documentation.
#[derive(Clone)]
pub struct RedisBackplane {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for RedisBackplane {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisBackplane")
            .field("prefix", &self.inner.cfg.prefix)
            .field("node", &self.inner.node)
            .finish()
    }
}

impl RedisBackplane {
    /// Connect (both connections), take a node id, and start the delivery and
    /// presence-renewal tasks (on the current tokio runtime).
    pub async fn connect(cfg: RedisConfig) -> Result<RedisBackplane, BackplaneError> {
        let (tx, rx) = mpsc::unbounded_channel();
        let (conn, sub) = if cfg.cluster.is_empty() {
            Self::connect_single(&cfg, tx).await?
        } else {
            Self::connect_cluster(&cfg, tx).await?
        };
        let (batch_tx, batch_rx) = mpsc::channel(4096);
        let node: u64 = redis::cmd("INCR")
            .arg(format!("{}:node-seq", cfg.prefix))
            .query_async(&mut conn.clone())
            .await
            .map_err(unavailable)?;
        let publish_cmd = if conn.is_cluster() {
            "SPUBLISH"
        } else {
            "PUBLISH"
        };
        let script = |src: &str| Script::new(&src.replace("{PUBLISH}", publish_cmd));
        let inner = Arc::new(Inner {
            cfg,
            conn,
            sub,
            publish_cmd,
            node,
            deliver: OnceLock::new(),
            tracks: Mutex::new(HashMap::new()),
            members: Mutex::new(HashMap::new()),
            surveys: Mutex::new(HashMap::new()),
            next_survey: std::sync::atomic::AtomicU64::new(1),
            lagging: Mutex::new(HashMap::new()),
            lag_changed: tokio::sync::Notify::new(),
            lag_said: Mutex::new(Said::default()),
            batch: batch_tx,
            publish_batch: script(PUBLISH_BATCH),
            heartbeat: script(HEARTBEAT),
            live_nodes: AtomicUsize::new(1),
            history: script(HISTORY),
            presence_set: script(PRESENCE_SET),
            leave: script(LEAVE),
            qpush: script(QPUSH),
            qpull: script(QPULL),
            qdone: script(QDONE),
            qback: script(QBACK),
        });
        // Surveys to this node, and answers to its own.
        let mut sub = inner.sub.clone();
        sub.listen_everywhere(inner.survey_topic())
            .await
            .map_err(unavailable)?;
        sub.listen_everywhere(inner.reply_topic(inner.node))
            .await
            .map_err(unavailable)?;
        sub.listen_everywhere(inner.queue_topic())
            .await
            .map_err(unavailable)?;
        sub.listen_everywhere(inner.lag_topic())
            .await
            .map_err(unavailable)?;
        inner.heartbeat().await?;
        tokio::spawn(pushes(Arc::downgrade(&inner), rx));
        tokio::spawn(batches(Arc::downgrade(&inner), batch_rx));
        tokio::spawn(upkeep(Arc::downgrade(&inner)));
        Ok(RedisBackplane { inner })
    }

    /// This node's id in the cluster (unique among the nodes sharing the prefix).
    pub fn node(&self) -> NodeId {
        self.inner.node
    }

    fn certs(ca: &[u8]) -> redis::TlsCertificates {
        redis::TlsCertificates {
            client_tls: None,
            root_cert: Some(ca.to_vec()),
        }
    }

    async fn connect_single(
        cfg: &RedisConfig,
        push: mpsc::UnboundedSender<PushInfo>,
    ) -> Result<(Conn, Conn), BackplaneError> {
        let info = cfg
            .url
            .as_str()
            .into_connection_info()
            .map_err(unavailable)?;
        let resp3 = info
            .redis_settings()
            .clone()
            .set_protocol(ProtocolVersion::RESP3);
        let info = info.set_redis_settings(resp3);
        let client = match &cfg.ca {
            Some(ca) => Client::build_with_tls(info, Self::certs(ca)),
            None => Client::open(info),
        }
        .map_err(unavailable)?;
        let manager = |push: Option<mpsc::UnboundedSender<PushInfo>>| {
            let mut c = redis::aio::ConnectionManagerConfig::new()
                .set_response_timeout(Some(cfg.timeout))
                .set_connection_timeout(Some(cfg.timeout))
                .set_number_of_retries(3)
                .set_max_delay(Duration::from_secs(1));
            if let Some(tx) = push {
                c = c.set_push_sender(tx).set_automatic_resubscription();
            }
            ConnectionManager::new_with_config(client.clone(), c)
        };
        let conn = manager(None).await.map_err(unavailable)?;
        let sub = manager(Some(push)).await.map_err(unavailable)?;
        Ok((Conn::Single(conn), Conn::Single(sub)))
    }

    async fn connect_cluster(
        cfg: &RedisConfig,
        push: mpsc::UnboundedSender<PushInfo>,
    ) -> Result<(Conn, Conn), BackplaneError> {
        let builder = || {
            let b = redis::cluster::ClusterClientBuilder::new(cfg.cluster.clone())
                .use_protocol(ProtocolVersion::RESP3)
                .connection_timeout(cfg.timeout)
                .response_timeout(cfg.timeout);
            match &cfg.ca {
                Some(ca) => b.certs(Self::certs(ca)),
                None => b,
            }
        };
        let conn = builder()
            .build()
            .map_err(unavailable)?
            .get_async_connection()
            .await
            .map_err(unavailable)?;
        let sub = builder()
            .push_sender(push)
            .build()
            .map_err(unavailable)?
            .get_async_connection()
            .await
            .map_err(unavailable)?;
        Ok((Conn::Cluster(conn), Conn::Cluster(sub)))
    }
}

impl Inner {
    /// A command on the command connection; a failure is `Unavailable`.
    async fn query<T: redis::FromRedisValue>(&self, cmd: &redis::Cmd) -> Result<T, BackplaneError> {
        cmd.query_async(&mut self.conn.clone())
            .await
            .map_err(unavailable)
    }

    /// A script call on the command connection; a failure is `Unavailable`.
    async fn invoke<T: redis::FromRedisValue>(
        &self,
        inv: &redis::ScriptInvocation<'_>,
    ) -> Result<T, BackplaneError> {
        inv.invoke_async(&mut self.conn.clone())
            .await
            .map_err(unavailable)
    }

    fn key(&self, channel: &str, suffix: &str) -> String {
        format!("{}:{{{channel}}}:{suffix}", self.cfg.prefix)
    }

    fn topic(&self, channel: &str) -> String {
        format!("{}:{{{channel}}}", self.cfg.prefix)
    }

    /// The channel a pub/sub name belongs to.
    fn channel_of<'a>(&self, topic: &'a str) -> Option<&'a str> {
        topic
            .strip_prefix(self.cfg.prefix.as_str())?
            .strip_prefix(":{")?
            .strip_suffix('}')
    }

    /// Record that this node is alive (every second); learn how many are.
    async fn heartbeat(&self) -> Result<(), BackplaneError> {
        let n: usize = self
            .invoke(
                self.heartbeat
                    .key(format!("{}:nodes", self.cfg.prefix))
                    .arg(self.node)
                    .arg(3000),
            )
            .await?;
        self.live_nodes.store(n.max(1), Ordering::Relaxed);
        Ok(())
    }

    /// Work queues' wake-ups: a queue's name when it has new messages.
    fn queue_topic(&self) -> String {
        format!("{}:queues-ready", self.cfg.prefix)
    }

    fn qkey(&self, queue: &str, suffix: &str) -> String {
        format!("{}:{{{queue}}}:{suffix}", self.cfg.prefix)
    }

    /// Ids this node took from `queue`, done (`QDONE`, with the payloads' hash) or
    /// given back (`QBACK`, with the waiting list): the script, its second key.
    async fn settle(
        &self,
        script: &Script,
        queue: &str,
        second: &str,
        ids: Vec<u64>,
    ) -> Result<(), BackplaneError> {
        let mut inv = script.prepare_invoke();
        inv.key(self.qkey(queue, &format!("qt:{}", self.node)))
            .key(self.qkey(queue, second))
            .key(self.qkey(queue, "qre"));
        for id in ids {
            inv.arg(id);
        }
        let _: Value = self.invoke(&inv).await?;
        Ok(())
    }

    async fn queue_wake(&self, queue: &str) {
        let _: Result<Value, _> = redis::cmd("PUBLISH")
            .arg(self.queue_topic())
            .arg(queue)
            .query_async(&mut self.conn.clone())
            .await;
    }

    /// Give back what dead nodes took from the work queues (every few seconds).
    async fn reclaim(&self) -> Result<(), BackplaneError> {
        let queues: Vec<String> = self
            .query(redis::cmd("SMEMBERS").arg(format!("{}:queues", self.cfg.prefix)))
            .await?;
        if queues.is_empty() {
            return Ok(());
        }
        let alive: Vec<NodeId> = self
            .query(
                redis::cmd("ZRANGE")
                    .arg(format!("{}:nodes", self.cfg.prefix))
                    .arg(0)
                    .arg(-1),
            )
            .await?;
        for q in queues {
            let takers: Vec<NodeId> = self
                .query(redis::cmd("SMEMBERS").arg(self.qkey(&q, "qtakers")))
                .await?;
            for dead in takers.into_iter().filter(|n| !alive.contains(n)) {
                let n: usize = self
                    .invoke(
                        self.qback
                            .key(self.qkey(&q, &format!("qt:{dead}")))
                            .key(self.qkey(&q, "qr"))
                            .key(self.qkey(&q, "qre")),
                    )
                    .await?;
                let _: Value = self
                    .query(redis::cmd("SREM").arg(self.qkey(&q, "qtakers")).arg(dead))
                    .await?;
                if n > 0 {
                    tracing::warn!(
                        queue = q,
                        node = dead,
                        "{n} messages of a node that is gone go back to the queue"
                    );
                    self.queue_wake(&q).await;
                }
            }
        }
        Ok(())
    }

    fn survey_topic(&self) -> String {
        format!("{}:survey", self.cfg.prefix)
    }

    fn lag_topic(&self) -> String {
        format!("{}:lag", self.cfg.prefix)
    }

    /// A node says it is behind its deliveries (`<node>:1`) or no longer is (`<node>:0`).
    fn on_lag(&self, body: &[u8]) {
        let Some((node, state)) = std::str::from_utf8(body)
            .ok()
            .and_then(|b| b.split_once(':'))
        else {
            return;
        };
        let Ok(node) = node.parse::<NodeId>() else {
            return;
        };
        if node == self.node {
            return;
        }
        let mut lagging = lock(&self.lagging);
        let now = std::time::Instant::now();
        if state == "1" {
            lagging.insert(
                node,
                Heard {
                    behind: true,
                    at: now,
                    credit: None,
                },
            );
        } else if let Some(h) = lagging.get_mut(&node) {
            h.behind = false;
            h.credit = None;
        }
        drop(lagging);
        self.lag_changed.notify_waiters();
    }

    /// Tell the other nodes whether this one is behind: a change at once, a `true` again
    /// every [`LAG_REPEAT`] while it lasts, a `false` again every [`LAG_CLEAR_REPEAT`]
    /// while on probation; nothing else.
    async fn say_lag(&self, lagging: bool) {
        {
            let mut said = lock(&self.lag_said);
            let now = std::time::Instant::now();
            let probation = said.behind_at.is_some_and(|t| t.elapsed() < LAG_FRESH);
            let due = match said.last {
                Some((was, _)) if was != lagging => true,
                Some((_, at)) if lagging => at.elapsed() >= LAG_REPEAT,
                Some((_, at)) => probation && at.elapsed() >= LAG_CLEAR_REPEAT,
                None => lagging,
            };
            if !due {
                return;
            }
            said.last = Some((lagging, now));
            if lagging {
                said.behind_at = Some(now);
            }
        }
        let msg = format!("{}:{}", self.node, u8::from(lagging));
        let sent: Result<usize, _> = redis::cmd("PUBLISH")
            .arg(self.lag_topic())
            .arg(msg)
            .query_async(&mut self.conn.clone())
            .await;
        if let Err(e) = sent {
            tracing::debug!("could not tell the other nodes this one's lag: {e}");
            // Say it again next time.
            lock(&self.lag_said).last = None;
        }
    }

    /// Whether to hold a publisher for another node's lag: until when, if so. A node
    /// behind holds it until it says otherwise or [`LAG_FRESH`] after it last said so (a
    /// node that died stops counting); one that said it caught up lets `depth`
    /// publications go, then holds the next until it speaks again.
    fn others_lagging(&self, depth: usize) -> Option<std::time::Instant> {
        let mut lagging = lock(&self.lagging);
        lagging.retain(|_, h| h.at.elapsed() < LAG_FRESH);
        let mut until = None;
        for h in lagging.values_mut() {
            if h.behind || *h.credit.get_or_insert(depth) == 0 {
                until = until.max(Some(h.at + LAG_FRESH));
            }
        }
        until
    }

    /// A publication went: it uses a credit of every node on probation.
    fn spend_credit(&self) {
        let mut lagging = lock(&self.lagging);
        for h in lagging.values_mut() {
            if let Some(c) = &mut h.credit {
                *c = c.saturating_sub(1);
            }
        }
    }

    fn reply_topic(&self, node: NodeId) -> String {
        format!("{}:reply:{node}", self.cfg.prefix)
    }

    /// A survey from a node (`<id>:<node>:<request>`): answer it to that node.
    fn on_survey(self: &Arc<Self>, body: &[u8]) {
        let mut parts = body.splitn(3, |&b| b == b':');
        let (Some(id), Some(from), Some(request)) = (parts.next(), parts.next(), parts.next())
        else {
            return;
        };
        let (Ok(id), Some(from)) = (
            std::str::from_utf8(id).map(str::to_string),
            std::str::from_utf8(from)
                .ok()
                .and_then(|f| f.parse::<NodeId>().ok()),
        ) else {
            return;
        };
        let Some(node) = self.deliver.get().cloned() else {
            return;
        };
        let request = request.to_vec();
        let inner = self.clone();
        tokio::spawn(async move {
            let mut msg = format!("{id}:").into_bytes();
            msg.extend_from_slice(&node.answer(request).await);
            let _: Result<Value, _> = redis::cmd("PUBLISH")
                .arg(inner.reply_topic(from))
                .arg(msg)
                .query_async(&mut inner.conn.clone())
                .await;
        });
    }

    /// An answer to one of this node's surveys (`<id>:<answer>`).
    fn on_reply(&self, body: &[u8]) {
        let Some(colon) = body.iter().position(|&b| b == b':') else {
            return;
        };
        let Some(id) = std::str::from_utf8(&body[..colon])
            .ok()
            .and_then(|i| i.parse::<u64>().ok())
        else {
            return;
        };
        if let Some(tx) = lock(&self.surveys).get(&id) {
            let _ = tx.send(body[colon + 1..].to_vec());
        }
    }

    fn meta_ttl(&self, opts: &ChannelOptions) -> u64 {
        self.cfg.meta_ttl.max(opts.history_ttl).as_secs().max(1)
    }

    fn presence_ms(&self) -> u64 {
        (self.cfg.presence_ttl.as_millis() as u64).max(1)
    }

    /// Add or renew `members` of `channel` (after removing expired ones); with none
    /// given, read: the members now present.
    async fn presence_set(
        &self,
        channel: &str,
        join_leave: bool,
        members: &[(ClientId, String)],
    ) -> Result<Vec<Arc<ClientInfo>>, BackplaneError> {
        let mut inv = self.presence_set.prepare_invoke();
        inv.key(self.key(channel, "p"))
            .key(self.key(channel, "x"))
            .arg(self.presence_ms())
            .arg(self.cfg.presence_ttl.as_secs().max(1) * 2)
            .arg(self.topic(channel))
            .arg(if join_leave { "1" } else { "0" });
        for (c, m) in members {
            inv.arg(c.to_string()).arg(m);
        }
        if !members.is_empty() {
            let _set: u64 = self.invoke(&inv).await?;
            return Ok(Vec::new());
        }
        let all: Vec<Vec<u8>> = self.invoke(&inv).await?;
        Ok(all
            .iter()
            .filter_map(|m| serde_json::from_slice(m).ok().map(Arc::new))
            .collect())
    }

    fn deliver(&self, channel: &str, event: Event) {
        if let Some(d) = self.deliver.get() {
            d.deliver(channel, event);
        }
    }

    /// A message from pub/sub: check offsets, then deliver.
    fn on_message(&self, topic: &str, body: &[u8]) {
        let Some(channel) = self.channel_of(topic) else {
            return;
        };
        let Some(events) = decode_message(body) else {
            tracing::warn!(channel, "undecodable backplane message");
            return;
        };
        for (event, position) in events {
            let mut lost = false;
            if let Some((offset, epoch)) = position {
                let mut tracks = lock(&self.tracks);
                let Some(t) = tracks.get_mut(channel) else {
                    return;
                };
                match (&t.last, &t.baseline) {
                    (Some((last, e)), _) if *e == epoch && offset <= *last => continue,
                    (Some((last, e)), _) => lost = *e != epoch || offset > last + 1,
                    // The first delivery since listening: nothing before it may be
                    // missing since where the stream stood then.
                    (None, Some((base, e))) => {
                        lost = (*base > 0 && *e != epoch)
                            || (*e == epoch || *base == 0) && offset > base + 1
                    }
                    (None, None) => {}
                }
                t.last = Some((offset, epoch));
            }
            if lost {
                tracing::warn!(
                    channel,
                    "publications missed on the backplane: subscribers recover"
                );
                self.deliver(channel, Event::Lost);
            }
            self.deliver(channel, event);
        }
    }

    /// After a resubscription: whether the stream moved on while the node was deaf.
    async fn check_gap(&self, channel: String) {
        let reference = {
            let mut tracks = lock(&self.tracks);
            let Some(t) = tracks.get_mut(&channel) else {
                return;
            };
            if !std::mem::take(&mut t.suspect) {
                return;
            }
            t.last.clone().or_else(|| t.baseline.clone())
        };
        let now = self.position(&channel).await;
        let lost = match (&reference, &now) {
            (_, Err(_)) => true,
            (Some((o, e)), Ok(Some((no, ne)))) => e != ne || no > o,
            (None, Ok(Some((no, _)))) => *no > 0,
            // The stream is gone (Redis lost its data): what was missed is unknown.
            (Some((o, _)), Ok(None)) => *o > 0,
            (None, Ok(None)) => false,
        };
        if lost {
            tracing::warn!(
                channel,
                "the backplane link dropped and the stream moved on: subscribers recover"
            );
            // Start over from here: the next publication is taken as it comes.
            if let Some(t) = lock(&self.tracks).get_mut(&channel) {
                t.last = None;
                t.baseline = now.ok().flatten();
            }
            self.deliver(&channel, Event::Lost);
        }
    }

    /// The stream's offset and epoch in Redis (`None`: no stream).
    async fn position(&self, channel: &str) -> Result<Option<(u64, String)>, BackplaneError> {
        let (o, e): (Option<u64>, Option<String>) = self
            .query(
                redis::cmd("HMGET")
                    .arg(self.key(channel, "m"))
                    .arg("o")
                    .arg("e"),
            )
            .await?;
        Ok(e.map(|e| (o.unwrap_or(0), e)))
    }
}

/// A publication waiting for its batch.
struct Pending {
    meta: String,
    stream: String,
    payload: Vec<u8>,
    history_size: usize,
    history_ttl_ms: u64,
    meta_ttl: u64,
    topic: String,
    done: tokio::sync::oneshot::Sender<Result<u64, BackplaneError>>,
}

/// What a node heard another say of its lag.
struct Heard {
    /// Behind now (as last said).
    behind: bool,
    /// When it last said it was behind.
    at: std::time::Instant,
    /// Since it last said it was not: publications this node may still send before
    /// hearing from it again (`None`: not counted yet, the first wait sets it).
    credit: Option<usize>,
}

/// What this node said of its own lag.
#[derive(Default)]
struct Said {
    /// The last thing said, and when.
    last: Option<(bool, std::time::Instant)>,
    /// When it last said it was behind.
    behind_at: Option<std::time::Instant>,
}

/// Most publications in one script call, and most calls in flight at once.
const BATCH: usize = 512;

/// How long a node's "behind" counts without being said again (it repeats it every
/// [`LAG_REPEAT`] while it lasts).
const LAG_FRESH: std::time::Duration = std::time::Duration::from_secs(1);
const LAG_REPEAT: std::time::Duration = std::time::Duration::from_millis(250);
/// How often a node that caught up says so again while it is still on probation
/// ([`LAG_FRESH`] after it was last behind): each time, the others may send another
/// `pace_depth` publications.
const LAG_CLEAR_REPEAT: std::time::Duration = std::time::Duration::from_millis(50);
/// Longest the delivery task waits to say it is behind (Redis slow or away: the
/// deliveries matter more).
const LAG_SAY_WAIT: std::time::Duration = std::time::Duration::from_millis(100);
const BATCHES_IN_FLIGHT: usize = 4;

/// The publishing task: whatever publications are waiting (up to [`BATCH`]) go in one
/// script call; several calls may be in flight on the multiplexed connection. A lone
/// publication goes at once, alone: batching costs no latency.
async fn batches(inner: Weak<Inner>, mut rx: mpsc::Receiver<Pending>) {
    let slots = Arc::new(tokio::sync::Semaphore::new(BATCHES_IN_FLIGHT));
    loop {
        let Ok(slot) = slots.clone().acquire_owned().await else {
            return;
        };
        let mut batch = Vec::with_capacity(BATCH);
        if rx.recv_many(&mut batch, BATCH).await == 0 {
            return;
        }
        let Some(inner) = inner.upgrade() else {
            return;
        };
        // A script's keys must share a slot on a cluster: one call per slot there.
        let groups: Vec<Vec<Pending>> = if inner.conn.is_cluster() {
            let mut by_slot: HashMap<redis::cluster_routing::Slot, Vec<Pending>> = HashMap::new();
            for p in batch {
                by_slot
                    .entry(redis::cluster_routing::Slot::for_key(&p.meta))
                    .or_default()
                    .push(p);
            }
            by_slot.into_values().collect()
        } else {
            vec![batch]
        };
        let slot = Arc::new(slot);
        for group in groups {
            let (inner, slot) = (inner.clone(), slot.clone());
            tokio::spawn(async move {
                send_batch(&inner, group).await;
                drop(slot);
            });
        }
    }
}

/// One script call for `batch`; each publication learns its offset or the error.
async fn send_batch(inner: &Inner, batch: Vec<Pending>) {
    let mut inv = inner.publish_batch.prepare_invoke();
    for p in &batch {
        inv.key(&p.meta).key(&p.stream);
    }
    for p in &batch {
        inv.arg(&p.payload)
            .arg(p.history_size)
            .arg(p.history_ttl_ms)
            .arg(p.meta_ttl)
            .arg(fresh_epoch())
            .arg(&p.topic);
    }
    let r: Result<Vec<u64>, _> = inv.invoke_async(&mut inner.conn.clone()).await;
    match r {
        Ok(offsets) if offsets.len() == batch.len() => {
            for (p, o) in batch.into_iter().zip(offsets) {
                let _ = p.done.send(Ok(o));
            }
        }
        Ok(_) => {
            for p in batch {
                let _ = p.done.send(Err(BackplaneError::Unavailable(
                    "redis: malformed publish reply".into(),
                )));
            }
        }
        Err(e) => {
            for p in batch {
                let _ = p.done.send(Err(unavailable(e.clone())));
            }
        }
    }
}

/// The delivery task: pub/sub pushes to the broker, in order.
async fn pushes(inner: Weak<Inner>, mut rx: mpsc::UnboundedReceiver<PushInfo>) {
    // This node's own topics, named once (not four strings per message).
    let Some([queue, survey, lag, reply]) = inner.upgrade().map(|i| {
        [
            i.queue_topic(),
            i.survey_topic(),
            i.lag_topic(),
            i.reply_topic(i.node),
        ]
    }) else {
        return;
    };
    while let Some(push) = rx.recv().await {
        let Some(inner) = inner.upgrade() else {
            return;
        };
        match push.kind {
            PushKind::Message | PushKind::SMessage => {
                if let [Value::BulkString(topic), Value::BulkString(body)] = push.data.as_slice() {
                    if let Ok(topic) = std::str::from_utf8(topic) {
                        if topic == queue {
                            if let (Some(d), Ok(q)) =
                                (inner.deliver.get(), std::str::from_utf8(body))
                            {
                                d.queue_ready(q);
                            }
                        } else if topic == survey {
                            inner.on_survey(body);
                        } else if topic == lag {
                            inner.on_lag(body);
                        } else if topic == reply {
                            inner.on_reply(body);
                        } else {
                            inner.on_message(topic, body);
                            // Behind now: say so before delivering more, however busy
                            // the event loop is (its own reports wait their turn).
                            if inner.deliver.get().is_some_and(|d| d.behind()) {
                                let _ =
                                    tokio::time::timeout(LAG_SAY_WAIT, inner.say_lag(true)).await;
                            }
                        }
                    }
                }
            }
            PushKind::Disconnection => {
                tracing::warn!("the backplane's pub/sub connection dropped; reconnecting");
                for t in lock(&inner.tracks).values_mut() {
                    t.suspect = true;
                }
            }
            PushKind::Subscribe | PushKind::SSubscribe => {
                let channel = match push.data.first() {
                    Some(Value::BulkString(topic)) => std::str::from_utf8(topic)
                        .ok()
                        .and_then(|t| inner.channel_of(t))
                        .map(str::to_string),
                    _ => None,
                };
                if let Some(channel) = channel {
                    let suspect = lock(&inner.tracks).get(&channel).is_some_and(|t| t.suspect);
                    if suspect {
                        let inner = inner.clone();
                        tokio::spawn(async move { inner.check_gap(channel).await });
                    }
                }
            }
            _ => {}
        }
    }
}

/// Every third of the presence TTL: renew this node's members (and write them again
/// if Redis lost them), sweep expired ones; and ping the pub/sub connection, so that a
/// link that died silently is found and reconnected.
async fn upkeep(inner: Weak<Inner>) {
    let every = match inner.upgrade() {
        Some(i) => (i.cfg.presence_ttl / 3).max(Duration::from_millis(100)),
        None => return,
    };
    let mut tick = tokio::time::interval(every.min(Duration::from_secs(1)));
    let mut since_renewal = Duration::ZERO;
    let mut ticks: u64 = 0;
    loop {
        tick.tick().await;
        let Some(inner) = inner.upgrade() else {
            return;
        };
        let _: Result<Value, _> = redis::cmd("PING").query_async(&mut inner.sub.clone()).await;
        let _ = inner.heartbeat().await;
        ticks += 1;
        if ticks % 3 == 0 {
            if let Err(e) = inner.reclaim().await {
                tracing::debug!("work queue reclaim: {e}");
            }
        }
        since_renewal += tick.period();
        if since_renewal < every {
            continue;
        }
        since_renewal = Duration::ZERO;
        let all: Vec<(String, LocalMembers)> = lock(&inner.members)
            .iter()
            .map(|(ch, m)| (ch.clone(), m.clone()))
            .collect();
        for (channel, local) in all {
            let members: Vec<(ClientId, String)> = local.members.into_iter().collect();
            if let Err(e) = inner
                .presence_set(&channel, local.join_leave, &members)
                .await
            {
                tracing::debug!(channel, "presence renewal failed: {e}");
            }
        }
    }
}

impl Backplane for RedisBackplane {
    fn attach(&self, node: Arc<dyn Deliver>) -> NodeId {
        let _ = self.inner.deliver.set(node);
        self.inner.node
    }

    fn listen<'a>(
        &'a self,
        _node: NodeId,
        channel: &'a str,
    ) -> BoxFuture<'a, Result<(), BackplaneError>> {
        Box::pin(async move {
            let inner = &self.inner;
            if lock(&inner.tracks).contains_key(channel) {
                return Ok(());
            }
            inner
                .sub
                .clone()
                .listen(inner.topic(channel))
                .await
                .map_err(unavailable)?;
            lock(&inner.tracks).entry(channel.to_string()).or_default();
            // Where the stream stood when listening began: a link that drops before
            // the first delivery is checked against this.
            if let Ok(p) = inner.position(channel).await {
                if let Some(t) = lock(&inner.tracks).get_mut(channel) {
                    t.baseline = Some(p.unwrap_or((0, String::new())));
                }
            }
            Ok(())
        })
    }

    fn unlisten<'a>(
        &'a self,
        _node: NodeId,
        channel: &'a str,
    ) -> BoxFuture<'a, Result<(), BackplaneError>> {
        Box::pin(async move {
            let inner = &self.inner;
            if lock(&inner.tracks).remove(channel).is_none() {
                return Ok(());
            }
            inner
                .sub
                .clone()
                .unlisten(inner.topic(channel))
                .await
                .map_err(unavailable)
        })
    }

    fn publish<'a>(
        &'a self,
        channel: &'a str,
        opts: &'a ChannelOptions,
        payload: Payload,
    ) -> BoxFuture<'a, Result<Arc<Publication>, BackplaneError>> {
        Box::pin(async move {
            let inner = &self.inner;
            let (tx, rx) = tokio::sync::oneshot::channel();
            let pending = Pending {
                meta: inner.key(channel, "m"),
                stream: inner.key(channel, "s"),
                payload: encode_payload(&payload),
                history_size: opts.history_size,
                history_ttl_ms: (opts.history_ttl.as_millis() as u64).max(1),
                meta_ttl: inner.meta_ttl(opts),
                topic: inner.topic(channel),
                done: tx,
            };
            let gone = || BackplaneError::Unavailable("redis: the backplane stopped".into());
            inner.batch.send(pending).await.map_err(|_| gone())?;
            let offset = rx.await.map_err(|_| gone())??;
            Ok(Arc::new(Publication::new(offset, payload)))
        })
    }

    fn history<'a>(
        &'a self,
        channel: &'a str,
        opts: &'a ChannelOptions,
        q: HistoryQuery,
    ) -> BoxFuture<'a, Result<HistoryPage, BackplaneError>> {
        Box::pin(async move {
            let inner = &self.inner;
            let v: Vec<Value> = inner
                .invoke(
                    inner
                        .history
                        .key(inner.key(channel, "m"))
                        .key(inner.key(channel, "s"))
                        .arg(q.since.map_or(-1, |s| s.min(i64::MAX as u64) as i64))
                        .arg(q.limit.min(1_000_000_000))
                        .arg(if q.reverse { "1" } else { "0" })
                        .arg((opts.history_ttl.as_millis() as u64).max(1))
                        .arg(fresh_epoch())
                        .arg(inner.meta_ttl(opts)),
                )
                .await?;
            let bad = || BackplaneError::Unavailable("redis: malformed history reply".into());
            let int = |v: &Value| match v {
                Value::Int(i) => Some(*i as u64),
                _ => None,
            };
            let offset = v.first().and_then(int).ok_or_else(bad)?;
            let epoch = match v.get(1) {
                Some(Value::BulkString(b)) => String::from_utf8_lossy(b).into_owned(),
                _ => return Err(bad()),
            };
            let first_retained = v.get(2).and_then(int).ok_or_else(bad)?;
            let mut publications = Vec::new();
            for pair in v[3..].chunks(2) {
                let (Some(o), Some(Value::BulkString(d))) =
                    (pair.first().and_then(int), pair.get(1))
                else {
                    return Err(bad());
                };
                let payload = decode_payload(d).ok_or_else(bad)?;
                publications.push(Arc::new(Publication::new(o, payload)));
            }
            Ok(HistoryPage {
                publications,
                position: StreamPosition { offset, epoch },
                first_retained,
            })
        })
    }

    fn join<'a>(
        &'a self,
        channel: &'a str,
        opts: &'a ChannelOptions,
        info: Arc<ClientInfo>,
    ) -> BoxFuture<'a, Result<(), BackplaneError>> {
        Box::pin(async move {
            let inner = &self.inner;
            let member = serde_json::to_string(&*info).unwrap_or_default();
            // The join event goes out with the entry, in one script: publish it only
            // for this member (renewals publish nothing).
            let mut inv = inner.presence_set.prepare_invoke();
            inv.key(inner.key(channel, "p"))
                .key(inner.key(channel, "x"))
                .arg(inner.presence_ms())
                .arg(inner.cfg.presence_ttl.as_secs().max(1) * 2)
                .arg(inner.topic(channel))
                .arg(if opts.join_leave { "1" } else { "0" })
                .arg(info.client.to_string())
                .arg(&member);
            let _: Value = inner.invoke(&inv).await?;
            if opts.join_leave {
                let mut msg = b"j".to_vec();
                msg.extend_from_slice(member.as_bytes());
                let _: Value = inner
                    .query(
                        redis::cmd(inner.publish_cmd)
                            .arg(inner.topic(channel))
                            .arg(msg),
                    )
                    .await?;
            }
            lock(&inner.members)
                .entry(channel.to_string())
                .or_insert_with(|| LocalMembers {
                    join_leave: opts.join_leave,
                    members: HashMap::new(),
                })
                .members
                .insert(info.client, member);
            Ok(())
        })
    }

    fn leave<'a>(
        &'a self,
        channel: &'a str,
        opts: &'a ChannelOptions,
        client: ClientId,
    ) -> BoxFuture<'a, Result<(), BackplaneError>> {
        Box::pin(async move {
            let inner = &self.inner;
            {
                let mut members = lock(&inner.members);
                if let Some(local) = members.get_mut(channel) {
                    local.members.remove(&client);
                    if local.members.is_empty() {
                        members.remove(channel);
                    }
                }
            }
            let _: Value = inner
                .invoke(
                    inner
                        .leave
                        .key(inner.key(channel, "p"))
                        .key(inner.key(channel, "x"))
                        .arg(client.to_string())
                        .arg(inner.topic(channel))
                        .arg(if opts.join_leave { "1" } else { "0" }),
                )
                .await?;
            Ok(())
        })
    }

    fn presence<'a>(
        &'a self,
        channel: &'a str,
    ) -> BoxFuture<'a, Result<Vec<Arc<ClientInfo>>, BackplaneError>> {
        Box::pin(async move {
            // Reading sweeps expired members; their leaves are published only where
            // the namespace sends leaves, which a renewal knows and a read does not:
            // a read publishes none.
            self.inner.presence_set(channel, false, &[]).await
        })
    }

    fn announce<'a>(
        &'a self,
        node: NodeId,
        address: &'a str,
    ) -> BoxFuture<'a, Result<(), BackplaneError>> {
        Box::pin(async move {
            let inner = &self.inner;
            inner
                .query(
                    redis::cmd("HSET")
                        .arg(format!("{}:node-addr", inner.cfg.prefix))
                        .arg(node)
                        .arg(address),
                )
                .await
        })
    }

    fn address_of(&self, node: NodeId) -> BoxFuture<'_, Result<Option<String>, BackplaneError>> {
        Box::pin(async move {
            let inner = &self.inner;
            inner
                .query(
                    redis::cmd("HGET")
                        .arg(format!("{}:node-addr", inner.cfg.prefix))
                        .arg(node),
                )
                .await
        })
    }

    fn shares_lag(&self) -> bool {
        true
    }

    fn report_lag(&self, lagging: bool) -> BoxFuture<'_, ()> {
        Box::pin(self.inner.say_lag(lagging))
    }

    fn remote_pace(&self, depth: usize, deadline: tokio::time::Instant) -> BoxFuture<'_, ()> {
        // Look again when more is said, or when what was said goes stale.
        let inner = &self.inner;
        Box::pin(async move {
            crate::hub::wakes::wait_while(&inner.lag_changed, deadline, || {
                inner.others_lagging(depth).map(Into::into)
            })
            .await;
            inner.spend_credit();
        })
    }

    fn shares_queues(&self) -> bool {
        true
    }

    fn queue_push<'a>(
        &'a self,
        queue: &'a str,
        payload: &'a Payload,
        max: usize,
    ) -> BoxFuture<'a, Result<(), BackplaneError>> {
        Box::pin(async move {
            let inner = &self.inner;
            let id: i64 = inner
                .invoke(
                    inner
                        .qpush
                        .key(inner.qkey(queue, "qs"))
                        .key(inner.qkey(queue, "qm"))
                        .key(inner.qkey(queue, "qr"))
                        .arg(encode_payload(payload))
                        .arg(max),
                )
                .await?;
            if id < 0 {
                return Err(BackplaneError::QueueFull(max));
            }
            let _: Value = inner
                .query(
                    redis::cmd("SADD")
                        .arg(format!("{}:queues", inner.cfg.prefix))
                        .arg(queue),
                )
                .await?;
            inner.queue_wake(queue).await;
            Ok(())
        })
    }

    fn queue_pull<'a>(
        &'a self,
        queue: &'a str,
    ) -> BoxFuture<'a, Result<Option<crate::hub::backplane::Pulled>, BackplaneError>> {
        Box::pin(async move {
            let inner = &self.inner;
            let got: Option<(u64, Vec<u8>, i64)> = inner
                .invoke(
                    inner
                        .qpull
                        .key(inner.qkey(queue, "qr"))
                        .key(inner.qkey(queue, &format!("qt:{}", inner.node)))
                        .key(inner.qkey(queue, "qm"))
                        .key(inner.qkey(queue, "qre"))
                        .key(inner.qkey(queue, "qtakers"))
                        .arg(inner.node),
                )
                .await?;
            Ok(got.and_then(|(id, p, re)| Some((id, decode_payload(&p)?, re == 1))))
        })
    }

    fn queue_done<'a>(
        &'a self,
        queue: &'a str,
        ids: Vec<u64>,
    ) -> BoxFuture<'a, Result<(), BackplaneError>> {
        Box::pin(self.inner.settle(&self.inner.qdone, queue, "qm", ids))
    }

    fn queue_back<'a>(
        &'a self,
        queue: &'a str,
        ids: Vec<u64>,
    ) -> BoxFuture<'a, Result<(), BackplaneError>> {
        Box::pin(async move {
            if ids.is_empty() {
                return Ok(());
            }
            self.inner
                .settle(&self.inner.qback, queue, "qr", ids)
                .await?;
            self.inner.queue_wake(queue).await;
            Ok(())
        })
    }

    fn register_session<'a>(
        &'a self,
        id: &'a str,
        node: Option<NodeId>,
    ) -> BoxFuture<'a, Result<(), BackplaneError>> {
        Box::pin(async move {
            let inner = &self.inner;
            let key = format!("{}:session:{id}", inner.cfg.prefix);
            let cmd = match node {
                // A day at most: a session that outlives it is forwarded no more.
                Some(n) => {
                    let mut c = redis::cmd("SET");
                    c.arg(key).arg(n).arg("EX").arg(86_400);
                    c
                }
                None => {
                    let mut c = redis::cmd("DEL");
                    c.arg(key);
                    c
                }
            };
            let _: Value = inner.query(&cmd).await?;
            Ok(())
        })
    }

    fn session_node<'a>(
        &'a self,
        id: &'a str,
    ) -> BoxFuture<'a, Result<Option<NodeId>, BackplaneError>> {
        Box::pin(async move {
            let inner = &self.inner;
            inner
                .query(redis::cmd("GET").arg(format!("{}:session:{id}", inner.cfg.prefix)))
                .await
        })
    }

    /// Published to every node's survey subscription; PUBLISH says how many nodes
    /// heard it, and their answers come back on this node's reply channel (those that
    /// do not answer within the timeout are left out).
    fn survey(&self, request: Vec<u8>) -> BoxFuture<'_, Result<Vec<Vec<u8>>, BackplaneError>> {
        Box::pin(async move {
            let inner = &self.inner;
            if inner.conn.is_cluster() {
                // How many nodes are alive now (the answers to wait for).
                inner.heartbeat().await?;
            }
            let id = inner
                .next_survey
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            let (tx, mut rx) = mpsc::unbounded_channel();
            lock(&inner.surveys).insert(id, tx);
            let mut msg = format!("{id}:{}:", inner.node).into_bytes();
            msg.extend_from_slice(&request);
            let heard: Result<usize, _> = redis::cmd("PUBLISH")
                .arg(inner.survey_topic())
                .arg(msg)
                .query_async(&mut inner.conn.clone())
                .await;
            let result = match heard {
                Err(e) => Err(unavailable(e)),
                Ok(heard) => {
                    let n = if inner.conn.is_cluster() {
                        inner.live_nodes.load(Ordering::Relaxed)
                    } else {
                        heard
                    };
                    let mut answers = Vec::with_capacity(n);
                    let deadline = tokio::time::Instant::now() + inner.cfg.timeout;
                    while answers.len() < n {
                        match tokio::time::timeout_at(deadline, rx.recv()).await {
                            Ok(Some(a)) => answers.push(a),
                            _ => break,
                        }
                    }
                    Ok(answers)
                }
            };
            lock(&inner.surveys).remove(&id);
            result
        })
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::hub::contract::Nodes;
    use std::future::Future;
    use std::pin::Pin;
    use tokio::io::AsyncBufReadExt;

    /// A `redis-server` on a free loopback port, without persistence, killed on drop.
    pub(crate) struct RedisServer {
        child: tokio::process::Child,
        pub(crate) port: u16,
    }

    impl RedisServer {
        pub(crate) async fn start(extra: &[&str]) -> RedisServer {
            let port = std::net::TcpListener::bind("127.0.0.1:0")
                .unwrap()
                .local_addr()
                .unwrap()
                .port();
            RedisServer::start_on(port, extra).await
        }

        /// Stop it (SHUTDOWN: with persistence on, everything is on disk) and wait.
        pub(crate) async fn stop(mut self) {
            let client = Client::open(self.url()).unwrap();
            if let Ok(mut c) = client.get_multiplexed_async_connection().await {
                let _: Result<Value, _> = redis::cmd("SHUTDOWN").query_async(&mut c).await;
            }
            let _ = self.child.wait().await;
        }

        pub(crate) async fn start_on(port: u16, extra: &[&str]) -> RedisServer {
            let mut child = tokio::process::Command::new("redis-server")
                .args([
                    "--port",
                    &port.to_string(),
                    "--bind",
                    "127.0.0.1",
                    "--save",
                    "",
                    "--appendonly",
                    "no",
                ])
                .args(extra)
                .stdout(std::process::Stdio::piped())
                .kill_on_drop(true)
                .spawn()
                .expect("redis-server is not installed: run scripts/test");
            let mut lines = tokio::io::BufReader::new(child.stdout.take().unwrap()).lines();
            while let Some(line) = lines.next_line().await.unwrap() {
                if line.contains("Ready to accept connections") {
                    break;
                }
            }
            tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
            RedisServer { child, port }
        }

        pub(crate) fn url(&self) -> String {
            format!("redis://127.0.0.1:{}", self.port)
        }
    }

    impl Drop for RedisServer {
        fn drop(&mut self) {
            let _ = self.child.start_kill();
        }
    }

    /// Nodes of one cluster on a fresh Redis.
    pub(crate) struct RedisNodes {
        pub(crate) server: RedisServer,
        pub(crate) cfg: RedisConfig,
    }

    impl RedisNodes {
        pub(crate) async fn start() -> RedisNodes {
            let server = RedisServer::start(&[]).await;
            let cfg = RedisConfig {
                url: server.url(),
                ..RedisConfig::default()
            };
            RedisNodes { server, cfg }
        }
    }

    /// A Redis Cluster of three masters on loopback (`redis-cli --cluster create`),
    /// killed on drop.
    pub(crate) struct RedisCluster {
        servers: Vec<RedisServer>,
        dir: std::path::PathBuf,
    }

    impl RedisCluster {
        pub(crate) async fn start() -> RedisCluster {
            let dir =
                std::env::temp_dir().join(format!("wsx-redis-cluster-{}", rand::random::<u64>()));
            std::fs::create_dir_all(&dir).unwrap();
            let d = dir.display().to_string();
            let mut servers = Vec::new();
            for i in 0..3 {
                let conf = format!("nodes-{i}.conf");
                let args = [
                    "--cluster-enabled",
                    "yes",
                    "--cluster-config-file",
                    conf.as_str(),
                    "--dir",
                    d.as_str(),
                ];
                servers.push(RedisServer::start(&args).await);
            }
            let addrs: Vec<String> = servers
                .iter()
                .map(|s| format!("127.0.0.1:{}", s.port))
                .collect();
            let out = tokio::process::Command::new("redis-cli")
                .args(["--cluster", "create"])
                .args(&addrs)
                .args(["--cluster-replicas", "0", "--cluster-yes"])
                .output()
                .await
                .expect("redis-cli");
            assert!(
                out.status.success(),
                "{}",
                String::from_utf8_lossy(&out.stdout)
            );
            // Every master must see the whole cluster before it serves every slot.
            for s in &servers {
                let client = Client::open(s.url()).unwrap();
                let mut c = client.get_multiplexed_async_connection().await.unwrap();
                let mut ok = false;
                for _ in 0..200 {
                    let info: String = redis::cmd("CLUSTER")
                        .arg("INFO")
                        .query_async(&mut c)
                        .await
                        .unwrap();
                    if info.contains("cluster_state:ok") {
                        ok = true;
                        break;
                    }
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                assert!(ok, "the cluster did not settle");
            }
            RedisCluster { servers, dir }
        }

        pub(crate) fn seeds(&self) -> Vec<String> {
            self.servers.iter().map(RedisServer::url).collect()
        }
    }

    impl Drop for RedisCluster {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }

    /// Nodes of one cluster on a fresh Redis Cluster.
    pub(crate) struct ClusterNodes {
        _cluster: RedisCluster,
        cfg: RedisConfig,
    }

    impl ClusterNodes {
        pub(crate) async fn start() -> ClusterNodes {
            let cluster = RedisCluster::start().await;
            let cfg = RedisConfig {
                cluster: cluster.seeds(),
                ..RedisConfig::default()
            };
            ClusterNodes {
                _cluster: cluster,
                cfg,
            }
        }
    }

    impl Nodes for ClusterNodes {
        fn node(&self) -> Pin<Box<dyn Future<Output = Arc<dyn Backplane>> + Send + '_>> {
            Box::pin(async move {
                let b: Arc<dyn Backplane> =
                    Arc::new(RedisBackplane::connect(self.cfg.clone()).await.unwrap());
                b
            })
        }
    }

    mod cluster_contract {
        crate::hub::contract::contract_tests!(super::ClusterNodes::start().await);
    }

    impl Nodes for RedisNodes {
        fn node(&self) -> Pin<Box<dyn Future<Output = Arc<dyn Backplane>> + Send + '_>> {
            Box::pin(async move {
                let b: Arc<dyn Backplane> =
                    Arc::new(RedisBackplane::connect(self.cfg.clone()).await.unwrap());
                b
            })
        }
    }

    mod contract {
        crate::hub::contract::contract_tests!(super::RedisNodes::start().await);
    }

    use crate::hub::channel::ChannelName;
    use crate::hub::queue::{Delivery, Disconnect, Outbound, QueueLimits, INSUFFICIENT_STATE};
    use crate::hub::{Hub, HubConfig};

    fn room() -> ChannelOptions {
        ChannelOptions {
            history_size: 1000,
            presence: true,
            join_leave: true,
            ..ChannelOptions::default()
        }
    }

    async fn hub(cfg: &RedisConfig) -> (Arc<Hub>, RedisBackplane) {
        let b = RedisBackplane::connect(cfg.clone()).await.unwrap();
        let hub_cfg = HubConfig {
            default_options: room(),
            ..HubConfig::default()
        };
        (Hub::with_backplane(hub_cfg, Arc::new(b.clone())), b)
    }

    fn client(hub: &Hub, user: &str) -> (Arc<ClientInfo>, Arc<Outbound>) {
        let info = ClientInfo {
            client: hub.next_client_id(),
            user: user.into(),
            ..ClientInfo::default()
        };
        (Arc::new(info), Outbound::new(QueueLimits::default()))
    }

    /// The next delivery or disconnect (within 10 s).
    async fn next(q: &Outbound) -> Result<Delivery, Disconnect> {
        let f = std::future::poll_fn(|cx| q.poll_next(cx));
        tokio::time::timeout(Duration::from_secs(10), f)
            .await
            .expect("a delivery in time")
            .expect("the queue is open")
    }

    async fn redis_cmd(server: &RedisServer, args: &[&str]) -> Value {
        let client = Client::open(server.url()).unwrap();
        let mut c = client.get_multiplexed_async_connection().await.unwrap();
        let mut cmd = redis::cmd(args[0]);
        for a in &args[1..] {
            cmd.arg(*a);
        }
        cmd.query_async(&mut c).await.unwrap()
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_node_behind_its_deliveries_slows_publishers_on_the_others() {
        let server = RedisServer::start(&[]).await;
        let cfg = RedisConfig {
            url: server.url(),
            ..RedisConfig::default()
        };
        let behind = RedisBackplane::connect(cfg.clone()).await.unwrap();
        let a = RedisBackplane::connect(cfg.clone()).await.unwrap();
        let hub_cfg = HubConfig {
            pace_max_wait: Duration::from_secs(30),
            pace_depth: 2,
            ..HubConfig::default()
        };
        let hub = Hub::with_backplane(hub_cfg, Arc::new(a.clone()));
        let publish = |n: &'static str| {
            let hub = hub.clone();
            tokio::spawn(async move {
                hub.publish("room", Payload::json(n)).await.unwrap();
                std::time::Instant::now()
            })
        };
        let say = |lagging: bool| {
            let (a, behind) = (a.clone(), behind.clone());
            async move {
                let heard = a.inner.lag_changed.notified();
                tokio::pin!(heard);
                heard.as_mut().enable();
                behind.report_lag(lagging).await;
                tokio::time::timeout(Duration::from_secs(5), heard)
                    .await
                    .expect("the other node heard it");
            }
        };
        // Nobody behind: answered at once.
        tokio::time::timeout(Duration::from_secs(5), publish("1"))
            .await
            .unwrap()
            .unwrap();
        // A publisher held until the node says it caught up, and answered then.
        let held_until_cleared = |n: &'static str, why: &'static str| {
            let waiting = publish(n);
            let say = &say;
            async move {
                tokio::time::sleep(Duration::from_millis(300)).await;
                assert!(!waiting.is_finished(), "{why}");
                let cleared = std::time::Instant::now();
                say(false).await;
                let answered = tokio::time::timeout(Duration::from_secs(5), waiting)
                    .await
                    .unwrap()
                    .unwrap();
                assert!(answered >= cleared);
            }
        };
        // A node behind: the publisher waits until it says it no longer is.
        say(true).await;
        held_until_cleared("2", "the publisher waits").await;
        // Just caught up: pace_depth (2) publications go (that one and the next), then
        // the next waits until the node speaks again (as it does every
        // LAG_CLEAR_REPEAT while on probation).
        tokio::time::timeout(Duration::from_secs(5), publish("2b"))
            .await
            .unwrap()
            .unwrap();
        held_until_cleared("2c", "out of credit, the publisher waits").await;
        // A node that said so and then went silent (died, say) counts for LAG_FRESH only,
        // not for the whole pace_max_wait.
        say(true).await;
        let said = std::time::Instant::now();
        let answered = tokio::time::timeout(Duration::from_secs(10), publish("3"))
            .await
            .expect("answered once the silence went stale")
            .unwrap();
        let waited = answered - said;
        assert!(
            waited >= LAG_FRESH - Duration::from_millis(100) && waited < LAG_FRESH * 3,
            "{waited:?}"
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_join_is_answered_with_a_count_and_only_a_read_with_the_members() {
        let server = RedisServer::start(&[]).await;
        let src = PRESENCE_SET.replace("{PUBLISH}", "PUBLISH");
        let script = |extra: &[String]| {
            let mut args = ["EVAL", &src, "2", "p", "x", "60000", "120", "t", "0"]
                .map(String::from)
                .to_vec();
            args.extend_from_slice(extra);
            args
        };
        for i in 0..200 {
            let args = script(&[i.to_string(), format!("{{\"client\":{i}}}")]);
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            // Not the 1..=200 members present so far: a join costs the same at any size.
            assert_eq!(redis_cmd(&server, &args).await, Value::Int(1), "join {i}");
        }
        let args = script(&[]);
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        match redis_cmd(&server, &args).await {
            Value::Array(members) => assert_eq!(members.len(), 200),
            other => panic!("a read answers the members: {other:?}"),
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_dead_node_leaves_no_ghost_members_after_the_presence_ttl() {
        let nodes = RedisNodes::start().await;
        let mut cfg = nodes.cfg.clone();
        cfg.presence_ttl = Duration::from_millis(900);
        let (a, ba) = hub(&cfg).await;
        let (b, _bb) = hub(&cfg).await;
        let ch = ChannelName::parse("room").unwrap();
        let (bob, qb) = client(&b, "bob");
        b.subscribe(&ch, &room(), bob.clone(), qb.clone(), None)
            .await
            .unwrap();
        let (alice, qa) = client(&a, "alice");
        a.subscribe(&ch, &room(), alice.clone(), qa, None)
            .await
            .unwrap();
        assert!(
            matches!(next(&qb).await, Ok(Delivery::Join { info, .. }) if info.client == alice.client)
        );
        // Renewals keep live members well past the TTL.
        tokio::time::sleep(Duration::from_millis(1500)).await;
        assert_eq!(b.presence_stats("room").await.unwrap(), (2, 2));
        // Node A dies: no leave is sent, no renewal comes.
        drop(a);
        drop(ba);
        let left = next(&qb).await;
        assert!(
            matches!(&left, Ok(Delivery::Leave { info, .. }) if info.client == alice.client),
            "{left:?}"
        );
        let members = b.presence("room").await.unwrap();
        assert_eq!(members.len(), 1, "{members:?}");
        assert_eq!(members[0].client, bob.client);
    }

    /// Collect a subscriber's stream of `n` publications through disconnects: after
    /// each, resubscribe recovering from the last offset seen (what a client does).
    async fn collect_through_drops(
        hub: &Hub,
        n: u64,
        mut q: Arc<Outbound>,
        epoch: String,
    ) -> (Vec<u64>, usize) {
        let ch = ChannelName::parse("room").unwrap();
        let mut seen = Vec::new();
        let mut drops = 0;
        while seen.len() < n as usize {
            match next(&q).await {
                Ok(Delivery::Publication { publication, .. }) => seen.push(publication.offset),
                Ok(_) => {}
                Err(d) => {
                    assert!(
                        matches!(
                            &d,
                            Disconnect::Server {
                                code: INSUFFICIENT_STATE,
                                reconnect: true,
                                ..
                            }
                        ),
                        "{d:?}"
                    );
                    drops += 1;
                    let (info, q2) = client(hub, "sub");
                    let since = StreamPosition {
                        offset: seen.last().copied().unwrap_or(0),
                        epoch: epoch.clone(),
                    };
                    let r = hub
                        .subscribe(&ch, &room(), info, q2.clone(), Some(&since))
                        .await
                        .unwrap();
                    assert_eq!(r.recovered, Some(true));
                    q = q2;
                }
            }
        }
        (seen, drops)
    }

    /// Publish N while every pub/sub connection of `servers` is killed: the
    /// subscriber ends with every message, in order, once (through 3011 recoveries).
    async fn killed_pubsub_recovers(cfg: &RedisConfig, servers: &[&RedisServer]) {
        let (publisher, _) = hub(cfg).await;
        let (node, _) = hub(cfg).await;
        let ch = ChannelName::parse("room").unwrap();
        let (info, q) = client(&node, "sub");
        let r = node
            .subscribe(&ch, &room(), info, q.clone(), None)
            .await
            .unwrap();
        let epoch = r.position.unwrap().epoch;
        const N: u64 = 400;
        let publishing = tokio::spawn(async move {
            for _ in 0..N {
                publisher.publish("room", Payload::json("1")).await.unwrap();
            }
        });
        // Kill every pub/sub connection while the stream flows.
        let mut killed = 0;
        while killed == 0 {
            for server in servers {
                if let Value::Int(n) =
                    redis_cmd(server, &["CLIENT", "KILL", "TYPE", "pubsub"]).await
                {
                    killed += n;
                }
            }
            tokio::task::yield_now().await;
        }
        let (seen, drops) = collect_through_drops(&node, N, q, epoch).await;
        publishing.await.unwrap();
        assert_eq!(
            seen,
            (1..=N).collect::<Vec<_>>(),
            "every message, in order, once ({drops} recoveries)"
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_killed_pubsub_connection_makes_subscribers_recover_every_message() {
        let nodes = RedisNodes::start().await;
        killed_pubsub_recovers(&nodes.cfg, &[&nodes.server]).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn on_a_cluster_killed_pubsub_connections_make_subscribers_recover_every_message() {
        let nodes = ClusterNodes::start().await;
        let servers: Vec<&RedisServer> = nodes._cluster.servers.iter().collect();
        killed_pubsub_recovers(&nodes.cfg, &servers).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn redis_down_gives_errors_and_a_restart_without_data_tells_the_truth() {
        let mut nodes = RedisNodes::start().await;
        let (hub, _) = hub(&nodes.cfg).await;
        let (q, epoch) = subscribed_after_three(&hub).await;
        // Down: clear errors, within the timeout.
        let port = nodes.server.port;
        nodes.server.stop().await;
        let started = std::time::Instant::now();
        let e = hub.publish("room", Payload::json("1")).await.unwrap_err();
        assert!(matches!(e, crate::HubError::Unavailable(_)), "{e:?}");
        assert!(
            started.elapsed() < nodes.cfg.timeout * 3,
            "{:?}",
            started.elapsed()
        );
        // Back, empty (no persistence): the node finds its stream gone and tells its
        // subscriber to recover; recovery says it cannot (another epoch), and live
        // publications flow again.
        nodes.server = RedisServer::start_on(port, &[]).await;
        let d = next(&q).await;
        assert!(
            matches!(
                &d,
                Err(Disconnect::Server {
                    code: INSUFFICIENT_STATE,
                    ..
                })
            ),
            "{d:?}"
        );
        let ch = ChannelName::parse("room").unwrap();
        let (info, q2) = client(&hub, "sub");
        let since = StreamPosition {
            offset: 3,
            epoch: epoch.clone(),
        };
        let r = hub
            .subscribe(&ch, &room(), info, q2.clone(), Some(&since))
            .await
            .unwrap();
        assert_eq!(r.recovered, Some(false));
        assert_ne!(r.position.unwrap().epoch, epoch, "a new epoch");
        hub.publish("room", Payload::json("1")).await.unwrap();
        assert!(
            matches!(next(&q2).await, Ok(Delivery::Publication { publication, .. }) if publication.offset == 1)
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_restart_with_persistence_keeps_the_stream_and_loses_nothing() {
        let dir = std::env::temp_dir().join(format!("wsx-redis-aof-{}", rand::random::<u64>()));
        std::fs::create_dir_all(&dir).unwrap();
        let dir_s = dir.display().to_string();
        let persist = [
            "--appendonly",
            "yes",
            "--appendfsync",
            "always",
            "--dir",
            dir_s.as_str(),
        ];
        let server = RedisServer::start(&persist).await;
        let cfg = RedisConfig {
            url: server.url(),
            ..RedisConfig::default()
        };
        let port = server.port;
        let (hub, _) = hub(&cfg).await;
        let (q, epoch) = subscribed_after_three(&hub).await;
        server.stop().await;
        assert!(hub.publish("room", Payload::json("1")).await.is_err());
        let _server = RedisServer::start_on(port, &persist).await;
        // The stream and its epoch survived: publishing goes on at 4. The subscriber
        // gets it live, or (when it was published before the node had resubscribed)
        // is told to recover; either way a recovery from 3 gets it.
        let p = hub.publish("room", Payload::json("1")).await.unwrap();
        assert_eq!(p.offset, 4);
        let d = next(&q).await;
        assert!(
            matches!(&d, Ok(Delivery::Publication { publication, .. }) if publication.offset == 4)
                || matches!(
                    &d,
                    Err(Disconnect::Server {
                        code: INSUFFICIENT_STATE,
                        ..
                    })
                ),
            "{d:?}"
        );
        // A recovery from 3 gets exactly 4. The node's pub/sub connection may come back
        // while this subscriber recovers, and then it is told to recover again (as every
        // subscriber is after a gap): a client does, so the test does too.
        let ch = ChannelName::parse("room").unwrap();
        let since = StreamPosition { offset: 3, epoch };
        let mut got = None;
        for _ in 0..10 {
            let (info, q2) = client(&hub, "sub");
            let r = hub
                .subscribe(&ch, &room(), info, q2.clone(), Some(&since))
                .await
                .unwrap();
            assert_eq!(r.recovered, Some(true));
            match next(&q2).await {
                Err(Disconnect::Server {
                    code: INSUFFICIENT_STATE,
                    ..
                }) => continue,
                d => {
                    got = Some(d);
                    break;
                }
            }
        }
        assert!(
            matches!(&got, Some(Ok(Delivery::Publication { publication, .. })) if publication.offset == 4),
            "{got:?}"
        );
        let _ = std::fs::remove_dir_all(&dir);
    }

    /// A subscriber of `room` that has received offsets 1 to 3; its queue and epoch.
    async fn subscribed_after_three(hub: &Hub) -> (Arc<Outbound>, String) {
        let ch = ChannelName::parse("room").unwrap();
        let (info, q) = client(hub, "sub");
        let r = hub
            .subscribe(&ch, &room(), info, q.clone(), None)
            .await
            .unwrap();
        for _ in 0..3 {
            hub.publish("room", Payload::json("1")).await.unwrap();
        }
        for want in 1..=3 {
            let d = next(&q).await;
            assert!(
                matches!(&d, Ok(Delivery::Publication { publication, .. }) if publication.offset == want),
                "{d:?}"
            );
        }
        (q, r.position.unwrap().epoch)
    }
    async fn worker(
        hub: &Arc<Hub>,
        key: u64,
        ack: crate::AckMode,
    ) -> (crate::HubSession, Arc<Outbound>) {
        let mut s = crate::HubSession::new(hub.clone(), "test", String::new());
        s.connect_trusted(String::new(), "t".into(), "worker".into());
        s.consume("jobs", key, ack, None).unwrap();
        let q = s.outbound();
        (s, q)
    }

    /// The next `n` work-queue deliveries: (tag, job number, redelivered).
    async fn jobs(q: &Outbound, n: usize) -> Vec<(u64, u64, bool)> {
        let mut out = Vec::new();
        while out.len() < n {
            match next(q).await {
                Ok(Delivery::Queued {
                    tag,
                    message,
                    redelivered,
                    ..
                }) => {
                    let job: u64 = std::str::from_utf8(&message.data).unwrap().parse().unwrap();
                    out.push((tag, job, redelivered));
                }
                Ok(_) => {}
                Err(d) => panic!("{d:?}"),
            }
        }
        out
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn work_queues_have_one_set_of_consumers_across_nodes() {
        let nodes = RedisNodes::start().await;
        let (a, _) = hub(&nodes.cfg).await;
        let (b, _) = hub(&nodes.cfg).await;
        let mut producer = crate::HubSession::new(a.clone(), "test", String::new());
        producer.connect_trusted(String::new(), "t".into(), "producer".into());
        // A consumer on node B gets what is sent on node A, in order.
        let (mut wb, qb) = worker(&b, 1, crate::AckMode::Individual).await;
        for n in 1..=5 {
            producer
                .enqueue("jobs", Payload::json(n.to_string()))
                .await
                .unwrap();
        }
        let got = jobs(&qb, 5).await;
        assert_eq!(got.iter().map(|j| j.1).collect::<Vec<_>>(), [1, 2, 3, 4, 5]);
        assert!(got.iter().all(|j| !j.2));
        // It leaves without acknowledging: everything goes to the consumer on node A,
        // marked redelivered, in order.
        let (mut wa, qa) = worker(&a, 1, crate::AckMode::Individual).await;
        wb.cancel("jobs", 1).unwrap();
        let again = jobs(&qa, 5).await;
        assert_eq!(
            again.iter().map(|j| j.1).collect::<Vec<_>>(),
            [1, 2, 3, 4, 5]
        );
        assert!(again.iter().all(|j| j.2), "{again:?}");
        // A NACK puts one back for the next consumer; acks empty the queue.
        let (mut wb2, qb2) = worker(&b, 2, crate::AckMode::Individual).await;
        wa.cancel("jobs", 1).unwrap();
        let third = jobs(&qb2, 5).await;
        wb2.nack("jobs", third[0].0).unwrap();
        let back = jobs(&qb2, 1).await;
        assert_eq!((back[0].1, back[0].2), (1, true));
        wb2.ack("jobs", back[0].0).unwrap();
        for (tag, _, _) in &third[1..] {
            wb2.ack("jobs", *tag).unwrap();
        }
        let mut empty = false;
        for _ in 0..100 {
            let waiting = redis_cmd(&nodes.server, &["LLEN", "wsx:{jobs}:qr"]).await;
            let taken = redis_cmd(&nodes.server, &["HLEN", "wsx:{jobs}:qm"]).await;
            if waiting == Value::Int(0) && taken == Value::Int(0) {
                empty = true;
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert!(empty, "acknowledged messages are forgotten in Redis");
        drop((wa, wb, wb2));
        // Auto-acknowledging consumers on both nodes share 60 messages: each once.
        let (_w1, q1) = worker(&a, 3, crate::AckMode::Auto).await;
        let (_w2, q2) = worker(&b, 3, crate::AckMode::Auto).await;
        for n in 100..160 {
            producer
                .enqueue("jobs", Payload::json(n.to_string()))
                .await
                .unwrap();
        }
        let mut all = Vec::new();
        while all.len() < 60 {
            tokio::select! {
                d = next(&q1) => if let Ok(Delivery::Queued { message, .. }) = d { all.push(std::str::from_utf8(&message.data).unwrap().parse::<u64>().unwrap()) },
                d = next(&q2) => if let Ok(Delivery::Queued { message, .. }) = d { all.push(std::str::from_utf8(&message.data).unwrap().parse::<u64>().unwrap()) },
            }
        }
        all.sort_unstable();
        assert_eq!(all, (100..160).collect::<Vec<_>>(), "each message once");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_shared_queue_refuses_beyond_its_message_limit() {
        let nodes = RedisNodes::start().await;
        let b = RedisBackplane::connect(nodes.cfg.clone()).await.unwrap();
        let mut cfg = HubConfig {
            default_options: room(),
            ..HubConfig::default()
        };
        cfg.work_queues.max_messages = 3;
        let hub = Hub::with_backplane(cfg, Arc::new(b));
        let mut producer = crate::HubSession::new(hub.clone(), "test", String::new());
        producer.connect_trusted(String::new(), "t".into(), "producer".into());
        for n in 0..3 {
            producer
                .enqueue("full", Payload::json(n.to_string()))
                .await
                .unwrap();
        }
        let e = producer
            .enqueue("full", Payload::json("3"))
            .await
            .unwrap_err();
        assert_eq!(
            e,
            crate::HubError::LimitExceeded(crate::Limit::QueueFull(3))
        );
    }

    #[test]
    fn payloads_and_messages_round_trip() {
        let mut p = Payload::binary(vec![0u8, 1, 255, b':']);
        p.headers.push(("content-type".into(), "a/b".into()));
        p.headers.push(("x".into(), "".into()));
        let enc = encode_payload(&p);
        assert_eq!(decode_payload(&enc), Some(p.clone()));
        let mut msg = format!("p00ff:42:{}:", enc.len()).into_bytes();
        msg.extend_from_slice(&enc);
        msg.extend_from_slice(format!(":43:{}:", enc.len()).as_bytes());
        msg.extend_from_slice(&enc);
        let events = decode_message(&msg).unwrap();
        assert_eq!(events.len(), 2);
        for ((ev, pos), want) in events.into_iter().zip([42, 43]) {
            assert_eq!(pos, Some((want, "00ff".to_string())));
            let Event::Publication(publ) = ev else {
                panic!("a publication")
            };
            assert_eq!(
                (publ.offset, &publ.data, &publ.headers),
                (want, &p.data, &p.headers)
            );
        }
        assert!(decode_message(b"p00ff:42:9:ab").is_none(), "short payload");
        let info = ClientInfo {
            client: 7,
            user: "u".into(),
            ..ClientInfo::default()
        };
        let mut j = b"j".to_vec();
        j.extend_from_slice(&serde_json::to_vec(&info).unwrap());
        assert!(
            matches!(decode_message(&j).unwrap().as_slice(), [(Event::Join(i), None)] if **i == info)
        );
        assert_eq!(decode_payload(b"j\x00"), None, "truncated");
        assert!(decode_message(b"x").is_none());
    }
}
