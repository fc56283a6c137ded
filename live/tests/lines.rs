//! The splitter that cuts stdin into lines: whatever the pieces the pipe delivers, the
//! same lines come out, and a line too long to draw is skipped without being held.

use live::board::MAX_LINE;
use live::input::{Line, LineSplitter};

/// Owned copies of what the splitter hands over.
fn split(pieces: &[&[u8]]) -> Vec<Option<Vec<u8>>> {
    let mut splitter = LineSplitter::default();
    let mut out = Vec::new();
    let mut keep = |line: Line<'_>| {
        out.push(match line {
            Line::Whole(bytes) => Some(bytes.to_vec()),
            Line::TooLong => None,
        })
    };
    for piece in pieces {
        splitter.split(piece, &mut keep);
    }
    splitter.finish(&mut keep);
    out
}

/// Cut at every byte, the input gives the same lines as in one piece, the last one
/// without its newline included.
/// Breaks if a line that arrives in two reads is cut in two, or its start is lost.
#[test]
fn lines_are_the_same_whatever_the_pieces() {
    let input = b"{\"a\":1}\r\n\n{\"b\":22}\nlast";
    let whole = split(&[input]);
    assert_eq!(
        whole,
        [
            Some(b"{\"a\":1}\r".to_vec()),
            Some(vec![]),
            Some(b"{\"b\":22}".to_vec()),
            Some(b"last".to_vec())
        ]
    );
    for cut in 0..=input.len() {
        assert_eq!(
            split(&[&input[..cut], &input[cut..]]),
            whole,
            "cut at {cut}"
        );
    }
}

/// A line past MAX_LINE is one `TooLong`, however it arrives, and the next line is whole.
/// Breaks if the splitter keeps growing with the line, or loses the line after it.
#[test]
fn a_line_too_long_is_skipped_and_the_next_is_whole() {
    let long = vec![b'x'; MAX_LINE + 1];
    let fits = vec![b'y'; MAX_LINE];
    let mut input = long.clone();
    input.extend_from_slice(b"\n");
    input.extend_from_slice(&fits);
    input.extend_from_slice(b"\n{}\n");
    let expected = vec![None, Some(fits.clone()), Some(b"{}".to_vec())];
    assert_eq!(split(&[&input]), expected);
    for cut in [
        1,
        MAX_LINE / 2,
        MAX_LINE,
        MAX_LINE + 1,
        MAX_LINE + 2,
        input.len() - 2,
    ] {
        assert_eq!(
            split(&[&input[..cut], &input[cut..]]),
            expected,
            "cut at {cut}"
        );
    }
    // Ended in the middle of a long line: still one TooLong.
    assert_eq!(split(&[&long[..10], &long[10..]]), [None]);
}
