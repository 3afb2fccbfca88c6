//! The opening handshake (RFC 6455 §4), both roles.
//!
//! - [`server`]: parse a request, validate it (§4.2.1), negotiate a subprotocol and
//!   extensions, and produce either the `101 Switching Protocols` response or a refusal
//!   with a status and a one-line reason.
//! - [`client`]: build a request with a fresh key and validate the server's answer (§4.1).

pub mod client;
pub mod server;

use base64::Engine as _;
use sha1::{Digest, Sha1};

/// RFC 6455 §1.3: the GUID appended to the key.
pub const GUID: &str = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11";

/// RFC 6455 §1.3: `Sec-WebSocket-Accept` = base64(SHA-1(key + GUID)).
pub fn accept_key(key: &[u8]) -> String {
    let mut sha = Sha1::new();
    sha.update(key);
    sha.update(GUID.as_bytes());
    base64::engine::general_purpose::STANDARD.encode(sha.finalize())
}

/// A header list as parsed: names as sent, values as bytes.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Headers(pub Vec<(String, Vec<u8>)>);

impl Headers {
    /// The first value of a header (names compare case-insensitively).
    pub fn get(&self, name: &str) -> Option<&[u8]> {
        self.0
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_slice())
    }

    /// The first value as a string, if it is UTF-8.
    pub fn get_str(&self, name: &str) -> Option<&str> {
        self.get(name).and_then(|v| std::str::from_utf8(v).ok())
    }

    /// Every value of a header, in order.
    pub fn all<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a [u8]> + 'a {
        self.0
            .iter()
            .filter(move |(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_slice())
    }

    /// How many times a header occurs.
    pub fn count(&self, name: &str) -> usize {
        self.all(name).count()
    }

    /// Every comma-separated element of every value of a header, trimmed, empty ones
    /// skipped (RFC 9110 §5.6.1 list syntax).
    pub fn tokens<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a str> + 'a {
        self.all(name)
            .filter_map(|v| std::str::from_utf8(v).ok())
            .flat_map(|v| v.split(','))
            .map(str::trim)
            .filter(|t| !t.is_empty())
    }

    /// Whether a token list header holds `token` (case-insensitive).
    pub fn has_token(&self, name: &str, token: &str) -> bool {
        self.tokens(name).any(|t| t.eq_ignore_ascii_case(token))
    }

    fn from_httparse(headers: &[httparse::Header<'_>]) -> Headers {
        Headers(
            headers
                .iter()
                .map(|h| (h.name.to_string(), h.value.to_vec()))
                .collect(),
        )
    }
}

/// One extension in a `Sec-WebSocket-Extensions` header: its name and parameters.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExtensionOffer {
    /// The extension token, e.g. `permessage-deflate`.
    pub name: String,
    /// Parameters in order; `None` for a parameter without a value.
    pub params: Vec<(String, Option<String>)>,
}

/// Parse the extension list of every `Sec-WebSocket-Extensions` value (RFC 6455 §9.1).
pub fn parse_extensions(headers: &Headers) -> Result<Vec<ExtensionOffer>, &'static str> {
    let mut out = Vec::new();
    for value in headers.all("sec-websocket-extensions") {
        let value = std::str::from_utf8(value).map_err(|_| "extension header is not UTF-8")?;
        for ext in split_outside_quotes(value, ',') {
            let ext = ext.trim();
            if ext.is_empty() {
                continue;
            }
            let mut parts = split_outside_quotes(ext, ';').into_iter();
            let name = parts.next().unwrap_or_default().trim();
            if !is_token(name) {
                return Err("malformed extension name");
            }
            let mut params = Vec::new();
            for p in parts {
                let p = p.trim();
                let (k, v) = match p.split_once('=') {
                    Some((k, v)) => (k.trim(), Some(unquote(v.trim())?)),
                    None => (p, None),
                };
                if !is_token(k) {
                    return Err("malformed extension parameter");
                }
                params.push((k.to_ascii_lowercase(), v));
            }
            out.push(ExtensionOffer {
                name: name.to_ascii_lowercase(),
                params,
            });
        }
    }
    Ok(out)
}

fn split_outside_quotes(s: &str, sep: char) -> Vec<&str> {
    let mut parts = Vec::new();
    let mut in_quotes = false;
    let mut escaped = false;
    let mut start = 0;
    for (i, c) in s.char_indices() {
        if escaped {
            escaped = false;
        } else if in_quotes && c == '\\' {
            escaped = true;
        } else if c == '"' {
            in_quotes = !in_quotes;
        } else if c == sep && !in_quotes {
            parts.push(&s[start..i]);
            start = i + 1;
        }
    }
    parts.push(&s[start..]);
    parts
}

fn unquote(v: &str) -> Result<String, &'static str> {
    let inner = if let Some(q) = v.strip_prefix('"') {
        let q = q.strip_suffix('"').ok_or("unterminated quoted string")?;
        q.replace('\\', "")
    } else {
        v.to_string()
    };
    // RFC 7692 §7.1: after unquoting, a value must still be a token.
    if !is_token(&inner) {
        return Err("malformed extension parameter value");
    }
    Ok(inner)
}

/// RFC 9110 §5.6.2 token characters.
pub(crate) fn is_token(s: &str) -> bool {
    !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc_1_3_accept_key() {
        assert_eq!(
            accept_key(b"dGhlIHNhbXBsZSBub25jZQ=="),
            "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="
        );
    }

    #[test]
    fn extension_list_parses_names_params_and_quotes() {
        let h = Headers(vec![
            (
                "Sec-WebSocket-Extensions".into(),
                b"permessage-deflate; client_max_window_bits, permessage-deflate; server_max_window_bits=\"10\"".to_vec(),
            ),
            ("sec-websocket-extensions".into(), b"x-foo".to_vec()),
        ]);
        let exts = parse_extensions(&h).unwrap();
        assert_eq!(exts.len(), 3);
        assert_eq!(
            exts[0].params,
            vec![("client_max_window_bits".into(), None)]
        );
        assert_eq!(
            exts[1].params,
            vec![("server_max_window_bits".into(), Some("10".into()))]
        );
        assert_eq!(exts[2].name, "x-foo");
    }

    #[test]
    fn malformed_extension_list_is_an_error() {
        for bad in [
            "permessage-deflate; a=\"1",
            "; x",
            "a b",
            "permessage-deflate; x=\"a b\"",
        ] {
            let h = Headers(vec![(
                "Sec-WebSocket-Extensions".into(),
                bad.as_bytes().to_vec(),
            )]);
            assert!(parse_extensions(&h).is_err(), "{bad}");
        }
    }

    #[test]
    fn token_lists_are_case_insensitive_and_span_headers() {
        let h = Headers(vec![
            ("Connection".into(), b"keep-alive, Upgrade".to_vec()),
            ("connection".into(), b"x".to_vec()),
        ]);
        assert!(h.has_token("CONNECTION", "upgrade"));
        assert!(h.has_token("connection", "x"));
        assert!(!h.has_token("connection", "close"));
    }
}
