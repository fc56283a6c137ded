//! Many connections held at once: open them at a bounded pace, echo through them, close them.

use std::time::Duration;

use futures_util::StreamExt;
use futures_util::stream::FuturesUnordered;
use indicatif::ProgressBar;

use crate::{Conn, ConnectOptions, EchoError, EchoStats, Failures, sweep};

/// How fast new connections are opened.
#[derive(Debug, Clone, Copy)]
pub struct Pace {
    /// At most this many connection attempts in flight at once. Too many at once overflows
    /// the server's listen backlog (and a one-at-a-time server never drains it).
    pub concurrency: usize,
    /// At most this many new attempts per second, if set.
    pub rate: Option<f64>,
}

impl Default for Pace {
    fn default() -> Pace {
        Pace {
            concurrency: 128,
            rate: None,
        }
    }
}

/// Which connection an echo probe goes through.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pick {
    /// Always the same one, by index: round trip on one connection while the others idle.
    Conn(usize),
    /// A connection chosen at random among the usable ones, each probe anew.
    Random,
}

/// The connections this process holds, and the failures met while opening them.
pub struct Pool {
    /// How each new connection is opened.
    pub(crate) opts: ConnectOptions,
    /// The connections held, oldest first.
    pub(crate) conns: Vec<Conn>,
    /// Failed attempts, by reason.
    pub failures: Failures,
    /// Attempts made so far; numbers each attempt, to pick its source address.
    pub(crate) attempts: usize,
    /// Bursts go through epoll even where io_uring runs (see [`Pool::burst_on_epoll`]).
    pub(crate) epoll_only: bool,
}

impl Pool {
    pub fn new(opts: ConnectOptions) -> Pool {
        Pool {
            opts,
            conns: Vec::new(),
            failures: Failures::default(),
            attempts: 0,
            epoll_only: false,
        }
    }

    /// Send bursts through epoll, as where io_uring is refused: to compare the two, and to
    /// test the one a machine without io_uring uses.
    pub fn burst_on_epoll(mut self) -> Pool {
        self.epoll_only = true;
        self
    }

    /// Number this pool's attempts from `first` on: a process holding one share of many
    /// picks its source addresses where the previous share stopped.
    pub fn starting_at(mut self, first: usize) -> Pool {
        self.attempts = first;
        self
    }

    /// Connections held.
    pub fn len(&self) -> usize {
        self.conns.len()
    }

    pub fn is_empty(&self) -> bool {
        self.conns.is_empty()
    }

    /// Connections held on our side that the server has already closed or reset.
    pub fn closed_by_server(&self) -> usize {
        self.conns.iter().filter(|c| c.closed_by_peer()).count()
    }

    /// Connections held that may still be probed (none of their echoes went missing).
    pub fn usable(&self) -> usize {
        self.conns.iter().filter(|c| c.usable).count()
    }

    /// Attempt new connections until `n` are held: one attempt each, no retries, so this
    /// ends after at most `n - len()` attempts, each bounded by the connect timeout.
    /// Returns how many were opened; the rest are counted in [`Pool::failures`].
    pub async fn grow_to(&mut self, n: usize, pace: Pace, bar: &ProgressBar) -> usize {
        self.grow_to_with(n, pace, |_held, failures| {
            bar.inc(1);
            if let Some(failures) = failures {
                bar.set_message(format!("failed: {}", failures.short()));
            }
        })
        .await
    }

    /// [`Pool::grow_to`], calling `progress(held, failures)` after each attempt; the
    /// failures are passed only when that attempt failed.
    pub async fn grow_to_with(
        &mut self,
        n: usize,
        pace: Pace,
        mut progress: impl FnMut(usize, Option<&Failures>),
    ) -> usize {
        let Pool {
            opts,
            conns,
            failures,
            attempts,
            ..
        } = self;
        let wanted = n.saturating_sub(conns.len());
        let mut started = 0;
        let mut opened = 0;
        let mut in_flight = FuturesUnordered::new();
        let mut ticker = pace.rate.map(|per_sec| {
            let mut ticker = tokio::time::interval(Duration::from_secs_f64(1.0 / per_sec));
            ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            ticker
        });

        while started < wanted || !in_flight.is_empty() {
            let may_start = started < wanted && in_flight.len() < pace.concurrency.max(1);
            tokio::select! {
                () = next_slot(&mut ticker), if may_start => {
                    in_flight.push(Conn::connect(opts, *attempts));
                    *attempts += 1;
                    started += 1;
                }
                Some(result) = in_flight.next() => {
                    match result {
                        Ok(conn) => {
                            conns.push(conn);
                            opened += 1;
                            progress(conns.len(), None);
                        }
                        Err(failure) => {
                            failures.add(failure);
                            progress(conns.len(), Some(failures));
                        }
                    }
                }
            }
        }
        opened
    }

