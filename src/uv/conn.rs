//! This thread's direct connection: its state (down, connecting, up), the socket registered with
//! libuv (`uv_poll` for I/O, a `uv_timer` for deadlines), the queue of requests in flight, and
//! the libuv callbacks that read, write and time out.

use std::cell::RefCell;
use std::collections::VecDeque;
use std::ffi::{c_int, c_void};
use std::io::{ErrorKind, Write};
use std::net::TcpStream;
use std::os::fd::AsRawFd;
use std::ptr;
use std::sync::atomic::Ordering;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use napi::bindgen_prelude::{spawn, Env};
use napi::sys;
use parking_lot::Mutex;

use strata_core::breaker::State as BreakerState;
use strata_core::l2::protocol::{Call, Failure};
use strata_core::l2::DirectTarget;
use strata_core::resp::{Reader, Reply};

use super::ffi::{
    alloc_handle, free_handle, now_ms, uv_close, uv_poll_init, uv_poll_start, uv_poll_stop, uv_ref,
    uv_timer_init, uv_timer_start, uv_timer_stop, uv_unref, UvHandle, UV_POLL, UV_READABLE,
    UV_TIMER, UV_WRITABLE,
};
use super::settle::{settle, Done, Pending, What};
use super::DIRECT_CONNECTS;
use crate::js_entry::RawValue;
use crate::{check, Global, JsResult};

/// The most one libuv callback reads before returning to the loop (which calls it again at once
/// if more is waiting: libuv's poll is level-triggered), so that timers run in between.
const READ_BUDGET: usize = 4 * 1024 * 1024;

/// After a failed connect, reads use the runtime for this long before the next attempt.
const RETRY_AFTER: Duration = Duration::from_millis(250);

