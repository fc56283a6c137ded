//! `report --live` and `report --million --live` on small runs: the page's event stream
//! (read here as a browser's EventSource reads it) gets each step's memory lines while the
//! step is measured, the report's progress, and the million as it opens; and the page stays
//! up after the run, until the report is stopped.

use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

use serde_json::Value;

/// How long a small run may take in a debug build on a busy machine.
const PATIENCE: Duration = Duration::from_secs(240);

/// The report, with `--live 127.0.0.1:0`, and where its page is.
struct Report {
    child: Child,
    page: SocketAddr,
    /// What it printed on stdout, once it is stopped.
    stdout: mpsc::Receiver<String>,
}

impl Report {
    fn start(name: &str, args: &[&str]) -> Report {
        let bins = Path::new(env!("CARGO_BIN_EXE_report")).parent().unwrap();
        assert!(
            bins.join("step08-reuseport").exists() && bins.join("loadgen").exists(),
            "no step binaries in {}: run `cargo test --workspace`, which builds them first",
            bins.display()
        );
        let out = std::env::temp_dir().join(format!("report-live-{name}-{}", std::process::id()));
        let mut child = Command::new(env!("CARGO_BIN_EXE_report"))
            .args(args)
            .args([
                "--live",
                "127.0.0.1:0",
                "--bin-dir",
                bins.to_str().unwrap(),
                "--out",
            ])
            .arg(&out)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("the report starts");
        let (page_tx, page_rx) = mpsc::channel();
        let stderr = BufReader::new(child.stderr.take().unwrap());
        thread::spawn(move || {
            for line in stderr.lines().map_while(Result::ok) {
                if let Some(rest) = line.strip_prefix("report: live page at http://") {
                    let _ = page_tx.send(rest.split('/').next().unwrap().to_string());
                }
            }
        });
        let (stdout_tx, stdout) = mpsc::channel();
        let mut child_stdout = child.stdout.take().unwrap();
        thread::spawn(move || {
            let mut text = String::new();
            let _ = std::io::Read::read_to_string(&mut child_stdout, &mut text);
            let _ = stdout_tx.send(text);
        });
        let page = page_rx
            .recv_timeout(Duration::from_secs(60))
            .expect("the report says where its live page is")
            .parse()
            .unwrap();
        Report {
            child,
            page,
            stdout,
        }
    }

    /// Every event of the page's stream, until the report says it is done (and stays up).
    fn events_until_done(&self) -> Vec<(String, Value)> {
        let mut stream = TcpStream::connect(self.page).expect("the page's server accepts");
        stream.set_read_timeout(Some(PATIENCE)).unwrap();
        stream
            .write_all(b"GET /events HTTP/1.1\r\nHost: report\r\n\r\n")
            .unwrap();
        let deadline = Instant::now() + PATIENCE;
        let mut events = Vec::new();
        let mut kind = "message".to_string();
        for line in BufReader::new(stream).lines().map_while(Result::ok) {
            assert!(
                Instant::now() < deadline,
                "the report did not finish within {PATIENCE:?}"
            );
            if let Some(k) = line.strip_prefix("event: ") {
                kind = k.to_string();
            } else if let Some(data) = line.strip_prefix("data: ") {
                let value: Value = serde_json::from_str(data).expect("event data is JSON");
                let done = value["line"]["event"] == "progress"
                    && value["line"]["doing"]
                        .as_str()
                        .is_some_and(|d| d.starts_with("done"));
                events.push((kind.clone(), value));
                if done {
                    return events;
                }
            } else if line.is_empty() {
                kind = "message".to_string();
            }
        }
        panic!(
            "the page's stream ended before the report was done; it sent {} events",
            events.len()
        );
    }

    /// Stop it (it would serve the page until Ctrl-C) and return what it printed; it must
    /// still be serving the page a second after its run.
    fn stop(mut self) -> String {
        thread::sleep(Duration::from_secs(1));
        let mut page = TcpStream::connect(self.page)
            .expect("the page is still served after the run: with --live, until Ctrl-C");
        page.write_all(b"GET / HTTP/1.1\r\nHost: report\r\n\r\n")
            .unwrap();
        let mut head = String::new();
        BufReader::new(page).read_line(&mut head).unwrap();
        assert!(
            head.starts_with("HTTP/1.1 200"),
            "GET / after the run: {head}"
        );
        assert!(
            matches!(self.child.try_wait(), Ok(None)),
            "the report exited after its run: with --live it keeps the page up until Ctrl-C"
        );
        let _ = self.child.kill();
        let _ = self.child.wait();
        self.stdout
            .recv_timeout(Duration::from_secs(10))
            .unwrap_or_default()
    }
}

