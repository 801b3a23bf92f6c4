'use strict'
/**
 * strata-cache: a Next.js 16 cache handler with a Rust core.
 *
 * The public JS surface (index.d.ts), one concern a file under lib/:
 * - `use-cache.js`: the 'use cache' handler (`cacheHandlers`);
 * - `incremental.js` (+ `incremental-codec.js`): the incremental handler (`cacheHandler`);
 * - `store.js`: the process-wide store both share (start-up, pending writes, counters,
 *   invalidation, `stats` / `config` / `flush`), over the generated loader `binding.js`;
 * - `options.js`, `checks.js`, `errors.js`, `log.js`: options, argument checks, errors, logging.
 * - `metrics.js`, `otel.js`: the latency histograms of `stats().latency`, and OpenTelemetry
 *   when the app has `@opentelemetry/api`.
 * Every rule (expiry, tags, the byte bound) lives in Rust (`core/`).
 */
const { createUseCacheHandler } = require('./lib/use-cache.js')
const { createIncrementalCacheHandler } = require('./lib/incremental.js')
const { stats, config, flush, doctor } = require('./lib/store.js')
const { StrataError } = require('./lib/errors.js')

module.exports = {
  createUseCacheHandler,
  stats,
  config,
  flush,
  StrataError,
  createIncrementalCacheHandler,
  doctor,
}
