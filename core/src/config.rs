//! Configuration, resolved at run time when the handler is first used (never at `next build`).
//!
//! Precedence: options passed in code (`createUseCacheHandler(options)`) win over environment
//! variables, which win over defaults. Every environment variable is documented in the README.

use crate::error::{Error, Result};

/// Default L1 bound: 64 MiB.
pub const DEFAULT_L1_MAX_BYTES: u64 = 64 * 1024 * 1024;
/// Default bound on the number of tag records kept in memory.
pub const DEFAULT_MAX_TAGS: u64 = 100_000;
/// Default cap on any entry's lifetime in L1 and L2, and retention of tag records: 30 days.
pub const DEFAULT_MAX_TTL_SECONDS: u64 = 30 * 24 * 3600;
/// Default deadline of one Redis operation.
pub const DEFAULT_REDIS_TIMEOUT_MS: u64 = 250;
/// Default largest value written to Redis; larger ones stay L1-only.
pub const DEFAULT_L2_MAX_VALUE_BYTES: u64 = 8 * 1024 * 1024;
/// Default size from which values are LZ4-compressed in Redis.
pub const DEFAULT_COMPRESS_MIN_BYTES: u64 = 4 * 1024;

/// Options as the user gave them (code or environment); `None` = not given.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Options {
    /// `l1MaxBytes` / `STRATA_L1_MAX_BYTES`.
    pub l1_max_bytes: Option<u64>,
    /// `maxTags` / `STRATA_MAX_TAGS`.
    pub max_tags: Option<u64>,
    /// `redis` / `STRATA_REDIS_URL`, else `REDIS_URL`.
    pub redis_url: Option<String>,
    /// `namespace` / `STRATA_NAMESPACE`.
    pub namespace: Option<String>,
    /// `maxTtlSeconds` / `STRATA_MAX_TTL_SECONDS`.
    pub max_ttl_seconds: Option<u64>,
    /// `redisTimeoutMs` / `STRATA_REDIS_TIMEOUT_MS`.
    pub redis_timeout_ms: Option<u64>,
    /// `l2MaxValueBytes` / `STRATA_L2_MAX_VALUE_BYTES`.
    pub l2_max_value_bytes: Option<u64>,
    /// `compressMinBytes` / `STRATA_COMPRESS_MIN_BYTES` (`0` disables compression).
    pub compress_min_bytes: Option<u64>,
    /// `strict` / `STRATA_STRICT`.
    pub strict: Option<bool>,
    /// `cluster` / `STRATA_REDIS_CLUSTER`.
    pub cluster: Option<bool>,
    /// `redisCaFile` / `STRATA_REDIS_CA_FILE`: PEM file of the CA(s) to trust for `rediss://`.
    pub redis_ca_file: Option<String>,
}

/// The resolved configuration.
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    /// Upper bound of L1 in bytes (values + keys + metadata).
    pub l1_max_bytes: u64,
    /// Upper bound of tag records kept in memory.
    pub max_tags: u64,
    /// Redis URL, when an L2 is configured.
    pub redis_url: Option<String>,
    /// Explicit namespace, when given.
    pub namespace: Option<String>,
    /// Cap on entry lifetimes (L1 and L2) and retention of tag records, in seconds.
    pub max_ttl_seconds: u64,
    /// Deadline of one Redis operation in ms.
    pub redis_timeout_ms: u64,
    /// Largest value written to Redis.
    pub l2_max_value_bytes: u64,
    /// Values at least this large are compressed in Redis; `0` = never.
    pub compress_min_bytes: u64,
    /// Strict mode: an invalidation that cannot be recorded in Redis rejects, and tag state that
    /// cannot be refreshed makes reads miss.
    pub strict: bool,
    /// Treat the Redis URL(s) as Redis Cluster seed nodes.
    pub cluster: bool,
    /// For `rediss://`: a PEM file of the CA(s) to trust instead of the built-in web PKI roots.
    pub redis_ca_file: Option<String>,
}

