//! What a client whose opening handshake is refused is told: an HTTP status, as step06
//! answers, rather than a silent close.
//!
//! tungstenite checks the request (a `GET`, HTTP/1.1, `Connection: Upgrade`,
//! `Upgrade: websocket`, version 13, a key) and, when one check fails, returns the error
//! without answering. Here the error becomes the status a client can act on. The one check
//! tungstenite leaves out, a `Host` header (RFC 6455 §4.2.1 requires one), is made in the
//! callback it calls with the request, whose error response it sends itself.

use tokio_tungstenite::tungstenite::handshake::server::{ErrorResponse, Request, Response};
use tokio_tungstenite::tungstenite::{self, error::ProtocolError, http};

/// What a client too slow to send its request head gets before we close, as in step06.
pub const TIMEOUT: &str =
    "HTTP/1.1 408 Request Timeout\r\nContent-Length: 0\r\nConnection: close\r\n\r\n";

/// The handshake callback: a request without `Host` is refused with `400`.
#[expect(
    clippy::result_large_err,
    reason = "the signature tungstenite's `Callback` asks for; called once per handshake"
)]
pub fn require_host(request: &Request, response: Response) -> Result<Response, ErrorResponse> {
    if request.headers().contains_key(http::header::HOST) {
        return Ok(response);
    }
    let body = "a WebSocket handshake must carry a Host header (RFC 6455, section 4.2.1)\n";
    let mut refusal = ErrorResponse::new(Some(body.to_string()));
    *refusal.status_mut() = http::StatusCode::BAD_REQUEST;
    let headers = refusal.headers_mut();
    headers.insert(
        http::header::CONTENT_TYPE,
        "text/plain".parse().expect("bug: ASCII"),
    );
    headers.insert(http::header::CONTENT_LENGTH, body.len().into());
    headers.insert(
        http::header::CONNECTION,
        "close".parse().expect("bug: ASCII"),
    );
    Err(refusal)
}

/// The HTTP response for a handshake tungstenite refused, or `None` when there is nobody
/// to answer (the client left, or was answered already).
pub fn response(err: &tungstenite::Error) -> Option<String> {
    use ProtocolError::*;
    let (status, extra_header, body) = match err {
        tungstenite::Error::Protocol(err) => match err {
            WrongHttpMethod => (
                "405 Method Not Allowed",
                "Allow: GET\r\n",
                "a WebSocket handshake is a GET\n",
            ),
            // Both are what a browser tab opened on the address sends: `Connection:
            // keep-alive`, no `Upgrade`. (step06 tells the two apart and answers `400` to
            // an `Upgrade` to something else; tungstenite's error does not say which.)
            MissingConnectionUpgradeHeader | MissingUpgradeWebSocketHeader => (
                "426 Upgrade Required",
                "Upgrade: websocket\r\n",
                "This is a WebSocket echo server: connect with a WebSocket client, \
                 e.g. `websocat ws://HOST:PORT/`.\n",
            ),
            MissingSecWebSocketVersionHeader => (
                "426 Upgrade Required",
                "Sec-WebSocket-Version: 13\r\n",
                "only WebSocket version 13 is spoken here\n",
            ),
            MissingSecWebSocketKey => (
                "400 Bad Request",
                "",
                "Sec-WebSocket-Key must be the base64 of 16 bytes\n",
            ),
            WrongHttpVersion | HttparseError(_) | JunkAfterRequest | InvalidHeader(_) => {
                ("400 Bad Request", "", "not an HTTP/1.1 request\n")
            }
            _ => return None,
        },
        tungstenite::Error::Capacity(_) => (
            "431 Request Header Fields Too Large",
            "",
            "request head too large\n",
        ),
        _ => return None,
    };
    Some(format!(
        "HTTP/1.1 {status}\r\n{extra_header}Content-Type: text/plain\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    ))
}
