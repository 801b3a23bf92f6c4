// The L1 byte bound, in its own process (the store is per process): a small L1 configured through
// the environment at first use.
import { createRequire } from 'node:module'
import { describe, expect, it, vi } from 'vitest'

process.env.STRATA_L1_MAX_BYTES = '4MiB'
const require = createRequire(import.meta.url)
const { stats, config } = require('strata-cache')
const handler = require('strata-cache/use-cache')

const MiB = 1024 * 1024

function entryOf(bytes, over = {}) {
  return {
    value: new ReadableStream({ start(c) { c.enqueue(bytes); c.close() } }),
    tags: [],
    stale: 300,
    timestamp: performance.timeOrigin + performance.now(),
    expire: 3600,
    revalidate: 900,
    ...over,
  }
}

describe('L1 byte bound', () => {
  it('reads its size from the environment when first used', async () => {
    expect(config()).toBeNull()
    await handler.refreshTags()
    expect(config().l1MaxBytes).toBe(4 * MiB)
    expect(stats().l1.maxBytes).toBe(4 * MiB)
  })

  it('filling far past the bound evicts; bytes and process memory stay bounded', async () => {
    const value = new Uint8Array(256 * 1024).fill(7) // reused: JS garbage stays small
    const rssBefore = process.memoryUsage().rss
    for (let i = 0; i < 1024; i++) {
      // 256 MiB written in all, into a 4 MiB cache.
      await handler.set(`fill-${i}`, Promise.resolve(entryOf(value)))
    }
    const s = stats().l1
    expect(s.bytes).toBeLessThanOrEqual(4 * MiB)
    expect(s.entries).toBeGreaterThan(0)
    expect(s.entries).toBeLessThanOrEqual(16)
    expect(s.evictions).toBeGreaterThanOrEqual(1000)
    // The most recent entry is there (LRU), the first one is gone.
    expect(await handler.get('fill-1023', [])).toBeDefined()
    expect(await handler.get('fill-0', [])).toBeUndefined()
    const grown = process.memoryUsage().rss - rssBefore
    expect(grown).toBeLessThan(96 * MiB)
  })

  it('releases the JS views of evicted entries', async () => {
    const value = new Uint8Array(512 * 1024).fill(1)
    for (let i = 0; i < 8; i++) {
      await handler.set(`view-${i}`, Promise.resolve(entryOf(value)))
      await handler.get(`view-${i}`, [])
    }
    const viewsBefore = stats().l1.jsViews
    expect(viewsBefore).toBeGreaterThan(0)
    for (let i = 0; i < 64; i++) {
      await handler.set(`push-${i}`, Promise.resolve(entryOf(value)))
    }
    // Eviction released the references (views of evicted entries are no longer held).
    expect(stats().l1.jsViews).toBeLessThan(viewsBefore)
  })

  it('a value larger than the whole L1 is not stored, warned once (whichever handler hit it first)', async () => {
    const warn = vi.spyOn(console, 'warn').mockImplementation(() => {})
    const tooLargeWarnings = () => warn.mock.calls.map((c) => String(c[0])).filter((m) => m.includes('larger than the whole L1'))
    const big = new Uint8Array(5 * MiB)
    // The incremental handler meets it first: a typed error for that entry, and the process's
    // one warning (the core's warn-once flag is shared by both handlers).
    const Incremental = require('strata-cache/incremental')
    const route = { kind: 'APP_ROUTE', body: Buffer.from(big), status: 200, headers: {} }
    await expect(new Incremental({}).set('/too-big-route', route, { cacheControl: { revalidate: 60 } }))
      .rejects.toMatchObject({ code: 'STRATA_TOO_LARGE' })
    expect(tooLargeWarnings()).toHaveLength(1)
    await handler.set('too-big-1', Promise.resolve(entryOf(big)))
    await handler.set('too-big-2', Promise.resolve(entryOf(big)))
    expect(await handler.get('too-big-1', [])).toBeUndefined()
    expect(stats().l1.rejectedTooLarge).toBe(3)
    expect(tooLargeWarnings()).toHaveLength(1)
    warn.mockRestore()
  })
})
