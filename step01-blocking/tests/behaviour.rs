//! The behaviour every step promises, checked against this step's binary. A blocking server
//! serves one client at a time, so the checks that need many clients at once are not here:
//! `second_client_waits_for_the_first` pins exactly that limit instead.

use stepcheck::tcp;

const BIN: &str = env!("CARGO_BIN_EXE_step01-blocking");

/// One client's bytes come back unchanged.
#[test]
fn echoes_a_round_trip() {
    tcp::echo_round_trip(BIN);
}

/// A second client is answered only after the first closes: one at a time.
#[test]
fn a_second_client_is_answered_only_after_the_first_closes() {
    tcp::second_client_waits_for_the_first(BIN);
}

/// A 4 MiB message comes back intact.
#[test]
fn echoes_4_mib_intact() {
    tcp::large_message_echoed_intact(BIN, 4 << 20);
}

/// Clients that vanish with a reset leave the server up and serving.
#[test]
fn resets_leave_the_server_serving() {
    tcp::resets_leave_the_server_serving(BIN, 50);
}

/// The memory line reports the one connection being served.
#[test]
fn memory_line_counts_the_one_connection() {
    tcp::memory_line_counts_connections(BIN, 1);
}

/// stdout a pipe nobody reads: lines are dropped, not waited for; clients are served all
/// along, and the next line that gets through says how many were dropped.
#[test]
fn serves_with_stdout_full() {
    tcp::serves_with_stdout_full(BIN);
}

/// stdout and stderr on /dev/full: it starts and serves; no output error is fatal.
#[test]
fn serves_with_output_on_dev_full() {
    tcp::serves_with_output_on_dev_full(BIN);
}

/// `--work-us 5000`: each 64-byte message costs the step about 5 ms of its CPU.
#[test]
fn work_us_costs_what_it_says() {
    stepcheck::work::tcp_costs_what_it_says(BIN);
}
