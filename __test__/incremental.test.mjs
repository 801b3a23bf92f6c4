// The incremental cache handler (`strata-cache/incremental`, Next's singular `cacheHandler`) as
// Next drives it, on the embedded L1 and on two instances sharing one redis-server and one
// namespace (each instance a Node process: the store is per process and the first configuration
// wins, see helpers/incremental-child.mjs):
// - every kind round-trips byte-exactly (same instance; with Redis, the other one too), with
//   `cacheControl` as `set` got it and `lastModified` at the time of the set;
// - keys live apart: `sc:<ns>:i:{…}` in Redis, and a 'use cache' entry under the same key string
//   is another entry;
// - tags per kind (headers for responses, `ctx.tags` for FETCH, `ctx.softTags` on get), both
//   `revalidateTag` forms, one tag state with the 'use cache' handler;
// - bad input: typed errors from `set`, misses from `get` (garbage in Redis included);
// - build seeds read from a fake `.next` (never served again once invalidated, never written to
//   Redis);
// - construction is free (no store until first use, one store for every handler object).
import { execFileSync } from 'node:child_process'
import { createHash, randomBytes } from 'node:crypto'
import { mkdirSync, mkdtempSync, rmSync, utimesSync, writeFileSync } from 'node:fs'
import { createRequire } from 'node:module'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { fileURLToPath } from 'node:url'
import { withPayload } from './helpers/envelope.mjs'
import { Redis } from 'ioredis'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { startChild } from './helpers/child-protocol.mjs'
import { fromWire, toWire } from './helpers/incremental-child.mjs'
import { startRedis } from './helpers/redis-server.mjs'

const require = createRequire(import.meta.url)
const { encodeValue } = require('../lib/incremental-codec.js')

const CHILD = fileURLToPath(new URL('./helpers/incremental-child.mjs', import.meta.url))
/** How long a cross-instance check may take to show (polled; one get per try). */
const CROSS_DEADLINE_MS = 3000
/** How far `lastModified` may be from the time of the set (two processes, one machine). */
const CLOCK_SLACK_MS = 300

// ---------------------------------------------------------------------------------------------
// Instances

/** Starts helpers/incremental-child.mjs with `env` on top of this process's (Redis vars removed). */
async function startInstance(env) {
  const base = { ...process.env }
  delete base.REDIS_URL
  delete base.STRATA_REDIS_URL
  delete base.STRATA_NAMESPACE
  const child = await startChild(CHILD, { STRATA_LOG: 'error', ...env }, { baseEnv: base })
  const { call } = child
  return {
    call,
    /** `set` through a new handler object: this process's clock { before, after } the call. */
    set: (key, data, ctx, handlerCtx) => call('set', { key: toWire(key), data: toWire(data), ctx: toWire(ctx), handlerCtx: toWire(handlerCtx) }),
    /** `get` through a new handler object: { r: its result, now: the child's clock after it }. */
    get: async (key, ctx, handlerCtx) => {
      const { result, now } = await call('get', { key: toWire(key), ctx: toWire(ctx), handlerCtx: toWire(handlerCtx) })
      return { r: fromWire(result), now }
    },
    revalidateTag: (tags, durations) => call('revalidateTag', { tags: toWire(tags), durations: toWire(durations) }),
    ucSet: (key, value, tags = []) => call('ucSet', { key, valueBase64: Buffer.from(value).toString('base64'), tags }),
    ucGet: async (key, softTags = []) => {
      const e = await call('ucGet', { key, softTags })
      return e && { ...e, value: Buffer.from(e.valueBase64, 'base64') }
    },
    ucUpdateTags: (tags, durations) => call('ucUpdateTags', { tags, durations }),
    stop: child.stop,
  }
}


/** Polls `read` until `accept(result)` and returns that result; fails with the last one seen after the deadline. */
async function eventually(read, accept, deadlineMs = CROSS_DEADLINE_MS) {
  const deadline = Date.now() + deadlineMs
  for (;;) {
    const got = await read()
    if (accept(got)) return got
    if (Date.now() > deadline) {
      throw new Error(`not within ${deadlineMs} ms; last: ${String(JSON.stringify(got)).slice(0, 300)}`)
    }
    await new Promise((r) => setTimeout(r, 20))
  }
}

// ---------------------------------------------------------------------------------------------
// Values, shaped as next@16 builds them

/** Deterministic bytes, every value 0x00..0xff included. */
function bytes(n, seed) {
  const b = Buffer.alloc(n)
  let x = seed >>> 0
  for (let i = 0; i < n; i++) {
    x = (Math.imul(x, 1664525) + 1013904223) >>> 0
    b[i] = x >>> 24
  }
  b[0] = 0x00
  b[n - 1] = 0xff
  return b
}

const HTML = '<!DOCTYPE html><html><body><h1>Héllo wörld ✓ 日本語 🎉</h1>\u0000</body></html>'
const PAGE_CC = { revalidate: 30, expire: 300 }
const ROUTE_CC = { revalidate: 5 }

const getCtx = {
  APP_PAGE: { kind: 'APP_PAGE', isRoutePPREnabled: false, isFallback: false },
  APP_ROUTE: { kind: 'APP_ROUTE', isRoutePPREnabled: false, isFallback: false },
  PAGES: { kind: 'PAGES', isRoutePPREnabled: false, isFallback: false },
  IMAGE: { kind: 'IMAGE', isRoutePPREnabled: false, isFallback: false },
  FETCH: (tags = [], softTags = []) => ({ kind: 'FETCH', revalidate: 60, fetchUrl: 'https://api.example.com/x', fetchIdx: 0, tags, softTags }),
}
const setCtx = {
  response: (cacheControl) => ({ cacheControl, isRoutePPREnabled: false, isFallback: false }),
  FETCH: (tags = []) => ({ fetchCache: true, fetchUrl: 'https://api.example.com/x', fetchIdx: 0, tags, isImplicitBuildTimeCache: false }),
}

