// Corrupted values written straight into a real redis-server under entry keys: whatever is
// found there, a read from a fresh instance (a new Node process, nothing in its L1) keeps the
// process alive, settles within its deadline, and answers a miss (null) or exactly the bytes
// that were stored under that key, never another key's bytes.
//
// Values come from a writer instance (so they are real envelopes), are found with KEYS and
// decoded here (core/src/envelope.rs, version 1), then replaced by: truncations at many offsets,
// single bit flips, other keys' envelopes, values of the wrong Redis type, and structure-aware
// mutations **with the CRC-32 recomputed** (so they get past the checksum and reach the field
// handling): the f64 fields set to 1e300, -1e300, ±Infinity, -0, NaN; length prefixes and the
// tag count broken; flags, version and kind changed. Each mutant sits under its own key, so one
// reader process reads every mutant first-hand (a process that dies or hangs is recorded
// against the key it was reading, and a new reader takes over). Both read paths: the
// event-loop one (default) and the runtime one (`STRATA_L2_DIRECT_READS=0`).
import { spawn } from 'node:child_process'
import readline from 'node:readline'
import { fileURLToPath } from 'node:url'
import zlib from 'node:zlib'
import { Redis } from 'ioredis'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { startRedis } from './helpers/redis-server.mjs'

const CHILD = fileURLToPath(new URL('./helpers/instance-child.mjs', import.meta.url))
/** Redis deadline of the readers: generous (a loaded machine), and far below SETTLE_MS. */
const DEADLINE_MS = 1000
/** A get that has not answered after this long never will (the deadline is DEADLINE_MS). */
const SETTLE_MS = DEADLINE_MS + 1500

// ---- the envelope, as core/src/envelope.rs lays it out --------------------------------------
const FIELDS = { timestamp: 7, server_ts: 15, stale: 23, revalidate: 31, expire: 39 }
const FIXED_LEN = 47
const FLAG_LZ4 = 1

/** CRC-32 (IEEE), as crc32fast computes it: node:zlib's (Node ≥ 20.15), else a table. */
const crc32 = zlib.crc32 ?? (() => {
  const table = new Uint32Array(256)
  for (let n = 0; n < 256; n++) {
    let c = n
    for (let k = 0; k < 8; k++) c = c & 1 ? 0xedb88320 ^ (c >>> 1) : c >>> 1
    table[n] = c >>> 0
  }
  return (buf) => {
    let c = 0xffffffff
    for (const b of buf) c = table[(c ^ b) & 0xff] ^ (c >>> 8)
    return (c ^ 0xffffffff) >>> 0
  }
})()

/** Offsets of the fields of a well-formed envelope. */
function layout(buf) {
  let at = FIXED_LEN
  const keyLenAt = at
  const key = buf.toString('utf8', at + 4, at + 4 + buf.readUInt32LE(at))
  at += 4 + buf.readUInt32LE(at)
  const tagCountAt = at
  const tagCount = buf.readUInt32LE(at)
  at += 4
  const tagLenAts = []
  for (let i = 0; i < tagCount; i++) {
    tagLenAts.push(at)
    at += 4 + buf.readUInt32LE(at)
  }
  const extraLenAt = at
  at += 4 + buf.readUInt32LE(at)
  const storedLenAt = at
  const stored = buf.readUInt32LE(at)
  at += 4
  let originalLenAt = null
  if (buf[5] & FLAG_LZ4) {
    originalLenAt = at
    at += 4
  }
  const payloadAt = at
  at += stored
  if (at + 4 !== buf.length) throw new Error(`not an envelope: ends at ${at} + 4, length ${buf.length}`)
  return { key, keyLenAt, tagCountAt, tagCount, tagLenAts, extraLenAt, storedLenAt, stored, originalLenAt, payloadAt }
}

function reseal(buf) {
  buf.writeUInt32LE(crc32(buf.subarray(0, buf.length - 4)), buf.length - 4)
  return buf
}

/** A copy of `buf` changed by `edit(copy, layout)`, checksum recomputed. */
function sealed(buf, edit) {
  const b = Buffer.from(buf)
  edit(b, layout(buf))
  return reseal(b)
}

