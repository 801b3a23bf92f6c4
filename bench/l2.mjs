#!/usr/bin/env node
// strata-cache bench: the Redis L2 path, ours vs a plain ioredis client, same run, same redis-server.
//
//   node bench/l2.mjs            full run (~2 min), writes the L2 section of bench/RESULTS.md
//   node bench/l2.mjs --quick    smoke run (~30 s), prints only (add --write to record it)
//
// Flags: --quick, --write / --no-write, --no-gc, --sizes=1024,16384, --note="text",
//        --parts=rw,c64,cold,tags,compress (default: all), --ours=PATH (another build of ours: its
//        index.js; the binding.js next to it is used for the "where the time goes" rows).
//
// What it does: starts one redis-server on a free loopback port (__test__/helpers/redis-server.mjs,
// persistence off), then runs each configuration of ours in its own child process (the store is
// per process, the first configuration wins), and stops the server at the end, also on error.
//   child "rw"       l1MaxBytes: 1 (nothing fits in L1: every get is an L2 hit), compressMinBytes: 0.
//                    get/set one in flight and 64 in flight vs ioredis getBuffer / set PX,
//                    refreshTags vs PING, and the building blocks of an L2 hit.
//                    One such child per value size, with a time budget per size (an earlier build
//                    leaked every L2 hit not kept in L1; the "Memory held" table still checks it).
//   child "cold"     the production path: distinct keys written by another process ("coldfill"),
//                    each read once with a 64 MiB L1 (the hit is promoted into L1).
//   child "compress" set with the default compressMinBytes (4 KiB): what trying LZ4 on
//                    incompressible values costs.
//   child "tags"     l1MaxBytes: 512 MiB. updateTags([T]) for a tag on 1 / 1 000 / 100 000 entries
//                    (+10 000 unrelated), with Redis' own view (SLOWLOG, INFO commandstats).
// See bench/RESULTS.md ("Redis L2") for what is measured and how to read it.
import { spawn, execFileSync } from 'node:child_process';
import { readFileSync, writeFileSync, rmSync } from 'node:fs';
import { createRequire } from 'node:module';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { randomBytes } from 'node:crypto';
import { runInterleaved, runJsonChild, summarize, thirds, timerOverheadNs } from './lib/engine.mjs';
import { ROOT, addonInfo, streamOf, readNoCopy, cacheKey, entryOf, SOFT_TAGS, PROFILE } from './lib/contenders.mjs';
import { saveRaw, writeSection } from './lib/report.mjs';

const HERE = path.dirname(fileURLToPath(import.meta.url));
const SELF = fileURLToPath(import.meta.url);
const require = createRequire(import.meta.url);
const argv = process.argv.slice(2);
const flag = (name) => argv.includes(`--${name}`);
const opt = (name) => {
  const a = argv.find((x) => x.startsWith(`--${name}=`));
  return a ? a.slice(name.length + 3) : undefined;
};

const MiB = 1024 * 1024;
const QUICK = flag('quick');
const SIZES = (opt('sizes') || '1024,16384,262144,1048576').split(',').map(Number);
const sizeName = (n) => (n >= MiB ? `${n / MiB} MB` : `${n / 1024} KB`);
// A baseline: ioredis getBuffer wrapped in the entry and stream Next requires of a handler.
const IO_STREAM = 'ioredis + stream';
/**
 * The least any JS handler built on ioredis does per hit: wrap the bytes in the entry Next
 * expects (a ReadableStream over them) and read it the same way as ours. No envelope, no tag
 * checks. Returns the number of bytes read.
 */
async function ioredisAsEntry(client, key) {
  const b = await client.getBuffer(key);
  const e = { value: streamOf(b), tags: ['products', 'bench'], stale: PROFILE.stale, timestamp: 0, expire: PROFILE.expire, revalidate: PROFILE.revalidate };
  return (await readNoCopy(e.value)).bytes;
}
/** The set side of the same baseline: the entry Next hands over (a new stream), read, then SET. */
async function ioredisSetEntry(client, key, chunk) {
  const { chunks } = await readNoCopy(entryOf(chunk).value);
  return client.set(key, chunks.length === 1 ? chunks[0] : Buffer.concat(chunks), 'PX', 3600000);
}
const PARTS = new Set((opt('parts') || 'rw,c64,cold,tags,compress').split(','));
const OURS_INDEX = opt('ours') ? path.resolve(opt('ours')) : path.join(ROOT, 'index.js');
const OURS_DIR = path.dirname(OURS_INDEX);
const T = QUICK
  ? {
      seq: { warmupMs: 60, measureMs: 300, sliceMs: 20 },
      misc: { warmupMs: 40, measureMs: 200, sliceMs: 20 },
      c64: { warmupRounds: 1, measureMs: 300, sliceMs: 100, bigSliceMs: 150 },
      cmp: { warmupMs: 40, measureMs: 200, sliceMs: 20 },
      tags: { ns: [1, 1000, 100000], unrelated: 10000, reps: 5 },
      // Per value size: ms measured per cell one in flight / 64 in flight, warm-up per cell.
      budget: (s) => (s <= 1024 ? { seqMs: 300, c64Ms: 300, warmupMs: 60 } : s <= 16384 ? { seqMs: 200, c64Ms: 200, warmupMs: 40 } : { seqMs: 150, c64Ms: 300, warmupMs: 20 }),
      // First reads of distinct keys (keys per size one in flight; keys for the 64-in-flight 1 KB row).
      cold: { seq: { 1024: 3000, 16384: 1000, 262144: 200, 1048576: 100 }, c64Keys: 15000, c64SliceMs: 100 },
    }
  : {
      seq: { warmupMs: 200, measureMs: 2000, sliceMs: 25 },
      misc: { warmupMs: 100, measureMs: 1000, sliceMs: 25 },
      c64: { warmupRounds: 1, measureMs: 1500, sliceMs: 150, bigSliceMs: 250 },
      cmp: { warmupMs: 100, measureMs: 1000, sliceMs: 25 },
      tags: { ns: [1, 1000, 100000], unrelated: 10000, reps: 7 },
      // Smaller budgets for big values (each op takes longer; the run stays ~2 min).
      budget: (s) => (s <= 1024 ? { seqMs: 2000, c64Ms: 1500, warmupMs: 200 } : s <= 16384 ? { seqMs: 1000, c64Ms: 750, warmupMs: 100 } : { seqMs: 300, c64Ms: 500, warmupMs: 25 }),
      cold: { seq: { 1024: 20000, 16384: 5000, 262144: 1000, 1048576: 400 }, c64Keys: 80000, c64SliceMs: 150 },
    };
const CONC = 64;

function loadOurs() {
  const m = require(OURS_INDEX);
  const native = require(path.join(OURS_DIR, 'binding.js'));
  return { m, native };
}

async function ioredisClients(url) {
  const { default: Redis } = await import('ioredis');
  const mk = (o) => new Redis(url, { lazyConnect: false, maxRetriesPerRequest: 1, ...o });
  const io = mk({ enableAutoPipelining: false });
  const ioAP = mk({ enableAutoPipelining: true });
  const admin = mk({ enableAutoPipelining: false });
  await Promise.all([io.ping(), ioAP.ping(), admin.ping()]);
  return { io, ioAP, admin, version: require('ioredis/package.json').version };
}

const gcFn = () => (flag('no-gc') ? undefined : globalThis.gc);

/** Stats of one summarized cell, with per-third p50s. */
const cellStats = (c) => ({ ...summarize(c.samples.view()), thirds: thirds(c.samples) });

/** CPU time (user + system, ms) redis-server has used so far, from /proc (10 ms ticks); NaN if unknown. */
const CLK_TCK = 100;
function redisCpuMs() {
  const pid = opt('redis-pid');
  if (!pid) return NaN;
  try {
    const f = readFileSync(`/proc/${pid}/stat`, 'utf8');
    const rest = f.slice(f.lastIndexOf(')') + 2).split(' ');
    return ((Number(rest[11]) + Number(rest[12])) * 1000) / CLK_TCK; // fields 14, 15: utime, stime
  } catch {
    return NaN;
  }
}

/**
 * 64 (CONC) in flight: every worker awaits its op in a loop until the slice ends. Cells of a group
 * take turns slice by slice, order flipped every round (A,B,C then C,B,A ...), minor GC before
 * every slice, full GC every round. No new op starts after the slice's deadline; throughput =
 * ops completed ÷ wall time of the slices (the drain of the last ops included); latencies = every
 * op's own hrtime around its await (queueing on the connection included).
 */
