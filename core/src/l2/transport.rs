//! The tokio transport: carries a [`Command`] over the redis-rs connection (made lazily, dropped
//! when [`Call::end`] says so) and hands back what came of it as a [`Reply`] or a [`Failure`]
//! (redis-rs' values and errors are translated here, at the edge); and the handshake of a
//! direct connection (the libuv transport's, `src/uv/` in the binding).

use std::pin::Pin;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::task::{Context as TaskContext, Poll};

use redis::aio::{
    ConnectionLike, ConnectionManager, ConnectionManagerConfig, MultiplexedConnection,
};
use redis::cluster_async::ClusterConnection;
use redis::{Cmd, ErrorKind, Pipeline, RedisError, RedisFuture, RedisResult, Value};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::watch;

use super::protocol::{is_noscript, Call, Command, Failure};
use super::{Backend, DirectTarget, Inner, L2};
use crate::error::{Error, Result};
use crate::resp::{self, Reply};

/// A connection to a single server or a cluster; cheap to clone (all are handles).
#[derive(Clone)]
pub(super) enum Conn {
    /// A single server over plain TCP, read through a [`resp::FrameGuard`]; the driver task is
    /// aborted when the last handle goes.
    Plain {
        conn: MultiplexedConnection,
        _driver: Arc<AbortOnDrop>,
    },
    /// A single server over TLS or a Unix socket.
    Single(ConnectionManager),
    Cluster(ClusterConnection),
}

/// Aborts a connection's driver task (its reader and writer) when dropped.
pub(super) struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// A stream whose incoming bytes pass a [`resp::FrameGuard`]: a reply announcing a string
/// longer than the bound fails the read (the client library reports an I/O error, the
/// connection is dropped) instead of being buffered whole.
struct Guarded<S> {
    inner: S,
    guard: resp::FrameGuard,
}

impl<S: AsyncRead + Unpin> AsyncRead for Guarded<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut TaskContext<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        match Pin::new(&mut this.inner).poll_read(cx, buf) {
            Poll::Ready(Ok(())) => Poll::Ready(
                this.guard
                    .observe(&buf.filled()[before..])
                    .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e)),
            ),
            other => other,
        }
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Guarded<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut TaskContext<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut TaskContext<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut TaskContext<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut TaskContext<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

