//! The shared Redis L2: entries, the tag state and its invalidation log (design notes §1–§3, §7).
//!
//! # Keys (Redis Cluster safe)
//!
//! * Entries: `sc:<ns>:e:{<xxh3-128 of the Next key, 32 hex>}` (`:i:` for the incremental
//!   cache's), hash-tagged by the entry, so entries spread over every slot. The full Next key is inside the envelope; the layer above
//!   compares it, so a hash collision is a miss, never a wrong page.
//! * Tag state, its index, its log and its epoch share one hash tag, `{sc:<ns>:tags}`, so one
//!   script updates them atomically on one node:
//!   * `{sc:<ns>:tags}:state`: HASH tag → `"stale|expired|updated_at"` (ms in the Redis clock,
//!     empty for none; `%.17g`, so every stamp round-trips exactly);
//!   * `{sc:<ns>:tags}:idx`: ZSET tag → the last time the record can matter (for pruning);
//!   * `{sc:<ns>:tags}:log`: STREAM, one entry per `update_tags` (tag → new state), trimmed
//!     with `MAXLEN ~`;
//!   * `{sc:<ns>:tags}:epoch`: STRING, the identity of the tag state. It is created with the
//!     first invalidation; when it vanishes or changes, Redis lost data (restarted empty,
//!     flushed) and every instance resynchronises and drops its L1.
//!
//! The tag keys carry no TTL: with a `volatile-*` eviction policy only entries (which all have
//! one) are evicted. Under `allkeys-*` a lost tag key is detected through the epoch only.
//!
//! # Scripts
//!
//! `lua/update_tags.lua`, `lua/refresh.lua` and `lua/time.lua`, run with `EVALSHA` (and `EVAL`
//! on `NOSCRIPT`, see [`protocol`]). Their cost never depends on how many
//! entries carry a tag: entries are never scanned or deleted by tag, they are judged against
//! the tag state when read and leave Redis by their TTL. Nothing here uses `CONFIG`, `KEYS`,
//! `SCAN` or keyspace notifications, so managed Redis works. Redis ≥ 6.2 (exclusive `XRANGE`).
//!
//! # Failure behaviour
//!
//! Every call, on either transport, starts with [`L2::begin`] and ends with
//! [`protocol::Call::end`]: gated by the [`Breaker`] (open → [`Error::Unavailable`]`("circuit
//! open")` at once, without I/O), bounded by `op_timeout` (→ [`Error::Timeout`], which includes
//! waiting for a connection), reported to the breaker by the rules of [`protocol`]. No call is
//! retried (an `EVALSHA` answered `NOSCRIPT` is sent once more, as `EVAL`).
//!
//! The connection is made lazily, by the first call, in a background task bounded by
//! `connect_timeout` (callers wait for it within their own `op_timeout`, so a slow first connect
//! keeps progressing across calls). A failed connect leaves nothing behind: the next call tries
//! again. After a connection error the connection is dropped and the next call connects anew,
//! so the breaker's single probe finds a restarted Redis at once (the connection manager alone
//! would fail the first call after a restart while it reconnects in the background).
//!
//! Passwords in URLs never reach an error message: URLs are shown through
//! [`redact_url`], and any text from the client library is scrubbed of the credentials.

mod keys;
mod pipe;
pub mod protocol;
mod scripts;
mod transport;

use std::fmt;
use std::sync::atomic::AtomicU64;
use std::sync::Arc;
use std::time::{Duration, Instant};

use std::borrow::Cow;

use bytes::Bytes;
use parking_lot::Mutex;
use redis::cluster::{ClusterClient, ClusterClientBuilder};
use redis::RedisError;

use crate::breaker::{Breaker, BreakerConfig};
use crate::clock::{SharedClock, SystemClock};
use crate::config::{redact_url, validate_namespace};
use crate::error::{Error, Result};
use crate::resp;
use crate::tags::{Durations, TagState};

pub use keys::Keys;
use protocol::{judge_get, judge_set, unexpected, Command, Failure};
pub(crate) use scripts::parse_refresh;
use scripts::{parse_ms, parse_state, strings, REFRESH, TIME, UPDATE_TAGS};
use transport::{scrub, secrets_of, Slot};

/// Log entries read per `refresh` round trip; [`Refresh::Incremental::more`] says when to call
/// again.
pub const REFRESH_BATCH: usize = 512;

/// A `durations.expire` beyond this many seconds (or infinite) is stored as this: about 31 700
/// years, so "never" stays a finite, exactly representable stamp.
const MAX_EXPIRE_SECONDS: f64 = crate::entry::MAX_LIFETIME_SECONDS;

