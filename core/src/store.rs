//! The `'use cache'` store: L1 plus tag state, applying Next's rules on every read.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use parking_lot::RwLock;

use crate::clock::{OffsetClock, SharedClock};
use crate::config::Config;
use crate::entry::{Entry, EntryMeta};
use crate::error::Result;
use crate::l1::{RemovalHook, L1};
use crate::metrics::Metrics;
use crate::tags::{Durations, TagManifest, TagState, TagVerdict};

/// Result of a read.
#[derive(Debug, Clone)]
pub enum Lookup {
    /// Nothing servable.
    Miss,
    /// A servable entry; `stale_by_tag` = return it with `revalidate: -1`.
    Hit {
        /// The entry.
        entry: Arc<Entry>,
        /// A tag was marked stale after the entry was created.
        stale_by_tag: bool,
    },
}

/// What `set` did with an entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SetOutcome {
    /// Stored in L1.
    Stored,
    /// `expire == 0`: a dynamic entry Next regenerates on every read; not stored (as the
    /// built-in handler does in production).
    SkippedDynamic,
    /// Already past `timestamp + expire`: storing it would only serve misses.
    AlreadyExpired,
    /// Larger than the whole L1: not stored.
    TooLarge,
}

/// What `stats()` reports about L1 and the tag state: the counters' one definition (the
/// binding and `stats()` show these names as they are, in camelCase).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Stats {
    /// `stats().l1`.
    pub l1: L1Stats,
    /// `stats().tags`.
    pub tags: TagStats,
}

/// `stats().l1`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct L1Stats {
    /// Entries in L1.
    pub entries: u64,
    /// Bytes charged in L1.
    pub bytes: u64,
    /// The L1 bound.
    pub max_bytes: u64,
    /// L1 hits.
    pub hits: u64,
    /// L1 misses.
    pub misses: u64,
    /// Entries stored.
    pub sets: u64,
    /// Entries evicted for size.
    pub evictions: u64,
    /// Dynamic (`expire == 0`) entries skipped.
    pub skipped_dynamic: u64,
    /// Entries refused because larger than L1.
    pub rejected_too_large: u64,
}

/// `stats().tags`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TagStats {
    /// Tags invalidated.
    pub updated: u64,
    /// Tag records held.
    pub records: u64,
    /// Hits served stale because a tag of the entry was invalidated after it was written.
    pub stale_hits: u64,
    /// Misses because a tag expired the entry.
    pub expired_misses: u64,
}

/// The process-wide store.
pub struct Store {
    l1: L1,
    tags: RwLock<TagManifest>,
    clock: Arc<OffsetClock>,
    metrics: Arc<Metrics>,
    warned_too_large: AtomicBool,
    /// No entry may be served once older than this (ms): tag records are kept (in Redis and
    /// here) only that long, so an older entry could have missed an invalidation.
    max_age_ms: f64,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store").field("l1", &self.l1).finish()
    }
}

impl Store {
    /// A store for `config`, reading local time from `clock`; `on_removal` sees every entry id
    /// that leaves L1.
    pub fn new(config: &Config, clock: SharedClock, on_removal: Option<RemovalHook>) -> Self {
        let metrics = Arc::new(Metrics::default());
        let max_ttl = Duration::from_secs(config.max_ttl_seconds);
        Self {
            l1: L1::new(
                config.l1_max_bytes,
                max_ttl,
                Arc::clone(&clock),
                Arc::clone(&metrics),
                on_removal,
            ),
            tags: RwLock::new(TagManifest::new(
                usize::try_from(config.max_tags).unwrap_or(usize::MAX),
            )),
            clock: Arc::new(OffsetClock::new(clock)),
            metrics,
            warned_too_large: AtomicBool::new(false),
            max_age_ms: max_ttl.as_secs_f64() * 1000.0,
        }
    }

    /// The store's clocks (local, and shared with the offset estimate).
    pub fn clock(&self) -> &OffsetClock {
        &self.clock
    }

