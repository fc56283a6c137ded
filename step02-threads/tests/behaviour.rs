//! The behaviour every step promises, checked against this step's binary.

use stepcheck::tcp;

const BIN: &str = env!("CARGO_BIN_EXE_step02-threads");

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

/// At the fd limit the server neither dies nor spins, and serves again after.
#[test]
fn survives_running_out_of_fds() {
    tcp::survives_running_out_of_fds(BIN);
}

/// `--stack-size` is honoured: a 64 KiB stack serves an echo.
#[test]
fn serves_with_a_small_stack() {
    let server = stepcheck::Server::start(BIN, &["--stack-size", "65536"]);
    let mut client = server.connect();
    stepcheck::assert_echo(&mut client, b"a 64 KiB stack is plenty for an echo\n");
}

/// A `--stack-size` no thread can have is refused at start with one line, instead of a
/// server that starts and then drops every connection.
#[test]
fn impossible_stack_size_refused_at_start() {
    use std::process::{Command, Stdio};
    use std::time::{Duration, Instant};

    for size in ["100", "1099511627776"] {
        let mut child = Command::new(BIN)
            .args(["--addr", "127.0.0.1:0", "--stack-size", size])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start step02-threads");
        // Bounded: a step that starts serving is killed (by its pid) after PATIENCE.
        let deadline = Instant::now() + stepcheck::PATIENCE;
        let status = loop {
            if let Some(status) = child.try_wait().unwrap() {
                break Some(status);
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                break None;
            }
            std::thread::sleep(Duration::from_millis(50));
        };
        let status = status.unwrap_or_else(|| {
            panic!("step02-threads --stack-size {size} started serving instead of refusing")
        });
        let mut stderr = String::new();
        std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut stderr).unwrap();
        assert!(!status.success(), "--stack-size {size} was accepted");
        assert!(
            stderr.contains("--stack-size") && stderr.contains("bytes"),
            "--stack-size {size} refused without saying why: {stderr}"
        );
    }
}
