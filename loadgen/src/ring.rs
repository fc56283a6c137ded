//! The burst on io_uring, where the kernel allows it (`sweep.rs` falls back to epoll).
//!
//! With epoll, an echo costs loadgen four system calls of its own (the write, the
//! registration, the read, a share of a wait) and a registration to undo. Here every
//! message and every echo's receive is a request in a ring shared with the kernel: hundreds
//! go in per system call, the kernel waits for each echo itself (no registration), and the
//! echoes come back as completions, hundreds per system call. Same bytes, same checks; less
//! of two shared cores spent by the client, more left to the server being measured.
//!
//! A tool's shortcut, not a lesson: step09 is where io_uring is taught.

use std::io;
use std::os::fd::AsRawFd;
use std::time::{Duration, Instant};

use io_uring::types::{CancelBuilder, Fd, SubmitArgs, Timespec};
use io_uring::{IoUring, cqueue, opcode, squeue};

use crate::sweep::Wire;
use crate::{Conn, EchoStats, monotonic_ns};

/// Requests submitted per system call while the messages go out: 256 messages and their
/// receives. Each message's clock starts when its batch is submitted.
const BATCH: usize = 256;

/// `IORING_RECVSEND_POLL_FIRST`: don't try the receive at once (the echo cannot be there
/// yet), wait for the socket to be readable first.
const POLL_FIRST: u16 = 1;

/// A connection whose echo is on its way, or was dealt with.
struct Pending {
    index: usize,
    /// Bytes of the echo read so far.
    got: usize,
    sent_ns: u64,
    /// Its receive is in the kernel.
    receiving: bool,
    /// Echoed, failed or mismatched: counted already.
    done: bool,
}

/// A ring for one burst of `conns` messages, or why there is none.
pub fn ring(conns: usize) -> io::Result<IoUring> {
    // One completion per echo (a send completes silently unless it fails): room for all.
    let cq = (conns.max(1) as u32).next_power_of_two().clamp(4096, 65536);
    IoUring::builder()
        .setup_single_issuer()
        .setup_defer_taskrun()
        .setup_cqsize(cq)
        .build(2 * BATCH as u32)
}

