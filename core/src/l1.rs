//! L1: the in-process cache, a `moka` cache bounded in bytes with per-entry expiry.
//!
//! LRU eviction (not moka's default TinyLFU admission): a cache handler that silently refuses a
//! freshly `set` entry in favour of older popular ones would surprise Next, which expects to
//! read back what it just wrote.

use std::hash::{BuildHasher, Hash, Hasher};
use std::sync::Arc;
use std::time::{Duration, Instant};

use moka::notification::RemovalCause;
use moka::policy::{EvictionPolicy, Expiry};
use moka::sync::Cache;
use moka::Equivalent;

/// Hashes a key's bytes once per L1 call. moka hashes a key on every lookup, again for its
/// per-key insert lock, and every key again each time it rebuilds its table, which under churn
/// it does often: with SipHash over Next's ~150-byte keys that was ~5 % of a first read's CPU
/// (perf, 64 reads in flight). Keys therefore carry their hash (seeded per process, so keys a
/// client chooses cannot be made to collide), and moka's own hasher only mixes that number.
type KeyHasher = foldhash::quality::RandomState;
type TableHasher = foldhash::fast::RandomState;

/// A key as L1 stores it: the key and its hash.
#[derive(Clone, Debug)]
struct Key {
    hash: u64,
    key: Arc<str>,
}

impl Hash for Key {
    fn hash<H: Hasher>(&self, state: &mut H) {
        state.write_u64(self.hash);
    }
}

impl PartialEq for Key {
    fn eq(&self, other: &Self) -> bool {
        self.hash == other.hash && self.key == other.key
    }
}

impl Eq for Key {}

/// A borrowed key to look up with: hashes like the [`Key`] it finds.
struct Lookup<'a> {
    hash: u64,
    key: &'a str,
}

impl Hash for Lookup<'_> {
    fn hash<H: Hasher>(&self, state: &mut H) {
        state.write_u64(self.hash);
    }
}

impl Equivalent<Key> for Lookup<'_> {
    fn equivalent(&self, k: &Key) -> bool {
        self.hash == k.hash && *self.key == *k.key
    }
}

use crate::clock::SharedClock;
use crate::entry::Entry;
use crate::metrics::Metrics;

/// The longest an entry stays in L1 regardless of its `expire` (L1 is a working set, and moka's
/// timer wheel wants finite durations). Correctness does not depend on it: reads re-check
/// `timestamp + expire` against the clock.
pub const MAX_L1_TTL: Duration = Duration::from_secs(365 * 24 * 3600);

/// Called with the id of every entry that leaves L1 (evicted, replaced, expired, invalidated),
/// so the binding can release what it attached to the entry.
pub type RemovalHook = Arc<dyn Fn(u64) + Send + Sync>;

struct EntryExpiry {
    clock: SharedClock,
    max_ttl: Duration,
}

impl EntryExpiry {
    fn ttl(&self, entry: &Entry) -> Duration {
        ttl_for(entry.meta.expires_at_ms(), self.clock.now_ms()).min(self.max_ttl)
    }
}

/// How long an entry that hard-expires at `expires_at_ms` may live at time `now_ms`
/// (at most [`MAX_L1_TTL`]).
pub fn ttl_for(expires_at_ms: f64, now_ms: f64) -> Duration {
    let remaining_ms = expires_at_ms - now_ms;
    if !remaining_ms.is_finite() || remaining_ms <= 0.0 {
        return Duration::ZERO;
    }
    crate::clock::duration_from_secs(remaining_ms / 1000.0).min(MAX_L1_TTL)
}

impl Expiry<Key, Arc<Entry>> for EntryExpiry {
    fn expire_after_create(
        &self,
        _key: &Key,
        value: &Arc<Entry>,
        _created_at: Instant,
    ) -> Option<Duration> {
        Some(self.ttl(value))
    }

    fn expire_after_update(
        &self,
        _key: &Key,
        value: &Arc<Entry>,
        _updated_at: Instant,
        _duration_until_expiry: Option<Duration>,
    ) -> Option<Duration> {
        Some(self.ttl(value))
    }
}

/// The byte-bounded in-process cache.
pub struct L1 {
    cache: Cache<Key, Arc<Entry>, TableHasher>,
    hasher: KeyHasher,
    max_bytes: u64,
}

impl std::fmt::Debug for L1 {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("L1")
            .field("max_bytes", &self.max_bytes)
            .field("entries", &self.cache.entry_count())
            .finish()
    }
}

impl L1 {
    /// A cache holding at most `max_bytes` (as weighed by [`Entry::weight`]).
    pub fn new(
        max_bytes: u64,
        max_ttl: Duration,
        clock: SharedClock,
        metrics: Arc<Metrics>,
        on_removal: Option<RemovalHook>,
    ) -> Self {
        let cache = Cache::builder()
            .max_capacity(max_bytes)
            .eviction_policy(EvictionPolicy::lru())
            .weigher(|_k: &Key, v: &Arc<Entry>| -> u32 {
                u32::try_from(v.weight()).unwrap_or(u32::MAX)
            })
            .expire_after(EntryExpiry { clock, max_ttl })
            .eviction_listener(move |_k, v: Arc<Entry>, cause| {
                v.left_l1();
                if cause == RemovalCause::Size {
                    Metrics::inc(&metrics.l1_evictions);
                }
                if let Some(hook) = &on_removal {
                    hook(v.id);
                }
            })
            .build_with_hasher(TableHasher::default());
        Self {
            cache,
            hasher: KeyHasher::default(),
            max_bytes,
        }
    }

    /// The configured bound in bytes.
    pub fn max_bytes(&self) -> u64 {
        self.max_bytes
    }

