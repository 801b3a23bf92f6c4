import { createRequire } from 'node:module'
import type { NextConfig } from 'next'

// Which incremental cache serves this app (ISR pages, route handlers with `revalidate`, the fetch
// cache, `unstable_cache`), read at `next build` and `next start` alike:
// - by default strata-cache's singular handler, `strata-cache/incremental` (embedded L1, or Redis
//   with REDIS_URL);
// - with STRATA_ISR_BUILTIN=1 Next's built-in FileSystemCache (memory LRU + files under .next/),
//   the reference behaviour the end-to-end tests (__test__/e2e/isr.test.mjs) were written
//   against.
// The path must be absolute (`next start` resolves a relative one against .next/), and it is
// resolved with a require bound to this file: Next evaluates a transpiled next.config.ts in a
// module without a filename, where the package's self-reference lookup fails (see
// examples/demo/next.config.ts).
const useStrata = process.env.STRATA_ISR_BUILTIN !== '1'
const cacheHandler = useStrata ? createRequire(__filename).resolve('strata-cache/incremental') : undefined

const nextConfig: NextConfig = {
  cacheHandler,
  // Next's own in-memory LRU sits in front of the built-in handler only; with ours, L1 is
  // strata-cache's (0 disables Next's).
  ...(useStrata ? { cacheMaxMemorySize: 0 } : {}),
  // Load the addon with Node's own `require` at run time instead of bundling it.
  serverExternalPackages: ['strata-cache'],
  turbopack: {
    // The napi-rs loader (binding.js) `require`s the addons of other platforms inside try/catch;
    // Turbopack reports those as "Module not found" when it traces the handler.
    ignoreIssue: [{ path: '**/binding.js', title: /^Module not found/ }],
  },
}

export default nextConfig
