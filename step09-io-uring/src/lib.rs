//! `cargo run --release -p step09-io-uring`
//!
//! step06's WebSocket echo on io_uring instead of epoll. What a connection says is the
//! same (step06's handshake and frame decoder, used as a library); what changes is how its
//! bytes come and go.
//!
//! epoll tells you a socket is *ready*, then you make the read and the write yourself: two
//! system calls per echoed message. io_uring takes the *operation*: you ask for the read,
//! the kernel does it and tells you it is *done*. Requests and results travel through two
//! rings of memory shared with the kernel, so one `io_uring_enter` submits every request
//! queued since the last one and collects every result: under load, well under one system
//! call per message.
//!
//! The loop owns one output buffer for everybody, and no read buffer: a **multishot
//! receive** per connection takes a buffer from a **provided buffer ring** only when bytes
//! arrive, so an idle connection owns none (step06's lazy buffer, moved into the kernel).
//! A connection gets bytes of its own while it is in the middle of something, as in
//! step06, and while its replies are on their way out: bytes handed to the kernel are the
//! kernel's until their completion comes back, so a connection is closed only once the
//! kernel has given back every operation on it. An idle connection is one small `Conn`.
//!
//! Layout: this file is the loop and the connection's life (handshaking → open → closing).
//! `ring.rs` stands where step06's `epoll.rs` stood: the rings, the provided buffer ring,
//! and the check that io_uring is here at all. From step06, unchanged: `handshake`,
//! `frame`, `timer` and the options ([`WsOptions`], [`Config`]).
//!
//! And `budget.rs`, step06's budgets and the loop's accounting: after each completion,
//! how many bytes all connections may hold; before each wait, whose deadline has passed
//! (`expire`). It closes the connection that goes past either.

mod budget;
mod ring;

pub use ring::Unavailable;
pub use step06_ws_epoll::{Config, WsOptions};

use std::collections::HashMap;
use std::io;
use std::net::{Shutdown, TcpListener, TcpStream};
use std::os::fd::{AsRawFd, FromRawFd, RawFd};
use std::time::{Duration, Instant};

use common::sys::{client_gone, interrupted, is_disconnect, out_of_resources, would_block};
use common::{MemoryMeter, RateLimitedLog};
use io_uring::types::{CancelBuilder, Fd};
use io_uring::{IoUring, cqueue, opcode};
use step06_ws_epoll::frame::{self, Flow, Partial};
use step06_ws_epoll::handshake::{self, Request};
use step06_ws_epoll::page;
use step06_ws_epoll::timer::{Deadline, Timers};

use budget::{expire, held, hold_to_budget, time_left};
use ring::{BUFFER_GROUP, BufRing, cqe_result};

/// The rings and the buffer pool, set up before the server binds (so a kernel without
/// io_uring is told at once, and the pool sits in the memory baseline).
pub struct Uring {
    ring: IoUring,
    bufs: BufRing,
    /// `--ring-buffers` × `--buffer-size`, for the start-up line.
    pub pool_bytes: usize,
}

/// `--ring-buffers`'s default: buffers in the provided buffer ring.
pub const DEFAULT_RING_BUFFERS: u16 = 1024;
/// `--buffer-size`'s default: bytes per buffer, so 4 MiB of buffers at the defaults.
pub const DEFAULT_BUFFER_SIZE: u32 = 4096;

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
/// in the low 32. An fd never names two connections at once: a connection's socket is
/// closed only after the last completion of its operations.
const ACCEPT: u64 = 1;
const RECV: u64 = 2;
const SEND: u64 = 3;
const CANCEL: u64 = 4;

fn token(op: u64, fd: RawFd) -> u64 {
    (op << 32) | fd as u32 as u64
}

/// One connection. Kept small on purpose: this struct, times 10 000, is most of what an
/// idle connection costs us.
struct Conn {
    stream: TcpStream,
    /// Where the conversation is, with the bytes (if any) that this stage needs to keep.
    state: State,
    /// Output on its way to the kernel, or waiting behind what is.
    /// `None` for an idle connection: 8 bytes here, no allocation.
    unsent: Option<Box<Unsent>>,
    /// A multishot receive is in the kernel for this connection.
    reading: bool,
    /// We asked the kernel to cancel that receive (to stop reading for a while).
    cancelling: bool,
}

