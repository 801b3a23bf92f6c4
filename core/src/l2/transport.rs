//! The tokio transport: carries a [`Command`] over the connection (made lazily, dropped when
//! [`Call::end`] says so) and hands back what came of it as a [`Reply`] or a [`Failure`]; and
//! the handshake of a direct connection (the libuv transport's, `src/uv/` in the binding).
//!
//! A single server over plain TCP or TLS speaking RESP2 gets our own connection ([`Pipe`]):
//! the command's bytes out, replies through the core's RESP reader, bounded like the event
//! loop's. A cluster, a Unix socket, an `#insecure` TLS URL or RESP3 keep redis-rs' clients,
//! whose values and errors are translated here, at the edge.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use redis::aio::{ConnectionLike, ConnectionManager, ConnectionManagerConfig};
use redis::cluster_async::ClusterConnection;
use redis::{Cmd, ErrorKind, RedisError, Value};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::watch;

use super::pipe::Pipe;
use super::protocol::{is_noscript, Call, Command, Failure};
use super::{Backend, DirectTarget, Inner, L2};
use crate::error::{Error, Result};
use crate::resp::{self, Reply};

/// What one call sends: a command, or the `SET` of an envelope that may be framed in place.
enum Payload<'a> {
    Command(&'a Command<'a>),
    Set {
        key: &'a str,
        envelope: Vec<u8>,
        at: usize,
        ttl: std::time::Duration,
    },
}

/// A connection to a single server or a cluster; cheap to clone (all are handles).
#[derive(Clone)]
pub(super) enum Conn {
    /// A single server over plain TCP or TLS, RESP2: our own connection.
    Own(Pipe),
    /// A single server over a Unix socket, `#insecure` TLS or RESP3.
    Single(ConnectionManager),
    Cluster(ClusterConnection),
}

pub(super) type ConnectOutcome = Option<std::result::Result<Conn, Failure>>;

/// The lazily made connection. Each connection attempt and each connection has a generation,
/// so a failure reported on an old connection never drops a newer one.
pub(super) enum Slot {
    Empty,
    Connecting {
        generation: u64,
        rx: watch::Receiver<ConnectOutcome>,
    },
    Ready {
        generation: u64,
        conn: Conn,
    },
}

impl L2 {
    /// The connect, `AUTH` and `SELECT` of [`L2::open_direct`], within no deadline of its own.
    pub(super) async fn handshake(
        &self,
        target: &DirectTarget,
    ) -> std::result::Result<std::net::TcpStream, Failure> {
        let mut stream = connect_tcp(&target.host, target.port)
            .await
            .map_err(|e| self.inner.io_failure(&e))?;
        self.inner
            .authenticate(
                &mut stream,
                target.username.as_deref(),
                target.password.as_deref(),
                target.db,
            )
            .await?;
        // `into_std` deregisters the socket from the runtime and leaves it non-blocking.
        stream.into_std().map_err(|e| self.inner.io_failure(&e))
    }

    /// Carries `command` as `call` (gated and timed by [`L2::begin`]) and ends it.
    pub(crate) async fn carry(&self, call: Call, command: &Command<'_>) -> Result<Reply> {
        self.carry_payload(call, Payload::Command(command)).await
    }

    /// [`L2::carry`] of the `SET` of `envelope[at..]`, which [`Cache::plan_set`] encoded after
    /// [`L2::set_headroom`] bytes: on our own connection the command is framed around the
    /// envelope where it lies ([`L2::frame_set`]), so a large value is not copied again.
    ///
    /// [`Cache::plan_set`]: crate::cache::Cache::plan_set
    pub(crate) async fn carry_set(
        &self,
        call: Call,
        key: &str,
        envelope: Vec<u8>,
        at: usize,
        ttl: std::time::Duration,
    ) -> Result<Reply> {
        let set = Payload::Set {
            key,
            envelope,
            at,
            ttl,
        };
        self.carry_payload(call, set).await
    }

