'use strict'
/**
 * The incremental cache handler: Next's singular `cacheHandler` (ISR and prerendered pages, route
 * handlers with `revalidate`, the `fetch` cache, `unstable_cache`, images with
 * `images.customCacheHandler`).
 *
 * It adapts Next's shapes to the store the 'use cache' handler uses (lib/store.js): one L1 byte
 * budget, one Redis connection, one tag state. An entry is one opaque payload in Rust memory
 * (`lib/incremental-codec.js`: metadata + the bodies, binary as binary), stored under the key
 * `INCREMENTAL_KEY_PREFIX + key`, which the core keeps apart from 'use cache' keys in L1, in
 * Redis (`sc:<ns>:i:{…}`) and in the envelope. Every rule that decides (tag expiry, the clock,
 * L1/L2 freshness) lives in the core; this file decides only what Next's incremental cache
 * needs that a 'use cache' entry does not (read from
 * node_modules/next/dist/server/lib/incremental-cache/{index,file-system-cache}.js, 16.4.6):
 *
 * - `get` returns `{ value, lastModified, cacheControl }`; Next computes HIT/STALE itself from
 *   `lastModified` (ms, Next's clock: the entry's timestamp converted into this instance's
 *   clock by the core, so every instance decides alike) and `cacheControl`.
 * - A tag that expired after the entry was written makes `get` a miss (`null`), as the built-in
 *   does. A tag marked stale (`revalidateTag(tag, profile)`) makes the entry look due for
 *   revalidation: `lastModified` is moved back past its `revalidate` window, so Next serves it
 *   once (STALE) and regenerates in the background. Next's own tags manifest is never written
 *   by a custom handler, so both checks must happen here.
 * - Response kinds (`/route-cache/…` keys) that miss are read from the build output
 *   (`.next/server/app|pages/<path>.meta`, `.html`, `.rsc`, `.body`, segments), exactly as the
 *   built-in FileSystemCache seeds them, with the build files' mtime as `lastModified`: a
 *   prerendered route is a HIT at once on every instance, and no instance writes a seed to
 *   Redis (each has the same build). A seed goes into this instance's L1 (not L2) and is judged
 *   against the tag state like any entry, so an invalidated route is never served from it.
 * - Without `cacheComponents` nobody calls `refreshTags`: with Redis, the first `get` of each
 *   handler object (Next makes one per request) follows the invalidation log first.
 */
const { readFile, stat } = require('node:fs/promises')
const path = require('node:path')
const { createRequire } = require('node:module')

const { encodeValue, decodeEntry, tagsOf, checkCacheControl } = require('./incremental-codec.js')
const { StrataError, invalid, toStrataError } = require('./errors.js')
const { byteLength, isObject, isNonNegativeNumber } = require('./checks.js')
const { log, warnOncePerCode } = require('./log.js')
const { recorder } = require('./metrics.js')
/** What this handler shares with the 'use cache' handler: one store, one configuration. */
const store = require('./store.js')

const { native, NO_TAGS, hasL2, pendingSet, beginSet, setLocal, setShared } = store
const { readLocal, readFresh, readRemote, refreshShared } = store
const calls = store.incrementalCalls

/** Store keys of this handler start with this: the core's, which keeps them apart (L1, Redis keys, envelope kind). */
const KEY_PREFIX = native.incrementalKeyPrefix()
/** Latency, OpenTelemetry and debug lines of this handler's operations (lib/metrics.js). */
const rec = recorder('incremental', KEY_PREFIX)
/** Next's `INFINITE_CACHE` (seconds): "never", what `revalidate: false` and no `expire` mean. */
const INFINITE_CACHE = 4294967294
const RESPONSE_KINDS = new Set(['APP_PAGE', 'APP_ROUTE', 'PAGES'])
/** Negative results of build-seed lookups kept per process (the build output never changes). */
const MAX_NO_SEED = 10_000

