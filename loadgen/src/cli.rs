//! Option values checked at parse time, each with a one-line error: a bad number must
//! stop loadgen before it opens anything, never panic or hang it half-way.

/// Seconds within `[min, max]`: finite, so `inf`, `nan` and `1e20` (which no `Duration`
/// holds) are refused.
fn seconds_within(s: &str, min: f64, max: f64) -> Result<f64, String> {
    let secs: f64 = s
        .parse()
        .map_err(|_| format!("`{s}` is not a number of seconds"))?;
    if secs.is_finite() && (min..=max).contains(&secs) {
        Ok(secs)
    } else {
        Err(format!("`{s}` must be between {min} and {max} seconds"))
    }
}

/// A timeout: more than nothing, at most an hour.
pub fn timeout(s: &str) -> Result<f64, String> {
    seconds_within(s, 0.001, 3600.0)
}

/// How long to hold: from 0 up to a day.
pub fn hold(s: &str) -> Result<f64, String> {
    seconds_within(s, 0.0, 86_400.0)
}

/// Connections per second: more than 0.1, at most ten million.
pub fn rate(s: &str) -> Result<f64, String> {
    let rate: f64 = s
        .parse()
        .map_err(|_| format!("`{s}` is not a number of connections per second"))?;
    if rate.is_finite() && (0.1..=1e7).contains(&rate) {
        Ok(rate)
    } else {
        Err(format!("`{s}` must be between 0.1 and 10000000 per second"))
    }
}

/// The largest echo message loadgen sends: 16 MiB, past every step's own limit.
pub const MAX_MESSAGE: usize = 16 << 20;

/// Bytes per echo message, up to [`MAX_MESSAGE`].
pub fn message_size(s: &str) -> Result<usize, String> {
    let size: usize = s
        .parse()
        .map_err(|_| format!("`{s}` is not a number of bytes"))?;
    if size <= MAX_MESSAGE {
        Ok(size)
    } else {
        Err(format!(
            "`{s}` bytes is more than loadgen sends (at most {MAX_MESSAGE})"
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Infinite, not-a-number, huge and negative values are refused with a one-line error.
    #[test]
    fn refuses_inf_nan_huge_and_negative() {
        for bad in ["inf", "nan", "1e20", "-1", "soon"] {
            for parse in [timeout, hold, rate] {
                let err = parse(bad).expect_err(bad);
                assert!(!err.contains('\n'), "{err}");
            }
        }
        assert!(rate("0").is_err());
        assert!(timeout("0").is_err());
        assert!(message_size("1000000000000").is_err());
        assert!(message_size("-1").is_err());
    }

    /// Ordinary values pass unchanged, and holding for 0 seconds is allowed.
    #[test]
    fn takes_ordinary_values() {
        assert_eq!(hold("0"), Ok(0.0));
        assert_eq!(timeout("2.5"), Ok(2.5));
        assert_eq!(rate("5000"), Ok(5000.0));
        assert_eq!(message_size("65536"), Ok(65536));
    }
}
