//! The server side of the opening handshake (RFC 6455 §4.2).
//!
//! ```
//! use wsx_proto::handshake::server::{parse_request, respond, ServerHandshakeConfig};
//!
//! let cfg = ServerHandshakeConfig::default();
//! let raw = b"GET /chat HTTP/1.1\r\nHost: example.com\r\nUpgrade: websocket\r\n\
//!             Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\
//!             Sec-WebSocket-Version: 13\r\n\r\n";
//! let (request, used) = parse_request(raw, &cfg).unwrap().unwrap();
//! assert_eq!(used, raw.len());
//! let accepted = respond(&request, &cfg).unwrap();
//! assert!(accepted.response.starts_with(b"HTTP/1.1 101 Switching Protocols\r\n"));
//! ```

use std::borrow::Cow;

use base64::Engine as _;

use super::{accept_key, parse_extensions, Headers};
use crate::extensions::permessage_deflate::{self, DeflateConfig, DeflateParams};

/// Which `Origin` values the server accepts (RFC 6455 §10.2). Requests without an
/// `Origin` header come from non-browser clients and are accepted by every policy
/// except [`OriginPolicy::AllowList`] with `require` set.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum OriginPolicy {
    /// Accept any origin.
    Any,
    /// Accept an origin whose host and port equal the request's `Host` (the default):
    /// a page may open sockets to the server that served it, and no other site's page
    /// can (cross-site WebSocket hijacking).
    #[default]
    SameOrigin,
    /// Accept only these origins (`scheme://host[:port]`, compared case-insensitively;
    /// `*` accepts any).
    AllowList {
        /// The accepted origins.
        origins: Vec<String>,
        /// Also refuse requests that carry no `Origin` at all.
        require: bool,
    },
}

impl OriginPolicy {
    /// Whether a request with this `Origin` (if any) and `Host` passes.
    pub fn allows(&self, origin: Option<&str>, host: &str) -> bool {
        match (self, origin) {
            (OriginPolicy::Any, _) => true,
            (OriginPolicy::SameOrigin, None) => true,
            (OriginPolicy::SameOrigin, Some(o)) => {
                let authority = o
                    .split_once("://")
                    .map(|(_, rest)| rest)
                    .unwrap_or(o)
                    .trim_end_matches('/');
                authority.eq_ignore_ascii_case(host)
            }
            (OriginPolicy::AllowList { require, .. }, None) => !require,
            (OriginPolicy::AllowList { origins, .. }, Some(o)) => origins.iter().any(|a| {
                a == "*"
                    || a.trim_end_matches('/')
                        .eq_ignore_ascii_case(o.trim_end_matches('/'))
            }),
        }
    }
}

/// What the server accepts and how much it reads.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct ServerHandshakeConfig {
    /// The `Origin` policy. Default: [`OriginPolicy::SameOrigin`].
    pub origin: OriginPolicy,
    /// Subprotocols the server speaks, most preferred first. Default: none.
    pub subprotocols: Vec<String>,
    /// permessage-deflate, if the server accepts it. Default: `None` (off).
    pub deflate: Option<DeflateConfig>,
    /// The most header lines a request may have (431 beyond). Default: 64.
    pub max_headers: usize,
    /// The most bytes the request head may take (431 beyond). Default: 8 KiB.
    pub max_request_size: usize,
}

impl Default for ServerHandshakeConfig {
    fn default() -> Self {
        ServerHandshakeConfig {
            origin: OriginPolicy::default(),
            subprotocols: Vec::new(),
            deflate: None,
            max_headers: 64,
            max_request_size: 8 * 1024,
        }
    }
}

