//! The versioned binary envelope of a value stored in Redis (design notes §4).
//!
//! Everything strata-cache writes to an entry key is one envelope: Next's metadata, the full
//! Next key (entry keys are a *hash* of it, design notes §3, so a reader compares the key and a
//! hash collision becomes a miss, never a wrong page), the payload, and a checksum. Whatever is
//! found in Redis is untrusted input (another version of strata-cache, a half-written value, a
//! different program sharing the database): [`decode`] is bounds-checked everywhere, never
//! panics, never allocates more than the input can justify, and reports every failure as a
//! [`DecodeError`] whose [`DecodeError::reason`] the caller counts as a miss.
//!
//! # Layout, version 1 (all integers and floats little-endian)
//!
//! | offset | size | field |
//! | --- | --- | --- |
//! | 0 | 4 | magic `b"STRC"` |
//! | 4 | 1 | version (`1`) |
//! | 5 | 1 | flags: bit 0 = payload is an LZ4 block; bits 1..=7 reserved, must be zero |
//! | 6 | 1 | kind (`0` = `'use cache'` entry; other values reserved) |
//! | 7 | 8 | `timestamp` f64, ms since the epoch, the writer's local clock |
//! | 15 | 8 | `server_ts` f64, ms, `timestamp` in the Redis clock domain (design notes §1) |
//! | 23 | 8 | `stale` f64, seconds |
//! | 31 | 8 | `revalidate` f64, seconds |
//! | 39 | 8 | `expire` f64, seconds (`4294967294` = never, kept exact as f64) |
//! | 47 | 4 + n | key: u32 length, UTF-8 bytes |
//! | … | 4 | tag count: u32 |
//! | … | (4 + n) each | tags: u32 length, UTF-8 bytes |
//! | … | 4 + n | extra: u32 length, opaque bytes (reserved for the incremental cache) |
//! | … | 4 | stored payload length: u32 |
//! | … | 4 | original payload length: u32, **only when flag bit 0 is set** |
//! | … | n | payload (raw, or one LZ4 block) |
//! | end − 4 | 4 | CRC-32 (IEEE) of every byte before it |
//!
//! The fixed fields come first so [`decode_header`] can hand a reader the key and the
//! timestamps without touching (checksumming, decompressing, copying) a large payload.

use std::ops::Range;

use thiserror::Error;

/// The first four bytes of every envelope. Anything else under an entry key is not ours.
pub const MAGIC: [u8; 4] = *b"STRC";

/// The format version this module writes and the only one it reads.
///
/// Bump it for any change a version-1 reader would misread; a reader rejects other versions
/// with reason `"version"` (a miss), so a rolling deployment never serves a value it cannot
/// interpret.
pub const VERSION: u8 = 1;

/// Flag bit 0: the payload is one LZ4 block and the original length precedes it.
const FLAG_LZ4: u8 = 0b0000_0001;
/// Every flag bit version 1 knows. Others must be zero: a writer that sets one means something
/// this reader cannot honour.
const KNOWN_FLAGS: u8 = FLAG_LZ4;

/// Size of the trailing checksum.
///
/// CRC-32 rather than xxh3-64, measured on this machine over 1 MiB (release build):
/// crc32fast ≈ 16 µs (it uses PCLMULQDQ, detected at run time), xxh3-64 ≈ 29 µs (the portable
/// build only gets SSE2); in debug builds 1 ms vs 6 ms. CRC-32 also *guarantees* detection of
/// every single-bit error and every burst up to 32 bits, which is the corruption a truncated or
/// mangled value shows, while a 64-bit hash only makes it likely. Its 2⁻³² blind spot for
/// random garbage is narrowed further by the magic, version, flags and the exact-length
/// structure that garbage must also get past.
const CHECKSUM_LEN: usize = 4;

/// Offset of the flags byte.
const FLAGS_AT: usize = 5;

/// Bytes before the key: magic, version, flags, kind, five f64.
const FIXED_LEN: usize = 4 + 1 + 1 + 1 + 5 * 8;

/// LZ4 cannot expand more than 255 bytes out of one input byte (a run-length byte adds at
/// most 255 to a match), so a claimed original length above `stored × 255` is corrupt; it is
/// rejected before any buffer is allocated for it.
const LZ4_MAX_RATIO: usize = 255;

/// What an entry is: a `'use cache'` entry or an incremental-cache one (the singular
/// `cacheHandler`). Both live in one L1, one L2 and one tag state, apart: the kind is part of
/// the store key ([`INCREMENTAL_KEY_PREFIX`]), of the Redis key, and of the envelope.
///
/// The decoder passes any kind through unchanged: the caller knows which kind it expects and
/// treats another one as a miss, which keeps version 1 readable when a kind is added.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Kind(pub u8);

impl Kind {
    /// An entry of Next's `'use cache'` handler (`cacheHandlers`).
    pub const USE_CACHE: Kind = Kind(0);
    /// An entry of Next's incremental cache (`cacheHandler`): ISR and prerendered pages, route
    /// handlers, the `fetch` cache, `unstable_cache`.
    pub const INCREMENTAL: Kind = Kind(1);

    /// The kind of the entry stored under `store_key`.
    pub fn of_key(store_key: &str) -> Kind {
        if store_key.starts_with(INCREMENTAL_KEY_PREFIX) {
            Kind::INCREMENTAL
        } else {
            Kind::USE_CACHE
        }
    }
}

/// Store keys of incremental-cache entries start with this; `'use cache'` keys are Next's keys
/// as they are. Next's keys never start with a control character (`'use cache'` keys are
/// serialised arrays, incremental ones paths or hex digests), so the two never meet.
pub const INCREMENTAL_KEY_PREFIX: &str = "\u{1}i:";

