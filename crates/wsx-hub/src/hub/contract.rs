//! The backplane contract: the same tests, run against every implementation
//! ([`MemoryBackplane`], and `RedisBackplane` on a `redis-server` the tests start).
//! Each test gets a factory of nodes (backplane handles sharing one cluster state) and
//! drives whole hubs on them. Deliveries may arrive asynchronously (Redis pub/sub):
//! tests await them, and check that nothing more arrives by publishing a marker.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;

use crate::hub::backplane::{Backplane, HistoryQuery, MemoryBackplane};
use crate::hub::channel::ChannelName;
use crate::hub::client::ClientInfo;
use crate::hub::options::ChannelOptions;
use crate::hub::publication::{Payload, StreamPosition};
use crate::hub::queue::{Delivery, Outbound, QueueLimits};
use crate::hub::{Hub, HubConfig};

/// Makes the backplane handle of a new node of one cluster.
pub(crate) trait Nodes: Send + Sync {
    fn node(&self) -> Pin<Box<dyn Future<Output = Arc<dyn Backplane>> + Send + '_>>;
}

/// Every "node" of the in-process backplane is the same object.
pub(crate) struct Memory(Arc<MemoryBackplane>);

impl Memory {
    pub(crate) fn new() -> Memory {
        Memory(Arc::new(MemoryBackplane::new()))
    }
}

impl Nodes for Memory {
    fn node(&self) -> Pin<Box<dyn Future<Output = Arc<dyn Backplane>> + Send + '_>> {
        let b: Arc<dyn Backplane> = self.0.clone();
        Box::pin(std::future::ready(b))
    }
}

fn opts() -> ChannelOptions {
    ChannelOptions {
        history_size: 100,
        presence: true,
        join_leave: true,
        ..ChannelOptions::default()
    }
}

async fn hub(nodes: &dyn Nodes) -> Arc<Hub> {
    let cfg = HubConfig {
        default_options: opts(),
        namespaces: vec![
            ("news".into(), opts()),
            ("room".into(), opts()),
            // Long enough that a gap opened while the test subscribes is always covered.
            (
                "race".into(),
                ChannelOptions {
                    history_size: 10_000,
                    ..opts()
                },
            ),
        ],
        ..HubConfig::default()
    };
    Hub::with_backplane(cfg, nodes.node().await)
}

pub(crate) fn client(hub: &Hub) -> (Arc<ClientInfo>, Arc<Outbound>) {
    let id = hub.next_client_id();
    let info = ClientInfo {
        client: id,
        user: format!("user{id}"),
        ..ClientInfo::default()
    };
    (Arc::new(info), Outbound::new(QueueLimits::default()))
}

pub(crate) fn name(s: &str) -> ChannelName {
    ChannelName::parse(s).unwrap()
}

pub(crate) async fn publish_n(hub: &Hub, channel: &str, n: usize) {
    for _ in 0..n {
        hub.publish(channel, Payload::json(Bytes::from_static(b"1")))
            .await
            .unwrap();
    }
}

/// The next `n` deliveries (within 10 s).
async fn next(q: &Outbound, n: usize) -> Vec<Delivery> {
    let mut got = Vec::with_capacity(n);
    let wait = async {
        while got.len() < n {
            match std::future::poll_fn(|cx| q.poll_next(cx)).await {
                Some(Ok(d)) => got.push(d),
                other => panic!("the queue ended: {other:?}"),
            }
        }
    };
    if tokio::time::timeout(Duration::from_secs(10), wait)
        .await
        .is_err()
    {
        panic!("{n} deliveries expected, {} came", got.len());
    }
    got
}

/// The offsets of the next `n` publications.
async fn offsets(q: &Outbound, n: usize) -> Vec<u64> {
    next(q, n)
        .await
        .iter()
        .map(|d| match d {
            Delivery::Publication { publication, .. } => publication.offset,
            other => panic!("a publication expected, got {other:?}"),
        })
        .collect()
}

fn query(limit: usize) -> HistoryQuery {
    HistoryQuery {
        limit,
        since: None,
        reverse: false,
    }
}

pub(crate) async fn recovery_gives_exactly_the_missed_publications_then_live_ones(
    nodes: &dyn Nodes,
) {
    let hub = hub(nodes).await;
    let ch = name("news:x");
    let opts = hub.options(&ch);
    let (info, q) = client(&hub);
    let sub = hub
        .subscribe(&ch, &opts, info.clone(), q.clone(), None)
        .await
        .unwrap();
    publish_n(&hub, "news:x", 1).await;
    let last = StreamPosition {
        offset: offsets(&q, 1).await[0],
        epoch: sub.position.unwrap().epoch,
    };
    hub.unsubscribe_client("news:x", info.client).await.unwrap();
    publish_n(&hub, "news:x", 10).await;
    let (info2, q2) = client(&hub);
    let res = hub
        .subscribe(&ch, &opts, info2, q2.clone(), Some(&last))
        .await
        .unwrap();
    assert_eq!(res.recovered, Some(true));
    publish_n(&hub, "news:x", 1).await;
    assert_eq!(
        offsets(&q2, 11).await,
        (2..=12).collect::<Vec<_>>(),
        "no gap or duplicate"
    );
    publish_n(&hub, "news:x", 1).await;
    assert_eq!(offsets(&q2, 1).await, [13], "nothing else came");
}

