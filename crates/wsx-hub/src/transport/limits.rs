//! Limits per source address, so that one client (or one misbehaving host) cannot take
//! what the others need: open connections per IP, and handshakes per IP per second (a
//! token bucket). Addresses in exempt networks (a load balancer's, loopback by default)
//! are not limited. Behind trusted proxies, the client's address is taken from
//! `X-Forwarded-For` or `Forwarded` (the nearest address that is not a trusted proxy);
//! from anyone else those headers are ignored.
//!
//! Memory: one entry (~64 bytes) per source address with an open connection or a
//! bucket that has not refilled; entries are swept once the table passes
//! [`SWEEP_AT`] entries.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use http::HeaderMap;
use wsx::Refusal;

use crate::hub::shards::lock;

/// The table is swept of idle entries when it grows past this many.
pub const SWEEP_AT: usize = 4096;

/// A network: an address and a prefix length (`10.0.0.0/8`, `::1/128`, `192.0.2.7`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Net {
    addr: IpAddr,
    prefix: u8,
}

impl Net {
    /// Parse `ADDR` or `ADDR/PREFIX`.
    pub fn parse(s: &str) -> Result<Net, String> {
        let s = s.trim();
        let (addr, prefix) = match s.split_once('/') {
            Some((a, p)) => (a, Some(p)),
            None => (s, None),
        };
        let addr: IpAddr = addr
            .parse()
            .map_err(|_| format!("`{s}` is not an IP address or network"))?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let prefix = match prefix {
            None => max,
            Some(p) => p
                .parse::<u8>()
                .ok()
                .filter(|p| *p <= max)
                .ok_or_else(|| format!("`{s}`: the prefix length must be 0 to {max}"))?,
        };
        Ok(Net { addr, prefix })
    }

    /// Whether `ip` is in this network (an IPv4-mapped IPv6 address counts as IPv4).
    pub fn contains(&self, ip: IpAddr) -> bool {
        let ip = match ip {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
            v4 => v4,
        };
        match (self.addr, ip) {
            (IpAddr::V4(n), IpAddr::V4(a)) => {
                let mask = u32::MAX
                    .checked_shl(32 - u32::from(self.prefix))
                    .unwrap_or(0);
                u32::from(n) & mask == u32::from(a) & mask
            }
            (IpAddr::V6(n), IpAddr::V6(a)) => {
                let mask = u128::MAX
                    .checked_shl(128 - u32::from(self.prefix))
                    .unwrap_or(0);
                u128::from(n) & mask == u128::from(a) & mask
            }
            _ => false,
        }
    }
}

/// The limits per source address.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct SourceLimits {
    /// Open TCP connections from one address (WebSockets included). Default: 1000.
    pub connections_per_ip: usize,
    /// Handshakes (WebSocket upgrades, new HTTP sessions) per second from one address,
    /// on average. Default: 50.
    pub handshakes_per_second: f64,
    /// Handshakes one address may make at once before the rate applies. Default: 100.
    pub handshake_burst: f64,
    /// Networks not limited. Default: loopback (`127.0.0.0/8`, `::1`).
    pub exempt: Vec<Net>,
    /// Proxies whose `X-Forwarded-For` / `Forwarded` name the client. Default: none.
    pub trusted_proxies: Vec<Net>,
}

impl Default for SourceLimits {
    fn default() -> Self {
        SourceLimits {
            connections_per_ip: 1000,
            handshakes_per_second: 50.0,
            handshake_burst: 100.0,
            exempt: vec![
                Net {
                    addr: IpAddr::from([127, 0, 0, 0]),
                    prefix: 8,
                },
                Net {
                    addr: IpAddr::from(std::net::Ipv6Addr::LOCALHOST),
                    prefix: 128,
                },
            ],
            trusted_proxies: Vec::new(),
        }
    }
}

#[derive(Debug)]
struct Entry {
    open: usize,
    tokens: f64,
    at: Instant,
}

/// The live counts behind [`SourceLimits`], shared by the listener and the endpoints.
#[derive(Debug)]
pub struct Limiter {
    cfg: crate::live::Live<SourceLimits>,
    table: Mutex<HashMap<IpAddr, Entry>>,
}

/// One open connection's place in its address's count, given back when dropped (also
/// kept by a WebSocket the connection was upgraded to).
#[derive(Debug)]
pub struct IpSlot {
    /// `None` for an exempt address: nothing was counted.
    limiter: Option<Arc<Limiter>>,
    ip: IpAddr,
}

