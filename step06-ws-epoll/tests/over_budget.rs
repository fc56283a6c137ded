//! A connection that says its last word in the very event that takes all connections past
//! `--max-buffered` still gets it out. No client can time that on its own: it needs the
//! kernel's buffers full at that moment. So the server runs in this process, where the
//! test can make them small at both ends.

use std::io::{Read, Write};

use clap::Parser;
use step06_ws_epoll::Config;
use stepcheck::inprocess::{self, InProcess};
use stepcheck::ws::raw_frame;

/// A client that sends 200 pings and its close in one write, and reads nothing until then,
/// gets every pong, our close frame with its code, and our FIN. The server reads it all at
/// once: the pongs and the close do not fit in the kernel's buffers (a few KiB at each
/// end), and what it keeps takes it past a budget of 1 byte as the connection turns to
/// closing. Breaks if the
/// budget stops a closing connection from waiting for writability: its close frame then
/// sits unsent until the closing deadline (10 s).
#[test]
fn a_connection_closing_over_the_budget_still_sends_its_last_bytes() {
    let server = InProcess::start(|listener| {
        let opts = common::Options::parse_from(["step06-ws-epoll"]);
        let meter = common::MemoryMeter::new("step06-ws-epoll", &opts);
        // Below what `--max-buffered` allows: every byte held is past it.
        let config = Config {
            max_buffered: 1,
            ..Config::default()
        };
        step06_ws_epoll::serve(listener, meter, config)
    });
    let mut client = inprocess::upgrade(server.connect_with_a_small_window());
    server.shrink_send_buffer(&client);

    // 200 × 131 bytes and a close, 26 KB: one segment on loopback (TCP cuts a write at half
    // the peer's window, 32 KiB here), so one read; 25 KB of pongs to answer.
    let ping = raw_frame(true, 9, &[b'p'; 125], true);
    let mut last_words = ping.repeat(200);
    last_words.extend(raw_frame(true, 8, &1000u16.to_be_bytes(), true));
    client.write_all(&last_words).unwrap();

    let mut answer = Vec::new();
    client
        .read_to_end(&mut answer)
        .expect("the server's last bytes, then its FIN, within the read timeout");
    let pong = [&[0x8a, 125][..], &[b'p'; 125]].concat();
    let expected = [pong.repeat(200), vec![0x88, 2, 0x03, 0xe8]].concat();
    assert!(
        answer == expected,
        "expected 200 pongs and a close frame with 1000, got {} bytes ending in {:?}",
        answer.len(),
        &answer[answer.len().saturating_sub(8)..]
    );
}
