//! loadgen's own binary past one process's open-file limit, against step06's loop serving
//! in a thread of this test (whose own limit is the machine's): children share the
//! connections, their results are merged, and an idle connection costs loadgen little.

use std::net::TcpListener;
use std::process::{Command, Output};

use clap::Parser;

const LOADGEN: &str = env!("CARGO_BIN_EXE_loadgen");

/// step06's WebSocket echo on a free loopback port, served by a thread of this process.
fn ws_server() -> String {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let opts = common::Options::parse_from(["server", "--report-every", "3600"]);
    let meter = common::MemoryMeter::new("server", &opts);
    let config = step06_ws_epoll::Config::default();
    std::thread::spawn(move || step06_ws_epoll::serve(listener, meter, config));
    format!("ws://{addr}/")
}

/// Run loadgen with `args` and an open-file limit of `max_fds` (soft and hard, so it
/// cannot raise it); return its output and the JSON summary, its last stdout line.
fn loadgen(args: &[&str], max_fds: u64) -> (Output, serde_json::Value) {
    let mut command = Command::new(LOADGEN);
    command.args(args).args(["--hold", "0", "--json"]);
    stepcheck::limit_fds(&mut command, max_fds);
    let output = command.output().expect("loadgen runs");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let summary = stdout
        .lines()
        .last()
        .and_then(|line| serde_json::from_str(line).ok())
        .unwrap_or_else(|| {
            panic!(
                "no JSON summary; stdout:\n{stdout}\nstderr:\n{}",
                String::from_utf8_lossy(&output.stderr)
            )
        });
    (output, summary)
}

/// 1 000 connections with 200 files per process: at least five children hold them, and
/// the summary counts every connection, every echo of the burst and every probe.
#[test]
fn children_share_what_one_process_may_not_hold() {
    let url = ws_server();
    let (output, summary) = loadgen(
        &[&url, "--conns", "1000", "--echo-each", "--echo", "50"],
        200,
    );
    assert!(
        output.status.success(),
        "{summary}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(summary["processes"].as_u64() >= Some(5), "{summary}");
    assert_eq!(summary["opened"]["held"], 1000, "{summary}");
    assert_eq!(summary["burst"]["ok"], 1000, "{summary}");
    assert_eq!(summary["probes"]["ok"], 50, "{summary}");
}

/// Held idle, a WebSocket connection costs loadgen at most 1 KiB of resident memory.
#[test]
fn an_idle_websocket_connection_costs_at_most_a_kibibyte() {
    let url = ws_server();
    let (output, summary) = loadgen(&[&url, "--conns", "8000", "--echo", "10"], 20_000);
    assert!(output.status.success(), "{summary}");
    let (rss, base) = (
        summary["opened"]["rss_bytes"].as_u64().unwrap(),
        summary["opened"]["base_rss_bytes"].as_u64().unwrap(),
    );
    let per_conn = (rss - base) / 8000;
    assert!(
        per_conn <= 1024,
        "{per_conn} B per idle connection: {summary}"
    );
}

/// `--orders`, for a program driving loadgen: the opening's summary, then each order
/// answered with one JSON line (a burst over every child, with its last echo after its
/// longest round trip; probes shared among them), and end of stdin closes everything.
/// Breaks if an order goes unanswered, or a burst's span is lost between the processes.
#[test]
fn orders_on_stdin_are_answered_one_line_each() {
    use std::io::{BufRead, BufReader, Write};

    let url = ws_server();
    let mut command = Command::new(LOADGEN);
    command
        .args([&url, "--conns", "1000", "--orders"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped());
    stepcheck::limit_fds(&mut command, 200);
    let mut child = command.spawn().expect("loadgen runs");
    let mut stdin = child.stdin.take().unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let mut next_json = || -> serde_json::Value {
        loop {
            let line = lines.next().expect("a line").expect("text");
            if line.starts_with('{') {
                return serde_json::from_str(&line).unwrap();
            }
        }
    };
    let opened = next_json();
    assert_eq!(opened["opened"]["held"], 1000, "{opened}");
    assert!(opened["processes"].as_u64() >= Some(5), "{opened}");

    writeln!(stdin, "burst").unwrap();
    let burst = next_json();
    assert_eq!(burst["ok"], 1000, "{burst}");
    let (last, max) = (burst["last_us"].as_f64(), burst["max_us"].as_f64());
    assert!(
        last.is_some() && last >= max,
        "the last echo comes after the first message of all, so after the longest round trip: {burst}"
    );
    writeln!(stdin, "probe 20").unwrap();
    let probes = next_json();
    assert_eq!(probes["ok"], 20, "{probes}");
    assert!(
        probes.get("rtts").is_none(),
        "percentiles, not every round trip: {probes}"
    );

    drop(stdin);
    let status = child.wait().unwrap();
    assert!(status.success(), "end of stdin ends it: {status}");
}
