//! `cargo run --release -p loadgen -- tcp://127.0.0.1:9005 --conns 10000 --hold 30 --echo 1000`
//!
//! Open N connections to a step, hold them while you watch the step's memory line, check
//! echoes through random connections, then close them all. Past one process's open-file
//! limit, the connections are shared among child processes (see `fleet.rs`).

use std::process::ExitCode;
use std::time::{Duration, Instant};

use clap::Parser;
use indicatif::{ProgressBar, ProgressStyle};
use loadgen::fleet::{ChildReport, Fleet, Opened, Order};
use loadgen::{ConnectOptions, EchoStats, Pace, Pick, Pool, Protocol, SourceAddrs, Target, cli};
use tokio::io::AsyncBufReadExt;

/// Open many connections to one server on this machine, hold them, and check echoes.
#[derive(Parser, Debug)]
#[command(name = "loadgen")]
struct Args {
    /// tcp://127.0.0.1:9005 (steps 01–05) or ws://127.0.0.1:9006/ (steps 06–08); loopback only.
    url: Target,

    /// Connections to open and hold; past this process's open-file limit, child processes
    /// share them.
    #[arg(long, default_value_t = 1000, value_parser = clap::value_parser!(u64).range(1..=10_000_000))]
    conns: u64,

    /// Connection attempts in flight at once (in all processes together).
    #[arg(long, default_value_t = 128, value_parser = clap::value_parser!(u64).range(1..=100_000))]
    concurrency: u64,

    /// At most this many new connections per second, in all (default: as fast as --concurrency allows).
    #[arg(long, value_name = "PER_SEC", value_parser = cli::rate)]
    rate: Option<f64>,

    /// Give up on one connection attempt (and its WebSocket upgrade) after this many seconds.
    #[arg(long, value_name = "SECS", default_value_t = 10.0, value_parser = cli::timeout)]
    connect_timeout: f64,

    /// Hold the connections this many seconds before closing them (Ctrl-C ends it early).
    #[arg(long, value_name = "SECS", default_value_t = 10.0, value_parser = cli::hold)]
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
    #[arg(long, value_name = "BYTES", default_value_t = 64, value_parser = cli::message_size)]
    message_size: usize,

    /// An echo not back after this many seconds counts as lost.
    #[arg(long, value_name = "SECS", default_value_t = 2.0, value_parser = cli::timeout)]
    echo_timeout: f64,

    /// Spread connections over these loopback source addresses (e.g. 127.0.0.2-127.0.0.60)
    /// [default: by itself past 14 000 connections, under 14 000 per address].
    #[arg(long, value_name = "FIRST-LAST")]
    src_addrs: Option<SourceAddrs>,

    /// WebSocket client read buffer in bytes, for probed connections (idle ones have none).
    #[arg(long, value_name = "BYTES", default_value_t = 4096, value_parser = clap::value_parser!(u64).range(64..=1 << 24))]
    read_buffer: u64,

    /// Print the summary as one JSON object on stdout, after the text.
    #[arg(long)]
    json: bool,

    /// For a program driving loadgen: once the connections are open, print the summary as
    /// one JSON line and wait for orders on stdin instead of the burst, probes and hold,
    /// one a line: `burst` (one message on every connection at once) or `probe N`, each
    /// answered by one JSON line. End of stdin closes the connections.
    #[arg(long)]
    orders: bool,

    /// Run as a child holding one share (the parent starts children with this).
    #[arg(long, hide = true)]
    child: bool,

    /// The number of this process's first connection among all processes' (picks its
    /// source addresses).
    #[arg(long, hide = true, default_value_t = 0)]
    first_index: usize,
}

impl Args {
    fn connect_options(&self) -> ConnectOptions {
        ConnectOptions {
            target: self.url.clone(),
            src_addrs: self.src_addrs,
            timeout: Duration::from_secs_f64(self.connect_timeout),
            ws_read_buffer: self.read_buffer as usize,
        }
    }

    fn echo_timeout(&self) -> Duration {
        Duration::from_secs_f64(self.echo_timeout)
    }
}

