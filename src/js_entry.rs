//! Handing stored entries to JS without a copy per hit, and taking chunks from JS with one copy.
//!
//! Each L1 entry gets at most one JS object `{ value, tags, stale, timestamp, expire, revalidate }`
//! whose `value` is an *external* Buffer over the entry's Rust-owned bytes (the finalizer drops
//! a refcount on them). The object is created on the entry's first hit and kept alive by a napi
//! reference until the entry leaves L1; every hit hands out the same object, so a hit costs a
//! hash lookup and no allocation proportional to the value. Entries of at most 16 KiB are
//! handed a plain copy the first time, and get their shared object only if read again (many
//! entries are read once, and a retained object costs more than copying a small value).
//!
//! Why one Buffer per entry and not one per hit: V8 keeps a registry of backing stores by
//! address and aborts the process if two live external buffers share one (nodejs/node#32463).
//!
//! napi references belong to one environment (the main thread's, or a worker's). The first
//! environment that reads an entry owns the shared objects; any other environment (a worker
//! thread loading the addon too) gets a copy per hit instead, which is always safe.
//!
//! What the `SAFETY` notes here rest on: every `&Env` handed to a function of this module is the
//! environment of the JS call or callback running on this thread right now (napi-rs makes one
//! per `#[napi]` call; `bridge.rs` and `uv/` make one for the environment whose
//! callback is running), inside that call's handle scope; every [`RawValue`] was created in
//! that environment during that scope. Out-pointers handed to napi are always locals.

use std::collections::HashMap;
use std::ffi::c_void;
use std::ptr;
use std::sync::atomic::{AtomicUsize, Ordering};

use bytes::Bytes;
use napi::bindgen_prelude::*;
use napi::sys;
use parking_lot::Mutex;

use strata_core::entry::Entry;
use strata_core::store::Lookup;

use crate::JsResult;

/// A raw JS value returned as is.
pub struct RawValue(sys::napi_value);

impl RawValue {
    /// Wraps a value created in the current call's environment (callers guarantee it: the
    /// module's `SAFETY` notes rely on it).
    pub fn from_raw(value: sys::napi_value) -> Self {
        Self(value)
    }
    /// The underlying value.
    pub fn raw(&self) -> sys::napi_value {
        self.0
    }
}

impl TypeName for RawValue {
    fn type_name() -> &'static str {
        "unknown"
    }
    fn value_type() -> ValueType {
        ValueType::Unknown
    }
}

impl ToNapiValue for RawValue {
    /// # Safety
    /// napi-rs' contract: `env` is the environment of the call returning `val`. Nothing is
    /// dereferenced here; `val` was created in that environment during the call (the contract
    /// of [`RawValue::from_raw`]), so handing it back to napi is valid.
    unsafe fn to_napi_value(_env: sys::napi_env, val: Self) -> Result<sys::napi_value> {
        Ok(val.0)
    }
}

/// The bytes of a value as JS passed them: one `Uint8Array` or an array of them, copied once
/// into one Rust allocation.
pub struct Chunks(pub Bytes);

impl TypeName for Chunks {
    fn type_name() -> &'static str {
        "Uint8Array | Uint8Array[]"
    }
    fn value_type() -> ValueType {
        ValueType::Object
    }
}

