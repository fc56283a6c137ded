//! One client connection: open it (TCP, or TCP then the WebSocket upgrade) and echo through it.

use std::net::SocketAddr;
use std::os::fd::{AsRawFd, RawFd};

use socket2::SockRef;
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::protocol::{Role, WebSocketConfig};
use tokio_tungstenite::tungstenite::{self, Message};

use crate::{Failure, Protocol, SourceAddrs, Target};

/// How each connection is opened.
#[derive(Debug, Clone)]
pub struct ConnectOptions {
    /// Where to, and what to speak.
    pub target: Target,
    /// Source addresses to spread over (bind before connect), or `None` for the kernel's choice.
    pub src_addrs: Option<SourceAddrs>,
    /// Give up on one connection (TCP connect plus WebSocket upgrade) after this long.
    pub timeout: Duration,
    /// The WebSocket client's read buffer, in bytes. tungstenite's default is 128 KiB,
    /// allocated and zero-filled on the first read: 1.3 GB for 10 000 clients, which would
    /// measure the load generator instead of the server. Echo probes are small.
    pub ws_read_buffer: usize,
}

impl ConnectOptions {
    /// Defaults that suit loopback: 10 s timeout, 4 KiB WebSocket read buffer.
    pub fn new(target: Target) -> ConnectOptions {
        ConnectOptions {
            target,
            src_addrs: None,
            timeout: Duration::from_secs(10),
            ws_read_buffer: 4096,
        }
    }
}

/// The stream under a connection.
///
/// A held connection is idle almost all its life, so it is kept as a plain socket: an
/// fd, unknown to tokio, with no buffers. Only a connection that is probed becomes a tokio
/// stream (and, for WebSocket, a tungstenite stream with its buffers), and stays one. This
/// is what lets one client process hold tens of thousands of connections at a few
/// hundred bytes each: a tokio-tungstenite stream costs ~6 KiB.
enum Stream {
    /// Open and idle; for WebSocket, upgraded already.
    Idle(std::net::TcpStream),
    // Boxed: a tokio stream is a few dozen bytes, a WebSocketStream a few hundred; a
    // Box keeps every `Conn` at 16 bytes.
    Tcp(Box<TcpStream>),
    Ws(Box<WebSocketStream<TcpStream>>),
}

/// One open connection.
pub struct Conn {
    stream: Stream,
    /// False once an echo went missing or came back wrong: a late echo may still be on its
    /// way, and it would be read as the answer to the next probe. Such a connection stays
    /// open (it still counts as held) but is never probed again.
    pub usable: bool,
}

/// Why an echo did not come back right.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EchoError {
    /// Bytes came back, but not the bytes sent.
    Mismatch,
    /// The connection failed.
    Failed(Failure),
}

impl Conn {
    /// Open connection number `i` (it picks the `i`-th source address, if any).
    pub async fn connect(opts: &ConnectOptions, i: usize) -> Result<Conn, Failure> {
        match tokio::time::timeout(opts.timeout, Conn::connect_unbounded(opts, i)).await {
            Ok(result) => result,
            Err(_elapsed) => Err(Failure::TimedOut),
        }
    }

    async fn connect_unbounded(opts: &ConnectOptions, i: usize) -> Result<Conn, Failure> {
        let io_failure = |err: std::io::Error| Failure::classify(&err);
        let addr = opts.target.addr;
        let socket = match addr {
            SocketAddr::V4(_) => TcpSocket::new_v4(),
            SocketAddr::V6(_) => TcpSocket::new_v6(),
        }
        .map_err(io_failure)?;

        if let Some(src_addrs) = &opts.src_addrs {
            // Without this option, bind() must pick the source port before it knows the
            // destination, so each bound port is taken for every destination; with it, the
            // port is picked at connect() time, per (source, destination) pair.
            set_bind_address_no_port(&socket).map_err(io_failure)?;
            socket
                .bind(SocketAddr::new(src_addrs.nth(i).into(), 0))
                .map_err(io_failure)?;
        }

        let stream = socket.connect(addr).await.map_err(io_failure)?;
        // Echo probes are small: don't let Nagle's algorithm hold one back waiting for more.
        stream.set_nodelay(true).map_err(io_failure)?;

        let stream = match opts.target.protocol {
            Protocol::Tcp => stream,
            Protocol::WebSocket => {
                let (ws, _response) = tokio_tungstenite::client_async_with_config(
                    opts.target.url.as_str(),
                    stream,
                    Some(ws_config(opts)),
                )
                .await
                .map_err(|err| ws_failure(&err))?;
                // The server sends nothing until we do, so tungstenite holds no bytes of
                // ours in its buffers: the socket alone is the whole connection now.
                ws.into_inner()
            }
        };
        // Out of tokio's hands (deregistered from its epoll set), still non-blocking.
        let stream = stream.into_std().map_err(io_failure)?;
        Ok(Conn {
            stream: Stream::Idle(stream),
            usable: true,
        })
    }

