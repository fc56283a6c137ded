use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use crate::Options;

/// Prints the memory line: how much resident memory this process has gained per connection
/// since it started listening.
///
/// Event-loop steps call [`MemoryMeter::tick`] from their loop (and wake at least every
/// [`MemoryMeter::period`] to do so); blocking steps hand the meter to
/// [`MemoryMeter::report_in_background`].
#[derive(Debug)]
pub struct MemoryMeter {
    /// The name printed at the start of the line, e.g. `step05-epoll`.
    step: String,
    /// Print JSON lines instead of text.
    json: bool,
    /// At most one line per period.
    period: Duration,
    /// Resident set after bind, before the first accept.
    base_rss: u64,
    /// The connection count in the last line printed (0 before the first).
    last_conns: usize,
    /// When the last line was printed (or dropped).
    last_report: Option<Instant>,
    /// Print a line every period, even with the same count: see [`MemoryMeter::heartbeat`].
    heartbeat: bool,
    /// `/proc/self/status`, opened once here: see [`SelfStatus`].
    status: SelfStatus,
}

impl MemoryMeter {
    /// Take the baseline now: call it after binding and before the first accept.
    pub fn new(step: &str, opts: &Options) -> MemoryMeter {
        let status = SelfStatus::open();
        MemoryMeter {
            step: step.to_string(),
            json: opts.json,
            period: opts.report_every(),
            base_rss: status.read().map_or(0, |now| now.rss_bytes),
            last_conns: 0,
            last_report: None,
            heartbeat: false,
            status,
        }
    }

    /// Print a line every period even when the count did not change: whoever reads the
    /// lines (step08's supervisor) then knows that the loop is still turning.
    pub fn heartbeat(mut self) -> MemoryMeter {
        self.heartbeat = true;
        self
    }

    /// Append a detail to the step's name in the line, e.g. `step06-ws-epoll/shared`.
    pub fn label(mut self, detail: &str) -> MemoryMeter {
        self.step = format!("{}/{detail}", self.step);
        self
    }

    /// The resident set taken as the baseline, in bytes.
    pub fn base_rss(&self) -> u64 {
        self.base_rss
    }

    /// How long an event loop may sleep before it should call `tick` again.
    pub fn period(&self) -> Duration {
        self.period
    }

    /// Print the memory line if the connection count changed since the last line and the
    /// last line is at least one period old. Cheap when there is nothing to print.
    pub fn tick(&mut self, conns: usize) {
        if conns == self.last_conns && !self.heartbeat {
            return;
        }
        if self
            .last_report
            .is_some_and(|at| at.elapsed() < self.period)
        {
            return;
        }
        self.last_report = Some(Instant::now());
        // Cannot fail at the fd limit (the file is open already), but /proc can always
        // say no: no line rather than a false `rss 0 B`. Try again in a period.
        let Some(now) = self.status.read() else {
            return;
        };
        let line = MemoryLine::new(&self.step, conns, now.rss_bytes, self.base_rss, now.threads);
        // Without blocking (see `output`): if the reader has no room, the line is dropped
        // and the next one, a period later, says how many were.
        let printed = crate::output::print(|dropped| {
            let line = MemoryLine { dropped, ..line };
            match self.json {
                true => line.to_json(),
                false => line.to_string(),
            }
        });
        if printed {
            self.last_conns = conns;
        }
    }

    /// For blocking steps, whose one thread cannot wake up to report: a thread that reads
    /// the connection count every period and ticks. It shows up in the `threads` figure.
    pub fn report_in_background(mut self, conns: Arc<AtomicUsize>) -> std::io::Result<()> {
        std::thread::Builder::new()
            .name("memory-meter".into())
            .stack_size(64 * 1024)
            .spawn(move || {
                loop {
                    std::thread::sleep(self.period.max(Duration::from_millis(10)));
                    self.tick(conns.load(Ordering::Relaxed));
                }
            })?;
        Ok(())
    }
}

