//! Per-channel history: a bounded log of publications with offsets and an epoch, and
//! recovery of what a reconnecting client missed.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::hub::publication::{Payload, Publication, StreamPosition};

/// A bounded log of one channel's publications.
#[derive(Debug)]
pub struct History {
    entries: VecDeque<(Instant, Arc<Publication>)>,
    max_len: usize,
    ttl: Duration,
    last_offset: u64,
    epoch: String,
}

impl History {
    /// A history keeping at most `max_len` publications for at most `ttl`, in `epoch`.
    pub fn new(max_len: usize, ttl: Duration, epoch: String) -> History {
        History {
            entries: VecDeque::new(),
            max_len,
            ttl,
            last_offset: 0,
            epoch,
        }
    }

    /// Change the bounds (a namespace's settings); takes effect at the next push.
    pub fn configure(&mut self, max_len: usize, ttl: Duration) {
        self.max_len = max_len;
        self.ttl = ttl;
    }

    /// The oldest offset retained (the next offset when nothing is).
    pub fn first_offset(&self) -> u64 {
        self.entries
            .front()
            .map_or(self.last_offset + 1, |(_, p)| p.offset)
    }

    /// Record a publication at `now`; returns it with its offset.
    pub fn push(&mut self, now: Instant, payload: Payload) -> Arc<Publication> {
        self.last_offset += 1;
        let p = Arc::new(Publication::new(self.last_offset, payload));
        if self.max_len > 0 {
            self.entries.push_back((now, p.clone()));
            while self.entries.len() > self.max_len {
                self.entries.pop_front();
            }
        }
        self.prune(now);
        p
    }

    /// Drop what is older than the TTL.
    pub fn prune(&mut self, now: Instant) {
        while let Some((t, _)) = self.entries.front() {
            if now.saturating_duration_since(*t) > self.ttl {
                self.entries.pop_front();
            } else {
                break;
            }
        }
    }

    /// The current position of the stream.
    pub fn position(&self) -> StreamPosition {
        StreamPosition {
            offset: self.last_offset,
            epoch: self.epoch.clone(),
        }
    }

    /// Up to `limit` retained publications, oldest first (or newest first with
    /// `reverse`), after `since` if given.
    pub fn query(
        &mut self,
        now: Instant,
        limit: usize,
        since: Option<u64>,
        reverse: bool,
    ) -> Vec<Arc<Publication>> {
        self.prune(now);
        let after = since.unwrap_or(0);
        let it = self
            .entries
            .iter()
            .filter(|(_, p)| p.offset > after)
            .map(|(_, p)| p.clone());
        if reverse {
            let mut v: Vec<_> = it.collect();
            v.reverse();
            v.truncate(limit);
            v
        } else {
            it.take(limit).collect()
        }
    }

    /// How many publications are retained.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether nothing is retained.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn h(max: usize, ttl_s: u64) -> (History, Instant) {
        (
            History::new(max, Duration::from_secs(ttl_s), "e1".into()),
            Instant::now(),
        )
    }

    fn data(i: u64) -> Payload {
        Payload::json(format!("{i}"))
    }

    /// What recovery from `since` would give: the missed offsets, or `None` when the
    /// history cannot cover the gap (the hub's decision, `broker::covers`).
    fn recover(h: &mut History, now: Instant, since: &StreamPosition) -> Option<Vec<u64>> {
        let page = crate::hub::backplane::HistoryPage {
            publications: h.query(now, usize::MAX, Some(since.offset), false),
            position: h.position(),
            first_retained: h.first_offset(),
        };
        crate::hub::broker::covers(&page, since)
            .then(|| page.publications.iter().map(|p| p.offset).collect())
    }

    #[test]
    fn offsets_increase_from_one() {
        let (mut h, now) = h(10, 60);
        assert_eq!(h.push(now, data(1)).offset, 1);
        assert_eq!(h.push(now, data(2)).offset, 2);
        assert_eq!(
            h.position(),
            StreamPosition {
                offset: 2,
                epoch: "e1".into()
            }
        );
    }

    #[test]
    fn recovers_exactly_what_was_missed_in_order() {
        let (mut h, now) = h(100, 60);
        for i in 1..=5 {
            h.push(now, data(i));
        }
        let pos = h.position();
        for i in 6..=15 {
            h.push(now, data(i));
        }
        assert_eq!(recover(&mut h, now, &pos), Some((6..=15).collect()));
        let end = h.position();
        assert_eq!(recover(&mut h, now, &end), Some(vec![]));
    }

    #[test]
    fn gap_beyond_the_bound_is_not_recovered() {
        let (mut h, now) = h(3, 60);
        h.push(now, data(1));
        let pos = h.position();
        for i in 2..=10 {
            h.push(now, data(i));
        }
        assert_eq!(h.len(), 3);
        assert_eq!(recover(&mut h, now, &pos), None);
    }

    #[test]
    fn expired_history_is_not_recovered() {
        let (mut h, now) = h(100, 10);
        h.push(now, data(1));
        let pos = h.position();
        h.push(now, data(2));
        let later = now + Duration::from_secs(11);
        assert_eq!(recover(&mut h, later, &pos), None);
        assert!(h.is_empty());
    }

    #[test]
    fn another_epoch_is_not_recovered() {
        let (mut h, now) = h(100, 60);
        h.push(now, data(1));
        let pos = StreamPosition {
            offset: 1,
            epoch: "old".into(),
        };
        assert_eq!(recover(&mut h, now, &pos), None);
        let ahead = StreamPosition {
            offset: 9,
            epoch: "e1".into(),
        };
        assert_eq!(recover(&mut h, now, &ahead), None);
    }

    #[test]
    fn query_limits_since_and_reverse() {
        let (mut h, now) = h(100, 60);
        for i in 1..=10 {
            h.push(now, data(i));
        }
        let offs = |v: Vec<Arc<Publication>>| v.iter().map(|p| p.offset).collect::<Vec<_>>();
        assert_eq!(offs(h.query(now, 3, None, false)), vec![1, 2, 3]);
        assert_eq!(offs(h.query(now, 3, Some(7), false)), vec![8, 9, 10]);
        assert_eq!(offs(h.query(now, 2, None, true)), vec![10, 9]);
    }

    #[test]
    fn zero_length_history_keeps_offsets_but_nothing_else() {
        let (mut h, now) = h(0, 60);
        h.push(now, data(1));
        assert_eq!(h.position().offset, 1);
        assert!(h.is_empty());
    }
}
