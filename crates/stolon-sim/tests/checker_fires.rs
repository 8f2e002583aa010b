//! The invariant checker must be able to fail: with a bug injected, the same runs that pass
//! without it must end in a violation naming the broken invariant. Each test runs the bug and a
//! control without it.

use std::time::Duration;

use stolon_sim::{Bug, Fault, SimConfig, Violation, World};

/// Brings the cluster up, kills the primary's keeper and PostgreSQL while the client writes, and
/// waits for the failover to finish.
async fn kill_primary_while_writing(
    cfg: SimConfig,
    before_kill: Duration,
) -> Result<World, Violation> {
    let mut w = World::start(cfg);
    w.run_until(
        "a master routed by both proxies with acknowledged writes",
        Duration::from_secs(120),
        |w| w.routed_master().is_some() && w.stats().acked >= 20,
    )
    .await?;
    w.run_for(before_kill).await?;
    let old = w.master_keeper().expect("a master");
    w.inject(Fault::KillKeeper(old));
    w.run_until(
        "a new master routed by both proxies",
        Duration::from_secs(120),
        |w| {
            w.routed_master()
                .is_some_and(|m| m != old && w.is_primary(m))
        },
    )
    .await?;
    w.run_for(Duration::from_secs(3)).await?;
    Ok(w)
}

#[tokio::test(start_paused = true)]
async fn acknowledging_before_the_sync_standby_has_the_write_is_caught() {
    let mut cfg = SimConfig::new(3, true);
    cfg.bug = Bug::AckBeforeSync;
    let v = match kill_primary_while_writing(cfg, Duration::from_secs(5)).await {
        Ok(w) => panic!("checker did not fire: {:?}", w.stats()),
        Err(v) => v,
    };
    eprintln!("{v}");
    assert!(v.what.contains("acknowledged write(s) lost"), "{v}");

    // Control: the same run with correct acknowledgement passes.
    let w = kill_primary_while_writing(SimConfig::new(3, true), Duration::from_secs(5))
        .await
        .unwrap_or_else(|v| panic!("{v}"));
    assert_eq!(w.stats().lost_acked, 0);
}

/// As if the sentinel ignored the spec's `maxStandbyLag`: the checker holds failovers to 0 bytes
/// while the sentinel applies the spec's 1 MiB; standbys replay slower than the client writes, so
/// the elected standby reports a lag.
#[tokio::test(start_paused = true)]
async fn electing_a_standby_beyond_max_standby_lag_is_caught() {
    let lagging = |bug| {
        let mut cfg = SimConfig::new(4, false);
        cfg.replication_rate = cfg.write_bytes * 3 / 4;
        cfg.bug = bug;
        cfg
    };
    let v =
        match kill_primary_while_writing(lagging(Bug::CheckerMaxLag(0)), Duration::from_secs(15))
            .await
        {
            Ok(w) => panic!("checker did not fire: {:?}", w.stats()),
            Err(v) => v,
        };
    eprintln!("{v}");
    assert!(v.what.contains("maxStandbyLag 0"), "{v}");

    // Control: with the spec's limit the same failover is fine.
    let w = kill_primary_while_writing(lagging(Bug::None), Duration::from_secs(15))
        .await
        .unwrap_or_else(|v| panic!("{v}"));
    assert_eq!(w.stats().failovers, 1, "{:?}", w.stats());
}

