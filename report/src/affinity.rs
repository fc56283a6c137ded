//! One CPU for the client and the step while a sweep point is timed.
//!
//! A round trip on loopback is two wake-ups: the step's, when the message arrives, and the
//! client's, when the echo does. On one CPU each is a context switch. On two, the sleeping
//! side's CPU may be idle, and on a VM waking an idle CPU goes through the hypervisor: tens
//! of microseconds that come and go with where the scheduler happened to put each side.
//! Measured here, unpinned: select's round trip with 1 connection held was 17 µs in one visit
//! and 59 µs in the next, more than what 100 idle connections add. Pinned, the visits
//! agree within a few percent, and what is left is the work itself.
//!
//! Only the sweep is pinned: the storm and the burst need both CPUs.

use std::io;
use std::mem;

use common::sys::cvt;

/// While alive, this thread and every thread of the step (its workers' too) run on the CPU
/// this thread was on. Dropping it gives everyone back the CPUs they had.
pub struct OneCpu {
    step: u32,
    /// The step's CPUs before, for all its threads after (threads it started meanwhile
    /// inherited the one CPU).
    step_cpus: libc::cpu_set_t,
    /// This thread's CPUs before.
    our_cpus: libc::cpu_set_t,
}

impl OneCpu {
    /// Pin this thread and the step `pid` (every thread, and its child processes' threads)
    /// to the CPU this thread is running on.
    pub fn pin(pid: u32) -> io::Result<OneCpu> {
        // SAFETY: sched_getcpu takes no arguments and only reads the calling thread's CPU.
        let cpu = cvt(unsafe { libc::sched_getcpu() })? as usize;
        let one = cpu_set(&[cpu]);
        let pinned = OneCpu {
            step: pid,
            step_cpus: get(pid as libc::pid_t)?,
            our_cpus: get(0)?,
        };
        set(0, &one)?;
        for tid in threads(pid) {
            // A thread that ended since it was listed: nothing to pin.
            let _ = set(tid, &one);
        }
        Ok(pinned)
    }
}

impl Drop for OneCpu {
    fn drop(&mut self) {
        for tid in threads(self.step) {
            let _ = set(tid, &self.step_cpus);
        }
        let _ = set(0, &self.our_cpus);
    }
}

/// The threads of `pid` and of its children (a supervisor's workers).
fn threads(pid: u32) -> Vec<libc::pid_t> {
    let mut processes = vec![pid];
    processes.extend(common::children_of(pid));
    processes
        .into_iter()
        .flat_map(|p| {
            std::fs::read_dir(format!("/proc/{p}/task"))
                .into_iter()
                .flatten()
        })
        .flatten()
        .filter_map(|entry| entry.file_name().to_str()?.parse().ok())
        .collect()
}

/// A CPU set holding exactly `cpus`.
fn cpu_set(cpus: &[usize]) -> libc::cpu_set_t {
    // SAFETY: cpu_set_t is a plain bit array; all zeroes is the empty set.
    let mut set: libc::cpu_set_t = unsafe { mem::zeroed() };
    for &cpu in cpus {
        // SAFETY: CPU_SET only sets a bit in `set`; a CPU past the set's 1024 bits panics
        // on the bounds check of its index instead of writing past it.
        unsafe { libc::CPU_SET(cpu, &mut set) };
    }
    set
}

/// The CPUs thread `tid` may run on (0: the calling thread).
fn get(tid: libc::pid_t) -> io::Result<libc::cpu_set_t> {
    let mut set = cpu_set(&[]);
    // SAFETY: `set` is a valid, writable cpu_set_t of the size passed.
    cvt(unsafe { libc::sched_getaffinity(tid, mem::size_of_val(&set), &mut set) })?;
    Ok(set)
}

/// Let thread `tid` (0: the calling thread) run only on `set`.
fn set(tid: libc::pid_t, set: &libc::cpu_set_t) -> io::Result<()> {
    // SAFETY: `set` is a valid cpu_set_t of the size passed; the kernel only reads it.
    cvt(unsafe { libc::sched_setaffinity(tid, mem::size_of_val(set), set) })?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn same(a: &libc::cpu_set_t, b: &libc::cpu_set_t) -> bool {
        // SAFETY: CPU_EQUAL only reads the two sets.
        unsafe { libc::CPU_EQUAL(a, b) }
    }

    /// A child process and this thread share one CPU while pinned, and get their CPUs back.
    #[test]
    fn pinning_puts_the_step_on_our_cpu_and_dropping_gives_it_back() {
        let mut child = std::process::Command::new("sleep")
            .arg("10")
            .spawn()
            .unwrap();
        let pid = child.id();
        let before = get(pid as libc::pid_t).unwrap();
        let ours = get(0).unwrap();
        {
            let _pinned = OneCpu::pin(pid).unwrap();
            let (theirs, mine) = (get(pid as libc::pid_t).unwrap(), get(0).unwrap());
            // SAFETY: CPU_COUNT only reads the sets.
            let count = |s: &libc::cpu_set_t| unsafe { libc::CPU_COUNT(s) };
            assert_eq!(count(&theirs), 1, "the step runs on one CPU");
            assert!(same(&theirs, &mine), "and it is ours");
        }
        assert!(same(&get(pid as libc::pid_t).unwrap(), &before));
        assert!(same(&get(0).unwrap(), &ours));
        child.kill().unwrap();
        child.wait().unwrap();
    }
}
