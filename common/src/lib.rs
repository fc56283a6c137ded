//! The routine parts every step shares, so that a step's source holds only what it teaches:
//! command-line options, the open-file limit, and the memory meter that prints the memory line.

mod fdlimit;
mod meter;
mod options;

pub use fdlimit::{FdLimit, raise_fd_limit};
pub use meter::{MemoryLine, MemoryMeter, format_bytes, rss_bytes, thread_count};
pub use options::Options;

use std::io;
use std::net::TcpListener;

/// What every step's `main` does before it serves: raise the open-file limit, bind the
/// listener, print `listening on ADDR` as the first line on stdout, and measure the baseline
/// resident set (after the bind, before the first accept).
pub fn bind(
    step: &str,
    default_port: u16,
    opts: &Options,
) -> io::Result<(TcpListener, MemoryMeter)> {
    let limit = raise_fd_limit()?;
    eprintln!("{step}: {limit}");

    let addr = opts.addr_or(default_port);
    let listener = TcpListener::bind(addr)
        .map_err(|err| io::Error::new(err.kind(), format!("cannot listen on {addr}: {err}")))?;
    let local = listener.local_addr()?;
    if opts.json {
        println!(r#"{{"event":"listening","addr":"{local}"}}"#);
    } else {
        println!("listening on {local}");
    }

    let meter = MemoryMeter::new(step, opts);
    Ok((listener, meter))
}
