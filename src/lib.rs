//! The napi binding of strata-cache: a thin translation layer over `strata-core`.
//!
//! Only `#[napi]` exports, argument conversion, error mapping, the tokio runtime and the
//! zero-copy hand-off of stored bytes to JS live here; every rule lives in the core.
//!
//! This file holds the exports and their conversions. Beside it: `uv/` (the L2 path on Node's
//! event loop: libuv FFI, the connection and its request queue, settling), `bridge` (the way
//! back from the runtime), `js_entry` (entries as JS objects), `config` (options and
//! environment → [`Config`]), `clock` (Next's clock) and `panic` (no panic crosses into Node).

mod bridge;
mod clock;
mod config;
mod js_entry;
mod panic;
mod uv;

use std::sync::atomic::Ordering;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use napi::bindgen_prelude::*;
use napi_derive::napi;

use strata_core::cache::{Cache, L2Write, SetReport, CLOCK_SYNC_INTERVAL};
use strata_core::clock::SystemClock;
use strata_core::config::{redact_url, Config};
use strata_core::entry::EntryMeta;
use strata_core::store::{Lookup, SetOutcome};
use strata_core::tags::Durations;

use js_entry::{Chunks, RawValue};

/// The addon's own allocations (entries, Redis replies, moka's nodes) use mimalloc: a first
/// read allocates and frees a dozen small blocks, and glibc's malloc was a sixth of its CPU
/// (bench/RESULTS.md). Node's allocations are not affected.
#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// A stable error code, surfaced in JS as `err.code`.
#[derive(Debug, Clone, Copy)]
pub struct Code(&'static str);

impl AsRef<str> for Code {
    fn as_ref(&self) -> &str {
        self.0
    }
}

type JsResult<T> = napi::Result<T, Code>;

fn to_js(err: strata_core::Error) -> napi::Error<Code> {
    napi::Error::new(Code(err.code()), err.to_string())
}

fn internal(msg: impl Into<String>) -> napi::Error<Code> {
    napi::Error::new(Code("STRATA_INTERNAL"), msg.into())
}

/// A napi call's status as a result: anything but `napi_ok` is an internal error.
fn check(status: napi::sys::napi_status) -> JsResult<()> {
    if status == napi::sys::Status::napi_ok {
        Ok(())
    } else {
        Err(internal(format!("napi call failed with status {status}")))
    }
}

#[napi_derive::module_init]
fn init_runtime() {
    panic::install_hook();
    // Redis I/O runs on a small runtime of our own (2 named workers), never on Node's thread.
    if let Ok(rt) = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name("strata-io")
        .enable_all()
        .build()
    {
        create_custom_tokio_runtime(rt);
    }
}

struct Global {
    cache: Arc<Cache>,
    /// The configuration as resolved from options and environment (before the build-phase
    /// override), which later `init` calls are compared with.
    requested: Config,
    config: Config,
    namespace: Option<(String, String)>,
}

static GLOBAL: OnceLock<Global> = OnceLock::new();

fn global() -> JsResult<&'static Global> {
    GLOBAL
        .get()
        .ok_or_else(|| internal("strata-cache used before init(); this is a bug in index.js"))
}

/// Options accepted by `init`, as passed from JS (already type-checked by index.js).
#[napi(object)]
#[derive(Default)]
pub struct InitOptions {
    /// L1 bound in bytes.
    pub l1_max_bytes: Option<f64>,
    /// Bound on tag records in memory.
    pub max_tags: Option<f64>,
    /// Redis URL(s).
    pub redis: Option<String>,
    /// Namespace.
    pub namespace: Option<String>,
    /// Cap on entry lifetimes and tag retention (seconds).
    pub max_ttl_seconds: Option<f64>,
    /// Deadline of one Redis operation (ms).
    pub redis_timeout_ms: Option<f64>,
    /// Largest value written to Redis.
    pub l2_max_value_bytes: Option<f64>,
    /// Compression threshold (0 = off).
    pub compress_min_bytes: Option<f64>,
    /// Strict mode.
    pub strict: Option<bool>,
    /// Redis Cluster.
    pub cluster: Option<bool>,
    /// PEM file of the CA(s) trusted for `rediss://`.
    pub redis_ca_file: Option<String>,
    /// The app's `.next` directory (for the build id); default `<cwd>/.next`.
    pub dist_dir: Option<String>,
    /// Set by index.js during `next build`: stay L1-only (no Redis at build time).
    pub build_phase: Option<bool>,
    /// Testing only: shifts this process's clock by this many ms.
    pub clock_skew_ms: Option<f64>,
}

