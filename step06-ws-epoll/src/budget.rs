//! The budgets a connection is held to, so that no client, and no group of clients, makes
//! the server hold more than it is told to. After each event the loop calls
//! [`hold_to_budget`] with what the connection held before:
//!
//! - memory: all connections together hold at most `--max-buffered` bytes (unfinished
//!   frames and messages, unsent output); the one that would pass it is closed with 1009;
//! - time: a connection that holds bytes must finish something within `--stall-timeout`,
//!   or `expire` closes it with 1008.
//!
//! (The third budget, one read per connection per wake-up, is `READ_BUDGET` in the loop.)

use std::io;
use std::os::fd::RawFd;

use tungstenite::protocol::frame::coding::CloseCode;

use crate::{Conn, Next, Shared, State, frame, send};

/// The bytes a connection holds and counts against `--max-buffered`: its unfinished frame
/// and message, and its unsent output, as allocated. (A request head in pieces is not
/// counted: `handshake::MAX_HEAD` bounds it, and the handshake timeout ends it.)
pub(crate) fn held(conn: &Conn) -> usize {
    let partial = match &conn.state {
        State::Open {
            partial: Some(partial),
            ..
        } => partial.heap_bytes(),
        _ => 0,
    };
    partial + conn.unsent.as_ref().map_or(0, |unsent| unsent.capacity())
}

/// The budgets, after a connection's event, for a connection that held `before` bytes.
///
/// - Memory: if it grew and all connections together now hold more than `--max-buffered`,
///   it is the one closed: 1009, "message too big" (to be held here, now). Its bytes go
///   back at once, so the loop holds at most the budget plus what one event added.
/// - Time: a connection that holds bytes must finish something (a frame, a message, its
///   pending output) within `--stall-timeout`. Its clock starts when it begins to hold bytes and
///   starts again each time what it holds shrinks; `expire` closes it with 1008 if the
///   clock runs out. A client that trickles one byte at a time never finishes anything.
pub(crate) fn hold_to_budget(
    conn: &mut Conn,
    fd: RawFd,
    before: usize,
    next: Next,
    shared: &mut Shared,
) -> io::Result<Next> {
    let after = held(conn);
    let State::Open { deadline, .. } = &mut conn.state else {
        return Ok(next);
    };
    if after > before && shared.held > shared.config.max_buffered {
        conn.state = State::Closing {
            deadline: shared.timers.set(fd),
        };
        conn.unsent = None;
        shared.held -= after;
        shared.out.clear();
        frame::write_close(Some(CloseCode::Size), b"", &mut shared.out);
        let next = send(conn, &shared.out);
        shared.held += held(conn); // the close frame, if the kernel did not take it all
        return next;
    }
    if before == 0 && after > 0 {
        *deadline = shared.stalls.set(fd);
    } else if 0 < after && after < before {
        shared.stalls.restart(fd, deadline);
    }
    Ok(next)
}
