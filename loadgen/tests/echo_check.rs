//! loadgen's echo check against a server that gets echoes wrong on purpose. "1 000 000 of
//! 1 000 000 back intact" is only as true as this check: an echo with one byte flipped, one
//! cut short, one that carries an earlier message's bytes, or one delivered on the wrong
//! connection must never count as ok.
//!
//! Each fault is tried in both protocols (raw TCP, WebSocket) and through every path that
//! checks echoes: probes (through tokio and tungstenite), the storm (one echo on each new
//! connection), and the burst (written straight to the idle sockets) on io_uring and on
//! epoll. The server runs in the test, on a free loopback port; every wait is bounded.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use indicatif::ProgressBar;
use loadgen::{ConnectOptions, EchoStats, Pace, Pick, Pool, Protocol, Target};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::oneshot;

/// Bytes per message: room for loadgen's connection number (8 bytes) and the random rest.
const SIZE: usize = 32;

/// Connections in a storm or a burst (even: the swapping server pairs them).
const CONNS: usize = 4;

/// Long enough for any echo on loopback.
const DEADLINE: Duration = Duration::from_secs(5);

/// How long an echo cut short and held is waited for: it never completes.
const HELD: Duration = Duration::from_secs(1);

/// What the server gets wrong, on every connection.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Fault {
    /// Nothing: every echo right (the harness itself works).
    None,
    /// One byte of the payload flipped: the length and the frame header are right.
    Corrupt,
    /// All of the echo but its last byte, then nothing more: the connection stays open.
    CutAndHold,
    /// All of the echo but its last byte, then the connection closed.
    CutAndClose,
    /// Each message answered with the one before it (the first with itself): echoes out of
    /// order on one connection. loadgen sends a connection's next message only once the
    /// last one's echo is in, so "an earlier message's bytes in a later echo" is the
    /// reordering a client that waits can meet.
    Stale,
    /// Two connections' messages swapped: each gets the other's echo. The burst sends the
    /// same random payload on every connection, so this passes unless each connection's
    /// message is its own.
    Swap,
}

/// Which of loadgen's echo checks is used.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Path {
    /// `Pool::probe`: one connection, three echoes one after another, through tokio.
    Probes,
    /// `Pool::storm`: CONNS new connections at once, one echo each, through tokio.
    Storm,
    /// `Pool::burst`, two rounds on CONNS idle connections, on io_uring where it runs.
    BurstRing,
    /// The same burst on epoll (`Pool::burst_on_epoll`), as where io_uring is refused.
    BurstEpoll,
}

const PATHS: [Path; 4] = [Path::Probes, Path::Storm, Path::BurstRing, Path::BurstEpoll];
const PROTOCOLS: [Protocol; 2] = [Protocol::Tcp, Protocol::WebSocket];

/// A message waiting for a partner to swap with (see [`Fault::Swap`]), and where to send
/// the partner's.
type Waiting = (Vec<u8>, oneshot::Sender<Vec<u8>>);

/// The swapping server's meeting point: at most one message waits at a time.
#[derive(Default)]
struct Swaps(Mutex<Option<Waiting>>);

impl Swaps {
    /// Give `mine` to the next connection that brings a message, and take its message; the
    /// first of a pair waits for the second.
    async fn trade(&self, mine: Vec<u8>) -> Vec<u8> {
        let theirs = {
            let mut waiting = self.0.lock().unwrap();
            match waiting.take() {
                Some((theirs, partner)) => {
                    let _ = partner.send(mine);
                    return theirs;
                }
                None => {
                    let (partner, theirs) = oneshot::channel();
                    *waiting = Some((mine, partner));
                    theirs
                }
            }
        };
        theirs.await.unwrap_or_default()
    }
}

/// A server that speaks `protocol` and gets every connection's echoes wrong by `fault`,
/// on a free loopback port.
async fn faulty_server(protocol: Protocol, fault: Fault) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let swaps = Arc::new(Swaps::default());
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            tokio::spawn(serve(stream, protocol, fault, swaps.clone()));
        }
    });
    addr
}

