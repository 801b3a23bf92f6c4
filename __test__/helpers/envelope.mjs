// The envelope as core/src/envelope.rs (version 1) lays it out, for tests that forge or corrupt
// stored values: field offsets, the checksum, and edits that keep it valid.
import zlib from 'node:zlib'

export const FIELDS = { timestamp: 7, server_ts: 15, stale: 23, revalidate: 31, expire: 39 }
export const FIXED_LEN = 47
export const FLAG_LZ4 = 1

/** CRC-32 (IEEE), as crc32fast computes it: node:zlib's (Node ≥ 20.15), else a table. */
export const crc32 = zlib.crc32 ?? (() => {
  const table = new Uint32Array(256)
  for (let n = 0; n < 256; n++) {
    let c = n
    for (let k = 0; k < 8; k++) c = c & 1 ? 0xedb88320 ^ (c >>> 1) : c >>> 1
    table[n] = c >>> 0
  }
  return (buf) => {
    let c = 0xffffffff
    for (const b of buf) c = table[(c ^ b) & 0xff] ^ (c >>> 8)
    return (c ^ 0xffffffff) >>> 0
  }
})()

/** Offsets of the fields of a well-formed envelope. */
export function layout(buf) {
  let at = FIXED_LEN
  const keyLenAt = at
  const key = buf.toString('utf8', at + 4, at + 4 + buf.readUInt32LE(at))
  at += 4 + buf.readUInt32LE(at)
  const tagCountAt = at
  const tagCount = buf.readUInt32LE(at)
  at += 4
  const tagLenAts = []
  for (let i = 0; i < tagCount; i++) {
    tagLenAts.push(at)
    at += 4 + buf.readUInt32LE(at)
  }
  const extraLenAt = at
  at += 4 + buf.readUInt32LE(at)
  const storedLenAt = at
  const stored = buf.readUInt32LE(at)
  at += 4
  let originalLenAt = null
  if (buf[5] & FLAG_LZ4) {
    originalLenAt = at
    at += 4
  }
  const payloadAt = at
  at += stored
  if (at + 4 !== buf.length) throw new Error(`not an envelope: ends at ${at} + 4, length ${buf.length}`)
  return { key, keyLenAt, tagCountAt, tagCount, tagLenAts, extraLenAt, storedLenAt, stored, originalLenAt, payloadAt }
}

export function reseal(buf) {
  buf.writeUInt32LE(crc32(buf.subarray(0, buf.length - 4)), buf.length - 4)
  return buf
}

/** A copy of `buf` changed by `edit(copy, layout)`, checksum recomputed. */
export function sealed(buf, edit) {
  const b = Buffer.from(buf)
  edit(b, layout(buf))
  return reseal(b)
}

/** `envelope` with its payload replaced, uncompressed, resealed. */
export function withPayload(envelope, payload) {
  const { storedLenAt } = layout(envelope)
  const head = Buffer.from(envelope.subarray(0, storedLenAt))
  head[5] &= ~FLAG_LZ4
  const len = Buffer.alloc(4)
  len.writeUInt32LE(payload.length)
  return reseal(Buffer.concat([head, len, payload, Buffer.alloc(4)]))
}
