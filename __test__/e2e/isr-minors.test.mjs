// The whole incremental-cache suite (isr-suite.mjs: ISR pages, route handlers, fetch cache,
// invalidations, two instances on Redis) on a copy of examples/isr installed from the packed
// strata-cache with other Next minors: 16.0 (plain path keys, set with a pending promise) and
// 16.2. STRATA_E2E_ISR_MINORS=16.1.7,… picks others.
import fs from 'node:fs'
import os from 'node:os'
import path from 'node:path'
import { afterAll, beforeAll, describe } from 'vitest'
import { defineIsrSuite } from './isr-suite.mjs'
import { installApp, packStrataCache, repoVersion } from './installed-app.mjs'
import { repoRoot } from './next-app.mjs'

const MINORS = (process.env.STRATA_E2E_ISR_MINORS || '16.0.11,16.2.12').split(',').filter(Boolean)
const work = fs.mkdtempSync(path.join(os.tmpdir(), 'strata-isr-minors-'))
let packed
beforeAll(() => { packed = packStrataCache(work) }, 60_000)
afterAll(() => fs.rmSync(work, { recursive: true, force: true }))

describe.each(MINORS)('examples/isr on next@%s', (next) => {
  defineIsrSuite(async () => {
    const dir = path.join(work, `isr-${next}`)
    const example = path.join(repoRoot, 'examples/isr')
    for (const part of fs.readdirSync(example)) {
      if (part !== '.next' && part !== 'next-env.d.ts') fs.cpSync(path.join(example, part), path.join(dir, part), { recursive: true })
    }
    installApp(dir, packed, {
      next,
      files: {},
      devDependencies: Object.fromEntries(['typescript', '@types/react', '@types/node'].map((d) => [d, repoVersion(d)])),
    })
    return dir
  })
})
