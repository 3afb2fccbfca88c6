//! The admin page (`/admin`): off unless an admin password is set (`--admin-password`,
//! `WSX_ADMIN_PASSWORD`). Logging in with it gives a session cookie (`HttpOnly`,
//! `SameSite=Strict`, `Secure` under TLS, 12 hours); the page's endpoints refuse
//! requests without one:
//!
//! - `GET /admin/live`: a WebSocket that the server subscribes to the figures channel
//!   ([`wsx_hub::hub::figures::CHANNEL`]), where every node publishes its figures once a
//!   second: the page is fed over the hub itself, every node of a cluster included;
//! - `POST /admin/api/{method}`: the HTTP API's `publish`, `disconnect`,
//!   `unsubscribe`, `info` (JSON bodies only), and `search` (channels of the whole
//!   cluster whose name contains `q`, largest first).
//!
//! Failed logins are limited per source address (10 a minute, 429 beyond).

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::extract::{ConnectInfo, Path, State};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use http::{header, HeaderMap, Request, StatusCode};
use serde_json::{json, Value};
use tracing::{info, warn};
use wsx_hub::hub::figures;
use wsx_hub::live::Live;
use wsx_hub::transport::Gate;

/// The session cookie's name.
const COOKIE: &str = "wsx_admin";
/// How long a login lasts.
const SESSION_TTL: Duration = Duration::from_secs(12 * 3600);
/// Most logins kept at once (the oldest goes first beyond).
const MAX_SESSIONS: usize = 1000;
/// Failed logins allowed per source address per [`FAILURE_WINDOW`].
const MAX_FAILURES: u32 = 10;
const FAILURE_WINDOW: Duration = Duration::from_secs(60);
/// The user the page's own connection is shown as.
pub const ADMIN_USER: &str = "wsx-admin";

/// The admin page's state: the password (a reload may change it), the logins.
pub struct Admin {
    password: Live<Option<String>>,
    sessions: Mutex<HashMap<String, Instant>>,
    failures: Mutex<HashMap<IpAddr, (u32, Instant)>>,
    secure: bool,
    gate: Gate,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Admin {
    /// The admin page of the server behind `gate`; `secure` when served over TLS.
    pub fn new(gate: Gate, password: Live<Option<String>>, secure: bool) -> Arc<Admin> {
        Arc::new(Admin {
            password,
            sessions: Mutex::new(HashMap::new()),
            failures: Mutex::new(HashMap::new()),
            secure,
            gate,
        })
    }

    /// Whether the page is on (a password is set).
    pub fn enabled(&self) -> bool {
        self.password.get().is_some()
    }

    /// The routes under `/admin`.
    pub fn router(self: &Arc<Self>) -> Router {
        Router::new()
            .route("/admin", get(page))
            .route("/admin/login", post(login))
            .route("/admin/logout", post(logout))
            .route("/admin/live", get(live))
            .route("/admin/api/{method}", post(call))
            .with_state(self.clone())
    }

    /// Whether `headers` carry the cookie of a live login (the page being on).
    fn logged_in(&self, headers: &HeaderMap) -> bool {
        if !self.enabled() {
            return false;
        }
        let Some(token) = cookie(headers) else {
            return false;
        };
        let mut sessions = lock(&self.sessions);
        let now = Instant::now();
        sessions.retain(|_, until| *until > now);
        sessions.contains_key(token)
    }

    /// Count a failed login from `ip`; whether it is still allowed to try.
    fn may_try(&self, ip: IpAddr) -> bool {
        let mut f = lock(&self.failures);
        let now = Instant::now();
        if f.len() > 10_000 {
            f.retain(|_, (_, since)| now.duration_since(*since) < FAILURE_WINDOW);
        }
        match f.get(&ip) {
            Some((n, since)) if now.duration_since(*since) < FAILURE_WINDOW => *n < MAX_FAILURES,
            _ => true,
        }
    }

    fn failed(&self, ip: IpAddr) {
        let mut f = lock(&self.failures);
        let now = Instant::now();
        let e = f.entry(ip).or_insert((0, now));
        if now.duration_since(e.1) >= FAILURE_WINDOW {
            *e = (0, now);
        }
        e.0 += 1;
    }

    /// A new login: its token.
    fn open_session(&self) -> String {
        let bytes: [u8; 32] = rand::random();
        let token: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
        let mut sessions = lock(&self.sessions);
        if sessions.len() >= MAX_SESSIONS {
            if let Some(oldest) = sessions
                .iter()
                .min_by_key(|(_, until)| **until)
                .map(|(t, _)| t.clone())
            {
                sessions.remove(&oldest);
            }
        }
        sessions.insert(token.clone(), Instant::now() + SESSION_TTL);
        token
    }
}

/// The `wsx_admin` cookie's value, if any.
fn cookie(headers: &HeaderMap) -> Option<&str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .find_map(|c| c.trim().strip_prefix(COOKIE)?.strip_prefix('='))
}

fn off() -> Response {
    (
        StatusCode::NOT_FOUND,
        "the admin page is off: set --admin-password (or WSX_ADMIN_PASSWORD)\n",
    )
        .into_response()
}

