//! `cargo run --release -p step04-poll`

use clap::Parser;

fn main() -> std::io::Result<()> {
    let opts = common::Options::parse();
    let (listener, meter) = common::bind("step04-poll", 9004, &opts)?;
    step04_poll::serve(listener, meter)
}
