//! Kernel memory per connection, from chunks of connections opened with a look at the
//! slab caches around each.

use std::collections::BTreeMap;
use std::sync::OnceLock;

use crate::procfs::KernelMemory;
use crate::schema::{KernelFigure, StepResult};

/// Fewer connections than this, and the kernel figure per connection is mostly noise.
pub const MIN_CONNS_FOR_KERNEL: usize = 100;

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
        if !two_sockets_each(new_sockets, added, tcp_slab_slack()) {
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
/// each (loadgen's end and the step's), give or take 5% or `slack` (see [`tcp_slab_slack`]).
fn two_sockets_each(new_sockets: i64, conns: usize, slack: i64) -> bool {
    let expected = 2 * conns as i64;
    (new_sockets - expected).abs() <= (expected / 20).max(slack)
}

/// How far slabinfo's count of TCP sockets in use may move between two readings while no
/// socket opens or closes, from how SLUB counts (mm/slub.c): an object counts as free only
/// in a slab on a node's partial list. The free objects of the slabs each CPU keeps at hand
/// count as in use: the slab it allocates from (up to `objs_per_slab` free), and its partial
/// list, which SLUB sizes to hold `cpu_partial` objects in slabs it assumes half full, so
/// ⌈2 × cpu_partial / objs_per_slab⌉ slabs, each of which may be wholly free. Two readings
/// can each hide anything from none to all of that, so their difference is off by as much.
///
/// The connections are IPv4 (127.0.0.1), so the `TCP` cache's figures are read from
/// /sys/kernel/slab/TCP, once, with the possible CPUs from /sys/devices/system/cpu/possible.
/// Where they cannot be read: [`FALLBACK_SLAB`], and the CPUs this process may run on.
fn tcp_slab_slack() -> i64 {
    static SLACK: OnceLock<i64> = OnceLock::new();
    *SLACK.get_or_init(|| {
        let (objs_per_slab, cpu_partial) = tcp_slab().unwrap_or(FALLBACK_SLAB);
        let cpus = possible_cpus()
            .or_else(|| Some(std::thread::available_parallelism().ok()?.get() as u64))
            .unwrap_or(1);
        slack(cpus, objs_per_slab, cpu_partial)
    })
}

/// `objs_per_slab` and `cpu_partial` of the `TCP` slab cache, from /sys/kernel/slab/TCP.
fn tcp_slab() -> Option<(u64, u64)> {
    let read = |file: &str| -> Option<u64> {
        std::fs::read_to_string(format!("/sys/kernel/slab/TCP/{file}"))
            .ok()?
            .trim()
            .parse()
            .ok()
    };
    read("objs_per_slab").zip(read("cpu_partial"))
}

/// The CPUs that may ever run (each has its per-CPU slabs), from /sys.
fn possible_cpus() -> Option<u64> {
    count_cpus(&std::fs::read_to_string("/sys/devices/system/cpu/possible").ok()?)
}

/// `objs_per_slab` and `cpu_partial` of the `TCP` cache on x86-64 with SLUB's defaults
/// (a 2.3 KiB `tcp_sock`, 13 to an order-3 slab; 24 objects on the per-CPU partial list for
/// objects of 1 to 4 KiB): what this machine's /sys/kernel/slab/TCP says, used where a
/// kernel does not show it.
const FALLBACK_SLAB: (u64, u64) = (13, 24);

/// Objects that `cpus` CPUs may hold free while slabinfo counts them in use: per CPU, the
/// slab being allocated from and ⌈2 × cpu_partial / objs_per_slab⌉ partial slabs, whole.
fn slack(cpus: u64, objs_per_slab: u64, cpu_partial: u64) -> i64 {
    let partial_slabs = (2 * cpu_partial).div_ceil(objs_per_slab.max(1));
    (cpus * objs_per_slab * (1 + partial_slabs)) as i64
}

/// How many CPUs a list such as `0-3,8-11` (the kernel's form in /sys) names.
fn count_cpus(list: &str) -> Option<u64> {
    list.trim().split(',').try_fold(0, |count, range| {
        let (first, last) = range.split_once('-').unwrap_or((range, range));
        let (first, last): (u64, u64) = (first.parse().ok()?, last.parse().ok()?);
        Some(count + last.checked_sub(first)? + 1)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A measurement counts only if the kernel gained about two TCP sockets per new connection.
    #[test]
    fn a_chunk_counts_only_if_it_made_two_sockets_per_connection() {
        let slack = slack(2, 13, 24);
        assert!(two_sockets_each(2000, 1000, slack));
        assert!(
            two_sockets_each(2040, 1000, slack),
            "a few strays are within 5%"
        );
        assert!(
            !two_sockets_each(2400, 1000, slack),
            "someone else opened 400 sockets"
        );
        assert!(
            !two_sockets_each(-500, 1000, slack),
            "someone else closed sockets"
        );
        assert!(two_sockets_each(9, 5, slack));
        assert!(
            two_sockets_each(338, 199, slack),
            "slabinfo's count is off by a few slabs"
        );
        assert!(
            !two_sockets_each(338, 199, 0),
            "without slack, 60 sockets short is more than 5%"
        );
    }

    /// The slack is, per CPU, the slab it allocates from plus its partial list as SLUB sizes
    /// it (twice `cpu_partial` objects, in whole slabs), all possibly free. Breaks if the
    /// slab being allocated from, the CPUs, or the rounding up to whole slabs is left out.
    #[test]
    fn slack_is_every_slab_each_cpu_keeps_at_hand() {
        // This machine's TCP cache: 13 a slab, cpu_partial 24 → ⌈48 / 13⌉ = 4 partial slabs.
        assert_eq!(slack(1, 13, 24), 13 * (1 + 4));
        assert_eq!(slack(2, 13, 24), 2 * 13 * 5);
        // Without per-CPU partial lists (CONFIG_SLUB_CPU_PARTIAL off): one slab per CPU.
        assert_eq!(slack(4, 13, 0), 4 * 13);
        // 2 × 24 / 16 is exactly 3 slabs, no rounding.
        assert_eq!(slack(1, 16, 24), 16 * 4);
    }

    /// /sys writes CPU sets as comma-separated ranges; anything else is not a count.
    #[test]
    fn cpu_lists_count_every_cpu_in_every_range() {
        assert_eq!(count_cpus("0-1\n"), Some(2));
        assert_eq!(count_cpus("0\n"), Some(1));
        assert_eq!(count_cpus("0-3,8-11"), Some(8));
        assert_eq!(count_cpus("0,2,4-5"), Some(4));
        assert_eq!(count_cpus("3-1"), None);
        assert_eq!(count_cpus(""), None);
    }

    /// Where /sys shows the TCP cache (SLUB, root or not), its figures and the CPUs are read
    /// from it rather than the fallback. Breaks if a file name or the CPU list is misread.
    #[test]
    fn slab_figures_are_read_from_this_kernel() {
        let Ok(per_slab) = std::fs::read_to_string("/sys/kernel/slab/TCP/objs_per_slab") else {
            eprintln!("skipped: no /sys/kernel/slab/TCP on this kernel");
            return;
        };
        let (objs_per_slab, _cpu_partial) =
            tcp_slab().expect("TCP's objs_per_slab and cpu_partial");
        assert_eq!(objs_per_slab, per_slab.trim().parse::<u64>().unwrap());
        let cpus = possible_cpus().expect("/sys/devices/system/cpu/possible");
        let usable = std::thread::available_parallelism().unwrap().get() as u64;
        assert!(cpus >= usable, "{cpus} possible CPUs, {usable} usable");
    }
}