impl FromNapiValue for Chunks {
    /// # Safety
    /// napi-rs' contract for arguments: `env` is the environment of the JS call running on this
    /// thread and `value` one of that call's arguments, alive in its handle scope (the glue that
    /// `#[napi]` generates passes exactly that).
    unsafe fn from_napi_value(env: sys::napi_env, value: sys::napi_value) -> Result<Self> {
        let mut views: Vec<(*const u8, usize)> = Vec::new();
        // SAFETY: `env` and `value` are live for this call (the contract above); the elements
        // read from `value` are values of the same environment, held by the call's handle scope,
        // which is what `uint8_view` asks. Out-pointers are locals.
        unsafe {
            let mut is_array = false;
            check(sys::napi_is_array(env, value, &mut is_array))?;
            if is_array {
                let mut len = 0u32;
                check(sys::napi_get_array_length(env, value, &mut len))?;
                // Every element first, their bytes after: reading an element may run JS (an
                // accessor), which could detach or shrink the buffer of a chunk viewed before
                // it. `uint8_view` and the copy below run no JS.
                let mut elements = Vec::with_capacity(len as usize);
                for i in 0..len {
                    let mut el = ptr::null_mut();
                    check(sys::napi_get_element(env, value, i, &mut el))?;
                    elements.push(el);
                }
                views.reserve(elements.len());
                for el in elements {
                    views.push(uint8_view(env, el)?);
                }
            } else {
                views.push(uint8_view(env, value)?);
            }
        }
        let total = views
            .iter()
            .try_fold(0usize, |acc, (_, len)| acc.checked_add(*len))
            .ok_or_else(|| Error::new(Status::InvalidArg, "value too large".to_owned()))?;
        let mut bytes = Vec::with_capacity(total);
        for (data, len) in views {
            if len > 0 && !data.is_null() {
                // SAFETY: `uint8_view` took (data, len) from napi_get_typedarray_info: `len`
                // bytes of a Uint8Array's backing store, kept alive by this still-running call
                // (the array is an argument, or an element of one, in its handle scope). No JS
                // has run since (all elements were read first), so no buffer was detached,
                // transferred or shrunk in between. (A view of a SharedArrayBuffer could be
                // written by another thread meanwhile; the shim passes chunks read from a
                // stream, never shared memory.)
                bytes.extend_from_slice(unsafe { std::slice::from_raw_parts(data, len) });
            }
        }
        Ok(Chunks(Bytes::from(bytes)))
    }
}

/// Where the bytes of the `Uint8Array` `value` are, and how many (`InvalidArg` for anything else).
///
/// # Safety
/// `env` must be the environment of the call running on this thread and `value` a value of it,
/// alive in the current handle scope. The pointer returned is good for `len` bytes only until JS
/// runs again (which can detach, transfer or shrink the buffer) or the array is collected.
unsafe fn uint8_view(env: sys::napi_env, value: sys::napi_value) -> Result<(*const u8, usize)> {
    let mut is_typed = false;
    // SAFETY: `env` and `value` are live in this call (the contract above); a local out-pointer.
    check(unsafe { sys::napi_is_typedarray(env, value, &mut is_typed) })?;
    if !is_typed {
        return Err(Error::new(
            Status::InvalidArg,
            "entry.value must yield Uint8Array chunks".to_owned(),
        ));
    }
    let mut kind = 0;
    let mut len = 0usize;
    let mut data: *mut c_void = ptr::null_mut();
    let mut ab = ptr::null_mut();
    let mut offset = 0usize;
    // SAFETY: as above, and `value` is a typed array (checked just before).
    check(unsafe {
        sys::napi_get_typedarray_info(
            env,
            value,
            &mut kind,
            &mut len,
            &mut data,
            &mut ab,
            &mut offset,
        )
    })?;
    if kind != sys::TypedarrayType::uint8_array {
        return Err(Error::new(
            Status::InvalidArg,
            "entry.value must yield Uint8Array chunks".to_owned(),
        ));
    }
    Ok((data as *const u8, len))
}

/// [`crate::check`] for the conversions napi-rs calls (which return its own error type).
fn check(status: sys::napi_status) -> Result<()> {
    crate::check(status).map_err(|e| Error::new(Status::GenericFailure, e.reason))
}

/// Up to this size the first read of an entry is handed a copy instead of the shared object.
const FIRST_READ_COPY_MAX: usize = 16 * 1024;

const NO_OWNER: usize = 0;
const OWNER_GONE: usize = usize::MAX;

/// The environment whose references we hold (as an address), or one of the markers above.
static OWNER: AtomicUsize = AtomicUsize::new(NO_OWNER);
/// Entry id → napi reference (as an address) of its shared JS object, in the owner env.
static VIEWS: Mutex<Option<Views>> = Mutex::new(None);
/// Entry ids are sequential numbers, not input: the fast hasher is enough.
type Views = HashMap<u64, usize, foldhash::fast::RandomState>;
/// Ids of entries that left L1 since the last drain (pushed from any thread).
static REMOVED: Mutex<Vec<u64>> = Mutex::new(Vec::new());