/// Environment variable names, in one place so the README and the code agree.
pub mod env {
    /// L1 size bound, bytes or with a unit (`64MiB`, `512mb`, `1g`).
    pub const L1_MAX_BYTES: &str = "STRATA_L1_MAX_BYTES";
    /// Bound on in-memory tag records.
    pub const MAX_TAGS: &str = "STRATA_MAX_TAGS";
    /// Redis URL (preferred).
    pub const REDIS_URL: &str = "STRATA_REDIS_URL";
    /// Redis URL (common convention, used when `STRATA_REDIS_URL` is unset).
    pub const REDIS_URL_FALLBACK: &str = "REDIS_URL";
    /// Namespace override.
    pub const NAMESPACE: &str = "STRATA_NAMESPACE";
    /// Cap on entry lifetimes and tag retention, seconds.
    pub const MAX_TTL_SECONDS: &str = "STRATA_MAX_TTL_SECONDS";
    /// Deadline of one Redis operation, ms.
    pub const REDIS_TIMEOUT_MS: &str = "STRATA_REDIS_TIMEOUT_MS";
    /// Largest value written to Redis (bytes or with a unit).
    pub const L2_MAX_VALUE_BYTES: &str = "STRATA_L2_MAX_VALUE_BYTES";
    /// Compression threshold (bytes or with a unit; `0` = off).
    pub const COMPRESS_MIN_BYTES: &str = "STRATA_COMPRESS_MIN_BYTES";
    /// Strict mode (`1`/`true`).
    pub const STRICT: &str = "STRATA_STRICT";
    /// Redis Cluster (`1`/`true`).
    pub const REDIS_CLUSTER: &str = "STRATA_REDIS_CLUSTER";
    /// PEM file of the CA(s) trusted for `rediss://`.
    pub const REDIS_CA_FILE: &str = "STRATA_REDIS_CA_FILE";
}

impl Options {
    /// Reads the options from environment variables through `get` (injectable for tests).
    pub fn from_env(get: impl Fn(&str) -> Option<String>) -> Result<Self> {
        let non_empty = |name: &str| {
            get(name)
                .map(|v| v.trim().to_owned())
                .filter(|v| !v.is_empty())
        };
        let l1_max_bytes = match non_empty(env::L1_MAX_BYTES) {
            Some(v) => Some(parse_bytes(&v).map_err(|r| Error::config(env::L1_MAX_BYTES, r))?),
            None => None,
        };
        let max_tags = match non_empty(env::MAX_TAGS) {
            Some(v) => Some(v.parse::<u64>().map_err(|_| {
                Error::config(env::MAX_TAGS, format!("expected a whole number, got {v:?}"))
            })?),
            None => None,
        };
        let whole = |name: &str| -> Result<Option<u64>> {
            match non_empty(name) {
                Some(v) => v.parse::<u64>().map(Some).map_err(|_| {
                    Error::config(name, format!("expected a whole number, got {v:?}"))
                }),
                None => Ok(None),
            }
        };
        let size = |name: &str| -> Result<Option<u64>> {
            match non_empty(name) {
                Some(v) if v == "0" => Ok(Some(0)),
                Some(v) => parse_bytes(&v)
                    .map(Some)
                    .map_err(|r| Error::config(name, r)),
                None => Ok(None),
            }
        };
        let flag = |name: &str| -> Result<Option<bool>> {
            match non_empty(name).map(|v| v.to_ascii_lowercase()) {
                None => Ok(None),
                Some(v) if ["1", "true", "yes", "on"].contains(&v.as_str()) => Ok(Some(true)),
                Some(v) if ["0", "false", "no", "off"].contains(&v.as_str()) => Ok(Some(false)),
                Some(v) => Err(Error::config(
                    name,
                    format!("expected true or false, got {v:?}"),
                )),
            }
        };
        Ok(Self {
            l1_max_bytes,
            max_tags,
            redis_url: non_empty(env::REDIS_URL).or_else(|| non_empty(env::REDIS_URL_FALLBACK)),
            namespace: non_empty(env::NAMESPACE),
            max_ttl_seconds: whole(env::MAX_TTL_SECONDS)?,
            redis_timeout_ms: whole(env::REDIS_TIMEOUT_MS)?,
            l2_max_value_bytes: size(env::L2_MAX_VALUE_BYTES)?,
            compress_min_bytes: size(env::COMPRESS_MIN_BYTES)?,
            strict: flag(env::STRICT)?,
            cluster: flag(env::REDIS_CLUSTER)?,
            redis_ca_file: non_empty(env::REDIS_CA_FILE),
        })
    }

