//! The browsers' side: a small HTTP server, a thread per connection.
//!
//! - `GET /` is the page, built into the binary: no other file, no network.
//! - `GET /events` is the event stream (Server-Sent Events): the history first, then each
//!   event as it is posted, and a `status` event whenever the counts change.
//! - `GET /stats` is the counts, as JSON.
//!
//! A thread per browser, not an event loop: a room holds dozens of browsers, not thousands,
//! and a thread that blocks in `write` is exactly what a browser that stops reading should
//! cost: its place in the history, a small stack, its socket's buffers. Connections past
//! [`MAX_CONNECTIONS`] are answered 503.

use std::io::{self, BufWriter, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::thread;
use std::time::Duration;

use crate::board::{self, Board};
use crate::page;

/// Connections served at once, event streams included: the speaker's browser and a room's.
pub const MAX_CONNECTIONS: usize = 256;

/// How long a browser has to send its request head.
const HEAD_TIMEOUT: Duration = Duration::from_secs(10);

/// The longest request head read.
const MAX_HEAD: usize = 8 * 1024;

/// How long to keep a page or stats response's write waiting on a browser that does not
/// read. An event stream has no such limit: a stalled browser stays connected.
const WRITE_TIMEOUT: Duration = Duration::from_secs(30);

/// A stream with nothing new gets a comment this often: a browser (or a proxy) keeps an
/// idle stream open, and a browser that went away is noticed by the failed write.
const KEEP_ALIVE: Duration = Duration::from_secs(15);

/// A browser's thread: a small stack, as it only parses a request head and copies bytes.
const STACK: usize = 128 * 1024;

/// Serve `board` on `listener` from a thread of its own.
pub fn spawn(listener: TcpListener, board: Arc<Board>) -> io::Result<()> {
    thread::Builder::new()
        .name("live-accept".into())
        .spawn(move || accept_loop(listener, board))?;
    Ok(())
}

fn accept_loop(listener: TcpListener, board: Arc<Board>) {
    let open = Arc::new(AtomicUsize::new(0));
    for stream in listener.incoming() {
        let stream = match stream {
            Ok(stream) => stream,
            // Out of file descriptors: wait for some to close rather than spin on accept.
            Err(err) if out_of_fds(&err) => {
                thread::sleep(Duration::from_millis(100));
                continue;
            }
            // A connection reset before it was accepted, and the like: that one only.
            Err(_) => continue,
        };
        if open.load(Ordering::Relaxed) >= MAX_CONNECTIONS {
            refuse(stream);
            continue;
        }
        let slot = Slot::take(&open);
        let board = Arc::clone(&board);
        let spawned = thread::Builder::new()
            .name("live-browser".into())
            .stack_size(STACK)
            .spawn(move || {
                let _slot = slot;
                // One browser's error ends that browser's connection, nothing else.
                let _ = serve(stream, &board);
            });
        if spawned.is_err() {
            // No thread for it (the slot and the stream were dropped with the closure):
            // the browser sees the connection close, and retries.
            thread::sleep(Duration::from_millis(100));
        }
    }
}

/// EMFILE or ENFILE: the process or the system is out of file descriptors.
fn out_of_fds(err: &io::Error) -> bool {
    matches!(err.raw_os_error(), Some(libc::EMFILE | libc::ENFILE))
}

/// A connection counted while it is served.
struct Slot(Arc<AtomicUsize>);

impl Slot {
    fn take(open: &Arc<AtomicUsize>) -> Slot {
        open.fetch_add(1, Ordering::Relaxed);
        Slot(Arc::clone(open))
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Too many connections: a short 503, written without waiting, then closed.
fn refuse(mut stream: TcpStream) {
    let _ = stream.set_nonblocking(true);
    let _ = stream.write_all(
        b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 0\r\nRetry-After: 5\r\nConnection: close\r\n\r\n",
    );
}

/// One request, answered.
fn serve(mut stream: TcpStream, board: &Arc<Board>) -> io::Result<()> {
    stream.set_read_timeout(Some(HEAD_TIMEOUT))?;
    stream.set_write_timeout(Some(WRITE_TIMEOUT))?;
    // Each event leaves at once, not when the previous one's ACK comes back.
    stream.set_nodelay(true)?;
    let Some(head) = read_head(&mut stream)? else {
        return Ok(()); // closed, or a head too long or too slow: nothing worth an answer
    };
    let mut headers = [httparse::EMPTY_HEADER; 32];
    let mut request = httparse::Request::new(&mut headers);
    if !matches!(request.parse(&head), Ok(httparse::Status::Complete(_))) {
        return respond(
            &mut stream,
            "400 Bad Request",
            "text/plain",
            b"bad request\n",
        );
    }
    let path = request.path.unwrap_or("/");
    let path = path.split('?').next().unwrap_or(path);
    match (request.method, path) {
        (Some("GET"), "/") => respond(
            &mut stream,
            "200 OK",
            "text/html; charset=utf-8",
            page::html().as_bytes(),
        ),
        (Some("GET"), "/events") => {
            let last_event_id = request
                .headers
                .iter()
                .find(|h| h.name.eq_ignore_ascii_case("Last-Event-ID"))
                .and_then(|h| std::str::from_utf8(h.value).ok())
                .map(str::to_owned);
            events(stream, board, last_event_id.as_deref())
        }
        (Some("GET"), "/stats") => respond(
            &mut stream,
            "200 OK",
            "application/json",
            (board::stats_json(&board.counts()) + "\n").as_bytes(),
        ),
        (Some("GET"), "/favicon.ico") => respond(&mut stream, "204 No Content", "text/plain", b""),
        (Some("GET"), _) => respond(&mut stream, "404 Not Found", "text/plain", b"not found\n"),
        _ => respond(
            &mut stream,
            "405 Method Not Allowed",
            "text/plain",
            b"GET only\n",
        ),
    }
}

/// The request head, up to its blank line; `None` if the browser closed first, or sent
/// more than [`MAX_HEAD`] without one.
fn read_head(stream: &mut TcpStream) -> io::Result<Option<Vec<u8>>> {
    let mut head = Vec::with_capacity(1024);
    let mut buf = [0u8; 1024];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
        if head.len() > MAX_HEAD {
            return Ok(None);
        }
        match stream.read(&mut buf) {
            Ok(0) => return Ok(None),
            Ok(n) => head.extend_from_slice(&buf[..n]),
            Err(err) if err.kind() == io::ErrorKind::Interrupted => {}
            Err(err) => return Err(err),
        }
    }
    Ok(Some(head))
}

/// A whole response, then the connection closes.
fn respond(
    stream: &mut TcpStream,
    status: &str,
    content_type: &str,
    body: &[u8],
) -> io::Result<()> {
    let head = format!(
        "HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\n\
         Cache-Control: no-store\r\nConnection: close\r\n\r\n",
        body.len()
    );
    stream.write_all(head.as_bytes())?;
    stream.write_all(body)?;
    stream.flush()
}

/// The event stream, until the browser goes away.
fn events(stream: TcpStream, board: &Arc<Board>, last_event_id: Option<&str>) -> io::Result<()> {
    // A browser that stops reading stays connected: its writes wait, however long.
    stream.set_write_timeout(None)?;
    let mut out = BufWriter::with_capacity(16 * 1024, stream);
    // No length: the stream ends when the connection does. `retry`: a browser whose
    // stream broke (live restarted) asks again after a second.
    out.write_all(
        b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nCache-Control: no-store\r\n\
          Connection: close\r\n\r\nretry: 1000\n\n",
    )?;
    out.flush()?;
    let mut subscription = board.subscribe(last_event_id);
    loop {
        let batch = subscription.next_batch(KEEP_ALIVE);
        if batch.frames.is_empty() {
            out.write_all(b": keep-alive\n\n")?;
        }
        for frame in &batch.frames {
            out.write_all(frame.as_bytes())?;
        }
        out.flush()?;
    }
}
