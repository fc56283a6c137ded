//! `cargo run --release -p step04-poll`
//!
//! One thread, poll(2). We hand the kernel an array of `pollfd`s, one per socket, with no
//! cap on how many; it marks the ready ones. But every call passes the whole array in and
//! out, and we scan all of it to find the ready few: a wake-up costs O(connections), so
//! round trips slow down as idle connections pile up.

use std::io::{self, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::os::fd::{AsRawFd, RawFd};
use std::time::{Duration, Instant};

use common::sys::{client_gone, cvt, interrupted, is_disconnect, out_of_resources, would_block};
use common::{MemoryMeter, RateLimitedLog};

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
    // pollfds[0] is the listener; pollfds[i] watches connections[i - 1]. Two parallel Vecs
    // with no holes: poll() takes the pollfds as one contiguous array.
    let mut pollfds = vec![pollfd(listener.as_raw_fd(), READABLE)];
    let mut connections: Vec<Conn> = Vec::new();
    // One read buffer for every connection: a connection holds bytes only while the
    // kernel would not take its echo.
    let mut buf = vec![0u8; READ_BUDGET];
    // Set while we are out of file descriptors and not accepting.
    let mut accept_paused_until: Option<Instant> = None;
    // Out of fds, accept fails ten times a second: say so once a second, with a count.
    let mut accept_log = RateLimitedLog::per_second();

    loop {
        meter.tick(connections.len());

        if accept_paused_until.is_some_and(|until| Instant::now() >= until) {
            accept_paused_until = None;
            pollfds[0].events = READABLE;
        }
        let timeout = match accept_paused_until {
            Some(until) => until.saturating_duration_since(Instant::now()),
            None => meter.period(),
        };

        match poll(&mut pollfds, timeout) {
            Ok(_ready) => {}
            // A signal arrived while we slept: not an error, just wait again.
            Err(err) if interrupted(&err) => continue,
            Err(err) => return Err(err),
        }

        // The price of poll: to find the few ready sockets we look at every one of them.
        let mut i = 1;
        while i < pollfds.len() {
            if pollfds[i].revents == 0 {
                i += 1;
                continue;
            }
            let conn = &mut connections[i - 1];
            // We watch one direction at a time, so the connection's state says which
            // event this is. Errors and hang-ups (POLLERR, POLLHUP) are reported either
            // way and surface as a failed read or write.
            let result = if conn.unsent.is_empty() {
                handle_readable(conn, &mut buf)
            } else {
                handle_writable(conn)
            };
            match result {
                Ok(Next::Continue) => {}
                Ok(Next::WaitWritable) => pollfds[i].events = WRITABLE,
                Ok(Next::WaitReadable) => pollfds[i].events = READABLE,
                Ok(Next::Close) => {
                    close(&mut pollfds, &mut connections, i);
                    // The last connection moved into slot i: look at it next.
                    continue;
                }
                Err(err) => {
                    if !is_disconnect(&err) {
                        let fd = pollfds[i].fd;
                        common::log!("step04-poll: connection fd {fd}: {err}; closing it");
                    }
                    close(&mut pollfds, &mut connections, i);
                    continue;
                }
            }
            i += 1;
        }

        if pollfds[0].revents != 0 {
            match accept_all(&listener, &mut pollfds, &mut connections) {
                Ok(()) => {}
                Err(err) if out_of_resources(&err) => {
                    // The listener stays readable while connections wait in its queue, so
                    // the next poll would return at once, fail again and spin. Stop
                    // watching it for a moment; the clients wait in the kernel.
                    accept_log.log(|| {
                        format!(
                            "step04-poll: accept: {err}; pausing accepts for {ACCEPT_BACKOFF:?}"
                        )
                    });
                    pollfds[0].events = 0;
                    accept_paused_until = Some(Instant::now() + ACCEPT_BACKOFF);
                }
                Err(err) => return Err(err),
            }
        }
    }
}

/// Accept every connection waiting in the listener's queue.
fn accept_all(
    listener: &TcpListener,
    pollfds: &mut Vec<libc::pollfd>,
    connections: &mut Vec<Conn>,
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
        if let Err(err) = stream.set_nonblocking(true) {
            common::log!("step04-poll: cannot set up a connection: {err}; closing it");
            continue;
        }
        pollfds.push(pollfd(stream.as_raw_fd(), READABLE));
        connections.push(Conn {
            stream,
            unsent: Vec::new(),
        });
    }
}

/// Read what the peer sent and echo it.
///
/// Level-triggered: poll reports this socket again on the next call while unread bytes
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

/// Close the connection in slot `i` without leaving a hole: the last pollfd and the last
/// connection move into its place.
fn close(pollfds: &mut Vec<libc::pollfd>, connections: &mut Vec<Conn>, i: usize) {
    pollfds.swap_remove(i);
    // Dropping the TcpStream closes the fd.
    connections.swap_remove(i - 1);
}

// ---------------------------------------------------------------------------------------
// The poll syscall.

/// Interest in reading: the peer sent bytes, or closed.
const READABLE: libc::c_short = libc::POLLIN;
/// Interest in writing: the kernel's send buffer has room again.
const WRITABLE: libc::c_short = libc::POLLOUT;

fn pollfd(fd: RawFd, events: libc::c_short) -> libc::pollfd {
    libc::pollfd {
        fd,
        events,
        revents: 0,
    }
}

/// Wait up to `timeout` until some fd in `pollfds` is ready; the kernel sets each one's
/// `revents`. Returns how many are ready, but not which: for that we scan them all.
fn poll(pollfds: &mut [libc::pollfd], timeout: Duration) -> io::Result<usize> {
    // Round up, so a 0.4 ms timeout sleeps 1 ms instead of spinning at 0.
    let timeout_ms = timeout
        .as_micros()
        .div_ceil(1000)
        .min(libc::c_int::MAX as u128) as libc::c_int;
    // SAFETY: the pointer and length describe `pollfds`, a valid and writable slice; the
    // kernel writes only the `revents` fields within it.
    let ready = cvt(unsafe {
        libc::poll(
            pollfds.as_mut_ptr(),
            pollfds.len() as libc::nfds_t,
            timeout_ms,
        )
    })?;
    Ok(ready as usize)
}
