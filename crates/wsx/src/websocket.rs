//! `WebSocket<S>`: the protocol core driven over an async byte stream.

use std::future::{poll_fn, Future};
use std::io::IoSlice;
use std::mem::MaybeUninit;
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use bytes::{Buf, Bytes};
use futures_core::Stream;
use futures_sink::Sink;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::{Instant, Sleep};
use wsx_proto::{CloseCode, CloseFrame, Connection, DataKind, Event, Message, Role, State};

use crate::config::IoConfig;
use crate::error::{Error, Result};

/// Bytes read onto the stack when nothing is buffered (see `poll_event`); also the
/// largest read buffer kept between small messages: the core splits frames up to this
/// size off the buffer, so the buffer's allocation stays.
const STACK_READ: usize = wsx_proto::KEEP_BUFFER_UP_TO;

/// The read buffer kept between small messages for a run of `n`-byte reads: room for
/// one like it and its successor, 256 B to `STACK_READ`.
fn small_buffer(n: usize) -> usize {
    (2 * n).clamp(256, STACK_READ)
}

/// How far the transport shutdown has gone after the close handshake.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Finish {
    /// Still running.
    Running,
    /// The close handshake is over (or failed): flush, then shut the write side down
    /// (server) or wait for the server to do so (client).
    Flushing,
    /// Waiting for the peer's EOF, until the close timeout: the client waits for the
    /// server to close first (RFC 6455 §7.1.1); the server, having shut its write side
    /// down, drains what the peer still sends (a lingering close).
    AwaitEof,
    /// Done: the stream yields `None`.
    Done,
}

/// The connection state shared by [`WebSocket`] and its split halves.
pub(crate) struct Inner<S> {
    io: S,
    conn: Connection,
    io_cfg: IoConfig,
    timer: Option<Pin<Box<Sleep>>>,
    timer_at: Option<Instant>,
    finish: Finish,
    eof_deadline: Option<Instant>,
    /// Bytes read since the input buffer was last empty (the message being read).
    read_run: usize,
    /// The size of the last message read (`read_run` when it ended), as a guess of the
    /// next one's: up to `STACK_READ` it sizes the small buffer kept between messages;
    /// above, the next read goes straight into a buffer that size, so a run of large
    /// messages takes one `recv` each.
    read_hint: usize,
    /// This connection's place among the server's deflate contexts, if it keeps one.
    pub(crate) deflate_slot: Option<crate::config::DeflateContextSlot>,
}

fn now_std() -> std::time::Instant {
    Instant::now().into_std()
}

impl<S: AsyncRead + AsyncWrite + Unpin> Inner<S> {
    pub(crate) fn new(io: S, conn: Connection, io_cfg: IoConfig) -> Self {
        Inner {
            io,
            conn,
            io_cfg,
            timer: None,
            timer_at: None,
            finish: Finish::Running,
            eof_deadline: None,
            read_run: 0,
            read_hint: 0,
            deflate_slot: None,
        }
    }

    /// Write as much queued output as the transport takes now.
    fn poll_write_out(&mut self, cx: &mut Context<'_>) -> Poll<Result<()>> {
        while self.conn.output_len() > 0 {
            let out = self.conn.output();
            // One contiguous chunk (the common case: coalesced small frames) goes out
            // with a plain write, which is cheaper than writev on Linux sockets.
            let n = if self.io.is_write_vectored() && out.chunk().len() < out.remaining() {
                let mut slices = [IoSlice::new(&[]); 32];
                let cnt = out.chunks_vectored(&mut slices);
                ready!(Pin::new(&mut self.io).poll_write_vectored(cx, &slices[..cnt]))?
            } else {
                ready!(Pin::new(&mut self.io).poll_write(cx, out.chunk()))?
            };
            if n == 0 {
                return Poll::Ready(Err(
                    std::io::Error::from(std::io::ErrorKind::WriteZero).into()
                ));
            }
            self.conn.output().advance(n);
        }
        Poll::Ready(Ok(()))
    }

    pub(crate) fn poll_flush(&mut self, cx: &mut Context<'_>) -> Poll<Result<()>> {
        ready!(self.poll_write_out(cx))?;
        ready!(Pin::new(&mut self.io).poll_flush(cx))?;
        Poll::Ready(Ok(()))
    }

