//! Value parsers for command-line flags (clap `value_parser`s), shared by `cli`, `server` and
//! `cluster`. A leaf: it imports nothing from the crate but the engine's `Targets`, so the
//! rooms that declare flags need not import each other.

use std::time::Duration;

use crate::engine::Targets;

/// `jobsets`, `pods` or `jobsets,pods`.
pub fn parse_targets(s: &str) -> Result<Targets, String> {
    Targets::parse(s.split(','))
}

/// `500ms`, `5s`, `2m`, `1h`, or a number of seconds (`30`, `1.5`).
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let split = s
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(s.len());
    let (number, unit) = s.split_at(split);
    let value: f64 = number
        .parse()
        .map_err(|_| format!("{s:?} is not a duration; write e.g. 500ms, 5s, 2m or 1h"))?;
    let scale = match unit.trim() {
        "ms" => 0.001,
        "" | "s" => 1.0,
        "m" => 60.0,
        "h" => 3600.0,
        other => {
            return Err(format!(
                "{other:?} is not a duration unit; use ms, s, m or h"
            ));
        }
    };
    Duration::try_from_secs_f64(value * scale).map_err(|e| format!("{s:?}: {e}"))
}

/// A [`parse_duration`] that is more than zero: the period of a timer (tokio's interval
/// panics on zero).
pub fn parse_period(s: &str) -> Result<Duration, String> {
    let d = parse_duration(s)?;
    if d.is_zero() {
        return Err("a period must be more than 0, e.g. 500ms or 2s".to_owned());
    }
    Ok(d)
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
        assert_eq!(parse_duration("1.5"), Ok(Duration::from_millis(1500)));
        assert_eq!(parse_duration("0s"), Ok(Duration::ZERO));
        assert!(parse_duration("5 parsecs").is_err());
        assert!(parse_duration("").is_err());
        assert!(parse_duration("-1s").is_err());
    }

    #[test]
    fn periods() {
        assert_eq!(parse_period("2s"), Ok(Duration::from_secs(2)));
        assert_eq!(parse_period("1ms"), Ok(Duration::from_millis(1)));
        for zero in ["0", "0s", "0ms", "0.0h", "0.0000000001s"] {
            let e = parse_period(zero).unwrap_err();
            assert!(e.contains("more than 0"), "{zero}: {e}");
        }
        assert!(parse_period("5 parsecs").is_err());
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
