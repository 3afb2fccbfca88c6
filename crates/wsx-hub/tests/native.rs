//! The native protocol through real WebSocket connections.
#![allow(clippy::unwrap_used)]

use std::collections::VecDeque;

use futures_util::StreamExt;
use serde_json::{json, Value};
use tokio::net::TcpListener;
use wsx::{ClientConfig, CloseCode, MaybeTlsStream, Message, WebSocket};
use wsx_hub::{Hub, HubConfig, QueueLimits};

mod common;

/// The namespaces these tests use, with the default namespace's options where a test
/// did not configure them (a channel `ns:name` needs its namespace configured).
fn with_namespaces(mut cfg: HubConfig) -> HubConfig {
    for ns in ["chat", "news", "nick", "room", "feed", "live", "stress"] {
        if !cfg.namespaces.iter().any(|(n, _)| n == ns) {
            let opts = cfg.default_options.clone();
            cfg.namespaces.push((ns.into(), opts));
        }
    }
    cfg
}

/// Where the server runs its sessions: a task each, or slots of an event loop.
#[derive(Debug, Clone, Copy)]
enum Mode {
    Tasks,
    Loop,
}

tokio::task_local! {
    static MODE: Mode;
}

/// Run the test `$name` twice: its sessions on tasks, then on an event loop.
macro_rules! on_tasks_and_loop {
    ($name:ident $(, $args:tt)?) => {
        mod $name {
            #[tokio::test $($args)?]
            async fn on_tasks() {
                super::MODE.scope(super::Mode::Tasks, super::$name()).await
            }
            #[tokio::test $($args)?]
            async fn on_an_event_loop() {
                super::MODE.scope(super::Mode::Loop, super::$name()).await
            }
        }
    };
}

async fn server(cfg: HubConfig) -> String {
    serve_hub(Hub::new(with_namespaces(cfg))).await
}

/// Serve `hub`'s native WebSockets (on tasks or a loop, as the test runs).
async fn serve_hub(hub: std::sync::Arc<Hub>) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let loops = match MODE.try_with(|m| *m).unwrap_or(Mode::Tasks) {
        Mode::Tasks => None,
        Mode::Loop => {
            let gate = common::gate(hub.clone(), 100_000);
            let tasks = tokio_util::task::TaskTracker::new();
            let cfg = wsx::event_loop::LoopConfig::default();
            Some(wsx_hub::native::NativeLoops::start(1, cfg, &gate, &tasks).unwrap())
        }
    };
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let (hub, loops) = (hub.clone(), loops.clone());
            tokio::spawn(async move {
                let Ok((ws, _)) = wsx::accept(tcp, &wsx::ServerConfig::default()).await else {
                    return;
                };
                let session = wsx_hub::Session::new(hub, String::new());
                match loops {
                    Some(loops) => loops.adopt_websocket(ws, session.on_loop()).unwrap(),
                    None => session.run(ws).await,
                }
            });
        }
    });
    format!("ws://{addr}/connection/websocket")
}

struct Client {
    ws: WebSocket<MaybeTlsStream>,
    pushes: VecDeque<Value>,
    next_id: u64,
}

impl Client {
    async fn open(url: &str) -> Client {
        let (ws, _) = wsx::connect(url, &ClientConfig::default()).await.unwrap();
        Client {
            ws,
            pushes: VecDeque::new(),
            next_id: 1,
        }
    }

    async fn connected(url: &str) -> Client {
        let mut c = Client::open(url).await;
        let r = c.call("connect", json!({"name": "test"})).await;
        assert!(r["connect"]["client"].is_string(), "{r}");
        c
    }

    async fn recv(&mut self) -> Value {
        match self.ws.next().await.unwrap().unwrap() {
            Message::Text(t) => serde_json::from_str(t.as_str()).unwrap(),
            other => panic!("{other:?}"),
        }
    }

