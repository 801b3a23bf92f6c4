'use strict'
/**
 * The options of `createUseCacheHandler` and `createIncrementalCacheHandler` (index.d.ts
 * `StrataOptions`), checked when a handler is created: a wrong name, type or value throws
 * `STRATA_CONFIG` naming the option (`withStrataCache`'s own options use the same check). What
 * an option means is decided in the core (`config`). Loads no native code (`next.config` uses it).
 */
const { StrataError, describe } = require('./errors.js')
const { isNil, isRecord, hasOwn } = require('./checks.js')

/** A check: `null` when `v` is acceptable, else what was expected. */
const wholeNumber = (min, max, expected) => (v) => Number.isSafeInteger(v) && v >= min && v <= max ? null : expected
const nonEmptyString = (expected) => (v) => typeof v === 'string' && v.length > 0 ? null : expected
const boolean = (expected) => (v) => typeof v === 'boolean' ? null : expected

const OPTION_CHECKS = {
  l1MaxBytes: wholeNumber(1, Infinity, 'a positive whole number of bytes'),
  maxTags: wholeNumber(1, Infinity, 'a positive whole number'),
  redis: nonEmptyString('a redis:// URL string'),
  namespace: nonEmptyString('a non-empty string'),
  maxTtlSeconds: wholeNumber(1, Infinity, 'a positive whole number of seconds'),
  redisTimeoutMs: wholeNumber(1, 60000, 'a whole number of ms between 1 and 60000'),
  l2MaxValueBytes: wholeNumber(1, Infinity, 'a positive whole number of bytes'),
  compressMinBytes: wholeNumber(0, Infinity, 'a whole number of bytes (0 = off)'),
  strict: boolean('true or false'),
  cluster: boolean('true or false'),
  redisCaFile: nonEmptyString('a path to a PEM file'),
  distDir: nonEmptyString('a directory path'),
}

/**
 * The options that were given (`undefined` ones left out), each checked by its entry in
 * `checks`; anything else throws STRATA_CONFIG naming the option, its message after `prefix`.
 */
function checkOptions(checks, options, prefix = '') {
  const fail = (message) => new StrataError('STRATA_CONFIG', prefix + message)
  if (isNil(options)) return {}
  if (!isRecord(options)) throw fail(`options must be an object, got ${describe(options)}`)
  const out = {}
  for (const [name, value] of Object.entries(options)) {
    if (!hasOwn(checks, name)) throw fail(`unknown option \`${name}\` (known: ${Object.keys(checks).join(', ')})`)
    if (value === undefined) continue
    const expected = checks[name](value)
    if (expected) throw fail(`invalid option \`${name}\`: expected ${expected}, got ${describe(value)}`)
    out[name] = value
  }
  return out
}

/** The handlers' options (`StrataOptions`), checked. */
const validateOptions = (options) => checkOptions(OPTION_CHECKS, options)

module.exports = { validateOptions, checkOptions, boolean }
