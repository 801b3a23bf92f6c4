//! Tag state and the invalidation rules of Next's `'use cache'` handlers.
//!
//! Mirrors the semantics of Next 16.4.6's built-in handler
//! (`next/dist/server/lib/cache-handlers/default.js` `updateTags`, and
//! `incremental-cache/tags-manifest.external.js` `areTagsExpired` / `areTagsStale`):
//!
//! * `updateTags(tags, durations)`: `stale = now`, and `expired = now + expire*1000` when
//!   `durations.expire` is given (stale-while-revalidate, hard expiry later);
//! * `updateTags(tags)` (no durations): `expired = now` (hard expiry now: read-your-writes for
//!   `updateTag`);
//! * an entry is *expired* by a tag when `timestamp < expired <= now`;
//! * an entry is *stale* by a tag when `stale > timestamp` (served once with `revalidate: -1`).
//!
//! Two deliberate differences from the built-in: stamps are not rounded to whole ms (the
//! built-in's `Math.round` can put an invalidation *before* an entry created in the same ms), and
//! `getExpiration` only counts expiries that have happened (`expired <= now`), as the contract's
//! reference implementation does, so a future expiry from `revalidateTag(t, profile)` on a soft
//! tag does not discard fresh entries early.
//!
//! The state is bounded: past `max_tags` records, the least recently updated are dropped and the
//! newest update time among the dropped ones becomes the *floor*: every entry created before
//! the floor is treated as expired. That is conservative (it may drop entries a dropped tag did
//! not cover) but never serves an entry an invalidation should have removed, and it keeps
//! memory bounded when `revalidatePath` invents a new `_N_T_` tag per URL.

use std::collections::HashMap;
use std::sync::Arc;

/// The invalidation state of one tag. Times are ms since the epoch.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct TagState {
    /// Entries created before this are stale (served once, then regenerated in background).
    pub stale: Option<f64>,
    /// Entries created before this are expired once this time has passed.
    pub expired: Option<f64>,
    /// When this record was last changed (for pruning).
    pub updated_at: f64,
}

/// What `updateTags` was given: `None` = no durations argument (expire now).
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct Durations {
    /// `durations.expire` in seconds, when present.
    pub expire: Option<f64>,
}

/// The tag → state map with the rules above.
#[derive(Debug)]
pub struct TagManifest {
    tags: HashMap<Arc<str>, TagState>,
    max_tags: usize,
    floor: f64,
}

/// Verdict of the tag rules for one entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TagVerdict {
    /// No tag affects the entry.
    Fresh,
    /// A tag was marked stale after the entry was created: serve with `revalidate: -1`.
    Stale,
    /// A tag expired the entry (or the entry is older than the prune floor): a miss.
    Expired,
}

impl TagManifest {
    /// An empty manifest that keeps at most `max_tags` records (at least 1).
    pub fn new(max_tags: usize) -> Self {
        Self {
            tags: HashMap::new(),
            max_tags: max_tags.max(1),
            floor: 0.0,
        }
    }

    /// Applies `updateTags(tags, durations)` at time `now`.
    pub fn update<S: AsRef<str>>(&mut self, tags: &[S], durations: Option<Durations>, now: f64) {
        for tag in tags {
            let tag = tag.as_ref();
            let mut state = self.tags.get(tag).copied().unwrap_or_default();
            match durations {
                Some(d) => {
                    state.stale = Some(now);
                    if let Some(expire) = d.expire {
                        state.expired = Some(now + expire * 1000.0);
                    }
                }
                None => state.expired = Some(now),
            }
            state.updated_at = now;
            self.tags.insert(Arc::from(tag), state);
        }
        self.prune();
    }

    /// Replaces the state of one tag (used when mirroring a shared store).
    pub fn set_state(&mut self, tag: &str, state: TagState) {
        self.tags.insert(Arc::from(tag), state);
        self.prune();
    }

    /// The state of one tag.
    pub fn get(&self, tag: &str) -> Option<TagState> {
        self.tags.get(tag).copied()
    }

    /// Number of tag records held.
    pub fn len(&self) -> usize {
        self.tags.len()
    }

    /// Whether no tag was ever invalidated (or all were pruned).
    pub fn is_empty(&self) -> bool {
        self.tags.is_empty()
    }

    /// Entries created before this time are treated as expired (see the module docs).
    pub fn floor(&self) -> f64 {
        self.floor
    }

    /// Drops every record, keeping the floor (used when the full state is re-read).
    pub fn clear_records(&mut self) {
        self.tags.clear();
    }

    /// Judges an entry created at `timestamp` with `tags`, at time `now`.
    pub fn verdict<S: AsRef<str>>(&self, tags: &[S], timestamp: f64, now: f64) -> TagVerdict {
        if timestamp < self.floor {
            return TagVerdict::Expired;
        }
        let mut stale = false;
        for tag in tags {
            if let Some(state) = self.tags.get(tag.as_ref()) {
                if let Some(expired) = state.expired {
                    if expired <= now && expired > timestamp {
                        return TagVerdict::Expired;
                    }
                }
                if let Some(s) = state.stale {
                    if s > timestamp {
                        stale = true;
                    }
                }
            }
        }
        if stale {
            TagVerdict::Stale
        } else {
            TagVerdict::Fresh
        }
    }

