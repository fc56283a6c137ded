//! The stall clock of the WebSocket steps (06–09), attacked as a hostile client would. The
//! rule (DESIGN.md, "Budgets every WebSocket step holds"): what a connection holds must be
//! *finished* within `--stall-timeout` of when it began to hold it. Bytes trickled in, a
//! ping, an empty fragment in the middle of a message: none of them restarts the clock.
//!
//! Each check starts the step with [`ARGS`] (a 1 s stall timeout, a budget that fits one
//! 1 MiB message and little more) and sends [`HOSTILE`] clients that each hold about
//! [`HELD`] bytes they never finish, in one of three ways that escaped the clock once
//! ([`Attack`]). Every one of them must be closed with 1008 while it still sends, within
//! a bounded number of [`TICK`]s; then the budget must be whole again: a fresh client's
//! 1 MiB message, which fits only if every byte the hostile clients held was given back,
//! is echoed.
//!
//! [`Hostile`] is public so that `examples/stall.rs` can measure the same attacks at scale.

use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::thread;
use std::time::Duration;

use tungstenite::Message;

use crate::ws::{self, raw_frame};
use crate::{PATIENCE, Server};

/// The step's settings for these checks: a stall timeout of 1 s, a handshake timeout of
/// 2 s, and a budget of 1 MiB + 64 KiB: a fresh 1 MiB message fits in it alone, but not
/// next to one hostile client's bytes, so one client's bytes not given back fail the check.
pub const ARGS: [&str; 6] = [
    "--stall-timeout",
    "1",
    "--handshake-timeout",
    "2",
    "--max-buffered",
    "1114112",
];

/// How many hostile clients each check sends.
pub const HOSTILE: usize = 4;

/// The bytes each of them holds: 100 KiB, so that with the buffers' rounding up (128 KiB at
/// most) all of them fit in the budget together.
pub const HELD: usize = 100 << 10;

/// The bytes of frame behind a head in pieces, for half of the heads: few enough to come
/// in the same read as the end of the head.
pub const FEW: usize = 512;

/// How often a hostile client sends its next piece.
pub const TICK: Duration = Duration::from_millis(250);

/// Ticks a check waits for the closes: 10 s, for a clock of 1 s.
const MAX_TICKS: usize = 40;

/// Connect/close churn: enough handshakes that come and go to make a step rebuild its
/// queue of handshake deadlines (once stale entries outnumber twice the connections).
const CHURN: usize = 300;

/// A way to hold bytes and never finish them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Attack {
    /// A request head in two pieces; the second ends the head and carries the start of a
    /// frame announcing 1 MiB, never finished. The connection opens already holding bytes.
    HeadInPieces,
    /// The first fragment of a message, never followed by its last; then empty
    /// continuation frames and pings, in turn, each in two pieces (one a tick).
    TinyFrames,
    /// A frame announcing 1 MiB, then one more byte of it every tick.
    Trickle,
}

/// A client holding bytes it never finishes, and what it got back so far.
pub struct Hostile {
    stream: TcpStream,
    attack: Attack,
    /// The piece to send next, if it is already known: the rest of the head, or the second
    /// half of a tiny frame.
    rest: Vec<u8>,
    /// Tiny frames sent so far.
    tiny: usize,
    /// Bytes the server sent that are not parsed yet.
    received: Vec<u8>,
    /// Still waiting for the server's `101` (for [`Attack::HeadInPieces`]).
    upgrading: bool,
    /// How the connection ended, once it has: the close code, or `None` for no close frame.
    pub ended: Option<Option<u16>>,
}

/// The upgrade request of a hostile client.
const HEAD: &str = "GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\n\
                    Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\
                    Sec-WebSocket-Version: 13\r\n\r\n";

/// The header of a masked binary frame announcing `len` bytes, mask `0000` (the payload
/// goes on the wire as it is), final or not.
fn header(fin: bool, len: u64) -> Vec<u8> {
    let mut header = vec![u8::from(fin) << 7 | 0x2, 0x80 | 127];
    header.extend_from_slice(&len.to_be_bytes());
    header.extend_from_slice(&[0; 4]);
    header
}

