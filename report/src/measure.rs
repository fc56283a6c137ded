//! One step, measured: start it, connect in stages, time round trips at each stage, read
//! its memory three ways (its own line, /proc, the kernel's slabs), push it through a burst
//! and a storm, sweep the round trip again on the way down and up, then end it.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use common::MemoryLine;
use indicatif::ProgressBar;
use loadgen::{ConnectOptions, EchoStats, Pace, Pick, Pool, Protocol, Target};
use serde::Serialize;
use stepcheck::syscalls::SyscallCount;

use crate::affinity::OneCpu;
use crate::child::{Sample, StepProcess};
use crate::kernel::KernelChunks;
use crate::procfs::{self, KernelMemory};
use crate::steps::{self, StepSpec};
use crate::sweep::{self, SweepPoint, Visits};

/// Fewer connections than this, and the kernel figure per connection is mostly noise.
pub const MIN_CONNS_FOR_KERNEL: usize = 100;

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
    /// CPUs' worth of time other processes took while the burst and storms ran (see
    /// [`OthersCpu`]); past [`BUSY_MACHINE`], the busy figures may be off. Signed as
    /// measured: a quiet machine reads a few hundredths either side of zero.
    pub others_cpu_cores: Option<f64>,
    pub wall_seconds: f64,
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
    /// The resident sets from /proc and from the line agree (see [`agree`]).
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

