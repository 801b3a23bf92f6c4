// Issue 11: nothing Redis sends can crash, hang or wedge a Node process. A real redis-server
// behind a loopback proxy (helpers/fault-proxy.mjs) that, once entries are written through it,
// starts answering in a malformed way; instances run in their own Node processes (a crash there
// is a failed test, not a dead test runner). For each mode, on both L2 transports (the event-loop
// one, and the runtime's with STRATA_L2_DIRECT_READS=0):
//   - the instance lives, every get and set settles, a get is a miss or the exact value,
//   - no call takes longer than the Redis deadline plus timer slack (measured in the instance),
//   - its RSS stays bounded (whatever the server announces or streams),
//   - when the server behaves again, L2 serves the entries again within the breaker's back-off.
// The worst latencies, RSS growth and recovery times are printed at the end of the file.
import { readFileSync } from 'node:fs'
import { setTimeout as sleep } from 'node:timers/promises'
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest'
import { startRedis } from './helpers/redis-server.mjs'
import { startInstance } from './helpers/instance.mjs'
import { startFaultProxy } from './helpers/fault-proxy.mjs'

const DEADLINE_MS = 200 // STRATA_REDIS_TIMEOUT_MS of every instance here
// Timer slack, plus the instance's event loop being busy with other calls of the same wave, on a
// shared 2-core machine. A call that waits a second deadline (a retry, a reconnect, a connection
// that keeps it past its own) is far above it.
const SLACK_MS = 150
const SETTLE_MS = 5_000 // a call not settled after this counts as hung
// How long each fault lasts (at least; plus the last wave's calls). README "Failure behaviour":
// 5 consecutive timeouts or connection errors open the breaker for 1 s, doubling (per failed
// probe) up to 30 s. The first wave opens it (at once, or a deadline in when nothing answers), so
// a spell of 1.5 s outlasts its first open period: a probe meets the misbehaving server, fails,
// and opens it for 2 s more.
const SPELL_MS = 1_500
// The flood lasts longer: the connection it meets after the first wave is dropped (or ought to
// be) is the probe's, ~1.2 s in; a reader that buffers the bulk then has over a second to show it
// (a few hundred MB). The probe after that comes ~3.4 s in, still before the next doubling.
const FLOOD_SPELL_MS = 2_500
// Recovery, once the server behaves again: by the above, the breaker lets its next probe through
// at most ~2 s after the switch back. That probe succeeds if the instance dropped the connection
// the fault made untrustworthy (replies swallowed or cut, a bulk it cannot finish) and made a new
// one. 5 s covers that, a reconnect and a loaded machine; a connection kept wedged, or a breaker
// that never probes again, shows as no recovery at all (issue 11 saw none within 35 s).
const RECOVERY_MS = 5_000
// RSS growth allowed while a fault lasts. Ordinary churn (reconnects, buffers) stays under ~40 MB
// here; L2 stores values up to 8 MiB, so a reader that caps replies near that never needs more,
// while one that buffers the 500 MB flood is far past it.
const RSS_GROWTH_MAX = 128 * 1024 * 1024

// Entries written before the fault: small, medium, compressible (LZ4), large (read into its final
// allocation). Gets ask for these; each has its own seed, so another key's bytes are not `exact`.
const ITEMS = [
  { key: 'small', size: 16, seed: 1 },
  { key: 'medium', size: 1_000, seed: 2 },
  { key: 'lz', size: 20_000, seed: 3, repeat: 64 },
  { key: 'large', size: 200_000, seed: 4 },
]
// Byte by byte costs a write and a wake-up per byte: small values only.
const SMALL_ITEMS = [
  { key: 'b16', size: 16, seed: 11 },
  { key: 'b100', size: 100, seed: 12 },
  { key: 'b300', size: 300, seed: 13 },
]
const GETS_PER_ITEM = 6 // per wave, all in flight together with the sets
const SETS_PER_WAVE = 8

// Instances of the running test. Not instancePool: its stopAll would wait forever for the
// 'exit' of a process already killed by a signal (the crash some of these tests look for);
// a dead one is left alone here.
const running = []
let nsCount = 0
afterEach(async () => { await Promise.all(running.splice(0).map((c) => c.stop())) })