async function runConcurrent(groups, { warmupRounds, measureMs, sliceMs }, gc, onRound) {
  for (const g of groups) for (const c of g.cells) { c.lat = []; c.okOps = 0; c.okNs = 0; c.ops = 0; c.wallNs = 0; c.cpuUs = 0; c.redisMs = 0; c.elu = 0; }
  const sliceNs = BigInt(Math.round(sliceMs * 1e6));
  const rounds = Math.max(2, Math.ceil(measureMs / sliceMs));
  for (let r = -warmupRounds; r < rounds; r++) {
    if (gc) gc();
    for (const g of groups) {
      const order = (r & 1) === 0 ? g.cells : [...g.cells].reverse();
      for (const c of order) {
        if (gc) gc({ type: 'minor' });
        const store = r >= 0;
        const cpu0 = process.cpuUsage();
        const redis0 = redisCpuMs();
        const elu0 = performance.eventLoopUtilization();
        const start = process.hrtime.bigint();
        const end = start + sliceNs;
        let inTime = 0;
        const worker = async (w) => {
          for (;;) {
            const arg = c.prep ? c.prep(w) : undefined;
            const t0 = process.hrtime.bigint();
            const res = await c.op(arg, w);
            const t1 = process.hrtime.bigint();
            if (c.check) c.check(res);
            if (store) { c.lat.push(Number(t1 - t0)); c.ops++; }
            if (t1 <= end) inTime++;
            if (t1 >= end) break;
          }
        };
        await Promise.all(Array.from({ length: CONC }, (_, w) => worker(w)));
        const stop = process.hrtime.bigint();
        if (store) {
          const cpu = process.cpuUsage(cpu0);
          const elu = performance.eventLoopUtilization(elu0);
          c.okOps += inTime;
          c.okNs += Number(sliceNs);
          c.wallNs += Number(stop - start);
          c.cpuUs += cpu.user + cpu.system;
          c.redisMs += redisCpuMs() - redis0;
          c.elu += elu.utilization * Number(stop - start);
        }
      }
    }
    if (onRound) onRound(r, rounds);
  }
}

const progress = (label) => (r, n) => {
  if (r >= 0 && (r % Math.max(1, Math.floor(n / 10)) === 0 || r === n - 1)) process.stderr.write(`\r  ${label}: round ${r + 1}/${n}   `);
};
const endProgress = () => process.stderr.write('\n');

const expectBytes = (size) => (r) => {
  if (r !== size) throw new Error(`expected ${size} bytes, got ${r} (a miss or a short stream)`);
};
const plainKey = (kind, size, i = 0) => `plain:${kind}:${size}:${i}`;

function childEnv(native, m) {
  return {
    addon: addonInfo(OURS_DIR),
    config: m.config(),
    nodeVersion: process.version,
  };
}

// ---------------------------------------------------------------------------------------------
// rw child: L2 get / set vs ioredis, one and 64 in flight; refreshTags vs PING; building blocks.
async function childRw() {
  const url = opt('url');
  const gc = gcFn();
  const { m, native } = loadOurs();
  const h = m.createUseCacheHandler({ redis: url, namespace: 'bench-rw', l1MaxBytes: 1, compressMinBytes: 0 });
  const { io, ioAP, admin, version: ioredisVersion } = await ioredisClients(url);
  // One value size per child process (memory and GC of one size do not bleed into another), plus the
  // size-independent rows (refreshTags, building blocks, the tokio hop) in the child given --misc.
  const MY = [Number(opt('size'))];
  const MISC = flag('misc');
  const B = T.budget(MY[0]);
  const values = new Map(MY.map((s) => [s, randomBytes(s)]));
  const counters = { gets: 0, sets: 0, refreshes: 0 };
  const st = () => m.stats();

  // Fill: the same payload bytes under our key (through the handler) and under a plain key.
  for (const s of MY) {
    const v = values.get(s);
    await h.set(cacheKey('get', s), Promise.resolve(entryOf(v)));
    counters.sets++;
    await io.set(plainKey('get', s), v, 'PX', 3600000);
    const e = await h.get(cacheKey('get', s), SOFT_TAGS);
    counters.gets++;
    if (!e) throw new Error(`ours: miss right after set (${sizeName(s)})`);
    const got = Buffer.concat((await readNoCopy(e.value)).chunks);
    if (!got.equals(v)) throw new Error(`ours: bytes differ after set/get (${sizeName(s)})`);
    const plain = await io.getBuffer(plainKey('get', s));
    if (!plain.equals(v)) throw new Error(`ioredis: bytes differ (${sizeName(s)})`);
  }
  // One invalidation first, so refreshTags() below follows an existing log ("nothing changed"
  // since the cursor) rather than finding no tag state at all.
  await h.updateTags(['bench-warm']);
  await h.refreshTags();
  counters.refreshes++;
  const s0 = st();
  if (s0.l1.hits !== 0) throw new Error(`L1 served ${s0.l1.hits} hits: the bench would not measure L2`);
  if (s0.l2.hits !== counters.gets) throw new Error(`l2.hits ${s0.l2.hits} != gets ${counters.gets}`);

  const storedLen = {};
  for (const k of await admin.keys('sc:bench-rw:e:*')) {
    const n = await admin.strlen(k);
    const s = MY.find((x) => n >= x && n < x + 1024);
    if (s) storedLen[s] = n;
  }

  // ---- one in flight ----
  const getOurs = (s) => async (key) => {
    counters.gets++;
    const e = await h.get(key, SOFT_TAGS);
    return e ? (await readNoCopy(e.value)).bytes : -1;
  };
  const getIo = (client, s) => async () => (await client.getBuffer(plainKey('get', s))).byteLength;
  const getIoStream = (client, s) => () => ioredisAsEntry(client, plainKey('get', s));
  const seqGroups = [];
  for (const s of MY) {
    seqGroups.push({
      kind: 'get', size: s,
      cells: [
        { id: 'ours', op: getOurs(s), prep: () => cacheKey('get', s), check: expectBytes(s) },
        { id: 'ioredis', op: getIo(io, s), check: expectBytes(s) },
        { id: IO_STREAM, op: getIoStream(io, s), check: expectBytes(s) },
        {
          id: 'native.ucGetRemote', prep: () => cacheKey('get', s), check: expectBytes(s),
          op: async (key) => { counters.gets++; const r = await (native.ucGetRemote ?? native.ucGetL2)(key, SOFT_TAGS); return r ? r.value.byteLength : -1; },
        },
        {
          id: 'handler.get, stream not read', prep: () => cacheKey('get', s),
          op: async (key) => { counters.gets++; const e = await h.get(key, SOFT_TAGS); return e ? s : -1; }, check: expectBytes(s),
        },
      ].filter((c) => s <= 16384 || c.id !== 'handler.get, stream not read'), // fewer leaking hits for big values
    });
  }
  const tagsArr = ['products', 'bench'];
  for (const s of MY) {
    const v = values.get(s);
    seqGroups.push({
      kind: 'set', size: s,
      cells: [
        { id: 'ours', prep: () => cacheKey('set', s), op: (key) => { counters.sets++; return h.set(key, Promise.resolve(entryOf(v))); } },
        { id: 'ioredis', op: () => io.set(plainKey('set', s), v, 'PX', 3600000) },
        { id: IO_STREAM, op: () => ioredisSetEntry(io, plainKey('set', s), v) },
        {
          id: 'native.ucSetRemote', prep: () => cacheKey('set', s),
          op: (key) => { counters.sets++; return native.ucSetRemote(key, v, tagsArr, PROFILE.stale, performance.timeOrigin + performance.now(), PROFILE.expire, PROFILE.revalidate); },
          // A SetReport { l1, l2 }; an older build (--ours) answered a number, l1 * 8 + l2 (1 = written).
          check: (r) => { if (typeof r === 'number' ? (r & 7) !== 1 : r.l2 !== 'written') throw new Error(`ucSetRemote: ${JSON.stringify(r)}, not written to L2`); },
        },
      ],
    });
  }
  if (MISC) seqGroups.push({
    kind: 'refresh',
    cells: [
      { id: 'ours', op: () => { counters.refreshes++; return h.refreshTags(); } },
      { id: 'ioredis', op: () => io.ping() },
    ],
  });
  const miss = cacheKey('absent', 0);
  const small = randomBytes(1024);
  const big = randomBytes(MiB);
  const miscGroups = [
    { kind: 'misc', cells: [{ id: 'harness: `await Promise.resolve()`', op: () => Promise.resolve() }] },
    { kind: 'misc', cells: [{ id: 'tokio hop: `await native.flush(0)` (async napi call, no I/O)', op: () => native.flush(0) }] },
    { kind: 'misc', cells: [{ id: '`native.ucGet(key)`, a sync napi call (an L1 lookup that misses)', op: () => native.ucGet(miss, []) }] },
    { kind: 'misc', size: 1024, cells: [{ id: 'stream wrap + reader loop over a Buffer (`streamOf` + read)', op: async () => (await readNoCopy(streamOf(small))).bytes, check: expectBytes(1024) }] },
    { kind: 'misc', size: MiB, cells: [{ id: 'stream wrap + reader loop over a Buffer (`streamOf` + read)', op: async () => (await readNoCopy(streamOf(big))).bytes, check: expectBytes(MiB) }] },
    { kind: 'misc', cells: [{ id: '`new ReadableStream` + entry object (what set builds per call)', op: () => { entryOf(small); } }] },
  ];

  const timerNs = await timerOverheadNs();
  const res = { size: MY[0], budget: B, env: { ...childEnv(native, m), ioredisVersion, timerNs }, storedLen };
  if (PARTS.has('rw')) {
    const seqT = { ...T.seq, measureMs: B.seqMs, warmupMs: B.warmupMs };
    const rounds = Math.max(3, Math.ceil(seqT.measureMs / seqT.sliceMs));
    process.stderr.write(`rw ${sizeName(MY[0])}: one in flight, ${seqGroups.length} groups, ${seqT.measureMs} ms per cell in ${rounds} rounds\n`);
    await runInterleaved(seqGroups, { ...seqT, gc, onRound: progress('one in flight') });
    endProgress();
    res.seq = seqGroups.map((g) => ({ kind: g.kind, size: g.size, cells: g.cells.map((c) => ({ id: c.id, ...cellStats(c) })) }));
    if (MISC) {
      await runInterleaved(miscGroups, { ...T.misc, gc, onRound: progress('building blocks') });
      endProgress();
      res.misc = miscGroups.map((g) => ({ kind: g.kind, size: g.size, id: g.cells[0].id, ...cellStats(g.cells[0]) }));
    }
  }

  // ---- 64 in flight ----
  if (PARTS.has('c64')) {
    const cGroups = [];
    for (const s of MY) {
      cGroups.push({
        kind: 'get', size: s,
        cells: [
          { id: 'ours', op: getOurs(s), prep: () => cacheKey('get', s), check: expectBytes(s) },
          { id: 'ioredis', op: getIo(io, s), check: expectBytes(s) },
          { id: 'ioredis autoPipelining', op: getIo(ioAP, s), check: expectBytes(s) },
          { id: IO_STREAM, op: getIoStream(io, s), check: expectBytes(s) },
          {
            id: 'native.ucGetRemote', prep: () => cacheKey('get', s), check: expectBytes(s),
            op: async (key) => { counters.gets++; const r = await (native.ucGetRemote ?? native.ucGetL2)(key, SOFT_TAGS); return r ? r.value.byteLength : -1; },
          },
        ],
      });
    }
    for (const s of MY) {
      const v = values.get(s);
      cGroups.push({
        kind: 'set', size: s,
        cells: [
          { id: 'ours', prep: (w) => cacheKey('set64', s, w), op: (key) => { counters.sets++; return h.set(key, Promise.resolve(entryOf(v))); } },
          { id: 'ioredis', op: (_, w) => io.set(plainKey('set64', s, w), v, 'PX', 3600000) },
          { id: 'ioredis autoPipelining', op: (_, w) => ioAP.set(plainKey('set64ap', s, w), v, 'PX', 3600000) },
          { id: IO_STREAM, op: (_, w) => ioredisSetEntry(io, plainKey('set64s', s, w), v) },
        ],
      });
    }
    if (MISC) cGroups.push({
      kind: 'hop', size: 0,
      cells: [
        { id: 'tokio hop `native.flush(0)`', op: () => native.flush(0) },
        { id: 'ioredis ping', op: () => io.ping() },
        { id: 'ours refreshTags()', op: () => { counters.refreshes++; return h.refreshTags(); } },
      ],
    });
    process.stderr.write(`rw ${sizeName(MY[0])}: ${CONC} in flight, ${cGroups.length} groups, ${B.c64Ms} ms per cell in slices of ${MY[0] >= 262144 ? T.c64.bigSliceMs : T.c64.sliceMs} ms\n`);
    // Big values take tens of ms per op at 64 in flight: longer slices, so ramp-up and drain
    // stay small against the slice.
    for (const g of cGroups) {
      const sliceMs = g.size >= 262144 ? T.c64.bigSliceMs : T.c64.sliceMs;
      await runConcurrent([g], { ...T.c64, measureMs: B.c64Ms, sliceMs }, gc, progress(`${CONC} in flight: ${g.kind} ${g.size ? sizeName(g.size) : ''}`));
      endProgress();
    }
    res.c64 = cGroups.map((g) => ({
      kind: g.kind, size: g.size,
      cells: g.cells.map((c) => ({
        id: c.id, ...summarize(c.lat), throughput: c.ops / (c.wallNs / 1e9), inDeadline: c.okOps / (c.okNs / 1e9), n: c.lat.length,
        cpuUsPerOp: c.cpuUs / c.ops, redisUsPerOp: (c.redisMs * 1000) / c.ops, elu: c.elu / c.wallNs,
      })),
    }));
  }

  // Every ours get above must have been an L2 hit, never an L1 hit.
  const s1 = st();
  if (gc) { gc(); gc(); }
  const mu = process.memoryUsage();
  res.mem = { rss: mu.rss, external: mu.external, heapUsed: mu.heapUsed, jsViews: s1.l1.jsViews, l2Hits: s1.l2.hits };
  res.counters = {
    ...counters,
    l1Hits: s1.l1.hits, l1Entries: s1.l1.entries,
    l2Hits: s1.l2.hits, l2Misses: s1.l2.misses, l2Errors: s1.l2.errors, l2Writes: s1.l2.writes,
    l2WriteErrors: s1.l2.writeErrors, l2Refreshes: s1.l2.refreshes, l2Resyncs: s1.l2.resyncs, breaker: s1.l2.breaker,
  };
  if (s1.l1.hits !== 0) throw new Error(`L1 served ${s1.l1.hits} hits: not an L2 measurement`);
  if (s1.l2.hits !== counters.gets) throw new Error(`l2.hits ${s1.l2.hits} != gets issued ${counters.gets}`);
  if (s1.l2.writes !== counters.sets || s1.l2.writeErrors !== 0) throw new Error(`l2.writes ${s1.l2.writes} (errors ${s1.l2.writeErrors}) != sets ${counters.sets}`);
  if (s1.l2.errors !== 0 || s1.l2.misses !== 0) throw new Error(`L2 errors ${s1.l2.errors} / misses ${s1.l2.misses} during the run`);
  io.disconnect(); ioAP.disconnect(); admin.disconnect();
  return res;
}

