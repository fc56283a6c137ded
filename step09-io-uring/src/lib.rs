//! `cargo run --release -p step09-io-uring`
//!
//! The same WebSocket echo as step06, on io_uring instead of epoll.
//!
//! epoll tells you a socket is *ready*; you then make the read yourself, and the write: two
//! system calls per echoed message, besides `epoll_wait` (three where the loop reads until
//! `EAGAIN`). io_uring takes the
//! *operation*: you ask for the read, the kernel does it and tells you it is *done*, with
//! the bytes already in your buffer. Requests and results travel through two rings of
//! memory shared with the kernel, so one `io_uring_enter` submits every request queued
//! since the last call and collects every result that came in: under load, well under one
//! system call per message.
//!
//! - A **multishot accept** on the listener: one request, a completion per new connection.
//! - A **multishot receive** per connection, with a **provided buffer ring**: the kernel
//!   picks a buffer only when bytes arrive, so an idle connection owns no buffer at all.
//! - **Buffer ownership**: a buffer handed to the kernel (a send's bytes, the ring's
//!   buffers) is not ours to touch or free until its completion comes back. A connection
//!   is dropped only when none of its operations is still in the kernel.
//! - When the buffer ring runs dry, a receive ends with `ENOBUFS`; the bytes stay in the
//!   socket, and we re-arm once buffers are back. Nothing is lost.
//!
//! The handshake and the frame decoder are step06's, used as a library: what a connection
//! says has not changed, only how its bytes come and go.
//!
//! - `ring.rs`: the rings, the provided buffer ring, and the check that io_uring is here.

mod ring;

pub use ring::Unavailable;

use std::io;
use std::net::TcpListener;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::time::{Duration, Instant};

use common::sys::{client_gone, cvt, is_disconnect, out_of_resources};
use common::{MemoryMeter, RateLimitedLog};
use io_uring::squeue::Entry as Sqe;
use io_uring::types::{CancelBuilder, Fd, SubmitArgs, Timespec};
use io_uring::{IoUring, Submitter, cqueue, opcode, squeue::SubmissionQueue};
use step06_ws_epoll::frame::{self, Flow, Partial};
use step06_ws_epoll::handshake;
use tungstenite::protocol::frame::coding::CloseCode;

use ring::{BUFFER_GROUP, BufRing, cqe_error};

/// The budgets, step06's own settings: the same options, the same meaning.
pub use step06_ws_epoll::Config;

/// The rings and the buffer pool, set up before the server binds (so a kernel without
/// io_uring is told at once, and the pool sits in the memory baseline).
pub struct Uring {
    ring: IoUring,
    bufs: BufRing,
    /// `--ring-buffers` × `--buffer-size`, for the start-up line.
    pub pool_bytes: usize,
}

/// Create the rings and a provided buffer ring of `count` buffers of `size` bytes.
pub fn setup(count: u16, size: u32) -> Result<Uring, Unavailable> {
    // Room for a burst: 10 000 connections can each post a receive and a send at once. The
    // kernel keeps what does not fit (NODROP), but slower.
    let ring = ring::new_ring(4096, 32 * 1024)?;
    let bufs = BufRing::new(&ring, count, size)?;
    Ok(Uring {
        ring,
        bufs,
        pool_bytes: count as usize * size as usize,
    })
}

/// What a completion is about: the operation in the top 32 bits of its `user_data`, the fd
/// in the low 32. A connection's fd is never reused while one of its operations is in the
/// kernel (we close it only after the last completion), so the fd is a safe name.
const ACCEPT: u64 = 1;
const RECV: u64 = 2;
const SEND: u64 = 3;
const CANCEL: u64 = 4;

fn token(op: u64, fd: RawFd) -> u64 {
    (op << 32) | fd as u32 as u64
}

