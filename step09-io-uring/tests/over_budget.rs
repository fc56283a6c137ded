//! A connection that says its last word in the very event that takes all connections past
//! `--max-buffered` still gets it out (`stepcheck::ws::last_words_get_out_past_the_budget`),
//! on io_uring as on epoll. The server runs in this process, where the test can make the
//! kernel's buffers small at both ends. Skipped, with the reason, where io_uring is not
//! available (see `support/mod.rs`).

mod support;

use clap::Parser;
use step09_io_uring::Config;
use stepcheck::inprocess::InProcess;
use stepcheck::ws;
use support::available;

/// Its close behind 200 pings, in a receive whose pongs the kernel cannot take: every pong,
/// then the close frame, then our FIN.
#[test]
fn last_words_get_out_past_the_budget() {
    if !available() {
        return;
    }
    let server = InProcess::start(|listener| {
        let opts = common::Options::parse_from(["step09-io-uring"]);
        let meter = common::MemoryMeter::new("step09-io-uring", &opts);
        // Buffers of 32 KiB, so that the client's one write comes in one completion.
        let uring = step09_io_uring::setup(16, 32768).expect("io_uring, available above");
        let config = Config {
            max_buffered: 1,
            ..Config::default()
        };
        step09_io_uring::serve(listener, meter, uring, config)
    });
    ws::last_words_get_out_past_the_budget(&server);
}
