//! The report in words: narrow Markdown tables (memory, latency, busy, and the work section's
//! work and fairness) for the terminal and a README, the notes under them, and the
//! footnotes, written from the same
//! [`Plan`](crate::schema::Plan) the measurement followed; and the one line per step that
//! stderr shows as each is done. The figures' formats (`micros`, `rate`…) serve the charts
//! and the million's table too.

use std::fmt::Write;

use crate::busy::BUSY_MACHINE;
use crate::kernel::MIN_CONNS_FOR_KERNEL;
use crate::procfs::SOCKET_CACHES;
use crate::schema::{FreshGroup, Report, StepResult, SweepPoint};
use crate::steps;
use crate::sweep::{WIDE_SPREAD, WIDE_SPREAD_FLOOR_US};
use crate::units::{calls, cpu_us, list_us, micros, rate, signed_bytes};

/// The tables, the notes, and a few lines saying how each figure was measured.
pub fn markdown(report: &Report) -> String {
    let mut out = String::new();
    out.push_str(&memory_table(report));
    out.push('\n');
    out.push_str(&latency_table(&report.steps));
    out.push('\n');
    out.push_str(&busy_table(&report.steps));
    if report.steps.iter().any(|r| r.work.is_some()) {
        out.push('\n');
        out.push_str(&work_table(&report.steps));
        out.push('\n');
        out.push_str(&fairness_table(&report.steps));
    }
    out.push_str(&notes(&report.steps));
    out.push_str(&footnotes(report));
    out
}

/// Rows of cells as a Markdown table; the first column left-aligned, the rest right.
fn table(header: &[&str], rows: &[Vec<String>]) -> String {
    let mut out = String::new();
    let line = |cells: &[String]| format!("| {} |\n", cells.join(" | "));
    out.push_str(&line(
        &header.iter().map(|h| h.to_string()).collect::<Vec<_>>(),
    ));
    out.push_str(&format!("|---|{}\n", "--:|".repeat(header.len() - 1)));
    for row in rows {
        out.push_str(&line(row));
    }
    out
}

/// A row for a step that has no figures: its name, then dashes.
fn unmeasured(r: &StepResult, width: usize) -> Vec<String> {
    let mut row = vec![r.step.clone()];
    row.extend((1..width).map(|_| DASH.to_string()));
    row
}

const DASH: &str = "–";

fn or_dash<T>(value: Option<T>, show: impl Fn(T) -> String) -> String {
    value.map_or(DASH.to_string(), show)
}

/// Memory: what a connection costs in user space and in the kernel, and the threads.
pub fn memory_table(report: &Report) -> String {
    const HEADER: [&str; 7] = [
        "memory",
        "held",
        "served",
        "user / conn",
        "kernel / conn",
        "threads",
        "CPU s",
    ];
    let rows: Vec<Vec<String>> = report
        .steps
        .iter()
        .map(|r| {
            if r.error.is_some() {
                return unmeasured(r, HEADER.len());
            }
            let memory = r.memory.as_ref();
            let user = or_dash(memory.and_then(|m| m.rss_per_conn_bytes), |b| {
                let flag = if memory.and_then(|m| m.rss_agree) == Some(false) {
                    " ⚠"
                } else {
                    ""
                };
                format!("{}{flag}", common::format_bytes(b))
            });
            let kernel = match &r.kernel {
                Some(k) => signed_bytes(k.per_conn_bytes),
                None if report.kernel_readable => DASH.to_string(),
                None => "n/a".to_string(),
            };
            vec![
                r.step.clone(),
                r.conns.held.to_string(),
                r.conns.served.to_string(),
                user,
                kernel,
                or_dash(memory.and_then(|m| m.threads), |t| t.to_string()),
                or_dash(r.cpu_seconds, |s| format!("{s:.2}")),
            ]
        })
        .collect();
    table(&HEADER, &rows)
}

