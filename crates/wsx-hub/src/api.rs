//! The HTTP server API: a backend publishes and inspects channels without holding a
//! socket. `POST /api/<method>` with a JSON body and `Authorization: apikey <key>`.
//!
//! Errors are JSON (`{"error": {"code": C, "message": "..."}}`) with a status: 401 no
//! key, 403 wrong key (or the API is off: no key configured), 400 bad JSON, 404 unknown
//! channel or method, 413 body too large, 503 backplane unavailable.

use std::sync::Arc;

use axum::body::{Body, Bytes};
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::Router;
use serde::Deserialize;
use serde_json::value::RawValue;
use serde_json::{json, Value};

use crate::hub::auth::same_secret;
use crate::hub::backplane::HistoryQuery;
use crate::hub::error::HubError;
use crate::hub::publication::Payload;
use crate::hub::Hub;
use crate::live::Live;
use crate::native::codec::{codes, history_json, presence_json};
use crate::native::error_code;

/// Settings of the HTTP API.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct ApiConfig {
    /// The key clients must present; `None` turns the API off (every call gets 403).
    pub api_key: Option<String>,
    /// The largest request body, in bytes (413 beyond). Default: 1 MiB.
    pub max_body: usize,
}

impl Default for ApiConfig {
    fn default() -> Self {
        ApiConfig {
            api_key: None,
            max_body: 1 << 20,
        }
    }
}

#[derive(Clone)]
struct Api {
    hub: Arc<Hub>,
    cfg: Live<ApiConfig>,
}

/// The API routes, to merge into the server's router.
pub fn router(hub: Arc<Hub>, cfg: ApiConfig) -> Router {
    router_live(hub, Live::new(cfg))
}

/// [`router`] with settings a reload may replace (a new key applies to the next call).
pub fn router_live(hub: Arc<Hub>, cfg: Live<ApiConfig>) -> Router {
    Router::new()
        .route("/api/{method}", post(call).fallback(not_post))
        .with_state(Api { hub, cfg })
}

/// Check a call's `Authorization: apikey KEY` against `cfg` (in constant time): the
/// error response to send when it does not pass (403 when the API is off, 401 without
/// a key, 403 with a wrong one). For a server's own methods beside the API's.
#[allow(clippy::result_large_err)]
pub fn authorize(cfg: &ApiConfig, headers: &HeaderMap) -> Result<(), Response> {
    let Some(key) = &cfg.api_key else {
        return Err(error(
            StatusCode::FORBIDDEN,
            codes::PERMISSION_DENIED,
            "the HTTP API is off: set api_key",
        ));
    };
    let presented = headers
        .get(http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("apikey "));
    match presented {
        None => Err(error(
            StatusCode::UNAUTHORIZED,
            codes::UNAUTHORIZED,
            "missing Authorization: apikey <key>",
        )),
        Some(p) if !same_secret(p.trim().as_bytes(), key.as_bytes()) => Err(error(
            StatusCode::FORBIDDEN,
            codes::PERMISSION_DENIED,
            "wrong API key",
        )),
        Some(_) => Ok(()),
    }
}

/// An API error: `{"error": {"code": C, "message": M}}` with `status`.
pub fn error(status: StatusCode, code: u16, message: impl Into<String>) -> Response {
    let body = json!({ "error": { "code": code, "message": message.into() } });
    (
        status,
        [(http::header::CONTENT_TYPE, "application/json")],
        body.to_string(),
    )
        .into_response()
}

/// The HTTP status of a hub error: the API's one table (the body carries the native
/// protocol's code).
fn status_of(e: &HubError) -> StatusCode {
    match e {
        HubError::UnknownChannel | HubError::UnknownNamespace(_) => StatusCode::NOT_FOUND,
        HubError::EpochChanged => StatusCode::CONFLICT,
        HubError::BadChannel(_) | HubError::NotAvailable(_) | HubError::LimitExceeded(_) => {
            StatusCode::BAD_REQUEST
        }
        HubError::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
        _ => StatusCode::INTERNAL_SERVER_ERROR,
    }
}