    /// Ready when a message can be queued without exceeding the write buffer.
    pub(crate) fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<()>> {
        if self.conn.state() != State::Open {
            return Poll::Ready(Err(Error::AlreadyClosed));
        }
        while self.conn.output_len() >= self.io_cfg.write_buffer_size {
            // Write until below the limit; waits (backpressure) when the peer is slow.
            if self.poll_write_out(cx)?.is_pending() {
                return Poll::Pending;
            }
        }
        Poll::Ready(Ok(()))
    }

    pub(crate) fn start_send(&mut self, msg: Message) -> Result<()> {
        match msg {
            Message::Close(frame) => self.start_close(frame),
            msg => self.conn.send(msg).map_err(Error::from),
        }
    }

    pub(crate) fn start_close(&mut self, frame: Option<CloseFrame>) -> Result<()> {
        self.conn.close(now_std(), frame).map_err(Error::from)
    }

    pub(crate) fn send_frame(&mut self, kind: DataKind, payload: Bytes, fin: bool) -> Result<()> {
        self.conn
            .send_frame(kind, payload, fin)
            .map_err(Error::from)
    }

    pub(crate) fn send_shared(&mut self, frame: &wsx_proto::SharedFrame) -> Result<()> {
        self.conn.send_shared(frame).map_err(Error::from)
    }

    /// Queue without waiting: `Full` when the write buffer is at its limit. Starts
    /// writing what the transport takes now.
    pub(crate) fn try_send(&mut self, msg: Message, cx: &mut Context<'_>) -> Result<()> {
        if self.conn.state() != State::Open {
            return Err(Error::AlreadyClosed);
        }
        if self.conn.output_len() >= self.io_cfg.write_buffer_size {
            if let Poll::Ready(r) = self.poll_write_out(cx) {
                r?;
            }
            if self.conn.output_len() >= self.io_cfg.write_buffer_size {
                return Err(Error::Full(msg));
            }
        }
        self.start_send(msg)?;
        if let Poll::Ready(r) = self.poll_write_out(cx) {
            r?;
        }
        Ok(())
    }

    pub(crate) fn output_len(&self) -> usize {
        self.conn.output_len()
    }

    pub(crate) fn state(&self) -> State {
        self.conn.state()
    }

    pub(crate) fn io(&self) -> &S {
        &self.io
    }

    /// Arm the one timer at `at` (or disarm it); poll it. Ready when it fired.
    fn poll_timer(&mut self, at: Option<Instant>, cx: &mut Context<'_>) -> Poll<()> {
        let Some(at) = at else {
            self.timer_at = None;
            return Poll::Pending;
        };
        if self.timer_at != Some(at) {
            match self.timer.as_mut() {
                Some(t) => t.as_mut().reset(at),
                None => self.timer = Some(Box::pin(tokio::time::sleep_until(at))),
            }
            self.timer_at = Some(at);
        }
        match self.timer.as_mut() {
            Some(t) => {
                ready!(t.as_mut().poll(cx));
                self.timer_at = None;
                Poll::Ready(())
            }
            None => Poll::Pending,
        }
    }

