//! The timer queue (`src/timer.rs`), no socket and no waiting: connect/close churn does
//! not make it grow with every connection ever accepted, and a rebuild loses no live
//! deadline.

use std::collections::HashMap;
use std::os::fd::RawFd;
use std::time::Duration;

use step06_ws_epoll::timer::{Deadline, Timers};

/// Under connect/close churn (100 000 connections on 10 fds, each closed right after it
/// came) the queue stays near the number of open connections, with every live deadline in
/// it, each coming due at its own second.
#[test]
fn stale_entries_are_dropped_under_churn() {
    let mut timers = Timers::new(Duration::from_secs(10));
    let mut live: HashMap<RawFd, Deadline> = HashMap::new();
    // 100 000 connections, and on until the last thing the queue saw was a rebuild.
    for i in 0.. {
        let fd = i % 10;
        live.insert(fd, timers.set(fd));
        if timers.is_mostly_stale(live.len()) {
            timers.rebuild(live.iter().map(|(&fd, &deadline)| (deadline, fd)));
            if i >= 100_000 {
                break;
            }
        }
    }

    // Take everything out, second by second: an entry comes out at the first second its
    // deadline has passed, and only if every entry before it has too.
    let mut due: Vec<(u32, RawFd)> = Vec::new();
    for second in 0..=u32::from(u8::MAX) {
        while let Some(fd) = timers.pop_due(second) {
            due.push((second, fd));
        }
    }
    assert!(timers.time_left().is_none(), "deadlines left after 255 s");
    assert!(
        due.len() <= 2 * 10 + 64,
        "the queue grew to {} entries for 10 connections",
        due.len()
    );
    for (fd, deadline) in live {
        assert!(
            due.contains(&(deadline.get(), fd)),
            "fd {fd} lost its deadline, or it came out late: {due:?}"
        );
    }
}
