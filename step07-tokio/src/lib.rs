//! `cargo run --release -p step07-tokio`
//!
//! The WebSocket echo of step06, written the way production Rust writes it: tokio and
//! tokio-tungstenite, one task per connection, `async`/`await` instead of a hand-made
//! event loop. Underneath, the same three syscalls: tokio's reactor is mio, and mio on
//! Linux calls epoll_create1 / epoll_ctl / epoll_wait as step05 does, but registers each
//! socket once, edge-triggered, for reading and writing, with `EPOLLRDHUP` (`strace -f -e
//! trace=epoll_ctl` shows it). What changes is who holds each connection's state: step06 kept a small
//! `Conn` in a Vec indexed by fd; here every connection is a task, a future the compiler
//! built from `handle_connection`, plus the buffers the WebSocket library gives it.

use std::io;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use common::MemoryMeter;
use futures_util::{SinkExt, StreamExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::{self, Message};

/// Options of this step on top of the ones every step takes.
#[derive(clap::Parser, Debug, Clone)]
#[command(about = "WebSocket echo on tokio + tokio-tungstenite, a task per connection")]
pub struct Args {
    #[command(flatten)]
    pub common: common::Options,

    /// Bytes of read buffer each WebSocket connection allocates up front
    /// [default: tungstenite's own, 128 KiB].
    #[arg(long, value_name = "BYTES", value_parser = clap::value_parser!(u64).range(1..))]
    pub read_buffer: Option<u64>,

    /// Which tokio scheduler runs the tasks.
    #[arg(long, value_enum, default_value_t = Runtime::MultiThread)]
    pub runtime: Runtime,

    /// Seconds a client has to complete the opening handshake (as in step06).
    #[arg(long, value_name = "SECS", default_value_t = 10, value_parser = clap::value_parser!(u64).range(1..=3600))]
    pub handshake_timeout: u64,
}

/// The two tokio schedulers. The figures per connection come out about the same; the
/// `threads` figure of the memory line shows the difference.
#[derive(clap::ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum Runtime {
    /// What `#[tokio::main]` gives: one worker thread per core, stealing tasks from each
    /// other. The production yardstick, so the default.
    MultiThread,
    /// One thread runs everything: the same shape as step05's and step06's one loop.
    CurrentThread,
}

impl Args {
    /// The WebSocket settings every connection gets.
    pub fn websocket_config(&self) -> WebSocketConfig {
        let config = WebSocketConfig::default();
        match self.read_buffer {
            // `WebSocketConfig` is `#[non_exhaustive]`: it is built from the library's
            // defaults with its builder methods, never as a struct literal.
            Some(bytes) => config.read_buffer_size(bytes as usize),
            None => config,
        }
    }

    /// What the memory line adds to the step's name (`step07-tokio/read-buffer-4KiB`), so
    /// two runs with different settings cannot be confused in a report.
    pub fn label(&self) -> String {
        let bytes = self.websocket_config().read_buffer_size;
        match bytes % 1024 {
            0 => format!("read-buffer-{}KiB", bytes / 1024),
            _ => format!("read-buffer-{bytes}B"),
        }
    }
}

/// How long to wait before accepting again when accept fails, e.g. out of file
/// descriptors (EMFILE): the listener stays ready while connections queue, so retrying at
/// once would spin at 100% CPU without ever succeeding.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);

/// What every connection's task is given.
#[derive(Debug, Clone, Copy)]
struct ConnConfig {
    websocket: WebSocketConfig,
    handshake_timeout: Duration,
}

/// Start the runtime chosen in `args` and serve WebSocket echo on `listener` until the
/// process is killed.
pub fn serve(listener: std::net::TcpListener, meter: MemoryMeter, args: &Args) -> io::Result<()> {
    // Built by hand rather than with `#[tokio::main]`, so the choice is on screen.
    let runtime = match args.runtime {
        Runtime::MultiThread => tokio::runtime::Builder::new_multi_thread(),
        Runtime::CurrentThread => tokio::runtime::Builder::new_current_thread(),
    }
    .enable_io() // the reactor: mio, that is, epoll
    .enable_time() // timers, for the memory line, the back-off and the handshake timeout
    .build()?;
    let config = ConnConfig {
        websocket: args.websocket_config(),
        handshake_timeout: Duration::from_secs(args.handshake_timeout),
    };
    // `block_on` runs the accept loop on this, the main thread; the connections' tasks run
    // on the runtime's workers (multi-thread) or on this thread too (current-thread). So
    // the memory line says `threads 3` on a 2-core machine, or `threads 1`.
    runtime.block_on(accept_loop(listener, meter, config))
}

