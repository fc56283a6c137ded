//! Counting the system calls a step makes, from outside: `perf stat` on the kernel's
//! `raw_syscalls:sys_enter` tracepoint, attached to the step's pid. Every system call of
//! every thread of the process counts, whatever it is.
//!
//! perf starts with its counter disabled (`-D -1`) and is told to enable it through a
//! control fifo, which it acknowledges: counting starts at a known moment, as soon as perf
//! is ready, with no guessed pause for it to attach.

use std::ffi::CString;
use std::fs;
use std::io::{ErrorKind, Read, Write};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::thread;
use std::time::{Duration, Instant};

/// How long perf may take to start and acknowledge (longer on a busy machine).
const READY_WITHIN: Duration = Duration::from_secs(15);

/// `perf stat` counting one process's system calls, from [`SyscallCount::start`] to
/// [`SyscallCount::finish`].
pub struct SyscallCount {
    perf: Child,
}

impl SyscallCount {
    /// Start counting the system calls of `pid` and of its children (a supervisor's
    /// workers, where the calls are made); returns once perf counts. `Err` says why not (no
    /// `perf`, or no right to trace).
    pub fn start(pid: u32) -> Result<SyscallCount, String> {
        // perf lists the threads of each pid as it attaches; a thread that exits meanwhile
        // makes it give up ("Problems finding threads of monitor"). Threads come and go in
        // a busy process (a test harness, a thread per connection): try again, bounded.
        let mut attempt = 1;
        loop {
            match SyscallCount::start_once(pid) {
                Err(why) if why.contains("Problems finding threads") && attempt < 5 => {
                    attempt += 1;
                }
                result => return result,
            }
        }
    }

    /// One try of [`SyscallCount::start`].
    fn start_once(pid: u32) -> Result<SyscallCount, String> {
        let pids: Vec<String> = std::iter::once(pid)
            .chain(common::children_of(pid))
            .map(|pid| pid.to_string())
            .collect();
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        let dir = std::env::temp_dir().join(format!(
            "syscall-count-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        ));
        fs::create_dir_all(&dir)
            .map_err(|err| format!("cannot create {}: {err}", dir.display()))?;
        let (ctl, ack) = (dir.join("ctl"), dir.join("ack"));
        let started = mkfifo(&ctl).and_then(|()| mkfifo(&ack)).and_then(|()| {
            Command::new("perf")
                .args([
                    "stat",
                    "-x",
                    ",",
                    "-e",
                    "raw_syscalls:sys_enter",
                    "-D",
                    "-1",
                ])
                .arg(format!(
                    "--control=fifo:{},{}",
                    ctl.display(),
                    ack.display()
                ))
                .args(["-p", &pids.join(",")])
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::piped())
                .spawn()
                .map_err(|err| format!("cannot run perf: {err}"))
        });
        let result = started.and_then(|mut perf| match enable(&mut perf, &ctl, &ack) {
            Ok(()) => Ok(SyscallCount { perf }),
            Err(why) => {
                let _ = perf.kill();
                let output = perf.wait_with_output().map_err(|err| err.to_string())?;
                // perf's words, on one line.
                let said = String::from_utf8_lossy(&output.stderr);
                Err(format!(
                    "{why}: {}",
                    said.split_whitespace().collect::<Vec<_>>().join(" ")
                ))
            }
        });
        // Both ends hold the fifos open by now (or never will): their names can go.
        let _ = fs::remove_dir_all(&dir);
        result
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
            // perf's first words say why (no permission, no such event); its usage text
            // after them does not.
            .ok_or_else(|| {
                let why = text.lines().map(str::trim).find(|l| !l.is_empty());
                format!(
                    "perf counted nothing: {}",
                    why.unwrap_or("it printed nothing")
                )
            })
    }
}

/// A named pipe at `path`.
fn mkfifo(path: &Path) -> Result<(), String> {
    let name = CString::new(path.as_os_str().as_bytes()).expect("bug: a temp path has no NUL");
    // SAFETY: `name` is a NUL-terminated string that outlives the call.
    if unsafe { libc::mkfifo(name.as_ptr(), 0o600) } == 0 {
        Ok(())
    } else {
        Err(format!(
            "cannot make a fifo at {}: {}",
            path.display(),
            std::io::Error::last_os_error()
        ))
    }
}

/// Tell perf to enable its counter and wait for its `ack`. Every wait is non-blocking and
/// bounded: a perf that exits (no right to trace) or hangs is an `Err`, never a hang here.
fn enable(perf: &mut Child, ctl: &PathBuf, ack: &PathBuf) -> Result<(), String> {
    let deadline = Instant::now() + READY_WITHIN;
    let nonblocking = |write: bool, path: &PathBuf| {
        fs::OpenOptions::new()
            .read(!write)
            .write(write)
            .custom_flags(libc::O_NONBLOCK)
            .open(path)
    };
    // The control fifo opens for writing only once perf has it open for reading.
    let mut control = None;
    let mut answer = Vec::new();
    loop {
        if let Ok(Some(status)) = perf.try_wait() {
            return Err(format!("perf stopped at once ({status})"));
        }
        if Instant::now() > deadline {
            return Err(format!("perf not ready within {READY_WITHIN:?}"));
        }
        match &mut control {
            None => match nonblocking(true, ctl) {
                Ok(mut file) => {
                    file.write_all(b"enable\n")
                        .map_err(|err| format!("cannot write to perf's control fifo: {err}"))?;
                    control = Some((file, nonblocking(false, ack).map_err(|e| e.to_string())?));
                    continue;
                }
                Err(err) if err.raw_os_error() == Some(libc::ENXIO) => {}
                Err(err) => return Err(format!("cannot open perf's control fifo: {err}")),
            },
            Some((_, acks)) => {
                let mut buf = [0u8; 64];
                match acks.read(&mut buf) {
                    Ok(n) => answer.extend_from_slice(&buf[..n]),
                    Err(err) if err.kind() == ErrorKind::WouldBlock => {}
                    Err(err) => return Err(format!("cannot read perf's answer: {err}")),
                }
                if answer.starts_with(b"ack") {
                    return Ok(());
                }
            }
        }
        thread::sleep(Duration::from_millis(5));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Counting starts when `start` returns: system calls made right after it are counted.
    #[test]
    fn the_calls_made_right_after_start_are_counted() {
        const CALLS: u64 = 2000;
        let count = match SyscallCount::start(std::process::id()) {
            Ok(count) => count,
            Err(why) if which_perf().is_none() => return eprintln!("skipped: {why}"),
            Err(why) => panic!("perf is installed, and could not count: {why}"),
        };
        for _ in 0..CALLS {
            // SAFETY: getppid has no preconditions and cannot fail.
            unsafe { libc::getppid() };
        }
        let counted = count.finish().expect("perf counts");
        assert!(
            counted >= CALLS,
            "{CALLS} getppid calls made while counting, {counted} system calls counted"
        );
    }

    /// A process that does not exist is an error that says so, not a hang.
    #[test]
    fn a_process_that_does_not_exist_is_an_error() {
        if which_perf().is_none() {
            return eprintln!("skipped: no perf");
        }
        let err = SyscallCount::start(i32::MAX as u32)
            .err()
            .expect("no process has pid i32::MAX: nothing to count");
        assert!(err.contains("perf"), "the error names perf: {err}");
    }

    /// Where `perf` is on PATH, if it is.
    fn which_perf() -> Option<PathBuf> {
        std::env::var_os("PATH")?
            .to_str()?
            .split(':')
            .map(|dir| Path::new(dir).join("perf"))
            .find(|path| path.is_file())
    }
}
