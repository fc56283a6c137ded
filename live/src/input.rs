//! The feeder's side: read stdin as fast as it comes, pass every byte through to stdout,
//! and post each line to the board.
//!
//! Nothing here waits on anything but stdin. stdout is written by a thread of its own
//! through a bounded queue: when stdout is not being read (a terminal paused with Ctrl-S,
//! a pipe nobody drains), what does not fit is dropped and counted rather than slowing the
//! step that feeds us (a step's own memory line never waits either). When stdout is
//! closed, lines are still drawn.

use std::io::{self, Read, Write};
use std::sync::Arc;
use std::sync::mpsc::{self, SyncSender, TrySendError};
use std::thread;

use crate::board::{Board, MAX_LINE};

/// Reads of stdin queued for stdout, at most: with 64 KiB reads, 4 MiB.
const PASSTHROUGH_QUEUE: usize = 64;

/// How much stdin is read at once.
const READ_SIZE: usize = 64 * 1024;

/// What the input held, once it has ended.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Summary {
    /// Lines read, good and bad (blank lines not counted).
    pub lines: u64,
    /// Lines skipped: not a JSON object, not UTF-8, or too long.
    pub bad: u64,
}

/// stdout, written by its own thread.
pub struct Passthrough {
    queue: SyncSender<Vec<u8>>,
    board: Arc<Board>,
}

impl Passthrough {
    /// Start the thread that writes to `out`.
    pub fn spawn(out: impl Write + Send + 'static, board: Arc<Board>) -> io::Result<Passthrough> {
        let (queue, chunks) = mpsc::sync_channel::<Vec<u8>>(PASSTHROUGH_QUEUE);
        let closed = Arc::clone(&board);
        thread::Builder::new()
            .name("live-stdout".into())
            .spawn(move || {
                let mut out = io::BufWriter::with_capacity(READ_SIZE, out);
                while let Ok(chunk) = chunks.recv() {
                    let mut written = out.write_all(&chunk);
                    // Whatever else is queued, then one flush: lines show up as they come.
                    while written.is_ok()
                        && let Ok(more) = chunks.try_recv()
                    {
                        written = out.write_all(&more);
                    }
                    if written.is_ok() {
                        written = out.flush();
                    }
                    if let Err(err) = written {
                        // stdout is gone (`live | head -3`, a closed terminal): say so once
                        // and keep drawing. Dropping `chunks` tells the reader.
                        eprintln!("live: stdout: {err}; lines are still drawn");
                        closed.passthrough_closed();
                        return;
                    }
                }
            })?;
        Ok(Passthrough { queue, board })
    }

    /// Queue `bytes` for stdout, or count its lines lost if the queue is full.
    fn send(&self, bytes: &[u8]) {
        match self.queue.try_send(bytes.to_vec()) {
            Ok(()) => {}
            Err(TrySendError::Full(chunk)) => {
                let lines = chunk.iter().filter(|&&b| b == b'\n').count() as u64;
                self.board.count_passthrough_lost(lines.max(1));
            }
            Err(TrySendError::Disconnected(_)) => {} // stdout is closed; already said
        }
    }
}

/// Read `input` to its end: every byte goes to `passthrough` as read, every line to the
/// board. Read errors other than an interrupted call end the input, as its end does.
pub fn pump(mut input: impl Read, board: &Board, passthrough: &Passthrough) -> Summary {
    let mut lines = LineSplitter::default();
    let mut summary = Summary::default();
    let mut buf = vec![0u8; READ_SIZE];
    loop {
        let n = match input.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(err) if err.kind() == io::ErrorKind::Interrupted => continue,
            Err(err) => {
                eprintln!("live: reading stdin: {err}");
                break;
            }
        };
        passthrough.send(&buf[..n]);
        lines.split(&buf[..n], |line| take(line, board, &mut summary));
    }
    lines.finish(|line| take(line, board, &mut summary));
    board.input_ended();
    summary
}

/// One line from the input: posted if it can be drawn, counted either way.
fn take(line: Line<'_>, board: &Board, summary: &mut Summary) {
    let good = match line {
        Line::Whole(bytes) => {
            let bytes = bytes.strip_suffix(b"\r").unwrap_or(bytes);
            if bytes.iter().all(u8::is_ascii_whitespace) {
                return; // a blank line: nothing to draw, nothing wrong
            }
            match std::str::from_utf8(bytes) {
                Ok(text) => board.post(text),
                Err(_) => {
                    board.count_bad();
                    false
                }
            }
        }
        Line::TooLong => {
            board.count_bad();
            false
        }
    };
    summary.lines += 1;
    if !good {
        summary.bad += 1;
        if summary.bad == 1 {
            eprintln!(
                "live: line {} is not a JSON object, so it is not drawn (run the step with \
                 --json); bad lines are counted and skipped",
                summary.lines
            );
        }
    }
}

/// A line as the splitter hands it over.
#[derive(Debug, PartialEq, Eq)]
pub enum Line<'a> {
    /// A line of at most [`MAX_LINE`] bytes, without its newline.
    Whole(&'a [u8]),
    /// A line longer than that: its bytes were not kept.
    TooLong,
}

/// Cuts a byte stream into lines, holding at most [`MAX_LINE`] bytes of a line that has
/// not ended yet, whatever the input.
#[derive(Debug, Default)]
pub struct LineSplitter {
    partial: Vec<u8>,
    /// The line under way is already too long: skip to its end.
    too_long: bool,
}

impl LineSplitter {
    /// Hand every line that ends in `bytes` to `each`, keeping the unfinished rest.
    pub fn split(&mut self, mut bytes: &[u8], mut each: impl FnMut(Line<'_>)) {
        while let Some(end) = bytes.iter().position(|&b| b == b'\n') {
            let (line, rest) = (&bytes[..end], &bytes[end + 1..]);
            if self.too_long || self.partial.len() + line.len() > MAX_LINE {
                each(Line::TooLong);
            } else if self.partial.is_empty() {
                each(Line::Whole(line));
            } else {
                self.partial.extend_from_slice(line);
                each(Line::Whole(&self.partial));
            }
            self.partial.clear();
            self.too_long = false;
            bytes = rest;
        }
        if self.too_long || self.partial.len() + bytes.len() > MAX_LINE {
            self.partial.clear();
            self.too_long = true;
        } else {
            self.partial.extend_from_slice(bytes);
        }
    }

    /// The input ended: a last line without its newline is a line too.
    pub fn finish(&mut self, mut each: impl FnMut(Line<'_>)) {
        if self.too_long {
            each(Line::TooLong);
        } else if !self.partial.is_empty() {
            each(Line::Whole(&self.partial));
        }
        self.partial.clear();
        self.too_long = false;
    }
}
