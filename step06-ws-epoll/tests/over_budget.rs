//! A connection that says its last word in the very event that takes all connections past
//! `--max-buffered` still gets it out (`stepcheck::ws::last_words_get_out_past_the_budget`).
//! No client can time that on its own: it needs the kernel's buffers full at that moment.
//! So the server runs in this process, where the test can make them small at both ends.

use clap::Parser;
use step06_ws_epoll::Config;
use stepcheck::inprocess::InProcess;
use stepcheck::ws;

/// Its close behind 200 pings, in a read whose pongs the kernel cannot take: every pong,
/// then the close frame, then our FIN.
#[test]
fn last_words_get_out_past_the_budget() {
    let server = InProcess::start(|listener| {
        let opts = common::Options::parse_from(["step06-ws-epoll"]);
        let meter = common::MemoryMeter::new("step06-ws-epoll", &opts);
        let config = Config {
            max_buffered: 1,
            ..Config::default()
        };
        step06_ws_epoll::serve(listener, meter, config)
    });
    ws::last_words_get_out_past_the_budget(&server);
}
