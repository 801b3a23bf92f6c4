// Starts a strata-cache instance in a separate Node process (see instance-child.mjs) and calls
// it like a handler: `const a = await startInstance({ env }); await a.call('get', { key })`.
import { fileURLToPath } from 'node:url'
import { startChild } from './child-protocol.mjs'

const child = fileURLToPath(new URL('./instance-child.mjs', import.meta.url))

export async function startInstance({ env = {}, cwd } = {}) {
  return startChild(child, env, { cwd })
}

/**
 * Instances on one Redis for a test file, all stopped after each test:
 *   const pool = instancePool('f'); afterEach(pool.stopAll)
 *   const a = await pool.instance(redis, { STRATA_NAMESPACE: pool.ns() })
 * Instances get a 200 ms Redis deadline unless `env` says otherwise.
 */
export function instancePool(prefix) {
  const running = []
  let n = 0
  return {
    ns: () => `${prefix}${process.pid}-${++n}`,
    async instance(redis, env = {}) {
      const i = await startInstance({ env: { REDIS_URL: redis.url, STRATA_REDIS_TIMEOUT_MS: '200', ...env } })
      running.push(i)
      return i
    },
    stopAll: async () => { await Promise.all(running.splice(0).map((i) => i.stop())) },
  }
}