/** Next's clock (`performance.timeOrigin + performance.now()`), which the core uses too. */
const now = () => performance.timeOrigin + performance.now()

/**
 * Creates the class Next instantiates for `cacheHandler` (a new object per request: the
 * constructor only keeps the context; all state is per process, shared with the 'use cache'
 * handler). Options as `createUseCacheHandler`'s.
 */
function createIncrementalCacheHandler(options) {
  const bootOnce = store.makeBooter(options)
  const seeds = new SeedReader()

  return class StrataIncrementalCache {
    constructor(ctx) {
      /** `{ dev, serverDistDir, revalidatedTags, ... }` (Next's CacheHandlerContext). */
      this.ctx = isObject(ctx) ? ctx : {}
      /** This request's read of the invalidation log (see the module doc and `resetRequestCache`). */
      this.refreshed = undefined
    }

    async get(key, ctx) {
      calls.get++
      try {
        if (typeof key !== 'string') throw invalid('key', 'a string', key)
        const kind = ctx && typeof ctx.kind === 'string' ? ctx.kind : undefined
        const storeKey = KEY_PREFIX + key
        const pending = pendingSet(storeKey)
        if (pending !== undefined) await pending
        bootOnce()
        // A fetch is checked against the tags of this read too (Next leaves tags out of the
        // fetch key: one URL fetched with other `next.tags` shares the entry) and the path it
        // is made under (`ctx.softTags`), as the built-in does (`ctx.tags ∪ ctx.softTags`).
        const softTags = kind === 'FETCH' ? fetchReadTags(ctx) : NO_TAGS
        if (hasL2()) {
          // Once per handler object, i.e. per request.
          if (this.refreshed === undefined) this.refreshed = refreshShared(rec)
          await this.refreshed
        }
        let hit = await lookup(storeKey, softTags)
        if (hit === null && RESPONSE_KINDS.has(kind) && !this.ctx.dev) {
          hit = await seeds.seed(key, storeKey, ctx, this.ctx.serverDistDir)
        }
        if (hit === null) return null
        const { value, cacheControl } = decoded(hit)
        // Next throws on a FETCH entry under a response key and the reverse: a miss instead.
        if (kind !== undefined && (kind === 'FETCH') !== (value !== null && value.kind === 'FETCH')) return null
        let lastModified = hit.timestamp
        if (hit.staleByTag) lastModified = staleLastModified(lastModified, value, cacheControl)
        return cacheControl === undefined ? { value, lastModified } : { value, lastModified, cacheControl }
      } catch (err) {
        // A failing get must never fail a render: it is a miss.
        warnOncePerCode('incremental-get', 'incremental cache get failed and was treated as a miss', err)
        return null
      }
    }

    async set(key, data, ctx) {
      calls.set++
      if (typeof key !== 'string') throw invalid('key', 'a string', key)
      if (data === undefined) throw invalid('data', 'a cache value or null', data)
      const context = isObject(ctx) ? ctx : {}
      const isFetch = data !== null && data.kind === 'FETCH'
      const cacheControl = isFetch ? undefined : checkCacheControl(context.cacheControl)
      const chunks = encodeValue(data, cacheControl)
      // (tagsOf keeps only non-empty strings: nothing to check.)
      const tags = tagsOf(data, context)
      const { revalidate, expire } = lifetimes(data, cacheControl, context)
      const storeKey = KEY_PREFIX + key
      const endSet = beginSet(storeKey)
      try {
        bootOnce()
        const timestamp = now()
        const subject = () => `an incremental cache entry (${key.slice(0, 80)})`
        let report
        try {
          report = hasL2()
            ? await setShared(rec, storeKey, chunks, tags, 0, timestamp, expire, revalidate, subject)
            : setLocal(rec, storeKey, chunks, tags, 0, timestamp, expire, revalidate, subject)
        } catch (err) {
          throw toStrataError(err)
        }
        const { l1, l2 } = report
        // Stored nowhere (larger than all of L1, and than l2MaxValueBytes with Redis): a typed
        // error, which Next logs ("Failed to update prerender cache"); the response is unaffected.
        if (l1.startsWith('too-large') && (l2 === 'none' || l2.startsWith('too-large'))) {
          const size = byteLength(chunks)
          const limits = hasL2()
            ? `l1MaxBytes (${store.settings().l1MaxBytes}) and l2MaxValueBytes (${store.settings().l2MaxValueBytes})`
            : `l1MaxBytes (${store.settings().l1MaxBytes})`
          throw new StrataError('STRATA_TOO_LARGE', `${subject()} of ${size} bytes is larger than ${limits}: not stored`)
        }
      } finally {
        endSet()
      }
    }

    async revalidateTag(tags, durations) {
      calls.revalidateTag++
      const list = typeof tags === 'string' ? [tags] : tags
      await store.updateTags(rec, bootOnce, list, durations)
    }

    /** Next calls it when a request starts (with a handler object it may reuse): follow the log anew. */
    resetRequestCache() {
      this.refreshed = undefined
    }
  }
}

