// The incremental cache end to end (Next's singular `cacheHandler`: ISR pages, route handlers with
// `revalidate`, the fetch cache, `unstable_cache`, revalidateTag/revalidatePath), on the second
// example app, examples/isr (no cacheComponents). "What users must see" of issue 9, shown by the
// `x-nextjs-cache` header and the bodies.
//
// Which handler serves the app is chosen at `next build` and `next start` by one variable
// (examples/isr/next.config.ts):
//   (unset)               strata-cache/incremental: the single-instance block on the embedded L1,
//                         then the cross-instance block (two `next start` sharing one
//                         redis-server). Both prove the handler is ours (its stats, Redis keys).
//   STRATA_ISR_BUILTIN=1  Next's built-in FileSystemCache: the reference behaviour the
//                         single-instance block was written against (next 16.4.6); it passes
//                         there unchanged.
//   STRATA_ISR_CROSS=1    with STRATA_ISR_BUILTIN=1, runs the cross-instance block against the
//                         built-in too: a negative control, its invalidation tests must fail
//                         there (each instance has its own tag state and memory cache).
//
// This file builds examples/isr itself (≈ 10 s; global-setup builds only examples/demo), with
// a tiny origin server (examples/isr/origin.mjs) in this process as the target of the tagged
// `fetch`, so the origin's request count shows when the fetch cache really fetched.
//
// Whether a cached function ran is read from the app's own counters (`/api/runs`, per process):
// every route handler, page render, getStaticProps and the unstable_cache callback counts its
// executions, so a response served from the cache leaves its counter unchanged. Every value
// rendered is `<creation ms>-<random id>` (valueTime() reads the time).
//
// Behaviour of the built-in handler on next 16.4.6 that the assertions encode (and that a custom
// handler must reproduce):
// - A prerendered entry is seeded from the build output with lastModified = the build file's
//   mtime (not the time of the first read). So the first request is a HIT only while the build
//   is younger than the route's revalidate; past it, it is STALE (the build's body is served and
//   regenerated in the background). Long-lived routes (1 h, force-static) are a HIT.
// - While a background regeneration runs, further requests are STALE with the old body too (no
//   second regeneration); the first response with the new body is a HIT.
// - revalidateTag(tag, 'max'): the next request is STALE with the old page; the regeneration
//   refetches the tagged fetch and re-runs unstable_cache in the foreground of the regeneration
//   (a response that goes into the cache never embeds stale data), so the next HIT shows new
//   data everywhere. revalidateTag(tag) and revalidatePath(path): the next request is a MISS,
//   rendered in the foreground with new data.
// - A route exporting POST (or PUT/DELETE/PATCH/OPTIONS) is not prerendered at all: its GET is
//   never cached either (next app-route/module.js `hasNonStaticMethods`); POST to a GET-only
//   prerendered route answers 405. Routes reading headers()/cookies() or awaiting connection()
//   answer without any x-nextjs-cache header.
import { spawnSync } from 'node:child_process'
import fs from 'node:fs'
import path from 'node:path'
import { setTimeout as delay } from 'node:timers/promises'
import { afterAll, beforeAll, describe, expect, test } from 'vitest'
import { startOrigin } from '../../examples/isr/origin.mjs'
import { startRedis } from '../helpers/redis-server.mjs'
import { buildApp, childEnv, parseValue, repoRoot, startServer, valueTime } from './next-app.mjs'

const useStrata = process.env.STRATA_ISR_BUILTIN !== '1'
const runCross = useStrata || process.env.STRATA_ISR_CROSS === '1'

const WINDOW_MS = 3_000 // `revalidate = 3` of /api/time, /isr, /legacy
const PAST_WINDOW_MS = WINDOW_MS + 750 // lastModified is set a little after the value was created
const POLL_MS = 100
const POLL_TIMEOUT_MS = 15_000

/**
 * Defines the whole suite for the app `prepare()` resolves to (its directory): the repo's
 * examples/isr, or a copy of it installed with another Next minor (isr-minors.test.mjs).
 */
