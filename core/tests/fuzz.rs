//! Structure-aware fuzzing, on the stable toolchain, of everything strata-core reads from Redis:
//!
//! * **the envelope decoder and the read path that acts on a decoded value**: valid envelopes
//!   (random keys and tags, unicode and empty included, 'use cache' and incremental-cache kinds,
//!   payloads of 0..64 KiB, compressible ones so LZ4 is used, realistic and extreme numbers) are
//!   mutated field by field (numbers, length
//!   prefixes, tag count, flags, kind, truncation, extension, splicing, bit flips, corrupted LZ4
//!   blocks) and, for most mutants, **re-sealed with a recomputed CRC-32** so they reach the
//!   field handling behind the checksum. Each input goes through `envelope::decode_header`,
//!   `EnvelopeHeader::{verify, finish}` and `envelope::decode`, then through
//!   `Cache::finish_remote`, the production read path (decode, build the entry, promote it into
//!   L1, judge it), under its own key and under a key it does not carry;
//! * **the RESP reader** of the event-loop path: valid replies of every type, then mutated
//!   (empty header lines, negative, huge and mismatched lengths, unknown type bytes, deep
//!   nesting, truncation, bit flips), fed at random split points (sometimes byte by byte),
//!   drained until `None` or `Err`; every reply is also handed to the refresh script's parser
//!   (`L2::parse_refresh_reply`, with refresh-shaped replies carrying extreme tag stamps) and the
//!   result applied to a cache, and every bulk reply is read as an envelope (the event-loop GET).
//!
//! Properties, per input: **no panic** (each stage runs under `catch_unwind`; panics are counted
//! by place and message, not fatal, and the shortest input of each kind is minimised and
//! hex-dumped at the end); **no unbounded allocation** (a counting global allocator records, for
//! the fuzzing thread, the largest single allocation and the peak of live bytes while one input
//! is handled: the envelope path within [`ENVELOPE_ALLOC_RATIO`] times the input plus
//! [`ALLOC_SLACK`], the RESP reader within the bound it was made with plus [`ALLOC_SLACK`]); and
//! oracles where the input is known good: an unmutated envelope decodes to exactly what was
//! encoded and is served with exactly its bytes, an unmutated reply stream yields exactly its
//! replies whatever the split points, and a value is never served under a key it does not carry.
//! The summary counts how many inputs reached each depth (decoded, served, replies parsed...).
//!
//! Runs:
//! * short (inside `cargo test` / `npm test`): [`DEFAULT_ITERS`] inputs per target;
//! * long, ≥ 10 M inputs per target:
//!   `STRATA_FUZZ_ITERS=10000000 cargo test --release -p strata-core --test fuzz -- --nocapture`
//! * reproduce a run: `STRATA_FUZZ_SEED=<the seed it printed>` (and the same `STRATA_FUZZ_ITERS`).
//!
//! A failing run lists every distinct finding with its count, place, message and a minimal
//! reproducer, then fails.

#![allow(clippy::unwrap_used)]

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::{Cell, RefCell};
use std::collections::{BTreeMap, HashSet};
use std::panic::{self, AssertUnwindSafe};
use std::sync::{Arc, Once};
use std::time::Instant;

use bytes::Bytes;
use strata_core::cache::Cache;
use strata_core::clock::ManualClock;
use strata_core::config::Options;
use strata_core::envelope::{self, Compression, EnvelopeMeta, Kind, INCREMENTAL_KEY_PREFIX};
use strata_core::resp::{Reader, Reply, DEFAULT_MAX_REPLY, DIRECT_MIN};
use strata_core::store::Lookup;
use strata_core::tags::Durations;

/// Inputs per target when `STRATA_FUZZ_ITERS` is not set: a few seconds in a debug build.
const DEFAULT_ITERS: u64 = 25_000;

/// "Now" for every cache in this file (a fixed clock keeps runs reproducible): 2026-11-27.
const NOW_MS: f64 = 1_795_800_000_000.0;

/// A key no generated envelope carries: reading any envelope under it must be a miss.
const FOREIGN_KEY: &str = "\u{1}foreign-key";

/// Tags that get invalidated now and then during the envelope run (generated tags never
/// start with `\u{1}`, so "realistic" entries never carry them).
const INVALIDATED_TAGS: [&str; 4] = ["\u{1}inv0", "\u{1}inv1", "\u{1}inv2", "\u{1}inv3"];

/// The envelope path may allocate at most this many times the input's length (plus
/// [`ALLOC_SLACK`]) at once: LZ4 legitimately expands up to 255:1, and the decoder's ratio guard
/// is what keeps a claimed length from going further.
const ENVELOPE_ALLOC_RATIO: usize = 256;
/// Fixed allowance on top of the proportional bounds (tables, buffers of fixed size).
const ALLOC_SLACK: usize = 1 << 20;
// The RESP reader may allocate up to the bound it was made with (`Reader::with_max_reply`: the
// event loop's is `Cache::max_reply_bytes()`, `Reader::new()`'s `resp::DEFAULT_MAX_REPLY`), plus
// `ALLOC_SLACK`, whatever the input.

// ---------------------------------------------------------------------------------------------
// A counting allocator: largest single allocation and peak live bytes, per thread.

struct Counting;

thread_local! {
    static LIVE: Cell<isize> = const { Cell::new(0) };
    static PEAK: Cell<isize> = const { Cell::new(0) };
    static LARGEST: Cell<usize> = const { Cell::new(0) };
}

fn note_alloc(size: usize) {
    // `try_with`: never panic in the allocator, also while a thread's locals are torn down.
    let _ = LIVE.try_with(|live| {
        let now = live.get().wrapping_add(size as isize);
        live.set(now);
        let _ = PEAK.try_with(|peak| peak.set(peak.get().max(now)));
    });
    let _ = LARGEST.try_with(|largest| largest.set(largest.get().max(size)));
}

fn note_free(size: usize) {
    let _ = LIVE.try_with(|live| live.set(live.get().wrapping_sub(size as isize)));
}

// SAFETY: every call is forwarded to `System` unchanged; the bookkeeping only touches
// const-initialised thread-locals without destructors (no allocation, no re-entrancy).
unsafe impl GlobalAlloc for Counting {
    /// # Safety
    /// [`GlobalAlloc::alloc`]'s contract: `layout` has a non-zero size.
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: `layout` is our caller's, non-zero in size (the contract above), which is all
        // `System.alloc` asks.
        let p = unsafe { System.alloc(layout) };
        if !p.is_null() {
            note_alloc(layout.size());
        }
        p
    }

    /// # Safety
    /// [`GlobalAlloc::alloc_zeroed`]'s contract: `layout` has a non-zero size.
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        // SAFETY: as in `alloc`: a non-zero `layout`, from our caller.
        let p = unsafe { System.alloc_zeroed(layout) };
        if !p.is_null() {
            note_alloc(layout.size());
        }
        p
    }

    /// # Safety
    /// [`GlobalAlloc::dealloc`]'s contract: `ptr` was allocated by this allocator with `layout`.
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: every block of this allocator comes from `System` (each method forwards to
        // it), so `ptr` is a `System` block of `layout` (the contract above).
        unsafe { System.dealloc(ptr, layout) };
        note_free(layout.size());
    }

    /// # Safety
    /// [`GlobalAlloc::realloc`]'s contract: `ptr` was allocated by this allocator with `layout`,
    /// and `new_size` is non-zero and does not overflow `isize` once rounded up to the alignment.
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // SAFETY: `ptr` is a `System` block of `layout` (as in `dealloc`) and `new_size` meets
        // the same bounds for `System` (the contract above).
        let p = unsafe { System.realloc(ptr, layout, new_size) };
        if !p.is_null() {
            note_free(layout.size());
            note_alloc(new_size);
        }
        p
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

/// Starts measuring this thread's allocations for one input.
fn alloc_reset() {
    LIVE.with(|c| c.set(0));
    PEAK.with(|c| c.set(0));
    LARGEST.with(|c| c.set(0));
}

/// (largest single allocation, peak of live bytes) since [`alloc_reset`].
fn alloc_read() -> (usize, usize) {
    (
        LARGEST.with(Cell::get),
        PEAK.with(Cell::get).max(0) as usize,
    )
}

// ---------------------------------------------------------------------------------------------
// A small, fast, seedable generator (wyrand): the harness needs speed and reproducibility,
// not statistical perfection.

struct Rng(u64);

impl Rng {
    fn new(seed: u64) -> Self {
        Rng(seed)
    }
    fn u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0xa076_1d64_78bd_642f);
        let t = u128::from(self.0) * u128::from(self.0 ^ 0xe703_7ed1_a0b4_28db);
        ((t >> 64) as u64) ^ (t as u64)
    }
    /// Uniform in `0..n` (`n > 0`).
    fn below(&mut self, n: usize) -> usize {
        ((u128::from(self.u64()) * n as u128) >> 64) as usize
    }
    /// Uniform in `lo..=hi`.
    fn between(&mut self, lo: usize, hi: usize) -> usize {
        lo + self.below(hi - lo + 1)
    }
    /// True with probability `percent` %.
    fn chance(&mut self, percent: usize) -> bool {
        self.below(100) < percent
    }
    fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.below(items.len())]
    }
    fn bytes(&mut self, n: usize) -> Vec<u8> {
        let mut v = Vec::with_capacity(n);
        while v.len() < n {
            let r = self.u64().to_le_bytes();
            v.extend_from_slice(&r[..(n - v.len()).min(8)]);
        }
        v
    }
}