/// The configuration the process runs with (secrets redacted).
#[napi(object)]
pub struct ResolvedConfig {
    /// L1 bound in bytes.
    pub l1_max_bytes: f64,
    /// Bound on tag records in memory.
    pub max_tags: f64,
    /// Redis URL with credentials redacted, when L2 is on.
    pub redis: Option<String>,
    /// The namespace in use (with L2).
    pub namespace: Option<String>,
    /// Where the namespace came from.
    pub namespace_source: Option<String>,
    /// Cap on entry lifetimes (seconds).
    pub max_ttl_seconds: f64,
    /// Deadline of one Redis operation (ms).
    pub redis_timeout_ms: f64,
    /// Largest value written to Redis.
    pub l2_max_value_bytes: f64,
    /// Compression threshold.
    pub compress_min_bytes: f64,
    /// Strict mode.
    pub strict: bool,
    /// False when this call's options differ from the process's existing configuration (the
    /// first configuration wins: the store is per process).
    pub applied: bool,
}

fn describe(g: &Global, applied: bool) -> ResolvedConfig {
    let c = &g.config;
    let l2 = g.cache.has_l2();
    ResolvedConfig {
        l1_max_bytes: c.l1_max_bytes as f64,
        max_tags: c.max_tags as f64,
        redis: if l2 {
            c.redis_url
                .as_deref()
                .map(|u| u.split(',').map(redact_url).collect::<Vec<_>>().join(","))
        } else {
            None
        },
        namespace: g.namespace.as_ref().map(|(n, _)| n.clone()),
        namespace_source: g.namespace.as_ref().map(|(_, s)| s.clone()),
        max_ttl_seconds: c.max_ttl_seconds as f64,
        redis_timeout_ms: c.redis_timeout_ms as f64,
        l2_max_value_bytes: c.l2_max_value_bytes as f64,
        compress_min_bytes: c.compress_min_bytes as f64,
        strict: c.strict,
        applied,
    }
}

/// One check of `doctor`.
#[napi(object)]
pub struct DoctorCheck {
    /// What was checked.
    pub name: String,
    /// `"ok"`, `"warn"` or `"fail"`.
    pub status: String,
    /// What was found, and what to fix.
    pub detail: String,
}

/// What `doctor` found.
#[napi(object)]
pub struct DoctorReport {
    /// The worst status: `"ok"`, `"warn"` or `"fail"`.
    pub verdict: String,
    /// Every check, in order.
    pub checks: Vec<DoctorCheck>,
}

/// `strata-cache doctor`: resolves the configuration as `init` does (without creating the
/// store) and checks Redis (see `strata_core::doctor`). Never rejects: problems are checks.
#[napi(js_name = "doctor")]
pub async fn doctor(options: Option<InitOptions>) -> napi::Result<DoctorReport> {
    let o = options.unwrap_or_default();
    let report = match config::resolve_config(&o) {
        Err(e) => strata_core::doctor::Report {
            checks: vec![strata_core::doctor::Check {
                name: "config",
                status: strata_core::doctor::Status::Fail,
                detail: e.reason.clone(),
            }],
        },
        Ok(config) => {
            let namespace = config::resolve_namespace(&config, o.dist_dir.as_deref());
            panic::catching(strata_core::doctor::run(
                &config,
                namespace,
                Arc::new(SystemClock),
            ))
            .await
            .map_err(|()| napi::Error::from_reason("internal error (a panic, contained)"))?
        }
    };
    Ok(DoctorReport {
        verdict: report.verdict().to_string(),
        checks: report
            .checks
            .into_iter()
            .map(|c| DoctorCheck {
                name: c.name.to_owned(),
                status: c.status.to_string(),
                detail: c.detail,
            })
            .collect(),
    })
}

