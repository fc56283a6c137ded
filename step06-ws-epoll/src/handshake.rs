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

#[cfg(test)]
mod tests {
    use super::*;

    /// The handshake example of RFC 6455, section 1.3.
    const RFC_KEY: &str = "dGhlIHNhbXBsZSBub25jZQ==";
    const RFC_ACCEPT: &str = "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=";

    /// The upgrade `head` asks for; panics, saying what it got instead, if it is not one.
    fn upgrade(head: &[u8]) -> Upgrade {
        match parse_request(head, &[]) {
            Ok(Some(Request::Upgrade(upgrade))) => upgrade,
            other => panic!("not upgraded: {other:?}"),
        }
    }

    fn request(extra: &str) -> String {
        format!(
            "GET /chat HTTP/1.1\r\nHost: server.example.com\r\nUpgrade: websocket\r\n\
             Connection: Upgrade\r\nSec-WebSocket-Key: {RFC_KEY}\r\nSec-WebSocket-Version: 13\r\n{extra}\r\n"
        )
    }

    /// The accept key computed for RFC 6455's example key is the one the RFC gives.
    #[test]
    fn accept_key_matches_rfc_6455_example() {
        assert_eq!(accept_key(RFC_KEY.as_bytes()), RFC_ACCEPT);
    }

    /// RFC 6455's example request is upgraded with a 101 response carrying the right accept key.
    #[test]
    fn rfc_example_request_upgrades() {
        let head = request("");
        let upgrade = upgrade(head.as_bytes());
        assert_eq!(
            upgrade,
            Upgrade {
                accept: RFC_ACCEPT.into(),
                head_len: head.len()
            }
        );
        assert_eq!(
            switching_protocols(&upgrade.accept),
            format!(
                "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
                 Sec-WebSocket-Accept: {RFC_ACCEPT}\r\n\r\n"
            )
        );
    }

    /// A frame that arrives right behind the request head is not counted as part of the head.
    #[test]
    fn bytes_after_the_head_are_not_part_of_it() {
        let head = request("");
        let mut bytes = head.clone().into_bytes();
        bytes.extend_from_slice(&[0x81, 0x80, 1, 2, 3, 4]); // a first frame, same segment
        let upgrade = upgrade(&bytes);
        assert_eq!(upgrade.head_len, head.len());
    }

    /// A head that has not fully arrived yet is answered "not yet", never refused.
    #[test]
    fn every_prefix_of_a_head_is_partial() {
        let head = request("");
        for end in 0..head.len() {
            assert_eq!(
                parse_request(&head.as_bytes()[..end], &[]),
                Ok(None),
                "prefix of {end} bytes"
            );
        }
    }

    /// Header names and tokens match whatever their case, and spaces around the key are ignored.
    #[test]
    fn header_names_and_tokens_are_case_insensitive() {
        let head = "GET / HTTP/1.1\r\nhost: x\r\nUPGRADE: WebSocket\r\nconnection: keep-alive, upgrade\r\n\
                    sec-websocket-key:   dGhlIHNhbXBsZSBub25jZQ==  \r\nsec-websocket-version: 13\r\n\r\n";
        let upgrade = upgrade(head.as_bytes());
        assert_eq!(upgrade.accept, RFC_ACCEPT);
    }

    /// Each bad request (not GET, no single Host, not HTTP/1.1, no upgrade, bad version, bad key) has its reason.
    #[test]
    fn refusals_map_to_their_status() {
        let cases: [(&str, Reject); 11] = [
            (
                "POST / HTTP/1.1\r\nUpgrade: websocket\r\n\r\n",
                Reject::NotGet,
            ),
            (
                "GET / HTTP/1.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n",
                Reject::BadHost,
            ),
            (
                "GET / HTTP/1.1\r\nHost: a\r\nhost: b\r\n\r\n",
                Reject::BadHost,
            ),
            ("GET /x HTTP/1.1\r\nHost: x\r\n\r\n", Reject::PlainHttp),
            (
                "GET / HTTP/1.0\r\nUpgrade: websocket\r\n\r\n",
                Reject::Malformed,
            ),
            ("\x16\x03\x01 not http\r\n\r\n", Reject::Malformed),
            (
                "GET / HTTP/1.1\r\nHost: x\r\nUpgrade: h2c\r\nConnection: Upgrade\r\n\r\n",
                Reject::NotWebSocket,
            ),
            (
                "GET / HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: keep-alive\r\n\r\n",
                Reject::NotWebSocket,
            ),
            (
                "GET / HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 8\r\n\r\n",
                Reject::BadVersion,
            ),
            (
                "GET / HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 13\r\n\r\n",
                Reject::BadKey,
            ),
            (
                "GET / HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 13\r\n\
                 Sec-WebSocket-Key: c2hvcnQ=\r\n\r\n",
                Reject::BadKey,
            ),
        ];
        for (head, expected) in cases {
            assert_eq!(
                parse_request(head.as_bytes(), &[]),
                Err(expected),
                "{head:?}"
            );
        }
    }

