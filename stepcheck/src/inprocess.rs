//! Faults no client can cause, injected into a step that runs in the test's own process.
//!
//! Some failures come from the kernel, not from a client: `epoll_ctl` can fail on one
//! connection (ENOMEM, or a registration lost to a bug). To check that a step closes that
//! connection and goes on serving the others, the test runs the step's `serve` on a thread
//! of its own process, where the step's file descriptors are within reach, and takes one
//! connection out of the step's epoll interest list behind the step's back
//! ([`hide_registration`]). The same reach lets a test make the kernel's buffers small at
//! both ends of a connection ([`InProcess::connect_with_a_small_window`],
//! [`InProcess::shrink_send_buffer`]), so that a few KiB of replies fill them at the moment
//! the test chooses.

use std::io::{self, ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::fd::{FromRawFd, OwnedFd, RawFd};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use crate::{PATIENCE, connect_patiently};

/// A step's `serve` running on a thread of this process, on a free loopback port.
pub struct InProcess {
    /// Where the step is listening.
    pub addr: SocketAddr,
    /// The thread running `serve`: finished only if `serve` returned.
    thread: JoinHandle<io::Result<()>>,
}

impl InProcess {
    /// Bind a free loopback port and run `serve` on it in a new thread.
    pub fn start<F>(serve: F) -> InProcess
    where
        F: FnOnce(TcpListener) -> io::Result<()> + Send + 'static,
    {
        // The step's memory lines and logs would go straight to the test's terminal.
        common::output::discard();
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind a free loopback port");
        let addr = listener.local_addr().expect("the bound address");
        let thread = thread::spawn(move || serve(listener));
        InProcess { addr, thread }
    }

    /// True while `serve` has not returned: the server is still up.
    pub fn is_serving(&self) -> bool {
        !self.thread.is_finished()
    }

    /// Open a client connection with read and write timeouts, so no check can hang.
    pub fn connect(&self) -> TcpStream {
        connect_patiently(self.addr)
    }

    /// Make the step's next `epoll_ctl` on `client`'s connection fail: take the connection
    /// out of the interest list ([`hide_registration`]), let `provoke` make the loop call
    /// epoll_ctl on it (a hang-up for DEL, a flood for MOD), and wait until the step has
    /// closed it. The socket itself closes only then, when the hidden duplicate is dropped.
    pub fn fail_epoll_ctl_on(&self, client: &mut TcpStream, provoke: impl FnOnce(&mut TcpStream)) {
        let fd = self.accepted_fd(client);
        let duplicate = hide_registration(fd);
        provoke(client);
        wait_until_closed(fd);
        drop(duplicate);
    }

    /// Open a client connection whose receive buffer is locked at its smallest (a few KiB)
    /// before it connects, so that it offers the step a window of a few KiB. (Set after
    /// connecting, the buffer shrinks, but not the window already offered.)
    pub fn connect_with_a_small_window(&self) -> TcpStream {
        let SocketAddr::V4(addr) = self.addr else {
            panic!("bug: the step listens on 127.0.0.1");
        };
        // SAFETY: socket takes no pointers.
        let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0) };
        assert!(fd >= 0, "socket: {}", io::Error::last_os_error());
        // SAFETY: `fd` was just returned by socket: open, and owned by nobody else.
        let socket = unsafe { OwnedFd::from_raw_fd(fd) };
        shrink_buffer(fd, libc::SO_RCVBUF);
        let to = libc::sockaddr_in {
            sin_family: libc::AF_INET as libc::sa_family_t,
            sin_port: addr.port().to_be(),
            sin_addr: libc::in_addr {
                s_addr: u32::from(*addr.ip()).to_be(),
            },
            sin_zero: [0; 8],
        };
        let len = size_of::<libc::sockaddr_in>() as libc::socklen_t;
        // SAFETY: `to` is a valid sockaddr_in of `len` bytes, which the kernel only reads.
        let ret = unsafe { libc::connect(fd, (&raw const to).cast(), len) };
        assert_eq!(ret, 0, "connect to {addr}: {}", io::Error::last_os_error());
        let stream = TcpStream::from(socket);
        stream.set_read_timeout(Some(PATIENCE)).unwrap();
        stream.set_write_timeout(Some(PATIENCE)).unwrap();
        stream
    }

    /// Lock the step's send buffer for `client`'s connection at its smallest (a few KiB):
    /// with a client that offers a small window, replies of tens of KiB it does not read
    /// at once do not fit in the kernel, and the step must keep the rest itself.
    pub fn shrink_send_buffer(&self, client: &TcpStream) {
        shrink_buffer(self.accepted_fd(client), libc::SO_SNDBUF);
    }

    /// Connect and upgrade to a WebSocket (see [`upgrade`]).
    pub fn upgraded(&self) -> TcpStream {
        upgrade(self.connect())
    }

    /// The step's fd for the connection whose client end is `client`, once the step has
    /// accepted it (waits up to [`PATIENCE`]).
    fn accepted_fd(&self, client: &TcpStream) -> RawFd {
        let client_addr = client.local_addr().expect("the client's address");
        wait_for(&format!("the server's fd for {client_addr}"), || {
            open_fds()
                .into_iter()
                .find(|&fd| peer_of(fd) == Some(client_addr))
        })
    }
}

