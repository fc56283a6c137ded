//! One message on every idle connection at once, without waking any of them: the message
//! is written straight to each plain socket, and the echoes are read back by sweeping the
//! sockets with non-blocking reads until all are in or time is up.
//!
//! Waking a million connections (a tokio registration and tungstenite buffers each) would
//! cost gigabytes; this costs one shared buffer. A WebSocket message is one frame built
//! once: the same masked frame goes to every connection, and the server's unmasked echo
//! is known in advance, so every reply is checked byte for byte as it arrives.

use std::io::{ErrorKind, Read, Write};
use std::time::{Duration, Instant};

use tokio_tungstenite::tungstenite::protocol::frame::Frame;
use tokio_tungstenite::tungstenite::protocol::frame::coding::{Data, OpCode};

use crate::{Conn, EchoStats, Protocol};

/// The bytes sent on each connection, and the bytes that must come back.
fn wire(protocol: Protocol, payload: &[u8]) -> (Vec<u8>, Vec<u8>) {
    match protocol {
        Protocol::Tcp => (payload.to_vec(), payload.to_vec()),
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
            (sent, back)
        }
    }
}

/// A connection whose echo is still on its way.
struct Pending {
    index: usize,
    /// Bytes of the echo read so far.
    got: usize,
    sent_at: Instant,
}

/// Send `payload` once on every usable idle connection in `conns`, all at once, and count
/// the echoes back within `deadline`. A connection whose echo did not come back right is
/// marked unusable, as with probes. Connections already handed to tokio are skipped.
pub async fn echo_all(
    conns: &mut [Conn],
    protocol: Protocol,
    payload: &[u8],
    deadline: Duration,
) -> EchoStats {
    let (sent, back) = wire(protocol, payload);
    let mut stats = EchoStats::default();
    let mut pending = Vec::new();
    for (index, conn) in conns.iter_mut().enumerate() {
        if !conn.usable {
            continue;
        }
        let Some(socket) = conn.idle_socket() else {
            continue;
        };
        // A fresh socket's send buffer is empty: a small message goes out in one write.
        match socket.write(&sent) {
            Ok(n) if n == sent.len() => pending.push(Pending {
                index,
                got: 0,
                sent_at: Instant::now(),
            }),
            _ => {
                stats.failed += 1;
                conn.usable = false;
            }
        }
    }

    let give_up = Instant::now() + deadline;
    let mut buf = vec![0u8; back.len().max(1)];
    while !pending.is_empty() && Instant::now() < give_up {
        let before = pending.len();
        pending.retain_mut(|p| {
            let conn = &mut conns[p.index];
            let socket = conn
                .idle_socket()
                .expect("bug: only idle sockets are pending");
            let want = back.len() - p.got;
            match socket.read(&mut buf[..want]) {
                Err(err)
                    if matches!(err.kind(), ErrorKind::WouldBlock | ErrorKind::Interrupted) =>
                {
                    true
                }
                Ok(n) if n > 0 && buf[..n] == back[p.got..p.got + n] => {
                    p.got += n;
                    if p.got < back.len() {
                        return true;
                    }
                    stats.ok += 1;
                    stats.rtts.push(p.sent_at.elapsed());
                    false
                }
                Ok(0) | Err(_) => {
                    stats.failed += 1;
                    conn.usable = false;
                    false
                }
                Ok(_) => {
                    stats.mismatched += 1;
                    conn.usable = false;
                    false
                }
            }
        });
        // Each sweep costs one read per pending socket. When few echoes arrived in one,
        // the server is behind: leave it the CPU for a moment rather than sweep again.
        let arrived = before - pending.len();
        if arrived * 10 < before {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    for p in pending {
        stats.lost += 1;
        conns[p.index].usable = false;
    }
    stats.finish()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A WebSocket message goes out as one masked binary frame, and comes back unmasked.
    #[test]
    fn websocket_frames_are_masked_going_out_and_plain_coming_back() {
        let (sent, back) = wire(Protocol::WebSocket, b"hi");
        assert_eq!(back, [0x82, 2, b'h', b'i']);
        assert_eq!((sent[0], sent[1] & 0x80, sent[1] & 0x7f), (0x82, 0x80, 2));
        let mask = &sent[2..6];
        let unmasked: Vec<u8> = sent[6..]
            .iter()
            .zip(mask.iter().cycle())
            .map(|(b, m)| b ^ m)
            .collect();
        assert_eq!(unmasked, b"hi");
        assert_eq!(wire(Protocol::Tcp, b"hi"), (b"hi".to_vec(), b"hi".to_vec()));
    }
}