function appPage(tags = 'page-tag,_N_T_/layout,_N_T_/blog/ünïcode') {
  return {
    kind: 'APP_PAGE',
    html: HTML,
    rscData: bytes(4096, 1),
    headers: {
      'x-next-cache-tags': tags,
      'content-type': 'text/html; charset=utf-8',
      'set-cookie': ['a=1; Path=/', 'b=ü'],
      'x-count': 7,
    },
    postponed: '{"postponed":"ünïcode ✓"}',
    status: 201,
    segmentData: new Map([
      ['/_tree', bytes(100, 2)],
      ['/blog/ünïcode/__PAGE__', Buffer.from('segment ✓ 日本')],
      ['/_index', bytes(1, 3)],
    ]),
  }
}

function appRoute(body = bytes(2048, 4), tags) {
  const headers = { 'content-type': 'application/octet-stream' }
  if (tags !== undefined) headers['x-next-cache-tags'] = tags
  return { kind: 'APP_ROUTE', body, status: 200, headers }
}

function fetchValue(tags = ['fetch-value-tag']) {
  return {
    kind: 'FETCH',
    data: {
      headers: { 'content-type': 'application/json', etag: '"x"' },
      body: Buffer.from(JSON.stringify({ ü: 'ñ', n: [1, 2, 3] })).toString('base64'),
      status: 200,
      url: 'https://api.example.com/x?q=ü',
    },
    tags,
    revalidate: 60,
  }
}

/** [name, data, set ctx, get ctx, cacheControl expected back] for every kind. */
function kindCases() {
  return [
    ['APP_PAGE', appPage(), setCtx.response(PAGE_CC), getCtx.APP_PAGE, PAGE_CC],
    ['APP_PAGE with rscData and postponed undefined', { ...appPage(), rscData: undefined, postponed: undefined }, setCtx.response(PAGE_CC), getCtx.APP_PAGE, PAGE_CC],
    ['APP_ROUTE (binary body)', appRoute(), setCtx.response(ROUTE_CC), getCtx.APP_ROUTE, ROUTE_CC],
    ['APP_ROUTE (empty body)', appRoute(Buffer.alloc(0)), setCtx.response(ROUTE_CC), getCtx.APP_ROUTE, ROUTE_CC],
    ['PAGES', {
      kind: 'PAGES',
      html: HTML,
      pageData: { pageProps: { title: 'ünïcode ✓', list: [1, null, 'x'], nested: { deep: true } } },
      headers: { 'x-next-cache-tags': 'pages-tag' },
      status: 200,
    }, setCtx.response({ revalidate: 10, expire: 100 }), getCtx.PAGES, { revalidate: 10, expire: 100 }],
    ['FETCH', fetchValue(), setCtx.FETCH(['fetch-value-tag']), getCtx.FETCH(['fetch-value-tag']), undefined],
    ['REDIRECT', { kind: 'REDIRECT', props: { __N_REDIRECT: '/ünïcode', __N_REDIRECT_STATUS: 307 } }, setCtx.response({ revalidate: 60 }), getCtx.PAGES, { revalidate: 60 }],
    ['IMAGE', {
      kind: 'IMAGE', etag: 'W/"abc"', upstreamEtag: '"up"', buffer: bytes(3000, 5), extension: 'webp',
    }, setCtx.response({ revalidate: 60, expire: 3600 }), getCtx.IMAGE, { revalidate: 60, expire: 3600 }],
    ['null (a cached notFound)', null, setCtx.response({ revalidate: 15 }), getCtx.APP_PAGE, { revalidate: 15 }],
  ]
}

/** Every own key (present-but-undefined included), Map order and every byte. */
function expectSameValue(got, want) {
  expect(got).toStrictEqual(want)
  if (want === null) return
  expect(Object.keys(got).sort()).toEqual(Object.keys(want).sort())
  for (const k of Object.keys(want)) {
    if (want[k] instanceof Map) {
      expect([...got[k].keys()]).toEqual([...want[k].keys()])
      for (const [name, b] of want[k]) expect(Buffer.compare(got[k].get(name), b)).toBe(0)
    }
    if (Buffer.isBuffer(want[k])) {
      expect(Buffer.isBuffer(got[k])).toBe(true)
      expect(Buffer.compare(got[k], want[k])).toBe(0)
    }
  }
}

let unique = 0
/** A key/tag nobody else in this file uses. */
const uid = (prefix) => `${prefix}-${process.pid}-${++unique}`

// ---------------------------------------------------------------------------------------------
// A fake build output (`.next`)

const sha = (s) => createHash('sha256').update(s).digest('hex')
const ROUTE_KEY = `/route-cache/APP_ROUTE/${sha('/api/time/route')}/$/api/time`
const OTHER_ROUTE_KEY = `/route-cache/APP_ROUTE/${sha('/api/other/route')}/$/api/other`
const PAGE_KEY = `/route-cache/APP_PAGE/${sha('/page')}/$/index`
/** Fallback shells (`isFallback: true` in their .meta) of two dynamic pages. */
const fallbackKey = (name) => `/route-cache/APP_PAGE/${sha(`/${name}/[slug]/page`)}/$/${name}/[slug]`
const FALLBACK_HTML = '<html><body>loading ✓</body></html>'
/** Whole seconds, so the mtime in ms is exact. */
const SEED_MTIME_S = Math.floor(Date.now() / 1000) - 3600
const SEED_BODY = Buffer.concat([Buffer.from('{"time":"seed ✓"}'), Buffer.from([0x00, 0xff])])
const SEED_HTML = '<html><body>seeded ✓ 日本</body></html>'
const SEED_RSC = bytes(700, 9)
const SEED_TREE = bytes(64, 10)
const SEED_ROUTE_HEADERS = { 'content-type': 'application/json', 'x-next-cache-tags': '_N_T_/layout,_N_T_/api/time' }
const SEED_PAGE_HEADERS = { 'x-next-cache-tags': '_N_T_/layout,_N_T_/page,_N_T_/' }

