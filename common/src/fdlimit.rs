use std::fmt;
use std::io;

use crate::sys::cvt;

/// The open-file limit (`RLIMIT_NOFILE`) after [`raise_fd_limit`]. Every connection is a
/// file descriptor, so this is the ceiling on connections one process can hold.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FdLimit {
    /// The limit now in force for this process.
    pub soft: u64,
    /// The ceiling an unprivileged process may raise its soft limit to.
    pub hard: u64,
    /// The kernel's ceiling on any hard limit (`/proc/sys/fs/nr_open`), if readable.
    pub nr_open: Option<u64>,
}

/// Raise the soft open-file limit to the hard limit. The default soft limit is often 1024,
/// which would stop every step long before its real limit.
pub fn raise_fd_limit() -> io::Result<FdLimit> {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: `limit` is a valid, writable rlimit for the call to fill in.
    cvt(unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) })?;

    let nr_open = std::fs::read_to_string("/proc/sys/fs/nr_open")
        .ok()
        .and_then(|s| s.trim().parse::<u64>().ok());
    // An "unlimited" hard limit still cannot pass the kernel's nr_open.
    let target = match (limit.rlim_max, nr_open) {
        (libc::RLIM_INFINITY, Some(nr_open)) => nr_open,
        (hard, _) => hard,
    };
    if limit.rlim_cur < target {
        let raised = libc::rlimit {
            rlim_cur: target,
            rlim_max: limit.rlim_max,
        };
        // SAFETY: `raised` is a valid rlimit; the kernel only reads it.
        cvt(unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &raised) })?;
        limit.rlim_cur = target;
    }
    Ok(FdLimit {
        soft: limit.rlim_cur,
        hard: limit.rlim_max,
        nr_open,
    })
}

impl fmt::Display for FdLimit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "open-file limit {} (hard limit {})",
            self.soft, self.hard
        )?;
        match self.nr_open {
            Some(nr_open) if self.hard < nr_open => write!(
                f,
                "; to hold more connections, raise the hard limit as root \
                 (`ulimit -Hn {nr_open}`, or LimitNOFILE= in a systemd unit), up to fs.nr_open = {nr_open}"
            ),
            Some(nr_open) => write!(
                f,
                "; the hard limit is at fs.nr_open = {nr_open}: raise it with `sysctl fs.nr_open=N` first"
            ),
            None => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Raising the fd limit keeps soft within hard, and raising it twice changes nothing.
    #[test]
    fn soft_limit_ends_at_the_hard_limit() {
        let limit = raise_fd_limit().expect("getrlimit/setrlimit on our own process");
        assert!(limit.soft <= limit.hard, "{limit:?}");
        assert!(limit.soft > 0, "{limit:?}");
        // Raising twice is harmless and changes nothing.
        assert_eq!(raise_fd_limit().unwrap(), limit);
    }

    /// The message names the hard limit and how to raise it: ulimit, or sysctl once at fs.nr_open.
    #[test]
    fn message_names_the_hard_limit_and_how_to_raise_it() {
        let limit = FdLimit {
            soft: 20_000,
            hard: 20_000,
            nr_open: Some(1_048_576),
        };
        let text = limit.to_string();
        assert!(text.contains("hard limit 20000"), "{text}");
        assert!(text.contains("ulimit -Hn 1048576"), "{text}");
        let at_ceiling = FdLimit {
            soft: 1_048_576,
            hard: 1_048_576,
            nr_open: Some(1_048_576),
        };
        assert!(at_ceiling.to_string().contains("sysctl fs.nr_open"));
    }
}
