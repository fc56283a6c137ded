//! The behaviour every WebSocket step promises, checked against this step's binary with
//! two workers: the connections of each check are spread over both processes.

use stepcheck::ws;

const BIN: &str = env!("CARGO_BIN_EXE_step08-reuseport");
const TWO: &[&str] = &["--workers", "2"];

/// Text and binary messages come back unchanged, at every frame length encoding.
#[test]
fn echoes_a_round_trip() {
    ws::echo_round_trip(BIN, TWO);
}

/// 200 clients connected at once are all echoed, whichever worker each landed on.
#[test]
fn echoes_200_concurrent_clients() {
    ws::concurrent_clients_all_echoed(BIN, TWO, 200);
}

/// The one memory line counts the connections of both workers.
#[test]
fn memory_line_counts_connections() {
    ws::memory_line_counts_connections(BIN, TWO, 50);
}

/// At the fd limit (each worker's) no worker dies or spins, and all serve again after.
#[test]
fn survives_running_out_of_fds() {
    ws::survives_running_out_of_fds(BIN, TWO);
}

/// A message over the 1 MiB limit closes that connection only: step06's options reach the workers.
#[test]
fn oversized_message_closes_only_that_connection() {
    ws::oversized_message_closes_only_that_connection(BIN, TWO, (1 << 20) + 1);
}

/// A request that is not a WebSocket upgrade is refused, and the server keeps serving.
#[test]
fn bad_handshake_refused() {
    ws::bad_handshake_refused(BIN, TWO);
}
