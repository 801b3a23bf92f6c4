'use strict'
/**
 * strata-cache: a Next.js 16 cache handler with a Rust core.
 *
 * This file is the hand-written JS surface: the handler object Next expects for
 * `cacheHandlers` ('use cache'), argument checks with clear errors, and the web-stream glue.
 * Every rule (expiry, tags, the byte bound) lives in Rust (`core/`), reached through the
 * generated loader `binding.js`.
 */

const native = require('./binding.js')

const LOG_LEVELS = { silent: 0, error: 1, warn: 2, info: 3, debug: 4 }

const { StrataError, describe, invalid } = require('./lib/errors.js')

/** Any error from the addon (which sets `code`) or from JS as a StrataError; unknown: STRATA_INTERNAL. */
function toStrataError(err) {
  if (err instanceof StrataError) return err
  const message = err && err.message ? err.message : String(err)
  const code = err && typeof err.code === 'string' && err.code.startsWith('STRATA_') ? err.code : 'STRATA_INTERNAL'
  return new StrataError(code, message, { cause: err })
}

// ---------------------------------------------------------------------------------------------
// Process-wide state. The store lives in Rust and is shared by every handler object this
// process creates; these are the JS-side pieces that must be shared with it.

const calls = { get: 0, set: 0, refreshTags: 0, getExpiration: 0, updateTags: 0 }
/** Calls Next made to the incremental handler (`cacheHandler`), per method. */
const incrementalCalls = { get: 0, set: 0, revalidateTag: 0 }
/** cacheKey -> promise of the `set` in flight (a `get` of that key waits for it). */
const pendingSets = new Map()
/** The outcome codes of the native set calls: L1 (`ucSet`; `ucSetRemote` >> 3), L2 (`& 7`). */
const SET_L1 = ['stored', 'skipped-dynamic', 'already-expired', 'too-large', 'too-large-first']
const SET_L2 = ['none', 'written', 'too-large', 'too-large-first', 'failed']
/** L2 reads awaiting Redis (decides when a get builds its stream). */
let readsInFlight = 0
const warned = new Set()
let resolved = null
let l2 = false

function logLevel() {
  const level = (process.env.STRATA_LOG || 'info').toLowerCase()
  return LOG_LEVELS[level] ?? LOG_LEVELS.info
}

function log(level, message, err) {
  if (LOG_LEVELS[level] > logLevel()) return
  const line = `strata-cache: ${message}${err ? `: ${err.message || err}` : ''}`
  if (level === 'error') console.error(line)
  else if (level === 'warn') console.warn(line)
  else console.log(line)
}

/** Logs a message the first time `id` is seen in this process. */
function logOnce(level, id, message, err) {
  if (warned.has(id)) return
  warned.add(id)
  log(level, message, err)
}

// ---------------------------------------------------------------------------------------------
// Options

const OPTION_CHECKS = {
  l1MaxBytes: (v) => Number.isSafeInteger(v) && v >= 1 ? null : 'a positive whole number of bytes',
  maxTags: (v) => Number.isSafeInteger(v) && v >= 1 ? null : 'a positive whole number',
  redis: (v) => typeof v === 'string' && v.length > 0 ? null : 'a redis:// URL string',
  namespace: (v) => typeof v === 'string' && v.length > 0 ? null : 'a non-empty string',
  maxTtlSeconds: (v) => Number.isSafeInteger(v) && v >= 1 ? null : 'a positive whole number of seconds',
  redisTimeoutMs: (v) => Number.isSafeInteger(v) && v >= 1 && v <= 60000 ? null : 'a whole number of ms between 1 and 60000',
  l2MaxValueBytes: (v) => Number.isSafeInteger(v) && v >= 1 ? null : 'a positive whole number of bytes',
  compressMinBytes: (v) => Number.isSafeInteger(v) && v >= 0 ? null : 'a whole number of bytes (0 = off)',
  strict: (v) => typeof v === 'boolean' ? null : 'true or false',
  cluster: (v) => typeof v === 'boolean' ? null : 'true or false',
  redisCaFile: (v) => typeof v === 'string' && v.length > 0 ? null : 'a path to a PEM file',
  distDir: (v) => typeof v === 'string' && v.length > 0 ? null : 'a directory path',
}

