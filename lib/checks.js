'use strict'
/**
 * The value tests and argument checks every JS file shares (the handlers, the store, the
 * codec): each rule is written here once. A failed check throws `STRATA_INVALID_ARG` naming the
 * argument (`invalid`, lib/errors.js): a wrong type from JS is a typed error, never a crash.
 */
const { invalid } = require('./errors.js')

/** `null` or `undefined`: an optional argument that was not given. */
const isNil = (v) => v === undefined || v === null
/** Any object (arrays, Maps and Buffers included), not `null`. */
const isObject = (v) => typeof v === 'object' && v !== null
/** An object that is not an array. */
const isRecord = (v) => isObject(v) && !Array.isArray(v)
const isBytes = (v) => v instanceof Uint8Array
const isFiniteNumber = (v) => typeof v === 'number' && Number.isFinite(v)
const isNonNegativeNumber = (v) => isFiniteNumber(v) && v >= 0
const isStringArray = (v) => Array.isArray(v) && v.every((s) => typeof s === 'string')
const hasOwn = (o, k) => Object.prototype.hasOwnProperty.call(o, k)

/** `tags` as an array of strings; throws naming the first element that is not one. */
function checkTags(name, tags) {
  if (!Array.isArray(tags)) throw invalid(name, 'an array of strings', tags)
  for (let i = 0; i < tags.length; i++) {
    if (typeof tags[i] !== 'string') throw invalid(`${name}[${i}]`, 'a string', tags[i])
  }
  return tags
}

function checkNumber(name, v) {
  if (!isFiniteNumber(v)) throw invalid(name, 'a finite number', v)
  return v
}

/** The total size of a value's chunks, in bytes. */
function byteLength(chunks) {
  let n = 0
  for (const c of chunks) n += c.byteLength
  return n
}

module.exports = {
  byteLength,
  isNil,
  isObject,
  isRecord,
  isBytes,
  isFiniteNumber,
  isNonNegativeNumber,
  isStringArray,
  hasOwn,
  checkTags,
  checkNumber,
}
