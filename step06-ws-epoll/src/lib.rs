//! `cargo run --release -p step06-ws-epoll`
//!
//! WebSocket echo on step05's epoll loop. The loop is the same; what changes is what a
//! connection says (an HTTP upgrade, then frames) and, above all, where its bytes live.
//!
//! The loop owns one read buffer and one output buffer for everybody. A connection gets
//! bytes of its own only while it is in the middle of something: a request head or a frame
//! cut in two by TCP, a message sent in fragments, output the kernel would not take yet.
//! An idle connection is one small `Conn` in a table.
//!
//! Layout: this file is the loop and the connection's life (handshaking → open → closing).
//! The rest is in modules that do no I/O, each tested without a socket:
//!
//! - `handshake.rs`: the HTTP upgrade: parse the request head, answer `101` or refuse.
//! - `frame.rs`: the frame decoder and the lazy per-connection state ([`frame::Partial`]).
//! - `timer.rs`: the deadlines that close clients too slow to finish a handshake, what they
//!   hold, or a close.
//! - `epoll.rs`: the epoll wrapper, the same file as step05's.
//! - `options.rs`: this step's settings ([`Config`]) and their command-line options (step08
//!   and step09 take the same).
//! - `page.rs`: the page a browser gets for a plain `GET /`, to try the server from a tab.
//!
//! And `budget.rs`, the budgets and the loop's accounting: after each event,
//! how many bytes all connections may hold; before each wait, whose deadline has passed
//! (`expire`). It closes the connection that goes past either.

mod budget;
mod epoll;
pub mod frame;
pub mod handshake;
mod options;
pub mod page;
pub mod timer;

pub use options::{Config, WsOptions};

use std::io::{self, Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::os::fd::{AsFd, AsRawFd, RawFd};
use std::time::{Duration, Instant};

use common::sys::{client_gone, interrupted, is_disconnect, out_of_resources, would_block};
use common::{MemoryMeter, RateLimitedLog};

use budget::{expire, held, hold_to_budget, time_left};
use epoll::{Epoll, READABLE, WRITABLE};
use frame::{Flow, Partial};
use handshake::Request;
use timer::{Deadline, Timers};

/// One connection. Kept small on purpose: this struct, times 10 000, is most of what an
/// idle connection costs us.
#[expect(
    clippy::box_collection,
    reason = "Option<Box<Vec>> is 8 bytes when idle, a Vec 24: the extra allocation happens only while bytes are pending"
)]
struct Conn {
    stream: TcpStream,
    /// Where the conversation is, with the bytes (if any) that this stage needs to keep.
    state: State,
    /// Output the kernel would not take yet (the peer reads slower than it writes).
    /// `None` for an idle connection: 8 bytes here instead of an empty `Vec`'s 24.
    unsent: Option<Box<Vec<u8>>>,
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
        /// arrives whole is parsed straight from the shared read buffer.
        head: Option<Box<Vec<u8>>>,
        /// When we give up on a client that is too slow to finish it (slowloris).
        deadline: Deadline,
    },
    /// Upgraded: frames, decoded by `frame.rs`.
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
    /// Output is pending: watch for writability only, and stop reading meanwhile so the
    /// unsent bytes stay bounded by what one read can produce.
    WaitWritable,
    /// All output is out: watch for readability again.
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
    /// One read buffer for every connection.
    buf: Vec<u8>,
    /// One output buffer for every connection: replies are put together here, and only
    /// what the kernel does not take at once is copied into the connection.
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

/// The read budget: one read of at most this many bytes per connection per wake-up. A
/// connection with more to read is reported again on the next round (level-triggered),
/// after every other ready connection has had its turn: one busy client starves nobody.
const READ_BUDGET: usize = 64 * 1024;

/// How long to stop accepting when the process is out of file descriptors.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);

