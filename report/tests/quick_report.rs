//! `report --quick` end to end, against the step binaries built beside it (`cargo test
//! --workspace` builds every binary before any test runs): the table has its shape, and the
//! orderings the lesson rests on hold.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use serde_json::Value;

/// Every row the report prints, in order (report/src/steps.rs).
const ROWS: &[&str] = &[
    "step01-blocking",
    "step02-threads",
    "step03-select",
    "step04-poll",
    "step05-epoll",
    "step06-ws-epoll",
    "step07-tokio",
    "step07-tokio/4k",
    "step09-io-uring",
];

/// Runs the report binary with `args`, writing into a fresh directory; returns its output
/// and that directory.
fn report(name: &str, args: &[&str]) -> (Output, PathBuf) {
    let out = std::env::temp_dir().join(format!("report-test-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&out);
    let output = Command::new(env!("CARGO_BIN_EXE_report"))
        .args(args)
        .arg("--out")
        .arg(&out)
        .output()
        .expect("the report binary runs");
    (output, out)
}

/// The directory holding this build's binaries: report's, and every step's.
fn bin_dir() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_report"))
        .parent()
        .expect("a binary lives in a directory")
}

/// The cells of a Markdown table row, trimmed.
fn cells(row: &str) -> Vec<&str> {
    row.trim()
        .trim_matches('|')
        .split('|')
        .map(str::trim)
        .collect()
}

fn step<'a>(report: &'a Value, name: &str) -> &'a Value {
    report["steps"]
        .as_array()
        .expect("steps is an array")
        .iter()
        .find(|s| s["step"] == name)
        .unwrap_or_else(|| panic!("no {name} in report.json"))
}

fn number(step: &Value, field: &str) -> f64 {
    step[field]
        .as_f64()
        .unwrap_or_else(|| panic!("{}: no figure for {field}: {step}", step["step"]))
}

/// Round trip p50 at the top of the sweep minus at one connection: what idle connections
/// add to every round trip.
fn growth_us(step: &Value) -> f64 {
    let sweep = step["sweep"].as_array().expect("sweep is an array");
    assert!(
        sweep.len() >= 3,
        "{}: the sweep has at least 3 points: {sweep:?}",
        step["step"]
    );
    let (first, last) = (&sweep[0], &sweep[sweep.len() - 1]);
    assert_eq!(
        first["conns"], 1,
        "the sweep starts with the probe connection alone"
    );
    last["p50_us"].as_f64().unwrap() - first["p50_us"].as_f64().unwrap()
}

