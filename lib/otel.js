'use strict'
/**
 * OpenTelemetry metrics, when the app has `@opentelemetry/api` (an optional peer dependency):
 * looked up once per process (per thread, as every module here) when the store starts, inside
 * a try/catch, so without it nothing is loaded, nothing is recorded and nothing is logged.
 *
 * With it, a Meter named `strata-cache` (from the global MeterProvider: register yours before
 * the cache is first used, e.g. in Next's `instrumentation.ts`) carries
 * - `db.client.operation.duration` [s], the semantic conventions' histogram of database client
 *   operations, recorded where `stats().latency` is (lib/metrics.js): every call that waited on
 *   Redis, with `db.system.name: 'redis'`, `db.operation.name`, `strata_cache.handler`,
 *   `strata_cache.outcome` and, for a failed call, `error.type`;
 * - observable instruments (`strata_cache.*`; no convention exists for a cache) read from the
 *   store's counters at each collection, one read for all of them.
 */
const { logOnce } = require('./log.js')

/**
 * Bucket bounds of the duration histogram [s]: the conventions' advice for
 * `db.client.operation.duration` (0.001 … 10) with finer steps below 1 ms, where a Redis round
 * trip on a local network falls. The same bounds as `stats().latency` (lib/metrics.js).
 */
const DURATION_BOUNDS_S = [0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10]

/** The duration histogram, or null (no `@opentelemetry/api`, or not started yet). */
let duration = null
let started = false

/**
 * Looks `@opentelemetry/api` up and registers the instruments: once per process, from the
 * store's start-up. `readNative` returns the store's counters (`nativeStats()`).
 */
function startOtel(readNative) {
  if (started) return
  started = true
  let api
  try {
    api = require('@opentelemetry/api')
  } catch {
    return // absent: the app does not use OpenTelemetry
  }
  try {
    const meter = api.metrics.getMeter('strata-cache', packageVersion())
    duration = meter.createHistogram('db.client.operation.duration', {
      description: 'Duration of database client operations.',
      unit: 's',
      advice: { explicitBucketBoundaries: DURATION_BOUNDS_S },
    })
    registerObservables(meter, readNative)
  } catch (err) {
    duration = null
    logOnce('warn', 'otel', 'OpenTelemetry metrics could not be registered; stats() still has them', err)
  }
}

/** This package's version (the meter's), if its package.json is there (a bundle may leave it out). */
function packageVersion() {
  try {
    return require('../package.json').version
  } catch {
    return undefined
  }
}

/** Records one operation's duration [ms] with its (constant, prebuilt) attributes. */
function recordDuration(ms, attributes) {
  if (duration !== null) duration.record(ms / 1000, attributes)
}

/** `strata_cache.l2.breaker.state`: 0 closed (healthy), 1 half-open (probing), 2 open (Redis skipped). */
const BREAKER_STATE = { closed: 0, 'half-open': 1, open: 2 }

/** The observable instruments: [field, name, kind, unit, description]. */
const OBSERVABLES = [
  ['lookups', 'strata_cache.lookups', 'Counter', '{lookup}', 'Reads of the cache by layer and outcome (L1: in-process; L2: Redis, error = failed read).'],
  ['entries', 'strata_cache.l1.entries', 'UpDownCounter', '{entry}', 'Entries held in the in-process L1.'],
  ['memoryUsed', 'strata_cache.l1.memory.used', 'UpDownCounter', 'By', 'Bytes charged to the in-process L1 (values, keys, metadata).'],
  ['memoryLimit', 'strata_cache.l1.memory.limit', 'UpDownCounter', 'By', 'The bound of the in-process L1 (l1MaxBytes).'],
  ['evictions', 'strata_cache.l1.evictions', 'Counter', '{entry}', 'Entries evicted from L1 to stay within its bound.'],
  ['writes', 'strata_cache.l2.writes', 'Counter', '{write}', 'Entry writes to Redis by outcome (written, failed, too_large = kept L1-only).'],
  ['invalidations', 'strata_cache.l2.invalidations', 'Counter', '{invalidation}', 'Invalidations by outcome: recorded in Redis, queued while Redis was unavailable, replayed from that queue.'],
  ['pending', 'strata_cache.l2.pending_invalidations', 'UpDownCounter', '{invalidation}', 'Invalidations queued and not yet delivered to Redis (see flush()).'],
  ['tagsInvalidated', 'strata_cache.tags.invalidated', 'Counter', '{tag}', "Tag invalidations applied to this process's tag state (stats().tags.updated)."],
  ['breaker', 'strata_cache.l2.breaker.state', 'Gauge', '1', 'Redis circuit breaker: 0 closed, 1 half-open, 2 open.'],
]

function registerObservables(meter, readNative) {
  const instruments = {}
  for (const [field, name, kind, unit, description] of OBSERVABLES) {
    instruments[field] = meter[`createObservable${kind}`](name, { description, unit })
  }
  const { lookups, entries, memoryUsed, memoryLimit, evictions, writes, invalidations, pending, tagsInvalidated, breaker } = instruments

  const L1_HIT = { 'strata_cache.layer': 'l1', 'strata_cache.outcome': 'hit' }
  const L1_MISS = { 'strata_cache.layer': 'l1', 'strata_cache.outcome': 'miss' }
  const L2_HIT = { 'strata_cache.layer': 'l2', 'strata_cache.outcome': 'hit' }
  const L2_MISS = { 'strata_cache.layer': 'l2', 'strata_cache.outcome': 'miss' }
  const L2_ERROR = { 'strata_cache.layer': 'l2', 'strata_cache.outcome': 'error' }
  const WRITTEN = { 'strata_cache.outcome': 'written' }
  const FAILED = { 'strata_cache.outcome': 'failed' }
  const TOO_LARGE = { 'strata_cache.outcome': 'too_large' }
  const RECORDED = { 'strata_cache.outcome': 'recorded' }
  const QUEUED = { 'strata_cache.outcome': 'queued' }
  const REPLAYED = { 'strata_cache.outcome': 'replayed' }

  meter.addBatchObservableCallback((observer) => {
    const n = readNative()
    if (!n) return // the store does not exist yet
    observer.observe(lookups, n.l1.hits, L1_HIT)
    observer.observe(lookups, n.l1.misses, L1_MISS)
    observer.observe(entries, n.l1.entries)
    observer.observe(memoryUsed, n.l1.bytes)
    observer.observe(memoryLimit, n.l1.maxBytes)
    observer.observe(evictions, n.l1.evictions)
    observer.observe(tagsInvalidated, n.tags.updated)
    const l2 = n.l2
    if (!l2) return
    observer.observe(lookups, l2.hits, L2_HIT)
    observer.observe(lookups, l2.misses, L2_MISS)
    observer.observe(lookups, l2.errors, L2_ERROR)
    observer.observe(writes, l2.writes, WRITTEN)
    observer.observe(writes, l2.writeErrors, FAILED)
    observer.observe(writes, l2.tooLarge, TOO_LARGE)
    observer.observe(invalidations, l2.invalidations, RECORDED)
    observer.observe(invalidations, l2.invalidationsQueued, QUEUED)
    observer.observe(invalidations, l2.invalidationsReplayed, REPLAYED)
    observer.observe(pending, l2.invalidationsPending)
    observer.observe(breaker, BREAKER_STATE[l2.breaker] ?? 0)
  }, [lookups, entries, memoryUsed, memoryLimit, evictions, writes, invalidations, pending, tagsInvalidated, breaker])
}

module.exports = { startOtel, recordDuration, DURATION_BOUNDS_S }
