//! `cargo run --release -p report`
//!
//! The whole lesson in numbers, from a fresh clone with no other setup. For each step it
//! starts the step's real binary as a child process, holds N connections to it with loadgen
//! (in this process), and measures what the step costs: connections held and served at
//! once, resident memory per connection (from /proc, checked against the step's own memory
//! line), kernel memory per connection (from /proc/slabinfo), threads, CPU time, and the
//! round trip on one connection as idle connections pile up (with the CPU each echo costs
//! the step), and the busy side: a storm of new connections, a burst of messages on all of
//! them at once (with the system calls each message costs, counted by `perf stat`). It
//! prints three Markdown tables (memory, latency, busy), writes `report.json`, and draws the
//! SVG charts into `--out`.
//!
//! Layout, in the order a run meets each module:
//!
//! - `steps.rs`: the steps the report runs, one line each, in the lesson's order.
//! - `measure.rs`: one step through the plan, stage by stage, with:
//!   - `child.rs`: the step as a child process: started, warmed up, its lines read;
//!   - `sweep.rs`: the round trip against idle connections, from repeated visits;
//!   - `affinity.rs`: the client and the step on one CPU while round trips are timed;
//!   - `memory.rs`: user-space memory per connection, the step's line beside /proc;
//!   - `kernel.rs`: kernel memory per connection, from the slab caches around chunks;
//!   - `busy.rs`: the burst and the storms, and what other processes took meanwhile;
//!   - `work.rs`: the steps again with `--work-us`: bursts and fairness when a message costs CPU;
//!   - `procfs.rs`: what /proc says about a step, the machine and its slab caches.
//! - `schema.rs`: what `report.json` holds: the plan and each step's figures.
//! - `output.rs`: the tables, their notes and footnotes, in Markdown, with:
//!   - `units.rs`: each figure in the unit that reads best (`1.42 ms`, `12.3k/s`).
//! - `charts.rs`: the SVG charts, one message each.
//! - `live.rs`: what the `--live` page is fed while the report measures.
//! - `million.rs`: `--million`, a million WebSocket connections on step08, measured, with
//!   each event loop (`--loop`), with:
//!   - `fit.rs`: what this machine allows, and the largest N that fits in it;
//!   - `million/`: what `million.json` holds, the client driven through it, where the
//!     burst's time goes, loopback's queue, and the table (see `million.rs`).
//!
//! A step joins the report by having a line in `steps.rs`; one whose binary is missing or
//! exits before listening becomes a row that says so.

mod affinity;
mod busy;
mod charts;
mod child;
mod fit;
mod kernel;
mod live;
mod measure;
mod memory;
mod million;
mod output;
mod procfs;
mod schema;
mod steps;
mod sweep;
mod units;
mod work;

use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};
use std::time::{Duration, Instant};

use clap::Parser;
use indicatif::{ProgressBar, ProgressStyle};
use stepcheck::syscalls::SyscallCount;

use schema::{Batch, Plan, Report, StepResult, WorkPlan};

/// Run every step against N connections and report what each costs.
#[derive(Parser, Debug)]
#[command(name = "report")]
struct Args {
    /// Connections per step, at least 1 [default: 10000, or what the open-file limit allows; 2000 with --quick].
    #[arg(long, value_parser = at_least_one)]
    conns: Option<usize>,

    /// Only these steps, comma-separated: a name from the table (`step07-tokio/4k`) or a
    /// binary name for all its variants (`step07-tokio`).
    #[arg(long, value_delimiter = ',', value_name = "STEP,...", value_parser = known_step)]
    steps: Vec<String>,

    /// Small N and short waits, for CI: under a minute in a debug build.
    #[arg(long)]
    quick: bool,

    /// Where report.json and the SVG charts go [default: target/report/ in the workspace].
    #[arg(long, value_name = "DIR")]
    out: Option<PathBuf>,

    /// Run the step binaries found in DIR instead of building them first.
    #[arg(long, value_name = "DIR", value_parser = existing_dir)]
    bin_dir: Option<PathBuf>,

    /// Instead of every step: one million WebSocket connections (or --conns) on
    /// step08-reuseport, measured; writes million.json.
    #[arg(long)]
    million: bool,

    /// With --million: the event loop in step08's workers, or both, one run after the
    /// other, side by side.
    #[arg(long = "loop", value_enum, default_value_t = million::Loops::Epoll, requires = "million")]
    event_loop: million::Loops,

