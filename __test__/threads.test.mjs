// The addon loaded in two environments of one process (main thread + a worker thread): the
// store is per process, the zero-copy entry objects and the batched result bridge belong to the
// first environment, and the other one takes the copying / napi-rs paths. Nothing may crash,
// leak across environments or hang.
import { createRequire } from 'node:module'
import { fileURLToPath } from 'node:url'
import { Worker } from 'node:worker_threads'
import { afterAll, beforeAll, expect, it } from 'vitest'
import { startRedis } from './helpers/redis-server.mjs'

const require = createRequire(import.meta.url)
let redis

beforeAll(async () => { redis = await startRedis() })
afterAll(async () => { await redis?.stop() })

it('a worker thread shares the process store and works through the fallback paths', async () => {
  process.env.STRATA_LOG = 'silent'
  const { createUseCacheHandler } = require('strata-cache')
  const ns = `threads-${process.pid}`
  const h = createUseCacheHandler({ redis: redis.url, namespace: ns })
  const entry = (s) => ({
    value: new ReadableStream({ start(c) { c.enqueue(new TextEncoder().encode(s)); c.close() } }),
    tags: ['t'], stale: 1, timestamp: Date.now(), expire: 600, revalidate: 300,
  })
  await h.set('main', Promise.resolve(entry('from main')))
  expect(await h.get('main', [])).toBeDefined() // the main thread owns the shared objects now

  const worker = new Worker(fileURLToPath(new URL('./fixtures/worker-instance.cjs', import.meta.url)), { workerData: { url: redis.url, ns } })
  const [msg] = await Promise.all([
    new Promise((resolve) => worker.once('message', resolve)),
    new Promise((resolve) => worker.once('exit', resolve)),
  ])
  expect(msg).toEqual({ fromMain: 'from main', twice: 'from main', direct: { refreshes: 1, writes: 1 } })
  const fromWorker = await h.get('worker', [])
  let text = ''
  for await (const c of fromWorker.value) text += new TextDecoder().decode(c)
  expect(text).toBe('from worker')
  // The worker's invalidation went through Redis into the process's one tag state.
  await h.refreshTags()
  expect(await h.getExpiration(['t2'])).toBeGreaterThan(0)
  expect(Number(await redis.cli('HEXISTS', `{sc:${ns}:tags}:state`, 't2'))).toBe(1)
  // The worker's entry went to Redis over its own connection, which its exit closed; the main
  // thread's path is unaffected.
  expect((await redis.cli('--scan', '--pattern', `sc:${ns}:e:*`)).trim().split('\n')).toHaveLength(3)
  await h.set('after-worker', Promise.resolve(entry('still fine')))
  expect(await h.get('after-worker', [])).toBeDefined()
})
