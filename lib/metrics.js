'use strict'
/**
 * What the handlers report about each operation, in one place per event: the latency
 * histograms of `stats().latency`, the same durations for OpenTelemetry (lib/otel.js), and the
 * `STRATA_LOG=debug` line.
 *
 * Only calls that go asynchronous are timed: a get the addon answers with a promise (it asks
 * Redis), a write through Redis, a refresh of the shared tag state, an invalidation recorded in
 * Redis. A get the addon answers at once (an L1 hit, or a miss without Redis) never reads the
 * clock: it costs the handler a test of `debug.on` and, with debug on, a line.
 */
const { log, debugEnabled, shortKey } = require('./log.js')
const { byteLength } = require('./checks.js')
const { recordDuration } = require('./otel.js')

/**
 * Upper bounds [ms] of the histogram buckets, inclusive, roughly ×2.5 apart; one more bucket
 * holds everything above the last. The OpenTelemetry histogram uses the same bounds in seconds
 * (plus 2.5, 5 and 10 s).
 */
const BUCKETS_MS = Object.freeze([0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 25, 50, 100, 250, 500, 1000])

/** Durations [ms] in fixed buckets (BUCKETS_MS), with count, sum, min and max. */
class LatencyHistogram {
  constructor() {
    this.count = 0
    this.sum = 0
    this.min = Infinity
    this.max = 0
    this.buckets = new Array(BUCKETS_MS.length + 1).fill(0)
  }

  record(ms) {
    this.count++
    this.sum += ms
    if (ms < this.min) this.min = ms
    if (ms > this.max) this.max = ms
    let i = 0
    while (i < BUCKETS_MS.length && ms > BUCKETS_MS[i]) i++
    this.buckets[i]++
  }

  /**
   * The `q` quantile estimated from the buckets: linear within the bucket it falls in, whose
   * ends are narrowed to the observed min and max (so one sample gives itself, and the open
   * last bucket ends at max).
   */
  quantile(q) {
    if (this.count === 0) return 0
    const rank = q * this.count
    let below = 0
    for (let i = 0; i < this.buckets.length; i++) {
      const c = this.buckets[i]
      if (c > 0 && below + c >= rank) {
        const lower = Math.max(i === 0 ? 0 : BUCKETS_MS[i - 1], this.min)
        const upper = Math.min(i < BUCKETS_MS.length ? BUCKETS_MS[i] : this.max, this.max)
        return lower + (upper - lower) * ((rank - below) / c)
      }
      below += c
    }
    return this.max
  }

  /** A plain copy (`stats().latency`); times in ms, rounded to the µs. */
  snapshot() {
    const empty = this.count === 0
    return {
      count: this.count,
      sumMs: us(this.sum),
      minMs: empty ? 0 : us(this.min),
      maxMs: us(this.max),
      p50Ms: us(this.quantile(0.5)),
      p99Ms: us(this.quantile(0.99)),
      buckets: this.buckets.slice(),
    }
  }
}

const us = (ms) => Math.round(ms * 1000) / 1000

/** The histograms of one handler: what `stats().latency.useCache` / `.incremental` show. */
function operations() {
  return {
    get: { l2Hit: new LatencyHistogram(), l2Miss: new LatencyHistogram() },
    set: new LatencyHistogram(),
    refreshTags: new LatencyHistogram(),
    updateTags: new LatencyHistogram(),
  }
}

const latency = { useCache: operations(), incremental: operations() }

/** `stats().latency`. */
function latencyStats() {
  const of = (h) => ({
    get: { l2Hit: h.get.l2Hit.snapshot(), l2Miss: h.get.l2Miss.snapshot() },
    set: h.set.snapshot(),
    refreshTags: h.refreshTags.snapshot(),
    updateTags: h.updateTags.snapshot(),
  })
  return { bucketsMs: BUCKETS_MS.slice(), useCache: of(latency.useCache), incremental: of(latency.incremental) }
}

/** The ms since `t0` (a `performance.now()`), at 0.001 ms in a log line. */
const msSince = (t0) => performance.now() - t0
const fmtMs = (ms) => `${ms.toFixed(3)} ms`

/** Tags as a log line shows them: the first 8, each cut at 64 characters. */
function shortTags(tags) {
  const shown = tags.slice(0, 8).map(shortKey).join(', ')
  return tags.length > 8 ? `[${shown}, … ${tags.length - 8} more]` : `[${shown}]`
}

/** `error.type` of a failed operation: its stable code (STRATA_TIMEOUT, …), else `_OTHER`. */
const errorType = (err) => (err && typeof err.code === 'string' ? err.code : '_OTHER')

/** The OTel attributes of a failed operation (built only on failure). */
const failed = (attributes, err) => ({ ...attributes, 'error.type': errorType(err) })

/** The L2 part of a write's outcome as the OTel attribute says it. */
const L2_OUTCOME = { none: 'none', written: 'written', 'too-large': 'too_large', 'too-large-first': 'too_large', failed: 'failed' }

