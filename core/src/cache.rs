//! The two-level cache: L1 ([`Store`]) in front of the shared Redis L2 ([`L2`]).
//!
//! * Reads: L1 first (synchronous, no I/O); on a miss, L2 (one GET), whose entry is checked
//!   (envelope, full key), promoted into L1 and judged by the same rules.
//! * Writes: L1 at once, then L2 (one SET with a TTL from the entry's `expire`).
//! * Tags: invalidations are recorded atomically in Redis by a Lua script stamped with Redis'
//!   own clock; every instance mirrors the tag state in memory and follows the invalidation log
//!   in `refreshTags` (one round trip, usually empty), so reads cost no round trip for tags.
//! * Failures: every Redis call has a deadline and goes through the breaker; a failed read is a
//!   miss, a failed write leaves the entry L1-only, and an invalidation that cannot be recorded
//!   is applied locally at once and queued, in order, until Redis takes it (strict mode rejects
//!   instead). While invalidations are queued the instance does not follow the shared log, so its
//!   own invalidations are never forgotten by a resync.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use parking_lot::Mutex;

use crate::clock::SharedClock;
use crate::config::Config;
use crate::entry::{Entry, EntryMeta};
use crate::envelope::{self, Compression, EnvelopeMeta, Kind};
use crate::error::{Error, Result};
use crate::l1::RemovalHook;
use crate::l2::protocol::{self, Call};
use crate::l2::{L2Config, LogCursor, Refresh, L2};
use crate::metrics::Metrics;
use crate::resp::{self, Reply};
use crate::store::{Lookup, SetOutcome, Stats, Store};
use crate::tags::Durations;

/// How often the clock offset to Redis is re-measured.
pub const CLOCK_SYNC_INTERVAL: Duration = Duration::from_secs(30);

/// Readings of Redis' clock per synchronisation (the one with the shortest round trip is used).
const CLOCK_SAMPLES: usize = 3;

/// Two instances whose offsets to Redis agree within this many ms are on the same clock (the
/// offset is measured to about half a round trip): the writer's own `timestamp` is returned
/// unchanged, so a value written and read on one host round-trips exactly.
pub const SAME_CLOCK_MS: f64 = 1.0;

/// What [`Cache::start_get`] decided after an L1 miss.
#[derive(Debug)]
pub enum GetStep {
    /// Answered without a round trip (no L2, strict mode without a verified tag state, breaker
    /// open: the L1 copy or a miss).
    Done(Lookup),
    /// Send [`L2::get_command`] of the key as this call, then hand its reply to
    /// [`Cache::finish_get`].
    Send(Call),
}

/// What [`Cache::plan_set`] decided.
#[derive(Debug)]
pub enum SetPlan {
    /// Nothing to write to L2 (no L2, not stored, too large): the report is final.
    Done(SetReport),
    /// Stored in L1; send [`L2::set_command`] of `envelope[at..]` with `ttl` as `call`, then
    /// report its reply with [`Cache::finish_set`].
    Write {
        /// The L1 outcome.
        l1: SetOutcome,
        /// The L2 call (permit and deadline) to send it in.
        call: Call,
        /// The bytes to store, after the `at` bytes of headroom the caller asked for.
        envelope: Vec<u8>,
        /// Where the stored bytes start in `envelope`.
        at: usize,
        /// The entry's TTL in Redis.
        ttl: Duration,
    },
}

/// What happened to an entry on `set`, per level.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SetReport {
    /// The L1 outcome.
    pub l1: SetOutcome,
    /// The L2 outcome.
    pub l2: L2Write,
}

/// The L2 side of a `set`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum L2Write {
    /// No L2 configured (or the entry was not stored at all).
    None,
    /// Written to Redis.
    Written,
    /// Larger than `l2MaxValueBytes`: kept L1-only. `first` = first time in this process.
    TooLarge {
        /// First occurrence in this process (warn once).
        first: bool,
    },
    /// Redis did not take it (down, slow, breaker open): kept L1-only.
    Failed,
}

/// Counters of the L2 side.
#[derive(Debug, Default)]
struct L2Metrics {
    /// L2 reads whose entry was used (newer than any L1 copy, well-formed, not expired).
    pub hits: AtomicU64,
    /// L2 reads that found nothing.
    pub misses: AtomicU64,
    /// L2 reads that failed (timeout, unavailable, error reply).
    pub errors: AtomicU64,
    /// Values found in Redis that did not decode (garbage, truncated, other version).
    pub decode_errors: AtomicU64,
    /// Entries whose stored key differs (hash collision) or whose kind is not ours.
    pub foreign: AtomicU64,
    /// Entries written.
    pub writes: AtomicU64,
    /// Writes that failed.
    pub write_errors: AtomicU64,
    /// Entries too large for L2.
    pub too_large: AtomicU64,
    /// Invalidations recorded in Redis.
    pub invalidations: AtomicU64,
    /// Invalidations queued because Redis was unavailable.
    pub invalidations_queued: AtomicU64,
    /// Queued invalidations later delivered.
    pub invalidations_replayed: AtomicU64,
    /// Tag refreshes (round trips).
    pub refreshes: AtomicU64,
    /// Full resynchronisations of the tag state.
    pub resyncs: AtomicU64,
    /// Times the shared state was found lost (Redis restarted empty): L1 dropped.
    pub data_lost: AtomicU64,
}

