// The payload codec of the singular cacheHandler (lib/incremental-codec.js): every kind
// round-trips byte-exactly with its keys' presence kept, decoded Buffers are views of the
// payload, bad values are STRATA_INVALID_ARG naming the field, and bad bytes are STRATA_DECODE
// (never another exception). Values are shaped as next@16 builds them; one block compares with
// what Next's own FileSystemCache hands back.
import { describe, it, expect } from 'vitest'
import { createRequire } from 'node:module'
import { mkdtempSync, rmSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'

const require = createRequire(import.meta.url)
const { encodeValue, decodeValue, checkValue, tagsOf, FORMAT_VERSION, MAGIC } = require('../lib/incremental-codec.js')

// ---------------------------------------------------------------------------------------------
// Helpers

const concat = (chunks) => Buffer.concat(chunks.map((c) => Buffer.from(c.buffer, c.byteOffset, c.byteLength)))
const roundTrip = (value) => decodeValue(concat(encodeValue(value)))

/** A deterministic PRNG (mulberry32), so a failing flip can be replayed. */
function prng(seed) {
  let a = seed >>> 0
  return () => {
    a = (a + 0x6d2b79f5) >>> 0
    let t = a
    t = Math.imul(t ^ (t >>> 15), t | 1)
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61)
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296
  }
}

function bytes(n, seed = 1) {
  const rnd = prng(seed)
  const b = Buffer.alloc(n)
  for (let i = 0; i < n; i++) b[i] = Math.floor(rnd() * 256)
  return b
}

/** Every Buffer/Uint8Array inside `v`, by path. */
function buffersOf(v, path = 'value', out = []) {
  if (v instanceof Uint8Array) out.push([path, v])
  else if (v instanceof Map) for (const [k, x] of v) buffersOf(x, `${path}[${JSON.stringify(k)}]`, out)
  else if (v && typeof v === 'object') for (const k of Object.keys(v)) buffersOf(v[k], `${path}.${k}`, out)
  return out
}

/** Own keys as a set (key order carries no meaning: Next builds the same kind in several orders). */
const keysOf = (o) => Object.keys(o).sort()

/** Deep equality, own keys (present-but-undefined included), Map order and every byte. */
function expectSame(got, want) {
  expect(got).toStrictEqual(want)
  if (want === null) return
  expect(keysOf(got)).toEqual(keysOf(want))
  for (const k of Object.keys(want)) {
    if (want[k] instanceof Map) expect([...got[k].keys()]).toEqual([...want[k].keys()])
    if (want[k] && typeof want[k] === 'object' && !(want[k] instanceof Uint8Array) && !(want[k] instanceof Map)) {
      expect(keysOf(got[k])).toEqual(keysOf(want[k]))
    }
  }
  const byPath = (x, y) => (x[0] < y[0] ? -1 : x[0] > y[0] ? 1 : 0)
  const a = buffersOf(got).sort(byPath)
  const b = buffersOf(want).sort(byPath)
  expect(a.map(([p]) => p)).toEqual(b.map(([p]) => p))
  for (let i = 0; i < a.length; i++) {
    expect(Buffer.isBuffer(a[i][1]), `${a[i][0]} is a Buffer`).toBe(true)
    expect(Buffer.compare(a[i][1], Buffer.from(b[i][1].buffer, b[i][1].byteOffset, b[i][1].byteLength)), a[i][0]).toBe(0)
  }
}

function codeOf(fn) {
  try {
    fn()
  } catch (err) {
    return { code: err.code, name: err.name, message: err.message, isError: err instanceof Error }
  }
  return { code: 'no error' }
}

/** A payload made by hand: header + `meta` as JSON + raw bytes. */
function craft(meta, body = Buffer.alloc(0), { magic = MAGIC, version = FORMAT_VERSION, jsonLength } = {}) {
  const json = Buffer.from(typeof meta === 'string' ? meta : JSON.stringify(meta))
  const head = Buffer.alloc(9)
  Buffer.from(magic).copy(head, 0)
  head[4] = version
  head.writeUInt32LE(jsonLength ?? json.length, 5)
  return Buffer.concat([head, json, body])
}

// ---------------------------------------------------------------------------------------------
// Values as Next builds them (next@16.4.6 response-cache/utils.js, patch-fetch.js,
// unstable-cache.js, image-optimizer.js, next-server.js)