/// Send each usable idle connection in `conns` its copy of `wire`'s message, all at once,
/// and take the echoes as they complete, each checked against its own connection's copy,
/// until all are in or `deadline` has passed; as [`crate::sweep::echo_all`] does with epoll.
pub async fn echo_all(
    mut ring: IoUring,
    conns: &mut [Conn],
    wire: &Wire,
    deadline: Duration,
) -> EchoStats {
    let mut stats = EchoStats::default();
    let mut pending: Vec<Pending> = Vec::new();
    for (index, conn) in conns.iter_mut().enumerate() {
        if conn.usable && conn.idle_socket().is_some() {
            pending.push(Pending {
                index,
                got: 0,
                sent_ns: 0,
                receiving: false,
                done: false,
            });
        }
    }
    // Where each echo lands: a slot of `len` bytes per pending connection, the kernel's
    // from its receive's submission until its completion. Each message goes out from its
    // own slot of `sends` too: every connection's copy differs (see `Wire`).
    let len = wire.back_len();
    let mut buffers = vec![0u8; pending.len() * len];
    let sent_len = wire.sent_len();
    let mut sends = vec![0u8; pending.len() * sent_len];
    let mut back = vec![0u8; len];
    let give_up = Instant::now() + deadline;

    for batch in (0..pending.len()).step_by(BATCH) {
        let end = (batch + BATCH).min(pending.len());
        for slot in batch..end {
            let fd = socket_fd(conns, &pending[slot]);
            let sent = &mut sends[slot * sent_len..(slot + 1) * sent_len];
            wire.sent_by(pending[slot].index, sent);
            // The receive first: it waits for the echo of the send that follows it.
            let recv = receive(fd, &mut buffers[slot * len..(slot + 1) * len], slot);
            let send = opcode::Send::new(Fd(fd), sent.as_ptr(), sent_len as u32)
                .flags(libc::MSG_NOSIGNAL | libc::MSG_DONTWAIT)
                .build()
                .flags(squeue::Flags::SKIP_SUCCESS)
                .user_data(token(SEND, slot));
            // SAFETY: the receive's slot lives in `buffers` and the send's in `sends`, both
            // until this function returns, which is after every request has completed (or
            // the buffers are leaked, see `finish`).
            unsafe { push(&mut ring, &[recv, send]) };
            pending[slot].receiving = true;
        }
        let now = monotonic_ns();
        stats.first_sent_ns.get_or_insert(now);
        pending[batch..end].iter_mut().for_each(|p| p.sent_ns = now);
        // The batch goes to the kernel: the receives wait, the messages go out.
        let _ = ring.submit();
    }

    let mut remaining = pending.len();
    while remaining > 0 && Instant::now() < give_up {
        // Run the completions waiting for us (with DEFER_TASKRUN the kernel finishes a
        // receive when we ask), but never wait: a server in this same runtime, as in the
        // tests, must get to run. A timeout of zero returns at once.
        let want = remaining.min(4096);
        let _ = ring
            .submitter()
            .submit_with_args(want, &SubmitArgs::new().timespec(&Timespec::new()));
        // Taken out first: a partial echo queues another receive meanwhile.
        let completions: Vec<cqueue::Entry> = ring.completion().collect();
        for cqe in &completions {
            let (op, slot) = (cqe.user_data() & 1, (cqe.user_data() >> 1) as usize);
            let p = &mut pending[slot];
            if op == RECV {
                p.receiving = false;
            }
            if p.done {
                continue;
            }
            let conn = &mut conns[p.index];
            match (op, cqe.result()) {
                // A send that failed (a successful one posts nothing).
                (SEND, _) | (_, ..=0) => {
                    stats.failed += 1;
                    conn.usable = false;
                }
                (_, n) => {
                    let n = n as usize;
                    let got = &buffers[slot * len..slot * len + n];
                    wire.back_to(p.index, &mut back);
                    if got != &back[p.got..p.got + n] {
                        stats.mismatched += 1;
                        conn.usable = false;
                    } else if p.got + n == len {
                        stats.came_back(p.sent_ns);
                    } else {
                        // Part of the echo: receive the rest.
                        p.got += n;
                        let fd = socket_fd(conns, p);
                        let rest = &mut buffers[slot * len + p.got..(slot + 1) * len];
                        // SAFETY: as above: the slot outlives the request.
                        unsafe { push(&mut ring, &[receive(fd, rest, slot)]) };
                        p.receiving = true;
                        continue;
                    }
                }
            }
            p.done = true;
            remaining -= 1;
        }
        if completions.is_empty() {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    }
    for p in pending.iter().filter(|p| !p.done) {
        stats.lost += 1;
        conns[p.index].usable = false;
    }
    finish(&mut ring, &mut pending, buffers, sends);
    stats.finish()
}

/// Take back every receive still in the kernel (the echoes that never came) before the
/// buffers go. Should one not come back in a second, the buffers (and the messages, sent
/// long since, but let nothing be freed under the kernel's feet) are leaked.
fn finish(ring: &mut IoUring, pending: &mut [Pending], buffers: Vec<u8>, sends: Vec<u8>) {
    let mut receiving = pending.iter().filter(|p| p.receiving).count();
    if receiving == 0 {
        return;
    }
    let cancel = opcode::AsyncCancel2::new(CancelBuilder::any().all())
        .build()
        .user_data(u64::MAX);
    // SAFETY: a cancel points at no buffer.
    unsafe { push(ring, &[cancel]) };
    let give_up = Instant::now() + Duration::from_secs(1);
    while receiving > 0 && Instant::now() < give_up {
        let _ = ring.submit_and_wait(1);
        while let Some(cqe) = ring.completion().next() {
            let slot = (cqe.user_data() >> 1) as usize;
            if cqe.user_data() != u64::MAX && cqe.user_data() & 1 == RECV && pending[slot].receiving
            {
                pending[slot].receiving = false;
                receiving -= 1;
            }
        }
    }
    if receiving > 0 {
        std::mem::forget(buffers);
        std::mem::forget(sends);
    }
}

const SEND: u64 = 0;
const RECV: u64 = 1;

/// A completion's `user_data`: the pending slot, and which request.
fn token(op: u64, slot: usize) -> u64 {
    ((slot as u64) << 1) | op
}

/// A receive into `buf` for `slot`, waiting until the socket is readable.
fn receive(fd: i32, buf: &mut [u8], slot: usize) -> squeue::Entry {
    opcode::Recv::new(Fd(fd), buf.as_mut_ptr(), buf.len() as u32)
        .ioprio(POLL_FIRST)
        .build()
        .user_data(token(RECV, slot))
}

fn socket_fd(conns: &mut [Conn], p: &Pending) -> i32 {
    conns[p.index]
        .idle_socket()
        .expect("bug: only idle sockets are pending")
        .as_raw_fd()
}

/// Queue `entries`, handing the queue to the kernel first when it is full.
///
/// # Safety
///
/// Every buffer the entries point at stays valid until their completions.
unsafe fn push(ring: &mut IoUring, entries: &[squeue::Entry]) {
    // SAFETY: the caller keeps the buffers alive.
    while unsafe { ring.submission().push_multiple(entries) }.is_err() {
        let _ = ring.submit();
    }
}