impl ServerHandshakeConfig {
    /// Set the origin policy.
    pub fn origin(mut self, policy: OriginPolicy) -> Self {
        self.origin = policy;
        self
    }
    /// Set the subprotocols, most preferred first.
    pub fn subprotocols<I: IntoIterator<Item = S>, S: Into<String>>(mut self, protos: I) -> Self {
        self.subprotocols = protos.into_iter().map(Into::into).collect();
        self
    }
    /// Enable or disable permessage-deflate.
    pub fn deflate(mut self, deflate: Option<DeflateConfig>) -> Self {
        self.deflate = deflate;
        self
    }
    /// Set the header line limit.
    pub fn max_headers(mut self, n: usize) -> Self {
        self.max_headers = n;
        self
    }
    /// Set the request head size limit.
    pub fn max_request_size(mut self, bytes: usize) -> Self {
        self.max_request_size = bytes;
        self
    }
}

/// A parsed HTTP request head.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    /// The method, e.g. `GET`.
    pub method: String,
    /// The request target (path and query).
    pub path: String,
    /// The minor HTTP version: 1 for HTTP/1.1, 0 for HTTP/1.0.
    pub version: u8,
    /// The headers.
    pub headers: Headers,
}

/// A refused handshake: the status, a one-line reason, and any header the status needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    /// The HTTP status code.
    pub status: u16,
    /// A one-line reason, sent as the body.
    pub reason: Cow<'static, str>,
    /// Seconds after which the client may try again (`Retry-After`), for 429 and 503.
    pub retry_after: Option<u32>,
}

impl Refusal {
    /// A refusal with a status and a one-line reason (line breaks are replaced).
    pub fn new(status: u16, reason: impl Into<Cow<'static, str>>) -> Self {
        let mut reason = reason.into();
        if reason.contains(['\r', '\n']) {
            reason = Cow::Owned(reason.replace(['\r', '\n'], " "));
        }
        Refusal {
            status,
            reason,
            retry_after: None,
        }
    }

    /// Say when the client may try again (a `Retry-After` header).
    pub fn retry_after(mut self, seconds: u32) -> Self {
        self.retry_after = Some(seconds);
        self
    }

    /// The HTTP response to write before closing the connection.
    pub fn response(&self) -> Vec<u8> {
        let mut extra = String::new();
        match self.status {
            426 => extra.push_str("Sec-WebSocket-Version: 13\r\nUpgrade: websocket\r\n"),
            405 => extra.push_str("Allow: GET\r\n"),
            _ => {}
        }
        if let Some(secs) = self.retry_after {
            extra.push_str(&format!("Retry-After: {secs}\r\n"));
        }
        format!(
            "HTTP/1.1 {} {}\r\nConnection: close\r\nContent-Type: text/plain; charset=utf-8\r\n{}Content-Length: {}\r\n\r\n{}\n",
            self.status,
            status_text(self.status),
            extra,
            self.reason.len() + 1,
            self.reason
        )
        .into_bytes()
    }
}

impl std::fmt::Display for Refusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {}", self.status, self.reason)
    }
}

/// The reason phrase of the statuses we send.
pub fn status_text(status: u16) -> &'static str {
    match status {
        101 => "Switching Protocols",
        400 => "Bad Request",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        426 => "Upgrade Required",
        431 => "Request Header Fields Too Large",
        500 => "Internal Server Error",
        503 => "Service Unavailable",
        505 => "HTTP Version Not Supported",
        _ => "Error",
    }
}

/// An accepted handshake.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Accepted {
    /// The `101 Switching Protocols` response to write.
    pub response: Vec<u8>,
    /// The request target.
    pub path: String,
    /// The subprotocol chosen, if any.
    pub subprotocol: Option<String>,
    /// The permessage-deflate parameters, if negotiated.
    pub deflate: Option<DeflateParams>,
    /// The `Sec-WebSocket-Accept` value (also in `response`), for HTTP servers that
    /// build their own response.
    pub accept_key: String,
    /// The `Sec-WebSocket-Extensions` value, if any (also in `response`).
    pub extensions: Option<String>,
}