    /// Send a command and wait for its reply; pushes seen meanwhile are kept.
    async fn call(&mut self, method: &str, body: Value) -> Value {
        let id = self.next_id;
        self.next_id += 1;
        self.ws
            .send(Message::text(json!({ "id": id, method: body }).to_string()))
            .await
            .unwrap();
        loop {
            let v = self.recv().await;
            if v["id"] == id {
                return v;
            }
            self.pushes.push_back(v);
        }
    }

    async fn push(&mut self) -> Value {
        if let Some(p) = self.pushes.pop_front() {
            return p;
        }
        self.recv().await
    }
}

async fn publish_reaches_every_subscriber_in_order() {
    let url = server(HubConfig::default()).await;
    let mut a = Client::connected(&url).await;
    let mut b = Client::connected(&url).await;
    for c in [&mut a, &mut b] {
        let r = c.call("subscribe", json!({"channel": "chat:room"})).await;
        assert!(r["subscribe"]["epoch"].is_string(), "{r}");
    }
    let mut publisher = Client::connected(&url).await;
    for i in 0..20 {
        let r = publisher
            .call("publish", json!({"channel": "chat:room", "data": {"n": i}}))
            .await;
        assert_eq!(r["publish"]["offset"], i + 1);
    }
    for c in [&mut a, &mut b] {
        let mut n = 0;
        while n < 20 {
            let p = c.push().await;
            if p["push"]["pub"].is_object() {
                assert_eq!(p["push"]["channel"], "chat:room");
                assert_eq!(p["push"]["pub"]["data"], json!({"n": n}));
                assert_eq!(p["push"]["pub"]["offset"], n + 1);
                n += 1;
            }
        }
    }
}

async fn recovery_after_reconnect_gets_exactly_the_missed_ten() {
    let url = server(HubConfig::default()).await;
    let mut sub = Client::connected(&url).await;
    let r = sub.call("subscribe", json!({"channel": "news:x"})).await;
    let epoch = r["subscribe"]["epoch"].as_str().unwrap().to_string();
    let mut publisher = Client::connected(&url).await;
    publisher
        .call("publish", json!({"channel": "news:x", "data": "first"}))
        .await;
    let p = sub.push().await;
    let last = p["push"]["pub"]["offset"].as_u64().unwrap();
    drop(sub);
    for i in 0..10 {
        publisher
            .call("publish", json!({"channel": "news:x", "data": i}))
            .await;
    }
    let mut back = Client::connected(&url).await;
    let r = back
        .call(
            "subscribe",
            json!({"channel": "news:x", "recover": true, "offset": last, "epoch": epoch}),
        )
        .await;
    assert_eq!(r["subscribe"]["recovered"], true, "{r}");
    publisher
        .call("publish", json!({"channel": "news:x", "data": "live"}))
        .await;
    let mut got = Vec::new();
    while got.len() < 11 {
        let p = back.push().await;
        if p["push"]["pub"].is_object() {
            got.push((
                p["push"]["pub"]["offset"].as_u64().unwrap(),
                p["push"]["pub"]["data"].clone(),
            ));
        }
    }
    let want: Vec<(u64, Value)> = (0..10)
        .map(|i| (last + 1 + i, json!(i)))
        .chain([(last + 11, json!("live"))])
        .collect();
    assert_eq!(got, want);
    // Another epoch: told it cannot recover.
    let mut other = Client::connected(&url).await;
    let r = other
        .call(
            "subscribe",
            json!({"channel": "news:x", "recover": true, "offset": 1, "epoch": "stale"}),
        )
        .await;
    assert_eq!(r["subscribe"]["recovered"], false);
}

