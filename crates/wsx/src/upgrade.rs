//! Upgrade a hyper 1 request to a WebSocket (feature `hyper`), and an axum extractor
//! (feature `axum`).
//!
//! ```no_run
//! # #[cfg(feature = "axum")]
//! # fn app() -> axum::Router {
//! use axum::{routing::get, Router};
//! use futures_util::{SinkExt, StreamExt};
//! use wsx::upgrade::WebSocketUpgrade;
//!
//! async fn echo(upgrade: WebSocketUpgrade) -> axum::response::Response {
//!     upgrade.on_upgrade(|mut ws| async move {
//!         while let Some(Ok(msg)) = ws.next().await {
//!             if msg.is_data() && ws.send(msg).await.is_err() {
//!                 break;
//!             }
//!         }
//!     })
//! }
//! Router::new().route("/echo", get(echo))
//! # }
//! ```

use bytes::Bytes;
use http::{header, HeaderValue, Response, StatusCode};
use http_body_util::Full;
use hyper::upgrade::{OnUpgrade, Upgraded};
use hyper_util::rt::TokioIo;
use wsx_proto::handshake::server::{self, Refusal, Request};
use wsx_proto::handshake::Headers;

use crate::accept::Accepted;
use crate::config::ServerConfig;
use crate::error::{Error, Result};
use crate::websocket::WebSocket;

/// The response type of this module: a 101 or a refusal.
pub type HttpResponse = Response<Full<Bytes>>;

/// The transport of an upgraded hyper connection.
pub type UpgradedIo = TokioIo<Upgraded>;

/// Whether a request asks for a WebSocket upgrade (`Upgrade: websocket`).
pub fn is_upgrade_request<B>(req: &http::Request<B>) -> bool {
    req.headers()
        .get_all(header::UPGRADE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|t| t.trim().eq_ignore_ascii_case("websocket"))
}

/// The handshake request as `wsx-proto` sees it.
pub fn to_request(
    method: &http::Method,
    uri: &http::Uri,
    version: http::Version,
    headers: &http::HeaderMap,
) -> Request {
    Request {
        method: method.as_str().to_string(),
        path: uri
            .path_and_query()
            .map(|p| p.as_str().to_string())
            .unwrap_or_else(|| "/".into()),
        version: if version == http::Version::HTTP_10 {
            0
        } else {
            1
        },
        headers: Headers(
            headers
                .iter()
                .map(|(k, v)| (k.as_str().to_string(), v.as_bytes().to_vec()))
                .collect(),
        ),
    }
}

/// A refusal as an HTTP response: its status, a one-line body, and the headers the
/// status needs.
pub fn refusal_response(refusal: &Refusal) -> HttpResponse {
    let mut resp = Response::new(Full::new(Bytes::from(format!("{}\n", refusal.reason))));
    *resp.status_mut() = StatusCode::from_u16(refusal.status).unwrap_or(StatusCode::BAD_REQUEST);
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    match refusal.status {
        426 => {
            h.insert(
                header::SEC_WEBSOCKET_VERSION,
                HeaderValue::from_static("13"),
            );
        }
        405 => {
            h.insert(header::ALLOW, HeaderValue::from_static("GET"));
        }
        _ => {}
    }
    if let Some(secs) = refusal.retry_after {
        h.insert(header::RETRY_AFTER, HeaderValue::from(secs));
    }
    resp
}

/// A negotiated upgrade: await [`Upgrade::websocket`] after the 101 response was sent.
pub struct Upgrade {
    on_upgrade: OnUpgrade,
    cfg: ServerConfig,
    accepted: Accepted,
    /// Taken when negotiated, so that concurrent handshakes count.
    deflate_slot: Option<crate::config::DeflateContextSlot>,
}

impl Upgrade {
    /// What was negotiated.
    pub fn accepted(&self) -> &Accepted {
        &self.accepted
    }

    /// The WebSocket, once hyper has handed over the connection.
    pub async fn websocket(self) -> Result<(WebSocket<UpgradedIo>, Accepted)> {
        let upgraded = self
            .on_upgrade
            .await
            .map_err(|e| Error::Io(std::io::Error::other(e)))?;
        let deflate = self
            .accepted
            .deflate
            .zip(self.cfg.handshake.deflate.as_ref());
        let mut ws = WebSocket::after_handshake(
            TokioIo::new(upgraded),
            wsx_proto::Role::Server,
            &self.cfg.protocol,
            deflate,
            &[],
            self.cfg.io.clone(),
        );
        ws.inner.deflate_slot = self.deflate_slot;
        Ok((ws, self.accepted))
    }
}

/// Negotiate a WebSocket on a hyper request: returns the `101 Switching Protocols`
/// response to send and the pending [`Upgrade`], or the refusal response (400, 403,
/// 405, 426, ...) to send instead.
// The error is the response to send, as hyper services return it: boxing it would only
// cost an allocation per refusal.
#[allow(clippy::result_large_err)]
pub fn upgrade<B>(
    req: &mut http::Request<B>,
    cfg: &ServerConfig,
) -> std::result::Result<(HttpResponse, Upgrade), HttpResponse> {
    try_upgrade(req, cfg).map_err(|r| refusal_response(&r))
}

