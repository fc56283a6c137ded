//! One step, measured: start it, connect in stages, time round trips at each stage, read
//! its memory three ways (its own line, /proc, the kernel's slabs), then end it.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::{Duration, Instant};

use indicatif::ProgressBar;
use loadgen::{ConnectOptions, EchoStats, Pace, Pick, Pool, Protocol, Target};
use serde::Serialize;

use crate::child::{Sample, StepProcess};
use crate::procfs::{self, KernelMemory};
use crate::steps::{self, StepSpec};

/// Fewer connections than this, and the kernel figure per connection is mostly noise.
const MIN_CONNS_FOR_KERNEL: usize = 100;

/// Round trips timed at each sweep point, however slow they are: enough for a steady median.
const MIN_PROBES: usize = 200;

/// Chunks the last stretch of connections is opened in, for the kernel's figures.
const KERNEL_CHUNKS: usize = 5;

/// How hard to push each step; the same for every step, so rows compare like for like.
#[derive(Debug, Clone)]
pub struct Plan {
    /// Connections each step is asked to hold (before its own cap).
    pub conns: usize,
    /// Round trips timed at each sweep point, on one connection, after a warm-up.
    pub probes: usize,
    /// Round trips sent first and not counted: the first ones pay for cold caches.
    pub warmup: usize,
    /// Echo probes on random connections at the end, checked byte for byte.
    pub echo_probes: usize,
    /// Bytes per echo message.
    pub message_size: usize,
    /// How long the echo on every connection may take before the rest count as not served.
    pub served_deadline: Duration,
    /// One probe not back by then is lost.
    pub probe_deadline: Duration,
    /// Stop timing round trips at one sweep point after this long (past [`MIN_PROBES`]).
    pub probe_time: Duration,
}

/// Round trip with `conns` connections held (one of them the probe).
#[derive(Debug, Clone, Serialize)]
pub struct SweepPoint {
    pub conns: usize,
    pub p50_us: f64,
    pub p99_us: f64,
}

/// Outcome counts of the echo probes.
#[derive(Debug, Clone, Default, Serialize)]
pub struct EchoCounts {
    pub ok: usize,
    pub lost: usize,
    pub mismatched: usize,
    pub failed: usize,
}

/// One row of the report. `None` figures were not measured (the step failed, or the
/// kernel's figures are unreadable).
#[derive(Debug, Clone, Default, Serialize)]
pub struct StepResult {
    pub step: String,
    pub bin: String,
    pub protocol: String,
    pub args: Vec<String>,
    /// Why the step has no figures, if it has none.
    pub error: Option<String>,
    /// Problems met along the way, for the notes column.
    pub notes: Vec<String>,
    /// Connections the report asked for (after the step's cap).
    pub asked: usize,
    /// Connections open from loadgen's side when measured.
    pub held: usize,
    /// Connections whose one message came back while all were sent at once.
    pub served: usize,
    /// Connections the step says it holds, in its memory line.
    pub server_conns: Option<usize>,
    /// (VmRSS − VmRSS just before the first connection) / server_conns, /proc/PID/status.
    pub rss_per_conn_proc: Option<u64>,
    /// per_conn_bytes from the step's own memory line.
    pub rss_per_conn_line: Option<u64>,
    /// The resident sets from /proc and from the line, read together, within [`agree`]'s tolerance.
    pub rss_agree: Option<bool>,
    pub rss_bytes_proc: Option<u64>,
    pub base_rss_bytes_proc: Option<u64>,
    pub rss_bytes_line: Option<u64>,
    pub base_rss_bytes_line: Option<u64>,
    /// Growth of the socket caches and kernel stacks / held: covers BOTH ends of each
    /// loopback connection (the step's socket and loadgen's), since both live in this kernel.
    /// The median of [`StepResult::kernel_chunks_per_conn`].
    pub kernel_per_conn: Option<i64>,
    /// Each cache's share of the median chunk's growth, per connection.
    pub kernel_growth_per_conn: BTreeMap<String, i64>,
    /// Growth per connection while each chunk of the last stretch opened, sorted.
    pub kernel_chunks_per_conn: Vec<i64>,
    pub threads: Option<usize>,
    pub cpu_seconds: Option<f64>,
    /// Round trip on one connection with `held` connections open.
    pub rtt_p50_us: Option<f64>,
    pub rtt_p99_us: Option<f64>,
    pub echo: EchoCounts,
    pub connect_failures: String,
    pub sweep: Vec<SweepPoint>,
    pub wall_seconds: f64,
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
    result.asked = *points.last().expect("bug: there is always a last point");
    bar.set_length(result.asked as u64);