/// Everything stored next to the payload, borrowed from the caller for [`encode`].
///
/// Numbers are stored as given (f64, bit for bit), NaN excepted: see [`EncodeError`].
#[derive(Debug)]
pub struct EnvelopeMeta<'a, T: AsRef<str> = String> {
    /// What kind of entry this is.
    pub kind: Kind,
    /// The full Next cache key (opaque UTF-8; it can be large, ~1 MB has been seen).
    pub key: &'a str,
    /// The entry's own tags (not soft tags), as Next passed them.
    pub tags: &'a [T],
    /// Next's `timestamp`: ms since the epoch on the writer's local clock.
    pub timestamp: f64,
    /// `timestamp` converted into the Redis clock domain (design notes §1).
    pub server_ts: f64,
    /// Next's `stale`, seconds.
    pub stale: f64,
    /// Next's `revalidate`, seconds.
    pub revalidate: f64,
    /// Next's `expire`, seconds (`4294967294` means never).
    pub expire: f64,
    /// Opaque metadata for later use (e.g. the incremental cache's `cacheControl`); empty today.
    pub extra: &'a [u8],
}

// Manual impls: the struct only holds references, so it is `Copy` whatever `T` is (a derive
// would demand `T: Copy`, which `String` is not).
impl<T: AsRef<str>> Clone for EnvelopeMeta<'_, T> {
    fn clone(&self) -> Self {
        *self
    }
}
impl<T: AsRef<str>> Copy for EnvelopeMeta<'_, T> {}

/// When [`encode`] compresses the payload.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Compression {
    /// Compress at all.
    pub enabled: bool,
    /// Payloads shorter than this are stored raw: below a few hundred bytes LZ4 rarely wins
    /// and the flag costs a branch on every read.
    pub threshold_bytes: usize,
}

impl Compression {
    /// Never compress.
    pub const DISABLED: Compression = Compression {
        enabled: false,
        threshold_bytes: usize::MAX,
    };
}

impl Default for Compression {
    /// LZ4 from 1 KiB up: it compresses RSC/HTML payloads several-fold at GB/s, so Redis memory
    /// and network time saved outweigh the CPU from small sizes on.
    fn default() -> Self {
        Compression {
            enabled: true,
            threshold_bytes: 1024,
        }
    }
}

/// Why [`encode`] refused an entry. Both are caller errors: the entry cannot be represented,
/// so it should be kept out of L2 (and counted), not truncated.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum EncodeError {
    /// A length does not fit the format's u32 length prefix (4 GiB).
    #[error("envelope field `{field}` is too long ({len} bytes, at most 4294967295)")]
    TooLong {
        /// Which field: `"key"`, `"tag"`, `"tags"` (the count), `"extra"` or `"payload"`.
        field: &'static str,
        /// Its length (or count, for `"tags"`).
        len: usize,
    },
    /// A number is NaN. Every comparison with NaN is false, so Next would never see such an
    /// entry as expired; the decoder rejects NaN too, and the encoder refuses it up front so no
    /// writer stores a value that every reader then misses.
    #[error("envelope field `{field}` is NaN")]
    NotANumber {
        /// Which field: `"timestamp"`, `"server_ts"`, `"stale"`, `"revalidate"` or `"expire"`.
        field: &'static str,
    },
}

/// Why bytes read from Redis are not a usable envelope. Every variant is a miss for the caller;
/// [`DecodeError::reason`] names it for counters.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum DecodeError {
    /// The value does not start with [`MAGIC`]: not written by strata-cache.
    #[error("not a strata-cache envelope (bad magic)")]
    BadMagic,
    /// Written by another format version (a newer or older deployment).
    #[error("unsupported envelope version {0} (this build reads {VERSION})")]
    UnsupportedVersion(u8),
    /// A flag bit this version does not know is set.
    #[error("unknown envelope flags {0:#04x}")]
    ReservedFlags(u8),
    /// The value ends before a field it announces (or before the checksum).
    #[error("envelope truncated")]
    Truncated,
    /// Bytes follow the checksum position the structure implies.
    #[error("trailing bytes after the envelope")]
    TrailingBytes,
    /// The CRC-32 does not match: the bytes were corrupted.
    #[error("envelope checksum mismatch")]
    ChecksumMismatch,
    /// The key or a tag is not valid UTF-8.
    #[error("envelope string is not valid UTF-8")]
    InvalidUtf8,
    /// A number field is NaN (see [`EncodeError::NotANumber`]).
    #[error("envelope field `{0}` is NaN")]
    NotANumber(&'static str),
    /// The payload (decompressed) is larger than the caller allows.
    #[error("envelope payload of {len} bytes exceeds the limit of {max}")]
    PayloadTooLarge {
        /// The payload's (original) length.
        len: usize,
        /// The caller's limit.
        max: usize,
    },
    /// The compressed payload does not decompress to its announced length.
    #[error("envelope payload does not decompress")]
    CorruptPayload,
}

impl DecodeError {
    /// A short, stable label for counting misses by cause (`"magic"`, `"version"`, `"flags"`,
    /// `"truncated"`, `"trailing"`, `"checksum"`, `"utf8"`, `"number"`, `"too_large"`,
    /// `"payload"`).
    pub fn reason(&self) -> &'static str {
        match self {
            DecodeError::BadMagic => "magic",
            DecodeError::UnsupportedVersion(_) => "version",
            DecodeError::ReservedFlags(_) => "flags",
            DecodeError::Truncated => "truncated",
            DecodeError::TrailingBytes => "trailing",
            DecodeError::ChecksumMismatch => "checksum",
            DecodeError::InvalidUtf8 => "utf8",
            DecodeError::NotANumber(_) => "number",
            DecodeError::PayloadTooLarge { .. } => "too_large",
            DecodeError::CorruptPayload => "payload",
        }
    }
}

