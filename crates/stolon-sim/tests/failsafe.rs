//! Failsafe mode in the simulation (docs/failsafe.md).
//!
//! - A store outage for every component: the proxies keep routing to the master (on the master
//!   keeper's confirmations) for the whole outage, and the cluster carries on afterwards.
//! - The master's keeper and one proxy cut off from the store, the rest of the cluster not: the
//!   sentinel still fails over, and no two proxies ever route to two running primaries.
//! - Seeded random runs with failsafe mode's own fault kinds (store outages for everyone, cuts
//!   between two keepers and between a proxy and a keeper) among the usual ones, every
//!   invariant checked after every step: 100 seeds (`STOLON_SIM_FAILSAFE_SEEDS=<n>` for more).
//! - The checker fires: a keeper that confirms without every acknowledgement lets a proxy route
//!   to the old master while the new one takes writes, and the world reports it.

use std::time::Duration;

use stolon_sim::{Bug, Component, Fault, SimConfig, Stats, Violation, World};

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .start_paused(true)
        .build()
        .expect("tokio runtime")
}

fn secs(n: u64) -> Duration {
    Duration::from_secs(n)
}

fn config(seed: u64, sync: bool) -> SimConfig {
    SimConfig {
        failsafe: true,
        ..SimConfig::new(seed, sync)
    }
}

/// Runs until the cluster serves: one master, every proxy routing to it.
async fn until_serving(w: &mut World) -> Result<usize, Violation> {
    w.run_until("a master every proxy routes to", secs(120), |w| {
        w.routed_master().is_some()
    })
    .await?;
    Ok(w.routed_master().unwrap_or_default())
}

/// A world serving (one master every proxy routes to) for 10 s more, so that the master's keeper
/// holds its acknowledgements; the world and the master.
async fn serving(cfg: SimConfig) -> (World, usize) {
    let mut w = World::start(cfg);
    let m = until_serving(&mut w)
        .await
        .unwrap_or_else(|v| panic!("{v}"));
    w.run_for(secs(10)).await.unwrap_or_else(|v| panic!("{v}"));
    (w, m)
}

#[test]
fn a_store_outage_for_everyone_keeps_the_master_routed() {
    runtime().block_on(async {
        for sync in [false, true] {
            let (mut w, m) = serving(config(1, sync)).await;
            w.inject(Fault::StoreOutage(true));
            let before = w.stats().clone();
            w.run_for(secs(40)).await.unwrap_or_else(|v| panic!("{v}"));
            let during = w.stats().clone();
            // Every step of the outage, past its first seconds, some proxy still routed to the
            // running master and the client's writes were acknowledged.
            let outage_steps = during.outage_steps - before.outage_steps;
            let routed = during.outage_routed_steps - before.outage_routed_steps;
            assert!(
                routed + 20 >= outage_steps,
                "sync {sync}: routed in {routed} of {outage_steps} outage steps"
            );
            assert!(
                during.acked > before.acked,
                "sync {sync}: no write acknowledged during the outage: {during:?}"
            );
            for p in 0..2 {
                assert_eq!(w.routed_keeper(p), Some(m), "sync {sync}: proxy{p}");
            }
            w.inject(Fault::StoreOutage(false));
            w.run_until("serving again after the outage", secs(60), |w| {
                w.routed_master() == Some(m)
            })
            .await
            .unwrap_or_else(|v| panic!("{v}"));
            w.shutdown().await;
        }
    });
}

#[test]
fn the_master_cut_from_the_store_still_fails_over() {
    runtime().block_on(async {
        for sync in [false, true] {
            let (mut w, m) = serving(config(2, sync)).await;
            w.inject(Fault::StoreDown(Component::Keeper(m), true));
            w.inject(Fault::StoreDown(Component::Proxy(0), true));
            w.run_until("a new master", secs(120), |w| {
                w.master_keeper().is_some_and(|n| n != m)
            })
            .await
            .unwrap_or_else(|v| panic!("sync {sync}: {v}"));
            w.run_for(secs(30)).await.unwrap_or_else(|v| panic!("{v}"));
            w.inject(Fault::StoreDown(Component::Keeper(m), false));
            w.inject(Fault::StoreDown(Component::Proxy(0), false));
            w.run_until("every proxy on the new master", secs(120), |w| {
                w.routed_master().is_some_and(|n| n != m)
            })
            .await
            .unwrap_or_else(|v| panic!("sync {sync}: {v}"));
            w.shutdown().await;
        }
    });
}

fn run_seed(seed: u64) -> Result<Stats, Violation> {
    runtime().block_on(async move {
        let mut cfg = config(seed, seed % 2 == 1);
        cfg.random_faults = true;
        let mut w = World::start(cfg);
        w.run_for(secs(60)).await?;
        let stats = w.stats().clone();
        w.shutdown().await;
        Ok(stats)
    })
}

fn run_seeds(seeds: std::ops::Range<u64>) -> Stats {
    let mut total = Stats::default();
    for seed in seeds {
        match run_seed(seed) {
            Ok(s) => {
                assert!(
                    s.routed_steps > 0 && s.acked > 0,
                    "seed {seed}: never served: {s:?}"
                );
                total.acked += s.acked;
                total.faults += s.faults;
                total.failovers += s.failovers;
                total.outage_steps += s.outage_steps;
                total.outage_routed_steps += s.outage_routed_steps;
            }
            Err(v) => panic!("{v}"),
        }
    }
    total
}

fn seed_count() -> u64 {
    std::env::var("STOLON_SIM_FAILSAFE_SEEDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(100)
}

/// Seeds 1000.. in four tests that the harness runs in parallel.
fn quarter(q: u64) {
    let n = seed_count();
    let per = n.div_ceil(4);
    let from = 1000 + q * per;
    let to = (1000 + n).min(from + per);
    let t = run_seeds(from..to);
    eprintln!("failsafe seeds {from}..{to}: {t:?}");
    // The runs did exercise failsafe mode's case: outages during which some proxy routed.
    if to - from >= 20 {
        assert!(
            t.outage_routed_steps > 0,
            "no proxy routed during any store outage: {t:?}"
        );
    }
}

#[test]
fn seeds_first_quarter() {
    quarter(0);
}

#[test]
fn seeds_second_quarter() {
    quarter(1);
}

#[test]
fn seeds_third_quarter() {
    quarter(2);
}

#[test]
fn seeds_fourth_quarter() {
    quarter(3);
}

#[test]
fn checker_fires_on_a_keeper_confirming_without_every_acknowledgement() {
    runtime().block_on(async {
        let mut cfg = config(3, false);
        cfg.bug = Bug::FailsafeConfirmWithoutAcks;
        let (mut w, m) = serving(cfg).await;
        // The master's keeper and proxy0 lose the store: the sentinel elects another master and
        // proxy1 follows it, while proxy0 routes on the broken keeper's confirmations.
        w.inject(Fault::StoreDown(Component::Keeper(m), true));
        w.inject(Fault::StoreDown(Component::Proxy(0), true));
        let r = w.run_for(secs(120)).await;
        let v = r.expect_err("the checker must report the broken rule");
        // Two proxies on two running primaries: either invariant may be the first to see it.
        assert!(
            v.what.contains("several running primaries")
                || v.what.contains("proxies route to different places"),
            "unexpected violation: {v}"
        );
        w.shutdown().await;
    });
}
