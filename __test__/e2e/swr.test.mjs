// Time-based stale-while-revalidate: `products` has cacheLife({ stale: 1, revalidate: 2, expire: 60 }).
//
// strata-cache keeps an entry until `expire` and lets Next do SWR: past `revalidate` Next serves
// the stored value once and regenerates it in the background (use-cache-wrapper.js,
// "shouldTriggerBackgroundRevalidation"). Note that Next's *built-in* handler does not do this
// in production: it drops an entry as soon as `revalidate` has passed (default.js, maxAge =
// revalidate), so with it the first request after the window already renders a new value
// (observed on next 16.4.6 with this app).
import { afterAll, beforeAll, expect, test } from 'vitest'
import { parseValue, startServer, valueTime, waitUntilAge } from './next-app.mjs'

let server
beforeAll(async () => {
  server = await startServer()
})
afterAll(async () => {
  await server?.stop()
})

const readProducts = async () => {
  const res = await server.fetchPage('/')
  expect(res.status).toBe(200)
  return parseValue(res.text, 'products')
}

test('past its revalidate window a value is served stale once, then replaced', async () => {
  await server.revalidate({ tag: 'products', expire: 0 })
  const v1 = await readProducts()
  expect(await readProducts()).toBe(v1)

  // No event to wait for: the entry goes stale by time. Wait until just past revalidate (2 s)
  // after v1 was created (the value embeds its creation time).
  await waitUntilAge(v1, 2_000 + 250)
  const before = await server.stats()
  expect(await readProducts()).toBe(v1) // stale, regenerating in the background
  const v2 = await readProducts()
  expect(v2).not.toBe(v1)
  expect(valueTime(v2)).toBeGreaterThanOrEqual(valueTime(v1) + 2_000)
  expect(await readProducts()).toBe(v2)
  const after = await server.stats()
  // The regeneration was written back through the handler (once: no foreground miss).
  expect(after.calls.set - before.calls.set).toBe(1)
})