/// `stats().l2`: a snapshot of [`L2Metrics`] and the L2's state.
#[derive(Debug, Clone, PartialEq)]
pub struct L2Stats {
    /// L2 reads whose entry was used.
    pub hits: u64,
    /// L2 reads that found nothing.
    pub misses: u64,
    /// L2 reads that failed (timeout, unavailable, error reply).
    pub errors: u64,
    /// Values found in Redis that did not decode (garbage, truncated, other version).
    pub decode_errors: u64,
    /// Entries whose stored key differs (hash collision) or whose kind is not ours.
    pub foreign: u64,
    /// Entries written.
    pub writes: u64,
    /// Writes that failed.
    pub write_errors: u64,
    /// Entries too large for L2.
    pub too_large: u64,
    /// Invalidations recorded in Redis.
    pub invalidations: u64,
    /// Invalidations queued because Redis was unavailable.
    pub invalidations_queued: u64,
    /// Queued invalidations later delivered.
    pub invalidations_replayed: u64,
    /// Invalidations still waiting for Redis.
    pub invalidations_pending: u64,
    /// Tag refreshes (round trips).
    pub refreshes: u64,
    /// Full resynchronisations of the tag state.
    pub resyncs: u64,
    /// Times the shared state was found lost (Redis restarted empty): L1 dropped.
    pub data_lost: u64,
    /// The circuit breaker: `"closed"`, `"open"` or `"half-open"`.
    pub breaker: &'static str,
    /// The estimated `redis clock − local clock` (ms).
    pub clock_offset_ms: f64,
}

struct Remote {
    l2: L2,
    cursor: Mutex<LogCursor>,
    refresh_gate: tokio::sync::Mutex<()>,
    refresh_requested: AtomicU64,
    refresh_completed: AtomicU64,
    pending: Mutex<VecDeque<(Vec<String>, Option<Durations>)>>,
    replay_gate: tokio::sync::Mutex<()>,
    compression: Compression,
    max_value: usize,
    strict: bool,
    /// The tag state is known to be current (last refresh succeeded, nothing queued).
    verified: AtomicBool,
    clock_synced: AtomicBool,
    warned_too_large: AtomicBool,
    metrics: L2Metrics,
}

/// L1 + optional L2, shared by every handler object of the process.
pub struct Cache {
    store: Store,
    remote: Option<Remote>,
}

impl std::fmt::Debug for Cache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Cache")
            .field("store", &self.store)
            .field("l2", &self.remote.is_some())
            .finish()
    }
}

impl Cache {
    /// Builds the cache. With `config.redis_url` set, `namespace` must be given (see
    /// [`crate::namespace::resolve`]); no I/O happens here.
    pub fn new(
        config: &Config,
        clock: SharedClock,
        on_removal: Option<RemovalHook>,
        namespace: Option<String>,
    ) -> Result<Self> {
        let store = Store::new(config, Arc::clone(&clock), on_removal);
        let remote = match (&config.redis_url, namespace) {
            (None, _) => None,
            (Some(_), None) => {
                return Err(Error::config(
                    "namespace",
                    "a namespace is required with Redis",
                ))
            }
            (Some(_), Some(namespace)) => {
                let max_value = usize::try_from(config.l2_max_value_bytes).unwrap_or(usize::MAX);
                let l2 = L2::with_clock(L2Config::from_config(config, namespace)?, clock)?;
                Some(Remote {
                    l2,
                    cursor: Mutex::new(LogCursor::default()),
                    refresh_gate: tokio::sync::Mutex::new(()),
                    refresh_requested: AtomicU64::new(0),
                    refresh_completed: AtomicU64::new(0),
                    pending: Mutex::new(VecDeque::new()),
                    replay_gate: tokio::sync::Mutex::new(()),
                    compression: Compression {
                        enabled: config.compress_min_bytes > 0,
                        threshold_bytes: usize::try_from(config.compress_min_bytes)
                            .unwrap_or(usize::MAX),
                    },
                    max_value,
                    strict: config.strict,
                    verified: AtomicBool::new(false),
                    clock_synced: AtomicBool::new(false),
                    warned_too_large: AtomicBool::new(false),
                    metrics: L2Metrics::default(),
                })
            }
        };
        Ok(Self { store, remote })
    }

    /// The L1 store.
    pub fn store(&self) -> &Store {
        &self.store
    }

    /// Whether an L2 is configured.
    pub fn has_l2(&self) -> bool {
        self.remote.is_some()
    }

    /// The L2, when configured.
    pub fn l2(&self) -> Option<&L2> {
        self.remote.as_ref().map(|r| &r.l2)
    }

    /// `stats().l2`, when configured.
    pub fn l2_stats(&self) -> Option<L2Stats> {
        let r = self.remote.as_ref()?;
        let m = &r.metrics;
        Some(L2Stats {
            hits: Metrics::read(&m.hits),
            misses: Metrics::read(&m.misses),
            errors: Metrics::read(&m.errors),
            decode_errors: Metrics::read(&m.decode_errors),
            foreign: Metrics::read(&m.foreign),
            writes: Metrics::read(&m.writes),
            write_errors: Metrics::read(&m.write_errors),
            too_large: Metrics::read(&m.too_large),
            invalidations: Metrics::read(&m.invalidations),
            invalidations_queued: Metrics::read(&m.invalidations_queued),
            invalidations_replayed: Metrics::read(&m.invalidations_replayed),
            invalidations_pending: r.pending.lock().len() as u64,
            refreshes: Metrics::read(&m.refreshes),
            resyncs: Metrics::read(&m.resyncs),
            data_lost: Metrics::read(&m.data_lost),
            breaker: r.l2.breaker().state().name(),
            clock_offset_ms: self.store.clock().offset(),
        })
    }

