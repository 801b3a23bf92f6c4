//! A/B, same run: our hand-written RESP2 codec (`strata_core::resp`) against the RESP2 codec of
//! the `redis-protocol` crate. Each case has an `ours` and a `redis_protocol` variant doing the
//! same work and checking the same result (lengths and bytes of what was decoded or encoded).
//!
//! Conditions shared by both sides:
//! * the reader (ours: a `Reader`; theirs: a `BytesMut`) lives across iterations, as it lives
//!   as long as the connection; copying the wire bytes into it (what `read(2)` does) is timed;
//! * GET: the decoded value is kept until the next reply has been decoded (a value stored in L1
//!   outlives the read), so a zero-copy frame still holds its part of the `BytesMut` and the next
//!   reply needs memory elsewhere; the `_dropped` variants drop it before the next read instead;
//! * arrays: the reply is walked (every string's length, the last pair's bytes), then dropped;
//! * "in reads" feeds the wire in 64 KiB chunks and asks for a reply after each one.
#![allow(clippy::unwrap_used)]

use ::redis_protocol::resp2::decode::decode_bytes_mut;
use ::redis_protocol::resp2::encode::{extend_encode, extend_encode_borrowed};
use ::redis_protocol::resp2::types::{BorrowedFrame, BytesFrame};
use bytes::{Bytes, BytesMut};
use divan::{black_box, Bencher};
use strata_core::resp::{encode_command, Reader, Reply};

fn main() {
    divan::main();
}

/// The size of one socket read.
const READ: usize = 64 * 1024;
/// The length of each string in an array reply.
const ITEM: usize = 40;
const KEY: &[u8] = b"strata:v1:cache:/blog/[slug]/page:en:12345";

fn byte(i: usize) -> u8 {
    (i % 251) as u8
}

fn value(size: usize) -> Vec<u8> {
    (0..size).map(byte).collect()
}

/// `$<size>\r\n<value>\r\n`: a GET reply.
fn bulk_wire(size: usize) -> Vec<u8> {
    let mut wire = format!("${size}\r\n").into_bytes();
    wire.extend_from_slice(&value(size));
    wire.extend_from_slice(b"\r\n");
    wire
}

fn check_value(v: &[u8], size: usize) {
    assert_eq!(v.len(), size);
    assert_eq!(v[0], byte(0));
    assert_eq!(v[size / 2], byte(size / 2));
    assert_eq!(v[size - 1], byte(size - 1));
}

fn item(i: usize) -> (String, String) {
    (format!("{i:0>ITEM$}"), format!("{:x>ITEM$}", i * 7))
}

/// `*n` arrays of two 40-byte bulk strings: a log read.
fn array_wire(n: usize) -> Vec<u8> {
    let mut wire = format!("*{n}\r\n").into_bytes();
    for i in 0..n {
        let (a, b) = item(i);
        wire.extend_from_slice(format!("*2\r\n${ITEM}\r\n{a}\r\n${ITEM}\r\n{b}\r\n").as_bytes());
    }
    wire
}

fn ours_bulk(reply: Option<Reply>, size: usize) -> Bytes {
    match reply {
        Some(Reply::Bulk(b)) => {
            check_value(&b, size);
            b
        }
        other => panic!("{other:?}"),
    }
}

fn theirs_bulk(frame: Option<BytesFrame>, size: usize) -> Bytes {
    match frame {
        Some(BytesFrame::BulkString(b)) => {
            check_value(&b, size);
            b
        }
        other => panic!("{other:?}"),
    }
}

/// Walks every string of the array reply (the caller would), checks lengths and the last pair
/// (`want`, formatted before timing).
fn check_pairs<'a>(
    pairs: impl ExactSizeIterator<Item = [&'a [u8]; 2]>,
    n: usize,
    want: &(String, String),
) {
    assert_eq!(pairs.len(), n);
    let mut total = 0;
    let mut last = None;
    for [a, b] in pairs {
        total += a.len() + b.len();
        last = Some((a, b));
    }
    assert_eq!(total, n * 2 * ITEM);
    let (a, b) = last.unwrap();
    assert_eq!((a, b), (want.0.as_bytes(), want.1.as_bytes()));
}

fn ours_array(reply: Option<Reply>, n: usize, want: &(String, String)) -> Reply {
    let Some(reply) = reply else {
        panic!("no reply")
    };
    let Reply::Array(items) = &reply else {
        panic!("{reply:?}")
    };
    check_pairs(
        items.iter().map(|item| match item {
            Reply::Array(pair) => match pair.as_slice() {
                [Reply::Bulk(a), Reply::Bulk(b)] => [&a[..], &b[..]],
                other => panic!("{other:?}"),
            },
            other => panic!("{other:?}"),
        }),
        n,
        want,
    );
    reply
}

