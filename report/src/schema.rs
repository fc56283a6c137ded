//! What `report.json` holds, field by field: the plan every step was put through, and each
//! step's figures. Types only, with the few rules that belong to a figure itself; the
//! figures are measured in `measure.rs` and read in `output.rs` and `charts.rs`.

use std::collections::BTreeMap;
use std::time::Duration;

use common::MemoryLine;
use loadgen::{EchoStats, Protocol};
use serde::Serialize;

use crate::steps::StepSpec;

/// Everything `report.json` holds.
#[derive(Debug, Serialize)]
pub struct Report {
    pub quick: bool,
    /// `release` or `debug`: the profile the steps were built with.
    pub profile: String,
    pub cores: usize,
    /// Whether /proc/slabinfo was readable (it needs root).
    pub kernel_readable: bool,
    /// Why the burst's system calls were not counted (no perf, no right to trace); `None`
    /// when they were.
    pub syscalls_not_counted: Option<String>,
    /// The slab caches summed into the kernel figure.
    pub socket_caches: Vec<String>,
    pub wall_seconds: f64,
    /// What every step was put through.
    pub plan: Plan,
    pub steps: Vec<StepResult>,
    /// The tables as printed: the figures a README or slide may quote.
    pub tables: String,
}

/// How hard to push each step; the same for every step, so rows compare like for like.
/// The table's footnotes are written from these same values.
#[derive(Debug, Clone, Serialize)]
pub struct Plan {
    /// Connections each step is asked to hold (before its own cap).
    pub conns: usize,
    /// Bytes per echo message, everywhere.
    pub message_size: usize,
    /// How long the echo on every connection may take before the rest count as not served.
    pub served_deadline: Duration,
    /// Echo probes on random connections at the end, checked byte for byte.
    pub echo_probes: usize,
    /// One probe not back by then is lost.
    pub probe_deadline: Duration,
    /// The round trips timed at each sweep point, each time it is visited.
    pub batch: Batch,
    /// Times each sweep point is visited: up, down, up again… Interleaved, so that a busy
    /// moment on the machine spoils one visit of a point, not all of them.
    pub sweep_passes: usize,
    /// Chunks the last stretch of connections is opened in, for the kernel's figures.
    pub kernel_chunks: usize,
    /// Connection attempts in flight at once during the storm.
    pub storm_in_flight: usize,
    /// Storms per step (see [`Plan::repeats`]); the median storm is reported.
    pub storms: usize,
    /// Rounds of the burst (see [`Plan::repeats`]): one message on every connection at
    /// once, each round; the step's CPU per message is the median round's.
    pub burst_rounds: usize,
    /// Whether to count the step's system calls during the burst (perf works here).
    pub count_syscalls: bool,
    /// The work section: the steps again with `--work-us`.
    pub work: WorkPlan,
}

/// How the work section pushes each step it runs: at N connections, bursts with each level
/// of work per message; then fairness.
#[derive(Debug, Clone, Serialize)]
pub struct WorkPlan {
    /// µs of work per message at each level. 0: the step as the rest of the report ran it,
    /// with its 64-byte messages. Every other level: the step started again once with
    /// `--work-us base_us`, whose work is in proportion to a message's length, and messages
    /// of the length that costs the level (see [`WorkPlan::message_bytes`]).
    pub levels_us: Vec<u32>,
    /// The step's `--work-us` for every level but 0: µs per 64 bytes of a message.
    pub base_us: u32,
    /// Connections, of the N held, that each send one message per round (the newest).
    pub burst: usize,
    /// Rounds of the burst at each level, after one round not counted: at least this many,
    /// and more until they fill `min_window` (at most [`WorkPlan::most_rounds`]). CPU time
    /// is counted in ticks of 10 ms, so a window of a few ms would make the cores figures
    /// noise.
    pub rounds: usize,
    pub min_window: Duration,
    /// Fairness: what each message of the one slow connection costs the step, in ms.
    pub slow_ms: u32,
    /// Fairness: fresh clients, arriving one every `fresh_every` (give or take half of it).
    pub fresh_clients: usize,
    pub fresh_every: Duration,
}

impl WorkPlan {
    /// The most rounds of the burst at each level, however short they are: 50 times
    /// `rounds`.
    pub fn most_rounds(&self) -> usize {
        50 * self.rounds
    }