async fn presence_history_and_join_leave() {
    let mut cfg = HubConfig::default();
    let mut room = wsx_hub::ChannelOptions::default();
    room.presence = true;
    room.join_leave = true;
    room.history_size = 100;
    cfg.namespaces.push(("room".into(), room));
    let url = server(cfg).await;
    let mut a = Client::connected(&url).await;
    a.call("subscribe", json!({"channel": "room:1"})).await;
    // An anonymous client's name and info (a nickname) show in presence.
    let mut b = Client::open(&url).await;
    let r = b
        .call("connect", json!({"name": "t", "info": "nick:bob"}))
        .await;
    let b_id = r["connect"]["client"].as_str().unwrap().to_string();
    b.call("subscribe", json!({"channel": "room:1"})).await;
    let join = a.push().await;
    assert_eq!(join["push"]["join"]["client"], b_id.as_str(), "{join}");
    assert_eq!(join["push"]["join"]["info"], "nick:bob", "{join}");
    let r = a.call("presence_stats", json!({"channel": "room:1"})).await;
    assert_eq!(r["presence_stats"]["num_clients"], 2);
    let r = a.call("presence", json!({"channel": "room:1"})).await;
    let members = r["presence"]["presence"].as_object().unwrap();
    assert_eq!(members.len(), 2);
    assert_eq!(members[&b_id]["info"], "nick:bob");
    assert_eq!(members[&b_id]["name"], "t");
    assert_eq!(members[&b_id]["protocol"], "native");
    // Info is bounded.
    let mut c = Client::open(&url).await;
    let r = c.call("connect", json!({"info": "x".repeat(257)})).await;
    assert_eq!(r["error"]["code"], 106, "{r}");
    for i in 0..5 {
        a.call("publish", json!({"channel": "room:1", "data": {"i": i}}))
            .await;
    }
    let r = b
        .call(
            "history",
            json!({"channel": "room:1", "limit": 2, "reverse": true}),
        )
        .await;
    let pubs = r["history"]["publications"].as_array().unwrap();
    assert_eq!(
        pubs.iter()
            .map(|p| p["data"]["i"].as_u64().unwrap())
            .collect::<Vec<_>>(),
        vec![4, 3]
    );
    drop(b);
    loop {
        let p = a.push().await;
        if p["push"]["leave"].is_object() {
            break;
        }
    }
}

async fn errors_have_codes_and_abuse_closes() {
    let url = server(HubConfig::default()).await;
    // A command before connect closes the connection.
    let mut c = Client::open(&url).await;
    c.ws.send(Message::text(
        json!({"id": 1, "subscribe": {"channel": "x"}}).to_string(),
    ))
    .await
    .unwrap();
    assert!(
        matches!(c.ws.next().await.unwrap().unwrap(), Message::Close(Some(f)) if f.code == CloseCode(3009))
    );

    let mut c = Client::connected(&url).await;
    let r = c.call("subscribe", json!({"channel": "a"})).await;
    assert!(r["error"].is_null(), "{r}");
    let r = c.call("subscribe", json!({"channel": "a"})).await;
    assert_eq!(r["error"]["code"], 105, "already subscribed");
    let r = c.call("frobnicate", json!({})).await;
    assert_eq!(r["error"]["code"], 104);
    let r = c.call("subscribe", json!({"channel": "bad name"})).await;
    assert_eq!(r["error"]["code"], 107);
    let r = c.call("presence", json!({"channel": "nobody-here"})).await;
    assert_eq!(r["presence"]["presence"], json!({}), "nobody there: {r}");
    let r = c.call("unsubscribe", json!({"channel": "never"})).await;
    assert_eq!(r["error"]["code"], 110);
    let r = c.call("ping", json!({})).await;
    assert_eq!(r["ping"], json!({}));
    // Malformed JSON: an error reply, then after too many, a close with 3001.
    c.ws.send(Message::text("{not json")).await.unwrap();
    let v = c.recv().await;
    assert_eq!(v["error"]["code"], 107);
    for _ in 0..20 {
        if c.ws.send(Message::text("{not json")).await.is_err() {
            break;
        }
    }
    loop {
        match c.ws.next().await {
            Some(Ok(Message::Close(Some(f)))) => {
                assert_eq!(f.code, CloseCode(3001));
                break;
            }
            Some(Ok(_)) => {}
            other => panic!("{other:?}"),
        }
    }
}

