//! `cargo run --release -p loadgen -- tcp://127.0.0.1:9005 --conns 10000 --hold 30 --echo 1000`
//!
//! The client every step is measured with. It opens N connections to one server (raw TCP or
//! WebSocket), holds them, and sends echo probes through them, checking each reply byte for
//! byte and timing the round trip. The binary is for a learner's second terminal; the report
//! uses this library to drive every step the same way.
//!
//! Everything here is ordinary tokio: the lesson is in the servers, not in the client.

mod burst;
pub mod cli;
mod conn;
mod failure;
pub mod fleet;
mod pool;
mod ring;
mod srcaddr;
mod stats;
mod storm;
mod sweep;
mod target;

pub use burst::Burst;
pub use conn::{Conn, ConnectOptions, EchoError};
pub use failure::{Failure, Failures};
pub use pool::{Pace, Pick, Pool, payload};
pub use srcaddr::{PER_SOURCE, SourceAddrs};
pub use stats::{EchoStats, RttSummary, micros, monotonic_ns, percentile};
pub use storm::Storm;
pub use target::{Protocol, Target};

/// File descriptors kept aside for everything that is not a connection (stdin/out/err,
/// tokio's epoll and wake-up fds, the odd file).
pub const SPARE_FDS: u64 = 32;

/// How many connections this process may hold under an open-file limit of `soft`.
pub fn max_conns(soft: u64) -> usize {
    soft.saturating_sub(SPARE_FDS) as usize
}
