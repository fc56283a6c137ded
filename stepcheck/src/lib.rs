//! The behaviour every step promises, as tests run against the step's real binary.
//!
//! Each step's `tests/behaviour.rs` calls these functions with
//! `env!("CARGO_BIN_EXE_stepNN-name")`, so all steps are held to the same checks, like for
//! like. [`Server`] starts a step on a free port and reads its `--json` lines (the report
//! starts every step it measures with it too); [`tcp`] holds the checks for the raw-TCP
//! echo steps (01–05), [`ws`] those for the WebSocket steps (06–09), [`refusals`] the one
//! table of what a WebSocket step refuses and how it answers, and [`memory`] holds every
//! step's memory line to `/proc`. [`inprocess`] runs a step's `serve` in the test's
//! own process, for the faults a client cannot cause. [`chromium`] starts the headless
//! browser that the browser and slide checks drive, and [`syscalls`] counts a step's
//! system calls with `perf`. [`stall`] sends the WebSocket steps clients that hold bytes
//! and never finish them, which their stall clock must close; [`output`] holds a step to
//! its promise that no output, full or failing, ever stalls or stops it. [`work`] holds
//! every step's `--work-us` to the CPU it says a message costs.

pub mod chromium;
pub mod devtools;
pub mod inprocess;
pub mod memory;
pub mod output;
pub mod refusals;
pub mod seccomp;
pub mod stall;
pub mod syscalls;
pub mod tcp;
pub mod work;
pub mod ws;

use std::ffi::OsStr;
use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::os::unix::process::CommandExt;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError};
use std::sync::{Arc, Mutex};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use common::{MemoryLine, ProcStatus};
use serde_json::Value;

/// How long any single wait in these checks may take before it fails. Generous: the
/// machines that run them are shared and noisy, and a hang must still end by itself.
pub const PATIENCE: Duration = Duration::from_secs(20);

/// Connect to `addr` with read and write timeouts of [`PATIENCE`], so no check can hang.
fn connect_patiently(addr: SocketAddr) -> TcpStream {
    let stream =
        TcpStream::connect(addr).unwrap_or_else(|err| panic!("cannot connect to {addr}: {err}"));
    stream.set_read_timeout(Some(PATIENCE)).unwrap();
    stream.set_write_timeout(Some(PATIENCE)).unwrap();
    stream
}

/// How often the checks' steps print their memory line (at most), in seconds.
const REPORT_EVERY: &str = "0.1";

/// A step running in a child process, listening on a free loopback port. Dropping it kills
/// the child (by its pid) and reaps it.
///
/// The behaviour suites start it with [`Server::start`], which panics when the step does
/// not come up (they are tests); the report starts it with [`Server::try_start`], which
/// says why instead, so that one step's failure is one row's error.
pub struct Server {
    child: Child,
    /// Where the step is listening, from its first stdout line.
    pub addr: SocketAddr,
    /// The stdout lines after the first, stamped as they arrived.
    lines: Receiver<Line>,
    /// Everything the step wrote to stderr so far, for failure messages.
    stderr: Arc<Mutex<String>>,
    /// The step's `VmRSS` before any connection: read as its `listening` line arrived, and
    /// for a check ([`Server::start`] and the like) again until it settled. What the memory
    /// line's `base` is held to.
    rss_at_start: u64,
    /// While set, the thread that reads the step's stdout stops reading it, as a reader
    /// that fell behind would: see [`Server::stop_reading_stdout`].
    stdout_paused: Arc<AtomicBool>,
}

/// One stdout line of the step, as the reader thread got it.
#[derive(Debug, Clone)]
pub struct Line {
    /// The line as printed (with `--json`, one JSON object).
    pub text: String,
    /// When the reader thread got it.
    pub at: Instant,
    /// What /proc said about the step right then (`None` if the step had exited): for a
    /// memory line, the figures the step measured a moment before, read from outside.
    pub proc: Option<ProcStatus>,
}

/// How [`Server::try_start`] watches the step it starts.
#[derive(Debug, Clone, Copy)]
pub struct Watch {
    /// How long the step may take to print its `listening` line.
    pub patience: Duration,
    /// Keep reading stdout after the `listening` line; `false` closes our end of the pipe
    /// then, as `step | head -1` or a closed terminal would.
    pub keep_stdout: bool,
    /// Reads the step's /proc status as each stdout line arrives, given its pid. The
    /// report passes its own, which sums a step made of several processes.
    pub read_status: fn(u32) -> io::Result<ProcStatus>,
    /// Shown each stdout line as it arrives, on the reader thread, before it is queued:
    /// the report's `--live` page draws a step's memory lines from here, the moment they
    /// are printed rather than when the report next reads them.
    pub tee: fn(&Line),
}

