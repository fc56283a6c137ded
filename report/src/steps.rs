//! The steps the report runs, in order. A step joins the report by having a line here:
//! when its binary is missing or exits before listening, its row says so and the report
//! goes on.

use loadgen::Protocol;

/// One row of the report: a step binary, maybe with options that make a variant.
#[derive(Debug, Clone, Copy)]
pub struct StepSpec {
    /// The name in the table, e.g. `step07-tokio/4k`.
    pub name: &'static str,
    /// The binary to run (its name in `target/<profile>/`).
    pub bin: &'static str,
    /// What loadgen speaks to it.
    pub protocol: Protocol,
    /// Options beyond the ones every step gets (`--addr`, `--json`, `--report-every`).
    pub args: &'static [&'static str],
    /// At most this many connections, whatever `--conns` says (`None`: all of them).
    pub cap: Option<usize>,
    /// Whether the round-trip sweep over idle connections is measured for this step.
    pub sweep: bool,
    /// Whether every idle connection costs each wake-up (select, poll scan them all): the
    /// sweep must then rise at every point, and the report says so when it does not.
    pub scans: bool,
    /// Whether the storm and the burst are measured: not for a server that serves one
    /// client at a time (they would measure its listen backlog).
    pub busy: bool,
    /// Whether the work section runs it: the steps the lesson compares there, each kind
    /// once (the single loops, threads, tokio's multi-thread runtime, a loop per core).
    pub work: bool,
}

const fn step(name: &'static str, bin: &'static str, protocol: Protocol) -> StepSpec {
    StepSpec {
        name,
        bin,
        protocol,
        args: &[],
        cap: None,
        sweep: true,
        scans: false,
        busy: true,
        work: false,
    }
}

/// Every step, in the order of the lesson.
pub const STEPS: &[StepSpec] = &[
    // One client at a time: a handful show that exactly one is served; the rest wait in the
    // listen backlog, so more would only show the same.
    StepSpec {
        cap: Some(5),
        sweep: false,
        busy: false,
        ..step("step01-blocking", "step01-blocking", Protocol::Tcp)
    },
    // A thread per connection: memory is the point here, not the sweep.
    StepSpec {
        sweep: false,
        work: true,
        ..step("step02-threads", "step02-threads", Protocol::Tcp)
    },
    // select's fd_set holds fds 0..1023 (FD_SETSIZE). The step's own fds (stdin, stdout,
    // stderr, the listener) and a margin for anything else it opens leave 1000.
    StepSpec {
        cap: Some(1000),
        scans: true,
        ..step("step03-select", "step03-select", Protocol::Tcp)
    },
    StepSpec {
        scans: true,
        ..step("step04-poll", "step04-poll", Protocol::Tcp)
    },
    StepSpec {
        work: true,
        ..step("step05-epoll", "step05-epoll", Protocol::Tcp)
    },
    StepSpec {
        work: true,
        ..step("step06-ws-epoll", "step06-ws-epoll", Protocol::WebSocket)
    },
    StepSpec {
        work: true,
        ..step("step07-tokio", "step07-tokio", Protocol::WebSocket)
    },
    StepSpec {
        args: &["--read-buffer", "4096"],
        ..step("step07-tokio/4k", "step07-tokio", Protocol::WebSocket)
    },
    // step06's loop in two worker processes: RSS and CPU are summed over the workers.
    StepSpec {
        args: &["--workers", "2"],
        work: true,
        ..step("step08-reuseport", "step08-reuseport", Protocol::WebSocket)
    },
    // After epoll: step06's echo on io_uring. Where the kernel has no io_uring, the step
    // exits before listening with one line saying why, and its row shows that line.
    StepSpec {
        work: true,
        ..step("step09-io-uring", "step09-io-uring", Protocol::WebSocket)
    },
];