    /// The next event: a message, a control frame, a data frame (frame mode), or the end.
    pub(crate) fn poll_event(&mut self, cx: &mut Context<'_>) -> Poll<Option<Result<Event>>> {
        loop {
            match self.finish {
                Finish::Done => return Poll::Ready(None),
                Finish::Running => {}
                Finish::Flushing | Finish::AwaitEof => {
                    return self.poll_finish(cx).map(|r| r.err().map(Err));
                }
            }
            match self.conn.poll_event() {
                Ok(Some(ev)) => {
                    // Send what the event queued (a pong, a close reply) without waiting.
                    if self.conn.output_len() > 0 {
                        if let Poll::Ready(Err(e)) = self.poll_write_out(cx) {
                            self.finish = Finish::Done;
                            return Poll::Ready(Some(Err(e)));
                        }
                    }
                    if self.conn.state() == State::Closed {
                        self.finish = Finish::Flushing;
                    }
                    return Poll::Ready(Some(Ok(ev)));
                }
                Ok(None) => {}
                Err(e) => {
                    self.finish = Finish::Flushing;
                    // Best effort: the close frame for the error goes out before the end.
                    let _ = self.poll_finish(cx);
                    return Poll::Ready(Some(Err(e.into())));
                }
            }
            if self.conn.state() == State::Closed {
                self.finish = Finish::Flushing;
                continue;
            }
            // Before waiting for input, write what was queued (fed messages, pongs):
            // many messages leave in one write, and nothing waits for an explicit flush.
            if self.conn.output_len() > 0 {
                if let Poll::Ready(Err(e)) = self.poll_flush(cx) {
                    self.finish = Finish::Done;
                    return Poll::Ready(Some(Err(e)));
                }
            }
            let deadline = self.conn.poll_timeout().map(Instant::from_std);
            if self.poll_timer(deadline, cx).is_ready() {
                self.conn.handle_timeout(now_std());
                continue;
            }
            // Read. Before the first small message (or idle since a large one), read onto
            // the stack: such a connection holds no read buffer at all. Otherwise read
            // straight into the core's buffer: between small messages into the small
            // buffer kept from the last one (reused in place once its message is
            // dropped: no allocation or copy per message); within a frame or after a
            // large message with room for what the frame still needs (or the size of the
            // last message) plus `read_size`. The read that completes a frame then comes
            // back short, and the runtime waits for readiness instead of trying a read
            // that would block: a run of 16 KiB messages takes one `recv` each.
            if self.conn.input_buffer().is_empty() && self.read_run > 0 {
                self.read_hint = self.read_run;
                self.read_run = 0;
            }
            let between = self.conn.input_buffer().is_empty();
            let small = self.read_hint <= STACK_READ;
            let n = if between && small && self.conn.input_buffer().capacity() == 0 {
                let mut stack = [MaybeUninit::<u8>::uninit(); STACK_READ];
                let mut rb = ReadBuf::uninit(&mut stack);
                match Pin::new(&mut self.io).poll_read(cx, &mut rb) {
                    Poll::Pending => return Poll::Pending,
                    Poll::Ready(Ok(())) => {
                        let filled = rb.filled();
                        let buf = self.conn.input_buffer();
                        buf.reserve(small_buffer(filled.len()));
                        buf.extend_from_slice(filled);
                        Ok(filled.len())
                    }
                    Poll::Ready(Err(e)) => Err(e),
                }
            } else {
                let want = if !between {
                    self.conn
                        .input_wanted()
                        .saturating_add(self.io_cfg.read_size)
                } else if small {
                    small_buffer(self.read_hint)
                } else {
                    self.read_hint.saturating_add(self.io_cfg.read_size)
                };
                let want = want.min(self.io_cfg.max_read_size.max(self.io_cfg.read_size));
                let buf = self.conn.input_buffer();
                buf.reserve(want);
                match tokio_util::io::poll_read_buf(Pin::new(&mut self.io), cx, buf) {
                    Poll::Pending => {
                        let buf = self.conn.input_buffer();
                        if buf.is_empty() && (!small || buf.capacity() > STACK_READ) {
                            // Waiting after a large message: hold no buffer meanwhile.
                            *buf = bytes::BytesMut::new();
                        }
                        return Poll::Pending;
                    }
                    Poll::Ready(r) => r,
                }
            };
            match n {
                Ok(0) => {
                    self.finish = Finish::Done;
                    return Poll::Ready(Some(Err(Error::AbnormalClose)));
                }
                Ok(n) => {
                    self.read_run += n;
                    if self.conn.tracks_input_time() {
                        self.conn.input_received(now_std());
                    }
                }
                Err(e) => {
                    self.finish = Finish::Done;
                    return Poll::Ready(Some(Err(e.into())));
                }
            }
        }
    }

