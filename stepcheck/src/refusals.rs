//! One table of refusals for every WebSocket step (06–09): each request a step must not
//! serve as asked, and each frame it must not accept, with the answer it gets — an HTTP
//! status, or a close code. Every step's tests run [`check_every_refusal`] against its real
//! binary, so that no two steps can answer the same bytes differently.
//!
//! The table runs on a step started with `--max-message 1000` and two origins listed with
//! `--allow-origin` ([`ALLOWED_ORIGINS`]). Each row is sent on a connection of its own, raw
//! bytes in, raw bytes out, while a bystander connection stays open; after every row the
//! bystander is echoed: one client's mistake closes that client only. A refused request is answered with its
//! status, then the server hangs up cleanly (a reset can destroy the answer before the
//! client reads it); a refused frame gets a close frame with its code, then the hang-up.
//!
//! The rows follow step06's `handshake.rs` and `frame.rs`, the reference; its README's
//! table of refusals says the same in prose.

use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream};

use crate::Server;
use crate::ws::raw_frame;

/// The origins besides the server's own that the table's step accepts, each given with
/// its own `--allow-origin`.
pub const ALLOWED_ORIGINS: [&str; 2] = ["http://allowed.example", "http://localhost:8000"];

/// The table's `--max-message`: small, so that the size rows are cheap.
const MAX_MESSAGE: usize = 1000;

/// RFC 6455's example key (section 1.3).
const KEY: &str = "dGhlIHNhbXBsZSBub25jZQ==";

/// One row of the table.
pub struct Row {
    /// What the row sends, in a few words, for failure messages.
    pub what: &'static str,
    /// The bytes, and when they are sent.
    pub input: Input,
    /// What the step must answer.
    pub answer: Answer,
}

/// What a row sends.
pub enum Input {
    /// A request head (and whatever follows it in the same write), on a fresh connection.
    Request(String, Vec<u8>),
    /// Frames, after a good upgrade.
    Frames(Vec<u8>),
}

/// What a row must get back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Answer {
    /// This HTTP status, then a clean hang-up.
    Status(u16),
    /// (After the 101, for a request.) A close frame with this code, then a clean hang-up.
    Close(u16),
    /// `101 Switching Protocols`, then these server frames (opcode, payload), answers to
    /// the frames the row sent; and the connection stays served: a message sent after
    /// them is echoed.
    Served(Vec<(u8, Vec<u8>)>),
}

impl std::fmt::Display for Answer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Answer::Status(status) => write!(f, "status {status}"),
            Answer::Close(code) => write!(f, "close {code}"),
            Answer::Served(first) if first.is_empty() => write!(f, "101, then served"),
            Answer::Served(first) => {
                let frames: Vec<String> = first
                    .iter()
                    .map(|(opcode, payload)| {
                        format!("{opcode} {:?}", String::from_utf8_lossy(payload))
                    })
                    .collect();
                write!(f, "101, the frames [{}], then served", frames.join(", "))
            }
        }
    }
}

/// A good upgrade request for `host`, with `extra` header lines (each ending in `\r\n`)
/// before the blank line.
pub fn upgrade_request(host: &str, extra: &str) -> String {
    format!(
        "GET / HTTP/1.1\r\nHost: {host}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: {KEY}\r\nSec-WebSocket-Version: 13\r\n{extra}\r\n"
    )
}

/// A masked client frame.
fn frame(fin: bool, opcode: u8, payload: &[u8]) -> Vec<u8> {
    raw_frame(fin, opcode, payload, true)
}

/// The 14-byte header of a masked binary (or continuation) frame announcing `len` bytes,
/// with nothing behind it.
fn header_announcing(fin: bool, opcode: u8, len: u64) -> Vec<u8> {
    let mut header = vec![(u8::from(fin) << 7) | opcode, 0x80 | 127];
    header.extend_from_slice(&len.to_be_bytes());
    header.extend_from_slice(b"mask");
    header
}

