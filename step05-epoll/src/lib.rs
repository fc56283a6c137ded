//! `cargo run --release -p step05-epoll`
//!
//! One thread, epoll(7). We tell the kernel once which sockets we care about (the interest
//! list, kept in the kernel); each `epoll_wait` hands back only the sockets that are ready
//! (the ready list). A wake-up costs O(ready), not O(connections): 10 000 idle connections
//! cost nothing per wake-up, and only a few dozen bytes each in this process.
//!
//! Layout: this file is the loop; `epoll.rs` wraps the three epoll syscalls.

mod epoll;

use std::io::{self, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::os::fd::{AsFd, AsRawFd, RawFd};
use std::time::{Duration, Instant};

use common::sys::{client_gone, interrupted, is_disconnect, out_of_resources, would_block};
use common::{MemoryMeter, RateLimitedLog};

use epoll::{Epoll, READABLE, WRITABLE};

/// One connection. Kept small on purpose: this struct, times 10 000, is most of what an
/// idle connection costs us.
struct Conn {
    stream: TcpStream,
    /// Echo bytes the kernel would not take yet (the peer reads slower than it writes).
    /// Empty, and unallocated, for an idle connection.
    unsent: Vec<u8>,
}

/// What the loop must do with a connection after handling its event.
enum Next {
    /// Nothing changes.
    Continue,
    /// Output is pending: watch for writability only, and stop reading meanwhile so the
    /// unsent bytes stay bounded by one read.
    WaitWritable,
    /// All output is out: watch for readability again.
    WaitReadable,
    /// The peer closed the connection.
    Close,
}

/// The read budget: one read of at most this many bytes per connection per wake-up. A
/// connection with more to read is reported again on the next round (level-triggered),
/// after every other ready connection has had its turn: one busy client starves nobody.
const READ_BUDGET: usize = 64 * 1024;

/// How long to stop accepting when the process is out of file descriptors.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);

/// Serve raw-TCP echo on `listener` until an unrecoverable error.
pub fn serve(listener: TcpListener, mut meter: MemoryMeter) -> io::Result<()> {
    listener.set_nonblocking(true)?;
    let epoll = Epoll::new()?;
    epoll.register(listener.as_fd(), READABLE)?;

    // The fd is the connection's token and its index here: the kernel hands out the lowest
    // free fd, so the fds of live connections are dense and this Vec has few holes.
    let mut connections: Vec<Option<Conn>> = Vec::new();
    let mut open = 0;
    // One read buffer for every connection: a connection holds bytes only while the
    // kernel would not take its echo.
    let mut buf = vec![0u8; READ_BUDGET];
    let mut events = Vec::with_capacity(1024);
    // Set while we are out of file descriptors and not accepting.
    let mut accept_paused_until: Option<Instant> = None;
    // Out of fds, accept fails ten times a second: say so once a second, with a count.
    let mut accept_log = RateLimitedLog::per_second();

    loop {
        meter.tick(open);

        if accept_paused_until.is_some_and(|until| Instant::now() >= until) {
            accept_paused_until = None;
            epoll.register(listener.as_fd(), READABLE)?;
        }
        let timeout = match accept_paused_until {
            Some(until) => until.saturating_duration_since(Instant::now()),
            None => meter.period(),
        };

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
                match accept_all(&listener, &epoll, &mut connections, &mut open) {
                    Ok(()) => {}
                    Err(err) if out_of_resources(&err) => {
                        // The listener stays readable while connections wait in its queue,
                        // so a level-triggered loop would wake at once, fail again and spin.
                        // Stop watching it for a moment; the clients wait in the kernel.
                        accept_log.log(|| format!("step05-epoll: accept: {err}; pausing accepts for {ACCEPT_BACKOFF:?}"));
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
            let Some(conn) = connections.get_mut(fd as usize).and_then(Option::as_mut) else {
                continue;
            };
            // We watch one direction at a time, so the connection's state says which
            // event this is. Errors and hang-ups are reported either way and surface as
            // a failed read or write.
            let result = if conn.unsent.is_empty() {
                handle_readable(conn, &mut buf)
            } else {
                handle_writable(conn)
            };
            let result = match result {
                Ok(Next::Continue) => Ok(()),
                // Watching the other direction is a syscall that can fail on its own
                // (ENOMEM): like a failed read or write, that closes this connection only.
                Ok(Next::WaitWritable) => epoll.modify(conn.stream.as_fd(), WRITABLE),
                Ok(Next::WaitReadable) => epoll.modify(conn.stream.as_fd(), READABLE),
                Ok(Next::Close) => {
                    close(&epoll, &mut connections, &mut open, fd);
                    continue;
                }
                Err(err) => Err(err),
            };
            if let Err(err) = result {
                if !is_disconnect(&err) {
                    common::log!("step05-epoll: connection fd {fd}: {err}; closing it");
                }
                close(&epoll, &mut connections, &mut open, fd);
            }
        }
    }
}

/// Accept every connection waiting in the listener's queue.
fn accept_all(
    listener: &TcpListener,
    epoll: &Epoll,
    connections: &mut Vec<Option<Conn>>,
    open: &mut usize,
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
            common::log!("step05-epoll: cannot set up connection fd {fd}: {err}; closing it");
            continue;
        }

        let index = fd as usize;
        if connections.len() <= index {
            connections.resize_with(index + 1, || None);
        }
        connections[index] = Some(Conn {
            stream,
            unsent: Vec::new(),
        });
        *open += 1;
    }
}

/// Read what the peer sent and echo it.
///
/// Level-triggered: epoll reports this socket again on the next wait while unread bytes
/// remain, so one read per wake-up is enough, and fair to the other connections.
fn handle_readable(conn: &mut Conn, buf: &mut [u8]) -> io::Result<Next> {
    let n = match conn.stream.read(buf) {
        Ok(0) => return Ok(Next::Close),
        Ok(n) => n,
        // Spurious wake-ups are normal: nothing to read after all.
        Err(err) if would_block(&err) || interrupted(&err) => return Ok(Next::Continue),
        Err(err) => return Err(err),
    };

    // A real handler's work: none unless `--work-us`.
    common::work::spend_on(&buf[..n]);
    let written = write_some(&mut conn.stream, &buf[..n])?;
    if written == n {
        return Ok(Next::Continue);
    }
    // The kernel's send buffer is full: keep the rest and wait until it drains.
    conn.unsent.extend_from_slice(&buf[written..n]);
    Ok(Next::WaitWritable)
}

/// Send what is left of an echo.
fn handle_writable(conn: &mut Conn) -> io::Result<Next> {
    let written = write_some(&mut conn.stream, &conn.unsent)?;
    conn.unsent.drain(..written);
    if !conn.unsent.is_empty() {
        return Ok(Next::Continue);
    }
    // Give the buffer back: an idle connection holds no bytes.
    conn.unsent = Vec::new();
    Ok(Next::WaitReadable)
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
fn close(epoll: &Epoll, connections: &mut [Option<Conn>], open: &mut usize, fd: RawFd) {
    let conn = connections[fd as usize]
        .take()
        .expect("bug: closing a connection that is not open");
    if let Err(err) = epoll.deregister(conn.stream.as_fd()) {
        // Closing the socket's last fd takes it out of the interest list anyway.
        common::log!("step05-epoll: epoll_ctl(DEL) fd {fd}: {err}; closing it anyway");
    }
    *open -= 1;
    // Dropping the TcpStream closes the fd.
    drop(conn);
}
