//! Deadlines for the moments a client could hold a connection, and our memory, for ever:
//! before its request head is whole (slowloris), while it holds bytes it does not finish
//! (half a frame, half a message, output it does not read), and after our close, when it
//! is its turn to hang up. No I/O here: the loop asks what is due and closes it.

use std::collections::VecDeque;
use std::num::NonZeroU32;
use std::os::fd::RawFd;
use std::time::{Duration, Instant};

/// A deadline: whole seconds since the loop started. 4 bytes where an `Instant` takes 16,
/// and a handshake timeout needs no finer grain than a second. (A u32 lasts 136 years.)
/// Never 0, as a deadline is set at least a second ahead: so `Option<Deadline>`, "no
/// deadline" included, takes the same 4 bytes (the 0 is its `None`).
pub type Deadline = NonZeroU32;

/// A timer: one queue of `(deadline, fd)`, all set with the same timeout. The loop keeps
/// two on one clock: handshakes and closes (`--handshake-timeout`), and connections that
/// hold bytes (`--stall-timeout`, made by [`Timers::with_timeout`]).
///
/// Every deadline is "now + the same timeout", set in the order things happen, so the
/// queue is sorted by construction: its front is always the earliest deadline. No heap, no
/// timer wheel, O(1) to set one. A deadline is never moved: when a connection finishes its
/// head or what it held, or closes, its entry just goes stale. It is skipped when it comes
/// due, or dropped sooner by [`Timers::rebuild`] once stale entries outnumber the
/// connections (connect/close churn makes many).
pub struct Timers {
    /// When the loop started: deadlines count seconds from here.
    start: Instant,
    /// The timeout every deadline is set with.
    timeout: Duration,
    /// `(deadline, fd)`, earliest first.
    queue: VecDeque<(Deadline, RawFd)>,
}

impl Timers {
    pub fn new(timeout: Duration) -> Timers {
        Timers {
            start: Instant::now(),
            timeout,
            queue: VecDeque::new(),
        }
    }

    /// A second queue, for deadlines set with another timeout, on the same clock (so a
    /// deadline from either compares with `now()` from either).
    pub fn with_timeout(&self, timeout: Duration) -> Timers {
        Timers {
            start: self.start,
            timeout,
            queue: VecDeque::new(),
        }
    }

    /// Set a deadline `timeout` from now for `fd`, rounded up to a whole second (so never
    /// sooner than the timeout).
    pub fn set(&mut self, fd: RawFd) -> Deadline {
        let deadline = self.timeout_from_now();
        self.queue.push_back((deadline, fd));
        deadline
    }

    /// `timeout` from now, rounded up to a whole second (second 1 at the earliest).
    fn timeout_from_now(&self) -> Deadline {
        let due = self.start.elapsed() + self.timeout;
        let seconds = due.as_millis().div_ceil(1000).max(1);
        Deadline::new(seconds as u32).expect("bug: at least 1")
    }

    /// True once the queue is more than twice as long as it needs to be for `connections`
    /// (each holds one deadline at most): time to [`Timers::rebuild`] it. Checking this
    /// before each wait keeps a rebuild to O(1) per entry set, amortized.
    pub fn is_mostly_stale(&self, connections: usize) -> bool {
        self.queue.len() > 2 * connections + 64
    }

    /// Replace the queue by the deadlines connections hold now, `(deadline, fd)`, sorted.
    pub fn rebuild(&mut self, live: impl Iterator<Item = (Deadline, RawFd)>) {
        self.queue.clear();
        self.queue.extend(live);
        self.queue.make_contiguous().sort_unstable();
        self.give_memory_back();
    }

    /// The current second: a deadline `d` has passed when `d.get() <= now`.
    pub fn now(&self) -> u32 {
        self.start.elapsed().as_secs() as u32
    }

    /// How long until the earliest deadline, if any: the most epoll_wait may sleep.
    pub fn time_left(&self) -> Option<Duration> {
        let &(deadline, _) = self.queue.front()?;
        let due = self.start + Duration::from_secs(deadline.get().into());
        Some(due.saturating_duration_since(Instant::now()))
    }

    /// The next fd whose deadline is `now` or earlier, taken off the queue.
    pub fn pop_due(&mut self, now: u32) -> Option<RawFd> {
        let &(deadline, fd) = self.queue.front()?;
        if deadline.get() > now {
            return None;
        }
        self.queue.pop_front();
        self.give_memory_back();
        Some(fd)
    }

    /// A burst of connections leaves a long queue behind; give its memory back once it has
    /// drained, or it would stay in the resident set for good.
    fn give_memory_back(&mut self) {
        if self.queue.len() < self.queue.capacity() / 4 {
            self.queue.shrink_to(self.queue.len() * 2);
        }
    }
}
