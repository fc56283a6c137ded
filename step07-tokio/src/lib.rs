//! `cargo run --release -p step07-tokio`
//!
//! The WebSocket echo of step06, written the way production Rust writes it: tokio and
//! tokio-tungstenite, one task per connection, `async`/`await` instead of a hand-made
//! event loop. Underneath, the same three syscalls: tokio's reactor is mio, and mio on
//! Linux calls epoll_create1 / epoll_ctl / epoll_wait as step05 does, but registers each
//! socket once, edge-triggered, for reading and writing, with `EPOLLRDHUP` (`strace -f -e
//! trace=epoll_ctl` shows it). What changes is who holds each connection's state: step06
//! kept a small `Conn` in a Vec indexed by fd; here every connection is a task, a future the compiler
//! built from `handle_connection`, plus the buffers the WebSocket library gives it.
//!
//! - `budget.rs`: the socket wrapped to count what connections hold against
//!   `--max-buffered`, and to close one that does not finish what it holds within
//!   `--stall-timeout`.
//! - `refusal.rs`: the opening handshake, read here and judged by step06's `handshake.rs`,
//!   so that this step refuses what step06 refuses, with the same answers.
//! - `guard.rs`: every frame header held to step06's rules before tungstenite reads it.

mod budget;
mod guard;
mod refusal;

use std::io;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::{MemoryMeter, RateLimitedLog};
use futures_util::{SinkExt, StreamExt};
use step06_ws_epoll::handshake;
use tokio::net::TcpListener;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::{CloseFrame, Role, WebSocketConfig};
use tokio_tungstenite::tungstenite::{self, Message};

use budget::{Budget, BudgetedStream};
use guard::FrameGuard;

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

    /// Seconds a client has to send its whole request head, and, refused, to hang up after
    /// our answer (as in step06).
    #[arg(long, value_name = "SECS", default_value_t = 10, value_parser = clap::value_parser!(u64).range(1..=3600))]
    pub handshake_timeout: u64,

    /// The largest message (all its fragments together) accepted, in bytes; a bigger one
    /// closes the connection with 1009, as soon as a frame header announces it.
    #[arg(long, value_name = "BYTES", default_value_t = 1 << 20, value_parser = clap::value_parser!(u64).range(1..=1 << 30))]
    pub max_message: u64,

    /// Bytes all connections together may hold in partial frames, fragmented messages and
    /// echoes not yet sent. A read past it closes its connection with 1009.
    #[arg(long, value_name = "BYTES", default_value_t = 64 << 20, value_parser = clap::value_parser!(u64).range(1 << 16..=1 << 40))]
    pub max_buffered: u64,

    /// Seconds within which what a connection holds (a message, its echo) must be
    /// finished, from when it began to hold it; then it is closed with 1008. An idle
    /// connection (holding nothing) is never timed out.
    #[arg(long, value_name = "SECS", default_value_t = 10, value_parser = clap::value_parser!(u64).range(1..=3600))]
    pub stall_timeout: u64,

    /// An origin (`http://host:port`) whose pages may open WebSockets here, besides the
    /// server's own; repeat it for more, or `*` for any. A browser's upgrade from any other
    /// page gets 403, as in step06.
    #[arg(long, value_name = "ORIGIN", value_parser = handshake::parse_origin)]
    pub allow_origin: Vec<String>,

    /// Spend `--work-us` on tokio's blocking pool (`spawn_blocking`) instead of on the worker
    /// thread that runs the connection's task. Without `--work-us`, nothing goes to the pool.
    #[arg(long)]
    pub spawn_blocking: bool,
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
        // `WebSocketConfig` is `#[non_exhaustive]`: it is built from the library's
        // defaults with its builder methods, never as a struct literal.
        let mut config = WebSocketConfig::default();
        if let Some(bytes) = self.read_buffer {
            config = config.read_buffer_size(bytes as usize);
        }
        // `--max-message` for the message. Each frame is held to it at its header by the
        // guard (`guard.rs`), as step06 does, so tungstenite's own per-frame limit is off:
        // it would refuse a 125-byte ping under `--max-message 100`, where step06 answers.
        let max_message = self.max_message as usize;
        // Its write buffer is unbounded by default: a client that sends pings and never
        // reads the pongs grew it without end. The loop below stops reading until each
        // answer is out, so it holds one echo (and a control frame) at most.
        let max_write = config.write_buffer_size + max_message + MAX_FRAME_OVERHEAD;
        config
            .max_message_size(Some(max_message))
            .max_frame_size(None)
            .max_write_buffer_size(max_write)
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

/// Room for one frame header and one control frame (a pong or a close) next to an echo
/// in tungstenite's write buffer.
const MAX_FRAME_OVERHEAD: usize = 14 + 131;

