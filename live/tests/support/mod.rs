//! What live's tests share: `live` itself as a child process, and a reader of its event
//! stream that speaks plain HTTP on a socket, as a browser's EventSource does.

#![allow(dead_code)] // each test file uses its own part of this

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc::{self, Receiver};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use serde_json::Value;
use stepcheck::PATIENCE;

pub const BIN: &str = env!("CARGO_BIN_EXE_live");

/// `live --addr 127.0.0.1:0`, its stdin ours to write, its stdout collected line by line
/// (or closed, or fed from elsewhere). Dropping it kills it, by its pid.
pub struct Live {
    pub child: Child,
    pub addr: SocketAddr,
    pub stdin: Option<ChildStdin>,
    /// Every line live passed through to its stdout so far.
    pub passed: Arc<Mutex<Vec<String>>>,
    /// The reading end of live's stdout, held and never read ([`Plumbing::StdoutStuck`]).
    pub stuck: Option<std::process::ChildStdout>,
}

/// Where live's stdin comes from, and what becomes of its stdout.
pub enum Plumbing {
    /// stdin from the test, stdout collected.
    Piped,
    /// stdin from the test, stdout a pipe whose reading end is closed at once.
    StdoutClosed,
    /// stdin from the test, stdout a pipe nobody reads (a terminal paused with Ctrl-S).
    StdoutStuck,
    /// stdin from another process's stdout (a step), stdout collected.
    From(Stdio),
}

impl Live {
    pub fn start(plumbing: Plumbing) -> Live {
        let mut command = Command::new(BIN);
        command
            .args(["--addr", "127.0.0.1:0"])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let stuck = matches!(plumbing, Plumbing::StdoutStuck);
        let (stdin, close_stdout) = match plumbing {
            Plumbing::Piped | Plumbing::StdoutStuck => (Stdio::piped(), false),
            Plumbing::StdoutClosed => (Stdio::piped(), true),
            Plumbing::From(source) => (source, false),
        };
        command.stdin(stdin);
        let mut child = command.spawn().expect("live starts");
        // live says where to point the browser on stderr, first thing.
        let stderr = BufReader::new(child.stderr.take().unwrap());
        let (tx, rx) = mpsc::channel();
        thread::spawn(move || {
            for line in stderr.lines().map_while(Result::ok) {
                eprintln!("[live] {line}");
                let _ = tx.send(line);
            }
        });
        let first = rx
            .recv_timeout(PATIENCE)
            .expect("live says where to point the browser on stderr");
        let addr = first
            .split("http://")
            .nth(1)
            .and_then(|rest| rest.split('/').next())
            .and_then(|addr| addr.parse().ok())
            .unwrap_or_else(|| panic!("no http://ADDR/ in live's first stderr line: {first}"));

        let passed = Arc::new(Mutex::new(Vec::new()));
        let stdout = child.stdout.take().unwrap();
        let mut held = None;
        if close_stdout {
            drop(stdout);
        } else if stuck {
            held = Some(stdout);
        } else {
            let passed = Arc::clone(&passed);
            thread::spawn(move || {
                // Bytes, not `lines()`: a line that is not UTF-8 must not end the reading.
                for line in BufReader::new(stdout).split(b'\n').map_while(Result::ok) {
                    passed
                        .lock()
                        .unwrap()
                        .push(String::from_utf8_lossy(&line).into_owned());
                }
            });
        }
        let stdin = child.stdin.take();
        Live {
            child,
            addr,
            stdin,
            passed,
            stuck: held,
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Write `lines` to live's stdin, each with its newline.
    pub fn feed(&mut self, lines: &[&str]) {
        let stdin = self.stdin.as_mut().expect("live's stdin is ours");
        for line in lines {
            stdin
                .write_all(format!("{line}\n").as_bytes())
                .expect("live reads its stdin");
        }
        stdin.flush().unwrap();
    }

    /// End live's input.
    pub fn close_stdin(&mut self) {
        drop(self.stdin.take());
    }

    /// Still running?
    pub fn is_running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// `GET /stats`, parsed.
    pub fn stats(&self) -> Value {
        let mut stream = TcpStream::connect(self.addr).expect("live accepts");
        stream.set_read_timeout(Some(PATIENCE)).unwrap();
        stream
            .write_all(b"GET /stats HTTP/1.1\r\nHost: live\r\n\r\n")
            .unwrap();
        let mut response = String::new();
        stream.read_to_string(&mut response).unwrap();
        let body = response
            .split("\r\n\r\n")
            .nth(1)
            .unwrap_or_else(|| panic!("no body in live's /stats answer: {response}"));
        serde_json::from_str(body.trim()).expect("/stats is JSON")
    }

    /// Lines passed through to stdout so far.
    pub fn passed(&self) -> Vec<String> {
        self.passed.lock().unwrap().clone()
    }
}

impl Drop for Live {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// One event of the stream: its type (`message` unless named) and its data.
#[derive(Debug, Clone)]
pub struct Event {
    pub kind: String,
    pub data: String,
}

impl Event {
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.data)
            .unwrap_or_else(|err| panic!("event data is JSON ({err}): {}", self.data))
    }
}

/// `GET /events`, read on a thread into a channel of events.
pub struct Events {
    pub events: Receiver<Event>,
}

impl Events {
    pub fn open(addr: SocketAddr) -> Events {
        let mut stream = TcpStream::connect(addr).expect("live accepts");
        stream
            .write_all(b"GET /events HTTP/1.1\r\nHost: live\r\nAccept: text/event-stream\r\n\r\n")
            .unwrap();
        let (tx, events) = mpsc::channel();
        thread::spawn(move || {
            let mut reader = BufReader::new(stream);
            let mut line = String::new();
            // The response head, up to its blank line.
            while reader.read_line(&mut line).is_ok_and(|n| n > 0) {
                let blank = line == "\r\n";
                line.clear();
                if blank {
                    break;
                }
            }
            let (mut kind, mut data) = (String::from("message"), String::new());
            while reader.read_line(&mut line).is_ok_and(|n| n > 0) {
                let text = line.trim_end_matches('\n');
                if text.is_empty() {
                    if !data.is_empty()
                        && tx
                            .send(Event {
                                kind: kind.clone(),
                                data: data.clone(),
                            })
                            .is_err()
                    {
                        return;
                    }
                    (kind, data) = (String::from("message"), String::new());
                } else if let Some(k) = text.strip_prefix("event: ") {
                    kind = k.to_string();
                } else if let Some(d) = text.strip_prefix("data: ") {
                    data = d.to_string();
                }
                line.clear();
            }
        });
        Events { events }
    }

