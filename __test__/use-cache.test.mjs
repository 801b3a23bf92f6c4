// The 'use cache' handler contract, method by method, on the embedded L1 (no Redis).
// Semantics from ../shared/docs/nextjs-cache-contract.md §1 and Next 16.4.6's built-in handler.
import { createRequire } from 'node:module'
import { describe, expect, it, vi } from 'vitest'

const require = createRequire(import.meta.url)
const { createUseCacheHandler, stats, StrataError } = require('strata-cache')
const handler = require('strata-cache/use-cache')

const enc = new TextEncoder()
const dec = new TextDecoder()
let n = 0
const key = (label) => `["${label}",[${++n}],["build-id"]]`

function streamOf(...parts) {
  return new ReadableStream({
    start(c) {
      for (const p of parts) c.enqueue(typeof p === 'string' ? enc.encode(p) : p)
      c.close()
    },
  })
}

function entry(value, over = {}) {
  return {
    value: typeof value === 'string' ? streamOf(value) : value,
    tags: [],
    stale: 300,
    timestamp: performance.timeOrigin + performance.now(),
    expire: 4294967294,
    revalidate: 900,
    ...over,
  }
}

async function text(stream) {
  const chunks = []
  for await (const c of stream) chunks.push(Buffer.from(c))
  return dec.decode(Buffer.concat(chunks))
}

describe('module shape', () => {
  it('default export is the handler object itself, never a class', () => {
    expect(typeof handler).toBe('object')
    for (const m of ['get', 'set', 'refreshTags', 'getExpiration', 'updateTags']) {
      expect(typeof handler[m]).toBe('function')
    }
    // Next applies interopDefault (mod.default || mod) twice.
    expect(handler.default).toBe(handler)
  })
})

describe('get / set', () => {
  it('round-trips every field', async () => {
    const k = key('round-trip')
    const e = entry('0:"$@1"\n1:{"a":1}\n', {
      tags: ['products', 'non-ascii-%C3%A9'],
      stale: 60,
      timestamp: 1795357925414.6108 + (Date.now() - 1795357925414), // a fractional ms "now"
      expire: 4294967294,
      revalidate: 120,
    })
    await handler.set(k, Promise.resolve(e))
    const got = await handler.get(k, ['_N_T_/layout'])
    expect(got).toBeDefined()
    expect(got.tags).toEqual(['products', 'non-ascii-%C3%A9'])
    expect(got.stale).toBe(60)
    expect(got.timestamp).toBe(e.timestamp)
    expect(got.expire).toBe(4294967294)
    expect(got.revalidate).toBe(120)
    expect(await text(got.value)).toBe('0:"$@1"\n1:{"a":1}\n')
  })

  it('misses an unknown key', async () => {
    expect(await handler.get(key('unknown'), [])).toBeUndefined()
  })

  it('concatenates a multi-chunk stream', async () => {
    const k = key('chunks')
    await handler.set(k, Promise.resolve(entry(streamOf('a', 'bc', new Uint8Array(0), 'def'))))
    expect(await text((await handler.get(k, [])).value)).toBe('abcdef')
  })

  it('a get racing a pending set waits for it and returns the entry', async () => {
    const k = key('race')
    let resolve
    const pending = new Promise((r) => { resolve = r })
    const setDone = handler.set(k, pending)
    const got = handler.get(k, [])
    let settled = false
    got.then(() => { settled = true })
    await Promise.resolve()
    expect(settled).toBe(false)
    resolve(entry('late value'))
    const e = await got
    expect(e).toBeDefined()
    expect(await text(e.value)).toBe('late value')
    await setDone
  })

  it('gives every get its own fresh, unlocked stream', async () => {
    const k = key('two-streams')
    await handler.set(k, Promise.resolve(entry('shared bytes')))
    const a = await handler.get(k, [])
    const b = await handler.get(k, [])
    expect(a.value).not.toBe(b.value)
    expect(a.value.locked).toBe(false)
    expect(b.value.locked).toBe(false)
    // Next may tee() one of them.
    const [t1, t2] = a.value.tee()
    expect(await text(t1)).toBe('shared bytes')
    expect(await text(t2)).toBe('shared bytes')
    expect(await text(b.value)).toBe('shared bytes')
  })

  it('hands out the stored bytes without a copy per hit', async () => {
    const k = key('zero-copy')
    await handler.set(k, Promise.resolve(entry('x'.repeat(256 * 1024))))
    const first = await (await handler.get(k, [])).value.getReader().read()
    const second = await (await handler.get(k, [])).value.getReader().read()
    expect(first.value.byteLength).toBe(256 * 1024)
    // The same Buffer (one external view over Rust memory) is handed to every reader.
    expect(second.value).toBe(first.value)
    expect(stats().l1.jsViews).toBeGreaterThan(0)
  })

  it('a stream that errors during set stores nothing and does not reject', async () => {
    const k = key('erroring')
    await handler.set(k, Promise.resolve(entry('old')))
    const broken = new ReadableStream({
      start(c) {
        c.enqueue(enc.encode('partial'))
        c.error(new Error('render failed'))
      },
    })
    await expect(handler.set(k, Promise.resolve(entry(broken)))).resolves.toBeUndefined()
    // The old value is untouched, the partial one never stored.
    expect(await text((await handler.get(k, [])).value)).toBe('old')
    const k2 = key('erroring-fresh')
    await handler.set(k2, Promise.resolve(entry(new ReadableStream({ start(c) { c.error(new Error('x')) } }))))
    expect(await handler.get(k2, [])).toBeUndefined()
  })

  it('a rejected pendingEntry stores nothing', async () => {
    const k = key('rejected')
    await expect(handler.set(k, Promise.reject(new Error('render failed')))).resolves.toBeUndefined()
    expect(await handler.get(k, [])).toBeUndefined()
  })

  it('does not store expire === 0 (dynamic) entries', async () => {
    const k = key('dynamic')
    const before = stats().l1?.skippedDynamic ?? 0
    await handler.set(k, Promise.resolve(entry('dyn', { expire: 0, revalidate: 0 })))
    expect(await handler.get(k, [])).toBeUndefined()
    expect(stats().l1.skippedDynamic).toBe(before + 1)
  })

  it('misses entries past timestamp + expire, keeps them until then (Next does SWR)', async () => {
    const k = key('expiry')
    const now = performance.timeOrigin + performance.now()
    // Past its revalidate window but within expire: still returned, Next decides SWR.
    await handler.set(k, Promise.resolve(entry('v', { timestamp: now - 5_000, revalidate: 1, expire: 60 })))
    expect((await handler.get(k, [])).revalidate).toBe(1)
    // Already past expire: a miss.
    const k2 = key('expired')
    await handler.set(k2, Promise.resolve(entry('v', { timestamp: now - 61_000, revalidate: 1, expire: 60 })))
    expect(await handler.get(k2, [])).toBeUndefined()
    // Expires while stored.
    const k3 = key('expiring')
    await handler.set(k3, Promise.resolve(entry('v', { timestamp: now - 59_850, revalidate: 1, expire: 60 })))
    expect(await handler.get(k3, [])).toBeDefined()
    await new Promise((r) => setTimeout(r, 250)) // the entry's own lifetime, not synchronisation
    expect(await handler.get(k3, [])).toBeUndefined()
  })

  it('accepts a 1 MB key and an empty value', async () => {
    const k = 'k'.repeat(1024 * 1024)
    await handler.set(k, Promise.resolve(entry(streamOf())))
    const e = await handler.get(k, [])
    expect(e).toBeDefined()
    expect(await text(e.value)).toBe('')
  })
})