/// The bytes a client's control frame takes besides its payload: 2 of header, 4 of mask
/// (a control frame's payload is at most 125 bytes, so its length fits the first byte).
const CONTROL_FRAME_HEADER: usize = 6;

/// What every connection's task is given (shared: each task holds an `Arc` of it).
#[derive(Debug)]
struct ConnConfig {
    /// tungstenite's settings: `--read-buffer`, and `--max-message` for messages and the
    /// write buffer.
    websocket: WebSocketConfig,
    /// `--max-message`, for the frame guard.
    max_message: usize,
    /// How long the client has to finish its request head (`--handshake-timeout`).
    handshake_timeout: Duration,
    /// How long a connection may hold bytes unfinished (`--stall-timeout`).
    stall_timeout: Duration,
    /// `--allow-origin`: the pages, besides the server's own, that may open WebSockets.
    allowed_origins: Vec<String>,
    /// `--spawn-blocking`: where `--work-us` is spent (see [`work_on`]).
    spawn_blocking: bool,
}

impl ConnConfig {
    fn new(args: &Args) -> ConnConfig {
        ConnConfig {
            websocket: args.websocket_config(),
            max_message: args.max_message as usize,
            handshake_timeout: Duration::from_secs(args.handshake_timeout),
            stall_timeout: Duration::from_secs(args.stall_timeout),
            allowed_origins: args.allow_origin.clone(),
            spawn_blocking: args.spawn_blocking,
        }
    }
}

/// Failed connections come in storms (a client churning 10 000 connections a second):
/// one line a second for all of them, whichever thread runs their tasks.
static CONNECTION_ERRORS: Mutex<RateLimitedLog> = Mutex::new(RateLimitedLog::per_second());

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
    let config = Arc::new(ConnConfig::new(args));
    let budget = Arc::new(Budget::new(args.max_buffered as usize));
    // `block_on` runs the accept loop on this, the main thread; the connections' tasks run
    // on the runtime's workers (multi-thread) or on this thread too (current-thread). So
    // the memory line says `threads 3` on a 2-core machine, or `threads 1`.
    runtime.block_on(accept_loop(listener, meter, config, budget))
}

