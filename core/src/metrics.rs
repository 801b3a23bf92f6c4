//! Process-wide counters, exposed to JS through `stats()`.

use std::sync::atomic::{AtomicU64, Ordering};

/// Counters of one store. Relaxed atomics: they are statistics, not synchronisation.
#[derive(Debug, Default)]
pub struct Metrics {
    /// L1 hits.
    pub l1_hits: AtomicU64,
    /// L1 misses (absent, expired, expired by a tag).
    pub l1_misses: AtomicU64,
    /// Entries stored in L1.
    pub l1_sets: AtomicU64,
    /// Entries evicted from L1 for size.
    pub l1_evictions: AtomicU64,
    /// Entries not stored because `expire == 0` (dynamic).
    pub skipped_dynamic: AtomicU64,
    /// Entries not stored because they exceed the L1 bound.
    pub rejected_too_large: AtomicU64,
    /// Hits served with `revalidate: -1` because a tag was stale.
    pub stale_hits: AtomicU64,
    /// Misses because a tag expired the entry.
    pub expired_misses: AtomicU64,
    /// Tags invalidated through `updateTags`.
    pub tags_updated: AtomicU64,
}

impl Metrics {
    /// Adds one to a counter.
    pub fn inc(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }
    /// Adds `n` to a counter.
    pub fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }
    /// Reads a counter.
    pub fn read(counter: &AtomicU64) -> u64 {
        counter.load(Ordering::Relaxed)
    }
}