/// Configuration of the L2.
#[derive(Clone)]
pub struct L2Config {
    /// One URL = a single server; several (or `cluster = true`) = Redis Cluster seed nodes.
    pub urls: Vec<String>,
    /// Treat `urls` as Redis Cluster seed nodes even when there is only one.
    pub cluster: bool,
    /// The namespace prefixing every key (printable ASCII, no braces, at most 128 bytes).
    pub namespace: String,
    /// Deadline of every Redis call, including waiting for a connection (default 250 ms).
    pub op_timeout: Duration,
    /// Deadline of one connection attempt (default 1 s).
    pub connect_timeout: Duration,
    /// Cap on any entry TTL and retention of tag records (default 30 days).
    pub max_ttl: Duration,
    /// Approximate cap on the length of the invalidation log (default 10 000).
    pub log_max_len: usize,
    /// The longest reply accepted (default [`resp::DEFAULT_MAX_REPLY`]): a longer one drops the
    /// connection before it is buffered (a single server over plain TCP or TLS, on either
    /// transport; a cluster's replies are bounded by the deadline only).
    pub max_reply_bytes: usize,
    /// The circuit breaker's tuning.
    pub breaker: BreakerConfig,
    /// For `rediss://`: PEM of the CA(s) to trust instead of the built-in web PKI roots.
    pub ca_pem: Option<Vec<u8>>,
}

/// Room for the key, the tags and the fixed fields of an envelope around a payload.
const ENVELOPE_HEADROOM: usize = 4 * 1024 * 1024;

/// The largest envelope written (and accepted as a reply) for payloads of at most
/// `max_value_bytes`: a bigger reply is never ours.
pub fn max_envelope(max_value_bytes: usize) -> usize {
    max_value_bytes.saturating_add(ENVELOPE_HEADROOM)
}

impl L2Config {
    /// The L2 of a resolved configuration in `namespace`: the one rule for the cache and for
    /// `doctor` (URLs, deadlines, the reply bound, the CA file).
    ///
    /// # Errors
    /// [`Error::Config`] when `redisCaFile` cannot be read; an `L2Config` for no Redis URL has
    /// no URLs (which [`L2::new`] refuses).
    pub fn from_config(config: &crate::config::Config, namespace: String) -> Result<Self> {
        let urls = config.redis_url.as_deref().unwrap_or_default();
        let max_value = usize::try_from(config.l2_max_value_bytes).unwrap_or(usize::MAX);
        Ok(L2Config {
            urls: urls.split(',').map(|u| u.trim().to_owned()).collect(),
            cluster: config.cluster,
            namespace,
            op_timeout: Duration::from_millis(config.redis_timeout_ms),
            connect_timeout: Duration::from_millis(config.redis_timeout_ms.max(1000)),
            max_ttl: Duration::from_secs(config.max_ttl_seconds),
            max_reply_bytes: max_envelope(max_value),
            ca_pem: match &config.redis_ca_file {
                Some(path) => Some(std::fs::read(path).map_err(|e| {
                    Error::config("redisCaFile", format!("cannot read {path}: {e}"))
                })?),
                None => None,
            },
            ..L2Config::default()
        })
    }
}

impl Default for L2Config {
    /// No URL (set one), namespace `"default"`, and the defaults documented on each field.
    fn default() -> Self {
        L2Config {
            urls: Vec::new(),
            cluster: false,
            namespace: "default".to_owned(),
            op_timeout: Duration::from_millis(250),
            connect_timeout: Duration::from_secs(1),
            max_ttl: Duration::from_secs(30 * 24 * 3600),
            log_max_len: 10_000,
            max_reply_bytes: resp::DEFAULT_MAX_REPLY,
            breaker: BreakerConfig::default(),
            ca_pem: None,
        }
    }
}

impl fmt::Debug for L2Config {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let urls: Vec<String> = self.urls.iter().map(|u| redact_url(u)).collect();
        f.debug_struct("L2Config")
            .field("urls", &urls)
            .field("cluster", &self.cluster)
            .field("namespace", &self.namespace)
            .field("op_timeout", &self.op_timeout)
            .field("connect_timeout", &self.connect_timeout)
            .field("max_ttl", &self.max_ttl)
            .field("log_max_len", &self.log_max_len)
            .field("breaker", &self.breaker)
            .finish()
    }
}

/// Where an instance is in the invalidation log. The default (empty) cursor = never synced.
#[derive(Clone, Default, PartialEq, Eq, Debug)]
pub struct LogCursor {
    /// The epoch the cursor belongs to (empty = none seen).
    pub epoch: String,
    /// The last log entry id read (empty = none).
    pub last_id: String,
}

