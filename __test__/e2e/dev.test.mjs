// `next dev` with strata-cache configured (Next wraps custom 'use cache' handlers in its dev
// tiering, and sends only the fetch cache through the incremental handler in dev): pages render,
// and our handlers are the ones Next calls. (What `next dev` caches is Next's decision: it
// re-renders 'use cache' functions far more often than `next start`, with its built-in handler
// as with ours; these tests do not assert on cache hits.)
import { spawn } from 'node:child_process'
import path from 'node:path'
import { setTimeout as delay } from 'node:timers/promises'
import { afterAll, beforeAll, describe, expect, test } from 'vitest'
import { startOrigin } from '../../examples/isr/origin.mjs'
import { childEnv, freePort, parseValue, repoRoot } from './next-app.mjs'

const nextBin = path.join(repoRoot, 'node_modules/next/dist/bin/next')

/** `next dev` of `dir` on a free port; resolves once `probe` answers 200. */
async function startDev(dir, probe, env = {}) {
  const port = await freePort()
  const child = spawn(process.execPath, [nextBin, 'dev', '-p', String(port), '-H', '127.0.0.1'], {
    cwd: dir,
    env: childEnv({ STRATA_LOG: 'warn', ...env }),
    stdio: ['ignore', 'pipe', 'pipe'],
    detached: true,
  })
  let output = ''
  child.stdout.setEncoding('utf8').on('data', (d) => { output += d })
  child.stderr.setEncoding('utf8').on('data', (d) => { output += d })
  const url = `http://127.0.0.1:${port}`
  const get = async (p) => {
    const res = await fetch(url + p)
    return { status: res.status, text: await res.text() }
  }
  const deadline = Date.now() + 90_000
  for (;;) {
    if (child.exitCode !== null) throw new Error(`next dev exited (${child.exitCode}):\n${output}`)
    try {
      if ((await get(probe)).status === 200) break
    } catch { /* not listening yet */ }
    if (Date.now() > deadline) throw new Error(`next dev not ready after 90 s:\n${output}`)
    await delay(200)
  }
  return {
    get,
    output: () => output,
    stop() {
      try { process.kill(-child.pid, 'SIGKILL') } catch { /* gone */ }
    },
  }
}

describe('next dev, examples/demo (cacheComponents + cacheHandler)', () => {
  let dev
  beforeAll(async () => { dev = await startDev(path.join(repoRoot, 'examples/demo'), '/api/strata-stats') }, 120_000)
  afterAll(() => dev?.stop())

  test("pages render through strata-cache's 'use cache' handler", async () => {
    const page = await dev.get('/')
    expect(page.status).toBe(200)
    expect(parseValue(page.text, 'products')).toMatch(/^\d+-\w+-home$/)
    const stats = JSON.parse((await dev.get('/api/strata-stats')).text)
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
    dev = await startDev(path.join(repoRoot, 'examples/isr'), '/api/runs', { ISR_ORIGIN_URL: origin.url })
  }, 120_000)
  afterAll(async () => {
    dev?.stop()
    await origin?.stop()
  })

  test('a tagged fetch is cached by strata-cache: the origin is asked once for two renders', async () => {
    const first = await dev.get('/api/products')
    const second = await dev.get('/api/products')
    expect([first.status, second.status]).toEqual([200, 200])
    expect(JSON.parse(second.text).fetched.hits).toBe(JSON.parse(first.text).fetched.hits)
    const stats = JSON.parse((await dev.get('/api/strata')).text)
    expect(stats.incrementalCalls.get).toBeGreaterThan(0)
    expect(stats.incrementalCalls.set).toBeGreaterThan(0)
  })
})