    /// After the close handshake: flush, then shut down (server) or await EOF (client).
    fn poll_finish(&mut self, cx: &mut Context<'_>) -> Poll<Result<()>> {
        if self.finish == Finish::Flushing {
            if let Err(e) = ready!(self.poll_flush(cx)) {
                self.finish = Finish::Done;
                return Poll::Ready(Err(e));
            }
            if self.conn.role() == Role::Server {
                // RFC 6455 §7.1.1: the server closes the TCP connection first. It shuts
                // its write side down, then keeps reading until the peer's EOF (a
                // lingering close): dropping a socket with unread input sends a reset,
                // which can destroy the close frame still in flight to a peer that was
                // sending when the server closed (a message over the limit, say).
                let _ = ready!(Pin::new(&mut self.io).poll_shutdown(cx));
            }
            self.finish = Finish::AwaitEof;
            self.eof_deadline = Some(Instant::now() + self.conn.config().close_timeout);
        }
        if self.finish == Finish::AwaitEof {
            let mut scratch = [0u8; 4096];
            loop {
                let mut rb = tokio::io::ReadBuf::new(&mut scratch);
                match Pin::new(&mut self.io).poll_read(cx, &mut rb) {
                    Poll::Ready(Ok(())) if rb.filled().is_empty() => break,
                    Poll::Ready(Ok(())) => continue, // data after close: discarded
                    Poll::Ready(Err(_)) => break,
                    Poll::Pending => {
                        let at = self.eof_deadline;
                        if self.poll_timer(at, cx).is_ready() {
                            break;
                        }
                        return Poll::Pending;
                    }
                }
            }
            if self.conn.role() == Role::Client {
                let _ = Pin::new(&mut self.io).poll_shutdown(cx);
            }
            self.finish = Finish::Done;
        }
        Poll::Ready(Ok(()))
    }

    pub(crate) fn poll_next_message(
        &mut self,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Message>>> {
        match ready!(self.poll_event(cx)) {
            None => Poll::Ready(None),
            Some(Ok(Event::Message(m))) => Poll::Ready(Some(Ok(m))),
            Some(Ok(Event::Frame(_))) => Poll::Ready(Some(Err(Error::InvalidInput(
                "frame mode is on: read with next_event()",
            )))),
            Some(Err(e)) => Poll::Ready(Some(Err(e))),
        }
    }
}

/// A WebSocket connection over `S` (a TCP stream, a TLS stream, an upgraded hyper
/// connection, anything `AsyncRead + AsyncWrite + Unpin`).
///
/// It is a [`Stream`] of [`Message`]s and a [`Sink`] of them. Pings are answered by
/// themselves, keepalive pings and timeouts run while the stream is polled, and after a
/// close frame (either side's) the stream yields the close, finishes the close handshake
/// and then ends. Keep reading until `None` so the close handshake completes.
///
/// ```no_run
/// # async fn run() -> wsx::Result<()> {
/// use futures_util::{SinkExt, StreamExt};
///
/// let listener = tokio::net::TcpListener::bind("127.0.0.1:9001").await?;
/// let (tcp, _) = listener.accept().await?;
/// tcp.set_nodelay(true)?;
/// let (mut ws, _info) = wsx::accept(tcp, &wsx::ServerConfig::default()).await?;
/// while let Some(msg) = ws.next().await {
///     let msg = msg?;
///     if msg.is_data() {
///         ws.send(msg).await?;
///     }
/// }
/// # Ok(()) }
/// ```
pub struct WebSocket<S> {
    pub(crate) inner: Inner<S>,
}

impl<S: AsyncRead + AsyncWrite + Unpin> WebSocket<S> {
    /// Wrap a stream on which the opening handshake is already done.
    /// `conn` carries the negotiated options (deflate) and any bytes already read.
    pub fn from_connection(io: S, conn: Connection, io_cfg: IoConfig) -> Self {
        WebSocket {
            inner: Inner::new(io, conn, io_cfg),
        }
    }

    /// A WebSocket after a handshake that negotiated `deflate` (with our `deflate_cfg`),
    /// with `leftover` bytes already read past the handshake.
    pub(crate) fn after_handshake(
        io: S,
        role: wsx_proto::Role,
        protocol: &wsx_proto::Config,
        deflate: Option<(wsx_proto::DeflateParams, &wsx_proto::DeflateConfig)>,
        leftover: &[u8],
        io_cfg: IoConfig,
    ) -> Self {
        let mut conn = Connection::new(role, protocol.clone(), now_std());
        if let Some((params, cfg)) = deflate {
            conn.enable_deflate(params, cfg);
        }
        conn.input_buffer().extend_from_slice(leftover);
        Self::from_connection(io, conn, io_cfg)
    }

