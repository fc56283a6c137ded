//! A browser is a client: Debian's Chromium, headless, opens the page step06 serves for
//! `GET /`, and the page's own WebSocket code echoes text and binary messages of every
//! frame-length encoding, opens and closes more connections, and closes with 1000. A page
//! of another site (another port) cannot open a WebSocket here, unless `--allow-origin`
//! lists it.
//!
//! The browser is driven over its DevTools protocol (`stepcheck::devtools`). Where Chromium is not
//! installed the test says so and passes, unless `WORKSHOP_REQUIRE_CHROMIUM=1` (CI sets it).

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use stepcheck::devtools::{Browser, DevTools};
use stepcheck::{PATIENCE, Server, chromium};

const BIN: &str = env!("CARGO_BIN_EXE_step06-ws-epoll");

/// How long a page may take to load and run its script.
const LOADING: Duration = Duration::from_secs(10);

/// Runs in the page: every echo through the page's own `echo()`, checked there. Returns
/// one line per message that came back wrong (none when all is well).
const ECHOES: &str = r#"(async () => {
  await ready;
  const wrong = [];
  const ascii = (n) => "x".repeat(n);
  const bytes = (n) => Uint8Array.from({ length: n }, (_, i) => i % 251);
  for (const n of [0, 125, 126, 65536, 1048576]) {
    const text = ascii(n);
    const back = await echo(text);
    if (back !== text) wrong.push(`text of ${n} bytes came back as ${back === null ? "nothing: closed" : typeof back}`);
    const sent = bytes(n);
    const got = await echo(sent);
    if (!(got instanceof ArrayBuffer)) { wrong.push(`binary of ${n} bytes came back as ${got === null ? "nothing: closed" : typeof got}`); continue; }
    const view = new Uint8Array(got);
    if (view.length !== n || view.some((b, i) => b !== sent[i])) wrong.push(`binary of ${n} bytes came back as ${view.length} other bytes`);
  }
  // 70 000 characters of 1 to 4 UTF-8 bytes each.
  const chars = ["a", "é", "€", "😀"];
  const utf8 = Array.from({ length: 70000 }, (_, i) => chars[i % 4]).join("");
  const back = await echo(utf8);
  if (back !== utf8) wrong.push(`a 70 000-character UTF-8 text came back as ${back === null ? "nothing: closed" : back.length + " UTF-16 units"}`);
  return wrong;
})()"#;

/// The page, in a real browser: it loads from the server, connects back, and echoes every
/// size; its K extra connections show in the memory line; it closes with 1000.
#[test]
fn the_page_echoes_in_a_real_browser() {
    let Some(chromium) = chromium::find_or_skip("the browser test") else {
        return;
    };
    let server = Server::start(BIN, &[]);
    let browser = Browser::launch(&chromium, "step06");

    // The page's script defines `ready` once it runs.
    let page = format!("http://{}/", server.addr);
    let mut devtools = DevTools::open(&browser, &page);
    assert!(
        devtools.wait_for("typeof ready !== 'undefined'", LOADING),
        "the page from {page} never ran its script"
    );

    let wrong = devtools.eval(ECHOES);
    assert_eq!(wrong, json!([]), "echoes through the page came back wrong");
    server.wait_for_memory_line(1);

    // K connections at once from the page: the memory line counts them, then lets them go.
    devtools.eval("openMany(5)");
    server.wait_for_memory_line(6);
    devtools.eval("closeAll()");
    server.wait_for_memory_line(1);

    let close = devtools.eval("closeMain().then((e) => ({ code: e.code, clean: e.wasClean }))");
    assert_eq!(
        close,
        json!({ "code": 1000, "clean": true }),
        "the page's close"
    );
    server.wait_for_memory_line(0);

    browser.close();
}

/// A page of another site: a static server on another loopback port, serving one page
/// whose script tries a WebSocket to the address it is given. Dropping it stops the server.
struct OtherSite {
    addr: SocketAddr,
    stop: Arc<AtomicBool>,
    serving: Option<JoinHandle<()>>,
}

