//! What the kernel says about a process and about its own memory, read from /proc.

use std::collections::BTreeMap;
use std::io;

/// A few lines of `/proc/PID/status`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProcStatus {
    /// `VmRSS`: resident set in bytes, the same counter the step's own meter reads (statm).
    pub rss_bytes: u64,
    /// `Threads`.
    pub threads: usize,
}

/// The step's resident set and threads: its own, or, for a supervisor of worker processes
/// (step08), the sums over its workers, which hold the connections; the same processes
/// its memory line counts.
pub fn status(pid: u32) -> io::Result<ProcStatus> {
    let workers = children_of(pid);
    if workers.is_empty() {
        return own_status(pid);
    }
    let mut sum = ProcStatus {
        rss_bytes: 0,
        threads: 0,
    };
    for worker in workers {
        // A worker that exits between the listing and the read is simply not counted.
        if let Ok(status) = own_status(worker) {
            sum.rss_bytes += status.rss_bytes;
            sum.threads += status.threads;
        }
    }
    Ok(sum)
}

/// The pids whose parent is `parent` (field 4 of /proc/PID/stat).
pub fn children_of(parent: u32) -> Vec<u32> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|stat| {
                let after_name = &stat[stat.rfind(')').map_or(0, |i| i + 1)..];
                after_name.split_whitespace().nth(1) == Some(parent.to_string().as_str())
            })
        })
        .collect()
}

/// One process's own resident set and threads.
pub fn own_status(pid: u32) -> io::Result<ProcStatus> {
    parse_status(&std::fs::read_to_string(format!("/proc/{pid}/status"))?).ok_or_else(|| {
        io::Error::new(
            io::ErrorKind::InvalidData,
            "no VmRSS/Threads in /proc/PID/status",
        )
    })
}

fn parse_status(text: &str) -> Option<ProcStatus> {
    let field = |name: &str| -> Option<u64> {
        let line = text.lines().find_map(|line| line.strip_prefix(name))?;
        line.split_whitespace().next()?.parse().ok()
    };
    Some(ProcStatus {
        rss_bytes: field("VmRSS:")? * 1024,
        threads: field("Threads:")? as usize,
    })
}

/// User plus system CPU time the process and its workers (step08's) have used, in seconds.
pub fn cpu_seconds(pid: u32) -> io::Result<f64> {
    let own = own_cpu_seconds(pid)?;
    Ok(own
        + children_of(pid)
            .into_iter()
            .filter_map(|w| own_cpu_seconds(w).ok())
            .sum::<f64>())
}

/// User plus system CPU time one process has used, in seconds (`/proc/PID/stat`).
fn own_cpu_seconds(pid: u32) -> io::Result<f64> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    // SAFETY: sysconf only reads a configuration value; no pointers involved.
    let ticks_per_second = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    parse_cpu_ticks(&text)
        .filter(|_| ticks_per_second > 0)
        .map(|ticks| ticks as f64 / ticks_per_second as f64)
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, "unexpected /proc/PID/stat"))
}

/// utime + stime, fields 14 and 15 of `/proc/PID/stat`. The command name (field 2) is in
/// parentheses and may hold spaces, so count from the last `)`.
fn parse_cpu_ticks(stat: &str) -> Option<u64> {
    let after_name = &stat[stat.rfind(')')? + 1..];
    let fields: Vec<&str> = after_name.split_whitespace().collect();
    // after_name starts at field 3 (state): utime is field 14, index 11 here.
    Some(fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?)
}

