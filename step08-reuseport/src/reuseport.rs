//! Listening sockets that share one address: `SO_REUSEPORT`.
//!
//! Normally a second `bind` to an address already in use fails with `EADDRINUSE`. When
//! every socket sets `SO_REUSEPORT` before `bind` (and all belong to the same user), the
//! kernel lets them all bind, and keeps the listening ones in a group: each incoming
//! connection goes to one member, picked by a hash of its addresses and ports. Each
//! member has its own accept queue, so the workers never contend for one socket.
//!
//! This file uses `socket2` rather than raw `libc` calls: the socket is created, set up
//! and bound before std's `TcpListener` can take it over, and socket2 names each step
//! (`set_reuse_port`, `bind`, `listen`) without an `unsafe` block around each syscall. The
//! lesson is the one option; the five syscalls around it are routine.

use std::io;
use std::net::{SocketAddr, TcpListener};

use socket2::{Domain, Socket, Type};

/// A socket bound to `addr` with `SO_REUSEPORT` (and `SO_REUSEADDR`), not yet listening.
/// socket2 creates it close-on-exec, so a worker started later does not inherit it.
fn bind(addr: SocketAddr) -> io::Result<Socket> {
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, None)?;
    // SO_REUSEADDR: a restarted server may bind while old connections sit in TIME_WAIT.
    socket.set_reuse_address(true)?;
    // SO_REUSEPORT: other sockets with this option (of the same user) may bind here too.
    socket.set_reuse_port(true)?;
    socket.bind(&addr.into())?;
    Ok(socket)
}

/// A worker's own listening socket on `addr`, a member of the address's reuseport group.
pub fn listen(addr: SocketAddr) -> io::Result<TcpListener> {
    let socket = bind(addr)?;
    // The kernel caps the backlog at net.core.somaxconn, as in `common::bind`.
    socket.listen(libc::c_int::MAX)?;
    Ok(socket.into())
}

/// The supervisor's hold on the address: bound with `SO_REUSEPORT` but never listening,
/// so the kernel sends it no connections. It resolves port 0 to a real port once, for
/// every worker to bind, and keeps the port ours while a worker is being replaced.
pub fn reserve(addr: SocketAddr) -> io::Result<(Socket, SocketAddr)> {
    let socket = bind(addr)?;
    let local = socket
        .local_addr()?
        .as_socket()
        .ok_or_else(|| io::Error::other("bound to a non-IP address"))?;
    Ok((socket, local))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::TcpStream;

    /// Two listeners bind the same port with SO_REUSEPORT; a plain bind there still fails.
    #[test]
    fn listeners_share_a_port_only_with_reuseport() {
        let (_reserved, addr) = reserve("127.0.0.1:0".parse().unwrap()).unwrap();
        let one = listen(addr).unwrap();
        let two = listen(addr).unwrap();
        assert_eq!(one.local_addr().unwrap(), two.local_addr().unwrap());
        let err = TcpListener::bind(addr).expect_err("a plain bind must not join the group");
        assert_eq!(err.kind(), io::ErrorKind::AddrInUse);
    }

    /// The kernel spreads connections over the group's listeners, and sends none to the
    /// reserving socket, which does not listen.
    #[test]
    fn connections_are_spread_over_the_listeners() {
        let (_reserved, addr) = reserve("127.0.0.1:0".parse().unwrap()).unwrap();
        let listeners = [listen(addr).unwrap(), listen(addr).unwrap()];
        // Connections differ by source port, so the hash sends them to both listeners.
        let clients: Vec<TcpStream> = (0..64).map(|_| TcpStream::connect(addr).unwrap()).collect();
        let mut accepted = [0; 2];
        for (listener, count) in listeners.iter().zip(&mut accepted) {
            listener.set_nonblocking(true).unwrap();
            while listener.accept().is_ok() {
                *count += 1;
            }
        }
        assert_eq!(accepted[0] + accepted[1], clients.len(), "{accepted:?}");
        assert!(
            accepted.iter().all(|&n| n > 0),
            "one listener got all: {accepted:?}"
        );
    }
}