/// Resolves the configuration (code options over environment variables over defaults) and
/// creates the process-wide cache on first call. Later calls return the existing configuration.
#[napi]
pub fn init(js_env: Env, options: Option<InitOptions>) -> Result<ResolvedConfig, Code> {
    panic::guard(move || {
        let o = options.unwrap_or_default();
        let mut config = config::resolve_config(&o)?;
        if let Some(g) = GLOBAL.get() {
            return Ok(describe(g, g.requested == config));
        }
        let requested = config.clone();
        if o.build_phase == Some(true) {
            // `next build` runs in other processes, with the build machine's environment: nothing
            // it would write belongs to a deployment yet (design notes §8).
            config.redis_url = None;
        }
        let namespace = match &config.redis_url {
            None => None,
            Some(_) => {
                Some(config::resolve_namespace(&config, o.dist_dir.as_deref()).map_err(to_js)?)
            }
        };
        let clock = clock::process_clock(&js_env, o.clock_skew_ms);
        let cache = Cache::new(
            &config,
            clock,
            Some(Arc::new(js_entry::on_entry_removed)),
            namespace.as_ref().map(|(n, _)| n.clone()),
        )
        .map_err(to_js)?;
        let cache = Arc::new(cache);
        let mut created = false;
        let g = GLOBAL.get_or_init(|| {
            created = true;
            Global {
                cache: Arc::clone(&cache),
                requested: requested.clone(),
                config: config.clone(),
                namespace,
            }
        });
        if created && g.cache.has_l2() {
            let bg = Arc::clone(&g.cache);
            spawn(async move {
                let mut ticks: u64 = 0;
                let per_sync = CLOCK_SYNC_INTERVAL.as_secs().max(1);
                loop {
                    tokio::time::sleep(Duration::from_secs(1)).await;
                    ticks += 1;
                    bg.maintenance(ticks.is_multiple_of(per_sync)).await;
                }
            });
        }
        Ok(describe(g, created || g.requested == requested))
    })
}

/// Registers this thread's builder of entry objects, `(value, tags, stale, timestamp, expire,
/// revalidate) => ({ value, tags, stale, timestamp, expire, revalidate })` (faster than
/// building them through napi). Without one, the addon builds them itself.
#[napi(js_name = "setEntryFactory")]
pub fn set_entry_factory(env: Env, factory: js_entry::JsFunction) -> Result<(), Code> {
    panic::guard(move || js_entry::set_factory(&env, factory))
}

/// What store keys of the incremental handler start with (`strata_core::envelope::INCREMENTAL_KEY_PREFIX`),
/// so that the JS shim and the core agree on it from one definition.
#[napi(js_name = "incrementalKeyPrefix")]
pub fn incremental_key_prefix() -> String {
    strata_core::envelope::INCREMENTAL_KEY_PREFIX.to_owned()
}

/// Whether an L2 (Redis) is in use.
#[napi(js_name = "hasL2")]
pub fn has_l2() -> bool {
    GLOBAL.get().is_some_and(|g| g.cache.has_l2())
}

/// `get(cacheKey, softTags)` from L1 only, without I/O (`Cache::get_local`): the entry
/// object, or `null`. The entry object and its `value` Buffer are created once per stored entry
/// and shared by every hit (no copy per hit); `staleByTag` is true when a tag of the entry was
/// invalidated after it was written (the caller then reports `revalidate: -1`).
#[napi(js_name = "ucGet", ts_return_type = "Entry | null")]
pub fn uc_get(env: Env, key: String, soft_tags: Option<Vec<String>>) -> Result<RawValue, Code> {
    // Optional: the 'use cache' handler without Redis has none to pass (Next checks them), and
    // an absent argument costs less to convert than an empty array.
    read_l1(env, move |cache| {
        cache.get_local(&key, soft_tags.as_deref().unwrap_or_default())
    })
}

