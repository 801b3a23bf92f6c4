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
const { log, warnOncePerCode, debug } = require('./log.js')
const { recorder } = require('./metrics.js')
const store = require('./store.js')

const { native, NO_TAGS, calls, hasL2, pendingSet, beginSet, setLocal, setShared } = store
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
          hit = native.ucGetFresh(cacheKey, soft)
          if (hit === null) {
            // Timed from here: the clock is read only on this path, never on an L1 hit.
            const t0 = performance.now()
            // The request is on its way to Redis when this returns.
            const reply = native.ucGetRemote(cacheKey, soft)
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
            rec.l2Get(t0, cacheKey, hit)
            if (hit !== null && controller !== undefined) {
              controller.enqueue(hit.value)
              controller.close()
            }
          } else if (debug.on) {
            rec.l1Get(cacheKey, hit, true)
          }
        } else {
          // Next checks the soft tags of a 'use cache' entry itself (getExpiration).
          hit = native.ucGet(cacheKey)
          if (debug.on) rec.l1Get(cacheKey, hit, false)
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
          log('debug', `set(${cacheKey.slice(0, 80)}): the entry promise rejected; nothing stored`, err)
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
          log('debug', `set(${cacheKey.slice(0, 80)}): the value stream errored; nothing stored`, err)
          return
        }
        bootOnce()
        const subject = () => `an entry of ${chunks.reduce((n, c) => n + c.byteLength, 0)} bytes`
        let outcome
        try {
          outcome = hasL2()
            ? (await setShared(rec, cacheKey, chunks, tags, stale, timestamp, expire, revalidate, subject)).l1
            : setLocal(rec, cacheKey, chunks, tags, stale, timestamp, expire, revalidate)
        } catch (err) {
          throw toStrataError(err)
        }
        if (outcome === 'too-large-first') {
          log('warn', `${subject()} is larger than the whole L1 (${store.settings().l1MaxBytes} bytes) and was not stored; raise l1MaxBytes / STRATA_L1_MAX_BYTES (warned once)`)
        }
      } finally {
        endSet()
      }
    },

    async refreshTags() {
      calls.refreshTags++
      // Never rejects: Next calls it before a request's first read, and a rejection would fail
      // the request. When the shared tag state cannot be read the instance keeps its mirror (in
      // strict mode reads then miss until a refresh succeeds).
      try {
        bootOnce()
        if (hasL2()) {
          const t0 = performance.now()
          try {
            await native.ucRefreshTags()
          } catch (err) {
            rec.refreshTags(t0, err)
            throw err
          }
          rec.refreshTags(t0)
        }
      } catch (err) {
        warnOncePerCode('refreshTags', 'refreshTags could not read the shared tag state (Redis slow or down); serving from local state', err)
      }
    },

    async getExpiration(tags) {
      calls.getExpiration++
      checkTags('tags', tags)
      try {
        bootOnce()
        return native.ucGetExpiration(tags)
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