function makeBuildOutput() {
  const root = mkdtempSync(join(tmpdir(), 'strata-incremental-'))
  const server = join(root, '.next', 'server')
  const api = join(server, 'app', 'api')
  mkdirSync(join(server, 'app', 'index.segments'), { recursive: true })
  mkdirSync(api, { recursive: true })
  writeFileSync(join(api, 'time.body'), SEED_BODY)
  writeFileSync(join(api, 'time.meta'), JSON.stringify({
    status: 200,
    headers: SEED_ROUTE_HEADERS,
    routeCache: { key: ROUTE_KEY, owner: { kind: 'APP_ROUTE', sourceRoute: '/api/time/route' }, isFallback: false },
  }))
  utimesSync(join(api, 'time.body'), SEED_MTIME_S, SEED_MTIME_S)
  // A build output whose meta names another key: not the seed of OTHER_ROUTE_KEY.
  writeFileSync(join(api, 'other.body'), Buffer.from('other'))
  writeFileSync(join(api, 'other.meta'), JSON.stringify({
    status: 200,
    headers: { 'content-type': 'text/plain' },
    routeCache: { key: `/route-cache/APP_ROUTE/${sha('/api/else/route')}/$/api/other`, owner: { kind: 'APP_ROUTE', sourceRoute: '/api/else/route' }, isFallback: false },
  }))
  const app = join(server, 'app')
  writeFileSync(join(app, 'index.html'), SEED_HTML)
  writeFileSync(join(app, 'index.rsc'), SEED_RSC)
  writeFileSync(join(app, 'index.segments', '_tree.segment.rsc'), SEED_TREE)
  writeFileSync(join(app, 'index.meta'), JSON.stringify({
    status: 200,
    headers: SEED_PAGE_HEADERS,
    segmentPaths: ['/_tree'],
    routeCache: { key: PAGE_KEY, owner: { kind: 'APP_PAGE', sourceRoute: '/page' }, isFallback: false },
  }))
  utimesSync(join(app, 'index.html'), SEED_MTIME_S, SEED_MTIME_S)
  for (const name of ['blog', 'docs']) {
    mkdirSync(join(app, name), { recursive: true })
    writeFileSync(join(app, name, '[slug].html'), FALLBACK_HTML)
    writeFileSync(join(app, name, '[slug].meta'), JSON.stringify({
      status: 200,
      headers: { 'x-next-cache-tags': `_N_T_/${name}/[slug]` },
      routeCache: { key: fallbackKey(name), owner: { kind: 'APP_PAGE', sourceRoute: `/${name}/[slug]/page` }, isFallback: true },
    }))
  }
  writeFileSync(join(root, '.next', 'prerender-manifest.json'), JSON.stringify({
    version: 4,
    routes: {
      '/api/time': { initialRevalidateSeconds: 3, srcRoute: '/api/time', dataRoute: null },
      '/': { initialRevalidateSeconds: 10, initialExpireSeconds: 31536000, srcRoute: '/', dataRoute: '/index.rsc' },
    },
    dynamicRoutes: {},
    notFoundRoutes: [],
  }))
  return { root, server }
}

// ---------------------------------------------------------------------------------------------
// The same contract on both stores

const modes = [
  {
    name: 'embedded L1',
    async setup(state) {
      state.writer = await startInstance({})
      state.readers = [state.writer]
    },
  },
  {
    name: 'Redis (two instances, one namespace)',
    redis: true,
    async setup(state) {
      state.redis = await startRedis()
      state.ns = `inc${process.pid}`
      const env = { REDIS_URL: state.redis.url, STRATA_NAMESPACE: state.ns, STRATA_REDIS_TIMEOUT_MS: '200' }
      state.writer = await startInstance(env)
      state.other = await startInstance(env)
      state.readers = [state.writer, state.other]
      state.client = new Redis(state.redis.url, { lazyConnect: true, maxRetriesPerRequest: 1 })
      await state.client.connect()
    },
  },
]