/**
 * Decoded values of the entries L1 holds, keyed by the entry object the store hands out: a
 * retained entry is the same object on every hit, and the store lets go of it when L1 drops the
 * entry, so a value is decoded once per residency (the built-in handler likewise hands out the
 * very object it stored; Next treats it as read-only). Only the strings (html, a fetch body) are
 * materialised in the V8 heap, while the entry is read; every Buffer stays a view of the Rust
 * payload.
 */
const decodedValues = new WeakMap()

function decoded(entry) {
  let d = decodedValues.get(entry)
  if (d === undefined) {
    d = decodeEntry(entry.value)
    decodedValues.set(entry, d)
  }
  return d
}

/** The tags a FETCH read is checked against: `ctx.tags` and `ctx.softTags`. */
function fetchReadTags(ctx) {
  const tags = []
  for (const list of [ctx && ctx.tags, ctx && ctx.softTags]) {
    if (Array.isArray(list)) for (const t of list) if (typeof t === 'string') tags.push(t)
  }
  return tags
}

/**
 * The store's answer for `storeKey`: its entry object (`staleByTag` when a tag is stale) or
 * null. A path invalidated after the entry was written (revalidatePath, a soft tag) makes it a
 * miss, with or without Redis.
 */
function lookup(storeKey, softTags) {
  if (!hasL2()) return readLocal(rec, storeKey, softTags)
  const hit = readFresh(rec, storeKey, softTags)
  return hit !== null ? hit : readRemote(rec, storeKey, softTags)
}

/**
 * The lifetimes the core keeps an entry for (seconds): `revalidate` decides when an L1 copy is
 * checked against L2 for a newer one; `expire` when it is dropped. Next makes the HIT/STALE
 * decision itself from what `get` returns.
 */
function lifetimes(data, cacheControl, ctx) {
  let revalidate = INFINITE_CACHE
  let expire = INFINITE_CACHE
  if (cacheControl !== undefined) {
    if (cacheControl.revalidate !== false) revalidate = cacheControl.revalidate
    if (cacheControl.expire !== undefined) expire = cacheControl.expire
  } else if (data !== null && (data.kind === 'FETCH' || data.kind === 'IMAGE')) {
    const r = data.kind === 'FETCH' && typeof ctx.revalidate === 'number' ? ctx.revalidate : data.revalidate
    if (isNonNegativeNumber(r)) revalidate = r
  }
  // `expire: 0` would be "dynamic, never stored" for the core; Next never caches such a
  // response, but an entry it hands us is kept for at least a second.
  return { revalidate, expire: Math.max(expire, 1) }
}

/**
 * A `lastModified` that makes Next treat the entry as due for revalidation (served once, then
 * regenerated in the background) because one of its tags was marked stale. Next computes
 * staleness from `lastModified` and the entry's `revalidate`, so the stamp moves back just past
 * that window (and never past `expire`, which would make it a blocking miss). With no window
 * (`revalidate: false`) the only way left is -1: Next regenerates before answering.
 */
