//! `cargo build --release -p live && cargo run --release -p live --example cpu -- --browsers 10 --chromium`
//!
//! What `live` costs: it is fed 20 memory lines a second while N browsers watch, and its CPU
//! time (utime + stime from /proc/PID/stat) over the wall time is its share of a core; its
//! resident set (VmRSS, and the peak VmHWM) is read from /proc/PID/status at the end.
//!
//! The browsers are real tabs of headless Chromium with `--chromium` (five per browser
//! process: Chromium opens at most six connections to one server, and an event stream
//! holds one for good), or else readers of the event stream on plain sockets, which cost
//! live the same writes.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::process::{Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use stepcheck::chromium;
use stepcheck::devtools::{Browser, DevTools};

struct Args {
    browsers: usize,
    chromium: bool,
    seconds: u64,
    per_second: u64,
}

fn args() -> Args {
    let mut args = Args {
        browsers: 10,
        chromium: false,
        seconds: 60,
        per_second: 20,
    };
    let mut it = std::env::args().skip(1);
    while let Some(arg) = it.next() {
        let mut value = || {
            it.next()
                .and_then(|v| v.parse().ok())
                .expect("a number after the option")
        };
        match arg.as_str() {
            "--browsers" => args.browsers = value() as usize,
            "--seconds" => args.seconds = value(),
            "--lines-per-second" => args.per_second = value(),
            "--chromium" => args.chromium = true,
            _ => {
                eprintln!(
                    "usage: cpu [--browsers N] [--chromium] [--seconds S] [--lines-per-second R]"
                );
                std::process::exit(2);
            }
        }
    }
    args
}

/// utime + stime of `pid`, from /proc/PID/stat, in seconds.
fn cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).expect("live is running");
    let fields: Vec<&str> = stat[stat.rfind(')').unwrap() + 2..].split(' ').collect();
    // After the name: state is field 3, utime 14 and stime 15 (man 5 proc), so 11 and 12 here.
    let ticks: u64 = fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap();
    // SAFETY: sysconf takes no pointers.
    let per_second = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    ticks as f64 / per_second
}

/// VmRSS and VmHWM of `pid`, in KiB.
fn memory_kib(pid: u32) -> (u64, u64) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|rest| rest.split_whitespace().next()?.parse().ok())
            .unwrap_or(0)
    };
    (field("VmRSS:"), field("VmHWM:"))
}

/// A reader of the event stream on a plain socket, reading everything it is sent.
fn plain_reader(addr: SocketAddr) {
    let mut stream = TcpStream::connect(addr).expect("live accepts");
    stream
        .write_all(b"GET /events HTTP/1.1\r\nHost: live\r\n\r\n")
        .unwrap();
    thread::spawn(move || {
        let mut buf = [0u8; 16 * 1024];
        while let Ok(1..) = stream.read(&mut buf) {}
    });
}

fn main() {
    let args = args();
    let exe = std::env::current_exe().unwrap();
    let live_bin = exe.parent().and_then(Path::parent).unwrap().join("live");
    assert!(
        live_bin.exists(),
        "no {}: cargo build --release -p live first",
        live_bin.display()
    );
    let mut live = Command::new(&live_bin)
        .args(["--addr", "127.0.0.1:0"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("live starts");
    let mut first = String::new();
    BufReader::new(live.stderr.take().unwrap())
        .read_line(&mut first)
        .unwrap();
    let addr: SocketAddr = first
        .split("http://")
        .nth(1)
        .and_then(|r| r.split('/').next())
        .and_then(|a| a.parse().ok())
        .expect("live says where it listens");
    let pid = live.id();
    let mut stdin = live.stdin.take().unwrap();

    // The browsers.
    let mut chromiums = Vec::new();
    let mut tabs = Vec::new();
    if args.chromium {
        let chromium = chromium::find().expect("no Chromium (apt-get install chromium)");
        for k in 0..args.browsers.div_ceil(5) {
            let browser = Browser::launch(&chromium, &format!("live-cpu-{k}"));
            for _ in 0..5.min(args.browsers - 5 * k) {
                let mut tab = DevTools::open(&browser, &format!("http://{addr}/"));
                assert!(tab.wait_for(
                    "typeof live !== 'undefined' && live.caughtUp",
                    Duration::from_secs(30)
                ));
                tabs.push(tab);
            }
            chromiums.push(browser);
        }
    } else {
        for _ in 0..args.browsers {
            plain_reader(addr);
        }
    }

    // 20 lines a second: a step whose count changes all the time, printing as often as
    // `--report-every 0.05` lets it.
    let period = Duration::from_secs_f64(1.0 / args.per_second as f64);
    let mut feed = |n: u64| {
        let conns = (n * 37) % 10_000;
        let line = format!(
            r#"{{"event":"memory","step":"step06-ws-epoll","conns":{conns},"rss_bytes":{},"base_rss_bytes":2564096,"per_conn_bytes":49,"threads":1}}"#,
            2_564_096 + 49 * conns
        );
        writeln!(stdin, "{line}").expect("live reads its stdin");
    };
    let warm_up = Instant::now();
    let mut n = 0;
    while warm_up.elapsed() < Duration::from_secs(3) {
        feed(n);
        n += 1;
        thread::sleep(period);
    }
    let stats = http_get(addr, "/stats");

    let (cpu_before, started) = (cpu_seconds(pid), Instant::now());
    let mut next = Instant::now();
    while started.elapsed() < Duration::from_secs(args.seconds) {
        feed(n);
        n += 1;
        next += period;
        thread::sleep(next.saturating_duration_since(Instant::now()));
    }
    let cpu = cpu_seconds(pid) - cpu_before;
    let wall = started.elapsed().as_secs_f64();
    let (rss, peak) = memory_kib(pid);
    let lines = (wall * args.per_second as f64).round();
    println!(
        "live: {:.2}% of a core ({cpu:.2} s of CPU in {wall:.1} s) at {} lines/s ({lines} lines) \
         with {} {} browsers; VmRSS {:.1} MiB, peak {:.1} MiB",
        100.0 * cpu / wall,
        args.per_second,
        args.browsers,
        if args.chromium {
            "Chromium"
        } else {
            "plain-socket"
        },
        rss as f64 / 1024.0,
        peak as f64 / 1024.0,
    );
    println!("live's counts after the warm-up: {stats}");
    if args.chromium {
        let lags: Vec<String> = tabs
            .iter_mut()
            .map(|t| {
                format!(
                    "{:.0}",
                    t.eval("live.maxDrawLagMs").as_f64().unwrap_or(-1.0)
                )
            })
            .collect();
        println!(
            "longest wait from a line's arrival to its drawing, per tab (ms): {}",
            lags.join(" ")
        );
    }
    drop(tabs);
    for browser in &chromiums {
        browser.close();
    }
    let _ = live.kill();
    let _ = live.wait();
}

/// A GET's body.
fn http_get(addr: SocketAddr, path: &str) -> String {
    let mut stream = TcpStream::connect(addr).unwrap();
    write!(stream, "GET {path} HTTP/1.1\r\nHost: live\r\n\r\n").unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).unwrap();
    response
        .split("\r\n\r\n")
        .nth(1)
        .unwrap_or("")
        .trim()
        .to_string()
}
