//! A circuit breaker for Redis calls (design notes §7).
//!
//! A Redis that keeps timing out must not cost every request a full deadline: after
//! [`BreakerConfig::failure_threshold`] consecutive *tripping* failures the breaker opens and
//! callers skip Redis (L1-only) for an open period. When the period is over, exactly **one**
//! caller is let through as a probe (half-open); every other caller keeps skipping Redis until
//! the probe reports. A successful probe closes the breaker; a failed one opens it again for
//! twice as long, up to [`BreakerConfig::open_max`]. (failsafe-rs lets every half-open call
//! through, which under load sends a burst at a Redis that is still down; a single probe
//! doesn't.)
//!
//! Which failures trip is the caller's decision: timeouts and connection errors mean "Redis is
//! unavailable" and should be reported with [`Permit::failure`]; an answer Redis gave (even an
//! error reply, or a value that fails to decode) shows Redis is up and is a
//! [`Permit::success`] as far as the breaker is concerned.
//!
//! Time is [`tokio::time::Instant`], so tests drive it with `#[tokio::test(start_paused = true)]`.
//!
//! ```
//! use std::time::Duration;
//! use strata_core::breaker::{Breaker, BreakerConfig};
//! # #[derive(Debug)] struct RedisError { connection: bool }
//! # async fn redis_get() -> Result<Vec<u8>, RedisError> { Ok(b"v".to_vec()) }
//! # #[tokio::main(flavor = "current_thread")] async fn main() {
//! let breaker = Breaker::new(BreakerConfig::default());
//! let reply = match breaker.try_acquire() {
//!     None => None, // open: serve from L1 only
//!     Some(permit) => match tokio::time::timeout(Duration::from_millis(50), redis_get()).await {
//!         Ok(Ok(bytes)) => {
//!             permit.success();
//!             Some(bytes)
//!         }
//!         // Redis is unreachable: this trips.
//!         Ok(Err(e)) if e.connection => {
//!             permit.failure();
//!             None
//!         }
//!         // Redis answered, with an error: it is up.
//!         Ok(Err(_)) => {
//!             permit.success();
//!             None
//!         }
//!         // The deadline passed: this trips.
//!         Err(_elapsed) => {
//!             permit.failure();
//!             None
//!         }
//!     },
//! };
//! assert_eq!(reply.as_deref(), Some(&b"v"[..]));
//! # }
//! ```

use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use tokio::sync::watch;
use tokio::time::Instant;

/// Tuning of a [`Breaker`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BreakerConfig {
    /// Consecutive tripping failures that open the breaker (values below 1 act as 1).
    ///
    /// Consecutive failures rather than a failure ratio over a window: Redis failures that
    /// matter here (down, partitioned, overloaded) make *every* call fail, so a streak detects
    /// them as fast as a ratio with no window to size, while a single success, proof that Redis
    /// answers, resets it.
    pub failure_threshold: u32,
    /// How long the breaker stays open the first time.
    pub open_base: Duration,
    /// Cap of the open period, which doubles after each failed probe (values below
    /// `open_base` act as `open_base`).
    pub open_max: Duration,
    /// How long a probe may stay unreported before it is presumed failed, so a probe whose
    /// future hangs without a deadline cannot keep the breaker half-open forever.
    pub probe_lease: Duration,
}

impl Default for BreakerConfig {
    /// 5 consecutive failures; open 1 s, doubling up to 30 s; a probe lease of 10 s.
    fn default() -> Self {
        BreakerConfig {
            failure_threshold: 5,
            open_base: Duration::from_secs(1),
            open_max: Duration::from_secs(30),
            probe_lease: Duration::from_secs(10),
        }
    }
}

/// The state of a [`Breaker`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum State {
    /// Redis is called normally.
    Closed,
    /// Redis is skipped until the open period ends. The breaker stays in this state after the
    /// period has ended until a caller asks: that caller becomes the probe.
    Open,
    /// One probe call is in flight; every other caller skips Redis.
    HalfOpen,
}

impl State {
    /// How `stats()` says it: `"closed"`, `"open"` or `"half-open"`.
    pub fn name(self) -> &'static str {
        match self {
            State::Closed => "closed",
            State::Open => "open",
            State::HalfOpen => "half-open",
        }
    }
}

/// Counters for `stats()`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BreakerStats {
    /// The current state.
    pub state: State,
    /// Tripping failures in a row so far (while closed).
    pub consecutive_failures: u32,
    /// How many times the breaker has opened (from closed, or again after a probe).
    pub opened: u64,
    /// How many calls were turned away (`try_acquire` returned `None`).
    pub rejected: u64,
    /// How many probes were started.
    pub probes: u64,
    /// The length of the current (or, when closed, the next) open period.
    pub open_for: Duration,
}

