// The Redis L2 end to end: two `next start` processes of the same build (servers A and B, two
// ports) share one real redis-server, as two pods of one deployment would.
//
// Each test states how it fails against a handler without a shared L2. To see that, run this
// file with STRATA_E2E_REDIS_NO_L2=1: both servers then start without REDIS_URL (each on its own
// embedded L1) and every test fails (checked on next 16.4.6).
//
// Regenerations are counted with the handler's own counters (`/api/strata-stats`): Next calls
// `set` exactly when it has run a 'use cache' function, so an unchanged `calls.set` means nothing
// was regenerated; and every demo value embeds a random id, so an equal value is the same render.
//
// The entries read here (see examples/demo/lib/cached.ts): `/` → getProducts('home') and `/action`
// → getProducts('action') (tag `products`, fresh for 2 s, expire 60 s), `/remote` →
// 'use cache: remote' (tag `remote-tag`, hours), `/nested` → outer1, outer2, inner (hours).
//
// Observed on next 16.4.6 and worth knowing when reading the assertions: after a stale-marking
// invalidation (revalidateTag(tag, 'max')) or a revalidatePath, *every* instance that holds the
// entry in its L1 serves/discards its own copy and regenerates it once, so A and B may then hold
// two different new values until the entry expires (none serves the invalidated value past what
// Next's rules allow). A hard expiry (updateTag, expire: 0) does not: the expired L1 copy is a
// miss and the value another instance wrote since is read from Redis (see the updateTag test).
//
// `stats().l2.hits` also counts an entry read from Redis and then found expired by a tag (the
// read that precedes a regeneration), so the assertions on it are only made where the entry read
// is valid; regenerations are judged by `calls.set`.
import { setTimeout as delay } from 'node:timers/promises'
import { afterAll, beforeAll, describe, expect, test } from 'vitest'
import { startRedis } from '../helpers/redis-server.mjs'
import { parseValue, startServer, valueTime } from './next-app.mjs'

const withoutL2 = process.env.STRATA_E2E_REDIS_NO_L2 === '1'
// Fresh Redis per file anyway; the namespace also keeps this file's keys recognisable.
const ns = `e2e-redis-${process.pid}-${Date.now().toString(36)}`
const entryPattern = `sc:${ns}:e:*`
const tagState = `{sc:${ns}:tags}:state`

let redis
let a
let b
let env

beforeAll(async () => {
  redis = await startRedis()
  env = withoutL2 ? { STRATA_NAMESPACE: ns } : { REDIS_URL: redis.url, STRATA_NAMESPACE: ns }
  // Started one after the other: if the second fails to start, the first is already in `a` and
  // afterAll stops it.
  a = await startServer({ env })
  b = await startServer({ env })
})

afterAll(async () => {
  await Promise.allSettled([a?.stop(), b?.stop()])
  await redis?.stop()
})

const read = async (server, path, testid) => {
  const res = await server.fetchPage(path)
  expect(res.status, `${server.url}${path}: ${res.text.slice(0, 500)}`).toBe(200)
  return parseValue(res.text, testid)
}
const readProducts = (server, path = '/') => read(server, path, 'products')
const readNested = async (server) => {
  const res = await server.fetchPage('/nested')
  expect(res.status).toBe(200)
  return Object.fromEntries(['outer1', 'outer2', 'inner'].map((id) => [id, parseValue(res.text, id)]))
}

/**
 * Waits until `server` has written at least `n` entries to Redis in all. Next may hand the
 * entry to the handler's `set` while the response is already streaming, so the end of a response
 * does not prove the entry is in Redis; the write counter does (it is bumped after Redis took the
 * SET). Usually true at the first look. Without L2 (`stats().l2 === null`) nothing is ever
 * written: returns at once so the value assertions report the difference.
 */
