//! `cargo run --release -p report -- --million`
//!
//! The talk's headline as one command: step08-reuseport with enough worker processes for
//! a million WebSocket connections, loadgen holding them (in as many child processes as
//! its open-file limit asks for), and what it all costs, measured: the server's user-space
//! memory per connection (summed over the workers, from /proc), the kernel's (slab deltas),
//! loadgen's own, the time to open them, an echo on every connection at once, and probes.
//!
//! Before it starts, it checks what the machine allows and runs the largest N that fits,
//! saying what is short (`fit.rs`). It may raise `net.core.netdev_max_backlog` (as root)
//! for the opening storm; it says so, prints the drops the kernel counted, and puts it back.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, ExitCode, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use serde::Serialize;

use crate::child::StepProcess;
use crate::fit::{Machine, fit};
use crate::live;
use crate::output::{micros, signed_bytes};
use crate::procfs::KernelMemory;

/// The loopback backlog raised for the opening storm, if lower (and we are root).
const NETDEV_BACKLOG: u64 = 65_536;

/// Echo outcome, as loadgen's summary gives it.
#[derive(Debug, Clone, Default, Serialize, serde::Deserialize)]
pub struct Echoes {
    pub ok: usize,
    pub lost: usize,
    pub mismatched: usize,
    pub failed: usize,
    pub p50_us: Option<f64>,
    pub p99_us: Option<f64>,
    pub max_us: Option<f64>,
}

/// What `million.json` holds.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Million {
    pub asked: usize,
    pub conns: usize,
    pub short: Vec<String>,
    pub machine: Option<Machine>,
    pub workers: usize,
    pub held: usize,
    pub failed: usize,
    pub failures: String,
    pub open_seconds: f64,
    pub open_per_second: f64,
    /// Σ workers' anonymous resident memory (`RssAnon`) − the same before the first
    /// connection, from /proc. Not VmRSS: at this scale the kernel reclaims file-backed
    /// pages (the binary's) under memory pressure, and VmRSS can shrink while the heap grows.
    pub server_user_bytes: Option<u64>,
    pub server_user_per_conn: Option<u64>,
    /// Σ workers' VmRSS before the first connection.
    pub worker_bases_bytes: Option<u64>,
    /// The supervisor's own memory line: per-conn, and its own resident set.
    pub server_line_per_conn: Option<u64>,
    pub supervisor_rss_bytes: Option<u64>,
    /// Growth of the socket caches while the connections opened, both ends.
    pub kernel_bytes: Option<i64>,
    pub kernel_per_conn: Option<i64>,
    pub loadgen_processes: usize,
    pub loadgen_rss_bytes: u64,
    pub loadgen_per_conn: Option<u64>,
    pub burst: Echoes,
    pub probes: Echoes,
    pub netdev_max_backlog: Option<(u64, u64)>,
    pub softnet_drops: (u64, u64),
    pub wall_seconds: f64,
    pub error: Option<String>,
}