    async fn carry_payload(&self, call: Call, payload: Payload<'_>) -> Result<Reply> {
        if tokio::runtime::Handle::try_current().is_err() {
            return Err(Error::Internal(format!(
                "{}: the Redis L2 must be used inside a tokio runtime",
                call.op()
            )));
        }
        let mut used = None;
        let attempt = async {
            let (generation, conn) = self.inner.connection().await?;
            used = Some(generation);
            match conn {
                Conn::Own(pipe) => {
                    let (bytes, from) = self.encoded(payload);
                    pipe.request(bytes, from).await
                }
                Conn::Single(mut c) => self.through_library(&mut c, &payload).await,
                Conn::Cluster(mut c) => self.through_library(&mut c, &payload).await,
            }
        };
        let got = match tokio::time::timeout_at(call.deadline(), attempt).await {
            Ok(got) => got,
            Err(_elapsed) => Err(Failure::Timeout),
        };
        let ended = call.end(got);
        if ended.reconnect {
            if let Some(generation) = used {
                self.inner.forget(generation);
            }
        }
        ended.reply
    }

    /// `payload` in RESP for our own connection: the bytes and where the command starts.
    fn encoded(&self, payload: Payload<'_>) -> (Vec<u8>, usize) {
        match payload {
            Payload::Command(command) => {
                let mut out = Vec::with_capacity(command.encoded_len());
                command.encode(&mut out);
                (out, 0)
            }
            Payload::Set {
                key,
                mut envelope,
                at,
                ttl,
            } => match self.frame_set(&mut envelope, at, key, ttl) {
                Some(start) => (envelope, start),
                // No room in front (not planned with `set_headroom`): encoded anew.
                None => {
                    let mut out = Vec::new();
                    self.encode_set(&mut out, key, &envelope[at..], ttl);
                    (out, 0)
                }
            },
        }
    }

    /// `payload` through one of redis-rs' clients.
    async fn through_library<C: ConnectionLike>(
        &self,
        conn: &mut C,
        payload: &Payload<'_>,
    ) -> std::result::Result<Reply, Failure> {
        let set;
        let command = match payload {
            Payload::Command(command) => *command,
            Payload::Set {
                key,
                envelope,
                at,
                ttl,
            } => {
                set = self.set_command(key, &envelope[*at..], *ttl);
                &set
            }
        };
        let mut cmd = Cmd::new();
        for arg in command.args() {
            cmd.arg(arg);
        }
        match conn.req_packed_command(&cmd).await {
            Ok(value) => Ok(reply_of(value)),
            Err(e) => self.inner.translate(&e),
        }
    }

    /// One request of `op` on this transport: [`L2::begin`], [`L2::carry`]; an `EVALSHA` Redis
    /// does not know is sent again as `EVAL` (see [`super::protocol`]).
    pub(crate) async fn exchange(&self, op: &'static str, command: Command<'_>) -> Result<Reply> {
        match self.carry(self.begin(op)?, &command).await {
            Err(e) if is_noscript(&e) => match command.as_eval() {
                Some(eval) => self.carry(self.begin(op)?, &eval).await,
                None => Err(e),
            },
            other => other,
        }
    }
}

/// A redis-rs value as the core's reply (RESP2 gives only the first six kinds; the others are
/// mapped to their nearest RESP2 shape).
fn reply_of(value: Value) -> Reply {
    match value {
        Value::Nil => Reply::Nil,
        // `Vec<u8>` → `Bytes` takes over the reply's buffer: no copy.
        Value::BulkString(b) => Reply::Bulk(bytes::Bytes::from(b)),
        Value::SimpleString(s) => Reply::Simple(s),
        Value::Okay => Reply::Simple("OK".to_owned()),
        Value::Int(i) => Reply::Int(i),
        Value::Boolean(b) => Reply::Int(i64::from(b)),
        Value::Double(d) => Reply::Bulk(bytes::Bytes::from(d.to_string())),
        Value::VerbatimString { text, .. } => Reply::Bulk(bytes::Bytes::from(text)),
        Value::Array(items) | Value::Set(items) => {
            Reply::Array(items.into_iter().map(reply_of).collect())
        }
        Value::Map(pairs) => Reply::Array(
            pairs
                .into_iter()
                .flat_map(|(k, v)| [reply_of(k), reply_of(v)])
                .collect(),
        ),
        Value::ServerError(e) => Reply::Error(match e.details() {
            Some(detail) => format!("{} {detail}", e.code()),
            None => e.code().to_owned(),
        }),
        _ => Reply::Error("ERR unexpected reply type".to_owned()),
    }
}

