//! `--work-us N`: CPU spent on every message before its echo, as a real handler spends it
//! (parsing, compressing, looking something up), so that the steps can be compared when a
//! message costs more than the echo itself. Not a sleep: a sleeping handler frees its core,
//! a working one does not. The work is hashing the message over and over, measured at
//! start-up so that it costs N µs of CPU on this machine.
//!
//! N µs for every 64 bytes of a message, in proportion: the report's 64-byte messages cost
//! N, a 32-byte one N / 2, a 6 400-byte one 100 × N. Hashing costs in proportion to the
//! bytes hashed; and a raw TCP step, whose "message" is whatever one read returned, pays
//! the same in total however the bytes were split into reads.
//!
//! One setting for the whole process, made by [`set_up`] before the step serves
//! (`common::bind` calls it, and step08's workers) and only read afterwards: a step calls
//! [`spend_on`] where it echoes, and passes nothing around. With N = 0, the default, nothing
//! is measured and [`spend_on`] returns at once.

use std::fmt;
use std::hash::{DefaultHasher, Hasher};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// The unit of work: this many bytes of a message cost N µs.
pub const BLOCK: usize = 64;

/// Rounds of hashing per [`BLOCK`] bytes, set once by [`set_up`]; 0: no work.
static ROUNDS: AtomicU64 = AtomicU64::new(0);

/// Spend `--work-us` on `message`: hash it over and over, for as many rounds as its length
/// asks. Returns at once when the step was started without `--work-us`.
pub fn spend_on(message: &[u8]) {
    let per_block = ROUNDS.load(Ordering::Relaxed);
    if per_block > 0 {
        let rounds = rounds_for(message.len(), per_block);
        // The digest goes nowhere, so tell the compiler it is used.
        std::hint::black_box(hash_rounds(message, rounds));
    }
}

/// Whether the step was started with `--work-us`: without it there is no work, and a step
/// that moves the work off its loop (step07's `--spawn-blocking`) need not move anything.
pub fn enabled() -> bool {
    ROUNDS.load(Ordering::Relaxed) > 0
}

/// Rounds of hashing for a message of `len` bytes: `per_block` for every [`BLOCK`] bytes, in
/// proportion, to the nearest round.
pub fn rounds_for(len: usize, per_block: u64) -> u64 {
    let rounds = (u128::from(per_block) * len as u128 + BLOCK as u128 / 2) / BLOCK as u128;
    u64::try_from(rounds).unwrap_or(u64::MAX)
}

/// Measure what `work_us` µs per 64 bytes takes on this machine and make [`spend_on`]
/// spend it from now on; says on stderr what was measured. Nothing at all for 0.
pub fn set_up(step: &str, work_us: u32) {
    if work_us == 0 {
        return;
    }
    let calibration = calibrate(work_us);
    ROUNDS.store(calibration.rounds, Ordering::Relaxed);
    crate::log!("{step}: {calibration}");
}

/// `rounds` rounds of hashing over `message`, one [`BLOCK`] of it per round, from its start
/// again after its end; every round is fed the digest of the one before, so that none can
/// be skipped or hoisted out of the loop. A shorter block is padded with zeros, so that
/// every round costs the same.
pub fn hash_rounds(message: &[u8], rounds: u64) -> u64 {
    let mut digest = 0;
    let mut blocks = message.chunks(BLOCK).cycle();
    for _ in 0..rounds {
        let Some(bytes) = blocks.next() else {
            break; // an empty message: nothing to hash
        };
        let mut block = [0u8; BLOCK];
        block[..bytes.len()].copy_from_slice(bytes);
        let mut hasher = DefaultHasher::new();
        hasher.write_u64(digest);
        hasher.write(&block);
        digest = hasher.finish();
    }
    digest
}

/// What `--work-us` comes to on this machine.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Calibration {
    /// µs asked for per [`BLOCK`] bytes.
    pub work_us: u32,
    /// Rounds of hashing that take that long: one [`BLOCK`] bytes' worth.
    pub rounds: u64,
    /// What one round took, median of the trials.
    pub ns_per_round: f64,
}

impl fmt::Display for Calibration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "--work-us {}: {} rounds of hashing per 64 bytes of a message ({:.1} ns each, \
             measured at start-up)",
            self.work_us, self.rounds, self.ns_per_round
        )
    }
}

