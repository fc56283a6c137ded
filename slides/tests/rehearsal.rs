//! The rehearsal: every demo the speaker notes in `slides.md` tell the speaker to run, run
//! small, and checked for what the notes say the room will see.
//!
//! `cargo test -p slides --test rehearsal`. It builds the workspace's binaries first (the
//! debug build of this same `cargo test`: no release build is needed) and runs each
//! command as the notes spell it, with `target/release/X` and `cargo run --release -p X`
//! mapped to that build's binary, on a free port (`--addr 127.0.0.1:0`, so it runs beside
//! other tests), and scaled down where the note's scale is large (10 000 connections, a
//! million, `--hold 60`): each demo below says exactly what it changes. A server is stopped
//! as the speaker stops it, with Ctrl-C (SIGINT, sent to its pid), and must go; every
//! process the rehearsal starts is killed by its pid when its demo ends, even on a panic.
//!
//! It cannot fall behind the deck: [`asked`] reads every command the notes ask for (each
//! backticked span that starts with a program, and each "Run:" that names none, by its
//! words), and `every_demo_in_the_notes_has_a_rehearsal` fails naming any that [`DEMOS`]
//! does not rehearse, any entry the notes no longer ask for, and any entry out of deck order.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc::{Receiver, channel};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

/// How long any one wait of the rehearsal may take (a debug build, a busy machine).
const PATIENCE: Duration = Duration::from_secs(60);

// ---------------------------------------------------------------------------------------
// The demos, in deck order.

/// One demo: what the notes ask for, and how it is rehearsed.
struct Demo {
    /// The notes' words for it, exactly as [`asked`] reads them: each command in backticks
    /// it runs, or, for a demo the notes describe without one, the words after "Run:".
    notes: &'static [&'static str],
    /// Runs it small and checks what the room should see; panics, saying what was missing.
    rehearse: fn(&Demo),
}

const DEMOS: &[Demo] = &[
    Demo {
        notes: &["cargo run --release -p report"],
        rehearse: the_report,
    },
    Demo {
        notes: &[
            "cargo test --workspace --no-run",
            "cargo build --release --workspace",
        ],
        rehearse: set_up,
    },
    Demo {
        notes: &[
            "cargo run --release -p step02-threads",
            "cargo run --release -p loadgen -- tcp://127.0.0.1:9002 --conns 10000 --hold 30",
        ],
        rehearse: step02_under_loadgen,
    },
    Demo {
        notes: &[
            "cargo run --release -p step01-blocking",
            "nc 127.0.0.1 9001",
        ],
        rehearse: step01_with_two_nc,
    },
    Demo {
        notes: &["ulimit -Sn; ulimit -Hn"],
        rehearse: fd_limits,
    },
    Demo {
        notes: &[
            "cargo run --release -p step03-select",
            "cargo run --release -p loadgen -- tcp://127.0.0.1:9003 --conns 2000 --hold 30",
        ],
        rehearse: step03_past_its_wall,
    },
    Demo {
        notes: &[
            "cargo run --release -p step04-poll",
            "cargo run --release -p loadgen -- tcp://127.0.0.1:9004 --conns 10000 --hold 30",
        ],
        rehearse: step04_under_loadgen,
    },
    Demo {
        notes: &["man 7 epoll"],
        rehearse: manual_page,
    },
    Demo {
        notes: &[
            "cargo run --release -p step05-epoll",
            "cargo run --release -p loadgen -- tcp://127.0.0.1:9005 --conns 10000 --hold 30",
        ],
        rehearse: step05_under_loadgen,
    },
    Demo {
        notes: &["diff -ruN step04-poll/src step05-epoll/src"],
        rehearse: diff_04_05,
    },
    Demo {
        notes: &[
            "cargo run --release -p step06-ws-epoll",
            "cargo run --release -p loadgen -- ws://127.0.0.1:9006/ --conns 100 --echo-each",
        ],
        rehearse: step06_under_loadgen,
    },
    Demo {
        notes: &[
            "cargo run --release -p step06-ws-epoll",
            "cargo run --release -p loadgen -- ws://127.0.0.1:9006/ --conns 10000 --echo-each --hold 30",
        ],
        rehearse: step06_lazy_buffers,
    },
    Demo {
        notes: &["cargo run --release -p step06-ws-epoll"],
        rehearse: step06_in_a_browser,
    },
    Demo {
        notes: &[
            "target/release/step06-ws-epoll --json | target/release/live",
            "target/release/loadgen ws://127.0.0.1:9006/ --conns 10000 --rate 1000 --echo-each --hold 60",
        ],
        rehearse: live_view,
    },
    Demo {
        notes: &[
            "cargo run --release -p step07-tokio",
            "cargo run --release -p step07-tokio -- --read-buffer 4096",
            "cargo run --release -p loadgen -- ws://127.0.0.1:9007/ --conns 10000 --echo-each --hold 10",
        ],
        rehearse: step07_two_buffers,
    },
    Demo {
        notes: &["cargo test -p step07-tokio --test task_size -- --nocapture"],
        rehearse: step07_exercise,
    },
    Demo {
        notes: &[
            "cargo run --release -p step08-reuseport -- --workers 2",
            "cargo run --release -p loadgen -- ws://127.0.0.1:9008/ --conns 30000 --echo-each",
        ],
        rehearse: step08_two_workers,
    },
    Demo {
        notes: &[
            "cargo run --release -p step09-io-uring",
            "cargo run --release -p loadgen -- ws://127.0.0.1:9009/ --conns 1000 --echo-each",
        ],
        rehearse: step09_under_loadgen,
    },
    Demo {
        notes: &["sysctl kernel.io_uring_disabled", "uname -r"],
        rehearse: io_uring_here,
    },
    Demo {
        notes: &["cargo run --release -p report -- --million --live"],
        rehearse: million_live,
    },
    Demo {
        notes: &["cargo run --release -p report -- --million --loop both"],
        rehearse: million_both_loops,
    },
];