impl Default for Watch {
    /// [`PATIENCE`], stdout kept, the step's `/proc/PID/status` (its workers', for step08),
    /// no tee.
    fn default() -> Watch {
        Watch {
            patience: PATIENCE,
            keep_stdout: true,
            read_status: ProcStatus::read_serving,
            tee: |_line| {},
        }
    }
}

/// Why a step did not come up, and what it wrote to stderr meanwhile.
#[derive(Debug)]
pub struct StartError {
    /// What went wrong: not started, exited, or silent past its patience.
    pub reason: String,
    /// Everything the step wrote to stderr before that.
    pub stderr: String,
}

impl StartError {
    /// The reason and the step's last stderr line: one line, for a table's notes.
    pub fn short(&self) -> String {
        format!("{}{}", self.reason, last_words(&self.stderr))
    }
}

/// `: "last line"` of what a step wrote to stderr, to end a one-line error message; empty
/// if it wrote nothing.
fn last_words(stderr: &str) -> String {
    match stderr.lines().rev().find(|l| !l.trim().is_empty()) {
        Some(last) => format!(": \"{}\"", last.trim()),
        None => String::new(),
    }
}

impl std::fmt::Display for StartError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}; stderr:\n{}", self.reason, self.stderr)
    }
}

/// `bin --addr 127.0.0.1:0 --json --report-every SECS EXTRA...`, stdin closed, stdout and
/// stderr piped: a step on a free loopback port, printing lines a program can read.
pub fn step_command(bin: impl AsRef<OsStr>, report_every: &str, extra: &[&str]) -> Command {
    let mut command = Command::new(bin);
    command
        .args([
            "--addr",
            "127.0.0.1:0",
            "--json",
            "--report-every",
            report_every,
        ])
        .args(extra)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    command
}