describe('tags', () => {
  it('updateTags without durations expires at once (updateTag / revalidatePath)', async () => {
    const k = key('tag-now')
    await handler.set(k, Promise.resolve(entry('v1', { tags: ['t-now'] })))
    expect(await handler.get(k, [])).toBeDefined()
    await handler.updateTags(['t-now'])
    expect(await handler.get(k, [])).toBeUndefined()
    // A value regenerated after the invalidation is fresh.
    await handler.set(k, Promise.resolve(entry('v2', { tags: ['t-now'] })))
    const e = await handler.get(k, [])
    expect(await text(e.value)).toBe('v2')
    expect(e.revalidate).toBe(900)
  })

  it("updateTags with durations marks stale (revalidate -1) and expires after durations.expire", async () => {
    const k = key('tag-swr')
    await handler.set(k, Promise.resolve(entry('v1', { tags: ['t-swr'] })))
    await handler.updateTags(['t-swr'], { expire: 31536000 }) // revalidateTag(t, 'max')
    const stale = await handler.get(k, [])
    expect(stale.revalidate).toBe(-1)
    expect(await text(stale.value)).toBe('v1')
    // Background regeneration stores a newer entry: fresh again.
    await handler.set(k, Promise.resolve(entry('v2', { tags: ['t-swr'] })))
    expect((await handler.get(k, [])).revalidate).toBe(900)

    const k2 = key('tag-expire0')
    await handler.set(k2, Promise.resolve(entry('v', { tags: ['t-zero'] })))
    await handler.updateTags(['t-zero'], { expire: 0 })
    expect(await handler.get(k2, [])).toBeUndefined()
  })

  it('getExpiration over soft tags: 0 when never invalidated, else the latest expiry that happened', async () => {
    expect(await handler.getExpiration(['_N_T_/never', '_N_T_/layout-never'])).toBe(0)
    const before = performance.timeOrigin + performance.now()
    await handler.updateTags(['_N_T_/dyn-a'])
    const after = performance.timeOrigin + performance.now()
    const exp = await handler.getExpiration(['_N_T_/layout-x', '_N_T_/dyn-a'])
    expect(exp).toBeGreaterThanOrEqual(before)
    expect(exp).toBeLessThanOrEqual(after)
    // A future expiry (revalidateTag on a soft tag with a profile) is not reported yet.
    await handler.updateTags(['_N_T_/future'], { expire: 3600 })
    expect(await handler.getExpiration(['_N_T_/future'])).toBe(0)
    expect(await handler.getExpiration([])).toBe(0)
  })

  it('refreshTags resolves (no-op without Redis)', async () => {
    await expect(handler.refreshTags()).resolves.toBeUndefined()
  })

  it('tag state is shared by every handler object of the process', async () => {
    const other = createUseCacheHandler()
    const k = key('shared-state')
    await handler.set(k, Promise.resolve(entry('v', { tags: ['t-shared'] })))
    expect(await other.get(k, [])).toBeDefined()
    await other.updateTags(['t-shared'])
    expect(await handler.get(k, [])).toBeUndefined()
  })
})

