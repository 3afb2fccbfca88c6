//! Waking a fan-out's consumers a turn at a time.
//!
//! A publication to 10,000 subscribers makes 10,000 connection tasks ready. Woken all
//! at once, they fill the event loop's run queue, and a task made ready by I/O (the
//! publisher's next request, a command) waits behind all of them: a sequential
//! publisher gets one publication per round of every subscriber, so no write ever
//! carries more than one message, and each publication's latency is two rounds (one
//! waiting to be read, one to be delivered).
//!
//! [`Wakes`] wakes at most [`TURN`] consumers at once; the rest wait in order and a
//! helper task wakes the next [`TURN`] each time the event loop comes round (after its
//! I/O is polled). What is published meanwhile joins the queues of the consumers not
//! yet woken, so they write it with what they already had, in one write: under load,
//! publications coalesce per subscriber instead of each costing every subscriber a
//! system call. Order and fairness are kept (first queued, first woken), and a consumer
//! with a wake-up pending is not queued twice (its queue's waker was taken).

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::task::Waker;
use std::time::Duration;

use tokio::sync::Notify;

use crate::hub::queue::Outbound;
use crate::hub::shards::lock;

/// Consumers woken at once; the rest one turn of the event loop later, this many a turn.
pub const TURN: usize = 256;

/// How often a paced publisher looks again between turns.
const PACE_LOOK: Duration = Duration::from_millis(5);

/// A consumer to wake, and its queue (whose depth says how far behind it is).
pub(crate) struct Wake {
    pub(crate) waker: Waker,
    pub(crate) queue: Arc<Outbound>,
}

impl Wake {
    fn wake(self) {
        self.waker.wake();
    }
}

/// The wake-ups of one broker's fan-outs.
#[derive(Default)]
pub(crate) struct Wakes {
    inner: Arc<Inner>,
}

#[derive(Default)]
struct Inner {
    /// Consumers to wake, in order, each with its queue.
    waiting: Mutex<VecDeque<Wake>>,
    helper: AtomicBool,
    /// Told when a helper starts and after each turn.
    turned: Notify,
}

impl Wakes {
    /// Wake `wakers`: the first [`TURN`] now when none are waiting, the rest in turns.
    pub(crate) fn wake(&self, mut wakers: Vec<Wake>) {
        let mut waiting = lock(&self.inner.waiting);
        if waiting.is_empty() && wakers.len() <= TURN {
            drop(waiting);
            wakers.into_iter().for_each(Wake::wake);
            return;
        }
        let now: Vec<Wake> = if waiting.is_empty() {
            wakers.drain(..TURN).collect()
        } else {
            Vec::new()
        };
        waiting.extend(wakers);
        let start = !self.inner.helper.swap(true, Ordering::AcqRel);
        drop(waiting);
        now.into_iter().for_each(Wake::wake);
        if start {
            self.inner.turned.notify_waiters();
            match tokio::runtime::Handle::try_current() {
                Ok(rt) => {
                    rt.spawn(helper(Helper(self.inner.clone())));
                }
                // No event loop to take turns on: wake everyone now.
                Err(_) => Helper(self.inner.clone()).finish(),
            }
        }
    }

    /// How far behind the event loop is: the deliveries queued for the consumer that
    /// has waited longest for its turn (0 when no one waits).
    pub(crate) fn lag(&self) -> usize {
        let head = lock(&self.inner.waiting).front().map(|w| w.queue.clone());
        head.map_or(0, |q| q.len())
    }

    /// Wait while `busy` says so, at most until `deadline`: a publisher faster than the
    /// event loop can deliver is slowed to its pace. `busy` is asked again at each turn
    /// and every [`PACE_LOOK`] (queues also shorten between turns).
    pub(crate) async fn pace(&self, deadline: tokio::time::Instant, busy: impl Fn() -> bool) {
        wait_while(&self.inner.turned, deadline, || {
            busy().then(|| (tokio::time::Instant::now() + PACE_LOOK).min(deadline))
        })
        .await
    }

