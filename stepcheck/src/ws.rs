//! Checks for the WebSocket echo steps (06–07): the TCP checks of [`crate::tcp`], spoken
//! in WebSocket messages by a blocking `tungstenite` client, then the protocol rules a
//! hand-made server can get wrong (fragments, ping, close, oversized messages, requests
//! that are no upgrade).
//!
//! Each check takes the step's binary and extra arguments for it (e.g. `&["--read-buffer",
//! "4096"]`), so one step can be held to every check under each of its settings.

use std::io::{ErrorKind, Read, Write};
use std::net::TcpStream;
use std::ops::RangeBounds;
use std::thread;
use std::time::Duration;

use tungstenite::protocol::WebSocketConfig;
use tungstenite::protocol::frame::Frame;
use tungstenite::protocol::frame::coding::{CloseCode, Data, OpCode};
use tungstenite::{Message, WebSocket};

use crate::inprocess::{self, InProcess};
use crate::{
    FLOOD_BYTES, Server, assert_flood_held_back, check_fd_exhaustion, check_flood_fairness, flood,
    memory, tcp,
};

/// A client's end of a WebSocket connection over a plain blocking TCP stream.
pub type Client = WebSocket<TcpStream>;

/// Connect to the step and do the opening handshake (an HTTP `GET` with `Upgrade:
/// websocket`, answered by `101 Switching Protocols`).
pub fn connect(server: &Server) -> Client {
    handshake(server.connect(), server, None).unwrap_or_else(|err| panic!("{err}"))
}

/// The opening handshake over an already connected stream, with the client library's
/// default limits (`None`) or others; the error says what went wrong.
fn handshake(
    stream: TcpStream,
    server: &Server,
    config: Option<WebSocketConfig>,
) -> Result<Client, String> {
    let url = format!("ws://{}/", server.addr);
    match tungstenite::client::client_with_config(url.as_str(), stream, config) {
        Ok((client, _response)) => Ok(client),
        // The stream has a read timeout: "interrupted" means no answer came in time.
        Err(tungstenite::HandshakeError::Interrupted(_)) => Err(format!(
            "no answer to the WebSocket handshake on {url} in time"
        )),
        Err(tungstenite::HandshakeError::Failure(err)) => {
            Err(format!("the WebSocket handshake on {url} failed: {err}"))
        }
    }
}

/// The next data message (text or binary). Pings and pongs are skipped: a server may send
/// them at any time, and the client library answers pings by itself.
fn read_data(client: &mut Client) -> tungstenite::Result<Message> {
    // Bounded: a server that sends nothing but control frames fails the check.
    for _ in 0..100 {
        let message = client.read()?;
        if !(message.is_ping() || message.is_pong()) {
            return Ok(message);
        }
    }
    panic!("100 control frames in a row and no data message from the step");
}

/// Send `message` and read the next data message, asserting it is the same type and bytes.
pub fn assert_echo(client: &mut Client, message: Message) {
    let (sent, len) = (kind(&message), message.len());
    client
        .send(message.clone())
        .unwrap_or_else(|err| panic!("cannot send a {len}-byte {sent} message: {err}"));
    let echoed = read_data(client)
        .unwrap_or_else(|err| panic!("no echo of a {len}-byte {sent} message: {err}"));
    let back = kind(&echoed);
    assert_eq!(
        back, sent,
        "a {sent} message must come back as {sent}, not {back}"
    );
    assert_eq!(
        echoed.len(),
        len,
        "the echo of a {len}-byte {sent} message has another length"
    );
    assert!(
        echoed == message,
        "the echo of a {len}-byte {sent} message has other bytes"
    );
}

/// "text", "binary", "close", ... for failure messages.
fn kind(message: &Message) -> &'static str {
    match message {
        Message::Text(_) => "text",
        Message::Binary(_) => "binary",
        Message::Ping(_) => "ping",
        Message::Pong(_) => "pong",
        Message::Close(_) => "close",
        Message::Frame(_) => "raw frame",
    }
}

