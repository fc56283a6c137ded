//! WebSocket frames (RFC 6455, section 5): decode what a client sends, answer as a server.
//!
//! ```text
//!  0                   1                   2                   3
//!  0 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6 7 8 9 0 1
//! +-+-+-+-+-------+-+-------------+-------------------------------+
//! |F|R|R|R| opcode|M| Payload len |    Extended payload length    |
//! |I|S|S|S|  (4)  |A|     (7)     |             (16/64)           |
//! |N|V|V|V|       |S|             |   (if payload len==126/127)   |
//! | |1|2|3|       |K|             |                               |
//! +-+-+-+-+-------+-+-------------+ - - - - - - - - - - - - - - - +
//! |     Extended payload length continued, if payload len == 127  |
//! + - - - - - - - - - - - - - - - +-------------------------------+
//! |                               |Masking-key, if MASK set to 1  |
//! +-------------------------------+-------------------------------+
//! | Masking-key (continued)       |          Payload Data         |
//! +-------------------------------- - - - - - - - - - - - - - - - +
//! ```
//!
//! tungstenite's `FrameHeader` reads and writes that header; what we do with the payload
//! (unmasking, reassembly, checking) is ours, so the buffers are ours too. That is the whole
//! point of this step: a connection holds a buffer only while it is in the middle of
//! something — a frame cut in two by TCP, or a message sent in fragments. The rest of the
//! time its [`Partial`] is `None`: eight bytes, no allocation.
//!
//! [`decode`] does no I/O: bytes in, reply bytes out, and what is unfinished kept in the
//! connection's [`Partial`]. The event loop owns the sockets; the tests below need none.

use std::io::Cursor;
use std::mem;

use tungstenite::protocol::frame::FrameHeader;
use tungstenite::protocol::frame::coding::{CloseCode, Control, Data, OpCode};

/// Control frames (close, ping, pong) carry at most 125 bytes and are never fragmented, so
/// they always fit in a small buffer and can come between the fragments of a message.
const MAX_CONTROL_PAYLOAD: u64 = 125;

/// What a connection remembers between two reads: only what is unfinished.
/// The event loop holds it as `Option<Box<Partial>>` and it is `None` when idle.
#[derive(Debug, Default)]
pub struct Partial {
    /// The bytes of a frame that has not fully arrived yet (header included, still masked).
    frame: Vec<u8>,
    /// A fragmented message being put back together.
    message: Option<Message>,
}

/// A message that arrived as a first frame without FIN and continuation frames after it.
#[derive(Debug)]
struct Message {
    /// Text (UTF-8 checked) or binary.
    text: bool,
    /// The unmasked payload of the fragments so far.
    payload: Vec<u8>,
    /// How many payload bytes are known to be valid UTF-8; checking resumes from here, so
    /// a long message is checked once, not once per fragment.
    utf8_checked: usize,
}

impl Partial {
    fn is_empty(&self) -> bool {
        self.frame.is_empty() && self.message.is_none()
    }

    /// Bytes this connection holds on the heap right now, as allocated: what the loop
    /// counts against `--max-buffered`.
    pub fn heap_bytes(&self) -> usize {
        self.frame.capacity() + self.message.as_ref().map_or(0, |m| m.payload.capacity())
    }
}

/// What [`decode`] made of one read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Decoded {
    /// How the connection goes on.
    pub flow: Flow,
    /// What the connection held before this read is finished: at some point in the read,
    /// between two frames, it held nothing (no part of a frame, no unfinished message).
    /// The last frame of a message does that; a ping or an empty fragment in the middle of
    /// a message does not. Whatever `partial` holds now began in this read. (The event
    /// loop's stall clock starts again on it.)
    pub finished: bool,
}

/// How the connection goes on after [`decode`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Flow {
    /// Keep reading.
    Open,
    /// A close frame is at the end of the output (our reply to the client's close, or our
    /// own close for a protocol error): send the output, then close the connection.
    Close,
}

/// Decode the frames in `input` (the bytes just read, following whatever `partial` kept from
/// before), and append the replies — echoes, pongs, a close — to `out`.
///
/// Frames that are whole in `input` are handled straight from it, without a copy. Only an
/// incomplete tail is copied into `partial`, which is set back to `None` as soon as nothing
/// is unfinished.
pub fn decode(
    partial: &mut Option<Box<Partial>>,
    input: &[u8],
    max_message: usize,
    out: &mut Vec<u8>,
) -> Decoded {
    // Holding nothing before the read, nothing from before it is left unfinished.
    let mut finished = partial.is_none();
    let flow = match decode_frames(partial, input, max_message, out, &mut finished) {
        Ok(flow) => {
            // An idle connection keeps nothing: give the buffers back now.
            if partial.as_ref().is_some_and(|p| p.is_empty()) {
                *partial = None;
            }
            flow
        }
        Err(code) => {
            // "Fail the WebSocket connection": send a close with the reason, read no more.
            *partial = None;
            write_close(Some(code), out);
            Flow::Close
        }
    };
    Decoded { flow, finished }
}

