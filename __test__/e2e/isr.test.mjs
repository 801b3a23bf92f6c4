// The incremental cache end to end on examples/isr with the repo's Next: the suite is in
// isr-suite.mjs (what it shows, and how to run it against Next's built-in handler); here also
// the optimized images, which go through the same handler with `images.customCacheHandler`.
import path from 'node:path'
import { afterAll, beforeAll, describe, expect, test } from 'vitest'
import { defineIsrSuite } from './isr-suite.mjs'
import { repoRoot, startServer } from './next-app.mjs'

defineIsrSuite()

describe.skipIf(process.env.STRATA_ISR_BUILTIN === '1')('optimized images (images.customCacheHandler)', () => {
  let server
  beforeAll(async () => {
    server = await startServer({ dir: path.join(repoRoot, 'examples/isr'), probePath: '/api/runs' })
  })
  afterAll(async () => {
    await server?.stop()
  })

  test('are stored by the incremental handler (kind IMAGE) and served from it', async () => {
    const url = '/_next/image?url=%2Fstrata.png&w=64&q=75'
    const init = { headers: { accept: 'image/webp,image/*' } }
    const first = await server.fetchPage(url, init)
    const second = await server.fetchPage(url, init)
    expect([first.status, second.status]).toEqual([200, 200])
    expect(first.headers['x-nextjs-cache']).toBe('MISS')
    expect(second.headers['x-nextjs-cache']).toBe('HIT')
    expect(second.headers['content-type']).toBe(first.headers['content-type'])
    expect(second.text).toBe(first.text)
    const stats = JSON.parse((await server.fetchPage('/api/strata')).text)
    expect(stats.incrementalCalls.set).toBeGreaterThanOrEqual(1)
    expect(stats.incrementalCalls.get).toBeGreaterThanOrEqual(2)
  })
})
