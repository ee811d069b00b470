//! Value parsers for command-line flags (clap `value_parser`s), shared by `cli`, `server` and
//! `cluster`. A leaf: it imports nothing from the crate but the engine's `Targets`, so the
//! rooms that declare flags need not import each other.
//!
//! Every duration flag reads the one grammar of [`parse_duration`] (the chart's
//! `values.schema.json` uses [`DURATION_PATTERN`], checked by `tests/manifests.rs`) and is
//! bounded by a [`DurationRange`], so no flag can mean "expire at once" or overflow a
//! deadline (`Instant + Duration` panics past the clock's range).

use std::fmt;
use std::time::Duration;

use crate::engine::Targets;

/// `jobsets`, `pods` or `jobsets,pods`.
pub fn parse_targets(s: &str) -> Result<Targets, String> {
    Targets::parse(s.split(','))
}

/// The grammar of [`parse_duration`] as a regular expression: one or more terms
/// `<number><unit>` (`1m30s`, `1.5s`, `250ms`), or a bare number of seconds (`30`, `1.5`).
/// A number is ASCII digits with an optional fraction (`1`, `0.5`; not `.5`, `1.`, `1e3` or a
/// sign); a unit is `ms`, `s`, `m` or `h`. No spaces, no `us`/`ns`.
pub const DURATION_PATTERN: &str = r"^([0-9]+(\.[0-9]+)?(ms|s|m|h))+$|^[0-9]+(\.[0-9]+)?$";

/// Reads a duration in the grammar of [`DURATION_PATTERN`]. Only the grammar: the flags use
/// a bounded parser ([`parse_timeout`], [`parse_delay`], [`parse_period`]).
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let not_a_duration = || {
        format!(
            "{s:?} is not a duration; write terms of a number and a unit (ms, s, m, h), \
             e.g. 500ms, 5s, 1m30s or 2h, or a number of seconds"
        )
    };
    let mut rest = s;
    let mut total = Duration::ZERO;
    let mut terms = 0usize;
    while !rest.is_empty() {
        let digits = |t: &str| t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
        let int = digits(rest);
        if int == 0 {
            return Err(not_a_duration());
        }
        let mut len = int;
        if let Some(after_dot) = rest[int..].strip_prefix('.') {
            let frac = digits(after_dot);
            if frac == 0 {
                return Err(not_a_duration());
            }
            len += 1 + frac;
        }
        let (number, after) = rest.split_at(len);
        let (scale, unit) = if after.starts_with("ms") {
            (0.001, 2)
        } else if after.starts_with('s') {
            (1.0, 1)
        } else if after.starts_with('m') {
            (60.0, 1)
        } else if after.starts_with('h') {
            (3600.0, 1)
        } else if after.is_empty() && terms == 0 {
            (1.0, 0)
        } else {
            return Err(not_a_duration());
        };
        let value: f64 = number.parse().map_err(|_| not_a_duration())?;
        let term = Duration::try_from_secs_f64(value * scale)
            .map_err(|_| format!("{s:?} is too long a duration"))?;
        total = total
            .checked_add(term)
            .ok_or_else(|| format!("{s:?} is too long a duration"))?;
        rest = &after[unit..];
        terms += 1;
    }
    if terms == 0 {
        return Err(not_a_duration());
    }
    Ok(total)
}

/// The values a duration flag allows, both ends included.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DurationRange {
    pub min: Duration,
    pub max: Duration,
}

impl DurationRange {
    /// `Err` names the value and the range (clap adds the flag's name).
    pub fn check(&self, d: Duration) -> Result<Duration, String> {
        if d < self.min || d > self.max {
            return Err(format!("{} is outside the allowed range {self}", Human(d)));
        }
        Ok(d)
    }

    /// [`parse_duration`], then [`Self::check`].
    pub fn parse(&self, s: &str) -> Result<Duration, String> {
        let d = parse_duration(s)?;
        self.check(d)
            .map_err(|_| format!("{s:?} is outside the allowed range {self}"))
    }
}

impl fmt::Display for DurationRange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} to {}", Human(self.min), Human(self.max))
    }
}

/// A duration in the flags' grammar: `100ms`, `10m`, `1.5s`, `0s`.
struct Human(Duration);

impl fmt::Display for Human {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let d = self.0;
        let ms = d.as_millis();
        if d.is_zero() {
            write!(f, "0s")
        } else if d.subsec_nanos() % 1_000_000 != 0 || ms == 0 {
            write!(f, "{}s", d.as_secs_f64())
        } else if ms % 3_600_000 == 0 {
            write!(f, "{}h", ms / 3_600_000)
        } else if ms % 60_000 == 0 {
            write!(f, "{}m", ms / 60_000)
        } else if ms % 1000 == 0 {
            write!(f, "{}s", ms / 1000)
        } else {
            write!(f, "{ms}ms")
        }
    }
}

