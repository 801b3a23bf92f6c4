//! Settling what the connection answered: each call ended by the core ([`Call::end`]: the
//! breaker's report, whether to reconnect), its reply judged by the core (the second halves of
//! `Cache`'s operations), and its promise resolved (a failed read is a miss, never a rejection).

use std::ptr;
use std::sync::atomic::Ordering;

use napi::bindgen_prelude::Env;
use napi::sys;

use strata_core::l2::protocol::{is_noscript, Call, Failure};
use strata_core::resp::Reply;
use strata_core::store::SetOutcome;

use super::conn::{RefreshGate, STATE};
use super::{DIRECT_READS, DIRECT_REFRESHES, DIRECT_WRITES};
use crate::check;
use crate::js_entry::{self, RawValue};
use crate::{Global, JsResult};

pub(super) struct Pending {
    pub(super) what: What,
    /// `None` for refresh calls that waited for a read and lost their connection first.
    pub(super) call: Option<Call>,
    /// In [`now_ms`](super::ffi::now_ms)'s clock.
    pub(super) deadline: u64,
}

pub(super) enum What {
    /// An entry's `GET`.
    Get {
        deferred: sys::napi_deferred,
        key: String,
        soft_tags: Vec<String>,
    },
    /// A read of the invalidation log (`EVALSHA` of `refresh.lua`) serving every `refreshTags`
    /// call that joined it before it was written; `covered`: see
    /// [`strata_core::cache::Cache::start_refresh`].
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

/// A request to settle, once the state is no longer borrowed.
pub(super) struct Done {
    pub(super) pending: Pending,
    pub(super) outcome: Result<Reply, Failure>,
    /// The refresh gate, released once this (the connection's last refresh) is applied.
    pub(super) gate: Option<RefreshGate>,
}

impl Done {
    /// Calls that never got a request of their own (no call, no deadline), failing with `why`.
    pub(super) fn unsent(what: What, why: Failure) -> Done {
        Done {
            pending: Pending {
                what,
                call: None,
                deadline: 0,
            },
            outcome: Err(why),
            gate: None,
        }
    }
}

/// A new promise and its deferred, in `env`: the environment of the JS call running on this
/// thread (the `make` closures of [`with_conn`], its only callers, pass the `raw` it gives them).
///
/// [`with_conn`]: super::conn::with_conn
pub(super) fn promise(env: sys::napi_env) -> JsResult<(sys::napi_deferred, RawValue)> {
    let mut deferred = ptr::null_mut();
    let mut promise = ptr::null_mut();
    // SAFETY: `env` is the environment of the JS call running on this thread (see above);
    // local out-pointers.
    check(unsafe { sys::napi_create_promise(env, &mut deferred, &mut promise) })?;
    Ok((deferred, RawValue::from_raw(promise)))
}

/// A promise already settled with `outcome` (resolved with `Ok`, rejected with `Err`), in `env`
/// (as for [`promise`]): for a request answered without a round trip, so that the export still
/// returns a promise. The value was created in `env` during this call.
pub(super) fn settled(
    env: sys::napi_env,
    outcome: Result<sys::napi_value, sys::napi_value>,
) -> JsResult<RawValue> {
    let (deferred, promise) = promise(env)?;
    // SAFETY: `env` is the environment of the JS call running on this thread (as for
    // `promise`); `deferred` was made in it just above and is settled only here, once; the
    // value was created in it during this call (the contract above).
    unsafe {
        match outcome {
            Ok(value) => sys::napi_resolve_deferred(env, deferred, value),
            Err(error) => sys::napi_reject_deferred(env, deferred, error),
        };
    }
    Ok(promise)
}

/// Settles `done`, then the `refreshTags` calls in `to_runtime` (which this path could not serve
/// after all) with the promise of one runtime refresh. From a libuv callback (`from_loop`),
/// inside a callback scope, so promise continuations run when it closes; from a JS call,
/// directly (they run after it returns).
pub(super) fn settle(
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
    let mut done = done;
    // A reply that asks for a new connection (READONLY: see `Call::end`) drops it now, before
    // the callback scope closes and continuations could queue requests on it; what was still
    // on it is settled here too, as collateral.
    while settle_done(env, &env_ref, g, done) {
        done = STATE.with(|cell| {
            cell.borrow_mut()
                .as_mut()
                .map(|state| state.drop_link(Failure::Collateral))
                .unwrap_or_default()
        });
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

/// Settles each of `done` (in `settle`'s scopes); `true` when a reply asked for a new
/// connection.
fn settle_done(env: sys::napi_env, env_ref: &Env, g: &'static Global, done: Vec<Done>) -> bool {
    let mut reconnect = false;
    for Done {
        pending,
        outcome,
        gate,
    } in done
    {
        let Pending { what, call, .. } = pending;
        // The core ends the call: the breaker's report, and whether the connection can stay.
        let reply = match call {
            Some(call) => {
                // A failure dropped the connection already; a reply may ask for it (READONLY).
                let answered = outcome.is_ok();
                let ended = call.end(outcome);
                reconnect |= answered && ended.reconnect;
                ended.reply
            }
            None => Err(strata_core::Error::Unavailable("connection lost".into())),
        };
        match what {
            What::Get {
                deferred,
                key,
                soft_tags,
            } => settle_get(env_ref, g, deferred, &key, &soft_tags, reply),
            What::Refresh { deferreds, covered } => {
                settle_refresh(env_ref, g, deferreds, covered, reply)
            }
            What::Set { deferred, l1 } => {
                DIRECT_WRITES.fetch_add(1, Ordering::Relaxed);
                let value = crate::panic::contain(|| {
                    crate::panic::inject(crate::panic::Place::Settle);
                    let report = g.cache.finish_set(l1, reply);
                    crate::set_report_value(env_ref, g, report)
                });
                match value {
                    Some(v) => {
                        let v = v.map_or_else(|_| undefined(env_ref), |v| v.raw());
                        // SAFETY: `env` as above, inside the handle scope opened above;
                        // `deferred` is this `What::Set`'s, made in `env`, settled once;
                        // `v` was just created in `env`.
                        unsafe { sys::napi_resolve_deferred(env, deferred, v) };
                    }
                    None => {
                        let err = error_value(env_ref, &crate::panic::contained_error());
                        // SAFETY: as just above; `err` was just created in `env`.
                        unsafe { sys::napi_reject_deferred(env, deferred, err) };
                    }
                }
            }
        }
        // The refresh is applied: other refreshes may run.
        drop(gate);
    }
    reconnect
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
    DIRECT_READS.fetch_add(1, Ordering::Relaxed);
    let value = crate::panic::contain(|| {
        crate::panic::inject(crate::panic::Place::Settle);
        let lookup = g.cache.finish_get(key, soft_tags, reply);
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
/// does not know (`NOSCRIPT`, e.g. after a restart: the runtime sends it as `EVAL`) continues
/// on the runtime, whose promise the calls then follow. A failure resolves them (or rejects them in strict mode), like the
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
        judged.unwrap_or_else(|| (Ok(error_value(env, &crate::panic::contained_error())), true));
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
    if matches!(&reply, Err(e) if is_noscript(e)) {
        return (crate::refresh_on_runtime(env, g).map(|p| p.raw()), false);
    }
    let applied = g.cache.apply_refresh_reply(reply);
    let more = matches!(applied, Ok(Some(_)));
    match g.cache.end_refresh(covered, applied.map(|_| ())) {
        Err(e) => (Ok(error_value(env, &e)), true),
        Ok(()) if more => (crate::refresh_on_runtime(env, g).map(|p| p.raw()), false),
        Ok(()) => (Ok(undefined(env)), false),
    }
}

/// `null`, or a null pointer (which napi refuses as a value) if even that failed.
fn null(env: &Env) -> sys::napi_value {
    js_entry::null(env).map_or(ptr::null_mut(), |v| v.raw())
}

/// `undefined`, likewise.
fn undefined(env: &Env) -> sys::napi_value {
    js_entry::undefined(env).map_or(ptr::null_mut(), |v| v.raw())
}

/// The JS error of a core error: its code as `err.code`.
pub(super) fn error_value(env: &Env, e: &strata_core::Error) -> sys::napi_value {
    js_entry::error_object(env, e.code(), &e.to_string())
}