/// A Closed/Open/HalfOpen circuit breaker with a single half-open probe.
///
/// Cheap to clone (one `Arc`); clones share the same state. `Send + Sync`.
#[derive(Clone, Debug)]
pub struct Breaker {
    shared: Arc<Shared>,
}

#[derive(Debug)]
struct Shared {
    cfg: BreakerConfig,
    inner: Mutex<Inner>,
    // Sent while `inner` is locked, so receivers see transitions in the order they happened.
    state_tx: watch::Sender<State>,
}

#[derive(Debug)]
struct Inner {
    state: State,
    /// Bumped at every transition. A permit carries the epoch it was issued in and its report
    /// is ignored in any other epoch: a call that started before the breaker opened must not
    /// count against the open period or close the breaker in place of the probe.
    epoch: u64,
    consecutive_failures: u32,
    /// Open: when the open period ends. HalfOpen: when the probe's lease ends.
    deadline: Instant,
    open_for: Duration,
    opened: u64,
    rejected: u64,
    probes: u64,
}

/// Permission to make one Redis call, from [`Breaker::try_acquire`]. Report the outcome with
/// [`Permit::success`] or [`Permit::failure`].
///
/// Dropping a permit unreported (the call's future was cancelled, or it panicked) counts as
/// nothing for an ordinary call (a cancelled request says nothing about Redis, and counting it
/// would let client aborts open the breaker), but as a **failure** for the half-open probe, so
/// that the breaker is never left waiting on a probe that will not report, and so that a probe
/// cancelled because it hung is treated like the timeout it effectively was.
#[derive(Debug)]
#[must_use = "report the call's outcome with success() or failure()"]
pub struct Permit {
    shared: Arc<Shared>,
    epoch: u64,
    probe: bool,
    reported: bool,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Outcome {
    Success,
    Failure,
}

impl Breaker {
    /// A closed breaker.
    pub fn new(cfg: BreakerConfig) -> Self {
        let cfg = BreakerConfig {
            failure_threshold: cfg.failure_threshold.max(1),
            open_max: cfg.open_max.max(cfg.open_base),
            ..cfg
        };
        let (state_tx, _) = watch::channel(State::Closed);
        Breaker {
            shared: Arc::new(Shared {
                cfg,
                inner: Mutex::new(Inner {
                    state: State::Closed,
                    epoch: 0,
                    consecutive_failures: 0,
                    deadline: Instant::now(),
                    open_for: cfg.open_base,
                    opened: 0,
                    rejected: 0,
                    probes: 0,
                }),
                state_tx,
            }),
        }
    }

    /// The configuration in force (after clamping, see [`BreakerConfig`]).
    pub fn config(&self) -> BreakerConfig {
        self.shared.cfg
    }

    /// Ask to call Redis. `None` means the breaker is open (or a probe is in flight): skip
    /// Redis and degrade to L1-only for this call.
    pub fn try_acquire(&self) -> Option<Permit> {
        let now = Instant::now();
        let mut inner = self.shared.inner.lock();
        let probe = match inner.state {
            State::Closed => false,
            State::Open if now >= inner.deadline => {
                // The first caller after the open period becomes the probe.
                inner.probes += 1;
                inner.deadline = now + self.shared.cfg.probe_lease;
                self.shared.transition(&mut inner, State::HalfOpen);
                true
            }
            State::HalfOpen if now >= inner.deadline => {
                // The probe outlived its lease: presume it failed. This caller is turned away
                // like any other while open; the next open period ends in a fresh probe.
                self.shared.open_again(&mut inner, now);
                inner.rejected += 1;
                return None;
            }
            State::Open | State::HalfOpen => {
                inner.rejected += 1;
                return None;
            }
        };
        Some(Permit {
            shared: Arc::clone(&self.shared),
            epoch: inner.epoch,
            probe,
            reported: false,
        })
    }

    /// The current state.
    pub fn state(&self) -> State {
        self.shared.inner.lock().state
    }

    /// A receiver of state changes, for the L2 layer to log "Redis unavailable, degraded to
    /// L1-only" once on `Open` and to replay queued work on `Closed`.
    ///
    /// Like any `watch`, a slow receiver sees only the latest state, which is what those uses
    /// need; [`BreakerStats::opened`] counts every opening.
    pub fn subscribe(&self) -> watch::Receiver<State> {
        self.shared.state_tx.subscribe()
    }

