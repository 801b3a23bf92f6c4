// The Redis L2 against a real redis-server: instances are separate Node processes (as pods
// would be), each with its own L1, sharing one Redis.
import { mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs'
import os from 'node:os'
import path from 'node:path'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { startRedis } from './helpers/redis-server.mjs'
import { startInstance } from './helpers/instance.mjs'

let redis
const instances = []
let nsCounter = 0

async function instance(env = {}, cwd) {
  const i = await startInstance({ env: { REDIS_URL: redis.url, ...env }, cwd })
  instances.push(i)
  return i
}

function freshNs() {
  return `t${process.pid}-${++nsCounter}`
}

async function entryKeys(ns) {
  const out = await redis.cli('--raw', 'KEYS', `sc:${ns}:e:*`)
  return out.split('\n').filter(Boolean)
}

beforeAll(async () => {
  redis = await startRedis()
})

afterAll(async () => {
  await Promise.all(instances.map((i) => i.stop()))
  await redis?.stop()
})

describe('shared L2', () => {
  it('an entry written by one instance is read by another with every field intact', async () => {
    const ns = freshNs()
    const a = await instance({ STRATA_NAMESPACE: ns })
    const b = await instance({ STRATA_NAMESPACE: ns })
    const { timestamp } = await a.call('set', {
      key: '["fn",[1],["build"]]',
      value: '0:"$@1"\n1:{"rows":[1,2,3]}\n',
      tags: ['products', 'item-%C3%A9'],
      stale: 60,
      expire: 4294967294,
      revalidate: 120,
    })
    const { timestamp: readAs, ...got } = await b.call('get', { key: '["fn",[1],["build"]]' })
    expect(got).toEqual({
      value: '0:"$@1"\n1:{"rows":[1,2,3]}\n',
      size: 27,
      tags: ['products', 'item-%C3%A9'],
      stale: 60,
      expire: 4294967294,
      revalidate: 120,
    })
    // The timestamp travels in Redis' clock and comes back in B's (Next's clock in B:
    // performance.timeOrigin + now()). Two processes' performance clocks differ by the NTP slew
    // between their starts (1 ms was seen on this VM), so it is equal up to that, not exactly.
    expect(Math.abs(readAs - timestamp)).toBeLessThan(25)
    const s = await b.call('stats')
    expect(s.l2.hits).toBe(1)
    // Promoted into B's L1: the second read does not go to Redis.
    await b.call('get', { key: '["fn",[1],["build"]]' })
    expect((await b.call('stats')).l2.hits).toBe(1)
    expect((await b.call('config')).namespace).toBe(ns)
  })

  it('invalidations reach every instance through refreshTags', async () => {
    const ns = freshNs()
    const a = await instance({ STRATA_NAMESPACE: ns })
    const b = await instance({ STRATA_NAMESPACE: ns })
    await a.call('set', { key: 'k1', value: 'v1', tags: ['t'] })
    await a.call('set', { key: 'k2', value: 'v2', tags: ['u'] })
    expect(await b.call('get', { key: 'k1' })).not.toBeNull() // now in B's L1 too
    expect(await b.call('get', { key: 'k2' })).not.toBeNull()
    // updateTag('t') on B ...
    await b.call('updateTags', { tags: ['t'] })
    // ... a request starting on A afterwards (refreshTags first, as Next does) misses.
    await a.call('refreshTags')
    expect(await a.call('get', { key: 'k1' })).toBeNull()
    expect(await a.call('get', { key: 'k2' })).not.toBeNull()
    // revalidateTag('u', 'max') on A: stale on B (served once with revalidate -1).
    await a.call('updateTags', { tags: ['u'], durations: { expire: 31536000 } })
    await b.call('refreshTags')
    expect((await b.call('get', { key: 'k2' })).revalidate).toBe(-1)
    // revalidatePath: soft tags via getExpiration.
    const before = await b.call('now')
    await a.call('updateTags', { tags: ['_N_T_/shop'] })
    await b.call('refreshTags')
    const exp = await b.call('getExpiration', { tags: ['_N_T_/layout', '_N_T_/shop'] })
    expect(exp).toBeGreaterThan(before - 50)
    expect(exp).toBeLessThanOrEqual(await b.call('now'))
  })

  it('one instance regenerates for the fleet: the others take its value from Redis', async () => {
    const ns = freshNs()
    const a = await instance({ STRATA_NAMESPACE: ns })
    const b = await instance({ STRATA_NAMESPACE: ns })
    const soft = ['_N_T_/layout', '_N_T_/shop']
    await a.call('set', { key: 'page', value: 'v1', tags: ['products'] })
    expect((await b.call('get', { key: 'page', softTags: soft })).value).toBe('v1') // both hold v1 in L1

    // revalidateTag('products', 'max'): B serves v1 stale once and regenerates v2 ...
    await a.call('updateTags', { tags: ['products'], durations: { expire: 31536000 } })
    await b.call('refreshTags')
    const stale = await b.call('get', { key: 'page', softTags: soft })
    expect([stale.value, stale.revalidate]).toEqual(['v1', -1])
    await b.call('set', { key: 'page', value: 'v2', tags: ['products'] })
    // ... and A, whose L1 copy is stale too, serves B's v2 fresh instead of regenerating again.
    await a.call('refreshTags')
    const fromB = await a.call('get', { key: 'page', softTags: soft })
    expect([fromB.value, fromB.revalidate]).toEqual(['v2', 900])

    // revalidatePath('/shop') (a soft tag): B misses and regenerates v3; A takes v3 from Redis.
    await b.call('updateTags', { tags: ['_N_T_/shop'] })
    await b.call('refreshTags')
    expect(await b.call('get', { key: 'page', softTags: soft })).toBeNull()
    await b.call('set', { key: 'page', value: 'v3', tags: ['products'] })
    await a.call('refreshTags')
    expect((await a.call('get', { key: 'page', softTags: soft })).value).toBe('v3')
    // Without the soft tags in the request, A's own check is not involved: still the newest.
    expect((await a.call('get', { key: 'page' })).value).toBe('v3')
  })

  it('namespaces isolate entries and invalidations', async () => {
    const a = await instance({ STRATA_NAMESPACE: freshNs() })
    const other = await instance({ STRATA_NAMESPACE: freshNs() })
    await a.call('set', { key: 'same-key', value: 'from-a', tags: ['shared-tag'] })
    expect(await other.call('get', { key: 'same-key' })).toBeNull()
    await other.call('set', { key: 'same-key', value: 'from-other', tags: ['shared-tag'] })
    await other.call('updateTags', { tags: ['shared-tag'] })
    await a.call('refreshTags')
    expect((await a.call('get', { key: 'same-key' })).value).toBe('from-a')
  })

  it('sets a TTL derived from expire on every entry', async () => {
    const ns = freshNs()
    const a = await instance({ STRATA_NAMESPACE: ns })
    await a.call('set', { key: 'ttl', value: 'x', expire: 60 })
    const [k] = await entryKeys(ns)
    const pttl = Number(await redis.cli('PTTL', k))
    expect(pttl).toBeGreaterThan(55_000)
    expect(pttl).toBeLessThanOrEqual(60_000)
    // "never" is capped by maxTtlSeconds (default 30 days).
    await a.call('set', { key: 'ttl-inf', value: 'x', expire: 4294967294 })
    const keys = await entryKeys(ns)
    const ttls = await Promise.all(keys.map((key) => redis.cli('PTTL', key).then(Number)))
    expect(Math.max(...ttls)).toBeGreaterThan(29 * 86400_000)
    expect(Math.max(...ttls)).toBeLessThanOrEqual(30 * 86400_000)
  })

  it('garbage, truncated and foreign values in Redis are counted misses', async () => {
    const ns = freshNs()
    const a = await instance({ STRATA_NAMESPACE: ns })
    await a.call('set', { key: 'victim', value: 'y'.repeat(5000) })
    const [k] = await entryKeys(ns)
    const readers = []
    const cases = [
      ['SET', k, 'not an envelope at all'],
      ['SET', k, ''],
      ['SETRANGE', k, '0', 'XXXX'], // magic destroyed
    ]
    for (const c of cases) {
      await a.call('set', { key: 'victim', value: 'y'.repeat(5000) })
      await redis.cli(...c)
      const r = await instance({ STRATA_NAMESPACE: ns })
      readers.push(r)
      expect(await r.call('get', { key: 'victim' })).toBeNull()
      const s = await r.call('stats')
      expect(s.l2.decodeErrors).toBe(1)
    }
    // Truncated: the first half of a valid envelope.
    await a.call('set', { key: 'victim', value: 'z'.repeat(5000) })
    const len = Number(await redis.cli('STRLEN', k))
    const half = await redis.cli('--raw', 'GETRANGE', k, '0', String(Math.floor(len / 2)))
    expect(half.length).toBeGreaterThan(0)
    await redis.cli('EVAL', "redis.call('SET', KEYS[1], string.sub(redis.call('GET', KEYS[1]), 1, tonumber(ARGV[1]))) return 1", '1', k, String(Math.floor(len / 2)))
    const r = await instance({ STRATA_NAMESPACE: ns })
    expect(await r.call('get', { key: 'victim' })).toBeNull()
    expect((await r.call('stats')).l2.decodeErrors).toBe(1)
    // A fresh set repairs the key.
    await r.call('set', { key: 'victim', value: 'fixed' })
    const r2 = await instance({ STRATA_NAMESPACE: ns })
    expect((await r2.call('get', { key: 'victim' })).value).toBe('fixed')
    for (const x of [...readers, r, r2]) await x.stop()
  })

  it('compressed and uncompressed entries both read back', async () => {
    const ns = freshNs()
    const a = await instance({ STRATA_NAMESPACE: ns })
    const b = await instance({ STRATA_NAMESPACE: ns })
    const html = '<div class="product"><span>name</span><span>price</span></div>\n'.repeat(2000)
    await a.call('set', { key: 'big', value: html })
    await a.call('set', { key: 'small', value: 'tiny value' })
    const keys = await entryKeys(ns)
    const sizes = await Promise.all(keys.map((k) => redis.cli('STRLEN', k).then(Number)))
    // The compressible 130 KB value is stored far smaller than itself.
    expect(Math.max(...sizes)).toBeLessThan(html.length / 4)
    expect((await b.call('get', { key: 'big' })).value).toBe(html)
    expect((await b.call('get', { key: 'small' })).value).toBe('tiny value')
  })

  it('an instance with compression off reads compressed entries (mixed data stays readable)', async () => {
    const ns = freshNs()
    const a = await instance({ STRATA_NAMESPACE: ns })
    const off = await instance({ STRATA_NAMESPACE: ns, STRATA_COMPRESS_MIN_BYTES: '0' })
    const html = '<p>repeated</p>'.repeat(10_000)
    await a.call('set', { key: 'c', value: html })
    await off.call('set', { key: 'u', value: html })
    expect((await off.call('get', { key: 'c' })).value).toBe(html)
    expect((await a.call('get', { key: 'u' })).value).toBe(html)
  })

  it('entries too large for the reader\'s L1 are served from Redis without being retained', async () => {
    const ns = freshNs()
    const a = await instance({ STRATA_NAMESPACE: ns })
    const small = await instance({ STRATA_NAMESPACE: ns, STRATA_L1_MAX_BYTES: '64KiB' })
    await a.call('set', { key: 'big', value: 'b'.repeat(256 * 1024) })
    for (let i = 0; i < 20; i++) expect((await small.call('get', { key: 'big' })).size).toBe(256 * 1024)
    const s = await small.call('stats')
    expect(s.l2.hits).toBe(20)
    // Nothing keeps the 20 values alive: no shared views for entries L1 does not hold.
    expect(s.l1.jsViews).toBe(0)
    expect(s.l1.entries).toBe(0)
  })

  it('values over l2MaxValueBytes stay L1-only', async () => {
    const ns = freshNs()
    const a = await instance({ STRATA_NAMESPACE: ns, STRATA_L2_MAX_VALUE_BYTES: '64KiB', STRATA_COMPRESS_MIN_BYTES: '0' })
    const b = await instance({ STRATA_NAMESPACE: ns })
    await a.call('set', { key: 'huge', value: 'h'.repeat(100_000) })
    expect((await a.call('get', { key: 'huge' })).size).toBe(100_000)
    expect(await b.call('get', { key: 'huge' })).toBeNull()
    expect((await a.call('stats')).l2.tooLarge).toBe(1)
    expect(await entryKeys(ns)).toHaveLength(0)
  })
})

describe('namespace, resolved at run time', () => {
  const apps = []
  afterAll(() => { for (const d of apps) rmSync(d, { recursive: true, force: true }) })

  function appWithBuildId(id) {
    const dir = mkdtempSync(path.join(os.tmpdir(), 'strata-app-'))
    mkdirSync(path.join(dir, '.next'))
    writeFileSync(path.join(dir, '.next', 'BUILD_ID'), id)
    apps.push(dir)
    return dir
  }

  it("comes from the running app's .next/BUILD_ID, or a deployment id, and isolates builds", async () => {
    const v1 = appWithBuildId(`build-one-${process.pid}`)
    const v2 = appWithBuildId(`build-two-${process.pid}`)
    const a1 = await instance({}, v1)
    const b1 = await instance({}, v1)
    const a2 = await instance({}, v2)
    await a1.call('set', { key: 'k', value: 'from build one' })
    expect((await b1.call('get', { key: 'k' })).value).toBe('from build one')
    expect(await a2.call('get', { key: 'k' })).toBeNull()
    expect(await a1.call('config')).toMatchObject({ namespace: `build-one-${process.pid}`, namespaceSource: '.next/BUILD_ID' })
    // A deployment id wins over the build id.
    const d = await instance({ NEXT_DEPLOYMENT_ID: `dpl-${process.pid}` }, v1)
    await d.call('refreshTags') // first use: the namespace is resolved now
    expect(await d.call('config')).toMatchObject({ namespace: `dpl-${process.pid}`, namespaceSource: 'NEXT_DEPLOYMENT_ID' })
    expect(await d.call('get', { key: 'k' })).toBeNull()
  })

  it('during next build the handler never talks to Redis', async () => {
    const app = appWithBuildId('previous-build')
    const builder = await instance({ NEXT_PHASE: 'phase-production-build' }, app)
    await builder.call('set', { key: 'built', value: 'x', tags: ['t'] })
    await builder.call('updateTags', { tags: ['t'] })
    const cfg = await builder.call('config')
    expect(cfg.redis ?? null).toBeNull()
    expect((await builder.call('stats')).l2).toBeNull()
    const server = await instance({}, app)
    expect(await server.call('get', { key: 'built' })).toBeNull()
  })

  it('with Redis and no namespace source at all, reads are misses and writes reject, naming the fix', async () => {
    const empty = mkdtempSync(path.join(os.tmpdir(), 'strata-app-'))
    apps.push(empty)
    const i = await instance({ STRATA_LOG: 'silent' }, empty)
    expect(await i.call('get', { key: 'k' })).toBeNull()
    const err = await i.call('updateTags', { tags: ['t'] }).then(() => null, (e) => e)
    expect(err.code).toBe('STRATA_CONFIG')
    expect(err.message).toContain('STRATA_NAMESPACE')
  })
})

describe('one clock for invalidation', () => {
  for (const skew of [2000, -2000]) {
    it(`an instance ${skew > 0 ? 'ahead' : 'behind'} by ${Math.abs(skew)} ms agrees on every decision`, async () => {
      const ns = freshNs()
      const a = await instance({ STRATA_NAMESPACE: ns })
      const b = await instance({ STRATA_NAMESPACE: ns, STRATA_TEST_CLOCK_SKEW_MS: String(skew) })
      // An entry stored (by A, on A's clock) before B's invalidation ...
      await a.call('set', { key: 'old', value: 'old', tags: ['t'] })
      await b.call('get', { key: 'old' }) // warm B's L1 too
      await b.call('updateTags', { tags: ['t'] })
      // ... is never served as fresh by anyone.
      await a.call('refreshTags')
      await b.call('refreshTags')
      expect(await a.call('get', { key: 'old' })).toBeNull()
      expect(await b.call('get', { key: 'old' })).toBeNull()
      // An entry regenerated right after the invalidation (on either clock) is fresh everywhere.
      await a.call('set', { key: 'new-a', value: 'new', tags: ['t'] })
      await b.call('set', { key: 'new-b', value: 'new', tags: ['t'] })
      for (const inst of [a, b]) {
        for (const key of ['new-a', 'new-b']) {
          const e = await inst.call('get', { key })
          expect(e, `${key}`).not.toBeNull()
          expect(e.revalidate).toBe(900)
        }
      }
      // Soft tags: getExpiration is returned in each instance's own clock, so Next's comparison
      // with the entries it holds comes out right.
      await b.call('updateTags', { tags: ['_N_T_/p'] })
      await a.call('refreshTags')
      const expA = await a.call('getExpiration', { tags: ['_N_T_/p'] })
      const nowA = await a.call('now')
      expect(expA).toBeLessThanOrEqual(nowA)
      expect(expA).toBeGreaterThan(nowA - 1000)
      const expB = await b.call('getExpiration', { tags: ['_N_T_/p'] })
      const nowB = await b.call('now')
      expect(expB).toBeLessThanOrEqual(nowB)
      expect(expB).toBeGreaterThan(nowB - 1000)
    })
  }
})