/// Accept connections forever, one task each.
async fn accept_loop(
    listener: std::net::TcpListener,
    meter: MemoryMeter,
    config: ConnConfig,
) -> io::Result<()> {
    // `from_std` registers the socket with the runtime's epoll but leaves its mode alone:
    // it must already be non-blocking, or an accept on an empty queue would block the
    // whole thread instead of returning WouldBlock and letting other tasks run.
    listener.set_nonblocking(true)?;
    let listener = TcpListener::from_std(listener)?;

    let open = Arc::new(AtomicUsize::new(0));
    // The memory line from a task on this runtime, not from a thread of its own: the
    // `threads` figure then counts only the runtime's threads.
    tokio::spawn(report_memory(meter, Arc::clone(&open)));

    let mut accept_errors = RateLimitedLog::new(Duration::from_secs(1));
    loop {
        match listener.accept().await {
            Ok((stream, peer)) => {
                // Counted as open from accept on: the connection holds memory from here, even
                // before its handshake is done.
                let guard = OpenGuard::new(&open);
                tokio::spawn(async move {
                    let _guard = guard; // counts down when the task ends, however it ends
                    if let Err(err) = handle_connection(stream, config).await {
                        if !peer_went_away(&err) {
                            eprintln!("step07-tokio: {peer}: {err}");
                        }
                    }
                });
            }
            Err(err) => {
                accept_errors.log(|| format!("step07-tokio: accept failed: {err}; backing off"));
                tokio::time::sleep(ACCEPT_BACKOFF).await;
            }
        }
    }
}

/// One client, start to end: the opening handshake, then every text or binary message
/// sent back as it came. An error ends this connection only.
///
/// This function is the connection's state: the compiler turns it into a state machine
/// (a future) holding every local that lives across an `.await`, and `tokio::spawn`
/// allocates it once per connection. That is step06's `Conn`, written for us.
async fn handle_connection(stream: TcpStream, config: ConnConfig) -> tungstenite::Result<()> {
    // A client that connects and says nothing must not hold its task forever.
    let handshake = tokio_tungstenite::accept_async_with_config(stream, Some(config.websocket));
    let mut websocket = match tokio::time::timeout(config.handshake_timeout, handshake).await {
        Ok(result) => result?,
        Err(_elapsed) => return Ok(()), // dropping the stream closes the connection
    };
    while let Some(message) = websocket.next().await {
        match message? {
            // `send` waits until the echo is written out. Meanwhile this task reads
            // nothing more, so a client that never reads cannot make it buffer without
            // end: the rule of steps 03-06, "stop reading while output is pending".
            message @ (Message::Text(_) | Message::Binary(_)) => websocket.send(message).await?,
            // tungstenite answers pings and the closing handshake by itself; after a
            // close, `next()` returns `None`.
            Message::Ping(_) | Message::Pong(_) | Message::Close(_) | Message::Frame(_) => {}
        }
    }
    Ok(())
}

/// A peer that vanished (reset, closed without the closing handshake) is normal on a
/// server with many clients: not worth a line on stderr.
fn peer_went_away(err: &tungstenite::Error) -> bool {
    use tungstenite::error::ProtocolError;
    match err {
        tungstenite::Error::ConnectionClosed | tungstenite::Error::AlreadyClosed => true,
        tungstenite::Error::Protocol(ProtocolError::ResetWithoutClosingHandshake) => true,
        tungstenite::Error::Protocol(ProtocolError::HandshakeIncomplete) => true,
        tungstenite::Error::Io(err) => matches!(
            err.kind(),
            io::ErrorKind::ConnectionReset
                | io::ErrorKind::BrokenPipe
                | io::ErrorKind::UnexpectedEof
        ),
        _ => false,
    }
}

/// Every `meter.period()`, hand the connection count to the meter, which prints the
/// memory line if the count changed.
async fn report_memory(mut meter: MemoryMeter, open: Arc<AtomicUsize>) {
    let mut interval = tokio::time::interval(meter.period().max(Duration::from_millis(10)));
    // After a stall, one tick is enough: no burst of catch-up ticks.
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        interval.tick().await;
        meter.tick(open.load(Ordering::Relaxed));
    }
}

/// One open connection in the shared count: up on creation, down on drop. `Relaxed` is
/// enough: the count is only read for the memory line, and nothing else hangs on it.
struct OpenGuard(Arc<AtomicUsize>);

impl OpenGuard {
    fn new(open: &Arc<AtomicUsize>) -> OpenGuard {
        open.fetch_add(1, Ordering::Relaxed);
        OpenGuard(Arc::clone(open))
    }
}

impl Drop for OpenGuard {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Prints at most one line per period and says how many it held back, so a storm of
/// identical errors (10 000 accepts failing with EMFILE) cannot flood stderr.
struct RateLimitedLog {
    /// At most one line per period.
    period: Duration,
    /// When the last line was printed.
    last: Option<Instant>,
    /// Lines not printed since then.
    held_back: u64,
}

impl RateLimitedLog {
    fn new(period: Duration) -> RateLimitedLog {
        RateLimitedLog {
            period,
            last: None,
            held_back: 0,
        }
    }

    fn log(&mut self, line: impl FnOnce() -> String) {
        if self.last.is_some_and(|at| at.elapsed() < self.period) {
            self.held_back += 1;
            return;
        }
        match self.held_back {
            0 => eprintln!("{}", line()),
            n => eprintln!("{} ({n} more like it not shown)", line()),
        }
        self.last = Some(Instant::now());
        self.held_back = 0;
    }
}