/// One connection. Kept small on purpose: times 10 000, this is what idle connections cost.
struct Conn {
    /// The socket. Dropping the `Conn` closes it, so a `Conn` is dropped only once the
    /// kernel has returned every operation on it.
    fd: OwnedFd,
    /// Where the conversation is, with the bytes (if any) this stage needs to keep, and
    /// since when (the timeouts count from there).
    state: State,
    /// Replies on their way out. `None` for an idle connection: 8 bytes, no allocation.
    output: Option<Box<Output>>,
    /// A multishot receive is in the kernel for this connection.
    reading: bool,
    /// We asked the kernel to cancel this connection's operations (to pause reading, or
    /// because it is done).
    cancelling: bool,
    /// Our FIN is sent (`shutdown(SHUT_WR)`), after our last bytes.
    shut: bool,
}

/// The life of a connection: upgrade, frames, close, and the wait for the kernel.
#[expect(
    clippy::box_collection,
    reason = "a Box<Vec> is 8 bytes, a Vec 24: the extra allocation is only for a head in pieces"
)]
enum State {
    /// Waiting for the HTTP request head (`Some` only if it came in pieces), since the
    /// accept.
    Handshaking {
        head: Option<Box<Vec<u8>>>,
        since: Second,
    },
    /// Upgraded: frames, decoded by step06's `frame.rs`. `None` unless something is
    /// unfinished; `since` is when it began to hold bytes.
    Open {
        partial: Option<Box<Partial>>,
        since: Second,
    },
    /// Our last bytes (a close frame or an HTTP error) are queued; what the client still
    /// sends is dropped until it hangs up.
    Closing { since: Second },
    /// Finished: waiting only for the kernel to return its operations, then closed.
    Gone,
}

/// The bytes of a connection's replies.
///
/// Two buffers because of ownership: `sending` is in the kernel (a send request points at
/// it) and must not move or change until the send completes; replies produced meanwhile
/// wait in `queued`.
#[derive(Default)]
struct Output {
    /// The bytes of the send in flight; empty when none is.
    sending: Vec<u8>,
    /// Replies waiting for the send in flight to finish.
    queued: Vec<u8>,
    /// A send request for `sending` is in the kernel.
    in_flight: bool,
}

/// Stop reading a connection once this many reply bytes wait behind its send in flight:
/// the client reads slower than it writes. (The size of step06's shared read buffer.)
const PAUSE_READING_AT: usize = 64 * 1024;

/// A time: whole seconds since the loop started. 4 bytes where an `Instant` takes 16; the
/// timeouts need no finer grain.
type Second = u32;

/// The submission side: the queue and the means to flush it when it is full.
struct Submit<'a> {
    sq: SubmissionQueue<'a>,
    submitter: Submitter<'a>,
}

impl Submit<'_> {
    /// Queue a request. Nothing reaches the kernel until the next `io_uring_enter`.
    ///
    /// # Safety
    ///
    /// Every buffer the request points at stays valid, unmoved and untouched until its
    /// completion comes back.
    unsafe fn push(&mut self, sqe: &Sqe) -> io::Result<()> {
        loop {
            // SAFETY: the caller keeps the request's buffers alive until its completion.
            if unsafe { self.sq.push(sqe) }.is_ok() {
                return Ok(());
            }
            // The queue is full: hand what is in it to the kernel, and go on.
            self.sq.sync();
            self.submitter.submit()?;
            self.sq.sync();
        }
    }
}

/// How long to stop accepting when the process is out of file descriptors.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);

/// Everything the loop keeps, besides the rings.
struct Server {
    listener: TcpListener,
    /// Indexed by fd, as in step06: the kernel hands out the lowest free fd.
    connections: Vec<Option<Conn>>,
    open: usize,
    /// Bytes held by all connections together (heads, partial frames, output).
    buffered: usize,
    /// Replies are put together here, then moved into the connection's output.
    out: Vec<u8>,
    bufs: BufRing,
    /// A multishot accept is in the kernel.
    accepting: bool,
    /// Set while we are out of file descriptors and not accepting.
    accept_paused_until: Option<Instant>,
    /// Out of fds, accept fails ten times a second: say so once a second, with a count.
    accept_log: RateLimitedLog,
    start: Instant,
    config: Config,
}