function validateOptions(options) {
  if (options === undefined || options === null) return {}
  if (typeof options !== 'object' || Array.isArray(options)) {
    throw new StrataError('STRATA_CONFIG', `options must be an object, got ${describe(options)}`)
  }
  const out = {}
  for (const [name, value] of Object.entries(options)) {
    const check = OPTION_CHECKS[name]
    if (!check) {
      throw new StrataError('STRATA_CONFIG', `unknown option \`${name}\` (known: ${Object.keys(OPTION_CHECKS).join(', ')})`)
    }
    if (value === undefined) continue
    const expected = check(value)
    if (expected) {
      throw new StrataError('STRATA_CONFIG', `invalid option \`${name}\`: expected ${expected}, got ${describe(value)}`)
    }
    out[name] = value
  }
  return out
}

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
  native.setEntryFactory((value, tags, stale, timestamp, expire, revalidate) => ({ value, tags, stale, timestamp, expire, revalidate }))
  l2 = native.hasL2()
  if (l2) {
    log('info', `Redis L2 ${resolved.redis}, namespace "${resolved.namespace}" (from ${resolved.namespaceSource}), L1 ${resolved.l1MaxBytes} bytes`)
  } else {
    log('debug', `embedded L1 only (${resolved.l1MaxBytes} bytes)${buildPhase ? ', next build' : ''}`)
  }
  return resolved
}

/**
 * Boots the store for a handler created with `options`: the first handler configures it; a later
 * one whose options differ gets a warning (the store is per process, the first configuration
 * wins). Checked once per handler object, so the hot path pays one boolean test.
 */
function makeBooter(options) {
  let checked = false
  return function bootOnce() {
    if (checked) return
    const first = !resolved
    boot(options)
    if (!first && Object.keys(options).length > 0) {
      const again = native.init(options)
      if (!again.applied) {
        logOnce('warn', 'options-conflict', 'createUseCacheHandler() options differ from the store already created in this process; the first configuration is kept')
      }
    }
    checked = true
  }
}

// ---------------------------------------------------------------------------------------------
// Argument checks (a wrong type from JS is a typed error, never a crash)

function checkTags(name, tags) {
  if (!Array.isArray(tags)) throw invalid(name, 'an array of strings', tags)
  for (const t of tags) {
    if (typeof t !== 'string') throw invalid(name, 'an array of strings', t)
  }
  return tags
}

function checkNumber(name, v) {
  if (typeof v !== 'number' || !Number.isFinite(v)) throw invalid(name, 'a finite number', v)
  return v
}

// ---------------------------------------------------------------------------------------------
// Streams

/** A new, unlocked stream over `bytes` (the stored Buffer itself: no copy per hit). */
function streamOf(bytes) {
  return new ReadableStream({
    start(controller) {
      controller.enqueue(bytes)
      controller.close()
    },
  })
}

/** Reads every chunk of a web stream; rejects if the stream errors. */
async function readChunks(stream) {
  if (!stream || typeof stream.getReader !== 'function') {
    throw invalid('entry.value', 'a ReadableStream<Uint8Array>', stream)
  }
  const reader = stream.getReader()
  const chunks = []
  for (;;) {
    const { done, value } = await reader.read()
    if (done) break
    if (!(value instanceof Uint8Array)) {
      reader.cancel().catch(() => {})
      throw invalid('entry.value chunk', 'a Uint8Array', value)
    }
    chunks.push(value)
  }
  return chunks
}

// ---------------------------------------------------------------------------------------------
// The 'use cache' handler

/**
 * Creates a handler for Next's `cacheHandlers` ('use cache' / 'use cache: remote').
 * Options are checked now; the store is created when the handler is first used.
 */