    /// Events until `done` says so of one (that one included), within [`PATIENCE`].
    pub fn until(&self, mut done: impl FnMut(&Event) -> bool) -> Vec<Event> {
        let deadline = Instant::now() + PATIENCE;
        let mut seen = Vec::new();
        while let Some(left) = deadline.checked_duration_since(Instant::now()) {
            match self.events.recv_timeout(left) {
                Ok(event) => {
                    let stop = done(&event);
                    seen.push(event);
                    if stop {
                        return seen;
                    }
                }
                Err(_) => break,
            }
        }
        panic!(
            "the event stream did not get there within {PATIENCE:?}; it sent: {:?}",
            seen.iter().rev().take(5).collect::<Vec<_>>()
        );
    }
}

/// The lines inside the stream's `message` events, as they came.
pub fn lines(events: &[Event]) -> Vec<Value> {
    events
        .iter()
        .filter(|e| e.kind == "message")
        .map(|e| e.json()["line"].clone())
        .collect()
}

/// A memory line as a step prints it, with `conns` connections.
pub fn memory_line(step: &str, conns: usize) -> String {
    format!(
        r#"{{"event":"memory","step":"{step}","conns":{conns},"rss_bytes":{},"base_rss_bytes":2000000,"per_conn_bytes":{},"threads":1}}"#,
        2_000_000 + 100 * conns,
        if conns == 0 { 0 } else { 100 }
    )
}

/// `VmRSS` and `VmHWM` (the peak) of `pid`, in bytes.
pub fn rss_and_peak(pid: u32) -> (u64, u64) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let field = |name: &str| -> u64 {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|rest| rest.split_whitespace().next()?.parse::<u64>().ok())
            .map(|kib| kib * 1024)
            .unwrap_or_else(|| panic!("no {name} in /proc/{pid}/status"))
    };
    (field("VmRSS:"), field("VmHWM:"))
}

/// How long a thing may take here before a test calls it stuck.
pub const SOON: Duration = Duration::from_secs(5);