/// Serve WebSocket echo on `listener` until an unrecoverable error.
pub fn serve(
    listener: TcpListener,
    mut meter: MemoryMeter,
    uring: Uring,
    config: Config,
) -> io::Result<()> {
    let Uring { mut ring, bufs, .. } = uring;
    let mut server = Server {
        listener,
        connections: Vec::new(),
        open: 0,
        buffered: 0,
        out: Vec::new(),
        bufs,
        accepting: false,
        accept_paused_until: None,
        accept_log: RateLimitedLog::per_second(),
        start: Instant::now(),
        config,
    };
    let mut last_scan = 0;

    loop {
        meter.tick(server.open);
        let (submitter, sq, mut cq) = ring.split();
        let mut submit = Submit { sq, submitter };

        if !server.accepting
            && server
                .accept_paused_until
                .is_none_or(|t| Instant::now() >= t)
        {
            server.accept_paused_until = None;
            let fd = server.listener.as_raw_fd();
            let accept = opcode::AcceptMulti::new(Fd(fd))
                .flags(libc::SOCK_CLOEXEC)
                .build()
                .user_data(token(ACCEPT, fd));
            // SAFETY: an accept points at no buffer of ours.
            unsafe { submit.push(&accept)? };
            server.accepting = true;
        }
        let now = server.now();
        if now != last_scan {
            last_scan = now;
            server.expire(now, &mut submit)?;
        }

        // One system call: submit everything queued since the last one, and wait until at
        // least one completion is there, or the timeout passes.
        let mut timeout = meter.period().min(Duration::from_secs(1));
        if let Some(until) = server.accept_paused_until {
            timeout = timeout.min(until.saturating_duration_since(Instant::now()));
        }
        let timespec = Timespec::from(timeout);
        submit.sq.sync();
        match submit
            .submitter
            .submit_with_args(1, &SubmitArgs::new().timespec(&timespec))
        {
            Ok(_) => {}
            // The timeout passed; a signal arrived; the completion queue is full and must be
            // emptied first. None is an error: just go round.
            Err(err)
                if matches!(
                    err.raw_os_error(),
                    Some(libc::ETIME | libc::EINTR | libc::EBUSY)
                ) => {}
            Err(err) => return Err(err),
        }

        // Every completion that came in, in the order the kernel posted them.
        cq.sync();
        for cqe in &mut cq {
            server.complete(&cqe, &mut submit)?;
        }
    }
}

impl Server {
    fn now(&self) -> Second {
        self.start.elapsed().as_secs() as Second
    }

    /// Act on one completion.
    fn complete(&mut self, cqe: &cqueue::Entry, submit: &mut Submit) -> io::Result<()> {
        let op = cqe.user_data() >> 32;
        let fd = cqe.user_data() as u32 as RawFd;
        match op {
            ACCEPT => return self.accepted(cqe, submit),
            // The cancelled operations report for themselves.
            CANCEL => return Ok(()),
            RECV | SEND => {}
            _ => unreachable!("bug: an operation we never submit"),
        }
        let before = self.held(fd);
        let kept_before = self.kept(fd);
        let now = self.now();
        let Some(conn) = self.connections[fd as usize].as_mut() else {
            unreachable!("bug: a completion for fd {fd}, which has none in flight");
        };
        if op == RECV {
            received(conn, cqe, &mut self.bufs, &mut self.out, &self.config, now);
        } else {
            sent(conn, cqe);
        }
        self.settle(fd, submit)?;

        let after = self.held(fd);
        self.buffered = self.buffered + after - before;
        // The clock for bytes held starts when a connection begins to hold some, and starts
        // again whenever it gets somewhere: it holds less than before (a frame or message
        // finished), or the kernel took some of its replies (the client reads). A client
        // that only adds to what we hold, a byte at a time or by not reading, runs out of it.
        let progress = after < before || (op == SEND && cqe.result() > 0);
        if after > 0
            && (before == 0 || progress)
            && let Some(Conn {
                state: State::Open { since, .. },
                ..
            }) = self.connections[fd as usize].as_mut()
        {
            *since = now;
        }
        // The budget: the connection that asked for more and takes the server past it is the
        // one refused; the others did nothing wrong.
        if self.kept(fd) > kept_before && self.buffered > self.config.max_buffered {
            if let Some(conn) = self.connections[fd as usize].as_mut() {
                refuse(conn, now);
            }
            self.settle(fd, submit)?;
            let after_fail = self.held(fd);
            self.buffered = self.buffered + after_fail - after;
        }
        Ok(())
    }