    /// The next message (or control frame); `None` once the connection is closed.
    pub async fn recv(&mut self) -> Option<Result<Message>> {
        poll_fn(|cx| self.inner.poll_next_message(cx)).await
    }

    /// The next event, including data frames in frame mode (`Config::frame_mode`).
    pub async fn next_event(&mut self) -> Option<Result<Event>> {
        poll_fn(|cx| self.inner.poll_event(cx)).await
    }

    /// Send a message and flush it. Waits while the write buffer is full.
    pub async fn send(&mut self, msg: Message) -> Result<()> {
        self.feed(msg).await?;
        self.flush().await
    }

    /// Queue a message without flushing (many small messages then leave in one write).
    /// Waits while the write buffer is full.
    pub async fn feed(&mut self, msg: Message) -> Result<()> {
        poll_fn(|cx| self.inner.poll_ready(cx)).await?;
        self.inner.start_send(msg)
    }

    /// Queue a message if the write buffer has room, else hand it back in
    /// [`Error::Full`]. Starts writing at once; call [`flush`](Self::flush) (or keep
    /// reading) to finish.
    pub fn try_send(&mut self, msg: Message) -> Result<()> {
        let waker = futures_util::task::noop_waker();
        self.inner.try_send(msg, &mut Context::from_waker(&waker))
    }

    /// Send one frame of a message, streaming a large message out without holding it
    /// whole (see `wsx_proto::Connection::send_frame`).
    pub async fn send_frame(&mut self, kind: DataKind, payload: Bytes, fin: bool) -> Result<()> {
        poll_fn(|cx| self.inner.poll_ready(cx)).await?;
        self.inner.send_frame(kind, payload, fin)?;
        self.flush().await
    }

    /// Queue a pre-encoded frame shared among many connections (server only).
    pub async fn send_shared(&mut self, frame: &wsx_proto::SharedFrame) -> Result<()> {
        poll_fn(|cx| self.inner.poll_ready(cx)).await?;
        self.inner.send_shared(frame)
    }

    /// Write everything queued.
    pub async fn flush(&mut self) -> Result<()> {
        poll_fn(|cx| self.inner.poll_flush(cx)).await
    }

