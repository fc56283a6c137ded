//! `cargo run --release -p step09-io-uring`

use clap::Parser;
use step09_io_uring::{DEFAULT_BUFFER_SIZE, DEFAULT_RING_BUFFERS, WsOptions};

/// WebSocket echo on io_uring: multishot accept, multishot receive into a provided buffer ring.
#[derive(Parser)]
struct Args {
    #[command(flatten)]
    common: common::Options,

    #[command(flatten)]
    ws: WsOptions,

    /// Buffers in the provided buffer ring (a power of two, at most 32768).
    #[arg(long, value_name = "N", default_value_t = DEFAULT_RING_BUFFERS,
          value_parser = power_of_two)]
    ring_buffers: u16,

    /// Bytes per buffer in the ring: the most one receive completion carries (so the ring
    /// takes 1 GiB at most).
    #[arg(long, value_name = "BYTES", default_value_t = DEFAULT_BUFFER_SIZE,
          value_parser = clap::value_parser!(u32).range(64..=32768))]
    buffer_size: u32,
}

fn power_of_two(s: &str) -> Result<u16, String> {
    match s.parse::<u16>() {
        Ok(n) if n.is_power_of_two() && n <= 1 << 15 => Ok(n),
        _ => Err(format!("`{s}` is not a power of two from 1 to 32768")),
    }
}

fn main() -> std::io::Result<()> {
    let args = Args::parse();
    // Before the bind: a kernel without io_uring is told at once, and the buffer pool is in
    // the memory baseline (it is the same for 1 connection or 10 000).
    let uring = match step09_io_uring::setup(args.ring_buffers, args.buffer_size) {
        Ok(uring) => uring,
        Err(unavailable) => {
            common::log!("step09-io-uring: {unavailable}");
            std::process::exit(1);
        }
    };
    let (listener, meter) = common::bind("step09-io-uring", 9009, &args.common)?;
    common::log!(
        "step09-io-uring: buffer ring {} × {} B = {}, in the baseline",
        args.ring_buffers,
        args.buffer_size,
        common::format_bytes(uring.pool_bytes as u64)
    );
    step09_io_uring::serve(listener, meter, uring, args.ws.config())
}