/// With Redis, the first step of `get(cacheKey, softTags)`: a fresh L1 copy, or `null` when
/// Redis must be asked ([`uc_get_remote`]) (`Cache::get_fresh`). Same entry objects as
/// [`uc_get`].
#[napi(js_name = "ucGetFresh", ts_return_type = "Entry | null")]
pub fn uc_get_fresh(env: Env, key: String, soft_tags: Vec<String>) -> Result<RawValue, Code> {
    read_l1(env, move |cache| cache.get_fresh(&key, &soft_tags))
}

/// A synchronous L1 read: its entry object, or `null`.
fn read_l1(env: Env, read: impl FnOnce(&Cache) -> Lookup) -> Result<RawValue, Code> {
    panic::guard(move || {
        panic::inject(panic::Place::Export);
        let g = global()?;
        js_entry::release_pending(&env);
        js_entry::lookup_value(&env, read(&g.cache))
    })
}

/// With Redis, after [`uc_get_fresh`] returned `null`: a promise of the newer of the L1 and L2 copies,
/// judged (the entry object, or `null`). Never rejects. The L2 read goes over the event loop
/// when it can (`src/uv/`), else through the runtime and the environment's bridge
/// (`bridge.rs`).
#[napi(js_name = "ucGetRemote", ts_return_type = "Promise<Entry | null>")]
pub fn uc_get_remote(env: Env, key: String, soft_tags: Vec<String>) -> Result<RawValue, Code> {
    panic::guard(move || {
        panic::inject(panic::Place::Export);
        let g = global()?;
        // (Entries L1 let go were released by `ucGetFresh`, which always runs first.)
        let (key, soft_tags) = match uv::try_get(&env, g, key, soft_tags)? {
            Ok(promise) => return Ok(promise),
            Err(args) => args,
        };
        let fut = async move {
            let lookup = g.cache.get_remote(&key, &soft_tags).await;
            let settle: bridge::Settle = Box::new(move |env| js_entry::lookup_value(env, lookup));
            settle
        };
        bridge::submit(&env, fut)
    })
}

/// The entry object a read returns (the type of what `ucGet` returns and `ucGetRemote`
/// resolves to; the objects are made by `js_entry`, through the factory `setEntryFactory`
/// registers).
#[napi(object, js_name = "Entry")]
pub struct JsEntry {
    /// The stored bytes (a Buffer over Rust memory, shared by every hit).
    pub value: Buffer,
    /// The entry's tags.
    pub tags: Vec<String>,
    /// Next's `stale` (seconds).
    pub stale: f64,
    /// When it was written (ms, this process's clock).
    pub timestamp: f64,
    /// Next's `expire` (seconds).
    pub expire: f64,
    /// Next's `revalidate` (seconds).
    pub revalidate: f64,
    /// A tag of the entry was invalidated after it was written: serve it once, stale.
    pub stale_by_tag: bool,
}

/// The names of a set's L1 outcomes, as [`JsSetReport`]'s `l1` says them; `too-large-first` the
/// first time in the process (the caller warns once).
const L1_NAMES: [&str; 5] = [
    "stored",
    "skipped-dynamic",
    "already-expired",
    "too-large",
    "too-large-first",
];

/// How many `(l1, l2)` outcome pairs there are (one shared report object each).
const SET_REPORTS: usize = L1_NAMES.len() * L2_NAMES.len();

/// The names of a set's L2 outcomes, as [`JsSetReport`]'s `l2` says them.
const L2_NAMES: [&str; 5] = ["none", "written", "too-large", "too-large-first", "failed"];

/// `first_too_large` is asked only for a too-large outcome (it consumes the warn-once flag).
fn l1_index(o: SetOutcome, first_too_large: impl FnOnce() -> bool) -> usize {
    match o {
        SetOutcome::Stored => 0,
        SetOutcome::SkippedDynamic => 1,
        SetOutcome::AlreadyExpired => 2,
        SetOutcome::TooLarge if first_too_large() => 4,
        SetOutcome::TooLarge => 3,
    }
}

fn l2_index(l2: L2Write) -> usize {
    match l2 {
        L2Write::None => 0,
        L2Write::Written => 1,
        L2Write::TooLarge { first: false } => 2,
        L2Write::TooLarge { first: true } => 3,
        L2Write::Failed => 4,
    }
}