/// The slab caches that grow with each TCP connection, on either end of it.
///
/// - `TCP`/`TCPv6`: the socket itself (`struct tcp_sock`, ~2.3 KB);
/// - `sock_inode_cache`: the socket's inode (every socket is a file);
/// - `filp`, `dentry`: its open file and directory entry;
/// - `request_sock_TCP`, `tw_sock_TCP` (and v6): half-open and TIME_WAIT connections;
/// - `eventpoll_epi`: an fd's registration in an epoll set (the step's, and loadgen's own);
/// - `task_struct`: one per thread, for the thread-per-connection step.
///
/// Left out: `kmalloc-*` and `skbuff_*`, shared with everything else the kernel does (an
/// idle connection holds no packet buffers once its echo was read), so their deltas are
/// mostly other processes' noise. The kernel merges some small caches of equal size (see
/// /sys/kernel/slab), so `eventpoll_epi`, `filp` and `dentry` may carry others' objects too.
pub const SOCKET_CACHES: &[&str] = &[
    "TCP",
    "TCPv6",
    "request_sock_TCP",
    "request_sock_TCPv6",
    "tw_sock_TCP",
    "tw_sock_TCPv6",
    "sock_inode_cache",
    "filp",
    "dentry",
    "eventpoll_epi",
    "task_struct",
];

/// Bytes in use in each of [`SOCKET_CACHES`], plus the kernel stacks of all threads.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KernelMemory {
    /// Cache name → active objects × object size.
    pub caches: BTreeMap<String, u64>,
    /// `KernelStack` from /proc/meminfo: 16 KiB per thread on x86-64, outside any slab.
    pub kernel_stacks: u64,
    /// TCP sockets in use (objects in the `TCP` and `TCPv6` caches): a loopback connection
    /// adds exactly two, so a different count means another process was at work too.
    pub tcp_sockets: u64,
}

impl KernelMemory {
    /// Read /proc/slabinfo (root only) and /proc/meminfo; `None` where unreadable.
    pub fn read() -> Option<KernelMemory> {
        let slabinfo = std::fs::read_to_string("/proc/slabinfo").ok()?;
        let meminfo = std::fs::read_to_string("/proc/meminfo").ok()?;
        Some(KernelMemory {
            caches: parse_slabinfo(&slabinfo, SOCKET_CACHES),
            kernel_stacks: parse_kernel_stack(&meminfo)?,
            tcp_sockets: active_objects(&slabinfo, &["TCP", "TCPv6"]),
        })
    }

    /// Wait (at most `limit`) until the figures stop moving: sockets and threads of the
    /// previous step are freed after it exits, some after an RCU grace period, and that
    /// shrinking must not be counted against the next step.
    pub fn settle(limit: std::time::Duration) {
        let deadline = std::time::Instant::now() + limit;
        let mut last = KernelMemory::read().map(|k| k.total());
        while let Some(previous) = last {
            std::thread::sleep(std::time::Duration::from_millis(100));
            let now = KernelMemory::read().map(|k| k.total());
            let steady = now.is_some_and(|now| now.abs_diff(previous) < 64 * 1024);
            if steady || std::time::Instant::now() >= deadline {
                return;
            }
            last = now;
        }
    }

    /// Bytes in all the caches and kernel stacks together.
    pub fn total(&self) -> u64 {
        self.caches.values().sum::<u64>() + self.kernel_stacks
    }

    /// What grew between `self` (before) and `after`, per cache and in total. Signed: the
    /// machine is shared, and another process may free more than we allocate.
    pub fn growth(&self, after: &KernelMemory) -> (BTreeMap<String, i64>, i64) {
        let mut growth: BTreeMap<String, i64> = after
            .caches
            .iter()
            .map(|(name, &bytes)| {
                (
                    name.clone(),
                    bytes as i64 - self.caches.get(name).copied().unwrap_or(0) as i64,
                )
            })
            .collect();
        growth.insert(
            "KernelStack".into(),
            after.kernel_stacks as i64 - self.kernel_stacks as i64,
        );
        let total = growth.values().sum();
        (growth, total)
    }
}

/// `name active_objs num_objs objsize ...` lines → active_objs × objsize for the wanted names.
fn parse_slabinfo(text: &str, wanted: &[&str]) -> BTreeMap<String, u64> {
    text.lines()
        .filter_map(|line| {
            let mut fields = line.split_whitespace();
            let name = fields.next()?;
            if !wanted.contains(&name) {
                return None;
            }
            let active: u64 = fields.next()?.parse().ok()?;
            let _total = fields.next()?;
            let size: u64 = fields.next()?.parse().ok()?;
            Some((name.to_string(), active * size))
        })
        .collect()
}

