//! Why a connection could not be opened, and what to do about it, in words.

use std::collections::BTreeMap;
use std::fmt;
use std::io;

/// One reason a connection attempt failed.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, serde::Serialize, serde::Deserialize)]
pub enum Failure {
    /// `ECONNREFUSED`: nothing listening, or the listen backlog overflowed.
    Refused,
    /// No answer within the connect timeout.
    TimedOut,
    /// `ECONNRESET` / `EPIPE`: the server closed the connection under us.
    Reset,
    /// `EMFILE` / `ENFILE`: this process (or the whole system) ran out of file descriptors.
    OutOfFds,
    /// `EADDRNOTAVAIL`: no free source port left for this source address.
    OutOfPorts,
    /// The server answered the WebSocket upgrade with something else.
    Handshake(String),
    /// Anything else, with the system's message.
    Other(String),
}

impl Failure {
    /// Name the reason for an I/O error from `connect`, `read` or `write`.
    pub fn classify(err: &io::Error) -> Failure {
        match err.raw_os_error() {
            Some(libc::EMFILE | libc::ENFILE) => return Failure::OutOfFds,
            Some(libc::EADDRNOTAVAIL) => return Failure::OutOfPorts,
            _ => {}
        }
        match err.kind() {
            io::ErrorKind::ConnectionRefused => Failure::Refused,
            io::ErrorKind::TimedOut => Failure::TimedOut,
            io::ErrorKind::ConnectionReset
            | io::ErrorKind::ConnectionAborted
            | io::ErrorKind::BrokenPipe
            | io::ErrorKind::UnexpectedEof => Failure::Reset,
            _ => Failure::Other(err.to_string()),
        }
    }

    /// What a learner can do about it.
    pub fn fix(&self) -> &'static str {
        match self {
            Failure::Refused => {
                "is the server running on that port? If it is, its listen backlog overflowed: \
                 connect more slowly (--concurrency, --rate) or raise net.core.somaxconn"
            }
            Failure::TimedOut => {
                "the server did not accept (or answer) in time: it may be busy, stuck, or serving \
                 one client at a time; lower --concurrency or raise --connect-timeout"
            }
            Failure::Reset => {
                "the server closed the connection: look at its log (stderr); it may have hit its \
                 own fd limit, a cap (select's FD_SETSIZE), or refused the request"
            }
            Failure::OutOfFds => {
                "out of file descriptors: every connection is one. Raise the limit \
                 (`ulimit -n`, up to `ulimit -Hn`; root can raise the hard limit and fs.nr_open), \
                 or ask for fewer --conns"
            }
            Failure::OutOfPorts => {
                "out of source ports (~28k per source address, net.ipv4.ip_local_port_range): \
                 spread over more loopback source addresses with --src-addrs 127.0.0.2-127.0.0.60"
            }
            Failure::Handshake(_) => {
                "the server did not speak WebSocket: is this a ws:// step, and the right port?"
            }
            Failure::Other(_) => "see the message; it came from the operating system",
        }
    }
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Failure::Refused => f.write_str("refused"),
            Failure::TimedOut => f.write_str("timed out"),
            Failure::Reset => f.write_str("reset"),
            Failure::OutOfFds => f.write_str("out of fds"),
            Failure::OutOfPorts => f.write_str("out of source ports"),
            Failure::Handshake(why) => write!(f, "handshake failed ({why})"),
            Failure::Other(why) => write!(f, "other ({why})"),
        }
    }
}

/// Failures counted by reason.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(from = "Vec<(Failure, usize)>", into = "Vec<(Failure, usize)>")]
pub struct Failures(BTreeMap<Failure, usize>);

// As a list of (reason, count): JSON map keys must be strings, and a reason is not one.
impl From<Vec<(Failure, usize)>> for Failures {
    fn from(list: Vec<(Failure, usize)>) -> Failures {
        let mut failures = Failures::default();
        for (failure, n) in list {
            *failures.0.entry(failure).or_default() += n;
        }
        failures
    }
}

impl From<Failures> for Vec<(Failure, usize)> {
    fn from(failures: Failures) -> Vec<(Failure, usize)> {
        failures.0.into_iter().collect()
    }
}

impl Failures {
    pub fn add(&mut self, failure: Failure) {
        *self.0.entry(failure).or_default() += 1;
    }

    /// Add another count of failures (from another process) to these.
    pub fn merge(&mut self, other: &Failures) {
        for (failure, n) in &other.0 {
            *self.0.entry(failure.clone()).or_default() += n;
        }
    }

    pub fn total(&self) -> usize {
        self.0.values().sum()
    }

    /// Each reason with its count, most frequent first.
    pub fn by_count(&self) -> Vec<(&Failure, usize)> {
        let mut all: Vec<_> = self.0.iter().map(|(f, &n)| (f, n)).collect();
        all.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(b.0)));
        all
    }

    /// `refused 3, timed out 1` for a progress bar or a table cell.
    pub fn short(&self) -> String {
        let parts: Vec<String> = self
            .by_count()
            .iter()
            .map(|(f, n)| format!("{f} {n}"))
            .collect();
        parts.join(", ")
    }

    /// One line per reason with its fix, for the end of a run.
    pub fn explained(&self) -> String {
        self.by_count()
            .iter()
            .map(|(f, n)| format!("  {n} × {f}: {}\n", f.fix()))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Each OS error is named by its cause: out of fds, out of ports, refused, reset or timed out.
    #[test]
    fn os_errors_are_named_by_what_ran_out() {
        let os = io::Error::from_raw_os_error;
        assert_eq!(Failure::classify(&os(libc::EMFILE)), Failure::OutOfFds);
        assert_eq!(Failure::classify(&os(libc::ENFILE)), Failure::OutOfFds);
        assert_eq!(
            Failure::classify(&os(libc::EADDRNOTAVAIL)),
            Failure::OutOfPorts
        );
        assert_eq!(Failure::classify(&os(libc::ECONNREFUSED)), Failure::Refused);
        assert_eq!(Failure::classify(&os(libc::ECONNRESET)), Failure::Reset);
        assert_eq!(Failure::classify(&os(libc::EPIPE)), Failure::Reset);
        assert_eq!(
            Failure::classify(&io::ErrorKind::TimedOut.into()),
            Failure::TimedOut
        );
    }

    /// Failures are counted by reason, most frequent first, each with a hint at the fix.
    #[test]
    fn counts_by_reason_most_frequent_first_with_fixes() {
        let mut failures = Failures::default();
        failures.add(Failure::TimedOut);
        failures.add(Failure::Refused);
        failures.add(Failure::Refused);
        assert_eq!(failures.total(), 3);
        assert_eq!(failures.short(), "refused 2, timed out 1");
        assert!(
            failures
                .explained()
                .contains("2 × refused: is the server running")
        );
    }
}
