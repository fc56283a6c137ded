//! `cargo run --release -p step03-select`
//!
//! One thread, select(2). Non-blocking sockets and one call that waits for any of them:
//! the first way to serve many clients without a thread each. Its limits are built in.
//! An `fd_set` is a fixed bitmap of FD_SETSIZE = 1024 bits, so no fd at or above 1024 can
//! be watched, and select overwrites the sets it is given, so every wake-up rebuilds and
//! rescans them all: O(connections).

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
    let mut connections: Vec<Conn> = Vec::new();
    // One read buffer for every connection: a connection holds bytes only while the
    // kernel would not take its echo.
    let mut buf = vec![0u8; READ_BUDGET];
    // Set while we are out of file descriptors and not accepting.
    let mut accept_paused_until: Option<Instant> = None;
    // Out of fds, accept fails ten times a second: say so once a second, with a count.
    let mut accept_log = RateLimitedLog::per_second();
    let mut refusals = Refusals::default();

    loop {
        meter.tick(connections.len());
        refusals.log_if_due();

        if accept_paused_until.is_some_and(|until| Instant::now() >= until) {
            accept_paused_until = None;
        }
        let timeout = match accept_paused_until {
            Some(until) => until.saturating_duration_since(Instant::now()),
            None => meter.period(),
        };

        // select() overwrites the sets with the ready fds, so they are rebuilt before
        // every call: O(connections) before the kernel even starts.
        let mut readable = FdSet::new();
        let mut writable = FdSet::new();
        if accept_paused_until.is_none() {
            readable.insert(listener.as_raw_fd());
        }
        for conn in &connections {
            // We watch one direction at a time (see `Next`).
            if conn.unsent.is_empty() {
                readable.insert(conn.stream.as_raw_fd());
            } else {
                writable.insert(conn.stream.as_raw_fd());
            }
        }

        match select(&mut readable, &mut writable, timeout) {
            Ok(_ready) => {}
            // A signal arrived while we slept: not an error, just wait again.
            Err(err) if interrupted(&err) => continue,
            Err(err) => return Err(err),
        }

        // The price of select: to find the few ready sockets we look at every one of them.
        let mut i = 0;
        while i < connections.len() {
            let fd = connections[i].stream.as_raw_fd();
            if !readable.contains(fd) && !writable.contains(fd) {
                i += 1;
                continue;
            }
            let conn = &mut connections[i];
            // We watch one direction at a time, so the connection's state says which
            // event this is. Errors and hang-ups are reported as readable or writable
            // and surface as a failed read or write.
            let result = if conn.unsent.is_empty() {
                handle_readable(conn, &mut buf)
            } else {
                handle_writable(conn)
            };
            match result {
                // Nothing to record: the sets are rebuilt from `unsent` before the next call.
                Ok(Next::Continue | Next::WaitWritable | Next::WaitReadable) => {}
                Ok(Next::Close) => {
                    close(&mut connections, i);
                    // The last connection moved into slot i: look at it next.
                    continue;
                }
                Err(err) => {
                    if !is_disconnect(&err) {
                        common::log!("step03-select: connection fd {fd}: {err}; closing it");
                    }
                    close(&mut connections, i);
                    continue;
                }
            }
            i += 1;
        }

        if readable.contains(listener.as_raw_fd()) {
            match accept_all(&listener, &mut connections, &mut refusals) {
                Ok(()) => {}
                Err(err) if out_of_resources(&err) => {
                    // The listener stays readable while connections wait in its queue, so
                    // the next select would return at once, fail again and spin. Stop
                    // watching it for a moment; the clients wait in the kernel.
                    accept_log.log(|| {
                        format!(
                            "step03-select: accept: {err}; pausing accepts for {ACCEPT_BACKOFF:?}"
                        )
                    });
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
    connections: &mut Vec<Conn>,
    refusals: &mut Refusals,
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
        if fd as usize >= libc::FD_SETSIZE {
            // An fd_set has no bit for this fd: FD_SET would write past the end of the
            // bitmap. All we can do is close the connection at once.
            refusals.record();
            continue; // `stream` is dropped here, which closes it.
        }
        if let Err(err) = stream.set_nonblocking(true) {
            common::log!("step03-select: cannot set up a connection: {err}; closing it");
            continue;
        }
        connections.push(Conn {
            stream,
            unsent: Vec::new(),
        });
    }
}

/// Read what the peer sent and echo it.
///
/// Level-triggered: select reports this socket again on the next call while unread bytes
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

/// Close the connection in slot `i` without leaving a hole: the last connection moves
/// into its place.
fn close(connections: &mut Vec<Conn>, i: usize) {
    // Dropping the TcpStream closes the fd.
    connections.swap_remove(i);
}

/// Counts connections refused for an fd past FD_SETSIZE, and logs them at most once a
/// second: a flood of them must not become a flood of log lines.
#[derive(Default)]
struct Refusals {
    /// Refused since the last log line.
    unlogged: u64,
    /// Refused since the server started.
    total: u64,
    /// When the last log line was written.
    last_log: Option<Instant>,
}

impl Refusals {
    fn record(&mut self) {
        self.unlogged += 1;
        self.total += 1;
        self.log_if_due();
    }

    /// Log what was refused since the last line, if that line is a second old. Called on
    /// every pass of the loop too, so the end of a burst is reported, not just its start.
    fn log_if_due(&mut self) {
        let recent = self
            .last_log
            .is_some_and(|at| at.elapsed() < Duration::from_secs(1));
        if self.unlogged == 0 || recent {
            return;
        }
        common::log!(
            "step03-select: closed {} connection(s) whose fd was past FD_SETSIZE = {} ({} in all)",
            self.unlogged,
            libc::FD_SETSIZE,
            self.total
        );
        self.unlogged = 0;
        self.last_log = Some(Instant::now());
    }
}

// ---------------------------------------------------------------------------------------
// The select syscall and its fd_set bitmaps.

/// A set of fds for select(2): a bitmap with room for fds 0..FD_SETSIZE, no more.
struct FdSet {
    bits: libc::fd_set,
    /// The highest fd in the set, or -1 when empty: select wants it plus one.
    max_fd: RawFd,
}

impl FdSet {
    fn new() -> FdSet {
        // SAFETY: fd_set is a plain array of integers; all zeroes is the empty set
        // (which is what FD_ZERO writes).
        let bits = unsafe { std::mem::zeroed() };
        FdSet { bits, max_fd: -1 }
    }

    fn insert(&mut self, fd: RawFd) {
        assert!(
            (0..libc::FD_SETSIZE as RawFd).contains(&fd),
            "bug: fd {fd} cannot go in an fd_set; accept_all refuses such fds"
        );
        // SAFETY: `self.bits` is a valid fd_set and fd is within 0..FD_SETSIZE (checked above).
        unsafe { libc::FD_SET(fd, &mut self.bits) };
        self.max_fd = self.max_fd.max(fd);
    }

    fn contains(&self, fd: RawFd) -> bool {
        if !(0..libc::FD_SETSIZE as RawFd).contains(&fd) {
            return false;
        }
        // SAFETY: `self.bits` is a valid fd_set and fd is within 0..FD_SETSIZE.
        unsafe { libc::FD_ISSET(fd, &self.bits) }
    }
}

/// Wait up to `timeout` until some fd in either set is ready. On return each set holds
/// only its ready fds. Returns how many are ready, but not which: for that we scan.
fn select(readable: &mut FdSet, writable: &mut FdSet, timeout: Duration) -> io::Result<usize> {
    let nfds = readable.max_fd.max(writable.max_fd) + 1;
    let mut timeout = libc::timeval {
        tv_sec: timeout.as_secs() as libc::time_t,
        tv_usec: timeout.subsec_micros() as libc::suseconds_t,
    };
    // SAFETY: both sets are valid fd_sets holding only fds below `nfds`, the exception set
    // may be null, and the kernel writes only within the sets and `timeout`.
    let ready = cvt(unsafe {
        libc::select(
            nfds,
            &mut readable.bits,
            &mut writable.bits,
            std::ptr::null_mut(),
            &mut timeout,
        )
    })?;
    Ok(ready as usize)
}
