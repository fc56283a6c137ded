//! The page in a real browser: Debian's Chromium, headless, at 1280×720, driven over its
//! DevTools protocol. A real step (step06's binary) feeds live through a pipe while
//! loadgen opens a few thousand connections to it; the page must draw them all. Then a
//! client that never reads sits on the stream while a flood of lines goes by.
//!
//! Where Chromium is not installed the tests say so and pass, unless
//! `WORKSHOP_REQUIRE_CHROMIUM=1` (CI sets it).

mod support;

use std::io::{BufRead, Write};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Mutex;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use loadgen::{ConnectOptions, Pace, Pool, Target};
use serde_json::{Value, json};
use stepcheck::devtools::{Browser, DevTools};
use stepcheck::{PATIENCE, chromium};
use support::{Live, Plumbing};

/// One browser at a time: the machine has two cores, and each test runs a browser, a
/// server and a client.
static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());

/// Connections loadgen opens: a few thousand, under any open-file limit a test meets.
const CONNS: usize = 3000;

/// A step's binary beside live's: `cargo test --workspace` builds it before any test runs;
/// after `cargo test -p live` alone it may be missing, and is built here, in the same
/// profile as live's.
fn step_binary(name: &str) -> PathBuf {
    let bin = Path::new(support::BIN).parent().unwrap().join(name);
    if bin.exists() {
        return bin;
    }
    let workspace = Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap();
    let mut cargo = Command::new(env!("CARGO"));
    cargo
        .current_dir(workspace)
        .args(["build", "--quiet", "--offline", "-p", name, "--bin", name]);
    if !cfg!(debug_assertions) {
        cargo.arg("--release");
    }
    let status = cargo.status().expect("cargo runs");
    assert!(status.success(), "cannot build {name}: {status}");
    bin
}

/// Opens the page in a new tab and waits until it has caught up with live's history.
fn open_page(browser: &Browser, live: SocketAddr) -> DevTools {
    let url = format!("http://{live}/");
    let mut page = DevTools::open(browser, &url);
    assert!(
        page.wait_for("typeof live !== 'undefined' && live.caughtUp", PATIENCE),
        "the page at {url} never caught up with live's event stream"
    );
    page
}

/// Runs in the page: what a projector would show, measured. The smallest text on the
/// page and on its charts, whether it fits 1280×720 without scrolling, what it loaded from
/// where, how much of the connections chart's width step06's line spans, and the longest wait
/// from a line's arrival to its drawing.
const MEASURE: &str = r#"(() => {
  let smallest = Infinity;
  for (const el of document.querySelectorAll("body *")) {
    const own = [...el.childNodes].some((n) => n.nodeType === Node.TEXT_NODE && n.textContent.trim() !== "");
    if (own && el.offsetParent !== null) smallest = Math.min(smallest, parseFloat(getComputedStyle(el).fontSize));
  }
  const canvas = document.getElementById("conns-chart");
  const pixels = canvas.getContext("2d").getImageData(0, 0, canvas.width, canvas.height).data;
  // Columns with a pixel of step06's colour: the line crosses the whole plot, its
  // name at the end only a few columns.
  const columns = new Set();
  for (let i = 0; i < pixels.length; i += 4) {
    if (pixels[i] === 0x56 && pixels[i + 1] === 0xB4 && pixels[i + 2] === 0xE9) columns.add((i / 4) % canvas.width);
  }
  return {
    smallest_text: smallest,
    smallest_chart_text: live.smallestTextPx,
    width: document.documentElement.scrollWidth,
    height: document.documentElement.scrollHeight,
    loaded: performance.getEntriesByType("resource").map((e) => e.name),
    coloured_share: columns.size / canvas.width,
    max_draw_lag_ms: live.maxDrawLagMs,
  };
})()"#;

