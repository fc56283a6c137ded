//! What the server answers to bad input, byte for byte: the HTTP status of a refused
//! handshake, the close code of a broken frame. Each case runs while another connection
//! sits open, and that connection must still be echoed afterwards: one client's mistake
//! closes that client only.

use std::io::{ErrorKind, Read, Write};
use std::net::TcpStream;
use std::thread;
use std::time::Duration;

use stepcheck::Server;
use stepcheck::ws::raw_frame;

const BIN: &str = env!("CARGO_BIN_EXE_step06-ws-epoll");

/// RFC 6455's example key and the accept value it must produce (section 1.3).
const KEY: &str = "dGhlIHNhbXBsZSBub25jZQ==";
const ACCEPT: &str = "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=";

fn upgrade_request() -> String {
    format!(
        "GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: {KEY}\r\nSec-WebSocket-Version: 13\r\n\r\n"
    )
}

/// A client frame in wire format: FIN bit, opcode, length, mask key, masked payload.
fn frame(fin: bool, opcode: u8, payload: &[u8]) -> Vec<u8> {
    raw_frame(fin, opcode, payload, true)
}

/// Read the response head byte by byte (so no frame byte behind it is consumed).
fn read_head(stream: &mut TcpStream) -> String {
    let mut head = Vec::new();
    let mut byte = [0u8];
    while !head.ends_with(b"\r\n\r\n") {
        match stream.read(&mut byte) {
            Ok(1) => head.push(byte[0]),
            other => panic!(
                "the response head ended early ({other:?}) after {:?}",
                String::from_utf8_lossy(&head)
            ),
        }
        assert!(head.len() < 4096, "a response head over 4 KiB: {head:?}");
    }
    String::from_utf8(head).expect("the response head is ASCII")
}

/// Connect and upgrade, checking the 101 and its accept key.
fn open(server: &Server) -> TcpStream {
    let mut stream = server.connect();
    stream.set_nodelay(true).unwrap();
    stream.write_all(upgrade_request().as_bytes()).unwrap();
    let head = read_head(&mut stream);
    assert!(
        head.starts_with("HTTP/1.1 101 Switching Protocols\r\n"),
        "{head}"
    );
    assert!(
        head.contains(&format!("\r\nSec-WebSocket-Accept: {ACCEPT}\r\n")),
        "{head}"
    );
    stream
}

/// Read one server frame: (opcode, payload). Server frames are final and unmasked.
fn read_frame(stream: &mut TcpStream) -> (u8, Vec<u8>) {
    let mut head = [0u8; 2];
    stream
        .read_exact(&mut head)
        .expect("a frame header from the server");
    assert_eq!(
        head[0] & 0xf0,
        0x80,
        "server frames are final, without RSV bits: {head:?}"
    );
    assert_eq!(head[1] & 0x80, 0, "server frames are never masked");
    let len = match head[1] & 0x7f {
        126 => {
            let mut ext = [0u8; 2];
            stream.read_exact(&mut ext).unwrap();
            u16::from_be_bytes(ext) as usize
        }
        127 => {
            let mut ext = [0u8; 8];
            stream.read_exact(&mut ext).unwrap();
            u64::from_be_bytes(ext) as usize
        }
        len => len as usize,
    };
    let mut payload = vec![0u8; len];
    stream.read_exact(&mut payload).unwrap();
    (head[0] & 0x0f, payload)
}

/// The next frame is a close with `code`, and then the server hangs up.
fn expect_close(stream: &mut TcpStream, code: u16, what: &str) {
    let (opcode, payload) = read_frame(stream);
    assert_eq!(
        opcode, 8,
        "{what}: expected a close frame, got opcode {opcode} {payload:?}"
    );
    assert!(payload.len() >= 2, "{what}: a close frame without a code");
    let got = u16::from_be_bytes([payload[0], payload[1]]);
    assert_eq!(got, code, "{what}: close code");
    expect_hang_up(stream, what);
}

/// The server closes its side: the next read is end-of-file (or a reset).
fn expect_hang_up(stream: &mut TcpStream, what: &str) {
    let mut rest = Vec::new();
    match stream.read_to_end(&mut rest) {
        Ok(_) => assert!(rest.is_empty(), "{what}: bytes after the close: {rest:?}"),
        Err(err) if err.kind() == ErrorKind::ConnectionReset => {}
        Err(err) => panic!("{what}: the server did not hang up: {err}"),
    }
}