impl Drop for IpSlot {
    fn drop(&mut self) {
        let Some(limiter) = &self.limiter else { return };
        if let Some(e) = lock(&limiter.table).get_mut(&self.ip) {
            e.open = e.open.saturating_sub(1);
        }
    }
}

impl Limiter {
    /// A limiter with these limits.
    pub fn new(cfg: SourceLimits) -> Arc<Limiter> {
        Arc::new(Limiter {
            cfg: crate::live::Live::new(cfg),
            table: Mutex::new(HashMap::new()),
        })
    }

    /// The limits (as they are now).
    pub fn config(&self) -> Arc<SourceLimits> {
        self.cfg.get()
    }

    /// Replace the limits (a reload): they apply to the next connection and handshake;
    /// connections open beyond a lowered limit stay open.
    pub fn set_config(&self, cfg: SourceLimits) {
        self.cfg.set(cfg);
    }

    fn exempt(&self, ip: IpAddr) -> bool {
        self.cfg.get().exempt.iter().any(|n| n.contains(ip))
    }

    fn trusted(&self, ip: IpAddr) -> bool {
        self.cfg
            .get()
            .trusted_proxies
            .iter()
            .any(|n| n.contains(ip))
    }

    /// The client's address: `peer`, or when `peer` is a trusted proxy, the nearest
    /// address in `X-Forwarded-For` (else `Forwarded`'s `for=`) that is not one.
    pub fn client_ip(&self, peer: IpAddr, headers: &HeaderMap) -> IpAddr {
        if !self.trusted(peer) {
            return peer;
        }
        let mut hops: Vec<IpAddr> = Vec::new();
        for v in headers.get_all("x-forwarded-for") {
            let Ok(v) = v.to_str() else { return peer };
            for part in v.split(',') {
                match parse_node(part) {
                    Some(ip) => hops.push(ip),
                    None => return peer,
                }
            }
        }
        if hops.is_empty() {
            for v in headers.get_all(http::header::FORWARDED) {
                let Ok(v) = v.to_str() else { return peer };
                for element in v.split(',') {
                    let node = element.split(';').find_map(|pair| {
                        let (k, v) = pair.split_once('=')?;
                        k.trim().eq_ignore_ascii_case("for").then_some(v)
                    });
                    match node.and_then(parse_node) {
                        Some(ip) => hops.push(ip),
                        None => return peer,
                    }
                }
            }
        }
        // Right to left: the last hop was added by the proxy nearest to us.
        hops.iter()
            .rev()
            .copied()
            .find(|ip| !self.trusted(*ip))
            .or_else(|| hops.first().copied())
            .unwrap_or(peer)
    }

    /// Count a new connection from `ip`: `None` when the address has its limit open.
    pub fn open(self: &Arc<Self>, ip: IpAddr) -> Option<IpSlot> {
        if self.exempt(ip) {
            return Some(IpSlot { limiter: None, ip });
        }
        let cfg = self.cfg.get();
        let mut t = lock(&self.table);
        self.sweep(&mut t);
        let now = Instant::now();
        let e = t.entry(ip).or_insert(Entry {
            open: 0,
            tokens: cfg.handshake_burst,
            at: now,
        });
        if e.open >= cfg.connections_per_ip {
            return None;
        }
        e.open += 1;
        Some(IpSlot {
            limiter: Some(self.clone()),
            ip,
        })
    }

    /// Take a handshake from `ip`'s bucket, or refuse with 429 and when to retry.
    pub fn handshake(&self, ip: IpAddr) -> Result<(), Refusal> {
        if self.exempt(ip) {
            return Ok(());
        }
        let cfg = self.cfg.get();
        let (rate, burst) = (cfg.handshakes_per_second, cfg.handshake_burst);
        let mut t = lock(&self.table);
        self.sweep(&mut t);
        let now = Instant::now();
        let e = t.entry(ip).or_insert(Entry {
            open: 0,
            tokens: burst,
            at: now,
        });
        e.tokens = (e.tokens + now.duration_since(e.at).as_secs_f64() * rate).min(burst);
        e.at = now;
        if e.tokens >= 1.0 {
            e.tokens -= 1.0;
            return Ok(());
        }
        let wait = ((1.0 - e.tokens) / rate.max(1e-9)).ceil().max(1.0) as u32;
        Err(Refusal::new(429, format!("too many handshakes from {ip}")).retry_after(wait))
    }

