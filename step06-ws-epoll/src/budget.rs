//! The budgets a connection is held to, so that no client, and no group of clients, makes
//! the server hold more than it is told to. After each event the loop calls
//! [`hold_to_budget`] with what the connection held before:
//!
//! - memory: all connections together hold at most `--max-buffered` bytes (heads in
//!   pieces, unfinished frames and messages, unsent output); the one that would pass it is
//!   closed with 1009 (503 while it handshakes);
//! - time: a connection that holds bytes must finish something within `--stall-timeout`,
//!   or `expire` closes it with 1008.
//!
//! (The third budget, one read per connection per wake-up, is `READ_BUDGET` in the loop.)

use std::io;
use std::os::fd::RawFd;

use tungstenite::protocol::frame::coding::CloseCode;

use crate::{Conn, Next, Shared, State, frame, handshake, send};

/// The bytes a connection holds and counts against `--max-buffered`, as allocated: a
/// request head that came in pieces, an unfinished frame and message, unsent output.
pub(crate) fn held(conn: &Conn) -> usize {
    let input = match &conn.state {
        State::Handshaking {
            head: Some(head), ..
        } => head.capacity(),
        State::Open {
            partial: Some(partial),
            ..
        } => partial.heap_bytes(),
        _ => 0,
    };
    input + conn.unsent.as_ref().map_or(0, |unsent| unsent.capacity())
}

/// The budgets, after a connection's event, for a connection that held `before` bytes.
///
/// - Memory: if it grew and all connections together now hold more than `--max-buffered`,
///   it is the one closed (see [`refuse`]). Its bytes go back at once, so the loop holds at
///   most the budget plus what one event added.
/// - Time: a connection that holds bytes must finish something (a frame, a message, its
///   pending output) within `--stall-timeout`. Its clock starts when it begins to hold
///   bytes and starts again each time what it holds shrinks; `expire` closes it with 1008
///   if the clock runs out. A client that trickles one byte at a time never finishes
///   anything. (A head in pieces has the handshake timeout instead.)
pub(crate) fn hold_to_budget(
    conn: &mut Conn,
    fd: RawFd,
    before: usize,
    next: Next,
    shared: &mut Shared,
) -> io::Result<Next> {
    let after = held(conn);
    if after > before && shared.held > shared.config.max_buffered {
        return refuse(conn, fd, after, shared);
    }
    if let State::Open { deadline, .. } = &mut conn.state {
        if before == 0 && after > 0 {
            *deadline = shared.stalls.set(fd);
        } else if 0 < after && after < before {
            shared.stalls.restart(fd, deadline);
        }
    }
    Ok(next)
}

/// Close a connection whose bytes (`held`) would take the total past the budget, and give
/// them back at once. We close the one asking for more, not an older connection: the
/// others did nothing wrong. It learns why, as well as its stage allows: during the
/// handshake `503` (the server is busy, not the request wrong), after it a close frame with
/// 1009, "message too big" (to be held here, now).
fn refuse(conn: &mut Conn, fd: RawFd, held_before: usize, shared: &mut Shared) -> io::Result<Next> {
    shared.out.clear();
    match conn.state {
        State::Handshaking { .. } => shared
            .out
            .extend_from_slice(handshake::BUSY_RESPONSE.as_bytes()),
        State::Open { .. } => frame::write_close(Some(CloseCode::Size), b"", &mut shared.out),
        // It said its last word already: what it holds is our last bytes, on their way.
        State::Closing { .. } => return Ok(Next::Continue),
    }
    conn.state = State::Closing {
        deadline: shared.timers.set(fd),
    };
    conn.unsent = None;
    shared.held -= held_before;
    let next = send(conn, &shared.out);
    shared.held += held(conn); // our last bytes, if the kernel did not take them all
    next
}
