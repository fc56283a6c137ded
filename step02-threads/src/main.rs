//! `cargo run --release -p step02-threads`

use clap::Parser;

#[derive(Parser)]
struct Cli {
    #[command(flatten)]
    common: common::Options,

    /// Stack size of each connection's thread, in bytes [default: Rust's, 2 MiB], from the
    /// platform's minimum (16 KiB on x86-64 Linux) to 1 GiB, rounded up to whole pages. Only
    /// the pages a thread touches become resident; the rest is address space.
    #[arg(long, value_name = "BYTES", value_parser = step02_threads::parse_stack_size)]
    stack_size: Option<usize>,
}

fn main() -> std::io::Result<()> {
    let cli = Cli::parse();
    let (listener, meter) = common::bind("step02-threads", 9002, &cli.common)?;
    step02_threads::serve(listener, meter, cli.stack_size)
}
