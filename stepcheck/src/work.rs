//! `--work-us N` costs the step what it says: about N µs of its own CPU per 64-byte message.
//! Read from outside, as the step's CPU time in /proc (its workers' too, for step08) across
//! a run of echoes on one connection; the wall clock is never asserted, so a busy machine
//! slows the check but cannot fail it.

use tungstenite::Message;

use crate::{Server, assert_echo, ws};

/// µs of work asked for per message: large beside what an echo costs (tens of µs, in a
/// debug build), so that the echo's own CPU is lost in the band.
const WORK_US: u32 = 5000;
/// Messages echoed while the step's CPU time is read around them.
const MESSAGES: u32 = 20;

/// A raw-TCP step (01–05): 64-byte messages cost it about `--work-us` each.
pub fn tcp_costs_what_it_says(bin: &str) {
    let server = start(bin, &[]);
    let mut client = server.connect();
    costs_what_it_says(&server, |message| assert_echo(&mut client, message));
}

/// A WebSocket step (06–09): 64-byte binary messages cost it about `--work-us` each.
pub fn ws_costs_what_it_says(bin: &str, extra: &[&str]) {
    let server = start(bin, extra);
    let mut client = ws::connect(&server);
    costs_what_it_says(&server, |message| {
        ws::assert_echo(&mut client, Message::binary(message.to_vec()))
    });
}

fn start(bin: &str, extra: &[&str]) -> Server {
    let work = WORK_US.to_string();
    let args: Vec<&str> = extra.iter().copied().chain(["--work-us", &work]).collect();
    Server::start(bin, &args)
}

/// One echo first (the first message runs code nothing ran yet), then [`MESSAGES`] echoes
/// with the step's CPU time read around them: within a factor of two of MESSAGES ×
/// `--work-us`. The step measured its work at start-up, on its own CPU clock, before it
/// listened, so none of that is counted.
fn costs_what_it_says(server: &Server, mut echo: impl FnMut(&[u8])) {
    echo(&[0xa5; 64]);
    let before = server.cpu_seconds();
    for i in 0..MESSAGES {
        echo(&[i as u8; 64]);
    }
    let spent = server.cpu_seconds() - before;
    let asked = f64::from(MESSAGES * WORK_US) / 1e6;
    assert!(
        (asked / 2.0..=asked * 2.0).contains(&spent),
        "{MESSAGES} messages of 64 bytes at --work-us {WORK_US} cost the step {:.1} ms of CPU, \
         {:.0} ms asked for: is `common::work::spend_on` called where it echoes?",
        spent * 1e3,
        asked * 1e3
    );
}
