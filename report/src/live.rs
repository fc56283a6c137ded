//! `report --live [ADDR]`: the page of `stepNN --json | live`, served by the report and fed
//! as it measures: every line a step prints (its memory lines) the moment it prints it,
//! what the report is doing, and with `--million`, the million as it opens.
//!
//! The page and its server are the `live` crate's; this module only posts to it. Each hook
//! is one line at its call site and does nothing unless `--live` started the page. The
//! events posted here, beside the steps' own lines, are described in live/README.md:
//! `plan`, `progress` and `million`.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use indicatif::ProgressBar;
use serde_json::json;

use crate::procfs::KernelMemory;

/// Where `--live` listens when given no address: the one `live` itself uses.
pub const DEFAULT_ADDR: &str = ::live::DEFAULT_ADDR;

/// The page's board, once `--live` started it.
static BOARD: OnceLock<Arc<::live::Board>> = OnceLock::new();

/// The connection count of the newest memory line any step printed: what the million's
/// events say is held (the server's own count, as its supervisor sums it).
static SERVER_CONNS: AtomicU64 = AtomicU64::new(0);

/// How often a step's progress bar is looked at (and posted, if it changed).
const EVERY: Duration = Duration::from_millis(100);

/// Serve the page on `addr`; returns the address served (port 0 picks one).
pub fn start(addr: SocketAddr) -> Result<SocketAddr, String> {
    let (addr, board) =
        ::live::serve(addr).map_err(|err| format!("cannot listen on {addr}: {err}"))?;
    let _ = BOARD.set(board);
    eprintln!(
        "report: live page at http://{addr}/ (project it; it draws each step as it is measured)"
    );
    Ok(addr)
}

fn post(event: serde_json::Value) {
    if let Some(board) = BOARD.get() {
        board.post(&event.to_string());
    }
}

/// For `stepcheck::Watch::tee`: each line a step prints goes to the page as it is printed.
pub fn tee(line: &stepcheck::Line) {
    let Some(board) = BOARD.get() else {
        return;
    };
    if let Some(memory) = common::MemoryLine::from_json(&line.text) {
        SERVER_CONNS.store(memory.conns as u64, Ordering::Relaxed);
    }
    board.post(&line.text);
}

/// The steps this run measures, in order: on the page, a step's colour is its place here,
/// as in the report's charts.
pub fn plan(steps: &[&str], conns: usize) {
    post(json!({ "event": "plan", "steps": steps, "conns": conns }));
}

/// One thing the report is doing, said once.
pub fn progress(step: &str, doing: &str) {
    post(json!({ "event": "progress", "step": step, "doing": doing }));
}

/// Posts step `index` of `of`'s progress bar (its message, and its count of connections
/// opened) while it is measured; stops when dropped.
pub struct Follow {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

/// Follow `bar` while step `index` of `of` is measured: the bar already says what the report
/// is doing, so the page is told the same, with no hook inside the measurement.
pub fn follow(index: usize, of: usize, step: &str, bar: &ProgressBar) -> Follow {
    let stop = Arc::new(AtomicBool::new(false));
    let thread = BOARD.get().map(|_| {
        let (stop, bar, step) = (Arc::clone(&stop), bar.clone(), step.to_string());
        thread::spawn(move || {
            let mut said = None;
            while !stop.load(Ordering::Relaxed) {
                let now = (bar.message(), bar.position(), bar.length());
                if said.as_ref() != Some(&now) {
                    post(json!({
                        "event": "progress", "step": step, "index": index, "of": of,
                        "doing": now.0, "done": now.1, "total": now.2,
                    }));
                    said = Some(now);
                }
                thread::sleep(EVERY);
            }
        })
    });
    Follow { stop, thread }
}

impl Drop for Follow {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// After the report: with `--live`, keep the last picture up until Ctrl-C.
pub fn stay() {
    let Some(board) = BOARD.get() else {
        return;
    };
    progress("", "done: the tables are printed");
    board.input_ended();
    eprintln!("report: the live page keeps the last picture until Ctrl-C");
    loop {
        thread::park(); // Ctrl-C's default action ends the process
    }
}

/// What the million's sampler reads, every [`MILLION_EVERY`], while the connections open.
pub struct MillionProcesses {
    /// Connections asked for.
    pub asked: usize,
    /// step08's worker processes, and the sum of their `RssAnon` before the first connection.
    pub workers: Vec<u32>,
    pub anon_before: u64,
    /// loadgen's first process (its children are found as they come).
    pub loadgen: u32,
    /// The counted slab caches before the first connection; `None` where slabinfo is
    /// unreadable.
    pub kernel_before: Option<KernelMemory>,
}

/// How often the million's figures are read and posted: reading them means scanning /proc
/// for loadgen's processes and reading /proc/slabinfo, a few milliseconds each time.
const MILLION_EVERY: Duration = Duration::from_millis(500);

/// Posts a `million` event every [`MILLION_EVERY`] while the million opens.
pub struct MillionWatch {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<Sampler>>,
}

impl MillionWatch {
    pub fn start(processes: MillionProcesses) -> MillionWatch {
        let stop = Arc::new(AtomicBool::new(false));
        let thread = BOARD.get().map(|_| {
            let stop = Arc::clone(&stop);
            thread::spawn(move || {
                let mut sampler = Sampler::new(processes);
                while !stop.load(Ordering::Relaxed) {
                    post(sampler.sample(false));
                    thread::sleep(MILLION_EVERY);
                }
                sampler
            })
        });
        MillionWatch { stop, thread }
    }

