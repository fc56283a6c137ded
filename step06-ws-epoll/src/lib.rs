//! `cargo run --release -p step06-ws-epoll`
//!
//! WebSocket echo on step05's epoll loop. The loop is the same; what changes is what a
//! connection says (an HTTP upgrade, then frames) and, above all, where its bytes live.
//!
//! With `--buffers shared` (the default) the loop owns one read buffer and one output
//! buffer for everybody. A connection gets bytes of its own only while it is in the middle
//! of something: a request head or a frame cut in two by TCP, a message sent in fragments,
//! output the kernel would not take yet. An idle connection is one small `Conn` in a table.
//!
//! With `--buffers per-conn` each connection gets a tungstenite `WebSocket` after the
//! handshake, with its default config: its own read and write buffers, for as long as it
//! lives. That is what a first attempt looks like, and what the memory line shows it costs.
//!
//! - `handshake.rs`: the HTTP upgrade, as pure functions.
//! - `frame.rs`: the frame decoder and the lazy per-connection state, as pure functions.
//! - `epoll.rs`: the epoll wrapper, unchanged from step05.

mod epoll;
pub mod frame;
pub mod handshake;

use std::collections::VecDeque;
use std::io::{self, Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::os::fd::{AsRawFd, RawFd};
use std::time::{Duration, Instant};

use common::MemoryMeter;
use common::sys::{client_gone, interrupted, is_disconnect, out_of_resources, would_block};
use tungstenite::protocol::frame::CloseFrame;
use tungstenite::protocol::frame::coding::CloseCode;
use tungstenite::protocol::{Role, WebSocket, WebSocketConfig};

use epoll::{Epoll, READABLE, WRITABLE};
use frame::{Flow, Partial};

/// Where a connection's bytes live: `--buffers`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Buffers {
    /// One read buffer for the loop; a connection holds bytes only while something is
    /// unfinished (a frame, a fragmented message, pending output).
    Shared,
    /// A tungstenite `WebSocket` per connection, with its default config: buffers per
    /// connection for its whole life.
    PerConn,
}

impl Buffers {
    /// The name in the memory line: `step06-ws-epoll/shared`.
    pub fn label(self) -> &'static str {
        match self {
            Buffers::Shared => "shared",
            Buffers::PerConn => "per-conn",
        }
    }
}

/// The step's own settings (the common ones are in `common::Options`).
#[derive(Debug, Clone, Copy)]
pub struct Config {
    /// Where a connection's bytes live.
    pub buffers: Buffers,
    /// The largest message (all its fragments together) we accept; bigger → close 1009.
    pub max_message: usize,
    /// How long a client may take to send its whole request head, and, once we have sent our
    /// close, to read it and hang up. Past it, we close the connection.
    pub timeout: Duration,
}

/// One connection our own code speaks on. Kept small on purpose: this struct, times
/// 10 000, is most of what an idle connection costs us.
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
    reason = "a Box<Vec> is 8 bytes, a Vec 24: the extra allocation is only for a head in pieces or a hand-over"
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
    /// Upgraded: frames, decoded by `frame.rs`. `None` unless a frame or message is
    /// unfinished.
    Open { partial: Option<Box<Partial>> },
    /// `--buffers per-conn`: upgraded, and handed to tungstenite once the `101` is out.
    HandingOver {
        /// Bytes that came behind the request head: already frames, for tungstenite.
        early: Box<Vec<u8>>,
    },
    /// We sent (or are sending) our last bytes: a close frame or an HTTP error.
    Closing {
        /// When we stop waiting for the client to hang up.
        deadline: Deadline,
    },
}

/// An entry of the connection table.
enum Slot {
    /// Our own code speaks on the socket: the handshake, and with `shared` the frames.
    Ours(Conn),
    /// `--buffers per-conn` after the upgrade: tungstenite's `WebSocket` owns the socket
    /// and its buffers.
    Tungstenite(Box<WebSocket<TcpStream>>),
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
    /// `--buffers per-conn`: the upgrade is done, replace our `Conn` by tungstenite's.
    HandOver,
    /// Done: close the connection.
    Close,
}

