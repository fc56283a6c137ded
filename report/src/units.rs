//! How the report writes a figure: in the unit that reads best, with three figures at
//! most, so that the tables stay narrow and a chart's ticks stay short.

/// System calls per message: `12.3`, `2.31`, `0.148`: three decimals under one.
pub fn calls(per_msg: f64) -> String {
    match per_msg {
        10.0.. => format!("{per_msg:.1}"),
        1.0.. => format!("{per_msg:.2}"),
        _ => format!("{per_msg:.3}"),
    }
}

/// `87 µs`, `1.42 ms`, `18.5 ms`: three figures at most, so the tables stay narrow.
pub fn micros(us: f64) -> String {
    match us {
        ..1000.0 => format!("{us:.0} µs"),
        ..10_000.0 => format!("{:.2} ms", us / 1000.0),
        ..100_000.0 => format!("{:.1} ms", us / 1000.0),
        _ => format!("{:.0} ms", us / 1000.0),
    }
}

/// CPU per unit of work: `3.25 µs`, `42.1 µs`, `310 µs` (small figures need their decimals).
pub fn cpu_us(us: f64) -> String {
    match us {
        ..10.0 => format!("{us:.2} µs"),
        ..100.0 => format!("{us:.1} µs"),
        _ => micros(us),
    }
}

/// `850/s`, `12.3k/s`.
pub fn rate(per_s: f64) -> String {
    if per_s < 1000.0 {
        format!("{per_s:.0}/s")
    } else {
        format!("{:.1}k/s", per_s / 1000.0)
    }
}

/// `7.5 KiB`, or `−1.2 KiB` when the kernel's figure shrank (another process freed more).
pub fn signed_bytes(bytes: i64) -> String {
    match bytes {
        0.. => common::format_bytes(bytes as u64),
        _ => format!("−{}", common::format_bytes(bytes.unsigned_abs())),
    }
}

/// Several durations in one cell: `87 µs, 1.42 ms`.
pub fn list_us(values: &[f64]) -> String {
    values
        .iter()
        .map(|v| micros(*v))
        .collect::<Vec<_>>()
        .join(", ")
}

/// `16 B`, `1 KiB`, `64 KiB`: a byte axis ticked at powers of two, in the labels' units.
pub fn bytes_tick(bytes: f64) -> String {
    if bytes >= 1024.0 {
        format!("{} KiB", (bytes / 1024.0).round())
    } else {
        format!("{} B", bytes.round())
    }
}

/// A round tick of a log time axis, without trailing zeros: `500 µs`, `2 ms`, `100 ms`.
pub fn round_time(us: f64) -> String {
    if us < 1000.0 {
        format!("{us:.0} µs")
    } else {
        format!("{} ms", us / 1000.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Figures read at a glance: CPU keeps its decimals, rates are per second.
    #[test]
    fn figures_print_in_the_unit_that_reads_best() {
        assert_eq!(micros(87.4), "87 µs");
        assert_eq!(micros(1420.0), "1.42 ms");
        assert_eq!(micros(18_484.0), "18.5 ms");
        assert_eq!(micros(123_456.0), "123 ms");
        assert_eq!(cpu_us(3.254), "3.25 µs");
        assert_eq!(cpu_us(42.13), "42.1 µs");
        assert_eq!(cpu_us(310.4), "310 µs");
        assert_eq!(rate(850.2), "850/s");
        assert_eq!(rate(12_345.0), "12.3k/s");
        assert_eq!(signed_bytes(-2048), "−2.0 KiB");
    }
}