    /// Everything is held and measured: one last sample, marked `done`.
    pub fn finish(mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(Ok(mut sampler)) = self.thread.take().map(JoinHandle::join) {
            post(sampler.sample(true));
        }
    }
}

impl Drop for MillionWatch {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// Reads the million's figures from /proc.
struct Sampler {
    p: MillionProcesses,
    started: Instant,
    /// (when, held) over the last two seconds: the opening rate is measured over them.
    recent: Vec<(Instant, u64)>,
}

impl Sampler {
    fn new(p: MillionProcesses) -> Sampler {
        Sampler {
            p,
            started: Instant::now(),
            recent: Vec::new(),
        }
    }

    /// The `million` event now.
    fn sample(&mut self, done: bool) -> serde_json::Value {
        let p = &self.p;
        let now = Instant::now();
        let held = SERVER_CONNS.load(Ordering::Relaxed);
        self.recent.push((now, held));
        self.recent
            .retain(|&(at, _)| now.duration_since(at) <= Duration::from_secs(2));
        let (first_at, first_held) = self.recent[0];
        let span = now.duration_since(first_at).as_secs_f64();
        let rate = (span > 0.0).then(|| held.saturating_sub(first_held) as f64 / span);

        let anon: u64 = p
            .workers
            .iter()
            .filter_map(|&w| common::anon_rss_bytes(w).ok())
            .sum();
        let server_user = anon.saturating_sub(p.anon_before);
        let kernel = p
            .kernel_before
            .as_ref()
            .and_then(|before| Some(before.growth(&before.read_again()?).1));
        let loadgen: u64 = std::iter::once(p.loadgen)
            .chain(common::children_of(p.loadgen))
            .filter_map(|pid| common::ProcStatus::read(pid).ok())
            .map(|s| s.rss_bytes)
            .sum();
        let per_conn = |total: i64| (held > 0).then(|| total / held as i64);
        json!({
            "event": "million",
            "asked": p.asked,
            "held": held,
            "elapsed_s": self.started.elapsed().as_secs_f64(),
            "open_per_s": rate,
            "server_user_bytes": server_user,
            "server_user_per_conn": per_conn(server_user as i64),
            "kernel_bytes": kernel,
            "kernel_per_conn": kernel.and_then(per_conn),
            "loadgen_rss_bytes": loadgen,
            "loadgen_per_conn": per_conn(loadgen as i64),
            "done": done,
        })
    }
}

#[cfg(test)]
mod tests {
    /// The page draws each step in the colour the report's charts give it, and in the
    /// lesson's order when no plan says otherwise.
    /// Breaks if the charts' palette or the steps' order changes and the page's does not.
    #[test]
    fn the_page_looks_like_the_charts() {
        let charts: Vec<String> = crate::charts::PALETTE
            .iter()
            .map(|c| format!("#{:02X}{:02X}{:02X}", c.0, c.1, c.2))
            .collect();
        assert_eq!(charts, ::live::page::PALETTE);
        let steps: Vec<&str> = crate::steps::STEPS.iter().map(|s| s.name).collect();
        assert_eq!(steps, ::live::page::LESSON);
    }
}
