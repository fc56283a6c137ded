//! `cargo run --release -p step06-ws-epoll`

use std::time::Duration;

use clap::Parser;
use step06_ws_epoll::Config;

/// WebSocket echo on one epoll loop, with a hand-made upgrade and lazy buffers.
#[derive(Parser)]
struct Args {
    #[command(flatten)]
    common: common::Options,

    /// The largest message accepted, in bytes; a bigger one closes the connection with 1009.
    #[arg(long, value_name = "BYTES", default_value_t = Config::default().max_message)]
    max_message: usize,

    /// The most bytes all connections together may hold (unfinished frames, fragmented
    /// messages, unsent output); a connection that would pass it is closed with 1009.
    #[arg(long, value_name = "BYTES", default_value_t = Config::default().max_buffered)]
    max_buffered: usize,

    /// Seconds a client has to finish what it started: its request head, a frame or
    /// fragmented message, taking our output, hanging up after our close.
    #[arg(long, visible_alias = "handshake-timeout", value_name = "SECS", default_value_t = 10,
          value_parser = clap::value_parser!(u64).range(1..=3600))]
    timeout: u64,
}

fn main() -> std::io::Result<()> {
    let args = Args::parse();
    let (listener, meter) = common::bind("step06-ws-epoll", 9006, &args.common)?;
    let config = Config {
        max_message: args.max_message,
        max_buffered: args.max_buffered,
        timeout: Duration::from_secs(args.timeout),
    };
    step06_ws_epoll::serve(listener, meter, config)
}
