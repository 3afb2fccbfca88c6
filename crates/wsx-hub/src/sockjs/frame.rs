//! SockJS frames and their encodings per transport, pure: `o` (open), `h` (heartbeat),
//! `a[...]` (messages, a JSON array of strings), `c[code,"reason"]` (close); each
//! transport wraps a frame its own way (a line, an event-stream event, a script tag, a
//! JSONP call).

use std::fmt::Write as _;

/// A SockJS frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Frame {
    /// The session is open.
    Open,
    /// Nothing happened for a while.
    Heartbeat,
    /// Messages.
    Messages(Vec<String>),
    /// The session is closed.
    Close(u16, String),
}

impl Frame {
    /// The frame's text.
    pub fn encode(&self) -> String {
        match self {
            Frame::Open => "o".into(),
            Frame::Heartbeat => "h".into(),
            Frame::Messages(m) => {
                let mut s = String::from("a[");
                for (i, msg) in m.iter().enumerate() {
                    if i > 0 {
                        s.push(',');
                    }
                    quote(msg, &mut s);
                }
                s.push(']');
                s
            }
            Frame::Close(code, reason) => {
                let mut s = format!("c[{code},");
                quote(reason, &mut s);
                s.push(']');
                s
            }
        }
    }
}

/// Whether the SockJS protocol asks the server to escape `c` (some browsers mangle
/// these characters in transit).
fn escaped_by_server(c: char) -> bool {
    matches!(c as u32,
        0x00..=0x1f | 0x200c..=0x200f | 0x2028..=0x202f | 0x2060..=0x206f | 0xfff0..=0xffff)
}

/// Append `s` as a JSON string, with the protocol's escapes (and `<`, so that a frame
/// inside a script element cannot end it).
pub fn quote(s: &str, out: &mut String) {
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '\u{8}' => out.push_str("\\b"),
            '\u{c}' => out.push_str("\\f"),
            '<' => out.push_str("\\u003c"),
            c if escaped_by_server(c) => {
                let _ = write!(out, "\\u{:04x}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.push('"');
}

/// A frame as a JavaScript string literal (for htmlfile and JSONP).
pub fn js_string(frame: &str) -> String {
    let mut s = String::with_capacity(frame.len() + 8);
    quote(frame, &mut s);
    s
}

/// Parse what a client sent: a JSON array of strings (or, over WebSocket, one string).
/// `None`: broken JSON.
pub fn parse_messages(body: &str) -> Option<Vec<String>> {
    let body = body.trim();
    if body.starts_with('"') {
        return serde_json::from_str::<String>(body).ok().map(|m| vec![m]);
    }
    serde_json::from_str::<Vec<String>>(body).ok()
}

/// Whether a JSONP callback name is acceptable.
pub fn valid_callback(c: &str) -> bool {
    !c.is_empty()
        && c.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'.')
}

/// Decode `%XX` and `+` (form encoding).
pub fn percent_decode(s: &str, plus_is_space: bool) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'%' if i + 2 < b.len() => {
                let hex = |c: u8| (c as char).to_digit(16);
                match (hex(b[i + 1]), hex(b[i + 2])) {
                    (Some(h), Some(l)) => {
                        out.push((h * 16 + l) as u8);
                        i += 3;
                        continue;
                    }
                    _ => out.push(b'%'),
                }
            }
            b'+' if plus_is_space => out.push(b' '),
            c => out.push(c),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The value of `key` in a query or form string, decoded.
pub fn param(query: &str, key: &str, form: bool) -> Option<String> {
    query.split('&').find_map(|pair| {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        (percent_decode(k, form) == key).then(|| percent_decode(v, form))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_encode_with_the_protocols_escapes() {
        assert_eq!(Frame::Open.encode(), "o");
        assert_eq!(
            Frame::Messages(vec!["a".into(), "  \u{0}\n\r ".into()]).encode(),
            r#"a["a","  \u0000\n\r "]"#
        );
        assert_eq!(
            Frame::Close(3000, "Go away!".into()).encode(),
            r#"c[3000,"Go away!"]"#
        );
        assert_eq!(
            Frame::Messages(vec!["\u{200c}\u{2028}\u{fff0}</script>".into()]).encode(),
            r#"a["\u200c\u2028\ufff0\u003c/script>"]"#
        );
    }

    #[test]
    fn client_messages_parse_or_are_broken() {
        assert_eq!(
            parse_messages(r#"["a","b"]"#),
            Some(vec!["a".into(), "b".into()])
        );
        assert_eq!(parse_messages(r#""a""#), Some(vec!["a".into()]));
        assert_eq!(parse_messages("[]"), Some(vec![]));
        assert_eq!(parse_messages(r#"["a"#), None);
        assert_eq!(parse_messages("[1]"), None);
    }

    #[test]
    fn callbacks_and_params() {
        assert!(valid_callback("callback"));
        assert!(valid_callback("a.b_c1"));
        for bad in ["", " ", "*", "abc(", "abc%28"] {
            assert!(!valid_callback(bad), "{bad}");
        }
        assert_eq!(
            param("c=%63allback&t=1", "c", false).as_deref(),
            Some("callback")
        );
        assert_eq!(
            param("d=%5B%22x%22%5D", "d", true).as_deref(),
            Some(r#"["x"]"#)
        );
        assert_eq!(param("p=p", "d", true), None);
        assert_eq!(percent_decode("%2", false), "%2");
    }
}