/// Echo one text message on `stream`: the server is still serving it.
fn assert_echo(stream: &mut TcpStream, text: &str) {
    stream.write_all(&frame(true, 1, text.as_bytes())).unwrap();
    assert_eq!(
        read_frame(stream),
        (1, text.as_bytes().to_vec()),
        "the echo of {text:?}"
    );
}

/// Send `request` and return the server's whole answer (it closes after an error).
fn http_answer(server: &Server, request: &[u8]) -> String {
    let mut stream = server.connect();
    stream.write_all(request).unwrap();
    let mut answer = Vec::new();
    stream
        .read_to_end(&mut answer)
        .expect("an HTTP answer, then end of file");
    String::from_utf8(answer).expect("the HTTP answer is text")
}

/// Each refused handshake gets its exact status.
#[test]
fn refused_handshakes_get_their_status() {
    let filler = format!("X-Filler: {}\r\n", "a".repeat(9000));
    let cases: Vec<(&str, String, &str)> = vec![
        (
            "a head over 8 KiB",
            upgrade_request().replace("\r\n\r\n", &format!("\r\n{filler}\r\n")),
            "HTTP/1.1 431 Request Header Fields Too Large\r\n",
        ),
        (
            "a POST",
            upgrade_request().replacen("GET", "POST", 1),
            "HTTP/1.1 405 Method Not Allowed\r\n",
        ),
        (
            "no Connection: Upgrade",
            upgrade_request().replace("Connection: Upgrade", "Connection: keep-alive"),
            "HTTP/1.1 400 Bad Request\r\n",
        ),
        (
            "Upgrade: h2c",
            upgrade_request().replace("Upgrade: websocket", "Upgrade: h2c"),
            "HTTP/1.1 400 Bad Request\r\n",
        ),
        (
            "version 8",
            upgrade_request().replace("Version: 13", "Version: 8"),
            "HTTP/1.1 426 Upgrade Required\r\n",
        ),
        (
            "a key of 15 bytes",
            upgrade_request().replace(KEY, "MTIzNDU2Nzg5MDEyMzQ1"),
            "HTTP/1.1 400 Bad Request\r\n",
        ),
        (
            "no key",
            upgrade_request().replace(&format!("Sec-WebSocket-Key: {KEY}\r\n"), ""),
            "HTTP/1.1 400 Bad Request\r\n",
        ),
        (
            "no Host",
            upgrade_request().replace("Host: 127.0.0.1\r\n", ""),
            "HTTP/1.1 400 Bad Request\r\n",
        ),
        (
            "two Host headers",
            upgrade_request().replace("Host: 127.0.0.1\r\n", "Host: a\r\nHost: b\r\n"),
            "HTTP/1.1 400 Bad Request\r\n",
        ),
        (
            "plain GET of another path than /",
            "GET /chat HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n".to_string(),
            "HTTP/1.1 426 Upgrade Required\r\n",
        ),
        (
            "plain GET /, from a browser: the page",
            "GET / HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n".to_string(),
            "HTTP/1.1 200 OK\r\n",
        ),
        (
            "not HTTP",
            "\x16\x03\x01\x02\x00 hello\r\n\r\n".to_string(),
            "HTTP/1.1 400 Bad Request\r\n",
        ),
    ];
    let server = Server::start(BIN, &[]);
    let mut bystander = open(&server);
    for (what, request, status) in &cases {
        let answer = http_answer(&server, request.as_bytes());
        assert!(
            answer.starts_with(status),
            "{what}: expected {status:?}, got:\n{answer}"
        );
        assert_echo(&mut bystander, what);
    }
    let version = http_answer(&server, cases[4].1.as_bytes());
    assert!(
        version.contains("\r\nSec-WebSocket-Version: 13\r\n"),
        "{version}"
    );
    let plain = http_answer(&server, cases[9].1.as_bytes());
    assert!(
        plain.contains("WebSocket"),
        "the plain GET answer says what this is:\n{plain}"
    );
}