pub(crate) async fn recovery_from_another_epoch_or_beyond_history_is_refused(nodes: &dyn Nodes) {
    let hub = hub(nodes).await;
    let ch = name("news:y");
    let mut opts = hub.options(&ch);
    publish_n(&hub, "news:y", 1).await;
    let (info, q) = client(&hub);
    let stale = StreamPosition {
        offset: 1,
        epoch: "before-restart".into(),
    };
    let res = hub
        .subscribe(&ch, &opts, info, q.clone(), Some(&stale))
        .await
        .unwrap();
    assert_eq!(res.recovered, Some(false));
    publish_n(&hub, "news:y", 1).await;
    assert_eq!(offsets(&q, 1).await, [2], "no partial stream, then live");
    // History of 3: a gap of 10 cannot be covered.
    opts.history_size = 3;
    let epoch = hub
        .history("news:z", query(0))
        .await
        .unwrap()
        .position
        .epoch;
    publish_n(&hub, "news:z", 1).await;
    for _ in 0..10 {
        hub.backplane
            .publish("news:z", &opts, Payload::binary(Bytes::new()))
            .await
            .unwrap();
    }
    let (info, q) = client(&hub);
    let pos = StreamPosition { offset: 1, epoch };
    let res = hub
        .subscribe(&name("news:z"), &opts, info, q.clone(), Some(&pos))
        .await
        .unwrap();
    assert_eq!(res.recovered, Some(false));
    publish_n(&hub, "news:z", 1).await;
    assert_eq!(offsets(&q, 1).await, [12]);
}

pub(crate) async fn recovery_while_publishing_has_no_gap_or_duplicate(nodes: &dyn Nodes) {
    let hub = hub(nodes).await;
    publish_n(&hub, "race:1", 50).await;
    let epoch = hub
        .history("race:1", query(0))
        .await
        .unwrap()
        .position
        .epoch;
    let ch = name("race:1");
    let opts = hub.options(&ch);
    assert_eq!(opts.history_size, 10_000);
    // The publisher's own subscription keeps the node listening throughout.
    let publisher = {
        let hub = hub.clone();
        tokio::spawn(async move { publish_n(&hub, "race:1", 2000).await })
    };
    let (info, q) = client(&hub);
    let since = StreamPosition { offset: 50, epoch };
    let res = hub
        .subscribe(&ch, &opts, info, q.clone(), Some(&since))
        .await
        .unwrap();
    assert_eq!(res.recovered, Some(true));
    publisher.await.unwrap();
    assert_eq!(offsets(&q, 2000).await, (51..=2050).collect::<Vec<_>>());
}

pub(crate) async fn two_nodes_share_streams_presence_and_history(nodes: &dyn Nodes) {
    let a = hub(nodes).await;
    let b = hub(nodes).await;
    let ch = name("room:1");
    let opts = a.options(&ch);
    let (alice, qa) = client(&a);
    let (bob, qb) = client(&b);
    a.subscribe(&ch, &opts, alice.clone(), qa.clone(), None)
        .await
        .unwrap();
    b.subscribe(&ch, &opts, bob.clone(), qb.clone(), None)
        .await
        .unwrap();
    // Alice (node A) hears Bob (node B) join.
    let join = next(&qa, 1).await;
    assert!(
        matches!(join.as_slice(), [Delivery::Join { info, .. }] if info.client == bob.client),
        "{join:?}"
    );
    // Presence is the cluster's, asked of either node.
    assert_eq!(b.presence_stats("room:1").await.unwrap(), (2, 2));
    let members = a.presence("room:1").await.unwrap();
    assert!(members.iter().any(|m| **m == *bob), "{members:?}");
    // A publication on either node reaches both, with one offset sequence.
    publish_n(&a, "room:1", 2).await;
    publish_n(&b, "room:1", 1).await;
    assert_eq!(offsets(&qa, 3).await, vec![1, 2, 3]);
    assert_eq!(offsets(&qb, 3).await, vec![1, 2, 3]);
    // Bob leaves node B and comes back on node A, recovering what he missed there.
    let pos = b.history("room:1", query(0)).await.unwrap().position;
    b.unsubscribe_client("room:1", bob.client).await.unwrap();
    let leave = next(&qa, 1).await;
    assert!(
        matches!(leave.as_slice(), [Delivery::Leave { info, .. }] if info.client == bob.client),
        "{leave:?}"
    );
    publish_n(&b, "room:1", 4).await;
    let (bob2, qb2) = client(&a);
    let r = a
        .subscribe(&ch, &opts, bob2, qb2.clone(), Some(&pos))
        .await
        .unwrap();
    assert_eq!(r.recovered, Some(true));
    assert_eq!(offsets(&qb2, 4).await, vec![4, 5, 6, 7]);
    // Node B has no subscriber left: it no longer listens, yet still publishes.
    assert!(b.broker().channels().is_empty());
    publish_n(&b, "room:1", 1).await;
    assert_eq!(offsets(&qb2, 1).await, vec![8]);
    // History reads the same from both nodes.
    let ha = a.history("room:1", query(100)).await.unwrap();
    let hb = b.history("room:1", query(100)).await.unwrap();
    assert_eq!(ha.position, hb.position);
    let offs = |p: &crate::hub::backplane::HistoryPage| {
        p.publications.iter().map(|p| p.offset).collect::<Vec<_>>()
    };
    assert_eq!(offs(&ha), (1..=8).collect::<Vec<_>>());
    assert_eq!(offs(&ha), offs(&hb));
}