/// Latency: the round trip on one connection as idle connections pile up, and what each
/// echo costs the step in CPU at the first and last point.
pub fn latency_table(steps: &[StepResult]) -> String {
    const HEADER: [&str; 8] = [
        "round trip p50",
        "1 held",
        "N/10",
        "N/2",
        "N",
        "p99 at N",
        "CPU / echo, 1",
        "N",
    ];
    let rows: Vec<Vec<String>> = steps
        .iter()
        .map(|r| {
            if r.error.is_some() || r.sweep.is_empty() {
                return unmeasured(r, HEADER.len());
            }
            // 1, N/10, N/2, N: a step that is not swept has only the first and the last.
            let sweep = &r.sweep;
            let last = sweep.last().expect("bug: the sweep is not empty");
            let alone = sweep.first().filter(|p| p.conns == 1 && sweep.len() > 1);
            let (tenth, half) = match sweep.len() {
                4 => (sweep.get(1), sweep.get(2)),
                _ => (None, None),
            };
            let mut row = vec![r.step.clone()];
            row.extend([alone, tenth, half, Some(last)].map(|p| or_dash(p, p50_cell)));
            row.push(micros(last.p99_us));
            row.push(or_dash(
                alone.and_then(|p| p.server_cpu_us_per_echo),
                cpu_us,
            ));
            row.push(or_dash(last.server_cpu_us_per_echo, cpu_us));
            row
        })
        .collect();
    table(&HEADER, &rows)
}

/// Busy: a storm of new connections, then a burst of messages on all of them at once. The
/// storm's time to connect is in `report.json` only, so that the table fits 100 columns.
pub fn busy_table(steps: &[StepResult]) -> String {
    const HEADER: [&str; 9] = [
        "busy",
        "storm",
        "CPU / conn",
        "burst",
        "p99",
        "CPU / msg",
        "calls / msg",
        "peak / conn",
        "idle",
    ];
    let rows: Vec<Vec<String>> = steps
        .iter()
        .map(|r| {
            if r.error.is_some() {
                return unmeasured(r, HEADER.len());
            }
            let mut row = vec![r.step.clone()];
            match &r.storm {
                Some(s) => row.extend([
                    rate(s.conns_per_s),
                    or_dash(s.server_cpu_us_per_conn, cpu_us),
                ]),
                None => row.extend((0..2).map(|_| DASH.to_string())),
            }
            match &r.burst {
                Some(b) => row.extend([
                    rate(b.msgs_per_s),
                    micros(b.p99_us),
                    or_dash(b.server_cpu_us_per_msg, cpu_us),
                    or_dash(b.syscalls_per_msg, calls),
                    or_dash(b.peak_rss_per_conn_bytes, common::format_bytes),
                ]),
                None => row.extend((0..5).map(|_| DASH.to_string())),
            }
            row.push(or_dash(
                r.memory.as_ref().and_then(|m| m.rss_per_conn_bytes),
                common::format_bytes,
            ));
            row
        })
        .collect();
    table(&HEADER, &rows)
}

/// Work: a burst on some of the N connections with `--work-us` at each level, one row per
/// step and level: what one loop on one core does once a message costs real CPU.
pub fn work_table(steps: &[StepResult]) -> String {
    const HEADER: [&str; 7] = ["work", "per msg", "size", "burst", "p50", "p99", "cores"];
    let rows: Vec<Vec<String>> = steps
        .iter()
        .flat_map(|r| {
            let levels = r.work.as_ref().map_or(&[][..], |w| &w.levels[..]);
            levels.iter().map(|level| {
                vec![
                    r.step.clone(),
                    format!("{} µs", level.work_us),
                    common::format_bytes(level.message_bytes as u64),
                    rate(level.msgs_per_s),
                    micros(level.p50_us),
                    micros(level.p99_us),
                    or_dash(level.cores, |c| format!("{c:.2}")),
                ]
            })
        })
        .collect();
    table(&HEADER, &rows)
}

/// Fairness: fresh clients' echoes while one connection's messages are slow; for a step of
/// several processes, apart by whether the kernel gave them the slow one's process. Under
/// the table, how the kernel shared them out.
pub fn fairness_table(steps: &[StepResult]) -> String {
    const HEADER: [&str; 6] = [
        "fairness",
        "slow msg",
        "fresh p50",
        "fresh p99",
        "its worker",
        "other workers",
    ];
    let group = |g: Option<&FreshGroup>| or_dash(g, |g| micros(g.p99_us));
    let mut shares = String::new();
    let rows: Vec<Vec<String>> = steps
        .iter()
        .filter(|r| r.work.is_some())
        .map(
            |r| match r.work.as_ref().and_then(|w| w.fairness.as_ref()) {
                None => unmeasured(r, HEADER.len()),
                Some(f) => {
                    if let (Some(same), Some(other)) = (&f.same_worker, &f.other_workers) {
                        writeln!(
                            shares,
                            "{}: the kernel gave {} of the {} fresh clients to the slow \
                         connection's worker, {} to the others.",
                            r.step, same.clients, f.fresh.ok, other.clients
                        )
                        .expect("bug: writing to a String cannot fail");
                    }
                    vec![
                        r.step.clone(),
                        micros(f.slow_p50_us),
                        micros(f.fresh_p50_us),
                        micros(f.fresh_p99_us),
                        group(f.same_worker.as_ref()),
                        group(f.other_workers.as_ref()),
                    ]
                }
            },
        )
        .collect();
    let mut out = table(&HEADER, &rows);
    if !shares.is_empty() {
        out.push('\n');
        out.push_str(&shares);
    }
    out
}

