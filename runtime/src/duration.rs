//! Durations on the command line, one parser for every ringlab program.

use std::time::Duration;

/// Parse `100ms`, `2s`, `50us`, `1m`, `1.5h`: a number and a unit (ns, us or µs, ms, s, m, h).
/// A bare number is refused (is `100` seconds or milliseconds?), except `0`. At most 7 days.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let split = s
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let v: f64 = num
        .parse()
        .map_err(|_| format!("{s:?} is not a duration (e.g. 100ms, 2s, 50us, 1m)"))?;
    let secs = match unit {
        "" if v == 0.0 => 0.0,
        "" => {
            return Err(format!(
                "{s:?} needs a unit: {s}ms or {s}s (ns, us, ms, s, m, h)"
            ))
        }
        "ns" => v / 1e9,
        "us" | "µs" => v / 1e6,
        "ms" => v / 1e3,
        "s" => v,
        "m" => v * 60.0,
        "h" => v * 3600.0,
        _ => {
            return Err(format!(
                "{s:?}: unknown unit {unit:?} (use ns, us, ms, s, m or h)"
            ))
        }
    };
    if !secs.is_finite() || !(0.0..=7.0 * 86_400.0).contains(&secs) {
        return Err(format!("{s:?} is out of range (0 to 7 days)"));
    }
    Ok(Duration::from_secs_f64(secs))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn units() {
        assert_eq!(parse_duration("100ms"), Ok(Duration::from_millis(100)));
        assert_eq!(parse_duration("2s"), Ok(Duration::from_secs(2)));
        assert_eq!(parse_duration("50us"), Ok(Duration::from_micros(50)));
        assert_eq!(parse_duration("1.5m"), Ok(Duration::from_secs(90)));
        assert_eq!(parse_duration("0"), Ok(Duration::ZERO));
    }

    #[test]
    fn refusals() {
        for bad in ["7", "x", "5y", "1e9s", "8d", "-1s", "", "ms"] {
            assert!(parse_duration(bad).is_err(), "{bad:?} accepted");
        }
        assert!(parse_duration("7").unwrap_err().contains("needs a unit"));
    }
}
