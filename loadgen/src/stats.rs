//! Counting echo outcomes and summarising round-trip times.

use std::fmt;
use std::time::Duration;

/// The `p`-th percentile (0 < p ≤ 100) of sorted samples by the nearest-rank method: the
/// smallest sample at or above which `p`% of the samples lie. No interpolation, so every
/// figure printed is a time that was actually measured.
pub fn percentile(sorted: &[Duration], p: f64) -> Option<Duration> {
    if sorted.is_empty() || !(p > 0.0 && p <= 100.0) {
        return None;
    }
    let rank = (p / 100.0 * sorted.len() as f64).ceil() as usize;
    Some(sorted[rank.clamp(1, sorted.len()) - 1])
}

/// What became of a batch of echo probes.
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct EchoStats {
    /// The echo came back, byte for byte.
    pub ok: usize,
    /// No echo within the deadline (the server may be serving someone else, or be stuck).
    pub lost: usize,
    /// Something came back, but not what was sent.
    pub mismatched: usize,
    /// The connection failed while echoing (reset, closed by the server).
    pub failed: usize,
    /// Round-trip times of the `ok` probes, sorted once [`EchoStats::finish`] ran.
    #[serde(with = "nanos")]
    pub rtts: Vec<Duration>,
    /// When the first message of the batch went out, and when its last echo came back, on
    /// [`monotonic_ns`]'s clock: the same in every process of the machine, so a burst
    /// shared among processes spans from the first send of any to the last echo of all.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub first_sent_ns: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_back_ns: Option<u64>,
}

/// p50 / p99 / max of a batch, for printing and for the report.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RttSummary {
    pub p50: Duration,
    pub p99: Duration,
    pub max: Duration,
}

impl EchoStats {
    /// Sort the round-trip times so the percentiles can be read.
    pub fn finish(mut self) -> EchoStats {
        self.rtts.sort_unstable();
        self
    }

    /// All probes sent.
    pub fn sent(&self) -> usize {
        self.ok + self.lost + self.mismatched + self.failed
    }

    /// p50 / p99 / max, or `None` when no echo came back.
    pub fn summary(&self) -> Option<RttSummary> {
        debug_assert!(self.rtts.is_sorted(), "bug: call finish() before summary()");
        Some(RttSummary {
            p50: percentile(&self.rtts, 50.0)?,
            p99: percentile(&self.rtts, 99.0)?,
            max: *self.rtts.last()?,
        })
    }

    /// From the first message sent to the last echo back: how long the whole batch took,
    /// end to end. `None` unless both were timed (a burst's are).
    pub fn span(&self) -> Option<Duration> {
        Some(Duration::from_nanos(
            self.last_back_ns?.saturating_sub(self.first_sent_ns?),
        ))
    }

    /// An echo of a burst came back whole, now, for a message sent at `sent_ns` (both on
    /// [`monotonic_ns`]'s clock): counted, timed, and the batch's last echo so far.
    pub fn came_back(&mut self, sent_ns: u64) {
        let now = monotonic_ns();
        self.ok += 1;
        self.rtts
            .push(Duration::from_nanos(now.saturating_sub(sent_ns)));
        self.last_back_ns = Some(now);
    }

    /// Add another batch's counts and times (call `finish` again afterwards).
    pub fn merge(&mut self, other: EchoStats) {
        self.first_sent_ns = earliest(self.first_sent_ns, other.first_sent_ns);
        self.last_back_ns = self.last_back_ns.max(other.last_back_ns);
        self.ok += other.ok;
        self.lost += other.lost;
        self.mismatched += other.mismatched;
        self.failed += other.failed;
        self.rtts.extend(other.rtts);
    }
}

/// The earlier of two optional moments.
fn earliest(a: Option<u64>, b: Option<u64>) -> Option<u64> {
    match (a, b) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

/// Now, in nanoseconds of `CLOCK_MONOTONIC`: one clock for every process on the machine
/// (an [`std::time::Instant`] is the same clock, but cannot be sent to another process).
pub fn monotonic_ns() -> u64 {
    let now = common::sys::clock_now(libc::CLOCK_MONOTONIC).expect("every Linux has this clock");
    now.as_nanos() as u64
}

impl fmt::Display for EchoStats {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} sent: {} ok, {} lost, {} mismatched, {} failed",
            self.sent(),
            self.ok,
            self.lost,
            self.mismatched,
            self.failed
        )?;
        if let Some(s) = self.summary() {
            write!(
                f,
                "; round trip p50 {} p99 {} max {}",
                micros(s.p50),
                micros(s.p99),
                micros(s.max)
            )?;
        }
        if let Some(span) = self.span() {
            write!(f, "; the last back {} after the first sent", micros(span))?;
        }
        Ok(())
    }
}