function staleLastModified(lastModified, value, cacheControl) {
  if (value !== null && value.kind === 'FETCH') {
    // FETCH: `age > (ctx.revalidate || value.revalidate)`; an age of "since the epoch" is
    // past any window.
    return 0
  }
  const revalidate = cacheControl !== undefined ? cacheControl.revalidate : undefined
  if (typeof revalidate !== 'number') return -1
  return Math.min(lastModified, now() - revalidate * 1000 - 1)
}

/**
 * Reads prerendered responses from the build output on a miss, as Next's FileSystemCache
 * does (`file-system-cache.js` `get`: a `/route-cache/<KIND>/<owner>/$<path>` key whose scoped
 * files are absent falls back to the legacy `<path>` files when their `.meta` names this very
 * key), and puts them into this instance's L1.
 */
class SeedReader {
  constructor() {
    this.none = new Set()
    this.manifests = new Map()
  }

  /** The seed of `key` (inserted into L1 and judged there), or null. Never throws. */
  async seed(key, storeKey, ctx, serverDistDir) {
    if (typeof serverDistDir !== 'string') return null
    // Whether a seed applies depends on the read (a fallback shell, a PPR resume), so a
    // negative answer is remembered per variant of the read.
    const variant = `${Boolean(ctx && ctx.isFallback)}${Boolean(ctx && ctx.isRoutePPREnabled)}${key}`
    if (this.none.has(variant)) return null
    const t0 = performance.now()
    let found = null
    let failure
    try {
      found = await readSeed(key, ctx, serverDistDir, await this.manifest(serverDistDir))
    } catch (err) {
      failure = err // no such files (ENOENT), most often: not prerendered
    }
    if (found === null) {
      rec.seed(t0, key, false, failure)
      if (this.none.size >= MAX_NO_SEED) this.none.clear()
      this.none.add(variant)
      return null
    }
    const { value, cacheControl, lastModified } = found
    const chunks = encodeValue(value, cacheControl)
    const { revalidate, expire } = lifetimes(value, cacheControl, {})
    const tags = tagsOf(value, {})
    setLocal(null, storeKey, chunks, tags, 0, lastModified, expire, revalidate)
    // Judged like any entry: a tag invalidated since the build makes it a miss (or stale).
    const hit = native.ucGet(storeKey)
    rec.seed(t0, key, true)
    return hit
  }

  /** `routes` of `.next/prerender-manifest.json` (read once per distDir). */
  manifest(serverDistDir) {
    let routes = this.manifests.get(serverDistDir)
    if (routes === undefined) {
      const file = path.join(serverDistDir, '..', 'prerender-manifest.json')
      routes = readFile(file, 'utf8').then((text) => JSON.parse(text).routes || {}, () => ({}))
      this.manifests.set(serverDistDir, routes)
    }
    return routes
  }
}

/**
 * The minor version of the Next running this process (`16.<minor>`), or -1 when unknown: the few
 * build-output rules that changed between minors follow it. Read once.
 */
function nextMinor() {
  if (nextMinor.value === undefined) {
    nextMinor.value = -1
    try {
      const fromApp = createRequire(path.join(process.cwd(), 'package.json'))
      const version = fromApp('next/package.json').version
      const m = /^16\.(\d+)\./.exec(version)
      if (m) nextMinor.value = Number(m[1])
    } catch {
      // Not resolvable from here: the current rules apply.
    }
  }
  return nextMinor.value
}

/**
 * Next ≥ 16.3 keys responses `/route-cache/<KIND>/<owner>/$<path>` and accepts the build's
 * `<path>` files only when their `.meta` names that very key; Next ≤ 16.2 keys them by the path
 * itself and reads `<path>` files as they are (its `file-system-cache.js`, where a page's
 * `.meta` is optional).
 */