async fn slow_consumer_is_disconnected_while_others_receive_everything() {
    let mut cfg = HubConfig::default();
    cfg.queue = {
        let mut q = QueueLimits::default();
        q.max_messages = 50;
        q
    };
    // One publisher sends 2000 commands as fast as it can: over the default rate.
    cfg.commands.per_second = 1e9;
    cfg.commands.burst = 1e9;
    let url = server(cfg).await;
    // The slow one subscribes, then stops reading.
    let mut slow = Client::connected(&url).await;
    slow.call("subscribe", json!({"channel": "ticks"})).await;
    let mut fast = Client::connected(&url).await;
    fast.call("subscribe", json!({"channel": "ticks"})).await;
    let mut publisher = Client::connected(&url).await;
    let big = "x".repeat(16 * 1024);
    let total = 2000;
    let reader = tokio::spawn(async move {
        let mut n = 0;
        while n < total {
            let p = fast.push().await;
            if p["push"]["pub"].is_object() {
                n += 1;
                assert_eq!(p["push"]["pub"]["offset"], n);
            }
        }
        n
    });
    for _ in 0..total {
        publisher
            .call("publish", json!({"channel": "ticks", "data": big}))
            .await;
    }
    assert_eq!(
        reader.await.unwrap(),
        total,
        "the fast subscriber lost nothing"
    );
    // The slow one is told why, then closed with 3008.
    let mut saw_disconnect = false;
    loop {
        match slow.ws.next().await {
            Some(Ok(Message::Text(t))) => {
                let v: Value = serde_json::from_str(t.as_str()).unwrap();
                if v["push"]["disconnect"]["code"] == 3008 {
                    saw_disconnect = true;
                }
            }
            Some(Ok(Message::Close(Some(f)))) => {
                assert_eq!(f.code, CloseCode(3008));
                break;
            }
            Some(Ok(_)) => {}
            other => panic!("{other:?}"),
        }
    }
    assert!(saw_disconnect);
}

fn token(secret: &str, sub: &str, exp_in: i64, channels: &[&str]) -> String {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    let claims = json!({"sub": sub, "exp": now + exp_in, "channels": channels});
    jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        &claims,
        &jsonwebtoken::EncodingKey::from_secret(secret.as_bytes()),
    )
    .unwrap()
}

async fn jwt_connect_tokens() {
    let mut cfg = HubConfig::default();
    cfg.auth.hmac_secret = Some("hub-secret".into());
    let url = server(cfg).await;

    // A valid token: the user is taken from `sub`, and `channels` are subscribed.
    let mut alice = Client::open(&url).await;
    let r = alice
        .call(
            "connect",
            json!({"token": token("hub-secret", "alice", 60, &["news:today"])}),
        )
        .await;
    assert_eq!(r["connect"]["user"], "alice", "{r}");
    assert_eq!(r["connect"]["subscribed"], json!(["news:today"]));
    let mut bob = Client::open(&url).await;
    bob.call(
        "connect",
        json!({"token": token("hub-secret", "bob", 60, &[])}),
    )
    .await;
    bob.call("publish", json!({"channel": "news:today", "data": "hello"}))
        .await;
    let p = alice.push().await;
    assert_eq!(p["push"]["pub"]["data"], "hello");
    let r = bob.call("presence", json!({"channel": "news:today"})).await;
    let members: Vec<Value> = r["presence"]["presence"]
        .as_object()
        .unwrap()
        .values()
        .cloned()
        .collect();
    assert_eq!(members[0]["user"], "alice");

    // Expired, forged, and missing tokens are refused with clear codes.
    let mut c = Client::open(&url).await;
    let r = c
        .call(
            "connect",
            json!({"token": token("hub-secret", "eve", -10, &[])}),
        )
        .await;
    assert_eq!(r["error"]["code"], 109, "{r}");
    let r = c
        .call(
            "connect",
            json!({"token": token("guessed", "eve", 60, &[])}),
        )
        .await;
    assert_eq!(r["error"]["code"], 101, "{r}");
    let r = c.call("connect", json!({})).await;
    assert_eq!(r["error"]["code"], 101, "{r}");
    // Still not connected: any other command closes the connection.
    c.ws.send(Message::text(
        json!({"id": 9, "subscribe": {"channel": "news:today"}}).to_string(),
    ))
    .await
    .unwrap();
    assert!(
        matches!(c.ws.next().await.unwrap().unwrap(), Message::Close(Some(f)) if f.code == CloseCode(3009))
    );
}