/// `len` bytes that are not all alike, so a shifted or truncated echo shows.
fn pattern(len: usize) -> Vec<u8> {
    (0..len).map(|i| (i % 251) as u8).collect()
}

/// Text and binary messages come back with their type and bytes, at each of the three ways
/// a frame can encode its length (7 bits up to 125, 16 bits up to 65 535, 64 bits beyond).
pub fn echo_round_trip(bin: &str, extra: &[&str]) {
    let server = Server::start(bin, extra);
    let mut client = connect(&server);
    assert_echo(&mut client, Message::text("hello, websocket"));
    assert_echo(
        &mut client,
        Message::binary(b"\x00\xffbinary is fine too".to_vec()),
    );
    for len in [0, 125, 126, 65_535, 65_536, 100_000] {
        assert_echo(&mut client, Message::binary(pattern(len)));
    }
    assert_echo(&mut client, Message::text("é".repeat(40_000)));
}

/// `clients` WebSocket connections open at once, every one of them echoed.
pub fn concurrent_clients_all_echoed(bin: &str, extra: &[&str], clients: usize) {
    let server = Server::start(bin, extra);
    let mut all: Vec<Client> = (0..clients).map(|_| connect(&server)).collect();
    // Every client speaks before any reads, so a server that serves one at a time stalls here.
    for (i, client) in all.iter_mut().enumerate() {
        client
            .send(Message::text(format!("client {i}")))
            .unwrap_or_else(|err| panic!("client {i} of {clients} cannot send: {err}"));
    }
    for (i, client) in all.iter_mut().enumerate() {
        let echoed = read_data(client)
            .unwrap_or_else(|err| panic!("client {i} of {clients} got no echo: {err}"));
        assert_eq!(
            echoed,
            Message::text(format!("client {i}")),
            "client {i} got another client's message"
        );
    }
}

/// A binary message of `len` bytes, far larger than any socket buffer, comes back intact:
/// the server must gather all of its frames and send the echo out as the socket drains.
/// Pass the step's own limit in `extra` if `len` is over its default (`--max-message`).
pub fn large_message_echoed_intact(bin: &str, extra: &[&str], len: usize) {
    let server = Server::start(bin, extra);
    let mut client = connect(&server);
    let message = pattern(len);
    // The echo cannot start before the whole message has arrived (it is one frame), so a
    // blocking send followed by a blocking read does not deadlock.
    client
        .send(Message::binary(message.clone()))
        .unwrap_or_else(|err| panic!("cannot send the {len}-byte message: {err}"));
    let echoed = read_data(&mut client)
        .unwrap_or_else(|err| panic!("no echo of the {len}-byte message: {err}"));
    assert!(
        echoed.is_binary(),
        "the {len}-byte binary message came back as {}",
        kind(&echoed)
    );
    let echoed = echoed.into_data();
    assert_eq!(
        echoed.len(),
        len,
        "the echo of the {len}-byte message has another length"
    );
    let first_difference = echoed.iter().zip(&message).position(|(a, b)| a != b);
    assert_eq!(
        first_difference, None,
        "the echo of {len} bytes differs at that offset"
    );
}

