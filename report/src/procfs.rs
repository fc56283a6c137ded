//! What the kernel says about a step (its resident set, threads and CPU time, read with
//! `common`'s readers, the ones the steps' meter uses, and which of its processes holds a
//! connection) and about its own memory (/proc/slabinfo and /proc/meminfo).

use std::collections::{BTreeMap, HashMap};
use std::io;
use std::net::SocketAddrV4;
use std::time::Duration;

use common::ProcStatus;

/// The step's resident set and thread count: its own, or, for a supervisor of worker
/// processes (step08), the sums over its workers, which hold the connections (the same
/// processes its memory line counts). The one place the report reads them.
pub fn status(pid: u32) -> io::Result<ProcStatus> {
    ProcStatus::read_serving(pid)
}

/// The CPU time the step has used so far (see [`common::cpu_time`]), its workers' included;
/// the one place the report reads it.
pub fn cpu_time(pid: u32) -> io::Result<Duration> {
    let workers = common::children_of(pid)
        .into_iter()
        .filter_map(|w| common::cpu_time(w).ok());
    Ok(common::cpu_time(pid)? + workers.sum::<Duration>())
}

/// CPU time the whole machine was not idle, from /proc/stat: user, nice, system, interrupts
/// (hard and soft) and steal (time the hypervisor gave our CPUs to someone else). The
/// interrupts count because a process's CPU clock counts them too, when they ran in its
/// context: loopback TCP delivers most packets there, so leaving them out here made a
/// quiet machine read −0.3 CPUs of "others". Their softirq work in `ksoftirqd` is counted
/// as someone else's, so the error is on the side of saying busy.
pub fn machine_cpu_time() -> io::Result<Duration> {
    from_ticks(busy_ticks(&std::fs::read_to_string("/proc/stat")?)?)
}

/// [`machine_cpu_time`], and of it the time the whole machine spent in softirqs: packets
/// received, loopback TCP's among them. Most of that runs in the process that sent the
/// packet, and is counted in that process's CPU time too; what runs in `ksoftirqd` is
/// counted there. Both from one reading of /proc/stat, so of one moment.
pub fn machine_cpu_and_softirq_time() -> io::Result<(Duration, Duration)> {
    let stat = std::fs::read_to_string("/proc/stat")?;
    let busy = from_ticks(busy_ticks(&stat)?)?;
    let softirq = from_ticks(cpu_ticks(&stat)?[6])?;
    Ok((busy, softirq))
}

/// Clock ticks as time.
fn from_ticks(ticks: u64) -> io::Result<Duration> {
    // SAFETY: sysconf only reads a constant of the system.
    let per_second = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if per_second <= 0 {
        return Err(io::Error::other("sysconf(_SC_CLK_TCK) failed"));
    }
    Ok(Duration::from_secs_f64(ticks as f64 / per_second as f64))
}

/// The clock ticks of /proc/stat's `cpu` line not idle (nor waiting for I/O).
fn busy_ticks(stat: &str) -> io::Result<u64> {
    let ticks = cpu_ticks(stat)?;
    // user, nice, system, idle, iowait, irq, softirq, steal, in clock ticks.
    Ok(ticks[0] + ticks[1] + ticks[2] + ticks[5] + ticks[6] + ticks[7])
}