/// What every handler may need besides its connection.
struct Shared {
    /// One read buffer for every connection.
    buf: Vec<u8>,
    /// One output buffer for every connection: replies are put together here, and only
    /// what the kernel does not take at once is copied into the connection.
    out: Vec<u8>,
    /// Connections that must do something by a deadline: finish their request head, or
    /// hang up after our close.
    timers: Timers,
    config: Config,
}

/// A deadline: whole seconds since the loop started. 4 bytes where an `Instant` takes 16,
/// and a handshake timeout needs no finer grain than a second. (A u32 lasts 136 years.)
type Deadline = u32;

/// The timer for handshakes and closes: one queue of `(deadline, fd)`.
///
/// Every deadline is "now + the same timeout", set in the order things happen, so the
/// queue is sorted by construction: its front is always the earliest deadline. No heap, no
/// timer wheel, O(1) to set one. Entries are never removed early: when a connection
/// finishes its head, its entry just goes stale and is skipped when it comes due.
struct Timers {
    /// When the loop started: deadlines count seconds from here.
    start: Instant,
    /// The timeout every deadline is set with.
    timeout: Duration,
    /// `(deadline, fd)`, earliest first.
    queue: VecDeque<(Deadline, RawFd)>,
}

impl Timers {
    fn new(timeout: Duration) -> Timers {
        Timers {
            start: Instant::now(),
            timeout,
            queue: VecDeque::new(),
        }
    }

    /// Set a deadline `timeout` from now for `fd`, rounded up to a whole second (so never
    /// sooner than the timeout).
    fn set(&mut self, fd: RawFd) -> Deadline {
        let due = self.start.elapsed() + self.timeout;
        let deadline = due.as_millis().div_ceil(1000) as Deadline;
        self.queue.push_back((deadline, fd));
        deadline
    }

    /// The current second: a deadline `d` has passed when `d <= now`.
    fn now(&self) -> Deadline {
        self.start.elapsed().as_secs() as Deadline
    }

    /// How long until the earliest deadline, if any: the most epoll_wait may sleep.
    fn time_left(&self) -> Option<Duration> {
        let &(deadline, _) = self.queue.front()?;
        let due = self.start + Duration::from_secs(deadline.into());
        Some(due.saturating_duration_since(Instant::now()))
    }

    /// The next fd whose deadline is `now` or earlier, taken off the queue.
    fn pop_due(&mut self, now: Deadline) -> Option<RawFd> {
        let &(deadline, fd) = self.queue.front()?;
        if deadline > now {
            return None;
        }
        self.queue.pop_front();
        // A burst of connections leaves a long queue behind; give its memory back once it
        // has drained, or it would stay in the resident set for good.
        if self.queue.len() < self.queue.capacity() / 4 {
            self.queue.shrink_to(self.queue.len() * 2);
        }
        Some(fd)
    }
}

/// How long to stop accepting when the process is out of file descriptors.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);

