/**
 * Execution counters, per process: every cached function of this app (route handlers, page
 * renders, getStaticProps, the unstable_cache callback) calls `recordRun(name)` when it really
 * runs, so a response served from the cache leaves the counter unchanged. Kept on `globalThis`
 * because every route is bundled separately (each has its own copy of this module) but all run in
 * the one `next start` process. `/api/runs` returns the counters.
 */
const key = Symbol.for('strata-cache.examples.isr.runs')

type Counters = Record<string, number>

function counters(): Counters {
  const g = globalThis as unknown as Record<symbol, Counters | undefined>
  return (g[key] ??= {})
}

/** Counts one execution of `name`; returns the count in this process, this one included. */
export function recordRun(name: string): number {
  const all = counters()
  all[name] = (all[name] ?? 0) + 1
  return all[name]
}

/** Every counter of this process. */
export function allRuns(): Counters {
  return { ...counters() }
}

/** A value that differs on every evaluation: creation time (ms) + a random id. */
export function freshValue(): string {
  return `${Date.now()}-${Math.random().toString(36).slice(2, 10)}`
}
