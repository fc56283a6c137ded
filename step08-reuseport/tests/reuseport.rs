//! The lesson itself: listening sockets that share one address with `SO_REUSEPORT`, and
//! the kernel spreading connections over them.

use std::io;
use std::net::{TcpListener, TcpStream};

use step08_reuseport::{listen, reserve};

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