    /// Counters and the current state.
    pub fn stats(&self) -> BreakerStats {
        let inner = self.shared.inner.lock();
        BreakerStats {
            state: inner.state,
            consecutive_failures: inner.consecutive_failures,
            opened: inner.opened,
            rejected: inner.rejected,
            probes: inner.probes,
            open_for: inner.open_for,
        }
    }
}

impl Shared {
    fn transition(&self, inner: &mut Inner, to: State) {
        inner.state = to;
        inner.epoch = inner.epoch.wrapping_add(1);
        self.state_tx.send_replace(to);
    }

    /// Closed → Open, for the base period.
    fn open(&self, inner: &mut Inner, now: Instant) {
        inner.open_for = self.cfg.open_base;
        inner.deadline = now + inner.open_for;
        inner.opened += 1;
        self.transition(inner, State::Open);
    }

    /// HalfOpen → Open after a failed (or lost) probe, for twice the last period, capped.
    fn open_again(&self, inner: &mut Inner, now: Instant) {
        inner.open_for = inner.open_for.saturating_mul(2).min(self.cfg.open_max);
        inner.deadline = now + inner.open_for;
        inner.opened += 1;
        self.transition(inner, State::Open);
    }

    fn report(&self, epoch: u64, outcome: Outcome) {
        let now = Instant::now();
        let mut inner = self.inner.lock();
        if inner.epoch != epoch {
            return; // issued before the last transition: stale, see `Inner::epoch`
        }
        match (inner.state, outcome) {
            (State::Closed, Outcome::Success) => inner.consecutive_failures = 0,
            (State::Closed, Outcome::Failure) => {
                inner.consecutive_failures = inner.consecutive_failures.saturating_add(1);
                if inner.consecutive_failures >= self.cfg.failure_threshold {
                    self.open(&mut inner, now);
                }
            }
            // Only the probe holds a permit of a half-open epoch.
            (State::HalfOpen, Outcome::Success) => {
                inner.consecutive_failures = 0;
                inner.open_for = self.cfg.open_base;
                self.transition(&mut inner, State::Closed);
            }
            (State::HalfOpen, Outcome::Failure) => self.open_again(&mut inner, now),
            // No permit is issued in an open epoch.
            (State::Open, _) => {}
        }
    }
}

impl Permit {
    /// Redis answered (including with an error reply or a value that failed to decode):
    /// resets the failure streak; closes the breaker if this was the probe.
    pub fn success(mut self) {
        self.finish(Outcome::Success);
    }

    /// The call timed out or the connection failed: counts towards opening; re-opens the
    /// breaker (for a longer period) if this was the probe.
    pub fn failure(mut self) {
        self.finish(Outcome::Failure);
    }

    /// Whether this permit is the half-open probe (e.g. to log the recovery attempt).
    pub fn is_probe(&self) -> bool {
        self.probe
    }

