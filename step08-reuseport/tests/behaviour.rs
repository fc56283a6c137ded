//! The behaviour every WebSocket step promises, checked against this step's binary with
//! two workers: the connections of each check are spread over both processes.

use stepcheck::{refusals, ws};

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

/// A message over the 1 MiB limit closes that connection only, with 1009.
#[test]
fn oversized_message_closed_with_1009() {
    ws::oversized_message_closed_with_1009(BIN, TWO, (1 << 20) + 1, 3);
}

/// step06's options reach every worker: a lower --max-message is what each one applies.
#[test]
fn step06_options_reach_the_workers() {
    let options = &["--workers", "2", "--max-message", "1000"];
    ws::oversized_message_closed_with_1009(BIN, options, 1001, 1);
}

/// A memory line that meets a closed stdout does not take the server down.
#[test]
fn survives_stdout_closed() {
    ws::survives_stdout_closed(BIN, TWO);
}

/// A request that is not a WebSocket upgrade is refused, and the server keeps serving.
#[test]
fn bad_handshake_refused() {
    ws::bad_handshake_refused(BIN, TWO);
}

/// 2 000 idle connections over two workers cost what they cost step06: under 128 B each,
/// the line held to the workers' resident sets in /proc.
#[test]
fn idle_connection_cost_within_step06s_band() {
    ws::idle_connection_cost_within(BIN, TWO, 2000, ..128);
}

/// Every row of stepcheck's table of refusals (each request and frame a step must refuse,
/// with its HTTP status or close code; and the Origin rule) is answered as the table says,
/// and the server serves on. Breaks if this step answers any of them otherwise than step06.
#[test]
fn every_refusal_as_the_table_says() {
    refusals::check_every_refusal(BIN, TWO);
}

/// The supervisor's stdout a pipe nobody reads: its lines are dropped, not waited for, and
/// the next line that gets through says how many were dropped.
#[test]
fn serves_with_stdout_full() {
    ws::serves_with_stdout_full(BIN, TWO);
}

/// stdout and stderr on /dev/full: it starts and serves; no output error is fatal.
#[test]
fn serves_with_output_on_dev_full() {
    ws::serves_with_output_on_dev_full(BIN, TWO);
}

/// `--work-us 5000`: each 64-byte message costs the step about 5 ms of its CPU.
#[test]
fn work_us_costs_what_it_says() {
    stepcheck::work::ws_costs_what_it_says(BIN, TWO);
}
