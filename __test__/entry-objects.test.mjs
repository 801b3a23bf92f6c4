// How the addon builds the entry objects it hands to JS: through the literal lib/store.js
// registers (per thread), or by itself when none is registered or the registered one throws.
// Each case runs in a fresh process, so the store and the factory start empty.
import { describe, it, expect } from 'vitest'
import { execFile } from 'node:child_process'
import { fileURLToPath } from 'node:url'

const binding = fileURLToPath(new URL('../binding.js', import.meta.url))

/** Runs `body` in a fresh Node process with `native` bound; resolves with what it prints as JSON. */
function inChild(body) {
  const script = `
    const native = require(${JSON.stringify(binding)})
    native.init({ l1MaxBytes: 1 << 20 })
    const TS = Math.floor(Date.now()) + 0.625
    const put = (key, text) => native.ucSet(key, new TextEncoder().encode(text), ['t1', 't2'], 300, TS, 3600, 900)
    const plain = (e) => ({ value: Buffer.from(e.value).toString(), tags: e.tags, stale: e.stale, sameTimestamp: e.timestamp === TS, expire: e.expire, revalidate: e.revalidate, staleByTag: e.staleByTag, keys: Object.keys(e) })
    ;(() => { ${body} })()
  `
  return new Promise((resolve, reject) => {
    execFile(process.execPath, ['-e', script], { timeout: 20_000 }, (err, stdout, stderr) => {
      if (err) return reject(new Error(`${err.message}\n${stderr}`))
      resolve(JSON.parse(stdout))
    })
  })
}

const expected = (value) => ({
  value, tags: ['t1', 't2'], stale: 300, sameTimestamp: true, expire: 3600, revalidate: 900, staleByTag: false,
  keys: ['value', 'tags', 'stale', 'timestamp', 'expire', 'revalidate', 'staleByTag'],
})

describe('entry objects', () => {
  it('are built by the addon when no factory is registered', async () => {
    const out = await inChild(`
      put('a', 'first read (a copy)'); put('b', 'x'.repeat(40000))
      const a1 = native.ucGet('a', []), a2 = native.ucGet('a', []), b = native.ucGet('b', [])
      console.log(JSON.stringify({ a1: plain(a1), a2: plain(a2), b: { ...plain(b), value: plain(b).value.length } }))
    `)
    expect(out.a1).toEqual(expected('first read (a copy)'))
    expect(out.a2).toEqual(expected('first read (a copy)'))
    expect(out.b).toEqual({ ...expected(40000) })
  })

  it('come from the registered factory, with the same fields', async () => {
    const out = await inChild(`
      let calls = 0
      native.setEntryFactory((value, tags, stale, timestamp, expire, revalidate, staleByTag) => { calls++; return { value, tags, stale, timestamp, expire, revalidate, staleByTag } })
      put('a', 'from the factory'); put('b', 'y'.repeat(40000))
      const a1 = native.ucGet('a', []), a2 = native.ucGet('a', []), a3 = native.ucGet('a', []), b = native.ucGet('b', [])
      console.log(JSON.stringify({ calls, a1: plain(a1), a2: plain(a2), sameShared: a2 === a3, b: { ...plain(b), value: plain(b).value.length } }))
    `)
    // a1: the first read's copy; a2: the shared object (a3 is the same one, not built again); b.
    expect(out.calls).toBe(3)
    expect(out.a1).toEqual(expected('from the factory'))
    expect(out.a2).toEqual(expected('from the factory'))
    expect(out.sameShared).toBe(true)
    expect(out.b).toEqual({ ...expected(40000) })
  })

  it('a hit stale by a tag is an object of the same shape over the same Buffer, with staleByTag true', async () => {
    const out = await inChild(`
      // Written a second ago: an invalidation now is after them (TS may be ahead of the clock by
      // up to 0.625 ms, which a fast build's updateTags would beat).
      const old = (key, text) => native.ucSet(key, new TextEncoder().encode(text), ['t1', 't2'], 300, TS - 1000, 3600, 900)
      old('a', 'stale soon'); old('b', 'z'.repeat(40000))
      native.ucGet('a', []) // the first read's copy
      const a = native.ucGet('a', []), b = native.ucGet('b', [])
      native.ucUpdateTags(['t2'], {}) // marks t2 stale (no expire): both entries carry it
      const as = native.ucGet('a', []), bs = native.ucGet('b', [])
      console.log(JSON.stringify({ a: plain(as), b: { ...plain(bs), value: plain(bs).value.length }, sameBuffer: as.value === a.value && bs.value === b.value, sharedUntouched: a.staleByTag === false && native.ucGet('a', []) !== a }))
    `)
    expect(out.a).toEqual({ ...expected('stale soon'), staleByTag: true, sameTimestamp: false })
    expect(out.b).toEqual({ ...expected(40000), staleByTag: true, sameTimestamp: false })
    expect(out.sameBuffer).toBe(true)
    expect(out.sharedUntouched).toBe(true)
  })

  it('fall back to the addon when the factory throws, leaving no exception behind', async () => {
    const out = await inChild(`
      native.setEntryFactory(() => { throw new Error('boom') })
      put('a', 'still served')
      let threw = false, e
      try { e = native.ucGet('a', []) } catch { threw = true }
      console.log(JSON.stringify({ threw, e: plain(e), after: 1 + 1 }))
    `)
    expect(out.threw).toBe(false)
    expect(out.e).toEqual(expected('still served'))
    expect(out.after).toBe(2)
  })

  it('rejects a factory that is not a function, and keeps building entries itself', async () => {
    const out = await inChild(`
      let message = null
      try { native.setEntryFactory({}) } catch (err) { message = String(err.message) }
      put('a', 'no factory')
      console.log(JSON.stringify({ message, e: plain(native.ucGet('a', [])) }))
    `)
    expect(out.message).toMatch(/function/i)
    expect(out.e).toEqual(expected('no factory'))
  })
})