/// A connection's output. Two buffers because of ownership: `sending` is the kernel's while
/// a send request points at it (not to be moved, changed or freed until its completion);
/// replies made meanwhile wait in `queued`.
#[derive(Default)]
struct Unsent {
    /// The bytes of the send in flight, or of the next one.
    sending: Vec<u8>,
    /// Replies waiting for the send in flight to finish.
    queued: Vec<u8>,
    /// A send request for `sending` is in the kernel.
    in_flight: bool,
    /// That send waits for room in the socket: the kernel would not take it all at once.
    waiting: bool,
}

impl Unsent {
    /// The bytes this output holds, as allocated; not counting a send the kernel is trying
    /// at once (its completion comes with the next batch: like step06's write, it is not
    /// held unless the kernel would not take it).
    fn capacity(&self) -> usize {
        let trying = self.in_flight && !self.waiting;
        let sending = if trying { 0 } else { self.sending.capacity() };
        sending + self.queued.capacity()
    }
}

/// The life of a connection: upgrade, frames, close.
#[expect(
    clippy::box_collection,
    reason = "a Box<Vec> is 8 bytes, a Vec 24: the extra allocation is only for a head in pieces"
)]
enum State {
    /// Waiting for the HTTP request head.
    Handshaking {
        /// The head so far, if it came in pieces. `None` in the common case: a head that
        /// arrives whole is parsed straight from the ring buffer the kernel filled.
        head: Option<Box<Vec<u8>>>,
        /// When we give up on a client that is too slow to finish it (slowloris).
        deadline: Deadline,
    },
    /// Upgraded: frames, decoded by step06's `frame` module.
    Open {
        /// `None` unless a frame or message is unfinished.
        partial: Option<Box<Partial>>,
        /// While the connection holds bytes (`partial`, or unsent output): when what it
        /// holds must be finished, or the connection closed (see `budget.rs`).
        deadline: Option<Deadline>,
    },
    /// We sent (or are sending) our last bytes: a close frame or an HTTP error.
    Closing {
        /// When we stop waiting for the client to hang up.
        deadline: Deadline,
    },
}

/// What the loop must do with a connection after handling its event.
enum Next {
    /// Nothing changes.
    Continue,
    /// Output is pending: a send waits for room, and we stop reading meanwhile (cancel the
    /// receive) so the unsent bytes stay bounded by what one batch can produce.
    WaitWritable,
    /// All output is out: read again (a new multishot receive, if the last one ended).
    WaitReadable,
    /// Done: close the connection.
    Close,
}

/// The open connections, and what they hold in all: the table `close` takes one out of.
#[derive(Default)]
struct Connections {
    /// The connections, by fd. The fd is the connection's token and its index here: the
    /// kernel hands out the lowest free fd, so the fds of live connections are dense and
    /// this Vec has few holes.
    slots: Vec<Option<Conn>>,
    /// How many are open: the count in the memory line.
    open: usize,
    /// The bytes they all hold right now (see [`held`]), kept under `config.max_buffered`.
    held: usize,
}

impl Connections {
    /// The connection on `fd`, if one is open.
    fn get_mut(&mut self, fd: RawFd) -> Option<&mut Conn> {
        self.slots.get_mut(fd as usize).and_then(Option::as_mut)
    }

    /// Put a new connection in its fd's slot.
    fn insert(&mut self, fd: RawFd, conn: Conn) -> &mut Conn {
        let index = fd as usize;
        if self.slots.len() <= index {
            self.slots.resize_with(index + 1, || None);
        }
        self.open += 1;
        self.slots[index].insert(conn)
    }

    /// Take the connection on `fd` out of the table, and what it holds out of the count.
    fn remove(&mut self, fd: RawFd) -> Conn {
        let conn = self.slots[fd as usize]
            .take()
            .expect("bug: closing a connection that is not open");
        self.open -= 1;
        self.held -= held(&conn);
        conn
    }
}

