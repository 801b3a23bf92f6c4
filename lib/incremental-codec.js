'use strict'
/**
 * The byte layout of one entry of the singular `cacheHandler` (Next's incremental cache).
 *
 * The Rust core stores one opaque payload per entry; this module turns a Next value
 * (`APP_PAGE`, `APP_ROUTE`, `PAGES`, `FETCH`, `REDIRECT`, `IMAGE`, or `null`) into that payload
 * and back. Layout:
 *
 *   magic "STIC" (4 bytes) | format version (1 byte) | u32 LE length of the metadata JSON
 *   | metadata JSON (UTF-8) | part 0 | part 1 | ...
 *
 * The metadata holds the kind, the small JSON-able fields (headers, status, props, pageData,
 * the FETCH data minus its body, the IMAGE fields), which optional fields were present but
 * `undefined`, and the list of binary parts (`[role, byteLength]`, or `[role, byteLength, name]`
 * for a `segmentData` entry). Large strings (html, postponed, the FETCH body) are parts in UTF-8,
 * never JSON-escaped; Buffers are parts as they are. Decoding returns Buffers that are views of
 * the payload (no copy) and strings read straight from it.
 *
 * Shapes follow next@16 `dist/server/response-cache/types.d.ts`; which keys exist on a value
 * follows what Next itself builds (`response-cache/utils.js` `fromResponseCacheEntry` always sets
 * every APP_PAGE / PAGES key, possibly to `undefined`), so presence is kept exactly: absent stays
 * absent, present-but-`undefined` stays present.
 */

/** `x-next-cache-tags` (next `dist/lib/constants.js` `NEXT_CACHE_TAGS_HEADER`). */
const NEXT_CACHE_TAGS_HEADER = 'x-next-cache-tags'

const MAGIC = Buffer.from('STIC', 'latin1')
/** Bumped whenever the layout changes; a payload of another version decodes as STRATA_DECODE. */
const FORMAT_VERSION = 1
/** magic (4) + version (1) + metadata length (4). */
const HEADER_BYTES = 9
const MAX_U32 = 0xffffffff

// ---------------------------------------------------------------------------------------------
// Errors and checks (lib/errors.js, lib/checks.js)

const { StrataError, describe, invalid } = require('./errors.js')
const { isNil, isObject, isRecord, isBytes, isFiniteNumber, isNonNegativeNumber, isStringArray, hasOwn, checkTags, checkNumber } = require('./checks.js')

function decodeError(why) {
  return new StrataError('STRATA_DECODE', `malformed incremental cache entry: ${why}`)
}

// ---------------------------------------------------------------------------------------------
// The fields of each kind, in the key order Next builds them.
//
// Storage per type: `text` = UTF-8 part, `bytes` = raw part, `segments` = one raw part per Map
// entry, `fetchData` = JSON object plus its `body` as a UTF-8 part, anything else = JSON.

const KINDS = {
  APP_PAGE: [
    { key: 'html', type: 'text', required: true },
    { key: 'rscData', type: 'bytes' },
    { key: 'headers', type: 'headers' },
    { key: 'postponed', type: 'text' },
    { key: 'status', type: 'number' },
    { key: 'segmentData', type: 'segments' },
  ],
  APP_ROUTE: [
    { key: 'body', type: 'bytes', required: true },
    { key: 'status', type: 'number', required: true },
    { key: 'headers', type: 'headers', required: true },
  ],
  PAGES: [
    { key: 'html', type: 'text', required: true },
    { key: 'pageData', type: 'object', required: true },
    { key: 'headers', type: 'headers' },
    { key: 'status', type: 'number' },
  ],
  FETCH: [
    { key: 'data', type: 'fetchData', required: true },
    { key: 'tags', type: 'tags' },
    { key: 'revalidate', type: 'number', required: true },
  ],
  REDIRECT: [{ key: 'props', type: 'object', required: true }],
  IMAGE: [
    { key: 'etag', type: 'string', required: true },
    { key: 'upstreamEtag', type: 'string', required: true },
    { key: 'buffer', type: 'bytes', required: true },
    // `mime.getExtension` (next `dist/server/serve-static.js`) returns null for unknown types.
    { key: 'extension', type: 'stringOrNull', required: true },
    { key: 'revalidate', type: 'number' },
    { key: 'isMiss', type: 'boolean' },
    { key: 'isStale', type: 'boolean' },
  ],
}
const KIND_NAMES = Object.keys(KINDS)
/** The part role of the FETCH body (a UTF-8 part inside `data`). */
const FETCH_BODY = 'data.body'
/** The undef entry of a present-but-`undefined` `data.status`. */
const FETCH_STATUS = 'data.status'

