//! The frame decoder (`src/frame.rs`), bytes in and bytes out, no socket: what is echoed,
//! what is answered, what is refused with which close code, and what a connection keeps
//! between two reads. A conversation cut at every byte, and frames cut at random points
//! (proptest), decode as they do whole.

use std::io::Cursor;

use proptest::prelude::*;
use step06_ws_epoll::frame::{Flow, decode};
use stepcheck::ws::raw_frame;
use tungstenite::protocol::frame::FrameHeader;

const MAX: usize = 1 << 20;

/// A client frame: FIN bit, opcode, then the payload, masked as every client frame is.
fn client_frame(fin: bool, opcode: u8, payload: &[u8]) -> Vec<u8> {
    raw_frame(fin, opcode, payload, true)
}

/// The server's output split into (opcode, payload) pairs; panics on anything a server
/// must not send (masked, fragmented, or cut-off frames).
fn server_frames(mut out: &[u8]) -> Vec<(u8, Vec<u8>)> {
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
    let held = partial.as_ref().map_or(0, |p| p.heap_bytes());
    assert!(held >= 3, "the first fragment is not held: {held} bytes");
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
    let unmasked = raw_frame(true, 1, b"hi", false);
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
fn conversation() -> Vec<u8> {
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
                prop_assert!(server_frames(&out).last().is_some_and(|f| f.0 == 8));
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