/// 0:08, the report on the projector: "every step in its own process, N idle connections
/// from loadgen, and for each: user-space memory per connection, kernel memory per
/// connection, threads, round trips". Small: `--quick`, 200 connections, four steps (a
/// thread, epoll, WebSocket on epoll, tokio); the tables, a row for each.
fn the_report(demo: &Demo) {
    let out = TempDir::new("report");
    let steps = "step02-threads,step05-epoll,step06-ws-epoll,step07-tokio";
    let report = run_to_end(
        demo.notes[0],
        &[(
            "report",
            &format!("report --quick --steps {steps} {}", report_tail(&out, 200)),
        )],
    );
    for table in ["memory", "round trip p50", "busy"] {
        let rows = table_rows(&report, table);
        for step in steps.split(',') {
            assert!(
                rows.iter()
                    .any(|row| row.starts_with(&format!("| {step} |"))),
                "a `{table}` row for {step}:\n{report}"
            );
        }
    }
    for step in ["step02-threads", "step05-epoll"] {
        assert!(
            report.contains(&format!("| {step} | 200 | 200 |")),
            "{step}: 200 held, 200 served:\n{report}"
        );
    }
}

/// "`cargo test --workspace --no-run` builds the tests' debug binaries now"; "`cargo build
/// --release --workspace` ... ends at once when everything is built". Both must succeed;
/// the build is this rehearsal's own profile (no release build here).
fn set_up(demo: &Demo) {
    for (note, changes) in [
        (demo.notes[0], &[][..]),
        (demo.notes[1], &[("--release ", "")][..]),
    ] {
        let status = command(note, changes).status().expect("cargo runs");
        assert!(status.success(), "`{note}` failed: {status}");
    }
}

/// "conns climb to 10000, threads just above it, per-conn in kilobytes, then conns fall to 0
/// after 30 s" (and step 02's own slide: "threads just above 10000 and per-conn in
/// kilobytes"). Small: 300 connections, `--hold 3` (memory lines come at most once a
/// second: a count must stay a moment to be printed).
fn step02_under_loadgen(demo: &Demo) {
    let (step, held) = under_loadgen(demo.notes[0], demo.notes[1], &SMALL_TCP, 300);
    assert!(
        (300..=310).contains(&held.threads),
        "threads just above the connections: {}",
        held.text
    );
    assert!(
        held.per_conn_bytes >= 1024,
        "per-conn in kilobytes: {}",
        held.text
    );
    step.memory_line(|m| m.conns == 0);
    step.interrupt();
}

/// 10 000 connections held 30 s, small: 300 held 3 s.
const SMALL_TCP: [(&str, &str); 2] = [("--conns 10000", "--conns 300"), ("--hold 30", "--hold 3")];

/// `nc 127.0.0.1 9001` in a second terminal and again in a third: "the first nc echo and
/// the second hang until the first quits; then the second's line comes back."
fn step01_with_two_nc(demo: &Demo) {
    let step = Server::start(demo.notes[0]);
    if !have("nc") {
        assert!(
            std::env::var_os("CI").is_none(),
            "CI must have nc (apt-get install netcat-openbsd): step 01's demo needs it"
        );
        eprintln!(
            "rehearsal: no nc here (apt-get install netcat-openbsd): step 01's nc demo skipped"
        );
        step.interrupt();
        return;
    }
    let port = step.port.to_string();
    let mut first = Process::spawn(command(demo.notes[1], &[("9001", &port)]), Stdio::piped());
    first.send("first\n");
    first
        .line_within(PATIENCE, |line| line == "first")
        .expect("the first nc's line echoed");
    let mut second = Process::spawn(command(demo.notes[1], &[("9001", &port)]), Stdio::piped());
    second.send("second\n");
    assert!(
        second
            .line_within(Duration::from_secs(1), |_| true)
            .is_none(),
        "the second nc hangs while the first is served"
    );
    first.interrupt();
    second
        .line_within(PATIENCE, |line| line == "second")
        .expect("once the first quits, the second's line comes back");
    step.interrupt();
}

/// "The room should see their own soft and hard limits."
fn fd_limits(demo: &Demo) {
    let out = shell(demo.notes[0]);
    let limits: Vec<&str> = out.lines().collect();
    assert_eq!(limits.len(), 2, "two limits, soft then hard:\n{out}");
    for limit in limits {
        assert!(
            limit == "unlimited" || limit.parse::<u64>().is_ok(),
            "a limit: {limit}"
        );
    }
}

/// loadgen `--conns 2000`: "conns stop near 1020 and a refusal line on stderr." Small:
/// 1100, past FD_SETSIZE all the same.
fn step03_past_its_wall(demo: &Demo) {
    let changes = [("--conns 2000", "--conns 1100"), ("--hold 30", "--hold 5")];
    let (step, held) = under_loadgen(demo.notes[0], demo.notes[1], &changes, 0);
    assert!(
        (1000..=1024).contains(&held.conns),
        "conns stop near 1020: {}",
        held.text
    );
    let deadline = Instant::now() + PATIENCE;
    while !step.stderr().contains("past FD_SETSIZE") && Instant::now() < deadline {
        thread::sleep(Duration::from_millis(50));
    }
    assert!(
        step.stderr().contains("past FD_SETSIZE"),
        "a refusal line on stderr; stderr:\n{}",
        step.stderr()
    );
    step.interrupt();
}

/// "All 10000 held, one thread." Small: 300.
fn step04_under_loadgen(demo: &Demo) {
    let (step, held) = under_loadgen(demo.notes[0], demo.notes[1], &SMALL_TCP, 300);
    assert_eq!(held.threads, 1, "one thread: {}", held.text);
    step.interrupt();
}

