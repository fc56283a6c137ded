//! The behaviour every step promises, checked against this step's binary.

use stepcheck::tcp;

const BIN: &str = env!("CARGO_BIN_EXE_step02-threads");

#[test]
fn echoes_a_round_trip() {
    tcp::echo_round_trip(BIN);
}

#[test]
fn echoes_200_concurrent_clients() {
    tcp::concurrent_clients_all_echoed(BIN, 200);
}

#[test]
fn echoes_4_mib_intact_through_partial_writes() {
    tcp::large_message_echoed_intact(BIN, 4 << 20);
}

#[test]
fn a_client_that_never_reads_stalls_nobody() {
    tcp::non_reading_client_does_not_stall_others(BIN);
}

#[test]
fn resets_leave_the_server_serving() {
    tcp::resets_leave_the_server_serving(BIN, 50);
}

#[test]
fn memory_line_counts_connections() {
    tcp::memory_line_counts_connections(BIN, 50);
}

#[test]
fn survives_running_out_of_fds() {
    tcp::survives_running_out_of_fds(BIN);
}

#[test]
fn serves_with_a_small_stack() {
    let server = stepcheck::Server::start(BIN, &["--stack-size", "65536"]);
    let mut client = server.connect();
    stepcheck::assert_echo(&mut client, b"a 64 KiB stack is plenty for an echo\n");
}
