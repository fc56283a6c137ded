//! The supervisor: the process the user starts. It holds the port, starts the workers,
//! prints one memory line for all of them, replaces a worker that dies or goes silent, and
//! stops them all on SIGINT or SIGTERM.
//!
//! Nothing here waits on output: lines go out through `common::output`, which drops them
//! when stdout has no room, and the workers' lines come in through one slot per worker
//! (see `worker.rs`).

use std::ffi::OsString;
use std::io;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use common::{MemoryLine, Options};

use crate::total::Total;
use crate::worker::{Worker, describe, state_of};
use crate::{STEP, signals};

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

/// What the supervisor is asked to run.
#[derive(Debug, Clone)]
pub struct Plan {
    /// Worker processes to keep running.
    pub workers: usize,
    /// The address they all listen on (port 0: one free port, picked once for all).
    pub addr: SocketAddr,
    /// `--report-every`, `--json`: how the supervisor prints its memory line.
    pub opts: Options,
    /// The arguments the supervisor was started with, passed on to every worker: every
    /// option reaches every worker, step06's included, with no list to keep here.
    pub args: Vec<OsString>,
}

/// Start the workers, print one memory line for all of them, replace any that dies or goes
/// silent, and stop them all on SIGINT or SIGTERM.
pub fn supervise(plan: Plan) -> io::Result<()> {
    let limit = common::raise_fd_limit()?;
    let per_worker = limit.soft.saturating_sub(32);
    common::log!("{STEP}: {limit}");
    common::log!(
        "{STEP}: the limit is per process: {} workers may hold {} × {per_worker} connections",
        plan.workers,
        plan.workers
    );
    // The supervisor's hold on the port; it never listens (see `reserve`).
    let (_reserved, addr) = match crate::reserve(plan.addr) {
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

struct Supervisor {
    plan: Plan,
    /// The address every worker binds, port resolved.
    addr: SocketAddr,
    /// Worker `i` runs in slot `i`, and its replacements after it.
    slots: Vec<Slot>,
}

/// One of the N places a worker runs in; empty between a death and the replacement.
struct Slot {
    worker: Option<Worker>,
    /// When the replacement may start.
    restart_at: Option<Instant>,
}

impl Supervisor {
    fn run(&mut self) -> io::Result<()> {
        for i in 0..self.plan.workers {
            let worker = Worker::spawn(i, &self.plan.args, self.addr)?;
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

            let total = self.total();
            let now = (total.line.conns, total.workers);
            let changed = last_printed != Some(now);
            let due = last_tried.is_none_or(|at| at.elapsed() >= period);
            if changed && due && (total.line.conns > 0 || last_printed.is_some()) {
                last_tried = Some(Instant::now());
                // A line that stdout had no room for is tried again a period later.
                if self.print(total) {
                    last_printed = Some(now);
                }
            }
        }
        Ok(())
    }

    fn wait_all_listening(&mut self) -> io::Result<()> {
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            std::thread::sleep(Duration::from_millis(50));
            let listening = |s: &Slot| s.worker.as_ref().is_some_and(|w| w.heard().is_some());
            if self.slots.iter().all(listening) {
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
            let Some(heard) = worker.heard() else {
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
        for (i, slot) in self.slots.iter_mut().enumerate() {
            // Stopping: every worker gets SIGTERM anyway (Ctrl-C sends SIGINT to all of them).
            if signals::stop_requested() {
                return Ok(());
            }
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
                match Worker::spawn(i, &self.plan.args, self.addr) {
                    Ok(worker) => slot.worker = Some(worker),
                    Err(err) => {
                        common::log!("{STEP}: cannot start worker {i}: {err}; trying again");
                        slot.restart_at = Some(Instant::now() + RESTART_DELAY);
                    }
                }
            }
        }
        Ok(())
    }

    /// The whole server's memory line, over the workers that listen.
    fn total(&self) -> Total {
        let lines: Vec<MemoryLine> = self
            .slots
            .iter()
            .filter_map(|s| s.worker.as_ref()?.line())
            .collect();
        Total::sum(&lines, common::rss_bytes())
    }

    /// Print the memory line without waiting: returns whether stdout had room for it.
    fn print(&self, mut total: Total) -> bool {
        common::output::print(|dropped| {
            total.line.dropped = dropped;
            total.format(self.plan.opts.json)
        })
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
