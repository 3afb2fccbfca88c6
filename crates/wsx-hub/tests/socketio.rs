//! The Socket.IO server library (`wsx_hub::socketio`) serving an application of its
//! own, driven by socket.io-client 4 in Node (`socketio/lib_app.mjs`); and the
//! Engine.IO layer's answers to bad input, over raw HTTP and WebSocket.
#![allow(clippy::unwrap_used)]

use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use futures_util::StreamExt;
use serde_json::json;
use wsx::{ClientConfig, Message};
use wsx_hub::engineio::{Engine, EngineConfig};
use wsx_hub::socketio::{Args, ConnectError, Identity, SocketIo, SocketIoConfig};
use wsx_hub::{Hub, HubConfig};

mod common;
use common::http;

/// The application: auth by name, echo with acks, typed arguments, rooms, an ack the
/// server asks of the client, a broadcast from outside a handler, a kick; `/admin`
/// refuses everyone without the right key.
fn app(io: &SocketIo) {
    let main = io.of("/");
    main.use_auth(|hs| async move {
        match hs.auth_field::<String>("name") {
            Some(n) if !n.is_empty() => Ok(Identity::User(n)),
            _ => Err(ConnectError {
                message: "name required".into(),
                data: Some(json!({"hint": "io({auth: {name}})"})),
            }),
        }
    });
    let io2 = io.clone();
    main.on_connection(move |socket| {
        let io = io2.clone();
        async move {
            socket.emit("welcome", Args::of(&[socket.user()]));
            socket.on("echo", |_, args, ack| async move {
                if let Some(ack) = ack {
                    ack.send(args);
                }
            });
            socket.on_typed::<(u32, String), _, _>("typed", |_, (n, s), ack| async move {
                if let Some(ack) = ack {
                    ack.send(Args::of(&(n + 1, s.to_uppercase())));
                }
            });
            socket.on("join", |s, args, ack| async move {
                let room: String = args.get(0).unwrap_or_default();
                s.join(&room).await.unwrap();
                if let Some(ack) = ack {
                    ack.send(Args::of(&[format!("joined:{room}")]));
                }
            });
            socket.on("leave", |s, args, ack| async move {
                let room: String = args.get(0).unwrap_or_default();
                s.leave(&room).await.unwrap();
                if let Some(ack) = ack {
                    ack.send(Args::of(&[format!("left:{room}")]));
                }
            });
            socket.on("say", |s, args, ack| async move {
                let (room, msg): (String, String) = args.parse().unwrap();
                let from = s.user().to_string();
                s.to(&room)
                    .emit("said", Args::of(&json!({"from": from, "msg": msg})))
                    .await
                    .unwrap();
                if let Some(ack) = ack {
                    ack.send(Args::new());
                }
            });
            socket.on("ask-client", |s, _, _| async move {
                let answer = s
                    .emit_with_ack("question", Args::of(&[41]), Duration::from_secs(5))
                    .await;
                let v: Option<u32> = answer.ok().and_then(|a| a.get(0));
                s.emit("answer", Args::of(&[v]));
            });
            socket.on("announce", move |_, args, _| {
                let io = io.clone();
                async move {
                    let mut out = Args::new().push(&args.get::<String>(0).unwrap_or_default());
                    let bin = out.placeholder(Bytes::from_static(&[7, 8, 9]));
                    let out = out.push(&json!({ "nested": bin }));
                    io.of("/").to("news").emit("headline", out).await.unwrap();
                }
            });
            socket.on("kick", |s, _, _| async move {
                s.disconnect();
            });
        }
    });
    io.of("/admin").use_auth(|hs| async move {
        if hs.auth_field::<String>("key").as_deref() == Some("open sesame") {
            Ok(Identity::User("admin".into()))
        } else {
            Err(ConnectError::new("admins only"))
        }
    });
}

async fn server(cfg: SocketIoConfig) -> (SocketAddr, SocketIo, Engine) {
    let hub = Hub::new(HubConfig::default());
    let gate = common::gate(hub.clone(), 1000);
    let io = SocketIo::new(hub, cfg);
    app(&io);
    let engine = io.engine(&gate);
    let router = engine.router("/socket.io/");
    (common::serve(router).await, io, engine)
}

fn engine() -> EngineConfig {
    EngineConfig::default()
        .heartbeat(Duration::from_millis(300), Duration::from_millis(300))
        .max_payload(4 << 20)
}

#[tokio::test(flavor = "multi_thread")]
async fn socket_io_client_drives_an_application_built_on_the_library() {
    let (addr, _io, _engine) = server(SocketIoConfig::default().engine(engine())).await;
    common::node("socketio/lib_app.mjs", vec![format!("http://{addr}")]).await;
}

async fn handshake(addr: SocketAddr) -> String {
    let (status, body) = http(addr, "GET", "/socket.io/?EIO=4&transport=polling", b"").await;
    assert_eq!(status, 200, "{body}");
    let open: serde_json::Value = serde_json::from_str(&body[1..]).unwrap();
    open["sid"].as_str().unwrap().to_string()
}

