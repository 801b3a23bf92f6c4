'use strict'
/**
 * The process-wide store both handlers share. The store itself lives in Rust (`core/`), reached
 * through the generated loader `binding.js`; this module holds the JS-side pieces that must be
 * one per process with it: start-up on first use, the configuration in effect, the `set`s in
 * flight, the call counters, writes and their outcomes, tag invalidation, and the public
 * `stats`, `config` and `flush`.
 */
const native = require('./native.js')

const { invalid, toStrataError } = require('./errors.js')
const { byteLength, isNil, isObject, isNonNegativeNumber, checkTags } = require('./checks.js')
const { log, logOnce, warnOncePerCode, debug } = require('./log.js')
const { validateOptions } = require('./options.js')
const { latencyStats } = require('./metrics.js')
const { startOtel } = require('./otel.js')

/** Calls Next made to the 'use cache' handler (`cacheHandlers`), per method. */
const calls = { get: 0, set: 0, refreshTags: 0, getExpiration: 0, updateTags: 0 }
/** Calls Next made to the incremental handler (`cacheHandler`), per method. */
const incrementalCalls = { get: 0, set: 0, revalidateTag: 0 }
/** storeKey -> promise of the `set` in flight (a `get` of that key waits for it). */
const pendingSets = new Map()
/** The configuration in effect (`native.init`'s answer), once the store exists. */
let resolved = null
let l2 = false

/** Whether the store has a Redis L2 (known once it exists). */
const hasL2 = () => l2
/** The configuration in effect, or null before first use (not a copy: see `config`). */
const settings = () => resolved

/** Creates the native store on first use (run time, never at import or `next build` config time). */
function boot(options) {
  if (resolved) return resolved
  // `next build` (static generation workers included) stays L1-only: the build machine's
  // environment must not decide which deployment's Redis namespace gets written.
  const buildPhase = process.env.NEXT_PHASE === 'phase-production-build'
  try {
    resolved = native.init({ ...options, buildPhase })
  } catch (err) {
    throw toStrataError(err)
  }
  // Entry objects handed to Next are built by this literal (one shape, cheap to build and to
  // read); once per thread, as each worker thread loads this module anew.
  native.setEntryFactory((value, tags, stale, timestamp, expire, revalidate, staleByTag) => ({ value, tags, stale, timestamp, expire, revalidate, staleByTag }))
  l2 = native.hasL2()
  startOtel(native.nativeStats)
  if (l2) {
    log('info', `Redis L2 ${resolved.redis}, namespace "${resolved.namespace}" (from ${resolved.namespaceSource}), L1 ${resolved.l1MaxBytes} bytes`)
  } else {
    log('debug', `embedded L1 only (${resolved.l1MaxBytes} bytes)${buildPhase ? ', next build' : ''}`)
  }
  return resolved
}

/**
 * Checks `options` now (STRATA_CONFIG) and returns the function that boots the store for a
 * handler created with them: the first handler configures it; a later one whose options differ
 * gets a warning (the store is per process, the first configuration wins). Checked once per
 * handler object, so the hot path pays one boolean test.
 */
function makeBooter(options) {
  const opts = validateOptions(options)
  let checked = false
  return function bootOnce() {
    if (checked) return
    const first = !resolved
    boot(opts)
    if (!first && Object.keys(opts).length > 0) {
      const again = native.init(opts)
      if (!again.applied) {
        logOnce('warn', 'options-conflict', 'createUseCacheHandler() options differ from the store already created in this process; the first configuration is kept')
      }
    }
    checked = true
  }
}

/** The `set` of `storeKey` in flight, or undefined (most gets find none: the key is not even hashed). */
function pendingSet(storeKey) {
  return pendingSets.size === 0 ? undefined : pendingSets.get(storeKey)
}

/**
 * Marks a `set` of `storeKey` as in flight until the returned function is called (in a
 * `finally`): a `get` of that key meanwhile waits for it.
 */
function beginSet(storeKey) {
  let release
  const pending = new Promise((resolve) => { release = resolve })
  pendingSets.set(storeKey, pending)
  return function endSet() {
    if (pendingSets.get(storeKey) === pending) pendingSets.delete(storeKey)
    release()
  }
}

/**
 * Without Redis, the whole read of `storeKey` from L1 (the entry object, or null), judged with
 * `softTags` (none: null), reported by `rec` when debugging.
 */
