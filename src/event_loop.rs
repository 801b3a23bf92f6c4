//! The event-loop read path: L2 `GET`s on Node's own thread, driven by libuv.
//!
//! An L2 read through the runtime costs two thread wake-ups on top of the Redis round trip
//! (Node's thread → a runtime worker, and back through the bridge): about 7 µs, as much as the
//! whole `GET` of a small value by a JS client, which writes from Node's thread and is woken by
//! libuv when the reply arrives. This path does the same, natively: each environment's thread
//! (the main thread, or a worker thread) has its own connection to Redis, registered with its
//! libuv loop (`uv_poll`). A `get` writes its `GET` with one non-blocking `write(2)`; when the
//! socket becomes readable, libuv calls [`on_poll`], which reads, parses the replies in Rust
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
//! through the runtime until it is up. One callback reads at most [`READ_BUDGET`] bytes, so a
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
//! [`Cache::finish_remote`]: strata_core::cache::Cache::finish_remote
//! [`Cache::max_reply_bytes`]: strata_core::cache::Cache::max_reply_bytes
//! [`L2::op_timeout`]: strata_core::l2::L2::op_timeout

use std::cell::RefCell;
use std::collections::VecDeque;
use std::ffi::{c_int, c_void};
use std::io::{ErrorKind, Write};
use std::net::TcpStream;
use std::os::fd::AsRawFd;
use std::ptr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use bytes::Bytes;
use napi::bindgen_prelude::{spawn, Env};
use napi::sys;
use parking_lot::Mutex;

use strata_core::breaker::{Permit, State as BreakerState};
use strata_core::cache::SetPlan;
use strata_core::entry::EntryMeta;
use strata_core::l2::DirectTarget;
use strata_core::resp::{self, Reader, Reply};
use strata_core::store::SetOutcome;

use crate::js_entry::{self, Chunks, RawValue};
use crate::{internal, Global, JsResult};

/// Reads served by this path (all environments).
pub static DIRECT_READS: AtomicU64 = AtomicU64::new(0);
/// Direct connections made (all environments).
pub static DIRECT_CONNECTS: AtomicU64 = AtomicU64::new(0);
/// Reads of the invalidation log (`refreshTags`) made by this path (all environments).
pub static DIRECT_REFRESHES: AtomicU64 = AtomicU64::new(0);
/// Entry writes (`SET`) made by this path (all environments).
pub static DIRECT_WRITES: AtomicU64 = AtomicU64::new(0);

/// Larger values are written through the runtime while other requests are in flight here:
/// encoding the envelope (a copy and a CRC) and sending it then happen off Node's thread, on
/// the other cores (measured: 64 writes of 1 MB in flight, 0.57× ioredis' throughput on this
/// thread vs 0.84× through the runtime). See [`DIRECT_SET_MAX_IDLE`] for the exception.
const DIRECT_SET_MAX: usize = 64 * 1024;

/// Up to this size a larger value is still written here when the connection has nothing else
/// in flight: then no other request waits behind its encoding, and the two thread hops of the
/// runtime path are the larger cost (measured one in flight: see bench/RESULTS.md).
const DIRECT_SET_MAX_IDLE: usize = 4 * 1024 * 1024;

/// The most one libuv callback reads before returning to the loop (which calls it again at once
/// if more is waiting: libuv's poll is level-triggered), so that timers run in between.
const READ_BUDGET: usize = 4 * 1024 * 1024;

/// After a failed connect, reads use the runtime for this long before the next attempt.
const RETRY_AFTER: Duration = Duration::from_millis(250);

// libuv, as exported by the Node binary (stable ABI since libuv 1.0).
const UV_POLL: c_int = 8;
const UV_TIMER: c_int = 13;
const UV_READABLE: c_int = 1;
const UV_WRITABLE: c_int = 2;

type UvHandle = c_void;
extern "C" {
    fn uv_handle_size(kind: c_int) -> usize;
    fn uv_poll_init(lp: *mut sys::uv_loop_s, handle: *mut UvHandle, fd: c_int) -> c_int;
    fn uv_poll_start(
        handle: *mut UvHandle,
        events: c_int,
        cb: unsafe extern "C" fn(*mut UvHandle, c_int, c_int),
    ) -> c_int;
    fn uv_poll_stop(handle: *mut UvHandle) -> c_int;
    fn uv_timer_init(lp: *mut sys::uv_loop_s, handle: *mut UvHandle) -> c_int;
    fn uv_timer_start(
        handle: *mut UvHandle,
        cb: unsafe extern "C" fn(*mut UvHandle),
        timeout: u64,
        repeat: u64,
    ) -> c_int;
    fn uv_timer_stop(handle: *mut UvHandle) -> c_int;
    fn uv_close(handle: *mut UvHandle, cb: Option<unsafe extern "C" fn(*mut UvHandle)>);
    fn uv_ref(handle: *mut UvHandle);
    fn uv_unref(handle: *mut UvHandle);
    fn uv_hrtime() -> u64;
}

/// Now, in ms of libuv's monotonic clock (not the loop's cached time, which lags behind by the
/// length of the current JS task: deadlines count from when a request is really sent).
fn now_ms() -> u64 {
    // SAFETY: uv_hrtime takes no arguments and has no preconditions (it reads the monotonic
    // clock); the Node binary this addon is loaded into exports it.
    (unsafe { uv_hrtime() }) / 1_000_000
}

/// A libuv handle's memory (`malloc`ed: freed by [`free_handle`] once libuv closed it).
fn alloc_handle(kind: c_int) -> *mut UvHandle {
    // SAFETY: uv_handle_size only looks up the size of a handle type, and `kind` is one of our
    // constants (UV_POLL, UV_TIMER), values of libuv's stable `uv_handle_type`.
    let size = unsafe { uv_handle_size(kind) };
    // SAFETY: calloc has no preconditions; a null result (out of memory) is checked by the
    // caller (`attach`). Zeroed, so `data` (the first field) starts null.
    unsafe { libc::calloc(1, size) }
}

/// The close callback of our handles: frees their memory.
///
/// # Safety
/// Only for libuv, as the `uv_close` callback of a handle from [`alloc_handle`]: `handle` was
/// `calloc`ed there, and libuv calls this once, after which it never touches the handle again.
unsafe extern "C" fn free_handle(handle: *mut UvHandle) {
    // SAFETY: `handle` came from `alloc_handle`'s calloc and libuv is done with it (the contract
    // above): freed once, with the allocator that made it.
    unsafe { libc::free(handle) };
}