/// The first eight fields of /proc/stat's `cpu` line (user, nice, system, idle, iowait,
/// irq, softirq, steal), in clock ticks.
fn cpu_ticks(stat: &str) -> io::Result<[u64; 8]> {
    let fields = stat
        .lines()
        .next()
        .and_then(|line| line.strip_prefix("cpu "))
        .map(|rest| {
            rest.split_whitespace()
                .map(str::parse::<u64>)
                .collect::<Vec<_>>()
        })
        .ok_or_else(|| io::Error::other("/proc/stat has no `cpu` line"))?;
    let ticks = |i: usize| -> io::Result<u64> {
        match fields.get(i) {
            Some(Ok(n)) => Ok(*n),
            _ => Err(io::Error::other(
                "/proc/stat: a `cpu` field is missing or not a number",
            )),
        }
    };
    let mut all = [0; 8];
    for (i, tick) in all.iter_mut().enumerate() {
        *tick = ticks(i)?;
    }
    Ok(all)
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

/// The slab caches an io_uring request takes while it waits, one object each; a multishot
/// receive armed on an idle connection (step09's) is one, as read on Linux 6.18:
///
/// - `io_kiocb`: the request itself (256 B), io_uring's own cache;
/// - `kmalloc-512`: its async data (`struct io_async_msghdr`), kept between two shots;
/// - `kmalloc-96`: its poll entry (`struct async_poll`), on the socket's wait queue.
///
/// The kmalloc caches are shared with everything else the kernel does, so their deltas
/// carry others' noise: counted where a million requests dwarf it (`--million`), not in
/// the report's 10 000.
pub const URING_CACHES: &[&str] = &["io_kiocb", "kmalloc-512", "kmalloc-96"];

/// Bytes in use in each of [`SOCKET_CACHES`], plus the kernel stacks of all threads.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KernelMemory {
    /// Cache name → active objects × object size.
    pub caches: BTreeMap<String, u64>,
    /// `KernelStack` from /proc/meminfo: 16 KiB per thread on x86-64, outside any slab.
    pub kernel_stacks: u64,
    /// TCP sockets in use (objects in the `TCP` and `TCPv6` caches): a loopback connection
    /// adds two, so a count far from that (beyond slabinfo's per-CPU slack) means another
    /// process was at work too.
    pub tcp_sockets: u64,
}

impl KernelMemory {
    /// Read /proc/slabinfo (root only) and /proc/meminfo; `None` where unreadable.
    pub fn read() -> Option<KernelMemory> {
        KernelMemory::read_caches(SOCKET_CACHES)
    }

    /// [`KernelMemory::read`], for the slab caches named.
    pub fn read_caches(caches: &[&str]) -> Option<KernelMemory> {
        let slabinfo = std::fs::read_to_string("/proc/slabinfo").ok()?;
        let meminfo = std::fs::read_to_string("/proc/meminfo").ok()?;
        Some(KernelMemory {
            caches: parse_slabinfo(&slabinfo, caches),
            kernel_stacks: parse_kernel_stack(&meminfo)?,
            tcp_sockets: active_objects(&slabinfo, &["TCP", "TCPv6"]),
        })
    }

    /// The same caches as `self`, read now.
    pub fn read_again(&self) -> Option<KernelMemory> {
        let names: Vec<&str> = self.caches.keys().map(String::as_str).collect();
        KernelMemory::read_caches(&names)
    }

    /// The same caches as `self`, read once they stop moving (at most `limit` from now):
    /// objects freed a moment ago, by work the kernel finishes after the call that asked
    /// for it (an io_uring instance's requests go when its teardown runs, on a kernel
    /// thread), must not be counted as held.
    pub fn read_settled(&self, limit: std::time::Duration) -> Option<KernelMemory> {
        KernelMemory::read_when_steady(limit, || self.read_again())
    }

    /// Wait (at most `limit`) until the figures stop moving: sockets and threads of the
    /// previous step are freed after it exits, some after an RCU grace period, and that
    /// shrinking must not be counted against the next step.
    pub fn settle(limit: std::time::Duration) {
        KernelMemory::read_when_steady(limit, KernelMemory::read);
    }

