//! What a hostile client sends, as raw bytes, and what the server must do about it:
//! memory bounded, the right close code or HTTP status, everybody else still served.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::thread;
use std::time::{Duration, Instant};

use stepcheck::{Server, ws};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;

const BIN: &str = env!("CARGO_BIN_EXE_step07-tokio");

const TEXT: u8 = 0x1;
const BINARY: u8 = 0x2;
const CONTINUATION: u8 = 0x0;
const PING: u8 = 0x9;

/// One frame in wire format, masked as a client's must be (or not, to break that rule).
fn frame(fin: bool, opcode: u8, payload: &[u8], masked: bool) -> Vec<u8> {
    ws::raw_frame(fin, opcode, payload, masked)
}

/// The close code the server's next frame carries; fails if it sends anything else.
fn close_code(client: &mut ws::Client) -> CloseCode {
    match client.read() {
        Ok(Message::Close(Some(close))) => close.code,
        other => panic!("expected a close frame with a code, got {other:?}"),
    }
}

/// Write `bytes` for at most `secs`, never reading; returns how many the server took.
fn write_for(stream: &mut TcpStream, bytes: &[u8], secs: u64) -> usize {
    stepcheck::flood(stream, bytes, usize::MAX, Duration::from_secs(secs))
}

/// A client that floods pings and never reads the pongs: the server stops reading it
/// once its pongs back up, so its memory stays flat and others are served.
#[test]
fn ping_flood_from_a_client_that_never_reads_is_bounded() {
    let server = Server::start(BIN, &[]);
    let base = server.rss_bytes();
    let mut flooder = ws::connect(&server).into_inner();
    let pings: Vec<u8> = (0..500)
        .flat_map(|_| frame(true, PING, &[b'p'; 125], true))
        .collect();
    let sent = write_for(&mut flooder, &pings, 3);

    let grown = server.rss_bytes().saturating_sub(base);
    eprintln!("{sent} bytes of pings sent in 3 s; the server grew by {grown} bytes");
    assert!(
        grown < 32 << 20,
        "the server grew by {grown} bytes while a client sent {sent} bytes of pings and read no pong"
    );
    let mut other = ws::connect(&server);
    ws::assert_echo(&mut other, Message::text("served during a ping flood"));
}

/// Fragmented messages held by many clients at once stay within --max-buffered: past
/// it, a connection is closed with 1009, and the server's memory stays near the budget.
#[test]
fn fragments_held_in_all_stay_within_max_buffered() {
    const BUDGET: usize = 8 << 20;
    let server = Server::start(
        BIN,
        &[
            "--max-buffered",
            &BUDGET.to_string(),
            "--max-message",
            "8388608",
        ],
    );
    let base = server.rss_bytes();
    let chunk = vec![b'f'; 64 * 1024];
    // Each client sends 6 MiB of a message and never its last fragment: 60 MiB in all.
    let mut clients = Vec::new();
    for _ in 0..10 {
        let mut client = ws::connect(&server);
        for i in 0..96 {
            let opcode = if i == 0 { BINARY } else { CONTINUATION };
            // The server may refuse half-way and hang up: the rest then fails to send.
            if client
                .get_mut()
                .write_all(&frame(false, opcode, &chunk, true))
                .is_err()
            {
                break;
            }
        }
        clients.push(client);
    }
    thread::sleep(Duration::from_millis(500));
    let grown = server.rss_bytes().saturating_sub(base);

    let mut refused = 0;
    for client in &mut clients {
        let stream = client.get_mut();
        stream
            .set_read_timeout(Some(Duration::from_millis(500)))
            .unwrap();
        if let Ok(Message::Close(Some(close))) = client.read() {
            refused += usize::from(close.code == CloseCode::Size);
        }
    }
    eprintln!(
        "10 clients sent 6 MiB of fragments each: {refused} closed with 1009, server grew by {grown} bytes"
    );
    assert!(
        refused >= 8,
        "only {refused} of 10 clients holding 6 MiB each were closed with 1009 under an 8 MiB budget"
    );
    assert!(
        grown < 4 * BUDGET as u64,
        "the server grew by {grown} bytes with a budget of {BUDGET}"
    );
    let mut other = ws::connect(&server);
    ws::assert_echo(
        &mut other,
        Message::text("served after the budget was spent"),
    );
}

/// A connection that holds part of a frame and goes quiet is closed with 1008 after
/// --stall-timeout; an idle one, holding nothing, is left alone.
#[test]
fn stalled_connection_closed_with_1008_idle_one_kept() {
    let server = Server::start(BIN, &["--stall-timeout", "1"]);
    let mut idle = ws::connect(&server);
    let mut stalled = ws::connect(&server);
    // A header announcing 1000 bytes, and 100 of them.
    let whole = frame(true, BINARY, &[b's'; 1000], true);
    stalled.get_mut().write_all(&whole[..108]).unwrap();
    let start = Instant::now();
    assert_eq!(close_code(&mut stalled), CloseCode::Policy);
    eprintln!("stalled connection closed after {:?}", start.elapsed());
    thread::sleep(Duration::from_millis(1500));
    ws::assert_echo(&mut idle, Message::text("idle is not stalled"));
}

