//! Counting the system calls a step makes, from outside: `perf stat` on the kernel's
//! `raw_syscalls:sys_enter` tracepoint, attached to the step's pid. Every system call of
//! every thread of the process counts, whatever it is.

use std::process::{Child, Command, Stdio};
use std::thread;
use std::time::Duration;

/// `perf stat` counting one process's system calls, from [`SyscallCount::start`] to
/// [`SyscallCount::finish`].
pub struct SyscallCount {
    perf: Child,
}

impl SyscallCount {
    /// Start counting the system calls of `pid`. `Err` says why not (no `perf`, or no right
    /// to trace).
    pub fn start(pid: u32) -> Result<SyscallCount, String> {
        let mut perf = Command::new("perf")
            .args(["stat", "-x", ",", "-e", "raw_syscalls:sys_enter"])
            .args(["-p", &pid.to_string()])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|err| format!("cannot run perf: {err}"))?;
        // perf needs a moment to attach (longer on a busy machine): counting must not start
        // before, and a SIGINT that comes before perf is ready ends it without a count.
        thread::sleep(Duration::from_secs(2));
        if let Ok(Some(status)) = perf.try_wait() {
            let output = perf.wait_with_output().map_err(|err| err.to_string())?;
            return Err(format!(
                "perf stopped at once ({status}): {}",
                String::from_utf8_lossy(&output.stderr).trim()
            ));
        }
        Ok(SyscallCount { perf })
    }

    /// Stop counting (SIGINT, as Ctrl-C would) and return the count.
    pub fn finish(self) -> Result<u64, String> {
        // SAFETY: kill only sends a signal, to the perf process we started (its pid).
        unsafe { libc::kill(self.perf.id() as libc::pid_t, libc::SIGINT) };
        let output = self
            .perf
            .wait_with_output()
            .map_err(|err| err.to_string())?;
        let text = String::from_utf8_lossy(&output.stderr);
        // CSV: `COUNT,,raw_syscalls:sys_enter,...`
        text.lines()
            .find(|line| line.contains("raw_syscalls:sys_enter"))
            .and_then(|line| line.split(',').next())
            .and_then(|count| count.parse().ok())
            .ok_or_else(|| format!("perf counted nothing: {}", text.trim()))
    }
}
