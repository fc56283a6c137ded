//! loadgen against tiny echo servers started inside the test: what it counts as held,
//! served, ok, lost, mismatched and refused.

use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use indicatif::ProgressBar;
use loadgen::{ConnectOptions, Failure, Pace, Pick, Pool, Target};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

/// What the test server does with the bytes it reads.
#[derive(Clone, Copy)]
enum Behaviour {
    Echo,
    /// Echo with every byte flipped: the client must see a mismatch.
    Corrupt,
    /// Read and never answer: the client must count the echo as lost.
    Silent,
    /// Close every other connection as soon as it is accepted, as select does past
    /// FD_SETSIZE: the client must not count those as alive.
    CloseEveryOther,
}

/// A raw TCP server on a free loopback port; returns its address and the peers' addresses
/// in the order it accepted them.
async fn tcp_server(behaviour: Behaviour) -> (SocketAddr, Arc<Mutex<Vec<IpAddr>>>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let peers = Arc::new(Mutex::new(Vec::new()));
    let seen = peers.clone();
    tokio::spawn(async move {
        let mut accepted = 0;
        while let Ok((mut stream, peer)) = listener.accept().await {
            seen.lock().unwrap().push(peer.ip());
            accepted += 1;
            if matches!(behaviour, Behaviour::CloseEveryOther) && accepted % 2 == 0 {
                drop(stream);
                continue;
            }
            tokio::spawn(async move {
                let mut buf = [0u8; 4096];
                while let Ok(n @ 1..) = stream.read(&mut buf).await {
                    let reply: Vec<u8> = match behaviour {
                        Behaviour::Echo | Behaviour::CloseEveryOther => buf[..n].to_vec(),
                        Behaviour::Corrupt => buf[..n].iter().map(|b| !b).collect(),
                        Behaviour::Silent => continue,
                    };
                    if stream.write_all(&reply).await.is_err() {
                        break;
                    }
                }
            });
        }
    });
    (addr, peers)
}

/// A WebSocket echo server (tokio-tungstenite's own accept) on a free loopback port.
async fn ws_server() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let Ok(mut ws) = tokio_tungstenite::accept_async(stream).await else {
                    return;
                };
                while let Some(Ok(message)) = ws.next().await {
                    if (message.is_binary() || message.is_text()) && ws.send(message).await.is_err()
                    {
                        break;
                    }
                }
            });
        }
    });
    addr
}

fn pool(url: &str) -> Pool {
    let mut opts = ConnectOptions::new(url.parse::<Target>().unwrap());
    opts.timeout = Duration::from_secs(5);
    Pool::new(opts)
}

const DEADLINE: Duration = Duration::from_secs(5);

/// Every connection is held, served at once, and echoes byte for byte over raw TCP.
#[tokio::test]
async fn tcp_connections_are_held_served_and_echo() {
    let (addr, _) = tcp_server(Behaviour::Echo).await;
    let mut pool = pool(&format!("tcp://{addr}"));
    let opened = pool
        .grow_to(200, Pace::default(), &ProgressBar::hidden())
        .await;
    assert_eq!(
        (opened, pool.len()),
        (200, 200),
        "failures: {}",
        pool.failures.short()
    );

    let served = pool.echo_each(0, 64, DEADLINE).await;
    assert_eq!(served.ok, 200, "one message on each connection: {served}");

    let probes = pool.probe(Pick::Random, 100, 1000, DEADLINE).await;
    assert_eq!((probes.ok, probes.sent()), (100, 100), "{probes}");
    let summary = probes.summary().expect("100 round trips were timed");
    assert!(summary.p50 <= summary.p99 && summary.p99 <= summary.max);

    let one = pool.probe(Pick::Conn(0), 50, 8, DEADLINE).await;
    assert_eq!(one.ok, 50, "{one}");
    pool.close();
}

