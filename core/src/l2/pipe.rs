//! The tokio transport's own connection to a single server (plain TCP or TLS, RESP2): a
//! [`Command`](super::protocol::Command)'s bytes go out, replies come back through the core's
//! [`resp::Reader`] (the one the event-loop transport reads with, bounded by the largest envelope
//! this cache writes) and are matched to their requests in order.
//!
//! Requests made while others are being written go out together (one `write` for the batch).
//! A reply past its caller's deadline is still read and matched, then dropped: pairing stays
//! right as long as the server answers every request, and a connection whose call timed out
//! is dropped by the caller anyway ([`Call::end`](super::protocol::Call::end) says reconnect).
//! Anything that is not RESP, a reply nobody asked for, a reply over the bound, a read or write
//! error, or the server closing ends the connection: every request on it fails as
//! [`Failure::Broken`], and so does every later one (the caller connects anew).

use std::collections::VecDeque;
use std::sync::Arc;

use parking_lot::Mutex;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::sync::{mpsc, oneshot};

use super::protocol::Failure;
use crate::resp::{Reader, Reply};

type Answer = oneshot::Sender<std::result::Result<Reply, Failure>>;

/// A request: `bytes[from..]` is the command (what comes before may be spare room, see
/// [`Pipe::request`]), and where its reply goes.
struct Job {
    bytes: Vec<u8>,
    from: usize,
    answer: Answer,
}

/// Writes larger than this are not joined with the requests queued behind them.
const BATCH_MAX: usize = 1 << 20;

/// One connection; cheap to clone. Its two tasks (reader and writer) end when the server
/// closes or misbehaves, and are aborted when the last clone goes.
#[derive(Clone)]
pub(super) struct Pipe {
    requests: mpsc::UnboundedSender<Job>,
    _tasks: Arc<Tasks>,
}

/// The connection's tasks, aborted when dropped.
struct Tasks([tokio::task::JoinHandle<()>; 2]);

impl Drop for Tasks {
    fn drop(&mut self) {
        for task in &self.0 {
            task.abort();
        }
    }
}

/// The requests written and not answered yet, in order; `None` once the connection ended.
struct InFlight(Mutex<Option<VecDeque<Answer>>>);

impl InFlight {
    /// Queues `answer`, or hands it back when the connection has ended.
    fn push(&self, answer: Answer) -> std::result::Result<(), Answer> {
        match self.0.lock().as_mut() {
            Some(queue) => {
                queue.push_back(answer);
                Ok(())
            }
            None => Err(answer),
        }
    }

    /// The oldest request waiting for a reply.
    fn pop(&self) -> Option<Answer> {
        self.0.lock().as_mut().and_then(VecDeque::pop_front)
    }

    /// Ends the connection: every waiting request fails with `why`.
    fn end(&self, why: &str) {
        let waiting = self.0.lock().take();
        for answer in waiting.into_iter().flatten() {
            let _ = answer.send(Err(Failure::Broken(why.to_owned())));
        }
    }
}

impl Pipe {
    /// Starts the connection over `stream` (connected, authenticated); replies longer than
    /// `max_reply` bytes end it.
    pub(super) fn start<S>(stream: S, max_reply: usize) -> Pipe
    where
        S: AsyncRead + AsyncWrite + Send + 'static,
    {
        let (rd, wr) = tokio::io::split(stream);
        let (requests, rx) = mpsc::unbounded_channel();
        let in_flight = Arc::new(InFlight(Mutex::new(Some(VecDeque::new()))));
        let reader = tokio::spawn(read_replies(
            rd,
            Reader::with_max_reply(max_reply),
            Arc::clone(&in_flight),
        ));
        let writer = tokio::spawn(write_requests(wr, rx, in_flight));
        Pipe {
            requests,
            _tasks: Arc::new(Tasks([reader, writer])),
        }
    }

    /// Sends `bytes[from..]` (one command in RESP) and waits for its reply. The buffer is
    /// written as it is when nothing is queued before it: a command framed in place around a
    /// large value ([`super::L2::frame_set`]) is not copied again.
    pub(super) async fn request(
        &self,
        bytes: Vec<u8>,
        from: usize,
    ) -> std::result::Result<Reply, Failure> {
        let (answer, reply) = oneshot::channel();
        let closed = || Failure::Broken("connection closed".to_owned());
        let job = Job {
            bytes,
            from,
            answer,
        };
        self.requests.send(job).map_err(|_| closed())?;
        reply.await.unwrap_or_else(|_| Err(closed()))
    }
}

/// The writer task: takes requests in order, queues their answers, writes their bytes (those
/// that arrive meanwhile in the same write, appended to the first one's buffer).
async fn write_requests<W: AsyncWrite + Unpin>(
    mut wr: W,
    mut rx: mpsc::UnboundedReceiver<Job>,
    in_flight: Arc<InFlight>,
) {
    while let Some(first) = rx.recv().await {
        let mut out: Option<(Vec<u8>, usize)> = None;
        let mut next = Some(first);
        while let Some(Job {
            bytes,
            from,
            answer,
        }) = next.take()
        {
            match in_flight.push(answer) {
                Ok(()) => match &mut out {
                    None => out = Some((bytes, from)),
                    Some((buf, _)) => buf.extend_from_slice(&bytes[from..]),
                },
                Err(answer) => {
                    let _ = answer.send(Err(Failure::Broken("connection closed".to_owned())));
                }
            }
            if out
                .as_ref()
                .is_none_or(|(buf, at)| buf.len() - at < BATCH_MAX)
            {
                next = rx.try_recv().ok();
            }
        }
        let Some((buf, at)) = out else { continue };
        let written = async {
            wr.write_all(&buf[at..]).await?;
            wr.flush().await
        };
        if let Err(e) = written.await {
            in_flight.end(&format!("write: {e}"));
            return;
        }
    }
}