async function readSeed(key, ctx, serverDistDir, routes) {
  const scoped = key.startsWith('/route-cache/')
  let kind = ctx && ctx.kind
  let legacy = key
  if (scoped) {
    kind = key.slice('/route-cache/'.length, key.indexOf('/', '/route-cache/'.length))
    const marker = key.indexOf('/$/')
    if (marker === -1) return null
    legacy = key.slice(marker + 2)
  }
  if (!RESPONSE_KINDS.has(kind)) return null
  const root = path.join(serverDistDir, kind === 'PAGES' ? 'pages' : 'app')
  const base = path.join(root, legacy)
  if (!base.startsWith(root + path.sep)) return null
  const isFallback = Boolean(ctx && ctx.isFallback)
  let meta = {}
  if (scoped) {
    meta = JSON.parse(await readFile(`${base}.meta`, 'utf8'))
    const pprShell = kind === 'APP_PAGE' && ctx && ctx.isRoutePPREnabled && meta.postponed != null
    if (!meta.routeCache || meta.routeCache.key !== key || !(meta.routeCache.isFallback === isFallback || pprShell)) {
      return null
    }
  } else {
    try {
      meta = JSON.parse(await readFile(`${base}.meta`, 'utf8'))
    } catch (err) {
      // A route's `.meta` (status, headers) is required, a page's is not.
      if (kind === 'APP_ROUTE') throw err
    }
  }
  const primary = kind === 'APP_ROUTE' ? `${base}.body` : `${base}.html`
  const lastModified = meta.routeCacheLastModified ?? (await stat(primary)).mtimeMs
  let value
  if (kind === 'APP_ROUTE') {
    value = { kind, body: await readFile(primary), headers: meta.headers, status: meta.status }
  } else if (kind === 'APP_PAGE') {
    let segmentData
    if (Array.isArray(meta.segmentPaths)) {
      segmentData = new Map()
      for (const segmentPath of meta.segmentPaths) {
        try {
          segmentData.set(segmentPath, await readFile(`${base}.segments${segmentPath}.segment.rsc`))
        } catch {
          // As the built-in: a missing segment is treated as one without a prefetch.
        }
      }
    }
    // Which RSC file is the page's RSC data changed between minors (file-system-cache.js):
    // 16.0 reads a PPR page's prefetch file, 16.1 none for a PPR page, 16.2+ the full one when
    // nothing was postponed.
    let rscData
    const ppr = Boolean(ctx && ctx.isRoutePPREnabled)
    const minor = nextMinor()
    if (isFallback) {
      rscData = undefined
    } else if (minor === 0) {
      rscData = await readFile(`${base}${ppr ? '.prefetch.rsc' : '.rsc'}`)
    } else if (minor === 1 ? !ppr : !ppr || meta.postponed == null) {
      rscData = await readFile(`${base}.rsc`)
    }
    value = {
      kind,
      html: await readFile(primary, 'utf8'),
      rscData,
      postponed: meta.postponed,
      headers: meta.headers,
      status: meta.status,
      segmentData,
    }
  } else {
    const pageData = isFallback ? {} : JSON.parse(await readFile(`${base}.json`, 'utf8'))
    value = { kind, html: await readFile(primary, 'utf8'), pageData, headers: meta.headers, status: meta.status }
  }
  // The route's lifetimes as the build recorded them (Next falls back to the same manifest).
  const pathname = legacy === '/index' ? '/' : legacy
  const route = routes[pathname]
  let cacheControl = meta.cacheControl
  if (cacheControl === undefined && route && route.initialRevalidateSeconds !== undefined) {
    cacheControl = { revalidate: route.initialRevalidateSeconds }
    if (typeof route.initialExpireSeconds === 'number') cacheControl.expire = route.initialExpireSeconds
  }
  return { value, cacheControl: checkCacheControl(cacheControl), lastModified }
}

module.exports = { createIncrementalCacheHandler, KEY_PREFIX }