/// What a set did, per level (the type of what `ucSet` returns and `ucSetRemote` resolves to;
/// the objects themselves are shared and frozen, see [`set_report_value`]).
#[napi(object, js_name = "SetReport")]
pub struct JsSetReport {
    /// `"stored"`, `"skipped-dynamic"` (`expire: 0`), `"already-expired"`, `"too-large"`
    /// (larger than L1), or `"too-large-first"` (the same, first time in the process).
    pub l1: String,
    /// `"none"` (no Redis, or not stored), `"written"`, `"too-large"` (over
    /// `l2MaxValueBytes`: L1-only), `"too-large-first"` (the same, first time), or `"failed"`
    /// (Redis did not take it: L1-only).
    pub l2: String,
}

/// The `{ l1, l2 }` object of a set's outcome: one frozen object per pair and environment,
/// shared, so reporting allocates nothing per write.
fn set_report_value(env: &Env, g: &Global, report: SetReport) -> JsResult<RawValue> {
    let l1 = l1_index(report.l1, || g.cache.store().first_too_large());
    let l2 = l2_index(report.l2);
    js_entry::set_report(env, l1 * L2_NAMES.len() + l2, L1_NAMES[l1], L2_NAMES[l2])
}

/// `set` in L1 then L2 (Redis): a promise of its `SetReport`. Only invalid metadata rejects;
/// Redis trouble leaves the entry L1-only and is reported in `l2`.
#[napi(js_name = "ucSetRemote", ts_return_type = "Promise<SetReport>")]
#[allow(clippy::too_many_arguments)]
pub fn uc_set_remote(
    env: Env,
    key: String,
    chunks: Chunks,
    tags: Vec<String>,
    stale: f64,
    timestamp: f64,
    expire: f64,
    revalidate: f64,
) -> Result<RawValue, Code> {
    panic::guard(move || {
        panic::inject(panic::Place::Export);
        let g = global()?;
        let meta = meta_of(tags, stale, timestamp, expire, revalidate);
        let (chunks, meta) = match uv::try_set(&env, g, &key, chunks, meta)? {
            uv::SetTry::Taken(promise) => return Ok(promise),
            uv::SetTry::NotTaken(chunks, meta) => (chunks, meta),
        };
        let fut = async move {
            let report = g.cache.set(&key, chunks.0, meta).await;
            let settle: bridge::Settle =
                Box::new(move |env| set_report_value(env, g, report.map_err(to_js)?));
            settle
        };
        bridge::submit(&env, fut)
    })
}

/// `refreshTags()`: a promise; follows the shared invalidation log (one round trip, usually
/// empty). Rejects only in strict mode.
#[napi(js_name = "ucRefreshTags", ts_return_type = "Promise<void>")]
pub fn uc_refresh_tags(env: Env) -> Result<RawValue, Code> {
    panic::guard(move || {
        let g = global()?;
        if let Some(promise) = uv::try_refresh(&env, g)? {
            return Ok(promise);
        }
        refresh_on_runtime(&env, g)
    })
}

/// `refreshTags` on the runtime (through the bridge).
fn refresh_on_runtime(env: &Env, g: &'static Global) -> Result<RawValue, Code> {
    let fut = async move {
        let result = g.cache.refresh_tags().await;
        let settle: bridge::Settle = Box::new(move |env| {
            result.map_err(to_js)?;
            js_entry::undefined(env)
        });
        settle
    };
    bridge::submit(env, fut)
}

/// Next's metadata as the set exports receive it (flat arguments: cheaper than an object).
fn meta_of(
    tags: Vec<String>,
    stale: f64,
    timestamp: f64,
    expire: f64,
    revalidate: f64,
) -> EntryMeta {
    EntryMeta {
        tags,
        stale,
        timestamp,
        expire,
        revalidate,
    }
}

