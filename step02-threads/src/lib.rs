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

use common::sys::{client_gone, interrupted, is_disconnect, out_of_resources};
use common::{MemoryMeter, RateLimitedLog};

/// How long to stop accepting when the process is out of file descriptors.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);

/// The largest `--stack-size` taken. Each thread maps its whole stack up front; past a
/// gigabyte a few threads exhaust what the kernel lets a process map (and an echo needs a
/// few KiB of it).
pub const MAX_STACK_SIZE: usize = 1 << 30;

/// `--stack-size`, checked when the options are parsed: a size no thread can be spawned
/// with would start a server that drops every connection. Too small is refused (std would
/// silently raise it to the platform minimum); the value is rounded up to whole pages, as
/// the kernel maps them.
pub fn parse_stack_size(s: &str) -> Result<usize, String> {
    let bytes: usize = s
        .parse()
        .map_err(|_| format!("`{s}` is not a number of bytes"))?;
    let page = page_size();
    let minimum = libc::PTHREAD_STACK_MIN.next_multiple_of(page);
    if bytes < minimum {
        return Err(format!(
            "{bytes} bytes is below this platform's minimum thread stack, {minimum} bytes"
        ));
    }
    if bytes > MAX_STACK_SIZE {
        return Err(format!(
            "{bytes} bytes is more than the {MAX_STACK_SIZE} bytes (1 GiB) taken"
        ));
    }
    Ok(bytes.next_multiple_of(page))
}

fn page_size() -> usize {
    // SAFETY: sysconf only reads a configuration value.
    let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    usize::try_from(page).unwrap_or(4096)
}

/// Serve raw-TCP echo on `listener`, a thread per connection. `stack_size` is each thread's
/// stack in bytes (`None`: Rust's default, 2 MiB of address space, mostly never touched).
pub fn serve(
    listener: TcpListener,
    meter: MemoryMeter,
    stack_size: Option<usize>,
) -> io::Result<()> {
    let open = Arc::new(AtomicUsize::new(0));
    meter.report_in_background(Arc::clone(&open))?;
    // Both failures come in storms (every queued client fails alike): a line a second.
    let mut accept_log = RateLimitedLog::per_second();
    let mut spawn_log = RateLimitedLog::per_second();

    loop {
        let stream = match listener.accept() {
            Ok((stream, _peer)) => stream,
            Err(err) if interrupted(&err) => continue,
            // That one client is gone (it gave up while queued, or the network failed
            // under it): skip it.
            Err(err) if client_gone(&err) => continue,
            Err(err) if out_of_resources(&err) => {
                // Out of file descriptors. Retrying at once would fail at once, in a busy
                // loop; the clients can wait in the listen queue while threads finish.
                accept_log.log(|| {
                    format!("step02-threads: accept: {err}; pausing accepts for {ACCEPT_BACKOFF:?}")
                });
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
                    common::log!("step02-threads: connection: {err}; closing it");
                }
            }
        });
        if let Err(err) = spawned {
            // No thread for this client (the process or the system is at its thread limit,
            // or out of memory for stacks). The closure, the stream and the guard in it
            // were dropped: the connection is closed and no longer counted.
            spawn_log.log(|| {
                format!("step02-threads: cannot spawn a thread: {err}; closing that connection")
            });
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
        // A real handler's work: none unless `--work-us`.
        common::work::spend_on(&buf[..n]);
        stream.write_all(&buf[..n])?;
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    /// Sizes no thread can have are refused with the reason; others are rounded up to pages.
    #[test]
    fn stack_size_is_checked_and_page_rounded() {
        let minimum = libc::PTHREAD_STACK_MIN.next_multiple_of(page_size());
        assert_eq!(parse_stack_size(&minimum.to_string()), Ok(minimum));
        assert_eq!(
            parse_stack_size(&(minimum + 1).to_string()),
            Ok(minimum + page_size())
        );
        let too_small = parse_stack_size("100").unwrap_err();
        assert!(too_small.contains(&minimum.to_string()), "{too_small}");
        assert!(parse_stack_size(&(MAX_STACK_SIZE + 1).to_string()).is_err());
        assert!(parse_stack_size("1099511627776").is_err()); // 1 TiB
        assert!(parse_stack_size("-1").is_err());
        assert!(parse_stack_size("2MiB").is_err());
    }
}
