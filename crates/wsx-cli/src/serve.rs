//! `wsx serve`: the echo endpoint and the embedded pages, over HTTP or HTTPS, with
//! graceful shutdown.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;

use axum::body::Body;
use axum::extract::{ConnectInfo, State};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use futures_util::StreamExt;
use http::{header, Request, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tokio::sync::{watch, Semaphore};
use tokio_util::task::TaskTracker;
use tracing::{debug, info, warn};
use wsx::upgrade::{refusal_response, try_upgrade};
use wsx::{CloseCode, Refusal, ServerConfig};

use crate::settings::Settings;
use crate::web;

#[derive(Clone)]
struct App {
    hub: Arc<wsx_hub::Hub>,
    cfg: Arc<ServerConfig>,
    slots: Arc<Semaphore>,
    shutdown: watch::Receiver<bool>,
    tasks: TaskTracker,
}

/// Run until Ctrl-C or SIGTERM, then close every WebSocket with 1001 and wait up to the
/// shutdown timeout for the close handshakes.
pub async fn run(settings: Settings) -> std::io::Result<()> {
    let tls = match &settings.tls {
        Some((cert, key)) => {
            Some(wsx::tls::acceptor(cert, key).map_err(|e| std::io::Error::other(e.to_string()))?)
        }
        None => None,
    };
    let listener = TcpListener::bind(settings.listen).await?;
    let addr = listener.local_addr()?;
    let (http, ws) = if tls.is_some() {
        ("https", "wss")
    } else {
        ("http", "ws")
    };
    info!(%addr, "wsx serve: open {http}://{addr}/ (echo endpoint {ws}://{addr}/echo)");
    let (shutdown_tx, shutdown_rx) = watch::channel(false);
    let tasks = TaskTracker::new();
    let mut hub_cfg = wsx_hub::HubConfig::default();
    hub_cfg.auth = settings.auth.clone();
    if settings.demo.is_some() {
        for (name, opts) in crate::demo::namespaces() {
            if !settings.namespaces.iter().any(|(n, _)| *n == name) {
                hub_cfg.namespaces.push((name, opts));
            }
        }
    }
    for (name, opts) in &settings.namespaces {
        if name.is_empty() {
            hub_cfg.default_options = opts.clone();
        } else {
            hub_cfg.namespaces.push((name.clone(), opts.clone()));
        }
    }
    let hub = Arc::new(wsx_hub::Hub::new(hub_cfg));
    let mut api = wsx_hub::api::ApiConfig::default();
    api.api_key = settings.api_key.clone();
    let app = App {
        hub: hub.clone(),
        cfg: Arc::new(settings.server.clone()),
        slots: Arc::new(Semaphore::new(settings.max_connections)),
        shutdown: shutdown_rx.clone(),
        tasks: tasks.clone(),
    };
    let demo = match &settings.demo {
        Some(demo) => crate::demo::start(
            hub.clone(),
            demo,
            addr,
            settings.server.handshake.origin.clone(),
        ),
        None => Router::new(),
    };
    let router = Router::new()
        .route("/echo", get(echo))
        .route("/connection/websocket", get(native))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/metrics", get(metrics))
        .fallback(get(static_file))
        .with_state(app)
        .merge(wsx_hub::api::router(hub, api))
        .merge(demo);

    let stop = shutdown_rx.clone();
    let signal = shutdown_signal();
    tokio::pin!(signal);
    loop {
        let (tcp, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    warn!(error = %e, "accept failed");
                    continue;
                }
            },
            _ = &mut signal => break,
        };
        let _ = tcp.set_nodelay(true);
        let router = router.clone();
        let tls = tls.clone();
        let mut conn_stop = stop.clone();
        tasks.spawn(async move {
            let service =
                hyper::service::service_fn(move |mut req: Request<hyper::body::Incoming>| {
                    req.extensions_mut().insert(ConnectInfo(peer));
                    let router = router.clone();
                    async move {
                        Ok::<_, Infallible>(
                            tower::ServiceExt::oneshot(router, req.map(Body::new))
                                .await
                                .unwrap_or_else(|e| match e {}),
                        )
                    }
                });
            let builder = hyper::server::conn::http1::Builder::new();
            let result = match tls {
                Some(acceptor) => match acceptor.accept(tcp).await {
                    Ok(stream) => {
                        let conn = builder
                            .serve_connection(TokioIo::new(stream), service)
                            .with_upgrades();
                        serve_until(conn, &mut conn_stop).await
                    }
                    Err(e) => {
                        debug!(%peer, error = %e, "TLS handshake failed");
                        return;
                    }
                },
                None => {
                    let conn = builder
                        .serve_connection(TokioIo::new(tcp), service)
                        .with_upgrades();
                    serve_until(conn, &mut conn_stop).await
                }
            };
            if let Err(e) = result {
                debug!(%peer, error = %e, "HTTP connection ended");
            }
        });
    }
    info!("shutting down: closing every WebSocket with 1001");
    let _ = shutdown_tx.send(true);
    tasks.close();
    if tokio::time::timeout(settings.shutdown_timeout, tasks.wait())
        .await
        .is_err()
    {
        warn!("shutdown timeout: {} connections still open", tasks.len());
    }
    info!("bye");
    Ok(())
}

