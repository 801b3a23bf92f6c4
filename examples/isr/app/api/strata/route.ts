import { createRequire } from 'node:module'
import path from 'node:path'
import { connection } from 'next/server'

// A require made at run time (see examples/demo/app/api/strata-stats/route.ts for why not a plain
// import inside this repo): the very module instance the cache handler uses.
function loadStrata(): typeof import('strata-cache') {
  return createRequire(path.join(process.cwd(), 'package.json'))('strata-cache')
}

/**
 * strata-cache's counters in this server process (zero calls when Next's built-in handler serves
 * the app): proof of which handler is in use, and how often Next called it. Never cached.
 */
export async function GET(): Promise<Response> {
  await connection()
  return Response.json(loadStrata().stats(), { headers: { 'cache-control': 'no-store' } })
}
