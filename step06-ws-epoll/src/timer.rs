//! Deadlines for the two moments a client could hold a connection for ever without sending
//! a frame: before its request head is whole (slowloris), and after our close, when it is
//! its turn to hang up. No I/O here: the loop asks what is due and closes it.

use std::collections::VecDeque;
use std::os::fd::RawFd;
use std::time::{Duration, Instant};

/// A deadline: whole seconds since the loop started. 4 bytes where an `Instant` takes 16,
/// and a handshake timeout needs no finer grain than a second. (A u32 lasts 136 years.)
pub(crate) type Deadline = u32;

/// The timer for handshakes and closes: one queue of `(deadline, fd)`.
///
/// Every deadline is "now + the same timeout", set in the order things happen, so the
/// queue is sorted by construction: its front is always the earliest deadline. No heap, no
/// timer wheel, O(1) to set one. Entries are never removed early: when a connection
/// finishes its head, its entry just goes stale and is skipped when it comes due.
pub(crate) struct Timers {
    /// When the loop started: deadlines count seconds from here.
    start: Instant,
    /// The timeout every deadline is set with.
    timeout: Duration,
    /// `(deadline, fd)`, earliest first.
    queue: VecDeque<(Deadline, RawFd)>,
}

impl Timers {
    pub(crate) fn new(timeout: Duration) -> Timers {
        Timers {
            start: Instant::now(),
            timeout,
            queue: VecDeque::new(),
        }
    }

    /// Set a deadline `timeout` from now for `fd`, rounded up to a whole second (so never
    /// sooner than the timeout).
    pub(crate) fn set(&mut self, fd: RawFd) -> Deadline {
        let due = self.start.elapsed() + self.timeout;
        let deadline = due.as_millis().div_ceil(1000) as Deadline;
        self.queue.push_back((deadline, fd));
        deadline
    }

    /// The current second: a deadline `d` has passed when `d <= now`.
    pub(crate) fn now(&self) -> Deadline {
        self.start.elapsed().as_secs() as Deadline
    }

    /// How long until the earliest deadline, if any: the most epoll_wait may sleep.
    pub(crate) fn time_left(&self) -> Option<Duration> {
        let &(deadline, _) = self.queue.front()?;
        let due = self.start + Duration::from_secs(deadline.into());
        Some(due.saturating_duration_since(Instant::now()))
    }

    /// The next fd whose deadline is `now` or earlier, taken off the queue.
    pub(crate) fn pop_due(&mut self, now: Deadline) -> Option<RawFd> {
        let &(deadline, fd) = self.queue.front()?;
        if deadline > now {
            return None;
        }
        self.queue.pop_front();
        // A burst of connections leaves a long queue behind; give its memory back once it
        // has drained, or it would stay in the resident set for good.
        if self.queue.len() < self.queue.capacity() / 4 {
            self.queue.shrink_to(self.queue.len() * 2);
        }
        Some(fd)
    }
}