// ---------------------------------------------------------------------------------------------
// compress child: the default compressMinBytes (4 KiB) on incompressible values. Set only: a
// value LZ4 cannot shrink is stored raw, so reading it is the rw child's path.
async function childCompress() {
  const url = opt('url');
  const gc = gcFn();
  const { m, native } = loadOurs();
  const h = m.createUseCacheHandler({ redis: url, namespace: 'bench-cmp', l1MaxBytes: 1 });
  const { io, ioAP, admin, version: ioredisVersion } = await ioredisClients(url);
  const sizes = SIZES.filter((s) => s >= 4096);
  const values = new Map(sizes.map((s) => [s, randomBytes(s)]));
  let gets = 0;
  let sets = 0;
  const storedLen = {};
  for (const s of sizes) {
    const v = values.get(s);
    await h.set(cacheKey('get', s), Promise.resolve(entryOf(v)));
    sets++;
    await io.set(plainKey('get', s), v, 'PX', 3600000);
    const e = await h.get(cacheKey('get', s), SOFT_TAGS);
    gets++;
    if (!e || !Buffer.concat((await readNoCopy(e.value)).chunks).equals(v)) throw new Error(`compress: bytes differ (${sizeName(s)})`);
  }
  for (const k of await admin.keys('sc:bench-cmp:e:*')) {
    const n = await admin.strlen(k);
    const s = sizes.find((x) => n >= x && n < x + 1024);
    if (s) storedLen[s] = n;
  }
  const groups = [];
  for (const s of sizes) {
    const v = values.get(s);
    groups.push({
      kind: 'set', size: s,
      cells: [
        { id: 'ours', prep: () => cacheKey('set', s), op: (key) => { sets++; return h.set(key, Promise.resolve(entryOf(v))); } },
        { id: 'ioredis', op: () => io.set(plainKey('set', s), v, 'PX', 3600000) },
      ],
    });
  }
  process.stderr.write(`compress: ${groups.length} groups, ${T.cmp.measureMs} ms per cell\n`);
  await runInterleaved(groups, { ...T.cmp, gc, onRound: progress('default compressMinBytes') });
  endProgress();
  const s1 = m.stats();
  if (s1.l1.hits !== 0 || s1.l2.hits !== gets || s1.l2.writes !== sets) throw new Error(`compress: counters ${JSON.stringify(s1.l2)} l1 hits ${s1.l1.hits}, gets ${gets}, sets ${sets}`);
  io.disconnect(); ioAP.disconnect(); admin.disconnect();
  return {
    env: { ...childEnv(native, m), ioredisVersion },
    storedLen,
    groups: groups.map((g) => ({ kind: g.kind, size: g.size, cells: g.cells.map((c) => ({ id: c.id, ...cellStats(c) })) })),
  };
}

// ---------------------------------------------------------------------------------------------
// cold children: the production path of an L2 hit, the first read of a key in this process.
// "coldfill" writes distinct keys through the handler (l1MaxBytes: 1, so nothing stays in its
// L1; a set leaks nothing); "cold" (another process, l1MaxBytes 64 MiB) reads each key once: every
// get misses L1, reads Redis and promotes the entry into L1, where LRU evicts older ones (no leak).
const coldKey = (s, i) => cacheKey('cold', s, i);
const coldCount = (s) => (T.cold.seq[s] ?? 200) + 64 + (s === SIZES[0] ? T.cold.c64Keys : 0);

async function childColdFill() {
  const url = opt('url');
  const { m } = loadOurs();
  const h = m.createUseCacheHandler({ redis: url, namespace: 'bench-cold', l1MaxBytes: 1, compressMinBytes: 0 });
  const { io, ioAP, admin } = await ioredisClients(url);
  for (const s of SIZES) {
    const v = randomBytes(s);
    await io.set(plainKey('cold', s), v, 'PX', 3600000);
    const n = coldCount(s);
    let next = 0;
    await Promise.all(Array.from({ length: CONC }, async () => {
      for (;;) {
        const i = next++;
        if (i >= n) return;
        await h.set(coldKey(s, i), Promise.resolve(entryOf(v)));
      }
    }));
  }
  const st = m.stats();
  io.disconnect(); ioAP.disconnect(); admin.disconnect();
  return { writes: st.l2.writes, writeErrors: st.l2.writeErrors, jsViews: st.l1.jsViews };
}

