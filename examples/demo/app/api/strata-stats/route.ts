import { createRequire } from 'node:module'
import path from 'node:path'
import { connection } from 'next/server'

// Not `import { stats } from 'strata-cache'`: in this repo the package resolves to the repo's own
// files (a package importing itself by name), not to node_modules, so `serverExternalPackages`
// doesn't apply and Turbopack would try to bundle index.js and its native addon (it can't:
// "non-ecmascript placeable asset"). A require created at run time is opaque to the bundler and
// returns the very module instance the cache handler uses (one Node module cache per process).
function loadStrata(): typeof import('strata-cache') {
  const runtimeRequire = createRequire(path.join(process.cwd(), 'package.json'))
  return runtimeRequire('strata-cache')
}

/** Process-wide strata-cache counters (calls per handler method, L1 size and hit counts). */
export async function GET(): Promise<Response> {
  await connection() // request-time only: never prerendered
  return Response.json(loadStrata().stats(), { headers: { 'cache-control': 'no-store' } })
}
