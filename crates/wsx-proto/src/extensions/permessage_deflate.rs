//! permessage-deflate (RFC 7692): negotiation in both roles and the message codec.
//!
//! Compression uses raw deflate with a sync flush per message; the trailing
//! `00 00 ff ff` is removed on send and restored on receive (§7.2.1, §7.2.2). zlib's
//! deflate cannot use a 256-byte window, so when the peer limits our window to 8 bits we
//! send stored (uncompressed) deflate blocks, which use no window at all and so honour
//! any limit.

use bytes::Bytes;
use flate2::{Compress, Compression, Decompress, FlushCompress, FlushDecompress, Status};

use crate::error::{CapacityError, CapacityKind, Error, ProtocolError};
use crate::handshake::ExtensionOffer;

/// The extension token.
pub const NAME: &str = "permessage-deflate";

/// The trailer a sync flush ends with (RFC 7692 §7.2.1).
const TRAILER: [u8; 4] = [0x00, 0x00, 0xff, 0xff];

/// What this endpoint asks for and accepts. The same struct serves both roles: a client
/// puts it in its offer, a server uses it to answer offers.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct DeflateConfig {
    /// Ask that the server reset its compression context after each message
    /// (saves the server's 32 KiB-per-connection window between messages, costs ratio).
    /// Default: false.
    pub server_no_context_takeover: bool,
    /// Ask that the client reset its compression context after each message. Default: false.
    pub client_no_context_takeover: bool,
    /// The largest LZ77 window the server may use, as log2 (8..=15). Default: 15.
    pub server_max_window_bits: u8,
    /// The largest LZ77 window the client may use, as log2 (8..=15). Default: 15.
    pub client_max_window_bits: u8,
    /// The compression level, 0 (none) to 9 (best). Default: 1 (fastest that compresses).
    pub level: u32,
    /// Messages shorter than this many bytes are sent uncompressed. Default: 64.
    pub threshold: usize,
}

impl Default for DeflateConfig {
    fn default() -> Self {
        DeflateConfig {
            server_no_context_takeover: false,
            client_no_context_takeover: false,
            server_max_window_bits: 15,
            client_max_window_bits: 15,
            level: 1,
            threshold: 64,
        }
    }
}

impl DeflateConfig {
    /// Set `server_no_context_takeover`.
    pub fn server_no_context_takeover(mut self, on: bool) -> Self {
        self.server_no_context_takeover = on;
        self
    }
    /// Set `client_no_context_takeover`.
    pub fn client_no_context_takeover(mut self, on: bool) -> Self {
        self.client_no_context_takeover = on;
        self
    }
    /// Set `server_max_window_bits` (clamped to 8..=15).
    pub fn server_max_window_bits(mut self, bits: u8) -> Self {
        self.server_max_window_bits = bits.clamp(8, 15);
        self
    }
    /// Set `client_max_window_bits` (clamped to 8..=15).
    pub fn client_max_window_bits(mut self, bits: u8) -> Self {
        self.client_max_window_bits = bits.clamp(8, 15);
        self
    }
    /// Set the compression level (clamped to 0..=9).
    pub fn level(mut self, level: u32) -> Self {
        self.level = level.min(9);
        self
    }
    /// Set the size below which messages are sent uncompressed.
    pub fn threshold(mut self, bytes: usize) -> Self {
        self.threshold = bytes;
        self
    }
}

/// The negotiated parameters, as both ends agreed them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DeflateParams {
    /// The server resets its context after each message.
    pub server_no_context_takeover: bool,
    /// The client resets its context after each message.
    pub client_no_context_takeover: bool,
    /// The server's window, log2.
    pub server_max_window_bits: u8,
    /// The client's window, log2.
    pub client_max_window_bits: u8,
}

/// The parameters of one offer, each at most once.
#[derive(Default)]
struct Offer {
    snct: bool,
    cnct: bool,
    smwb: Option<u8>,
    /// `Some(None)`: present without a value.
    cmwb: Option<Option<u8>>,
}

