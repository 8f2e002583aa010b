//! Named scenarios: the master's keeper (with its PostgreSQL) dies and the leader sentinel is
//! lost at the same moment, as when the master's host carries the leader sentinel. The other
//! sentinel takes over and judges the master from when it last saw the master's info change, so
//! the failover does not wait a fresh failInterval after the takeover; no acknowledged write may
//! be lost and every invariant (one leader sentinel at a time among them) holds at every step.
//!
//! Two ways to lose the leader: killed (its lease is no longer refreshed), or cut off from the
//! store while its election lease stays alive, as an etcd whose new raft leader restarted every
//! lease would keep it. Only the deposal of a leader whose info stopped changing ends the second
//! (stolon_core::sentinel::leadership).

use std::time::Duration;

use stolon_sim::{Component, Fault, SimConfig, Violation, World};

#[derive(Debug, Clone, Copy)]
enum LeaderLoss {
    Killed,
    CutOffKeepingItsLease,
}

async fn kill_master_and_leader(
    cfg: SimConfig,
    loss: LeaderLoss,
) -> Result<(World, Duration), Violation> {
    let cfg_sync = cfg.sync;
    let mut w = World::start(cfg);
    w.run_until(
        "a master routed by both proxies and 2 streaming standbys with acknowledged writes",
        Duration::from_secs(120),
        |w| {
            let Some(m) = w.routed_master() else {
                return false;
            };
            w.stats().acked >= 30 && (0..3).filter(|&i| i != m).all(|i| w.lsn(i) > 0)
        },
    )
    .await?;
    w.run_for(Duration::from_secs(5)).await?;
    let old = w.master_keeper().expect("a master");
    let leader = w.leader_sentinel().await.expect("a leader sentinel");
    if !cfg_sync {
        // Asynchronous: the standbys must hold every acknowledged write before the kill.
        w.set_client(false);
        w.run_for(Duration::from_secs(2)).await?;
    }
    let max_acked = w.max_acked_lsn().expect("acknowledged writes");
    let killed_at = w.elapsed();
    w.inject(Fault::KillKeeper(old));
    match loss {
        LeaderLoss::Killed => w.inject(Fault::KillSentinel(leader)),
        LeaderLoss::CutOffKeepingItsLease => {
            w.inject(Fault::StoreDown(Component::Sentinel(leader), true))
        }
    }
    w.run_until(
        "another keeper's DB is master, running as primary, routed by both proxies",
        Duration::from_secs(120),
        |w| {
            w.routed_master()
                .is_some_and(|m| m != old && w.is_primary(m))
        },
    )
    .await?;
    let took = w.elapsed() - killed_at;
    let new = w.master_keeper().expect("new master");
    w.set_client(true);
    assert!(
        w.lsn(new) >= max_acked,
        "new primary at {:#x} behind the last acknowledged write {max_acked:#x}",
        w.lsn(new)
    );
    assert_ne!(
        w.leader_sentinel().await,
        Some(leader),
        "the other sentinel leads"
    );
    // Both come back and rejoin without breaking anything.
    match loss {
        LeaderLoss::Killed => w.inject(Fault::RestartSentinel(leader)),
        LeaderLoss::CutOffKeepingItsLease => {
            w.inject(Fault::StoreDown(Component::Sentinel(leader), false))
        }
    }
    w.inject(Fault::RestartKeeper(old));
    w.run_until(
        "the old primary's keeper rejoins as a streaming standby",
        Duration::from_secs(120),
        |w| !w.is_primary(old) && w.lsn(old) >= max_acked && w.master_keeper() == Some(new),
    )
    .await?;
    w.run_for(Duration::from_secs(5)).await?;
    Ok((w, took))
}

async fn scenario(sync: bool, loss: LeaderLoss) {
    if std::env::var("RUST_LOG").is_ok() {
        let _ = tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
            .try_init();
    }
    match kill_master_and_leader(SimConfig::new(3, sync), loss).await {
        Ok((w, took)) => {
            eprintln!(
                "sync={sync} {loss:?}: routed to the new master {took:?} (virtual) after the kill; {:?}",
                w.stats()
            );
            assert_eq!(w.stats().lost_acked, 0);
            w.shutdown().await;
        }
        Err(v) => panic!("{v}"),
    }
}

#[tokio::test(start_paused = true)]
async fn sync_failover_after_killing_the_master_and_the_leader_sentinel() {
    scenario(true, LeaderLoss::Killed).await;
}

#[tokio::test(start_paused = true)]
async fn async_failover_after_killing_the_master_and_the_leader_sentinel() {
    scenario(false, LeaderLoss::Killed).await;
}

#[tokio::test(start_paused = true)]
async fn sync_failover_when_the_leader_sentinel_is_cut_off_but_keeps_its_lease() {
    scenario(true, LeaderLoss::CutOffKeepingItsLease).await;
}

#[tokio::test(start_paused = true)]
async fn async_failover_when_the_leader_sentinel_is_cut_off_but_keeps_its_lease() {
    scenario(false, LeaderLoss::CutOffKeepingItsLease).await;
}
