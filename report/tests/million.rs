//! `report --million` on a small `--conns`, with each event loop: every connection held and
//! echoed, the burst timed against its floor, the system calls counted where perf can, and
//! `million.json` written as documented (a run, or with `--loop both` a list of runs).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Mutex;

use serde_json::Value;

/// Connections in each run: enough for a burst worth timing, small enough for CI.
const CONNS: u64 = 2000;

/// One million run at a time: each reads the kernel's slab caches and the CPU around its
/// burst, which another run's loadgen (its bursts go through io_uring too) would move.
static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());

/// The report's million with `args`; its stdout and the `million.json` it wrote.
fn million(name: &str, args: &[&str]) -> (String, Value) {
    let _alone = ONE_AT_A_TIME
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    let bins = Path::new(env!("CARGO_BIN_EXE_report")).parent().unwrap();
    assert!(
        bins.join("step08-reuseport").exists() && bins.join("loadgen").exists(),
        "no step binaries in {}: run `cargo test --workspace`, which builds them first",
        bins.display()
    );
    let out: PathBuf =
        std::env::temp_dir().join(format!("report-million-{name}-{}", std::process::id()));
    let output = Command::new(env!("CARGO_BIN_EXE_report"))
        .args(["--million", "--conns", &CONNS.to_string()])
        .args(args)
        .args(["--bin-dir", bins.to_str().unwrap(), "--out"])
        .arg(&out)
        .output()
        .expect("the report runs");
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    let text = std::fs::read_to_string(out.join("million.json")).unwrap_or_else(|err| {
        panic!(
            "no million.json ({err}); stdout:\n{stdout}\nstderr:\n{}",
            String::from_utf8_lossy(&output.stderr)
        )
    });
    let _ = std::fs::remove_dir_all(&out);
    (
        stdout,
        serde_json::from_str(&text).expect("million.json is JSON"),
    )
}

/// Where io_uring is refused (a container's seccomp filter), the io_uring run says so and
/// holds nothing: the test passes without checking it, except under CI.
fn refused(run: &Value) -> bool {
    let refused = run["error"]
        .as_str()
        .is_some_and(|e| e.contains("io_uring is not available"));
    if refused {
        assert!(
            std::env::var_os("CI").is_none(),
            "CI runs on a kernel with io_uring, but: {}",
            run["error"]
        );
        eprintln!("skipped the io_uring run: {}", run["error"]);
    }
    refused
}

/// What every finished run must show: all held and echoed, the last echo no sooner than
/// the floor allows, and the burst's CPU on both sides.
fn check(run: &Value) {
    assert_eq!(run["error"], Value::Null, "{run:#}");
    assert_eq!(
        (run["held"].as_u64(), run["failed"].as_u64()),
        (Some(CONNS), Some(0)),
        "{run:#}"
    );
    assert_eq!(run["burst"]["ok"].as_u64(), Some(CONNS), "{run:#}");
    assert_eq!(run["probes"]["ok"].as_u64(), Some(1000), "{run:#}");
    let cost = &run["burst_cost"];
    let (server, loadgen) = (
        cost["server_cpu_s"].as_f64().unwrap(),
        cost["loadgen_cpu_s"].as_f64().unwrap(),
    );
    assert!(server > 0.0 && loadgen > 0.0, "both sides worked: {cost}");
    let floor = cost["floor_s"].as_f64().unwrap();
    assert!(
        (floor - (server + loadgen) / cost["cores"].as_f64().unwrap()).abs() < 1e-9,
        "{cost}"
    );
    let last_s = run["burst"]["last_us"]
        .as_f64()
        .expect("the burst's last echo")
        / 1e6;
    let max_s = run["burst"]["max_us"].as_f64().unwrap() / 1e6;
    assert!(
        last_s >= max_s,
        "the last echo comes after the longest round trip: {run:#}"
    );
    // Never sooner than all the CPU it took on every core at once (give or take the
    // clock tick of /proc's CPU times).
    assert!(
        last_s >= floor * 0.5,
        "the last echo {last_s} s beat the floor {floor} s: {cost}"
    );
}

/// `--loop both`: two runs, epoll then io_uring, in a list; a column each in the table.
/// io_uring's requests show in its kernel memory (where slabinfo is readable), and its
/// workers make fewer system calls per message (where perf counts them).
/// Breaks if one loop's figures land in the other's run, or a run is left out.
#[test]
fn both_loops_run_one_after_the_other() {
    let (stdout, runs) = million("both", &["--loop", "both"]);
    let runs = runs.as_array().expect("with --loop both, a list of runs");
    assert_eq!(runs.len(), 2, "{runs:#?}");
    assert_eq!(
        (runs[0]["loop"].as_str(), runs[1]["loop"].as_str()),
        (Some("epoll"), Some("io-uring"))
    );
    assert!(
        stdout.contains("| | step08 on epoll | step08 on io_uring |"),
        "a column per loop:\n{stdout}"
    );
    check(&runs[0]);
    if refused(&runs[1]) {
        return;
    }
    check(&runs[1]);
    let io_kiocb = |run: &Value| run["kernel_per_conn_by_cache"]["io_kiocb"].as_i64();
    if std::fs::read_to_string("/proc/slabinfo").is_ok() {
        let (epoll, uring) = (io_kiocb(&runs[0]).unwrap_or(0), io_kiocb(&runs[1]).unwrap());
        // Not `epoll == 0`: loadgen's own bursts go through io_uring too, and the requests
        // it frees linger for a while in the cache's per-CPU slabs, counted as in use.
        assert!(
            uring >= 200 && uring - epoll >= 150,
            "a pending receive is a 256-byte io_kiocb per connection on io_uring, none on \
             epoll: {epoll} B and {uring} B per connection"
        );
    }
    if let (Some(epoll), Some(uring)) = (
        runs[0]["syscalls_per_msg"].as_f64(),
        runs[1]["syscalls_per_msg"].as_f64(),
    ) {
        assert!(
            uring < epoll / 2.0,
            "io_uring batches: {uring} system calls a message against epoll's {epoll}"
        );
    }
}

/// The default loop is epoll, and one run is one object (not a list) that names its loop.
#[test]
fn by_default_one_run_on_epoll() {
    let (stdout, run) = million("epoll", &[]);
    assert!(run.is_object(), "one run, one object: {run:#}");
    assert_eq!(run["loop"], "epoll");
    check(&run);
    assert!(stdout.contains("| | step08 on epoll |"), "{stdout}");
}
