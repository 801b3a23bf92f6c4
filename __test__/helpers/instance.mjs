// Starts a strata-cache instance in a separate Node process (see instance-child.mjs) and calls
// it like a handler: `const a = await startInstance({ env }); await a.call('get', { key })`.
import { spawn } from 'node:child_process'
import readline from 'node:readline'
import { fileURLToPath } from 'node:url'

const child = fileURLToPath(new URL('./instance-child.mjs', import.meta.url))
const live = new Set()
process.on('exit', () => { for (const p of live) p.kill('SIGKILL') })

export async function startInstance({ env = {}, cwd } = {}) {
  const proc = spawn(process.execPath, [child], {
    cwd,
    env: { ...process.env, STRATA_LOG: 'warn', ...env },
    stdio: ['pipe', 'pipe', 'inherit'],
  })
  live.add(proc)
  const lines = readline.createInterface({ input: proc.stdout })
  const waiting = new Map()
  let nextId = 1
  let onReady
  const ready = new Promise((resolve, reject) => {
    onReady = resolve
    proc.once('exit', (code) => reject(new Error(`instance exited early (${code})`)))
  })
  lines.on('line', (line) => {
    if (!line.startsWith('{')) return process.stderr.write(line + '\n') // the library's own log lines
    const msg = JSON.parse(line)
    if (msg.ready) return onReady()
    const w = waiting.get(msg.id)
    if (!w) return
    waiting.delete(msg.id)
    if (msg.ok) w.resolve(msg.result)
    else w.reject(Object.assign(new Error(msg.error.message), { code: msg.error.code }))
  })
  proc.on('exit', () => {
    live.delete(proc)
    for (const w of waiting.values()) w.reject(new Error('instance exited'))
    waiting.clear()
  })
  await ready
  return {
    pid: proc.pid,
    call(op, args) {
      const id = nextId++
      return new Promise((resolve, reject) => {
        waiting.set(id, { resolve, reject })
        proc.stdin.write(JSON.stringify({ id, op, args }) + '\n')
      })
    },
    async stop() {
      if (proc.exitCode !== null) return
      const exited = new Promise((r) => proc.once('exit', r))
      proc.stdin.end()
      const timer = setTimeout(() => proc.kill('SIGKILL'), 5000)
      await exited
      clearTimeout(timer)
    },
  }
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
