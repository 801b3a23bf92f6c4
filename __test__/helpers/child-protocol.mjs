// The line protocol between a test and a library instance in a child process (one JSON object a
// line): the child side (`serve(ops)`) and the parent side (`startChild(script, env)`).
//   request:  { id, op, args }     response: { id, ok: true, result } | { id, ok: false, error: { code, message } }
import { spawn } from 'node:child_process'
import readline from 'node:readline'

/** Child side: answers requests with `ops[op](args)` until stdin closes, then exits. */
/** A value as Next hands it to a handler's `set`: a stream of one chunk. */
export const streamOf = (buf) => new ReadableStream({ start(c) { c.enqueue(buf); c.close() } })

/** Everything a stream (a handler's `get` value) carries, as one Buffer. */
export async function readAll(stream) {
  const parts = []
  for await (const c of stream) parts.push(Buffer.from(c))
  return Buffer.concat(parts)
}

export function serve(ops) {
  const rl = readline.createInterface({ input: process.stdin })
  rl.on('line', async (line) => {
    const { id, op, args } = JSON.parse(line)
    try {
      const result = await ops[op](args ?? {})
      process.stdout.write(JSON.stringify({ id, ok: true, result: result ?? null }) + '\n')
    } catch (err) {
      process.stdout.write(JSON.stringify({ id, ok: false, error: { code: err && err.code, message: String(err && err.message) } }) + '\n')
    }
  })
  rl.on('close', () => process.exit(0))
  process.stdout.write(JSON.stringify({ ready: true }) + '\n')
}

const live = new Set()
process.on('exit', () => { for (const p of live) p.kill('SIGKILL') })

/**
 * Parent side: starts `script` (a file calling `serve`) with `env` on top of `baseEnv`, and
 * resolves once it is ready with `{ pid, call(op, args), stop() }`. Calls reject when the
 * child exits; `stop()` closes stdin and waits (SIGKILL after 5 s). The child's own output
 * (the library's log lines) goes to this process's stderr, or, with `onOutput`, to
 * `onOutput(line, 'stdout' | 'stderr')`.
 */
export async function startChild(script, env = {}, { baseEnv = process.env, cwd, onOutput } = {}) {
  const proc = spawn(process.execPath, [script], {
    cwd,
    env: { ...baseEnv, STRATA_LOG: 'warn', ...env },
    stdio: ['pipe', 'pipe', onOutput ? 'pipe' : 'inherit'],
  })
  if (onOutput) readline.createInterface({ input: proc.stderr }).on('line', (line) => onOutput(line, 'stderr'))
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
    if (!line.startsWith('{')) return onOutput ? onOutput(line, 'stdout') : process.stderr.write(line + '\n') // the library's own log lines
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
    proc,
    call(op, args) {
      const id = nextId++
      return new Promise((resolve, reject) => {
        waiting.set(id, { resolve, reject })
        proc.stdin.write(JSON.stringify({ id, op, args }) + '\n')
      })
    },
    async stop() {
      if (proc.exitCode !== null || proc.signalCode !== null) return
      const exited = new Promise((r) => proc.once('exit', r))
      proc.stdin.end()
      const timer = setTimeout(() => proc.kill('SIGKILL'), 5000)
      await exited
      clearTimeout(timer)
    },
  }
}