/// What every handler may need besides its connection.
struct Shared {
    /// The rings, and the buffer ring every connection reads into.
    ring: IoUring,
    bufs: BufRing,
    /// Connections closed while the kernel still held some of their operations, by fd:
    /// their sockets stay open (and their sends' bytes allocated) until the last completion.
    closing: HashMap<RawFd, Conn>,
    /// One output buffer for every connection: replies are put together here, then copied
    /// into the connection's output, whose bytes the kernel owns while it sends them.
    out: Vec<u8>,
    /// Connections that must do something within `--handshake-timeout`: finish their
    /// request head, or hang up after our close.
    handshake_timers: Timers,
    /// Open connections that hold bytes: the deadline by which they must finish something
    /// (`--stall-timeout`).
    stall_timers: Timers,
    /// The step's settings: the message size, the budget, the timeouts.
    config: Config,
}

/// How long to stop accepting when the process is out of file descriptors.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);

/// Serve WebSocket echo on `listener` until an unrecoverable error.
pub fn serve(
    listener: TcpListener,
    mut meter: MemoryMeter,
    uring: Uring,
    config: Config,
) -> io::Result<()> {
    let mut connections = Connections::default();
    let handshake_timers = Timers::new(config.handshake_timeout);
    let mut shared = Shared {
        ring: uring.ring,
        bufs: uring.bufs,
        closing: HashMap::new(),
        out: Vec::new(),
        stall_timers: handshake_timers.with_timeout(config.stall_timeout),
        handshake_timers,
        config,
    };
    // A multishot accept is in the kernel: one request, a completion per new connection.
    let mut accepting = false;
    // Set while we are out of file descriptors and not accepting.
    let mut accept_paused_until: Option<Instant> = None;
    // Out of fds, accept fails ten times a second: say so once a second, with a count.
    let mut accept_log = RateLimitedLog::per_second();

    loop {
        meter.tick(connections.open);

        if !accepting && accept_paused_until.is_none_or(|until| Instant::now() >= until) {
            accept_paused_until = None;
            accept(&listener, &mut shared.ring)?;
            accepting = true;
        }
        // Close what is overdue: slow heads, stalled bytes, clients that never hang up.
        expire(&mut shared, &mut connections);

        // The timer: we sleep until a completion comes or the timeout passes, so the
        // timeout is at most the time left until the earliest deadline.
        let timeout = match accept_paused_until {
            Some(until) => until.saturating_duration_since(Instant::now()),
            None => meter.period(),
        };
        let timeout = timeout.min(time_left(&shared));

        // One system call: submit every request queued since the last one, and wait until
        // at least one completion is there, or the timeout passes.
        match ring::submit_and_wait(&shared.ring, timeout) {
            Ok(()) => {}
            // A signal arrived while we slept: not an error, just wait again.
            Err(err) if interrupted(&err) => continue,
            Err(err) => return Err(err),
        }

        // Every completion that came in, in the order the kernel posted them: each is a
        // load from memory shared with the kernel, no system call.
        while let Some(cqe) = ring::next_completion(&mut shared.ring) {
            let (op, fd) = (cqe.user_data() >> 32, cqe.user_data() as u32 as RawFd);

            if op == ACCEPT {
                // An error ends a multishot accept; the loop makes a new one.
                accepting &= cqueue::more(cqe.flags());
                match accepted(&cqe, &mut connections, &mut shared) {
                    Ok(()) => {}
                    Err(err) if out_of_resources(&err) => {
                        // The clients wait in the kernel's queue. Stop accepting for a
                        // moment, or the accept would fail again at once, and again.
                        accept_log.log(|| {
                            format!("step09-io-uring: accept: {err}; pausing accepts for {ACCEPT_BACKOFF:?}")
                        });
                        accept_paused_until = Some(Instant::now() + ACCEPT_BACKOFF);
                        if accepting {
                            cancel(&mut shared.ring, ACCEPT, fd)?;
                        }
                    }
                    Err(err) => return Err(err),
                }
                continue;
            }
            // The operations it cancelled report for themselves.
            if op == CANCEL {
                continue;
            }

            let Some(Some(conn)) = connections.slots.get_mut(fd as usize) else {
                // Back from the kernel for a connection we closed already.
                returned_after_close(&mut shared, fd, op, &cqe);
                continue;
            };
            let before = held(conn);
            let result = handle_completion(conn, fd, op, &cqe, &mut shared);
            // What it holds now counts in the total, and against the budgets.
            connections.held = connections.held + held(conn) - before;
            let result = result.and_then(|next| {
                hold_to_budget(conn, before, next, &mut connections.held, &mut shared)
            });
            let result = match result {
                Ok(Next::Continue) => Ok(()),
                // Reading is a request too: cancelled to stop reading, made again to read.
                Ok(Next::WaitWritable) => stop_reading(conn, fd, &mut shared.ring),
                Ok(Next::WaitReadable) => read(conn, fd, &mut shared.ring),
                Ok(Next::Close) => {
                    close(&mut shared, &mut connections, fd);
                    continue;
                }
                Err(err) => Err(err),
            };
            if let Err(err) = result {
                if !is_disconnect(&err) {
                    common::log!("step09-io-uring: connection fd {fd}: {err}; closing it");
                }
                close(&mut shared, &mut connections, fd);
            }
        }
    }
}