fn window_bits(v: &str) -> Option<u8> {
    // RFC 7692 §7.1.2: a decimal integer 8..15 with no leading zeros.
    if v.starts_with('0') {
        return None;
    }
    v.parse::<u8>().ok().filter(|b| (8..=15).contains(b))
}

/// Parse one extension element's parameters. Unknown, duplicate or ill-valued
/// parameters make the whole element invalid (§7: "decline the offer").
fn parse_params(ext: &ExtensionOffer) -> Option<Offer> {
    let mut o = Offer::default();
    let mut seen = [false; 4];
    for (k, v) in &ext.params {
        let idx = match k.as_str() {
            "server_no_context_takeover" => 0,
            "client_no_context_takeover" => 1,
            "server_max_window_bits" => 2,
            "client_max_window_bits" => 3,
            _ => return None,
        };
        if std::mem::replace(&mut seen[idx], true) {
            return None;
        }
        match (idx, v) {
            (0, None) => o.snct = true,
            (1, None) => o.cnct = true,
            (2, Some(v)) => o.smwb = Some(window_bits(v)?),
            (3, None) => o.cmwb = Some(None),
            (3, Some(v)) => o.cmwb = Some(Some(window_bits(v)?)),
            _ => return None,
        }
    }
    Some(o)
}

/// Server side: answer the client's offers (in the client's order of preference). Returns
/// the accepted parameters and the response header value, or `None` to decline them all.
pub fn server_negotiate(
    offers: &[ExtensionOffer],
    cfg: &DeflateConfig,
) -> Option<(DeflateParams, String)> {
    for ext in offers.iter().filter(|e| e.name == NAME) {
        let Some(o) = parse_params(ext) else {
            continue;
        };
        let snct = o.snct || cfg.server_no_context_takeover;
        let cnct = o.cnct || cfg.client_no_context_takeover;
        let smwb = o.smwb.unwrap_or(15).min(cfg.server_max_window_bits);
        // The client may only be limited if it said it supports the parameter.
        let cmwb = match o.cmwb {
            Some(v) => v.unwrap_or(15).min(cfg.client_max_window_bits),
            None => 15,
        };
        let mut resp = String::from(NAME);
        if snct {
            resp.push_str("; server_no_context_takeover");
        }
        if cnct {
            resp.push_str("; client_no_context_takeover");
        }
        if o.smwb.is_some() || smwb < 15 {
            resp.push_str(&format!("; server_max_window_bits={smwb}"));
        }
        if matches!(o.cmwb, Some(Some(_))) || cmwb < 15 {
            resp.push_str(&format!("; client_max_window_bits={cmwb}"));
        }
        let params = DeflateParams {
            server_no_context_takeover: snct,
            client_no_context_takeover: cnct,
            server_max_window_bits: smwb,
            client_max_window_bits: cmwb,
        };
        return Some((params, resp));
    }
    None
}

/// Client side: the offer header value for a configuration. `client_max_window_bits` is
/// always offered (with a value when limited), telling the server we support it.
pub fn client_offer(cfg: &DeflateConfig) -> String {
    let mut s = String::from(NAME);
    if cfg.server_no_context_takeover {
        s.push_str("; server_no_context_takeover");
    }
    if cfg.client_no_context_takeover {
        s.push_str("; client_no_context_takeover");
    }
    if cfg.server_max_window_bits < 15 {
        s.push_str(&format!(
            "; server_max_window_bits={}",
            cfg.server_max_window_bits
        ));
    }
    if cfg.client_max_window_bits < 15 {
        s.push_str(&format!(
            "; client_max_window_bits={}",
            cfg.client_max_window_bits
        ));
    } else {
        s.push_str("; client_max_window_bits");
    }
    s
}

