//! `echo-peer SERVER PORT`: an echo server built the way its crate's docs show, on a
//! multi-threaded tokio runtime. SERVER: wsx | wsx-loop | tungstenite | fastwebsockets | raw.
//!
//! `wsx-loop`: the handshake on tokio, then the connection on a `wsx::event_loop` (one
//! thread, a slab of connection states, no task per connection).

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
    use base64::Engine as _;
    use sha1::{Digest, Sha1};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    let mut buf = vec![0u8; 64 * 1024];
    let mut have = 0;
    let head_end = loop {
        match tcp.read(&mut buf[have..]).await {
            Ok(0) | Err(_) => return,
            Ok(n) => have += n,
        }
        if let Some(i) = buf[..have].windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).to_string();
    let Some(key) = head.lines().find_map(|l| {
        l.split_once(':')
            .filter(|(k, _)| k.eq_ignore_ascii_case("sec-websocket-key"))
            .map(|(_, v)| v.trim().to_string())
    }) else {
        return;
    };
    let mut sha = Sha1::new();
    sha.update(key.as_bytes());
    sha.update(b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11");
    let accept = base64::engine::general_purpose::STANDARD.encode(sha.finalize());
    let resp = format!("HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: {accept}\r\n\r\n");
    if tcp.write_all(resp.as_bytes()).await.is_err() {
        return;
    }
    if have > head_end && tcp.write_all(&buf[head_end..have]).await.is_err() {
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
