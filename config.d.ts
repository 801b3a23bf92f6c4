/** The fields of a Next config that {@link withStrataCache} reads or sets; the rest passes through. */
export interface NextConfigLike {
  cacheComponents?: boolean
  cacheHandler?: string
  cacheHandlers?: { [kind: string]: string | undefined }
  cacheMaxMemorySize?: number
  serverExternalPackages?: string[]
  turbopack?: object
}

/** Options of {@link withStrataCache}: which of Next's cache interfaces strata-cache serves. */
export interface WithStrataCacheOptions {
  /** `cacheHandlers.default` and `.remote` ('use cache'). Default: on when `cacheComponents` is. */
  useCache?: boolean
  /** `cacheHandler` (the incremental cache: ISR, route handlers, fetch, unstable_cache), with `cacheMaxMemorySize: 0`. Default: true. */
  incremental?: boolean
}

/**
 * Wires strata-cache into a Next config (`NextConfig` in, `NextConfig` out): `cacheHandler`,
 * `cacheHandlers` (with `cacheComponents`), `cacheMaxMemorySize: 0`, `serverExternalPackages`,
 * the Turbopack warnings of the addon loader. Where the cache lives (Redis URL, namespace,
 * sizes) is read at run time from the environment, never baked in here. A wrong option, or a
 * handler field the app already set to something else, throws a `StrataError`
 * (`STRATA_CONFIG`) naming it.
 */
export declare function withStrataCache<C extends NextConfigLike, A extends unknown[]>(
  nextConfig: (...args: A) => C | Promise<C>,
  options?: WithStrataCacheOptions,
): (...args: A) => Promise<C>
export declare function withStrataCache<C extends NextConfigLike>(nextConfig?: C, options?: WithStrataCacheOptions): C
