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
//! prints one memory line for the whole server, and replaces a worker that dies.
//!
//! - `reuseport.rs`: binding many listening sockets to one address.
//! - `signals.rs`: Ctrl-C and SIGTERM stop every worker.
//! - step06's `serve`: the event loop each worker runs, unchanged.

mod reuseport;
mod signals;

use std::ffi::OsString;
use std::io::{self, BufRead, BufReader, Write};
use std::net::SocketAddr;
use std::os::unix::process::CommandExt;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, Sender};
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
const STOP_GRACE: Duration = Duration::from_secs(2);

/// Run as a worker: bind our own socket in the address's reuseport group, say so on stdout
/// (the pipe to the supervisor), and serve with step06's loop. Its memory lines (JSON, as
/// `--json` is always passed) go to the supervisor through the same pipe.
pub fn work(addr: SocketAddr, opts: &Options, ws: &WsOptions) -> io::Result<()> {
    // Each worker is its own process, with its own open-file limit to raise.
    common::raise_fd_limit()?;
    let listener = reuseport::listen(addr)?;
    let meter = MemoryMeter::new(STEP, opts);
    println!(
        r#"{{"event":"listening","addr":"{}","base_rss_bytes":{}}}"#,
        listener.local_addr()?,
        meter.base_rss()
    );
    step06_ws_epoll::serve(listener, meter, ws.config())
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

/// A running worker process.
struct Worker {
    child: Child,
    /// Numbers the workers started in this slot, so that a late line from a dead worker's
    /// pipe is not taken for its replacement's.
    generation: u64,
    started: Instant,
    /// `None` until it listens.
    figures: Option<Figures>,
}

/// One of the N places a worker runs in; empty between a death and the replacement.
struct Slot {
    worker: Option<Worker>,
    /// When the replacement may start.
    restart_at: Option<Instant>,
}

/// A line from worker `slot`, generation `generation`.
type Message = (usize, u64, Report);

struct Supervisor {
    plan: Plan,
    /// The address every worker binds, port resolved.
    addr: SocketAddr,
    slots: Vec<Slot>,
    generations: u64,
    sender: Sender<Message>,
    receiver: Receiver<Message>,
}

/// Start the workers, print one memory line for all of them, replace any that dies, and
/// stop them all on SIGINT or SIGTERM.
pub fn supervise(plan: Plan) -> io::Result<()> {
    let limit = common::raise_fd_limit()?;
    let per_worker = limit.soft.saturating_sub(32);
    eprintln!("{STEP}: {limit}");
    eprintln!(
        "{STEP}: the limit is per process: {} workers may hold {} × {per_worker} connections",
        plan.workers, plan.workers
    );
    // The supervisor's hold on the port; it never listens (see reuseport::reserve).
    let (_reserved, addr) = match reuseport::reserve(plan.addr) {
        Ok(reserved) => reserved,
        Err(err) => {
            eprintln!("{STEP}: cannot listen on {}: {err}", plan.addr);
            std::process::exit(1);
        }
    };
    signals::install()?;
    let (sender, receiver) = mpsc::channel();
    let mut supervisor = Supervisor {
        slots: Vec::new(),
        generations: 0,
        addr,
        plan,
        sender,
        receiver,
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
        if self.plan.opts.json {
            say(&format!(
                r#"{{"event":"listening","addr":"{}"}}"#,
                self.addr
            ));
        } else {
            say(&format!("listening on {}", self.addr));
        }

        let period = self.plan.opts.report_every();
        let mut last_printed: Option<(usize, usize, Instant)> = None;
        while !signals::stop_requested() {
            self.receive(period.min(Duration::from_millis(100)));
            self.replace_the_dead()?;

            let (workers, line) = self.memory_line();
            let changed = last_printed.is_none_or(|(c, w, _)| c != line.conns || w != workers);
            let due = last_printed.is_none_or(|(_, _, at)| at.elapsed() >= period);
            if changed && due && (line.conns > 0 || last_printed.is_some()) {
                self.print(workers, &line);
                last_printed = Some((line.conns, workers, Instant::now()));
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
        self.generations += 1;
        let generation = self.generations;
        let stdout = child.stdout.take().expect("bug: stdout is piped");
        let sender = self.sender.clone();
        std::thread::Builder::new()
            .name(format!("worker-{i}"))
            .stack_size(64 * 1024)
            .spawn(move || {
                for line in BufReader::new(stdout).lines() {
                    let Ok(line) = line else { break };
                    // Lines we do not know are not ours to act on.
                    if let Ok(report) = serde_json::from_str::<Report>(&line)
                        && sender.send((i, generation, report)).is_err()
                    {
                        break;
                    }
                }
            })?;
        Ok(Worker {
            child,
            generation,
            started: Instant::now(),
            figures: None,
        })
    }

    /// Take the workers' lines for up to `wait`.
    fn receive(&mut self, wait: Duration) {
        let mut next = self.receiver.recv_timeout(wait);
        loop {
            match next {
                Ok((i, generation, report)) => {
                    if let Some(worker) = self.slots[i]
                        .worker
                        .as_mut()
                        .filter(|w| w.generation == generation)
                    {
                        worker.figures = Some(match report {
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
                        });
                    }
                }
                Err(RecvTimeoutError::Timeout | RecvTimeoutError::Disconnected) => return,
            }
            next = self
                .receiver
                .try_recv()
                .map_err(|_| RecvTimeoutError::Timeout);
        }
    }

    fn wait_all_listening(&mut self) -> io::Result<()> {
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            self.receive(Duration::from_millis(50));
            if self
                .slots
                .iter()
                .all(|s| s.worker.as_ref().is_some_and(|w| w.figures.is_some()))
            {
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

    /// Reap workers that exited, say so, and start their replacements when due.
    fn replace_the_dead(&mut self) -> io::Result<()> {
        for i in 0..self.slots.len() {
            let slot = &mut self.slots[i];
            if let Some(worker) = slot.worker.as_mut()
                && let Some(status) = worker.child.try_wait()?
            {
                eprintln!(
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
                        eprintln!("{STEP}: cannot start worker {i}: {err}; trying again");
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
            .filter_map(|s| s.worker.as_ref()?.figures)
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
    /// (not part of the sums: it holds no connection).
    fn print(&self, workers: usize, line: &MemoryLine) {
        let supervisor = common::rss_bytes();
        let text = if self.plan.opts.json {
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
        };
        say(&text);
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

/// A line on stdout. A reader that went away (`| head -1`) must not take the server
/// down: the line is lost, nothing else.
fn say(line: &str) {
    let _ = writeln!(io::stdout(), "{line}");
}