/// A client that sends messages and never reads the echoes fills its socket buffers; the
/// server must stop reading it (it grows by less than [`crate::FLOOD_GROWTH_LIMIT`]) and keep
/// serving everybody else. Breaks if the server keeps reading a client whose echoes it
/// cannot send, even into a buffer of a few MiB.
pub fn non_reading_client_does_not_stall_others(bin: &str, extra: &[&str]) {
    let server = Server::start(bin, extra);
    // A first client, echoed once, so that what the server allocates once (its read buffer,
    // step07's runtime) is in the baseline and not counted as the flood's.
    let mut first = connect(&server);
    assert_echo(&mut first, Message::text("a first echo"));
    let base_rss = server.rss_bytes();

    // The flooder shakes hands, then writes ready-made frames straight to the socket: a
    // blocking WebSocket client would keep every message it cannot send in its own memory.
    let flooder = connect(&server).into_inner();
    let mut flooding = flooder.try_clone().unwrap();
    let frame = raw_frame(true, 0x2, &pattern(64 * 1024), true);
    // Bounded: at most 256 MiB, for at most 3 s; it stops much sooner once buffers fill.
    let flood =
        thread::spawn(move || flood(&mut flooding, &frame, FLOOD_BYTES, Duration::from_secs(3)));

    thread::sleep(Duration::from_millis(500));
    let mut other = connect(&server);
    assert_echo(
        &mut other,
        Message::text("still served while another client floods"),
    );
    let sent = flood.join().unwrap();

    assert_flood_held_back(&server, base_rss, sent);
    drop(flooder);
}

/// Clients that vanish with a reset (SO_LINGER 0) after the handshake, some with a message
/// in flight, leave the server up and serving.
pub fn resets_leave_the_server_serving(bin: &str, extra: &[&str], clients: usize) {
    let mut server = Server::start(bin, extra);
    for i in 0..clients {
        let mut client = connect(&server);
        if i % 2 == 0 {
            // Half of them leave a message behind whose echo will meet a dead socket.
            client.send(Message::binary(vec![b'r'; 100_000])).unwrap();
        }
        tcp::reset(client.into_inner());
    }
    thread::sleep(Duration::from_millis(200));
    assert!(
        server.is_running(),
        "the server died after resets:\n{}",
        server.stderr()
    );
    let mut client = connect(&server);
    assert_echo(&mut client, Message::text("after the resets"));
}

/// The memory line counts WebSocket connections: `clients` after their handshakes, 0 after
/// they close, with the resident set `/proc` gives. Breaks if the count or the figures
/// drift from what the process holds.
pub fn memory_line_counts_connections(bin: &str, extra: &[&str], clients: usize) {
    let server = Server::start(bin, extra);
    let mut all: Vec<Client> = (0..clients).map(|_| connect(&server)).collect();
    // An echo on each proves the server has accepted and upgraded every one of them.
    for client in &mut all {
        assert_echo(client, Message::text("counted?"));
    }
    server.assert_memory_line_counts(clients as u64);

    drop(all);
    server.wait_for_memory_line(0);
}

/// `conns` idle WebSocket connections (each echoed once) cost what the memory line says,
/// held to `/proc`, and what each connection added to the resident set lies in `band` (bytes).
pub fn idle_connection_cost_within(
    bin: &str,
    extra: &[&str],
    conns: usize,
    band: impl RangeBounds<u64>,
) {
    let server = Server::start(bin, extra);
    memory::assert_per_conn_within(&server, conns, band, |server| {
        let mut client = connect(server);
        assert_echo(&mut client, Message::text("idle from now on"));
        client
    });
}

/// Run out of file descriptors: the server must neither die nor spin at 100% CPU while
/// the listen queue holds connections it cannot accept, and must serve WebSocket clients
/// again once descriptors free up.
pub fn survives_running_out_of_fds(bin: &str, extra: &[&str]) {
    check_fd_exhaustion(bin, extra, |server| {
        let stream = server.connect();
        stream
            .set_read_timeout(Some(Duration::from_secs(2)))
            .map_err(|e| e.to_string())?;
        let mut client = handshake(stream, server, None)?;
        client
            .send(Message::text("room again?"))
            .map_err(|e| e.to_string())?;
        let echoed = read_data(&mut client).map_err(|e| e.to_string())?;
        assert_eq!(echoed, Message::text("room again?"));
        Ok(())
    });
}

