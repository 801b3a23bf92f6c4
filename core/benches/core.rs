//! The core's hot paths as plain Rust, without Node or Redis: `cargo bench -p strata-core`.
//! Figures and conditions: `bench/RESULTS.md`, "The core without Node".
#![allow(clippy::unwrap_used)]

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use bytes::Bytes;
use divan::Bencher;

use strata_core::cache::Cache;
use strata_core::clock::{ManualClock, SharedClock};
use strata_core::config::Options;
use strata_core::entry::{EntryMeta, INFINITE_CACHE_SECONDS};
use strata_core::envelope::{self, Compression, EnvelopeMeta, Kind};
use strata_core::resp::Reader;
use strata_core::store::{Lookup, Store};
use strata_core::tags::TagManifest;

fn main() {
    divan::main();
}

const T0: f64 = 1_795_357_925_414.625;
const SIZES: [usize; 3] = [1024, 16 * 1024, 256 * 1024];
const SOFT_TAGS: [&str; 4] = [
    "_N_T_/layout",
    "_N_T_/bench/layout",
    "_N_T_/bench/page",
    "_N_T_/bench",
];

/// A key shaped like Next's (~130 bytes).
fn key(i: u64) -> String {
    format!(
        "[\"b1d5a9c0e7f2\",\"c0ffee00d15ea5e5ba5eba11c0ffee00d15ea5e5\",[{{\"kind\":\"bench\",\"i\":{i}}}],\"$undefined\"]"
    )
}

fn meta() -> EntryMeta {
    EntryMeta {
        tags: vec!["products".into(), "bench".into()],
        stale: 300.0,
        timestamp: T0,
        expire: INFINITE_CACHE_SECONDS,
        revalidate: 900.0,
    }
}

fn clock() -> SharedClock {
    Arc::new(ManualClock::new(T0 + 1.0))
}

fn store(l1_max_bytes: u64) -> Store {
    let config = Options {
        l1_max_bytes: Some(l1_max_bytes),
        ..Default::default()
    }
    .resolve()
    .unwrap();
    Store::new(&config, clock(), None)
}

/// A Cache with an L2 configured (no connection is made until a command is sent).
fn cache_with_l2(l1_max_bytes: u64) -> Cache {
    let config = Options {
        l1_max_bytes: Some(l1_max_bytes),
        redis_url: Some("redis://127.0.0.1:1".into()),
        compress_min_bytes: Some(0),
        ..Default::default()
    }
    .resolve()
    .unwrap();
    Cache::new(&config, clock(), None, Some("bench".into())).unwrap()
}

/// What `plan_set` hands the envelope encoder for `m` under `key`.
fn envelope_meta<'a>(key: &'a str, m: &'a EntryMeta) -> EnvelopeMeta<'a> {
    EnvelopeMeta {
        kind: Kind::USE_CACHE,
        key,
        tags: &m.tags,
        timestamp: m.timestamp,
        server_ts: m.timestamp,
        stale: m.stale,
        revalidate: m.revalidate,
        expire: m.expire,
        extra: &[],
    }
}

fn envelope_of(key: &str, payload: &[u8]) -> Vec<u8> {
    let m = meta();
    envelope::encode(&envelope_meta(key, &m), payload, Compression::DISABLED).unwrap()
}

/// An L1 hit: the lookup and the expiry and tag rules (what a `get` does before JS).
#[divan::bench]
fn l1_hit(bencher: Bencher) {
    let s = store(64 << 20);
    for i in 0..10_000 {
        s.set(&key(i), Bytes::from(vec![7u8; 1024]), meta())
            .unwrap();
    }
    let k = key(4_321);
    bencher.bench_local(|| matches!(s.get(divan::black_box(&k)), Lookup::Hit { .. }));
}

/// Storing a new 1 KB entry into a full L1 (LRU evicts one): what a first read or a `set` pays.
#[divan::bench]
fn l1_insert_full(bencher: Bencher) {
    let s = store(16 << 20);
    let next = AtomicU64::new(0);
    for _ in 0..20_000 {
        let i = next.fetch_add(1, Ordering::Relaxed);
        s.set(&key(i), Bytes::from(vec![7u8; 1024]), meta())
            .unwrap();
    }
    bencher
        .with_inputs(|| {
            let i = next.fetch_add(1, Ordering::Relaxed);
            (key(i), Bytes::from(vec![7u8; 1024]))
        })
        .bench_local_values(|(k, v)| s.set(&k, v, meta()).unwrap());
}

