//! The client side of the opening handshake (RFC 6455 §4.1).
//!
//! ```
//! use wsx_proto::handshake::client::{ClientHandshake, ClientHandshakeConfig};
//! use wsx_proto::handshake::accept_key;
//!
//! let (hs, request) = ClientHandshake::new("example.com", "/chat", &ClientHandshakeConfig::default());
//! assert!(request.starts_with(b"GET /chat HTTP/1.1\r\n"));
//! let response = format!(
//!     "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
//!      Sec-WebSocket-Accept: {}\r\n\r\n",
//!     accept_key(hs.key().as_bytes())
//! );
//! let (accepted, used) = hs.parse_response(response.as_bytes(), false).unwrap().unwrap();
//! assert_eq!(used, response.len());
//! assert_eq!(accepted.subprotocol, None);
//! ```

use base64::Engine as _;

use super::{accept_key, parse_extensions, Headers};
use crate::error::HandshakeError;
use crate::extensions::permessage_deflate::{self, DeflateConfig, DeflateParams};

/// What the client offers.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct ClientHandshakeConfig {
    /// Subprotocols to offer, in the caller's order. Default: none.
    pub subprotocols: Vec<String>,
    /// Extra request headers (e.g. `Authorization`). Default: none.
    pub headers: Vec<(String, String)>,
    /// The `Origin` header to send, if any. Default: none.
    pub origin: Option<String>,
    /// permessage-deflate to offer. Default: `None` (no offer).
    pub deflate: Option<DeflateConfig>,
    /// The most bytes the response head (and a refusal's body) may take. Default: 64 KiB.
    pub max_response_size: usize,
}

impl Default for ClientHandshakeConfig {
    fn default() -> Self {
        ClientHandshakeConfig {
            subprotocols: Vec::new(),
            headers: Vec::new(),
            origin: None,
            deflate: None,
            max_response_size: 64 * 1024,
        }
    }
}

impl ClientHandshakeConfig {
    /// Set the subprotocols to offer.
    pub fn subprotocols<I: IntoIterator<Item = S>, S: Into<String>>(mut self, protos: I) -> Self {
        self.subprotocols = protos.into_iter().map(Into::into).collect();
        self
    }
    /// Add a request header.
    pub fn header(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        self.headers.push((name.into(), value.into()));
        self
    }
    /// Set the `Origin` header.
    pub fn origin(mut self, origin: impl Into<String>) -> Self {
        self.origin = Some(origin.into());
        self
    }
    /// Offer permessage-deflate (or not).
    pub fn deflate(mut self, deflate: Option<DeflateConfig>) -> Self {
        self.deflate = deflate;
        self
    }
}

/// A handshake in progress: holds what is needed to check the answer.
#[derive(Debug, Clone)]
pub struct ClientHandshake {
    key: String,
    subprotocols: Vec<String>,
    deflate: Option<DeflateConfig>,
    max_response_size: usize,
}

/// The server accepted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientAccepted {
    /// The subprotocol the server chose, if any.
    pub subprotocol: Option<String>,
    /// The permessage-deflate parameters, if the server accepted the offer.
    pub deflate: Option<DeflateParams>,
    /// The response headers.
    pub headers: Headers,
}

impl ClientHandshake {
    /// Start a handshake with a random key. `host` is the `Host` header value
    /// (`host[:port]`), `path` the request target. Returns the state and the request bytes.
    pub fn new(host: &str, path: &str, cfg: &ClientHandshakeConfig) -> (ClientHandshake, Vec<u8>) {
        let key: [u8; 16] = rand::random();
        Self::with_key(key, host, path, cfg)
    }

    /// [`ClientHandshake::new`] with a given key (for tests; a real client must use an
    /// unpredictable key, RFC 6455 §4.1).
    pub fn with_key(
        key: [u8; 16],
        host: &str,
        path: &str,
        cfg: &ClientHandshakeConfig,
    ) -> (ClientHandshake, Vec<u8>) {
        let key = base64::engine::general_purpose::STANDARD.encode(key);
        let mut req = format!(
            "GET {path} HTTP/1.1\r\nHost: {host}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n"
        );
        if let Some(o) = &cfg.origin {
            req.push_str(&format!("Origin: {o}\r\n"));
        }
        if !cfg.subprotocols.is_empty() {
            req.push_str(&format!(
                "Sec-WebSocket-Protocol: {}\r\n",
                cfg.subprotocols.join(", ")
            ));
        }
        if let Some(d) = &cfg.deflate {
            req.push_str(&format!(
                "Sec-WebSocket-Extensions: {}\r\n",
                permessage_deflate::client_offer(d)
            ));
        }
        for (name, value) in &cfg.headers {
            req.push_str(&format!("{name}: {value}\r\n"));
        }
        req.push_str("\r\n");
        let hs = ClientHandshake {
            key,
            subprotocols: cfg.subprotocols.clone(),
            deflate: cfg.deflate.clone(),
            max_response_size: cfg.max_response_size,
        };
        (hs, req.into_bytes())
    }

