//! `cargo run --release -p step07-tokio`

use clap::Parser;

fn main() -> std::io::Result<()> {
    let args = step07_tokio::Args::parse();
    let (listener, meter) = common::bind("step07-tokio", 9007, &args.common)?;
    let meter = meter.label(&args.label());
    step07_tokio::serve(listener, meter, &args)
}