for (const mode of modes) {
  describe(mode.name, () => {
    const s = {}
    let build
    beforeAll(async () => {
      build = makeBuildOutput()
      await mode.setup(s)
    })
    afterAll(async () => {
      await Promise.all([s.writer?.stop(), s.other?.stop()])
      s.client?.disconnect()
      await s.redis?.stop()
      if (build) rmSync(build.root, { recursive: true, force: true })
    })
    const readerName = (i) => (i === 0 ? 'the writer' : 'the other instance')

    it('every kind round-trips byte-exactly, with its cacheControl and the time of the set', async () => {
      for (const [name, data, sctx, gctx, cc] of kindCases()) {
        const key = uid('/rt')
        const { before, after } = await s.writer.set(key, data, sctx)
        for (const [i, reader] of s.readers.entries()) {
          const { r, now } = await reader.get(key, gctx)
          const where = `${name} read on ${readerName(i)}`
          expect(r, where).not.toBeNull()
          expectSameValue(r.value, data)
          if (cc === undefined) expect(Object.keys(r), where).toEqual(['value', 'lastModified'])
          else expect(r.cacheControl, where).toStrictEqual(cc)
          expect(typeof r.lastModified, where).toBe('number')
          expect(r.lastModified, where).toBeGreaterThanOrEqual(before - CLOCK_SLACK_MS)
          expect(r.lastModified, where).toBeLessThanOrEqual(after + CLOCK_SLACK_MS)
          expect(r.lastModified, where).toBeLessThanOrEqual(now + CLOCK_SLACK_MS)
        }
      }
    })

    it('a later set replaces the entry on the writer at once', async () => {
      const key = uid('/replace')
      await s.writer.set(key, appRoute(Buffer.from('first')), setCtx.response(ROUTE_CC))
      expect((await s.writer.get(key, getCtx.APP_ROUTE)).r.value.body.toString()).toBe('first')
      const second = await s.writer.set(key, appRoute(Buffer.from('second')), setCtx.response({ revalidate: 9 }))
      const { r } = await s.writer.get(key, getCtx.APP_ROUTE)
      expect(r.value.body.toString()).toBe('second')
      expect(r.cacheControl).toStrictEqual({ revalidate: 9 })
      expect(r.lastModified).toBeGreaterThanOrEqual(second.before - CLOCK_SLACK_MS)
    })

    if (mode.redis) {
      // An L1 copy past its revalidate window is compared with L2 (core `get_local_fresh`).
      it('another instance picks up a newer entry once its own copy is past its revalidate window', async () => {
        const key = uid('/replace')
        const first = await s.writer.set(key, appRoute(Buffer.from('first')), setCtx.response({ revalidate: 1 }))
        expect((await s.other.get(key, getCtx.APP_ROUTE)).r.value.body.toString()).toBe('first')
        await s.writer.set(key, appRoute(Buffer.from('second')), setCtx.response({ revalidate: 9 }))
        const got = await eventually(() => s.other.get(key, getCtx.APP_ROUTE), ({ r }) => r?.value.body.toString() === 'second', 1500)
        expect(got.r.value.body.toString()).toBe('second')
        // No later than the first entry's window (plus a poll's slack).
        expect(got.now - first.after).toBeLessThan(1000 + 500)
      })
    }

    it("a 'use cache' entry under the same key string is another entry", async () => {
      const key = uid('/same-key')
      await s.writer.set(key, appRoute(Buffer.from('incremental')), setCtx.response(ROUTE_CC))
      await s.writer.ucSet(key, Buffer.from('use cache'))
      for (const reader of s.readers) {
        expect((await reader.get(key, getCtx.APP_ROUTE)).r.value.body.toString()).toBe('incremental')
        expect((await reader.ucGet(key)).value.toString()).toBe('use cache')
      }
      // And the other way round: a 'use cache' entry first, then an incremental one.
      const key2 = uid('/same-key')
      await s.writer.ucSet(key2, Buffer.from('use cache 2'))
      expect((await s.writer.get(key2, getCtx.APP_ROUTE)).r).toBeNull()
      await s.writer.set(key2, appRoute(Buffer.from('incremental 2')), setCtx.response(ROUTE_CC))
      for (const reader of s.readers) {
        expect((await reader.ucGet(key2)).value.toString()).toBe('use cache 2')
        expect((await reader.get(key2, getCtx.APP_ROUTE)).r.value.body.toString()).toBe('incremental 2')
      }
    })

    it('revalidateTag(tag) hard-expires by the tags of each kind, on every instance', async () => {
      const t = { page: uid('page'), route: uid('route'), fetch: uid('fetch'), fetchValue: uid('fetch-value'), pages: uid('pages') }
      const keys = { page: uid('/p'), route: uid('/r'), fetch: uid('f'), pages: uid('/pages') }
      await s.writer.set(keys.page, appPage(`other-tag,${t.page}`), setCtx.response(PAGE_CC))
      await s.writer.set(keys.route, appRoute(bytes(10, 1), t.route), setCtx.response(ROUTE_CC))
      // FETCH: the tags are `ctx.tags` of the set, not the value's own list.
      await s.writer.set(keys.fetch, fetchValue([t.fetchValue]), setCtx.FETCH([t.fetch]))
      await s.writer.set(keys.pages, { kind: 'PAGES', html: 'x', pageData: {}, headers: { 'x-next-cache-tags': t.pages }, status: 200 }, setCtx.response(PAGE_CC))
      const read = {
        page: (reader) => reader.get(keys.page, getCtx.APP_PAGE),
        route: (reader) => reader.get(keys.route, getCtx.APP_ROUTE),
        fetch: (reader) => reader.get(keys.fetch, getCtx.FETCH()),
        pages: (reader) => reader.get(keys.pages, getCtx.PAGES),
      }
      const hits = async (reader) => Object.fromEntries(await Promise.all(
        Object.entries(read).map(async ([k, f]) => [k, (await f(reader)).r !== null])))
      // Every instance holds a copy first (so a stale L1 copy would show below).
      for (const reader of s.readers) expect(await hits(reader)).toEqual({ page: true, route: true, fetch: true, pages: true })

      // Tags that are not the entries' own leave them alone (incl. FETCH's value.tags).
      await s.writer.revalidateTag([uid('unrelated'), 'page-tag', t.fetchValue])
      for (const reader of s.readers) expect(await hits(reader)).toEqual({ page: true, route: true, fetch: true, pages: true })

      await s.writer.revalidateTag(t.page)
      expect(await hits(s.writer)).toEqual({ page: false, route: true, fetch: true, pages: true })
      await s.writer.revalidateTag([t.route, t.fetch])
      await s.writer.revalidateTag(t.pages)
      for (const [i, reader] of s.readers.entries()) {
        const got = await eventually(() => hits(reader), (h) => !h.page && !h.route && !h.fetch && !h.pages)
        expect(got, readerName(i)).toEqual({ page: false, route: false, fetch: false, pages: false })
      }
      // A new set after the invalidation is served again.
      await s.writer.set(keys.route, appRoute(Buffer.from('regenerated'), t.route), setCtx.response(ROUTE_CC))
      for (const reader of s.readers) {
        const { r } = await eventually(() => read.route(reader), ({ r }) => r !== null)
        expect(r.value.body.toString()).toBe('regenerated')
      }
    })

    it('revalidateTag(tag, { expire }) makes entries stale-while-revalidate; a new set is fresh again', async () => {
      const t = uid('swr')
      const keys = { page: uid('/swr-page'), route: uid('/swr-route'), fetch: uid('swr-fetch'), forever: uid('/swr-forever') }
      const set = {
        page: () => s.writer.set(keys.page, appPage(`x,${t}`), setCtx.response(PAGE_CC)),
        route: () => s.writer.set(keys.route, appRoute(Buffer.from('route'), t), setCtx.response(ROUTE_CC)),
        fetch: () => s.writer.set(keys.fetch, fetchValue(), setCtx.FETCH([t])),
        forever: () => s.writer.set(keys.forever, appRoute(Buffer.from('forever'), t), setCtx.response({ revalidate: false })),
      }
      const read = {
        page: (reader) => reader.get(keys.page, getCtx.APP_PAGE),
        route: (reader) => reader.get(keys.route, getCtx.APP_ROUTE),
        fetch: (reader) => reader.get(keys.fetch, getCtx.FETCH([t])),
        forever: (reader) => reader.get(keys.forever, getCtx.APP_ROUTE),
      }
      const windows = { page: PAGE_CC.revalidate, route: ROUTE_CC.revalidate }
      const setTimes = {}
      for (const k of Object.keys(set)) setTimes[k] = await set[k]()
      const isStaleForNext = (k, { r, now }) => r !== null && (k === 'fetch' ? r.lastModified === 0
        : k === 'forever' ? r.lastModified === -1 : r.lastModified + windows[k] * 1000 < now)
      for (const reader of s.readers) {
        for (const k of Object.keys(read)) expect(isStaleForNext(k, await read[k](reader)), k).toBe(false)
      }

      await s.writer.revalidateTag(t, { expire: 100 })
      for (const [i, reader] of s.readers.entries()) {
        for (const k of Object.keys(read)) {
          const got = await eventually(() => read[k](reader), (g) => isStaleForNext(k, g))
          const where = `${k} on ${readerName(i)}`
          expect(got.r, where).not.toBeNull()
          expect(isStaleForNext(k, got), `${where}: lastModified ${got.r.lastModified}, now ${got.now}`).toBe(true)
          if (k === 'page') {
            expectSameValue(got.r.value, appPage(`x,${t}`))
            expect(got.r.cacheControl).toStrictEqual(PAGE_CC)
            // Not moved past `expire` either (that would be a blocking regeneration in Next).
            expect(got.r.lastModified + PAGE_CC.expire * 1000).toBeGreaterThan(got.now)
          }
          if (k === 'route') expect(got.r.value.body.toString()).toBe('route')
          if (k === 'fetch') expectSameValue(got.r.value, fetchValue())
        }
      }

      // Regenerated after the mark: fresh again, stamped with the time of the new set.
      for (const k of Object.keys(set)) setTimes[k] = await set[k]()
      for (const [i, reader] of s.readers.entries()) {
        for (const k of Object.keys(read)) {
          const got = await eventually(() => read[k](reader), (g) => g.r !== null && !isStaleForNext(k, g))
          const where = `${k} on ${readerName(i)} after the new set`
          expect(isStaleForNext(k, got), where).toBe(false)
          expect(got.r.lastModified, where).toBeGreaterThanOrEqual(setTimes[k].before - CLOCK_SLACK_MS)
          expect(got.r.lastModified, where).toBeLessThanOrEqual(setTimes[k].after + CLOCK_SLACK_MS)
        }
      }
    })

    it('FETCH soft tags are the ones the get passes (revalidatePath)', async () => {
      const key = uid('soft-fetch')
      const soft = `_N_T_/${uid('p')}`
      await s.writer.set(key, fetchValue(), setCtx.FETCH([uid('own')]))
      for (const reader of s.readers) expect((await reader.get(key, getCtx.FETCH([], [soft]))).r).not.toBeNull()
      await s.writer.revalidateTag([soft])
      for (const [i, reader] of s.readers.entries()) {
        const { r } = await eventually(() => reader.get(key, getCtx.FETCH([], [soft])), ({ r }) => r === null)
        expect(r, readerName(i)).toBeNull()
      }
      // The entry itself does not carry the soft tag: a read that does not pass it still hits.
      expect((await s.writer.get(key, getCtx.FETCH([], [`_N_T_/${uid('elsewhere')}`]))).r).not.toBeNull()
    })

    it("one tag state with the 'use cache' handler, both ways", async () => {
      const products = uid('products')
      const ucKey = uid('["uc","products"]')
      const routeKey = uid('/products')
      const fetchKey = uid('products-fetch')
      await s.writer.ucSet(ucKey, Buffer.from('uc value'), [products])
      await s.writer.set(routeKey, appRoute(Buffer.from('route'), `a,${products}`), setCtx.response(ROUTE_CC))
      await s.writer.set(fetchKey, fetchValue(), setCtx.FETCH([products]))
      expect((await s.writer.ucGet(ucKey)).value.toString()).toBe('uc value')

      // The incremental handler's revalidateTag reaches the 'use cache' entry.
      await s.writer.revalidateTag(products)
      expect(await s.writer.ucGet(ucKey)).toBeNull()
      expect((await s.writer.get(routeKey, getCtx.APP_ROUTE)).r).toBeNull()

      // The 'use cache' handler's updateTags reaches incremental entries.
      const products2 = uid('products')
      const routeKey2 = uid('/products')
      const fetchKey2 = uid('products-fetch')
      await s.writer.set(routeKey2, appRoute(Buffer.from('route'), products2), setCtx.response(ROUTE_CC))
      await s.writer.set(fetchKey2, fetchValue(), setCtx.FETCH([products2]))
      expect((await s.writer.get(routeKey2, getCtx.APP_ROUTE)).r).not.toBeNull()
      expect((await s.writer.get(fetchKey2, getCtx.FETCH([products2]))).r).not.toBeNull()
      await s.writer.ucUpdateTags([products2])
      expect((await s.writer.get(routeKey2, getCtx.APP_ROUTE)).r).toBeNull()
      expect((await s.writer.get(fetchKey2, getCtx.FETCH([products2]))).r).toBeNull()
      for (const [i, reader] of s.readers.entries()) {
        const { r } = await eventually(() => reader.get(routeKey2, getCtx.APP_ROUTE), ({ r }) => r === null)
        expect(r, readerName(i)).toBeNull()
      }
    })

    it('bad values are STRATA_INVALID_ARG from set, naming the field; nothing is stored', async () => {
      const bad = [
        ['value.kind', { kind: 'APP_PAGES', html: 'x' }, setCtx.response(PAGE_CC)],
        ['value.html', { ...appPage(), html: Buffer.from('not a string') }, setCtx.response(PAGE_CC)],
        ['value.body', { ...appRoute(), body: 'not a Buffer' }, setCtx.response(ROUTE_CC)],
        ['value.segmentData', { ...appPage(), segmentData: { '/_tree': bytes(3, 1) } }, setCtx.response(PAGE_CC)],
        ['value.data.body', { ...fetchValue(), data: { ...fetchValue().data, body: Buffer.from('x') } }, setCtx.FETCH()],
        ['cacheControl.revalidate', appRoute(), setCtx.response({ revalidate: 'soon' })],
        ['key', appRoute(), setCtx.response(ROUTE_CC), 42],
      ]
      for (const [field, data, ctx, badKey] of bad) {
        const key = badKey ?? uid('/bad')
        const err = await s.writer.set(key, data, ctx).then(() => null, (e) => e)
        expect(err, field).not.toBeNull()
        expect(err.code, field).toBe('STRATA_INVALID_ARG')
        expect(err.message, field).toContain(`\`${field}\``)
        if (badKey === undefined) {
          for (const reader of s.readers) {
            expect((await reader.get(key, getCtx.APP_PAGE)).r, field).toBeNull()
            expect((await reader.get(key, getCtx.FETCH())).r, field).toBeNull()
          }
        }
      }
    })

    it('get never throws: bad keys and a kind that does not match the entry are misses', async () => {
      for (const key of [42, null, undefined, { k: 1 }, ['a']]) {
        const got = await s.writer.call('getNoThrow', { key: toWire(key), ctx: toWire(getCtx.APP_PAGE) })
        expect(got, JSON.stringify(key)).toEqual({ threw: false, result: null })
      }
      const fetchKey = uid('kind-fetch')
      const routeKey = uid('/kind-route')
      await s.writer.set(fetchKey, fetchValue(), setCtx.FETCH())
      await s.writer.set(routeKey, appRoute(), setCtx.response(ROUTE_CC))
      for (const [i, reader] of s.readers.entries()) {
        // Each read the right way hits (so the misses below are the kind check).
        expect((await reader.get(fetchKey, getCtx.FETCH())).r, readerName(i)).not.toBeNull()
        expect((await reader.get(routeKey, getCtx.APP_ROUTE)).r, readerName(i)).not.toBeNull()
        for (const ctx of [getCtx.APP_ROUTE, getCtx.APP_PAGE, getCtx.PAGES]) {
          const got = await reader.call('getNoThrow', { key: fetchKey, ctx: toWire(ctx) })
          expect(got, `FETCH read as ${ctx.kind} on ${readerName(i)}`).toEqual({ threw: false, result: null })
        }
        const got = await reader.call('getNoThrow', { key: routeKey, ctx: toWire(getCtx.FETCH()) })
        expect(got, `APP_ROUTE read as FETCH on ${readerName(i)}`).toEqual({ threw: false, result: null })
      }
    })

    it('build seeds: a prerendered route is served from .next until a tag invalidates it', async () => {
      const handlerCtx = { serverDistDir: build.server, dev: false }
      const keysBefore = s.client ? await s.client.keys(`sc:${s.ns}:i:*`) : []
      for (const [i, reader] of s.readers.entries()) {
        // A handler object without a serverDistDir reads no build output.
        expect((await reader.get(ROUTE_KEY, { kind: 'APP_ROUTE', isFallback: false })).r, readerName(i)).toBeNull()
        const { r } = await reader.get(ROUTE_KEY, { kind: 'APP_ROUTE', isFallback: false }, handlerCtx)
        expect(r, readerName(i)).not.toBeNull()
        expectSameValue(r.value, { kind: 'APP_ROUTE', body: SEED_BODY, headers: SEED_ROUTE_HEADERS, status: 200 })
        expect(r.lastModified).toBe(SEED_MTIME_S * 1000)
        expect(r.cacheControl).toStrictEqual({ revalidate: 3 })

        const page = await reader.get(PAGE_KEY, { kind: 'APP_PAGE', isFallback: false, isRoutePPREnabled: false }, handlerCtx)
        expect(page.r, readerName(i)).not.toBeNull()
        expectSameValue(page.r.value, {
          kind: 'APP_PAGE',
          html: SEED_HTML,
          rscData: SEED_RSC,
          postponed: undefined,
          headers: SEED_PAGE_HEADERS,
          status: 200,
          segmentData: new Map([['/_tree', SEED_TREE]]),
        })
        expect(page.r.lastModified).toBe(SEED_MTIME_S * 1000)
        expect(page.r.cacheControl).toStrictEqual({ revalidate: 10, expire: 31536000 })

        // A .meta that names another key is not this key's seed; no .meta, no seed.
        expect((await reader.get(OTHER_ROUTE_KEY, { kind: 'APP_ROUTE', isFallback: false }, handlerCtx)).r).toBeNull()
        expect((await reader.get(uid('/route-cache/APP_ROUTE/x/$/api/time'), { kind: 'APP_ROUTE', isFallback: false }, handlerCtx)).r).toBeNull()
        // A fallback shell is read as one (no RSC data), as the built-in does.
        const shell = await reader.get(fallbackKey('blog'), { kind: 'APP_PAGE', isFallback: true, isRoutePPREnabled: false }, handlerCtx)
        expectSameValue(shell.r?.value, {
          kind: 'APP_PAGE',
          html: FALLBACK_HTML,
          rscData: undefined,
          postponed: undefined,
          headers: { 'x-next-cache-tags': '_N_T_/blog/[slug]' },
          status: 200,
          segmentData: undefined,
        })
      }
      if (s.client) {
        // Each instance has the same build: no seed is written to Redis.
        expect(await s.client.keys(`sc:${s.ns}:i:*`)).toHaveLength(keysBefore.length)
      }

      await s.writer.revalidateTag('_N_T_/api/time')
      for (const [i, reader] of s.readers.entries()) {
        const read = () => reader.get(ROUTE_KEY, { kind: 'APP_ROUTE', isFallback: false }, handlerCtx)
        expect((await eventually(read, ({ r }) => r === null)).r, readerName(i)).toBeNull()
        // ... and stays a miss (never read from disk again as if fresh).
        expect((await read()).r, readerName(i)).toBeNull()
        // The page's tags were not touched.
        expect((await reader.get(PAGE_KEY, { kind: 'APP_PAGE', isFallback: false }, handlerCtx)).r).not.toBeNull()
      }
      // What Next regenerates after that is served.
      await s.writer.set(ROUTE_KEY, appRoute(Buffer.from('regenerated'), '_N_T_/layout,_N_T_/api/time'), setCtx.response({ revalidate: 3 }))
      for (const reader of s.readers) {
        const { r } = await eventually(() => reader.get(ROUTE_KEY, { kind: 'APP_ROUTE', isFallback: false }, handlerCtx), ({ r }) => r !== null)
        expect(r.value.body.toString()).toBe('regenerated')
        expect(r.lastModified).toBeGreaterThan(SEED_MTIME_S * 1000 + 3_000_000)
      }
    })

    // "No seed" is remembered per variant of the read (isFallback, PPR), not per key.
    it('build seeds: a miss for one isFallback does not hide the seed from the other', async () => {
      const handlerCtx = { serverDistDir: build.server, dev: false }
      const key = fallbackKey('docs')
      expect((await s.writer.get(key, { kind: 'APP_PAGE', isFallback: false, isRoutePPREnabled: false }, handlerCtx)).r).toBeNull()
      const shell = await s.writer.get(key, { kind: 'APP_PAGE', isFallback: true, isRoutePPREnabled: false }, handlerCtx)
      expect(shell.r?.value.html).toBe(FALLBACK_HTML)
    })

    // Next checks a FETCH entry against the tags of the get context too (`ctx.tags` ∪
    // `ctx.softTags`): the fetch key leaves tags out, so one URL fetched with other tags shares it.
    it("FETCH: a tag of the get context invalidates the entry too", async () => {
      const key = uid('shared-url')
      const [a, b] = [uid('fetch-a'), uid('fetch-b')]
      await s.writer.set(key, fetchValue([a]), setCtx.FETCH([a]))
      expect((await s.writer.get(key, getCtx.FETCH([b]))).r).not.toBeNull()
      await s.writer.revalidateTag(b)
      expect((await s.writer.get(key, getCtx.FETCH([b]))).r).toBeNull()
    })

    it('revalidateTag takes a string or an array', async () => {
      const [a, b, c] = [uid('str'), uid('arr'), uid('arr')]
      const keys = [uid('/ta'), uid('/tb'), uid('/tc')]
      for (const [i, t] of [a, b, c].entries()) await s.writer.set(keys[i], appRoute(Buffer.from(t), t), setCtx.response(ROUTE_CC))
      const hits = async () => Promise.all(keys.map(async (k) => (await s.writer.get(k, getCtx.APP_ROUTE)).r !== null))
      expect(await hits()).toEqual([true, true, true])
      await s.writer.revalidateTag(a)
      expect(await hits()).toEqual([false, true, true])
      await s.writer.revalidateTag([b, c])
      expect(await hits()).toEqual([false, false, false])
      const err = await s.writer.revalidateTag(42).then(() => null, (e) => e)
      expect(err?.code).toBe('STRATA_INVALID_ARG')
    })

    if (mode.redis) {
      const entryKeyPattern = () => new RegExp(`^sc:${s.ns}:i:\\{[0-9a-f]{32}\\}$`)

      it('one revalidateTag reaching both handlers in one tick is one Redis call; later ones are their own', async () => {
        const invalidations = async () => (await s.writer.call('stats')).l2.invalidations
        const tag = uid('both')
        const before = await invalidations()
        await s.writer.call('bothInvalidate', { tags: [tag] })
        expect(await invalidations()).toBe(before + 1)
        await s.writer.call('bothInvalidate', { tags: [tag], durations: { expire: 60 } })
        expect(await invalidations()).toBe(before + 2)
        await s.writer.call('ucUpdateTags', { tags: [tag] })
        await s.writer.revalidateTag([tag])
        expect(await invalidations()).toBe(before + 4)
      })

      /** The Redis keys matching `pattern` that `action` creates. */
      async function keysCreatedBy(pattern, action) {
        const before = new Set(await s.client.keys(pattern))
        await action()
        return (await s.client.keys(pattern)).filter((k) => !before.has(k))
      }

      // Entries are stamped with the lower bound of the clock offset (core `sync_clock`): an
      // invalidation right after a set always reaches it.
      it('an invalidation issued right after a set expires the entry (no clock-offset window)', async () => {
        const { survivors } = await s.writer.call('setThenInvalidate', { prefix: uid('race'), n: 20 })
        expect(survivors).toBe(0)
      })

      it("an entry lives under sc:<ns>:i:{<32 hex>}, apart from the 'use cache' entry of the same key", async () => {
        const key = uid('/keys')
        const created = await keysCreatedBy(`sc:${s.ns}:*`, () => s.writer.set(key, appRoute(Buffer.from('inc')), setCtx.response(ROUTE_CC)))
        expect(created).toHaveLength(1)
        expect(created[0]).toMatch(entryKeyPattern())
        const ucCreated = await keysCreatedBy(`sc:${s.ns}:*`, () => s.writer.ucSet(key, Buffer.from('uc')))
        expect(ucCreated).toHaveLength(1)
        expect(ucCreated[0]).toMatch(new RegExp(`^sc:${s.ns}:e:\\{[0-9a-f]{32}\\}$`))
        expect(ucCreated[0].slice(-34)).not.toBe(created[0].slice(-34))
        expect((await s.other.get(key, getCtx.APP_ROUTE)).r.value.body.toString()).toBe('inc')
        expect((await s.other.ucGet(key)).value.toString()).toBe('uc')
      })

      it('garbage under an entry key is a miss on an instance without a copy, never an exception', async () => {
        // Random bytes.
        const key = uid('/garbage')
        const [redisKey] = await keysCreatedBy(`sc:${s.ns}:i:*`, () => s.writer.set(key, appRoute(Buffer.from('real')), setCtx.response(ROUTE_CC)))
        expect(redisKey).toMatch(entryKeyPattern())
        await s.client.set(redisKey, randomBytes(257))
        expect(await s.other.call('getNoThrow', { key, ctx: toWire(getCtx.APP_ROUTE) })).toEqual({ threw: false, result: null })

        // A sound envelope (checksum right) around a payload the codec refuses. First, the same
        // surgery with a valid payload is read back, so the miss below is the payload's doing.
        const forge = async (k, payload) => {
          const [rk] = await keysCreatedBy(`sc:${s.ns}:i:*`, () => s.writer.set(k, appRoute(Buffer.from('real')), setCtx.response(ROUTE_CC)))
          await s.client.set(rk, withPayload(await s.client.getBuffer(rk), payload))
        }
        const sound = uid('/forged')
        await forge(sound, Buffer.concat(encodeValue(appRoute(Buffer.from('forged ✓')), { revalidate: 7 })))
        const got = (await s.other.get(sound, getCtx.APP_ROUTE)).r
        expect(got?.value.body.toString()).toBe('forged ✓')
        expect(got.cacheControl).toStrictEqual({ revalidate: 7 })

        const bad = uid('/forged')
        const payload = Buffer.concat(encodeValue(appRoute(Buffer.from('x')), ROUTE_CC))
        payload[9] = 0x5d // the metadata JSON starts with ']'
        await forge(bad, payload)
        expect(await s.other.call('getNoThrow', { key: bad, ctx: toWire(getCtx.APP_ROUTE) })).toEqual({ threw: false, result: null })
        const random = uid('/forged')
        await forge(random, randomBytes(100))
        expect(await s.other.call('getNoThrow', { key: random, ctx: toWire(getCtx.APP_ROUTE) })).toEqual({ threw: false, result: null })
        // The instance still serves good entries.
        expect((await s.other.get(sound, getCtx.APP_ROUTE)).r?.value.body.toString()).toBe('forged ✓')
      })
    }
  })
}