/// Ask the kernel to accept connections on `listener`: one multishot accept, a completion
/// per new connection, for as long as it lasts.
fn accept(listener: &TcpListener, ring: &mut IoUring) -> io::Result<()> {
    let fd = listener.as_raw_fd();
    let accept = opcode::AcceptMulti::new(Fd(fd))
        .flags(libc::SOCK_CLOEXEC)
        .build()
        .user_data(token(ACCEPT, fd));
    // SAFETY: an accept points at no buffer of ours.
    unsafe { ring::push(ring, &accept) }
}

/// A connection the multishot accept took from the listener's queue.
fn accepted(
    cqe: &cqueue::Entry,
    connections: &mut Connections,
    shared: &mut Shared,
) -> io::Result<()> {
    let stream = match cqe_result(cqe) {
        // SAFETY: the kernel just opened this fd for us; nothing else owns it.
        Ok(fd) => unsafe { TcpStream::from_raw_fd(fd as RawFd) },
        // That one client is gone (it gave up while queued, or the network failed
        // under it), or we cancelled the accept: skip it.
        Err(err) if client_gone(&err) || err.raw_os_error() == Some(libc::ECANCELED) => {
            return Ok(());
        }
        Err(err) => return Err(err),
    };
    let fd = stream.as_raw_fd();

    // The clock starts now: the whole request head must be in within the timeout.
    let deadline = shared.handshake_timers.set(fd);
    let conn = connections.insert(
        fd,
        Conn {
            stream,
            state: State::Handshaking {
                head: None,
                deadline,
            },
            unsent: None,
            reading: false,
            cancelling: false,
        },
    );
    // Asking the kernel to read can fail on its own (the submission queue full, and the
    // kernel refusing more for now): like a failed registration in step06, that closes
    // this connection only. No operation of its is in the kernel yet.
    if let Err(err) = read(conn, fd, &mut shared.ring) {
        common::log!("step09-io-uring: cannot set up connection fd {fd}: {err}; closing it");
        close(shared, connections, fd);
    }
    Ok(())
}

/// One of `conn`'s operations completed: a receive or a send. The completion says which,
/// as step06's watched direction says which event it is.
fn handle_completion(
    conn: &mut Conn,
    fd: RawFd,
    op: u64,
    cqe: &cqueue::Entry,
    shared: &mut Shared,
) -> io::Result<Next> {
    returned(conn, op, cqe);
    let result = if op == RECV {
        handle_readable(conn, fd, cqe, shared)
    } else {
        handle_writable(conn, fd, cqe, &mut shared.ring)
    };
    // The receive's buffer was ours while we decoded its bytes: give it back.
    shared.bufs.give_back(cqe);
    result
}