/// "If anyone wants the full story": a manual page, read, not run. Rehearsed only where the
/// page is installed (containers often strip manual pages).
fn manual_page(_: &Demo) {
    let page = Command::new("man").args(["-w", "7", "epoll"]).output();
    match page {
        Ok(page) if page.status.success() => {}
        _ => eprintln!("rehearsal: no epoll(7) manual page here; `man 7 epoll` skipped"),
    }
}

/// "10000 held, one thread, per-conn in tens of bytes." Small: 300.
fn step05_under_loadgen(demo: &Demo) {
    let (step, held) = under_loadgen(demo.notes[0], demo.notes[1], &SMALL_TCP, 300);
    assert_eq!(held.threads, 1, "one thread: {}", held.text);
    assert!(
        held.per_conn_bytes < 1000,
        "per-conn in tens of bytes: {}",
        held.text
    );
    step.interrupt();
}

/// "The loop's shape is the same; what changed is who finds the ready sockets, and the new
/// file epoll.rs."
fn diff_04_05(demo: &Demo) {
    let diff = shell(demo.notes[0]);
    assert!(
        diff.contains("+++ step05-epoll/src/epoll.rs"),
        "the new file epoll.rs:\n{diff}"
    );
    assert!(
        diff.contains("fn handle_readable"),
        "the same loop, around its reads"
    );
}

/// "The memory line go to conns 100 and back to 0, and loadgen's echoes all ok." The
/// note's loadgen holds for its default 10 s; here `--hold 3`.
fn step06_under_loadgen(demo: &Demo) {
    let step = Server::start(demo.notes[0]);
    let loadgen = run_to_end(
        &point_at(demo.notes[1], &step),
        &[("--echo-each", "--echo-each --hold 3")],
    );
    assert!(
        loadgen.contains("100 served; 100 sent: 100 ok")
            && loadgen.contains("echo probes on random connections: 100 sent: 100 ok"),
        "loadgen's echoes all ok:\n{loadgen}"
    );
    step.memory_line(|m| m.conns == 100);
    step.memory_line(|m| m.conns == 0);
    step.interrupt();
}

/// "Per-conn in tens of bytes even after every connection sent a message." Small: 1000.
fn step06_lazy_buffers(demo: &Demo) {
    let changes = [("--conns 10000", "--conns 1000"), ("--hold 30", "--hold 3")];
    let (step, held) = under_loadgen(demo.notes[0], demo.notes[1], &changes, 1000);
    assert!(
        held.per_conn_bytes < 1000,
        "per-conn in tens of bytes: {}",
        held.text
    );
    step.interrupt();
}

/// "Open http://127.0.0.1:9006/ in a browser, type a line, then open 100 more connections
/// and close them": the echo in the page, and the memory line at conns 101 and back to
/// conns 1. The page is fetched as a browser fetches it; its WebSocket (the line typed)
/// and the 100 more are opened by loadgen, the same client as the page's. The browser
/// itself is driven by step 06's own test (`tests/browser.rs`).
fn step06_in_a_browser(demo: &Demo) {
    let step = Server::start(demo.notes[0]);
    let page = http_get(step.socket(), "/");
    assert!(
        page.starts_with("HTTP/1.1 200") && page.contains("new WebSocket"),
        "GET / serves the page that opens WebSockets back:\n{page}"
    );
    let url = format!("ws://{}/", step.addr());
    let tab = Process::spawn(
        command(
            &format!("cargo run --release -p loadgen -- {url} --conns 1 --echo 1 --hold 60"),
            &[],
        ),
        Stdio::null(),
    );
    tab.line_within(PATIENCE, |line| line.contains("1 sent: 1 ok"))
        .expect("the line typed comes back");
    step.memory_line(|m| m.conns == 1);
    let more = run_to_end(
        &format!("cargo run --release -p loadgen -- {url} --conns 100 --echo 0 --hold 3"),
        &[],
    );
    assert!(more.contains("held 100 of 100"), "{more}");
    step.memory_line(|m| m.conns == 101);
    step.memory_line(|m| m.conns == 1);
    tab.interrupt();
    step.interrupt();
}

/// "The connections climb for ten seconds while RSS barely moves, and the big number settle
/// at a few dozen bytes per connection." Small: 300 connections (a third of a second at
/// `--rate 1000`), `--hold 3`; the page's stream is read as the browser reads it.
fn live_view(demo: &Demo) {
    let (step_line, live_line) = demo.notes[0]
        .split_once(" | ")
        .expect("a pipeline of two commands");
    // The shell's pipe, made by hand: step 06's stdout is live's stdin.
    let mut step_command = command(step_line, &[]);
    step_command.args(["--addr", "127.0.0.1:0"]);
    let mut step = Process::spawn_piped_into(step_command);
    let mut live_command = command(live_line, &[]);
    live_command.args(["--addr", "127.0.0.1:0"]);
    let live = Process::spawn(live_command, step.take_stdout());

    let page = live.stderr_line(|line| {
        line.strip_prefix("live: open http://")
            .and_then(|rest| rest.split('/').next()?.parse::<SocketAddr>().ok())
    });
    // The step's lines pass through live to its terminal.
    let listening = live.line_within(PATIENCE, |line| line.contains("\"listening\""));
    let step_addr = listening
        .as_deref()
        .and_then(|line| line.split("\"addr\":\"").nth(1)?.split('"').next())
        .expect("step 06's listening line, passed through live")
        .to_string();
    let html = http_get(page, "/");
    assert!(html.starts_with("HTTP/1.1 200"), "live's page:\n{html}");

    let events = EventStream::open(page);
    let loadgen = run_to_end(
        demo.notes[1],
        &[
            ("127.0.0.1:9006", &step_addr),
            ("--conns 10000", "--conns 300"),
            ("--hold 60", "--hold 3"),
        ],
    );
    assert!(loadgen.contains("held 300 of 300"), "{loadgen}");
    let held = events.wait_for("\"conns\":300");
    let per_conn: u64 = held
        .split("\"per_conn_bytes\":")
        .nth(1)
        .and_then(|rest| {
            rest.split(|c: char| !c.is_ascii_digit())
                .next()?
                .parse()
                .ok()
        })
        .unwrap_or_else(|| panic!("a per-connection figure in {held}"));
    assert!(per_conn < 1000, "a few dozen bytes per connection: {held}");
    // Ctrl-C both.
    live.interrupt();
    step.interrupt();
}

