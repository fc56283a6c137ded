//! `cargo run --release -p step06-ws-epoll --example hold -- 127.0.0.1:9006 10000 30`
//!
//! The measuring client: opens N WebSocket connections to ADDR, one after the other, has
//! each echo one message, then holds them all open for SECS seconds and hangs up. Meanwhile
//! the server's memory line shows what N idle connections that each did one echo cost it.
//! Run it in another process than the server: each side needs one fd per connection.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

/// Bounds, so a typo cannot open a million sockets or hold them for a day.
const MAX_CONNS: usize = 100_000;
const MAX_HOLD_SECS: u64 = 3600;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let usage = "usage: hold ADDR CONNS SECS";
    let addr: SocketAddr = args.next().ok_or(usage)?.parse()?;
    let conns: usize = args.next().ok_or(usage)?.parse()?;
    let hold: u64 = args.next().ok_or(usage)?.parse()?;
    if conns > MAX_CONNS || hold > MAX_HOLD_SECS {
        return Err(format!("at most {MAX_CONNS} connections and {MAX_HOLD_SECS} s").into());
    }
    eprintln!("hold: {}", common::raise_fd_limit()?);

    let started = Instant::now();
    let mut held = Vec::with_capacity(conns);
    for i in 0..conns {
        let stream = open_and_echo(addr, i).map_err(|err| format!("connection {i}: {err}"))?;
        held.push(stream);
        if (i + 1) % 1000 == 0 {
            eprintln!("hold: {} connections open, each echoed once", i + 1);
        }
    }
    eprintln!(
        "hold: {conns} connections open in {:.1?}; holding them {hold} s",
        started.elapsed()
    );
    std::thread::sleep(Duration::from_secs(hold));
    eprintln!("hold: done, hanging up");
    Ok(())
}

/// Handshake (RFC 6455's example key), send one masked text frame, read its echo.
fn open_and_echo(addr: SocketAddr, i: usize) -> std::io::Result<TcpStream> {
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(10))?;
    stream.set_read_timeout(Some(Duration::from_secs(10)))?;
    stream.set_nodelay(true)?;
    stream.write_all(
        b"GET / HTTP/1.1\r\nHost: localhost\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
          Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n",
    )?;
    let mut head = Vec::new();
    let mut byte = [0u8];
    while !head.ends_with(b"\r\n\r\n") && head.len() < 1024 {
        stream.read_exact(&mut byte)?;
        head.push(byte[0]);
    }
    if !head.starts_with(b"HTTP/1.1 101 ") {
        return Err(std::io::Error::other(
            String::from_utf8_lossy(&head).into_owned(),
        ));
    }

    let message = format!("hello from {i:>5}"); // 16 bytes
    let mask = [1u8, 2, 3, 4];
    let mut frame = vec![0x81, 0x80 | message.len() as u8];
    frame.extend_from_slice(&mask);
    frame.extend(message.bytes().zip(mask.iter().cycle()).map(|(b, k)| b ^ k));
    stream.write_all(&frame)?;

    let mut echo = vec![0u8; 2 + message.len()];
    stream.read_exact(&mut echo)?;
    if echo[..2] != [0x81, message.len() as u8] || &echo[2..] != message.as_bytes() {
        return Err(std::io::Error::other(format!("bad echo {echo:?}")));
    }
    Ok(stream)
}
