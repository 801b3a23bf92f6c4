//! libuv, as exported by the Node binary: the few functions this path calls, the memory of its
//! handles, its monotonic clock; and the check of a napi status.

use std::ffi::{c_int, c_void};

use napi::sys;

// libuv, as exported by the Node binary (stable ABI since libuv 1.0).
pub(super) const UV_POLL: c_int = 8;
pub(super) const UV_TIMER: c_int = 13;
pub(super) const UV_READABLE: c_int = 1;
pub(super) const UV_WRITABLE: c_int = 2;

pub(super) type UvHandle = c_void;
extern "C" {
    fn uv_handle_size(kind: c_int) -> usize;
    pub(super) fn uv_poll_init(lp: *mut sys::uv_loop_s, handle: *mut UvHandle, fd: c_int) -> c_int;
    pub(super) fn uv_poll_start(
        handle: *mut UvHandle,
        events: c_int,
        cb: unsafe extern "C" fn(*mut UvHandle, c_int, c_int),
    ) -> c_int;
    pub(super) fn uv_poll_stop(handle: *mut UvHandle) -> c_int;
    pub(super) fn uv_timer_init(lp: *mut sys::uv_loop_s, handle: *mut UvHandle) -> c_int;
    pub(super) fn uv_timer_start(
        handle: *mut UvHandle,
        cb: unsafe extern "C" fn(*mut UvHandle),
        timeout: u64,
        repeat: u64,
    ) -> c_int;
    pub(super) fn uv_timer_stop(handle: *mut UvHandle) -> c_int;
    pub(super) fn uv_close(handle: *mut UvHandle, cb: Option<unsafe extern "C" fn(*mut UvHandle)>);
    pub(super) fn uv_ref(handle: *mut UvHandle);
    pub(super) fn uv_unref(handle: *mut UvHandle);
    fn uv_hrtime() -> u64;
}

/// Now, in ms of libuv's monotonic clock (not the loop's cached time, which lags behind by the
/// length of the current JS task: deadlines count from when a request is really sent).
pub(super) fn now_ms() -> u64 {
    // SAFETY: uv_hrtime takes no arguments and has no preconditions (it reads the monotonic
    // clock); the Node binary this addon is loaded into exports it.
    (unsafe { uv_hrtime() }) / 1_000_000
}

/// A libuv handle's memory (`malloc`ed: freed by [`free_handle`] once libuv closed it).
pub(super) fn alloc_handle(kind: c_int) -> *mut UvHandle {
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
pub(super) unsafe extern "C" fn free_handle(handle: *mut UvHandle) {
    // SAFETY: `handle` came from `alloc_handle`'s calloc and libuv is done with it (the contract
    // above): freed once, with the allocator that made it.
    unsafe { libc::free(handle) };
}
