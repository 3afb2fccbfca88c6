//! Test helpers: a client core and a server core joined by in-memory buffers, with a
//! virtual clock (in the manner of quinn's `Pair`).
#![allow(dead_code, clippy::unwrap_used)]

use std::time::{Duration, Instant};

use bytes::{Buf, Bytes};
use wsx_proto::handshake::{client, server};
use wsx_proto::{Config, Connection, DeflateConfig, Error, Event, Role};

/// Everything one side saw during a `drive`.
#[derive(Debug, Default)]
pub struct Seen {
    pub events: Vec<Event>,
    pub errors: Vec<Error>,
}

impl Seen {
    /// Poll `conn` until it needs input, recording events and the first error.
    pub fn drain(&mut self, conn: &mut Connection) {
        loop {
            match conn.poll_event() {
                Ok(Some(ev)) => self.events.push(ev),
                Ok(None) => break,
                Err(e) => {
                    self.errors.push(e);
                    break;
                }
            }
        }
    }
}

pub struct Pair {
    pub client: Connection,
    pub server: Connection,
    pub now: Instant,
    /// Bytes each side wrote that the other has not read yet.
    pub to_server: Vec<u8>,
    pub to_client: Vec<u8>,
    /// Deliver bytes in pieces of at most this size (to exercise incremental parsing).
    pub chunk: usize,
}

#[derive(Default)]
pub struct PairConfig {
    pub client: Config,
    pub server: Config,
    pub client_deflate: Option<DeflateConfig>,
    pub server_deflate: Option<DeflateConfig>,
}

impl Pair {
    pub fn new() -> Pair {
        Pair::with(PairConfig::default())
    }

    /// Run the opening handshake through both handshake modules, then build the cores
    /// with whatever was negotiated.
    pub fn with(cfg: PairConfig) -> Pair {
        let now = Instant::now();
        let ccfg = client::ClientHandshakeConfig::default().deflate(cfg.client_deflate.clone());
        let (hs, request) = client::ClientHandshake::new("localhost:9001", "/", &ccfg);
        let scfg = server::ServerHandshakeConfig::default().deflate(cfg.server_deflate.clone());
        let (req, used) = server::parse_request(&request, &scfg).unwrap().unwrap();
        assert_eq!(used, request.len());
        let accepted = server::respond(&req, &scfg).unwrap();
        let (client_accepted, used) = hs
            .parse_response(&accepted.response, false)
            .unwrap()
            .unwrap();
        assert_eq!(used, accepted.response.len());
        assert_eq!(accepted.deflate, client_accepted.deflate);
        let mut client = Connection::new(Role::Client, cfg.client, now);
        let mut server = Connection::new(Role::Server, cfg.server, now);
        if let Some(params) = accepted.deflate {
            server.enable_deflate(params, cfg.server_deflate.as_ref().unwrap());
            client.enable_deflate(params, cfg.client_deflate.as_ref().unwrap());
        }
        Pair {
            client,
            server,
            now,
            to_server: Vec::new(),
            to_client: Vec::new(),
            chunk: usize::MAX,
        }
    }

    fn take_output(conn: &mut Connection, into: &mut Vec<u8>) -> bool {
        let out = conn.output();
        let mut any = false;
        while out.has_remaining() {
            let c = out.chunk();
            into.extend_from_slice(c);
            let n = c.len();
            out.advance(n);
            any = true;
        }
        any
    }

    fn feed(
        conn: &mut Connection,
        now: Instant,
        bytes: &mut Vec<u8>,
        chunk: usize,
        seen: &mut Seen,
    ) {
        let data = std::mem::take(bytes);
        for piece in data.chunks(chunk.max(1)) {
            if !conn.wants_input() {
                break;
            }
            conn.handle_input(now, piece);
            seen.drain(conn);
        }
        // A pending timeout error surfaces without input.
        if let Err(e) = conn.poll_event() {
            seen.errors.push(e);
        }
    }

    /// Move bytes both ways until neither side has anything to send.
    pub fn drive(&mut self) -> (Seen, Seen) {
        let mut c = Seen::default();
        let mut s = Seen::default();
        for _ in 0..1000 {
            let a = Self::take_output(&mut self.client, &mut self.to_server);
            let b = Self::take_output(&mut self.server, &mut self.to_client);
            if !a && !b && self.to_server.is_empty() && self.to_client.is_empty() {
                break;
            }
            Self::feed(
                &mut self.server,
                self.now,
                &mut self.to_server,
                self.chunk,
                &mut s,
            );
            Self::feed(
                &mut self.client,
                self.now,
                &mut self.to_client,
                self.chunk,
                &mut c,
            );
        }
        (c, s)
    }

    /// Advance the virtual clock, firing each side's timers that fall due (in order).
    pub fn advance(&mut self, by: Duration) -> (Seen, Seen) {
        let end = self.now + by;
        let mut c = Seen::default();
        let mut s = Seen::default();
        loop {
            let next = [self.client.poll_timeout(), self.server.poll_timeout()]
                .into_iter()
                .flatten()
                .filter(|t| *t <= end)
                .min();
            let Some(t) = next else { break };
            self.now = t;
            self.client.handle_timeout(t);
            self.server.handle_timeout(t);
            for (conn, seen) in [(&mut self.client, &mut c), (&mut self.server, &mut s)] {
                if let Err(e) = conn.poll_event() {
                    seen.errors.push(e);
                }
            }
        }
        self.now = end;
        (c, s)
    }

    /// Drain one side's output without delivering it (a peer that stopped reading).
    pub fn drop_output(conn: &mut Connection) -> Bytes {
        let n = conn.output_len();
        conn.output().copy_to_bytes(n)
    }
}

/// Encode a raw frame as a peer would (for rule tests that need bad frames).
pub fn raw_frame(b0: u8, payload: &[u8], mask: Option<[u8; 4]>) -> Vec<u8> {
    let mut v = vec![b0];
    let mbit = if mask.is_some() { 0x80 } else { 0 };
    match payload.len() {
        n if n < 126 => v.push(mbit | n as u8),
        n if n <= 65535 => {
            v.push(mbit | 126);
            v.extend_from_slice(&(n as u16).to_be_bytes());
        }
        n => {
            v.push(mbit | 127);
            v.extend_from_slice(&(n as u64).to_be_bytes());
        }
    }
    match mask {
        Some(k) => {
            v.extend_from_slice(&k);
            v.extend(payload.iter().enumerate().map(|(i, b)| b ^ k[i % 4]));
        }
        None => v.extend_from_slice(payload),
    }
    v
}

/// Feed raw bytes to a core and collect what it says.
pub fn feed_raw(conn: &mut Connection, bytes: &[u8]) -> Seen {
    let mut seen = Seen::default();
    conn.handle_input(Instant::now(), bytes);
    seen.drain(conn);
    seen
}

/// Parse the frames a core wrote: (first byte, unmasked payload) each.
pub fn written_frames(conn: &mut Connection) -> Vec<(u8, Vec<u8>)> {
    let bytes = Pair::drop_output(conn);
    let mut out = Vec::new();
    let mut rest = &bytes[..];
    while !rest.is_empty() {
        let (h, n) = wsx_proto::frame::FrameHeader::parse(rest).unwrap().unwrap();
        let len = h.payload_len as usize;
        let mut p = rest[n..n + len].to_vec();
        if let Some(k) = h.mask {
            wsx_proto::mask::apply_mask(&mut p, k, 0);
        }
        out.push((rest[0], p));
        rest = &rest[n + len..];
    }
    out
}