async function childCold() {
  const url = opt('url');
  const gc = gcFn();
  const { m, native } = loadOurs();
  const L1 = 64 * MiB;
  const h = m.createUseCacheHandler({ redis: url, namespace: 'bench-cold', l1MaxBytes: L1, compressMinBytes: 0 });
  const { io, ioAP, admin, version: ioredisVersion } = await ioredisClients(url);
  const now = () => process.hrtime.bigint();
  let gets = 0;
  const out = { env: { ...childEnv(native, m), ioredisVersion }, seq: [], c64: null };
  for (const s of SIZES) {
    const n = T.cold.seq[s] ?? 200;
    const plain = plainKey('cold', s);
    const ours = [];
    const base = [];
    const wrapped = [];
    let i = 0;
    // One timed op: `op()` resolves to the bytes it read, which must be `s`.
    const timed = async (who, into, store, op) => {
      const t0 = now();
      const got = await op();
      const t1 = now();
      if (got !== s) throw new Error(`cold (${who}): expected ${s} bytes, got ${got}`);
      if (store) into.push(Number(t1 - t0));
    };
    const one = async (store) => {
      const k = coldKey(s, i++);
      const a = () => timed('ours', ours, store, async () => {
        gets++;
        const e = await h.get(k, SOFT_TAGS);
        return e ? (await readNoCopy(e.value)).bytes : -1;
      });
      const b = () => timed('ioredis', base, store, async () => (await io.getBuffer(plain)).byteLength);
      const c = () => timed('ioredis + stream', wrapped, store, () => ioredisAsEntry(io, plain));
      // Alternate the order op by op (A,B,C then C,B,A).
      if (i & 1) { await a(); await b(); await c(); } else { await c(); await b(); await a(); }
    };
    for (let w = 0; w < 64; w++) await one(false); // warm-up
    if (gc) gc();
    for (let j = 0; j < n; j++) {
      if (gc && j % 64 === 0) gc({ type: 'minor' });
      await one(true);
    }
    out.seq.push({ size: s, n, ours: summarize(ours), ioredis: summarize(base), ioredisStream: summarize(wrapped) });
  }
  // 64 in flight, smallest size: slices alternate ours (fresh keys) and ioredis.
  const s = SIZES[0];
  let next = T.cold.seq[s] + 64;
  const limit = coldCount(s);
  const plain = plainKey('cold', s);
  const cells = {
    ours: { lat: [], ops: 0, ns: 0, cpuUs: 0, op: async () => { const k = coldKey(s, next++); const e = await h.get(k, SOFT_TAGS); gets++; return e ? (await readNoCopy(e.value)).bytes : -1; } },
    ioredis: { lat: [], ops: 0, ns: 0, cpuUs: 0, op: async () => (await io.getBuffer(plain)).byteLength },
    ioredisStream: { lat: [], ops: 0, ns: 0, cpuUs: 0, op: () => ioredisAsEntry(io, plain) },
  };
  const sliceNs = BigInt(T.cold.c64SliceMs * 1e6);
  for (let r = 0; next + CONC * 50 < limit && r < 40; r++) {
    for (const name of (r & 1) ? ['ioredisStream', 'ioredis', 'ours'] : ['ours', 'ioredis', 'ioredisStream']) {
      const c = cells[name];
      if (gc) gc({ type: 'minor' });
      const cpu0 = process.cpuUsage();
      const start = now();
      const end = start + sliceNs;
      await Promise.all(Array.from({ length: CONC }, async () => {
        for (;;) {
          if (name === 'ours' && next >= limit) return;
          const t0 = now();
          const b = await c.op();
          const t1 = now();
          if (b !== s) throw new Error(`cold c64: expected ${s} bytes, got ${b}`);
          c.lat.push(Number(t1 - t0));
          c.ops++;
          if (t1 >= end) return;
        }
      }));
      c.ns += Number(now() - start);
      const cpu = process.cpuUsage(cpu0);
      c.cpuUs += cpu.user + cpu.system;
    }
  }
  out.c64 = { size: s, ...Object.fromEntries(Object.entries(cells).map(([k, c]) => [k, { ...summarize(c.lat), throughput: c.ops / (c.ns / 1e9), cpuUsPerOp: c.cpuUs / c.ops }])) };
  const st = m.stats();
  out.counters = { gets, l1Hits: st.l1.hits, l2Hits: st.l2.hits, l2Misses: st.l2.misses, l2Errors: st.l2.errors, jsViews: st.l1.jsViews, l1Entries: st.l1.entries, evictions: st.l1.evictions };
  if (st.l1.hits !== 0) throw new Error(`cold: ${st.l1.hits} L1 hits`);
  if (st.l2.hits !== gets) throw new Error(`cold: l2.hits ${st.l2.hits} != gets ${gets}`);
  if (gc) { gc(); gc(); }
  const mu = process.memoryUsage();
  out.mem = { rss: mu.rss, external: mu.external, jsViews: m.stats().l1.jsViews };
  io.disconnect(); ioAP.disconnect(); admin.disconnect();
  return out;
}

// ---------------------------------------------------------------------------------------------
// tags child: updateTags cost vs the number of entries carrying the tag.
function parseCommandstats(text) {
  const out = {};
  for (const line of text.split(/\r?\n/)) {
    const mm = /^cmdstat_([^:]+):calls=(\d+),usec=(\d+)/.exec(line);
    if (mm) out[mm[1]] = { calls: Number(mm[2]), usec: Number(mm[3]) };
  }
  return out;
}
const ADMIN_CMDS = /^(config|slowlog|info|ping|client|hello|select|command)/i;
const SCRIPT_CMDS = /^(EVAL|EVALSHA|EVAL_RO|EVALSHA_RO|FCALL|FCALL_RO)$/i;

async function childTags() {
  const url = opt('url');
  const { m, native } = loadOurs();
  const L1 = 512 * MiB;
  const h = m.createUseCacheHandler({ redis: url, namespace: 'bench-tags', l1MaxBytes: L1 });
  const { io, ioAP, admin, version: ioredisVersion } = await ioredisClients(url);
  const { ns: NS, unrelated: UNRELATED, reps: REPS } = T.tags;
  const value = randomBytes(1024);
  const key = (kind, n, i) => cacheKey(kind, n, i);
  const entry = (tags) => ({ ...entryOf(value), tags });

  // Fill, 64 in flight (not measured): UNRELATED entries with tags U<j%100>, then for each N,
  // N entries that all carry T<N>_0 … T<N>_<REPS-1> (one fresh tag per rep).
  async function fill(count, mk) {
    let next = 0;
    const worker = async () => {
      for (;;) {
        const i = next++;
        if (i >= count) return;
        const [k, tags] = mk(i);
        await h.set(k, Promise.resolve(entry(tags)));
      }
    };
    const t0 = performance.now();
    await Promise.all(Array.from({ length: CONC }, worker));
    return (performance.now() - t0) / 1000;
  }
  const fillS = {};
  process.stderr.write(`tags: filling ${UNRELATED} unrelated + ${NS.join(' + ')} tagged entries of 1 KB through handler.set (${CONC} in flight)…\n`);
  fillS.unrelated = await fill(UNRELATED, (j) => [key('other', 0, j), [`U${j % 100}`]]);
  const tagsOf = (n) => Array.from({ length: REPS }, (_, r) => `T${n}_${r}`);
  for (const n of NS) fillS[n] = await fill(n, (i) => [key('tagged', n, i), tagsOf(n)]);
  const s0 = m.stats();
  const total = UNRELATED + NS.reduce((a, b) => a + b, 0);
  if (s0.l2.writes !== total || s0.l2.writeErrors !== 0) throw new Error(`tags fill: l2 writes ${s0.l2.writes} (errors ${s0.l2.writeErrors}) != ${total}`);
  const dbsize = await admin.dbsize();
  const usedMemory = Number(/used_memory:(\d+)/.exec(await admin.info('memory'))[1]);
  // Before: every tagged entry hits.
  for (const n of NS) if (!(await h.get(key('tagged', n, n - 1), SOFT_TAGS))) throw new Error(`tags: tagged entry of N=${n} missing before invalidation`);

  await admin.config('SET', 'slowlog-log-slower-than', '0');
  await admin.config('SET', 'slowlog-max-len', '1024');
  // A round trip floor measured the same way, on the admin connection.
  const pings = [];
  for (let i = 0; i < 200; i++) { const t0 = process.hrtime.bigint(); await admin.ping(); pings.push(Number(process.hrtime.bigint() - t0)); }

  // The first invalidation in a namespace creates the tag state (epoch, log): measured once, apart.
  async function measured(tag) {
    await admin.config('RESETSTAT');
    await admin.slowlog('RESET');
    const t0 = process.hrtime.bigint();
    await h.updateTags([tag]);
    const t1 = process.hrtime.bigint();
    await admin.ping();
    const t2 = process.hrtime.bigint();
    const slow = await admin.slowlog('GET', 1024);
    const cmdstats = parseCommandstats(await admin.info('commandstats'));
    const cmds = slow
      .map(([, , usec, args]) => ({ usec: Number(usec), name: String(args[0]).toUpperCase(), nargs: args.length }))
      .filter((c) => !ADMIN_CMDS.test(c.name));
    const longest = cmds.reduce((a, c) => (c.usec > a.usec ? c : a), { usec: 0, name: '-', nargs: 0 });
    const redisCmds = Object.entries(cmdstats).filter(([k]) => !ADMIN_CMDS.test(k));
    return {
      tag, ms: Number(t1 - t0) / 1e6, pingAfterMs: Number(t2 - t1) / 1e6,
      longest, topLevel: cmds.map((c) => c.name).join(' '),
      // Redis 7 logs the commands a script runs in SLOWLOG (and INFO commandstats) as well as
      // the EVALSHA, whose time includes theirs: Redis busy = the scripts' time when a script ran.
      redisUsec: (cmds.some((c) => SCRIPT_CMDS.test(c.name)) ? cmds.filter((c) => SCRIPT_CMDS.test(c.name)) : cmds).reduce((a, c) => a + c.usec, 0),
      scripts: cmds.filter((c) => SCRIPT_CMDS.test(c.name)).length,
      redisCalls: redisCmds.reduce((a, [, v]) => a + v.calls, 0),
      cmdstats: Object.fromEntries(redisCmds),
    };
  }
  const first = await measured('bench-first');

  const runs = [];
  for (let r = 0; r < REPS; r++) {
    const order = (r & 1) === 0 ? NS : [...NS].reverse();
    for (const n of order) {
      const tag = `T${n}_${r}`;
      const m1 = await measured(tag);
      // Effect: a tagged entry now misses; an unrelated one still hits.
      const tagged = await h.get(key('tagged', n, 0), SOFT_TAGS);
      const other = await h.get(key('other', 0, n % UNRELATED), SOFT_TAGS);
      if (tagged !== undefined) throw new Error(`tags: entry of N=${n} still served after updateTags([${tag}])`);
      if (!other) throw new Error('tags: an unrelated entry was lost');
      runs.push({ n, rep: r, ...m1 });
    }
  }
  await admin.config('SET', 'slowlog-log-slower-than', '10000');
  const s1 = m.stats();
  io.disconnect(); ioAP.disconnect(); admin.disconnect();
  return {
    env: { ...childEnv(native, m), ioredisVersion },
    ns: NS, unrelated: UNRELATED, reps: REPS, fillS, dbsize, usedMemory,
    l1Entries: s0.l1.entries, l1Bytes: s0.l1.bytes, tagRecordsAfter: s1.tags.records,
    ping: summarize(pings), first, runs,
  };
}

