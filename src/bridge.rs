//! The way back from the runtime for the async calls (L2 reads and writes, tag refreshes).
//!
//! napi-rs resolves each `async fn` through a threadsafe function created for that one call;
//! creating and tearing one down costs several µs per call, about as much as the Redis round
//! trip of a small value. Here one threadsafe function serves each environment (the main thread,
//! or a worker thread that loaded the addon too): a finished call pushes its result into the
//! environment's queue, the first push into an empty queue wakes that thread, and the thread
//! settles every queued promise in one go (so under load one wake-up serves many calls).

use std::collections::HashMap;
use std::ffi::c_void;
use std::future::Future;
use std::ptr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use napi::bindgen_prelude::*;
use napi::sys;
use parking_lot::Mutex;

use crate::js_entry::{self, RawValue};
use crate::panic::{self, catching, contained, Place};
use crate::{check, internal, JsResult};

/// What a finished call hands back: run on the environment's thread, it makes the promise's
/// value (or its rejection).
pub type Settle = Box<dyn FnOnce(&Env) -> JsResult<RawValue> + Send>;

struct Done {
    /// The call's `napi_deferred`, only ever used on its environment's thread.
    deferred: usize,
    settle: Settle,
}

/// One environment's bridge.
struct Bridge {
    /// Its threadsafe function (as an address).
    tsfn: usize,
    /// Results waiting for the environment's thread; `closed` once the threadsafe function is
    /// finalized (environment teardown), after which it must not be called.
    queue: Mutex<Queue>,
    /// Calls submitted and not yet settled (touched on the environment's thread only).
    in_flight: AtomicUsize,
}

#[derive(Default)]
struct Queue {
    done: Vec<Done>,
    closed: bool,
}

/// Environment address → its bridge.
static BRIDGES: Mutex<Option<HashMap<usize, Arc<Bridge>>>> = Mutex::new(None);

/// `env`'s bridge, made on first use. `env` is `submit`'s (its only caller): the environment of
/// the JS call running on this thread.
fn bridge_for(env: sys::napi_env) -> JsResult<Arc<Bridge>> {
    if let Some(b) = BRIDGES.lock().as_ref().and_then(|m| m.get(&(env as usize))) {
        return Ok(Arc::clone(b));
    }
    let mut name = ptr::null_mut();
    // SAFETY: `env` is the environment of the JS call running on this thread (see above); the
    // name is a NUL-terminated literal of 12 bytes; a local out-pointer.
    check(unsafe { sys::napi_create_string_utf8(env, c"strata-cache".as_ptr(), 12, &mut name) })?;
    let slot = Arc::new(Mutex::new(None::<Arc<Bridge>>));
    // One reference to the slot, leaked for napi: `settle_queued` borrows it as the function's
    // context, `drop_context` (its finalizer) releases it.
    let context = Arc::into_raw(Arc::clone(&slot)) as *mut c_void;
    let mut tsfn = ptr::null_mut();
    // SAFETY: `env` as above; `name` was just created in it. `context` stays valid until
    // `drop_context` releases it, and napi calls `settle_queued` only before that finalizer,
    // which is what both callbacks' contracts ask.
    let status = unsafe {
        sys::napi_create_threadsafe_function(
            env,
            ptr::null_mut(),
            ptr::null_mut(),
            name,
            0,
            1,
            context,
            Some(drop_context),
            context,
            Some(settle_queued),
            &mut tsfn,
        )
    };
    if status != sys::Status::napi_ok {
        // SAFETY: no threadsafe function was made, so napi never calls `drop_context` with
        // `context` (Node deletes a half-made one without finalizing it): this is the only
        // release of the reference leaked above.
        drop(unsafe { Arc::from_raw(context as *const Mutex<Option<Arc<Bridge>>>) });
        return Err(internal(format!("napi call failed with status {status}")));
    }
    // Idle, it must not keep the process alive; `submit` refs it while calls are in flight.
    // SAFETY: `tsfn` was just made in `env`, on this thread, and is not finalized before the
    // environment's teardown.
    check(unsafe { sys::napi_unref_threadsafe_function(env, tsfn) })?;
    let bridge = Arc::new(Bridge {
        tsfn: tsfn as usize,
        queue: Mutex::new(Queue::default()),
        in_flight: AtomicUsize::new(0),
    });
    *slot.lock() = Some(Arc::clone(&bridge));
    BRIDGES
        .lock()
        .get_or_insert_with(HashMap::new)
        .insert(env as usize, Arc::clone(&bridge));
    // SAFETY: `env` as above. The (hook, env) pair is added once per environment (napi aborts
    // on a duplicate): only when `env` had no bridge, and `forget_env` forgets it only at the
    // environment's teardown.
    check(unsafe { sys::napi_add_env_cleanup_hook(env, Some(forget_env), env as *mut c_void) })?;
    Ok(bridge)
}

/// The environment's cleanup hook. Safe: it uses its argument only as a map key.
extern "C" fn forget_env(env: *mut c_void) {
    // Nothing may unwind into libuv/Node (see `panic.rs`).
    let _ = crate::panic::contain(|| {
        if let Some(m) = BRIDGES.lock().as_mut() {
            m.remove(&(env as usize));
        }
    });
}