/// "Per-conn in the hundred-odd KiB, then in single KiB": step 07 run twice, the second time
/// with `--read-buffer 4096`, each with the loadgen line. Small: 1000 connections (at 100,
/// the runtime's own allocations still show in per-conn), `--hold 3`.
fn step07_two_buffers(demo: &Demo) {
    let changes = [("--conns 10000", "--conns 1000"), ("--hold 10", "--hold 3")];
    let per_conn = |step: &str| {
        let (mut step, held) = under_loadgen(step, demo.notes[2], &changes, 1000);
        step.interrupt_mut();
        held
    };
    let default = per_conn(demo.notes[0]);
    assert!(
        (100 << 10..1000 << 10).contains(&default.per_conn_bytes),
        "per-conn in the hundred-odd KiB: {}",
        default.text
    );
    let small = per_conn(demo.notes[1]);
    assert!(
        (1 << 10..10 << 10).contains(&small.per_conn_bytes),
        "per-conn in single KiB: {}",
        small.text
    );
}

/// The exercise's ready test stub: it builds and runs as given, and prints the size the
/// attendee is to read.
fn step07_exercise(demo: &Demo) {
    let output = command(demo.notes[0], &[]).output().expect("cargo runs");
    let printed = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "`{}` failed: {printed}",
        demo.notes[0]
    );
    assert!(
        printed.contains("handle_connection's future: "),
        "`{}` shows no size: {printed}",
        demo.notes[0]
    );
}

/// "One line for the server, workers 2, conns 30000: more than one process may open here."
/// Small: 300 connections (the room's 30 000 are past one process's 20 000 fds; the line
/// is the same).
fn step08_two_workers(demo: &Demo) {
    let changes = [
        ("--conns 30000", "--conns 300"),
        ("--echo-each", "--echo-each --hold 3"),
    ];
    let (step, held) = under_loadgen(demo.notes[0], demo.notes[1], &changes, 300);
    assert!(held.text.contains("workers 2"), "workers 2: {}", held.text);
    step.interrupt();
}

/// step 09 under the loadgen line (its figures, system calls per message, are the
/// report's, on the slide). Small: 300 connections, every echo back. Where io_uring is
/// refused (a container), said and skipped, except under CI.
fn step09_under_loadgen(demo: &Demo) {
    let Some(step) = Server::try_start(demo.notes[0], &[]) else {
        return;
    };
    let loadgen = run_to_end(
        &point_at(demo.notes[1], &step),
        &[
            ("--conns 1000", "--conns 300"),
            ("--echo-each", "--echo-each --hold 3"),
        ],
    );
    assert!(
        loadgen.contains("300 served; 300 sent: 300 ok"),
        "{loadgen}"
    );
    step.memory_line(|m| m.conns == 300);
    step.interrupt();
}

/// "0 and a kernel of 6.1 or later, where step 09 runs (before 6.6 the sysctl does not
/// exist)."
fn io_uring_here(demo: &Demo) {
    let release = shell(demo.notes[1]);
    let version: Vec<u32> = release
        .split(|c: char| !c.is_ascii_digit())
        .take(2)
        .filter_map(|n| n.parse().ok())
        .collect();
    assert_eq!(version.len(), 2, "a kernel release: {release}");
    let at_least_6_1 = version >= vec![6, 1];
    let disabled = Command::new("sh")
        .args(["-c", demo.notes[0]])
        .output()
        .expect("sh runs");
    let disabled = String::from_utf8_lossy(&disabled.stdout).into_owned();
    if disabled.is_empty() {
        assert!(
            version < vec![6, 6],
            "the sysctl exists from 6.6 on: {release}"
        );
    } else {
        assert!(
            disabled.starts_with("kernel.io_uring_disabled = "),
            "the sysctl's line: {disabled}"
        );
    }
    if !at_least_6_1 || !disabled.is_empty() && !disabled.trim_end().ends_with("= 0") {
        assert!(
            std::env::var_os("CI").is_none(),
            "CI runs step 09: {release} {disabled}"
        );
        eprintln!(
            "rehearsal: io_uring would not run here ({}, {})",
            release.trim(),
            disabled.trim()
        );
    }
}

/// "Connections held climb to a million over a minute or so, the server's user space per
/// connection stay at tens of bytes ... and loadgen's memory beside it", on the page.
/// Small: `--conns 300`; the page stays up after the run until Ctrl-C.
fn million_live(demo: &Demo) {
    let out = TempDir::new("million-live");
    let small = format!("--live 127.0.0.1:0 --conns 300 {}", bin_and_out(&out));
    let report = Process::spawn(command(demo.notes[0], &[("--live", &small)]), Stdio::null());
    let page = report.stderr_line(|line| {
        line.strip_prefix("report: live page at http://")
            .and_then(|rest| rest.split('/').next()?.parse::<SocketAddr>().ok())
    });
    let events = EventStream::open(page);
    events.wait_for("\"held\":300");
    report
        .line_within(PATIENCE, |line| line.contains("300 of 300 back intact"))
        .expect("the million's table: every echo back intact");
    let html = http_get(page, "/");
    assert!(
        html.starts_with("HTTP/1.1 200"),
        "the page, after the run:\n{html}"
    );
    report.interrupt();
}

