//! The options, checked when they are parsed: a budget no server can work with never
//! starts a server.

use std::net::TcpListener;
use std::process::Command;

const BIN: &str = env!("CARGO_BIN_EXE_step06-ws-epoll");

/// A budget of zero is refused with a one-line error naming the option, before the server
/// starts: `--max-message 0` would close every non-empty message with 1009. Breaks if an
/// option loses its value parser's range.
#[test]
fn impossible_budgets_are_refused_at_parse_time() {
    // A port already taken: should an option be accepted by mistake, the server cannot
    // bind, says so and exits at once, so this test never waits on a running server.
    let taken = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    for option in [
        "--max-message",
        "--max-buffered",
        "--handshake-timeout",
        "--stall-timeout",
    ] {
        let output = Command::new(BIN)
            .args(["--addr", &addr, option, "0"])
            .output()
            .expect("run step06-ws-epoll");
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(
            !output.status.success() && stderr.contains("invalid value") && stderr.contains(option),
            "{option} 0 was not refused at parse time: {stderr}"
        );
    }
}

/// `--allow-origin` takes `*` or an origin as a browser sends it: one with a path (here a
/// trailing `/`), which no browser sends and so would never match, is refused with a
/// one-line error before the server starts. Breaks if the option loses its value parser.
#[test]
fn an_origin_with_a_path_is_refused_at_parse_time() {
    let taken = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    let output = Command::new(BIN)
        .args(["--addr", &addr, "--allow-origin", "http://localhost:8000/"])
        .output()
        .expect("run step06-ws-epoll");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        !output.status.success()
            && stderr.contains("invalid value")
            && stderr.contains("--allow-origin"),
        "an origin with a path was not refused at parse time: {stderr}"
    );
}
