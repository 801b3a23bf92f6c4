/**
 * strata-cache: a Next.js 16 cache handler with a Rust core.
 *
 * Use the ready-made handler in `next.config.ts`:
 * ```ts
 * cacheHandlers: {
 *   default: require.resolve('strata-cache/use-cache'),
 *   remote: require.resolve('strata-cache/use-cache'),
 * }
 * ```
 * or build your own module whose default export is `createUseCacheHandler(options)`.
 */

/** A timestamp in milliseconds since the epoch (may be fractional). */
export type Timestamp = number

/** A `'use cache'` entry, as Next 16 passes it to `set` and expects it back from `get`. */
export interface CacheEntry {
  /** The serialized value (React Flight bytes). A new, unlocked stream on every `get`. */
  value: ReadableStream<Uint8Array>
  /** The entry's own tags (soft tags excluded). */
  tags: string[]
  /** Client stale time [seconds]. */
  stale: number
  /** Creation time [ms since epoch]. */
  timestamp: Timestamp
  /** Hard expiry [seconds after `timestamp`]; `0` = dynamic (not stored); 4294967294 = never. */
  expire: number
  /** Revalidation period [seconds]; `-1` from `get` when a tag was marked stale. */
  revalidate: number
}

/** Next 16's `cacheHandlers` interface (`'use cache'`, `'use cache: remote'`). */
export interface UseCacheHandler {
  /** The entry, or `undefined` on a miss. Never rejects: a failure is a miss, logged once. */
  get(cacheKey: string, softTags: string[]): Promise<undefined | CacheEntry>
  /** Stores the entry once its stream has been read; a stream that errors stores nothing. */
  set(cacheKey: string, pendingEntry: Promise<CacheEntry>): Promise<void>
  /** Brings this instance's tag state up to date (called once per request before reads). */
  refreshTags(): Promise<void>
  /** The latest expiry [ms] among `tags` that has happened, or `0`. */
  getExpiration(tags: string[]): Promise<Timestamp>
  /** Invalidates `tags`: without `durations` at once, with `durations` stale now and expired after `durations.expire` seconds. */
  updateTags(tags: string[], durations?: { expire?: number }): Promise<void>
}

/**
 * Options of {@link createUseCacheHandler}. Each option falls back to its environment variable,
 * read when the handler is first used (run time), then to its default.
 */
export interface StrataOptions {
  /** Upper bound of the in-process L1 in bytes (values + keys + metadata). Env `STRATA_L1_MAX_BYTES` (accepts `64MiB`). Default 64 MiB. */
  l1MaxBytes?: number
  /** Upper bound of tag records kept in memory. Env `STRATA_MAX_TAGS`. Default 100000. */
  maxTags?: number
  /** Redis URL of the shared L2. Env `STRATA_REDIS_URL`, else `REDIS_URL`. Unset = embedded, L1 only. */
  redis?: string
  /** Key namespace. Env `STRATA_NAMESPACE`; else `NEXT_DEPLOYMENT_ID` or a platform's deployment id; else the app's `.next/BUILD_ID`. */
  namespace?: string
  /** Cap on any entry's lifetime in L1 and Redis, and retention of tag records [s]. Env `STRATA_MAX_TTL_SECONDS`. Default 30 days. */
  maxTtlSeconds?: number
  /** Deadline of every Redis operation [ms]. Env `STRATA_REDIS_TIMEOUT_MS`. Default 250. */
  redisTimeoutMs?: number
  /** Largest value written to Redis; larger entries stay L1-only (warned once). Env `STRATA_L2_MAX_VALUE_BYTES`. Default 8 MiB. */
  l2MaxValueBytes?: number
  /** Values at least this large are LZ4-compressed in Redis; 0 = never. Env `STRATA_COMPRESS_MIN_BYTES`. Default 4 KiB. */
  compressMinBytes?: number
  /** Strict mode: `updateTags` rejects when Redis cannot record it, and nothing is served while the tag state cannot be refreshed. Env `STRATA_STRICT`. Default false. */
  strict?: boolean
  /** Treat `redis` (comma-separated seed URLs) as a Redis Cluster. Env `STRATA_REDIS_CLUSTER`. Default: true when several URLs are given. */
  cluster?: boolean
  /** For `rediss://` (TLS): a PEM file of the CA certificate(s) to trust instead of the built-in web PKI roots (private or self-signed CAs). Env `STRATA_REDIS_CA_FILE`. */
  redisCaFile?: string
  /** The app's `.next` directory, where the build id is read. Default `<cwd>/.next`. */
  distDir?: string
}

