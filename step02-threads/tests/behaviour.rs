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

/// A thread per connection costs over 8 KiB each, held to /proc: the touched pages of its
/// stack and glibc's per-thread state. Breaks if connections stop getting threads, or the
/// memory line stops measuring them.
#[test]
fn an_idle_connection_costs_over_8_kib() {
    tcp::idle_connection_cost_within(BIN, 1000, 8 << 10..);
}

/// At the fd limit the server neither dies nor spins, and serves again after.
#[test]
fn survives_running_out_of_fds() {
    tcp::survives_running_out_of_fds(BIN);
}

/// `--stack-size` is applied: with `--stack-size 65536` every connection's thread has a
/// 64 KiB stack (its mapping in /proc/PID/maps), where by default it has Rust's 2 MiB, and
/// it still echoes. Breaks if the option is not passed on to the thread builder.
#[test]
fn stack_size_sets_each_connections_stack() {
    const CLIENTS: usize = 10;
    for (extra, stack) in [
        (&["--stack-size", "65536"][..], 64 << 10),
        (&[][..], 2 << 20),
    ] {
        let server = stepcheck::Server::start(BIN, extra);
        let _clients: Vec<_> = (0..CLIENTS)
            .map(|_| {
                let mut client = server.connect();
                stepcheck::assert_echo(&mut client, b"echoed from a thread of its own\n");
                client
            })
            .collect();
        let stacks = thread_stacks(server.pid());
        let of_that_size = stacks.iter().filter(|&&size| size == stack).count();
        assert!(
            of_that_size >= CLIENTS,
            "with {extra:?}, {of_that_size} thread stacks of {stack} B for {CLIENTS} connections; \
             stack sizes seen: {stacks:?}"
        );
    }
}

/// The sizes of a process's thread stacks: each is an anonymous read-write mapping right
/// above its guard, a small mapping with no access at all (glibc puts one page there).
fn thread_stacks(pid: u32) -> Vec<u64> {
    let maps = std::fs::read_to_string(format!("/proc/{pid}/maps")).expect("/proc/PID/maps");
    // Each line: `start-end perms offset dev inode [path]`, sorted by address.
    let mappings: Vec<(u64, u64, &str, bool)> = maps
        .lines()
        .map(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            let (start, end) = fields[0].split_once('-').expect("start-end");
            let hex = |n| u64::from_str_radix(n, 16).expect("a hex address");
            (hex(start), hex(end), fields[1], fields.len() == 5)
        })
        .collect();
    mappings
        .windows(2)
        .filter_map(|pair| {
            let [
                (_, guard_end, guard_perms, _),
                (start, end, perms, anonymous),
            ] = pair
            else {
                unreachable!("windows(2) gives pairs");
            };
            let is_guard = *guard_perms == "---p" && guard_end - pair[0].0 <= 64 << 10;
            (is_guard && guard_end == start && *perms == "rw-p" && *anonymous).then(|| end - start)
        })
        .collect()
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