/// [`upgrade`], giving the [`Refusal`] itself (to log its reason, say) instead of its
/// response; [`refusal_response`] turns it into one.
pub fn try_upgrade<B>(
    req: &mut http::Request<B>,
    cfg: &ServerConfig,
) -> std::result::Result<(HttpResponse, Upgrade), Refusal> {
    let request = to_request(req.method(), req.uri(), req.version(), req.headers());
    let on_upgrade = req
        .extensions_mut()
        .remove::<OnUpgrade>()
        .ok_or_else(|| Refusal::new(426, "connection cannot be upgraded"))?;
    negotiate(request, on_upgrade, cfg)
}

fn negotiate(
    request: Request,
    on_upgrade: OnUpgrade,
    cfg: &ServerConfig,
) -> std::result::Result<(HttpResponse, Upgrade), Refusal> {
    let accepted = server::respond(&request, &cfg.negotiation())?;
    let mut resp = Response::new(Full::new(Bytes::new()));
    *resp.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    let h = resp.headers_mut();
    h.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
    h.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    let value =
        |s: &str| HeaderValue::from_str(s).map_err(|_| Refusal::new(500, "bad header value"));
    h.insert(header::SEC_WEBSOCKET_ACCEPT, value(&accepted.accept_key)?);
    if let Some(p) = &accepted.subprotocol {
        h.insert(header::SEC_WEBSOCKET_PROTOCOL, value(p)?);
    }
    if let Some(e) = &accepted.extensions {
        h.insert(header::SEC_WEBSOCKET_EXTENSIONS, value(e)?);
    }
    let info = Accepted {
        path: accepted.path,
        subprotocol: accepted.subprotocol,
        deflate: accepted.deflate,
        headers: request.headers,
    };
    Ok((
        resp,
        Upgrade {
            on_upgrade,
            deflate_slot: cfg.deflate_context_slot(info.deflate.as_ref()),
            cfg: cfg.clone(),
            accepted: info,
        },
    ))
}

#[cfg(feature = "axum")]
pub use self::axum_support::WebSocketUpgrade;

#[cfg(feature = "axum")]
mod axum_support {
    use std::future::Future;

    use axum::extract::FromRequestParts;
    use axum::response::{IntoResponse, Response};
    use http::request::Parts;
    use hyper::upgrade::OnUpgrade;
    use wsx_proto::handshake::server::Refusal;

    use super::{negotiate, refusal_response, to_request, UpgradedIo};
    use crate::accept::Accepted;
    use crate::config::ServerConfig;
    use crate::websocket::WebSocket;

    /// An axum extractor for a WebSocket upgrade. Set the configuration with
    /// [`config`](Self::config), then answer with [`on_upgrade`](Self::on_upgrade).
    pub struct WebSocketUpgrade {
        request: wsx_proto::handshake::server::Request,
        on_upgrade: Option<OnUpgrade>,
        cfg: ServerConfig,
    }

    impl WebSocketUpgrade {
        /// Use this configuration (origin policy, subprotocols, deflate, limits).
        pub fn config(mut self, cfg: ServerConfig) -> Self {
            self.cfg = cfg;
            self
        }

        /// The request headers (for auth before upgrading).
        pub fn headers(&self) -> &wsx_proto::handshake::Headers {
            &self.request.headers
        }

        /// Negotiate and answer: 101 and `callback` run with the WebSocket on its own
        /// task, or the refusal's status and reason.
        pub fn on_upgrade<F, Fut>(self, callback: F) -> Response
        where
            F: FnOnce(WebSocket<UpgradedIo>) -> Fut + Send + 'static,
            Fut: Future<Output = ()> + Send + 'static,
        {
            self.on_upgrade_with(|ws, _| callback(ws))
        }

        /// [`on_upgrade`](Self::on_upgrade), also passing what was negotiated.
        pub fn on_upgrade_with<F, Fut>(self, callback: F) -> Response
        where
            F: FnOnce(WebSocket<UpgradedIo>, Accepted) -> Fut + Send + 'static,
            Fut: Future<Output = ()> + Send + 'static,
        {
            let Some(on_upgrade) = self.on_upgrade else {
                return refusal_response(&Refusal::new(426, "connection cannot be upgraded"))
                    .into_response();
            };
            match negotiate(self.request, on_upgrade, &self.cfg) {
                Ok((resp, upgrade)) => {
                    tokio::spawn(async move {
                        if let Ok((ws, accepted)) = upgrade.websocket().await {
                            callback(ws, accepted).await;
                        }
                    });
                    resp.into_response()
                }
                Err(refusal) => refusal_response(&refusal).into_response(),
            }
        }
    }

    impl<S: Send + Sync> FromRequestParts<S> for WebSocketUpgrade {
        type Rejection = Response;

        async fn from_request_parts(
            parts: &mut Parts,
            _state: &S,
        ) -> Result<Self, Self::Rejection> {
            let request = to_request(&parts.method, &parts.uri, parts.version, &parts.headers);
            Ok(WebSocketUpgrade {
                request,
                on_upgrade: parts.extensions.remove::<OnUpgrade>(),
                cfg: ServerConfig::default(),
            })
        }
    }
}
