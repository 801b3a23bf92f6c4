#!/usr/bin/env node
// strata-cache bench: L1 'use cache' hit/set, ours vs Next's built-in handler, same run.
//
//   npm run bench                   full run (~2.5 min), writes bench/RESULTS.md
//   node bench/run.mjs --quick      smoke run (~35 s), prints only (add --write to record it)
//
// Flags: --quick, --write / --no-write, --only=builtin|ours, --no-gc, --sizes=1024,16384,
//        --ours=PATH (bench another build of ours: a module with createUseCacheHandler or a default handler),
//        --note="text" (a line recorded with the results),
//        --via-use-cache (ours = use-cache.js's default export, as a Next app configures it, instead
//        of createUseCacheHandler({ l1MaxBytes })),
//        --aa (A/A control: a second built-in instance in place of ours, to see the method's precision)
// See bench/RESULTS.md for what is measured and how to read it.
import { spawnSync } from 'node:child_process';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { randomBytes } from 'node:crypto';
import { runInterleaved, summarize, thirds, timerOverheadNs } from './lib/engine.mjs';
import { runConditions, saveRaw, writeSection } from './lib/report.mjs';
import {
  ROOT, NEXT_VERSION, createBuiltin, createOurs, addonInfo, streamFromBuffer, streamToBuffer, streamOf,
  readNoCopy, cacheKey, entryOf, SOFT_TAGS,
} from './lib/contenders.mjs';

const HERE = path.dirname(fileURLToPath(import.meta.url));
const argv = process.argv.slice(2);
const flag = (name) => argv.includes(`--${name}`);
const opt = (name) => {
  const a = argv.find((x) => x.startsWith(`--${name}=`));
  return a ? a.slice(name.length + 3) : undefined;
};

// Re-execute with --expose-gc so GC can run between slices (outside the timed region).
if (typeof globalThis.gc !== 'function' && !flag('no-gc')) {
  const r = spawnSync(process.execPath, ['--expose-gc', ...process.execArgv, fileURLToPath(import.meta.url), ...argv], { stdio: 'inherit' });
  process.exit(r.status ?? 1);
}
const gc = flag('no-gc') ? undefined : globalThis.gc;
if (flag('via-use-cache')) process.env.STRATA_BENCH_VIA_USE_CACHE = '1';
if (flag('aa')) process.env.STRATA_BENCH_OURS = path.join(HERE, 'lib', 'aa-control.cjs');
else if (opt('ours')) process.env.STRATA_BENCH_OURS = path.resolve(opt('ours')); // memory children inherit it

// L1 only: this bench measures the in-process path, so no Redis URL may leak in from the
// environment (ours reads STRATA_REDIS_URL, then REDIS_URL). Children inherit the cleared env.
const clearedEnv = ['STRATA_REDIS_URL', 'REDIS_URL', 'STRATA_REDIS_CLUSTER', 'STRATA_L1_MAX_BYTES'].filter((k) => k in process.env);
for (const k of clearedEnv) delete process.env[k];

const MiB = 1024 * 1024;
const L1_BYTES = 64 * MiB;
const QUICK = flag('quick');
const SIZES = (opt('sizes') || '1024,16384,262144,1048576').split(',').map(Number);
const sizeName = (n) => (n >= MiB ? `${n / MiB} MB` : `${n / 1024} KB`);
const T = QUICK
  ? { warmupMs: 100, measureMs: 600, sliceMs: 20, whereMs: 250 }
  : { warmupMs: 250, measureMs: 3500, sliceMs: 25, whereMs: 1200 };

// ---------------------------------------------------------------------------------------------
// Memory child: one fresh process per contender, fill 64 MiB, report process.memoryUsage().
if (opt('memory-child')) {
  await memoryChild(opt('memory-child'));
  process.exit(0);
}

