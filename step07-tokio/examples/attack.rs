//! `cargo run --release -p step07-tokio --example attack -- target/release/step07-tokio ping-flood`
//!
//! Attack a WebSocket step as a hostile client would, on loopback, and print what it cost
//! the server. The step is started here (`--addr 127.0.0.1:0`, plus any arguments after
//! `--`), attacked, measured from /proc, and killed by its pid. Any WebSocket step works:
//! run it against an older build to see the figures before a fix.
//!
//! - `ping-flood`: one client sends pings for 10 s and never reads a pong.
//! - `fragments`: five clients each send 57 MiB of a message in fragments, never the last.
//! - `round-trip`: a fresh client's echo, quiet and while two clients flood small messages.

use std::io::{BufRead, BufReader, ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::{Child, Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use tokio_tungstenite::tungstenite::{self, Message};

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (Some(bin), Some(attack)) = (args.first(), args.get(1)) else {
        eprintln!("usage: attack PATH-TO-STEP ping-flood|fragments|round-trip [-- STEP-ARGS...]");
        std::process::exit(2);
    };
    let extra = args.iter().skip_while(|a| *a != "--").skip(1);
    let (mut server, addr) = start(bin, extra);
    let pid = server.id();
    match attack.as_str() {
        "ping-flood" => ping_flood(addr, pid),
        "fragments" => fragments(addr, pid),
        "round-trip" => round_trip(addr),
        other => eprintln!("no attack called {other}"),
    }
    let _ = server.kill(); // the step we started, by its pid
    let _ = server.wait();
}

/// Start the step on a free loopback port; its address from its first line.
fn start<'a>(bin: &str, extra: impl Iterator<Item = &'a String>) -> (Child, SocketAddr) {
    let mut child = Command::new(bin)
        .args(["--addr", "127.0.0.1:0", "--report-every", "60"])
        .args(extra)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap_or_else(|err| panic!("cannot start {bin}: {err}"));
    let mut line = String::new();
    let mut stdout = BufReader::new(child.stdout.take().expect("piped"));
    stdout.read_line(&mut line).expect("the step's first line");
    let addr = line
        .trim()
        .strip_prefix("listening on ")
        .and_then(|addr| addr.parse().ok())
        .unwrap_or_else(|| panic!("not a listening line: {line:?}"));
    // Keep reading its memory lines, so that a full pipe never blocks it.
    thread::spawn(move || for _ in stdout.lines() {});
    (child, addr)
}

/// A WebSocket client over a raw stream, so that frames can also be written by hand.
fn connect(addr: SocketAddr) -> TcpStream {
    let stream = TcpStream::connect(addr).expect("connect to the step");
    let (client, _) = tungstenite::client(format!("ws://{addr}/"), stream).expect("handshake");
    client.into_inner()
}

/// One masked client frame.
fn frame(fin: bool, opcode: u8, payload: &[u8]) -> Vec<u8> {
    stepcheck::ws::raw_frame(fin, opcode, payload, true)
}

fn mib(bytes: u64) -> f64 {
    bytes as f64 / (1 << 20) as f64
}

/// The step's resident set, from /proc.
fn rss(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|kib| kib.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .map_or(0, |kib| kib * 1024)
}