/// `report --million`: run it, print the table, write `million.json` into `out`.
pub fn run(wanted: Option<usize>, out: &Path, bin_dir: &Path) -> ExitCode {
    let started = Instant::now();
    let mut m = Million {
        asked: wanted.unwrap_or(1_000_000),
        ..Million::default()
    };
    if let Err(err) = measure(&mut m, bin_dir) {
        eprintln!("report: the million did not finish: {err}");
        m.error = Some(err);
    }
    m.wall_seconds = started.elapsed().as_secs_f64();
    print!("{}", table(&m));
    let json = serde_json::to_string_pretty(&m).expect("bug: the figures serialize");
    match std::fs::write(out.join("million.json"), json + "\n") {
        Ok(()) => eprintln!("report: wrote million.json into {}", out.display()),
        Err(err) => {
            eprintln!("report: cannot write into {}: {err}", out.display());
            return ExitCode::FAILURE;
        }
    }
    if m.error.is_none() && m.held == m.conns && m.failed == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

fn measure(m: &mut Million, bin_dir: &Path) -> Result<(), String> {
    let (server_bin, loadgen_bin) = (bin_dir.join("step08-reuseport"), bin_dir.join("loadgen"));
    for bin in [&server_bin, &loadgen_bin] {
        if !bin.exists() {
            return Err(format!("no binary at {}", bin.display()));
        }
    }
    let machine = Machine::read()?;
    eprintln!(
        "report: this machine: {} cores, {} GiB available, fs.file-max {}, fs.nr_open {}, \
         open-file limit {} per process, ports {}–{}, net.core.netdev_max_backlog {}",
        machine.cores,
        machine.mem_available_bytes >> 30,
        machine.file_max,
        machine.nr_open,
        machine.fd_hard_limit,
        machine.port_range.0,
        machine.port_range.1,
        machine.netdev_max_backlog
    );
    let plan = fit(m.asked, &machine);
    for why in &plan.short {
        eprintln!("report: short of {why}");
    }
    m.machine = Some(machine.clone());
    (m.conns, m.workers, m.short) = (plan.conns, plan.workers, plan.short.clone());
    if m.conns == 0 {
        return Err("nothing fits".into());
    }
    eprintln!(
        "report: {} WebSocket connections, {} server workers (each under its own open-file limit)",
        m.conns, m.workers
    );

    let backlog = Backlog::raise(machine.netdev_max_backlog);
    m.netdev_max_backlog = backlog.changed();
    let drops_before = softnet_drops();

    KernelMemory::settle(Duration::from_secs(5));
    let workers = m.workers.to_string();
    // A request head has 60 s instead of 10 to arrive: in a storm of a million connections
    // on two cores, a client may wait that long for the CPU between connect and request.
    let mut server = StepProcess::start(
        &server_bin,
        &["--workers", &workers, "--handshake-timeout", "60"],
    )?;
    let addr = server.addr();
    std::thread::sleep(Duration::from_millis(500));
    let worker_pids = common::children_of(server.pid());
    let bases: u64 = worker_pids
        .iter()
        .filter_map(|&p| common::ProcStatus::read(p).ok())
        .map(|s| s.rss_bytes)
        .sum();
    m.worker_bases_bytes = Some(bases);
    let anon_before = anon_sum(&worker_pids);
    let kernel_before = KernelMemory::read();

    let mut loadgen = Loadgen::start(&loadgen_bin, &format!("ws://{addr}/"), m.conns)?;
    live::progress(
        "step08-reuseport",
        &format!("opening {} connections", m.conns),
    );
    let watch = live::MillionWatch::start(live::MillionProcesses {
        asked: m.conns,
        workers: worker_pids.clone(),
        anon_before,
        loadgen: loadgen.child.id(),
        kernel_before: kernel_before.clone(),
    });
    let summary = loadgen.summary(Duration::from_secs(900))?;
    watch.finish();
    let since = Instant::now();

    // Everything is held (and has echoed once): measure.
    let opened = &summary["opened"];
    m.held = opened["held"].as_u64().unwrap_or(0) as usize;
    m.failed = m.conns - m.held.min(m.conns);
    m.failures = match opened["failures"].as_array() {
        Some(list) if !list.is_empty() => opened["failures"].to_string(),
        _ => "none".into(),
    };
    m.open_seconds = summary["open_seconds"].as_f64().unwrap_or(0.0);
    m.open_per_second = m.held as f64 / m.open_seconds.max(1e-3);
    m.loadgen_processes = summary["processes"].as_u64().unwrap_or(0) as usize;
    m.loadgen_rss_bytes = opened["rss_bytes"].as_u64().unwrap_or(0);
    m.loadgen_per_conn = m
        .loadgen_rss_bytes
        .checked_sub(opened["base_rss_bytes"].as_u64().unwrap_or(0))
        .and_then(|grown| grown.checked_div(m.held as u64));
    m.burst = serde_json::from_value(summary["burst"].clone()).unwrap_or_default();
    m.probes = serde_json::from_value(summary["probes"].clone()).unwrap_or_default();

    let kernel_after = KernelMemory::read();
    if let (Some(before), Some(after)) = (&kernel_before, &kernel_after) {
        let (_, total) = before.growth(after);
        m.kernel_bytes = Some(total);
        m.kernel_per_conn = (m.held > 0).then(|| total / m.held as i64);
    }
    let grown = anon_sum(&worker_pids).saturating_sub(anon_before);
    m.server_user_bytes = Some(grown);
    m.server_user_per_conn = (m.held > 0).then(|| grown / m.held as u64);
    if let Some(line) = server.memory_line(m.held, since, Duration::from_secs(10)) {
        m.server_line_per_conn = Some(line.line.per_conn_bytes);
    }
    m.supervisor_rss_bytes = common::ProcStatus::read(server.pid())
        .ok()
        .map(|s| s.rss_bytes);

    eprintln!("report: measured; closing the connections");
    live::progress(
        "step08-reuseport",
        &format!(
            "{} held, opened in {:.0} s; closing them",
            m.held, m.open_seconds
        ),
    );
    loadgen.stop();
    stop(&mut server);
    m.softnet_drops = (drops_before, softnet_drops());
    drop(backlog);
    Ok(())
}

/// Σ `RssAnon` of `pids` (a worker that is gone counts 0).
fn anon_sum(pids: &[u32]) -> u64 {
    pids.iter()
        .filter_map(|&p| common::anon_rss_bytes(p).ok())
        .sum()
}

/// loadgen's binary, holding the connections until told to stop.
struct Loadgen {
    child: Child,
    lines: mpsc::Receiver<String>,
}

impl Loadgen {
    fn start(bin: &Path, url: &str, conns: usize) -> Result<Loadgen, String> {
        let mut child = Command::new(bin)
            .args([
                url,
                "--conns",
                &conns.to_string(),
                "--echo-each",
                "--echo",
                "1000",
            ])
            // A burst of a million messages on two cores takes seconds; a probe, micros.
            .args([
                "--echo-timeout",
                "60",
                "--connect-timeout",
                "30",
                "--hold",
                "3600",
                "--json",
            ])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            // Its progress bar and messages go straight to our stderr, for the audience.
            .stderr(Stdio::inherit())
            .spawn()
            .map_err(|err| format!("cannot start {}: {err}", bin.display()))?;
        let stdout = child.stdout.take().expect("bug: stdout is piped");
        let (sender, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if sender.send(line).is_err() {
                    break;
                }
            }
        });
        Ok(Loadgen { child, lines })
    }

    /// loadgen's JSON summary, once all is held and echoed; its text lines go to stderr.
    fn summary(&mut self, patience: Duration) -> Result<serde_json::Value, String> {
        let deadline = Instant::now() + patience;
        while Instant::now() < deadline {
            match self.lines.recv_timeout(Duration::from_secs(1)) {
                Ok(line) if line.starts_with('{') => {
                    return serde_json::from_str(&line)
                        .map_err(|err| format!("loadgen's summary: {err}"));
                }
                Ok(line) => eprintln!("loadgen: {line}"),
                Err(mpsc::RecvTimeoutError::Timeout) => {}
                Err(mpsc::RecvTimeoutError::Disconnected) => {
                    let status = self.child.wait().map_err(|e| e.to_string())?;
                    return Err(format!("loadgen exited ({status}) before its summary"));
                }
            }
        }
        Err(format!(
            "no summary from loadgen within {} s",
            patience.as_secs()
        ))
    }

    /// Ctrl-C, as a user would: it closes every connection (in every child) and exits.
    fn stop(mut self) {
        signal(self.child.id(), libc::SIGINT);
        wait_or_kill(&mut self.child, Duration::from_secs(60));
    }
}