impl StepResult {
    fn new(spec: &StepSpec) -> StepResult {
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

/// Run one step through the whole plan. Never fails: a step that cannot be measured
/// becomes a row with its error.
pub async fn measure(
    spec: &StepSpec,
    plan: &Plan,
    bin_dir: &Path,
    bar: &ProgressBar,
) -> StepResult {
    let started = Instant::now();
    let mut result = StepResult::new(spec);
    let points = steps::points(spec, plan.conns);
    result.conns.asked = *points.last().expect("bug: there is always a last point");
    bar.set_length(result.conns.asked as u64);

    let bin = bin_dir.join(spec.bin);
    if !bin.exists() {
        result.error = Some(format!("no binary at {}", bin.display()));
        return result;
    }
    bar.set_message("starting");
    KernelMemory::settle(Duration::from_secs(3));
    let step = match start(&bin, spec, plan).await {
        Ok(step) => step,
        Err(err) => {
            result.error = Some(err);
            return result;
        }
    };
    let mut run = Run {
        spec,
        plan,
        points: &points,
        step,
        bar,
        sweep: BTreeMap::new(),
        unpinned: None,
    };
    if let Err(err) = run.all(&mut result).await {
        result.error = Some(err);
    }
    result.sweep = run.sweep.into_values().filter_map(Visits::point).collect();
    drop(run.step); // killed and reaped
    result.wall_seconds = started.elapsed().as_secs_f64();
    result
}

/// A step started, listening, and settled.
struct Started {
    process: StepProcess,
    addr: SocketAddr,
    /// Our baseline: the step's resident set once it has settled and served one connection
    /// (see [`warm_up`]), just before the first of the measured ones. The step's own baseline
    /// is taken right after bind, before it allocated whatever it allocates at start-up (a
    /// shared read buffer, a runtime's worker threads) and before it ran the code that
    /// serves a connection; its per-connection figure spreads that over the connections,
    /// ours does not.
    base_rss: u64,
}

async fn start(bin: &Path, spec: &StepSpec, plan: &Plan) -> Result<Started, String> {
    // Blocking: waits for the listening line. Nothing else runs on this thread meanwhile.
    let mut process = StepProcess::start(bin, spec.args)?;
    let addr = process.addr();
    warm_up(&mut process, spec, addr, plan).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let base_rss = procfs::status(process.pid())
        .map_err(|err| {
            format!(
                "cannot read /proc/{}/status: {err}{}",
                process.pid(),
                process.last_words()
            )
        })?
        .rss_bytes;
    Ok(Started {
        process,
        addr,
        base_rss,
    })
}

/// One connection comes, is echoed once, and goes, before our baseline is read.
///
/// The first connection runs code the step has not run yet (accept, read, write, close: in
/// libc, in the step), and the kernel maps code in when it is first run, 64 KiB around the
/// page at a time ("fault-around"). Those pages count in the resident set, once. Where the
/// 64 KiB windows fall moves with the address-space layout, which is random from run to
/// run, so without this a window lands before or after the baseline by chance: step03 at
/// 1000 connections read 36 B or 102 B per connection from one run to the next. After one
/// connection has come and gone, that code is in the baseline, and the figure is what
/// holding connections costs. A step that cannot serve it is left to fail in the run.
async fn warm_up(process: &mut StepProcess, spec: &StepSpec, addr: SocketAddr, plan: &Plan) {
    let Ok(mut pool) = pool_for(spec, addr) else {
        return;
    };
    let since = Instant::now();
    pool.grow_to(1, Pace::default(), &ProgressBar::hidden())
        .await;
    pool.echo_each(0, plan.message_size, plan.served_deadline)
        .await;
    // Seen by the step, then seen to go: its memory line says 1, then 0.
    process.memory_line(1, since, Duration::from_secs(3));
    let closed_at = Instant::now();
    pool.close();
    process.memory_line(0, closed_at, Duration::from_secs(3));
}

/// An empty pool of loadgen connections to the step at `addr`, in its protocol.
fn pool_for(spec: &StepSpec, addr: SocketAddr) -> Result<Pool, String> {
    let url = match spec.protocol {
        Protocol::Tcp => format!("tcp://{addr}"),
        Protocol::WebSocket => format!("ws://{addr}/"),
    };
    let mut opts = ConnectOptions::new(url.parse::<Target>()?);
    opts.timeout = Duration::from_secs(5);
    Ok(Pool::new(opts))
}

/// One step's measurement under way: what it needs, and the sweep's visits so far.
struct Run<'a> {
    spec: &'a StepSpec,
    plan: &'a Plan,
    /// Connection counts of the sweep, the last one the top.
    points: &'a [usize],
    step: Started,
    bar: &'a ProgressBar,
    /// Round trips by connection count, over every visit.
    sweep: BTreeMap<usize, Visits>,
    /// Why a visit's round trips could not be timed on one CPU, if one could not.
    unpinned: Option<String>,
}

impl Run<'_> {
    /// The whole plan: up the sweep (memory and kernel at the top), the burst, the storm,
    /// then down and up the sweep again.
    async fn all(&mut self, result: &mut StepResult) -> Result<(), String> {
        let top = *self
            .points
            .last()
            .expect("bug: there is always a last point");
        let mut pool = self.pool()?;
        let mut served = EchoStats::default();

        // Up: open each stage, time round trips; the last stretch in chunks for the kernel.
        let mut kernel = KernelChunks::default();
        let mut last_connection_at = Instant::now();
        for &point in self.points {
            if point == top {
                (kernel, last_connection_at) = self.open_top(&mut pool, point, &mut served).await;
            } else {
                self.open(&mut pool, point, &mut served).await;
            }
            if pool.is_empty() {
                return Err(format!("no connection opened: {}", pool.failures.short()));
            }
            self.visit(&mut pool, point == top).await;
        }
        result.conns.held = pool.len();
        result.conns.served = served.ok;
        result.conns.failures = pool.failures.short();
        if pool.failures.total() > 0 {
            result.notes.push(format!(
                "{} connects failed: {}",
                pool.failures.total(),
                pool.failures.short()
            ));
        }

        self.bar.set_message("memory");
        // The memory line for the full count was printed when the last connection arrived,
        // before the round trips; it is in the samples already, or arrives within a period.
        let sample = self.step.process.memory_line(
            result.conns.held,
            last_connection_at,
            Duration::from_millis(2500),
        );
        fill_memory(result, sample, self.step.base_rss);
        kernel.fill(result);

        self.bar.set_message("echo probes");
        let echo = pool
            .probe(
                Pick::Random,
                self.plan.echo_probes,
                self.plan.message_size,
                self.plan.probe_deadline,
            )
            .await;
        result.echo = EchoCounts::from(&echo);

        if self.spec.busy {
            let others = OthersCpu::start(self.step.process.pid());
            result.burst = Some(self.burst(&mut pool, &mut result.notes).await);
            // The storm, `plan.storms` times (more for a step that holds fewer); the median
            // storm stands. Each time: reset every connection, wait until the step
            // has seen them all go (its memory line says 0), so that its CPU time in the
            // storm is the storm's alone; then let them all arrive again at once.
            let mut storms = Vec::new();
            for _ in 0..self.plan.repeats(self.plan.storms, top) {
                let closed_at = Instant::now();
                pool.close();
                self.step
                    .process
                    .memory_line(0, closed_at, Duration::from_secs(3));
                pool = self.pool()?;
                storms.push(self.storm(&mut pool, top).await);
                // Let the step count them before they go, so that it sees the count change
                // and prints the 0 the next close waits for, even after a storm shorter than
                // its report period (select's thousand take 40 ms).
                self.step
                    .process
                    .memory_line(pool.len(), closed_at, Duration::from_secs(3));
            }
            result.storm = median_storm(storms);
            result.others_cpu_cores = others.and_then(OthersCpu::cores);
        }

        // Down and up again, timing round trips at each point on the way.
        if self.spec.sweep {
            for pass in 1..self.plan.sweep_passes {
                let order: Vec<usize> = if pass % 2 == 1 {
                    self.points.iter().rev().copied().collect()
                } else {
                    self.points.to_vec()
                };
                for point in order {
                    if point < pool.len() {
                        pool.shrink_to(point);
                    } else {
                        self.open(&mut pool, point, &mut served).await;
                    }
                    self.visit(&mut pool, point == top).await;
                }
            }
        }

        if let Some(why) = &self.unpinned {
            result
                .notes
                .push(format!("round trips timed on both CPUs, not one: {why}"));
        }
        result.cpu_seconds = procfs::cpu_time(self.step.process.pid())
            .ok()
            .map(|t| t.as_secs_f64());
        if !self.step.process.is_running() {
            result.notes.push(format!(
                "the step exited during the run{}",
                self.step.process.last_words()
            ));
        }
        // Reset every connection: no TIME_WAIT left to skew the next step's kernel figures.
        pool.close();
        Ok(())
    }