    /// Send one message on every usable connection from index `from` on, all at once, and
    /// count the echoes back within `deadline`. "Served concurrently" is the `ok` count: a
    /// server that handles one client at a time answers one and leaves the rest waiting.
    /// A connection whose echo did not come back is marked unusable.
    ///
    /// Idle connections are served by [`sweep::echo_all`] and stay idle; the few already
    /// woken by a probe echo through tokio right after.
    pub async fn echo_each(&mut self, from: usize, size: usize, deadline: Duration) -> EchoStats {
        let start = from.min(self.conns.len());
        let sent = payload(size);
        let mut stats = sweep::echo_all(
            &mut self.conns[start..],
            self.opts.target.protocol,
            &sent,
            deadline,
            self.epoll_only,
        )
        .await;
        let opts = &self.opts;
        let woken = self.conns[start..]
            .iter_mut()
            .filter(|conn| conn.usable && !conn.is_idle())
            .map(|conn| async {
                let outcome = tokio::time::timeout(deadline, conn.echo(opts, &sent)).await;
                record(conn, outcome)
            });
        for one in futures_util::future::join_all(woken).await {
            stats.merge(one);
        }
        stats.finish()
    }

    /// `count` echo probes one after another, each through `pick`, each checked byte for
    /// byte and given up after `deadline`. A probe connection that lost an echo is not probed
    /// again, so the batch may end early; [`EchoStats::sent`] says how many went out.
    pub async fn probe(
        &mut self,
        pick: Pick,
        count: usize,
        size: usize,
        deadline: Duration,
    ) -> EchoStats {
        let usable: Vec<usize> = (0..self.conns.len())
            .filter(|&i| self.conns[i].usable)
            .collect();
        let mut stats = EchoStats::default();
        for _ in 0..count {
            let index = match pick {
                Pick::Conn(i) if self.conns.get(i).is_some_and(|c| c.usable) => i,
                Pick::Conn(_) => break,
                Pick::Random if usable.is_empty() => break,
                Pick::Random => usable[fastrand::usize(..usable.len())],
            };
            let conn = &mut self.conns[index];
            if !conn.usable {
                continue; // it lost an echo earlier in this batch
            }
            let sent = payload(size);
            let outcome = tokio::time::timeout(deadline, conn.echo(&self.opts, &sent)).await;
            stats.merge(record(conn, outcome));
        }
        stats.finish()
    }

    /// Close the newest connections with a reset until `n` are held; the oldest stay, so
    /// connection 0 (the round-trip probe) keeps its place.
    pub fn shrink_to(&mut self, n: usize) {
        for conn in self.conns.drain(n.min(self.conns.len())..) {
            conn.abort();
        }
    }

    /// Close every connection with a reset (see [`Conn::abort`]).
    pub fn close(self) {
        for conn in self.conns {
            conn.abort();
        }
    }
}

/// Wait for the next slot allowed by `--rate`; no wait without one.
async fn next_slot(ticker: &mut Option<tokio::time::Interval>) {
    if let Some(ticker) = ticker {
        ticker.tick().await;
    }
}

/// Random bytes, so that a stale echo from an earlier probe can never pass as this one's.
pub fn payload(size: usize) -> Vec<u8> {
    let mut bytes = vec![0; size];
    fastrand::fill(&mut bytes);
    bytes
}

/// Count one probe's outcome; a connection whose echo went missing or came back wrong
/// is not used again.
pub(crate) fn record(
    conn: &mut Conn,
    outcome: Result<Result<Duration, EchoError>, tokio::time::error::Elapsed>,
) -> EchoStats {
    let mut stats = EchoStats::default();
    match outcome {
        Ok(Ok(rtt)) => {
            stats.ok = 1;
            stats.rtts.push(rtt);
        }
        Ok(Err(EchoError::Mismatch)) => stats.mismatched = 1,
        Ok(Err(EchoError::Failed(_))) => stats.failed = 1,
        Err(_elapsed) => stats.lost = 1,
    }
    if stats.ok == 0 {
        conn.usable = false;
    }
    stats
}
