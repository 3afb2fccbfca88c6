//! `wsx::event_loop`: connections accepted on tokio, run on the loop's thread, talked
//! to by wsx's client and by a raw TCP peer.
#![allow(clippy::unwrap_used)]

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use wsx::event_loop::{Conn, ConnId, EventLoop, Handler, LoopConfig, LoopHandle};
use wsx::{ClientConfig, CloseCode, CloseFrame, Config, IoConfig, Message, ServerConfig};

/// Echoes every message; counts the connections it saw end and the most output any
/// connection had queued when a message arrived.
#[derive(Clone, Default)]
struct Echo {
    closed: Arc<Mutex<Vec<ConnId>>>,
    most_buffered: Arc<AtomicUsize>,
}

impl Handler for Echo {
    fn on_message(&mut self, conn: &mut Conn<'_>, msg: Message) {
        self.most_buffered
            .fetch_max(conn.buffered_amount(), Ordering::Relaxed);
        let _ = conn.send(msg);
    }
    fn on_close(&mut self, id: ConnId) {
        self.closed.lock().unwrap().push(id);
    }
}

/// A listener whose connections are accepted on tokio with `cfg` and handed to `ev`.
async fn serve(ev: LoopHandle, cfg: ServerConfig) -> u16 {
    serve_on(TcpListener::bind("127.0.0.1:0").await.unwrap(), ev, cfg)
}

/// [`serve`] on `listener`.
fn serve_on(listener: TcpListener, ev: LoopHandle, cfg: ServerConfig) -> u16 {
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move {
        loop {
            let (tcp, _) = listener.accept().await.unwrap();
            let (ev, cfg) = (ev.clone(), cfg.clone());
            tokio::spawn(async move {
                tcp.set_nodelay(true).unwrap();
                let (ws, _) = wsx::accept(tcp, &cfg).await.unwrap();
                ev.adopt_websocket(ws).unwrap();
            });
        }
    });
    port
}

async fn client(port: u16) -> wsx::WebSocket<wsx::MaybeTlsStream> {
    wsx::connect(&format!("ws://127.0.0.1:{port}/"), &ClientConfig::default())
        .await
        .unwrap()
        .0
}