/// What went wrong or looks odd, one line per step and problem.
fn notes(steps: &[StepResult]) -> String {
    let mut out = String::new();
    for r in steps {
        let mut notes: Vec<String> = Vec::new();
        if let Some(err) = &r.error {
            notes.push(format!("not measured: {err}"));
        }
        notes.extend(r.notes.iter().cloned());
        if r.sweep.iter().any(SweepPoint::spread_too_wide) {
            notes.push(format!(
                "⚠ wide: no two of the round trip's visits agree within {:.0}% (and \
                 {WIDE_SPREAD_FLOOR_US} µs) at some point (the machine was busy): {}",
                WIDE_SPREAD * 100.0,
                r.sweep
                    .iter()
                    .filter(|p| p.spread_too_wide())
                    .map(|p| format!("{} held: {}", p.conns, list_us(&p.visits_p50_us)))
                    .collect::<Vec<_>>()
                    .join("; ")
            ));
        }
        if steps::scans(&r.step) && r.sweep.len() > 2 && !rises(&r.sweep) {
            notes.push(format!(
                "⚠ the round trip should rise with every idle connection here, and did not \
                 at every point: {}",
                list_us(&r.sweep.iter().map(|p| p.p50_us).collect::<Vec<_>>())
            ));
        }
        if let Some(cores) = r.others_cpu_cores.filter(|&c| c > BUSY_MACHINE) {
            notes.push(format!(
                "⚠ busy machine: other processes took {cores:.2} CPUs while the burst and \
                 storms ran; those figures may be off (run again on a quiet machine)"
            ));
        }
        let busy_levels: Vec<String> = r
            .work
            .iter()
            .flat_map(|w| &w.levels)
            .filter_map(|l| Some((l.work_us, l.others_cores.filter(|&c| c > BUSY_MACHINE)?)))
            .map(|(work_us, cores)| format!("{cores:.2} at {work_us} µs"))
            .collect();
        if !busy_levels.is_empty() {
            notes.push(format!(
                "⚠ busy machine: other processes took CPUs during the work section's bursts \
                 ({}); its throughput and cores may be off",
                busy_levels.join(", ")
            ));
        }
        let work = r.work.iter().flat_map(|w| {
            let levels = w
                .levels
                .iter()
                .map(|l| (format!("work {} µs", l.work_us), &l.echo));
            let fresh = w
                .fairness
                .iter()
                .map(|f| ("fresh clients".to_string(), &f.fresh));
            levels.chain(fresh)
        });
        for lost in [
            r.storm.as_ref().map(|s| ("storm".to_string(), &s.echo)),
            r.burst.as_ref().map(|b| ("burst".to_string(), &b.echo)),
            Some(("echo probes".to_string(), &r.echo)),
        ]
        .into_iter()
        .flatten()
        .chain(work)
        .filter(|(_, e)| e.lost + e.mismatched + e.failed > 0)
        {
            let (what, e) = lost;
            notes.push(format!(
                "{what}: {} ok, {} lost, {} mismatched, {} failed",
                e.ok, e.lost, e.mismatched, e.failed
            ));
        }
        for note in notes {
            writeln!(out, "- {}: {}", r.step, note.replace('\n', " "))
                .expect("bug: writing to a String cannot fail");
        }
    }
    if out.is_empty() {
        out
    } else {
        format!("\nNotes:\n\n{out}")
    }
}

/// Whether the round trip's median rose from each point to the next.
pub fn rises(sweep: &[SweepPoint]) -> bool {
    sweep.windows(2).all(|w| w[1].p50_us > w[0].p50_us)
}

/// How each figure was measured, from the plan the measurement followed.
fn footnotes(report: &Report) -> String {
    let mut out = busy_footnotes(report);
    if report.steps.iter().any(|r| r.work.is_some()) {
        out.push_str(&work_footnotes(&report.plan));
    }
    out
}

