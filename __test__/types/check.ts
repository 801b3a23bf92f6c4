// Type-level checks of index.d.ts, run by `tsc -p tsconfig.json` in `npm test`.
import type { CacheHandler } from 'next/cache'
import { createIncrementalCacheHandler, createUseCacheHandler, stats, StrataError, type IncrementalCacheHandler, type StrataOptions, type UseCacheHandler } from 'strata-cache'
import Incremental = require('strata-cache/incremental')
import useCache = require('strata-cache/use-cache')

// Our handler satisfies Next 16.4's own CacheHandler type, both ways.
const ours: CacheHandler = createUseCacheHandler({ l1MaxBytes: 1 << 20 })
const back: UseCacheHandler = ours
const fromModule: CacheHandler = useCache
void back
void fromModule

const opts: StrataOptions = { l1MaxBytes: 64 * 1024 * 1024, maxTags: 10, redis: 'redis://127.0.0.1:6379', namespace: 'ns' }
void opts

// @ts-expect-error l1MaxBytes is a number
createUseCacheHandler({ l1MaxBytes: '64MiB' })
// @ts-expect-error unknown option
createUseCacheHandler({ nope: true })

const s = stats()
const hits: number | undefined = s.l1?.hits
void hits
const p99: number = s.latency.useCache.get.l2Hit.p99Ms + s.latency.incremental.set.buckets[s.latency.bucketsMs.length]
void p99
// @ts-expect-error get is split by outcome
void s.latency.useCache.get.count

const e = new StrataError('STRATA_CONFIG', 'x')
const code: 'STRATA_CONFIG' | 'STRATA_INVALID_ARG' | string = e.code
void code

// The incremental handler is a class Next instantiates per request.
const Made: IncrementalCacheHandler = createIncrementalCacheHandler({ l1MaxBytes: 1 << 20 })
const fromIncremental: IncrementalCacheHandler = Incremental
const handler = new Made({ serverDistDir: '/app/.next/server' })
void handler.get('/route-cache/APP_PAGE/x/$/index', { kind: 'APP_PAGE', isFallback: false }).then((v) => v?.lastModified)
void handler.revalidateTag(['products'], { expire: 60 })
void fromIncremental
const incrementalGets: number = s.incrementalCalls.get
void incrementalGets
// @ts-expect-error unknown option
createIncrementalCacheHandler({ nope: true })

// withStrataCache keeps the app's config type, in both forms; options are typed.
import { withStrataCache } from 'strata-cache/config'
const appConfig = { cacheComponents: true, reactStrictMode: true, cacheHandlers: { static: '/x.js' } }
const wired: typeof appConfig = withStrataCache(appConfig, { incremental: true })
const wiredFn: (phase: string) => Promise<{ distDir: string; cacheComponents: boolean }> = withStrataCache((phase: string) => ({ distDir: phase === 'x' ? 'a' : '.next', cacheComponents: false }))
void wired
void wiredFn
// @ts-expect-error unknown option
withStrataCache({}, { redis: 'redis://x' })
