//! `cargo run --release -p step08-reuseport -- --workers 2`

use std::process::ExitCode;

use clap::Parser;
use step06_ws_epoll::WsOptions;

/// WebSocket echo on N worker processes, each running step06's epoll loop (or step09's
/// io_uring loop) on its own SO_REUSEPORT socket; the kernel spreads connections over them.
#[derive(Parser)]
// Workers get the supervisor's own arguments followed by `--addr` and `--json`: the
// later value wins.
#[command(args_override_self = true)]
struct Args {
    #[command(flatten)]
    common: common::Options,

    /// Worker processes [default: one per CPU].
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u16).range(1..=1024))]
    workers: Option<u16>,

    #[command(flatten)]
    ws: WsOptions,

    /// The event loop each worker runs: step06's epoll loop, or step09's io_uring loop.
    #[arg(long = "loop", value_enum, default_value_t = step08_reuseport::Loop::Epoll)]
    event_loop: step08_reuseport::Loop,

    /// Run as one worker (the supervisor starts them with this).
    #[arg(long, hide = true)]
    worker: bool,
}

fn main() -> ExitCode {
    let args = Args::parse();
    let addr = args.common.addr_or(9008);
    if !args.worker
        && args.event_loop == step08_reuseport::Loop::IoUring
        && let Some(unavailable) = step08_reuseport::io_uring_refused()
    {
        common::log!("{}: {unavailable}", step08_reuseport::STEP);
        return ExitCode::FAILURE;
    }
    let result = if args.worker {
        step08_reuseport::work(addr, &args.common, &args.ws, args.event_loop)
    } else {
        let workers = args.workers.map_or_else(
            || std::thread::available_parallelism().map_or(1, |n| n.get()),
            usize::from,
        );
        step08_reuseport::supervise(step08_reuseport::Plan {
            workers,
            addr,
            opts: args.common.clone(),
            args: std::env::args_os().skip(1).collect(),
        })
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            common::log!("{}: {err}", step08_reuseport::STEP);
            ExitCode::FAILURE
        }
    }
}
