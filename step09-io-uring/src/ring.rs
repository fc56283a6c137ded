//! The io_uring side: the rings shared with the kernel, the provided buffer ring, and the
//! check that io_uring is here at all.
//!
//! ```text
//!   user space                          kernel
//!   ──────────                          ──────
//!   submission queue (SQ)  ── SQEs ──▶  "accept on 3", "recv on 7 into group 0", "send on 9"
//!   completion queue (CQ)  ◀── CQEs ──  "accepted fd 12", "7: 31 bytes in buffer 5", "9: sent 31"
//!   buffer ring            ── bufs ──▶  empty buffers the kernel may fill, in any order
//! ```
//!
//! All three are memory shared with the kernel. Writing an SQE is a store to memory; one
//! `io_uring_enter` tells the kernel about every SQE written since the last one, and waits
//! for completions. Reading a CQE is a load. That is why a busy loop makes so few system
//! calls: thousands of operations can go in, and come back, per call.

use std::alloc::{Layout, alloc_zeroed};
use std::fmt;
use std::io;
use std::ptr::NonNull;
use std::sync::atomic::{AtomicU16, Ordering};
use std::time::Duration;

use io_uring::squeue::Entry as Sqe;
use io_uring::types::{BufRingEntry, SubmitArgs, Timespec};
use io_uring::{IoUring, cqueue};

/// The buffer group our multishot receives pick from.
pub const BUFFER_GROUP: u16 = 0;

/// Why this kernel (or this process) cannot run the step, in words a user can act on.
#[derive(Debug)]
pub struct Unavailable {
    /// What is missing.
    pub cause: String,
    /// How to check it.
    pub check: &'static str,
}

impl fmt::Display for Unavailable {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "io_uring is not available: {}; {}",
            self.cause, self.check
        )
    }
}

impl Unavailable {
    fn new(cause: impl Into<String>, check: &'static str) -> Unavailable {
        Unavailable {
            cause: cause.into(),
            check,
        }
    }
}

/// Create the rings: `sq_entries` submission slots, `cq_entries` completion slots.
///
/// `SINGLE_ISSUER` + `DEFER_TASKRUN`: only this thread submits, and the kernel finishes
/// completions (copying received bytes, posting CQEs) when we enter, not in interrupts at
/// random moments. The work is the same; it is just done in batches, on our time.
pub fn new_ring(sq_entries: u32, cq_entries: u32) -> Result<IoUring, Unavailable> {
    // The sysctl says it plainly, when it says no.
    let disabled = std::fs::read_to_string("/proc/sys/kernel/io_uring_disabled")
        .ok()
        .and_then(|s| s.trim().parse::<u32>().ok())
        .unwrap_or(0);
    if disabled == 2 {
        return Err(Unavailable::new(
            "disabled for every process (kernel.io_uring_disabled = 2)",
            "check with `sysctl kernel.io_uring_disabled`; 0 allows it",
        ));
    }
    let ring = IoUring::builder()
        .setup_cqsize(cq_entries)
        .setup_single_issuer()
        .setup_defer_taskrun()
        .build(sq_entries)
        .map_err(|err| match err.raw_os_error() {
            Some(libc::ENOSYS) => Unavailable::new(
                "this kernel has no io_uring (older than 5.1, or built without CONFIG_IO_URING)",
                "check with `uname -r` and `grep IO_URING /boot/config-$(uname -r)`",
            ),
            Some(libc::EPERM) if disabled == 1 => Unavailable::new(
                "allowed only for the group in kernel.io_uring_gid (kernel.io_uring_disabled = 1)",
                "check with `sysctl kernel.io_uring_disabled kernel.io_uring_gid` and `id`",
            ),
            Some(libc::EPERM) => Unavailable::new(
                "io_uring_setup is refused (a seccomp filter: container runtimes block it by default)",
                "check with `grep Seccomp /proc/self/status` (2 means filtered)",
            ),
            // DEFER_TASKRUN came with 6.1, after everything else this step uses (multishot
            // accept and receive, buffer rings, cancelling): a kernel that takes it
            // has them all.
            Some(libc::EINVAL) => Unavailable::new(
                "this kernel is too old for DEFER_TASKRUN (6.1 or later is needed)",
                "check with `uname -r`",
            ),
            _ => Unavailable::new(
                format!("io_uring_setup failed: {err}"),
                "check with `sysctl kernel.io_uring_disabled` and `uname -r`",
            ),
        })?;

    Ok(ring)
}