    /// Close: send a close frame with `code` and `reason`, then read (discarding data)
    /// until the peer's close arrives and the transport ends, or the close timeout.
    pub async fn close(&mut self, code: CloseCode, reason: &str) -> Result<()> {
        self.inner
            .start_close(Some(CloseFrame::new(code, reason)))?;
        self.flush().await?;
        while let Some(ev) = self.next_event().await {
            match ev {
                Ok(_) => {}
                Err(Error::Timeout(_)) | Err(Error::AbnormalClose) => break,
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }

    /// Where the close handshake stands.
    pub fn state(&self) -> State {
        self.inner.state()
    }

    /// Bytes queued for writing.
    pub fn buffered_amount(&self) -> usize {
        self.inner.output_len()
    }

    /// The underlying transport.
    pub fn get_ref(&self) -> &S {
        self.inner.io()
    }

    /// The transport and any bytes already read but not yet processed, for a caller
    /// that takes over the raw stream (a load generator, say).
    pub fn into_inner(mut self) -> (S, bytes::BytesMut) {
        let pending = self.inner.conn.input_buffer().split();
        (self.inner.io, pending)
    }

    /// The transport, the protocol core (with any bytes read and not yet processed in
    /// its input buffer, and its deflate state) and the server's hold on a deflate
    /// context, for a caller that drives the connection itself (the
    /// [`event_loop`](crate::event_loop)).
    pub fn into_parts(self) -> (S, Connection, Option<impl Send + 'static>) {
        let Inner {
            io,
            conn,
            deflate_slot,
            ..
        } = self.inner;
        (io, conn, deflate_slot)
    }

    /// Split into a reader and a writer that can be used from two tasks.
    pub fn split(self) -> (crate::split::WsReader<S>, crate::split::WsWriter<S>) {
        crate::split::split(self.inner)
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> Stream for WebSocket<S> {
    type Item = Result<Message>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.get_mut().inner.poll_next_message(cx)
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> Sink<Message> for WebSocket<S> {
    type Error = Error;

    fn poll_ready(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<()>> {
        self.get_mut().inner.poll_ready(cx)
    }

    fn start_send(self: Pin<&mut Self>, item: Message) -> Result<()> {
        self.get_mut().inner.start_send(item)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<()>> {
        self.get_mut().inner.poll_flush(cx)
    }

    /// Sends a close frame (1000) if none was sent, and flushes. Keep reading the stream
    /// to see the peer's close.
    fn poll_close(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<()>> {
        let inner = &mut self.get_mut().inner;
        if inner.state() == State::Open {
            inner.start_close(Some(CloseFrame::new(CloseCode::NORMAL, "")))?;
        }
        inner.poll_flush(cx)
    }
}

impl<S> std::fmt::Debug for WebSocket<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WebSocket")
            .field("role", &self.inner.conn.role())
            .field("state", &self.inner.conn.state())
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use futures_util::StreamExt;

    use super::STACK_READ;
    use crate::{accept, client_handshake, ClientConfig, Message, ServerConfig, WebSocket};

    type Duplex = WebSocket<tokio::io::DuplexStream>;

    /// A client and a server connected in memory, handshake done.
    async fn pair() -> (Duplex, Duplex) {
        let (a, b) = tokio::io::duplex(1 << 20);
        let server = tokio::spawn(async move { accept(b, &ServerConfig::default()).await });
        let (client, _) = client_handshake(a, "x", "/", &ClientConfig::default())
            .await
            .unwrap();
        let (server, _) = server.await.unwrap().unwrap();
        (client, server)
    }

    #[tokio::test]
    async fn small_messages_reuse_one_small_buffer_and_a_new_connection_holds_none() {
        let (mut client, mut server) = pair().await;
        // Waiting for its first message, a connection holds no read buffer.
        let idle = tokio::time::timeout(std::time::Duration::from_millis(20), server.next()).await;
        assert!(idle.is_err());
        assert_eq!(server.inner.conn.input_buffer().capacity(), 0);
        let (mut kept, mut at) = (Vec::new(), Vec::new());
        for i in 0..3u8 {
            client.send(Message::binary(vec![i; 100])).await.unwrap();
            let got = server.next().await.unwrap().unwrap();
            assert_eq!(got, Message::binary(vec![i; 100]));
            drop(got);
            let idle =
                tokio::time::timeout(std::time::Duration::from_millis(20), server.next()).await;
            assert!(idle.is_err());
            let buf = server.inner.conn.input_buffer();
            kept.push(buf.capacity());
            at.push(buf.as_ptr() as usize);
        }
        // Between small messages the buffer stays, sized for them (not for the largest).
        assert!(kept.iter().all(|c| *c > 0 && *c <= STACK_READ), "{kept:?}");
        // And it is the same memory each time: the read after a dropped message reuses
        // it in place (a new allocation is made before the old one is freed, so it
        // would sit elsewhere).
        assert!(at.windows(2).all(|w| w[0] == w[1]), "{at:?}");
    }

    #[tokio::test]
    async fn large_messages_are_read_whole_and_an_idle_connection_keeps_no_buffer() {
        let (mut client, mut server) = pair().await;
        for i in 0..3u8 {
            client
                .send(Message::binary(vec![i; 64 << 10]))
                .await
                .unwrap();
            let got = server.next().await.unwrap().unwrap();
            assert_eq!(got, Message::binary(vec![i; 64 << 10]));
        }
        assert!(
            server.inner.read_hint > STACK_READ,
            "the next read is sized by the last message"
        );
        // Nothing more arrives: the reader waits holding no buffer.
        let idle = tokio::time::timeout(std::time::Duration::from_millis(50), server.next()).await;
        assert!(idle.is_err());
        assert_eq!(server.inner.conn.input_buffer().capacity(), 0);
        // And a small message still gets through after that.
        client.send(Message::text("small")).await.unwrap();
        assert_eq!(
            server.next().await.unwrap().unwrap(),
            Message::text("small")
        );
    }
}
