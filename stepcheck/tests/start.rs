//! How `Server::try_start` starts a step and reads its lines, with `sh` scripts standing in
//! for steps: a step that fails says why in one line instead of panicking (the report shows
//! it in a row and goes on), and every line carries a /proc reading taken as it arrived.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::ProcStatus;
use stepcheck::{Server, Watch};

/// `sh -c SCRIPT` with its output piped, as `step_command` pipes a step's.
fn fake_step(script: &str) -> Command {
    let mut command = Command::new("sh");
    command
        .args(["-c", script])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    command
}

/// A step that exits before listening is an error naming how it ended and its last stderr
/// line, not a panic. Breaks if try_start panics, or drops the exit status or the stderr.
#[test]
fn a_step_that_exits_says_how_and_why() {
    let script = "echo 'error: invalid value for --addr' >&2; exit 2";
    let err = Server::try_start(fake_step(script), Watch::default())
        .err()
        .expect("a step that exits never listens");
    assert_eq!(
        err.short(),
        "exited (exit status: 2) before listening: \"error: invalid value for --addr\""
    );
    assert!(err.to_string().contains("invalid value"), "{err}");
}

/// A step that stays silent is an error once its patience is spent, and no longer.
/// Breaks if try_start waits for ever, or ignores `patience`.
#[test]
fn a_silent_step_is_an_error_after_its_patience() {
    let watch = Watch {
        patience: Duration::from_millis(300),
        ..Watch::default()
    };
    let started = Instant::now();
    let err = Server::try_start(fake_step("sleep 30"), watch)
        .err()
        .expect("a silent step never listens");
    assert_eq!(err.short(), "no `listening` line within 300ms");
    // Generous: the point is that it did not wait for the 30 s sleep to end.
    assert!(started.elapsed() < Duration::from_secs(20));
}

/// A first line that is not `listening` is an error that quotes it.
#[test]
fn a_first_line_other_than_listening_is_an_error() {
    let err = Server::try_start(fake_step("echo hello; sleep 30"), Watch::default())
        .err()
        .expect("no listening line");
    assert_eq!(
        err.short(),
        "the first stdout line is not `listening` with an address: hello"
    );
}

/// The address comes from the `listening` line; each line after it arrives stamped, with
/// the status `read_status` gave right then (the report sums a step's processes there).
/// Breaks if the reader thread stops reading /proc per line, or reads it another way.
#[test]
fn each_line_carries_the_status_read_as_it_arrived() {
    let script = r#"echo '{"event":"listening","addr":"127.0.0.1:9"}'
        echo '{"event":"memory","step":"fake","conns":1,"rss_bytes":5,"base_rss_bytes":4,"per_conn_bytes":1,"threads":1}'
        sleep 30"#;
    let watch = Watch {
        read_status: |_pid| {
            Ok(ProcStatus {
                rss_bytes: 42,
                threads: 7,
            })
        },
        ..Watch::default()
    };
    let before = Instant::now();
    let server = Server::try_start(fake_step(script), watch).expect("the fake step listens");
    assert_eq!(server.addr, "127.0.0.1:9".parse().unwrap());
    assert_eq!(server.rss_at_start(), 42, "read with `read_status`");
    let line = server
        .next_line(Duration::from_secs(20))
        .expect("the memory line");
    assert!(line.text.contains(r#""event":"memory""#), "{}", line.text);
    assert!(line.at >= before);
    assert_eq!(
        line.proc,
        Some(ProcStatus {
            rss_bytes: 42,
            threads: 7
        })
    );
}

/// By default the status is the step's own /proc/PID/status (a `sh` that becomes a `sleep`:
/// its resident set does not move), not this test's. (`exec`: a step with child processes
/// is counted by them, as step08's supervisor is by its workers.)
#[test]
fn by_default_the_status_is_the_steps_own() {
    // After its line the fake step changes nothing: it waits in `read` on a pipe nobody
    // writes (opened read-write, so the open does not wait, and unlinked at once), with no
    // child to be counted and no `exec` that would change its resident set after the
    // reading at start. Killing it leaves nothing behind.
    let script = r#"f=$(mktemp -u) && mkfifo "$f" && exec 3<>"$f" && rm "$f" &&
        echo '{"event":"listening","addr":"127.0.0.1:9"}' && read _ <&3"#;
    let server = Server::try_start(fake_step(script), Watch::default()).expect("listens");
    let its = ProcStatus::read(server.pid()).expect("the fake step's status");
    let ours = ProcStatus::read("self").expect("this test's status");
    let start = server.rss_at_start();
    assert!(
        ours.rss_bytes.abs_diff(its.rss_bytes) > 1 << 20,
        "this test ({} B) must be told apart from the fake step ({} B)",
        ours.rss_bytes,
        its.rss_bytes
    );
    assert!(
        start.abs_diff(its.rss_bytes) <= 64 << 10,
        "read at start {start} B, the step's VmRSS {} B (this test's: {} B)",
        its.rss_bytes,
        ours.rss_bytes
    );
}
