//! What this step adds over step06, pinned on its real binary: the buffer ring running dry
//! loses nothing, and the budgets (a stall timeout, a cap on all buffered bytes, the
//! handshake timeout) close the connection that breaks them, and only that one.
//!
//! Skipped, with the reason, where io_uring is not available (see `behaviour.rs`).

use std::io::{Read, Write};
use std::net::TcpStream;
use std::thread;

use stepcheck::Server;
use stepcheck::ws::{self, assert_echo};
use tungstenite::Message;

const BIN: &str = env!("CARGO_BIN_EXE_step09-io-uring");

/// `false`, with the reason on stderr, when this machine cannot run io_uring at all. The
/// trial ring lives and dies on a thread of its own (see `behaviour.rs`).
fn available() -> bool {
    let trial = thread::spawn(|| step09_io_uring::setup(1, 64).map(drop));
    match trial.join().expect("the trial ring does not panic") {
        Ok(()) => true,
        Err(unavailable) => {
            eprintln!("skipped: {unavailable}");
            false
        }
    }
}

/// `len` bytes that are not all alike, different for each `seed`.
fn pattern(seed: usize, len: usize) -> Vec<u8> {
    (0..len).map(|i| ((i + seed * 7) % 251) as u8).collect()
}

/// The header of a masked binary frame announcing `len` payload bytes, mask `0000` (so the
/// payload goes on the wire as it is).
fn binary_header(len: u64) -> Vec<u8> {
    let mut header = vec![0x82, 0x80 | 127];
    header.extend_from_slice(&len.to_be_bytes());
    header.extend_from_slice(&[0, 0, 0, 0]);
    header
}

/// Read until the server's close frame (`88 02 CODE`) and return its code; `None` if the
/// connection ended, or something else came, first.
fn read_close_code(stream: &mut TcpStream) -> Option<u16> {
    let mut frame = [0u8; 4];
    stream.read_exact(&mut frame).ok()?;
    (frame[..2] == [0x88, 0x02]).then(|| u16::from_be_bytes([frame[2], frame[3]]))
}

/// With one 64-byte buffer in the ring, receives run dry all the time (`ENOBUFS`): 20
/// clients sending 1000-byte messages at once still get every byte back, in order.
#[test]
fn a_ring_that_runs_dry_loses_nothing() {
    if !available() {
        return;
    }
    let server = Server::start(BIN, &["--ring-buffers", "1", "--buffer-size", "64"]);
    let clients: Vec<_> = (0..20).map(|_| ws::connect(&server)).collect();
    thread::scope(|scope| {
        for (seed, mut client) in clients.into_iter().enumerate() {
            scope.spawn(move || {
                for round in 0..10 {
                    assert_echo(&mut client, Message::binary(pattern(seed + round, 1000)));
                }
            });
        }
    });
}

/// A connection that holds half a frame and goes quiet is closed with 1008 after
/// `--stall-timeout`; an idle connection (holding nothing) is left alone.
#[test]
fn a_stalled_partial_frame_is_closed_with_1008() {
    if !available() {
        return;
    }
    let server = Server::start(BIN, &["--stall-timeout", "1"]);
    let mut idle = ws::connect(&server);
    let mut staller = ws::connect(&server).into_inner();
    let mut bytes = binary_header(1000);
    bytes.extend_from_slice(&[7; 10]);
    staller.write_all(&bytes).unwrap();

    assert_eq!(
        read_close_code(&mut staller),
        Some(1008),
        "half a frame held without progress must end with a close frame, code 1008"
    );
    assert_echo(
        &mut idle,
        Message::text("an idle connection holds nothing: kept"),
    );
}

/// Two clients each send most of a 150 000-byte frame against `--max-buffered 200000`: the
/// one that takes the server past the budget gets 1009, the other finishes and is echoed.
#[test]
fn past_max_buffered_the_connection_that_overflows_gets_1009() {
    if !available() {
        return;
    }
    let mut server = Server::start(BIN, &["--max-buffered", "200000"]);
    const LEN: usize = 150_000;
    let payload = pattern(1, LEN);
    let mut clients: Vec<TcpStream> = (0..2).map(|_| ws::connect(&server).into_inner()).collect();
    for client in &mut clients {
        let mut start = binary_header(LEN as u64);
        start.extend_from_slice(&payload[..120_000]);
        client.write_all(&start).unwrap();
    }
    // The refused one may be reset by now: its write can fail.
    for client in &mut clients {
        let _ = client.write_all(&payload[120_000..]);
    }

    let mut outcomes = Vec::new();
    for client in &mut clients {
        let mut head = [0u8; 2];
        client
            .read_exact(&mut head)
            .expect("an answer: an echo or a close");
        outcomes.push(match head {
            [0x88, 0x02] => {
                let mut code = [0u8; 2];
                client.read_exact(&mut code).unwrap();
                format!("close {}", u16::from_be_bytes(code))
            }
            [0x82, 127] => {
                let mut rest = vec![0u8; 8 + LEN];
                client.read_exact(&mut rest).unwrap();
                assert_eq!(rest[8..], payload[..], "the echo has other bytes");
                "echo".to_string()
            }
            other => format!("unexpected {other:02x?}"),
        });
    }
    outcomes.sort();
    assert_eq!(
        outcomes,
        ["close 1009", "echo"],
        "one connection within the budget, the other past it"
    );
    assert!(server.is_running(), "{}", server.stderr());
}

/// A client that never finishes its request head (slowloris) is answered 408 once
/// `--handshake-timeout` has passed, then closed.
#[test]
fn an_unfinished_request_head_gets_408() {
    if !available() {
        return;
    }
    let server = Server::start(BIN, &["--handshake-timeout", "1"]);
    let mut slow = server.connect();
    slow.write_all(b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\n")
        .unwrap();
    let mut answer = Vec::new();
    slow.read_to_end(&mut answer)
        .expect("the server answers, then closes");
    assert!(
        answer.starts_with(b"HTTP/1.1 408 Request Timeout\r\n"),
        "a head unfinished past the timeout gets 408, not {:?}",
        String::from_utf8_lossy(&answer)
    );
}