/// Connection and request deadlines (`--tls-handshake-timeout`, `--header-read-timeout`,
/// `--body-read-timeout`, `--idle-timeout`): at least 100 ms (0 would mean "expired at
/// once", not "no timeout" as in Go), at most 10 minutes.
pub const TIMEOUT: DurationRange = DurationRange {
    min: Duration::from_millis(100),
    max: Duration::from_secs(600),
};

/// Waits that may be skipped (`--drain-delay`, `--shutdown-grace-period`): 0 to 10 minutes.
pub const DELAY: DurationRange = DurationRange {
    min: Duration::ZERO,
    max: Duration::from_secs(600),
};

/// Timer periods (`--reload-interval`, `--capability-interval`): 100 ms to 24 h (a zero
/// period would spin: tokio's interval panics on it).
pub const PERIOD: DurationRange = DurationRange {
    min: Duration::from_millis(100),
    max: Duration::from_secs(24 * 3600),
};

/// A duration within [`TIMEOUT`].
pub fn parse_timeout(s: &str) -> Result<Duration, String> {
    TIMEOUT.parse(s)
}

/// A duration within [`DELAY`].
pub fn parse_delay(s: &str) -> Result<Duration, String> {
    DELAY.parse(s)
}

/// A duration within [`PERIOD`].
pub fn parse_period(s: &str) -> Result<Duration, String> {
    PERIOD.parse(s)
}

/// `32Mi`, `1Gi`, `512Ki`, or a number of bytes.
pub fn parse_bytes(s: &str) -> Result<usize, String> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (number, unit) = s.split_at(split);
    let value: usize = number
        .parse()
        .map_err(|_| format!("{s:?} is not a size; write e.g. 32Mi, 1Gi or 4194304"))?;
    let scale: usize = match unit {
        "" => 1,
        "Ki" => 1 << 10,
        "Mi" => 1 << 20,
        "Gi" => 1 << 30,
        other => return Err(format!("{other:?} is not a size unit; use Ki, Mi or Gi")),
    };
    value
        .checked_mul(scale)
        .ok_or_else(|| format!("{s:?} is too large"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("30s"), Ok(Duration::from_secs(30)));
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert_eq!(parse_duration("1h"), Ok(Duration::from_secs(3600)));
        assert_eq!(parse_duration("1h30m"), Ok(Duration::from_secs(5400)));
        assert_eq!(parse_duration("1m0.5s"), Ok(Duration::from_millis(60_500)));
        assert_eq!(parse_duration("1.5"), Ok(Duration::from_millis(1500)));
        assert_eq!(parse_duration("0s"), Ok(Duration::ZERO));
        for bad in [
            "",
            "5 parsecs",
            "-1s",
            " 5s",
            "5s ",
            ".5s",
            "1.s",
            "1e3s",
            "250us",
            "1h30",
            "s",
            "5S",
            "1d",
        ] {
            assert!(parse_duration(bad).is_err(), "{bad:?}");
        }
        // Past `Duration`'s range: an error, not a panic.
        let e = parse_duration("99999999999999999999999h").unwrap_err();
        assert!(e.contains("too long"), "{e}");
    }

    #[test]
    fn bounded_durations_name_the_value_and_the_range() {
        assert_eq!(parse_timeout("100ms"), Ok(Duration::from_millis(100)));
        assert_eq!(parse_timeout("10m"), Ok(Duration::from_secs(600)));
        for out in ["0s", "0", "99ms", "10m0.001s", "9999999999999999999s"] {
            let e = parse_timeout(out).unwrap_err();
            assert!(
                e.contains(&format!("{out:?}")) && e.contains("100ms to 10m"),
                "{out}: {e}"
            );
        }
        assert_eq!(parse_delay("0s"), Ok(Duration::ZERO));
        assert!(parse_delay("11m").unwrap_err().contains("0s to 10m"));
        assert_eq!(parse_period("2s"), Ok(Duration::from_secs(2)));
        assert_eq!(parse_period("24h"), Ok(Duration::from_secs(86_400)));
        let e = parse_period("0.0000000001s").unwrap_err();
        assert!(e.contains("100ms to 24h"), "{e}");
        assert!(
            parse_period("5 parsecs")
                .unwrap_err()
                .contains("not a duration")
        );
    }

    #[test]
    fn sizes() {
        assert_eq!(parse_bytes("32Mi"), Ok(32 << 20));
        assert_eq!(parse_bytes("1Gi"), Ok(1 << 30));
        assert_eq!(parse_bytes("512Ki"), Ok(512 << 10));
        assert_eq!(parse_bytes("4194304"), Ok(4_194_304));
        assert!(parse_bytes("32MB").is_err());
        assert!(parse_bytes("Mi").is_err());
        assert!(parse_bytes("99999999999999999999Gi").is_err());
    }
}
