//! One message on every idle connection at once, without waking any of them: the message
//! is written straight to each plain socket, and the echoes are read back, as they arrive,
//! from the sockets an epoll set reports ready, until all are in or time is up.
//!
//! Per message, loadgen makes four system calls (the write, the registration, the read, and
//! a share of one `epoll_wait`): the fewest epoll allows with a set made for the burst. A
//! registration is one-shot, so a socket whose echo is in needs no call to leave the set.
//!
//! Waking a million connections (a tokio registration and tungstenite buffers each) would
//! cost gigabytes; this costs one shared buffer (and an epoll entry per socket in the
//! kernel while the burst lasts). A WebSocket message is one frame built
//! once: each connection sends that masked frame with its own number mixed in (see
//! [`Wire`]), and the server's unmasked echo is known in advance, so every reply is
//! checked byte for byte, against its own connection's message, as it arrives.

use std::io::{self, ErrorKind, Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::time::{Duration, Instant};

use tokio_tungstenite::tungstenite::protocol::frame::Frame;
use tokio_tungstenite::tungstenite::protocol::frame::coding::{Data, OpCode};

use common::sys::cvt;

use crate::{Conn, EchoStats, Protocol, monotonic_ns, ring};

/// One burst's message: the bytes each connection sends, and the bytes that must come back.
///
/// Every connection's copy differs: its number (its place in the burst) is mixed into the
/// first eight bytes of the payload. One copy for all would let a server that answers on
/// the wrong connection (two connections' echoes swapped) pass the check; this way each
/// echo is checked against what its own connection sent. A WebSocket message is one frame
/// built once, and a connection's copy is that frame with its number mixed in: the mask
/// is an XOR too, so mixing the number into masked bytes is masking the numbered payload.
pub(crate) struct Wire {
    /// What is sent, before the connection's number is mixed in.
    sent: Vec<u8>,
    /// What must come back, likewise.
    back: Vec<u8>,
    /// Where the payload starts in `sent` and in `back`: after the frame header, if any.
    sent_at: usize,
    back_at: usize,
}

impl Wire {
    pub(crate) fn new(protocol: Protocol, payload: &[u8]) -> Wire {
        match protocol {
            Protocol::Tcp => Wire {
                sent: payload.to_vec(),
                back: payload.to_vec(),
                sent_at: 0,
                back_at: 0,
            },
            Protocol::WebSocket => {
                let frame = || Frame::message(payload.to_vec(), OpCode::Data(Data::Binary), true);
                let (mut sent, mut back) = (Vec::new(), Vec::new());
                // A client masks what it sends (RFC 6455 §5.3); the server's echo is unmasked.
                let mut masked = frame();
                masked.header_mut().mask = Some(fastrand::u32(..).to_ne_bytes());
                masked
                    .format(&mut sent)
                    .expect("bug: a Vec takes any frame");
                frame()
                    .format(&mut back)
                    .expect("bug: a Vec takes any frame");
                Wire {
                    sent_at: sent.len() - payload.len(),
                    back_at: back.len() - payload.len(),
                    sent,
                    back,
                }
            }
        }
    }

    pub(crate) fn sent_len(&self) -> usize {
        self.sent.len()
    }

    pub(crate) fn back_len(&self) -> usize {
        self.back.len()
    }

    /// What connection `index` sends, into `out` (`sent_len()` bytes).
    pub(crate) fn sent_by(&self, index: usize, out: &mut [u8]) {
        out.copy_from_slice(&self.sent);
        mix_in(&mut out[self.sent_at..], index);
    }

    /// What must come back on connection `index`, into `out` (`back_len()` bytes).
    pub(crate) fn back_to(&self, index: usize, out: &mut [u8]) {
        out.copy_from_slice(&self.back);
        mix_in(&mut out[self.back_at..], index);
    }
}

/// XOR a connection's number into the first eight bytes of its payload (fewer if the
/// payload is shorter: below 8 bytes, connections 256 apart may send the same bytes).
fn mix_in(payload: &mut [u8], index: usize) {
    for (byte, n) in payload.iter_mut().zip((index as u64).to_le_bytes()) {
        *byte ^= n;
    }
}

/// A connection whose echo is still on its way.
struct Pending {
    index: usize,
    /// Bytes of the echo read so far.
    got: usize,
    /// When its message went out, on [`monotonic_ns`]'s clock.
    sent_ns: u64,
}

/// Send `payload` once on every usable idle connection in `conns`, all at once, and count
/// the echoes back within `deadline`. A connection whose echo did not come back right is
/// marked unusable, as with probes. Connections already handed to tokio are skipped.
///
/// Where io_uring runs (and `epoll_only` is not set), the burst goes through it instead
/// (see `ring.rs`): the same messages and checks, fewer system calls.
pub async fn echo_all(
    conns: &mut [Conn],
    protocol: Protocol,
    payload: &[u8],
    deadline: Duration,
    epoll_only: bool,
) -> EchoStats {
    let wire = Wire::new(protocol, payload);
    if !epoll_only && let Ok(ring) = ring::ring(conns.len()) {
        return ring::echo_all(ring, conns, &wire, deadline).await;
    }
    let mut stats = EchoStats::default();
    let mut pending = Vec::new();
    let mut sent = vec![0u8; wire.sent_len()];
    for (index, conn) in conns.iter_mut().enumerate() {
        if !conn.usable {
            continue;
        }
        let Some(socket) = conn.idle_socket() else {
            continue;
        };
        // A fresh socket's send buffer is empty: a small message goes out in one write.
        wire.sent_by(index, &mut sent);
        match socket.write(&sent) {
            Ok(n) if n == sent.len() => {
                let sent_ns = monotonic_ns();
                stats.first_sent_ns.get_or_insert(sent_ns);
                pending.push(Pending {
                    index,
                    got: 0,
                    sent_ns,
                });
            }
            _ => {
                stats.failed += 1;
                conn.usable = false;
            }
        }
    }

    let give_up = Instant::now() + deadline;
    let ready = match Readiness::watch(conns, &pending) {
        Ok(ready) => ready,
        Err(err) => {
            eprintln!("loadgen: cannot watch the burst's sockets ({err}); counting them as lost");
            Readiness::none()
        }
    };
    let mut remaining = pending.len();
    let mut pending: Vec<Option<Pending>> = pending.into_iter().map(Some).collect();
    let mut buf = vec![0u8; wire.back_len().max(1)];
    let mut back = vec![0u8; wire.back_len()];
    let mut events = Vec::with_capacity(1024);
    while remaining > 0 && Instant::now() < give_up {
        // Never block here: a server in this same runtime (as in tests) must get to run.
        if ready.poll(&mut events) == 0 {
            tokio::time::sleep(Duration::from_millis(1)).await;
            continue;
        }
        for &slot in &events {
            let Some(p) = pending[slot].as_mut() else {
                continue; // done already; a stale readiness
            };
            let conn = &mut conns[p.index];
            let socket = conn
                .idle_socket()
                .expect("bug: only idle sockets are pending");
            let fd = socket.as_raw_fd();
            wire.back_to(p.index, &mut back);
            let want = back.len() - p.got;
            let done = match socket.read(&mut buf[..want]) {
                Err(err)
                    if matches!(err.kind(), ErrorKind::WouldBlock | ErrorKind::Interrupted) =>
                {
                    false
                }
                Ok(n) if n > 0 && buf[..n] == back[p.got..p.got + n] => {
                    p.got += n;
                    if p.got == back.len() {
                        stats.came_back(p.sent_ns);
                    }
                    p.got == back.len()
                }
                Ok(0) | Err(_) => {
                    stats.failed += 1;
                    conn.usable = false;
                    true
                }
                Ok(_) => {
                    stats.mismatched += 1;
                    conn.usable = false;
                    true
                }
            };
            if done {
                // One-shot: the set reports it no more, and drops it when the set closes.
                pending[slot] = None;
                remaining -= 1;
            } else {
                // Part of the echo, or none yet: watch for the rest.
                ready.rearm(fd, slot);
            }
        }
    }
    for p in pending.into_iter().flatten() {
        stats.lost += 1;
        conns[p.index].usable = false;
    }
    stats.finish()
}

/// The pending sockets in one epoll set, so that each pass reads only the sockets an echo
/// has reached, rather than every pending one: with tens of thousands pending, sweeping
/// them all costs the CPU the server needs to answer.
///
/// One-shot (`EPOLLONESHOT`): a socket is reported once, then left in the set disabled
/// until [`Readiness::rearm`], so the one that is done costs no call to take out; closing
/// the set frees every registration at once.
struct Readiness {
    /// `None` when the set could not be made: nothing is ever ready.
    epoll: Option<OwnedFd>,
}

impl Readiness {
    fn none() -> Readiness {
        Readiness { epoll: None }
    }

    /// An epoll set holding each pending socket, its token the socket's slot in `pending`.
    fn watch(conns: &mut [Conn], pending: &[Pending]) -> io::Result<Readiness> {
        // SAFETY: epoll_create1 takes no pointers; on success it returns a new fd we own.
        let fd = cvt(unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) })?;
        // SAFETY: `fd` was just returned by epoll_create1 and is owned by nothing else.
        let epoll = unsafe { OwnedFd::from_raw_fd(fd) };
        for (slot, p) in pending.iter().enumerate() {
            let socket = conns[p.index]
                .idle_socket()
                .expect("bug: only idle sockets are pending");
            ctl(&epoll, libc::EPOLL_CTL_ADD, socket.as_raw_fd(), slot)?;
        }
        Ok(Readiness { epoll: Some(epoll) })
    }

    /// The slots ready now, into `slots` (at most its capacity); returns how many.
    fn poll(&self, slots: &mut Vec<usize>) -> usize {
        slots.clear();
        let Some(epoll) = &self.epoll else { return 0 };
        let mut events = [libc::epoll_event { events: 0, u64: 0 }; 1024];
        // SAFETY: the epoll fd is open; `events` is writable for the length we pass; a
        // timeout of 0 returns at once.
        let n = unsafe { libc::epoll_wait(epoll.as_raw_fd(), events.as_mut_ptr(), 1024, 0) };
        // epoll_event is packed: copy the token out, never borrow it.
        slots.extend(
            events[..n.max(0) as usize]
                .iter()
                .map(|e| { e.u64 } as usize),
        );
        slots.len()
    }

    /// Report `fd` (in `slot`) again when it is readable: it was reported without the
    /// whole echo in it. A socket that cannot be watched again is left to the deadline.
    fn rearm(&self, fd: RawFd, slot: usize) {
        if let Some(epoll) = &self.epoll {
            let _ = ctl(epoll, libc::EPOLL_CTL_MOD, fd, slot);
        }
    }
}

