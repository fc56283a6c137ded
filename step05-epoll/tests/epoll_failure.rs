//! An `epoll_ctl` that fails on one connection closes that connection; the server and
//! every other connection carry on. No client can make epoll_ctl fail, so the server runs
//! in this process and the test takes a connection out of its interest list behind its
//! back: the loop's next MOD or DEL on that connection fails with ENOENT.

use std::io::{Read, Write};
use std::net::Shutdown;

use clap::Parser;
use stepcheck::inprocess::{self, InProcess};

fn start() -> InProcess {
    InProcess::start(|listener| {
        let opts = common::Options::parse_from(["step05-epoll"]);
        let meter = common::MemoryMeter::new("step05-epoll", &opts);
        step05_epoll::serve(listener, meter)
    })
}

/// A fresh connection still gets its bytes back: the server serves on.
fn assert_serving(server: &InProcess, what: &str) {
    assert!(server.is_serving(), "{what}: serve() returned");
    let mut client = server.connect();
    client.write_all(b"still there?").unwrap();
    let mut echo = [0u8; 12];
    client.read_exact(&mut echo).unwrap();
    assert_eq!(&echo, b"still there?", "{what}");
}

/// A failed DEL (the client hung up) and a failed MOD (the echo had to wait for room) each
/// close that connection only.
#[test]
fn a_failed_epoll_ctl_closes_only_that_connection() {
    let server = start();

    // DEL: the client hangs up; the loop reads 0 and deregisters before closing.
    let mut hangs_up = server.connect();
    server.fail_epoll_ctl_on(&mut hangs_up, |client| {
        client.shutdown(Shutdown::Write).unwrap();
    });
    assert_serving(&server, "after a failed EPOLL_CTL_DEL");

    // MOD: a client that sends and never reads fills both directions' buffers, so an echo
    // is cut short and the loop asks to watch for writability.
    let mut floods = server.connect();
    server.fail_epoll_ctl_on(&mut floods, |client| {
        inprocess::flood_until_full(client, &[b'x'; 64 * 1024]);
    });
    assert_serving(&server, "after a failed EPOLL_CTL_MOD");
}
