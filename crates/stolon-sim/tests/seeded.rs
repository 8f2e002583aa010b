//! Seeded random runs: 20 seeds, each 60 s of virtual time with random faults (keeper and
//! PostgreSQL crashes, keeper restarts with a new boot id, store outages and failing store calls
//! per component, sentinel kills and restarts), every invariant checked after every 100 ms step.
//! Odd seeds run with synchronous replication; the `quorum_*` tests run every seed again with
//! synchronous replication and quorum commit (any 1 of 2 standbys acknowledges a commit), where
//! no acknowledged write may be lost either; `slow_sentinel_answers_*` runs seeds again with every
//! sentinel store call answered late. `STOLON_SIM_SEED=<n>` runs only seed `n`;
//! `STOLON_SIM_FAIL_LATENCY_MS=<ms>` sets how long an injected store failure takes (default 500).
//!
//! Split over several tests so the test harness runs them on parallel threads.

use std::time::{Duration, Instant};

use stolon_sim::{SimConfig, Stats, Violation, World};

const VIRTUAL: Duration = Duration::from_secs(60);

fn run_seed_with(
    seed: u64,
    quorum: bool,
    sentinel_answer_delay: Duration,
) -> Result<Stats, Violation> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .start_paused(true)
        .build()
        .expect("tokio runtime");
    rt.block_on(async move {
        let mut cfg = SimConfig::new(seed, quorum || seed % 2 == 1);
        cfg.quorum = quorum;
        cfg.random_faults = true;
        cfg.sentinel_answer_delay = sentinel_answer_delay;
        if let Some(ms) = std::env::var("STOLON_SIM_FAIL_LATENCY_MS")
            .ok()
            .and_then(|s| s.parse().ok())
        {
            cfg.store_fail_latency = Duration::from_millis(ms);
        }
        let mut w = World::start(cfg);
        w.run_for(VIRTUAL).await?;
        let stats = w.stats().clone();
        w.shutdown().await;
        Ok(stats)
    })
}

fn run_seeds(seeds: std::ops::RangeInclusive<u64>) {
    run_seeds_in(seeds, false);
}

fn run_seeds_in(seeds: std::ops::RangeInclusive<u64>, quorum: bool) {
    run_seeds_with(seeds, quorum, Duration::ZERO);
}

fn run_seeds_with(
    seeds: std::ops::RangeInclusive<u64>,
    quorum: bool,
    sentinel_answer_delay: Duration,
) {
    let only: Option<u64> = std::env::var("STOLON_SIM_SEED")
        .ok()
        .and_then(|s| s.parse().ok());
    for seed in seeds {
        if only.is_some_and(|o| o != seed) {
            continue;
        }
        let started = Instant::now();
        match run_seed_with(seed, quorum, sentinel_answer_delay) {
            Ok(s) => {
                eprintln!(
                    "seed {seed:2} sync={} quorum={quorum} real {:6.2?}: {s:?}",
                    quorum || seed % 2 == 1,
                    started.elapsed()
                );
                // The cluster came up and served writes before the faults started.
                assert!(
                    s.routed_steps > 0 && s.acked > 0,
                    "seed {seed}: never served: {s:?}"
                );
            }
            Err(v) => panic!("{v}"),
        }
    }
}

#[test]
fn seeds_01_to_05() {
    run_seeds(1..=5);
}

#[test]
fn seeds_06_to_10() {
    run_seeds(6..=10);
}

#[test]
fn seeds_11_to_15() {
    run_seeds(11..=15);
}

#[test]
fn seeds_16_to_20() {
    run_seeds(16..=20);
}

#[test]
fn quorum_seeds_01_to_05() {
    run_seeds_in(1..=5, true);
}

#[test]
fn quorum_seeds_06_to_10() {
    run_seeds_in(6..=10, true);
}

#[test]
fn quorum_seeds_11_to_15() {
    run_seeds_in(11..=15, true);
}

#[test]
fn quorum_seeds_16_to_20() {
    run_seeds_in(16..=20, true);
}

/// More seeds on demand: `STOLON_SIM_SEED_RANGE=21-200 cargo test -p stolon-sim --test seeded
/// -- --ignored` (with `STOLON_SIM_QUORUM=1`, in quorum mode).
#[test]
#[ignore = "long: run on demand with STOLON_SIM_SEED_RANGE"]
fn seed_range_from_env() {
    let range = std::env::var("STOLON_SIM_SEED_RANGE").unwrap_or_else(|_| "21-40".into());
    let (a, b) = range
        .split_once('-')
        .and_then(|(a, b)| Some((a.parse().ok()?, b.parse().ok()?)))
        .expect("STOLON_SIM_SEED_RANGE is <first>-<last>");
    run_seeds_in(
        a..=b,
        std::env::var("STOLON_SIM_QUORUM").is_ok_and(|v| v == "1"),
    );
}

/// One seed with the components' logs: `STOLON_SIM_SEED=173 RUST_LOG=info cargo test -p
/// stolon-sim --test seeded -- --ignored --nocapture one_seed_with_logs`.
#[test]
#[ignore = "debugging aid: run on demand"]
fn one_seed_with_logs() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .try_init();
    let seed = std::env::var("STOLON_SIM_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(1);
    run_seeds(seed..=seed);
}

/// Seeds 1 to 6 with every sentinel store call answered 600 ms after the store served it, longer
/// than the proxies' reaction bound (500 ms): a proxy info written while the sentinel's read was
/// under way is missing from it, and the sentinel judges proxies at the instant before the read
/// (docs/invariants.md, invariant 2).
#[test]
fn slow_sentinel_answers_seeds_01_to_06() {
    run_seeds_with(1..=6, false, Duration::from_millis(600));
}