    /// The largest reply an L2 reader should accept: the largest envelope this cache writes
    /// (a bigger one is never ours). A reader bounded by it never buffers more than that,
    /// whatever the server sends (`resp::Reader::with_max_reply`).
    pub fn max_reply_bytes(&self) -> usize {
        self.remote
            .as_ref()
            .map_or(resp::DEFAULT_MAX_REPLY, |r| r.l2.max_reply_bytes())
    }

    /// Invalidations waiting for Redis.
    pub fn pending_invalidations(&self) -> usize {
        self.remote.as_ref().map_or(0, |r| r.pending.lock().len())
    }

    /// L1 statistics.
    pub fn stats(&self) -> Stats {
        self.store.stats()
    }

    /// `get` from L1 only (no I/O), judged with the request's soft tags (`timestamp <=
    /// getExpiration(softTags)` is a miss, as Next discards it): without L2, the whole read. In
    /// strict mode nothing is served while the tag state cannot be verified.
    pub fn get_local<S: AsRef<str>>(&self, key: &str, soft_tags: &[S]) -> Lookup {
        if self.unverified() {
            return Lookup::Miss;
        }
        match self.store.get(key) {
            Lookup::Hit { entry, .. } if self.store.soft_expired(&entry, soft_tags) => Lookup::Miss,
            lookup => lookup,
        }
    }

    /// Strict mode without a verified tag state: nothing is served.
    fn unverified(&self) -> bool {
        self.remote
            .as_ref()
            .is_some_and(|r| r.strict && !r.verified.load(Ordering::Acquire))
    }

    /// `get` from L1 when an L2 is configured: a hit only when the L1 copy is fresh. Anything
    /// else (absent, stale by a tag or by time, expired by a soft tag) is a miss so the caller
    /// asks L2 ([`Cache::get_remote`]), where another instance may already have stored the
    /// regenerated value: one regeneration for the fleet, not one per instance.
    pub fn get_fresh<S: AsRef<str>>(&self, key: &str, soft_tags: &[S]) -> Lookup {
        if self.remote.is_none() {
            return self.get_local(key, soft_tags);
        }
        if self.unverified() {
            return Lookup::Miss;
        }
        let Some(entry) = self.store.peek(key) else {
            return Lookup::Miss;
        };
        match self.store.judge(entry) {
            Lookup::Hit {
                entry,
                stale_by_tag: false,
            } if !self.store.soft_expired(&entry, soft_tags)
                && !self.store.past_revalidate(&entry) =>
            {
                Metrics::inc(&self.store.metrics().l1_hits);
                Lookup::Hit {
                    entry,
                    stale_by_tag: false,
                }
            }
            _ => Lookup::Miss,
        }
    }

    /// `get` after [`Cache::get_fresh`] missed: reads L2, keeps whichever of the L1 and
    /// L2 copies is newer (promoting the L2 one into L1), and judges it with the same rules,
    /// soft tags included. Never fails: any problem is a miss, or the L1 copy (counted). On the
    /// tokio transport; [`Cache::start_get`] and [`Cache::finish_get`] are its two halves, for
    /// any transport.
    pub async fn get_remote<S: AsRef<str>>(&self, key: &str, soft_tags: &[S]) -> Lookup {
        let Some(r) = &self.remote else {
            return self.store.get(key);
        };
        self.ensure_clock().await;
        match self.start_get(key, soft_tags) {
            GetStep::Done(lookup) => lookup,
            GetStep::Send(call) => {
                let reply = r.l2.carry(call, &r.l2.get_command(key)).await;
                self.finish_get(key, soft_tags, reply)
            }
        }
    }

    /// Whether the clock offset to Redis is known: L2 entries are stamped and read in Redis'
    /// clock, so a transport that cannot wait for [`Cache::sync_clock`] (the event loop's)
    /// leaves reads and writes to the runtime until then.
    pub fn clock_synced(&self) -> bool {
        self.remote
            .as_ref()
            .is_some_and(|r| r.clock_synced.load(Ordering::Acquire))
    }

    /// The first half of an L2 read after an L1 miss: what to send, or the answer at once.
    pub fn start_get<S: AsRef<str>>(&self, key: &str, soft_tags: &[S]) -> GetStep {
        let Some(r) = &self.remote else {
            return GetStep::Done(self.store.get(key));
        };
        if self.unverified() {
            return GetStep::Done(Lookup::Miss);
        }
        match r.l2.begin("get_entry") {
            Ok(call) => GetStep::Send(call),
            Err(e) => GetStep::Done(self.finish_remote(key, soft_tags, Err(e))),
        }
    }

    /// The second half: the reply to the `GET` (as [`protocol::Call::end`] judged it), read
    /// with [`Cache::finish_remote`]. Never fails.
    pub fn finish_get<S: AsRef<str>>(
        &self,
        key: &str,
        soft_tags: &[S],
        reply: Result<Reply>,
    ) -> Lookup {
        self.finish_remote(key, soft_tags, reply.and_then(protocol::judge_get))
    }

