//! The configuration of `init` and `doctor`: code options over environment variables over
//! defaults, and the namespace.

use std::path::PathBuf;

use strata_core::config::{Config, Options};
use strata_core::namespace;

use crate::{to_js, InitOptions, JsResult};

fn whole(name: &'static str, v: Option<f64>, allow_zero: bool) -> JsResult<Option<u64>> {
    let min = if allow_zero { 0.0 } else { 1.0 };
    match v {
        None => Ok(None),
        Some(x) if x.is_finite() && x >= min && x.fract() == 0.0 && x <= 9.0e15 => {
            Ok(Some(x as u64))
        }
        Some(x) => Err(to_js(strata_core::Error::config(
            name,
            format!("expected a whole number ≥ {min}, got {x}"),
        ))),
    }
}

/// The configuration as a server resolves it: code options over environment variables over
/// defaults (one place, for `init` and `doctor`).
pub(crate) fn resolve_config(o: &InitOptions) -> JsResult<Config> {
    let code = Options {
        l1_max_bytes: whole("l1MaxBytes", o.l1_max_bytes, false)?,
        max_tags: whole("maxTags", o.max_tags, false)?,
        redis_url: o.redis.clone(),
        namespace: o.namespace.clone(),
        max_ttl_seconds: whole("maxTtlSeconds", o.max_ttl_seconds, false)?,
        redis_timeout_ms: whole("redisTimeoutMs", o.redis_timeout_ms, false)?,
        l2_max_value_bytes: whole("l2MaxValueBytes", o.l2_max_value_bytes, false)?,
        compress_min_bytes: whole("compressMinBytes", o.compress_min_bytes, true)?,
        strict: o.strict,
        cluster: o.cluster,
        redis_ca_file: o.redis_ca_file.clone(),
    };
    let env = Options::from_env(|k| std::env::var(k).ok()).map_err(to_js)?;
    code.or(env).resolve().map_err(to_js)
}

/// The namespace and where it came from (see `namespace::resolve`); `dist_dir` defaults to
/// `<cwd>/.next`.
pub(crate) fn resolve_namespace(
    config: &Config,
    dist_dir: Option<&str>,
) -> strata_core::Result<(String, String)> {
    let dist = dist_dir
        .map(PathBuf::from)
        .or_else(|| std::env::current_dir().ok().map(|d| d.join(".next")))
        .unwrap_or_else(|| PathBuf::from(".next"));
    let (ns, source) = namespace::resolve(
        config.namespace.as_deref(),
        |k| std::env::var(k).ok(),
        &dist,
    )?;
    Ok((ns, source.to_string()))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn options_must_be_whole_numbers_in_range_and_name_themselves() {
        for (o, name) in [
            (
                InitOptions {
                    l1_max_bytes: Some(0.0),
                    ..Default::default()
                },
                "l1MaxBytes",
            ),
            (
                InitOptions {
                    max_tags: Some(1.5),
                    ..Default::default()
                },
                "maxTags",
            ),
            (
                InitOptions {
                    redis_timeout_ms: Some(f64::NAN),
                    ..Default::default()
                },
                "redisTimeoutMs",
            ),
            (
                InitOptions {
                    compress_min_bytes: Some(-1.0),
                    ..Default::default()
                },
                "compressMinBytes",
            ),
        ] {
            let e = resolve_config(&o).unwrap_err();
            assert_eq!(e.status.as_ref(), "STRATA_CONFIG", "{name}");
            assert!(e.reason.contains(name), "{name}: {}", e.reason);
        }
    }

    #[test]
    fn code_options_are_taken_as_given() {
        // Whatever the environment says, an option given in code wins.
        let c = resolve_config(&InitOptions {
            l1_max_bytes: Some(123_456.0),
            compress_min_bytes: Some(0.0),
            strict: Some(true),
            ..Default::default()
        })
        .unwrap();
        assert_eq!(c.l1_max_bytes, 123_456);
        assert_eq!(c.compress_min_bytes, 0);
        assert!(c.strict);
    }
}
