// Metrics users can graph (lib/metrics.js, lib/otel.js):
// - the latency histogram itself (buckets, quantiles);
// - `stats().latency` and OpenTelemetry through the SDK's in-memory exporter, in a process that
//   registers its MeterProvider before loading strata-cache, against a real redis-server: the
//   `db.client.operation.duration` points (unit s, semconv attributes, counts equal to
//   stats().latency's) and the `strata_cache.*` observables (equal to stats()), including an
//   outage (breaker open = 2, queued invalidations, `error.type` on a failed strict call);
// - without `@opentelemetry/api` resolvable at all (a copy of the package outside the repo):
//   no error, no log line, stats().latency filled;
// - `STRATA_LOG=debug`: one line per event, keys cut, no credential; none at the default level.
import { describe, it, expect, beforeAll, afterAll, afterEach } from 'vitest'
import { createRequire } from 'node:module'
import { fileURLToPath } from 'node:url'
import { copyFileSync, mkdirSync, mkdtempSync, readdirSync, rmSync, writeFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { startChild } from './helpers/child-protocol.mjs'
import { startRedis } from './helpers/redis-server.mjs'

const require = createRequire(import.meta.url)
const { LatencyHistogram, BUCKETS_MS } = require('../lib/metrics.js')
const ROOT = fileURLToPath(new URL('..', import.meta.url))
const CHILD = fileURLToPath(new URL('./helpers/metrics-child.mjs', import.meta.url))

/** This process's environment without any Redis or namespace of its own. */
function cleanEnv() {
  const env = { ...process.env }
  for (const k of ['REDIS_URL', 'STRATA_REDIS_URL', 'STRATA_NAMESPACE', 'STRATA_STRICT', 'STRATA_LOG', 'NODE_PATH']) delete env[k]
  return env
}

const children = []
let nsCount = 0
const ns = () => `metrics${process.pid}-${++nsCount}`

/** Starts helpers/metrics-child.mjs; `lines` collects the library's own output. */
async function start(env, { baseEnv = cleanEnv(), cwd } = {}) {
  const lines = []
  const child = await startChild(CHILD, env, { baseEnv, cwd, onOutput: (line) => lines.push(line) })
  children.push(child)
  return Object.assign(child, { lines })
}

afterEach(async () => {
  await Promise.all(children.splice(0).map((c) => c.stop()))
})

describe('the latency histogram', () => {
  it('puts a duration in the first bucket whose upper bound is at least it, the rest in the last', () => {
    const h = new LatencyHistogram()
    for (const ms of [0.01, 0.05, 0.051, 1, 999, 1000, 1000.5, 60_000]) h.record(ms)
    const s = h.snapshot()
    expect(s.buckets).toHaveLength(BUCKETS_MS.length + 1)
    const at = (boundMs) => s.buckets[BUCKETS_MS.indexOf(boundMs)]
    expect(at(0.05)).toBe(2) // 0.01 and 0.05 (upper bounds are inclusive)
    expect(at(0.1)).toBe(1) // 0.051
    expect(at(1)).toBe(1)
    expect(at(1000)).toBe(2) // 999, 1000
    expect(s.buckets[BUCKETS_MS.length]).toBe(2) // above 1000 ms
    expect(s).toMatchObject({ count: 8, minMs: 0.01, maxMs: 60_000 })
    expect(s.sumMs).toBeCloseTo(0.01 + 0.05 + 0.051 + 1 + 999 + 1000 + 1000.5 + 60_000, 3)
  })

  it('estimates p50/p99 from the buckets, within the bucket of the true value and the observed range', () => {
    const h = new LatencyHistogram()
    expect(h.snapshot()).toMatchObject({ count: 0, sumMs: 0, minMs: 0, maxMs: 0, p50Ms: 0, p99Ms: 0 })
    h.record(0.3)
    // One sample: every quantile is that sample (the bucket's ends are narrowed to min/max).
    expect(h.snapshot()).toMatchObject({ p50Ms: 0.3, p99Ms: 0.3 })
    const g = new LatencyHistogram()
    for (let i = 0; i < 98; i++) g.record(0.2 + i * 0.0005) // 0.2 … 0.2485: the (0.1, 0.25] bucket
    g.record(40)
    g.record(70)
    const s = g.snapshot()
    expect(s.p50Ms).toBeGreaterThan(0.2)
    expect(s.p50Ms).toBeLessThanOrEqual(0.25)
    expect(s.p99Ms).toBeGreaterThan(25) // the 99th of 100 is 40: in (25, 50]
    expect(s.p99Ms).toBeLessThanOrEqual(50)
    expect(s.maxMs).toBe(70)
  })
})

describe('with Redis', () => {
  let redis
  beforeAll(async () => { redis = await startRedis() })
  afterAll(async () => { await redis?.stop() })

  it('stats().latency: an L1-only process times nothing; with Redis each operation that asked it is counted', async () => {
    const local = await start({})
    await local.call('ucSet', { key: 'a', value: 'A' })
    expect(await local.call('ucGet', { key: 'a' })).toBe('A')
    expect(await local.call('ucGet', { key: 'nope' })).toBeNull()
    await local.call('ucUpdateTags', { tags: ['t'] })
    await local.call('incSet', { key: '/a', body: 'A' })
    expect(await local.call('incGet', { key: '/a' })).toBe('A')
    const { latency: none } = await local.call('stats')
    expect(none.bucketsMs).toEqual(BUCKETS_MS)
    for (const handler of [none.useCache, none.incremental]) {
      for (const h of [handler.get.l2Hit, handler.get.l2Miss, handler.set, handler.refreshTags, handler.updateTags]) {
        expect(h).toEqual({ count: 0, sumMs: 0, minMs: 0, maxMs: 0, p50Ms: 0, p99Ms: 0, buckets: new Array(BUCKETS_MS.length + 1).fill(0) })
      }
    }

    const name = ns()
    const a = await start({ REDIS_URL: redis.url, STRATA_NAMESPACE: name })
    const b = await start({ REDIS_URL: redis.url, STRATA_NAMESPACE: name })
    await a.call('ucRefreshTags')
    expect(await a.call('ucGet', { key: 'k' })).toBeNull() // asks Redis: l2Miss
    await a.call('ucSet', { key: 'k', value: 'v', tags: ['t'] }) // set
    expect(await a.call('ucGet', { key: 'k' })).toBe('v') // L1 hit: not timed
    await b.call('ucSet', { key: 'from-b', value: 'B' })
    expect(await a.call('ucGet', { key: 'from-b' })).toBe('B') // l2Hit
    await a.call('ucUpdateTags', { tags: ['t'] })
    await a.call('incSet', { key: '/x', body: 'X' })
    expect(await a.call('incGet', { key: '/missing' })).toBeNull()
    await a.call('incRevalidateTag', { tags: ['u'] })
    const { latency } = await a.call('stats')
    const uc = latency.useCache
    expect([uc.get.l2Hit.count, uc.get.l2Miss.count, uc.set.count, uc.refreshTags.count, uc.updateTags.count]).toEqual([1, 1, 1, 1, 1])
    const inc = latency.incremental
    // Each incremental get of a new handler object follows the invalidation log first.
    expect([inc.get.l2Hit.count, inc.get.l2Miss.count, inc.set.count, inc.refreshTags.count, inc.updateTags.count]).toEqual([0, 1, 1, 1, 1])
    for (const h of [uc.get.l2Hit, uc.get.l2Miss, uc.set, uc.refreshTags, uc.updateTags, inc.set]) {
      expect(h.buckets.reduce((x, y) => x + y, 0)).toBe(h.count)
      expect(h.minMs).toBeGreaterThan(0)
      expect(h.maxMs).toBeLessThan(1000)
      expect(h.sumMs).toBeCloseTo(h.minMs, 3) // one sample
      expect(h.p50Ms).toBe(h.minMs)
    }
  })

  it('OpenTelemetry: db.client.operation.duration [s] with semconv attributes and strata_cache.* observables, also through an outage', async () => {
    const own = await startRedis()
    try {
      const name = ns()
      const env = { REDIS_URL: own.url, STRATA_NAMESPACE: name, STRATA_TEST_OTEL: '1' }
      const a = await start(env)
      const other = await start({ REDIS_URL: own.url, STRATA_NAMESPACE: name })
      const strict = await start({ ...env, STRATA_STRICT: '1' })
      const N = 5
      await strict.call('ucRefreshTags') // connected before the outage
      await a.call('ucRefreshTags')
      for (let i = 0; i < N; i++) expect(await a.call('ucGet', { key: `k${i}` })).toBeNull()
      for (let i = 0; i < N; i++) await a.call('ucSet', { key: `k${i}`, value: `v${i}`, tags: ['t'] })
      for (let i = 0; i < N; i++) expect(await a.call('ucGet', { key: `k${i}` })).toBe(`v${i}`) // L1
      for (let i = 0; i < N; i++) await other.call('ucSet', { key: `o${i}`, value: `o${i}` })
      for (let i = 0; i < N; i++) expect(await a.call('ucGet', { key: `o${i}` })).toBe(`o${i}`) // L2 hits
      await a.call('ucUpdateTags', { tags: ['t'], durations: { expire: 60 } })
      for (let i = 0; i < N; i++) await a.call('incSet', { key: `/r${i}`, body: `r${i}` })
      for (let i = 0; i < N; i++) expect(await a.call('incGet', { key: `/none${i}` })).toBeNull()
      await a.call('incRevalidateTag', { tags: ['u'] })

      const metrics = await a.call('collect')
      const stats = await a.call('stats')
      const byName = (n) => metrics.find((m) => m.name === n)
      const duration = byName('db.client.operation.duration')
      expect(duration).toMatchObject({ scope: 'strata-cache', unit: 's', type: 'HISTOGRAM' })
      const point = (attrs) => {
        const found = duration.points.filter((p) => Object.entries(attrs).every(([k, v]) => p.attributes[k] === v))
        expect(found, JSON.stringify(attrs)).toHaveLength(1)
        return found[0]
      }
      const base = (handler, op) => ({ 'db.system.name': 'redis', 'db.operation.name': op, 'strata_cache.handler': handler })
      const checks = [
        [{ ...base('use_cache', 'get'), 'strata_cache.outcome': 'miss' }, stats.latency.useCache.get.l2Miss, N],
        [{ ...base('use_cache', 'get'), 'strata_cache.outcome': 'hit' }, stats.latency.useCache.get.l2Hit, N],
        [{ ...base('use_cache', 'set'), 'strata_cache.outcome': 'written' }, stats.latency.useCache.set, N],
        [base('use_cache', 'refresh_tags'), stats.latency.useCache.refreshTags, 1],
        [base('use_cache', 'update_tags'), stats.latency.useCache.updateTags, 1],
        [{ ...base('incremental', 'get'), 'strata_cache.outcome': 'miss' }, stats.latency.incremental.get.l2Miss, N],
        [{ ...base('incremental', 'set'), 'strata_cache.outcome': 'written' }, stats.latency.incremental.set, N],
        [base('incremental', 'refresh_tags'), stats.latency.incremental.refreshTags, N],
        [base('incremental', 'update_tags'), stats.latency.incremental.updateTags, 1],
      ]
      for (const [attrs, js, ops] of checks) {
        const { value } = point(attrs)
        expect(value.count, JSON.stringify(attrs)).toBeGreaterThanOrEqual(ops)
        expect(value.count).toBe(js.count) // the same measurements as stats().latency
        // Seconds: stats().latency's ms / 1000.
        expect(value.sum).toBeCloseTo(js.sumMs / 1000, 5)
        expect(value.max).toBeLessThan(1)
        expect(value.min).toBeGreaterThan(0)
        expect(value.buckets.boundaries).toEqual(expect.arrayContaining([0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1, 5, 10]))
        expect(value.buckets.counts.reduce((x, y) => x + y, 0)).toBe(value.count)
        expect(Object.keys(point(attrs).attributes)).not.toContain('error.type')
      }
      // Only operations that waited on Redis are recorded: N L1 hits added nothing.
      expect(duration.points.reduce((n, p) => n + p.value.count, 0)).toBe(checks.reduce((n, [, js]) => n + js.count, 0))

      const observed = (n, attrs = {}) => {
        const m = byName(n)
        expect(m, n).toBeDefined()
        const p = m.points.find((q) => Object.entries(attrs).every(([k, v]) => q.attributes[k] === v))
        expect(p, `${n} ${JSON.stringify(attrs)}`).toBeDefined()
        return p.value
      }
      expect(byName('strata_cache.lookups')).toMatchObject({ type: 'OBSERVABLE_COUNTER', unit: '{lookup}' })
      expect(observed('strata_cache.lookups', { 'strata_cache.layer': 'l1', 'strata_cache.outcome': 'hit' })).toBe(stats.l1.hits)
      expect(observed('strata_cache.lookups', { 'strata_cache.layer': 'l1', 'strata_cache.outcome': 'miss' })).toBe(stats.l1.misses)
      expect(observed('strata_cache.lookups', { 'strata_cache.layer': 'l2', 'strata_cache.outcome': 'hit' })).toBe(stats.l2.hits)
      expect(observed('strata_cache.lookups', { 'strata_cache.layer': 'l2', 'strata_cache.outcome': 'miss' })).toBe(stats.l2.misses)
      expect(observed('strata_cache.lookups', { 'strata_cache.layer': 'l2', 'strata_cache.outcome': 'error' })).toBe(0)
      expect(stats.l1.hits).toBeGreaterThanOrEqual(N)
      expect(stats.l2.hits).toBeGreaterThanOrEqual(N)
      expect(observed('strata_cache.l1.entries')).toBe(stats.l1.entries)
      expect(stats.l1.entries).toBeGreaterThan(0)
      expect(byName('strata_cache.l1.memory.used')).toMatchObject({ unit: 'By', type: 'OBSERVABLE_UP_DOWN_COUNTER' })
      expect(observed('strata_cache.l1.memory.used')).toBe(stats.l1.bytes)
      expect(observed('strata_cache.l1.memory.limit')).toBe(stats.l1.maxBytes)
      expect(observed('strata_cache.l1.evictions')).toBe(stats.l1.evictions)
      expect(observed('strata_cache.l2.writes', { 'strata_cache.outcome': 'written' })).toBe(stats.l2.writes)
      expect(stats.l2.writes).toBeGreaterThanOrEqual(2 * N)
      expect(observed('strata_cache.l2.writes', { 'strata_cache.outcome': 'failed' })).toBe(0)
      expect(observed('strata_cache.l2.invalidations', { 'strata_cache.outcome': 'recorded' })).toBe(stats.l2.invalidations)
      expect(stats.l2.invalidations).toBeGreaterThanOrEqual(2)
      expect(observed('strata_cache.tags.invalidated')).toBe(stats.tags.updated)
      expect(observed('strata_cache.l2.pending_invalidations')).toBe(0)
      expect(byName('strata_cache.l2.breaker.state')).toMatchObject({ type: 'OBSERVABLE_GAUGE' })
      expect(observed('strata_cache.l2.breaker.state')).toBe(0)

      // Redis goes away: reads become misses until the breaker opens, an invalidation is queued.
      await own.kill()
      for (let i = 0; i < 8; i++) expect(await a.call('ucGet', { key: `gone${i}` })).toBeNull()
      await a.call('ucRefreshTags')
      await a.call('ucUpdateTags', { tags: ['during-outage'] })
      // In strict mode an invalidation Redis cannot record rejects: recorded with error.type.
      await expect(strict.call('ucUpdateTags', { tags: ['strict'] })).rejects.toThrow()
      const down = await a.call('collect')
      const downStats = await a.call('stats')
      expect(downStats.l2.breaker).toBe('open')
      const observedDown = (n, attrs = {}) => down.find((m) => m.name === n).points.find((q) => Object.entries(attrs).every(([k, v]) => q.attributes[k] === v)).value
      expect(observedDown('strata_cache.l2.breaker.state')).toBe(2)
      expect(observedDown('strata_cache.lookups', { 'strata_cache.layer': 'l2', 'strata_cache.outcome': 'error' })).toBe(downStats.l2.errors)
      expect(downStats.l2.errors).toBeGreaterThan(0)
      expect(observedDown('strata_cache.l2.pending_invalidations')).toBe(1)
      expect(observedDown('strata_cache.l2.invalidations', { 'strata_cache.outcome': 'queued' })).toBe(downStats.l2.invalidationsQueued)
      const strictMetrics = await strict.call('collect')
      const failedUpdate = strictMetrics.find((m) => m.name === 'db.client.operation.duration').points
        .find((p) => p.attributes['db.operation.name'] === 'update_tags' && p.attributes['error.type'] !== undefined)
      expect(failedUpdate).toBeDefined()
      expect(failedUpdate.attributes['error.type']).toMatch(/^STRATA_[A-Z]+$/)
      expect(failedUpdate.value.count).toBe(1)
    } finally {
      await own.stop()
    }
  })

  it('without @opentelemetry/api anywhere it could resolve from: no error, no log line, stats().latency filled', async () => {
    // A copy of the package outside the repository (whose node_modules has the API), in a
    // node_modules of its own, with HOME and NODE_PATH pointing nowhere (require's global folders).
    const root = mkdtempSync(join(tmpdir(), 'strata-no-otel-'))
    try {
      const pkg = join(root, 'node_modules', 'strata-cache')
      mkdirSync(join(pkg, 'lib'), { recursive: true })
      for (const f of ['package.json', 'index.js', 'incremental.js', 'use-cache.js', 'binding.js', ...readdirSync(ROOT).filter((f) => f.endsWith('.node'))]) {
        copyFileSync(join(ROOT, f), join(pkg, f))
      }
      for (const f of readdirSync(join(ROOT, 'lib'))) copyFileSync(join(ROOT, 'lib', f), join(pkg, 'lib', f))
      const home = join(root, 'home')
      mkdirSync(home)
      const c = await start(
        { REDIS_URL: redis.url, STRATA_NAMESPACE: ns(), STRATA_TEST_PACKAGE: pkg, STRATA_LOG: 'info', HOME: home, NODE_PATH: '' },
        { cwd: root },
      )
      expect(await c.call('otelResolves')).toBeNull()
      await c.call('ucRefreshTags')
      expect(await c.call('ucGet', { key: 'k' })).toBeNull()
      await c.call('ucSet', { key: 'k', value: 'v' })
      expect(await c.call('ucGet', { key: 'k' })).toBe('v')
      await c.call('ucUpdateTags', { tags: ['t'] })
      await c.call('incSet', { key: '/p', body: 'P' })
      expect(await c.call('incGet', { key: '/q' })).toBeNull()
      const { latency } = await c.call('stats')
      expect(latency.useCache.get.l2Miss.count).toBe(1)
      expect(latency.useCache.set.count).toBe(1)
      expect(latency.useCache.refreshTags.count).toBe(1)
      expect(latency.useCache.updateTags.count).toBe(1)
      expect(latency.incremental.set.count).toBe(1)
      expect(latency.incremental.get.l2Miss.count).toBe(1)
      await expect(c.call('collect')).rejects.toThrow(/STRATA_TEST_OTEL/)
      // The start-up line only: nothing about OpenTelemetry, no warning.
      expect(c.lines.some((l) => l.includes('Redis L2'))).toBe(true) // the output was captured
      expect(c.lines.filter((l) => !l.includes('Redis L2'))).toEqual([])
    } finally {
      rmSync(root, { recursive: true, force: true })
    }
  })
})

describe('STRATA_LOG=debug', () => {
  const SECRET = 'metrics-s3cret-pw'
  let redis
  let build
  const ROUTE_KEY = '/route-cache/APP_ROUTE/0123abcd/$/api/time'
  const LONG_KEY = `long-${'x'.repeat(200)}`
  beforeAll(async () => {
    redis = await startRedis({ args: ['--requirepass', SECRET] })
    // A build output with one prerendered route (the incremental handler's seed).
    build = mkdtempSync(join(tmpdir(), 'strata-metrics-build-'))
    const api = join(build, '.next', 'server', 'app', 'api')
    mkdirSync(api, { recursive: true })
    writeFileSync(join(api, 'time.body'), 'seeded')
    writeFileSync(join(api, 'time.meta'), JSON.stringify({ status: 200, headers: {}, routeCache: { key: ROUTE_KEY, isFallback: false } }))
  })
  afterAll(async () => {
    await redis?.stop()
    if (build) rmSync(build, { recursive: true, force: true })
  })

  /** The same events, in a process with `STRATA_LOG` = `level` (undefined: unset). */
  async function events(level) {
    const c = await start({ REDIS_URL: `redis://:${SECRET}@127.0.0.1:${redis.port}`, STRATA_NAMESPACE: ns(), STRATA_LOG: level })
    const handlerCtx = { serverDistDir: join(build, '.next', 'server'), dev: false }
    await c.call('ucRefreshTags')
    expect(await c.call('ucGet', { key: LONG_KEY })).toBeNull()
    await c.call('ucSet', { key: LONG_KEY, value: 'hello', tags: ['t1', 't2'] })
    expect(await c.call('ucGet', { key: LONG_KEY })).toBe('hello')
    await c.call('ucUpdateTags', { tags: ['t1'], durations: { expire: 30 } })
    await c.call('incSet', { key: '/page', body: 'P', tags: ['p'] })
    expect(await c.call('incGet', { key: ROUTE_KEY, handlerCtx })).toBe('seeded')
    expect(await c.call('incGet', { key: '/route-cache/APP_ROUTE/ffff/$/api/other', handlerCtx })).toBeNull()
    await c.call('incRevalidateTag', { tags: ['p'] })
    await c.stop()
    return c.lines
  }

  it('prints one line per event (outcome, layer, ms), keys cut, never a credential or a URL', async () => {
    const lines = await events('debug')
    const debugLines = lines.filter((l) => /^strata-cache: (use-cache|incremental) /.test(l))
    const expected = [
      /^strata-cache: use-cache refreshTags: done \d+\.\d{3} ms$/,
      /^strata-cache: use-cache get "long-x{59}"… \(205 chars\): l2-miss \d+\.\d{3} ms$/,
      /^strata-cache: use-cache set "long-x{59}"… \(205 chars\) 5 B: l1 stored, l2 written \d+\.\d{3} ms$/,
      /^strata-cache: use-cache get "long-x{59}"… \(205 chars\): l1-hit$/,
      /^strata-cache: use-cache updateTags \["t1"\] \(stale now, expired in 30 s\): l2 recorded \d+\.\d{3} ms$/,
      /^strata-cache: incremental set "\/page" \d+ B: l1 stored, l2 written \d+\.\d{3} ms$/,
      /^strata-cache: incremental refreshTags: done \d+\.\d{3} ms$/,
      /^strata-cache: incremental get "\/route-cache\/APP_ROUTE\/0123abcd\/\$\/api\/time": l2-miss \d+\.\d{3} ms$/,
      /^strata-cache: incremental seed "\/route-cache\/APP_ROUTE\/0123abcd\/\$\/api\/time": read from the build output into L1 \d+\.\d{3} ms$/,
      /^strata-cache: incremental seed "\/route-cache\/APP_ROUTE\/ffff\/\$\/api\/other": none \(ENOENT\) \d+\.\d{3} ms$/,
      /^strata-cache: incremental updateTags \["p"\] \(expired now\): l2 recorded \d+\.\d{3} ms$/,
    ]
    for (const re of expected) expect(debugLines.filter((l) => re.test(l)), `${re}\n${debugLines.join('\n')}`).not.toHaveLength(0)
    // One line per event: the use-cache events above happened once each.
    expect(debugLines.filter((l) => l.startsWith('strata-cache: use-cache '))).toHaveLength(5)
    expect(lines.join('\n')).not.toContain(SECRET)
    expect(lines.join('\n')).not.toContain('x'.repeat(100))
    for (const l of debugLines) expect(l).not.toMatch(/redis:\/\//)
  })

  it('prints none of them at the default level (info)', async () => {
    const lines = await events(undefined)
    expect(lines.some((l) => l.includes('Redis L2'))).toBe(true) // the output was captured
    expect(lines.filter((l) => /^strata-cache: (use-cache|incremental) /.test(l))).toEqual([])
    expect(lines.join('\n')).not.toContain(SECRET)
  })
})