/** absent | undefined | present: how a value holds `key` (an own `undefined` is "undefined"). */
function presence(obj, key) {
  if (obj[key] !== undefined) return 'present'
  return hasOwn(obj, key) ? 'undefined' : 'absent'
}

// ---------------------------------------------------------------------------------------------
// Validation

function checkHeaders(name, headers) {
  if (!isRecord(headers) || headers instanceof Map || isBytes(headers)) {
    throw invalid(name, 'an object of header values', headers)
  }
  for (const h of Object.keys(headers)) {
    const v = headers[h]
    if (v === undefined || typeof v === 'string' || isFiniteNumber(v)) continue
    if (isStringArray(v)) continue
    throw invalid(`${name}[${JSON.stringify(h)}]`, 'a string, an array of strings or a finite number', v)
  }
}

function checkType(name, type, v) {
  switch (type) {
    case 'text':
    case 'string':
      if (typeof v !== 'string') throw invalid(name, 'a string', v)
      return
    case 'stringOrNull':
      if (typeof v !== 'string' && v !== null) throw invalid(name, 'a string or null', v)
      return
    case 'bytes':
      if (!isBytes(v)) throw invalid(name, 'a Buffer or Uint8Array', v)
      return
    case 'number':
      checkNumber(name, v)
      return
    case 'boolean':
      if (typeof v !== 'boolean') throw invalid(name, 'a boolean', v)
      return
    case 'object':
      if (!isObject(v) || v instanceof Map || isBytes(v)) throw invalid(name, 'a JSON object', v)
      return
    case 'headers':
      checkHeaders(name, v)
      return
    case 'tags':
      checkTags(name, v)
      return
    case 'segments':
      if (!(v instanceof Map)) throw invalid(name, 'a Map of string to Buffer', v)
      for (const [k, b] of v) {
        if (typeof k !== 'string') throw invalid(`${name} key`, 'a string', k)
        if (!isBytes(b)) throw invalid(`${name}[${JSON.stringify(k)}]`, 'a Buffer or Uint8Array', b)
      }
      return
    case 'fetchData':
      if (!isRecord(v)) throw invalid(name, 'an object { headers, body, url, status? }', v)
      checkHeaders(`${name}.headers`, v.headers)
      if (typeof v.body !== 'string') throw invalid(`${name}.body`, 'a string', v.body)
      if (typeof v.url !== 'string') throw invalid(`${name}.url`, 'a string', v.url)
      if (!isNil(v.status)) checkNumber(`${name}.status`, v.status)
      return
    default:
      throw invalid(name, 'a known field type', type)
  }
}

/**
 * Checks that `value` is something the singular cacheHandler may store: `null` (Next stores
 * `null` for notFound entries, `incremental-cache/index.js` `set`) or a value of a known kind
 * with the field types of `response-cache/types.d.ts`. Throws STRATA_INVALID_ARG naming the
 * field. Optional fields may be absent, `undefined` or `null`.
 * @param {unknown} value
 */
function checkValue(value) {
  if (value === null) return
  if (!isRecord(value)) throw invalid('value', 'an object with a `kind`, or null', value)
  const fields = typeof value.kind === 'string' && hasOwn(KINDS, value.kind) ? KINDS[value.kind] : undefined
  if (!fields) throw invalid('value.kind', `one of ${KIND_NAMES.join(', ')}`, value.kind)
  for (const f of fields) {
    const v = value[f.key]
    if (v === undefined || (v === null && !f.required)) {
      if (f.required) throw invalid(`value.${f.key}`, describeType(f.type), v)
      continue
    }
    checkType(`value.${f.key}`, f.type, v)
  }
}

