// The L2 on a real 3-master Redis Cluster: entries spread over slots, the tag state and its log
// in one slot, no CROSSSLOT errors, same behaviour as on one server.
import { afterAll, beforeAll, expect, it } from 'vitest'
import { startCluster } from './helpers/redis-server.mjs'
import { startInstance } from './helpers/instance.mjs'

let cluster
const running = []

beforeAll(async () => {
  cluster = await startCluster({ masters: 3 })
}, 60_000)

afterAll(async () => {
  await Promise.all(running.map((i) => i.stop()))
  await cluster?.stop()
})

async function instance(env) {
  const i = await startInstance({ env })
  running.push(i)
  return i
}

it('shares entries and invalidations across instances on a cluster', async () => {
  const ns = `c${process.pid}`
  // Seed list (several URLs = cluster) on one instance, one URL + STRATA_REDIS_CLUSTER on the other.
  const a = await instance({ REDIS_URL: cluster.urls.join(','), STRATA_NAMESPACE: ns })
  const b = await instance({ REDIS_URL: cluster.urls[1], STRATA_REDIS_CLUSTER: '1', STRATA_NAMESPACE: ns })
  const keys = Array.from({ length: 40 }, (_, i) => `["fn",[${i}],["build"]]`)
  for (const key of keys) await a.call('set', { key, value: `value of ${key}`, tags: ['all', `item-${key.length}`] })
  for (const key of keys) expect((await b.call('get', { key })).value).toBe(`value of ${key}`)
  expect((await b.call('stats')).l2.hits).toBe(keys.length)

  // Entries landed on more than one node (one key per entry, spread by its hash tag).
  const perNode = await Promise.all(cluster.nodes.map((n) => n.cli('--raw', 'KEYS', `sc:${ns}:e:*`)))
  const counts = perNode.map((out) => out.split('\n').filter(Boolean).length)
  expect(counts.reduce((x, y) => x + y, 0)).toBe(keys.length)
  expect(counts.filter((c) => c > 0).length).toBeGreaterThan(1)

  // Invalidation (a Lua script over four keys of one slot) and the log read work on the cluster.
  await a.call('updateTags', { tags: ['all'] })
  await b.call('refreshTags')
  for (const key of keys) expect(await b.call('get', { key })).toBeNull()
  const s = await a.call('stats')
  expect(s.l2.errors + s.l2.writeErrors).toBe(0)
  expect(s.l2.invalidations).toBe(1)
})