/// Everything a run found, printed as text and (with `--json`) as one object.
#[derive(Debug, Default, serde::Serialize)]
struct Summary {
    conns: usize,
    /// Processes that held connections (1 without children).
    processes: usize,
    opened: Opened,
    open_seconds: f64,
    /// Held connections whose echo came back in the burst, and how.
    burst: Option<EchoStats>,
    probes: Option<EchoStats>,
}

// One thread: the client takes one core and leaves the other to the server under test,
// and echo round trips are not lengthened by hand-offs between worker threads.
#[tokio::main(flavor = "current_thread")]
async fn main() -> ExitCode {
    let mut args = Args::parse();
    if args.src_addrs.is_some() && args.url.addr.is_ipv6() {
        eprintln!("loadgen: --src-addrs takes IPv4 loopback addresses; the target is IPv6");
        return ExitCode::FAILURE;
    }
    let share = match common::raise_fd_limit() {
        Ok(limit) => loadgen::max_conns(limit.soft).max(1),
        Err(err) => {
            eprintln!("loadgen: could not read or raise the open-file limit: {err}");
            1024
        }
    };
    if args.child {
        return child(&args).await;
    }

    let conns = args.conns as usize;
    if args.src_addrs.is_none() && args.url.addr.is_ipv4() {
        args.src_addrs = SourceAddrs::spread(conns);
        if let Some(spread) = args.src_addrs {
            eprintln!(
                "loadgen: {conns} connections to one address: spreading them over source \
                 addresses {spread}, under {} each",
                loadgen::PER_SOURCE
            );
        }
    }
    let bar = ProgressBar::new(conns as u64).with_style(
        ProgressStyle::with_template(
            "connecting {bar:40} {pos}/{len} ({per_sec}, {elapsed}) {msg}",
        )
        .expect("bug: the progress template is valid"),
    );
    let start = Instant::now();
    let opening = if conns <= share {
        open_here(&args, &bar, start).await
    } else {
        eprintln!(
            "loadgen: one process may hold {share} connections (its open-file limit): \
             {} child processes share the {conns}",
            conns.div_ceil(share)
        );
        open_in_children(&args, share, &bar, start)
    };
    let (mut held, mut summary) = match opening {
        Ok(opened) => opened,
        Err(err) => {
            bar.abandon();
            eprintln!("loadgen: {err}");
            return ExitCode::FAILURE;
        }
    };
    print_opened(&args, &summary);
    let result = if args.orders {
        obey(&args, &mut held, &summary).await
    } else {
        run(&args, &mut held, &mut summary).await
    };
    held.close();
    match result {
        Ok(all_well) if all_well => ExitCode::SUCCESS,
        Ok(_) => ExitCode::FAILURE,
        Err(err) => {
            eprintln!("loadgen: {err}");
            ExitCode::FAILURE
        }
    }
}

/// The open connections: all in this process, or shared among child processes.
enum Held {
    Here(Pool),
    InChildren(Fleet),
}

impl Held {
    /// One message on every connection at once; the echoes, counted and timed.
    async fn burst(&mut self, args: &Args) -> Result<EchoStats, String> {
        match self {
            Held::Here(pool) => Ok(pool
                .echo_each(0, args.message_size, args.echo_timeout())
                .await),
            Held::InChildren(fleet) => {
                for i in 0..fleet.len() {
                    fleet.tell(i, "burst")?;
                }
                fleet.collect_echoes(echo_patience(args))
            }
        }
    }

    /// `n` echo probes, one after another, each on a random connection (with children:
    /// their shares of `n` at the same time, one after another in each child).
    async fn probe(&mut self, n: usize, args: &Args) -> Result<EchoStats, String> {
        match self {
            Held::Here(pool) => Ok(pool
                .probe(Pick::Random, n, args.message_size, args.echo_timeout())
                .await),
            Held::InChildren(fleet) => {
                let children = fleet.len();
                for i in 0..children {
                    let share = n / children + usize::from(i < n % children);
                    fleet.tell(i, &format!("probe {share}"))?;
                }
                fleet.collect_echoes(echo_patience(args))
            }
        }
    }

    /// Close every connection (with children: they close theirs and exit).
    fn close(self) {
        match self {
            Held::Here(pool) => pool.close(),
            Held::InChildren(fleet) => fleet.close(),
        }
    }
}