/// Wait (bounded) until `f` holds: the loop runs on its own thread.
async fn eventually(what: &str, f: impl Fn() -> bool) {
    let until = Instant::now() + Duration::from_secs(10);
    while !f() {
        assert!(Instant::now() < until, "never: {what}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

#[tokio::test]
async fn messages_of_every_size_are_echoed_and_a_close_ends_the_connection() {
    let echo = Echo::default();
    let ev = EventLoop::start(IoConfig::default(), echo.clone()).unwrap();
    let port = serve(ev.handle(), ServerConfig::default()).await;
    let mut ws = client(port).await;
    // Under the default 1 MiB message limit, over many reads.
    let big: Vec<u8> = (0..1_000_000u32).map(|i| (i % 251) as u8).collect();
    for msg in [
        Message::text("hello"),
        Message::binary(vec![1u8, 2, 3]),
        Message::text("é".repeat(70_000)),
        Message::binary(big),
        Message::text(""),
    ] {
        ws.send(msg.clone()).await.unwrap();
        let back = ws.next().await.unwrap().unwrap();
        assert!(
            back == msg,
            "{} bytes sent, {} back",
            msg.payload().len(),
            back.payload().len()
        );
    }
    // A ping is answered by the core (the client sees the pong).
    ws.send(Message::Ping(bytes::Bytes::from_static(b"p")))
        .await
        .unwrap();
    assert_eq!(
        ws.next().await.unwrap().unwrap(),
        Message::Pong(bytes::Bytes::from_static(b"p"))
    );
    assert_eq!(ev.handle().open(), 1);
    ws.send(Message::Close(Some(CloseFrame::new(
        CloseCode::NORMAL,
        "bye",
    ))))
    .await
    .unwrap();
    match ws.next().await {
        Some(Ok(Message::Close(Some(f)))) => assert_eq!(f.code, CloseCode::NORMAL),
        other => panic!("expected the close reply, got {other:?}"),
    }
    assert!(
        ws.next().await.is_none(),
        "the server closes the TCP connection"
    );
    eventually("the loop let the connection go", || ev.handle().open() == 0).await;
    assert_eq!(echo.closed.lock().unwrap().len(), 1);
}

#[tokio::test]
async fn a_protocol_error_gets_its_close_code() {
    let ev = EventLoop::start(IoConfig::default(), Echo::default()).unwrap();
    let port = serve(ev.handle(), ServerConfig::default()).await;
    let (ws, _) = wsx::connect(&format!("ws://127.0.0.1:{port}/"), &ClientConfig::default())
        .await
        .unwrap();
    // Invalid UTF-8 in a text frame, written raw (the client would refuse to send it).
    let (mut tcp, _) = ws.into_inner();
    tcp.write_all(&[0x81, 0x82, 0, 0, 0, 0, 0xc3, 0x28])
        .await
        .unwrap();
    let mut got = Vec::new();
    tcp.read_to_end(&mut got).await.unwrap();
    assert_eq!(got[0], 0x88, "a close frame, then EOF: {got:?}");
    assert_eq!(&got[2..4], &1007u16.to_be_bytes());
    eventually("the loop let it go", || ev.handle().open() == 0).await;
}

#[tokio::test]
async fn a_silent_peer_is_pinged_then_closed_when_it_never_answers() {
    let ev = EventLoop::start(IoConfig::default(), Echo::default()).unwrap();
    let cfg = ServerConfig::default().protocol(
        Config::default()
            .ping_interval(Some(Duration::from_millis(100)))
            .pong_timeout(Duration::from_millis(200)),
    );
    let port = serve(ev.handle(), cfg).await;
    // Before the connection exists: the server's ping interval starts after this.
    let start = Instant::now();
    let (ws, _) = wsx::connect(&format!("ws://127.0.0.1:{port}/"), &ClientConfig::default())
        .await
        .unwrap();
    let (mut tcp, _) = ws.into_inner();
    let mut got = Vec::new();
    tcp.read_to_end(&mut got).await.unwrap();
    assert_eq!(got[0], 0x89, "a ping first: {got:?}");
    let close = got.iter().position(|&b| b == 0x88).expect("then a close");
    assert_eq!(&got[close + 2..close + 4], &1011u16.to_be_bytes());
    assert!(start.elapsed() >= Duration::from_millis(300));
    eventually("the loop let it go", || ev.handle().open() == 0).await;
}

#[tokio::test]
async fn a_peer_that_does_not_read_is_not_read_either() {
    let echo = Echo::default();
    let mut io = IoConfig::default();
    io.write_buffer_size = 64 * 1024;
    io.max_read_size = 64 * 1024;
    let ev = EventLoop::start(io, echo.clone()).unwrap();
    let port = serve(ev.handle(), ServerConfig::default()).await;
    let (ws, _) = wsx::connect(&format!("ws://127.0.0.1:{port}/"), &ClientConfig::default())
        .await
        .unwrap();
    let (tcp, _) = ws.into_inner();
    let (mut rd, mut wr) = tokio::io::split(tcp);
    // 64 MiB of 16 KiB messages, and nothing read until the writes stall (the kernel's
    // buffers hold a few MiB each way; without backpressure the server would queue
    // the rest).
    let frame = {
        let payload = vec![7u8; 16 * 1024];
        let mut f = vec![0x82, 0xfe, 0x40, 0x00, 0, 0, 0, 0];
        f.extend_from_slice(&payload);
        f
    };
    // Written a piece at a time (a write cut by the timeout must not lose its place).
    let total = 4096 * frame.len();
    let mut at = 0usize;
    let stalled = loop {
        if at == total {
            break false;
        }
        let off = at % frame.len();
        match tokio::time::timeout(Duration::from_millis(500), wr.write(&frame[off..])).await {
            Ok(n) => at += n.unwrap(),
            Err(_) => break true,
        }
    };
    assert!(
        stalled,
        "64 MiB went in without the server ever stopping to read"
    );
    // At most the write buffer and what one read brought (64 KiB of messages).
    let most = echo.most_buffered.load(Ordering::Relaxed);
    assert!(
        most <= 2 * 64 * 1024 + frame.len(),
        "a connection queued {most} bytes with a 64 KiB write buffer"
    );
    // Reading now lets everything through: no message was dropped.
    let reader = tokio::spawn(async move {
        let mut n = 0usize;
        let mut buf = vec![0u8; 1 << 16];
        while n < 4096 * (16 * 1024 + 4) {
            let k = rd.read(&mut buf).await.unwrap();
            assert!(k > 0);
            n += k;
        }
        n
    });
    while at < total {
        let off = at % frame.len();
        at += wr.write(&frame[off..]).await.unwrap();
    }
    assert_eq!(reader.await.unwrap(), 4096 * (16 * 1024 + 4));
}

#[tokio::test]
async fn shutdown_closes_every_connection_with_1001_and_ends_the_loop() {
    let ev = EventLoop::start(IoConfig::default(), Echo::default()).unwrap();
    let port = serve(ev.handle(), ServerConfig::default()).await;
    let mut a = client(port).await;
    let mut b = client(port).await;
    for ws in [&mut a, &mut b] {
        ws.send(Message::text("x")).await.unwrap();
        ws.next().await.unwrap().unwrap();
    }
    let handle = ev.handle();
    handle.shutdown(CloseCode::GOING_AWAY, "server shutting down");
    for ws in [&mut a, &mut b] {
        match ws.next().await {
            Some(Ok(Message::Close(Some(f)))) => {
                assert_eq!(f.code, CloseCode::GOING_AWAY);
                assert_eq!(f.reason, "server shutting down");
            }
            other => panic!("expected a close, got {other:?}"),
        }
        assert!(ws.next().await.is_none());
    }
    tokio::task::spawn_blocking(move || ev.join())
        .await
        .unwrap();
    assert_eq!(handle.open(), 0);
    // Stopped: a new connection is refused.
    let tcp = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    let conn = wsx::wsx_proto::Connection::new(
        wsx::wsx_proto::Role::Server,
        Config::default(),
        Instant::now(),
    );
    assert!(handle.adopt(tcp, conn, None).is_err());
    drop(TcpStream::connect(("127.0.0.1", port)).await);
}

#[tokio::test]
async fn a_peer_that_never_reads_is_let_go_at_the_close_timeout() {
    let mut io = IoConfig::default();
    io.write_buffer_size = 16 * 1024;
    let ev = EventLoop::start(io, Echo::default()).unwrap();
    let cfg = ServerConfig::default()
        .protocol(Config::default().close_timeout(Duration::from_millis(300)));
    let port = serve(ev.handle(), cfg).await;
    let (ws, _) = wsx::connect(&format!("ws://127.0.0.1:{port}/"), &ClientConfig::default())
        .await
        .unwrap();
    let (tcp, _) = ws.into_inner();
    let (_rd, mut wr) = tokio::io::split(tcp);
    // Echoes pile up unread until the server's output (its socket buffer, then its
    // write buffer) is full and it stops reading.
    let mut frame = vec![0x82, 0xfe, 0x40, 0x00, 0, 0, 0, 0];
    frame.extend_from_slice(&[1u8; 16 * 1024]);
    let mut at = 0usize;
    while let Ok(n) = tokio::time::timeout(
        Duration::from_millis(500),
        wr.write(&frame[at % frame.len()..]),
    )
    .await
    {
        at += n.unwrap();
    }
    // Its close frame cannot go out either: the connection is dropped at the close
    // timeout and the loop ends.
    let handle = ev.handle();
    handle.shutdown(CloseCode::GOING_AWAY, "server shutting down");
    let joined = tokio::time::timeout(
        Duration::from_secs(10),
        tokio::task::spawn_blocking(move || ev.join()),
    )
    .await;
    assert!(
        joined.is_ok(),
        "the loop still holds a peer that never reads"
    );
    assert_eq!(handle.open(), 0);
}

/// A peer that reads nothing while the server has output for it: dropped at the loop's
/// write timeout (with no keepalive to end it otherwise).
#[tokio::test]
async fn a_peer_that_reads_nothing_is_dropped_at_the_write_timeout() {
    struct Flood(Arc<Mutex<Vec<ConnId>>>);
    impl Handler for Flood {
        fn on_message(&mut self, conn: &mut Conn<'_>, _: Message) {
            for _ in 0..16 {
                let _ = conn.send(Message::binary(vec![7u8; 2 << 20]));
            }
        }
        fn on_close(&mut self, id: ConnId) {
            self.0.lock().unwrap().push(id);
        }
    }
    let closed = Arc::new(Mutex::new(Vec::new()));
    let cfg = LoopConfig::default().write_timeout(Duration::from_millis(300));
    let ev = EventLoop::start_with(cfg, Flood(closed.clone())).unwrap();
    let port = serve(ev.handle(), ServerConfig::default()).await;
    let mut ws = client(port).await;
    ws.send(Message::text("flood")).await.unwrap();
    let began = Instant::now();
    // Never read: 32 MB is more than both sockets' buffers hold.
    eventually("the stalled peer is dropped", || {
        !closed.lock().unwrap().is_empty()
    })
    .await;
    assert!(began.elapsed() >= Duration::from_millis(300));
    assert_eq!(ev.handle().open(), 0);
}

/// A handler's waker runs `on_wake` on the loop; a paused connection's next message
/// waits for `resume`; `notify` reaches `on_notify` with every connection.
#[tokio::test]
async fn wakers_pause_and_notify_reach_the_handler_on_the_loop() {
    struct Waiting(Arc<Mutex<Vec<std::task::Waker>>>);
    impl Handler for Waiting {
        fn on_message(&mut self, conn: &mut Conn<'_>, msg: Message) {
            if msg == Message::text("wait") {
                // Nothing more from this connection until its waker is woken.
                conn.pause();
                self.0.lock().unwrap().push(conn.waker());
            } else {
                let _ = conn.send(msg);
            }
        }
        fn on_wake(&mut self, conn: &mut Conn<'_>) {
            conn.resume();
            let _ = conn.send(Message::text("woken"));
        }
        fn on_notify(&mut self, conns: &mut wsx::event_loop::Conns<'_>) {
            for id in conns.ids() {
                let mut conn = conns.get(id).unwrap();
                let _ = conn.send(Message::text(format!("notified {}", id.0)));
            }
        }
    }
    let wakers = Arc::new(Mutex::new(Vec::new()));
    let ev = EventLoop::start(IoConfig::default(), Waiting(wakers.clone())).unwrap();
    let port = serve(ev.handle(), ServerConfig::default()).await;
    let mut a = client(port).await;
    let mut b = client(port).await;
    a.send(Message::text("wait")).await.unwrap();
    a.send(Message::text("after")).await.unwrap();
    eventually("the handler holds a's waker", || {
        wakers.lock().unwrap().len() == 1
    })
    .await;
    // b is not held up by a.
    b.send(Message::text("b")).await.unwrap();
    assert_eq!(b.next().await.unwrap().unwrap(), Message::text("b"));
    let waker = wakers.lock().unwrap().pop().unwrap();
    // Woken from another thread.
    std::thread::spawn(move || waker.wake()).join().unwrap();
    assert_eq!(a.next().await.unwrap().unwrap(), Message::text("woken"));
    assert_eq!(
        a.next().await.unwrap().unwrap(),
        Message::text("after"),
        "a paused connection's message comes after its resume"
    );
    ev.handle().notify();
    for ws in [&mut a, &mut b] {
        let Message::Text(t) = ws.next().await.unwrap().unwrap() else {
            panic!("a text message")
        };
        assert!(t.as_str().starts_with("notified "), "{}", t.as_str());
    }
}

/// What `on_notify` asks of a connection lent by `Conns::get` is carried out, though
/// the loop drives such a connection again only when something needs it: a resume
/// hands over what came while paused, a deadline wakes it, a send it flushed arrives,
/// one it did not flush is written on the loop's turn, a close closes.
#[tokio::test]
async fn what_on_notify_asks_of_a_connection_is_carried_out() {
    struct Asker(Arc<Mutex<&'static str>>);
    impl Handler for Asker {
        fn on_message(&mut self, conn: &mut Conn<'_>, msg: Message) {
            if msg == Message::text("pause") {
                conn.pause();
            }
            let _ = conn.send(msg);
        }
        fn on_wake(&mut self, conn: &mut Conn<'_>) {
            let _ = conn.send(Message::text("woken"));
        }
        fn on_notify(&mut self, conns: &mut wsx::event_loop::Conns<'_>) {
            let ask = *self.0.lock().unwrap();
            for id in conns.ids() {
                let mut conn = conns.get(id).unwrap();
                match ask {
                    "resume" => conn.resume(),
                    "wake" => conn.wake_at(Some(Instant::now() + Duration::from_millis(20))),
                    "flushed" => {
                        let _ = conn.send(Message::text("flushed"));
                        conn.flush();
                    }
                    "sent" => {
                        let _ = conn.send(Message::text("sent"));
                    }
                    _ => {
                        let _ = conn.close(CloseCode::GOING_AWAY, "asked");
                    }
                }
            }
        }
    }
    let ask = Arc::new(Mutex::new(""));
    let ev = EventLoop::start(IoConfig::default(), Asker(ask.clone())).unwrap();
    let port = serve(ev.handle(), ServerConfig::default()).await;
    let mut ws = client(port).await;
    ws.send(Message::text("pause")).await.unwrap();
    assert_eq!(ws.next().await.unwrap().unwrap(), Message::text("pause"));
    ws.send(Message::text("held")).await.unwrap();
    for (what, answer) in [
        ("resume", "held"),
        ("wake", "woken"),
        ("flushed", "flushed"),
        ("sent", "sent"),
    ] {
        *ask.lock().unwrap() = what;
        ev.handle().notify();
        let got = tokio::time::timeout(Duration::from_secs(5), ws.next()).await;
        assert_eq!(
            got.ok().flatten().map(Result::unwrap),
            Some(Message::text(answer)),
            "{what}"
        );
    }
    *ask.lock().unwrap() = "close";
    ev.handle().notify();
    let got = tokio::time::timeout(Duration::from_secs(5), ws.next()).await;
    match got.ok().flatten().map(Result::unwrap) {
        Some(Message::Close(Some(f))) => assert_eq!(f.code, CloseCode::GOING_AWAY),
        other => panic!("a close, got {other:?}"),
    }
}

/// A fan-out from `on_notify` with `send_shared_now` (batched in an io_uring where the
/// loop has one) reaches every connection whole and in order: a peer that reads gets
/// each frame as it is sent; a peer that reads nothing until the end has its socket
/// fill up, so sends in the batch are cut short or refused and the rest is put back in
/// front of what was queued behind them, and it too gets every frame, intact.
#[tokio::test]
async fn a_fan_out_reaches_a_fast_and_a_stalled_peer_whole_and_in_order() {
    let ev = fan_out_to_a_fast_and_a_stalled_peer(LoopConfig::default()).await;
    // Where the kernel allows io_uring, the sends went through it.
    let allowed = std::fs::read_to_string("/proc/sys/kernel/io_uring_disabled")
        .is_ok_and(|v| v.trim() == "0");
    if cfg!(target_os = "linux") && allowed {
        assert!(ev.handle().uring_sends().is_some_and(|n| n > 0));
    }
}

/// The same without io_uring: one send each, as where the kernel has none.
#[tokio::test]
async fn without_io_uring_a_fan_out_reaches_both_peers_whole_and_in_order_too() {
    let ev = fan_out_to_a_fast_and_a_stalled_peer(LoopConfig::default().uring(false)).await;
    assert_eq!(ev.handle().uring_sends(), None);
}

/// [`a_fan_out_reaches_a_fast_and_a_stalled_peer_whole_and_in_order`] on a loop with
/// `cfg`; the loop, for a look at how it sent.
async fn fan_out_to_a_fast_and_a_stalled_peer(cfg: LoopConfig) -> EventLoop {
    const FRAMES: usize = 64;
    // Two frames per notify: a connection has a send in the batch when it is given
    // the second.
    const PER_NOTIFY: usize = 2;
    const SIZE: usize = 256 * 1024;
    fn payload(k: usize) -> Vec<u8> {
        let mut p = vec![k as u8; SIZE];
        p[..8].copy_from_slice(&(k as u64).to_be_bytes());
        p
    }
    struct Fan {
        want: Arc<AtomicUsize>,
        sent: usize,
    }
    impl Handler for Fan {
        fn on_message(&mut self, conn: &mut Conn<'_>, msg: Message) {
            let _ = conn.send(msg);
        }
        fn on_notify(&mut self, conns: &mut wsx::event_loop::Conns<'_>) {
            while self.sent < self.want.load(Ordering::Acquire) {
                let frame = wsx::SharedFrame::binary(&payload(self.sent));
                for id in conns.ids() {
                    let mut conn = conns.get(id).unwrap();
                    conn.send_shared_now(&frame).unwrap();
                    // As the hub's fan-out does: what is queued is written now.
                    conn.flush();
                }
                self.sent += 1;
            }
        }
    }
    let want = Arc::new(AtomicUsize::new(0));
    let fan = Fan {
        want: want.clone(),
        sent: 0,
    };
    let ev = EventLoop::start_with(cfg, fan).unwrap();
    let port = serve(ev.handle(), ServerConfig::default()).await;
    let mut fast = client(port).await;
    let mut stalled = client(port).await;
    // Both on the loop (an echo answered) before the first notify.
    for ws in [&mut fast, &mut stalled] {
        ws.send(Message::text("here")).await.unwrap();
        assert_eq!(ws.next().await.unwrap().unwrap(), Message::text("here"));
    }
    let check = |msg: Option<Result<Message, wsx::Error>>, k: usize, who: &str| match msg {
        Some(Ok(Message::Binary(b))) => assert!(b[..] == payload(k)[..], "{who}: frame {k} whole"),
        other => panic!("{who}: frame {k}, got {other:?}"),
    };
    for k in (0..FRAMES).step_by(PER_NOTIFY) {
        want.store(k + PER_NOTIFY, Ordering::Release);
        ev.handle().notify();
        for j in k..k + PER_NOTIFY {
            let got = tokio::time::timeout(Duration::from_secs(10), fast.next()).await;
            check(got.ok().flatten(), j, "the fast peer");
        }
    }
    for k in 0..FRAMES {
        let got = tokio::time::timeout(Duration::from_secs(10), stalled.next()).await;
        check(got.ok().flatten(), k, "the stalled peer");
    }
    ev
}

/// `busy_for` is how long the current turn has run: long while a handler holds the
/// loop, zero once it waits for events again.
#[tokio::test]
async fn busy_for_measures_the_turn_under_way() {
    struct Hold(std::sync::mpsc::Receiver<()>);
    impl Handler for Hold {
        fn on_message(&mut self, conn: &mut Conn<'_>, msg: Message) {
            // The loop's thread is held here until the test lets it go.
            let _ = self.0.recv();
            let _ = conn.send(msg);
        }
    }
    let (go, held) = std::sync::mpsc::channel();
    let ev = EventLoop::start(IoConfig::default(), Hold(held)).unwrap();
    let handle = ev.handle();
    let port = serve(ev.handle(), ServerConfig::default()).await;
    let mut ws = client(port).await;
    eventually("waiting for events", || handle.busy_for() == Duration::ZERO).await;
    ws.send(Message::text("hold")).await.unwrap();
    eventually("a long turn", || {
        handle.busy_for() >= Duration::from_millis(50)
    })
    .await;
    go.send(()).unwrap();
    assert_eq!(ws.next().await.unwrap().unwrap(), Message::text("hold"));
    eventually("the turn ended", || handle.busy_for() == Duration::ZERO).await;
}

/// A peer whose input never runs dry gets a bounded number of reads per turn: the
/// loop's other connections are served meanwhile, not once that peer pauses.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_that_never_runs_dry_does_not_keep_the_loop_from_the_others() {
    /// Echoes what starts with "b"; swallows and counts the rest (so the flooding
    /// peer's output never fills, which would stop its reads for another reason).
    struct SinkOrEcho(Arc<AtomicUsize>);
    impl Handler for SinkOrEcho {
        fn on_message(&mut self, conn: &mut Conn<'_>, msg: Message) {
            if msg.payload().first() == Some(&b'b') {
                let _ = conn.send(msg);
            } else {
                // Work of 20 µs per message: the loop reads slower than the peer
                // writes, so the socket never runs dry (every read fills its room).
                let t = Instant::now();
                while t.elapsed() < Duration::from_micros(20) {
                    std::hint::spin_loop();
                }
                self.0.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
    let swallowed = Arc::new(AtomicUsize::new(0));
    let ev = EventLoop::start(IoConfig::default(), SinkOrEcho(swallowed.clone())).unwrap();
    // A large receive buffer: on loopback (a 64 KiB MSS) a small one opens its window
    // again only once it is nearly empty, so the sender pauses and every few dozen
    // reads one comes back short, which ends the connection's reads as well as the
    // bound would. With 8 MiB the window reopens with megabytes still queued.
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(8 << 20).unwrap();
    socket.bind("127.0.0.1:0".parse().unwrap()).unwrap();
    let port = serve_on(
        socket.listen(16).unwrap(),
        ev.handle(),
        ServerConfig::default(),
    );
    let (flood, _) = client(port).await.into_inner();
    let mut b = client(port).await;
    // Masked (with a zero key) binary frames of 100 bytes of 'a', 64 KiB at a time,
    // written for at most 20 s or until b is served.
    let chunk: Vec<u8> = std::iter::repeat_n(
        [&[0x82u8, 0x80 | 100, 0, 0, 0, 0][..], &[b'a'; 100][..]].concat(),
        64 * 1024 / 106,
    )
    .flatten()
    .collect();
    let served = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let flooding = {
        let served = served.clone();
        tokio::spawn(async move {
            let mut flood = flood;
            let until = Instant::now() + Duration::from_secs(20);
            while !served.load(Ordering::Relaxed) && Instant::now() < until {
                flood.write_all(&chunk).await.unwrap();
            }
            Instant::now() < until
        })
    };
    eventually("the flood is being read", || {
        swallowed.load(Ordering::Relaxed) > 1_000
    })
    .await;
    b.send(Message::text("b, served while the flood goes on"))
        .await
        .unwrap();
    let echoed = tokio::time::timeout(Duration::from_secs(10), b.next()).await;
    served.store(true, Ordering::Relaxed);
    assert_eq!(
        echoed.expect("b was never served").unwrap().unwrap(),
        Message::text("b, served while the flood goes on")
    );
    assert!(
        flooding.await.unwrap(),
        "b was served only once the flood stopped"
    );
}