/// [`decode`]'s work. `finished` is set when, after a frame, nothing is unfinished.
fn decode_frames(
    partial: &mut Option<Box<Partial>>,
    mut input: &[u8],
    max_message: usize,
    out: &mut Vec<u8>,
    finished: &mut bool,
) -> Result<Flow, CloseCode> {
    // 1. Finish the frame the last read left incomplete, taking from `input` only the bytes
    //    that belong to it.
    let mut frame = partial
        .as_mut()
        .map(|p| mem::take(&mut p.frame))
        .unwrap_or_default();
    if !frame.is_empty() {
        let (header, header_len, payload_len) = loop {
            match parse_header(&frame, message_of(partial), max_message)? {
                Some(parsed) => break parsed,
                // The header itself was cut (it is 2 to 14 bytes long): add one byte at a
                // time, so we never take a byte of the next frame by mistake.
                None => match input.split_first() {
                    Some((&byte, rest)) => {
                        frame.push(byte);
                        input = rest;
                    }
                    None => return Ok(keep_frame(partial, frame)),
                },
            }
        };
        let missing = header_len + payload_len - frame.len();
        let take = missing.min(input.len());
        grow(&mut frame, take, header_len + payload_len);
        frame.extend_from_slice(&input[..take]);
        input = &input[take..];
        if take < missing {
            return Ok(keep_frame(partial, frame));
        }
        if handle_frame(partial, &header, &frame[header_len..], max_message, out)? == Flow::Close {
            return Ok(Flow::Close);
        }
        // The cut frame is whole now: only a message can still be unfinished.
        *finished |= message_of(partial).is_none();
        // `frame` is dropped here: its memory goes back as soon as the frame is handled.
    }

    // 2. Every whole frame in `input`, read in place.
    while !input.is_empty() {
        let Some((header, header_len, payload_len)) =
            parse_header(input, message_of(partial), max_message)?
        else {
            // Not even the header is here yet.
            return Ok(keep_frame(partial, input.to_vec()));
        };
        let Some(payload) = input.get(header_len..header_len + payload_len) else {
            // The header is, the payload is not: keep what came, and only that. The length
            // is the client's word; memory is spent on bytes that actually arrive.
            return Ok(keep_frame(partial, input.to_vec()));
        };
        if handle_frame(partial, &header, payload, max_message, out)? == Flow::Close {
            // Nothing after a close frame is read (RFC 6455, section 5.5.1).
            return Ok(Flow::Close);
        }
        *finished |= message_of(partial).is_none();
        input = &input[header_len + payload_len..];
    }
    Ok(Flow::Open)
}

/// Make room for `more` bytes in `frame`, a frame of `total` bytes in all: double what is
/// there (so a big frame is copied O(1) times per byte, not once per read), but never past
/// `total`. Room follows the bytes that arrived, never the length the header announced.
fn grow(frame: &mut Vec<u8>, more: usize, total: usize) {
    let needed = frame.len() + more;
    if needed > frame.capacity() {
        let target = needed.max(2 * frame.capacity()).min(total);
        frame.reserve_exact(target - frame.len());
    }
}

/// Store the start of an incomplete frame until more bytes arrive.
fn keep_frame(partial: &mut Option<Box<Partial>>, frame: Vec<u8>) -> Flow {
    partial.get_or_insert_default().frame = frame;
    Flow::Open
}

/// How many payload bytes the fragmented message under way holds, if one is.
fn message_of(partial: &Option<Box<Partial>>) -> Option<usize> {
    partial
        .as_ref()
        .and_then(|p| p.message.as_ref())
        .map(|m| m.payload.len())
}

