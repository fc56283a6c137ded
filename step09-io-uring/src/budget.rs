//! The budgets a connection is held to, so that no client, and no group of clients, makes
//! the server hold more than it is told to. After each completion the loop calls
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
//! (The third, fairness, needs no budget here: a completion carries one ring buffer at most.)

use std::io;
use std::os::fd::{AsRawFd, RawFd};
use std::time::Duration;

use tungstenite::protocol::frame::coding::CloseCode;

use crate::{Conn, Connections, Deadline, Next, Shared, State, close, frame, handshake, send};

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

/// The budgets, after a connection's event, for a connection that held `before` bytes;
/// `held_in_all` is what all connections hold, this one's bytes now included.
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
    before: usize,
    next: Next,
    held_in_all: &mut usize,
    shared: &mut Shared,
) -> io::Result<Next> {
    let after = held(conn);
    if after > before && *held_in_all > shared.config.max_buffered {
        *held_in_all -= after;
        let next = refuse(conn, next, shared);
        *held_in_all += held(conn); // our last bytes, if the kernel did not take them all
        return next;
    }
    if let State::Open { deadline, .. } = &mut conn.state {
        if after == 0 {
            *deadline = None;
        } else if deadline.is_none() {
            *deadline = Some(shared.stall_timers.set(conn.stream.as_raw_fd()));
        }
    }
    Ok(next)
}

/// Close a connection whose bytes would take the total past the budget, and give them back
/// at once. We close the one asking for more, not an older connection: the
/// others did nothing wrong. It learns why, as well as its stage allows: during the
/// handshake `503` (the server is busy, not the request wrong), after it a close frame with
/// 1009, "message too big" (to be held here, now).
fn refuse(conn: &mut Conn, next: Next, shared: &mut Shared) -> io::Result<Next> {
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
    let fd = conn.stream.as_raw_fd();
    conn.state = State::Closing {
        deadline: shared.handshake_timers.set(fd),
    };
    // Drop the replies waiting to be sent; a send in flight is the kernel's till it is done.
    if let Some(unsent) = &mut conn.unsent {
        unsent.queued = Vec::new();
    }
    send(conn, fd, &shared.out, &mut shared.ring)
}

/// Close the connections whose deadline has passed: clients that never finished their
/// request head (slowloris), held bytes without finishing anything, or never hung up after
/// our close.
pub(crate) fn expire(shared: &mut Shared, connections: &mut Connections) {
    // Under connect/close churn most deadlines go stale long before they are due. A
    // connection's deadline sits in one queue: `stall_timers` while open, `handshake_timers`
    // otherwise. It was set in that queue when the connection entered its state (or, open,
    // began to hold bytes), never carried over from the other: so keeping the live
    // deadlines of the queue's own states drops none.
    for (timers, for_open) in [
        (&mut shared.handshake_timers, false),
        (&mut shared.stall_timers, true),
    ] {
        if timers.is_mostly_stale(connections.open) {
            let slots = connections.slots.iter().enumerate();
            timers.rebuild(slots.filter_map(|(fd, conn)| {
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
        let Some(conn) = connections.get_mut(fd) else {
            continue;
        };
        if current_deadline(conn).is_none_or(|deadline| deadline.get() > now) {
            continue;
        }
        // Best effort: a slow client should learn why it is cut off. (A try, which the
        // kernel makes before the cancel that `close` asks for.)
        match conn.state {
            State::Handshaking { .. } => {
                let bytes = handshake::TIMEOUT_RESPONSE.as_bytes();
                let _ = send(conn, fd, bytes, &mut shared.ring);
            }
            // 1008, "policy violation": it is not too big, it is too slow. (If our output
            // is what it does not take, a close frame could not get past it anyway.)
            State::Open { .. } if conn.unsent.is_none() => {
                shared.out.clear();
                frame::write_close(Some(CloseCode::Policy), &mut shared.out);
                let _ = send(conn, fd, &shared.out, &mut shared.ring);
            }
            State::Open { .. } | State::Closing { .. } => {}
        }
        close(shared, connections, fd);
    }
}

/// How long until the earliest deadline in either queue (`Duration::MAX` if none): the
/// most the loop may sleep before `expire` has work to do.
pub(crate) fn time_left(shared: &Shared) -> Duration {
    let queues = [&shared.handshake_timers, &shared.stall_timers];
    let earliest = queues.iter().filter_map(|timers| timers.time_left()).min();
    earliest.unwrap_or(Duration::MAX)
}

/// The deadline a connection is held to right now, if any: an open connection has one
/// while it holds bytes (see [`hold_to_budget`]).
fn current_deadline(conn: &Conn) -> Option<Deadline> {
    match conn.state {
        State::Handshaking { deadline, .. } | State::Closing { deadline } => Some(deadline),
        State::Open { deadline, .. } => deadline,
    }
}

// Here, not in `tests/`: what a refused connection still holds, with a send in the kernel,
// is counted in the loop's private total, which no client sees but as a budget that drifts.
// (`tests/over_budget.rs` catches a total that loses those bytes: the step panics.)
#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Config, Timers, Unsent};
    use std::collections::HashMap;
    use std::net::{TcpListener, TcpStream};

    /// The loop's shared state with a budget of `max_buffered` bytes; `None`, saying why,
    /// where io_uring is not available (but not under CI, whose kernel has it).
    fn shared_with_budget(max_buffered: usize) -> Option<Shared> {
        let uring = match crate::setup(1, 64) {
            Ok(uring) => uring,
            Err(unavailable) if std::env::var_os("CI").is_some() => panic!("{unavailable}"),
            Err(unavailable) => {
                eprintln!("skipped: {unavailable}");
                return None;
            }
        };
        let config = Config {
            max_buffered,
            ..Config::default()
        };
        let handshake_timers = Timers::new(config.handshake_timeout);
        Some(Shared {
            ring: uring.ring,
            bufs: uring.bufs,
            closing: HashMap::new(),
            out: Vec::new(),
            stall_timers: handshake_timers.with_timeout(config.stall_timeout),
            handshake_timers,
            config,
        })
    }

    /// An open connection that takes the total past the budget is refused: the replies
    /// queued behind its send in flight are dropped, a close frame queued instead, and the
    /// total counts exactly what it holds now. Breaks if `refuse` counts its last bytes
    /// twice (or not at all), or drops the bytes the kernel is sending.
    #[test]
    fn a_refused_connection_is_counted_once() {
        let Some(mut shared) = shared_with_budget(1) else {
            return;
        };
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let stream = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        // A send waits in the kernel (the client reads slowly); 4 KiB of replies queue behind.
        let mut conn = Conn {
            stream,
            state: State::Open {
                partial: None,
                deadline: None,
            },
            unsent: Some(Box::new(Unsent {
                sending: vec![0x82; 1000],
                queued: vec![0x82; 4096],
                in_flight: true,
                waiting: true,
            })),
            reading: false,
            cancelling: false,
        };

        let mut held_in_all = held(&conn);
        let next = hold_to_budget(
            &mut conn,
            0,
            Next::WaitWritable,
            &mut held_in_all,
            &mut shared,
        );
        next.unwrap();
        assert!(matches!(conn.state, State::Closing { .. }), "not refused");
        let unsent = conn.unsent.as_ref().expect("its output was dropped");
        assert_eq!(
            unsent.sending.len(),
            1000,
            "the bytes in the kernel were touched"
        );
        assert_eq!(
            unsent.queued,
            [0x88, 0x02, 0x03, 0xf1],
            "not a close frame, 1009"
        );
        assert_eq!(
            held_in_all,
            held(&conn),
            "the total does not count what it holds"
        );
    }
}