/// An operation of a connection we closed, back from the kernel: once they all are, its
/// socket can close.
fn returned_after_close(shared: &mut Shared, fd: RawFd, op: u64, cqe: &cqueue::Entry) {
    let conn = shared
        .closing
        .get_mut(&fd)
        .expect("bug: a completion for no connection");
    returned(conn, op, cqe);
    if !in_kernel(conn) {
        shared.closing.remove(&fd);
    }
    shared.bufs.give_back(cqe);
}

/// Ask the kernel to read `conn`, unless it does already or output waits.
fn read(conn: &mut Conn, fd: RawFd, ring: &mut IoUring) -> io::Result<()> {
    if conn.reading || conn.unsent.as_ref().is_some_and(|unsent| unsent.waiting) {
        return Ok(());
    }
    // Multishot: a completion each time bytes arrive, until one without `MORE` ends it. It
    // names a buffer group, not a buffer: the kernel takes one of the ring's buffers only
    // when bytes come.
    let recv = opcode::RecvMulti::new(Fd(fd), BUFFER_GROUP)
        .build()
        .user_data(token(RECV, fd));
    // SAFETY: the receive points at no buffer of ours but the ring's, which live as long
    // as the process.
    unsafe { ring::push(ring, &recv)? };
    conn.reading = true;
    Ok(())
}

/// Ask the kernel to stop reading `conn` for now: cancel its multishot receive.
fn stop_reading(conn: &mut Conn, fd: RawFd, ring: &mut IoUring) -> io::Result<()> {
    if conn.reading && !conn.cancelling {
        cancel(ring, RECV, fd)?;
        conn.cancelling = true;
    }
    Ok(())
}

/// The kernel gave back one of `conn`'s operations: a send, or the multishot receive, when
/// its completion has no `MORE` flag.
fn returned(conn: &mut Conn, op: u64, cqe: &cqueue::Entry) {
    if op == SEND {
        let unsent = conn.unsent.as_mut();
        unsent
            .expect("bug: a send completed for a connection with no output")
            .in_flight = false;
    } else if !cqueue::more(cqe.flags()) {
        conn.reading = false;
        conn.cancelling = false;
    }
}

/// Ask the kernel to cancel operation `op` on `fd` (an `ACCEPT`, `RECV` or `SEND`). It
/// reports for itself, with `ECANCELED` (or its result, if it was done already).
///
/// The one operation, named by its `user_data`: the kernel looks it up in a hash table of
/// the ring's pending requests, keyed by `user_data`. Cancelling "everything on this fd"
/// instead makes the kernel walk the whole table, one multishot receive per connection:
/// 10 000 connections timing out together cost 10 000 walks of 10 000, seconds of a
/// frozen loop.
fn cancel(ring: &mut IoUring, op: u64, fd: RawFd) -> io::Result<()> {
    let cancel = opcode::AsyncCancel2::new(CancelBuilder::user_data(token(op, fd)))
        .build()
        .user_data(token(CANCEL, fd));
    // SAFETY: a cancel points at no buffer.
    unsafe { ring::push(ring, &cancel) }
}

/// Whether the kernel still holds one of `conn`'s operations.
fn in_kernel(conn: &Conn) -> bool {
    conn.reading || conn.unsent.as_ref().is_some_and(|unsent| unsent.in_flight)
}

/// The kernel read what the peer sent, into one of the ring's buffers: answer it, the
/// handshake, then frames.
///
/// Completions, not readiness: the bytes are there already, no read to make.
fn handle_readable(
    conn: &mut Conn,
    fd: RawFd,
    cqe: &cqueue::Entry,
    shared: &mut Shared,
) -> io::Result<Next> {
    let n = match cqe_result(cqe) {
        Ok(0) => return Ok(Next::Close),
        Ok(n) => n,
        // The ring ran dry (ENOBUFS): the bytes are still in the socket, and buffers come
        // back as the completions that hold them are handled. Read again: nothing is lost.
        // Or we cancelled the receive, to stop reading for a while.
        Err(err) if matches!(err.raw_os_error(), Some(libc::ENOBUFS | libc::ECANCELED)) => {
            return Ok(Next::WaitReadable);
        }
        Err(err) => return Err(err),
    };
    let input = shared.bufs.received(cqe, n);
    let out = &mut shared.out;
    out.clear();

    let flow = match &mut conn.state {
        State::Handshaking { .. } => read_head(conn, input, out, &shared.config),
        State::Open { partial, deadline } => {
            let decoded = frame::decode(partial, input, shared.config.max_message, out);
            // What it held is finished: so is its stall clock (`hold_to_budget` starts a
            // new one for what this read left unfinished, if anything).
            if decoded.finished {
                *deadline = None;
            }
            decoded.flow
        }
        // We said our last word and sent our FIN; what the client still sends is dropped
        // until it hangs up too (a receive of 0 bytes above).
        State::Closing { .. } => return Ok(Next::WaitReadable),
    };
    if flow == Flow::Close {
        let deadline = shared.handshake_timers.set(fd);
        conn.state = State::Closing { deadline };
    }

    match send(conn, fd, &shared.out, &mut shared.ring)? {
        // A multishot receive that ended (without `MORE`) is made again.
        Next::Continue => Ok(Next::WaitReadable),
        next => Ok(next),
    }
}

