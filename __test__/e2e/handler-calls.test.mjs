// Which requests reach the cache handler, and what a plain cached value looks like over HTTP.
import { setTimeout as delay } from 'node:timers/promises'
import { afterAll, beforeAll, describe, expect, test } from 'vitest'
import { parseValue, startServer } from './next-app.mjs'

let server
beforeAll(async () => {
  server = await startServer()
})
afterAll(async () => {
  await server?.stop()
})

describe('handler calls', () => {
  // First test of a fresh server: nothing else has touched the handler yet, so no background
  // revalidation can move the counters while we watch them.
  test('/no-cache never calls the handler; a cached page does', async () => {
    const before = await server.stats()
    const seen = new Set()
    for (let i = 0; i < 3; i++) {
      const res = await server.fetchPage('/no-cache')
      expect(res.status).toBe(200)
      seen.add(parseValue(res.text, 'now'))
    }
    expect(seen.size).toBe(3) // really rendered per request
    const after = await server.stats()
    expect(after.calls).toEqual(before.calls)

    // The counters are the ones of the handler Next uses: a cached page moves them.
    const res = await server.fetchPage('/')
    expect(res.status).toBe(200)
    const afterCached = await server.stats()
    expect(afterCached.calls.refreshTags).toBeGreaterThan(after.calls.refreshTags)
    expect(afterCached.calls.get).toBeGreaterThan(after.calls.get)
  })

  test('a cached value is stable across requests and served by the handler', async () => {
    // Start from a fresh entry (expire now), so the 2 s revalidate window can't end mid-test.
    await server.revalidate({ tag: 'products', expire: 0 })
    const first = parseValue((await server.fetchPage('/')).text, 'products')
    const before = await server.stats()
    const again = []
    for (let i = 0; i < 3; i++) again.push(parseValue((await server.fetchPage('/')).text, 'products'))
    const after = await server.stats()
    expect(again).toEqual([first, first, first])
    // Each request read the entry through the handler (a hit), none wrote a new one.
    expect(after.calls.get - before.calls.get).toBeGreaterThanOrEqual(3)
    expect(after.calls.set).toBe(before.calls.set)
    expect(after.l1.hits - before.l1.hits).toBeGreaterThanOrEqual(3)
  })

  test('the handler is shared by both kinds: one updateTags call per invalidation', async () => {
    // `default` and `remote` resolve to the same handler object, so Next calls it once
    // (revalidation-utils.js iterates the Set of distinct handlers).
    const before = await server.stats()
    await server.revalidate({ tag: 'nothing-uses-this-tag' })
    const after = await server.stats()
    expect(after.calls.updateTags - before.calls.updateTags).toBe(1)
  })
})

describe('x-nextjs-cache', () => {
  // Only fully static routes carry x-nextjs-cache. The other demo pages are partially
  // prerendered (their cached parts are read at request time, see the page sources): their
  // responses carry `x-nextjs-postponed: 1` and no x-nextjs-cache (observed on next 16.4.6).
  test('a request-time cached part: no x-nextjs-cache, postponed shell', async () => {
    const res = await server.fetchPage('/')
    expect(res.headers['x-nextjs-cache']).toBeUndefined()
    expect(res.headers['x-nextjs-postponed']).toBe('1')
  })

  test('static page: HIT, then STALE after revalidateTag(tag, "max") until regenerated, then HIT with a new value', async () => {
    const first = await server.fetchPage('/static')
    expect(first.status).toBe(200)
    expect(first.headers['x-nextjs-cache']).toBe('HIT')
    const v1 = parseValue(first.text, 'static')
    const second = await server.fetchPage('/static')
    expect(second.headers['x-nextjs-cache']).toBe('HIT')
    expect(parseValue(second.text, 'static')).toBe(v1)

    await server.revalidate({ tag: 'static-tag' })
    const stale = await server.fetchPage('/static')
    expect(stale.headers['x-nextjs-cache']).toBe('STALE')
    expect(parseValue(stale.text, 'static')).toBe(v1)

    // The first STALE response starts a background regeneration of the whole page, which takes
    // ~0.1 s here; until it is stored, Next keeps answering STALE with the old page (observed with
    // both Next's built-in handler and a custom one). Nothing outside the server signals its end,
    // so poll, bounded.
    const deadline = Date.now() + 10_000
    let res
    for (;;) {
      res = await server.fetchPage('/static')
      if (res.headers['x-nextjs-cache'] !== 'STALE' || Date.now() > deadline) break
      expect(parseValue(res.text, 'static')).toBe(v1)
      await delay(25)
    }
    // The regeneration re-ran the 'use cache' function: the handler must not have handed it the
    // invalidated entry.
    expect(res.headers['x-nextjs-cache']).toBe('HIT')
    const v2 = parseValue(res.text, 'static')
    expect(v2).not.toBe(v1)
    const again = await server.fetchPage('/static')
    expect(again.headers['x-nextjs-cache']).toBe('HIT')
    expect(parseValue(again.text, 'static')).toBe(v2)
  })
})
