//! The budgets a connection is held to, so that no client, and no group of clients, makes
//! the server hold more than it is told to. After each event the loop calls
//! [`hold_to_budget`] with what the connection held before, and before each wait it calls
//! [`expire`]:
//!
//! - memory: all connections together hold at most `--max-buffered` bytes (heads in
//!   pieces, unfinished frames and messages, unsent output); the one that would pass it is
//!   closed with 1009 (503 while it handshakes);
//! - time: a connection that holds bytes must finish something within `--stall-timeout`,
//!   or `expire` closes it with 1008; a request head must be whole, and a client must hang
//!   up after our close, within `--handshake-timeout` (408 for a head).
//!
//! (The third budget, one read per connection per wake-up, is `READ_BUDGET` in the loop.)

use std::io::{self, Write};
use std::os::fd::RawFd;

use tungstenite::protocol::frame::coding::CloseCode;

use crate::epoll::Epoll;
use crate::timer::Deadline;
use crate::{Conn, Next, Shared, State, close, frame, handshake, send};

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
        return refuse(conn, fd, after, next, shared);
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
fn refuse(
    conn: &mut Conn,
    fd: RawFd,
    held_before: usize,
    next: Next,
    shared: &mut Shared,
) -> io::Result<Next> {
    shared.out.clear();
    match conn.state {
        State::Handshaking { .. } => shared
            .out
            .extend_from_slice(handshake::BUSY_RESPONSE.as_bytes()),
        State::Open { .. } => frame::write_close(Some(CloseCode::Size), b"", &mut shared.out),
        // It said its last word already: what it holds is our last bytes, on their way
        // (and the closing deadline bounds how long they may take).
        State::Closing { .. } => return Ok(next),
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

/// Close the connections whose deadline has passed: clients that never finished their
/// request head (slowloris), held bytes without finishing anything, or never hung up after
/// our close.
pub(crate) fn expire(
    shared: &mut Shared,
    epoll: &Epoll,
    connections: &mut [Option<Conn>],
    open: &mut usize,
) {
    // Under connect/close churn most deadlines go stale long before they are due. A
    // connection's deadline sits in one queue: `stalls` while open, `timers` otherwise.
    for (timers, stalls) in [(&mut shared.timers, false), (&mut shared.stalls, true)] {
        if timers.is_mostly_stale(*open) {
            timers.rebuild(connections.iter().enumerate().filter_map(|(fd, conn)| {
                let conn = conn.as_ref()?;
                let live = current_deadline(conn)?;
                (matches!(conn.state, State::Open { .. }) == stalls).then_some((live, fd as RawFd))
            }));
        }
    }

    let now = shared.timers.now();
    while let Some(fd) = shared
        .timers
        .pop_due(now)
        .or_else(|| shared.stalls.pop_due(now))
    {
        // Many entries are stale: the connection finished its head or what it held long
        // ago, or closed and its fd now belongs to a newer connection (whose own deadline
        // is later). Only a connection whose own deadline has passed is closed.
        let Some(Some(conn)) = connections.get_mut(fd as usize) else {
            continue;
        };
        if current_deadline(conn).is_none_or(|deadline| deadline > now) {
            continue;
        }
        // Best effort: a slow client should learn why it is cut off.
        match conn.state {
            State::Handshaking { .. } => {
                let _ = conn.stream.write(handshake::TIMEOUT_RESPONSE.as_bytes());
            }
            // 1008, "policy violation": it is not too big, it is too slow. (If our output
            // is what it does not take, a close frame could not get past it anyway.)
            State::Open { .. } if conn.unsent.is_none() => {
                shared.out.clear();
                frame::write_close(Some(CloseCode::Policy), b"", &mut shared.out);
                let _ = conn.stream.write(&shared.out);
            }
            State::Open { .. } | State::Closing { .. } => {}
        }
        close(epoll, connections, open, &mut shared.held, fd);
    }
}

/// The deadline a connection is held to right now, if any.
fn current_deadline(conn: &Conn) -> Option<Deadline> {
    match conn.state {
        State::Handshaking { deadline, .. } | State::Closing { deadline } => Some(deadline),
        State::Open { deadline, .. } if held(conn) > 0 => Some(deadline),
        State::Open { .. } => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Config;
    use crate::timer::Timers;
    use std::net::{TcpListener, TcpStream};

    /// A connection that turns to closing in the event that takes the total past the
    /// budget keeps sending its last bytes: the loop is told to wait for writability, as
    /// the handler said. Breaks if `refuse` answers `Continue` for a closing connection
    /// (its close frame then sits unsent until the closing deadline).
    #[test]
    fn a_closing_connection_over_budget_still_sends_its_last_bytes() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let stream = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let config = Config {
            max_buffered: 1,
            ..Config::default()
        };
        let timers = Timers::new(config.timeout);
        let mut shared = Shared {
            buf: Vec::new(),
            out: Vec::new(),
            stalls: timers.with_timeout(config.stall_timeout),
            timers,
            held: 0,
            config,
        };
        let deadline = shared.timers.set(3);
        let mut conn = Conn {
            stream,
            state: State::Closing { deadline },
            unsent: Some(Box::new(vec![0x88; 4096])),
        };
        shared.held = held(&conn);

        let next = hold_to_budget(&mut conn, 3, 0, Next::WaitWritable, &mut shared).unwrap();
        assert!(
            matches!(next, Next::WaitWritable),
            "a closing connection over the budget stopped waiting to write its last bytes"
        );
        assert!(conn.unsent.is_some(), "its last bytes were dropped");
    }
}