/// Rules a client breaks get the close code that names them, not a silent hang-up.
#[test]
fn broken_rules_get_their_close_code() {
    let server = Server::start(BIN, &[]);
    let cases: [(&str, Vec<u8>, CloseCode); 3] = [
        (
            "an unmasked frame",
            frame(true, TEXT, b"hi", false),
            CloseCode::Protocol,
        ),
        (
            "text that is not UTF-8",
            frame(true, TEXT, b"\xff\xfe", true),
            CloseCode::Invalid,
        ),
        (
            "a header announcing 2 MiB over a 1 MiB --max-message",
            frame(true, BINARY, &vec![0; 2 << 20], true)[..14].to_vec(),
            CloseCode::Size,
        ),
    ];
    for (what, bytes, expected) in cases {
        let mut client = ws::connect(&server);
        client.get_mut().write_all(&bytes).unwrap();
        assert_eq!(close_code(&mut client), expected, "after {what}");
    }
}

/// Median round trip of `count` small echoes on a fresh connection.
fn median_round_trip(server: &Server, count: usize) -> Duration {
    let mut client = ws::connect(server);
    let mut times: Vec<Duration> = (0..count)
        .map(|i| {
            let start = Instant::now();
            ws::assert_echo(&mut client, Message::text(format!("probe {i}")));
            start.elapsed()
        })
        .collect();
    times.sort();
    times[count / 2]
}

/// A client that floods small messages (and reads its echoes, so nothing holds it back)
/// does not starve a fresh client, even with one thread running every connection: each
/// message spends tokio's cooperative budget, and the flooder's task yields when it is
/// spent. Held as a ratio of the fresh client's round trip during and before the flood.
#[test]
fn a_flooding_client_does_not_starve_a_fresh_one() {
    let server = Server::start(BIN, &["--runtime", "current-thread"]);
    let quiet = median_round_trip(&server, 30);

    let flooder = ws::connect(&server).into_inner();
    let mut reader = flooder.try_clone().unwrap();
    // Bounded in time: both ends stop after 4 s at most.
    let flood_for = Duration::from_secs(4);
    let drain = thread::spawn(move || {
        reader
            .set_read_timeout(Some(Duration::from_millis(200)))
            .unwrap();
        let start = Instant::now();
        let mut buf = vec![0; 1 << 20];
        while start.elapsed() < flood_for {
            if let Ok(0) = reader.read(&mut buf) {
                break;
            }
        }
    });
    let mut writer = flooder;
    let burst: Vec<u8> = (0..4000)
        .flat_map(|_| frame(true, BINARY, &[b'x'; 16], true))
        .collect();
    let flood = thread::spawn(move || write_for(&mut writer, &burst, flood_for.as_secs()));
    thread::sleep(Duration::from_millis(500));

    let busy = median_round_trip(&server, 30);
    let flooded = flood.join().unwrap();
    drain.join().unwrap();
    eprintln!(
        "fresh client's median echo: {quiet:?} quiet, {busy:?} during a flood of {flooded} bytes"
    );
    // Generous: a fairly served client waits for a turn of the flooder's at most (128
    // messages, well under a millisecond); a starved one, until the flooder's socket
    // runs dry (64 ms here with tokio's budget switched off, `coop::unconstrained`).
    let bound = (quiet * 100).max(Duration::from_millis(20));
    assert!(
        busy < bound,
        "a fresh client's echo took {busy:?} during a flood, {quiet:?} before: starved by one busy connection"
    );
}

/// A budget smaller than one read buffer (64 KiB against 128 KiB) still serves messages
/// that fit in it: a read takes what is left of the budget, not all or nothing.
#[test]
fn a_small_budget_still_serves_what_fits() {
    let server = Server::start(BIN, &["--max-buffered", "65536"]);
    let mut client = ws::connect(&server);
    for len in [10, 1000, 30_000] {
        ws::assert_echo(&mut client, Message::binary(vec![b'b'; len]));
    }
}

/// Write `bytes` one at a time, so that every frame header arrives in pieces.
fn trickle(stream: &mut TcpStream, bytes: &[u8]) {
    stream.set_nodelay(true).unwrap();
    for byte in bytes {
        stream.write_all(std::slice::from_ref(byte)).unwrap();
        thread::sleep(Duration::from_millis(1));
    }
}

/// The frame guard follows headers that arrive in pieces: a fragmented message with a ping
/// between its fragments, sent one byte at a time, is answered as whole, and a header
/// step06 refuses, sent one byte at a time, gets its close code all the same (1002 for a
/// length with its top bit set, 1009 for a continuation past `--max-message`). Breaks if the
/// guard loses its place in a header cut by TCP.
#[test]
fn headers_in_pieces_are_followed() {
    let server = Server::start(BIN, &["--max-message", "1000"]);

    let mut client = ws::connect(&server);
    let bytes = [
        frame(false, TEXT, b"frag", true),
        frame(true, PING, b"between", true),
        frame(true, CONTINUATION, b"mented", true),
    ]
    .concat();
    trickle(client.get_mut(), &bytes);
    assert_eq!(
        client.read().unwrap(),
        Message::Pong(b"between".to_vec().into())
    );
    assert_eq!(client.read().unwrap(), Message::text("fragmented"));

    let mut top_bit = ws::connect(&server);
    let mut header = vec![0x82, 0x80 | 127];
    header.extend_from_slice(&(1u64 << 63).to_be_bytes());
    header.extend_from_slice(b"mask");
    trickle(top_bit.get_mut(), &header);
    assert_eq!(close_code(&mut top_bit), CloseCode::Protocol);

    let mut past_the_limit = ws::connect(&server);
    past_the_limit
        .get_mut()
        .write_all(&frame(false, BINARY, &[b'a'; 600], true))
        .unwrap();
    let continuation = frame(true, CONTINUATION, &[b'b'; 600], true);
    trickle(past_the_limit.get_mut(), &continuation[..8]);
    assert_eq!(close_code(&mut past_the_limit), CloseCode::Size);

    ws::assert_echo(&mut client, Message::text("still served"));
}