/// The other site's page: `tryWebSocket(url)` resolves to what became of the attempt.
const OTHER_PAGE: &str = r#"<!doctype html>
<meta charset="utf-8"><title>another site</title>
<script>
function tryWebSocket(url) {
  return new Promise((resolve) => {
    const ws = new WebSocket(url);
    ws.onopen = () => ws.send("from another site");
    ws.onmessage = (e) => { resolve("echoed: " + e.data); ws.close(); };
    ws.onclose = (e) => resolve("closed, code " + e.code);
  });
}
</script>"#;

impl OtherSite {
    fn serve() -> OtherSite {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind the other site");
        listener.set_nonblocking(true).unwrap();
        let addr = listener.local_addr().unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let stopped = Arc::clone(&stop);
        let response = format!(
            "HTTP/1.1 200 OK\r\nContent-Type: text/html\r\nContent-Length: {}\r\n\
             Connection: close\r\n\r\n{OTHER_PAGE}",
            OTHER_PAGE.len()
        );
        // Bounded: it stops when dropped, or after PATIENCE anyway.
        let serving = thread::spawn(move || {
            let start = Instant::now();
            while !stopped.load(Ordering::Relaxed) && start.elapsed() < PATIENCE {
                let Ok((mut stream, _)) = listener.accept() else {
                    thread::sleep(Duration::from_millis(10));
                    continue;
                };
                // Every request (the page, a favicon) gets the page.
                stream.set_nonblocking(false).unwrap();
                stream
                    .set_read_timeout(Some(Duration::from_secs(1)))
                    .unwrap();
                let mut head = [0u8; 4096];
                let _ = stream.read(&mut head);
                let _ = stream.write_all(response.as_bytes());
            }
        });
        OtherSite {
            addr,
            stop,
            serving: Some(serving),
        }
    }
}

impl Drop for OtherSite {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(serving) = self.serving.take() {
            let _ = serving.join();
        }
    }
}

/// A page of another origin (another port) cannot open a WebSocket here: the browser's
/// attempt fails, and the browser reports the server's `403`. The same page can, on a
/// server started with `--allow-origin` naming it. Breaks if the Origin check is removed
/// (the first attempt is echoed) or does not read `--allow-origin` (the second is refused).
#[test]
fn a_page_from_another_origin_is_refused() {
    let Some(chromium) = chromium::find_or_skip("the browser's Origin test") else {
        return;
    };
    let other = OtherSite::serve();
    let other_origin = format!("http://{}", other.addr);
    let server = Server::start(BIN, &[]);
    let allowing = Server::start(BIN, &["--allow-origin", &other_origin]);
    let browser = Browser::launch(&chromium, "step06");
    let mut devtools = DevTools::open(&browser, &format!("{other_origin}/"));
    assert!(
        devtools.wait_for("typeof tryWebSocket === 'function'", LOADING),
        "the page from {other_origin}/ never ran its script"
    );
    devtools.call("Log.enable", json!({}));
    let refused = devtools.eval(&format!("tryWebSocket('ws://{}/')", server.addr));
    assert_eq!(
        refused,
        json!("closed, code 1006"),
        "a page of {other_origin} opened a WebSocket to {}",
        server.addr
    );
    // The browser says why in its log; it may come a moment after the close event.
    let says_403 = |events: &[Value]| {
        events.iter().any(|event| {
            event["method"] == "Log.entryAdded"
                && event["params"]["entry"]["text"]
                    .as_str()
                    .is_some_and(|text| text.contains("403"))
        })
    };
    for _ in 0..50 {
        if says_403(&devtools.events) {
            break;
        }
        thread::sleep(Duration::from_millis(100));
        devtools.eval("0"); // collects the events that came meanwhile
    }
    assert!(
        says_403(&devtools.events),
        "the browser did not report a 403 for the refused WebSocket; its events: {:?}",
        devtools.events
    );

    let allowed = devtools.eval(&format!("tryWebSocket('ws://{}/')", allowing.addr));
    assert_eq!(
        allowed,
        json!("echoed: from another site"),
        "a page of {other_origin}, listed with --allow-origin, could not use the WebSocket"
    );

    browser.close();
}