fn reply_error(e: HubError) -> Response {
    error(status_of(&e), error_code(&e), e.to_string())
}

/// Every API method is a POST: anything else gets 405 with `Allow` and a JSON error.
async fn not_post() -> Response {
    let mut r = error(
        StatusCode::METHOD_NOT_ALLOWED,
        codes::BAD_REQUEST,
        "the API takes POST with a JSON body",
    );
    r.headers_mut()
        .insert(http::header::ALLOW, http::HeaderValue::from_static("POST"));
    r
}

/// An API answer: `{"result": R}` with 200.
pub fn ok(result: Value) -> Response {
    (
        StatusCode::OK,
        [(http::header::CONTENT_TYPE, "application/json")],
        json!({ "result": result }).to_string(),
    )
        .into_response()
}

async fn call(
    State(api): State<Api>,
    Path(method): Path<String>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let cfg = api.cfg.get();
    if let Err(refused) = authorize(&cfg, &headers) {
        return refused;
    }
    let bytes: Bytes = match axum::body::to_bytes(body, cfg.max_body).await {
        Ok(b) => b,
        Err(e) if crate::transport::BodyTimedOut::caused(&e) => {
            return error(
                StatusCode::REQUEST_TIMEOUT,
                codes::BAD_REQUEST,
                "the request body did not arrive in time",
            )
        }
        Err(_) => {
            return error(
                StatusCode::PAYLOAD_TOO_LARGE,
                codes::LIMIT_EXCEEDED,
                format!("body over {} bytes", cfg.max_body),
            )
        }
    };
    dispatch(&api.hub, &method, &bytes).await
}

/// Run the API method `method` with the JSON arguments `body` (empty: none) on `hub`,
/// once the caller was authorised (by the API key, or an admin session): its response.
pub async fn dispatch(hub: &Arc<Hub>, method: &str, bytes: &[u8]) -> Response {
    // Every method's arguments, parsed once; each method takes what it needs.
    let req: ApiRequest<'_> = if bytes.is_empty() {
        ApiRequest::default()
    } else {
        match serde_json::from_slice(bytes) {
            Ok(r) => r,
            Err(e) => return bad_request(format!("bad JSON: {e}")),
        }
    };
    let result = match method {
        "publish" => {
            let Some(channel) = req.channel.as_deref() else {
                return bad_request("missing channel");
            };
            let Some(data) = req.data else {
                return bad_request("missing data");
            };
            hub.publish(
                channel,
                Payload::json(Bytes::copy_from_slice(data.get().as_bytes())),
            )
            .await
            .map(|p| json!({ "offset": p.offset }))
        }
        "broadcast" => {
            let (Some(channels), Some(data)) = (&req.channels, req.data) else {
                return bad_request("missing channels or data");
            };
            let data = Bytes::copy_from_slice(data.get().as_bytes());
            let mut responses = Vec::with_capacity(channels.len());
            for c in channels {
                responses.push(match hub.publish(c, Payload::json(data.clone())).await {
                    Ok(p) => json!({ "offset": p.offset }),
                    Err(e) => {
                        json!({ "error": { "code": error_code(&e), "message": e.to_string() } })
                    }
                });
            }
            Ok(json!({ "responses": responses }))
        }
        "presence" | "presence_stats" | "history" => {
            let Some(channel) = req.channel.as_deref() else {
                return bad_request("missing channel");
            };
            match method {
                "presence" => hub.presence(channel).await.map(|m| presence_json(&m)),
                "presence_stats" => hub
                    .presence_stats(channel)
                    .await
                    .map(|(c, u)| json!({ "num_clients": c, "num_users": u })),
                _ => hub
                    .history(
                        channel,
                        HistoryQuery {
                            limit: req.limit.unwrap_or(100),
                            since: req.since.as_ref().map(|s| s.offset),
                            reverse: req.reverse,
                        },
                    )
                    .await
                    .map(|page| history_json(&page.publications, &page.position)),
            }
        }
        "channels" => hub.channels_everywhere().await.map(|all| {
            let channels: serde_json::Map<String, Value> = all
                .into_iter()
                .map(|(name, n)| (name, json!({ "num_clients": n })))
                .collect();
            json!({ "channels": channels })
        }),
        "info" => hub
            .nodes()
            .await
            .map(|nodes| json!({ "node": hub.node(), "nodes": nodes })),
        "unsubscribe" => {
            let Some(channel) = req.channel.as_deref() else {
                return bad_request("missing channel");
            };
            let Some((user, client)) = req.target() else {
                return bad_request("give user or client");
            };
            if let Err(e) = hub.channel(channel) {
                return reply_error(e);
            }
            if let (None, Some(id)) = (user, client) {
                match hub.has_client_everywhere(id).await {
                    Ok(false) => {
                        return error(
                            StatusCode::NOT_FOUND,
                            codes::UNKNOWN_CLIENT,
                            "no such client",
                        )
                    }
                    Ok(true) => {}
                    Err(e) => return reply_error(e),
                }
            }
            hub.unsubscribe_everywhere(channel, user, client)
                .await
                .map(|n| json!({ "unsubscribed": n }))
        }
        "disconnect" => {
            let Some((user, client)) = req.target() else {
                return bad_request("give user or client");
            };
            let code = req.code.unwrap_or(3000);
            if !(3000..=4999).contains(&code) {
                return bad_request("code must be 3000-4999");
            }
            let reason = req
                .reason
                .as_deref()
                .unwrap_or("disconnected by the server");
            match hub
                .disconnect_everywhere(user, client, code, reason, req.reconnect)
                .await
            {
                Ok(0) if user.is_none() => {
                    return error(
                        StatusCode::NOT_FOUND,
                        codes::UNKNOWN_CLIENT,
                        "no such client",
                    )
                }
                r => r.map(|n| json!({ "disconnected": n })),
            }
        }
        other => {
            return error(
                StatusCode::NOT_FOUND,
                codes::METHOD_NOT_FOUND,
                format!("unknown API method `{other}`"),
            )
        }
    };
    match result {
        Ok(r) => ok(r),
        Err(e) => reply_error(e),
    }
}

