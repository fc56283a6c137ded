//! `cargo run --release -p step08-reuseport -- --workers 2`
//!
//! A loop per core, and a million connections. step06's epoll loop serves one core; this
//! step runs it N times, in N worker *processes*, each on its own listening socket bound to
//! the same address with `SO_REUSEPORT`, and lets the kernel spread new connections over
//! them.
//!
//! Processes, not threads: every connection is a file, and the table of open files, with
//! its limit (`RLIMIT_NOFILE`), belongs to the process. Threads share one table and one
//! limit; N processes have N. On a machine that allows 20 000 open files per process and
//! will not raise it, one process holds ~20 000 connections, and a million needs ~55
//! workers (51 full ones; the kernel spreads connections evenly only on average, so each
//! gets some room to spare). And a worker that dies takes only its own connections with
//! it: the kernel closes the dead process's files, and no other's.
//!
//! Layout:
//! - this file: the lesson. A listening socket in a `SO_REUSEPORT` group ([`listen`]), and
//!   what each worker runs ([`work`]): its own socket, and step06's `serve`, unchanged (or,
//!   with `--loop io-uring`, step09's).
//! - `supervisor.rs`: the process the user starts. It starts the workers, prints one
//!   memory line for all of them, replaces a worker that dies or goes silent, and stops
//!   them all on Ctrl-C.
//! - `worker.rs`: one worker seen from the supervisor: this binary run again with
//!   `--worker`, and a thread that keeps the latest line from its pipe.
//! - `total.rs`: the server's one memory line, the workers' lines summed.
//! - `signals.rs`: Ctrl-C and SIGTERM reach the supervisor's loop as a flag.

mod signals;
mod supervisor;
mod total;
mod worker;

pub use supervisor::{Plan, supervise};

use std::io;
use std::net::{SocketAddr, TcpListener};

use common::{MemoryMeter, Options};
use socket2::{Domain, Socket, Type};
use step06_ws_epoll::WsOptions;

/// The name at the start of the memory line.
pub const STEP: &str = "step08-reuseport";

// Listening sockets that share one address: `SO_REUSEPORT`.
//
// Normally a second `bind` to an address already in use fails with `EADDRINUSE`. When every
// socket sets `SO_REUSEPORT` before `bind` (and all belong to the same user), the kernel
// lets them all bind, and keeps the listening ones in a group: each incoming connection
// goes to one member, picked by a hash of its addresses and ports. Each member has its own
// accept queue, so the workers never contend for one socket.
//
// socket2 rather than raw `libc` calls: the socket is created, set up and bound before
// std's `TcpListener` can take it over, and socket2 names each step (`set_reuse_port`,
// `bind`, `listen`) without an `unsafe` block around each syscall. The lesson is the one
// option; the five syscalls around it are routine.

/// A socket bound to `addr` with `SO_REUSEPORT` (and `SO_REUSEADDR`), not yet listening.
/// socket2 creates it close-on-exec, so a worker started later does not inherit it.
fn bind(addr: SocketAddr) -> io::Result<Socket> {
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, None)?;
    // SO_REUSEADDR: a restarted server may bind while old connections sit in TIME_WAIT.
    socket.set_reuse_address(true)?;
    // SO_REUSEPORT: other sockets with this option (of the same user) may bind here too.
    socket.set_reuse_port(true)?;
    socket.bind(&addr.into())?;
    Ok(socket)
}

/// A worker's own listening socket on `addr`, a member of the address's reuseport group.
pub fn listen(addr: SocketAddr) -> io::Result<TcpListener> {
    let socket = bind(addr)?;
    // The kernel caps the backlog at net.core.somaxconn, as in `common::bind`.
    socket.listen(libc::c_int::MAX)?;
    Ok(socket.into())
}

/// The supervisor's hold on the address: bound with `SO_REUSEPORT` but never listening,
/// so the kernel sends it no connections. It resolves port 0 to a real port once, for
/// every worker to bind, and keeps the port ours while a worker is being replaced.
pub fn reserve(addr: SocketAddr) -> io::Result<(Socket, SocketAddr)> {
    let socket = bind(addr)?;
    let local = socket
        .local_addr()?
        .as_socket()
        .ok_or_else(|| io::Error::other("bound to a non-IP address"))?;
    Ok((socket, local))
}

/// The event loop each worker runs (`--loop`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Loop {
    /// step06's: readiness from epoll, then a read and a write per message.
    Epoll,
    /// step09's: completions from io_uring, a multishot receive per connection.
    IoUring,
}

/// Why io_uring cannot run here, if it cannot: the supervisor asks once, before it starts
/// any worker. The trial ring is made and dropped on a thread of its own: the kernel's work
/// for a ring it tears down can interrupt its thread's next blocking call with `EINTR`.
pub fn io_uring_refused() -> Option<step09_io_uring::Unavailable> {
    let trial = std::thread::spawn(|| step09_io_uring::setup(1, 64).map(drop));
    trial
        .join()
        .expect("bug: the trial ring does not panic")
        .err()
}

/// Run as a worker: bind our own socket in the address's reuseport group, say so on stdout
/// (the pipe to the supervisor), and serve. Its memory lines (JSON, as the supervisor
/// passes `--json`) go to the supervisor through the same pipe.
pub fn work(addr: SocketAddr, opts: &Options, ws: &WsOptions, event_loop: Loop) -> io::Result<()> {
    // As step09 does: io_uring's rings and buffer pool before the bind, in the baseline;
    // its buffer ring at step09's default size, 4 MiB per worker.
    let uring = match event_loop {
        Loop::Epoll => None,
        Loop::IoUring => Some(
            step09_io_uring::setup(
                step09_io_uring::DEFAULT_RING_BUFFERS,
                step09_io_uring::DEFAULT_BUFFER_SIZE,
            )
            .map_err(|unavailable| io::Error::other(unavailable.to_string()))?,
        ),
    };
    // Each worker is its own process, with its own open-file limit to raise.
    common::raise_fd_limit()?;
    common::work::set_up(STEP, opts.work_us); // `--work-us`, measured in each worker
    let listener = listen(addr)?;
    // A line every period, so that the supervisor can tell a silent worker from a quiet one.
    let meter = MemoryMeter::new(STEP, opts).heartbeat();
    worker::say_listening(&listener, &meter)?;
    // The event loop: step06's, or step09's, each unchanged. Besides this match, only the
    // ring set up above and main.rs's check that io_uring runs here depend on which it is.
    match uring {
        None => step06_ws_epoll::serve(listener, meter, ws.config()),
        Some(uring) => step09_io_uring::serve(listener, meter, uring, ws.config()),
    }
}
