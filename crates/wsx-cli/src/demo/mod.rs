//! The demo behind the pages at `/grading`, `/chat` and `/chart`: the namespaces they use,
//! the judge's HTTP endpoints and the tick publisher. Everything reaches the browser
//! through the hub (the native protocol and `web/wsx.js`).

pub mod judge;
pub mod ticker;

use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::extract::State;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use http::{header, HeaderMap, Request, StatusCode};
use serde_json::json;
use wsx::OriginPolicy;
use wsx_hub::ChannelOptions;

pub use judge::JudgeConfig;

/// What `--demo` and the `demo_judge_*` settings resolve to.
#[derive(Debug, Clone)]
pub struct DemoSettings {
    /// The judge's limits.
    pub judge: JudgeConfig,
    /// Run the judge even when the listener is not a loopback address.
    pub judge_allow_remote: bool,
    /// The tick series' seed.
    pub tick_seed: u64,
}

/// The namespaces the pages use, with the options they need. A `[namespaces.NAME]`
/// table in the config file replaces the one here.
pub fn namespaces() -> Vec<(String, ChannelOptions)> {
    let mut judge = ChannelOptions::default();
    judge.history_size = 200;
    judge.history_ttl = Duration::from_secs(600);
    judge.client_publish = false;
    let mut chat = ChannelOptions::default();
    chat.presence = true;
    chat.join_leave = true;
    chat.history_size = 50;
    chat.history_ttl = Duration::from_secs(24 * 3600);
    let mut typing = ChannelOptions::default();
    typing.recovery = false;
    let mut ticks = ChannelOptions::default();
    ticks.history_size = 60 * ticker::RATE_HZ as usize;
    ticks.history_ttl = Duration::from_secs(60);
    ticks.client_publish = false;
    vec![
        (judge::NAMESPACE.into(), judge),
        ("chat".into(), chat),
        ("typing".into(), typing),
        (ticker::NAMESPACE.into(), ticks),
    ]
}

#[derive(Clone)]
struct DemoState {
    hub: Arc<wsx_hub::Hub>,
    judge: Arc<judge::Judge>,
    origin: OriginPolicy,
    /// Submissions only from pages served under a loopback host name (DNS rebinding).
    loopback_only: bool,
    max_body: usize,
}

/// Start the ticker and return the demo's routes.
pub fn start(
    hub: Arc<wsx_hub::Hub>,
    demo: &DemoSettings,
    listen: std::net::SocketAddr,
    origin: OriginPolicy,
) -> Router {
    ticker::spawn(hub.clone(), demo.tick_seed);
    let loopback = listen.ip().is_loopback();
    let disabled = judge_refusal(listen, demo.judge_allow_remote);
    let state = DemoState {
        hub: hub.clone(),
        judge: Arc::new(judge::Judge::new(hub, demo.judge.clone(), disabled)),
        origin,
        loopback_only: loopback,
        max_body: demo.judge.max_code + 4096,
    };
    Router::new()
        .route("/demo/judge/problem", get(problem))
        .route("/demo/judge/submit", post(submit))
        .route("/demo/presence", get(channel_presence))
        .route("/demo/history", get(channel_history))
        .with_state(state)
}

/// The namespaces whose presence and history anyone may read over
/// `/demo/presence` and `/demo/history`: the pages' public channels.
const PUBLIC: [&str; 2] = ["chat", ticker::NAMESPACE];

/// The `channel` of a `/demo/...?channel=NAME` request, if it is a public one.
fn public_channel(req: &Request<Body>) -> Option<String> {
    let query = req.uri().query().unwrap_or("");
    let channel = url_param(query, "channel").unwrap_or_default();
    let ns = channel
        .split_once(':')
        .map_or(channel.as_str(), |(ns, _)| ns);
    PUBLIC.contains(&ns).then_some(channel)
}

fn not_public() -> Response {
    error(
        StatusCode::FORBIDDEN,
        "only the demo's chat and chart channels are readable here",
    )
}

fn url_param(query: &str, name: &str) -> Option<String> {
    wsx_hub::sockjs::frame::param(query, name, true)
}

fn hub_result(r: Result<serde_json::Value, wsx_hub::HubError>) -> Response {
    match r {
        Ok(v) => Json(v).into_response(),
        Err(e) => error(StatusCode::BAD_REQUEST, e.to_string()),
    }
}

/// `GET /demo/presence?channel=chat:lobby` → the native `presence` result: for the
/// pages' clients whose protocol has no presence query (STOMP).
async fn channel_presence(State(s): State<DemoState>, req: Request<Body>) -> Response {
    let Some(channel) = public_channel(&req) else {
        return not_public();
    };
    let r = s.hub.presence(&channel).await;
    hub_result(r.map(|m| wsx_hub::native::codec::presence_json(&m)))
}

