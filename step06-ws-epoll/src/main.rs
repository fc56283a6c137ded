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
    #[arg(long, value_name = "BYTES", default_value_t = Config::default().max_message as u64,
          value_parser = clap::value_parser!(u64).range(1..))]
    max_message: u64,

    /// The most bytes all connections together may hold (heads in pieces, unfinished
    /// frames and messages, unsent output); the connection that would pass it is closed
    /// with 1009 (503 while it handshakes).
    #[arg(long, value_name = "BYTES", default_value_t = Config::default().max_buffered as u64,
          value_parser = clap::value_parser!(u64).range(1 << 16..=1 << 40))]
    max_buffered: u64,

    /// Seconds a client has to send its whole request head (and to hang up after our close).
    #[arg(long, value_name = "SECS", default_value_t = Config::default().timeout.as_secs(),
          value_parser = clap::value_parser!(u64).range(1..=3600))]
    handshake_timeout: u64,

    /// Seconds a connection may hold bytes without finishing anything (a frame, a message,
    /// taking its output); then it is closed with 1008. An idle connection has no deadline.
    #[arg(long, value_name = "SECS", default_value_t = Config::default().stall_timeout.as_secs(),
          value_parser = clap::value_parser!(u64).range(1..=3600))]
    stall_timeout: u64,
}

fn main() -> std::io::Result<()> {
    let args = Args::parse();
    let (listener, meter) = common::bind("step06-ws-epoll", 9006, &args.common)?;
    let config = Config {
        max_message: args.max_message as usize,
        max_buffered: args.max_buffered as usize,
        timeout: Duration::from_secs(args.handshake_timeout),
        stall_timeout: Duration::from_secs(args.stall_timeout),
    };
    step06_ws_epoll::serve(listener, meter, config)
}