    /// A new connection, or the accept's end.
    fn accepted(&mut self, cqe: &cqueue::Entry, submit: &mut Submit) -> io::Result<()> {
        if !cqueue::more(cqe.flags()) {
            // The multishot accept is over (an error ended it); the loop re-arms it.
            self.accepting = false;
        }
        let result = cqe.result();
        if result < 0 {
            let err = cqe_error(result);
            if out_of_resources(&err) {
                // The clients wait in the kernel's queue. Stop accepting for a moment, or
                // the accept would fail again at once, and again.
                self.accept_log.log(|| {
                    format!(
                        "step09-io-uring: accept: {err}; pausing accepts for {ACCEPT_BACKOFF:?}"
                    )
                });
                self.accept_paused_until = Some(Instant::now() + ACCEPT_BACKOFF);
                if self.accepting {
                    self.cancel(self.listener.as_raw_fd(), submit)?;
                }
                return Ok(());
            }
            if client_gone(&err) || err.raw_os_error() == Some(libc::ECANCELED) {
                return Ok(());
            }
            return Err(err);
        }
        // SAFETY: the kernel just opened this fd for us; nothing else owns it.
        let fd = unsafe { OwnedFd::from_raw_fd(result) };
        let index = result as usize;
        if self.connections.len() <= index {
            self.connections.resize_with(index + 1, || None);
        }
        self.connections[index] = Some(Conn {
            fd,
            state: State::Handshaking {
                head: None,
                since: self.now(),
            },
            output: None,
            reading: false,
            cancelling: false,
            shut: false,
        });
        self.open += 1;
        // Arms its multishot receive.
        self.settle(result, submit)
    }

