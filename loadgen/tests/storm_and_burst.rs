//! The busy-side primitives against a tiny echo server started inside the test: a storm
//! opens every connection it is asked for and echoes once on each; a burst sends one
//! message per connection per round, all counted on the server's side too.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use loadgen::{ConnectOptions, Pool};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

/// Bytes per message in these tests.
const SIZE: usize = 32;

/// A raw TCP echo server on a free loopback port that counts the connections it accepted
/// and the `SIZE`-byte messages it echoed. With `answer` false it reads and never replies.
async fn counting_server(answer: bool) -> (SocketAddr, Arc<AtomicUsize>, Arc<AtomicUsize>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (accepted, messages) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let (on_accept, on_message) = (accepted.clone(), messages.clone());
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            on_accept.fetch_add(1, Ordering::Relaxed);
            let on_message = on_message.clone();
            tokio::spawn(async move {
                let mut buf = [0u8; SIZE];
                while stream.read_exact(&mut buf).await.is_ok() {
                    on_message.fetch_add(1, Ordering::Relaxed);
                    if answer && stream.write_all(&buf).await.is_err() {
                        break;
                    }
                }
            });
        }
    });
    (addr, accepted, messages)
}

fn pool(addr: SocketAddr) -> Pool {
    let mut opts = ConnectOptions::new(format!("tcp://{addr}").parse().unwrap());
    opts.timeout = Duration::from_secs(10);
    Pool::new(opts)
}

/// A storm opens all `n` connections, echoes once on each, and times every connect.
#[tokio::test]
async fn a_storm_opens_every_connection_and_echoes_once_on_each() {
    let (addr, accepted, messages) = counting_server(true).await;
    let mut pool = pool(addr);
    let storm = pool.storm(300, 64, SIZE, Duration::from_secs(10)).await;
    assert_eq!((storm.opened, storm.failed), (300, 0), "{storm:?}");
    assert_eq!(pool.len(), 300, "the storm's connections stay in the pool");
    assert_eq!(
        storm.echo.ok, 300,
        "one echo per new connection: {}",
        storm.echo
    );
    assert_eq!(storm.connect_times.len(), 300);
    assert!(storm.connect_times.is_sorted());
    assert!(storm.conns_per_s() > 0.0 && storm.connect_summary().is_some());
    assert_eq!(accepted.load(Ordering::Relaxed), 300);
    assert_eq!(messages.load(Ordering::Relaxed), 300);
    // A second storm adds to the same pool.
    let more = pool.storm(20, 64, SIZE, Duration::from_secs(10)).await;
    assert_eq!((more.opened, pool.len()), (20, 320));
    // Shrinking closes the newest and keeps the rest usable.
    pool.shrink_to(5);
    assert_eq!(pool.len(), 5);
    let burst = pool.burst(1, SIZE, Duration::from_secs(10)).await;
    assert_eq!(burst.echo.ok, 5, "{}", burst.echo);
}

/// A burst sends one message on every connection per round: rounds × connections echoes.
#[tokio::test]
async fn a_burst_sends_one_message_per_connection_per_round() {
    let (addr, _, messages) = counting_server(true).await;
    let mut pool = pool(addr);
    pool.storm(200, 64, SIZE, Duration::from_secs(10)).await;
    let before = messages.load(Ordering::Relaxed);
    let burst = pool.burst(3, SIZE, Duration::from_secs(10)).await;
    assert_eq!(burst.rounds, 3);
    assert_eq!(burst.echo.ok, 600, "{}", burst.echo);
    assert_eq!(burst.echo.rtts.len(), 600);
    assert_eq!(messages.load(Ordering::Relaxed) - before, 600);
    assert!(burst.msgs_per_s() > 0.0 && burst.echo.summary().is_some());
}

/// Echoes that never come back are counted lost, and those connections sit out later rounds.
#[tokio::test]
async fn a_burst_against_a_silent_server_counts_lost_echoes_once() {
    let (addr, _, messages) = counting_server(false).await;
    let mut pool = pool(addr);
    let storm = pool.storm(10, 10, SIZE, Duration::from_millis(200)).await;
    assert_eq!((storm.opened, storm.echo.lost), (10, 10), "{}", storm.echo);
    let burst = pool.burst(2, SIZE, Duration::from_millis(200)).await;
    assert_eq!(
        burst.echo.sent(),
        0,
        "no usable connection left: {}",
        burst.echo
    );
    assert_eq!(messages.load(Ordering::Relaxed), 10);
}
