//! Where one loop loses: the steps again, now that a message costs real CPU (`--work-us`).
//! At each level of work per message, with N connections held, a burst on some of them:
//! messages per second, round trip p50 and p99, and the cores the step kept busy. Then
//! fairness: while one connection sends messages that cost 50 ms each, fresh clients come
//! and time one 64-byte echo each. One loop has one core and makes everyone wait for the
//! message in hand; threads, tokio's workers and step08's processes have every core.
//!
//! Level 0 is the step as the rest of the report ran it, still holding its N connections.
//! For the others the step is started again, once, with `--work-us` at the plan's base, and
//! N connections opened anew: its work is in proportion to a message's length, so each
//! level is a message length (13, 64 and 320 bytes for 20, 100 and 500 µs at 100 µs per 64
//! bytes). One start and one N to open per step rather than one per level: opening N
//! WebSocket connections costs a second, and the report must stay short.

use std::cell::Cell;
use std::net::SocketAddr;
use std::path::Path;
use std::time::{Duration, Instant};

use indicatif::ProgressBar;
use loadgen::{Burst, Conn, ConnectOptions, EchoStats, Pace, Pool};

use crate::busy::OthersCpu;
use crate::child::Started;
use crate::procfs;
use crate::schema::{
    EchoCounts, Fairness, FreshGroup, Plan, StepResult, WorkLevel, WorkResult, us,
};
use crate::steps::StepSpec;

/// The work section for one step, if it is one the section runs: `step` is the step as
/// measured so far and `pool` its N connections, given up here (the step started again
/// needs the fds). Problems go into the step's notes; what could be measured stands.
pub async fn measure(
    step: &Started,
    mut pool: Pool,
    bin: &Path,
    spec: &StepSpec,
    plan: &Plan,
    bar: &ProgressBar,
    result: &mut StepResult,
) {
    if !spec.work {
        pool.close();
        return;
    }
    let started = Instant::now();
    let held = pool.len();
    let mut work = WorkResult {
        held,
        ..WorkResult::default()
    };
    let levels = &plan.work.levels_us;
    if levels.contains(&0) {
        let bytes = plan.message_size;
        work.levels
            .push(burst(step, &mut pool, 0, bytes, plan, bar).await);
    }
    pool.close();
    let base = plan.work.base_us;
    match restart(bin, spec, base, held, bar).await {
        Ok((step, mut pool)) => {
            if pool.len() < held {
                result.notes.push(format!(
                    "work: {} of {held} connections opened: {}",
                    pool.len(),
                    pool.failures.short()
                ));
            }
            for &work_us in levels.iter().filter(|&&w| w > 0) {
                let bytes = plan.work.message_bytes(work_us);
                work.levels
                    .push(burst(&step, &mut pool, work_us, bytes, plan, bar).await);
            }
            bar.set_message("work: fairness");
            match fairness(&step, plan, &mut result.notes).await {
                Ok(fair) => work.fairness = Some(fair),
                Err(err) => result.notes.push(format!("fairness: {err}")),
            }
            pool.close();
        }
        Err(err) => result.notes.push(format!("work: {err}")),
    }
    work.wall_seconds = started.elapsed().as_secs_f64();
    result.work = Some(work);
}

/// The step started again with `--work-us work_us`, and `held` connections opened to it.
async fn restart(
    bin: &Path,
    spec: &StepSpec,
    work_us: u32,
    held: usize,
    bar: &ProgressBar,
) -> Result<(Started, Pool), String> {
    bar.set_message(format!("work: starting with --work-us {work_us}"));
    let work = work_us.to_string();
    let step = Started::start_for_work(bin, spec, &["--work-us", &work])?;
    let mut pool = step.pool()?;
    bar.set_position(0);
    bar.set_length(held as u64);
    bar.set_message(format!("work: connecting {held}"));
    pool.grow_to(held, Pace::default(), bar).await;
    if pool.is_empty() {
        return Err(format!("no connection opened: {}", pool.failures.short()));
    }
    Ok((step, pool))
}

