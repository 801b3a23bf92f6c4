// The event-loop read path (src/uv/): L2 GETs made on Node's own thread over a
// libuv-polled connection. Real redis-server processes, instances in separate Node processes.
import { spawn } from 'node:child_process'
import { fileURLToPath } from 'node:url'
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest'
import { startRedis } from './helpers/redis-server.mjs'
import { instancePool } from './helpers/instance.mjs'

const pool = instancePool('d')
const { ns, instance } = pool
afterEach(pool.stopAll)

/** Calls refreshTags until one went over the event loop (the first ones connect it). */
async function untilDirectRefresh(inst) {
  for (let i = 0; i < 500; i++) {
    await inst.call('refreshTags')
    const s = (await inst.call('stats')).l2
    if (s.directRefreshes > 0) return s
  }
  throw new Error(`refreshTags never went over the event loop: ${JSON.stringify((await inst.call('stats')).l2)}`)
}

/** Reads `item` until a read went over the event loop (the first ones connect it). */
async function untilDirect(inst, item, { connects = 1 } = {}) {
  for (let i = 0; i < 500; i++) {
    const [r] = await inst.call('getMany', { items: [item] })
    const s = (await inst.call('stats')).l2
    if (s.directConnects >= connects && s.directReads > 0 && r?.exact) return s
  }
  throw new Error(`the event-loop read path never came up: ${JSON.stringify((await inst.call('stats')).l2)}`)
}