/// Client side: check the server's accepted parameters against what we offered
/// (RFC 7692 §7.1: the response never holds what the offer did not allow).
pub fn client_accept(
    ext: &ExtensionOffer,
    cfg: &DeflateConfig,
) -> Result<DeflateParams, &'static str> {
    let o = parse_params(ext).ok_or("invalid permessage-deflate parameters in response")?;
    if cfg.server_no_context_takeover && !o.snct {
        return Err("server ignored server_no_context_takeover");
    }
    let smwb = match o.smwb {
        Some(b) if b > cfg.server_max_window_bits => {
            return Err("server_max_window_bits above the offered value")
        }
        Some(b) => b,
        None if cfg.server_max_window_bits < 15 => {
            return Err("server ignored server_max_window_bits")
        }
        None => 15,
    };
    let cmwb = match o.cmwb {
        Some(None) => return Err("client_max_window_bits without a value in response"),
        Some(Some(b)) if b > cfg.client_max_window_bits => {
            return Err("client_max_window_bits above the offered value")
        }
        Some(Some(b)) => b,
        None => cfg.client_max_window_bits,
    };
    Ok(DeflateParams {
        server_no_context_takeover: o.snct,
        client_no_context_takeover: o.cnct || cfg.client_no_context_takeover,
        server_max_window_bits: smwb,
        client_max_window_bits: cmwb,
    })
}

/// Idle zlib streams, kept for the next connection instead of freed.
///
/// A stream is one large allocation (zlib-rs: ~45 KiB to inflate, ~270 KiB to deflate
/// at a 15-bit window, 64-byte aligned). Freed and allocated again at the rate
/// connections come and go, these blocks fragment the C heap: the 30-minute soak's RSS
/// crept by 2 MiB a minute with permessage-deflate clients and stayed flat without them
/// (docs/soak/). Reusing them keeps the heap's shape steady. The pool holds at most
/// [`POOL_INFLATERS`] and [`POOL_DEFLATERS`] streams; beyond, a stream is freed.
struct StreamPool {
    inflaters: Vec<Decompress>,
    deflaters: Vec<(u8, u32, Compress)>,
}

/// Most idle inflate streams kept for reuse (~45 KiB each).
pub const POOL_INFLATERS: usize = 256;
/// Most idle deflate streams kept for reuse (~270 KiB each at a 15-bit window).
pub const POOL_DEFLATERS: usize = 16;

static POOL: std::sync::Mutex<StreamPool> = std::sync::Mutex::new(StreamPool {
    inflaters: Vec::new(),
    deflaters: Vec::new(),
});

fn pool() -> std::sync::MutexGuard<'static, StreamPool> {
    // The pool holds no invariant a panic could break.
    POOL.lock().unwrap_or_else(|e| e.into_inner())
}

/// An inflate stream with a 15-bit window (inflating with a larger window than the
/// peer's is always correct, and zlib-rs allocates the full window whatever it is told).
fn take_inflater() -> Decompress {
    pool()
        .inflaters
        .pop()
        .unwrap_or_else(|| Decompress::new_with_window_bits(false, 15))
}

fn give_inflater(mut d: Decompress) {
    d.reset(false);
    let mut pool = pool();
    if pool.inflaters.len() < POOL_INFLATERS {
        pool.inflaters.push(d);
    }
}

fn take_deflater(bits: u8, level: u32) -> Compress {
    let mut pool = pool();
    match pool
        .deflaters
        .iter()
        .position(|(b, l, _)| (*b, *l) == (bits, level))
    {
        Some(i) => pool.deflaters.swap_remove(i).2,
        None => {
            drop(pool);
            Compress::new_with_window_bits(Compression::new(level), false, bits)
        }
    }
}

fn give_deflater(bits: u8, level: u32, mut c: Compress) {
    c.reset();
    let mut pool = pool();
    if pool.deflaters.len() < POOL_DEFLATERS {
        pool.deflaters.push((bits, level, c));
    }
}

