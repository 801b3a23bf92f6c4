'use strict'
/**
 * The errors strata-cache throws: one class with a stable `code`, the one way argument errors
 * are worded, and the one way any other error (the addon's, which carry `code`) becomes one.
 * Shared by both handlers, the store and the codec.
 */

/** An error with a stable `code` (`STRATA_INVALID_ARG`, `STRATA_CONFIG`, `STRATA_DECODE`, `STRATA_INTERNAL`, ...). */
class StrataError extends Error {
  constructor(code, message, options) {
    super(message, options)
    this.name = 'StrataError'
    this.code = code
  }
}

/** A short description of a value for an error message (never the whole value). */
function describe(v) {
  if (v === null) return 'null'
  if (v === undefined) return 'undefined'
  if (Array.isArray(v)) return 'an array'
  if (typeof v === 'string') return `string ${JSON.stringify(v.length > 40 ? v.slice(0, 40) + '…' : v)}`
  if (typeof v === 'number') return `number ${v}`
  if (v instanceof Map) return 'a Map'
  if (ArrayBuffer.isView(v)) return v.constructor && v.constructor.name ? `a ${v.constructor.name}` : 'a typed array'
  return typeof v
}

/** `STRATA_INVALID_ARG` for argument `name`, which should have been `expected`. */
function invalid(name, expected, got) {
  return new StrataError('STRATA_INVALID_ARG', `invalid argument \`${name}\`: expected ${expected}, got ${describe(got)}`)
}

/** Any error from the addon (which sets `code`) or from JS as a StrataError; unknown: STRATA_INTERNAL. */
function toStrataError(err) {
  if (err instanceof StrataError) return err
  const message = err && err.message ? err.message : String(err)
  const code = err && typeof err.code === 'string' && err.code.startsWith('STRATA_') ? err.code : 'STRATA_INTERNAL'
  return new StrataError(code, message, { cause: err })
}

module.exports = { StrataError, describe, invalid, toStrataError }