describe('L2 reads on the event loop', () => {
  let redis
  beforeAll(async () => { redis = await startRedis() })
  afterAll(async () => { await redis?.stop() })

  it('reads every size exactly, many in flight at once, replies matched to their requests', async () => {
    const name = ns()
    const writer = await instance(redis, { STRATA_NAMESPACE: name })
    // Nothing fits in the reader's L1: every get reads Redis. 280 reads (up to 1.1 MB each) are
    // in flight on one connection at once: a generous deadline, so a loaded test machine does
    // not turn the last of them into timeouts (that path is tested below).
    const reader = await instance(redis, { STRATA_NAMESPACE: name, STRATA_L1_MAX_BYTES: '1', STRATA_REDIS_TIMEOUT_MS: '10000' })
    const sizes = [0, 1, 1000, 16_384, 40_000, 300_000, 1_100_000]
    const items = []
    for (const [i, size] of sizes.entries()) {
      items.push({ key: `raw-${i}`, size, seed: i })
      // Compressible (LZ4 above 4 KiB by default): decompressed on read.
      items.push({ key: `lz-${i}`, size, seed: i + 100, repeat: 64 })
    }
    await writer.call('setMany', { items })
    await untilDirect(reader, items[2])
    const before = (await reader.call('stats')).l2
    // 20 rounds of every item, all in flight together, in shuffled order.
    const batch = []
    for (let r = 0; r < 20; r++) batch.push(...items)
    batch.sort(() => Math.random() - 0.5)
    const got = await reader.call('getMany', { items: batch })
    got.forEach((g, i) => expect(g, batch[i].key).toEqual({ size: batch[i].size, exact: true }))
    const after = (await reader.call('stats')).l2
    expect(after.directReads - before.directReads).toBe(batch.length)
    expect(after.directConnects).toBe(1)
    expect(after.errors).toBe(0)
    expect(after.decodeErrors).toBe(0)
    // A key nobody wrote is a miss on this path too.
    expect(await reader.call('getMany', { items: [{ key: 'absent', size: 1, seed: 0 }] })).toEqual([null])
    expect((await reader.call('stats')).l2.misses).toBe(after.misses + 1)
  })

  it('writes over the event loop: every size exactly, with the TTL from expire; too large stays L1-only', async () => {
    const name = ns()
    const writer = await instance(redis, { STRATA_NAMESPACE: name, STRATA_L2_MAX_VALUE_BYTES: '2000000', STRATA_REDIS_TIMEOUT_MS: '10000' })
    const reader = await instance(redis, { STRATA_NAMESPACE: name, STRATA_L1_MAX_BYTES: '1', STRATA_REDIS_TIMEOUT_MS: '10000' })
    await untilDirectRefresh(writer) // the writer's connection is up
    const items = []
    for (const [i, size] of [0, 1, 1000, 40_000, 1_100_000].entries()) {
      items.push({ key: `w-${i}`, size, seed: i }, { key: `wz-${i}`, size, seed: i + 7, repeat: 32 })
    }
    const s0 = (await writer.call('stats')).l2
    await writer.call('setMany', { items })
    const s1 = (await writer.call('stats')).l2
    // Values up to 64 KiB go over the event loop; larger ones only when nothing else is in
    // flight on the connection (here at most the first of the batch), else through the runtime.
    const small = items.filter((x) => x.size <= 65536).length
    expect(s1.directWrites - s0.directWrites).toBeGreaterThanOrEqual(small)
    expect(s1.directWrites - s0.directWrites).toBeLessThanOrEqual(small + 1)
    expect(s1.writes - s0.writes).toBe(items.length)
    expect(s1.writeErrors).toBe(0)
    expect(await reader.call('getMany', { items })).toEqual(items.map((x) => ({ size: x.size, exact: true })))
    // Large values written one at a time find the connection idle: all over the event loop.
    const big = [100_000, 1_100_000, 300_000].map((size, i) => ({ key: `b-${i}`, size, seed: 50 + i }))
    await writer.call('setSeq', { items: big })
    const s1b = (await writer.call('stats')).l2
    expect(s1b.directWrites - s1.directWrites).toBe(big.length)
    // Many large values at once: the first may go here, the others queue on the runtime.
    const burst = Array.from({ length: 6 }, (_, i) => ({ key: `bb-${i}`, size: 200_000 + i, seed: 60 + i }))
    await writer.call('setMany', { items: burst })
    const s1c = (await writer.call('stats')).l2
    expect(s1c.directWrites - s1b.directWrites).toBeLessThanOrEqual(1)
    expect(s1c.writes - s1b.writes).toBe(burst.length)
    expect(s1c.writeErrors).toBe(0)
    expect(await reader.call('getMany', { items: [...big, ...burst] })).toEqual([...big, ...burst].map((x) => ({ size: x.size, exact: true })))
    // The TTL comes from `expire` (3600 s in setMany).
    const key = (await redis.cli('--scan', '--pattern', `sc:${name}:e:*`)).trim().split('\n')[0]
    const pttl = Number((await redis.cli('PTTL', key)).trim())
    expect(pttl).toBeGreaterThan(3_500_000)
    expect(pttl).toBeLessThanOrEqual(3_600_000)
    // Over l2MaxValueBytes: stored in the writer's L1 only, nothing sent.
    await writer.call('setMany', { items: [{ key: 'huge', size: 2_100_000, seed: 1 }] })
    const s2 = (await writer.call('stats')).l2
    expect(s2.tooLarge).toBe(s1c.tooLarge + 1)
    expect(s2.directWrites).toBe(s1c.directWrites)
    expect(await reader.call('getMany', { items: [{ key: 'huge', size: 2_100_000, seed: 1 }] })).toEqual([null])
  })

  it('garbage under a key read over the event loop is a counted miss', async () => {
    const name = ns()
    const reader = await instance(redis, { STRATA_NAMESPACE: name, STRATA_L1_MAX_BYTES: '1' })
    const writer = await instance(redis, { STRATA_NAMESPACE: name })
    const item = { key: 'k', size: 100, seed: 1 }
    await writer.call('setMany', { items: [item] })
    await untilDirect(reader, item)
    const keys = (await redis.cli('--scan', '--pattern', `sc:${name}:e:*`)).trim().split('\n')
    expect(keys).toHaveLength(1)
    await redis.cli('SET', keys[0], 'not an envelope at all')
    const s0 = (await reader.call('stats')).l2
    expect(await reader.call('getMany', { items: [item] })).toEqual([null])
    const s1 = (await reader.call('stats')).l2
    expect(s1.decodeErrors).toBe(s0.decodeErrors + 1)
    expect(s1.directReads).toBe(s0.directReads + 1)
  })

  it('STRATA_L2_DIRECT_READS=0 keeps every read on the runtime', async () => {
    const name = ns()
    const writer = await instance(redis, { STRATA_NAMESPACE: name })
    const reader = await instance(redis, { STRATA_NAMESPACE: name, STRATA_L1_MAX_BYTES: '1', STRATA_L2_DIRECT_READS: '0' })
    const items = [{ key: 'a', size: 1000, seed: 3 }, { key: 'b', size: 300_000, seed: 4 }]
    await writer.call('setMany', { items })
    for (let i = 0; i < 20; i++) {
      expect(await reader.call('getMany', { items })).toEqual(items.map((x) => ({ size: x.size, exact: true })))
    }
    const s = (await reader.call('stats')).l2
    expect(s.directReads).toBe(0)
    expect(s.directConnects).toBe(0)
    expect(s.hits).toBe(40)
  })

  it('an idle process whose connection is up exits by itself', async () => {
    const name = ns()
    const script = `
      const { createUseCacheHandler, stats } = require(${JSON.stringify(fileURLToPath(new URL('../index.js', import.meta.url)))})
      const h = createUseCacheHandler({ redis: ${JSON.stringify(redis.url)}, namespace: ${JSON.stringify(name)}, l1MaxBytes: 1 })
      const entry = () => ({ value: new ReadableStream({ start(c) { c.enqueue(new Uint8Array([1, 2, 3])); c.close() } }), tags: [], stale: 300, timestamp: Date.now(), expire: 3600, revalidate: 900 })
      ;(async () => {
        await h.set('k', Promise.resolve(entry()))
        for (let i = 0; i < 500 && stats().l2.directReads === 0; i++) await h.get('k', [])
        process.stdout.write(JSON.stringify(stats().l2))
      })()
    `
    const child = spawn(process.execPath, ['-e', script], { env: { ...process.env, STRATA_LOG: 'silent' }, stdio: ['ignore', 'pipe', 'inherit'] })
    let out = ''
    child.stdout.on('data', (d) => { out += d })
    const killer = setTimeout(() => child.kill('SIGKILL'), 15_000)
    const [code, signal] = await new Promise((resolve) => child.once('exit', (c, s) => resolve([c, s])))
    clearTimeout(killer)
    expect(signal).toBeNull() // not killed: it exited on its own
    expect(code).toBe(0)
    expect(JSON.parse(out).directReads).toBeGreaterThan(0)
  })
})