/// `set(cacheKey, entry)` in L1 once the stream is read: copies the chunks once into Rust
/// memory. Returns its `SetReport` (`l2` is `"none"`).
#[napi(js_name = "ucSet", ts_return_type = "SetReport")]
#[allow(clippy::too_many_arguments)]
pub fn uc_set(
    env: Env,
    key: String,
    chunks: Chunks,
    tags: Vec<String>,
    stale: f64,
    timestamp: f64,
    expire: f64,
    revalidate: f64,
) -> Result<RawValue, Code> {
    panic::guard(move || {
        panic::inject(panic::Place::Export);
        let g = global()?;
        js_entry::release_pending(&env);
        let meta = meta_of(tags, stale, timestamp, expire, revalidate);
        let l1 = g.cache.set_local(&key, chunks.0, meta).map_err(to_js)?;
        set_report_value(
            &env,
            g,
            SetReport {
                l1,
                l2: L2Write::None,
            },
        )
    })
}

/// `durations` of `updateTags`.
#[napi(object)]
pub struct JsDurations {
    /// Seconds until hard expiry.
    pub expire: Option<f64>,
}

fn durations_of(d: Option<JsDurations>) -> JsResult<Option<Durations>> {
    match d {
        None => Ok(None),
        Some(d) => {
            if let Some(e) = d.expire {
                if !e.is_finite() || e < 0.0 {
                    return Err(to_js(strata_core::Error::invalid_arg(
                        "durations.expire",
                        format!("expected a non-negative number of seconds, got {e}"),
                    )));
                }
            }
            Ok(Some(Durations { expire: d.expire }))
        }
    }
}

/// `updateTags(tags, durations?)` without L2 (synchronous).
#[napi(js_name = "ucUpdateTags")]
pub fn uc_update_tags(tags: Vec<String>, durations: Option<JsDurations>) -> Result<(), Code> {
    panic::guard(move || {
        let g = global()?;
        g.cache.update_tags_local(&tags, durations_of(durations)?);
        Ok(())
    })
}

/// `updateTags(tags, durations?)` recorded in Redis (atomic, stamped by Redis): a promise.
/// Rejects only in strict mode when Redis cannot record it.
#[napi(js_name = "ucUpdateTagsRemote", ts_return_type = "Promise<void>")]
pub fn uc_update_tags_remote(
    env: Env,
    tags: Vec<String>,
    durations: Option<JsDurations>,
) -> Result<RawValue, Code> {
    panic::guard(move || {
        let g = global()?;
        let durations = durations_of(durations)?;
        let fut = async move {
            let result = g.cache.update_tags(&tags, durations).await;
            let settle: bridge::Settle = Box::new(move |env| {
                result.map_err(to_js)?;
                js_entry::undefined(env)
            });
            settle
        };
        bridge::submit(&env, fut)
    })
}

/// Delivers invalidations queued while Redis was unavailable, waiting up to `timeout_ms`;
/// resolves with how many are still queued (0 = all delivered, or no Redis).
#[napi(js_name = "flush", ts_return_type = "Promise<number>")]
pub fn flush(env: Env, timeout_ms: f64) -> Result<RawValue, Code> {
    panic::guard(move || {
        let g = global()?;
        let ms = if timeout_ms.is_finite() && timeout_ms > 0.0 {
            timeout_ms.min(3_600_000.0)
        } else {
            0.0
        };
        let fut = async move {
            let left = g
                .cache
                .flush(strata_core::clock::duration_from_secs(ms / 1000.0))
                .await;
            let left = u32::try_from(left).unwrap_or(u32::MAX);
            let settle: bridge::Settle = Box::new(move |env| js_entry::uint32(env, left));
            settle
        };
        bridge::submit(&env, fut)
    })
}

/// `getExpiration(tags)`.
#[napi(js_name = "ucGetExpiration")]
pub fn uc_get_expiration(tags: Vec<String>) -> Result<f64, Code> {
    panic::guard(move || Ok(global()?.cache.get_expiration(&tags)))
}

/// What `stats()` reports of the native cache: the core's counters under the core's names
/// (`strata_core::store::Stats`, `strata_core::cache::L2Stats`), plus the binding's own.
#[napi(object)]
pub struct NativeStats {
    /// `stats().l1`.
    pub l1: NativeL1Stats,
    /// `stats().tags`.
    pub tags: NativeTagStats,
    /// `stats().l2`, when Redis is configured.
    pub l2: Option<NativeL2Stats>,
    /// Internal errors (panics) contained at the boundary with Node: each became a miss or a
    /// `STRATA_INTERNAL` rejection. Non-zero is a bug worth reporting.
    pub internal_panics: f64,
}