/// Queue a request. It reaches the kernel with the next `io_uring_enter`: a store to
/// memory now, no system call (unless the queue is full).
///
/// # Safety
///
/// Every buffer the request points at stays valid, unmoved and untouched until its
/// completion comes back.
pub unsafe fn push(ring: &mut IoUring, sqe: &Sqe) -> io::Result<()> {
    // SAFETY: the caller keeps the request's buffers alive until its completion.
    while unsafe { ring.submission().push(sqe) }.is_err() {
        // The queue is full: hand what is in it to the kernel now, and go on.
        ring.submit()?;
    }
    Ok(())
}

/// Submit every request queued since the last call, and wait up to `timeout` for at least
/// one completion: one `io_uring_enter`.
pub fn submit_and_wait(ring: &IoUring, timeout: Duration) -> io::Result<()> {
    let timeout = Timespec::from(timeout);
    match ring
        .submitter()
        .submit_with_args(1, &SubmitArgs::new().timespec(&timeout))
    {
        Ok(_) => Ok(()),
        // The timeout passed; or the completion queue is full and must be emptied before
        // more can be submitted. Neither is an error: the loop goes round.
        Err(err) if matches!(err.raw_os_error(), Some(libc::ETIME | libc::EBUSY)) => Ok(()),
        Err(err) => Err(err),
    }
}

/// The next completion, if one is there: a load from the completion queue.
pub fn next_completion(ring: &mut IoUring) -> Option<cqueue::Entry> {
    ring.completion().next()
}

/// The provided buffer ring: `count` buffers of `size` bytes that the kernel picks from
/// when bytes arrive on any connection.
///
/// This is step06's lazy buffer moved into the kernel. A multishot receive names a buffer
/// *group*, not a buffer: an idle connection owns nothing, and a buffer is taken only when
/// bytes come in. The completion says which buffer (its id); from then on the buffer is
/// ours, and the kernel will not pick it again until we give it back.
///
/// The ring itself is an array of `(addr, len, bid)` entries. We append entries at the tail
/// (ours to move); the kernel takes them from the head (its own). The tail is a `u16` that
/// overlays the reserved field of entry 0.
pub struct BufRing {
    /// The ring of entries, page-aligned, shared with the kernel.
    entries: NonNull<BufRingEntry>,
    /// All the buffers, one after another: buffer `bid` is `size` bytes at `bid * size`.
    buffers: NonNull<u8>,
    /// Bytes per buffer.
    size: usize,
    /// Number of entries (a power of two), so `index = tail & mask`.
    mask: u16,
    /// Our copy of the tail: where the next returned buffer goes.
    tail: u16,
}

