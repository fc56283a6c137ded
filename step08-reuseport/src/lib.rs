//! `cargo run --release -p step08-reuseport -- --workers 2`
//!
//! A loop per core. step06's epoll loop serves one core; this step runs it N times, in N
//! worker *processes*, each on its own listening socket bound to the same address with
//! `SO_REUSEPORT`, and lets the kernel spread new connections over them.
//!
//! Processes, not threads: the open-file limit (`RLIMIT_NOFILE`) is per process, and every
//! connection is a file. Threads share one fd table and so one limit; N processes have N.
//! Where the hard limit is 20 000 and cannot be raised, one process holds ~20 000
//! connections, and 56 workers hold a million.
//!
//! The supervisor (this process, started by the user) starts the workers by re-running
//! its own binary with a hidden `--worker` flag, reads their memory lines from a pipe,
//! prints one memory line for the whole server, and replaces a worker that dies or goes
//! silent.
//!
//! - `reuseport.rs`: binding many listening sockets to one address.
//! - `signals.rs`: Ctrl-C and SIGTERM stop every worker.
//! - step06's `serve`: the event loop each worker runs, unchanged; or with `--loop
//!   io-uring`, step09's.

mod reuseport;
mod signals;

use std::ffi::OsString;
use std::io::{self, BufRead, BufReader};
use std::net::SocketAddr;
use std::os::unix::process::CommandExt;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use common::{MemoryLine, MemoryMeter, Options, format_bytes};
use serde::Deserialize;
use step06_ws_epoll::WsOptions;

/// The name at the start of the memory line.
pub const STEP: &str = "step08-reuseport";

/// How long workers have to start listening, at start and after a restart.
const START_TIMEOUT: Duration = Duration::from_secs(10);

/// A worker that dies is replaced, but not sooner than this after its predecessor started:
/// a worker that cannot start at all must not be restarted in a tight loop.
const RESTART_DELAY: Duration = Duration::from_secs(1);

/// How long stopped workers get to exit after SIGTERM before they are killed.
const STOP_GRACE: Duration = Duration::from_millis(500);

/// A worker prints its memory line every report period, changed or not (a heartbeat). One
/// that says nothing for this many periods, and at least [`SILENCE_MIN`], is taken for
/// dead: stopped (SIGSTOP), stuck, or starved of CPU. Its socket still takes its share of
/// new connections, which nobody accepts, so it is killed and replaced.
const SILENT_PERIODS: u32 = 5;
const SILENCE_MIN: Duration = Duration::from_secs(3);

/// The event loop each worker runs (`--loop`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Loop {
    /// step06's: readiness from epoll, then a read and a write per message.
    Epoll,
    /// step09's: completions from io_uring, a multishot receive per connection.
    IoUring,
}

/// step09's buffer ring in each io_uring worker, at step09's defaults: 1024 buffers of
/// 4 KiB, 4 MiB per worker, in its baseline.
const RING_BUFFERS: u16 = 1024;
const BUFFER_SIZE: u32 = 4096;

/// Whether io_uring can run here, asked once by the supervisor before any worker starts:
/// the reason in one line if not. The trial ring is made and dropped on a thread of its
/// own: the kernel's work for a ring it tears down can interrupt its thread's next
/// blocking call with `EINTR`.
pub fn io_uring_refused() -> Option<step09_io_uring::Unavailable> {
    let trial = std::thread::spawn(|| step09_io_uring::setup(1, 64).map(drop));
    trial
        .join()
        .expect("bug: the trial ring does not panic")
        .err()
}

