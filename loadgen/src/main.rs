//! `cargo run --release -p loadgen -- tcp://127.0.0.1:9005 --conns 10000 --hold 30 --echo 1000`
//!
//! Open N connections to a step, hold them while you watch the step's memory line, check
//! echoes through random ones, then close them all.

use std::process::ExitCode;
use std::time::{Duration, Instant};

use clap::Parser;
use indicatif::{ProgressBar, ProgressStyle};
use loadgen::{ConnectOptions, Pace, Pick, Pool, Protocol, SourceAddrs, Target};

/// Open many connections to one server on this machine, hold them, and check echoes.
#[derive(Parser, Debug)]
#[command(name = "loadgen")]
struct Args {
    /// tcp://127.0.0.1:9005 (steps 01–05) or ws://127.0.0.1:9006/ (steps 06–07); loopback only.
    url: Target,

    /// Connections to open and hold.
    #[arg(long, default_value_t = 1000)]
    conns: usize,

    /// Connection attempts in flight at once.
    #[arg(long, default_value_t = 128)]
    concurrency: usize,

    /// At most this many new connections per second (default: as fast as --concurrency allows).
    #[arg(long, value_name = "PER_SEC")]
    rate: Option<f64>,

    /// Give up on one connection attempt (and its WebSocket upgrade) after this many seconds.
    #[arg(long, value_name = "SECS", default_value_t = 10.0)]
    connect_timeout: f64,

    /// Hold the connections this many seconds before closing them (Ctrl-C ends it early).
    #[arg(long, value_name = "SECS", default_value_t = 10.0)]
    hold: f64,

    /// Echo probes to send, each on a random connection, one after another.
    #[arg(long, value_name = "N", default_value_t = 100)]
    echo: usize,

    /// Also send one message on every connection at once, before the probes: shows how many
    /// the server serves concurrently, and makes a WebSocket server allocate what a
    /// connection costs after its first message.
    #[arg(long)]
    echo_each: bool,

    /// Bytes per echo message.
    #[arg(long, value_name = "BYTES", default_value_t = 64)]
    message_size: usize,

    /// An echo not back after this many seconds counts as lost.
    #[arg(long, value_name = "SECS", default_value_t = 2.0)]
    echo_timeout: f64,

    /// Spread connections over these loopback source addresses (e.g. 127.0.0.2-127.0.0.60):
    /// each one gives another ~28 000 source ports.
    #[arg(long, value_name = "FIRST-LAST")]
    src_addrs: Option<SourceAddrs>,

    /// WebSocket client read buffer in bytes (tungstenite's default, 128 KiB, would cost the
    /// client 1.3 GB at 10 000 connections).
    #[arg(long, value_name = "BYTES", default_value_t = 4096)]
    read_buffer: usize,
}

// One thread: the client takes one core and leaves the other to the server under test,
// and echo round trips are not lengthened by hand-offs between worker threads.
#[tokio::main(flavor = "current_thread")]
async fn main() -> ExitCode {
    let args = Args::parse();
    if args.src_addrs.is_some() && args.url.addr.is_ipv6() {
        eprintln!("loadgen: --src-addrs takes IPv4 loopback addresses; the target is IPv6");
        return ExitCode::FAILURE;
    }

    let mut conns = args.conns;
    match common::raise_fd_limit() {
        Ok(limit) => {
            let max = loadgen::max_conns(limit.soft);
            if conns > max {
                eprintln!(
                    "loadgen: {conns} connections need {conns} file descriptors, but this process \
                     may open only {} ({} kept for itself): holding {max} instead.\nloadgen: {limit}",
                    limit.soft,
                    loadgen::SPARE_FDS
                );
                conns = max;
            }
        }
        Err(err) => eprintln!("loadgen: could not read or raise the open-file limit: {err}"),
    }
    if args.src_addrs.is_none() {
        warn_if_ports_run_out(conns);
    }

    let opts = ConnectOptions {
        target: args.url.clone(),
        src_addrs: args.src_addrs,
        timeout: Duration::from_secs_f64(args.connect_timeout),
        ws_read_buffer: args.read_buffer,
    };
    let pace = Pace {
        concurrency: args.concurrency,
        rate: args.rate,
    };
    let echo_timeout = Duration::from_secs_f64(args.echo_timeout);
    let mut pool = Pool::new(opts);

    let bar = ProgressBar::new(conns as u64).with_style(
        ProgressStyle::with_template("connecting {bar:40} {pos}/{len} ({per_sec}) {msg}")
            .expect("bug: the progress template is valid"),
    );
    let start = Instant::now();
    pool.grow_to(conns, pace, &bar).await;
    bar.finish_and_clear();
    let protocol = match args.url.protocol {
        Protocol::Tcp => "TCP",
        Protocol::WebSocket => "WebSocket",
    };
    println!(
        "held {} of {conns} {protocol} connections to {} (opened in {:.1} s)",
        pool.len(),
        args.url,
        start.elapsed().as_secs_f64()
    );
    let mut all_well = pool.len() == conns;
    // A server that closes what it accepts (select past FD_SETSIZE, a failed thread
    // spawn) does so at once; give those closes a moment to arrive, then count them.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let closed = pool.closed_by_server();
    if closed > 0 {
        println!(
            "{closed} of them already closed by the server: read its log (fd limit, \
             select's FD_SETSIZE, no thread to spawn)"
        );
        all_well = false;
    }
    if pool.failures.total() > 0 {
        println!(
            "{} failed:\n{}",
            pool.failures.total(),
            pool.failures.explained().trim_end()
        );
    }

    if args.echo_each && !pool.is_empty() {
        let stats = pool.echo_each(0, args.message_size, echo_timeout).await;
        println!(
            "one message on every connection at once: {} served; {stats}",
            stats.ok
        );
        all_well &= stats.ok == stats.sent();
    }
    if args.echo > 0 && pool.usable() > 0 {
        let stats = pool
            .probe(Pick::Random, args.echo, args.message_size, echo_timeout)
            .await;
        println!("echo probes on random connections: {stats}");
        all_well &= stats.ok == args.echo;
    }

    let hold = Duration::from_secs_f64(args.hold);
    if !hold.is_zero() && !pool.is_empty() {
        println!(
            "holding {} connections for {:.0} s (Ctrl-C to stop sooner)",
            pool.len(),
            hold.as_secs_f64()
        );
        tokio::select! {
            () = tokio::time::sleep(hold) => {}
            _ = tokio::signal::ctrl_c() => println!("interrupted"),
        }
    }
    pool.close();
    if all_well {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

/// One source address gets one source port per connection to the same server, from
/// net.ipv4.ip_local_port_range; say so before the kernel does with EADDRNOTAVAIL.
fn warn_if_ports_run_out(conns: usize) {
    let Ok(range) = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range") else {
        return;
    };
    let ends: Vec<usize> = range
        .split_whitespace()
        .filter_map(|n| n.parse().ok())
        .collect();
    if let [low, high] = ends[..] {
        let ports = high + 1 - low;
        if conns > ports {
            eprintln!(
                "loadgen: {conns} connections from one source address need {conns} source ports, \
                 but net.ipv4.ip_local_port_range gives {ports}: add --src-addrs 127.0.0.2-127.0.0.60"
            );
        }
    }
}