async function l2WritesReach(server, n, timeoutMs = 5_000) {
  const deadline = Date.now() + timeoutMs
  for (;;) {
    const { l1, l2 } = await server.stats()
    if (l1 && !l2) return // store created without L2
    if (l2 && l2.writes >= n) return
    if (Date.now() > deadline) throw new Error(`${server.url}: l2.writes is ${l2?.writes} after ${timeoutMs} ms, expected >= ${n}`)
    await delay(10)
  }
}
// `stats().l1` and `.l2` are null until the process first uses the handler.
const l2Writes = async (server) => (await server.stats()).l2?.writes ?? 0

/**
 * `server.revalidate(args)`, then waits until the server's handler has recorded the
 * invalidation in Redis. In `next start` a route handler's revalidateTag/revalidatePath run
 * after its response, through `waitUntil` (next/dist/server/route-modules/app-route/module.js,
 * resolvePendingRevalidations), so the response alone does not prove `updateTags` returned;
 * `l2.invalidations` is bumped when Redis took it. The README's guarantee starts there. (A
 * server action that re-renders awaits its revalidations before rendering: no wait needed.)
 */
async function revalidateOn(server, args, timeoutMs = 5_000) {
  const before = (await server.stats()).l2?.invalidations ?? 0
  await server.revalidate(args)
  const deadline = Date.now() + timeoutMs
  for (;;) {
    const { l1, l2 } = await server.stats()
    if (l1 && !l2) return // store created without L2
    if (l2 && l2.invalidations > before) return
    if (Date.now() > deadline) throw new Error(`${server.url}: ${JSON.stringify(args)} not recorded in Redis after ${timeoutMs} ms`)
    await delay(10)
  }
}

/** Counter deltas between two `stats()`. */
const diff = (after, before) => ({
  set: after.calls.set - before.calls.set,
  l1Hits: (after.l1?.hits ?? 0) - (before.l1?.hits ?? 0),
  l2Hits: (after.l2?.hits ?? 0) - (before.l2?.hits ?? 0),
})

/**
 * Starts `products` from a fresh entry: hard-expires the tag (on A), renders `/` on A, and checks
 * B serves that same value out of Redis (so B holds it in its L1 too). Returns it. `products` is
 * fresh for only 2 s, so the tests check they finished inside that window: a time-based
 * revalidation can't pass for (or hide) a tag-based one.
 */
async function freshProductsOnBoth() {
  await revalidateOn(a, { tag: 'products', expire: 0 })
  const writes = await l2Writes(a)
  const v1 = await readProducts(a)
  await l2WritesReach(a, writes + 1)
  const onB = await readProducts(b)
  // Soft, and the value B holds is returned: without L2 this check fails and the test still goes
  // on to show that its own assertions (about what B serves next) fail too.
  expect.soft(onB, 'B serves the value A rendered').toBe(v1)
  return onB
}
const expectWithinFreshWindow = (value) => expect(Date.now() - valueTime(value)).toBeLessThan(2_000)

const entryKeys = async () => (await redis.cli('--raw', 'KEYS', entryPattern)).split('\n').filter(Boolean)