function readLocal(rec, storeKey, softTags) {
  // No soft tags: nothing passed, which the addon converts faster than an empty array.
  const hit = native.ucGet(storeKey, softTags !== null && softTags.length > 0 ? softTags : undefined)
  if (debug.on) rec.l1Get(storeKey, hit, false)
  return hit
}

/**
 * With Redis, the first step of a read: a fresh L1 copy of `storeKey`, or null, and then the
 * read goes to Redis (`readRemote`): a stale or soft-tag-expired copy may have been regenerated
 * by another instance already.
 */
function readFresh(rec, storeKey, softTags) {
  const hit = native.ucGetFresh(storeKey, softTags)
  if (hit !== null && debug.on) rec.l1Get(storeKey, hit, true)
  return hit
}

/**
 * The read from Redis after `readFresh` returned null: the newer of the L1 and L2 copies, or
 * null. The request is on its way when this returns; timed from here and reported by `rec`
 * (an L1 hit never reads the clock).
 */
function readRemote(rec, storeKey, softTags) {
  const t0 = performance.now()
  return native.ucGetRemote(storeKey, softTags).then((hit) => {
    rec.l2Get(t0, storeKey, hit)
    return hit
  })
}

/**
 * Follows the shared invalidation log (one round trip, usually empty), timed and reported by
 * `rec`. Never rejects: Next calls it before a request's first read, and a rejection would fail
 * the request. When the shared tag state cannot be read the instance keeps its mirror (in
 * strict mode reads then miss until a refresh succeeds), and says so once.
 */
async function refreshShared(rec) {
  const t0 = performance.now()
  try {
    await native.ucRefreshTags()
    rec.refreshTags(t0)
  } catch (err) {
    rec.refreshTags(t0, err)
    warnOncePerCode('refreshTags', 'refreshTags could not read the shared tag state (Redis slow or down); serving from local state', err)
  }
}

/** A value's chunks as they cross into the addon: one as itself (no copy), several as a list it joins. */
const bytesOf = (chunks) => (chunks.length === 1 ? chunks[0] : chunks)

/**
 * Writes an entry (its value as chunks) to this instance's L1 only; returns what L1 did with it,
 * the addon's `SetReport` (`{ l1, l2: 'none' }`). `rec` (lib/metrics.js) reports it as a
 * handler's set; null for an insert that is not one (a build seed). Warns as `setShared` does.
 */
function setLocal(rec, storeKey, chunks, tags, stale, timestamp, expire, revalidate, subject) {
  const report = native.ucSet(storeKey, bytesOf(chunks), tags, stale, timestamp, expire, revalidate)
  if (debug.on && rec !== null) rec.l1Set(storeKey, chunks, report.l1)
  warnUnstored(report, chunks, subject)
  return report
}

/**
 * What a write left undone, warned once each (the core says when it is the first time in the
 * process, for every handler at once): too large for all of L1, too large for Redis, or
 * Redis did not take it. `subject()` names the entry.
 */
function warnUnstored(report, chunks, subject = () => 'an entry') {
  if (report.l1 === 'too-large-first') {
    log('warn', `${subject()} of ${byteLength(chunks)} bytes is larger than the whole L1 (${resolved.l1MaxBytes} bytes) and was not stored; raise l1MaxBytes / STRATA_L1_MAX_BYTES (warned once)`)
  }
  if (report.l2 === 'too-large-first') {
    log('warn', `${subject()} of ${byteLength(chunks)} bytes is larger than l2MaxValueBytes (${resolved.l2MaxValueBytes}) and stays in this instance's L1 only (warned once)`)
  } else if (report.l2 === 'failed') {
    logOnce('warn', 'l2-write-failed', 'a write to Redis failed (timeout or unavailable); the entry stays L1-only (logged once)')
  }
}

/**
 * Writes an entry (its value as chunks) to L1 and Redis, timed and reported by `rec`
 * (lib/metrics.js); warns what was left undone (`warnUnstored`). Resolves with what L1 and
 * Redis did with it: the addon's `SetReport`, `{ l1, l2 }`.
 */
async function setShared(rec, storeKey, chunks, tags, stale, timestamp, expire, revalidate, subject) {
  const t0 = performance.now()
  let report
  try {
    report = await native.ucSetRemote(storeKey, bytesOf(chunks), tags, stale, timestamp, expire, revalidate)
  } catch (err) {
    rec.l2Set(t0, storeKey, chunks, undefined, undefined, toStrataError(err))
    throw err
  }
  rec.l2Set(t0, storeKey, chunks, report.l1, report.l2)
  warnUnstored(report, chunks, subject)
  return report
}