/// SIGTERM to the supervisor, which stops its workers; the drop of `server` then reaps it.
fn stop(server: &mut StepProcess) {
    signal(server.pid(), libc::SIGTERM);
    let deadline = Instant::now() + Duration::from_secs(30);
    while server.is_running() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn wait_or_kill(child: &mut Child, patience: Duration) {
    let deadline = Instant::now() + patience;
    while matches!(child.try_wait(), Ok(None)) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    let _ = child.kill();
    let _ = child.wait();
}

/// Send `signal` to `pid`, a process this report started.
fn signal(pid: u32, signal: libc::c_int) {
    // SAFETY: kill takes no pointers; the pid is our own child, not yet reaped.
    unsafe { libc::kill(pid as libc::pid_t, signal) };
}

/// Packets the kernel dropped because a CPU's input queue was full: the second column of
/// /proc/net/softnet_stat (hexadecimal, one line per CPU), summed.
fn softnet_drops() -> u64 {
    std::fs::read_to_string("/proc/net/softnet_stat")
        .map(|text| parse_softnet_drops(&text))
        .unwrap_or(0)
}

fn parse_softnet_drops(text: &str) -> u64 {
    text.lines()
        .filter_map(|line| u64::from_str_radix(line.split_whitespace().nth(1)?, 16).ok())
        .sum()
}

/// `net.core.netdev_max_backlog` raised for the run, and put back after.
struct Backlog {
    was: u64,
    raised: bool,
}

const BACKLOG_PATH: &str = "/proc/sys/net/core/netdev_max_backlog";

impl Backlog {
    fn raise(was: u64) -> Backlog {
        if was >= NETDEV_BACKLOG {
            return Backlog { was, raised: false };
        }
        let raised = std::fs::write(BACKLOG_PATH, NETDEV_BACKLOG.to_string()).is_ok();
        if raised {
            eprintln!(
                "report: raised net.core.netdev_max_backlog from {was} to {NETDEV_BACKLOG} for the \
                 run (loopback drops packets past it when a connection storm fills a CPU's \
                 queue); it is put back at the end"
            );
        } else {
            eprintln!(
                "report: net.core.netdev_max_backlog is {was} and cannot be raised (not root): \
                 expect dropped SYNs, retransmits and a slower opening"
            );
        }
        Backlog { was, raised }
    }

    fn changed(&self) -> Option<(u64, u64)> {
        self.raised.then_some((self.was, NETDEV_BACKLOG))
    }
}

impl Drop for Backlog {
    fn drop(&mut self) {
        if self.raised && std::fs::write(BACKLOG_PATH, self.was.to_string()).is_ok() {
            eprintln!(
                "report: net.core.netdev_max_backlog is back to {}",
                self.was
            );
        }
    }
}

fn bytes(b: Option<u64>) -> String {
    b.map_or("–".into(), common::format_bytes)
}

fn echoes(e: &Echoes) -> String {
    let sent = e.ok + e.lost + e.mismatched + e.failed;
    let times = match (e.p50_us, e.p99_us, e.max_us) {
        (Some(p50), Some(p99), Some(max)) => format!(
            "; p50 {} p99 {} max {}",
            micros(p50),
            micros(p99),
            micros(max)
        ),
        _ => String::new(),
    };
    format!(
        "{} of {sent} back intact ({} lost, {} mismatched, {} failed){times}",
        e.ok, e.lost, e.mismatched, e.failed
    )
}

/// The run as a narrow Markdown table.
pub fn table(m: &Million) -> String {
    let per_conn_signed = |v: Option<i64>| v.map_or("–".into(), signed_bytes);
    let rows: Vec<(&str, String)> = vec![
        (
            "connections held",
            format!(
                "{} of {} ({} failed: {})",
                m.held, m.conns, m.failed, m.failures
            ),
        ),
        (
            "opened in",
            format!(
                "{:.1} s ({:.0} per second)",
                m.open_seconds, m.open_per_second
            ),
        ),
        ("server workers", m.workers.to_string()),
        (
            "server user space",
            format!(
                "{} in all, {} per connection",
                bytes(m.server_user_bytes),
                bytes(m.server_user_per_conn)
            ),
        ),
        ("workers' bases", bytes(m.worker_bases_bytes)),
        ("supervisor", bytes(m.supervisor_rss_bytes)),
        (
            "kernel, both ends",
            format!(
                "{} in all, {} per connection",
                per_conn_signed(m.kernel_bytes),
                per_conn_signed(m.kernel_per_conn)
            ),
        ),
        (
            "loadgen",
            format!(
                "{} per connection ({} in {} processes)",
                bytes(m.loadgen_per_conn),
                common::format_bytes(m.loadgen_rss_bytes),
                m.loadgen_processes
            ),
        ),
        ("one message on each, at once", echoes(&m.burst)),
        ("echo probes", echoes(&m.probes)),
        (
            "loopback drops (softnet)",
            format!(
                "{} during the run",
                m.softnet_drops.1.saturating_sub(m.softnet_drops.0)
            ),
        ),
        ("whole run", format!("{:.0} s", m.wall_seconds)),
    ];
    let mut text = format!(
        "\n## {} WebSocket connections on one machine\n\n| | |\n|---|---|\n",
        m.held
    );
    for (name, value) in rows {
        text.push_str(&format!("| {name} | {value} |\n"));
    }
    for why in &m.short {
        text.push_str(&format!("\nShort of {why}.\n"));
    }
    if let Some(err) = &m.error {
        text.push_str(&format!("\nNot finished: {err}\n"));
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Drops are the second column of softnet_stat, in hexadecimal, summed over the CPUs.
    #[test]
    fn softnet_drops_sum_the_second_column_in_hex() {
        let text = "0000abcd 0000022f 00000000\n00001234 00000010 00000000\n";
        assert_eq!(parse_softnet_drops(text), 0x22f + 0x10);
    }
}