// =============================================================================================
// Child dispatch (after every definition above: the children re-execute this file)
if (opt('child')) {
  if (typeof globalThis.gc !== 'function' && !flag('no-gc')) throw new Error('child needs --expose-gc');
  const which = opt('child');
  const out = opt('out');
  let result;
  try {
    if (which === 'rw') result = await childRw();
    else if (which === 'compress') result = await childCompress();
    else if (which === 'tags') result = await childTags();
    else if (which === 'coldfill') result = await childColdFill();
    else if (which === 'cold') result = await childCold();
    else throw new Error(`unknown child ${which}`);
  } catch (err) {
    result = { error: String(err && err.stack ? err.stack : err) };
  }
  writeFileSync(out, JSON.stringify(result));
  process.exit(result.error ? 1 : 0);
}

// =============================================================================================
// Parent: one redis-server, one child per configuration, report.
const { startRedis } = await import('../__test__/helpers/redis-server.mjs');

function runChild(which, url, redisPid, extra = []) {
  // Children configure ours in code only: no Redis URL or L1 size from the environment.
  const env = { ...process.env, STRATA_LOG: 'error' };
  for (const k of ['STRATA_REDIS_URL', 'REDIS_URL', 'STRATA_REDIS_CLUSTER', 'STRATA_L1_MAX_BYTES', 'STRATA_NAMESPACE', 'STRATA_COMPRESS_MIN_BYTES']) delete env[k];
  return runJsonChild(SELF, which, [`--url=${url}`, `--redis-pid=${redisPid}`, ...extra, ...argv], env);
}

const started = Date.now();
const addon = addonInfo(OURS_DIR);
if (!addon) throw new Error(`no addon next to ${OURS_INDEX}: run npm run build`);
if (addon.debug) console.error('WARNING: ours is a DEBUG build of the addon; its numbers are not representative (npm run build).');
const env = {
  date: new Date().toISOString(),
  nproc: os.availableParallelism ? os.availableParallelism() : os.cpus().length,
  cpu: os.cpus()[0]?.model?.trim() ?? '?',
  node: process.version,
  redis: (() => { try { return execFileSync('redis-server', ['--version'], { encoding: 'utf8' }).trim(); } catch (e) { return `? (${e.message})`; } })(),
  loadStart: os.loadavg().map((x) => x.toFixed(2)).join(' '),
  gc: flag('no-gc') ? 'off (--no-gc)' : 'minor GC before every slice, full GC every round (outside timing)',
  head: (() => { try { return execFileSync('git', ['-C', ROOT, 'log', '-1', '--format=%h %cI'], { encoding: 'utf8' }).trim(); } catch { return '?'; } })(),
};

const results = {};
const redis = await startRedis();
console.log(`redis-server ${redis.url} (pid ${redis.pid}); ours = ${path.relative(ROOT, OURS_INDEX) || OURS_INDEX}, addon ${addon.sizeMB} MB built ${addon.mtime}${addon.debug ? ' DEBUG' : ', release'}`);
try {
  if (PARTS.has('rw') || PARTS.has('c64')) {
    const parts = [];
    for (const [i, size] of SIZES.entries()) {
      const extra = [`--size=${size}`, ...(i === 0 ? ['--misc'] : [])];
      parts.push(await runChild('rw', redis.url, redis.pid, extra));
    }
    results.rw = {
      env: parts[0].env,
      storedLen: Object.assign({}, ...parts.map((x) => x.storedLen)),
      seq: parts.flatMap((x) => x.seq ?? []),
      c64: parts.some((x) => x.c64) ? parts.flatMap((x) => x.c64 ?? []) : undefined,
      misc: parts.find((x) => x.misc)?.misc,
      children: parts.map((x) => ({ size: x.size, budget: x.budget, counters: x.counters, mem: x.mem, addon: x.env.addon })),
    };
    if (!results.rw.seq.length) delete results.rw.seq;
  }
  if (PARTS.has('cold')) {
    await redis.cli('FLUSHALL');
    const fill = await runChild('coldfill', redis.url, redis.pid);
    results.cold = { fill, ...(await runChild('cold', redis.url, redis.pid)) };
    await redis.cli('FLUSHALL');
  }
  if (PARTS.has('compress')) results.compress = await runChild('compress', redis.url, redis.pid);
  if (PARTS.has('tags')) {
    await redis.cli('FLUSHALL'); // the tags child's Redis view should not include the rw keys' memory
    results.tags = await runChild('tags', redis.url, redis.pid);
  }
  env.redisInfo = (await redis.cli('INFO', 'server')).split(/\r?\n/).filter((l) => /^(redis_version|process_id|tcp_port|hz|io_threads_active)/.test(l)).join(', ');
} finally {
  await redis.stop();
}
env.loadEnd = os.loadavg().map((x) => x.toFixed(2)).join(' ');
const addonAfter = addonInfo(OURS_DIR);
if (addonAfter.mtime !== addon.mtime) console.error(`WARNING: the addon changed during the run (${addon.mtime} → ${addonAfter.mtime}); children may have loaded different builds.`);
const elapsedS = (Date.now() - started) / 1000;

// =============================================================================================
// Report.
const us = (ns) => (Number.isFinite(ns) ? (ns / 1000 >= 100 ? Math.round(ns / 1000).toLocaleString('en-US') : (ns / 1000).toFixed(ns / 1000 >= 10 ? 1 : 2)) : '–');
const int = (x) => (Number.isFinite(x) ? Math.round(x).toLocaleString('en-US') : '–');
const ratio = (x) => (Number.isFinite(x) ? `${x.toFixed(2)}×` : '–');
const ms = (x) => (x >= 100 ? x.toFixed(0) : x >= 10 ? x.toFixed(1) : x.toFixed(3));
const out = [];
const line = (s = '') => out.push(s);
const cellOf = (g, id) => g.cells.find((c) => c.id === id);
const rangeOf = (o, b) => {
  const per = o.thirds.map((x, i) => x / b.thirds[i]).filter(Number.isFinite);
  return per.length ? `${ratio(Math.min(...per))}–${ratio(Math.max(...per))}` : '–';
};
const anyEnv = results.rw?.env ?? results.cold?.env ?? results.tags?.env ?? results.compress?.env;

line(`Run: ${env.date}, ${QUICK ? '**quick run** (`--quick`: short, treat as a smoke check)' : 'full run'}, ${elapsedS.toFixed(0)} s. `
  + `Machine: ${env.nproc} CPUs (${env.cpu}), load average ${env.loadStart} at start, ${env.loadEnd} at end. `
  + `Node ${env.node}, ${env.redis.replace(/ sha=.*/, '')} (${env.redisInfo ?? ''}), ioredis ${anyEnv?.ioredisVersion ?? '?'}. HEAD ${env.head}.`);
