//! Server and client settings.

use std::borrow::Cow;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use wsx_proto::handshake::client::ClientHandshakeConfig;
use wsx_proto::handshake::server::{OriginPolicy, ServerHandshakeConfig};
use wsx_proto::{Config, DeflateConfig};

/// Settings shared by both roles once the connection is open.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct IoConfig {
    /// `send().await` waits while more than this many bytes are queued for writing;
    /// `try_send` returns `Full`. Default: 128 KiB. Bounds each connection's write memory
    /// (one message may exceed it: it is queued whole, then the next send waits).
    pub write_buffer_size: usize,
    /// Room reserved for each read beyond what the frame in progress still needs (so
    /// the read that completes it comes back short). Default: 4 KiB.
    pub read_size: usize,
    /// The most room reserved for one read. Default: 256 KiB.
    pub max_read_size: usize,
}

impl Default for IoConfig {
    fn default() -> Self {
        IoConfig {
            write_buffer_size: 128 * 1024,
            read_size: 4 * 1024,
            max_read_size: 256 * 1024,
        }
    }
}

/// Everything [`accept`](crate::accept) needs.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct ServerConfig {
    /// Origin policy, subprotocols, permessage-deflate, header limits.
    pub handshake: ServerHandshakeConfig,
    /// Frame and message limits, keepalive, idle and close timeouts.
    pub protocol: Config,
    /// Buffers and backpressure.
    pub io: IoConfig,
    /// The opening handshake must complete within this. Default: 10 s.
    pub handshake_timeout: Duration,
    /// Most open connections that keep their own permessage-deflate compression context
    /// between messages (zlib's state, ~310 KiB each once it compresses). Beyond it, new
    /// connections get `server_no_context_takeover` in the answer: they compress with no
    /// state of their own, and a fan-out compresses each message once for all of them
    /// ([`SharedFrame`](crate::SharedFrame)). Counted across clones of this config.
    /// Default: 512 (~160 MiB at most).
    pub max_deflate_contexts: usize,
    deflate_contexts: Arc<AtomicUsize>,
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            handshake: ServerHandshakeConfig::default(),
            protocol: Config::default(),
            io: IoConfig::default(),
            handshake_timeout: Duration::from_secs(10),
            max_deflate_contexts: 512,
            deflate_contexts: Arc::new(AtomicUsize::new(0)),
        }
    }
}

/// One connection's place among [`ServerConfig::max_deflate_contexts`], given back
/// when the connection goes.
#[derive(Debug)]
pub(crate) struct DeflateContextSlot(Arc<AtomicUsize>);

impl Drop for DeflateContextSlot {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

impl ServerConfig {
    /// Set the origin policy.
    pub fn origin(mut self, policy: OriginPolicy) -> Self {
        self.handshake.origin = policy;
        self
    }
    /// Set the subprotocols, most preferred first.
    pub fn subprotocols<I: IntoIterator<Item = S>, S: Into<String>>(mut self, protos: I) -> Self {
        self.handshake.subprotocols = protos.into_iter().map(Into::into).collect();
        self
    }
    /// Accept permessage-deflate with these settings (`None`: refuse it).
    pub fn deflate(mut self, deflate: Option<DeflateConfig>) -> Self {
        self.handshake.deflate = deflate;
        self
    }
    /// Set the protocol settings.
    pub fn protocol(mut self, protocol: Config) -> Self {
        self.protocol = protocol;
        self
    }
    /// Set the buffer settings.
    pub fn io(mut self, io: IoConfig) -> Self {
        self.io = io;
        self
    }
    /// Set the handshake timeout.
    pub fn handshake_timeout(mut self, timeout: Duration) -> Self {
        self.handshake_timeout = timeout;
        self
    }
    /// Set [`max_deflate_contexts`](Self::max_deflate_contexts).
    pub fn max_deflate_contexts(mut self, n: usize) -> Self {
        self.max_deflate_contexts = n;
        self
    }
    /// Open connections of this server that keep their own compression context.
    pub fn deflate_contexts(&self) -> usize {
        self.deflate_contexts.load(Ordering::Relaxed)
    }

