//! Many worker processes, cheaply: with 200 open files allowed per process, 1 000
//! connections need at least five workers. Every connection echoes, the one memory line
//! counts them all, a killed worker is replaced while the others keep serving, and SIGTERM
//! leaves no worker behind. With either loop in the workers: step06's epoll, or step09's
//! io_uring (skipped, saying why, where io_uring is refused; failed under CI).

mod support;

use std::time::{Duration, Instant};

use common::{children_of, fd_targets};
use indicatif::ProgressBar;
use loadgen::{ConnectOptions, Pace, Pool, Target};
use stepcheck::{PATIENCE, Server};
use support::signal;

const BIN: &str = env!("CARGO_BIN_EXE_step08-reuseport");

/// Open files allowed to the supervisor and each worker (soft and hard, so none can raise it).
const FD_LIMIT: u64 = 200;
const WORKERS: usize = 8;
const CONNS: usize = 1000;

/// Sockets open in process `pid`.
fn sockets_of(pid: u32) -> usize {
    let targets = fd_targets(pid).expect("the worker's /proc fd list");
    targets.iter().filter(|t| t.starts_with("socket:")).count()
}

/// Whether process `pid` holds an io_uring instance: an fd on `anon_inode:[io_uring]`.
fn has_io_uring(pid: u32) -> bool {
    let targets = fd_targets(pid).expect("the worker's /proc fd list");
    targets.iter().any(|t| t.contains("io_uring"))
}

/// A memory line for `conns` connections and `workers` workers, within PATIENCE.
fn wait_for_line(server: &Server, conns: u64, workers: u64) -> serde_json::Value {
    let deadline = Instant::now() + PATIENCE;
    let mut last = None;
    while let Some(left) = deadline.checked_duration_since(Instant::now()) {
        let Some(line) = server.next_line(left) else {
            break;
        };
        let line: serde_json::Value = serde_json::from_str(&line.text).expect("a JSON line");
        if line["event"] == "memory" && line["conns"] == conns && line["workers"] == workers {
            return line;
        }
        last = Some(line);
    }
    panic!(
        "no memory line with conns {conns} and workers {workers}; last: {last:?}; stderr:\n{}",
        server.stderr()
    );
}

/// Open `n` WebSocket connections from this process (its own limit is the machine's).
async fn open(server: &Server, n: usize) -> Pool {
    let target: Target = format!("ws://{}/", server.addr).parse().unwrap();
    let mut pool = Pool::new(ConnectOptions::new(target));
    pool.grow_to(n, Pace::default(), &ProgressBar::hidden())
        .await;
    assert_eq!(
        pool.len(),
        n,
        "failed: {}; stderr:\n{}",
        pool.failures.short(),
        server.stderr()
    );
    pool
}

/// 1 000 connections over eight epoll workers of 200 fds each: all echo, all are counted,
/// and a worker killed with SIGKILL takes only its own connections with it.
#[tokio::test(flavor = "current_thread")]
async fn a_thousand_connections_over_workers_that_each_hold_two_hundred() {
    a_thousand_over_workers("epoll").await;
}

/// The same over eight io_uring workers (step09's loop in each): all echo, all are counted,
/// and killing one leaves the others serving.
#[tokio::test(flavor = "current_thread")]
async fn a_thousand_connections_over_io_uring_workers() {
    if support::io_uring_available() {
        a_thousand_over_workers("io-uring").await;
    }
}

async fn a_thousand_over_workers(event_loop: &str) {
    let workers = WORKERS.to_string();
    let mut server = Server::start_with_fd_limit(
        BIN,
        &["--workers", &workers, "--loop", event_loop],
        FD_LIMIT,
    );
    let worker_pids = children_of(server.pid());
    assert_eq!(worker_pids.len(), WORKERS, "stderr:\n{}", server.stderr());
    let on_io_uring: Vec<bool> = worker_pids.iter().map(|&pid| has_io_uring(pid)).collect();
    assert_eq!(
        on_io_uring,
        vec![event_loop == "io-uring"; WORKERS],
        "every worker runs the loop asked for ({event_loop})"
    );

    let mut pool = open(&server, CONNS).await;
    let all = pool.echo_each(0, 32, PATIENCE).await;
    assert_eq!(all.ok, CONNS, "not every connection echoed: {all}");
    let line = wait_for_line(&server, CONNS as u64, WORKERS as u64);
    let per_worker: Vec<usize> = worker_pids.iter().map(|&pid| sockets_of(pid) - 1).collect();
    assert_eq!(per_worker.iter().sum::<usize>(), CONNS, "{per_worker:?}");
    assert!(
        per_worker.iter().all(|&n| n < FD_LIMIT as usize),
        "a worker holds more than its limit allows: {per_worker:?}"
    );
    assert!(line["supervisor_rss_bytes"].as_u64() > Some(0), "{line}");

    // Kill one worker; its connections are lost, the others' are not.
    let (victim, lost) = (worker_pids[0], per_worker[0]);
    signal(victim, libc::SIGKILL);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let after = pool.echo_each(0, 32, Duration::from_secs(5)).await;
    assert_eq!(
        after.ok,
        CONNS - lost,
        "the surviving workers' connections: {after}"
    );
    assert!(server.is_running(), "the supervisor died with its worker");

    // The supervisor said so, with the status, and started a replacement.
    let deadline = Instant::now() + PATIENCE;
    while !server
        .stderr()
        .contains(&format!("(pid {victim}) was killed by signal 9"))
    {
        assert!(
            Instant::now() < deadline,
            "no word of the dead worker; stderr:\n{}",
            server.stderr()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    wait_for_line(&server, (CONNS - lost) as u64, WORKERS as u64);
    // New connections are served, on the replacement too.
    let mut fresh = open(&server, 100).await;
    let echoed = fresh.echo_each(0, 32, PATIENCE).await;
    assert_eq!(echoed.ok, 100, "new connections after the death: {echoed}");
    pool.close();
    fresh.close();
}

/// SIGTERM to the supervisor stops every worker: none is left running.
#[test]
fn sigterm_leaves_no_worker_behind() {
    let mut server = Server::start(BIN, &["--workers", "3"]);
    let workers = children_of(server.pid());
    assert_eq!(workers.len(), 3);
    signal(server.pid(), libc::SIGTERM);
    let deadline = Instant::now() + PATIENCE;
    while server.is_running() {
        assert!(Instant::now() < deadline, "the supervisor ignored SIGTERM");
        std::thread::sleep(Duration::from_millis(20));
    }
    // Workers are the supervisor's children, reaped by it before it exits: no /proc entry.
    let left: Vec<u32> = workers
        .into_iter()
        .filter(|pid| std::path::Path::new(&format!("/proc/{pid}")).exists())
        .collect();
    assert!(
        left.is_empty(),
        "workers left running after SIGTERM: {left:?}"
    );
}