    /// `self` where given, else `fallback`.
    pub fn or(self, fallback: Options) -> Options {
        Options {
            l1_max_bytes: self.l1_max_bytes.or(fallback.l1_max_bytes),
            max_tags: self.max_tags.or(fallback.max_tags),
            redis_url: self.redis_url.or(fallback.redis_url),
            namespace: self.namespace.or(fallback.namespace),
            max_ttl_seconds: self.max_ttl_seconds.or(fallback.max_ttl_seconds),
            redis_timeout_ms: self.redis_timeout_ms.or(fallback.redis_timeout_ms),
            l2_max_value_bytes: self.l2_max_value_bytes.or(fallback.l2_max_value_bytes),
            compress_min_bytes: self.compress_min_bytes.or(fallback.compress_min_bytes),
            strict: self.strict.or(fallback.strict),
            cluster: self.cluster.or(fallback.cluster),
            redis_ca_file: self.redis_ca_file.or(fallback.redis_ca_file),
        }
    }

    /// Applies defaults and checks values.
    pub fn resolve(self) -> Result<Config> {
        let l1_max_bytes = self.l1_max_bytes.unwrap_or(DEFAULT_L1_MAX_BYTES);
        if l1_max_bytes == 0 {
            return Err(Error::config("l1MaxBytes", "must be at least 1 byte"));
        }
        let max_tags = self.max_tags.unwrap_or(DEFAULT_MAX_TAGS);
        if max_tags == 0 {
            return Err(Error::config("maxTags", "must be at least 1"));
        }
        if let Some(urls) = &self.redis_url {
            for url in urls.split(',').map(str::trim) {
                if !(url.starts_with("redis://")
                    || url.starts_with("rediss://")
                    || url.starts_with("redis+unix://")
                    || url.starts_with("unix://"))
                {
                    return Err(Error::config(
                        "redis",
                        format!(
                            "expected a redis:// or rediss:// URL, got {}",
                            redact_url(url)
                        ),
                    ));
                }
            }
        }
        let max_ttl_seconds = self.max_ttl_seconds.unwrap_or(DEFAULT_MAX_TTL_SECONDS);
        if max_ttl_seconds == 0 {
            return Err(Error::config("maxTtlSeconds", "must be at least 1"));
        }
        let redis_timeout_ms = self.redis_timeout_ms.unwrap_or(DEFAULT_REDIS_TIMEOUT_MS);
        if redis_timeout_ms == 0 || redis_timeout_ms > 60_000 {
            return Err(Error::config(
                "redisTimeoutMs",
                "must be between 1 and 60000",
            ));
        }
        let l2_max_value_bytes = self
            .l2_max_value_bytes
            .unwrap_or(DEFAULT_L2_MAX_VALUE_BYTES);
        if l2_max_value_bytes == 0 || l2_max_value_bytes > u32::MAX as u64 {
            return Err(Error::config(
                "l2MaxValueBytes",
                "must be between 1 byte and 4 GiB",
            ));
        }
        if let Some(ns) = &self.namespace {
            validate_namespace(ns)?;
        }
        let urls_count = self
            .redis_url
            .as_deref()
            .map_or(0, |u| u.split(',').count());
        Ok(Config {
            l1_max_bytes,
            max_tags,
            cluster: self.cluster.unwrap_or(urls_count > 1),
            redis_url: self.redis_url,
            namespace: self.namespace,
            max_ttl_seconds,
            redis_timeout_ms,
            l2_max_value_bytes,
            compress_min_bytes: self
                .compress_min_bytes
                .unwrap_or(DEFAULT_COMPRESS_MIN_BYTES),
            strict: self.strict.unwrap_or(false),
            redis_ca_file: self.redis_ca_file,
        })
    }
}

/// A namespace is printable ASCII without braces (they would break Cluster hash tags) and not
/// longer than 128 bytes.
pub fn validate_namespace(ns: &str) -> Result<()> {
    if ns.is_empty() || ns.len() > 128 {
        return Err(Error::config("namespace", "must be 1 to 128 characters"));
    }
    if !ns
        .bytes()
        .all(|b| b.is_ascii_graphic() && b != b'{' && b != b'}')
    {
        return Err(Error::config(
            "namespace",
            "may only contain printable ASCII without spaces, `{` or `}`",
        ));
    }
    Ok(())
}

