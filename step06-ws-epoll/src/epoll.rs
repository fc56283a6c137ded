//! A small safe wrapper around the three epoll syscalls. Steps 05 and 06 share this file
//! byte for byte, so `diff -ruN step05-epoll/src step06-ws-epoll/src` leaves it out.

use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd};
use std::time::Duration;

use common::sys::cvt;

/// Interest in reading: the peer sent bytes, or closed.
pub(crate) const READABLE: u32 = libc::EPOLLIN as u32;
/// Interest in writing: the kernel's send buffer has room again.
pub(crate) const WRITABLE: u32 = libc::EPOLLOUT as u32;

/// An epoll instance. Closed when dropped.
pub(crate) struct Epoll {
    /// The fd returned by `epoll_create1`: a handle on the kernel's interest and ready lists.
    fd: OwnedFd,
}

impl Epoll {
    pub(crate) fn new() -> io::Result<Epoll> {
        // SAFETY: epoll_create1 takes no pointers. EPOLL_CLOEXEC: a child process we might
        // exec does not inherit it.
        let fd = cvt(unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) })?;
        // SAFETY: `fd` was just returned by epoll_create1: open, and owned by nobody else.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        Ok(Epoll { fd })
    }

    /// Add `fd` to the interest list (EPOLL_CTL_ADD). Its events carry the fd as token.
    ///
    /// A `BorrowedFd`, not a bare number: the caller holds the socket, so the fd is open
    /// for the whole call. Closing the last fd of a socket removes it from every epoll
    /// interest list, so `deregister` before closing is optional. (A registration lives as
    /// long as the socket, not the fd: while a `dup` of it, or a child's copy, is open, its
    /// events still come.)
    pub(crate) fn register(&self, fd: BorrowedFd<'_>, interest: u32) -> io::Result<()> {
        self.ctl(libc::EPOLL_CTL_ADD, fd, interest)
    }

    /// Change what we watch `fd` for (EPOLL_CTL_MOD).
    pub(crate) fn modify(&self, fd: BorrowedFd<'_>, interest: u32) -> io::Result<()> {
        self.ctl(libc::EPOLL_CTL_MOD, fd, interest)
    }

    /// Remove `fd` from the interest list (EPOLL_CTL_DEL).
    pub(crate) fn deregister(&self, fd: BorrowedFd<'_>) -> io::Result<()> {
        self.ctl(libc::EPOLL_CTL_DEL, fd, 0)
    }

    /// The one place that calls epoll_ctl. O(log n): the interest list is a red-black tree.
    fn ctl(&self, op: libc::c_int, fd: BorrowedFd<'_>, interest: u32) -> io::Result<()> {
        let mut event = libc::epoll_event {
            events: interest,
            u64: fd.as_raw_fd() as u64,
        };
        // SAFETY: `self.fd` is an open epoll fd, `fd` is open for the call (it is
        // borrowed), and `event` a valid epoll_event; the kernel copies it and keeps no
        // pointer to it.
        cvt(unsafe { libc::epoll_ctl(self.fd.as_raw_fd(), op, fd.as_raw_fd(), &mut event) })?;
        Ok(())
    }

    /// Wait up to `timeout` for ready fds and put their events in `events` (up to its
    /// capacity; any others are reported on the next call). Returns how many.
    pub(crate) fn wait(
        &self,
        events: &mut Vec<libc::epoll_event>,
        timeout: Duration,
    ) -> io::Result<usize> {
        events.clear();
        let max = events.capacity().min(libc::c_int::MAX as usize) as libc::c_int;
        // Round up, so a 0.4 ms timeout sleeps 1 ms instead of spinning at 0.
        let timeout_ms = timeout
            .as_micros()
            .div_ceil(1000)
            .min(libc::c_int::MAX as u128) as libc::c_int;
        // SAFETY: the kernel writes at most `max` events into the Vec's spare capacity,
        // which holds at least `max` of them.
        let n = cvt(unsafe {
            libc::epoll_wait(self.fd.as_raw_fd(), events.as_mut_ptr(), max, timeout_ms)
        })?;
        // SAFETY: the kernel initialised the first `n` events (n <= max <= capacity).
        unsafe { events.set_len(n as usize) };
        Ok(n as usize)
    }
}
