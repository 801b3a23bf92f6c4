// withStrataCache (strata-cache/config): one line wires both handlers into a Next config; a wrong
// option is a build-time error naming it; loading it does not load the native addon.
import { execFileSync } from 'node:child_process'
import { existsSync } from 'node:fs'
import { createRequire } from 'node:module'
import path from 'node:path'
import { describe, expect, it } from 'vitest'

const require = createRequire(import.meta.url)
const { withStrataCache } = require('strata-cache/config')
const root = path.dirname(require.resolve('strata-cache/package.json'))

describe('withStrataCache', () => {
  it('with cacheComponents: both handlers, absolute paths that exist, Next memory cache off', () => {
    const input = { cacheComponents: true, reactStrictMode: true, serverExternalPackages: ['sharp', 'strata-cache'], cacheHandlers: { static: '/abs/static.js' } }
    const before = JSON.stringify(input)
    const out = withStrataCache(input)
    expect(out.cacheHandlers).toEqual({ static: '/abs/static.js', default: path.join(root, 'use-cache.js'), remote: path.join(root, 'use-cache.js') })
    expect(out.cacheHandler).toBe(path.join(root, 'incremental.js'))
    for (const p of [out.cacheHandler, out.cacheHandlers.default]) {
      expect(path.isAbsolute(p)).toBe(true)
      expect(existsSync(p)).toBe(true)
    }
    expect(out.cacheMaxMemorySize).toBe(0)
    expect(out.serverExternalPackages).toEqual(['sharp', 'strata-cache'])
    expect(out.turbopack.ignoreIssue).toEqual([{ path: '**/binding.js', title: /^Module not found/ }])
    expect(out.reactStrictMode).toBe(true)
    expect(JSON.stringify(input), 'the input is not modified').toBe(before)
  })

  it("without cacheComponents: the incremental cache only; options choose", () => {
    const out = withStrataCache({ turbopack: { ignoreIssue: [{ path: 'x' }] } })
    expect(out.cacheHandlers).toBeUndefined()
    expect(out.cacheHandler).toBe(path.join(root, 'incremental.js'))
    expect(out.serverExternalPackages).toEqual(['strata-cache'])
    expect(out.turbopack.ignoreIssue).toHaveLength(2)
    const onlyUseCache = withStrataCache({ cacheComponents: true }, { incremental: false })
    expect(onlyUseCache.cacheHandler).toBeUndefined()
    expect(onlyUseCache.cacheMaxMemorySize).toBeUndefined()
    expect(onlyUseCache.cacheHandlers.default).toBe(path.join(root, 'use-cache.js'))
    expect(withStrataCache({}, { useCache: true }).cacheHandlers.remote).toBe(path.join(root, 'use-cache.js'))
  })

  it('the function form of next.config', async () => {
    const wired = withStrataCache(async (phase) => ({ cacheComponents: true, distDir: phase }))
    expect(typeof wired).toBe('function')
    const out = await wired('phase-production-build', {})
    expect(out.distDir).toBe('phase-production-build')
    expect(out.cacheHandlers.default).toBe(path.join(root, 'use-cache.js'))
  })

  it.each([
    [[{}, { redis: 'redis://x' }], /unknown option `redis`/],
    [[{}, { incremental: 'yes' }], /invalid option `incremental`: expected true or false.*got string "yes"/],
    [[{}, 5], /options must be an object/],
    [[[]], /the Next config must be an object/],
    [[{ cacheHandler: '/mine.js' }], /`cacheHandler` is already set to "\/mine.js".*\{ incremental: false \}/],
    [[{ cacheComponents: true, cacheHandlers: { default: '/mine.js' } }], /`default` is already set.*\{ useCache: false \}/],
  ])('a wrong option or a conflict is a STRATA_CONFIG error naming it (%#)', (args, message) => {
    let err
    try {
      withStrataCache(...args)
    } catch (e) {
      err = e
    }
    expect(err?.code).toBe('STRATA_CONFIG')
    expect(err.message).toMatch(message)
  })

  it('keeps a handler the app set to ours, and the app\'s own handlers with the options off', () => {
    const ours = path.join(root, 'incremental.js')
    expect(withStrataCache({ cacheHandler: ours }).cacheHandler).toBe(ours)
    expect(withStrataCache({ cacheHandler: '/mine.js' }, { incremental: false }).cacheHandler).toBe('/mine.js')
  })

  it('loading strata-cache/config does not load the native addon', () => {
    const loaded = execFileSync(process.execPath, ['-e', `
      require(${JSON.stringify(path.join(root, 'config.js'))})
      console.log(JSON.stringify(Object.keys(require.cache)))
    `], { encoding: 'utf8' })
    const files = JSON.parse(loaded)
    expect(files.some((f) => f.endsWith('with-strata-cache.js'))).toBe(true)
    expect(files.filter((f) => f.endsWith('.node') || f.endsWith('binding.js') || f.endsWith(`${path.sep}index.js`))).toEqual([])
  })
})
