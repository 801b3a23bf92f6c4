import { createRequire } from 'node:module'
import type { NextConfig } from 'next'

// Which incremental cache serves this app (ISR pages, route handlers with `revalidate`, the fetch
// cache, `unstable_cache`), read at `next build` and `next start` alike:
// - by default strata-cache's singular handler (embedded L1, or Redis with REDIS_URL), wired by
//   withStrataCache (`cacheHandler` with an absolute path, `cacheMaxMemorySize: 0`,
//   `serverExternalPackages`); an app that installed strata-cache writes
//   `import { withStrataCache } from 'strata-cache/config'` (see examples/demo/next.config.ts for
//   why this repo's examples use a require bound to this file);
// - with STRATA_ISR_BUILTIN=1 Next's built-in FileSystemCache (memory LRU + files under .next/),
//   the reference behaviour the end-to-end tests (__test__/e2e/isr.test.mjs) were written
//   against.
const useStrata = process.env.STRATA_ISR_BUILTIN !== '1'

/** The minor of the Next this app builds with (16.x). */
function nextMinor(): number {
  const { version } = createRequire(__filename)('next/package.json') as { version: string }
  return Number(version.split('.')[1])
}

const nextConfig: NextConfig = {
  // Route handlers import strata-cache at run time (app/api/strata); never bundle it.
  serverExternalPackages: ['strata-cache'],
  // Optimized images (`/_next/image`) are cached by the incremental cache handler too (an option
  // of Next ≥ 16.2; earlier minors refuse it, and do not know its type).
  ...(nextMinor() >= 2 ? { images: { customCacheHandler: true } as unknown as NextConfig['images'] } : {}),
}

export default useStrata
  ? (createRequire(__filename)('strata-cache/config') as typeof import('strata-cache/config')).withStrataCache(nextConfig)
  : nextConfig
