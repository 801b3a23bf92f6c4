//! `strata-cache doctor`: checks a deployment's configuration and Redis before it takes traffic.
//!
//! It resolves the configuration exactly as a server does at run time (the same [`Config`] and
//! [`crate::namespace::resolve`]), then, with Redis configured: measures the round trip and the
//! clock offset (the readings the cache itself uses), loads the Lua scripts, and reads the
//! server's version and eviction policy. Every step is bounded by the configured Redis deadline
//! (and the whole run by the caller's), so an unreachable or silent Redis fails the check instead
//! of hanging it. Nothing it reports contains a credential: URLs are redacted and the client
//! library's messages are scrubbed (see [`crate::l2`]).

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use crate::clock::SharedClock;
use crate::config::{redact_url, Config};
use crate::error::Error;
use crate::l2::{L2Config, L2};

/// How a check came out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    /// Fine.
    Ok,
    /// Works, but worth knowing (or fixing).
    Warn,
    /// A problem: the deployment should not take traffic like this.
    Fail,
}

impl fmt::Display for Status {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Status::Ok => "ok",
            Status::Warn => "warn",
            Status::Fail => "fail",
        })
    }
}

/// One line of the report.
#[derive(Debug, Clone, PartialEq)]
pub struct Check {
    /// What was checked (`"redis"`, `"latency"`, `"scripts"`, …).
    pub name: &'static str,
    /// The outcome.
    pub status: Status,
    /// What was found, and what to fix when it is not ok.
    pub detail: String,
}

/// What `doctor` found.
#[derive(Debug, Clone, PartialEq)]
pub struct Report {
    /// The checks, in the order they ran.
    pub checks: Vec<Check>,
}

impl Report {
    /// The worst status of all checks.
    pub fn verdict(&self) -> Status {
        if self.checks.iter().any(|c| c.status == Status::Fail) {
            Status::Fail
        } else if self.checks.iter().any(|c| c.status == Status::Warn) {
            Status::Warn
        } else {
            Status::Ok
        }
    }

    fn push(&mut self, name: &'static str, status: Status, detail: impl Into<String>) {
        self.checks.push(Check {
            name,
            status,
            detail: detail.into(),
        });
    }
}

/// Readings of Redis' clock for the latency and offset figures.
const SAMPLES: usize = 5;
/// The oldest Redis this cache runs on (exclusive `XRANGE` bounds, `GETEX`-era Lua).
const MIN_REDIS: (u32, u32) = (6, 2);