    /// `getExpiration(tags)`: the latest expiry among `tags` that has already happened, or 0.
    pub fn expiration<S: AsRef<str>>(&self, tags: &[S], now: f64) -> f64 {
        tags.iter()
            .filter_map(|t| self.tags.get(t.as_ref()).and_then(|s| s.expired))
            .filter(|&e| e <= now)
            .fold(0.0, f64::max)
    }

    fn prune(&mut self) {
        if self.tags.len() <= self.max_tags {
            return;
        }
        // Drop the least recently updated tenth (at least one) so pruning is amortised.
        let excess = self.tags.len() - self.max_tags;
        let drop = excess.max(self.max_tags / 10).min(self.tags.len());
        let mut by_age: Vec<(f64, Arc<str>)> = self
            .tags
            .iter()
            .map(|(k, v)| (v.updated_at, Arc::clone(k)))
            .collect();
        by_age.sort_by(|a, b| a.0.total_cmp(&b.0));
        for (updated_at, tag) in by_age.into_iter().take(drop) {
            self.floor = self.floor.max(updated_at);
            self.tags.remove(&tag);
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    const T0: f64 = 1_795_357_925_414.610_8;

    #[test]
    fn untouched_tags_leave_entries_fresh() {
        let m = TagManifest::new(100);
        assert_eq!(m.verdict(&["a"], T0, T0 + 1.0), TagVerdict::Fresh);
        assert_eq!(m.expiration(&["a"], T0), 0.0);
    }

    #[test]
    fn update_without_durations_expires_now() {
        let mut m = TagManifest::new(100);
        m.update(&["a"], None, T0 + 10.0);
        // Entry created before the invalidation: expired.
        assert_eq!(m.verdict(&["a"], T0, T0 + 10.0), TagVerdict::Expired);
        // Entry created after the invalidation: fresh.
        assert_eq!(m.verdict(&["a"], T0 + 10.5, T0 + 11.0), TagVerdict::Fresh);
        assert_eq!(m.expiration(&["x", "a"], T0 + 11.0), T0 + 10.0);
    }

    #[test]
    fn sub_millisecond_invalidation_is_not_rounded_away() {
        let mut m = TagManifest::new(100);
        // Built-in rounds `now` to 1000.0 here, which would miss the entry at 1000.3.
        m.update(&["a"], None, 1000.4);
        assert_eq!(m.verdict(&["a"], 1000.3, 1000.5), TagVerdict::Expired);
    }

    #[test]
    fn update_with_durations_is_stale_then_expires_later() {
        let mut m = TagManifest::new(100);
        m.update(&["a"], Some(Durations { expire: Some(60.0) }), T0 + 10.0);
        assert_eq!(m.verdict(&["a"], T0, T0 + 11.0), TagVerdict::Stale);
        assert_eq!(m.verdict(&["a"], T0 + 12.0, T0 + 13.0), TagVerdict::Fresh);
        // After the expire window the old entry is a miss.
        assert_eq!(
            m.verdict(&["a"], T0, T0 + 10.0 + 60_000.0),
            TagVerdict::Expired
        );
        // getExpiration does not report a future expiry.
        assert_eq!(m.expiration(&["a"], T0 + 11.0), 0.0);
        assert_eq!(m.expiration(&["a"], T0 + 70_010.0), T0 + 60_010.0);
    }

    #[test]
    fn durations_without_expire_keep_previous_expiry() {
        let mut m = TagManifest::new(100);
        m.update(&["a"], None, 100.0);
        m.update(&["a"], Some(Durations { expire: None }), 200.0);
        let s = m.get("a").unwrap();
        assert_eq!(s.stale, Some(200.0));
        assert_eq!(s.expired, Some(100.0));
    }

    #[test]
    fn expire_zero_duration_is_immediate() {
        let mut m = TagManifest::new(100);
        m.update(&["a"], Some(Durations { expire: Some(0.0) }), 100.0);
        assert_eq!(m.verdict(&["a"], 50.0, 100.0), TagVerdict::Expired);
    }

    #[test]
    fn expired_wins_over_stale_across_tags() {
        let mut m = TagManifest::new(100);
        m.update(
            &["s"],
            Some(Durations {
                expire: Some(100.0),
            }),
            100.0,
        );
        m.update(&["e"], None, 100.0);
        assert_eq!(m.verdict(&["s", "e"], 50.0, 101.0), TagVerdict::Expired);
        assert_eq!(m.verdict(&["s"], 50.0, 101.0), TagVerdict::Stale);
    }

    #[test]
    fn pruning_bounds_records_and_raises_floor() {
        let mut m = TagManifest::new(100);
        for i in 0..1000 {
            m.update(&[format!("_N_T_/p/{i}")], None, 1000.0 + i as f64);
        }
        assert!(m.len() <= 100, "len {}", m.len());
        assert!(m.floor() > 1000.0);
        // An entry older than the floor is treated as expired even with an unknown tag.
        assert_eq!(m.verdict(&["other"], 1001.0, 3000.0), TagVerdict::Expired);
        // A newer one is judged normally.
        assert_eq!(m.verdict(&["other"], 2500.0, 3000.0), TagVerdict::Fresh);
        // The most recent records survive.
        assert!(m.get("_N_T_/p/999").is_some());
    }
}