/// The threadsafe function's finalizer (at the environment's teardown): releases its context
/// and closes the bridge's queue.
///
/// # Safety
/// Only for napi, as the finalizer of a threadsafe function made in [`bridge_for`]: `data` is
/// the reference to the slot that `bridge_for` leaked for it, and napi calls this once, after
/// its last call of [`settle_queued`].
unsafe extern "C" fn drop_context(_env: sys::napi_env, data: *mut c_void, _hint: *mut c_void) {
    // Nothing may unwind into libuv/Node (see `panic.rs`).
    let _ = crate::panic::contain(|| {
        // SAFETY: `data` is the reference `bridge_for` leaked with `Arc::into_raw` for this one
        // finalizer call (the contract above): this is its only release.
        let slot = unsafe { Arc::from_raw(data as *const Mutex<Option<Arc<Bridge>>>) };
        let taken = slot.lock().take();
        if let Some(bridge) = taken {
            // Taking the queue's lock waits for a runtime thread that is calling the threadsafe
            // function right now; every later completion sees `closed` and drops its result.
            let mut queue = bridge.queue.lock();
            queue.closed = true;
            queue.done.clear();
        }
    });
}

/// Runs `fut` on the runtime and returns a promise of what its [`Settle`] makes.
pub fn submit<F>(env: &Env, fut: F) -> JsResult<RawValue>
where
    F: Future<Output = Settle> + Send + 'static,
{
    let raw = env.raw();
    let bridge = bridge_for(raw)?;
    let tsfn = bridge.tsfn as sys::napi_threadsafe_function;
    let mut deferred = ptr::null_mut();
    let mut promise = ptr::null_mut();
    // SAFETY: `raw` is the environment of the JS call running on this thread (`env`); `tsfn` is
    // its bridge's function (BRIDGES is keyed by environment), finalized only at the
    // environment's teardown, which cannot happen during this call. Local out-pointers.
    unsafe {
        check(sys::napi_create_promise(raw, &mut deferred, &mut promise))?;
        if bridge.in_flight.fetch_add(1, Ordering::Relaxed) == 0 {
            check(sys::napi_ref_threadsafe_function(raw, tsfn))?;
        }
    }
    let deferred = deferred as usize;
    let fut = catching(async move {
        panic::inject(Place::Task);
        fut.await
    });
    spawn(async move {
        // A task that panicked still settles its promise: rejected, STRATA_INTERNAL.
        let settle = fut
            .await
            .unwrap_or_else(|()| Box::new(|_: &Env| Err(contained())));
        let mut queue = bridge.queue.lock();
        if queue.closed {
            return;
        }
        queue.done.push(Done { deferred, settle });
        if queue.done.len() == 1 {
            // SAFETY: `closed` is false under the queue's lock, so `drop_context` has not run for
            // this function, and cannot finish (it takes this lock) before this call returns:
            // the function is alive. napi allows calling it from any thread.
            unsafe {
                sys::napi_call_threadsafe_function(
                    bridge.tsfn as sys::napi_threadsafe_function,
                    ptr::null_mut(),
                    sys::ThreadsafeFunctionCallMode::nonblocking,
                );
            }
        }
    });
    Ok(RawValue::from_raw(promise))
}

/// The threadsafe function's `call_js` callback: settles every queued promise, on the
/// environment's thread.
///
/// # Safety
/// Only for napi, as the `call_js` callback of a threadsafe function made in [`bridge_for`]:
/// `env` is that function's environment (or null at teardown) and this its thread, inside the
/// handle scope napi opens for the call; `context` is the slot leaked there (or null), which
/// napi keeps valid by calling [`drop_context`] only after the last call of this.
unsafe extern "C" fn settle_queued(
    env: sys::napi_env,
    _js_callback: sys::napi_value,
    context: *mut c_void,
    _data: *mut c_void,
) {
    if env.is_null() || context.is_null() {
        // The environment is being torn down: nothing can be settled any more.
        return;
    }
    // SAFETY: `context` is the slot `bridge_for` leaked for this function, released only by
    // `drop_context` after napi's last call of this one (the contract above): it outlives this
    // borrow, and is only ever shared (`Mutex`).
    let slot = unsafe { &*(context as *const Mutex<Option<Arc<Bridge>>>) };
    let Some(bridge) = slot.lock().clone() else {
        return;
    };
    let done = std::mem::take(&mut bridge.queue.lock().done);
    let settled = done.len();
    let env_ref = Env::from_raw(env);
    js_entry::release_pending(&env_ref);
    for Done { deferred, settle } in done {
        let deferred = deferred as sys::napi_deferred;
        let value = panic::contain(|| {
            panic::inject(Place::Settle);
            settle(&env_ref)
        });
        // Each `deferred` was made by `submit` in this environment (every environment has its
        // own bridge and queue) and leaves the queue once, here: it is settled exactly once.
        match value.unwrap_or_else(|| Err(contained())) {
            Ok(v) => {
                // SAFETY: `env` is live on this thread (the contract above); `deferred` as said
                // above; `v` was made by `settle` in `env` during this callback.
                unsafe { sys::napi_resolve_deferred(env, deferred, v.raw()) };
            }
            Err(e) => {
                let err = js_entry::error_object(&env_ref, e.status.as_ref(), &e.reason);
                // SAFETY: as above; `err` was just created in `env`.
                unsafe { sys::napi_reject_deferred(env, deferred, err) };
            }
        }
    }
    if settled > 0 && bridge.in_flight.fetch_sub(settled, Ordering::Relaxed) == settled {
        // SAFETY: `bridge.tsfn` is the function napi is calling us for, made in `env`, on this
        // thread; it is not finalized while it runs its callback.
        unsafe {
            sys::napi_unref_threadsafe_function(env, bridge.tsfn as sys::napi_threadsafe_function)
        };
    }
}