    /// The length of a message that costs `work_us` µs at `--work-us base_us` (64 bytes per
    /// `base_us`, to the nearest byte, one at least): 13 bytes for 20 µs at 100.
    pub fn message_bytes(&self, work_us: u32) -> usize {
        let bytes = (64 * u64::from(work_us) + u64::from(self.base_us) / 2)
            / u64::from(self.base_us.max(1));
        (bytes as usize).max(1)
    }
}

impl Plan {
    /// How many storms or burst rounds for a step holding `held`: `times`, or up to three
    /// times as many for a step that holds fewer than N (select's 1 000), whose storms and
    /// rounds are short: its median rests on more of them.
    pub fn repeats(&self, times: usize, held: usize) -> usize {
        let more = self.conns.div_ceil(held.max(1)).clamp(1, 3);
        times.max(1) * more
    }
}

/// One visit of a sweep point: round trips one after another on one connection.
#[derive(Debug, Clone, Serialize)]
pub struct Batch {
    /// Sent first and not counted: the first ones pay for cold caches.
    pub warmup: usize,
    /// At most this many timed.
    pub max: usize,
    /// At least this many timed, however slow they are: enough for a steady median.
    pub min: usize,
    /// Past `min`, stop after this long (poll at 10 000 idle takes milliseconds each).
    pub time: Duration,
}

/// The step, as the table and `report.json` name it.
#[derive(Debug, Clone, Default, Serialize)]
pub struct StepResult {
    pub step: String,
    pub bin: String,
    pub protocol: String,
    pub args: Vec<String>,
    /// Why the step has no figures, if it has none.
    pub error: Option<String>,
    /// Problems met along the way, printed under the tables.
    pub notes: Vec<String>,
    pub conns: Conns,
    /// What it costs in user space, `None` without a memory line.
    pub memory: Option<UserMemory>,
    /// What its connections cost in the kernel, `None` where unreadable or too few.
    pub kernel: Option<KernelFigure>,
    /// Echo probes on random connections at the end.
    pub echo: EchoCounts,
    /// CPU the step used over the whole run.
    pub cpu_seconds: Option<f64>,
    /// Round trip on one connection against connections held; the last point is at `held`.
    pub sweep: Vec<SweepPoint>,
    pub storm: Option<StormResult>,
    pub burst: Option<BurstResult>,
    /// The work section: `None` for a step it does not run.
    pub work: Option<WorkResult>,
    /// CPUs' worth of time other processes took while the burst and storms ran (see
    /// `busy.rs`); past its `BUSY_MACHINE`, the busy figures may be off. Signed as
    /// measured: a quiet machine reads a few hundredths either side of zero.
    pub others_cpu_cores: Option<f64>,
    pub wall_seconds: f64,
}

impl StepResult {
    /// A row for `spec`, with no figures yet.
    pub fn new(spec: &StepSpec) -> StepResult {
        StepResult {
            step: spec.name.to_string(),
            bin: spec.bin.to_string(),
            protocol: match spec.protocol {
                Protocol::Tcp => "tcp".into(),
                Protocol::WebSocket => "ws".into(),
            },
            args: spec.args.iter().map(|a| a.to_string()).collect(),
            ..StepResult::default()
        }
    }

    /// The round trip with every connection held: the sweep's last point.
    pub fn idle_rtt(&self) -> Option<&SweepPoint> {
        self.sweep.last()
    }
}

/// How many connections, from both sides.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Conns {
    /// Connections the report asked for (after the step's cap).
    pub asked: usize,
    /// Connections open from loadgen's side when measured.
    pub held: usize,
    /// Connections whose one message came back while all were sent at once.
    pub served: usize,
    /// Connections the step says it holds, in its memory line.
    pub server: Option<usize>,
    /// Failed attempts by reason, e.g. `3 timed out`.
    pub failures: String,
}

/// User-space memory: the step's line and /proc, read at the same moment.
#[derive(Debug, Clone, Serialize)]
pub struct UserMemory {
    /// (VmRSS − VmRSS just before the first connection) / the step's count, from /proc.
    pub rss_per_conn_bytes: Option<u64>,
    /// The resident sets from /proc and from the line agree (see `memory.rs`).
    pub rss_agree: Option<bool>,
    /// VmRSS when the line arrived, `None` if the step had exited.
    pub proc_rss_bytes: Option<u64>,
    /// VmRSS once the step had settled, before the first connection.
    pub proc_base_rss_bytes: u64,
    pub threads: Option<usize>,
    /// The step's own memory line.
    pub line: MemoryLine,
}

