//! A minimal RESP2 codec, the one both transports read replies with (the event loop's,
//! `src/uv/`, and the tokio one's own connection, `l2/pipe.rs`): command encoding and an
//! incremental reply reader that the caller feeds as bytes arrive.
//!
//! Why not a library's parser: it must take bytes as they come and never wait (the event-loop
//! path reads on Node's own thread, in the poll callback libuv runs when the socket is
//! readable), bound what it buffers before it buffers it, and resume its scan across reads (a
//! measured comparison with the `redis-protocol` crate is in `bench/RESULTS.md`). Two
//! properties matter for speed:
//!
//! * **A large bulk reply is read straight into its final allocation.** Once the header of a
//!   bulk string of [`DIRECT_MIN`] bytes or more has arrived, the reader allocates exactly its
//!   length and hands that memory to the next `read(2)`; the finished value is a [`Bytes`] over
//!   it. One copy (kernel → value) instead of read buffer → concatenation → value.
//! * **A small value gets its own exact allocation** (one short copy out of the read buffer), so
//!   a 1 KB entry kept in L1 does not pin the 64 KB buffer it was read into.

use std::mem::MaybeUninit;

use bytes::Bytes;

/// Bulk strings at least this long are read directly into their own allocation.
pub const DIRECT_MIN: usize = 32 * 1024;
/// The read buffer's size for everything else.
const READ_CHUNK: usize = 64 * 1024;
/// Longest header line accepted (`$<len>`, `-ERR …`); anything longer is a protocol error.
const MAX_LINE: usize = 64 * 1024;
/// Nested arrays deeper than this are a protocol error (scripts return shallow arrays).
const MAX_DEPTH: usize = 8;
/// The default of [`Reader::with_max_reply`]: the largest reply a reader made by
/// [`Reader::new`] accepts.
pub const DEFAULT_MAX_REPLY: usize = 64 * 1024 * 1024;

/// One reply.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reply {
    /// `$-1` or `*-1`.
    Nil,
    /// A bulk string.
    Bulk(Bytes),
    /// `+…`.
    Simple(String),
    /// `-…`: Redis answered with an error.
    Error(String),
    /// `:…`.
    Int(i64),
    /// `*…`.
    Array(Vec<Reply>),
}