/// Parse and check a frame header at the start of `bytes`, `message` being how many bytes
/// the fragmented message under way holds, if one is: `Ok(None)` if the header has not
/// fully arrived, else the header, its length, and the payload's length.
///
/// The checks happen here, on the header alone, so a frame that is too big is refused
/// before a single byte of its payload is buffered. A length that passes is still only a
/// promise: nothing is reserved for it (see `grow`). (Public for step07, which holds
/// tungstenite's frames to the same rules.)
pub fn parse_header(
    bytes: &[u8],
    message: Option<usize>,
    max_message: usize,
) -> Result<Option<(FrameHeader, usize, usize)>, CloseCode> {
    let mut cursor = Cursor::new(bytes);
    let (header, payload_len) = match FrameHeader::parse(&mut cursor) {
        Ok(Some(parsed)) => parsed,
        Ok(None) => return Ok(None),
        // On a byte slice the only error is an opcode RFC 6455 reserves (3–7, 11–15).
        Err(_) => return Err(CloseCode::Protocol),
    };

    // No extension was negotiated in the handshake, so no reserved bit may be set.
    if header.rsv1 || header.rsv2 || header.rsv3 {
        return Err(CloseCode::Protocol);
    }
    // Every client frame is masked (section 5.3): it keeps a script in a browser from
    // writing bytes of its choosing on the wire, which a confused proxy might cache.
    if header.mask.is_none() {
        return Err(CloseCode::Protocol);
    }
    // A 64-bit length must leave its top bit clear (section 5.2).
    if payload_len > i64::MAX as u64 {
        return Err(CloseCode::Protocol);
    }
    let already = message.unwrap_or(0) as u64;
    match header.opcode {
        OpCode::Control(_) if !header.is_final || payload_len > MAX_CONTROL_PAYLOAD => {
            return Err(CloseCode::Protocol);
        }
        OpCode::Control(_) => {}
        // A continuation needs a message to continue; a new message must wait for the
        // current one to finish.
        OpCode::Data(Data::Continue) if message.is_none() => return Err(CloseCode::Protocol),
        OpCode::Data(Data::Text | Data::Binary) if message.is_some() => {
            return Err(CloseCode::Protocol);
        }
        OpCode::Data(_) if payload_len.saturating_add(already) > max_message as u64 => {
            return Err(CloseCode::Size);
        }
        OpCode::Data(_) => {}
    }
    // A control frame is ≤ 125 bytes, a data frame ≤ the limit, and the whole frame's length
    // must fit in a usize too: checked, never wrapped, whatever limit was configured.
    let header_len = cursor.position() as usize;
    match usize::try_from(payload_len) {
        Ok(len) if len.checked_add(header_len).is_some() => Ok(Some((header, header_len, len))),
        _ => Err(CloseCode::Size),
    }
}

/// Act on one whole frame whose header passed [`parse_header`]. `payload` is still masked.
fn handle_frame(
    partial: &mut Option<Box<Partial>>,
    header: &FrameHeader,
    payload: &[u8],
    max_message: usize,
    out: &mut Vec<u8>,
) -> Result<Flow, CloseCode> {
    let mask = header
        .mask
        .expect("bug: parse_header lets only masked frames through");
    match header.opcode {
        OpCode::Control(Control::Ping) => {
            // Answer with a pong carrying the same bytes, even between two fragments.
            write_header(OpCode::Control(Control::Pong), payload.len(), out);
            unmask_into(payload, mask, out);
            Ok(Flow::Open)
        }
        // An unsolicited pong is a heartbeat; nothing to answer.
        OpCode::Control(Control::Pong) => Ok(Flow::Open),
        OpCode::Control(Control::Close) => answer_close(payload, mask, out),

        // The common case: a whole message in one frame. Echo it without buffering it:
        // header, then the payload unmasked straight into the output.
        OpCode::Data(data @ (Data::Text | Data::Binary)) if header.is_final => {
            let start = out.len();
            write_header(OpCode::Data(data), payload.len(), out);
            let body = out.len();
            unmask_into(payload, mask, out);
            if data == Data::Text && std::str::from_utf8(&out[body..]).is_err() {
                out.truncate(start);
                return Err(CloseCode::Invalid);
            }
            Ok(Flow::Open)
        }
        // The first fragment of a message: now, and only now, a message buffer exists.
        OpCode::Data(data @ (Data::Text | Data::Binary)) => {
            let mut message = Message {
                text: data == Data::Text,
                payload: Vec::new(),
                utf8_checked: 0,
            };
            unmask_into(payload, mask, &mut message.payload);
            check_utf8(&mut message, false)?;
            partial.get_or_insert_default().message = Some(message);
            Ok(Flow::Open)
        }
        OpCode::Data(Data::Continue) => {
            let slot = &mut partial
                .as_mut()
                .expect("bug: parse_header checked a message is open")
                .message;
            let message = slot
                .as_mut()
                .expect("bug: parse_header checked a message is open");
            unmask_into(payload, mask, &mut message.payload);
            // Fail fast: bad UTF-8 is refused at the fragment that brings it.
            check_utf8(message, header.is_final)?;
            if header.is_final {
                let message = slot.take().expect("bug: just used");
                debug_assert!(message.payload.len() <= max_message);
                let opcode = if message.text {
                    Data::Text
                } else {
                    Data::Binary
                };
                write_header(OpCode::Data(opcode), message.payload.len(), out);
                out.extend_from_slice(&message.payload);
            }
            Ok(Flow::Open)
        }
        OpCode::Data(Data::Reserved(_)) | OpCode::Control(Control::Reserved(_)) => {
            unreachable!("bug: FrameHeader::parse refuses reserved opcodes")
        }
    }
}

