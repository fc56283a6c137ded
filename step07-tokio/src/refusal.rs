//! The opening handshake, judged as step06 judges it: the same refusals, with the same
//! answers.
//!
//! tokio-tungstenite can do the handshake itself (`accept_async`), but it refuses other
//! requests than step06 does, and answers none of them: it takes heads of up to 64 KiB and
//! 124 header lines, with two `Host` headers, two keys or two versions, and any `Origin`;
//! resets a client whose head is longer; closes without a word on a bad key; and refuses a
//! client whose first frame comes in the same segment as its head. So this step reads the
//! request head itself and judges it with step06's `handshake.rs` (the parser, the checks,
//! the answers); after the `101`, tungstenite speaks the frames
//! (`WebSocketStream::from_partially_read` in `lib.rs`). Servers built on hyper split the
//! work the same way: in axum, hyper parses the HTTP request, and tungstenite takes over
//! the socket after the `101`.

use std::io;
use std::time::Duration;

use step06_ws_epoll::handshake::{self, MAX_HEAD, Reject, Request};
use step06_ws_epoll::page;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;

use crate::budget::BudgetedStream;

/// How long a client we fail, or find too slow, gets to take our last words and hang up.
pub const CLOSE_GRACE: Duration = Duration::from_secs(1);

/// The opening handshake: read the request head, judge it with step06's `parse_request`,
/// and answer. `Ok(Some(early))` once upgraded (`101` sent), with the bytes the client sent
/// right behind its head (frames, or nothing); `Ok(None)` for a browser given step06's
/// page, a client refused (and told why, with step06's status) or too slow to send its
/// head within `timeout` (`408`). A client answered so has `timeout` again to take the
/// answer and hang up, as in step06.
///
/// A function of its own, so that what it holds (the head, the answer) is freed when it
/// returns, not kept in the connection's task for the connection's whole life.
pub async fn handshake(
    stream: &mut BudgetedStream,
    allowed_origins: &[String],
    timeout: Duration,
) -> io::Result<Option<Vec<u8>>> {
    let head = read_head(stream, allowed_origins);
    let (verdict, mut bytes) = match tokio::time::timeout(timeout, head).await {
        Ok(Ok(head)) => head,
        // Gone before its head was whole, or cut short by a budget (then told so).
        Ok(Err(err)) => {
            if let Some(answer) = cut_short(stream) {
                hang_up(stream, answer.as_bytes(), timeout).await;
            }
            return Err(err);
        }
        // Too slow to finish its request head, or silent: told so, as step06 tells it,
        // then closed. Bounded: a client that takes nothing cannot hold the task.
        Err(_elapsed) => {
            hang_up(stream, handshake::TIMEOUT_RESPONSE.as_bytes(), CLOSE_GRACE).await;
            return Ok(None);
        }
    };
    match verdict {
        Ok(Request::Upgrade(upgrade)) => {
            let switching = handshake::switching_protocols(&upgrade.accept);
            stream.write_all(switching.as_bytes()).await?;
            Ok(Some(bytes.split_off(upgrade.head_len)))
        }
        // A browser's `GET /`: given step06's page.
        Ok(Request::Page) => {
            hang_up(stream, page::response().as_bytes(), timeout).await;
            Ok(None)
        }
        // Refused with step06's status.
        Err(reject) => {
            hang_up(stream, reject.response().as_bytes(), timeout).await;
            Ok(None)
        }
    }
}

/// Read a request head until step06's `parse_request` has a verdict on it, and return the
/// verdict and every byte read. At most `MAX_HEAD` bytes: `parse_request` refuses a head
/// that does not end within them (`431`). A client that hangs up first is an error
/// (`UnexpectedEof`).
async fn read_head(
    stream: &mut BudgetedStream,
    allowed_origins: &[String],
) -> io::Result<(Result<Request, Reject>, Vec<u8>)> {
    // Most heads are a few hundred bytes; the buffer grows (doubling) for longer ones.
    let mut bytes = Vec::with_capacity(1024);
    loop {
        let room = (MAX_HEAD - bytes.len()) as u64;
        if (&mut *stream).take(room).read_buf(&mut bytes).await? == 0 {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
        let verdict = match handshake::parse_request(&bytes, allowed_origins) {
            Ok(None) => continue, // not whole yet
            Ok(Some(request)) => Ok(request),
            Err(reject) => Err(reject),
        };
        return Ok((verdict, bytes));
    }
}

/// What a client is told when a budget (`budget.rs`) cut its request head short, as step06
/// tells it: `503` when all connections together hold what they may, `408` when it held
/// bytes too long; nothing when it simply left.
fn cut_short(stream: &BudgetedStream) -> Option<&'static str> {
    match stream.refusal()? {
        CloseCode::Size => Some(handshake::BUSY_RESPONSE),
        _ => Some(handshake::TIMEOUT_RESPONSE),
    }
}

/// Say our last words (`last_words`, e.g. an HTTP status, or nothing after a close frame)
/// and hang up as step06 does: our FIN, then what the client still sends is read and
/// dropped until it hangs up too, for at most `within`. Closing a socket with unread
/// bytes would send a reset, which can destroy our last words before the client reads
/// them. Best effort: the client may be gone already.
pub async fn hang_up(stream: &mut BudgetedStream, last_words: &[u8], within: Duration) {
    // Whatever it held is dropped, and no longer counts against the budgets; nor does
    // what it still sends, read from the socket itself (the budget may be spent).
    stream.answered(None);
    let answer = async {
        stream.write_all(last_words).await?;
        stream.shutdown().await?;
        let mut dropped = vec![0; 4096];
        while stream.socket().read(&mut dropped).await? > 0 {}
        Ok::<(), io::Error>(())
    };
    let _ = tokio::time::timeout(within, answer).await;
}