function createUseCacheHandler(options) {
  const opts = validateOptions(options)
  const bootWith = makeBooter(opts)

  return {
    async get(cacheKey, softTags) {
      calls.get++
      try {
        if (typeof cacheKey !== 'string') throw invalid('cacheKey', 'a string', cacheKey)
        // (Most gets run with no set in flight: then the key is not even hashed.)
        const pending = pendingSets.size === 0 ? undefined : pendingSets.get(cacheKey)
        if (pending !== undefined) await pending
        bootWith()
        let hit
        let value
        if (l2) {
          // With Redis, a stale or soft-tag-expired L1 copy is checked against L2 first: another
          // instance may have regenerated it already. A fresh L1 hit comes back at once; anything
          // else is a promise, and its request is already on its way to Redis.
          const soft = Array.isArray(softTags) && softTags.every((t) => typeof t === 'string') ? softTags : []
          hit = native.ucGetL2(cacheKey, soft)
          if (hit instanceof Promise) {
            // Alone, a read builds its stream during the round trip, while the thread would
            // otherwise wait (on a miss it is dropped unused). With other reads in flight the
            // thread is busy anyway, and a stream built early costs more than one built after
            // (bench/RESULTS.md): build it after the reply.
            let controller
            if (readsInFlight === 0) value = new ReadableStream({ start(c) { controller = c } })
            readsInFlight++
            try {
              hit = await hit
            } finally {
              readsInFlight--
            }
            if (hit !== null && controller !== undefined) {
              controller.enqueue((Array.isArray(hit) ? hit[0] : hit).value)
              controller.close()
            }
          }
        } else {
          hit = native.ucGet(cacheKey)
        }
        if (hit === null) return undefined
        let entry = hit
        let revalidate
        if (Array.isArray(hit)) {
          // A tag of the entry was marked stale after it was created: serve once, refresh.
          entry = hit[0]
          revalidate = -1
        } else {
          revalidate = entry.revalidate
        }
        return {
          value: value ?? streamOf(entry.value),
          tags: entry.tags.slice(),
          stale: entry.stale,
          timestamp: entry.timestamp,
          expire: entry.expire,
          revalidate,
        }
      } catch (err) {
        // A failing get must never fail a render: it is a miss.
        const e = toStrataError(err)
        logOnce('warn', `get:${e.code}`, 'get failed and was treated as a miss', e)
        return undefined
      }
    },

    async set(cacheKey, pendingEntry) {
      calls.set++
      if (typeof cacheKey !== 'string') throw invalid('cacheKey', 'a string', cacheKey)
      let release
      const pending = new Promise((resolve) => { release = resolve })
      pendingSets.set(cacheKey, pending)
      try {
        let entry
        try {
          entry = await pendingEntry
        } catch (err) {
          log('debug', `set(${cacheKey.slice(0, 80)}): the entry promise rejected; nothing stored`, err)
          return
        }
        if (entry === null || typeof entry !== 'object') throw invalid('pendingEntry', 'a promise of a cache entry object', entry)
        const tags = checkTags('entry.tags', entry.tags)
        const stale = checkNumber('entry.stale', entry.stale)
        const timestamp = checkNumber('entry.timestamp', entry.timestamp)
        const expire = checkNumber('entry.expire', entry.expire)
        const revalidate = checkNumber('entry.revalidate', entry.revalidate)
        if (expire === 0) {
          // Dynamic entry: Next regenerates it on every read, so storing it is wasted work
          // (the built-in handler skips it too). Release the stream.
          if (entry.value && typeof entry.value.cancel === 'function' && !entry.value.locked) {
            entry.value.cancel().catch(() => {})
          }
          bootWith()
          native.ucSet(cacheKey, [], tags, stale, timestamp, expire, revalidate)
          return
        }
        let chunks
        try {
          chunks = await readChunks(entry.value)
        } catch (err) {
          if (err instanceof StrataError) throw err
          // The render errored mid-stream: partial data is never stored.
          log('debug', `set(${cacheKey.slice(0, 80)}): the value stream errored; nothing stored`, err)
          return
        }
        bootWith()
        const bytes = chunks.length === 1 ? chunks[0] : chunks
        let outcome
        try {
          if (l2) {
            const code = await native.ucSetRemote(cacheKey, bytes, tags, stale, timestamp, expire, revalidate)
            outcome = SET_L1[code >> 3]
            const written = SET_L2[code & 7]
            if (written === 'too-large-first') {
              const size = chunks.reduce((n, c) => n + c.byteLength, 0)
              log('warn', `an entry of ${size} bytes is larger than l2MaxValueBytes (${resolved.l2MaxValueBytes}) and stays in this instance's L1 only (warned once)`)
            } else if (written === 'failed') {
              logOnce('warn', 'l2-write-failed', 'a write to Redis failed (timeout or unavailable); the entry stays L1-only (logged once)')
            }
          } else {
            outcome = SET_L1[native.ucSet(cacheKey, bytes, tags, stale, timestamp, expire, revalidate)]
          }
        } catch (err) {
          throw toStrataError(err)
        }
        if (outcome === 'too-large-first') {
          const size = chunks.reduce((n, c) => n + c.byteLength, 0)
          log('warn', `an entry of ${size} bytes is larger than the whole L1 (${resolved.l1MaxBytes} bytes) and was not stored; raise l1MaxBytes / STRATA_L1_MAX_BYTES (warned once)`)
        }
      } finally {
        if (pendingSets.get(cacheKey) === pending) pendingSets.delete(cacheKey)
        release()
      }
    },

    async refreshTags() {
      calls.refreshTags++
      // Never rejects: Next calls it before a request's first read, and a rejection would fail
      // the request. When the shared tag state cannot be read the instance keeps its mirror (in
      // strict mode reads then miss until a refresh succeeds).
      try {
        bootWith()
        if (l2) await native.ucRefreshTags()
      } catch (err) {
        const e = toStrataError(err)
        logOnce('warn', `refreshTags:${e.code}`, 'refreshTags could not read the shared tag state (Redis slow or down); serving from local state', e)
      }
    },

    async getExpiration(tags) {
      calls.getExpiration++
      checkTags('tags', tags)
      try {
        bootWith()
        return native.ucGetExpiration(tags)
      } catch (err) {
        throw toStrataError(err)
      }
    },

    async updateTags(tags, durations) {
      calls.updateTags++
      await updateTags(bootWith, tags, durations)
    },
  }
}