const tagsHeader = '_N_T_/layout,_N_T_/page,_N_T_/,_N_T_/index,products'
const appPage = () => ({
  kind: 'APP_PAGE',
  html: '<!DOCTYPE html><h1>Héllo — 日本語 🎉</h1>' + 'x'.repeat(3000),
  rscData: bytes(2921, 7),
  headers: {
    'x-nextjs-stale-time': '60',
    'x-next-cache-tags': tagsHeader,
    'set-cookie': ['a=1', 'b=2; Path=/'],
    'content-length': 42,
  },
  postponed: '{"type":"résumé","x":"🎉"}',
  status: 200,
  segmentData: new Map([
    ['/_tree', bytes(120, 2)],
    ['/_full', bytes(3000, 3)],
    ['/__PAGE__', Buffer.alloc(0)],
    ['/blog/über/日本', bytes(5, 4)],
    ['/a', bytes(1, 5)],
  ]),
})
const appPageBare = () => ({
  kind: 'APP_PAGE',
  html: '',
  rscData: undefined,
  headers: undefined,
  postponed: undefined,
  status: undefined,
  segmentData: undefined,
})
const appRoute = () => ({
  kind: 'APP_ROUTE',
  status: 200,
  body: Buffer.from('{"time":"2025-01-01T00:00:00.000Z","ok":"✓"}'),
  headers: { 'content-type': 'application/json', 'x-next-cache-tags': '_N_T_/layout,_N_T_/api/time/route,_N_T_/api/time' },
})
const pages = () => ({
  kind: 'PAGES',
  html: '<div id="__next">Grüße</div>',
  pageData: { pageProps: { title: 'Grüße 🎉', list: [1, 2, { deep: null }], empty: {} } },
  headers: undefined,
  status: undefined,
})
const fetchValue = () => ({
  kind: 'FETCH',
  data: {
    headers: { 'content-type': 'application/json', etag: 'W/"1"' },
    body: Buffer.from('{"products":["ä","b"]}').toString('base64'),
    status: 200,
    url: 'https://api.example.com/products?q=é',
  },
  revalidate: 300,
})
const unstableCacheValue = () => ({
  kind: 'FETCH',
  data: { headers: {}, body: JSON.stringify({ name: 'Zoë', n: 1, nested: ['日本'] }), status: 200, url: '' },
  revalidate: 31536000,
  tags: ['products', '_N_T_/'],
})
const redirect = () => ({ kind: 'REDIRECT', props: { __N_REDIRECT: '/login', __N_REDIRECT_STATUS: 307, __N_REDIRECT_BASE_PATH: false } })
const image = () => ({
  kind: 'IMAGE',
  etag: 'abc123',
  upstreamEtag: 'def456',
  buffer: bytes(1000, 9),
  extension: 'webp',
  revalidate: 60,
  isMiss: false,
  isStale: true,
})
const imageBare = () => ({ kind: 'IMAGE', buffer: Buffer.alloc(0), etag: '', extension: null, upstreamEtag: 'u' })

const ALL = {
  appPage,
  appPageBare,
  appRoute,
  pages,
  fetchValue,
  unstableCacheValue,
  redirect,
  image,
  imageBare,
  null: () => null,
}

// ---------------------------------------------------------------------------------------------

