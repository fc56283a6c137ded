//! `cargo run --release -p report -- --million --loop both`
//!
//! The talk's headline as one command: step08-reuseport with enough worker processes for
//! a million WebSocket connections, loadgen holding them (in as many child processes as
//! its open-file limit asks for), and what it all costs, measured: the server's user-space
//! memory per connection (summed over the workers, from /proc), the kernel's (slab deltas),
//! loadgen's own, the time to open them, an echo on every connection at once (with where
//! its time went, and the least it could take), and probes. With `--loop both`, once with
//! step06's epoll loop in every worker, then once with step09's io_uring loop.
//!
//! Before it starts, it checks what the machine allows and runs the largest N that fits,
//! saying what is short (`fit.rs`). As root, it raises two kernel settings a million
//! outgrows, and gives the run a network namespace of its own, sized for its sockets; it
//! says so, prints the drops the kernel counted, and puts the settings back.
//!
//! - `million/figures.rs`: what `million.json` holds, a run per loop;
//! - `million/client.rs`: loadgen's binary, holding the connections, told what to do;
//! - `million/burst.rs`: the CPU time each side of the burst took, and the floor it sets;
//! - `million/settings.rs`: loopback's input queue and TCP's memory, raised for the run,
//!   and the packets loopback dropped;
//! - `million/network.rs`: a network namespace of the run's own, where the kernel's table
//!   of established connections has room for its two million sockets;
//! - `million/sysctl.rs`: a kernel setting's file, read and written whole (for the two
//!   above);
//! - `million/table.rs`: the runs as one table, a column per loop.

mod burst;
mod client;
mod figures;
mod network;
mod settings;
mod sysctl;
mod table;

use std::path::Path;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use stepcheck::syscalls::SyscallCount;

use crate::child::StepProcess;
use crate::fit::{Fit, Machine, fit};
use crate::live;
use crate::procfs::{KernelMemory, SOCKET_CACHES, URING_CACHES};
use client::Client;
use figures::Million;
use settings::{Raised, softnet_drops};

/// The event loops step08's workers can run, as `step08-reuseport --loop` names them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Loops {
    /// step06's epoll loop in every worker.
    Epoll,
    /// step09's io_uring loop in every worker.
    IoUring,
    /// One run with each, one after the other.
    Both,
}

impl Loops {
    fn names(self) -> &'static [&'static str] {
        match self {
            Loops::Epoll => &["epoll"],
            Loops::IoUring => &["io-uring"],
            Loops::Both => &["epoll", "io-uring"],
        }
    }
}

/// How long loadgen may take to open everything, and to answer one order.
const OPEN_PATIENCE: Duration = Duration::from_secs(900);
const ORDER_PATIENCE: Duration = Duration::from_secs(300);
/// Echo probes after the bursts.
const PROBES: usize = 1000;