/// A proxy cut off from the store must stop routing after `proxyTimeout` (fail closed): the
/// sentinel names the new primary once that proxy's info has expired, so a proxy that kept its
/// route would now send clients to the old primary while the other proxy sends them to the new.
#[tokio::test(start_paused = true)]
async fn a_proxy_that_does_not_fail_closed_is_caught() {
    async fn run(bug: Bug) -> Result<World, Violation> {
        let mut cfg = SimConfig::new(5, false);
        cfg.bug = bug;
        let mut w = World::start(cfg);
        w.run_until(
            "a master routed by both proxies",
            Duration::from_secs(120),
            |w| w.routed_master().is_some() && w.stats().acked >= 20,
        )
        .await?;
        // Let the standbys converge first: only those can be elected.
        w.run_for(Duration::from_secs(8)).await?;
        let old = w.master_keeper().expect("a master");
        w.inject(Fault::StoreDown(
            stolon_sim::world::Component::Proxy(1),
            true,
        ));
        w.inject(Fault::KillKeeper(old));
        w.run_until(
            "proxy0 routes to a new master",
            Duration::from_secs(120),
            |w| {
                w.master_keeper()
                    .is_some_and(|m| m != old && w.is_primary(m) && w.routed_keeper(0) == Some(m))
            },
        )
        .await?;
        w.run_for(Duration::from_secs(3)).await?;
        Ok(w)
    }
    let v = match run(Bug::ProxyNoFailClosed).await {
        Ok(w) => panic!("checker did not fire: {:?}", w.stats()),
        Err(v) => v,
    };
    eprintln!("{v}");
    assert!(v.what.contains("proxies route to different places"), "{v}");

    // Control: the real fail-closed behaviour makes the same run safe.
    let w = run(Bug::None).await.unwrap_or_else(|v| panic!("{v}"));
    assert_eq!(w.routed_keeper(1), None, "cut-off proxy still routes");
}

/// Quorum commit's pigeonhole rule: with any 1 of 2 standbys acknowledging, a standby that was
/// cut off may lack writes the other acknowledged. The master and the other standby die
/// together: the cut one alone must not be elected. A sentinel that elects the most advanced
/// standby with a final position without counting enough of them loses acknowledged writes.
#[tokio::test(start_paused = true)]
async fn electing_without_enough_quorum_positions_is_caught() {
    async fn run(bug: Bug) -> Result<World, Violation> {
        let mut cfg = SimConfig::new(6, true);
        cfg.quorum = true;
        cfg.bug = bug;
        let mut w = World::start(cfg);
        w.run_until(
            "a routed master, 2 streaming standbys, both listed and known",
            Duration::from_secs(120),
            |w| {
                let Some(m) = w.routed_master() else {
                    return false;
                };
                let known = w
                    .cluster_data()
                    .and_then(|cd| cd.master_db().cloned())
                    .and_then(|db| db.status.synchronous_standbys)
                    .map_or(0, |v| v.len());
                w.stats().acked >= 30
                    && (0..3).filter(|&i| i != m).all(|i| w.lsn(i) > 0)
                    && known == 2
            },
        )
        .await?;
        w.run_for(Duration::from_secs(5)).await?;
        let master = w.master_keeper().expect("a master");
        let cut = (0..3).find(|&i| i != master).expect("a standby");
        let other = (0..3).find(|&i| i != master && i != cut).expect("another");
        w.inject(Fault::CutReplication(cut, true));
        let acked = w.stats().acked;
        w.run_until(
            "a write acknowledged by the other standby alone",
            Duration::from_secs(10),
            |w| w.stats().acked > acked,
        )
        .await?;
        w.inject(Fault::KillKeeper(master));
        w.inject(Fault::KillKeeper(other));
        // Only the cut standby is left; with the rule it is never elected.
        w.run_for(Duration::from_secs(40)).await?;
        assert_ne!(w.routed_master(), Some(cut), "the cut standby was elected");
        Ok(w)
    }
    let v = match run(Bug::QuorumElectWithoutEnoughPositions).await {
        Ok(w) => panic!("checker did not fire: {:?}", w.stats()),
        Err(v) => v,
    };
    eprintln!("{v}");
    assert!(v.what.contains("acknowledged write(s) lost"), "{v}");

    // Control: the real rule refuses to elect the cut standby; nothing is lost.
    let w = run(Bug::None).await.unwrap_or_else(|v| panic!("{v}"));
    assert_eq!(w.stats().lost_acked, 0);
    assert_eq!(w.stats().failovers, 0, "{:?}", w.stats());
}
