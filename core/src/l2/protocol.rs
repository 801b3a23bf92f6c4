//! The L2 exchange without I/O: what each request is ([`Command`]), the one gate and deadline
//! of every call ([`L2::begin`] → [`Call`]), and the one place where what came back is judged
//! for the breaker and the connection ([`Call::end`]).
//!
//! A transport only carries bytes: it sends a [`Command`] and hands back the [`Reply`] (the
//! core's RESP type; the tokio transport translates redis-rs' `Value` into it at its edge) or
//! the [`Failure`] that stopped it. The tokio transport (redis-rs: Cluster, TLS, Unix sockets,
//! large writes) and the libuv one (`src/uv/` in the binding) both end their calls here, and
//! the cache's decisions (promotion, judging, coalescing: `cache.rs`) take the result.
//!
//! Rules written once here:
//! * **Gate**: a call starts only with a breaker permit; an open breaker is
//!   [`Error::Unavailable`]`("circuit open")` at once, without I/O.
//! * **Deadline**: `op_timeout` from the moment the call starts, waiting for a connection
//!   included ([`Call::deadline`]).
//! * **Breaker report**: any answer is a success, an error reply included, except `READONLY`
//!   (a demoted primary) and `NOAUTH`/`WRONGPASS` (a server that lost our credentials), which
//!   trip it like a timeout or a broken connection, and also mean "drop this connection"
//!   ([`Ended::reconnect`]). A request that failed only because another one on its connection
//!   timed out ([`Failure::Collateral`]) says nothing about Redis: its permit is released
//!   unreported.
//! * **Scripts**: a script runs as `EVALSHA`; the reply `NOSCRIPT` (Redis restarted, or its
//!   script cache was flushed) is answered by sending the same request as `EVAL` with the source
//!   ([`Command::as_eval`]), which also loads it for the next `EVALSHA`.

use std::borrow::Cow;
use std::time::Duration;

use tokio::time::Instant;

use super::L2;
use crate::breaker::Permit;
use crate::error::{Error, Result};
use crate::resp::{self, Reply};

/// One Lua script: its name, its source and the SHA1 Redis knows it by.
pub struct Script {
    /// For messages.
    pub name: &'static str,
    /// The Lua source (`lua/*.lua`).
    pub source: &'static str,
    /// Its SHA1, hex (what `EVALSHA` names it by).
    pub sha: String,
}

/// One request to Redis: its arguments, and the script it runs (for an `EVALSHA`).
pub struct Command<'a> {
    args: Vec<Cow<'a, [u8]>>,
    script: Option<&'static Script>,
}

impl<'a> Command<'a> {
    /// A command of `args` (the first is its name).
    pub fn new(args: Vec<Cow<'a, [u8]>>) -> Self {
        Command { args, script: None }
    }

    /// `EVALSHA <sha> <keys.len()> <keys…> <args…>` of `script`.
    pub fn script(script: &'static Script, keys: &[&'a str], args: Vec<Cow<'a, [u8]>>) -> Self {
        let mut all: Vec<Cow<'a, [u8]>> = Vec::with_capacity(3 + keys.len() + args.len());
        all.push(Cow::Borrowed(b"EVALSHA"));
        all.push(Cow::Borrowed(script.sha.as_bytes()));
        all.push(Cow::Owned(keys.len().to_string().into_bytes()));
        all.extend(keys.iter().map(|k| Cow::Borrowed(k.as_bytes())));
        all.extend(args);
        Command {
            args: all,
            script: Some(script),
        }
    }

    /// The arguments, the command's name first.
    pub fn args(&self) -> impl ExactSizeIterator<Item = &[u8]> {
        self.args.iter().map(|a| &**a)
    }

    /// The command's name (for messages).
    pub fn name(&self) -> &str {
        self.args
            .first()
            .and_then(|a| std::str::from_utf8(a).ok())
            .unwrap_or("?")
    }

    /// How many bytes [`Command::encode`] appends.
    pub fn encoded_len(&self) -> usize {
        // `*<n>\r\n`, then `$<len>\r\n<arg>\r\n` per argument (lengths ≤ 20 digits).
        let head = |n: usize| 3 + n.checked_ilog10().unwrap_or(0) as usize + 1;
        head(self.args.len())
            + self
                .args
                .iter()
                .map(|a| head(a.len()) + a.len() + 2)
                .sum::<usize>()
    }

    /// Appends the command in RESP to `out` (what a transport that writes bytes sends).
    pub fn encode(&self, out: &mut Vec<u8>) {
        resp::encode_count(out, self.args.len());
        for a in &self.args {
            resp::encode_bulk_head(out, a.len());
            out.extend_from_slice(a);
            out.extend_from_slice(b"\r\n");
        }
    }

    /// The same request as `EVAL <source> …`, for an `EVALSHA` Redis answered with `NOSCRIPT`.
    pub fn as_eval(&self) -> Option<Command<'a>> {
        let script = self.script?;
        let mut args = self.args.clone();
        *args.get_mut(0)? = Cow::Borrowed(b"EVAL");
        *args.get_mut(1)? = Cow::Borrowed(script.source.as_bytes());
        Some(Command { args, script: None })
    }
}

