//! The supervisor supervises whatever its stdout does: with stdout a pipe nobody reads, a
//! killed worker is still replaced, SIGTERM still stops everything, and the workers' lines
//! do not pile up in the supervisor. And a worker that stops (SIGSTOP) is noticed by its
//! silence and replaced.

mod support;

use std::net::TcpStream;
use std::thread;
use std::time::{Duration, Instant};

use common::children_of;
use stepcheck::{PATIENCE, Server, Watch, step_command, tcp, ws};
use support::signal;

const BIN: &str = env!("CARGO_BIN_EXE_step08-reuseport");

/// Wait until `done()` holds, for at most PATIENCE; `what` says what was awaited.
fn wait_until(server: &Server, what: &str, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + PATIENCE;
    while !done() {
        assert!(
            Instant::now() < deadline,
            "{what}: not within {PATIENCE:?}; stderr:\n{}",
            server.stderr()
        );
        thread::sleep(Duration::from_millis(50));
    }
}

/// Open a connection, hold it a few report periods, close it: the supervisor's count
/// changes, so it tries to print (and, on a full stdout, finds no room).
fn change_the_count(server: &Server) {
    let held = server.connect();
    thread::sleep(Duration::from_millis(300));
    drop(held);
    thread::sleep(Duration::from_millis(300));
}

/// With its stdout full, the supervisor still replaces a worker killed with SIGKILL, and
/// SIGTERM still stops it and every worker. Breaks if the supervisor waits in `write` for
/// room in the pipe: the dead worker then stays a zombie and SIGTERM is never acted on.
#[test]
fn a_killed_worker_is_replaced_and_sigterm_obeyed_while_stdout_is_full() {
    let mut server = Server::start(BIN, &["--workers", "2"]);
    server.stop_reading_stdout();
    change_the_count(&server);

    let workers = children_of(server.pid());
    assert_eq!(workers.len(), 2, "stderr:\n{}", server.stderr());
    let victim = workers[0];
    signal(victim, libc::SIGKILL);
    wait_until(&server, "the killed worker reaped and replaced", || {
        let now = children_of(server.pid());
        now.len() == 2 && !now.contains(&victim)
    });
    ws::connect(&server);

    let workers = children_of(server.pid());
    signal(server.pid(), libc::SIGTERM);
    let deadline = Instant::now() + PATIENCE;
    while server.is_running() {
        assert!(
            Instant::now() < deadline,
            "the supervisor ignored SIGTERM for {PATIENCE:?} with its stdout full"
        );
        thread::sleep(Duration::from_millis(20));
    }
    let left: Vec<u32> = workers
        .into_iter()
        .filter(|pid| std::path::Path::new(&format!("/proc/{pid}")).exists())
        .collect();
    assert!(
        left.is_empty(),
        "workers left running after SIGTERM: {left:?}"
    );
}

/// With its stdout full and eight workers printing a line every 10 ms (connections come
/// and go all the while), the supervisor keeps the latest line of each worker and no
/// backlog: its own memory stays put. Measured over the 8 s: 0 KiB; a supervisor that
/// queued the lines in a channel without a bound grew by 270–300 KiB.
#[test]
fn the_supervisor_keeps_no_backlog_of_lines_while_stdout_is_full() {
    let command = step_command(BIN, "0.01", &["--workers", "8"]);
    let server = Server::try_start(command, Watch::default()).unwrap_or_else(|e| panic!("{e}"));
    server.stop_reading_stdout();

    // A connection opened every millisecond or so, each reset (which leaves no TIME_WAIT
    // to use up ports) once 64 newer ones are open: every worker's count changes between
    // any two of its reports. At most 20 000 of them, and for a bounded time.
    let churn = |how_long: Duration| {
        let started = Instant::now();
        let mut open = std::collections::VecDeque::new();
        for _ in 0..20_000 {
            if started.elapsed() > how_long {
                break;
            }
            if let Ok(stream) = TcpStream::connect(server.addr) {
                open.push_back(stream);
            }
            if open.len() > 64 {
                tcp::reset(open.pop_front().unwrap());
            }
            thread::sleep(Duration::from_millis(1));
        }
        open.into_iter().for_each(tcp::reset);
    };
    churn(Duration::from_secs(1));
    let before = common::anon_rss_bytes(server.pid()).unwrap();
    churn(Duration::from_secs(8));
    let after = common::anon_rss_bytes(server.pid()).unwrap();
    let grown = after.saturating_sub(before);
    assert!(
        grown < 64 << 10,
        "the supervisor grew by {grown} bytes in 8 s while its stdout was full: lines pile up"
    );
}

/// A worker stopped with SIGSTOP says nothing: after a few report periods (3 s at least)
/// the supervisor says so on stderr, kills it, and starts a replacement, which serves.
/// Breaks if the supervisor waits for a stopped worker to exit, which it never does:
/// meanwhile the kernel goes on queueing a share of new connections on its socket.
#[test]
fn a_stopped_worker_is_noticed_and_replaced() {
    let server = Server::start(BIN, &["--workers", "2"]);
    let workers = children_of(server.pid());
    assert_eq!(workers.len(), 2, "stderr:\n{}", server.stderr());
    let stopped = workers[0];
    signal(stopped, libc::SIGSTOP);
    // If the check fails, let the stopped worker go on, so that it ends with the supervisor.
    let _resume = Resume(server.pid(), stopped);

    wait_until(&server, "the stopped worker replaced", || {
        let now = children_of(server.pid());
        now.len() == 2 && !now.contains(&stopped)
    });
    let said = format!("(pid {stopped}) said nothing for");
    assert!(
        server.stderr().contains(&said),
        "stderr:\n{}",
        server.stderr()
    );
    // Fresh clients land on both sockets of the group, the replacement's too.
    for _ in 0..20 {
        ws::connect(&server);
    }
}

/// SIGCONT to a stopped worker, if it is still one of the supervisor's children.
struct Resume(u32, u32);

impl Drop for Resume {
    fn drop(&mut self) {
        let Resume(supervisor, worker) = *self;
        if children_of(supervisor).contains(&worker) {
            signal(worker, libc::SIGCONT);
        }
    }
}