/// A head sent in pieces is put back together; a first frame sent in the same segment as
/// the head is kept, not dropped.
#[test]
fn a_head_in_pieces_and_a_frame_behind_the_head() {
    let server = Server::start(BIN, &[]);

    let mut pieces = server.connect();
    pieces.set_nodelay(true).unwrap();
    for chunk in upgrade_request().as_bytes().chunks(7) {
        pieces.write_all(chunk).unwrap();
        thread::sleep(Duration::from_millis(2));
    }
    let head = read_head(&mut pieces);
    assert!(head.starts_with("HTTP/1.1 101 "), "{head}");
    assert_echo(&mut pieces, "after a head in pieces");

    let mut eager = server.connect();
    let mut bytes = upgrade_request().into_bytes();
    bytes.extend(frame(true, 1, b"right behind the head"));
    eager.write_all(&bytes).unwrap();
    let head = read_head(&mut eager);
    assert!(head.starts_with("HTTP/1.1 101 "), "{head}");
    assert_eq!(
        read_frame(&mut eager),
        (1, b"right behind the head".to_vec())
    );
}

/// A client that never finishes its head (slowloris) is answered 408 and closed once the
/// handshake timeout passes; a connected client is left alone.
#[test]
fn a_client_that_never_finishes_its_head_is_closed() {
    let server = Server::start(BIN, &["--handshake-timeout", "1"]);
    let mut bystander = open(&server);
    let mut slow = server.connect();
    slow.write_all(b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\n")
        .unwrap();
    let mut answer = Vec::new();
    // The read timeout (stepcheck's patience, 20 s) bounds this if the server never closes.
    slow.read_to_end(&mut answer)
        .expect("the server closes a slow client");
    let answer = String::from_utf8_lossy(&answer);
    assert!(
        answer.starts_with("HTTP/1.1 408 Request Timeout\r\n"),
        "{answer}"
    );
    // The bystander finished its handshake: no timeout applies to it, ever.
    thread::sleep(Duration::from_millis(1500));
    assert_echo(&mut bystander, "still here");
}

/// Every kind of broken frame gets its close code, then the connection closes; another
/// connection is echoed after each.
#[test]
fn broken_frames_get_their_close_code() {
    let unmasked = raw_frame(true, 1, b"hi", false);
    let mut rsv1 = frame(true, 1, b"hi");
    rsv1[0] |= 0x40;
    let concat = |frames: &[Vec<u8>]| frames.concat();
    let cases: Vec<(&str, Vec<u8>, u16)> = vec![
        ("an unmasked frame", unmasked, 1002),
        ("RSV1 without an extension", rsv1, 1002),
        ("opcode 3", frame(true, 3, b""), 1002),
        ("opcode 11", frame(true, 11, b""), 1002),
        ("a ping of 126 bytes", frame(true, 9, &[b'p'; 126]), 1002),
        ("a fragmented ping", frame(false, 9, b"p"), 1002),
        ("a continuation of nothing", frame(true, 0, b"x"), 1002),
        (
            "a text frame inside a fragmented message",
            concat(&[frame(false, 1, b"a"), frame(true, 1, b"b")]),
            1002,
        ),
        (
            "a close with a 1-byte payload",
            frame(true, 8, &[0x03]),
            1002,
        ),
        (
            "close code 1005",
            frame(true, 8, &1005u16.to_be_bytes()),
            1002,
        ),
        (
            "close code 999",
            frame(true, 8, &999u16.to_be_bytes()),
            1002,
        ),
        (
            "close code 2999",
            frame(true, 8, &2999u16.to_be_bytes()),
            1002,
        ),
        (
            "a close reason that is not UTF-8",
            frame(true, 8, &[0x03, 0xe8, 0xc3, 0x28]),
            1007,
        ),
        (
            "invalid UTF-8 in a text message",
            frame(true, 1, &[b'a', 0xff]),
            1007,
        ),
        (
            "invalid UTF-8 split across fragments",
            concat(&[frame(false, 1, &[0xe2, 0x82]), frame(true, 0, &[0x28])]),
            1007,
        ),
        (
            "a message over --max-message",
            frame(true, 2, &[0; 1001]),
            1009,
        ),
        (
            "fragments over --max-message together",
            concat(&[frame(false, 2, &[0; 600]), frame(true, 0, &[0; 600])]),
            1009,
        ),
    ];
    let server = Server::start(BIN, &["--max-message", "1000"]);
    let mut bystander = open(&server);
    for (what, bytes, code) in cases {
        let mut client = open(&server);
        client.write_all(&bytes).unwrap();
        expect_close(&mut client, code, what);
        assert_echo(&mut bystander, what);
    }
}

/// A frame header announcing a huge length costs only the bytes that came: nothing is
/// reserved up front, whatever `--max-message` allows, and the server serves on. A length
/// with its top bit set (RFC 6455, section 5.2 forbids it) gets 1002.
#[test]
fn a_huge_announced_length_reserves_nothing() {
    let mut server = Server::start(BIN, &["--max-message", &usize::MAX.to_string()]);
    let mut bystander = open(&server);
    let before = server.rss_bytes();
    let mut quiet = Vec::new();
    for len in [1u64 << 40, (1 << 63) - 1] {
        let mut client = open(&server);
        let mut bytes = header_announcing(len);
        bytes.extend_from_slice(&[0x55; 1000]);
        client.write_all(&bytes).unwrap();
        assert_echo(
            &mut bystander,
            &format!("after a header announcing {len} bytes"),
        );
        quiet.push(client);
    }
    assert!(server.is_running(), "the server died: {}", server.stderr());
    let grown = server.rss_bytes().saturating_sub(before);
    assert!(grown < 16 << 20, "the server grew by {grown} bytes");
    for len in [1u64 << 63, u64::MAX] {
        let mut client = open(&server);
        client.write_all(&header_announcing(len)).unwrap();
        expect_close(&mut client, 1002, &format!("a length of {len}"));
        assert_echo(&mut bystander, "after a forbidden length");
    }
}

/// The 14-byte header of a masked binary frame announcing `len` payload bytes.
fn header_announcing(len: u64) -> Vec<u8> {
    let mut header = vec![0x82, 0x80 | 127];
    header.extend_from_slice(&len.to_be_bytes());
    header.extend_from_slice(&[0xa1, 0x02, 0xc3, 0x74]);
    header
}

/// The close handshake: a valid code is echoed, an empty close gets an empty close, and
/// the server hangs up after either.
#[test]
fn close_is_answered_then_the_server_hangs_up() {
    let server = Server::start(BIN, &[]);
    for code in [1000u16, 1001, 3000, 4999] {
        let mut client = open(&server);
        let mut payload = code.to_be_bytes().to_vec();
        payload.extend_from_slice("bye".as_bytes());
        client.write_all(&frame(true, 8, &payload)).unwrap();
        expect_close(&mut client, code, &format!("close {code}"));
    }
    let mut client = open(&server);
    client.write_all(&frame(true, 8, b"")).unwrap();
    assert_eq!(
        read_frame(&mut client),
        (8, vec![]),
        "an empty close gets an empty close"
    );
    expect_hang_up(&mut client, "after an empty close");
}

/// Fragments are reassembled; a ping between them is answered at once with the same
/// payload; a pong is ignored; a frame cut across TCP segments is waited for.
#[test]
fn fragments_pings_and_frames_in_pieces() {
    let server = Server::start(BIN, &[]);
    let mut client = open(&server);
    let bytes = [
        frame(false, 1, "frag".as_bytes()),
        frame(true, 9, b"ping between fragments"),
        frame(false, 0, &"mented €".as_bytes()[..9]), // "€" cut after its first byte
        frame(true, 10, b"unsolicited pong"),
        frame(true, 0, &"mented €".as_bytes()[9..]),
    ]
    .concat();
    client.write_all(&bytes).unwrap();
    assert_eq!(
        read_frame(&mut client),
        (10, b"ping between fragments".to_vec())
    );
    assert_eq!(
        read_frame(&mut client),
        (1, "fragmented €".as_bytes().to_vec())
    );

    // One binary frame of 70 000 bytes (64-bit length), written in small pieces.
    let payload: Vec<u8> = (0..70_000u32).map(|i| (i % 251) as u8).collect();
    for piece in frame(true, 2, &payload).chunks(9_000) {
        client.write_all(piece).unwrap();
        thread::sleep(Duration::from_millis(2));
    }
    assert_eq!(read_frame(&mut client), (2, payload));
}

/// 100 clients that each send most of a 1 MiB frame and go quiet hold no more than
/// `--max-buffered` together: each one that would pass it gets 1009 at once; the others,
/// and a fragmented message left unfinished, get 1008 once `--timeout` passes. A bystander
/// is served throughout.
#[test]
fn half_sent_frames_are_held_to_the_budget_and_the_timeout() {
    const BUDGET: u64 = 16 << 20;
    const CLIENTS: usize = 100;
    let mut server = Server::start(
        BIN,
        &[
            "--max-buffered",
            &BUDGET.to_string(),
            "--stall-timeout",
            "2",
        ],
    );
    let mut bystander = open(&server);
    let base = server.peak_rss_bytes();

    let mut fragment = open(&server);
    fragment
        .write_all(&frame(false, 1, b"the first half"))
        .unwrap();
    let mut most_of_a_frame = header_announcing(1 << 20);
    most_of_a_frame.extend_from_slice(&vec![0x55; (1 << 20) - 1024]);
    let quiet: Vec<TcpStream> = (0..CLIENTS)
        .map(|_| {
            let mut client = open(&server);
            client.write_all(&most_of_a_frame).unwrap();
            client
        })
        .collect();
    assert_echo(&mut bystander, "while 100 frames hang");

    let mut codes = Vec::new();
    for mut client in [fragment].into_iter().chain(quiet) {
        let (opcode, payload) = read_frame(&mut client);
        assert_eq!(opcode, 8, "a close frame, not {opcode} {payload:?}");
        codes.push(u16::from_be_bytes([payload[0], payload[1]]));
    }
    let over_budget = codes.iter().filter(|&&code| code == 1009).count();
    let timed_out = codes.iter().filter(|&&code| code == 1008).count();
    assert_eq!(
        over_budget + timed_out,
        CLIENTS + 1,
        "close codes: {codes:?}"
    );
    assert_eq!(
        codes[0], 1008,
        "the unfinished fragmented message: {codes:?}"
    );
    // Each quiet client held about 1 MiB: at most 16 of them fit in 16 MiB.
    assert!(
        timed_out <= 17,
        "{timed_out} clients were held until the timeout"
    );

    let grown = server.peak_rss_bytes().saturating_sub(base);
    assert!(
        grown < BUDGET + (16 << 20),
        "the server's peak grew by {} MiB with a budget of {} MiB",
        grown >> 20,
        BUDGET >> 20
    );
    assert_echo(&mut bystander, "after the budget and the timeout");
    assert!(server.is_running(), "{}", server.stderr());
}

/// A client that never reads our echo holds it in our memory (unsent output) without
/// progress: once `--timeout` passes it is closed, and the echo it never took is dropped.
#[test]
fn a_client_that_never_takes_its_echo_is_closed_after_the_timeout() {
    // More than loopback's socket buffers can hold (a few MiB each way), so the rest of the
    // echo must wait in the server.
    const LEN: usize = 16 << 20;
    let server = Server::start(
        BIN,
        &[
            "--max-message",
            &(2 * LEN).to_string(),
            "--stall-timeout",
            "1",
        ],
    );
    let mut bystander = open(&server);
    let mut client = open(&server);
    client.write_all(&frame(true, 2, &vec![7; LEN])).unwrap();
    assert_echo(&mut bystander, "while another client does not read");

    // Read nothing until the server gives up (its memory line counts the bystander only),
    // then everything the kernel still holds.
    server.wait_for_memory_line(2);
    server.wait_for_memory_line(1);
    let mut got = Vec::new();
    match client.read_to_end(&mut got) {
        Ok(_) => {}
        Err(err) if err.kind() == ErrorKind::ConnectionReset => {}
        Err(err) => {
            panic!("the server still holds the connection of a client that does not read: {err}")
        }
    }
    assert!(
        got.len() < LEN,
        "the whole echo arrived ({} bytes): nothing was held",
        got.len()
    );
    assert_echo(&mut bystander, "after the non-reader was closed");
}

/// Request heads that come in pieces count against `--max-buffered` too: with 64 KiB for
/// everybody, 16 clients that each send 6 KiB of a head do not all fit. Those that would
/// pass the budget get `503` at once; the others are upgraded when their heads complete.
#[test]
fn heads_in_pieces_are_held_to_the_budget() {
    stepcheck::ws::heads_in_pieces_are_held_to_the_budget(BIN, &[]);
}