/// How the work section was run.
fn work_footnotes(plan: &crate::schema::Plan) -> String {
    let work = &plan.work;
    let worked: Vec<&u32> = work.levels_us.iter().filter(|&&w| w > 0).collect();
    let sizes: Vec<String> = worked
        .iter()
        .map(|&&w| format!("{} µs: {} bytes", w, work.message_bytes(w)))
        .collect();
    format!(
        "*work*: only the steps the lesson compares here (the single loops, threads, tokio's \
         multi-thread runtime, step08's two workers), each holding N. *per msg*: µs of CPU \
         the step spends on each message before its echo (`--work-us`: it hashes the message \
         over and over, as measured at its start). At 0, the step as measured above, with \
         its {size}-byte messages; for the other levels the step started again, once, with \
         --work-us {base} (µs per 64 bytes of a message, in proportion to its length) and N \
         connections opened anew, each level a message *size* ({sizes}). At each level, \
         {rounds} rounds or more, up to {most}, until they fill {window} ms (after one not \
         counted; CPU time comes in ticks of 10 ms), of one message on each of the newest \
         {burst} of the N at once: messages per second, round trips, and *cores*: the step's \
         CPU time ÷ the rounds' wall-clock time (loadgen, in this process, shares the same \
         cores). *fairness*, on the same run of the step: one connection sends messages of \
         {slow_bytes} bytes, {slow_ms} ms of work each, one after another; meanwhile \
         {fresh} fresh clients arrive, about one every {every} ms, each connecting (and \
         upgrading), then timing one {size}-byte echo (a raw TCP step's includes the wait \
         to be accepted, which a WebSocket client's upgrade has done already): *slow msg*, \
         the slow messages' own round trip (median); *fresh*, the fresh clients' echoes; \
         for step08, apart by \
         whether the kernel gave the fresh client to the slow connection's worker (*its \
         worker*) or to another (from /proc/net/tcp and each worker's fds).\n",
        size = plan.message_size,
        base = work.base_us,
        sizes = sizes.join(", "),
        rounds = work.rounds,
        most = work.most_rounds(),
        window = work.min_window.as_millis(),
        burst = work.burst,
        slow_bytes = work.message_bytes(work.slow_ms * 1000),
        slow_ms = work.slow_ms,
        fresh = work.fresh_clients,
        every = work.fresh_every.as_millis(),
    )
}

/// How the figures of the first three tables were measured.
fn busy_footnotes(report: &Report) -> String {
    let plan = &report.plan;
    let batch = &plan.batch;
    let secs = |d: std::time::Duration| format!("{} s", d.as_secs_f64());
    format!(
        "\nN = {conns} connections per step (capped per step: blocking holds a handful, select \
         stays under FD_SETSIZE), {profile} build, {cores} cores, {wall:.0} s.\n\
         *served*: connections whose one {size}-byte message came back within {served} when all \
         were sent together.\n\
         *user / conn*: (VmRSS when the step printed its memory line − VmRSS once it had \
         settled and served one warm-up connection) ÷ the step's own connection count; ⚠: the step's \
         own line and /proc, read at the same moment, disagree by more than 2%.\n\
         *kernel / conn*: growth of the socket slab caches ({caches}) and of kernel stacks \
         (/proc/meminfo) per connection opened: the median over {chunks} chunks of the last \
         stretch (none under {min_kernel} connections), leaving out any chunk in which the TCP \
         cache did not grow by about two sockets per connection (another process was at work: \
         these figures are machine-wide). Both ends of each loopback connection: the step's \
         share is about half, plus its threads' kernel stacks. {readable}\n\
         *round trip*: a {size}-byte echo on one connection while the others sit idle: each \
         point visited {passes} times (up, down, up…), each visit {min} to {max} round trips \
         one after another (past {min}, at most {time}) after {warmup} not counted, the client \
         and the step on one CPU (no idle CPU to wake: on a VM that costs tens of µs, at \
         random); the median \
         of the visits' medians, ⚠ wide when no two of them agree within {wide:.0}% (and \
         {floor} µs). *CPU / echo*: \
         the step's CPU time (its process CPU clock, to the nanosecond) over a visit ÷ its echoes.\n\
         *storm*: N connections opened as fast as loadgen can ({in_flight} attempts in flight), \
         each with its {size}-byte echo (WebSocket: upgrade too), the median of {storms} \
         storms (up to three times as many where a step holds fewer than N): connections per \
         second and the step's CPU per connection (the time to connect, p50 and p99, is in \
         report.json). *burst*: one {size}-byte message on every connection at once, {rounds} \
         rounds (more, likewise, where a step holds fewer): messages per second, round trips, \
         the step's CPU per message in the median round, its system calls per message (every thread's, counted by `perf stat -e \
         raw_syscalls:sys_enter -p PID` during the burst only{syscalls}), and its highest \
         resident set meanwhile per connection beside the idle one.\n",
        conns = plan.conns,
        profile = report.profile,
        cores = report.cores,
        wall = report.wall_seconds,
        size = plan.message_size,
        served = secs(plan.served_deadline),
        caches = SOCKET_CACHES.join(", "),
        chunks = plan.kernel_chunks,
        min_kernel = MIN_CONNS_FOR_KERNEL,
        readable = if report.kernel_readable {
            ""
        } else {
            "n/a: /proc/slabinfo needs root."
        },
        passes = plan.sweep_passes,
        min = batch.min,
        max = batch.max,
        time = secs(batch.time),
        warmup = batch.warmup,
        wide = WIDE_SPREAD * 100.0,
        floor = WIDE_SPREAD_FLOOR_US,
        in_flight = plan.storm_in_flight,
        storms = plan.storms,
        rounds = plan.burst_rounds,
        syscalls = report
            .syscalls_not_counted
            .as_ref()
            .map_or(String::new(), |why| format!("; not counted here: {why}")),
    )
}