    /// A plain `GET /` (no `Upgrade`) is not refused: it asks for the page, a 200.
    #[test]
    fn a_plain_get_of_the_root_asks_for_the_page() {
        let head = "GET / HTTP/1.1\r\nHost: x\r\n\r\n";
        assert_eq!(parse_request(head.as_bytes(), &[]), Ok(Some(Request::Page)));
    }

    /// A version header sent twice is a malformed request (`400`), even saying 13 both times;
    /// one other version is a version we do not speak (`426`).
    #[test]
    fn a_second_version_header_is_malformed() {
        assert_eq!(
            parse_request(request("Sec-WebSocket-Version: 13\r\n").as_bytes(), &[]),
            Err(Reject::TwoVersions)
        );
        let other = request("").replace("Version: 13", "Version: 8");
        assert_eq!(
            parse_request(other.as_bytes(), &[]),
            Err(Reject::BadVersion)
        );
    }

    /// No `Origin`, or the server's own (`http://` + Host, any case), is upgraded; another is
    /// refused with 403 unless listed (exactly) or `*` is; two `Origin` headers are refused.
    #[test]
    fn an_origin_is_the_servers_own_or_allowed() {
        let with = |origin: &str| request(&format!("Origin: {origin}\r\n"));
        let upgraded = |head: String, allowed: &[String]| {
            matches!(
                parse_request(head.as_bytes(), allowed),
                Ok(Some(Request::Upgrade(_)))
            )
        };
        let refused = |head: String, allowed: &[String]| {
            parse_request(head.as_bytes(), allowed) == Err(Reject::Forbidden)
        };
        let listed = ["http://localhost:8000".to_string()];
        let any = ["*".to_string()];

        assert!(upgraded(request(""), &[]), "no Origin");
        assert!(upgraded(with("http://server.example.com"), &[]), "our own");
        assert!(
            upgraded(with("HTTP://Server.Example.COM"), &[]),
            "our own, other case"
        );
        assert!(upgraded(with("http://localhost:8000"), &listed), "listed");
        assert!(upgraded(with("http://evil.example"), &any), "any, with *");
        for other in [
            "http://evil.example",
            "https://server.example.com",
            "http://server.example.com:8080",
            "http://server.example.com.evil.example",
            "http://server.example.com/",
            "server.example.com",
            "null",
            "",
        ] {
            assert!(refused(with(other), &listed), "{other:?}");
        }
        let twice =
            request("Origin: http://server.example.com\r\nOrigin: http://server.example.com\r\n");
        assert!(refused(twice, &any), "two Origin headers");
        assert!(
            Reject::Forbidden
                .response()
                .starts_with("HTTP/1.1 403 Forbidden\r\n"),
            "{}",
            Reject::Forbidden.response()
        );
    }

    /// `--allow-origin` takes `*` or an origin without a path; anything else is an error.
    #[test]
    fn allow_origin_values_are_origins() {
        for good in ["*", "http://localhost:8000", "https://example.com"] {
            assert_eq!(parse_origin(good).as_deref(), Ok(good));
        }
        for bad in [
            "",
            "localhost:8000",
            "http://",
            "http://example.com/",
            "://x",
        ] {
            assert!(parse_origin(bad).is_err(), "{bad:?}");
        }
    }

    /// A head over 8 KiB is refused even before it has all arrived; exactly 8 KiB is accepted.
    #[test]
    fn head_over_8_kib_is_refused_complete_or_not() {
        let long = format!("X-Filler: {}\r\n", "a".repeat(MAX_HEAD));
        assert_eq!(
            parse_request(request(&long).as_bytes(), &[]),
            Err(Reject::HeadTooLarge)
        );
        // Still arriving, but already past the limit: no need to wait for the rest.
        assert_eq!(
            parse_request(&request(&long).as_bytes()[..MAX_HEAD + 1], &[]),
            Err(Reject::HeadTooLarge)
        );
        // Just under the limit is fine.
        let filler = MAX_HEAD - request("X-Filler: \r\n").len();
        let fits = request(&format!("X-Filler: {}\r\n", "a".repeat(filler)));
        assert_eq!(fits.len(), MAX_HEAD);
        assert!(parse_request(fits.as_bytes(), &[]).unwrap().is_some());
    }

