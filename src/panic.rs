//! Panics never cross into Node.
//!
//! A panic that unwinds out of an `extern "C"` function (a libuv callback, the threadsafe
//! function that settles promises) aborts the whole process, and a panic inside a spawned task
//! loses the promise it was to settle. Both are fleet-wide outages for a cache: every instance
//! reading the same bad value would die or hang at once. So every boundary runs its work under
//! [`contain`] (synchronous code) or [`Contained`] (a future), and every `#[napi]` export is
//! `catch_unwind`. A contained panic is counted ([`PANICS`]), printed once per code location
//! by the hook [`install_hook`] sets, and becomes what the boundary documents: a miss for a
//! `get`, a `STRATA_INTERNAL` rejection elsewhere. The promise always settles.
//!
//! Tests force a panic in each place with `STRATA_TEST_PANIC=<place>[,<place>…]` (see
//! [`Place`]): read once per process, it costs one relaxed load per check when unset.

use std::collections::HashSet;
use std::future::Future;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;

use futures_util::FutureExt;
use parking_lot::Mutex;

/// Panics contained since the process started (`stats().internalPanics`).
pub static PANICS: AtomicU64 = AtomicU64::new(0);

/// Where a test can force a panic.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Place {
    /// The libuv poll callback of the event-loop L2 path, after a reply was parsed.
    Poll,
    /// Its libuv timer callback (deadlines).
    Timer,
    /// Settling one promise from a queue (bridge or event loop).
    Settle,
    /// A task on the runtime that settles a promise.
    Task,
    /// The body of a `#[napi]` export (`get`, `set`).
    Export,
}

impl Place {
    const ALL: [(Place, &'static str); 5] = [
        (Place::Poll, "poll"),
        (Place::Timer, "timer"),
        (Place::Settle, "settle"),
        (Place::Task, "task"),
        (Place::Export, "export"),
    ];

    fn bit(self) -> u32 {
        1 << (self as u32)
    }
}

fn forced() -> u32 {
    static MASK: OnceLock<u32> = OnceLock::new();
    *MASK.get_or_init(|| {
        let Ok(list) = std::env::var("STRATA_TEST_PANIC") else {
            return 0;
        };
        list.split(',')
            .filter_map(|name| Place::ALL.iter().find(|(_, n)| *n == name.trim()))
            .fold(0, |mask, (place, _)| mask | place.bit())
    })
}

/// Panics here if the test hook asks for it (`STRATA_TEST_PANIC`).
pub fn inject(place: Place) {
    if forced() & place.bit() != 0 {
        panic!("forced by STRATA_TEST_PANIC ({place:?})");
    }
}

/// The error a contained panic becomes where a promise rejects.
pub fn contained_error() -> strata_core::Error {
    strata_core::Error::Internal("internal error (a panic, contained; see the log)".into())
}

/// [`contained_error`] where an export throws or a bridged promise rejects.
pub fn contained() -> napi::Error<crate::Code> {
    crate::to_js(contained_error())
}

/// Runs an export's body: a panic becomes [`contained`].
pub fn guard<T>(f: impl FnOnce() -> crate::JsResult<T>) -> crate::JsResult<T> {
    contain(f).unwrap_or_else(|| Err(contained()))
}

/// Runs `f`; a panic is counted and becomes `None`.
pub fn contain<R>(f: impl FnOnce() -> R) -> Option<R> {
    match catch_unwind(AssertUnwindSafe(f)) {
        Ok(r) => Some(r),
        Err(_) => {
            PANICS.fetch_add(1, Ordering::Relaxed);
            None
        }
    }
}

/// `fut`, with a panic inside it caught: it resolves to `Err(())` instead (counted).
pub async fn catching<F: Future>(fut: F) -> Result<F::Output, ()> {
    AssertUnwindSafe(fut).catch_unwind().await.map_err(|_| {
        PANICS.fetch_add(1, Ordering::Relaxed);
    })
}

/// Prints each panic's message the first time its code location panics (panics carry no
/// configuration, so nothing secret); later panics there are only counted.
pub fn install_hook() {
    static SEEN: Mutex<Option<HashSet<String>>> = Mutex::new(None);
    std::panic::set_hook(Box::new(|info| {
        let at = info.location().map_or_else(
            || "unknown".to_owned(),
            |l| format!("{}:{}", l.file(), l.line()),
        );
        let first = SEEN.lock().get_or_insert_with(HashSet::new).insert(at);
        if first {
            eprintln!(
                "strata-cache: internal error, contained (a miss for get, STRATA_INTERNAL elsewhere; \
                 later ones here are only counted in stats().internalPanics): {info}"
            );
        }
    }));
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use std::task::{Context, Poll};

    #[test]
    fn a_panic_is_contained_counted_and_becomes_an_internal_error() {
        let before = PANICS.load(Ordering::Relaxed);
        assert_eq!(contain(|| 7), Some(7));
        assert_eq!(contain(|| -> u8 { panic!("boom") }), None);
        let e = guard::<()>(|| panic!("boom")).unwrap_err();
        assert_eq!(e.status.as_ref(), "STRATA_INTERNAL");
        assert!(e.reason.contains("a panic, contained"), "{}", e.reason);
        // An error returned normally passes through as it is.
        let e = guard::<()>(|| Err(crate::to_js(strata_core::Error::invalid_arg("k", "bad"))))
            .unwrap_err();
        assert_eq!(e.status.as_ref(), "STRATA_INVALID_ARG");
        assert!(PANICS.load(Ordering::Relaxed) >= before + 2);
    }

    #[test]
    fn a_panicking_future_resolves_to_an_error() {
        let before = PANICS.load(Ordering::Relaxed);
        let mut cx = Context::from_waker(std::task::Waker::noop());
        let mut fut = std::pin::pin!(catching(async { panic!("boom") }));
        assert_eq!(fut.as_mut().poll(&mut cx), Poll::Ready(Err::<(), ()>(())));
        let mut ok = std::pin::pin!(catching(async { 5 }));
        assert_eq!(ok.as_mut().poll(&mut cx), Poll::Ready(Ok(5)));
        assert!(PANICS.load(Ordering::Relaxed) > before);
    }

    #[test]
    fn nothing_is_injected_unless_asked() {
        // `STRATA_TEST_PANIC` is not set for unit tests: every place runs through.
        for (place, _) in Place::ALL {
            assert_eq!(contain(|| inject(place)), Some(()));
        }
    }
}
