//! `step06-ws-epoll --json | live`, then open http://127.0.0.1:9100/
//!
//! A page that draws any step's memory line as it comes: connections, RSS and base over
//! time, the cost of one connection as one big number, threads; one series per step, in
//! the report's colours. The report serves the same page with `--live`.
//!
//! Layout: `board.rs` holds what every browser is shown (a bounded history of events and
//! the counts); `input.rs` reads stdin into it and passes every byte through to stdout;
//! `http.rs` serves the page and the event stream, a thread per browser; `page.rs` and
//! `page.html` are the page.

pub mod board;
pub mod http;
pub mod input;
pub mod page;

use std::io;
use std::net::{SocketAddr, TcpListener};
use std::sync::Arc;

pub use board::Board;

/// Where the page is served unless told otherwise.
pub const DEFAULT_ADDR: &str = "127.0.0.1:9100";

/// Listen on `addr` and serve a new board's page and events from a thread of their own;
/// returns the address listened on (port 0 picks one) and the board to post to.
pub fn serve(addr: SocketAddr) -> io::Result<(SocketAddr, Arc<Board>)> {
    let listener = TcpListener::bind(addr)?;
    let addr = listener.local_addr()?;
    let board = Board::new();
    http::spawn(listener, Arc::clone(&board))?;
    Ok((addr, board))
}