/// Write `bytes` over and over for `secs`, never reading; stops early if the step hangs up.
fn flood(stream: &mut TcpStream, bytes: &[u8], secs: u64, mut each: impl FnMut()) -> (u64, String) {
    stream
        .set_write_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    let start = Instant::now();
    let (mut sent, mut offset) = (0u64, 0);
    while start.elapsed() < Duration::from_secs(secs) {
        match stream.write(&bytes[offset..]) {
            Ok(n) => {
                sent += n as u64;
                offset = (offset + n) % bytes.len();
            }
            Err(err) if matches!(err.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
            Err(err) => {
                return (
                    sent,
                    format!(" (closed after {:.1?}: {err})", start.elapsed()),
                );
            }
        }
        each();
    }
    (sent, String::new())
}

fn ping_flood(addr: SocketAddr, pid: u32) {
    let base = rss(pid);
    let mut client = connect(addr);
    let pings: Vec<u8> = (0..500)
        .flat_map(|_| frame(true, 0x9, &[b'p'; 125]))
        .collect();
    let mut peak = base;
    let (sent, end) = flood(&mut client, &pings, 10, || peak = peak.max(rss(pid)));
    println!(
        "ping flood, 10 s, no pong read: {:.1} MiB sent; server RSS {:.1} MiB, peak {:.1} MiB{end}",
        mib(sent),
        mib(base),
        mib(peak)
    );
}

fn fragments(addr: SocketAddr, pid: u32) {
    let base = rss(pid);
    let chunk = vec![b'f'; 64 * 1024];
    let mut held = Vec::new();
    for _ in 0..5 {
        let mut client = connect(addr);
        // 57 MiB of a message, never its final fragment.
        let sent = (0..912).all(|i| {
            let opcode = if i == 0 { 0x2 } else { 0x0 };
            client.write_all(&frame(false, opcode, &chunk)).is_ok()
        });
        held.push((client, sent));
    }
    thread::sleep(Duration::from_secs(1));
    let refused = held.iter().filter(|(_, sent)| !sent).count();
    println!(
        "5 clients, 57 MiB of fragments each: {refused} cut off while sending; server RSS {:.1} MiB -> {:.1} MiB",
        mib(base),
        mib(rss(pid))
    );
    thread::sleep(Duration::from_secs(12));
    let mut open = 0;
    for (client, _) in &mut held {
        client
            .set_read_timeout(Some(Duration::from_millis(100)))
            .unwrap();
        let mut byte = [0];
        let silent =
            matches!(client.read(&mut byte), Err(err) if err.kind() == ErrorKind::WouldBlock);
        open += usize::from(silent);
    }
    println!(
        "12 s later: {open} of 5 still open and silent; server RSS {:.1} MiB",
        mib(rss(pid))
    );
}

/// Median and worst of `count` echoes on a fresh connection.
fn echoes(addr: SocketAddr, count: usize) -> (Duration, Duration) {
    let stream = TcpStream::connect(addr).expect("connect");
    let (mut client, _) = tungstenite::client(format!("ws://{addr}/"), stream).expect("handshake");
    let mut times: Vec<Duration> = (0..count)
        .map(|_| {
            let start = Instant::now();
            client.send(Message::text("probe")).expect("send");
            while !client.read().expect("echo").is_text() {}
            start.elapsed()
        })
        .collect();
    times.sort();
    (times[count / 2], times[count - 1])
}

fn round_trip(addr: SocketAddr) {
    let quiet = echoes(addr, 50);
    let burst: Vec<u8> = (0..2000)
        .flat_map(|_| frame(true, 0x2, &[b'x'; 16]))
        .collect();
    let flooders: Vec<_> = (0..2)
        .map(|_| {
            let mut writer = connect(addr);
            let mut reader = writer.try_clone().unwrap();
            let burst = burst.clone();
            thread::spawn(move || {
                reader
                    .set_read_timeout(Some(Duration::from_millis(200)))
                    .unwrap();
                let drain = thread::spawn(move || {
                    let mut buf = vec![0; 1 << 20];
                    let start = Instant::now();
                    while start.elapsed() < Duration::from_secs(5) {
                        if let Ok(0) = reader.read(&mut buf) {
                            break;
                        }
                    }
                });
                flood(&mut writer, &burst, 5, || {});
                drain.join().unwrap();
            })
        })
        .collect();
    thread::sleep(Duration::from_secs(1));
    let busy = echoes(addr, 50);
    for flooder in flooders {
        flooder.join().unwrap();
    }
    println!(
        "a fresh client's echo, median / worst of 50: quiet {:.2?} / {:.2?}; while two clients flood {:.2?} / {:.2?}",
        quiet.0, quiet.1, busy.0, busy.1
    );
}