/// Upgrade `stream` to a WebSocket with RFC 6455's example request, and read the `101`
/// head byte by byte (so no frame behind it is taken).
pub fn upgrade(mut stream: TcpStream) -> TcpStream {
    stream
        .write_all(
            b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
              Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n",
        )
        .unwrap();
    let mut head = Vec::new();
    let mut byte = [0u8];
    while !head.ends_with(b"\r\n\r\n") {
        stream.read_exact(&mut byte).expect("the 101 response head");
        head.push(byte[0]);
    }
    assert!(head.starts_with(b"HTTP/1.1 101 "), "{head:?}");
    stream
}

/// Send `chunk` again and again without reading, until the socket buffers of both
/// directions are full and a write times out: the server's echo is cut short and it must
/// wait for writability. Bounded: at most 1024 chunks.
pub fn flood_until_full(client: &mut TcpStream, chunk: &[u8]) {
    client
        .set_write_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    for _ in 0..1024 {
        match client.write(chunk) {
            Ok(_) => {}
            Err(err) if matches!(err.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                return;
            }
            Err(err) => panic!("the flooding client failed: {err}"),
        }
    }
    panic!("the server took {} KiB without filling up", chunk.len())
}

/// Lock socket `fd`'s buffer `option` (`SO_SNDBUF` or `SO_RCVBUF`) at its smallest, a few
/// KiB: the kernel no longer grows it as the connection goes.
fn shrink_buffer(fd: RawFd, option: libc::c_int) {
    let bytes: libc::c_int = 1;
    // SAFETY: `fd` is an open socket (its connection is open), and `bytes` a valid c_int
    // that the kernel copies.
    let ret = unsafe {
        libc::setsockopt(
            fd,
            libc::SOL_SOCKET,
            option,
            (&raw const bytes).cast(),
            size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    assert_eq!(ret, 0, "setsockopt: {}", io::Error::last_os_error());
}

/// Wait up to [`PATIENCE`] until `fd` is closed in this process.
fn wait_until_closed(fd: RawFd) {
    wait_for(&format!("fd {fd} to be closed"), || {
        // SAFETY: F_GETFD takes no pointers and only reads the fd's flags.
        (unsafe { libc::fcntl(fd, libc::F_GETFD) } == -1).then_some(())
    });
}

/// Take `fd` out of the epoll interest list that watches it, and watch the same socket
/// through a duplicate fd instead, with the same interest and the same token. Events still
/// reach the step's loop as before, but the step's next `epoll_ctl` (MOD or DEL) on `fd`
/// fails with ENOENT. Returns the duplicate: the socket stays open until it is dropped.
fn hide_registration(fd: RawFd) -> OwnedFd {
    let (epoll, events, token) = wait_for(&format!("an epoll instance watching fd {fd}"), || {
        open_fds()
            .into_iter()
            .find_map(|epoll| registration(epoll, fd).map(|(events, token)| (epoll, events, token)))
    });
    // SAFETY: dup takes no pointers; `fd` is open (the step holds it).
    let dup = unsafe { libc::dup(fd) };
    assert!(dup >= 0, "dup({fd}): {}", io::Error::last_os_error());
    // SAFETY: `dup` was just returned by dup: open, and owned by nobody else.
    let dup = unsafe { OwnedFd::from_raw_fd(dup) };
    let mut event = libc::epoll_event { events, u64: token };
    // SAFETY: `epoll` is an open epoll fd, `fd` and `dup` are open, `event` is a valid
    // epoll_event the kernel only reads (and ignores for DEL).
    unsafe {
        assert_eq!(
            libc::epoll_ctl(epoll, libc::EPOLL_CTL_DEL, fd, &mut event),
            0
        );
        let dup_fd = std::os::fd::AsRawFd::as_raw_fd(&dup);
        assert_eq!(
            libc::epoll_ctl(epoll, libc::EPOLL_CTL_ADD, dup_fd, &mut event),
            0
        );
    }
    dup
}

/// The interest and token of `fd` in `epoll`'s interest list, from
/// `/proc/self/fdinfo/EPOLL` (lines `tfd: FD events: HEX data: HEX ...`); `None` if
/// `epoll` is no epoll fd or does not watch `fd`.
fn registration(epoll: RawFd, fd: RawFd) -> Option<(u32, u64)> {
    let info = std::fs::read_to_string(format!("/proc/self/fdinfo/{epoll}")).ok()?;
    info.lines().find_map(|line| {
        // `tfd: 7 events: 19 data: 7 pos:0 ...`: names and values alternate.
        let words: Vec<&str> = line.split_whitespace().collect();
        let [("tfd:", tfd), ("events:", events), ("data:", token), ..] = words
            .chunks(2)
            .map(|pair| (pair[0], pair.get(1).copied().unwrap_or("")))
            .collect::<Vec<_>>()[..]
        else {
            return None;
        };
        let tfd: RawFd = tfd.parse().ok()?;
        let events = u32::from_str_radix(events, 16).ok()?;
        let token = u64::from_str_radix(token, 16).ok()?;
        (tfd == fd).then_some((events, token))
    })
}

/// The fds open in this process.
fn open_fds() -> Vec<RawFd> {
    std::fs::read_dir("/proc/self/fd")
        .expect("/proc/self/fd is readable")
        .filter_map(|entry| entry.ok()?.file_name().to_str()?.parse().ok())
        .collect()
}

/// The peer address of socket `fd`, if it is a connected IPv4 TCP socket.
fn peer_of(fd: RawFd) -> Option<SocketAddr> {
    // SAFETY: sockaddr_in is plain data; all zeroes is a valid value.
    let mut addr: libc::sockaddr_in = unsafe { std::mem::zeroed() };
    let mut len = size_of::<libc::sockaddr_in>() as libc::socklen_t;
    // SAFETY: `addr` and `len` are valid and writable; the kernel writes at most `len` bytes.
    let ret = unsafe { libc::getpeername(fd, (&raw mut addr).cast(), &mut len) };
    if ret != 0 || addr.sin_family != libc::AF_INET as libc::sa_family_t {
        return None;
    }
    let ip = std::net::Ipv4Addr::from(u32::from_be(addr.sin_addr.s_addr));
    Some(SocketAddr::from((ip, u16::from_be(addr.sin_port))))
}

/// Poll `check` until it gives a value, for at most [`PATIENCE`].
fn wait_for<T>(what: &str, mut check: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + PATIENCE;
    loop {
        if let Some(value) = check() {
            return value;
        }
        assert!(Instant::now() < deadline, "gave up waiting for {what}");
        thread::sleep(Duration::from_millis(5));
    }
}