async function memoryChild(which) {
  const VALUE = 16 * 1024;
  const COUNT = (64 * MiB) / VALUE; // 4096 entries of 16 KB = 64 MiB of values
  const ours = which === 'builtin' ? undefined : createOurs(128 * MiB);
  const h = ours ? ours.handler : createBuiltin(128 * MiB);
  const statsFn = ours?.module?.stats ?? h.stats;
  const src = randomBytes(VALUE);
  const mem = () => {
    gc(); gc();
    const m = process.memoryUsage();
    return { rss: m.rss, heapUsed: m.heapUsed, external: m.external, arrayBuffers: m.arrayBuffers };
  };
  // One set and get first, so lazily created state (runtime threads, pools) is in the baseline.
  await h.set(cacheKey('warm', VALUE), Promise.resolve(entryOf(src)));
  await readNoCopy((await h.get(cacheKey('warm', VALUE), SOFT_TAGS)).value);
  const before = mem();
  const t0 = process.hrtime.bigint();
  for (let i = 0; i < COUNT; i++) await h.set(cacheKey('mem', VALUE, i), Promise.resolve(entryOf(src)));
  const fillMs = Number(process.hrtime.bigint() - t0) / 1e6;
  const afterFill = mem();
  let hits = 0;
  for (let i = 0; i < COUNT; i++) {
    const e = await h.get(cacheKey('mem', VALUE, i), SOFT_TAGS);
    if (e) { hits++; await readNoCopy(e.value); }
  }
  const afterRead = mem();
  // Hold every returned stream's bytes at once: shows whether a hit hands out views or copies.
  const held = [];
  for (let i = 0; i < 256; i++) {
    const e = await h.get(cacheKey('mem', VALUE, i), SOFT_TAGS);
    if (e) held.push(await readNoCopy(e.value));
  }
  const holding256 = mem();
  let stats;
  try { stats = typeof statsFn === 'function' ? await statsFn() : undefined; } catch { /* optional */ }
  process.stdout.write(JSON.stringify({ which, VALUE, COUNT, fillMs, hits, before, afterFill, afterRead, holding256, held: held.length, stats }));
}

// ---------------------------------------------------------------------------------------------
// Set up the contenders.
const contenders = [];
if (opt('only') !== 'ours') contenders.push({ name: 'built-in', short: 'builtin', handler: createBuiltin(L1_BYTES), how: `next ${NEXT_VERSION} createDefaultCacheHandler(${L1_BYTES})` });
let oursNote = '';
if (opt('only') !== 'builtin') {
  const o = createOurs(L1_BYTES);
  if (o.handler) {
    const addon = flag('aa') ? undefined : addonInfo(process.env.STRATA_BENCH_OURS ? path.dirname(process.env.STRATA_BENCH_OURS) : ROOT);
    const addonNote = addon ? ` — addon ${path.relative(ROOT, addon.file) || addon.file} (${addon.sizeMB} MB, built ${addon.mtime}${addon.debug ? ', **DEBUG build: unstripped, with DWARF; native calls are not representative, rebuild with `npm run build`**' : ', release build'})` : '';
    contenders.push({ name: flag('aa') ? 'ours=A/A' : 'ours', short: 'ours', handler: o.handler, how: o.how + addonNote, addon });
    if (addon?.debug) console.error('WARNING: ours is a debug build of the addon; its numbers are not representative (npm run build).');
  }
  else oursNote = `ours not measured: ${o.error}`;
}
if (oursNote) console.error(`note: ${oursNote}`);
if (contenders.length === 0) throw new Error('nothing to measure');

const values = new Map(SIZES.map((s) => [s, randomBytes(s)]));

// Fill the get keys and check that every contender hands back the same bytes.
for (const c of contenders) {
  for (const s of SIZES) {
    await c.handler.set(cacheKey('get', s), Promise.resolve(entryOf(values.get(s))));
    const e = await c.handler.get(cacheKey('get', s), SOFT_TAGS);
    if (!e) throw new Error(`${c.name}: miss right after set (${sizeName(s)})`);
    const got = await streamToBuffer(e.value);
    if (!got.equals(values.get(s))) throw new Error(`${c.name}: bytes differ after set/get (${sizeName(s)})`);
    for (const k of ['tags', 'stale', 'timestamp', 'expire', 'revalidate']) {
      if (!(k in e)) throw new Error(`${c.name}: get result lacks ${k}`);
    }
  }
}

const expectBytes = (size) => (r) => {
  if (r !== size) throw new Error(`expected ${size} bytes, got ${r} (a miss or a short stream)`);
};