line();
line(`- **ours**: ${path.relative(ROOT, OURS_INDEX) || OURS_INDEX} \`createUseCacheHandler({ redis, namespace, l1MaxBytes, compressMinBytes })\`, addon ${path.relative(ROOT, addon.file) || addon.file} (${addon.sizeMB} MB, built ${addon.mtime}, ${addon.debug ? '**DEBUG build: not representative, rebuild with `npm run build`**' : 'release build'}).`);
line(`- **ioredis**: one client per contender, \`enableAutoPipelining: false\` (and a second client with \`true\` for the 64-in-flight rows); \`getBuffer(key)\` of the same payload bytes stored under a plain key; \`set(key, buf, 'PX', 3600000)\`.`);
line(`- One redis-server for the whole run, on loopback, \`--save '' --appendonly no\`; client, server and load generator share the same ${env.nproc} CPUs. GC: ${env.gc}. Timer cost ${results.rw?.env.timerNs ?? '?'} ns per op (included).`);
if (opt('note')) line(`- Note: ${opt('note')}`);
if (results.rw?.seq) line(`- One in flight: interleaved rounds of ${T.seq.sliceMs} ms slices (order flipped every round). ${CONC} in flight: slices of ${T.c64.sliceMs} ms (${T.c64.bigSliceMs} ms for 256 KB and up), same interleaving; no op starts after a slice's deadline, ops/s = ops completed ÷ wall time of the slices.`);
if (results.rw) {
  const sum = (k) => results.rw.children.reduce((a, x) => a + x.counters[k], 0);
  const c = { gets: sum('gets'), sets: sum('sets'), l2Hits: sum('l2Hits'), l1Hits: sum('l1Hits'), l2Misses: sum('l2Misses'), l2Errors: sum('l2Errors'), l2Writes: sum('l2Writes'), l2WriteErrors: sum('l2WriteErrors'), breaker: [...new Set(results.rw.children.map((x) => x.counters.breaker))].join('/') };
  line(`- One child process per value size (${results.rw.children.map((x) => `${sizeName(x.size)}: ${(x.budget.seqMs / 1000).toFixed(2)} s per cell one in flight, ${(x.budget.c64Ms / 1000).toFixed(2)} s at ${CONC} in flight`).join('; ')}), so each child's memory stays bounded (the "Memory held" table checks that L2 hits hold nothing once collected); refreshTags and the building blocks run in the ${sizeName(SIZES[0])} child.`);
  line(`- L2, not L1: ours ran with \`l1MaxBytes: 1\`; over the run ${int(c.gets)} gets were issued and \`stats()\` counted **${int(c.l2Hits)} L2 hits, ${c.l1Hits} L1 hits**, ${c.l2Misses} L2 misses, ${c.l2Errors} errors; ${int(c.l2Writes)} L2 writes for ${int(c.sets)} sets (${c.l2WriteErrors} errors); breaker ${c.breaker}. Values are random (incompressible) and \`compressMinBytes: 0\`; ours stores an envelope (stored length ${Object.entries(results.rw.storedLen).map(([s, n]) => `${sizeName(Number(s))}: ${int(n)} B`).join(', ')}).`);
}
line();