/// L1's removal hook: remember the id; the reference is released on the owner's thread.
pub fn on_entry_removed(id: u64) {
    REMOVED.lock().push(id);
}

/// Number of shared entry objects alive in the owner env.
pub fn live_views() -> usize {
    VIEWS.lock().as_ref().map_or(0, Views::len)
}

pub fn is_owner(env: &Env) -> bool {
    let me = env.raw() as usize;
    match OWNER.compare_exchange(NO_OWNER, me, Ordering::AcqRel, Ordering::Acquire) {
        Ok(_) => {
            // SAFETY: `env` is the environment of the call running on this thread (module note).
            // `owner_gone` ignores its argument, and only the one call that wins the exchange
            // from NO_OWNER gets here, so the (hook, arg) pair is added once (napi aborts on a
            // duplicate). The hook runs at this environment's teardown.
            unsafe {
                sys::napi_add_env_cleanup_hook(env.raw(), Some(owner_gone), ptr::null_mut());
            }
            true
        }
        Err(current) => current == me,
    }
}

/// The owner environment's cleanup hook. Safe: it never reads its argument.
extern "C" fn owner_gone(_arg: *mut c_void) {
    // Nothing may unwind into libuv/Node (see `panic.rs`).
    let _ = crate::panic::contain(|| {
        // The environment is being torn down: its references die with it. Forget them.
        OWNER.store(OWNER_GONE, Ordering::Release);
        *VIEWS.lock() = None;
    });
}

/// Releases the references of entries that left L1. Cheap when nothing was removed.
pub fn release_pending(env: &Env) {
    if OWNER.load(Ordering::Acquire) != env.raw() as usize {
        return;
    }
    let removed = std::mem::take(&mut *REMOVED.lock());
    if removed.is_empty() {
        return;
    }
    let mut views = VIEWS.lock();
    let Some(map) = views.as_mut() else { return };
    for id in removed {
        if let Some(r) = map.remove(&id) {
            // SAFETY: only `entry_object` puts references into VIEWS, each made by
            // napi_create_reference in the owner environment, which is `env` (checked above,
            // and `owner_gone` empties VIEWS before that environment dies). It was still in the
            // map and every deletion removes it first (under this lock): deleted exactly once.
            unsafe {
                sys::napi_delete_reference(env.raw(), r as sys::napi_ref);
            }
        }
    }
}

/// `null`.
pub fn null(env: &Env) -> JsResult<RawValue> {
    let mut v = ptr::null_mut();
    // SAFETY: `env` is the environment of the call running on this thread (module note); a
    // local out-pointer.
    crate::check(unsafe { sys::napi_get_null(env.raw(), &mut v) })?;
    Ok(RawValue(v))
}

/// A number (`n`).
pub fn uint32(env: &Env, n: u32) -> JsResult<RawValue> {
    let mut v = ptr::null_mut();
    // SAFETY: `env` is the environment of the call running on this thread (module note); a
    // local out-pointer.
    crate::check(unsafe { sys::napi_create_uint32(env.raw(), n, &mut v) })?;
    Ok(RawValue(v))
}

/// `undefined`.
pub fn undefined(env: &Env) -> JsResult<RawValue> {
    let mut v = ptr::null_mut();
    // SAFETY: `env` is the environment of the call running on this thread (module note); a
    // local out-pointer.
    crate::check(unsafe { sys::napi_get_undefined(env.raw(), &mut v) })?;
    Ok(RawValue(v))
}

