// `next dev` with strata-cache configured (Next wraps custom 'use cache' handlers in its dev
// tiering, and sends only the fetch cache through the incremental handler in dev): pages render,
// and our handlers are the ones Next calls. (What `next dev` caches is Next's decision: it
// re-renders 'use cache' functions far more often than `next start`, with its built-in handler
// as with ours; these tests do not assert on cache hits.)
import path from 'node:path'
import { afterAll, beforeAll, describe, expect, test } from 'vitest'
import { startOrigin } from '../../examples/isr/origin.mjs'
import { parseValue, repoRoot, startServer } from './next-app.mjs'

describe('next dev, examples/demo (cacheComponents + cacheHandler)', () => {
  let dev
  beforeAll(async () => {
    dev = await startServer({ mode: 'dev', dir: path.join(repoRoot, 'examples/demo'), env: { STRATA_LOG: 'warn' } })
  }, 120_000)
  afterAll(async () => { await dev?.stop() })

  test("pages render through strata-cache's 'use cache' handler", async () => {
    const page = await dev.fetchPage('/')
    expect(page.status).toBe(200)
    expect(parseValue(page.text, 'products')).toMatch(/^\d+-\w+-home$/)
    const stats = JSON.parse((await dev.fetchPage('/api/strata-stats')).text)
    expect(stats.calls.get).toBeGreaterThan(0)
    expect(stats.calls.set).toBeGreaterThan(0)
    expect(stats.internalPanics).toBe(0)
    expect(dev.output()).not.toMatch(/strata-cache: .*(failed|error)/i)
  })
})

describe('next dev, examples/isr (the fetch cache through the incremental handler)', () => {
  let dev
  let origin
  beforeAll(async () => {
    origin = await startOrigin()
    dev = await startServer({ mode: 'dev', dir: path.join(repoRoot, 'examples/isr'), probePath: '/api/runs', env: { STRATA_LOG: 'warn', ISR_ORIGIN_URL: origin.url } })
  }, 120_000)
  afterAll(async () => {
    await dev?.stop()
    await origin?.stop()
  })

  test('a tagged fetch is cached by strata-cache: the origin is asked once for two renders', async () => {
    const first = await dev.fetchPage('/api/products')
    const second = await dev.fetchPage('/api/products')
    expect([first.status, second.status]).toEqual([200, 200])
    expect(JSON.parse(second.text).fetched.hits).toBe(JSON.parse(first.text).fetched.hits)
    const stats = JSON.parse((await dev.fetchPage('/api/strata')).text)
    expect(stats.incrementalCalls.get).toBeGreaterThan(0)
    expect(stats.incrementalCalls.set).toBeGreaterThan(0)
  })
})
