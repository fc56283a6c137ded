//! live as a feeder sees it, and as a browser's event stream sees it, without a browser:
//! every line passes through to stdout unchanged; JSON objects are drawn, anything else is
//! counted and skipped; and the picture stays when stdin ends or stdout closes.

mod support;

use std::io::Write;

use serde_json::{Value, json};
use support::{Events, Live, Plumbing, lines, memory_line};

/// Lines that are not JSON objects (text, an array, bytes that are not UTF-8, a line too
/// long to draw) are counted and skipped; the good lines around them are drawn in order;
/// every line, bad ones included, goes to stdout unchanged; live goes on.
/// Breaks if a bad line stops live, is drawn, or goes uncounted.
#[test]
fn bad_lines_are_counted_and_skipped() {
    let mut live = Live::start(Plumbing::Piped);
    let events = Events::open(live.addr);
    let long = format!(r#"{{"event":"memory","pad":"{}"}}"#, "x".repeat(5000));
    let (one, two) = (
        memory_line("step05-epoll", 1),
        memory_line("step05-epoll", 2),
    );
    live.feed(&[
        &one,
        "step05-epoll  conns 1  rss 2.8 MiB",
        "[1, 2]",
        &long,
        "",
        &two,
    ]);
    live.stdin
        .as_mut()
        .unwrap()
        .write_all(b"{\"event\":\"memory\",\"step\":\"\xff\"}\n")
        .unwrap();
    let three = memory_line("step05-epoll", 3);
    live.feed(&[&three]);

    // The last line drawn, and a status that counts all four bad ones, in either order.
    let (mut last_drawn, mut all_counted) = (false, false);
    let seen = events.until(|e| {
        last_drawn |= e.kind == "message" && e.json()["line"]["conns"] == 3;
        all_counted |= e.kind == "status" && e.json()["bad"] == 4;
        last_drawn && all_counted
    });
    let drawn: Vec<Value> = lines(&seen);
    let expected: Vec<Value> = [&one, &two, &three]
        .iter()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(
        drawn, expected,
        "the good lines, drawn in order, and nothing else"
    );
    assert!(live.is_running(), "a bad line stopped live");

    // Everything passed through, byte for byte, bad lines included (the blank one too).
    let deadline = std::time::Instant::now() + support::SOON;
    while live.passed().len() < 8 && std::time::Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    let passed = live.passed();
    assert_eq!(passed.len(), 8, "every line goes to stdout");
    assert!(passed[0] == one && passed[3] == long && passed[7] == three);
    assert_eq!(passed[1], "step05-epoll  conns 1  rss 2.8 MiB");
    assert_eq!(passed[6], "{\"event\":\"memory\",\"step\":\"\u{fffd}\"}");
    assert_eq!(live.stats()["bad"], 4);
}

/// When stdin ends, live keeps serving the last picture: a browser that comes afterwards
/// gets every point and is told the input ended; live runs until it is stopped.
/// Breaks if live exits (or stops serving) at the end of its input.
#[test]
fn the_picture_stays_when_stdin_ends() {
    let mut live = Live::start(Plumbing::Piped);
    let fed: Vec<String> = (0..=5)
        .map(|n| memory_line("step06-ws-epoll", n * 100))
        .collect();
    live.feed(&fed.iter().map(String::as_str).collect::<Vec<_>>());
    live.close_stdin();

    let first = Events::open(live.addr);
    first.until(|e| e.kind == "status" && e.json()["input_open"] == false);
    // Time for a live that would exit at the end of its input to have done so.
    std::thread::sleep(std::time::Duration::from_millis(500));
    assert!(live.is_running(), "live exited when its input ended");

    let later = Events::open(live.addr);
    let seen = later.until(|e| e.kind == "status");
    let conns: Vec<Value> = lines(&seen).iter().map(|l| l["conns"].clone()).collect();
    assert_eq!(conns, [0, 100, 200, 300, 400, 500].map(|n| json!(n)));
    assert_eq!(seen.last().unwrap().json()["input_open"], false);
}

/// With its stdout closed (`… | live | head -1`), live still draws every line, and says
/// the passthrough is closed.
/// Breaks if live exits, or stops drawing, when a write to stdout fails.
#[test]
fn lines_are_drawn_when_stdout_is_closed() {
    let mut live = Live::start(Plumbing::StdoutClosed);
    let events = Events::open(live.addr);
    // Enough lines to meet the closed pipe: the first write fails, and the rest must not.
    let fed: Vec<String> = (1..=200).map(|n| memory_line("step05-epoll", n)).collect();
    live.feed(&fed.iter().map(String::as_str).collect::<Vec<_>>());
    let closed = |e: &support::Event| e.kind == "status" && e.json()["passthrough_open"] == false;
    let seen = events.until(|e| e.kind == "message" && e.json()["line"]["conns"] == 200);
    assert_eq!(lines(&seen).len(), 200, "every line drawn");
    if !seen.iter().any(closed) {
        events.until(closed);
    }
    live.feed(&[&memory_line("step05-epoll", 201)]);
    events.until(|e| e.kind == "message" && e.json()["line"]["conns"] == 201);
    assert!(live.is_running(), "live exited when its stdout closed");
}

/// A browser that reconnects resumes after the last event it got (its `Last-Event-ID`),
/// without a reset and without the events it already has.
/// Breaks if a reconnect starts the stream over (or skips events).
#[test]
fn a_reconnecting_browser_resumes_where_it_was() {
    use std::io::{BufRead, BufReader};
    let mut live = Live::start(Plumbing::Piped);
    live.feed(&[&memory_line("s", 1), &memory_line("s", 2)]);
    let first = Events::open(live.addr);
    first.until(|e| e.kind == "status");
    live.feed(&[&memory_line("s", 3)]);
    first.until(|e| e.kind == "message" && e.json()["line"]["conns"] == 3);

    // The id of the second event, as the first stream named it: ask for what follows it.
    let mut stream = std::net::TcpStream::connect(live.addr).unwrap();
    stream.set_read_timeout(Some(stepcheck::PATIENCE)).unwrap();
    stream
        .write_all(b"GET /events HTTP/1.1\r\nHost: live\r\n\r\n")
        .unwrap();
    let mut reader = BufReader::new(stream.try_clone().unwrap());
    let mut second_id = None;
    for line in (&mut reader).lines().map_while(Result::ok) {
        if line.starts_with("id: ") && line.ends_with("-1") {
            second_id = Some(line["id: ".len()..].to_string());
            break;
        }
    }
    drop(reader);
    drop(stream);
    let id = second_id.expect("the stream names its events");

    let mut stream = std::net::TcpStream::connect(live.addr).unwrap();
    stream.set_read_timeout(Some(stepcheck::PATIENCE)).unwrap();
    write!(
        stream,
        "GET /events HTTP/1.1\r\nHost: live\r\nLast-Event-ID: {id}\r\n\r\n"
    )
    .unwrap();
    let mut got = Vec::new();
    for line in BufReader::new(stream).lines().map_while(Result::ok) {
        if line == "event: status" {
            break;
        }
        if line.starts_with("event: ") || line.starts_with("data: ") {
            got.push(line);
        }
    }
    assert_eq!(got.len(), 1, "only the event after {id}, no reset: {got:?}");
    assert!(got[0].contains(r#""conns":3"#), "{got:?}");
}

/// With stdout not being read (a terminal paused with Ctrl-S), live still reads its stdin
/// as fast as it comes, draws every line, and counts the lines stdout missed.
/// Breaks if live waits on stdout: then the step that feeds it waits too.
#[test]
fn a_stuck_stdout_never_slows_the_feeder() {
    let mut live = Live::start(Plumbing::StdoutStuck);
    let events = Events::open(live.addr);
    // 20 MiB of lines: far more than the pipe to stdout and live's queue for it hold.
    const LINES: usize = 20_000;
    let mut stdin = live.stdin.take().unwrap();
    let (done, fed) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let pad = "x".repeat(900);
        let mut all = String::new();
        for n in 1..=LINES {
            all += &format!(
                "{{\"event\":\"memory\",\"step\":\"s\",\"conns\":{n},\"pad\":\"{pad}\"}}\n"
            );
        }
        let _ = done.send(stdin.write_all(all.as_bytes()).map(|()| stdin));
    });
    let stdin = fed
        .recv_timeout(stepcheck::PATIENCE)
        .expect("live stopped reading its stdin while its stdout was not read")
        .expect("live reads its stdin");
    live.stdin = Some(stdin);
    let (mut last_drawn, mut lost) = (false, false);
    events.until(|e| {
        last_drawn |= e.kind == "message" && e.json()["line"]["conns"] == LINES;
        lost |= e.kind == "status" && e.json()["passthrough_lost"].as_u64() > Some(0);
        last_drawn && lost
    });
    assert!(live.stuck.is_some(), "stdout was held, unread, all along");
}