const rw = results.rw;
if (rw?.seq) {
  line('### L2 hit: `get` + reading the stream (reader loop, no copy) vs ioredis `getBuffer`, one in flight');
  line();
  line('| size | ours p50 / p99 / mean µs | ioredis p50 / p99 / mean µs | **ours/ioredis p50** (per-third range) | ours/ioredis mean | ours p99/p50 | ioredis p99/p50 | ioredis + stream p50 / p99 µs | **ours/(ioredis + stream) p50** (per-third range) |');
  line('|---|---|---|---|---|---|---|---|---|');
  for (const g of rw.seq.filter((g) => g.kind === 'get')) {
    const o = cellOf(g, 'ours');
    const b = cellOf(g, 'ioredis');
    const w = cellOf(g, IO_STREAM);
    line(`| ${sizeName(g.size)} | ${us(o.p50)} / ${us(o.p99)} / ${us(o.mean)} | ${us(b.p50)} / ${us(b.p99)} / ${us(b.mean)} | **${ratio(o.p50 / b.p50)}** (${rangeOf(o, b)}) | ${ratio(o.mean / b.mean)} | ${ratio(o.p99 / o.p50)} | ${ratio(b.p99 / b.p50)} | ${us(w.p50)} / ${us(w.p99)} | **${ratio(o.p50 / w.p50)}** (${rangeOf(o, w)}) |`);
  }
  line();
  line(`*ioredis + stream*: the same \`getBuffer\`, then the entry object and the \`ReadableStream\` over the bytes that Next requires of a handler, read with the same reader loop: the least any handler written in JS on ioredis does per hit (no envelope, no tag checks).`);
  line();
  line('### L2 `set` (new ReadableStream + `handler.set`, resolves after Redis took it) vs ioredis `set PX`, one in flight');
  line();
  line('| size | ours p50 / p99 / mean µs | ioredis p50 / p99 / mean µs | **ours/ioredis p50** (per-third range) | ours/ioredis mean | ioredis + stream p50 / p99 µs | **ours/(ioredis + stream) p50** (per-third range) |');
  line('|---|---|---|---|---|---|---|');
  for (const g of rw.seq.filter((g) => g.kind === 'set')) {
    const o = cellOf(g, 'ours');
    const b = cellOf(g, 'ioredis');
    const w = cellOf(g, IO_STREAM);
    line(`| ${sizeName(g.size)} | ${us(o.p50)} / ${us(o.p99)} / ${us(o.mean)} | ${us(b.p50)} / ${us(b.p99)} / ${us(b.mean)} | **${ratio(o.p50 / b.p50)}** (${rangeOf(o, b)}) | ${ratio(o.mean / b.mean)} | ${us(w.p50)} / ${us(w.p99)} | **${ratio(o.p50 / w.p50)}** (${rangeOf(o, w)}) |`);
  }
  line();
  line(`*ioredis + stream* for \`set\`: the entry Next hands over (a new \`ReadableStream\` over the value), read with the same reader loop, then the same \`set PX\`.`);
  line();
}
if (rw?.c64) {
  for (const kind of ['get', 'set']) {
    line(`### ${kind === 'get' ? 'L2 hit `get` + read' : 'L2 `set`'}, ${CONC} in flight (one connection each): throughput and per-op latency`);
    line();
    line(`| size | ours ops/s (p50 / p99 ms) | ioredis ops/s (p50 / p99 ms) | ioredis autoPipelining ops/s (p50 / p99 ms) | **ours/ioredis ops/s** | ours/ioredis-AP ops/s | ioredis + stream ops/s (p50 / p99 ms) | **ours/(ioredis + stream) ops/s** |`);
    line('|---|---|---|---|---|---|---|---|');
    for (const g of rw.c64.filter((g) => g.kind === kind)) {
      const [o, b, a] = ['ours', 'ioredis', 'ioredis autoPipelining'].map((id) => cellOf(g, id));
      const f = (c) => `${int(c.throughput)} (${ms(c.p50 / 1e6)} / ${ms(c.p99 / 1e6)})`;
      const w = cellOf(g, IO_STREAM);
      line(`| ${sizeName(g.size)} | ${f(o)} | ${f(b)} | ${f(a)} | **${ratio(o.throughput / b.throughput)}** | ${ratio(o.throughput / a.throughput)} | ${f(w)} | **${ratio(o.throughput / w.throughput)}** |`);
    }
    line();
  }
  line(`### Where the ${CONC}-in-flight time goes: CPU per op (this Node process incl. its native threads; redis-server from /proc, 10 ms ticks) and main-thread (event loop) utilization`);
  line();
  line('| op | size | contender | ops/s | Node process CPU µs/op | redis-server CPU µs/op | event loop utilization |');
  line('|---|---|---|---|---|---|---|');
  for (const g of rw.c64) for (const c of g.cells) {
    line(`| ${g.kind === 'hop' ? 'no value' : g.kind} | ${g.size ? sizeName(g.size) : '–'} | ${c.id} | ${int(c.throughput)} | ${c.cpuUsPerOp.toFixed(1)} | ${Number.isFinite(c.redisUsPerOp) ? c.redisUsPerOp.toFixed(1) : '–'} | ${(100 * c.elu).toFixed(0)} % |`);
  }
  line();
}
if (rw?.seq) {
  const refresh = rw.seq.find((g) => g.kind === 'refresh');
  const o = cellOf(refresh, 'ours');
  const b = cellOf(refresh, 'ioredis');
  line('### `refreshTags()` when nothing changed (one round trip: a Lua read of the invalidation log) vs ioredis `PING`, one in flight');
  line();
  line('| call | p50 µs | p99 µs | mean µs | ours/PING p50 (per-third range) |');
  line('|---|---|---|---|---|');
  line(`| ours \`refreshTags()\` | ${us(o.p50)} | ${us(o.p99)} | ${us(o.mean)} | **${ratio(o.p50 / b.p50)}** (${rangeOf(o, b)}) |`);
  line(`| ioredis \`ping()\` | ${us(b.p50)} | ${us(b.p99)} | ${us(b.mean)} | |`);
  line();

  line('### Where the time of an L2 hit goes (p50 / p99 µs, same process, interleaved with the rows above)');
  line();
  line('| size | ioredis `getBuffer` | `native.ucGetRemote(key, softTags)` alone | `handler.get`, stream not read | `handler.get` + read (ours above) | native − ioredis | JS wrapper (get not read − native) | reading the stream (get+read − get) |');
  line('|---|---|---|---|---|---|---|---|');
  for (const g of rw.seq.filter((g) => g.kind === 'get')) {
    const [b, n, nr, o] = ['ioredis', 'native.ucGetRemote', 'handler.get, stream not read', 'ours'].map((id) => cellOf(g, id));
    const pp = (c) => (c ? `${us(c.p50)} / ${us(c.p99)}` : '– (not run for big values)');
    line(`| ${sizeName(g.size)} | ${pp(b)} | ${pp(n)} | ${pp(nr)} | ${pp(o)} | ${us(n.p50 - b.p50)} | ${nr ? us(nr.p50 - n.p50) : `${us(o.p50 - n.p50)} (wrapper + read)`} | ${nr ? us(o.p50 - nr.p50) : '–'} |`);
  }
  line();
  line('| set: size | ioredis `set PX` | `native.ucSetRemote(key, buf, …)` alone | `handler.set` (ours above) | native − ioredis | stream + JS wrapper (set − native) |');
  line('|---|---|---|---|---|---|');
  for (const g of rw.seq.filter((g) => g.kind === 'set')) {
    const [b, n, o] = ['ioredis', 'native.ucSetRemote', 'ours'].map((id) => cellOf(g, id));
    const pp = (c) => `${us(c.p50)} / ${us(c.p99)}`;
    line(`| ${sizeName(g.size)} | ${pp(b)} | ${pp(n)} | ${pp(o)} | ${us(n.p50 - b.p50)} | ${us(o.p50 - n.p50)} |`);
  }
  line();
  line('| building block | size | p50 µs | p99 µs | mean µs |');
  line('|---|---|---|---|---|');
  for (const c of rw.misc ?? []) line(`| ${c.id} | ${c.size ? sizeName(c.size) : '–'} | ${us(c.p50)} | ${us(c.p99)} | ${us(c.mean)} |`);
  line();
}
const cold = results.cold;
if (cold) {
  line('### L2 hit on the first read of a key in this process (the production path: promoted into a 64 MiB L1) vs ioredis `getBuffer`, one in flight');
  line();
  line(`Distinct keys written beforehand by another process; each read once, alternating with an ioredis GET op by op (order flipped every op). \`stats()\`: ${int(cold.counters.l2Hits)} L2 hits for ${int(cold.counters.gets)} gets, ${cold.counters.l1Hits} L1 hits; afterwards L1 held ${int(cold.counters.l1Entries)} entries (${int(cold.counters.evictions)} evicted) and ${int(cold.mem.jsViews)} live views, RSS ${(cold.mem.rss / MiB).toFixed(0)} MB.`);
  line();
  line('| size | reads | ours p50 / p99 / mean µs | ioredis p50 / p99 / mean µs | **ours/ioredis p50** | ours/ioredis mean | ioredis + stream p50 / p99 µs | **ours/(ioredis + stream) p50** | same-size ours p50 with `l1MaxBytes: 1` (table above) |');
  line('|---|---|---|---|---|---|---|---|---|');
  for (const r of cold.seq) {
    const o = r.ours;
    const b = r.ioredis;
    const w = r.ioredisStream;
    const ref = rw?.seq?.find((x) => x.kind === 'get' && x.size === r.size);
    line(`| ${sizeName(r.size)} | ${int(r.n)} | ${us(o.p50)} / ${us(o.p99)} / ${us(o.mean)} | ${us(b.p50)} / ${us(b.p99)} / ${us(b.mean)} | **${ratio(o.p50 / b.p50)}** | ${ratio(o.mean / b.mean)} | ${us(w.p50)} / ${us(w.p99)} | **${ratio(o.p50 / w.p50)}** | ${ref ? us(cellOf(ref, 'ours').p50) : '–'} |`);
  }
  line();
  const c = cold.c64;
  line(`${CONC} in flight, ${sizeName(c.size)}, first reads: ours ${int(c.ours.throughput)} ops/s (p50 ${ms(c.ours.p50 / 1e6)} ms, p99 ${ms(c.ours.p99 / 1e6)} ms, Node CPU ${c.ours.cpuUsPerOp.toFixed(1)} µs/op) vs ioredis ${int(c.ioredis.throughput)} ops/s (p50 ${ms(c.ioredis.p50 / 1e6)} ms, p99 ${ms(c.ioredis.p99 / 1e6)} ms, ${c.ioredis.cpuUsPerOp.toFixed(1)} µs/op): **${ratio(c.ours.throughput / c.ioredis.throughput)}**`
    + (c.ioredisStream ? `; vs ioredis + stream ${int(c.ioredisStream.throughput)} ops/s (${c.ioredisStream.cpuUsPerOp.toFixed(1)} µs/op): **${ratio(c.ours.throughput / c.ioredisStream.throughput)}**.` : '.'));
  line();
}
if (rw?.children) {
  line('### Memory held after each child (full GC, then `process.memoryUsage()` and `stats().l1.jsViews`): L2 hits with `l1MaxBytes: 1`');
  line();
  line('| child (value size) | L2 hits in the child | `jsViews` after GC | external MB | RSS MB | external bytes per L2 hit |');
  line('|---|---|---|---|---|---|');
  for (const x of rw.children) {
    const mm = x.mem;
    line(`| ${sizeName(x.size)} | ${int(mm.l2Hits)} | ${int(mm.jsViews)} | ${(mm.external / MiB).toFixed(0)} | ${(mm.rss / MiB).toFixed(0)} | ${int(mm.external / mm.l2Hits)} |`);
  }
  line();
}
if (results.compress) {
  const cmp = results.compress;
  line('### Default `compressMinBytes` (4 KiB) on incompressible values: ours (compression tried) vs ioredis, one in flight, separate process');
  line();
  line(`Stored length with compression tried: ${Object.entries(cmp.storedLen).map(([s, n]) => `${sizeName(Number(s))}: ${int(n)} B`).join(', ')} (LZ4 did not shrink them, so they are stored raw).`);
  line();
  line('| op | size | ours p50 / p99 µs | ioredis p50 / p99 µs | ours/ioredis p50 (per-third) | with `compressMinBytes: 0` (rw rows above): ours p50 µs, ours/ioredis |');
  line('|---|---|---|---|---|---|');
  for (const g of cmp.groups) {
    const o = cellOf(g, 'ours');
    const b = cellOf(g, 'ioredis');
    const ref = rw?.seq?.find((x) => x.kind === g.kind && x.size === g.size);
    const refR = ref ? `${us(cellOf(ref, 'ours').p50)}, ${ratio(cellOf(ref, 'ours').p50 / cellOf(ref, 'ioredis').p50)}` : '–';
    line(`| ${g.kind} | ${sizeName(g.size)} | ${us(o.p50)} / ${us(o.p99)} | ${us(b.p50)} / ${us(b.p99)} | **${ratio(o.p50 / b.p50)}** (${rangeOf(o, b)}) | ${refR} |`);
  }
  line();
}
const tg = results.tags;
let tagRows = [];
if (tg) {
  line(`### \`updateTags([tag])\` vs the number of entries carrying the tag (+${int(tg.unrelated)} unrelated entries of 1 KB; median of ${tg.reps} reps, each on a fresh tag the same N entries carry)`);
  line();
  line(`Store before the calls: ${int(tg.dbsize)} Redis keys, used_memory ${(tg.usedMemory / MiB).toFixed(0)} MB; ours' L1 held ${int(tg.l1Entries)} entries (${(tg.l1Bytes / MiB).toFixed(0)} MB, \`l1MaxBytes\` 512 MiB), so the local L1 holds the tagged entries too. `
    + `Fill (not measured, ${CONC} in flight through \`handler.set\`): ${Object.entries(tg.fillS).map(([k, s]) => `${k === 'unrelated' ? 'unrelated' : `N=${int(Number(k))}`} ${s.toFixed(1)} s`).join(', ')}. `
    + `Round trip floor on the same machine: ioredis PING p50 ${us(tg.ping.p50)} µs, p99 ${us(tg.ping.p99)} µs.`);
  line();
  line('| N entries with the tag | e2e ms p50 (min–max) | next PING after, ms p50 | scripts per call | commands the call ran (INFO commandstats, script inside included) | Redis busy µs p50 (SLOWLOG: the script) | longest single command µs p50 (max of reps) | after the call |');
  line('|---|---|---|---|---|---|---|---|');
  for (const n of tg.ns) {
    const rs = tg.runs.filter((r) => r.n === n);
    const med = (f) => summarize(rs.map(f)).p50;
    const e2e = rs.map((r) => r.ms);
    const worst = rs.reduce((a, r) => (r.longest.usec > a.longest.usec ? r : a), rs[0]);
    const cmdNames = [...new Set(rs.flatMap((r) => Object.keys(r.cmdstats)))].sort();
    const callsPer = cmdNames.map((k) => `${k} ${summarize(rs.map((r) => r.cmdstats[k]?.calls ?? 0)).p50}`).join(', ');
    const row = { n, p50: med((r) => r.ms), min: Math.min(...e2e), max: Math.max(...e2e), longest: worst.longest.usec, redisUsec: med((r) => r.redisUsec) };
    tagRows.push(row);
    const scripts = [...new Set(rs.map((r) => r.scripts))].join('/');
    line(`| ${int(n)} | **${ms(row.p50)}** (${ms(row.min)}–${ms(row.max)}) | ${ms(med((r) => r.pingAfterMs))} | ${scripts} EVALSHA | ${int(med((r) => r.redisCalls))}: ${callsPer} | ${int(row.redisUsec)} | ${int(med((r) => r.longest.usec))} (**${int(worst.longest.usec)}**, ${worst.longest.name} with ${worst.longest.nargs} args) | tagged entry misses, unrelated entry hits (checked every rep) |`);
  }
  line();
  const base = tagRows[0];
  const last = tagRows[tagRows.length - 1];
  line(`Flatness: p50 at N=${int(last.n)} ÷ p50 at N=${int(base.n)} = **${ratio(last.p50 / base.p50)}**; Redis busy ${int(base.redisUsec)} → ${int(last.redisUsec)} µs. Tag records held after the run: ${int(tg.tagRecordsAfter)}. `
    + `The first invalidation of the run (tag \`${tg.first.tag}\`, on no entry; it creates the namespace's tag state: epoch, log) is not in the table: ${ms(tg.first.ms)} ms, longest command ${int(tg.first.longest.usec)} µs (${tg.first.longest.name}), ${tg.first.redisCalls} commands.`);
  line();
}

