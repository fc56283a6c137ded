//! The million as a narrow Markdown table: a row per figure, a column per event loop.

use super::figures::{BurstCost, Echoes, Million};
use crate::procfs::URING_CACHES;
use crate::units::{cpu_us, micros, signed_bytes};

/// The runs side by side.
pub fn table(runs: &[Million]) -> String {
    let conns = runs.iter().map(|m| m.held).max().unwrap_or(0);
    let mut text = format!("\n## {conns} WebSocket connections on one machine\n\n|");
    let column = |m: &Million| match m.event_loop.as_str() {
        "io-uring" => "step08 on io_uring".to_string(),
        other => format!("step08 on {other}"),
    };
    text.push_str(&format!(
        " | {} |\n|---|{}\n",
        runs.iter().map(column).collect::<Vec<_>>().join(" | "),
        "---|".repeat(runs.len())
    ));
    for (name, cell) in ROWS {
        let cells: Vec<String> = runs.iter().map(cell).collect();
        text.push_str(&format!("| {name} | {} |\n", cells.join(" | ")));
    }
    text.push_str(&notes(runs));
    text
}

type Row = (&'static str, fn(&Million) -> String);

const ROWS: &[Row] = &[
    ("connections held", |m| {
        format!(
            "{} of {} ({} failed: {})",
            m.held, m.conns, m.failed, m.failures
        )
    }),
    ("opened in", |m| {
        format!(
            "{:.1} s ({:.0} per second)",
            m.open_seconds, m.open_per_second
        )
    }),
    ("server workers", |m| m.workers.to_string()),
    ("table of established connections", |m| {
        let buckets = m.network.buckets.map_or("?".into(), |b| b.to_string());
        match m.network.own {
            true => format!("{buckets} buckets, in the run's own network namespace"),
            false => format!("{buckets} buckets, the machine's"),
        }
    }),
    ("server user space", |m| {
        format!(
            "{} in all, {} per connection",
            bytes(m.server_user_bytes),
            bytes(m.server_user_per_conn)
        )
    }),
    ("workers' bases", |m| bytes(m.worker_bases_bytes)),
    ("supervisor", |m| bytes(m.supervisor_rss_bytes)),
    ("kernel, both ends", |m| {
        format!(
            "{} in all, {} per connection",
            signed(m.kernel_bytes),
            signed(m.kernel_per_conn)
        )
    }),
    ("of which io_uring's requests", |m| {
        format!("{} per connection", signed(m.uring_kernel_per_conn))
    }),
    ("loadgen", |m| {
        format!(
            "{} per connection ({} in {} process{})",
            bytes(m.loadgen_per_conn),
            common::format_bytes(m.loadgen_rss_bytes),
            m.loadgen_processes,
            if m.loadgen_processes == 1 { "" } else { "es" }
        )
    }),
    ("burst: one message on each, at once", |m| echoes(&m.burst)),
    ("burst: the last echo back", |m| {
        m.burst.last_us.map_or("–".into(), time)
    }),
    ("burst: its floor", |m| {
        m.burst_cost
            .as_ref()
            .map_or("–".into(), |c| floor(c, &m.burst))
    }),
    ("burst: CPU a message", |m| {
        m.burst_cost.as_ref().map_or("–".into(), |c| {
            format!(
                "server {}, loadgen {}",
                cpu_us(c.server_us_per_msg),
                cpu_us(c.loadgen_us_per_msg)
            )
        })
    }),
    ("burst: softirq", |m| {
        m.burst_cost.as_ref().map_or("–".into(), |c| {
            format!(
                "{:.1} s (in ksoftirqd {:.1} s); others {:.1} s",
                c.softirq_s, c.ksoftirqd_s, c.others_s
            )
        })
    }),
    ("burst: system calls a message", |m| {
        m.syscalls_per_msg.map_or("–".into(), |n| format!("{n:.2}"))
    }),
    ("echo probes", |m| echoes(&m.probes)),
    ("kernel settings raised for the run", |m| {
        let mut raised = Vec::new();
        if let Some((was, now)) = m.netdev_max_backlog {
            raised.push(format!("netdev_max_backlog {was} → {now}"));
        }
        if let Some((was, now)) = &m.tcp_mem {
            raised.push(format!("tcp_mem {was} → {now} pages"));
        }
        match raised.is_empty() {
            true => "none".into(),
            false => raised.join("; "),
        }
    }),
    ("loopback drops (softnet)", |m| {
        format!(
            "{} during the run",
            m.softnet_drops.1.saturating_sub(m.softnet_drops.0)
        )
    }),
    ("whole run", |m| format!("{:.0} s", m.wall_seconds)),
];

/// `9.1 s (server + loadgen CPU ÷ 2 cores); the last echo at 1.10×`.
fn floor(cost: &BurstCost, burst: &Echoes) -> String {
    let ratio = burst
        .last_us
        .filter(|_| cost.floor_s > 0.0)
        .map_or(String::new(), |last| {
            format!("; the last echo at {:.2}×", last / 1e6 / cost.floor_s)
        });
    format!(
        "{:.1} s (server + loadgen CPU ÷ {} cores){ratio}",
        cost.floor_s, cost.cores
    )
}

/// What is short, what failed, and what the figures count.
fn notes(runs: &[Million]) -> String {
    let mut text = String::new();
    if let Some(first) = runs.first() {
        for why in &first.short {
            text.push_str(&format!("\nShort of {why}.\n"));
        }
    }
    text.push_str(&format!(
        "\nKernel memory counts the socket caches and io_uring's ({}): a multishot receive \
         waiting on an idle connection is a request (`io_kiocb`), its async data and its poll \
         entry (the two kmalloc caches, shared with the rest of the kernel).\n",
        URING_CACHES.join(", ")
    ));
    for m in runs {
        if let Some(why) = &m.syscalls_not_counted {
            text.push_str(&format!(
                "\n{}: system calls not counted: {why}\n",
                m.event_loop
            ));
        }
        for line in &m.workers_lost {
            text.push_str(&format!("\n{}: {line}\n", m.event_loop));
        }
        if let Some(err) = &m.error {
            text.push_str(&format!("\n{}: not finished: {err}\n", m.event_loop));
        }
    }
    text
}

fn bytes(b: Option<u64>) -> String {
    b.map_or("–".into(), common::format_bytes)
}

fn signed(b: Option<i64>) -> String {
    b.map_or("–".into(), signed_bytes)
}

/// A time that may be seconds long: `129 µs`, `11.0 ms`, `13.4 s`.
fn time(us: f64) -> String {
    if us >= 1e6 {
        format!("{:.1} s", us / 1e6)
    } else {
        micros(us)
    }
}

fn echoes(e: &Echoes) -> String {
    let times = match (e.p50_us, e.p99_us) {
        (Some(p50), Some(p99)) => format!("; p50 {} p99 {}", time(p50), time(p99)),
        _ => String::new(),
    };
    format!(
        "{} of {} back intact ({} lost, {} mismatched, {} failed){times}",
        e.ok,
        e.sent(),
        e.lost,
        e.mismatched,
        e.failed
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(event_loop: &str, last_us: f64, floor_s: f64) -> Million {
        Million {
            event_loop: event_loop.into(),
            held: 1000,
            conns: 1000,
            burst: Echoes {
                ok: 1000,
                p50_us: Some(500_000.0),
                p99_us: Some(900_000.0),
                last_us: Some(last_us),
                ..Echoes::default()
            },
            burst_cost: Some(BurstCost {
                floor_s,
                cores: 2,
                ..BurstCost::default()
            }),
            ..Million::default()
        }
    }

    /// Two runs make two columns, each row a cell for each; the floor sits beside the last
    /// echo, as a ratio.
    #[test]
    fn each_loop_has_its_column_and_the_floor_its_ratio() {
        let text = table(&[
            run("epoll", 2_000_000.0, 1.0),
            run("io-uring", 1_500_000.0, 1.2),
        ]);
        assert!(
            text.contains("| | step08 on epoll | step08 on io_uring |"),
            "{text}"
        );
        assert!(text.contains("|---|---|---|"), "{text}");
        for line in text.lines().filter(|l| l.starts_with("| ")) {
            assert_eq!(line.matches(" | ").count(), 2, "three cells: {line}");
        }
        assert!(
            text.contains("| burst: the last echo back | 2.0 s | 1.5 s |"),
            "{text}"
        );
        assert!(text.contains("the last echo at 2.00×"), "{text}");
        assert!(text.contains("the last echo at 1.25×"), "{text}");
        assert!(text.contains("p50 500 ms p99 900 ms"), "{text}");
    }
}
