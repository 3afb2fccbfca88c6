//! `wsx serve`: the hub's front-ends, the echo endpoint and the embedded pages, over
//! HTTP or HTTPS, every connection bounded in number and in time, with graceful
//! shutdown.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::extract::{ConnectInfo, State};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use http::{header, Request, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{watch, OwnedSemaphorePermit, Semaphore};
use tokio_util::task::TaskTracker;
use tracing::{debug, info, warn};
use wsx_hub::api::ApiConfig;
use wsx_hub::live::Live;
use wsx_hub::transport::limits::{IpSlot, Limiter};
use wsx_hub::transport::{stopped, Gate};

use crate::settings::{ServeArgs, Settings, KEYS, RELOADABLE};
use crate::web;
use crate::workers::Workers;

/// Run until Ctrl-C, or until a drain (SIGTERM, `POST /api/drain`) has emptied the
/// server or its window is over; then close every WebSocket left with 1001 and wait up
/// to the shutdown timeout for the close handshakes. SIGHUP (or `POST /api/reload`)
/// rereads `args`' config file.
pub async fn run(args: ServeArgs, settings: Settings) -> std::io::Result<()> {
    let tls = match &settings.tls {
        Some((cert, key)) => Some(Live::new(
            wsx::tls::acceptor(cert, key).map_err(|e| std::io::Error::other(e.to_string()))?,
        )),
        None => None,
    };
    let listener = listen(settings.listen, settings.backlog).map_err(|e| {
        std::io::Error::new(
            e.kind(),
            format!("cannot listen on {}: {e}", settings.listen),
        )
    })?;
    let addr = listener.local_addr()?;
    // The STOMP listener is bound (and logged) before the HTTP one is announced, so
    // that a caller waiting for "open" knows both.
    let stomp_listener = match settings.stomp_listen {
        Some(stomp_addr) => {
            let stomp = listen(stomp_addr, settings.backlog).map_err(|e| {
                std::io::Error::new(
                    e.kind(),
                    format!("cannot listen on {stomp_addr} (STOMP): {e}"),
                )
            })?;
            let scheme = if tls.is_some() { "stomp+ssl" } else { "stomp" };
            let local = stomp.local_addr()?;
            info!(addr = %local, "STOMP over TCP: {scheme}://{local}");
            Some(stomp)
        }
        None => None,
    };

    let (http, ws) = if tls.is_some() {
        ("https", "wss")
    } else {
        ("http", "ws")
    };
    let workers = Arc::new(Workers::start(settings.workers)?);
    debug!(workers = workers.count(), "event loops");
    info!(%addr, "wsx serve: open {http}://{addr}/ (echo endpoint {ws}://{addr}/echo)");
    let (shutdown_tx, shutdown_rx) = watch::channel(false);
    let tasks = TaskTracker::new();
    let hub = match &settings.redis {
        None => wsx_hub::Hub::new(hub_config(&settings)),
        Some(redis) => {
            wsx_hub::Hub::with_backplane(hub_config(&settings), redis_backplane(redis).await?)
        }
    };
    let node_address = settings
        .redis
        .as_ref()
        .and_then(|r| r.node_address.clone())
        .unwrap_or_else(|| format!("{http}://{addr}"));
    if let Err(e) = hub.set_address(&node_address).await {
        warn!("could not announce this node's address: {e}");
    }
    let limiter = Limiter::new(settings.source_limits.clone());
    let gate = Gate::new(
        hub,
        settings.server.clone(),
        settings.max_connections,
        shutdown_rx.clone(),
        tasks.clone(),
    )
    .with_limiter(limiter.clone());
    let open = Arc::new(Semaphore::new(settings.max_tcp_connections));
    let api = Live::new(api_config(&settings));
    let admin_password = Live::new(settings.admin_password.clone());
    let admin = crate::admin::Admin::new(gate.clone(), admin_password.clone(), tls.is_some());
    // Once a second, this node's figures on the admin channel (while the page is on).
    {
        let (on, gate, open) = (admin.clone(), gate.clone(), open.clone());
        let (max_tcp, workers_n) = (settings.max_tcp_connections, workers.count());
        tokio::spawn(wsx_hub::hub::figures::publish_every(
            Arc::downgrade(gate.hub()),
            Duration::from_secs(1),
            move || on.enabled(),
            move || {
                serde_json::json!({
                    "draining": gate.draining().is_some(),
                    "sessions": gate.open_sessions(),
                    "tcp_connections": max_tcp.saturating_sub(open.available_permits()),
                    "workers": workers_n,
                })
            },
        ));
    }
    let reloader = Arc::new(Reloader {
        args,
        started: settings.raw.clone(),
        current: std::sync::Mutex::new(settings.clone()),
        tls: tls.clone(),
        hub: gate.hub().clone(),
        limiter: limiter.clone(),
        api: api.clone(),
        admin_password,
    });
    let control = Control {
        gate: gate.clone(),
        reloader: reloader.clone(),
        api: api.clone(),
        drain_window: settings.drain_window,
    };
    tasks.spawn(reload_on_hangup(reloader, gate.stopped()));
    // `/echo` over plain TCP: its connections on event loops of their own, one per worker.
    let echo_loops = match tls {
        None => Some(crate::echo::EchoLoops::start(
            workers.count(),
            &settings.server.io,
            &gate,
            &tasks,
        )?),
        Some(_) => None,
    };
    // The native protocol and STOMP over plain TCP: their WebSockets on event loops too.
    let loop_cfg = wsx::event_loop::LoopConfig::default()
        .io(settings.server.io.clone())
        .write_timeout(gate.hub().config().write_timeout)
        .uring(settings.io_uring);
    let (native_loops, stomp_loops) = match tls {
        None => (
            Some(wsx_hub::native::NativeLoops::start(
                workers.count(),
                loop_cfg.clone(),
                &gate,
                &tasks,
            )?),
            Some(wsx_hub::stomp::StompLoops::start(
                workers.count(),
                loop_cfg,
                &gate,
                &tasks,
            )?),
        ),
        Some(_) => (None, None),
    };
    let loops = Loops {
        echo: echo_loops,
        native: native_loops,
        stomp: stomp_loops,
    };
    let router = routes(&gate, &settings, addr, api, control, loops).merge(admin.router());
    let limits = ConnLimits {
        header_timeout: settings.header_timeout,
        tls_handshake_timeout: settings.tls_handshake_timeout,
        body_timeout: settings.body_timeout,
    };
    if let Some(stomp) = stomp_listener {
        let listener = StompListener {
            workers: workers.clone(),
            tasks: tasks.clone(),
            limiter: limiter.clone(),
            gate: gate.clone(),
            cfg: Arc::new(settings.stomp.clone()),
            tls: tls.clone(),
            limits,
            open: open.clone(),
        };
        tasks.spawn(listener.run(stomp));
    }

    let signal = until_stop(gate.clone(), settings.drain_window);
    tokio::pin!(signal);
    while let Some((tcp, peer)) = next_connection(&listener, signal.as_mut()).await {
        let Ok(permit) = open.clone().try_acquire_owned() else {
            debug!(%peer, "too many open connections");
            tasks.spawn(refuse_over_limit(
                tcp,
                tls.is_some(),
                "too many connections",
            ));
            continue;
        };
        let Some(ip_slot) = limiter.open(peer.ip()) else {
            debug!(%peer, "too many open connections from this address");
            tasks.spawn(refuse_over_limit(
                tcp,
                tls.is_some(),
                "too many connections from your address",
            ));
            continue;
        };
        let conn = Conn {
            ip_slot: Arc::new(ip_slot),
            peer,
            router: router.clone(),
            tls: tls.clone(),
            limits,
            stop: shutdown_rx.clone(),
            _permit: permit,
        };
        workers.spawn(&tasks, tcp, move |tcp| conn.serve(tcp));
    }
    info!(
        "shutting down: closing the {} sessions left with 1001",
        gate.open_sessions()
    );
    let _ = shutdown_tx.send(true);
    tasks.close();
    if tokio::time::timeout(settings.shutdown_timeout, tasks.wait())
        .await
        .is_err()
    {
        warn!("shutdown timeout: {} connections still open", tasks.len());
    }
    if let Some(workers) = Arc::into_inner(workers) {
        workers.stop();
    }
    info!("bye");
    Ok(())
}