export function defineIsrSuite(prepare = async () => path.join(repoRoot, 'examples/isr')) {
  let dir
  let origin
  let env // for `next build` and `next start`

  beforeAll(async () => {
    dir = await prepare()
    if (useStrata) checkIncrementalHandlerLoads()
    origin = await startOrigin()
    env = { ISR_ORIGIN_URL: origin.url }
    // The fetch cache of the built-in handler lives in .next/cache and survives builds; start
    // from nothing so the build seeds exactly what this run's origin served.
    fs.rmSync(path.join(dir, '.next/cache/fetch-cache'), { recursive: true, force: true })
    const { ms } = await buildApp({ dir, env })
    console.log(`[e2e] next build of ${dir} (${useStrata ? 'strata-cache/incremental' : 'built-in cache handler'}): ${(ms / 1000).toFixed(1)} s`)
  }, 300_000)

  afterAll(async () => {
    await origin?.stop()
  })

  function checkIncrementalHandlerLoads() {
    const probe = spawnSync(
      process.execPath,
      ['-e', `require('node:module').createRequire(require('node:path').join(process.cwd(), 'next.config.ts')).resolve('strata-cache/incremental')`],
      { cwd: dir, env: childEnv(), encoding: 'utf8' },
    )
    if (probe.status !== 0) throw new Error(`strata-cache/incremental cannot be resolved from ${dir}:\n${probe.stderr}`)
  }

  // ---- reading the app ----------------------------------------------------------------------

  const jsonValue = (text) => JSON.parse(text).value
  /** How to read each cached route: its path, the value in its body, its counter, its build seed. */
  const routes = {
    time: { path: '/api/time', value: jsonValue, counter: 'time', seed: 'server/app/api/time.body' },
    isr: { path: '/isr', value: (t) => parseValue(t, 'isr'), counter: 'isr', seed: 'server/app/isr.html' },
    legacy: { path: '/legacy', value: (t) => parseValue(t, 'legacy'), counter: 'legacy', seed: 'server/pages/legacy.html' },
    static: { path: '/api/static', value: jsonValue, counter: 'static', seed: 'server/app/api/static.body' },
    products: { path: '/products', value: (t) => parseValue(t, 'rendered'), counter: 'products', seed: 'server/app/products.html' },
    productsRoute: { path: '/api/products', value: jsonValue, counter: 'products-route', seed: 'server/app/api/products.body' },
  }

  /** One request: `{ status, cache, value, text, headers, sentAt }` (`value` parsed by `route`). */
  async function read(server, route, init = {}) {
    const sentAt = Date.now()
    const res = await server.fetchPage(route.path, init)
    expect(res.status, `${init.method ?? 'GET'} ${server.url}${route.path}: ${res.text.slice(0, 500)}`).toBe(200)
    const value = init.method === 'HEAD' ? undefined : route.value(res.text)
    return { ...res, cache: res.headers['x-nextjs-cache'], value, sentAt }
  }

  /** /products: the page's own render, the fetched origin count and the unstable_cache value. */
  async function readProducts(server) {
    const res = await read(server, routes.products)
    return { ...res, fetched: Number(parseValue(res.text, 'fetched')), cached: parseValue(res.text, 'cached') }
  }

  /** /api/products: the same three values from a route handler. */
  async function readProductsRoute(server) {
    const res = await read(server, routes.productsRoute)
    const body = JSON.parse(res.text)
    return { ...res, fetched: body.fetched.hits, cached: body.cached.value }
  }

  /** The execution counters of `server`'s process (missing counter: 0). */
  async function runs(server) {
    const res = await server.fetchPage('/api/runs')
    expect(res.status).toBe(200)
    const counters = JSON.parse(res.text).runs
    return new Proxy(counters, { get: (target, name) => target[name] ?? 0 })
  }

  /** The value and mtime the build wrote for `route` (what the built-in handler seeds from). */
  function buildSeed(route) {
    const file = path.join(dir, '.next', route.seed)
    return { value: route.value(fs.readFileSync(file, 'utf8')), mtimeMs: fs.statSync(file).mtimeMs }
  }

  /**
   * Reads until `done(response)`; returns `{ last, before }` (`before`: the responses that did not
   * satisfy it). Fails after `timeoutMs`.
   */
  async function pollUntil(readOnce, done, timeoutMs = POLL_TIMEOUT_MS) {
    const deadline = Date.now() + timeoutMs
    const before = []
    for (;;) {
      const res = await readOnce()
      if (done(res)) return { last: res, before }
      before.push(res)
      if (Date.now() > deadline) {
        throw new Error(`no expected response within ${timeoutMs} ms; seen: ${before.slice(-5).map((r) => `${r.cache} ${r.value}`).join(', ')}`)
      }
      await delay(POLL_MS)
    }
  }

  const sleepUntil = async (time) => {
    const wait = time - Date.now()
    if (wait > 0) await delay(wait)
  }

  /**
   * The time-based cycle of a `revalidate = 3` route on one server, from whatever entry it holds:
   * past the window one STALE with the old value, (more STALEs with the old value while the
   * regeneration runs), then a HIT with the new value; exactly one execution. Then, inside the new
   * window: HIT with the same value, HEAD from the cache, nothing executed.
   */
  async function expectTimeBasedCycle(server, route) {
    // Start from a fresh entry (an earlier test may have left one stale).
    const { last: current } = await pollUntil(() => read(server, route), (r) => r.cache === 'HIT')
    await sleepUntil(valueTime(current.value) + PAST_WINDOW_MS)

    const before = await runs(server)
    const stale = await read(server, route)
    expect(stale.cache, 'first request past the window').toBe('STALE')
    expect(stale.value, 'STALE serves the old value').toBe(current.value)
    const { last: fresh, before: regenerating } = await pollUntil(() => read(server, route), (r) => r.value !== current.value)
    for (const r of regenerating) expect([r.cache, r.value]).toEqual(['STALE', current.value])
    expect(fresh.cache, 'first response with the new value').toBe('HIT')
    expect(valueTime(fresh.value)).toBeGreaterThanOrEqual(stale.sentAt)

    // Inside the new window: served from the cache, nothing runs. Only requests sent before the
    // value's creation time + 3 s are sure to be inside it (lastModified is a little later).
    const windowEnd = valueTime(fresh.value) + WINDOW_MS
    const inWindow = []
    for (let i = 0; i < 3; i++) inWindow.push(await read(server, route))
    const head = await read(server, route, { method: 'HEAD' })
    const checked = inWindow.filter((r) => r.sentAt < windowEnd)
    expect(checked.length, 'the machine was too slow to read inside the 3 s window').toBeGreaterThan(0)
    for (const r of checked) expect([r.cache, r.value]).toEqual(['HIT', fresh.value])
    if (head.sentAt < windowEnd) expect(head.cache, 'HEAD').toBe('HIT')
    expect(head.text).toBe('')

    const after = await runs(server)
    expect(after[route.counter] - before[route.counter], `executions of ${route.counter}`).toBe(1)
    return fresh
  }

  // ---- one next start -----------------------------------------------------------------------

  describe('one next start', () => {
    let server
    beforeAll(async () => {
      server = await startServer({ dir, env, probePath: '/api/runs' })
    })
    afterAll(async () => {
      await server?.stop()
    })

    test('first request to a prerendered route: the build output, HIT while younger than revalidate', async () => {
      const observed = {}
      const first = async (route) => {
        const seed = buildSeed(route)
        const res = await read(server, route)
        observed[route.path] = `${res.cache} (build output ${((res.sentAt - seed.mtimeMs) / 1000).toFixed(1)} s old)`
        expect(res.value, `${route.path} serves the build's value`).toBe(seed.value)
        return { res, seed }
      }
      // Long-lived routes (1 h, force-static): HIT at once.
      for (const route of [routes.static, routes.products, routes.productsRoute]) {
        const { res } = await first(route)
        expect(res.cache, route.path).toBe('HIT')
      }
      // `revalidate = 3`: a seed's lastModified is its build file's mtime, not the time it was
      // first read, so once the build output is older than 3 s the first request is STALE (the
      // build's value, regenerated in the background), as after any real deployment.
      const seeds = [routes.time, routes.isr, routes.legacy].map((route) => ({ route, mtimeMs: buildSeed(route).mtimeMs }))
      await sleepUntil(Math.max(...seeds.map((s) => s.mtimeMs)) + PAST_WINDOW_MS)
      for (const { route } of seeds) {
        const { res } = await first(route)
        expect(res.cache, route.path).toBe('STALE')
      }
      console.log('[e2e isr] first requests:', observed)
      // Nothing ran in the foreground; each STALE seed has one regeneration at most under way.
      const counters = await runs(server)
      for (const name of ['static', 'products', 'products-route', 'unstable_cache']) expect(counters[name], name).toBe(0)
      for (const name of ['time', 'isr', 'legacy']) expect(counters[name], name).toBeLessThanOrEqual(1)
    })

    test('route handler, revalidate = 3: HIT in the window, STALE past it, then HIT with a new body', async () => {
      const fresh = await expectTimeBasedCycle(server, routes.time)
      // Next's own header: 16.4 adds stale-while-revalidate (earlier minors send s-maxage only).
      expect(fresh.headers['cache-control']).toMatch(/^s-maxage=3(, stale-while-revalidate=31535997)?$/)
      expect(fresh.headers['content-type']).toBe('application/json')
    })

    test('ISR page (APP_PAGE), revalidate = 3: the same cycle', async () => {
      await expectTimeBasedCycle(server, routes.isr)
    })

    test('Pages Router getStaticProps (PAGES), revalidate: 3: the same cycle', async () => {
      await expectTimeBasedCycle(server, routes.legacy)
    })

    test("dynamic = 'force-static' is cached; POST is never", async () => {
      const seed = buildSeed(routes.static)
      for (let i = 0; i < 3; i++) expect(await read(server, routes.static)).toMatchObject({ cache: 'HIT', value: seed.value })
      const head = await read(server, routes.static, { method: 'HEAD' })
      expect(head.cache).toBe('HIT')
      expect((await runs(server)).static).toBe(0)

      // POST to a GET-only prerendered route: 405, not the cached GET body.
      const post = await server.fetchPage('/api/time', { method: 'POST' })
      expect(post.status).toBe(405)
      expect(post.headers['x-nextjs-cache']).toBeUndefined()
    })

    test('a route exporting POST is never cached, neither its POST nor its GET', async () => {
      const route = { path: '/api/mixed', value: jsonValue }
      const before = await runs(server)
      const seen = new Set()
      for (const method of ['POST', 'POST', 'GET', 'GET']) {
        const res = await read(server, route, { method })
        expect(res.cache, `${method} /api/mixed`).toBeUndefined()
        seen.add(res.value)
      }
      expect(seen.size).toBe(4)
      const after = await runs(server)
      expect(after['mixed:post'] - before['mixed:post']).toBe(2)
      expect(after['mixed:get'] - before['mixed:get']).toBe(2)
    })

    test.each([
      ['headers()', '/api/headers', 'headers'],
      ['cookies()', '/api/cookies', 'cookies'],
      ['connection()', '/api/connection', 'connection'],
    ])('a route handler reading %s is never cached', async (_, routePath, counter) => {
      const route = { path: routePath, value: jsonValue }
      const before = await runs(server)
      const seen = new Set()
      for (let i = 0; i < 3; i++) {
        const res = await read(server, route)
        expect(res.cache).toBeUndefined()
        seen.add(res.value)
      }
      expect(seen.size).toBe(3)
      expect((await runs(server))[counter] - before[counter]).toBe(3)
    })

    test("fetch next.tags + unstable_cache tags: revalidateTag('products', 'max') serves the old data once, then new", async () => {
      const page0 = await readProducts(server)
      const route0 = await readProductsRoute(server)
      expect([page0.cache, route0.cache]).toEqual(['HIT', 'HIT'])
      const hits0 = origin.hits()
      const before = await runs(server)

      await server.fetchPage('/api/revalidate?tag=products&profile=max', { method: 'POST' })

      const stale = await readProducts(server)
      expect(stale.cache).toBe('STALE')
      expect([stale.value, stale.fetched, stale.cached]).toEqual([page0.value, page0.fetched, page0.cached])
      const { last: page1, before: regenerating } = await pollUntil(() => readProducts(server), (r) => r.value !== page0.value)
      for (const r of regenerating) expect([r.cache, r.value]).toEqual(['STALE', page0.value])
      expect(page1.cache).toBe('HIT')
      // The regenerated page already has new data: the tagged fetch went to the origin again
      // and unstable_cache ran again.
      expect(page1.fetched).toBeGreaterThan(page0.fetched)
      expect(page1.cached).not.toBe(page0.cached)
      expect(await readProducts(server)).toMatchObject({ cache: 'HIT', value: page1.value })

      // The route handler tagged through the same fetch: stale once, then new.
      const staleRoute = await readProductsRoute(server)
      expect([staleRoute.cache, staleRoute.value]).toEqual(['STALE', route0.value])
      const { last: route1 } = await pollUntil(() => readProductsRoute(server), (r) => r.value !== route0.value)
      expect(route1.cache).toBe('HIT')
      expect(route1.fetched).toBe(page1.fetched) // the fetch entry the page's regeneration refreshed
      expect(route1.cached).not.toBe(route0.cached)

      expect(origin.hits() - hits0, 'one refetch for both').toBe(1)
      const after = await runs(server)
      expect(after.products - before.products).toBe(1)
      expect(after['products-route'] - before['products-route']).toBe(1)
      expect(after.unstable_cache - before.unstable_cache).toBe(2) // one entry per bundle (page, route)
    })

    test("revalidateTag('products') expires now: the next request renders new data (MISS)", async () => {
      const page0 = await readProducts(server)
      const route0 = await readProductsRoute(server)
      expect([page0.cache, route0.cache]).toEqual(['HIT', 'HIT'])
      const hits0 = origin.hits()

      await server.fetchPage('/api/revalidate?tag=products', { method: 'POST' })

      const page1 = await readProducts(server)
      expect(page1.cache).toBe('MISS')
      expect(page1.value).not.toBe(page0.value)
      expect(page1.fetched).toBeGreaterThan(page0.fetched)
      expect(page1.cached).not.toBe(page0.cached)
      expect(await readProducts(server)).toMatchObject({ cache: 'HIT', value: page1.value })

      const route1 = await readProductsRoute(server)
      expect(route1.cache).toBe('MISS')
      expect(route1.value).not.toBe(route0.value)
      expect(route1.fetched).toBe(page1.fetched)
      expect(route1.cached).not.toBe(route0.cached)
      expect(origin.hits() - hits0).toBe(1)
    })

    test("revalidatePath('/isr') from a route handler: the next request regenerates the page (MISS)", async () => {
      const { last: page0 } = await pollUntil(() => read(server, routes.isr), (r) => r.cache === 'HIT')
      await server.fetchPage('/api/revalidate?path=/isr', { method: 'POST' })
      const page1 = await read(server, routes.isr)
      expect(page1.cache).toBe('MISS')
      expect(page1.value).not.toBe(page0.value)
      expect(valueTime(page1.value)).toBeGreaterThanOrEqual(page1.sentAt)
      const page2 = await read(server, routes.isr)
      if (page2.sentAt < valueTime(page1.value) + WINDOW_MS) expect(page2).toMatchObject({ cache: 'HIT', value: page1.value })
    })

    test('the handler that served all this is the one configured', async () => {
      const stats = await strataStats(server)
      if (useStrata) {
        // Ours, on the embedded L1: Next read and wrote through it, and it holds the entries.
        expect(stats.incrementalCalls.get).toBeGreaterThan(0)
        expect(stats.incrementalCalls.set).toBeGreaterThan(0)
        expect(stats.l1.entries).toBeGreaterThan(0)
        expect(stats.l2).toBeNull()
      } else {
        expect(stats.incrementalCalls.get).toBe(0)
      }
    })

    test("server actions: revalidatePath('/isr') and updateTag('products')", async () => {
      const { last: isr0 } = await pollUntil(() => read(server, routes.isr), (r) => r.cache === 'HIT')
      const action = await server.callServerAction('/action', 'revalidateIsr')
      expect(action.status).toBe(200)
      expectRevalidated(action)
      const isr1 = await read(server, routes.isr)
      expect(isr1.cache).toBe('MISS')
      expect(isr1.value).not.toBe(isr0.value)

      const products0 = await readProducts(server)
      expect(products0.cache).toBe('HIT')
      const update = await server.callServerAction('/action', 'updateProducts')
      expect(update.status).toBe(200)
      expectRevalidated(update)
      const products1 = await readProducts(server)
      expect(products1.cache).toBe('MISS')
      expect(products1.fetched).toBeGreaterThan(products0.fetched)
      expect(products1.cached).not.toBe(products0.cached)
    })
  })

  /**
   * A route handler's revalidateTag/revalidatePath on `server`, and the moment Redis recorded it.
   * Next runs a route handler's revalidations with `waitUntil`, after its response is sent (a
   * server action's before): another instance can only see the invalidation once it is in
   * Redis, one round trip later. Waits for that event (its `l2.invalidations` count), not a
   * fixed time.
   */
  async function invalidateOn(server, url) {
    const recorded = async () => (await strataStats(server)).l2?.invalidations ?? Infinity
    const before = await recorded() // no L2 (the built-in handler): nothing to wait for
    await server.fetchPage(url, { method: 'POST' })
    if (before === Infinity) return
    const deadline = Date.now() + 5_000
    while ((await recorded()) <= before) {
      if (Date.now() > deadline) throw new Error(`${url}: not recorded in Redis within 5 s`)
      await delay(10)
    }
  }

  /** A server action's response says it revalidated: `1` since 16.1, `[[],1,0]`-style before. */
  function expectRevalidated(res) {
    expect(res.headers['x-action-revalidated']).toMatch(/^(1|\[\[.*\],1,\d\])$/)
  }

  /** strata-cache's stats() in `server`'s process (all zero under the built-in handler). */
  async function strataStats(server) {
    const res = await server.fetchPage('/api/strata')
    expect(res.status).toBe(200)
    return JSON.parse(res.text)
  }

  // ---- two next start, one redis-server -----------------------------------------------------

  describe.skipIf(!runCross)('two next start sharing one redis-server', () => {
    // Servers A and B: two pods of one deployment (same build, same Redis, same namespace).
    // Invalidate on one, read on the other.
    //
    // Against the built-in handler (STRATA_ISR_CROSS=1) the four invalidation tests fail (each
    // process keeps its own tag state and memory cache); the first one passes there only because
    // both processes serve the same .next directory, where FileSystemCache writes its entries
    // (real pods each have their own).
    const ns = `e2e-isr-${process.pid}-${Date.now().toString(36)}`
    let redis
    let a
    let b

    beforeAll(async () => {
      redis = await startRedis()
      const serverEnv = { ...env, REDIS_URL: redis.url, STRATA_NAMESPACE: ns }
      a = await startServer({ dir, env: serverEnv, probePath: '/api/runs' })
      b = await startServer({ dir, env: serverEnv, probePath: '/api/runs' })
    })
    afterAll(async () => {
      await Promise.allSettled([a?.stop(), b?.stop()])
      await redis?.stop()
    })

    test('a regeneration on A is what B serves: B does not run the handler', async () => {
      // B has not read /api/time yet. A runs the time-based cycle (its first read may be a stale
      // seed; the single-instance block covers that part).
      const fresh = await expectTimeBasedCycle(a, routes.time)
      const fromB = await read(b, routes.time)
      if (fromB.sentAt < valueTime(fresh.value) + WINDOW_MS) expect([fromB.cache, fromB.value]).toEqual(['HIT', fresh.value])
      expect((await runs(b)).time).toBe(0)
    })

    test("revalidateTag('products') on A: B's next request renders new data, A's reuses B's fetch", async () => {
      const pageA0 = await readProducts(a)
      const pageB0 = await readProducts(b)
      expect(pageA0.cache).toBe('HIT')
      expect(pageB0.cache).toBe('HIT')
      const hits0 = origin.hits()

      await invalidateOn(a, '/api/revalidate?tag=products')

      const pageB1 = await readProducts(b)
      expect(pageB1.cache, 'B after the tag expired on A').toBe('MISS')
      expect(pageB1.fetched).toBeGreaterThan(pageB0.fetched)
      expect(pageB1.cached).not.toBe(pageB0.cached)
      expect(origin.hits() - hits0, 'B refetched once').toBe(1)

      // A: not the old page; whether A renders itself (MISS) or takes B's page (HIT), the fetch
      // and unstable_cache entries B wrote are valid and shared: no second trip to the origin.
      const pageA1 = await readProducts(a)
      expect(['MISS', 'HIT']).toContain(pageA1.cache)
      expect(pageA1.value).not.toBe(pageA0.value)
      expect(pageA1.fetched).toBe(pageB1.fetched)
      expect(pageA1.cached).toBe(pageB1.cached)
      expect(origin.hits() - hits0, 'the fetch cache is shared').toBe(1)
    })

    test("revalidateTag('products', 'max') on B: A serves the old page once, then new", async () => {
      const { last: pageA0 } = await pollUntil(() => readProducts(a), (r) => r.cache === 'HIT')
      const hits0 = origin.hits()

      await invalidateOn(b, '/api/revalidate?tag=products&profile=max')

      const stale = await readProducts(a)
      expect(stale.cache, 'A after the tag went stale on B').toBe('STALE')
      expect(stale.value).toBe(pageA0.value)
      const { last: pageA1 } = await pollUntil(() => readProducts(a), (r) => r.value !== pageA0.value)
      expect(pageA1.cache).toBe('HIT')
      expect(pageA1.fetched).toBeGreaterThan(pageA0.fetched)
      expect(origin.hits() - hits0).toBe(1)

      // B: the old page at most once more (STALE), then new data; never a MISS.
      const { last: pageB1, before } = await pollUntil(() => readProducts(b), (r) => r.fetched >= pageA1.fetched)
      expect(before.length).toBeLessThanOrEqual(4) // STALE while its own regeneration runs, if any
      for (const r of before) expect(r.cache).toBe('STALE')
      expect(['HIT', 'STALE']).toContain(pageB1.cache)
    })

    test("revalidatePath('/isr') on A, and from a server action on B: the other one regenerates", async () => {
      await pollUntil(() => read(b, routes.isr), (r) => r.cache === 'HIT')
      const { last: isrA0 } = await pollUntil(() => read(a, routes.isr), (r) => r.cache === 'HIT')
      await invalidateOn(a, '/api/revalidate?path=/isr')
      const isrB1 = await read(b, routes.isr)
      expect(isrB1.cache, 'B after revalidatePath on A').toBe('MISS')
      expect(isrB1.value).not.toBe(isrA0.value)

      const { last: isrA1 } = await pollUntil(() => read(a, routes.isr), (r) => r.cache === 'HIT')
      const action = await b.callServerAction('/action', 'revalidateIsr')
      expect(action.status).toBe(200)
      const isrA2 = await read(a, routes.isr)
      expect(isrA2.cache, 'A after the server action on B').toBe('MISS')
      expect(isrA2.value).not.toBe(isrA1.value)
    })

    test("updateTag('products') from a server action on A: B's route handler renders new data", async () => {
      const { last: routeB0 } = await pollUntil(() => readProductsRoute(b), (r) => r.cache === 'HIT')
      const update = await a.callServerAction('/action', 'updateProducts')
      expect(update.status).toBe(200)
      const routeB1 = await readProductsRoute(b)
      expect(routeB1.cache).toBe('MISS')
      expect(routeB1.fetched).toBeGreaterThan(routeB0.fetched)
      expect(routeB1.cached).not.toBe(routeB0.cached)
    })

    test.skipIf(!useStrata)('Redis holds what they share: incremental entries apart, one tag state', async () => {
      // Entries of the incremental cache under their own prefix (not 'use cache''s `:e:`), in the
      // deployment's namespace; the invalidations of this block in the one tag state.
      const entries = (await redis.cli('--scan', '--pattern', `sc:${ns}:i:*`)).split('\n').filter(Boolean)
      expect(entries.length).toBeGreaterThan(3)
      for (const key of entries) expect(key).toMatch(new RegExp(`^sc:${ns}:i:\\{[0-9a-f]{32}\\}$`))
      expect((await redis.cli('--scan', '--pattern', `sc:${ns}:e:*`)).trim()).toBe('')
      const state = await redis.cli('HGETALL', `{sc:${ns}:tags}:state`)
      expect(state).toContain('products')
      expect(state).toContain('_N_T_/isr')
      // Both servers run on it.
      for (const server of [a, b]) {
        const stats = await strataStats(server)
        expect(stats.l2.breaker).toBe('closed')
        expect(stats.l2.writes + stats.l2.hits).toBeGreaterThan(0)
      }
    })
  })
}