/// The shared JS object of `entry` (created on first use), or a fresh copy outside the owner env.
/// Only entries L1 (still) holds keep their object alive through a reference, which their
/// removal from L1 releases. Others (an L2 read too large for L1, an entry evicted meanwhile)
/// get an object that lives as long as JS uses it.
fn entry_object(env: &Env, entry: &Entry) -> JsResult<RawValue> {
    let owner = is_owner(env);
    if owner {
        let views = VIEWS.lock();
        if let Some(&r) = views.as_ref().and_then(|m| m.get(&entry.id)) {
            let mut v = ptr::null_mut();
            // SAFETY: `r` is in VIEWS, so it was made by napi_create_reference (count 1, below)
            // in the owner environment, which is `env` (`owner`), and is not deleted yet: every
            // deletion first removes it from the map, and we hold the map's lock.
            crate::check(unsafe {
                sys::napi_get_reference_value(env.raw(), r as sys::napi_ref, &mut v)
            })?;
            if !v.is_null() {
                return Ok(RawValue(v));
            }
        }
    }
    if owner && entry.value.len() <= FIRST_READ_COPY_MAX && entry.first_hand_out() {
        // The first read of a small entry gets a copy that nothing retains: many entries are
        // read once (a key another instance rendered, then evicted unread), and keeping a JS
        // object alive for each cost more than the copy (bench/RESULTS.md, first reads). The
        // shared object is made if the entry is read again.
        return Ok(RawValue(build_object(env, entry, false)?));
    }
    let obj = build_object(env, entry, owner)?;
    if owner && entry.in_l1() {
        let mut r = ptr::null_mut();
        // SAFETY: `env` is the environment of the call running on this thread (module note), and
        // `obj` was just created in it by `build_object`, in this call's handle scope.
        crate::check(unsafe { sys::napi_create_reference(env.raw(), obj, 1, &mut r) })?;
        VIEWS
            .lock()
            .get_or_insert_with(Views::default)
            .insert(entry.id, r as usize);
        // The entry may have left L1 (on another thread) between the check and the insert; its
        // removal was then reported before the reference existed. Check again, now that a
        // later removal is guaranteed to find the reference.
        if !entry.in_l1() {
            if let Some(r) = VIEWS.lock().as_mut().and_then(|m| m.remove(&entry.id)) {
                // SAFETY: the reference in the map under this id is the one made just above in
                // `env` (ids are unique, and this env owns the map): nobody deleted it, since
                // every deletion first removes it from the map, as done here.
                unsafe {
                    sys::napi_delete_reference(env.raw(), r as sys::napi_ref);
                }
            }
        }
    }
    Ok(RawValue(obj))
}

/// A JS `Error` carrying `code` as its `code` property (what JS reads; the message is only
/// for people). Used wherever a promise is rejected from native code.
pub fn error_object(env: &Env, code: &str, message: &str) -> sys::napi_value {
    let mut code_value = ptr::null_mut();
    let mut msg = ptr::null_mut();
    let mut err = ptr::null_mut();
    // SAFETY: `env` is the environment of the call or callback running on this thread (module
    // note); `code` and `message` are `&str`s, valid UTF-8 of the lengths given, alive for the
    // calls; the values passed to napi_create_error were created just before, in this env (or
    // are null when that failed, which napi rejects with a status, not UB).
    unsafe {
        sys::napi_create_string_utf8(
            env.raw(),
            code.as_ptr().cast(),
            code.len() as isize,
            &mut code_value,
        );
        sys::napi_create_string_utf8(
            env.raw(),
            message.as_ptr().cast(),
            message.len() as isize,
            &mut msg,
        );
        sys::napi_create_error(env.raw(), code_value, msg, &mut err);
    }
    err
}

/// The finalizer of a Buffer made by [`external_buffer`]: releases the bytes it viewed.
///
/// # Safety
/// Only for napi, as that finalizer: `hint` is the `Box<Bytes>` that `external_buffer` leaked
/// for it, and napi calls this once (when the Buffer is collected or its environment torn down).
unsafe extern "C" fn drop_bytes(_env: sys::napi_env, _data: *mut c_void, hint: *mut c_void) {
    // Nothing may unwind into libuv/Node (see `panic.rs`).
    let _ = crate::panic::contain(|| {
        // SAFETY: `hint` is the box `external_buffer` leaked for this one finalizer call (the
        // contract above), so this is its only release.
        drop(unsafe { Box::from_raw(hint as *mut Bytes) });
    });
}