/// "The same million twice, one loop after the other": both columns, every echo back
/// intact. Small: `--conns 300`.
fn million_both_loops(demo: &Demo) {
    let out = TempDir::new("million-both");
    let report = run_to_end(
        demo.notes[0],
        &[(
            "--million",
            &format!("--million --conns 300 {}", bin_and_out(&out)),
        )],
    );
    // One column per loop: the burst's line and the probes' line each say it once per loop.
    let burst = report.matches("300 of 300 back intact").count();
    let probes = report.matches("1000 of 1000 back intact").count();
    if report.contains("io_uring is not available") {
        assert!(
            std::env::var_os("CI").is_none(),
            "CI has io_uring:\n{report}"
        );
        assert!(
            burst >= 1 && probes >= 1,
            "the epoll run, every echo back:\n{report}"
        );
    } else {
        assert_eq!(
            (burst, probes),
            (2, 2),
            "both loops, every echo back intact:\n{report}"
        );
    }
}

/// A step and the loadgen line beside it, as the notes give them, with `changes` made to
/// the loadgen line (pointed at the step's port): the step, still serving, and its first
/// memory line at `conns` connections once loadgen opened them all (with `conns` 0: its
/// highest count while loadgen held them).
fn under_loadgen(
    step: &str,
    loadgen: &str,
    changes: &[(&str, &str)],
    conns: u64,
) -> (Server, Memory) {
    let step = Server::start(step);
    let mut client = Process::spawn(command(&point_at(loadgen, &step), changes), Stdio::null());
    client
        .line_within(PATIENCE, |line| line.starts_with("held "))
        .unwrap_or_else(|| panic!("loadgen opened nothing; stderr:\n{}", client.stderr()));
    let held = if conns > 0 {
        step.memory_line(|m| m.conns == conns)
    } else {
        // The count stops where the step stops accepting: the last line before loadgen ends.
        let _ = client.wait(PATIENCE);
        let mut highest = step.memory_line(|m| m.conns > 0);
        while let Some(line) = step
            .process
            .line_within(Duration::from_millis(100), |_| true)
        {
            if let Some(m) = Memory::parse(&line).filter(|m| m.conns > highest.conns) {
                highest = m;
            }
        }
        highest
    };
    (step, held)
}

/// The note's loadgen line pointed at the step the rehearsal started: its `127.0.0.1:90NN`
/// replaced by the step's own address.
fn point_at(line: &str, step: &Server) -> String {
    let (before, after) = line
        .split_once("://127.0.0.1:")
        .unwrap_or_else(|| panic!("`{line}` names no 127.0.0.1 address"));
    let port_end = after
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(after.len());
    format!("{before}://{}{}", step.addr(), &after[port_end..])
}

// ---------------------------------------------------------------------------------------
// What the notes ask for.

/// The programs a demo command starts with. A backticked span in the notes that starts
/// with one of these is a command to rehearse; add a program here when the deck gains one.
const PROGRAMS: &[&str] = &[
    "uname", "cargo ", "target/", "nc ", "diff ", "ulimit", "man ", "curl ", "sudo ", "sysctl ",
    "strace ", "perf ", "cat ", "ss ", "ps ", "npm ", "npx ", "git ", "./", "sh ", "bash ",
    "echo ", "ls ", "watch ", "kill ", "apt-get ", "docker ", "ip ", "wc ", "grep ",
];

/// Everything the speaker notes ask the speaker to run, in deck order, each once: every
/// backticked span that starts with one of [`PROGRAMS`], and every "Run:" whose sentence
/// names no such command, by its words (up to the sentence's end). "Run: nothing" asks for
/// nothing.
fn asked(deck: &str) -> Vec<String> {
    let mut asked: Vec<String> = Vec::new();
    let mut add = |item: String| {
        if !asked.contains(&item) {
            asked.push(item);
        }
    };
    let slides = slides::slides(deck);
    for note in slides.iter().flat_map(|slide| slides::all_notes(slide)) {
        for line in note.lines() {
            for (i, span) in line.split('`').enumerate() {
                if i % 2 == 1 && is_command(span) {
                    add(span.to_string());
                }
            }
            if let Some((_, run)) = line.split_once("Run:") {
                let sentence = first_sentence(run);
                let names_a_command = sentence
                    .split('`')
                    .enumerate()
                    .any(|(i, span)| i % 2 == 1 && is_command(span));
                if !names_a_command && !sentence.starts_with("nothing") {
                    add(sentence);
                }
            }
        }
    }
    asked
}

fn is_command(span: &str) -> bool {
    PROGRAMS.iter().any(|program| span.starts_with(program))
}

/// The text up to the first full stop outside backticks (a span like `127.0.0.1` has
/// stops), trimmed, its spaces single.
fn first_sentence(text: &str) -> String {
    let mut in_span = false;
    let mut end = text.len();
    let bytes = text.as_bytes();
    for (i, &b) in bytes.iter().enumerate() {
        match b {
            b'`' => in_span = !in_span,
            b'.' if !in_span && bytes.get(i + 1).is_none_or(|n| n.is_ascii_whitespace()) => {
                end = i;
                break;
            }
            _ => {}
        }
    }
    text[..end].split_whitespace().collect::<Vec<_>>().join(" ")
}

