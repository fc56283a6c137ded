//! The WebSocket opening handshake (RFC 6455, section 4), by hand.
//!
//! A WebSocket connection starts life as an HTTP/1.1 `GET` that asks to switch protocols:
//!
//! ```text
//! GET / HTTP/1.1
//! Host: 127.0.0.1:9006
//! Upgrade: websocket
//! Connection: Upgrade
//! Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==
//! Sec-WebSocket-Version: 13
//! ```
//!
//! and the server agrees with `101 Switching Protocols`, proving it understood by hashing
//! the key. After the blank line that ends those heads, both sides speak frames
//! (see `frame.rs`).
//!
//! Everything here works on bytes: no I/O, no state kept between calls. The event loop keeps
//! the bytes of a head that has not fully arrived and calls [`parse_request`] again when
//! more come in; that is all "resumable" needs to mean, because httparse does not remember
//! anything between calls either.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use sha1::{Digest, Sha1};

/// The longest request head we accept, all lines together. Browsers send well under 2 KiB.
/// (nginx, by default, allows 8 KiB per line and 4 × 8 KiB per head:
/// `large_client_header_buffers 4 8k`.) Longer → `431`.
pub const MAX_HEAD: usize = 8 * 1024;

/// At most this many header lines. More → `431` as well.
const MAX_HEADERS: usize = 64;

/// The GUID every server appends to the client's key (RFC 6455, section 1.3).
const WS_GUID: &[u8] = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11";

/// What a client too slow to send its request head gets before we close: `408`.
pub const TIMEOUT_RESPONSE: &str =
    "HTTP/1.1 408 Request Timeout\r\nContent-Length: 0\r\nConnection: close\r\n\r\n";

/// What a client gets when the server holds all the bytes it may (`--max-buffered`) and its
/// head, in pieces, would take more: `503`, try again later.
pub const BUSY_RESPONSE: &str =
    "HTTP/1.1 503 Service Unavailable\r\nContent-Length: 0\r\nConnection: close\r\n\r\n";

/// A request head we serve: an upgrade, or a browser asking for the page.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Request {
    /// Asked, correctly, to become a WebSocket: answer with [`switching_protocols`].
    Upgrade(Upgrade),
    /// A plain `GET /`, a browser tab opened on the address: answer with `200` and the
    /// page of `page.rs` ([`crate::page::response`]), which connects back as a WebSocket,
    /// then close.
    Page,
}

/// A request head that asked, correctly, to become a WebSocket.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Upgrade {
    /// The value of our `Sec-WebSocket-Accept` header, derived from the client's key.
    pub accept: String,
    /// How many bytes the head took. Anything after it is already WebSocket frames.
    pub head_len: usize,
}

/// Why a request head is refused. Each becomes an HTTP error response, then a close.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reject {
    /// The head is longer than [`MAX_HEAD`], or has more than 64 header lines: `431`.
    HeadTooLarge,
    /// Not HTTP at all, or not HTTP/1.1: `400`.
    Malformed,
    /// Not a `GET`: `405`.
    NotGet,
    /// No `Host` header, or more than one: `400`. HTTP/1.1 requires exactly one (RFC 9112,
    /// section 3.2), and RFC 6455 (section 4.1) has the client send it.
    BadHost,
    /// A plain HTTP request with no `Upgrade` header at all, for another path than `/`:
    /// `426` with a short text saying this is a WebSocket server.
    PlainHttp,
    /// Asked to upgrade, but not with `Upgrade: websocket` and a `Connection` header that
    /// holds the `upgrade` token: `400`.
    NotWebSocket,
    /// `Sec-WebSocket-Version` missing or not 13: `426`, telling the client which version
    /// we speak.
    BadVersion,
    /// `Sec-WebSocket-Version` more than once: `400`. A request carries it once; a second
    /// one makes a malformed request, not a version we do not speak.
    TwoVersions,
    /// `Sec-WebSocket-Key` missing, sent twice, or not the base64 of 16 bytes: `400`.
    BadKey,
    /// A browser says the WebSocket is opened by a page of another origin than ours, and
    /// not one allowed with `--allow-origin`: `403`.
    Forbidden,
}