/// The reader task: reads into the reader's spare room and answers requests in order.
async fn read_replies<R: AsyncRead>(rd: R, mut reader: Reader, in_flight: Arc<InFlight>) {
    let mut rd = std::pin::pin!(rd);
    let why = 'conn: loop {
        let n = {
            let mut buf = ReadBuf::uninit(reader.spare());
            let read = std::future::poll_fn(|cx| rd.as_mut().poll_read(cx, &mut buf)).await;
            match read {
                Ok(()) => buf.filled().len(),
                Err(e) => break 'conn format!("read: {e}"),
            }
        };
        if n == 0 {
            break 'conn "closed by Redis".to_owned();
        }
        // SAFETY: `poll_read` initialised the first `n` bytes of the `ReadBuf` over the slice
        // `spare` lent (`filled().len()` is `n`), and nothing used the reader in between:
        // `advance`'s contract.
        unsafe { reader.advance(n) };
        loop {
            match reader.next_reply() {
                Ok(Some(reply)) => match in_flight.pop() {
                    // Its caller may have given up (deadline): the reply is dropped.
                    Some(answer) => {
                        let _ = answer.send(Ok(reply));
                    }
                    None => break 'conn "a reply nobody asked for".to_owned(),
                },
                Ok(None) => break,
                Err(e) => break 'conn e.to_string(),
            }
        }
    };
    in_flight.end(&why);
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use tokio::io::AsyncReadExt;

    type Pending = tokio::task::JoinHandle<std::result::Result<Reply, Failure>>;

    /// A pipe to an in-memory "server" whose end the test drives.
    fn connected() -> (Pipe, tokio::io::DuplexStream) {
        let (client, server) = tokio::io::duplex(1 << 16);
        (Pipe::start(client, 1024), server)
    }

    /// Sends `bytes[from..]` on `pipe` from a task of its own, once the server has read exactly
    /// that command.
    async fn send_from(
        pipe: &Pipe,
        server: &mut tokio::io::DuplexStream,
        bytes: Vec<u8>,
        from: usize,
    ) -> Pending {
        let expected = bytes[from..].to_vec();
        let task = {
            let pipe = pipe.clone();
            tokio::spawn(async move { pipe.request(bytes, from).await })
        };
        let mut got = vec![0u8; expected.len()];
        server.read_exact(&mut got).await.unwrap();
        assert_eq!(got, expected);
        task
    }

    async fn send(pipe: &Pipe, server: &mut tokio::io::DuplexStream, command: &[u8]) -> Pending {
        send_from(pipe, server, command.to_vec(), 0).await
    }

    #[tokio::test]
    async fn replies_are_matched_in_order_and_a_stray_one_ends_the_connection() {
        let (pipe, mut server) = connected();
        let a = send(&pipe, &mut server, b"*1\r\n$1\r\na\r\n").await;
        let b = send(&pipe, &mut server, b"*1\r\n$1\r\nb\r\n").await;
        // Both answers in one write, in order.
        server.write_all(b"$1\r\nA\r\n:2\r\n").await.unwrap();
        assert_eq!(
            a.await.unwrap().unwrap(),
            Reply::Bulk(bytes::Bytes::from_static(b"A"))
        );
        assert_eq!(b.await.unwrap().unwrap(), Reply::Int(2));
        // A reply nobody asked for: the connection ends, this request and later ones fail.
        let c = send(&pipe, &mut server, b"*1\r\n$1\r\nc\r\n").await;
        server.write_all(b"+OK\r\n+EXTRA\r\n").await.unwrap();
        assert_eq!(c.await.unwrap().unwrap(), Reply::Simple("OK".into()));
        let late = pipe.request(b"*1\r\n$1\r\nd\r\n".to_vec(), 0).await;
        assert!(matches!(late, Err(Failure::Broken(_))), "{late:?}");
    }

    #[tokio::test]
    async fn a_reply_over_the_bound_ends_the_connection_before_it_is_buffered() {
        let (pipe, mut server) = connected();
        let r = send(&pipe, &mut server, b"*1\r\n$1\r\nx\r\n").await;
        server.write_all(b"$524288000\r\n").await.unwrap();
        let e = r.await.unwrap().unwrap_err();
        assert!(
            matches!(e, Failure::Broken(ref m) if m.contains("protocol")),
            "{e:?}"
        );
    }

    #[tokio::test]
    async fn the_server_closing_fails_what_waits_and_what_comes_after() {
        let (pipe, mut server) = connected();
        let r = send(&pipe, &mut server, b"*1\r\n$1\r\nx\r\n").await;
        drop(server);
        let e = r.await.unwrap().unwrap_err();
        assert!(
            matches!(e, Failure::Broken(ref m) if m.contains("closed")),
            "{e:?}"
        );
        let later = pipe.request(b"*1\r\n$1\r\ny\r\n".to_vec(), 0).await;
        assert!(matches!(later, Err(Failure::Broken(_))), "{later:?}");
    }

    #[tokio::test]
    async fn a_request_is_written_from_its_offset() {
        let (pipe, mut server) = connected();
        let mut framed = b"spare room".to_vec();
        framed.extend_from_slice(b"*1\r\n$4\r\nPING\r\n");
        // The server reads the command alone, not the room in front of it.
        let r = send_from(&pipe, &mut server, framed, 10).await;
        server.write_all(b"+PONG\r\n").await.unwrap();
        assert_eq!(r.await.unwrap().unwrap(), Reply::Simple("PONG".into()));
    }
}
