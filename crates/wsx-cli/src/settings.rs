//! `wsx serve` settings: one table of keys, each settable by flag (`--max-message-size`),
//! environment (`WSX_MAX_MESSAGE_SIZE`) or config file (`max_message_size = "1MiB"`),
//! in that order of precedence, with a documented default.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use wsx_hub::transport::limits::Net;

use wsx::{Config, DeflateConfig, IoConfig, OriginPolicy, ServerConfig};

use crate::units::{parse_bool, parse_duration, parse_optional_duration, parse_size};

macro_rules! settings {
    ($( $field:ident, $env:literal, $value:literal, $default:literal, $help:literal; )*) => {
        /// Options of `wsx serve`. Every option can also be given as an environment
        /// variable or as a key of the TOML file named by --config.
        #[derive(clap::Args, Debug, Default, Clone)]
        pub struct ServeArgs {
            /// TOML file with any of the settings below (keys in snake_case, e.g.
            /// max_message_size = "1MiB"). Flags and environment variables override it.
            #[arg(long, env = "WSX_CONFIG", hide_env_values = true, value_name = "FILE")]
            pub config: Option<PathBuf>,
            $(
                #[arg(long, env = $env, hide_env_values = true, value_name = $value,
                      help = concat!($help, " [default: ", $default, "]"),
                      // An on|off switch given alone means on.
                      num_args = if $value == "on|off" { 0..=1 } else { 1..=1 },
                      default_missing_value = "on")]
                pub $field: Option<String>,
            )*
        }

        /// Every setting key with its default.
        pub const KEYS: &[(&str, &str)] = &[$((stringify!($field), $default),)*];

        impl ServeArgs {
            fn flag(&self, key: &str) -> Option<&String> {
                match key {
                    $(stringify!($field) => self.$field.as_ref(),)*
                    _ => None,
                }
            }
        }
    };
}