/// `stats().l1` (`strata_core::store::L1Stats`, and the entry objects shared with JS).
#[napi(object)]
pub struct NativeL1Stats {
    /// Entries in L1.
    pub entries: f64,
    /// Bytes charged in L1.
    pub bytes: f64,
    /// The L1 bound.
    pub max_bytes: f64,
    /// L1 hits.
    pub hits: f64,
    /// L1 misses.
    pub misses: f64,
    /// Entries stored.
    pub sets: f64,
    /// Entries evicted for size.
    pub evictions: f64,
    /// `expire: 0` entries not stored.
    pub skipped_dynamic: f64,
    /// Entries refused because larger than L1.
    pub rejected_too_large: f64,
    /// Entry objects currently shared with JS.
    pub js_views: f64,
}

/// `stats().tags` (`strata_core::store::TagStats`).
#[napi(object)]
pub struct NativeTagStats {
    /// Tags invalidated.
    pub updated: f64,
    /// Tag records held.
    pub records: f64,
    /// Hits served stale because a tag of the entry was invalidated after it was written.
    pub stale_hits: f64,
    /// Misses because a tag expired the entry.
    pub expired_misses: f64,
}

/// `stats().l2` (`strata_core::cache::L2Stats`, and the event-loop transport's counters).
#[napi(object)]
pub struct NativeL2Stats {
    /// Reads that found a valid entry.
    pub hits: f64,
    /// Reads that found nothing.
    pub misses: f64,
    /// Reads that failed (timeout, unavailable).
    pub errors: f64,
    /// Values that did not decode (garbage, truncated, other version).
    pub decode_errors: f64,
    /// Entries under our key that were not ours (hash collision, other kind).
    pub foreign: f64,
    /// Entries written.
    pub writes: f64,
    /// Writes that failed.
    pub write_errors: f64,
    /// Entries too large for L2.
    pub too_large: f64,
    /// Invalidations recorded in Redis.
    pub invalidations: f64,
    /// Invalidations queued while Redis was unavailable.
    pub invalidations_queued: f64,
    /// Queued invalidations delivered later.
    pub invalidations_replayed: f64,
    /// Invalidations still waiting for Redis.
    pub invalidations_pending: f64,
    /// Tag refresh round trips.
    pub refreshes: f64,
    /// Full resynchronisations of the tag state.
    pub resyncs: f64,
    /// Times the shared state was found lost (L1 dropped).
    pub data_lost: f64,
    /// Circuit breaker state: "closed", "open" or "half-open".
    pub breaker: String,
    /// Estimated `redis clock − local clock` (ms).
    pub clock_offset_ms: f64,
    /// L2 reads made on Node's event loop (the direct path, see `src/uv/`).
    pub direct_reads: f64,
    /// Direct connections made for them.
    pub direct_connects: f64,
    /// `refreshTags` log reads made on Node's event loop.
    pub direct_refreshes: f64,
    /// Entry writes made on Node's event loop.
    pub direct_writes: f64,
}

