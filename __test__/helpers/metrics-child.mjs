// One process with both handlers, for the metrics tests (__test__/metrics.test.mjs), driven over
// stdin/stdout with the line protocol of child-protocol.mjs.
//
// Environment (besides strata-cache's own):
// - STRATA_TEST_OTEL=1: an OpenTelemetry MeterProvider (the SDK's in-memory exporter behind a
//   periodic reader that only exports when asked) is registered globally BEFORE strata-cache is
//   loaded, as an app's instrumentation would; the op `collect` exports and returns what it has.
// - STRATA_TEST_PACKAGE: the directory of the strata-cache package to load (default: this
//   repository, by its name), e.g. a copy where `@opentelemetry/api` does not resolve.
import { createRequire } from 'node:module'
import path from 'node:path'
import { readAll, serve, streamOf } from './child-protocol.mjs'

const require = createRequire(import.meta.url)

let collect = async () => { throw new Error('started without STRATA_TEST_OTEL=1') }
if (process.env.STRATA_TEST_OTEL === '1') {
  const api = require('@opentelemetry/api')
  const { MeterProvider, InMemoryMetricExporter, PeriodicExportingMetricReader, AggregationTemporality } = require('@opentelemetry/sdk-metrics')
  const exporter = new InMemoryMetricExporter(AggregationTemporality.CUMULATIVE)
  const reader = new PeriodicExportingMetricReader({ exporter, exportIntervalMillis: 3_600_000 })
  api.metrics.setGlobalMeterProvider(new MeterProvider({ readers: [reader] }))
  // Every metric of the last export, as plain JSON: { scope, name, unit, type, points: [{ attributes, value }] }.
  collect = async () => {
    exporter.reset()
    await reader.forceFlush()
    const out = []
    for (const rm of exporter.getMetrics()) {
      for (const sm of rm.scopeMetrics) {
        for (const m of sm.metrics) {
          out.push({
            scope: sm.scope.name,
            name: m.descriptor.name,
            unit: m.descriptor.unit,
            type: m.descriptor.type,
            points: m.dataPoints.map((p) => ({ attributes: p.attributes, value: p.value })),
          })
        }
      }
    }
    return out
  }
}

const dir = process.env.STRATA_TEST_PACKAGE
const { createUseCacheHandler, stats } = require(dir ? path.join(dir, 'index.js') : 'strata-cache')
const Incremental = require(dir ? path.join(dir, 'incremental.js') : 'strata-cache/incremental')
const useCache = createUseCacheHandler()
const now = () => performance.timeOrigin + performance.now()
const readText = async (stream) => (await readAll(stream)).toString('utf8')

serve({
  /** Where `@opentelemetry/api` resolves from the package's lib/ (null: it does not). */
  async otelResolves() {
    const from = createRequire(dir ? path.join(dir, 'lib', 'otel.js') : require.resolve('strata-cache'))
    try {
      return from.resolve('@opentelemetry/api')
    } catch {
      return null
    }
  },
  async ucSet({ key, value, tags = [], expire = 3600 }) {
    await useCache.set(key, Promise.resolve({ value: streamOf(Buffer.from(value)), tags, stale: 300, timestamp: now(), expire, revalidate: 900 }))
  },
  async ucGet({ key, softTags = [] }) {
    const e = await useCache.get(key, softTags)
    return e ? readText(e.value) : null
  },
  async ucRefreshTags() { await useCache.refreshTags() },
  async ucUpdateTags({ tags, durations }) { await useCache.updateTags(tags, durations) },
  /** An APP_ROUTE entry through a new handler object (Next makes one per request). */
  async incSet({ key, body, tags = [] }) {
    const headers = { 'x-next-cache-tags': tags.join(',') }
    await new Incremental({}).set(key, { kind: 'APP_ROUTE', body: Buffer.from(body), status: 200, headers }, { cacheControl: { revalidate: 60 } })
  },
  async incGet({ key, handlerCtx = {} }) {
    const r = await new Incremental(handlerCtx).get(key, { kind: 'APP_ROUTE', isFallback: false })
    return r === null ? null : r.value.body.toString('utf8')
  },
  async incRevalidateTag({ tags, durations }) { await new Incremental({}).revalidateTag(tags, durations) },
  async stats() { return stats() },
  async collect() { return collect() },
})
