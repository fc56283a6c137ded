//! `cargo run --release -p step01-blocking`

use clap::Parser;

fn main() -> std::io::Result<()> {
    let opts = common::Options::parse();
    let (listener, meter) = common::bind("step01-blocking", 9001, &opts)?;
    step01_blocking::serve(listener, meter)
}