let redis
beforeAll(async () => { redis = await startRedis() })
afterAll(async () => { await redis?.stop() })

// One row per test, filled in as it goes (so a failed test still shows what it saw).
const report = []
afterAll(() => {
  const lines = report.map(({ transport, mode, ...seen }) => `  ${transport.padEnd(10)} ${mode.padEnd(14)} ${JSON.stringify(seen)}`)
  if (lines.length) console.log(`l2-faults (deadline ${DEADLINE_MS} ms + slack ${SLACK_MS} ms; times in ms):\n${lines.join('\n')}`)
})

/** Is the process alive? A dead child not yet reaped is a zombie ('Z' in /proc/PID/stat). */
function processAlive(pid) {
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, 'utf8')
    return stat[stat.lastIndexOf(')') + 2] !== 'Z'
  } catch {
    return false
  }
}

/**
 * Wraps an instance: `call` resolves with { ok } | { error } | { hung } | { died }, never rejects
 * and never waits more than SETTLE_MS. Once the process died, nothing more is written to it; once
 * a call hung, the instance counts as wedged and later calls answer { hung } at once.
 */
function guarded(inst) {
  const g = {
    died: false,
    wedged: false,
    alive() {
      if (!g.died && !processAlive(inst.pid)) g.died = true
      return !g.died
    },
    async stop() {
      if (g.alive()) await inst.stop()
    },
    async call(op, args) {
      if (!g.alive()) return { died: true }
      if (g.wedged) return { hung: true }
      let timer
      const watchdog = new Promise((resolve) => {
        timer = setTimeout(() => { g.wedged = true; resolve({ hung: true }) }, SETTLE_MS)
      })
      const settled = inst.call(op, args).then(
        (ok) => ({ ok }),
        (error) => {
          if (error.message !== 'instance exited') return { error }
          g.died = true
          return { died: true }
        },
      )
      try {
        return await Promise.race([settled, watchdog])
      } finally {
        clearTimeout(timer)
      }
    },
  }
  return g
}

async function startGuarded(proxy, direct) {
  const env = {
    REDIS_URL: proxy.url,
    STRATA_NAMESPACE: `x${process.pid}-${++nsCount}`,
    STRATA_REDIS_TIMEOUT_MS: String(DEADLINE_MS),
    STRATA_L1_MAX_BYTES: '1', // L1 holds nothing, so every get reads L2
  }
  if (!direct) env.STRATA_L2_DIRECT_READS = '0'
  const c = guarded(await startInstance({ env }))
  running.push(c)
  return c
}

/** Writes `items` through the (behaving) proxy, and reads them back until the transport under test serves them. */
async function writeAndWarm(c, items, direct) {
  const w = await c.call('setSeq', { items })
  expect(w.ok, `setSeq: ${JSON.stringify(w)}`).toBeDefined()
  for (let i = 0; i < 200; i++) {
    const got = await Promise.all(items.map((item) => c.call('getTimed', item)))
    const l2 = (await c.call('stats')).ok.l2
    // With direct reads on, the first reads go through the runtime while the event-loop
    // connection is being made: wait until that one serves reads.
    if (got.every((g) => g.ok?.result?.exact) && (!direct || l2.directReads > 0)) {
      if (!direct) expect(l2.directReads).toBe(0)
      return
    }
  }
  throw new Error(`entries never read back through the proxy: ${JSON.stringify((await c.call('stats')).ok)}`)
}

/**
 * Many gets (of `items`) and sets (of fresh keys), all in flight together, in waves, for at least
 * `spellMs` (and at least 3 waves). Returns every call's outcome, labelled.
 */
