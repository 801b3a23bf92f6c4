'use strict'
/**
 * The errors strata-cache throws: one class with a stable `code`, and the one way argument
 * errors are worded. Shared by both handlers (index.js, lib/incremental.js) and the codec.
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

module.exports = { StrataError, describe, invalid }