/// Kernel memory per connection: growth of the socket caches and kernel stacks / held.
/// Covers BOTH ends of each loopback connection (the step's socket and loadgen's).
#[derive(Debug, Clone, Serialize)]
pub struct KernelFigure {
    /// The median of `chunks_per_conn`.
    pub per_conn_bytes: i64,
    /// Each cache's share of the median chunk's growth, per connection.
    pub by_cache: BTreeMap<String, i64>,
    /// Growth per connection while each chunk of the last stretch opened, sorted.
    pub chunks_per_conn: Vec<i64>,
}

/// Round trip with `conns` connections held (one of them the probe), over every visit;
/// whether its visits agree enough to quote it is `sweep.rs`'s rule.
#[derive(Debug, Clone, Serialize)]
pub struct SweepPoint {
    pub conns: usize,
    /// The median of the visits' medians.
    pub p50_us: f64,
    /// Largest minus smallest of the visits' medians (0 with one visit).
    pub spread_us: f64,
    /// p99 over every round trip timed at this point.
    pub p99_us: f64,
    /// The step's CPU time per echo while the round trips ran: the per-wake-up cost
    /// itself, far less sensitive to a busy machine than the wall-clock round trip.
    pub server_cpu_us_per_echo: Option<f64>,
    /// Each visit's median, in the order they were taken.
    pub visits_p50_us: Vec<f64>,
}

/// Outcome counts of the echo probes.
#[derive(Debug, Clone, Default, Serialize)]
pub struct EchoCounts {
    pub ok: usize,
    pub lost: usize,
    pub mismatched: usize,
    pub failed: usize,
}

impl From<&EchoStats> for EchoCounts {
    fn from(stats: &EchoStats) -> EchoCounts {
        EchoCounts {
            ok: stats.ok,
            lost: stats.lost,
            mismatched: stats.mismatched,
            failed: stats.failed,
        }
    }
}

/// Many clients arriving at once.
#[derive(Debug, Clone, Serialize)]
pub struct StormResult {
    /// Connections opened in the storm.
    pub conns: usize,
    pub conns_per_s: f64,
    pub connect_p50_us: f64,
    pub connect_p99_us: f64,
    /// The step's CPU time over the storm / connections opened.
    pub server_cpu_us_per_conn: Option<f64>,
    /// Their first echoes.
    pub echo: EchoCounts,
    /// Every storm's rate, in the order they ran; the figures above are the median storm's.
    pub conns_per_s_each: Vec<f64>,
    /// Every storm's CPU per connection, in the same order.
    pub server_cpu_us_per_conn_each: Vec<Option<f64>>,
}

/// Every connection speaking at once, several rounds.
#[derive(Debug, Clone, Serialize)]
pub struct BurstResult {
    /// Connections that each sent one message per round.
    pub conns: usize,
    pub rounds: usize,
    pub msgs_per_s: f64,
    pub p50_us: f64,
    pub p99_us: f64,
    pub max_us: f64,
    /// The median over the rounds of the step's CPU time in the round / echoes back.
    pub server_cpu_us_per_msg: Option<f64>,
    /// Each round's CPU per message, in the order they ran.
    pub server_cpu_us_per_msg_rounds: Vec<Option<f64>>,
    /// (highest VmRSS during the burst − VmRSS before the first connection) / held.
    pub peak_rss_per_conn_bytes: Option<u64>,
    /// The step's system calls during the burst / echoes back, counted by `perf stat`;
    /// `None` where perf cannot count.
    pub syscalls_per_msg: Option<f64>,
    pub echo: EchoCounts,
}

/// One step in the work section.
#[derive(Debug, Clone, Default, Serialize)]
pub struct WorkResult {
    /// Connections held at every level.
    pub held: usize,
    /// One per level of the plan that could be measured, in the plan's order.
    pub levels: Vec<WorkLevel>,
    /// Fresh clients' echoes beside a connection whose messages are slow, on the same run
    /// of the step as the levels past 0. `None` if it could not be measured (a note says
    /// why).
    pub fairness: Option<Fairness>,
    /// How long the section took for this step (part of the step's own `wall_seconds`).
    pub wall_seconds: f64,
}