/// One connection: each message read, answered as `fault` says.
async fn serve(stream: TcpStream, protocol: Protocol, fault: Fault, swaps: Arc<Swaps>) {
    let mut stream = match protocol {
        Protocol::Tcp => stream,
        // tungstenite does the upgrade; the frames are then read and written by hand, so
        // that an echo can be cut anywhere. The client sends nothing before the upgrade's
        // answer, so no frame is left behind in tungstenite's buffer.
        Protocol::WebSocket => match tokio_tungstenite::accept_async(stream).await {
            Ok(ws) => ws.into_inner(),
            Err(_) => return,
        },
    };
    let mut previous: Option<Vec<u8>> = None;
    while let Some(payload) = read_message(&mut stream, protocol).await {
        let answer = match fault {
            Fault::None | Fault::CutAndHold | Fault::CutAndClose => payload,
            Fault::Corrupt => {
                let mut wrong = payload;
                wrong[SIZE / 2] ^= 0x01;
                wrong
            }
            Fault::Stale => previous.replace(payload.clone()).unwrap_or(payload),
            Fault::Swap => swaps.trade(payload).await,
        };
        let mut reply = encode(protocol, &answer);
        if matches!(fault, Fault::CutAndHold | Fault::CutAndClose) {
            reply.pop();
        }
        if stream.write_all(&reply).await.is_err() {
            return;
        }
        match fault {
            Fault::CutAndClose => return,
            Fault::CutAndHold => {
                // Read on (so the client's later bytes are taken) but answer nothing,
                // until the client closes.
                let mut sink = [0u8; 256];
                while let Ok(1..) = stream.read(&mut sink).await {}
                return;
            }
            _ => {}
        }
    }
}

/// The next message's payload: SIZE bytes of TCP, or one client frame, unmasked. `None` at
/// the end of the stream or on anything unexpected.
async fn read_message(
    stream: &mut (impl AsyncRead + Unpin),
    protocol: Protocol,
) -> Option<Vec<u8>> {
    if protocol == Protocol::Tcp {
        let mut payload = vec![0u8; SIZE];
        stream.read_exact(&mut payload).await.ok()?;
        return Some(payload);
    }
    let mut head = [0u8; 2];
    stream.read_exact(&mut head).await.ok()?;
    // A binary frame, masked as a client's must be, short enough for a 7-bit length.
    let len = usize::from(head[1] & 0x7f);
    if head[0] != 0x82 || head[1] & 0x80 == 0 || len > 125 {
        return None;
    }
    let mut mask = [0u8; 4];
    stream.read_exact(&mut mask).await.ok()?;
    let mut payload = vec![0u8; len];
    stream.read_exact(&mut payload).await.ok()?;
    for (byte, m) in payload.iter_mut().zip(mask.iter().cycle()) {
        *byte ^= m;
    }
    Some(payload)
}

/// The bytes that carry `payload` back: itself, or a server's (unmasked) binary frame.
fn encode(protocol: Protocol, payload: &[u8]) -> Vec<u8> {
    match protocol {
        Protocol::Tcp => payload.to_vec(),
        Protocol::WebSocket => {
            let mut frame = vec![0x82, payload.len() as u8];
            frame.extend_from_slice(payload);
            frame
        }
    }
}

/// Drive a server with `fault` through `path` in `protocol`, and return loadgen's count.
async fn run(protocol: Protocol, fault: Fault, path: Path) -> EchoStats {
    let addr = faulty_server(protocol, fault).await;
    let url = match protocol {
        Protocol::Tcp => format!("tcp://{addr}"),
        Protocol::WebSocket => format!("ws://{addr}/"),
    };
    let mut opts = ConnectOptions::new(url.parse::<Target>().unwrap());
    opts.timeout = DEADLINE;
    let deadline = match fault {
        Fault::CutAndHold => HELD,
        _ => DEADLINE,
    };
    let mut pool = Pool::new(opts);
    if path == Path::BurstEpoll {
        pool = pool.burst_on_epoll();
    }
    let stats = match path {
        Path::Probes => {
            pool.grow_to(1, Pace::default(), &ProgressBar::hidden())
                .await;
            assert_eq!(pool.len(), 1, "{}", pool.failures.short());
            pool.probe(Pick::Conn(0), 3, SIZE, deadline).await
        }
        Path::Storm => pool.storm(CONNS, CONNS, SIZE, deadline).await.echo,
        Path::BurstRing | Path::BurstEpoll => {
            pool.grow_to(CONNS, Pace::default(), &ProgressBar::hidden())
                .await;
            assert_eq!(pool.len(), CONNS, "{}", pool.failures.short());
            pool.burst(2, SIZE, deadline).await.echo
        }
    };
    pool.close();
    stats
}

/// loadgen's count of echoes: (ok, lost, mismatched, failed).
type Counts = (usize, usize, usize, usize);

