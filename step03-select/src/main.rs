//! `cargo run --release -p step03-select`

use clap::Parser;

fn main() -> std::io::Result<()> {
    let opts = common::Options::parse();
    let (listener, meter) = common::bind("step03-select", 9003, &opts)?;
    step03_select::serve(listener, meter)
}