/// Parses `"67108864"`, `"64MiB"`, `"64mb"`, `"1g"`, `"512 KiB"` into bytes (units are powers of
/// 1024: cache sizes are memory sizes).
pub fn parse_bytes(s: &str) -> std::result::Result<u64, String> {
    let s = s.trim();
    let split = s
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let value: f64 = num
        .parse()
        .map_err(|_| format!("expected a size like 67108864 or 64MiB, got {s:?}"))?;
    let mult: f64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1.0,
        "k" | "kb" | "kib" => 1024.0,
        "m" | "mb" | "mib" => 1024.0 * 1024.0,
        "g" | "gb" | "gib" => 1024.0 * 1024.0 * 1024.0,
        other => return Err(format!("unknown size unit {other:?} in {s:?}")),
    };
    let bytes = value * mult;
    if !bytes.is_finite() || bytes < 1.0 || bytes > u64::MAX as f64 {
        return Err(format!("size out of range: {s:?}"));
    }
    Ok(bytes as u64)
}

/// A Redis URL with its password (and user) replaced by `***`, for logs and errors.
pub fn redact_url(url: &str) -> String {
    let Some(scheme_end) = url.find("://") else {
        return "<unparseable url>".to_owned();
    };
    let rest = &url[scheme_end + 3..];
    let authority_end = rest.find('/').unwrap_or(rest.len());
    match rest[..authority_end].rfind('@') {
        Some(at) => format!("{}://***@{}", &url[..scheme_end], &rest[at + 1..]),
        None => url.to_owned(),
    }
}

/// An environment made of `pairs`, for tests of everything that reads variables.
#[cfg(test)]
pub(crate) fn env_of(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
    let map: std::collections::HashMap<String, String> = pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    move |k| map.get(k).cloned()
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn defaults() {
        let c = Options::from_env(env_of(&[])).unwrap().resolve().unwrap();
        assert_eq!(c.l1_max_bytes, DEFAULT_L1_MAX_BYTES);
        assert_eq!(c.redis_url, None);
    }

    #[test]
    fn env_and_code_precedence() {
        let env = Options::from_env(env_of(&[
            ("STRATA_L1_MAX_BYTES", "16MiB"),
            ("REDIS_URL", "redis://a:6379"),
            ("STRATA_NAMESPACE", "prod-1"),
        ]))
        .unwrap();
        assert_eq!(env.l1_max_bytes, Some(16 * 1024 * 1024));
        let code = Options {
            l1_max_bytes: Some(1000),
            ..Default::default()
        };
        let c = code.or(env).resolve().unwrap();
        assert_eq!(c.l1_max_bytes, 1000);
        assert_eq!(c.redis_url.as_deref(), Some("redis://a:6379"));
        assert_eq!(c.namespace.as_deref(), Some("prod-1"));
        let pref = Options::from_env(env_of(&[
            ("STRATA_REDIS_URL", "redis://b"),
            ("REDIS_URL", "redis://a"),
        ]))
        .unwrap();
        assert_eq!(pref.redis_url.as_deref(), Some("redis://b"));
    }

    #[test]
    fn bad_values_name_the_option() {
        let e = Options::from_env(env_of(&[("STRATA_L1_MAX_BYTES", "lots")])).unwrap_err();
        assert!(e.to_string().contains("STRATA_L1_MAX_BYTES"), "{e}");
        assert_eq!(e.code(), "STRATA_CONFIG");
        let e = Options {
            l1_max_bytes: Some(0),
            ..Default::default()
        }
        .resolve()
        .unwrap_err();
        assert!(e.to_string().contains("l1MaxBytes"));
        let e = Options {
            redis_url: Some("http://user:hunter2@host".into()),
            ..Default::default()
        }
        .resolve()
        .unwrap_err();
        assert!(!e.to_string().contains("hunter2"), "{e}");
        assert!(Options {
            namespace: Some("a{b}".into()),
            ..Default::default()
        }
        .resolve()
        .is_err());
    }

    #[test]
    fn parse_bytes_units() {
        assert_eq!(parse_bytes("1024").unwrap(), 1024);
        assert_eq!(parse_bytes("1k").unwrap(), 1024);
        assert_eq!(parse_bytes("64MiB").unwrap(), 64 << 20);
        assert_eq!(parse_bytes("1.5 GB").unwrap(), 3 << 29);
        assert!(parse_bytes("0").is_err());
        assert!(parse_bytes("-5").is_err());
        assert!(parse_bytes("5 parsecs").is_err());
    }

    #[test]
    fn redaction() {
        assert_eq!(
            redact_url("redis://user:secret@host:6379/0"),
            "redis://***@host:6379/0"
        );
        assert_eq!(redact_url("redis://host:6379"), "redis://host:6379");
        assert_eq!(redact_url("rediss://:pw@h"), "rediss://***@h");
    }
}