fn unauthorized() -> Response {
    wsx_hub::api::error(
        StatusCode::UNAUTHORIZED,
        wsx_hub::native::codec::codes::UNAUTHORIZED,
        "log in at /admin first",
    )
}

async fn page(State(admin): State<Arc<Admin>>) -> Response {
    if !admin.enabled() {
        return off();
    }
    match crate::web::file("admin.html") {
        Some((kind, body)) => (
            [
                (header::CONTENT_TYPE, kind),
                (header::CACHE_CONTROL, "no-store"),
            ],
            body,
        )
            .into_response(),
        None => off(),
    }
}

async fn login(
    State(admin): State<Arc<Admin>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    body: axum::body::Bytes,
) -> Response {
    let Some(password) = admin.password.get().as_ref().clone() else {
        return off();
    };
    if !admin.may_try(peer.ip()) {
        warn!(%peer, "admin login: too many failures");
        return (
            StatusCode::TOO_MANY_REQUESTS,
            [(header::RETRY_AFTER, "60")],
            "too many failed logins: wait a minute\n",
        )
            .into_response();
    }
    let given = serde_json::from_slice::<Value>(&body)
        .ok()
        .and_then(|v| v["password"].as_str().map(str::to_string))
        .unwrap_or_default();
    if !wsx_hub::auth::same_secret(given.as_bytes(), password.as_bytes()) {
        admin.failed(peer.ip());
        warn!(%peer, "admin login: wrong password");
        return wsx_hub::api::error(
            StatusCode::UNAUTHORIZED,
            wsx_hub::native::codec::codes::UNAUTHORIZED,
            "wrong password",
        );
    }
    info!(%peer, "admin login");
    let token = admin.open_session();
    let secure = if admin.secure { "; Secure" } else { "" };
    let cookie = format!(
        "{COOKIE}={token}; Path=/admin; HttpOnly; SameSite=Strict; Max-Age={}{secure}",
        SESSION_TTL.as_secs()
    );
    (
        StatusCode::NO_CONTENT,
        [(header::SET_COOKIE, cookie)],
        Body::empty(),
    )
        .into_response()
}

async fn logout(State(admin): State<Arc<Admin>>, headers: HeaderMap) -> Response {
    if let Some(token) = cookie(&headers) {
        lock(&admin.sessions).remove(token);
    }
    (
        StatusCode::NO_CONTENT,
        [(
            header::SET_COOKIE,
            format!("{COOKIE}=; Path=/admin; HttpOnly; SameSite=Strict; Max-Age=0"),
        )],
        Body::empty(),
    )
        .into_response()
}

/// The page's feed: a native-protocol WebSocket subscribed by the server to the
/// figures channel (pushes only; the page sends nothing).
async fn live(
    State(admin): State<Arc<Admin>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    mut req: Request<Body>,
) -> Response {
    if !admin.logged_in(req.headers()) {
        return unauthorized();
    }
    let hub = admin.gate.hub().clone();
    admin
        .gate
        .upgrade(peer, &mut req, None, move |ws, _, stop| async move {
            match wsx_hub::native::Session::trusted(
                hub,
                ADMIN_USER,
                "admin page",
                "websocket",
                &[figures::CHANNEL],
            )
            .await
            {
                Ok(session) => session.run_until(ws, stop).await,
                Err(e) => warn!(%peer, "admin feed: {e}"),
            }
        })
}

/// The page's actions: the HTTP API's methods, on the admin session's authority.
async fn call(
    State(admin): State<Arc<Admin>>,
    Path(method): Path<String>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Response {
    if !admin.logged_in(&headers) {
        return unauthorized();
    }
    // A JSON body only: a cross-site form cannot send one.
    let json = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/json"));
    if !json {
        return wsx_hub::api::error(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            wsx_hub::native::codec::codes::BAD_REQUEST,
            "send application/json",
        );
    }
    let hub = admin.gate.hub();
    match method.as_str() {
        "publish" | "disconnect" | "unsubscribe" | "info" => {
            wsx_hub::api::dispatch(hub, &method, &body).await
        }
        "search" => {
            let q = serde_json::from_slice::<Value>(&body)
                .ok()
                .and_then(|v| v["q"].as_str().map(str::to_string))
                .unwrap_or_default();
            match hub.channels_everywhere().await {
                Ok(mut all) => {
                    all.retain(|(name, _)| name.contains(&q));
                    let found = all.len();
                    all.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
                    all.truncate(figures::LISTED);
                    wsx_hub::api::ok(json!({ "found": found, "channels": all }))
                }
                Err(e) => wsx_hub::api::error(
                    StatusCode::SERVICE_UNAVAILABLE,
                    wsx_hub::native::error_code(&e),
                    e.to_string(),
                ),
            }
        }
        other => wsx_hub::api::error(
            StatusCode::NOT_FOUND,
            wsx_hub::native::codec::codes::METHOD_NOT_FOUND,
            format!("unknown admin method `{other}`"),
        ),
    }
}