fn channel_token(secret: &str, sub: &str, channel: &str) -> String {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        &json!({"sub": sub, "channel": channel, "exp": now + 60}),
        &jsonwebtoken::EncodingKey::from_secret(secret.as_bytes()),
    )
    .unwrap()
}

async fn namespace_permissions_user_limited_and_private_channels() {
    let mut cfg = HubConfig::default();
    cfg.auth.hmac_secret = Some("hub-secret".into());
    cfg.auth.allow_anonymous = Some(true);
    let mut readonly = wsx_hub::ChannelOptions::default();
    readonly.client_publish = false;
    readonly.anonymous_subscribe = false;
    cfg.namespaces.push(("feed".into(), readonly));
    let mut no_history = wsx_hub::ChannelOptions::default();
    no_history.history_size = 0;
    cfg.namespaces.push(("live".into(), no_history));
    let url = server(cfg).await;

    let mut anon = Client::connected(&url).await;
    let r = anon
        .call("subscribe", json!({"channel": "feed:news"}))
        .await;
    assert_eq!(
        r["error"]["code"], 103,
        "anonymous may not subscribe to feed: {r}"
    );
    let mut alice = Client::open(&url).await;
    alice
        .call(
            "connect",
            json!({"token": token("hub-secret", "alice", 60, &[])}),
        )
        .await;
    let r = alice
        .call("subscribe", json!({"channel": "feed:news"}))
        .await;
    assert!(r["error"].is_null(), "{r}");
    let r = alice
        .call("publish", json!({"channel": "feed:news", "data": 1}))
        .await;
    assert_eq!(r["error"]["code"], 103, "clients may not publish to feed");

    // User-limited channels.
    let r = alice
        .call("subscribe", json!({"channel": "dm#alice,bob"}))
        .await;
    assert!(r["error"].is_null(), "{r}");
    let r = alice
        .call("subscribe", json!({"channel": "dm#bob,carol"}))
        .await;
    assert_eq!(r["error"]["code"], 103);
    let r = anon
        .call(
            "publish",
            json!({"channel": "dm#alice,bob", "data": "spoof"}),
        )
        .await;
    assert_eq!(
        r["error"]["code"], 103,
        "not subscribed to a restricted channel"
    );

    // Private channels need a channel token for this user and channel.
    let r = alice.call("subscribe", json!({"channel": "$secret"})).await;
    assert_eq!(r["error"]["code"], 103);
    let r = alice
        .call(
            "subscribe",
            json!({"channel": "$secret", "token": channel_token("hub-secret", "bob", "$secret")}),
        )
        .await;
    assert_eq!(r["error"]["code"], 103, "a token for someone else");
    let r = alice
        .call(
            "subscribe",
            json!({"channel": "$secret", "token": channel_token("hub-secret", "alice", "$secret")}),
        )
        .await;
    assert!(r["error"].is_null(), "{r}");

    // Recovery where history is off.
    let r = alice
        .call(
            "subscribe",
            json!({"channel": "live:x", "recover": true, "offset": 1, "epoch": "e"}),
        )
        .await;
    assert_eq!(r["error"]["code"], 108);
}