describe('refreshTags on the event loop', () => {
  let redis
  beforeAll(async () => { redis = await startRedis() })
  afterAll(async () => { await redis?.stop() })

  it('an invalidation on A reaches B through B\'s event-loop refresh; concurrent calls share reads', async () => {
    const name = ns()
    const a = await instance(redis, { STRATA_NAMESPACE: name })
    const b = await instance(redis, { STRATA_NAMESPACE: name })
    const items = [{ key: 'x', size: 500, seed: 1 }, { key: 'y', size: 500, seed: 2 }]
    await a.call('setMany', { items: [items[0]], tags: ['t1'] })
    await a.call('setMany', { items: [items[1]], tags: ['t2'] })
    expect(await b.call('getMany', { items })).toEqual(items.map((x) => ({ size: x.size, exact: true }))) // in B's L1 now
    await untilDirectRefresh(b)
    const s0 = (await b.call('stats')).l2
    await a.call('updateTags', { tags: ['t1'] })
    await b.call('refreshTags')
    const s1 = (await b.call('stats')).l2
    expect(s1.directRefreshes).toBe(s0.directRefreshes + 1)
    // B's L1 copy of x is no longer served; y is.
    expect(await b.call('getMany', { items })).toEqual([null, { size: 500, exact: true }])
    // 50 calls at once: every one resolves, sharing a few log reads.
    await a.call('updateTags', { tags: ['t2'] })
    await b.call('refreshMany', { n: 50 })
    const s2 = (await b.call('stats')).l2
    expect(s2.directRefreshes - s1.directRefreshes).toBeGreaterThanOrEqual(1)
    expect(s2.directRefreshes - s1.directRefreshes).toBeLessThan(50)
    expect(await b.call('getMany', { items })).toEqual([null, null])
  })

  it('after SCRIPT FLUSH the refresh continues on the runtime, which loads the script again', async () => {
    const name = ns()
    const a = await instance(redis, { STRATA_NAMESPACE: name })
    const b = await instance(redis, { STRATA_NAMESPACE: name })
    const item = { key: 'z', size: 300, seed: 3 }
    await a.call('setMany', { items: [item], tags: ['t'] })
    expect(await b.call('getMany', { items: [item] })).toEqual([{ size: 300, exact: true }])
    await untilDirectRefresh(b)
    await redis.cli('SCRIPT', 'FLUSH')
    await a.call('updateTags', { tags: ['t'] })
    const s0 = (await b.call('stats')).l2
    await b.call('refreshTags')
    const s1 = (await b.call('stats')).l2
    expect(s1.directRefreshes).toBe(s0.directRefreshes + 1) // the EVALSHA that got NOSCRIPT
    expect(s1.errors).toBe(s0.errors)
    expect(await b.call('getMany', { items: [item] })).toEqual([null])
  })
})

