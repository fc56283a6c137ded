//! The memory budget: how many bytes all connections together may make the server hold,
//! and for how long one of them may hold them.
//!
//! tungstenite keeps a partial frame in its read buffer and a fragmented message in a
//! buffer of its own, and it does not say how large they are. What this module can see is
//! the socket: [`BudgetedStream`] wraps it, and counts every byte read as *held* until the
//! connection's task says the message it belonged to has been answered
//! ([`BudgetedStream::answered`]). Held bytes are partial frames, fragments and the echo
//! waiting to go out: the `--max-buffered` of DESIGN.md, shared by every connection through
//! one [`Budget`].
//!
//! Time, as in step06: what a connection holds must be finished within `--stall-timeout`
//! of when it began to hold it. The clock starts at the first byte read while the
//! connection holds none; a whole message starts it again (what is held then is its echo,
//! [`BudgetedStream::message_in`]); it stops once everything is answered. Nothing else
//! moves it: a byte trickled in, a ping, an empty fragment are no excuse.
//!
//! The count is an estimate, on the safe side but for one thing: after a message is
//! answered, tungstenite may already have read the start of the next one into its read
//! buffer. Those bytes, at most one `--read-buffer`, are not counted, and not on the clock
//! until another byte comes: they sit in the buffer every connection has anyway.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::task::{Context, Poll, ready};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio::time::{Instant, Sleep};
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;

/// The bytes all connections hold, against `--max-buffered`. One per server.
#[derive(Debug)]
pub struct Budget {
    /// `--max-buffered`.
    limit: usize,
    /// Bytes held by all connections now.
    held: AtomicUsize,
}

impl Budget {
    pub fn new(limit: usize) -> Budget {
        Budget {
            limit,
            held: AtomicUsize::new(0),
        }
    }

    /// Take up to `bytes` from the budget: as many as are left, 0 when it is spent.
    fn take(&self, bytes: usize) -> usize {
        let mut granted = 0;
        let _ = self
            .held
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |held| {
                granted = bytes.min(self.limit.saturating_sub(held));
                Some(held + granted)
            });
        granted
    }

    fn give_back(&self, bytes: usize) {
        self.held.fetch_sub(bytes, Ordering::Relaxed);
    }
}

/// A connection's socket, with its share of the [`Budget`] and the stall deadline.
pub struct BudgetedStream {
    /// The socket itself.
    inner: TcpStream,
    /// The server's one budget, shared by every connection.
    budget: Arc<Budget>,
    /// `--stall-timeout`.
    stall_timeout: Duration,
    /// Bytes read and not yet answered: this connection's share of the budget.
    held: usize,
    /// False until the handshake is done: a request head has `--handshake-timeout`, not
    /// the stall clock.
    open: bool,
    /// While bytes are held (after the handshake): when what is held must be finished. Set
    /// when the connection begins to hold bytes, never moved while it holds them.
    deadline: Option<Instant>,
    /// The timer for `deadline`, made the first time a read or a write has to wait. `None`
    /// for an idle connection (8 bytes instead of a timer's hundred), as step06 keeps no
    /// buffer for one.
    stall: Option<Pin<Box<Sleep>>>,
    /// Why the stream failed, if it was this module's doing: the close code to send.
    refusal: Option<CloseCode>,
}

impl BudgetedStream {
    pub fn new(inner: TcpStream, budget: Arc<Budget>, stall_timeout: Duration) -> BudgetedStream {
        BudgetedStream {
            inner,
            budget,
            stall_timeout,
            held: 0,
            open: false,
            deadline: None,
            stall: None,
            refusal: None,
        }
    }

    /// The handshake is done: the request head is no longer held. `early` bytes read
    /// behind it (frames a client sent without waiting for our `101`) still are, and from
    /// now on what the connection holds is on the stall clock.
    pub fn opened(&mut self, early: usize) {
        self.answered(Some(self.held.saturating_sub(early)));
        self.open = true;
        if self.held > 0 {
            self.start_clock();
        }
    }

