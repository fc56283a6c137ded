//! `cargo run --release -p step06-ws-epoll`

use clap::Parser;
use step06_ws_epoll::WsOptions;

/// WebSocket echo on one epoll loop, with a hand-made upgrade and lazy buffers.
#[derive(Parser)]
struct Args {
    #[command(flatten)]
    common: common::Options,

    #[command(flatten)]
    ws: WsOptions,
}

fn main() -> std::io::Result<()> {
    let args = Args::parse();
    let (listener, meter) = common::bind("step06-ws-epoll", 9006, &args.common)?;
    step06_ws_epoll::serve(listener, meter, args.ws.config())
}
