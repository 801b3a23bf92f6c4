//! Wall-clock time in float milliseconds since the epoch, the unit Next uses for
//! `CacheEntry.timestamp` (`performance.timeOrigin + performance.now()`).
//!
//! The clock is injectable so expiry and tag rules are tested without sleeping.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

/// A source of "now" in milliseconds since the Unix epoch (fractional).
pub trait Clock: Send + Sync + std::fmt::Debug {
    /// The current time in ms since the epoch.
    fn now_ms(&self) -> f64;
}

/// The system's wall clock.
#[derive(Debug, Default, Clone, Copy)]
pub struct SystemClock;

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
