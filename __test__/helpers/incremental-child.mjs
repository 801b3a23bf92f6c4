// One process running the incremental cache handler (`strata-cache/incremental`, Next's
// singular `cacheHandler`) next to a 'use cache' handler, driven over stdin/stdout (one JSON
// object a line), so tests can pick each process's configuration (embedded L1, Redis,
// namespace) from its environment: the store is per process and the first configuration wins.
//   request:  { id, op, args }     response: { id, ok: true, result } | { id, ok: false, error: { code, message } }
//
// Values cross the JSON boundary through `toWire` / `fromWire` (exported for the test side):
// Buffers, other Uint8Arrays, Maps and present-but-`undefined` properties keep their identity.
// Like Next, every op that touches the incremental cache constructs a new handler object (Next
// makes one per request); `handlerCtx` is the constructor's context (`serverDistDir`, `dev`).
import { createRequire } from 'node:module'
import { fileURLToPath } from 'node:url'
import { readAll, serve, streamOf } from './child-protocol.mjs'

// ---------------------------------------------------------------------------------------------
// The wire format (plain JSON plus `{ $t: … }` markers)

/** A JSON-able copy of `v` keeping Buffers, Uint8Arrays, Maps and `undefined` properties. */
export function toWire(v) {
  if (v === undefined) return { $t: 'undef' }
  if (v === null || typeof v !== 'object') return v
  if (Buffer.isBuffer(v)) return { $t: 'buf', b64: v.toString('base64') }
  if (v instanceof Uint8Array) return { $t: 'u8', b64: Buffer.from(v.buffer, v.byteOffset, v.byteLength).toString('base64') }
  if (v instanceof Map) return { $t: 'map', entries: [...v].map(([k, x]) => [k, toWire(x)]) }
  if (Array.isArray(v)) return v.map(toWire)
  const out = {}
  for (const k of Object.keys(v)) out[k] = toWire(v[k])
  return { $t: 'obj', props: out }
}

/** The inverse of `toWire`. */
export function fromWire(w) {
  if (w === null || typeof w !== 'object') return w
  if (Array.isArray(w)) return w.map(fromWire)
  switch (w.$t) {
    case 'undef': return undefined
    case 'buf': return Buffer.from(w.b64, 'base64')
    case 'u8': return new Uint8Array(Buffer.from(w.b64, 'base64'))
    case 'map': return new Map(w.entries.map(([k, x]) => [k, fromWire(x)]))
    case 'obj': {
      const out = {}
      for (const k of Object.keys(w.props)) out[k] = fromWire(w.props[k])
      return out
    }
    default: throw new Error(`not a wire value: ${JSON.stringify(w).slice(0, 100)}`)
  }
}

// ---------------------------------------------------------------------------------------------
// The process

async function main() {
  const require = createRequire(import.meta.url)
  const Handler = require('strata-cache/incremental')
  const { createUseCacheHandler, stats, config } = require('strata-cache')
  const useCache = createUseCacheHandler()
  const now = () => performance.timeOrigin + performance.now()
  const handlerCtxOf = (handlerCtx) => fromWire(handlerCtx) ?? {}


  const ops = {
    // `set` on a new handler object; { before, after }: this process's clock around the call.
    async set({ key, data, ctx, handlerCtx }) {
      const h = new Handler(handlerCtxOf(handlerCtx))
      const before = now()
      await h.set(fromWire(key), fromWire(data), fromWire(ctx))
      return { before, after: now() }
    },
    // `get` on a new handler object: { result (wire), now } (`now` taken after the call).
    async get({ key, ctx, handlerCtx }) {
      const h = new Handler(handlerCtxOf(handlerCtx))
      const result = await h.get(fromWire(key), fromWire(ctx))
      return { result: toWire(result), now: now() }
    },
    // `get` that reports whether it threw (the handler must never throw from `get`).
    async getNoThrow({ key, ctx, handlerCtx }) {
      try {
        const h = new Handler(handlerCtxOf(handlerCtx))
        return { threw: false, result: toWire(await h.get(fromWire(key), fromWire(ctx))) }
      } catch (err) {
        return { threw: true, message: String(err && err.message) }
      }
    },
    async revalidateTag({ tags, durations }) {
      const h = new Handler({})
      await h.revalidateTag(fromWire(tags), fromWire(durations))
    },
    // `n` times: a set of an entry tagged `<prefix>-<i>`, at once `revalidateTag` of that tag,
    // then a get; { survivors }: how many entries were still served.
    async setThenInvalidate({ prefix, n }) {
      let survivors = 0
      for (let i = 0; i < n; i++) {
        const tag = `${prefix}-${i}`
        const value = { kind: 'APP_ROUTE', body: Buffer.from(tag), status: 200, headers: { 'x-next-cache-tags': tag } }
        await new Handler({}).set(tag, value, { cacheControl: { revalidate: 60 } })
        await new Handler({}).revalidateTag(tag)
        if ((await new Handler({}).get(tag, { kind: 'APP_ROUTE', isFallback: false })) !== null) survivors++
      }
      return { survivors }
    },
    // Constructs `n` handler objects, then sets through the first and reads through every one.
    async constructMany({ n, key, data, ctx, getCtx }) {
      const configBefore = config()
      const handlers = Array.from({ length: n }, () => new Handler({}))
      const configAfterConstruct = config()
      await handlers[0].set(key, fromWire(data), fromWire(ctx))
      const hits = []
      for (const h of handlers) hits.push((await h.get(key, fromWire(getCtx))) !== null)
      return { configBefore, configAfterConstruct, configAfter: config(), hits }
    },
    // The 'use cache' handler of the same process.
    async ucSet({ key, valueBase64, tags = [] }) {
      await useCache.set(key, Promise.resolve({
        value: streamOf(new Uint8Array(Buffer.from(valueBase64, 'base64'))),
        tags,
        stale: 300,
        timestamp: now(),
        expire: 3600,
        revalidate: 900,
      }))
    },
    async ucGet({ key, softTags = [] }) {
      const e = await useCache.get(key, softTags)
      if (!e) return null
      return { valueBase64: (await readAll(e.value)).toString('base64'), tags: e.tags, revalidate: e.revalidate }
    },
    async ucUpdateTags({ tags, durations }) { await useCache.updateTags(tags, durations) },
    // What Next does on revalidateTag with both handlers configured: every handler in one tick.
    async bothInvalidate({ tags, durations }) {
      await Promise.all([useCache.updateTags(tags, durations), new Handler({}).revalidateTag(tags, durations)])
    },
    async ucRefreshTags() { await useCache.refreshTags() },
    async stats() { return stats() },
    async config() { return config() },
    async now() { return now() },
  }

  serve(ops)
}

if (process.argv[1] === fileURLToPath(import.meta.url)) main()