/// What [`L2::update_tags`] recorded.
#[derive(Clone, Debug, PartialEq)]
pub struct TagUpdate {
    /// The invalidation time, from Redis' clock (`TIME`), in ms.
    pub server_now_ms: f64,
    /// The new state of every distinct tag given, in the order given.
    pub states: Vec<(String, TagState)>,
    /// The epoch and the id of the (last) log entry this update wrote; the default cursor when
    /// no tag was given (nothing was written).
    pub cursor_after: LogCursor,
}

/// The answer of [`L2::refresh`].
#[derive(Clone, Debug, PartialEq)]
pub enum Refresh {
    /// Changes since the cursor, in log order (later wins); empty when nothing happened.
    Incremental {
        /// The cursor to use next time.
        cursor: LogCursor,
        /// `(tag, new state)` in log order.
        changes: Vec<(String, TagState)>,
        /// The batch was full ([`REFRESH_BATCH`] log entries): call again with `cursor`.
        more: bool,
    },
    /// The whole state: the cursor's epoch is not the current one, or log entries after it were
    /// trimmed away. Replace the mirror with `all`.
    Resync {
        /// The cursor to use next time.
        cursor: LogCursor,
        /// Every tag record.
        all: Vec<(String, TagState)>,
        /// The epoch changed or vanished (Redis restarted empty, was flushed, failed over to a
        /// replica that lacked invalidations we had seen): entries cached before may have
        /// missed invalidations, so the caller must drop its L1.
        data_lost: bool,
    },
}

/// One reading of the Redis clock.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct ServerTime {
    /// Redis `TIME` in ms (on the node that stamps invalidations).
    pub server_ms: f64,
    /// The local wall clock at the midpoint of the round trip, in ms.
    pub local_mid_ms: f64,
    /// The round trip in ms; `server_ms - local_mid_ms` is off by at most about half of it.
    pub rtt_ms: f64,
}

impl ServerTime {
    /// `redis clock − local clock`, the lower bound of what this reading allows: Redis read its
    /// clock somewhere inside the round trip, so the true offset lies in [server − local_after,
    /// server − local_before]. With the lower bound entries are stamped no later than they were
    /// written, and an invalidation made just after a write always reaches it (the other
    /// choice lets it survive by up to half a round trip); the cost is that an entry written
    /// within that error after an invalidation is taken for older than it: one extra miss.
    pub fn offset_ms(&self) -> f64 {
        self.server_ms - (self.local_mid_ms + self.rtt_ms / 2.0)
    }
}

/// The Redis L2. `Send + Sync`; share it in an `Arc`. Use it from one tokio runtime (the
/// connection's I/O task lives on the runtime of the first call).
pub struct L2 {
    inner: Arc<Inner>,
}

impl fmt::Debug for L2 {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("L2")
            .field("targets", &self.inner.targets)
            .field("namespace", &self.inner.keys.namespace())
            .field("breaker", &self.inner.breaker.state())
            .finish()
    }
}

struct Inner {
    backend: Backend,
    /// Redacted URLs, for messages.
    targets: String,
    /// Credentials as they may appear in the client library's messages.
    secrets: Vec<String>,
    keys: Keys,
    breaker: Breaker,
    clock: SharedClock,
    op_timeout: Duration,
    connect_timeout: Duration,
    max_ttl_ms: u64,
    log_max_len: usize,
    max_reply_bytes: usize,
    /// For `rediss://`: the CA(s) to trust instead of the web PKI roots.
    ca_pem: Option<Vec<u8>>,
    slot: Mutex<Slot>,
    generation: AtomicU64,
}

enum Backend {
    Single(Box<redis::Client>),
    Cluster(Box<ClusterClient>),
}

/// A single Redis server reachable over plain TCP with RESP2 (see [`L2::direct_target`]).
#[derive(Clone)]
pub struct DirectTarget {
    /// Host name or address.
    pub host: String,
    /// Port.
    pub port: u16,
    /// `AUTH` user name (ACL), if any.
    pub username: Option<String>,
    /// `AUTH` password, if any.
    pub password: Option<String>,
    /// The database to `SELECT`.
    pub db: i64,
}

impl fmt::Debug for DirectTarget {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Never the password.
        f.debug_struct("DirectTarget")
            .field("host", &self.host)
            .field("port", &self.port)
            .field("db", &self.db)
            .finish_non_exhaustive()
    }
}

impl L2 {
    /// An L2 for `cfg`, reading the local clock for [`L2::server_time`] from the system clock.
    /// No I/O: the connection is made by the first call.
    pub fn new(cfg: L2Config) -> Result<Self> {
        Self::with_clock(cfg, Arc::new(SystemClock))
    }

