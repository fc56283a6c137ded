//! The WebSocket behaviour every step promises, checked against this step's binary with
//! both read-buffer settings the README measures.

use stepcheck::{refusals, ws};

const BIN: &str = env!("CARGO_BIN_EXE_step07-tokio");
/// tungstenite's own default read buffer (128 KiB).
const DEFAULT: &[&str] = &[];
/// A small read buffer, the setting that brings memory per connection down.
const SMALL: &[&str] = &["--read-buffer", "4096"];

/// Text and binary messages come back unchanged, with both read-buffer sizes.
#[test]
fn echoes_a_round_trip() {
    ws::echo_round_trip(BIN, DEFAULT);
    ws::echo_round_trip(BIN, SMALL);
}

/// The same round trip works on tokio's single-threaded runtime.
#[test]
fn echo_round_trip_on_one_thread() {
    ws::echo_round_trip(BIN, &["--runtime", "current-thread"]);
}

/// 200 clients connected at once are all echoed, with both read-buffer sizes.
#[test]
fn echoes_200_concurrent_clients() {
    ws::concurrent_clients_all_echoed(BIN, DEFAULT, 200);
    ws::concurrent_clients_all_echoed(BIN, SMALL, 200);
}

/// A 4 MiB message comes back intact, through partial writes, with both read-buffer sizes.
#[test]
fn echoes_4_mib_intact_through_partial_writes() {
    // Over the default --max-message (1 MiB, as step06's), so the limit is raised.
    ws::large_message_echoed_intact(BIN, &["--max-message", "4194304"], 4 << 20);
    let small_and_large = [SMALL, &["--max-message", "4194304"]].concat();
    ws::large_message_echoed_intact(BIN, &small_and_large, 4 << 20);
}

/// A client that sends without reading neither stalls the others nor grows the server.
#[test]
fn a_client_that_never_reads_stalls_nobody() {
    ws::non_reading_client_does_not_stall_others(BIN, DEFAULT);
    ws::non_reading_client_does_not_stall_others(BIN, SMALL);
}

/// Clients that vanish with a reset leave the server up and serving.
#[test]
fn resets_leave_the_server_serving() {
    ws::resets_leave_the_server_serving(BIN, DEFAULT, 50);
    ws::resets_leave_the_server_serving(BIN, SMALL, 50);
}

/// The memory line reports how many WebSocket connections are open.
#[test]
fn memory_line_counts_connections() {
    ws::memory_line_counts_connections(BIN, DEFAULT, 20);
    ws::memory_line_counts_connections(BIN, SMALL, 20);
}

/// tungstenite's 128 KiB read buffer, allocated up front: an idle connection costs over
/// 64 KiB, held to /proc. Breaks if the default buffer shrinks, or the memory line stops
/// measuring.
#[test]
fn an_idle_connection_costs_over_64_kib_by_default() {
    ws::idle_connection_cost_within(BIN, DEFAULT, 300, 64 << 10..);
}

/// `--read-buffer 4096` brings an idle connection under 16 KiB, held to /proc. Breaks if
/// the option is ignored (the default 128 KiB buffer comes back).
#[test]
fn read_buffer_4096_brings_a_connection_under_16_kib() {
    ws::idle_connection_cost_within(BIN, SMALL, 1000, ..16 << 10);
}

/// At the fd limit the server neither dies nor spins, on either runtime, and serves again after.
#[test]
fn survives_running_out_of_fds() {
    ws::survives_running_out_of_fds(BIN, DEFAULT);
    ws::survives_running_out_of_fds(BIN, &["--runtime", "current-thread"]);
}

/// A message sent in fragments comes back whole, as one message.
#[test]
fn fragmented_message_echoed_whole() {
    ws::fragmented_message_echoed_whole(BIN, DEFAULT);
}

/// A ping is answered with a pong carrying the same payload.
#[test]
fn ping_answered_with_pong() {
    ws::ping_answered_with_pong(BIN, DEFAULT);
}