/// Every demo the notes ask for has an entry in [`DEMOS`]; every entry is asked for; the
/// entries follow the deck's order. Fails naming each one, so the table keeps up with the deck.
#[test]
fn every_demo_in_the_notes_has_a_rehearsal() {
    let asked = asked(&slides::deck());
    let mut problems = Vec::new();
    for item in &asked {
        if !DEMOS.iter().any(|demo| demo.notes.contains(&item.as_str())) {
            problems.push(format!(
                "the notes ask the speaker to run `{item}`, and no entry of DEMOS rehearses it"
            ));
        }
    }
    // Where each demo comes in the deck: its first command that no earlier entry runs.
    let mut previous: Option<(usize, usize)> = None;
    let mut rehearsed: Vec<&str> = Vec::new();
    for (i, demo) in DEMOS.iter().enumerate() {
        for note in demo.notes {
            if !asked.iter().any(|item| item == note) {
                problems.push(format!(
                    "DEMOS[{i}] rehearses `{note}`, which no note asks for any more: \
                     update or remove it"
                ));
            }
        }
        let at = demo
            .notes
            .iter()
            .filter(|note| !rehearsed.contains(note))
            .filter_map(|note| asked.iter().position(|item| item == note))
            .min();
        if let Some(at) = at {
            if let Some((before, j)) = previous
                && at < before
            {
                problems.push(format!(
                    "DEMOS[{i}] (`{}`) is out of deck order: its demo comes before DEMOS[{j}]'s",
                    demo.notes[0]
                ));
            }
            previous = Some((at, i));
        }
        rehearsed.extend(demo.notes);
    }
    assert!(
        problems.is_empty(),
        "the rehearsal and the deck's notes disagree:\n{}",
        problems.join("\n")
    );
}

/// The reading of the notes: commands in backticks are found whatever their sentence,
/// a "Run:" without one is kept by its words, directives and "Run: nothing" are not.
#[test]
fn the_notes_are_read_for_commands_and_described_runs() {
    let deck = "<!-- excerpt: a/b.rs -->\n<!-- _class: chart -->\n<!--\n\
                Run: nothing yet. The room sees a title.\n-->\n<!-- Then `nc 127.0.0.1 2`. -->\n---\n<!--\n\
                0:15 Run: `cargo run -p x -- --addr 127.0.0.1:1`, then `--flag`. Then `nc 127.0.0.1 1`.\n\
                Run: step02 with loadgen --conns 10. The room should see.\n-->";
    assert_eq!(
        asked(deck),
        [
            "nc 127.0.0.1 2",
            "cargo run -p x -- --addr 127.0.0.1:1",
            "nc 127.0.0.1 1",
            "step02 with loadgen --conns 10",
        ]
    );
}

// ---------------------------------------------------------------------------------------
// Running them.

/// Every demo, in deck order, run small. Each demo's processes are gone when it ends;
/// every demo runs even when an earlier one failed, and the failures are listed together.
#[test]
fn every_demo_runs_small_and_shows_what_the_notes_promise() {
    build_binaries();
    let mut failed = Vec::new();
    for demo in DEMOS {
        let started = Instant::now();
        let outcome = std::panic::catch_unwind(|| (demo.rehearse)(demo));
        eprintln!(
            "rehearsal: {} `{}` ({:.1} s)",
            if outcome.is_ok() { "ok    " } else { "FAILED" },
            demo.notes[0],
            started.elapsed().as_secs_f64()
        );
        if outcome.is_err() {
            failed.push(demo.notes[0]);
        }
    }
    assert!(
        failed.is_empty(),
        "demos that did not show what their notes promise (each one's panic is above):\n{}",
        failed.join("\n")
    );
}

/// Build every binary of the workspace into this test's own profile directory (the debug
/// build `cargo test` made), so the rehearsal never runs a stale one.
fn build_binaries() {
    let status = Command::new(env!("CARGO"))
        .current_dir(workspace())
        .args(["build", "--workspace", "--bins"])
        .status()
        .expect("cargo runs");
    assert!(status.success(), "cargo build --workspace --bins failed");
}

fn workspace() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("slides/ sits in the workspace")
}

/// This build's binaries: the directory above the test's own (target/debug/deps/…).
fn bin_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("the test's own path");
    exe.parent()
        .and_then(Path::parent)
        .expect("a test lives in target/PROFILE/deps")
        .to_path_buf()
}

/// The note's command with each `(from, to)` change made (each `from` must be there: a
/// note that changed under the rehearsal fails it), as a process to start: `cargo run
/// --release -p X [-- ARGS]` and `target/release/X ARGS` run this build's `X`.
fn command(note: &str, changes: &[(&str, &str)]) -> Command {
    let mut line = note.to_string();
    for (from, to) in changes {
        assert!(line.contains(from), "`{note}` no longer has `{from}`");
        line = line.replacen(from, to, 1);
    }
    let words: Vec<&str> = line.split_whitespace().collect();
    let (program, args): (PathBuf, &[&str]) = match words.as_slice() {
        ["cargo", "run", "--release", "-p", package, "--", args @ ..] => {
            (bin_dir().join(package), args)
        }
        ["cargo", "run", "--release", "-p", package, args @ ..] => (bin_dir().join(package), args),
        [program, args @ ..] if program.starts_with("target/release/") => {
            (bin_dir().join(&program["target/release/".len()..]), args)
        }
        [program, args @ ..] => (PathBuf::from(program), args),
        [] => panic!("an empty command"),
    };
    let mut command = Command::new(program);
    command.args(args).current_dir(workspace());
    command
}

/// `NOTE` with `changes`, to its end: its stdout; it must exit 0 within PATIENCE × 3.
fn run_to_end(note: &str, changes: &[(&str, &str)]) -> String {
    let mut process = Process::spawn(command(note, changes), Stdio::null());
    let status = process.wait(PATIENCE * 3);
    let stdout = process.stdout_text();
    assert!(
        status.success(),
        "`{note}` ended with {status}\nstdout:\n{stdout}\nstderr:\n{}",
        process.stderr()
    );
    stdout
}