/// Many publishers and subscribers on shared channels: every subscriber receives every
/// message of every channel it is in, in per-channel order. Bounded in count and time.
async fn concurrency_stress_every_message_in_per_channel_order() {
    const CHANNELS: usize = 4;
    const PUBLISHERS: usize = 8;
    const PER_PUBLISHER: usize = 200;
    const SUBSCRIBERS: usize = 16;
    let url = server(HubConfig::default()).await;
    let channels: Vec<String> = (0..CHANNELS).map(|i| format!("stress:{i}")).collect();
    // Subscriber s is in channels s % 4 and (s + 1) % 4.
    let mut subs = Vec::new();
    for s in 0..SUBSCRIBERS {
        let mut c = Client::connected(&url).await;
        let mine = vec![
            channels[s % CHANNELS].clone(),
            channels[(s + 1) % CHANNELS].clone(),
        ];
        for ch in &mine {
            let r = c.call("subscribe", json!({"channel": ch})).await;
            assert!(r["error"].is_null(), "{r}");
        }
        subs.push((c, mine));
    }
    let readers: Vec<_> = subs
        .into_iter()
        .map(|(mut c, mine)| {
            tokio::spawn(async move {
                let expected = mine.len() * PUBLISHERS * PER_PUBLISHER / CHANNELS;
                let mut last_offset: std::collections::HashMap<String, u64> = Default::default();
                let mut per_publisher_seq: std::collections::HashMap<(String, u64), u64> =
                    Default::default();
                let mut got = 0;
                while got < expected {
                    let p = c.push().await;
                    let Some(pubv) = p["push"]["pub"].as_object() else {
                        continue;
                    };
                    let ch = p["push"]["channel"].as_str().unwrap().to_string();
                    let offset = pubv["offset"].as_u64().unwrap();
                    let prev = last_offset.insert(ch.clone(), offset).unwrap_or(0);
                    assert_eq!(offset, prev + 1, "gap or reorder on {ch}");
                    let (publisher, seq) = (
                        pubv["data"]["p"].as_u64().unwrap(),
                        pubv["data"]["n"].as_u64().unwrap(),
                    );
                    let prev_seq = per_publisher_seq.insert((ch, publisher), seq);
                    assert!(prev_seq.is_none_or(|s| s < seq), "publisher order broken");
                    got += 1;
                }
                got
            })
        })
        .collect();
    let publishers: Vec<_> = (0..PUBLISHERS)
        .map(|p| {
            let url = url.clone();
            let channels = channels.clone();
            tokio::spawn(async move {
                let mut c = Client::connected(&url).await;
                for n in 0..PER_PUBLISHER {
                    // Publisher p writes to channel p % 4 only, so per-channel totals are known.
                    let ch = &channels[p % CHANNELS];
                    let r = c
                        .call("publish", json!({"channel": ch, "data": {"p": p, "n": n}}))
                        .await;
                    assert!(r["error"].is_null(), "{r}");
                }
            })
        })
        .collect();
    let all = async {
        for p in publishers {
            p.await.unwrap();
        }
        let mut total = 0;
        for r in readers {
            total += r.await.unwrap();
        }
        total
    };
    let total = tokio::time::timeout(std::time::Duration::from_secs(60), all)
        .await
        .expect("stress test took too long");
    assert_eq!(
        total,
        SUBSCRIBERS * 2 * PUBLISHERS * PER_PUBLISHER / CHANNELS
    );
}