/// Connect to Redis (a node that cannot reach it at start does not start).
#[cfg(feature = "redis")]
async fn redis_backplane(
    r: &crate::settings::RedisSettings,
) -> std::io::Result<Arc<dyn wsx_hub::Backplane>> {
    let cfg = wsx_hub::redis::RedisConfig {
        url: r.url.clone(),
        cluster: r.cluster.clone(),
        ca: r.ca.clone(),
        prefix: r.prefix.clone(),
        timeout: r.timeout,
        presence_ttl: r.presence_ttl,
        ..wsx_hub::redis::RedisConfig::default()
    };
    let b = wsx_hub::redis::RedisBackplane::connect(cfg)
        .await
        .map_err(|e| {
            std::io::Error::other(format!(
                "cannot use the Redis backplane at {}: {e}",
                redact(&r.url)
            ))
        })?;
    let what = if r.cluster.is_empty() {
        "Redis"
    } else {
        "Redis Cluster"
    };
    info!(node = b.node(), prefix = %r.prefix, "backplane: {what} at {}", redact(&r.url));
    Ok(Arc::new(b))
}

#[cfg(not(feature = "redis"))]
async fn redis_backplane(
    r: &crate::settings::RedisSettings,
) -> std::io::Result<Arc<dyn wsx_hub::Backplane>> {
    Err(std::io::Error::other(format!(
        "this wsx was built without the redis feature: cannot use {}",
        redact(&r.url)
    )))
}