    /// Wait for the next turn (or a helper's start), at most `max`.
    pub(crate) async fn turned(&self, max: Duration) {
        let _ = tokio::time::timeout(max, self.inner.turned.notified()).await;
    }

    /// Another handle on the same wake-ups (for a task that must not keep the broker).
    pub(crate) fn share(&self) -> Wakes {
        Wakes {
            inner: self.inner.clone(),
        }
    }

    /// Consumers waiting for their turn.
    #[cfg(test)]
    pub(crate) fn waiting(&self) -> usize {
        lock(&self.inner.waiting).len()
    }
}

/// Wait, at most until `deadline`, while `busy` says so: it returns when to look again
/// (`None`: no longer busy), and it is asked again then or whenever `changed` is told.
pub(crate) async fn wait_while(
    changed: &Notify,
    deadline: tokio::time::Instant,
    mut busy: impl FnMut() -> Option<tokio::time::Instant>,
) {
    // Not busy (the common case): no registration with `changed`, whose lock every
    // publisher would otherwise take.
    if busy().is_none() {
        return;
    }
    loop {
        let told = changed.notified();
        tokio::pin!(told);
        told.as_mut().enable();
        let Some(until) = busy() else {
            return;
        };
        let until = until.min(deadline);
        if tokio::time::timeout_at(until, told).await.is_err() && until == deadline {
            return;
        }
    }
}

/// The helper's hold on the waiting list: when it ends, for whatever reason (its runtime
/// shutting down included), everyone still waiting is woken and a later fan-out may
/// start a new helper.
struct Helper(Arc<Inner>);

impl Helper {
    fn finish(&self) {
        let rest: Vec<Wake> = {
            let mut waiting = lock(&self.0.waiting);
            self.0.helper.store(false, Ordering::Release);
            waiting.drain(..).collect()
        };
        rest.into_iter().for_each(Wake::wake);
        self.0.turned.notify_waiters();
    }
}

impl Drop for Helper {
    fn drop(&mut self) {
        self.finish();
    }
}