/// Parse a request head from the front of `buf`.
///
/// Returns `Ok(None)` if more bytes are needed, or the request and the number of bytes
/// it took (bytes after it belong to the WebSocket stream). A head larger than
/// `max_request_size` or with more than `max_headers` lines is refused with 431, bytes
/// that are not HTTP with 400, and a version other than HTTP/1.x with 505.
pub fn parse_request(
    buf: &[u8],
    cfg: &ServerHandshakeConfig,
) -> Result<Option<(Request, usize)>, Refusal> {
    let mut headers = vec![httparse::EMPTY_HEADER; cfg.max_headers];
    let mut req = httparse::Request::new(&mut headers);
    match req.parse(buf) {
        Ok(httparse::Status::Complete(n)) => {
            if n > cfg.max_request_size {
                return Err(Refusal::new(431, "request headers too large"));
            }
            let request = Request {
                method: req.method.unwrap_or_default().to_string(),
                path: req.path.unwrap_or_default().to_string(),
                version: req.version.unwrap_or(1),
                headers: Headers::from_httparse(req.headers),
            };
            Ok(Some((request, n)))
        }
        Ok(httparse::Status::Partial) => {
            if buf.len() > cfg.max_request_size {
                Err(Refusal::new(431, "request headers too large"))
            } else {
                Ok(None)
            }
        }
        Err(httparse::Error::TooManyHeaders) => Err(Refusal::new(431, "too many request headers")),
        Err(httparse::Error::Version) => {
            Err(Refusal::new(505, "only HTTP/1.1 can upgrade to WebSocket"))
        }
        Err(_) => Err(Refusal::new(400, "malformed HTTP request")),
    }
}

/// Validate a request (RFC 6455 §4.2.1) and negotiate subprotocol and extensions.
pub fn respond(req: &Request, cfg: &ServerHandshakeConfig) -> Result<Accepted, Refusal> {
    respond_with(req, cfg, &[])
}

/// [`respond`], adding `extra` headers to the 101 response (e.g. `Set-Cookie`).
pub fn respond_with(
    req: &Request,
    cfg: &ServerHandshakeConfig,
    extra: &[(&str, &str)],
) -> Result<Accepted, Refusal> {
    let h = &req.headers;
    if req.version < 1 {
        return Err(Refusal::new(505, "WebSocket needs HTTP/1.1"));
    }
    if req.method != "GET" {
        return Err(Refusal::new(405, "WebSocket handshake must be a GET"));
    }
    let host = match h.get_str("host") {
        Some(host) if h.count("host") == 1 && !host.trim().is_empty() => host.trim(),
        _ => return Err(Refusal::new(400, "missing or repeated Host header")),
    };
    if !h.has_token("upgrade", "websocket") {
        return Err(Refusal::new(400, "missing Upgrade: websocket"));
    }
    if !h.has_token("connection", "upgrade") {
        return Err(Refusal::new(400, "missing Connection: Upgrade"));
    }
    match h.get_str("sec-websocket-version").map(str::trim) {
        None => return Err(Refusal::new(400, "missing Sec-WebSocket-Version")),
        Some("13") if h.count("sec-websocket-version") == 1 => {}
        Some(_) => {
            return Err(Refusal::new(
                426,
                "unsupported Sec-WebSocket-Version, use 13",
            ))
        }
    }
    let key = match h.get("sec-websocket-key") {
        Some(k) if h.count("sec-websocket-key") == 1 => trim(k),
        _ => return Err(Refusal::new(400, "missing or repeated Sec-WebSocket-Key")),
    };
    match base64::engine::general_purpose::STANDARD.decode(key) {
        Ok(raw) if raw.len() == 16 => {}
        _ => {
            return Err(Refusal::new(
                400,
                "Sec-WebSocket-Key is not base64 of 16 bytes",
            ))
        }
    }
    let origin = h
        .get("origin")
        .map(|o| std::str::from_utf8(o).unwrap_or("\u{fffd}"));
    if !cfg.origin.allows(origin.map(str::trim), host) {
        return Err(Refusal::new(403, "Origin not allowed"));
    }
    // The server picks by its own preference among the client's offers.
    let offered: Vec<&str> = h.tokens("sec-websocket-protocol").collect();
    let subprotocol = cfg
        .subprotocols
        .iter()
        .find(|p| offered.iter().any(|o| o == p))
        .cloned();
    let mut deflate = None;
    let mut ext_header = None;
    if let Some(dcfg) = &cfg.deflate {
        let offers = parse_extensions(h)
            .map_err(|_| Refusal::new(400, "malformed Sec-WebSocket-Extensions"))?;
        if let Some((params, value)) = permessage_deflate::server_negotiate(&offers, dcfg) {
            deflate = Some(params);
            ext_header = Some(value);
        }
    }
    let accept = accept_key(key);
    let mut response = format!(
        "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: {accept}\r\n"
    );
    if let Some(p) = &subprotocol {
        response.push_str(&format!("Sec-WebSocket-Protocol: {p}\r\n"));
    }
    if let Some(e) = &ext_header {
        response.push_str(&format!("Sec-WebSocket-Extensions: {e}\r\n"));
    }
    for (name, value) in extra {
        response.push_str(&format!("{name}: {value}\r\n"));
    }
    response.push_str("\r\n");
    Ok(Accepted {
        response: response.into_bytes(),
        path: req.path.clone(),
        subprotocol,
        deflate,
        accept_key: accept,
        extensions: ext_header,
    })
}

