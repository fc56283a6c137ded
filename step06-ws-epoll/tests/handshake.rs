//! The opening handshake (`src/handshake.rs`), bytes in and verdicts out, no socket: RFC
//! 6455's own example, every refusal with its status, the page a browser gets, and (with
//! proptest) arbitrary bytes, heads cut anywhere, and keys that are not one good key.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use proptest::prelude::*;
use step06_ws_epoll::handshake::{
    MAX_HEAD, Reject, Request, Upgrade, accept_key, parse_origin, parse_request,
    switching_protocols,
};
use step06_ws_epoll::page;

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

/// The page a plain `GET /` gets is a 200 whose length is the page's, and it loads nothing
/// from elsewhere.
#[test]
fn page_is_whole_and_self_contained() {
    let response = page::response();
    let (head, body) = response.split_once("\r\n\r\n").unwrap();
    assert!(head.starts_with("HTTP/1.1 200 OK\r\n"), "{head}");
    assert!(
        head.contains(&format!("Content-Length: {}", body.len())),
        "{head}"
    );
    for external in ["http://", "https://", " src=", "@import", "url("] {
        assert!(!body.contains(external), "the page refers to {external}");
    }
    assert!(
        body.contains("location.host"),
        "the page must connect back to its own address"
    );
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