settings! {
    listen, "WSX_LISTEN", "ADDR", "127.0.0.1:3000", "Address to listen on (IP:PORT)";
    tls_cert, "WSX_TLS_CERT", "PEM", "none", "TLS certificate chain (PEM); with --tls-key serves https:// and wss://";
    tls_key, "WSX_TLS_KEY", "PEM", "none", "TLS private key (PEM)";
    allowed_origins, "WSX_ALLOWED_ORIGINS", "LIST", "same-origin", "Origins allowed to open WebSockets, comma-separated (scheme://host[:port]); * allows any";
    subprotocols, "WSX_SUBPROTOCOLS", "LIST", "none", "Subprotocols the echo endpoint accepts, most preferred first, comma-separated";
    compression, "WSX_COMPRESSION", "on|off", "on", "permessage-deflate (RFC 7692)";
    compression_level, "WSX_COMPRESSION_LEVEL", "0-9", "1", "Deflate level";
    compression_threshold, "WSX_COMPRESSION_THRESHOLD", "BYTES", "256", "Messages smaller than this are sent uncompressed";
    server_no_context_takeover, "WSX_SERVER_NO_CONTEXT_TAKEOVER", "on|off", "off", "Reset the server's deflate context after each message (less memory, worse ratio)";
    client_no_context_takeover, "WSX_CLIENT_NO_CONTEXT_TAKEOVER", "on|off", "on", "Ask clients to reset their deflate context after each message (then a connection holds no inflate stream between messages, ~18 KiB of RSS each; clients' messages compress less)";
    server_max_window_bits, "WSX_SERVER_MAX_WINDOW_BITS", "8-15", "15", "The server's deflate window (log2)";
    client_max_window_bits, "WSX_CLIENT_MAX_WINDOW_BITS", "8-15", "15", "The largest deflate window clients may use (log2)";
    max_deflate_contexts, "WSX_MAX_DEFLATE_CONTEXTS", "N", "512", "Most connections keeping their own compression context (~310 KiB each once they compress); beyond, new ones are answered with server_no_context_takeover (a fan-out then compresses each message once for all of them)";
    max_message_size, "WSX_MAX_MESSAGE_SIZE", "SIZE", "1MiB", "Largest message accepted (close 1009 beyond)";
    max_frame_size, "WSX_MAX_FRAME_SIZE", "SIZE", "1MiB", "Largest frame accepted (close 1009 beyond)";
    write_buffer_size, "WSX_WRITE_BUFFER_SIZE", "SIZE", "128KiB", "Bytes queued per connection before sending waits";
    handshake_timeout, "WSX_HANDSHAKE_TIMEOUT", "DURATION", "10s", "Time allowed for the opening handshake";
    idle_timeout, "WSX_IDLE_TIMEOUT", "DURATION", "off", "Close (1001) a connection silent this long; 0 or off disables";
    close_timeout, "WSX_CLOSE_TIMEOUT", "DURATION", "5s", "Time to wait for the peer's close frame";
    ping_interval, "WSX_PING_INTERVAL", "DURATION", "30s", "Keepalive ping after this long without input; 0 or off disables";
    pong_timeout, "WSX_PONG_TIMEOUT", "DURATION", "20s", "Close (1011) if nothing arrives this long after a keepalive ping";
    backlog, "WSX_BACKLOG", "N", "1024", "Connections the kernel queues before they are accepted (capped by net.core.somaxconn): raise it for bursts of thousands of connections at once";
    workers, "WSX_WORKERS", "N|auto", "auto", "Threads serving connections, each its own event loop; accepted connections are dealt to them in turn (auto: one per core this process may run on)";
    io_uring, "WSX_IO_URING", "on|off", "on", "An event loop makes the sends of a fan-out 512 at a time, one io_uring submission each, instead of one send each (Linux; where io_uring is missing or refused, one send each)";
    max_connections, "WSX_MAX_CONNECTIONS", "N", "10000", "Concurrent WebSockets; more are refused with 503";
    max_tcp_connections, "WSX_MAX_TCP_CONNECTIONS", "N", "20000", "Open TCP connections in any state (TLS handshake, HTTP, WebSocket); more get 503 (TLS: are closed) at once";
    max_connections_per_ip, "WSX_MAX_CONNECTIONS_PER_IP", "N", "1000", "Open TCP connections from one source address (WebSockets included); more get 503 with Retry-After";
    handshakes_per_ip, "WSX_HANDSHAKES_PER_IP", "N", "50", "Handshakes (WebSocket upgrades, new HTTP sessions) per second from one source address, on average; more get 429 with Retry-After";
    handshake_burst_per_ip, "WSX_HANDSHAKE_BURST_PER_IP", "N", "100", "Handshakes one source address may make at once before --handshakes-per-ip applies";
    limit_exempt, "WSX_LIMIT_EXEMPT", "LIST", "127.0.0.0/8,::1", "Networks the per-address limits do not apply to (a load balancer's), comma-separated ADDR[/PREFIX]; none for no exemption";
    trusted_proxies, "WSX_TRUSTED_PROXIES", "LIST", "none", "Proxies whose X-Forwarded-For / Forwarded headers name the client for the per-address limits, comma-separated ADDR[/PREFIX] (from anyone else those headers are ignored)";
    commands_per_second, "WSX_COMMANDS_PER_SECOND", "N", "1000", "Commands per second per connection, every front-end (native commands, STOMP frames, Socket.IO events, fallback POSTs), on average; over it: native error 114, STOMP frames held back, Socket.IO ack error; after 100 refused since the connection's bucket was last full: closed (native 3010, STOMP ERROR, Socket.IO disconnect)";
    max_connections_per_user, "WSX_MAX_CONNECTIONS_PER_USER", "N|none", "none", "Connections one user (a token's subject) may have open on this node; a connect beyond gets error 106 (native), a STOMP ERROR, a Socket.IO connect_error";
    publish_pace, "WSX_PUBLISH_PACE", "N|off", "16", "Slow publishers down while this node is behind: a publication (HTTP API, client publish) is answered only when the subscriber waiting longest for its turn, and the average subscriber queue, hold fewer than N deliveries (at most --publish-pace-max-wait later; with --backplane redis, a node behind holds publishers on every node); up to N publications then go out in one write per subscriber. off: never wait (latency grows until subscribers' queues overflow)";
    publish_pace_max_wait, "WSX_PUBLISH_PACE_MAX_WAIT", "DURATION", "1s", "The longest a publication waits for --publish-pace before it is answered anyway";
    command_burst, "WSX_COMMAND_BURST", "N", "1000", "Commands one connection may send at once before --commands-per-second applies";
    header_timeout, "WSX_HEADER_TIMEOUT", "DURATION", "15s", "Longest wait for a request's whole head, from the connection's start or its previous response (bounds silent, slow-header and idle keep-alive connections)";
    body_timeout, "WSX_BODY_TIMEOUT", "DURATION", "30s", "Longest time for a request's body to arrive, from the end of its head (a client announcing a body it sends slowly or never gets an error and its connection ends)";
    tls_handshake_timeout, "WSX_TLS_HANDSHAKE_TIMEOUT", "DURATION", "10s", "Time allowed for a TLS handshake";
    stomp_listen, "WSX_STOMP_LISTEN", "ADDR", "off", "Also serve STOMP over TCP on this address (IP:PORT; TLS with --tls-cert/--tls-key); STOMP over WebSocket is always at /stomp";
    stomp_heart_beat, "WSX_STOMP_HEART_BEAT", "MS,MS", "1000,1000", "The server's STOMP heart-beat: the shortest interval it sends at, the shortest it asks of clients (ms; each direction uses the larger of both sides' wishes; 0 = none)";
    stomp_users, "WSX_STOMP_USERS", "LIST", "none", "STOMP logins as login:passcode pairs, comma-separated: a CONNECT with a login must match one (the login is then the user); none: logins are ignored and a passcode counts only as a connection token";
    stomp_connect_timeout, "WSX_STOMP_CONNECT_TIMEOUT", "DURATION", "10s", "Time allowed from a STOMP connection's start to its CONNECT frame";
    stomp_max_body, "WSX_STOMP_MAX_BODY", "SIZE", "1MiB", "Largest STOMP frame body (ERROR beyond)";
    stomp_max_headers, "WSX_STOMP_MAX_HEADERS", "N", "64", "Most headers in a STOMP frame (ERROR beyond)";
    stomp_max_header_bytes, "WSX_STOMP_MAX_HEADER_BYTES", "SIZE", "8KiB", "Most bytes of a STOMP frame's command and headers (ERROR beyond)";
    socketio_ping_interval, "WSX_SOCKETIO_PING_INTERVAL", "DURATION", "25s", "Socket.IO (Engine.IO) heartbeat: how often the server pings";
    socketio_ping_timeout, "WSX_SOCKETIO_PING_TIMEOUT", "DURATION", "20s", "Socket.IO: close a session whose pong does not come within this (a polling client that stops polling is closed after interval + timeout)";
    socketio_max_payload, "WSX_SOCKETIO_MAX_PAYLOAD", "SIZE", "1000000", "Socket.IO: largest HTTP body or WebSocket message from a client (413 / close 1009 beyond)";
    socketio_connect_timeout, "WSX_SOCKETIO_CONNECT_TIMEOUT", "DURATION", "45s", "Socket.IO: time allowed from a session's start to its namespace CONNECT";
    socketio_recovery, "WSX_SOCKETIO_RECOVERY", "DURATION", "2m", "Socket.IO connection state recovery: how long a dropped socket's state is kept (0 or off disables)";
    socketio_cors_credentials, "WSX_SOCKETIO_CORS_CREDENTIALS", "on|off", "off", "Socket.IO polling: allow credentials (cookies) on cross-origin requests from allowed origins";
    backplane, "WSX_BACKPLANE", "memory|URL[,URL...]", "memory", "What nodes share: memory (this process only), a Redis URL (redis://[:password@]host:port[/db], rediss:// for TLS) that every node names, or a Redis Cluster's seed nodes, comma-separated (two or more)";
    redis_prefix, "WSX_REDIS_PREFIX", "PREFIX", "wsx", "Prefix of every Redis key and channel (clusters sharing one Redis use different ones)";
    redis_ca, "WSX_REDIS_CA", "PEM", "system roots", "With rediss://: the CA certificate(s) to trust instead of the system's";
    redis_timeout, "WSX_REDIS_TIMEOUT", "DURATION", "2s", "Longest wait for a Redis reply or connection; beyond, the operation fails (error 111, HTTP 503, STOMP ERROR)";
    node_address, "WSX_NODE_ADDRESS", "URL", "listen address", "With Redis: the http://host:port other nodes reach this one at, to forward polls of sessions it holds (polling clients then need no sticky sessions); set it when listening on 0.0.0.0";
    presence_ttl, "WSX_PRESENCE_TTL", "DURATION", "30s", "With Redis: a member stays in presence this long unless its node renews it, so a node that dies leaves no ghosts beyond it";
    drain_window, "WSX_DRAIN_WINDOW", "DURATION", "10s", "On SIGTERM or POST /api/drain: stop taking new sessions, /healthz answers 503 draining, and tell the open ones to reconnect (elsewhere) spread evenly over this window; exit when none is left or at its end";
    shutdown_timeout, "WSX_SHUTDOWN_TIMEOUT", "DURATION", "5s", "On Ctrl-C (or at a drain's end), time allowed for clients to finish the close handshake";
    log_format, "WSX_LOG_FORMAT", "text|json", "text", "Log format (filter with RUST_LOG, e.g. RUST_LOG=wsx=debug)";
    admin_password, "WSX_ADMIN_PASSWORD", "PASSWORD", "none", "Password of the admin page at /admin (live figures of every node, disconnect, unsubscribe, publish); none turns the page off";
    api_key, "WSX_API_KEY", "KEY", "none", "Key for the HTTP API (POST /api/publish, ... with 'Authorization: apikey KEY'); none turns the API off";
    token_hmac_secret, "WSX_TOKEN_HMAC_SECRET", "SECRET", "none", "Secret for HS256 connection tokens (JWT with sub, exp, optional channels)";
    token_rsa_public_key, "WSX_TOKEN_RSA_PUBLIC_KEY", "PEM", "none", "Public key file for RS256 connection tokens";
    allow_anonymous, "WSX_ALLOW_ANONYMOUS", "on|off|auto", "auto", "Accept connections without a token (auto: on without a token key, off with one)";
    demo, "WSX_DEMO", "on|off", "on", "The demo: judge, chat and chart channels, the tick publisher, the judge's endpoints";
    demo_judge_allow_remote, "WSX_DEMO_JUDGE_ALLOW_REMOTE", "on|off", "off", "Run the demo judge even when listening on a non-loopback address (it runs submitted Python: not a sandbox)";
    demo_judge_python, "WSX_DEMO_JUDGE_PYTHON", "PATH", "auto", "Python interpreter of the demo judge (auto: /usr/bin/python3 if present, else python3 on PATH)";
    demo_judge_time_limit, "WSX_DEMO_JUDGE_TIME_LIMIT", "DURATION", "2s", "Wall-clock limit per test case (CPU limit: this + 1 s)";
    demo_judge_memory_limit, "WSX_DEMO_JUDGE_MEMORY_LIMIT", "SIZE", "256MiB", "Address-space limit per test case";
    demo_judge_parallel, "WSX_DEMO_JUDGE_PARALLEL", "N", "4", "Test cases run at once, over all submissions";
    demo_judge_max_code, "WSX_DEMO_JUDGE_MAX_CODE", "SIZE", "64KiB", "Largest submission";
}

