//! What this machine allows, and the largest N up to the one asked for that fits in it:
//! `report --million` checks before it starts, runs what fits, and says what is short.

use serde::Serialize;

/// Kernel memory per loopback connection, both ends, as measured on this kind of machine
/// (~8–9 KiB: two sockets, their inodes, files, epoll entries). Used only to check, before
/// starting, that N fits in free memory; the run measures the real figure.
const KERNEL_PER_PAIR: u64 = 9 * 1024;
/// User space per connection in the server and loadgen together, generously.
const USER_PER_CONN: u64 = 1024;
/// Memory left to everything else on the machine.
const MEMORY_MARGIN: u64 = 2 << 30;
/// Fds a step08 worker or loadgen child keeps for itself (listener, pipes, epoll, stdio…).
const FDS_KEPT: u64 = 100;
/// A worker gets this share of its fd limit on average: the kernel's hash spreads
/// connections evenly only on average, and no worker may reach its limit.
const WORKER_FILL: f64 = 0.93;

/// What this machine allows, read before starting.
#[derive(Debug, Clone, Serialize)]
pub struct Machine {
    pub mem_available_bytes: u64,
    pub file_max: u64,
    pub files_open: u64,
    pub nr_open: u64,
    pub fd_hard_limit: u64,
    pub port_range: (u64, u64),
    pub netdev_max_backlog: u64,
    pub cores: usize,
}

impl Machine {
    pub fn read() -> Result<Machine, String> {
        let sys = |path: &str| -> Result<String, String> {
            std::fs::read_to_string(path).map_err(|err| format!("cannot read {path}: {err}"))
        };
        let number = |text: &str, path: &str| -> Result<u64, String> {
            text.split_whitespace()
                .next()
                .and_then(|n| n.parse().ok())
                .ok_or_else(|| format!("unexpected {path}: {text}"))
        };
        let meminfo = sys("/proc/meminfo")?;
        let mem_available_kib = meminfo
            .lines()
            .find_map(|l| l.strip_prefix("MemAvailable:"))
            .and_then(|l| l.split_whitespace().next()?.parse::<u64>().ok())
            .ok_or("no MemAvailable in /proc/meminfo")?;
        let ports = sys("/proc/sys/net/ipv4/ip_local_port_range")?;
        let ports: Vec<u64> = ports
            .split_whitespace()
            .filter_map(|p| p.parse().ok())
            .collect();
        let file_nr = sys("/proc/sys/fs/file-nr")?;
        let limit = common::raise_fd_limit().map_err(|err| format!("getrlimit: {err}"))?;
        Ok(Machine {
            mem_available_bytes: mem_available_kib * 1024,
            file_max: number(&sys("/proc/sys/fs/file-max")?, "file-max")?,
            files_open: number(&file_nr, "file-nr")?,
            nr_open: number(&sys("/proc/sys/fs/nr_open")?, "nr_open")?,
            fd_hard_limit: limit.hard,
            port_range: (
                ports.first().copied().unwrap_or(0),
                ports.get(1).copied().unwrap_or(0),
            ),
            netdev_max_backlog: number(
                &sys("/proc/sys/net/core/netdev_max_backlog")?,
                "netdev_max_backlog",
            )?,
            cores: std::thread::available_parallelism().map_or(1, |n| n.get()),
        })
    }
}

/// How many connections to run, and why not more.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Fit {
    pub conns: usize,
    pub workers: usize,
    /// What was short, one sentence each; empty when all asked for fits.
    pub short: Vec<String>,
}

/// The largest N up to `wanted` that this machine holds: kernel and user memory within
/// what is available, two files per connection within fs.file-max, and enough worker
/// processes that each stays under its own open-file limit.
pub fn fit(wanted: usize, m: &Machine) -> Fit {
    let mut conns = wanted;
    let mut short = Vec::new();
    let per_conn = KERNEL_PER_PAIR + USER_PER_CONN;
    let by_memory = (m.mem_available_bytes.saturating_sub(MEMORY_MARGIN) / per_conn) as usize;
    if by_memory < conns {
        short.push(format!(
            "memory: {wanted} connections need ~{} GiB ({} KiB each in the kernel for both \
             ends, plus user space) and {} GiB are available beyond a 2 GiB margin: {by_memory} fit",
            (wanted as u64 * per_conn) >> 30,
            KERNEL_PER_PAIR / 1024,
            m.mem_available_bytes.saturating_sub(MEMORY_MARGIN) >> 30,
        ));
        conns = by_memory;
    }
    // Both ends are files: two per connection, system-wide.
    let by_files = (m.file_max.saturating_sub(m.files_open + 100_000) / 2) as usize;
    if by_files < conns {
        short.push(format!(
            "files: fs.file-max = {} allows {by_files} more connections (two files each); \
             raise it with `sysctl fs.file-max=N`",
            m.file_max
        ));
        conns = by_files;
    }
    let per_process = m.fd_hard_limit.min(m.nr_open).saturating_sub(FDS_KEPT);
    if per_process == 0 {
        short.push(format!(
            "the open-file limit ({}) leaves no room",
            m.fd_hard_limit
        ));
        conns = 0;
    }
    let per_worker = (per_process as f64 * WORKER_FILL) as usize;
    let workers = conns.div_ceil(per_worker.max(1)).max(1);
    Fit {
        conns,
        workers,
        short,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn machine(gib: u64) -> Machine {
        Machine {
            mem_available_bytes: gib << 30,
            file_max: 2_466_170,
            files_open: 2_000,
            nr_open: 1_048_576,
            fd_hard_limit: 20_000,
            port_range: (32768, 60999),
            netdev_max_backlog: 1000,
            cores: 2,
        }
    }

    /// With 22 GiB free a million fits, in workers that each stay under 20 000 files.
    #[test]
    fn a_million_fits_in_22_gib_over_workers_under_their_limit() {
        let fit = fit(1_000_000, &machine(22));
        assert_eq!((fit.conns, fit.short.len()), (1_000_000, 0), "{fit:?}");
        assert!(1_000_000 / fit.workers < 19_900, "{fit:?}");
        assert!((50..=60).contains(&fit.workers), "{fit:?}");
    }

    /// Short of memory, the largest N that fits is run, and the message says what is short.
    #[test]
    fn short_of_memory_runs_what_fits_and_says_why() {
        let fit = fit(1_000_000, &machine(8));
        assert!(fit.conns < 1_000_000 && fit.conns > 400_000, "{fit:?}");
        assert!(fit.short[0].starts_with("memory"), "{fit:?}");
        let mut few_files = machine(22);
        few_files.file_max = 500_000;
        let fit = super::fit(1_000_000, &few_files);
        assert!(
            fit.conns < 250_000 && fit.short[0].contains("fs.file-max"),
            "{fit:?}"
        );
    }
}
