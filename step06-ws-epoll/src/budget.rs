//! The budgets a connection is held to, so that no client, and no group of clients, makes
//! the server hold more than it is told to. After each event the loop calls
//! [`hold_to_budget`] with what the connection held before, and before each wait it calls
//! [`expire`]:
//!
//! - memory: all connections together hold at most `--max-buffered` bytes (heads in
//!   pieces, unfinished frames and messages, unsent output); the one that would pass it is
//!   closed with 1009 (503 while it handshakes);
//! - time: what a connection holds must be finished within `--stall-timeout` of when it
//!   began to hold it, or `expire` closes it with 1008; a request head must be whole, and a
//!   client must hang up after our close, within `--handshake-timeout` (408 for a head).
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
/// - Time: what an open connection holds (an unfinished frame or message, unsent output)
///   must be finished within `--stall-timeout` of when it began to hold it. The clock
///   starts when the connection goes from holding nothing to holding something, including
///   when it opens with bytes that came behind its head; it stops when the connection holds
///   nothing again, or when a read finishes all it held (`handle_readable`: the read that
///   ends a message and starts the next one held nothing in between). It never moves while
///   the connection holds something: bytes trickled in, a ping or an empty fragment in the
///   middle of a message, are no excuse. `expire` closes it with 1008 when the clock runs
///   out. (A head in pieces has the handshake timeout instead.)
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
        if after == 0 {
            *deadline = None;
        } else if deadline.is_none() {
            *deadline = Some(shared.stall_timers.set(fd));
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
        State::Open { .. } => frame::write_close(Some(CloseCode::Size), &mut shared.out),
        // It said its last word already: what it holds is our last bytes, on their way
        // (and the closing deadline bounds how long they may take).
        State::Closing { .. } => return Ok(next),
    }
    conn.state = State::Closing {
        deadline: shared.handshake_timers.set(fd),
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
    // connection's deadline sits in one queue: `stall_timers` while open, `handshake_timers`
    // otherwise. It was set in that queue when the connection entered its state (or, open,
    // began to hold bytes), never carried over from the other: so keeping the live
    // deadlines of the queue's own states drops none.
    for (timers, for_open) in [
        (&mut shared.handshake_timers, false),
        (&mut shared.stall_timers, true),
    ] {
        if timers.is_mostly_stale(*open) {
            timers.rebuild(connections.iter().enumerate().filter_map(|(fd, conn)| {
                let conn = conn.as_ref()?;
                let live = current_deadline(conn)?;
                (matches!(conn.state, State::Open { .. }) == for_open)
                    .then_some((live, fd as RawFd))
            }));
        }
    }

    let now = shared.handshake_timers.now();
    while let Some(fd) = shared
        .handshake_timers
        .pop_due(now)
        .or_else(|| shared.stall_timers.pop_due(now))
    {
        // Many entries are stale: the connection finished its head or what it held long
        // ago, or closed and its fd now belongs to a newer connection (whose own deadline
        // is later). Only a connection whose own deadline has passed is closed.
        let Some(Some(conn)) = connections.get_mut(fd as usize) else {
            continue;
        };
        if current_deadline(conn).is_none_or(|deadline| deadline.get() > now) {
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
                frame::write_close(Some(CloseCode::Policy), &mut shared.out);
                let _ = conn.stream.write(&shared.out);
            }
            State::Open { .. } | State::Closing { .. } => {}
        }
        close(epoll, connections, open, &mut shared.held, fd);
    }
}

/// The deadline a connection is held to right now, if any: an open connection has one
/// while it holds bytes (see [`hold_to_budget`]).
fn current_deadline(conn: &Conn) -> Option<Deadline> {
    match conn.state {
        State::Handshaking { deadline, .. } | State::Closing { deadline } => Some(deadline),
        State::Open { deadline, .. } => deadline,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Config;
    use crate::timer::Timers;
    use std::net::{TcpListener, TcpStream};
    use std::os::fd::AsRawFd;

    /// The loop's shared state with a budget of `max_buffered` bytes.
    fn shared_with_budget(max_buffered: usize) -> Shared {
        let config = Config {
            max_buffered,
            ..Config::default()
        };
        let handshake_timers = Timers::new(config.handshake_timeout);
        Shared {
            buf: Vec::new(),
            out: Vec::new(),
            stall_timers: handshake_timers.with_timeout(config.stall_timeout),
            handshake_timers,
            held: 0,
            config,
        }
    }

    /// A connection that turns to closing in the event that takes the total past the
    /// budget keeps sending its last bytes: the loop is told to wait for writability, as
    /// the handler said. Breaks if `refuse` answers `Continue` for a closing connection
    /// (its close frame then sits unsent until the closing deadline).
    #[test]
    fn a_closing_connection_over_budget_still_sends_its_last_bytes() {
        let mut shared = shared_with_budget(1);
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let stream = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let deadline = shared.handshake_timers.set(3);
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

    /// A connection that opens already holding bytes (its head came in pieces, the last
    /// piece with the start of a frame) gets a stall deadline of its own, in `stall_timers`:
    /// the rebuild of `handshake_timers` that connect/close churn brings, dropping its old handshake
    /// deadline, loses nothing. Breaks if the clock starts only for a connection that held
    /// nothing before the event (its head counted as something): it is then held for ever.
    #[test]
    fn a_connection_that_opens_holding_bytes_keeps_a_deadline_through_a_rebuild() {
        let mut shared = shared_with_budget(64 << 20);
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let stream = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let fd = stream.as_raw_fd();
        // 100 bytes of a frame announcing 4 096, behind the end of the head.
        let start = [&[0x82, 0x80 | 126, 0x10, 0x00, 1, 2, 3, 4][..], &[0; 100]].concat();
        let mut partial = None;
        frame::decode(&mut partial, &start, 1 << 20, &mut shared.out);
        let mut conn = Conn {
            stream,
            state: State::Open {
                partial,
                deadline: None,
            },
            unsent: None,
        };
        shared.held = held(&conn);
        let first_piece_of_the_head = 20;
        hold_to_budget(
            &mut conn,
            fd,
            first_piece_of_the_head,
            Next::Continue,
            &mut shared,
        )
        .unwrap();

        let mut connections: Vec<Option<Conn>> = (0..=fd).map(|_| None).collect();
        connections[fd as usize] = Some(conn);
        // Handshakes that came and went: stale entries enough for `handshake_timers` to be rebuilt.
        (0..100).for_each(|_| _ = shared.handshake_timers.set(fd + 1));
        let epoll = Epoll::new().unwrap();
        expire(&mut shared, &epoll, &mut connections, &mut 1);
        assert!(
            shared.stall_timers.time_left().is_some(),
            "an open connection holding bytes has no stall deadline"
        );
    }
}