/// `GET /demo/history?channel=ticks&limit=N&reverse=true` → the native `history`
/// result (at most 500 publications).
async fn channel_history(State(s): State<DemoState>, req: Request<Body>) -> Response {
    let Some(channel) = public_channel(&req) else {
        return not_public();
    };
    let query = req.uri().query().unwrap_or("");
    let limit = url_param(query, "limit")
        .and_then(|l| l.parse::<usize>().ok())
        .unwrap_or(50)
        .min(500);
    let reverse = url_param(query, "reverse").as_deref() == Some("true");
    let q = wsx_hub::backplane::HistoryQuery {
        limit,
        since: None,
        reverse,
    };
    let r = s.hub.history(&channel, q).await;
    hub_result(r.map(|p| wsx_hub::native::codec::history_json(&p.publications, &p.position)))
}

/// Why the judge may not run code on this listener, if it may not.
fn judge_refusal(listen: std::net::SocketAddr, allow_remote: bool) -> Option<String> {
    (!listen.ip().is_loopback() && !allow_remote).then(|| {
        format!(
            "the demo judge runs code only while the server listens on a loopback address \
             ({listen} is not); start with --demo-judge-allow-remote to run it anyway"
        )
    })
}

async fn problem(State(s): State<DemoState>) -> Response {
    Json(s.judge.problem()).into_response()
}

fn error(status: StatusCode, message: impl Into<String>) -> Response {
    (status, Json(json!({ "error": message.into() }))).into_response()
}

fn host_is_loopback(headers: &HeaderMap) -> bool {
    let Some(host) = headers.get(header::HOST).and_then(|h| h.to_str().ok()) else {
        return false;
    };
    let name = match host.rsplit_once(':') {
        Some((name, port)) if port.bytes().all(|b| b.is_ascii_digit()) => name,
        _ => host,
    };
    name.eq_ignore_ascii_case("localhost")
        || name
            .trim_start_matches('[')
            .trim_end_matches(']')
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

#[derive(serde::Deserialize)]
struct Submission {
    session: String,
    code: String,
}

/// `POST /demo/judge/submit` `{"session", "code"}` → 202 `{"submission", "channel"}`.
/// JSON only, from an allowed Origin (a cross-site form cannot start code on this
/// machine), under a loopback host name when the judge is loopback-only.
async fn submit(State(s): State<DemoState>, req: Request<Body>) -> Response {
    let headers = req.headers();
    let json = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/json"));
    if !json {
        return error(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "send Content-Type: application/json",
        );
    }
    let host = headers
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .unwrap_or("");
    let origin = headers.get(header::ORIGIN).and_then(|o| o.to_str().ok());
    if !s.origin.allows(origin, host) {
        return error(StatusCode::FORBIDDEN, "origin not allowed");
    }
    if s.loopback_only && !host_is_loopback(headers) {
        return error(
            StatusCode::FORBIDDEN,
            "the demo judge takes submissions only under a loopback host name",
        );
    }
    let body = match axum::body::to_bytes(req.into_body(), s.max_body).await {
        Ok(b) => b,
        Err(_) => {
            return error(
                StatusCode::PAYLOAD_TOO_LARGE,
                format!("the body is limited to {} bytes", s.max_body),
            )
        }
    };
    let sub: Submission = match serde_json::from_slice(&body) {
        Ok(sub) => sub,
        Err(e) => return error(StatusCode::BAD_REQUEST, format!("bad JSON: {e}")),
    };
    match s.judge.submit(&sub.session, sub.code) {
        Ok(submission) => (
            StatusCode::ACCEPTED,
            Json(json!({
                "submission": submission,
                "channel": format!("{}:{}", judge::NAMESPACE, sub.session),
            })),
        )
            .into_response(),
        Err((status, why)) => error(
            StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
            why,
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_judge_runs_only_on_loopback_unless_allowed() {
        let at = |a: &str| a.parse::<std::net::SocketAddr>().unwrap();
        assert_eq!(judge_refusal(at("127.0.0.1:3000"), false), None);
        assert_eq!(judge_refusal(at("[::1]:3000"), false), None);
        let why = judge_refusal(at("0.0.0.0:3000"), false).unwrap();
        assert!(why.contains("--demo-judge-allow-remote"), "{why}");
        assert_eq!(judge_refusal(at("192.0.2.7:3000"), true), None);
    }

    #[test]
    fn loopback_host_names() {
        let host = |h: &str| {
            let mut m = HeaderMap::new();
            m.insert(header::HOST, h.parse().unwrap());
            host_is_loopback(&m)
        };
        for ok in [
            "localhost:3000",
            "127.0.0.1:3000",
            "[::1]:3000",
            "LOCALHOST",
            "127.0.0.2",
        ] {
            assert!(host(ok), "{ok}");
        }
        for bad in [
            "example.com:3000",
            "localhost.evil.example",
            "10.0.0.1:3000",
        ] {
            assert!(!host(bad), "{bad}");
        }
        assert!(!host_is_loopback(&HeaderMap::new()));
    }
}