    /// The `Sec-WebSocket-Key` sent.
    pub fn key(&self) -> &str {
        &self.key
    }

    /// Parse and check the server's answer from the front of `buf`.
    ///
    /// `Ok(None)`: more bytes are needed (pass `eof = true` once the server has closed
    /// the connection, so a refusal without `Content-Length` can end). On 101, returns
    /// what was negotiated and the bytes the head took (later bytes are WebSocket
    /// frames). Any other status is `Err(Refused { status, reason: body })`.
    pub fn parse_response(
        &self,
        buf: &[u8],
        eof: bool,
    ) -> Result<Option<(ClientAccepted, usize)>, HandshakeError> {
        let mut headers = [httparse::EMPTY_HEADER; 64];
        let mut resp = httparse::Response::new(&mut headers);
        let n = match resp.parse(buf) {
            Ok(httparse::Status::Complete(n)) => n,
            Ok(httparse::Status::Partial) => {
                if buf.len() > self.max_response_size {
                    return Err(HandshakeError::TooLarge);
                }
                if eof {
                    return Err(HandshakeError::Malformed(
                        "connection closed during the handshake",
                    ));
                }
                return Ok(None);
            }
            Err(httparse::Error::TooManyHeaders) => return Err(HandshakeError::TooLarge),
            Err(_) => return Err(HandshakeError::Malformed("invalid HTTP response")),
        };
        let status = resp.code.unwrap_or(0);
        let h = Headers::from_httparse(resp.headers);
        if status != 101 {
            let body_len = h
                .get_str("content-length")
                .and_then(|v| v.trim().parse::<usize>().ok());
            let body = match body_len {
                Some(len) if buf.len() - n >= len.min(self.max_response_size) => {
                    &buf[n..n + len.min(self.max_response_size)]
                }
                Some(_) | None if !eof && buf.len() - n < self.max_response_size => {
                    return Ok(None);
                }
                _ => &buf[n..buf.len().min(n + self.max_response_size)],
            };
            return Err(HandshakeError::Refused {
                status,
                reason: String::from_utf8_lossy(body).trim_end().to_string(),
            });
        }
        self.check(&h).map(|accepted| Some((accepted, n)))
    }