thread_local! {
    /// This thread's environment's state (Node runs one environment per thread).
    pub(super) static STATE: RefCell<Option<State>> = const { RefCell::new(None) };
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

pub(super) struct State {
    env: sys::napi_env,
    lp: *mut sys::uv_loop_s,
    /// For the callback scope that settles promises from a libuv callback.
    pub(super) async_ctx: sys::napi_async_context,
    pub(super) resource: sys::napi_ref,
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

pub(super) enum Link {
    Down { retry_at: Instant },
    Connecting(Arc<Mutex<Option<strata_core::Result<TcpStream>>>>),
    Up(Box<Conn>),
}

/// One direct connection. Handle invariant (the `SAFETY` notes rely on it): `poll` and `timer`
/// are initialised handles of this thread's loop from [`State::attach`] until
/// [`Conn::close_handles`], which is only called on a `Conn` about to be dropped; a `Conn` lives
/// in this thread's [`STATE`], so it is only touched on the loop's own thread.
pub(super) struct Conn {
    stream: TcpStream,
    poll: *mut UvHandle,
    timer: *mut UvHandle,
    reader: Reader,
    pub(super) out: Vec<u8>,
    pub(super) written: usize,
    pub(super) pending: VecDeque<Pending>,
    want_writable: bool,
    referenced: bool,
    timer_armed: bool,
    /// Held while refreshes are in flight here, so no other refresh interleaves with them.
    pub(super) refresh_gate: Option<RefreshGate>,
    /// Refreshes in flight.
    pub(super) refreshes: usize,
    /// The last request is a refresh not written yet (a `refreshTags` call may join it).
    pub(super) joinable_refresh: bool,
    /// `refreshTags` calls made while a refresh was in flight: served by one more read once it
    /// is back (so at most one read is in flight and one waits, as on the runtime path).
    pub(super) waiting: Vec<sys::napi_deferred>,
}

pub(super) type RefreshGate = tokio::sync::MutexGuard<'static, ()>;

/// What a request maker did.
pub(super) enum Made {
    /// A new request, encoded: track it.
    Request(What, Call, RawValue),
    /// Nothing to track: the promise to return (one that joined a request not written yet, or
    /// one settled already).
    Answer(RawValue),
}

/// Runs `make` with this thread's connection when it is up; `make` encodes one request into
/// the connection's output and returns what to track, or `None` to leave it to the runtime.
pub(super) fn with_conn<F>(env: &Env, g: &'static Global, make: F) -> JsResult<Option<RawValue>>
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
        let (what, call, promise) = match make(conn, l2, raw)? {
            None => return Ok(None),
            Some(Made::Answer(value)) => return Ok(Some((value, Vec::new()))),
            Some(Made::Request(what, call, promise)) => (what, call, promise),
        };
        conn.track(what, call);
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
        let gate = g.cache.try_refresh_gate();
        let call = gate.as_ref().and_then(|_| l2.begin("refresh").ok());
        let (Some(gate), Some(call)) = (gate, call) else {
            self.to_runtime.extend(waiting);
            return;
        };
        conn.refresh_gate = Some(gate);
        match conn.encode_refresh(g, l2, waiting) {
            Ok(what) => conn.track(what, call),
            Err(waiting) => {
                conn.refresh_gate = None;
                self.to_runtime.extend(waiting);
            }
        }
    }

    /// Writes what is queued; on failure drops the connection (its reads are returned).
    fn flush(&mut self) -> Vec<Done> {
        let Link::Up(conn) = &mut self.link else {
            return Vec::new();
        };
        match conn.write_out() {
            Ok(()) => Vec::new(),
            Err(()) => self.drop_link(lost()),
        }
    }

    /// Drops the connection; every read in flight fails with `why` (for [`Failure::Timeout`]:
    /// those past their deadline; the others are [`Failure::Collateral`]). The next read
    /// connects anew (once the breaker is closed), so a restarted Redis is found at once.
    pub(super) fn drop_link(&mut self, why: Failure) -> Vec<Done> {
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
                let why = failure_of(&why, pending.deadline, now);
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
    /// Encodes a read of the invalidation log for `deferreds` (the refresh gate is held), or
    /// hands them back when the read cannot start here (see [`Cache::start_refresh`]).
    ///
    /// [`Cache::start_refresh`]: strata_core::cache::Cache::start_refresh
    pub(super) fn encode_refresh(
        &mut self,
        g: &'static Global,
        l2: &strata_core::l2::L2,
        deferreds: Vec<sys::napi_deferred>,
    ) -> Result<What, Vec<sys::napi_deferred>> {
        // One call for the whole batch of deferreds: one registration covers them.
        g.cache.register_refresh();
        let (covered, cursor) = g.cache.start_refresh();
        let Ok(cursor) = cursor else {
            return Err(deferreds);
        };
        l2.refresh_command(&cursor).encode(&mut self.out);
        self.refreshes += 1;
        self.joinable_refresh = true;
        Ok(What::Refresh { deferreds, covered })
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

    /// Tracks a request just encoded into `out`: its deadline (the call's, set by the core, in
    /// libuv's clock), the timer, the loop reference.
    fn track(&mut self, what: What, call: Call) {
        let left = call
            .deadline()
            .saturating_duration_since(tokio::time::Instant::now());
        let timeout = u64::try_from(left.as_millis()).unwrap_or(u64::MAX).max(1);
        self.pending.push_back(Pending {
            what,
            call: Some(call),
            deadline: now_ms().saturating_add(timeout),
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

/// What a request in flight fails with when its connection is dropped for `why` at `now`: a
/// timeout drops every request on the connection, but only those past their deadline timed
/// out; the others are collateral (they say nothing about Redis, see `Call::end`).
fn failure_of(why: &Failure, deadline: u64, now: u64) -> Failure {
    if *why == Failure::Timeout && deadline > now {
        Failure::Collateral
    } else {
        why.clone()
    }
}

/// The connection broke (or was closed, or sent what is not RESP, or a panic left it
/// half-updated).
fn lost() -> Failure {
    Failure::Broken("connection lost".to_owned())
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
            let failed = state.drop_link(lost());
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
            let failed = state.drop_link(lost());
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
            done.extend(state.drop_link(lost()));
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_overdue_requests_time_out_when_a_connection_is_dropped() {
        assert_eq!(failure_of(&Failure::Timeout, 100, 100), Failure::Timeout);
        assert_eq!(failure_of(&Failure::Timeout, 99, 100), Failure::Timeout);
        assert_eq!(failure_of(&Failure::Timeout, 101, 100), Failure::Collateral);
        // A broken connection fails everything on it, overdue or not.
        assert_eq!(failure_of(&lost(), 101, 100), lost());
        assert_eq!(
            failure_of(&Failure::Collateral, 1, 100),
            Failure::Collateral
        );
    }
}