    /// The rest of [`Cache::get_remote`] once the L2 `GET` of `key` is done (`fetched`: its
    /// envelope, `None` for no such key, or the error): keeps the newer of the L1 and L2
    /// copies (promoting the L2 one), judges it. Never fails.
    pub fn finish_remote<S: AsRef<str>>(
        &self,
        key: &str,
        soft_tags: &[S],
        fetched: Result<Option<Bytes>>,
    ) -> Lookup {
        let Some(r) = &self.remote else {
            return self.store.get(key);
        };
        let local = self.store.peek(key);
        let remote = self.decode_remote(r, key, fetched);
        let newest = match (local, remote) {
            (None, None) => {
                Metrics::inc(&self.store.metrics().l1_misses);
                return Lookup::Miss;
            }
            (Some(l), None) => l,
            (Some(l), Some(rm)) if l.server_ts >= rm.server_ts => l,
            (_, Some(rm)) => {
                let rm = Arc::new(rm);
                // Promote: the next read of this key is an L1 hit.
                self.store.insert(Arc::clone(&rm));
                Metrics::inc(&r.metrics.hits);
                rm
            }
        };
        match self.store.judge(newest) {
            Lookup::Hit { entry, .. } if self.store.soft_expired(&entry, soft_tags) => {
                Metrics::inc(&self.store.metrics().l1_misses);
                Lookup::Miss
            }
            Lookup::Miss => {
                Metrics::inc(&self.store.metrics().l1_misses);
                Lookup::Miss
            }
            hit => hit,
        }
    }

    /// Checks the L2 copy of `key` (not judged, not promoted).
    fn decode_remote(
        &self,
        r: &Remote,
        key: &str,
        fetched: Result<Option<Bytes>>,
    ) -> Option<Entry> {
        let bytes = match fetched {
            Ok(Some(b)) => b,
            Ok(None) => {
                Metrics::inc(&r.metrics.misses);
                return None;
            }
            Err(_) => {
                Metrics::inc(&r.metrics.errors);
                return None;
            }
        };
        // Header first: a foreign or colliding value is rejected before its payload is
        // checksummed; a raw payload is then sliced out of the reply without a copy.
        let header = match envelope::decode_header(&bytes) {
            Ok(h) => h,
            Err(_) => {
                // Garbage under our key: a miss. It is left to its TTL; the next `set` of
                // this key overwrites it.
                Metrics::inc(&r.metrics.decode_errors);
                return None;
            }
        };
        if header.key != key || header.kind != Kind::of_key(key) {
            Metrics::inc(&r.metrics.foreign);
            return None;
        }
        let (server_ts, writer_ts) = (header.server_ts, header.timestamp);
        let (stale, expire, revalidate) = (header.stale, header.expire, header.revalidate);
        let tags: Vec<String> = header.tags.iter().map(|t| (*t).to_owned()).collect();
        let payload = if header.compressed {
            match header.finish(r.max_value) {
                Ok(d) => Bytes::from(d.payload),
                Err(_) => {
                    Metrics::inc(&r.metrics.decode_errors);
                    return None;
                }
            }
        } else {
            if header.payload_len > r.max_value || header.verify().is_err() {
                Metrics::inc(&r.metrics.decode_errors);
                return None;
            }
            bytes.slice(header.payload_range())
        };
        let offset = self.store.clock().offset();
        let writer_offset = server_ts - writer_ts;
        let timestamp = if (writer_offset - offset).abs() <= SAME_CLOCK_MS {
            writer_ts
        } else {
            // Into this instance's clock, where Next compares it (design notes §1).
            server_ts - offset
        };
        let meta = EntryMeta {
            tags,
            stale,
            timestamp,
            expire,
            revalidate,
        };
        // Fields from outside: out of range (whatever the checksum says) is a decode error;
        // `admit` validates them as it does a `set`'s.
        if !crate::clock::is_valid_timestamp_ms(server_ts) {
            Metrics::inc(&r.metrics.decode_errors);
            return None;
        }
        match self.store.admit(&meta) {
            Err(_) => {
                Metrics::inc(&r.metrics.decode_errors);
                return None;
            }
            Ok(Some(_)) => {
                Metrics::inc(&r.metrics.misses);
                return None;
            }
            Ok(None) => {}
        }
        Some(Entry::new(Arc::from(key), payload, meta, server_ts))
    }

    /// `set` in L1 only (synchronous).
    pub fn set_local(&self, key: &str, value: Bytes, meta: EntryMeta) -> Result<SetOutcome> {
        self.store.set(key, value, meta)
    }

    /// `set`: L1 at once, then L2. Only invalid metadata is an error; L2 trouble is reported in
    /// the [`SetReport`] and leaves the entry L1-only.
    pub async fn set(&self, key: &str, value: Bytes, meta: EntryMeta) -> Result<SetReport> {
        self.ensure_clock().await;
        // Room for the command's head, so our own connection sends the envelope where it lies.
        let headroom = self.remote.as_ref().map_or(0, |r| r.l2.set_headroom(key));
        match self.plan_set(key, value, meta, headroom)? {
            SetPlan::Done(report) => Ok(report),
            SetPlan::Write {
                l1,
                call,
                envelope,
                at,
                ttl,
            } => {
                let reply = match &self.remote {
                    Some(r) => r.l2.carry_set(call, key, envelope, at, ttl).await,
                    // `plan_set` plans a write only with an L2.
                    None => Err(Error::Internal("no L2".into())),
                };
                Ok(self.finish_set(l1, reply))
            }
        }
    }

