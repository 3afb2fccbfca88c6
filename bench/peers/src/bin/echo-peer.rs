//! `echo-peer SERVER PORT`: an echo server built the way its crate's docs show, on a
//! multi-threaded tokio runtime. SERVER: wsx | wsx-loop | tungstenite | fastwebsockets | raw
//! | raw-epoll | raw-uring.
//!
//! `wsx-loop`: the handshake on tokio, then the connection on a `wsx::event_loop` (one
//! thread, a slab of connection states, no task per connection).
//!
//! `raw`, `raw-epoll`, `raw-uring`: no WebSocket at all past the handshake, the bytes
//! copied back as they come: on tokio (`raw`), on one thread's edge-triggered epoll
//! (`raw-epoll`: what uWebSockets' loop does, with no code of its own: a `recv` and a
//! `send` per message) and on one thread's io_uring (`raw-uring`: every connection's
//! `recv` or `send` in flight in one ring, one `io_uring_enter` per turn for all of
//! them). They bound what any server's own code can change of the CPU per message.

use std::net::SocketAddr;

use tokio::net::{TcpListener, TcpStream};

#[tokio::main]
async fn main() -> std::io::Result<()> {
    let mut args = std::env::args().skip(1);
    let server = args.next().unwrap_or_default();
    let port: u16 = args.next().and_then(|p| p.parse().ok()).unwrap_or(9100);
    let listener = TcpListener::bind(SocketAddr::from(([127, 0, 0, 1], port))).await?;
    println!("listening {}", listener.local_addr()?.port());
    let event_loop = (server == "wsx-loop")
        .then(|| wsx::event_loop::EventLoop::start(wsx::IoConfig::default(), LoopEcho))
        .transpose()?;
    let raw_loop = match server.as_str() {
        "raw-epoll" => Some(raw_loop::start(raw_loop::Kind::Epoll)?),
        "raw-uring" => Some(raw_loop::start(raw_loop::Kind::Uring)?),
        _ => None,
    };
    loop {
        let (tcp, _) = listener.accept().await?;
        tcp.set_nodelay(true)?;
        match server.as_str() {
            "wsx" => tokio::spawn(wsx_echo(tcp)),
            "wsx-loop" => {
                let handle = event_loop.as_ref().map(|l| l.handle());
                tokio::spawn(async move {
                    if let (Ok((ws, _)), Some(h)) = (wsx::accept(tcp, &wsx_config()).await, handle)
                    {
                        let _ = h.adopt_websocket(ws);
                    }
                })
            }
            "tungstenite" => tokio::spawn(tungstenite_echo(tcp)),
            "fastwebsockets" => tokio::spawn(fastwebsockets_echo(tcp)),
            "raw" => tokio::spawn(raw_echo(tcp)),
            "raw-epoll" | "raw-uring" => {
                let tell = raw_loop.clone().expect("started above");
                let tcp = tcp.into_std()?;
                tokio::task::spawn_blocking(move || raw_loop::adopt(tcp, &tell))
            }
            other => panic!("unknown server {other}"),
        };
    }
}

fn wsx_config() -> wsx::ServerConfig {
    wsx::ServerConfig::default()
        .origin(wsx::OriginPolicy::Any)
        .protocol(
            wsx::Config::default()
                .max_message_size(64 << 20)
                .max_frame_size(64 << 20),
        )
}

/// The event loop's echo: every data message back, written when the handler returns.
struct LoopEcho;

impl wsx::event_loop::Handler for LoopEcho {
    fn on_message(&mut self, conn: &mut wsx::event_loop::Conn<'_>, msg: wsx::Message) {
        let _ = conn.send(msg);
    }
}

/// wsx: accept, then feed every data message back (written when the reader would wait).
async fn wsx_echo(tcp: TcpStream) {
    use futures_util::StreamExt;
    let Ok((mut ws, _)) = wsx::accept(tcp, &wsx_config()).await else {
        return;
    };
    while let Some(Ok(msg)) = ws.next().await {
        if msg.is_data() && ws.feed(msg).await.is_err() {
            break;
        }
    }
}

/// tokio-tungstenite, as its echo-server example: split, filter data, forward.
async fn tungstenite_echo(tcp: TcpStream) {
    use futures_util::{future, StreamExt, TryStreamExt};
    let Ok(ws) = tokio_tungstenite::accept_async(tcp).await else {
        return;
    };
    let (write, read) = ws.split();
    let _ = read
        .try_filter(|msg| future::ready(msg.is_text() || msg.is_binary()))
        .forward(write)
        .await;
}

