//! step06's own settings, the budgets ([`Config`]), and their options, as a group that
//! `main.rs` flattens into its arguments. step08 runs this loop in every worker and step09
//! runs the same budgets on io_uring: both flatten the same group, so all three take the
//! same options and a new one here reaches them without a change there.

use std::time::Duration;

/// The step's own settings: the budgets, and who may open a WebSocket (the common ones are
/// in `common::Options`).
#[derive(Debug, Clone)]
pub struct Config {
    /// The largest message (all its fragments together) we accept; bigger → close 1009.
    pub max_message: usize,
    /// The most bytes all connections together may hold: request heads in pieces,
    /// unfinished frames, fragmented messages, output the kernel would not take yet. The
    /// connection whose bytes would pass it is closed with 1009 (503 while it handshakes).
    pub max_buffered: usize,
    /// How long a client may take to send its whole request head, and, once we have sent
    /// our close, to read it and hang up. Past it, we close the connection (408 for a head).
    pub handshake_timeout: Duration,
    /// How long a connection may hold bytes without finishing anything (a frame, a message,
    /// taking its pending output). Past it, we close the connection with 1008.
    pub stall_timeout: Duration,
    /// The origins whose pages may open a WebSocket here besides the server's own
    /// (`*`: any); a browser's upgrade from any other page gets 403.
    pub allowed_origins: Vec<String>,
}

impl Default for Config {
    /// 1 MiB per message, 64 MiB in all, 10 s for a handshake, 10 s to finish anything
    /// held; WebSockets from the server's own page only.
    fn default() -> Config {
        Config {
            max_message: 1 << 20,
            max_buffered: 64 << 20,
            handshake_timeout: Duration::from_secs(10),
            stall_timeout: Duration::from_secs(10),
            allowed_origins: Vec::new(),
        }
    }
}

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
    #[arg(long, value_name = "SECS", default_value_t = Config::default().handshake_timeout.as_secs(),
          value_parser = clap::value_parser!(u64).range(1..=3600))]
    pub handshake_timeout: u64,

    /// Seconds a connection may hold bytes without finishing anything (a frame, a message,
    /// taking its output); then it is closed with 1008. An idle connection has no deadline.
    #[arg(long, value_name = "SECS", default_value_t = Config::default().stall_timeout.as_secs(),
          value_parser = clap::value_parser!(u64).range(1..=3600))]
    pub stall_timeout: u64,

    /// An origin (`http://host:port`) whose pages may open WebSockets here, besides this
    /// server's own page; repeat it for more, or `*` for any. A browser's upgrade from any
    /// other page gets 403; a client that sends no `Origin` (not a browser) is served.
    #[arg(long, value_name = "ORIGIN", value_parser = crate::handshake::parse_origin)]
    pub allow_origin: Vec<String>,
}

impl WsOptions {
    /// The options as the loop's [`Config`].
    pub fn config(&self) -> Config {
        Config {
            max_message: self.max_message as usize,
            max_buffered: self.max_buffered as usize,
            handshake_timeout: Duration::from_secs(self.handshake_timeout),
            stall_timeout: Duration::from_secs(self.stall_timeout),
            allowed_origins: self.allow_origin.clone(),
        }
    }
}
