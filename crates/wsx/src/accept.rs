//! The server side: answer the opening handshake on a stream, then hand back a
//! [`WebSocket`].

use bytes::BytesMut;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use wsx_proto::handshake::server::{self, Refusal, Request};
use wsx_proto::handshake::Headers;
use wsx_proto::{DeflateParams, HandshakeError, Role, TimeoutKind};

use crate::config::ServerConfig;
use crate::error::{Error, Result};
use crate::websocket::WebSocket;

/// What the handshake settled, and the request it came from (for routing and auth).
#[derive(Debug, Clone)]
pub struct Accepted {
    /// The request target (path and query).
    pub path: String,
    /// The subprotocol chosen, if any.
    pub subprotocol: Option<String>,
    /// The permessage-deflate parameters, if negotiated.
    pub deflate: Option<DeflateParams>,
    /// The request headers (cookies, `Authorization`, `Origin`, ...).
    pub headers: Headers,
}

/// Read and answer the opening handshake on `io`, then return the WebSocket.
///
/// A request that fails RFC 6455 §4.2.1 or the configured policy is answered with its
/// HTTP status and a one-line reason, the transport is shut down, and the error is
/// `Error::Handshake(HandshakeError::Refused { status, reason })`. The whole exchange
/// must finish within `handshake_timeout`.
pub async fn accept<S>(io: S, cfg: &ServerConfig) -> Result<(WebSocket<S>, Accepted)>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    accept_with(io, cfg, |_| Ok(Vec::new())).await
}

/// [`accept`], with a check of the request before the answer: return extra response
/// headers to accept (e.g. `Set-Cookie`), or a [`Refusal`] (e.g. 404 for an unknown
/// path, 401 for a bad token) to refuse.
pub async fn accept_with<S, F>(
    mut io: S,
    cfg: &ServerConfig,
    check: F,
) -> Result<(WebSocket<S>, Accepted)>
where
    S: AsyncRead + AsyncWrite + Unpin,
    F: FnOnce(&Request) -> std::result::Result<Vec<(String, String)>, Refusal>,
{
    let exchange = async {
        let handshake = cfg.negotiation();
        let mut buf = BytesMut::with_capacity(1024);
        let (request, used) = loop {
            match server::parse_request(&buf, &handshake) {
                Ok(Some(done)) => break done,
                Ok(None) => {}
                Err(refusal) => return Err(refuse(&mut io, refusal).await),
            }
            if io.read_buf(&mut buf).await? == 0 {
                return Err(Error::Handshake(HandshakeError::Malformed(
                    "connection closed during the handshake",
                )));
            }
        };
        let extra = match check(&request) {
            Ok(extra) => extra,
            Err(refusal) => return Err(refuse(&mut io, refusal).await),
        };
        let extra: Vec<(&str, &str)> = extra
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        let accepted = match server::respond_with(&request, &handshake, &extra) {
            Ok(a) => a,
            Err(refusal) => return Err(refuse(&mut io, refusal).await),
        };
        io.write_all(&accepted.response).await?;
        io.flush().await?;
        let leftover = buf.split_off(used);
        Ok((request, accepted, leftover))
    };
    // Boxed: the handshake's state (buffers, the parsed request, the timer) would
    // otherwise take room in the caller's future for as long as the connection lives.
    let (request, accepted, leftover) =
        Box::pin(tokio::time::timeout(cfg.handshake_timeout, exchange))
            .await
            .map_err(|_| Error::Timeout(TimeoutKind::Handshake))??;
    let slot = cfg.deflate_context_slot(accepted.deflate.as_ref());
    let deflate = accepted.deflate.zip(cfg.handshake.deflate.as_ref());
    let mut ws = WebSocket::after_handshake(
        io,
        Role::Server,
        &cfg.protocol,
        deflate,
        &leftover,
        cfg.io.clone(),
    );
    ws.inner.deflate_slot = slot;
    Ok((
        ws,
        Accepted {
            path: accepted.path,
            subprotocol: accepted.subprotocol,
            deflate: accepted.deflate,
            headers: request.headers,
        },
    ))
}

async fn refuse<S: AsyncWrite + Unpin>(io: &mut S, refusal: Refusal) -> Error {
    // Best effort: the peer may already be gone.
    let _ = io.write_all(&refusal.response()).await;
    let _ = io.shutdown().await;
    Error::Handshake(HandshakeError::Refused {
        status: refusal.status,
        reason: refusal.reason.into_owned(),
    })
}