/// fastwebsockets, as its echo_server example: hyper upgrade, FragmentCollector,
/// read_frame / write_frame.
async fn fastwebsockets_echo(tcp: TcpStream) {
    use fastwebsockets::{upgrade, FragmentCollector, OpCode, WebSocketError};
    use http_body_util::Empty;
    use hyper::body::{Bytes, Incoming};
    use hyper::{Request, Response};

    async fn handle(fut: upgrade::UpgradeFut) -> Result<(), WebSocketError> {
        let mut ws = FragmentCollector::new(fut.await?);
        loop {
            let frame = ws.read_frame().await?;
            match frame.opcode {
                OpCode::Close => break,
                OpCode::Text | OpCode::Binary => ws.write_frame(frame).await?,
                _ => {}
            }
        }
        Ok(())
    }

    async fn server_upgrade(
        mut req: Request<Incoming>,
    ) -> Result<Response<Empty<Bytes>>, WebSocketError> {
        let (response, fut) = upgrade::upgrade(&mut req)?;
        tokio::spawn(async move {
            let _ = handle(fut).await;
        });
        Ok(response)
    }

    let io = hyper_util::rt::TokioIo::new(tcp);
    let conn = hyper::server::conn::http1::Builder::new()
        .serve_connection(io, hyper::service::service_fn(server_upgrade))
        .with_upgrades();
    let _ = conn.await;
}

/// Raw TCP: answer the handshake, then copy bytes back unchanged (the loopback
/// ceiling: no framing, no masking, no validation).
async fn raw_echo(mut tcp: TcpStream) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    let mut buf = vec![0u8; 64 * 1024];
    let mut have = 0;
    let end = loop {
        match tcp.read(&mut buf[have..]).await {
            Ok(0) | Err(_) => return,
            Ok(n) => have += n,
        }
        if let Some(end) = head_end(&buf[..have]) {
            break end;
        }
    };
    let Some(resp) = switching_protocols(&buf[..end]) else {
        return;
    };
    if tcp.write_all(resp.as_bytes()).await.is_err() {
        return;
    }
    if have > end && tcp.write_all(&buf[end..have]).await.is_err() {
        return;
    }
    loop {
        match tcp.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => {
                if tcp.write_all(&buf[..n]).await.is_err() {
                    return;
                }
            }
        }
    }
}

/// The `101` answering a request head, if it has a `Sec-WebSocket-Key`.
fn switching_protocols(head: &[u8]) -> Option<String> {
    let head = String::from_utf8_lossy(head);
    let key = head.lines().find_map(|l| {
        l.split_once(':')
            .filter(|(k, _)| k.eq_ignore_ascii_case("sec-websocket-key"))
            .map(|(_, v)| v.trim().to_string())
    })?;
    let accept = wsx::wsx_proto::handshake::accept_key(key.as_bytes());
    Some(format!("HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: {accept}\r\n\r\n"))
}

/// Where a request head that `buf` holds ends (after its blank line).
fn head_end(buf: &[u8]) -> Option<usize> {
    buf.windows(4).position(|w| w == b"\r\n\r\n").map(|i| i + 4)
}

/// The raw echo on one thread's epoll or io_uring (`raw-epoll`, `raw-uring`).
mod raw_loop {
    use std::io::{Read, Write};
    use std::net::TcpStream;
    use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
    use std::sync::mpsc;

    /// Each connection's buffer: the largest message of the matrix at once.
    const BUF: usize = 64 * 1024 + 16;

    #[derive(Clone, Copy)]
    pub enum Kind {
        Epoll,
        Uring,
    }

    /// How connections reach the loop: a channel and an eventfd to wake it.
    #[derive(Clone)]
    pub struct Tell {
        tx: mpsc::Sender<(TcpStream, Vec<u8>)>,
        wake: RawFd,
        /// epoll's sockets are non-blocking; io_uring's blocking (it waits for them
        /// itself, where a non-blocking one would have its operations fail instead).
        nonblocking: bool,
    }