describe('round trip', () => {
  for (const [name, make] of Object.entries(ALL)) {
    it(`${name} decodes to the same value, byte for byte`, () => {
      const value = make()
      expectSame(roundTrip(value), make())
    })
  }

  it('keeps absent optional fields absent and undefined ones present', () => {
    const absent = roundTrip({ kind: 'APP_PAGE', html: '<p/>' })
    expect(keysOf(absent)).toEqual(['kind', 'html'].sort())
    const bare = roundTrip(appPageBare())
    expect(keysOf(bare)).toEqual(['kind', 'html', 'rscData', 'headers', 'postponed', 'status', 'segmentData'].sort())
    for (const k of ['rscData', 'headers', 'postponed', 'status', 'segmentData']) expect(bare[k]).toBeUndefined()

    const some = roundTrip({ kind: 'APP_PAGE', html: 'h', status: undefined, rscData: Buffer.from('r') })
    expect(keysOf(some)).toEqual(['kind', 'html', 'rscData', 'status'].sort())

    const noStatus = roundTrip({ kind: 'FETCH', data: { headers: {}, body: '', url: 'u' }, revalidate: 1 })
    expect(keysOf(noStatus.data)).toEqual(['headers', 'body', 'url'].sort())
    expect('tags' in noStatus).toBe(false)
    const undefStatus = roundTrip({ kind: 'FETCH', data: { headers: {}, body: '', url: 'u', status: undefined }, revalidate: 1, tags: undefined })
    expect(keysOf(undefStatus.data)).toEqual(['headers', 'body', 'status', 'url'].sort())
    expect(keysOf(undefStatus)).toEqual(['kind', 'data', 'tags', 'revalidate'].sort())

    const img = roundTrip({ kind: 'IMAGE', etag: 'e', upstreamEtag: 'u', buffer: Buffer.from('i'), extension: 'png', isStale: undefined })
    expect(keysOf(img)).toEqual(['kind', 'etag', 'upstreamEtag', 'buffer', 'extension', 'isStale'].sort())
  })

  it('keeps explicit nulls in optional fields', () => {
    const v = { kind: 'APP_PAGE', html: 'h', rscData: null, headers: null, postponed: null, status: null, segmentData: null }
    expectSame(roundTrip(v), { ...v })
  })

  it('keeps an empty Map, empty strings, empty bodies and 0-length Buffers', () => {
    const v = { kind: 'APP_PAGE', html: '', rscData: Buffer.alloc(0), headers: {}, postponed: '', status: 0, segmentData: new Map() }
    const got = roundTrip(v)
    expectSame(got, { ...v, rscData: Buffer.alloc(0), segmentData: new Map() })
    expect(got.segmentData).toBeInstanceOf(Map)
    expect(got.segmentData.size).toBe(0)
    expectSame(roundTrip({ ...appRoute(), body: Buffer.alloc(0) }), { ...appRoute(), body: Buffer.alloc(0) })
    const map = new Map([['/only-empty', Buffer.alloc(0)], ['', Buffer.alloc(0)]])
    const seg = roundTrip({ kind: 'APP_PAGE', html: 'x', segmentData: map })
    expect([...seg.segmentData.keys()]).toEqual(['/only-empty', ''])
    for (const b of seg.segmentData.values()) expect(b.length).toBe(0)
  })

  it('keeps the Map order of segmentData, whatever the names', () => {
    const names = ['/z', '/a', '/日本', '/_tree', '/ü', '/"quoted"\\', '/m']
    const map = new Map(names.map((n, i) => [n, bytes(i * 7, i + 20)]))
    const got = roundTrip({ kind: 'APP_PAGE', html: 'x', segmentData: map })
    expect([...got.segmentData.keys()]).toEqual(names)
    for (const n of names) expect(Buffer.compare(got.segmentData.get(n), map.get(n))).toBe(0)
  })

  it('keeps header arrays, numbers and non-ASCII values', () => {
    const headers = { 'set-cookie': ['a=1', 'b=é'], 'content-length': 12345, 'x-a': 'ünï', 'x-empty': [], 'x-neg': -1.5 }
    expectSame(roundTrip({ ...appRoute(), headers }), { ...appRoute(), headers })
    // An `undefined` header value is dropped, like Next's own JSON `.meta`.
    expect(roundTrip({ ...appRoute(), headers: { a: 'x', b: undefined } }).headers).toStrictEqual({ a: 'x' })
  })

  it('stores text as UTF-8 (astral, combining, NUL and the U+2028 separator)', () => {
    const html = '\u0000a\u0301\u2028\u{1F600}' + 'ß'.repeat(1000)
    const postponed = '\u{10FFFF}'
    const got = roundTrip({ kind: 'APP_PAGE', html, postponed })
    expect(got.html).toBe(html)
    expect(got.postponed).toBe(postponed)
  })

  it('accepts Uint8Array parts and decodes them as Buffers', () => {
    const u8 = new Uint8Array([0, 1, 2, 254, 255])
    const sliced = new Uint8Array(new ArrayBuffer(16), 3, 4).fill(9)
    const got = roundTrip({ kind: 'APP_PAGE', html: '', rscData: u8, segmentData: new Map([['/s', sliced]]) })
    expect(Buffer.isBuffer(got.rscData)).toBe(true)
    expect([...got.rscData]).toEqual([0, 1, 2, 254, 255])
    expect([...got.segmentData.get('/s')]).toEqual([9, 9, 9, 9])
    const img = roundTrip({ kind: 'IMAGE', etag: 'e', upstreamEtag: 'u', buffer: sliced, extension: 'png' })
    expect([...img.buffer]).toEqual([9, 9, 9, 9])
  })

  it('decodes a Uint8Array payload (not a Buffer) the same way', () => {
    const payload = concat(encodeValue(appPage()))
    const u8 = new Uint8Array(payload.buffer, payload.byteOffset, payload.byteLength)
    expectSame(decodeValue(u8), appPage())
  })

  it('a decoded value encodes again to the same payload', () => {
    for (const make of Object.values(ALL)) {
      const first = concat(encodeValue(make()))
      const second = concat(encodeValue(decodeValue(first)))
      expect(Buffer.compare(first, second)).toBe(0)
    }
  })
})

describe('layout', () => {
  it('starts with the magic, the version and the metadata length; the strings and Buffers are not in the JSON', () => {
    const html = '<p>' + 'é'.repeat(200_000) + '</p>'
    const value = { ...appPage(), html }
    const payload = concat(encodeValue(value))
    expect(payload.subarray(0, 4).toString('latin1')).toBe('STIC')
    expect(payload[4]).toBe(FORMAT_VERSION)
    const jsonLength = payload.readUInt32LE(5)
    const meta = JSON.parse(payload.toString('utf8', 9, 9 + jsonLength))
    expect(jsonLength).toBeLessThan(1000)
    expect(meta.kind).toBe('APP_PAGE')
    expect(meta.fields.headers).toEqual(value.headers)
    expect(meta.parts[0]).toEqual(['html', Buffer.byteLength(html)])
    const partBytes = meta.parts.reduce((n, p) => n + p[1], 0)
    expect(9 + jsonLength + partBytes).toBe(payload.length)
  })

  it('returns the input Buffers themselves as chunks, after one head chunk', () => {
    const value = appPage()
    const chunks = encodeValue(value)
    const nonEmpty = [value.rscData, ...value.segmentData.values()].filter((b) => b.length > 0)
    expect(chunks.slice(1)).toHaveLength(nonEmpty.length)
    for (let i = 0; i < nonEmpty.length; i++) expect(chunks[i + 1]).toBe(nonEmpty[i])
    for (const c of chunks) expect(c).toBeInstanceOf(Uint8Array)
    const route = appRoute()
    const routeChunks = encodeValue(route)
    expect(routeChunks).toHaveLength(2)
    expect(routeChunks[1]).toBe(route.body)
  })
})

