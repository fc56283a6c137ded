//! Loopback's input queue: `net.core.netdev_max_backlog`, raised for the run (as root) and
//! put back, and the packets the kernel dropped when a CPU's queue was full anyway.

use std::fs::{File, OpenOptions};
use std::io::{Seek, Write};

/// The loopback backlog raised for the opening storm, if lower (and we are root).
const NETDEV_BACKLOG: u64 = 65_536;

const BACKLOG_PATH: &str = "/proc/sys/net/core/netdev_max_backlog";

/// `net.core.netdev_max_backlog` raised for the run, and put back when dropped.
pub struct Backlog {
    was: u64,
    /// The setting's file, while raised: kept open, because only the machine's own network
    /// namespace has it, and the run may move to one of its own (see `network.rs`).
    raised: Option<File>,
}

impl Backlog {
    /// Raise it from `was` to [`NETDEV_BACKLOG`], saying so (or why not).
    pub fn raise(was: u64) -> Backlog {
        if was >= NETDEV_BACKLOG {
            return Backlog { was, raised: None };
        }
        let raised = OpenOptions::new()
            .write(true)
            .open(BACKLOG_PATH)
            .and_then(|mut file| {
                file.write_all(NETDEV_BACKLOG.to_string().as_bytes())?;
                Ok(file)
            })
            .ok();
        if raised.is_some() {
            eprintln!(
                "report: raised net.core.netdev_max_backlog from {was} to {NETDEV_BACKLOG} for the \
                 run (loopback drops packets past it when a connection storm fills a CPU's \
                 queue); it is put back at the end"
            );
        } else {
            eprintln!(
                "report: net.core.netdev_max_backlog is {was} and cannot be raised (not root): \
                 expect dropped SYNs, retransmits and a slower opening"
            );
        }
        Backlog { was, raised }
    }

    /// (from, to), if it was raised.
    pub fn changed(&self) -> Option<(u64, u64)> {
        self.raised.as_ref().map(|_| (self.was, NETDEV_BACKLOG))
    }
}

impl Drop for Backlog {
    fn drop(&mut self) {
        let Some(mut file) = self.raised.take() else {
            return;
        };
        // A sysctl is written whole, from its start.
        if file.rewind().is_ok() && file.write_all(self.was.to_string().as_bytes()).is_ok() {
            eprintln!(
                "report: net.core.netdev_max_backlog is back to {}",
                self.was
            );
        }
    }
}

/// Packets the kernel dropped because a CPU's input queue was full: the second column of
/// /proc/net/softnet_stat (hexadecimal, one line per CPU), summed.
pub fn softnet_drops() -> u64 {
    std::fs::read_to_string("/proc/net/softnet_stat")
        .map(|text| parse_softnet_drops(&text))
        .unwrap_or(0)
}

fn parse_softnet_drops(text: &str) -> u64 {
    text.lines()
        .filter_map(|line| u64::from_str_radix(line.split_whitespace().nth(1)?, 16).ok())
        .sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Drops are the second column of softnet_stat, in hexadecimal, summed over the CPUs.
    #[test]
    fn softnet_drops_sum_the_second_column_in_hex() {
        let text = "0000abcd 0000022f 00000000\n00001234 00000010 00000000\n";
        assert_eq!(parse_softnet_drops(text), 0x22f + 0x10);
    }
}
