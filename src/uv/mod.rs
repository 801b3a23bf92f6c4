//! The event-loop read path: L2 `GET`s on Node's own thread, driven by libuv.
//!
//! An L2 read through the runtime costs two thread wake-ups on top of the Redis round trip
//! (Node's thread → a runtime worker, and back through the bridge): about 7 µs, as much as the
//! whole `GET` of a small value by a JS client, which writes from Node's thread and is woken by
//! libuv when the reply arrives. This path does the same, natively: each environment's thread
//! (the main thread, or a worker thread) has its own connection to Redis, registered with its
//! libuv loop (`uv_poll`). A `get` writes its `GET` with one non-blocking `write(2)`; when the
//! socket becomes readable, libuv calls `conn::on_poll`, which reads, parses the replies in Rust
//! (`strata_core::resp`, large values straight into their final allocation), judges them with
//! the same rules as the runtime path ([`Cache::finish_remote`]) and settles the promises inside
//! a callback scope, so their continuations run right after, like a JS socket's `data` handler.
//! Requests issued by those continuations are written together, once they have all run (one
//! `write(2)` for a whole batch under load).
//!
//! Same guarantees as the runtime path: the circuit breaker gates and is told every outcome, a
//! deadline bounds every request ([`L2::op_timeout`], a libuv timer), and a failure is a miss (or
//! the L1 copy), never a rejection. A request past its deadline, any I/O or protocol error, a
//! reply nobody asked for, or a reply longer than the largest envelope L2 stores drops the
//! connection: once a reply is overdue the stream cannot be trusted to be in step (a server or
//! proxy that swallowed it would pair every later reply with the wrong request), and nothing
//! longer than [`Cache::max_reply_bytes`] is ever buffered. The overdue requests fail as
//! timeouts (they count for the breaker), the others in flight as collateral (they do not).
//! The next request, once the breaker is closed, makes a new connection on the runtime
//! (connect, `AUTH`, `SELECT`; after a failed attempt the next waits 250 ms), and requests go
//! through the runtime until it is up. One callback reads at most `conn::READ_BUDGET` bytes, so a
//! flooding server cannot keep the loop from its timers.
//!
//! Every libuv callback runs under [`crate::panic::contain`]: a panic drops the connection and
//! settles every request it carried (a miss for reads), instead of aborting the process.
//!
//! Three requests take this path: the `GET` of an entry, the `SET` of an entry, and the read of
//! the invalidation log that `refreshTags` makes (`EVALSHA`, shared by the calls made before it
//! is written; one in flight and one waiting at most, like the runtime path's coalescing).
//! Everything else (invalidations, the clock, a cluster, TLS, Unix sockets, RESP3, anything
//! before the clock offset is known, a refresh while invalidations wait for replay) stays on
//! the runtime. `STRATA_L2_DIRECT_READS=0` turns it off.
//!
//! The entry points (`try_get`, `try_refresh`, `try_set`) are here; `ffi` declares the libuv
//! functions and owns the handles' memory, `conn` the connection, its request queue and the
//! libuv callbacks, `settle` what each outcome means for the breaker, the core and the promise.
//!
//! [`Cache::finish_remote`]: strata_core::cache::Cache::finish_remote
//! [`Cache::max_reply_bytes`]: strata_core::cache::Cache::max_reply_bytes
//! [`L2::op_timeout`]: strata_core::l2::L2::op_timeout

mod conn;
mod ffi;
mod settle;

use std::sync::atomic::AtomicU64;

use napi::bindgen_prelude::Env;

use strata_core::cache::{GetStep, SetPlan};
use strata_core::entry::EntryMeta;

use crate::js_entry::{self, Chunks, RawValue};
use crate::{internal, Global, JsResult};
use conn::{with_conn, Made};
use settle::{error_value, promise, settled, What};

/// Reads served by this path (all environments).
pub(crate) static DIRECT_READS: AtomicU64 = AtomicU64::new(0);
/// Direct connections made (all environments).
pub(crate) static DIRECT_CONNECTS: AtomicU64 = AtomicU64::new(0);
/// Reads of the invalidation log (`refreshTags`) made by this path (all environments).
pub(crate) static DIRECT_REFRESHES: AtomicU64 = AtomicU64::new(0);
/// Entry writes (`SET`) made by this path (all environments).
pub(crate) static DIRECT_WRITES: AtomicU64 = AtomicU64::new(0);

/// Larger values are written through the runtime while other requests are in flight here:
/// encoding the envelope (a copy and a CRC) and sending it then happen off Node's thread, on
/// the other cores (measured: 64 writes of 1 MB in flight, 0.57× ioredis' throughput on this
/// thread vs 0.84× through the runtime). See [`DIRECT_SET_MAX_IDLE`] for the exception.
const DIRECT_SET_MAX: usize = 64 * 1024;

/// Up to this size a larger value is still written here when the connection has nothing else
/// in flight: then no other request waits behind its encoding, and the two thread hops of the
/// runtime path are the larger cost (measured one in flight: see bench/RESULTS.md).
const DIRECT_SET_MAX_IDLE: usize = 4 * 1024 * 1024;