/// A Redis URL without its password, for logs.
fn redact(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(s), Some(at)) if at > s => format!("{}://***@{}", &url[..s], &url[at + 1..]),
        _ => url.to_string(),
    }
}

fn api_config(settings: &Settings) -> ApiConfig {
    let mut api = ApiConfig::default();
    api.api_key = settings.api_key.clone();
    api
}

fn hub_config(settings: &Settings) -> wsx_hub::HubConfig {
    let mut hub_cfg = wsx_hub::HubConfig::default();
    hub_cfg.auth = settings.auth.clone();
    hub_cfg.commands = settings.commands;
    hub_cfg.max_connections_per_user = settings.max_connections_per_user;
    hub_cfg.pace_depth = settings.publish_pace;
    hub_cfg.pace_max_wait = settings.publish_pace_max_wait;
    // What `connect` replies as `ping`: the keepalive interval WebSockets really get.
    hub_cfg.ping_interval_secs = settings
        .server
        .protocol
        .ping_interval
        .map_or(0, |d| d.as_secs());
    if settings.admin_password.is_some() {
        use wsx_hub::hub::figures;
        hub_cfg
            .namespaces
            .push((figures::NAMESPACE.into(), figures::namespace_options()));
    }
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
    hub_cfg
}

/// The event loops of the WebSocket endpoints that run on them (over plain TCP).
struct Loops {
    echo: Option<Arc<crate::echo::EchoLoops>>,
    native: Option<Arc<wsx_hub::native::NativeLoops>>,
    stomp: Option<Arc<wsx_hub::stomp::StompLoops>>,
}

/// The routing table: every path `wsx serve` answers, and what answers it (the README's
/// "Endpoints" table says the same).
fn routes(
    gate: &Gate,
    settings: &Settings,
    addr: SocketAddr,
    api: Live<ApiConfig>,
    control: Control,
    loops: Loops,
) -> Router {
    let hub = gate.hub().clone();
    let demo = match &settings.demo {
        Some(demo) => crate::demo::start(
            hub.clone(),
            demo,
            addr,
            settings.server.handshake.origin.clone(),
        ),
        None => Router::new(),
    };
    Router::new()
        // The echo endpoint: any message back (plain WebSocket, no hub).
        .route(
            "/echo",
            get(crate::echo::echo).layer(axum::Extension(loops.echo)),
        )
        .route("/healthz", get(healthz))
        .route("/metrics", get(metrics))
        // The pages and /wsx.js, embedded.
        .fallback(get(static_file))
        .with_state(gate.clone())
        // The native protocol: GET /connection/websocket.
        .merge(wsx_hub::native::router_on(gate, loops.native))
        // The native protocol over SockJS (every sockjs-client transport): /connection/sockjs.
        .merge(wsx_hub::native::sockjs_router(
            gate,
            wsx_hub::sockjs::SockJsConfig::default().sockjs_url("/vendor/sockjs.min.js"),
        ))
        // STOMP 1.0-1.2 over WebSocket: GET /stomp (STOMP over TCP: --stomp-listen).
        .merge(wsx_hub::stomp::router_on(
            gate,
            settings.stomp.clone(),
            loops.stomp,
        ))
        // Socket.IO v4 clients (Engine.IO polling, WebSocket, upgrade): /socket.io/.
        .merge(socketio(gate, settings))
        // The HTTP server API: POST /api/{method}.
        .merge(wsx_hub::api::router_live(hub, api))
        // The server's own methods beside it: POST /api/reload, POST /api/drain.
        .merge(control.router())
        // The demo's own endpoints (/demo/...).
        .merge(demo)
}