impl Inner {
    /// `AUTH` and `SELECT` on a new connection, before any request. Any failure, an error
    /// reply included (a wrong password, a database that does not exist), is [`Failure::Broken`]:
    /// the connection is unusable, and the breaker is told, as for `NOAUTH` on a request.
    async fn authenticate<S: AsyncRead + AsyncWrite + Unpin>(
        &self,
        stream: &mut S,
        username: Option<&str>,
        password: Option<&str>,
        db: i64,
    ) -> std::result::Result<(), Failure> {
        let mut out = Vec::new();
        let mut expected = 0;
        match (username, password) {
            (Some(user), Some(pass)) => {
                resp::encode_command(&mut out, &[b"AUTH", user.as_bytes(), pass.as_bytes()]);
                expected += 1;
            }
            (None, Some(pass)) => {
                resp::encode_command(&mut out, &[b"AUTH", pass.as_bytes()]);
                expected += 1;
            }
            _ => {}
        }
        if db != 0 {
            resp::encode_command(&mut out, &[b"SELECT", db.to_string().as_bytes()]);
            expected += 1;
        }
        if expected == 0 {
            return Ok(());
        }
        stream
            .write_all(&out)
            .await
            .map_err(|e| self.io_failure(&e))?;
        stream.flush().await.map_err(|e| self.io_failure(&e))?;
        let mut reader = resp::Reader::new();
        let mut chunk = [0u8; 512];
        while expected > 0 {
            match reader.next_reply() {
                Ok(Some(resp::Reply::Simple(_))) => expected -= 1,
                Ok(Some(resp::Reply::Error(e))) => {
                    return Err(Failure::Broken(scrub(&e, &self.secrets)));
                }
                Ok(Some(_)) | Err(_) => {
                    return Err(Failure::Broken(format!(
                        "{}: unexpected reply during the handshake",
                        self.targets
                    )));
                }
                Ok(None) => {
                    let n = stream
                        .read(&mut chunk)
                        .await
                        .map_err(|e| self.io_failure(&e))?;
                    if n == 0 {
                        return Err(Failure::Broken(format!(
                            "{}: connection closed during the handshake",
                            self.targets
                        )));
                    }
                    reader.feed(&chunk[..n]);
                }
            }
        }
        Ok(())
    }

    /// How long making a connection may take, `AUTH` and `SELECT` (or a cluster's slot map,
    /// after trying several seeds) included: `connect_timeout + op_timeout`.
    pub(super) fn connect_deadline(&self) -> std::time::Duration {
        self.connect_timeout + self.op_timeout
    }

    /// A redis-rs error as what the transport got: an error reply Redis sent, or a failure.
    fn translate(&self, e: &RedisError) -> std::result::Result<Reply, Failure> {
        if let Some(code) = e.code() {
            return Ok(Reply::Error(match e.detail() {
                Some(detail) => format!("{code} {}", scrub(detail, &self.secrets)),
                None => code.to_owned(),
            }));
        }
        match e.kind() {
            ErrorKind::Io
            | ErrorKind::Parse
            | ErrorKind::ClusterConnectionNotFound
            | ErrorKind::AuthenticationFailed => Err(self.failure(e)),
            // The client library's own complaint about an answer: Redis did answer.
            _ => Ok(Reply::Error(format!(
                "ERR {}",
                scrub(&e.to_string(), &self.secrets)
            ))),
        }
    }

    /// A connection-level error as a [`Failure`] (credentials scrubbed).
    fn failure(&self, e: &RedisError) -> Failure {
        if e.is_timeout() {
            Failure::Timeout
        } else {
            Failure::Broken(scrub(&e.to_string(), &self.secrets))
        }
    }

    /// The connection, made on first use (see the module docs).
    async fn connection(self: &Arc<Self>) -> std::result::Result<(u64, Conn), Failure> {
        let (generation, mut rx) = {
            let mut slot = self.slot.lock();
            match &*slot {
                Slot::Ready { generation, conn } => return Ok((*generation, conn.clone())),
                Slot::Connecting { generation, rx } => (*generation, rx.clone()),
                Slot::Empty => {
                    let Ok(runtime) = tokio::runtime::Handle::try_current() else {
                        // `carry` checks first; kept so this never panics.
                        return Err(Failure::Broken("used outside a tokio runtime".to_owned()));
                    };
                    let generation = self.generation.fetch_add(1, Ordering::Relaxed) + 1;
                    let (tx, rx) = watch::channel(None);
                    *slot = Slot::Connecting {
                        generation,
                        rx: rx.clone(),
                    };
                    runtime.spawn(Arc::clone(self).connect(generation, tx));
                    (generation, rx)
                }
            }
        };
        let outcome = match rx.wait_for(Option::is_some).await {
            Ok(done) => done.clone(),
            Err(_) => None,
        };
        match outcome {
            Some(result) => result.map(|conn| (generation, conn)),
            None => Err(Failure::Broken(
                "the connection attempt was abandoned".to_owned(),
            )),
        }
    }