thread_local! {
    /// This thread's environment's state (Node runs one environment per thread).
    static STATE: RefCell<Option<State>> = const { RefCell::new(None) };
}

/// Where this path connects: the process's one L2, when it is a single server over plain TCP
/// with RESP2 (worked out once; `None` leaves everything on the runtime).
fn target(l2: &strata_core::l2::L2) -> Option<&'static DirectTarget> {
    static TARGET: OnceLock<Option<DirectTarget>> = OnceLock::new();
    TARGET.get_or_init(|| l2.direct_target()).as_ref()
}

/// `STRATA_L2_DIRECT_READS=0` turns the path off (read once per process).
fn enabled() -> bool {
    static ON: OnceLock<bool> = OnceLock::new();
    *ON.get_or_init(|| {
        !matches!(
            std::env::var("STRATA_L2_DIRECT_READS").as_deref(),
            Ok("0" | "false" | "off" | "no")
        )
    })
}

struct State {
    env: sys::napi_env,
    lp: *mut sys::uv_loop_s,
    /// For the callback scope that settles promises from a libuv callback.
    async_ctx: sys::napi_async_context,
    resource: sys::napi_ref,
    target: &'static DirectTarget,
    link: Link,
    /// Bumped for every connection; a callback of an older one is ignored.
    generation: u64,
    /// Inside [`on_poll`]'s settling: requests queue their bytes for one write at the end.
    dispatching: bool,
    /// `refreshTags` calls to hand to a runtime refresh (settled outside the state's borrow).
    to_runtime: Vec<sys::napi_deferred>,
    /// Requests answered in the current callback, to settle once the state is released. Kept
    /// here rather than on the stack so that a panic mid-callback cannot lose them.
    ready: Vec<Done>,
}

enum Link {
    Down { retry_at: Instant },
    Connecting(Arc<Mutex<Option<strata_core::Result<TcpStream>>>>),
    Up(Box<Conn>),
}

/// One direct connection. Handle invariant (the `SAFETY` notes rely on it): `poll` and `timer`
/// are initialised handles of this thread's loop from [`State::attach`] until
/// [`Conn::close_handles`], which is only called on a `Conn` about to be dropped; a `Conn` lives
/// in this thread's [`STATE`], so it is only touched on the loop's own thread.
struct Conn {
    stream: TcpStream,
    poll: *mut UvHandle,
    timer: *mut UvHandle,
    reader: Reader,
    out: Vec<u8>,
    written: usize,
    pending: VecDeque<Pending>,
    want_writable: bool,
    referenced: bool,
    timer_armed: bool,
    /// Held while refreshes are in flight here, so no other refresh interleaves with them.
    refresh_gate: Option<RefreshGate>,
    /// Refreshes in flight.
    refreshes: usize,
    /// The last request is a refresh not written yet (a `refreshTags` call may join it).
    joinable_refresh: bool,
    /// `refreshTags` calls made while a refresh was in flight: served by one more read once it
    /// is back (so at most one read is in flight and one waits, as on the runtime path).
    waiting: Vec<sys::napi_deferred>,
}

struct Pending {
    what: What,
    /// `None` for refresh calls that waited for a read and lost their connection first.
    permit: Option<Permit>,
    /// In [`now_ms`]'s clock.
    deadline: u64,
}

enum What {
    /// An entry's `GET`.
    Get {
        deferred: sys::napi_deferred,
        key: String,
        soft_tags: Vec<String>,
    },
    /// A read of the invalidation log (`EVALSHA` of `refresh.lua`) serving every `refreshTags`
    /// call that joined it before it was written; `covered`: see
    /// [`strata_core::cache::Cache::register_direct_refresh`].
    Refresh {
        deferreds: Vec<sys::napi_deferred>,
        covered: u64,
    },
    /// An entry's `SET` (already in L1 as `l1`).
    Set {
        deferred: sys::napi_deferred,
        l1: SetOutcome,
    },
}

/// Why a request failed.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Failure {
    /// Its deadline passed (trips the breaker).
    Timeout,
    /// The connection broke (trips the breaker).
    Broken,
    /// Its connection was dropped because another request timed out: says nothing about Redis
    /// (its permit is released unreported).
    Collateral,
}

/// A request to settle, once the state is no longer borrowed.
struct Done {
    pending: Pending,
    outcome: Result<Reply, Failure>,
    /// The refresh gate, released once this (the connection's last refresh) is applied.
    gate: Option<RefreshGate>,
}

type RefreshGate = tokio::sync::MutexGuard<'static, ()>;

impl Done {
    /// Calls that never got a request of their own (no permit, no deadline), failing with `why`.
    fn unsent(what: What, why: Failure) -> Done {
        Done {
            pending: Pending {
                what,
                permit: None,
                deadline: 0,
            },
            outcome: Err(why),
            gate: None,
        }
    }
}