/// How long to wait for every child's echoes: their own deadline, twice, and a minute.
fn echo_patience(args: &Args) -> Duration {
    args.echo_timeout() * 2 + Duration::from_secs(60)
}

/// Every connection in this process.
async fn open_here(
    args: &Args,
    bar: &ProgressBar,
    start: Instant,
) -> Result<(Held, Summary), String> {
    let base_rss_bytes = anon_rss();
    let mut pool = Pool::new(args.connect_options());
    pool.grow_to(args.conns as usize, pace(args, 1), bar).await;
    bar.finish_and_clear();
    let mut summary = Summary {
        conns: args.conns as usize,
        processes: 1,
        open_seconds: start.elapsed().as_secs_f64(),
        ..Summary::default()
    };
    // A server that closes what it accepts (select past FD_SETSIZE, a failed thread
    // spawn) does so at once; give those closes a moment to arrive, then count them.
    tokio::time::sleep(Duration::from_millis(200)).await;
    summary.opened = opened(&pool, base_rss_bytes);
    Ok((Held::Here(pool), summary))
}

/// The connections shared among child processes, `share` each at most.
fn open_in_children(
    args: &Args,
    share: usize,
    bar: &ProgressBar,
    start: Instant,
) -> Result<(Held, Summary), String> {
    let conns = args.conns as usize;
    let children = conns.div_ceil(share);
    let shares: Vec<usize> = (0..children)
        .map(|i| conns / children + usize::from(i < conns % children))
        .collect();
    let mut command_lines = Vec::new();
    let mut first = 0;
    for &n in &shares {
        let mut line = vec![
            args.url.to_string(),
            format!("--conns={n}"),
            format!("--first-index={first}"),
            format!(
                "--concurrency={}",
                (args.concurrency as usize).div_ceil(children)
            ),
            format!("--connect-timeout={}", args.connect_timeout),
            format!("--message-size={}", args.message_size),
            format!("--echo-timeout={}", args.echo_timeout),
            format!("--read-buffer={}", args.read_buffer),
        ];
        if let Some(rate) = args.rate {
            line.push(format!("--rate={}", rate / children as f64));
        }
        if let Some(src) = args.src_addrs {
            line.push(format!("--src-addrs={src}"));
        }
        command_lines.push(line);
        first += n;
    }
    let mut fleet =
        Fleet::start(command_lines).map_err(|err| format!("cannot start a child: {err}"))?;

    // Opening: the bar shows every child's progress summed.
    let mut progress = vec![(0, 0); children];
    let mut opened: Vec<Option<Opened>> = vec![None; children];
    let patience = Duration::from_secs_f64(args.connect_timeout) + Duration::from_secs(30);
    let mut last_news = Instant::now();
    while opened.iter().any(Option::is_none) {
        match fleet.next(Duration::from_millis(200))? {
            Some((
                i,
                ChildReport::Progress {
                    opened: held,
                    failed,
                },
            )) => progress[i] = (held, failed),
            Some((i, ChildReport::Opened(share))) => {
                progress[i] = (share.held, share.failures.total());
                opened[i] = Some(share);
            }
            Some((i, ChildReport::Echoes(_))) => return Err(format!("child {i} echoed unasked")),
            None if last_news.elapsed() > patience => {
                return Err("the children stopped reporting progress".into());
            }
            None => continue,
        }
        last_news = Instant::now();
        let (held, failed): (usize, usize) = progress
            .iter()
            .fold((0, 0), |(h, f), &(ph, pf)| (h + ph, f + pf));
        bar.set_position((held + failed) as u64);
        bar.set_message(format!("held {held}, failed {failed}"));
    }
    bar.finish_and_clear();
    let mut summary = Summary {
        conns,
        processes: children,
        open_seconds: start.elapsed().as_secs_f64(),
        ..Summary::default()
    };
    for share in opened.iter().flatten() {
        summary.opened.merge(share);
    }
    Ok((Held::InChildren(fleet), summary))
}