/// Socket.IO onto the hub (`wsx_hub::socketio::standalone`) at `/socket.io/`.
fn socketio(gate: &Gate, settings: &Settings) -> Router {
    let io = wsx_hub::socketio::SocketIo::new(gate.hub().clone(), settings.socketio.clone());
    wsx_hub::socketio::standalone::mount(&io);
    io.router(gate, wsx_hub::socketio::PATH)
}

/// A listening socket on `addr` whose queue of connections not yet accepted holds
/// `backlog` (the kernel caps it at `net.core.somaxconn`): a burst of connections
/// beyond it waits for SYN retries (seconds) instead of being accepted at once.
fn listen(addr: SocketAddr, backlog: u32) -> std::io::Result<TcpListener> {
    let socket = socket2::Socket::new(
        socket2::Domain::for_address(addr),
        socket2::Type::STREAM,
        Some(socket2::Protocol::TCP),
    )?;
    socket.set_reuse_address(true)?;
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into())?;
    socket.listen(i32::try_from(backlog).unwrap_or(i32::MAX))?;
    TcpListener::from_std(socket.into())
}

/// TCP keepalive on accepted connections: a peer that vanished (its host died, the
/// network dropped it) is found after ~90 s even when the protocol on top has no
/// heart-beat of its own (STOMP over TCP with `heart-beat:0,0`, say).
fn keepalive(tcp: &TcpStream) {
    let ka = socket2::TcpKeepalive::new()
        .with_time(Duration::from_secs(60))
        .with_interval(Duration::from_secs(10))
        .with_retries(3);
    if let Err(e) = socket2::SockRef::from(tcp).set_tcp_keepalive(&ka) {
        debug!(error = %e, "TCP keepalive not set");
    }
}

/// The next accepted connection (`TCP_NODELAY` and keepalive set), or `None` once `stop`
/// resolves.
/// An accept error (out of file descriptors, say) is logged and retried after a pause
/// that gives connections time to close.
async fn next_connection<F: std::future::Future<Output = ()>>(
    listener: &TcpListener,
    mut stop: std::pin::Pin<&mut F>,
) -> Option<(TcpStream, SocketAddr)> {
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((tcp, peer)) => {
                    let _ = tcp.set_nodelay(true);
                    keepalive(&tcp);
                    return Some((tcp, peer));
                }
                Err(e) => {
                    warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            },
            _ = stop.as_mut() => return None,
        }
    }
}

/// Time bounds of one connection before it is a WebSocket.
#[derive(Clone, Copy)]
struct ConnLimits {
    header_timeout: Duration,
    tls_handshake_timeout: Duration,
    body_timeout: Duration,
}

/// One accepted TCP connection, holding its slot of `--max-tcp-connections`.
struct Conn {
    /// This connection's place in its source address's count (a WebSocket it is
    /// upgraded to keeps it, through the request's extensions).
    ip_slot: Arc<IpSlot>,
    peer: SocketAddr,
    router: Router,
    tls: Option<Live<tokio_rustls::TlsAcceptor>>,
    limits: ConnLimits,
    stop: watch::Receiver<bool>,
    _permit: OwnedSemaphorePermit,
}