fn env_u64(name: &str) -> Option<u64> {
    let v = std::env::var(name).ok()?;
    let v = v.trim().replace('_', "");
    match v.strip_prefix("0x") {
        Some(hex) => u64::from_str_radix(hex, 16).ok(),
        None => v.parse().ok(),
    }
}

fn iterations() -> u64 {
    env_u64("STRATA_FUZZ_ITERS").unwrap_or(DEFAULT_ITERS)
}

/// The run's seed: `STRATA_FUZZ_SEED`, else one drawn from the clock (printed, so a failing run
/// can be repeated).
fn seed() -> u64 {
    env_u64("STRATA_FUZZ_SEED").unwrap_or_else(|| {
        let t = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(0);
        Rng::new(t ^ u64::from(std::process::id())).u64()
    })
}

// ---------------------------------------------------------------------------------------------
// Panics as data: a hook that records where and why the fuzzing thread panicked.

#[derive(Clone, Debug)]
struct PanicNote {
    message: String,
    place: String,
    /// The first strata_core frames of the backtrace (captured the first time a place is seen).
    frames: String,
}

thread_local! {
    /// How many inputs reached each depth (printed in the summary).
    static REACHED: RefCell<BTreeMap<&'static str, u64>> = const { RefCell::new(BTreeMap::new()) };
    static CAPTURING: Cell<bool> = const { Cell::new(false) };
    static LAST_PANIC: RefCell<Option<PanicNote>> = const { RefCell::new(None) };
    static SEEN_PLACES: RefCell<Option<HashSet<String>>> = const { RefCell::new(None) };
}

fn install_panic_hook() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        let previous = panic::take_hook();
        panic::set_hook(Box::new(move |info| {
            if !CAPTURING.with(Cell::get) {
                return previous(info);
            }
            let place = info
                .location()
                .map(|l| format!("{}:{}:{}", l.file(), l.line(), l.column()))
                .unwrap_or_else(|| "?".to_owned());
            let payload = info.payload();
            let message = payload
                .downcast_ref::<&str>()
                .map(|s| (*s).to_owned())
                .or_else(|| payload.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "(non-string panic payload)".to_owned());
            let key = format!("{place} {}", normalise(&message));
            let new =
                SEEN_PLACES.with(|s| s.borrow_mut().get_or_insert_with(HashSet::new).insert(key));
            let frames = if new {
                // Symbolising allocates megabytes: not the input's doing, keep it out of the
                // allocation figures.
                let saved = (
                    LIVE.with(Cell::get),
                    PEAK.with(Cell::get),
                    LARGEST.with(Cell::get),
                );
                let frames = core_frames(&std::backtrace::Backtrace::force_capture().to_string());
                LIVE.with(|c| c.set(saved.0));
                PEAK.with(|c| c.set(saved.1));
                LARGEST.with(|c| c.set(saved.2));
                frames
            } else {
                String::new()
            };
            LAST_PANIC.with(|p| {
                *p.borrow_mut() = Some(PanicNote {
                    message,
                    place,
                    frames,
                })
            });
        }));
    });
}

/// The strata_core frames (and where they are) of a rendered backtrace, outermost last.
fn core_frames(bt: &str) -> String {
    let lines: Vec<&str> = bt.lines().collect();
    let mut out = Vec::new();
    for (i, line) in lines.iter().enumerate() {
        let t = line.trim();
        if t.contains("strata_core::") && !t.contains("fuzz::") {
            let name = t.split_once(": ").map_or(t, |(_, n)| n);
            let at = lines
                .get(i + 1)
                .map(|l| l.trim())
                .filter(|l| l.starts_with("at "))
                .unwrap_or("");
            out.push(format!("{name} {at}"));
            if out.len() == 4 {
                break;
            }
        }
    }
    if out.is_empty() {
        "(no strata_core frame: build without symbols, or the panic is outside the crate)".into()
    } else {
        out.join("\n        ")
    }
}

/// Counts an input that reached `what`.
fn reached(what: &'static str) {
    REACHED.with(|r| *r.borrow_mut().entry(what).or_insert(0) += 1);
}

/// Digits replaced, so "index 7 out of range" and "index 9 out of range" are one finding.
fn normalise(message: &str) -> String {
    let mut out = String::with_capacity(message.len());
    let mut last_digit = false;
    for c in message.chars() {
        if c.is_ascii_digit() {
            if !last_digit {
                out.push('#');
            }
            last_digit = true;
        } else {
            out.push(c);
            last_digit = false;
        }
    }
    out
}

