//! The two kernel settings a million on one machine outgrows, raised for the run (as root)
//! and put back after it; and the packets loopback dropped all the same.
//!
//! - `net.core.netdev_max_backlog`: the packets a CPU's input queue holds. Loopback delivers
//!   every packet through it, and a connection storm fills it: past it, SYNs are dropped
//!   and retried a second later.
//! - `net.ipv4.tcp_mem`: the memory, in pages, that every TCP socket together may hold in
//!   buffers before the kernel calls it pressure (sized at boot from the machine's memory:
//!   1.5 GiB here, 2.2 GiB at most). A burst puts a message in each of a million receive
//!   queues at once, each counted as a page at least: 4 GiB. Under pressure the kernel
//!   trims every socket's buffers on every read, shrinks every window, and the burst's
//!   CPU per message grows (by a sixth on epoll, measured here). Idle connections hold no
//!   buffer, so their memory is the same either way.

use std::fs::{File, OpenOptions};

use super::sysctl;

/// Loopback's input queue for the opening storm.
const NETDEV_BACKLOG: u64 = 65_536;

/// A kernel setting raised for the run, put back when dropped.
pub struct Raised {
    name: &'static str,
    was: String,
    now: String,
    /// The setting's file, kept open: `net.core` settings exist only in the machine's own
    /// network namespace, and the run may move to one of its own (see `network.rs`);
    /// a file opened there stays there.
    file: File,
}

impl Raised {
    /// (was, now), to say in the run's figures.
    pub fn change(&self) -> (String, String) {
        (self.was.clone(), self.now.clone())
    }
}

impl Drop for Raised {
    fn drop(&mut self) {
        if sysctl::write(&mut self.file, &self.was).is_ok() {
            eprintln!("report: {} is back to {}", self.name, self.was);
        }
    }
}

/// `net.core.netdev_max_backlog` at 65 536 at least, for the opening storm.
pub fn raise_backlog() -> Option<Raised> {
    raise(
        "net.core.netdev_max_backlog",
        "loopback drops packets past it when a connection storm fills a CPU's queue: \
         expect dropped SYNs, retransmits and a slower opening",
        |was| {
            let was: u64 = was.trim().parse().ok()?;
            (was < NETDEV_BACKLOG).then(|| NETDEV_BACKLOG.to_string())
        },
    )
}

/// `net.ipv4.tcp_mem` with room for a burst on `conns` connections: a page per connection
/// before pressure is low, two before it is pressure, three at most.
pub fn raise_tcp_mem(conns: usize) -> Option<Raised> {
    raise(
        "net.ipv4.tcp_mem",
        "a burst on every connection holds a buffer in each, and under pressure the kernel \
         trims them on every read: expect more CPU per message",
        |was| {
            let pages: Vec<u64> = was
                .split_whitespace()
                .filter_map(|n| n.parse().ok())
                .collect();
            let wanted = [conns as u64, 2 * conns as u64, 3 * conns as u64];
            let [_, pressure, _] = <[u64; 3]>::try_from(pages.as_slice()).ok()?;
            (pressure < wanted[1]).then(|| format!("{} {} {}", wanted[0], wanted[1], wanted[2]))
        },
    )
}

/// Raise the setting `name` to what `wanted` says from its present text (`None`: it is
/// high enough), saying so, or why it could not be.
fn raise(
    name: &'static str,
    otherwise: &str,
    wanted: impl FnOnce(&str) -> Option<String>,
) -> Option<Raised> {
    let path = format!("/proc/sys/{}", name.replace('.', "/"));
    let (mut file, was) = match OpenOptions::new().read(true).write(true).open(&path) {
        Ok(mut file) => {
            let was = sysctl::read(&mut file).ok()?;
            (file, was)
        }
        Err(err) => {
            let was = sysctl::read(&mut File::open(&path).ok()?).ok()?;
            if wanted(&was).is_some() {
                eprintln!(
                    "report: {name} is {} and cannot be raised ({err}): {otherwise}",
                    was.trim()
                );
            }
            return None;
        }
    };
    let was = was.split_whitespace().collect::<Vec<_>>().join(" ");
    let now = wanted(&was)?;
    if let Err(err) = sysctl::write(&mut file, &now) {
        eprintln!("report: {name} is {was} and cannot be raised ({err}): {otherwise}");
        return None;
    }
    eprintln!("report: raised {name} from {was} to {now} for the run; it is put back at the end");
    Some(Raised {
        name,
        was,
        now,
        file,
    })
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