describe('the event-loop path with a password and a database number', () => {
  it('authenticates, selects the database, and reads there', async () => {
    const redis = await startRedis({ args: ['--requirepass', 's3cret pass'] })
    try {
      const name = ns()
      const url = `redis://:${encodeURIComponent('s3cret pass')}@127.0.0.1:${redis.port}/3`
      const writer = await instance(redis, { REDIS_URL: url, STRATA_NAMESPACE: name })
      const reader = await instance(redis, { REDIS_URL: url, STRATA_NAMESPACE: name, STRATA_L1_MAX_BYTES: '1' })
      const item = { key: 'auth', size: 3000, seed: 5 }
      await writer.call('setMany', { items: [item] })
      const s = await untilDirect(reader, item)
      expect(s.errors).toBe(0)
      const auth = ['-a', 's3cret pass', '--no-auth-warning']
      expect((await redis.cli(...auth, '-n', '3', '--scan', '--pattern', `sc:${name}:e:*`)).trim()).not.toBe('')
      expect((await redis.cli(...auth, '-n', '0', '--scan', '--pattern', `sc:${name}:e:*`)).trim()).toBe('')
      // The password never shows in what the instance reports.
      expect(JSON.stringify(await reader.call('config'))).not.toContain('s3cret')
    } finally {
      await redis.stop()
    }
  })
})

describe('the event-loop path when Redis misbehaves', () => {
  it('a paused Redis: reads are misses within the deadline, then the path comes back', async () => {
    const redis = await startRedis()
    try {
      const name = ns()
      const writer = await instance(redis, { STRATA_NAMESPACE: name })
      const reader = await instance(redis, { STRATA_NAMESPACE: name, STRATA_L1_MAX_BYTES: '1' })
      const items = Array.from({ length: 8 }, (_, i) => ({ key: `p${i}`, size: 2000, seed: i }))
      await writer.call('setMany', { items })
      await untilDirect(reader, items[0])
      await redis.cli('CLIENT', 'PAUSE', '1500', 'ALL')
      const t0 = Date.now()
      // Every read in flight on the stuck connection: a miss at the 200 ms deadline.
      expect(await reader.call('getMany', { items })).toEqual(items.map(() => null))
      expect(Date.now() - t0).toBeLessThan(1200)
      const s = (await reader.call('stats')).l2
      expect(s.errors).toBeGreaterThanOrEqual(items.length)
      // An invalidation now is queued; flush() resolves once the breaker's probe got through,
      // i.e. Redis answers again (an event, not a guessed delay).
      await reader.call('updateTags', { tags: ['unrelated'] })
      expect(await reader.call('flush', { timeoutMs: 10_000 })).toBe(0)
      // The dropped connection is replaced and reads are exact again.
      const back = await untilDirect(reader, items[1], { connects: 2 })
      expect(back.breaker).toBe('closed')
      expect(await reader.call('getMany', { items })).toEqual(items.map((x) => ({ size: x.size, exact: true })))
    } finally {
      await redis.stop()
    }
  })

  it('a demoted primary: a write answered READONLY counts as a failure and the connection is replaced', async () => {
    const redis = await startRedis()
    const other = await startRedis()
    try {
      const a = await instance(redis, { STRATA_NAMESPACE: ns() })
      const s0 = await untilDirectRefresh(a) // a's connection is up
      // A failover demoted the server a's connection points at.
      await redis.cli('REPLICAOF', '127.0.0.1', String(other.port))
      await a.call('setMany', { items: [{ key: 'ro', size: 100, seed: 1 }] })
      const s1 = (await a.call('stats')).l2
      expect(s1.directWrites).toBe(s0.directWrites + 1) // the SET went over the event loop ...
      expect(s1.writeErrors).toBe(s0.writeErrors + 1) // ... and was refused: L1-only
      await redis.cli('REPLICAOF', 'NO', 'ONE')
      // The connection to the demoted server is not kept: the next requests connect anew.
      let s = s1
      for (let i = 0; i < 500 && s.directConnects === s0.directConnects; i++) {
        await a.call('refreshTags')
        s = (await a.call('stats')).l2
      }
      expect(s.directConnects).toBe(s0.directConnects + 1)
      await a.call('setMany', { items: [{ key: 'ro', size: 100, seed: 1 }] })
      expect((await a.call('stats')).l2.writes).toBe(s.writes + 1)
    } finally {
      await other.stop()
      await redis.stop()
    }
  })

  it('a restarted Redis: the dead connection is noticed and replaced', async () => {
    const redis = await startRedis()
    try {
      const name = ns()
      const reader = await instance(redis, { STRATA_NAMESPACE: name, STRATA_L1_MAX_BYTES: '1' })
      const writer = await instance(redis, { STRATA_NAMESPACE: name })
      const item = { key: 'r', size: 5000, seed: 9 }
      await writer.call('setMany', { items: [item] })
      await untilDirect(reader, item)
      await redis.restart() // same port, empty
      // Whatever the reads see meanwhile (misses), none rejects; once the writer stored the
      // entry again, the reader reads it over a new connection.
      await writer.call('refreshTags')
      await writer.call('setMany', { items: [item] })
      const s = await untilDirect(reader, item, { connects: 2 })
      expect(s.directConnects).toBe(2)
    } finally {
      await redis.stop()
    }
  })
})