/// Without `--orders`: the burst (with `--echo-each`), the probes, the summary, the hold.
async fn run(args: &Args, held: &mut Held, summary: &mut Summary) -> Result<bool, String> {
    if args.echo_each && summary.opened.held > 0 {
        let spinner = waiting(format!(
            "one message on each of {} connections at once: waiting for the echoes",
            summary.opened.held
        ));
        let stats = held.burst(args).await;
        spinner.finish_and_clear();
        let stats = stats?;
        print_burst(&stats);
        summary.burst = Some(stats);
    }
    if args.echo > 0 && summary.opened.held > 0 {
        let stats = held.probe(args.echo, args).await?;
        println!("echo probes on random connections: {stats}");
        summary.probes = Some(stats);
    }
    let all_well = finish(args, summary);
    hold(args, summary.opened.held).await;
    Ok(all_well)
}

/// `--orders`: the opening's summary as one JSON line, then each order on stdin done and
/// answered with one JSON line (see [`echoes_json`]), until stdin closes. True when every
/// connection was held.
async fn obey(args: &Args, held: &mut Held, summary: &Summary) -> Result<bool, String> {
    println!(
        "{}",
        serde_json::to_string(summary).expect("bug: the summary serializes")
    );
    follow_orders(held, args, "loadgen", |stats| {
        println!("{}", echoes_json(&stats))
    })
    .await?;
    Ok(summary.opened.held == summary.conns)
}

/// Do each order read on stdin (see [`Order`]) with the connections `held`, handing its
/// echoes to `answer`, until stdin closes. `who` leads the line about an unknown order.
async fn follow_orders(
    held: &mut Held,
    args: &Args,
    who: &str,
    mut answer: impl FnMut(EchoStats),
) -> Result<(), String> {
    let mut lines = tokio::io::BufReader::new(tokio::io::stdin()).lines();
    while let Ok(Some(line)) = lines.next_line().await {
        let stats = match Order::parse(&line) {
            Some(Order::Burst) => held.burst(args).await?,
            Some(Order::Probe(n)) => held.probe(n, args).await?,
            None => {
                eprintln!("{who}: unknown order `{line}`");
                continue;
            }
        };
        answer(stats);
    }
    Ok(())
}

/// A child: open this process's share, report, then do what the parent says until its
/// stdin closes.
async fn child(args: &Args) -> ExitCode {
    // Ctrl-C in a terminal reaches every process of the group. A child killed by it would
    // close its sockets the ordinary way, leaving each in TIME_WAIT for a minute; instead
    // it ignores the signal (a handler is installed and never awaited) and closes with
    // resets when the parent, which handles it, closes our stdin.
    let _sigint = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::interrupt());
    let base_rss_bytes = anon_rss();
    let mut pool = Pool::new(args.connect_options()).starting_at(args.first_index);
    let mut last_report = Instant::now();
    pool.grow_to_with(args.conns as usize, pace(args, 1), |held, failures| {
        if last_report.elapsed() >= Duration::from_millis(250) || failures.is_some() && held == 0 {
            last_report = Instant::now();
            let failed = failures.map_or(0, |f| f.total());
            ChildReport::Progress {
                opened: held,
                failed,
            }
            .send();
        }
    })
    .await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    ChildReport::Opened(opened(&pool, base_rss_bytes)).send();

    let mut held = Held::Here(pool);
    let answer = |stats| ChildReport::Echoes(stats).send();
    let followed = follow_orders(&mut held, args, "loadgen child", answer).await;
    held.close();
    match followed {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("loadgen child: {err}");
            ExitCode::FAILURE
        }
    }
}

/// Each of `processes` processes opens at this pace: the totals shared out.
fn pace(args: &Args, processes: usize) -> Pace {
    Pace {
        concurrency: (args.concurrency as usize).div_ceil(processes),
        rate: args.rate.map(|rate| rate / processes as f64),
    }
}

/// This process's anonymous resident memory (0 if /proc cannot say).
fn anon_rss() -> u64 {
    common::anon_rss_bytes("self").unwrap_or(0)
}

/// What this process holds now, and what it costs.
fn opened(pool: &Pool, base_rss_bytes: u64) -> Opened {
    Opened {
        held: pool.len(),
        failures: pool.failures.clone(),
        closed_by_server: pool.closed_by_server(),
        rss_bytes: anon_rss(),
        base_rss_bytes,
    }
}

