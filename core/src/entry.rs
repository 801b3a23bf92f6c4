//! A cached `'use cache'` entry: Next's metadata plus the serialized RSC bytes.

use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};

use bytes::Bytes;
use std::sync::Arc;

use crate::error::{Error, Result};

/// `INFINITE_CACHE` in Next (`dist/lib/constants.js`): an `expire` meaning "never".
pub const INFINITE_CACHE_SECONDS: f64 = 4_294_967_294.0;

/// The largest lifetime (`stale`, `revalidate`, `expire`) accepted, in seconds: ~31 700 years,
/// far above Next's "never" ([`INFINITE_CACHE_SECONDS`]), far below what overflows a timestamp.
pub const MAX_LIFETIME_SECONDS: f64 = 1e12;

/// Bytes charged per entry on top of key, value and tags (the `Entry` struct, `Arc`s, the
/// moka node and hash slot), so that a flood of tiny entries is bounded too.
pub const ENTRY_OVERHEAD_BYTES: usize = 160;

/// Next's metadata of an entry (`CacheEntry` minus `value`). Times in ms, lifetimes in seconds.
#[derive(Debug, Clone, PartialEq)]
pub struct EntryMeta {
    /// The entry's tags (soft tags are never among them).
    pub tags: Vec<String>,
    /// Client stale time, in seconds.
    pub stale: f64,
    /// Creation time (ms since the epoch, float), on the clock of the instance that rendered it.
    pub timestamp: f64,
    /// Hard expiry, in seconds after `timestamp`; `0` = dynamic (never stored).
    pub expire: f64,
    /// Revalidation period, in seconds after `timestamp`.
    pub revalidate: f64,
}

impl EntryMeta {
    /// Checks the values Next could never send, so garbage does not enter the cache: the one
    /// rule for metadata from JS (`set`) and from Redis (an L2 read), so that whatever passes
    /// it can be used in arithmetic and `Duration` conversions without a further check.
    pub fn validate(&self) -> Result<()> {
        if !crate::clock::is_valid_timestamp_ms(self.timestamp) {
            return Err(Error::invalid_arg(
                "entry.timestamp",
                "must be a finite number of ms since the epoch, at most 1e16",
            ));
        }
        for (name, v) in [
            ("entry.stale", self.stale),
            ("entry.expire", self.expire),
            ("entry.revalidate", self.revalidate),
        ] {
            if !v.is_finite() || v.abs() > MAX_LIFETIME_SECONDS {
                return Err(Error::invalid_arg(
                    name,
                    "must be a finite number of seconds, at most 1e12 in size",
                ));
            }
        }
        if self.expire < 0.0 {
            return Err(Error::invalid_arg("entry.expire", "must not be negative"));
        }
        Ok(())
    }

    /// When the entry stops being servable at all [ms since epoch].
    pub fn expires_at_ms(&self) -> f64 {
        self.timestamp + self.expire * 1000.0
    }
}

static NEXT_ID: AtomicU64 = AtomicU64::new(1);

/// An entry held in L1. Immutable once built (but for L1's residency count); replaced as a
/// whole on `set`.
#[derive(Debug)]
pub struct Entry {
    /// Unique per entry object (never reused), so the binding can attach per-entry state.
    pub id: u64,
    /// Next's cache key (opaque UTF-8).
    pub key: Arc<str>,
    /// The serialized value, owned by Rust (refcounted: JS views share it without copying).
    pub value: Bytes,
    /// Next's metadata; `meta.timestamp` is on this instance's local clock.
    pub meta: EntryMeta,
    /// `meta.timestamp` in the shared (Redis) clock domain: what tag stamps are compared with.
    pub server_ts: f64,
    /// Times this entry was put into L1 minus times L1 reported it gone (see [`Entry::in_l1`]).
    residency: AtomicU32,
    /// Whether the binding handed this entry out before (see [`Entry::first_hand_out`]).
    handed_out: AtomicBool,
}

