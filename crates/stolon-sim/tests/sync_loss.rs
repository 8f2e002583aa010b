//! Named scenario: the synchronous standby loses its replication connection while its keeper
//! still reaches the store (so the keeper never fails). The master stops reporting it in sync;
//! the sentinel must list another standby in its place (two steps), commits must resume, and no
//! acknowledged write may be lost, including after the cut heals.

use std::time::Duration;

use stolon_sim::{Fault, SimConfig, Violation, World};

/// The keeper indexes of the DBs the master's `synchronous_standby_names` lists.
fn listed_sync_keepers(w: &World) -> Vec<usize> {
    let Some(cd) = w.cluster_data() else {
        return Vec::new();
    };
    let Some(list) = cd
        .master_db()
        .and_then(|m| m.spec.as_ref())
        .and_then(|s| s.synchronous_standbys.clone())
    else {
        return Vec::new();
    };
    list.iter()
        .filter_map(|db| cd.dbs.get(db))
        .filter_map(|db| db.spec.as_ref())
        .filter_map(|s| s.keeper_uid.strip_prefix("keeper"))
        .filter_map(|i| i.parse().ok())
        .collect()
}

async fn cut_the_sync_standby(cfg: SimConfig) -> Result<World, Violation> {
    let mut w = World::start(cfg);
    w.run_until(
        "a routed master, 2 streaming standbys, one of them listed as synchronous",
        Duration::from_secs(120),
        |w| {
            let Some(m) = w.routed_master() else {
                return false;
            };
            w.stats().acked >= 30
                && (0..3).filter(|&i| i != m).all(|i| w.lsn(i) > 0)
                && listed_sync_keepers(w).len() == 1
        },
    )
    .await?;
    w.run_for(Duration::from_secs(5)).await?;
    let master = w.master_keeper().expect("a master");
    let lost = listed_sync_keepers(&w)[0];
    w.inject(Fault::CutReplication(lost, true));
    let acked_at_cut = w.stats().acked;
    // The lost standby's keeper keeps publishing: only the master's report can tell the
    // sentinel. Commits resume once the other standby alone is listed.
    w.run_until(
        "the other standby alone is listed as synchronous and commits resume",
        Duration::from_secs(120),
        |w| {
            let listed = listed_sync_keepers(w);
            listed.len() == 1 && listed[0] != lost && w.stats().acked > acked_at_cut + 5
        },
    )
    .await?;
    assert_eq!(w.master_keeper(), Some(master), "no failover was needed");
    // The cut heals: the standby streams again, nothing breaks.
    w.inject(Fault::CutReplication(lost, false));
    w.run_until(
        "the formerly cut standby catches up",
        Duration::from_secs(120),
        |w| w.lsn(lost) >= w.max_acked_lsn().unwrap_or(0),
    )
    .await?;
    w.run_for(Duration::from_secs(10)).await?;
    Ok(w)
}

#[tokio::test(start_paused = true)]
async fn sync_standby_cut_off_is_replaced_while_its_keeper_is_healthy() {
    match cut_the_sync_standby(SimConfig::new(1, true)).await {
        Ok(w) => {
            eprintln!("virtual {:?}, {:?}", w.elapsed(), w.stats());
            assert_eq!(w.stats().lost_acked, 0);
            w.shutdown().await;
        }
        Err(v) => panic!("{v}"),
    }
}
