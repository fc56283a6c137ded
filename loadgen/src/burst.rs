//! An event burst: every held connection speaks at the same moment, the other busy side of
//! the trade-off (the talk's "event bursts").
//!
//! [`Pool::burst`] runs rounds; in each, one message goes out on every usable connection
//! in one pass, and the round ends when every echo is back (or given up). An event loop
//! then finds every connection ready at once; a thread per connection wakes every thread.
//! The caller reads the server's CPU time before and after to price one message, and may
//! sample its resident set meanwhile to see the peak.

use std::time::{Duration, Instant};

use crate::{EchoStats, Pool};

/// What a burst did.
#[derive(Debug, Clone, Default)]
pub struct Burst {
    /// Rounds run.
    pub rounds: usize,
    /// Every message of every round: outcomes and round trips (sorted).
    pub echo: EchoStats,
    /// Time spent in the rounds, from each round's first send to its last echo.
    pub busy: Duration,
}

impl Burst {
    /// Echoes back per second of burst.
    pub fn msgs_per_s(&self) -> f64 {
        self.echo.ok as f64 / self.busy.as_secs_f64().max(1e-9)
    }
}

impl Pool {
    /// `rounds` rounds of one `size`-byte message on every usable connection at once, each
    /// echo given up after `deadline`. Bounded: `rounds` × (one message per connection),
    /// each round at most `deadline` long. A connection that lost an echo is left out of
    /// later rounds (see [`Pool::echo_each`]).
    pub async fn burst(&mut self, rounds: usize, size: usize, deadline: Duration) -> Burst {
        self.burst_with(rounds, size, deadline, |_| {}).await
    }

    /// [`Pool::burst`], calling `after_round` with each round's echoes as soon as the
    /// round ends: the caller can read the server's CPU time between rounds and price
    /// each round on its own.
    pub async fn burst_with(
        &mut self,
        rounds: usize,
        size: usize,
        deadline: Duration,
        mut after_round: impl FnMut(&EchoStats),
    ) -> Burst {
        let mut burst = Burst::default();
        for _ in 0..rounds {
            let start = Instant::now();
            let round = self.echo_each(0, size, deadline).await;
            burst.busy += start.elapsed();
            after_round(&round);
            burst.echo.merge(round);
            burst.rounds += 1;
        }
        burst.echo = burst.echo.finish();
        burst
    }
}