    /// The handshake settings for the next connection: at the context limit, deflate
    /// without server context takeover.
    pub(crate) fn negotiation(&self) -> Cow<'_, ServerHandshakeConfig> {
        match &self.handshake.deflate {
            Some(d)
                if !d.server_no_context_takeover
                    && self.deflate_contexts() >= self.max_deflate_contexts =>
            {
                let mut h = self.handshake.clone();
                h.deflate = Some(d.clone().server_no_context_takeover(true));
                Cow::Owned(h)
            }
            _ => Cow::Borrowed(&self.handshake),
        }
    }

    /// A slot for a connection that negotiated `deflate`, if it keeps a context.
    pub(crate) fn deflate_context_slot(
        &self,
        deflate: Option<&wsx_proto::DeflateParams>,
    ) -> Option<DeflateContextSlot> {
        match deflate {
            Some(p) if !p.server_no_context_takeover => {
                self.deflate_contexts.fetch_add(1, Ordering::Relaxed);
                Some(DeflateContextSlot(self.deflate_contexts.clone()))
            }
            _ => None,
        }
    }
}

/// Everything [`connect`](crate::connect) needs.
#[derive(Clone)]
#[non_exhaustive]
pub struct ClientConfig {
    /// Subprotocols, extra headers, Origin, permessage-deflate offer.
    pub handshake: ClientHandshakeConfig,
    /// Frame and message limits, keepalive, idle and close timeouts.
    pub protocol: Config,
    /// Buffers and backpressure.
    pub io: IoConfig,
    /// The TCP connection (and TLS handshake) must complete within this. Default: 10 s.
    pub connect_timeout: Duration,
    /// The opening handshake must complete within this. Default: 10 s.
    pub handshake_timeout: Duration,
    /// CA certificates (DER) trusted for wss:// in addition to the OS root store.
    #[cfg(feature = "tls")]
    pub ca_certs: Vec<rustls_pki_types::CertificateDer<'static>>,
    /// A complete rustls configuration, used as it is instead of the one built from the
    /// OS roots and `ca_certs`.
    #[cfg(feature = "tls")]
    pub tls: Option<std::sync::Arc<rustls::ClientConfig>>,
    /// Accept any server certificate. Breaks TLS's authentication: for testing only.
    #[cfg(feature = "tls")]
    pub danger_accept_invalid_certs: bool,
}

impl std::fmt::Debug for ClientConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientConfig")
            .field("handshake", &self.handshake)
            .field("protocol", &self.protocol)
            .field("io", &self.io)
            .field("connect_timeout", &self.connect_timeout)
            .field("handshake_timeout", &self.handshake_timeout)
            .finish_non_exhaustive()
    }
}

impl Default for ClientConfig {
    fn default() -> Self {
        ClientConfig {
            handshake: ClientHandshakeConfig::default(),
            protocol: Config::default(),
            io: IoConfig::default(),
            connect_timeout: Duration::from_secs(10),
            handshake_timeout: Duration::from_secs(10),
            #[cfg(feature = "tls")]
            ca_certs: Vec::new(),
            #[cfg(feature = "tls")]
            tls: None,
            #[cfg(feature = "tls")]
            danger_accept_invalid_certs: false,
        }
    }
}

impl ClientConfig {
    /// Offer these subprotocols, in order.
    pub fn subprotocols<I: IntoIterator<Item = S>, S: Into<String>>(mut self, protos: I) -> Self {
        self.handshake.subprotocols = protos.into_iter().map(Into::into).collect();
        self
    }
    /// Add a request header (e.g. `Authorization`).
    pub fn header(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        self.handshake.headers.push((name.into(), value.into()));
        self
    }
    /// Send an `Origin` header.
    pub fn origin(mut self, origin: impl Into<String>) -> Self {
        self.handshake.origin = Some(origin.into());
        self
    }
    /// Offer permessage-deflate with these settings.
    pub fn deflate(mut self, deflate: Option<DeflateConfig>) -> Self {
        self.handshake.deflate = deflate;
        self
    }
    /// Set the protocol settings.
    pub fn protocol(mut self, protocol: Config) -> Self {
        self.protocol = protocol;
        self
    }
    /// Set the buffer settings.
    pub fn io(mut self, io: IoConfig) -> Self {
        self.io = io;
        self
    }
    /// Trust this CA certificate (DER) for wss://.
    #[cfg(feature = "tls")]
    pub fn ca_cert(mut self, der: rustls_pki_types::CertificateDer<'static>) -> Self {
        self.ca_certs.push(der);
        self
    }
}