    /// Serve a page that draws each step as it is measured (the million as it opens), to
    /// project; it stays up after the run until Ctrl-C [ADDR: 127.0.0.1:9100].
    #[arg(long, value_name = "ADDR", num_args = 0..=1, default_missing_value = live::DEFAULT_ADDR)]
    live: Option<std::net::SocketAddr>,
}

/// `--conns`: a whole number of connections, at least one.
fn at_least_one(text: &str) -> Result<usize, String> {
    match text.parse::<usize>() {
        Ok(0) => Err("at least 1 connection is needed".into()),
        Ok(n) => Ok(n),
        Err(err) => Err(format!("not a number of connections: {err}")),
    }
}

/// `--steps`: each name must be in the table.
fn known_step(name: &str) -> Result<String, String> {
    steps::select(&[name.to_string()]).map(|_| name.to_string())
}

/// `--bin-dir`: a directory that exists.
fn existing_dir(text: &str) -> Result<PathBuf, String> {
    let dir = PathBuf::from(text);
    if dir.is_dir() {
        Ok(dir)
    } else {
        Err(format!("no directory at {text}"))
    }
}

/// The workspace root: this crate's parent directory.
fn workspace_root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("bug: report/ lives inside the workspace")
}

fn main() -> ExitCode {
    let args = Args::parse();
    let specs = steps::select(&args.steps).expect("bug: --steps names were checked by clap");
    if let Some(dir) = &args.bin_dir
        && let Some(missing) = specs.iter().find(|s| !dir.join(s.bin).is_file())
    {
        eprintln!(
            "report: no {} in {}: build the steps first (cargo build --release --workspace \
             --bins), or leave out --bin-dir",
            missing.bin,
            dir.display()
        );
        return ExitCode::from(2);
    }
    let conns = conns_that_fit(&args);
    let bin_dir = match &args.bin_dir {
        Some(dir) => dir.clone(),
        None => match build_steps() {
            Ok(dir) => dir,
            Err(err) => {
                eprintln!("report: {err}");
                return ExitCode::FAILURE;
            }
        },
    };
    let out_dir = args
        .out
        .clone()
        .unwrap_or_else(|| workspace_root().join("target").join("report"));
    if let Err(err) = std::fs::create_dir_all(&out_dir) {
        eprintln!("report: cannot create {}: {err}", out_dir.display());
        return ExitCode::FAILURE;
    }
    if let Some(addr) = args.live
        && let Err(err) = live::start(addr)
    {
        eprintln!("report: --live: {err}");
        return ExitCode::from(2);
    }

    if args.million {
        let code = million::run(args.conns, args.event_loop, &out_dir, &bin_dir);
        live::stay();
        return code;
    }

    // Whether perf can count system calls here: asked once, of this process, so that the
    // report says why once rather than under every step.
    let syscalls_not_counted = SyscallCount::start(std::process::id())
        .and_then(SyscallCount::finish)
        .err();
    let plan = plan(conns, args.quick, syscalls_not_counted.is_none());
    let started = Instant::now();
    let results = measure_all(&specs, &plan, &bin_dir);

    let mut report = Report {
        quick: args.quick,
        profile: bin_dir
            .file_name()
            .map_or("?".into(), |n| n.to_string_lossy().into_owned()),
        cores: std::thread::available_parallelism().map_or(0, |n| n.get()),
        kernel_readable: procfs::KernelMemory::read().is_some(),
        syscalls_not_counted,
        socket_caches: procfs::SOCKET_CACHES
            .iter()
            .map(|s| s.to_string())
            .collect(),
        wall_seconds: started.elapsed().as_secs_f64(),
        plan,
        steps: results,
        tables: String::new(),
    };
    report.tables = output::markdown(&report);
    print!("{}", report.tables);
    let written = write_files(&report, &out_dir);

    live::stay();
    if report.steps.iter().any(|r| r.error.is_none()) && written {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

/// N: `--conns`, or the default, as far as this process's open-file limit allows (raised
/// to its hard limit first). loadgen's sockets are in this process, each step's in its own:
/// both need N fds. The million counts its own, over many processes.
fn conns_that_fit(args: &Args) -> usize {
    let wanted = args.conns.unwrap_or(if args.quick { 2000 } else { 10_000 });
    match common::raise_fd_limit() {
        Ok(limit) if !args.million && wanted > loadgen::max_conns(limit.soft) => {
            let max = loadgen::max_conns(limit.soft).max(1);
            eprintln!(
                "report: {wanted} connections do not fit under this process's {limit}; measuring {max}."
            );
            max
        }
        Ok(_) => wanted,
        Err(err) => {
            eprintln!(
                "report: cannot read the open-file limit ({err}); trying {wanted} connections"
            );
            wanted
        }
    }
}

/// How hard every step is pushed: the same for each, so that rows compare like for like.
fn plan(conns: usize, quick: bool, count_syscalls: bool) -> Plan {
    Plan {
        conns,
        message_size: 64,
        served_deadline: Duration::from_secs(if quick { 2 } else { 3 }),
        echo_probes: if quick { 100 } else { 200 },
        probe_deadline: Duration::from_secs(2),
        batch: Batch {
            warmup: 20,
            max: if quick { 200 } else { 400 },
            min: if quick { 50 } else { 100 },
            time: Duration::from_millis(if quick { 300 } else { 500 }),
        },
        sweep_passes: 3,
        kernel_chunks: 5,
        storm_in_flight: 256,
        storms: 3,
        burst_rounds: 5,
        count_syscalls,
        work: WorkPlan {
            base_us: 100,
            levels_us: if quick {
                vec![0, 500]
            } else {
                vec![0, 20, 100, 500]
            },
            burst: 200,
            rounds: 3,
            min_window: Duration::from_millis(250),
            slow_ms: 50,
            fresh_clients: 16,
            fresh_every: Duration::from_millis(15),
        },
    }
}

/// Every step through the plan, one after another, each with its progress bar (followed by
/// the `--live` page) and a line on stderr when it is done.
fn measure_all(specs: &[steps::StepSpec], plan: &Plan, bin_dir: &Path) -> Vec<StepResult> {
    // One thread, like loadgen's own binary: the client takes one core, the step the other.
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("bug: a current-thread runtime builds on any Linux");
    let mut results = Vec::new();
    live::plan(
        &specs.iter().map(|s| s.name).collect::<Vec<_>>(),
        plan.conns,
    );
    for (i, spec) in specs.iter().enumerate() {
        let bar = ProgressBar::new(0)
            .with_style(
                ProgressStyle::with_template("{prefix:>30} {bar:30} {pos:>5}/{len:<5} {msg}")
                    .expect("bug: the progress template is valid"),
            )
            .with_prefix(format!("[{}/{}] {}", i + 1, specs.len(), spec.name));
        let follow = live::follow(i + 1, specs.len(), spec.name, &bar);
        let result = runtime.block_on(measure::measure(spec, plan, bin_dir, &bar));
        drop(follow);
        bar.finish_and_clear();
        eprintln!("{}", output::one_line(&result));
        live::progress(spec.name, output::one_line(&result).trim_start());
        results.push(result);
    }
    results
}

/// `report.json` and every chart into `out_dir`; says on stderr what was written and what
/// could not be. Returns whether everything was.
fn write_files(report: &Report, out_dir: &Path) -> bool {
    let json = serde_json::to_string_pretty(report).expect("bug: the report serializes");
    let mut written = vec![(
        "report.json",
        std::fs::write(out_dir.join("report.json"), json + "\n").map_err(|e| e.to_string()),
    )];
    for (name, draw) in charts::ALL {
        written.push((
            name,
            draw(&report.steps, &out_dir.join(name)).map_err(|e| e.to_string()),
        ));
    }
    for (name, result) in &written {
        if let Err(err) = result {
            eprintln!(
                "report: cannot write {name} into {}: {err}",
                out_dir.display()
            );
        }
    }
    eprintln!(
        "report: wrote {} into {}",
        written
            .iter()
            .map(|(name, _)| *name)
            .collect::<Vec<_>>()
            .join(", "),
        out_dir.display()
    );
    written.iter().all(|(_, r)| r.is_ok())
}

/// Build every binary in the workspace with the profile this report was built with, so a
/// fresh clone needs nothing else; returns the directory they land in (this binary's).
fn build_steps() -> Result<PathBuf, String> {
    let mut cargo = Command::new(env!("CARGO"));
    cargo
        .current_dir(workspace_root())
        .args(["build", "--workspace", "--bins", "--keep-going"]);
    if !cfg!(debug_assertions) {
        cargo.arg("--release");
    }
    eprintln!("report: building the steps (cargo build --workspace --bins)");
    match cargo.status() {
        Ok(status) if status.success() => {}
        // Some step did not compile (perhaps mid-edit): measure what did build.
        Ok(status) => eprintln!(
            "report: cargo build failed ({status}); steps without a binary are reported as such"
        ),
        Err(err) => return Err(format!("cannot run cargo ({}): {err}", env!("CARGO"))),
    }
    let exe = std::env::current_exe().map_err(|err| format!("cannot find this binary: {err}"))?;
    Ok(exe
        .parent()
        .expect("bug: a binary lives in a directory")
        .to_path_buf())
}