fn trim(v: &[u8]) -> &[u8] {
    let start = v
        .iter()
        .position(|b| !b.is_ascii_whitespace())
        .unwrap_or(v.len());
    let end = v
        .iter()
        .rposition(|b| !b.is_ascii_whitespace())
        .map_or(start, |e| e + 1);
    &v[start..end]
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: &str = "dGhlIHNhbXBsZSBub25jZQ==";

    fn request_with(lines: &[&str]) -> String {
        let mut s = String::from("GET /chat HTTP/1.1\r\n");
        for l in lines {
            s.push_str(l);
            s.push_str("\r\n");
        }
        s.push_str("\r\n");
        s
    }

    fn base() -> Vec<String> {
        vec![
            "Host: server.example.com".into(),
            "Upgrade: websocket".into(),
            "Connection: Upgrade".into(),
            format!("Sec-WebSocket-Key: {KEY}"),
            "Sec-WebSocket-Version: 13".into(),
        ]
    }

    fn run(raw: &str, cfg: &ServerHandshakeConfig) -> Result<Accepted, Refusal> {
        let (req, _) = parse_request(raw.as_bytes(), cfg)?.expect("complete");
        respond(&req, cfg)
    }

    fn run_lines(lines: Vec<String>, cfg: &ServerHandshakeConfig) -> Result<Accepted, Refusal> {
        let refs: Vec<&str> = lines.iter().map(String::as_str).collect();
        run(&request_with(&refs), cfg)
    }

    fn status(r: Result<Accepted, Refusal>) -> u16 {
        match r {
            Ok(_) => 101,
            Err(e) => e.status,
        }
    }

    fn without(name: &str) -> Vec<String> {
        base()
            .into_iter()
            .filter(|l| !l.starts_with(name))
            .collect()
    }

    #[test]
    fn rfc_4_2_2_accepts_the_sample_handshake() {
        let a = run_lines(base(), &ServerHandshakeConfig::default()).unwrap();
        let resp = String::from_utf8(a.response).unwrap();
        assert!(resp.starts_with("HTTP/1.1 101 Switching Protocols\r\n"));
        assert!(resp.contains("Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n"));
        assert!(resp.ends_with("\r\n\r\n"));
        assert_eq!(a.path, "/chat");
    }

    #[test]
    fn header_tokens_are_case_insensitive_lists() {
        let mut l = without("Upgrade");
        l.retain(|x| !x.starts_with("Connection"));
        l.push("upgrade: WebSocket".into());
        l.push("connection: keep-alive, UPGRADE".into());
        assert_eq!(status(run_lines(l, &Default::default())), 101);
    }

    #[test]
    fn missing_upgrade_or_connection_is_400() {
        assert_eq!(
            status(run_lines(without("Upgrade"), &Default::default())),
            400
        );
        assert_eq!(
            status(run_lines(without("Connection"), &Default::default())),
            400
        );
        assert_eq!(status(run_lines(without("Host"), &Default::default())), 400);
    }

    #[test]
    fn bad_key_is_400() {
        for key in [
            "",
            "abc",
            "dGhlIHNhbXBsZSBub25jZQ",
            "AAAAAAAAAAAAAAAAAAAAAAAAAAAA",
        ] {
            let mut l = without("Sec-WebSocket-Key");
            l.push(format!("Sec-WebSocket-Key: {key}"));
            assert_eq!(status(run_lines(l, &Default::default())), 400, "{key}");
        }
        let mut l = base();
        l.push(format!("Sec-WebSocket-Key: {KEY}"));
        assert_eq!(
            status(run_lines(l, &Default::default())),
            400,
            "repeated key"
        );
    }

    #[test]
    fn other_version_is_426_with_version_header() {
        let mut l = without("Sec-WebSocket-Version");
        l.push("Sec-WebSocket-Version: 8".into());
        let err = run_lines(l, &Default::default()).unwrap_err();
        assert_eq!(err.status, 426);
        let resp = String::from_utf8(err.response()).unwrap();
        assert!(resp.starts_with("HTTP/1.1 426 Upgrade Required\r\n"));
        assert!(resp.contains("\r\nSec-WebSocket-Version: 13\r\n"));
        assert_eq!(
            status(run_lines(
                without("Sec-WebSocket-Version"),
                &Default::default()
            )),
            400
        );
    }

    #[test]
    fn non_get_is_405() {
        let raw = request_with(&base().iter().map(String::as_str).collect::<Vec<_>>())
            .replacen("GET", "POST", 1);
        let err = run(&raw, &Default::default()).unwrap_err();
        assert_eq!(err.status, 405);
        assert!(String::from_utf8(err.response())
            .unwrap()
            .contains("Allow: GET\r\n"));
    }

    #[test]
    fn http_1_0_is_505() {
        let raw = request_with(&base().iter().map(String::as_str).collect::<Vec<_>>())
            .replacen("HTTP/1.1", "HTTP/1.0", 1);
        assert_eq!(status(run(&raw, &Default::default())), 505);
        let raw = "GET / HTTP/2.0\r\n\r\n";
        assert_eq!(
            parse_request(raw.as_bytes(), &Default::default())
                .unwrap_err()
                .status,
            505
        );
    }

    #[test]
    fn garbage_is_400() {
        assert_eq!(
            parse_request(
                b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03",
                &Default::default()
            )
            .unwrap_err()
            .status,
            400
        );
    }

    #[test]
    fn oversized_head_is_431() {
        let cfg = ServerHandshakeConfig::default().max_request_size(200);
        let mut l = base();
        l.push(format!("X-Big: {}", "a".repeat(300)));
        let refs: Vec<&str> = l.iter().map(String::as_str).collect();
        let raw = request_with(&refs);
        assert_eq!(parse_request(raw.as_bytes(), &cfg).unwrap_err().status, 431);
        // Still incomplete but already too large.
        assert_eq!(
            parse_request(&raw.as_bytes()[..250], &cfg)
                .unwrap_err()
                .status,
            431
        );
        let cfg = ServerHandshakeConfig::default().max_headers(3);
        assert_eq!(parse_request(raw.as_bytes(), &cfg).unwrap_err().status, 431);
    }

    #[test]
    fn partial_request_needs_more_bytes() {
        let refs: Vec<String> = base();
        let raw = request_with(&refs.iter().map(String::as_str).collect::<Vec<_>>());
        for cut in 0..raw.len() {
            assert_eq!(
                parse_request(&raw.as_bytes()[..cut], &Default::default()),
                Ok(None)
            );
        }
        let mut with_frame = raw.clone().into_bytes();
        with_frame.extend_from_slice(&[0x81, 0x80, 1, 2, 3, 4]);
        let (_, used) = parse_request(&with_frame, &Default::default())
            .unwrap()
            .unwrap();
        assert_eq!(used, raw.len());
    }

    #[test]
    fn origin_policy_same_origin_by_default() {
        let mut l = base();
        l.push("Origin: http://server.example.com".into());
        assert_eq!(status(run_lines(l, &Default::default())), 101);
        let mut l = base();
        l.push("Origin: https://evil.example".into());
        let err = run_lines(l, &Default::default()).unwrap_err();
        assert_eq!(err.status, 403);
        assert_eq!(
            status(run_lines(base(), &Default::default())),
            101,
            "no Origin: not a browser"
        );
    }

    #[test]
    fn origin_allow_list() {
        let cfg = ServerHandshakeConfig::default().origin(OriginPolicy::AllowList {
            origins: vec!["https://app.example".into()],
            require: true,
        });
        let mut l = base();
        l.push("Origin: https://APP.example".into());
        assert_eq!(status(run_lines(l, &cfg)), 101);
        let mut l = base();
        l.push("Origin: https://other.example".into());
        assert_eq!(status(run_lines(l, &cfg)), 403);
        assert_eq!(status(run_lines(base(), &cfg)), 403, "required");
        let any = ServerHandshakeConfig::default().origin(OriginPolicy::Any);
        let mut l = base();
        l.push("Origin: https://other.example".into());
        assert_eq!(status(run_lines(l, &any)), 101);
    }

    #[test]
    fn server_picks_subprotocol_by_its_own_preference() {
        let cfg = ServerHandshakeConfig::default().subprotocols(["v12.stomp", "v11.stomp"]);
        let mut l = base();
        l.push("Sec-WebSocket-Protocol: v10.stomp, v11.stomp".into());
        l.push("Sec-WebSocket-Protocol: v12.stomp".into());
        let a = run_lines(l, &cfg).unwrap();
        assert_eq!(a.subprotocol.as_deref(), Some("v12.stomp"));
        assert!(String::from_utf8(a.response)
            .unwrap()
            .contains("Sec-WebSocket-Protocol: v12.stomp\r\n"));
        let mut l = base();
        l.push("Sec-WebSocket-Protocol: mqtt".into());
        let a = run_lines(l, &cfg).unwrap();
        assert_eq!(a.subprotocol, None);
        assert!(!String::from_utf8(a.response)
            .unwrap()
            .contains("Sec-WebSocket-Protocol"));
    }

    #[test]
    fn deflate_negotiated_only_when_enabled() {
        let mut l = base();
        l.push("Sec-WebSocket-Extensions: permessage-deflate; client_max_window_bits".into());
        let a = run_lines(l.clone(), &Default::default()).unwrap();
        assert_eq!(a.deflate, None);
        assert!(!String::from_utf8(a.response)
            .unwrap()
            .contains("Extensions"));
        let cfg = ServerHandshakeConfig::default().deflate(Some(DeflateConfig::default()));
        let a = run_lines(l, &cfg).unwrap();
        assert!(a.deflate.is_some());
        assert!(String::from_utf8(a.response)
            .unwrap()
            .contains("Sec-WebSocket-Extensions: permessage-deflate\r\n"));
    }

    #[test]
    fn refusal_response_is_a_complete_http_message() {
        let r = Refusal::new(403, "Origin not allowed").response();
        let mut headers = [httparse::EMPTY_HEADER; 8];
        let mut resp = httparse::Response::new(&mut headers);
        let n = match resp.parse(&r).unwrap() {
            httparse::Status::Complete(n) => n,
            httparse::Status::Partial => panic!("partial"),
        };
        assert_eq!(resp.code, Some(403));
        assert_eq!(&r[n..], b"Origin not allowed\n");
    }
}