/// One thing that went wrong with one input.
#[derive(Clone, Debug)]
enum Problem {
    /// A stage panicked.
    Panic {
        stage: &'static str,
        note: PanicNote,
    },
    /// A stage returned, but broke a property.
    Broken { stage: &'static str, what: String },
}

impl Problem {
    /// Identity of the finding: same class = same bug.
    fn class(&self) -> String {
        match self {
            Problem::Panic { stage, note } => {
                format!(
                    "panic in {stage} at {}: {}",
                    note.place,
                    normalise(&note.message)
                )
            }
            Problem::Broken { stage, what } => format!("{stage}: {}", normalise(what)),
        }
    }
}

/// Runs `f` as stage `stage`: a panic or an `Err` becomes a [`Problem`].
fn stage<T>(
    problems: &mut Vec<Problem>,
    stage: &'static str,
    f: impl FnOnce() -> Result<T, String>,
) -> Option<T> {
    CAPTURING.with(|c| c.set(true));
    LAST_PANIC.with(|p| p.borrow_mut().take());
    let result = panic::catch_unwind(AssertUnwindSafe(f));
    CAPTURING.with(|c| c.set(false));
    match result {
        Ok(Ok(v)) => Some(v),
        Ok(Err(what)) => {
            problems.push(Problem::Broken { stage, what });
            None
        }
        Err(_) => {
            let note = LAST_PANIC
                .with(|p| p.borrow_mut().take())
                .unwrap_or_else(|| PanicNote {
                    message: "(panic not recorded)".into(),
                    place: "?".into(),
                    frames: String::new(),
                });
            problems.push(Problem::Panic { stage, note });
            None
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Findings: counted by class, the shortest input of each kept and minimised at the end.

#[derive(Clone, Debug, Default)]
struct Case {
    bytes: Vec<u8>,
    /// Where the input was split between `feed`s (RESP only; empty = one feed).
    splits: Vec<usize>,
    /// The reader's bound, `Reader::with_max_reply(reader_max)` (RESP only).
    reader_max: usize,
}

struct Finding {
    problem: Problem,
    count: u64,
    first_input: u64,
    shortest: Case,
}

struct Report {
    target: &'static str,
    seed: u64,
    inputs: u64,
    resealed: u64,
    unmutated: u64,
    findings: BTreeMap<String, Finding>,
    problem_inputs: u64,
    largest_alloc: usize,
    largest_alloc_input_len: usize,
    peak_live: usize,
    /// Largest of `largest allocation / input length` (inputs of at least 64 bytes).
    worst_ratio: f64,
    /// The slowest input: (seconds, length, index).
    slowest: (f64, usize, u64),
    started: Instant,
}

impl Report {
    fn new(target: &'static str, seed: u64) -> Self {
        Report {
            target,
            seed,
            inputs: 0,
            resealed: 0,
            unmutated: 0,
            findings: BTreeMap::new(),
            problem_inputs: 0,
            largest_alloc: 0,
            largest_alloc_input_len: 0,
            peak_live: 0,
            worst_ratio: 0.0,
            slowest: (0.0, 0, 0),
            started: Instant::now(),
        }
    }

    fn record(&mut self, index: u64, case: &Case, problems: Vec<Problem>) {
        if !problems.is_empty() {
            self.problem_inputs += 1;
        }
        for p in problems {
            let class = p.class();
            let f = self.findings.entry(class).or_insert_with(|| Finding {
                problem: p.clone(),
                count: 0,
                first_input: index,
                shortest: case.clone(),
            });
            f.count += 1;
            if case.bytes.len() < f.shortest.bytes.len() {
                f.shortest = case.clone();
            }
            if let (Problem::Panic { note, .. }, Problem::Panic { note: first, .. }) =
                (&p, &mut f.problem)
            {
                if first.frames.is_empty() && !note.frames.is_empty() {
                    first.frames = note.frames.clone();
                }
            }
        }
    }

    fn time(&mut self, index: u64, input_len: usize, started: Instant) {
        let secs = started.elapsed().as_secs_f64();
        if secs > self.slowest.0 {
            self.slowest = (secs, input_len, index);
        }
    }

    fn alloc(&mut self, input_len: usize, largest: usize, peak: usize) {
        if largest > self.largest_alloc {
            self.largest_alloc = largest;
            self.largest_alloc_input_len = input_len;
        }
        self.peak_live = self.peak_live.max(peak);
        if input_len >= 64 {
            self.worst_ratio = self.worst_ratio.max(largest as f64 / input_len as f64);
        }
    }

    /// Prints the summary and every finding; returns the failure message, if any.
    fn finish(
        &mut self,
        minimise: &dyn Fn(&str, &Case) -> Case,
        describe: &dyn Fn(&Case) -> String,
    ) -> Option<String> {
        let secs = self.started.elapsed().as_secs_f64();
        let mut out = String::new();
        out += &format!(
            "\n== fuzz {}: seed {:#018x}, {} inputs in {:.2} s = {:.0} inputs/s ({} unmutated, {} re-sealed)\n",
            self.target,
            self.seed,
            self.inputs,
            secs,
            self.inputs as f64 / secs.max(1e-9),
            self.unmutated,
            self.resealed,
        );
        out += &format!(
            "   largest single allocation {} B (input of {} B); worst allocation/input ratio {:.1} (inputs >= 64 B); peak live bytes for one input {} B\n",
            self.largest_alloc, self.largest_alloc_input_len, self.worst_ratio, self.peak_live,
        );
        let depth: Vec<String> =
            REACHED.with(|r| r.borrow().iter().map(|(k, v)| format!("{k} {v}")).collect());
        out += &format!("   reached: {}\n", depth.join(", "));
        out += &format!(
            "   slowest input {:.2} ms (#{}, {} B)\n",
            self.slowest.0 * 1000.0,
            self.slowest.2,
            self.slowest.1
        );
        out += &format!(
            "   {} inputs with problems, {} distinct findings\n",
            self.problem_inputs,
            self.findings.len()
        );
        for (i, (class, f)) in self.findings.iter_mut().enumerate() {
            let min = minimise(class, &f.shortest);
            out += &format!(
                "\n-- finding {}: {class}\n   seen {} times, first at input #{}\n",
                i + 1,
                f.count,
                f.first_input
            );
            match &f.problem {
                Problem::Panic { stage, note } => {
                    out += &format!(
                        "   stage: {stage}\n   panic: {}\n   at: {}\n   in: {}\n",
                        note.message, note.place, note.frames
                    );
                }
                Problem::Broken { stage, what } => {
                    out += &format!("   stage: {stage}\n   broken: {what}\n");
                }
            }
            out += &format!(
                "   minimal reproducer ({} B): {}\n",
                min.bytes.len(),
                describe(&min)
            );
        }
        println!("{out}");
        if self.findings.is_empty() {
            None
        } else {
            Some(format!(
                "fuzz {}: {} distinct findings over {} of {} inputs (seed {:#018x}); see the report above (run with --nocapture)",
                self.target,
                self.findings.len(),
                self.problem_inputs,
                self.inputs,
                self.seed
            ))
        }
    }
}

fn hex(bytes: &[u8]) -> String {
    let h = |b: &[u8]| b.iter().map(|x| format!("{x:02x}")).collect::<String>();
    if bytes.len() <= 512 {
        h(bytes)
    } else {
        format!(
            "{}…({} bytes)…{}",
            h(&bytes[..256]),
            bytes.len() - 320,
            h(&bytes[bytes.len() - 64..])
        )
    }
}

/// Removes chunks of `case.bytes` (halving the chunk size down to one byte) while `still`
/// reproduces; at most `budget` attempts.
fn shrink(case: &Case, budget: usize, still: &mut dyn FnMut(&Case) -> Option<Case>) -> Case {
    let mut best = case.clone();
    let mut tries = 0;
    let mut chunk = best.bytes.len() / 2;
    while chunk >= 1 && tries < budget {
        let mut at = 0;
        let mut progressed = false;
        while at < best.bytes.len() && tries < budget {
            let end = (at + chunk).min(best.bytes.len());
            let mut bytes = best.bytes[..at].to_vec();
            bytes.extend_from_slice(&best.bytes[end..]);
            let splits = best
                .splits
                .iter()
                .map(|&s| {
                    if s > at {
                        s.saturating_sub(end - at).max(at)
                    } else {
                        s
                    }
                })
                .filter(|&s| s > 0 && s < bytes.len())
                .collect();
            tries += 1;
            if let Some(smaller) = still(&Case {
                bytes,
                splits,
                reader_max: best.reader_max,
            }) {
                best = smaller;
                progressed = true;
            } else {
                at += chunk;
            }
        }
        if !progressed {
            chunk /= 2;
        }
    }
    best
}

// ---------------------------------------------------------------------------------------------
// Envelopes: generation, layout, mutation.

/// Interesting f64 values for the five number fields.
const EXTREMES: &[f64] = &[
    0.0,
    -0.0,
    1.0,
    -1.0,
    0.5,
    300.0,
    4_294_967_294.0, // Next's INFINITE_CACHE
    4_294_967_295.0,
    1e12,
    1e15,
    9_007_199_254_740_993.0,
    1.844_674_407_370_955_2e19, // 2^64 (seconds)
    1.844_674_407_370_955_2e22, // 2^64 s in ms
    1e19,
    1e22,
    1e23,
    1e300,
    -1e300,
    -1e15,
    f64::MAX,
    f64::MIN,
    f64::INFINITY,
    f64::NEG_INFINITY,
    f64::MIN_POSITIVE,
    f64::EPSILON,
    2.5e-10,
];

/// Subnormals and NaNs, as bit patterns (NaN only by mutation: `encode` refuses it).
const ODD_BITS: &[u64] = &[
    0x0000_0000_0000_0001,
    0x8000_0000_0000_0001,
    0x000f_ffff_ffff_ffff,
    0x7ff8_0000_0000_0000,
    0xfff8_0000_0000_0000,
    0x7ff0_0000_0000_0001,
    0x7fff_ffff_ffff_ffff,
    0xffff_ffff_ffff_ffff,
];

const FLOAT_NAMES: [&str; 5] = ["timestamp", "server_ts", "stale", "revalidate", "expire"];
const FLOATS_AT: usize = 7;
const FIXED_LEN: usize = 47;

fn extreme(rng: &mut Rng) -> f64 {
    if rng.chance(20) {
        f64::from_bits(*rng.pick(ODD_BITS))
    } else if rng.chance(10) {
        f64::from_bits(rng.u64())
    } else {
        *rng.pick(EXTREMES)
    }
}

const UNICODE: &[char] = &[
    'é',
    'ß',
    'Ω',
    '日',
    '本',
    '語',
    '🦀',
    '👍',
    '\u{200d}',
    '\u{feff}',
    '\u{10ffff}',
    '\u{0}',
    '\u{7f}',
    '\u{80}',
    '\u{7ff}',
    '\u{800}',
    '\u{ffff}',
    '\u{10000}',
    '/',
    '?',
    '[',
    ']',
    '%',
    '"',
    '\\',
    ' ',
    '\r',
    '\n',
];

/// A random string (never containing `\u{1}`, see [`FOREIGN_KEY`], [`INVALIDATED_TAGS`]).
fn gen_string(rng: &mut Rng, max: usize) -> String {
    match rng.below(10) {
        0 => String::new(),
        1..=3 => {
            let parts = [
                "/blog/", "[slug]", "?a=b", "&c=", "page", "_N_T_/", "layout", "1",
            ];
            (0..rng.between(1, 6)).map(|_| *rng.pick(&parts)).collect()
        }
        4..=6 => (0..rng.below(max.min(64) + 1))
            .map(|_| char::from(rng.between(0x20, 0x7e) as u8))
            .collect(),
        7 | 8 => (0..rng.below(max.min(32) + 1))
            .map(|_| *rng.pick(UNICODE))
            .collect(),
        _ => {
            let c = char::from(rng.between(b'a' as usize, b'z' as usize) as u8);
            std::iter::repeat_n(c, rng.below(max + 1)).collect()
        }
    }
}

fn gen_payload(rng: &mut Rng) -> Vec<u8> {
    let len = match rng.below(10) {
        0 => 0,
        1..=5 => rng.below(257),
        6..=8 => rng.between(257, 4096),
        _ => rng.between(4097, 64 << 10),
    };
    match rng.below(5) {
        0 => vec![0u8; len],
        1 => {
            // A short repeated pattern: compresses well.
            let unit = {
                let n = rng.between(1, 16);
                rng.bytes(n)
            };
            unit.iter().copied().cycle().take(len).collect()
        }
        2 => {
            let html =
                b"<div class=\"post\"><h1>Title</h1><p>Lorem ipsum dolor sit amet.</p></div>\n";
            html.iter().copied().cycle().take(len).collect()
        }
        3 => rng.bytes(len),
        _ => {
            // Half noise, half runs.
            let mut v = rng.bytes(len / 2);
            v.resize(len, b'x');
            v
        }
    }
}

/// Field offsets of a well-formed envelope.
#[derive(Clone, Debug, Default)]
struct Shape {
    key_len_at: usize,
    tag_count_at: usize,
    tag_len_at: Vec<usize>,
    extra_len_at: usize,
    stored_len_at: usize,
    original_len_at: Option<usize>,
    payload: std::ops::Range<usize>,
    /// Every field boundary (for cuts, splices and insertions).
    boundaries: Vec<usize>,
}

fn u32_at(b: &[u8], at: usize) -> Option<usize> {
    Some(u32::from_le_bytes(b.get(at..at + 4)?.try_into().ok()?) as usize)
}

/// The layout of `b` (an envelope as `encode` writes it), or `None` if it does not parse.
fn shape(b: &[u8]) -> Option<Shape> {
    let mut s = Shape {
        key_len_at: FIXED_LEN,
        boundaries: vec![0, 4, 5, 6, 7, 15, 23, 31, 39, FIXED_LEN],
        ..Shape::default()
    };
    let mut at = FIXED_LEN;
    let key_len = u32_at(b, at)?;
    at += 4 + key_len;
    s.boundaries.extend([FIXED_LEN + 4, at]);
    s.tag_count_at = at;
    let tags = u32_at(b, at)?;
    at += 4;
    s.boundaries.push(at);
    for _ in 0..tags.min(1 << 16) {
        s.tag_len_at.push(at);
        at += 4 + u32_at(b, at)?;
        s.boundaries.push(at);
    }
    s.extra_len_at = at;
    at += 4 + u32_at(b, at)?;
    s.boundaries.push(at);
    s.stored_len_at = at;
    let stored = u32_at(b, at)?;
    at += 4;
    if b.get(5)? & 1 != 0 {
        s.original_len_at = Some(at);
        at += 4;
    }
    s.boundaries.push(at);
    s.payload = at..at + stored;
    at += stored;
    s.boundaries.extend([at, b.len()]);
    (at + 4 == b.len()).then_some(s)
}

/// A valid envelope and what it was made of.
struct Base {
    bytes: Vec<u8>,
    shape: Shape,
    key: String,
    tags: Vec<String>,
    numbers: [f64; 5],
    extra: Vec<u8>,
    payload: Vec<u8>,
    /// Numbers as Next writes them, fresh, no invalidated tag: must be served exactly.
    realistic: bool,
}

fn gen_base(rng: &mut Rng) -> Base {
    let realistic = rng.chance(50);
    // A 'use cache' key, or an incremental-cache one (kind 1; its store key has the prefix).
    let key = if rng.chance(20) {
        format!("{INCREMENTAL_KEY_PREFIX}{}", gen_string(rng, 256))
    } else {
        gen_string(rng, 2048)
    };
    let mut tags: Vec<String> = (0..rng.below(6)).map(|_| gen_string(rng, 64)).collect();
    if !realistic && rng.chance(30) {
        tags.push((*rng.pick(&INVALIDATED_TAGS)).to_owned());
    }
    let timestamp = NOW_MS - rng.below(600_000) as f64 - 0.25;
    let mut numbers = [
        timestamp,
        timestamp,
        300.0,
        900.0,
        *rng.pick(&[3600.0, 4_294_967_294.0, 86_400.0]),
    ];
    if !realistic {
        for n in &mut numbers {
            if rng.chance(40) {
                *n = extreme(rng);
                while n.is_nan() {
                    *n = extreme(rng);
                }
            }
        }
    }
    let extra = if rng.chance(10) {
        {
            let n = rng.below(32);
            rng.bytes(n)
        }
    } else {
        Vec::new()
    };
    let payload = gen_payload(rng);
    let compression = match rng.below(4) {
        0 => Compression::DISABLED,
        1 => Compression {
            enabled: true,
            threshold_bytes: 1,
        },
        _ => Compression::default(),
    };
    let meta = EnvelopeMeta {
        kind: Kind::of_key(&key),
        key: &key,
        tags: &tags,
        timestamp: numbers[0],
        server_ts: numbers[1],
        stale: numbers[2],
        revalidate: numbers[3],
        expire: numbers[4],
        extra: &extra,
    };
    let bytes = envelope::encode(&meta, &payload, compression).unwrap();
    let shape = shape(&bytes).unwrap();
    Base {
        bytes,
        shape,
        key,
        tags,
        numbers,
        extra,
        payload,
        realistic,
    }
}

fn reseal(b: &mut [u8]) {
    if b.len() >= 4 {
        let split = b.len() - 4;
        let crc = crc32fast::hash(&b[..split]);
        b[split..].copy_from_slice(&crc.to_le_bytes());
    }
}

fn put_u32(b: &mut [u8], at: usize, v: u32) {
    if let Some(dst) = b.get_mut(at..at + 4) {
        dst.copy_from_slice(&v.to_le_bytes());
    }
}

/// A new value for a length field currently holding `v`, with `rest` bytes after it.
fn mutate_len(rng: &mut Rng, v: usize, rest: usize) -> u32 {
    let v = v as u32;
    let rest = rest as u32;
    match rng.below(12) {
        0 => 0,
        1 => v.wrapping_sub(1),
        2 => v.wrapping_add(1),
        3 => u32::MAX,
        4 => u32::MAX - 1,
        5 => 0x8000_0000,
        6 => v.wrapping_mul(2),
        7 => rest,
        8 => rest.wrapping_add(1),
        9 => rest.wrapping_sub(1),
        10 => v.wrapping_add(4),
        _ => rng.u64() as u32,
    }
}

/// One structure-aware mutation of `b` (whose layout was `s`), possibly using `other`.
fn mutate_envelope(rng: &mut Rng, b: &mut Vec<u8>, s: &Shape, other: &Base) {
    let len = b.len();
    match rng.below(16) {
        // A number field set to an extreme value (NaN, subnormals and infinities included).
        0..=3 => {
            let field = rng.below(5);
            let at = FLOATS_AT + 8 * field;
            if let Some(dst) = b.get_mut(at..at + 8) {
                dst.copy_from_slice(&extreme(rng).to_le_bytes());
            }
        }
        // A length prefix or the tag count.
        4..=6 => {
            let mut fields = vec![
                s.key_len_at,
                s.tag_count_at,
                s.extra_len_at,
                s.stored_len_at,
            ];
            fields.extend(&s.tag_len_at);
            fields.extend(s.original_len_at);
            let at = *rng.pick(&fields);
            if let Some(v) = u32_at(b, at) {
                let new = mutate_len(rng, v, len.saturating_sub(at + 4));
                put_u32(b, at, new);
            }
        }
        // Flags, kind, version, magic.
        7 => {
            let magic_byte = rng.below(4);
            let at = *rng.pick(&[5usize, 5, 6, 4, magic_byte]);
            if let Some(x) = b.get_mut(at) {
                *x = match rng.below(4) {
                    0 => *x ^ 1,
                    1 => 1 << rng.below(8),
                    2 => 0xff,
                    _ => rng.u64() as u8,
                };
            }
        }
        // Truncation: at a field boundary (± 1) or anywhere.
        8 => {
            let cut = if rng.chance(60) {
                (*rng.pick(&s.boundaries) + rng.below(3)).saturating_sub(1)
            } else {
                rng.below(len + 1)
            };
            b.truncate(cut.min(len));
        }
        // Extension.
        9 => match rng.below(3) {
            0 => b.extend({
                let n = rng.between(1, 16);
                rng.bytes(n)
            }),
            1 => b.extend(std::iter::repeat_n(0, rng.between(1, 8))),
            _ => {
                let from = rng.below(len + 1);
                let tail = b[from..].to_vec();
                b.extend(tail);
            }
        },
        // Splice: our head, another envelope's tail (at field boundaries or anywhere).
        10 => {
            let cut = if rng.chance(70) {
                *rng.pick(&s.boundaries)
            } else {
                rng.below(len + 1)
            };
            let from = if rng.chance(70) {
                *rng.pick(&other.shape.boundaries)
            } else {
                rng.below(other.bytes.len() + 1)
            };
            b.truncate(cut.min(len));
            b.extend_from_slice(&other.bytes[from.min(other.bytes.len())..]);
        }
        // Bit flips.
        11 => {
            for _ in 0..rng.between(1, 8) {
                if !b.is_empty() {
                    let i = rng.below(b.len());
                    b[i] ^= 1 << rng.below(8);
                }
            }
        }
        // Random bytes overwritten.
        12 => {
            for _ in 0..rng.between(1, 4) {
                if !b.is_empty() {
                    let i = rng.below(b.len());
                    b[i] = rng.u64() as u8;
                }
            }
        }
        // Bytes inserted or deleted at a boundary.
        13 => {
            let at = (*rng.pick(&s.boundaries)).min(b.len());
            if rng.chance(50) {
                let n = rng.between(1, 8);
                let ins = rng.bytes(n);
                b.splice(at..at, ins);
            } else {
                let end = (at + rng.between(1, 8)).min(b.len());
                b.drain(at..end);
            }
        }
        // The payload (an LZ4 block, when compressed) scrambled.
        14 => {
            let p = s.payload.clone();
            if p.end <= b.len() && !p.is_empty() {
                match rng.below(3) {
                    0 => {
                        for _ in 0..rng.between(1, 6) {
                            let i = rng.between(p.start, p.end - 1);
                            b[i] = rng.u64() as u8;
                        }
                    }
                    1 => {
                        let noise = rng.bytes(p.len());
                        b[p].copy_from_slice(&noise);
                    }
                    _ => {
                        // A plausible LZ4 sequence: a literal-run token with a huge match.
                        let i = rng.between(p.start, p.end - 1);
                        b[i] = 0xff;
                    }
                }
            }
        }
        // The compression flag flipped, or the original length changed.
        _ => {
            if let Some(at) = s.original_len_at.filter(|_| rng.chance(60)) {
                if let Some(v) = u32_at(b, at) {
                    let new = match rng.below(4) {
                        0 => (s.payload.len() * 255) as u32,
                        1 => (s.payload.len() * 255 + 1) as u32,
                        2 => (v as u32).wrapping_add(rng.between(1, 1 << 20) as u32),
                        _ => mutate_len(rng, v, 0),
                    };
                    put_u32(b, at, new);
                }
            } else if let Some(x) = b.get_mut(5) {
                *x ^= 1;
            }
        }
    }
}

/// `base`'s bytes, usually under a new key of the same length (re-sealed), so that the reader's
/// L1 rarely holds a copy already and most inputs take the whole read path (promotion into L1
/// included). Returns the bytes and the key they carry.
fn rekeyed(rng: &mut Rng, base: &Base) -> (Vec<u8>, String) {
    let mut b = base.bytes.clone();
    let skip = if base.key.starts_with(INCREMENTAL_KEY_PREFIX) {
        INCREMENTAL_KEY_PREFIX.len()
    } else {
        0
    };
    if base.key.len() < skip + 4 || rng.chance(25) {
        return (b, base.key.clone());
    }
    const ALNUM: &[u8] = b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789/_-";
    let at = FIXED_LEN + 4;
    for x in &mut b[at + skip..at + base.key.len()] {
        *x = *rng.pick(ALNUM);
    }
    reseal(&mut b);
    let key = String::from_utf8(b[at..at + base.key.len()].to_vec()).unwrap();
    (b, key)
}

/// One fuzz input: an unmutated base (returned as its index and the key it now carries), a
/// mutant (usually re-sealed), or noise. The last item says whether the input was re-sealed.
fn gen_envelope_input(rng: &mut Rng, pool: &[Base]) -> (Vec<u8>, Option<(usize, String)>, bool) {
    let i = rng.below(pool.len());
    let base = &pool[i];
    match rng.below(100) {
        0..=5 => {
            let (b, key) = rekeyed(rng, base);
            (b, Some((i, key)), false)
        }
        6 | 7 => (
            {
                let n = rng.below(128);
                rng.bytes(n)
            },
            None,
            false,
        ),
        8..=10 => {
            let mut b = b"STRC\x01".to_vec();
            b.push(rng.below(2) as u8);
            let n = rng.below(160);
            b.extend(rng.bytes(n));
            let sealed = rng.chance(80);
            if sealed {
                reseal(&mut b);
            }
            (b, None, sealed)
        }
        _ => {
            let (mut b, _) = rekeyed(rng, base);
            for _ in 0..*rng.pick(&[1usize, 1, 1, 2, 2, 3]) {
                let other = &pool[rng.below(pool.len())];
                mutate_envelope(rng, &mut b, &base.shape, other);
            }
            let sealed = rng.chance(90);
            if sealed {
                reseal(&mut b);
            }
            (b, None, sealed)
        }
    }
}

// ---------------------------------------------------------------------------------------------
// The envelope path: decoder, then the production read path.

fn new_cache(clock: &Arc<ManualClock>) -> Cache {
    let config = Options {
        // No I/O: the L2 connects on first use, and `finish_remote` never uses it.
        redis_url: Some("redis://127.0.0.1:1".to_owned()),
        l1_max_bytes: Some(16 << 20),
        ..Options::default()
    }
    .resolve()
    .unwrap();
    Cache::new(&config, clock.clone(), None, Some("fuzz".to_owned())).unwrap()
}

fn same_bits(a: f64, b: f64) -> bool {
    a.to_bits() == b.to_bits()
}

/// Runs one envelope through every stage. Returns the problems found and whether the cache
/// may be in a broken state (a stage that touches it panicked).
fn drive_envelope(
    cache: &Cache,
    bytes: &[u8],
    soft_tags: &[String],
    expect: Option<(&Base, &str)>,
) -> (Vec<Problem>, bool) {
    let mut problems = Vec::new();

    // 1. The decoder alone.
    let decoded = stage(&mut problems, "envelope::decode", || {
        let header = envelope::decode_header(bytes);
        if let Ok(h) = &header {
            let _ = h.verify();
            let range = h.payload_range();
            if range.start > range.end || range.end > bytes.len() {
                return Err(format!(
                    "payload range {range:?} outside a {} B input",
                    bytes.len()
                ));
            }
            for max in [0, h.payload_len.saturating_sub(1), 8 << 20, usize::MAX] {
                if let Ok(d) = h.clone().finish(max) {
                    if d.payload.len() > max || d.payload.len() != h.payload_len {
                        return Err(format!(
                            "finish({max}) gave {} B, header said {}",
                            d.payload.len(),
                            h.payload_len
                        ));
                    }
                }
            }
        }
        let full = envelope::decode(bytes, usize::MAX);
        if let (Ok(d), Err(e)) = (&full, &header) {
            return Err(format!(
                "decode accepted what decode_header rejected ({e}); key {:?}",
                d.key
            ));
        }
        if let Some((base, key)) = expect {
            let d = full
                .as_ref()
                .map_err(|e| format!("a valid envelope did not decode: {e}"))?;
            let numbers = [d.timestamp, d.server_ts, d.stale, d.revalidate, d.expire];
            if d.key != key
                || d.tags != base.tags
                || d.extra != base.extra
                || d.payload != base.payload
                || d.kind != Kind::of_key(&base.key)
                || !numbers
                    .iter()
                    .zip(&base.numbers)
                    .all(|(a, b)| same_bits(*a, *b))
            {
                return Err("a valid envelope decoded to something else".into());
            }
        }
        if header.is_ok() {
            reached("header parsed");
        }
        if full.is_ok() {
            reached("decoded");
        }
        Ok((header.ok().map(|h| h.key.to_owned()), full.ok()))
    });
    let (key, decoded) = decoded.unwrap_or((None, None));
    let key = key.unwrap_or_else(|| "k".to_owned());
    let mut poisoned = false;

    // 2. The production read path: the value as `GET` returned it, under its own key.
    let before = cache.store().peek(&key).is_some();
    let served = stage(&mut problems, "Cache::finish_remote", || {
        let look = cache.finish_remote(&key, soft_tags, Ok(Some(Bytes::copy_from_slice(bytes))));
        match look {
            Lookup::Hit { entry, .. } => {
                if *entry.key != *key {
                    return Err(format!(
                        "served the entry of key {:?} for key {key:?}",
                        &*entry.key
                    ));
                }
                reached(if before {
                    "served (an L1 copy)"
                } else {
                    "served from the envelope"
                });
                if !before {
                    match &decoded {
                        Some(d) if d.payload[..] == entry.value[..] => {}
                        Some(_) => {
                            return Err("served bytes that are not the envelope's payload".into())
                        }
                        None => {
                            return Err(
                                "served a value from an envelope that does not decode".into()
                            )
                        }
                    }
                }
                Ok(true)
            }
            Lookup::Miss => Ok(false),
        }
    });
    if served.is_none() && matches!(problems.last(), Some(Problem::Panic { .. })) {
        poisoned = true;
    }
    if let (Some((base, _)), Some(false)) = (expect, served) {
        if base.realistic && !before && soft_tags.is_empty() {
            problems.push(Problem::Broken {
                stage: "Cache::finish_remote",
                what: "a valid, fresh envelope was a miss".into(),
            });
        }
    }

    // 3. The same bytes under a key they do not carry: always a miss.
    let foreign = stage(
        &mut problems,
        "Cache::finish_remote (other key)",
        || match cache.finish_remote(
            FOREIGN_KEY,
            soft_tags,
            Ok(Some(Bytes::copy_from_slice(bytes))),
        ) {
            Lookup::Miss => Ok(()),
            Lookup::Hit { entry, .. } => Err(format!(
                "served an entry of key {:?} ({} B) for a key it does not carry",
                &*entry.key,
                entry.value.len()
            )),
        },
    );
    if foreign.is_none() && matches!(problems.last(), Some(Problem::Panic { .. })) {
        poisoned = true;
    }

    // 4. A later L1 read of the key (judges what was promoted).
    if !poisoned {
        let l1 = stage(&mut problems, "Cache::get_fresh", || {
            match cache.get_fresh(&key, soft_tags) {
                Lookup::Hit { entry, .. } if *entry.key != *key => {
                    Err(format!("L1 served key {:?} for {key:?}", &*entry.key))
                }
                _ => Ok(()),
            }
        });
        poisoned = l1.is_none() && matches!(problems.last(), Some(Problem::Panic { .. }));
    }
    (problems, poisoned)
}

fn envelope_alloc_bound(len: usize) -> usize {
    len.saturating_mul(ENVELOPE_ALLOC_RATIO)
        .saturating_add(ALLOC_SLACK)
}

/// Problems of one envelope on a fresh cache, allocations included (for minimising).
fn envelope_problems(clock: &Arc<ManualClock>, bytes: &[u8]) -> Vec<String> {
    let cache = new_cache(clock);
    alloc_reset();
    let (mut problems, _) = drive_envelope(&cache, bytes, &[], None);
    let (largest, _) = alloc_read();
    if largest > envelope_alloc_bound(bytes.len()) {
        problems.push(alloc_problem("envelope", largest, bytes.len()));
    }
    problems.iter().map(Problem::class).collect()
}

fn alloc_problem(stage: &'static str, largest: usize, len: usize) -> Problem {
    Problem::Broken {
        stage,
        what: format!("unbounded allocation: {largest} B at once for an input of {len} B"),
    }
}

fn describe_envelope(case: &Case) -> String {
    let b = &case.bytes;
    let mut out = format!("\n      hex: {}", hex(b));
    if b.len() >= FIXED_LEN {
        let numbers: Vec<String> = (0..5)
            .map(|i| {
                let at = FLOATS_AT + 8 * i;
                let v = f64::from_le_bytes(b[at..at + 8].try_into().unwrap());
                format!("{}={v:e}", FLOAT_NAMES[i])
            })
            .collect();
        out += &format!(
            "\n      flags={:#04x} kind={} {}",
            b[5],
            b[6],
            numbers.join(" ")
        );
        out += &format!(
            "\n      decode: {:?}",
            envelope::decode(b, 8 << 20).map(|d| (d.key, d.payload.len()))
        );
    }
    out
}

/// The smallest envelope with the numbers and kind of `bytes` (key `"k"`, or the incremental
/// prefix and `"k"`; no tags, empty raw payload), if `bytes` parses as an envelope at all.
fn smallest_like(bytes: &[u8]) -> Option<Vec<u8>> {
    let h = envelope::decode_header(bytes).ok()?;
    let key = if h.key.starts_with(INCREMENTAL_KEY_PREFIX) {
        format!("{INCREMENTAL_KEY_PREFIX}k")
    } else {
        "k".to_owned()
    };
    envelope::encode(
        &EnvelopeMeta::<String> {
            kind: h.kind,
            key: &key,
            tags: &[],
            timestamp: h.timestamp,
            server_ts: h.server_ts,
            stale: h.stale,
            revalidate: h.revalidate,
            expire: h.expire,
            extra: &[],
        },
        b"",
        Compression::DISABLED,
    )
    .ok()
}

/// For an envelope that still parses, first try the same numbers in the smallest envelope,
/// then remove bytes (re-sealing after each cut).
fn minimise_envelope(clock: &Arc<ManualClock>, class: &str, case: &Case) -> Case {
    let reproduces = |b: &[u8]| envelope_problems(clock, b).iter().any(|c| c == class);
    let mut best = case.clone();
    if let Some(small) = smallest_like(&case.bytes) {
        if small.len() < best.bytes.len() && reproduces(&small) {
            best.bytes = small;
        }
    }
    shrink(&best, 400, &mut |c: &Case| {
        if reproduces(&c.bytes) {
            return Some(c.clone());
        }
        let mut sealed = c.bytes.clone();
        reseal(&mut sealed);
        reproduces(&sealed).then(|| Case {
            bytes: sealed,
            ..Case::default()
        })
    })
}

#[test]
fn fuzz_envelope_decoder_and_read_path() {
    install_panic_hook();
    let seed = seed();
    let iters = iterations();
    println!(
        "fuzz envelope: seed {seed:#018x}, {iters} inputs (set STRATA_FUZZ_SEED / STRATA_FUZZ_ITERS)"
    );
    let mut rng = Rng::new(seed ^ 0x656e_7665_6c6f_7065);
    let clock = Arc::new(ManualClock::new(NOW_MS));
    let mut pool: Vec<Base> = (0..48).map(|_| gen_base(&mut rng)).collect();
    let mut cache = new_cache(&clock);
    let mut report = Report::new("envelope", seed);
    let soft_universe: Vec<String> = INVALIDATED_TAGS.iter().map(|t| (*t).to_owned()).collect();

    for index in 0..iters {
        if index % 32 == 31 {
            let at = rng.below(pool.len());
            pool[at] = gen_base(&mut rng);
        }
        if index % 50_000 == 49_999 {
            // Bounded state: a fresh L1 and tag state now and then.
            cache = new_cache(&clock);
        }
        if index % 500 == 0 {
            // Invalidate a tag now and then (as of now, or with an expiry later, odd ones too).
            let tag = [rng.pick(&INVALIDATED_TAGS).to_string()];
            let durations = match rng.below(4) {
                0 => None,
                1 => Some(Durations { expire: None }),
                2 => Some(Durations {
                    expire: Some(*rng.pick(&[0.0, 1.0, 3600.0])),
                }),
                _ => Some(Durations {
                    expire: Some(extreme(&mut rng)),
                }),
            };
            let mut problems = Vec::new();
            stage(&mut problems, "Cache::update_tags_local", || {
                cache.update_tags_local(&tag, durations);
                Ok(())
            });
            if !problems.is_empty() {
                report.record(index, &Case::default(), problems);
                cache = new_cache(&clock);
            }
        }
        let (bytes, base, sealed) = gen_envelope_input(&mut rng, &pool);
        let soft: Vec<String> = if base.is_none() && rng.chance(20) {
            vec![rng.pick(&soft_universe).clone()]
        } else {
            Vec::new()
        };
        report.inputs += 1;
        report.resealed += u64::from(sealed);
        report.unmutated += u64::from(base.is_some());

        let started = Instant::now();
        alloc_reset();
        let (mut problems, poisoned) = drive_envelope(
            &cache,
            &bytes,
            &soft,
            base.as_ref().map(|(i, key)| (&pool[*i], key.as_str())),
        );
        let (largest, peak) = alloc_read();
        report.time(index, bytes.len(), started);
        report.alloc(bytes.len(), largest, peak);
        if largest > envelope_alloc_bound(bytes.len()) {
            problems.push(alloc_problem("envelope", largest, bytes.len()));
        }
        if poisoned {
            cache = new_cache(&clock);
        }
        report.record(
            index,
            &Case {
                bytes,
                ..Case::default()
            },
            problems,
        );
    }

    conclude(
        &mut report,
        iters,
        &["decoded", "served from the envelope"],
        &|class, case| minimise_envelope(&clock, class, case),
        &describe_envelope,
    );
}

// ---------------------------------------------------------------------------------------------
// RESP: generation, mutation, feeding.

/// One line or bulk body of a reply stream, without its CRLF.
#[derive(Clone, Debug)]
enum Tok {
    Line(Vec<u8>),
    Body(Vec<u8>),
}

fn gen_text(rng: &mut Rng) -> String {
    gen_string(rng, 40).replace(['\r', '\n'], "")
}

fn gen_bulk(rng: &mut Rng, top: bool, envelopes: &[Vec<u8>]) -> Vec<u8> {
    match rng.below(20) {
        0..=11 => {
            let n = rng.below(48);
            rng.bytes(n)
        }
        12 | 13 => b"\r\n".repeat(rng.below(4)),
        14 | 15 => envelopes[rng.below(envelopes.len())].clone(),
        16 => {
            let n = DIRECT_MIN - 2 + rng.below(5);
            rng.bytes(n)
        }
        17 if top => {
            let n = rng.between(DIRECT_MIN, 3 * DIRECT_MIN);
            rng.bytes(n)
        }
        _ => {
            let n = rng.below(600);
            rng.bytes(n)
        }
    }
}

/// A valid reply (nesting at most `depth_left` more levels).
fn gen_reply(rng: &mut Rng, depth_left: usize, top: bool, envelopes: &[Vec<u8>]) -> Reply {
    match rng.below(if depth_left == 0 { 6 } else { 8 }) {
        0 => Reply::Simple(gen_text(rng)),
        1 => Reply::Error(format!("ERR {}", gen_text(rng))),
        2 => Reply::Int(match rng.below(4) {
            0 => i64::MIN,
            1 => i64::MAX,
            2 => -1,
            _ => rng.u64() as i64 >> rng.below(64),
        }),
        3 => Reply::Nil,
        4 | 5 => Reply::Bulk(Bytes::from(gen_bulk(rng, top, envelopes))),
        6 => gen_refresh_reply(rng),
        _ => Reply::Array(
            (0..rng.below(5))
                .map(|_| gen_reply(rng, depth_left - 1, false, envelopes))
                .collect(),
        ),
    }
}

/// A reply shaped like `lua/refresh.lua`'s, with odd tag stamps.
fn gen_refresh_reply(rng: &mut Rng) -> Reply {
    let s = |v: &str| Reply::Bulk(Bytes::copy_from_slice(v.as_bytes()));
    let mut items = vec![
        s(rng.pick::<&str>(&["I", "R", "I", "R", "X", ""])),
        s(rng.pick::<&str>(&["", "1795800000000-0", "e"])),
        s(rng.pick::<&str>(&["", "0-0", "1-1", "99999999999999999999-0"])),
        s(rng.pick::<&str>(&["0", "1", ""])),
    ];
    let stamps = [
        "",
        "1795800000000",
        "1795799999999.5",
        "1e300",
        "-1e300",
        "inf",
        "-inf",
        "NaN",
        "-0",
        "0",
        "1e22",
        "4294967294000",
        "abc",
        "1795800000000|",
    ];
    for _ in 0..rng.below(4) {
        let tag = if rng.chance(50) {
            (*rng.pick(&INVALIDATED_TAGS)).to_owned()
        } else {
            gen_text(rng)
        };
        items.push(s(&tag));
        let state = match rng.below(6) {
            0 => gen_text(rng),
            1 => format!("{}|{}", rng.pick(&stamps), rng.pick(&stamps)),
            _ => format!(
                "{}|{}|{}",
                rng.pick(&stamps),
                rng.pick(&stamps),
                rng.pick(&stamps)
            ),
        };
        items.push(s(&state));
    }
    if rng.chance(10) {
        items.push(Reply::Int(rng.u64() as i64));
    }
    if rng.chance(10) {
        items.truncate(rng.below(items.len() + 1));
    }
    Reply::Array(items)
}

fn to_tokens(reply: &Reply, out: &mut Vec<Tok>) {
    match reply {
        Reply::Nil => out.push(Tok::Line(b"$-1".to_vec())),
        Reply::Simple(s) => out.push(Tok::Line(format!("+{s}").into_bytes())),
        Reply::Error(s) => out.push(Tok::Line(format!("-{s}").into_bytes())),
        Reply::Int(i) => out.push(Tok::Line(format!(":{i}").into_bytes())),
        Reply::Bulk(b) => {
            out.push(Tok::Line(format!("${}", b.len()).into_bytes()));
            out.push(Tok::Body(b.to_vec()));
        }
        Reply::Array(items) => {
            out.push(Tok::Line(format!("*{}", items.len()).into_bytes()));
            for item in items {
                to_tokens(item, out);
            }
        }
    }
}

fn wire(tokens: &[Tok]) -> Vec<u8> {
    let mut out = Vec::new();
    for t in tokens {
        match t {
            Tok::Line(l) | Tok::Body(l) => out.extend_from_slice(l),
        }
        out.extend_from_slice(b"\r\n");
    }
    out
}

/// Lengths worth trying in a `$` or `*` header.
fn odd_length(rng: &mut Rng, current: Option<i64>, bound: usize) -> String {
    let c = current.unwrap_or(3);
    match rng.below(21) {
        18 => bound.to_string(),
        19 => (bound + 1).to_string(),
        20 => (bound - 1).to_string(),
        0 => "-1".into(),
        1 => "-2".into(),
        2 => i64::MIN.to_string(),
        3 => i64::MAX.to_string(),
        4 => u64::MAX.to_string(),
        5 => "99999999999999999999".into(),
        6 => c.wrapping_add(1).to_string(),
        7 => c.wrapping_sub(1).to_string(),
        8 => (DIRECT_MIN - 1).to_string(),
        9 => DIRECT_MIN.to_string(),
        10 => (64usize << 20).to_string(),
        11 => ((64usize << 20) + 1).to_string(),
        12 => (512usize << 20).to_string(),
        13 => ((512usize << 20) + 1).to_string(),
        14 => "".into(),
        15 => rng
            .pick(&["-0", "+5", " 5", "5 ", "0x10", "1e3", "٣"])
            .to_string(),
        16 => (1usize << 30).to_string(),
        _ => (rng.u64() >> rng.below(64)).to_string(),
    }
}

/// One structure-aware mutation of a reply stream.
fn mutate_tokens(rng: &mut Rng, tokens: &mut Vec<Tok>, bound: usize) {
    if tokens.is_empty() {
        tokens.push(Tok::Line(Vec::new()));
        return;
    }
    let i = rng.below(tokens.len());
    match rng.below(12) {
        // An empty header line.
        0 | 1 => tokens.insert(i, Tok::Line(Vec::new())),
        // A length changed (negative, huge, off by one, not a number).
        2..=4 => {
            let Tok::Line(l) = &tokens[i] else {
                tokens[i] = Tok::Line(format!("${}", odd_length(rng, None, bound)).into_bytes());
                return;
            };
            let kind = match l.first() {
                Some(b'$' | b'*') => l[0],
                _ => *rng.pick(b"$*"),
            };
            let current = std::str::from_utf8(l.get(1..).unwrap_or_default())
                .ok()
                .and_then(|s| s.parse().ok());
            let mut line = vec![kind];
            line.extend(odd_length(rng, current, bound).into_bytes());
            tokens[i] = Tok::Line(line);
        }
        // An unknown type byte (RESP3 ones included).
        5 => {
            let byte = *rng.pick(b"%~_#,(=>|!\0\x7f ?\r\n");
            match &mut tokens[i] {
                Tok::Line(l) if !l.is_empty() => l[0] = byte,
                t => *t = Tok::Line(vec![byte]),
            }
        }
        // A body cut, stretched or dropped.
        6 => match &mut tokens[i] {
            Tok::Body(b) => match rng.below(3) {
                0 => b.truncate(rng.below(b.len() + 1)),
                1 => b.extend({
                    let n = rng.between(1, 4);
                    rng.bytes(n)
                }),
                _ => {
                    tokens.remove(i);
                }
            },
            Tok::Line(l) => l.extend_from_slice(b"\r"),
        },
        // Deep nesting in front.
        7 => {
            for _ in 0..rng.between(5, 20) {
                tokens.insert(i, Tok::Line(b"*1".to_vec()));
            }
        }
        // A token removed, duplicated or swapped.
        8 => {
            tokens.remove(i);
        }
        9 => {
            let t = tokens[i].clone();
            tokens.insert(i, t);
        }
        10 => {
            let j = rng.below(tokens.len());
            tokens.swap(i, j);
        }
        // A long header line (over the reader's 64 KiB limit, sometimes).
        _ => {
            let n = if rng.chance(10) {
                70_000
            } else {
                rng.below(300)
            };
            let mut l = vec![*rng.pick(b"+-:")];
            l.extend(std::iter::repeat_n(b'7', n));
            tokens.insert(i, Tok::Line(l));
        }
    }
}

/// A reply stream, the replies it is made of if it was not mutated, and whether it was.
fn gen_resp_input(
    rng: &mut Rng,
    envelopes: &[Vec<u8>],
    bound: usize,
) -> (Vec<u8>, Option<Vec<Reply>>) {
    if rng.chance(4) {
        // Noise, biased towards the protocol's own bytes.
        let n = rng.below(200);
        let alphabet = b"+-:$*\r\n0123456789-abc";
        let bytes = (0..n)
            .map(|_| {
                if rng.chance(70) {
                    *rng.pick(alphabet)
                } else {
                    rng.u64() as u8
                }
            })
            .collect();
        return (bytes, None);
    }
    let replies: Vec<Reply> = (0..rng.between(1, 4))
        .map(|_| gen_reply(rng, 5, true, envelopes))
        .collect();
    let mut tokens = Vec::new();
    for r in &replies {
        to_tokens(r, &mut tokens);
    }
    if rng.chance(15) {
        return (wire(&tokens), Some(replies));
    }
    for _ in 0..*rng.pick(&[1usize, 1, 1, 2, 3]) {
        mutate_tokens(rng, &mut tokens, bound);
    }
    let mut bytes = wire(&tokens);
    // Byte-level damage on top, sometimes.
    match rng.below(8) {
        0 => {
            let cut = rng.below(bytes.len() + 1);
            bytes.truncate(cut);
        }
        1 if !bytes.is_empty() => {
            let i = rng.below(bytes.len());
            bytes[i] ^= 1 << rng.below(8);
        }
        2 => {
            let at = rng.below(bytes.len() + 1);
            bytes.splice(at..at, b"\r\n".iter().copied());
        }
        _ => {}
    }
    (bytes, None)
}

fn gen_splits(rng: &mut Rng, len: usize) -> Vec<usize> {
    match rng.below(10) {
        0..=2 => Vec::new(),
        3 if len <= 4096 => (1..len).collect(),
        _ => {
            let mut s: Vec<usize> = (0..rng.between(1, 8))
                .map(|_| rng.below(len + 1))
                .filter(|&s| s > 0 && s < len)
                .collect();
            s.sort_unstable();
            s.dedup();
            s
        }
    }
}

fn reply_shape(r: &Reply) -> String {
    match r {
        Reply::Nil => "nil".into(),
        Reply::Bulk(b) => format!("bulk({})", b.len()),
        Reply::Simple(_) => "simple".into(),
        Reply::Error(_) => "error".into(),
        Reply::Int(_) => "int".into(),
        Reply::Array(items) => format!("array({})", items.len()),
    }
}

/// Feeds `case` to a new reader in its chunks, draining after each; every reply goes on to the
/// refresh parser and, for bulk replies, the envelope read path of `cache`.
fn drive_resp(cache: &Cache, case: &Case, expect: Option<&[Reply]>) -> (Vec<Problem>, bool) {
    let mut problems = Vec::new();
    let replies = stage(&mut problems, "resp::Reader", || {
        let mut reader = Reader::with_max_reply(case.reader_max);
        let mut replies = Vec::new();
        let mut dropped = None;
        let mut from = 0;
        let ends = case.splits.iter().copied().chain([case.bytes.len()]);
        'feed: for end in ends {
            reader.feed(&case.bytes[from..end]);
            from = end;
            loop {
                match reader.next_reply() {
                    Ok(Some(r)) => {
                        reached("replies");
                        replies.push(r);
                        if replies.len() > 1 << 20 {
                            return Err("more replies than the input has bytes".into());
                        }
                    }
                    Ok(None) => break,
                    Err(e) => {
                        // The connection would be dropped here.
                        reached("protocol errors");
                        dropped = Some(e);
                        break 'feed;
                    }
                }
            }
        }
        if let Some(want) = expect {
            if let Some(e) = dropped {
                return Err(format!("a valid reply stream was rejected: {e}"));
            }
            if replies != want {
                let got: Vec<String> = replies.iter().map(reply_shape).collect();
                let wanted: Vec<String> = want.iter().map(reply_shape).collect();
                return Err(format!(
                    "a valid reply stream, split, read back as {got:?} instead of {wanted:?}"
                ));
            }
        }
        Ok(replies)
    })
    .unwrap_or_default();

    let mut poisoned = false;
    for reply in replies {
        let bulk = match &reply {
            Reply::Bulk(b) => Some(b.clone()),
            _ => None,
        };
        let applied = stage(&mut problems, "Cache::apply_refresh_reply", || {
            if cache.apply_refresh_reply(Ok(reply)).is_ok() {
                reached("refresh replies applied");
                // Judge an entry carrying the tags a refresh may have touched.
                let meta = EnvelopeMeta {
                    kind: Kind::USE_CACHE,
                    key: "refresh-probe",
                    tags: &INVALIDATED_TAGS[..],
                    timestamp: NOW_MS - 1000.0,
                    server_ts: NOW_MS - 1000.0,
                    stale: 300.0,
                    revalidate: 900.0,
                    expire: 3600.0,
                    extra: &[],
                };
                let probe = envelope::encode(&meta, b"probe", Compression::DISABLED)
                    .map_err(|e| e.to_string())?;
                let _ = cache.finish_remote(
                    "refresh-probe",
                    &INVALIDATED_TAGS[..],
                    Ok(Some(Bytes::from(probe))),
                );
                let _ = cache.get_expiration(&INVALIDATED_TAGS.map(String::from));
            }
            Ok(())
        });
        poisoned |= applied.is_none();
        if let Some(b) = bulk {
            // The event-loop GET: a bulk reply is an envelope (or garbage) for its key.
            let key = envelope::decode_header(&b)
                .map(|h| h.key.to_owned())
                .unwrap_or_else(|_| "k".to_owned());
            if key != "k" {
                reached("bulk replies read as envelopes");
            }
            let read = stage(
                &mut problems,
                "Cache::finish_remote (RESP bulk)",
                || match cache.finish_remote(&key, &[] as &[String], Ok(Some(b))) {
                    Lookup::Hit { entry, .. } if *entry.key != *key => {
                        Err(format!("served key {:?} for {key:?}", &*entry.key))
                    }
                    _ => Ok(()),
                },
            );
            poisoned |= read.is_none();
        }
    }
    (problems, poisoned)
}

fn resp_problems(clock: &Arc<ManualClock>, case: &Case) -> Vec<String> {
    let cache = new_cache(clock);
    alloc_reset();
    let (mut problems, _) = drive_resp(&cache, case, None);
    let (largest, _) = alloc_read();
    if largest > case.reader_max.saturating_add(ALLOC_SLACK) {
        problems.push(alloc_problem("resp", largest, case.bytes.len()));
    }
    problems.iter().map(Problem::class).collect()
}

fn describe_resp(case: &Case) -> String {
    let shown = if case.bytes.len() <= 400 {
        format!("b\"{}\"", case.bytes.escape_ascii())
    } else {
        format!(
            "b\"{}\"…({} B)…b\"{}\"",
            case.bytes[..200].escape_ascii(),
            case.bytes.len() - 300,
            case.bytes[case.bytes.len() - 100..].escape_ascii()
        )
    };
    let feeds = if case.splits.is_empty() {
        "fed at once".to_owned()
    } else if case.splits.len() + 1 == case.bytes.len() {
        "fed byte by byte".to_owned()
    } else {
        format!("fed in pieces split at {:?}", case.splits)
    };
    format!(
        "{shown} ({feeds}, Reader::with_max_reply({}))\n      hex: {}",
        case.reader_max,
        hex(&case.bytes)
    )
}

/// Prefers one feed, then byte by byte, then the original splits; then removes bytes.
fn minimise_resp(clock: &Arc<ManualClock>, class: &str, case: &Case) -> Case {
    let reproduces = |c: &Case| resp_problems(clock, c).iter().any(|k| k == class);
    let whole = Case {
        splits: Vec::new(),
        ..case.clone()
    };
    let bytewise = Case {
        splits: (1..case.bytes.len()).collect(),
        ..case.clone()
    };
    let start = if reproduces(&whole) {
        whole
    } else if case.bytes.len() <= 4096 && reproduces(&bytewise) {
        bytewise
    } else {
        case.clone()
    };
    // A bulk reply holding an envelope: the smallest envelope with its numbers, alone.
    let mut start = start;
    let mut replies = Vec::new();
    stage(&mut Vec::new(), "resp::Reader", || {
        let mut reader = Reader::with_max_reply(start.reader_max);
        reader.feed(&start.bytes);
        while let Ok(Some(reply)) = reader.next_reply() {
            replies.push(reply);
        }
        Ok(())
    });
    for reply in replies {
        let Reply::Bulk(b) = reply else { continue };
        if let Some(small) = smallest_like(&b) {
            let mut bytes = format!("${}\r\n", small.len()).into_bytes();
            bytes.extend_from_slice(&small);
            bytes.extend_from_slice(b"\r\n");
            let candidate = Case {
                bytes,
                splits: Vec::new(),
                reader_max: start.reader_max,
            };
            if candidate.bytes.len() < start.bytes.len() && reproduces(&candidate) {
                start = candidate;
                break;
            }
        }
    }
    let bytewise_mode = !start.splits.is_empty() && start.splits.len() + 1 == start.bytes.len();
    shrink(&start, 600, &mut |c: &Case| {
        let c = if bytewise_mode {
            Case {
                splits: (1..c.bytes.len()).collect(),
                ..c.clone()
            }
        } else {
            c.clone()
        };
        reproduces(&c).then_some(c)
    })
}

#[test]
fn fuzz_resp_reader() {
    install_panic_hook();
    let seed = seed();
    let iters = iterations();
    println!(
        "fuzz resp: seed {seed:#018x}, {iters} inputs (set STRATA_FUZZ_SEED / STRATA_FUZZ_ITERS)"
    );
    let mut rng = Rng::new(seed ^ 0x7265_7370_7265_6164);
    let clock = Arc::new(ManualClock::new(NOW_MS));
    let mut cache = new_cache(&clock);
    let envelopes: Vec<Vec<u8>> = (0..16)
        .map(|_| {
            let base = gen_base(&mut rng);
            let mut b = base.bytes;
            if rng.chance(50) {
                let other = gen_base(&mut rng);
                mutate_envelope(&mut rng, &mut b, &base.shape, &other);
                reseal(&mut b);
            }
            b
        })
        .filter(|b| b.len() < 20_000)
        .collect();
    let envelopes = if envelopes.is_empty() {
        vec![Vec::new()]
    } else {
        envelopes
    };
    let mut report = Report::new("resp", seed);

    for index in 0..iters {
        if index % 50_000 == 49_999 {
            cache = new_cache(&clock);
        }
        // The event loop's reader (bounded by the largest envelope L2 writes) most of the time,
        // the default one (the handshake's) otherwise.
        let reader_max = if rng.chance(70) {
            cache.max_reply_bytes()
        } else {
            DEFAULT_MAX_REPLY
        };
        let (bytes, expect) = gen_resp_input(&mut rng, &envelopes, reader_max);
        let splits = gen_splits(&mut rng, bytes.len());
        let case = Case {
            bytes,
            splits,
            reader_max,
        };
        report.inputs += 1;
        report.unmutated += u64::from(expect.is_some());
        let started = Instant::now();
        alloc_reset();
        let (mut problems, poisoned) = drive_resp(&cache, &case, expect.as_deref());
        let (largest, peak) = alloc_read();
        report.time(index, case.bytes.len(), started);
        report.alloc(case.bytes.len(), largest, peak);
        if largest > reader_max.saturating_add(ALLOC_SLACK) {
            problems.push(alloc_problem("resp", largest, case.bytes.len()));
        }
        if poisoned {
            cache = new_cache(&clock);
        }
        report.record(index, &case, problems);
    }

    conclude(
        &mut report,
        iters,
        &["replies", "bulk replies read as envelopes"],
        &|class, case| minimise_resp(&clock, class, case),
        &describe_resp,
    );
}

/// Ends a run: fails with the report when it found anything, or when a run of at least
/// [`DEFAULT_ITERS`] inputs never reached one of `required` (a generator that stopped making
/// such inputs would otherwise pass, fuzzing nothing behind the first check).
fn conclude(
    report: &mut Report,
    iters: u64,
    required: &[&str],
    minimise: &dyn Fn(&str, &Case) -> Case,
    describe: &dyn Fn(&Case) -> String,
) {
    let mut failure = report.finish(minimise, describe);
    let never: Vec<&str> = required
        .iter()
        .copied()
        .filter(|what| REACHED.with(|r| r.borrow().get(what).copied().unwrap_or(0)) == 0)
        .collect();
    if iters >= DEFAULT_ITERS && !never.is_empty() {
        let message = failure.get_or_insert_with(String::new);
        *message += &format!("\nnever reached: {}", never.join(", "));
    }
    if let Some(message) = failure {
        panic!("{message}");
    }
}

// ---------------------------------------------------------------------------------------------
// The crashes issue 11 reports, as fixed inputs: these fail with a one-line reason while the
// bugs are there, whatever the random run finds.

/// A stored value whose `expire` (or another number) is 1e300 (checksum valid) must be a miss,
/// not a panic.
#[test]
fn known_crash_expire_1e300_is_a_miss() {
    install_panic_hook();
    let clock = Arc::new(ManualClock::new(NOW_MS));
    let mut failures = Vec::new();
    for field in 0..5 {
        for value in [1e300, -1e300, 1e22, f64::MAX] {
            let mut numbers = [NOW_MS - 1000.0, NOW_MS - 1000.0, 300.0, 900.0, 3600.0];
            numbers[field] = value;
            let meta = EnvelopeMeta::<String> {
                kind: Kind::USE_CACHE,
                key: "k",
                tags: &[],
                timestamp: numbers[0],
                server_ts: numbers[1],
                stale: numbers[2],
                revalidate: numbers[3],
                expire: numbers[4],
                extra: &[],
            };
            let bytes = envelope::encode(&meta, b"value", Compression::DISABLED).unwrap();
            let cache = new_cache(&clock);
            let mut problems = Vec::new();
            stage(&mut problems, "Cache::finish_remote", || {
                // Out of range whatever the checksum says: a miss, never served. Except the
                // writer's own `timestamp`: a reader on another clock never uses it (it takes
                // the Redis stamp), so the entry may be served, with a valid timestamp.
                match cache.finish_remote("k", &[] as &[String], Ok(Some(Bytes::from(bytes)))) {
                    Lookup::Miss => Ok(()),
                    Lookup::Hit { entry, .. }
                        if FLOAT_NAMES[field] == "timestamp"
                            && strata_core::clock::is_valid_timestamp_ms(entry.meta.timestamp) =>
                    {
                        Ok(())
                    }
                    Lookup::Hit { entry, .. } => Err(format!("served {:?}", entry.meta)),
                }
            });
            if let Some(p) = problems.first() {
                failures.push(format!("{} = {value:e}: {}", FLOAT_NAMES[field], p.class()));
            }
        }
    }
    assert!(
        failures.is_empty(),
        "stored envelopes (checksum valid) that panic the read path instead of being a miss:\n  {}",
        failures.join("\n  ")
    );
}

/// A reply stream that starts with an empty header line must be a protocol error, not a panic.
#[test]
fn known_crash_resp_empty_header_line_is_an_error() {
    install_panic_hook();
    for input in [&b"\r\n"[..], b"+OK\r\n\r\n", b"*2\r\n:1\r\n\r\n"] {
        let mut problems = Vec::new();
        let result = stage(&mut problems, "resp::Reader", || {
            let mut r = Reader::new();
            r.feed(input);
            loop {
                match r.next_reply() {
                    Ok(Some(_)) => {}
                    Ok(None) => return Ok(false),
                    Err(_) => return Ok(true),
                }
            }
        });
        if let Some(p) = problems.first() {
            panic!(
                "RESP input {:?}: {}",
                input.escape_ascii().to_string(),
                p.class()
            );
        }
        assert_eq!(
            result,
            Some(true),
            "{:?} must be a protocol error",
            input.escape_ascii().to_string()
        );
    }
}
