//! `cargo run --release -p step05-epoll`

use clap::Parser;

fn main() -> std::io::Result<()> {
    let opts = common::Options::parse();
    let (listener, meter) = common::bind("step05-epoll", 9005, &opts)?;
    step05_epoll::serve(listener, meter)
}