fn theirs_array(frame: Option<BytesFrame>, n: usize, want: &(String, String)) -> BytesFrame {
    let Some(frame) = frame else {
        panic!("no reply")
    };
    let BytesFrame::Array(items) = &frame else {
        panic!("{frame:?}")
    };
    check_pairs(
        items.iter().map(|item| match item {
            BytesFrame::Array(pair) => match pair.as_slice() {
                [BytesFrame::BulkString(a), BytesFrame::BulkString(b)] => [&a[..], &b[..]],
                other => panic!("{other:?}"),
            },
            other => panic!("{other:?}"),
        }),
        n,
        want,
    );
    frame
}

/// Ours: the whole wire fed at once, then one `next_reply`.
fn ours_whole(r: &mut Reader, wire: &[u8]) -> Option<Reply> {
    r.feed(black_box(wire));
    r.next_reply().unwrap()
}

/// Ours: the wire in 64 KiB reads, `next_reply` after each; exactly one reply at the end.
fn ours_in_reads(r: &mut Reader, wire: &[u8]) -> Option<Reply> {
    let mut got = None;
    for chunk in wire.chunks(READ) {
        r.feed(black_box(chunk));
        if let Some(reply) = r.next_reply().unwrap() {
            assert!(got.is_none());
            got = Some(reply);
        }
    }
    got
}

/// Theirs: the whole wire appended to the `BytesMut`, then one decode (zero-copy frame).
fn theirs_whole(buf: &mut BytesMut, wire: &[u8]) -> Option<BytesFrame> {
    buf.extend_from_slice(black_box(wire));
    decode_bytes_mut(buf).unwrap().map(|(frame, _, _)| frame)
}

/// Theirs: the wire appended in 64 KiB reads, a decode after each (it restarts from the start of
/// the reply every time: the decoder keeps no state between calls).
fn theirs_in_reads(buf: &mut BytesMut, wire: &[u8]) -> Option<BytesFrame> {
    let mut got = None;
    for chunk in wire.chunks(READ) {
        buf.extend_from_slice(black_box(chunk));
        if let Some((frame, _, _)) = decode_bytes_mut(buf).unwrap() {
            assert!(got.is_none());
            got = Some(frame);
        }
    }
    got
}

/// Warms the reader up (first allocations, a correctness check) once, then times `f`.
fn bench(bencher: Bencher, mut f: impl FnMut() -> usize) {
    f();
    bencher.bench_local(f);
}

/// GET: the value is kept until the next reply has been decoded (then dropped), as a value
/// stored in L1 outlives the read; `_dropped`: the value is dropped before the next read.
macro_rules! get_benches {
    ($ours:ident, $theirs:ident) => {
        #[divan::bench(args = [1024, 16 * 1024, 256 * 1024, 1024 * 1024])]
        fn ours(bencher: Bencher, size: usize) {
            let wire = bulk_wire(size);
            let mut r = Reader::new();
            let mut kept = None;
            bench(bencher, || {
                let v = ours_bulk($ours(&mut r, &wire), size);
                let n = v.len();
                let _previous = kept.replace(v);
                n
            });
        }

        #[divan::bench(args = [1024, 16 * 1024, 256 * 1024, 1024 * 1024])]
        fn redis_protocol(bencher: Bencher, size: usize) {
            let wire = bulk_wire(size);
            let mut buf = BytesMut::new();
            let mut kept = None;
            bench(bencher, || {
                let v = theirs_bulk($theirs(&mut buf, &wire), size);
                let n = v.len();
                let _previous = kept.replace(v);
                n
            });
        }

        #[divan::bench(args = [1024, 16 * 1024, 256 * 1024, 1024 * 1024])]
        fn ours_dropped(bencher: Bencher, size: usize) {
            let wire = bulk_wire(size);
            let mut r = Reader::new();
            bench(bencher, || ours_bulk($ours(&mut r, &wire), size).len());
        }

        #[divan::bench(args = [1024, 16 * 1024, 256 * 1024, 1024 * 1024])]
        fn redis_protocol_dropped(bencher: Bencher, size: usize) {
            let wire = bulk_wire(size);
            let mut buf = BytesMut::new();
            bench(bencher, || {
                theirs_bulk($theirs(&mut buf, &wire), size).len()
            });
        }
    };
}

/// 1. One GET reply (a bulk string), the whole reply in one buffer.
mod get_whole {
    use super::*;
    get_benches!(ours_whole, theirs_whole);
}