    /// The first half of [`Cache::set`]: stores in L1 and, when the entry goes to L2 too,
    /// returns its envelope, TTL and call, for a transport to send ([`L2::set_command`], or
    /// [`L2::frame_set`] in place) and report with [`Cache::finish_set`]. The envelope is
    /// encoded after `headroom` bytes, where the caller may frame it without another copy.
    pub fn plan_set(
        &self,
        key: &str,
        value: Bytes,
        meta: EntryMeta,
        headroom: usize,
    ) -> Result<SetPlan> {
        let offset = self.store.clock().offset();
        let server_ts = meta.timestamp + offset;
        let l1 = match self.store.admit(&meta)? {
            Some(outcome) => {
                return Ok(SetPlan::Done(SetReport {
                    l1: outcome,
                    l2: L2Write::None,
                }))
            }
            None => self.store.insert(Arc::new(Entry::new(
                Arc::from(key),
                value.clone(),
                meta.clone(),
                server_ts,
            ))),
        };
        let Some(r) = &self.remote else {
            return Ok(SetPlan::Done(SetReport {
                l1,
                l2: L2Write::None,
            }));
        };
        // Kept out of L2 (counted, warned once): L1-only.
        let too_large = || {
            Metrics::inc(&r.metrics.too_large);
            let first = !r.warned_too_large.swap(true, Ordering::Relaxed);
            Ok(SetPlan::Done(SetReport {
                l1,
                l2: L2Write::TooLarge { first },
            }))
        };
        if value.len() > r.max_value {
            return too_large();
        }
        // With headroom the caller frames the envelope in place: leave room for its tail too.
        let spare = if headroom > 0 { L2::SET_TAIL_MAX } else { 0 };
        let envelope = match envelope::encode_after(
            vec![0; headroom],
            spare,
            &EnvelopeMeta {
                kind: Kind::of_key(key),
                key,
                tags: &meta.tags,
                timestamp: meta.timestamp,
                server_ts,
                stale: meta.stale,
                revalidate: meta.revalidate,
                expire: meta.expire,
                extra: &[],
            },
            &value,
            r.compression,
        ) {
            Ok(e) => e,
            Err(e) => return Err(Error::invalid_arg("entry", e.to_string())),
        };
        if envelope.len() - headroom > r.l2.max_reply_bytes() {
            // A huge key or tag list: readers would refuse the reply (see `max_reply_bytes`).
            return too_large();
        }
        let remaining_ms = meta.expires_at_ms() - self.store.clock().local_ms();
        // `L2::ttl_ms` clamps it to [1 ms, maxTtlSeconds] where the command is written.
        let ttl = crate::clock::duration_from_secs(remaining_ms / 1000.0);
        match r.l2.begin("set_entry") {
            Ok(call) => Ok(SetPlan::Write {
                l1,
                call,
                envelope,
                at: headroom,
                ttl,
            }),
            // Breaker open: L1-only.
            Err(e) => Ok(SetPlan::Done(self.finish_set(l1, Err(e)))),
        }
    }

    /// The second half of a set: counts the reply to the `SET` planned by [`Cache::plan_set`]
    /// (as [`protocol::Call::end`] judged it) and reports the set.
    pub fn finish_set(&self, l1: SetOutcome, reply: Result<Reply>) -> SetReport {
        let Some(r) = &self.remote else {
            return SetReport {
                l1,
                l2: L2Write::None,
            };
        };
        let written = reply.and_then(protocol::judge_set).is_ok();
        if written {
            Metrics::inc(&r.metrics.writes);
        } else {
            Metrics::inc(&r.metrics.write_errors);
        }
        SetReport {
            l1,
            l2: if written {
                L2Write::Written
            } else {
                L2Write::Failed
            },
        }
    }

    /// `updateTags` without L2 (synchronous).
    pub fn update_tags_local(&self, tags: &[String], durations: Option<Durations>) {
        self.store.update_tags(tags, durations);
    }

    /// `updateTags`: recorded atomically in Redis (stamped by Redis' clock) and mirrored here.
    /// If Redis cannot take it, it is applied locally at once and queued for delivery (strict
    /// mode: applied locally and rejected).
    pub async fn update_tags(&self, tags: &[String], durations: Option<Durations>) -> Result<()> {
        let Some(r) = &self.remote else {
            self.store.update_tags(tags, durations);
            return Ok(());
        };
        self.ensure_clock().await;
        // Earlier queued invalidations go first, in order.
        self.replay().await;
        let queued = !r.pending.lock().is_empty();
        if !queued {
            match r.l2.update_tags(tags, durations).await {
                Ok(update) => {
                    self.store.apply_tag_states(&update.states);
                    Metrics::add(&self.store.metrics().tags_updated, tags.len() as u64);
                    Metrics::inc(&r.metrics.invalidations);
                    return Ok(());
                }
                Err(e) => {
                    self.store.update_tags(tags, durations);
                    if r.strict {
                        return Err(e);
                    }
                }
            }
        } else {
            self.store.update_tags(tags, durations);
            if r.strict {
                return Err(Error::Unavailable(
                    "earlier invalidations are still waiting for Redis".into(),
                ));
            }
        }
        r.pending.lock().push_back((tags.to_vec(), durations));
        r.verified.store(false, Ordering::Release);
        Metrics::inc(&r.metrics.invalidations_queued);
        Ok(())
    }