describe('entries are shared', () => {
  // Without L2: B renders `/` itself (another value, calls.set + 1), and Redis holds no key.
  test('a value rendered by A is served by B without regenerating; Redis holds it with a TTL', async () => {
    expect(await entryKeys()).toEqual([]) // fresh namespace: nothing rendered yet

    const a0 = await a.stats() // l1/l2 still null: nothing has used the handler yet
    const v1 = await readProducts(a)
    await l2WritesReach(a, 1)
    const a1 = await a.stats()
    expect(diff(a1, a0).set).toBe(1) // A rendered it

    // In Redis: one entry key (only `/` was rendered) under the namespace, with a TTL from the
    // entry's `expire` (60 s).
    const keys = await entryKeys()
    expect(keys).toHaveLength(1)
    const pttl = Number(await redis.cli('PTTL', keys[0]))
    expect(pttl).toBeGreaterThan(0)
    expect(pttl).toBeLessThanOrEqual(60_000)

    const b0 = await b.stats()
    expect(await readProducts(b)).toBe(v1)
    const b1 = await b.stats()
    expect(diff(b1, b0)).toMatchObject({ set: 0, l2Hits: 1 }) // read from Redis, not rendered

    // Promoted into B's L1: the next read is an L1 hit, without going to Redis. (The page's own
    // entry in the incremental cache, `cacheHandler`, may be an L1 hit of the same read too.)
    expect(await readProducts(b)).toBe(v1)
    const b2 = diff(await b.stats(), b1)
    expect(b2).toMatchObject({ set: 0, l2Hits: 0 })
    expect(b2.l1Hits).toBeGreaterThanOrEqual(1)
    expectWithinFreshWindow(v1)
  })

  // Without L2: B renders /remote itself (another value), and B's invalidation never reaches A.
  test("'use cache: remote' entries are shared, and so are their invalidations", async () => {
    const writes = await l2Writes(a)
    const r1 = await read(a, '/remote', 'remote')
    await l2WritesReach(a, writes + 1)
    const b0 = await b.stats()
    expect(await read(b, '/remote', 'remote')).toBe(r1)
    expect(diff(await b.stats(), b0)).toMatchObject({ set: 0, l2Hits: 1 })

    // The other way round: B expires the tag, A regenerates, B then serves A's new value.
    await revalidateOn(b, { tag: 'remote-tag', expire: 0 })
    const aWrites = await l2Writes(a)
    const r2 = await read(a, '/remote', 'remote')
    expect(r2).not.toBe(r1)
    await l2WritesReach(a, aWrites + 1)
    const b1 = await b.stats()
    expect(await read(b, '/remote', 'remote')).toBe(r2) // its L1 copy (r1) is expired by the tag
    expect(diff(await b.stats(), b1)).toMatchObject({ set: 0, l2Hits: 1 })
  })
})

describe('invalidations on A reach B', () => {
  // Without L2: B never learns of A's updateTag and keeps serving the value it had.
  test('updateTag in a server action on A: the next request on B gets a new value', async () => {
    const v1 = await freshProductsOnBoth() // B holds v1 in its L1
    const action1 = await readProducts(a, '/action')

    const aWrites = await l2Writes(a)
    const res = await a.callServerAction('/action', 'refreshProducts')
    expect(res.status).toBe(200)
    expect(res.headers['x-action-revalidated']).toBe('1')
    const fromAction = parseValue(res.text, 'products') // the action's own re-render of /action
    expect(fromAction).not.toBe(action1)

    const b0 = await b.stats()
    const v2 = await readProducts(b)
    expect(v2).not.toBe(v1)
    expect(valueTime(v2)).toBeGreaterThanOrEqual(valueTime(v1))
    expect(diff(await b.stats(), b0).set).toBe(1) // regenerated in the foreground, not stale

    // And both new values are shared: B serves A's re-render of /action, A serves B's `/`,
    // neither regenerates.
    await l2WritesReach(a, aWrites + 1)
    const b1 = await b.stats()
    expect(await readProducts(b, '/action')).toBe(fromAction)
    expect(diff(await b.stats(), b1).set).toBe(0)
    const a0 = await a.stats()
    expect(await readProducts(a)).toBe(v2)
    expect(diff(await a.stats(), a0).set).toBe(0)
    expectWithinFreshWindow(v1)
  })

  // Without L2: B never sees the tag go stale and keeps serving the value it had.
  test("revalidateTag(tag, 'max') on A: B serves the old value once, then a new one", async () => {
    const v1 = await freshProductsOnBoth()
    await revalidateOn(a, { tag: 'products' })
    expect(await readProducts(b)).toBe(v1) // stale, regenerating in the background on B
    const v2 = await readProducts(b)
    expect(v2).not.toBe(v1)
    expect(await readProducts(b)).toBe(v2)
    expectWithinFreshWindow(v1) // all of it happened before v1 could go stale by time
  })

  // Without L2: B never sees the path's tag and keeps serving the value it had.
  test("revalidatePath('/') on A: the next request to / on B regenerates", async () => {
    const v1 = await freshProductsOnBoth()
    await revalidateOn(a, { path: '/' })
    const b0 = await b.stats()
    const v2 = await readProducts(b)
    expect(v2).not.toBe(v1)
    expect(diff(await b.stats(), b0).set).toBe(1)
    expect(await readProducts(b)).toBe(v2)
    expectWithinFreshWindow(v1)
  })
})

