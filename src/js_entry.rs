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

use crate::{internal, JsResult};

/// A raw JS value returned as is.
pub struct RawValue(sys::napi_value);

impl RawValue {
    /// Wraps a value created in the current call's environment.
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
    unsafe fn from_napi_value(env: sys::napi_env, value: sys::napi_value) -> Result<Self> {
        let mut is_array = false;
        check(sys::napi_is_array(env, value, &mut is_array))?;
        let mut views: Vec<(*const u8, usize)> = Vec::new();
        if is_array {
            let mut len = 0u32;
            check(sys::napi_get_array_length(env, value, &mut len))?;
            views.reserve(len as usize);
            for i in 0..len {
                let mut el = ptr::null_mut();
                check(sys::napi_get_element(env, value, i, &mut el))?;
                views.push(uint8_view(env, el)?);
            }
        } else {
            views.push(uint8_view(env, value)?);
        }
        let total = views
            .iter()
            .try_fold(0usize, |acc, (_, len)| acc.checked_add(*len))
            .ok_or_else(|| Error::new(Status::InvalidArg, "value too large".to_owned()))?;
        let mut bytes = Vec::with_capacity(total);
        for (data, len) in views {
            if len > 0 && !data.is_null() {
                // SAFETY: napi_get_typedarray_info returned a pointer to `len` live bytes owned
                // by a JS object that stays alive for this synchronous call.
                bytes.extend_from_slice(std::slice::from_raw_parts(data, len));
            }
        }
        Ok(Chunks(Bytes::from(bytes)))
    }
}

unsafe fn uint8_view(env: sys::napi_env, value: sys::napi_value) -> Result<(*const u8, usize)> {
    let mut is_typed = false;
    check(sys::napi_is_typedarray(env, value, &mut is_typed))?;
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
    check(sys::napi_get_typedarray_info(
        env,
        value,
        &mut kind,
        &mut len,
        &mut data,
        &mut ab,
        &mut offset,
    ))?;
    if kind != sys::TypedarrayType::uint8_array {
        return Err(Error::new(
            Status::InvalidArg,
            "entry.value must yield Uint8Array chunks".to_owned(),
        ));
    }
    Ok((data as *const u8, len))
}

fn check(status: sys::napi_status) -> Result<()> {
    if status == sys::Status::napi_ok {
        Ok(())
    } else {
        Err(Error::new(
            Status::GenericFailure,
            format!("napi call failed with status {status}"),
        ))
    }
}

fn check_js(status: sys::napi_status) -> JsResult<()> {
    check(status).map_err(|e| internal(e.reason))
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
            // SAFETY: `env` is the live environment of this call; the hook runs at its teardown.
            unsafe {
                sys::napi_add_env_cleanup_hook(env.raw(), Some(owner_gone), ptr::null_mut());
            }
            true
        }
        Err(current) => current == me,
    }
}

unsafe extern "C" fn owner_gone(_arg: *mut c_void) {
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
            // SAFETY: `r` was created by napi_create_reference in this (owner) env.
            unsafe {
                sys::napi_delete_reference(env.raw(), r as sys::napi_ref);
            }
        }
    }
}

/// `null`.
pub fn null(env: &Env) -> JsResult<RawValue> {
    let mut v = ptr::null_mut();
    // SAFETY: plain napi call on the current env.
    check_js(unsafe { sys::napi_get_null(env.raw(), &mut v) })?;
    Ok(RawValue(v))
}

/// A number (`n`).
pub fn uint32(env: &Env, n: u32) -> JsResult<RawValue> {
    let mut v = ptr::null_mut();
    // SAFETY: plain napi call on the live environment of the current call or callback.
    check_js(unsafe { sys::napi_create_uint32(env.raw(), n, &mut v) })?;
    Ok(RawValue(v))
}

