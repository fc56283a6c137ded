//! The round trip against idle connections, made to hold from run to run: each point is
//! visited several times, interleaved with the others, and reported as the median of the
//! visits with their spread, or flagged when no two visits agree.

use loadgen::EchoStats;

use crate::schema::{SweepPoint, us};

/// A sweep point is flagged instead of printed when no other visit's median lies within
/// this share of the point's median (and [`WIDE_SPREAD_FLOOR_US`]): with one visit spoiled
/// by a busy moment, the other two still agree and the median stands; with none agreeing,
/// the number would mislead.
pub const WIDE_SPREAD: f64 = 0.5;

/// Differences below this are scheduling on loopback (client and server on one core or two,
/// a core waking from idle), not what idle connections cost: never flagged.
pub const WIDE_SPREAD_FLOOR_US: f64 = 50.0;

impl SweepPoint {
    /// No two visits agree on the median ([`WIDE_SPREAD`]): too wide a spread to quote it.
    /// A point visited once has nothing to disagree with.
    pub fn spread_too_wide(&self) -> bool {
        let near = (WIDE_SPREAD * self.p50_us).max(WIDE_SPREAD_FLOOR_US);
        let agreeing = self
            .visits_p50_us
            .iter()
            .filter(|v| (**v - self.p50_us).abs() <= near)
            .count();
        self.visits_p50_us.len() > 1 && agreeing < 2
    }
}

/// One sweep point's visits so far.
pub struct Visits {
    conns: usize,
    /// Every visit's round trips.
    all: EchoStats,
    p50s_us: Vec<f64>,
    cpu_us_per_echo: Vec<f64>,
}

impl Visits {
    pub fn new(conns: usize) -> Visits {
        Visits {
            conns,
            all: EchoStats::default(),
            p50s_us: Vec::new(),
            cpu_us_per_echo: Vec::new(),
        }
    }

    pub fn add(&mut self, stats: EchoStats, cpu_us_per_echo: Option<f64>) {
        if let Some(summary) = stats.summary() {
            self.p50s_us.push(us(summary.p50));
            self.cpu_us_per_echo.extend(cpu_us_per_echo);
        }
        self.all.merge(stats);
    }

    /// The point, or `None` if no round trip ever came back at it.
    pub fn point(self) -> Option<SweepPoint> {
        let all = self.all.finish();
        let p99 = all.summary()?.p99;
        let sorted = {
            let mut p50s = self.p50s_us.clone();
            p50s.sort_by(f64::total_cmp);
            p50s
        };
        Some(SweepPoint {
            conns: self.conns,
            p50_us: median(&sorted)?,
            spread_us: sorted.last()? - sorted.first()?,
            p99_us: us(p99),
            server_cpu_us_per_echo: median_of(self.cpu_us_per_echo),
            visits_p50_us: self.p50s_us,
        })
    }
}

/// The median of values in any order.
pub fn median_of(values: impl IntoIterator<Item = f64>) -> Option<f64> {
    let mut sorted: Vec<f64> = values.into_iter().collect();
    sorted.sort_by(f64::total_cmp);
    median(&sorted)
}

/// The middle value of sorted values (the lower middle of an even count: a measured value).
fn median(sorted: &[f64]) -> Option<f64> {
    sorted.get(sorted.len().saturating_sub(1) / 2).copied()
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    /// A sweep point is the median of its visits' medians, with their spread; a wide spread
    /// is flagged, not hidden.
    #[test]
    fn a_sweep_point_is_the_median_of_its_visits_with_their_spread() {
        let visit = |us: &[u64]| {
            EchoStats {
                ok: us.len(),
                rtts: us.iter().map(|&u| Duration::from_micros(u)).collect(),
                ..EchoStats::default()
            }
            .finish()
        };
        let mut visits = Visits::new(1000);
        visits.add(visit(&[100, 110, 120]), Some(4.0));
        visits.add(visit(&[300, 310, 320]), Some(6.0));
        visits.add(visit(&[90, 105, 500]), Some(5.0));
        let point = visits.point().unwrap();
        assert_eq!(point.visits_p50_us, [110.0, 310.0, 105.0]);
        assert_eq!(point.p50_us, 110.0);
        assert_eq!(point.spread_us, 205.0);
        assert_eq!(point.p99_us, 500.0);
        assert_eq!(point.server_cpu_us_per_echo, Some(5.0));
        assert!(
            !point.spread_too_wide(),
            "105 µs agrees with 110 µs: one busy visit (310 µs) does not spoil the point"
        );

        let mut scattered = Visits::new(5000);
        for us in [100, 300, 900] {
            scattered.add(visit(&[us]), None);
        }
        let point = scattered.point().unwrap();
        assert_eq!((point.p50_us, point.spread_us), (300.0, 800.0));
        assert!(point.spread_too_wide(), "no two visits agree: {point:?}");

        let mut steady = Visits::new(10);
        steady.add(visit(&[30, 31]), None);
        steady.add(visit(&[70, 73]), None);
        let point = steady.point().unwrap();
        assert!(!point.spread_too_wide() && point.server_cpu_us_per_echo.is_none());
        assert!(Visits::new(1).point().is_none(), "no round trip, no point");
    }
}