/**
 * The reporter of one handler, `'useCache'` or `'incremental'`; `keyPrefix` is what its store
 * keys start with (left out of log lines).
 */
function recorder(handler, keyPrefix = '') {
  const h = latency[handler]
  const label = handler === 'useCache' ? 'use-cache' : 'incremental'
  const attributes = (operation, outcome) => Object.freeze({
    'db.system.name': 'redis',
    'db.operation.name': operation,
    'strata_cache.handler': handler === 'useCache' ? 'use_cache' : 'incremental',
    ...(outcome === undefined ? {} : { 'strata_cache.outcome': outcome }),
  })
  const GET_HIT = attributes('get', 'hit')
  const GET_MISS = attributes('get', 'miss')
  const SET = {}
  for (const outcome of new Set(Object.values(L2_OUTCOME))) SET[outcome] = attributes('set', outcome)
  const REFRESH = attributes('refresh_tags')
  const UPDATE = attributes('update_tags')
  const keyOf = (storeKey) => shortKey(storeKey.startsWith(keyPrefix) ? storeKey.slice(keyPrefix.length) : storeKey)
  const line = (message) => log('debug', `${label} ${message}`)

  return {
    /** A get the addon answered with a promise (it asked Redis), started at `t0`, resolved to `hit` (null: a miss). */
    l2Get(t0, storeKey, hit) {
      const ms = msSince(t0)
      const miss = hit === null
      ;(miss ? h.get.l2Miss : h.get.l2Hit).record(ms)
      recordDuration(ms, miss ? GET_MISS : GET_HIT)
      if (debugEnabled()) line(`get ${keyOf(storeKey)}: ${miss ? 'l2-miss' : hit.staleByTag ? 'l2-hit (a tag is stale)' : 'l2-hit'} ${fmtMs(ms)}`)
    },

    /** A get the addon answered at once (`l2`: Redis is configured). Call it only when `debug.on`. */
    l1Get(storeKey, hit, l2) {
      const outcome = hit === null ? (l2 ? 'l1-miss' : 'l1-miss (no L2)') : hit.staleByTag ? 'l1-hit (a tag is stale)' : 'l1-hit'
      line(`get ${keyOf(storeKey)}: ${outcome}`)
    },

    /**
     * A write through Redis started at `t0`: `l1`/`l2` are what each layer did with it, or
     * `err` is why the call failed. `chunks` are only measured for the log line.
     */
    l2Set(t0, storeKey, chunks, l1, l2, err) {
      const ms = msSince(t0)
      h.set.record(ms)
      recordDuration(ms, err === undefined ? (SET[L2_OUTCOME[l2]] ?? SET.none) : failed(SET.none, err))
      if (debugEnabled()) {
        const what = err === undefined ? `l1 ${l1}, l2 ${l2}` : `failed (${errorType(err)})`
        line(`set ${keyOf(storeKey)} ${byteLength(chunks)} B: ${what} ${fmtMs(ms)}`)
      }
    },

    /** A write to L1 only (no Redis, or a dynamic entry). Call it only when `debug.on`. */
    l1Set(storeKey, chunks, l1) {
      line(`set ${keyOf(storeKey)} ${byteLength(chunks)} B: l1 ${l1}`)
    },

    /** A refresh of the shared tag state started at `t0`; `err` when it failed. */
    refreshTags(t0, err) {
      const ms = msSince(t0)
      h.refreshTags.record(ms)
      recordDuration(ms, err === undefined ? REFRESH : failed(REFRESH, err))
      if (debugEnabled()) line(`refreshTags: ${err === undefined ? 'done' : `failed (${errorType(err)})`} ${fmtMs(ms)}`)
    },

    /**
     * An invalidation of `tags` (`durations`: as updateTags got them): recorded in Redis when
     * `t0` is given (its start), else in this process only; `err` when it failed.
     */
    updateTags(t0, tags, durations, err) {
      let ms
      if (t0 !== undefined) {
        ms = msSince(t0)
        h.updateTags.record(ms)
        recordDuration(ms, err === undefined ? UPDATE : failed(UPDATE, err))
      }
      if (debugEnabled()) {
        const how = durations && durations.expire !== undefined ? `stale now, expired in ${durations.expire} s` : 'expired now'
        const where = t0 === undefined ? 'l1 (no L2)' : err === undefined ? `l2 recorded ${fmtMs(ms)}` : `failed (${errorType(err)}) ${fmtMs(ms)}`
        line(`updateTags ${shortTags(tags)} (${how}): ${where}`)
      }
    },

    /** A read of the build output for `key` started at `t0`: `found` or not, `err` when it could not be read. */
    seed(t0, key, found, err) {
      if (!debugEnabled()) return
      const why = err ? ` (${err.code || err.message || err})` : ''
      line(`seed ${shortKey(key)}: ${found ? 'read from the build output into L1' : `none${why}`} ${fmtMs(msSince(t0))}`)
    },
  }
}

module.exports = { recorder, latencyStats, LatencyHistogram, BUCKETS_MS }
