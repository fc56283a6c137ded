//! The memory line held to `/proc`: what a step says its connections cost is what the
//! kernel says the process holds, and lands in the band the step's README teaches.
//!
//! The line alone proves little: `per-conn = (rss − base) / conns` holds whatever `rss`
//! and `base` are. So the test reads the step's `VmRSS` itself, once when the step has
//! started listening and settled (the step's `base`) and once when the line arrives (the
//! step's `rss`), and holds the line to both.

use std::ops::{Bound, RangeBounds};
use std::thread;
use std::time::Duration;

use serde_json::Value;

use crate::Server;

/// How far the line's `rss` may be from the `VmRSS` the test reads once the step is idle.
///
/// Both read the same kernel counters, the same way (the step through `/proc/self/status`,
/// kept open, the test through `/proc/PID/status`), so they differ only by what the step touched between the line and
/// the test's reading: the last echoes, still being handled when the count reached its
/// final value and the line went out. Measured: 0 to 68 KiB. 256 KiB leaves room for a
/// loaded machine, and is still far below what a meter reading another figure (the
/// address space, the peak) would be off by.
pub const RSS_TOLERANCE: u64 = 256 << 10;

/// How much higher the line's `base` may be than the `VmRSS` the test read once the step
/// listened and settled ([`Server::rss_at_start`]). The step takes its baseline right after
/// printing `listening`, before its first accept, so a correct step's base is at or below
/// that reading (by its read buffer and the code its loop faults in); 64 KiB stays well under
/// what 2 000 connections add to the leanest step (~135 KiB for step05), so a line that took
/// its baseline with the connections open (0 B per connection) fails here.
pub const BASE_ABOVE_START: u64 = 64 << 10;

/// How much lower the line's `base` may be than that reading: what a step builds after taking
/// its baseline and before the test reads, counted (honestly) as connection cost by the line.
/// step07 builds its tokio runtime there (~1.1 MiB measured with two worker threads); the
/// others allocate their read buffer (64 KiB) and little else.
pub const BASE_BELOW_START: u64 = 2 << 20;

/// Hold a memory line to the step's `VmRSS`: its `rss` is the resident set now (the step is
/// idle: all its connections are open and echoed) within [`RSS_TOLERANCE`], and its `base`
/// is what the test read when the step started listening, no more than [`BASE_ABOVE_START`]
/// above it and no more than [`BASE_BELOW_START`] below.
/// Breaks if the step's meter reads anything but the resident set, or takes its baseline
/// after connections have come in.
pub fn assert_line_agrees_with_proc(server: &Server, line: &Value) {
    let claimed_rss = line["rss_bytes"].as_u64().expect("rss_bytes");
    let claimed_base = line["base_rss_bytes"].as_u64().expect("base_rss_bytes");
    let rss = settled_rss(server);
    let start = server.rss_at_start();
    eprintln!("{line}\n/proc: VmRSS {rss} B now, {start} B once the step listened and settled");
    let pid = server.pid();
    assert!(
        claimed_rss.abs_diff(rss) <= RSS_TOLERANCE,
        "the memory line says rss {claimed_rss} B, /proc/{pid}/status says VmRSS {rss} B \
         (tolerance {RSS_TOLERANCE} B): {line}"
    );
    assert!(
        claimed_base <= start + BASE_ABOVE_START,
        "the memory line says base {claimed_base} B, but /proc/{pid}/status said VmRSS \
         {start} B once the step listened and settled: the baseline was taken after \
         connections came in: {line}"
    );
    assert!(
        claimed_base + BASE_BELOW_START >= start,
        "the memory line says base {claimed_base} B, but /proc/{pid}/status said VmRSS \
         {start} B once the step listened and settled: the baseline is not the resident set \
         before the first connection: {line}"
    );
}

/// The step's `VmRSS` once two readings 100 ms apart agree to the page (at most 20 tries):
/// the echoes just sent may still be settling.
fn settled_rss(server: &Server) -> u64 {
    settled(server.rss_bytes(), Duration::from_millis(100), || {
        Some(server.rss_bytes())
    })
}

/// `first`, read again with `read` every `every` until two readings agree to the page (at
/// most 20 tries; a reading that fails ends the wait): the last reading.
pub(crate) fn settled(first: u64, every: Duration, read: impl Fn() -> Option<u64>) -> u64 {
    let mut last = first;
    for _ in 0..20 {
        thread::sleep(every);
        match read() {
            Some(now) if now != last => last = now,
            _ => break,
        }
    }
    last
}

/// What one more idle connection costs: open `conns` / 2 connections with `open` (which
/// must prove each is accepted, e.g. with an echo), then the rest; hold the memory line
/// at each count to `/proc`; and check that the resident set the lines report grew, per
/// connection added, by an amount in `band` (bytes). Returns the last line.
///
/// Per connection *added*, not the line's own `per-conn`: that one also spreads over the
/// connections what the step allocates once (a read buffer, an event array, step07's
/// runtime), which at a few thousand connections is as large as a lean step's whole cost.
pub fn assert_per_conn_within<T>(
    server: &Server,
    conns: usize,
    band: impl RangeBounds<u64>,
    mut open: impl FnMut(&Server) -> T,
) -> Value {
    let half = conns / 2;
    let mut held: Vec<T> = (0..half).map(|_| open(server)).collect();
    let first = server.wait_for_memory_line(half as u64);
    assert_line_agrees_with_proc(server, &first);
    held.extend((half..conns).map(|_| open(server)));
    let last = server.wait_for_memory_line(conns as u64);
    assert_line_agrees_with_proc(server, &last);

    let rss = |line: &Value| line["rss_bytes"].as_u64().expect("rss_bytes");
    let added = rss(&last).saturating_sub(rss(&first)) / (conns - half) as u64;
    assert!(
        band.contains(&added),
        "{added} B per connection from {half} to {conns} connections, outside the band this \
         step teaches ({}): {first} then {last}",
        describe(&band)
    );
    drop(held);
    last
}

/// `under 128 B`, `at least 8192 B`, `at least 8192 B and under 16384 B`, for failure messages.
fn describe(band: &impl RangeBounds<u64>) -> String {
    let low = match band.start_bound() {
        Bound::Included(n) => Some(format!("at least {n} B")),
        Bound::Excluded(n) => Some(format!("over {n} B")),
        Bound::Unbounded => None,
    };
    let high = match band.end_bound() {
        Bound::Included(n) => Some(format!("at most {n} B")),
        Bound::Excluded(n) => Some(format!("under {n} B")),
        Bound::Unbounded => None,
    };
    match (low, high) {
        (Some(low), Some(high)) => format!("{low} and {high}"),
        (Some(one), None) | (None, Some(one)) => one,
        (None, None) => "any".to_string(),
    }
}
