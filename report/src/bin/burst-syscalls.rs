//! `cargo run --release -p report --bin burst-syscalls`
//!
//! epoll against io_uring under an event burst, side by side in one run: every one of N
//! WebSocket connections sends a message at once, `--rounds` times, and for each step we
//! count what the server spent per echoed message:
//!
//! - **system calls**, counted by the kernel's `raw_syscalls:sys_enter` tracepoint with
//!   `perf stat -p PID` attached only for the bursts. Every system call the server's
//!   process makes counts: reads, writes, `epoll_wait`, `io_uring_enter`, and the memory
//!   line's reading of `/proc/self/statm` (once a second at most, so a handful);
//! - **CPU time**, user + system, from the process's CPU-time clock before and after the
//!   bursts (`common::cpu_time`, to the nanosecond);
//! - **idle memory**: resident set growth per connection after one message on each and a
//!   pause, from `/proc/PID/status` (the step's own line says the same; the report
//!   cross-checks the two).
//!
//! The client is loadgen, in this process, identical for both steps. Without `perf` (or
//! without the rights to trace), the system call column says `n/a` and the rest is measured.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use clap::Parser;
use indicatif::ProgressBar;
use loadgen::{ConnectOptions, Pace, Pool, Target};
use stepcheck::syscalls::SyscallCount;

/// Echo bursts against step06 (epoll) and step09 (io_uring): system calls, CPU and memory.
#[derive(Parser, Debug)]
struct Args {
    /// WebSocket connections held, each sending one message per round.
    #[arg(long, default_value_t = 10_000, value_parser = clap::value_parser!(u64).range(1..=19_000))]
    conns: u64,

    /// Bursts measured (after one unmeasured warm-up burst).
    #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u64).range(1..=1000))]
    rounds: u64,

    /// Bytes per message.
    #[arg(long, default_value_t = 64, value_parser = clap::value_parser!(u64).range(1..=65536))]
    message_size: u64,

    /// Where the step binaries are [default: target/release in the workspace].
    #[arg(long, value_name = "DIR")]
    bin_dir: Option<PathBuf>,
}

/// The steps compared, and the port they would use by default (unused: port 0 here).
const STEPS: [&str; 2] = ["step06-ws-epoll", "step09-io-uring"];

/// What one step spent.
struct Burst {
    step: &'static str,
    messages: usize,
    cpu_us_per_message: f64,
    syscalls_per_message: Option<f64>,
    idle_bytes_per_conn: i64,
}

fn main() -> Result<(), String> {
    let args = Args::parse();
    common::raise_fd_limit().map_err(|err| format!("cannot raise the fd limit: {err}"))?;
    let bin_dir = args
        .bin_dir
        .clone()
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/release"));
    let runtime = tokio::runtime::Runtime::new().map_err(|err| err.to_string())?;

    let mut rows = Vec::new();
    for step in STEPS {
        eprintln!(
            "burst-syscalls: {step}: {} connections, {} rounds",
            args.conns, args.rounds
        );
        match runtime.block_on(measure(step, &bin_dir, &args)) {
            Ok(row) => rows.push(row),
            Err(err) => eprintln!("burst-syscalls: {step}: not measured: {err}"),
        }
    }

    println!(
        "| step | messages | server CPU per message | system calls per message | idle bytes per connection |"
    );
    println!("|---|---:|---:|---:|---:|");
    for row in &rows {
        let syscalls = row
            .syscalls_per_message
            .map_or("n/a".to_string(), |s| format!("{s:.3}"));
        println!(
            "| {} | {} | {:.2} µs | {syscalls} | {} B |",
            row.step, row.messages, row.cpu_us_per_message, row.idle_bytes_per_conn
        );
    }
    if let [epoll, uring] = &rows[..] {
        println!(
            "\nstep09 / step06: CPU per message {:.2}×",
            uring.cpu_us_per_message / epoll.cpu_us_per_message
        );
    }
    Ok(())
}