/// Accept connections forever, one task each.
async fn accept_loop(
    listener: std::net::TcpListener,
    meter: MemoryMeter,
    config: Arc<ConnConfig>,
    budget: Arc<Budget>,
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

    let mut accept_errors = RateLimitedLog::per_second();
    loop {
        match listener.accept().await {
            Ok((stream, peer)) => {
                // Counted as open from accept on: the connection holds memory from here, even
                // before its handshake is done.
                let guard = OpenGuard::new(&open);
                let stream = BudgetedStream::new(stream, Arc::clone(&budget), config.stall_timeout);
                let config = Arc::clone(&config);
                tokio::spawn(async move {
                    let _guard = guard; // counts down when the task ends, however it ends
                    if let Err(err) = handle_connection(stream, &config).await {
                        if !peer_went_away(&err) {
                            // A poisoned lock only means another task panicked mid-line.
                            let mut log =
                                CONNECTION_ERRORS.lock().unwrap_or_else(|e| e.into_inner());
                            log.log(|| format!("step07-tokio: {peer}: {err}"));
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
async fn handle_connection(
    mut stream: BudgetedStream,
    config: &ConnConfig,
) -> tungstenite::Result<()> {
    // The opening handshake, judged as step06 judges it (`refusal.rs`). A refused client
    // has had its answer; its task ends here.
    let handshake = refusal::handshake(
        &mut stream,
        &config.allowed_origins,
        config.handshake_timeout,
    );
    let Some(early) = handshake.await? else {
        return Ok(());
    };
    // From here on tungstenite speaks the frames, each header held to step06's rules by
    // the guard first. Frames sent right behind the head are the first it reads; they are
    // still held, and from now on on the stall clock.
    let mut guard = FrameGuard::new(&mut stream, config.max_message);
    let early = guard.admit(early);
    let early_len = early.len();
    let mut websocket =
        WebSocketStream::from_partially_read(guard, early, Role::Server, Some(config.websocket))
            .await;
    websocket.get_mut().opened(early_len);
    loop {
        let message = match websocket.next().await {
            Some(Ok(message)) => message,
            // tungstenite answered the client's close, and is done.
            None => return Ok(()),
            Some(Err(err)) => return fail(&mut websocket, err).await,
        };
        let sent = match message {
            // `send` waits until the echo is written out. Meanwhile this task reads
            // nothing more, so a client that never reads cannot make it buffer without
            // end: the rule of steps 03-06, "stop reading while output is pending".
            message @ (Message::Text(_) | Message::Binary(_)) => {
                websocket.get_mut().message_in();
                work_on(&message, config.spawn_blocking).await;
                let sent = websocket.send(message).await;
                websocket.get_mut().answered(None);
                sent
            }
            // tungstenite queues the pong by itself; wait until it is out before reading
            // on, or a client that pings and never reads makes the pongs pile up.
            Message::Ping(payload) => {
                let sent = websocket.flush().await;
                let frame = payload.len() + CONTROL_FRAME_HEADER;
                websocket.get_mut().answered(Some(frame));
                sent
            }
            Message::Pong(payload) => {
                let frame = payload.len() + CONTROL_FRAME_HEADER;
                websocket.get_mut().answered(Some(frame));
                Ok(())
            }
            // tungstenite replies to a close by itself; after it, `next()` returns `None`.
            Message::Close(_) | Message::Frame(_) => Ok(()),
        };
        if let Err(err) = sent {
            return fail(&mut websocket, err).await;
        }
        // Fairness: a client whose messages are already in tungstenite's buffer could be
        // echoed for ever without the socket saying "not now". Each message spends one unit
        // of tokio's cooperative budget (128 per turn); when it is spent, the task yields
        // and the runtime runs the other connections.
        tokio::task::coop::consume_budget().await;
    }
}

/// `--work-us`: the CPU a real handler spends on a message (none by default).
///
/// By default it is spent right here, on the worker thread running this task, as a naive
/// handler spends it: the tasks queued on this thread wait meanwhile (another worker may
/// steal them, if it is free). With `--spawn-blocking` it goes to tokio's blocking pool,
/// threads apart from the workers (one more is started whenever all are busy, up to 512):
/// this worker runs other tasks meanwhile, and the message pays two thread hops. Without
/// `--work-us` it returns at once, and nothing goes to the pool.
async fn work_on(message: &Message, spawn_blocking: bool) {
    if !common::work::enabled() {
        return; // no `--work-us`: no work, and no hop to the blocking pool and back
    }
    // Cheap: the message's bytes are reference-counted, not copied.
    let data = message.clone().into_data();
    if spawn_blocking {
        let work = tokio::task::spawn_blocking(move || common::work::spend_on(&data));
        work.await.expect("bug: hashing does not panic");
    } else {
        common::work::spend_on(&data);
    }
}

/// The bulk of one connection's task: the future `handle_connection` returns. `tokio::spawn`
/// allocates the async block around it (with the connection's guard, its config and its
/// peer's address, beside tokio's task header) when the connection is accepted and keeps it
/// until it ends. The future is built, never run. `stream` must belong to a
/// running tokio runtime; `tests/task_size.rs` (the README's exercise 1) provides one.
pub fn task_size(stream: tokio::net::TcpStream, args: &Args) -> usize {
    let config = ConnConfig::new(args);
    let budget = Arc::new(Budget::new(args.max_buffered as usize));
    let stream = BudgetedStream::new(stream, budget, config.stall_timeout);
    std::mem::size_of_val(&handle_connection(stream, &config))
}

/// End a connection on an error: with a close frame saying why when the client broke a
/// rule (RFC 6455 §7.1.7 "fail the WebSocket connection"), in silence when it left.
async fn fail(
    websocket: &mut WebSocketStream<FrameGuard<'_>>,
    err: tungstenite::Error,
) -> tungstenite::Result<()> {
    let Some(code) = close_code(&err, websocket.get_ref().refusal()) else {
        return Err(err);
    };
    let close = CloseFrame {
        code,
        reason: "".into(),
    };
    // Best effort, and bounded: a client that does not read will not take it. Then our
    // FIN, and the client's close (or anything else) dropped until it hangs up.
    let _ = tokio::time::timeout(refusal::CLOSE_GRACE, websocket.close(Some(close))).await;
    refusal::hang_up(websocket.get_mut().stream(), b"", refusal::CLOSE_GRACE).await;
    Ok(())
}

/// The close code for a connection failed by `err`, if the client is owed one:
///
/// - 1002 (protocol error): a frame no client may send (unmasked, reserved bits, a
///   continuation with nothing to continue, ...);
/// - 1007 (invalid data): a text message that is not UTF-8;
/// - 1009 (message too big): over `--max-message`, or a read the `--max-buffered` budget
///   could not hold;
/// - 1008 (policy violation): held bytes it did not finish within `--stall-timeout`.
///   Not 1009: nothing was too big; the client broke the rule that it finish in time, and
///   1008 is the RFC's code for "a message that violates its policy" when no other fits.
fn close_code(err: &tungstenite::Error, refusal: Option<CloseCode>) -> Option<CloseCode> {
    use tungstenite::error::ProtocolError;
    match err {
        tungstenite::Error::Io(_) => refusal,
        tungstenite::Error::Utf8(_) => Some(CloseCode::Invalid),
        tungstenite::Error::Capacity(_) => Some(CloseCode::Size),
        tungstenite::Error::Protocol(ProtocolError::ResetWithoutClosingHandshake) => None,
        tungstenite::Error::Protocol(_) => Some(CloseCode::Protocol),
        _ => None,
    }
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