    fn finish(&mut self, outcome: Outcome) {
        if !self.reported {
            self.reported = true;
            self.shared.report(self.epoch, outcome);
        }
    }
}

impl Drop for Permit {
    fn drop(&mut self) {
        if self.probe {
            self.finish(Outcome::Failure);
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use std::sync::Barrier;
    use tokio::time::advance;

    const SEC: Duration = Duration::from_secs(1);
    const MS: Duration = Duration::from_millis(1);

    fn cfg() -> BreakerConfig {
        BreakerConfig {
            failure_threshold: 3,
            open_base: SEC,
            open_max: 4 * SEC,
            probe_lease: 10 * SEC,
        }
    }

    fn fail(b: &Breaker, n: u32) {
        for _ in 0..n {
            b.try_acquire().unwrap().failure();
        }
    }

    /// Open the breaker, wait out the period, and take the probe.
    async fn probe(b: &Breaker) -> Permit {
        if b.state() == State::Closed {
            fail(b, b.config().failure_threshold);
        }
        advance(b.stats().open_for).await;
        let p = b.try_acquire().unwrap();
        assert!(p.is_probe());
        p
    }

    #[test]
    fn is_send_sync_and_permits_are_static() {
        fn check<T: Send + Sync + 'static>() {}
        check::<Breaker>();
        check::<Permit>();
    }

    #[tokio::test(start_paused = true)]
    async fn stays_closed_under_the_threshold() {
        let b = Breaker::new(cfg());
        fail(&b, 2);
        assert_eq!(b.state(), State::Closed);
        assert_eq!(b.stats().consecutive_failures, 2);
        let p = b.try_acquire().unwrap();
        assert!(!p.is_probe());
        p.success();
    }

    #[tokio::test(start_paused = true)]
    async fn opens_at_the_threshold_and_rejects_while_open() {
        let b = Breaker::new(cfg());
        fail(&b, 3);
        assert_eq!(b.state(), State::Open);
        assert!(b.try_acquire().is_none());
        advance(SEC - MS).await;
        assert!(b.try_acquire().is_none());
        let s = b.stats();
        assert_eq!((s.opened, s.rejected, s.probes), (1, 2, 0));
    }

    #[tokio::test(start_paused = true)]
    async fn a_success_resets_the_failure_streak() {
        let b = Breaker::new(cfg());
        fail(&b, 2);
        b.try_acquire().unwrap().success();
        assert_eq!(b.stats().consecutive_failures, 0);
        fail(&b, 2);
        assert_eq!(b.state(), State::Closed);
        fail(&b, 1);
        assert_eq!(b.state(), State::Open);
    }

    #[tokio::test(start_paused = true)]
    async fn exactly_one_probe_after_the_open_period() {
        let b = Breaker::new(cfg());
        fail(&b, 3);
        advance(SEC).await;
        let p = b.try_acquire().unwrap();
        assert!(p.is_probe());
        assert_eq!(b.state(), State::HalfOpen);
        // Everyone else is turned away while the probe is in flight, however long it takes
        // (within its lease).
        assert!(b.try_acquire().is_none());
        advance(5 * SEC).await;
        assert!(b.try_acquire().is_none());
        assert!(b.clone().try_acquire().is_none());
        assert_eq!(b.stats().probes, 1);
        p.success();
    }

    #[test]
    fn concurrent_callers_get_one_probe() {
        // Real threads racing on real time: a zero open period makes the probe available at
        // once, so every thread asks for it at the same moment.
        let b = Breaker::new(BreakerConfig {
            failure_threshold: 1,
            open_base: Duration::ZERO,
            ..cfg()
        });
        fail(&b, 1);
        assert_eq!(b.state(), State::Open);
        let threads = 8;
        let barrier = Arc::new(Barrier::new(threads));
        let handles: Vec<_> = (0..threads)
            .map(|_| {
                let (b, barrier) = (b.clone(), Arc::clone(&barrier));
                std::thread::spawn(move || {
                    barrier.wait();
                    b.try_acquire()
                })
            })
            .collect();
        let permits: Vec<Permit> = handles
            .into_iter()
            .filter_map(|h| h.join().unwrap())
            .collect();
        assert_eq!(permits.len(), 1);
        assert!(permits[0].is_probe());
        assert_eq!(b.stats().rejected, threads as u64 - 1);
    }

    #[tokio::test(start_paused = true)]
    async fn probe_success_closes_and_resets_backoff() {
        let b = Breaker::new(cfg());
        probe(&b).await.failure(); // open for 2 s now
        assert_eq!(b.stats().open_for, 2 * SEC);
        probe(&b).await.success();
        assert_eq!(b.state(), State::Closed);
        let s = b.stats();
        assert_eq!((s.consecutive_failures, s.open_for), (0, SEC));
        // Back to normal: many permits at once, and the next opening is for the base period.
        let a = b.try_acquire().unwrap();
        let c = b.try_acquire().unwrap();
        a.success();
        c.success();
        fail(&b, 3);
        assert_eq!(b.stats().open_for, SEC);
    }

    #[tokio::test(start_paused = true)]
    async fn probe_failure_reopens_for_longer() {
        let b = Breaker::new(cfg());
        probe(&b).await.failure();
        assert_eq!(b.state(), State::Open);
        assert_eq!(b.stats().open_for, 2 * SEC);
        advance(2 * SEC - MS).await;
        assert!(b.try_acquire().is_none());
        advance(MS).await;
        let p = b.try_acquire().unwrap();
        assert!(p.is_probe());
        p.success();
        assert_eq!(b.state(), State::Closed);
    }

    #[tokio::test(start_paused = true)]
    async fn backoff_sequence_is_1_2_4_then_capped() {
        let b = Breaker::new(cfg());
        fail(&b, 3);
        let mut periods = vec![b.stats().open_for];
        for _ in 0..4 {
            advance(b.stats().open_for).await;
            b.try_acquire().unwrap().failure();
            periods.push(b.stats().open_for);
        }
        assert_eq!(periods, [SEC, 2 * SEC, 4 * SEC, 4 * SEC, 4 * SEC]);
        assert_eq!(b.stats().opened, 5);
    }

    #[tokio::test(start_paused = true)]
    async fn a_dropped_probe_counts_as_a_failure_and_does_not_wedge() {
        let b = Breaker::new(cfg());
        let p = probe(&b).await;
        drop(p);
        assert_eq!(b.state(), State::Open);
        assert_eq!(b.stats().open_for, 2 * SEC);
        advance(2 * SEC).await;
        let p = b.try_acquire().unwrap();
        assert!(p.is_probe());
        p.success();
        assert_eq!(b.state(), State::Closed);
    }

    #[tokio::test(start_paused = true)]
    async fn a_probe_cancelled_with_its_task_does_not_wedge() {
        let b = Breaker::new(cfg());
        fail(&b, 3);
        advance(SEC).await;
        let b2 = b.clone();
        let task = tokio::spawn(async move {
            let _permit = b2.try_acquire().unwrap();
            std::future::pending::<()>().await; // a Redis call that never returns
        });
        tokio::task::yield_now().await;
        assert_eq!(b.state(), State::HalfOpen);
        task.abort();
        assert!(task.await.unwrap_err().is_cancelled());
        assert_eq!(b.state(), State::Open);
    }

    #[tokio::test(start_paused = true)]
    async fn a_leaked_probe_expires_after_its_lease() {
        let b = Breaker::new(cfg());
        let leaked = probe(&b).await;
        advance(10 * SEC - MS).await;
        assert!(b.try_acquire().is_none());
        assert_eq!(b.state(), State::HalfOpen);
        advance(MS).await;
        // Lease over: presumed failed, re-opened with backoff.
        assert!(b.try_acquire().is_none());
        assert_eq!(b.state(), State::Open);
        assert_eq!(b.stats().open_for, 2 * SEC);
        advance(2 * SEC).await;
        let fresh = b.try_acquire().unwrap();
        assert!(fresh.is_probe());
        // The stale probe reporting late changes nothing; the fresh one decides.
        leaked.success();
        assert_eq!(b.state(), State::HalfOpen);
        fresh.success();
        assert_eq!(b.state(), State::Closed);
    }

    #[tokio::test(start_paused = true)]
    async fn a_dropped_ordinary_permit_counts_for_nothing() {
        let b = Breaker::new(cfg());
        fail(&b, 2);
        drop(b.try_acquire().unwrap());
        let s = b.stats();
        assert_eq!((s.state, s.consecutive_failures), (State::Closed, 2));
    }

    #[tokio::test(start_paused = true)]
    async fn reports_from_before_a_transition_are_ignored() {
        let b = Breaker::new(cfg());
        let late: Vec<Permit> = (0..4).map(|_| b.try_acquire().unwrap()).collect();
        fail(&b, 3);
        assert_eq!(b.state(), State::Open);
        let mut late = late.into_iter();
        // A late success does not close an open breaker ...
        late.next().unwrap().success();
        assert_eq!(b.state(), State::Open);
        // ... a late failure does not extend it ...
        late.next().unwrap().failure();
        assert_eq!(b.stats().opened, 1);
        advance(SEC).await;
        let p = b.try_acquire().unwrap();
        // ... and neither takes the place of the probe.
        late.next().unwrap().success();
        late.next().unwrap().failure();
        assert_eq!(b.state(), State::HalfOpen);
        p.success();
        assert_eq!(b.state(), State::Closed);
        assert_eq!(b.stats().consecutive_failures, 0);
    }

    #[tokio::test(start_paused = true)]
    async fn subscribers_see_every_transition_in_order() {
        let b = Breaker::new(cfg());
        let mut rx = b.subscribe();
        assert_eq!(*rx.borrow_and_update(), State::Closed);
        let mut seen = Vec::new();
        fail(&b, 3);
        rx.changed().await.unwrap();
        seen.push(*rx.borrow_and_update());
        let p = probe(&b).await;
        rx.changed().await.unwrap();
        seen.push(*rx.borrow_and_update());
        p.failure();
        rx.changed().await.unwrap();
        seen.push(*rx.borrow_and_update());
        probe(&b).await.success();
        // Two transitions since the last look: a watch shows the latest.
        rx.changed().await.unwrap();
        seen.push(*rx.borrow_and_update());
        assert_eq!(
            seen,
            [State::Open, State::HalfOpen, State::Open, State::Closed]
        );
        assert!(!rx.has_changed().unwrap());
    }

    #[test]
    fn config_is_clamped() {
        let b = Breaker::new(BreakerConfig {
            failure_threshold: 0,
            open_base: 5 * SEC,
            open_max: SEC,
            probe_lease: SEC,
        });
        assert_eq!(b.config().failure_threshold, 1);
        assert_eq!(b.config().open_max, 5 * SEC);
        fail(&b, 1);
        assert_eq!(b.state(), State::Open);
    }
}