    fn pool(&self) -> Result<Pool, String> {
        pool_for(self.spec, self.step.addr)
    }

    /// The step's CPU time so far (zero if it has exited: the figure is then not used).
    fn cpu(&self) -> Option<Duration> {
        procfs::cpu_time(self.step.process.pid()).ok()
    }

    /// Open connections until `stage` are held, then send one message on each new one at
    /// once (adding to `served`). Returns how many were opened.
    async fn open(&self, pool: &mut Pool, stage: usize, served: &mut EchoStats) -> usize {
        let from = pool.len();
        if from >= stage {
            return 0;
        }
        self.bar.set_message(format!("connecting {stage}"));
        pool.grow_to(stage, Pace::default(), self.bar).await;
        self.bar
            .set_message(format!("one message on each of {}", pool.len() - from));
        served.merge(
            pool.echo_each(from, self.plan.message_size, self.plan.served_deadline)
                .await,
        );
        pool.len() - from
    }

    /// Open the last stretch up to `top`, in chunks with a look at the kernel's figures
    /// around each, then the very last connection on its own. Returns the kernel's figures
    /// and when the last connection was asked for.
    ///
    /// The kernel's figures are machine-wide, and other processes open and close sockets
    /// too: a burst from elsewhere spoils a chunk or two, and the median skips them. The
    /// last connection opens after the others' echoes, so the count changes once more and
    /// the step prints a memory line that includes what a connection costs after its first
    /// message (a WebSocket step allocates then).
    async fn open_top(
        &self,
        pool: &mut Pool,
        top: usize,
        served: &mut EchoStats,
    ) -> (KernelChunks, Instant) {
        let from = pool.len();
        let end = top.saturating_sub(1).max(from);
        let mut kernel = KernelChunks {
            // A handful of connections is lost in the noise of a whole machine's kernel (and
            // in the slab allocator's per-CPU caches): no kernel figure for so few.
            too_few: end - from < MIN_CONNS_FOR_KERNEL,
            ..KernelChunks::default()
        };
        let chunks = if kernel.too_few {
            1
        } else {
            self.plan.kernel_chunks.max(1)
        };
        let mut before = KernelMemory::read().filter(|_| !kernel.too_few);
        for k in 1..=chunks {
            let added = self
                .open(pool, from + (end - from) * k / chunks, served)
                .await;
            let after = KernelMemory::read();
            if let (Some(before), Some(after), 1..) = (&before, &after, added) {
                kernel.add(before, after, added);
            }
            before = after;
        }
        let last_connection_at = Instant::now();
        self.open(pool, top, served).await;
        (kernel, last_connection_at)
    }

