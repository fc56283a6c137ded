//! A step's output never stalls it and never stops it. Its loop writes the memory line
//! without blocking: when stdout is a pipe nobody reads, the lines that find no room are
//! dropped and counted, the clients are served all along, and the first line that gets
//! through once the pipe is read again says how many were dropped. An output error
//! (`/dev/full`: every write fails) is never fatal, at start or later.
//!
//! Each check takes `serve_one`, one full exchange with a fresh client (raw TCP or
//! WebSocket), which panics if the step does not serve it.

use std::thread;
use std::time::{Duration, Instant};

use common::MemoryLine;

use crate::{PATIENCE, Server};

/// Long enough for a memory line to be due and tried (the checks' steps report every
/// 0.1 s): hold a connection this long, then close it and wait as long again.
const A_FEW_PERIODS: Duration = Duration::from_millis(300);

/// Open a connection, hold it for a few report periods, close it, wait a few more: the
/// count changes twice, so the step tries to print twice.
fn change_the_count(server: &Server) {
    let held = server.connect();
    thread::sleep(A_FEW_PERIODS);
    drop(held);
    thread::sleep(A_FEW_PERIODS);
}

/// Stop reading the step's stdout and fill the pipe; change the connection count so that
/// memory lines meet the full pipe, and check that fresh clients are served all along
/// (a step whose loop waited in `write` would serve nobody until the pipe is read). Then
/// read the pipe again, and check that the next memory line counts the lines dropped.
pub fn check_stdout_full(bin: &str, extra: &[&str], serve_one: impl Fn(&Server)) {
    let mut server = Server::start(bin, extra);
    let filled = server.stop_reading_stdout();
    for _ in 0..3 {
        change_the_count(&server);
        serve_one(&server);
    }
    assert!(
        server.is_running(),
        "the step died with its stdout full:\n{}",
        server.stderr()
    );

    server.resume_reading_stdout();
    let _held = server.connect();
    let deadline = Instant::now() + PATIENCE;
    let mut seen = Vec::new();
    while let Some(left) = deadline.checked_duration_since(Instant::now()) {
        let Some(line) = server.next_line(left) else {
            break;
        };
        match MemoryLine::from_json(&line.text) {
            Some(memory) if memory.dropped > 0 => return,
            Some(_) => seen.push(line.text),
            None => {}
        }
    }
    panic!(
        "once its stdout (a {filled}-byte pipe, filled) was read again, no memory line said \
         how many lines were dropped (`\"dropped\":N`); memory lines seen: {seen:?}"
    );
}

/// Start the step with stdout and stderr on `/dev/full` (every write fails with ENOSPC):
/// it starts, serves, and goes on serving while its memory lines fail.
pub fn check_output_on_dev_full(bin: &str, extra: &[&str], serve_one: impl Fn(&Server)) {
    let mut server = Server::start_on_dev_full(bin, extra);
    serve_one(&server);
    change_the_count(&server);
    serve_one(&server);
    assert!(
        server.is_running(),
        "the step died with its output on /dev/full"
    );
}