// Main cells: get + reader (i), get + reader (ii), set, per size, one group per (op, size).
const OPS = [
  { id: 'get-i', label: 'get hit + read, reader (i) no copy' },
  { id: 'get-ii', label: 'get hit + read, reader (ii) streamToBuffer' },
  { id: 'set', label: 'set (new ReadableStream + set)' },
];
function mainCell(c, opId, size) {
  const h = c.handler;
  const src = values.get(size);
  if (opId === 'get-i') {
    return {
      id: `${c.short}:${opId}:${size}`, contender: c.name,
      prep: () => cacheKey('get', size),
      op: async (key) => {
        const e = await h.get(key, SOFT_TAGS);
        return e ? (await readNoCopy(e.value)).bytes : -1;
      },
      check: expectBytes(size),
    };
  }
  if (opId === 'get-ii') {
    return {
      id: `${c.short}:${opId}:${size}`, contender: c.name,
      prep: () => cacheKey('get', size),
      op: async (key) => {
        const e = await h.get(key, SOFT_TAGS);
        return e ? (await streamToBuffer(e.value)).byteLength : -1;
      },
      check: expectBytes(size),
    };
  }
  return {
    id: `${c.short}:${opId}:${size}`, contender: c.name,
    prep: () => cacheKey('set', size),
    op: (key) => h.set(key, Promise.resolve(entryOf(src))),
  };
}
const mainGroups = [];
for (const op of OPS) for (const s of SIZES) {
  mainGroups.push({ op: op.id, size: s, cells: contenders.map((c) => mainCell(c, op.id, s)) });
}

// "Where the time goes": building blocks, measured the same way, interleaved in the same phase.
const whereGroups = [];
const W = (label, op, opts = {}) => whereGroups.push({ label, ...opts, cells: [{ id: label, op, prep: opts.prep, check: opts.check }] });
W('harness: `await Promise.resolve()`', () => Promise.resolve());
W('`new ReadableStream` (enqueue + close), construct only', () => { streamOf(values.get(SIZES[0])); });
for (const s of SIZES) {
  const b = values.get(s);
  W(`wrap + reader (i), no copy`, async () => (await readNoCopy(streamFromBuffer(b))).bytes, { size: s, check: expectBytes(s) });
  W(`wrap + reader (ii) streamToBuffer`, async () => (await streamToBuffer(streamFromBuffer(b))).byteLength, { size: s, check: expectBytes(s) });
  W('`Buffer.concat([buf])` alone (the copy in reader ii and in set)', () => Buffer.concat([b]).byteLength, { size: s });
}
for (const c of contenders) {
  const h = c.handler;
  W(`${c.name}: \`getExpiration([])\`${c.short === 'ours' ? ' (native round trip proxy)' : ''}`, () => h.getExpiration([]), { contender: c.name });
  W(`${c.name}: \`getExpiration(softTags)\``, () => h.getExpiration(SOFT_TAGS), { contender: c.name });
  W(`${c.name}: get miss`, (key) => h.get(key, SOFT_TAGS), { contender: c.name, prep: () => cacheKey('absent', 0) });
  for (const s of [SIZES[0], SIZES[SIZES.length - 1]]) {
    W(`${c.name}: get hit, stream not read`, (key) => h.get(key, SOFT_TAGS), { contender: c.name, size: s, prep: () => cacheKey('get', s) });
  }
}

// ---------------------------------------------------------------------------------------------
const started = Date.now();
const timerNs = await timerOverheadNs();
const env = {
  ...runConditions(),
  gc: gc ? 'minor GC before every slice, full GC every round (outside timing)' : 'off (--no-gc)',
  quick: QUICK,
  timerNs,
};
console.log(`strata-cache bench — ${QUICK ? 'quick' : 'full'} run; node ${env.node}, next ${env.next}, ${env.nproc} CPUs (${env.cpu}), load ${env.loadavg}`);
for (const c of contenders) console.log(`  ${c.name}: ${c.how}`);
const mainRounds = Math.ceil(T.measureMs / T.sliceMs);
console.log(`main phase: ${mainGroups.length} groups × ${contenders.length} contenders, ${T.measureMs} ms measured per cell in ${mainRounds} interleaved rounds of ${T.sliceMs} ms slices…`);
const progress = (label) => (r, n) => {
  if (r >= 0 && (r % Math.max(1, Math.floor(n / 10)) === 0 || r === n - 1)) process.stderr.write(`\r  ${label}: round ${r + 1}/${n}   `);
};
await runInterleaved(mainGroups, { ...T, gc, onRound: progress('main') });
process.stderr.write('\n');
console.log(`where-the-time-goes phase: ${whereGroups.length} cells, ${T.whereMs} ms each…`);
await runInterleaved(whereGroups, { warmupMs: T.warmupMs / 2, measureMs: T.whereMs, sliceMs: T.sliceMs, gc, onRound: progress('where') });
process.stderr.write('\n');

console.log('memory phase: one fresh process per contender, filling 64 MiB of 16 KB entries…');
const memory = [];
for (const c of contenders) {
  const r = spawnSync(process.execPath, ['--expose-gc', fileURLToPath(import.meta.url), `--memory-child=${c.short}`], { encoding: 'utf8' });
  if (r.status !== 0) { memory.push({ which: c.name, error: (r.stderr || '').trim().split('\n').slice(-3).join(' ') }); continue; }
  memory.push({ ...JSON.parse(r.stdout), which: c.name });
}
const elapsedS = (Date.now() - started) / 1000;

