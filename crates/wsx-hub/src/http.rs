//! The HTTP server API: a backend publishes and inspects channels without holding a
//! socket. `POST /api/<method>` with a JSON body and `Authorization: apikey <key>`.
//!
//! Errors are JSON (`{"error": {"code": C, "message": "..."}}`) with a status: 401 no
//! key, 403 wrong key (or the API is off: no key configured), 400 bad JSON, 404 unknown
//! channel or method, 413 body too large.

use std::sync::Arc;
use std::time::Instant;

use axum::body::{Body, Bytes};
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::Router;
use serde::Deserialize;
use serde_json::value::RawValue;
use serde_json::{json, Value};

use crate::hub::Hub;
use crate::native::{codes, ReplyError};

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
    cfg: Arc<ApiConfig>,
}

/// The API routes, to merge into the server's router.
pub fn router(hub: Arc<Hub>, cfg: ApiConfig) -> Router {
    Router::new()
        .route("/api/{method}", post(call))
        .with_state(Api {
            hub,
            cfg: Arc::new(cfg),
        })
}

fn error(status: StatusCode, code: u16, message: impl Into<String>) -> Response {
    let body = json!({ "error": { "code": code, "message": message.into() } });
    (
        status,
        [(http::header::CONTENT_TYPE, "application/json")],
        body.to_string(),
    )
        .into_response()
}

fn reply_error(e: ReplyError) -> Response {
    let status = match e.code {
        codes::UNKNOWN_CHANNEL => StatusCode::NOT_FOUND,
        codes::BAD_REQUEST => StatusCode::BAD_REQUEST,
        codes::NOT_AVAILABLE => StatusCode::BAD_REQUEST,
        _ => StatusCode::INTERNAL_SERVER_ERROR,
    };
    error(status, e.code, e.message)
}

fn ok(result: Value) -> Response {
    (
        StatusCode::OK,
        [(http::header::CONTENT_TYPE, "application/json")],
        json!({ "result": result }).to_string(),
    )
        .into_response()
}