/// A Buffer over `bytes` themselves (no copy), or a copy where the runtime has no external
/// buffers. The bytes stay alive until V8 collects the Buffer. At most one such Buffer may be
/// alive per allocation (V8 aborts the process otherwise, see the module note):
/// [`entry_object`] makes one per entry.
fn external_buffer(env: &Env, bytes: &Bytes) -> JsResult<sys::napi_value> {
    let mut out = ptr::null_mut();
    if bytes.is_empty() {
        let mut data = ptr::null_mut();
        // SAFETY: `env` is the environment of the call running on this thread (module note);
        // local out-pointers.
        crate::check(unsafe { sys::napi_create_buffer(env.raw(), 0, &mut data, &mut out) })?;
        return Ok(out);
    }
    let hold = Box::into_raw(Box::new(bytes.clone()));
    // SAFETY: `env` as above. The Buffer views `bytes.len()` bytes at `bytes.as_ptr()`, owned by
    // the `Bytes` clone boxed in `hold`, which only `drop_bytes` frees, once V8 is done with the
    // Buffer: the memory outlives every view of it. `Bytes` is immutable, so nothing in Rust
    // writes it (the `*mut` is only napi's signature; the shim's consumers only read it).
    let status = unsafe {
        sys::napi_create_external_buffer(
            env.raw(),
            bytes.len(),
            bytes.as_ptr() as *mut c_void,
            Some(drop_bytes),
            hold as *mut c_void,
            &mut out,
        )
    };
    if status == sys::Status::napi_ok {
        return Ok(out);
    }
    if status != sys::Status::napi_generic_failure {
        // SAFETY: napi refused before taking the finalizer (no external buffers in this runtime,
        // e.g. a V8 sandbox; an invalid argument; a pending exception), so `drop_bytes` will
        // never see `hold`: this is its only release.
        drop(unsafe { Box::from_raw(hold) });
    }
    // On a generic failure Node has handed `hold` to the finalizer already (it runs it at once
    // for a length above `buffer.constants.MAX_LENGTH`, or when the half-made ArrayBuffer is
    // collected): releasing it here too would free it twice, so it is left to the finalizer.
    // Either way, a copy.
    copied_buffer(env, bytes)
}

/// A new Buffer holding a copy of `bytes`.
fn copied_buffer(env: &Env, bytes: &Bytes) -> JsResult<sys::napi_value> {
    let mut out = ptr::null_mut();
    let mut data = ptr::null_mut();
    // SAFETY: `env` is the environment of the call running on this thread (module note); napi
    // copies `bytes.len()` readable bytes from `bytes.as_ptr()`, which `bytes` keeps alive and
    // unchanged during the call; local out-pointers.
    crate::check(unsafe {
        sys::napi_create_buffer_copy(
            env.raw(),
            bytes.len(),
            bytes.as_ptr() as *const c_void,
            &mut data,
            &mut out,
        )
    })?;
    Ok(out)
}

/// A JS function, as passed.
pub struct JsFunction(sys::napi_value);

impl TypeName for JsFunction {
    fn type_name() -> &'static str {
        "Function"
    }
    fn value_type() -> ValueType {
        ValueType::Function
    }
}

impl FromNapiValue for JsFunction {
    /// # Safety
    /// napi-rs' contract for arguments: `env` is the environment of the JS call running on this
    /// thread and `value` one of that call's arguments, alive in its handle scope.
    unsafe fn from_napi_value(env: sys::napi_env, value: sys::napi_value) -> Result<Self> {
        let mut kind = 0;
        // SAFETY: `env` and `value` are live in this call (the contract above); a local
        // out-pointer.
        check(unsafe { sys::napi_typeof(env, value, &mut kind) })?;
        if kind != sys::ValueType::napi_function {
            return Err(Error::new(
                Status::InvalidArg,
                "expected a function".to_owned(),
            ));
        }
        Ok(JsFunction(value))
    }
}

thread_local! {
    /// This thread's entry-object factory: its environment and a reference to the function.
    static FACTORY: std::cell::Cell<Option<(sys::napi_env, sys::napi_ref)>> =
        const { std::cell::Cell::new(None) };
}

