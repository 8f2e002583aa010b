//! Named scenario: the primary's keeper and its PostgreSQL die; a standby must become primary,
//! both proxies must route to it, and no acknowledged write may be lost (asynchronous mode with
//! the client paused before the kill, so the standbys hold everything; synchronous mode with the
//! client writing up to the kill; quorum commit, likewise).

use std::time::Duration;

use stolon_sim::{Fault, SimConfig, Violation, World};

async fn kill_the_primary(cfg: SimConfig) -> Result<World, Violation> {
    let sync = cfg.sync;
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
    if !sync {
        w.set_client(false);
        w.run_for(Duration::from_secs(2)).await?;
    }
    let acked_before = w.stats().acked;
    let max_acked = w.max_acked_lsn().expect("acknowledged writes");
    w.inject(Fault::KillKeeper(old));
    w.run_until(
        "another keeper's DB is master, running as primary, routed by both proxies",
        Duration::from_secs(120),
        |w| {
            w.routed_master()
                .is_some_and(|m| m != old && w.is_primary(m))
        },
    )
    .await?;
    let new = w.master_keeper().expect("new master");
    assert!(
        w.lsn(new) >= max_acked,
        "new primary at {:#x} behind the last acknowledged write {max_acked:#x}",
        w.lsn(new)
    );
    w.set_client(true);
    w.run_for(Duration::from_secs(5)).await?;
    assert!(
        w.stats().acked > acked_before,
        "no write acknowledged by the new primary: {:?}",
        w.stats()
    );
    // The old keeper comes back and must rejoin as a standby without breaking anything.
    w.inject(Fault::RestartKeeper(old));
    w.run_until(
        "the old primary's keeper rejoins as a streaming standby",
        Duration::from_secs(120),
        |w| !w.is_primary(old) && w.lsn(old) >= max_acked && w.master_keeper() == Some(new),
    )
    .await?;
    w.run_for(Duration::from_secs(5)).await?;
    Ok(w)
}

async fn scenario(sync: bool) {
    scenario_with(SimConfig::new(1, sync)).await;
}

async fn scenario_with(cfg: SimConfig) {
    let (sync, quorum) = (cfg.sync, cfg.quorum);
    let started = std::time::Instant::now();
    match kill_the_primary(cfg).await {
        Ok(w) => {
            eprintln!(
                "sync={sync} quorum={quorum}: virtual {:?}, real {:?}, {:?}",
                w.elapsed(),
                started.elapsed(),
                w.stats()
            );
            assert_eq!(w.stats().lost_acked, 0);
            w.shutdown().await;
        }
        Err(v) => panic!("{v}"),
    }
}

#[tokio::test(start_paused = true)]
async fn async_failover_after_killing_the_primary() {
    scenario(false).await;
}

#[tokio::test(start_paused = true)]
async fn sync_failover_after_killing_the_primary() {
    scenario(true).await;
}

/// Quorum commit (any 1 of 2 standbys): the failover waits for the proxies' fence and the
/// standbys' final positions, then elects one holding every acknowledged write.
#[tokio::test(start_paused = true)]
async fn quorum_failover_after_killing_the_primary() {
    let mut cfg = SimConfig::new(1, true);
    cfg.quorum = true;
    scenario_with(cfg).await;
}