/// Why a call got no reply.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Failure {
    /// Its deadline passed.
    Timeout,
    /// The connection could not be made, broke, or carried something that is not RESP; the
    /// message says which (credentials scrubbed).
    Broken(String),
    /// Its connection was dropped because another request on it timed out.
    Collateral,
}

/// A call in progress: its breaker permit and its deadline. Made by [`L2::begin`], ended by
/// [`Call::end`] (dropped without it, the permit is released unreported).
#[derive(Debug)]
pub struct Call {
    op: &'static str,
    permit: Permit,
    deadline: Instant,
    timeout: Duration,
}

/// What a call came to.
#[derive(Debug)]
pub struct Ended {
    /// The reply, or the error it means. An error reply other than those judged here is
    /// [`Error::Redis`] with Redis' message (`NOSCRIPT …` included: see [`is_noscript`]).
    pub reply: Result<Reply>,
    /// The connection must be dropped (the next call connects anew).
    pub reconnect: bool,
}

impl L2 {
    /// Starts a call of `op`: the breaker's permit and the deadline, `op_timeout` from now.
    ///
    /// # Errors
    /// [`Error::Unavailable`] when the breaker is open (nothing is sent).
    pub fn begin(&self, op: &'static str) -> Result<Call> {
        self.begin_within(op, self.inner.op_timeout)
    }

    /// [`L2::begin`] with a deadline of `timeout` (a connection's handshake).
    pub(super) fn begin_within(&self, op: &'static str, timeout: Duration) -> Result<Call> {
        let Some(permit) = self.inner.breaker.try_acquire() else {
            return Err(Error::Unavailable("circuit open".to_owned()));
        };
        Ok(Call {
            op,
            permit,
            deadline: Instant::now() + timeout,
            timeout,
        })
    }
}

impl Call {
    /// When the reply is overdue.
    pub fn deadline(&self) -> Instant {
        self.deadline
    }

    /// The operation (for messages).
    pub fn op(&self) -> &'static str {
        self.op
    }

    /// Ends the call with what the transport got: reports to the breaker, and judges whether
    /// the connection can be kept. See the module docs for the rules.
    pub fn end(self, got: std::result::Result<Reply, Failure>) -> Ended {
        let Call {
            op,
            permit,
            timeout,
            ..
        } = self;
        let (reply, trips, reconnect) = match got {
            Ok(Reply::Error(message)) => judge_error_reply(op, message),
            Ok(reply) => (Ok(reply), false, false),
            Err(Failure::Timeout) => (
                Err(Error::Timeout {
                    op,
                    ms: u64::try_from(timeout.as_millis()).unwrap_or(u64::MAX),
                }),
                true,
                true,
            ),
            Err(Failure::Broken(message)) => (
                Err(Error::Unavailable(format!("{op}: {message}"))),
                true,
                true,
            ),
            Err(Failure::Collateral) => {
                // Says nothing about Redis: the permit goes back unreported.
                drop(permit);
                return Ended {
                    reply: Err(Error::Unavailable(format!(
                        "{op}: connection dropped after another request timed out"
                    ))),
                    reconnect: false,
                };
            }
        };
        if trips {
            permit.failure();
        } else {
            permit.success();
        }
        Ended { reply, reconnect }
    }
}

/// An error reply: `(the error, whether it trips the breaker, whether to reconnect)`.
fn judge_error_reply(op: &str, message: String) -> (Result<Reply>, bool, bool) {
    let code = message.split(' ').next().unwrap_or_default();
    match code {
        // A connection still pointing at a primary demoted by a failover, or one that lost
        // its authentication: only a new connection helps.
        "READONLY" | "NOAUTH" | "WRONGPASS" => (
            Err(Error::Unavailable(format!("{op}: {message}"))),
            true,
            true,
        ),
        // Redis answers, but cannot serve right now.
        "LOADING" | "CLUSTERDOWN" | "MASTERDOWN" | "TRYAGAIN" => (
            Err(Error::Unavailable(format!("{op}: {message}"))),
            false,
            false,
        ),
        _ => (Err(Error::Redis(message)), false, false),
    }
}

/// Whether `e` is Redis saying it does not know a script (answer: [`Command::as_eval`]).
pub fn is_noscript(e: &Error) -> bool {
    matches!(e, Error::Redis(m) if m.starts_with("NOSCRIPT"))
}

