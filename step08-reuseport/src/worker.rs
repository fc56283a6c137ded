//! One worker, seen from the supervisor: this binary run again with `--worker`, its stdout a
//! pipe to the supervisor. A thread per worker reads that pipe and keeps only the worker's
//! latest line, in one slot: however far behind the supervisor falls, it holds one line per
//! worker, never a backlog, and it never waits for one.

use std::ffi::OsString;
use std::io::{self, BufRead, BufReader};
use std::net::{SocketAddr, TcpListener};
use std::os::unix::process::CommandExt;
use std::process::{Child, ChildStdout, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Instant;

use common::{MemoryLine, MemoryMeter};
use serde::{Deserialize, Serialize};

use crate::STEP;

/// A line a worker prints on its pipe.
#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "event", rename_all = "lowercase")]
enum WorkerLine {
    /// Printed once, when its socket listens: `{"event":"listening","addr":…,
    /// "base_rss_bytes":…}`.
    Listening {
        addr: SocketAddr,
        /// Its resident set before the first connection.
        base_rss_bytes: u64,
    },
    /// Its memory line, printed by the meter every report period (a heartbeat).
    Memory(MemoryLine),
}

/// In the worker: tell the supervisor that our socket listens, and our baseline.
pub(crate) fn say_listening(listener: &TcpListener, meter: &MemoryMeter) -> io::Result<()> {
    let line = WorkerLine::Listening {
        addr: listener.local_addr()?,
        base_rss_bytes: meter.base_rss(),
    };
    let json = serde_json::to_string(&line).expect("bug: an address and a number serialize");
    common::output::print(|_dropped| json);
    Ok(())
}

/// A running worker process.
pub(crate) struct Worker {
    /// The process: its pid, and its exit status once it ends.
    pub child: Child,
    /// A replacement starts no sooner than a delay after this (see the supervisor).
    pub started: Instant,
    /// Filled by the thread that reads the worker's stdout.
    latest: Arc<Mutex<Latest>>,
    /// Killed for its silence, not reaped yet.
    pub killed: bool,
}

/// What the thread reading a worker's pipe leaves for the supervisor: one slot, which
/// each line overwrites.
#[derive(Debug, Default)]
struct Latest {
    /// From the worker's last line; `None` until it listens.
    line: Option<MemoryLine>,
    /// When that line came.
    heard: Option<Instant>,
}

impl Worker {
    /// Start worker number `i`: this binary again, with `args` (the supervisor's own, so
    /// every option it was given reaches every worker) and then `--worker --json --addr`
    /// (the later value of an option wins).
    pub fn spawn(i: usize, args: &[OsString], addr: SocketAddr) -> io::Result<Worker> {
        let exe = std::env::current_exe()?;
        let mut command = Command::new(exe);
        command
            .args(args)
            .args(["--worker", "--json", "--addr", &addr.to_string()])
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
            .spawn(move || keep_the_latest_line(stdout, &slot))?;
        Ok(Worker {
            child,
            started: Instant::now(),
            latest,
            killed: false,
        })
    }

    /// The memory figures of the worker's last line; `None` until it listens.
    pub fn line(&self) -> Option<MemoryLine> {
        self.latest().line.clone()
    }

    /// When its last line came; `None` until it listens.
    pub fn heard(&self) -> Option<Instant> {
        self.latest().heard
    }

    fn latest(&self) -> std::sync::MutexGuard<'_, Latest> {
        // A reading thread that panicked mid-update left figures that are still figures.
        self.latest.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// The body of a worker's reading thread. Ends when the worker exits: end of file on its
/// pipe.
fn keep_the_latest_line(stdout: ChildStdout, slot: &Mutex<Latest>) {
    for line in BufReader::new(stdout).lines() {
        let Ok(line) = line else { break };
        // Lines we do not know are not ours to act on.
        let Ok(line) = serde_json::from_str::<WorkerLine>(&line) else {
            continue;
        };
        let line = match line {
            // Listening, no connection yet: its baseline is all its memory.
            WorkerLine::Listening { base_rss_bytes, .. } => {
                MemoryLine::new(STEP, 0, base_rss_bytes, base_rss_bytes, 1)
            }
            WorkerLine::Memory(line) => line,
        };
        let mut latest = slot.lock().unwrap_or_else(PoisonError::into_inner);
        latest.line = Some(line);
        latest.heard = Some(Instant::now());
    }
}

/// `was killed by signal 9`, `exited with status 1`.
pub(crate) fn describe(status: ExitStatus) -> String {
    use std::os::unix::process::ExitStatusExt;
    match (status.code(), status.signal()) {
        (Some(code), _) => format!("exited with status {code}"),
        (None, Some(signal)) => format!("was killed by signal {signal}"),
        (None, None) => format!("ended ({status})"),
    }
}

/// Why a process may be silent, from its state in /proc/PID/stat.
pub(crate) fn state_of(pid: u32) -> &'static str {
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