/// How many idle zlib streams the pool holds: (inflate, deflate).
pub fn pooled_streams() -> (usize, usize) {
    let pool = pool();
    (pool.inflaters.len(), pool.deflaters.len())
}

/// The per-connection codec. The zlib streams are taken on first use, so a connection
/// that negotiated compression but never sends a large message pays no window memory;
/// an inflate stream for a peer that resets its context after each message is held only
/// while a message is being received. Streams go back to a pool when the codec drops.
pub struct DeflateCodec {
    compressor: Option<Compress>,
    decompressor: Option<Decompress>,
    /// Our own window (log2) and whether we reset after each message.
    send_bits: u8,
    send_reset: bool,
    /// The peer's window and whether it resets after each message.
    recv_bits: u8,
    recv_reset: bool,
    /// The peer's deflate stream ended (BFINAL) inside the current message.
    recv_ended: bool,
    level: u32,
    threshold: usize,
}

impl std::fmt::Debug for DeflateCodec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DeflateCodec")
            .field("send_bits", &self.send_bits)
            .field("send_reset", &self.send_reset)
            .field("recv_bits", &self.recv_bits)
            .field("recv_reset", &self.recv_reset)
            .finish()
    }
}

impl DeflateCodec {
    /// A codec for one side of a connection. `is_server` selects which negotiated
    /// parameters apply to our sending and which to our receiving.
    pub fn new(params: DeflateParams, is_server: bool, level: u32, threshold: usize) -> Self {
        let (send_bits, send_reset, recv_bits, recv_reset) = if is_server {
            (
                params.server_max_window_bits,
                params.server_no_context_takeover,
                params.client_max_window_bits,
                params.client_no_context_takeover,
            )
        } else {
            (
                params.client_max_window_bits,
                params.client_no_context_takeover,
                params.server_max_window_bits,
                params.server_no_context_takeover,
            )
        };
        DeflateCodec {
            compressor: None,
            decompressor: None,
            send_bits,
            send_reset,
            recv_bits,
            recv_reset,
            recv_ended: false,
            level,
            threshold,
        }
    }

    /// Whether a message of this length should be compressed.
    pub fn should_compress(&self, len: usize) -> bool {
        len >= self.threshold
    }

    /// Compress one whole message; the result has the trailer removed. A codec that
    /// resets its context after each message holds no compressor of its own: it borrows
    /// the thread's (zlib's state is ~310 KiB at a 15-bit window).
    pub fn compress(&mut self, payload: &[u8]) -> Bytes {
        if self.send_reset {
            return deflate_fresh(payload, self.send_bits, self.level);
        }
        let (bits, level) = send_params(self.send_bits, self.level);
        let c = self
            .compressor
            .get_or_insert_with(|| take_deflater(bits, level));
        deflate_message(c, payload)
    }

    /// Whether our compression context is reset after each message
    /// (`server_no_context_takeover` for a server): then a message compresses to the
    /// same bytes on every connection with the same window and level, and a fan-out can
    /// compress it once for all of them ([`crate::SharedFrame`]).
    pub fn resets_after_each_message(&self) -> bool {
        self.send_reset
    }

    /// Our window (log2) and level: what a shared compressed frame must match.
    pub fn send_window_and_level(&self) -> (u8, u32) {
        (self.send_bits, self.level)
    }

    /// Inflate one frame's worth of a compressed message into `out`. Call with
    /// `fin = true` for the message's last frame, which restores the trailer. Fails with
    /// 1009 when `out` would exceed `limit` bytes and 1007 on invalid data.
    pub fn decompress(
        &mut self,
        input: &[u8],
        fin: bool,
        out: &mut Vec<u8>,
        limit: usize,
    ) -> Result<(), Error> {
        let d = self.decompressor.get_or_insert_with(take_inflater);
        if !self.recv_ended {
            self.recv_ended = inflate(d, input, out, limit)?;
        }
        if fin {
            if !self.recv_ended {
                self.recv_ended = inflate(d, &TRAILER, out, limit)?;
            }
            if self.recv_reset {
                // The next message starts a fresh context: no need to hold a stream.
                if let Some(d) = self.decompressor.take() {
                    give_inflater(d);
                }
            } else if self.recv_ended {
                d.reset(false);
            }
            self.recv_ended = false;
        }
        Ok(())
    }
}

