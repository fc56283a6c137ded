//! A connection storm: many clients arriving at once, the busy side of the trade-off that
//! idle memory does not show.
//!
//! [`Pool::storm`] opens connections as fast as this process can (no pacing, many attempts
//! in flight), and each new one sends one message and waits for its echo, so a WebSocket
//! server has done all a new client costs it: accept, upgrade, first frame. The caller reads
//! the server's CPU time before and after to price one connection.

use std::time::{Duration, Instant};

use futures_util::StreamExt;
use futures_util::stream::FuturesUnordered;

use crate::pool::record;
use crate::{Conn, EchoStats, Pool, RttSummary, payload, percentile};

/// What a storm did.
#[derive(Debug, Clone, Default)]
pub struct Storm {
    /// Connections opened (and kept in the pool).
    pub opened: usize,
    /// Attempts that failed; their reasons are in [`Pool::failures`].
    pub failed: usize,
    /// Time from each attempt's start until the connection was usable (TCP handshake, plus
    /// the WebSocket upgrade), sorted.
    pub connect_times: Vec<Duration>,
    /// The first echo on each new connection.
    pub echo: EchoStats,
    /// From the first attempt until the last connection's echo came back (or gave up).
    pub elapsed: Duration,
}

impl Storm {
    /// Connections opened per second of the storm.
    pub fn conns_per_s(&self) -> f64 {
        self.opened as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }

    /// p50 / p99 / max of the time to connect, or `None` when nothing connected.
    pub fn connect_summary(&self) -> Option<RttSummary> {
        Some(RttSummary {
            p50: percentile(&self.connect_times, 50.0)?,
            p99: percentile(&self.connect_times, 99.0)?,
            max: *self.connect_times.last()?,
        })
    }
}

impl Pool {
    /// Open `n` more connections as fast as possible, at most `in_flight` attempts at once,
    /// each followed by one `size`-byte echo given up after `echo_deadline`.
    ///
    /// Bounded in count and time: `n` attempts, no retries, each bounded by the pool's
    /// connect timeout plus `echo_deadline`. Too many in flight overflows the server's listen
    /// backlog (the kernel then drops SYNs and the client retries after a second): keep
    /// `in_flight` under `net.core.somaxconn`.
    pub async fn storm(
        &mut self,
        n: usize,
        in_flight: usize,
        size: usize,
        echo_deadline: Duration,
    ) -> Storm {
        let Pool {
            opts,
            conns,
            failures,
            attempts,
            ..
        } = self;
        let mut storm = Storm::default();
        let mut pending = FuturesUnordered::new();
        let mut started = 0;
        let start = Instant::now();
        while started < n || !pending.is_empty() {
            // Keep `in_flight` attempts going until all `n` have started.
            while started < n && pending.len() < in_flight.max(1) {
                let (opts, i) = (&*opts, *attempts);
                pending.push(async move {
                    let begun = Instant::now();
                    let mut conn = Conn::connect(opts, i).await?;
                    let connected = begun.elapsed();
                    let sent = payload(size);
                    let outcome = tokio::time::timeout(echo_deadline, conn.echo(opts, &sent)).await;
                    let echo = record(&mut conn, outcome);
                    Ok((conn, connected, echo))
                });
                *attempts += 1;
                started += 1;
            }
            match pending.next().await {
                Some(Ok((conn, connected, echo))) => {
                    conns.push(conn);
                    storm.opened += 1;
                    storm.connect_times.push(connected);
                    storm.echo.merge(echo);
                }
                Some(Err(failure)) => {
                    failures.add(failure);
                    storm.failed += 1;
                }
                None => {}
            }
        }
        storm.elapsed = start.elapsed();
        storm.connect_times.sort_unstable();
        storm.echo = storm.echo.finish();
        storm
    }
}