    /// Like [`L2::new`], with the local clock [`L2::server_time`] compares against (the clock
    /// the caller's offset applies to).
    pub fn with_clock(cfg: L2Config, clock: SharedClock) -> Result<Self> {
        validate_namespace(&cfg.namespace)?;
        let urls: Vec<String> = cfg
            .urls
            .iter()
            .map(|u| u.trim().to_owned())
            .filter(|u| !u.is_empty())
            .collect();
        if urls.is_empty() {
            return Err(Error::config("redis", "no Redis URL given"));
        }
        let op_timeout = cfg.op_timeout.max(Duration::from_millis(1));
        let connect_timeout = cfg.connect_timeout.max(Duration::from_millis(1));
        let targets = urls
            .iter()
            .map(|u| redact_url(u))
            .collect::<Vec<_>>()
            .join(",");
        let secrets = secrets_of(&urls);
        let scrub_all = |e: &RedisError| scrub(&e.to_string(), &secrets);
        let tls = |pem: &Vec<u8>| redis::TlsCertificates {
            client_tls: None,
            root_cert: Some(pem.clone()),
        };
        let backend = if cfg.cluster || urls.len() > 1 {
            let mut builder = ClusterClientBuilder::new(urls.iter().map(String::as_str))
                .connection_timeout(connect_timeout)
                .response_timeout(op_timeout)
                // Redirections (MOVED/ASK) after a resharding count as retries; anything
                // slower is cut by `op_timeout` anyway.
                .retries(2);
            if let Some(pem) = &cfg.ca_pem {
                builder = builder.certs(tls(pem));
            }
            let client = builder
                .build()
                .map_err(|e| Error::config("redis", format!("{targets}: {}", scrub_all(&e))))?;
            Backend::Cluster(Box::new(client))
        } else {
            let url = &urls[0];
            let client = match &cfg.ca_pem {
                Some(pem) if url.starts_with("rediss://") => {
                    redis::Client::build_with_tls(url.as_str(), tls(pem))
                }
                _ => redis::Client::open(url.as_str()),
            }
            .map_err(|e| {
                Error::config("redis", format!("{}: {}", redact_url(url), scrub_all(&e)))
            })?;
            Backend::Single(Box::new(client))
        };
        let max_ttl_ms = u64::try_from(cfg.max_ttl.as_millis())
            .unwrap_or(u64::MAX)
            .max(1);
        Ok(L2 {
            inner: Arc::new(Inner {
                backend,
                targets,
                secrets,
                keys: Keys::new(&cfg.namespace),
                breaker: Breaker::new(cfg.breaker),
                clock,
                op_timeout,
                connect_timeout,
                max_ttl_ms,
                log_max_len: cfg.log_max_len.max(1),
                max_reply_bytes: cfg.max_reply_bytes,
                ca_pem: cfg.ca_pem.clone(),
                slot: Mutex::new(Slot::Empty),
                generation: AtomicU64::new(0),
            }),
        })
    }

    /// The keys of this namespace.
    pub fn keys(&self) -> &Keys {
        &self.inner.keys
    }

    /// The circuit breaker guarding every call.
    pub fn breaker(&self) -> &Breaker {
        &self.inner.breaker
    }

    /// The deadline of every operation.
    pub fn op_timeout(&self) -> Duration {
        self.inner.op_timeout
    }

    /// The longest reply accepted ([`max_envelope`] of the configured value bound).
    pub fn max_reply_bytes(&self) -> usize {
        self.inner.max_reply_bytes
    }

    /// Where a direct connection (the event-loop read path, `src/uv/`) can go: a
    /// single server over plain TCP speaking RESP2. `None` for a cluster, a Unix socket, TLS or
    /// RESP3: those reads stay on the runtime.
    pub fn direct_target(&self) -> Option<DirectTarget> {
        let Backend::Single(client) = &self.inner.backend else {
            return None;
        };
        let info = client.get_connection_info();
        let redis::ConnectionAddr::Tcp(host, port) = info.addr() else {
            return None;
        };
        let settings = info.redis_settings();
        if settings.protocol() != redis::ProtocolVersion::RESP2 {
            return None;
        }
        Some(DirectTarget {
            host: host.clone(),
            port: *port,
            username: settings.username().map(str::to_owned),
            password: settings.password().map(str::to_owned),
            db: settings.db(),
        })
    }

