//! Routine syscall plumbing that the steps need (the event loops of steps 03–06 most) and
//! none of them teaches: turning a C return value into an `io::Result`, sorting an `io::Error` into
//! "try again", "that client is gone" or "out of file descriptors", and reading a clock.
//!
//! Each step keeps what it teaches — its loop, its readiness handling, its partial writes —
//! and calls these by name, so the loop reads `Err(err) if would_block(&err)` and a learner
//! who wonders what that covers finds it here, in one place.

use std::io;

/// Turn a C-style return value (-1 and errno on failure) into an `io::Result`: std's own
/// pattern for wrapping a syscall, kept a function (not a macro) so the call stays on screen.
pub fn cvt(ret: libc::c_int) -> io::Result<libc::c_int> {
    if ret == -1 {
        Err(io::Error::last_os_error())
    } else {
        Ok(ret)
    }
}

/// Read `clock` (`CLOCK_MONOTONIC`, a thread's or a process's CPU-time clock) with
/// clock_gettime(2).
pub fn clock_now(clock: libc::clockid_t) -> io::Result<std::time::Duration> {
    let mut now = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `now` is a valid, writable timespec; the call only stores into it.
    cvt(unsafe { libc::clock_gettime(clock, &mut now) })?;
    Ok(std::time::Duration::new(
        now.tv_sec as u64,
        now.tv_nsec as u32,
    ))
}

/// `EAGAIN`/`EWOULDBLOCK`: a non-blocking socket has nothing to give (or no room) right now.
/// Control flow, not an error: wait for the next readiness event.
pub fn would_block(err: &io::Error) -> bool {
    err.kind() == io::ErrorKind::WouldBlock
}

/// `EINTR`: a signal arrived during the call. Control flow, not an error: call again.
pub fn interrupted(err: &io::Error) -> bool {
    err.kind() == io::ErrorKind::Interrupted
}

/// Out of file descriptors (for this process, or the whole system), or of kernel memory
/// for a new socket: retrying at once would fail at once.
pub fn out_of_resources(err: &io::Error) -> bool {
    matches!(
        err.raw_os_error(),
        Some(libc::EMFILE | libc::ENFILE | libc::ENOBUFS | libc::ENOMEM)
    )
}

/// accept(2) reports errors of the connection it was about to return (the client reset
/// it while it was queued, or the network under it failed): they end that one
/// connection, never the server.
pub fn client_gone(err: &io::Error) -> bool {
    err.kind() == io::ErrorKind::ConnectionAborted
        || matches!(
            err.raw_os_error(),
            Some(
                libc::EPROTO
                    | libc::ENOPROTOOPT
                    | libc::ENETDOWN
                    | libc::ENONET
                    | libc::EHOSTDOWN
                    | libc::EHOSTUNREACH
                    | libc::EOPNOTSUPP
                    | libc::ENETUNREACH
            )
        )
}

/// The peer went away: the ordinary end of a connection, not worth a log line.
pub fn is_disconnect(err: &io::Error) -> bool {
    matches!(
        err.kind(),
        io::ErrorKind::ConnectionReset | io::ErrorKind::BrokenPipe
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn os(errno: libc::c_int) -> io::Error {
        io::Error::from_raw_os_error(errno)
    }

    /// -1 becomes the errno the call left behind; anything else is the call's result.
    #[test]
    fn cvt_turns_minus_one_into_the_last_os_error() {
        assert_eq!(cvt(7).unwrap(), 7);
        assert_eq!(cvt(0).unwrap(), 0);
        // SAFETY: close takes no pointers; -1 is never an open fd, so it fails with EBADF.
        let err = cvt(unsafe { libc::close(-1) }).unwrap_err();
        assert_eq!(err.raw_os_error(), Some(libc::EBADF), "{err}");
    }

    /// Each errno lands in exactly the class the event loops treat it as.
    #[test]
    fn each_errno_is_sorted_into_its_class() {
        type Class = fn(&io::Error) -> bool;
        let classes: [(&str, Class); 5] = [
            ("would_block", would_block),
            ("interrupted", interrupted),
            ("out_of_resources", out_of_resources),
            ("client_gone", client_gone),
            ("is_disconnect", is_disconnect),
        ];
        let cases = [
            (libc::EAGAIN, "would_block"),
            (libc::EINTR, "interrupted"),
            (libc::EMFILE, "out_of_resources"),
            (libc::ENFILE, "out_of_resources"),
            (libc::ENOBUFS, "out_of_resources"),
            (libc::ENOMEM, "out_of_resources"),
            (libc::ECONNABORTED, "client_gone"),
            (libc::EPROTO, "client_gone"),
            (libc::ENETUNREACH, "client_gone"),
            (libc::ECONNRESET, "is_disconnect"),
            (libc::EPIPE, "is_disconnect"),
        ];
        for (errno, expected) in cases {
            let err = os(errno);
            let matched: Vec<&str> = classes
                .iter()
                .filter(|(_, class)| class(&err))
                .map(|(name, _)| *name)
                .collect();
            assert_eq!(matched, [expected], "{err}");
        }
        // A real failure (a bad fd, a full disk) is in no class: it is reported, not retried.
        for errno in [libc::EBADF, libc::EINVAL, libc::ENOSPC] {
            let err = os(errno);
            assert!(classes.iter().all(|(_, class)| !class(&err)), "{err}");
        }
    }
}
