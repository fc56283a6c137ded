//! `cargo run --release -p step09-io-uring`

use std::time::Duration;

use clap::Parser;
use step09_io_uring::Config;

/// WebSocket echo on io_uring: multishot accept, multishot receive into a provided buffer ring.
#[derive(Parser)]
struct Args {
    #[command(flatten)]
    common: common::Options,

    /// The largest message accepted, in bytes; a bigger one closes the connection with 1009.
    #[arg(long, value_name = "BYTES", default_value_t = Config::default().max_message)]
    max_message: usize,

    /// The most bytes all connections together may hold (heads in pieces, unfinished
    /// frames and messages, unsent output); the connection that would pass it is closed
    /// with 1009 (503 while it handshakes).
    #[arg(long, value_name = "BYTES", default_value_t = 64 << 20,
          value_parser = clap::value_parser!(u64).range(1 << 16..=1 << 40))]
    max_buffered: u64,

    /// Seconds a client has to send its whole request head (and to hang up after our close).
    #[arg(long, value_name = "SECS", default_value_t = 10, value_parser = clap::value_parser!(u64).range(1..=3600))]
    handshake_timeout: u64,

    /// Seconds a connection may hold bytes without finishing anything (a frame, a message,
    /// taking its output); then it is closed with 1008. An idle connection has no deadline.
    #[arg(long, value_name = "SECS", default_value_t = 10, value_parser = clap::value_parser!(u64).range(1..=3600))]
    stall_timeout: u64,

    /// Buffers in the provided buffer ring (a power of two, at most 32768).
    #[arg(long, value_name = "N", default_value_t = 1024, value_parser = power_of_two)]
    ring_buffers: u16,

    /// Bytes per buffer in the ring: the most one receive completion carries.
    #[arg(long, value_name = "BYTES", default_value_t = 4096, value_parser = clap::value_parser!(u32).range(64..=1 << 20))]
    buffer_size: u32,
}

/// The most memory the buffer ring may take.
const MAX_POOL: u64 = 1 << 30;

fn power_of_two(s: &str) -> Result<u16, String> {
    match s.parse::<u16>() {
        Ok(n) if n.is_power_of_two() && n <= 1 << 15 => Ok(n),
        _ => Err(format!("`{s}` is not a power of two from 1 to 32768")),
    }
}

fn main() -> std::io::Result<()> {
    let args = Args::parse();
    // Each option is checked by its parser; their product is checked here, before anything
    // is allocated.
    let pool = u64::from(args.ring_buffers) * u64::from(args.buffer_size);
    if pool > MAX_POOL {
        eprintln!(
            "step09-io-uring: --ring-buffers × --buffer-size is {}: at most {}",
            common::format_bytes(pool),
            common::format_bytes(MAX_POOL)
        );
        std::process::exit(2);
    }
    // Before the bind: a kernel without io_uring is told at once, and the buffer pool is in
    // the memory baseline (it is the same for 1 connection or 10 000).
    let uring = match step09_io_uring::setup(args.ring_buffers, args.buffer_size) {
        Ok(uring) => uring,
        Err(unavailable) => {
            eprintln!("step09-io-uring: {unavailable}");
            std::process::exit(1);
        }
    };
    let (listener, meter) = common::bind("step09-io-uring", 9009, &args.common)?;
    eprintln!(
        "step09-io-uring: buffer ring {} × {} B = {}, in the baseline",
        args.ring_buffers,
        args.buffer_size,
        common::format_bytes(uring.pool_bytes as u64)
    );
    let config = Config {
        max_message: args.max_message,
        max_buffered: args.max_buffered as usize,
        timeout: Duration::from_secs(args.handshake_timeout),
        stall_timeout: Duration::from_secs(args.stall_timeout),
    };
    step09_io_uring::serve(listener, meter, uring, config)
}