    fn check(&self, h: &Headers) -> Result<ClientAccepted, HandshakeError> {
        if !h.has_token("upgrade", "websocket") {
            return Err(HandshakeError::InvalidResponse(
                "missing Upgrade: websocket",
            ));
        }
        if !h.has_token("connection", "upgrade") {
            return Err(HandshakeError::InvalidResponse(
                "missing Connection: Upgrade",
            ));
        }
        let expected = accept_key(self.key.as_bytes());
        match h.get("sec-websocket-accept") {
            Some(v) if h.count("sec-websocket-accept") == 1 && v == expected.as_bytes() => {}
            _ => {
                return Err(HandshakeError::InvalidResponse(
                    "wrong Sec-WebSocket-Accept",
                ))
            }
        }
        let protos: Vec<&str> = h.tokens("sec-websocket-protocol").collect();
        let subprotocol = match protos.as_slice() {
            [] => None,
            [p] if self.subprotocols.iter().any(|o| o == p) => Some(p.to_string()),
            _ => return Err(HandshakeError::InvalidResponse("subprotocol not offered")),
        };
        let exts = parse_extensions(h).map_err(HandshakeError::InvalidResponse)?;
        let deflate = match (exts.as_slice(), &self.deflate) {
            ([], _) => None,
            ([ext], Some(cfg)) if ext.name == permessage_deflate::NAME => Some(
                permessage_deflate::client_accept(ext, cfg)
                    .map_err(HandshakeError::InvalidResponse)?,
            ),
            _ => return Err(HandshakeError::InvalidResponse("extension not offered")),
        };
        Ok(ClientAccepted {
            subprotocol,
            deflate,
            headers: h.clone(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hs(cfg: &ClientHandshakeConfig) -> ClientHandshake {
        ClientHandshake::with_key(*b"the sample nonce", "server.example.com", "/chat", cfg).0
    }

    fn ok_response(extra: &str) -> String {
        format!(
            "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n{extra}\r\n"
        )
    }

    #[test]
    fn request_holds_every_required_header_and_options_in_order() {
        let cfg = ClientHandshakeConfig::default()
            .subprotocols(["chat", "superchat"])
            .origin("http://example.com")
            .header("Authorization", "Bearer x")
            .deflate(Some(DeflateConfig::default()));
        let (h, req) =
            ClientHandshake::with_key(*b"the sample nonce", "server.example.com", "/chat", &cfg);
        let req = String::from_utf8(req).unwrap();
        assert_eq!(h.key(), "dGhlIHNhbXBsZSBub25jZQ==");
        for line in [
            "GET /chat HTTP/1.1\r\n",
            "Host: server.example.com\r\n",
            "Upgrade: websocket\r\n",
            "Connection: Upgrade\r\n",
            "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n",
            "Sec-WebSocket-Version: 13\r\n",
            "Origin: http://example.com\r\n",
            "Sec-WebSocket-Protocol: chat, superchat\r\n",
            "Sec-WebSocket-Extensions: permessage-deflate; client_max_window_bits\r\n",
            "Authorization: Bearer x\r\n",
        ] {
            assert!(req.contains(line), "{line}");
        }
        assert!(req.ends_with("\r\n\r\n"));
    }

    #[test]
    fn random_keys_differ() {
        let (a, _) = ClientHandshake::new("h", "/", &Default::default());
        let (b, _) = ClientHandshake::new("h", "/", &Default::default());
        assert_ne!(a.key(), b.key());
        assert_eq!(
            base64::engine::general_purpose::STANDARD
                .decode(a.key())
                .unwrap()
                .len(),
            16
        );
    }

    #[test]
    fn accepts_the_right_answer_and_reports_bytes_used() {
        let r = ok_response("");
        let mut buf = r.clone().into_bytes();
        buf.extend_from_slice(&[0x81, 0x00]);
        let (a, n) = hs(&Default::default())
            .parse_response(&buf, false)
            .unwrap()
            .unwrap();
        assert_eq!(n, r.len());
        assert_eq!(a.subprotocol, None);
        for cut in 0..r.len() {
            assert_eq!(
                hs(&Default::default()).parse_response(&buf[..cut], false),
                Ok(None)
            );
        }
    }

    #[test]
    fn rejects_a_wrong_accept_value() {
        let r = ok_response("").replace(
            "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=",
            "s3pPLMBiTxaQ9kYGzzhZRbK+xOp=",
        );
        assert_eq!(
            hs(&Default::default()).parse_response(r.as_bytes(), false),
            Err(HandshakeError::InvalidResponse(
                "wrong Sec-WebSocket-Accept"
            ))
        );
    }

    #[test]
    fn rejects_a_subprotocol_it_did_not_offer() {
        let cfg = ClientHandshakeConfig::default().subprotocols(["chat"]);
        let r = ok_response("Sec-WebSocket-Protocol: chat\r\n");
        let (a, _) = hs(&cfg)
            .parse_response(r.as_bytes(), false)
            .unwrap()
            .unwrap();
        assert_eq!(a.subprotocol.as_deref(), Some("chat"));
        let r = ok_response("Sec-WebSocket-Protocol: other\r\n");
        assert!(hs(&cfg).parse_response(r.as_bytes(), false).is_err());
        assert!(hs(&Default::default())
            .parse_response(
                ok_response("Sec-WebSocket-Protocol: chat\r\n").as_bytes(),
                false
            )
            .is_err());
    }

    #[test]
    fn rejects_extensions_it_did_not_offer() {
        let r = ok_response("Sec-WebSocket-Extensions: permessage-deflate\r\n");
        assert!(hs(&Default::default())
            .parse_response(r.as_bytes(), false)
            .is_err());
        let cfg = ClientHandshakeConfig::default().deflate(Some(DeflateConfig::default()));
        let (a, _) = hs(&cfg)
            .parse_response(r.as_bytes(), false)
            .unwrap()
            .unwrap();
        assert!(a.deflate.is_some());
        let r = ok_response("Sec-WebSocket-Extensions: x-webkit-deflate-frame\r\n");
        assert!(hs(&cfg).parse_response(r.as_bytes(), false).is_err());
        let r = ok_response("Sec-WebSocket-Extensions: permessage-deflate, permessage-deflate\r\n");
        assert!(hs(&cfg).parse_response(r.as_bytes(), false).is_err());
    }

    #[test]
    fn non_101_yields_status_and_body() {
        let r = b"HTTP/1.1 403 Forbidden\r\nContent-Length: 19\r\n\r\nOrigin not allowed\n";
        assert_eq!(
            hs(&Default::default()).parse_response(r, false),
            Err(HandshakeError::Refused {
                status: 403,
                reason: "Origin not allowed".into()
            })
        );
        // Body not complete yet.
        assert_eq!(
            hs(&Default::default()).parse_response(&r[..r.len() - 3], false),
            Ok(None)
        );
        // No Content-Length: the body runs to EOF.
        let r = b"HTTP/1.1 500 Oops\r\n\r\nbroken";
        assert_eq!(hs(&Default::default()).parse_response(r, false), Ok(None));
        assert_eq!(
            hs(&Default::default()).parse_response(r, true),
            Err(HandshakeError::Refused {
                status: 500,
                reason: "broken".into()
            })
        );
    }
}
