#!/usr/bin/env node
// Does LZ4 in the L2 pay for itself on realistic values? RSC/HTML-like payloads (compressible),
// set + L2 get with compression on (compressMinBytes: 4 KiB, the default) vs off (0), one
// redis-server, each configuration in its own child process (the store is per process), the two
// alternated A,B,A,B… and the medians of the repeats reported. `node bench/compression.mjs`.
import { spawn } from 'node:child_process'
import { createRequire } from 'node:module'
import os from 'node:os'
import { fileURLToPath } from 'node:url'
import { startRedis } from '../__test__/helpers/redis-server.mjs'

const SELF = fileURLToPath(import.meta.url)
const SIZES = [16 * 1024, 256 * 1024, 1024 * 1024]
const REPEATS = 3
const OPS = 300

/** A React Flight-like payload: JSON rows of products with varying ids, prices and text. */
function payload(size) {
  let s = '0:"$@1"\n1:['
  for (let i = 0; s.length < size; i++) {
    s += JSON.stringify({ id: i, sku: `SKU-${(i * 7919) % 100000}`, name: `Product ${i} ${['red', 'blue', 'green', 'large', 'small'][i % 5]}`, price: ((i * 37) % 10000) / 100, inStock: i % 3 !== 0, tags: ['sale', 'new', 'popular'].slice(0, i % 4) }) + ','
  }
  return Buffer.from(s.slice(0, size))
}

const pct = (xs, p) => xs.slice().sort((a, b) => a - b)[Math.min(xs.length - 1, Math.floor((xs.length * p) / 100))]

async function child(url, compressMinBytes) {
  const require = createRequire(import.meta.url)
  const { createUseCacheHandler, stats } = require('../index.js')
  const h = createUseCacheHandler({ redis: url, namespace: `cmp${compressMinBytes}`, l1MaxBytes: 1, compressMinBytes })
  const out = {}
  for (const size of SIZES) {
    const bytes = new Uint8Array(payload(size))
    const entry = () => ({ value: new ReadableStream({ start(c) { c.enqueue(bytes); c.close() } }), tags: ['t'], stale: 300, timestamp: Date.now(), expire: 3600, revalidate: 900 })
    const set = []
    const get = []
    for (let i = 0; i < OPS + 30; i++) {
      const t0 = process.hrtime.bigint()
      await h.set(`k${size}`, Promise.resolve(entry()))
      const t1 = process.hrtime.bigint()
      const e = await h.get(`k${size}`, [])
      let n = 0
      for await (const c of e.value) n += c.byteLength
      const t2 = process.hrtime.bigint()
      if (n !== size) throw new Error('short read')
      if (i >= 30) { set.push(Number(t1 - t0) / 1e3); get.push(Number(t2 - t1) / 1e3) }
    }
    out[size] = { setP50: pct(set, 50), getP50: pct(get, 50) }
  }
  if (stats().l1.hits !== 0) throw new Error('measured L1, not L2')
  process.stdout.write(JSON.stringify(out))
}

async function main() {
  const redis = await startRedis()
  try {
    const runs = { on: [], off: [] }
    for (let r = 0; r < REPEATS; r++) {
      for (const [name, min] of r % 2 ? [['off', 0], ['on', 4096]] : [['on', 4096], ['off', 0]]) {
        const res = await new Promise((resolve, reject) => {
          const p = spawn(process.execPath, [SELF, '--child', redis.url, String(min)], { stdio: ['ignore', 'pipe', 'inherit'], env: { ...process.env, STRATA_LOG: 'silent' } })
          let o = ''
          p.stdout.on('data', (d) => { o += d })
          p.on('exit', (code) => code === 0 ? resolve(JSON.parse(o)) : reject(new Error(`child exited ${code}`)))
        })
        runs[name].push(res)
      }
    }
    const stored = {}
    for (const name of ['on', 'off']) {
      const keys = (await redis.cli('--raw', 'KEYS', `sc:cmp${name === 'on' ? 4096 : 0}:e:*`)).split('\n').filter(Boolean)
      stored[name] = await Promise.all(keys.map((k) => redis.cli('STRLEN', k).then(Number)))
    }
    const med = (name, size, f) => pct(runs[name].map((x) => x[size][f]), 50)
    const lines = [
      `Conditions: ${new Date().toISOString()}, ${os.cpus().length} CPUs, load ${os.loadavg().map((x) => x.toFixed(2)).join(' ')}, Node ${process.version}, ${(await redis.cli('INFO', 'server')).match(/redis_version:(\S+)/)[1]} on loopback; ${OPS} set+get pairs per size per child, medians of ${REPEATS} alternated children; l1MaxBytes 1 (every get reads Redis).`,
      '',
      '| size | stored bytes on / off | set p50 µs on / off | get+read p50 µs on / off |',
      '|---|---|---|---|',
    ]
    for (const size of SIZES) {
      const on = stored.on.sort((a, b) => a - b)
      const off = stored.off.sort((a, b) => a - b)
      const i = SIZES.indexOf(size)
      lines.push(`| ${size / 1024} KB | ${on[i]} / ${off[i]} | ${med('on', size, 'setP50').toFixed(1)} / ${med('off', size, 'setP50').toFixed(1)} | ${med('on', size, 'getP50').toFixed(1)} / ${med('off', size, 'getP50').toFixed(1)} |`)
    }
    console.log(lines.join('\n'))
  } finally {
    await redis.stop()
  }
}

if (process.argv[2] === '--child') child(process.argv[3], Number(process.argv[4])).catch((e) => { console.error(e); process.exit(1) })
else main().catch((e) => { console.error(e); process.exit(1) })