impl Entry {
    /// Builds an entry with a fresh id; `server_ts` is `meta.timestamp` in the shared clock.
    pub fn new(key: Arc<str>, value: Bytes, meta: EntryMeta, server_ts: f64) -> Self {
        Self {
            id: NEXT_ID.fetch_add(1, Ordering::Relaxed),
            key,
            value,
            meta,
            server_ts,
            residency: AtomicU32::new(0),
            handed_out: AtomicBool::new(false),
        }
    }

    /// True the first time it is called for this entry, false afterwards: lets the binding
    /// treat an entry read once (most first reads of a key) apart from one read again.
    pub fn first_hand_out(&self) -> bool {
        !self.handed_out.swap(true, Ordering::Relaxed)
    }

    /// Whether L1 holds this very entry (not merely one under its key), without a lookup:
    /// L1 counts each insert and each removal it reports. An entry that expired but was not
    /// yet swept still counts as held; its removal is reported when it is swept.
    pub fn in_l1(&self) -> bool {
        self.residency.load(Ordering::Acquire) > 0
    }

    /// Called by L1 before inserting this entry.
    pub(crate) fn entered_l1(&self) {
        self.residency.fetch_add(1, Ordering::AcqRel);
    }

    /// Called by L1 when it reports this entry removed (evicted, replaced, expired, invalidated).
    pub(crate) fn left_l1(&self) {
        // Saturating: a removal is never reported without its insert, but never wrap if it were.
        let _ = self
            .residency
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| n.checked_sub(1));
    }

    /// Bytes this entry is charged in L1: value + key + tags + fixed overhead.
    pub fn weight(&self) -> usize {
        let tags: usize = self.meta.tags.iter().map(|t| t.len() + 24).sum();
        self.value
            .len()
            .saturating_add(self.key.len())
            .saturating_add(tags)
            .saturating_add(ENTRY_OVERHEAD_BYTES)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn meta() -> EntryMeta {
        EntryMeta {
            tags: vec!["a".into()],
            stale: 300.0,
            timestamp: 1_795_357_925_414.61,
            expire: INFINITE_CACHE_SECONDS,
            revalidate: 900.0,
        }
    }

    #[test]
    fn validate_accepts_next_values_and_rejects_garbage() {
        assert!(meta().validate().is_ok());
        let mut m = meta();
        m.timestamp = f64::NAN;
        assert_eq!(m.validate().unwrap_err().code(), "STRATA_INVALID_ARG");
        let mut m = meta();
        m.expire = -1.0;
        assert!(m.validate().is_err());
        let mut m = meta();
        m.revalidate = f64::INFINITY;
        assert!(m.validate().is_err());
        let mut m = meta();
        m.revalidate = -1.0; // a handler may hand back -1; accepting it on set is harmless
        assert!(m.validate().is_ok());
        // Finite but absurd: would overflow a `Duration` (the expire = 1e300 abort of issue 11).
        for (field, v) in [("expire", 1e300), ("stale", -1e300), ("revalidate", 1e13)] {
            let mut m = meta();
            match field {
                "expire" => m.expire = v,
                "stale" => m.stale = v,
                _ => m.revalidate = v,
            }
            assert!(m.validate().is_err(), "{field} = {v}");
        }
        let mut m = meta();
        m.timestamp = 1e300;
        assert!(m.validate().is_err());
    }

    #[test]
    fn weight_counts_value_key_tags_and_overhead() {
        let e = Entry::new(
            Arc::from("k".repeat(10)),
            Bytes::from(vec![0u8; 100]),
            meta(),
            0.0,
        );
        assert_eq!(e.weight(), 100 + 10 + (1 + 24) + ENTRY_OVERHEAD_BYTES);
        let e2 = Entry::new(Arc::from("k"), Bytes::new(), meta(), 0.0);
        assert_ne!(e.id, e2.id);
    }

    #[test]
    fn infinite_expire_does_not_overflow() {
        let m = meta();
        assert!(m.expires_at_ms().is_finite());
        assert!(m.expires_at_ms() > m.timestamp + 1e12);
    }
}