/// Bursts of `bytes`-byte messages (`work_us` of work each) on the newest
/// `plan.work.burst` connections: one round not counted, then `plan.work.rounds`, with the
/// step's CPU time, and the rest of the machine's, read around them.
async fn burst(
    step: &Started,
    pool: &mut Pool,
    work_us: u32,
    bytes: usize,
    plan: &Plan,
    bar: &ProgressBar,
) -> WorkLevel {
    let deadline = plan.served_deadline;
    let burst = plan.work.burst.min(pool.len());
    let from = pool.len() - burst;
    bar.set_message(format!(
        "work {work_us} µs: {} bursts of {burst}",
        plan.work.rounds
    ));
    pool.echo_each(from, bytes, deadline).await;
    let others = OthersCpu::start(step.process.pid());
    let (started, cpu_before) = (Instant::now(), step.cpu());
    let mut timed = Burst::default();
    let (least, most) = (plan.work.rounds, plan.work.most_rounds());
    while timed.rounds < least || (timed.busy < plan.work.min_window && timed.rounds < most) {
        let round = Instant::now();
        let echoes = pool.echo_each(from, bytes, deadline).await;
        timed.echo.merge(echoes);
        timed.busy += round.elapsed();
        timed.rounds += 1;
    }
    let cores = match (cpu_before, step.cpu()) {
        (Some(before), Some(after)) => {
            Some(after.saturating_sub(before).as_secs_f64() / started.elapsed().as_secs_f64())
        }
        _ => None,
    };
    timed.echo = timed.echo.finish();
    let summary = timed.echo.summary();
    WorkLevel {
        work_us,
        message_bytes: bytes,
        burst,
        rounds: timed.rounds,
        msgs_per_s: timed.msgs_per_s(),
        p50_us: summary.map_or(0.0, |s| us(s.p50)),
        p99_us: summary.map_or(0.0, |s| us(s.p99)),
        cores,
        others_cores: others.and_then(OthersCpu::cores),
        echo: EchoCounts::from(&timed.echo),
    }
}

/// One connection sends slow messages back to back (each `slow_ms` of work: 64 bytes per
/// `base_us` µs), while fresh clients arrive one every `fresh_every` or so, each opening its
/// connection (and upgrading it) and then timing one 64-byte echo. For a step of several
/// processes, the kernel says which one holds each connection, so that the fresh clients
/// that shared a worker with the slow one are told from the others.
async fn fairness(
    step: &Started,
    plan: &Plan,
    notes: &mut Vec<String>,
) -> Result<Fairness, String> {
    let opts = step.connect_options()?;
    let deadline = plan.served_deadline;
    let slow_message = loadgen::payload(plan.work.message_bytes(plan.work.slow_ms * 1000));
    let mut slow = Conn::connect(&opts, 0)
        .await
        .map_err(|failure| format!("the slow connection failed to open: {failure}"))?;
    echo_once(&mut slow, &opts, &slow_message, deadline).await?;

    let fresh_done = Cell::new(false);
    // Bounded: stops when the fresh clients are done, or after twice as many slow messages
    // as their time would take, or at the first one not back.
    let most = 2 * (plan.work.fresh_clients + 2) * plan.work.fresh_every.as_millis() as usize
        / plan.work.slow_ms.max(1) as usize
        + 4;
    let slow_side = async {
        let mut rtts = Vec::new();
        while !fresh_done.get() && rtts.len() < most {
            match echo_once(&mut slow, &opts, &slow_message, deadline).await {
                Ok(rtt) => rtts.push(rtt),
                Err(_) => break,
            }
        }
        rtts
    };
    let fresh_side = async {
        let every = plan.work.fresh_every;
        let mut clients = tokio::task::JoinSet::new();
        for i in 0..plan.work.fresh_clients {
            let opts = opts.clone();
            // Each off the beat by its own fraction of the period (golden-ratio steps spread
            // them evenly), so that they meet the slow messages at every phase.
            let off_beat = every.mul_f64((i as f64 * 0.618_034).fract());
            clients.spawn(async move {
                tokio::time::sleep(every * i as u32 + off_beat).await;
                let mut conn = Conn::connect(&opts, i + 1)
                    .await
                    .map_err(|failure| failure.to_string())?;
                let rtt = echo_once(&mut conn, &opts, &loadgen::payload(64), deadline).await?;
                Ok::<_, String>((conn, rtt))
            });
        }
        let fresh = clients.join_all().await;
        fresh_done.set(true);
        fresh
    };
    let (mut slow_rtts, fresh) = tokio::join!(slow_side, fresh_side);

    let mut stats = EchoStats::default();
    let (mut back, mut why) = (Vec::new(), None);
    for outcome in fresh {
        match outcome {
            Ok((conn, rtt)) => {
                stats.ok += 1;
                stats.rtts.push(rtt);
                back.push((conn, rtt));
            }
            Err(err) => {
                stats.failed += 1;
                why.get_or_insert(err);
            }
        }
    }
    if let Some(why) = why {
        notes.push(format!(
            "fairness: {} fresh clients failed, the first: {why}",
            stats.failed
        ));
    }
    let stats = stats.finish();
    let by_worker = by_worker(step, &slow, &back);
    // Reset, not closed: no TIME_WAIT left behind (see `Conn::abort`).
    slow.abort();
    back.into_iter().for_each(|(conn, _)| conn.abort());
    let fresh = stats.summary().ok_or("no fresh client's echo came back")?;
    slow_rtts.sort_unstable();
    let slow_p50 = loadgen::percentile(&slow_rtts, 50.0)
        .ok_or("the slow connection's messages did not come back")?;
    let (same_worker, other_workers) = by_worker?;
    Ok(Fairness {
        base_us: plan.work.base_us,
        slow_bytes: slow_message.len(),
        slow_p50_us: us(slow_p50),
        slow_messages: slow_rtts.len(),
        fresh: EchoCounts::from(&stats),
        fresh_p50_us: us(fresh.p50),
        fresh_p99_us: us(fresh.p99),
        same_worker,
        other_workers,
    })
}