/// The keys a reload (SIGHUP, `POST /api/reload`) applies to the running server; any
/// other key's change is reported as needing a restart. The `[namespaces.*]` tables are
/// reloaded too.
pub const RELOADABLE: &[&str] = &[
    "config",
    "tls_cert",
    "tls_key",
    "max_connections_per_ip",
    "handshakes_per_ip",
    "handshake_burst_per_ip",
    "limit_exempt",
    "trusted_proxies",
    "commands_per_second",
    "command_burst",
    "max_connections_per_user",
    "publish_pace",
    "publish_pace_max_wait",
    "api_key",
    "admin_password",
    "token_hmac_secret",
    "token_rsa_public_key",
    "allow_anonymous",
];

/// Log output formats.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

/// The resolved settings of `wsx serve`.
#[derive(Debug, Clone)]
pub struct Settings {
    pub listen: SocketAddr,
    pub tls: Option<(PathBuf, PathBuf)>,
    pub server: ServerConfig,
    pub max_connections: usize,
    pub max_tcp_connections: usize,
    /// The listeners' accept queue (`--backlog`).
    pub backlog: u32,
    /// Threads serving connections (`--workers`).
    pub workers: usize,
    /// The event loops batch fan-out sends in an io_uring (`--io-uring`).
    pub io_uring: bool,
    /// Limits per source address.
    pub source_limits: wsx_hub::transport::limits::SourceLimits,
    /// Commands per second per connection.
    pub commands: wsx_hub::hub::rate::CommandRate,
    /// Connections per user (`None`: no limit).
    pub max_connections_per_user: Option<usize>,
    /// `HubConfig::pace_depth` (0: off).
    pub publish_pace: usize,
    /// `HubConfig::pace_max_wait`.
    pub publish_pace_max_wait: Duration,
    pub header_timeout: Duration,
    pub body_timeout: Duration,
    pub tls_handshake_timeout: Duration,
    pub shutdown_timeout: Duration,
    /// How long a drain spreads its reconnects over.
    pub drain_window: Duration,
    /// Every key's value as given (flag, environment, file or default), to tell what a
    /// reload changed.
    pub raw: std::collections::BTreeMap<&'static str, String>,
    /// STOMP over TCP: its listen address, if any.
    pub stomp_listen: Option<SocketAddr>,
    pub stomp: wsx_hub::stomp::StompConfig,
    pub socketio: wsx_hub::socketio::SocketIoConfig,
    pub log_format: LogFormat,
    pub api_key: Option<String>,
    /// The admin page's password (`None`: the page is off).
    pub admin_password: Option<String>,
    pub auth: wsx_hub::auth::AuthConfig,
    /// `[namespaces.NAME]` tables of the config file (`default` is the default namespace).
    pub namespaces: Vec<(String, wsx_hub::ChannelOptions)>,
    /// The demo, unless `--demo off`.
    pub demo: Option<crate::demo::DemoSettings>,
    /// The Redis backplane, unless `--backplane memory`.
    pub redis: Option<RedisSettings>,
}

