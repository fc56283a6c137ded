//! The million's own network namespace, with a table of established connections sized
//! for it.
//!
//! Every TCP segment that arrives is matched to its socket in the kernel's hash table of
//! established connections. That table is sized once, at boot, from the machine's memory
//! (`sysctl net.ipv4.tcp_ehash_entries`: 262 144 buckets on a 24 GiB machine, at most
//! 524 288 unless `thash_entries=` is given at boot). A million loopback connections put
//! two million sockets in it, both ends of each: chains of eight that every segment walks,
//! a cache miss a link. Measured on that machine, the walk (`__inet_lookup_established`)
//! took a sixth of the burst's CPU, on both sides; at 100 000 connections, next to nothing.
//! A real server holds one end of each connection, in a table sized for its own memory.
//!
//! A network namespace may have a table of its own, sized when it is made
//! (`net.ipv4.tcp_child_ehash_entries`, Linux 5.19). As root, the run moves into a new one
//! with a bucket per socket, brings its loopback up, and puts the setting back at once;
//! step08 and loadgen, started from this thread, live in it. Otherwise it stays where it
//! is, and says why.

use std::fs::{File, OpenOptions};
use std::io;

use common::sys::cvt;
use serde::Serialize;

use super::sysctl;

const TABLE: &str = "/proc/sys/net/ipv4/tcp_ehash_entries";
const CHILD_TABLE: &str = "/proc/sys/net/ipv4/tcp_child_ehash_entries";
/// The largest table a namespace may ask for.
const MOST_BUCKETS: u64 = 1 << 24;

/// Where the run's connections live.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Network {
    /// Buckets in the table of established connections the run's sockets are looked up in.
    pub buckets: Option<u64>,
    /// In a network namespace of the run's own (with its own table), or the machine's.
    pub own: bool,
}

/// Move this thread (and what it starts from now on) into a network namespace whose table
/// has a bucket for each of the `sockets`, if the machine's has fewer; say what was done.
pub fn make_room(sockets: usize) -> Network {
    let machine = read_number(TABLE).ok();
    let wanted = (sockets.max(128) as u64)
        .next_power_of_two()
        .min(MOST_BUCKETS);
    if machine.is_some_and(|buckets| buckets >= wanted) {
        return Network {
            buckets: machine,
            own: false,
        };
    }
    match own_namespace(wanted) {
        Ok(buckets) => {
            eprintln!(
                "report: the run has a network namespace of its own, with {buckets} buckets \
                 for its established connections ({} sockets; the machine's table has {}, \
                 sized at boot)",
                sockets,
                machine.map_or("?".into(), |b| b.to_string())
            );
            Network {
                buckets: Some(buckets),
                own: true,
            }
        }
        Err(err) => {
            eprintln!(
                "report: the run stays in the machine's network namespace ({err}): its {} \
                 sockets share a table of {} buckets, and every packet walks the chains",
                sockets,
                machine.map_or("?".into(), |b| b.to_string())
            );
            Network {
                buckets: machine,
                own: false,
            }
        }
    }
}

/// The new namespace, with a table of `buckets`; the table's size, as the kernel made it.
fn own_namespace(buckets: u64) -> io::Result<u64> {
    // Opened before the move: a sysctl file opened in a namespace stays that namespace's.
    let mut setting = OpenOptions::new()
        .read(true)
        .write(true)
        .open(CHILD_TABLE)?;
    let was = read_from(&mut setting)?;
    sysctl::write(&mut setting, &buckets.to_string())?;
    // SAFETY: unshare takes no pointers; CLONE_NEWNET moves only the calling thread.
    let moved = cvt(unsafe { libc::unshare(libc::CLONE_NEWNET) });
    // Put it back at once: only our namespace was to be made this way.
    sysctl::write(&mut setting, &was.to_string())?;
    moved?;
    loopback_up()?;
    read_number(TABLE)
}

/// A new namespace's loopback is down: bring it up (`ip link set lo up`).
fn loopback_up() -> io::Result<()> {
    // SAFETY: socket takes no pointers; the fd it returns is closed below.
    let fd = cvt(unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) })?;
    // SAFETY: an all-zero ifreq is valid: an empty name, zero flags.
    let mut request: libc::ifreq = unsafe { std::mem::zeroed() };
    for (to, from) in request.ifr_name.iter_mut().zip(b"lo\0") {
        *to = *from as libc::c_char;
    }
    // SAFETY: `fd` is open; `request` names the device and is valid for the kernel to fill.
    let result = cvt(unsafe { libc::ioctl(fd, libc::SIOCGIFFLAGS, &mut request) }).and_then(|_| {
        // SAFETY: SIOCGIFFLAGS filled the flags member of the union.
        unsafe { request.ifr_ifru.ifru_flags |= libc::IFF_UP as libc::c_short };
        // SAFETY: as above; the kernel reads the name and flags.
        cvt(unsafe { libc::ioctl(fd, libc::SIOCSIFFLAGS, &request) })
    });
    // SAFETY: `fd` is ours and open.
    unsafe { libc::close(fd) };
    result.map(drop)
}

fn read_number(path: &str) -> io::Result<u64> {
    read_from(&mut File::open(path)?)
}

fn read_from(file: &mut File) -> io::Result<u64> {
    let text = sysctl::read(file)?;
    text.trim()
        .parse()
        .map_err(|_| io::Error::other(format!("not a number: {text}")))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::{TcpListener, TcpStream};

    /// As root, on a thread of its own: the thread gets a namespace with the table asked
    /// for and a loopback that works, and the machine's setting for new namespaces is
    /// put back. Skipped, saying why, where it cannot be done (not root, no such setting).
    #[test]
    fn a_namespace_of_its_own_has_the_table_asked_for() {
        let Ok(before) = read_number(CHILD_TABLE) else {
            eprintln!("skipped: no {CHILD_TABLE} (Linux older than 5.19)");
            return;
        };
        let outside = read_number(TABLE).unwrap();
        let inside = std::thread::spawn(move || {
            let wanted = (outside * 2).min(MOST_BUCKETS);
            let network = make_room(wanted as usize);
            if !network.own {
                return None;
            }
            let listener = TcpListener::bind("127.0.0.1:0").unwrap();
            let reached = TcpStream::connect(listener.local_addr().unwrap()).is_ok();
            Some((network.buckets, wanted, reached))
        })
        .join()
        .unwrap();
        let Some((buckets, wanted, reached)) = inside else {
            eprintln!("skipped: no namespace of our own here (not root?)");
            return;
        };
        assert_eq!(buckets, Some(wanted), "the table asked for");
        assert!(reached, "loopback is up in the new namespace");
        assert_eq!(
            read_number(CHILD_TABLE).unwrap(),
            before,
            "the setting is put back"
        );
        assert_eq!(
            read_number(TABLE).unwrap(),
            outside,
            "this thread stayed outside"
        );
    }
}