/// A message split into fragments (a first frame without FIN, continuation frames, a
/// final one) comes back whole, as one message of the first frame's type (RFC 6455 §5.4).
pub fn fragmented_message_echoed_whole(bin: &str, extra: &[&str]) {
    let server = Server::start(bin, extra);
    let mut client = connect(&server);
    let fragments: [(&[u8], OpCode, bool); 3] = [
        (b"frag", OpCode::Data(Data::Text), false),
        (b"men", OpCode::Data(Data::Continue), false),
        (b"ted", OpCode::Data(Data::Continue), true),
    ];
    for (payload, opcode, is_final) in fragments {
        // The client library masks each frame, as a client must.
        let frame = Frame::message(payload.to_vec(), opcode, is_final);
        client
            .send(Message::Frame(frame))
            .unwrap_or_else(|err| panic!("cannot send a fragment: {err}"));
    }
    let echoed = read_data(&mut client)
        .unwrap_or_else(|err| panic!("no echo of a message sent in three fragments: {err}"));
    assert_eq!(
        echoed,
        Message::text("fragmented"),
        "the three fragments \"frag\" \"men\" \"ted\" must come back as one text message"
    );
    // The connection is still in step: an ordinary message after it is echoed as usual.
    assert_echo(&mut client, Message::text("and one in a single frame"));
}

/// A ping is answered with a pong carrying the same payload (RFC 6455 §5.5.2), and the
/// connection goes on echoing.
pub fn ping_answered_with_pong(bin: &str, extra: &[&str]) {
    let server = Server::start(bin, extra);
    let mut client = connect(&server);
    let payload = tungstenite::Bytes::from_static(b"are you there?");
    client
        .send(Message::Ping(payload.clone()))
        .unwrap_or_else(|err| panic!("cannot send a ping: {err}"));
    let reply = client
        .read()
        .unwrap_or_else(|err| panic!("no answer to a ping: {err}"));
    assert_eq!(
        reply,
        Message::Pong(payload),
        "a ping must be answered by a pong with the ping's payload"
    );
    assert_echo(&mut client, Message::text("still echoing after the ping"));
}

/// A close frame from the client is answered with a close frame (RFC 6455 §5.5.1), after
/// which the server closes the TCP connection.
pub fn close_handshake_answered(bin: &str, extra: &[&str]) {
    use tungstenite::protocol::CloseFrame;

    let server = Server::start(bin, extra);
    let mut client = connect(&server);
    assert_echo(&mut client, Message::text("about to leave"));
    // Seen open first, so that the count going back to 0 below is a change, and reported.
    server.wait_for_memory_line(1);
    let goodbye = CloseFrame {
        code: CloseCode::Normal,
        reason: "goodbye".into(),
    };
    client
        .close(Some(goodbye))
        .unwrap_or_else(|err| panic!("cannot send a close frame: {err}"));
    // Bounded: a server that echoes data after a close fails at the first data message.
    match client.read() {
        Ok(Message::Close(_)) => {}
        Ok(other) => panic!("a close frame was answered with a {} message", kind(&other)),
        Err(err) => panic!("a close frame got no close frame back: {err}"),
    }
    // The server, having sent its close frame, closes the TCP connection (§7.1.1).
    match client.read() {
        Err(tungstenite::Error::ConnectionClosed) => {}
        other => {
            panic!("the server kept the connection open after the closing handshake: {other:?}")
        }
    }
    server.wait_for_memory_line(0);
}

/// A message of `len` bytes, over the step's limit, sent in `fragments` frames, is answered
/// with a close frame carrying 1009, "message too big" (RFC 6455 §7.4.1), never with its
/// echo, and every other connection is still served. The client here accepts messages of
/// any size, so an echo would be seen, not refused by the client's own limit.
/// Breaks if the step's frame or message limit is removed (the echo comes back), or if the
/// step hangs up without saying why.
pub fn oversized_message_closed_with_1009(bin: &str, extra: &[&str], len: usize, fragments: usize) {
    match answer_to_an_oversized_message(bin, extra, len, fragments) {
        Ok(Message::Close(Some(close))) if close.code == CloseCode::Size => {}
        Ok(Message::Close(close)) => panic!(
            "a {len}-byte message, over the limit, was answered with close {close:?}, not 1009"
        ),
        Ok(other) => panic!(
            "a {len}-byte message, over the limit, was answered with a {}-byte {} message",
            other.len(),
            kind(&other)
        ),
        Err(err) => panic!(
            "a {len}-byte message, over the limit, got no close frame with 1009 before the \
             connection ended: {err}"
        ),
    }
}