/// Counters of the native cache (null before first use).
#[napi(js_name = "nativeStats")]
pub fn native_stats(env: Env) -> Option<NativeStats> {
    let g = GLOBAL.get()?;
    js_entry::release_pending(&env);
    let strata_core::store::Stats { l1, tags } = g.cache.stats();
    let n = |v: u64| v as f64;
    let l2 = g.cache.l2_stats().map(|s| NativeL2Stats {
        hits: n(s.hits),
        misses: n(s.misses),
        errors: n(s.errors),
        decode_errors: n(s.decode_errors),
        foreign: n(s.foreign),
        writes: n(s.writes),
        write_errors: n(s.write_errors),
        too_large: n(s.too_large),
        invalidations: n(s.invalidations),
        invalidations_queued: n(s.invalidations_queued),
        invalidations_replayed: n(s.invalidations_replayed),
        invalidations_pending: n(s.invalidations_pending),
        refreshes: n(s.refreshes),
        resyncs: n(s.resyncs),
        data_lost: n(s.data_lost),
        breaker: s.breaker.to_owned(),
        clock_offset_ms: s.clock_offset_ms,
        direct_reads: n(uv::DIRECT_READS.load(Ordering::Relaxed)),
        direct_connects: n(uv::DIRECT_CONNECTS.load(Ordering::Relaxed)),
        direct_refreshes: n(uv::DIRECT_REFRESHES.load(Ordering::Relaxed)),
        direct_writes: n(uv::DIRECT_WRITES.load(Ordering::Relaxed)),
    });
    Some(NativeStats {
        l1: NativeL1Stats {
            entries: n(l1.entries),
            bytes: n(l1.bytes),
            max_bytes: n(l1.max_bytes),
            hits: n(l1.hits),
            misses: n(l1.misses),
            sets: n(l1.sets),
            evictions: n(l1.evictions),
            skipped_dynamic: n(l1.skipped_dynamic),
            rejected_too_large: n(l1.rejected_too_large),
            js_views: js_entry::live_views() as f64,
        },
        tags: NativeTagStats {
            updated: n(tags.updated),
            records: n(tags.records),
            stale_hits: n(tags.stale_hits),
            expired_misses: n(tags.expired_misses),
        },
        l2,
        internal_panics: n(panic::PANICS.load(Ordering::Relaxed)),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn core_errors_keep_their_code_as_err_code() {
        for (e, code) in [
            (
                strata_core::Error::Timeout { op: "get", ms: 5 },
                "STRATA_TIMEOUT",
            ),
            (
                strata_core::Error::Unavailable("down".into()),
                "STRATA_UNAVAILABLE",
            ),
            (strata_core::Error::config("redis", "bad"), "STRATA_CONFIG"),
            (
                strata_core::Error::Internal("bug".into()),
                "STRATA_INTERNAL",
            ),
        ] {
            let message = e.to_string();
            let js = to_js(e);
            assert_eq!(js.status.as_ref(), code);
            assert_eq!(js.reason, message);
        }
    }

    #[test]
    fn every_set_outcome_is_named_as_stats_and_the_docs_say() {
        for (w, name) in [
            (L2Write::None, "none"),
            (L2Write::Written, "written"),
            (L2Write::TooLarge { first: false }, "too-large"),
            (L2Write::TooLarge { first: true }, "too-large-first"),
            (L2Write::Failed, "failed"),
        ] {
            assert_eq!(L2_NAMES[l2_index(w)], name);
        }
        for (o, first, name) in [
            (SetOutcome::Stored, false, "stored"),
            (SetOutcome::SkippedDynamic, false, "skipped-dynamic"),
            (SetOutcome::AlreadyExpired, false, "already-expired"),
            (SetOutcome::TooLarge, false, "too-large"),
            (SetOutcome::TooLarge, true, "too-large-first"),
        ] {
            assert_eq!(L1_NAMES[l1_index(o, || first)], name);
        }
        // The warn-once flag is only consumed by a too-large outcome.
        let asked = std::cell::Cell::new(false);
        l1_index(SetOutcome::Stored, || {
            asked.set(true);
            true
        });
        assert!(!asked.get());
    }
}

/// The binding's unit tests run outside Node, where the N-API functions the addon takes from the
/// Node binary do not exist. The tests never call them, but napi-rs' error type (which they
/// build) references three in its drop code; these stand-ins let the test binary link. Each
/// fails if it is ever called.
#[cfg(test)]
mod outside_node {
    use napi::sys::{napi_env, napi_ref, napi_status, napi_threadsafe_function, Status};
    use std::ffi::c_void;

    #[no_mangle]
    extern "C" fn napi_reference_unref(_: napi_env, _: napi_ref, _: *mut u32) -> napi_status {
        Status::napi_generic_failure
    }

    #[no_mangle]
    extern "C" fn napi_delete_reference(_: napi_env, _: napi_ref) -> napi_status {
        Status::napi_generic_failure
    }

    #[no_mangle]
    extern "C" fn napi_call_threadsafe_function(
        _: napi_threadsafe_function,
        _: *mut c_void,
        _: i32,
    ) -> napi_status {
        Status::napi_generic_failure
    }
}