/// Run as a worker: bind our own socket in the address's reuseport group, say so on stdout
/// (the pipe to the supervisor), and serve with step06's loop, or step09's. Its memory
/// lines (JSON, as `--json` is always passed) go to the supervisor through the same pipe.
pub fn work(addr: SocketAddr, opts: &Options, ws: &WsOptions, event_loop: Loop) -> io::Result<()> {
    // As step09 does: the rings and the buffer pool before the bind, in the baseline.
    let uring = match event_loop {
        Loop::Epoll => None,
        Loop::IoUring => Some(
            step09_io_uring::setup(RING_BUFFERS, BUFFER_SIZE)
                .map_err(|unavailable| io::Error::other(unavailable.to_string()))?,
        ),
    };
    // Each worker is its own process, with its own open-file limit to raise.
    common::raise_fd_limit()?;
    let listener = reuseport::listen(addr)?;
    // A line every period, so that the supervisor can tell a silent worker from a quiet one.
    let meter = MemoryMeter::new(STEP, opts).heartbeat();
    let local = listener.local_addr()?;
    common::output::print(|_dropped| {
        let base = meter.base_rss();
        format!(r#"{{"event":"listening","addr":"{local}","base_rss_bytes":{base}}}"#)
    });
    match uring {
        None => step06_ws_epoll::serve(listener, meter, ws.config()),
        Some(uring) => step09_io_uring::serve(listener, meter, uring, ws.config()),
    }
}

/// What the supervisor is asked to run.
#[derive(Debug, Clone)]
pub struct Plan {
    /// Worker processes to keep running.
    pub workers: usize,
    /// The address they all listen on (port 0: one free port, picked once for all).
    pub addr: SocketAddr,
    /// `--report-every`, `--json`: how the supervisor prints its memory line.
    pub opts: Options,
    /// The arguments the supervisor was started with, passed on to every worker (so they
    /// get step06's options), followed by `--worker`.
    pub args: Vec<OsString>,
}

/// One line a worker printed.
#[derive(Debug, Deserialize)]
#[serde(tag = "event", rename_all = "lowercase")]
enum Report {
    Listening {
        base_rss_bytes: u64,
    },
    Memory {
        conns: usize,
        rss_bytes: u64,
        base_rss_bytes: u64,
        threads: usize,
    },
}

/// A worker's latest figures, from its last line.
#[derive(Debug, Clone, Copy)]
struct Figures {
    conns: usize,
    rss_bytes: u64,
    base_rss_bytes: u64,
    threads: usize,
}

impl From<Report> for Figures {
    fn from(report: Report) -> Figures {
        match report {
            Report::Listening { base_rss_bytes } => Figures {
                conns: 0,
                rss_bytes: base_rss_bytes,
                base_rss_bytes,
                threads: 1,
            },
            Report::Memory {
                conns,
                rss_bytes,
                base_rss_bytes,
                threads,
            } => Figures {
                conns,
                rss_bytes,
                base_rss_bytes,
                threads,
            },
        }
    }
}

/// What the thread reading a worker's pipe leaves for the supervisor: one slot, which
/// each line overwrites. The latest line of each worker is all the supervisor needs, so
/// however far behind it falls, it holds one line per worker, never a backlog.
#[derive(Debug, Default)]
struct Latest {
    /// From the worker's last line; `None` until it listens.
    figures: Option<Figures>,
    /// When that line came.
    heard: Option<Instant>,
}

/// A running worker process.
struct Worker {
    child: Child,
    started: Instant,
    /// Filled by the thread that reads the worker's stdout.
    latest: Arc<Mutex<Latest>>,
    /// Killed for its silence, not reaped yet.
    killed: bool,
}

impl Worker {
    /// The worker's latest line, as the reading thread left it.
    fn latest(&self) -> std::sync::MutexGuard<'_, Latest> {
        // A reading thread that panicked mid-update left figures that are still figures.
        self.latest.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// One of the N places a worker runs in; empty between a death and the replacement.
struct Slot {
    worker: Option<Worker>,
    /// When the replacement may start.
    restart_at: Option<Instant>,
}

struct Supervisor {
    plan: Plan,
    /// The address every worker binds, port resolved.
    addr: SocketAddr,
    slots: Vec<Slot>,
}

/// Start the workers, print one memory line for all of them, replace any that dies or goes
/// silent, and stop them all on SIGINT or SIGTERM.
///
/// Nothing here waits on output: lines go out through `common::output`, which drops them
/// when stdout has no room, and the workers' lines come in through one slot per worker.
pub fn supervise(plan: Plan) -> io::Result<()> {
    let limit = common::raise_fd_limit()?;
    let per_worker = limit.soft.saturating_sub(32);
    common::log!("{STEP}: {limit}");
    common::log!(
        "{STEP}: the limit is per process: {} workers may hold {} × {per_worker} connections",
        plan.workers,
        plan.workers
    );
    // The supervisor's hold on the port; it never listens (see reuseport::reserve).
    let (_reserved, addr) = match reuseport::reserve(plan.addr) {
        Ok(reserved) => reserved,
        Err(err) => {
            common::log!("{STEP}: cannot listen on {}: {err}", plan.addr);
            std::process::exit(1);
        }
    };
    signals::install()?;
    let mut supervisor = Supervisor {
        slots: Vec::new(),
        addr,
        plan,
    };
    let result = supervisor.run();
    supervisor.stop_all();
    result
}

impl Supervisor {
    fn run(&mut self) -> io::Result<()> {
        for i in 0..self.plan.workers {
            let worker = self.spawn(i)?;
            self.slots.push(Slot {
                worker: Some(worker),
                restart_at: None,
            });
        }
        self.wait_all_listening()?;
        let addr = self.addr;
        common::output::print(|_dropped| match self.plan.opts.json {
            true => format!(r#"{{"event":"listening","addr":"{addr}"}}"#),
            false => format!("listening on {addr}"),
        });

        let period = self.plan.opts.report_every();
        let silence = (period * SILENT_PERIODS).max(SILENCE_MIN);
        let mut last_printed: Option<(usize, usize)> = None;
        let mut last_tried: Option<Instant> = None;
        while !signals::stop_requested() {
            std::thread::sleep(period.min(Duration::from_millis(100)));
            self.kill_the_silent(silence);
            self.replace_the_dead()?;

            let (workers, line) = self.memory_line();
            let changed = last_printed.is_none_or(|(c, w)| c != line.conns || w != workers);
            let due = last_tried.is_none_or(|at| at.elapsed() >= period);
            if changed && due && (line.conns > 0 || last_printed.is_some()) {
                last_tried = Some(Instant::now());
                // A line that stdout had no room for is tried again a period later.
                if self.print(workers, &line) {
                    last_printed = Some((line.conns, workers));
                }
            }
        }
        Ok(())
    }

    /// Start a worker in slot `i`: this binary again, with `--worker`.
    fn spawn(&mut self, i: usize) -> io::Result<Worker> {
        let exe = std::env::current_exe()?;
        let mut command = Command::new(exe);
        command
            .args(&self.plan.args)
            .args(["--worker", "--json", "--addr", &self.addr.to_string()])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit());
        // SAFETY: runs in the forked child before exec; prctl is async-signal-safe and
        // takes no pointers. PR_SET_PDEATHSIG: if the supervisor dies without stopping its
        // workers (kill -9), the kernel sends each of them SIGTERM, so none is orphaned.
        unsafe {
            command.pre_exec(|| {
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM) == -1 {
                    return Err(io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let mut child = command.spawn()?;
        let stdout = child.stdout.take().expect("bug: stdout is piped");
        let latest = Arc::new(Mutex::new(Latest::default()));
        let slot = Arc::clone(&latest);
        std::thread::Builder::new()
            .name(format!("worker-{i}"))
            .stack_size(64 * 1024)
            .spawn(move || {
                // Ends when the worker exits: end of file on its pipe.
                for line in BufReader::new(stdout).lines() {
                    let Ok(line) = line else { break };
                    // Lines we do not know are not ours to act on.
                    if let Ok(report) = serde_json::from_str::<Report>(&line) {
                        let mut latest = slot.lock().unwrap_or_else(PoisonError::into_inner);
                        latest.figures = Some(report.into());
                        latest.heard = Some(Instant::now());
                    }
                }
            })?;
        Ok(Worker {
            child,
            started: Instant::now(),
            latest,
            killed: false,
        })
    }

    fn wait_all_listening(&mut self) -> io::Result<()> {
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            std::thread::sleep(Duration::from_millis(50));
            if self.slots.iter().all(|s| {
                s.worker
                    .as_ref()
                    .is_some_and(|w| w.latest().figures.is_some())
            }) {
                return Ok(());
            }
            for (i, slot) in self.slots.iter_mut().enumerate() {
                let Some(worker) = slot.worker.as_mut() else {
                    continue;
                };
                if let Some(status) = worker.child.try_wait()? {
                    return Err(io::Error::other(format!(
                        "worker {i} exited before listening ({status})"
                    )));
                }
            }
            if signals::stop_requested() {
                return Ok(());
            }
            if Instant::now() >= deadline {
                return Err(io::Error::other(format!(
                    "the workers did not all listen within {START_TIMEOUT:?}"
                )));
            }
        }
    }

    /// Kill a worker that has said nothing for `silence` since its last line: it is not
    /// serving, yet the kernel goes on queueing new connections on its socket. The kernel
    /// has no health check for a `SO_REUSEPORT` listener: this heartbeat is ours. The
    /// connections waiting in its queue are lost with it (reset when its socket closes).
    fn kill_the_silent(&mut self, silence: Duration) {
        for (i, slot) in self.slots.iter_mut().enumerate() {
            let Some(worker) = slot.worker.as_mut().filter(|w| !w.killed) else {
                continue;
            };
            // Until its first line, a worker is starting: START_TIMEOUT covers that.
            let Some(heard) = worker.latest().heard else {
                continue;
            };
            if heard.elapsed() < silence {
                continue;
            }
            let pid = worker.child.id();
            common::log!(
                "{STEP}: worker {i} (pid {pid}) said nothing for {:.1} s ({}); killing it, \
                 and the connections waiting in its accept queue with it; a replacement follows",
                heard.elapsed().as_secs_f64(),
                state_of(pid)
            );
            // SIGKILL ends a stopped process too. Reaped by `replace_the_dead`.
            let _ = worker.child.kill();
            worker.killed = true;
        }
    }

    /// Reap workers that exited, say so, and start their replacements when due.
    fn replace_the_dead(&mut self) -> io::Result<()> {
        for i in 0..self.slots.len() {
            // Stopping: every worker gets SIGTERM anyway (Ctrl-C sends SIGINT to all of them).
            if signals::stop_requested() {
                return Ok(());
            }
            let slot = &mut self.slots[i];
            if let Some(worker) = slot.worker.as_mut()
                && let Some(status) = worker.child.try_wait()?
            {
                common::log!(
                    "{STEP}: worker {i} (pid {}) {}; its connections are gone, the other \
                     workers' are not; starting a replacement",
                    worker.child.id(),
                    describe(status)
                );
                slot.restart_at = Some((worker.started + RESTART_DELAY).max(Instant::now()));
                slot.worker = None;
            }
            if slot.restart_at.is_some_and(|at| Instant::now() >= at) {
                slot.restart_at = None;
                match self.spawn(i) {
                    Ok(worker) => self.slots[i].worker = Some(worker),
                    Err(err) => {
                        common::log!("{STEP}: cannot start worker {i}: {err}; trying again");
                        self.slots[i].restart_at = Some(Instant::now() + RESTART_DELAY);
                    }
                }
            }
        }
        Ok(())
    }

    /// The whole server's memory line: sums over the listening workers, so per-conn is
    /// (Σ rss − Σ base) / Σ conns. Returns how many workers it covers.
    fn memory_line(&self) -> (usize, MemoryLine) {
        let figures: Vec<Figures> = self
            .slots
            .iter()
            .filter_map(|s| s.worker.as_ref()?.latest().figures)
            .collect();
        let line = MemoryLine::new(
            STEP,
            figures.iter().map(|f| f.conns).sum(),
            figures.iter().map(|f| f.rss_bytes).sum(),
            figures.iter().map(|f| f.base_rss_bytes).sum(),
            figures.iter().map(|f| f.threads).sum(),
        );
        (figures.len(), line)
    }

    /// Print the memory line, with the worker count and the supervisor's own resident set
    /// (not part of the sums: it holds no connection). Without waiting: returns whether
    /// stdout had room for it.
    fn print(&self, workers: usize, line: &MemoryLine) -> bool {
        let supervisor = common::rss_bytes();
        common::output::print(|dropped| {
            let line = MemoryLine {
                dropped,
                ..line.clone()
            };
            self.format(workers, &line, supervisor)
        })
    }

    fn format(&self, workers: usize, line: &MemoryLine, supervisor: u64) -> String {
        if self.plan.opts.json {
            let json = line.to_json();
            let object = json
                .strip_suffix('}')
                .expect("bug: a JSON object ends in }");
            format!(r#"{object},"workers":{workers},"supervisor_rss_bytes":{supervisor}}}"#)
        } else {
            let line = line.to_string();
            let figures = line.strip_prefix(STEP).unwrap_or(&line);
            format!(
                "{STEP}  workers {workers}{figures}  supervisor {}",
                format_bytes(supervisor)
            )
        }
    }

    /// SIGTERM to every worker, by its pid; SIGKILL to any still there after the grace.
    fn stop_all(&mut self) {
        let mut workers: Vec<Worker> = self
            .slots
            .iter_mut()
            .filter_map(|s| s.worker.take())
            .collect();
        for worker in &workers {
            // SAFETY: kill takes no pointers; the pid is our own unreaped child, so it
            // cannot have been reused by another process.
            unsafe { libc::kill(worker.child.id() as libc::pid_t, libc::SIGTERM) };
        }
        let deadline = Instant::now() + STOP_GRACE;
        while !workers.is_empty() && Instant::now() < deadline {
            workers.retain_mut(|w| matches!(w.child.try_wait(), Ok(None)));
            std::thread::sleep(Duration::from_millis(20));
        }
        for mut worker in workers {
            let _ = worker.child.kill();
            let _ = worker.child.wait();
        }
    }
}

/// `was killed by signal 9 (SIGKILL)`, `exited with status 1`.
fn describe(status: ExitStatus) -> String {
    use std::os::unix::process::ExitStatusExt;
    match (status.code(), status.signal()) {
        (Some(code), _) => format!("exited with status {code}"),
        (None, Some(signal)) => format!("was killed by signal {signal}"),
        (None, None) => format!("ended ({status})"),
    }
}

/// Why a process may be silent, from its state in /proc/PID/stat.
fn state_of(pid: u32) -> &'static str {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let state = stat
        .rfind(')')
        .and_then(|i| stat[i + 1..].split_whitespace().next());
    match state {
        Some("T") => "stopped by a signal",
        Some("t") => "stopped by a debugger",
        Some("R") => "running: stuck in a loop, or starved of CPU",
        Some("S" | "D") => "asleep in a system call",
        _ => "state unknown",
    }
}