/** Stable error codes carried by {@link StrataError}. */
export type StrataErrorCode =
  | 'STRATA_INVALID_ARG'
  | 'STRATA_CONFIG'
  | 'STRATA_TIMEOUT'
  | 'STRATA_UNAVAILABLE'
  | 'STRATA_REDIS'
  | 'STRATA_INTERNAL'
  /** The incremental cache's `set` of a value larger than every level it could go to. */
  | 'STRATA_TOO_LARGE'
  /** A stored value that does not decode (counted, served as a miss; never thrown by `get`). */
  | 'STRATA_DECODE'
  /** No native binary for this platform (the optional platform package is missing). */
  | 'STRATA_NO_BINARY'

/** An error with a stable `code`. */
export declare class StrataError extends Error {
  constructor(code: StrataErrorCode, message: string, options?: { cause?: unknown })
  readonly name: 'StrataError'
  readonly code: StrataErrorCode
}

/**
 * Creates a `'use cache'` handler. Options are validated now (a wrong type or value throws a
 * `StrataError` with code `STRATA_CONFIG` naming the option); the process-wide store is created
 * when a handler is first used. Every handler of a process shares one store: the first
 * configuration wins.
 */
export declare function createUseCacheHandler(options?: StrataOptions): UseCacheHandler

/** Next's `cacheControl` of an incremental-cache entry [seconds]. */
export interface IncrementalCacheControl {
  revalidate: number | false
  expire?: number
}

/** What the incremental handler's `get` returns (Next's `CacheHandlerValue`). */
export interface IncrementalCacheValue {
  /** Next's value (`{ kind: 'APP_PAGE' | 'APP_ROUTE' | 'PAGES' | 'FETCH' | 'REDIRECT' | 'IMAGE', … }`), or null for a cached notFound. */
  value: { kind: string; [field: string]: unknown } | null
  /** When it was written [ms, Next's clock]; moved back when a tag of it was marked stale; -1 = regenerate before answering. */
  lastModified: number
  /** As `set` received it (response kinds). */
  cacheControl?: IncrementalCacheControl
}

/** An instance of the incremental handler (Next's singular `cacheHandler`). */
export interface IncrementalCacheHandlerInstance {
  /** Never rejects: any failure is a miss (`null`). */
  get(key: string, ctx?: { kind?: string; isFallback?: boolean; isRoutePPREnabled?: boolean; revalidate?: number | false; tags?: string[]; softTags?: string[] }): Promise<IncrementalCacheValue | null>
  /** Rejects with a `StrataError` (`STRATA_INVALID_ARG`) for a value it cannot store. */
  set(key: string, data: { kind: string; [field: string]: unknown } | null, ctx?: { cacheControl?: IncrementalCacheControl; tags?: string[]; fetchCache?: boolean; revalidate?: number | false; isFallback?: boolean }): Promise<void>
  /** Invalidates `tags` for both handlers on every instance: with `durations`, stale now (served once, regenerated) and expired after `expire` seconds; without, expired now. */
  revalidateTag(tags: string | string[], durations?: { expire?: number }): Promise<void>
  resetRequestCache(): void
}

/** The class Next instantiates for `cacheHandler` (per request: construction is free). */
export interface IncrementalCacheHandler {
  new (ctx?: { dev?: boolean; serverDistDir?: string; [option: string]: unknown }): IncrementalCacheHandlerInstance
}

/**
 * Creates the class for Next's singular `cacheHandler` (ISR pages, route handlers with
 * `revalidate`, the fetch cache, `unstable_cache`). Same options and same process-wide store
 * as {@link createUseCacheHandler}.
 */
export declare function createIncrementalCacheHandler(options?: StrataOptions): IncrementalCacheHandler

/** Process-wide counters. */
export interface StrataStats {
  /** Calls received from Next, per method. */
  calls: { get: number; set: number; refreshTags: number; getExpiration: number; updateTags: number }
  /** Calls received by the incremental handler (`cacheHandler`), per method. */
  incrementalCalls: { get: number; set: number; revalidateTag: number }
  /** The in-process L1; `null` before the first use. */
  l1: null | {
    entries: number
    bytes: number
    maxBytes: number
    hits: number
    misses: number
    sets: number
    evictions: number
    skippedDynamic: number
    rejectedTooLarge: number
    /** Stored entries currently shared with JS as zero-copy Buffers. */
    jsViews: number
  }
  /** Tag invalidation state; `null` before the first use. */
  tags: null | { updated: number; records: number; staleHits: number; expiredMisses: number }
  /** The Redis L2; `null` when not configured. */
  l2: null | {
    hits: number
    misses: number
    errors: number
    decodeErrors: number
    foreign: number
    writes: number
    writeErrors: number
    tooLarge: number
    invalidations: number
    invalidationsQueued: number
    invalidationsReplayed: number
    invalidationsPending: number
    refreshes: number
    resyncs: number
    dataLost: number
    breaker: 'closed' | 'open' | 'half-open'
    clockOffsetMs: number
    /** L2 reads made on Node's event loop (the rest went through the addon's runtime). */
    directReads: number
    /** Connections made for those reads (one per thread using the cache, plus reconnects). */
    directConnects: number
    /** `refreshTags` reads of the invalidation log made on Node's event loop. */
    directRefreshes: number
    /** Entry writes to Redis made on Node's event loop. */
    directWrites: number
  }
  /**
   * Internal errors (panics) contained at the boundary with Node since the process started:
   * each became a miss (`get`) or a `STRATA_INTERNAL` rejection. Non-zero is a bug to report.
   */
  internalPanics: number
  /**
   * Latency of the calls that waited on Redis, per handler and operation (this thread). Only
   * asynchronous calls are timed: an L1 hit is not (it is counted in `l1.hits`), so without
   * Redis every histogram stays empty.
   */
  latency: StrataLatency
}

