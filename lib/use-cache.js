'use strict'
/**
 * The 'use cache' handler: the object Next expects for `cacheHandlers` ('use cache' and
 * 'use cache: remote'), argument checks with clear errors, and the web-stream glue. Every rule
 * (expiry, tags, the byte bound) lives in Rust (`core/`), reached through the store
 * (lib/store.js) both handlers share. The shape follows Next's own
 * `packages/next/src/server/lib/cache-handlers/default.ts`.
 */
const { StrataError, invalid, toStrataError } = require('./errors.js')
const { isStringArray, isObject, isBytes, checkTags, checkNumber } = require('./checks.js')
const { log, warnOncePerCode, shortKey } = require('./log.js')
const { recorder } = require('./metrics.js')
const store = require('./store.js')

const { NO_TAGS, calls, hasL2, pendingSet, beginSet, setLocal, setShared } = store
const { readLocal, readFresh, readRemote, refreshShared } = store
/** Latency, OpenTelemetry and debug lines of this handler's operations (lib/metrics.js). */
const rec = recorder('useCache')

/** L2 reads awaiting Redis (decides when a get builds its stream). */
let readsInFlight = 0

/**
 * Creates a handler for Next's `cacheHandlers` ('use cache' / 'use cache: remote').
 * Options are checked now; the store is created when the handler is first used.
 */
function createUseCacheHandler(options) {
  const bootOnce = store.makeBooter(options)

  return {
    async get(cacheKey, softTags) {
      calls.get++
      try {
        if (typeof cacheKey !== 'string') throw invalid('cacheKey', 'a string', cacheKey)
        const pending = pendingSet(cacheKey)
        if (pending !== undefined) await pending
        bootOnce()
        let hit
        let value
        if (hasL2()) {
          // With Redis, a stale or soft-tag-expired L1 copy is checked against L2 first: another
          // instance may have regenerated it already. Only a fresh L1 copy is a hit here; for
          // anything else the read goes to Redis.
          const soft = isStringArray(softTags) ? softTags : NO_TAGS
          hit = readFresh(rec, cacheKey, soft)
          if (hit === null) {
            // The request is on its way to Redis when this returns.
            const reply = readRemote(rec, cacheKey, soft)
            // Alone, a read builds its stream during the round trip, while the thread would
            // otherwise wait (on a miss it is dropped unused). With other reads in flight the
            // thread is busy anyway, and a stream built early costs more than one built after
            // (bench/RESULTS.md): build it after the reply.
            let controller
            if (readsInFlight === 0) value = new ReadableStream({ start(c) { controller = c } })
            readsInFlight++
            try {
              hit = await reply
            } finally {
              readsInFlight--
            }
            if (hit !== null && controller !== undefined) {
              controller.enqueue(hit.value)
              controller.close()
            }
          }
        } else {
          // Next checks the soft tags of a 'use cache' entry itself (getExpiration).
          hit = readLocal(rec, cacheKey, null)
        }
        if (hit === null) return undefined
        return {
          value: value ?? streamOf(hit.value),
          tags: hit.tags.slice(),
          stale: hit.stale,
          timestamp: hit.timestamp,
          expire: hit.expire,
          // A tag of the entry was marked stale after it was created: serve once, refresh.
          revalidate: hit.staleByTag ? -1 : hit.revalidate,
        }
      } catch (err) {
        // A failing get must never fail a render: it is a miss.
        warnOncePerCode('get', 'get failed and was treated as a miss', err)
        return undefined
      }
    },

    async set(cacheKey, pendingEntry) {
      calls.set++
      if (typeof cacheKey !== 'string') throw invalid('cacheKey', 'a string', cacheKey)
      const endSet = beginSet(cacheKey)
      try {
        let entry
        try {
          entry = await pendingEntry
        } catch (err) {
          log('debug', `set(${shortKey(cacheKey)}): the entry promise rejected; nothing stored`, err)
          return
        }
        if (!isObject(entry)) throw invalid('pendingEntry', 'a promise of a cache entry object', entry)
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
          bootOnce()
          setLocal(rec, cacheKey, [], tags, stale, timestamp, expire, revalidate)
          return
        }
        let chunks
        try {
          chunks = await readChunks(entry.value)
        } catch (err) {
          if (err instanceof StrataError) throw err
          // The render errored mid-stream: partial data is never stored.
          log('debug', `set(${shortKey(cacheKey)}): the value stream errored; nothing stored`, err)
          return
        }
        bootOnce()
        try {
          if (hasL2()) await setShared(rec, cacheKey, chunks, tags, stale, timestamp, expire, revalidate)
          else setLocal(rec, cacheKey, chunks, tags, stale, timestamp, expire, revalidate)
        } catch (err) {
          throw toStrataError(err)
        }
      } finally {
        endSet()
      }
    },

    async refreshTags() {
      calls.refreshTags++
      // Never rejects (see `refreshShared`), not even when the store cannot start.
      try {
        bootOnce()
        if (hasL2()) await refreshShared(rec)
      } catch (err) {
        warnOncePerCode('refreshTags', 'refreshTags could not read the shared tag state (Redis slow or down); serving from local state', err)
      }
    },

    async getExpiration(tags) {
      calls.getExpiration++
      checkTags('tags', tags)
      try {
        bootOnce()
        return store.native.ucGetExpiration(tags)
      } catch (err) {
        throw toStrataError(err)
      }
    },

    async updateTags(tags, durations) {
      calls.updateTags++
      await store.updateTags(rec, bootOnce, tags, durations)
    },
  }
}

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
    if (!isBytes(value)) {
      reader.cancel().catch(() => {})
      throw invalid('entry.value chunk', 'a Uint8Array', value)
    }
    chunks.push(value)
  }
  return chunks
}

module.exports = { createUseCacheHandler }