/// Tries the event-loop path for `get(key, softTags)` after an L1 miss. `Err` hands the
/// arguments back: not available right now (no direct connection yet, breaker open, …), use the
/// runtime.
pub fn try_get(
    env: &Env,
    g: &'static Global,
    key: String,
    soft_tags: Vec<String>,
) -> JsResult<Result<RawValue, (String, Vec<String>)>> {
    if !g.cache.direct_read_ready() {
        return Ok(Err((key, soft_tags)));
    }
    let mut args = Some((key, soft_tags));
    let taken = with_conn(env, g, |conn, l2, raw| {
        let Some(permit) = l2.breaker().try_acquire() else {
            return Ok(None);
        };
        let Some((key, soft_tags)) = args.take() else {
            return Ok(None);
        };
        let (deferred, promise) = promise(raw)?;
        resp::encode_command(&mut conn.out, &[b"GET", l2.keys().entry(&key).as_bytes()]);
        let what = What::Get {
            deferred,
            key,
            soft_tags,
        };
        Ok(Some(Made::Request(what, permit, promise)))
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
pub fn try_refresh(env: &Env, g: &'static Global) -> JsResult<Option<RawValue>> {
    with_conn(env, g, |conn, l2, raw| {
        if conn.joinable_refresh {
            if let Some(What::Refresh { deferreds, .. }) =
                conn.pending.back_mut().map(|p| &mut p.what)
            {
                // Not written yet: its read starts after this call, so it covers it.
                let (deferred, promise) = promise(raw)?;
                deferreds.push(deferred);
                g.cache.register_direct_refresh();
                return Ok(Some(Made::Joined(promise)));
            }
        }
        if conn.refreshes > 0 {
            // A read is in flight but started before this call: wait for it, then share the
            // next one.
            let (deferred, promise) = promise(raw)?;
            conn.waiting.push(deferred);
            return Ok(Some(Made::Joined(promise)));
        }
        let Some(gate) = g.cache.direct_refresh_gate() else {
            return Ok(None);
        };
        conn.refresh_gate = Some(gate);
        let Some(permit) = l2.breaker().try_acquire() else {
            conn.refresh_gate = None;
            return Ok(None);
        };
        let (deferred, promise) = promise(raw)?;
        // Calls still waiting for a read are covered by this one too.
        let mut deferreds = std::mem::take(&mut conn.waiting);
        deferreds.push(deferred);
        let what = conn.encode_refresh(g, l2, deferreds);
        Ok(Some(Made::Request(what, permit, promise)))
    })
}

/// What [`try_set`] did.
pub enum SetTry {
    /// Taken: a promise of `{ l1, l2 }` (the entry is in L1 already).
    Taken(RawValue),
    /// Not taken (no connection yet, breaker open, …): the arguments back, for the runtime.
    NotTaken(Chunks, EntryMeta),
}

/// Tries the event-loop path for `set`: L1 at once, then the envelope's `SET` on this thread's
/// connection.
pub fn try_set(
    env: &Env,
    g: &'static Global,
    key: &str,
    chunks: Chunks,
    meta: EntryMeta,
) -> JsResult<SetTry> {
    let len = chunks.0.len();
    if !g.cache.direct_write_ready() || len > DIRECT_SET_MAX_IDLE {
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
        let (deferred, promise) = promise(raw)?;
        // With nothing queued, a large envelope is encoded with room for the command's head in
        // front, and becomes the output buffer itself: no copy of it into `out`.
        let in_place = len > DIRECT_SET_MAX && conn.out.is_empty();
        let headroom = if in_place { l2.set_headroom(key) } else { 0 };
        let report = match g.cache.plan_set(key, chunks.0, meta, headroom) {
            Ok(SetPlan::Done(report)) => report,
            Ok(SetPlan::Write {
                l1,
                mut envelope,
                at,
                ttl,
            }) => match l2.breaker().try_acquire() {
                Some(permit) => {
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
                    let what = What::Set { deferred, l1 };
                    return Ok(Some(Made::Request(what, permit, promise)));
                }
                // The breaker opened meanwhile: L1-only, as the runtime path reports it.
                None => g.cache.finish_set(l1, false),
            },
            Err(e) => {
                // Invalid metadata: rejected, like the runtime path.
                let err = error_value(&Env::from_raw(raw), &e);
                // SAFETY: `raw` is the environment of the JS call running on this thread (what
                // `with_conn` passes); `deferred` was made in it just above and is settled only
                // here (this path returns `Joined`, so it is never tracked); `err` was just
                // created in it.
                unsafe { sys::napi_reject_deferred(raw, deferred, err) };
                return Ok(Some(Made::Joined(promise)));
            }
        };
        // Nothing to write (not stored, too large) or nothing can be: settled now.
        let value = crate::set_report_value(&Env::from_raw(raw), g, report)?;
        // SAFETY: as for the rejection above: this call's environment, a deferred made just
        // above and settled only here, and a value just created in the environment.
        unsafe { sys::napi_resolve_deferred(raw, deferred, value.raw()) };
        Ok(Some(Made::Joined(promise)))
    })?;
    match (taken, args) {
        (Some(promise), _) => Ok(SetTry::Taken(promise)),
        (None, Some((chunks, meta))) => Ok(SetTry::NotTaken(chunks, meta)),
        (None, None) => Err(internal("set: arguments consumed without a promise")),
    }
}

/// What a request maker did.
enum Made {
    /// A new request, encoded: track it.
    Request(What, Permit, RawValue),
    /// Joined a request not written yet.
    Joined(RawValue),
}

/// A new promise and its deferred, in `env`: the environment of the JS call running on this
/// thread (the `make` closures of [`with_conn`], its only callers, pass the `raw` it gives them).
fn promise(env: sys::napi_env) -> JsResult<(sys::napi_deferred, RawValue)> {
    let mut deferred = ptr::null_mut();
    let mut promise = ptr::null_mut();
    // SAFETY: `env` is the environment of the JS call running on this thread (see above);
    // local out-pointers.
    check(unsafe { sys::napi_create_promise(env, &mut deferred, &mut promise) })?;
    Ok((deferred, RawValue::from_raw(promise)))
}

/// Runs `make` with this thread's connection when it is up; `make` encodes one request into
/// the connection's output and returns what to track, or `None` to leave it to the runtime.
fn with_conn<F>(env: &Env, g: &'static Global, make: F) -> JsResult<Option<RawValue>>
where
    F: FnOnce(&mut Conn, &'static strata_core::l2::L2, sys::napi_env) -> JsResult<Option<Made>>,
{
    if !enabled() {
        return Ok(None);
    }
    let Some(l2) = g.cache.l2() else {
        return Ok(None);
    };
    let raw = env.raw();
    let taken = STATE.with(|cell| -> JsResult<Option<(RawValue, Vec<Done>)>> {
        let mut slot = cell.borrow_mut();
        if slot.is_none() {
            let Some(target) = target(l2) else {
                return Ok(None);
            };
            *slot = Some(State::new(raw, target)?);
        }
        let Some(state) = slot.as_mut() else {
            return Ok(None);
        };
        if state.env != raw || !state.ensure_up(g) {
            return Ok(None);
        }
        let Link::Up(conn) = &mut state.link else {
            return Ok(None);
        };
        let (what, permit, promise) = match make(conn, l2, raw)? {
            None => return Ok(None),
            Some(Made::Joined(promise)) => return Ok(Some((promise, Vec::new()))),
            Some(Made::Request(what, permit, promise)) => (what, permit, promise),
        };
        conn.track(what, permit, l2.op_timeout());
        // Inside our own callback, requests wait for the end of it to go out together, unless
        // the connection has nothing else in flight: then there is nothing to batch with, and
        // sending at once lets Redis work while JS goes on (building the stream, for one).
        if !state.dispatching || conn.pending.len() == 1 {
            let failed = state.flush();
            return Ok(Some((promise, failed)));
        }
        Ok(Some((promise, Vec::new())))
    })?;
    let Some((promise, failed)) = taken else {
        return Ok(None);
    };
    if !failed.is_empty() {
        // The write failed and the connection was dropped: its requests (this one included)
        // fail now, settled once the state is released.
        settle(raw, failed, Vec::new(), false);
    }
    Ok(Some(promise))
}

fn check(status: sys::napi_status) -> JsResult<()> {
    if status == sys::Status::napi_ok {
        Ok(())
    } else {
        Err(internal(format!("napi call failed with status {status}")))
    }
}

impl State {
    fn new(env: sys::napi_env, target: &'static DirectTarget) -> JsResult<State> {
        let mut lp = ptr::null_mut();
        let mut resource = ptr::null_mut();
        let mut name = ptr::null_mut();
        let mut async_ctx = ptr::null_mut();
        let mut resource_ref = ptr::null_mut();
        // SAFETY: `env` is the environment of the JS call running on this thread (`with_conn`,
        // the only caller, passes its `env.raw()`); each value used is created in it just
        // before; the name is a NUL-terminated literal of 20 bytes; local out-pointers. The
        // (hook, null) pair is added once per environment (napi aborts on a duplicate): the hook
        // is the last step, a `State` is made only when this thread (one environment per thread)
        // has none, and only `teardown_env`, at the environment's teardown, takes it away.
        unsafe {
            check(sys::napi_get_uv_event_loop(env, &mut lp))?;
            check(sys::napi_create_object(env, &mut resource))?;
            check(sys::napi_create_string_utf8(
                env,
                c"strata-cache:l2-read".as_ptr(),
                20,
                &mut name,
            ))?;
            check(sys::napi_async_init(env, resource, name, &mut async_ctx))?;
            check(sys::napi_create_reference(
                env,
                resource,
                1,
                &mut resource_ref,
            ))?;
            check(sys::napi_add_env_cleanup_hook(
                env,
                Some(teardown_env),
                ptr::null_mut(),
            ))?;
        }
        Ok(State {
            env,
            lp,
            async_ctx,
            resource: resource_ref,
            target,
            link: Link::Down {
                retry_at: Instant::now(),
            },
            generation: 0,
            dispatching: false,
            to_runtime: Vec::new(),
            ready: Vec::new(),
        })
    }

    /// Moves the link forward; `true` when a connection is up.
    fn ensure_up(&mut self, g: &'static Global) -> bool {
        match &self.link {
            Link::Up(_) => true,
            Link::Down { retry_at } => {
                if Instant::now() < *retry_at {
                    return false;
                }
                let Some(l2) = g.cache.l2() else { return false };
                if l2.breaker().state() != BreakerState::Closed {
                    // The runtime path probes a recovering Redis; connect once it closed.
                    return false;
                }
                let slot = Arc::new(Mutex::new(None));
                let done = Arc::clone(&slot);
                let target = self.target;
                spawn(async move {
                    let Some(l2) = g.cache.l2() else { return };
                    let result = l2.open_direct(target).await;
                    *done.lock() = Some(result);
                });
                self.link = Link::Connecting(slot);
                false
            }
            Link::Connecting(slot) => {
                let outcome = slot.lock().take();
                match outcome {
                    None => false,
                    Some(Err(_)) => {
                        self.link = Link::Down {
                            retry_at: Instant::now() + RETRY_AFTER,
                        };
                        false
                    }
                    Some(Ok(stream)) => match self.attach(stream, g.cache.max_reply_bytes()) {
                        Some(conn) => {
                            DIRECT_CONNECTS.fetch_add(1, Ordering::Relaxed);
                            self.link = Link::Up(conn);
                            true
                        }
                        None => {
                            self.link = Link::Down {
                                retry_at: Instant::now() + RETRY_AFTER,
                            };
                            false
                        }
                    },
                }
            }
        }
    }

    /// Registers a connected socket with this thread's loop; its reader accepts replies of up
    /// to `max_reply` bytes.
    fn attach(&mut self, stream: TcpStream, max_reply: usize) -> Option<Box<Conn>> {
        if stream.set_nonblocking(true).is_err() {
            return None;
        }
        let poll = alloc_handle(UV_POLL);
        let timer = alloc_handle(UV_TIMER);
        if poll.is_null() || timer.is_null() {
            // SAFETY: each is null (free(NULL) does nothing) or fresh calloc memory never handed
            // to libuv: nothing else refers to it.
            unsafe {
                libc::free(poll);
                libc::free(timer);
            }
            return None;
        }
        self.generation += 1;
        let tag = self.generation as usize as *mut c_void;
        // SAFETY: `poll` and `timer` are fresh, zeroed allocations of libuv's own size for their
        // types (`alloc_handle`), so writing `data` (the first field of every `uv_handle_t`, a
        // `void*`) is in bounds and aligned (calloc's alignment). `self.lp` is the loop of this
        // thread's environment (`State::new`), and we are on that thread. The fd is `stream`'s,
        // which the `Conn` keeps open until `close_handles` has stopped the poll; `on_poll` and
        // `on_timer` accept these handles (their `data` is set). On failure, a handle that
        // libuv did not initialise (uv_*_init registers it only on success) is freed directly;
        // one it did is closed, and freed by `free_handle` once libuv lets go of it.
        unsafe {
            *(poll as *mut *mut c_void) = tag;
            *(timer as *mut *mut c_void) = tag;
            if uv_poll_init(self.lp, poll, stream.as_raw_fd()) != 0 {
                libc::free(poll);
                libc::free(timer);
                return None;
            }
            if uv_timer_init(self.lp, timer) != 0 {
                uv_close(poll, Some(free_handle));
                libc::free(timer);
                return None;
            }
            if uv_poll_start(poll, UV_READABLE, on_poll) != 0 {
                uv_close(poll, Some(free_handle));
                uv_close(timer, Some(free_handle));
                return None;
            }
            // Idle, the connection must not keep the process alive.
            uv_unref(poll);
            uv_unref(timer);
        }
        Some(Box::new(Conn {
            stream,
            poll,
            timer,
            reader: Reader::with_max_reply(max_reply),
            out: Vec::with_capacity(4096),
            written: 0,
            pending: VecDeque::new(),
            want_writable: false,
            referenced: false,
            timer_armed: false,
            refresh_gate: None,
            refreshes: 0,
            joinable_refresh: false,
            waiting: Vec::new(),
        }))
    }

    /// Sends the read that `refreshTags` calls made during the last one wait for, once that
    /// one is back. If it cannot go this way (the gate is taken by a runtime refresh, or the
    /// breaker is open), they follow a runtime refresh instead.
    fn kick_waiting_refresh(&mut self) {
        let Ok(g) = crate::global() else { return };
        let Some(l2) = g.cache.l2() else { return };
        let Link::Up(conn) = &mut self.link else {
            return;
        };
        if conn.refreshes > 0 || conn.waiting.is_empty() {
            return;
        }
        let waiting = std::mem::take(&mut conn.waiting);
        let gate = g.cache.direct_refresh_gate();
        let permit = gate.as_ref().and_then(|_| l2.breaker().try_acquire());
        let (Some(gate), Some(permit)) = (gate, permit) else {
            self.to_runtime.extend(waiting);
            return;
        };
        conn.refresh_gate = Some(gate);
        let what = conn.encode_refresh(g, l2, waiting);
        conn.track(what, permit, l2.op_timeout());
    }

    /// Writes what is queued; on failure drops the connection (its reads are returned).
    fn flush(&mut self) -> Vec<Done> {
        let Link::Up(conn) = &mut self.link else {
            return Vec::new();
        };
        match conn.write_out() {
            Ok(()) => Vec::new(),
            Err(()) => self.drop_link(Failure::Broken),
        }
    }

    /// Drops the connection; every read in flight fails with `why` (for [`Failure::Timeout`]:
    /// those past their deadline; the others are [`Failure::Collateral`]). The next read
    /// connects anew (once the breaker is closed), so a restarted Redis is found at once.
    fn drop_link(&mut self, why: Failure) -> Vec<Done> {
        let now = now_ms();
        let link = std::mem::replace(
            &mut self.link,
            Link::Down {
                retry_at: Instant::now(),
            },
        );
        let Link::Up(conn) = link else {
            return Vec::new();
        };
        let mut conn = *conn;
        conn.close_handles();
        let pending = std::mem::take(&mut conn.pending);
        let mut done: Vec<Done> = pending
            .into_iter()
            .map(|pending| {
                let why = if why == Failure::Timeout && pending.deadline > now {
                    Failure::Collateral
                } else {
                    why
                };
                conn.complete(pending, Err(why))
            })
            .collect();
        let waiting = std::mem::take(&mut conn.waiting);
        if !waiting.is_empty() {
            let what = What::Refresh {
                deferreds: waiting,
                covered: 0,
            };
            done.push(Done::unsent(what, why));
        }
        done
    }
}

impl Conn {
    /// Encodes a read of the invalidation log for `deferreds` (the refresh gate is held).
    fn encode_refresh(
        &mut self,
        g: &'static Global,
        l2: &strata_core::l2::L2,
        deferreds: Vec<sys::napi_deferred>,
    ) -> What {
        let (covered, cursor) = g.cache.start_direct_refresh();
        let args = l2.refresh_command(&cursor);
        let args: Vec<&[u8]> = args.iter().map(Vec::as_slice).collect();
        resp::encode_command(&mut self.out, &args);
        self.refreshes += 1;
        self.joinable_refresh = true;
        What::Refresh { deferreds, covered }
    }

    /// A request's outcome; the last refresh in flight takes the refresh gate with it.
    fn complete(&mut self, pending: Pending, outcome: Result<Reply, Failure>) -> Done {
        let mut gate = None;
        if matches!(pending.what, What::Refresh { .. }) {
            self.refreshes = self.refreshes.saturating_sub(1);
            if self.refreshes == 0 {
                gate = self.refresh_gate.take();
                self.joinable_refresh = false;
            }
        }
        Done {
            pending,
            outcome,
            gate,
        }
    }

    /// Tracks a request just encoded into `out`: its deadline, the timer, the loop reference.
    fn track(&mut self, what: What, permit: Permit, op_timeout: Duration) {
        let timeout = u64::try_from(op_timeout.as_millis())
            .unwrap_or(u64::MAX)
            .max(1);
        let now = now_ms();
        self.pending.push_back(Pending {
            what,
            permit: Some(permit),
            deadline: now.saturating_add(timeout),
        });
        self.after_enqueue(timeout);
    }

    fn after_enqueue(&mut self, timeout: u64) {
        if !self.referenced {
            // SAFETY: `self.poll` is initialised and not closed, and this is its loop's thread
            // (the handle invariant on `Conn`).
            unsafe { uv_ref(self.poll) };
            self.referenced = true;
        }
        if !self.timer_armed {
            // SAFETY: `self.timer` likewise (the handle invariant on `Conn`); `on_timer` accepts
            // it (`attach` set its `data`).
            unsafe { uv_timer_start(self.timer, on_timer, timeout, 0) };
            self.timer_armed = true;
        }
    }

    fn after_settle(&mut self) {
        if self.pending.is_empty() && self.referenced {
            // SAFETY: `self.poll` is initialised and not closed, and this is its loop's thread
            // (the handle invariant on `Conn`).
            unsafe { uv_unref(self.poll) };
            self.referenced = false;
        }
    }

    fn write_out(&mut self) -> Result<(), ()> {
        // What is handed to the kernel now can no longer be joined.
        self.joinable_refresh = false;
        while self.written < self.out.len() {
            match (&self.stream).write(&self.out[self.written..]) {
                Ok(0) => return Err(()),
                Ok(n) => self.written += n,
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) if e.kind() == ErrorKind::WouldBlock => {
                    if !self.want_writable {
                        self.want_writable = true;
                        // SAFETY: `self.poll` is initialised and not closed, and this is its
                        // loop's thread (the handle invariant on `Conn`); `on_poll` accepts it.
                        unsafe { uv_poll_start(self.poll, UV_READABLE | UV_WRITABLE, on_poll) };
                    }
                    return Ok(());
                }
                Err(_) => return Err(()),
            }
        }
        if self.out.capacity() > 1 << 20 {
            // After a large value: do not keep its size of buffer for good.
            self.out = Vec::with_capacity(4096);
        } else {
            self.out.clear();
        }
        self.written = 0;
        if self.want_writable {
            self.want_writable = false;
            // SAFETY: as above (the handle invariant on `Conn`; `on_poll` accepts the handle).
            unsafe { uv_poll_start(self.poll, UV_READABLE, on_poll) };
        }
        Ok(())
    }

    /// Reads what the socket has (up to [`READ_BUDGET`]) and parses every complete reply.
    fn read_in(&mut self, done: &mut Vec<Done>) -> Result<(), ()> {
        let fd = self.stream.as_raw_fd();
        let mut budget = READ_BUDGET;
        loop {
            let spare = self.reader.spare();
            let want = spare.len();
            // SAFETY: `spare` is `want` bytes of writable memory that the reader lends us
            // exclusively (`&mut`) until `advance`, and read(2) writes at most `want` bytes
            // (uninitialised memory is fine for it to write). `fd` is `self.stream`'s, open as
            // long as `self` is.
            let n = unsafe { libc::read(fd, spare.as_mut_ptr().cast(), want) };
            if n > 0 {
                let n = n as usize;
                // SAFETY: read(2) returned `n` > 0: it initialised the first `n` bytes of the
                // slice `spare` returned just before, with no other use of the reader in
                // between, which is `advance`'s contract.
                unsafe { self.reader.advance(n) };
                loop {
                    match self.reader.next_reply() {
                        Ok(Some(reply)) => {
                            let Some(pending) = self.pending.pop_front() else {
                                return Err(()); // a reply nobody asked for
                            };
                            done.push(self.complete(pending, Ok(reply)));
                            crate::panic::inject(crate::panic::Place::Poll);
                        }
                        Ok(None) => break,
                        Err(_) => return Err(()),
                    }
                }
                budget = budget.saturating_sub(n);
                if n < want || budget == 0 {
                    // Drained, or enough for one callback: the loop calls again if more waits.
                    return Ok(());
                }
            } else if n == 0 {
                return Err(()); // closed by Redis
            } else {
                match std::io::Error::last_os_error().kind() {
                    ErrorKind::Interrupted => {}
                    ErrorKind::WouldBlock => return Ok(()),
                    _ => return Err(()),
                }
            }
        }
    }

    /// Stops and closes both handles (libuv frees them later, through `free_handle`). Only for a
    /// `Conn` about to be dropped (the handle invariant).
    fn close_handles(&self) {
        // SAFETY: both handles are initialised and not closed yet, and this is their loop's
        // thread (the handle invariant on `Conn`: this is the one call that ends it, on a `Conn`
        // that is dropped right after). They are stopped before the socket closes (when
        // `self.stream` drops, after this), and `free_handle` frees each once libuv is done.
        unsafe {
            uv_poll_stop(self.poll);
            uv_timer_stop(self.timer);
            uv_close(self.poll, Some(free_handle));
            uv_close(self.timer, Some(free_handle));
        }
    }
}

/// The generation a handle belongs to.
///
/// # Safety
/// `handle` must be a handle from [`alloc_handle`] whose `data` [`State::attach`] set, not yet
/// freed (its close callback has not run).
unsafe fn generation_of(handle: *mut UvHandle) -> u64 {
    // SAFETY: `handle` is live memory of a handle (the contract above), whose first field,
    // `data` (a `void*` in every `uv_handle_t`), `attach` set to the generation.
    unsafe { *(handle as *mut *mut c_void) as usize as u64 }
}

/// libuv's poll callback: the socket is readable (or writable, when we asked).
///
/// # Safety
/// Only for libuv, as the callback of a poll handle started in [`State::attach`] or
/// [`Conn::write_out`]: `handle` is that handle, active, so not closed nor freed, and this is
/// its loop's thread.
unsafe extern "C" fn on_poll(handle: *mut UvHandle, status: c_int, events: c_int) {
    // SAFETY: libuv passes one of our poll handles, still active (the contract above): from
    // `alloc_handle`, `data` set by `attach`, not freed, which is what `generation_of` needs.
    let generation = unsafe { generation_of(handle) };
    dispatch(generation, |state| {
        let Link::Up(conn) = &mut state.link else {
            return;
        };
        let mut ok = status >= 0;
        if ok && events & UV_WRITABLE != 0 {
            ok = conn.write_out().is_ok();
        }
        if ok && events & UV_READABLE != 0 {
            ok = conn.read_in(&mut state.ready).is_ok();
        }
        if !ok {
            let failed = state.drop_link(Failure::Broken);
            state.ready.extend(failed);
        }
    });
}

/// libuv's timer callback: the deadline of the oldest request in flight may have passed.
///
/// # Safety
/// Only for libuv, as the callback of a timer handle started in [`Conn::after_enqueue`] or
/// below: `handle` is that handle, not closed nor freed, and this is its loop's thread.
unsafe extern "C" fn on_timer(handle: *mut UvHandle) {
    // SAFETY: libuv passes one of our timer handles, not closed (the contract above): from
    // `alloc_handle`, `data` set by `attach`, not freed, which is what `generation_of` needs.
    let generation = unsafe { generation_of(handle) };
    dispatch(generation, |state| {
        let Link::Up(conn) = &mut state.link else {
            return;
        };
        conn.timer_armed = false;
        crate::panic::inject(crate::panic::Place::Timer);
        // libuv runs timers before polling: after a long JS task the replies may be waiting in
        // the socket already. Take them first; only a reply that did not arrive is late.
        if conn.read_in(&mut state.ready).is_err() {
            let failed = state.drop_link(Failure::Broken);
            state.ready.extend(failed);
            return;
        }
        let now = now_ms();
        // Deadlines follow the queue's order: the first request is the most overdue.
        match conn.pending.front().map(|p| p.deadline) {
            None => {}
            Some(deadline) if deadline <= now => {
                // A reply is overdue: the connection cannot be trusted to be in step any more.
                let failed = state.drop_link(Failure::Timeout);
                state.ready.extend(failed);
            }
            Some(deadline) => {
                // SAFETY: `conn.timer` is initialised and not closed, and this is its loop's
                // thread (the handle invariant on `Conn`); `on_timer` accepts it.
                unsafe {
                    uv_timer_start(conn.timer, on_timer, deadline.saturating_sub(now).max(1), 0)
                };
                conn.timer_armed = true;
            }
        }
    });
}

/// A libuv callback of connection `generation`: `work` (with the state borrowed) puts the
/// requests to settle into `state.ready`; they are settled (their continuations run), then what
/// those queued is written. A panic anywhere in it is contained ([`recover`]).
fn dispatch(generation: u64, work: impl FnOnce(&mut State)) {
    let ran = crate::panic::contain(|| {
        let Some((env, done)) = STATE.with(|cell| {
            let mut slot = cell.borrow_mut();
            let state = slot.as_mut()?;
            if state.generation != generation {
                return None;
            }
            work(state);
            state.dispatching = true;
            Some((state.env, std::mem::take(&mut state.ready)))
        }) else {
            return;
        };
        if !done.is_empty() {
            settle(env, done, Vec::new(), true);
        }
        finish_dispatch();
    });
    if ran.is_none() {
        recover();
    }
}

/// After a panic in a libuv callback: drops the connection (its state may be half-updated) and
/// settles everything it carried, as failures (misses for reads).
fn recover() {
    let _ = crate::panic::contain(|| {
        let taken = STATE.with(|cell| {
            let mut slot = cell.try_borrow_mut().ok()?;
            let state = slot.as_mut()?;
            state.dispatching = false;
            let mut done = std::mem::take(&mut state.ready);
            done.extend(state.drop_link(Failure::Broken));
            let to_runtime = std::mem::take(&mut state.to_runtime);
            Some((state.env, done, to_runtime))
        });
        if let Some((env, done, to_runtime)) = taken {
            settle(env, done, to_runtime, true);
        }
    });
}

/// After settling: writes what the continuations queued, updates the handle's reference.
fn finish_dispatch() {
    let (env, done, to_runtime) = match STATE.with(|cell| {
        let mut slot = cell.borrow_mut();
        let state = slot.as_mut()?;
        state.kick_waiting_refresh();
        state.dispatching = false;
        let done = state.flush();
        if let Link::Up(conn) = &mut state.link {
            conn.after_settle();
        }
        let to_runtime = std::mem::take(&mut state.to_runtime);
        Some((state.env, done, to_runtime))
    }) {
        Some(x) => x,
        None => return,
    };
    if !done.is_empty() || !to_runtime.is_empty() {
        // A write failed (those requests fail: their continuations take the runtime path, the
        // link is down), or refresh calls were handed to the runtime.
        settle(env, done, to_runtime, true);
    }
}

/// Settles `done`, then the `refreshTags` calls in `to_runtime` (which this path could not serve
/// after all) with the promise of one runtime refresh. From a libuv callback (`from_loop`),
/// inside a callback scope, so promise continuations run when it closes; from a JS call,
/// directly (they run after it returns).
fn settle(
    env: sys::napi_env,
    done: Vec<Done>,
    to_runtime: Vec<sys::napi_deferred>,
    from_loop: bool,
) {
    let Ok(g) = crate::global() else { return };
    let (async_ctx, resource_ref) =
        match STATE.with(|cell| cell.borrow().as_ref().map(|s| (s.async_ctx, s.resource))) {
            Some(x) => x,
            None => return,
        };
    let env_ref = Env::from_raw(env);
    // Every deferred settled below was made by `promise` in `env` and is carried by exactly one
    // `What` (or `to_runtime` entry), which this function consumes: each is settled once.
    let mut handle_scope = ptr::null_mut();
    let mut resource = ptr::null_mut();
    let mut scope = ptr::null_mut();
    // SAFETY: `env` is this thread's environment (the `State`'s, or that of the JS call
    // `with_conn` runs in, which `with_conn` checked is the same), and we are on its thread:
    // in a libuv callback (`from_loop`, outside any JS call) or a JS call. The handle scope
    // makes creating values legal from a libuv callback. `resource_ref` is the `State`'s strong
    // reference to its resource object, never deleted (it dies with the environment), and
    // `async_ctx` its `napi_async_init` context; the callback scope runs the microtasks when it
    // closes. Local out-pointers.
    let scoped = unsafe {
        if sys::napi_open_handle_scope(env, &mut handle_scope) != sys::Status::napi_ok {
            return;
        }
        from_loop
            && sys::napi_get_reference_value(env, resource_ref, &mut resource)
                == sys::Status::napi_ok
            && sys::napi_open_callback_scope(env, resource, async_ctx, &mut scope)
                == sys::Status::napi_ok
    };
    js_entry::release_pending(&env_ref);
    for Done {
        pending,
        outcome,
        gate,
    } in done
    {
        let Pending { what, permit, .. } = pending;
        // Redis answered, whatever it said; no answer trips the breaker; a collateral
        // failure says nothing about Redis (the permit is released unreported).
        let reply = match outcome {
            Ok(reply) => {
                if let Some(p) = permit {
                    p.success();
                }
                Ok(reply)
            }
            Err(why) => {
                if let Some(p) = permit {
                    if why == Failure::Collateral {
                        drop(p);
                    } else {
                        p.failure();
                    }
                }
                Err(match why {
                    Failure::Timeout => strata_core::Error::Timeout {
                        op: match what {
                            What::Get { .. } => "get_entry",
                            What::Refresh { .. } => "refresh",
                            What::Set { .. } => "set_entry",
                        },
                        ms: g.cache.l2().map_or(0, |l2| {
                            u64::try_from(l2.op_timeout().as_millis()).unwrap_or(u64::MAX)
                        }),
                    },
                    Failure::Broken => strata_core::Error::Unavailable("connection lost".into()),
                    Failure::Collateral => strata_core::Error::Unavailable(
                        "connection dropped after another request timed out".into(),
                    ),
                })
            }
        };
        match what {
            What::Get {
                deferred,
                key,
                soft_tags,
            } => settle_get(&env_ref, g, deferred, &key, &soft_tags, reply),
            What::Refresh { deferreds, covered } => {
                settle_refresh(&env_ref, g, deferreds, covered, reply)
            }
            What::Set { deferred, l1 } => {
                DIRECT_WRITES.fetch_add(1, Ordering::Relaxed);
                let written = matches!(&reply, Ok(Reply::Simple(ok)) if ok == "OK");
                let value = crate::panic::contain(|| {
                    crate::panic::inject(crate::panic::Place::Settle);
                    let report = g.cache.finish_set(l1, written);
                    crate::set_report_value(&env_ref, g, report)
                });
                match value {
                    Some(v) => {
                        let v = v.map_or_else(|_| undefined(&env_ref), |v| v.raw());
                        // SAFETY: `env` as above, inside the handle scope opened above;
                        // `deferred` is this `What::Set`'s, made in `env`, settled once;
                        // `v` was just created in `env`.
                        unsafe { sys::napi_resolve_deferred(env, deferred, v) };
                    }
                    None => {
                        let err = error_value(&env_ref, &contained_error());
                        // SAFETY: as just above; `err` was just created in `env`.
                        unsafe { sys::napi_reject_deferred(env, deferred, err) };
                    }
                }
            }
        }
        // The refresh is applied: other refreshes may run.
        drop(gate);
    }
    if !to_runtime.is_empty() {
        let value = crate::refresh_on_runtime(&env_ref, g)
            .map_or_else(|_| undefined(&env_ref), |p| p.raw());
        for deferred in to_runtime {
            // SAFETY: `env` as above, inside the handle scope opened above; each deferred
            // was made by `promise` in `env` and moved into `to_runtime` once (out of a
            // `Conn`'s `waiting`), settled only here; `value` was just created in `env`.
            unsafe { sys::napi_resolve_deferred(env, deferred, value) };
        }
    }
    // SAFETY: `scope` and `handle_scope` were opened above in `env`, on this thread, and are
    // closed once, innermost first.
    unsafe {
        if scoped {
            sys::napi_close_callback_scope(env, scope);
        }
        sys::napi_close_handle_scope(env, handle_scope);
    }
}

/// Settles an entry read: the value (judged, promoted), or `null`; never a rejection.
fn settle_get(
    env: &Env,
    g: &'static Global,
    deferred: sys::napi_deferred,
    key: &str,
    soft_tags: &[String],
    reply: strata_core::Result<Reply>,
) {
    let fetched = reply.and_then(|reply| match reply {
        Reply::Bulk(b) => Ok(Some(b)),
        Reply::Nil => Ok(None::<Bytes>),
        Reply::Error(e) => Err(strata_core::Error::Redis(e)),
        _ => Err(strata_core::Error::Redis("unexpected reply to GET".into())),
    });
    DIRECT_READS.fetch_add(1, Ordering::Relaxed);
    let value = crate::panic::contain(|| {
        crate::panic::inject(crate::panic::Place::Settle);
        let lookup = g.cache.finish_remote(key, soft_tags, fetched);
        js_entry::lookup_value(env, lookup)
    });
    let value = match value {
        Some(Ok(v)) => v.raw(),
        // Could not build the value (out of memory in V8?), or a contained panic: a miss.
        Some(Err(_)) | None => null(env),
    };
    // SAFETY: `env` is this thread's environment, in `settle`'s handle scope; `deferred` was made
    // in it by `promise` and carried by exactly one `What::Get`, consumed by `settle`: settled
    // once; `value` was just created in `env`.
    unsafe { sys::napi_resolve_deferred(env.raw(), deferred, value) };
}

/// Settles the `refreshTags` calls a log read served. A full batch (`more`) or a script Redis
/// does not know (`NOSCRIPT`, e.g. after a restart) continues on the runtime, whose promise
/// the calls then follow. A failure resolves them (or rejects them in strict mode), like the
/// runtime path.
fn settle_refresh(
    env: &Env,
    g: &'static Global,
    deferreds: Vec<sys::napi_deferred>,
    covered: u64,
    reply: strata_core::Result<Reply>,
) {
    DIRECT_REFRESHES.fetch_add(1, Ordering::Relaxed);
    let judged = crate::panic::contain(|| {
        crate::panic::inject(crate::panic::Place::Settle);
        judge_refresh(env, g, covered, reply)
    });
    let (value, reject) =
        judged.unwrap_or_else(|| (Ok(error_value(env, &contained_error())), true));
    let value = value.unwrap_or_else(|_| undefined(env));
    for deferred in deferreds {
        // SAFETY: `env` is this thread's environment, in `settle`'s handle scope; each deferred
        // was made in it by `promise` and is in exactly one `What::Refresh`, consumed by
        // `settle`: settled once; `value` was created in `env` during this callback.
        unsafe {
            if reject {
                sys::napi_reject_deferred(env.raw(), deferred, value);
            } else {
                sys::napi_resolve_deferred(env.raw(), deferred, value);
            }
        }
    }
}

/// What a log read's reply means for the `refreshTags` calls it served: the value to settle
/// them with, and whether it is a rejection.
fn judge_refresh(
    env: &Env,
    g: &'static Global,
    covered: u64,
    reply: strata_core::Result<Reply>,
) -> (JsResult<sys::napi_value>, bool) {
    let outcome = reply.and_then(strata_core::l2::L2::parse_refresh_reply);
    match outcome {
        Ok(refresh) => {
            let more = g.cache.apply_refresh(refresh);
            g.cache.finish_direct_refresh(covered, true);
            if more {
                (crate::refresh_on_runtime(env, g).map(|p| p.raw()), false)
            } else {
                (Ok(undefined(env)), false)
            }
        }
        Err(strata_core::Error::Redis(msg)) if msg.starts_with("NOSCRIPT") => {
            (crate::refresh_on_runtime(env, g).map(|p| p.raw()), false)
        }
        Err(e) => {
            if g.cache.finish_direct_refresh(covered, false) {
                (Ok(error_value(env, &e)), true)
            } else {
                (Ok(undefined(env)), false)
            }
        }
    }
}

/// What a contained panic becomes for a promise this path rejects.
fn contained_error() -> strata_core::Error {
    strata_core::Error::Internal("internal error (a panic, contained; see the log)".into())
}

fn null(env: &Env) -> sys::napi_value {
    let mut v = ptr::null_mut();
    // SAFETY: `env` is the environment whose JS call or libuv callback is running on this
    // thread (every `&Env` here is); a local out-pointer.
    unsafe { sys::napi_get_null(env.raw(), &mut v) };
    v
}

fn undefined(env: &Env) -> sys::napi_value {
    let mut v = ptr::null_mut();
    // SAFETY: as in `null`.
    unsafe { sys::napi_get_undefined(env.raw(), &mut v) };
    v
}

/// The JS error of a core error: its code as `err.code`.
fn error_value(env: &Env, e: &strata_core::Error) -> sys::napi_value {
    js_entry::error_object(env, e.code(), &e.to_string())
}

/// Environment teardown: closes the connection; reads in flight are abandoned (their promises
/// belong to the dying environment).
///
/// Safe: it never reads its argument (a cleanup hook, called by Node on this thread).
extern "C" fn teardown_env(_arg: *mut c_void) {
    // Nothing may unwind into libuv/Node (see `panic.rs`).
    let _ = crate::panic::contain(|| {
        let state = STATE.with(|cell| cell.borrow_mut().take());
        if let Some(mut state) = state {
            if let Link::Up(conn) = std::mem::replace(
                &mut state.link,
                Link::Down {
                    retry_at: Instant::now(),
                },
            ) {
                conn.close_handles();
                // The permits of the abandoned reads drop unreported (see `Permit`).
            }
        }
    });
}
