//! The opening handshake, judged as step06 judges it: the same refusals, with the same
//! answers.
//!
//! tokio-tungstenite can do the handshake itself (`accept_async`), but it refuses other
//! requests than step06 does, and answers none of them: it takes a head of any size up to
//! 64 KiB with any number of `Host` headers, keys or versions, resets a client whose head
//! is longer, closes without a word on a bad key, and refuses a client whose first frame
//! comes in the same segment as its head. So this step reads the request head itself and
//! judges it with step06's `handshake.rs` (the parser, the checks, the answers); after the
//! `101`, tungstenite speaks the frames (`WebSocketStream::from_partially_read` in
//! `lib.rs`). Servers built on hyper split the work the same way: in axum, hyper parses
//! the HTTP request, and tungstenite takes over the socket after the `101`.

use std::io;
use std::time::Duration;

use step06_ws_epoll::handshake::{self, MAX_HEAD, Reject, Upgrade};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;

use crate::budget::BudgetedStream;

/// How long a client we refuse or fail gets to take our last words and hang up.
pub const CLOSE_GRACE: Duration = Duration::from_secs(1);

/// A request head, read and judged.
pub struct Request {
    /// step06's verdict: upgrade (and how long the head was), or refuse.
    pub verdict: Result<Upgrade, Reject>,
    /// Every byte read: the head, and any frames the client sent right behind it.
    pub bytes: Vec<u8>,
}

/// Read a request head and judge it, with step06's `parse_request`. At most `MAX_HEAD`
/// bytes are read: `parse_request` refuses a head that does not end within them (`431`).
/// A client that hangs up first is an error (`UnexpectedEof`).
pub async fn read_request(
    stream: &mut BudgetedStream,
    allowed_origins: &[String],
) -> io::Result<Request> {
    // Most heads are a few hundred bytes; the buffer grows (doubling) for longer ones.
    let mut bytes = Vec::with_capacity(1024);
    loop {
        let room = (MAX_HEAD - bytes.len()) as u64;
        if (&mut *stream).take(room).read_buf(&mut bytes).await? == 0 {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
        let verdict = match handshake::parse_request(&bytes, allowed_origins) {
            Ok(None) => continue, // not whole yet
            Ok(Some(upgrade)) => Ok(upgrade),
            Err(reject) => Err(reject),
        };
        return Ok(Request { verdict, bytes });
    }
}

/// What a client is told when a budget (`budget.rs`) cut its request head short, as step06
/// tells it: `503` when all connections together hold what they may, `408` when it held
/// bytes too long; nothing when it simply left.
pub fn cut_short(stream: &BudgetedStream) -> Option<&'static str> {
    match stream.refusal()? {
        CloseCode::Size => Some(handshake::BUSY_RESPONSE),
        _ => Some(handshake::TIMEOUT_RESPONSE),
    }
}

/// Say our last words (`last_words`, e.g. an HTTP status, or nothing after a close frame)
/// and hang up as step06 does: our FIN, then what the client still sends is read and
/// dropped until it hangs up too, for at most [`CLOSE_GRACE`]. Closing a socket with
/// unread bytes would send a reset, which can destroy our last words before the client
/// reads them. Best effort: the client may be gone already.
pub async fn hang_up(stream: &mut BudgetedStream, last_words: &[u8]) {
    // Whatever it held is dropped, and no longer counts against the budgets.
    stream.answered(None);
    let answer = async {
        stream.write_all(last_words).await?;
        stream.shutdown().await?;
        let mut dropped = vec![0; 4096];
        while stream.read(&mut dropped).await? > 0 {
            stream.answered(None); // dropped: they hold nothing
        }
        Ok::<(), io::Error>(())
    };
    let _ = tokio::time::timeout(CLOSE_GRACE, answer).await;
}
