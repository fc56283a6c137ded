//! `--loop io-uring`: step09's loop in every worker. The behaviour every WebSocket step
//! promises, with two io_uring workers; and where io_uring is refused, one line that says
//! so, before any worker starts. (The thousand connections over eight io_uring workers are
//! in `workers.rs`, beside the epoll ones.) Skipped, saying why, where io_uring is refused;
//! failed under CI.

mod support;

use stepcheck::ws;

const BIN: &str = env!("CARGO_BIN_EXE_step08-reuseport");
const TWO: &[&str] = &["--workers", "2", "--loop", "io-uring"];

/// Text and binary messages come back unchanged, at every frame length encoding.
#[test]
fn echoes_a_round_trip() {
    if support::io_uring_available() {
        ws::echo_round_trip(BIN, TWO);
    }
}

/// 200 clients connected at once are all echoed, whichever worker each landed on.
#[test]
fn echoes_200_concurrent_clients() {
    if support::io_uring_available() {
        ws::concurrent_clients_all_echoed(BIN, TWO, 200);
    }
}

/// The one memory line counts the connections of both workers.
#[test]
fn memory_line_counts_connections() {
    if support::io_uring_available() {
        ws::memory_line_counts_connections(BIN, TWO, 50);
    }
}

/// `--work-us 5000` reaches io_uring workers too: each 64-byte message costs the step
/// about 5 ms of its workers' CPU.
#[test]
fn work_us_costs_what_it_says() {
    if support::io_uring_available() {
        stepcheck::work::ws_costs_what_it_says(BIN, TWO);
    }
}

/// A message over the 1 MiB limit closes that connection only, with 1009: step06's
/// budgets hold on step09's loop too.
#[test]
fn oversized_message_closed_with_1009() {
    if support::io_uring_available() {
        ws::oversized_message_closed_with_1009(BIN, TWO, (1 << 20) + 1, 3);
    }
}

/// A request that is not a WebSocket upgrade is refused, and the server keeps serving.
#[test]
fn bad_handshake_refused() {
    if support::io_uring_available() {
        ws::bad_handshake_refused(BIN, TWO);
    }
}

/// Every malformed or hostile upgrade and frame of the refusal table gets its status or
/// close code on io_uring workers too, and the workers keep serving.
#[test]
fn every_refusal_as_the_table_says() {
    if support::io_uring_available() {
        stepcheck::refusals::check_every_refusal(BIN, TWO);
    }
}

/// The stall clock on io_uring workers: a head in two pieces bringing half a frame, under
/// connect/close churn, is closed with 1008.
#[test]
fn head_in_pieces_with_a_partial_frame_is_closed() {
    if support::io_uring_available() {
        stepcheck::stall::head_in_pieces_with_a_partial_frame_is_closed(BIN, TWO);
    }
}

/// A message kept open with empty fragments and pings, each in two pieces: closed with 1008.
#[test]
fn message_kept_open_with_tiny_frames_is_closed() {
    if support::io_uring_available() {
        stepcheck::stall::message_kept_open_with_tiny_frames_is_closed(BIN, TWO);
    }
}

/// A frame announcing 1 MiB, then a byte at a time: closed with 1008.
#[test]
fn trickled_frame_is_closed() {
    if support::io_uring_available() {
        stepcheck::stall::trickled_frame_is_closed(BIN, TWO);
    }
}

/// Where io_uring is refused (here by a seccomp filter, as container runtimes install),
/// the supervisor says so in one line, as step09 does, and exits before it starts a worker
/// or listens: a worker that could not start would be restarted for ever.
#[test]
fn without_io_uring_it_says_so_in_one_line_and_exits() {
    stepcheck::seccomp::check_refused_in_one_line(
        BIN,
        &[
            "--addr",
            "127.0.0.1:0",
            "--workers",
            "2",
            "--loop",
            "io-uring",
        ],
        "step08-reuseport: io_uring is not available: io_uring_setup is refused (a seccomp \
         filter: container runtimes block it by default); check with `grep Seccomp \
         /proc/self/status` (2 means filtered)",
    );
}