    /// The store's counters.
    pub fn metrics(&self) -> &Metrics {
        &self.metrics
    }

    /// `get(cacheKey)` from L1: the entry if servable now, applying expiry and tag rules.
    pub fn get(&self, key: &str) -> Lookup {
        let Some(entry) = self.l1.get(key) else {
            Metrics::inc(&self.metrics.l1_misses);
            return Lookup::Miss;
        };
        let lookup = self.judge(entry);
        match &lookup {
            Lookup::Hit { .. } => Metrics::inc(&self.metrics.l1_hits),
            Lookup::Miss => Metrics::inc(&self.metrics.l1_misses),
        }
        lookup
    }

    /// The L1 entry of `key`, without applying any rule.
    pub fn peek(&self, key: &str) -> Option<Arc<Entry>> {
        self.l1.get(key)
    }

    /// Whether Next would discard `entry` for the request's soft tags (`timestamp <=
    /// getExpiration(softTags)`), compared in the shared clock domain.
    pub fn soft_expired<S: AsRef<str>>(&self, entry: &Entry, soft_tags: &[S]) -> bool {
        if soft_tags.is_empty() {
            return false;
        }
        let expired = self
            .tags
            .read()
            .expiration(soft_tags, self.clock.server_ms());
        expired > 0.0 && entry.server_ts <= expired
    }

    /// Applies the expiry and tag rules to an entry held in L1 (dropping it when it can never
    /// be served again).
    pub fn judge(&self, entry: Arc<Entry>) -> Lookup {
        let server_now = self.clock.server_ms();
        if self.clock.local_ms() > entry.meta.expires_at_ms()
            || server_now - entry.server_ts > self.max_age_ms
        {
            self.l1.remove_if_id(&entry.key, entry.id);
            return Lookup::Miss;
        }
        let verdict =
            self.tags
                .read()
                .verdict(&entry.meta.tags, entry.server_ts, self.clock.server_ms());
        match verdict {
            TagVerdict::Expired => {
                self.l1.remove_if_id(&entry.key, entry.id);
                Metrics::inc(&self.metrics.expired_misses);
                Lookup::Miss
            }
            TagVerdict::Stale => {
                Metrics::inc(&self.metrics.stale_hits);
                Lookup::Hit {
                    entry,
                    stale_by_tag: true,
                }
            }
            TagVerdict::Fresh => Lookup::Hit {
                entry,
                stale_by_tag: false,
            },
        }
    }

    /// Whether `entry` is past its `revalidate` window on this instance's clock (Next would
    /// regenerate it): another instance may have stored the regenerated value in L2 already.
    pub fn past_revalidate(&self, entry: &Entry) -> bool {
        self.clock.local_ms() > entry.meta.timestamp + entry.meta.revalidate * 1000.0
    }

    /// Checks `meta` and decides whether it should be stored at all.
    pub fn admit(&self, meta: &EntryMeta) -> Result<Option<SetOutcome>> {
        meta.validate()?;
        if meta.expire == 0.0 {
            Metrics::inc(&self.metrics.skipped_dynamic);
            return Ok(Some(SetOutcome::SkippedDynamic));
        }
        if self.clock.local_ms() > meta.expires_at_ms() {
            return Ok(Some(SetOutcome::AlreadyExpired));
        }
        Ok(None)
    }

    /// `set(cacheKey, entry)` once the value's bytes are complete: stores in L1.
    pub fn set(&self, key: &str, value: Bytes, meta: EntryMeta) -> Result<SetOutcome> {
        if let Some(outcome) = self.admit(&meta)? {
            return Ok(outcome);
        }
        let server_ts = meta.timestamp + self.clock.offset();
        Ok(self.insert(Arc::new(Entry::new(Arc::from(key), value, meta, server_ts))))
    }

