//! `cargo run --release -p step01-blocking`
//!
//! The simplest server there is: accept a client, echo until it hangs up, accept the next.
//! Every call blocks, so one slow client holds up everybody else; the others wait in the
//! kernel's listen queue (the backlog) until it leaves.

use std::io::{self, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use common::MemoryMeter;
use common::sys::is_disconnect;

/// Serve raw-TCP echo on `listener`, one client at a time, forever.
pub fn serve(listener: TcpListener, meter: MemoryMeter) -> io::Result<()> {
    // Our one thread is always blocked in accept, read or write, so a second thread reads
    // this count and prints the memory line.
    let open = Arc::new(AtomicUsize::new(0));
    meter.report_in_background(Arc::clone(&open))?;

    for stream in listener.incoming() {
        // An accept error concerns one client (say, it reset while queued); the next
        // accept may well succeed.
        let stream = match stream {
            Ok(stream) => stream,
            Err(err) => {
                common::log!("step01-blocking: accept: {err}");
                continue;
            }
        };
        open.store(1, Ordering::Relaxed);
        // While we are in here, nobody else is served.
        if let Err(err) = handle_connection(stream) {
            if !is_disconnect(&err) {
                common::log!("step01-blocking: connection: {err}; closing it");
            }
        }
        open.store(0, Ordering::Relaxed);
    }
    unreachable!("incoming() never ends")
}

/// Echo everything the client sends until it closes the connection.
fn handle_connection(mut stream: TcpStream) -> io::Result<()> {
    let mut buf = [0u8; 4096];
    loop {
        // Blocks until the client sends something or hangs up.
        let n = stream.read(&mut buf)?;
        if n == 0 {
            return Ok(());
        }
        // A real handler's work: none unless `--work-us`.
        common::work::spend_on(&buf[..n]);
        // Blocks until the kernel has taken every byte.
        stream.write_all(&buf[..n])?;
    }
}