    /// Makes connection `generation` and publishes the outcome. Runs as its own task, so it
    /// progresses while callers give up at their deadline.
    async fn connect(self: Arc<Self>, generation: u64, tx: watch::Sender<ConnectOutcome>) {
        /// Clears the slot if the task ends without publishing (runtime shutting down), so the
        /// next call tries again instead of waiting for an attempt that will never finish.
        struct Abandoned<'a>(&'a Inner, u64, bool);
        impl Drop for Abandoned<'_> {
            fn drop(&mut self) {
                if self.2 {
                    let mut slot = self.0.slot.lock();
                    if matches!(&*slot, Slot::Connecting { generation, .. } if *generation == self.1)
                    {
                        *slot = Slot::Empty;
                    }
                }
            }
        }
        let mut guard = Abandoned(&self, generation, true);
        let result = match tokio::time::timeout(self.connect_deadline(), self.open()).await {
            Ok(result) => result,
            Err(_elapsed) => Err(Failure::Timeout),
        };
        {
            let mut slot = self.slot.lock();
            if matches!(&*slot, Slot::Connecting { generation: g, .. } if *g == generation) {
                *slot = match &result {
                    Ok(conn) => Slot::Ready {
                        generation,
                        conn: conn.clone(),
                    },
                    Err(_) => Slot::Empty,
                };
            }
        }
        guard.2 = false;
        drop(guard);
        tx.send_replace(Some(result));
    }

    async fn open(&self) -> std::result::Result<Conn, Failure> {
        match &self.backend {
            Backend::Single(client) => {
                let info = client.get_connection_info();
                let settings = info.redis_settings();
                if settings.protocol() == redis::ProtocolVersion::RESP2 {
                    match info.addr() {
                        redis::ConnectionAddr::Tcp(host, port) => {
                            let stream = connect_tcp(host, *port)
                                .await
                                .map_err(|e| self.io_failure(&e))?;
                            return self.open_own(stream, settings).await;
                        }
                        // `#insecure` URLs (no certificate check) keep redis-rs' own TLS setup.
                        redis::ConnectionAddr::TcpTls {
                            host,
                            port,
                            insecure: false,
                            ..
                        } => {
                            let stream = self.connect_tls(host, *port).await?;
                            return self.open_own(stream, settings).await;
                        }
                        _ => {}
                    }
                }
                let config = ConnectionManagerConfig::new()
                    .set_connection_timeout(Some(self.connect_timeout))
                    .set_response_timeout(Some(self.op_timeout))
                    // One attempt per connect: a failure goes back to the caller (and the
                    // breaker) instead of being retried with back-off inside a request.
                    .set_number_of_retries(0);
                ConnectionManager::new_with_config(client.as_ref().clone(), config)
                    .await
                    .map(Conn::Single)
                    .map_err(|e| self.failure(&e))
            }
            Backend::Cluster(client) => client
                .get_async_connection()
                .await
                .map(Conn::Cluster)
                .map_err(|e| self.failure(&e)),
        }
    }

    /// Our own connection ([`Pipe`]) over `stream`, once authenticated: its replies are read
    /// by the core's RESP reader, bounded by the largest envelope this cache writes (redis-rs
    /// would buffer a reply whole before parsing it). Reconnecting is ours (see
    /// [`Inner::forget`]).
    async fn open_own<S>(
        &self,
        mut stream: S,
        settings: &redis::RedisConnectionInfo,
    ) -> std::result::Result<Conn, Failure>
    where
        S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        self.authenticate(
            &mut stream,
            settings.username(),
            settings.password(),
            settings.db(),
        )
        .await?;
        Ok(Conn::Own(Pipe::start(stream, self.max_reply_bytes)))
    }

    /// A TLS connection (`rediss://`): rustls with the web PKI roots, or the configured CA
    /// (`redisCaFile`), as redis-rs would set it up.
    async fn connect_tls(
        &self,
        host: &str,
        port: u16,
    ) -> std::result::Result<tokio_rustls::client::TlsStream<tokio::net::TcpStream>, Failure> {
        let invalid = |e: String| Failure::Broken(format!("TLS: {e}"));
        let mut roots = rustls::RootCertStore::empty();
        match &self.ca_pem {
            Some(pem) => {
                use rustls::pki_types::pem::PemObject;
                for cert in rustls::pki_types::CertificateDer::pem_slice_iter(pem) {
                    let cert = cert.map_err(|e| invalid(format!("redisCaFile: {e}")))?;
                    roots
                        .add(cert)
                        .map_err(|e| invalid(format!("redisCaFile: {e}")))?;
                }
            }
            None => roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned()),
        }
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let config = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| invalid(e.to_string()))?
            .with_root_certificates(roots)
            .with_no_client_auth();
        let name = rustls::pki_types::ServerName::try_from(host.to_owned())
            .map_err(|e| invalid(format!("{host}: {e}")))?;
        let tcp = connect_tcp(host, port)
            .await
            .map_err(|e| self.io_failure(&e))?;
        tokio_rustls::TlsConnector::from(Arc::new(config))
            .connect(name, tcp)
            .await
            .map_err(|e| self.io_failure(&e))
    }

    /// An I/O error while connecting, as a [`Failure`] (credentials scrubbed).
    fn io_failure(&self, e: &std::io::Error) -> Failure {
        Failure::Broken(scrub(&format!("{}: {e}", self.targets), &self.secrets))
    }

    /// Drops connection `generation` after it failed, so the next call connects anew.
    fn forget(&self, generation: u64) {
        let mut slot = self.slot.lock();
        if matches!(&*slot, Slot::Ready { generation: g, .. } if *g == generation) {
            *slot = Slot::Empty;
        }
    }
}