    let bin = bin_dir.join(spec.bin);
    if !bin.exists() {
        result.error = Some(format!("no binary at {}", bin.display()));
        return result;
    }
    bar.set_message("starting");
    KernelMemory::settle(Duration::from_secs(3));
    let mut step = match StepProcess::start(&bin, spec.args) {
        Ok(step) => step,
        Err(err) => {
            result.error = Some(err);
            return result;
        }
    };
    // Blocking: polls the child for up to 15 s. Nothing else runs on this thread meanwhile.
    let addr = match step.wait_listening(Duration::from_secs(15)) {
        Ok(addr) => addr,
        Err(err) => {
            result.error = Some(err);
            return result;
        }
    };
    // Our baseline: the step's resident set once it has settled, just before the first
    // connection. The step's own baseline is taken right after bind, before it allocated
    // whatever it allocates at start-up (a shared read buffer, a runtime's worker threads);
    // its per-connection figure spreads that over the connections, ours does not.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let base = match procfs::status(step.pid()) {
        Ok(status) => status,
        Err(err) => {
            result.error = Some(format!(
                "cannot read /proc/{}/status: {err}{}",
                step.pid(),
                step.last_words()
            ));
            return result;
        }
    };
    if let Err(err) = run(
        spec,
        plan,
        &points,
        &mut step,
        addr,
        base.rss_bytes,
        bar,
        &mut result,
    )
    .await
    {
        result.error = Some(err);
    }
    drop(step); // killed and reaped
    result.wall_seconds = started.elapsed().as_secs_f64();
    result
}

#[allow(clippy::too_many_arguments)] // one call site; a struct for these would only move the list
async fn run(
    spec: &StepSpec,
    plan: &Plan,
    points: &[usize],
    step: &mut StepProcess,
    addr: std::net::SocketAddr,
    base_rss_proc: u64,
    bar: &ProgressBar,
    result: &mut StepResult,
) -> Result<(), String> {
    let url = match spec.protocol {
        Protocol::Tcp => format!("tcp://{addr}"),
        Protocol::WebSocket => format!("ws://{addr}/"),
    };
    let mut opts = ConnectOptions::new(url.parse::<Target>()?);
    opts.timeout = Duration::from_secs(5);
    let mut pool = Pool::new(opts);
    let mut served = EchoStats::default();
    let top = *points.last().expect("bug: there is always a last point");
    // Filled in when the top is reached.
    let mut kernel = KernelChunks::default();
    let mut last_connection_at = Instant::now();

    for &point in points {
        let is_top = point == top;
        if is_top {
            (kernel, last_connection_at) = open_top(&mut pool, point, plan, bar, &mut served).await;
        } else {
            open(&mut pool, point, plan, bar, &mut served).await;
        }
        if pool.is_empty() {
            return Err(format!("no connection opened: {}", pool.failures.short()));
        }
        if spec.sweep || is_top {
            bar.set_message(format!("round trips with {} held", pool.len()));
            let stats = round_trips(&mut pool, plan).await;
            match stats.summary() {
                Some(summary) => {
                    let point = SweepPoint {
                        conns: pool.len(),
                        p50_us: us(summary.p50),
                        p99_us: us(summary.p99),
                    };
                    if is_top {
                        result.rtt_p50_us = Some(point.p50_us);
                        result.rtt_p99_us = Some(point.p99_us);
                    }
                    result.sweep.push(point);
                }
                None => result
                    .notes
                    .push(format!("no round trip at {} held ({stats})", pool.len())),
            }
        }
    }
    result.held = pool.len();
    result.served = served.ok;
    result.connect_failures = pool.failures.short();
    if pool.failures.total() > 0 {
        result.notes.push(format!(
            "{} connects failed: {}",
            pool.failures.total(),
            pool.failures.short()
        ));
    }

    bar.set_message("memory");
    // The memory line for the full count was printed when the last connection arrived,
    // before the round trips; it is in the samples already, or arrives within a period.
    let sample = step.memory_line(result.held, last_connection_at, Duration::from_millis(2500));
    fill_memory(result, sample, base_rss_proc);
    kernel.fill(result);

    bar.set_message("echo probes");
    let echo = pool
        .probe(
            Pick::Random,
            plan.echo_probes,
            plan.message_size,
            plan.probe_deadline,
        )
        .await;
    result.echo = EchoCounts {
        ok: echo.ok,
        lost: echo.lost,
        mismatched: echo.mismatched,
        failed: echo.failed,
    };

    result.cpu_seconds = procfs::cpu_seconds(step.pid()).ok();
    if !step.is_running() {
        result.notes.push(format!(
            "the step exited during the run{}",
            step.last_words()
        ));
    }
    // Reset every connection: no TIME_WAIT left to skew the next step's kernel figures.
    pool.close();
    Ok(())
}

