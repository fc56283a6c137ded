//! A browser is a client: Debian's Chromium, headless, opens the page step06 serves for
//! `GET /`, and the page's own WebSocket code echoes text and binary messages of every
//! frame-length encoding, opens and closes more connections, and closes with 1000.
//!
//! The browser is driven over its DevTools protocol: JSON messages on a WebSocket, spoken
//! here with the same tungstenite client the other checks use. Where Chromium is not
//! installed the test says so and passes, unless `WORKSHOP_REQUIRE_CHROMIUM=1` (CI sets it).

use std::io::{BufRead, BufReader};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::sync::mpsc;
use std::thread;
use std::time::Duration;

use serde_json::{Value, json};
use stepcheck::{PATIENCE, Server, chromium};
use tungstenite::{Message, WebSocket};

const BIN: &str = env!("CARGO_BIN_EXE_step06-ws-epoll");

/// Headless Chromium with its DevTools endpoint on a free loopback port. Dropping it
/// kills the browser (by its pid) and removes its profile.
struct Browser {
    child: Child,
    profile: PathBuf,
    /// `ws://127.0.0.1:PORT/devtools/browser/ID`, from the browser's stderr.
    devtools: String,
}

impl Browser {
    fn launch(chromium: &Path) -> Browser {
        let profile = std::env::temp_dir().join(format!("step06-chromium-{}", std::process::id()));
        let mut child = chromium::headless(chromium, &profile)
            .args([
                "--remote-debugging-address=127.0.0.1",
                "--remote-debugging-port=0",
                "about:blank",
            ])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|err| panic!("cannot start {}: {err}", chromium.display()));
        // The browser says where its DevTools listen on stderr; keep reading (and
        // dropping) the rest so that it never blocks on a full pipe.
        let stderr = BufReader::new(child.stderr.take().expect("stderr is piped"));
        let (tx, rx) = mpsc::channel();
        thread::spawn(move || {
            for line in stderr.lines().map_while(Result::ok) {
                if let Some(url) = line.strip_prefix("DevTools listening on ") {
                    let _ = tx.send(url.trim().to_string());
                }
            }
        });
        let devtools = rx.recv_timeout(PATIENCE);
        let mut browser = Browser {
            child,
            profile,
            devtools: String::new(),
        };
        browser.devtools = devtools.unwrap_or_else(|_| {
            panic!("Chromium did not announce its DevTools endpoint within {PATIENCE:?}")
        });
        browser
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        // After `Browser.close` the browser ends its helper processes and exits by
        // itself; give it a few seconds, then kill it (by its pid) if it has not.
        for _ in 0..50 {
            if let Ok(Some(_)) = self.child.try_wait() {
                break;
            }
            thread::sleep(Duration::from_millis(100));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.profile);
    }
}

/// A DevTools session attached to one tab.
struct DevTools {
    socket: WebSocket<TcpStream>,
    next_id: u64,
    /// The tab's session, once attached.
    session: Option<String>,
}

impl DevTools {
    fn connect(url: &str) -> DevTools {
        let host = url
            .strip_prefix("ws://")
            .and_then(|rest| rest.split('/').next())
            .unwrap_or_else(|| panic!("not a ws:// URL: {url}"));
        let stream = TcpStream::connect(host)
            .unwrap_or_else(|err| panic!("cannot reach Chromium's DevTools at {host}: {err}"));
        stream.set_read_timeout(Some(PATIENCE)).unwrap();
        let (socket, _) = tungstenite::client(url, stream)
            .unwrap_or_else(|err| panic!("no DevTools handshake at {url}: {err}"));
        DevTools {
            socket,
            next_id: 1,
            session: None,
        }
    }

    /// Send a command and wait for its answer, skipping the events in between.
    fn call(&mut self, method: &str, params: Value) -> Value {
        let id = self.next_id;
        self.next_id += 1;
        let mut command = json!({ "id": id, "method": method, "params": params });
        if let Some(session) = &self.session {
            command["sessionId"] = json!(session);
        }
        self.socket
            .send(Message::text(command.to_string()))
            .unwrap_or_else(|err| panic!("cannot send {method} to Chromium: {err}"));
        loop {
            let message = self
                .socket
                .read()
                .unwrap_or_else(|err| panic!("no answer from Chromium to {method}: {err}"));
            let Ok(text) = message.to_text() else {
                continue;
            };
            let answer: Value = serde_json::from_str(text).expect("DevTools speaks JSON");
            if answer["id"] != id {
                continue; // an event
            }
            if let Some(error) = answer.get("error") {
                panic!("Chromium refused {method}: {error}");
            }
            return answer["result"].clone();
        }
    }

    /// Evaluate `expression` in the tab, await it if it is a promise, and return its value.
    fn eval(&mut self, expression: &str) -> Value {
        let result = self.call(
            "Runtime.evaluate",
            json!({ "expression": expression, "awaitPromise": true, "returnByValue": true }),
        );
        if let Some(exception) = result.get("exceptionDetails") {
            panic!("the page threw while running {expression:?}: {exception}");
        }
        result["result"]["value"].clone()
    }
}

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
    let browser = Browser::launch(&chromium);
    let mut devtools = DevTools::connect(&browser.devtools);

    let page = format!("http://{}/", server.addr);
    let target = devtools.call("Target.createTarget", json!({ "url": page }));
    let attached = devtools.call(
        "Target.attachToTarget",
        json!({ "targetId": target["targetId"], "flatten": true }),
    );
    devtools.session = Some(attached["sessionId"].as_str().unwrap().to_string());
    // The page may still be loading: wait for its script to have defined `ready`.
    let mut loaded = false;
    for _ in 0..100 {
        if devtools.eval("typeof ready !== 'undefined'") == json!(true) {
            loaded = true;
            break;
        }
        thread::sleep(Duration::from_millis(100));
    }
    assert!(loaded, "the page from {page} never ran its script");

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

    devtools.session = None; // a command to the browser, not the tab
    let _ = devtools.call("Browser.close", json!({}));
    drop(browser);
}
