import { createRequire } from 'node:module'
import type { NextConfig } from 'next'

// One line wires strata-cache: `cacheHandlers` ('use cache', with cacheComponents), `cacheHandler`
// (the incremental cache: prerendered pages, route handlers, the fetch cache) with
// `cacheMaxMemorySize: 0`, `serverExternalPackages`, and the Turbopack warnings of the addon
// loader (see withStrataCache in lib/with-strata-cache.js). An app that installed strata-cache
// writes `import { withStrataCache } from 'strata-cache/config'`. This app deliberately has no
// package.json: `strata-cache` resolves through the repo root's package.json (a package may
// import itself by name), and Next evaluates a transpiled next.config.ts in a module without a
// filename, where that self-reference lookup fails; a require bound to this file works.
const { withStrataCache } = createRequire(__filename)('strata-cache/config') as typeof import('strata-cache/config')

const nextConfig: NextConfig = {
  cacheComponents: true,
  partialPrefetching: true, // client-side prefetch only; set to silence the 16.4 start-up warning
}

export default withStrataCache(nextConfig)