/// Registers `(value, tags, stale, timestamp, expire, revalidate) => ({ … })` for this thread's
/// environment. An object literal built by JS gets one fixed shape at once; built property by
/// property through napi, every property name is looked up in V8's string table and every
/// addition walks a map transition (~1 µs per object, and the handler's property loads turned
/// megamorphic).
pub fn set_factory(env: &Env, f: JsFunction) -> JsResult<()> {
    let raw = env.raw();
    let mut r = ptr::null_mut();
    // SAFETY: `raw` is the environment of the call running on this thread (module note), and
    // `f` is an argument of this call (`JsFunction` is only made by `from_napi_value`).
    crate::check(unsafe { sys::napi_create_reference(raw, f.0, 1, &mut r) })?;
    match FACTORY.with(|c| c.replace(Some((raw, r)))) {
        // Registered again in the same env: its hook is in place already.
        // SAFETY: `old` was made by napi_create_reference in `raw` (the slot pairs each
        // reference with its env) and has just left the slot, its only holder: deleted once.
        Some((old_env, old)) if old_env == raw => unsafe {
            sys::napi_delete_reference(raw, old);
        },
        // SAFETY: `raw` is this call's environment; the hook runs at its teardown, on this
        // thread. It is added once per env (napi aborts on a duplicate (hook, arg) pair): the
        // slot held no factory of `raw` before, and `factory_gone` clears it only at teardown.
        _ => unsafe {
            sys::napi_add_env_cleanup_hook(raw, Some(factory_gone), raw.cast());
        },
    }
    Ok(())
}

/// The factory's cleanup hook. Safe: it only compares its argument with an address.
extern "C" fn factory_gone(env: *mut c_void) {
    // Nothing may unwind into libuv/Node (see `panic.rs`).
    let _ = crate::panic::contain(|| {
        // The environment is being torn down, its references with it. (Forget the factory only if
        // it is this env's: another env may have registered one on this thread since.)
        FACTORY.with(|c| {
            if c.get().is_some_and(|(e, _)| e.cast::<c_void>() == env) {
                c.set(None);
            }
        });
    });
}

/// Calls this thread's factory, if it has one for `env`; `None` if not (or if it failed).
///
/// # Safety
/// `env` must be the environment of the call running on this thread, and every value in `args`
/// created in it within the current handle scope.
unsafe fn from_factory(env: sys::napi_env, args: &[sys::napi_value; 7]) -> Option<sys::napi_value> {
    let (fenv, r) = FACTORY.with(|c| c.get())?;
    if fenv != env {
        return None;
    }
    let mut f = ptr::null_mut();
    let mut recv = ptr::null_mut();
    // SAFETY: `env` is live (the contract above) and `r` is the reference in this thread's
    // FACTORY slot, made in `fenv` == `env` by `set_factory`, which deletes a reference only
    // after replacing it in the slot (and `factory_gone` clears the slot at teardown): live.
    let found = unsafe {
        sys::napi_get_reference_value(env, r, &mut f) == sys::Status::napi_ok
            && !f.is_null()
            && sys::napi_get_undefined(env, &mut recv) == sys::Status::napi_ok
    };
    if !found {
        return None;
    }
    let mut obj = ptr::null_mut();
    // SAFETY: `f` and `recv` were just obtained in `env`; `args` are values of `env` in the
    // current handle scope (the contract above), `args.len()` of them readable at `as_ptr()`.
    let called =
        unsafe { sys::napi_call_function(env, recv, f, args.len(), args.as_ptr(), &mut obj) };
    if called == sys::Status::napi_ok {
        return Some(obj);
    }
    // It threw (it cannot, but never leave an exception pending): build the object here.
    let mut exception = ptr::null_mut();
    // SAFETY: `env` is live (the contract above); a local out-pointer.
    unsafe { sys::napi_get_and_clear_last_exception(env, &mut exception) };
    None
}

