//! The napi binding of strata-cache: a thin translation layer over `strata-core`.
//!
//! Only `#[napi]` exports, argument conversion, error mapping and the zero-copy hand-off of
//! stored bytes to JS live here; every rule lives in the core.

mod js_entry;

use std::sync::{Arc, OnceLock};

use napi::bindgen_prelude::*;
use napi_derive::napi;

use strata_core::clock::SystemClock;
use strata_core::config::{Config, Options};
use strata_core::entry::EntryMeta;
use strata_core::store::{Lookup, SetOutcome, Store};
use strata_core::tags::Durations;

use js_entry::{Chunks, RawValue};

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

struct Global {
    store: Store,
    config: Config,
}

static GLOBAL: OnceLock<Global> = OnceLock::new();

fn global() -> Result<&'static Global, Code> {
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
    /// Redis URL.
    pub redis: Option<String>,
    /// Namespace.
    pub namespace: Option<String>,
}

/// The configuration the process runs with (secrets redacted).
#[napi(object)]
pub struct ResolvedConfig {
    /// L1 bound in bytes.
    pub l1_max_bytes: f64,
    /// Bound on tag records in memory.
    pub max_tags: f64,
    /// Redis URL with credentials redacted, when configured.
    pub redis: Option<String>,
    /// Namespace, when given explicitly.
    pub namespace: Option<String>,
    /// False when this call's options differ from the process's existing configuration (the
    /// first configuration wins: the store is per process).
    pub applied: bool,
}

fn whole(name: &'static str, v: Option<f64>) -> Result<Option<u64>, Code> {
    match v {
        None => Ok(None),
        Some(x) if x.is_finite() && x >= 1.0 && x.fract() == 0.0 && x <= 9.0e15 => {
            Ok(Some(x as u64))
        }
        Some(x) => Err(to_js(strata_core::Error::config(
            name,
            format!("expected a positive whole number, got {x}"),
        ))),
    }
}

fn describe(config: &Config, applied: bool) -> ResolvedConfig {
    ResolvedConfig {
        l1_max_bytes: config.l1_max_bytes as f64,
        max_tags: config.max_tags as f64,
        redis: config
            .redis_url
            .as_deref()
            .map(strata_core::config::redact_url),
        namespace: config.namespace.clone(),
        applied,
    }
}

/// Resolves the configuration (code options over environment variables over defaults) and
/// creates the process-wide store on first call. Later calls return the existing configuration.
#[napi]
pub fn init(options: Option<InitOptions>) -> Result<ResolvedConfig, Code> {
    let options = options.unwrap_or_default();
    let code = Options {
        l1_max_bytes: whole("l1MaxBytes", options.l1_max_bytes)?,
        max_tags: whole("maxTags", options.max_tags)?,
        redis_url: options.redis,
        namespace: options.namespace,
    };
    let env = Options::from_env(|k| std::env::var(k).ok()).map_err(to_js)?;
    let config = code.or(env).resolve().map_err(to_js)?;
    let mut created = false;
    let g = GLOBAL.get_or_init(|| {
        created = true;
        install_panic_hook();
        let store = Store::new(
            &config,
            Arc::new(SystemClock),
            Some(Arc::new(js_entry::on_entry_removed)),
        );
        Global {
            store,
            config: config.clone(),
        }
    });
    Ok(describe(&g.config, created || g.config == config))
}

fn install_panic_hook() {
    // A panic must never unwind into Node; napi-rs catches unwinds at the boundary and turns
    // them into JS exceptions, and this hook makes sure the message is printed once, redacted
    // of nothing secret (panics carry no configuration).
    let previous = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        eprintln!(
            "strata-cache: internal panic (reported to the caller as STRATA_INTERNAL): {info}"
        );
        let _ = &previous;
    }));
}