/// A burst at one level of work per message.
#[derive(Debug, Clone, Serialize)]
pub struct WorkLevel {
    pub work_us: u32,
    /// The messages' length: what makes them cost `work_us` (see [`WorkPlan::message_bytes`]).
    pub message_bytes: usize,
    /// Messages per round (one on each of that many connections at once), and rounds.
    pub burst: usize,
    pub rounds: usize,
    /// Echoes back per second of the rounds.
    pub msgs_per_s: f64,
    pub p50_us: f64,
    pub p99_us: f64,
    /// The step's CPU seconds over the rounds' wall-clock seconds: the cores it kept busy.
    pub cores: Option<f64>,
    /// CPUs' worth of time other processes took meanwhile (see `busy.rs`): cores the step
    /// could not have.
    pub others_cores: Option<f64>,
    pub echo: EchoCounts,
}

/// One connection sends messages that cost the step `slow_ms` each, back to back; fresh
/// clients arrive meanwhile, each connecting (and upgrading), then timing one 64-byte echo.
#[derive(Debug, Clone, Serialize)]
pub struct Fairness {
    /// The step's `--work-us`, and so the slow messages' length (64 bytes per `base_us`).
    pub base_us: u32,
    pub slow_bytes: usize,
    /// The slow messages' own round trip, median: what one costs, and more.
    pub slow_p50_us: f64,
    /// Slow messages echoed while the fresh clients came.
    pub slow_messages: usize,
    pub fresh: EchoCounts,
    pub fresh_p50_us: f64,
    pub fresh_p99_us: f64,
    /// For a step of several processes (step08): the fresh clients the kernel gave to the
    /// slow connection's worker, and those it gave to the others.
    pub same_worker: Option<FreshGroup>,
    pub other_workers: Option<FreshGroup>,
}

/// Some of the fresh clients' echoes.
#[derive(Debug, Clone, Serialize)]
pub struct FreshGroup {
    pub clients: usize,
    pub p99_us: f64,
}

/// Every time in `report.json` is in microseconds, as a float.
pub fn us(d: Duration) -> f64 {
    d.as_secs_f64() * 1e6
}

/// CPU time between two readings, in µs per unit of work; `None` if either reading failed
/// or there was no work.
pub fn per_each(before: Option<Duration>, after: Option<Duration>, work: usize) -> Option<f64> {
    let (before, after) = (before?, after?);
    (work > 0).then(|| us(after.saturating_sub(before)) / work as f64)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A level's messages cost it at the base: 64 bytes per base µs, one byte at least.
    #[test]
    fn a_levels_messages_are_as_long_as_its_work() {
        let plan = WorkPlan {
            levels_us: vec![0, 20, 100, 500],
            base_us: 100,
            burst: 1,
            rounds: 1,
            min_window: Duration::ZERO,
            slow_ms: 50,
            fresh_clients: 1,
            fresh_every: Duration::ZERO,
        };
        let bytes: Vec<usize> = plan.levels_us[1..]
            .iter()
            .map(|&l| plan.message_bytes(l))
            .collect();
        assert_eq!(bytes, [13, 64, 320]);
        assert_eq!(plan.message_bytes(50_000), 32_000, "a 50 ms message");
        assert_eq!(plan.message_bytes(0), 1);
    }

    /// A step that holds a tenth of N gets three times the storms and rounds, no more.
    #[test]
    fn a_step_holding_fewer_gets_more_repeats() {
        let plan = |conns| Plan {
            conns,
            message_size: 64,
            served_deadline: Duration::ZERO,
            echo_probes: 0,
            probe_deadline: Duration::ZERO,
            batch: Batch {
                warmup: 0,
                max: 0,
                min: 0,
                time: Duration::ZERO,
            },
            sweep_passes: 1,
            kernel_chunks: 1,
            storm_in_flight: 1,
            storms: 3,
            burst_rounds: 5,
            count_syscalls: false,
            work: WorkPlan {
                levels_us: vec![0],
                base_us: 100,
                burst: 1,
                rounds: 1,
                min_window: Duration::ZERO,
                slow_ms: 50,
                fresh_clients: 1,
                fresh_every: Duration::ZERO,
            },
        };
        assert_eq!(plan(10_000).repeats(3, 10_000), 3);
        assert_eq!(plan(10_000).repeats(5, 7_000), 10);
        assert_eq!(plan(10_000).repeats(3, 1_000), 9);
        assert_eq!(plan(10_000).repeats(3, 0), 9);
        assert_eq!(plan(10_000).repeats(0, 10_000), 1);
    }
}