/// Parse the request head in `buf` (everything received so far) and check it. Pages of the
/// `allowed_origins` may open WebSockets here besides the server's own (see
/// `origin_allowed`).
///
/// - `Ok(None)`: the head is not complete yet; call again when more bytes arrive.
/// - `Ok(Some(Request::Upgrade(upgrade)))`: answer with [`switching_protocols`]; frames
///   start at `head_len`.
/// - `Ok(Some(Request::Page))`: answer with the page, and close.
/// - `Err(reject)`: answer with [`Reject::response`] and close.
pub fn parse_request(buf: &[u8], allowed_origins: &[String]) -> Result<Option<Request>, Reject> {
    // Never look past MAX_HEAD bytes: a head that is not complete within them is too long,
    // whatever follows. This also bounds the work of re-parsing from the start each time.
    let window = &buf[..buf.len().min(MAX_HEAD)];
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut request = httparse::Request::new(&mut headers);
    let head_len = match request.parse(window) {
        Ok(httparse::Status::Complete(head_len)) => head_len,
        Ok(httparse::Status::Partial) if window.len() == MAX_HEAD => {
            return Err(Reject::HeadTooLarge);
        }
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(httparse::Error::TooManyHeaders) => return Err(Reject::HeadTooLarge),
        Err(_) => return Err(Reject::Malformed),
    };

    // httparse fills these in for every complete head.
    let method = request
        .method
        .expect("bug: httparse returned a complete head without a method");
    if request.version != Some(1) {
        return Err(Reject::Malformed);
    }
    if method != "GET" {
        return Err(Reject::NotGet);
    }

    let headers = request.headers;
    let mut hosts = header_values(headers, "host").map(trim);
    let (Some(host), None) = (hosts.next(), hosts.next()) else {
        return Err(Reject::BadHost);
    };

    let upgrade = header_values(headers, "upgrade");
    if upgrade.clone().next().is_none() {
        return match request.path {
            Some("/") => Ok(Some(Request::Page)),
            _ => Err(Reject::PlainHttp),
        };
    }
    // Both headers are comma-separated token lists: `Connection: keep-alive, Upgrade` is
    // what Firefox sends. Tokens compare case-insensitively.
    let upgrade_to_websocket = upgrade
        .flat_map(tokens)
        .any(|t| t.eq_ignore_ascii_case(b"websocket"));
    let connection_upgrade = header_values(headers, "connection")
        .flat_map(tokens)
        .any(|t| t.eq_ignore_ascii_case(b"upgrade"));
    if !upgrade_to_websocket || !connection_upgrade {
        return Err(Reject::NotWebSocket);
    }

    // Exactly one version header, saying 13: the RFC's version (drafts used 8 and others).
    let mut versions = header_values(headers, "sec-websocket-version").map(trim);
    match (versions.next(), versions.next()) {
        (Some(b"13"), None) => {}
        (Some(_), Some(_)) => return Err(Reject::TwoVersions),
        _ => return Err(Reject::BadVersion),
    }

    // Exactly one key, the base64 of 16 bytes (a random nonce chosen by the client).
    let mut keys = header_values(headers, "sec-websocket-key").map(trim);
    let (Some(key), None) = (keys.next(), keys.next()) else {
        return Err(Reject::BadKey);
    };
    match BASE64.decode(key) {
        Ok(nonce) if nonce.len() == 16 => {}
        _ => return Err(Reject::BadKey),
    }

    // A browser names the page that opens the WebSocket, and any page may try: without
    // this check, a page of any site the user visits could talk to this server through
    // the user's browser (cross-site WebSocket hijacking). No `Origin`: not a browser.
    let mut origins = header_values(headers, "origin").map(trim);
    match (origins.next(), origins.next()) {
        (None, _) => {}
        (Some(origin), None) if origin_allowed(origin, host, allowed_origins) => {}
        _ => return Err(Reject::Forbidden),
    }

    Ok(Some(Request::Upgrade(Upgrade {
        accept: accept_key(key),
        head_len,
    })))
}

/// Whether a page of `origin` may open a WebSocket on a request for `host`: it is the
/// server's own page (`http://` + the request's `Host`, the page of `GET /`), or it is
/// listed in `allowed` (`--allow-origin`; `*` allows any). Origins and hosts compare
/// without regard to case, as host names do.
fn origin_allowed(origin: &[u8], host: &[u8], allowed: &[String]) -> bool {
    let own = origin.split_at_checked(7).is_some_and(|(scheme, rest)| {
        scheme.eq_ignore_ascii_case(b"http://") && rest.eq_ignore_ascii_case(host)
    });
    own || allowed
        .iter()
        .any(|allowed| allowed == "*" || allowed.as_bytes().eq_ignore_ascii_case(origin))
}