/// Serve WebSocket echo on `listener` until an unrecoverable error.
pub fn serve(listener: TcpListener, mut meter: MemoryMeter, config: Config) -> io::Result<()> {
    listener.set_nonblocking(true)?;
    let epoll = Epoll::new()?;
    epoll.register(listener.as_fd(), READABLE)?;

    let mut connections = Connections::default();
    let handshake_timers = Timers::new(config.handshake_timeout);
    let mut shared = Shared {
        buf: vec![0u8; READ_BUDGET],
        out: Vec::new(),
        stall_timers: handshake_timers.with_timeout(config.stall_timeout),
        handshake_timers,
        config,
    };
    let mut events = Vec::with_capacity(1024);
    // Set while we are out of file descriptors and not accepting.
    let mut accept_paused_until: Option<Instant> = None;
    // Out of fds, accept fails ten times a second: say so once a second, with a count.
    let mut accept_log = RateLimitedLog::per_second();

    loop {
        meter.tick(connections.open);

        if accept_paused_until.is_some_and(|until| Instant::now() >= until) {
            accept_paused_until = None;
            epoll.register(listener.as_fd(), READABLE)?;
        }
        // Close what is overdue: slow heads, stalled bytes, clients that never hang up.
        expire(&mut shared, &epoll, &mut connections);

        // The timer: epoll_wait sleeps until a socket is ready or the timeout passes, so
        // the timeout is at most the time left until the earliest deadline.
        let timeout = match accept_paused_until {
            Some(until) => until.saturating_duration_since(Instant::now()),
            None => meter.period(),
        };
        let timeout = timeout.min(time_left(&shared));

        match epoll.wait(&mut events, timeout) {
            Ok(_ready) => {}
            // A signal arrived while we slept: not an error, just wait again.
            Err(err) if interrupted(&err) => continue,
            Err(err) => return Err(err),
        }

        for event in &events {
            // `epoll_event` is packed on x86-64: copy its fields out, never take a
            // reference to them.
            let token = event.u64;
            let fd = token as RawFd;

            if fd == listener.as_raw_fd() {
                match accept_all(&listener, &epoll, &mut connections, &mut shared) {
                    Ok(()) => {}
                    Err(err) if out_of_resources(&err) => {
                        // The listener stays readable while connections wait in its queue,
                        // so a level-triggered loop would wake at once, fail again and spin.
                        // Stop watching it for a moment; the clients wait in the kernel.
                        accept_log.log(|| {
                            format!("step06-ws-epoll: accept: {err}; pausing accepts for {ACCEPT_BACKOFF:?}")
                        });
                        epoll.deregister(listener.as_fd())?;
                        accept_paused_until = Some(Instant::now() + ACCEPT_BACKOFF);
                    }
                    Err(err) => return Err(err),
                }
                continue;
            }

            // An event for an fd we closed earlier in this batch: nothing to do. (If an
            // accept reused that fd, the event is spurious for the new connection, and
            // spurious wake-ups are harmless: a non-blocking read says WouldBlock.)
            let Some(Some(conn)) = connections.slots.get_mut(fd as usize) else {
                continue;
            };
            // We watch one direction at a time, so the connection's state says which
            // event this is. Errors and hang-ups are reported either way and surface as
            // a failed read or write.
            let before = held(conn);
            let result = if conn.unsent.is_none() {
                handle_readable(conn, fd, &mut shared)
            } else {
                handle_writable(conn)
            };
            // What it holds now counts in the total, and against the budgets.
            connections.held = connections.held + held(conn) - before;
            let result = result.and_then(|next| {
                hold_to_budget(conn, before, next, &mut connections.held, &mut shared)
            });
            let result = match result {
                Ok(Next::Continue) => Ok(()),
                // Watching the other direction is a syscall that can fail on its own
                // (ENOMEM): like a failed read or write, that closes this connection only.
                Ok(Next::WaitWritable) => epoll.modify(conn.stream.as_fd(), WRITABLE),
                Ok(Next::WaitReadable) => epoll.modify(conn.stream.as_fd(), READABLE),
                Ok(Next::Close) => {
                    close(&epoll, &mut connections, fd);
                    continue;
                }
                Err(err) => Err(err),
            };
            if let Err(err) = result {
                if !is_disconnect(&err) {
                    common::log!("step06-ws-epoll: connection fd {fd}: {err}; closing it");
                }
                close(&epoll, &mut connections, fd);
            }
        }
    }
}

