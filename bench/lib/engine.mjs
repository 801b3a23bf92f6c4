// Interleaved per-op latency engine for the bench scripts (run.mjs, l2.mjs, incremental.mjs),
// and how they are run (flags, GC, JSON-reporting child processes: the end of this file).
//
// A "group" holds the cells that are compared with each other (e.g. built-in vs ours, same op,
// same size). Every round runs each group once; inside a group each cell gets one time slice, and
// the order of the cells flips every round (A,B then B,A ...), so slow drifts of this shared,
// noisy machine land on both contenders alike. One op is in flight at a time.
//
// Each op is timed alone with process.hrtime.bigint() around `await cell.op()` (so the timing
// includes the promise/microtask cost a caller pays). `cell.prep()` (optional, untimed) runs before
// each op and its result is passed to `op`; `cell.check(result)` (optional, untimed) runs after.
//
// GC: when `gc` is available (run.mjs re-executes itself with --expose-gc), a minor GC runs before
// every slice and a full GC at the start of every round, so the garbage one contender leaves
// behind is not collected on the other contender's clock. Garbage a contender makes inside its own
// slice is still collected during that slice and shows in its own p99.

import { spawn, spawnSync } from 'node:child_process';
import { readFileSync, rmSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';

const now = () => process.hrtime.bigint();

class Samples {
  constructor(cap = 4096) {
    this.a = new Float64Array(cap);
    this.n = 0;
    this.rounds = []; // [start, end) index ranges per round, to compute per-part stats
  }
  push(v) {
    if (this.n === this.a.length) {
      const b = new Float64Array(this.a.length * 2);
      b.set(this.a);
      this.a = b;
    }
    this.a[this.n++] = v;
  }
  view(from = 0, to = this.n) {
    return this.a.subarray(from, to);
  }
}

export function summarize(values) {
  const n = values.length;
  if (n === 0) return { n: 0, p50: NaN, p99: NaN, mean: NaN, min: NaN, opsPerSec: NaN };
  const s = Float64Array.from(values).sort();
  let sum = 0;
  for (let i = 0; i < n; i++) sum += s[i];
  const q = (p) => s[Math.min(n - 1, Math.floor(p * n))];
  const mean = sum / n;
  return { n, p50: q(0.5), p99: q(0.99), mean, min: s[0], opsPerSec: 1e9 / mean };
}

/** p50 of each third of the measured rounds (rounds are interleaved, so thirds are comparable). */
export function thirds(samples) {
  const r = samples.rounds;
  const out = [];
  for (let t = 0; t < 3; t++) {
    const a = Math.floor((r.length * t) / 3);
    const b = Math.floor((r.length * (t + 1)) / 3);
    if (b <= a) continue;
    out.push(summarize(samples.view(r[a][0], r[b - 1][1])).p50);
  }
  return out;
}

async function runSlice(cell, sliceNs, store) {
  const start = now();
  const end = start + sliceNs;
  const from = store ? cell.samples.n : 0;
  let ops = 0;
  for (;;) {
    const arg = cell.prep ? cell.prep() : undefined;
    const t0 = now();
    const r = await cell.op(arg);
    const t1 = now();
    if (cell.check) cell.check(r);
    if (store) cell.samples.push(Number(t1 - t0));
    ops++;
    if (t1 >= end && ops >= (cell.minOpsPerSlice ?? 1)) break;
  }
  if (store) cell.samples.rounds.push([from, cell.samples.n]);
}

/**
 * groups: [{ name, cells: [{ id, op, prep?, check? }] }]
 * opts: { warmupMs, measureMs, sliceMs, gc, onRound? }
 * Every cell gets `measureMs` of measured time in total, in slices of `sliceMs`.
 */
export async function runInterleaved(groups, opts) {
  const { warmupMs, measureMs, sliceMs, gc } = opts;
  for (const g of groups) for (const c of g.cells) c.samples = new Samples();
  const sliceNs = BigInt(Math.round(sliceMs * 1e6));
  const warmRounds = Math.max(1, Math.ceil(warmupMs / sliceMs));
  const rounds = Math.max(3, Math.ceil(measureMs / sliceMs));
  for (let r = -warmRounds; r < rounds; r++) {
    if (gc) gc();
    for (const g of groups) {
      const order = (r & 1) === 0 ? g.cells : [...g.cells].reverse();
      for (const c of order) {
        if (gc) gc({ type: 'minor' });
        await runSlice(c, sliceNs, r >= 0);
      }
    }
    if (opts.onRound) opts.onRound(r, rounds);
  }
  return groups;
}

/** Cost of the timing itself: two hrtime.bigint() calls around an awaited resolved promise. */
export async function timerOverheadNs() {
  const v = new Float64Array(20000);
  for (let i = 0; i < v.length; i++) {
    const t0 = now();
    const t1 = now();
    v[i] = Number(t1 - t0);
  }
  return summarize(v).p50;
}

/** p50/p99/mean/ops/s of a cell measured by runInterleaved, with the p50 of each third of its rounds. */
export function cellSummary(cell) {
  return { ...summarize(cell.samples.view()), thirds: thirds(cell.samples) };
}

/** An `onRound` callback that prints "label: round r/n" about ten times per phase (to stderr). */
export function roundPrinter(label) {
  return (r, n) => {
    if (r >= 0 && (r % Math.max(1, Math.floor(n / 10)) === 0 || r === n - 1)) process.stderr.write(`\r  ${label}: round ${r + 1}/${n}   `);
    if (r === n - 1) process.stderr.write('\n');
  };
}

// ---------------------------------------------------------------------------------------------
// How a bench script is run: its flags, GC, and child processes that report back in JSON.

/** `--name` and `--name=value` flags of `argv`. */
export function cliArgs(argv = process.argv.slice(2)) {
  return {
    argv,
    flag: (name) => argv.includes(`--${name}`),
    opt: (name) => argv.find((x) => x.startsWith(`--${name}=`))?.slice(name.length + 3),
  };
}

/**
 * The `gc` function for runInterleaved: unless `--no-gc`, re-executes `scriptPath` with
 * --expose-gc when it is missing (the process then exits with the child's status).
 */
export function gcOrReexec(scriptPath, argv = process.argv.slice(2)) {
  if (argv.includes('--no-gc')) return undefined;
  if (typeof globalThis.gc === 'function') return globalThis.gc;
  const r = spawnSync(process.execPath, ['--expose-gc', ...process.execArgv, scriptPath, ...argv], { stdio: 'inherit' });
  process.exit(r.status ?? 1);
}

/**
 * Runs `node --expose-gc scriptPath --child=NAME --out=FILE ...args` and resolves with the JSON
 * the child wrote to FILE (see `childMain`); rejects with the child's error. `env` replaces the
 * child's environment.
 */
export function runJsonChild(scriptPath, name, args = [], env = process.env) {
  const out = path.join(os.tmpdir(), `strata-bench-${process.pid}-${name}-${Date.now()}.json`);
  return new Promise((resolve, reject) => {
    const child = spawn(process.execPath, ['--expose-gc', scriptPath, `--child=${name}`, `--out=${out}`, ...args], { stdio: ['ignore', 'inherit', 'inherit'], env });
    child.on('error', reject);
    child.on('exit', (code, signal) => {
      let res;
      try { res = JSON.parse(readFileSync(out, 'utf8')); } catch { res = { error: `child ${name} exited (code ${code}, signal ${signal}) without a result` }; }
      rmSync(out, { force: true });
      if (res.error) reject(new Error(`child ${name} failed:\n${res.error}`));
      else resolve(res);
    });
  });
}

/** The child side of runJsonChild: runs `children[--child]`, writes its result (or error) to --out, exits. */
export async function childMain(children, { opt } = cliArgs()) {
  const name = opt('child');
  let result;
  try {
    if (!Object.hasOwn(children, name)) throw new Error(`unknown child ${name}`);
    result = await children[name]();
  } catch (err) {
    result = { error: String(err && err.stack ? err.stack : err) };
  }
  writeFileSync(opt('out'), JSON.stringify(result));
  process.exit(result.error ? 1 : 0);
}
