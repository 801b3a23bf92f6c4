// Redis slow, down, restarted: reads are misses or L1 hits, never hangs or rejections;
// invalidations are never lost. Real redis-server processes, separate instance processes.
import { afterAll, afterEach, describe, expect, it } from 'vitest'
import { startRedis } from './helpers/redis-server.mjs'
import { instancePool } from './helpers/instance.mjs'

const pool = instancePool('f')
const { ns, instance } = pool
afterEach(pool.stopAll)

describe('Redis slow or paused', () => {
  let redis
  afterAll(async () => { await redis?.stop() })

  it('reads miss within the deadline, writes stay L1-only, invalidations are queued then delivered', async () => {
    redis = await startRedis()
    const name = ns()
    const a = await instance(redis, { STRATA_NAMESPACE: name })
    const b = await instance(redis, { STRATA_NAMESPACE: name })
    await a.call('set', { key: 'shared', value: 'v1', tags: ['t'] })
    expect((await b.call('get', { key: 'shared' })).value).toBe('v1') // in B's L1 now
    await a.call('refreshTags')
    await b.call('refreshTags')

    // Redis stops answering every client for 2 s (it keeps its data).
    await redis.cli('CLIENT', 'PAUSE', '2000', 'ALL')
    const pausedAt = Date.now()
    // An L2 read: a miss after the 200 ms deadline, long before Redis answers again.
    expect(await a.call('get', { key: 'not-there' })).toBeNull()
    // A write: stored in A's L1, served from there.
    await a.call('set', { key: 'local-only', value: 'L1' })
    expect((await a.call('get', { key: 'local-only' })).value).toBe('L1')
    // updateTag('t') on A: resolves (not strict), applied to A at once, queued for Redis.
    await a.call('updateTags', { tags: ['t'] })
    expect(await a.call('get', { key: 'shared' })).toBeNull()
    const s = await a.call('stats')
    expect(s.l2.invalidationsPending).toBe(1)
    expect(s.l2.errors + s.l2.writeErrors).toBeGreaterThanOrEqual(1)
    expect(Date.now() - pausedAt).toBeLessThan(2000) // nothing waited for Redis

    // Redis answers again (this PING is held until the pause ends): the queued invalidation
    // is delivered first, and reaches B.
    await redis.cli('PING')
    // The timeouts opened the breaker; flush() delivers the queue as soon as it lets a probe through.
    expect(await a.call('flush', { timeoutMs: 5000 })).toBe(0)
    expect((await a.call('stats')).l2.invalidationsPending).toBe(0)
    expect((await a.call('stats')).l2.invalidationsReplayed).toBe(1)
    await b.call('refreshTags')
    expect(await b.call('get', { key: 'shared' })).toBeNull()
  })
})

describe('Redis down and restarted empty', () => {
  it('degrades to L1, opens the breaker, recovers, and drops L1 when Redis lost its data', async () => {
    const redis = await startRedis()
    const name = ns()
    const a = await instance(redis, { STRATA_NAMESPACE: name })
    const b = await instance(redis, { STRATA_NAMESPACE: name })
    await a.call('set', { key: 'x', value: 'before', tags: ['t'] })
    expect((await b.call('get', { key: 'x' })).value).toBe('before')
    await a.call('updateTags', { tags: ['unrelated'] }) // creates the shared tag state
    await b.call('refreshTags')

    await redis.kill()
    // Everything keeps working on L1; nothing rejects.
    expect((await b.call('get', { key: 'x' })).value).toBe('before')
    for (let i = 0; i < 6; i++) expect(await b.call('get', { key: `missing-${i}` })).toBeNull()
    await b.call('refreshTags')
    expect((await b.call('stats')).l2.breaker).toBe('open')
    // With the breaker open, calls do not touch the network.
    const errorsBefore = (await b.call('stats')).l2.errors
    expect(await b.call('get', { key: 'missing-again' })).toBeNull()
    expect((await b.call('stats')).l2.errors).toBe(errorsBefore + 1)
    // An invalidation made during the outage is queued ...
    await b.call('updateTags', { tags: ['during-outage'] })
    expect((await b.call('stats')).l2.invalidationsPending).toBe(1)

    await redis.restart() // same port, empty (no persistence)
    // ... and delivered once the breaker lets its probe through (after its 1 s open period):
    // flush() resolves when the queue is empty, so nothing here waits on a guessed delay.
    expect(await b.call('flush', { timeoutMs: 5000 })).toBe(0)
    await b.call('refreshTags')
    const s = await b.call('stats')
    expect(s.l2.breaker).toBe('closed')
    // Redis came back without the tag state: B cannot know what was invalidated meanwhile, so
    // it dropped its L1.
    expect(s.l2.dataLost).toBe(1)
    expect(await b.call('get', { key: 'x' })).toBeNull()
    // And the shared cache works again. (A's first call after the restart finds its old
    // connection dead, fails fast, and the connection manager reconnects: that call is a miss.)
    await a.call('refreshTags')
    await b.call('set', { key: 'y', value: 'after' })
    expect((await a.call('get', { key: 'y' })).value).toBe('after')
    await redis.stop()
  })

  it('starts and serves with Redis unreachable from the start', async () => {
    const redis = await startRedis()
    const port = redis.port
    await redis.stop()
    const a = await instance({ url: `redis://127.0.0.1:${port}` }, { STRATA_NAMESPACE: ns(), STRATA_LOG: 'silent' })
    await a.call('refreshTags')
    expect(await a.call('get', { key: 'k' })).toBeNull()
    await a.call('set', { key: 'k', value: 'v', tags: ['t'] })
    expect((await a.call('get', { key: 'k' })).value).toBe('v')
    await a.call('updateTags', { tags: ['t'] })
    expect(await a.call('get', { key: 'k' })).toBeNull()
    expect((await a.call('stats')).l2.invalidationsPending).toBe(1)
  })
})

describe('strict mode', () => {
  it('rejects an invalidation Redis cannot record and serves nothing it cannot verify', async () => {
    const redis = await startRedis()
    const name = ns()
    const a = await instance(redis, { STRATA_NAMESPACE: name, STRATA_STRICT: '1' })
    await a.call('refreshTags')
    await a.call('set', { key: 'k', value: 'v', tags: ['t'] })
    expect((await a.call('get', { key: 'k' })).value).toBe('v')
    await redis.cli('CLIENT', 'PAUSE', '1500', 'ALL')
    const err = await a.call('updateTags', { tags: ['t'] }).then(() => null, (e) => e)
    expect(err).not.toBeNull()
    expect(['STRATA_TIMEOUT', 'STRATA_UNAVAILABLE']).toContain(err.code)
    // refreshTags never rejects (it would fail the request), but the state is now unverified.
    await a.call('refreshTags')
    expect(await a.call('get', { key: 'k' })).toBeNull()
    await redis.cli('PING') // held until the pause ends
    // Once the tag state can be read again, the entry is served again.
    await a.call('refreshTags')
    await a.call('updateTags', { tags: ['other'] })
    await a.call('set', { key: 'k2', value: 'v2' })
    expect((await a.call('get', { key: 'k2' })).value).toBe('v2')
    await redis.stop()
  })
})