/// 2. The same GET replies arriving in 64 KiB reads (1 KiB and 16 KiB fit in one read).
mod get_in_reads {
    use super::*;
    get_benches!(ours_in_reads, theirs_in_reads);
}

/// Arrays: the reply is walked, then dropped before the next read (a log read is turned into
/// tag state; its strings are not kept).
macro_rules! array_benches {
    ($ours:ident, $theirs:ident) => {
        #[divan::bench(args = [16, 512, 10_000])]
        fn ours(bencher: Bencher, n: usize) {
            let wire = array_wire(n);
            let want = item(n - 1);
            let mut r = Reader::new();
            bench(bencher, || {
                ours_array($ours(&mut r, &wire), n, &want);
                n
            });
        }

        #[divan::bench(args = [16, 512, 10_000])]
        fn redis_protocol(bencher: Bencher, n: usize) {
            let wire = array_wire(n);
            let want = item(n - 1);
            let mut buf = BytesMut::new();
            bench(bencher, || {
                theirs_array($theirs(&mut buf, &wire), n, &want);
                n
            });
        }
    };
}

/// 3a. An array of `n` arrays of two 40-byte strings (a log read), in one buffer.
mod array_whole {
    use super::*;
    array_benches!(ours_whole, theirs_whole);
}

/// 3b. The same array replies in 64 KiB reads (16 and 512 items fit in one read: 1.6 KB and
/// 50 KB; 10 000 items are 980 KB, 15 reads).
mod array_in_reads {
    use super::*;
    array_benches!(ours_in_reads, theirs_in_reads);
}

/// 4. Encoding `SET <key> <value> PX 3600000` into a reused buffer.
mod encode_set {
    use super::*;

    /// What both encoders must produce (ours is the reference; each variant checks against it
    /// once before timing and checks length and tail on every iteration).
    fn expected(value: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        encode_command(&mut out, &[b"SET", KEY, value, b"PX", b"3600000"]);
        out
    }

    fn check(out: &[u8], want: &[u8]) {
        assert_eq!(out.len(), want.len());
        assert_eq!(out[out.len() - 40..], want[want.len() - 40..]);
    }

    #[divan::bench(args = [1024, 16 * 1024, 1024 * 1024])]
    fn ours(bencher: Bencher, size: usize) {
        let value = value(size);
        let want = expected(&value);
        let mut out = Vec::new();
        let run = |out: &mut Vec<u8>| {
            out.clear();
            encode_command(out, &[b"SET", KEY, black_box(&value), b"PX", b"3600000"]);
            check(out, &want);
            out.len()
        };
        run(&mut out);
        assert_eq!(out, want);
        bench(bencher, || run(&mut out));
    }

    /// The owned-frame API (`BytesFrame`): the value is already a `Bytes` (a refcount clone
    /// here, no copy); the frame's `Vec` is built per command.
    #[divan::bench(args = [1024, 16 * 1024, 1024 * 1024])]
    fn redis_protocol(bencher: Bencher, size: usize) {
        let value = Bytes::from(value(size));
        let want = expected(&value);
        let mut out = BytesMut::new();
        let run = |out: &mut BytesMut| {
            out.clear();
            let frame = BytesFrame::Array(vec![
                BytesFrame::BulkString(Bytes::from_static(b"SET")),
                BytesFrame::BulkString(Bytes::from_static(KEY)),
                BytesFrame::BulkString(black_box(&value).clone()),
                BytesFrame::BulkString(Bytes::from_static(b"PX")),
                BytesFrame::BulkString(Bytes::from_static(b"3600000")),
            ]);
            extend_encode(out, &frame, false).unwrap();
            check(out, &want);
            out.len()
        };
        run(&mut out);
        assert_eq!(out[..], want[..]);
        bench(bencher, || run(&mut out));
    }

    /// The borrowed-frame API (`BorrowedFrame`): no allocation per command, as ours.
    #[divan::bench(args = [1024, 16 * 1024, 1024 * 1024])]
    fn redis_protocol_borrowed(bencher: Bencher, size: usize) {
        let value = value(size);
        let want = expected(&value);
        let mut out = BytesMut::new();
        let run = |out: &mut BytesMut| {
            out.clear();
            let args = [
                BorrowedFrame::BulkString(b"SET"),
                BorrowedFrame::BulkString(KEY),
                BorrowedFrame::BulkString(black_box(&value)),
                BorrowedFrame::BulkString(b"PX"),
                BorrowedFrame::BulkString(b"3600000"),
            ];
            extend_encode_borrowed(out, &BorrowedFrame::Array(&args), false).unwrap();
            check(out, &want);
            out.len()
        };
        run(&mut out);
        assert_eq!(out[..], want[..]);
        bench(bencher, || run(&mut out));
    }
}
