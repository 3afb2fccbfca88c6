//! Commands per second per connection, for every front-end: a token bucket. A command
//! over the rate is refused (each front-end says so its own way: a native error reply,
//! a STOMP frame held back until it fits, a Socket.IO ack with an error); a connection
//! refused more than `max_refused` times since its bucket was last full is abusive and
//! is closed (native close 3010, STOMP `ERROR`, Socket.IO disconnect).

use std::time::Instant;

/// The rate of commands per connection.
#[derive(Debug, Clone, Copy, PartialEq)]
#[non_exhaustive]
pub struct CommandRate {
    /// Commands per second, on average. Default: 1000 (a client that publishes a
    /// feed through its own connection is not slowed; one that floods is bounded).
    pub per_second: f64,
    /// Commands at once before the rate applies. Default: 1000.
    pub burst: f64,
    /// Refusals since the bucket was last full before the connection is closed.
    /// Default: 100.
    pub max_refused: u32,
}

impl Default for CommandRate {
    fn default() -> Self {
        CommandRate {
            per_second: 1000.0,
            burst: 1000.0,
            max_refused: 100,
        }
    }
}

/// What the bucket says of one command.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Go on.
    Allowed,
    /// Over the rate: refuse this one (a token is free in `wait`).
    Refused {
        /// Until a token is free.
        wait: std::time::Duration,
    },
    /// Refused too often: close the connection.
    Abusive,
}

/// One connection's bucket (its rate is the hub's, passed to [`take`](Self::take): not
/// copied into every connection).
#[derive(Debug, Clone)]
pub struct Bucket {
    tokens: f64,
    at: Instant,
    refused: u32,
}

impl Bucket {
    /// A full bucket.
    pub fn new(rate: &CommandRate) -> Bucket {
        Bucket {
            tokens: rate.burst,
            at: Instant::now(),
            refused: 0,
        }
    }

    /// Take a token for one command at `now`, at `r` (the rate the bucket was made with).
    pub fn take(&mut self, r: &CommandRate, now: Instant) -> Verdict {
        self.tokens = (self.tokens
            + now.saturating_duration_since(self.at).as_secs_f64() * r.per_second)
            .min(r.burst);
        self.at = now;
        if self.tokens >= r.burst {
            self.refused = 0;
        }
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            return Verdict::Allowed;
        }
        self.refused += 1;
        if self.refused > r.max_refused {
            return Verdict::Abusive;
        }
        Verdict::Refused {
            wait: std::time::Duration::from_secs_f64((1.0 - self.tokens) / r.per_second.max(1e-9)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn a_burst_then_the_rate_then_abuse_and_a_full_bucket_forgives() {
        let rate = CommandRate {
            per_second: 10.0,
            burst: 5.0,
            max_refused: 3,
        };
        let t0 = Instant::now();
        let mut b = Bucket::new(&rate);
        for _ in 0..5 {
            assert_eq!(b.take(&rate, t0), Verdict::Allowed);
        }
        assert!(matches!(b.take(&rate, t0), Verdict::Refused { .. }));
        // 100 ms later one token is back.
        assert_eq!(
            b.take(&rate, t0 + Duration::from_millis(100)),
            Verdict::Allowed
        );
        let t1 = t0 + Duration::from_millis(100);
        assert!(matches!(b.take(&rate, t1), Verdict::Refused { .. }));
        assert!(matches!(b.take(&rate, t1), Verdict::Refused { .. }));
        assert_eq!(b.take(&rate, t1), Verdict::Abusive);
        // A second idle refills it: the count starts over.
        let t2 = t1 + Duration::from_secs(1);
        assert_eq!(b.take(&rate, t2), Verdict::Allowed);
        for _ in 0..4 {
            b.take(&rate, t2);
        }
        assert!(matches!(b.take(&rate, t2), Verdict::Refused { .. }));
    }
}
