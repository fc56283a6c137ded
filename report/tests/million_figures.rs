//! The million's figures quoted in the READMEs and the slides are those of the committed
//! run, `slides/figures/million.json` (a run, or with `--loop both` a list of runs, one per
//! event loop), formatted as the report formats them.

use serde_json::Value;

mod support;
use support::{million_runs, number, read};

/// The committed runs: (loop, run), epoll's first. A run from before `--loop` was epoll's.
fn runs() -> Vec<(String, Value)> {
    million_runs()
        .into_iter()
        .map(|run| {
            let name = run["loop"].as_str().unwrap_or("epoll").to_string();
            (name, run)
        })
        .collect()
}

fn bytes(m: &Value, key: &str) -> String {
    common::format_bytes(number(m, &[key]) as u64)
}

/// CPU per message as the report prints it: `9.44 µs`, `13.3 µs`.
fn cpu_us(us: f64) -> String {
    if us < 10.0 {
        format!("{us:.2} µs")
    } else {
        format!("{us:.1} µs")
    }
}

/// The figures a run's column quotes: memory, opening, and (in a run that measured it)
/// the burst, its floor and its system calls.
fn figures(loop_name: &str, m: &Value) -> Vec<String> {
    let (held, conns) = (number(m, &["held"]), number(m, &["conns"]));
    let mut figures = vec![
        format!("{held} of {conns}"),
        bytes(m, "server_user_per_conn"),
        bytes(m, "kernel_per_conn"),
        bytes(m, "loadgen_per_conn"),
        bytes(m, "worker_bases_bytes"),
        format!("{:.0} s", number(m, &["open_seconds"])),
    ];
    if m["burst_cost"].is_object() {
        let floor = number(m, &["burst_cost", "floor_s"]);
        let last = number(m, &["burst", "last_us"]) / 1e6;
        figures.extend([
            format!("{last:.1} s"),
            format!("{floor:.1} s"),
            format!("{:.2}×", last / floor),
            cpu_us(number(m, &["burst_cost", "server_us_per_msg"])),
            cpu_us(number(m, &["burst_cost", "loadgen_us_per_msg"])),
            format!("{:.2}", number(m, &["syscalls_per_msg"])),
        ]);
    }
    if loop_name == "io-uring" {
        figures.push(bytes(m, "uring_kernel_per_conn"));
    }
    figures
}

/// The text from `heading` to the next heading of its level or above.
fn section<'a>(text: &'a str, heading: &str) -> &'a str {
    let start = text
        .find(heading)
        .unwrap_or_else(|| panic!("no `{heading}`"));
    let rest = &text[start + heading.len()..];
    let level = heading.split(' ').next().unwrap();
    let end = rest
        .find(&format!("\n{level} "))
        .or_else(|| rest.find("\n---\n"))
        .unwrap_or(rest.len());
    &rest[..end]
}

/// The top README's "One million" quotes every committed run: a column per loop.
#[test]
fn the_readme_quotes_each_loop_of_the_committed_million_run() {
    let top = read("README.md");
    let one_million = section(&top, "## One million");
    for (loop_name, run) in runs() {
        for figure in figures(&loop_name, &run) {
            assert!(
                one_million.contains(&figure),
                "README's One million lacks {loop_name}'s `{figure}`"
            );
        }
    }
}

/// step08's README quotes the epoll run's memory figures.
#[test]
fn step08s_readme_quotes_the_committed_million_run() {
    let step08 = read("step08-reuseport/README.md");
    let (_, epoll) = runs().into_iter().next().expect("a run");
    for figure in [
        format!("{} connections held", number(&epoll, &["held"])),
        bytes(&epoll, "server_user_per_conn"),
        bytes(&epoll, "kernel_per_conn"),
    ] {
        assert!(step08.contains(&figure), "step08's README lacks `{figure}`");
    }
}

/// The slides' million (epoll) and "A million on io_uring" (both loops, side by side)
/// quote the committed run.
#[test]
fn the_slides_quote_the_committed_million_run() {
    let slides = read("slides/slides.md");
    let runs = runs();
    let measured = section(&slides, "## One million, measured");
    let (_, epoll) = &runs[0];
    for figure in [
        format!("{}", number(epoll, &["held"])),
        format!("{:.0} s", number(epoll, &["open_seconds"])),
        bytes(epoll, "server_user_per_conn"),
        bytes(epoll, "kernel_per_conn"),
    ] {
        assert!(
            measured.contains(&figure),
            "the slide \"One million, measured\" lacks `{figure}`"
        );
    }
    if runs.len() < 2 {
        return; // a run from before `--loop both`: no io_uring column to quote yet
    }
    let side_by_side = section(&slides, "## A million on io_uring");
    // All but the opening's figures (held, bases, loadgen's, the time): memory per
    // connection, io_uring's part of it, and the burst.
    for (loop_name, run) in &runs {
        for figure in figures(loop_name, run)
            .into_iter()
            .enumerate()
            .filter_map(|(i, f)| matches!(i, 1 | 2 | 6..).then_some(f))
        {
            assert!(
                side_by_side.contains(&figure),
                "the slide \"A million on io_uring\" lacks {loop_name}'s `{figure}`"
            );
        }
    }
}
