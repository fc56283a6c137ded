//! step06's frame rules, held before tungstenite reads a frame.
//!
//! tungstenite checks RFC 6455's rules itself, but two of them otherwise than step06:
//!
//! - a continuation frame is held to `max_message_size` only once all of it has arrived,
//!   and been buffered (step06 refuses it at its header, as soon as the message would pass
//!   `--max-message`);
//! - a length with its top bit set is "too big", 1009, where RFC 6455 makes it a protocol
//!   error, 1002.
//!
//! [`FrameGuard`] sits between tungstenite and the socket and reads every frame header as
//! it goes by, with step06's own `frame::parse_header`. A header step06 would refuse never
//! reaches tungstenite: the bytes before it do, then the stream fails, and the connection is
//! closed with step06's code (1002 or 1009). The payloads go by untouched: the guard only
//! counts them, to know where the next header starts.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use step06_ws_epoll::frame;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio_tungstenite::tungstenite::protocol::frame::FrameHeader;
use tokio_tungstenite::tungstenite::protocol::frame::coding::{CloseCode, Data, OpCode};

use crate::budget::BudgetedStream;

/// The longest frame header: 2 bytes, 8 of extended length, 4 of mask.
const MAX_HEADER: usize = 14;

/// The client's side of a connection, read frame header by frame header.
pub struct FrameGuard<'a> {
    /// The socket, with its budget.
    stream: &'a mut BudgetedStream,
    /// `--max-message`.
    max_message: usize,
    /// The frame header being read (it may come in pieces).
    header: [u8; MAX_HEADER],
    /// How many bytes of `header` have come.
    header_len: usize,
    /// Payload bytes of the current frame still to come.
    payload_left: usize,
    /// The payload bytes of the fragmented message under way, if one is.
    message: Option<usize>,
    /// Set once a header is refused: the close code that says why.
    refusal: Option<CloseCode>,
}

impl<'a> FrameGuard<'a> {
    pub fn new(stream: &'a mut BudgetedStream, max_message: usize) -> FrameGuard<'a> {
        FrameGuard {
            stream,
            max_message,
            header: [0; MAX_HEADER],
            header_len: 0,
            payload_left: 0,
            message: None,
            refusal: None,
        }
    }

    /// The bytes the client sent right behind its request head, for tungstenite to start
    /// from: all of them, or those before a header step06 refuses.
    pub fn admit(&mut self, mut early: Vec<u8>) -> Vec<u8> {
        let passed = self.follow(&early);
        early.truncate(passed);
        early
    }

    /// The socket, e.g. to hang up.
    pub fn stream(&mut self) -> &mut BudgetedStream {
        self.stream
    }

    /// See [`BudgetedStream::answered`].
    pub fn answered(&mut self, bytes: Option<usize>) {
        self.stream.answered(bytes);
    }

    /// See [`BudgetedStream::opened`].
    pub fn opened(&mut self, early: usize) {
        self.stream.opened(early);
    }

    /// See [`BudgetedStream::message_in`].
    pub fn message_in(&mut self) {
        self.stream.message_in();
    }

    /// Why the stream failed, if it failed on purpose: a refused header (1002 or 1009), or
    /// the budget's refusal (see [`BudgetedStream::refusal`]).
    pub fn refusal(&self) -> Option<CloseCode> {
        self.refusal.or(self.stream.refusal())
    }

    /// Follow the frames through `bytes`, the next bytes from the client, and return how
    /// many may pass: all of them, or those before a header step06 refuses.
    fn follow(&mut self, bytes: &[u8]) -> usize {
        let mut at = 0;
        while at < bytes.len() {
            if self.payload_left > 0 {
                let skipped = self.payload_left.min(bytes.len() - at);
                self.payload_left -= skipped;
                at += skipped;
                continue;
            }
            // The header, one byte at a time, so that a byte of the payload is never taken
            // for one of the header's.
            self.header[self.header_len] = bytes[at];
            self.header_len += 1;
            at += 1;
            let header = &self.header[..self.header_len];
            match frame::parse_header(header, self.message, self.max_message) {
                Ok(None) => {} // not whole yet
                Ok(Some((header, _, payload_len))) => {
                    self.header_len = 0;
                    self.payload_left = payload_len;
                    self.message = next_message(self.message, &header, payload_len);
                }
                Err(code) => {
                    self.refusal = Some(code);
                    // The refused header may have begun in an earlier read.
                    return at.saturating_sub(self.header_len);
                }
            }
        }
        at
    }
}

/// The fragmented message under way after a frame with `header` and `payload_len` bytes,
/// given the one before it (`parse_header` has checked that the sequence is allowed).
fn next_message(message: Option<usize>, header: &FrameHeader, payload_len: usize) -> Option<usize> {
    match header.opcode {
        // Control frames come between fragments and leave the message alone.
        OpCode::Control(_) => message,
        OpCode::Data(_) if header.is_final => None,
        OpCode::Data(Data::Continue) => message.map(|so_far| so_far + payload_len),
        OpCode::Data(_) => Some(payload_len), // the first fragment
    }
}

/// The error a refused header turns into; the close code is in [`FrameGuard::refusal`].
fn refused() -> io::Error {
    io::Error::other("a frame header step06 refuses")
}

impl AsyncRead for FrameGuard<'_> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.refusal.is_some() {
            return Poll::Ready(Err(refused()));
        }
        let before = buf.filled().len();
        ready!(Pin::new(&mut *this.stream).poll_read(cx, buf))?;
        let passed = this.follow(&buf.filled()[before..]);
        buf.set_filled(before + passed);
        // Nothing to pass but a refused header: fail now (an empty read would say "end of
        // file"). Otherwise the bytes before it pass, and the next read fails.
        if this.refusal.is_some() && passed == 0 {
            return Poll::Ready(Err(refused()));
        }
        Poll::Ready(Ok(()))
    }
}

impl AsyncWrite for FrameGuard<'_> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bytes: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut *self.get_mut().stream).poll_write(cx, bytes)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut *self.get_mut().stream).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut *self.get_mut().stream).poll_shutdown(cx)
    }
}