#[tokio::test(flavor = "multi_thread")]
async fn bad_input_gets_the_specs_errors_and_spares_other_sessions() {
    let (addr, io, engine) = server(
        SocketIoConfig::default()
            .engine(
                EngineConfig::default()
                    .heartbeat(Duration::from_millis(200), Duration::from_millis(200))
                    .max_payload(1000),
            )
            .connect_timeout(Duration::from_millis(500)),
    )
    .await;
    // A bystander that must not notice any of this: it answers pings on its own task.
    let (ws, _) = wsx::connect(
        &format!("ws://{addr}/socket.io/?EIO=4&transport=websocket"),
        &ClientConfig::default(),
    )
    .await
    .unwrap();
    let (to_good, mut outgoing) = tokio::sync::mpsc::channel::<String>(8);
    let (incoming, mut from_good) = tokio::sync::mpsc::channel::<String>(8);
    tokio::spawn(async move {
        let mut ws = ws;
        loop {
            tokio::select! {
                m = ws.next() => match m {
                    Some(Ok(Message::Text(t))) if t.as_str() == "2" => {
                        ws.send(Message::text("3")).await.unwrap();
                    }
                    Some(Ok(Message::Text(t))) => incoming.send(t.as_str().to_string()).await.unwrap(),
                    other => panic!("bystander lost: {other:?}"),
                },
                Some(m) = outgoing.recv() => ws.send(Message::text(m)).await.unwrap(),
            }
        }
    });
    assert!(from_good.recv().await.unwrap().starts_with('0'));
    to_good.send(r#"40{"name":"good"}"#.into()).await.unwrap();
    assert!(from_good.recv().await.unwrap().starts_with("40{"));
    assert_eq!(from_good.recv().await.unwrap(), r#"42["welcome","good"]"#);

    // The spec's errors, with their codes.
    let cases: [(&str, &str, &[u8], u16, &str); 6] = [
        (
            "GET",
            "/socket.io/?EIO=4&transport=carrier-pigeon",
            b"",
            400,
            r#"{"code":0,"message":"Transport unknown"}"#,
        ),
        (
            "GET",
            "/socket.io/?EIO=4&transport=polling&sid=nope",
            b"",
            400,
            r#"{"code":1,"message":"Session ID unknown"}"#,
        ),
        (
            "POST",
            "/socket.io/?EIO=4&transport=polling",
            b"40",
            400,
            r#"{"code":2,"message":"Bad handshake method"}"#,
        ),
        (
            "GET",
            "/socket.io/?EIO=3&transport=polling",
            b"",
            400,
            r#"{"code":5,"message":"Unsupported protocol version"}"#,
        ),
        (
            "GET",
            "/socket.io/?EIO=4&transport=websocket",
            b"",
            400,
            r#"{"code":3,"message":"Bad request"}"#,
        ),
        (
            "PUT",
            "/socket.io/?EIO=4&transport=polling",
            b"",
            400,
            r#"{"code":2,"message":"Bad handshake method"}"#,
        ),
    ];
    for (method, target, body, status, want) in cases {
        assert_eq!(
            http(addr, method, target, body).await,
            (status, want.into()),
            "{method} {target}"
        );
    }

    // A malformed payload closes its session (400), and so does an oversized one (413).
    let sid = handshake(addr).await;
    let target = format!("/socket.io/?EIO=4&transport=polling&sid={sid}");
    assert_eq!(http(addr, "POST", &target, b"4\xff").await.0, 400);
    assert_eq!(http(addr, "GET", &target, b"").await.0, 400);
    let sid = handshake(addr).await;
    let target = format!("/socket.io/?EIO=4&transport=polling&sid={sid}");
    assert_eq!(http(addr, "POST", &target, &vec![b'4'; 2000]).await.0, 413);
    assert_eq!(http(addr, "GET", &target, b"").await.0, 400);
    // A Socket.IO packet that is not one closes the connection.
    let sid = handshake(addr).await;
    let target = format!("/socket.io/?EIO=4&transport=polling&sid={sid}");
    assert_eq!(
        http(addr, "POST", &target, br#"42{"not":"an array"}"#)
            .await
            .0,
        200
    );
    // The POST is answered once Engine.IO has the packet; Socket.IO reads it after.
    // A poll that comes first waits and is given the session's close packet ("1"),
    // and the session is unknown from then on.
    let mut gone = http(addr, "GET", &target, b"").await;
    if gone == (200, "1".into()) {
        gone = http(addr, "GET", &target, b"").await;
    }
    assert_eq!(
        gone,
        (400, r#"{"code":1,"message":"Session ID unknown"}"#.into())
    );

    // A polling client that connects a namespace and never polls again is closed
    // after ping interval + timeout (400 ms here), its hub session with it.
    let sid = handshake(addr).await;
    let target = format!("/socket.io/?EIO=4&transport=polling&sid={sid}");
    assert_eq!(
        http(addr, "POST", &target, br#"40{"name":"gone"}"#).await.0,
        200
    );
    let hub_sessions = || {
        io.hub()
            .metrics()
            .frontend("socketio")
            .connections
            .load(std::sync::atomic::Ordering::Relaxed)
    };
    assert_eq!(hub_sessions(), 2);
    tokio::time::sleep(Duration::from_millis(800)).await;
    assert_eq!(http(addr, "GET", &target, b"").await.0, 400);
    assert_eq!(hub_sessions(), 1);

    // Ten thousand handshakes without a follow-up: at most the server's 1,000
    // connection slots are held at once (503 beyond), and each session ends by itself
    // (no namespace within the connect timeout).
    let (mut opened, mut refused) = (0, 0);
    for _ in 0..10_000 {
        match http(addr, "GET", "/socket.io/?EIO=4&transport=polling", b"")
            .await
            .0
        {
            200 => opened += 1,
            503 => refused += 1,
            other => panic!("status {other}"),
        }
        assert!(engine.sessions() <= 1000);
    }
    assert_eq!(opened + refused, 10_000);
    assert!(opened >= 1000, "opened {opened}");
    // The connect timeout (500 ms) passes: every abandoned session is gone.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(engine.sessions(), 1, "only the bystander's session is left");

    // The bystander was pinged all along and is still served.
    to_good.send(r#"421["typed",1,"x"]"#.into()).await.unwrap();
    assert_eq!(from_good.recv().await.unwrap(), r#"431[2,"X"]"#);
}