pub(crate) async fn history_is_bounded_by_size_and_ttl_and_keeps_payloads(nodes: &dyn Nodes) {
    let hub = hub(nodes).await;
    let b = nodes.node().await;
    let mut opts = opts();
    opts.history_size = 5;
    let mut p = Payload::binary(vec![0u8, 255, b':']);
    p.headers
        .push(("content-type".into(), "application/x".into()));
    for i in 0..8u8 {
        let mut q = p.clone();
        q.data = Bytes::from(vec![i]);
        b.publish("news:h", &opts, q).await.unwrap();
    }
    let page = b.history("news:h", &opts, query(100)).await.unwrap();
    let offs: Vec<u64> = page.publications.iter().map(|p| p.offset).collect();
    assert_eq!(offs, [4, 5, 6, 7, 8], "the newest 5");
    assert_eq!(page.first_retained, 4);
    assert_eq!(page.position.offset, 8);
    assert_eq!(page.publications[0].headers, p.headers);
    assert_eq!(&page.publications[4].data[..], &[7u8]);
    // Newest first, after an offset, limited.
    let q = HistoryQuery {
        limit: 2,
        since: Some(5),
        reverse: true,
    };
    let page = b.history("news:h", &opts, q).await.unwrap();
    let offs: Vec<u64> = page.publications.iter().map(|p| p.offset).collect();
    assert_eq!(offs, [8, 7]);
    let q = HistoryQuery {
        limit: 2,
        since: Some(5),
        reverse: false,
    };
    let page = b.history("news:h", &opts, q).await.unwrap();
    let offs: Vec<u64> = page.publications.iter().map(|p| p.offset).collect();
    assert_eq!(offs, [6, 7]);
    // A TTL: what is older is gone, the position stays.
    opts.history_ttl = Duration::from_millis(300);
    b.publish("news:t", &opts, p.clone()).await.unwrap();
    // Waiting out the TTL is what is under test here.
    tokio::time::sleep(Duration::from_millis(400)).await;
    b.publish("news:t", &opts, p.clone()).await.unwrap();
    let page = b.history("news:t", &opts, query(100)).await.unwrap();
    let offs: Vec<u64> = page.publications.iter().map(|p| p.offset).collect();
    assert_eq!(offs, [2], "the expired one is gone");
    assert_eq!(page.first_retained, 2);
    assert_eq!(page.position.offset, 2);
    // An unknown channel is at offset 0 of an epoch, the same one its first
    // publication then gets.
    let empty = hub.history("news:new", query(10)).await.unwrap();
    assert_eq!(empty.position.offset, 0);
    assert!(empty.publications.is_empty());
    publish_n(&hub, "news:new", 1).await;
    let after = hub.history("news:new", query(10)).await.unwrap();
    assert_eq!(after.position.epoch, empty.position.epoch);
    assert_eq!(after.position.offset, 1);
}

/// Every contract test, as `#[tokio::test]`s on the nodes `make` gives.
macro_rules! contract_tests {
    ($make:expr) => {
        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn recovery_gives_exactly_the_missed_publications_then_live_ones() {
            let nodes = $make;
            crate::hub::contract::recovery_gives_exactly_the_missed_publications_then_live_ones(
                &nodes,
            )
            .await;
        }

        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn recovery_from_another_epoch_or_beyond_history_is_refused() {
            let nodes = $make;
            crate::hub::contract::recovery_from_another_epoch_or_beyond_history_is_refused(&nodes)
                .await;
        }

        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn recovery_while_publishing_has_no_gap_or_duplicate() {
            let nodes = $make;
            crate::hub::contract::recovery_while_publishing_has_no_gap_or_duplicate(&nodes).await;
        }

        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn two_nodes_share_streams_presence_and_history() {
            let nodes = $make;
            crate::hub::contract::two_nodes_share_streams_presence_and_history(&nodes).await;
        }

        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn history_is_bounded_by_size_and_ttl_and_keeps_payloads() {
            let nodes = $make;
            crate::hub::contract::history_is_bounded_by_size_and_ttl_and_keeps_payloads(&nodes)
                .await;
        }
    };
}
#[cfg(feature = "redis")]
pub(crate) use contract_tests;

mod memory {
    contract_tests!(super::Memory::new());
}
