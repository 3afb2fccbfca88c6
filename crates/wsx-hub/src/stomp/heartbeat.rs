//! STOMP heart-beats (1.1+): negotiation and deadlines. Time is an argument, so the
//! rules are tested without sleeping.
//!
//! `CONNECT` carries `heart-beat: cx,cy` (the client can send every `cx` ms, wants to
//! receive every `cy` ms); `CONNECTED` answers `sx,sy` the same way for the server.
//! The server sends every `max(sx, cy)` ms when both are non-zero, and expects
//! something from the client every `max(cx, sy)` ms when both are non-zero; with the
//! spec's tolerance for timing error, a client silent for twice that is dead.

use std::time::{Duration, Instant};

/// Parse a `heart-beat` header: two non-negative millisecond counts.
pub fn parse(value: &str) -> Option<(u64, u64)> {
    let (a, b) = value.split_once(',')?;
    Some((a.trim().parse().ok()?, b.trim().parse().ok()?))
}

/// What a connection's heart-beat state asks for now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Beat {
    /// Nothing.
    Idle,
    /// Send a heart-beat (an EOL): nothing else went out for the send interval.
    Send,
    /// The client sent nothing for too long: the connection is dead.
    Dead,
}

/// One connection's heart-beat deadlines.
#[derive(Debug, Clone)]
pub struct HeartBeat {
    send_every: Option<Duration>,
    expect_every: Option<Duration>,
    last_in: Instant,
    last_out: Instant,
}

/// How many expected intervals of silence make a client dead.
const TOLERANCE: u32 = 2;

impl HeartBeat {
    /// Negotiate from the client's `(cx, cy)` and the server's `(sx, sy)`, at `now`.
    pub fn negotiate(client: (u64, u64), server: (u64, u64), now: Instant) -> HeartBeat {
        let both = |a: u64, b: u64| (a > 0 && b > 0).then(|| Duration::from_millis(a.max(b)));
        HeartBeat {
            send_every: both(server.0, client.1),
            expect_every: both(client.0, server.1),
            last_in: now,
            last_out: now,
        }
    }

    /// No heart-beats (STOMP 1.0, or before `CONNECT`).
    pub fn off(now: Instant) -> HeartBeat {
        HeartBeat::negotiate((0, 0), (0, 0), now)
    }

    /// How often the server sends, if at all.
    pub fn send_every(&self) -> Option<Duration> {
        self.send_every
    }

    /// How often the client must send, if at all.
    pub fn expect_every(&self) -> Option<Duration> {
        self.expect_every
    }

    /// Something arrived from the client.
    pub fn received(&mut self, now: Instant) {
        self.last_in = now;
    }

    /// Something went out to the client.
    pub fn sent(&mut self, now: Instant) {
        self.last_out = now;
    }

    /// What to do at `now`.
    pub fn poll(&self, now: Instant) -> Beat {
        if let Some(e) = self.expect_every {
            if now.saturating_duration_since(self.last_in) >= e * TOLERANCE {
                return Beat::Dead;
            }
        }
        if let Some(s) = self.send_every {
            if now.saturating_duration_since(self.last_out) >= s {
                return Beat::Send;
            }
        }
        Beat::Idle
    }

    /// When [`poll`](Self::poll) may next have something to do.
    pub fn deadline(&self) -> Option<Instant> {
        let dead = self.expect_every.map(|e| self.last_in + e * TOLERANCE);
        let send = self.send_every.map(|s| self.last_out + s);
        match (dead, send) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_larger_of_the_two_sides_wins_and_zero_means_never() {
        let t = Instant::now();
        let h = HeartBeat::negotiate((5000, 2000), (10_000, 10_000), t);
        assert_eq!(h.send_every(), Some(Duration::from_millis(10_000)));
        assert_eq!(h.expect_every(), Some(Duration::from_millis(10_000)));
        let h = HeartBeat::negotiate((0, 20_000), (10_000, 10_000), t);
        assert_eq!(h.send_every(), Some(Duration::from_millis(20_000)));
        assert_eq!(h.expect_every(), None, "the client cannot send");
        let h = HeartBeat::negotiate((1000, 1000), (0, 0), t);
        assert_eq!((h.send_every(), h.expect_every()), (None, None));
    }

    #[test]
    fn a_beat_goes_out_after_a_quiet_send_interval() {
        let t = Instant::now();
        let mut h = HeartBeat::negotiate((0, 1000), (1000, 0), t);
        assert_eq!(h.poll(t + Duration::from_millis(999)), Beat::Idle);
        assert_eq!(h.poll(t + Duration::from_millis(1000)), Beat::Send);
        h.sent(t + Duration::from_millis(1000));
        assert_eq!(h.deadline(), Some(t + Duration::from_millis(2000)));
    }

    #[test]
    fn a_client_silent_for_twice_its_interval_is_dead() {
        let t = Instant::now();
        let mut h = HeartBeat::negotiate((1000, 0), (0, 1000), t);
        assert_eq!(h.poll(t + Duration::from_millis(1999)), Beat::Idle);
        h.received(t + Duration::from_millis(1500));
        assert_eq!(h.poll(t + Duration::from_millis(3000)), Beat::Idle);
        assert_eq!(h.poll(t + Duration::from_millis(3500)), Beat::Dead);
        assert_eq!(h.deadline(), Some(t + Duration::from_millis(3500)));
    }

    #[test]
    fn header_parsing() {
        assert_eq!(parse("10000,0"), Some((10000, 0)));
        assert_eq!(parse(" 1 , 2 "), Some((1, 2)));
        assert_eq!(parse("x,1"), None);
        assert_eq!(parse("1"), None);
    }
}
