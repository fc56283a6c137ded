//! The stall clock, attacked: what a connection holds must be finished within
//! `--stall-timeout` of when it began to hold it (see `stepcheck::stall`).

use stepcheck::stall;

const BIN: &str = env!("CARGO_BIN_EXE_step07-tokio");

/// A head in two pieces, the second bringing half a frame, under connect/close churn:
/// closed with 1008, the budget given back.
#[test]
fn head_in_pieces_with_a_partial_frame_is_closed() {
    stall::head_in_pieces_with_a_partial_frame_is_closed(BIN, &[]);
}

/// A message kept open with empty fragments and pings, each in two pieces: closed with 1008.
#[test]
fn message_kept_open_with_tiny_frames_is_closed() {
    stall::message_kept_open_with_tiny_frames_is_closed(BIN, &[]);
}

/// A frame announcing 1 MiB, then a byte at a time: closed with 1008.
#[test]
fn trickled_frame_is_closed() {
    stall::trickled_frame_is_closed(BIN, &[]);
}