/// The client closes: check its close payload and echo its code (section 5.5.1).
fn answer_close(payload: &[u8], mask: [u8; 4], out: &mut Vec<u8>) -> Result<Flow, CloseCode> {
    let mut body = Vec::with_capacity(payload.len()); // ≤ 125 bytes
    unmask_into(payload, mask, &mut body);
    match body.as_slice() {
        // No payload: a close without a reason. Answer in kind.
        [] => write_close(None, out),
        // A code is two bytes; one byte is malformed.
        [_] => return Err(CloseCode::Protocol),
        [hi, lo, reason @ ..] => {
            let code = CloseCode::from(u16::from_be_bytes([*hi, *lo]));
            // 1005, 1006 and 1015 are for reports, never the wire; 0–999, 1004 and
            // 1016–2999 are not (yet) assigned. tungstenite sorts codes for us.
            if !code.is_allowed() {
                return Err(CloseCode::Protocol);
            }
            if std::str::from_utf8(reason).is_err() {
                return Err(CloseCode::Invalid);
            }
            write_close(Some(code), out);
        }
    }
    Ok(Flow::Close)
}

/// Check the UTF-8 of a text message as its fragments arrive. A character cut in two by a
/// fragment boundary is fine until the last fragment.
fn check_utf8(message: &mut Message, is_final: bool) -> Result<(), CloseCode> {
    if !message.text {
        return Ok(());
    }
    match std::str::from_utf8(&message.payload[message.utf8_checked..]) {
        Ok(_) => message.utf8_checked = message.payload.len(),
        // `error_len() == None`: the bytes end in the middle of a character.
        Err(err) if err.error_len().is_none() && !is_final => {
            message.utf8_checked += err.valid_up_to()
        }
        Err(_) => return Err(CloseCode::Invalid),
    }
    Ok(())
}

/// XOR the payload with the 4-byte mask, cycling: byte `i` with `mask[i % 4]`.
/// (tungstenite has a faster one, word by word, but keeps it private.)
fn unmask_into(payload: &[u8], mask: [u8; 4], out: &mut Vec<u8>) {
    out.extend(
        payload
            .iter()
            .zip(mask.iter().cycle())
            .map(|(byte, key)| byte ^ key),
    );
}

/// A server frame header: final, no extension bits, and never masked (section 5.1).
fn write_header(opcode: OpCode, payload_len: usize, out: &mut Vec<u8>) {
    let header = FrameHeader {
        is_final: true,
        rsv1: false,
        rsv2: false,
        rsv3: false,
        opcode,
        mask: None,
    };
    header
        .format(payload_len as u64, out)
        .expect("bug: writing into a Vec cannot fail");
}