/// A client's close is answered with a close, then the server hangs up.
#[test]
fn close_handshake_answered() {
    ws::close_handshake_answered(BIN, DEFAULT);
}

/// A message over --max-message (1 MiB by default), in one frame or in fragments, is
/// answered with close code 1009 and never echoed, even to a client that would accept it;
/// the others are served. Breaks if the limit is removed, or if the step hangs up without
/// saying why.
#[test]
fn oversized_message_closed_with_1009() {
    ws::oversized_message_closed_with_1009(BIN, DEFAULT, (1 << 20) + 1, 1);
    ws::oversized_message_closed_with_1009(BIN, DEFAULT, (1 << 20) + 1, 3);
}

/// A request that is not a WebSocket upgrade is refused, and the server keeps serving.
#[test]
fn bad_handshake_refused() {
    ws::bad_handshake_refused(BIN, DEFAULT);
}

/// A client that connects and never finishes its handshake (silent, or a head in
/// pieces that stop) is answered 408 and dropped after `--handshake-timeout`, as step06
/// does, so slow connections cannot pile up.
#[test]
fn slow_client_answered_408_after_handshake_timeout() {
    use std::io::{Read, Write};

    let server = stepcheck::Server::start(BIN, &["--handshake-timeout", "1"]);
    let mut silent = server.connect();
    let mut slow = server.connect();
    slow.write_all(b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\n")
        .unwrap();
    server.wait_for_memory_line(2);
    for client in [&mut silent, &mut slow] {
        // The server answers and hangs up; stepcheck's read timeout bounds the wait.
        let mut answer = Vec::new();
        client
            .read_to_end(&mut answer)
            .expect("the server closes a slow client");
        let answer = String::from_utf8_lossy(&answer);
        assert!(
            answer.starts_with("HTTP/1.1 408 Request Timeout\r\n"),
            "a handshake unfinished past the timeout gets 408, not {answer:?}"
        );
    }
    server.wait_for_memory_line(0);
}

/// stdout closed (`step07-tokio | head -1`): the memory line is lost, the server serves on.
#[test]
fn survives_stdout_closed() {
    ws::survives_stdout_closed(BIN, DEFAULT);
}

/// Every row of stepcheck's table of refusals (each request and frame a step must refuse,
/// with its HTTP status or close code; and the Origin rule) is answered as the table says,
/// and the server serves on. Breaks if this step answers any of them otherwise than step06.
#[test]
fn every_refusal_as_the_table_says() {
    refusals::check_every_refusal(BIN, DEFAULT);
}

/// Request heads in pieces count against `--max-buffered`: those that would pass it get
/// `503`, as in step06; the others are upgraded, and a client already upgraded is served.
#[test]
fn heads_in_pieces_are_held_to_the_budget() {
    ws::heads_in_pieces_are_held_to_the_budget(BIN, DEFAULT);
}

/// stdout a pipe nobody reads: lines are dropped, not waited for; clients are served all
/// along (on one thread too, where a blocked write would stop every task), and the next
/// line that gets through says how many were dropped.
#[test]
fn serves_with_stdout_full() {
    ws::serves_with_stdout_full(BIN, DEFAULT);
    ws::serves_with_stdout_full(BIN, &["--runtime", "current-thread"]);
}

/// stdout and stderr on /dev/full: it starts and serves; no output error is fatal.
#[test]
fn serves_with_output_on_dev_full() {
    ws::serves_with_output_on_dev_full(BIN, DEFAULT);
}

/// `--work-us 5000`: each 64-byte message costs the step about 5 ms of its CPU.
#[test]
fn work_us_costs_what_it_says() {
    stepcheck::work::ws_costs_what_it_says(BIN, DEFAULT);
}

/// `--work-us 5000 --spawn-blocking`: the work moves to tokio's blocking pool, and still
/// costs the step about 5 ms of its CPU per message.
#[test]
fn work_us_costs_what_it_says_on_the_blocking_pool() {
    stepcheck::work::ws_costs_what_it_says(BIN, &["--spawn-blocking"]);
}