/// Serve one HTTP connection; on shutdown, finish the request in flight and stop (an
/// upgraded connection is on its own task by then and closes itself).
async fn serve_until<I, S>(
    conn: hyper::server::conn::http1::UpgradeableConnection<I, S>,
    stop: &mut watch::Receiver<bool>,
) -> Result<(), hyper::Error>
where
    I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
    S: hyper::service::HttpService<hyper::body::Incoming>,
    S::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    S::ResBody: 'static,
    <S::ResBody as hyper::body::Body>::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    tokio::pin!(conn);
    tokio::select! {
        r = conn.as_mut() => r,
        _ = stopped(stop) => {
            conn.as_mut().graceful_shutdown();
            conn.await
        }
    }
}

/// Resolves once shutdown has begun.
async fn stopped(rx: &mut watch::Receiver<bool>) {
    let _ = rx.wait_for(|s| *s).await;
}

async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(s) => s,
                Err(_) => {
                    let _ = ctrl_c.await;
                    return;
                }
            };
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
}

async fn static_file(req: Request<Body>) -> Response {
    match web::file(req.uri().path()) {
        Some((content_type, body)) => {
            ([(header::CONTENT_TYPE, content_type)], body).into_response()
        }
        None => (StatusCode::NOT_FOUND, "not found\n").into_response(),
    }
}

async fn metrics(State(app): State<App>) -> Response {
    let text = app.hub.metrics().render(app.hub.channels().len());
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], text).into_response()
}

fn refuse(app: &App, peer: SocketAddr, refusal: Refusal) -> Response {
    app.hub.metrics().refused(refusal.status, &refusal.reason);
    warn!(%peer, status = refusal.status, reason = %refusal.reason, "handshake refused");
    refusal_response(&refusal).into_response()
}

/// Admission and negotiation shared by the WebSocket endpoints. The error is the
/// response to send, as handlers return it.
#[allow(clippy::result_large_err)]
fn admit(
    app: &App,
    peer: SocketAddr,
    req: &mut Request<Body>,
) -> Result<
    (
        Response,
        wsx::upgrade::Upgrade,
        tokio::sync::OwnedSemaphorePermit,
    ),
    Response,
> {
    let Ok(slot) = app.slots.clone().try_acquire_owned() else {
        return Err(refuse(app, peer, Refusal::new(503, "too many connections")));
    };
    if *app.shutdown.borrow() {
        return Err(refuse(app, peer, Refusal::new(503, "server shutting down")));
    }
    match try_upgrade(req, &app.cfg) {
        Ok((response, upgrade)) => Ok((response.into_response(), upgrade, slot)),
        Err(refusal) => Err(refuse(app, peer, refusal)),
    }
}

/// The native protocol of the hub (JSON commands, see docs/protocol.md).
async fn native(
    State(app): State<App>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    mut req: Request<Body>,
) -> Response {
    let (response, upgrade, slot) = match admit(&app, peer, &mut req) {
        Ok(ok) => ok,
        Err(resp) => return resp,
    };
    let mut shutdown = app.shutdown.clone();
    let hub = app.hub.clone();
    app.tasks.spawn(async move {
        let _slot = slot;
        let Ok((ws, _)) = upgrade.websocket().await else {
            return;
        };
        let session = wsx_hub::Session::new(hub, String::new());
        session.run_until(ws, stopped(&mut shutdown)).await;
    });
    response
}

async fn echo(
    State(app): State<App>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    mut req: Request<Body>,
) -> Response {
    let (response, upgrade, slot) = match admit(&app, peer, &mut req) {
        Ok(ok) => ok,
        Err(resp) => return resp,
    };
    let mut shutdown = app.shutdown.clone();
    app.tasks.spawn(async move {
        let _slot = slot;
        let (mut ws, accepted) = match upgrade.websocket().await {
            Ok(ok) => ok,
            Err(e) => {
                debug!(%peer, error = %e, "upgrade failed");
                return;
            }
        };
        debug!(%peer, path = %accepted.path, subprotocol = ?accepted.subprotocol, deflate = accepted.deflate.is_some(), "WebSocket open");
        loop {
            tokio::select! {
                msg = ws.next() => match msg {
                    Some(Ok(m)) if m.is_data() => {
                        if let Err(e) = ws.feed(m).await {
                            debug!(%peer, error = %e, "send failed");
                            break;
                        }
                    }
                    Some(Ok(_)) => {}
                    Some(Err(e)) => {
                        debug!(%peer, error = %e, close_code = ?e.close_code(), "WebSocket error");
                    }
                    None => break,
                },
                _ = stopped(&mut shutdown) => {
                    let _ = ws.close(CloseCode::GOING_AWAY, "server shutting down").await;
                    break;
                }
            }
        }
        debug!(%peer, "WebSocket closed");
    });
    response
}