/// Tries the event-loop path for `get(key, softTags)` after an L1 miss. `Err` hands the
/// arguments back: not available right now (no direct connection yet, breaker open, …), use the
/// runtime.
pub(crate) fn try_get(
    env: &Env,
    g: &'static Global,
    key: String,
    soft_tags: Vec<String>,
) -> JsResult<Result<RawValue, (String, Vec<String>)>> {
    if !g.cache.clock_synced() {
        return Ok(Err((key, soft_tags)));
    }
    let mut args = Some((key, soft_tags));
    let taken = with_conn(env, g, |conn, l2, raw| {
        let Some((key, soft_tags)) = args.take() else {
            return Ok(None);
        };
        let call = match g.cache.start_get(&key, &soft_tags) {
            GetStep::Send(call) => call,
            // Answered without a round trip (breaker open, strict mode unverified): still a
            // promise, as `ucGetRemote` always returns.
            GetStep::Done(lookup) => {
                let value = js_entry::lookup_value(&Env::from_raw(raw), lookup)?;
                return Ok(Some(Made::Answer(settled(raw, Ok(value.raw()))?)));
            }
        };
        let (deferred, promise) = promise(raw)?;
        l2.get_command(&key).encode(&mut conn.out);
        let what = What::Get {
            deferred,
            key,
            soft_tags,
        };
        Ok(Some(Made::Request(what, call, promise)))
    })?;
    match (taken, args) {
        (Some(promise), _) => Ok(Ok(promise)),
        (None, Some(args)) => Ok(Err(args)),
        (None, None) => Err(internal("get: arguments consumed without a promise")),
    }
}

/// Tries the event-loop path for `refreshTags()`: one `EVALSHA` of the log read, shared by every
/// call made before it is written. `Ok(None)`: use the runtime (no connection yet, breaker
/// open, another refresh running, invalidations waiting to be replayed, clock not synced).
pub(crate) fn try_refresh(env: &Env, g: &'static Global) -> JsResult<Option<RawValue>> {
    with_conn(env, g, |conn, l2, raw| {
        if conn.joinable_refresh {
            if let Some(What::Refresh { deferreds, .. }) =
                conn.pending.back_mut().map(|p| &mut p.what)
            {
                // Not written yet: its read starts after this call, so it covers it.
                let (deferred, promise) = promise(raw)?;
                deferreds.push(deferred);
                return Ok(Some(Made::Answer(promise)));
            }
        }
        if conn.refreshes > 0 {
            // A read is in flight but started before this call: wait for it, then share the
            // next one.
            let (deferred, promise) = promise(raw)?;
            conn.waiting.push(deferred);
            return Ok(Some(Made::Answer(promise)));
        }
        let Some(gate) = g.cache.try_refresh_gate() else {
            return Ok(None);
        };
        let Ok(call) = l2.begin("refresh") else {
            return Ok(None);
        };
        let (deferred, promise) = promise(raw)?;
        // Calls still waiting for a read are covered by this one too.
        let mut deferreds = std::mem::take(&mut conn.waiting);
        deferreds.push(deferred);
        match conn.encode_refresh(g, l2, deferreds) {
            Ok(what) => {
                conn.refresh_gate = Some(gate);
                Ok(Some(Made::Request(what, call, promise)))
            }
            Err(deferreds) => {
                // Invalidations wait for replay after all: the runtime's refresh serves them.
                conn.waiting = deferreds;
                drop(gate);
                Ok(None)
            }
        }
    })
}

/// What [`try_set`] did.
pub(crate) enum SetTry {
    /// Taken: a promise of `{ l1, l2 }` (the entry is in L1 already).
    Taken(RawValue),
    /// Not taken (no connection yet, breaker open, …): the arguments back, for the runtime.
    NotTaken(Chunks, EntryMeta),
}

/// Tries the event-loop path for `set`: L1 at once, then the envelope's `SET` on this thread's
/// connection.
pub(crate) fn try_set(
    env: &Env,
    g: &'static Global,
    key: &str,
    chunks: Chunks,
    meta: EntryMeta,
) -> JsResult<SetTry> {
    let len = chunks.0.len();
    if !g.cache.clock_synced() || len > DIRECT_SET_MAX_IDLE {
        return Ok(SetTry::NotTaken(chunks, meta));
    }
    let mut args = Some((chunks, meta));
    let taken = with_conn(env, g, |conn, l2, raw| {
        if len > DIRECT_SET_MAX && !conn.pending.is_empty() {
            return Ok(None);
        }
        let Some((chunks, meta)) = args.take() else {
            return Ok(None);
        };
        // With nothing queued, a large envelope is encoded with room for the command's head in
        // front, and becomes the output buffer itself: no copy of it into `out`.
        let in_place = len > DIRECT_SET_MAX && conn.out.is_empty();
        let headroom = if in_place { l2.set_headroom(key) } else { 0 };
        let report = match g.cache.plan_set(key, chunks.0, meta, headroom) {
            Ok(SetPlan::Done(report)) => report,
            Ok(SetPlan::Write {
                l1,
                call,
                mut envelope,
                at,
                ttl,
            }) => {
                match in_place
                    .then(|| l2.frame_set(&mut envelope, at, key, ttl))
                    .flatten()
                {
                    Some(start) => {
                        conn.out = envelope;
                        conn.written = start;
                    }
                    None => l2.encode_set(&mut conn.out, key, &envelope[at..], ttl),
                }
                let (deferred, promise) = promise(raw)?;
                let what = What::Set { deferred, l1 };
                return Ok(Some(Made::Request(what, call, promise)));
            }
            Err(e) => {
                // Invalid metadata: rejected, like the runtime path.
                let err = error_value(&Env::from_raw(raw), &e);
                return Ok(Some(Made::Answer(settled(raw, Err(err))?)));
            }
        };
        // Nothing to write (not stored, too large) or nothing can be: settled now.
        let value = crate::set_report_value(&Env::from_raw(raw), g, report)?;
        Ok(Some(Made::Answer(settled(raw, Ok(value.raw()))?)))
    })?;
    match (taken, args) {
        (Some(promise), _) => Ok(SetTry::Taken(promise)),
        (None, Some((chunks, meta))) => Ok(SetTry::NotTaken(chunks, meta)),
        (None, None) => Err(internal("set: arguments consumed without a promise")),
    }
}