function describeType(type) {
  switch (type) {
    case 'text':
    case 'string':
      return 'a string'
    case 'stringOrNull':
      return 'a string or null'
    case 'bytes':
      return 'a Buffer or Uint8Array'
    case 'number':
      return 'a finite number'
    case 'object':
      return 'a JSON object'
    case 'headers':
      return 'an object of header values'
    case 'fetchData':
      return 'an object { headers, body, url, status? }'
    default:
      return type
  }
}

// ---------------------------------------------------------------------------------------------
// Encoding

/**
 * Encodes a value into the chunks of its payload: the first chunk holds the header, the
 * metadata and every string part; the others are the value's own Buffers (not copied; empty
 * ones are left out). The payload is the concatenation of the chunks.
 * @param {object | null} value
 * @returns {Uint8Array[]}
 */
function encodeValue(value, cacheControl) {
  checkValue(value)
  const cc = checkCacheControl(cacheControl)
  const meta = { kind: null }
  // Next's `cacheControl` of the entry (16.4 hands it back from `get`), stored with it.
  if (cc !== undefined) meta.cc = cc
  /** [role, string] in part order (they go first, inside the head chunk). */
  const texts = []
  /** [role, bytes, name?] in part order (after the texts). */
  const binaries = []

  if (value !== null) {
    meta.kind = value.kind
    const fields = {}
    const undef = []
    const maps = []
    for (const f of KINDS[value.kind]) {
      const state = presence(value, f.key)
      if (state === 'absent') continue
      if (state === 'undefined') {
        undef.push(f.key)
        continue
      }
      const v = value[f.key]
      if (v === null) {
        fields[f.key] = null
        continue
      }
      switch (f.type) {
        case 'text':
          texts.push([f.key, v])
          break
        case 'bytes':
          binaries.push([f.key, v])
          break
        case 'segments':
          maps.push(f.key)
          for (const [name, bytes] of v) binaries.push([f.key, bytes, name])
          break
        case 'fetchData': {
          // The body (base64 of the response, or `unstable_cache`'s JSON) is the large part.
          const data = { headers: v.headers, url: v.url }
          const status = presence(v, 'status')
          if (status === 'present') data.status = v.status
          else if (status === 'undefined') undef.push(FETCH_STATUS)
          fields.data = data
          texts.push([FETCH_BODY, v.body])
          break
        }
        default:
          fields[f.key] = v
      }
    }
    meta.fields = fields
    meta.undef = undef
    meta.maps = maps
  }

  const textLengths = texts.map(([, s]) => Buffer.byteLength(s, 'utf8'))
  // Text parts that are pure ASCII (one byte per character) are decoded as latin1, several
  // times faster than UTF-8 for the same result (~60 vs ~500 µs per MB of html).
  const ascii = texts.filter(([, s], i) => textLengths[i] === s.length).map(([role]) => role)
  if (ascii.length > 0) meta.ascii = ascii
  meta.parts = [
    ...texts.map(([role], i) => [role, textLengths[i]]),
    ...binaries.map(([role, bytes, name]) => (name === undefined ? [role, bytes.byteLength] : [role, bytes.byteLength, name])),
  ]

  let json
  try {
    json = JSON.stringify(meta)
  } catch (err) {
    throw unserialisable(value, err)
  }
  const jsonLength = Buffer.byteLength(json, 'utf8')
  if (jsonLength > MAX_U32) throw invalid('value', 'metadata under 4 GiB', value)

  let headLength = HEADER_BYTES + jsonLength
  for (const n of textLengths) headLength += n
  const head = Buffer.allocUnsafe(headLength)
  MAGIC.copy(head, 0)
  head[4] = FORMAT_VERSION
  head.writeUInt32LE(jsonLength, 5)
  let at = HEADER_BYTES + head.write(json, HEADER_BYTES, 'utf8')
  for (let i = 0; i < texts.length; i++) at += head.write(texts[i][1], at, 'utf8')
  if (at !== headLength) throw new StrataError('STRATA_INTERNAL', `incremental codec wrote ${at} of ${headLength} head bytes`)

  const chunks = [head]
  for (const [, bytes] of binaries) if (bytes.byteLength > 0) chunks.push(bytes)
  return chunks
}