// ---------------------------------------------------------------------------------------------
// Report.
const us = (ns) => (Number.isFinite(ns) ? (ns / 1000 >= 100 ? (ns / 1000).toFixed(0) : (ns / 1000).toFixed(ns / 1000 >= 10 ? 1 : 2)) : '–');
const int = (x) => (Number.isFinite(x) ? Math.round(x).toLocaleString('en-US') : '–');
const ratio = (x) => (Number.isFinite(x) ? `${x.toFixed(2)}×` : '–');
const mb = (b) => `${(b / MiB).toFixed(1)}`;
const findCell = (g, name) => g.cells.find((c) => c.contender === name);

const stats = new Map();
for (const g of mainGroups) for (const c of g.cells) {
  stats.set(c.id, { ...summarize(c.samples.view()), thirds: thirds(c.samples) });
}
const B = contenders.find((c) => c.short === 'builtin');
const O = contenders.find((c) => c.short === 'ours');
const out = [];
const line = (s = '') => out.push(s);

line(`Run: ${env.date}, ${QUICK ? '**quick run** (`--quick`, short: treat as a smoke check)' : 'full run'}, ${elapsedS.toFixed(0)} s. `
  + `Machine: ${env.nproc} CPUs (${env.cpu}), load average at start ${env.loadavg}. Node ${env.node}, next ${env.next}. `
  + `GC: ${env.gc}. Timer cost (two hrtime.bigint() calls): ${env.timerNs} ns per op, included in every figure.`);
line();
for (const c of contenders) line(`- **${c.name}**: ${c.how}`);
if (opt('note')) line(`- Note: ${opt('note')}`);
if (clearedEnv.length) line(`- Unset for this run (L1 only): ${clearedEnv.join(', ')}`);
if (oursNote) line(`- ${oursNote}`);
line(`- Per cell: ${(T.measureMs / 1000).toFixed(1)} s measured in ${mainRounds} interleaved rounds of ${T.sliceMs} ms, after ${T.warmupMs} ms warm-up. One op in flight.`);
line();

for (const op of OPS) {
  line(`### ${op.label}`);
  line();
  const head = ['size', ...contenders.map((c) => `${c.name} p50 / p99 / mean µs`), ...contenders.map((c) => `${c.name} ops/s`)];
  if (B && O) head.push('ours/built-in p50 (per-third range)', 'ours/built-in mean');
  line(`| ${head.join(' | ')} |`);
  line(`|${head.map(() => '---').join('|')}|`);
  for (const g of mainGroups.filter((g) => g.op === op.id)) {
    const row = [sizeName(g.size)];
    const st = contenders.map((c) => stats.get(findCell(g, c.name).id));
    for (const s of st) row.push(`${us(s.p50)} / ${us(s.p99)} / ${us(s.mean)}`);
    for (const s of st) row.push(int(s.opsPerSec));
    if (B && O) {
      const b = stats.get(findCell(g, B.name).id);
      const o = stats.get(findCell(g, O.name).id);
      const per = o.thirds.map((x, i) => x / b.thirds[i]).filter(Number.isFinite);
      row.push(`**${ratio(o.p50 / b.p50)}** (${ratio(Math.min(...per))}–${ratio(Math.max(...per))})`, ratio(o.mean / b.mean));
    }
    line(`| ${row.join(' | ')} |`);
  }
  line();
}

// Flatness: p50 at each size relative to the same contender's 1 KB p50.
line('### Flat across sizes? p50 at each size ÷ the same contender\'s p50 at the smallest size');
line();
{
  const head = ['op', 'contender', ...SIZES.map(sizeName)];
  line(`| ${head.join(' | ')} |`);
  line(`|${head.map(() => '---').join('|')}|`);
  for (const op of OPS) for (const c of contenders) {
    const gs = mainGroups.filter((g) => g.op === op.id);
    const base = stats.get(findCell(gs[0], c.name).id).p50;
    line(`| ${op.id} | ${c.name} | ${gs.map((g) => { const p = stats.get(findCell(g, c.name).id).p50; return `${us(p)} µs (${ratio(p / base)})`; }).join(' | ')} |`);
  }
  line();
}