    /// Stores a complete entry in L1 (a local `set`, or a newer entry read from L2). An entry
    /// larger than L1 is not stored, and the older one under its key is dropped: it is outdated
    /// and must not be served instead.
    pub fn insert(&self, entry: Arc<Entry>) -> SetOutcome {
        if !self.l1.fits(entry.weight()) {
            Metrics::inc(&self.metrics.rejected_too_large);
            self.l1.remove(&entry.key);
            return SetOutcome::TooLarge;
        }
        self.l1.insert(entry);
        Metrics::inc(&self.metrics.l1_sets);
        SetOutcome::Stored
    }

    /// True exactly once per process: the first time an entry was too large (warn once).
    pub fn first_too_large(&self) -> bool {
        !self.warned_too_large.swap(true, Ordering::Relaxed)
    }

    /// `updateTags(tags, durations)` applied to this instance's tag state, stamped now in the
    /// shared clock domain.
    pub fn update_tags<S: AsRef<str>>(&self, tags: &[S], durations: Option<Durations>) {
        let now = self.clock.server_ms();
        self.tags.write().update(tags, durations, now);
        Metrics::add(&self.metrics.tags_updated, tags.len() as u64);
    }

    /// Mirrors tag states read from the shared store (stamps in the shared clock domain).
    pub fn apply_tag_states<S: AsRef<str>>(&self, states: &[(S, TagState)]) {
        let mut tags = self.tags.write();
        for (tag, state) in states {
            tags.set_state(tag.as_ref(), *state);
        }
    }

    /// Replaces the whole tag state with `states`; with `drop_l1`, also empties L1 (the shared
    /// state was lost, so nothing cached before can be trusted).
    pub fn replace_tag_states<S: AsRef<str>>(&self, states: &[(S, TagState)], drop_l1: bool) {
        {
            let mut tags = self.tags.write();
            tags.clear_records();
            for (tag, state) in states {
                tags.set_state(tag.as_ref(), *state);
            }
        }
        if drop_l1 {
            self.l1.clear();
        }
    }

    /// `getExpiration(tags)`, in the local clock domain Next compares it in.
    pub fn get_expiration<S: AsRef<str>>(&self, tags: &[S]) -> f64 {
        let expired = self.tags.read().expiration(tags, self.clock.server_ms());
        if expired > 0.0 {
            expired - self.clock.offset()
        } else {
            0.0
        }
    }

