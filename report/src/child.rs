//! A step running as a child process, started and watched by `stepcheck::Server`, the one
//! the behaviour suites use: started with `--json`, its stdout read line by line on a
//! thread that reads /proc beside each line, and killed (by its pid) when dropped, also
//! when the report fails half-way. What only the report needs is here: a start that fails
//! softly (the row shows why), the newest memory line, and [`Started`]: the step warmed up
//! and settled, with the baseline its memory figures are taken from.

use std::net::SocketAddr;
use std::path::Path;
use std::time::{Duration, Instant};

use common::{MemoryLine, ProcStatus};
use indicatif::ProgressBar;
use loadgen::{ConnectOptions, Pace, Pool, Protocol, Target};
use stepcheck::{Line, Server, Watch};

use crate::procfs;
use crate::schema::Plan;
use crate::steps::StepSpec;

/// How often the step prints its memory line (at most), in seconds: often enough that the
/// report waits little for a fresh one.
const REPORT_EVERY: &str = "0.2";

/// How long a step may take to listen. A step listens within milliseconds; this only
/// bounds one that never will (step08 starts its workers first).
const LISTEN_PATIENCE: Duration = Duration::from_secs(30);

/// A memory line, with what /proc said about the step the moment the line was read.
#[derive(Debug, Clone)]
pub struct Sample {
    pub line: MemoryLine,
    /// The step's status read right after the line arrived (`None` if the step had exited),
    /// through [`procfs::status`]: summed over its processes if it has several.
    pub proc: Option<ProcStatus>,
    pub at: Instant,
}

/// A running step.
pub struct StepProcess {
    server: Server,
    /// The newest memory line read so far.
    latest: Option<Sample>,
}

impl StepProcess {
    /// Start `bin` on a free loopback port with JSON output and frequent memory lines, and
    /// wait until it listens; an error names why it never did, in one line.
    pub fn start(bin: &Path, args: &[&str]) -> Result<StepProcess, String> {
        let watch = Watch {
            patience: LISTEN_PATIENCE,
            read_status: procfs::status,
            tee: crate::live::tee,
            ..Watch::default()
        };
        let server = Server::try_start(stepcheck::step_command(bin, REPORT_EVERY, args), watch)
            .map_err(|err| err.short())?;
        Ok(StepProcess {
            server,
            latest: None,
        })
    }

    pub fn pid(&self) -> u32 {
        self.server.pid()
    }

    /// Where the step listens.
    pub fn addr(&self) -> SocketAddr {
        self.server.addr
    }

    /// The newest memory line at or after `since` whose count is `conns`; or, once
    /// `timeout` has passed, the newest line whatever it says (a step that serves one
    /// client at a time never counts the rest).
    pub fn memory_line(
        &mut self,
        conns: usize,
        since: Instant,
        timeout: Duration,
    ) -> Option<Sample> {
        let deadline = Instant::now() + timeout;
        loop {
            // Everything printed so far first: the newest line is the one that counts.
            while let Some(line) = self.server.next_line(Duration::ZERO) {
                self.keep(line);
            }
            if let Some(newest) = &self.latest
                && newest.at >= since
                && newest.line.conns == conns
            {
                return Some(newest.clone());
            }
            let left = deadline.saturating_duration_since(Instant::now());
            match self.server.next_line(left) {
                Some(line) => self.keep(line),
                // Nothing within the time left (or the step exited): the newest will do.
                None => return self.latest.clone(),
            }
        }
    }

    /// Keep `line` as the newest sample if it is a memory line.
    fn keep(&mut self, line: Line) {
        if let Some(memory) = MemoryLine::from_json(&line.text) {
            self.latest = Some(Sample {
                line: memory,
                proc: line.proc,
                at: line.at,
            });
        }
    }

    /// Everything the step wrote to stderr so far.
    pub fn stderr(&self) -> String {
        self.server.stderr()
    }

    /// `: "last stderr line"` to end an error message, if the step said anything.
    pub fn last_words(&self) -> String {
        self.server.last_words()
    }

    /// Still running?
    pub fn is_running(&mut self) -> bool {
        self.server.is_running()
    }
}

/// A step started, listening, and settled: what each part of its measurement works with.
pub struct Started {
    pub process: StepProcess,
    addr: SocketAddr,
    /// What loadgen speaks to it.
    protocol: Protocol,
    /// Our baseline: the step's resident set once it has settled and served one connection
    /// (see [`warm_up`]), just before the first of the measured ones. The step's own baseline
    /// is taken right after bind, before it allocated whatever it allocates at start-up (a
    /// shared read buffer, a runtime's worker threads) and before it ran the code that
    /// serves a connection; its per-connection figure spreads that over the connections,
    /// ours does not.
    pub base_rss: u64,
}

impl Started {
    /// Start the step `spec` names from `bin`, let one connection come and go (see
    /// [`warm_up`]), and read our baseline once it has settled.
    pub async fn start(bin: &Path, spec: &StepSpec, plan: &Plan) -> Result<Started, String> {
        // Blocking: waits for the listening line. Nothing else runs on this thread meanwhile.
        let mut process = StepProcess::start(bin, spec.args)?;
        let addr = process.addr();
        warm_up(&mut process, spec.protocol, addr, plan).await;
        tokio::time::sleep(Duration::from_millis(300)).await;
        let base_rss = procfs::status(process.pid())
            .map_err(|err| {
                format!(
                    "cannot read /proc/{}/status: {err}{}",
                    process.pid(),
                    process.last_words()
                )
            })?
            .rss_bytes;
        Ok(Started {
            process,
            addr,
            protocol: spec.protocol,
            base_rss,
        })
    }