/// Accept every connection waiting in the listener's queue.
fn accept_all(
    listener: &TcpListener,
    epoll: &Epoll,
    connections: &mut Connections,
    shared: &mut Shared,
) -> io::Result<()> {
    loop {
        let stream = match listener.accept() {
            Ok((stream, _peer)) => stream,
            Err(err) if would_block(&err) => return Ok(()),
            Err(err) if interrupted(&err) => continue,
            // That one client is gone (it gave up while queued, or the network failed
            // under it): skip it.
            Err(err) if client_gone(&err) => continue,
            Err(err) => return Err(err),
        };
        let fd = stream.as_raw_fd();
        // Setting up one connection can fail on its own (epoll_ctl says ENOSPC past
        // fs.epoll.max_user_watches): close that one, keep serving the others.
        if let Err(err) = stream
            .set_nonblocking(true)
            .and_then(|()| epoll.register(stream.as_fd(), READABLE))
        {
            common::log!("step06-ws-epoll: cannot set up connection fd {fd}: {err}; closing it");
            continue;
        }

        // The clock starts now: the whole request head must be in within the timeout.
        let deadline = shared.handshake_timers.set(fd);
        connections.insert(
            fd,
            Conn {
                stream,
                state: State::Handshaking {
                    head: None,
                    deadline,
                },
                unsent: None,
            },
        );
    }
}

/// Read what the peer sent and answer it: the handshake, then frames.
///
/// Level-triggered: epoll reports this socket again on the next wait while unread bytes
/// remain, so one read per wake-up is enough, and fair to the other connections.
fn handle_readable(conn: &mut Conn, fd: RawFd, shared: &mut Shared) -> io::Result<Next> {
    let n = match conn.stream.read(&mut shared.buf) {
        Ok(0) => return Ok(Next::Close),
        Ok(n) => n,
        // Spurious wake-ups are normal: nothing to read after all.
        Err(err) if would_block(&err) || interrupted(&err) => return Ok(Next::Continue),
        Err(err) => return Err(err),
    };
    let input = &shared.buf[..n];
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
        // until it hangs up too (read returns 0 above).
        State::Closing { .. } => return Ok(Next::Continue),
    };
    if flow == Flow::Close {
        let deadline = shared.handshake_timers.set(fd);
        conn.state = State::Closing { deadline };
    }

    send(conn, &shared.out)
}

/// Write `out` as far as the kernel takes it now, from a connection we are reading.
fn send(conn: &mut Conn, out: &[u8]) -> io::Result<Next> {
    let written = write_some(&mut conn.stream, out)?;
    if written < out.len() {
        // The kernel's send buffer is full: keep the rest and wait until it drains.
        conn.unsent = Some(Box::new(out[written..].to_vec()));
        return Ok(Next::WaitWritable);
    }
    match all_sent(conn) {
        // We are watching readability already.
        Next::WaitReadable => Ok(Next::Continue),
        next => Ok(next),
    }
}

/// The request head, or more of it, arrived: answer it once it is whole.
fn read_head(conn: &mut Conn, input: &[u8], out: &mut Vec<u8>, config: &Config) -> Flow {
    let State::Handshaking { head: kept, .. } = &mut conn.state else {
        unreachable!("bug: read_head is called only while handshaking");
    };
    // Most heads arrive whole, in one read: they are parsed straight from the shared read
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

/// Send what is left of our output.
fn handle_writable(conn: &mut Conn) -> io::Result<Next> {
    let unsent = conn
        .unsent
        .as_mut()
        .expect("bug: handle_writable without unsent output");
    let written = write_some(&mut conn.stream, unsent)?;
    unsent.drain(..written);
    if !unsent.is_empty() {
        return Ok(Next::Continue);
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

/// Write as much of `bytes` as the kernel takes now, without blocking.
fn write_some(stream: &mut TcpStream, bytes: &[u8]) -> io::Result<usize> {
    let mut written = 0;
    while written < bytes.len() {
        match stream.write(&bytes[written..]) {
            Ok(n) => written += n,
            Err(err) if would_block(&err) => break,
            Err(err) if interrupted(&err) => continue,
            Err(err) => return Err(err),
        }
    }
    Ok(written)
}

/// Remove a connection from the interest list and close it. The DEL is optional: closing
/// the socket's last fd removes it from the list anyway (see `Epoll::register`). It is
/// here so the list's whole life reads in this file: ADD on accept, MOD when the direction
/// changes, DEL on close.
fn close(epoll: &Epoll, connections: &mut Connections, fd: RawFd) {
    let conn = connections.remove(fd);
    if let Err(err) = epoll.deregister(conn.stream.as_fd()) {
        // Closing the socket's last fd takes it out of the interest list anyway.
        common::log!("step06-ws-epoll: epoll_ctl(DEL) fd {fd}: {err}; closing it anyway");
    }
    // Dropping the TcpStream closes the fd, and gives back the bytes the connection held.
    drop(conn);
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