// Targets.
if (B && O) {
  line('### Targets');
  line();
  line('| target | measured (p50) | met? |');
  line('|---|---|---|');
  const r = (op, s) => stats.get(`ours:${op}:${s}`).p50 / stats.get(`builtin:${op}:${s}`).p50;
  const perThird = (op, s) => {
    const o = stats.get(`ours:${op}:${s}`).thirds;
    const b = stats.get(`builtin:${op}:${s}`).thirds;
    return Math.min(...o.map((x, i) => x / b[i]));
  };
  for (const s of SIZES.filter((s) => s <= 16384)) for (const op of ['get-i', 'get-ii']) {
    const x = r(op, s);
    const verdict = x <= 1.0 ? 'yes' : perThird(op, s) <= 1.0 ? 'within noise (one third ≤ 1.0×)' : 'no';
    line(`| ${op} ${sizeName(s)}: ≤ 1.0× built-in | ${ratio(x)} | ${verdict} |`);
  }
  const oursBase = stats.get(`ours:get-i:${SIZES[0]}`).p50;
  for (const s of SIZES.filter((s) => s >= 262144)) {
    const x = stats.get(`ours:get-i:${s}`).p50 / oursBase;
    line(`| get-i ${sizeName(s)}: flat (ours p50 ≤ 1.25× its ${sizeName(SIZES[0])} p50) | ${ratio(x)} | ${x <= 1.25 ? 'yes' : 'no'} |`);
  }
  line();
}

// Where the time goes.
line('### Where the time goes (p50 / p99 µs, same process, interleaved)');
line();
line('| building block | size | p50 µs | p99 µs | mean µs |');
line('|---|---|---|---|---|');
const whereStats = new Map();
for (const g of whereGroups) {
  const s = summarize(g.cells[0].samples.view());
  whereStats.set(`${g.label}|${g.size ?? ''}`, s);
  line(`| ${g.label} | ${g.size ? sizeName(g.size) : '–'} | ${us(s.p50)} | ${us(s.p99)} | ${us(s.mean)} |`);
}
line();
{
  const wrapRead = (s) => whereStats.get(`wrap + reader (i), no copy|${s}`)?.p50;
  const construct = whereStats.get('`new ReadableStream` (enqueue + close), construct only|')?.p50;
  line('Derived (p50 differences, indicative only — p50s do not subtract exactly):');
  line();
  line(`- reading a one-chunk stream with reader (i) ≈ wrap + read − construct = ${us(wrapRead(SIZES[0]) - construct)} µs`);
  for (const c of contenders) {
    const parts = SIZES.map((s) => `${sizeName(s)} ${us(stats.get(`${c.short}:get-i:${s}`).p50 - wrapRead(s))}`);
    line(`- ${c.name}: get hit + reader (i) − bare wrap + reader (i) = handler's own cost per hit: ${parts.join(', ')} µs`);
  }
  line();
}

// Memory.
line('### Memory: 64 MiB of values (4096 × 16 KB), fresh process per contender');
line();
line('| contender | state | RSS MB | heapUsed MB | external MB | arrayBuffers MB |');
line('|---|---|---|---|---|---|');
for (const m of memory) {
  if (m.error) { line(`| ${m.which} | failed: ${m.error} | | | | |`); continue; }
  const rowM = (state, x) => line(`| ${m.which} | ${state} | ${mb(x.rss)} | ${mb(x.heapUsed)} | ${mb(x.external)} | ${mb(x.arrayBuffers)} |`);
  rowM('before fill', m.before);
  rowM(`after fill (${int(m.fillMs)} ms for ${m.COUNT} sets)`, m.afterFill);
  rowM(`after reading all once (${m.hits}/${m.COUNT} hits), refs dropped`, m.afterRead);
  rowM(`holding the bytes of ${m.held} hits (4 MiB)`, m.holding256);
  const d = (k) => mb(m.afterFill[k] - m.before[k]);
  line(`| ${m.which} | **Δ fill** | **${d('rss')}** | **${d('heapUsed')}** | **${d('external')}** | **${d('arrayBuffers')}** |`);
}
line();

const report = out.join('\n');
console.log('\n' + report);

// Raw numbers (gitignored) and RESULTS.md.
const raw = {
  env, T, sizes: SIZES, contenders: contenders.map((c) => ({ name: c.name, how: c.how })),
  main: Object.fromEntries(stats), where: Object.fromEntries(whereStats), memory,
};
saveRaw('', env.date, QUICK, raw);
writeSection({
  write: flag('write') || (!QUICK && !flag('no-write')),
  quick: QUICK,
  begin: '<!-- BEGIN GENERATED by bench/run.mjs: everything up to END is overwritten -->',
  end: '<!-- END GENERATED -->',
  report,
});
