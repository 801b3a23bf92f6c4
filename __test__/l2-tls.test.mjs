// Redis over TLS (rediss://): a real redis-server with a TLS port, certificates from
// __test__/fixtures/tls (a throwaway CA). Instances in separate Node processes.
import { fileURLToPath } from 'node:url'
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest'
import { freePort, startRedis } from './helpers/redis-server.mjs'
import { startInstance } from './helpers/instance.mjs'

const tls = (f) => fileURLToPath(new URL(`./fixtures/tls/${f}`, import.meta.url))
const running = []
let n = 0
const ns = () => `tls${process.pid}-${++n}`

afterEach(async () => {
  await Promise.all(running.splice(0).map((i) => i.stop()))
})

describe('rediss://', () => {
  let redis
  let url
  beforeAll(async () => {
    const tlsPort = await freePort()
    redis = await startRedis({
      args: [
        '--tls-port', String(tlsPort),
        '--tls-cert-file', tls('server.crt'),
        '--tls-key-file', tls('server.key'),
        '--tls-ca-cert-file', tls('ca.crt'),
        '--tls-auth-clients', 'no',
      ],
    })
    url = `rediss://127.0.0.1:${tlsPort}`
  })
  afterAll(async () => { await redis?.stop() })

  async function instance(env) {
    const i = await startInstance({ env: { REDIS_URL: url, STRATA_REDIS_TIMEOUT_MS: '500', ...env } })
    running.push(i)
    return i
  }

  it('shares entries over TLS when the server certificate is trusted (redisCaFile)', async () => {
    const name = ns()
    const writer = await instance({ STRATA_NAMESPACE: name, STRATA_REDIS_CA_FILE: tls('ca.crt') })
    const reader = await instance({ STRATA_NAMESPACE: name, STRATA_REDIS_CA_FILE: tls('ca.crt'), STRATA_L1_MAX_BYTES: '1' })
    const items = [{ key: 'a', size: 2000, seed: 1 }, { key: 'b', size: 200_000, seed: 2, repeat: 50 }]
    await writer.call('setMany', { items, tags: ['t'] })
    expect(await reader.call('getMany', { items })).toEqual(items.map((x) => ({ size: x.size, exact: true })))
    expect((await reader.call('stats')).l2.hits).toBe(2)
    // The data went through Redis (seen on its plain port too) ...
    expect((await redis.cli('--scan', '--pattern', `sc:${name}:e:*`)).trim().split('\n')).toHaveLength(2)
    // ... and so do invalidations.
    await writer.call('updateTags', { tags: ['t'] })
    await reader.call('refreshTags')
    expect(await reader.call('getMany', { items })).toEqual([null, null])
    const s = (await reader.call('stats')).l2
    expect(s.errors).toBe(0)
    // TLS reads stay on the runtime (the event-loop path speaks plain TCP only).
    expect(s.directConnects).toBe(0)
    expect((await reader.call('config')).redis).toBe(url)
  })

  it('an untrusted server certificate: misses and L1-only writes, never a crash', async () => {
    const name = ns()
    // No CA file: the built-in web PKI roots do not know the test CA.
    const a = await instance({ STRATA_NAMESPACE: name, STRATA_LOG: 'silent' })
    await a.call('set', { key: 'k', value: 'v' })
    expect((await a.call('get', { key: 'k' })).value).toBe('v') // from L1
    expect(await a.call('get', { key: 'absent' })).toBeNull()
    const s = (await a.call('stats')).l2
    expect(s.writeErrors + s.errors).toBeGreaterThanOrEqual(2)
    expect(s.writes).toBe(0)
    expect((await redis.cli('--scan', '--pattern', `sc:${name}:e:*`)).trim()).toBe('')
  })

  it('an unreadable redisCaFile is a configuration error', async () => {
    const a = await instance({ STRATA_NAMESPACE: ns(), STRATA_REDIS_CA_FILE: '/nonexistent/ca.pem', STRATA_LOG: 'silent' })
    const err = await a.call('set', { key: 'k', value: 'v' }).then(() => null, (e) => e)
    expect(err?.code).toBe('STRATA_CONFIG')
    expect(err.message).toContain('redisCaFile')
    expect(err.message).toContain('/nonexistent/ca.pem')
  })
})