fn counts(stats: &EchoStats) -> Counts {
    (stats.ok, stats.lost, stats.mismatched, stats.failed)
}

/// Run `fault` through every path in both protocols; `expected(path)` gives the counts
/// (ok, lost, mismatched, failed), `None` where the fault cannot arise on that path. All
/// cases are run concurrently, and every wrong count is named at once.
async fn check(fault: Fault, expected: impl Fn(Path) -> Option<Counts>) {
    if !io_uring_runs() {
        eprintln!(
            "note: io_uring is refused here, so the burst's io_uring path falls back to epoll \
             and is not itself checked"
        );
    }
    let mut cases = Vec::new();
    for protocol in PROTOCOLS {
        for path in PATHS {
            if let Some(want) = expected(path) {
                cases.push(async move { (protocol, path, want, run(protocol, fault, path).await) });
            }
        }
    }
    let mut wrong = Vec::new();
    for (protocol, path, want, stats) in futures_util::future::join_all(cases).await {
        if counts(&stats) != want {
            wrong.push(format!(
                "  {protocol:?} {path:?}: counted {stats}, want (ok, lost, mismatched, \
                 failed) = {want:?}"
            ));
        }
    }
    assert!(
        wrong.is_empty(),
        "a server with fault {fault:?}: loadgen miscounted its echoes\n{}",
        wrong.join("\n")
    );
}

fn io_uring_runs() -> bool {
    io_uring::IoUring::new(2).is_ok()
}

/// The harness's own server, without a fault, gets every echo counted ok: the faults
/// below are what loadgen catches, not the harness's mistakes.
#[tokio::test]
async fn a_faithful_server_gets_every_echo_counted_ok() {
    check(Fault::None, |path| match path {
        Path::Probes => Some((3, 0, 0, 0)),
        Path::Storm => Some((CONNS, 0, 0, 0)),
        Path::BurstRing | Path::BurstEpoll => Some((2 * CONNS, 0, 0, 0)),
    })
    .await;
}

/// One byte flipped in the payload is a mismatch on every path; the connection is not used
/// again, so a batch stops there. Breaks if any check compares less than every byte.
#[tokio::test]
async fn a_flipped_byte_is_a_mismatch() {
    check(Fault::Corrupt, |path| match path {
        Path::Probes => Some((0, 0, 1, 0)),
        Path::Storm | Path::BurstRing | Path::BurstEpoll => Some((0, 0, CONNS, 0)),
    })
    .await;
}

/// An echo cut short while the connection stays open never completes: lost, never ok.
/// Breaks if a check takes the bytes it has for the whole echo.
#[tokio::test]
async fn an_echo_cut_short_and_held_is_lost() {
    check(Fault::CutAndHold, |path| match path {
        Path::Probes => Some((0, 1, 0, 0)),
        Path::Storm | Path::BurstRing | Path::BurstEpoll => Some((0, CONNS, 0, 0)),
    })
    .await;
}

/// An echo cut short and then the connection closed is a failed connection, never ok.
#[tokio::test]
async fn an_echo_cut_short_and_closed_is_failed() {
    check(Fault::CutAndClose, |path| match path {
        Path::Probes => Some((0, 0, 0, 1)),
        Path::Storm | Path::BurstRing | Path::BurstEpoll => Some((0, 0, 0, CONNS)),
    })
    .await;
}

/// Echoes out of order on a connection (each message answered with the one before) are
/// mismatches from the second message on: every message's payload is its own (random).
/// The storm sends one message per connection, so it has no order to get wrong.
#[tokio::test]
async fn an_earlier_message_in_a_later_echo_is_a_mismatch() {
    check(Fault::Stale, |path| match path {
        Path::Probes => Some((1, 0, 1, 0)),
        Path::Storm => None,
        Path::BurstRing | Path::BurstEpoll => Some((CONNS, 0, CONNS, 0)),
    })
    .await;
}

/// Two connections' echoes swapped are mismatches on both: every connection's message is
/// its own, in a burst too (loadgen mixes each connection's number into it). Probes go one
/// at a time, so there is never a second echo to swap with.
/// Breaks if the burst sends the same bytes on every connection.
#[tokio::test]
async fn echoes_swapped_between_connections_are_mismatches() {
    check(Fault::Swap, |path| match path {
        Path::Probes => None,
        Path::Storm => Some((0, 0, CONNS, 0)),
        Path::BurstRing | Path::BurstEpoll => Some((0, 0, CONNS, 0)),
    })
    .await;
}