/// One memory line's figures, and its `--json` form: declared once here, printed by the
/// meter and read back by the behaviour suites and the report with this same type.
///
/// As JSON it is one object on one line, tagged `"event":"memory"`:
/// `{"event":"memory","step":"step05-epoll","conns":10000,"rss_bytes":…,"base_rss_bytes":…,
/// "per_conn_bytes":…,"threads":1}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "event", rename = "memory")]
pub struct MemoryLine {
    /// The step's name, with its variant if any (`step06-ws-epoll/shared`).
    pub step: String,
    /// Connections the step holds.
    pub conns: usize,
    /// Resident set now.
    pub rss_bytes: u64,
    /// Resident set after bind, before the first accept.
    pub base_rss_bytes: u64,
    /// (rss − base) / conns, 0 without connections.
    pub per_conn_bytes: u64,
    /// Threads in the process now.
    pub threads: usize,
    /// Lines dropped since the last line that went out, because the reader had no room
    /// for them (see `output`). Left out of the line when 0.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub dropped: u64,
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

impl MemoryLine {
    pub fn new(
        step: &str,
        conns: usize,
        rss_bytes: u64,
        base_rss_bytes: u64,
        threads: usize,
    ) -> MemoryLine {
        let per_conn_bytes = match conns {
            0 => 0,
            n => rss_bytes.saturating_sub(base_rss_bytes) / n as u64,
        };
        MemoryLine {
            step: step.to_string(),
            conns,
            rss_bytes,
            base_rss_bytes,
            per_conn_bytes,
            threads,
            dropped: 0,
        }
    }

    /// The `--json` form: one object on one line.
    pub fn to_json(&self) -> String {
        serde_json::to_string(self).expect("bug: a struct of strings and integers serializes")
    }

    /// A `--json` stdout line read back: `None` unless it is a memory line.
    pub fn from_json(line: &str) -> Option<MemoryLine> {
        serde_json::from_str(line).ok()
    }

    /// The text line after the step's name: `conns 10000  rss 14.2 MiB  …  threads 1`,
    /// and `  dropped N` after lines were dropped. step08 puts its worker count between
    /// the name and these.
    pub fn figures(&self) -> impl std::fmt::Display + '_ {
        Figures(self)
    }
}

impl std::fmt::Display for MemoryLine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}  {}", self.step, self.figures())
    }
}

/// [`MemoryLine::figures`].
struct Figures<'a>(&'a MemoryLine);

impl std::fmt::Display for Figures<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let Figures(line) = self;
        write!(
            f,
            "conns {}  rss {}  base {}  per-conn {}  threads {}",
            line.conns,
            format_bytes(line.rss_bytes),
            format_bytes(line.base_rss_bytes),
            format_bytes(line.per_conn_bytes),
            line.threads
        )?;
        match line.dropped {
            0 => Ok(()),
            n => write!(f, "  dropped {n}"),
        }
    }
}

/// `94 B`, `13.7 KiB`, `14.2 MiB`, `1.3 GiB`.
pub fn format_bytes(bytes: u64) -> String {
    const UNITS: [&str; 4] = ["B", "KiB", "MiB", "GiB"];
    if bytes < 1024 {
        return format!("{bytes} B");
    }
    let mut value = bytes as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit < UNITS.len() - 1 {
        value /= 1024.0;
        unit += 1;
    }
    format!("{value:.1} {}", UNITS[unit])
}

/// This process's resident set in bytes, from `/proc/self/statm` (memory-stats with its
/// `always_use_statm` feature: a few microseconds, where reading smaps in a process with
/// 10 000 threads takes a fifth of a second).
pub fn rss_bytes() -> u64 {
    memory_stats::memory_stats().map_or(0, |stats| stats.physical_mem as u64)
}

/// `/proc/self/status`, opened when the meter starts and read again for every line (from
/// offset 0: /proc writes the text anew for each read). A step at its fd limit has no
/// descriptor left to open a file with, so a meter that opened /proc for each line would go
/// silent, or stale, exactly when the line matters.
///
/// `status` and not `stat`: the kernel keeps the resident set in per-CPU counters, which
/// `status` (like `statm`) sums exactly, where the `rss` of `stat` reads only their last
/// total, a few hundred KiB behind.
#[derive(Debug)]
struct SelfStatus(Option<File>);

impl SelfStatus {
    fn open() -> SelfStatus {
        SelfStatus(File::open("/proc/self/status").ok())
    }

    /// The resident set and the thread count, now.
    fn read(&self) -> Option<ProcStatus> {
        // About 1.5 KiB; `VmRSS` and `Threads` are in the first half, whatever the rest.
        let mut buf = [0u8; 4096];
        let n = self.0.as_ref()?.read_at(&mut buf, 0).ok()?;
        ProcStatus::parse(&String::from_utf8_lossy(&buf[..n]))
    }
}

/// A few lines of `/proc/PID/status`: what the kernel says a process holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProcStatus {
    /// `VmRSS`: resident set in bytes, the counter the memory line reads (through statm).
    pub rss_bytes: u64,
    /// `Threads`.
    pub threads: usize,
}