/// Send a `len`-byte binary message in `fragments` frames from a client without size limits,
/// and return what comes back first (pings and pongs skipped). Checks that the step does not
/// leave the connection open and silent, stays up, and still echoes a bystander.
fn answer_to_an_oversized_message(
    bin: &str,
    extra: &[&str],
    len: usize,
    fragments: usize,
) -> tungstenite::Result<Message> {
    let mut server = Server::start(bin, extra);
    let mut bystander = connect(&server);
    let unlimited = WebSocketConfig::default()
        .max_message_size(None)
        .max_frame_size(None);
    let mut client =
        handshake(server.connect(), &server, Some(unlimited)).unwrap_or_else(|err| panic!("{err}"));

    let message = pattern(len);
    let piece_len = len.div_ceil(fragments);
    let pieces = message.chunks(piece_len).count();
    for (i, piece) in message.chunks(piece_len).enumerate() {
        let opcode = match i {
            0 => OpCode::Data(Data::Binary),
            _ => OpCode::Data(Data::Continue),
        };
        let frame = Frame::message(piece.to_vec(), opcode, i + 1 == pieces);
        // The step may hang up as soon as it has read a header over its limit, before the
        // rest is sent: then sending fails (reset, broken pipe), and what it said before
        // hanging up is read below.
        if client.send(Message::Frame(frame)).is_err() {
            break;
        }
    }
    let answer = read_data(&mut client);
    if let Err(tungstenite::Error::Io(err)) = &answer {
        assert!(
            !timed_out(err),
            "a {len}-byte message, over the limit, got no answer: the connection stays open"
        );
    }
    assert!(
        server.is_running(),
        "the server died on an oversized message:\n{}",
        server.stderr()
    );
    assert_echo(&mut bystander, Message::text("the others are still served"));
    answer
}

/// True for what a read timeout on a blocking socket looks like.
fn timed_out(err: &std::io::Error) -> bool {
    matches!(err.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut)
}

/// A request that is not a WebSocket upgrade (plain HTTP, then garbage) is refused,
/// never answered with `101 Switching Protocols`, and the server keeps serving.
pub fn bad_handshake_refused(bin: &str, extra: &[&str]) {
    use std::io::Read;

    let mut server = Server::start(bin, extra);
    for request in [
        &b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"[..],
        &b"\x16\x03\x01\x02\x00 not HTTP at all\r\n\r\n"[..],
    ] {
        let mut stream = server.connect();
        stream.write_all(request).expect("send the request");
        // Whatever comes back (a 400, or nothing) until the server closes; bounded in
        // bytes and, through the stream's read timeout, in time.
        let mut answer = Vec::new();
        let mut buf = [0u8; 4096];
        while answer.len() < 64 * 1024 {
            match stream.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => answer.extend_from_slice(&buf[..n]),
                Err(err) if timed_out(&err) => panic!(
                    "the server neither answered nor closed a request that is no WebSocket upgrade: {:?}",
                    String::from_utf8_lossy(request)
                ),
                Err(_) => break, // reset: refused, too
            }
        }
        assert!(
            !answer.starts_with(b"HTTP/1.1 101"),
            "a request without `Upgrade: websocket` was upgraded: {:?}",
            String::from_utf8_lossy(&answer)
        );
    }
    assert!(
        server.is_running(),
        "the server died on a bad handshake:\n{}",
        server.stderr()
    );
    let mut client = connect(&server);
    assert_echo(
        &mut client,
        Message::text("a good handshake after the bad ones"),
    );
}