/// Add `fd` to `epoll`, or modify its registration: readable, once, with `slot` as token.
fn ctl(epoll: &OwnedFd, op: libc::c_int, fd: RawFd, slot: usize) -> io::Result<()> {
    let mut event = libc::epoll_event {
        events: (libc::EPOLLIN | libc::EPOLLONESHOT) as u32,
        u64: slot as u64,
    };
    // SAFETY: both fds are open, and `event` is a valid epoll_event for the call.
    cvt(unsafe { libc::epoll_ctl(epoll.as_raw_fd(), op, fd, &mut event) })?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What connection `index` sends, and must get back.
    fn wire(protocol: Protocol, payload: &[u8], index: usize) -> (Vec<u8>, Vec<u8>) {
        let wire = Wire::new(protocol, payload);
        let (mut sent, mut back) = (vec![0; wire.sent_len()], vec![0; wire.back_len()]);
        wire.sent_by(index, &mut sent);
        wire.back_to(index, &mut back);
        (sent, back)
    }

    /// The payload of `frame`, a masked client frame of under 126 bytes, unmasked.
    fn unmask(frame: &[u8]) -> Vec<u8> {
        let mask = &frame[2..6];
        frame[6..]
            .iter()
            .zip(mask.iter().cycle())
            .map(|(b, m)| b ^ m)
            .collect()
    }

    /// A WebSocket message goes out as one masked binary frame, and comes back unmasked.
    #[test]
    fn websocket_frames_are_masked_going_out_and_plain_coming_back() {
        let (sent, back) = wire(Protocol::WebSocket, b"hi", 0);
        assert_eq!(back, [0x82, 2, b'h', b'i']);
        assert_eq!((sent[0], sent[1] & 0x80, sent[1] & 0x7f), (0x82, 0x80, 2));
        let unmasked = unmask(&sent);
        assert_eq!(unmasked, b"hi");
        assert_eq!(
            wire(Protocol::Tcp, b"hi", 0),
            (b"hi".to_vec(), b"hi".to_vec())
        );
    }

    /// Each connection's copy carries its number, masked or not: connection 0x0102 sends
    /// and gets back the payload with 0x02, 0x01 mixed into its first two bytes.
    #[test]
    fn each_connection_sends_and_expects_its_own_bytes() {
        let payload = [0xf0u8; 10];
        let (sent, back) = wire(Protocol::Tcp, &payload, 0x0102);
        let mut own = payload;
        own[0] ^= 0x02;
        own[1] ^= 0x01;
        assert_eq!((sent.as_slice(), back.as_slice()), (&own[..], &own[..]));

        let (sent, back) = wire(Protocol::WebSocket, &payload, 0x0102);
        assert_eq!(
            &back[2..],
            &own[..],
            "the echo expected: unmasked, numbered"
        );
        let unmasked = unmask(&sent);
        assert_eq!(
            unmasked, own,
            "the message sent: the numbered payload, masked"
        );
        assert_ne!(
            wire(Protocol::Tcp, &payload, 1).0,
            wire(Protocol::Tcp, &payload, 2).0
        );
    }
}
