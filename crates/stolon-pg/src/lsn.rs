//! `Lsn`: a WAL position, parsed from and printed as PostgreSQL's `X/Y` hex form.

use std::fmt;
use std::str::FromStr;

/// A WAL position (log sequence number): `X/Y` in PostgreSQL's text form, `X << 32 | Y` as a number.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Lsn(pub u64);

impl FromStr for Lsn {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let s = s.trim();
        let (hi, lo) = s
            .split_once('/')
            .ok_or_else(|| format!("invalid LSN {s:?}: no '/'"))?;
        let hi = u32::from_str_radix(hi, 16).map_err(|e| format!("invalid LSN {s:?}: {e}"))?;
        let lo = u32::from_str_radix(lo, 16).map_err(|e| format!("invalid LSN {s:?}: {e}"))?;
        Ok(Lsn((u64::from(hi) << 32) | u64::from(lo)))
    }
}

impl fmt::Display for Lsn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:X}/{:X}", self.0 >> 32, self.0 & 0xFFFF_FFFF)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips() {
        let l: Lsn = "16/B374D848".parse().unwrap();
        assert_eq!(l.0, (0x16 << 32) | 0xB374_D848);
        assert_eq!(l.to_string(), "16/B374D848");
        assert_eq!("0/0".parse::<Lsn>().unwrap(), Lsn(0));
    }

    #[test]
    fn rejects_garbage() {
        assert!("".parse::<Lsn>().is_err());
        assert!("12".parse::<Lsn>().is_err());
        assert!("1/G".parse::<Lsn>().is_err());
        assert!("1FFFFFFFF/0".parse::<Lsn>().is_err());
    }
}