/// A new JS object for `entry` (its value an external Buffer when `shared`, else a copy), made
/// by the registered factory when there is one. Its `staleByTag` is false.
fn build_object(env: &Env, entry: &Entry, shared: bool) -> JsResult<sys::napi_value> {
    let value = if shared {
        external_buffer(env, &entry.value)?
    } else {
        copied_buffer(env, &entry.value)?
    };
    let tags = &entry.meta.tags;
    let mut arr = ptr::null_mut();
    // SAFETY: `env` is the environment of the call running on this thread (module note); `arr`
    // and the strings are created in it just before their use, in this call's handle scope; the
    // tags are `&str`s, valid UTF-8 of the lengths given; out-pointers are locals.
    unsafe {
        crate::check(sys::napi_create_array_with_length(
            env.raw(),
            tags.len(),
            &mut arr,
        ))?;
        for (i, t) in tags.iter().enumerate() {
            let mut s = ptr::null_mut();
            crate::check(sys::napi_create_string_utf8(
                env.raw(),
                t.as_ptr().cast(),
                t.len() as isize,
                &mut s,
            ))?;
            crate::check(sys::napi_set_element(env.raw(), arr, i as u32, s))?;
        }
    }
    // SAFETY: `value` (`external_buffer`/`copied_buffer`) and `arr` were created in `env`, the
    // call's environment, just above, in this call's handle scope.
    unsafe { make_entry(env, value, arr, entry, false) }
}

/// The object of a hit served stale because a tag of the entry was invalidated after it was
/// written: the entry's own `value` Buffer and `tags` (one Buffer per allocation: see
/// [`external_buffer`]), `staleByTag: true`. Made per such hit (each one leads to a
/// regeneration, so they are rare).
fn stale_view(env: &Env, entry: &Entry) -> JsResult<sys::napi_value> {
    let shared = entry_object(env, entry)?.0;
    let mut value = ptr::null_mut();
    let mut tags = ptr::null_mut();
    // SAFETY: `env` is the environment of the call running on this thread (module note);
    // `shared` was created or fetched in it just above, in this call's handle scope; the
    // property names are NUL-terminated literals; local out-pointers.
    unsafe {
        crate::check(sys::napi_get_named_property(
            env.raw(),
            shared,
            c"value".as_ptr(),
            &mut value,
        ))?;
        crate::check(sys::napi_get_named_property(
            env.raw(),
            shared,
            c"tags".as_ptr(),
            &mut tags,
        ))?;
    }
    // SAFETY: `value` and `tags` were read from `shared` in `env` just above, in this call's
    // handle scope.
    unsafe { make_entry(env, value, tags, entry, true) }
}

/// The entry object `{ value, tags, stale, timestamp, expire, revalidate, staleByTag }` over
/// `value` and `tags`, through the factory when there is one.
///
/// # Safety
/// `value` and `tags` must be values of `env`, the environment of the call running on this
/// thread, created (or fetched) in this call's handle scope.
unsafe fn make_entry(
    env: &Env,
    value: sys::napi_value,
    tags: sys::napi_value,
    entry: &Entry,
    stale_by_tag: bool,
) -> JsResult<sys::napi_value> {
    let env = env.raw();
    let m = &entry.meta;
    let mut args = [
        value,
        tags,
        ptr::null_mut(),
        ptr::null_mut(),
        ptr::null_mut(),
        ptr::null_mut(),
        ptr::null_mut(),
    ];
    for (slot, v) in args[2..6]
        .iter_mut()
        .zip([m.stale, m.timestamp, m.expire, m.revalidate])
    {
        // SAFETY: `env` is the environment of the call running on this thread (module note);
        // `slot` is a local out-pointer.
        crate::check(unsafe { sys::napi_create_double(env, v, slot) })?;
    }
    // SAFETY: as above.
    crate::check(unsafe { sys::napi_get_boolean(env, stale_by_tag, &mut args[6]) })?;
    // SAFETY: `env` as above; all seven arguments are values of it in this call's handle scope
    // (`value` and `tags` by the caller's contract, the rest created above).
    if let Some(obj) = unsafe { from_factory(env, &args) } {
        return Ok(obj);
    }
    let mut obj = ptr::null_mut();
    // SAFETY: `env` as above; `obj` is created in it before use, the values set on it were
    // created above; the property names are NUL-terminated C string literals.
    unsafe {
        crate::check(sys::napi_create_object(env, &mut obj))?;
        for (name, v) in [
            c"value",
            c"tags",
            c"stale",
            c"timestamp",
            c"expire",
            c"revalidate",
            c"staleByTag",
        ]
        .iter()
        .zip(args)
        {
            crate::check(sys::napi_set_named_property(env, obj, name.as_ptr(), v))?;
        }
    }
    Ok(obj)
}