/// Serve WebSocket echo on `listener` until an unrecoverable error.
pub fn serve(listener: TcpListener, mut meter: MemoryMeter, config: Config) -> io::Result<()> {
    listener.set_nonblocking(true)?;
    let epoll = Epoll::new()?;
    epoll.register(listener.as_raw_fd(), READABLE)?;

    // The fd is the connection's token and its index here: the kernel hands out the lowest
    // free fd, so the fds of live connections are dense and this Vec has few holes.
    let mut connections: Vec<Option<Slot>> = Vec::new();
    let mut open = 0;
    let mut shared = Shared {
        buf: vec![0u8; 64 * 1024],
        out: Vec::new(),
        timers: Timers::new(config.timeout),
        config,
    };
    let mut events = Vec::with_capacity(1024);
    // Set while we are out of file descriptors and not accepting.
    let mut accept_paused_until: Option<Instant> = None;

    loop {
        meter.tick(open);

        if accept_paused_until.is_some_and(|until| Instant::now() >= until) {
            accept_paused_until = None;
            epoll.register(listener.as_raw_fd(), READABLE)?;
        }
        expire(&mut shared.timers, &epoll, &mut connections, &mut open)?;

        // The timer: epoll_wait sleeps until a socket is ready or the timeout passes, so
        // the timeout is at most the time left until the earliest deadline.
        let mut timeout = match accept_paused_until {
            Some(until) => until.saturating_duration_since(Instant::now()),
            None => meter.period(),
        };
        if let Some(left) = shared.timers.time_left() {
            timeout = timeout.min(left);
        }

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
                match accept_all(&listener, &epoll, &mut connections, &mut open, &mut shared) {
                    Ok(()) => {}
                    Err(err) if out_of_resources(&err) => {
                        // The listener stays readable while connections wait in its queue,
                        // so a level-triggered loop would wake at once, fail again and spin.
                        // Stop watching it for a moment; the clients wait in the kernel.
                        eprintln!(
                            "step06-ws-epoll: accept: {err}; pausing accepts for {ACCEPT_BACKOFF:?}"
                        );
                        epoll.deregister(listener.as_raw_fd())?;
                        accept_paused_until = Some(Instant::now() + ACCEPT_BACKOFF);
                    }
                    Err(err) => return Err(err),
                }
                continue;
            }

            // An event for an fd we closed earlier in this batch: nothing to do. (If an
            // accept reused that fd, the event is spurious for the new connection, and
            // spurious wake-ups are harmless: a non-blocking read says WouldBlock.)
            let Some(slot) = connections.get_mut(fd as usize).and_then(Option::as_mut) else {
                continue;
            };
            let mut result = match slot {
                // We watch one direction at a time, so the connection's state says which
                // event this is. Errors and hang-ups are reported either way and surface
                // as a failed read or write.
                Slot::Ours(conn) if conn.unsent.is_none() => handle_readable(conn, fd, &mut shared),
                Slot::Ours(conn) => handle_writable(conn),
                Slot::Tungstenite(ws) => handle_tungstenite(ws),
            };
            if let Ok(Next::HandOver) = result {
                result = hand_over(&mut connections[fd as usize], &shared.config);
            }
            match result {
                Ok(Next::Continue) => {}
                Ok(Next::WaitWritable) => epoll.modify(fd, WRITABLE)?,
                Ok(Next::WaitReadable) => epoll.modify(fd, READABLE)?,
                Ok(Next::HandOver) => unreachable!("bug: hand_over never asks for another"),
                Ok(Next::Close) => close(&epoll, &mut connections, &mut open, fd)?,
                Err(err) => {
                    if !is_disconnect(&err) {
                        eprintln!("step06-ws-epoll: connection fd {fd}: {err}; closing it");
                    }
                    close(&epoll, &mut connections, &mut open, fd)?;
                }
            }
        }
    }
}