/// The table for a step listening on `addr` (the requests carry it as their `Host`).
pub fn rows(addr: SocketAddr) -> Vec<Row> {
    let host = addr.to_string();
    let good = || upgrade_request(&host, "");
    let with = |extra: &str| upgrade_request(&host, extra);
    let request = |what, head: String, status| Row {
        what,
        input: Input::Request(head, Vec::new()),
        answer: Answer::Status(status),
    };
    let served = |what, head: String| Row {
        what,
        input: Input::Request(head, Vec::new()),
        answer: Answer::Served(Vec::new()),
    };
    let frames = |what, bytes: Vec<u8>, code| Row {
        what,
        input: Input::Frames(bytes),
        answer: Answer::Close(code),
    };
    let line_of = |bytes| format!("X-Filler: {}\r\n", "a".repeat(bytes));
    let key_line = format!("Sec-WebSocket-Key: {KEY}\r\n");

    vec![
        // The head: its size, and the headers that must come exactly once.
        request("a header line of 9 KiB", with(&line_of(9 << 10)), 431),
        request("65 header lines", with(&"X-A: b\r\n".repeat(60)), 431),
        request(
            "a path of 9 KiB",
            good().replacen("GET /", &format!("GET /{}", "p".repeat(9 << 10)), 1),
            431,
        ),
        request(
            "a head of 100 KB (answered, not reset)",
            with(&line_of(1000).repeat(100)),
            431,
        ),
        request(
            "no Host",
            good().replacen(&format!("Host: {host}\r\n"), "", 1),
            400,
        ),
        request("two Host headers", with(&format!("Host: {host}\r\n")), 400),
        request(
            "no Sec-WebSocket-Key",
            good().replacen(&key_line, "", 1),
            400,
        ),
        request(
            "two Sec-WebSocket-Key headers",
            with("Sec-WebSocket-Key: AAAAAAAAAAAAAAAAAAAAAA==\r\n"),
            400,
        ),
        request(
            "a key of 15 bytes",
            good().replacen(KEY, "MTIzNDU2Nzg5MDEyMzQ1", 1),
            400,
        ),
        request(
            "a key that is not base64",
            good().replacen(KEY, "not base64, not at all!!", 1),
            400,
        ),
        request(
            "two Sec-WebSocket-Version headers",
            with("Sec-WebSocket-Version: 13\r\n"),
            400,
        ),
        request(
            "version 8",
            good().replacen("Version: 13", "Version: 8", 1),
            426,
        ),
        request(
            "no Sec-WebSocket-Version",
            good().replacen("Sec-WebSocket-Version: 13\r\n", "", 1),
            426,
        ),
        // What the request is.
        request("a POST", good().replacen("GET", "POST", 1), 405),
        request("HTTP/1.0", good().replacen("HTTP/1.1", "HTTP/1.0", 1), 400),
        request(
            "not HTTP",
            "\x16\x03\x01\x02\x00 hello\r\n\r\n".to_string(),
            400,
        ),
        request(
            "Upgrade: h2c",
            good().replacen("Upgrade: websocket", "Upgrade: h2c", 1),
            400,
        ),
        request(
            "Connection: keep-alive",
            good().replacen("Connection: Upgrade", "Connection: keep-alive", 1),
            400,
        ),
        request(
            "a plain GET of another path than /",
            format!("GET /chat HTTP/1.1\r\nHost: {host}\r\n\r\n"),
            426,
        ),
        request(
            "a plain GET /, a browser tab: the page",
            format!("GET / HTTP/1.1\r\nHost: {host}\r\n\r\n"),
            200,
        ),
        // Origin: a browser says which page opens the WebSocket.
        served("no Origin (not a browser)", good()),
        served(
            "Origin: the server's own, http:// + Host",
            with(&format!("Origin: http://{host}\r\n")),
        ),
        served(
            "Origin: the first listed with --allow-origin",
            with(&format!("Origin: {}\r\n", ALLOWED_ORIGINS[0])),
        ),
        served(
            "Origin: the second listed with --allow-origin",
            with(&format!("Origin: {}\r\n", ALLOWED_ORIGINS[1])),
        ),
        request(
            "Origin: another site",
            with("Origin: http://evil.example\r\n"),
            403,
        ),
        request(
            "Origin: the server's host over https",
            with(&format!("Origin: https://{host}\r\n")),
            403,
        ),
        request(
            "Origin: the server's host as a prefix of another",
            with(&format!("Origin: http://{host}.evil.example\r\n")),
            403,
        ),
        request(
            "Origin: null (a sandboxed page, a file)",
            with("Origin: null\r\n"),
            403,
        ),
        // Frames sent right behind the head, in the same write, are the first frames.
        Row {
            what: "a frame right behind the head, in the same write",
            input: Input::Request(good(), frame(true, 1, b"right behind the head")),
            answer: Answer::Served(vec![(1, b"right behind the head".to_vec())]),
        },
        Row {
            what: "an unmasked frame right behind the head, in the same write",
            input: Input::Request(good(), raw_frame(true, 1, b"hi", false)),
            answer: Answer::Close(1002),
        },
        // Frames no client may send.
        frames("an unmasked frame", raw_frame(true, 1, b"hi", false), 1002),
        frames(
            "RSV1 without an extension",
            set_bits(frame(true, 1, b"hi"), 0x40),
            1002,
        ),
        frames("RSV3", set_bits(frame(true, 2, b"hi"), 0x10), 1002),
        frames("opcode 3 (reserved)", frame(true, 3, b""), 1002),
        frames("opcode 11 (reserved)", frame(true, 11, b""), 1002),
        frames("a fragmented ping", frame(false, 9, b"p"), 1002),
        frames("a ping of 126 bytes", frame(true, 9, &[b'p'; 126]), 1002),
        frames("a continuation of nothing", frame(true, 0, b"x"), 1002),
        frames(
            "a text frame inside a fragmented message",
            [frame(false, 1, b"a"), frame(true, 1, b"b")].concat(),
            1002,
        ),
        frames(
            "a header announcing 2^63 bytes (only the header)",
            header_announcing(true, 2, 1 << 63),
            1002,
        ),
        frames("a close with a 1-byte payload", frame(true, 8, &[3]), 1002),
        frames(
            "close code 1005 (never on the wire)",
            frame(true, 8, &1005u16.to_be_bytes()),
            1002,
        ),
        frames(
            "close code 999 (unassigned)",
            frame(true, 8, &999u16.to_be_bytes()),
            1002,
        ),
        frames(
            "a close reason that is not UTF-8",
            frame(true, 8, &[0x03, 0xe8, 0xc3, 0x28]),
            1007,
        ),
        frames(
            "text that is not UTF-8",
            frame(true, 1, &[b'a', 0xff]),
            1007,
        ),
        frames(
            "text not UTF-8 across fragments",
            [frame(false, 1, &[0xe2, 0x82]), frame(true, 0, &[0x28])].concat(),
            1007,
        ),
        // --max-message, checked at the frame header, before the payload comes.
        frames(
            "a frame over --max-message (only its header)",
            header_announcing(true, 2, MAX_MESSAGE as u64 + 1),
            1009,
        ),
        frames(
            "a continuation whose header takes the message past --max-message (only its header)",
            [frame(false, 2, &[0; 600]), header_announcing(true, 0, 600)].concat(),
            1009,
        ),
    ]
}