/// A fully decoded, verified envelope, owning its data.
#[derive(Clone, Debug, PartialEq)]
pub struct Decoded {
    /// What kind of entry this is; check it against the kind expected.
    pub kind: Kind,
    /// The full Next cache key; compare it with the requested key.
    pub key: String,
    /// The entry's tags.
    pub tags: Vec<String>,
    /// Next's `timestamp` (writer's local clock, ms).
    pub timestamp: f64,
    /// `timestamp` in the Redis clock domain (ms).
    pub server_ts: f64,
    /// Next's `stale` (s).
    pub stale: f64,
    /// Next's `revalidate` (s).
    pub revalidate: f64,
    /// Next's `expire` (s).
    pub expire: f64,
    /// Opaque metadata stored with the entry.
    pub extra: Vec<u8>,
    /// The payload, decompressed.
    pub payload: Vec<u8>,
    /// Whether the payload was stored LZ4-compressed (for metrics).
    pub compressed: bool,
}

/// The metadata of an envelope, parsed and bounds-checked but **not yet verified** against its
/// checksum, borrowing from the input.
///
/// It lets a reader reject a value cheaply (wrong key after a hash collision, wrong kind,
/// expired) before paying for the checksum and decompression of a large payload. Do not act on
/// it beyond rejecting: a corrupt value can still parse. [`EnvelopeHeader::finish`] verifies
/// and yields the payload.
#[derive(Clone, Debug, PartialEq)]
pub struct EnvelopeHeader<'a> {
    /// What kind of entry this is.
    pub kind: Kind,
    /// The full Next cache key.
    pub key: &'a str,
    /// The entry's tags.
    pub tags: Vec<&'a str>,
    /// Next's `timestamp` (writer's local clock, ms).
    pub timestamp: f64,
    /// `timestamp` in the Redis clock domain (ms).
    pub server_ts: f64,
    /// Next's `stale` (s).
    pub stale: f64,
    /// Next's `revalidate` (s).
    pub revalidate: f64,
    /// Next's `expire` (s).
    pub expire: f64,
    /// Opaque metadata stored with the entry.
    pub extra: &'a [u8],
    /// Whether the payload is stored LZ4-compressed.
    pub compressed: bool,
    /// Length of the payload once decompressed (equals the stored length when raw).
    pub payload_len: usize,
    /// The whole envelope, for the checksum.
    bytes: &'a [u8],
    /// Where the stored payload lies in `bytes`.
    payload_range: Range<usize>,
}

impl EnvelopeHeader<'_> {
    /// Where the stored (possibly compressed) payload lies in the input. With an owned,
    /// reference-counted input (e.g. `bytes::Bytes`), a raw payload can be sliced out of it
    /// without a copy, after [`EnvelopeHeader::verify`].
    pub fn payload_range(&self) -> Range<usize> {
        self.payload_range.clone()
    }

    /// Check the trailing CRC-32 over the whole envelope.
    ///
    /// # Errors
    /// [`DecodeError::ChecksumMismatch`] if the bytes were altered.
    pub fn verify(&self) -> Result<(), DecodeError> {
        let split = self.bytes.len().saturating_sub(CHECKSUM_LEN);
        let (body, trailer) = self.bytes.split_at(split);
        let stored = trailer
            .first_chunk::<CHECKSUM_LEN>()
            .map(|b| u32::from_le_bytes(*b))
            .ok_or(DecodeError::Truncated)?;
        if crc32fast::hash(body) == stored {
            Ok(())
        } else {
            Err(DecodeError::ChecksumMismatch)
        }
    }

    /// Verify the checksum and produce the owned, decompressed entry.
    ///
    /// `max_payload` caps the payload length (after decompression) the caller accepts; the
    /// cap is checked before anything is allocated for the payload.
    ///
    /// # Errors
    /// [`DecodeError::PayloadTooLarge`], [`DecodeError::ChecksumMismatch`], or
    /// [`DecodeError::CorruptPayload`] when the LZ4 block does not decompress to its announced
    /// length.
    pub fn finish(self, max_payload: usize) -> Result<Decoded, DecodeError> {
        if self.payload_len > max_payload {
            return Err(DecodeError::PayloadTooLarge {
                len: self.payload_len,
                max: max_payload,
            });
        }
        self.verify()?;
        let stored = self
            .bytes
            .get(self.payload_range.clone())
            .ok_or(DecodeError::Truncated)?;
        let payload = if self.compressed {
            let mut out = vec![0u8; self.payload_len];
            match lz4_flex::block::decompress_into(stored, &mut out) {
                Ok(n) if n == self.payload_len => out,
                _ => return Err(DecodeError::CorruptPayload),
            }
        } else {
            stored.to_vec()
        };
        Ok(Decoded {
            kind: self.kind,
            key: self.key.to_owned(),
            tags: self.tags.iter().map(|t| (*t).to_owned()).collect(),
            timestamp: self.timestamp,
            server_ts: self.server_ts,
            stale: self.stale,
            revalidate: self.revalidate,
            expire: self.expire,
            extra: self.extra.to_vec(),
            payload,
            compressed: self.compressed,
        })
    }
}

/// Serialise an entry into an envelope, compressing the payload with LZ4 when `compression`
/// allows it and the result is actually smaller (otherwise it is stored raw, flag cleared).
///
/// # Errors
/// [`EncodeError::NotANumber`] for a NaN field, [`EncodeError::TooLong`] for a length beyond
/// the u32 prefix; nothing is written in either case.
pub fn encode<T: AsRef<str>>(
    meta: &EnvelopeMeta<'_, T>,
    payload: &[u8],
    compression: Compression,
) -> Result<Vec<u8>, EncodeError> {
    encode_after(Vec::new(), 0, meta, payload, compression)
}

