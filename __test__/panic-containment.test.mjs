// A panic in the addon never crosses into Node: at every boundary (the libuv poll and timer
// callbacks of the event-loop L2 path, the queues that settle promises, the tasks on the
// runtime, the napi exports) it is contained, counted in stats().internalPanics, and becomes a
// miss for `get` and a STRATA_INTERNAL rejection elsewhere. The promise always settles and the
// process lives. STRATA_TEST_PANIC=<place> forces a panic there (src/panic.rs).
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest'
import { startRedis } from './helpers/redis-server.mjs'
import { instancePool } from './helpers/instance.mjs'

let redis
const pool = instancePool('panic')
beforeAll(async () => { redis = await startRedis() })
afterEach(pool.stopAll)
afterAll(async () => { await redis?.stop() })

/** Every call must settle well within this (deadline 200 ms + slack). */
const SETTLE_MS = 3000

function settles(promise) {
  let timer
  const timeout = new Promise((_, reject) => { timer = setTimeout(() => reject(new Error('did not settle')), SETTLE_MS) })
  return Promise.race([
    promise.then((value) => ({ ok: true, value }), (err) => ({ ok: false, code: err.code, message: err.message })),
    timeout,
  ]).finally(() => clearTimeout(timer))
}

// place, extra env, and whether the place is reached with the default (event-loop) transport.
const places = [
  ['poll', {}],
  ['timer', {}],
  ['settle', {}],
  ['settle', { STRATA_L2_DIRECT_READS: '0' }],
  ['task', { STRATA_L2_DIRECT_READS: '0' }],
  ['export', {}],
]

describe.each(places)('a panic forced in %s %o', (place, env) => {
  it('is contained: the process lives, every call settles, gets are misses or values', async () => {
    const ns = pool.ns()
    const i = await pool.instance(redis, { STRATA_NAMESPACE: ns, STRATA_TEST_PANIC: place, ...env })
    const outcomes = []
    const round = async (n) => {
      const key = `k${n}`
      outcomes.push(await settles(i.call('set', { key, value: `v${n}` })))
      outcomes.push(await settles(i.call('refreshTags')))
      const got = await settles(i.call('get', { key }))
      outcomes.push(got)
      // A get never rejects, whatever panicked: a miss or the exact value.
      expect(got.ok, JSON.stringify(got)).toBe(true)
      if (got.value !== null) expect(got.value.value).toBe(`v${n}`)
      outcomes.push(await settles(i.call('updateTags', { tags: [`t${n}`] })))
    }
    // Calls until the place is reached: at once for most, once the event-loop connection is up
    // for the poll callback, at a request's deadline for the timer. The event waited for is the
    // contained panic, counted; then calls must still settle after it.
    let n = 0
    const deadline = Date.now() + 10_000
    do {
      await round(n++)
      expect(Date.now(), `no panic contained in ${place}`).toBeLessThan(deadline)
      await new Promise((r) => setTimeout(r, 20))
    } while ((await i.call('stats')).internalPanics === 0)
    for (const end = n + 2; n < end; n++) await round(n)
    // Every rejection is a typed one.
    for (const o of outcomes) {
      if (o.ok) continue
      expect(o.code, o.message).toBe('STRATA_INTERNAL')
      // The code travels as a property from the addon: the message is for people only.
      expect(o.message).not.toMatch(/^\[STRATA_/)
    }
    const stats = await i.call('stats')
    expect(stats.internalPanics).toBeGreaterThan(0)
    // Still alive and answering.
    expect(await i.call('now')).toBeGreaterThan(0)
  }, 30_000)
})