/// One echo of `message` on `conn`, given up after `deadline`.
async fn echo_once(
    conn: &mut Conn,
    opts: &ConnectOptions,
    message: &[u8],
    deadline: Duration,
) -> Result<Duration, String> {
    match tokio::time::timeout(deadline, conn.echo(opts, message)).await {
        Ok(Ok(rtt)) => Ok(rtt),
        Ok(Err(err)) => Err(format!("{} bytes: {err:?}", message.len())),
        Err(_elapsed) => Err(format!(
            "{} bytes: no echo within {deadline:?}",
            message.len()
        )),
    }
}

/// For a step of several processes: the fresh clients whose connection the slow
/// connection's process holds, and the others. `(None, None)` for a step of one process.
fn by_worker(
    step: &Started,
    slow: &Conn,
    fresh: &[(Conn, Duration)],
) -> Result<(Option<FreshGroup>, Option<FreshGroup>), String> {
    let workers = common::children_of(step.process.pid());
    if workers.len() < 2 {
        return Ok((None, None));
    }
    let v4 = |addr: std::io::Result<SocketAddr>| match addr {
        Ok(SocketAddr::V4(addr)) => Ok(addr),
        Ok(addr) => Err(format!("{addr}: not IPv4")),
        Err(err) => Err(err.to_string()),
    };
    let server = v4(Ok(step.addr()))?;
    let mut clients = vec![v4(slow.local_addr())?];
    for (conn, _) in fresh {
        clients.push(v4(conn.local_addr())?);
    }
    let holders = procfs::socket_holders(&workers, server, &clients)
        .map_err(|err| format!("cannot tell the workers' connections apart: {err}"))?;
    let slow_worker = holders[0].ok_or("no worker holds the slow connection")?;
    let (mut same, mut other) = (Vec::new(), Vec::new());
    for ((_, rtt), holder) in fresh.iter().zip(&holders[1..]) {
        match holder {
            Some(w) if *w == slow_worker => same.push(*rtt),
            Some(_) => other.push(*rtt),
            None => {} // gone already: counted in the whole only
        }
    }
    let group = |mut rtts: Vec<Duration>| {
        rtts.sort_unstable();
        Some(FreshGroup {
            clients: rtts.len(),
            p99_us: us(loadgen::percentile(&rtts, 99.0)?),
        })
    };
    Ok((group(same), group(other)))
}