/// The arguments of every API method (each uses some of them).
#[derive(Deserialize, Default)]
struct ApiRequest<'a> {
    channel: Option<String>,
    channels: Option<Vec<String>>,
    #[serde(borrow)]
    data: Option<&'a RawValue>,
    user: Option<String>,
    client: Option<ClientRef>,
    limit: Option<usize>,
    since: Option<Since>,
    #[serde(default)]
    reverse: bool,
    code: Option<u16>,
    reason: Option<String>,
    #[serde(default)]
    reconnect: bool,
}

impl ApiRequest<'_> {
    /// The connections a method acts on: a user's, and/or one client; `None` if neither.
    fn target(&self) -> Option<(Option<&str>, Option<crate::ClientId>)> {
        match (
            self.user.as_deref(),
            self.client.as_ref().and_then(ClientRef::id),
        ) {
            (None, None) => None,
            t => Some(t),
        }
    }
}

#[derive(Deserialize)]
struct Since {
    offset: u64,
}

/// A client id, as the string the protocol shows or as a number.
#[derive(Deserialize)]
#[serde(untagged)]
enum ClientRef {
    Text(String),
    Number(u64),
}

impl ClientRef {
    fn id(&self) -> Option<crate::ClientId> {
        match self {
            ClientRef::Text(s) => s.parse().ok(),
            ClientRef::Number(n) => Some(*n),
        }
    }
}

fn bad_request(message: impl Into<String>) -> Response {
    error(StatusCode::BAD_REQUEST, codes::BAD_REQUEST, message)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hub::error::Feature;
    use crate::BadChannel;

    #[test]
    fn hub_errors_map_to_statuses() {
        for (e, status) in [
            (HubError::UnknownChannel, 404),
            (HubError::BadChannel(BadChannel::Empty), 400),
            (HubError::NotAvailable(Feature::History), 400),
            (HubError::Unavailable("down".into()), 503),
            (HubError::AlreadySubscribed, 500),
        ] {
            assert_eq!(reply_error(e.clone()).status().as_u16(), status, "{e:?}");
        }
    }
}
