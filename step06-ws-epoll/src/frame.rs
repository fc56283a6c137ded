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
//! connection's [`Partial`]. The event loop owns the sockets; `tests/frame.rs` needs none.

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
            // A real handler's work: none unless `--work-us`.
            common::work::spend_on(&out[body..]);
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
                // A real handler's work, on the whole message: none unless `--work-us`.
                common::work::spend_on(&message.payload);
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
