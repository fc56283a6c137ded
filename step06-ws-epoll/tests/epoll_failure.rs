//! An `epoll_ctl` that fails on one connection closes that connection; the server and
//! every other connection carry on. No client can make epoll_ctl fail, so the server runs
//! in this process and the test takes a connection out of its interest list behind its
//! back: the loop's next MOD or DEL on that connection fails with ENOENT.

use std::io::{Read, Write};
use std::net::Shutdown;

use clap::Parser;
use step06_ws_epoll::Config;
use stepcheck::inprocess::{self, InProcess};

fn start() -> InProcess {
    InProcess::start(|listener| {
        let opts = common::Options::parse_from(["step06-ws-epoll"]);
        let meter = common::MemoryMeter::new("step06-ws-epoll", &opts);
        step06_ws_epoll::serve(listener, meter, Config::default())
    })
}

/// A masked binary frame whose payload is `len` zero bytes (masked with a zero key, so
/// sent as is).
fn binary_frame(len: u16) -> Vec<u8> {
    let mut frame = vec![0x82, 0x80 | 126];
    frame.extend_from_slice(&len.to_be_bytes());
    frame.extend_from_slice(&[0; 4]); // the mask key
    frame.resize(frame.len() + usize::from(len), 0);
    frame
}

/// A fresh connection still upgrades and gets its message back: the server serves on.
fn assert_serving(server: &InProcess, what: &str) {
    assert!(server.is_serving(), "{what}: serve() returned");
    let mut client = server.upgraded();
    client.write_all(&binary_frame(3)).unwrap();
    let mut echo = [0xffu8; 5];
    client.read_exact(&mut echo).unwrap();
    assert_eq!(echo, [0x82, 3, 0, 0, 0], "{what}");
}

/// A failed DEL (the client hung up) and a failed MOD (the echo had to wait for room) each
/// close that connection only.
#[test]
fn a_failed_epoll_ctl_closes_only_that_connection() {
    let server = start();

    // DEL: the client hangs up before its handshake; the loop reads 0 and deregisters.
    let mut hangs_up = server.connect();
    server.fail_epoll_ctl_on(&mut hangs_up, |client| {
        client.shutdown(Shutdown::Write).unwrap();
    });
    assert_serving(&server, "after a failed EPOLL_CTL_DEL");

    // MOD: a client that sends messages and never reads fills both directions' buffers,
    // so an echo is cut short and the loop asks to watch for writability.
    let mut floods = server.upgraded();
    server.fail_epoll_ctl_on(&mut floods, |client| {
        inprocess::flood_until_full(client, &binary_frame(60_000));
    });
    assert_serving(&server, "after a failed EPOLL_CTL_MOD");
}