/// [`encode`], appending the envelope to `out` after what it holds (which stays as it is; the
/// checksum covers the envelope only), so that a caller can frame it (e.g. a command around it)
/// without copying it again; `spare` more bytes of capacity are reserved for what the caller
/// appends after it (so that appending does not move a large buffer).
///
/// # Errors
/// As [`encode`] (and `out` is dropped).
pub fn encode_after<T: AsRef<str>>(
    mut out: Vec<u8>,
    spare: usize,
    meta: &EnvelopeMeta<'_, T>,
    payload: &[u8],
    compression: Compression,
) -> Result<Vec<u8>, EncodeError> {
    let numbers = [
        ("timestamp", meta.timestamp),
        ("server_ts", meta.server_ts),
        ("stale", meta.stale),
        ("revalidate", meta.revalidate),
        ("expire", meta.expire),
    ];
    for (field, value) in numbers {
        if value.is_nan() {
            return Err(EncodeError::NotANumber { field });
        }
    }
    let key_len = len_u32("key", meta.key.len())?;
    let tag_count = len_u32("tags", meta.tags.len())?;
    let extra_len = len_u32("extra", meta.extra.len())?;
    let payload_len = len_u32("payload", payload.len())?;
    let tags_len = meta
        .tags
        .iter()
        .fold(0usize, |n, t| n.saturating_add(4 + t.as_ref().len()));

    let try_compress =
        compression.enabled && !payload.is_empty() && payload.len() >= compression.threshold_bytes;
    let payload_room = if try_compress {
        8 + lz4_flex::block::get_maximum_output_size(payload.len())
    } else {
        4 + payload.len()
    };
    let capacity = FIXED_LEN
        .saturating_add(4 + meta.key.len())
        .saturating_add(4 + tags_len)
        .saturating_add(4 + meta.extra.len())
        .saturating_add(payload_room)
        .saturating_add(CHECKSUM_LEN);
    // Every tag's length is checked before anything is written: an error leaves `out` as it was.
    for tag in meta.tags {
        len_u32("tag", tag.as_ref().len())?;
    }
    let base = out.len();
    out.reserve(capacity.saturating_add(spare));

    out.extend_from_slice(&MAGIC);
    out.push(VERSION);
    out.push(0); // flags, set below once we know whether compression paid off
    out.push(meta.kind.0);
    for (_, value) in numbers {
        out.extend_from_slice(&value.to_le_bytes());
    }
    out.extend_from_slice(&key_len.to_le_bytes());
    out.extend_from_slice(meta.key.as_bytes());
    out.extend_from_slice(&tag_count.to_le_bytes());
    for tag in meta.tags {
        let tag = tag.as_ref();
        out.extend_from_slice(&(tag.len() as u32).to_le_bytes());
        out.extend_from_slice(tag.as_bytes());
    }
    out.extend_from_slice(&extra_len.to_le_bytes());
    out.extend_from_slice(meta.extra);

    let payload_at = out.len();
    let mut compressed = false;
    if try_compress {
        // Compress straight into the output buffer (no second 1 MB allocation), leaving room
        // for the two length fields in front of the block.
        let block_at = payload_at + 8;
        out.resize(
            block_at + lz4_flex::block::get_maximum_output_size(payload.len()),
            0,
        );
        // "Smaller" counts the extra length field; the ratio check keeps the encoder from ever
        // writing what the decoder's allocation guard would reject.
        let worth_it =
            |&n: &usize| n + 4 < payload.len() && payload.len() <= n.saturating_mul(LZ4_MAX_RATIO);
        let written = lz4_flex::block::compress_into(payload, &mut out[block_at..]).ok();
        if let Some(n) = written.filter(worth_it) {
            // Cannot fail: `n < payload.len()`, whose length fitted.
            let stored_len = len_u32("payload", n)?;
            out[payload_at..payload_at + 4].copy_from_slice(&stored_len.to_le_bytes());
            out[payload_at + 4..block_at].copy_from_slice(&payload_len.to_le_bytes());
            out.truncate(block_at + n);
            out[base + FLAGS_AT] = FLAG_LZ4;
            compressed = true;
        }
        if !compressed {
            out.truncate(payload_at);
        }
    }
    if !compressed {
        out.extend_from_slice(&payload_len.to_le_bytes());
        out.extend_from_slice(payload);
    }

    let crc = crc32fast::hash(&out[base..]);
    out.extend_from_slice(&crc.to_le_bytes());
    Ok(out)
}

fn len_u32(field: &'static str, len: usize) -> Result<u32, EncodeError> {
    u32::try_from(len).map_err(|_| EncodeError::TooLong { field, len })
}

/// Decode and verify an envelope: [`decode_header`] followed by [`EnvelopeHeader::finish`].
///
/// `max_payload` caps the decompressed payload length (see [`EnvelopeHeader::finish`]).
///
/// # Errors
/// Any [`DecodeError`]: the value is a miss; count it by [`DecodeError::reason`].
pub fn decode(bytes: &[u8], max_payload: usize) -> Result<Decoded, DecodeError> {
    decode_header(bytes)?.finish(max_payload)
}