/// Connections the server closed right after accepting are told apart from live ones.
#[tokio::test]
async fn connections_the_server_closed_are_counted() {
    let (addr, _) = tcp_server(Behaviour::CloseEveryOther).await;
    let mut pool = pool(&format!("tcp://{addr}"));
    pool.grow_to(20, Pace::default(), &ProgressBar::hidden())
        .await;
    assert_eq!(pool.len(), 20, "the TCP handshakes all complete");
    // The server's FINs arrive within a moment; wait for them, boundedly.
    let mut closed = 0;
    for _ in 0..50 {
        closed = pool.closed_by_server();
        if closed == 10 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(
        closed, 10,
        "half of the connections were closed by the server"
    );
    pool.close();
}

/// The same over WebSocket: the upgrade, then binary messages echoed whole.
#[tokio::test]
async fn websocket_connections_upgrade_and_echo() {
    let addr = ws_server().await;
    let mut pool = pool(&format!("ws://{addr}/"));
    pool.grow_to(
        50,
        Pace {
            concurrency: 10,
            rate: None,
        },
        &ProgressBar::hidden(),
    )
    .await;
    assert_eq!(pool.len(), 50, "failures: {}", pool.failures.short());
    let served = pool.echo_each(0, 16, DEADLINE).await;
    assert_eq!(served.ok, 50, "{served}");
    let probes = pool.probe(Pick::Random, 50, 5000, DEADLINE).await;
    assert_eq!(probes.ok, 50, "{probes}");
    pool.close();
}

/// Wrong bytes back are a mismatch, no bytes back are lost; neither connection is probed again.
#[tokio::test]
async fn wrong_and_missing_echoes_are_told_apart() {
    let (corrupt, _) = tcp_server(Behaviour::Corrupt).await;
    let mut pool_c = pool(&format!("tcp://{corrupt}"));
    pool_c
        .grow_to(3, Pace::default(), &ProgressBar::hidden())
        .await;
    let stats = pool_c.echo_each(0, 32, DEADLINE).await;
    assert_eq!((stats.ok, stats.mismatched), (0, 3), "{stats}");
    assert_eq!(
        pool_c.usable(),
        0,
        "a connection that echoed wrong bytes is not probed again"
    );

    let (silent, _) = tcp_server(Behaviour::Silent).await;
    let mut pool_s = pool(&format!("tcp://{silent}"));
    pool_s
        .grow_to(2, Pace::default(), &ProgressBar::hidden())
        .await;
    let stats = pool_s
        .probe(Pick::Conn(0), 5, 32, Duration::from_millis(200))
        .await;
    assert_eq!(
        (stats.lost, stats.sent()),
        (1, 1),
        "the batch stops at the first lost echo: {stats}"
    );
    assert_eq!(
        pool_s.len(),
        2,
        "a connection with a lost echo is still held"
    );
}

/// Nothing listening: every attempt is counted as refused, and the pool ends by itself.
#[tokio::test]
async fn refused_connections_are_counted_by_reason() {
    let port = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.local_addr().unwrap().port()
    }; // dropped: nothing listens there now
    let mut pool = pool(&format!("tcp://127.0.0.1:{port}"));
    let opened = pool
        .grow_to(20, Pace::default(), &ProgressBar::hidden())
        .await;
    assert_eq!(opened, 0);
    assert_eq!(pool.failures.by_count(), vec![(&Failure::Refused, 20)]);
}

/// --src-addrs: connections leave from each address of the range in turn, in order:
/// opened one at a time, the server accepts them from .2, .3, .4, .2, ... (random picking
/// would pass one time in 3^9). Breaks if the address is not chosen by connection index.
#[tokio::test]
async fn source_addresses_are_spread_round_robin() {
    let (addr, peers) = tcp_server(Behaviour::Echo).await;
    let mut opts = ConnectOptions::new(format!("tcp://{addr}").parse().unwrap());
    opts.src_addrs = Some("127.0.0.2-127.0.0.4".parse().unwrap());
    let mut pool = Pool::new(opts);
    let one_at_a_time = Pace {
        concurrency: 1,
        ..Pace::default()
    };
    pool.grow_to(9, one_at_a_time, &ProgressBar::hidden()).await;
    assert_eq!(pool.len(), 9, "failures: {}", pool.failures.short());
    // The server saw each accept before the client counted the echo back.
    assert_eq!(pool.echo_each(0, 8, DEADLINE).await.ok, 9);
    let seen = peers.lock().unwrap().clone();
    let in_turn: Vec<IpAddr> = [2, 3, 4]
        .into_iter()
        .cycle()
        .take(9)
        .map(|last| IpAddr::from([127, 0, 0, last]))
        .collect();
    assert_eq!(
        seen, in_turn,
        "source addresses in the order connections were opened"
    );
}

/// A burst counts the same whichever way it goes: through io_uring where it runs (the
/// default), or through epoll (where io_uring is refused): echoes ok and timed end to end,
/// wrong bytes mismatched, silence lost (and the receives still waiting taken back from
/// the kernel), a connection the server closed failed.
/// Breaks if either path miscounts one outcome.
#[tokio::test]
async fn a_burst_counts_the_same_on_io_uring_and_on_epoll() {
    for epoll_only in [false, true] {
        let way = if epoll_only {
            "epoll"
        } else {
            "io_uring (or epoll)"
        };
        let burst = |addr: SocketAddr, n: usize, deadline: Duration| async move {
            let mut pool = pool(&format!("tcp://{addr}"));
            if epoll_only {
                pool = pool.burst_on_epoll();
            }
            pool.grow_to(n, Pace::default(), &ProgressBar::hidden())
                .await;
            // The server's FINs (CloseEveryOther) arrive within a moment.
            tokio::time::sleep(Duration::from_millis(100)).await;
            let stats = pool.echo_each(0, 32, deadline).await;
            (stats, pool.usable())
        };

        let (echo, _) = tcp_server(Behaviour::Echo).await;
        let (stats, usable) = burst(echo, 300, DEADLINE).await;
        assert_eq!(
            (stats.ok, stats.sent(), usable),
            (300, 300, 300),
            "{way}: {stats}"
        );
        let span = stats.span().expect("a burst is timed end to end");
        assert!(span >= stats.summary().unwrap().max, "{way}: {stats}");

        let (corrupt, _) = tcp_server(Behaviour::Corrupt).await;
        let (stats, usable) = burst(corrupt, 3, DEADLINE).await;
        assert_eq!((stats.mismatched, usable), (3, 0), "{way}: {stats}");

        let (silent, _) = tcp_server(Behaviour::Silent).await;
        let (stats, usable) = burst(silent, 3, Duration::from_millis(300)).await;
        assert_eq!((stats.lost, usable), (3, 0), "{way}: {stats}");

        let (closing, _) = tcp_server(Behaviour::CloseEveryOther).await;
        let (stats, _) = burst(closing, 10, DEADLINE).await;
        assert_eq!((stats.ok, stats.failed), (5, 5), "{way}: {stats}");
    }
}