/// Set the open-file limit (soft and hard) of the process `command` starts to `max_fds`,
/// before exec, so that it cannot raise it back.
pub fn limit_fds(command: &mut Command, max_fds: u64) {
    let limit = libc::rlimit {
        rlim_cur: max_fds,
        rlim_max: max_fds,
    };
    // SAFETY: the closure runs in the forked child before exec and calls only
    // setrlimit, which is async-signal-safe; `limit` is a plain value copied in.
    unsafe {
        command.pre_exec(move || {
            if libc::setrlimit(libc::RLIMIT_NOFILE, &limit) == -1 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
}

impl Server {
    /// Start `bin --addr 127.0.0.1:0 --json --report-every 0.1 EXTRA...` and wait for its
    /// `listening` line.
    pub fn start(bin: &str, extra: &[&str]) -> Server {
        Server::started(step_command(bin, REPORT_EVERY, extra), Watch::default())
    }

    /// Like [`Server::start`], then close our end of the step's stdout once its `listening`
    /// line is read, as `step | head -1` or a closed terminal would: every memory line
    /// after that meets a broken pipe.
    pub fn start_with_stdout_closed(bin: &str, extra: &[&str]) -> Server {
        let watch = Watch {
            keep_stdout: false,
            ..Watch::default()
        };
        Server::started(step_command(bin, REPORT_EVERY, extra), watch)
    }

    /// Like [`Server::start`], with the child's open-file limit (soft and hard) set to
    /// `max_fds` before exec, so the step cannot raise it back.
    pub fn start_with_fd_limit(bin: &str, extra: &[&str], max_fds: u64) -> Server {
        let mut command = step_command(bin, REPORT_EVERY, extra);
        limit_fds(&mut command, max_fds);
        Server::started(command, Watch::default())
    }

    /// [`Server::try_start`] for a check: a step that does not come up fails it. Then the
    /// step's starting `VmRSS` is read again until the step settles, for the memory checks.
    fn started(command: Command, watch: Watch) -> Server {
        let mut server = Server::try_start(command, watch).unwrap_or_else(|err| panic!("{err}"));
        // Read as the line arrived, the step may not have taken its own baseline yet: a step
        // descheduled right after its write still has code to run before it reads
        // /proc/self/status, and code comes in 64 KiB at a time (the kernel's fault-around),
        // which CI once saw as a base 72 KiB above that reading. Read until the step idles
        // in its loop (two readings 20 ms apart agree): by then its baseline is taken.
        let pid = server.pid();
        let read_rss = || (watch.read_status)(pid).ok().map(|now| now.rss_bytes);
        server.rss_at_start =
            memory::settled(server.rss_at_start, Duration::from_millis(20), read_rss);
        server
    }

    /// Start `command` (a step with `--json`, see [`step_command`]) and wait for its
    /// `listening` line. A thread reads its stdout line by line, stamping each with the
    /// moment it arrived and the step's /proc status read right then; another collects its
    /// stderr. The error says why the step never listened, with what it wrote to stderr.
    pub fn try_start(mut command: Command, watch: Watch) -> Result<Server, StartError> {
        let mut child = command.spawn().map_err(|err| StartError {
            reason: format!("cannot start {command:?}: {err}"),
            stderr: String::new(),
        })?;
        let pid = child.id();

        let (stderr, stderr_reader) =
            collect_text(child.stderr.take().expect("bug: stderr is piped"));

        let (tx, lines) = mpsc::channel();
        let mut stdout = BufReader::new(child.stdout.take().expect("bug: stdout is piped"));
        let stdout_paused = Arc::new(AtomicBool::new(false));
        let paused = Arc::clone(&stdout_paused);
        thread::spawn(move || {
            loop {
                while paused.load(Ordering::Relaxed) {
                    thread::sleep(Duration::from_millis(10));
                }
                let mut text = String::new();
                match stdout.read_line(&mut text) {
                    Ok(1..) => {}
                    Ok(0) | Err(_) => break,
                }
                let text = text.strip_suffix('\n').unwrap_or(&text).to_string();
                let at = Instant::now();
                // Read /proc now, as close as we can to the moment the step measured itself.
                let proc = (watch.read_status)(pid).ok();
                let line = Line { text, at, proc };
                (watch.tee)(&line);
                if tx.send(line).is_err() || !watch.keep_stdout {
                    break; // dropping `stdout` closes the pipe
                }
            }
        });

        let mut server = Server {
            child,
            addr: SocketAddr::from(([0, 0, 0, 0], 0)),
            lines,
            stderr,
            rss_at_start: 0,
            stdout_paused,
        };
        // From here on, an early return drops `server`, which kills the step.
        let fail = |server: &Server, reason: String| StartError {
            reason,
            stderr: server.stderr(),
        };
        let first = match server.lines.recv_timeout(watch.patience) {
            Ok(first) => first,
            Err(RecvTimeoutError::Timeout) => {
                let reason = format!("no `listening` line within {:?}", watch.patience);
                return Err(fail(&server, reason));
            }
            Err(RecvTimeoutError::Disconnected) => {
                // Stdout closed: the step is exiting. Give it and the stderr reader a moment
                // (bounded) so that the error says how it ended and its last words.
                let deadline = Instant::now() + Duration::from_secs(1);
                let mut status = server.child.try_wait().ok().flatten();
                while (status.is_none() || !stderr_reader.is_finished())
                    && Instant::now() < deadline
                {
                    thread::sleep(Duration::from_millis(10));
                    status = status.or(server.child.try_wait().ok().flatten());
                }
                let how =
                    status.map_or("closed its stdout".to_string(), |s| format!("exited ({s})"));
                return Err(fail(&server, format!("{how} before listening")));
            }
        };
        let addr = serde_json::from_str::<Value>(&first.text)
            .ok()
            .filter(|line| line["event"] == "listening")
            .and_then(|line| line["addr"].as_str()?.parse().ok());
        let Some(addr) = addr else {
            let reason = format!(
                "the first stdout line is not `listening` with an address: {}",
                first.text
            );
            return Err(fail(&server, reason));
        };
        server.addr = addr;
        let Some(proc) = first.proc else {
            let reason = format!("cannot read /proc/{pid}/status once it listened");
            return Err(fail(&server, reason));
        };
        server.rss_at_start = proc.rss_bytes;
        Ok(server)
    }

    /// Start `bin --addr 127.0.0.1:PORT --report-every 0.1 EXTRA...` with its stdout and
    /// stderr on `/dev/full`, where every write fails (ENOSPC), and wait until it accepts
    /// connections. PORT is a free port found just before (no `listening` line can say it),
    /// outside the range port 0 is given from.
    /// Text lines, not `--json`: they are lost anyway.
    pub fn start_on_dev_full(bin: &str, extra: &[&str]) -> Server {
        let addr = SocketAddr::from(([127, 0, 0, 1], free_port_below_the_ephemeral_range()));
        let full = || {
            std::fs::File::options()
                .write(true)
                .open("/dev/full")
                .unwrap()
        };
        let child = Command::new(bin)
            .args(["--addr", &addr.to_string(), "--report-every", REPORT_EVERY])
            .args(extra)
            .stdin(Stdio::null())
            .stdout(full())
            .stderr(full())
            .spawn()
            .unwrap_or_else(|err| panic!("cannot start {bin}: {err}"));
        let mut server = Server {
            child,
            addr,
            lines: mpsc::channel().1,
            stderr: Arc::new(Mutex::new("(stderr is /dev/full)".into())),
            rss_at_start: 0,
            stdout_paused: Arc::default(),
        };
        let deadline = Instant::now() + PATIENCE;
        while TcpStream::connect(addr).is_err() {
            let status = server.child.try_wait().ok().flatten();
            assert!(
                status.is_none(),
                "{bin} with its output on /dev/full exited ({}) before listening",
                status.unwrap()
            );
            assert!(Instant::now() < deadline, "{bin} never listened on {addr}");
            thread::sleep(Duration::from_millis(20));
        }
        server
    }

    /// Stop reading the step's stdout, as a reader that fell behind would (a paused `less`,
    /// a slow log collector), and fill the pipe to the brim: every line the step writes
    /// after this finds no room. Returns how many bytes it took to fill.
    ///
    /// The filling goes through a description of the pipe of our own, opened with
    /// O_NONBLOCK through /proc, so the step's own stays as the step left it. The filler
    /// lines are JSON objects with no `"event":"memory"`, which every check skips.
    pub fn stop_reading_stdout(&self) -> usize {
        use std::os::unix::fs::OpenOptionsExt;
        self.stdout_paused.store(true, Ordering::Relaxed);
        let mut pipe = std::fs::File::options()
            .write(true)
            .custom_flags(libc::O_NONBLOCK)
            .open(format!("/proc/{}/fd/1", self.pid()))
            .expect("the step's stdout, opened through /proc");
        // The reader may be in the middle of one last read: fill, let it take its bite,
        // fill again.
        let mut filled = 0;
        for _ in 0..3 {
            thread::sleep(Duration::from_millis(50));
            let line = format!("{{\"event\":\"filler\",\"pad\":\"{}\"}}\n", "x".repeat(200));
            while let Ok(n) = pipe.write(line.as_bytes()) {
                filled += n;
            }
            // The room whole lines leave, down to 2 bytes: no line of the step fits there.
            while let Ok(n) = pipe.write(b"{}\n") {
                filled += n;
            }
        }
        filled
    }

    /// Read the step's stdout again, from where it stopped.
    pub fn resume_reading_stdout(&self) {
        self.stdout_paused.store(false, Ordering::Relaxed);
    }

    /// The step's `VmRSS` before any connection, read by the test: once it listened and
    /// settled when started by [`Server::start`] and the like, as its `listening` line
    /// arrived when started by [`Server::try_start`].
    pub fn rss_at_start(&self) -> u64 {
        self.rss_at_start
    }

    /// The child's pid.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// What the step wrote to stderr so far.
    pub fn stderr(&self) -> String {
        self.stderr.lock().unwrap().clone()
    }

    /// `: "last line"` the step wrote to stderr so far, or nothing: to end a one-line message.
    pub fn last_words(&self) -> String {
        last_words(&self.stderr.lock().unwrap())
    }

    /// The next stdout line, or `None` after `timeout` (or once stdout is closed). Lines
    /// queue up until read: none is lost, the oldest comes first.
    pub fn next_line(&self, timeout: Duration) -> Option<Line> {
        self.lines.recv_timeout(timeout).ok()
    }

    /// Wait for a memory line reporting exactly `conns` connections and return it.
    pub fn wait_for_memory_line(&self, conns: u64) -> Value {
        let deadline = Instant::now() + PATIENCE;
        let mut seen = Vec::new();
        while let Some(left) = deadline.checked_duration_since(Instant::now()) {
            let Some(line) = self.next_line(left) else {
                break;
            };
            let line: Value = serde_json::from_str(&line.text).unwrap_or_else(|err| {
                panic!(
                    "with --json, every stdout line is JSON ({err}): {}",
                    line.text
                )
            });
            if line["event"] == "memory" && line["conns"] == conns {
                return line;
            }
            seen.push(line);
        }
        panic!(
            "no memory line with conns {conns} within {PATIENCE:?}; saw {seen:?}; stderr:\n{}",
            self.stderr()
        );
    }

    /// Wait for a memory line reporting `conns` connections and check its figures: a
    /// resident set, a thread, per-conn = (rss − base) / conns, and rss and base as
    /// `/proc` gives them ([`memory::assert_line_agrees_with_proc`]).
    pub fn assert_memory_line_counts(&self, conns: u64) {
        let value = self.wait_for_memory_line(conns);
        // Read with the type the meter prints it with: every field present and typed.
        let line: MemoryLine = serde_json::from_value(value.clone())
            .unwrap_or_else(|err| panic!("not a memory line ({err}): {value}"));
        assert!(line.rss_bytes > 0, "{value}");
        assert!(line.threads >= 1, "{value}");
        assert_eq!(
            line.per_conn_bytes,
            line.rss_bytes.saturating_sub(line.base_rss_bytes) / conns,
            "{value}"
        );
        memory::assert_line_agrees_with_proc(self, &value);
    }

    /// Open a client connection with read and write timeouts, so no check can hang.
    pub fn connect(&self) -> TcpStream {
        connect_patiently(self.addr)
    }

    /// True while the child has not exited.
    pub fn is_running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// CPU time (user + system) the child has used so far, all its threads, and its
    /// workers' for step08 (see [`common::cpu_time`]).
    pub fn cpu_seconds(&self) -> f64 {
        let workers = common::children_of(self.pid())
            .into_iter()
            .filter_map(|w| common::cpu_time(w).ok());
        let own = common::cpu_time(self.pid()).expect("the step's /proc CPU time");
        (own + workers.sum::<Duration>()).as_secs_f64()
    }

    /// The processes that hold the step's connections: the child itself, or, when it is a
    /// supervisor of worker processes (step08), its workers, which its memory line sums.
    fn serving_pids(&self) -> Vec<u32> {
        match common::children_of(self.pid()) {
            workers if workers.is_empty() => vec![self.pid()],
            workers => workers,
        }
    }

    /// TCP connections the step holds (its workers', for step08), as the kernel lists them:
    /// established sockets on the port it listens on.
    pub fn connections_held(&self) -> usize {
        let port = self.addr.port();
        self.serving_pids()
            .into_iter()
            .map(|pid| accepted_sockets(pid, port))
            .sum()
    }

    /// The step's resident set in bytes, from the `VmRSS:` line of `/proc/PID/status`
    /// (summed over its workers, for step08).
    pub fn rss_bytes(&self) -> u64 {
        self.status_bytes("VmRSS:")
    }

    /// The child's peak resident set so far ("high water mark"), from `VmHWM:`: memory
    /// held for a moment counts even if it was given back since.
    pub fn peak_rss_bytes(&self) -> u64 {
        self.status_bytes("VmHWM:")
    }

    /// A `... kB` line of `/proc/PID/status`, in bytes, summed over [`Server::serving_pids`].
    fn status_bytes(&self, field: &str) -> u64 {
        let mut bytes = 0;
        for pid in self.serving_pids() {
            let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
                .expect("the step's /proc status");
            let kib: u64 = status
                .lines()
                .find_map(|line| line.strip_prefix(field))
                .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse().ok())
                .unwrap_or_else(|| panic!("a {field} line in /proc/PID/status"));
            bytes += kib * 1024;
        }
        bytes
    }
}

/// Read `stream` to its end on a thread of its own, gathering it as text that can be read
/// at any time; the thread ends with the stream.
pub fn collect_text(
    mut stream: impl Read + Send + 'static,
) -> (Arc<Mutex<String>>, JoinHandle<()>) {
    let text = Arc::new(Mutex::new(String::new()));
    let collected = Arc::clone(&text);
    let reader = thread::spawn(move || {
        let mut buf = [0u8; 4096];
        while let Ok(n @ 1..) = stream.read(&mut buf) {
            collected
                .lock()
                .unwrap()
                .push_str(&String::from_utf8_lossy(&buf[..n]));
        }
    });
    (text, reader)
}

/// Connections process `pid` accepted on `port`: its sockets that `/proc/PID/net/tcp` (and
/// `tcp6`) list as established (`st` 01) with that local port. Its fds link to
/// `socket:[INODE]`; the table gives each socket's addresses, state and inode. (A socket
/// the process merely inherited, a client's, has another local port.)
fn accepted_sockets(pid: u32, port: u16) -> usize {
    let inodes: std::collections::HashSet<String> = common::fd_targets(pid)
        .expect("the step's /proc fd list")
        .iter()
        .filter_map(|target| target.strip_prefix("socket:[")?.strip_suffix(']'))
        .map(str::to_string)
        .collect();
    let port = format!(":{port:04X}");
    let mut accepted = 0;
    for table in ["tcp", "tcp6"] {
        let text = std::fs::read_to_string(format!("/proc/{pid}/net/{table}")).unwrap_or_default();
        // `sl local_address rem_address st tx_queue:rx_queue tr:tm->when retrnsmt uid timeout inode`
        for line in text.lines().skip(1) {
            let fields: Vec<&str> = line.split_whitespace().collect();
            if fields.get(1).is_some_and(|local| local.ends_with(&port))
                && fields.get(3) == Some(&"01")
                && fields.get(9).is_some_and(|inode| inodes.contains(*inode))
            {
                accepted += 1;
            }
        }
    }
    accepted
}

/// A loopback port free a moment ago, below the range the kernel picks ports from for
/// `bind(port 0)` and `connect`: no other check's step, bound to port 0 meanwhile, can be
/// given it. (step08 binds with `SO_REUSEPORT`: a port another step08 took meanwhile would
/// not fail its bind, it would join that server's workers.)
fn free_port_below_the_ephemeral_range() -> u16 {
    let first_ephemeral: u32 = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|range| range.split_whitespace().next()?.parse().ok())
        .unwrap_or(32768);
    let (low, high) = (
        first_ephemeral.saturating_sub(10_000).max(10_000),
        first_ephemeral,
    );
    assert!(
        low < high,
        "no port range below {first_ephemeral} to pick from"
    );
    // Anywhere in it, so that checks running at once seldom try the same one.
    let seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |t| t.subsec_nanos())
        ^ std::process::id();
    (0..1000)
        .map(|i| low + (seed.wrapping_add(i * 7919)) % (high - low))
        .find(|&port| std::net::TcpListener::bind(("127.0.0.1", port as u16)).is_ok())
        .expect("a free loopback port below the ephemeral range") as u16
}

