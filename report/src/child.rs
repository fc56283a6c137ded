//! A step running as a child process: started with `--json`, its stdout read line by line
//! on a thread, and killed (by its pid, through `Child::kill`) when dropped, also when the
//! report fails half-way.

use std::collections::VecDeque;
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use serde::Deserialize;

use common::{MemoryLine, ProcStatus};

use crate::procfs;

/// How often the step prints its memory line (at most), in seconds: often enough that the
/// report waits little for a fresh one.
const REPORT_EVERY: &str = "0.2";

/// Stderr lines kept to explain a step that failed.
const STDERR_TAIL: usize = 8;

/// A memory line, with what /proc said about the step the moment the line was read.
#[derive(Debug, Clone)]
pub struct Sample {
    pub line: MemoryLine,
    /// /proc/PID/status read right after the line arrived (`None` if the step had exited).
    pub proc: Option<ProcStatus>,
    pub at: Instant,
}

/// What the reader threads have seen so far.
#[derive(Debug, Default)]
struct Seen {
    listening: Option<SocketAddr>,
    memory: Vec<Sample>,
    stderr_tail: VecDeque<String>,
}

/// A running step.
pub struct StepProcess {
    child: Child,
    seen: Arc<Mutex<Seen>>,
    readers: Vec<JoinHandle<()>>,
}

impl StepProcess {
    /// Start `bin` on a free loopback port with JSON output and frequent memory lines.
    pub fn start(bin: &Path, args: &[&str]) -> Result<StepProcess, String> {
        let mut child = Command::new(bin)
            .args([
                "--addr",
                "127.0.0.1:0",
                "--json",
                "--report-every",
                REPORT_EVERY,
            ])
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|err| format!("cannot start {}: {err}", bin.display()))?;
        let pid = child.id();
        let seen = Arc::new(Mutex::new(Seen::default()));

        let stdout = child.stdout.take().expect("bug: stdout is piped");
        let on_stdout = seen.clone();
        let stdout_reader = std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                read_stdout_line(pid, &line, &on_stdout);
            }
        });
        let stderr = child.stderr.take().expect("bug: stderr is piped");
        let on_stderr = seen.clone();
        let stderr_reader = std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                let mut seen = on_stderr.lock().expect("bug: a reader thread panicked");
                if seen.stderr_tail.len() == STDERR_TAIL {
                    seen.stderr_tail.pop_front();
                }
                seen.stderr_tail.push_back(line);
            }
        });
        Ok(StepProcess {
            child,
            seen,
            readers: vec![stdout_reader, stderr_reader],
        })
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Wait for the listening line; an error names why the step never got there.
    pub fn wait_listening(&mut self, timeout: Duration) -> Result<SocketAddr, String> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(addr) = self.lock().listening {
                return Ok(addr);
            }
            if let Ok(Some(status)) = self.child.try_wait() {
                // Let the readers drain the pipes so the last words are in the tail.
                for reader in self.readers.drain(..) {
                    let _ = reader.join();
                }
                return Err(format!(
                    "exited ({status}) before listening{}",
                    self.last_words()
                ));
            }
            if Instant::now() >= deadline {
                return Err(format!(
                    "no listening line within {} s{}",
                    timeout.as_secs(),
                    self.last_words()
                ));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The newest memory line at or after `since` whose count is `conns`; or, once
    /// `timeout` has passed, the newest line whatever it says (a step that serves one
    /// client at a time never counts the rest).
    pub fn memory_line(&self, conns: usize, since: Instant, timeout: Duration) -> Option<Sample> {
        let deadline = Instant::now() + timeout;
        loop {
            {
                let seen = self.lock();
                let newest = seen.memory.last();
                if newest.is_some_and(|s| s.at >= since && s.line.conns == conns)
                    || Instant::now() >= deadline
                {
                    return newest.cloned();
                }
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// `: last stderr line` to end an error message, if the step said anything.
    pub fn last_words(&self) -> String {
        let seen = self.lock();
        let words: Vec<&str> = seen
            .stderr_tail
            .iter()
            .map(String::as_str)
            .filter(|l| !l.trim().is_empty())
            .collect();
        match words.last() {
            Some(last) => format!(": \"{}\"", last.trim()),
            None => String::new(),
        }
    }

    /// Still running?
    pub fn is_running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Seen> {
        self.seen.lock().expect("bug: a reader thread panicked")
    }
}

impl Drop for StepProcess {
    /// Kill the step (SIGKILL to its pid) and reap it, whatever state the report is in.
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn read_stdout_line(pid: u32, line: &str, seen: &Mutex<Seen>) {
    #[derive(Deserialize)]
    struct Event {
        event: String,
        addr: Option<SocketAddr>,
    }
    let Ok(event) = serde_json::from_str::<Event>(line) else {
        return; // not a JSON event line: nothing the report needs
    };
    match event.event.as_str() {
        "listening" => {
            seen.lock()
                .expect("bug: a reader thread panicked")
                .listening = event.addr
        }
        "memory" => {
            let Some(memory) = MemoryLine::from_json(line) else {
                return;
            };
            // Read /proc now, as close as we can to the moment the step measured itself.
            let proc = procfs::status(pid).ok();
            let sample = Sample {
                line: memory,
                proc,
                at: Instant::now(),
            };
            seen.lock()
                .expect("bug: a reader thread panicked")
                .memory
                .push(sample);
        }
        _ => {}
    }
}
