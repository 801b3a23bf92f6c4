//! Wall-clock time in float milliseconds since the epoch, the unit Next uses for
//! `CacheEntry.timestamp` (`performance.timeOrigin + performance.now()`).
//!
//! The clock is injectable so expiry and tag rules are tested without sleeping.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// The largest timestamp accepted from outside (JS or Redis), in ms since the epoch: room for
/// "now + the longest lifetime" (a tag expiring "never" is stamped now + 1e12 s), far below
/// anything that overflows. Anything later is garbage, not a time.
pub const MAX_TIMESTAMP_MS: f64 = 1e16;

/// Whether `ms` is a timestamp this crate accepts from outside: finite, in `[0, MAX_TIMESTAMP_MS]`.
pub fn is_valid_timestamp_ms(ms: f64) -> bool {
    ms.is_finite() && (0.0..=MAX_TIMESTAMP_MS).contains(&ms)
}

/// `secs` as a [`Duration`], saturating: NaN and anything ≤ 0 give zero, anything too large for a
/// `Duration` gives [`Duration::MAX`]. `Duration::from_secs_f64` panics on those; this never
/// does, so a value read from outside can never abort the process through a conversion.
pub fn duration_from_secs(secs: f64) -> Duration {
    if secs.is_nan() || secs <= 0.0 {
        return Duration::ZERO;
    }
    Duration::try_from_secs_f64(secs).unwrap_or(Duration::MAX)
}

/// A source of "now" in milliseconds since the Unix epoch (fractional).
pub trait Clock: Send + Sync + std::fmt::Debug {
    /// The current time in ms since the epoch.
    fn now_ms(&self) -> f64;
}

/// The system's wall clock.
#[derive(Debug, Default, Clone, Copy)]
pub struct SystemClock;

/// Next's own clock: `performance.timeOrigin + performance.now()`, i.e. the wall clock read once
/// when the process (or worker) started, advanced by the monotonic clock. It drifts from the
/// wall clock as NTP slews it (up to 0.5 ms per second), so comparing Next's `timestamp`s with
/// wall-clock stamps could serve an entry made just before an invalidation as fresh. Anchored to
/// a reading of Next's clock, it advances with the same monotonic clock (`CLOCK_MONOTONIC`,
/// which both `Instant` and libuv's `uv_hrtime` read on Linux).
#[derive(Debug, Clone, Copy)]
pub struct MonotonicClock {
    anchor_ms: f64,
    anchor: std::time::Instant,
}

impl MonotonicClock {
    /// A clock that reads `now_ms` now.
    pub fn new(now_ms: f64) -> Self {
        Self::anchored(now_ms, std::time::Instant::now())
    }

    /// A clock that read `now_ms` at `at` (e.g. the midpoint of the `Instant`s taken around a
    /// reading of the reference clock).
    pub fn anchored(now_ms: f64, at: std::time::Instant) -> Self {
        Self {
            anchor_ms: now_ms,
            anchor: at,
        }
    }
}

impl Clock for MonotonicClock {
    fn now_ms(&self) -> f64 {
        self.anchor_ms + self.anchor.elapsed().as_secs_f64() * 1000.0
    }
}

impl Clock for SystemClock {
    fn now_ms(&self) -> f64 {
        match SystemTime::now().duration_since(UNIX_EPOCH) {
            Ok(d) => d.as_secs_f64() * 1000.0,
            // A clock set before 1970 is a broken machine; treat it as the epoch rather than panic.
            Err(_) => 0.0,
        }
    }
}

/// A clock that only moves when told to: for tests.
#[derive(Debug, Clone)]
pub struct ManualClock(Arc<AtomicU64>);

impl ManualClock {
    /// A manual clock starting at `start_ms`.
    pub fn new(start_ms: f64) -> Self {
        Self(Arc::new(AtomicU64::new(start_ms.to_bits())))
    }
    /// Sets the time.
    pub fn set(&self, ms: f64) {
        self.0.store(ms.to_bits(), Ordering::SeqCst);
    }
    /// Moves the time forward by `ms`.
    pub fn advance(&self, ms: f64) {
        self.set(self.now_ms() + ms);
    }
}

impl Clock for ManualClock {
    fn now_ms(&self) -> f64 {
        f64::from_bits(self.0.load(Ordering::SeqCst))
    }
}

/// A shared clock handle.
pub type SharedClock = Arc<dyn Clock>;

/// Local time plus an estimate of `redis_time − local_time`: the one clock domain in which
/// invalidation stamps and entry times are compared (design notes §1). With no Redis the offset
/// stays 0 and both domains are the local clock.
#[derive(Debug)]
pub struct OffsetClock {
    base: SharedClock,
    offset_bits: AtomicU64,
}

impl OffsetClock {
    /// A clock over `base` with offset 0.
    pub fn new(base: SharedClock) -> Self {
        Self {
            base,
            offset_bits: AtomicU64::new(0f64.to_bits()),
        }
    }
    /// Now on the local clock (the one Next uses for `timestamp`).
    pub fn local_ms(&self) -> f64 {
        self.base.now_ms()
    }
    /// Now in the shared (Redis) clock domain.
    pub fn server_ms(&self) -> f64 {
        self.base.now_ms() + self.offset()
    }
    /// The current estimate of `server − local` in ms.
    pub fn offset(&self) -> f64 {
        f64::from_bits(self.offset_bits.load(Ordering::Relaxed))
    }
    /// Replaces the estimate (ignores non-finite values).
    pub fn set_offset(&self, offset_ms: f64) {
        if offset_ms.is_finite() {
            self.offset_bits
                .store(offset_ms.to_bits(), Ordering::Relaxed);
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn duration_from_secs_saturates_instead_of_panicking() {
        use super::duration_from_secs;
        use std::time::Duration;
        assert_eq!(duration_from_secs(1.5), Duration::from_millis(1500));
        assert_eq!(duration_from_secs(f64::NAN), Duration::ZERO);
        assert_eq!(duration_from_secs(-1e300), Duration::ZERO);
        assert_eq!(duration_from_secs(1e300), Duration::MAX);
        assert_eq!(duration_from_secs(f64::INFINITY), Duration::MAX);
        assert!(super::is_valid_timestamp_ms(1_795_357_925_414.61));
        for bad in [f64::NAN, f64::INFINITY, -1.0, 1e300, 1e17] {
            assert!(!super::is_valid_timestamp_ms(bad), "{bad}");
        }
    }

    use super::*;

    #[test]
    fn the_monotonic_clock_starts_at_its_anchor_and_only_moves_forward() {
        // An anchor far from the wall clock: the clock follows the anchor, not the wall.
        let c = MonotonicClock::new(1_000.0);
        let a = c.now_ms();
        let b = c.now_ms();
        assert!((1_000.0..1_000.0 + 1_000.0).contains(&a), "{a}");
        assert!(b >= a);
        // Anchored 5 s ago: it has advanced by those 5 s, however the wall clock moved.
        let Some(earlier) =
            std::time::Instant::now().checked_sub(std::time::Duration::from_secs(5))
        else {
            return; // a machine up for less than 5 s
        };
        let d = MonotonicClock::anchored(1_000.0, earlier).now_ms() - 1_000.0;
        assert!((5_000.0..6_000.0).contains(&d), "{d}");
    }
}
