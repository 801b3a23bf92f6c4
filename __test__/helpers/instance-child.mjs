// A strata-cache instance in its own Node process, driven over stdin/stdout (one JSON object a
// line), so tests can run several instances the way several pods would.
//   request:  { id, op, args }     response: { id, ok: true, result } | { id, ok: false, error: { code, message } }
import { createRequire } from 'node:module'
import readline from 'node:readline'

const require = createRequire(import.meta.url)
const { createUseCacheHandler, stats, config, flush } = require('strata-cache')
const handler = createUseCacheHandler()
const skew = Number(process.env.STRATA_TEST_CLOCK_SKEW_MS || 0)
const now = () => performance.timeOrigin + performance.now() + skew

function streamOf(buf) {
  return new ReadableStream({ start(c) { c.enqueue(buf); c.close() } })
}

async function readAll(stream) {
  const parts = []
  for await (const c of stream) parts.push(Buffer.from(c))
  return Buffer.concat(parts)
}

const ops = {
  async set({ key, value, valueBase64, tags = [], stale = 300, timestamp, expire = 3600, revalidate = 900 }) {
    const buf = valueBase64 !== undefined ? Buffer.from(valueBase64, 'base64') : Buffer.from(value ?? '')
    const ts = timestamp ?? now()
    await handler.set(key, Promise.resolve({ value: streamOf(new Uint8Array(buf)), tags, stale, timestamp: ts, expire, revalidate }))
    return { timestamp: ts }
  },
  async get({ key, softTags = [] }) {
    const e = await handler.get(key, softTags)
    if (!e) return null
    const bytes = await readAll(e.value)
    return { value: bytes.toString('utf8'), size: bytes.length, tags: e.tags, stale: e.stale, timestamp: e.timestamp, expire: e.expire, revalidate: e.revalidate }
  },
  async updateTags({ tags, durations }) { await handler.updateTags(tags, durations) },
  async refreshTags() { await handler.refreshTags() },
  async getExpiration({ tags }) { return handler.getExpiration(tags) },
  async now() { return now() },
  async flush({ timeoutMs }) { return flush({ timeoutMs }) },
  async stats() { return stats() },
  async config() { return config() },
}

const rl = readline.createInterface({ input: process.stdin })
rl.on('line', async (line) => {
  const { id, op, args } = JSON.parse(line)
  try {
    const result = await ops[op](args ?? {})
    process.stdout.write(JSON.stringify({ id, ok: true, result: result ?? null }) + '\n')
  } catch (err) {
    process.stdout.write(JSON.stringify({ id, ok: false, error: { code: err.code, message: err.message } }) + '\n')
  }
})
rl.on('close', () => process.exit(0))
process.stdout.write(JSON.stringify({ ready: true }) + '\n')
