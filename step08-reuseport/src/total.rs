//! The server's one memory line: the workers' lines summed, then the worker count and the
//! supervisor's own resident set (apart from the sums: it holds no connection).
//!
//! `step08-reuseport  workers 2  conns 30000  rss 6.9 MiB  base 5.5 MiB  per-conn 47 B
//! threads 2  supervisor 3.0 MiB`; with `--json`, every step's memory object, then
//! `"workers"` and `"supervisor_rss_bytes"`.

use std::fmt;

use common::{MemoryLine, format_bytes};
use serde::Serialize;

use crate::STEP;

/// What the supervisor prints.
#[derive(Debug, Serialize)]
pub(crate) struct Total {
    /// Sums over the workers, so per-conn is (Σ rss − Σ base) / Σ conns.
    #[serde(flatten)]
    pub line: MemoryLine,
    /// How many workers the sums cover: those that listen.
    pub workers: usize,
    /// The supervisor's resident set.
    pub supervisor_rss_bytes: u64,
}

impl Total {
    /// The workers' latest lines, summed.
    pub fn sum(lines: &[MemoryLine], supervisor_rss_bytes: u64) -> Total {
        let line = MemoryLine::new(
            STEP,
            lines.iter().map(|l| l.conns).sum(),
            lines.iter().map(|l| l.rss_bytes).sum(),
            lines.iter().map(|l| l.base_rss_bytes).sum(),
            lines.iter().map(|l| l.threads).sum(),
        );
        Total {
            line,
            workers: lines.len(),
            supervisor_rss_bytes,
        }
    }

    /// The line as printed: `--json` or text.
    pub fn format(&self, json: bool) -> String {
        match json {
            true => serde_json::to_string(self).expect("bug: strings and integers serialize"),
            false => self.to_string(),
        }
    }
}

impl fmt::Display for Total {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}  workers {}  {}  supervisor {}",
            self.line.step,
            self.workers,
            self.line.figures(),
            format_bytes(self.supervisor_rss_bytes)
        )
    }
}
