//! `cargo run --release -p stepcheck --example stall -- target/release/step06-ws-epoll head-in-pieces 63 -- --stall-timeout 2 --handshake-timeout 2`
//!
//! The attacks of `stepcheck::stall` at scale, measured: N hostile clients (63 by default)
//! each hold about 1 MiB they never finish (`head-in-pieces`, `tiny-frames`, `trickle`),
//! against a step started with the arguments after `--`. Each client sends its next piece
//! every second: a tiny frame every 2 s in two pieces, or a trickled byte; the heads in
//! pieces are followed by connect/close churn. Every second, for 30 s from the first
//! client's connection, one line: how many are still open, the step's resident set (its
//! workers', for step08), and what a fresh client's 1 MiB message got, every other second
//! (its echo, or a close code). Run it against an older build to see the figures before a
//! fix.

use std::thread;
use std::time::{Duration, Instant};

use stepcheck::Server;
use stepcheck::stall::{Attack, Hostile, churn};
use stepcheck::ws;
use tungstenite::Message;

/// What each hostile client holds: a frame announcing 1 MiB, all but 1 KiB of it sent.
const HELD: usize = (1 << 20) - 1024;

/// How long the attack is watched.
const SECONDS: u64 = 30;

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let usage =
        "usage: stall PATH-TO-STEP head-in-pieces|tiny-frames|trickle [CLIENTS] [-- STEP-ARGS...]";
    let (Some(bin), Some(attack)) = (args.first(), args.get(1)) else {
        eprintln!("{usage}");
        std::process::exit(2);
    };
    let attack = match attack.as_str() {
        "head-in-pieces" => Attack::HeadInPieces,
        "tiny-frames" => Attack::TinyFrames,
        "trickle" => Attack::Trickle,
        _ => {
            eprintln!("{usage}");
            std::process::exit(2);
        }
    };
    let clients: usize = match args.get(2).filter(|arg| *arg != "--") {
        Some(count) => count.parse().expect("CLIENTS is a number"),
        None => 63,
    };
    let extra: Vec<&str> = args
        .iter()
        .skip_while(|arg| *arg != "--")
        .skip(1)
        .map(String::as_str)
        .collect();

    let server = Server::start(bin, &extra);
    let base = server.rss_bytes();
    let start = Instant::now();
    let mut hostiles: Vec<Hostile> = (0..clients)
        .map(|_| Hostile::start(server.addr, attack, HELD))
        .collect();
    thread::sleep(Duration::from_millis(250)); // the first pieces are read apart
    for hostile in &mut hostiles {
        hostile.poke();
    }
    if attack == Attack::HeadInPieces {
        churn(server.addr, 300);
    }
    println!(
        "{attack:?}, {clients} clients holding {} KiB each, all sent by t={:.1}s; base RSS {:.1} MiB",
        HELD >> 10,
        start.elapsed().as_secs_f64(),
        mib(base)
    );
    let mut last_open_at = None;
    for second in 1..=SECONDS {
        thread::sleep(
            (start + Duration::from_secs(second)).saturating_duration_since(Instant::now()),
        );
        let open = hostiles
            .iter_mut()
            .map(Hostile::poll)
            .filter(|ended| !ended)
            .count();
        if open > 0 {
            last_open_at = Some(second);
        }
        let fresh = if second % 2 == 0 {
            fresh_message(&server)
        } else {
            String::new()
        };
        println!(
            "t={second:>2}s  open {open:>3}/{clients}  rss +{:>6.1} MiB  {fresh}",
            mib(server.rss_bytes().saturating_sub(base))
        );
        for hostile in &mut hostiles {
            hostile.poke();
        }
    }
    let codes: Vec<_> = hostiles.iter().map(|h| h.ended).collect();
    let closed_1008 = codes.iter().filter(|end| **end == Some(Some(1008))).count();
    let closed_1009 = codes.iter().filter(|end| **end == Some(Some(1009))).count();
    println!(
        "closed with 1008: {closed_1008}, with 1009: {closed_1009}, still open: {}; last seen open at {}",
        codes.iter().filter(|end| end.is_none()).count(),
        last_open_at.map_or("-".to_string(), |s| format!("{s} s")),
    );
}

/// A fresh client's 1 MiB message: `echoed`, or what it got instead.
fn fresh_message(server: &Server) -> String {
    let mut client = ws::connect(server);
    let sent = client.send(Message::binary(vec![7; 1 << 20]));
    let answer = loop {
        match client.read() {
            Ok(message) if message.is_ping() || message.is_pong() => continue,
            other => break other,
        }
    };
    match (sent, answer) {
        (_, Ok(Message::Binary(echo))) if echo.len() == 1 << 20 => "fresh: echoed".into(),
        (_, Ok(Message::Close(Some(close)))) => format!("fresh: close {}", u16::from(close.code)),
        (Err(err), _) => format!("fresh: send failed ({err})"),
        (_, other) => format!("fresh: {other:?}"),
    }
}

fn mib(bytes: u64) -> f64 {
    bytes as f64 / (1 << 20) as f64
}