async function storm(c, items, spellMs) {
  const calls = []
  const start = Date.now()
  let n = 0
  for (let wave = 0; (wave < 3 || Date.now() - start < spellMs) && !c.died; wave++) {
    const batch = []
    for (const item of items) for (let k = 0; k < GETS_PER_ITEM; k++) batch.push(['getTimed', item])
    for (let s = 0; s < SETS_PER_WAVE; s++, n++) batch.push(['setTimed', { key: `w${n}`, size: 50 + 40 * s, seed: 100 + (n % 100) }])
    const settled = await Promise.all(batch.map(async ([op, args]) => ({ op, args, ...await c.call(op, args) })))
    calls.push(...settled)
    if (settled.some((r) => r.hung)) break // the instance is wedged: more waves would only wait too
    await sleep(20) // pacing (a wave with the breaker open answers in microseconds)
  }
  return calls
}

/** RSS samples of the instance every 50 ms until `stop()` resolves them: { stop(): Promise<number[]> }. */
function sampleRss(c) {
  const samples = []
  let sampling = true
  const loop = (async () => {
    while (sampling && !c.died && !c.wedged) {
      const r = await c.call('rss')
      if (r.ok) samples.push(r.ok)
      await sleep(50)
    }
  })()
  return { stop: async () => { sampling = false; await loop; return samples } }
}

/** A get that is neither a miss nor the exact value of its key. */
const wrongValue = (r) => r.op === 'getTimed' && r.ok?.result && !(r.ok.result.exact && r.ok.result.size === r.args.size)
const worst = (calls, op) => Math.max(0, ...calls.filter((r) => r.op === op && r.ok).map((r) => r.ok.ms))
const describeCall = (r) => `${r.op}(${r.args.key})${r.error ? ` rejected: ${r.error.code} ${r.error.message}` : ''}${r.ok ? ` → ${JSON.stringify(r.ok)}` : ''}`

/** Checks a storm's outcome; returns a summary for the report. */
function checkStorm(c, calls, label) {
  expect.soft(c.alive(), `${label}: the instance process died (its stderr is above)`).toBe(true)
  const hung = calls.filter((r) => r.hung)
  expect.soft(hung.map(describeCall), `${label}: calls not settled after ${SETTLE_MS} ms`).toEqual([])
  const rejected = calls.filter((r) => r.error)
  expect.soft(rejected.map(describeCall), `${label}: calls that rejected (failures must be data)`).toEqual([])
  expect.soft(calls.filter(wrongValue).map(describeCall), `${label}: gets that returned another value`).toEqual([])
  const worstGet = worst(calls, 'getTimed')
  const worstSet = worst(calls, 'setTimed')
  expect.soft(worstGet, `${label}: slowest get (ms)`).toBeLessThanOrEqual(DEADLINE_MS + SLACK_MS)
  expect.soft(worstSet, `${label}: slowest set (ms)`).toBeLessThanOrEqual(DEADLINE_MS + SLACK_MS)
  const gets = calls.filter((r) => r.op === 'getTimed' && r.ok)
  return {
    died: c.died || undefined,
    calls: calls.length,
    hung: hung.length || undefined,
    rejected: rejected.length || undefined,
    gets: gets.length,
    hits: gets.filter((r) => r.ok.result).length,
    worstGet: Math.round(worstGet),
    worstSet: Math.round(worstSet),
  }
}

/** The instance's L2 counters worth reporting. */
async function l2Counters(c) {
  const l2 = (await c.call('stats')).ok?.l2
  if (!l2) return {}
  const { errors, decodeErrors, foreign, breaker, directConnects } = l2
  return { errors, decodeErrors, foreign, breaker, directConnects }
}

/**
 * After the server behaves again: gets of `items[0]` until one returns it (a miss meanwhile is
 * fine, another value never), then every item must read back exactly. Returns the ms until that
 * first hit, or undefined.
 */