    /// A whole message came in: what the connection held is finished, and what it holds
    /// now (the message, to be echoed) gets a clock of its own. Not for a ping or a pong:
    /// a control frame in the middle of a message finishes nothing.
    pub fn message_in(&mut self) {
        if self.deadline.is_some() {
            self.start_clock();
        }
    }

    /// The message these bytes belonged to is answered (its echo written out, a ping's
    /// pong sent): `bytes` of them are no longer held, or all of them for `None`. Holding
    /// nothing, the connection is off the clock.
    pub fn answered(&mut self, bytes: Option<usize>) {
        let freed = bytes.map_or(self.held, |bytes| bytes.min(self.held));
        self.budget.give_back(freed);
        self.held -= freed;
        if self.held == 0 {
            self.deadline = None;
            self.stall = None;
        }
    }

    /// If this stream failed on purpose, the close code that says why: 1009 ("message too
    /// big") for a read the budget could not hold, 1008 ("policy violation") for a stall.
    pub fn refusal(&self) -> Option<CloseCode> {
        self.refusal
    }

    /// The socket itself, for bytes no budget counts: what a client we refused still sends
    /// before it hangs up, read and dropped (see `refusal::hang_up`).
    pub fn socket(&mut self) -> &mut TcpStream {
        &mut self.inner
    }

    /// The stall clock starts now: `--stall-timeout` from now, what is held must be finished.
    fn start_clock(&mut self) {
        let deadline = Instant::now() + self.stall_timeout;
        self.deadline = Some(deadline);
        if let Some(stall) = &mut self.stall {
            stall.as_mut().reset(deadline);
        }
    }

    /// A read or write has to wait. While bytes are held, wait no longer than the stall
    /// deadline: past it, the connection is failed with 1008. An idle connection (or one
    /// still handshaking) waits as long as it likes.
    fn check_stall(&mut self, cx: &mut Context<'_>) -> Poll<io::Error> {
        let Some(deadline) = self.deadline else {
            return Poll::Pending;
        };
        let stall = self
            .stall
            .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(deadline)));
        ready!(stall.as_mut().poll(cx));
        self.refusal = Some(CloseCode::Policy);
        Poll::Ready(io::Error::new(
            io::ErrorKind::TimedOut,
            "held bytes unfinished for --stall-timeout",
        ))
    }
}

impl Drop for BudgetedStream {
    fn drop(&mut self) {
        self.answered(None);
    }
}

impl AsyncRead for BudgetedStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        // Take room for the read from the budget first, and read no more than that; give
        // back what the read did not use. So no read takes the total past the limit, even
        // with every worker thread reading at once.
        let room = this.budget.take(buf.remaining());
        if room == 0 && buf.remaining() > 0 {
            this.refusal = Some(CloseCode::Size);
            return Poll::Ready(Err(io::Error::other(
                "the server's --max-buffered budget is spent",
            )));
        }
        let mut limited = ReadBuf::new(buf.initialize_unfilled_to(room));
        let result = Pin::new(&mut this.inner).poll_read(cx, &mut limited);
        let read = match result {
            Poll::Ready(Ok(())) => limited.filled().len(),
            _ => 0,
        };
        buf.advance(read);
        this.budget.give_back(room - read);
        this.held += read;
        // Holding nothing before this read, it holds something now: the clock starts.
        if this.open && read > 0 && this.deadline.is_none() {
            this.start_clock();
        }
        match result {
            Poll::Ready(result) => Poll::Ready(result),
            Poll::Pending => this.check_stall(cx).map(Err),
        }
    }
}

impl AsyncWrite for BudgetedStream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bytes: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        match Pin::new(&mut this.inner).poll_write(cx, bytes) {
            Poll::Ready(result) => Poll::Ready(result),
            // The client reads too slowly for the echo we hold: the same deadline.
            Poll::Pending => this.check_stall(cx).map(Err),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}