    /// Whether an entry of `weight` bytes can be held at all.
    pub fn fits(&self, weight: usize) -> bool {
        (weight as u64) <= self.max_bytes && weight <= u32::MAX as usize
    }

    fn lookup<'a>(&self, key: &'a str) -> Lookup<'a> {
        Lookup {
            hash: self.hasher.hash_one(key),
            key,
        }
    }

    /// Looks an entry up (no rules applied).
    pub fn get(&self, key: &str) -> Option<Arc<Entry>> {
        self.cache.get(&self.lookup(key))
    }

    /// Stores an entry, replacing any previous one for the key.
    pub fn insert(&self, entry: Arc<Entry>) {
        let key = Key {
            hash: self.hasher.hash_one(&*entry.key),
            key: Arc::clone(&entry.key),
        };
        // Counted before moka can report the removal of this (or an earlier) residency.
        entry.entered_l1();
        self.cache.insert(key, entry);
    }

    /// Removes a key.
    pub fn remove(&self, key: &str) {
        self.cache.invalidate(&self.lookup(key));
    }

    /// Removes a key only if it still holds the entry `id` (a newer `set` may have replaced it).
    pub fn remove_if_id(&self, key: &str, id: u64) {
        // moka's sync::Cache has no compare-and-remove; the entry API gives one atomically.
        let _ = self
            .cache
            .entry(Key {
                hash: self.hasher.hash_one(key),
                key: Arc::from(key),
            })
            .and_compute_with(|current| match current {
                Some(e) if e.value().id == id => moka::ops::compute::Op::Remove,
                _ => moka::ops::compute::Op::Nop,
            });
    }

    /// Drops every entry.
    pub fn clear(&self) {
        self.cache.invalidate_all();
        self.cache.run_pending_tasks();
    }

    /// Runs moka's deferred maintenance (eviction, expiry) now.
    pub fn run_pending_tasks(&self) {
        self.cache.run_pending_tasks();
    }

    /// Number of entries (approximate until maintenance has run).
    pub fn entry_count(&self) -> u64 {
        self.cache.entry_count()
    }

    /// Bytes held (approximate until maintenance has run).
    pub fn weighted_size(&self) -> u64 {
        self.cache.weighted_size()
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::clock::ManualClock;
    use crate::entry::{EntryMeta, INFINITE_CACHE_SECONDS};
    use bytes::Bytes;

    #[test]
    fn ttl_is_remaining_time_clamped() {
        assert_eq!(ttl_for(1000.0, 2000.0), Duration::ZERO);
        assert_eq!(ttl_for(3000.0, 2000.0), Duration::from_secs(1));
        let far = 1.0 + INFINITE_CACHE_SECONDS * 1000.0;
        assert_eq!(ttl_for(far, 0.0), MAX_L1_TTL);
        assert_eq!(ttl_for(f64::NAN, 0.0), Duration::ZERO);
    }

    /// A 60 s entry of `value` under `key`.
    fn entry(key: &str, value: Vec<u8>) -> Arc<Entry> {
        let meta = EntryMeta {
            tags: vec![],
            stale: 0.0,
            timestamp: 0.0,
            expire: 60.0,
            revalidate: 30.0,
        };
        Arc::new(Entry::new(Arc::from(key), Bytes::from(value), meta, 0.0))
    }

    #[test]
    fn removal_hook_sees_replaced_entries() {
        let seen = Arc::new(parking_lot::Mutex::new(Vec::new()));
        let s2 = Arc::clone(&seen);
        let l1 = L1::new(
            1 << 20,
            MAX_L1_TTL,
            Arc::new(ManualClock::new(0.0)),
            Arc::new(Metrics::default()),
            Some(Arc::new(move |id| s2.lock().push(id))),
        );
        let a = entry("k", vec![1u8]);
        let first = a.id;
        l1.insert(a);
        l1.insert(entry("k", vec![2u8]));
        l1.run_pending_tasks();
        assert_eq!(*seen.lock(), vec![first]);
        assert_eq!(&*l1.get("k").unwrap().value, &[2u8]);
    }

    #[test]
    fn in_l1_follows_insert_replace_evict_and_remove() {
        let clock = Arc::new(ManualClock::new(0.0));
        let l1 = L1::new(
            4096,
            MAX_L1_TTL,
            clock.clone(),
            Arc::new(Metrics::default()),
            None,
        );
        let sized = |key: &str, len: usize| entry(key, vec![0u8; len]);
        let a = sized("a", 10);
        assert!(!a.in_l1());
        l1.insert(Arc::clone(&a));
        assert!(a.in_l1());

        // The same entry inserted again, then replaced by another: gone once, not twice.
        l1.insert(Arc::clone(&a));
        l1.run_pending_tasks();
        assert!(a.in_l1(), "re-inserting the held entry keeps it held");
        let a2 = sized("a", 10);
        l1.insert(Arc::clone(&a2));
        l1.run_pending_tasks();
        assert!(!a.in_l1(), "replaced");
        assert!(a2.in_l1());

        // Evicted for room (LRU: `a2` is the oldest), and removed explicitly.
        let big = sized("big", 3000);
        l1.insert(Arc::clone(&big));
        l1.run_pending_tasks();
        let big2 = sized("big2", 3000);
        l1.insert(Arc::clone(&big2));
        l1.run_pending_tasks();
        assert!(l1.get("a").is_none() && !a2.in_l1(), "evicted");
        assert!(l1.get("big").is_none() && !big.in_l1(), "evicted");
        assert!(big2.in_l1());
        l1.remove("big2");
        l1.run_pending_tasks();
        assert!(!big2.in_l1(), "removed");
        l1.insert(Arc::clone(&a));
        l1.remove_if_id("a", a.id);
        l1.run_pending_tasks();
        assert!(!a.in_l1(), "removed by id");
    }
}