    /// One visit of a sweep point: a warm-up, then round trips one after another on the
    /// first connection (the one open longest), with the step's CPU time read around them.
    /// Only the top is visited when the step is not swept.
    async fn visit(&mut self, pool: &mut Pool, is_top: bool) {
        if !(self.spec.sweep || is_top) {
            return;
        }
        const CHUNK: usize = 50;
        let held = pool.len();
        let batch = &self.plan.batch;
        let (size, deadline) = (self.plan.message_size, self.plan.probe_deadline);
        self.bar
            .set_message(format!("round trips with {held} held"));
        // Client and step on one CPU meanwhile (see `affinity.rs`); if that fails, the
        // round trips are timed anyway, with the noise it would have removed.
        let pinned = OneCpu::pin(self.step.process.pid())
            .inspect_err(|err| self.unpinned = Some(err.to_string()));
        pool.probe(Pick::Conn(0), batch.warmup, size, deadline)
            .await;
        let (started, cpu_before) = (Instant::now(), self.cpu());
        let mut stats = EchoStats::default();
        while stats.sent() < batch.max
            && (stats.sent() < batch.min || started.elapsed() < batch.time)
        {
            let chunk = pool.probe(Pick::Conn(0), CHUNK, size, deadline).await;
            let complete = chunk.sent() == CHUNK;
            stats.merge(chunk);
            if !complete {
                break; // the probe connection lost an echo: it is not probed again
            }
        }
        let cpu = per_each(cpu_before, self.cpu(), stats.ok);
        drop(pinned);
        self.sweep
            .entry(held)
            .or_insert_with(|| Visits::new(held))
            .add(stats.finish(), cpu);
    }

    /// Every connection sends one message at the same moment, several rounds, while a
    /// thread samples the step's resident set for its peak and perf counts its system calls.
    /// A count that fails is a note on the step.
    async fn burst(&self, pool: &mut Pool, notes: &mut Vec<String>) -> BurstResult {
        let conns = pool.usable();
        let rounds = self.plan.repeats(self.plan.burst_rounds, conns);
        self.bar.set_message(format!("burst: {rounds} rounds"));
        let pid = self.step.process.pid();
        let syscalls = self
            .plan
            .count_syscalls
            .then(|| SyscallCount::start(pid))
            .transpose();
        let peak = PeakRss::watch(pid);
        let mut cpu_rounds = Vec::new();
        let mut cpu_before = self.cpu();
        let burst = pool
            .burst_with(
                rounds,
                self.plan.message_size,
                self.plan.served_deadline,
                |round| {
                    let cpu_after = self.cpu();
                    cpu_rounds.push(per_each(cpu_before, cpu_after, round.ok));
                    cpu_before = cpu_after;
                },
            )
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
        let us_of = |pick: fn(&loadgen::RttSummary) -> Duration| {
            summary.as_ref().map_or(0.0, |s| us(pick(s)))
        };
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
                .then(|| peak_rss.saturating_sub(self.step.base_rss) / pool.len() as u64),
            syscalls_per_msg: syscalls
                .filter(|_| burst.echo.ok > 0)
                .map(|calls| calls as f64 / burst.echo.ok as f64),
            echo: EchoCounts::from(&burst.echo),
        }
    }

    /// `conns` connections opened as fast as loadgen can, each with one echo.
    async fn storm(&self, pool: &mut Pool, conns: usize) -> StormResult {
        self.bar.set_message(format!("storm: {conns} at once"));
        let cpu_before = self.cpu();
        let storm = pool
            .storm(
                conns,
                self.plan.storm_in_flight,
                self.plan.message_size,
                self.plan.served_deadline,
            )
            .await;
        let connect = storm.connect_summary();
        StormResult {
            conns: storm.opened,
            conns_per_s: storm.conns_per_s(),
            connect_p50_us: connect.map_or(0.0, |s| us(s.p50)),
            connect_p99_us: connect.map_or(0.0, |s| us(s.p99)),
            server_cpu_us_per_conn: per_each(cpu_before, self.cpu(), storm.opened),
            echo: EchoCounts::from(&storm.echo),
            // Filled by `median_storm`, which sees every storm.
            conns_per_s_each: Vec::new(),
            server_cpu_us_per_conn_each: Vec::new(),
        }
    }
}

