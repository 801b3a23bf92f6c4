// Where a bench run leaves its numbers: the raw JSON in bench/results/ (gitignored) and, for a
// recorded run, its generated section of bench/RESULTS.md (between the section's markers; the
// hand-written text around them is kept).
import { existsSync, mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import { ROOT } from './contenders.mjs';

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
