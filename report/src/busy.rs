//! The busy side of one step: every connection sends a message at the same moment (the
//! burst), then every connection is reset and arrives again at once (the storms). Around
//! them: the step's CPU time, its system calls (`perf stat`), its highest resident set
//! (sampled on a thread), and what the rest of the machine took meanwhile.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use indicatif::ProgressBar;
use loadgen::Pool;
use stepcheck::syscalls::SyscallCount;

use crate::child::Started;
use crate::procfs;
use crate::schema::{BurstResult, EchoCounts, Plan, StepResult, StormResult, per_each, us};
use crate::sweep;

/// Other processes taking more than this many CPUs' worth of time during a step's burst and
/// storms make its busy figures suspect: the step and the client share two cores with them.
pub const BUSY_MACHINE: f64 = 0.2;

/// The busy side of a step holding `top` connections in `pool`: a burst on all of them,
/// then the storms, with what the rest of the machine took meanwhile.
///
/// The storm runs `plan.storms` times (more for a step that holds fewer); the median storm
/// stands. Each time: reset every connection, wait until the step has seen them all go (its
/// memory line says 0), so that its CPU time in the storm is the storm's alone; then let
/// them all arrive again at once. Returns the pool, holding the last storm's connections.
pub async fn measure(
    step: &mut Started,
    mut pool: Pool,
    top: usize,
    plan: &Plan,
    bar: &ProgressBar,
    result: &mut StepResult,
) -> Result<Pool, String> {
    let others = OthersCpu::start(step.process.pid());
    result.burst = Some(burst(step, &mut pool, plan, bar, &mut result.notes).await);
    let mut storms = Vec::new();
    for _ in 0..plan.repeats(plan.storms, top) {
        let closed_at = Instant::now();
        pool.close();
        step.process
            .memory_line(0, closed_at, Duration::from_secs(3));
        pool = step.pool()?;
        storms.push(storm(step, &mut pool, top, plan, bar).await);
        // Let the step count them before they go, so that it sees the count change and
        // prints the 0 the next close waits for, even after a storm shorter than its report
        // period (select's thousand take 40 ms).
        step.process
            .memory_line(pool.len(), closed_at, Duration::from_secs(3));
    }
    result.storm = median_storm(storms);
    result.others_cpu_cores = others.and_then(OthersCpu::cores);
    Ok(pool)
}

/// Every connection sends one message at the same moment, several rounds, while a
/// thread samples the step's resident set for its peak and perf counts its system calls.
/// A count that fails is a note on the step.
async fn burst(
    step: &Started,
    pool: &mut Pool,
    plan: &Plan,
    bar: &ProgressBar,
    notes: &mut Vec<String>,
) -> BurstResult {
    let conns = pool.usable();
    let rounds = plan.repeats(plan.burst_rounds, conns);
    bar.set_message(format!("burst: {rounds} rounds"));
    let pid = step.process.pid();
    let syscalls = plan
        .count_syscalls
        .then(|| SyscallCount::start(pid))
        .transpose();
    let peak = PeakRss::watch(pid);
    let mut cpu_rounds = Vec::new();
    let mut cpu_before = step.cpu();
    let burst = pool
        .burst_with(rounds, plan.message_size, plan.served_deadline, |round| {
            let cpu_after = step.cpu();
            cpu_rounds.push(per_each(cpu_before, cpu_after, round.ok));
            cpu_before = cpu_after;
        })
        .await;
    let cpu = median_of(&cpu_rounds);
    let peak_rss = peak.stop();
    let syscalls = syscalls
        .and_then(|count| count.map(SyscallCount::finish).transpose())
        .unwrap_or_else(|why| {
            notes.push(format!("system calls not counted in the burst: {why}"));
            None
        });
    let summary = burst.echo.summary();
    let us_of =
        |pick: fn(&loadgen::RttSummary) -> Duration| summary.as_ref().map_or(0.0, |s| us(pick(s)));
    BurstResult {
        conns,
        rounds: burst.rounds,
        msgs_per_s: burst.msgs_per_s(),
        p50_us: us_of(|s| s.p50),
        p99_us: us_of(|s| s.p99),
        max_us: us_of(|s| s.max),
        server_cpu_us_per_msg: cpu,
        server_cpu_us_per_msg_rounds: cpu_rounds,
        peak_rss_per_conn_bytes: (conns > 0 && peak_rss > 0)
            .then(|| peak_rss.saturating_sub(step.base_rss) / pool.len() as u64),
        syscalls_per_msg: syscalls
            .filter(|_| burst.echo.ok > 0)
            .map(|calls| calls as f64 / burst.echo.ok as f64),
        echo: EchoCounts::from(&burst.echo),
    }
}

/// `conns` connections opened as fast as loadgen can, each with one echo.
async fn storm(
    step: &Started,
    pool: &mut Pool,
    conns: usize,
    plan: &Plan,
    bar: &ProgressBar,
) -> StormResult {
    bar.set_message(format!("storm: {conns} at once"));
    let cpu_before = step.cpu();
    let storm = pool
        .storm(
            conns,
            plan.storm_in_flight,
            plan.message_size,
            plan.served_deadline,
        )
        .await;
    let connect = storm.connect_summary();
    StormResult {
        conns: storm.opened,
        conns_per_s: storm.conns_per_s(),
        connect_p50_us: connect.map_or(0.0, |s| us(s.p50)),
        connect_p99_us: connect.map_or(0.0, |s| us(s.p99)),
        server_cpu_us_per_conn: per_each(cpu_before, step.cpu(), storm.opened),
        echo: EchoCounts::from(&storm.echo),
        // Filled by `median_storm`, which sees every storm.
        conns_per_s_each: Vec::new(),
        server_cpu_us_per_conn_each: Vec::new(),
    }
}

