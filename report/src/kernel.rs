//! Kernel memory per connection, from chunks of connections opened with a look at the
//! slab caches around each.

use std::collections::BTreeMap;

use crate::measure::{KernelFigure, StepResult};
use crate::procfs::KernelMemory;

/// Kernel memory per connection, one figure per chunk of connections opened.
#[derive(Debug, Default)]
pub struct KernelChunks {
    /// Growth per connection in total, and by cache.
    pub kept: Vec<(i64, BTreeMap<String, i64>)>,
    /// Chunks set aside because another process opened or closed sockets meanwhile.
    pub spoiled: Vec<String>,
    /// Too few connections to measure at all.
    pub too_few: bool,
}

impl KernelChunks {
    /// Count the chunk between two readings in which `added` connections opened, unless the
    /// TCP cache says another process was at work too.
    pub fn add(&mut self, before: &KernelMemory, after: &KernelMemory, added: usize) {
        let new_sockets = after.tcp_sockets as i64 - before.tcp_sockets as i64;
        if !two_sockets_each(new_sockets, added) {
            self.spoiled.push(format!(
                "{new_sockets} new TCP sockets for {added} connections"
            ));
            return;
        }
        let (growth, total) = before.growth(after);
        let per_conn = growth
            .into_iter()
            .map(|(cache, bytes)| (cache, bytes / added as i64))
            .collect();
        self.kept.push((total / added as i64, per_conn));
    }

    /// The median chunk becomes the step's kernel figure; what was set aside goes in the notes.
    pub fn fill(mut self, result: &mut StepResult) {
        self.kept.sort_by_key(|(per_conn, _)| *per_conn);
        if !self.spoiled.is_empty() {
            result.notes.push(format!(
                "kernel: {} of {} chunks set aside, the TCP cache did not grow by about two \
                 sockets per connection (new sockets for connections: {}): another process \
                 was at work too",
                self.spoiled.len(),
                self.spoiled.len() + self.kept.len(),
                self.spoiled.join(", ")
            ));
        }
        if self.too_few {
            result.notes.push(format!(
                "kernel memory not shown: {} connections are too few to measure",
                result.conns.held
            ));
        }
        if let Some((median, breakdown)) = self.kept.get(self.kept.len().saturating_sub(1) / 2) {
            result.kernel = Some(KernelFigure {
                per_conn_bytes: *median,
                by_cache: breakdown.clone(),
                chunks_per_conn: self.kept.iter().map(|(per_conn, _)| *per_conn).collect(),
            });
        } // else: unreadable (n/a), too few, or every chunk set aside (noted above)
    }
}

/// Whether `new_sockets` TCP sockets are what `conns` new loopback connections make: two
/// each (loadgen's end and the step's), give or take 5% or [`SLAB_SLACK`].
fn two_sockets_each(new_sockets: i64, conns: usize) -> bool {
    let expected = 2 * conns as i64;
    (new_sockets - expected).abs() <= (expected / 20).max(SLAB_SLACK)
}

/// How far slabinfo's count of objects in use may be off: it counts the slabs each CPU
/// keeps at hand as wholly in use (13 TCP sockets a slab, and up to 24 objects in partial
/// slabs per CPU here: /sys/kernel/slab/TCP/cpu_partial).
const SLAB_SLACK: i64 = 80;

#[cfg(test)]
mod tests {
    use super::*;

    /// A measurement counts only if the kernel gained about two TCP sockets per new connection.
    #[test]
    fn a_chunk_counts_only_if_it_made_two_sockets_per_connection() {
        assert!(two_sockets_each(2000, 1000));
        assert!(two_sockets_each(2040, 1000), "a few strays are within 5%");
        assert!(
            !two_sockets_each(2400, 1000),
            "someone else opened 400 sockets"
        );
        assert!(!two_sockets_each(-500, 1000), "someone else closed sockets");
        assert!(two_sockets_each(9, 5));
        assert!(
            two_sockets_each(338, 199),
            "slabinfo's count is off by a few slabs"
        );
    }
}