impl Hostile {
    /// Connect to `addr` and start holding `held` bytes. For [`Attack::HeadInPieces`] only
    /// the first piece of the head is sent: the rest goes at the first [`Hostile::poke`].
    pub fn start(addr: SocketAddr, attack: Attack, held: usize) -> Hostile {
        let connect = || {
            let stream = TcpStream::connect(addr).expect("connect to the step");
            stream.set_write_timeout(Some(PATIENCE)).unwrap();
            stream.set_nodelay(true).unwrap(); // each piece its own segment
            stream
        };
        let (stream, rest) = match attack {
            Attack::HeadInPieces => {
                let (first, second) = HEAD.split_at(HEAD.find("Upgrade").expect("bug: has one"));
                let mut rest = second.as_bytes().to_vec();
                rest.extend(header(true, 1 << 20));
                rest.extend(vec![0x55; held]);
                let mut stream = connect();
                stream.write_all(first.as_bytes()).expect("the first piece");
                (stream, rest)
            }
            Attack::TinyFrames | Attack::Trickle => {
                let url = format!("ws://{addr}/");
                let (client, _) = tungstenite::client(url.as_str(), connect()).expect("handshake");
                let mut stream = client.into_inner();
                let opening = match attack {
                    Attack::TinyFrames => [header(false, held as u64), vec![0x55; held]].concat(),
                    _ => [header(true, 1 << 20), vec![0x55; held]].concat(),
                };
                stream.write_all(&opening).expect("the bytes to hold");
                (stream, Vec::new())
            }
        };
        stream.set_nonblocking(true).expect("a non-blocking client");
        Hostile {
            stream,
            attack,
            rest,
            tiny: 0,
            received: Vec::new(),
            upgrading: attack == Attack::HeadInPieces,
            ended: None,
        }
    }

    /// Send the next piece, one a tick: the rest of the head (then nothing more), half of
    /// a tiny frame, or one byte, as the attack goes. A connection that ended is left alone.
    pub fn poke(&mut self) {
        if self.ended.is_some() {
            return;
        }
        let piece = match self.attack {
            _ if !self.rest.is_empty() => std::mem::take(&mut self.rest),
            Attack::HeadInPieces => return, // quiet from now on
            Attack::TinyFrames => {
                let mut tiny = match self.tiny % 2 {
                    0 => raw_frame(false, 0x0, b"", true), // an empty continuation
                    _ => raw_frame(true, 0x9, b"still here", true), // a ping
                };
                self.tiny += 1;
                self.rest = tiny.split_off(1); // the second half, at the next tick
                tiny
            }
            Attack::Trickle => vec![0x55],
        };
        // If the server hung up, `poll` says how.
        let _ = write_all(&mut self.stream, &piece);
    }

    /// Read what the server sent, without waiting; true once the connection has ended (a
    /// close frame came, or the connection ended without one).
    pub fn poll(&mut self) -> bool {
        if self.ended.is_some() {
            return true;
        }
        let mut buf = [0u8; 4096];
        loop {
            match self.stream.read(&mut buf) {
                Ok(0) => {
                    self.ended = Some(self.close_code());
                    return true;
                }
                Ok(n) => self.received.extend_from_slice(&buf[..n]),
                Err(err) if err.kind() == ErrorKind::WouldBlock => break,
                Err(err) if err.kind() == ErrorKind::Interrupted => continue,
                // A reset: what came before it was read already.
                Err(_) => {
                    self.ended = Some(self.close_code());
                    return true;
                }
            }
        }
        if let Some(code) = self.close_code() {
            self.ended = Some(Some(code));
        }
        self.ended.is_some()
    }

    /// The close code in what the server sent, past its `101` and any pongs.
    fn close_code(&mut self) -> Option<u16> {
        if self.upgrading {
            let end = self.received.windows(4).position(|w| w == b"\r\n\r\n")? + 4;
            assert!(
                self.received.starts_with(b"HTTP/1.1 101"),
                "a head in pieces must be upgraded: {:?}",
                String::from_utf8_lossy(&self.received[..end])
            );
            self.received.drain(..end);
            self.upgrading = false;
        }
        // Server frames are unmasked; a control frame's length fits its second byte.
        let mut frames = &self.received[..];
        while let [first, len, rest @ ..] = frames {
            let len = usize::from(*len & 0x7f);
            let payload = rest.get(..len)?;
            match (first & 0x0f, payload) {
                (0x8, [hi, lo, ..]) => return Some(u16::from_be_bytes([*hi, *lo])),
                (0x8, _) => return None,
                (0xa, _) => frames = &rest[len..], // a pong
                (opcode, _) => panic!("a hostile client got a frame with opcode {opcode}"),
            }
        }
        None
    }
}