/// `undefined`.
pub fn undefined(env: &Env) -> JsResult<RawValue> {
    let mut v = ptr::null_mut();
    // SAFETY: plain napi call on the current env.
    check_js(unsafe { sys::napi_get_undefined(env.raw(), &mut v) })?;
    Ok(RawValue(v))
}

/// `[value]`.
pub fn wrap_in_array(env: &Env, value: RawValue) -> JsResult<RawValue> {
    let mut arr = ptr::null_mut();
    // SAFETY: plain napi calls on the current env with values created in it.
    unsafe {
        check_js(sys::napi_create_array_with_length(env.raw(), 1, &mut arr))?;
        check_js(sys::napi_set_element(env.raw(), arr, 0, value.0))?;
    }
    Ok(RawValue(arr))
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
            // SAFETY: `r` is a strong reference (count 1) of this env: its value is alive.
            check_js(unsafe {
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
        // SAFETY: all values are created in, and used within, this env during this call.
        return Ok(RawValue(unsafe { build_object(env.raw(), entry, false)? }));
    }
    // SAFETY: all values are created in, and used within, this env during this call.
    let obj = unsafe { build_object(env.raw(), entry, owner)? };
    if owner && entry.in_l1() {
        let mut r = ptr::null_mut();
        // SAFETY: `obj` is a live object of this env.
        check_js(unsafe { sys::napi_create_reference(env.raw(), obj, 1, &mut r) })?;
        VIEWS
            .lock()
            .get_or_insert_with(Views::default)
            .insert(entry.id, r as usize);
        // The entry may have left L1 (on another thread) between the check and the insert; its
        // removal was then reported before the reference existed. Check again, now that a
        // later removal is guaranteed to find the reference.
        if !entry.in_l1() {
            if let Some(r) = VIEWS.lock().as_mut().and_then(|m| m.remove(&entry.id)) {
                // SAFETY: `r` was just created in this (owner) env.
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
    // SAFETY: plain napi calls on the live environment of the current call or callback.
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

unsafe extern "C" fn drop_bytes(_env: sys::napi_env, _data: *mut c_void, hint: *mut c_void) {
    // Nothing may unwind into libuv/Node (see `panic.rs`).
    let _ = crate::panic::contain(|| {
        // SAFETY: `hint` is the Box<Bytes> leaked in `external_buffer`, finalized exactly once.
        drop(Box::from_raw(hint as *mut Bytes));
    });
}

unsafe fn external_buffer(env: sys::napi_env, bytes: &Bytes) -> JsResult<sys::napi_value> {
    let mut out = ptr::null_mut();
    if bytes.is_empty() {
        let mut data = ptr::null_mut();
        check_js(sys::napi_create_buffer(env, 0, &mut data, &mut out))?;
        return Ok(out);
    }
    let hold = Box::into_raw(Box::new(bytes.clone()));
    let status = sys::napi_create_external_buffer(
        env,
        bytes.len(),
        bytes.as_ptr() as *mut c_void,
        Some(drop_bytes),
        hold as *mut c_void,
        &mut out,
    );
    if status == sys::Status::napi_ok {
        return Ok(out);
    }
    // Runtimes without external buffers (e.g. a V8 sandbox) get a copy.
    drop(Box::from_raw(hold));
    copied_buffer(env, bytes)
}

unsafe fn copied_buffer(env: sys::napi_env, bytes: &Bytes) -> JsResult<sys::napi_value> {
    let mut out = ptr::null_mut();
    let mut data = ptr::null_mut();
    check_js(sys::napi_create_buffer_copy(
        env,
        bytes.len(),
        bytes.as_ptr() as *const c_void,
        &mut data,
        &mut out,
    ))?;
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
    unsafe fn from_napi_value(env: sys::napi_env, value: sys::napi_value) -> Result<Self> {
        let mut kind = 0;
        check(sys::napi_typeof(env, value, &mut kind))?;
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
    // SAFETY: `f` is a live function of this env, during this call.
    check_js(unsafe { sys::napi_create_reference(raw, f.0, 1, &mut r) })?;
    match FACTORY.with(|c| c.replace(Some((raw, r)))) {
        // Registered again in the same env: its hook is in place already.
        // SAFETY: a reference this env created.
        Some((old_env, old)) if old_env == raw => unsafe {
            sys::napi_delete_reference(raw, old);
        },
        // SAFETY: `raw` is this call's live env; the hook runs at its teardown, on this thread,
        // and is registered once per env (its argument is the env).
        _ => unsafe {
            sys::napi_add_env_cleanup_hook(raw, Some(factory_gone), raw.cast());
        },
    }
    Ok(())
}

unsafe extern "C" fn factory_gone(env: *mut c_void) {
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
unsafe fn from_factory(env: sys::napi_env, args: &[sys::napi_value; 6]) -> Option<sys::napi_value> {
    let (fenv, r) = FACTORY.with(|c| c.get())?;
    if fenv != env {
        return None;
    }
    let mut f = ptr::null_mut();
    if sys::napi_get_reference_value(env, r, &mut f) != sys::Status::napi_ok || f.is_null() {
        return None;
    }
    let mut recv = ptr::null_mut();
    if sys::napi_get_undefined(env, &mut recv) != sys::Status::napi_ok {
        return None;
    }
    let mut obj = ptr::null_mut();
    if sys::napi_call_function(env, recv, f, args.len(), args.as_ptr(), &mut obj)
        == sys::Status::napi_ok
    {
        return Some(obj);
    }
    // It threw (it cannot, but never leave an exception pending): build the object here.
    let mut exception = ptr::null_mut();
    sys::napi_get_and_clear_last_exception(env, &mut exception);
    None
}

unsafe fn build_object(
    env: sys::napi_env,
    entry: &Entry,
    shared: bool,
) -> JsResult<sys::napi_value> {
    let value = if shared {
        external_buffer(env, &entry.value)?
    } else {
        copied_buffer(env, &entry.value)?
    };
    let tags = &entry.meta.tags;
    let mut arr = ptr::null_mut();
    check_js(sys::napi_create_array_with_length(
        env,
        tags.len(),
        &mut arr,
    ))?;
    for (i, t) in tags.iter().enumerate() {
        let mut s = ptr::null_mut();
        check_js(sys::napi_create_string_utf8(
            env,
            t.as_ptr().cast(),
            t.len() as isize,
            &mut s,
        ))?;
        check_js(sys::napi_set_element(env, arr, i as u32, s))?;
    }
    let m = &entry.meta;
    let mut args = [
        value,
        arr,
        ptr::null_mut(),
        ptr::null_mut(),
        ptr::null_mut(),
        ptr::null_mut(),
    ];
    for (slot, v) in args[2..]
        .iter_mut()
        .zip([m.stale, m.timestamp, m.expire, m.revalidate])
    {
        check_js(sys::napi_create_double(env, v, slot))?;
    }
    if let Some(obj) = from_factory(env, &args) {
        return Ok(obj);
    }
    let mut obj = ptr::null_mut();
    check_js(sys::napi_create_object(env, &mut obj))?;
    for (name, v) in [
        c"value",
        c"tags",
        c"stale",
        c"timestamp",
        c"expire",
        c"revalidate",
    ]
    .iter()
    .zip(args)
    {
        check_js(sys::napi_set_named_property(env, obj, name.as_ptr(), v))?;
    }
    Ok(obj)
}

/// `null`, the entry object, or `[entry]` (stale by tag) for a lookup.
pub fn lookup_value(env: &Env, lookup: Lookup) -> JsResult<RawValue> {
    match lookup {
        Lookup::Miss => null(env),
        Lookup::Hit {
            entry,
            stale_by_tag,
        } => {
            let obj = entry_object(env, &entry)?;
            if stale_by_tag {
                wrap_in_array(env, obj)
            } else {
                Ok(obj)
            }
        }
    }
}