/// The rows for a step started with `--allow-origin '*'`: every origin is served.
pub fn rows_for_any_origin(addr: SocketAddr) -> Vec<Row> {
    let host = addr.to_string();
    ["http://evil.example", "null", &format!("http://{host}")]
        .into_iter()
        .map(|origin| Row {
            what: "an Origin, with --allow-origin '*'",
            input: Input::Request(
                upgrade_request(&host, &format!("Origin: {origin}\r\n")),
                Vec::new(),
            ),
            answer: Answer::Served(Vec::new()),
        })
        .collect()
}

fn set_bits(mut frame: Vec<u8>, bits: u8) -> Vec<u8> {
    frame[0] |= bits;
    frame
}

/// Run the whole table against `bin` (with `extra` arguments before the table's own), then
/// the `--allow-origin '*'` rows on a second instance. Every row that is answered otherwise
/// is listed in one failure, with what came back instead.
pub fn check_every_refusal(bin: &str, extra: &[&str]) {
    let max_message = MAX_MESSAGE.to_string();
    let args: Vec<&str> = extra
        .iter()
        .copied()
        .chain(["--max-message", &max_message])
        .chain(
            ALLOWED_ORIGINS
                .iter()
                .flat_map(|origin| ["--allow-origin", origin]),
        )
        .collect();
    let mut wrong = run(bin, &args, rows);
    let any: Vec<&str> = extra
        .iter()
        .copied()
        .chain(["--allow-origin", "*"])
        .collect();
    wrong.extend(run(bin, &any, rows_for_any_origin));
    assert!(
        wrong.is_empty(),
        "{} row(s) of the table of refusals answered otherwise:\n{}",
        wrong.len(),
        wrong.join("\n")
    );
}