/// `write_all` on a non-blocking socket: a full socket is waited out (bounded).
fn write_all(stream: &mut TcpStream, mut bytes: &[u8]) -> std::io::Result<()> {
    for _ in 0..1000 {
        if bytes.is_empty() {
            return Ok(());
        }
        match stream.write(bytes) {
            Ok(n) => bytes = &bytes[n..],
            Err(err) if err.kind() == ErrorKind::WouldBlock => {
                thread::sleep(Duration::from_millis(10));
            }
            Err(err) => return Err(err),
        }
    }
    Err(ErrorKind::TimedOut.into())
}

/// Connect and hang up, `count` times: each is a handshake deadline that goes stale.
pub fn churn(addr: SocketAddr, count: usize) {
    for _ in 0..count {
        drop(TcpStream::connect(addr).expect("connect to the step"));
    }
}

/// Run `attack` against the step: [`HOSTILE`] clients each holding [`HELD`] bytes, which
/// must all be closed with 1008 within [`MAX_TICKS`] ticks, while they still send; then a
/// fresh client's 1 MiB message must be echoed (the budget is whole again).
fn check(bin: &str, extra: &[&str], attack: Attack) {
    let args: Vec<&str> = extra.iter().copied().chain(ARGS).collect();
    let mut server = Server::start(bin, &args);
    // A head in pieces comes in two sizes: with 100 KiB of frame behind it, which the step
    // reads in several reads, and with a few bytes, which all come in the read that ends
    // the head (so no later read can start a clock the opening forgot).
    let held = |i: usize| match attack {
        Attack::HeadInPieces if i % 2 == 1 => FEW,
        _ => HELD,
    };
    let mut hostiles: Vec<Hostile> = (0..HOSTILE)
        .map(|i| Hostile::start(server.addr, attack, held(i)))
        .collect();
    thread::sleep(TICK); // the server reads the first pieces apart from the rest
    for hostile in &mut hostiles {
        hostile.poke();
    }
    if attack == Attack::HeadInPieces {
        churn(server.addr, CHURN);
    }
    let mut ticks = 0;
    loop {
        let open = hostiles
            .iter_mut()
            .map(Hostile::poll)
            .filter(|ended| !ended);
        if open.count() == 0 || ticks == MAX_TICKS {
            break;
        }
        thread::sleep(TICK);
        ticks += 1;
        for hostile in &mut hostiles {
            hostile.poke();
        }
    }

    let ended: Vec<_> = hostiles.iter().map(|hostile| hostile.ended).collect();
    assert!(
        ended.iter().all(|end| *end == Some(Some(1008))),
        "{attack:?}: after {} s of it, each of {HOSTILE} clients must have been closed with \
         1008; they got {ended:?} (`None`: still open)",
        ticks as f64 * TICK.as_secs_f64()
    );
    assert!(server.is_running(), "{}", server.stderr());
    // It fits in the budget only if everything the hostile clients held was given back.
    let mut fresh = ws::connect(&server);
    ws::assert_echo(&mut fresh, Message::binary(vec![7; 1 << 20]));
}

/// A request head in two pieces, the second carrying the start of a frame that is never
/// finished, under connect/close churn that rebuilds the step's queue of handshake
/// deadlines: each such connection is closed with 1008 within the stall timeout, and the
/// budget is given back. Breaks if a connection that opens already holding bytes gets no
/// stall deadline (it kept only its handshake deadline, which the churn's rebuild drops).
pub fn head_in_pieces_with_a_partial_frame_is_closed(bin: &str, extra: &[&str]) {
    check(bin, extra, Attack::HeadInPieces);
}

/// The first fragment of a message held open, while an empty continuation frame or a ping
/// comes every other tick, each in two pieces: closed with 1008 within the stall timeout.
/// Breaks if a tiny frame restarts the clock (what the connection holds grows, then shrinks).
pub fn message_kept_open_with_tiny_frames_is_closed(bin: &str, extra: &[&str]) {
    check(bin, extra, Attack::TinyFrames);
}

/// A frame announcing 1 MiB, then one more byte of it every tick: closed with 1008 within
/// the stall timeout. Breaks if a byte read counts as progress.
pub fn trickled_frame_is_closed(bin: &str, extra: &[&str]) {
    check(bin, extra, Attack::Trickle);
}