/// Writing an envelope (header, tags, CRC-32 of the payload; compression off).
#[divan::bench(args = SIZES)]
fn envelope_encode(bencher: Bencher, size: usize) {
    let k = key(1);
    let payload = vec![7u8; size];
    let m = meta();
    bencher.bench_local(|| {
        envelope::encode(
            &envelope_meta(&k, &m),
            divan::black_box(&payload),
            Compression::DISABLED,
        )
        .unwrap()
    });
}

/// Reading an envelope back: header, then the checksum over the payload.
#[divan::bench(args = SIZES)]
fn envelope_decode(bencher: Bencher, size: usize) {
    let bytes = envelope_of(&key(1), &vec![7u8; size]);
    bencher.bench_local(|| {
        let h = envelope::decode_header(divan::black_box(&bytes)).unwrap();
        h.verify().unwrap();
        h.payload_range()
    });
}

/// An L2 reply turned into a hit, L1 empty of the key: check the envelope, promote into a full
/// L1 (evicting), judge. The native part of a first read, minus the socket and napi.
#[divan::bench(args = [1024, 16 * 1024])]
fn l2_reply_first_read(bencher: Bencher, size: usize) {
    let cache = cache_with_l2(16 << 20);
    let next = AtomicU64::new(0);
    let payload = vec![7u8; size];
    // Fill L1 so that every promotion evicts.
    for _ in 0..(20 << 20) / (size as u64 + 300) {
        let k = key(next.fetch_add(1, Ordering::Relaxed));
        let b = Bytes::from(envelope_of(&k, &payload));
        cache.finish_remote(&k, &SOFT_TAGS, Ok(Some(b)));
    }
    bencher
        .with_inputs(|| {
            let k = key(next.fetch_add(1, Ordering::Relaxed));
            let b = Bytes::from(envelope_of(&k, &payload));
            (k, b)
        })
        .bench_local_values(|(k, b)| {
            matches!(
                cache.finish_remote(&k, &SOFT_TAGS, Ok(Some(b))),
                Lookup::Hit { .. }
            )
        });
}

/// Judging an entry's 2 tags and a request's 4 soft tags against 10 000 tag records.
#[divan::bench]
fn tag_rules(bencher: Bencher) {
    let mut m = TagManifest::new(100_000);
    for i in 0..10_000 {
        m.update(&[format!("tag-{i}")], None, T0 - 1000.0);
    }
    m.update(&["products"], None, T0 - 5000.0);
    let tags = ["products", "bench"];
    bencher.bench_local(|| {
        let v = m.verdict(divan::black_box(&tags), T0, T0 + 1.0);
        let e = m.expiration(divan::black_box(&SOFT_TAGS), T0 + 1.0);
        (v, e)
    });
}

/// Parsing a bulk reply out of the socket buffer (RESP2), copied in as read(2) would.
#[divan::bench(args = [1024, 16 * 1024, 256 * 1024])]
fn resp_bulk_reply(bencher: Bencher, size: usize) {
    let mut wire = format!("${size}\r\n").into_bytes();
    wire.extend(std::iter::repeat_n(7u8, size));
    wire.extend_from_slice(b"\r\n");
    bencher
        .with_inputs(Reader::new)
        .bench_local_values(|mut r| {
            r.feed(divan::black_box(&wire));
            r.next_reply().unwrap()
        });
}

/// A large array reply (a tag-state resync: `n` integers) arriving in 64 KiB reads, the reader
/// asked for a reply after each read, as the event-loop path does. Linear in `n` since the
/// reader resumes its scan where the last read stopped (it re-parsed from the start before).
#[divan::bench(args = [10_000, 100_000, 1_000_000])]
fn resp_array_in_reads(bencher: Bencher, n: usize) {
    let mut wire = format!("*{n}\r\n").into_bytes();
    for i in 0..n {
        wire.extend_from_slice(format!(":{i}\r\n").as_bytes());
    }
    bencher
        .with_inputs(|| Reader::with_max_reply(64 << 20))
        .bench_local_values(|mut r| {
            let mut got = None;
            for chunk in wire.chunks(64 * 1024) {
                r.feed(divan::black_box(chunk));
                if let Some(reply) = r.next_reply().unwrap() {
                    got = Some(reply);
                }
            }
            got
        });
}