    /// `read`, every 100 ms, until two readings in a row are within 64 KiB of each other
    /// or `limit` has passed: the last reading, or `None` once one fails.
    fn read_when_steady(
        limit: std::time::Duration,
        read: impl Fn() -> Option<KernelMemory>,
    ) -> Option<KernelMemory> {
        let deadline = std::time::Instant::now() + limit;
        let mut last = read()?;
        loop {
            std::thread::sleep(std::time::Duration::from_millis(100));
            let now = read()?;
            if now.total().abs_diff(last.total()) < 64 * 1024
                || std::time::Instant::now() >= deadline
            {
                return Some(now);
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

/// Which of `pids` holds the server's end of each connection from `clients` to `server`
/// (IPv4): `None` for one that none of them holds. The kernel's TCP table
/// (`/proc/PID/net/tcp`, the same for every process of a network namespace) gives the
/// server's socket for each pair of addresses, by inode; a process's fds link to
/// `socket:[INODE]`. One read of each, whatever the number of clients.
pub fn socket_holders(
    pids: &[u32],
    server: SocketAddrV4,
    clients: &[SocketAddrV4],
) -> io::Result<Vec<Option<u32>>> {
    let Some(&first) = pids.first() else {
        return Ok(vec![None; clients.len()]);
    };
    let table = std::fs::read_to_string(format!("/proc/{first}/net/tcp"))?;
    let inodes = server_inodes(&table, server, clients);
    let mut holder: HashMap<&str, u32> = HashMap::new();
    for &pid in pids {
        for target in common::fd_targets(pid)? {
            let inode = target
                .strip_prefix("socket:[")
                .and_then(|i| i.strip_suffix(']'));
            if let Some(inode) = inode
                && let Some(wanted) = inodes.iter().flatten().find(|w| *w == inode)
            {
                holder.insert(wanted, pid);
            }
        }
    }
    Ok(inodes
        .iter()
        .map(|inode| holder.get(inode.as_deref()?).copied())
        .collect())
}

/// The inode of the socket whose local address is `server` and remote address is each of
/// `clients`, from a `/proc/net/tcp` table: `sl local_address rem_address st … inode`,
/// each address `HEX_IP:HEX_PORT`, the IP as the four bytes in memory order (127.0.0.1 is
/// `0100007F` on a little-endian machine).
fn server_inodes(
    table: &str,
    server: SocketAddrV4,
    clients: &[SocketAddrV4],
) -> Vec<Option<String>> {
    let hex = |addr: &SocketAddrV4| {
        format!(
            "{:08X}:{:04X}",
            u32::from_ne_bytes(addr.ip().octets()),
            addr.port()
        )
    };
    let local = hex(&server);
    let by_remote: HashMap<&str, &str> = table
        .lines()
        .skip(1)
        .filter_map(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            (fields.get(1) == Some(&local.as_str()))
                .then(|| Some((*fields.get(2)?, *fields.get(9)?)))?
        })
        .collect();
    clients
        .iter()
        .map(|client| by_remote.get(hex(client).as_str()).map(|i| i.to_string()))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The server's socket for each client is found by the pair of addresses, in the
    /// table's byte order; a client with no such socket has none.
    #[test]
    fn server_sockets_are_found_by_both_addresses() {
        let table = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode\n\
           0: 0100007F:1F90 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 100 1 0 100 0 0 10 0\n\
           1: 0100007F:1F90 0200007F:C350 01 00000000:00000000 00:00000000 00000000     0        0 201 1 0 20 4 30 10 -1\n\
           2: 0200007F:C350 0100007F:1F90 01 00000000:00000000 00:00000000 00000000     0        0 301 1 0 20 4 30 10 -1\n";
        let server = "127.0.0.1:8080".parse().unwrap();
        let client = "127.0.0.2:50000".parse().unwrap();
        let stranger = "127.0.0.3:50000".parse().unwrap();
        assert_eq!(
            server_inodes(table, server, &[client, stranger]),
            [Some("201".to_string()), None]
        );
    }

    /// This process holds the server's end of a loopback connection it accepted, and the
    /// answer names it. Breaks if the table and the fds are not matched up.
    #[test]
    fn the_holder_of_an_accepted_socket_is_found() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let client = std::net::TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let (_accepted, _) = listener.accept().unwrap();
        let v4 = |a: std::net::SocketAddr| match a {
            std::net::SocketAddr::V4(a) => a,
            _ => unreachable!("bound to 127.0.0.1"),
        };
        let holders = socket_holders(
            &[std::process::id()],
            v4(listener.local_addr().unwrap()),
            &[v4(client.local_addr().unwrap())],
        )
        .unwrap();
        assert_eq!(holders, [Some(std::process::id())]);
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

    /// Busy is everything but idle and I/O wait: interrupts and steal included.
    #[test]
    fn busy_ticks_count_all_but_idle() {
        let stat = "cpu  100 2 30 9000 40 5 60 7 0 0\ncpu0 50 1 15 4500 20 2 30 3 0 0\n";
        assert_eq!(busy_ticks(stat).unwrap(), 100 + 2 + 30 + 5 + 60 + 7);
        assert!(busy_ticks("cpu0 1 2 3 4 5 6 7 8\n").is_err());
        assert!(busy_ticks("cpu  1 2 x 4 5 6 7 8\n").is_err());
        assert!(busy_ticks("cpu  1 2 3 4 5 6 7\n").is_err());
    }
}