/// A close frame: the code (if any) as two big-endian bytes, and no reason (the code says
/// it all).
pub fn write_close(code: Option<CloseCode>, out: &mut Vec<u8>) {
    let code = code.map(|code| u16::from(code).to_be_bytes());
    let code: &[u8] = code.as_ref().map_or(&[], |c| c);
    write_header(OpCode::Control(Control::Close), code.len(), out);
    out.extend_from_slice(code);
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    const MAX: usize = 1 << 20;

    /// A client frame, built by hand: FIN bit, opcode, then masked payload.
    pub(crate) fn client_frame(fin: bool, opcode: u8, payload: &[u8]) -> Vec<u8> {
        let mask = [0x37, 0xfa, 0x21, 0x3d];
        let mut frame = vec![if fin { 0x80 } else { 0 } | opcode];
        match payload.len() {
            len @ 0..=125 => frame.push(0x80 | len as u8),
            len @ 126..=0xffff => {
                frame.push(0x80 | 126);
                frame.extend_from_slice(&(len as u16).to_be_bytes());
            }
            len => {
                frame.push(0x80 | 127);
                frame.extend_from_slice(&(len as u64).to_be_bytes());
            }
        }
        frame.extend_from_slice(&mask);
        frame.extend(payload.iter().zip(mask.iter().cycle()).map(|(b, k)| b ^ k));
        frame
    }

    /// The server's output split into (opcode, payload) pairs; panics on anything a server
    /// must not send (masked, fragmented, or cut-off frames).
    pub(crate) fn server_frames(mut out: &[u8]) -> Vec<(u8, Vec<u8>)> {
        let mut frames = Vec::new();
        while !out.is_empty() {
            let mut cursor = Cursor::new(out);
            let (header, len) = FrameHeader::parse(&mut cursor)
                .unwrap()
                .expect("a whole header");
            assert!(
                header.is_final && header.mask.is_none(),
                "server frames are final and unmasked"
            );
            let start = cursor.position() as usize;
            frames.push((
                u8::from(header.opcode),
                out[start..start + len as usize].to_vec(),
            ));
            out = &out[start + len as usize..];
        }
        frames
    }

    /// Feed `input` to a fresh connection in one piece.
    fn run(input: &[u8]) -> (Flow, Vec<(u8, Vec<u8>)>) {
        let mut partial = None;
        let mut out = Vec::new();
        let flow = decode(&mut partial, input, MAX, &mut out).flow;
        (flow, server_frames(&out))
    }

    fn close(code: u16) -> (u8, Vec<u8>) {
        (8, code.to_be_bytes().to_vec())
    }

    /// A text and a binary frame are echoed as sent, and the idle connection keeps no buffer.
    #[test]
    fn echoes_text_and_binary_and_keeps_nothing() {
        let mut input = client_frame(true, 1, b"hello");
        input.extend(client_frame(true, 2, &[0, 1, 2, 255]));
        let mut partial = None;
        let mut out = Vec::new();
        assert_eq!(decode(&mut partial, &input, MAX, &mut out).flow, Flow::Open);
        assert_eq!(
            server_frames(&out),
            [(1, b"hello".to_vec()), (2, vec![0, 1, 2, 255])]
        );
        assert!(partial.is_none(), "an idle connection holds no buffer");
    }

    /// Payloads at the edges of the 7-, 16- and 64-bit length encodings are echoed intact.
    #[test]
    fn all_three_length_encodings_round_trip() {
        for len in [0, 125, 126, 65_535, 65_536, 200_000] {
            let payload: Vec<u8> = (0..len).map(|i| i as u8).collect();
            assert_eq!(
                run(&client_frame(true, 2, &payload)),
                (Flow::Open, vec![(2, payload)]),
                "length {len}"
            );
        }
    }

    /// Fragments are joined into one message; a ping between them is answered, a pong ignored.
    #[test]
    fn fragments_are_reassembled_with_a_ping_between_them() {
        let mut input = client_frame(false, 1, b"Hel");
        input.extend(client_frame(true, 9, b"are you there?"));
        input.extend(client_frame(false, 0, b"lo, "));
        input.extend(client_frame(true, 10, b"unsolicited pong"));
        input.extend(client_frame(true, 0, b"world"));
        assert_eq!(
            run(&input),
            (
                Flow::Open,
                vec![
                    (10, b"are you there?".to_vec()),
                    (1, b"Hello, world".to_vec())
                ]
            )
        );
    }

    /// A fragmented message is buffered, and nothing echoed, until its last frame arrives.
    #[test]
    fn a_fragmented_message_is_held_until_its_last_frame() {
        let mut partial = None;
        let mut out = Vec::new();
        decode(&mut partial, &client_frame(false, 2, b"abc"), MAX, &mut out);
        assert!(out.is_empty());
        let held = partial.as_ref().and_then(|p| p.message.as_ref());
        assert_eq!(held.map(|m| &m.payload[..]), Some(&b"abc"[..]));
        decode(&mut partial, &client_frame(true, 0, b"def"), MAX, &mut out);
        assert_eq!(server_frames(&out), [(2, b"abcdef".to_vec())]);
        assert!(partial.is_none());
    }

    /// `finished` says a read finished what was held before it: the last frame of a
    /// message does, even when the next message starts in the same read; the half of a
    /// frame, a ping, or an empty fragment in the middle of a message does not. (The event
    /// loop's stall clock hangs on it: a client must not keep a message open with those.)
    #[test]
    fn a_read_finishes_what_was_held_only_with_the_last_frame_of_a_message() {
        let (mut partial, mut out) = (None, Vec::new());
        let mut read = |input: &[u8]| decode(&mut partial, input, MAX, &mut out).finished;
        assert!(
            read(&client_frame(false, 2, b"first")),
            "nothing was held before"
        );
        let empty_fragment = client_frame(false, 0, b"");
        let ping = client_frame(true, 9, b"still there");
        for tiny in [&empty_fragment, &ping] {
            assert!(!read(&tiny[..1]), "half a frame finishes nothing");
            assert!(!read(&tiny[1..]), "the message is still open");
            assert!(!read(tiny), "a whole tiny frame finishes nothing either");
        }
        let mut last_and_next = client_frame(true, 0, b"last");
        last_and_next.extend_from_slice(&client_frame(true, 2, b"next")[..3]);
        assert!(
            read(&last_and_next),
            "the message is finished, the next began"
        );
        assert!(!read(&client_frame(true, 2, b"next")[3..5]));
    }

    /// A close gets its own code back (an empty close an empty one); frames after it are ignored.
    #[test]
    fn close_is_answered_with_the_same_code() {
        let mut payload = 1000u16.to_be_bytes().to_vec();
        payload.extend_from_slice("bye ✓".as_bytes());
        let mut input = client_frame(true, 8, &payload);
        input.extend(client_frame(true, 1, b"ignored: after the close"));
        assert_eq!(run(&input), (Flow::Close, vec![close(1000)]));
        assert_eq!(
            run(&client_frame(true, 8, b"")),
            (Flow::Close, vec![(8, vec![])])
        );
        for code in [1001, 1003, 1007, 1011, 3000, 4999] {
            assert_eq!(
                run(&client_frame(true, 8, &u16::to_be_bytes(code))),
                (Flow::Close, vec![close(code)])
            );
        }
    }

    /// A 1-byte close payload or a reserved code gets 1002; a reason that is not UTF-8 gets 1007.
    #[test]
    fn bad_close_payloads_are_protocol_errors() {
        assert_eq!(
            run(&client_frame(true, 8, &[3])),
            (Flow::Close, vec![close(1002)])
        );
        for code in [0, 999, 1004, 1005, 1006, 1015, 1016, 2999, 5000] {
            assert_eq!(
                run(&client_frame(true, 8, &u16::to_be_bytes(code))),
                (Flow::Close, vec![close(1002)]),
                "{code}"
            );
        }
        assert_eq!(
            run(&client_frame(true, 8, &[0x03, 0xe8, 0xff])),
            (Flow::Close, vec![close(1007)])
        );
    }

    /// Each broken framing rule (no mask, RSV bit, bad opcode, bad fragments, big ping) gets 1002.
    #[test]
    fn protocol_errors_close_with_1002() {
        let mut unmasked = client_frame(true, 1, b"hi");
        unmasked[1] &= 0x7f;
        unmasked.drain(2..6); // and no mask key
        let mut rsv = client_frame(true, 1, b"hi");
        rsv[0] |= 0x40;
        let mut text_inside_fragments = client_frame(false, 1, b"a");
        text_inside_fragments.extend(client_frame(true, 1, b"b"));
        let cases = [
            ("unmasked", unmasked),
            ("rsv1 without extension", rsv),
            ("opcode 3", client_frame(true, 3, b"")),
            ("opcode 11", client_frame(true, 11, b"")),
            ("ping of 126 bytes", client_frame(true, 9, &[0; 126])),
            ("fragmented ping", client_frame(false, 9, b"")),
            ("continuation of nothing", client_frame(true, 0, b"x")),
            ("new message inside a fragmented one", text_inside_fragments),
        ];
        for (what, input) in cases {
            assert_eq!(run(&input), (Flow::Close, vec![close(1002)]), "{what}");
        }
    }

    /// Text that is not UTF-8 gets 1007; a character split across fragments is fine.
    #[test]
    fn invalid_utf8_closes_with_1007() {
        assert_eq!(
            run(&client_frame(true, 1, &[0xff, b'a'])),
            (Flow::Close, vec![close(1007)])
        );
        // "€" is E2 82 AC: cut between two fragments it is still fine...
        let mut split = client_frame(false, 1, &[b'a', 0xe2, 0x82]);
        split.extend(client_frame(true, 0, &[0xac]));
        assert_eq!(
            run(&split),
            (Flow::Open, vec![(1, "a€".as_bytes().to_vec())])
        );
        // ...but left unfinished at the end of the message it is not.
        let mut truncated = client_frame(false, 1, &[b'a', 0xe2, 0x82]);
        truncated.extend(client_frame(true, 0, b""));
        assert_eq!(run(&truncated), (Flow::Close, vec![close(1007)]));
        // A bad byte in the first fragment fails there, before the message ends.
        let mut partial = None;
        let mut out = Vec::new();
        assert_eq!(
            decode(
                &mut partial,
                &client_frame(false, 1, &[0xc0, 0x80]),
                MAX,
                &mut out
            )
            .flow,
            Flow::Close
        );
        assert_eq!(server_frames(&out), [close(1007)]);
        // Binary messages are not checked.
        assert_eq!(
            run(&client_frame(true, 2, &[0xff])),
            (Flow::Open, vec![(2, vec![0xff])])
        );
    }

    /// A message over the limit, in one frame or many, gets 1009 before it is buffered.
    #[test]
    fn messages_over_the_limit_close_with_1009_before_buffering() {
        let mut partial = None;
        let mut out = Vec::new();
        // Only the header of a frame announcing a 2 MiB payload: refused at once.
        let frame = client_frame(true, 2, &vec![0; 2 * MAX]);
        assert_eq!(
            decode(&mut partial, &frame[..14], MAX, &mut out).flow,
            Flow::Close
        );
        assert_eq!(server_frames(&out), [close(1009)]);
        assert!(partial.is_none());
        // Fragments that are fine alone but too big together.
        let mut input = client_frame(false, 2, &vec![0; MAX / 2 + 1]);
        input.extend(client_frame(true, 0, &vec![0; MAX / 2]));
        assert_eq!(run(&input), (Flow::Close, vec![close(1009)]));
        // Exactly the limit is allowed.
        assert_eq!(
            run(&client_frame(true, 2, &vec![7; MAX])),
            (Flow::Open, vec![(2, vec![7; MAX])])
        );
    }

    /// A header announcing a huge length holds only the bytes that came, however high the
    /// limit; a length with its top bit set gets 1002; room grows with the bytes, no further.
    #[test]
    fn an_announced_length_reserves_nothing_up_front() {
        for len in [1u64 << 40, (1 << 63) - 1] {
            let mut header = vec![0x82, 0x80 | 127];
            header.extend_from_slice(&len.to_be_bytes());
            header.extend_from_slice(&[1, 2, 3, 4]);
            header.extend_from_slice(&[0; 100]);
            let (mut partial, mut out) = (None, Vec::new());
            assert_eq!(
                decode(&mut partial, &header, usize::MAX, &mut out).flow,
                Flow::Open
            );
            let held = partial.as_ref().map_or(0, |p| p.heap_bytes());
            assert!(
                held < 1024,
                "a {len}-byte frame holds {held} bytes after 114"
            );
            assert_eq!(
                decode(&mut partial, &[0; 1000], usize::MAX, &mut out).flow,
                Flow::Open
            );
            let held = partial.as_ref().map_or(0, |p| p.heap_bytes());
            assert!(
                held < 4096,
                "a {len}-byte frame holds {held} bytes after 1114"
            );
        }
        for len in [1u64 << 63, u64::MAX] {
            let mut header = vec![0x82, 0x80 | 127];
            header.extend_from_slice(&len.to_be_bytes());
            header.extend_from_slice(&[1, 2, 3, 4]);
            let (mut partial, mut out) = (None, Vec::new());
            assert_eq!(
                decode(&mut partial, &header, usize::MAX, &mut out).flow,
                Flow::Close
            );
            assert_eq!(server_frames(&out), [close(1002)], "a length of {len}");
        }
        // A frame that arrives in pieces never holds more than its own length.
        let frame = client_frame(true, 2, &[9; 100_000]);
        let (mut partial, mut out) = (None, Vec::new());
        for piece in frame[..frame.len() - 1].chunks(30_000) {
            decode(&mut partial, piece, MAX, &mut out);
        }
        let held = partial.as_ref().map_or(0, |p| p.heap_bytes());
        assert!(
            held <= frame.len(),
            "{held} bytes held for a {}-byte frame",
            frame.len()
        );
    }

    /// A conversation that exercises every kind of frame, for the split tests.
    pub(crate) fn conversation() -> Vec<u8> {
        let mut input = client_frame(true, 1, "héllo".as_bytes());
        input.extend(client_frame(false, 1, &[b'x', 0xe2, 0x82]));
        input.extend(client_frame(true, 9, b"ping"));
        input.extend(client_frame(false, 0, &[0xac; 1]));
        input.extend(client_frame(true, 0, &[b'y'; 300]));
        input.extend(client_frame(true, 2, &[1; 70_000]));
        input.extend(client_frame(true, 10, b""));
        input.extend(client_frame(true, 8, &1000u16.to_be_bytes()));
        input
    }

    /// A conversation cut in two at any byte gets the same replies as when sent in one piece.
    #[test]
    fn a_conversation_split_at_every_byte_boundary_decodes_the_same() {
        let input = conversation();
        let (mut whole_partial, mut whole) = (None, Vec::new());
        assert_eq!(
            decode(&mut whole_partial, &input, MAX, &mut whole).flow,
            Flow::Close
        );
        // Byte boundaries in the small frames, and around every header of the big one.
        let big_start = input.len() - 70_000 - 14 - 6 - 8;
        let splits = (0..big_start + 20).chain(input.len() - 30..input.len());
        for split in splits {
            let (mut partial, mut out) = (None, Vec::new());
            assert_eq!(
                decode(&mut partial, &input[..split], MAX, &mut out).flow,
                Flow::Open,
                "split at {split}"
            );
            assert_eq!(
                decode(&mut partial, &input[split..], MAX, &mut out).flow,
                Flow::Close,
                "split at {split}"
            );
            assert_eq!(out, whole, "split at {split}");
        }
    }

    /// A conversation fed one byte at a time gets the same replies as when sent in one piece.
    #[test]
    fn a_conversation_fed_one_byte_at_a_time_decodes_the_same() {
        let input = conversation();
        let (mut partial, mut whole) = (None, Vec::new());
        decode(&mut partial, &input, MAX, &mut whole);
        let (mut partial, mut out) = (None, Vec::new());
        let mut flow = Flow::Open;
        for byte in &input {
            assert_eq!(flow, Flow::Open);
            flow = decode(&mut partial, std::slice::from_ref(byte), MAX, &mut out).flow;
        }
        assert_eq!((flow, out == whole), (Flow::Close, true));
    }
}