fn print_opened(args: &Args, summary: &Summary) {
    let protocol = match args.url.protocol {
        Protocol::Tcp => "TCP",
        Protocol::WebSocket => "WebSocket",
    };
    let o = &summary.opened;
    println!(
        "held {} of {} {protocol} connections to {} (opened in {:.1} s, {:.0} per second{})",
        o.held,
        summary.conns,
        args.url,
        summary.open_seconds,
        o.held as f64 / summary.open_seconds.max(1e-3),
        match summary.processes {
            1 => String::new(),
            n => format!(", by {n} processes"),
        }
    );
    if let Some(per_conn) = o.rss_per_conn() {
        println!(
            "loadgen memory: {} per held connection (anonymous rss {} over a base of {}{})",
            common::format_bytes(per_conn),
            common::format_bytes(o.rss_bytes),
            common::format_bytes(o.base_rss_bytes),
            if summary.processes > 1 {
                ", all children"
            } else {
                ""
            }
        );
    }
    if o.closed_by_server > 0 {
        println!(
            "{} of them already closed by the server: read its log (fd limit, \
             select's FD_SETSIZE, no thread to spawn)",
            o.closed_by_server
        );
    }
    if o.failures.total() > 0 {
        println!(
            "{} failed:\n{}",
            o.failures.total(),
            o.failures.explained().trim_end()
        );
    }
}

/// A spinner on stderr with the time elapsed, for a wait a speaker watches live.
fn waiting(what: String) -> ProgressBar {
    let spinner = ProgressBar::new_spinner().with_style(
        ProgressStyle::with_template("{spinner} {msg} ({elapsed})")
            .expect("bug: the spinner template is valid"),
    );
    spinner.set_message(what);
    spinner.enable_steady_tick(Duration::from_millis(200));
    spinner
}

fn print_burst(stats: &EchoStats) {
    println!(
        "one message on every connection at once: {} served; {stats}",
        stats.ok
    );
}

/// Print the JSON summary if asked; true when every connection was held and every echo
/// came back.
fn finish(args: &Args, summary: &Summary) -> bool {
    if args.json {
        let mut json = serde_json::to_value(summary).expect("bug: the summary serializes");
        for (key, stats) in [("burst", &summary.burst), ("probes", &summary.probes)] {
            if let Some(stats) = stats {
                json[key] = echoes_json(stats);
            }
        }
        println!("{json}");
    }
    let o = &summary.opened;
    o.held == summary.conns
        && o.closed_by_server == 0
        && summary
            .burst
            .as_ref()
            .is_none_or(|b| b.ok == b.sent() && b.ok == o.held)
        && summary
            .probes
            .as_ref()
            .is_none_or(|p| p.ok == p.sent() && p.ok == args.echo)
}

/// Echo outcomes as JSON: the counts, and instead of every round trip (they are many) their
/// p50, p99 and maximum, and for a burst `last_us`, from its first message sent to its
/// last echo back, in microseconds.
fn echoes_json(stats: &EchoStats) -> serde_json::Value {
    let mut json = serde_json::to_value(stats).expect("bug: echo stats serialize");
    let object = json.as_object_mut().expect("bug: echo stats are an object");
    object.remove("rtts");
    object.remove("first_sent_ns");
    object.remove("last_back_ns");
    if let Some(s) = stats.summary() {
        object.insert("p50_us".into(), (s.p50.as_secs_f64() * 1e6).into());
        object.insert("p99_us".into(), (s.p99.as_secs_f64() * 1e6).into());
        object.insert("max_us".into(), (s.max.as_secs_f64() * 1e6).into());
    }
    if let Some(span) = stats.span() {
        object.insert("last_us".into(), (span.as_secs_f64() * 1e6).into());
    }
    json
}

/// Hold the connections for `--hold` seconds, or until Ctrl-C.
async fn hold(args: &Args, held: usize) {
    let hold = Duration::from_secs_f64(args.hold);
    if hold.is_zero() || held == 0 {
        return;
    }
    println!(
        "holding {held} connections for {:.0} s (Ctrl-C to stop sooner)",
        hold.as_secs_f64()
    );
    tokio::select! {
        () = tokio::time::sleep(hold) => {}
        _ = tokio::signal::ctrl_c() => println!("interrupted"),
    }
}