/// One client floods pings (16 MiB of them, its pongs read as fast as they come); a client
/// that connects meanwhile is upgraded and echoed long before the flood is over. Pings
/// cost the server more work per byte than they cost the client, so a server that read
/// the flooder until it was empty would serve nobody else until the flood ended.
pub fn ping_flood_does_not_starve_a_fresh_client(bin: &str, extra: &[&str]) {
    let server = Server::start(bin, extra);
    let flooder = connect(&server).into_inner();
    // An empty masked ping is 6 bytes; its pong is 2.
    let ping = [0x89, 0x80, 0x1f, 0x2e, 0x3d, 0x4c];
    let chunk = ping.repeat(10_000);
    check_flood_fairness(flooder, &chunk, 280, 2 * 10_000, || {
        let mut fresh = connect(&server);
        assert_echo(&mut fresh, Message::text("served during a flood"));
    });
}

/// With its stdout closed, the step keeps serving WebSocket clients: a memory line that
/// cannot be printed is lost, not fatal.
pub fn survives_stdout_closed(bin: &str, extra: &[&str]) {
    crate::check_stdout_closed(bin, extra, |server| {
        let mut client = connect(server);
        assert_echo(
            &mut client,
            Message::text("still serving with stdout closed"),
        );
    });
}

/// A connection that says its last word in the event whose answer takes the step past
/// `--max-buffered` still gets it out. `server` runs the step in this process with a budget
/// of 1 byte (below what the option allows: every byte held is past it). A client offering
/// a small window, the step's send buffer locked small ([`InProcess::shrink_send_buffer`]),
/// sends 200 pings and its close in one write, reading nothing until then: the pongs do not
/// fit in the kernel, and the step holds the rest as the connection turns to closing. The
/// client must then get every pong, the close frame with 1000, and the step's FIN, and the
/// step must serve on. Breaks if the budget stops a closing connection from sending what it
/// holds (its close frame then sits unsent until the closing deadline, 10 s), refuses it
/// again, or loses count of what it holds.
pub fn last_words_get_out_past_the_budget(server: &InProcess) {
    let mut client = inprocess::upgrade(server.connect_with_a_small_window());
    server.shrink_send_buffer(&client);

    // 200 × 131 bytes and a close, 26 KB: one segment on loopback (TCP cuts a write at half
    // the peer's window, 32 KiB here), so one read; 25 KB of pongs to answer.
    let ping = raw_frame(true, 9, &[b'p'; 125], true);
    let mut last_words = ping.repeat(200);
    last_words.extend(raw_frame(true, 8, &1000u16.to_be_bytes(), true));
    client.write_all(&last_words).unwrap();

    let mut answer = Vec::new();
    client
        .read_to_end(&mut answer)
        .expect("the step's last bytes, then its FIN, within the read timeout");
    let pong = [&[0x8a, 125][..], &[b'p'; 125]].concat();
    let expected = [pong.repeat(200), vec![0x88, 2, 0x03, 0xe8]].concat();
    assert!(
        answer == expected,
        "expected 200 pongs and a close frame with 1000, got {} bytes ending in {:?}",
        answer.len(),
        &answer[answer.len().saturating_sub(8)..]
    );

    // And the step serves on, its count of bytes held intact: a fresh client is answered.
    let mut fresh = inprocess::upgrade(server.connect());
    fresh.write_all(&raw_frame(true, 9, b"next", true)).unwrap();
    let mut pong = [0u8; 6];
    fresh
        .read_exact(&mut pong)
        .expect("a pong for a client that came after");
    assert_eq!(pong, *b"\x8a\x04next", "not a pong");
}