/// `--backplane redis://...` and the settings that go with it.
#[derive(Debug, Clone)]
#[cfg_attr(not(feature = "redis"), allow(dead_code))]
pub struct RedisSettings {
    pub url: String,
    /// `--redis-ca`: PEM to trust for rediss://.
    pub ca: Option<Vec<u8>>,
    /// Where other nodes reach this one (`None`: the listen address).
    pub node_address: Option<String>,
    /// A Redis Cluster's seed nodes (two or more URLs given).
    pub cluster: Vec<String>,
    pub prefix: String,
    pub timeout: Duration,
    pub presence_ttl: Duration,
}

/// A bad setting: which key, and why. Displayed as one line.
#[derive(Debug)]
pub struct SettingError {
    pub key: String,
    pub reason: String,
}

impl std::fmt::Display for SettingError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "invalid setting `{}`: {}", self.key, self.reason)
    }
}

fn toml_scalar(key: &str, v: &toml::Value) -> Result<String, SettingError> {
    Ok(match v {
        toml::Value::String(s) => s.clone(),
        toml::Value::Integer(i) => i.to_string(),
        toml::Value::Float(f) => f.to_string(),
        toml::Value::Boolean(b) => if *b { "on" } else { "off" }.to_string(),
        toml::Value::Array(items) => items
            .iter()
            .map(|i| toml_scalar(key, i))
            .collect::<Result<Vec<_>, _>>()?
            .join(","),
        _ => {
            return Err(SettingError {
                key: key.into(),
                reason: "expected a string, number, boolean or list".into(),
            })
        }
    })
}

