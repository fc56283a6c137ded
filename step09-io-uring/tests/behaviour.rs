//! The behaviour every WebSocket step promises, checked against this step's binary.
//!
//! Where io_uring is not available (an old kernel, `kernel.io_uring_disabled`, a seccomp
//! filter), each test says why and passes without running, except under CI, where it
//! fails (see `support/mod.rs`).

mod support;

use stepcheck::{refusals, ws};
use support::available;

const BIN: &str = env!("CARGO_BIN_EXE_step09-io-uring");

macro_rules! checks {
    ($($(#[$doc:meta])* $name:ident => $check:expr;)*) => {
        $($(#[$doc])* #[test] fn $name() { if available() { $check; } })*
    };
}

checks! {
    /// Text and binary messages come back unchanged, at every frame length encoding.
    echoes_a_round_trip => ws::echo_round_trip(BIN, &[]);
    /// 200 clients connected at once are all echoed.
    echoes_200_concurrent_clients => ws::concurrent_clients_all_echoed(BIN, &[], 200);
    /// A 1 MiB message comes back intact, through many receives and partial sends.
    echoes_1_mib_intact_through_partial_writes => ws::large_message_echoed_intact(BIN, &[], 1 << 20);
    /// A client that sends without reading neither stalls the others nor grows the server.
    a_client_that_never_reads_stalls_nobody => ws::non_reading_client_does_not_stall_others(BIN, &[]);
    /// Clients that vanish with a reset leave the server up and serving.
    resets_leave_the_server_serving => ws::resets_leave_the_server_serving(BIN, &[], 50);
    /// The memory line reports how many WebSocket connections are open.
    memory_line_counts_connections => ws::memory_line_counts_connections(BIN, &[], 50);
    /// At the fd limit the server neither dies nor spins, and serves again after.
    survives_running_out_of_fds => ws::survives_running_out_of_fds(BIN, &[]);
    /// A message sent in fragments comes back whole, as one message.
    fragmented_message_echoed_whole => ws::fragmented_message_echoed_whole(BIN, &[]);
    /// A ping is answered with a pong carrying the same payload.
    ping_answered_with_pong => ws::ping_answered_with_pong(BIN, &[]);
    /// A client's close is answered with a close, then the server hangs up.
    close_handshake_answered => ws::close_handshake_answered(BIN, &[]);
    /// A message over the 1 MiB limit, in one frame or in fragments, is closed with 1009 and
    /// never echoed; the others are served.
    oversized_message_closed_with_1009 => {
        ws::oversized_message_closed_with_1009(BIN, &[], (1 << 20) + 1, 1);
        ws::oversized_message_closed_with_1009(BIN, &[], (1 << 20) + 1, 3)
    };
    /// A request that is not a WebSocket upgrade is refused, and the server keeps serving.
    bad_handshake_refused => ws::bad_handshake_refused(BIN, &[]);
    /// No buffer of its own while idle (the ring's buffers are the kernel's to pick): an
    /// idle WebSocket connection costs under 128 B, held to /proc.
    an_idle_connection_costs_under_128_bytes => ws::idle_connection_cost_within(BIN, &[], 2000, ..128);
    /// A client flooding pings does not starve a fresh one.
    a_ping_flood_does_not_starve_a_fresh_client => ws::ping_flood_does_not_starve_a_fresh_client(BIN, &[]);
    /// stdout closed (`step09-io-uring | head -1`): the memory line is lost, the server serves on.
    survives_stdout_closed => ws::survives_stdout_closed(BIN, &[]);
    /// Every row of stepcheck's table of refusals (each request and frame a step must
    /// refuse, with its status or close code; and the Origin rule) is answered as the table
    /// says, and the server serves on.
    every_refusal_as_the_table_says => refusals::check_every_refusal(BIN, &[]);
    /// stdout a pipe nobody reads: lines are dropped, not waited for; clients are served
    /// all along, and the next line that gets through says how many were dropped.
    serves_with_stdout_full => ws::serves_with_stdout_full(BIN, &[]);
    /// stdout and stderr on /dev/full: it starts and serves; no output error is fatal.
    serves_with_output_on_dev_full => ws::serves_with_output_on_dev_full(BIN, &[]);
    /// `--work-us 5000`: each 64-byte message costs the step about 5 ms of its CPU.
    work_us_costs_what_it_says => stepcheck::work::ws_costs_what_it_says(BIN, &[]);
}