#[cfg(test)]
mod proptests {
    use super::tests::{client_frame, conversation};
    use super::*;
    use proptest::prelude::*;

    /// Feed the chunks in order, as the event loop would, stopping at a close.
    fn feed(chunks: &[&[u8]], max: usize) -> (Flow, Vec<u8>) {
        let (mut partial, mut out) = (None, Vec::new());
        for chunk in chunks {
            if decode(&mut partial, chunk, max, &mut out).flow == Flow::Close {
                return (Flow::Close, out);
            }
        }
        (Flow::Open, out)
    }

    /// Cut `bytes` at the given points (sorted, deduplicated, clamped).
    fn cut<'a>(bytes: &'a [u8], points: &[usize]) -> Vec<&'a [u8]> {
        let mut points: Vec<usize> = points.iter().map(|&p| p % (bytes.len() + 1)).collect();
        points.sort_unstable();
        points.dedup();
        let mut chunks = Vec::new();
        let mut start = 0;
        for point in points.into_iter().chain([bytes.len()]) {
            chunks.push(&bytes[start..point]);
            start = point;
        }
        chunks
    }

    proptest! {
        /// Arbitrary bytes, cut anywhere, never panic the decoder; once it says Close it
        /// has written a close frame last.
        #[test]
        fn arbitrary_bytes_in_random_pieces_never_panic(
            bytes in proptest::collection::vec(any::<u8>(), 0..512),
            points in proptest::collection::vec(any::<usize>(), 0..8),
            max in 0usize..300,
        ) {
            let (mut partial, mut out) = (None, Vec::new());
            for chunk in cut(&bytes, &points) {
                if decode(&mut partial, chunk, max, &mut out).flow == Flow::Close {
                    prop_assert!(super::tests::server_frames(&out).last().is_some_and(|f| f.0 == 8));
                    break;
                }
            }
        }

        /// Masked frames with random headers (any opcode, FIN, RSV) cut anywhere decode
        /// exactly as they do in one piece.
        #[test]
        fn random_frames_decode_the_same_however_they_are_cut(
            frames in proptest::collection::vec((any::<bool>(), 0u8..16, proptest::collection::vec(any::<u8>(), 0..200)), 1..6),
            points in proptest::collection::vec(any::<usize>(), 0..10),
        ) {
            let input: Vec<u8> = frames.iter().flat_map(|(fin, op, payload)| client_frame(*fin, *op, payload)).collect();
            let (flow, whole) = feed(&[&input], 1000);
            let (cut_flow, out) = feed(&cut(&input, &points), 1000);
            prop_assert_eq!(out, whole);
            prop_assert_eq!(cut_flow, flow);
        }

        /// The test conversation, cut at random points, always gives the same replies.
        #[test]
        fn the_conversation_decodes_the_same_however_it_is_cut(points in proptest::collection::vec(any::<usize>(), 0..20)) {
            let input = conversation();
            let (_, whole) = feed(&[&input], 1 << 20);
            let (_, out) = feed(&cut(&input, &points), 1 << 20);
            prop_assert_eq!(out, whole);
        }
    }
}