/// Accept every connection waiting in the listener's queue.
fn accept_all(
    listener: &TcpListener,
    epoll: &Epoll,
    connections: &mut Vec<Option<Slot>>,
    open: &mut usize,
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
            .and_then(|()| epoll.register(fd, READABLE))
        {
            eprintln!("step06-ws-epoll: cannot set up connection fd {fd}: {err}; closing it");
            continue;
        }

        let index = fd as usize;
        if connections.len() <= index {
            connections.resize_with(index + 1, || None);
        }
        // The clock starts now: the whole request head must be in within the timeout.
        let deadline = shared.timers.set(fd);
        connections[index] = Some(Slot::Ours(Conn {
            stream,
            state: State::Handshaking {
                head: None,
                deadline,
            },
            unsent: None,
        }));
        *open += 1;
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
        State::Open { partial } => frame::decode(partial, input, shared.config.max_message, out),
        // We said our last word and sent our FIN; what the client still sends is dropped
        // until it hangs up too (read returns 0 above).
        State::Closing { .. } => return Ok(Next::Continue),
        State::HandingOver { .. } => unreachable!("bug: handed over as soon as the 101 is out"),
    };
    if flow == Flow::Close {
        let deadline = shared.timers.set(fd);
        conn.state = State::Closing { deadline };
    }

    let written = write_some(&mut conn.stream, &shared.out)?;
    if written < shared.out.len() {
        // The kernel's send buffer is full: keep the rest and wait until it drains.
        conn.unsent = Some(Box::new(shared.out[written..].to_vec()));
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
    let State::Handshaking { head, .. } = &mut conn.state else {
        unreachable!("bug: read_head is called only while handshaking");
    };
    // Most heads arrive whole, in one read: they are parsed straight from the shared read
    // buffer. Only a head that comes in pieces is copied into the connection.
    let mut head = head.take();
    let bytes: &[u8] = match &mut head {
        Some(head) => {
            head.extend_from_slice(input);
            head
        }
        None => input,
    };
    match handshake::parse_request(bytes) {
        Ok(None) => {
            // Not complete yet: keep what we have. (parse_request refuses heads over
            // 8 KiB, so this stays bounded.)
            let head = head.unwrap_or_else(|| Box::new(input.to_vec()));
            conn.state = State::Handshaking {
                head: Some(head),
                deadline: deadline_of(&conn.state),
            };
            Flow::Open
        }
        Err(reject) => {
            out.extend_from_slice(reject.response().as_bytes());
            Flow::Close
        }
        Ok(Some(upgrade)) => {
            out.extend_from_slice(handshake::switching_protocols(&upgrade.accept).as_bytes());
            // Bytes behind the head are the first frames, sent in the same segment: keep
            // them. (Dropping them would lose the client's first message.)
            let early = &bytes[upgrade.head_len..];
            match config.buffers {
                Buffers::Shared => {
                    let mut partial = None;
                    let flow = frame::decode(&mut partial, early, config.max_message, out);
                    conn.state = State::Open { partial };
                    flow
                }
                Buffers::PerConn => {
                    conn.state = State::HandingOver {
                        early: Box::new(early.to_vec()),
                    };
                    Flow::Open
                }
            }
        }
    }
}

fn deadline_of(state: &State) -> Deadline {
    match state {
        State::Handshaking { deadline, .. } | State::Closing { deadline } => *deadline,
        _ => unreachable!("bug: only handshaking and closing connections have a deadline"),
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
        State::HandingOver { .. } => Next::HandOver,
        State::Handshaking { .. } | State::Open { .. } => Next::WaitReadable,
    }
}

/// `--buffers per-conn`: the `101` is out; from here tungstenite's `WebSocket` reads,
/// decodes and writes, with its own buffers.
fn hand_over(slot: &mut Option<Slot>, config: &Config) -> io::Result<Next> {
    let Some(Slot::Ours(Conn {
        stream,
        state: State::HandingOver { early },
        ..
    })) = slot.take()
    else {
        unreachable!("bug: HandOver comes from a connection in HandingOver");
    };
    // Its default config, but for the message size limit, so both strategies refuse the
    // same messages.
    let ws_config = WebSocketConfig::default().max_message_size(Some(config.max_message));
    let ws = WebSocket::from_partially_read(stream, *early, Role::Server, Some(ws_config));
    let ws = slot.insert(Slot::Tungstenite(Box::new(ws)));
    let Slot::Tungstenite(ws) = ws else {
        unreachable!("bug: just inserted")
    };
    // The early bytes are in tungstenite's buffer now, not in the socket: epoll will not
    // report them, so handle them at once.
    handle_tungstenite(ws)
}

