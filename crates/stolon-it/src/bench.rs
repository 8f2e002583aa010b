//! What the benchmark binaries (`failover-bench`, `switchover-bench`) share: their environment
//! settings and the median they print.

use std::time::Duration;

use anyhow::{Context, Result, bail};

/// `RUNS` from the environment: how many runs per configuration (default `default`, 1 to 100).
pub fn runs_from_env(default: usize) -> Result<usize> {
    let runs: usize = std::env::var("RUNS")
        .ok()
        .map(|v| v.parse().context("RUNS must be a number"))
        .transpose()?
        .unwrap_or(default);
    if runs == 0 || runs > 100 {
        bail!("RUNS must be between 1 and 100");
    }
    Ok(runs)
}

/// `CONFIGS` from the environment: the comma-separated configuration names to run (`None`: all).
pub fn configs_from_env() -> Option<Vec<String>> {
    std::env::var("CONFIGS")
        .ok()
        .filter(|v| !v.is_empty())
        .map(|v| v.split(',').map(|s| s.trim().to_string()).collect())
}

/// Whether configuration `name` is selected by `only` (see [`configs_from_env`]).
pub fn selected(only: &Option<Vec<String>>, name: &str) -> bool {
    only.as_ref().is_none_or(|o| o.iter().any(|n| n == name))
}

/// The median of `v` (sorted in place); zero for an empty slice.
pub fn median(v: &mut [Duration]) -> Duration {
    v.sort();
    let n = v.len();
    if n == 0 {
        Duration::ZERO
    } else if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn median_of_odd_even_and_empty() {
        let s = Duration::from_secs;
        assert_eq!(median(&mut [s(3), s(1), s(2)]), s(2));
        assert_eq!(
            median(&mut [s(4), s(1), s(2), s(3)]),
            Duration::from_millis(2500)
        );
        assert_eq!(median(&mut []), Duration::ZERO);
    }

    #[test]
    fn selection() {
        assert!(selected(&None, "fast-sync"));
        let only = Some(vec!["fast-sync".to_string()]);
        assert!(selected(&only, "fast-sync"));
        assert!(!selected(&only, "fast-async"));
    }
}
