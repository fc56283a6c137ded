//! step06's own options, as a group that `main.rs` flattens into its arguments. step08 runs
//! this loop in every worker and flattens the same group, so the two take the same options
//! and a new one here reaches step08 without a change there.

use std::time::Duration;

use crate::Config;

/// The loop's settings on the command line (the options every step takes are in
/// `common::Options`).
#[derive(clap::Args, Debug, Clone)]
pub struct WsOptions {
    /// The largest message accepted, in bytes; a bigger one closes the connection with 1009.
    #[arg(long, value_name = "BYTES", default_value_t = Config::default().max_message as u64,
          value_parser = clap::value_parser!(u64).range(1..))]
    pub max_message: u64,

    /// The most bytes all connections together may hold (heads in pieces, unfinished
    /// frames and messages, unsent output); the connection that would pass it is closed
    /// with 1009 (503 while it handshakes).
    #[arg(long, value_name = "BYTES", default_value_t = Config::default().max_buffered as u64,
          value_parser = clap::value_parser!(u64).range(1 << 16..=1 << 40))]
    pub max_buffered: u64,

    /// Seconds a client has to send its whole request head (and to hang up after our close).
    #[arg(long, value_name = "SECS", default_value_t = Config::default().timeout.as_secs(),
          value_parser = clap::value_parser!(u64).range(1..=3600))]
    pub handshake_timeout: u64,

    /// Seconds a connection may hold bytes without finishing anything (a frame, a message,
    /// taking its output); then it is closed with 1008. An idle connection has no deadline.
    #[arg(long, value_name = "SECS", default_value_t = Config::default().stall_timeout.as_secs(),
          value_parser = clap::value_parser!(u64).range(1..=3600))]
    pub stall_timeout: u64,
}

impl WsOptions {
    /// The options as the loop's [`Config`].
    pub fn config(&self) -> Config {
        Config {
            max_message: self.max_message as usize,
            max_buffered: self.max_buffered as usize,
            timeout: Duration::from_secs(self.handshake_timeout),
            stall_timeout: Duration::from_secs(self.stall_timeout),
        }
    }
}