/// Start `bin` with `args`, run the rows `table` gives for its address, and return one line
/// per row answered otherwise. The step must serve a bystander after every row, and
/// still run at the end.
fn run(bin: &str, args: &[&str], table: fn(SocketAddr) -> Vec<Row>) -> Vec<String> {
    let mut server = Server::start(bin, args);
    let mut bystander = open(&server, &upgrade_request(&server.addr.to_string(), ""))
        .unwrap_or_else(|err| panic!("the bystander: {err}"));
    let mut wrong = Vec::new();
    for row in table(server.addr) {
        if let Err(err) = check(&server, &row) {
            wrong.push(format!("- {}: expected {}; {err}", row.what, row.answer));
        }
        let echoed = echo(&mut bystander, row.what.as_bytes());
        assert!(
            echoed.is_ok(),
            "the bystander was not served after the row {:?}: {:?}; stderr:\n{}",
            row.what,
            echoed,
            server.stderr()
        );
    }
    assert!(server.is_running(), "the step died:\n{}", server.stderr());
    wrong
}

/// Send one row and check its answer.
fn check(server: &Server, row: &Row) -> Result<(), String> {
    let mut stream = match &row.input {
        Input::Request(head, behind) => {
            let mut stream = server.connect();
            stream.set_nodelay(true).expect("TCP_NODELAY on loopback");
            let mut bytes = head.clone().into_bytes();
            bytes.extend_from_slice(behind);
            // A step may answer before it has read all of a long head; what it said is
            // read below either way.
            let sent = stream.write_all(&bytes);
            if let Answer::Status(status) = row.answer {
                return expect_status(&mut stream, status, sent.err());
            }
            let head = read_head(&mut stream)?;
            if !head.starts_with("HTTP/1.1 101 ") {
                return Err(format!("got {:?}", first_line(&head)));
            }
            stream
        }
        Input::Frames(bytes) => {
            let mut stream = open(server, &upgrade_request(&server.addr.to_string(), ""))?;
            stream
                .write_all(bytes)
                .map_err(|err| format!("cannot send the frames: {err}"))?;
            stream
        }
    };
    match &row.answer {
        Answer::Status(_) => unreachable!("bug: a status is checked above"),
        Answer::Close(code) => expect_close(&mut stream, *code),
        Answer::Served(first) => {
            for expected in first {
                let got = read_frame(&mut stream)?;
                if &got != expected {
                    return Err(format!("got the frame {got:?}, not {expected:?}"));
                }
            }
            echo(&mut stream, b"and served")
        }
    }
}

/// Connect and upgrade with `request`, checking the 101.
fn open(server: &Server, request: &str) -> Result<TcpStream, String> {
    let mut stream = server.connect();
    stream.set_nodelay(true).expect("TCP_NODELAY on loopback");
    stream
        .write_all(request.as_bytes())
        .map_err(|err| format!("cannot send the upgrade: {err}"))?;
    let head = read_head(&mut stream)?;
    match head.starts_with("HTTP/1.1 101 ") {
        true => Ok(stream),
        false => Err(format!("a good upgrade got {:?}", first_line(&head))),
    }
}

