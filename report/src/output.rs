//! The report in words: Markdown tables for the terminal (and a README), JSON for tools.

use std::fmt::Write;

use serde::Serialize;

use crate::measure::StepResult;
use crate::procfs::SOCKET_CACHES;

/// Everything `report.json` holds.
#[derive(Debug, Serialize)]
pub struct Report {
    /// Connections asked of each step (before its cap).
    pub conns: usize,
    pub quick: bool,
    /// `release` or `debug`: the profile the steps were built with.
    pub profile: String,
    pub cores: usize,
    /// Whether /proc/slabinfo was readable (it needs root).
    pub kernel_readable: bool,
    /// The slab caches summed into the kernel figure.
    pub socket_caches: Vec<String>,
    pub wall_seconds: f64,
    pub steps: Vec<StepResult>,
}

/// The main table and the sweep table, with a few lines saying how each figure was measured.
pub fn markdown(report: &Report) -> String {
    let mut out = String::new();
    out.push_str(
        "| step | held | served at once | RSS / conn (/proc) | RSS / conn (step's line) \
         | kernel / conn (both ends) | threads | CPU s | round trip p50 | p99 | echo ok / lost / bad | notes |\n",
    );
    out.push_str("|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|:-:|---|\n");
    for r in &report.steps {
        if let Some(err) = &r.error {
            writeln!(
                out,
                "| {} | – | – | – | – | – | – | – | – | – | – | not measured: {} |",
                r.step,
                cell(err)
            )
            .expect("bug: writing to a String cannot fail");
            continue;
        }
        let bytes = |b: Option<u64>| b.map_or("–".to_string(), common::format_bytes);
        let kernel = match r.kernel_per_conn {
            Some(k) if k < 0 => format!("−{}", common::format_bytes(k.unsigned_abs())),
            Some(k) => common::format_bytes(k as u64),
            None if report.kernel_readable => "–".to_string(),
            None => "n/a".to_string(),
        };
        let line_figure = match (r.rss_per_conn_line, r.rss_agree) {
            (Some(b), Some(false)) => format!("{} ⚠", common::format_bytes(b)),
            (b, _) => bytes(b),
        };
        writeln!(
            out,
            "| {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} / {} / {} | {} |",
            r.step,
            r.held,
            r.served,
            bytes(r.rss_per_conn_proc),
            line_figure,
            kernel,
            r.threads.map_or("–".to_string(), |t| t.to_string()),
            r.cpu_seconds.map_or("–".to_string(), |s| format!("{s:.2}")),
            r.rtt_p50_us.map_or("–".to_string(), micros),
            r.rtt_p99_us.map_or("–".to_string(), micros),
            r.echo.ok,
            r.echo.lost,
            r.echo.mismatched + r.echo.failed,
            cell(&r.notes.join("; ")),
        )
        .expect("bug: writing to a String cannot fail");
    }

    let swept: Vec<&StepResult> = report.steps.iter().filter(|r| r.sweep.len() > 2).collect();
    if !swept.is_empty() {
        let mut columns: Vec<usize> = swept
            .iter()
            .flat_map(|r| r.sweep.iter().map(|p| p.conns))
            .collect();
        columns.sort_unstable();
        columns.dedup();
        out.push_str("\n| round trip p50 with N connections held |");
        for n in &columns {
            write!(out, " {n} |").expect("bug: writing to a String cannot fail");
        }
        out.push_str("\n|---|");
        out.push_str(&"--:|".repeat(columns.len()));
        out.push('\n');
        for r in swept {
            write!(out, "| {} |", r.step).expect("bug: writing to a String cannot fail");
            for n in &columns {
                let at = r.sweep.iter().find(|p| p.conns == *n);
                write!(
                    out,
                    " {} |",
                    at.map_or("–".to_string(), |p| micros(p.p50_us))
                )
                .expect("bug: writing to a String cannot fail");
            }
            out.push('\n');
        }
    }

    write!(
        out,
        "\nN = {} connections per step (capped per step: blocking holds a handful, select stays under \
         FD_SETSIZE), {} build, {} cores, {:.0} s.\n\
         *served at once*: connections whose one message came back when all were sent together.\n\
         *RSS / conn (/proc)*: (VmRSS when the step printed its memory line − VmRSS once it had \
         settled, before the first connection) ÷ the step's own connection count. *(step's line)*: \
         the step's own figure, whose baseline is taken right after bind, so it also spreads what \
         the step allocates at start-up (a shared buffer, worker threads) over the connections; \
         the two meet as N grows. ⚠: the resident sets behind them, read at the same moment, \
         disagree by more than 2%.\n\
         *kernel / conn*: growth of the socket slab caches ({}) and of kernel stacks (/proc/meminfo) \
         per connection opened: the median over 5 chunks of the last stretch, leaving out any chunk \
         in which the TCP cache did not grow by two sockets per connection (another process was at \
         work: these figures are machine-wide). It covers both ends of each loopback connection \
         (the step's socket and loadgen's); the server's share is about half, plus its threads' \
         kernel stacks. {}\n\
         *round trip*: a 64-byte echo on one connection while the others sit idle: the median \
         of up to 1000, one after another (at least 200, then at most 2 s).\n",
        report.conns,
        report.profile,
        report.cores,
        report.wall_seconds,
        SOCKET_CACHES.join(", "),
        if report.kernel_readable { "" } else { "n/a: /proc/slabinfo needs root." },
    )
    .expect("bug: writing to a String cannot fail");
    out
}

/// `87 µs`, `1.42 ms`.
pub fn micros(us: f64) -> String {
    loadgen::micros(std::time::Duration::from_secs_f64(us / 1e6))
}

/// Text made safe for a table cell.
fn cell(text: &str) -> String {
    text.replace('|', "\\|").replace('\n', " ")
}