impl ProcStatus {
    /// Read `/proc/PID/status`; `pid` is a number, or `self`.
    pub fn read(pid: impl std::fmt::Display) -> io::Result<ProcStatus> {
        let text = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
        ProcStatus::parse(&text).ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::InvalidData,
                "no VmRSS/Threads in /proc/PID/status",
            )
        })
    }

    /// What serves a step's connections: the process itself, or, for a supervisor of
    /// worker processes (step08), the sums over its workers (the processes its memory line
    /// counts). A worker that exits between the listing and the read is not counted.
    pub fn read_serving(pid: u32) -> io::Result<ProcStatus> {
        let workers = children_of(pid);
        if workers.is_empty() {
            return ProcStatus::read(pid);
        }
        let mut sum = ProcStatus {
            rss_bytes: 0,
            threads: 0,
        };
        for status in workers.into_iter().filter_map(|w| ProcStatus::read(w).ok()) {
            sum.rss_bytes += status.rss_bytes;
            sum.threads += status.threads;
        }
        Ok(sum)
    }

    fn parse(text: &str) -> Option<ProcStatus> {
        let field = |name: &str| -> Option<u64> {
            let line = text.lines().find_map(|line| line.strip_prefix(name))?;
            line.split_whitespace().next()?.parse().ok()
        };
        Some(ProcStatus {
            rss_bytes: field("VmRSS:")? * 1024,
            threads: field("Threads:")? as usize,
        })
    }
}

/// `RssAnon` of `/proc/PID/status` in bytes (`pid` a number or `self`): the resident
/// memory a process allocated, without the pages of its binary and libraries. Those are
/// file-backed: under memory pressure the kernel drops them and reads them back later, so
/// the full resident set of a process can shrink while it allocates. Growth in this figure
/// is growth in what the process itself holds.
pub fn anon_rss_bytes(pid: impl std::fmt::Display) -> io::Result<u64> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    text.lines()
        .find_map(|line| line.strip_prefix("RssAnon:"))
        .and_then(|rest| rest.split_whitespace().next()?.parse::<u64>().ok())
        .map(|kib| kib * 1024)
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, "no RssAnon in /proc/PID/status"))
}

/// The pids whose parent is `parent` (field 4 of `/proc/PID/stat`): a supervisor's workers.
pub fn children_of(parent: u32) -> Vec<u32> {
    // A process that exits meanwhile has no stat to read: not a child any more.
    pids_where("stat", |stat| {
        let after_name = &stat[stat.rfind(')').map_or(0, |i| i + 1)..];
        after_name.split_whitespace().nth(1) == Some(parent.to_string().as_str())
    })
}

/// The pids of the processes whose `/proc/PID/<file>` reads, and says yes to `keep`. A
/// process that exits meanwhile has nothing to read, and is left out.
pub fn pids_where(file: &str, keep: impl Fn(&str) -> bool) -> Vec<u32> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            std::fs::read_to_string(format!("/proc/{pid}/{file}")).is_ok_and(|text| keep(&text))
        })
        .collect()
}

/// What process `pid`'s open fds link to, from `/proc/PID/fd`: `socket:[INODE]`,
/// `anon_inode:[io_uring]`, a file's path. An fd closed meanwhile is left out.
pub fn fd_targets(pid: u32) -> io::Result<Vec<String>> {
    Ok(std::fs::read_dir(format!("/proc/{pid}/fd"))?
        .flatten()
        .filter_map(|fd| std::fs::read_link(fd.path()).ok())
        .map(|target| target.to_string_lossy().into_owned())
        .collect())
}