impl ConnectionLike for Conn {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match self {
            Conn::Plain { conn: c, .. } => c.req_packed_command(cmd),
            Conn::Single(c) => c.req_packed_command(cmd),
            Conn::Cluster(c) => c.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match self {
            Conn::Plain { conn: c, .. } => c.req_packed_commands(pipeline, offset, count),
            Conn::Single(c) => c.req_packed_commands(pipeline, offset, count),
            Conn::Cluster(c) => c.req_packed_commands(pipeline, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Conn::Plain { conn: c, .. } => c.get_db(),
            Conn::Single(c) => c.get_db(),
            Conn::Cluster(c) => c.get_db(),
        }
    }
}

pub(super) type ConnectOutcome = Option<RedisResult<Conn>>;

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
    pub(super) async fn handshake(&self, target: &DirectTarget) -> Result<std::net::TcpStream> {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let unavailable = |e: std::io::Error| {
            Error::Unavailable(scrub(
                &format!("{}: {e}", self.inner.targets),
                &self.inner.secrets,
            ))
        };
        let mut stream = tokio::net::TcpStream::connect((target.host.as_str(), target.port))
            .await
            .map_err(unavailable)?;
        stream.set_nodelay(true).map_err(unavailable)?;
        let mut out = Vec::new();
        let mut expected = 0;
        match (&target.username, &target.password) {
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
        if target.db != 0 {
            resp::encode_command(&mut out, &[b"SELECT", target.db.to_string().as_bytes()]);
            expected += 1;
        }
        if expected > 0 {
            stream.write_all(&out).await.map_err(unavailable)?;
            let mut reader = resp::Reader::new();
            let mut chunk = [0u8; 512];
            while expected > 0 {
                match reader.next_reply() {
                    Ok(Some(resp::Reply::Simple(_))) => expected -= 1,
                    Ok(Some(resp::Reply::Error(e))) => {
                        return Err(Error::Redis(scrub(&e, &self.inner.secrets)));
                    }
                    Ok(Some(_)) | Err(_) => {
                        return Err(Error::Unavailable(format!(
                            "{}: unexpected reply during the handshake",
                            self.inner.targets
                        )));
                    }
                    Ok(None) => {
                        let n = stream.read(&mut chunk).await.map_err(unavailable)?;
                        if n == 0 {
                            return Err(Error::Unavailable(format!(
                                "{}: connection closed during the handshake",
                                self.inner.targets
                            )));
                        }
                        reader.feed(&chunk[..n]);
                    }
                }
            }
        }
        // `into_std` deregisters the socket from the runtime and leaves it non-blocking.
        stream.into_std().map_err(unavailable)
    }

    /// Carries `command` as `call` (gated and timed by [`L2::begin`]) and ends it.
    pub(crate) async fn carry(&self, call: Call, command: &Command<'_>) -> Result<Reply> {
        if tokio::runtime::Handle::try_current().is_err() {
            return Err(Error::Internal(format!(
                "{}: the Redis L2 must be used inside a tokio runtime",
                call.op()
            )));
        }
        let mut used = None;
        let attempt = async {
            let (generation, mut conn) = self
                .inner
                .connection()
                .await
                .map_err(|e| self.inner.failure(&e))?;
            used = Some(generation);
            let mut cmd = Cmd::new();
            for arg in command.args() {
                cmd.arg(arg);
            }
            match conn.req_packed_command(&cmd).await {
                Ok(value) => Ok(reply_of(value)),
                Err(e) => self.inner.translate(&e),
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
    async fn connection(self: &Arc<Self>) -> RedisResult<(u64, Conn)> {
        let (generation, mut rx) = {
            let mut slot = self.slot.lock();
            match &*slot {
                Slot::Ready { generation, conn } => return Ok((*generation, conn.clone())),
                Slot::Connecting { generation, rx } => (*generation, rx.clone()),
                Slot::Empty => {
                    let Ok(runtime) = tokio::runtime::Handle::try_current() else {
                        // `call` checks first; kept so this never panics.
                        return Err(RedisError::from((
                            ErrorKind::InvalidClientConfig,
                            "used outside a tokio runtime",
                        )));
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
            None => Err(RedisError::from((
                ErrorKind::Io,
                "the connection attempt was abandoned",
            ))),
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
            Err(_) => Err(RedisError::from(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                "connect timed out",
            ))),
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

    async fn open(&self) -> RedisResult<Conn> {
        match &self.backend {
            Backend::Single(client) => {
                let info = client.get_connection_info();
                match info.addr() {
                    redis::ConnectionAddr::Tcp(host, port) => {
                        return self.open_plain(host, *port, info.redis_settings()).await;
                    }
                    // `#insecure` URLs (no certificate check) keep redis-rs' own TLS setup.
                    redis::ConnectionAddr::TcpTls {
                        host,
                        port,
                        insecure: false,
                        ..
                    } => return self.open_tls(host, *port, info.redis_settings()).await,
                    _ => {}
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
            }
            Backend::Cluster(client) => client.get_async_connection().await.map(Conn::Cluster),
        }
    }

    /// A connection to a single server over plain TCP whose replies pass a [`resp::FrameGuard`]
    /// (redis-rs buffers a reply whole before it parses it; nothing bounds that but this).
    /// Reconnecting is ours (see [`Inner::forget`]), so no connection manager is needed.
    async fn open_plain(
        &self,
        host: &str,
        port: u16,
        settings: &redis::RedisConnectionInfo,
    ) -> RedisResult<Conn> {
        self.open_guarded(connect_tcp(host, port).await?, settings)
            .await
    }

    /// [`Inner::open_plain`] over TLS (`rediss://`): rustls with the web PKI roots, or the
    /// configured CA (`redisCaFile`), as redis-rs would set it up, but with the guard in front
    /// of the client library's reader.
    async fn open_tls(
        &self,
        host: &str,
        port: u16,
        settings: &redis::RedisConnectionInfo,
    ) -> RedisResult<Conn> {
        let invalid = |e: String| std::io::Error::new(std::io::ErrorKind::InvalidInput, e);
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
        let tls = tokio_rustls::TlsConnector::from(Arc::new(config))
            .connect(name, connect_tcp(host, port).await?)
            .await?;
        self.open_guarded(tls, settings).await
    }

    /// A multiplexed redis-rs connection over `stream`, read through a [`resp::FrameGuard`].
    async fn open_guarded<S>(
        &self,
        stream: S,
        settings: &redis::RedisConnectionInfo,
    ) -> RedisResult<Conn>
    where
        S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let guarded = Guarded {
            inner: stream,
            guard: resp::FrameGuard::new(self.max_reply_bytes),
        };
        let config =
            redis::AsyncConnectionConfig::new().set_response_timeout(Some(self.op_timeout));
        let (conn, driver) =
            MultiplexedConnection::new_with_config(settings, guarded, config).await?;
        let driver = Arc::new(AbortOnDrop(tokio::spawn(driver)));
        Ok(Conn::Plain {
            conn,
            _driver: driver,
        })
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