describe('zero copy', () => {
  it('decoded Buffers are views of the payload', () => {
    const payload = concat(encodeValue(appPage()))
    const got = decodeValue(payload)
    const views = [got.rscData, ...got.segmentData.values()]
    for (const v of views) {
      expect(v.buffer).toBe(payload.buffer)
      expect(v.byteOffset).toBeGreaterThanOrEqual(payload.byteOffset)
      expect(v.byteOffset + v.byteLength).toBeLessThanOrEqual(payload.byteOffset + payload.byteLength)
    }
    // A write through the payload shows through the view.
    const at = got.rscData.byteOffset - payload.byteOffset
    payload[at] ^= 0xff
    expect(got.rscData[0]).toBe(payload[at])

    for (const [make, field] of [[appRoute, 'body'], [image, 'buffer']]) {
      const p = concat(encodeValue(make()))
      expect(decodeValue(p)[field].buffer).toBe(p.buffer)
    }
  })

  it('a Uint8Array payload gives views over the same ArrayBuffer', () => {
    const payload = concat(encodeValue(appRoute()))
    const u8 = new Uint8Array(payload.buffer, payload.byteOffset, payload.byteLength)
    expect(decodeValue(u8).body.buffer).toBe(payload.buffer)
  })
})

describe('bad values', () => {
  const cases = [
    ['undefined', undefined, '`value`'],
    ['a number', 42, '`value`'],
    ['a string', 'APP_PAGE', '`value`'],
    ['an array', [], '`value`'],
    ['no kind', {}, '`value.kind`'],
    ['an unknown kind', { kind: 'PAGE' }, '`value.kind`'],
    ['a kind from the prototype', { kind: 'toString' }, '`value.kind`'],
    ['APP_PAGE html missing', { kind: 'APP_PAGE' }, '`value.html`'],
    ['APP_PAGE html a number', { ...appPage(), html: 1 }, '`value.html`'],
    ['APP_PAGE html a Buffer', { ...appPage(), html: Buffer.from('x') }, '`value.html`'],
    ['APP_PAGE rscData a string', { ...appPage(), rscData: 'rsc' }, '`value.rscData`'],
    ['APP_PAGE rscData an array', { ...appPage(), rscData: [1, 2] }, '`value.rscData`'],
    ['APP_PAGE postponed an object', { ...appPage(), postponed: {} }, '`value.postponed`'],
    ['APP_PAGE status a string', { ...appPage(), status: '200' }, '`value.status`'],
    ['APP_PAGE status NaN', { ...appPage(), status: NaN }, '`value.status`'],
    ['APP_PAGE segmentData an object', { ...appPage(), segmentData: { '/_tree': Buffer.from('x') } }, '`value.segmentData`'],
    ['APP_PAGE segmentData of strings', { ...appPage(), segmentData: new Map([['/_tree', 'x']]) }, '`value.segmentData["/_tree"]`'],
    ['APP_PAGE segmentData a number key', { ...appPage(), segmentData: new Map([[1, Buffer.from('x')]]) }, '`value.segmentData key`'],
    ['APP_PAGE headers an array', { ...appPage(), headers: [['a', 'b']] }, '`value.headers`'],
    ['APP_PAGE headers a string', { ...appPage(), headers: 'a: b' }, '`value.headers`'],
    ['APP_PAGE header an object', { ...appPage(), headers: { a: { b: 1 } } }, '`value.headers["a"]`'],
    ['APP_PAGE header an array of numbers', { ...appPage(), headers: { a: [1] } }, '`value.headers["a"]`'],
    ['APP_PAGE header Infinity', { ...appPage(), headers: { a: Infinity } }, '`value.headers["a"]`'],
    ['APP_PAGE header null', { ...appPage(), headers: { a: null } }, '`value.headers["a"]`'],
    ['APP_ROUTE body a string', { ...appRoute(), body: 'x' }, '`value.body`'],
    ['APP_ROUTE body an ArrayBuffer', { ...appRoute(), body: new ArrayBuffer(2) }, '`value.body`'],
    ['APP_ROUTE body missing', { kind: 'APP_ROUTE', status: 200, headers: {} }, '`value.body`'],
    ['APP_ROUTE status missing', { kind: 'APP_ROUTE', body: Buffer.alloc(0), headers: {} }, '`value.status`'],
    ['APP_ROUTE headers missing', { kind: 'APP_ROUTE', body: Buffer.alloc(0), status: 200 }, '`value.headers`'],
    ['APP_ROUTE body null', { ...appRoute(), body: null }, '`value.body`'],
    ['PAGES pageData missing', { kind: 'PAGES', html: '' }, '`value.pageData`'],
    ['PAGES pageData a string', { ...pages(), pageData: '{}' }, '`value.pageData`'],
    ['PAGES html missing', { kind: 'PAGES', pageData: {} }, '`value.html`'],
    ['FETCH data missing', { kind: 'FETCH', revalidate: 1 }, '`value.data`'],
    ['FETCH body a Buffer', { ...fetchValue(), data: { ...fetchValue().data, body: Buffer.from('x') } }, '`value.data.body`'],
    ['FETCH url missing', { ...fetchValue(), data: { headers: {}, body: '' } }, '`value.data.url`'],
    ['FETCH headers missing', { ...fetchValue(), data: { body: '', url: '' } }, '`value.data.headers`'],
    ['FETCH status a string', { ...fetchValue(), data: { ...fetchValue().data, status: '200' } }, '`value.data.status`'],
    ['FETCH tags a string', { ...fetchValue(), tags: 'a,b' }, '`value.tags`'],
    ['FETCH tags of numbers', { ...fetchValue(), tags: ['a', 2] }, '`value.tags[1]`'],
    ['FETCH revalidate missing', { kind: 'FETCH', data: fetchValue().data }, '`value.revalidate`'],
    ['FETCH revalidate false', { ...fetchValue(), revalidate: false }, '`value.revalidate`'],
    ['REDIRECT props missing', { kind: 'REDIRECT' }, '`value.props`'],
    ['REDIRECT props a string', { kind: 'REDIRECT', props: '/x' }, '`value.props`'],
    ['IMAGE buffer a string', { ...image(), buffer: 'x' }, '`value.buffer`'],
    ['IMAGE etag missing', { ...image(), etag: undefined }, '`value.etag`'],
    ['IMAGE extension a number', { ...image(), extension: 1 }, '`value.extension`'],
    ['IMAGE isMiss a string', { ...image(), isMiss: 'yes' }, '`value.isMiss`'],
    ['IMAGE revalidate a string', { ...image(), revalidate: '60' }, '`value.revalidate`'],
  ]
  for (const [name, value, field] of cases) {
    it(`${name}: STRATA_INVALID_ARG naming ${field}`, () => {
      for (const fn of [() => checkValue(value), () => encodeValue(value)]) {
        const e = codeOf(fn)
        expect(e.code).toBe('STRATA_INVALID_ARG')
        expect(e.name).toBe('StrataError')
        expect(e.isError).toBe(true)
        expect(e.message).toContain(field)
      }
    })
  }

  it('a value JSON cannot hold is STRATA_INVALID_ARG naming the field', () => {
    const cyclic = { a: 1 }
    cyclic.self = cyclic
    for (const [value, field] of [
      [{ ...pages(), pageData: cyclic }, '`value.pageData`'],
      [{ kind: 'REDIRECT', props: { n: 10n } }, '`value.props`'],
    ]) {
      const e = codeOf(() => encodeValue(value))
      expect(e.code).toBe('STRATA_INVALID_ARG')
      expect(e.message).toContain(field)
    }
  })

  it('every kind as Next builds it passes checkValue', () => {
    for (const make of Object.values(ALL)) expect(() => checkValue(make())).not.toThrow()
  })
})