/// The stream is not RESP2 (or not in step with our requests): the connection must be dropped.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("protocol error: {0}")]
pub struct ProtocolError(pub &'static str);

/// Appends `*<n>\r\n$<len>\r\n<arg>\r\n…` for `args` to `out`.
pub fn encode_command(out: &mut Vec<u8>, args: &[&[u8]]) {
    encode_count(out, args.len());
    encode_args(out, args);
}

/// Appends the `*<n>\r\n` that starts a command of `n` arguments.
pub fn encode_count(out: &mut Vec<u8>, n: usize) {
    out.push(b'*');
    push_decimal(out, n);
    out.extend_from_slice(b"\r\n");
}

/// Appends `$<len>\r\n<arg>\r\n` for each of `args` (part of a command).
pub fn encode_args(out: &mut Vec<u8>, args: &[&[u8]]) {
    for arg in args {
        encode_bulk_head(out, arg.len());
        out.extend_from_slice(arg);
        out.extend_from_slice(b"\r\n");
    }
}

/// Appends the `$<len>\r\n` in front of an argument of `len` bytes.
pub fn encode_bulk_head(out: &mut Vec<u8>, len: usize) {
    out.push(b'$');
    push_decimal(out, len);
    out.extend_from_slice(b"\r\n");
}

fn push_decimal(out: &mut Vec<u8>, mut n: usize) {
    let mut digits = [0u8; 20];
    let mut i = digits.len();
    loop {
        i -= 1;
        digits[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    out.extend_from_slice(&digits[i..]);
}

/// A bulk string being read directly into its own allocation.
#[derive(Debug)]
struct Direct {
    value: Vec<u8>,
    len: usize,
}

/// The incremental reply reader.
///
/// Whatever the server sends, it never panics and never holds more than about
/// [`Reader::with_max_reply`]'s bound: a longer bulk string is a [`ProtocolError`] as soon as
/// its header arrives (before anything is allocated for it), and so is a reply that grows past
/// the bound without completing (a huge array). The caller then drops the connection.
#[derive(Debug)]
pub struct Reader {
    buf: Vec<u8>,
    /// Parsed up to here; `buf[start..]` is unparsed.
    start: usize,
    direct: Option<Direct>,
    max_reply: usize,
    /// How far the reply at `start` has been scanned (see [`Reader::scan`]).
    scan: Scan,
}

/// Progress through an incomplete reply, so that a reply arriving in many reads is scanned once
/// (linear in its size) and parsed once, when complete, instead of re-parsed on every read
/// (quadratic: a 12 MB array in 64 KB reads cost seconds of CPU).
#[derive(Debug, Default)]
struct Scan {
    /// Where the next header line starts, relative to `start`.
    at: usize,
    /// How many bytes after `at` were searched for the end of that line, in vain.
    searched: usize,
    /// Items still due in each open array, outermost first.
    open: Vec<usize>,
}

/// What [`Reader::scan`] found.
enum Scanned {
    /// A complete reply of this many bytes is at `start`.
    Complete(usize),
    /// Not yet.
    Incomplete,
    /// A top-level bulk string of `len` bytes, large and incomplete, whose header ends at
    /// `header` (relative to `start`): read it directly into its own allocation.
    Direct { header: usize, len: usize },
}

impl Default for Reader {
    fn default() -> Self {
        Self::with_max_reply(DEFAULT_MAX_REPLY)
    }
}

impl Reader {
    /// An empty reader accepting replies up to [`DEFAULT_MAX_REPLY`].
    pub fn new() -> Self {
        Self::default()
    }

    /// An empty reader accepting bulk strings (and whole replies) of at most `max_reply` bytes:
    /// what the caller can use, e.g. the largest envelope L2 stores.
    pub fn with_max_reply(max_reply: usize) -> Self {
        Reader {
            buf: Vec::new(),
            start: 0,
            direct: None,
            max_reply,
            scan: Scan::default(),
        }
    }

    /// Where the next `read(2)` should write. Never empty.
    pub fn spare(&mut self) -> &mut [MaybeUninit<u8>] {
        if let Some(d) = &mut self.direct {
            let missing = d.len - d.value.len();
            if missing > 0 {
                return &mut d.value.spare_capacity_mut()[..missing];
            }
        }
        if self.start > 0 && (self.start == self.buf.len() || self.start >= self.buf.capacity() / 2)
        {
            self.buf.drain(..self.start);
            self.start = 0;
        }
        if self.buf.capacity() - self.buf.len() < READ_CHUNK / 4 {
            self.buf.reserve(READ_CHUNK);
        }
        self.buf.spare_capacity_mut()
    }

    /// Commits `n` bytes that the last `read(2)` wrote into [`Reader::spare`].
    ///
    /// # Safety
    /// The first `n` bytes of the slice last returned by `spare` must have been initialised.
    pub unsafe fn advance(&mut self, n: usize) {
        if let Some(d) = &mut self.direct {
            let missing = d.len - d.value.len();
            if missing > 0 {
                let n = n.min(missing);
                // SAFETY: `spare` lent the first `missing` bytes of the value's spare capacity,
                // and the caller initialised `n` of them (the contract above); `n` is capped at
                // `missing`, so the new length stays within the capacity.
                unsafe { d.value.set_len(d.value.len() + n) };
                return;
            }
        }
        let n = n.min(self.buf.capacity() - self.buf.len());
        // SAFETY: otherwise `spare` lent the read buffer's spare capacity, and the caller
        // initialised its first `n` bytes (the contract above); `n` is capped at that capacity.
        unsafe { self.buf.set_len(self.buf.len() + n) };
    }

    /// Feeds bytes that were read elsewhere (tests, the handshake).
    pub fn feed(&mut self, mut bytes: &[u8]) {
        while !bytes.is_empty() {
            let spare = self.spare();
            let n = spare.len().min(bytes.len());
            for (dst, src) in spare[..n].iter_mut().zip(&bytes[..n]) {
                dst.write(*src);
            }
            // SAFETY: the loop above initialised the first `n` bytes of the slice `spare`
            // returned, with no other use of `self` in between: `advance`'s contract.
            unsafe { self.advance(n) };
            bytes = &bytes[n..];
        }
    }

    /// The next complete reply, if it has arrived.
    pub fn next_reply(&mut self) -> Result<Option<Reply>, ProtocolError> {
        if let Some(d) = &self.direct {
            if d.value.len() < d.len {
                return Ok(None);
            }
            // The value is complete; its `\r\n` follows in the read buffer.
            if self.buf.len() - self.start < 2 {
                return Ok(None);
            }
            if &self.buf[self.start..self.start + 2] != b"\r\n" {
                return Err(ProtocolError("bulk string not terminated"));
            }
            self.start += 2;
            let d = self.direct.take().ok_or(ProtocolError("reader state"))?;
            return Ok(Some(Reply::Bulk(Bytes::from(d.value))));
        }
        let max = self.max_reply;
        let len = match self.scan()? {
            Scanned::Complete(len) => len,
            Scanned::Incomplete => {
                // An incomplete reply already past the bound (e.g. an endless array) will not
                // become acceptable by waiting for more.
                if self.buf.len() - self.start > max.saturating_add(MAX_LINE) {
                    return Err(ProtocolError("reply too long"));
                }
                return Ok(None);
            }
            Scanned::Direct { header, len } => {
                let avail = &self.buf[self.start..];
                let mut value = Vec::with_capacity(len);
                // Fewer than `len + 2` bytes follow the header (it is incomplete).
                let have = &avail[header..];
                let (part, extra) = have.split_at(have.len().min(len));
                value.extend_from_slice(part);
                // Part of the trailing `\r\n` may have come too: it stays in the buffer.
                let extra = extra.to_vec();
                self.buf.clear();
                self.start = 0;
                self.scan = Scan::default();
                self.buf.extend_from_slice(&extra);
                self.direct = Some(Direct { value, len });
                return self.next_reply();
            }
        };
        match parse(&self.buf[self.start..self.start + len], 0, max)? {
            Some((reply, used)) if used == len => {
                self.start += used;
                if self.start == self.buf.len() {
                    self.buf.clear();
                    self.start = 0;
                }
                Ok(Some(reply))
            }
            // The scan and the parser follow the same framing; they cannot disagree.
            _ => Err(ProtocolError("reader state")),
        }
    }

    /// Scans the reply at `start` from where the last call stopped.
    fn scan(&mut self) -> Result<Scanned, ProtocolError> {
        let avail = &self.buf[self.start..];
        let max = self.max_reply;
        let s = &mut self.scan;
        loop {
            let rest = &avail[s.at..];
            // A `\r` at the end of what was searched may be the start of the line's end.
            let from = s.searched.saturating_sub(1).min(rest.len());
            let window = &rest[from..rest.len().min(MAX_LINE)];
            let Some(i) = window.windows(2).position(|w| w == b"\r\n") else {
                if rest.len() >= MAX_LINE {
                    return Err(ProtocolError("header line too long"));
                }
                s.searched = rest.len();
                return Ok(Scanned::Incomplete);
            };
            let end = from + i + 2;
            if end < 3 {
                return Err(ProtocolError("empty header line"));
            }
            let body = &rest[1..end - 2];
            let mut next = s.at + end;
            let mut opens = None;
            match rest[0] {
                b'+' | b'-' | b':' => {}
                b'$' => {
                    if let Some(n) = bulk_len(body, max)? {
                        if rest.len() < end + n + 2 {
                            if s.at == 0 && n >= DIRECT_MIN {
                                return Ok(Scanned::Direct {
                                    header: end,
                                    len: n,
                                });
                            }
                            // Come back to this header when more has arrived (found at once).
                            s.searched = end - 1;
                            return Ok(Scanned::Incomplete);
                        }
                        next += n + 2;
                    }
                }
                b'*' => match parse_int(body)? {
                    -1 | 0 => {}
                    n if n < 0 => return Err(ProtocolError("negative length")),
                    n => {
                        if s.open.len() >= MAX_DEPTH {
                            return Err(ProtocolError("arrays nested too deep"));
                        }
                        opens =
                            Some(usize::try_from(n).map_err(|_| ProtocolError("array length"))?);
                    }
                },
                _ => return Err(ProtocolError("unknown reply type")),
            }
            s.at = next;
            s.searched = 0;
            if let Some(n) = opens {
                s.open.push(n);
                continue;
            }
            // An element is complete: so is every array it completes.
            loop {
                match s.open.last_mut() {
                    None => {
                        let len = s.at;
                        *s = Scan::default();
                        return Ok(Scanned::Complete(len));
                    }
                    Some(due) => {
                        *due -= 1;
                        if *due > 0 {
                            break;
                        }
                        s.open.pop();
                    }
                }
            }
        }
    }
}

/// The length of a bulk string from its header's digits: `None` for the nil bulk (`-1`).
fn bulk_len(digits: &[u8], max: usize) -> Result<Option<usize>, ProtocolError> {
    match parse_int(digits)? {
        -1 => Ok(None),
        n if n < 0 => Err(ProtocolError("negative length")),
        n => {
            let n = usize::try_from(n).map_err(|_| ProtocolError("bulk length"))?;
            if n > max {
                return Err(ProtocolError("bulk string too long"));
            }
            Ok(Some(n))
        }
    }
}

/// Just past the `\r\n` that ends the first line of `buf`, once it has arrived. The line holds
/// at least the type byte: callers slice `buf[1..end - 2]`.
fn line(buf: &[u8]) -> Result<Option<usize>, ProtocolError> {
    let scan = &buf[..buf.len().min(MAX_LINE)];
    match scan.windows(2).position(|w| w == b"\r\n") {
        Some(0) => Err(ProtocolError("empty header line")),
        Some(i) => Ok(Some(i + 2)),
        None if buf.len() >= MAX_LINE => Err(ProtocolError("header line too long")),
        None => Ok(None),
    }
}

fn parse_int(digits: &[u8]) -> Result<i64, ProtocolError> {
    std::str::from_utf8(digits)
        .ok()
        .and_then(|s| s.parse::<i64>().ok())
        .ok_or(ProtocolError("bad integer"))
}

/// One complete reply at the start of `buf` and the bytes it used, or `None` if incomplete.
fn parse(buf: &[u8], depth: usize, max: usize) -> Result<Option<(Reply, usize)>, ProtocolError> {
    if depth > MAX_DEPTH {
        return Err(ProtocolError("arrays nested too deep"));
    }
    let Some(header) = line(buf)? else {
        return Ok(None);
    };
    let body = &buf[1..header - 2];
    let text = || String::from_utf8_lossy(body).into_owned();
    match buf[0] {
        b'+' => Ok(Some((Reply::Simple(text()), header))),
        b'-' => Ok(Some((Reply::Error(text()), header))),
        b':' => Ok(Some((Reply::Int(parse_int(body)?), header))),
        b'$' => {
            let Some(len) = bulk_len(body, max)? else {
                return Ok(Some((Reply::Nil, header)));
            };
            let end = header + len;
            if buf.len() < end + 2 {
                return Ok(None);
            }
            if &buf[end..end + 2] != b"\r\n" {
                return Err(ProtocolError("bulk string not terminated"));
            }
            Ok(Some((
                Reply::Bulk(Bytes::copy_from_slice(&buf[header..end])),
                end + 2,
            )))
        }
        b'*' => {
            let n = match parse_int(body)? {
                -1 => return Ok(Some((Reply::Nil, header))),
                n if n < 0 => return Err(ProtocolError("negative length")),
                n => usize::try_from(n).map_err(|_| ProtocolError("array length"))?,
            };
            let mut items = Vec::with_capacity(n.min(1024));
            let mut at = header;
            for _ in 0..n {
                match parse(&buf[at..], depth + 1, max)? {
                    Some((item, used)) => {
                        items.push(item);
                        at += used;
                    }
                    None => return Ok(None),
                }
            }
            Ok(Some((Reply::Array(items), at)))
        }
        _ => Err(ProtocolError("unknown reply type")),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn all(r: &mut Reader) -> Vec<Reply> {
        let mut out = Vec::new();
        while let Some(x) = r.next_reply().unwrap() {
            out.push(x);
        }
        out
    }

    #[test]
    fn encodes_commands() {
        let mut out = Vec::new();
        encode_command(&mut out, &[b"GET", b"k:1"]);
        assert_eq!(out, b"*2\r\n$3\r\nGET\r\n$3\r\nk:1\r\n");
        out.clear();
        encode_command(&mut out, &[b"SET", b"", &[0u8; 12]]);
        assert!(out.starts_with(b"*3\r\n$3\r\nSET\r\n$0\r\n\r\n$12\r\n"));
    }

    #[test]
    fn parses_every_reply_type_in_one_feed() {
        let mut r = Reader::new();
        r.feed(b"+OK\r\n-ERR bad\r\n:42\r\n$-1\r\n$3\r\nabc\r\n*2\r\n$1\r\nx\r\n*1\r\n:7\r\n*-1\r\n$0\r\n\r\n");
        assert_eq!(
            all(&mut r),
            vec![
                Reply::Simple("OK".into()),
                Reply::Error("ERR bad".into()),
                Reply::Int(42),
                Reply::Nil,
                Reply::Bulk(Bytes::from_static(b"abc")),
                Reply::Array(vec![
                    Reply::Bulk(Bytes::from_static(b"x")),
                    Reply::Array(vec![Reply::Int(7)])
                ]),
                Reply::Nil,
                Reply::Bulk(Bytes::new()),
            ]
        );
        assert_eq!(r.next_reply().unwrap(), None);
    }

    #[test]
    fn byte_by_byte_gives_the_same_replies() {
        let big = vec![7u8; DIRECT_MIN + 5];
        let mut wire = b"$3\r\nabc\r\n".to_vec();
        wire.extend_from_slice(format!("${}\r\n", big.len()).as_bytes());
        wire.extend_from_slice(&big);
        wire.extend_from_slice(b"\r\n*2\r\n:1\r\n$-1\r\n");
        let mut r = Reader::new();
        let mut got = Vec::new();
        for b in &wire {
            r.feed(std::slice::from_ref(b));
            got.extend(all(&mut r));
        }
        assert_eq!(
            got,
            vec![
                Reply::Bulk(Bytes::from_static(b"abc")),
                Reply::Bulk(Bytes::from(big)),
                Reply::Array(vec![Reply::Int(1), Reply::Nil]),
            ]
        );
    }

    #[test]
    fn a_large_array_in_many_reads_is_scanned_once_and_parsed_whole() {
        // Nested arrays, nil and empty ones, bulks with CRLF inside, in reads of odd sizes.
        let mut wire = b"*4\r\n*2\r\n:1\r\n$4\r\na\r\nb\r\n*0\r\n*-1\r\n".to_vec();
        let n = 100_000;
        wire.extend_from_slice(format!("*{n}\r\n").as_bytes());
        for i in 0..n {
            wire.extend_from_slice(format!(":{i}\r\n").as_bytes());
        }
        wire.extend_from_slice(b"+OK\r\n");
        let mut r = Reader::new();
        let mut got = Vec::new();
        for chunk in wire.chunks(997) {
            r.feed(chunk);
            got.extend(all(&mut r));
        }
        assert_eq!(got.len(), 2);
        let Reply::Array(items) = &got[0] else {
            panic!("{:?}", got[0])
        };
        assert_eq!(
            items[0],
            Reply::Array(vec![
                Reply::Int(1),
                Reply::Bulk(Bytes::from_static(b"a\r\nb"))
            ])
        );
        assert_eq!(items[1], Reply::Array(vec![]));
        assert_eq!(items[2], Reply::Nil);
        let Reply::Array(ints) = &items[3] else {
            panic!()
        };
        assert_eq!(ints.len(), n);
        assert_eq!(ints[n - 1], Reply::Int(n as i64 - 1));
        assert_eq!(got[1], Reply::Simple("OK".into()));
    }

    #[test]
    fn a_large_bulk_is_read_into_its_own_exact_allocation() {
        let len = 1 << 20;
        let mut r = Reader::new();
        r.feed(format!("${len}\r\n").as_bytes());
        r.feed(&vec![1u8; 1000]);
        assert_eq!(r.next_reply().unwrap(), None);
        // From now on reads go into the value itself, exactly what is missing.
        assert_eq!(r.spare().len(), len - 1000);
        r.feed(&vec![1u8; len - 1000]);
        assert_eq!(r.next_reply().unwrap(), None, "the CRLF has not arrived");
        r.feed(b"\r\n:5\r\n");
        match r.next_reply().unwrap() {
            Some(Reply::Bulk(b)) => {
                assert_eq!(b.len(), len);
                assert!(b.iter().all(|&x| x == 1));
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(r.next_reply().unwrap(), Some(Reply::Int(5)));
        assert_eq!(r.next_reply().unwrap(), None);
    }

    #[test]
    fn a_large_bulk_that_arrives_whole_with_its_neighbours() {
        let big = vec![9u8; DIRECT_MIN * 2];
        let mut wire = format!("${}\r\n", big.len()).into_bytes();
        wire.extend_from_slice(&big);
        wire.extend_from_slice(b"\r\n+OK\r\n");
        let mut r = Reader::new();
        r.feed(&wire);
        assert_eq!(
            all(&mut r),
            vec![Reply::Bulk(Bytes::from(big)), Reply::Simple("OK".into())]
        );
    }

    #[test]
    fn garbage_is_a_protocol_error_not_a_panic() {
        for wire in [
            &b"?what\r\n"[..],
            b"$abc\r\n",
            b"$3\r\nabcXY",
            b":1.5\r\n",
            b"$99999999999999999999\r\n",
        ] {
            let mut r = Reader::new();
            r.feed(wire);
            assert!(r.next_reply().is_err(), "{wire:?}");
        }
        let mut r = Reader::new();
        r.feed(&vec![b'+'; MAX_LINE + 1]);
        assert!(r.next_reply().is_err());
        let mut deep = Vec::new();
        for _ in 0..=MAX_DEPTH + 1 {
            deep.extend_from_slice(b"*1\r\n");
        }
        deep.extend_from_slice(b":1\r\n");
        let mut r = Reader::new();
        r.feed(&deep);
        assert!(r.next_reply().is_err());
    }

    #[test]
    fn hostile_headers_are_protocol_errors_not_panics() {
        for wire in [
            &b"\r\n"[..],
            b"\r\n$3\r\nabc\r\n",
            b"$-5\r\n",
            b"*-2\r\n",
            b"*1\r\n\r\n",
            b"$\r\n",
            b":\r\n",
        ] {
            let mut r = Reader::new();
            r.feed(wire);
            assert!(r.next_reply().is_err(), "{wire:?}");
        }
        // The nil forms stay valid.
        let mut r = Reader::new();
        r.feed(b"$-1\r\n*-1\r\n");
        assert_eq!(all(&mut r), vec![Reply::Nil, Reply::Nil]);
    }

    #[test]
    fn nothing_over_the_bound_is_buffered() {
        // A bulk over the bound fails on its header, before anything is allocated for it.
        let mut r = Reader::with_max_reply(1000);
        r.feed(b"$1001\r\n");
        assert!(r.next_reply().is_err());
        let mut r = Reader::with_max_reply(DIRECT_MIN * 2);
        r.feed(format!("${}\r\n", DIRECT_MIN * 2).as_bytes());
        assert_eq!(r.next_reply().unwrap(), None, "at the bound is fine");
        let mut r = Reader::with_max_reply(DIRECT_MIN);
        r.feed(b"$524288000\r\n");
        assert!(r.next_reply().is_err());
        // An endless array of small items fails once it outgrows the bound.
        let mut r = Reader::with_max_reply(1000);
        r.feed(b"*1000000\r\n");
        let mut failed = false;
        for _ in 0..100_000 {
            r.feed(b":1\r\n");
            if r.next_reply().is_err() {
                failed = true;
                break;
            }
        }
        assert!(failed);
    }

    #[test]
    fn a_big_bulk_with_a_bad_terminator_is_an_error() {
        let mut r = Reader::new();
        r.feed(format!("${DIRECT_MIN}\r\n").as_bytes());
        r.feed(&vec![0u8; DIRECT_MIN]);
        r.feed(b"XX");
        assert!(r.next_reply().is_err());
    }
}