async fn helper(h: Helper) {
    loop {
        // After the event loop has polled its I/O: the tasks that made ready go first.
        tokio::task::yield_now().await;
        let turn: Vec<Wake> = {
            let mut waiting = lock(&h.0.waiting);
            if waiting.is_empty() {
                return;
            }
            let n = waiting.len().min(TURN);
            waiting.drain(..n).collect()
        };
        turn.into_iter().for_each(Wake::wake);
        h.0.turned.notify_waiters();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hub::queue::QueueLimits;
    use std::sync::atomic::AtomicUsize;

    struct Count(AtomicUsize);
    impl std::task::Wake for Count {
        fn wake(self: Arc<Self>) {
            self.0.fetch_add(1, Ordering::Relaxed);
        }
    }

    fn wakers(n: usize) -> (Arc<Count>, Vec<Wake>) {
        let c = Arc::new(Count(AtomicUsize::new(0)));
        let w = (0..n)
            .map(|_| Wake {
                waker: Waker::from(c.clone()),
                queue: Outbound::new(QueueLimits::default()),
            })
            .collect();
        (c, w)
    }

    #[test]
    fn without_an_event_loop_everyone_is_woken_at_once() {
        let wakes = Wakes::default();
        let (c, w) = wakers(3 * TURN + 5);
        wakes.wake(w);
        assert_eq!(c.0.load(Ordering::Relaxed), 3 * TURN + 5);
        assert_eq!(wakes.waiting(), 0);
    }

    #[tokio::test(flavor = "current_thread")]
    async fn a_big_fan_out_is_woken_a_turn_at_a_time_and_all_of_it() {
        let wakes = Wakes::default();
        let (c, w) = wakers(3 * TURN + 5);
        wakes.wake(w);
        assert_eq!(c.0.load(Ordering::Relaxed), TURN, "one turn now");
        assert_eq!(wakes.waiting(), 2 * TURN + 5);
        // A second fan-out meanwhile waits behind the first.
        let (c2, w2) = wakers(10);
        wakes.wake(w2);
        assert_eq!(c2.0.load(Ordering::Relaxed), 0, "behind those waiting");
        let mut turns = 0;
        while wakes.waiting() > 0 {
            let before = c.0.load(Ordering::Relaxed);
            tokio::task::yield_now().await;
            assert!(
                c.0.load(Ordering::Relaxed) - before <= TURN,
                "at most a turn"
            );
            turns += 1;
            assert!(turns < 100, "the helper makes progress");
        }
        assert_eq!(c.0.load(Ordering::Relaxed), 3 * TURN + 5);
        assert_eq!(c2.0.load(Ordering::Relaxed), 10);
    }

    fn soon() -> tokio::time::Instant {
        tokio::time::Instant::now() + Duration::from_secs(10)
    }

    /// `n` consumers whose queues each hold `depth` deliveries.
    fn deep(n: usize, depth: usize) -> (Arc<Count>, Vec<Wake>) {
        let (c, w) = wakers(n);
        for x in &w {
            for i in 0..depth {
                let p = crate::hub::publication::Publication::new(
                    i as u64 + 1,
                    crate::hub::publication::Payload::json("1"),
                );
                x.queue
                    .push(crate::hub::queue::Delivery::Publication {
                        channel: Arc::from("c"),
                        publication: Arc::new(p),
                    })
                    .unwrap();
            }
        }
        (c, w)
    }

    #[tokio::test(flavor = "current_thread")]
    async fn a_publisher_waits_while_the_subscriber_waiting_longest_is_that_deep() {
        let wakes = Arc::new(Wakes::default());
        let (_, w) = deep(TURN + 10, 2);
        wakes.wake(w);
        assert_eq!(wakes.waiting(), 10);
        assert_eq!(wakes.lag(), 2);
        // Shallower than the depth, or pacing off: no wait.
        use futures_util::FutureExt;
        assert!(wakes
            .pace(soon(), || wakes.lag() >= 3)
            .now_or_never()
            .is_some());
        // As deep: it waits for the turn that wakes those 10.
        let w2 = wakes.clone();
        let paced = tokio::spawn(async move {
            w2.pace(soon(), || w2.lag() >= 2).await;
            w2.waiting()
        });
        assert_eq!(paced.await.unwrap(), 0, "returned once nobody waited");
    }

    #[tokio::test(flavor = "current_thread", start_paused = true)]
    async fn a_publisher_waits_no_longer_than_the_bound() {
        let wakes = Wakes::default();
        let (_, w) = deep(5, 4);
        // Consumers waiting with no helper to wake them (as if its loop were stuck).
        lock(&wakes.inner.waiting).extend(w);
        wakes.inner.helper.store(true, Ordering::Release);
        let start = tokio::time::Instant::now();
        wakes
            .pace(start + Duration::from_millis(300), || wakes.lag() >= 4)
            .await;
        assert_eq!(start.elapsed(), Duration::from_millis(300));
        assert_eq!(wakes.waiting(), 5);
    }

    #[test]
    fn a_helper_dropped_with_its_runtime_wakes_those_left() {
        let wakes = Wakes::default();
        let (c, w) = wakers(2 * TURN);
        {
            let rt = tokio::runtime::Builder::new_current_thread()
                .build()
                .unwrap();
            // The helper is spawned but the runtime never runs it.
            rt.block_on(async { wakes.wake(w) });
            assert_eq!(c.0.load(Ordering::Relaxed), TURN);
        }
        assert_eq!(
            c.0.load(Ordering::Relaxed),
            2 * TURN,
            "woken when it dropped"
        );
        // And a later fan-out starts afresh.
        let (c2, w2) = wakers(TURN + 1);
        wakes.wake(w2);
        assert_eq!(c2.0.load(Ordering::Relaxed), TURN + 1);
    }
}
