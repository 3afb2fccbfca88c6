//! The client side: connect to a `ws://` or `wss://` URL, or run the client handshake
//! over any stream.

use bytes::BytesMut;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use wsx_proto::handshake::client::{ClientAccepted, ClientHandshake};
use wsx_proto::{HandshakeError, Role, TimeoutKind};

use crate::config::ClientConfig;
use crate::error::{Error, Result};
use crate::stream::MaybeTlsStream;
use crate::websocket::WebSocket;

/// A parsed `ws://` / `wss://` URL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WsUrl {
    /// `wss://`.
    pub tls: bool,
    /// The host name or IP address (IPv6 without brackets).
    pub host: String,
    /// The port (80 / 443 when not given).
    pub port: u16,
    /// The request target: path and query, at least `/`.
    pub path: String,
}

impl WsUrl {
    /// Parse a URL. `http://` and `https://` are accepted as `ws://` and `wss://`.
    pub fn parse(url: &str) -> Result<WsUrl> {
        let bad = |why: &str| Error::InvalidUrl(format!("{url}: {why}"));
        let (scheme, rest) = url.split_once("://").ok_or_else(|| bad("no scheme"))?;
        let tls = match scheme.to_ascii_lowercase().as_str() {
            "ws" | "http" => false,
            "wss" | "https" => true,
            _ => return Err(bad("scheme must be ws or wss")),
        };
        let (authority, path) = match rest.find(['/', '?']) {
            Some(i) => (&rest[..i], &rest[i..]),
            None => (rest, "/"),
        };
        let path = if path.starts_with('?') {
            format!("/{path}")
        } else {
            path.split('#').next().unwrap_or("/").to_string()
        };
        if authority.contains('@') {
            return Err(bad("user info is not supported"));
        }
        let default_port = if tls { 443 } else { 80 };
        let (host, port) = if let Some(v6) = authority.strip_prefix('[') {
            let (h, after) = v6.split_once(']').ok_or_else(|| bad("unclosed ["))?;
            let port = match after.strip_prefix(':') {
                Some(p) => p.parse().map_err(|_| bad("bad port"))?,
                None if after.is_empty() => default_port,
                None => return Err(bad("junk after ]")),
            };
            (h.to_string(), port)
        } else {
            match authority.rsplit_once(':') {
                Some((h, p)) => (h.to_string(), p.parse().map_err(|_| bad("bad port"))?),
                None => (authority.to_string(), default_port),
            }
        };
        if host.is_empty() {
            return Err(bad("no host"));
        }
        Ok(WsUrl {
            tls,
            host,
            port,
            path,
        })
    }

    /// The `Host` header value: the port only when it is not the default.
    pub fn host_header(&self) -> String {
        let host = if self.host.contains(':') {
            format!("[{}]", self.host)
        } else {
            self.host.clone()
        };
        if self.port == if self.tls { 443 } else { 80 } {
            host
        } else {
            format!("{host}:{}", self.port)
        }
    }
}

/// Connect to `url` (`ws://` or `wss://`) and run the opening handshake.
///
/// A server that answers with anything but 101 gives
/// `Error::Handshake(HandshakeError::Refused { status, reason: body })`.
///
/// ```no_run
/// # async fn run() -> wsx::Result<()> {
/// use wsx::{ClientConfig, Message};
///
/// let cfg = ClientConfig::default().subprotocols(["chat"]);
/// let (mut ws, accepted) = wsx::connect("ws://127.0.0.1:3000/echo", &cfg).await?;
/// println!("subprotocol: {:?}", accepted.subprotocol);
/// ws.send(Message::text("hello")).await?;
/// if let Some(reply) = ws.recv().await {
///     println!("{:?}", reply?);
/// }
/// ws.close(wsx::CloseCode::NORMAL, "bye").await?;
/// # Ok(()) }
/// ```
pub async fn connect(
    url: &str,
    cfg: &ClientConfig,
) -> Result<(WebSocket<MaybeTlsStream>, ClientAccepted)> {
    let url = WsUrl::parse(url)?;
    let dial = async {
        let tcp = TcpStream::connect((url.host.as_str(), url.port)).await?;
        tcp.set_nodelay(true)?;
        if url.tls {
            #[cfg(feature = "tls")]
            {
                let tls = crate::tls::connect(tcp, &url.host, cfg).await?;
                return Ok::<_, Error>(MaybeTlsStream::Tls(Box::new(tls)));
            }
            #[cfg(not(feature = "tls"))]
            return Err(Error::InvalidUrl("wss:// needs the `tls` feature".into()));
        }
        Ok(MaybeTlsStream::Plain(tcp))
    };
    let stream = tokio::time::timeout(cfg.connect_timeout, dial)
        .await
        .map_err(|_| {
            Error::Io(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                "connect timed out",
            ))
        })??;
    client_handshake(stream, &url.host_header(), &url.path, cfg).await
}

/// Run the client's opening handshake over an established stream. `host` is the `Host`
/// header value, `path` the request target.
pub async fn client_handshake<S>(
    mut io: S,
    host: &str,
    path: &str,
    cfg: &ClientConfig,
) -> Result<(WebSocket<S>, ClientAccepted)>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let (hs, request) = ClientHandshake::new(host, path, &cfg.handshake);
    let exchange = async {
        io.write_all(&request).await?;
        io.flush().await?;
        let mut buf = BytesMut::with_capacity(1024);
        let mut eof = false;
        loop {
            if let Some(done) = hs.parse_response(&buf, eof).map_err(Error::Handshake)? {
                let (accepted, used) = done;
                return Ok((accepted, buf.split_off(used)));
            }
            if eof {
                return Err(Error::Handshake(HandshakeError::Malformed(
                    "connection closed during the handshake",
                )));
            }
            eof = io.read_buf(&mut buf).await? == 0;
        }
    };
    let (accepted, leftover) = tokio::time::timeout(cfg.handshake_timeout, exchange)
        .await
        .map_err(|_| Error::Timeout(TimeoutKind::Handshake))??;
    let deflate = accepted.deflate.zip(cfg.handshake.deflate.as_ref());
    Ok((
        WebSocket::after_handshake(
            io,
            Role::Client,
            &cfg.protocol,
            deflate,
            &leftover,
            cfg.io.clone(),
        ),
        accepted,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_urls() {
        let u = WsUrl::parse("ws://127.0.0.1:9001/runCase?case=1&agent=wsx").unwrap();
        assert_eq!(
            (u.tls, u.host.as_str(), u.port, u.path.as_str()),
            (false, "127.0.0.1", 9001, "/runCase?case=1&agent=wsx")
        );
        assert_eq!(u.host_header(), "127.0.0.1:9001");
        let u = WsUrl::parse("wss://example.com").unwrap();
        assert_eq!(
            (u.tls, u.port, u.path.as_str(), u.host_header()),
            (true, 443, "/", "example.com".to_string())
        );
        let u = WsUrl::parse("ws://[::1]:8080?x=1").unwrap();
        assert_eq!(
            (u.host.as_str(), u.port, u.path.as_str(), u.host_header()),
            ("::1", 8080, "/?x=1", "[::1]:8080".to_string())
        );
        for bad in ["example.com", "ftp://x", "ws://", "ws://h:x", "ws://u@h/"] {
            assert!(WsUrl::parse(bad).is_err(), "{bad}");
        }
    }
}