/// The steps named in `--steps` (a name from the table, or a binary name for all its
/// variants), in the table's order; every step when `filter` is empty.
pub fn select(filter: &[String]) -> Result<Vec<StepSpec>, String> {
    if let Some(unknown) = filter.iter().find(|f| {
        !STEPS
            .iter()
            .any(|s| s.name == f.as_str() || s.bin == f.as_str())
    }) {
        let names: Vec<&str> = STEPS.iter().map(|s| s.name).collect();
        return Err(format!(
            "no step named `{unknown}`; the steps are: {}",
            names.join(", ")
        ));
    }
    Ok(STEPS
        .iter()
        .filter(|s| {
            filter.is_empty()
                || filter
                    .iter()
                    .any(|f| s.name == f.as_str() || s.bin == f.as_str())
        })
        .copied()
        .collect())
}

/// Whether the step named `name` scans every idle connection at each wake-up (see
/// [`StepSpec::scans`]): its round trip must rise with the connections held.
pub fn scans(name: &str) -> bool {
    STEPS.iter().any(|s| s.name == name && s.scans)
}

/// Connection counts at which a step's round trip is measured: 1 (the probe connection
/// alone), a tenth and a half of the step's top, and the top: N, or the step's cap. The
/// last one is where every other figure is measured.
pub fn points(spec: &StepSpec, conns: usize) -> Vec<usize> {
    let top = spec.cap.map_or(conns, |cap| cap.min(conns)).max(1);
    let mut points = vec![1];
    if spec.sweep {
        points.extend(
            [top / 10, top / 2]
                .into_iter()
                .filter(|&p| p > 1 && p < top),
        );
    }
    points.push(top);
    points.dedup();
    points
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Steps are picked by name, or by binary for all its variants; unknown names are refused.
    #[test]
    fn steps_are_selected_by_name_or_by_binary() {
        let names = |f: &[&str]| -> Vec<&str> {
            let filter: Vec<String> = f.iter().map(|s| s.to_string()).collect();
            select(&filter).unwrap().iter().map(|s| s.name).collect()
        };
        assert_eq!(
            names(&["step05-epoll", "step04-poll"]),
            ["step04-poll", "step05-epoll"]
        );
        assert_eq!(
            names(&["step07-tokio"]),
            ["step07-tokio", "step07-tokio/4k"]
        );
        assert_eq!(names(&["step07-tokio/4k"]), ["step07-tokio/4k"]);
        assert_eq!(names(&[]).len(), STEPS.len());
        assert!(
            select(&["step99".to_string()])
                .unwrap_err()
                .contains("step05-epoll")
        );
    }

    /// select and poll scan every connection at each wake-up; the rest, and a name not in the
    /// table, do not.
    #[test]
    fn only_select_and_poll_scan() {
        let scanning: Vec<&str> = STEPS.iter().map(|s| s.name).filter(|n| scans(n)).collect();
        assert_eq!(scanning, ["step03-select", "step04-poll"]);
        assert!(!scans("step99"));
    }

    /// Round trips are measured at 1, a tenth, a half and the top, stopping at each step's cap.
    #[test]
    fn sweep_points_stop_at_each_steps_cap() {
        let by_name = |n: &str| *STEPS.iter().find(|s| s.name == n).unwrap();
        assert_eq!(
            points(&by_name("step05-epoll"), 10_000),
            [1, 1000, 5000, 10_000]
        );
        assert_eq!(
            points(&by_name("step03-select"), 10_000),
            [1, 100, 500, 1000]
        );
        assert_eq!(points(&by_name("step03-select"), 2000), [1, 100, 500, 1000]);
        assert_eq!(points(&by_name("step03-select"), 300), [1, 30, 150, 300]);
        assert_eq!(points(&by_name("step01-blocking"), 10_000), [1, 5]);
        assert_eq!(points(&by_name("step02-threads"), 10_000), [1, 10_000]);
        assert_eq!(points(&by_name("step05-epoll"), 1), [1]);
    }
}