/**
 * Invalidates `tags` for every handler of the process (`updateTags` of 'use cache',
 * `revalidateTag` of the incremental cache): with `durations`, stale now and expired after
 * `durations.expire` seconds; without, expired now. One atomic Redis call with L2, timed and
 * reported by `rec` (lib/metrics.js).
 */
/** Invalidations sent to Redis in the current tick, by tags and durations (see below). */
const thisTick = new Map()

/**
 * Records `tags` in Redis. Next hands one `revalidateTag` to every configured handler in the
 * same tick (`updateTags` of 'use cache' and the incremental cache's `revalidateTag`, in one
 * `Promise.all`): an identical call made in the same tick joins the one already sent, so a tag
 * costs one Redis call however many handlers are configured. Only within the tick: a later
 * call always makes its own (its stamp must follow whatever was written in between).
 */
function sameTickInvalidation(tags, d) {
  const key = JSON.stringify([tags, d])
  let sent = thisTick.get(key)
  if (sent === undefined) {
    sent = native.ucUpdateTagsRemote(tags, d)
    if (thisTick.size === 0) process.nextTick(() => thisTick.clear())
    thisTick.set(key, sent)
  }
  return sent
}

async function updateTags(rec, bootOnce, tags, durations) {
  checkTags('tags', tags)
  let d = null
  if (!isNil(durations)) {
    if (!isObject(durations)) throw invalid('durations', 'an object like { expire: seconds }', durations)
    if (durations.expire !== undefined) {
      if (typeof durations.expire !== 'number' || !(durations.expire >= 0)) {
        throw invalid('durations.expire', 'a non-negative number of seconds', durations.expire)
      }
    }
    d = { expire: durations.expire }
  }
  try {
    bootOnce()
    if (l2) {
      const t0 = performance.now()
      try {
        await sameTickInvalidation(tags, d)
      } catch (err) {
        rec.updateTags(t0, tags, d, toStrataError(err))
        throw err
      }
      rec.updateTags(t0, tags, d)
    } else {
      native.ucUpdateTags(tags, d)
      rec.updateTags(undefined, tags, d)
    }
  } catch (err) {
    throw toStrataError(err)
  }
}

/**
 * Counters of this process: handler calls, the native store, and the latency of the calls that
 * waited on Redis (lib/metrics.js).
 */
function stats() {
  const n = native.nativeStats()
  return {
    calls: { ...calls },
    incrementalCalls: { ...incrementalCalls },
    // The addon's counters under the core's names (core/src/store.rs, core/src/cache.rs).
    l1: n ? n.l1 : null,
    tags: n ? n.tags : null,
    l2: n && n.l2 ? n.l2 : null,
    internalPanics: n ? n.internalPanics : 0,
    latency: latencyStats(),
  }
}

/**
 * Delivers invalidations queued while Redis was unavailable (call it before a graceful
 * shutdown). Resolves with how many are still queued after `timeoutMs` (0 = all delivered).
 */
async function flush({ timeoutMs = 5000 } = {}) {
  if (!isNonNegativeNumber(timeoutMs)) throw invalid('timeoutMs', 'a non-negative number of ms', timeoutMs)
  if (!resolved) return 0
  return native.flush(timeoutMs)
}

/**
 * Checks the configuration and Redis as a server starting here would see them (the same options
 * and environment; nothing is created): `{ verdict: 'ok' | 'warn' | 'fail', checks: [{ name,
 * status, detail }] }`. Never rejects; credentials never appear. See `strata-cache doctor`.
 */
async function doctor(options) {
  let checked
  try {
    // The handlers' own check: an option of the wrong type or an unknown name is reported,
    // not passed on for the addon to throw at.
    checked = validateOptions(options)
  } catch (err) {
    return { verdict: 'fail', checks: [{ name: 'config', status: 'fail', detail: err.message }] }
  }
  return native.doctor(checked)
}

/** The configuration in effect (Redis URL redacted), or null before first use. */
function config() {
  return resolved ? { ...resolved } : null
}

/** No soft tags: what a read passes when none apply. */
const NO_TAGS = Object.freeze([])

module.exports = {
  native,
  NO_TAGS,
  readLocal,
  readFresh,
  readRemote,
  refreshShared,
  calls,
  incrementalCalls,
  hasL2,
  settings,
  makeBooter,
  pendingSet,
  beginSet,
  setLocal,
  setShared,
  updateTags,
  stats,
  flush,
  config,
  doctor,
}