/// `report --million`: a run per loop, the table, `million.json` into `out` (one run's
/// object, or with `--loop both` a list of both).
pub fn run(wanted: Option<usize>, loops: Loops, out: &Path, bin_dir: &Path) -> ExitCode {
    let asked = wanted.unwrap_or(1_000_000);
    let runs: Vec<Million> = match prepare(asked, bin_dir) {
        Ok((machine, plan)) => {
            // Raised before the move to a namespace of our own: only the machine's has them.
            let backlog = settings::raise_backlog();
            let tcp_mem = settings::raise_tcp_mem(plan.conns);
            // Both ends of every connection are sockets on this machine.
            let network = network::make_room(2 * plan.conns);
            let runs = loops
                .names()
                .iter()
                .map(|name| {
                    let mut run = one_loop(name, asked, &machine, &plan, bin_dir);
                    run.network = network.clone();
                    run.netdev_max_backlog = backlog.as_ref().and_then(|raised| {
                        let (was, now) = raised.change();
                        was.parse().ok().zip(now.parse().ok())
                    });
                    run.tcp_mem = tcp_mem.as_ref().map(Raised::change);
                    run
                })
                .collect();
            drop(backlog);
            drop(tcp_mem);
            runs
        }
        Err(err) => {
            eprintln!("report: the million did not start: {err}");
            let failed = |name: &&str| Million {
                event_loop: name.to_string(),
                asked,
                error: Some(err.clone()),
                ..Million::default()
            };
            loops.names().iter().map(failed).collect()
        }
    };
    print!("{}", table::table(&runs));
    let json = match runs.as_slice() {
        [one] => serde_json::to_string_pretty(one),
        all => serde_json::to_string_pretty(all),
    }
    .expect("bug: the figures serialize");
    match std::fs::write(out.join("million.json"), json + "\n") {
        Ok(()) => eprintln!("report: wrote million.json into {}", out.display()),
        Err(err) => {
            eprintln!("report: cannot write into {}: {err}", out.display());
            return ExitCode::FAILURE;
        }
    }
    if runs.iter().all(Million::all_held) {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

/// The binaries there, the machine read, and the N that fits in it.
fn prepare(asked: usize, bin_dir: &Path) -> Result<(Machine, Fit), String> {
    for bin in ["step08-reuseport", "loadgen"] {
        if !bin_dir.join(bin).exists() {
            return Err(format!("no binary at {}", bin_dir.join(bin).display()));
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
    let plan = fit(asked, &machine);
    for why in &plan.short {
        eprintln!("report: short of {why}");
    }
    if plan.conns == 0 {
        return Err("nothing fits".into());
    }
    eprintln!(
        "report: {} WebSocket connections, {} server workers (each under its own open-file limit)",
        plan.conns, plan.workers
    );
    Ok((machine, plan))
}

/// One run: step08 with `event_loop` in its workers, measured.
fn one_loop(
    event_loop: &str,
    asked: usize,
    machine: &Machine,
    plan: &Fit,
    bin_dir: &Path,
) -> Million {
    let started = Instant::now();
    let mut m = Million {
        event_loop: event_loop.to_string(),
        asked,
        conns: plan.conns,
        workers: plan.workers,
        short: plan.short.clone(),
        machine: Some(machine.clone()),
        ..Million::default()
    };
    eprintln!("report: step08-reuseport --loop {event_loop}");
    let drops_before = softnet_drops();
    if let Err(err) = measure(&mut m, bin_dir) {
        eprintln!("report: the million on {event_loop} did not finish: {err}");
        m.error = Some(err);
    }
    m.softnet_drops = (drops_before, softnet_drops());
    m.wall_seconds = started.elapsed().as_secs_f64();
    m
}

fn measure(m: &mut Million, bin_dir: &Path) -> Result<(), String> {
    // The sockets of a run before this one are freed after it ends, some after an RCU
    // grace period: wait until the caches are still.
    KernelMemory::settle(Duration::from_secs(30));
    let workers = m.workers.to_string();
    // A request head has 60 s instead of 10 to arrive: in a storm of a million connections
    // on two cores, a client may wait that long for the CPU between connect and request.
    // And a memory line every 2 s, not five a second: the supervisor takes a worker silent
    // for five periods (at least 3 s) for dead, and around a burst of a million on two
    // shared cores a worker can wait seconds for the CPU (killed after 3.1 s of it, measured).
    let mut server = StepProcess::start(
        &bin_dir.join("step08-reuseport"),
        &[
            "--workers",
            &workers,
            "--handshake-timeout",
            "60",
            "--report-every",
            "2",
            "--loop",
            &m.event_loop,
        ],
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
    let counted: Vec<&str> = SOCKET_CACHES.iter().chain(URING_CACHES).copied().collect();
    let kernel_before = KernelMemory::read_caches(&counted);

    let mut loadgen = Client::start(&bin_dir.join("loadgen"), &format!("ws://{addr}/"), m.conns)?;
    let step = format!("step08-reuseport --loop {}", m.event_loop);
    live::progress(&step, &format!("opening {} connections", m.conns));
    let watch = live::MillionWatch::start(live::MillionProcesses {
        asked: m.conns,
        workers: worker_pids.clone(),
        anon_before,
        loadgen: loadgen.pid(),
        kernel_before: kernel_before.clone(),
    });
    let opening = Instant::now();
    let summary = loadgen.opened(OPEN_PATIENCE);
    // The opening's last picture shows the server's own count: wait (boundedly) for its
    // memory line to say it, as it does every 2 s.
    if let Ok(held) = &summary {
        let held = held["opened"]["held"].as_u64().unwrap_or(0) as usize;
        server.memory_line(held, opening, Duration::from_secs(10));
    }
    watch.finish();
    opened(m, &summary?);

    // What the connections cost, held and idle, before any burst: a burst's own machinery
    // (loadgen's epoll set or io_uring requests, freed by the kernel a moment after it)
    // is not theirs.
    if let Some(before) = &kernel_before
        && let Some(after) = before.read_settled(Duration::from_secs(10))
    {
        kernel(m, before, &after);
    }
    let grown = anon_sum(&worker_pids).saturating_sub(anon_before);
    m.server_user_bytes = Some(grown);
    m.server_user_per_conn = (m.held > 0).then(|| grown / m.held as u64);
    if let Some(line) = server.memory_line(m.held, opening, Duration::from_secs(10)) {
        m.server_line_per_conn = Some(line.line.per_conn_bytes);
    }
    m.supervisor_rss_bytes = common::ProcStatus::read(server.pid())
        .ok()
        .map(|s| s.rss_bytes);

    // The burst, timed, with what each side's CPU did meanwhile.
    live::progress(
        &step,
        &format!("{} held; one message on each at once", m.held),
    );
    let sides = burst::Sides {
        server: worker_pids.clone(),
        loadgen: loadgen.pid(),
    };
    let cores = m.machine.as_ref().map_or(1, |machine| machine.cores);
    let before = sides.read();
    m.burst = loadgen.burst(ORDER_PATIENCE)?;
    m.burst_cost = Some(burst::cost(&before, &sides.read(), m.burst.ok, cores));
    count_syscalls(m, &server, &mut loadgen)?;
    m.probes = loadgen.probe(PROBES, ORDER_PATIENCE)?;

    eprintln!("report: measured; closing the connections");
    live::progress(
        &step,
        &format!(
            "{} held, opened in {:.0} s; closing them",
            m.held, m.open_seconds
        ),
    );
    loadgen.stop(Duration::from_secs(60));
    stop(&mut server);
    m.workers_lost = server
        .stderr()
        .lines()
        .filter(|line| line.contains("a replacement"))
        .map(str::to_string)
        .collect();
    Ok(())
}

/// The figures of loadgen's summary of the opening.
fn opened(m: &mut Million, summary: &serde_json::Value) {
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
}

/// A second burst, with perf counting the workers' system calls. A count that cannot be
/// made says why, and the run goes on.
fn count_syscalls(
    m: &mut Million,
    server: &StepProcess,
    loadgen: &mut Client,
) -> Result<(), String> {
    match SyscallCount::start(server.pid()) {
        Ok(count) => {
            let second = loadgen.burst(ORDER_PATIENCE)?;
            match count.finish() {
                Ok(calls) if second.ok > 0 => {
                    m.syscalls_per_msg = Some(calls as f64 / second.ok as f64);
                }
                Ok(_) => m.syscalls_not_counted = Some("no echo in the second burst".into()),
                Err(why) => m.syscalls_not_counted = Some(why),
            }
        }
        Err(why) => m.syscalls_not_counted = Some(why),
    }
    Ok(())
}

/// Kernel memory per connection: every counted cache's growth, and io_uring's part.
fn kernel(m: &mut Million, before: &KernelMemory, after: &KernelMemory) {
    let (by_cache, total) = before.growth(after);
    let per_conn = |bytes: i64| (m.held > 0).then(|| bytes / m.held as i64);
    m.kernel_bytes = Some(total);
    m.kernel_per_conn = per_conn(total);
    let uring: i64 = URING_CACHES.iter().filter_map(|c| by_cache.get(*c)).sum();
    m.uring_kernel_per_conn = per_conn(uring);
    m.kernel_per_conn_by_cache = by_cache
        .into_iter()
        .filter_map(|(cache, bytes)| Some((cache, per_conn(bytes)?)))
        .collect();
}

/// Σ `RssAnon` of `pids` (a worker that is gone counts 0).
fn anon_sum(pids: &[u32]) -> u64 {
    pids.iter()
        .filter_map(|&p| common::anon_rss_bytes(p).ok())
        .sum()
}

/// SIGTERM to the supervisor, which stops its workers; the drop of `server` then reaps it.
fn stop(server: &mut StepProcess) {
    // SAFETY: kill takes no pointers; the pid is our own child, not yet reaped.
    unsafe { libc::kill(server.pid() as libc::pid_t, libc::SIGTERM) };
    let deadline = Instant::now() + Duration::from_secs(30);
    while server.is_running() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
}
