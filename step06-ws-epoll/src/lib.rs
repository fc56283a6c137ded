//! cargo run --release -p step06-ws-epoll
pub mod frame;
pub mod handshake;
