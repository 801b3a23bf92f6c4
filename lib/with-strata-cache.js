'use strict'
/**
 * `withStrataCache(nextConfig, options?)`: wires strata-cache into a Next config in one line.
 *
 * It only wires; it never decides where the cache lives. Redis URL, namespace, sizes are read
 * by the handlers when the server first uses them (environment variables or
 * `createUseCacheHandler` options), never baked in at `next build`. Loading this module does not
 * load the native addon, so `next.config.ts` stays cheap to evaluate.
 */
const path = require('node:path')

const { StrataError, describe } = require('./errors.js')
const { isRecord } = require('./checks.js')
const { checkOptions, boolean } = require('./options.js')

const ROOT = path.join(__dirname, '..')
/** Absolute paths (Next resolves relative ones against `.next/` at `next start`). */
const USE_CACHE = path.join(ROOT, 'use-cache.js')
const INCREMENTAL = path.join(ROOT, 'incremental.js')

const OPTIONS = {
  useCache: boolean('true or false: set cacheHandlers.default and .remote (default: when cacheComponents is on)'),
  incremental: boolean('true or false: set cacheHandler, the incremental cache (default: true)'),
}

function configError(message) {
  return new StrataError('STRATA_CONFIG', `withStrataCache: ${message}`)
}

/** Sets `field` of `target` to `ours`, unless the app set it to something else (an error). */
function claim(target, field, ours, optionName) {
  const theirs = target[field]
  if (theirs !== undefined && theirs !== ours) {
    throw configError(`\`${field}\` is already set to ${JSON.stringify(theirs)}; remove it, or pass { ${optionName}: false } to keep yours`)
  }
  target[field] = ours
}

function apply(nextConfig, options) {
  if (!isRecord(nextConfig)) {
    throw configError(`the Next config must be an object (or a function returning one), got ${describe(nextConfig)}`)
  }
  const out = { ...nextConfig }
  const useCache = options.useCache ?? Boolean(nextConfig.cacheComponents)
  const incremental = options.incremental ?? true
  if (useCache) {
    const handlers = { ...(nextConfig.cacheHandlers || {}) }
    claim(handlers, 'default', USE_CACHE, 'useCache')
    claim(handlers, 'remote', USE_CACHE, 'useCache')
    out.cacheHandlers = handlers
  }
  if (incremental) {
    claim(out, 'cacheHandler', INCREMENTAL, 'incremental')
    // Next's own memory cache in front of the handler would duplicate strata-cache's L1 (and
    // serve each process's stale copy after another instance regenerated).
    out.cacheMaxMemorySize = 0
  }
  // The addon is loaded by Node at run time, never bundled.
  const external = new Set(nextConfig.serverExternalPackages || [])
  external.add('strata-cache')
  out.serverExternalPackages = [...external]
  // The napi-rs loader `require`s the addons of other platforms inside try/catch; Turbopack
  // reports each as "Module not found" when it traces the handler. Harmless: silenced.
  const turbopack = { ...(nextConfig.turbopack || {}) }
  turbopack.ignoreIssue = [...(turbopack.ignoreIssue || []), { path: '**/binding.js', title: /^Module not found/ }]
  out.turbopack = turbopack
  return out
}

/**
 * Returns `nextConfig` with strata-cache as its cache handlers. `nextConfig` may be an object or
 * Next's function form (`(phase, ctx) => config`, possibly async).
 * @throws {StrataError} STRATA_CONFIG naming the option or field that is wrong.
 */
function withStrataCache(nextConfig = {}, options) {
  const opts = checkOptions(OPTIONS, options, 'withStrataCache: ')
  if (typeof nextConfig === 'function') {
    return async (...args) => apply(await nextConfig(...args), opts)
  }
  return apply(nextConfig, opts)
}

module.exports = { withStrataCache }