/// `null`, or the entry object (`staleByTag` true when a tag is stale: the caller then reports
/// `revalidate: -1`) for a lookup.
pub fn lookup_value(env: &Env, lookup: Lookup) -> JsResult<RawValue> {
    match lookup {
        Lookup::Miss => null(env),
        Lookup::Hit {
            entry,
            stale_by_tag: false,
        } => entry_object(env, &entry),
        Lookup::Hit {
            entry,
            stale_by_tag: true,
        } => Ok(RawValue(stale_view(env, &entry)?)),
    }
}

thread_local! {
    /// This thread's shared set-report objects: its environment and one reference per
    /// `(l1, l2)` pair (made on first use).
    static REPORTS: std::cell::RefCell<Option<(sys::napi_env, [sys::napi_ref; crate::SET_REPORTS])>> =
        const { std::cell::RefCell::new(None) };
}

/// The frozen object `{ l1, l2 }` of outcome pair `index` (< [`crate::SET_REPORTS`]): one per
/// environment and pair, shared by every set, so reporting an outcome allocates nothing.
pub fn set_report(env: &Env, index: usize, l1: &str, l2: &str) -> JsResult<RawValue> {
    let raw = env.raw();
    let cached = REPORTS.with(|c| {
        let mut slot = c.borrow_mut();
        if slot.as_ref().is_none_or(|(e, _)| *e != raw) {
            // SAFETY: `raw` is this call's environment; the hook runs at its teardown, on this
            // thread. It is added once per env (napi aborts on a duplicate (hook, arg) pair): the
            // slot held no table of `raw` before, and `reports_gone` clears it only at teardown.
            unsafe { sys::napi_add_env_cleanup_hook(raw, Some(reports_gone), raw.cast()) };
            *slot = Some((raw, [ptr::null_mut(); crate::SET_REPORTS]));
        }
        slot.as_ref().and_then(|(_, refs)| refs.get(index).copied())
    });
    let Some(r) = cached else {
        return Err(crate::internal("set report index out of range"));
    };
    if !r.is_null() {
        let mut v = ptr::null_mut();
        // SAFETY: `r` is in this thread's table for `raw` (checked above), made by
        // napi_create_reference in `raw` below and never deleted (the table is cleared at the
        // environment's teardown, with its references).
        crate::check(unsafe { sys::napi_get_reference_value(raw, r, &mut v) })?;
        if !v.is_null() {
            return Ok(RawValue(v));
        }
    }
    let mut obj = ptr::null_mut();
    let mut r = ptr::null_mut();
    // SAFETY: `raw` is the environment of the call running on this thread (module note); the
    // strings are `&str`s of the lengths given; every value is created in it just before use;
    // the property names are NUL-terminated literals; local out-pointers.
    unsafe {
        crate::check(sys::napi_create_object(raw, &mut obj))?;
        for (name, text) in [(c"l1", l1), (c"l2", l2)] {
            let mut s = ptr::null_mut();
            crate::check(sys::napi_create_string_utf8(
                raw,
                text.as_ptr().cast(),
                text.len() as isize,
                &mut s,
            ))?;
            crate::check(sys::napi_set_named_property(raw, obj, name.as_ptr(), s))?;
        }
        crate::check(sys::napi_object_freeze(raw, obj))?;
        crate::check(sys::napi_create_reference(raw, obj, 1, &mut r))?;
    }
    REPORTS.with(|c| {
        if let Some((_, refs)) = c.borrow_mut().as_mut() {
            if let Some(slot) = refs.get_mut(index) {
                *slot = r;
            }
        }
    });
    Ok(RawValue(obj))
}

/// The report table's cleanup hook. Safe: it only compares its argument with an address.
extern "C" fn reports_gone(env: *mut c_void) {
    // Nothing may unwind into libuv/Node (see `panic.rs`).
    let _ = crate::panic::contain(|| {
        REPORTS.with(|c| {
            let mut slot = c.borrow_mut();
            if slot
                .as_ref()
                .is_some_and(|(e, _)| e.cast::<c_void>() == env)
            {
                *slot = None;
            }
        });
    });
}