// ---------------------------------------------------------------------------------------------
// Construction

describe('construction', () => {
  let inst
  beforeAll(async () => { inst = await startInstance({}) })
  afterAll(async () => { await inst?.stop() })

  it('new Handler() creates no store; every handler object shares one', async () => {
    const key = uid('/construct')
    const got = await inst.call('constructMany', {
      n: 200,
      key,
      data: toWire(appRoute(Buffer.from('shared'), 'construct-tag')),
      ctx: toWire(setCtx.response(ROUTE_CC)),
      getCtx: toWire(getCtx.APP_ROUTE),
    })
    // Nothing was created by the constructors: the store comes with the first set.
    expect(got.configBefore).toBeNull()
    expect(got.configAfterConstruct).toBeNull()
    expect(got.configAfter).not.toBeNull()
    expect(got.hits).toHaveLength(200)
    expect(got.hits.every(Boolean)).toBe(true)
    const stats = await inst.call('stats')
    expect(stats.l1.entries).toBe(1)
    expect(stats.l1.sets).toBe(1)
    expect(stats.incrementalCalls).toEqual({ get: 200, set: 1, revalidateTag: 0 })

    // The 'use cache' handler of the process writes into the same L1.
    await inst.ucSet(uid('["uc"]'), Buffer.from('uc'))
    const after = await inst.call('stats')
    expect(after.l1.entries).toBe(2)
    expect(after.l1.maxBytes).toBe(stats.l1.maxBytes)
  })
})

