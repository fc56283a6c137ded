//! Headless Chromium driven over its DevTools protocol: JSON messages on a WebSocket, spoken
//! with tungstenite's client. For the checks that need a real browser: step06's page and
//! its Origin rule, live's page.

use std::io::{BufRead, BufReader};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use tungstenite::{Message, WebSocket};

use crate::{PATIENCE, chromium};

/// Headless Chromium with its DevTools endpoint on a free loopback port. Dropping it
/// kills the browser (by its pid) and removes its profile.
pub struct Browser {
    child: Child,
    profile: PathBuf,
    /// `ws://127.0.0.1:PORT/devtools/browser/ID`, from the browser's stderr.
    pub devtools: String,
}

impl Browser {
    /// Start Chromium at 1280×720 on `about:blank`; `name` names its profile directory.
    pub fn launch(chromium: &Path, name: &str) -> Browser {
        // One profile per browser: the tests of one file run at the same time.
        static LAUNCHED: AtomicUsize = AtomicUsize::new(0);
        let profile = std::env::temp_dir().join(format!(
            "{name}-chromium-{}-{}",
            std::process::id(),
            LAUNCHED.fetch_add(1, Ordering::Relaxed)
        ));
        let mut child = chromium::headless(chromium, &profile)
            .args([
                "--remote-debugging-address=127.0.0.1",
                "--remote-debugging-port=0",
                "--window-size=1280,720",
                "--hide-scrollbars",
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

    /// Ask the browser to close (its tabs and helpers go with it); the drop then waits.
    pub fn close(&self) {
        let mut devtools = DevTools::connect(&self.devtools);
        let _ = devtools.call("Browser.close", json!({}));
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

/// A DevTools session: to the browser after [`DevTools::connect`], to one tab after
/// [`DevTools::open`].
pub struct DevTools {
    socket: WebSocket<TcpStream>,
    next_id: u64,
    session: Option<String>,
    /// The events that came while waiting for answers (e.g. `Log.entryAdded`).
    pub events: Vec<Value>,
}

impl DevTools {
    pub fn connect(url: &str) -> DevTools {
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
            events: Vec::new(),
        }
    }

    /// A new tab at `url`, 1280×720, and this session attached to it.
    pub fn open(browser: &Browser, url: &str) -> DevTools {
        let mut devtools = DevTools::connect(&browser.devtools);
        // A window of its own: a tab behind another is hidden, and a hidden tab's timers run
        // once a second at most, as they should where nobody looks.
        let target = devtools.call(
            "Target.createTarget",
            json!({ "url": url, "newWindow": true }),
        );
        let attached = devtools.call(
            "Target.attachToTarget",
            json!({ "targetId": target["targetId"], "flatten": true }),
        );
        devtools.session = Some(attached["sessionId"].as_str().unwrap().to_string());
        devtools.call(
            "Emulation.setDeviceMetricsOverride",
            json!({ "width": 1280, "height": 720, "deviceScaleFactor": 1, "mobile": false }),
        );
        devtools
    }

    /// Send a command and wait for its answer, skipping the events in between.
    pub fn call(&mut self, method: &str, params: Value) -> Value {
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
                self.events.push(answer); // an event
                continue;
            }
            if let Some(error) = answer.get("error") {
                panic!("Chromium refused {method}: {error}");
            }
            return answer["result"].clone();
        }
    }

    /// Evaluate `expression` in the tab, await it if it is a promise, and return its value.
    pub fn eval(&mut self, expression: &str) -> Value {
        let result = self.call(
            "Runtime.evaluate",
            json!({ "expression": expression, "awaitPromise": true, "returnByValue": true }),
        );
        if let Some(exception) = result.get("exceptionDetails") {
            panic!("the page threw while running {expression:?}: {exception}");
        }
        result["result"]["value"].clone()
    }

    /// Evaluate `expression` until it is true; `false` if it never was within `patience`.
    pub fn wait_for(&mut self, expression: &str, patience: Duration) -> bool {
        let deadline = Instant::now() + patience;
        while Instant::now() < deadline {
            if self.eval(expression) == json!(true) {
                return true;
            }
            thread::sleep(Duration::from_millis(50));
        }
        false
    }

    /// What the tab shows now, as PNG bytes.
    pub fn screenshot(&mut self) -> Vec<u8> {
        use base64::Engine;
        let shot = self.call("Page.captureScreenshot", json!({ "format": "png" }));
        let data = shot["data"].as_str().expect("a screenshot is base64 text");
        base64::engine::general_purpose::STANDARD
            .decode(data)
            .expect("DevTools sends standard base64")
    }
}
