//! The client: loadgen's own binary holding the connections (in as many child processes as
//! its open-file limit asks for), told what to do on its stdin (`--orders`). It answers
//! each order with one JSON line; closing its stdin closes every connection.

use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use super::figures::Echoes;

/// loadgen, holding the connections until its stdin closes.
pub struct Client {
    child: Child,
    stdin: Option<ChildStdin>,
    lines: mpsc::Receiver<String>,
}

impl Client {
    /// Start loadgen opening `conns` connections to `url`.
    pub fn start(bin: &Path, url: &str, conns: usize) -> Result<Client, String> {
        let mut child = Command::new(bin)
            .args([url, "--conns", &conns.to_string(), "--orders"])
            // A burst of a million messages on two cores takes seconds; a probe, micros.
            .args(["--echo-timeout", "60", "--connect-timeout", "30"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            // Its progress bar and messages go straight to our stderr, for the audience.
            .stderr(Stdio::inherit())
            .spawn()
            .map_err(|err| format!("cannot start {}: {err}", bin.display()))?;
        let stdout = child.stdout.take().expect("bug: stdout is piped");
        let stdin = child.stdin.take();
        let (sender, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if sender.send(line).is_err() {
                    break;
                }
            }
        });
        Ok(Client {
            child,
            stdin,
            lines,
        })
    }

    /// loadgen's first process.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The summary of the opening, once every connection was tried.
    pub fn opened(&mut self, patience: Duration) -> Result<serde_json::Value, String> {
        self.answer(patience)
    }

    /// One message on every connection at once: the echoes, once all are back (or lost).
    pub fn burst(&mut self, patience: Duration) -> Result<Echoes, String> {
        self.order("burst", patience)
    }

    /// `n` echo probes on random connections.
    pub fn probe(&mut self, n: usize, patience: Duration) -> Result<Echoes, String> {
        self.order(&format!("probe {n}"), patience)
    }

    fn order(&mut self, order: &str, patience: Duration) -> Result<Echoes, String> {
        let stdin = self.stdin.as_mut().expect("bug: stdin is open until stop");
        writeln!(stdin, "{order}").map_err(|err| format!("loadgen is gone: {err}"))?;
        let answer = self.answer(patience)?;
        serde_json::from_value(answer).map_err(|err| format!("loadgen's answer to {order}: {err}"))
    }

    /// The next JSON line; loadgen's text lines go to stderr meanwhile.
    fn answer(&mut self, patience: Duration) -> Result<serde_json::Value, String> {
        let deadline = Instant::now() + patience;
        while Instant::now() < deadline {
            match self.lines.recv_timeout(Duration::from_secs(1)) {
                Ok(line) if line.starts_with('{') => {
                    return serde_json::from_str(&line)
                        .map_err(|err| format!("loadgen's answer: {err}"));
                }
                Ok(line) => eprintln!("loadgen: {line}"),
                Err(mpsc::RecvTimeoutError::Timeout) => {}
                Err(mpsc::RecvTimeoutError::Disconnected) => {
                    let status = self.child.wait().map_err(|e| e.to_string())?;
                    return Err(format!("loadgen exited ({status}) before answering"));
                }
            }
        }
        Err(format!(
            "no answer from loadgen within {} s",
            patience.as_secs()
        ))
    }

    /// Close its stdin: it closes every connection (in every child) and exits. Killed if
    /// still there after `patience`.
    pub fn stop(mut self, patience: Duration) {
        self.stdin = None;
        let deadline = Instant::now() + patience;
        while matches!(self.child.try_wait(), Ok(None)) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Client {
    /// Never left behind, even when the run stops half-way.
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