/// One `[namespaces.NAME]` table.
fn namespace(
    name: &str,
    v: &toml::Value,
) -> Result<(String, wsx_hub::ChannelOptions), SettingError> {
    let key = |k: &str| format!("namespaces.{name}.{k}");
    let table = v.as_table().ok_or_else(|| SettingError {
        key: key(""),
        reason: "expected a table".into(),
    })?;
    let mut o = wsx_hub::ChannelOptions::default();
    for (k, val) in table {
        let as_bool = || {
            val.as_bool().ok_or_else(|| SettingError {
                key: key(k),
                reason: "expected true or false".into(),
            })
        };
        match k.as_str() {
            "presence" => o.presence = as_bool()?,
            "join_leave" => o.join_leave = as_bool()?,
            "recovery" => o.recovery = as_bool()?,
            "anonymous_subscribe" => o.anonymous_subscribe = as_bool()?,
            "client_publish" => o.client_publish = as_bool()?,
            "history_size" => {
                o.history_size = val
                    .as_integer()
                    .and_then(|i| usize::try_from(i).ok())
                    .ok_or_else(|| SettingError {
                        key: key(k),
                        reason: "expected a count".into(),
                    })?
            }
            "history_ttl" => {
                o.history_ttl =
                    parse_duration(&toml_scalar(&key(k), val)?).map_err(|reason| SettingError {
                        key: key(k),
                        reason,
                    })?
            }
            _ => {
                return Err(SettingError {
                    key: key(k),
                    reason: "unknown namespace option".into(),
                })
            }
        }
    }
    let ns = if name == "default" {
        String::new()
    } else {
        name.to_string()
    };
    Ok((ns, o))
}

/// A time bound must be more than zero (a zero bound would close every connection).
fn positive(d: Duration, key: &str) -> Result<Duration, SettingError> {
    if d.is_zero() {
        Err(SettingError {
            key: key.into(),
            reason: "must be more than 0".into(),
        })
    } else {
        Ok(d)
    }
}