/// One frame in wire format, built byte by byte so that a check can break any rule:
/// `masked` as every client frame must be (RFC 6455 §5.3), or not; any opcode; a final
/// fragment or not. The length takes the shortest of its three encodings.
pub fn raw_frame(fin: bool, opcode: u8, payload: &[u8], masked: bool) -> Vec<u8> {
    let mut wire = vec![(u8::from(fin) << 7) | opcode];
    let mask_bit = if masked { 0x80 } else { 0 };
    match payload.len() {
        n @ 0..=125 => wire.push(mask_bit | n as u8),
        n @ 126..=0xffff => {
            wire.push(mask_bit | 126);
            wire.extend_from_slice(&(n as u16).to_be_bytes());
        }
        n => {
            wire.push(mask_bit | 127);
            wire.extend_from_slice(&(n as u64).to_be_bytes());
        }
    }
    if !masked {
        wire.extend_from_slice(payload);
        return wire;
    }
    // Any mask will do; a fixed one keeps the checks repeatable.
    let mask = *b"mask";
    wire.extend_from_slice(&mask);
    wire.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
    wire
}

/// Request heads that come in pieces count against `--max-buffered` too: with 64 KiB for
/// everybody, 16 clients that each send 6 KiB of a head do not all fit. Those that would
/// pass the budget get `503`; the others are upgraded when their heads complete, and a
/// client already upgraded is served throughout.
pub fn heads_in_pieces_are_held_to_the_budget(bin: &str, extra: &[&str]) {
    use std::io::Read;

    let args: Vec<&str> = extra
        .iter()
        .copied()
        .chain(["--max-buffered", "65536"])
        .collect();
    let server = Server::start(bin, &args);
    let mut bystander = connect(&server);
    let request = "GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\n\
                   Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\
                   Sec-WebSocket-Version: 13\r\n\r\n";
    let (start, rest) = request.split_at(request.find("Upgrade").expect("has an Upgrade header"));
    let filler = format!("X-Filler: {}\r\n", "a".repeat(6000));
    let mut slow: Vec<TcpStream> = (0..16)
        .map(|_| {
            let mut client = server.connect();
            client
                .write_all(format!("{start}{filler}").as_bytes())
                .expect("send the start of a head");
            client
        })
        .collect();
    // Once all 17 are accepted (the memory line says so), the bystander's echo comes after
    // the pieces sent before it were read.
    server.wait_for_memory_line(17);
    assert_echo(&mut bystander, Message::text("while 16 heads hang"));

    let mut statuses = Vec::new();
    for client in &mut slow {
        // A refused client's socket may be closed already: its answer is in its buffer.
        let _ = client.write_all(rest.as_bytes());
        let mut head = Vec::new();
        let mut byte = [0u8; 1];
        while !head.ends_with(b"\r\n\r\n") && head.len() < 4096 {
            match client.read(&mut byte) {
                Ok(1) => head.push(byte[0]),
                _ => break,
            }
        }
        statuses.push(String::from_utf8_lossy(head.get(9..12).unwrap_or(b"---")).into_owned());
    }
    let busy = statuses.iter().filter(|status| *status == "503").count();
    let upgraded = statuses.iter().filter(|status| *status == "101").count();
    assert_eq!(
        busy + upgraded,
        16,
        "every head ends in 503 or 101: {statuses:?}"
    );
    assert!(
        busy >= 6 && upgraded >= 1,
        "16 heads of 6 KiB do not all fit in 64 KiB, and the first ones do: {statuses:?}"
    );
    assert_echo(&mut bystander, Message::text("after the heads"));
}

/// With its stdout a pipe nobody reads, filled, the step serves every fresh WebSocket
/// client, and once the pipe is read again its next memory line says how many lines it
/// dropped.
pub fn serves_with_stdout_full(bin: &str, extra: &[&str]) {
    crate::output::check_stdout_full(bin, extra, |server| {
        let mut client = connect(server);
        assert_echo(&mut client, Message::text("served while stdout is full"));
    });
}

/// With stdout and stderr on /dev/full, the step starts and serves WebSocket clients: no
/// output error is fatal.
pub fn serves_with_output_on_dev_full(bin: &str, extra: &[&str]) {
    crate::output::check_output_on_dev_full(bin, extra, |server| {
        let mut client = connect(server);
        assert_echo(
            &mut client,
            Message::text("served with output on /dev/full"),
        );
    });
}
