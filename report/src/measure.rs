//! One step, measured, in the plan's order: start it, connect in stages and time round trips
//! at each (`sweep.rs`), read its memory three ways at the top (its own line beside /proc:
//! `memory.rs`; the kernel's slabs: `kernel.rs`), push it through a burst and storms
//! (`busy.rs`), sweep the round trip again on the way down and up, then give a message
//! real work to do (`work.rs`) and end it.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::{Duration, Instant};

use indicatif::ProgressBar;
use loadgen::{EchoStats, Pace, Pick, Pool};

use crate::affinity::OneCpu;
use crate::busy;
use crate::child::Started;
use crate::kernel::{KernelChunks, MIN_CONNS_FOR_KERNEL};
use crate::memory;
use crate::procfs::{self, KernelMemory};
use crate::schema::{EchoCounts, Plan, StepResult, per_each};
use crate::steps::{self, StepSpec};
use crate::sweep::Visits;
use crate::work;

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
    let step = match Started::start(&bin, spec, plan).await {
        Ok(step) => step,
        Err(err) => {
            result.error = Some(err);
            return result;
        }
    };
    let mut run = Run {
        spec,
        plan,
        bin: &bin,
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

/// One step's measurement under way: what it needs, and the sweep's visits so far.
struct Run<'a> {
    spec: &'a StepSpec,
    plan: &'a Plan,
    /// The step's binary, started again by the work section.
    bin: &'a Path,
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
    /// down and up the sweep again, then the work section.
    async fn all(&mut self, result: &mut StepResult) -> Result<(), String> {
        let top = *self
            .points
            .last()
            .expect("bug: there is always a last point");
        let mut pool = self.step.pool()?;
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
        memory::fill(result, sample, self.step.base_rss);
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
            pool = busy::measure(&mut self.step, pool, top, self.plan, self.bar, result).await?;
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
        // The work section ends by resetting every connection: no TIME_WAIT left to skew the
        // next step's kernel figures.
        let (bin, spec, plan, bar) = (self.bin, self.spec, self.plan, self.bar);
        work::measure(&self.step, pool, bin, spec, plan, bar, result).await;
        Ok(())
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
        let (started, cpu_before) = (Instant::now(), self.step.cpu());
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
        let cpu = per_each(cpu_before, self.step.cpu(), stats.ok);
        drop(pinned);
        self.sweep
            .entry(held)
            .or_insert_with(|| Visits::new(held))
            .add(stats.finish(), cpu);
    }
}