    /// Counters and sizes (runs pending L1 maintenance first so sizes are exact).
    pub fn stats(&self) -> Stats {
        self.l1.run_pending_tasks();
        let m = &self.metrics;
        Stats {
            l1: L1Stats {
                entries: self.l1.entry_count(),
                bytes: self.l1.weighted_size(),
                max_bytes: self.l1.max_bytes(),
                hits: Metrics::read(&m.l1_hits),
                misses: Metrics::read(&m.l1_misses),
                sets: Metrics::read(&m.l1_sets),
                evictions: Metrics::read(&m.l1_evictions),
                skipped_dynamic: Metrics::read(&m.skipped_dynamic),
                rejected_too_large: Metrics::read(&m.rejected_too_large),
            },
            tags: TagStats {
                updated: Metrics::read(&m.tags_updated),
                records: self.tags.read().len() as u64,
                stale_hits: Metrics::read(&m.stale_hits),
                expired_misses: Metrics::read(&m.expired_misses),
            },
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::clock::{Clock, ManualClock};
    use crate::config::Options;
    use crate::entry::INFINITE_CACHE_SECONDS;

    const T0: f64 = 1_795_357_925_414.610_8;

    fn store(max_bytes: u64) -> (Store, ManualClock) {
        let clock = ManualClock::new(T0);
        let config = Options {
            l1_max_bytes: Some(max_bytes),
            ..Default::default()
        }
        .resolve()
        .unwrap();
        (Store::new(&config, Arc::new(clock.clone()), None), clock)
    }

    fn meta(tags: &[&str], timestamp: f64, revalidate: f64, expire: f64) -> EntryMeta {
        EntryMeta {
            tags: tags.iter().map(|t| t.to_string()).collect(),
            stale: 300.0,
            timestamp,
            expire,
            revalidate,
        }
    }

    fn bytes(n: usize) -> Bytes {
        Bytes::from(vec![7u8; n])
    }

    fn hit(l: Lookup) -> (Arc<Entry>, bool) {
        match l {
            Lookup::Hit {
                entry,
                stale_by_tag,
            } => (entry, stale_by_tag),
            Lookup::Miss => panic!("expected a hit"),
        }
    }

    #[test]
    fn round_trip_keeps_every_field() {
        let (s, _) = store(1 << 20);
        let m = meta(&["a", "b"], T0, 900.0, INFINITE_CACHE_SECONDS);
        assert_eq!(
            s.set("k", bytes(10), m.clone()).unwrap(),
            SetOutcome::Stored
        );
        let (e, stale) = hit(s.get("k"));
        assert!(!stale);
        assert_eq!(e.meta, m);
        assert_eq!(e.value.len(), 10);
        assert!(matches!(s.get("other"), Lookup::Miss));
    }

    #[test]
    fn expiry_is_timestamp_plus_expire() {
        let (s, clock) = store(1 << 20);
        s.set("k", bytes(1), meta(&[], T0, 1.0, 60.0)).unwrap();
        // Past revalidate but within expire: still served (Next does SWR itself).
        clock.advance(30_000.0);
        hit(s.get("k"));
        clock.advance(30_000.0);
        hit(s.get("k"));
        clock.advance(1.0);
        assert!(matches!(s.get("k"), Lookup::Miss));
    }

    #[test]
    fn dynamic_and_already_expired_entries_are_not_stored() {
        let (s, _) = store(1 << 20);
        assert_eq!(
            s.set("k", bytes(1), meta(&[], T0, 0.0, 0.0)).unwrap(),
            SetOutcome::SkippedDynamic
        );
        assert_eq!(
            s.set("k", bytes(1), meta(&[], T0 - 120_000.0, 1.0, 60.0))
                .unwrap(),
            SetOutcome::AlreadyExpired
        );
        assert!(matches!(s.get("k"), Lookup::Miss));
    }

    #[test]
    fn tag_invalidation_rules() {
        let (s, clock) = store(1 << 20);
        s.set("k", bytes(1), meta(&["t"], T0, 900.0, 3600.0))
            .unwrap();
        clock.advance(5.0);
        s.update_tags(&["t"], Some(Durations { expire: Some(60.0) }));
        let (_, stale) = hit(s.get("k"));
        assert!(
            stale,
            "a tag marked stale serves the entry once with revalidate -1"
        );
        // A regenerated entry (newer timestamp) is fresh.
        clock.advance(5.0);
        s.set("k", bytes(2), meta(&["t"], clock.now_ms(), 900.0, 3600.0))
            .unwrap();
        assert!(!hit(s.get("k")).1);
        // Immediate expiry.
        clock.advance(5.0);
        s.update_tags(&["t"], None);
        assert!(matches!(s.get("k"), Lookup::Miss));
        assert_eq!(s.stats().tags.expired_misses, 1);
    }

    #[test]
    fn get_expiration_over_soft_tags() {
        let (s, clock) = store(1 << 20);
        assert_eq!(s.get_expiration(&["_N_T_/", "_N_T_/index"]), 0.0);
        clock.advance(10.0);
        s.update_tags(&["_N_T_/index"], None);
        assert_eq!(s.get_expiration(&["_N_T_/", "_N_T_/index"]), T0 + 10.0);
    }

    #[test]
    fn byte_bound_evicts_and_stays_bounded() {
        let max = 1 << 20; // 1 MiB
        let (s, _) = store(max);
        for i in 0..100 {
            s.set(
                &format!("k{i}"),
                bytes(64 * 1024),
                meta(&[], T0, 900.0, 3600.0),
            )
            .unwrap();
        }
        let st = s.stats().l1;
        assert!(st.bytes <= max, "bytes {} > {}", st.bytes, max);
        assert!(
            st.entries < 100 && st.entries >= 10,
            "entries {}",
            st.entries
        );
        assert!(st.evictions > 0);
        // LRU: the most recent entry is there.
        hit(s.get("k99"));
    }

    #[test]
    fn oversized_values_are_refused_and_replace_nothing() {
        let (s, _) = store(1024);
        s.set("k", bytes(10), meta(&[], T0, 900.0, 3600.0)).unwrap();
        assert_eq!(
            s.set("k", bytes(4096), meta(&[], T0, 900.0, 3600.0))
                .unwrap(),
            SetOutcome::TooLarge
        );
        assert!(s.first_too_large());
        assert!(!s.first_too_large());
        // The older, smaller value for the key must not be served instead of the new one.
        assert!(matches!(s.get("k"), Lookup::Miss));
    }

    #[test]
    fn invalid_metadata_is_a_typed_error() {
        let (s, _) = store(1024);
        let err = s
            .set("k", bytes(1), meta(&[], f64::NAN, 1.0, 1.0))
            .unwrap_err();
        assert_eq!(err.code(), "STRATA_INVALID_ARG");
    }

    #[test]
    fn huge_keys_and_empty_values() {
        let (s, _) = store(8 << 20);
        let key = "x".repeat(1 << 20);
        s.set(&key, bytes(0), meta(&[], T0, 1.0, 10.0)).unwrap();
        assert_eq!(hit(s.get(&key)).0.value.len(), 0);
    }

    #[test]
    fn tag_rules_run_in_the_shared_clock_domain() {
        // This instance's clock is 2 s behind Redis (offset +2000).
        let (s, clock) = store(1 << 20);
        s.clock().set_offset(2000.0);
        s.set("k", bytes(1), meta(&["t"], T0, 900.0, 3600.0))
            .unwrap();
        // An invalidation stamped by Redis 10 ms after the entry (in Redis time T0 + 2010).
        s.apply_tag_states(&[(
            "t",
            TagState {
                stale: None,
                expired: Some(T0 + 2010.0),
                updated_at: T0 + 2010.0,
            },
        )]);
        clock.advance(20.0);
        // Compared in one domain, the entry predates the invalidation: expired. (Compared naively
        // with local time, T0 < T0 + 2010 would hold too; the reverse case is below.)
        assert!(matches!(s.get("k"), Lookup::Miss));
        // An entry created locally 10 ms after the invalidation (local T0 + 20 = Redis T0 + 2020)
        // is fresh, although its local timestamp is *before* the Redis stamp.
        s.set("k2", bytes(1), meta(&["t"], clock.now_ms(), 900.0, 3600.0))
            .unwrap();
        assert!(!hit(s.get("k2")).1);
        // getExpiration answers in the local domain Next compares it in.
        assert_eq!(s.get_expiration(&["t"]), T0 + 10.0);
    }

    #[test]
    fn entries_older_than_max_ttl_are_never_served() {
        let clock = ManualClock::new(T0);
        let config = Options {
            max_ttl_seconds: Some(60),
            ..Default::default()
        }
        .resolve()
        .unwrap();
        let s = Store::new(&config, Arc::new(clock.clone()), None);
        // expire says "never", but tag records older than max_ttl are gone: the entry can't be
        // judged any more.
        s.set(
            "k",
            bytes(1),
            meta(&["t"], T0, 900.0, INFINITE_CACHE_SECONDS),
        )
        .unwrap();
        clock.advance(59_000.0);
        hit(s.get("k"));
        clock.advance(2_000.0);
        assert!(matches!(s.get("k"), Lookup::Miss));
    }

    #[test]
    fn replacing_the_tag_state_can_drop_l1() {
        let (s, _) = store(1 << 20);
        s.set("k", bytes(1), meta(&[], T0, 900.0, 3600.0)).unwrap();
        s.replace_tag_states::<&str>(&[], false);
        hit(s.get("k"));
        s.replace_tag_states::<&str>(&[], true);
        assert!(matches!(s.get("k"), Lookup::Miss));
    }
}