/**
 * Invalidates `tags` for every handler of the process (`updateTags` of 'use cache',
 * `revalidateTag` of the incremental cache): with `durations`, stale now and expired after
 * `durations.expire` seconds; without, expired now. One atomic Redis call with L2.
 */
async function updateTags(bootOnce, tags, durations) {
  checkTags('tags', tags)
  let d = null
  if (durations !== undefined && durations !== null) {
    if (typeof durations !== 'object') throw invalid('durations', 'an object like { expire: seconds }', durations)
    if (durations.expire !== undefined) {
      if (typeof durations.expire !== 'number' || !(durations.expire >= 0)) {
        throw invalid('durations.expire', 'a non-negative number of seconds', durations.expire)
      }
    }
    d = { expire: durations.expire }
  }
  try {
    bootOnce()
    if (l2) await native.ucUpdateTagsRemote(tags, d)
    else native.ucUpdateTags(tags, d)
  } catch (err) {
    throw toStrataError(err)
  }
}

/** Counters of this process: handler calls and the native store. */
function stats() {
  const n = native.nativeStats()
  return {
    calls: { ...calls },
    incrementalCalls: { ...incrementalCalls },
    l1: n
      ? {
          entries: n.entries,
          bytes: n.bytes,
          maxBytes: n.maxBytes,
          hits: n.hits,
          misses: n.misses,
          sets: n.sets,
          evictions: n.evictions,
          skippedDynamic: n.skippedDynamic,
          rejectedTooLarge: n.rejectedTooLarge,
          jsViews: n.jsViews,
        }
      : null,
    tags: n
      ? { updated: n.tagsUpdated, records: n.tagRecords, staleHits: n.staleByTag, expiredMisses: n.expiredByTag }
      : null,
    l2: n && n.l2 ? { ...n.l2 } : null,
    internalPanics: n ? n.internalPanics : 0,
  }
}

/**
 * Delivers invalidations queued while Redis was unavailable (call it before a graceful
 * shutdown). Resolves with how many are still queued after `timeoutMs` (0 = all delivered).
 */
async function flush({ timeoutMs = 5000 } = {}) {
  if (!Number.isFinite(timeoutMs) || timeoutMs < 0) throw invalid('timeoutMs', 'a non-negative number of ms', timeoutMs)
  if (!resolved) return 0
  return native.flush(timeoutMs)
}

/** The configuration in effect (Redis URL redacted), or null before first use. */
function config() {
  return resolved ? { ...resolved } : null
}

/**
 * What the incremental handler (`lib/incremental.js`) shares with this module: one store, one
 * set of pending writes, one configuration. Not public API.
 */
const internals = {
  native,
  pendingSets,
  calls,
  incrementalCalls,
  SET_L1,
  SET_L2,
  validateOptions,
  makeBooter,
  hasL2: () => l2,
  resolved: () => resolved,
  log,
  logOnce,
  invalid,
  checkTags,
  toStrataError,
  updateTags,
  StrataError,
}

module.exports = {
  createUseCacheHandler,
  stats,
  config,
  flush,
  StrataError,
}
Object.defineProperty(module.exports, Symbol.for('strata-cache.internals'), { value: internals })

// Loaded after the exports above exist (it requires this module back).
module.exports.createIncrementalCacheHandler = require('./lib/incremental.js').createIncrementalCacheHandler