/// Parse an envelope's metadata without verifying the checksum or touching the payload.
///
/// The whole structure is checked (magic, version, flags, every length against the bytes that
/// remain, UTF-8, NaN, exactly one checksum after the payload), so every truncation and any
/// trailing garbage are rejected here; corruption inside the fields is caught by
/// [`EnvelopeHeader::verify`]. The magic and version are checked first so that a value of
/// another version is reported as `"version"`, whatever its later layout.
///
/// # Errors
/// Any [`DecodeError`] except `ChecksumMismatch`, `PayloadTooLarge` and the decompression
/// failures of `CorruptPayload` (an impossible compression ratio is caught here).
pub fn decode_header(bytes: &[u8]) -> Result<EnvelopeHeader<'_>, DecodeError> {
    let mut r = Reader { rest: bytes };

    let magic: [u8; 4] = match r.array() {
        Ok(m) => m,
        // A short value that still matches the magic is a truncated envelope; anything else
        // is not ours.
        Err(_) if MAGIC.starts_with(bytes) => return Err(DecodeError::Truncated),
        Err(_) => return Err(DecodeError::BadMagic),
    };
    if magic != MAGIC {
        return Err(DecodeError::BadMagic);
    }
    let version = r.u8()?;
    if version != VERSION {
        return Err(DecodeError::UnsupportedVersion(version));
    }
    let flags = r.u8()?;
    if flags & !KNOWN_FLAGS != 0 {
        return Err(DecodeError::ReservedFlags(flags));
    }
    let compressed = flags & FLAG_LZ4 != 0;
    let kind = Kind(r.u8()?);
    let timestamp = r.f64("timestamp")?;
    let server_ts = r.f64("server_ts")?;
    let stale = r.f64("stale")?;
    let revalidate = r.f64("revalidate")?;
    let expire = r.f64("expire")?;

    let key = r.str()?;
    let tag_count = r.len()?;
    // Every tag takes at least its 4-byte length, so a count the remaining bytes cannot hold
    // is rejected before the vector is allocated.
    if tag_count > r.rest.len() / 4 {
        return Err(DecodeError::Truncated);
    }
    let mut tags = Vec::with_capacity(tag_count);
    for _ in 0..tag_count {
        tags.push(r.str()?);
    }
    let extra = r.blob()?;

    let stored_len = r.len()?;
    let payload_len = if compressed {
        let original = r.len()?;
        if original > stored_len.saturating_mul(LZ4_MAX_RATIO) {
            return Err(DecodeError::CorruptPayload);
        }
        original
    } else {
        stored_len
    };
    let payload_start = bytes.len() - r.rest.len();
    r.bytes(stored_len)?;
    let payload_range = payload_start..payload_start + stored_len;

    match r.rest.len() {
        CHECKSUM_LEN => {}
        n if n < CHECKSUM_LEN => return Err(DecodeError::Truncated),
        _ => return Err(DecodeError::TrailingBytes),
    }

    Ok(EnvelopeHeader {
        kind,
        key,
        tags,
        timestamp,
        server_ts,
        stale,
        revalidate,
        expire,
        extra,
        compressed,
        payload_len,
        bytes,
        payload_range,
    })
}

/// A cursor over the input whose every read is bounds-checked and fails with `Truncated`.
struct Reader<'a> {
    rest: &'a [u8],
}

impl<'a> Reader<'a> {
    fn array<const N: usize>(&mut self) -> Result<[u8; N], DecodeError> {
        let (head, rest) = self
            .rest
            .split_first_chunk::<N>()
            .ok_or(DecodeError::Truncated)?;
        self.rest = rest;
        Ok(*head)
    }

    fn u8(&mut self) -> Result<u8, DecodeError> {
        Ok(self.array::<1>()?[0])
    }

    /// A u32 length, as usize. Not yet checked against the remaining bytes: the read that uses
    /// it does that.
    fn len(&mut self) -> Result<usize, DecodeError> {
        let n = u32::from_le_bytes(self.array()?);
        usize::try_from(n).map_err(|_| DecodeError::Truncated)
    }

    /// An f64. NaN is rejected (see [`EncodeError::NotANumber`]); other values, negatives and
    /// infinities included, are passed through: the envelope stores what Next gave (Next itself
    /// uses a negative `revalidate`), and judging the values is the caller's job.
    fn f64(&mut self, field: &'static str) -> Result<f64, DecodeError> {
        let v = f64::from_le_bytes(self.array()?);
        if v.is_nan() {
            Err(DecodeError::NotANumber(field))
        } else {
            Ok(v)
        }
    }