/// A real step under a real loadgen: the page's `window.latest.conns` reaches the count
/// loadgen holds, its chart holds every memory line that went through live (and draws
/// them, in step06's colour), within 1280×720, text 24 px or more, nothing loaded from
/// elsewhere. Breaks if lines are lost between stdin and the page, or the page stops
/// drawing, or outgrows the projector.
#[test]
fn the_page_draws_a_real_step_under_loadgen() {
    let Some(chromium) = chromium::find_or_skip("live's browser test") else {
        return;
    };
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let step_bin = step_binary("step06-ws-epoll");

    // step06-ws-epoll --json | live
    let mut step = Command::new(&step_bin)
        .args(["--addr", "127.0.0.1:0", "--json", "--report-every", "0.1"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap_or_else(|err| panic!("cannot start {}: {err}", step_bin.display()));
    let live = Live::start(Plumbing::From(Stdio::from(step.stdout.take().unwrap())));
    let _kill_step = KillOnDrop(&mut step);

    // The step's `listening` line, as live passed it through.
    let deadline = Instant::now() + PATIENCE;
    let step_addr: SocketAddr = loop {
        if let Some(first) = live.passed().first() {
            let line: Value = serde_json::from_str(first).expect("the step speaks JSON");
            break line["addr"].as_str().unwrap().parse().unwrap();
        }
        assert!(
            Instant::now() < deadline,
            "no listening line passed through live"
        );
        std::thread::sleep(Duration::from_millis(20));
    };

    let browser = Browser::launch(&chromium, "live");
    let mut page = open_page(&browser, live.addr);

    // loadgen, from this process: a ramp of a couple of seconds, so the chart has a slope.
    common::raise_fd_limit().expect("the open-file limit can be raised to the hard limit");
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let target: Target = format!("ws://{step_addr}/").parse().unwrap();
    let mut pool = Pool::new(ConnectOptions::new(target));
    let pace = Pace {
        concurrency: 64,
        rate: Some(2000.0),
    };
    runtime.block_on(pool.grow_to_with(CONNS, pace, |_, _| {}));
    assert_eq!(
        pool.len(),
        CONNS,
        "loadgen opened {} of {CONNS}",
        pool.len()
    );

    let reached = page.wait_for(
        &format!("window.latest !== null && window.latest.conns === {CONNS}"),
        PATIENCE,
    );
    assert!(
        reached,
        "the page's window.latest never reached {CONNS} connections: {}",
        page.eval("JSON.stringify(window.latest)")
    );

    // Every memory line that went through live is a point of the chart, in order.
    let memory_conns = || -> Vec<Value> {
        live.passed()
            .iter()
            .filter_map(|l| serde_json::from_str::<Value>(l).ok())
            .filter(|l| l["event"] == "memory")
            .map(|l| l["conns"].clone())
            .collect()
    };
    let page_conns = |page: &mut DevTools| {
        page.eval(r#"(live.series["step06-ws-epoll"] || []).map((p) => p.conns)"#)
    };
    let deadline = Instant::now() + PATIENCE;
    while page_conns(&mut page) != json!(memory_conns()) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    let passed = memory_conns();
    assert_eq!(
        page_conns(&mut page),
        json!(passed),
        "the chart's points against the lines live passed through"
    );
    assert!(passed.len() >= 3, "a ramp has several points: {passed:?}");

    let seen = page.eval(MEASURE);
    eprintln!("the page, measured: {seen}");
    assert!(
        seen["smallest_text"].as_f64().unwrap() >= 24.0,
        "text under 24 px: {seen}"
    );
    assert!(
        seen["smallest_chart_text"].as_f64().unwrap() >= 24.0,
        "chart text under 24 px: {seen}"
    );
    assert!(
        seen["width"].as_u64().unwrap() <= 1280 && seen["height"].as_u64().unwrap() <= 720,
        "the page outgrows 1280×720: {seen}"
    );
    let own = format!("http://{}/", live.addr);
    for url in seen["loaded"].as_array().unwrap() {
        assert!(
            url.as_str().unwrap().starts_with(&own),
            "the page loaded {url} from elsewhere"
        );
    }
    assert!(
        seen["coloured_share"].as_f64().unwrap() > 0.6,
        "no line in step06's colour on the connections chart: {seen}"
    );

    if let Some(path) = std::env::var_os("LIVE_SCREENSHOT") {
        std::fs::write(&path, page.screenshot()).unwrap();
    }
    pool.close();
    drop(page);
    browser.close();
}

/// A client that asks for the stream and never reads stays connected while a real page
/// keeps up with a flood of lines far larger than any buffer, live reads its stdin all
/// the while, its memory stays within a bound, and the points the stalled client missed are
/// counted and told to it once it reads again.
/// Breaks if live keeps a queue per browser (memory grows with the flood), cuts off a
/// browser that stops reading, or waits for one before reading on.
#[test]
fn a_client_that_never_reads_costs_a_bounded_amount() {
    let Some(chromium) = chromium::find_or_skip("live's browser test") else {
        return;
    };
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let mut live = Live::start(Plumbing::Piped);
    let browser = Browser::launch(&chromium, "live-stalled");
    let mut page = open_page(&browser, live.addr);

    // The stalled client: a small receive buffer, one request, and not one byte read.
    let socket = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    socket.connect(&live.addr.into()).unwrap();
    let mut stalled: std::net::TcpStream = socket.into();
    stalled
        .write_all(b"GET /events HTTP/1.1\r\nHost: live\r\n\r\n")
        .unwrap();

    // Warm up: a few lines through, then live's resident set is the baseline.
    let warm: Vec<String> = (0..100).map(flood_line).collect();
    live.feed(&warm.iter().map(String::as_str).collect::<Vec<_>>());
    assert!(page.wait_for(
        "window.latest !== null && window.latest.conns === 99",
        PATIENCE
    ));
    let (before, _) = support::rss_and_peak(live.pid());

    // The flood: 40 000 lines of 1 KiB, from a thread, as fast as live takes them.
    const LINES: usize = 40_000;
    let mut stdin = live.stdin.take().unwrap();
    let (done, fed) = mpsc::channel();
    std::thread::spawn(move || {
        let mut all = Vec::new();
        for n in 100..100 + LINES {
            all.extend_from_slice(flood_line(n).as_bytes());
            all.push(b'\n');
        }
        let _ = done.send(stdin.write_all(&all).map(|()| stdin));
    });
    let stdin = fed
        .recv_timeout(PATIENCE)
        .expect("live stopped reading its stdin while a client did not read")
        .expect("live reads its stdin");
    live.stdin = Some(stdin);

    let last = 100 + LINES - 1;
    assert!(
        page.wait_for(
            &format!("window.latest !== null && window.latest.conns === {last}"),
            PATIENCE
        ),
        "the reading page stopped updating: {}",
        page.eval("JSON.stringify(window.latest)")
    );
    assert_eq!(
        live.stats()["browsers"],
        2,
        "both the page and the stalled client are connected"
    );
    let (_, peak) = support::rss_and_peak(live.pid());
    let grown = peak.saturating_sub(before);
    eprintln!(
        "live: {} MiB before the flood, {} MiB at its peak, after {LINES} lines of 1 KiB",
        before >> 20,
        peak >> 20
    );
    assert!(
        grown < 24 << 20,
        "live grew by {} MiB over {LINES} lines of 1 KiB: a client that does not read must cost a bounded amount",
        grown >> 20
    );

    // The stalled client, reading at last: it is still connected, and told what it missed.
    let mut reader = std::io::BufReader::new(stalled);
    reader.get_ref().set_read_timeout(Some(PATIENCE)).unwrap();
    let mut dropped = None;
    let mut line = String::new();
    while reader.read_line(&mut line).is_ok_and(|n| n > 0) {
        if let Some(data) = line.strip_prefix("data: ")
            && let Ok(status) = serde_json::from_str::<Value>(data)
            && status["dropped"].as_u64().is_some_and(|d| d > 0)
        {
            dropped = status["dropped"].as_u64();
            break;
        }
        line.clear();
    }
    let dropped = dropped.expect("the stalled client was cut off, or never told what it missed");
    eprintln!("the stalled client missed {dropped} points");
    drop(page);
    browser.close();
}

/// A memory line of about 1 KiB: the figures, and a field the page does not know.
fn flood_line(conns: usize) -> String {
    format!(
        r#"{{"event":"memory","step":"flood","conns":{conns},"rss_bytes":3000000,"base_rss_bytes":2000000,"per_conn_bytes":100,"threads":1,"padding":"{}"}}"#,
        "x".repeat(880)
    )
}

/// Kills a child (by its pid) when dropped.
struct KillOnDrop<'a>(&'a mut std::process::Child);

impl Drop for KillOnDrop<'_> {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}