/// A sweep point's median, or a flag when its visits disagree too much to quote it.
fn p50_cell(point: &SweepPoint) -> String {
    if point.spread_too_wide() {
        "⚠ wide".to_string()
    } else {
        micros(point.p50_us)
    }
}

/// One line per step on stderr as it finishes: the progress a log shows when there is no
/// terminal for the bars.
pub fn one_line(r: &StepResult) -> String {
    if let Some(err) = &r.error {
        return format!("{:>24}: not measured: {err}", r.step);
    }
    let user = r.memory.as_ref().and_then(|m| m.rss_per_conn_bytes);
    format!(
        "{:>24}: {} held, {} served, RSS {} per conn, kernel {} per conn, p50 {}, \
         storm {}, burst {} ({:.1} s)",
        r.step,
        r.conns.held,
        r.conns.served,
        user.map_or("–".into(), common::format_bytes),
        r.kernel
            .as_ref()
            .map_or("–".into(), |k| signed_bytes(k.per_conn_bytes)),
        r.idle_rtt().map_or("–".into(), |p| micros(p.p50_us)),
        r.storm.as_ref().map_or("–".into(), |s| rate(s.conns_per_s)),
        r.burst.as_ref().map_or("–".into(), |b| rate(b.msgs_per_s)),
        r.wall_seconds
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn point(conns: usize, p50_us: f64) -> SweepPoint {
        SweepPoint {
            conns,
            p50_us,
            spread_us: 0.0,
            p99_us: p50_us,
            server_cpu_us_per_echo: None,
            visits_p50_us: vec![p50_us],
        }
    }

    /// A sweep rises only if every point is above the one before.
    #[test]
    fn a_sweep_rises_only_if_every_point_is_higher() {
        assert!(rises(&[
            point(1, 30.0),
            point(100, 40.0),
            point(1000, 300.0)
        ]));
        assert!(!rises(&[
            point(1, 30.0),
            point(100, 40.0),
            point(1000, 35.0)
        ]));
        assert!(!rises(&[point(1, 30.0), point(100, 30.0)]));
    }

    /// Other processes busy during a step's storms and burst: that step, and only that one,
    /// says its busy figures may be off.
    #[test]
    fn a_busy_machine_is_said_under_the_step_it_spoiled() {
        let step = |name: &str, others| StepResult {
            step: name.into(),
            others_cpu_cores: others,
            ..StepResult::default()
        };
        let text = notes(&[
            step("step05-epoll", Some(0.6)),
            step("step06-ws-epoll", Some(0.05)),
            step("step07-tokio", None),
        ]);
        assert!(
            text.contains("- step05-epoll: ⚠ busy machine: other processes took 0.60 CPUs"),
            "{text}"
        );
        assert_eq!(text.matches("busy machine").count(), 1, "{text}");
    }
}
