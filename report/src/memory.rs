//! User-space memory per connection: the step's own memory line beside what /proc says,
//! read at the same moment, and whether they agree.

use crate::child::Sample;
use crate::schema::{StepResult, UserMemory};

/// The step's memory line and /proc's figures read with it, side by side.
pub fn fill(result: &mut StepResult, sample: Option<Sample>, base_rss_proc: u64) {
    let Some(Sample { line, proc, .. }) = sample else {
        result.notes.push("no memory line from the step".into());
        return;
    };
    result.conns.server = Some(line.conns);
    let held = result.conns.held;
    if line.conns < held {
        result.notes.push(format!(
            "the step holds {}: {} more wait in its listen backlog, connected but not accepted",
            line.conns,
            held - line.conns
        ));
    } else if line.conns > held {
        result.notes.push(format!(
            "the step counts {} connections; loadgen holds {held}",
            line.conns
        ));
    }
    let mut memory = UserMemory {
        rss_per_conn_bytes: None,
        rss_agree: None,
        proc_rss_bytes: None,
        proc_base_rss_bytes: base_rss_proc,
        threads: None,
        line,
    };
    if let Some(proc) = proc {
        let line = &memory.line;
        memory.proc_rss_bytes = Some(proc.rss_bytes);
        memory.threads = Some(proc.threads);
        if line.conns > 0 {
            memory.rss_per_conn_bytes =
                Some(proc.rss_bytes.saturating_sub(base_rss_proc) / line.conns as u64);
        }
        let agreed = agree(proc.rss_bytes, line.rss_bytes);
        memory.rss_agree = Some(agreed);
        if !agreed {
            result.notes.push(format!(
                "RSS disagrees: /proc says {}, the step's line {}, read at the same moment",
                common::format_bytes(proc.rss_bytes),
                common::format_bytes(line.rss_bytes),
            ));
        }
        if proc.threads != line.threads {
            result.notes.push(format!(
                "threads: /proc says {}, the line {}",
                proc.threads, line.threads
            ));
        }
    }
    result.memory = Some(memory);
}

/// Whether /proc and the step's line tell the same story: the resident set the step
/// printed, and VmRSS read the moment the line arrived, within 2% or 256 KiB. Both come
/// from the same kernel counter, so only the few microseconds between them separate them;
/// a larger gap means the step's meter reads the wrong thing.
fn agree(rss_proc: u64, rss_line: u64) -> bool {
    rss_proc.abs_diff(rss_line) <= (256 * 1024).max(rss_line / 50)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The RSS from /proc and the step's own line agree within a few pages or 2%, not megabytes.
    #[test]
    fn rss_figures_agree_within_pages_not_megabytes() {
        assert!(agree(14_000_000, 14_004_096));
        assert!(
            agree(200_000_000, 197_000_000),
            "2% of a large resident set is timing"
        );
        assert!(!agree(14_000_000, 20_000_000));
        assert!(!agree(200_000_000, 190_000_000));
    }
}