/// CPU time (user + system) a process has used so far, all its threads together, those
/// that have exited included, to the nanosecond: the process's CPU-time clock
/// (`clock_getcpuclockid`), which the kernel keeps for any process we may inspect.
pub fn cpu_time(pid: u32) -> io::Result<Duration> {
    let mut clock: libc::clockid_t = 0;
    // SAFETY: `clock` is a valid, writable clockid_t; the call only stores into it.
    let err = unsafe { libc::clock_getcpuclockid(pid as libc::pid_t, &mut clock) };
    if err != 0 {
        // This one returns the error number instead of setting errno.
        return Err(io::Error::from_raw_os_error(err));
    }
    crate::sys::clock_now(clock)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A process with children is counted by them (a supervisor by its workers), not itself.
    #[test]
    fn a_supervisor_is_counted_by_its_workers() {
        let mut shell = std::process::Command::new("sh")
            .args(["-c", "sleep 10 & sleep 10 & wait"])
            .spawn()
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(5);
        let mut workers = children_of(shell.id());
        while workers.len() < 2 && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
            workers = children_of(shell.id());
        }
        // Just started, the sleeps may still be paging themselves in: read the sum between
        // two readings of each that agree (bounded), so that all three see the same pages.
        let read_each = || -> Vec<u64> {
            let each = workers.iter().map(|&w| ProcStatus::read(w).unwrap());
            each.map(|s| s.rss_bytes).collect()
        };
        let (mut summed, mut each) = (None, Vec::new());
        for _ in 0..100 {
            let before = read_each();
            let sum = ProcStatus::read_serving(shell.id()).unwrap();
            each = read_each();
            summed = Some(sum);
            if before == each {
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let summed = summed.expect("bug: the loop runs at least once");
        for &w in &workers {
            // SAFETY: kill takes no pointers; `w` is a child of the shell this test started.
            unsafe { libc::kill(w as libc::pid_t, libc::SIGKILL) };
        }
        let _ = shell.kill();
        let _ = shell.wait();
        assert_eq!(workers.len(), 2, "the shell's two sleeps");
        assert_eq!(summed.threads, 2);
        assert_eq!(summed.rss_bytes, each.iter().sum::<u64>());
    }

    /// Per-connection cost is RSS growth over the baseline per connection; 0 if none or no growth.
    #[test]
    fn per_conn_is_growth_over_base_divided_by_connections() {
        let line = MemoryLine::new("step05-epoll", 10_000, 14_000_000, 13_000_000, 1);
        assert_eq!(line.per_conn_bytes, 100);
        // No connections: nothing to divide by.
        assert_eq!(
            MemoryLine::new("s", 0, 14_000_000, 13_000_000, 1).per_conn_bytes,
            0
        );
        // The resident set can shrink below the baseline; that is no negative cost.
        assert_eq!(
            MemoryLine::new("s", 10, 12_000_000, 13_000_000, 1).per_conn_bytes,
            0
        );
    }

    /// The memory line reads exactly as the READMEs show it, sizes in KiB and MiB.
    #[test]
    fn human_line_matches_the_documented_form() {
        let line = MemoryLine::new("step05-epoll", 10_000, 14_889_779, 13_946_060, 1);
        assert_eq!(
            line.to_string(),
            "step05-epoll  conns 10000  rss 14.2 MiB  base 13.3 MiB  per-conn 94 B  threads 1"
        );
    }

    /// The figures are the text line after the step's name, `dropped` included: step08
    /// prints its worker count between the two, and its line must end as every step's does.
    #[test]
    fn figures_are_the_line_after_the_name() {
        let line = MemoryLine {
            dropped: 3,
            ..MemoryLine::new("step08-reuseport", 2, 3 << 20, 2 << 20, 2)
        };
        assert_eq!(
            line.figures().to_string(),
            "conns 2  rss 3.0 MiB  base 2.0 MiB  per-conn 512.0 KiB  threads 2  dropped 3"
        );
        assert_eq!(
            line.to_string(),
            format!("step08-reuseport  {}", line.figures())
        );
    }

    /// With --json, the memory line is one JSON object carrying every figure.
    #[test]
    fn json_line_carries_every_figure() {
        let line = MemoryLine::new("step02-threads", 3, 1_300, 1_000, 4);
        assert_eq!(
            line.to_json(),
            r#"{"event":"memory","step":"step02-threads","conns":3,"rss_bytes":1300,"base_rss_bytes":1000,"per_conn_bytes":100,"threads":4}"#
        );
    }

    /// A socket this process opens shows among its fd targets as `socket:[INODE]`, and is
    /// gone once closed; a process that does not exist is an error.
    #[test]
    fn fd_targets_name_what_each_fd_is() {
        use std::os::fd::AsRawFd;
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        // SAFETY: all zeroes is a valid `stat`; fstat writes into it and reads nothing else.
        let mut stat: libc::stat = unsafe { std::mem::zeroed() };
        // SAFETY: the fd is the open listener's; `stat` is valid and writable.
        assert_eq!(unsafe { libc::fstat(listener.as_raw_fd(), &mut stat) }, 0);
        let ours = format!("socket:[{}]", stat.st_ino);
        let held = || fd_targets(std::process::id()).unwrap().contains(&ours);
        assert!(held(), "{ours} among {:?}", fd_targets(std::process::id()));
        drop(listener);
        assert!(!held(), "{ours} still listed once closed");
        assert!(fd_targets(u32::MAX).is_err());
    }

    /// Byte counts print as B below 1 KiB, then in KiB, MiB or GiB with one decimal.
    #[test]
    fn bytes_read_at_a_glance() {
        assert_eq!(format_bytes(0), "0 B");
        assert_eq!(format_bytes(1023), "1023 B");
        assert_eq!(format_bytes(1024), "1.0 KiB");
        assert_eq!(format_bytes(14_100), "13.8 KiB");
        assert_eq!(format_bytes(3 * 1024 * 1024 * 1024), "3.0 GiB");
    }

    /// The meter reads this process's own resident set and thread count, the figures
    /// /proc/self/status gives.
    #[test]
    fn reads_its_own_process() {
        assert!(rss_bytes() > 0, "statm reading failed");
        let status = SelfStatus::open();
        let now = status.read().expect("/proc/self/status is readable");
        let fresh = ProcStatus::read("self").unwrap();
        // The same counters, read a moment apart (other tests run meanwhile, in threads
        // of this process): within a few MiB, and at least this test's own thread.
        assert!(now.threads >= 1);
        assert!(
            now.rss_bytes.abs_diff(fresh.rss_bytes) < 4 << 20,
            "{now:?} vs {fresh:?}"
        );
        // Read again, the file says what is true now, not what it said when opened, and
        // to the page: the kernel's per-CPU counters summed, as statm (`rss_bytes`) sums
        // them, where `stat` would lag by up to 32 pages a CPU.
        // (Other tests allocate meanwhile, in this process: a few tries at each step find
        // a quiet moment; a lag would stay.)
        let mut grown = Vec::new();
        for _ in 0..16 {
            grown.push(std::hint::black_box(vec![1u8; 10 * 4096]));
            let gaps: Vec<u64> = (0..5)
                .map(|_| status.read().unwrap().rss_bytes.abs_diff(rss_bytes()))
                .collect();
            assert!(
                gaps.iter().any(|&gap| gap < 4 * 4096),
                "off statm by {gaps:?} B"
            );
        }
        assert!(status.read().unwrap().rss_bytes >= now.rss_bytes + 150 * 4096);
    }

    /// A JSON memory line reads back into the same figures; other events are not memory lines.
    #[test]
    fn json_line_reads_back_and_other_events_do_not() {
        let line = MemoryLine::new("step06-ws-epoll/shared", 2000, 5_000_000, 4_000_000, 1);
        assert_eq!(MemoryLine::from_json(&line.to_json()), Some(line));
        assert_eq!(
            MemoryLine::from_json(r#"{"event":"listening","addr":"127.0.0.1:1"}"#),
            None
        );
        assert_eq!(MemoryLine::from_json("step05-epoll  conns 1"), None);
    }

    /// /proc/PID/status yields the resident set in bytes and the thread count.
    #[test]
    fn status_gives_rss_in_bytes_and_threads() {
        let text = "Name:\tstep05-epoll\nVmPeak:\t  20000 kB\nVmRSS:\t    2048 kB\nThreads:\t1\n";
        assert_eq!(
            ProcStatus::parse(text),
            Some(ProcStatus {
                rss_bytes: 2048 * 1024,
                threads: 1
            })
        );
        assert_eq!(ProcStatus::parse("Name:\tx\n"), None);
    }

    /// CPU time counts what a thread used after it exited, to the millisecond.
    #[test]
    fn cpu_time_keeps_what_exited_threads_used() {
        const WORK: Duration = Duration::from_millis(20);
        let pid = std::process::id();
        let before = cpu_time(pid).unwrap();
        // A thread that works until its own CPU clock says WORK (at most 5 s of wall
        // clock on a busy machine), then exits.
        std::thread::spawn(|| {
            let started = Instant::now();
            let mut x = 0u64;
            while crate::work::thread_cpu_time() < WORK
                && started.elapsed() < Duration::from_secs(5)
            {
                x = std::hint::black_box(x.wrapping_add(1));
            }
        })
        .join()
        .unwrap();
        let used = cpu_time(pid).unwrap() - before;
        assert!(
            used >= WORK,
            "the exited thread's {WORK:?} of CPU are not counted: {used:?}"
        );
        // Past the largest pid Linux allows (2^22).
        assert!(cpu_time(99_999_999).is_err(), "no such process");
    }
}
