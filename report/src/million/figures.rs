//! What `million.json` holds: one run per event loop, each with everything it measured.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::network::Network;
use crate::fit::Machine;

/// Echo outcome, as loadgen answers an order.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Echoes {
    pub ok: usize,
    pub lost: usize,
    pub mismatched: usize,
    pub failed: usize,
    pub p50_us: Option<f64>,
    pub p99_us: Option<f64>,
    pub max_us: Option<f64>,
    /// For a burst: from its first message sent to its last echo back, over every loadgen
    /// process (the round trips above are each message's own).
    pub last_us: Option<f64>,
}

impl Echoes {
    /// Messages sent.
    pub fn sent(&self) -> usize {
        self.ok + self.lost + self.mismatched + self.failed
    }
}

/// Where a burst's time went: the CPU time each side used while it lasted, read from /proc
/// before the order and after the answer, and the floor that sets.
#[derive(Debug, Clone, Default, Serialize)]
pub struct BurstCost {
    /// From the order to the answer (a little longer than the burst: the answer is sent
    /// after the last echo).
    pub window_s: f64,
    /// CPU time of the server's workers, and of loadgen's processes (parent and children).
    pub server_cpu_s: f64,
    pub loadgen_cpu_s: f64,
    pub server_us_per_msg: f64,
    pub loadgen_us_per_msg: f64,
    /// Softirq time the machine counted (/proc/stat): packets delivered over loopback.
    /// Most of it ran in the sending process and is in the two figures above already.
    pub softirq_s: f64,
    /// The part that ran in `ksoftirqd` instead: no one's CPU time but the kernel's.
    pub ksoftirqd_s: f64,
    /// Busy CPU time the machine counted beyond the server, loadgen and `ksoftirqd`: other
    /// processes, which shared the cores with the burst.
    pub others_s: f64,
    pub cores: usize,
    /// (server CPU + loadgen CPU) ÷ cores: with every core busy with nothing else, the
    /// last echo cannot come back sooner.
    pub floor_s: f64,
}

/// One run: step08 with one event loop against the million (or what fits).
#[derive(Debug, Clone, Default, Serialize)]
pub struct Million {
    /// The event loop in every worker: `epoll` (step06's) or `io-uring` (step09's).
    #[serde(rename = "loop")]
    pub event_loop: String,
    pub asked: usize,
    pub conns: usize,
    pub short: Vec<String>,
    pub machine: Option<Machine>,
    pub workers: usize,
    pub held: usize,
    pub failed: usize,
    pub failures: String,
    pub open_seconds: f64,
    pub open_per_second: f64,
    /// Σ workers' anonymous resident memory (`RssAnon`) − the same before the first
    /// connection, from /proc. Not VmRSS: at this scale the kernel reclaims file-backed
    /// pages (the binary's) under memory pressure, and VmRSS can shrink while the heap grows.
    pub server_user_bytes: Option<u64>,
    pub server_user_per_conn: Option<u64>,
    /// Σ workers' VmRSS before the first connection.
    pub worker_bases_bytes: Option<u64>,
    /// The supervisor's own memory line: per-conn, and its own resident set.
    pub server_line_per_conn: Option<u64>,
    pub supervisor_rss_bytes: Option<u64>,
    /// Growth of the counted slab caches while the connections opened, both ends: the
    /// socket caches and io_uring's (`procfs::URING_CACHES`), for either loop.
    pub kernel_bytes: Option<i64>,
    pub kernel_per_conn: Option<i64>,
    /// Of which io_uring's caches: a pending multishot receive per connection.
    pub uring_kernel_per_conn: Option<i64>,
    /// Each counted cache's growth per connection.
    pub kernel_per_conn_by_cache: BTreeMap<String, i64>,
    pub loadgen_processes: usize,
    pub loadgen_rss_bytes: u64,
    pub loadgen_per_conn: Option<u64>,
    /// One message on every connection at once.
    pub burst: Echoes,
    pub burst_cost: Option<BurstCost>,
    /// The workers' system calls per message, counted by perf in a second burst (perf's
    /// count slows every call it counts, so the timed burst runs without it).
    pub syscalls_per_msg: Option<f64>,
    pub syscalls_not_counted: Option<String>,
    pub probes: Echoes,
    /// What the supervisor said of workers that died or went silent during the run, and
    /// were replaced: their connections were lost with them.
    pub workers_lost: Vec<String>,
    /// `net.core.netdev_max_backlog` and `net.ipv4.tcp_mem`, (was, now), where the run
    /// raised them (see `settings.rs`).
    pub netdev_max_backlog: Option<(u64, u64)>,
    pub tcp_mem: Option<(String, String)>,
    /// The table of established connections the run's sockets were looked up in.
    pub network: Network,
    pub softnet_drops: (u64, u64),
    pub wall_seconds: f64,
    pub error: Option<String>,
}

impl Million {
    /// Every connection held, none failed, and the run finished.
    pub fn all_held(&self) -> bool {
        self.error.is_none()
            && self.held == self.conns
            && self.failed == 0
            && self.workers_lost.is_empty()
    }
}