impl Drop for Server {
    fn drop(&mut self) {
        // Ends only the process this Server started, by its pid.
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// How much a step may grow while a client floods it without reading. A correct step holds
/// one read's worth for that client and stops reading it: one buffer of 4–64 KiB for the
/// TCP steps, plus, for the WebSocket steps, the frame being read and its pending echo (64 KiB
/// frames here) and step07's 128 KiB read buffer. Measured: at most 40 KiB (TCP steps),
/// 330 KiB (step06), 390 KiB (step07), and up to ~1 MiB for step09, whose multishot receive
/// goes on delivering what the kernel already took until its cancellation completes. 2 MiB
/// leaves room for that under a loaded CI machine, and is still a fifth of what the flood
/// pushes before the kernel's socket buffers fill (~8–10 MiB): a step that kept reading the
/// flooder would pass it within the first second.
pub const FLOOD_GROWTH_LIMIT: u64 = 2 << 20;

/// How much a flooding client tries to send: far more than the kernel's buffers hold, so
/// a step that kept reading it would hold most of it.
pub const FLOOD_BYTES: usize = 256 << 20;

/// After a flood of `sent` bytes from a client that never reads, the step must have stopped
/// reading it: the flooder could not send all [`FLOOD_BYTES`], and the step grew by less than
/// [`FLOOD_GROWTH_LIMIT`] over `base_rss`. (Had it kept reading, it would hold everything
/// sent in memory.)
pub fn assert_flood_held_back(server: &Server, base_rss: u64, sent: usize) {
    let grown = server.rss_bytes().saturating_sub(base_rss);
    assert!(
        sent < FLOOD_BYTES,
        "the flooder sent all {} MiB: the server kept reading a client that never reads",
        FLOOD_BYTES >> 20
    );
    assert!(
        grown < FLOOD_GROWTH_LIMIT,
        "the server grew by {grown} bytes (limit {FLOOD_GROWTH_LIMIT}) while a client sent \
         {sent} bytes without reading"
    );
}

/// A client that writes and never reads: sends `bytes` over and over until `max_bytes` are
/// sent or `max_time` has passed, and returns how many the server took. A write may take
/// part of `bytes`; the next goes on from there, so a stream of frames stays a stream of
/// whole frames. Writes time out after 200 ms, so a full socket ends the loop on time.
pub fn flood(stream: &mut TcpStream, bytes: &[u8], max_bytes: usize, max_time: Duration) -> usize {
    stream
        .set_write_timeout(Some(Duration::from_millis(200)))
        .expect("bug: 200 ms is a valid write timeout");
    let start = Instant::now();
    let (mut sent, mut offset) = (0, 0);
    while sent < max_bytes && start.elapsed() < max_time {
        match stream.write(&bytes[offset..]) {
            Ok(n) => {
                sent += n;
                offset = (offset + n) % bytes.len();
            }
            Err(err)
                if matches!(
                    err.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) => {}
            Err(err) => panic!("the flooding client's socket failed: {err}"),
        }
    }
    sent
}

/// How many descriptors a step gets in the fd-exhaustion checks, and how many clients
/// are sent at it: more than it can accept.
const FD_LIMIT: u64 = 64;
const CLIENTS_PAST_THE_LIMIT: usize = 100;

/// Run out of file descriptors: start the step with a low fd limit, queue more clients
/// than it can accept, and check it neither dies nor spins at 100% CPU while the listen
/// queue holds connections it cannot accept. Then close them all and check that
/// `serve_one` (one client's full exchange) succeeds again within [`PATIENCE`].
pub fn check_fd_exhaustion(
    bin: &str,
    extra: &[&str],
    mut serve_one: impl FnMut(&Server) -> Result<(), String>,
) {
    let mut server = Server::start_with_fd_limit(bin, extra, FD_LIMIT);

    // connect() still succeeds past the limit: the kernel completes the TCP handshake and
    // queues the connection until the server accepts it. The clients stay silent.
    let clients: Vec<TcpStream> = (0..CLIENTS_PAST_THE_LIMIT)
        .map(|_| server.connect())
        .collect();
    thread::sleep(Duration::from_millis(500));

    let cpu_before = server.cpu_seconds();
    let lines_before = server.stderr().lines().count();
    thread::sleep(Duration::from_secs(2));
    let cpu_used = server.cpu_seconds() - cpu_before;
    let logged = server.stderr().lines().count() - lines_before;
    assert!(
        server.is_running(),
        "the server died at the fd limit:\n{}",
        server.stderr()
    );
    assert!(
        cpu_used < 0.5,
        "the server used {cpu_used:.2} s of CPU in 2 s at the fd limit: it is spinning on accept"
    );
    // One line a second, with a count of the ones held back; 2 s may hold 3 starts of one.
    assert!(
        logged <= 3,
        "the server logged {logged} lines in 2 s at the fd limit (at most one a second):\n{}",
        server.stderr()
    );
    // At the limit the step cannot open a file: its meter reads a /proc file it opened at
    // start. So the last memory line counts every connection the step holds at the limit,
    // measured there (not 0 B, not the count from before the limit). On a busy machine the
    // step may still be accepting the last few, and a line comes at most once a second: so
    // wait, for a while, for a line that counts what the step holds by then.
    let deadline = Instant::now() + PATIENCE;
    let mut last: Option<MemoryLine> = None;
    loop {
        while let Some(line) = server.next_line(Duration::from_millis(100)) {
            if let Some(memory) = MemoryLine::from_json(&line.text) {
                assert!(
                    memory.rss_bytes > 0 && memory.threads >= 1,
                    "a memory line at the fd limit measured nothing: {}",
                    line.text
                );
                last = Some(memory);
            }
        }
        let held = server.connections_held();
        let counted = last.as_ref().map(|memory| memory.conns);
        if counted == Some(held) {
            break;
        }
        if Instant::now() >= deadline {
            let last = last
                .unwrap_or_else(|| panic!("no memory line at all; stderr:\n{}", server.stderr()));
            panic!(
                "at the fd limit the step holds {held} connections, and its last memory line \
                 says {}: the line went stale at the limit ({last})",
                last.conns
            );
        }
    }

    drop(clients);
    // Served again once descriptors are free: retry for a while, the server may be backing off.
    let deadline = Instant::now() + PATIENCE;
    loop {
        match serve_one(&server) {
            Ok(()) => return,
            Err(_) if Instant::now() < deadline => thread::sleep(Duration::from_millis(100)),
            Err(err) => panic!(
                "not served after the old clients closed: {err}; stderr:\n{}",
                server.stderr()
            ),
        }
    }
}

/// Flood one connection and check that a fresh client is served in the middle of it.
///
/// `flooder` is connected (and upgraded, for WebSocket) already. One thread writes `chunk`
/// `chunks` times as fast as the kernel takes it, another reads every reply (the server
/// answers each chunk with `reply_per_chunk` bytes), so the flood never stalls on a full
/// buffer: a loop that read this connection until it was empty would serve nobody else
/// until the flood ends. Once the flood is under way, `serve_fresh` connects a new client
/// and does one full exchange. The check counts, not times: when that exchange is done,
/// the flooder must have had less than half of its replies. A server with a read budget
/// per wake-up serves the fresh client within a round or two.
pub fn check_flood_fairness(
    flooder: TcpStream,
    chunk: &[u8],
    chunks: usize,
    reply_per_chunk: usize,
    serve_fresh: impl FnOnce(),
) {
    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

    let total = chunks * reply_per_chunk;
    let replies = Arc::new(AtomicUsize::new(0));
    let stop = Arc::new(AtomicBool::new(false));

    let mut writer = flooder.try_clone().expect("clone the flooder's socket");
    let chunk = chunk.to_vec();
    let stop_writing = Arc::clone(&stop);
    let writing = thread::spawn(move || {
        for _ in 0..chunks {
            if stop_writing.load(Ordering::Relaxed) || writer.write_all(&chunk).is_err() {
                break;
            }
        }
    });
    let mut reader = flooder.try_clone().expect("clone the flooder's socket");
    let counted = Arc::clone(&replies);
    let reading = thread::spawn(move || {
        let mut buf = vec![0u8; 256 * 1024];
        // Ends at end of file or an error: the shutdown below, or PATIENCE without a byte.
        while let Ok(n @ 1..) = reader.read(&mut buf) {
            if counted.fetch_add(n, Ordering::Relaxed) + n >= total {
                break;
            }
        }
    });

    // Wait until the server is busy with the flood.
    let deadline = Instant::now() + PATIENCE;
    while replies.load(Ordering::Relaxed) < 2 * reply_per_chunk {
        assert!(
            Instant::now() < deadline,
            "no reply to the flood within {PATIENCE:?}"
        );
        thread::sleep(Duration::from_millis(1));
    }
    serve_fresh();
    let replied = replies.load(Ordering::Relaxed);

    // Stop the flood: the shutdown wakes both threads at once.
    stop.store(true, Ordering::Relaxed);
    let _ = flooder.shutdown(std::net::Shutdown::Both);
    writing.join().expect("the flood writer panicked");
    reading.join().expect("the flood reader panicked");
    assert!(
        replied < total / 2,
        "a fresh client waited for the flood: the flooder had {replied} of its {total} reply \
         bytes before the fresh client's exchange was done (a read budget per wake-up serves \
         it within a round or two)"
    );
}

/// A memory line never takes the step down: with its stdout closed (`step | head -1`),
/// the step gets EPIPE on every memory line, and must keep serving. One connection is held
/// and then closed, so that the count changes twice and two lines meet the broken pipe;
/// then `serve_one` (one client's full exchange) must succeed.
pub fn check_stdout_closed(bin: &str, extra: &[&str], serve_one: impl Fn(&Server)) {
    let mut server = Server::start_with_stdout_closed(bin, extra);
    // `--report-every 0.1`: a line is due within 0.1 s of each change; wait several.
    let held = server.connect();
    thread::sleep(Duration::from_millis(500));
    drop(held);
    thread::sleep(Duration::from_millis(500));
    assert!(
        server.is_running(),
        "the step died when a memory line met a closed stdout:\n{}",
        server.stderr()
    );
    serve_one(&server);
    assert!(server.is_running(), "{}", server.stderr());
}

/// Send `message` and read back exactly as many bytes, asserting they are the same.
pub fn assert_echo(stream: &mut TcpStream, message: &[u8]) {
    stream.write_all(message).expect("send to the step");
    let mut echoed = vec![0; message.len()];
    stream
        .read_exact(&mut echoed)
        .unwrap_or_else(|err| panic!("no echo of {} bytes: {err}", message.len()));
    assert!(echoed == message, "the echo differs from what was sent");
}