impl Conn {
    async fn serve(mut self, tcp: TcpStream) {
        let peer = self.peer;
        let router = self.router.clone();
        let ip_slot = self.ip_slot.clone();
        let body_timeout = self.limits.body_timeout;
        let service = hyper::service::service_fn(move |mut req: Request<hyper::body::Incoming>| {
            req.extensions_mut().insert(ConnectInfo(peer));
            req.extensions_mut().insert(ip_slot.clone());
            let router = router.clone();
            async move {
                // A request without a body (a GET, an upgrade) needs no timer.
                let req = req.map(|b| {
                    if hyper::body::Body::is_end_stream(&b) {
                        Body::new(b)
                    } else {
                        Body::new(wsx_hub::transport::TimedBody::new(b, body_timeout))
                    }
                });
                Ok::<_, Infallible>(
                    tower::ServiceExt::oneshot(router, req)
                        .await
                        .unwrap_or_else(|e| match e {}),
                )
            }
        });
        let mut builder = hyper::server::conn::http1::Builder::new();
        // hyper's head timer starts when it waits for a request's head: at the start
        // and after each response, so it bounds silent and idle keep-alive connections
        // as well as slow heads.
        builder
            .timer(TokioTimer::new())
            .header_read_timeout(self.limits.header_timeout);
        // The certificate as it is now (a reload changes it for new connections).
        let result = match self.tls.take().map(|live| live.get()) {
            Some(acceptor) => {
                let limit = self.limits.tls_handshake_timeout;
                let Some(stream) = tls_accept(&acceptor, tcp, limit, peer).await else {
                    return;
                };
                let conn = builder
                    .serve_connection(TokioIo::new(stream), service)
                    .with_upgrades();
                serve_until(conn, &mut self.stop).await
            }
            None => {
                let conn = builder
                    .serve_connection(TokioIo::new(tcp), service)
                    .with_upgrades();
                serve_until(conn, &mut self.stop).await
            }
        };
        if let Err(e) = result {
            debug!(%peer, error = %e, "HTTP connection ended");
        }
    }
}

/// The STOMP-over-TCP listener (`--stomp-listen`): the same connection bounds as the
/// HTTP listener (number, TLS handshake time) and the same shutdown; the session bounds
/// the time to CONNECT and the heart-beats.
struct StompListener {
    workers: Arc<Workers>,
    tasks: TaskTracker,
    limiter: Arc<Limiter>,
    gate: Gate,
    cfg: Arc<wsx_hub::stomp::StompConfig>,
    tls: Option<Live<tokio_rustls::TlsAcceptor>>,
    limits: ConnLimits,
    open: Arc<Semaphore>,
}

impl StompListener {
    async fn run(self, listener: TcpListener) {
        let stop = self.gate.stopped();
        tokio::pin!(stop);
        while let Some((tcp, peer)) = next_connection(&listener, stop.as_mut()).await {
            let Ok(open) = self.open.clone().try_acquire_owned() else {
                debug!(%peer, "too many open connections (STOMP)");
                continue;
            };
            let Some(ip_slot) = self.limiter.open(peer.ip()) else {
                debug!(%peer, "too many STOMP connections from this address");
                continue;
            };
            let slot = match self.gate.admit_from(peer, &http::HeaderMap::new()) {
                Ok(slot) => slot,
                Err(refusal) => {
                    debug!(%peer, reason = %refusal.reason, "STOMP connection refused");
                    continue;
                }
            };
            let gate = self.gate.clone();
            let cfg = self.cfg.clone();
            let tls = self.tls.as_ref().map(Live::get);
            let tls_timeout = self.limits.tls_handshake_timeout;
            self.workers.spawn(&self.tasks, tcp, move |tcp| async move {
                let _held = (open, slot, ip_slot);
                let stop = gate.stopped();
                match tls {
                    None => wsx_hub::stomp::serve_stream(&gate, cfg, tcp, stop).await,
                    Some(acceptor) => {
                        if let Some(stream) = tls_accept(&acceptor, tcp, tls_timeout, peer).await {
                            wsx_hub::stomp::serve_stream(&gate, cfg, stream, stop).await
                        }
                    }
                }
            });
        }
    }
}

/// The TLS handshake of an accepted connection, bounded by `limit`; `None` (logged)
/// when it fails or takes too long.
async fn tls_accept(
    acceptor: &tokio_rustls::TlsAcceptor,
    tcp: TcpStream,
    limit: Duration,
    peer: SocketAddr,
) -> Option<tokio_rustls::server::TlsStream<TcpStream>> {
    match tokio::time::timeout(limit, acceptor.accept(tcp)).await {
        Ok(Ok(stream)) => Some(stream),
        Ok(Err(e)) => {
            debug!(%peer, error = %e, "TLS handshake failed");
            None
        }
        Err(_) => {
            debug!(%peer, "TLS handshake timed out");
            None
        }
    }
}

