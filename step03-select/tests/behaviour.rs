//! The behaviour every step promises, checked against this step's binary.

use stepcheck::tcp;

const BIN: &str = env!("CARGO_BIN_EXE_step03-select");

/// One client's bytes come back unchanged.
#[test]
fn echoes_a_round_trip() {
    tcp::echo_round_trip(BIN);
}

/// 200 clients connected at once are all echoed.
#[test]
fn echoes_200_concurrent_clients() {
    tcp::concurrent_clients_all_echoed(BIN, 200);
}

/// A 4 MiB message comes back intact, through partial writes.
#[test]
fn echoes_4_mib_intact_through_partial_writes() {
    tcp::large_message_echoed_intact(BIN, 4 << 20);
}

/// A client that sends without reading neither stalls the others nor grows the server.
#[test]
fn a_client_that_never_reads_stalls_nobody() {
    tcp::non_reading_client_does_not_stall_others(BIN);
}

/// Clients that vanish with a reset leave the server up and serving.
#[test]
fn resets_leave_the_server_serving() {
    tcp::resets_leave_the_server_serving(BIN, 50);
}

/// The memory line reports how many connections are open.
#[test]
fn memory_line_counts_connections() {
    tcp::memory_line_counts_connections(BIN, 50);
}

/// No thread per connection: an idle one costs under 256 B, held to /proc. Breaks if a
/// connection grows a buffer or a thread of its own, or the memory line stops measuring.
#[test]
fn an_idle_connection_costs_under_256_bytes() {
    tcp::idle_connection_cost_within(BIN, 1000, ..256);
}

/// At the fd limit the server neither dies nor spins, and serves again after.
#[test]
fn survives_running_out_of_fds() {
    tcp::survives_running_out_of_fds(BIN);
}

/// Clients whose fd would be past FD_SETSIZE are closed; the rest keep their echo.
#[test]
fn clients_past_fd_setsize_are_closed_and_the_rest_served() {
    tcp::clients_past_fd_setsize_are_closed(BIN, 1100);
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