impl Drop for DeflateCodec {
    fn drop(&mut self) {
        if let Some(c) = self.compressor.take() {
            let (bits, level) = send_params(self.send_bits, self.level);
            give_deflater(bits, level, c);
        }
        if let Some(d) = self.decompressor.take() {
            give_inflater(d);
        }
    }
}

/// The window and level zlib can honour for a peer's limit of `bits`: zlib cannot
/// use an 8-bit window, but stored blocks (level 0) honour every window.
fn send_params(bits: u8, level: u32) -> (u8, u32) {
    if bits < 9 {
        (9, 0)
    } else {
        (bits.min(15), level.min(9))
    }
}

/// Deflate one whole message with a sync flush, the trailer removed (RFC 7692 §7.2.1).
fn deflate_message(c: &mut Compress, payload: &[u8]) -> Bytes {
    let mut out: Vec<u8> = Vec::with_capacity(payload.len() / 2 + 64);
    let mut input = payload;
    loop {
        if out.len() == out.capacity() {
            out.reserve(out.capacity().max(64));
        }
        let before = c.total_in();
        // Compressing into a Vec with spare room cannot fail.
        let _ = c.compress_vec(input, &mut out, FlushCompress::Sync);
        input = &input[(c.total_in() - before) as usize..];
        if input.is_empty() && out.len() < out.capacity() {
            break;
        }
    }
    if out.ends_with(&TRAILER) {
        out.truncate(out.len() - 4);
    }
    Bytes::from(out)
}

/// One message compressed as a fresh context with window `bits` and `level` compresses
/// it: what every sender that resets its context after each message sends.
/// The compressor comes from a per-thread pool (one per window and level), reset after
/// use, so connections without context takeover hold none.
pub(crate) fn deflate_fresh(payload: &[u8], bits: u8, level: u32) -> Bytes {
    thread_local! {
        static FRESH: std::cell::RefCell<Vec<(u8, u32, Compress)>> =
            const { std::cell::RefCell::new(Vec::new()) };
    }
    let (bits, level) = send_params(bits, level);
    FRESH.with(|pool| {
        let mut pool = pool.borrow_mut();
        let i = match pool.iter().position(|(b, l, _)| (*b, *l) == (bits, level)) {
            Some(i) => i,
            None => {
                let c = Compress::new_with_window_bits(Compression::new(level), false, bits);
                pool.push((bits, level, c));
                pool.len() - 1
            }
        };
        let c = &mut pool[i].2;
        let out = deflate_message(c, payload);
        c.reset();
        out
    })
}