/// Other processes taking more than this many CPUs' worth of time during a step's burst and
/// storms make its busy figures suspect: the step and the client share two cores with them.
pub const BUSY_MACHINE: f64 = 0.2;

/// The machine's CPU time minus the step's and the report's own, over a stretch of the run:
/// what the rest of the machine took from the two cores the figures need.
struct OthersCpu {
    pid: u32,
    started: Instant,
    machine: Duration,
    ours: Duration,
}

impl OthersCpu {
    fn start(pid: u32) -> Option<OthersCpu> {
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
    fn cores(self) -> Option<f64> {
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

/// CPU time between two readings, in µs per unit of work; `None` if either reading failed
/// or there was no work.
fn per_each(before: Option<Duration>, after: Option<Duration>, work: usize) -> Option<f64> {
    let (before, after) = (before?, after?);
    (work > 0).then(|| us(after.saturating_sub(before)) / work as f64)
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

/// The step's memory line and /proc's figures read with it, side by side.
fn fill_memory(result: &mut StepResult, sample: Option<Sample>, base_rss_proc: u64) {
    let Some(Sample { line, proc, .. }) = sample else {
        result.notes.push("no memory line from the step".into());
        return;
    };
    result.conns.server = Some(line.conns);
    let held = result.conns.held;
    if line.conns < held {
        result.notes.push(format!(
            "the step holds {}: {} more wait in its listen backlog, connected but not accepted",
            line.conns,
            held - line.conns
        ));
    } else if line.conns > held {
        result.notes.push(format!(
            "the step counts {} connections; loadgen holds {held}",
            line.conns
        ));
    }
    let mut memory = UserMemory {
        rss_per_conn_bytes: None,
        rss_agree: None,
        proc_rss_bytes: None,
        proc_base_rss_bytes: base_rss_proc,
        threads: None,
        line,
    };
    if let Some(proc) = proc {
        let line = &memory.line;
        memory.proc_rss_bytes = Some(proc.rss_bytes);
        memory.threads = Some(proc.threads);
        if line.conns > 0 {
            memory.rss_per_conn_bytes =
                Some(proc.rss_bytes.saturating_sub(base_rss_proc) / line.conns as u64);
        }
        let agreed = agree(proc.rss_bytes, line.rss_bytes);
        memory.rss_agree = Some(agreed);
        if !agreed {
            result.notes.push(format!(
                "RSS disagrees: /proc says {}, the step's line {}, read at the same moment",
                common::format_bytes(proc.rss_bytes),
                common::format_bytes(line.rss_bytes),
            ));
        }
        if proc.threads != line.threads {
            result.notes.push(format!(
                "threads: /proc says {}, the line {}",
                proc.threads, line.threads
            ));
        }
    }
    result.memory = Some(memory);
}

pub fn us(d: Duration) -> f64 {
    d.as_secs_f64() * 1e6
}

/// Whether /proc and the step's line tell the same story: the resident set the step
/// printed, and VmRSS read the moment the line arrived, within 2% or 256 KiB. Both come
/// from the same kernel counter, so only the few microseconds between them separate them;
/// a larger gap means the step's meter reads the wrong thing.
pub fn agree(rss_proc: u64, rss_line: u64) -> bool {
    rss_proc.abs_diff(rss_line) <= (256 * 1024).max(rss_line / 50)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The RSS from /proc and the step's own line agree within a few pages or 2%, not megabytes.
    #[test]
    fn rss_figures_agree_within_pages_not_megabytes() {
        assert!(agree(14_000_000, 14_004_096));
        assert!(
            agree(200_000_000, 197_000_000),
            "2% of a large resident set is timing"
        );
        assert!(!agree(14_000_000, 20_000_000));
        assert!(!agree(200_000_000, 190_000_000));
    }

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
        };
        assert_eq!(plan(10_000).repeats(3, 10_000), 3);
        assert_eq!(plan(10_000).repeats(5, 7_000), 10);
        assert_eq!(plan(10_000).repeats(3, 1_000), 9);
        assert_eq!(plan(10_000).repeats(3, 0), 9);
        assert_eq!(plan(10_000).repeats(0, 10_000), 1);
    }
}
