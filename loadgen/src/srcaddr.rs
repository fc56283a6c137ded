//! `--src-addrs 127.0.0.2-127.0.0.60`: spread connections over several source addresses.
//!
//! A TCP connection is named by four numbers: source address, source port, destination
//! address, destination port. Against one server (one destination) from one source address,
//! only the source port varies, and the kernel hands those out from
//! `net.ipv4.ip_local_port_range` (32768–60999 by default: ~28 000). Every address in
//! 127.0.0.0/8 is this machine, so each extra source address brings another ~28 000.

use std::fmt;
use std::net::Ipv4Addr;
use std::str::FromStr;

/// Connections per source address (to one server address) that loadgen stays under when
/// it spreads by itself. `connect()` looks for a free port among those of one parity first
/// (leaving the others to `bind`); past about half the ephemeral range per (source,
/// destination) pair, every new connection scans the occupied half, and opening slows to
/// a crawl. 14 000 is half of the default range, 32768–60999.
pub const PER_SOURCE: usize = 14_000;

/// An inclusive range of IPv4 loopback addresses, used round-robin.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SourceAddrs {
    /// The first address, as a number.
    first: u32,
    /// How many addresses (at least 1).
    len: u32,
}

impl SourceAddrs {
    /// The address the `i`-th connection binds to.
    pub fn nth(&self, i: usize) -> Ipv4Addr {
        Ipv4Addr::from(self.first + (i % self.len as usize) as u32)
    }

    /// How many addresses the range holds.
    pub fn len(&self) -> usize {
        self.len as usize
    }

    /// Never true: a range holds at least one address. (For clippy's `len_without_is_empty`.)
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
}

impl SourceAddrs {
    /// Enough addresses from 127.0.0.2 on for `conns` connections, under [`PER_SOURCE`]
    /// each; `None` when 127.0.0.1 alone will do.
    pub fn spread(conns: usize) -> Option<SourceAddrs> {
        (conns > PER_SOURCE).then(|| SourceAddrs {
            first: u32::from(Ipv4Addr::new(127, 0, 0, 2)),
            len: conns.div_ceil(PER_SOURCE) as u32,
        })
    }
}

/// `127.0.0.2-127.0.0.73`: the form `--src-addrs` takes.
impl fmt::Display for SourceAddrs {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let last = Ipv4Addr::from(self.first + self.len - 1);
        write!(f, "{}-{last}", Ipv4Addr::from(self.first))
    }
}

impl FromStr for SourceAddrs {
    type Err = String;

    /// `127.0.0.2-127.0.0.60` or a single `127.0.0.2`.
    fn from_str(s: &str) -> Result<SourceAddrs, String> {
        let (first, last) = s.split_once('-').unwrap_or((s, s));
        let parse = |a: &str| -> Result<Ipv4Addr, String> {
            let ip: Ipv4Addr = a
                .trim()
                .parse()
                .map_err(|_| format!("`{a}` is not an IPv4 address"))?;
            if !ip.is_loopback() {
                return Err(format!(
                    "`{ip}` is not in 127.0.0.0/8: source addresses must be loopback"
                ));
            }
            Ok(ip)
        };
        let (first, last) = (u32::from(parse(first)?), u32::from(parse(last)?));
        if first > last {
            return Err(format!("`{s}`: the first address comes after the last"));
        }
        Ok(SourceAddrs {
            first,
            len: last - first + 1,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Source addresses are taken from the range in turn, starting again after the last.
    #[test]
    fn a_range_is_used_round_robin() {
        let range: SourceAddrs = "127.0.0.2-127.0.0.4".parse().unwrap();
        assert_eq!(range.len(), 3);
        let picked: Vec<Ipv4Addr> = (0..4).map(|i| range.nth(i)).collect();
        assert_eq!(
            picked,
            [
                [127, 0, 0, 2],
                [127, 0, 0, 3],
                [127, 0, 0, 4],
                [127, 0, 0, 2]
            ]
            .map(Ipv4Addr::from)
        );
    }

    /// A range may cross an octet boundary, and a single address is a range of one.
    #[test]
    fn a_range_may_cross_an_octet_and_a_single_address_is_a_range_of_one() {
        let range: SourceAddrs = "127.0.0.255-127.0.1.1".parse().unwrap();
        assert_eq!(range.len(), 3);
        assert_eq!(range.nth(1), Ipv4Addr::new(127, 0, 1, 0));
        let one: SourceAddrs = "127.0.0.9".parse().unwrap();
        assert_eq!((one.len(), one.nth(5)), (1, Ipv4Addr::new(127, 0, 0, 9)));
    }

    /// A million connections are spread over 72 addresses, under 14 000 each; 14 000 need none.
    #[test]
    fn spreading_keeps_each_address_under_its_share() {
        assert_eq!(SourceAddrs::spread(PER_SOURCE), None);
        let million = SourceAddrs::spread(1_000_000).unwrap();
        assert_eq!(million.len(), 72);
        assert!(1_000_000usize.div_ceil(million.len()) <= PER_SOURCE);
        assert_eq!(million.to_string(), "127.0.0.2-127.0.0.73");
        assert_eq!(million.to_string().parse::<SourceAddrs>(), Ok(million));
    }

    /// Reversed, non-loopback and malformed ranges are refused.
    #[test]
    fn refuses_reversed_non_loopback_and_malformed_ranges() {
        for bad in [
            "127.0.0.9-127.0.0.2",
            "10.0.0.1-10.0.0.9",
            "127.0.0.1-",
            "127.0.0",
            "::1",
            "",
        ] {
            assert!(
                bad.parse::<SourceAddrs>().is_err(),
                "`{bad}` should be refused"
            );
        }
    }
}