/// A line of shell, as the speaker types it, to its end: its stdout. `diff` exits 1 when
/// the files differ, which is what the demo shows; anything else must exit 0.
fn shell(line: &str) -> String {
    let output = Command::new("sh")
        .args(["-c", line])
        .current_dir(workspace())
        .output()
        .expect("sh runs");
    let ok =
        output.status.success() || line.starts_with("diff ") && output.status.code() == Some(1);
    assert!(
        ok,
        "`{line}` ended with {}: {}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}

fn have(program: &str) -> bool {
    Command::new("sh")
        .args(["-c", &format!("command -v {program}")])
        .stdout(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// The report's own options for a small run: `--conns N`, this build's binaries and a
/// temporary `--out`.
fn report_tail(out: &TempDir, conns: usize) -> String {
    format!("--conns {conns} {}", bin_and_out(out))
}

fn bin_and_out(out: &TempDir) -> String {
    format!(
        "--bin-dir {} --out {}",
        bin_dir().display(),
        out.0.display()
    )
}

/// The rows of the Markdown table whose header starts with `| first |`.
fn table_rows(stdout: &str, first: &str) -> Vec<String> {
    let header = format!("| {first} |");
    stdout
        .lines()
        .skip_while(|line| !line.starts_with(&header))
        .skip(2)
        .take_while(|line| line.starts_with('|'))
        .map(str::to_string)
        .collect()
}

/// A plain HTTP GET, as a browser's first request: the whole response.
fn http_get(addr: SocketAddr, path: &str) -> String {
    let mut stream =
        TcpStream::connect_timeout(&addr, PATIENCE).expect("the page's server accepts");
    stream.set_read_timeout(Some(PATIENCE)).unwrap();
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut response = Vec::new();
    let _ = stream.read_to_end(&mut response);
    String::from_utf8_lossy(&response).into_owned()
}

/// A page's event stream (`/events`), read as a browser's EventSource reads it.
struct EventStream(Receiver<String>);

impl EventStream {
    fn open(page: SocketAddr) -> EventStream {
        let mut stream =
            TcpStream::connect_timeout(&page, PATIENCE).expect("the page's server accepts");
        stream.set_read_timeout(Some(PATIENCE)).unwrap();
        stream
            .write_all(b"GET /events HTTP/1.1\r\nHost: page\r\n\r\n")
            .unwrap();
        let (tx, rx) = channel();
        thread::spawn(move || {
            for line in BufReader::new(stream).lines().map_while(Result::ok) {
                if let Some(data) = line.strip_prefix("data: ")
                    && tx.send(data.to_string()).is_err()
                {
                    break;
                }
            }
        });
        EventStream(rx)
    }

    /// Wait for an event whose data contains `text`; returns its data.
    fn wait_for(&self, text: &str) -> String {
        let deadline = Instant::now() + PATIENCE;
        while let Some(left) = deadline.checked_duration_since(Instant::now()) {
            match self.0.recv_timeout(left) {
                Ok(data) if data.contains(text) => return data,
                Ok(_) => {}
                Err(_) => break,
            }
        }
        panic!("no event with {text} on the page's stream within {PATIENCE:?}");
    }
}

/// A temporary directory, removed at the end.
struct TempDir(PathBuf);

impl TempDir {
    fn new(name: &str) -> TempDir {
        let dir = std::env::temp_dir().join(format!("rehearsal-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        TempDir(dir)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

// ---------------------------------------------------------------------------------------
// Processes.

/// A process the rehearsal started: its stdout lines and its stderr collected as they come;
/// killed by its pid when dropped (a demo's end, or a panic's unwinding).
struct Process {
    child: Child,
    lines: Receiver<String>,
    /// Every stdout line so far, for a run read to its end.
    stdout: Arc<Mutex<String>>,
    stderr: Arc<Mutex<String>>,
}

impl Process {
    /// Start `command` with stdout and stderr piped and `stdin` as given: null, piped (for
    /// [`Process::send`]), or another process's stdout.
    fn spawn(mut command: Command, stdin: Stdio) -> Process {
        command
            .stdin(stdin)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        Process::watch(
            command
                .spawn()
                .unwrap_or_else(|err| panic!("cannot start {command:?}: {err}")),
            true,
        )
    }

    /// Start `command` whose stdout goes to another process ([`Process::take_stdout`]).
    fn spawn_piped_into(mut command: Command) -> Process {
        command
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        Process::watch(
            command
                .spawn()
                .unwrap_or_else(|err| panic!("cannot start {command:?}: {err}")),
            false,
        )
    }

    fn watch(mut child: Child, read_stdout: bool) -> Process {
        let (stderr, _reader) =
            stepcheck::collect_text(child.stderr.take().expect("stderr is piped"));
        let stdout = Arc::new(Mutex::new(String::new()));
        let (tx, lines) = channel();
        if read_stdout {
            let child_stdout = child.stdout.take().expect("stdout is piped");
            let all = stdout.clone();
            thread::spawn(move || {
                for line in BufReader::new(child_stdout).lines().map_while(Result::ok) {
                    all.lock().unwrap().push_str(&format!("{line}\n"));
                    let _ = tx.send(line);
                }
            });
        }
        Process {
            child,
            lines,
            stdout,
            stderr,
        }
    }

    fn take_stdout(&mut self) -> Stdio {
        Stdio::from(self.child.stdout.take().expect("stdout is piped, not read"))
    }

    fn send(&mut self, text: &str) {
        let stdin = self.child.stdin.as_mut().expect("stdin is piped");
        stdin.write_all(text.as_bytes()).unwrap();
        stdin.flush().unwrap();
    }

    /// The next stdout line for which `wanted` holds, within `timeout`; `None` if none came.
    /// Lines before it are passed over.
    fn line_within(&self, timeout: Duration, wanted: impl Fn(&str) -> bool) -> Option<String> {
        let deadline = Instant::now() + timeout;
        while let Some(left) = deadline.checked_duration_since(Instant::now()) {
            match self.lines.recv_timeout(left) {
                Ok(line) if wanted(&line) => return Some(line),
                Ok(_) => {}
                Err(_) => break,
            }
        }
        None
    }

    /// The first stderr line that `parse` reads, waiting for it up to PATIENCE.
    fn stderr_line<T>(&self, parse: impl Fn(&str) -> Option<T>) -> T {
        let deadline = Instant::now() + PATIENCE;
        while Instant::now() < deadline {
            if let Some(found) = self.stderr().lines().find_map(&parse) {
                return found;
            }
            thread::sleep(Duration::from_millis(20));
        }
        panic!("not on stderr within {PATIENCE:?}:\n{}", self.stderr());
    }

    fn stderr(&self) -> String {
        self.stderr.lock().unwrap().clone()
    }

    /// Everything it printed on stdout, once it has ended.
    fn stdout_text(&self) -> String {
        // Its reader has read to the end once the pipe closed; give it a moment to.
        let deadline = Instant::now() + Duration::from_secs(5);
        while Arc::strong_count(&self.stdout) > 1 && Instant::now() < deadline {
            thread::sleep(Duration::from_millis(10));
        }
        self.stdout.lock().unwrap().clone()
    }

    /// Wait for it to end by itself, at most `timeout`.
    fn wait(&mut self, timeout: Duration) -> ExitStatus {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.child.try_wait().expect("its status can be read") {
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "{:?} still running after {timeout:?}; stderr:\n{}",
                self.child,
                self.stderr()
            );
            thread::sleep(Duration::from_millis(20));
        }
    }

    /// Ctrl-C: SIGINT to its pid; it must be gone within 10 s.
    fn interrupt(mut self) {
        self.interrupt_mut();
    }

    fn interrupt_mut(&mut self) {
        // SAFETY: kill() takes a pid and a signal number; the pid is our own child's, not
        // yet reaped (so not reused).
        unsafe { libc::kill(self.child.id() as libc::pid_t, libc::SIGINT) };
        let status = self.wait(Duration::from_secs(10));
        assert!(
            status.success() || is_interrupt(status),
            "Ctrl-C should stop it cleanly: {status}; stderr:\n{}",
            self.stderr()
        );
    }
}

/// Ended by SIGINT (its default action), as a server stopped with Ctrl-C in a terminal is.
fn is_interrupt(status: ExitStatus) -> bool {
    use std::os::unix::process::ExitStatusExt;
    status.signal() == Some(libc::SIGINT) || status.code() == Some(130)
}

impl Drop for Process {
    fn drop(&mut self) {
        // Ends only the process this rehearsal started, by its pid.
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A step's memory line, as the room reads it: `stepNN  conns N  rss …  per-conn N B  threads N`.
struct Memory {
    conns: u64,
    per_conn_bytes: u64,
    threads: u64,
    text: String,
}

impl Memory {
    fn parse(text: &str) -> Option<Memory> {
        let words: Vec<&str> = text.split_whitespace().collect();
        let after = |key: &str| {
            words
                .iter()
                .position(|w| *w == key)
                .and_then(|i| words.get(i + 1))
        };
        let per_conn: f64 = after("per-conn")?.parse().ok()?;
        let unit = words[words.iter().position(|w| *w == "per-conn")? + 2];
        let scale = match unit {
            "B" => 1.0,
            "KiB" => 1024.0,
            "MiB" => 1024.0 * 1024.0,
            _ => return None,
        };
        Some(Memory {
            conns: after("conns")?.parse().ok()?,
            per_conn_bytes: (per_conn * scale) as u64,
            threads: after("threads")?.parse().ok()?,
            text: text.to_string(),
        })
    }
}

/// A step started as the notes start it, on a free port (`--addr 127.0.0.1:0`).
struct Server {
    process: Process,
    port: u16,
}

impl Server {
    fn start(note: &str) -> Server {
        Server::start_with(note, &[])
    }

    fn start_with(note: &str, extra: &[&str]) -> Server {
        Server::try_start(note, extra).expect("the step serves")
    }

    /// `None` (said on stderr) for step 09 where io_uring is refused, outside CI.
    fn try_start(note: &str, extra: &[&str]) -> Option<Server> {
        let mut command = command(note, &[]);
        command.args(["--addr", "127.0.0.1:0"]).args(extra);
        let process = Process::spawn(command, Stdio::null());
        let listening = process.line_within(PATIENCE, |line| line.starts_with("listening on "));
        let Some(listening) = listening else {
            let stderr = process.stderr();
            if stderr.contains("io_uring") && std::env::var_os("CI").is_none() {
                eprintln!("rehearsal: `{note}` refused io_uring here, skipped:\n{stderr}");
                return None;
            }
            panic!("`{note}` printed no `listening on` line; stderr:\n{stderr}");
        };
        let port = listening
            .rsplit(':')
            .next()
            .and_then(|p| p.trim().parse().ok())
            .unwrap_or_else(|| panic!("a port in `{listening}`"));
        Some(Server { process, port })
    }

    fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    fn socket(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.port))
    }

    fn stderr(&self) -> String {
        self.process.stderr()
    }

    /// The next memory line for which `wanted` holds.
    fn memory_line(&self, wanted: impl Fn(&Memory) -> bool) -> Memory {
        let line = self
            .process
            .line_within(PATIENCE, |line| {
                Memory::parse(line).is_some_and(|m| wanted(&m))
            })
            .unwrap_or_else(|| {
                panic!(
                    "no such memory line within {PATIENCE:?}; stderr:\n{}",
                    self.stderr()
                )
            });
        Memory::parse(&line).expect("parsed once already")
    }

    fn interrupt(self) {
        self.process.interrupt();
    }

    fn interrupt_mut(&mut self) {
        self.process.interrupt_mut();
    }
}