    /// Start the step `spec` names from `bin` with `extra` options too, for figures that
    /// need no memory baseline (the work section's): as soon as it listens, without the
    /// warm-up and the wait for it to settle; `base_rss` is 0.
    pub fn start_for_work(bin: &Path, spec: &StepSpec, extra: &[&str]) -> Result<Started, String> {
        let args: Vec<&str> = spec.args.iter().chain(extra).copied().collect();
        let process = StepProcess::start(bin, &args)?;
        Ok(Started {
            addr: process.addr(),
            process,
            protocol: spec.protocol,
            base_rss: 0,
        })
    }

    /// An empty pool of loadgen connections to the step.
    pub fn pool(&self) -> Result<Pool, String> {
        pool_for(self.protocol, self.addr)
    }

    /// How loadgen opens one connection to the step, for a connection of its own, outside
    /// any pool.
    pub fn connect_options(&self) -> Result<ConnectOptions, String> {
        connect_options(self.protocol, self.addr)
    }

    /// Where the step listens.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The step's CPU time so far (zero if it has exited: the figure is then not used).
    pub fn cpu(&self) -> Option<Duration> {
        procfs::cpu_time(self.process.pid()).ok()
    }
}

/// One connection comes, is echoed once, and goes, before our baseline is read.
///
/// The first connection runs code the step has not run yet (accept, read, write, close: in
/// libc, in the step), and the kernel maps code in when it is first run, 64 KiB around the
/// page at a time ("fault-around"). Those pages count in the resident set, once. Where the
/// 64 KiB windows fall moves with the address-space layout, which is random from run to
/// run, so without this a window lands before or after the baseline by chance: step03 at
/// 1000 connections read 36 B or 102 B per connection from one run to the next. After one
/// connection has come and gone, that code is in the baseline, and the figure is what
/// holding connections costs. A step that cannot serve it is left to fail in the run.
async fn warm_up(process: &mut StepProcess, protocol: Protocol, addr: SocketAddr, plan: &Plan) {
    let Ok(mut pool) = pool_for(protocol, addr) else {
        return;
    };
    let since = Instant::now();
    pool.grow_to(1, Pace::default(), &ProgressBar::hidden())
        .await;
    pool.echo_each(0, plan.message_size, plan.served_deadline)
        .await;
    // Seen by the step, then seen to go: its memory line says 1, then 0.
    process.memory_line(1, since, Duration::from_secs(3));
    let closed_at = Instant::now();
    pool.close();
    process.memory_line(0, closed_at, Duration::from_secs(3));
}

/// An empty pool of loadgen connections to the step at `addr`, in its protocol.
fn pool_for(protocol: Protocol, addr: SocketAddr) -> Result<Pool, String> {
    Ok(Pool::new(connect_options(protocol, addr)?))
}

/// How loadgen opens a connection to the step at `addr`, in its protocol.
fn connect_options(protocol: Protocol, addr: SocketAddr) -> Result<ConnectOptions, String> {
    let url = match protocol {
        Protocol::Tcp => format!("tcp://{addr}"),
        Protocol::WebSocket => format!("ws://{addr}/"),
    };
    let mut opts = ConnectOptions::new(url.parse::<Target>()?);
    opts.timeout = Duration::from_secs(5);
    Ok(opts)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    /// A fake step: a shell script that ignores its options, listens, prints memory lines
    /// for 1, 2 and 3 connections at once, then waits.
    fn fake_step() -> std::path::PathBuf {
        let line = |conns: u32| {
            format!(
                r#"echo '{{"event":"memory","step":"fake","conns":{conns},"rss_bytes":9,"base_rss_bytes":8,"per_conn_bytes":0,"threads":1}}'"#
            )
        };
        let script = format!(
            "#!/bin/sh\necho '{{\"event\":\"listening\",\"addr\":\"127.0.0.1:9\"}}'\n{}\n{}\n{}\nexec sleep 30\n",
            line(1),
            line(2),
            line(3)
        );
        let path = std::env::temp_dir().join(format!("report-fake-step-{}", std::process::id()));
        std::fs::write(&path, script).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
        path
    }

    /// The memory line returned is the newest one, and only when it has the count asked
    /// for; otherwise, after the timeout, the newest whatever it says. Breaks if an older
    /// line with the right count is taken for the step's present state.
    #[test]
    fn the_newest_memory_line_is_the_one_that_counts() {
        let bin = fake_step();
        let before = Instant::now();
        let mut step = StepProcess::start(&bin, &[]).expect("the fake step listens");
        assert_eq!(step.addr(), "127.0.0.1:9".parse().unwrap());
        // Let the reader thread take all three lines in (it needs microseconds; 2 s is for
        // a busy machine). Then 2 is printed, but no longer the newest: the wait ends with
        // the newest (3).
        std::thread::sleep(Duration::from_secs(2));
        let asked_two = step.memory_line(2, before, Duration::from_millis(300));
        assert_eq!(asked_two.map(|s| s.line.conns), Some(3));
        let three = step.memory_line(3, before, Duration::from_secs(20));
        assert_eq!(three.map(|s| s.line.conns), Some(3));
        let _ = std::fs::remove_file(bin);
    }
}