// ---- instances whose death (and how) is observable ------------------------------------------
const running = new Set()
process.on('exit', () => { for (const p of running) p.kill('SIGKILL') })

/** An instance process (see helpers/instance-child.mjs) that reports how it ended. */
async function launch(env) {
  const proc = spawn(process.execPath, [CHILD], {
    env: { ...process.env, STRATA_LOG: 'warn', ...env },
    stdio: ['pipe', 'pipe', 'pipe'],
  })
  running.add(proc)
  let stderr = ''
  proc.stderr.on('data', (d) => { stderr = (stderr + d).slice(-3000) })
  const exited = new Promise((resolve) => proc.once('exit', (code, signal) => {
    running.delete(proc)
    resolve({ code, signal })
  }))
  const waiting = new Map()
  let nextId = 1
  let onReady
  const ready = new Promise((resolve) => { onReady = resolve })
  readline.createInterface({ input: proc.stdout }).on('line', (line) => {
    if (!line.startsWith('{')) return
    const msg = JSON.parse(line)
    if (msg.ready) return onReady()
    const w = waiting.get(msg.id)
    waiting.delete(msg.id)
    w?.(msg.ok ? { ok: true, result: msg.result } : { ok: false, error: msg.error })
  })
  const died = exited.then((how) => ({ died: how }))
  await Promise.race([ready, died])
  const instance = {
    /** Resolves { ok, result } | { ok: false, error } | { died: { code, signal } } | { timeout: true }. */
    call(op, args, timeoutMs = SETTLE_MS) {
      const id = nextId++
      const answer = new Promise((resolve) => {
        waiting.set(id, resolve)
        proc.stdin.write(JSON.stringify({ id, op, args }) + '\n', () => {})
      })
      let timer
      const late = new Promise((resolve) => { timer = setTimeout(() => resolve({ timeout: true }), timeoutMs) })
      return Promise.race([answer, died, late]).finally(() => clearTimeout(timer))
    },
    stderr: () => stderr,
    alive: () => proc.exitCode === null && proc.signalCode === null,
    async stop() {
      if (!instance.alive()) return
      proc.stdin.end()
      const timer = setTimeout(() => proc.kill('SIGKILL'), 3000)
      await exited
      clearTimeout(timer)
    },
    kill() { proc.kill('SIGKILL') },
  }
  return instance
}

/** The last lines of an instance's stderr that say why it died (the panic, the abort). */
function why(stderr) {
  return stderr.split('\n').filter((l) => /panick|panic|abort|cannot|fatal|error/i.test(l)).slice(-4).join(' | ')
}

// ---- the values -----------------------------------------------------------------------------
// Generated bytes (helpers/instance-child.mjs `pattern`): byte i = (seed + i % repeat) % 251.
const RAW = { size: 300 } // stored raw
const LZ = { size: 16_384, repeat: 64 } // compressible, above the 4 KiB default: stored as LZ4

