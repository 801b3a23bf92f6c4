// Nothing in Redis grows without bound: tag records that can no longer affect any stored entry
// (older than maxTtlSeconds, the longest any entry lives) are dropped by the invalidation script
// itself, and the invalidation log is capped.
import { afterAll, beforeAll, expect, it } from 'vitest'
import { startRedis } from './helpers/redis-server.mjs'
import { startInstance } from './helpers/instance.mjs'

let redis
let a

beforeAll(async () => {
  redis = await startRedis()
  a = await startInstance({ env: { REDIS_URL: redis.url, STRATA_NAMESPACE: 'bounds', STRATA_MAX_TTL_SECONDS: '1' } })
})

afterAll(async () => {
  await a?.stop()
  await redis?.stop()
})

async function invalidateDistinct(prefix, total, perCall = 500) {
  for (let i = 0; i < total; i += perCall) {
    const tags = Array.from({ length: perCall }, (_, j) => `_N_T_/${prefix}/${i + j}`)
    await a.call('updateTags', { tags })
  }
}

const info = async (field) => Number((await redis.cli('INFO', 'memory')).match(new RegExp(`${field}:(\\d+)`))[1])

it('100 000 distinct invalidated tags leave Redis memory bounded', async () => {
  const baseline = await info('used_memory')
  await invalidateDistinct('a', 100_000)
  const state = '{sc:bounds:tags}:state'
  // (On a loaded machine the first records may already be pruned while this runs.)
  expect(Number(await redis.cli('HLEN', state))).toBeLessThanOrEqual(100_000)
  // The first 100 000 records outlive the longest entry lifetime (1 s here) ...
  await new Promise((r) => setTimeout(r, 1100))
  // ... so the next 100 000 invalidations drop them as they go.
  await invalidateDistinct('b', 100_000)
  const hlen = Number(await redis.cli('HLEN', state))
  expect(hlen).toBeLessThanOrEqual(100_000)
  expect(Number(await redis.cli('ZCARD', '{sc:bounds:tags}:idx'))).toBe(hlen)
  expect(Number(await redis.cli('HEXISTS', state, '_N_T_/a/0'))).toBe(0)
  expect(Number(await redis.cli('HEXISTS', state, '_N_T_/b/99999'))).toBe(1)
  // The log is capped (XADD MAXLEN ~ 10 000 entries).
  expect(Number(await redis.cli('XLEN', '{sc:bounds:tags}:log'))).toBeLessThan(11_000)
  // 200 000 tags invalidated, memory as for at most the last 100 000: measured 26.5 MB here
  // (records ~14 MB + the log of these 400 calls ~12 MB); with nothing pruned it is ~40 MB.
  expect((await info('used_memory')) - baseline).toBeLessThan(34 * 1024 * 1024)
  // The instance's own mirror is bounded too (maxTags, default 100 000).
  expect((await a.call('stats')).tags.records).toBeLessThanOrEqual(100_000)
}, 120_000)
