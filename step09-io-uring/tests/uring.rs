//! What this step adds over step06, pinned on its real binary: the buffer ring running dry
//! loses nothing, and the budgets (a stall timeout for bytes held, a cap on all buffered
//! bytes, the handshake timeout) close the connection that breaks them, and only that one.
//!
//! Skipped, with the reason, where io_uring is not available (see `support/mod.rs`).

mod support;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::thread;

use stepcheck::Server;
use stepcheck::ws::{self, assert_echo};
use support::available;
use tungstenite::Message;

const BIN: &str = env!("CARGO_BIN_EXE_step09-io-uring");

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

/// A frame dripped a byte at a time keeps adding to what the server holds without finishing
/// anything: it is closed with 1008 after `--stall-timeout` all the same, while it still drips.
#[test]
fn a_frame_dripped_byte_by_byte_is_closed_with_1008() {
    use std::sync::atomic::{AtomicBool, Ordering};

    if !available() {
        return;
    }
    let server = Server::start(BIN, &["--stall-timeout", "1"]);
    let mut dripper = ws::connect(&server).into_inner();
    dripper.write_all(&binary_header(1000)).unwrap();
    let mut drip = dripper.try_clone().unwrap();
    let closed = AtomicBool::new(false);
    const BYTES: usize = 150;
    thread::scope(|scope| {
        // Bounded: at most 150 bytes, one every 100 ms; it stops once we got the close.
        let dripping = scope.spawn(|| {
            let mut sent = 0;
            while sent < BYTES && !closed.load(Ordering::Relaxed) && drip.write_all(&[7]).is_ok() {
                sent += 1;
                thread::sleep(std::time::Duration::from_millis(100));
            }
            sent
        });
        assert_eq!(
            read_close_code(&mut dripper),
            Some(1008),
            "a frame that only grows, never finishes, must end with a close frame, code 1008"
        );
        closed.store(true, Ordering::Relaxed);
        let sent = dripping.join().unwrap();
        assert!(
            sent < BYTES,
            "closed only after the client stopped dripping: each byte restarted the clock"
        );
    });
}