    /// Opens a direct connection to `target` (from [`L2::direct_target`]): connect, `AUTH`,
    /// `SELECT`, all within `connect_timeout + op_timeout`; returned non-blocking, with
    /// `TCP_NODELAY`, for a reader outside the runtime. Gated and reported like any call.
    pub async fn open_direct(&self, target: &DirectTarget) -> Result<std::net::TcpStream> {
        let call = self.begin_within("connect", self.inner.connect_deadline())?;
        let (got, stream) =
            match tokio::time::timeout_at(call.deadline(), self.handshake(target)).await {
                Ok(Ok(stream)) => (Ok(resp::Reply::Nil), Some(stream)),
                Ok(Err(failure)) => (Err(failure), None),
                Err(_elapsed) => (Err(Failure::Timeout), None),
            };
        let ended = call.end(got);
        match (ended.reply, stream) {
            (Ok(_), Some(stream)) => Ok(stream),
            (Err(e), _) => Err(e),
            (Ok(_), None) => Err(Error::Internal("connect: no stream".to_owned())),
        }
    }

    /// The `GET` of Next key `key`'s entry (its reply goes to [`protocol::judge_get`]).
    pub fn get_command(&self, key: &str) -> Command<'static> {
        Command::new(vec![
            Cow::Borrowed(b"GET"),
            Cow::Owned(self.inner.keys.entry(key).into_bytes()),
        ])
    }

    /// The raw stored bytes (an envelope) of Next key `key`, or `None`.
    pub async fn get_entry(&self, key: &str) -> Result<Option<Bytes>> {
        judge_get(self.exchange("get_entry", self.get_command(key)).await?)
    }

    /// The `SET` of `value` under Next key `key` for `ttl`, clamped to `[1 ms, max_ttl]`
    /// (rounded up to whole ms); its reply goes to [`protocol::judge_set`].
    pub fn set_command<'a>(&self, key: &str, value: &'a [u8], ttl: Duration) -> Command<'a> {
        Command::new(vec![
            Cow::Borrowed(b"SET"),
            Cow::Owned(self.inner.keys.entry(key).into_bytes()),
            Cow::Borrowed(value),
            Cow::Borrowed(b"PX"),
            Cow::Owned(self.ttl_ms(ttl).to_string().into_bytes()),
        ])
    }

    /// Stores `value` under Next key `key` for `ttl` (see [`L2::set_command`]).
    pub async fn set_entry(&self, key: &str, value: &[u8], ttl: Duration) -> Result<()> {
        judge_set(
            self.exchange("set_entry", self.set_command(key, value, ttl))
                .await?,
        )
    }

    /// `ttl` in whole ms, rounded up, clamped to `[1 ms, max_ttl]`.
    fn ttl_ms(&self, ttl: Duration) -> u64 {
        u64::try_from(ttl.as_nanos().div_ceil(1_000_000))
            .unwrap_or(u64::MAX)
            .clamp(1, self.inner.max_ttl_ms)
    }

    /// Appends [`L2::set_command`] to `out` (RESP), for a transport that writes bytes.
    pub fn encode_set(&self, out: &mut Vec<u8>, key: &str, value: &[u8], ttl: Duration) {
        self.set_command(key, value, ttl).encode(out);
    }

    /// The `SET` command up to its value: `SET <entry key> <value of value_len bytes>`'s head.
    fn push_set_head(&self, out: &mut Vec<u8>, key: &str, value_len: usize) {
        resp::encode_count(out, 5);
        resp::encode_args(out, &[b"SET", self.inner.keys.entry(key).as_bytes()]);
        resp::encode_bulk_head(out, value_len);
    }

    /// The most [`L2::frame_set`] appends after an envelope (`\r\n$2\r\nPX\r\n$<n>\r\n<ttl
    /// ms>\r\n` is at most 55 bytes): capacity to leave there so that appending does not move it.
    pub const SET_TAIL_MAX: usize = 64;

    /// The `SET` command after its value: the value's `\r\n`, then `PX <ttl ms>`.
    fn push_set_tail(&self, out: &mut Vec<u8>, ttl: Duration) {
        out.extend_from_slice(b"\r\n");
        let ttl_ms = self.ttl_ms(ttl).to_string();
        resp::encode_args(out, &[b"PX", ttl_ms.as_bytes()]);
    }

    /// Room to leave in front of an envelope so that [`L2::frame_set`] can put the `SET`
    /// command's head there.
    pub fn set_headroom(&self, key: &str) -> usize {
        // "*5\r\n" + "$3\r\nSET\r\n" + "$<len>\r\n<key>\r\n" + "$<len>\r\n", lengths ≤ 20 digits.
        4 + 9 + (1 + 20 + 2) + self.inner.keys.entry(key).len() + 2 + (1 + 20 + 2)
    }

    /// Makes `buf` the `SET` of the envelope `buf[at..]`, byte for byte what
    /// [`L2::encode_set`] writes, without moving the envelope: the command's head goes into the
    /// headroom before `at`, its tail after the envelope. Returns where the command starts in
    /// `buf`, or `None` if the headroom is too small (then `buf` is unchanged).
    pub fn frame_set(
        &self,
        buf: &mut Vec<u8>,
        at: usize,
        key: &str,
        ttl: Duration,
    ) -> Option<usize> {
        let envelope_len = buf.len().checked_sub(at)?;
        let mut head = Vec::with_capacity(64 + key.len());
        self.push_set_head(&mut head, key, envelope_len);
        let start = at.checked_sub(head.len())?;
        buf[start..at].copy_from_slice(&head);
        self.push_set_tail(buf, ttl);
        Some(start)
    }

    /// Deletes the entry of Next key `key` (for garbage found under it; `UNLINK`, so a large
    /// value is freed off Redis' main thread).
    pub async fn delete_entry(&self, key: &str) -> Result<()> {
        let command = Command::new(vec![
            Cow::Borrowed(b"UNLINK"),
            Cow::Owned(self.inner.keys.entry(key).into_bytes()),
        ]);
        match self.exchange("delete_entry", command).await? {
            resp::Reply::Int(_) => Ok(()),
            other => Err(unexpected("UNLINK", &other)),
        }
    }

    /// `updateTags(tags, durations)`, recorded atomically in Redis with Redis' clock (the rules
    /// of [`crate::tags`]), appended to the invalidation log. Duplicate tags count once.
    ///
    /// A non-finite `durations.expire` is stored as about 31 700 years ("never"); NaN is an
    /// invalid argument.
    pub async fn update_tags(
        &self,
        tags: &[String],
        durations: Option<Durations>,
    ) -> Result<TagUpdate> {
        let (mode, expire) = match durations {
            None => ("n", 0.0),
            Some(Durations { expire: None }) => ("d", 0.0),
            Some(Durations { expire: Some(e) }) if e.is_nan() => {
                return Err(Error::invalid_arg("durations.expire", "must be a number"))
            }
            Some(Durations { expire: Some(e) }) => {
                ("x", e.clamp(-MAX_EXPIRE_SECONDS, MAX_EXPIRE_SECONDS))
            }
        };
        let mut distinct: Vec<&str> = Vec::with_capacity(tags.len());
        {
            let mut seen = std::collections::HashSet::with_capacity(tags.len());
            for t in tags {
                if seen.insert(t.as_str()) {
                    distinct.push(t.as_str());
                }
            }
        }
        let keys = &self.inner.keys;
        let mut args: Vec<Cow<[u8]>> = vec![
            Cow::Borrowed(mode.as_bytes()),
            // Rust prints the shortest string that parses back to the same f64, without an
            // exponent; Lua then computes `now + expire * 1000` exactly as `tags.rs` does.
            Cow::Owned(expire.to_string().into_bytes()),
            Cow::Owned(self.inner.max_ttl_ms.to_string().into_bytes()),
            Cow::Owned(self.inner.log_max_len.to_string().into_bytes()),
            Cow::Owned(format!("{:016x}", rand::random::<u64>()).into_bytes()),
        ];
        args.extend(distinct.iter().map(|t| Cow::Borrowed(t.as_bytes())));
        let command = Command::script(
            &UPDATE_TAGS,
            &[
                keys.tag_state(),
                keys.tag_index(),
                keys.tag_log(),
                keys.epoch(),
            ],
            args,
        );
        let reply = self.exchange("update_tags", command).await?;
        let mut items = strings(reply, "update_tags")?.into_iter();
        let (Some(now), Some(last_id), Some(epoch)) = (items.next(), items.next(), items.next())
        else {
            return Err(Error::Redis("update_tags: short reply".to_owned()));
        };
        let server_now_ms = parse_ms(&now)?;
        let states: Vec<(String, TagState)> = distinct
            .iter()
            .zip(items.by_ref())
            .map(|(tag, v)| Ok(((*tag).to_owned(), parse_state(&v)?)))
            .collect::<Result<_>>()?;
        if states.len() != distinct.len() || items.next().is_some() {
            return Err(Error::Redis(
                "update_tags: reply does not match the tags".into(),
            ));
        }
        let cursor_after = if last_id.is_empty() {
            LogCursor::default()
        } else {
            LogCursor { epoch, last_id }
        };
        Ok(TagUpdate {
            server_now_ms,
            states,
            cursor_after,
        })
    }

    /// What changed in the tag state since `cursor` (one round trip). See [`Refresh`].
    pub async fn refresh(&self, cursor: &LogCursor) -> Result<Refresh> {
        parse_refresh(
            self.exchange("refresh", self.refresh_command(cursor))
                .await?,
        )
    }

    /// The read of the invalidation log from `cursor` ([`L2::refresh`]); its reply goes to
    /// [`parse_refresh`].
    pub fn refresh_command<'a>(&'a self, cursor: &'a LogCursor) -> Command<'a> {
        let keys = &self.inner.keys;
        Command::script(
            &REFRESH,
            &[keys.tag_state(), keys.tag_log(), keys.epoch()],
            vec![
                Cow::Borrowed(cursor.epoch.as_bytes()),
                Cow::Borrowed(cursor.last_id.as_bytes()),
                Cow::Owned(REFRESH_BATCH.to_string().into_bytes()),
            ],
        )
    }

    /// The reading with the shortest round trip of `samples` [`L2::server_time`] calls (it
    /// bounds the offset best; the first call may include connecting), with every round trip
    /// measured, in ms. The first error when none answered.
    pub async fn best_server_time(&self, samples: usize) -> Result<(ServerTime, Vec<f64>)> {
        let mut best: Option<ServerTime> = None;
        let mut rtts = Vec::with_capacity(samples);
        let mut first_error = None;
        for _ in 0..samples.max(1) {
            match self.server_time().await {
                Ok(t) => {
                    rtts.push(t.rtt_ms);
                    if best.as_ref().is_none_or(|b| t.rtt_ms < b.rtt_ms) {
                        best = Some(t);
                    }
                }
                Err(e) => {
                    first_error.get_or_insert(e);
                }
            }
        }
        match (best, first_error) {
            (Some(t), _) => Ok((t, rtts)),
            (None, Some(e)) => Err(e),
            (None, None) => Err(Error::Internal("no clock reading".to_owned())),
        }
    }

    /// Reads Redis' clock on the node that stamps invalidations; the caller's offset estimate
    /// is `server_ms - local_mid_ms`.
    pub async fn server_time(&self) -> Result<ServerTime> {
        let command = Command::script(&TIME, &[self.inner.keys.epoch()], Vec::new());
        let before = self.inner.clock.now_ms();
        let started = Instant::now();
        let reply = self.exchange("server_time", command).await?;
        let rtt_ms = started.elapsed().as_secs_f64() * 1000.0;
        let after = self.inner.clock.now_ms();
        let parts = strings(reply, "server_time")?;
        let [sec, usec] = parts.as_slice() else {
            return Err(Error::Redis("TIME: expected two fields".to_owned()));
        };
        let (Ok(sec), Ok(usec)) = (sec.parse::<f64>(), usec.parse::<f64>()) else {
            return Err(Error::Redis("TIME: not numbers".to_owned()));
        };
        let server_ms = sec * 1000.0 + usec / 1000.0;
        if !crate::clock::is_valid_timestamp_ms(server_ms) || !(0.0..1e6).contains(&usec) {
            return Err(Error::Redis(format!("TIME: out of range ({sec}, {usec})")));
        }
        Ok(ServerTime {
            server_ms,
            local_mid_ms: (before + after) / 2.0,
            rtt_ms,
        })
    }

    /// `INFO <section>` of the node the command lands on, as `field → value` (for `doctor`).
    pub async fn info(&self, section: &str) -> Result<std::collections::HashMap<String, String>> {
        let command = Command::new(vec![
            Cow::Borrowed(b"INFO"),
            Cow::Borrowed(section.as_bytes()),
        ]);
        let text = match self.exchange("info", command).await? {
            resp::Reply::Bulk(b) => String::from_utf8_lossy(&b).into_owned(),
            resp::Reply::Simple(s) => s,
            other => return Err(unexpected("INFO", &other)),
        };
        Ok(text
            .lines()
            .filter_map(|l| l.split_once(':'))
            .map(|(k, v)| (k.trim().to_owned(), v.trim().to_owned()))
            .collect())
    }

    /// Loads the Lua scripts (`SCRIPT LOAD`) and checks Redis hashes them as this build does:
    /// the scripts the request path runs with `EVALSHA` are usable (for `doctor`).
    pub async fn load_scripts(&self) -> Result<()> {
        for script in scripts::all() {
            let command = Command::new(vec![
                Cow::Borrowed(b"SCRIPT"),
                Cow::Borrowed(b"LOAD"),
                Cow::Borrowed(script.source.as_bytes()),
            ]);
            let sha = match self.exchange("script_load", command).await? {
                resp::Reply::Bulk(b) => String::from_utf8_lossy(&b).into_owned(),
                resp::Reply::Simple(s) => s,
                other => return Err(unexpected("SCRIPT LOAD", &other)),
            };
            if sha != script.sha {
                return Err(Error::Redis(format!(
                    "SCRIPT LOAD of {}.lua returned {sha}, expected {}",
                    script.name, script.sha
                )));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn cfg(urls: &[&str]) -> L2Config {
        L2Config {
            urls: urls.iter().map(|s| s.to_string()).collect(),
            namespace: "app-1".to_owned(),
            ..L2Config::default()
        }
    }

    #[test]
    fn is_send_sync() {
        fn check<T: Send + Sync + 'static>() {}
        check::<L2>();
    }

    #[test]
    fn frame_set_writes_what_encode_set_writes_in_place() {
        let l2 = L2::new(cfg(&["redis://127.0.0.1:1"])).unwrap();
        let ttl = Duration::from_millis(3_600_000);
        for (key, len) in [
            ("/a", 0usize),
            ("/blog/1", 70_000),
            (&*"k".repeat(5000), 1_100_000),
        ] {
            let envelope: Vec<u8> = (0..len).map(|i| (i % 251) as u8).collect();
            let mut expected = Vec::new();
            l2.encode_set(&mut expected, key, &envelope, ttl);

            let at = l2.set_headroom(key);
            let mut buf = vec![0u8; at];
            buf.extend_from_slice(&envelope);
            let start = l2.frame_set(&mut buf, at, key, ttl).unwrap();
            assert_eq!(&buf[start..], &expected[..], "key {key:.20}, {len} bytes");
            assert!(buf.len() - at - envelope.len() <= L2::SET_TAIL_MAX);
        }
        // The command itself, spelled out once.
        let mut out = Vec::new();
        l2.encode_set(&mut out, "/a", b"abc", ttl);
        let k = l2.keys().entry("/a");
        let spelled = format!(
            "*5\r\n$3\r\nSET\r\n${}\r\n{k}\r\n$3\r\nabc\r\n$2\r\nPX\r\n$7\r\n3600000\r\n",
            k.len()
        );
        assert_eq!(out, spelled.as_bytes());
        // Not enough headroom: refused, nothing changed.
        let mut small = vec![0u8; 3];
        small.extend_from_slice(b"xyz");
        assert_eq!(l2.frame_set(&mut small, 3, "/a", ttl), None);
        assert_eq!(small, b"\0\0\0xyz");
    }

    #[test]
    fn new_does_no_io_and_validates() {
        // Nothing listens here; `new` must succeed anyway (lazy connection).
        assert!(L2::new(cfg(&["redis://127.0.0.1:1"])).is_ok());
        assert!(L2::new(cfg(&["redis://127.0.0.1:1", "redis://127.0.0.1:2"])).is_ok());
        assert!(matches!(L2::new(cfg(&[])), Err(Error::Config { .. })));
        let mut bad_ns = cfg(&["redis://127.0.0.1:1"]);
        bad_ns.namespace = "a{b}".into();
        assert!(matches!(L2::new(bad_ns), Err(Error::Config { .. })));
    }

    #[test]
    fn passwords_never_appear_in_errors_or_debug() {
        let url = "redis://user:s3cr%40t@[::1:bad";
        let err = L2::new(cfg(&[url])).unwrap_err().to_string();
        assert!(!err.contains("s3cr"), "{err}");
        let c = cfg(&["redis://user:hunter2@localhost:6379"]);
        let dbg = format!("{c:?}");
        assert!(!dbg.contains("hunter2"), "{dbg}");
        let l2 = L2::new(c).unwrap();
        assert!(!format!("{l2:?}").contains("hunter2"));
        let secrets = secrets_of(&["redis://u:p%40ss@h:1".to_owned()]);
        assert_eq!(scrub("x u:p%40ss y p@ss z", &secrets), "x *** y *** z");
    }

    #[tokio::test]
    async fn unreachable_redis_fails_fast_and_is_retried() {
        // Port 1 refuses connections: every call fails with Unavailable, none is permanent.
        let mut c = cfg(&["redis://user:hunter2@127.0.0.1:1"]);
        c.breaker.failure_threshold = 100;
        let l2 = L2::new(c).unwrap();
        for _ in 0..3 {
            let e = l2.get_entry("k").await.unwrap_err();
            assert!(matches!(e, Error::Unavailable(_)), "{e}");
            assert!(!e.to_string().contains("hunter2"), "{e}");
        }
        assert_eq!(l2.breaker().stats().consecutive_failures, 3);
    }
}