    /// The socket, whatever holds it.
    fn fd(&self) -> RawFd {
        match &self.stream {
            Stream::Idle(stream) => stream.as_raw_fd(),
            Stream::Tcp(stream) => stream.as_raw_fd(),
            Stream::Ws(ws) => ws.get_ref().as_raw_fd(),
        }
    }

    /// This end's address: the source address and port the connection went out from, by
    /// which the server's side of it can be found (in /proc/net/tcp, say).
    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        match &self.stream {
            Stream::Idle(stream) => stream.local_addr(),
            Stream::Tcp(stream) => stream.local_addr(),
            Stream::Ws(ws) => ws.get_ref().local_addr(),
        }
    }

    /// True while no probe has woken it (see [`Stream`]).
    pub fn is_idle(&self) -> bool {
        matches!(self.stream, Stream::Idle(_))
    }

    /// The idle socket, for a burst written straight to it; `None` once tokio holds it.
    pub(crate) fn idle_socket(&mut self) -> Option<&mut std::net::TcpStream> {
        match &mut self.stream {
            Stream::Idle(stream) => Some(stream),
            _ => None,
        }
    }

    /// Hand an idle connection to tokio (and tungstenite) so it can be awaited on. It
    /// stays that way: a connection probed once is usually probed again.
    async fn wake(&mut self, opts: &ConnectOptions) -> std::io::Result<()> {
        let Stream::Idle(idle) = &self.stream else {
            return Ok(());
        };
        // A duplicate of the fd goes to tokio; the original closes as the idle variant is
        // replaced below. (Moving it out would need a placeholder in its place.)
        let stream = TcpStream::from_std(idle.try_clone()?)?;
        self.stream = match opts.target.protocol {
            Protocol::Tcp => Stream::Tcp(Box::new(stream)),
            Protocol::WebSocket => Stream::Ws(Box::new(
                WebSocketStream::from_raw_socket(stream, Role::Client, Some(ws_config(opts))).await,
            )),
        };
        Ok(())
    }

    /// True when the server has already closed or reset this connection. A server that
    /// accepts and closes at once (select past FD_SETSIZE, no thread to spawn, no fd left)
    /// leaves the client a connected socket with a FIN or RST waiting in it: only a look
    /// at the socket tells. The look is a peek, so nothing is taken from the stream.
    pub fn closed_by_peer(&self) -> bool {
        let fd = self.fd();
        let mut byte = 0u8;
        // SAFETY: the fd is open (owned by this connection's stream), and the buffer is one
        // writable byte, the length we pass. MSG_PEEK leaves the byte in the socket;
        // MSG_DONTWAIT makes the call return at once.
        let ret = unsafe {
            libc::recv(
                fd,
                (&mut byte as *mut u8).cast(),
                1,
                libc::MSG_PEEK | libc::MSG_DONTWAIT,
            )
        };
        match ret {
            0 => true,
            -1 => !matches!(
                std::io::Error::last_os_error().kind(),
                std::io::ErrorKind::WouldBlock | std::io::ErrorKind::Interrupted
            ),
            _ => false,
        }
    }

    /// Send `payload` and wait until the same bytes come back; returns the round-trip time.
    /// Unbounded in time: callers wrap it in a timeout.
    pub async fn echo(
        &mut self,
        opts: &ConnectOptions,
        payload: &[u8],
    ) -> Result<Duration, EchoError> {
        let failed = |err: std::io::Error| EchoError::Failed(Failure::classify(&err));
        self.wake(opts).await.map_err(failed)?;
        match &mut self.stream {
            Stream::Idle(_) => unreachable!("bug: woken above"),
            Stream::Tcp(stream) => {
                let mut back = vec![0; payload.len()];
                let start = Instant::now();
                stream.write_all(payload).await.map_err(failed)?;
                // TCP is a byte stream: the echo may come back in several pieces.
                stream.read_exact(&mut back).await.map_err(failed)?;
                let rtt = start.elapsed();
                if back == payload {
                    Ok(rtt)
                } else {
                    Err(EchoError::Mismatch)
                }
            }
            Stream::Ws(ws) => {
                let message = Message::binary(payload.to_vec());
                let start = Instant::now();
                ws.send(message)
                    .await
                    .map_err(|err| EchoError::Failed(ws_failure(&err)))?;
                loop {
                    let back = match ws.next().await {
                        Some(Ok(Message::Binary(data))) => data,
                        Some(Ok(Message::Text(text))) => text.as_bytes().to_vec().into(),
                        // tungstenite answers pings itself; neither kind is our echo.
                        Some(Ok(Message::Ping(_) | Message::Pong(_) | Message::Frame(_))) => {
                            continue;
                        }
                        Some(Ok(Message::Close(_))) | None => {
                            return Err(EchoError::Failed(Failure::Reset));
                        }
                        Some(Err(err)) => return Err(EchoError::Failed(ws_failure(&err))),
                    };
                    let rtt = start.elapsed();
                    return if back == payload {
                        Ok(rtt)
                    } else {
                        Err(EchoError::Mismatch)
                    };
                }
            }
        }
    }

    /// Close with a reset (SO_LINGER 0) instead of the usual FIN handshake. A normal close
    /// leaves each connection in TIME_WAIT for a minute, holding its source port and kernel
    /// memory; 10 000 of those would skew the next measurement and use up ports.
    pub fn abort(self) {
        let socket = match &self.stream {
            Stream::Idle(stream) => SockRef::from(stream),
            Stream::Tcp(stream) => SockRef::from(&**stream),
            Stream::Ws(ws) => SockRef::from(ws.get_ref()),
        };
        // Nothing to do if it fails: the socket then closes the ordinary way on drop.
        let _ = socket.set_linger(Some(Duration::ZERO));
    }
}