describe('bad bytes', () => {
  const decodeCode = (payload) => codeOf(() => decodeValue(payload)).code
  const goodMeta = { kind: 'APP_ROUTE', fields: { status: 200, headers: {} }, undef: [], maps: [], parts: [['body', 3]] }

  it('a payload that is not bytes is STRATA_INVALID_ARG', () => {
    for (const p of [undefined, null, 'STIC', [1, 2], new ArrayBuffer(9), new Uint16Array(9)]) {
      expect(codeOf(() => decodeValue(p)).code).toBe('STRATA_INVALID_ARG')
    }
  })

  it('the hand-made reference payload decodes (the crafted cases below differ from it in one thing)', () => {
    expect(decodeValue(craft(goodMeta, Buffer.from('abc')))).toStrictEqual({ kind: 'APP_ROUTE', body: Buffer.from('abc'), status: 200, headers: {} })
  })

  const cases = [
    ['an empty buffer', () => Buffer.alloc(0)],
    ['a header only', () => Buffer.from('STIC\x01\x00\x00\x00\x00', 'latin1')],
    ['bad magic', () => craft(goodMeta, Buffer.from('abc'), { magic: Buffer.from('STIX') })],
    ['another format version', () => craft(goodMeta, Buffer.from('abc'), { version: FORMAT_VERSION + 1 })],
    ['version 0', () => craft(goodMeta, Buffer.from('abc'), { version: 0 })],
    ['metadata length past the end', () => craft(goodMeta, Buffer.from('abc'), { jsonLength: 10_000 })],
    ['metadata length 0xffffffff', () => craft(goodMeta, Buffer.from('abc'), { jsonLength: 0xffffffff })],
    ['metadata not JSON', () => craft('{"kind":', Buffer.from('abc'))],
    ['metadata not UTF-8 JSON', () => craft(Buffer.from([0xff, 0xfe]).toString('latin1'))],
    ['metadata an array', () => craft([1, 2])],
    ['metadata a string', () => craft('"APP_ROUTE"')],
    ['metadata null', () => craft('null')],
    ['no part list', () => craft({ ...goodMeta, parts: undefined }, Buffer.from('abc'))],
    ['part list an object', () => craft({ ...goodMeta, parts: { body: 3 } }, Buffer.from('abc'))],
    ['trailing bytes after the parts', () => craft(goodMeta, Buffer.from('abcd'))],
    ['a part past the end', () => craft(goodMeta, Buffer.from('ab'))],
    ['a negative part length', () => craft({ ...goodMeta, parts: [['body', -1]] })],
    ['a fractional part length', () => craft({ ...goodMeta, parts: [['body', 1.5]] }, Buffer.from('ab'))],
    ['a huge part length', () => craft({ ...goodMeta, parts: [['body', 2 ** 60]] })],
    ['a part length as a string', () => craft({ ...goodMeta, parts: [['body', '3']] }, Buffer.from('abc'))],
    ['an unknown part role', () => craft({ ...goodMeta, parts: [['body', 3], ['extra', 0]] }, Buffer.from('abc'))],
    ['a part given twice', () => craft({ ...goodMeta, parts: [['body', 1], ['body', 2]] }, Buffer.from('abc'))],
    ['a required part missing', () => craft({ ...goodMeta, parts: [] })],
    ['an unknown kind', () => craft({ ...goodMeta, kind: 'PAGE' }, Buffer.from('abc'))],
    ['kind "__proto__"', () => craft({ ...goodMeta, kind: '__proto__' }, Buffer.from('abc'))],
    ['kind missing', () => craft({ ...goodMeta, kind: undefined }, Buffer.from('abc'))],
    ['a wrong field type', () => craft({ ...goodMeta, fields: { status: '200', headers: {} } }, Buffer.from('abc'))],
    ['an unknown field', () => craft({ ...goodMeta, fields: { ...goodMeta.fields, extra: 1 } }, Buffer.from('abc'))],
    ['fields missing', () => craft({ ...goodMeta, fields: undefined }, Buffer.from('abc'))],
    ['undef not a list', () => craft({ ...goodMeta, undef: 'status' }, Buffer.from('abc'))],
    ['a required field undefined', () => craft({ ...goodMeta, fields: { headers: {} }, undef: ['status'] }, Buffer.from('abc'))],
    ['a field both in JSON and undefined', () => craft({ ...goodMeta, undef: ['status'] }, Buffer.from('abc'))],
    ['a part field also in JSON', () => craft({ ...goodMeta, fields: { ...goodMeta.fields, body: null } }, Buffer.from('abc'))],
    ['a part field as a JSON string', () =>
      craft({ kind: 'APP_PAGE', fields: { html: 'x' }, undef: [], maps: [], parts: [] })],
    ['a Map entry without its Map', () =>
      craft({ kind: 'APP_PAGE', fields: {}, undef: [], maps: [], parts: [['html', 1], ['segmentData', 1, '/a']] }, Buffer.from('xy'))],
    ['a Map entry without a name', () =>
      craft({ kind: 'APP_PAGE', fields: {}, undef: [], maps: ['segmentData'], parts: [['html', 1], ['segmentData', 1]] }, Buffer.from('xy'))],
    ['a Map entry given twice', () =>
      craft({ kind: 'APP_PAGE', fields: {}, undef: [], maps: ['segmentData'], parts: [['html', 0], ['segmentData', 1, '/a'], ['segmentData', 1, '/a']] }, Buffer.from('xy'))],
    ['a non-Map field in maps', () =>
      craft({ kind: 'APP_PAGE', fields: {}, undef: [], maps: ['rscData'], parts: [['html', 1]] }, Buffer.from('x'))],
    ['a named part for a plain field', () =>
      craft({ kind: 'APP_PAGE', fields: {}, undef: [], maps: [], parts: [['html', 1, 'n']] }, Buffer.from('x'))],
    ['a FETCH without its body part', () =>
      craft({ kind: 'FETCH', fields: { data: { headers: {}, url: '' }, revalidate: 1 }, undef: [], maps: [], parts: [] })],
    ['a FETCH body without data', () =>
      craft({ kind: 'FETCH', fields: { revalidate: 1 }, undef: [], maps: [], parts: [['data.body', 0]] })],
    ['a FETCH data with an unknown field', () =>
      craft({ kind: 'FETCH', fields: { data: { headers: {}, url: '', body: 'x' }, revalidate: 1 }, undef: [], maps: [], parts: [['data.body', 0]] })],
    ['data.status outside FETCH', () => craft({ ...goodMeta, undef: ['data.status'] }, Buffer.from('abc'))],
    ['a null entry with parts', () => craft({ kind: null, parts: [['body', 1]] }, Buffer.from('x'))],
  ]
  for (const [name, make] of cases) {
    it(`${name}: STRATA_DECODE`, () => {
      const e = codeOf(() => decodeValue(make()))
      expect(e.code).toBe('STRATA_DECODE')
      expect(e.name).toBe('StrataError')
      expect(e.isError).toBe(true)
    })
  }

  it('every truncation of every kind is STRATA_DECODE', () => {
    // Every kind, the large ones made small (each truncation length is decoded).
    const small = {
      ...ALL,
      appPage: () => ({
        kind: 'APP_PAGE', html: 'hé', rscData: Buffer.from([1, 2]), headers: { a: ['b'] }, postponed: 'p', status: 200,
        segmentData: new Map([['/a', Buffer.from([3])], ['/b', Buffer.alloc(0)]]),
      }),
      image: () => ({ ...image(), buffer: Buffer.from([1, 2, 3]) }),
    }
    for (const [name, make] of Object.entries(small)) {
      const payload = concat(encodeValue(make()))
      for (let len = 0; len < payload.length; len++) {
        // A fresh copy, so no slack bytes of a larger buffer are around.
        const cut = Buffer.from(payload.subarray(0, len))
        const code = decodeCode(cut)
        if (code !== 'STRATA_DECODE') throw new Error(`${name} cut to ${len}/${payload.length}: ${code}`)
      }
      // Appending a byte is bad too.
      expect(decodeCode(Buffer.concat([payload, Buffer.from([0])]))).toBe('STRATA_DECODE')
    }
  })

  it('random bit flips decode to a valid value or throw STRATA_DECODE, nothing else', () => {
    const rnd = prng(0x5eed)
    const seeds = [
      { kind: 'APP_PAGE', html: 'hé', rscData: Buffer.from([1, 2]), headers: { 'x-next-cache-tags': 'a,b', n: 1 }, postponed: 'p', status: 200, segmentData: new Map([['/a', Buffer.from([3])]]) },
      appPageBare(),
      { ...appRoute(), body: Buffer.from('{}') },
      { kind: 'PAGES', html: 'x', pageData: { a: [1, 'é'] }, headers: undefined, status: undefined },
      { kind: 'FETCH', data: { headers: {}, body: 'eA==', url: 'u', status: 200 }, revalidate: 60, tags: ['t'] },
      redirect(),
      { ...image(), buffer: Buffer.from([1]) },
      null,
    ]
    let valid = 0
    let rejected = 0
    for (const seed of seeds) {
      const payload = concat(encodeValue(seed))
      for (let i = 0; i < 2500; i++) {
        const bad = Buffer.from(payload)
        const flips = 1 + Math.floor(rnd() * 3)
        for (let f = 0; f < flips; f++) {
          const bit = Math.floor(rnd() * bad.length * 8)
          bad[bit >> 3] ^= 1 << (bit & 7)
        }
        let out
        try {
          out = decodeValue(bad)
        } catch (err) {
          if (err.code !== 'STRATA_DECODE') throw new Error(`flip #${i} of ${seed && seed.kind}: ${err.code} ${err.message}`)
          rejected++
          continue
        }
        // What decodes is a value the handler could have stored: it re-encodes cleanly.
        checkValue(out)
        encodeValue(out)
        valid++
      }
    }
    expect(rejected).toBeGreaterThan(0)
    expect(valid).toBeGreaterThan(0) // flips inside part bytes or JSON strings
  })

  it('random garbage (with and without a valid header) is STRATA_DECODE', () => {
    const rnd = prng(42)
    for (let i = 0; i < 3000; i++) {
      const n = Math.floor(rnd() * 64)
      const junk = Buffer.alloc(n)
      for (let j = 0; j < n; j++) junk[j] = Math.floor(rnd() * 256)
      const withHeader = Buffer.concat([Buffer.from('STIC\x01', 'latin1'), junk])
      for (const p of [junk, withHeader]) {
        const code = decodeCode(p)
        if (code !== 'STRATA_DECODE') throw new Error(`garbage ${p.toString('hex')}: ${code}`)
      }
    }
  })
})

