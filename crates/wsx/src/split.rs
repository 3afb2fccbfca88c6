//! A WebSocket split into a reader and a writer for two tasks.
//!
//! Both halves share the connection behind a mutex held only inside a poll (never across
//! an await). Reading may write (pongs, close replies) and writing may wait for the
//! transport, so each half registers its waker with a proxy that wakes both: no wakeup
//! is lost whichever half last touched the transport.

use std::future::poll_fn;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll, Wake, Waker};

use bytes::Bytes;
use futures_core::Stream;
use futures_sink::Sink;
use tokio::io::{AsyncRead, AsyncWrite};
use wsx_proto::{CloseCode, CloseFrame, DataKind, Event, Message, State};

use crate::error::{Error, Result};
use crate::websocket::Inner;

#[derive(Default)]
struct WakeBoth {
    reader: Mutex<Option<Waker>>,
    writer: Mutex<Option<Waker>>,
}

impl Wake for WakeBoth {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        for slot in [&self.reader, &self.writer] {
            if let Some(w) = lock(slot).take() {
                w.wake();
            }
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic while holding the lock leaves the state usable: recover it.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

struct Shared<S> {
    inner: Mutex<Inner<S>>,
    wakers: Arc<WakeBoth>,
    proxy: Waker,
}

impl<S: AsyncRead + AsyncWrite + Unpin> Shared<S> {
    fn with<T>(
        &self,
        cx: &mut Context<'_>,
        reader: bool,
        f: impl FnOnce(&mut Inner<S>, &mut Context<'_>) -> T,
    ) -> T {
        let slot = if reader {
            &self.wakers.reader
        } else {
            &self.wakers.writer
        };
        *lock(slot) = Some(cx.waker().clone());
        let mut proxy_cx = Context::from_waker(&self.proxy);
        f(&mut lock(&self.inner), &mut proxy_cx)
    }
}

pub(crate) fn split<S: AsyncRead + AsyncWrite + Unpin>(
    inner: Inner<S>,
) -> (WsReader<S>, WsWriter<S>) {
    let wakers = Arc::new(WakeBoth::default());
    let shared = Arc::new(Shared {
        inner: Mutex::new(inner),
        proxy: Waker::from(wakers.clone()),
        wakers,
    });
    (
        WsReader {
            shared: shared.clone(),
        },
        WsWriter { shared },
    )
}

/// The reading half of a split [`WebSocket`](crate::WebSocket): a [`Stream`] of messages.
/// It also keeps the connection's timers and answers pings, so keep polling it.
pub struct WsReader<S> {
    shared: Arc<Shared<S>>,
}

/// The writing half of a split [`WebSocket`](crate::WebSocket): a [`Sink`] of messages.
pub struct WsWriter<S> {
    shared: Arc<Shared<S>>,
}

impl<S: AsyncRead + AsyncWrite + Unpin> WsReader<S> {
    /// The next message; `None` once the connection is closed.
    pub async fn recv(&mut self) -> Option<Result<Message>> {
        poll_fn(|cx| self.shared.with(cx, true, |i, cx| i.poll_next_message(cx))).await
    }

    /// The next event, including data frames in frame mode.
    pub async fn next_event(&mut self) -> Option<Result<Event>> {
        poll_fn(|cx| self.shared.with(cx, true, |i, cx| i.poll_event(cx))).await
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> Stream for WsReader<S> {
    type Item = Result<Message>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.shared.with(cx, true, |i, cx| i.poll_next_message(cx))
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> WsWriter<S> {
    /// Send a message and flush it; waits while the write buffer is full.
    pub async fn send(&mut self, msg: Message) -> Result<()> {
        self.feed(msg).await?;
        self.flush().await
    }

    /// Queue a message without flushing; waits while the write buffer is full.
    pub async fn feed(&mut self, msg: Message) -> Result<()> {
        poll_fn(|cx| self.shared.with(cx, false, |i, cx| i.poll_ready(cx))).await?;
        lock(&self.shared.inner).start_send(msg)
    }

    /// Queue a message if there is room, else hand it back in [`Error::Full`].
    pub fn try_send(&mut self, msg: Message) -> Result<()> {
        let mut cx = Context::from_waker(&self.shared.proxy);
        lock(&self.shared.inner).try_send(msg, &mut cx)
    }

    /// Send one frame of a streamed message.
    pub async fn send_frame(&mut self, kind: DataKind, payload: Bytes, fin: bool) -> Result<()> {
        poll_fn(|cx| self.shared.with(cx, false, |i, cx| i.poll_ready(cx))).await?;
        lock(&self.shared.inner).send_frame(kind, payload, fin)?;
        self.flush().await
    }

    /// Queue a pre-encoded shared frame (server only).
    pub async fn send_shared(&mut self, frame: &wsx_proto::SharedFrame) -> Result<()> {
        poll_fn(|cx| self.shared.with(cx, false, |i, cx| i.poll_ready(cx))).await?;
        lock(&self.shared.inner).send_shared(frame)
    }

    /// Write everything queued.
    pub async fn flush(&mut self) -> Result<()> {
        poll_fn(|cx| self.shared.with(cx, false, |i, cx| i.poll_flush(cx))).await
    }

    /// Send a close frame and flush it; the reader sees the peer's reply and the end.
    pub async fn close(&mut self, code: CloseCode, reason: &str) -> Result<()> {
        lock(&self.shared.inner).start_close(Some(CloseFrame::new(code, reason)))?;
        self.flush().await
    }

    /// Where the close handshake stands.
    pub fn state(&self) -> State {
        lock(&self.shared.inner).state()
    }

    /// Bytes queued for writing.
    pub fn buffered_amount(&self) -> usize {
        lock(&self.shared.inner).output_len()
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> Sink<Message> for WsWriter<S> {
    type Error = Error;

    fn poll_ready(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<()>> {
        self.shared.with(cx, false, |i, cx| i.poll_ready(cx))
    }

    fn start_send(self: Pin<&mut Self>, item: Message) -> Result<()> {
        lock(&self.shared.inner).start_send(item)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<()>> {
        self.shared.with(cx, false, |i, cx| i.poll_flush(cx))
    }

    fn poll_close(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<()>> {
        self.shared.with(cx, false, |i, cx| {
            if i.state() == State::Open {
                i.start_close(Some(CloseFrame::new(CloseCode::NORMAL, "")))?;
            }
            i.poll_flush(cx)
        })
    }
}