impl BufRing {
    /// Allocate `count` buffers of `size` bytes, register them with the kernel as
    /// [`BUFFER_GROUP`], and hand every one of them to it.
    ///
    /// The memory is written now, so it is resident before the step measures its baseline:
    /// the pool is a fixed cost, the same at 1 connection or 10 000. It is never freed: the
    /// kernel may write into it for as long as the ring exists, which is as long as the
    /// process.
    pub fn new(ring: &IoUring, count: u16, size: u32) -> Result<BufRing, Unavailable> {
        assert!(
            count.is_power_of_two(),
            "bug: the option parser allows powers of two only"
        );
        let entries_layout = Layout::array::<BufRingEntry>(count.into())
            .and_then(|layout| layout.align_to(4096))
            .expect("bug: at most 32 768 entries of 16 bytes");
        // SAFETY: the layout has a non-zero size (count ≥ 1).
        let entries = unsafe { alloc_zeroed(entries_layout) }.cast::<BufRingEntry>();
        let entries =
            NonNull::new(entries).unwrap_or_else(|| std::alloc::handle_alloc_error(entries_layout));

        // Non-zero bytes, so that every page is really written now (a zeroed allocation is
        // only reserved, and would be counted later, against the connections).
        let pool: &'static mut [u8] = Vec::leak(vec![0x55; count as usize * size as usize]);
        let buffers = NonNull::from(pool).cast::<u8>();

        // SAFETY: `entries` is page-aligned and holds `count` entries; it is never freed (see
        // above), so it stays valid for as long as the ring.
        unsafe {
            ring.submitter().register_buf_ring_with_flags(
                entries.as_ptr() as u64,
                count,
                BUFFER_GROUP,
                0,
            )
        }
        .map_err(|err| {
            Unavailable::new(
                format!("cannot register a provided buffer ring: {err}"),
                "check with `uname -r` (5.19 or later)",
            )
        })?;

        let mut bufs = BufRing {
            entries,
            buffers,
            size: size as usize,
            mask: count - 1,
            tail: 0,
        };
        for bid in 0..count {
            bufs.put(bid);
        }
        Ok(bufs)
    }

    /// The `len` bytes a receive's completion says the kernel put in one of our buffers.
    ///
    /// Between that completion and [`BufRing::give_back`], the kernel does not touch the
    /// buffer.
    pub fn received(&self, cqe: &cqueue::Entry, len: usize) -> &[u8] {
        let bid = cqueue::buffer_select(cqe.flags())
            .expect("bug: a receive with bytes names the buffer they are in");
        assert!(
            bid <= self.mask && len <= self.size,
            "bug: the kernel names a buffer of ours"
        );
        // SAFETY: buffer `bid` lies inside the pool (checked above) and the kernel wrote `len`
        // bytes into it before posting the completion; it will not write again until we give
        // the buffer back, which needs `&mut self`, so not while this borrow lives.
        unsafe {
            std::slice::from_raw_parts(self.buffers.as_ptr().add(bid as usize * self.size), len)
        }
    }

    /// Hand back to the kernel the buffer a completion gave us, if it gave one.
    pub fn give_back(&mut self, cqe: &cqueue::Entry) {
        if let Some(bid) = cqueue::buffer_select(cqe.flags()) {
            self.put(bid);
        }
    }

    /// Hand buffer `bid` to the kernel: append it at the tail, then publish the tail.
    fn put(&mut self, bid: u16) {
        let index = (self.tail & self.mask) as usize;
        // SAFETY: `index` ≤ mask, inside the entries. The kernel reads entries only between
        // its head and our published tail, and this one is past the tail; the one field it
        // may read here is entry 0's tail, which only we write and the setters below leave
        // alone (they write the address, length and id).
        let entry = unsafe { &mut *self.entries.as_ptr().add(index) };
        // SAFETY: `bid` ≤ mask: the address is inside the pool.
        let addr = unsafe { self.buffers.as_ptr().add(bid as usize * self.size) };
        entry.set_addr(addr as u64);
        entry.set_len(self.size as u32);
        entry.set_bid(bid);
        self.tail = self.tail.wrapping_add(1);
        // The kernel may read the entry as soon as it sees the new tail: the entry's fields
        // must be visible first, hence the release store.
        // SAFETY: the tail field of entry 0 is inside the entries, aligned for a u16; the
        // kernel only reads it, and we are the only writer.
        let tail = unsafe { &*BufRingEntry::tail(self.entries.as_ptr()).cast::<AtomicU16>() };
        tail.store(self.tail, Ordering::Release);
    }
}

/// A completion's result: a count (bytes, or a new fd), or the error, `-errno`.
pub fn cqe_result(cqe: &cqueue::Entry) -> io::Result<usize> {
    match cqe.result() {
        n if n >= 0 => Ok(n as usize),
        errno => Err(io::Error::from_raw_os_error(-errno)),
    }
}