    fn bytes(&mut self, n: usize) -> Result<&'a [u8], DecodeError> {
        if n > self.rest.len() {
            return Err(DecodeError::Truncated);
        }
        let (head, rest) = self.rest.split_at(n);
        self.rest = rest;
        Ok(head)
    }

    fn blob(&mut self) -> Result<&'a [u8], DecodeError> {
        let n = self.len()?;
        self.bytes(n)
    }

    fn str(&mut self) -> Result<&'a str, DecodeError> {
        std::str::from_utf8(self.blob()?).map_err(|_| DecodeError::InvalidUtf8)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use rand::rngs::StdRng;
    use rand::{RngExt, SeedableRng};

    const MAX: usize = 64 << 20;

    fn html(len: usize) -> Vec<u8> {
        let row = b"<li class=\"item\"><a href=\"/products/42\">Product 42</a> <span>$19.99</span></li>\n";
        row.iter().copied().cycle().take(len).collect()
    }

    fn noise(len: usize, seed: u64) -> Vec<u8> {
        let mut v = vec![0u8; len];
        StdRng::seed_from_u64(seed).fill(&mut v[..]);
        v
    }

    fn tags() -> Vec<String> {
        vec![
            "_N_T_/layout".to_owned(),
            "products".to_owned(),
            String::new(),
            "ünïcødé 🏷".to_owned(),
        ]
    }

    fn meta<'a>(key: &'a str, tags: &'a [String], extra: &'a [u8]) -> EnvelopeMeta<'a> {
        EnvelopeMeta {
            kind: Kind::USE_CACHE,
            key,
            tags,
            timestamp: 1_767_225_600_123.456_7,
            server_ts: 1_767_225_600_987.25,
            stale: 30.0,
            revalidate: 900.5,
            expire: 4_294_967_294.0,
            extra,
        }
    }

    fn check_round_trip(m: &EnvelopeMeta<'_>, payload: &[u8], c: Compression) -> Decoded {
        let bytes = encode(m, payload, c).unwrap();
        let d = decode(&bytes, MAX).unwrap();
        assert_eq!(d.kind, m.kind);
        assert_eq!(d.key, m.key);
        assert_eq!(d.tags, m.tags);
        // Bit-exact, not just ==.
        assert_eq!(d.timestamp.to_bits(), m.timestamp.to_bits());
        assert_eq!(d.server_ts.to_bits(), m.server_ts.to_bits());
        assert_eq!(d.stale.to_bits(), m.stale.to_bits());
        assert_eq!(d.revalidate.to_bits(), m.revalidate.to_bits());
        assert_eq!(d.expire.to_bits(), m.expire.to_bits());
        assert_eq!(d.extra, m.extra);
        assert_eq!(d.payload, payload);
        d
    }

    /// Re-seal bytes after a deliberate edit so the test reaches the check behind the CRC.
    fn reseal(bytes: &mut [u8]) {
        let split = bytes.len() - CHECKSUM_LEN;
        let crc = crc32fast::hash(&bytes[..split]);
        bytes[split..].copy_from_slice(&crc.to_le_bytes());
    }

    fn reason(bytes: &[u8]) -> &'static str {
        decode(bytes, MAX).unwrap_err().reason()
    }

    #[test]
    fn round_trips_every_field() {
        let t = tags();
        let extra = [1u8, 2, 3, 0, 255];
        let mut m = meta("/page?x=1#frag", &t, &extra);
        check_round_trip(&m, b"hello flight", Compression::default());
        m.kind = Kind(7);
        m.revalidate = -1.0;
        m.stale = f64::INFINITY;
        m.timestamp = 0.000_1;
        m.server_ts = -0.0;
        check_round_trip(&m, b"x", Compression::DISABLED);
    }

    #[test]
    fn encode_after_appends_the_same_envelope() {
        let tags = tags();
        let m = meta("k", &tags, b"x");
        for (payload, c) in [
            (html(40_000), Compression::default()),
            (noise(40_000, 3), Compression::default()),
            (html(100), Compression::DISABLED),
        ] {
            let alone = encode(&m, &payload, c).unwrap();
            let prefix = b"*5\r\n$3\r\nSET\r\n".to_vec();
            let framed = encode_after(prefix.clone(), 16, &m, &payload, c).unwrap();
            assert!(framed.capacity() >= framed.len() + 16);
            assert_eq!(&framed[..prefix.len()], &prefix[..]);
            assert_eq!(&framed[prefix.len()..], &alone[..]);
            assert_eq!(
                decode(&framed[prefix.len()..], usize::MAX).unwrap().payload,
                payload
            );
        }
    }

    #[test]
    fn round_trips_empty_payload_tags_key_and_extra() {
        let m = meta("", &[], &[]);
        let d = check_round_trip(&m, b"", Compression::default());
        assert!(!d.compressed);
        let bytes = encode(&m, b"", Compression::default()).unwrap();
        assert_eq!(bytes.len(), FIXED_LEN + 4 + 4 + 4 + 4 + CHECKSUM_LEN);
    }

    #[test]
    fn round_trips_a_1_mb_key() {
        let key: String = "k/é".repeat((1 << 20) / 4);
        let t = tags();
        check_round_trip(&meta(&key, &t, &[]), b"payload", Compression::default());
    }

    #[test]
    fn tags_may_be_borrowed_strs() {
        let t = ["a", "b"];
        let m = EnvelopeMeta {
            kind: Kind::USE_CACHE,
            key: "k",
            tags: &t[..],
            timestamp: 1.0,
            server_ts: 2.0,
            stale: 3.0,
            revalidate: 4.0,
            expire: 5.0,
            extra: &[],
        };
        let d = decode(&encode(&m, b"p", Compression::default()).unwrap(), MAX).unwrap();
        assert_eq!(d.tags, ["a", "b"]);
    }

    #[test]
    fn compresses_a_compressible_payload() {
        let t = tags();
        let m = meta("k", &t, &[]);
        for len in [256 << 10, 1 << 20] {
            let payload = html(len);
            let bytes = encode(&m, &payload, Compression::default()).unwrap();
            assert!(
                bytes.len() < payload.len() / 4,
                "{len} B of html -> {} B",
                bytes.len()
            );
            let d = check_round_trip(&m, &payload, Compression::default());
            assert!(d.compressed);
        }
    }

    #[test]
    fn stores_an_incompressible_payload_raw() {
        let t = tags();
        let m = meta("k", &t, &[]);
        for len in [256 << 10, 1 << 20] {
            let payload = noise(len, len as u64);
            let bytes = encode(&m, &payload, Compression::default()).unwrap();
            let raw = encode(&m, &payload, Compression::DISABLED).unwrap();
            assert_eq!(bytes, raw, "incompressible payload must be stored raw");
            assert_eq!(bytes[FLAGS_AT], 0, "flag cleared");
            let d = check_round_trip(&m, &payload, Compression::default());
            assert!(!d.compressed);
        }
    }

    #[test]
    fn respects_threshold_and_disabled() {
        let m = meta("k", &[], &[]);
        let payload = html(4096);
        let below = Compression {
            enabled: true,
            threshold_bytes: 4097,
        };
        let at = Compression {
            enabled: true,
            threshold_bytes: 4096,
        };
        assert!(!check_round_trip(&m, &payload, below).compressed);
        assert!(check_round_trip(&m, &payload, at).compressed);
        assert!(!check_round_trip(&m, &payload, Compression::DISABLED).compressed);
    }

    #[test]
    fn extreme_compression_ratio_stays_within_the_decoder_guard() {
        // All zeros is LZ4's best case, the one closest to the 255:1 guard.
        let m = meta("k", &[], &[]);
        for len in [2048, 65_536, 1 << 20, 8 << 20] {
            let payload = vec![0u8; len];
            let d = check_round_trip(&m, &payload, Compression::default());
            assert!(d.compressed);
        }
    }

    #[test]
    fn header_reads_metadata_without_the_payload() {
        let t = tags();
        let extra = [9u8; 3];
        let m = meta("the key", &t, &extra);
        for payload in [html(10_000), b"raw".to_vec()] {
            let bytes = encode(&m, &payload, Compression::default()).unwrap();
            let h = decode_header(&bytes).unwrap();
            assert_eq!(h.key, "the key");
            assert_eq!(h.tags, t);
            assert_eq!(h.expire, 4_294_967_294.0);
            assert_eq!(h.extra, extra);
            assert_eq!(h.payload_len, payload.len());
            assert_eq!(h.compressed, payload.len() > 1024);
            h.verify().unwrap();
            if !h.compressed {
                assert_eq!(&bytes[h.payload_range()], &payload[..]);
            }
            assert_eq!(h.finish(MAX).unwrap().payload, payload);
        }
    }

    /// Small envelopes, one raw and one compressed, exercised byte by byte below.
    fn samples() -> Vec<Vec<u8>> {
        let t = tags();
        let extra = [7u8, 8];
        let m = meta("/blog/[slug]?a=b", &t, &extra);
        let raw = encode(&m, b"0:{\"a\":1}\n", Compression::default()).unwrap();
        let lz = encode(&m, &html(2000), Compression::default()).unwrap();
        assert_eq!(lz[FLAGS_AT], FLAG_LZ4);
        vec![raw, lz]
    }

    #[test]
    fn every_truncation_is_an_error() {
        for bytes in samples() {
            for len in 0..bytes.len() {
                let err = decode(&bytes[..len], MAX).unwrap_err();
                assert_eq!(err.reason(), "truncated", "length {len} of {}", bytes.len());
                assert!(decode_header(&bytes[..len]).is_err());
            }
            decode(&bytes, MAX).unwrap();
        }
    }

    #[test]
    fn every_single_bit_flip_is_an_error() {
        for bytes in samples() {
            for i in 0..bytes.len() * 8 {
                let mut b = bytes.clone();
                b[i / 8] ^= 1 << (i % 8);
                assert!(decode(&b, MAX).is_err(), "flip of bit {i} went unnoticed");
            }
        }
    }

    #[test]
    fn trailing_garbage_is_rejected() {
        for bytes in samples() {
            let mut b = bytes.clone();
            b.push(0);
            assert_eq!(reason(&b), "trailing");
            // Even when re-sealed so that the checksum matches the longer input.
            b.extend_from_slice(&[0; 4]);
            reseal(&mut b);
            assert_eq!(reason(&b), "trailing");
        }
    }

    #[test]
    fn future_version_is_rejected_as_version() {
        for bytes in samples() {
            let mut b = bytes.clone();
            b[4] = VERSION + 1;
            assert_eq!(reason(&b), "version");
            reseal(&mut b);
            assert_eq!(reason(&b), "version");
            // A future version may change everything after the version byte.
            let mut future = b[..5].to_vec();
            future.extend_from_slice(b"whatever v2 looks like");
            assert_eq!(
                decode(&future, MAX).unwrap_err(),
                DecodeError::UnsupportedVersion(VERSION + 1)
            );
            b[4] = 0;
            assert_eq!(reason(&b), "version");
        }
    }

    #[test]
    fn wrong_magic_is_rejected() {
        for bytes in samples() {
            let mut b = bytes.clone();
            b[0] = b'X';
            reseal(&mut b);
            assert_eq!(reason(&b), "magic");
        }
        assert_eq!(reason(b"<html>"), "magic");
        assert_eq!(reason(b"{\"value\":1}"), "magic");
        assert_eq!(reason(b"ST"), "truncated");
        assert_eq!(reason(b"SX"), "magic");
        assert_eq!(reason(b""), "truncated");
    }

    #[test]
    fn reserved_flags_are_rejected() {
        for bytes in samples() {
            for bit in 1..8 {
                let mut b = bytes.clone();
                b[FLAGS_AT] |= 1 << bit;
                reseal(&mut b);
                assert_eq!(reason(&b), "flags");
            }
        }
    }

    #[test]
    fn nan_is_refused_both_ways() {
        let mut m = meta("k", &[], &[]);
        m.revalidate = f64::NAN;
        assert_eq!(
            encode(&m, b"", Compression::default()).unwrap_err(),
            EncodeError::NotANumber {
                field: "revalidate"
            }
        );
        let mut b = encode(&meta("k", &[], &[]), b"", Compression::default()).unwrap();
        // `expire` is the fifth f64, at offset 7 + 4 * 8.
        b[39..47].copy_from_slice(&f64::NAN.to_le_bytes());
        reseal(&mut b);
        assert_eq!(
            decode(&b, MAX).unwrap_err(),
            DecodeError::NotANumber("expire")
        );
    }

    #[test]
    fn non_utf8_strings_are_rejected() {
        let t = vec!["ab".to_owned()];
        let m = meta("kk", &t, &[]);
        let bytes = encode(&m, b"p", Compression::default()).unwrap();
        // Key bytes start right after its length.
        let mut b = bytes.clone();
        b[FIXED_LEN + 4] = 0xff;
        reseal(&mut b);
        assert_eq!(reason(&b), "utf8");
        // The tag's bytes: after key (4 + 2), tag count (4), tag length (4).
        let mut b = bytes.clone();
        b[FIXED_LEN + 4 + 2 + 4 + 4] = 0xc3; // a lone lead byte
        reseal(&mut b);
        assert_eq!(reason(&b), "utf8");
    }

    #[test]
    fn checksum_mismatch_is_reported_as_such() {
        for bytes in samples() {
            let mut b = bytes.clone();
            let h = decode_header(&b).unwrap();
            let mid = h.payload_range().start + 3;
            b[mid] ^= 0x10;
            assert_eq!(reason(&b), "checksum");
            let last = b.len() - 1;
            let mut b = bytes.clone();
            b[last] ^= 1;
            assert_eq!(reason(&b), "checksum");
        }
    }

    #[test]
    fn payload_limit_is_enforced_before_allocating() {
        let m = meta("k", &[], &[]);
        let raw = encode(&m, &noise(5000, 1), Compression::default()).unwrap();
        let lz = encode(&m, &html(5000), Compression::default()).unwrap();
        for b in [raw, lz] {
            assert_eq!(
                decode(&b, 4999).unwrap_err(),
                DecodeError::PayloadTooLarge {
                    len: 5000,
                    max: 4999
                }
            );
            assert_eq!(decode(&b, 5000).unwrap().payload.len(), 5000);
        }
    }

    /// Offset of the stored-length field of a sample built from `meta("k", &[], &[])`.
    const LEN_AT: usize = FIXED_LEN + 4 + 1 + 4 + 4;

    #[test]
    fn huge_claimed_lengths_fail_without_allocating() {
        let m = meta("k", &[], &[]);
        let raw = encode(&m, b"abc", Compression::default()).unwrap();
        // Key length, tag count, extra length and stored length claiming 4 GiB.
        for at in [FIXED_LEN, FIXED_LEN + 5, FIXED_LEN + 9, LEN_AT] {
            let mut b = raw.clone();
            b[at..at + 4].copy_from_slice(&u32::MAX.to_le_bytes());
            reseal(&mut b);
            assert_eq!(reason(&b), "truncated", "length field at {at}");
        }
        // A compressed payload claiming to expand to 4 GiB: the ratio guard stops it even with
        // no payload limit at all.
        let mut b = encode(&m, &html(4096), Compression::default()).unwrap();
        b[LEN_AT + 4..LEN_AT + 8].copy_from_slice(&u32::MAX.to_le_bytes());
        reseal(&mut b);
        assert_eq!(decode(&b, usize::MAX).unwrap_err().reason(), "payload");
    }

    #[test]
    fn corrupt_lz4_with_a_valid_checksum_is_rejected() {
        let m = meta("k", &[], &[]);
        let good = encode(&m, &html(8192), Compression::default()).unwrap();
        // Claimed original length one byte off either way.
        for delta in [1i64, -1] {
            let mut b = good.clone();
            let orig = u32::from_le_bytes(b[LEN_AT + 4..LEN_AT + 8].try_into().unwrap());
            let new = (orig as i64 + delta) as u32;
            b[LEN_AT + 4..LEN_AT + 8].copy_from_slice(&new.to_le_bytes());
            reseal(&mut b);
            assert_eq!(reason(&b), "payload");
        }
        // Scrambled block contents.
        let mut b = good.clone();
        for i in LEN_AT + 8..b.len() - CHECKSUM_LEN {
            b[i] = b[i].wrapping_mul(31).wrapping_add(7);
        }
        reseal(&mut b);
        assert!(decode(&b, MAX).is_err());
    }

    #[test]
    fn random_garbage_never_panics() {
        let mut rng = StdRng::seed_from_u64(0x5eed);
        let samples = samples();
        for round in 0..20_000 {
            let input: Vec<u8> = match round % 4 {
                // Pure noise.
                0 => noise(rng.random_range(0..300), round),
                // Noise behind a valid magic and version, to get past the first checks.
                1 => {
                    let mut v = MAGIC.to_vec();
                    v.push(VERSION);
                    v.push(rng.random_range(0..2));
                    v.extend(noise(rng.random_range(0..300), round));
                    v
                }
                // A valid envelope with random bytes overwritten, re-sealed so the parser
                // behind the checksum sees it.
                _ => {
                    let mut v = samples[(round % 2) as usize].clone();
                    for _ in 0..rng.random_range(1..6) {
                        let i = rng.random_range(0..v.len() - CHECKSUM_LEN);
                        v[i] = rng.random();
                    }
                    if round % 4 == 3 {
                        reseal(&mut v);
                    }
                    v
                }
            };
            // Must return, Ok or Err, without panicking or allocating wildly.
            if let Ok(d) = decode(&input, 1 << 20) {
                assert!(d.payload.len() <= 1 << 20);
            }
        }
    }

    #[test]
    fn encode_rejects_oversized_fields() {
        // Only checkable cheaply for counts; a > 4 GiB buffer is not built in a unit test.
        assert_eq!(
            len_u32("payload", u32::MAX as usize + 1).unwrap_err(),
            EncodeError::TooLong {
                field: "payload",
                len: u32::MAX as usize + 1
            }
        );
        assert_eq!(len_u32("key", u32::MAX as usize).unwrap(), u32::MAX);
    }

    #[test]
    fn reasons_are_distinct() {
        let all = [
            DecodeError::BadMagic,
            DecodeError::UnsupportedVersion(2),
            DecodeError::ReservedFlags(2),
            DecodeError::Truncated,
            DecodeError::TrailingBytes,
            DecodeError::ChecksumMismatch,
            DecodeError::InvalidUtf8,
            DecodeError::NotANumber("stale"),
            DecodeError::PayloadTooLarge { len: 2, max: 1 },
            DecodeError::CorruptPayload,
        ];
        let reasons: std::collections::HashSet<_> = all.iter().map(|e| e.reason()).collect();
        assert_eq!(reasons.len(), all.len());
    }

    /// Timing of the two candidate checksums; run with
    /// `cargo test --release -p strata-core envelope::tests::checksum_timing -- --ignored --nocapture`.
    #[test]
    #[ignore]
    fn checksum_timing() {
        let data = noise(1 << 20, 3);
        let n = 500u32;
        let t = std::time::Instant::now();
        let mut acc = 0u64;
        for _ in 0..n {
            acc ^= u64::from(crc32fast::hash(std::hint::black_box(&data)));
        }
        let crc = t.elapsed() / n;
        let t = std::time::Instant::now();
        for _ in 0..n {
            acc ^= xxhash_rust::xxh3::xxh3_64(std::hint::black_box(&data));
        }
        let xxh = t.elapsed() / n;
        println!("1 MiB: crc32fast {crc:?}, xxh3-64 {xxh:?} ({acc})");
    }
}