impl ServeArgs {
    /// Resolve flags and environment over the config file over the defaults.
    pub fn resolve(&self) -> Result<Settings, SettingError> {
        let mut file = toml::Table::new();
        if let Some(path) = &self.config {
            let text = std::fs::read_to_string(path).map_err(|e| SettingError {
                key: "config".into(),
                reason: format!("{}: {e}", path.display()),
            })?;
            file = text.parse::<toml::Table>().map_err(|e| {
                // Line and column (1-based) of where the parser stopped.
                let at = e.span().map(|span| {
                    let before = &text[..span.start.min(text.len())];
                    let line = before.matches('\n').count() + 1;
                    let column = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
                    format!(":{line}:{column}")
                });
                SettingError {
                    key: "config".into(),
                    reason: format!(
                        "{}{}: {}",
                        path.display(),
                        at.unwrap_or_default(),
                        e.message()
                    ),
                }
            })?;
            if let Some(unknown) = file
                .keys()
                .find(|k| *k != "namespaces" && !KEYS.iter().any(|(key, _)| key == k))
            {
                return Err(SettingError {
                    key: unknown.clone(),
                    reason: format!("unknown key in {}", path.display()),
                });
            }
        }
        let mut raw = std::collections::BTreeMap::new();
        for (key, default) in KEYS {
            let value = match (self.flag(key), file.get(*key)) {
                (Some(v), _) => v.clone(),
                (None, Some(v)) => toml_scalar(key, v)?,
                (None, None) => default.to_string(),
            };
            raw.insert(*key, value);
        }
        let get = |key: &str| raw.get(key).map(String::as_str).unwrap_or_default();
        fn bad(key: &str) -> impl Fn(String) -> SettingError + '_ {
            move |reason| SettingError {
                key: key.into(),
                reason,
            }
        }
        let size = |key: &'static str| parse_size(get(key)).map_err(bad(key));
        let dur = |key: &'static str| parse_duration(get(key)).map_err(bad(key));
        let opt_dur = |key: &'static str| parse_optional_duration(get(key)).map_err(bad(key));
        let flag = |key: &'static str| parse_bool(get(key)).map_err(bad(key));
        let bits = |key: &'static str| -> Result<u8, SettingError> {
            get(key)
                .trim()
                .parse::<u8>()
                .ok()
                .filter(|b| (8..=15).contains(b))
                .ok_or_else(|| {
                    bad(key)(format!("`{}` is not a window size from 8 to 15", get(key)))
                })
        };
        let list = |key: &str| -> Vec<String> {
            match get(key).trim() {
                "none" | "" => Vec::new(),
                v => v
                    .split(',')
                    .map(|s| s.trim().to_string())
                    .filter(|s| !s.is_empty())
                    .collect(),
            }
        };

        let listen: SocketAddr = get("listen")
            .parse()
            .map_err(|_| bad("listen")(format!("`{}` is not IP:PORT", get("listen"))))?;
        let tls = match (get("tls_cert"), get("tls_key")) {
            ("none", "none") => None,
            ("none", _) => return Err(bad("tls_cert")("--tls-key needs --tls-cert".into())),
            (_, "none") => return Err(bad("tls_key")("--tls-cert needs --tls-key".into())),
            (c, k) => Some((PathBuf::from(c), PathBuf::from(k))),
        };
        let origins = list("allowed_origins");
        let origin = match origins.as_slice() {
            [one] if one == "same-origin" => OriginPolicy::SameOrigin,
            [one] if one == "*" => OriginPolicy::Any,
            [] => OriginPolicy::SameOrigin,
            list => {
                if let Some(o) = list.iter().find(|o| *o != "*" && !o.contains("://")) {
                    return Err(bad("allowed_origins")(format!(
                        "`{o}` is not scheme://host[:port]"
                    )));
                }
                OriginPolicy::AllowList {
                    origins: list.to_vec(),
                    require: false,
                }
            }
        };
        let level = get("compression_level")
            .trim()
            .parse::<u32>()
            .ok()
            .filter(|l| *l <= 9)
            .ok_or_else(|| {
                bad("compression_level")(format!(
                    "`{}` is not a level from 0 to 9",
                    get("compression_level")
                ))
            })?;
        let deflate = flag("compression")?.then_some(());
        let deflate = match deflate {
            Some(()) => Some(
                DeflateConfig::default()
                    .level(level)
                    .threshold(size("compression_threshold")?)
                    .server_no_context_takeover(flag("server_no_context_takeover")?)
                    .client_no_context_takeover(flag("client_no_context_takeover")?)
                    .server_max_window_bits(bits("server_max_window_bits")?)
                    .client_max_window_bits(bits("client_max_window_bits")?),
            ),
            None => None,
        };
        let protocol = Config::default()
            .max_message_size(size("max_message_size")?)
            .max_frame_size(size("max_frame_size")?)
            .idle_timeout(opt_dur("idle_timeout")?)
            .close_timeout(dur("close_timeout")?)
            .ping_interval(opt_dur("ping_interval")?)
            .pong_timeout(dur("pong_timeout")?);
        let mut io = IoConfig::default();
        io.write_buffer_size = size("write_buffer_size")?;
        let server = ServerConfig::default()
            .origin(origin)
            .subprotocols(list("subprotocols"))
            .deflate(deflate)
            .protocol(protocol)
            .io(io)
            .handshake_timeout(dur("handshake_timeout")?)
            .max_deflate_contexts(
                get("max_deflate_contexts")
                    .trim()
                    .parse::<usize>()
                    .map_err(|_| {
                        bad("max_deflate_contexts")(format!(
                            "`{}` is not a number",
                            get("max_deflate_contexts")
                        ))
                    })?,
            );
        let max_connections = get("max_connections")
            .trim()
            .parse::<usize>()
            .map_err(|_| {
                bad("max_connections")(format!("`{}` is not a number", get("max_connections")))
            })?;
        let log_format = match get("log_format").trim() {
            "text" => LogFormat::Text,
            "json" => LogFormat::Json,
            other => return Err(bad("log_format")(format!("`{other}` is not text or json"))),
        };
        let api_key = match get("api_key").trim() {
            "none" | "" => None,
            k if k.len() < 16 => return Err(bad("api_key")("use at least 16 characters".into())),
            k => Some(k.to_string()),
        };
        let admin_password = match get("admin_password").trim() {
            "none" | "" => None,
            k if k.len() < 8 => {
                return Err(bad("admin_password")("use at least 8 characters".into()))
            }
            k => Some(k.to_string()),
        };
        let mut auth = wsx_hub::auth::AuthConfig::default();
        auth.hmac_secret = match get("token_hmac_secret").trim() {
            "none" | "" => None,
            k if k.len() < 16 => {
                return Err(bad("token_hmac_secret")(
                    "use at least 16 characters".into(),
                ))
            }
            k => Some(k.to_string()),
        };
        auth.rsa_public_key_pem = match get("token_rsa_public_key").trim() {
            "none" | "" => None,
            path => Some(
                std::fs::read_to_string(path)
                    .map_err(|e| bad("token_rsa_public_key")(format!("{path}: {e}")))?,
            ),
        };
        auth.allow_anonymous = match get("allow_anonymous").trim() {
            "auto" => None,
            v => Some(parse_bool(v).map_err(bad("allow_anonymous"))?),
        };
        let namespaces = match file.get("namespaces") {
            None => Vec::new(),
            Some(toml::Value::Table(t)) => t
                .iter()
                .map(|(name, v)| namespace(name, v))
                .collect::<Result<Vec<_>, _>>()?,
            Some(_) => {
                return Err(bad("namespaces")(
                    "expected [namespaces.NAME] tables".into(),
                ))
            }
        };
        let count = |key: &'static str| -> Result<usize, SettingError> {
            get(key)
                .trim()
                .parse::<usize>()
                .ok()
                .filter(|n| *n > 0)
                .ok_or_else(|| bad(key)(format!("`{}` is not a positive number", get(key))))
        };
        let demo = if flag("demo")? {
            let judge = crate::demo::JudgeConfig {
                python: match get("demo_judge_python").trim() {
                    "auto" if std::path::Path::new("/usr/bin/python3").exists() => {
                        "/usr/bin/python3".to_string()
                    }
                    "auto" => "python3".to_string(),
                    path => path.to_string(),
                },
                time_limit: dur("demo_judge_time_limit")?,
                memory_limit: size("demo_judge_memory_limit")? as u64,
                parallel: count("demo_judge_parallel")?,
                max_code: size("demo_judge_max_code")?,
                ..crate::demo::JudgeConfig::default()
            };
            if judge.time_limit.is_zero() {
                return Err(bad("demo_judge_time_limit")("must be more than 0".into()));
            }
            Some(crate::demo::DemoSettings {
                judge,
                judge_allow_remote: flag("demo_judge_allow_remote")?,
                tick_seed: 42,
            })
        } else {
            None
        };
        let redis = match get("backplane").trim() {
            "memory" | "" => None,
            list => {
                let urls: Vec<String> = list.split(',').map(|u| u.trim().to_string()).collect();
                if let Some(bad_url) = urls
                    .iter()
                    .find(|u| !(u.starts_with("redis://") || u.starts_with("rediss://")))
                {
                    return Err(bad("backplane")(format!(
                        "`{bad_url}` is neither memory nor a redis:// or rediss:// URL"
                    )));
                }
                let prefix = get("redis_prefix").trim().to_string();
                if prefix.is_empty()
                    || prefix.contains(|c: char| c.is_whitespace() || c == '{' || c == '}')
                {
                    return Err(bad("redis_prefix")(format!(
                        "`{prefix}`: use a non-empty word without spaces or braces"
                    )));
                }
                let node_address = match get("node_address").trim() {
                    "listen address" | "" => None,
                    a if a.starts_with("http://") => Some(a.trim_end_matches('/').to_string()),
                    a => {
                        return Err(bad("node_address")(format!(
                            "`{a}` is not an http://host:port URL"
                        )))
                    }
                };
                let ca = match get("redis_ca").trim() {
                    "system roots" | "" => None,
                    path => Some(
                        std::fs::read(path).map_err(|e| bad("redis_ca")(format!("{path}: {e}")))?,
                    ),
                };
                Some(RedisSettings {
                    ca,
                    node_address,
                    url: urls[0].clone(),
                    cluster: if urls.len() > 1 { urls } else { Vec::new() },
                    prefix,
                    timeout: positive(dur("redis_timeout")?, "redis_timeout")?,
                    presence_ttl: positive(dur("presence_ttl")?, "presence_ttl")?,
                })
            }
        };
        Ok(Settings {
            redis,
            demo,
            namespaces,
            auth,
            api_key,
            admin_password,
            listen,
            tls,
            server,
            max_connections,
            max_tcp_connections: count("max_tcp_connections")?,
            backlog: u32::try_from(count("backlog")?).unwrap_or(u32::MAX),
            max_connections_per_user: match get("max_connections_per_user").trim() {
                "none" | "" => None,
                _ => Some(count("max_connections_per_user")?),
            },
            publish_pace_max_wait: positive(
                dur("publish_pace_max_wait")?,
                "publish_pace_max_wait",
            )?,
            publish_pace: match get("publish_pace").trim() {
                "off" | "0" => 0,
                _ => count("publish_pace")?,
            },
            commands: {
                let mut c = wsx_hub::hub::rate::CommandRate::default();
                c.per_second = count("commands_per_second")? as f64;
                c.burst = count("command_burst")? as f64;
                c
            },
            source_limits: {
                let nets = |key: &'static str| -> Result<Vec<Net>, SettingError> {
                    list(key)
                        .iter()
                        .filter(|n| *n != "none")
                        .map(|n| Net::parse(n).map_err(bad(key)))
                        .collect()
                };
                let mut l = wsx_hub::transport::limits::SourceLimits::default();
                l.connections_per_ip = count("max_connections_per_ip")?;
                l.handshakes_per_second = count("handshakes_per_ip")? as f64;
                l.handshake_burst = count("handshake_burst_per_ip")? as f64;
                l.exempt = nets("limit_exempt")?;
                l.trusted_proxies = nets("trusted_proxies")?;
                l
            },
            io_uring: flag("io_uring")?,
            workers: match get("workers").trim() {
                "auto" => std::thread::available_parallelism().map_or(1, |n| n.get()),
                _ => match count("workers")? {
                    0 => return Err(bad("workers")("must be at least 1 (or auto)".into())),
                    n => n,
                },
            },
            header_timeout: positive(dur("header_timeout")?, "header_timeout")?,
            body_timeout: positive(dur("body_timeout")?, "body_timeout")?,
            tls_handshake_timeout: positive(
                dur("tls_handshake_timeout")?,
                "tls_handshake_timeout",
            )?,
            shutdown_timeout: dur("shutdown_timeout")?,
            drain_window: dur("drain_window")?,
            stomp_listen: match get("stomp_listen").trim() {
                "off" | "" => None,
                a => Some(
                    a.parse()
                        .map_err(|_| bad("stomp_listen")(format!("`{a}` is not IP:PORT or off")))?,
                ),
            },
            stomp: {
                let mut stomp = wsx_hub::stomp::StompConfig::default();
                stomp.heart_beat = wsx_hub::stomp::heartbeat::parse(get("stomp_heart_beat"))
                    .ok_or_else(|| {
                        bad("stomp_heart_beat")(format!(
                            "`{}` is not MS,MS",
                            get("stomp_heart_beat")
                        ))
                    })?;
                stomp.connect_timeout =
                    positive(dur("stomp_connect_timeout")?, "stomp_connect_timeout")?;
                stomp.limits.max_body = size("stomp_max_body")?;
                for pair in list("stomp_users") {
                    let Some((login, passcode)) = pair.split_once(':') else {
                        return Err(bad("stomp_users")("expected login:passcode pairs".into()));
                    };
                    stomp.users.push((login.to_string(), passcode.to_string()));
                }
                stomp.limits.max_headers = count("stomp_max_headers")?;
                stomp.limits.max_header_bytes = size("stomp_max_header_bytes")?;
                stomp
            },
            socketio: {
                let engine = wsx_hub::engineio::EngineConfig::default()
                    .heartbeat(
                        positive(dur("socketio_ping_interval")?, "socketio_ping_interval")?,
                        positive(dur("socketio_ping_timeout")?, "socketio_ping_timeout")?,
                    )
                    .max_payload(size("socketio_max_payload")?)
                    .cors_credentials(flag("socketio_cors_credentials")?);
                wsx_hub::socketio::SocketIoConfig::default()
                    .engine(engine)
                    .connect_timeout(positive(
                        dur("socketio_connect_timeout")?,
                        "socketio_connect_timeout",
                    )?)
                    .recovery(opt_dur("socketio_recovery")?)
            },
            log_format,
            raw: raw.clone(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_resolve() {
        let s = ServeArgs::default().resolve().unwrap();
        assert_eq!(s.listen.to_string(), "127.0.0.1:3000");
        assert_eq!(s.server.protocol.max_message_size, 1 << 20);
        assert_eq!(
            s.server.protocol.ping_interval,
            Some(Duration::from_secs(30))
        );
        assert!(s.server.handshake.deflate.is_some());
        assert_eq!(s.server.handshake.origin, OriginPolicy::SameOrigin);
        assert_eq!(s.max_connections, 10000);
        assert_eq!(s.max_tcp_connections, 20000);
        assert_eq!(s.header_timeout, Duration::from_secs(15));
        assert_eq!(s.tls_handshake_timeout, Duration::from_secs(10));
        assert_eq!(s.publish_pace, 16);
        assert_eq!(s.publish_pace_max_wait, Duration::from_secs(1));
    }

    #[test]
    fn publish_pacing_can_be_turned_off_or_bounded() {
        let args = ServeArgs {
            publish_pace: Some("off".into()),
            publish_pace_max_wait: Some("250ms".into()),
            ..Default::default()
        };
        let s = args.resolve().unwrap();
        assert_eq!(s.publish_pace, 0);
        assert_eq!(s.publish_pace_max_wait, Duration::from_millis(250));
        let bad = ServeArgs {
            publish_pace: Some("deep".into()),
            ..Default::default()
        };
        assert!(bad
            .resolve()
            .unwrap_err()
            .to_string()
            .contains("publish_pace"));
    }

    #[test]
    fn flags_override_the_file_which_overrides_defaults() {
        let dir = std::env::temp_dir().join(format!("wsx-settings-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("wsx.toml");
        std::fs::write(
            &path,
            "max_message_size = \"4MiB\"\nmax_frame_size = 65536\ncompression = false\n",
        )
        .unwrap();
        let args = ServeArgs {
            config: Some(path),
            max_frame_size: Some("8KiB".into()),
            ..Default::default()
        };
        let s = args.resolve().unwrap();
        assert_eq!(s.server.protocol.max_message_size, 4 << 20);
        assert_eq!(s.server.protocol.max_frame_size, 8 << 10);
        assert!(s.server.handshake.deflate.is_none());
    }

    #[test]
    fn namespaces_from_the_file() {
        let dir = std::env::temp_dir().join(format!("wsx-ns-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("wsx.toml");
        std::fs::write(
            &path,
            "[namespaces.chat]\npresence = true\nhistory_size = 50\nhistory_ttl = \"10m\"\n[namespaces.default]\nclient_publish = false\n",
        )
        .unwrap();
        let s = ServeArgs {
            config: Some(path.clone()),
            ..Default::default()
        }
        .resolve()
        .unwrap();
        let chat = &s.namespaces.iter().find(|(n, _)| n == "chat").unwrap().1;
        assert!(chat.presence);
        assert_eq!(
            (chat.history_size, chat.history_ttl),
            (50, Duration::from_secs(600))
        );
        assert!(
            !s.namespaces
                .iter()
                .find(|(n, _)| n.is_empty())
                .unwrap()
                .1
                .client_publish
        );
        std::fs::write(&path, "[namespaces.chat]\nhistroy_size = 5\n").unwrap();
        let e = ServeArgs {
            config: Some(path),
            ..Default::default()
        }
        .resolve()
        .unwrap_err();
        assert_eq!(e.key, "namespaces.chat.histroy_size");
    }

    #[test]
    fn errors_name_the_key() {
        // The key of the error that resolving the arguments with one setting changed gives.
        fn key(set: impl FnOnce(&mut ServeArgs)) -> String {
            let mut args = ServeArgs::default();
            set(&mut args);
            args.resolve().unwrap_err().key
        }
        assert_eq!(
            key(|a| a.max_message_size = Some("lots".into())),
            "max_message_size"
        );
        assert_eq!(
            key(|a| a.server_max_window_bits = Some("16".into())),
            "server_max_window_bits"
        );
        assert_eq!(
            key(|a| a.allowed_origins = Some("example.com".into())),
            "allowed_origins"
        );
        assert_eq!(
            key(|a| a.admin_password = Some("short".into())),
            "admin_password"
        );
        let zero = || Some("0".to_string());
        assert_eq!(
            key(|a| a.demo_judge_parallel = zero()),
            "demo_judge_parallel"
        );
        assert_eq!(
            key(|a| a.demo_judge_time_limit = zero()),
            "demo_judge_time_limit"
        );
    }
}
