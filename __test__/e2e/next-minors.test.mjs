// Every Next 16 minor users run: the same small app, installed from the packed strata-cache
// (as in install.test.mjs) with the last release of 16.0 (where `set` receives a still-pending
// promise, route keys are plain paths and a PPR page's RSC data is its prefetch file), 16.1,
// 16.2 and 16.3 (scoped route keys); 16.4, the repo's own, is what every other e2e file runs.
// STRATA_E2E_NEXT_MINORS=16.0.11,… picks others.
// 'use cache' through our handler (cached across requests, invalidated by revalidateTag), and a
// prerendered page served at once from the build output through our incremental handler.
import fs from 'node:fs'
import os from 'node:os'
import path from 'node:path'
import { afterAll, beforeAll, describe, expect, test } from 'vitest'
import { buildApp, parseValue, startServer } from './next-app.mjs'
import { env, installApp, packStrataCache } from './installed-app.mjs'

const MINORS = (process.env.STRATA_E2E_NEXT_MINORS || '16.0.11,16.1.7,16.2.12,16.3.8').split(',').filter(Boolean)

const files = {
  'next.config.mjs': `import { withStrataCache } from 'strata-cache/config'\nexport default withStrataCache({ cacheComponents: true })\n`,
  'app/layout.js': `export default function Layout({ children }) { return <html><body>{children}</body></html> }\n`,
  'lib/data.js': [
    `import { cacheLife, cacheTag } from 'next/cache'`,
    `export async function products() {`,
    `  'use cache'`,
    `  cacheTag('products')`,
    `  cacheLife('hours')`,
    `  return \`\${Date.now()}-\${Math.random().toString(36).slice(2, 10)}\``,
    `}`,
  ].join('\n'),
  'app/page.js': `import { products } from '../lib/data.js'\nexport default async function Page() { return <p data-testid="products">{await products()}</p> }\n`,
  'app/dynamic/page.js': [
    `import { Suspense } from 'react'`,
    `import { connection } from 'next/server'`,
    `import { products } from '../../lib/data.js'`,
    `async function Products() { await connection(); return <p data-testid="products">{await products()}</p> }`,
    `export default function Page() { return <Suspense fallback={null}><Products /></Suspense> }`,
  ].join('\n'),
  'app/api/revalidate/route.js': [
    `import { revalidateTag } from 'next/cache'`,
    `export async function POST() { revalidateTag('products', { expire: 0 }); return Response.json({ ok: true }) }`,
  ].join('\n'),
  'app/api/stats/route.js': `import { connection } from 'next/server'\nimport { stats } from 'strata-cache'\nexport async function GET() { await connection(); return Response.json(stats()) }\n`,
}

const work = fs.mkdtempSync(path.join(os.tmpdir(), 'strata-minors-'))
let packed
beforeAll(() => { packed = packStrataCache(work) }, 60_000)
afterAll(() => fs.rmSync(work, { recursive: true, force: true }))

describe.each(MINORS)('next@%s', (next) => {
  let server
  const dir = path.join(work, `next-${next}`)
  beforeAll(async () => {
    installApp(dir, packed, { next, files })
    const { ms } = await buildApp({ dir, env })
    console.log(`[e2e minors] next@${next} build: ${(ms / 1000).toFixed(1)} s`)
    server = await startServer({ dir, env, probePath: '/api/stats' })
  }, 240_000)
  afterAll(async () => { await server?.stop() })

  const value = async (p) => {
    const res = await server.fetchPage(p)
    expect(res.status, `${p}: ${res.text.slice(0, 300)}`).toBe(200)
    return { value: parseValue(res.text, 'products'), cache: res.headers['x-nextjs-cache'] }
  }
  const stats = async () => JSON.parse((await server.fetchPage('/api/stats')).text)

  test('a prerendered page is served from the build output through our incremental handler', async () => {
    const first = await value('/')
    expect(first.cache).toBe('HIT')
    expect(first.value).toMatch(/^\d+-\w+$/)
    expect((await stats()).incrementalCalls.get).toBeGreaterThan(0)
  })

  test("'use cache' is cached by our handler across requests, and revalidateTag reaches it", async () => {
    const a = await value('/dynamic')
    const b = await value('/dynamic')
    expect(b.value).toBe(a.value)
    const s = await stats()
    expect(s.calls.get).toBeGreaterThanOrEqual(2)
    expect(s.calls.set).toBeGreaterThanOrEqual(1)
    expect((await server.fetchPage('/api/revalidate', { method: 'POST' })).status).toBe(200)
    const c = await value('/dynamic')
    expect(c.value).not.toBe(a.value)
    expect((await stats()).calls.updateTags).toBeGreaterThan(0)
  })
})
