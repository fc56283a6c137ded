//! `cargo run --release -p step06-ws-epoll -- --json | cargo run --release -p live`
//!
//! Reads JSON lines on stdin (any step's memory lines, the report's events), passes them
//! through to stdout unchanged, and draws them on a page at http://127.0.0.1:9100/.

use std::io::{self, IsTerminal};
use std::net::SocketAddr;
use std::process::ExitCode;

use clap::Parser;
use live::input::{self, Passthrough};

/// Draw a step's memory lines, as they come, on a page for a browser.
#[derive(Parser)]
#[command(name = "live")]
struct Args {
    /// Where the page is served: 127.0.0.1 for this machine only, 0.0.0.0 to let a room's
    /// browsers in; port 0 picks a free one.
    #[arg(long, default_value = live::DEFAULT_ADDR)]
    addr: SocketAddr,
}

fn main() -> ExitCode {
    let args = Args::parse();
    let (addr, board) = match live::serve(args.addr) {
        Ok(served) => served,
        Err(err) => {
            eprintln!("live: cannot listen on {}: {err}", args.addr);
            if err.kind() == io::ErrorKind::AddrInUse {
                eprintln!(
                    "live: another live is running there; or pick another: --addr 127.0.0.1:9101"
                );
            }
            return ExitCode::from(2);
        }
    };
    eprintln!(
        "live: open http://{addr}/ in a browser; drawing the JSON lines on stdin (Ctrl-C to stop)"
    );
    if addr.ip().is_unspecified() {
        eprintln!(
            "live: from other machines: http://THIS-MACHINE'S-ADDRESS:{}/",
            addr.port()
        );
    }
    if io::stdin().is_terminal() {
        eprintln!(
            "live: stdin is a terminal; pipe a step in: target/release/step06-ws-epoll --json | target/release/live"
        );
    }
    let passthrough = match Passthrough::spawn(io::stdout(), board.clone()) {
        Ok(passthrough) => passthrough,
        Err(err) => {
            eprintln!("live: cannot start the stdout thread: {err}");
            return ExitCode::FAILURE;
        }
    };

    let summary = input::pump(io::stdin().lock(), &board, &passthrough);

    // The step is gone, the picture stays: the speaker may still be talking over it.
    eprintln!(
        "live: stdin ended after {} lines ({} bad, skipped); the page keeps the last picture \
         at http://{addr}/ until Ctrl-C",
        summary.lines, summary.bad
    );
    loop {
        std::thread::park(); // Ctrl-C's default action ends the process
    }
}