/// A TCP connection to `host:port` with `TCP_NODELAY` (requests are small and answered at once).
async fn connect_tcp(host: &str, port: u16) -> std::io::Result<tokio::net::TcpStream> {
    let stream = tokio::net::TcpStream::connect((host, port)).await?;
    stream.set_nodelay(true)?;
    Ok(stream)
}

/// The credentials in `urls` as they may appear in text: `user:password`, the password alone,
/// raw and percent-decoded.
pub(super) fn secrets_of(urls: &[String]) -> Vec<String> {
    let mut out = Vec::new();
    for url in urls {
        let Some(scheme_end) = url.find("://") else {
            continue;
        };
        let rest = &url[scheme_end + 3..];
        let authority = &rest[..rest.find('/').unwrap_or(rest.len())];
        let Some(at) = authority.rfind('@') else {
            continue;
        };
        let userinfo = &authority[..at];
        let mut candidates = vec![userinfo.to_owned()];
        if let Some((_, password)) = userinfo.split_once(':') {
            candidates.push(password.to_owned());
        }
        for c in candidates {
            let decoded = percent_decode(&c);
            for s in [c, decoded] {
                if !s.is_empty() && !out.contains(&s) {
                    out.push(s);
                }
            }
        }
    }
    // Longest first, so `user:password` is replaced before `password`.
    out.sort_by_key(|s| std::cmp::Reverse(s.len()));
    out
}

fn percent_decode(s: &str) -> String {
    fn hex(b: u8) -> Option<u8> {
        match b {
            b'0'..=b'9' => Some(b - b'0'),
            b'a'..=b'f' => Some(b - b'a' + 10),
            b'A'..=b'F' => Some(b - b'A' + 10),
            _ => None,
        }
    }
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' && i + 2 < bytes.len() {
            if let (Some(h), Some(l)) = (hex(bytes[i + 1]), hex(bytes[i + 2])) {
                out.push(h * 16 + l);
                i += 3;
                continue;
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

pub(super) fn scrub(text: &str, secrets: &[String]) -> String {
    let mut text = text.to_owned();
    for s in secrets {
        if text.contains(s.as_str()) {
            text = text.replace(s.as_str(), "***");
        }
    }
    text
}