/// Feed `input` to the inflater, appending to `out`. Returns whether the deflate stream
/// ended (a final block was seen).
fn inflate(
    d: &mut Decompress,
    mut input: &[u8],
    out: &mut Vec<u8>,
    limit: usize,
) -> Result<bool, Error> {
    loop {
        if out.len() == out.capacity() {
            let grow = out.len().clamp(4096, 1 << 20);
            out.reserve_exact(grow.min(limit + 1 - out.len().min(limit)).max(1));
        }
        let (before_in, before_out) = (d.total_in(), out.len());
        let status = d
            .decompress_vec(input, out, FlushDecompress::Sync)
            .map_err(|_| ProtocolError::Inflate)?;
        input = &input[(d.total_in() - before_in) as usize..];
        if out.len() > limit {
            return Err(CapacityError {
                kind: CapacityKind::Message,
                size: out.len() as u64,
                max: limit as u64,
            }
            .into());
        }
        if status == Status::StreamEnd {
            // RFC 7692 §7.2.3.4: a block with BFINAL set may end the message's data;
            // what follows it in the message is padding and is ignored.
            return Ok(true);
        }
        let full = out.len() == out.capacity();
        if input.is_empty() && !full {
            return Ok(false);
        }
        if !full && out.len() == before_out && d.total_in() == before_in {
            // No progress with room to spare: the data is broken.
            return Err(ProtocolError::Inflate.into());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::handshake::{parse_extensions, Headers};

    fn offers(s: &str) -> Vec<ExtensionOffer> {
        parse_extensions(&Headers(vec![(
            "Sec-WebSocket-Extensions".into(),
            s.as_bytes().to_vec(),
        )]))
        .unwrap()
    }

    #[test]
    fn server_accepts_plain_offer() {
        let (p, resp) =
            server_negotiate(&offers("permessage-deflate"), &DeflateConfig::default()).unwrap();
        assert_eq!(resp, "permessage-deflate");
        assert_eq!(p.server_max_window_bits, 15);
        assert_eq!(p.client_max_window_bits, 15);
    }

    #[test]
    fn server_honours_every_parameter() {
        let (p, resp) = server_negotiate(
            &offers("permessage-deflate; server_no_context_takeover; client_no_context_takeover; server_max_window_bits=10; client_max_window_bits=9"),
            &DeflateConfig::default(),
        )
        .unwrap();
        assert_eq!(resp, "permessage-deflate; server_no_context_takeover; client_no_context_takeover; server_max_window_bits=10; client_max_window_bits=9");
        assert!(p.server_no_context_takeover && p.client_no_context_takeover);
        assert_eq!(
            (p.server_max_window_bits, p.client_max_window_bits),
            (10, 9)
        );
    }

    #[test]
    fn server_limits_client_window_only_when_offered() {
        let cfg = DeflateConfig::default().client_max_window_bits(10);
        let (_, resp) = server_negotiate(&offers("permessage-deflate"), &cfg).unwrap();
        assert_eq!(resp, "permessage-deflate");
        let (p, resp) =
            server_negotiate(&offers("permessage-deflate; client_max_window_bits"), &cfg).unwrap();
        assert_eq!(resp, "permessage-deflate; client_max_window_bits=10");
        assert_eq!(p.client_max_window_bits, 10);
    }

    #[test]
    fn invalid_or_duplicate_parameters_decline_that_offer_and_try_the_next() {
        for bad in [
            "permessage-deflate; server_max_window_bits",
            "permessage-deflate; server_max_window_bits=7",
            "permessage-deflate; server_max_window_bits=16",
            "permessage-deflate; server_max_window_bits=010",
            "permessage-deflate; client_max_window_bits=abc",
            "permessage-deflate; server_no_context_takeover=1",
            "permessage-deflate; server_no_context_takeover; server_no_context_takeover",
            "permessage-deflate; foo",
        ] {
            assert!(
                server_negotiate(&offers(bad), &DeflateConfig::default()).is_none(),
                "{bad}"
            );
            let two = format!("{bad}, permessage-deflate; client_max_window_bits=12");
            let (p, _) = server_negotiate(&offers(&two), &DeflateConfig::default()).unwrap();
            assert_eq!(p.client_max_window_bits, 12, "{bad}");
        }
    }

    #[test]
    fn client_offer_and_accept_round_trip() {
        let cfg = DeflateConfig::default()
            .server_no_context_takeover(true)
            .server_max_window_bits(12)
            .client_max_window_bits(11);
        let offer = client_offer(&cfg);
        let (sp, resp) = server_negotiate(&offers(&offer), &DeflateConfig::default()).unwrap();
        let cp = client_accept(&offers(&resp)[0], &cfg).unwrap();
        assert_eq!(sp, cp);
        assert_eq!(
            (cp.server_max_window_bits, cp.client_max_window_bits),
            (12, 11)
        );
    }

    #[test]
    fn client_rejects_responses_the_offer_did_not_allow() {
        let cfg = DeflateConfig::default()
            .server_max_window_bits(10)
            .client_max_window_bits(10);
        for bad in [
            "permessage-deflate",                            // dropped smwb
            "permessage-deflate; server_max_window_bits=12", // above offer
            "permessage-deflate; server_max_window_bits=10; client_max_window_bits=11", // above offer
            "permessage-deflate; server_max_window_bits=10; client_max_window_bits",    // no value
            "permessage-deflate; server_max_window_bits=10; x=1",
        ] {
            assert!(client_accept(&offers(bad)[0], &cfg).is_err(), "{bad}");
        }
        let cfg = DeflateConfig::default().server_no_context_takeover(true);
        assert!(client_accept(&offers("permessage-deflate")[0], &cfg).is_err());
    }

    fn params(snct: bool, cnct: bool, sbits: u8, cbits: u8) -> DeflateParams {
        DeflateParams {
            server_no_context_takeover: snct,
            client_no_context_takeover: cnct,
            server_max_window_bits: sbits,
            client_max_window_bits: cbits,
        }
    }

    #[test]
    fn rfc_7692_7_2_3_1_hello_decompresses() {
        let mut codec = DeflateCodec::new(params(false, false, 15, 15), true, 1, 0);
        let mut out = Vec::new();
        codec
            .decompress(
                &[0xf2, 0x48, 0xcd, 0xc9, 0xc9, 0x07, 0x00],
                true,
                &mut out,
                1024,
            )
            .unwrap();
        assert_eq!(out, b"Hello");
    }

    #[test]
    fn rfc_7692_7_2_3_2_context_takeover_shares_the_window() {
        // Two "Hello" messages; the second references the first.
        let mut codec = DeflateCodec::new(params(false, false, 15, 15), true, 1, 0);
        let mut out = Vec::new();
        codec
            .decompress(
                &[0xf2, 0x48, 0xcd, 0xc9, 0xc9, 0x07, 0x00],
                true,
                &mut out,
                1024,
            )
            .unwrap();
        out.clear();
        codec
            .decompress(&[0xf2, 0x00, 0x11, 0x00, 0x00], true, &mut out, 1024)
            .unwrap();
        assert_eq!(out, b"Hello");
        // Our compressor does the same: the second message is shorter than the first.
        let mut tx = DeflateCodec::new(params(false, false, 15, 15), true, 6, 0);
        let a = tx.compress(b"Hello");
        let b = tx.compress(b"Hello");
        assert_eq!(&a[..], &[0xf2, 0x48, 0xcd, 0xc9, 0xc9, 0x07, 0x00]);
        assert!(b.len() < a.len(), "{b:?}");
    }

    #[test]
    fn rfc_7692_7_2_3_3_no_compression_block() {
        let mut codec = DeflateCodec::new(params(false, false, 15, 15), true, 1, 0);
        let mut out = Vec::new();
        codec
            .decompress(
                &[
                    0x00, 0x05, 0x00, 0xfa, 0xff, 0x48, 0x65, 0x6c, 0x6c, 0x6f, 0x00,
                ],
                true,
                &mut out,
                1024,
            )
            .unwrap();
        assert_eq!(out, b"Hello");
    }

    #[test]
    fn rfc_7692_7_2_3_4_bfinal_block_then_new_stream() {
        let mut codec = DeflateCodec::new(params(false, false, 15, 15), true, 1, 0);
        let mut out = Vec::new();
        codec
            .decompress(
                &[0xf3, 0x48, 0xcd, 0xc9, 0xc9, 0x07, 0x00, 0x00],
                true,
                &mut out,
                1024,
            )
            .unwrap();
        assert_eq!(out, b"Hello");
        out.clear();
        codec
            .decompress(
                &[0xf2, 0x48, 0xcd, 0xc9, 0xc9, 0x07, 0x00],
                true,
                &mut out,
                1024,
            )
            .unwrap();
        assert_eq!(out, b"Hello");
    }

    #[test]
    fn no_context_takeover_compresses_each_message_alone() {
        let mut tx = DeflateCodec::new(params(true, true, 15, 15), true, 6, 0);
        let a = tx.compress(b"Hello");
        let b = tx.compress(b"Hello");
        assert_eq!(a, b);
    }

    #[test]
    fn every_window_size_round_trips_with_and_without_takeover() {
        let text: Vec<u8> = (0..20_000u32)
            .map(|i| b"abcdefghij klmnop"[(i * i % 17) as usize])
            .collect();
        for bits in 8..=15u8 {
            for reset in [false, true] {
                let p = params(reset, reset, bits, bits);
                let mut server = DeflateCodec::new(p, true, 6, 0);
                let mut client = DeflateCodec::new(p, false, 6, 0);
                for _ in 0..3 {
                    let c = server.compress(&text);
                    let mut out = Vec::new();
                    client.decompress(&c, true, &mut out, 1 << 20).unwrap();
                    assert_eq!(out, text, "bits {bits} reset {reset}");
                    let c = client.compress(&text);
                    let mut out = Vec::new();
                    server.decompress(&c, true, &mut out, 1 << 20).unwrap();
                    assert_eq!(out, text);
                }
            }
        }
    }

    #[test]
    fn window_8_is_honoured_with_stored_blocks() {
        // A peer with a 256-byte window must be able to inflate what we send.
        let mut tx = DeflateCodec::new(params(false, false, 8, 8), true, 6, 0);
        let data = vec![b'a'; 1000];
        let c = tx.compress(&data);
        assert!(c.len() >= 1000, "stored blocks do not shrink");
        let mut d = Decompress::new_with_window_bits(false, 9);
        let mut out = Vec::with_capacity(2000);
        let mut input = c.to_vec();
        input.extend_from_slice(&TRAILER);
        d.decompress_vec(&input, &mut out, FlushDecompress::Sync)
            .unwrap();
        assert_eq!(out, data);
    }

    #[test]
    fn inflate_stops_at_the_limit_against_bombs() {
        let mut tx = DeflateCodec::new(params(false, false, 15, 15), true, 9, 0);
        let bomb = tx.compress(&vec![0u8; 10 << 20]);
        assert!(bomb.len() < 20_000);
        let mut rx = DeflateCodec::new(params(false, false, 15, 15), false, 1, 0);
        let mut out = Vec::new();
        let err = rx.decompress(&bomb, true, &mut out, 1 << 20).unwrap_err();
        assert!(matches!(
            err,
            Error::Capacity(CapacityError {
                kind: CapacityKind::Message,
                max: 1048576,
                ..
            })
        ));
        assert!(out.capacity() < 3 << 20, "capacity {}", out.capacity());
    }

    #[test]
    fn garbage_fails_with_inflate_error() {
        let mut rx = DeflateCodec::new(params(false, false, 15, 15), false, 1, 0);
        let mut out = Vec::new();
        let err = rx
            .decompress(&[0xff, 0xff, 0xff, 0xff, 0x00], true, &mut out, 1024)
            .unwrap_err();
        assert_eq!(err, Error::Protocol(ProtocolError::Inflate));
    }

    #[test]
    fn message_split_across_frames_inflates_piecewise() {
        let mut tx = DeflateCodec::new(params(false, false, 15, 15), true, 6, 0);
        let text = b"the quick brown fox jumps over the lazy dog ".repeat(100);
        let c = tx.compress(&text);
        let mut rx = DeflateCodec::new(params(false, false, 15, 15), false, 1, 0);
        let mut out = Vec::new();
        let mid = c.len() / 2;
        rx.decompress(&c[..mid], false, &mut out, 1 << 20).unwrap();
        rx.decompress(&c[mid..], true, &mut out, 1 << 20).unwrap();
        assert_eq!(out, text);
    }
}
