//! The clock the process's cache runs on: Next's own (`performance`), read through napi.

use std::sync::Arc;

use napi::bindgen_prelude::Env;

use strata_core::clock::{Clock, MonotonicClock, SharedClock, SystemClock};

/// The clock of `init`: Next's clock ([`next_clock`]; the system clock without `performance`),
/// shifted by `skew_ms`, else by `STRATA_TEST_CLOCK_SKEW_MS` (testing only).
pub(crate) fn process_clock(env: &Env, skew_ms: Option<f64>) -> SharedClock {
    let skew = match skew_ms {
        Some(s) if s.is_finite() => s,
        _ => std::env::var("STRATA_TEST_CLOCK_SKEW_MS")
            .ok()
            .and_then(|v| v.parse::<f64>().ok())
            .filter(|v| v.is_finite())
            .unwrap_or(0.0),
    };
    // Next's clock, so tag stamps and entry timestamps are compared in one domain.
    let base: SharedClock = match next_clock(env) {
        Some(clock) => Arc::new(clock),
        None => Arc::new(SystemClock),
    };
    if skew == 0.0 {
        base
    } else {
        Arc::new(SkewedClock(base, skew))
    }
}

/// Next's clock, `performance.timeOrigin + performance.now()`, as a [`MonotonicClock`]: read
/// a few times between two `Instant`s, anchored at the midpoint of the tightest reading (error
/// about half a µs once warm). `None` if `performance` is not there.
fn next_clock(env: &Env) -> Option<MonotonicClock> {
    use napi::sys;
    use std::time::{Duration, Instant};
    let raw = env.raw();
    // SAFETY: `raw` is the environment of the JS call running on this thread (`env`, napi-rs'
    // for this export); every value used was obtained from it just before, in this call's
    // handle scope; the property names are NUL-terminated C string literals; `now_fn` is called
    // with no arguments (a null argv with argc 0); out-pointers are locals.
    unsafe {
        let ok = |s: sys::napi_status| (s == sys::Status::napi_ok).then_some(());
        let mut global = std::ptr::null_mut();
        ok(sys::napi_get_global(raw, &mut global))?;
        let mut perf = std::ptr::null_mut();
        ok(sys::napi_get_named_property(
            raw,
            global,
            c"performance".as_ptr(),
            &mut perf,
        ))?;
        let mut now_fn = std::ptr::null_mut();
        ok(sys::napi_get_named_property(
            raw,
            perf,
            c"now".as_ptr(),
            &mut now_fn,
        ))?;
        let mut origin = std::ptr::null_mut();
        ok(sys::napi_get_named_property(
            raw,
            perf,
            c"timeOrigin".as_ptr(),
            &mut origin,
        ))?;
        let mut origin_ms = 0.0;
        ok(sys::napi_get_value_double(raw, origin, &mut origin_ms))?;
        let mut best: Option<(Duration, Instant, f64)> = None;
        for _ in 0..8 {
            let before = Instant::now();
            let mut now = std::ptr::null_mut();
            ok(sys::napi_call_function(
                raw,
                perf,
                now_fn,
                0,
                std::ptr::null(),
                &mut now,
            ))?;
            let after = Instant::now();
            let mut now_ms = 0.0;
            ok(sys::napi_get_value_double(raw, now, &mut now_ms))?;
            let window = after - before;
            if best.is_none_or(|(w, _, _)| window < w) {
                best = Some((window, before + window / 2, now_ms));
            }
        }
        let (_, at, now_ms) = best?;
        let ms = origin_ms + now_ms;
        (ms.is_finite() && ms > 0.0).then(|| MonotonicClock::anchored(ms, at))
    }
}

/// A clock shifted by a fixed number of ms (testing only).
#[derive(Debug)]
struct SkewedClock(SharedClock, f64);

impl Clock for SkewedClock {
    fn now_ms(&self) -> f64 {
        self.0.now_ms() + self.1
    }
}
