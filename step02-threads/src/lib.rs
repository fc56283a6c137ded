//! `cargo run --release -p step02-threads`
//!
//! A thread per connection: each client gets its own thread, blocked in its own read, so a
//! slow client holds up nobody. The code stays as simple as step01's; the cost moves into
//! memory: every thread has a stack (its touched pages are resident), a kernel stack, and
//! the kernel's bookkeeping, idle or not.

use std::io::{self, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::thread;
use std::time::Duration;

use common::MemoryMeter;

/// How long to stop accepting when the process is out of file descriptors.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);

/// Serve raw-TCP echo on `listener`, a thread per connection. `stack_size` is each thread's
/// stack in bytes (`None`: Rust's default, 2 MiB of address space, mostly never touched).
pub fn serve(
    listener: TcpListener,
    meter: MemoryMeter,
    stack_size: Option<usize>,
) -> io::Result<()> {
    let open = Arc::new(AtomicUsize::new(0));
    meter.report_in_background(Arc::clone(&open))?;

    loop {
        let stream = match listener.accept() {
            Ok((stream, _peer)) => stream,
            Err(err) if err.kind() == io::ErrorKind::Interrupted => continue,
            // That one client is gone (it gave up while queued, or the network failed
            // under it): skip it.
            Err(err) if client_gone(&err) => continue,
            Err(err) if out_of_resources(&err) => {
                // Out of file descriptors. Retrying at once would fail at once, in a busy
                // loop; the clients can wait in the listen queue while threads finish.
                eprintln!("step02-threads: accept: {err}; pausing accepts for {ACCEPT_BACKOFF:?}");
                thread::sleep(ACCEPT_BACKOFF);
                continue;
            }
            Err(err) => return Err(err),
        };

        let mut builder = thread::Builder::new();
        if let Some(size) = stack_size {
            builder = builder.stack_size(size);
        }
        let guard = OpenGuard::new(&open);
        let spawned = builder.spawn(move || {
            let _guard = guard;
            if let Err(err) = handle_connection(stream) {
                if !is_disconnect(&err) {
                    eprintln!("step02-threads: connection: {err}; closing it");
                }
            }
        });
        if let Err(err) = spawned {
            // No thread for this client (the process or the system is at its thread limit,
            // or out of memory for stacks). The closure, the stream and the guard in it
            // were dropped: the connection is closed and no longer counted.
            eprintln!("step02-threads: cannot spawn a thread: {err}; closing that connection");
        }
    }
}

/// Echo everything the client sends until it closes the connection.
fn handle_connection(mut stream: TcpStream) -> io::Result<()> {
    let mut buf = [0u8; 4096];
    loop {
        // Blocks this thread, and only this thread, until the client sends or hangs up.
        let n = stream.read(&mut buf)?;
        if n == 0 {
            return Ok(());
        }
        stream.write_all(&buf[..n])?;
    }
}

/// Out of file descriptors (for this process, or the whole system), or of kernel memory
/// for a new socket: retrying at once would fail at once.
fn out_of_resources(err: &io::Error) -> bool {
    matches!(
        err.raw_os_error(),
        Some(libc::EMFILE | libc::ENFILE | libc::ENOBUFS | libc::ENOMEM)
    )
}

/// accept(2) reports errors of the connection it was about to return (the client reset
/// it while it was queued, or the network under it failed): they end that one
/// connection, never the server.
fn client_gone(err: &io::Error) -> bool {
    err.kind() == io::ErrorKind::ConnectionAborted
        || matches!(
            err.raw_os_error(),
            Some(
                libc::EPROTO
                    | libc::ENOPROTOOPT
                    | libc::ENETDOWN
                    | libc::ENONET
                    | libc::EHOSTDOWN
                    | libc::EHOSTUNREACH
                    | libc::EOPNOTSUPP
                    | libc::ENETUNREACH
            )
        )
}

/// The peer went away: the ordinary end of a connection, not worth a log line.
fn is_disconnect(err: &io::Error) -> bool {
    matches!(
        err.kind(),
        io::ErrorKind::ConnectionReset | io::ErrorKind::BrokenPipe
    )
}

/// Counts one open connection for as long as it lives, however its thread ends.
struct OpenGuard(Arc<AtomicUsize>);

impl OpenGuard {
    fn new(open: &Arc<AtomicUsize>) -> OpenGuard {
        open.fetch_add(1, Ordering::Relaxed);
        OpenGuard(Arc::clone(open))
    }
}

impl Drop for OpenGuard {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}
