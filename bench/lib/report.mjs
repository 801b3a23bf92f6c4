// Where a bench run leaves its numbers: the raw JSON in bench/results/ (gitignored) and, for a
// recorded run, its generated section of bench/RESULTS.md (between the section's markers; the
// hand-written text around them is kept).
import { existsSync, mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import { execFileSync } from 'node:child_process';
import os from 'node:os';
import path from 'node:path';
import { ROOT, NEXT_VERSION } from './contenders.mjs';

const HERE = path.join(ROOT, 'bench');

/** Writes `data` to bench/results/<prefix><date>[-quick].json and says where. */
export function saveRaw(prefix, date, quick, data) {
  mkdirSync(path.join(HERE, 'results'), { recursive: true });
  const file = path.join(HERE, 'results', `${prefix}${date.replace(/[:.]/g, '-')}${quick ? '-quick' : ''}.json`);
  writeFileSync(file, JSON.stringify(data, null, 1));
  console.log(`raw numbers: ${path.relative(ROOT, file)}`);
}

/**
 * Replaces the section between `begin` and `end` in bench/RESULTS.md with `report` (appended at
 * the end when the markers are not there yet), if `write`; else says why not.
 */
export function writeSection({ write, quick, begin, end, report, what }) {
  if (!write) {
    console.log(`bench/RESULTS.md not written (${quick ? 'quick run; pass --write to record it' : '--no-write'})`);
    return;
  }
  const file = path.join(HERE, 'RESULTS.md');
  const prev = existsSync(file) ? readFileSync(file, 'utf8') : '# strata-cache bench results\n\n';
  const i = prev.indexOf(begin);
  const j = prev.indexOf(end);
  const head = i >= 0 ? prev.slice(0, i) : `${prev.trimEnd()}\n\n`;
  const tail = i >= 0 && j > i ? prev.slice(j + end.length) : '\n';
  writeFileSync(file, `${head}${begin}\n\n${report}\n${end}${tail}`);
  console.log(`wrote ${path.relative(ROOT, file)}${what ? ` (${what})` : ''}`);
}

// ---------------------------------------------------------------------------------------------
// Formatting and conditions shared by the generated sections.

/** µs from ns, 3 significant digits at most; '–' when not a number. */
export const us = (ns) => (Number.isFinite(ns) ? (ns / 1000 >= 100 ? (ns / 1000).toFixed(0) : (ns / 1000).toFixed(ns / 1000 >= 10 ? 1 : 2)) : '–');
/** A whole number with thousands separators. */
export const int = (x) => (Number.isFinite(x) ? Math.round(x).toLocaleString('en-US') : '–');
/** `1.23×`; two significant digits under 0.1 (`0.0042×`). */
export const ratio = (x) => (Number.isFinite(x) ? `${Math.abs(x) >= 0.1 || x === 0 ? x.toFixed(2) : x.toPrecision(2)}×` : '–');
/** min–max of `a ÷ b` over the thirds of two cellSummary results (the ratio's spread in one run). */
export function thirdsRange(a, b) {
  const per = a.thirds.map((x, i) => x / b.thirds[i]).filter(Number.isFinite);
  return per.length ? `${ratio(Math.min(...per))}–${ratio(Math.max(...per))}` : '–';
}

/** The lines of a Markdown table. */
export function mdTable(head, rows) {
  return [`| ${head.join(' | ')} |`, `|${head.map(() => '---').join('|')}|`, ...rows.map((r) => `| ${r.join(' | ')} |`)];
}

/** Where and when a run happened: machine, load, Node, next, the checkout's commit. */
export function runConditions() {
  const git = (...args) => {
    try { return execFileSync('git', ['-C', ROOT, ...args], { encoding: 'utf8' }).trim(); } catch { return '?'; }
  };
  return {
    date: new Date().toISOString(),
    nproc: os.availableParallelism ? os.availableParallelism() : os.cpus().length,
    cpu: os.cpus()[0]?.model?.trim() ?? '?',
    node: process.version,
    next: NEXT_VERSION,
    loadavg: os.loadavg().map((x) => x.toFixed(2)).join(' '),
    head: git('log', '-1', '--format=%h %cI'),
    dirty: git('status', '--porcelain').split('\n').filter(Boolean).length,
  };
}