/// The lines the report posted (the steps' own, and its own events), in order.
fn lines(events: &[(String, Value)]) -> Vec<&Value> {
    events
        .iter()
        .filter(|(kind, _)| kind == "message")
        .map(|(_, v)| &v["line"])
        .collect()
}

/// `report --live`: the run's plan, then each step's progress and its memory lines up to
/// the count while that step is measured (before the report says it is done with it), and
/// the tables at the end, with the page still up.
/// Breaks if the memory lines reach the page only once a step is done, or not at all.
#[test]
fn report_live_draws_each_step_as_it_is_measured() {
    let report = Report::start(
        "steps",
        &[
            "--quick",
            "--steps",
            "step05-epoll,step06-ws-epoll",
            "--conns",
            "300",
        ],
    );
    let events = report.events_until_done();
    let lines = lines(&events);

    let plan = lines
        .iter()
        .find(|l| l["event"] == "plan")
        .expect("a plan event");
    assert_eq!(
        plan["steps"],
        serde_json::json!(["step05-epoll", "step06-ws-epoll"])
    );
    for (index, step) in [(1, "step05-epoll"), (2, "step06-ws-epoll")] {
        let at = |pred: &dyn Fn(&Value) -> bool| lines.iter().position(|l| pred(l));
        let started = at(&|l| l["event"] == "progress" && l["step"] == step && l["index"] == index)
            .unwrap_or_else(|| panic!("no progress for {step}, step {index} of the run"));
        let finished = at(&|l| {
            l["event"] == "progress"
                && l["step"] == step
                && l["doing"].as_str().is_some_and(|d| d.contains("300 held"))
        })
        .unwrap_or_else(|| panic!("no summary line for {step}"));
        let memory = |l: &Value| l["event"] == "memory" && l["step"] == step;
        assert!(
            lines[started..finished]
                .iter()
                .any(|l| memory(l) && l["conns"].as_u64() > Some(0)),
            "{step}: no memory line reached the page while it was measured"
        );
        assert!(
            lines.iter().any(|l| memory(l) && l["conns"] == 300),
            "{step}: its memory lines never reached 300"
        );
    }
    let stdout = report.stop();
    assert!(
        stdout.contains("| step06-ws-epoll |"),
        "the tables were printed:\n{stdout}"
    );
}

/// `report --million --live` on a small million: `million` events while the connections
/// open, held rising to the count, with the server's user space, loadgen's memory and (where
/// /proc/slabinfo is readable) the kernel's; the last one marked done.
/// Breaks if the million's figures are posted only at the end, or lack a figure.
#[test]
fn report_million_live_draws_the_million_as_it_opens() {
    let report = Report::start("million", &["--million", "--conns", "2000"]);
    let events = report.events_until_done();
    let million: Vec<&Value> = lines(&events)
        .into_iter()
        .filter(|l| l["event"] == "million")
        .collect();
    assert!(
        million.len() >= 2,
        "the million as it opens, not only at the end: {million:?}"
    );
    let (first, last) = (million[0], million[million.len() - 1]);
    assert_eq!(
        last["done"], true,
        "the last million event is marked done: {last}"
    );
    assert_eq!(last["held"], 2000, "{last}");
    assert!(
        first["held"].as_u64() < Some(2000),
        "the first event came before all were held: {first}"
    );
    assert!(last["server_user_bytes"].is_u64(), "{last}");
    assert!(last["loadgen_rss_bytes"].as_u64() > Some(0), "{last}");
    let slab_readable = std::fs::read_to_string("/proc/slabinfo").is_ok();
    assert_eq!(
        last["kernel_bytes"].is_i64(),
        slab_readable,
        "the kernel's figure where slabinfo is readable, null where not: {last}"
    );
    let stdout = report.stop();
    assert!(
        stdout.contains("WebSocket connections on one machine"),
        "the table was printed:\n{stdout}"
    );
}
