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
