// The cache compares Next's entry timestamps (performance.timeOrigin + performance.now()) with
// its own tag stamps: both must come from Next's clock, which drifts from the wall clock. Here a
// child process's performance.now() runs 10 s ahead of the wall clock (a drift exaggerated to be
// unmistakable), as after a long uptime with NTP slewing.
import { spawn } from 'node:child_process'
import { fileURLToPath } from 'node:url'
import { describe, expect, it } from 'vitest'

const INDEX = fileURLToPath(new URL('../index.js', import.meta.url))

function runChild(script) {
  return new Promise((resolve, reject) => {
    const child = spawn(process.execPath, ['-e', script], { env: { ...process.env, STRATA_LOG: 'silent', REDIS_URL: '', STRATA_REDIS_URL: '' }, stdio: ['ignore', 'pipe', 'inherit'] })
    let out = ''
    child.stdout.on('data', (d) => { out += d })
    child.once('exit', (code) => (code === 0 ? resolve(JSON.parse(out)) : reject(new Error(`child exited ${code}`))))
  })
}

describe("the cache's clock is Next's clock", () => {
  it('an entry written just before revalidateTag is not served afterwards, whatever the wall clock says', async () => {
    const r = await runChild(`
      const realNow = performance.now.bind(performance)
      performance.now = () => realNow() + 10_000
      const nextNow = () => performance.timeOrigin + performance.now()
      const { createUseCacheHandler } = require(${JSON.stringify(INDEX)})
      const h = createUseCacheHandler()
      const entry = () => ({ value: new ReadableStream({ start(c) { c.enqueue(new Uint8Array([1])); c.close() } }), tags: ['t'], stale: 300, timestamp: nextNow(), expire: 3600, revalidate: 900 })
      ;(async () => {
        await h.set('k', Promise.resolve(entry()))
        const before = nextNow()
        await h.updateTags(['t'])
        const after = nextNow()
        const exp = await h.getExpiration(['t'])
        const hit = await h.get('k', [])
        process.stdout.write(JSON.stringify({ before, after, exp, served: hit !== undefined }))
      })()
    `)
    expect(r.served).toBe(false)
    expect(r.exp).toBeGreaterThanOrEqual(r.before)
    expect(r.exp).toBeLessThanOrEqual(r.after)
  })
})