/// The machine's CPU time minus the step's and the report's own, over a stretch of the run:
/// what the rest of the machine took from the two cores the figures need.
pub struct OthersCpu {
    pid: u32,
    started: Instant,
    machine: Duration,
    ours: Duration,
}

impl OthersCpu {
    pub fn start(pid: u32) -> Option<OthersCpu> {
        Some(OthersCpu {
            pid,
            started: Instant::now(),
            machine: procfs::machine_cpu_time().ok()?,
            ours: Self::ours(pid)?,
        })
    }

    fn ours(pid: u32) -> Option<Duration> {
        Some(procfs::cpu_time(pid).ok()? + common::cpu_time(std::process::id()).ok()?)
    }

    /// Others' CPU time since the start ÷ the time elapsed: in CPUs.
    pub fn cores(self) -> Option<f64> {
        let machine = procfs::machine_cpu_time().ok()?;
        let ours = Self::ours(self.pid)?;
        let others = machine.saturating_sub(self.machine).as_secs_f64()
            - ours.saturating_sub(self.ours).as_secs_f64();
        Some(others / self.started.elapsed().as_secs_f64())
    }
}

/// The median storm by rate, carrying every storm's rate and CPU per connection.
fn median_storm(mut storms: Vec<StormResult>) -> Option<StormResult> {
    let rates: Vec<f64> = storms.iter().map(|s| s.conns_per_s).collect();
    let cpus = storms.iter().map(|s| s.server_cpu_us_per_conn).collect();
    storms.sort_by(|a, b| a.conns_per_s.total_cmp(&b.conns_per_s));
    let mid = (storms.len().checked_sub(1)?) / 2;
    let mut median = storms.swap_remove(mid);
    median.conns_per_s_each = rates;
    median.server_cpu_us_per_conn_each = cpus;
    Some(median)
}

/// The median of the figures there are (lower middle of an even count).
fn median_of(figures: &[Option<f64>]) -> Option<f64> {
    sweep::median_of(figures.iter().flatten().copied())
}

/// A thread that reads a process's VmRSS every millisecond and keeps the highest.
struct PeakRss {
    stop: Arc<AtomicBool>,
    peak: Arc<AtomicU64>,
    thread: std::thread::JoinHandle<()>,
}

impl PeakRss {
    fn watch(pid: u32) -> PeakRss {
        let (stop, peak) = (
            Arc::new(AtomicBool::new(false)),
            Arc::new(AtomicU64::new(0)),
        );
        let (stopped, highest) = (stop.clone(), peak.clone());
        let thread = std::thread::spawn(move || {
            // Bounded by the caller's stop, which always follows the burst.
            while !stopped.load(Ordering::Relaxed) {
                if let Ok(status) = procfs::status(pid) {
                    highest.fetch_max(status.rss_bytes, Ordering::Relaxed);
                }
                std::thread::sleep(Duration::from_millis(1));
            }
        });
        PeakRss { stop, peak, thread }
    }

    /// Stop watching; the highest resident set seen (0 if none was read).
    fn stop(self) -> u64 {
        self.stop.store(true, Ordering::Relaxed);
        let _ = self.thread.join();
        self.peak.load(Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::schema::EchoCounts;

    fn storm(conns_per_s: f64, cpu: f64) -> StormResult {
        StormResult {
            conns: 1000,
            conns_per_s,
            connect_p50_us: 0.0,
            connect_p99_us: 0.0,
            server_cpu_us_per_conn: Some(cpu),
            echo: EchoCounts::default(),
            conns_per_s_each: vec![conns_per_s],
            server_cpu_us_per_conn_each: vec![Some(cpu)],
        }
    }

    /// The median storm stands, with its own CPU figure, and every storm's figures in order.
    #[test]
    fn the_median_storm_stands_and_every_storm_is_kept() {
        let median = median_storm(vec![
            storm(30e3, 20.0),
            storm(10e3, 50.0),
            storm(20e3, 30.0),
        ])
        .expect("three storms have a median");
        assert_eq!(median.conns_per_s, 20e3);
        assert_eq!(median.server_cpu_us_per_conn, Some(30.0));
        assert_eq!(median.conns_per_s_each, [30e3, 10e3, 20e3]);
        assert_eq!(
            median.server_cpu_us_per_conn_each,
            [Some(20.0), Some(50.0), Some(30.0)]
        );
        assert!(median_storm(Vec::new()).is_none());
    }

    /// A round whose CPU could not be read is left out of the median, not counted as zero.
    #[test]
    fn the_median_round_skips_rounds_without_a_figure() {
        assert_eq!(
            median_of(&[Some(9.0), None, Some(7.0), Some(30.0)]),
            Some(9.0)
        );
        assert_eq!(median_of(&[Some(9.0), Some(7.0)]), Some(7.0));
        assert_eq!(median_of(&[None]), None);
    }
}