    /// Bring the kernel's view of a connection in line with ours: send what is queued, read
    /// or stop reading, and close it once nothing of it is left in the kernel.
    fn settle(&mut self, fd: RawFd, submit: &mut Submit) -> io::Result<()> {
        let Some(conn) = self.connections[fd as usize].as_mut() else {
            return Ok(());
        };

        // 1. Output: if no send is in flight and replies are waiting, send them. The bytes
        // move into `sending`, and from the moment the request is queued they are the
        // kernel's: not touched, not moved, not freed until the completion.
        if let Some(output) = conn.output.as_mut()
            && !output.in_flight
        {
            if output.sending.is_empty() {
                std::mem::swap(&mut output.sending, &mut output.queued);
            }
            if output.sending.is_empty() || matches!(conn.state, State::Gone) {
                // All out (or nobody to send to): an idle connection holds no buffer.
                conn.output = None;
            } else {
                let send =
                    opcode::Send::new(Fd(fd), output.sending.as_ptr(), output.sending.len() as u32)
                        .flags(libc::MSG_NOSIGNAL)
                        .build()
                        .user_data(token(SEND, fd));
                // SAFETY: `sending` is in a box owned by the connection, which is dropped only
                // after this send's completion; until then nothing writes to it (replies go to
                // `queued`), and moving the box does not move its heap bytes.
                unsafe { submit.push(&send)? };
                output.in_flight = true;
            }
        }

        // 2. Closing and everything sent: send our FIN, then wait for the client's.
        if matches!(conn.state, State::Closing { .. }) && conn.output.is_none() && !conn.shut {
            conn.shut = true;
            // SAFETY: the fd is open (owned by `conn`); shutdown takes no pointers.
            if cvt(unsafe { libc::shutdown(conn.fd.as_raw_fd(), libc::SHUT_WR) }).is_err() {
                // The client is gone already.
                conn.state = State::Gone;
            }
        }

        // 3. Reading: read until `PAUSE_READING_AT` bytes of replies wait behind the send in
        // flight. Output that piles up means the client reads slower than it writes: stop
        // reading it, so its bytes wait in its socket (and TCP slows it down), not in our
        // memory.
        let backlog = conn
            .output
            .as_ref()
            .is_some_and(|o| o.queued.len() >= PAUSE_READING_AT);
        let want = !matches!(conn.state, State::Gone) && !backlog;
        if want && !conn.reading && !conn.cancelling {
            let recv = opcode::RecvMulti::new(Fd(fd), BUFFER_GROUP)
                .build()
                .user_data(token(RECV, fd));
            // SAFETY: the receive names a buffer group, not a buffer: the kernel picks one of
            // the ring's buffers, which live as long as the process.
            unsafe { submit.push(&recv)? };
            conn.reading = true;
        } else if !want && conn.reading && !conn.cancelling {
            let cancel = opcode::AsyncCancel2::new(CancelBuilder::user_data(token(RECV, fd)))
                .build()
                .user_data(token(CANCEL, fd));
            // SAFETY: a cancel points at no buffer.
            unsafe { submit.push(&cancel)? };
            conn.cancelling = true;
        }

        // 4. Gone: ask the kernel to give back whatever it still holds for this connection
        // (a send to a client that never reads may wait forever), and close the socket once
        // it has.
        if matches!(conn.state, State::Gone) {
            let in_flight = conn.reading || conn.output.as_ref().is_some_and(|o| o.in_flight);
            if !in_flight {
                // Dropping the `Conn` closes the fd.
                self.connections[fd as usize] = None;
                self.open -= 1;
            } else if !conn.cancelling {
                self.cancel(fd, submit)?;
                if let Some(conn) = self.connections[fd as usize].as_mut() {
                    conn.cancelling = true;
                }
            }
        }
        Ok(())
    }

    /// Ask the kernel to cancel every operation on `fd`.
    fn cancel(&self, fd: RawFd, submit: &mut Submit) -> io::Result<()> {
        let cancel = opcode::AsyncCancel2::new(CancelBuilder::fd(Fd(fd)).all())
            .build()
            .user_data(token(CANCEL, fd));
        // SAFETY: a cancel points at no buffer.
        unsafe { submit.push(&cancel) }
    }

    /// Bytes a connection holds on the heap right now (0 for none): what counts against
    /// `--max-buffered`.
    fn held(&self, fd: RawFd) -> usize {
        let in_flight = self.connections.get(fd as usize).and_then(Option::as_ref);
        let in_flight = in_flight.and_then(|conn| conn.output.as_ref());
        self.kept(fd) + in_flight.map_or(0, |o| o.sending.capacity())
    }

    /// What a connection makes us keep, besides the bytes of its send in flight: a head in
    /// pieces, an unfinished frame or message, replies piling up behind the send. When this
    /// grows past the budget, the connection is refused. (An echo on its way out is not a
    /// reason to refuse anybody: the kernel is taking it.)
    fn kept(&self, fd: RawFd) -> usize {
        let Some(Some(conn)) = self.connections.get(fd as usize) else {
            return 0;
        };
        let state = match &conn.state {
            State::Handshaking {
                head: Some(head), ..
            } => head.capacity(),
            State::Open {
                partial: Some(partial),
                ..
            } => partial.heap_bytes(),
            _ => 0,
        };
        state + conn.output.as_ref().map_or(0, |o| o.queued.capacity())
    }