/// Open the last stretch up to `top`, in chunks with a look at the kernel's figures around
/// each, then the very last connection on its own. Returns the kernel's figures and when
/// the last connection was asked for.
///
/// The kernel's figures are machine-wide, and other processes open and close sockets too:
/// a burst from elsewhere spoils a chunk or two, and the median skips them. The last
/// connection opens after the others' echoes, so the count changes once more and the step
/// prints a memory line that includes what a connection costs after its first message (a
/// WebSocket step allocates then).
async fn open_top(
    pool: &mut Pool,
    top: usize,
    plan: &Plan,
    bar: &ProgressBar,
    served: &mut EchoStats,
) -> (KernelChunks, Instant) {
    let from = pool.len();
    let end = top.saturating_sub(1).max(from);
    let mut kernel = KernelChunks {
        // A handful of connections is lost in the noise of a whole machine's kernel (and in
        // the slab allocator's per-CPU caches): no kernel figure for so few.
        too_few: end - from < MIN_CONNS_FOR_KERNEL,
        ..KernelChunks::default()
    };
    let chunks = if kernel.too_few { 1 } else { KERNEL_CHUNKS };
    let mut before = KernelMemory::read().filter(|_| !kernel.too_few);
    for k in 1..=chunks {
        let added = open(pool, from + (end - from) * k / chunks, plan, bar, served).await;
        let after = KernelMemory::read();
        if let (Some(before), Some(after), 1..) = (&before, &after, added) {
            kernel.add(before, after, added);
        }
        before = after;
    }
    let last_connection_at = Instant::now();
    open(pool, top, plan, bar, served).await;
    (kernel, last_connection_at)
}

/// Kernel memory per connection, one figure per chunk of connections opened.
#[derive(Debug, Default)]
struct KernelChunks {
    /// Growth per connection in total, and by cache.
    kept: Vec<(i64, BTreeMap<String, i64>)>,
    /// Chunks set aside because another process opened or closed sockets meanwhile.
    spoiled: Vec<String>,
    /// Too few connections to measure at all.
    too_few: bool,
}

impl KernelChunks {
    /// Count the chunk between two readings in which `added` connections opened, unless the
    /// TCP cache says another process was at work too.
    fn add(&mut self, before: &KernelMemory, after: &KernelMemory, added: usize) {
        let new_sockets = after.tcp_sockets as i64 - before.tcp_sockets as i64;
        if !two_sockets_each(new_sockets, added) {
            self.spoiled.push(format!(
                "{new_sockets} new TCP sockets for {added} connections"
            ));
            return;
        }
        let (growth, total) = before.growth(after);
        let per_conn = growth
            .into_iter()
            .map(|(cache, bytes)| (cache, bytes / added as i64))
            .collect();
        self.kept.push((total / added as i64, per_conn));
    }

    /// The median chunk becomes the step's kernel figure; what was set aside goes in the notes.
    fn fill(mut self, result: &mut StepResult) {
        self.kept.sort_by_key(|(per_conn, _)| *per_conn);
        result.kernel_chunks_per_conn = self.kept.iter().map(|(per_conn, _)| *per_conn).collect();
        if !self.spoiled.is_empty() {
            result.notes.push(format!(
                "kernel: {} of {} chunks set aside, the TCP cache did not grow by two sockets per \
                 connection (new sockets for connections: {}): another process was at work too",
                self.spoiled.len(),
                self.spoiled.len() + self.kept.len(),
                self.spoiled.join(", ")
            ));
        }
        if self.too_few {
            result.notes.push(format!(
                "kernel memory not shown: {} connections are too few to measure",
                result.held
            ));
        }
        if let Some((median, breakdown)) = self.kept.get(self.kept.len() / 2) {
            result.kernel_per_conn = Some(*median);
            result.kernel_growth_per_conn = breakdown.clone();
        } // else: unreadable (n/a), too few, or every chunk set aside (noted above)
    }
}