/// An `--allow-origin` value: `*`, or an origin as a browser sends it, `scheme://host` or
/// `scheme://host:port`, with no path (not even `/`: it would never match).
pub fn parse_origin(value: &str) -> Result<String, String> {
    let well_formed = value == "*"
        || value.split_once("://").is_some_and(|(scheme, rest)| {
            !scheme.is_empty() && !rest.is_empty() && !rest.contains('/')
        });
    match well_formed {
        true => Ok(value.to_string()),
        false => Err(format!(
            "an origin is `*` or `scheme://host[:port]`, with no path (e.g. `http://localhost:8000`), not {value:?}"
        )),
    }
}

/// `Sec-WebSocket-Accept` = base64(sha1(key + GUID)). The client checks it, so it knows the
/// server really speaks WebSocket and is not a cache replaying an old answer.
pub fn accept_key(key: &[u8]) -> String {
    let mut sha1 = Sha1::new();
    sha1.update(key);
    sha1.update(WS_GUID);
    BASE64.encode(sha1.finalize())
}

/// The answer that turns the connection into a WebSocket.
pub fn switching_protocols(accept: &str) -> String {
    format!(
        "HTTP/1.1 101 Switching Protocols\r\n\
         Upgrade: websocket\r\n\
         Connection: Upgrade\r\n\
         Sec-WebSocket-Accept: {accept}\r\n\
         \r\n"
    )
}

impl Reject {
    /// The status line, e.g. `HTTP/1.1 405 Method Not Allowed`.
    fn status_line(self) -> &'static str {
        match self {
            Reject::HeadTooLarge => "HTTP/1.1 431 Request Header Fields Too Large",
            Reject::Malformed
            | Reject::BadHost
            | Reject::NotWebSocket
            | Reject::TwoVersions
            | Reject::BadKey => "HTTP/1.1 400 Bad Request",
            Reject::Forbidden => "HTTP/1.1 403 Forbidden",
            Reject::NotGet => "HTTP/1.1 405 Method Not Allowed",
            Reject::PlainHttp | Reject::BadVersion => "HTTP/1.1 426 Upgrade Required",
        }
    }

    /// The whole response: status line, the headers this status calls for, and a one-line
    /// body for whoever reads it with curl. The connection closes after it.
    pub fn response(self) -> String {
        let (extra_header, body) = match self {
            Reject::HeadTooLarge => ("", "request head over 8 KiB\n"),
            Reject::Malformed => ("", "not an HTTP/1.1 request\n"),
            Reject::NotGet => ("Allow: GET\r\n", "a WebSocket handshake is a GET\n"),
            Reject::BadHost => ("", "a request carries exactly one Host header\n"),
            Reject::PlainHttp => (
                "Upgrade: websocket\r\n",
                "This is a WebSocket echo server: connect with a WebSocket client, \
                 e.g. `websocat ws://HOST:PORT/`.\n",
            ),
            Reject::NotWebSocket => (
                "",
                "expected `Upgrade: websocket` and `Connection: Upgrade`\n",
            ),
            Reject::BadVersion => (
                "Sec-WebSocket-Version: 13\r\n",
                "only WebSocket version 13 is spoken here\n",
            ),
            Reject::TwoVersions => ("", "a request carries one Sec-WebSocket-Version header\n"),
            Reject::BadKey => (
                "",
                "a request carries one Sec-WebSocket-Key, the base64 of 16 bytes\n",
            ),
            Reject::Forbidden => (
                "",
                "WebSockets from this page's origin are not allowed here (see --allow-origin)\n",
            ),
        };
        format!(
            "{}\r\n{extra_header}Content-Type: text/plain\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            self.status_line(),
            body.len()
        )
    }
}

/// The values of every header called `name` (header names are case-insensitive).
fn header_values<'a>(
    headers: &'a [httparse::Header<'a>],
    name: &'a str,
) -> impl Iterator<Item = &'a [u8]> + Clone {
    headers
        .iter()
        .filter(move |h| h.name.eq_ignore_ascii_case(name))
        .map(|h| h.value)
}

/// The comma-separated tokens of a header value, trimmed.
fn tokens(value: &[u8]) -> impl Iterator<Item = &[u8]> {
    value.split(|&b| b == b',').map(trim)
}

fn trim(bytes: &[u8]) -> &[u8] {
    bytes.trim_ascii()
}