/** Names the JSON field that could not be serialised (a cycle, a BigInt, ...). */
function unserialisable(value, err) {
  for (const f of KINDS[value.kind]) {
    try {
      JSON.stringify(value[f.key])
    } catch {
      return invalid(`value.${f.key}`, `a JSON-serialisable value (${err.message})`, value[f.key])
    }
  }
  return invalid('value', `a JSON-serialisable value (${err.message})`, value)
}

// ---------------------------------------------------------------------------------------------
// Decoding

const isSafeLength = (n) => Number.isSafeInteger(n) && n >= 0

/**
 * Decodes a payload made by `encodeValue`. Buffers of the result are views of `payload` (no
 * copy); keep the payload alive (or copy) if it can be reused. Malformed bytes throw
 * STRATA_DECODE (the handler reports a miss).
 * @param {Buffer | Uint8Array} payload
 * @returns {object | null}
 */
function decodeValue(payload) {
  return decodeEntry(payload).value
}

/**
 * Like `decodeValue`, with the `cacheControl` stored by `encodeValue`:
 * `{ value, cacheControl }` (`cacheControl` undefined when none was stored).
 */
function decodeEntry(payload) {
  if (!isBytes(payload)) throw invalid('payload', 'a Buffer or Uint8Array', payload)
  const buf = Buffer.isBuffer(payload) ? payload : Buffer.from(payload.buffer, payload.byteOffset, payload.byteLength)
  try {
    return decodeBuffer(buf)
  } catch (err) {
    if (err && err.code === 'STRATA_DECODE') throw err
    // Anything else on the way (a value that fails `checkValue`, ...) is still bad bytes.
    throw decodeError(err && err.message ? err.message : String(err))
  }
}