/// Constant-time comparison, so the key cannot be guessed byte by byte from timing.
fn same(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

async fn call(
    State(api): State<Api>,
    Path(method): Path<String>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let Some(key) = &api.cfg.api_key else {
        return error(
            StatusCode::FORBIDDEN,
            codes::PERMISSION_DENIED,
            "the HTTP API is off: set api_key",
        );
    };
    let presented = headers
        .get(http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("apikey "));
    match presented {
        None => {
            return error(
                StatusCode::UNAUTHORIZED,
                codes::UNAUTHORIZED,
                "missing Authorization: apikey <key>",
            )
        }
        Some(p) if !same(p.trim().as_bytes(), key.as_bytes()) => {
            return error(
                StatusCode::FORBIDDEN,
                codes::PERMISSION_DENIED,
                "wrong API key",
            )
        }
        Some(_) => {}
    }
    let bytes: Bytes = match axum::body::to_bytes(body, api.cfg.max_body).await {
        Ok(b) => b,
        Err(_) => {
            return error(
                StatusCode::PAYLOAD_TOO_LARGE,
                codes::LIMIT_EXCEEDED,
                format!("body over {} bytes", api.cfg.max_body),
            )
        }
    };
    let parse = |bytes: &Bytes| -> Result<Value, String> {
        if bytes.is_empty() {
            return Ok(json!({}));
        }
        serde_json::from_slice(bytes).map_err(|e| format!("bad JSON: {e}"))
    };
    match method.as_str() {
        "publish" => {
            #[derive(Deserialize)]
            struct Req<'a> {
                channel: String,
                #[serde(borrow)]
                data: &'a RawValue,
            }
            let req: Req<'_> = match serde_json::from_slice(&bytes) {
                Ok(r) => r,
                Err(e) => {
                    return error(
                        StatusCode::BAD_REQUEST,
                        codes::BAD_REQUEST,
                        format!("bad JSON: {e}"),
                    )
                }
            };
            match api.hub.publish(
                &req.channel,
                Bytes::copy_from_slice(req.data.get().as_bytes()),
            ) {
                Ok(p) => ok(json!({ "offset": p.offset })),
                Err(e) => reply_error(e),
            }
        }
        "broadcast" => {
            #[derive(Deserialize)]
            struct Req<'a> {
                channels: Vec<String>,
                #[serde(borrow)]
                data: &'a RawValue,
            }
            let req: Req<'_> = match serde_json::from_slice(&bytes) {
                Ok(r) => r,
                Err(e) => {
                    return error(
                        StatusCode::BAD_REQUEST,
                        codes::BAD_REQUEST,
                        format!("bad JSON: {e}"),
                    )
                }
            };
            let data = Bytes::copy_from_slice(req.data.get().as_bytes());
            let responses: Vec<Value> = req
                .channels
                .iter()
                .map(|c| match api.hub.publish(c, data.clone()) {
                    Ok(p) => json!({ "offset": p.offset }),
                    Err(e) => json!({ "error": { "code": e.code, "message": e.message } }),
                })
                .collect();
            ok(json!({ "responses": responses }))
        }
        "presence" | "presence_stats" | "history" => {
            let v = match parse(&bytes) {
                Ok(v) => v,
                Err(e) => return error(StatusCode::BAD_REQUEST, codes::BAD_REQUEST, e),
            };
            let Some(channel) = v["channel"].as_str() else {
                return error(
                    StatusCode::BAD_REQUEST,
                    codes::BAD_REQUEST,
                    "missing channel",
                );
            };
            let broker = api.hub.broker();
            let result = match method.as_str() {
                "presence" => broker.presence(channel).map(|members| {
                    let map: serde_json::Map<String, Value> = members
                        .iter()
                        .map(|m| {
                            (
                                m.client.to_string(),
                                json!({ "client": m.client.to_string(), "user": m.user }),
                            )
                        })
                        .collect();
                    json!({ "presence": map })
                }),
                "presence_stats" => broker
                    .presence_stats(channel)
                    .map(|(c, u)| json!({ "num_clients": c, "num_users": u })),
                _ => {
                    let limit = v["limit"].as_u64().unwrap_or(100) as usize;
                    let since = v["since"]["offset"].as_u64();
                    let reverse = v["reverse"].as_bool().unwrap_or(false);
                    broker.history(channel, limit, since, reverse, Instant::now()).map(|(pubs, pos)| {
                        let pubs: Vec<Value> = pubs
                            .iter()
                            .map(|p| json!({ "offset": p.offset, "data": serde_json::from_slice::<Value>(&p.data).unwrap_or(Value::Null) }))
                            .collect();
                        json!({ "publications": pubs, "offset": pos.offset, "epoch": pos.epoch })
                    })
                }
            };
            match result {
                Ok(r) => ok(r),
                Err(e) => reply_error(e.into()),
            }
        }
        "channels" => {
            let channels: serde_json::Map<String, Value> = api
                .hub
                .broker()
                .channels()
                .into_iter()
                .map(|(name, n)| (name, json!({ "num_clients": n })))
                .collect();
            ok(json!({ "channels": channels }))
        }
        "unsubscribe" => {
            let v = match parse(&bytes) {
                Ok(v) => v,
                Err(e) => return error(StatusCode::BAD_REQUEST, codes::BAD_REQUEST, e),
            };
            let Some(channel) = v["channel"].as_str() else {
                return error(
                    StatusCode::BAD_REQUEST,
                    codes::BAD_REQUEST,
                    "missing channel",
                );
            };
            let user = v["user"].as_str();
            let client = v["client"]
                .as_str()
                .and_then(|c| c.parse().ok())
                .or(v["client"].as_u64());
            if user.is_none() && client.is_none() {
                return error(
                    StatusCode::BAD_REQUEST,
                    codes::BAD_REQUEST,
                    "give user or client",
                );
            }
            ok(json!({ "unsubscribed": api.hub.unsubscribe(channel, user, client) }))
        }
        "disconnect" => {
            let v = match parse(&bytes) {
                Ok(v) => v,
                Err(e) => return error(StatusCode::BAD_REQUEST, codes::BAD_REQUEST, e),
            };
            let user = v["user"].as_str();
            let client = v["client"]
                .as_str()
                .and_then(|c| c.parse().ok())
                .or(v["client"].as_u64());
            if user.is_none() && client.is_none() {
                return error(
                    StatusCode::BAD_REQUEST,
                    codes::BAD_REQUEST,
                    "give user or client",
                );
            }
            let code = v["code"]
                .as_u64()
                .and_then(|c| u16::try_from(c).ok())
                .unwrap_or(3000);
            if !(3000..=4999).contains(&code) {
                return error(
                    StatusCode::BAD_REQUEST,
                    codes::BAD_REQUEST,
                    "code must be 3000-4999",
                );
            }
            let reason = v["reason"].as_str().unwrap_or("disconnected by the server");
            let n = api.hub.disconnect(
                user,
                client,
                code,
                reason,
                v["reconnect"].as_bool().unwrap_or(false),
            );
            ok(json!({ "disconnected": n }))
        }
        other => error(
            StatusCode::NOT_FOUND,
            codes::METHOD_NOT_FOUND,
            format!("unknown API method `{other}`"),
        ),
    }
}