/// A connection over `--max-tcp-connections` or `--max-connections-per-ip`: a plain one
/// gets a 503 saying `why` (a TLS one is closed: answering would cost a handshake), then
/// a bounded lingering close so that the answer is not destroyed by a reset.
async fn refuse_over_limit(mut tcp: TcpStream, tls: bool, why: &str) {
    if tls {
        return;
    }
    let body = format!("{why}\n");
    let response = format!(
        "HTTP/1.1 503 Service Unavailable\r\ncontent-type: text/plain\r\nretry-after: 1\r\nconnection: close\r\ncontent-length: {}\r\n\r\n{body}",
        body.len()
    );
    let _ = tokio::time::timeout(Duration::from_secs(1), async {
        tcp.write_all(response.as_bytes()).await?;
        tcp.shutdown().await?;
        let mut sink = [0u8; 1024];
        while tcp.read(&mut sink).await? > 0 {}
        Ok::<_, std::io::Error>(())
    })
    .await;
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
        _ = stopped(stop.clone()) => {
            conn.as_mut().graceful_shutdown();
            conn.await
        }
    }
}

/// Resolves when the server should stop: at Ctrl-C at once; after SIGTERM or
/// `POST /api/drain`, once the drain has emptied the server or its window is over (a
/// second signal stops it at once).
async fn until_stop(gate: Gate, window: Duration) {
    let mut term = Signal::new(tokio::signal::unix::SignalKind::terminate());
    tokio::select! {
        _ = tokio::signal::ctrl_c() => return,
        _ = term.recv() => {}
        _ = gate.drain_begun() => {}
    }
    // Begins the drain after SIGTERM; after POST /api/drain, the one under way.
    let d = gate.drain(window);
    info!(
        sessions = d.sessions,
        "draining: no new sessions; the open ones are told to reconnect over {:?}", d.window
    );
    let emptied = async {
        while gate.open_sessions() > 0 {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
        _ = emptied => info!("drained: no session left"),
        _ = tokio::time::sleep_until(d.since + d.window + Duration::from_millis(100)) => {
            info!("drain window over");
        }
    }
}

/// A Unix signal stream that never fires where the signal cannot be listened to.
struct Signal(Option<tokio::signal::unix::Signal>);

impl Signal {
    fn new(kind: tokio::signal::unix::SignalKind) -> Signal {
        Signal(tokio::signal::unix::signal(kind).ok())
    }

    async fn recv(&mut self) {
        match &mut self.0 {
            Some(s) => {
                s.recv().await;
            }
            None => std::future::pending().await,
        }
    }
}

/// Reload at each SIGHUP until the server stops.
async fn reload_on_hangup(reloader: Arc<Reloader>, stop: impl std::future::Future<Output = ()>) {
    let mut hup = Signal::new(tokio::signal::unix::SignalKind::hangup());
    tokio::pin!(stop);
    loop {
        tokio::select! {
            _ = hup.recv() => {
                let _ = reloader.reload();
            }
            _ = &mut stop => return,
        }
    }
}

/// What a reload rereads and where it puts it.
struct Reloader {
    args: ServeArgs,
    /// The raw settings the server started with (a key only a restart applies is
    /// compared with these).
    started: std::collections::BTreeMap<&'static str, String>,
    current: std::sync::Mutex<Settings>,
    tls: Option<Live<tokio_rustls::TlsAcceptor>>,
    hub: Arc<wsx_hub::Hub>,
    limiter: Arc<Limiter>,
    api: Live<ApiConfig>,
    admin_password: Live<Option<String>>,
}

impl Reloader {
    /// Read the settings again (the config file; flags and environment as at start
    /// still win) and apply what can change while running: the TLS certificate and key
    /// (new connections), namespaces, tokens, the API key and the limits. A file that
    /// does not parse or validate, or a certificate that does not load, changes
    /// nothing. The answer names the keys applied and those that need a restart.
    fn reload(&self) -> Result<serde_json::Value, String> {
        let result = self.try_reload();
        match &result {
            Ok(r) => {
                info!(changed = %r["changed"], restart_needed = %r["restart_needed"], "settings reloaded")
            }
            Err(e) => warn!("reload refused, nothing changed: {e}"),
        }
        result
    }

    fn try_reload(&self) -> Result<serde_json::Value, String> {
        let mut new = self.args.resolve().map_err(|e| e.to_string())?;
        let acceptor = match (&self.tls, &new.tls) {
            (Some(_), Some((cert, key))) => {
                Some(wsx::tls::acceptor(cert, key).map_err(|e| format!("TLS certificate: {e}"))?)
            }
            _ => None,
        };
        let mut current = self.current.lock().unwrap_or_else(|e| e.into_inner());
        let restart_needed: Vec<&str> = KEYS
            .iter()
            .map(|(k, _)| *k)
            .filter(|k| !RELOADABLE.contains(k) && self.started.get(k) != new.raw.get(k))
            .collect();
        let mut changed: Vec<&str> = KEYS
            .iter()
            .map(|(k, _)| *k)
            .filter(|k| RELOADABLE.contains(k) && current.raw.get(k) != new.raw.get(k))
            .collect();
        if current.namespaces != new.namespaces {
            changed.push("namespaces");
        }
        // What only a restart changes stays as the server runs it.
        new.demo = current.demo.clone();
        new.server = current.server.clone();
        if let (Some(live), Some(acceptor)) = (&self.tls, acceptor) {
            live.set(acceptor);
        }
        self.hub.set_config(hub_config(&new));
        self.limiter.set_config(new.source_limits.clone());
        self.api.set(api_config(&new));
        self.admin_password.set(new.admin_password.clone());
        let certificate = self.tls.is_some();
        *current = new;
        Ok(serde_json::json!({
            "changed": changed,
            "restart_needed": restart_needed,
            "certificate_reloaded": certificate,
        }))
    }
}

/// The server's own API methods: `POST /api/reload` and `POST /api/drain`, with the
/// API key.
#[derive(Clone)]
struct Control {
    gate: Gate,
    reloader: Arc<Reloader>,
    api: Live<ApiConfig>,
    drain_window: Duration,
}

impl Control {
    fn router(self) -> Router {
        Router::new()
            .route("/api/reload", axum::routing::post(reload))
            .route("/api/drain", axum::routing::post(drain))
            .with_state(self)
    }
}

async fn reload(State(c): State<Control>, headers: http::HeaderMap) -> Response {
    if let Err(refused) = wsx_hub::api::authorize(&c.api.get(), &headers) {
        return refused;
    }
    match c.reloader.reload() {
        Ok(r) => wsx_hub::api::ok(r),
        Err(e) => wsx_hub::api::error(
            StatusCode::BAD_REQUEST,
            wsx_hub::native::codec::codes::BAD_REQUEST,
            format!("nothing changed: {e}"),
        ),
    }
}

async fn drain(State(c): State<Control>, headers: http::HeaderMap) -> Response {
    if let Err(refused) = wsx_hub::api::authorize(&c.api.get(), &headers) {
        return refused;
    }
    let d = c.gate.drain(c.drain_window);
    wsx_hub::api::ok(serde_json::json!({
        "draining": true,
        "sessions": d.sessions,
        "window_ms": d.window.as_millis() as u64,
    }))
}

/// `/healthz`: 200 `ok` while serving, 503 `draining` once a drain began (so that a
/// load balancer sends new clients elsewhere).
async fn healthz(State(gate): State<Gate>) -> Response {
    if gate.draining().is_some() {
        (StatusCode::SERVICE_UNAVAILABLE, "draining\n").into_response()
    } else {
        "ok\n".into_response()
    }
}

async fn static_file(req: Request<Body>) -> Response {
    match web::file(req.uri().path()) {
        Some((content_type, body)) => {
            ([(header::CONTENT_TYPE, content_type)], body).into_response()
        }
        None => (StatusCode::NOT_FOUND, "not found\n").into_response(),
    }
}

async fn metrics(State(gate): State<Gate>) -> Response {
    let hub = gate.hub();
    let text = hub.metrics().render(hub.channels().len());
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], text).into_response()
}