    pub fn start(kind: Kind) -> std::io::Result<Tell> {
        // SAFETY: a plain syscall; the descriptor is owned below.
        let efd = unsafe { libc::eventfd(0, libc::EFD_NONBLOCK | libc::EFD_CLOEXEC) };
        if efd < 0 {
            return Err(std::io::Error::last_os_error());
        }
        // SAFETY: `efd` was just made and is owned by nothing else.
        let owned = unsafe { OwnedFd::from_raw_fd(efd) };
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || match kind {
            Kind::Epoll => epoll_loop(owned, rx),
            Kind::Uring => uring_loop(owned, rx),
        });
        let nonblocking = matches!(kind, Kind::Epoll);
        Ok(Tell {
            tx,
            wake: efd,
            nonblocking,
        })
    }

    /// The handshake, blocking (on a blocking-pool thread), then the connection to the
    /// loop with whatever came after the request head.
    pub fn adopt(mut tcp: TcpStream, tell: &Tell) {
        // A client that never sends its head holds this thread until the timeout.
        let timeout = Some(std::time::Duration::from_secs(10));
        if tcp.set_nonblocking(false).is_err() || tcp.set_read_timeout(timeout).is_err() {
            return;
        }
        let mut buf = vec![0u8; 16 * 1024];
        let mut have = 0;
        let end = loop {
            match tcp.read(&mut buf[have..]) {
                Ok(0) | Err(_) => return,
                Ok(n) => have += n,
            }
            if let Some(end) = super::head_end(&buf[..have]) {
                break end;
            }
            if have == buf.len() {
                return;
            }
        };
        let Some(resp) = super::switching_protocols(&buf[..end]) else {
            return;
        };
        if tcp.write_all(resp.as_bytes()).is_err()
            || tcp.set_read_timeout(None).is_err()
            || tcp.set_nonblocking(tell.nonblocking).is_err()
        {
            return;
        }
        let rest = buf[end..have].to_vec();
        if tell.tx.send((tcp, rest)).is_ok() {
            let one = 1u64.to_ne_bytes();
            // SAFETY: writes 8 bytes from a live buffer to the loop's eventfd.
            unsafe { libc::write(tell.wake, one.as_ptr().cast(), 8) };
        }
    }

    fn drain_eventfd(efd: &OwnedFd) {
        let mut b = [0u8; 8];
        // SAFETY: reads 8 bytes into a live buffer.
        unsafe { libc::read(efd.as_raw_fd(), b.as_mut_ptr().cast(), 8) };
    }

    struct EConn {
        tcp: TcpStream,
        /// Echoed bytes the socket has not taken yet.
        pending: Vec<u8>,
    }

    fn epoll_loop(efd: OwnedFd, rx: mpsc::Receiver<(TcpStream, Vec<u8>)>) {
        // SAFETY: plain syscalls on descriptors this function owns.
        let ep = unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) };
        assert!(ep >= 0, "epoll_create1");
        let add = |fd: RawFd, token: u64, events: u32| {
            let mut ev = libc::epoll_event { events, u64: token };
            // SAFETY: `ev` lives through the call.
            unsafe { libc::epoll_ctl(ep, libc::EPOLL_CTL_ADD, fd, &mut ev) };
        };
        add(efd.as_raw_fd(), u64::MAX, libc::EPOLLIN as u32);
        let mut conns: Vec<Option<EConn>> = Vec::new();
        let mut buf = vec![0u8; BUF];
        let mut events = vec![libc::epoll_event { events: 0, u64: 0 }; 1024];
        loop {
            // SAFETY: `events` has room for the count given.
            let n = unsafe { libc::epoll_wait(ep, events.as_mut_ptr(), events.len() as i32, -1) };
            for ev in events.iter().take(n.max(0) as usize) {
                let token = ev.u64;
                if token == u64::MAX {
                    drain_eventfd(&efd);
                    while let Ok((tcp, rest)) = rx.try_recv() {
                        let fd = tcp.as_raw_fd() as usize;
                        if conns.len() <= fd {
                            conns.resize_with(fd + 1, || None);
                        }
                        let flags =
                            libc::EPOLLIN | libc::EPOLLOUT | libc::EPOLLRDHUP | libc::EPOLLET;
                        add(fd as RawFd, fd as u64, flags as u32);
                        conns[fd] = Some(EConn { tcp, pending: rest });
                        if !epoll_serve(&mut conns[fd], &mut buf) {
                            conns[fd] = None;
                        }
                    }
                    continue;
                }
                let fd = token as usize;
                if !epoll_serve(&mut conns[fd], &mut buf) {
                    // Closing the socket takes it out of the epoll set.
                    conns[fd] = None;
                }
            }
        }
    }

    /// Write what waits, then read and echo until the socket is empty or full.
    /// `false`: the connection is over.
    fn epoll_serve(slot: &mut Option<EConn>, buf: &mut [u8]) -> bool {
        let Some(c) = slot else {
            return true;
        };
        let fd = c.tcp.as_raw_fd();
        if !c.pending.is_empty() {
            match send(fd, &c.pending) {
                Some(n) => {
                    c.pending.drain(..n);
                    if !c.pending.is_empty() {
                        return true; // the rest on the next writable edge
                    }
                }
                None => return false,
            }
        }
        loop {
            // SAFETY: `buf` is live and as long as said.
            let n = unsafe { libc::recv(fd, buf.as_mut_ptr().cast(), buf.len(), 0) };
            if n == 0 {
                return false;
            }
            if n < 0 {
                return std::io::Error::last_os_error().kind() == std::io::ErrorKind::WouldBlock;
            }
            let n = n as usize;
            match send(fd, &buf[..n]) {
                Some(m) if m < n => {
                    c.pending.extend_from_slice(&buf[m..n]);
                    return true;
                }
                Some(_) => {}
                None => return false,
            }
            if n < buf.len() {
                // A short read emptied the socket: the next bytes bring a new edge.
                return true;
            }
        }
    }

    /// How much of `data` the socket took (0 when full); `None`: it failed.
    fn send(fd: RawFd, data: &[u8]) -> Option<usize> {
        // SAFETY: `data` is live and as long as said.
        let n = unsafe { libc::send(fd, data.as_ptr().cast(), data.len(), libc::MSG_NOSIGNAL) };
        if n >= 0 {
            return Some(n as usize);
        }
        (std::io::Error::last_os_error().kind() == std::io::ErrorKind::WouldBlock).then_some(0)
    }

    struct UConn {
        tcp: TcpStream,
        /// The one operation in flight reads into or sends from here: boxed, so it
        /// stays put while the list of connections grows.
        buf: Box<[u8]>,
        /// Sending `buf[at..len]`; receiving when `at == len`.
        at: usize,
        len: usize,
    }

    const RECV: u64 = 0;
    const SEND: u64 = 1;
    const WAKE: u64 = u64::MAX;

    fn uring_loop(efd: OwnedFd, rx: mpsc::Receiver<(TcpStream, Vec<u8>)>) {
        use io_uring::{opcode, squeue, types, IoUring};
        let mut ring: IoUring = IoUring::builder()
            .setup_single_issuer()
            .setup_defer_taskrun()
            .build(4096)
            .expect("io_uring");
        let mut conns: Vec<Option<UConn>> = Vec::new();
        let mut wake_buf = [0u8; 8];
        let mut queued: Vec<squeue::Entry> = Vec::new();
        let arm_wake = |buf: &mut [u8; 8]| {
            opcode::Read::new(types::Fd(efd.as_raw_fd()), buf.as_mut_ptr(), 8)
                .build()
                .user_data(WAKE)
        };
        queued.push(arm_wake(&mut wake_buf));
        let op = |c: &mut UConn, fd: usize| -> squeue::Entry {
            let raw = types::Fd(c.tcp.as_raw_fd());
            if c.at < c.len {
                let data = &c.buf[c.at..c.len];
                opcode::Send::new(raw, data.as_ptr(), data.len() as u32)
                    .flags(libc::MSG_NOSIGNAL)
                    .build()
                    .user_data((fd as u64) << 1 | SEND)
            } else {
                opcode::Recv::new(raw, c.buf.as_mut_ptr(), c.buf.len() as u32)
                    .build()
                    .user_data((fd as u64) << 1 | RECV)
            }
        };
        let mut done: Vec<(u64, i32)> = Vec::new();
        loop {
            for e in queued.drain(..) {
                // SAFETY: every entry points into a connection's boxed buffer (or
                // `wake_buf`), which is kept until the entry's completion is read: a
                // connection is dropped only on the completion of its one operation.
                while unsafe { ring.submission().push(&e) }.is_err() {
                    ring.submit().expect("submit");
                }
            }
            if let Err(e) = ring.submit_and_wait(1) {
                if e.kind() == std::io::ErrorKind::Interrupted {
                    continue;
                }
                panic!("io_uring: {e}");
            }
            done.extend(ring.completion().map(|c| (c.user_data(), c.result())));
            for (data, res) in done.drain(..) {
                if data == WAKE {
                    while let Ok((tcp, rest)) = rx.try_recv() {
                        let fd = tcp.as_raw_fd() as usize;
                        if conns.len() <= fd {
                            conns.resize_with(fd + 1, || None);
                        }
                        let mut c = UConn {
                            tcp,
                            buf: vec![0u8; BUF].into_boxed_slice(),
                            at: 0,
                            len: rest.len(),
                        };
                        c.buf[..rest.len()].copy_from_slice(&rest);
                        queued.push(op(&mut c, fd));
                        conns[fd] = Some(c);
                    }
                    queued.push(arm_wake(&mut wake_buf));
                    continue;
                }
                let fd = (data >> 1) as usize;
                let Some(c) = conns.get_mut(fd).and_then(Option::as_mut) else {
                    continue;
                };
                if res <= 0 && res != -libc::EAGAIN && res != -libc::EINTR {
                    conns[fd] = None; // EOF or an error: its one operation is done
                    continue;
                }
                let res = res.max(0) as usize;
                if data & 1 == RECV {
                    (c.at, c.len) = (0, res);
                } else {
                    c.at += res;
                    if c.at == c.len {
                        (c.at, c.len) = (0, 0);
                    }
                }
                queued.push(op(c, fd));
            }
        }
    }
}