/// The WebSocket settings of every connection: a small read buffer (see
/// [`ConnectOptions::ws_read_buffer`]).
fn ws_config(opts: &ConnectOptions) -> WebSocketConfig {
    WebSocketConfig::default().read_buffer_size(opts.ws_read_buffer)
}

/// A tungstenite error, named like an I/O failure where it is one.
fn ws_failure(err: &tungstenite::Error) -> Failure {
    match err {
        tungstenite::Error::Io(err) => Failure::classify(err),
        tungstenite::Error::ConnectionClosed | tungstenite::Error::AlreadyClosed => Failure::Reset,
        tungstenite::Error::Http(response) => {
            Failure::Handshake(format!("HTTP {}", response.status()))
        }
        tungstenite::Error::Protocol(why) => Failure::Handshake(why.to_string()),
        other => Failure::Other(other.to_string()),
    }
}

/// `IP_BIND_ADDRESS_NO_PORT` (Linux 4.2+): let `connect` choose the source port, so ports
/// are shared between destinations instead of reserved at `bind`.
fn set_bind_address_no_port(socket: &TcpSocket) -> std::io::Result<()> {
    let on: libc::c_int = 1;
    // SAFETY: the fd is open (owned by `socket`), and `on` is a valid c_int whose size we pass.
    let ret = unsafe {
        libc::setsockopt(
            socket.as_raw_fd(),
            libc::IPPROTO_IP,
            libc::IP_BIND_ADDRESS_NO_PORT,
            (&on as *const libc::c_int).cast(),
            size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if ret == -1 {
        Err(std::io::Error::last_os_error())
    } else {
        Ok(())
    }
}