/// The error for a reply of the wrong shape.
pub(super) fn unexpected(what: &str, reply: &Reply) -> Error {
    let shape = match reply {
        Reply::Nil => "nil",
        Reply::Int(_) => "an integer",
        Reply::Bulk(_) => "a bulk string",
        Reply::Array(_) => "an array",
        Reply::Simple(_) => "a status",
        Reply::Error(_) => "an error",
    };
    Error::Redis(format!("{what}: unexpected reply ({shape})"))
}

/// The reply to a `GET`: the stored bytes, or `None`.
pub fn judge_get(reply: Reply) -> Result<Option<bytes::Bytes>> {
    match reply {
        Reply::Nil => Ok(None),
        Reply::Bulk(b) => Ok(Some(b)),
        other => Err(unexpected("GET", &other)),
    }
}

/// The reply to a `SET`: `+OK`.
pub fn judge_set(reply: Reply) -> Result<()> {
    match reply {
        Reply::Simple(s) if s == "OK" => Ok(()),
        other => Err(unexpected("SET", &other)),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::breaker::{Breaker, BreakerConfig, State};

    fn call(breaker: &Breaker) -> Call {
        Call {
            op: "get_entry",
            permit: breaker.try_acquire().unwrap(),
            deadline: Instant::now(),
            timeout: Duration::from_millis(250),
        }
    }

    fn breaker() -> Breaker {
        Breaker::new(BreakerConfig {
            failure_threshold: 1,
            ..BreakerConfig::default()
        })
    }

    #[test]
    fn answers_keep_the_breaker_closed_and_failures_trip_it() {
        for reply in [
            Reply::Nil,
            Reply::Error("ERR wrong".into()),
            Reply::Error("LOADING Redis is loading".into()),
            Reply::Error("NOSCRIPT No matching script".into()),
        ] {
            let b = breaker();
            let ended = call(&b).end(Ok(reply.clone()));
            assert!(!ended.reconnect, "{reply:?}");
            assert_eq!(b.state(), State::Closed, "{reply:?}");
        }
        for got in [
            Err(Failure::Timeout),
            Err(Failure::Broken("reset".into())),
            Ok(Reply::Error(
                "READONLY You can't write against a read only replica.".into(),
            )),
            Ok(Reply::Error("NOAUTH Authentication required.".into())),
        ] {
            let b = breaker();
            let ended = call(&b).end(got.clone());
            assert!(ended.reconnect, "{got:?}");
            assert!(ended.reply.is_err());
            assert_eq!(b.state(), State::Open, "{got:?}");
        }
        // Collateral: unreported, the connection was dropped already.
        let b = breaker();
        let ended = call(&b).end(Err(Failure::Collateral));
        assert!(!ended.reconnect);
        assert_eq!(b.stats().consecutive_failures, 0);
        assert_eq!(b.state(), State::Closed);
    }

    #[test]
    fn error_replies_map_to_typed_errors() {
        let e = call(&breaker())
            .end(Err(Failure::Timeout))
            .reply
            .unwrap_err();
        let b = breaker();

        assert!(
            matches!(
                e,
                Error::Timeout {
                    op: "get_entry",
                    ms: 250
                }
            ),
            "{e}"
        );
        let e = call(&b)
            .end(Ok(Reply::Error("NOSCRIPT No matching script.".into())))
            .reply
            .unwrap_err();
        assert!(is_noscript(&e));
        let e = call(&b)
            .end(Ok(Reply::Error("TRYAGAIN later".into())))
            .reply
            .unwrap_err();
        assert!(matches!(e, Error::Unavailable(_)));
    }

    #[test]
    fn a_script_is_evalsha_and_falls_back_to_eval() {
        static S: std::sync::LazyLock<Script> = std::sync::LazyLock::new(|| Script {
            name: "t",
            source: "return 1",
            sha: "e0e1f9fabfc9d4800c877a703b823ac0578ff8db".into(),
        });
        let cmd = Command::script(&S, &["k"], vec![Cow::Borrowed(b"a")]);
        let args: Vec<&[u8]> = cmd.args().collect();
        assert_eq!(
            args,
            [&b"EVALSHA"[..], S.sha.as_bytes(), b"1", b"k", b"a"].to_vec()
        );
        let eval = cmd.as_eval().unwrap();
        let mut out = Vec::new();
        eval.encode(&mut out);
        assert_eq!(
            out,
            b"*5\r\n$4\r\nEVAL\r\n$8\r\nreturn 1\r\n$1\r\n1\r\n$1\r\nk\r\n$1\r\na\r\n"
        );
        assert_eq!(eval.encoded_len(), out.len());
        let mut big = Vec::new();
        let long = Command::new(vec![Cow::Borrowed(b"SET"), Cow::Owned(vec![7; 12_345])]);
        long.encode(&mut big);
        assert_eq!(long.encoded_len(), big.len());
        assert!(eval.as_eval().is_none());
        assert!(Command::new(vec![Cow::Borrowed(b"GET")])
            .as_eval()
            .is_none());
    }
}