    /// Once a second: close the connections that ran out of time. A plain scan of the table
    /// (10 000 entries take microseconds), so no timer structure grows with traffic.
    fn expire(&mut self, now: Second, submit: &mut Submit) -> io::Result<()> {
        let timeout = self.config.timeout.as_secs() as Second;
        let stall_timeout = self.config.stall_timeout.as_secs() as Second;
        for fd in 0..self.connections.len() as RawFd {
            let held = self.held(fd);
            let Some(conn) = self.connections[fd as usize].as_mut() else {
                continue;
            };
            // Whole seconds on both sides: "more than" makes it never sooner than the timeout.
            let due = |since: Second, timeout: Second| now.saturating_sub(since) > timeout;
            match conn.state {
                // Slowloris: the whole head must be in within the timeout.
                State::Handshaking { since, .. } if due(since, timeout) => {
                    last_words(conn, handshake::TIMEOUT_RESPONSE.as_bytes(), now);
                }
                // Bytes held, and nothing finished: 1008, "policy violation": it is not too
                // big, it is too slow.
                State::Open { since, .. } if held > 0 && due(since, stall_timeout) => {
                    last_words(conn, &close_frame(CloseCode::Policy), now);
                }
                // Our close is out (or stuck behind a client that does not read).
                State::Closing { since } if due(since, timeout) => conn.state = State::Gone,
                _ => continue,
            }
            let before = held;
            self.settle(fd, submit)?;
            self.buffered = self.buffered + self.held(fd) - before;
        }
        Ok(())
    }
}

/// A receive completed: bytes in one of the ring's buffers, the end of the stream, or the
/// end of the multishot receive.
fn received(
    conn: &mut Conn,
    cqe: &cqueue::Entry,
    bufs: &mut BufRing,
    out: &mut Vec<u8>,
    config: &Config,
    now: Second,
) {
    if !cqueue::more(cqe.flags()) {
        // The multishot receive is over; `settle` re-arms it if we still want to read.
        conn.reading = false;
        conn.cancelling = false;
    }
    let result = cqe.result();
    if result > 0 {
        let bid = cqueue::buffer_select(cqe.flags())
            .expect("bug: a receive with bytes names the buffer they are in");
        // The buffer is ours now: read it, then give it straight back.
        handle_input(conn, bufs.received(bid, result as usize), out, config, now);
        bufs.give_back(bid);
        return;
    }
    match result {
        // The client hung up.
        0 => conn.state = State::Gone,
        // The ring ran dry: the bytes are still in the socket. `settle` re-arms the receive,
        // and buffers come back as soon as the completions that hold them are handled.
        r if r == -libc::ENOBUFS => {}
        // We cancelled it (to stop reading, or because the connection is done).
        r if r == -libc::ECANCELED => {}
        r => {
            let err = cqe_error(r);
            if !is_disconnect(&err) {
                eprintln!("step09-io-uring: connection: {err}; closing it");
            }
            conn.state = State::Gone;
        }
    }
}

/// Bytes arrived: the handshake, then frames. The replies are queued on the connection.
fn handle_input(conn: &mut Conn, input: &[u8], out: &mut Vec<u8>, config: &Config, now: Second) {
    out.clear();
    let flow = match &mut conn.state {
        State::Handshaking { head, .. } => match read_head(head, input, out, config) {
            Head::Incomplete => Flow::Open,
            Head::Refused => Flow::Close,
            Head::Upgraded { partial, flow } => {
                conn.state = State::Open {
                    partial,
                    since: now,
                };
                flow
            }
        },
        State::Open { partial, .. } => frame::decode(partial, input, config.max_message, out),
        // We said our last word; what the client still sends is dropped.
        State::Closing { .. } | State::Gone => return,
    };
    if flow == Flow::Close {
        conn.state = State::Closing { since: now };
    }
    queue(conn, out);
}

/// What a piece of request head led to.
enum Head {
    /// Not whole yet: kept, wait for more.
    Incomplete,
    /// Refused: the HTTP error is in the output.
    Refused,
    /// Upgraded: the `101` is in the output, followed by the replies to any frames that
    /// came right behind the head (dropping them would lose the client's first message).
    Upgraded {
        partial: Option<Box<Partial>>,
        flow: Flow,
    },
}