/// One `report --quick` run, checked for the table's shape and the lesson's orderings.
#[test]
fn quick_report_shows_what_each_step_costs() {
    let bins = bin_dir();
    assert!(
        bins.join("step05-epoll").exists(),
        "no step binaries in {}: run `cargo test --workspace`, which builds them first",
        bins.display()
    );
    let (output, out) = report("quick", &["--quick", "--bin-dir", bins.to_str().unwrap()]);
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "report --quick failed\nstdout:\n{stdout}\nstderr:\n{stderr}"
    );

    // The main table: a header, a separator, one row per step, every row as wide as the header.
    let table: Vec<&str> = stdout.lines().take_while(|l| l.starts_with('|')).collect();
    let header = cells(table[0]);
    assert_eq!(header[0], "step");
    for column in [
        "held",
        "served at once",
        "RSS / conn (/proc)",
        "RSS / conn (step's line)",
        "kernel / conn (both ends)",
    ] {
        assert!(
            header.contains(&column),
            "no `{column}` column in {header:?}"
        );
    }
    assert!(
        cells(table[1])
            .iter()
            .all(|c| c.contains("--") || c.contains(":-:")),
        "{}",
        table[1]
    );
    let rows = &table[2..];
    let names: Vec<&str> = rows.iter().map(|r| cells(r)[0]).collect();
    assert_eq!(names, ROWS, "one row per step, in the lesson's order");
    for row in rows {
        assert_eq!(
            cells(row).len(),
            header.len(),
            "row as wide as the header: {row}"
        );
    }
    // The sweep table follows, with the probe connection alone as its first column.
    assert!(
        stdout.contains("| round trip p50 with N connections held | 1 |"),
        "no sweep table:\n{stdout}"
    );

    for file in ["report.json", "memory-per-conn.svg", "rtt-vs-idle.svg"] {
        let written =
            std::fs::read_to_string(out.join(file)).unwrap_or_else(|e| panic!("{file}: {e}"));
        assert!(!written.is_empty(), "{file} is empty");
    }
    let svg = std::fs::read_to_string(out.join("memory-per-conn.svg")).unwrap();
    assert!(
        svg.contains("<svg") && svg.contains("step05-epoll"),
        "the memory chart names the steps"
    );

    let report: Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("report.json")).unwrap()).unwrap();
    assert_eq!(report["steps"].as_array().unwrap().len(), ROWS.len());
    for name in &ROWS[..5] {
        let s = step(&report, name);
        assert!(
            s["error"].is_null(),
            "{name} was not measured: {}",
            s["error"]
        );
        assert_eq!(s["echo"]["mismatched"], 0, "{name} echoed wrong bytes: {s}");
    }

    // Blocking: exactly one client served; the others wait in the backlog.
    let blocking = step(&report, "step01-blocking");
    assert!(number(blocking, "held") >= 2.0, "{blocking}");
    assert_eq!(
        number(blocking, "served"),
        1.0,
        "a blocking server serves exactly one client at a time"
    );

    // select: every connection under FD_SETSIZE is served.
    let select = step(&report, "step03-select");
    assert!(number(select, "held") < 1024.0, "{select}");
    assert_eq!(number(select, "served"), number(select, "held"), "{select}");

    // A thread per connection costs far more user-space memory per connection than epoll: a
    // thread's stack pages (KiBs) against a small struct (tens of bytes).
    let threads = step(&report, "step02-threads");
    let epoll = step(&report, "step05-epoll");
    let (threads_rss, epoll_rss) = (
        number(threads, "rss_per_conn_proc"),
        number(epoll, "rss_per_conn_proc"),
    );
    assert!(
        threads_rss >= 4096.0,
        "a thread costs at least a page of stack: {threads_rss} B"
    );
    assert!(
        threads_rss >= 10.0 * epoll_rss,
        "thread per connection {threads_rss} B/conn should be ≥ 10× epoll's {epoll_rss} B/conn"
    );
    // And in the kernel: a 16 KiB kernel stack per thread on top of the sockets. The figure is
    // missing without root, or when other processes opened sockets all through the window.
    match (
        threads["kernel_per_conn"].as_f64(),
        epoll["kernel_per_conn"].as_f64(),
    ) {
        (Some(k_threads), Some(k_epoll)) => assert!(
            k_threads >= k_epoll + 8192.0,
            "kernel per conn: threads {k_threads} B, epoll {k_epoll} B"
        ),
        missing => eprintln!("kernel figures not compared, one is missing: {missing:?}"),
    }

    // poll scans every fd on every wake-up; epoll hands back only the ready ones. So idle
    // connections lengthen poll's round trip far more than epoll's.
    let poll_growth = growth_us(step(&report, "step04-poll"));
    let epoll_growth = growth_us(epoll);
    assert!(
        poll_growth > epoll_growth.max(0.0) + 50.0,
        "idle connections should slow poll's round trip (+{poll_growth:.0} µs) more than \
         epoll's (+{epoll_growth:.0} µs), by 50 µs at least"
    );
    let _ = std::fs::remove_dir_all(&out);
}

/// A step whose binary is missing becomes a row that says so; the report does not crash.
#[test]
fn a_missing_step_is_a_row_with_its_error() {
    let empty = std::env::temp_dir().join(format!("report-test-no-bins-{}", std::process::id()));
    std::fs::create_dir_all(&empty).unwrap();
    let (output, out) = report(
        "missing",
        &[
            "--quick",
            "--steps",
            "step05-epoll",
            "--bin-dir",
            empty.to_str().unwrap(),
        ],
    );
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        !output.status.success(),
        "nothing was measured, so the report fails"
    );
    let row = stdout
        .lines()
        .find(|l| l.starts_with("| step05-epoll |"))
        .expect("a row for the step");
    assert!(row.contains("not measured: no binary at"), "{row}");
    let report: Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("report.json")).unwrap()).unwrap();
    assert!(
        step(&report, "step05-epoll")["error"]
            .as_str()
            .unwrap()
            .contains("no binary")
    );
    let _ = std::fs::remove_dir_all(&out);
    let _ = std::fs::remove_dir_all(&empty);
}