/// RS256: the hub holds only the public key. The key pair is a throwaway made for this
/// test (tests/keys), never used anywhere else.
async fn jwt_rs256_connect_tokens() {
    let private = include_str!("keys/test-rsa-private.pem");
    let public = include_str!("keys/test-rsa-public.pem");
    let mut cfg = HubConfig::default();
    cfg.auth.rsa_public_key_pem = Some(public.into());
    let url = server(cfg).await;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let key = jsonwebtoken::EncodingKey::from_rsa_pem(private.as_bytes()).unwrap();
    let sign = |claims: Value| {
        jsonwebtoken::encode(
            &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::RS256),
            &claims,
            &key,
        )
        .unwrap()
    };
    let mut c = Client::open(&url).await;
    let r = c
        .call(
            "connect",
            json!({"token": sign(json!({"sub": "rsa-user", "exp": now + 60}))}),
        )
        .await;
    assert_eq!(r["connect"]["user"], "rsa-user", "{r}");
    let mut c = Client::open(&url).await;
    let r = c
        .call(
            "connect",
            json!({"token": sign(json!({"sub": "rsa-user", "exp": now - 5}))}),
        )
        .await;
    assert_eq!(r["error"]["code"], 109);
    // An HS256 token signed with the public key as secret (algorithm confusion) fails.
    let forged = token(public, "mallory", 60, &[]);
    let mut c = Client::open(&url).await;
    let r = c.call("connect", json!({"token": forged})).await;
    assert_eq!(r["error"]["code"], 101, "{r}");
    // Without a token: refused, since a key is configured.
    let mut c = Client::open(&url).await;
    let r = c.call("connect", json!({})).await;
    assert_eq!(r["error"]["code"], 101);
}

/// A peer that stops reading entirely: once the socket and write buffers are full, the
/// session waits at most `write_timeout`, then drops the connection (paused clock).
#[tokio::test(start_paused = true)]
async fn a_peer_that_never_reads_is_dropped_after_the_write_timeout() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut cfg = HubConfig::default();
    cfg.write_timeout = std::time::Duration::from_secs(30);
    let hub = Hub::new(cfg);
    let (server_io, mut peer) = tokio::io::duplex(4096);
    let session_hub = hub.clone();
    let mut io_cfg = wsx::IoConfig::default();
    io_cfg.write_buffer_size = 8192;
    let server_cfg = wsx::ServerConfig::default().io(io_cfg);
    let session = tokio::spawn(async move {
        let (ws, _) = wsx::accept(server_io, &server_cfg).await.unwrap();
        wsx_hub::Session::new(session_hub, String::new())
            .run(ws)
            .await;
    });
    // Handshake and subscribe by hand, then never read again.
    peer.write_all(
        b"GET / HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n",
    )
    .await
    .unwrap();
    let mut head = [0u8; 129];
    peer.read_exact(&mut head).await.unwrap();
    for cmd in [
        r#"{"id":1,"connect":{}}"#,
        r#"{"id":2,"subscribe":{"channel":"firehose"}}"#,
    ] {
        let mut frame = vec![0x81, 0x80 | cmd.len() as u8, 0, 0, 0, 0];
        frame.extend_from_slice(cmd.as_bytes());
        peer.write_all(&frame).await.unwrap();
    }
    // Wait until the subscription exists, then publish more than the buffers hold.
    while hub.broker().channels().is_empty() {
        tokio::task::yield_now().await;
    }
    assert_eq!(hub.connections(), 1);
    for _ in 0..64 {
        hub.publish(
            "firehose",
            wsx_hub::Payload::json(format!("\"{}\"", "x".repeat(1024))),
        )
        .await
        .unwrap();
    }
    // The session is stuck writing; after the timeout it gives up.
    tokio::time::timeout(std::time::Duration::from_secs(31), session)
        .await
        .expect("dropped by the write timeout")
        .unwrap();
    assert_eq!(hub.connections(), 0);
    assert!(
        hub.broker().channels().is_empty(),
        "its subscription is gone"
    );
}