/// `get(cacheKey)` on L1: `null` on a miss, the entry object on a hit, or `[entry]` when a tag
/// is stale (the caller then reports `revalidate: -1`). The entry object and its `value`
/// Buffer are created once per stored entry and shared by every hit (no copy per hit).
#[napi(js_name = "ucGet")]
pub fn uc_get(env: Env, key: String) -> Result<RawValue, Code> {
    let g = global()?;
    js_entry::release_pending(&env);
    match g.store.get(&key) {
        Lookup::Miss => js_entry::null(&env),
        Lookup::Hit {
            entry,
            stale_by_tag,
        } => {
            let obj = js_entry::entry_object(&env, &entry)?;
            if stale_by_tag {
                js_entry::wrap_in_array(&env, obj)
            } else {
                Ok(obj)
            }
        }
    }
}

/// `set(cacheKey, entry)` once the stream is read: copies the chunks once into Rust memory.
/// Returns `"stored"`, `"skipped-dynamic"`, `"already-expired"` or `"too-large"`.
#[napi(js_name = "ucSet")]
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
) -> Result<&'static str, Code> {
    let g = global()?;
    js_entry::release_pending(&env);
    let meta = EntryMeta {
        tags,
        stale,
        timestamp,
        expire,
        revalidate,
    };
    let outcome = g.store.set(&key, chunks.0, meta).map_err(to_js)?;
    Ok(match outcome {
        SetOutcome::Stored => "stored",
        SetOutcome::SkippedDynamic => "skipped-dynamic",
        SetOutcome::AlreadyExpired => "already-expired",
        SetOutcome::TooLarge => {
            if g.store.first_too_large() {
                "too-large-first"
            } else {
                "too-large"
            }
        }
    })
}

/// `durations` of `updateTags`.
#[napi(object)]
pub struct JsDurations {
    /// Seconds until hard expiry.
    pub expire: Option<f64>,
}

/// `updateTags(tags, durations?)`.
#[napi(js_name = "ucUpdateTags")]
pub fn uc_update_tags(tags: Vec<String>, durations: Option<JsDurations>) -> Result<(), Code> {
    let g = global()?;
    let durations = match durations {
        None => None,
        Some(d) => {
            if let Some(e) = d.expire {
                if !e.is_finite() || e < 0.0 {
                    return Err(to_js(strata_core::Error::invalid_arg(
                        "durations.expire",
                        format!("expected a non-negative number of seconds, got {e}"),
                    )));
                }
            }
            Some(Durations { expire: d.expire })
        }
    };
    g.store.update_tags(&tags, durations);
    Ok(())
}

/// `getExpiration(tags)`.
#[napi(js_name = "ucGetExpiration")]
pub fn uc_get_expiration(tags: Vec<String>) -> Result<f64, Code> {
    Ok(global()?.store.get_expiration(&tags))
}

/// Counters and sizes of the process-wide store.
#[napi(object)]
pub struct NativeStats {
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
    /// Hits served stale because of a tag.
    pub stale_by_tag: f64,
    /// Misses because a tag expired the entry.
    pub expired_by_tag: f64,
    /// Tags invalidated.
    pub tags_updated: f64,
    /// Tag records held.
    pub tag_records: f64,
    /// Entry objects currently shared with JS.
    pub js_views: f64,
}

/// `stats()` of the native store (null before first use).
#[napi(js_name = "nativeStats")]
pub fn native_stats(env: Env) -> Option<NativeStats> {
    let g = GLOBAL.get()?;
    js_entry::release_pending(&env);
    let s = g.store.stats();
    Some(NativeStats {
        entries: s.entries as f64,
        bytes: s.bytes as f64,
        max_bytes: s.max_bytes as f64,
        hits: s.hits as f64,
        misses: s.misses as f64,
        sets: s.sets as f64,
        evictions: s.evictions as f64,
        skipped_dynamic: s.skipped_dynamic as f64,
        rejected_too_large: s.rejected_too_large as f64,
        stale_by_tag: s.stale_by_tag as f64,
        expired_by_tag: s.expired_by_tag as f64,
        tags_updated: s.tags_updated as f64,
        tag_records: s.tag_records as f64,
        js_views: js_entry::live_views() as f64,
    })
}