describe('a restarted instance', () => {
  // Without L2: the new B starts with an empty L1 and renders everything itself.
  test('starts warm: it serves what was rendered before from Redis, and knows the tag state', async () => {
    const writes = await l2Writes(a)
    const r = await read(a, '/remote', 'remote') // rendered in the remote test (A's L1 hit)
    const n1 = await readNested(a)
    await l2WritesReach(a, writes + 3) // outer1, outer2, inner
    // An invalidation the new B must know although nothing has re-rendered outer1 since: the
    // copy in Redis is older than the tag's expiry.
    await revalidateOn(a, { tag: 'outer1', expire: 0 })

    const port = b.port
    await b.stop()
    b = null
    b = await startServer({ env, port })

    const b0 = await b.stats()
    expect(b0.calls.set).toBe(0)
    expect(await read(b, '/remote', 'remote')).toBe(r)
    const b1 = await b.stats()
    expect(b1.calls.set).toBe(0) // no regeneration: a Redis hit
    expect(b1.l2?.hits).toBe(1)

    const n2 = await readNested(b)
    expect(n2.inner).toBe(n1.inner) // from Redis
    expect(n2.outer2).toBe(n1.outer2) // from Redis
    expect(n2.outer1).not.toBe(n1.outer1) // expired by its tag before B started: regenerated
    expect(diff(await b.stats(), b1).set).toBe(1) // outer1 only
  })
})

describe('Redis state', () => {
  // Without L2: Redis holds no entry and no tag state.
  test('entry keys carry a TTL; invalidated tags are in the tag state hash; nothing outside the namespace', async () => {
    const keys = await entryKeys()
    // `/` (home), `/action`, `/remote`, `/nested` (outer1, outer2, inner): 6 Next keys.
    expect(keys).toHaveLength(6)
    for (const key of keys) {
      const pttl = Number(await redis.cli('PTTL', key))
      expect(pttl, key).toBeGreaterThan(0) // -1 would be a key without TTL
      expect(pttl, key).toBeLessThanOrEqual(30 * 24 * 3600 * 1000) // maxTtlSeconds
    }

    // Tags invalidated by the tests above (by tag and by path), and one that never was.
    for (const tag of ['products', 'remote-tag', 'outer1', '_N_T_/']) {
      expect(await redis.cli('HEXISTS', tagState, tag), tag).toBe('1')
    }
    expect(await redis.cli('HEXISTS', tagState, 'static-tag')).toBe('0')

    // An invalidation on B lands in the shared hash.
    const tag = `e2e-${Date.now()}`
    expect(await redis.cli('HEXISTS', tagState, tag)).toBe('0')
    await revalidateOn(b, { tag })
    expect(await redis.cli('HEXISTS', tagState, tag)).toBe('1')

    const all = (await redis.cli('--raw', 'KEYS', '*')).split('\n').filter(Boolean)
    // 'use cache' entries (`:e:`), the incremental cache's (`:i:`, the demo sets `cacheHandler`
    // too), the tag state: nothing else, nothing outside the namespace.
    for (const key of all) {
      expect(key.startsWith(`sc:${ns}:e:`) || key.startsWith(`sc:${ns}:i:`) || key.startsWith(`{sc:${ns}:tags}:`), key).toBe(true)
    }
  })
})