    /// A refusal carries what its status needs: 426 our version, 405 `Allow`, a sized body.
    #[test]
    fn responses_carry_the_headers_their_status_needs() {
        let version = Reject::BadVersion.response();
        assert!(
            version.starts_with("HTTP/1.1 426 Upgrade Required\r\n"),
            "{version}"
        );
        assert!(
            version.contains("\r\nSec-WebSocket-Version: 13\r\n"),
            "{version}"
        );
        assert!(Reject::NotGet.response().contains("\r\nAllow: GET\r\n"));
        let plain = Reject::PlainHttp.response();
        let (head, body) = plain.split_once("\r\n\r\n").unwrap();
        assert!(
            head.contains(&format!("Content-Length: {}", body.len())),
            "{plain}"
        );
        assert!(body.contains("WebSocket"), "{plain}");
    }
}

#[cfg(test)]
mod proptests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        /// Arbitrary bytes never panic the parser.
        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..2048)) {
            let _ = parse_request(&bytes, &[]);
        }

        /// An upgrade request arriving in two pieces, cut anywhere before its last byte, with a
        /// first frame right behind it: the first piece alone is "not yet", and the two put
        /// together, as the event loop keeps them, are the upgrade for that request's own key,
        /// with the head ending at its blank line. Breaks if a partial head is answered, if the
        /// head's length takes in the frame behind it, or if the accept key is not the key's
        /// (e.g. a hard-coded answer that passes the RFC's one example).
        #[test]
        fn a_head_in_two_pieces_is_the_upgrade_for_its_key(
            cut in any::<prop::sample::Index>(),
            nonce in proptest::array::uniform16(any::<u8>()),
        ) {
            let key = BASE64.encode(nonce);
            let head = format!(
                "GET / HTTP/1.1\r\nHost: h\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
                 Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n"
            );
            let mut bytes = head.clone().into_bytes();
            bytes.extend_from_slice(&[0x81, 0x80, 1, 2, 3, 4]); // a first frame, same segment
            let (first, second) = bytes.split_at(cut.index(head.len()));
            prop_assert_eq!(parse_request(first, &[]), Ok(None), "the first {} bytes", first.len());
            let mut received = first.to_vec();
            received.extend_from_slice(second);
            let expected = Upgrade { accept: accept_key(key.as_bytes()), head_len: head.len() };
            prop_assert_eq!(parse_request(&received, &[]), Ok(Some(Request::Upgrade(expected))));
        }

        /// A request that asks for the upgrade correctly in every other way, among arbitrary
        /// extra header lines, but whose key is missing, not base64, the base64 of other than
        /// 16 bytes, or sent twice, is refused for its key, never upgraded.
        /// Breaks if the key check is dropped or loosened.
        #[test]
        fn an_upgrade_without_one_good_key_is_refused(
            junk in proptest::collection::vec(junk_header(), 0..8),
            keys in bad_keys(),
        ) {
            let mut head = String::from("GET / HTTP/1.1\r\n");
            for (name, value) in &junk {
                head += &format!("{name}: {value}\r\n");
            }
            head += "Host: h\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 13\r\n";
            for key in &keys {
                head += &format!("Sec-WebSocket-Key: {key}\r\n");
            }
            head += "\r\n";
            prop_assert_eq!(parse_request(head.as_bytes(), &[]), Err(Reject::BadKey), "{}", head);
        }
    }

    /// A header line that is none of the ones the handshake reads.
    fn junk_header() -> impl Strategy<Value = (String, String)> {
        ("[A-Za-z][A-Za-z0-9-]{0,15}", "[ -~]{0,40}").prop_filter(
            "a header the handshake reads",
            |(name, _)| {
                let name = name.to_ascii_lowercase();
                !["host", "upgrade", "connection"].contains(&name.as_str())
                    && !name.starts_with("sec-websocket")
            },
        )
    }

    /// The values of the `Sec-WebSocket-Key` lines of a request that has no one good key:
    /// none, one that is not base64, one that decodes to other than 16 bytes, or two good ones.
    fn bad_keys() -> impl Strategy<Value = Vec<String>> {
        let not_16_bytes = proptest::collection::vec(any::<u8>(), 0..40)
            .prop_filter("16 bytes is a good key", |nonce| nonce.len() != 16)
            .prop_map(|nonce| vec![BASE64.encode(nonce)]);
        let not_a_key = "[!-~]{1,30}"
            .prop_filter("a good key", |key| {
                BASE64.decode(key).map_or(true, |n| n.len() != 16)
            })
            .prop_map(|key| vec![key]);
        let two = proptest::array::uniform16(any::<u8>())
            .prop_map(|nonce| vec![BASE64.encode(nonce), BASE64.encode(nonce)]);
        prop_oneof![Just(Vec::new()), not_16_bytes, not_a_key, two]
    }
}