/// Objects in use in the named caches.
fn active_objects(text: &str, wanted: &[&str]) -> u64 {
    text.lines()
        .filter_map(|line| {
            let mut fields = line.split_whitespace();
            wanted
                .contains(&fields.next()?)
                .then(|| fields.next()?.parse::<u64>().ok())?
        })
        .sum()
}

fn parse_kernel_stack(meminfo: &str) -> Option<u64> {
    let line = meminfo
        .lines()
        .find_map(|line| line.strip_prefix("KernelStack:"))?;
    Some(line.split_whitespace().next()?.parse::<u64>().ok()? * 1024)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A process with children is counted by them (a supervisor by its workers), not itself.
    #[test]
    fn a_supervisor_is_counted_by_its_workers() {
        let mut sleeper = std::process::Command::new("sleep")
            .arg("10")
            .spawn()
            .unwrap();
        std::thread::sleep(std::time::Duration::from_millis(100));
        let ours = status(std::process::id()).unwrap();
        let its = own_status(sleeper.id()).unwrap();
        let _ = sleeper.kill();
        let _ = sleeper.wait();
        assert_eq!(ours, its, "this test process's only child is the sleeper");
    }

    /// /proc/PID/status yields the resident set in bytes and the thread count.
    #[test]
    fn status_gives_rss_in_bytes_and_threads() {
        let text = "Name:\tstep05-epoll\nVmPeak:\t  20000 kB\nVmRSS:\t    2048 kB\nThreads:\t1\n";
        assert_eq!(
            parse_status(text),
            Some(ProcStatus {
                rss_bytes: 2048 * 1024,
                threads: 1
            })
        );
        assert_eq!(parse_status("Name:\tx\n"), None);
        let own = own_status(std::process::id()).unwrap();
        assert!(own.rss_bytes > 0 && own.threads >= 1);
    }

    /// CPU ticks in /proc/PID/stat are found even when the process name contains `) `.
    #[test]
    fn cpu_ticks_are_counted_after_the_parenthesised_name() {
        let stat = "42 (odd name) 9) S 1 42 42 0 -1 4194560 100 0 0 0 250 50 0 0 20 0 1 0 1 1 1";
        assert_eq!(parse_cpu_ticks(stat), Some(300));
        assert!(cpu_seconds(std::process::id()).unwrap() >= 0.0);
    }

    /// A socket cache's bytes are its active objects times their size; kmalloc caches are left out.
    #[test]
    fn slabinfo_bytes_are_active_objects_times_size() {
        let text = "slabinfo - version: 2.1\n\
                    # name <active_objs> <num_objs> <objsize> ...\n\
                    TCP 26 26 2368 13 8 : tunables 0 0 0 : slabdata 2 2 0\n\
                    kmalloc-64 5000 5000 64 64 1 : tunables 0 0 0 : slabdata 1 1 0\n\
                    sock_inode_cache 76 78 832 39 8 : tunables 0 0 0 : slabdata 2 2 0\n";
        let caches = parse_slabinfo(text, SOCKET_CACHES);
        assert_eq!(caches.get("TCP"), Some(&(26 * 2368)));
        assert_eq!(caches.get("sock_inode_cache"), Some(&(76 * 832)));
        assert!(
            !caches.contains_key("kmalloc-64"),
            "kmalloc caches are left out"
        );
    }

    /// Kernel memory growth may be negative, and includes kernel stacks.
    #[test]
    fn growth_is_signed_and_counts_kernel_stacks() {
        let before = KernelMemory {
            caches: [("TCP".to_string(), 1000)].into(),
            kernel_stacks: 16384,
            tcp_sockets: 2,
        };
        let after = KernelMemory {
            caches: [("TCP".to_string(), 600)].into(),
            kernel_stacks: 32768,
            tcp_sockets: 1,
        };
        let (by_cache, total) = before.growth(&after);
        assert_eq!(by_cache["TCP"], -400);
        assert_eq!(by_cache["KernelStack"], 16384);
        assert_eq!(total, 16384 - 400);
        assert_eq!(
            parse_kernel_stack("MemTotal: 1 kB\nKernelStack:     1320 kB\n"),
            Some(1320 * 1024)
        );
    }
}