/// Hand `out` to the kernel, behind what is on its way already.
fn send(conn: &mut Conn, fd: RawFd, out: &[u8], ring: &mut IoUring) -> io::Result<Next> {
    if !out.is_empty() {
        let unsent = conn.unsent.get_or_insert_default();
        unsent.queued.extend_from_slice(out);
    }
    let Some(unsent) = conn.unsent.as_mut() else {
        return match all_sent(conn) {
            // We are reading already.
            Next::WaitReadable => Ok(Next::Continue),
            next => Ok(next),
        };
    };
    if !unsent.in_flight {
        write_some(unsent, fd, ring)?;
    }
    Ok(if unsent.waiting {
        Next::WaitWritable
    } else {
        Next::Continue
    })
}

/// The request head, or more of it, arrived: answer it once it is whole.
fn read_head(conn: &mut Conn, input: &[u8], out: &mut Vec<u8>, config: &Config) -> Flow {
    let State::Handshaking { head: kept, .. } = &mut conn.state else {
        unreachable!("bug: read_head is called only while handshaking");
    };
    // Most heads arrive whole, in one read: they are parsed straight from the ring's read
    // buffer. Only a head that comes in pieces is copied into the connection.
    let mut head = kept.take();
    let bytes: &[u8] = match &mut head {
        Some(head) => {
            head.extend_from_slice(input);
            head
        }
        None => input,
    };
    match handshake::parse_request(bytes, &config.allowed_origins) {
        Ok(None) => {
            // Not complete yet: keep what we have. (parse_request refuses heads over
            // 8 KiB, so this stays bounded.)
            *kept = Some(head.unwrap_or_else(|| Box::new(input.to_vec())));
            Flow::Open
        }
        Err(reject) => {
            out.extend_from_slice(reject.response().as_bytes());
            Flow::Close
        }
        Ok(Some(Request::Page)) => {
            out.extend_from_slice(page::response().as_bytes());
            Flow::Close
        }
        Ok(Some(Request::Upgrade(upgrade))) => {
            out.extend_from_slice(handshake::switching_protocols(&upgrade.accept).as_bytes());
            // Bytes behind the head are the first frames, sent in the same segment: keep
            // them. (Dropping them would lose the client's first message.)
            let early = &bytes[upgrade.head_len..];
            let mut partial = None;
            let decoded = frame::decode(&mut partial, early, config.max_message, out);
            // A deadline only while bytes are held: `hold_to_budget` sets it, now if these
            // bytes left a frame unfinished.
            conn.state = State::Open {
                partial,
                deadline: None,
            };
            decoded.flow
        }
    }
}