async function checkRecovery(c, items, label) {
  const start = Date.now()
  let recoveredMs
  const polls = []
  while (Date.now() - start < RECOVERY_MS && !c.died) {
    const r = { op: 'getTimed', args: items[0], ...await c.call('getTimed', items[0]) }
    polls.push(r)
    if (r.ok?.result?.exact) { recoveredMs = Date.now() - start; break }
    if (r.hung || r.error || wrongValue(r)) break
    await sleep(25) // pacing: a miss with the breaker open answers in microseconds
  }
  expect(c.alive(), `${label}: the instance process died after the server behaved again`).toBe(true)
  expect.soft(polls.filter((r) => r.hung || r.error || wrongValue(r)).map(describeCall), `${label}: recovery polls`).toEqual([])
  expect.soft(worst(polls, 'getTimed'), `${label}: slowest get while recovering (ms)`).toBeLessThanOrEqual(DEADLINE_MS + SLACK_MS)
  const l2 = (await c.call('stats')).ok?.l2
  expect.soft(recoveredMs, `${label}: L2 served the entry again within ${RECOVERY_MS} ms (${polls.length} gets; l2 stats ${JSON.stringify(l2)})`).toBeDefined()
  if (recoveredMs !== undefined) {
    const all = await Promise.all(items.map(async (item) => ({ op: 'getTimed', args: item, ...await c.call('getTimed', item) })))
    expect.soft(all.filter((r) => !r.ok?.result?.exact).map(describeCall), `${label}: every entry after recovery`).toEqual([])
  }
  return recoveredMs
}

const FAULTS = [
  'silent', 'flood', 'garbage', 'empty-line', 'wrong-type', 'negative-len', 'huge-len',
  'mismatched-len', 'deep-nesting', 'truncate-close', 'unsolicited',
]

describe.each([
  { transport: 'event loop', direct: true },
  { transport: 'runtime', direct: false },
])('L2 through a misbehaving Redis ($transport)', ({ transport, direct }) => {
  let proxy
  afterEach(async () => { await proxy?.close(); proxy = undefined })

  it('the harness: through the behaving proxy every call answers, exactly and in time', async () => {
    proxy = await startFaultProxy(redis)
    const c = await startGuarded(proxy, direct)
    await writeAndWarm(c, ITEMS, direct)
    const calls = await storm(c, ITEMS, 0)
    const s = checkStorm(c, calls, 'pass')
    report.push({ transport, mode: 'pass', ...s, ...await l2Counters(c) })
    expect(s.hits).toBe(s.gets) // nothing misses when nothing misbehaves
  })

  it('byte by byte: the exact values, in time', async () => {
    proxy = await startFaultProxy(redis)
    const c = await startGuarded(proxy, direct)
    await writeAndWarm(c, SMALL_ITEMS, direct)
    proxy.setMode('byte-by-byte')
    const calls = await storm(c, SMALL_ITEMS, 0)
    const s = checkStorm(c, calls, 'byte-by-byte')
    report.push({ transport, mode: 'byte-by-byte', ...s, ...await l2Counters(c) })
    expect.soft(calls.filter((r) => r.op === 'getTimed' && !r.ok?.result?.exact).map(describeCall), 'byte-by-byte: gets that missed').toEqual([])
  })

  it.each(FAULTS)('%s: the process lives, calls answer in time as a miss or the exact value, RSS bounded, L2 recovers', async (mode) => {
    proxy = await startFaultProxy(redis)
    const c = await startGuarded(proxy, direct)
    await writeAndWarm(c, ITEMS, direct)
    const rssBefore = (await c.call('rss')).ok
    const rss = sampleRss(c)

    proxy.setMode(mode)
    const calls = await storm(c, ITEMS, mode === 'flood' ? FLOOD_SPELL_MS : SPELL_MS)
    const samples = await rss.stop()
    const row = { transport, mode, ...checkStorm(c, calls, mode) }
    // Connections the instance made (reconnects), and how much of the flood it was handed.
    row.proxyConnections = proxy.counters.accepted
    if (mode === 'flood') row.floodMB = Math.round(proxy.counters.floodBytes / 2 ** 20)
    report.push(row)
    const rssGrowth = Math.max(0, ...samples) - rssBefore
    row.rssGrowthMB = Math.round(rssGrowth / 2 ** 20)
    expect.soft(rssGrowth, `${mode}: RSS growth (bytes) during the fault`).toBeLessThan(RSS_GROWTH_MAX)
    if (c.died) return // failed above; nothing left to recover

    proxy.setMode('pass')
    const recoveredMs = await checkRecovery(c, ITEMS, mode)
    Object.assign(row, { recoveredMs: recoveredMs ?? `>${RECOVERY_MS}` }, await l2Counters(c))
  }, 30_000)
})