/// Time rounds of hashing on this thread's CPU clock (not the wall clock: time spent
/// waiting for the CPU while another process runs is not work), and work out how many make
/// `work_us` µs. Five trials of 2 ms or more each; the median one stands, so that a trial
/// slowed by a neighbour (or sped by an idle machine) does not set the pace. Takes ~15 ms.
pub fn calibrate(work_us: u32) -> Calibration {
    const TRIAL: Duration = Duration::from_millis(2);
    let block = [0x5a_u8; BLOCK];
    let time = |rounds: u64| {
        let before = thread_cpu_time();
        std::hint::black_box(hash_rounds(std::hint::black_box(&block), rounds));
        thread_cpu_time().saturating_sub(before)
    };
    // Enough rounds that one trial takes TRIAL: the clock's granularity is then noise.
    let mut rounds = 256;
    while time(rounds) < TRIAL && rounds < 1 << 40 {
        rounds *= 2;
    }
    let mut ns_per_round: Vec<f64> = (0..5)
        .map(|_| time(rounds).as_nanos() as f64 / rounds as f64)
        .collect();
    ns_per_round.sort_by(f64::total_cmp);
    let ns_per_round = ns_per_round[2].max(0.001);
    Calibration {
        work_us,
        rounds: ((f64::from(work_us) * 1000.0 / ns_per_round).round() as u64).max(1),
        ns_per_round,
    }
}

/// CPU time the calling thread has used so far.
pub fn thread_cpu_time() -> Duration {
    crate::sys::clock_now(libc::CLOCK_THREAD_CPUTIME_ID).expect("every Linux has this clock")
}

#[cfg(test)]
mod tests {
    use super::*;

    /// CPU this thread spends on `calls` messages of `bytes` bytes each, at `per_block`
    /// rounds per 64 bytes.
    fn cost(calls: u32, bytes: usize, per_block: u64) -> Duration {
        let message = vec![7u8; bytes];
        let rounds = rounds_for(bytes, per_block);
        let before = thread_cpu_time();
        for _ in 0..calls {
            std::hint::black_box(hash_rounds(std::hint::black_box(&message), rounds));
        }
        thread_cpu_time().saturating_sub(before)
    }

    /// Within a factor of two of `expected`, either way: a wide band, because the machines
    /// that run this are shared and a neighbour on the same core slows the hashing; an
    /// error of units (ms for µs, a block for a byte) is far outside it.
    fn assert_about(spent: Duration, expected: Duration, what: &str) {
        assert!(
            spent >= expected / 2 && spent <= expected * 2,
            "{what}: spent {spent:?} of CPU, {expected:?} asked for"
        );
    }

    /// k 64-byte messages at the rounds calibrated for N µs cost this thread about k × N µs
    /// of CPU (its own CPU clock: no wall-clock time is asserted). Breaks if the
    /// calibration is off by a unit or a factor.
    #[test]
    fn calibrated_work_costs_about_what_it_says() {
        let calibration = calibrate(500);
        assert_eq!(calibration.work_us, 500);
        assert_about(
            cost(40, 64, calibration.rounds),
            Duration::from_millis(20),
            "40 messages of 64 bytes at --work-us 500",
        );
    }

    /// The work grows with the message, in proportion: N µs per 64 bytes, so a 640-byte
    /// message costs ten times N, and a 16-byte one a quarter of N. Breaks if the work
    /// ignores the message's length.
    #[test]
    fn work_is_in_proportion_to_the_message() {
        let per_block = calibrate(200).rounds;
        assert_about(
            cost(5, 640, per_block),
            Duration::from_millis(10),
            "5 messages of 640 bytes at --work-us 200",
        );
        assert_about(
            cost(200, 16, per_block),
            Duration::from_millis(10),
            "200 messages of 16 bytes at --work-us 200",
        );
        assert_eq!(
            rounds_for(0, per_block),
            0,
            "an empty message costs nothing"
        );
        assert_eq!(rounds_for(64, 1000), 1000);
        assert_eq!(rounds_for(13, 1000), 203, "to the nearest round");
    }

    /// Before `set_up`, or with 0, `spend_on` spends nothing; after `set_up(N)` it spends
    /// about N µs per 64-byte message: what a step's `--work-us` does. (The only test that
    /// touches the process-wide setting.) Breaks if `set_up` does not reach `spend_on`.
    #[test]
    fn set_up_makes_spend_on_spend() {
        let spend = |calls: u32| {
            let before = thread_cpu_time();
            for _ in 0..calls {
                spend_on(&[7u8; 64]);
            }
            thread_cpu_time().saturating_sub(before)
        };
        set_up("test", 0);
        assert!(
            !enabled(),
            "no --work-us, yet work::enabled() says there is work"
        );
        let idle = spend(1000);
        assert!(
            idle < Duration::from_millis(5),
            "no --work-us, yet 1000 messages took {idle:?} of CPU"
        );
        set_up("test", 300);
        assert!(
            enabled(),
            "--work-us 300, yet work::enabled() says there is none"
        );
        assert_about(
            spend(40),
            Duration::from_millis(12),
            "40 messages of 64 bytes after set_up(300)",
        );
        ROUNDS.store(0, Ordering::Relaxed);
    }
}