/// `--buffers per-conn`: let tungstenite read and answer everything there is.
///
/// It reads until the socket is empty: tungstenite keeps what it read in its own buffer,
/// where epoll cannot see it, so stopping earlier could strand a message there.
fn handle_tungstenite(ws: &mut WebSocket<TcpStream>) -> io::Result<Next> {
    use tungstenite::Error;

    // Output queued earlier goes first; until it is out, read nothing more.
    match ws.flush() {
        Ok(()) => {}
        Err(Error::Io(err)) if would_block(&err) => return Ok(Next::WaitWritable),
        Err(err) => return tungstenite_failed(ws, err),
    }
    loop {
        match ws.read() {
            Ok(message) if message.is_text() || message.is_binary() => match ws.send(message) {
                Ok(()) => {}
                // Queued in tungstenite's buffer; the kernel will take it later.
                Err(Error::Io(err)) if would_block(&err) => return Ok(Next::WaitWritable),
                Err(err) => return tungstenite_failed(ws, err),
            },
            // Pings are answered and closes replied to by tungstenite itself.
            Ok(_) => {}
            // Nothing more to read. But `read` also flushes the replies tungstenite queued
            // (pongs, a close reply); if the kernel would not take all of them, wait for
            // writability, or a client waiting for our reply would wait forever.
            Err(Error::Io(err)) if would_block(&err) => {
                return match ws.flush() {
                    Ok(()) => Ok(Next::WaitReadable),
                    Err(Error::Io(err)) if would_block(&err) => Ok(Next::WaitWritable),
                    Err(err) => tungstenite_failed(ws, err),
                };
            }
            Err(Error::Io(err)) if interrupted(&err) => {}
            Err(err) => return tungstenite_failed(ws, err),
        }
    }
}

/// tungstenite reports the end of a connection as an error: sort out which end.
fn tungstenite_failed(ws: &mut WebSocket<TcpStream>, err: tungstenite::Error) -> io::Result<Next> {
    use tungstenite::Error;
    use tungstenite::error::ProtocolError;
    let code = match err {
        // The close handshake is done, or the client hung up without one: nobody to tell.
        Error::ConnectionClosed
        | Error::AlreadyClosed
        | Error::Protocol(ProtocolError::ResetWithoutClosingHandshake) => return Ok(Next::Close),
        Error::Io(err) => return Err(err),
        Error::Protocol(_) => CloseCode::Protocol,
        Error::Utf8(_) => CloseCode::Invalid,
        Error::Capacity(_) => CloseCode::Size,
        other => return Err(io::Error::other(other)),
    };
    // tungstenite leaves failing the connection to us: a close frame with the reason, on a
    // best-effort basis (the client may be gone), then the connection is closed.
    let _ = ws.close(Some(CloseFrame {
        code,
        reason: "".into(),
    }));
    let _ = ws.flush();
    Ok(Next::Close)
}

/// Close the connections whose deadline has passed: clients that never finished their
/// request head (slowloris), or never hung up after our close.
fn expire(
    timers: &mut Timers,
    epoll: &Epoll,
    connections: &mut [Option<Slot>],
    open: &mut usize,
) -> io::Result<()> {
    let now = timers.now();
    while let Some(fd) = timers.pop_due(now) {
        // Most entries are stale: the connection finished its head long ago, or closed and
        // its fd now belongs to a newer connection (whose own deadline is later). Only a
        // connection whose own deadline has passed is closed.
        let Some(Some(Slot::Ours(conn))) = connections.get_mut(fd as usize) else {
            continue;
        };
        match conn.state {
            State::Handshaking { deadline, .. } if deadline <= now => {
                // Best effort: a slow client should learn why it is cut off.
                let _ = conn.stream.write(handshake::TIMEOUT_RESPONSE.as_bytes());
            }
            State::Closing { deadline } if deadline <= now => {}
            _ => continue,
        }
        close(epoll, connections, open, fd)?;
    }
    Ok(())
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

/// Remove a connection from the interest list and close it.
fn close(
    epoll: &Epoll,
    connections: &mut [Option<Slot>],
    open: &mut usize,
    fd: RawFd,
) -> io::Result<()> {
    epoll.deregister(fd)?;
    // Dropping the TcpStream (ours or tungstenite's) closes the fd.
    connections[fd as usize] = None;
    *open -= 1;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What an idle connection costs in the table, in bytes. If this grows, the memory
    /// line grows with it, 10 000 times.
    #[test]
    fn an_idle_connection_is_a_few_dozen_bytes() {
        let size = size_of::<Option<Slot>>();
        assert!(size <= 32, "Option<Slot> is {size} bytes");
    }
}
