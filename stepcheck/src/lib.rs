//! The behaviour every step promises, as tests run against the step's real binary.
//!
//! Each step's `tests/behaviour.rs` calls these functions with
//! `env!("CARGO_BIN_EXE_stepNN-name")`, so all steps are held to the same checks, like for
//! like. [`Server`] starts a step on a free port and reads its `--json` lines; [`tcp`] holds
//! the checks for the raw-TCP echo steps (01–05), [`ws`] those for the WebSocket steps
//! (06–07), and [`memory`] holds every step's memory line to `/proc`. [`inprocess`] runs a
//! step's `serve` in the test's own process, for the faults a client cannot cause.
//! [`chromium`] starts the headless browser that the browser and slide checks drive, and
//! [`syscalls`] counts a step's system calls with `perf`.

pub mod chromium;
pub mod inprocess;
pub mod memory;
pub mod syscalls;
pub mod tcp;
pub mod ws;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::os::unix::process::CommandExt;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc::{self, Receiver};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use common::MemoryLine;
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

/// A step running in a child process, listening on a free loopback port. Dropping it kills
/// the child (by its pid) and reaps it.
pub struct Server {
    child: Child,
    /// Where the step is listening, from its first stdout line.
    pub addr: SocketAddr,
    /// The stdout lines after the first, as parsed JSON.
    lines: Receiver<Value>,
    /// Everything the step wrote to stderr so far, for failure messages.
    stderr: Arc<Mutex<String>>,
    /// The step's `VmRSS` read by the test when its `listening` line arrived, before any
    /// connection: what the memory line's `base` is held to.
    rss_at_start: u64,
}

impl Server {
    /// Start `bin --addr 127.0.0.1:0 --json --report-every 0.1 EXTRA...` and wait for its
    /// `listening` line.
    pub fn start(bin: &str, extra: &[&str]) -> Server {
        Server::spawn(Server::command(bin, extra), true)
    }

    /// Like [`Server::start`], then close our end of the step's stdout once its `listening`
    /// line is read, as `step | head -1` or a closed terminal would: every memory line
    /// after that meets a broken pipe.
    pub fn start_with_stdout_closed(bin: &str, extra: &[&str]) -> Server {
        Server::spawn(Server::command(bin, extra), false)
    }

    /// Like [`Server::start`], with the child's open-file limit (soft and hard) set to
    /// `max_fds` before exec, so the step cannot raise it back.
    pub fn start_with_fd_limit(bin: &str, extra: &[&str], max_fds: u64) -> Server {
        let mut command = Server::command(bin, extra);
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
        Server::spawn(command, true)
    }

    fn command(bin: &str, extra: &[&str]) -> Command {
        let mut command = Command::new(bin);
        command
            .args(["--addr", "127.0.0.1:0", "--json", "--report-every", "0.1"])
            .args(extra)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        command
    }

    /// Start `command`; `keep_stdout: false` stops reading (and closes) its stdout after
    /// the first line.
    fn spawn(mut command: Command, keep_stdout: bool) -> Server {
        let mut child = command
            .spawn()
            .unwrap_or_else(|err| panic!("cannot start {command:?}: {err}"));

        let stderr = Arc::new(Mutex::new(String::new()));
        let mut child_stderr = child.stderr.take().expect("stderr is piped");
        let collected = Arc::clone(&stderr);
        thread::spawn(move || {
            let mut buf = [0u8; 4096];
            while let Ok(n @ 1..) = child_stderr.read(&mut buf) {
                collected
                    .lock()
                    .unwrap()
                    .push_str(&String::from_utf8_lossy(&buf[..n]));
            }
        });

        let (tx, lines) = mpsc::channel();
        let stdout = BufReader::new(child.stdout.take().expect("stdout is piped"));
        thread::spawn(move || {
            for line in stdout.lines() {
                let Ok(line) = line else { break };
                let value = serde_json::from_str(&line)
                    .unwrap_or_else(|err| panic!("stdout line is not JSON ({err}): {line}"));
                if tx.send(value).is_err() || !keep_stdout {
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
        };
        let first = server.next_line(PATIENCE).unwrap_or_else(|| {
            panic!(
                "the step printed no `listening` line; stderr:\n{}",
                server.stderr()
            )
        });
        assert_eq!(
            first["event"], "listening",
            "the first stdout line must be `listening`: {first}"
        );
        server.addr = first["addr"]
            .as_str()
            .and_then(|addr| addr.parse().ok())
            .unwrap_or_else(|| panic!("`listening` line without a socket address: {first}"));
        server.rss_at_start = server.rss_bytes();
        server
    }

    /// The step's `VmRSS` when it started listening, read by the test.
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

    /// The next JSON line on stdout, or `None` after `timeout` (or when stdout closed).
    pub fn next_line(&self, timeout: Duration) -> Option<Value> {
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

    /// CPU time (user + system) the child has used so far, all its threads (see
    /// [`common::cpu_time`]).
    pub fn cpu_seconds(&self) -> f64 {
        common::cpu_time(self.pid())
            .expect("the step's /proc CPU time")
            .as_secs_f64()
    }

    /// The child's resident set in bytes, from the `VmRSS:` line of `/proc/PID/status`.
    pub fn rss_bytes(&self) -> u64 {
        self.status_bytes("VmRSS:")
    }

    /// The child's peak resident set so far ("high water mark"), from `VmHWM:`: memory
    /// held for a moment counts even if it was given back since.
    pub fn peak_rss_bytes(&self) -> u64 {
        self.status_bytes("VmHWM:")
    }

    /// A `... kB` line of `/proc/PID/status`, in bytes.
    fn status_bytes(&self, field: &str) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid()))
            .expect("the step's /proc status");
        let kib: u64 = status
            .lines()
            .find_map(|line| line.strip_prefix(field))
            .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap_or_else(|| panic!("a {field} line in /proc/PID/status"));
        kib * 1024
    }
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
/// 330 KiB (step06), 390 KiB (step07). 1 MiB leaves more than twice that, and is a tenth of
/// what the flood pushes before the kernel's socket buffers fill (~8–10 MiB).
pub const FLOOD_GROWTH_LIMIT: u64 = 1 << 20;

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
