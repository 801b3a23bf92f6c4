// Installing strata-cache as a user does: the npm tarballs of the main package and of this
// platform's package (prebuilt binary, an optional dependency), into a fresh copy of
// examples/demo outside the repository, configured by `withStrataCache({ …, output:
// 'standalone' })` imported as a user writes it, with no Rust toolchain on PATH; `next build`, `next start`, a cached response served by our handler; the standalone
// output copied elsewhere (no node_modules but what Next traced) and run the same way. Then the
// error a user sees on a platform with no binary (the platform package hidden).
//
// next/react/react-dom are installed at the versions the repo tests, from npm's cache (the
// repo's own `npm install` filled it: `--prefer-offline`); strata-cache only from the tarballs.
import { execFileSync, spawnSync } from 'node:child_process'
import fs from 'node:fs'
import os from 'node:os'
import path from 'node:path'
import { afterAll, beforeAll, describe, expect, test } from 'vitest'
import { buildApp, childEnv, parseValue, repoRoot, startServer } from './next-app.mjs'
import { PATH, env, installApp, packStrataCache, platform, platformPkg, repoVersion } from './installed-app.mjs'

const work = fs.mkdtempSync(path.join(os.tmpdir(), 'strata-install-'))
const app = path.join(work, 'app')

let server
beforeAll(async () => {
  const packed = packStrataCache(work)
  const files = execFileSync('tar', ['tzf', packed.main], { encoding: 'utf8' }).split('\n')
  expect(files.filter((f) => f.endsWith('.node')), 'the main package ships no binary').toEqual([])
  // A fresh copy of examples/demo, outside the repository, on the installed packages.
  for (const part of ['app', 'lib', 'tsconfig.json']) {
    fs.cpSync(path.join(repoRoot, 'examples/demo', part), path.join(app, part), { recursive: true })
  }
  installApp(app, packed, {
    devDependencies: Object.fromEntries(['typescript', '@types/react', '@types/node'].map((d) => [d, repoVersion(d)])),
    files: {
      // The one-line configuration, imported as a user does.
      'next.config.mjs': `import { withStrataCache } from 'strata-cache/config'\nexport default withStrataCache({ cacheComponents: true, partialPrefetching: true, output: 'standalone' })\n`,
      'app/api/stats/route.js': `import { connection } from 'next/server'\nimport { stats } from 'strata-cache'\nexport async function GET() { await connection(); return Response.json(stats()) }\n`,
    },
  })
  const { ms } = await buildApp({ dir: app, env })
  console.log(`[e2e install] next build of the installed app: ${(ms / 1000).toFixed(1)} s`)
  server = await startServer({ dir: app, env, probePath: '/api/stats' })
}, 180_000)

afterAll(async () => {
  await server?.stop()
  fs.rmSync(work, { recursive: true, force: true })
})

describe('installed from the npm tarballs, no Rust toolchain', () => {
  test('cargo is not on the PATH the app runs with', () => {
    const which = spawnSync('sh', ['-c', 'command -v cargo'], { env: { PATH } })
    expect(which.status).not.toBe(0)
  })

  test('the binary comes from the platform package, and our handler serves the cached route', async () => {
    const resolved = execFileSync(process.execPath, ['-e', `console.log(require.resolve('${platformPkg}'))`], { cwd: app, encoding: 'utf8' }).trim()
    expect(resolved).toContain(path.join('node_modules', platformPkg))
    // A static page of the demo: prerendered, served from the cache (our incremental handler).
    const first = await server.fetchPage('/static')
    const second = await server.fetchPage('/static')
    expect([first.status, second.headers['x-nextjs-cache']]).toEqual([200, 'HIT'])
    expect(parseValue(second.text, 'static')).toBe(parseValue(first.text, 'static'))
    // A page rendered at request time through the 'use cache' handler.
    const home = await server.fetchPage('/')
    expect(parseValue(home.text, 'products')).toMatch(/-home$/)
    const stats = JSON.parse((await server.fetchPage('/api/stats')).text)
    expect(stats.incrementalCalls.get).toBeGreaterThan(0)
    expect(stats.calls.get, "the 'use cache' handler").toBeGreaterThan(0)
  })

  test("output: 'standalone' runs from a directory with no node_modules of its own, on our handler", async () => {
    // What a Docker image copies: .next/standalone (with the traced node_modules), .next/static.
    const standalone = path.join(work, 'standalone')
    fs.cpSync(path.join(app, '.next/standalone'), standalone, { recursive: true, verbatimSymlinks: true })
    expect(fs.existsSync(path.join(standalone, 'node_modules', platformPkg)), `${platformPkg} traced into the standalone output`).toBe(true)
    const copy = await startServer({ mode: 'standalone', dir: standalone, env, probePath: '/api/stats' })
    try {
      const first = await copy.fetchPage('/static')
      const second = await copy.fetchPage('/static')
      expect([second.status, second.headers['x-nextjs-cache']]).toEqual([200, 'HIT'])
      expect(parseValue(second.text, 'static')).toBe(parseValue(first.text, 'static'))
      const stats = JSON.parse((await copy.fetchPage('/api/stats')).text)
      expect(stats.incrementalCalls.get, 'served by strata-cache').toBeGreaterThan(0)
    } finally {
      await copy.stop()
    }
  })

  test('without the platform package: a clear STRATA_NO_BINARY error naming it', () => {
    const dir = path.join(app, 'node_modules', platformPkg)
    fs.renameSync(dir, `${dir}.hidden`)
    try {
      const r = spawnSync(process.execPath, ['-e', `require('strata-cache')`], { cwd: app, encoding: 'utf8', env: childEnv(env) })
      expect(r.status).not.toBe(0)
      expect(r.stderr).toContain('STRATA_NO_BINARY')
      expect(r.stderr).toContain(`no native binary for ${platform}`)
      expect(r.stderr).toContain(platformPkg)
    } finally {
      fs.renameSync(`${dir}.hidden`, dir)
    }
  })
})
