import { createRequire } from 'node:module'
import type { NextConfig } from 'next'

// `strata-cache/use-cache` resolves through the repo root's package.json (a package may import
// itself by name through its `exports` map); this app deliberately has no package.json of its
// own. Next evaluates a transpiled next.config.ts in a synthetic module that has no filename, and
// Node's self-reference lookup starts from the requiring module's filename, so the plain
// `require.resolve` fails there ("Cannot find module 'strata-cache/use-cache'"); a require bound
// to this file works.
// The paths must be absolute: a relative path builds, but `next start` resolves it against
// `.next/` and fails (see /work/shared/docs/nextjs-cache-contract.md §1.2).
const handler = createRequire(__filename).resolve('strata-cache/use-cache')
// The incremental cache (prerendered pages and route handlers, the fetch cache) on the same store.
const incremental = createRequire(__filename).resolve('strata-cache/incremental')

const nextConfig: NextConfig = {
  cacheComponents: true,
  partialPrefetching: true, // client-side prefetch only; set to silence the 16.4 start-up warning
  cacheHandlers: {
    default: handler, // 'use cache'
    remote: handler, // 'use cache: remote'
  },
  cacheHandler: incremental,
  cacheMaxMemorySize: 0, // Next's own memory cache in front of it would duplicate strata-cache's L1
  // Load the addon with Node's own `require` at run time instead of bundling it (applies when
  // strata-cache is installed in node_modules; inside this repo see app/api/strata-stats).
  serverExternalPackages: ['strata-cache'],
  turbopack: {
    // Next traces the cache handler's files for output tracing; the napi-rs loader (binding.js)
    // `require`s the addons of every other platform (musl, wasi, per-platform npm packages)
    // inside try/catch, which Turbopack reports as "Module not found" warnings.
    ignoreIssue: [{ path: '**/binding.js', title: /^Module not found/ }],
  },
}

export default nextConfig
