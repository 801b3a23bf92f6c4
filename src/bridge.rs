//! A cheaper way back from the runtime for the hot async calls (L2 reads).
//!
//! napi-rs resolves each `async fn` through a threadsafe function created for that one call;
//! creating and tearing one down costs several µs per call, about as much as the Redis round
//! trip of a small value. Here one threadsafe function serves the whole process: a finished call
//! pushes its result into a queue, the first push into an empty queue wakes the main thread, and
//! the main thread settles every queued promise in one go (so under load one wake-up serves many
//! calls). Only the environment that owns the shared entry objects (`js_entry::is_owner`) uses
//! it; any other environment gets `null` and takes the regular napi-rs path.

use std::ffi::c_void;
use std::future::Future;
use std::ptr;
use std::sync::atomic::{AtomicUsize, Ordering};

use napi::bindgen_prelude::*;
use napi::sys;
use parking_lot::Mutex;

use crate::js_entry::{self, RawValue};
use crate::{internal, JsResult};

/// What a finished call hands back: run on the main thread, it makes the promise's value (or
/// its rejection).
pub type Settle = Box<dyn FnOnce(&Env) -> JsResult<RawValue> + Send>;

struct Done {
    /// The call's `napi_deferred`, only ever used on the main thread.
    deferred: usize,
    settle: Settle,
}

/// The process's threadsafe function (as an address; 0 = not created).
static TSFN: AtomicUsize = AtomicUsize::new(0);
/// Results waiting for the main thread.
static QUEUE: Mutex<Vec<Done>> = Mutex::new(Vec::new());
/// Calls submitted and not yet settled (main thread only; atomic for `static`).
static IN_FLIGHT: AtomicUsize = AtomicUsize::new(0);

fn check(status: sys::napi_status) -> JsResult<()> {
    if status == sys::Status::napi_ok {
        Ok(())
    } else {
        Err(internal(format!("napi call failed with status {status}")))
    }
}

unsafe fn ensure_tsfn(env: sys::napi_env) -> JsResult<sys::napi_threadsafe_function> {
    let existing = TSFN.load(Ordering::Acquire);
    if existing != 0 {
        return Ok(existing as sys::napi_threadsafe_function);
    }
    let mut name = ptr::null_mut();
    check(sys::napi_create_string_utf8(
        env,
        c"strata-cache".as_ptr(),
        12,
        &mut name,
    ))?;
    let mut tsfn = ptr::null_mut();
    check(sys::napi_create_threadsafe_function(
        env,
        ptr::null_mut(),
        ptr::null_mut(),
        name,
        0,
        1,
        ptr::null_mut(),
        None,
        ptr::null_mut(),
        Some(settle_queued),
        &mut tsfn,
    ))?;
    // Idle, it must not keep the process alive; `submit` refs it while calls are in flight.
    check(sys::napi_unref_threadsafe_function(env, tsfn))?;
    TSFN.store(tsfn as usize, Ordering::Release);
    Ok(tsfn)
}

/// Runs `fut` on the runtime and returns a promise of its result, or `None` when this
/// environment cannot use the bridge (the caller then takes the napi-rs path).
pub fn submit<F>(env: &Env, fut: F) -> JsResult<Option<RawValue>>
where
    F: Future<Output = Settle> + Send + 'static,
{
    if !js_entry::is_owner(env) {
        return Ok(None);
    }
    let raw = env.raw();
    // SAFETY: plain napi calls on the live environment of this (main-thread) call.
    let (deferred, promise) = unsafe {
        let tsfn = ensure_tsfn(raw)?;
        let mut deferred = ptr::null_mut();
        let mut promise = ptr::null_mut();
        check(sys::napi_create_promise(raw, &mut deferred, &mut promise))?;
        if IN_FLIGHT.fetch_add(1, Ordering::Relaxed) == 0 {
            check(sys::napi_ref_threadsafe_function(raw, tsfn))?;
        }
        (deferred as usize, promise)
    };
    spawn(async move {
        let settle = fut.await;
        let wake = {
            let mut queue = QUEUE.lock();
            queue.push(Done { deferred, settle });
            queue.len() == 1
        };
        if wake {
            let tsfn = TSFN.load(Ordering::Acquire) as sys::napi_threadsafe_function;
            // SAFETY: the threadsafe function lives as long as the environment; a call after
            // its teardown returns napi_closing and is dropped with it.
            unsafe {
                sys::napi_call_threadsafe_function(
                    tsfn,
                    ptr::null_mut(),
                    sys::ThreadsafeFunctionCallMode::nonblocking,
                );
            }
        }
    });
    Ok(Some(RawValue::from_raw(promise)))
}

unsafe extern "C" fn settle_queued(
    env: sys::napi_env,
    _js_callback: sys::napi_value,
    _context: *mut c_void,
    _data: *mut c_void,
) {
    if env.is_null() {
        // The environment is being torn down: nothing can be settled any more.
        return;
    }
    let done = std::mem::take(&mut *QUEUE.lock());
    let settled = done.len();
    let env_ref = Env::from_raw(env);
    js_entry::release_pending(&env_ref);
    for Done { deferred, settle } in done {
        let deferred = deferred as sys::napi_deferred;
        match settle(&env_ref) {
            Ok(v) => {
                sys::napi_resolve_deferred(env, deferred, v.raw());
            }
            Err(e) => {
                let mut msg = ptr::null_mut();
                let mut err = ptr::null_mut();
                let text = format!("[{}] {}", e.status.as_ref(), e.reason);
                sys::napi_create_string_utf8(
                    env,
                    text.as_ptr().cast(),
                    text.len() as isize,
                    &mut msg,
                );
                sys::napi_create_error(env, ptr::null_mut(), msg, &mut err);
                sys::napi_reject_deferred(env, deferred, err);
            }
        }
    }
    let before = IN_FLIGHT.fetch_sub(settled, Ordering::Relaxed);
    if before == settled {
        let tsfn = TSFN.load(Ordering::Acquire) as sys::napi_threadsafe_function;
        sys::napi_unref_threadsafe_function(env, tsfn);
    }
}