/// Runs every check for `config`. `namespace` is what [`crate::namespace::resolve`] returned
/// (its error is reported, not returned); `clock` is the local clock offsets are measured from.
/// Never fails: problems are checks with [`Status::Fail`].
pub async fn run(
    config: &Config,
    namespace: Result<(String, String), Error>,
    clock: SharedClock,
) -> Report {
    let mut report = Report { checks: Vec::new() };
    report.push(
        "l1",
        Status::Ok,
        format!(
            "in-process L1 of {} bytes, up to {} tag records",
            config.l1_max_bytes, config.max_tags
        ),
    );
    let Some(urls) = &config.redis_url else {
        report.push(
            "redis",
            Status::Warn,
            "no Redis configured (STRATA_REDIS_URL / REDIS_URL): every instance has its own \
             cache and invalidations reach only the instance that makes them; fine for one \
             instance",
        );
        return report;
    };
    let urls: Vec<String> = urls.split(',').map(|u| u.trim().to_owned()).collect();
    let redacted: Vec<String> = urls.iter().map(|u| redact_url(u)).collect();
    let cluster = config.cluster || urls.len() > 1;
    let tls = urls.iter().any(|u| u.starts_with("rediss://"));
    let mode = match (cluster, tls) {
        (true, true) => "Redis Cluster over TLS",
        (true, false) => "Redis Cluster",
        (false, true) => "a single server over TLS",
        (false, false) => "a single server",
    };
    report.push(
        "redis",
        Status::Ok,
        format!("{} ({mode})", redacted.join(",")),
    );
    let namespace = match namespace {
        Ok((ns, source)) => {
            report.push("namespace", Status::Ok, format!("\"{ns}\" (from {source})"));
            ns
        }
        Err(e) => {
            report.push("namespace", Status::Fail, e.to_string());
            return report;
        }
    };
    let op_timeout = Duration::from_millis(config.redis_timeout_ms);
    // The same L2 the server would make (`L2Config::from_config`).
    let built = L2Config::from_config(config, namespace)
        .and_then(|cfg| L2::with_clock(cfg, Arc::clone(&clock)));
    let l2 = match built {
        Ok(l2) => l2,
        Err(e) => {
            report.push("connect", Status::Fail, e.to_string());
            return report;
        }
    };

    // The round trip and clock offset, as the cache measures them.
    let (best, mut rtts) = match l2.best_server_time(SAMPLES).await {
        Ok(found) => found,
        Err(e) => {
            let detail = match e {
                Error::Timeout { .. } => format!(
                    "Redis did not answer within the {} ms deadline (STRATA_REDIS_TIMEOUT_MS): \
                     unreachable, or not answering",
                    config.redis_timeout_ms
                ),
                Error::Unavailable(msg) if msg.contains("circuit open") => {
                    "Redis kept failing (connection refused or timed out)".to_owned()
                }
                e => format!("cannot use Redis: {e}"),
            };
            report.push("connect", Status::Fail, detail);
            return report;
        }
    };
    report.push("connect", Status::Ok, "connected, TIME script answered");
    rtts.sort_by(f64::total_cmp);
    let median = rtts[rtts.len() / 2];
    let latency_status = if median > op_timeout.as_secs_f64() * 1000.0 / 4.0 {
        Status::Warn
    } else {
        Status::Ok
    };
    report.push(
        "latency",
        latency_status,
        format!(
            "round trip {:.2} ms median, {:.2} ms best of {SAMPLES}; deadline {} ms{}",
            median,
            rtts[0],
            config.redis_timeout_ms,
            if latency_status == Status::Warn {
                " (a quarter of the deadline or more: raise STRATA_REDIS_TIMEOUT_MS or move Redis closer)"
            } else {
                ""
            }
        ),
    );
    let offset = best.offset_ms();
    let offset_status = if offset.abs() > 1000.0 {
        Status::Warn
    } else {
        Status::Ok
    };
    report.push(
        "clock",
        offset_status,
        format!(
            "Redis clock − local clock ≈ {offset:.1} ms (±{:.1}); decisions use Redis' clock either way{}",
            best.rtt_ms / 2.0,
            if offset_status == Status::Warn {
                " (more than a second: check NTP on this host)"
            } else {
                ""
            }
        ),
    );

    match l2.load_scripts().await {
        Ok(()) => report.push("scripts", Status::Ok, "the Lua scripts load (SCRIPT LOAD)"),
        Err(e) => report.push(
            "scripts",
            Status::Fail,
            format!("the Lua scripts do not load: {e} (is scripting disabled on this Redis?)"),
        ),
    }

    match l2.info("server").await {
        Ok(info) => {
            let version = info.get("redis_version").cloned().unwrap_or_default();
            let mut parts = version.split('.').map(|p| p.parse::<u32>().unwrap_or(0));
            let (major, minor) = (parts.next().unwrap_or(0), parts.next().unwrap_or(0));
            if (major, minor) >= MIN_REDIS {
                report.push("version", Status::Ok, format!("Redis {version}"));
            } else {
                report.push(
                    "version",
                    Status::Fail,
                    format!(
                        "Redis {version}: {}.{} or later is required",
                        MIN_REDIS.0, MIN_REDIS.1
                    ),
                );
            }
        }
        Err(e) => report.push("version", Status::Warn, format!("INFO server failed: {e}")),
    }
    match l2.info("memory").await {
        Ok(info) => {
            let policy = info.get("maxmemory_policy").cloned().unwrap_or_default();
            let maxmemory = info.get("maxmemory").cloned().unwrap_or_default();
            let (status, detail) = eviction_verdict(&policy, &maxmemory);
            report.push("eviction", status, detail);
        }
        Err(e) => report.push("eviction", Status::Warn, format!("INFO memory failed: {e}")),
    }
    report
}

/// What an eviction policy means for strata-cache: entries carry a TTL and may be evicted; the
/// tag state and its log carry none and must not be.
fn eviction_verdict(policy: &str, maxmemory: &str) -> (Status, String) {
    let limit = if maxmemory.is_empty() || maxmemory == "0" {
        "no maxmemory".to_owned()
    } else {
        format!("maxmemory {maxmemory} bytes")
    };
    if policy.starts_with("allkeys-") {
        (
            Status::Fail,
            format!(
                "maxmemory-policy {policy} ({limit}) may evict the tag state and the invalidation \
                 log, which carry no TTL: invalidations would be lost (instances resynchronise and \
                 drop their L1 when they notice). Use volatile-lru or volatile-ttl (entries all \
                 carry a TTL)"
            ),
        )
    } else if policy == "noeviction" && limit != "no maxmemory" {
        (
            Status::Warn,
            format!(
                "maxmemory-policy noeviction ({limit}): when memory is full Redis refuses writes \
                 (entries stay L1-only, invalidations are queued until it has room); \
                 volatile-lru keeps it writable by evicting entries"
            ),
        )
    } else if policy.is_empty() {
        (Status::Warn, "maxmemory-policy not reported".to_owned())
    } else {
        (Status::Ok, format!("maxmemory-policy {policy} ({limit})"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn evicting_every_key_is_a_failure_volatile_is_fine() {
        assert_eq!(eviction_verdict("allkeys-lru", "1000").0, Status::Fail);
        assert_eq!(eviction_verdict("allkeys-lfu", "0").0, Status::Fail);
        assert_eq!(eviction_verdict("volatile-lru", "1000").0, Status::Ok);
        assert_eq!(eviction_verdict("noeviction", "0").0, Status::Ok);
        assert_eq!(eviction_verdict("noeviction", "1000").0, Status::Warn);
    }

    #[test]
    fn the_verdict_is_the_worst_check() {
        let mut r = Report { checks: Vec::new() };
        r.push("a", Status::Ok, "");
        assert_eq!(r.verdict(), Status::Ok);
        r.push("b", Status::Warn, "");
        assert_eq!(r.verdict(), Status::Warn);
        r.push("c", Status::Fail, "");
        r.push("d", Status::Ok, "");
        assert_eq!(r.verdict(), Status::Fail);
    }
}