/// The answer is `status`, then end of file. `send_error` is how sending the request
/// failed, if it did (a step may hang up on a long head once it has answered).
fn expect_status(
    stream: &mut TcpStream,
    status: u16,
    send_error: Option<std::io::Error>,
) -> Result<(), String> {
    let sending = send_error.map_or(String::new(), |err| format!(" (sending: {err})"));
    let head = read_head(stream).map_err(|err| format!("{err}{sending}"))?;
    if !head.starts_with(&format!("HTTP/1.1 {status} ")) {
        return Err(format!("got {:?}", first_line(&head)));
    }
    let mut body = Vec::new();
    match stream.read_to_end(&mut body) {
        Ok(_) => Ok(()),
        Err(err) => Err(format!(
            "got {status}, then {err}{sending} instead of a hang-up"
        )),
    }
}

/// The next frame is a close with `code`, and then the server hangs up.
fn expect_close(stream: &mut TcpStream, code: u16) -> Result<(), String> {
    let (opcode, payload) = read_frame(stream)?;
    if opcode != 8 {
        return Err(format!("got a frame of opcode {opcode}, not a close"));
    }
    let got = match payload[..] {
        [hi, lo, ..] => u16::from_be_bytes([hi, lo]),
        _ => return Err("got a close frame without a code".to_string()),
    };
    if got != code {
        return Err(format!("got close {got}"));
    }
    let mut rest = Vec::new();
    match stream.read_to_end(&mut rest) {
        Ok(_) if rest.is_empty() => Ok(()),
        Ok(_) => Err(format!("close {code}, then {} more bytes", rest.len())),
        // The client's unread bytes (the rest of a refused frame) may cause one.
        Err(err) if err.kind() == ErrorKind::ConnectionReset => Ok(()),
        Err(err) => Err(format!("close {code}, then no hang-up: {err}")),
    }
}

/// Send a text message and read its echo.
fn echo(stream: &mut TcpStream, text: &[u8]) -> Result<(), String> {
    stream
        .write_all(&frame(true, 1, text))
        .map_err(|err| format!("cannot send a message: {err}"))?;
    match read_frame(stream)? {
        (1, echoed) if echoed == text => Ok(()),
        other => Err(format!("a message was answered with {other:?}")),
    }
}

/// Read the response head byte by byte (so that no frame byte behind it is consumed).
fn read_head(stream: &mut TcpStream) -> Result<String, String> {
    let mut head = Vec::new();
    let mut byte = [0u8];
    while !head.ends_with(b"\r\n\r\n") && head.len() < 4096 {
        match stream.read(&mut byte) {
            Ok(1) => head.push(byte[0]),
            Ok(_) if head.is_empty() => return Err("got no answer: end of file".to_string()),
            Err(err) if head.is_empty() => return Err(format!("got no answer: {err}")),
            end => {
                let so_far = String::from_utf8_lossy(&head);
                return Err(format!("the answer stopped ({end:?}) after {so_far:?}"));
            }
        }
    }
    Ok(String::from_utf8_lossy(&head).into_owned())
}

fn first_line(text: &str) -> &str {
    text.lines().next().unwrap_or("")
}

/// Read one server frame: (opcode, payload). Server frames are final and unmasked.
fn read_frame(stream: &mut TcpStream) -> Result<(u8, Vec<u8>), String> {
    let mut read = |buf: &mut [u8]| {
        stream
            .read_exact(buf)
            .map_err(|err| format!("no whole frame from the server: {err}"))
    };
    let mut head = [0u8; 2];
    read(&mut head)?;
    let len = match head[1] & 0x7f {
        126 => {
            let mut ext = [0u8; 2];
            read(&mut ext)?;
            u64::from(u16::from_be_bytes(ext))
        }
        127 => {
            let mut ext = [0u8; 8];
            read(&mut ext)?;
            u64::from_be_bytes(ext)
        }
        len => u64::from(len),
    };
    if head[0] & 0xf0 != 0x80 || head[1] & 0x80 != 0 || len > 1 << 20 {
        return Err(format!(
            "not a final, unmasked frame of a sane length: {head:?}"
        ));
    }
    let mut payload = vec![0u8; len as usize];
    read(&mut payload)?;
    Ok((head[0] & 0x0f, payload))
}