/// Round trips between processes as whole nanoseconds, not serde's `{secs, nanos}`
/// objects: a child process reports tens of thousands of them.
mod nanos {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer, Serialize, Serializer};

    pub fn serialize<S: Serializer>(rtts: &[Duration], s: S) -> Result<S::Ok, S::Error> {
        let nanos: Vec<u64> = rtts.iter().map(|d| d.as_nanos() as u64).collect();
        nanos.serialize(s)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<Duration>, D::Error> {
        let nanos = Vec::<u64>::deserialize(d)?;
        Ok(nanos.into_iter().map(Duration::from_nanos).collect())
    }
}

/// `87 µs`, `1.42 ms`, `13.45 s`: round trips on loopback are tens of microseconds, and a
/// burst of a million takes seconds.
pub fn micros(d: Duration) -> String {
    let us = d.as_secs_f64() * 1e6;
    match us {
        ..1000.0 => format!("{us:.0} µs"),
        ..1_000_000.0 => format!("{:.2} ms", us / 1000.0),
        _ => format!("{:.2} s", us / 1e6),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(v: &[u64]) -> Vec<Duration> {
        v.iter().map(|&m| Duration::from_millis(m)).collect()
    }

    /// Percentiles are nearest-rank, so always a measured sample: p99 of 100 samples is the 99th.
    #[test]
    fn nearest_rank_percentiles_are_measured_samples() {
        let samples = ms(&[1, 2, 3, 4, 5, 6, 7, 8, 9, 10]);
        assert_eq!(percentile(&samples, 50.0), Some(Duration::from_millis(5)));
        assert_eq!(percentile(&samples, 99.0), Some(Duration::from_millis(10)));
        assert_eq!(percentile(&samples, 100.0), Some(Duration::from_millis(10)));
        assert_eq!(percentile(&samples, 10.0), Some(Duration::from_millis(1)));
        assert_eq!(percentile(&samples, 0.1), Some(Duration::from_millis(1)));
        // 100 samples: p99 is the 99th, not the maximum.
        let hundred: Vec<Duration> = (1..=100).map(Duration::from_micros).collect();
        assert_eq!(percentile(&hundred, 99.0), Some(Duration::from_micros(99)));
    }

    /// A percentile of no samples, or at a rank outside (0, 100], is None.
    #[test]
    fn percentile_of_nothing_or_nonsense_is_none() {
        assert_eq!(percentile(&[], 50.0), None);
        let one = ms(&[7]);
        assert_eq!(percentile(&one, 50.0), Some(Duration::from_millis(7)));
        assert_eq!(percentile(&one, 0.0), None);
        assert_eq!(percentile(&one, 101.0), None);
        assert_eq!(percentile(&one, f64::NAN), None);
    }

    /// Merged stats add their counts and pool their round trips; no round trips means no summary.
    #[test]
    fn stats_merge_and_summarise() {
        let mut a = EchoStats {
            ok: 2,
            lost: 1,
            rtts: ms(&[3, 1]),
            ..EchoStats::default()
        };
        a.merge(EchoStats {
            ok: 1,
            mismatched: 1,
            rtts: ms(&[2]),
            ..EchoStats::default()
        });
        let a = a.finish();
        assert_eq!((a.sent(), a.ok, a.lost, a.mismatched), (5, 3, 1, 1));
        let s = a.summary().unwrap();
        assert_eq!(
            (s.p50, s.p99, s.max),
            (ms(&[2])[0], ms(&[3])[0], ms(&[3])[0])
        );
        assert_eq!(EchoStats::default().summary(), None);
    }

    /// Merged batches span from the earliest first send to the latest last echo.
    #[test]
    fn merged_batches_span_from_the_first_send_to_the_last_echo() {
        let batch = |first, last| EchoStats {
            first_sent_ns: Some(first),
            last_back_ns: Some(last),
            ..EchoStats::default()
        };
        let mut all = batch(1_000, 5_000);
        all.merge(batch(500, 3_000));
        all.merge(EchoStats::default());
        assert_eq!(all.span(), Some(Duration::from_nanos(4_500)));
        assert_eq!(EchoStats::default().span(), None);
    }

    /// Round trips print in µs below a millisecond, in ms below a second, in s above.
    #[test]
    fn round_trips_print_in_the_unit_that_reads_best() {
        assert_eq!(micros(Duration::from_nanos(87_400)), "87 µs");
        assert_eq!(micros(Duration::from_micros(1420)), "1.42 ms");
        assert_eq!(micros(Duration::from_millis(13_447)), "13.45 s");
    }
}
