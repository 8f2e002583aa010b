//! Wall-clock timestamps in Stolon's JSON form (Go `time.Time`, RFC 3339 with nanoseconds).
//!
//! Pure: the core never reads the clock; callers pass `Timestamp`s in. Go writes the zero time as
//! `0001-01-01T00:00:00Z`, which round-trips here.

use std::fmt;

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use time::format_description::well_known::Rfc3339;
use time::{OffsetDateTime, UtcOffset};

/// A point in wall-clock time with its UTC offset, as found in clusterdata.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Timestamp(OffsetDateTime);

impl Timestamp {
    /// Go's zero time, `0001-01-01T00:00:00Z`.
    pub fn zero() -> Self {
        Timestamp(time::macros::datetime!(0001-01-01 00:00:00 UTC))
    }

    /// True for Go's zero time.
    pub fn is_zero(&self) -> bool {
        *self == Self::zero()
    }

    /// From nanoseconds since the Unix epoch (UTC). Out-of-range values give the zero time.
    pub fn from_unix_nanos(ns: i128) -> Self {
        OffsetDateTime::from_unix_timestamp_nanos(ns)
            .map(Timestamp)
            .unwrap_or_else(|_| Self::zero())
    }

    /// Nanoseconds since the Unix epoch.
    pub fn unix_nanos(&self) -> i128 {
        self.0.unix_timestamp_nanos()
    }

    /// Parses RFC 3339 (with optional fractional seconds).
    pub fn parse(s: &str) -> Result<Self, String> {
        OffsetDateTime::parse(s, &Rfc3339)
            .map(Timestamp)
            .map_err(|e| format!("invalid time {s:?}: {e}"))
    }
}

impl Default for Timestamp {
    fn default() -> Self {
        Self::zero()
    }
}

impl PartialOrd for Timestamp {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for Timestamp {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        self.0.cmp(&other.0)
    }
}

impl fmt::Display for Timestamp {
    /// Go's RFC3339Nano layout: fraction without trailing zeros, `Z` for UTC.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let t = self.0;
        write!(
            f,
            "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}",
            t.year(),
            u8::from(t.month()),
            t.day(),
            t.hour(),
            t.minute(),
            t.second()
        )?;
        let mut ns = t.nanosecond();
        if ns != 0 {
            let mut digits = 9usize;
            while ns.is_multiple_of(10) {
                ns /= 10;
                digits -= 1;
            }
            write!(f, ".{ns:0digits$}")?;
        }
        let off: UtcOffset = t.offset();
        if off.is_utc() {
            f.write_str("Z")
        } else {
            let secs = off.whole_seconds();
            let sign = if secs < 0 { '-' } else { '+' };
            let a = secs.unsigned_abs();
            write!(f, "{sign}{:02}:{:02}", a / 3600, (a % 3600) / 60)
        }
    }
}

impl Serialize for Timestamp {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Timestamp {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        Timestamp::parse(&s).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_go_forms() {
        for s in [
            "0001-01-01T00:00:00Z",
            "2023-09-06T10:11:12.123456789Z",
            "2023-09-06T10:11:12.5+02:00",
            "2023-09-06T10:11:12-07:30",
        ] {
            assert_eq!(Timestamp::parse(s).expect("parse").to_string(), s);
        }
        assert!(Timestamp::zero().is_zero());
        assert!(Timestamp::parse("yesterday").is_err());
    }
}