    /// Delivers queued invalidations, oldest first; stops at the first failure.
    pub async fn replay(&self) {
        let Some(r) = &self.remote else { return };
        if r.pending.lock().is_empty() {
            return;
        }
        let _gate = r.replay_gate.lock().await;
        loop {
            let next = r.pending.lock().front().cloned();
            let Some((tags, durations)) = next else { break };
            match r.l2.update_tags(&tags, durations).await {
                Ok(update) => {
                    r.pending.lock().pop_front();
                    self.store.apply_tag_states(&update.states);
                    Metrics::inc(&r.metrics.invalidations_replayed);
                    Metrics::inc(&r.metrics.invalidations);
                }
                Err(_) => break,
            }
        }
    }

    /// `refreshTags`: brings the mirrored tag state up to date in (usually) one round trip.
    /// Concurrent callers share a read that started after they called. On the tokio
    /// transport; the steps ([`Cache::register_refresh`], [`Cache::start_refresh`],
    /// [`Cache::apply_refresh_reply`], [`Cache::end_refresh`]) are the same for any transport.
    pub async fn refresh_tags(&self) -> Result<()> {
        let Some(r) = &self.remote else { return Ok(()) };
        let ticket = self.register_refresh();
        let _gate = r.refresh_gate.lock().await;
        if r.refresh_completed.load(Ordering::Acquire) >= ticket {
            // A refresh that started after this call finished while we waited.
            return if r.strict && !r.verified.load(Ordering::Acquire) {
                Err(Error::Unavailable(
                    "tag state could not be refreshed".into(),
                ))
            } else {
                Ok(())
            };
        }
        self.ensure_clock().await;
        self.replay().await;
        let (covered, started) = self.start_refresh();
        let result = async {
            let mut cursor = started?;
            loop {
                let reply = r.l2.exchange("refresh", r.l2.refresh_command(&cursor));
                match self.apply_refresh_reply(reply.await)? {
                    None => return Ok(()),
                    Some(next) => cursor = next,
                }
            }
        };
        let result = result.await;
        self.end_refresh(covered, result)
    }

    /// Registers a `refreshTags` call: its ticket. The call is served by the first read of the
    /// log that starts after this ([`Cache::start_refresh`]).
    pub fn register_refresh(&self) -> u64 {
        self.remote.as_ref().map_or(0, |r| {
            r.refresh_requested.fetch_add(1, Ordering::AcqRel) + 1
        })
    }

    /// Starts a read of the log (the caller holds the refresh gate): how many registered calls
    /// it covers (for [`Cache::end_refresh`]), and the cursor to read from, or the error when
    /// invalidations of ours still wait for Redis (a resync would forget them).
    pub fn start_refresh(&self) -> (u64, Result<LogCursor>) {
        let Some(r) = &self.remote else {
            return (0, Ok(LogCursor::default()));
        };
        // Every call registered up to here is covered by the read that starts now.
        let covered = r.refresh_requested.load(Ordering::Acquire);
        if !r.pending.lock().is_empty() {
            return (
                covered,
                Err(Error::Unavailable(
                    "invalidations are waiting for Redis".into(),
                )),
            );
        }
        Metrics::inc(&r.metrics.refreshes);
        (covered, Ok(r.cursor.lock().clone()))
    }

    /// Applies the reply to a read of the log ([`L2::refresh_command`]): `Some(cursor)` when
    /// the batch was full and the next read goes from `cursor`.
    pub fn apply_refresh_reply(&self, reply: Result<Reply>) -> Result<Option<LogCursor>> {
        let Some(r) = &self.remote else {
            return Ok(None);
        };
        let more = self.apply_refresh(reply.and_then(crate::l2::parse_refresh)?);
        if !more {
            return Ok(None);
        }
        Metrics::inc(&r.metrics.refreshes);
        Ok(Some(r.cursor.lock().clone()))
    }

    /// Ends a refresh that covered `covered` calls with `result`: the tag state is verified
    /// (or not), and the calls' answer (an error only in strict mode).
    pub fn end_refresh(&self, covered: u64, result: Result<()>) -> Result<()> {
        let Some(r) = &self.remote else { return Ok(()) };
        r.refresh_completed.fetch_max(covered, Ordering::AcqRel);
        r.verified.store(result.is_ok(), Ordering::Release);
        match result {
            Err(e) if r.strict => Err(e),
            _ => Ok(()),
        }
    }

