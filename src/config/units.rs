//! Human-friendly units in `gateway.yaml`: durations (`250ms`, `15m`) and sizes (`1MiB`).
//!
//! Both parse from strings (or bare integers: seconds and bytes) into real types at load
//! time, so the rest of the gateway never sees unparsed text.

use serde::{Deserialize, Deserializer};
use std::fmt;
use std::time::Duration;

/// A duration written as `<number><unit>` with unit `ms`, `s`, `m`, `h` or `d`
/// (several parts may be chained: `1m30s`). A bare integer means seconds.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Dur(pub Duration);

/// A size in bytes written as `<number><unit>` with unit `B`, `KB`/`KiB`, `MB`/`MiB`,
/// `GB`/`GiB` (`k`, `m`, `g` are accepted as binary units too). A bare integer means bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Size(pub u64);

impl Dur {
    pub const fn secs(s: u64) -> Self {
        Dur(Duration::from_secs(s))
    }
    pub const fn millis(ms: u64) -> Self {
        Dur(Duration::from_millis(ms))
    }
}

impl fmt::Display for Dur {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let ms = self.0.as_millis();
        if ms.is_multiple_of(1000) {
            write!(f, "{}s", ms / 1000)
        } else {
            write!(f, "{ms}ms")
        }
    }
}

/// Parses `250ms`, `10s`, `1m30s`, `2h`, `1d`, `6y` (365-day years), or a bare number of seconds.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let s = text.trim();
    if s.is_empty() {
        return Err("empty duration".into());
    }
    if let Ok(secs) = s.parse::<u64>() {
        return Ok(Duration::from_secs(secs));
    }
    let mut total = Duration::ZERO;
    let mut rest = s;
    while !rest.is_empty() {
        let digits = rest
            .find(|c: char| !c.is_ascii_digit())
            .unwrap_or(rest.len());
        if digits == 0 {
            return Err(format!(
                "invalid duration {text:?}: expected a number, e.g. 250ms, 10s, 5m"
            ));
        }
        let value: u64 = rest[..digits]
            .parse()
            .map_err(|_| format!("invalid duration {text:?}: number too large"))?;
        rest = &rest[digits..];
        let unit_len = rest
            .find(|c: char| c.is_ascii_digit())
            .unwrap_or(rest.len());
        let unit = &rest[..unit_len];
        rest = &rest[unit_len..];
        let part = match unit {
            "ms" => Duration::from_millis(value),
            "s" => Duration::from_secs(value),
            "m" => Duration::from_secs(value.saturating_mul(60)),
            "h" => Duration::from_secs(value.saturating_mul(3600)),
            "d" => Duration::from_secs(value.saturating_mul(86_400)),
            // A year of 365 days (retention periods: `audit.retention: 6y`).
            "y" => Duration::from_secs(value.saturating_mul(365 * 86_400)),
            "" => {
                return Err(format!(
                    "invalid duration {text:?}: missing unit (ms, s, m, h, d, y)"
                ))
            }
            other => {
                return Err(format!(
                    "invalid duration {text:?}: unknown unit {other:?} (use ms, s, m, h, d, y)"
                ))
            }
        };
        total = total.saturating_add(part);
    }
    Ok(total)
}

/// Parses `512`, `64KiB`, `1MiB`, `10MB`, `1g`.
pub fn parse_size(text: &str) -> Result<u64, String> {
    let s = text.trim();
    let digits = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    if digits == 0 {
        return Err(format!(
            "invalid size {text:?}: expected a number, e.g. 512KiB, 1MiB"
        ));
    }
    let value: u64 = s[..digits]
        .parse()
        .map_err(|_| format!("invalid size {text:?}: number too large"))?;
    let mult: u64 = match s[digits..].trim() {
        "" | "B" | "b" => 1,
        "KB" | "kB" => 1000,
        "KiB" | "k" | "K" => 1024,
        "MB" => 1000 * 1000,
        "MiB" | "m" | "M" => 1024 * 1024,
        "GB" => 1000 * 1000 * 1000,
        "GiB" | "g" | "G" => 1024 * 1024 * 1024,
        other => {
            return Err(format!(
                "invalid size {text:?}: unknown unit {other:?} (use B, KiB, MiB, GiB, KB, MB, GB)"
            ))
        }
    };
    value
        .checked_mul(mult)
        .ok_or_else(|| format!("invalid size {text:?}: too large"))
}

/// Accepts a string with a unit or a bare non-negative integer, parsed by `parse`.
struct UnitVisitor<T> {
    what: &'static str,
    from_int: fn(u64) -> T,
    parse: fn(&str) -> Result<T, String>,
}

impl<T> serde::de::Visitor<'_> for UnitVisitor<T> {
    type Value = T;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.what)
    }

    fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<T, E> {
        Ok((self.from_int)(v))
    }

    fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<T, E> {
        u64::try_from(v)
            .map(self.from_int)
            .map_err(|_| E::custom(format!("{} must not be negative", self.what)))
    }

    fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<T, E> {
        (self.parse)(v).map_err(E::custom)
    }
}

impl<'de> Deserialize<'de> for Dur {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(UnitVisitor {
            what: "a duration such as 250ms, 10s or 5m",
            from_int: |n| Dur(Duration::from_secs(n)),
            parse: |t| parse_duration(t).map(Dur),
        })
    }
}

impl<'de> Deserialize<'de> for Size {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(UnitVisitor {
            what: "a size such as 512KiB or 1MiB",
            from_int: Size,
            parse: |t| parse_size(t).map(Size),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_parse_with_units() {
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_duration("10s"), Ok(Duration::from_secs(10)));
        assert_eq!(parse_duration("15m"), Ok(Duration::from_secs(900)));
        assert_eq!(parse_duration("1m30s"), Ok(Duration::from_secs(90)));
        assert_eq!(parse_duration("2h"), Ok(Duration::from_secs(7200)));
        assert_eq!(parse_duration("7"), Ok(Duration::from_secs(7)));
        assert_eq!(
            parse_duration("6y"),
            Ok(Duration::from_secs(6 * 365 * 86_400))
        );
    }

    #[test]
    fn bad_durations_are_explained() {
        assert!(parse_duration("ten")
            .unwrap_err()
            .contains("expected a number"));
        assert!(parse_duration("10").is_ok());
        assert!(parse_duration("10x").unwrap_err().contains("unknown unit"));
        assert!(parse_duration("").is_err());
        assert!(parse_duration("5m3").unwrap_err().contains("missing unit"));
    }

    #[test]
    fn sizes_parse_binary_and_decimal_units() {
        assert_eq!(parse_size("1MiB"), Ok(1024 * 1024));
        assert_eq!(parse_size("32KiB"), Ok(32 * 1024));
        assert_eq!(parse_size("10MB"), Ok(10_000_000));
        assert_eq!(parse_size("512"), Ok(512));
        assert!(parse_size("1XB").unwrap_err().contains("unknown unit"));
        assert!(parse_size("99999999999999999999GiB").is_err());
    }
}