/// A send completed: all of it or part of it. Send what is left of our output.
fn handle_writable(
    conn: &mut Conn,
    fd: RawFd,
    cqe: &cqueue::Entry,
    ring: &mut IoUring,
) -> io::Result<Next> {
    let unsent = conn
        .unsent
        .as_mut()
        .expect("bug: handle_writable without unsent output");
    // The kernel is done with these bytes: they are ours again.
    let written = match cqe_result(cqe) {
        Ok(n) => n,
        // A try found the kernel's send buffer full: nothing went.
        Err(err) if would_block(&err) => 0,
        Err(err) => return Err(err),
    };
    unsent.sending.drain(..written);
    if !unsent.sending.is_empty() || !unsent.queued.is_empty() {
        write_some(unsent, fd, ring)?;
        return Ok(if unsent.waiting {
            Next::WaitWritable
        } else {
            Next::WaitReadable
        });
    }
    // Give the buffer back: an idle connection holds no bytes.
    conn.unsent = None;
    Ok(all_sent(conn))
}

/// All our output is out. What comes next depends on where the conversation is.
fn all_sent(conn: &mut Conn) -> Next {
    match conn.state {
        State::Closing { .. } => {
            // Our close frame (or HTTP error) is out. Send our FIN, then wait for the
            // client's. Closing the socket now, with bytes from the client still unread,
            // would send a reset that can destroy our last bytes before the client reads them.
            match conn.stream.shutdown(Shutdown::Write) {
                Ok(()) => Next::WaitReadable,
                // The client is gone already.
                Err(_) => Next::Close,
            }
        }
        State::Handshaking { .. } | State::Open { .. } => Next::WaitReadable,
    }
}

/// Ask the kernel to send what is next. New output is a try (`MSG_DONTWAIT`): its
/// completion says at once how much the kernel took, as step06's write does. What a try
/// left is sent again by a send that waits for room in the socket.
fn write_some(unsent: &mut Unsent, fd: RawFd, ring: &mut IoUring) -> io::Result<()> {
    unsent.waiting = !unsent.sending.is_empty();
    if !unsent.waiting {
        std::mem::swap(&mut unsent.sending, &mut unsent.queued);
    }
    let dontwait = if unsent.waiting {
        0
    } else {
        libc::MSG_DONTWAIT
    };
    let (bytes, len) = (unsent.sending.as_ptr(), unsent.sending.len() as u32);
    let send = opcode::Send::new(Fd(fd), bytes, len)
        .flags(libc::MSG_NOSIGNAL | dontwait)
        .build()
        .user_data(token(SEND, fd));
    // SAFETY: from now until this send's completion the bytes are the kernel's. `sending`
    // is in a box that the connection drops only after the completion (see `close`);
    // nothing writes to it meanwhile (replies go to `queued`); and moving the box does not
    // move its heap bytes.
    unsafe { ring::push(ring, &send)? };
    unsent.in_flight = true;
    Ok(())
}

/// Close a connection, once the kernel has given back every operation on it.
fn close(shared: &mut Shared, connections: &mut Connections, fd: RawFd) {
    let mut conn = connections.remove(fd);
    if in_kernel(&conn) {
        // Ask for them back, each by its own `user_data` (see `cancel`), and keep the socket
        // open until they are: its fd must not name a new connection yet.
        if let Err(err) = cancel_pending(&mut conn, fd, &mut shared.ring) {
            common::log!("step09-io-uring: cancel fd {fd}: {err}; closing it once done");
        }
        shared.closing.insert(fd, conn);
        return;
    }
    // Dropping the TcpStream closes the fd, and gives back the bytes the connection held.
    drop(conn);
}

/// Ask the kernel to give back every operation it holds of a connection we close: the
/// multishot receive, and a send that waits for room (a client that never reads would keep
/// it for ever). A send tried at once (`MSG_DONTWAIT`) needs no cancel: the kernel is done
/// with it as soon as it is submitted, and its completion is on its way.
fn cancel_pending(conn: &mut Conn, fd: RawFd, ring: &mut IoUring) -> io::Result<()> {
    stop_reading(conn, fd, ring)?;
    if conn
        .unsent
        .as_ref()
        .is_some_and(|unsent| unsent.in_flight && unsent.waiting)
    {
        cancel(ring, SEND, fd)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What an idle connection costs in the table, in bytes. If this grows, the memory
    /// line grows with it, 10 000 times.
    #[test]
    fn an_idle_connection_is_a_few_dozen_bytes() {
        let size = size_of::<Option<Conn>>();
        assert!(size <= 32, "Option<Conn> is {size} bytes");
    }
}