/// A client that never reads its echo holds it in our memory without progress: the send
/// tried at once comes back short, what it left waits for room, and counts as held. Once
/// `--stall-timeout` passes the connection is closed, the rest of the echo dropped.
#[test]
fn a_client_that_never_takes_its_echo_is_closed_after_the_stall_timeout() {
    use std::io::ErrorKind;

    if !available() {
        return;
    }
    // More than loopback's socket buffers hold (a few MiB each way): the rest must wait.
    const LEN: usize = 16 << 20;
    let max_message = (2 * LEN).to_string();
    let server = Server::start(
        BIN,
        &["--max-message", &max_message, "--stall-timeout", "1"],
    );
    let mut bystander = ws::connect(&server);
    let mut client = ws::connect(&server).into_inner();
    let mut frame = binary_header(LEN as u64);
    frame.extend_from_slice(&pattern(3, LEN));
    client.write_all(&frame).unwrap();
    assert_echo(
        &mut bystander,
        Message::text("while another client does not read"),
    );

    // Read nothing until the server gives up (its memory line counts the bystander only),
    // then what the kernel still holds.
    server.wait_for_memory_line(2);
    server.wait_for_memory_line(1);
    let mut got = Vec::new();
    match client.read_to_end(&mut got) {
        Ok(_) => {}
        Err(err) if err.kind() == ErrorKind::ConnectionReset => {}
        Err(err) => panic!("the server still holds a client that does not read: {err}"),
    }
    assert!(
        got.len() < LEN,
        "the whole echo arrived ({} bytes): nothing was held",
        got.len()
    );
    assert_echo(
        &mut bystander,
        Message::text("after the non-reader was closed"),
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

/// Request heads that come in pieces count against `--max-buffered` too: past it, `503`.
#[test]
fn heads_in_pieces_are_held_to_the_budget() {
    if available() {
        ws::heads_in_pieces_are_held_to_the_budget(BIN, &[]);
    }
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

/// Closing a connection costs the same however many others are open. 500 silent clients
/// reach `--handshake-timeout` together, once alone and once beside 10 000 idle WebSocket
/// connections (each with its multishot receive in the kernel): the server's CPU time per
/// close, from its CPU-time clock, is about the same both times. A ratio of two CPU times,
/// not a duration. Breaks if `close` cancels by fd: the kernel then walks every request
/// pending in the ring for each close, and the 10 000 make each close some ten times
/// dearer (with 15 000 timing out together, the loop froze for 8 s and more).
#[test]
fn a_close_costs_the_same_beside_10_000_idle_connections() {
    if !available() {
        return;
    }
    const TIMING_OUT: usize = 500;
    const IDLE: usize = 10_000;
    let limit = common::raise_fd_limit().expect("the open-file limit");
    let needed = (TIMING_OUT + IDLE + 200) as u64;
    if limit.soft < needed {
        return eprintln!("skipped: needs {needed} open files; {limit}");
    }
    let alone = cpu_per_close(TIMING_OUT, 0);
    let beside_idle = cpu_per_close(TIMING_OUT, IDLE);
    let ratio = beside_idle / alone;
    eprintln!(
        "CPU per close: {:.1} µs alone, {:.1} µs beside {IDLE} idle connections ({ratio:.2}×)",
        alone * 1e6,
        beside_idle * 1e6
    );
    assert!(
        ratio < 3.0,
        "each close costs {ratio:.1} times more beside {IDLE} idle connections than alone: \
         closing a connection must not walk every other connection's request"
    );
}

/// The server's CPU seconds per close when `timing_out` clients that never send a byte
/// reach `--handshake-timeout` together, while `idle` upgraded connections stay open.
fn cpu_per_close(timing_out: usize, idle: usize) -> f64 {
    // Time enough to open the idle ones before the silent ones are due.
    let server = Server::start(BIN, &["--handshake-timeout", "5"]);
    let _silent: Vec<TcpStream> = (0..timing_out).map(|_| server.connect()).collect();
    // The idle ones' handshake deadlines, stale once they upgrade, come due a second after
    // the silent ones': skipping them then is the loop's work, not the closes'.
    thread::sleep(std::time::Duration::from_secs(1));
    let _idle = upgraded(&server, idle);
    server.wait_for_memory_line((idle + timing_out) as u64);
    let before = server.cpu_seconds();
    // The memory line comes once the loop has closed them and submitted its cancels.
    server.wait_for_memory_line(idle as u64);
    (server.cpu_seconds() - before) / timing_out as f64
}

/// `n` connections upgraded to WebSocket, then idle. The requests go out all at once and
/// the answers are read after, so thousands take a moment, not thousands of round trips.
fn upgraded(server: &Server, n: usize) -> Vec<TcpStream> {
    use std::io::{BufRead, BufReader};

    let request = format!(
        "GET / HTTP/1.1\r\nHost: {}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n",
        server.addr
    );
    let mut clients: Vec<TcpStream> = (0..n).map(|_| server.connect()).collect();
    for client in &mut clients {
        client.write_all(request.as_bytes()).unwrap();
    }
    for client in &mut clients {
        // The server sends nothing after its answer: the reader cannot take more than it.
        let mut answer = BufReader::new(&*client);
        let mut status = String::new();
        answer.read_line(&mut status).unwrap();
        assert!(
            status.starts_with("HTTP/1.1 101 "),
            "an upgrade answered with {status:?}"
        );
        let mut line = String::new();
        while line != "\r\n" {
            line.clear();
            let read = answer.read_line(&mut line).unwrap();
            assert!(
                read > 0,
                "the answer to an upgrade ends before its blank line"
            );
        }
    }
    clients
}

/// Where io_uring is refused (here by a seccomp filter, as container runtimes install), the
/// step exits at once, before listening, with one line that says why and how to check.
#[test]
fn without_io_uring_it_exits_at_once_saying_why() {
    stepcheck::seccomp::check_refused_in_one_line(
        BIN,
        &["--addr", "127.0.0.1:0"],
        "step09-io-uring: io_uring is not available: io_uring_setup is refused (a seccomp \
         filter: container runtimes block it by default); check with `grep Seccomp \
         /proc/self/status` (2 means filtered)",
    );
}

/// Under a burst, one `io_uring_enter` submits and reaps many operations: 100 clients
/// echoing at once cost the server well under one system call per message (step06's
/// epoll loop makes about two: a read and a write). Counted with `perf stat`; skipped,
/// with the reason, where perf is missing or cannot trace.
#[test]
fn a_burst_costs_under_one_system_call_per_message() {
    if !available() {
        return;
    }
    let server = Server::start(BIN, &[]);
    let clients: Vec<_> = (0..100).map(|_| ws::connect(&server)).collect();
    let count = match stepcheck::syscalls::SyscallCount::start(server.pid()) {
        Ok(count) => count,
        // perf is a tool of the machine, not of the project: without it, nothing to count.
        Err(why) => return eprintln!("skipped: {why}"),
    };
    const ROUNDS: usize = 20;
    thread::scope(|scope| {
        for (seed, mut client) in clients.into_iter().enumerate() {
            scope.spawn(move || {
                for round in 0..ROUNDS {
                    assert_echo(&mut client, Message::binary(pattern(seed + round, 64)));
                }
            });
        }
    });
    let syscalls = count.finish().expect("perf counts");
    let per_message = syscalls as f64 / (100 * ROUNDS) as f64;
    eprintln!(
        "{syscalls} system calls for {} messages: {per_message:.3} each",
        100 * ROUNDS
    );
    assert!(
        per_message < 1.0,
        "{per_message:.2} system calls per echoed message: the submissions are not batched"
    );
}