describe('a value over the limits', () => {
  it('is a typed error from set when it can be stored nowhere, and a miss after', () => {
    // A process of its own: L1 of 64 KiB, no Redis.
    const script = `
      const Handler = require('strata-cache/incremental')
      const h = new Handler({})
      const big = { kind: 'APP_ROUTE', body: Buffer.alloc(100 * 1024, 1), status: 200, headers: {} }
      const small = { kind: 'APP_ROUTE', body: Buffer.from('ok'), status: 200, headers: {} }
      ;(async () => {
        let code
        try { await h.set('/big', big, { cacheControl: { revalidate: 60 } }) } catch (e) { code = e.code + ' ' + e.message }
        await h.set('/small', small, { cacheControl: { revalidate: 60 } })
        const got = await h.get('/big', { kind: 'APP_ROUTE' })
        const ok = await h.get('/small', { kind: 'APP_ROUTE' })
        console.log(JSON.stringify({ code, big: got, small: ok && ok.value.body.toString() }))
      })()`
    const env = { ...process.env, STRATA_L1_MAX_BYTES: '65536', STRATA_LOG: 'error' }
    for (const k of ['REDIS_URL', 'STRATA_REDIS_URL']) delete env[k]
    const out = JSON.parse(execFileSync(process.execPath, ['-e', script], { env, encoding: 'utf8' }).trim().split('\n').pop())
    expect(out.code).toMatch(/^STRATA_TOO_LARGE an incremental cache entry \(\/big\) of 102\d{3} bytes is larger than l1MaxBytes \(65536\): not stored/)
    expect(out.big).toBeNull()
    expect(out.small).toBe('ok')
  })
})