describe('corrupted values in Redis are a miss (or the exact value), never a crash or a hang', () => {
  let redis
  let client
  const ns = `corrupt${process.pid}`
  /** Every key read by the tests: { name, item, mustMiss, what }. */
  const cases = []
  /** Valid entries read first, to bring the event-loop connection up. */
  const warm = []
  let control

  beforeAll(async () => {
    redis = await startRedis()
    client = new Redis({ port: redis.port, host: '127.0.0.1', lazyConnect: true, maxRetriesPerRequest: 1 })
    await client.connect()

    // 1. Plan the mutants; each one gets its own key (and its own original value).
    const plan = [] // { name, base: RAW | LZ, mutate(orig: Buffer, others) -> Buffer | { type }, mustMiss }
    const add = (name, base, mutate, mustMiss = false) => plan.push({ name, base, mutate, mustMiss })
    const extremes = { '1e300': 1e300, '-1e300': -1e300, Infinity: Infinity, '-Infinity': -Infinity, '-0': -0, NaN: NaN }
    for (const [field, at] of Object.entries(FIELDS)) {
      for (const [label, v] of Object.entries(extremes)) {
        add(`raw ${field}=${label} (CRC recomputed)`, RAW, (o) => sealed(o, (b) => b.writeDoubleLE(v, at)))
      }
      for (const label of ['1e300', 'Infinity']) {
        add(`lz4 ${field}=${label} (CRC recomputed)`, LZ, (o) => sealed(o, (b) => b.writeDoubleLE(extremes[label], at)))
      }
    }
    const u32 = (get) => (o) => sealed(o, (b, l) => { const [at, v] = get(l, b); b.writeUInt32LE(v >>> 0, at) })
    for (const [base, tag] of [[RAW, 'raw'], [LZ, 'lz4']]) {
      add(`${tag} key length 0`, base, u32((l) => [l.keyLenAt, 0]))
      add(`${tag} key length - 1`, base, u32((l, b) => [l.keyLenAt, b.readUInt32LE(l.keyLenAt) - 1]))
      add(`${tag} key length + 1`, base, u32((l, b) => [l.keyLenAt, b.readUInt32LE(l.keyLenAt) + 1]))
      add(`${tag} key length 2^32-1`, base, u32((l) => [l.keyLenAt, 0xffffffff]))
      add(`${tag} tag count + 1`, base, u32((l) => [l.tagCountAt, l.tagCount + 1]))
      add(`${tag} tag count 2^32-1`, base, u32((l) => [l.tagCountAt, 0xffffffff]))
      add(`${tag} tag count 0`, base, u32((l) => [l.tagCountAt, 0]))
      add(`${tag} first tag length 2^32-1`, base, u32((l) => [l.tagLenAts[0], 0xffffffff]))
      add(`${tag} extra length 1`, base, u32((l) => [l.extraLenAt, 1]))
      add(`${tag} extra length 2^32-1`, base, u32((l) => [l.extraLenAt, 0xffffffff]))
      add(`${tag} stored length - 1`, base, u32((l) => [l.storedLenAt, l.stored - 1]))
      add(`${tag} stored length + 1`, base, u32((l) => [l.storedLenAt, l.stored + 1]))
      add(`${tag} stored length 2^32-1`, base, u32((l) => [l.storedLenAt, 0xffffffff]))
      add(`${tag} flags: reserved bit`, base, (o) => sealed(o, (b) => { b[5] |= 2 }))
      add(`${tag} flags: LZ4 bit flipped`, base, (o) => sealed(o, (b) => { b[5] ^= FLAG_LZ4 }))
      add(`${tag} version 2`, base, (o) => sealed(o, (b) => { b[4] = 2 }))
      add(`${tag} kind 1`, base, (o) => sealed(o, (b) => { b[6] = 1 }))
      add(`${tag} trailing byte`, base, (o) => reseal(Buffer.concat([o, Buffer.alloc(5)])))
    }
    add('lz4 original length + 1', LZ, u32((l, b) => [l.originalLenAt, b.readUInt32LE(l.originalLenAt) + 1]))
    add('lz4 original length - 1', LZ, u32((l, b) => [l.originalLenAt, b.readUInt32LE(l.originalLenAt) - 1]))
    add('lz4 original length 255 x stored', LZ, u32((l) => [l.originalLenAt, l.stored * 255]))
    add('lz4 original length 2^32-1', LZ, u32((l) => [l.originalLenAt, 0xffffffff]))
    add('lz4 block scrambled', LZ, (o) => sealed(o, (b, l) => {
      for (let i = l.payloadAt; i < b.length - 4; i += 7) b[i] = (b[i] * 31 + 7) & 0xff
    }))
    // Truncations (checksum as it falls), then a few re-sealed.
    const cuts = (l, len) => [0, 1, 3, 4, 5, 6, 7, 20, 46, 47, 50, l.keyLenAt + 5, l.tagCountAt, l.tagCountAt + 2,
      l.extraLenAt, l.storedLenAt + 2, l.payloadAt, l.payloadAt + 9, len - 5, len - 4, len - 3, len - 1]
    for (const [base, tag] of [[RAW, 'raw'], [LZ, 'lz4']]) {
      for (let i = 0; i < 22; i++) {
        add(`${tag} truncated (cut #${i})`, base, (o) => o.subarray(0, cuts(layout(o), o.length)[i]))
      }
      for (const i of [9, 14, 17, 18, 20]) {
        add(`${tag} truncated (cut #${i}) re-sealed`, base, (o) => {
          const cut = cuts(layout(o), o.length)[i]
          return cut >= 4 ? reseal(Buffer.from(o.subarray(0, cut))) : o.subarray(0, cut)
        })
      }
      // Single bit flips across every region: magic, version, flags, kind, numbers, key, tags,
      // lengths, payload, checksum.
      for (const at of [0, 3, 4, 5, 6, 7, 14, 44, 47, 52, 'tags', 'stored', 'payload', 'last']) {
        add(`${tag} bit flip at ${at}`, base, (o) => {
          const l = layout(o)
          const i = { tags: l.tagCountAt + 5, stored: l.storedLenAt + 1, payload: l.payloadAt + 3, last: o.length - 1 }[at] ?? at
          const b = Buffer.from(o)
          b[i] ^= 1 << (i % 8)
          return b
        })
      }
    }
    // Another key's envelope under this key: the envelope carries the full key, so a miss.
    add('raw: another key\'s raw envelope', RAW, (o, others) => others.raw, true)
    add('raw: another key\'s lz4 envelope', RAW, (o, others) => others.lz, true)
    add('lz4: another key\'s raw envelope', LZ, (o, others) => others.raw, true)
    add('lz4: another key\'s lz4 envelope', LZ, (o, others) => others.lz, true)
    // Wrong Redis types.
    for (const type of ['hash', 'list', 'set', 'zset']) add(`raw: a ${type} under the key`, RAW, () => ({ type }), true)
    add('raw: empty string', RAW, () => Buffer.alloc(0), true)
    add('raw: the bare CRLF', RAW, () => Buffer.from('\r\n'), true)

    // 2. Write the originals (and the warm-up, control and donor entries) through an instance.
    const items = plan.map((p, i) => ({ key: `m${i}`, seed: i % 251, ...p.base }))
    for (let i = 0; i < 12; i++) warm.push({ key: `warm${i}`, seed: 200 + i, ...RAW })
    control = { key: 'control', seed: 7, ...LZ }
    const donors = [{ key: 'donor-raw', seed: 11, ...RAW }, { key: 'donor-lz', seed: 12, ...LZ }]
    const writer = await launch({ REDIS_URL: redis.url, STRATA_NAMESPACE: ns, STRATA_REDIS_TIMEOUT_MS: '5000' })
    const w = await writer.call('setMany', { items: [...items, ...warm, control, ...donors], tags: ['post', 'p:1'] }, 30_000)
    expect(w.ok, JSON.stringify(w)).toBe(true)
    await writer.stop()

    // 3. Find each entry's Redis key: the envelope carries its Next key.
    const stored = new Map() // Next key -> { redisKey, value }
    for (const redisKey of await client.keys(`sc:${ns}:e:*`)) {
      const value = await client.getBuffer(redisKey)
      stored.set(layout(value).key, { redisKey, value })
    }
    expect(stored.size).toBe(items.length + warm.length + 1 + donors.length)
    for (const { value } of stored.values()) {
      // The layout and the checksum are understood here as the Rust side writes them.
      expect(value.subarray(0, 5).toString('latin1')).toBe('STRC\x01')
      expect(crc32(value.subarray(0, value.length - 4))).toBe(value.readUInt32LE(value.length - 4))
    }
    expect(stored.get('control').value[5] & FLAG_LZ4, 'the LZ items are stored compressed').toBe(FLAG_LZ4)
    expect(stored.get('donor-raw').value[5] & FLAG_LZ4).toBe(0)

    // 4. Replace each original by its mutant.
    const others = { raw: stored.get('donor-raw').value, lz: stored.get('donor-lz').value }
    for (const [i, p] of plan.entries()) {
      const { redisKey, value } = stored.get(items[i].key)
      const mutant = p.mutate(value, others)
      if (Buffer.isBuffer(mutant)) {
        expect(mutant.equals(value), `${p.name} changes the value`).toBe(false)
        await client.set(redisKey, mutant)
      } else {
        await client.del(redisKey)
        if (mutant.type === 'hash') await client.hset(redisKey, 'f', 'v')
        if (mutant.type === 'list') await client.rpush(redisKey, 'a', 'b')
        if (mutant.type === 'set') await client.sadd(redisKey, 'a')
        if (mutant.type === 'zset') await client.zadd(redisKey, 1, 'a')
      }
      cases.push({ name: p.name, item: items[i], mustMiss: p.mustMiss })
    }
  }, 60_000)

  afterAll(async () => {
    for (const p of running) p.kill('SIGKILL')
    await client?.quit().catch(() => {})
    await redis?.stop()
  })

  for (const [mode, env] of [
    ['event-loop reads', {}],
    ['runtime reads (STRATA_L2_DIRECT_READS=0)', { STRATA_L2_DIRECT_READS: '0' }],
  ]) {
    it(`${mode}: every mutant is a miss or the exact value; the process lives and every get settles`, async () => {
      const readerEnv = { REDIS_URL: redis.url, STRATA_NAMESPACE: ns, STRATA_REDIS_TIMEOUT_MS: String(DEADLINE_MS), ...env }
      const failures = []
      let reader = null
      let directBefore = 0
      const tally = { miss: 0, exact: 0, failed: 0, readers: 0, direct: 0 }
      const start = async () => {
        reader = await launch(readerEnv)
        tally.readers++
        // Bring the event-loop connection up with valid entries read first-hand (a new process
        // has none of them in its L1).
        for (const item of warm) {
          const r = await reader.call('getMany', { items: [item] })
          if (!r.ok) break
          const s = await reader.call('stats')
          if (s.ok && s.result.l2.directReads > 0) break
        }
      }
      /** Reads one mutant: a failure message, or null and what the get returned. */
      const outcome = async (c) => {
        if (!reader || !reader.alive()) await start()
        const before = await reader.call('stats')
        directBefore = before.ok ? before.result.l2.directReads : 0
        const r = await reader.call('getMany', { items: [c.item] })
        if (r.died) {
          const s = reader.stderr()
          reader = null
          return [`the process died (code ${r.died.code}, signal ${r.died.signal}): ${why(s)}`]
        }
        if (r.timeout) {
          reader.kill()
          reader = null
          return [`the get never settled (still pending after ${SETTLE_MS} ms)`]
        }
        if (!r.ok) return [`the get rejected (${r.error.code}: ${r.error.message})`]
        const got = r.result[0]
        if (got === null) return [null, got]
        if (c.mustMiss) return [`served ${got.size} B (exact: ${got.exact}) instead of a miss`]
        if (!got.exact || got.size !== c.item.size) return [`served ${got.size} B that are not the stored bytes of this key`]
        return [null, got]
      }
      for (const c of cases) {
        const [failure, got] = await outcome(c)
        if (failure) failures.push(`${c.name}: ${failure}`)
        tally[failure ? 'failed' : got === null ? 'miss' : 'exact']++
        if (reader?.alive()) {
          const s = await reader.call('stats')
          if (s.ok && s.result.l2.directReads > directBefore) tally.direct++
        }
      }
      // The last reader still serves a valid entry exactly (L2 works after all that).
      if (!reader || !reader.alive()) await start()
      const last = await reader.call('getMany', { items: [control] })
      expect(last.ok && last.result[0], `control read: ${JSON.stringify(last)}`).toEqual({ size: control.size, exact: true })
      const s = await reader.call('stats')
      await reader.stop()
      console.log(`${mode}: ${cases.length} mutants: ${tally.miss} misses, ${tally.exact} exact, ${tally.failed} failed; ` +
        `${tally.direct} read over the event loop; ${tally.readers} reader processes`)
      expect(failures, `${failures.length} of ${cases.length} mutants`).toEqual([])
      if (env.STRATA_L2_DIRECT_READS === '0') expect(s.result.l2.directReads).toBe(0)
      else expect(tally.direct, 'mutants read over the event loop').toBeGreaterThan(cases.length / 2)
    }, 60_000)
  }
})