function decodeBuffer(buf) {
  if (buf.length < HEADER_BYTES) throw decodeError(`${buf.length} bytes, shorter than the header`)
  if (buf[0] !== MAGIC[0] || buf[1] !== MAGIC[1] || buf[2] !== MAGIC[2] || buf[3] !== MAGIC[3]) {
    throw decodeError('bad magic')
  }
  if (buf[4] !== FORMAT_VERSION) throw decodeError(`format version ${buf[4]}, expected ${FORMAT_VERSION}`)
  const jsonLength = buf.readUInt32LE(5)
  const jsonEnd = HEADER_BYTES + jsonLength
  if (jsonEnd > buf.length) throw decodeError(`metadata of ${jsonLength} bytes runs past the end (${buf.length} bytes)`)
  let meta
  try {
    meta = JSON.parse(buf.toString('utf8', HEADER_BYTES, jsonEnd))
  } catch (err) {
    throw decodeError(`metadata is not JSON (${err.message})`)
  }
  if (!isRecord(meta)) throw decodeError('metadata is not an object')

  // The part list must describe exactly the bytes after the metadata.
  const partList = meta.parts
  if (!Array.isArray(partList)) throw decodeError('no part list')
  const parts = []
  let at = jsonEnd
  for (const p of partList) {
    if (!Array.isArray(p) || (p.length !== 2 && p.length !== 3) || typeof p[0] !== 'string' || !isSafeLength(p[1])) {
      throw decodeError('bad part descriptor')
    }
    if (p.length === 3 && typeof p[2] !== 'string') throw decodeError('bad part name')
    if (p[1] > buf.length - at) throw decodeError(`part \`${p[0]}\` runs past the end`)
    parts.push({ role: p[0], start: at, end: at + p[1], name: p[2] })
    at += p[1]
  }
  if (at !== buf.length) throw decodeError(`${buf.length - at} bytes after the last part`)

  if (hasOwn(meta, 'ascii') && !isStringArray(meta.ascii)) {
    throw decodeError('ascii is not a list of names')
  }
  let cacheControl
  if (hasOwn(meta, 'cc')) {
    try {
      cacheControl = checkCacheControl(meta.cc)
    } catch {
      throw decodeError('bad cacheControl')
    }
    if (cacheControl === undefined) throw decodeError('bad cacheControl')
  }
  if (meta.kind === null) {
    if (parts.length > 0 || hasOwn(meta, 'fields')) throw decodeError('a null entry with fields')
    return { value: null, cacheControl }
  }
  if (typeof meta.kind !== 'string' || !hasOwn(KINDS, meta.kind)) throw decodeError(`unknown kind ${describe(meta.kind)}`)
  const specs = KINDS[meta.kind]
  const fields = meta.fields
  const undef = meta.undef
  const maps = meta.maps
  if (!isRecord(fields)) throw decodeError('fields is not an object')
  if (!isStringArray(undef)) throw decodeError('undef is not a list of names')
  if (!isStringArray(maps)) throw decodeError('maps is not a list of names')

  const specByKey = new Map(specs.map((f) => [f.key, f]))
  for (const k of Object.keys(fields)) if (!specByKey.has(k)) throw decodeError(`unknown field \`${k}\``)
  for (const k of undef) if (!specByKey.has(k) && k !== FETCH_STATUS) throw decodeError(`unknown field \`${k}\``)
  for (const k of maps) if (!specByKey.has(k) || specByKey.get(k).type !== 'segments') throw decodeError(`\`${k}\` is not a Map field`)
  if (new Set(undef).size !== undef.length || new Set(maps).size !== maps.length) throw decodeError('a field is listed twice')

  // Parts by role; a non-map role may appear once, a map entry name once per map.
  const single = new Map()
  const entries = new Map()
  for (const p of parts) {
    const spec = specByKey.get(p.role)
    if (p.role === FETCH_BODY && meta.kind === 'FETCH') {
      if (p.name !== undefined || single.has(p.role)) throw decodeError('bad FETCH body part')
      single.set(p.role, p)
    } else if (spec && (spec.type === 'text' || spec.type === 'bytes')) {
      if (p.name !== undefined || single.has(p.role)) throw decodeError(`part \`${p.role}\` is repeated or named`)
      single.set(p.role, p)
    } else if (spec && spec.type === 'segments') {
      if (p.name === undefined || !maps.includes(p.role)) throw decodeError(`part \`${p.role}\` is not a Map entry`)
      let list = entries.get(p.role)
      if (!list) entries.set(p.role, (list = new Map()))
      if (list.has(p.name)) throw decodeError(`Map entry ${JSON.stringify(p.name)} of \`${p.role}\` is repeated`)
      list.set(p.name, p)
    } else {
      throw decodeError(`unknown part \`${p.role}\``)
    }
  }

  const value = { kind: meta.kind }
  for (const f of specs) {
    const k = f.key
    const sources = (hasOwn(fields, k) ? 1 : 0) + (undef.includes(k) ? 1 : 0) + (single.has(k) ? 1 : 0) + (maps.includes(k) ? 1 : 0)
    if (sources > 1) throw decodeError(`field \`${k}\` is stored twice`)
    if (undef.includes(k)) {
      value[k] = undefined
    } else if (single.has(k)) {
      const p = single.get(k)
      value[k] = f.type === 'text' ? buf.toString(textEncoding(meta, k), p.start, p.end) : buf.subarray(p.start, p.end)
    } else if (maps.includes(k)) {
      const m = new Map()
      for (const [name, p] of entries.get(k) || []) m.set(name, buf.subarray(p.start, p.end))
      value[k] = m
    } else if (hasOwn(fields, k)) {
      const v = fields[k]
      if (f.type === 'fetchData') {
        value[k] = decodeFetchData(v, single.get(FETCH_BODY), undef.includes(FETCH_STATUS), buf, textEncoding(meta, FETCH_BODY))
      } else {
        // A part-backed field stored in JSON can only be an explicit null.
        if ((f.type === 'text' || f.type === 'bytes' || f.type === 'segments') && v !== null) {
          throw decodeError(`field \`${k}\` should be a part`)
        }
        value[k] = v
      }
    }
  }
  if (meta.kind === 'FETCH' && !(isObject(value.data) && single.has(FETCH_BODY))) {
    throw decodeError('FETCH body and data do not match')
  }
  if (meta.kind !== 'FETCH' && undef.includes(FETCH_STATUS)) throw decodeError(`\`${FETCH_STATUS}\` outside FETCH`)
  checkValue(value)
  return { value, cacheControl }
}

