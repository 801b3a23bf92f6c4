// vitest globalSetup of the e2e project: builds the example app once per run (test files then
// only `next start` it), and on teardown kills any server a crashed test file left running.
import { appDir, buildApp, checkHandlerLoads, killLeftoverServers } from './next-app.mjs'
import fs from 'node:fs'
import path from 'node:path'

export default async function setup() {
  process.env.STRATA_E2E_RUN = String(process.pid) // inherited by the test workers
  const built = fs.existsSync(path.join(appDir, '.next/BUILD_ID'))
  if (process.env.STRATA_E2E_SKIP_BUILD === '1' && built) {
    console.log(`[e2e] reusing the existing build of ${appDir}`)
  } else {
    checkHandlerLoads()
    const { ms } = await buildApp()
    console.log(`[e2e] next build of ${appDir}: ${(ms / 1000).toFixed(1)} s`)
  }
  return function teardown() {
    const killed = killLeftoverServers()
    if (killed.length) console.warn(`[e2e] killed leftover next start process groups: ${killed.join(', ')}`)
  }
}