/// The request head, or more of it, arrived: answer it once it is whole.
#[expect(
    clippy::box_collection,
    reason = "the head is kept boxed in the state; see State::Handshaking"
)]
fn read_head(
    head: &mut Option<Box<Vec<u8>>>,
    input: &[u8],
    out: &mut Vec<u8>,
    config: &Config,
) -> Head {
    // A head that arrives whole is parsed straight from the ring's buffer; only one that
    // comes in pieces is copied.
    let mut kept = head.take();
    let bytes: &[u8] = match &mut kept {
        Some(kept) => {
            kept.extend_from_slice(input);
            kept
        }
        None => input,
    };
    match handshake::parse_request(bytes) {
        Ok(None) => {
            // parse_request refuses heads over 8 KiB, so this stays bounded.
            *head = Some(kept.unwrap_or_else(|| Box::new(input.to_vec())));
            Head::Incomplete
        }
        Err(reject) => {
            out.extend_from_slice(reject.response().as_bytes());
            Head::Refused
        }
        Ok(Some(upgrade)) => {
            out.extend_from_slice(handshake::switching_protocols(&upgrade.accept).as_bytes());
            let mut partial = None;
            let early = &bytes[upgrade.head_len..];
            let flow = frame::decode(&mut partial, early, config.max_message, out);
            Head::Upgraded { partial, flow }
        }
    }
}

/// A send completed: all of it, part of it, or not at all.
fn sent(conn: &mut Conn, cqe: &cqueue::Entry) {
    let output = conn
        .output
        .as_mut()
        .expect("bug: a send completion for a connection with no output");
    output.in_flight = false;
    let result = cqe.result();
    if result >= 0 {
        // The kernel is done with these bytes: they are ours again. A short send leaves
        // the rest, which `settle` sends on.
        output.sending.drain(..result as usize);
        return;
    }
    // Cancelled (the connection is done) or failed (the client is gone): drop the output.
    output.sending.clear();
    output.queued.clear();
    if result != -libc::ECANCELED {
        let err = cqe_error(result);
        if !is_disconnect(&err) {
            eprintln!("step09-io-uring: connection: {err}; closing it");
        }
    }
    conn.state = State::Gone;
}

/// Queue replies behind whatever is being sent.
fn queue(conn: &mut Conn, bytes: &[u8]) {
    if !bytes.is_empty() {
        conn.output
            .get_or_insert_default()
            .queued
            .extend_from_slice(bytes);
    }
}

/// Past `--max-buffered`: close the connection, telling it why as well as its stage
/// allows: during the handshake `503` (the server is busy, the request is not wrong), after
/// it a close frame with 1009, "message too big" (to be held here, now).
fn refuse(conn: &mut Conn, now: Second) {
    match conn.state {
        State::Handshaking { .. } => last_words(conn, handshake::BUSY_RESPONSE.as_bytes(), now),
        State::Open { .. } => last_words(conn, &close_frame(CloseCode::Size), now),
        // It said its last word already: what it holds is our last bytes, on their way.
        State::Closing { .. } | State::Gone => {}
    }
}

/// Our last bytes to a connection (an HTTP error or a close frame): drop what it holds and
/// what waits to be sent, queue them, and close once they are out.
fn last_words(conn: &mut Conn, bytes: &[u8], now: Second) {
    if let Some(output) = conn.output.as_mut() {
        // `sending` is the kernel's until its completion; the rest can go.
        output.queued = Vec::new();
    }
    queue(conn, bytes);
    conn.state = State::Closing { since: now };
}

/// A close frame with `code`.
fn close_frame(code: CloseCode) -> Vec<u8> {
    let mut close = Vec::new();
    frame::write_close(Some(code), b"", &mut close);
    close
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What an idle connection costs in the table, in bytes. If this grows, the memory line
    /// grows with it, 10 000 times.
    #[test]
    fn an_idle_connection_is_a_few_dozen_bytes() {
        let size = size_of::<Option<Conn>>();
        assert!(size <= 32, "Option<Conn> is {size} bytes");
    }
}
