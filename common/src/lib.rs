//! The routine parts every step shares, so that a step's source holds only what it teaches:
//! command-line options, the open-file limit, the memory meter that prints the memory line
//! (with the `/proc` readers, [`ProcStatus`] and [`cpu_time`], that stepcheck and report
//! hold a step to), a rate-limited stderr log for errors that come in storms, ([`output`])
//! lines on stdout and stderr that never block a loop ([`log!`] is its `eprintln!`),
//! ([`sys`]) the syscall-result helper and errno predicates every event loop needs, and
//! ([`work`]) the CPU work `--work-us` asks for on every message.

mod fdlimit;
mod meter;
mod options;
pub mod output;
mod ratelog;
pub mod sys;
pub mod work;

pub use fdlimit::{FdLimit, raise_fd_limit};
pub use meter::{
    MemoryLine, MemoryMeter, ProcStatus, anon_rss_bytes, children_of, cpu_time, fd_targets,
    format_bytes, pids_where, rss_bytes,
};
pub use options::Options;
pub use ratelog::RateLimitedLog;

use std::io;
use std::net::TcpListener;
use std::os::fd::AsRawFd;

/// What every step's `main` does before it serves: raise the open-file limit, measure what
/// `--work-us` takes (only when asked), bind the listener, print `listening on ADDR` as the
/// first line on stdout, and measure the baseline resident set (after the bind, before the
/// first accept). Exits with a one-line message
/// when the address cannot be bound (say, another server already listens there).
pub fn bind(
    step: &str,
    default_port: u16,
    opts: &Options,
) -> io::Result<(TcpListener, MemoryMeter)> {
    let limit = raise_fd_limit()?;
    log!("{step}: {limit}");
    work::set_up(step, opts.work_us);

    let addr = opts.addr_or(default_port);
    let listener = match TcpListener::bind(addr) {
        Ok(listener) => listener,
        Err(err) => {
            // Nothing to serve without the socket: say why in one line (not as a Debug
            // dump of the error, which is what returning it from main would print), and stop.
            log!("{step}: cannot listen on {addr}: {err}");
            std::process::exit(1);
        }
    };
    widen_backlog(&listener)?;
    let local = listener.local_addr()?;
    // The first line: nothing was dropped before it.
    output::print(|_dropped| match opts.json {
        true => format!(r#"{{"event":"listening","addr":"{local}"}}"#),
        false => format!("listening on {local}"),
    });

    let meter = MemoryMeter::new(step, opts);
    Ok((listener, meter))
}

/// Let the kernel queue as many not-yet-accepted connections as it allows.
///
/// std listens with a backlog of 128. When 10 000 clients connect at once and the server
/// accepts slowly (spawning threads, or an O(n) poll per wake-up), the queue overflows, the
/// kernel drops the clients' handshakes and they retry a second later. Calling `listen`
/// again on a listening socket only changes its backlog; the kernel caps the value at
/// `net.core.somaxconn` (4096 on current kernels).
fn widen_backlog(listener: &TcpListener) -> io::Result<()> {
    // SAFETY: the fd is a bound, listening socket owned by `listener`; listen takes no pointers.
    sys::cvt(unsafe { libc::listen(listener.as_raw_fd(), libc::c_int::MAX) })?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    /// Connections past std's backlog of 128 are queued by the kernel, not dropped, even
    /// when nobody accepts them. Breaks if `widen_backlog` leaves std's 128 (connection 130
    /// or so times out). Where `net.core.somaxconn` is 128 or less the kernel caps any
    /// backlog there, so the test cannot tell, and says so on the terminal.
    #[test]
    fn backlog_holds_more_than_stds_128() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        widen_backlog(&listener).unwrap();
        let addr = listener.local_addr().unwrap();
        let somaxconn: usize = std::fs::read_to_string("/proc/sys/net/core/somaxconn")
            .ok()
            .and_then(|s| s.trim().parse().ok())
            .unwrap_or(4096);
        if somaxconn <= 128 {
            // Straight to stderr, not through eprintln!, which the test harness captures.
            let _ = std::io::Write::write_all(
                &mut std::io::stderr(),
                format!(
                    "backlog_holds_more_than_stds_128: NOT CHECKED: net.core.somaxconn is \
                     {somaxconn}, so no backlog can exceed std's 128 here\n"
                )
                .as_bytes(),
            );
            return;
        }
        // One past std's backlog of 128 at least (a backlog of n queues n + 1 connections).
        let clients = somaxconn.min(1000);
        // A dropped handshake is retried after a second: a short timeout catches it.
        let _queued: Vec<_> = (0..clients)
            .map(|i| {
                std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(500))
                    .unwrap_or_else(|err| panic!("connection {i} was not queued: {err}"))
            })
            .collect();
    }
}