/** How text part `role` was stored: `latin1` when the encoder found it pure ASCII. */
function textEncoding(meta, role) {
  return meta.ascii !== undefined && meta.ascii.includes(role) ? 'latin1' : 'utf8'
}

/**
 * Next's `cacheControl` (`{ revalidate: seconds | false, expire: seconds | undefined }`), or
 * `undefined`; anything else is STRATA_INVALID_ARG. Returns a plain copy.
 */
function checkCacheControl(cc) {
  if (isNil(cc)) return undefined
  if (!isObject(cc)) throw invalid('cacheControl', 'an object { revalidate, expire }', cc)
  const { revalidate, expire } = cc
  if (revalidate !== false && !isNonNegativeNumber(revalidate)) {
    throw invalid('cacheControl.revalidate', 'a non-negative number of seconds or false', revalidate)
  }
  if (expire !== undefined && !isNonNegativeNumber(expire)) {
    throw invalid('cacheControl.expire', 'a non-negative number of seconds or undefined', expire)
  }
  return expire === undefined ? { revalidate } : { revalidate, expire }
}

function decodeFetchData(data, bodyPart, statusUndefined, buf, encoding) {
  if (!isRecord(data) || !bodyPart) throw decodeError('bad FETCH data')
  for (const k of Object.keys(data)) {
    if (k !== 'headers' && k !== 'url' && k !== 'status') throw decodeError(`unknown FETCH data field \`${k}\``)
  }
  if (statusUndefined && hasOwn(data, 'status')) throw decodeError('`data.status` is stored twice')
  // Key order as Next builds it (`patch-fetch.js`, `unstable-cache.js`): headers, body, status, url.
  const out = { headers: data.headers, body: buf.toString(encoding, bodyPart.start, bodyPart.end) }
  if (hasOwn(data, 'status')) out.status = data.status
  else if (statusUndefined) out.status = undefined
  out.url = data.url
  return out
}

// ---------------------------------------------------------------------------------------------
// Tags

/**
 * The tags an entry carries, by Next's rules (next `dist/server/lib/incremental-cache/`):
 * - APP_PAGE / APP_ROUTE / PAGES: `value.headers['x-next-cache-tags']` split on `,`, only when the
 *   header is a string (`file-system-cache.js` `get`, `index.js` `get`);
 * - FETCH: `ctx.tags` when the context has them (on `set`, `file-system-cache.js` stores
 *   `tags: ctx.tags`, replacing `value.tags`), else `value.tags`; plus `ctx.softTags` when given
 *   (a `get` context: Next checks `ctx.tags ∪ ctx.softTags`);
 * - REDIRECT / IMAGE / null: none.
 * Empty names are dropped and duplicates kept once, in first-seen order.
 * @param {object | null} value
 * @param {{ tags?: string[], softTags?: string[] }} [ctx]
 * @returns {string[]}
 */
function tagsOf(value, ctx) {
  if (!isObject(value)) return []
  let tags = []
  switch (value.kind) {
    case 'APP_PAGE':
    case 'APP_ROUTE':
    case 'PAGES': {
      const header = isObject(value.headers) ? value.headers[NEXT_CACHE_TAGS_HEADER] : undefined
      if (typeof header === 'string') tags = header.split(',')
      break
    }
    case 'FETCH': {
      const own = ctx && Array.isArray(ctx.tags) ? ctx.tags : Array.isArray(value.tags) ? value.tags : []
      const soft = ctx && Array.isArray(ctx.softTags) ? ctx.softTags : []
      tags = [...own, ...soft]
      break
    }
    default:
      return []
  }
  const seen = new Set()
  for (const t of tags) if (typeof t === 'string' && t !== '') seen.add(t)
  return [...seen]
}

module.exports = {
  checkValue,
  checkCacheControl,
  encodeValue,
  decodeValue,
  decodeEntry,
  tagsOf,
  FORMAT_VERSION,
  MAGIC,
  NEXT_CACHE_TAGS_HEADER,
}