    /// The refresh gate without waiting, for a transport that cannot wait (the event loop's):
    /// `None` when another refresh holds it, or when the refresh needs the runtime first (the
    /// clock offset unknown, invalidations waiting to be replayed).
    pub fn try_refresh_gate(&'static self) -> Option<tokio::sync::MutexGuard<'static, ()>> {
        let r = self.remote.as_ref()?;
        if !r.clock_synced.load(Ordering::Acquire) || !r.pending.lock().is_empty() {
            return None;
        }
        r.refresh_gate.try_lock().ok()
    }

    /// Applies what a read of the invalidation log returned; `true` if there is more to read.
    fn apply_refresh(&self, refresh: Refresh) -> bool {
        let Some(r) = &self.remote else { return false };
        match refresh {
            Refresh::Incremental {
                cursor,
                changes,
                more,
            } => {
                self.store.apply_tag_states(&changes);
                *r.cursor.lock() = cursor;
                more
            }
            Refresh::Resync {
                cursor,
                all,
                data_lost,
            } => {
                Metrics::inc(&r.metrics.resyncs);
                if data_lost {
                    Metrics::inc(&r.metrics.data_lost);
                }
                self.store.replace_tag_states(&all, data_lost);
                *r.cursor.lock() = cursor;
                false
            }
        }
    }

    /// Measures the offset to Redis' clock once, if never done.
    async fn ensure_clock(&self) {
        let Some(r) = &self.remote else { return };
        if !r.clock_synced.load(Ordering::Acquire) {
            self.sync_clock().await;
        }
    }

    /// Re-measures `offset = redis_time − local_time` (error ≈ half a round trip).
    pub async fn sync_clock(&self) {
        let Some(r) = &self.remote else { return };
        // The best of a few readings, its offset's lower bound (see `ServerTime::offset_ms`).
        if let Ok((t, _)) = r.l2.best_server_time(CLOCK_SAMPLES).await {
            self.store.clock().set_offset(t.offset_ms());
            r.clock_synced.store(true, Ordering::Release);
        }
    }

    /// Delivers queued invalidations, waiting for Redis (and the breaker's probe) up to
    /// `deadline`; returns how many are still queued. For graceful shutdowns and tests.
    pub async fn flush(&self, deadline: Duration) -> usize {
        let until = tokio::time::Instant::now() + deadline;
        loop {
            self.replay().await;
            let left = self.pending_invalidations();
            let now = tokio::time::Instant::now();
            if left == 0 || now >= until {
                return left;
            }
            tokio::time::sleep((until - now).min(Duration::from_millis(50))).await;
        }
    }

    /// Background upkeep: deliver queued invalidations, re-measure the clock offset.
    pub async fn maintenance(&self, clock_due: bool) {
        self.replay().await;
        if clock_due {
            self.sync_clock().await;
        }
    }

    /// `getExpiration(tags)` (no I/O; `refreshTags` keeps the mirror current).
    pub fn get_expiration(&self, tags: &[String]) -> f64 {
        self.store.get_expiration(tags)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    //! The decisions `Cache` makes between L1 and L2, driven without a socket: `plan_set`
    //! hands back the envelope a transport would write, `finish_remote` is handed the reply.
    use super::*;
    use crate::clock::ManualClock;
    use crate::config::Options;
    use crate::envelope::{INCREMENTAL_KEY_PREFIX, MAGIC};

    const T0: f64 = 1_795_357_925_414.625;

    fn cache(clock: &ManualClock, l2_max_value: u64) -> Cache {
        let config = Options {
            redis_url: Some("redis://127.0.0.1:1".into()),
            l2_max_value_bytes: Some(l2_max_value),
            compress_min_bytes: Some(0),
            ..Default::default()
        }
        .resolve()
        .unwrap();
        Cache::new(&config, Arc::new(clock.clone()), None, Some("unit".into())).unwrap()
    }

    fn meta(revalidate: f64) -> EntryMeta {
        EntryMeta {
            tags: vec!["t".into()],
            stale: 30.0,
            timestamp: T0,
            expire: 3600.0,
            revalidate,
        }
    }

    /// The envelope `plan_set` would have a transport write for `key`.
    fn envelope(c: &Cache, key: &str, value: &[u8], m: EntryMeta) -> Bytes {
        match c
            .plan_set(key, Bytes::copy_from_slice(value), m, 0)
            .unwrap()
        {
            SetPlan::Write { envelope, at, .. } => Bytes::from(envelope).slice(at..),
            SetPlan::Done(r) => panic!("not written: {r:?}"),
        }
    }

    fn value(l: Lookup) -> Option<Bytes> {
        match l {
            Lookup::Hit { entry, .. } => Some(entry.value.clone()),
            Lookup::Miss => None,
        }
    }

    #[test]
    fn an_l2_reply_is_promoted_and_served_and_the_newer_copy_wins() {
        let clock = ManualClock::new(T0);
        let writer = cache(&clock, 1 << 20);
        let bytes = envelope(&writer, "k", b"from-l2", meta(900.0));
        let reader = cache(&clock, 1 << 20);
        assert_eq!(
            value(reader.finish_remote("k", &[] as &[&str], Ok(Some(bytes.clone())))).as_deref(),
            Some(&b"from-l2"[..])
        );
        // Promoted: a fresh L1 hit now, without L2.
        assert_eq!(
            value(reader.get_fresh("k", &[] as &[&str])).as_deref(),
            Some(&b"from-l2"[..])
        );
        // An older L2 copy never replaces a newer L1 one.
        clock.advance(10.0);
        let mut newer = meta(900.0);
        newer.timestamp = T0 + 10.0;
        reader
            .set_local("k", Bytes::from_static(b"newer-local"), newer)
            .unwrap();
        assert_eq!(
            value(reader.finish_remote("k", &[] as &[&str], Ok(Some(bytes)))).as_deref(),
            Some(&b"newer-local"[..])
        );
    }

    #[test]
    fn garbage_foreign_and_other_kinds_are_counted_misses() {
        let clock = ManualClock::new(T0);
        let c = cache(&clock, 1 << 20);
        let m = || c.l2_stats().unwrap();
        let mut garbage = MAGIC.to_vec();
        garbage.extend_from_slice(&[1, 0, 0, 0xff]);
        assert!(
            value(c.finish_remote("k", &[] as &[&str], Ok(Some(Bytes::from(garbage))))).is_none()
        );
        assert_eq!(m().decode_errors, 1);
        // Another key's envelope (a hash collision, or a misrouted reply): never its bytes.
        let other = envelope(&c, "other", b"not-yours", meta(900.0));
        assert!(value(c.finish_remote("k", &[] as &[&str], Ok(Some(other)))).is_none());
        assert_eq!(m().foreign, 1);
        // The same key string stored by the other handler is another entry.
        let incremental = format!("{INCREMENTAL_KEY_PREFIX}k");
        let inc = envelope(&c, &incremental, b"page", meta(900.0));
        assert!(value(c.finish_remote("k", &[] as &[&str], Ok(Some(inc.clone())))).is_none());
        assert_eq!(m().foreign, 2);
        assert_eq!(
            value(c.finish_remote(&incremental, &[] as &[&str], Ok(Some(inc)))).as_deref(),
            Some(&b"page"[..])
        );
        // A failed read is a counted error and a miss.
        assert!(value(c.finish_remote(
            "none",
            &[] as &[&str],
            Err(Error::Unavailable("down".into()))
        ))
        .is_none());
        assert_eq!(m().errors, 1);
    }

    #[test]
    fn without_l2_a_soft_tag_invalidated_after_the_write_is_a_miss() {
        let clock = ManualClock::new(T0);
        let config = Options::default().resolve().unwrap();
        let c = Cache::new(&config, Arc::new(clock.clone()), None, None).unwrap();
        c.set_local("k", Bytes::from_static(b"v"), meta(900.0))
            .unwrap();
        let soft = ["_N_T_/page"];
        assert!(value(c.get_local("k", &soft)).is_some());
        clock.advance(10.0);
        c.update_tags_local(&["_N_T_/page".to_owned()], None);
        // revalidatePath of the request's path: Next would discard it, so it is a miss ...
        assert!(value(c.get_local("k", &soft)).is_none());
        // ... for requests that carry that soft tag only.
        assert!(value(c.get_local("k", &[] as &[&str])).is_some());
    }

    #[test]
    fn an_l1_copy_past_its_revalidate_window_asks_l2() {
        let clock = ManualClock::new(T0);
        let c = cache(&clock, 1 << 20);
        c.set_local("k", Bytes::from_static(b"v"), meta(1.0))
            .unwrap();
        assert!(value(c.get_fresh("k", &[] as &[&str])).is_some());
        clock.advance(1_500.0);
        // Another instance may have regenerated it: not fresh here, the caller reads L2 ...
        assert!(value(c.get_fresh("k", &[] as &[&str])).is_none());
        // ... and with nothing newer there, the stale copy is served (Next regenerates it).
        assert_eq!(
            value(c.finish_remote("k", &[] as &[&str], Ok(None))).as_deref(),
            Some(&b"v"[..])
        );
    }

    #[test]
    fn replies_are_bounded_by_the_largest_envelope_written() {
        let clock = ManualClock::new(T0);
        let c = cache(&clock, 1000);
        assert_eq!(c.max_reply_bytes(), 1000 + 4 * 1024 * 1024);
        // A value over l2MaxValueBytes stays in L1 only.
        let plan = c
            .plan_set("big", Bytes::from(vec![7u8; 1001]), meta(900.0), 0)
            .unwrap();
        assert!(matches!(
            plan,
            SetPlan::Done(SetReport {
                l2: L2Write::TooLarge { first: true },
                ..
            })
        ));
        // So does a small value whose key alone would make an envelope no reader accepts.
        let huge_key = "k".repeat(5 * 1024 * 1024);
        let plan = c
            .plan_set(&huge_key, Bytes::from_static(b"v"), meta(900.0), 0)
            .unwrap();
        assert!(matches!(
            plan,
            SetPlan::Done(SetReport {
                l2: L2Write::TooLarge { .. },
                ..
            })
        ));
    }

    #[test]
    fn out_of_range_fields_from_redis_are_decode_errors_not_panics() {
        let clock = ManualClock::new(T0);
        let c = cache(&clock, 1 << 20);
        let m = || c.l2_stats().unwrap();
        for (field, v) in [
            ("expire", 1e300),
            ("server_ts", 1e300),
            ("revalidate", -1e300),
        ] {
            let mut bad = meta(900.0);
            let server_ts = if field == "server_ts" { v } else { T0 };
            match field {
                "expire" => bad.expire = v,
                "revalidate" => bad.revalidate = v,
                _ => {}
            }
            let env = envelope::encode(
                &EnvelopeMeta {
                    kind: Kind::USE_CACHE,
                    key: "k",
                    tags: &bad.tags,
                    timestamp: bad.timestamp,
                    server_ts,
                    stale: bad.stale,
                    revalidate: bad.revalidate,
                    expire: bad.expire,
                    extra: &[],
                },
                b"v",
                Compression::DISABLED,
            )
            .unwrap();
            assert!(
                value(c.finish_remote("k", &[] as &[&str], Ok(Some(Bytes::from(env))))).is_none(),
                "{field}"
            );
        }
        assert_eq!(m().decode_errors, 3);
    }
}
