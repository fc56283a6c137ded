//! Where a burst's time goes, and the least it could take. Around the burst, /proc says how
//! much CPU time each side used: the server's workers, loadgen's processes, the kernel's
//! `ksoftirqd` threads, and the machine as a whole. On `cores` cores busy with nothing
//! else, the last echo cannot come back before (server CPU + loadgen CPU) ÷ cores: the
//! burst's floor, printed beside the last echo measured.

use std::time::{Duration, Instant};

use super::figures::BurstCost;
use crate::procfs;

/// The processes on each side of the burst.
pub struct Sides {
    /// The server's workers.
    pub server: Vec<u32>,
    /// loadgen's first process: its children's CPU time is counted with its own.
    pub loadgen: u32,
}

/// CPU time used so far, by each side and by the machine.
pub struct Reading {
    at: Instant,
    server: Duration,
    loadgen: Duration,
    ksoftirqd: Duration,
    machine_busy: Option<Duration>,
    machine_softirq: Option<Duration>,
}

impl Sides {
    /// What each side, and the machine, has used so far.
    pub fn read(&self) -> Reading {
        let sum = |pids: &[u32]| -> Duration {
            pids.iter().filter_map(|&p| common::cpu_time(p).ok()).sum()
        };
        let at = Instant::now();
        let server = sum(&self.server);
        let loadgen = procfs::cpu_time(self.loadgen).unwrap_or_default();
        let ksoftirqd = sum(&ksoftirqd_threads());
        let (machine_busy, machine_softirq) = procfs::machine_cpu_and_softirq_time().ok().unzip();
        Reading {
            at,
            server,
            loadgen,
            ksoftirqd,
            machine_busy,
            machine_softirq,
        }
    }
}

/// What the burst between `before` and `after` cost, for `messages` echoed on `cores`.
pub fn cost(before: &Reading, after: &Reading, messages: usize, cores: usize) -> BurstCost {
    let seconds = |b: Duration, a: Duration| a.saturating_sub(b).as_secs_f64();
    let server = seconds(before.server, after.server);
    let loadgen = seconds(before.loadgen, after.loadgen);
    let ksoftirqd = seconds(before.ksoftirqd, after.ksoftirqd);
    let machine = |pick: fn(&Reading) -> Option<Duration>| {
        pick(before).zip(pick(after)).map(|(b, a)| seconds(b, a))
    };
    let busy = machine(|r| r.machine_busy).unwrap_or(0.0);
    let per_msg = |cpu: f64| cpu * 1e6 / messages.max(1) as f64;
    BurstCost {
        window_s: after.at.duration_since(before.at).as_secs_f64(),
        server_cpu_s: server,
        loadgen_cpu_s: loadgen,
        server_us_per_msg: per_msg(server),
        loadgen_us_per_msg: per_msg(loadgen),
        softirq_s: machine(|r| r.machine_softirq).unwrap_or(0.0),
        ksoftirqd_s: ksoftirqd,
        others_s: busy - server - loadgen - ksoftirqd,
        cores,
        floor_s: floor(server, loadgen, cores),
    }
}

/// The least time a burst can take: all the CPU time it needs, spread over every core.
pub fn floor(server_cpu_s: f64, loadgen_cpu_s: f64, cores: usize) -> f64 {
    (server_cpu_s + loadgen_cpu_s) / cores.max(1) as f64
}

/// The kernel's `ksoftirqd/N` threads, one per CPU: softirq work that could not run in the
/// process that raised it (too much of it at once) runs there.
fn ksoftirqd_threads() -> Vec<u32> {
    common::pids_where("comm", |comm| comm.starts_with("ksoftirqd/"))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The floor is both sides' CPU time shared over the cores: 8 s of server and 10 s of
    /// loadgen on two cores cannot take less than 9 s.
    #[test]
    fn the_floor_is_both_sides_cpu_over_the_cores() {
        assert_eq!(floor(8.0, 10.0, 2), 9.0);
        assert_eq!(floor(8.0, 10.0, 0), 18.0, "no cores read: counted as one");
    }

    /// A reading of this process's own busy loop counts its CPU time on the side it is on,
    /// and the cost per message divides it by the messages.
    #[test]
    fn a_side_is_charged_the_cpu_time_it_used() {
        let sides = Sides {
            server: vec![std::process::id()],
            // No loadgen: a pid no process has (Linux's stay below 2^22; not -1 as
            // `pid_t`, which the CPU clock takes for this process).
            loadgen: 1 << 22,
        };
        let before = sides.read();
        let spin = Instant::now();
        while spin.elapsed() < Duration::from_millis(200) {
            std::hint::black_box(0);
        }
        let after = sides.read();
        let cost = cost(&before, &after, 1000, 2);
        assert!(cost.server_cpu_s >= 0.1, "{cost:?}");
        assert_eq!(cost.loadgen_cpu_s, 0.0, "{cost:?}");
        assert!(
            (cost.server_us_per_msg - cost.server_cpu_s * 1000.0).abs() < 1e-6,
            "{cost:?}"
        );
        assert_eq!(cost.floor_s, cost.server_cpu_s / 2.0, "{cost:?}");
    }
}