describe('tagsOf', () => {
  it('page and route entries carry the x-next-cache-tags header, split on commas', () => {
    expect(tagsOf(appPage())).toEqual(['_N_T_/layout', '_N_T_/page', '_N_T_/', '_N_T_/index', 'products'])
    expect(tagsOf(appRoute())).toEqual(['_N_T_/layout', '_N_T_/api/time/route', '_N_T_/api/time'])
    expect(tagsOf({ ...pages(), headers: { 'x-next-cache-tags': 'a,b' } })).toEqual(['a', 'b'])
    // The context does not add tags to response entries.
    expect(tagsOf(appRoute(), { tags: ['x'], softTags: ['y'] })).toEqual(['_N_T_/layout', '_N_T_/api/time/route', '_N_T_/api/time'])
  })

  it('only a string header counts (as in Next), empty names are dropped, duplicates kept once', () => {
    expect(tagsOf({ ...appRoute(), headers: { 'x-next-cache-tags': ['a', 'b'] } })).toEqual([])
    expect(tagsOf({ ...appRoute(), headers: { 'x-next-cache-tags': 5 } })).toEqual([])
    expect(tagsOf({ ...appRoute(), headers: {} })).toEqual([])
    expect(tagsOf(appPageBare())).toEqual([])
    expect(tagsOf({ ...appRoute(), headers: { 'x-next-cache-tags': '' } })).toEqual([])
    expect(tagsOf({ ...appRoute(), headers: { 'x-next-cache-tags': 'a,,b,a,' } })).toEqual(['a', 'b'])
    // The header name is the lower-case one Next writes; others are not looked up.
    expect(tagsOf({ ...appRoute(), headers: { 'X-Next-Cache-Tags': 'a' } })).toEqual([])
  })

  it('fetch entries carry ctx.tags on set (over value.tags), value.tags otherwise, plus ctx.softTags on get', () => {
    const v = unstableCacheValue()
    expect(tagsOf(v, { fetchCache: true, tags: ['fetch-tag'], fetchUrl: 'u', fetchIdx: 1 })).toEqual(['fetch-tag'])
    expect(tagsOf(v, { fetchCache: true })).toEqual(['products', '_N_T_/'])
    expect(tagsOf(v)).toEqual(['products', '_N_T_/'])
    expect(tagsOf(fetchValue(), { fetchCache: true })).toEqual([])
    expect(tagsOf(fetchValue(), { kind: 'FETCH', tags: ['t'], softTags: ['_N_T_/layout', '_N_T_/page', 't'] })).toEqual([
      't',
      '_N_T_/layout',
      '_N_T_/page',
    ])
  })

  it('redirects, images, null and unknown values carry none', () => {
    expect(tagsOf(redirect())).toEqual([])
    expect(tagsOf(image(), { tags: ['x'] })).toEqual([])
    expect(tagsOf(null)).toEqual([])
    expect(tagsOf(undefined)).toEqual([])
    expect(tagsOf({ kind: 'NOPE', headers: { 'x-next-cache-tags': 'a' } })).toEqual([])
  })
})