describe('bad input', () => {
  it('get never rejects: wrong types are a miss, logged once', async () => {
    const warn = vi.spyOn(console, 'warn').mockImplementation(() => {})
    for (const bad of [undefined, null, 42, {}, [], Symbol('s'), () => 1]) {
      await expect(handler.get(bad, [])).resolves.toBeUndefined()
    }
    await expect(handler.get(key('ok'), 'not-an-array')).resolves.toBeUndefined()
    expect(warn.mock.calls.length).toBeLessThanOrEqual(1)
    warn.mockRestore()
  })

  it('set rejects wrong types with a typed error and stores nothing', async () => {
    const bads = [
      [42, Promise.resolve(entry('v'))],
      [key('b1'), Promise.resolve(null)],
      [key('b2'), Promise.resolve(entry('v', { tags: 'products' }))],
      [key('b3'), Promise.resolve(entry('v', { tags: [1] }))],
      [key('b4'), Promise.resolve(entry('v', { timestamp: 'now' }))],
      [key('b5'), Promise.resolve(entry('v', { expire: NaN }))],
      [key('b6'), Promise.resolve(entry('v', { revalidate: undefined }))],
      [key('b7'), Promise.resolve({ ...entry('v'), value: 'not a stream' })],
      [key('b8'), Promise.resolve(entry(streamOf('ok', 'x').pipeThrough(new TransformStream({ transform(c, ctl) { ctl.enqueue('a string chunk') } }))))],
      [key('b9'), Promise.resolve(entry('v', { timestamp: -5 }))],
    ]
    for (const [k, p] of bads) {
      const err = await handler.set(k, p).then(() => null, (e) => e)
      expect(err, String(k)).toBeInstanceOf(StrataError)
      expect(err.code).toBe('STRATA_INVALID_ARG')
      if (typeof k === 'string') expect(await handler.get(k, [])).toBeUndefined()
    }
  })

  it('the other methods reject wrong types with a typed error', async () => {
    const cases = [
      () => handler.updateTags('products'),
      () => handler.updateTags([1, 2]),
      () => handler.updateTags(['t'], { expire: 'soon' }),
      () => handler.updateTags(['t'], { expire: -1 }),
      () => handler.updateTags(['t'], 5),
      () => handler.getExpiration(null),
      () => handler.getExpiration([{}]),
    ]
    for (const c of cases) {
      const err = await c().then(() => null, (e) => e)
      expect(err).toBeInstanceOf(StrataError)
      expect(err.code).toBe('STRATA_INVALID_ARG')
    }
  })

  it('wrong options name the option', () => {
    const bad = [
      [{ l1MaxBytes: '64MiB' }, 'l1MaxBytes'],
      [{ l1MaxBytes: 0 }, 'l1MaxBytes'],
      [{ l1MaxBytes: 1.5 }, 'l1MaxBytes'],
      [{ maxTags: -1 }, 'maxTags'],
      [{ redis: 5 }, 'redis'],
      [{ nope: 1 }, 'nope'],
    ]
    for (const [opts, name] of bad) {
      let err
      try { createUseCacheHandler(opts) } catch (e) { err = e }
      expect(err).toBeInstanceOf(StrataError)
      expect(err.code).toBe('STRATA_CONFIG')
      expect(err.message).toContain(name)
    }
    expect(() => createUseCacheHandler('x')).toThrow(StrataError)
  })
})
