//! Past one process: when `--conns` is more than one process may open (every connection is
//! a file descriptor, and the open-file limit is per process), loadgen runs copies of
//! itself as child processes, each holding a share, and merges what they report.
//!
//! A child is started with `--child` and speaks JSON lines on stdout: `progress` while it
//! opens, `opened` when done; then it waits for commands on stdin, one per line —
//! `burst` (one message on each of its connections at once), `probe N` (N echo probes on
//! random connections) — each answered with an `echoes` line. When stdin closes (the
//! parent is done, or gone) it closes its connections and exits.

use std::io::{BufRead, BufReader, Write};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc::{self, Receiver};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::{EchoStats, Failures};

/// A share of the connections, opened: what a child reports, and what the parent sums.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Opened {
    /// Connections held.
    pub held: usize,
    /// Failed attempts, by reason.
    pub failures: Failures,
    /// Held connections that the server has already closed.
    pub closed_by_server: usize,
    /// This process's anonymous resident memory now, with the connections held, in bytes
    /// (see [`common::anon_rss_bytes`]: what it allocated, not its binary's pages).
    pub rss_bytes: u64,
    /// The same before the first connection.
    pub base_rss_bytes: u64,
}

impl Opened {
    /// Add another process's share.
    pub fn merge(&mut self, other: &Opened) {
        self.held += other.held;
        self.failures.merge(&other.failures);
        self.closed_by_server += other.closed_by_server;
        self.rss_bytes += other.rss_bytes;
        self.base_rss_bytes += other.base_rss_bytes;
    }

    /// Resident memory per held connection: (rss − base) / held.
    pub fn rss_per_conn(&self) -> Option<u64> {
        (self.held > 0)
            .then(|| self.rss_bytes.saturating_sub(self.base_rss_bytes) / self.held as u64)
    }
}

/// One line from a child.
#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "event", rename_all = "lowercase")]
pub enum ChildReport {
    Progress { opened: usize, failed: usize },
    Opened(Opened),
    Echoes(EchoStats),
}

impl ChildReport {
    /// Print it as one line on stdout, for the parent.
    pub fn send(&self) {
        let line = serde_json::to_string(self).expect("bug: a report serializes");
        // The parent gone means there is no one left to report to: stop.
        if writeln!(std::io::stdout(), "{line}").is_err() {
            std::process::exit(1);
        }
    }
}

/// A command from the parent, one line on the child's stdin.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Order {
    Burst,
    Probe(usize),
}

impl Order {
    pub fn parse(line: &str) -> Option<Order> {
        match line.split_whitespace().collect::<Vec<_>>()[..] {
            ["burst"] => Some(Order::Burst),
            ["probe", n] => n.parse().ok().map(Order::Probe),
            _ => None,
        }
    }
}

/// A running child.
struct Member {
    child: Child,
    stdin: Option<ChildStdin>,
}

/// The children, and the lines they send, tagged with the child's index.
pub struct Fleet {
    members: Vec<Member>,
    reports: Receiver<(usize, ChildReport)>,
}

impl Fleet {
    /// Start one child per entry of `args` (each its own command line for this binary).
    pub fn start(args: Vec<Vec<String>>) -> std::io::Result<Fleet> {
        let exe = std::env::current_exe()?;
        let (sender, reports) = mpsc::channel();
        let mut members = Vec::new();
        for (i, args) in args.into_iter().enumerate() {
            let mut child = Command::new(&exe)
                .args(args)
                .arg("--child")
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .stderr(Stdio::inherit())
                .spawn()?;
            let stdout = child.stdout.take().expect("bug: stdout is piped");
            let sender = sender.clone();
            std::thread::spawn(move || {
                for line in BufReader::new(stdout).lines() {
                    let Ok(line) = line else { break };
                    match serde_json::from_str(&line) {
                        Ok(report) => {
                            if sender.send((i, report)).is_err() {
                                break;
                            }
                        }
                        Err(err) => {
                            eprintln!("loadgen: child {i} said something odd ({err}): {line}")
                        }
                    }
                }
            });
            let stdin = child.stdin.take();
            members.push(Member { child, stdin });
        }
        Ok(Fleet { members, reports })
    }

    pub fn len(&self) -> usize {
        self.members.len()
    }

    pub fn is_empty(&self) -> bool {
        self.members.is_empty()
    }

    /// The next line from any child, or `None` when none came within `wait` or a child
    /// exited (then the error names it).
    pub fn next(&mut self, wait: Duration) -> Result<Option<(usize, ChildReport)>, String> {
        match self.reports.recv_timeout(wait) {
            Ok(report) => Ok(Some(report)),
            Err(_) => {
                for (i, member) in self.members.iter_mut().enumerate() {
                    if let Ok(Some(status)) = member.child.try_wait() {
                        return Err(format!("child {i} exited early ({status})"));
                    }
                }
                Ok(None)
            }
        }
    }

    /// Send `line` to child `i`.
    pub fn tell(&mut self, i: usize, line: &str) -> Result<(), String> {
        let stdin = self.members[i]
            .stdin
            .as_mut()
            .expect("bug: stdin is open until close");
        writeln!(stdin, "{line}").map_err(|err| format!("child {i} is gone: {err}"))
    }

    /// The next `echoes` line from every child, merged; `patience` bounds the wait for each.
    pub fn collect_echoes(&mut self, patience: Duration) -> Result<EchoStats, String> {
        let mut merged = EchoStats::default();
        let mut answered = vec![false; self.len()];
        while answered.iter().any(|a| !a) {
            match self.next(patience)? {
                Some((i, ChildReport::Echoes(stats))) => {
                    answered[i] = true;
                    merged.merge(stats);
                }
                Some(_) => {}
                None => return Err("a child did not answer in time".into()),
            }
        }
        Ok(merged.finish())
    }

    /// Close every child's stdin (they close their connections and exit) and reap them,
    /// by pid, killing any that is still there after a few seconds.
    pub fn close(mut self) {
        for member in &mut self.members {
            member.stdin = None;
        }
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        for member in &mut self.members {
            while matches!(member.child.try_wait(), Ok(None))
                && std::time::Instant::now() < deadline
            {
                std::thread::sleep(Duration::from_millis(10));
            }
            let _ = member.child.kill();
            let _ = member.child.wait();
        }
    }
}

impl Drop for Member {
    /// A child is never left behind, even when the parent stops half-way.
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