describe("the values Next's own code builds and reads", () => {
  const next = (p) => require(require.resolve(`next/dist/${p}`, { paths: [process.cwd()] }))

  it("fromResponseCacheEntry's APP_PAGE and PAGES values round-trip with every key", async () => {
    const { fromResponseCacheEntry } = next('server/response-cache/utils.js')
    const RenderResult = next('server/render-result.js').default
    const page = appPage()
    const entry = await fromResponseCacheEntry({ cacheControl: { revalidate: 60, expire: 3600 }, value: { ...page, html: RenderResult.fromStatic(page.html, 'text/html') } })
    expect(entry.value.html).toBe(page.html)
    expectSame(roundTrip(entry.value), entry.value)
    const bare = await fromResponseCacheEntry({ value: { kind: 'PAGES', html: RenderResult.fromStatic('<p/>', 'text/html'), pageData: {} } })
    expect(Object.keys(bare.value)).toEqual(['kind', 'html', 'pageData', 'headers', 'status'])
    expectSame(roundTrip(bare.value), bare.value)
  })

  it("what FileSystemCache returns after a set (from disk) round-trips, and has the shapes this codec expects", async () => {
    const FileSystemCache = next('server/lib/incremental-cache/file-system-cache.js').default
    const { nodeFs } = next('server/lib/node-fs-methods.js')
    const dir = mkdtempSync(join(tmpdir(), 'strata-codec-'))
    try {
      // maxMemoryCacheSize 0: no memory LRU, so `get` reads the files back.
      const fsCache = new FileSystemCache({ fs: nodeFs, flushToDisk: true, serverDistDir: join(dir, 'server'), revalidatedTags: [], maxMemoryCacheSize: 0 })
      const responseCtx = (kind) => ({ kind, isRoutePPREnabled: false, isFallback: false })
      const cases = [
        ['/route-cache/APP_PAGE/aa/$/index', 'APP_PAGE', appPage()],
        ['/route-cache/APP_PAGE/ab/$/bare', 'APP_PAGE', { ...appPageBare(), html: '<p>bare</p>', rscData: Buffer.from('r') }],
        ['/route-cache/APP_ROUTE/bb/$/api/time', 'APP_ROUTE', appRoute()],
        ['/route-cache/PAGES/cc/$/blog', 'PAGES', { ...pages(), headers: { 'x-next-cache-tags': 'a' }, status: 200 }],
      ]
      for (const [key, kind, value] of cases) {
        await fsCache.set(key, value, { ...responseCtx(kind), cacheControl: { revalidate: 60, expire: 3600 } })
        const got = await fsCache.get(key, responseCtx(kind))
        expect(got && got.value, key).toBeTruthy()
        checkValue(got.value)
        expectSame(roundTrip(got.value), got.value)
      }
      const fetchKey = 'a'.repeat(64)
      await fsCache.set(fetchKey, unstableCacheValue(), { fetchCache: true, tags: ['products'], fetchIdx: 0, fetchUrl: 'u' })
      const got = await fsCache.get(fetchKey, { kind: 'FETCH', tags: ['products'], softTags: [] })
      expect(got.value.kind).toBe('FETCH')
      checkValue(got.value)
      expectSame(roundTrip(got.value), got.value)
      expect(tagsOf(got.value)).toEqual(['products'])
    } finally {
      rmSync(dir, { recursive: true, force: true })
    }
  })
})
