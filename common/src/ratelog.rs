//! A stderr log that prints at most one line per period and says how many it held back.
//!
//! A server under attack fails the same way thousands of times a second: every accept
//! fails with EMFILE, every connection of a churning client resets. One line each would
//! flood the terminal (and the disk, when stderr is a file) and cost more CPU than the
//! failures themselves. One line a second, with a count, says the same.

use std::time::{Duration, Instant};

/// At most one line per `period` on stderr; the lines in between are counted, not printed.
#[derive(Debug)]
pub struct RateLimitedLog {
    /// At most one line per period.
    period: Duration,
    /// When the last line was printed.
    last: Option<Instant>,
    /// Lines not printed since then.
    held_back: u64,
}

impl RateLimitedLog {
    /// One line a second, the period every step uses.
    pub const fn per_second() -> RateLimitedLog {
        RateLimitedLog::new(Duration::from_secs(1))
    }

    /// At most one line per `period`. `const`, so that a `static Mutex<RateLimitedLog>`
    /// can serve every thread of a server.
    pub const fn new(period: Duration) -> RateLimitedLog {
        RateLimitedLog {
            period,
            last: None,
            held_back: 0,
        }
    }

    /// Print `line()` unless a line went out less than a period ago. The closure runs only
    /// when the line is printed, so a held-back line costs no formatting.
    pub fn log(&mut self, line: impl FnOnce() -> String) {
        if let Some(line) = self.admit(Instant::now(), line) {
            // Never blocks, never fails (see `output`): stderr full or closed loses the line.
            crate::log!("{line}");
        }
    }

    /// The line to print at `now`, with the count of lines held back since the last one,
    /// or `None` if this one is held back. Separate from [`RateLimitedLog::log`] so that
    /// tests can play a clock.
    fn admit(&mut self, now: Instant, line: impl FnOnce() -> String) -> Option<String> {
        if self
            .last
            .is_some_and(|at| now.saturating_duration_since(at) < self.period)
        {
            self.held_back += 1;
            return None;
        }
        let line = match self.held_back {
            0 => line(),
            n => format!("{} ({n} more like it not shown)", line()),
        };
        self.last = Some(now);
        self.held_back = 0;
        Some(line)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A burst prints its first line; the next line a period later says how many were held back.
    #[test]
    fn one_line_per_period_with_a_count_of_the_rest() {
        let mut log = RateLimitedLog::per_second();
        let start = Instant::now();
        let line = || "accept failed".to_string();
        assert_eq!(log.admit(start, line).as_deref(), Some("accept failed"));
        for ms in 1..=999 {
            let at = start + Duration::from_millis(ms);
            assert_eq!(log.admit(at, line), None, "printed again after {ms} ms");
        }
        let later = start + Duration::from_secs(1);
        assert_eq!(
            log.admit(later, line).as_deref(),
            Some("accept failed (999 more like it not shown)")
        );
        // The count starts again after each printed line.
        let much_later = start + Duration::from_secs(5);
        assert_eq!(
            log.admit(much_later, line).as_deref(),
            Some("accept failed")
        );
    }

    /// A held-back line is never formatted.
    #[test]
    fn held_back_lines_cost_no_formatting() {
        let mut log = RateLimitedLog::per_second();
        let now = Instant::now();
        assert!(log.admit(now, || "first".into()).is_some());
        let held = log.admit(now, || panic!("a held-back line was formatted"));
        assert_eq!(held, None);
    }
}