/// The step's memory line and /proc's figures read with it, side by side.
fn fill_memory(result: &mut StepResult, sample: Option<Sample>, base_rss_proc: u64) {
    let Some(sample) = sample else {
        result.notes.push("no memory line from the step".into());
        return;
    };
    let line = &sample.line;
    result.server_conns = Some(line.conns);
    result.rss_per_conn_line = Some(line.per_conn_bytes);
    result.rss_bytes_line = Some(line.rss_bytes);
    result.base_rss_bytes_line = Some(line.base_rss_bytes);
    result.base_rss_bytes_proc = Some(base_rss_proc);
    if let Some(proc) = sample.proc {
        result.rss_bytes_proc = Some(proc.rss_bytes);
        result.threads = Some(proc.threads);
        if line.conns > 0 {
            result.rss_per_conn_proc =
                Some(proc.rss_bytes.saturating_sub(base_rss_proc) / line.conns as u64);
        }
        let agreed = agree(proc.rss_bytes, line.rss_bytes);
        result.rss_agree = Some(agreed);
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
    if line.conns < result.held {
        result.notes.push(format!(
            "the step holds {}: {} more wait in its listen backlog, connected but not accepted",
            line.conns,
            result.held - line.conns
        ));
    } else if line.conns > result.held {
        result.notes.push(format!(
            "the step counts {} connections; loadgen holds {}",
            line.conns, result.held
        ));
    }
}

/// Open connections until `stage` are held, then send one message on each new one at once
/// (adding to `served`). Returns how many were opened.
async fn open(
    pool: &mut Pool,
    stage: usize,
    plan: &Plan,
    bar: &ProgressBar,
    served: &mut EchoStats,
) -> usize {
    let from = pool.len();
    if from >= stage {
        return 0;
    }
    bar.set_message(format!("connecting {stage}"));
    pool.grow_to(stage, Pace::default(), bar).await;
    bar.set_message(format!("one message on each of {}", pool.len() - from));
    served.merge(
        pool.echo_each(from, plan.message_size, plan.served_deadline)
            .await,
    );
    pool.len() - from
}

/// Whether `new_sockets` TCP sockets are what `conns` new loopback connections make: two
/// each (loadgen's end and the step's), give or take 5% or [`SLAB_SLACK`].
fn two_sockets_each(new_sockets: i64, conns: usize) -> bool {
    let expected = 2 * conns as i64;
    (new_sockets - expected).abs() <= (expected / 20).max(SLAB_SLACK)
}

/// How far slabinfo's count of objects in use may be off: it counts the slabs each CPU
/// keeps at hand as wholly in use (13 TCP sockets a slab, and up to 24 objects in partial
/// slabs per CPU here: /sys/kernel/slab/TCP/cpu_partial).
const SLAB_SLACK: i64 = 80;

/// Warm-up, then timed round trips on the first connection (the one open longest):
/// `plan.probes` of them, or fewer when they are slow (poll with 10 000 idle connections
/// takes milliseconds each): at least [`MIN_PROBES`], then only while within `plan.probe_time`.
async fn round_trips(pool: &mut Pool, plan: &Plan) -> EchoStats {
    const BATCH: usize = 50;
    let (size, deadline) = (plan.message_size, plan.probe_deadline);
    pool.probe(Pick::Conn(0), plan.warmup, size, deadline).await;
    let started = Instant::now();
    let mut stats = EchoStats::default();
    while stats.sent() < plan.probes
        && (stats.sent() < MIN_PROBES || started.elapsed() < plan.probe_time)
    {
        let batch = pool.probe(Pick::Conn(0), BATCH, size, deadline).await;
        let complete = batch.sent() == BATCH;
        stats.merge(batch);
        if !complete {
            break; // the probe connection lost an echo: it is not probed again
        }
    }
    stats.finish()
}

fn us(d: Duration) -> f64 {
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

    /// A measurement counts only if the kernel gained about two TCP sockets per new connection.
    #[test]
    fn a_chunk_counts_only_if_it_made_two_sockets_per_connection() {
        assert!(two_sockets_each(2000, 1000));
        assert!(two_sockets_each(2040, 1000), "a few strays are within 5%");
        assert!(
            !two_sockets_each(2400, 1000),
            "someone else opened 400 sockets"
        );
        assert!(!two_sockets_each(-500, 1000), "someone else closed sockets");
        assert!(two_sockets_each(9, 5));
        assert!(
            two_sockets_each(338, 199),
            "slabinfo's count is off by a few slabs"
        );
    }

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
}