/// Start `step`, hold the connections, burst, and read what it spent.
async fn measure(
    step: &'static str,
    bin_dir: &std::path::Path,
    args: &Args,
) -> Result<Burst, String> {
    let (mut server, addr) = start(&bin_dir.join(step))?;
    let pid = server.id();
    let result = async {
        let base_rss = rss_bytes(pid)?;
        let target: Target = format!("ws://{addr}/").parse()?;
        let mut pool = Pool::new(ConnectOptions::new(target));
        let conns = args.conns as usize;
        let opened = pool
            .grow_to(conns, Pace::default(), &ProgressBar::hidden())
            .await;
        if opened < conns {
            return Err(format!("only {opened} of {conns} connections opened"));
        }
        let size = args.message_size as usize;
        let deadline = Duration::from_secs(30);
        // The first message on each connection pays for first-time allocations: unmeasured.
        pool.echo_each(0, size, deadline).await;
        // Idle: what the connections cost once the burst is over.
        tokio::time::sleep(Duration::from_millis(1500)).await;
        let idle_bytes_per_conn = (rss_bytes(pid)? as i64 - base_rss as i64) / conns as i64;

        let count = SyscallCount::start(pid)
            .inspect_err(|why| eprintln!("burst-syscalls: system calls not counted: {why}"))
            .ok();
        let cpu_before = cpu_seconds(pid)?;
        let mut messages = 0;
        for _ in 0..args.rounds {
            messages += pool.echo_each(0, size, deadline).await.ok;
        }
        let cpu = cpu_seconds(pid)? - cpu_before;
        let syscalls = count.and_then(|count| {
            count
                .finish()
                .inspect_err(|why| eprintln!("burst-syscalls: {why}"))
                .ok()
        });
        pool.close();
        if messages == 0 {
            return Err("no message was echoed".into());
        }
        Ok(Burst {
            step,
            messages,
            cpu_us_per_message: cpu * 1e6 / messages as f64,
            syscalls_per_message: syscalls.map(|s| s as f64 / messages as f64),
            idle_bytes_per_conn,
        })
    }
    .await;
    stop(&mut server);
    result
}

/// Start a step on a free loopback port; its address from the `listening` line.
fn start(bin: &std::path::Path) -> Result<(Child, SocketAddr), String> {
    let mut child = Command::new(bin)
        .args(["--addr", "127.0.0.1:0", "--json", "--report-every", "1"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .map_err(|err| format!("cannot start {}: {err}", bin.display()))?;
    let mut lines = BufReader::new(child.stdout.take().expect("bug: stdout is piped")).lines();
    let first = lines.next().and_then(Result::ok).unwrap_or_default();
    let addr = first
        .split('"')
        .find_map(|field| field.parse::<SocketAddr>().ok());
    // Keep reading the memory lines, or the step would block on a full pipe.
    std::thread::spawn(move || lines.map_while(Result::ok).for_each(drop));
    match addr {
        Some(addr) => Ok((child, addr)),
        None => {
            stop(&mut child);
            Err(format!(
                "no `listening` line from {} (it said {first:?})",
                bin.display()
            ))
        }
    }
}

/// End a child we started, by its pid, and reap it.
fn stop(child: &mut Child) {
    let _ = child.kill();
    let _ = child.wait();
}

/// VmRSS of `pid`, in bytes (`/proc/PID/status`, read by `common` as the report does).
fn rss_bytes(pid: u32) -> Result<u64, String> {
    common::ProcStatus::read(pid)
        .map(|status| status.rss_bytes)
        .map_err(|err| format!("/proc/{pid}/status: {err}"))
}

/// User + system CPU time of `pid`, in seconds (its CPU-time clock, read by `common`).
fn cpu_seconds(pid: u32) -> Result<f64, String> {
    common::cpu_time(pid)
        .map(|time| time.as_secs_f64())
        .map_err(|err| format!("/proc/{pid}/stat: {err}"))
}
