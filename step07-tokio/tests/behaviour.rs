//! The WebSocket behaviour every step promises, checked against this step's binary with
//! both read-buffer settings the README measures.

use stepcheck::ws;

const BIN: &str = env!("CARGO_BIN_EXE_step07-tokio");
/// tungstenite's own default read buffer (128 KiB).
const DEFAULT: &[&str] = &[];
/// A small read buffer, the setting that brings memory per connection down.
const SMALL: &[&str] = &["--read-buffer", "4096"];

#[test]
fn echo_round_trip() {
    ws::echo_round_trip(BIN, DEFAULT);
    ws::echo_round_trip(BIN, SMALL);
}

#[test]
fn echo_round_trip_on_one_thread() {
    ws::echo_round_trip(BIN, &["--runtime", "current-thread"]);
}

#[test]
fn concurrent_clients_all_echoed() {
    ws::concurrent_clients_all_echoed(BIN, DEFAULT, 200);
    ws::concurrent_clients_all_echoed(BIN, SMALL, 200);
}

#[test]
fn large_message_echoed_intact() {
    // Under tungstenite's own limits (64 MiB a message, 16 MiB a frame), no flag needed.
    ws::large_message_echoed_intact(BIN, DEFAULT, 4 << 20);
    ws::large_message_echoed_intact(BIN, SMALL, 4 << 20);
}

#[test]
fn non_reading_client_does_not_stall_others() {
    ws::non_reading_client_does_not_stall_others(BIN, DEFAULT);
    ws::non_reading_client_does_not_stall_others(BIN, SMALL);
}

#[test]
fn resets_leave_the_server_serving() {
    ws::resets_leave_the_server_serving(BIN, DEFAULT, 50);
    ws::resets_leave_the_server_serving(BIN, SMALL, 50);
}

#[test]
fn memory_line_counts_connections() {
    ws::memory_line_counts_connections(BIN, DEFAULT, 20);
    ws::memory_line_counts_connections(BIN, SMALL, 20);
}

#[test]
fn survives_running_out_of_fds() {
    ws::survives_running_out_of_fds(BIN, DEFAULT);
    ws::survives_running_out_of_fds(BIN, &["--runtime", "current-thread"]);
}

#[test]
fn fragmented_message_echoed_whole() {
    ws::fragmented_message_echoed_whole(BIN, DEFAULT);
}

#[test]
fn ping_answered_with_pong() {
    ws::ping_answered_with_pong(BIN, DEFAULT);
}

#[test]
fn close_handshake_answered() {
    ws::close_handshake_answered(BIN, DEFAULT);
}

#[test]
fn oversized_message_closes_only_that_connection() {
    // tungstenite refuses a frame over 16 MiB as soon as it has read its header.
    ws::oversized_message_closes_only_that_connection(BIN, DEFAULT, (16 << 20) + 1);
}

#[test]
fn bad_handshake_refused() {
    ws::bad_handshake_refused(BIN, DEFAULT);
}

/// A client that connects and never sends its handshake is dropped after
/// `--handshake-timeout`, so silent connections cannot pile up.
#[test]
fn silent_client_dropped_after_handshake_timeout() {
    use std::io::Read;

    let server = stepcheck::Server::start(BIN, &["--handshake-timeout", "1"]);
    let mut silent = server.connect();
    server.wait_for_memory_line(1);
    // The server hangs up: our read sees end-of-stream (or a reset), well within PATIENCE.
    let mut buf = [0u8; 1];
    match silent.read(&mut buf) {
        Ok(0) => {}
        Ok(_) => panic!("the server sent bytes to a client that never sent a request"),
        Err(err) if err.kind() == std::io::ErrorKind::ConnectionReset => {}
        Err(err) => panic!("the silent client was not dropped: {err}"),
    }
    server.wait_for_memory_line(0);
}
