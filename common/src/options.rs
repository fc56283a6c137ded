use std::net::{Ipv4Addr, SocketAddr};
use std::time::Duration;

// The options every step takes. A step with options of its own flattens this struct into
// its own (`#[command(flatten)]`). The doc comment below is what `--help` shows.

/// An echo server of the epoll workshop. It prints `listening on ADDR`, then a memory line
/// whenever its number of connections changes: resident memory per connection.
#[derive(clap::Parser, Debug, Clone)]
pub struct Options {
    /// Address to listen on [default: 127.0.0.1:90NN for step NN]; port 0 picks a free port.
    #[arg(long, value_name = "HOST:PORT")]
    pub addr: Option<SocketAddr>,

    /// Print the memory line at most this often (seconds), and only when the number of
    /// connections changed.
    #[arg(long, value_name = "SECS", default_value_t = 1.0, value_parser = parse_seconds)]
    pub report_every: f64,

    /// Print machine-readable JSON lines instead of text.
    #[arg(long)]
    pub json: bool,

    /// CPU to spend on each message before echoing it, as a real handler would: N µs per 64
    /// bytes of the message (hashing it over and over, measured at start-up). 0: none.
    #[arg(long, value_name = "N", default_value_t = 0,
          value_parser = clap::value_parser!(u32).range(0..=1_000_000))]
    pub work_us: u32,
}

impl Options {
    /// The address to listen on: `--addr` if given, else 127.0.0.1 and the step's own port.
    pub fn addr_or(&self, default_port: u16) -> SocketAddr {
        self.addr
            .unwrap_or(SocketAddr::from((Ipv4Addr::LOCALHOST, default_port)))
    }

    /// `--report-every` as a `Duration`.
    pub fn report_every(&self) -> Duration {
        Duration::from_secs_f64(self.report_every)
    }
}

fn parse_seconds(s: &str) -> Result<f64, String> {
    let secs: f64 = s
        .parse()
        .map_err(|_| format!("`{s}` is not a number of seconds"))?;
    // The event loops sleep at most this long between reports: 0 would make them spin.
    if secs.is_finite() && (0.01..=3600.0).contains(&secs) {
        Ok(secs)
    } else {
        Err(format!("`{s}` must be between 0.01 and 3600 seconds"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    /// With no flags a step listens on 127.0.0.1 at its own port and reports every second, as text.
    #[test]
    fn defaults_to_the_steps_own_port_on_loopback() {
        let opts = Options::parse_from(["step05-epoll"]);
        assert_eq!(opts.addr_or(9005), "127.0.0.1:9005".parse().unwrap());
        assert_eq!(opts.report_every(), Duration::from_secs(1));
        assert!(!opts.json);
        assert_eq!(opts.work_us, 0, "no work on a message unless asked");
    }

    /// --report-every takes fractions of a second and refuses zero, negatives and words.
    #[test]
    fn takes_fractional_report_periods_and_refuses_nonsense() {
        let opts = Options::parse_from(["s", "--report-every", "0.25", "--addr", "127.0.0.1:0"]);
        assert_eq!(opts.report_every(), Duration::from_millis(250));
        assert_eq!(opts.addr_or(9005).port(), 0);
        assert!(Options::try_parse_from(["s", "--report-every", "-1"]).is_err());
        assert!(Options::try_parse_from(["s", "--report-every", "0"]).is_err());
        assert!(Options::try_parse_from(["s", "--report-every", "soon"]).is_err());
    }
}