// Targets.
const targets = [];
if (rw?.seq) {
  const g = (s) => rw.seq.find((x) => x.kind === 'get' && x.size === s);
  for (const s of SIZES.filter((s) => s <= 16384)) {
    const o = cellOf(g(s), 'ours');
    const b = cellOf(g(s), 'ioredis');
    const x = o.p50 / b.p50;
    const per = o.thirds.map((v, i) => v / b.thirds[i]);
    const verdict = x <= 1.0 ? 'yes' : Math.min(...per) <= 1.0 ? 'within noise (one third ≤ 1.0×)' : 'no';
    targets.push([`L2 hit ${sizeName(s)}, one in flight: ≤ 1.0× ioredis GET (p50)`, `${us(o.p50)} vs ${us(b.p50)} µs = ${ratio(x)}`, verdict]);
  }
  for (const s of SIZES) {
    const o = cellOf(g(s), 'ours');
    const w = cellOf(g(s), IO_STREAM);
    targets.push([`(interface floor) L2 hit ${sizeName(s)}, one in flight: ≤ 1.0× ioredis + the stream Next requires (p50)`, `${us(o.p50)} vs ${us(w.p50)} µs = ${ratio(o.p50 / w.p50)}`, o.p50 <= w.p50 ? 'yes' : 'no']);
  }
  const floors = { 262144: 42, 1048576: 122 };
  for (const s of SIZES.filter((s) => floors[s])) {
    const o = cellOf(g(s), 'ours');
    const b = cellOf(g(s), 'ioredis');
    const lim = 2 * floors[s];
    const p50ok = o.p50 / 1000 <= lim;
    const flat = o.p99 / o.p50 <= 2;
    targets.push([`L2 hit ${sizeName(s)}: p50 ≤ 2× the anchors' TCP floor (${floors[s]} µs → ${lim} µs), p99 flat (≤ 2× p50)`,
      `p50 ${us(o.p50)} µs (${ratio(o.p50 / 1000 / floors[s])} floor), p99 ${us(o.p99)} µs (${ratio(o.p99 / o.p50)} p50); ioredis p50 ${us(b.p50)}, p99 ${us(b.p99)} µs`,
      `${p50ok ? 'p50 yes' : 'p50 no'}; ${flat ? 'p99 flat' : 'p99 not flat'}`]);
  }
  for (const s of SIZES.filter((s) => s <= 16384)) {
    const o = cellOf(g(s), 'ours');
    const peer = { 1024: 219, 16384: 238 }[s];
    if (peer) targets.push([`L2 hit ${sizeName(s)}: ≥ 8× faster than the peer handler (anchors: forte ${peer} µs p50; not this run)`, `${ratio(peer / (o.p50 / 1000))} faster`, peer / (o.p50 / 1000) >= 8 ? 'yes (cross-run)' : 'no (cross-run)']);
  }
}
if (rw?.c64) {
  const g = rw.c64.find((x) => x.kind === 'get' && x.size === SIZES[0]);
  if (g) {
    const [o, b, a] = ['ours', 'ioredis', 'ioredis autoPipelining'].map((id) => cellOf(g, id));
    targets.push([`L2 get ${sizeName(SIZES[0])}, ${CONC} in flight: throughput ≥ ioredis`, `${int(o.throughput)} vs ${int(b.throughput)} ops/s = ${ratio(o.throughput / b.throughput)} (vs autoPipelining ${int(a.throughput)}: ${ratio(o.throughput / a.throughput)})`, o.throughput >= b.throughput ? (o.throughput >= a.throughput ? 'yes (both)' : 'yes (not vs autoPipelining)') : 'no']);
    const w = cellOf(g, IO_STREAM);
    targets.push([`(interface floor) L2 get ${sizeName(SIZES[0])}, ${CONC} in flight: throughput ≥ ioredis + the stream Next requires`, `${int(o.throughput)} vs ${int(w.throughput)} ops/s = ${ratio(o.throughput / w.throughput)}`, o.throughput >= w.throughput ? 'yes' : 'no']);
    targets.push([`L2 get ${sizeName(SIZES[0])}, ${CONC} in flight: ≥ 5× the best peer (anchors: 22 k/s; not this run)`, `${ratio(o.throughput / 22237)}`, o.throughput >= 5 * 22237 ? 'yes (cross-run)' : 'no (cross-run)']);
  }
}
if (cold) {
  for (const r of cold.seq.filter((x) => x.size <= 16384)) {
    targets.push([`(production path) L2 first read ${sizeName(r.size)}, one in flight: ≤ 1.0× ioredis GET (p50)`, `${us(r.ours.p50)} vs ${us(r.ioredis.p50)} µs = ${ratio(r.ours.p50 / r.ioredis.p50)}`, r.ours.p50 <= r.ioredis.p50 ? 'yes' : 'no']);
    if (r.ioredisStream) targets.push([`(production path, interface floor) L2 first read ${sizeName(r.size)}, one in flight: ≤ 1.0× ioredis + the stream Next requires (p50)`, `${us(r.ours.p50)} vs ${us(r.ioredisStream.p50)} µs = ${ratio(r.ours.p50 / r.ioredisStream.p50)}`, r.ours.p50 <= r.ioredisStream.p50 ? 'yes' : 'no']);
  }
  const floors = { 262144: 42, 1048576: 122 };
  for (const r of cold.seq.filter((x) => floors[x.size])) {
    const lim = 2 * floors[r.size];
    targets.push([`(production path) L2 first read ${sizeName(r.size)}: p50 ≤ ${lim} µs, p99 ≤ 2× p50`, `p50 ${us(r.ours.p50)} µs (${ratio(r.ours.p50 / 1000 / floors[r.size])} floor), p99 ${us(r.ours.p99)} µs (${ratio(r.ours.p99 / r.ours.p50)}); ioredis p50 ${us(r.ioredis.p50)}, p99 ${us(r.ioredis.p99)} µs`, `${r.ours.p50 / 1000 <= lim ? 'p50 yes' : 'p50 no'}; ${r.ours.p99 / r.ours.p50 <= 2 ? 'p99 flat' : 'p99 not flat'}`]);
  }
  const c = cold.c64;
  targets.push([`(production path) L2 first reads ${sizeName(c.size)}, ${CONC} in flight: throughput ≥ ioredis`, `${int(c.ours.throughput)} vs ${int(c.ioredis.throughput)} ops/s = ${ratio(c.ours.throughput / c.ioredis.throughput)}`, c.ours.throughput >= c.ioredis.throughput ? 'yes' : 'no']);
  if (c.ioredisStream) targets.push([`(production path, interface floor) L2 first reads ${sizeName(c.size)}, ${CONC} in flight: throughput ≥ ioredis + the stream Next requires`, `${int(c.ours.throughput)} vs ${int(c.ioredisStream.throughput)} ops/s = ${ratio(c.ours.throughput / c.ioredisStream.throughput)}`, c.ours.throughput >= c.ioredisStream.throughput ? 'yes' : 'no']);
}
if (tagRows.length) {
  const worst = Math.max(...tagRows.map((r) => r.p50));
  const longest = Math.max(...tagRows.map((r) => r.longest));
  const flat = tagRows[tagRows.length - 1].p50 / tagRows[0].p50;
  targets.push(['updateTags: ≤ 1 ms end to end at every N', `max p50 ${ms(worst)} ms`, worst <= 1 ? 'yes' : 'no']);
  targets.push(['updateTags: flat in N', `p50 N=${int(tagRows[tagRows.length - 1].n)} ÷ N=${int(tagRows[0].n)} = ${ratio(flat)}`, flat <= 1.5 ? 'yes' : 'no']);
  targets.push(['updateTags: no Redis command over 50 µs', `longest ${int(longest)} µs`, longest <= 50 ? 'yes' : 'no']);
}
if (targets.length) {
  line('### Targets (from /work/shared/docs/perf-anchors.md)');
  line();
  line('| target | measured | met? |');
  line('|---|---|---|');
  for (const t of targets) line(`| ${t.join(' | ')} |`);
  line();
}

const report = out.join('\n');
console.log('\n' + report);

saveRaw('l2-', env.date, QUICK, { env, T, sizes: SIZES, addon, results });
writeSection({
  write: flag('write') || (!QUICK && !flag('no-write')),
  quick: QUICK,
  begin: '<!-- BEGIN GENERATED L2 by bench/l2.mjs: everything up to END GENERATED L2 is overwritten -->',
  end: '<!-- END GENERATED L2 -->',
  report,
  what: 'L2 section',
});
