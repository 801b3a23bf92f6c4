// `strata-cache doctor`: the configuration as the server resolves it, Redis checked end to end;
// exit 0 when ready, 1 on a problem (a readiness probe); never past its deadline, never a
// credential in its output. Driven as a user runs it: the CLI in a child process.
import { execFile } from 'node:child_process'
import { mkdtempSync } from 'node:fs'
import os from 'node:os'
import path from 'node:path'
import { fileURLToPath } from 'node:url'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { startFaultProxy } from './helpers/fault-proxy.mjs'
import { freePort, startRedis } from './helpers/redis-server.mjs'

const cli = fileURLToPath(new URL('../bin/strata-cache.js', import.meta.url))
const SECRET = 's3cr3t-Pa55'

/** Runs `strata-cache doctor --json …` with `env`; `{ code, report, text, ms }`. */
function doctor(env, args = []) {
  const started = Date.now()
  const childEnv = { ...process.env, STRATA_LOG: 'silent', ...env }
  for (const k of ['REDIS_URL', 'STRATA_REDIS_URL', 'STRATA_NAMESPACE', 'NEXT_DEPLOYMENT_ID']) if (!(k in env)) delete childEnv[k]
  return new Promise((resolve) => {
    execFile(process.execPath, [cli, 'doctor', '--json', ...args], { env: childEnv, cwd: mkdtempSync(path.join(os.tmpdir(), 'doctor-')), timeout: 30_000 }, (err, stdout, stderr) => {
      const text = stdout + stderr
      let report = null
      try { report = JSON.parse(stdout) } catch { /* printed below */ }
      resolve({ code: err ? err.code : 0, report, text, ms: Date.now() - started })
    })
  })
}

const check = (report, name) => report.checks.find((c) => c.name === name)

let redis
let locked
let evicting
beforeAll(async () => {
  ;[redis, locked, evicting] = await Promise.all([
    startRedis(),
    startRedis({ args: ['--requirepass', SECRET] }),
    startRedis({ args: ['--maxmemory', '64mb', '--maxmemory-policy', 'allkeys-lru'] }),
  ])
})
afterAll(async () => {
  await Promise.all([redis?.stop(), locked?.stop(), evicting?.stop()])
})

describe('strata-cache doctor', () => {
  it('a healthy Redis: exit 0, every check ok, the figures the cache uses', async () => {
    const r = await doctor({ REDIS_URL: redis.url, STRATA_NAMESPACE: 'doc-ok' })
    expect(r.code, r.text).toBe(0)
    expect(r.report.verdict).toBe('ok')
    expect(check(r.report, 'namespace').detail).toContain('"doc-ok" (from STRATA_NAMESPACE')
    expect(check(r.report, 'redis').detail).toContain('a single server')
    expect(check(r.report, 'latency').detail).toMatch(/round trip [\d.]+ ms median/)
    expect(check(r.report, 'clock').detail).toMatch(/Redis clock − local clock ≈ -?[\d.]+ ms/)
    expect(check(r.report, 'scripts').status).toBe('ok')
    expect(check(r.report, 'version').detail).toMatch(/^Redis \d+\.\d+/)
    expect(check(r.report, 'eviction').status).toBe('ok')
  })

  it('never prints a credential, and a wrong password is a failure', async () => {
    const good = await doctor({ REDIS_URL: `redis://:${SECRET}@127.0.0.1:${locked.port}`, STRATA_NAMESPACE: 'doc-auth' })
    expect(good.code, good.text).toBe(0)
    const bad = await doctor({ REDIS_URL: `redis://:wrong-${SECRET}@127.0.0.1:${locked.port}`, STRATA_NAMESPACE: 'doc-auth' })
    expect(bad.code).toBe(1)
    expect(check(bad.report, 'connect').status).toBe('fail')
    for (const r of [good, bad]) expect(r.text).not.toContain(SECRET)
  })

  it('an evicting policy that would drop the tag state is a failure that says what to use', async () => {
    const r = await doctor({ REDIS_URL: evicting.url, STRATA_NAMESPACE: 'doc-evict' })
    expect(r.code).toBe(1)
    const c = check(r.report, 'eviction')
    expect(c.status).toBe('fail')
    expect(c.detail).toMatch(/allkeys-lru.*volatile-lru/s)
  })

  it('an unreachable Redis fails within its deadline', async () => {
    const port = await freePort()
    const r = await doctor({ REDIS_URL: `redis://127.0.0.1:${port}`, STRATA_NAMESPACE: 'doc-down', STRATA_REDIS_TIMEOUT_MS: '200' })
    expect(r.code).toBe(1)
    expect(check(r.report, 'connect').status).toBe('fail')
    expect(r.ms).toBeLessThan(8_000)
  })

  it('a silent Redis (answers nothing) fails within --timeout, no hang', async () => {
    const proxy = await startFaultProxy(redis)
    try {
      proxy.setMode('silent')
      const r = await doctor({ REDIS_URL: proxy.url, STRATA_NAMESPACE: 'doc-silent', STRATA_REDIS_TIMEOUT_MS: '200' }, ['--timeout', '3000'])
      expect(r.code).toBe(1)
      expect(r.report.verdict).toBe('fail')
      expect(r.ms).toBeLessThan(6_000)
    } finally {
      await proxy.close()
    }
  })

  it('no Redis: ready with a warning; no namespace with Redis: a failure naming what to set', async () => {
    const none = await doctor({})
    expect(none.code, none.text).toBe(0)
    expect(none.report.verdict).toBe('warn')
    expect(check(none.report, 'redis').detail).toContain('no Redis configured')
    const noNs = await doctor({ REDIS_URL: redis.url })
    expect(noNs.code).toBe(1)
    expect(check(noNs.report, 'namespace').detail).toContain('STRATA_NAMESPACE')
  })

  it('a bad command line is exit 2 with the usage', async () => {
    const r = await new Promise((resolve) => execFile(process.execPath, [cli, 'frobnicate'], (err, stdout, stderr) => resolve({ code: err?.code, text: stderr })))
    expect(r.code).toBe(2)
    expect(r.text).toContain('usage: strata-cache doctor')
  })

  it('doctor(options) from code checks its options as the handlers do, and still never rejects', async () => {
    const script = `require(${JSON.stringify(path.join(path.dirname(cli), '..', 'index.js'))})
      .doctor({ l1MaxBytes: 'big' }).then((r) => console.log(JSON.stringify(r)), (e) => console.log(JSON.stringify({ rejected: String(e) })))`
    const out = await new Promise((resolve) => execFile(process.execPath, ['-e', script], { env: { ...process.env, STRATA_LOG: 'silent' } }, (err, stdout) => resolve(stdout)))
    const r = JSON.parse(out)
    expect(r.verdict).toBe('fail')
    expect(r.checks).toEqual([{ name: 'config', status: 'fail', detail: expect.stringContaining('l1MaxBytes') }])
  })
})