    /// Drop entries with nothing open and a full bucket once the table is large.
    fn sweep(&self, t: &mut HashMap<IpAddr, Entry>) {
        if t.len() < SWEEP_AT {
            return;
        }
        let now = Instant::now();
        let cfg = self.cfg.get();
        let (rate, burst) = (cfg.handshakes_per_second, cfg.handshake_burst);
        t.retain(|_, e| {
            e.open > 0 || e.tokens + now.duration_since(e.at).as_secs_f64() * rate < burst
        });
    }
}

/// One node of `X-Forwarded-For` / `Forwarded`: `1.2.3.4`, `"[2001:db8::1]:4711"`,
/// `1.2.3.4:80`.
fn parse_node(s: &str) -> Option<IpAddr> {
    let s = s.trim().trim_matches('"');
    if let Ok(ip) = s.parse() {
        return Some(ip);
    }
    if let Some(rest) = s.strip_prefix('[') {
        return rest.split(']').next()?.parse().ok();
    }
    s.rsplit_once(':')?.0.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap_or_else(|_| panic!("{s}"))
    }

    #[test]
    fn networks_contain_their_addresses() {
        let n = Net::parse("10.1.0.0/16").unwrap();
        assert!(n.contains(ip("10.1.200.3")) && !n.contains(ip("10.2.0.1")));
        assert!(n.contains(ip("::ffff:10.1.0.9")));
        let one = Net::parse("192.0.2.7").unwrap();
        assert!(one.contains(ip("192.0.2.7")) && !one.contains(ip("192.0.2.8")));
        let v6 = Net::parse("2001:db8::/32").unwrap();
        assert!(v6.contains(ip("2001:db8:1::5")) && !v6.contains(ip("2001:db9::1")));
        assert!(Net::parse("0.0.0.0/0").unwrap().contains(ip("8.8.8.8")));
        assert!(Net::parse("10.0.0.0/33").is_err() && Net::parse("nope").is_err());
    }

    fn limiter(proxies: &[&str]) -> Arc<Limiter> {
        Limiter::new(SourceLimits {
            connections_per_ip: 2,
            handshakes_per_second: 1.0,
            handshake_burst: 3.0,
            trusted_proxies: proxies.iter().map(|p| Net::parse(p).unwrap()).collect(),
            ..SourceLimits::default()
        })
    }

    #[test]
    fn forwarded_headers_count_only_from_trusted_proxies() {
        let l = limiter(&["10.0.0.0/8"]);
        let mut h = HeaderMap::new();
        h.insert("x-forwarded-for", "203.0.113.9, 10.0.0.3".parse().unwrap());
        assert_eq!(l.client_ip(ip("10.0.0.1"), &h), ip("203.0.113.9"));
        // A client cannot name itself someone else.
        assert_eq!(l.client_ip(ip("198.51.100.4"), &h), ip("198.51.100.4"));
        let mut f = HeaderMap::new();
        f.insert(
            "forwarded",
            "for=\"[2001:db8::7]:4711\";proto=https, for=10.0.0.8"
                .parse()
                .unwrap(),
        );
        assert_eq!(l.client_ip(ip("10.0.0.1"), &f), ip("2001:db8::7"));
        // A spoofed leftmost entry does not matter: the nearest untrusted one counts.
        h.insert("x-forwarded-for", "1.1.1.1, 203.0.113.9".parse().unwrap());
        assert_eq!(l.client_ip(ip("10.0.0.1"), &h), ip("203.0.113.9"));
    }

    #[test]
    fn connections_per_ip_are_counted_and_given_back() {
        let l = limiter(&[]);
        let a = l.open(ip("192.0.2.1")).unwrap();
        let _b = l.open(ip("192.0.2.1")).unwrap();
        assert!(l.open(ip("192.0.2.1")).is_none());
        assert!(l.open(ip("192.0.2.2")).is_some());
        drop(a);
        assert!(l.open(ip("192.0.2.1")).is_some());
        // Loopback is exempt by default.
        let held: Vec<_> = (0..10).map(|_| l.open(ip("127.0.0.1")).unwrap()).collect();
        assert_eq!(held.len(), 10);
    }

    #[test]
    fn handshakes_beyond_the_burst_get_429_with_retry_after() {
        let l = limiter(&[]);
        for _ in 0..3 {
            l.handshake(ip("192.0.2.1")).unwrap();
        }
        let r = l.handshake(ip("192.0.2.1")).unwrap_err();
        assert_eq!((r.status, r.retry_after), (429, Some(1)));
        assert!(l.handshake(ip("192.0.2.2")).is_ok());
        assert!((0..100).all(|_| l.handshake(ip("::1")).is_ok()));
    }
}