/**
 * `stats().latency`: one {@link LatencyHistogram} per handler, operation and outcome. A get is
 * timed from the moment the addon answers with a promise (it had no fresh L1 copy and asked
 * Redis) until that promise resolves; the others around their Redis call.
 */
export interface StrataLatency {
  /** Upper bounds [ms] of the buckets of every histogram (inclusive): `[0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 25, 50, 100, 250, 500, 1000]`. */
  bucketsMs: number[]
  /** The 'use cache' handler (`cacheHandlers`). */
  useCache: StrataOperationLatency
  /** The incremental handler (`cacheHandler`): `refreshTags` is the read of the invalidation log each handler object makes before its first get; `updateTags` is `revalidateTag`. */
  incremental: StrataOperationLatency
}

/** The histograms of one handler's operations. */
export interface StrataOperationLatency {
  /** Gets that asked Redis, by what they resolved to: an entry (`l2Hit`, possibly L1's copy confirmed by Redis) or nothing (`l2Miss`, also when Redis failed). */
  get: { l2Hit: LatencyHistogram; l2Miss: LatencyHistogram }
  /** Writes to L1 and Redis, timed around that call (after the value's stream was read). */
  set: LatencyHistogram
  /** Reads of the shared invalidation log. */
  refreshTags: LatencyHistogram
  /** Invalidations recorded in Redis (`updateTags` / `revalidateTag`). */
  updateTags: LatencyHistogram
}

/** Durations in fixed buckets, in ms (rounded to the µs); every field is 0 while `count` is 0. */
export interface LatencyHistogram {
  count: number
  sumMs: number
  minMs: number
  maxMs: number
  /** Median, estimated from the buckets (linear within its bucket, bounded by `minMs`/`maxMs`). */
  p50Ms: number
  /** 99th percentile, estimated likewise. */
  p99Ms: number
  /** `bucketsMs.length + 1` counts (not cumulative): `buckets[i]` = durations in (`bucketsMs[i-1]`, `bucketsMs[i]`]; the last one, above 1000 ms. */
  buckets: number[]
}

/** One line of {@link doctor}'s report. */
export interface DoctorCheck {
  name: string
  status: 'ok' | 'warn' | 'fail'
  /** What was found, and what to fix. Never contains a credential. */
  detail: string
}

/**
 * Checks the configuration and Redis as a server starting in this process would see them (the
 * same options and environment; nothing is created): the namespace and where it came from, the
 * Redis URL (redacted), round trip and clock offset, the Lua scripts, the server version and
 * its eviction policy. Never rejects: problems are `fail` checks. `npx strata-cache doctor`
 * prints it and exits non-zero on a problem.
 */
export declare function doctor(options?: StrataOptions): Promise<{ verdict: 'ok' | 'warn' | 'fail'; checks: DoctorCheck[] }>

/** Counters of this process (handler calls, L1, tags, L2) and the latency of the calls that waited on Redis. */
export declare function stats(): StrataStats

/**
 * Delivers invalidations queued while Redis was unavailable, waiting up to `timeoutMs`
 * (default 5000). Resolves with how many are still queued (0 = all delivered). Call it before a
 * graceful shutdown so no invalidation is left behind.
 */
export declare function flush(options?: { timeoutMs?: number }): Promise<number>

/** The configuration in effect, with the Redis URL redacted; `null` before the first use. */
export declare function config(): null | {
  l1MaxBytes: number
  maxTags: number
  redis?: string | null
  namespace?: string | null
  namespaceSource?: string | null
  maxTtlSeconds: number
  redisTimeoutMs: number
  l2MaxValueBytes: number
  compressMinBytes: number
  strict: boolean
  applied: boolean
}