async fn the_servers_unsubscribe_comes_after_every_publication_before_it() {
    let hub = Hub::new(with_namespaces(HubConfig::default()));
    let url = serve_hub(hub.clone()).await;
    let mut c = Client::connected(&url).await;
    c.call("subscribe", json!({"channel": "room:a"})).await;
    let me = hub.clients()[0].client;
    for i in 0..1000 {
        hub.publish("room:a", wsx_hub::Payload::json(i.to_string()))
            .await
            .unwrap();
    }
    // At once: the publications may still be on their way to the connection.
    assert_eq!(hub.unsubscribe("room:a", None, Some(me)).await, 1);
    hub.publish("room:a", wsx_hub::Payload::json("\"after\""))
        .await
        .unwrap();
    for i in 0..1000 {
        let p = c.push().await;
        assert_eq!(p["push"]["pub"]["data"], json!(i), "in order, all: {p}");
    }
    let p = c.push().await;
    assert_eq!(p["push"]["unsubscribe"], json!({}), "then the push: {p}");
    let r = c.call("ping", json!({})).await;
    assert!(r["error"].is_null(), "{r}");
    assert!(c.pushes.is_empty(), "nothing after it: {:?}", c.pushes);
}

async fn subscriptions_per_connection_are_limited() {
    let mut cfg = HubConfig::default();
    cfg.max_subscriptions = 2;
    let url = server(cfg).await;
    let mut c = Client::connected(&url).await;
    for ch in ["a", "b"] {
        let r = c.call("subscribe", json!({"channel": ch})).await;
        assert!(r["error"].is_null(), "{r}");
    }
    let r = c.call("subscribe", json!({"channel": "c"})).await;
    assert_eq!(r["error"]["code"], 106, "{r}");
    // Freeing one makes room again.
    c.call("unsubscribe", json!({"channel": "a"})).await;
    let r = c.call("subscribe", json!({"channel": "c"})).await;
    assert!(r["error"].is_null(), "{r}");
}

async fn connections_per_user_are_limited_and_given_back() {
    let mut cfg = HubConfig::default();
    cfg.auth.hmac_secret = Some("hub-secret".into());
    cfg.max_connections_per_user = Some(2);
    let url = server(cfg).await;
    let connect = |user: &str| json!({"token": token("hub-secret", user, 60, &[])});
    let mut first = Client::open(&url).await;
    assert!(first.call("connect", connect("carol")).await["error"].is_null());
    let mut second = Client::open(&url).await;
    assert!(second.call("connect", connect("carol")).await["error"].is_null());
    let mut third = Client::open(&url).await;
    let r = third.call("connect", connect("carol")).await;
    assert_eq!(r["error"]["code"], 106, "{r}");
    assert!(
        r["error"]["message"]
            .as_str()
            .unwrap()
            .contains("at most 2"),
        "{r}"
    );
    // Another user is not affected.
    let mut dave = Client::open(&url).await;
    assert!(dave.call("connect", connect("dave")).await["error"].is_null());
    // One of carol's goes: the refused one may connect now.
    first.ws.close(wsx::CloseCode::NORMAL, "").await.unwrap();
    while first.ws.next().await.is_some() {}
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    loop {
        let r = third.call("connect", connect("carol")).await;
        if r["error"].is_null() {
            break;
        }
        // The server ends the closed session right after its close handshake.
        assert!(
            std::time::Instant::now() < deadline,
            "never given back: {r}"
        );
        tokio::task::yield_now().await;
    }
}

on_tasks_and_loop!(publish_reaches_every_subscriber_in_order);
on_tasks_and_loop!(recovery_after_reconnect_gets_exactly_the_missed_ten);
on_tasks_and_loop!(presence_history_and_join_leave);
on_tasks_and_loop!(errors_have_codes_and_abuse_closes);
on_tasks_and_loop!(slow_consumer_is_disconnected_while_others_receive_everything);
on_tasks_and_loop!(jwt_connect_tokens);
on_tasks_and_loop!(namespace_permissions_user_limited_and_private_channels);
on_tasks_and_loop!(
    concurrency_stress_every_message_in_per_channel_order,
    (flavor = "multi_thread", worker_threads = 2)
);
on_tasks_and_loop!(jwt_rs256_connect_tokens);
on_tasks_and_loop!(the_servers_unsubscribe_comes_after_every_publication_before_it);
on_tasks_and_loop!(subscriptions_per_connection_are_limited);
on_tasks_and_loop!(connections_per_user_are_limited_and_given_back);
