//! Go-style durations (`"5s"`, `"1m0s"`, `"300ms"`), as Stolon's cluster spec stores them.
//!
//! Pure: parsing and formatting only. Values are signed nanoseconds, like Go's `time.Duration`, so a
//! negative duration in a spec parses and is then refused by validation with Stolon's message.

use std::fmt;
use std::time::Duration;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// A signed duration in nanoseconds that (de)serialises as a Go duration string.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct GoDuration(pub i64);

/// Why a duration string was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid duration {0:?}")]
pub struct DurationError(pub String);

const NS: i64 = 1;
const US: i64 = 1_000;
const MS: i64 = 1_000_000;
const S: i64 = 1_000_000_000;
const M: i64 = 60 * S;
const H: i64 = 60 * M;

impl GoDuration {
    /// Zero duration.
    pub const ZERO: GoDuration = GoDuration(0);

    /// From whole seconds.
    pub const fn from_secs(s: i64) -> Self {
        GoDuration(s * S)
    }

    /// From milliseconds.
    pub const fn from_millis(ms: i64) -> Self {
        GoDuration(ms * MS)
    }

    /// Nanoseconds (may be negative).
    pub const fn as_nanos(self) -> i64 {
        self.0
    }

    /// True when negative.
    pub const fn is_negative(self) -> bool {
        self.0 < 0
    }

    /// As a std duration; negative values clamp to zero.
    pub fn to_std(self) -> Duration {
        Duration::from_nanos(self.0.max(0) as u64)
    }

    /// From a std duration (saturating at i64::MAX nanoseconds).
    pub fn from_std(d: Duration) -> Self {
        GoDuration(i64::try_from(d.as_nanos()).unwrap_or(i64::MAX))
    }

    /// Parses a Go duration string such as `"1h2m3.5s"`, `"-300ms"` or `"0"`.
    pub fn parse(input: &str) -> Result<Self, DurationError> {
        let err = || DurationError(input.to_string());
        let mut s = input;
        let mut neg = false;
        if let Some(rest) = s.strip_prefix('-') {
            neg = true;
            s = rest;
        } else if let Some(rest) = s.strip_prefix('+') {
            s = rest;
        }
        if s == "0" {
            return Ok(GoDuration(0));
        }
        if s.is_empty() {
            return Err(err());
        }
        let mut total: i128 = 0;
        while !s.is_empty() {
            // integer part
            let int_len = s.bytes().take_while(u8::is_ascii_digit).count();
            let int_part = &s[..int_len];
            s = &s[int_len..];
            let mut frac_part = "";
            if let Some(rest) = s.strip_prefix('.') {
                let frac_len = rest.bytes().take_while(u8::is_ascii_digit).count();
                frac_part = &rest[..frac_len];
                s = &rest[frac_len..];
            }
            if int_part.is_empty() && frac_part.is_empty() {
                return Err(err());
            }
            let unit_len = s
                .char_indices()
                .find(|(_, c)| c.is_ascii_digit() || *c == '.')
                .map(|(i, _)| i)
                .unwrap_or(s.len());
            let unit = &s[..unit_len];
            s = &s[unit_len..];
            let scale: i64 = match unit {
                "ns" => NS,
                "us" | "µs" | "μs" => US,
                "ms" => MS,
                "s" => S,
                "m" => M,
                "h" => H,
                _ => return Err(err()),
            };
            let int_val: i128 = if int_part.is_empty() {
                0
            } else {
                int_part.parse::<i128>().map_err(|_| err())?
            };
            let mut v = int_val.checked_mul(scale as i128).ok_or_else(err)?;
            if !frac_part.is_empty() {
                let mut f: i128 = 0;
                let mut div: i128 = 1;
                for b in frac_part.bytes().take(18) {
                    f = f * 10 + i128::from(b - b'0');
                    div *= 10;
                }
                v += f * scale as i128 / div;
            }
            total = total.checked_add(v).ok_or_else(err)?;
            if total > i64::MAX as i128 + 1 {
                return Err(err());
            }
        }
        let total = if neg { -total } else { total };
        i64::try_from(total).map(GoDuration).map_err(|_| err())
    }
}

/// Formats `v` (a count of units of 10^-prec) as "int[.frac]" with trailing zeros removed.
fn frac(v: u64, prec: u32) -> String {
    let p = 10u64.pow(prec);
    let int = v / p;
    let mut f = v % p;
    if f == 0 {
        return int.to_string();
    }
    let mut digits = prec as usize;
    while f.is_multiple_of(10) {
        f /= 10;
        digits -= 1;
    }
    format!("{int}.{f:0digits$}")
}

impl fmt::Display for GoDuration {
    /// Same text as Go's `time.Duration.String()`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let d = self.0;
        if d == 0 {
            return f.write_str("0s");
        }
        let sign = if d < 0 { "-" } else { "" };
        let u = d.unsigned_abs();
        if u < S as u64 {
            return if u < US as u64 {
                write!(f, "{sign}{u}ns")
            } else if u < MS as u64 {
                write!(f, "{sign}{}µs", frac(u, 3))
            } else {
                write!(f, "{sign}{}ms", frac(u, 6))
            };
        }
        let secs = u / S as u64;
        let nanos = u % S as u64;
        let sec_part = frac((secs % 60) * S as u64 + nanos, 9);
        let mins = secs / 60;
        if mins == 0 {
            return write!(f, "{sign}{sec_part}s");
        }
        let hours = mins / 60;
        if hours == 0 {
            return write!(f, "{sign}{}m{sec_part}s", mins % 60);
        }
        write!(f, "{sign}{hours}h{}m{sec_part}s", mins % 60)
    }
}

impl Serialize for GoDuration {
    fn serialize<S2: Serializer>(&self, s: S2) -> Result<S2::Ok, S2::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for GoDuration {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        GoDuration::parse(&s).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_like_go() {
        let cases = [
            (0, "0s"),
            (1, "1ns"),
            (1_500, "1.5µs"),
            (300 * MS, "300ms"),
            (5 * S, "5s"),
            (M, "1m0s"),
            (90 * S, "1m30s"),
            (48 * H, "48h0m0s"),
            (2 * H + 45 * M, "2h45m0s"),
            (1_500 * MS, "1.5s"),
            (-5 * S, "-5s"),
        ];
        for (ns, text) in cases {
            assert_eq!(GoDuration(ns).to_string(), text, "{ns}");
            assert_eq!(GoDuration::parse(text), Ok(GoDuration(ns)), "{text}");
        }
    }

    #[test]
    fn parses_go_forms() {
        assert_eq!(GoDuration::parse("2h45m"), Ok(GoDuration(2 * H + 45 * M)));
        assert_eq!(GoDuration::parse("0"), Ok(GoDuration(0)));
        assert_eq!(GoDuration::parse("1.5h"), Ok(GoDuration(90 * M)));
        assert_eq!(GoDuration::parse("10us"), Ok(GoDuration(10 * US)));
        for bad in ["", "5", "s", "5x", "1..5s", "-", "5s5"] {
            assert!(GoDuration::parse(bad).is_err(), "{bad:?} should be refused");
        }
    }

    proptest::proptest! {
        #[test]
        fn round_trips(ns in proptest::num::i64::ANY) {
            let d = GoDuration(ns);
            proptest::prop_assert_eq!(GoDuration::parse(&d.to_string()), Ok(d));
        }
    }
}
