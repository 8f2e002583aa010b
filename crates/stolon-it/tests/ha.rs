//! High availability scenarios (docs/architecture.md §11), checked through the proxy as well
//! as on the keepers: failover (async and sync), forced failover, the old primary returning
//! (with and without pg_rewind), a frozen primary (SIGSTOP), `maxStandbysPerSender`, keeper
//! removal (dead keepers, stolonctl, sync), a failover that cannot complete, a standby that can
//! no longer sync, timeline forks (async, sync, pg_rewind), `minSynchronousStandbys: 0`.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use serde_json::{Value, json};
use stolon_it::{Cluster, ClusterConfig, KeeperOpts, test_spec, wait_for};

fn secs(n: u64) -> Duration {
    Duration::from_secs(n)
}

/// A cluster with `keepers` keepers, one sentinel, one proxy, ready (every keeper's DB up).
async fn setup(keepers: usize, extra: Value) -> Result<(Cluster, usize)> {
    let c = Cluster::start(ClusterConfig::new(test_spec(extra), 1, keepers, 1)).await?;
    let m = c.wait_ready(secs(180)).await?;
    Ok((c, m))
}

fn sync_spec(sync: bool, pgrewind: bool) -> Value {
    json!({ "synchronousReplication": sync, "usePgrewind": pgrewind })
}

fn other(m: usize) -> usize {
    if m == 0 { 1 } else { 0 }
}

/// Two keepers: table, row 1 through the proxy, standby caught up (and in sync).
async fn two_keepers_with_row(sync: bool, pgrewind: bool) -> Result<(Cluster, usize, usize)> {
    two_keepers_with_spec(sync_spec(sync, pgrewind)).await
}

/// Two keepers (spec `extra`): table, row 1 through the proxy, standby caught up, and with
/// `synchronousReplication` the standby is the synchronous standby.
async fn two_keepers_with_spec(extra: Value) -> Result<(Cluster, usize, usize)> {
    let sync = extra["synchronousReplication"].as_bool().unwrap_or(false);
    let (c, m) = setup(2, extra).await?;
    let s = other(m);
    if sync {
        c.wait_sync_standbys(&[s], secs(60)).await?;
    }
    c.wait_right_master(m, secs(60)).await?;
    c.create_table(secs(30)).await?;
    c.write_row(1, secs(30)).await?;
    c.wait_rows(s, "table01", 1, secs(60)).await?;
    c.wait_synced_xlogpos(&[m, s], secs(60)).await?;
    Ok((c, m, s))
}

async fn failover(sync: bool) -> Result<()> {
    let (mut c, m, s) = two_keepers_with_row(sync, false).await?;
    eprintln!("--- stop the master keeper{m}");
    c.keepers[m].stop().await?;
    c.wait_master_is(s, secs(60)).await?;
    c.wait_db_role(s, true, secs(60)).await?;
    c.wait_rows(s, "table01", 1, secs(10)).await?;
    c.wait_right_master(s, secs(60)).await?;
    let n = c
        .proxy_value("select count(*) from table01", secs(30))
        .await?;
    ensure!(n == "1", "{n} rows through the proxy");
    if !sync {
        // A write through the proxy lands on the new primary.
        c.write_row(2, secs(30)).await?;
        c.wait_rows(s, "table01", 2, secs(10)).await?;
    }
    c.pass();
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failover_async() -> Result<()> {
    failover(false).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failover_sync_repl() -> Result<()> {
    failover(true).await
}

async fn force_fail(sync: bool) -> Result<()> {
    let (c, m, s) = two_keepers_with_row(sync, false).await?;
    eprintln!("--- stolonctl failkeeper keeper{m}");
    c.stolonctl_ok(&["failkeeper", &c.keepers[m].uid.clone()])
        .await?;
    c.wait_master_is(s, secs(60)).await?;
    c.wait_db_role(s, true, secs(60)).await?;
    c.wait_rows(s, "table01", 1, secs(10)).await?;
    c.wait_right_master(s, secs(60)).await?;
    c.pass();
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn force_fail_async() -> Result<()> {
    force_fail(false).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn force_fail_sync_repl() -> Result<()> {
    force_fail(true).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn master_standby_sync_repl() -> Result<()> {
    // TestMasterStandby + TestMasterStandbySyncRepl: the standby is the synchronous standby in
    // spec and status, and a row written through the proxy reaches it.
    let (c, _m, _s) = two_keepers_with_row(true, false).await?;
    c.pass();
    Ok(())
}

async fn old_master_restart(sync: bool, pgrewind: bool) -> Result<()> {
    let (mut c, m, s) = two_keepers_with_row(sync, pgrewind).await?;
    eprintln!("--- stop the master keeper{m}");
    c.keepers[m].stop().await?;
    c.wait_master_is(s, secs(60)).await?;
    c.wait_db_role(s, true, secs(60)).await?;
    c.wait_rows(s, "table01", 1, secs(10)).await?;

    eprintln!("--- a third keeper joins as a standby of the new master");
    let k3 = c.add_keeper()?;
    c.wait_rows(k3, "table01", 1, secs(120)).await?;
    c.wait_right_master(s, secs(60)).await?;
    c.write_row(2, secs(60)).await?;

    eprintln!("--- the old master keeper{m} returns as a standby");
    c.keepers[m].start()?;
    c.wait_rows(m, "table01", 2, secs(120)).await?;
    c.wait_db_role(m, false, secs(60)).await?;
    c.wait_right_master(s, secs(30)).await?;
    c.pass();
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn old_master_restart_async() -> Result<()> {
    old_master_restart(false, false).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn old_master_restart_sync_repl() -> Result<()> {
    old_master_restart(true, false).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn old_master_restart_sync_repl_pgrewind() -> Result<()> {
    old_master_restart(true, true).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn old_master_restart_pgrewind() -> Result<()> {
    old_master_restart(false, true).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn partition_frozen_master() -> Result<()> {
    // TestPartition1Pgrewind.
    partition(false, true).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn partition1() -> Result<()> {
    // TestPartition1: without pg_rewind the old master is recloned when it returns.
    partition(false, false).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn partition1_sync_repl() -> Result<()> {
    // TestPartition1SyncRepl.
    partition(true, false).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn partition_frozen_master_sync_repl() -> Result<()> {
    // TestPartition1SyncReplPgrewind: a third keeper becomes the new master's sync standby.
    partition(true, true).await
}

/// TestPartition1: SIGSTOP the master keeper and its whole postgres (postmaster and backends).
async fn partition(sync: bool, pgrewind: bool) -> Result<()> {
    let (mut c, m, s) = two_keepers_with_row(sync, pgrewind).await?;
    eprintln!("--- SIGSTOP keeper{m} and its postgres");
    c.keepers[m].pause_with_postgres()?;
    let res = partitioned(&mut c, s, sync).await;
    eprintln!("--- SIGCONT keeper{m} and its postgres");
    c.keepers[m].resume_with_postgres()?;
    res?;
    // The old master comes back as a standby of the new one, with the row written meanwhile.
    c.wait_rows(m, "table01", 2, secs(120)).await?;
    c.wait_db_role(m, false, secs(60)).await?;
    // The proxy never routed back to the old master.
    c.wait_right_master(s, secs(10)).await?;
    c.pass();
    Ok(())
}

/// While the old master is frozen: the standby takes over; with sync replication a third
/// keeper joins so the new master has a synchronous standby; row 2 through the proxy.
async fn partitioned(c: &mut Cluster, s: usize, sync: bool) -> Result<()> {
    c.wait_master_is(s, secs(60)).await?;
    c.wait_db_role(s, true, secs(60)).await?;
    if sync {
        let k3 = c.add_keeper()?;
        c.wait_rows(k3, "table01", 1, secs(120)).await?;
    }
    c.wait_right_master(s, secs(60)).await?;
    c.write_row(2, secs(60)).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_standby_max_standbys_per_sender() -> Result<()> {
    // TestFailedStandby: maxStandbysPerSender 1 with 3 keepers: 2 DBs; when the standby's keeper
    // stops, the free keeper gets a standby DB and there are 2 DBs again.
    let mut c = Cluster::start(ClusterConfig::new(
        test_spec(json!({ "maxStandbysPerSender": 1 })),
        1,
        3,
        1,
    ))
    .await?;
    let m = c.wait_master(secs(180)).await?;
    c.wait_db_count(2, secs(120)).await?;
    c.create_table(secs(60)).await?;
    c.write_row(1, secs(30)).await?;
    let cd = c.cluster_data().await?.expect("clusterdata");
    let s = (0..3)
        .find(|&i| i != m && c.keeper_db(&cd, i).is_some())
        .expect("a standby db");
    let free = (0..3).find(|&i| i != m && i != s).expect("a free keeper");
    c.wait_rows(s, "table01", 1, secs(60)).await?;
    eprintln!("--- stop the standby keeper{s}");
    c.keepers[s].stop().await?;
    wait_keeper_has_db(&c, free, secs(60)).await?;
    c.wait_db_count(2, secs(60)).await?;
    c.wait_rows(free, "table01", 1, secs(120)).await?;
    c.pass();
    Ok(())
}

async fn wait_keeper_has_db(c: &Cluster, i: usize, limit: Duration) -> Result<()> {
    stolon_it::wait_for(&format!("keeper{i} to get a db"), limit, async || {
        let cd = c.cluster_data().await?.expect("clusterdata");
        c.keeper_db(&cd, i)
            .map(|_| ())
            .ok_or_else(|| anyhow::anyhow!("no db"))
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lowered_max_standbys_per_sender() -> Result<()> {
    let c = Cluster::start(ClusterConfig::new(
        test_spec(json!({ "maxStandbysPerSender": 2 })),
        1,
        3,
        1,
    ))
    .await?;
    c.wait_master(secs(180)).await?;
    c.wait_db_count(3, secs(120)).await?;
    c.patch_spec(&json!({ "maxStandbysPerSender": 1 })).await?;
    c.wait_db_count(2, secs(60)).await?;
    c.pass();
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keeper_removal_stolonctl() -> Result<()> {
    let (mut c, m) = setup(3, json!({})).await?;
    c.create_table(secs(30)).await?;
    c.write_row(1, secs(30)).await?;
    let s0 = (0..3).find(|&i| i != m).expect("standby");
    c.wait_rows(s0, "table01", 1, secs(60)).await?;
    let master_uid = c.keepers[m].uid.clone();
    let out = c.stolonctl(&["removekeeper", &master_uid]).await?;
    ensure!(
        !out.status.success(),
        "removekeeper of the master must fail; stdout: {}",
        String::from_utf8_lossy(&out.stdout)
    );
    let cd0 = c.cluster_data().await?.expect("clusterdata");
    let old_db = c.keeper_db(&cd0, s0).map(|d| d.uid.clone());
    eprintln!("--- stop keeper{s0} and remove it");
    c.keepers[s0].stop().await?;
    let uid = c.keepers[s0].uid.clone();
    c.stolonctl_ok(&["removekeeper", &uid]).await?;
    let cd = c.cluster_data().await?.expect("clusterdata");
    ensure!(cd.keepers.len() == 2, "keepers {:?}", cd.keepers.keys());
    ensure!(cd.dbs.len() == 2, "dbs {:?}", cd.dbs.keys());
    eprintln!("--- keeper{s0} rejoins with a new db");
    c.keepers[s0].start()?;
    c.wait_keeper_count(3, secs(60)).await?;
    c.wait_rows(s0, "table01", 1, secs(120)).await?;
    let cd = c.cluster_data().await?.expect("clusterdata");
    let new_db = c.keeper_db(&cd, s0).map(|d| d.uid.clone());
    ensure!(
        new_db.is_some() && new_db != old_db,
        "db {old_db:?} -> {new_db:?}"
    );
    c.pass();
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failover_too_much_lag() -> Result<()> {
    // TestFailoverTooMuchLag: a standby more than maxStandbyLag (50 KiB) behind is never elected.
    let (mut c, m, s) = two_keepers_with_row(false, false).await?;
    eprintln!("--- stop the standby, write ~100 KiB on the master, stop the master");
    c.keepers[s].stop().await?;
    c.proxy_exec(
        "insert into table01 select g, repeat('x', 100) from generate_series(10, 1009) g \
         on conflict (id) do nothing",
        secs(30),
    )
    .await?;
    // Let the sentinel see the master's new xLogPos.
    tokio::time::sleep(secs(5)).await;
    c.keepers[m].stop().await?;
    c.keepers[s].start()?;
    let elected = c.wait_master_is(s, secs(30)).await;
    ensure!(
        elected.is_err(),
        "a standby behind by more than maxStandbyLag was elected"
    );
    c.pass();
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn timeline_fork() -> Result<()> {
    // TestTimelineFork (async).
    timeline_fork_scenario(false, false).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sync_standby_not_in_sync() -> Result<()> {
    // TestSyncStandbyNotInSync: a sync master restarted while its sync standby is down admits
    // only internal users until the standby is back in sync, so nobody reads a transaction that
    // was committed locally but never acknowledged.
    let (mut c, m, s) = two_keepers_with_row(true, false).await?;
    let port = c.keepers[m].pg_port;
    c.proxy_exec(
        "do $$ begin if not exists (select from pg_roles where rolname = 'user01') then \
         create role user01 login password 'password'; end if; end $$; \
         grant select on table01 to user01",
        secs(30),
    )
    .await?;
    stolon_it::pg::connect_as(port, "user01", "password").await?;

    eprintln!("--- stop the sync standby keeper{s}; a write on the master blocks");
    c.keepers[s].stop().await?;
    let blocked = tokio::spawn(async move {
        let client = stolon_it::pg::connect(port).await?;
        client
            .simple_query("insert into table01 values (2, 'value2')")
            .await
            .map_err(anyhow::Error::from)
    });
    tokio::time::sleep(secs(3)).await;
    ensure!(
        !blocked.is_finished(),
        "the write did not block without a sync standby"
    );

    eprintln!("--- restart the master keeper");
    c.keepers[m].stop().await?;
    blocked.abort();
    c.keepers[m].start()?;
    c.wait_db_up(m, secs(60)).await?;
    // The blocked transaction was committed locally.
    c.wait_rows(m, "table01", 2, secs(30)).await?;
    let want =
        "no pg_hba.conf entry for host \"127.0.0.1\", user \"user01\", database \"postgres\"";
    stolon_it::wait_for(
        "user01 to be refused",
        secs(30),
        async || match stolon_it::pg::connect_as(port, "user01", "password").await {
            Ok(_) => anyhow::bail!("user01 could connect"),
            Err(e) if format!("{e:#}").contains(want) => Ok(()),
            Err(e) => anyhow::bail!("unexpected error: {e:#}"),
        },
    )
    .await?;

    eprintln!("--- the standby returns: user01 sees both rows");
    c.keepers[s].start()?;
    stolon_it::wait_for("user01 to read 2 rows", secs(90), async || {
        let client = stolon_it::pg::connect_as(port, "user01", "password").await?;
        let rows = stolon_it::pg::run_on(&client, "select count(*) from table01").await?;
        let n = rows
            .first()
            .and_then(|r| r.first().cloned().flatten())
            .unwrap_or_default();
        if n == "2" {
            Ok(())
        } else {
            anyhow::bail!("{n} rows")
        }
    })
    .await?;
    c.pass();
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn master_changed_address() -> Result<()> {
    // TestMasterChangedAddress: the master keeper restarts on another pg port; it stays master,
    // the standby follows the new address and the proxy routes to it.
    let (mut c, m, s) = two_keepers_with_row(false, false).await?;
    eprintln!("--- restart keeper{m} on a new pg port");
    c.keepers[m].stop().await?;
    c.keepers[m].set_pg_port(stolon_pg::testing::free_port());
    c.keepers[m].start()?;
    c.wait_db_up(m, secs(60)).await?;
    c.wait_master_is(m, secs(30)).await?;
    c.wait_db_role(m, true, secs(30)).await?;
    c.wait_right_master(m, secs(60)).await?;
    c.write_row(2, secs(30)).await?;
    c.wait_rows(s, "table01", 2, secs(90)).await?;
    c.pass();
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn disappeared_keeper_data() -> Result<()> {
    // TestDisappearedKeeperData: the master's data dir is deleted while its keeper is down; the
    // keeper refuses to re-create a master from nothing, the standby takes over, and the
    // returning keeper is re-provisioned as a standby.
    let (mut c, m, s) = two_keepers_with_row(false, false).await?;
    eprintln!("--- stop keeper{m}, delete its data dir, start it again");
    c.keepers[m].stop().await?;
    let pgdata = c.keepers[m].pgdata();
    std::fs::remove_dir_all(&pgdata)?;
    c.keepers[m].start()?;
    c.wait_master_is(s, secs(90)).await?;
    c.wait_db_role(s, true, secs(60)).await?;
    c.wait_rows(s, "table01", 1, secs(10)).await?;
    c.wait_right_master(s, secs(60)).await?;
    c.wait_rows(m, "table01", 1, secs(180)).await?;
    c.wait_db_role(m, false, secs(60)).await?;
    c.pass();
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sync_standby_not_in_sync_min0() -> Result<()> {
    // TestSyncStandbyNotInSync0: with minSynchronousStandbys 0 a master whose sync standby is
    // gone drops synchronous_standby_names and keeps accepting writes.
    let (mut c, m, s) = setup(
        2,
        json!({ "synchronousReplication": true, "minSynchronousStandbys": 0 }),
    )
    .await
    .map(|(c, m)| (c, m, other(m)))?;
    c.wait_sync_standbys(&[s], secs(60)).await?;
    c.wait_right_master(m, secs(60)).await?;
    c.create_table(secs(30)).await?;
    c.write_row(1, secs(30)).await?;
    c.keepers[s].stop().await?;
    let port = c.keepers[m].pg_port;
    stolon_it::wait_for("synchronous_standby_names empty", secs(60), async || {
        let v = stolon_it::pg::query_value(port, "show synchronous_standby_names").await?;
        if v.is_empty() {
            Ok(())
        } else {
            anyhow::bail!("synchronous_standby_names = {v}")
        }
    })
    .await?;
    c.write_row(2, secs(30)).await?;
    c.wait_rows(m, "table01", 2, secs(10)).await?;
    c.keepers[s].start()?;
    c.wait_rows(s, "table01", 2, secs(60)).await?;
    c.pass();
    Ok(())
}

/// UID of the DB assigned to keeper `i` now, if any.
async fn db_uid(c: &Cluster, i: usize) -> Result<Option<String>> {
    let cd = c.cluster_data().await?.context("no clusterdata")?;
    Ok(c.keeper_db(&cd, i).map(|d| d.uid.clone()))
}

/// Waits until clusterdata's keepers are exactly the given keepers (by index).
async fn wait_keepers_exactly(c: &Cluster, keepers: &[usize], limit: Duration) -> Result<()> {
    let want: BTreeSet<String> = keepers.iter().map(|&i| c.keepers[i].uid.clone()).collect();
    wait_for(
        &format!("keepers {want:?} in clusterdata"),
        limit,
        async || {
            let cd = c.cluster_data().await?.context("no clusterdata")?;
            let got: BTreeSet<String> = cd.keepers.keys().cloned().collect();
            if got == want {
                Ok(())
            } else {
                bail!("keepers {got:?}")
            }
        },
    )
    .await
}

/// Waits until the sentinel has declared keeper `i` unhealthy.
async fn wait_keeper_unhealthy(c: &Cluster, i: usize, limit: Duration) -> Result<()> {
    let uid = c.keepers[i].uid.clone();
    wait_for(
        &format!("keeper{i} declared unhealthy"),
        limit,
        async || {
            let cd = c.cluster_data().await?.context("no clusterdata")?;
            match cd.keepers.get(&uid) {
                Some(k) if k.status.healthy => bail!("still healthy"),
                _ => Ok(()),
            }
        },
    )
    .await
}

/// Waits until clusterdata shows keeper `i`'s DB healthy and converged.
async fn wait_db_healthy(c: &Cluster, i: usize, limit: Duration) -> Result<()> {
    wait_for(&format!("keeper{i}'s db healthy"), limit, async || {
        let cd = c.cluster_data().await?.context("no clusterdata")?;
        let db = c.keeper_db(&cd, i).context("no db")?;
        if db.status.healthy && db.status.current_generation == db.generation {
            Ok(())
        } else {
            bail!(
                "healthy {}, generation {}/{}",
                db.status.healthy,
                db.status.current_generation,
                db.generation
            )
        }
    })
    .await
}

/// Fails if `bad` ever returns `Ok(reason)` during `period` (checked every 500 ms): for the
/// "must not happen" assertions.
async fn ensure_never(
    what: &str,
    period: Duration,
    mut bad: impl AsyncFnMut() -> Result<Option<String>>,
) -> Result<()> {
    let deadline = Instant::now() + period;
    while Instant::now() < deadline {
        if let Ok(Some(reason)) = bad().await {
            bail!("{what}: {reason}");
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    Ok(())
}

/// Whether keeper `i` is the master in clusterdata or its postgres is a primary.
async fn is_master_anywhere(c: &Cluster, i: usize) -> Result<Option<String>> {
    if let Some(cd) = c.cluster_data().await?
        && let Ok(m) = c.master_of(&cd)
        && m == i
    {
        return Ok(Some(format!("keeper{i} is the master in clusterdata")));
    }
    let port = c.keepers[i].pg_port;
    if let Ok(v) = stolon_it::pg::query_value(port, "select pg_is_in_recovery()").await
        && v == "f"
    {
        return Ok(Some(format!("keeper{i}'s postgres is a primary")));
    }
    Ok(None)
}

// ------------------------------------------------------------------------ failover failed

/// TestFailoverFailed(SyncRepl): the standby is elected but dies before promoting; the old
/// master comes back. Async: it is elected again. Sync: it is not (it is not a synchronous
/// standby of the elected master), so no master is usable.
///
/// Our keeper reacts to the clusterdata change at once (store watch), so "stop the standby
/// before it reads the new clusterdata" as Stolon's test does would always lose the race.
/// Instead, once the master keeper is stopped, the standby keeper is frozen (SIGSTOP, its
/// postgres keeps running) and the master force-failed (`stolonctl failkeeper`) so the
/// sentinel elects the frozen standby at its next check, within the `failInterval` the
/// standby's last info stays valid; then the frozen keeper and its postgres are killed, so it
/// never promotes.
async fn failover_failed_scenario(sync: bool) -> Result<()> {
    // failInterval 10s: the frozen standby stays electable for 10 s after its last report,
    // room enough for the election on a loaded machine.
    let (mut c, m, s) = two_keepers_with_spec(json!({
        "synchronousReplication": sync,
        "failInterval": "10s",
    }))
    .await?;
    eprintln!("--- stop the master keeper{m}, freeze the standby keeper{s}, force-fail the master");
    c.keepers[m].stop().await?;
    c.keepers[s].proc.pause()?;
    let master_uid = c.keepers[m].uid.clone();
    c.stolonctl_ok(&["failkeeper", &master_uid]).await?;
    // The frozen standby is failed 10 s (failInterval) after its last report: the election
    // must come before that.
    c.wait_master_is(s, secs(30)).await?;
    let in_recovery =
        stolon_it::pg::query_value(c.keepers[s].pg_port, "select pg_is_in_recovery()").await?;
    ensure!(in_recovery == "t", "the frozen standby was promoted");
    eprintln!("--- kill the elected (frozen, never promoted) standby keeper{s} and its postgres");
    c.keepers[s].kill_with_postgres()?;

    eprintln!("--- the old master keeper{m} returns");
    c.keepers[m].start()?;
    if sync {
        ensure_never(
            "the old master, not a synchronous standby, must not be re-elected",
            secs(30),
            async || is_master_anywhere(&c, m).await,
        )
        .await?;
        // The elected master is still the dead standby.
        c.wait_master_is(s, secs(5)).await?;
    } else {
        c.wait_master_is(m, secs(60)).await?;
        c.wait_db_role(m, true, secs(60)).await?;
        c.wait_right_master(m, secs(60)).await?;
        c.wait_rows(m, "table01", 1, secs(10)).await?;
        c.write_row(2, secs(30)).await?;
        c.wait_rows(m, "table01", 2, secs(10)).await?;
    }
    c.pass();
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failover_failed() -> Result<()> {
    // TestFailoverFailed: async, the old master is re-elected when it comes back.
    failover_failed_scenario(false).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failover_failed_sync_repl() -> Result<()> {
    // TestFailoverFailedSyncRepl: sync, the old master must not be re-elected.
    failover_failed_scenario(true).await
}

// ------------------------------------------------------------------------ keeper removal

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keeper_removal() -> Result<()> {
    // TestKeeperRemoval: dead keepers without a DB are removed after deadKeeperRemovalInterval,
    // keepers with a DB never are.
    let (mut c, m) = setup(
        2,
        json!({ "deadKeeperRemovalInterval": "10s", "maxStandbysPerSender": 1 }),
    )
    .await?;
    let s1 = other(m);
    c.create_table(secs(30)).await?;
    c.write_row(1, secs(30)).await?;
    c.wait_rows(s1, "table01", 1, secs(60)).await?;

    eprintln!("--- an extra keeper joins: no DB for it (maxStandbysPerSender 1)");
    let s2 = c.add_keeper()?;
    wait_keepers_exactly(&c, &[m, s1, s2], secs(30)).await?;
    ensure!(db_uid(&c, s2).await?.is_none(), "keeper{s2} got a db");

    eprintln!("--- stop the extra keeper{s2}: removed as dead without a DB");
    c.keepers[s2].stop().await?;
    wait_keepers_exactly(&c, &[m, s1], secs(60)).await?;

    eprintln!("--- stop the standby keeper{s1} and master keeper{m}; they have DBs: kept");
    // The standby first, and declared failed before the master stops: otherwise the sentinel
    // may see the master failed while the standby's last info is still within failInterval,
    // and elect it.
    c.keepers[s1].stop().await?;
    wait_keeper_unhealthy(&c, s1, secs(30)).await?;
    c.keepers[m].stop().await?;
    // Longer than deadKeeperRemovalInterval (10s).
    tokio::time::sleep(secs(15)).await;
    wait_keepers_exactly(&c, &[m, s1], secs(5)).await?;

    eprintln!("--- start the master keeper{m} and the extra keeper{s2}");
    c.keepers[m].start()?;
    c.keepers[s2].start()?;
    c.wait_master_is(m, secs(30)).await?;
    c.wait_db_up(m, secs(60)).await?;
    c.wait_right_master(m, secs(60)).await?;
    c.write_row(2, secs(30)).await?;
    // The extra keeper is re-added and gets a new standby DB (standby1 is dead).
    c.wait_rows(s2, "table01", 2, secs(120)).await?;
    c.wait_db_role(s2, false, secs(30)).await?;
    // standby1's DB is dropped (one good standby is enough), then standby1 itself.
    wait_keepers_exactly(&c, &[m, s2], secs(60)).await?;
    c.pass();
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keeper_removal_stolon_ctl_sync_repl() -> Result<()> {
    // TestKeeperRemovalStolonCtlSyncRepl: like keeper_removal_stolonctl (ha.rs) with sync
    // replication; both standbys are synchronous first.
    let (mut c, m) = setup(
        3,
        json!({ "synchronousReplication": true, "maxSynchronousStandbys": 3 }),
    )
    .await?;
    let s: Vec<usize> = (0..3).filter(|&i| i != m).collect();
    let (s0, s1) = (s[0], s[1]);
    c.wait_sync_standbys(&[s0, s1], secs(60)).await?;
    c.wait_right_master(m, secs(60)).await?;
    c.create_table(secs(30)).await?;
    c.write_row(1, secs(30)).await?;
    c.wait_rows(m, "table01", 1, secs(10)).await?;
    c.wait_rows(s0, "table01", 1, secs(60)).await?;

    let master_uid = c.keepers[m].uid.clone();
    let out = c.stolonctl(&["removekeeper", &master_uid]).await?;
    ensure!(
        !out.status.success(),
        "removekeeper of the master must fail; stdout: {}",
        String::from_utf8_lossy(&out.stdout)
    );
    let old_db = db_uid(&c, s0).await?;

    eprintln!("--- stop keeper{s0} and remove it");
    c.keepers[s0].stop().await?;
    let uid = c.keepers[s0].uid.clone();
    c.stolonctl_ok(&["removekeeper", &uid]).await?;
    let cd = c.cluster_data().await?.context("no clusterdata")?;
    ensure!(cd.keepers.len() == 2, "keepers {:?}", cd.keepers.keys());
    ensure!(cd.dbs.len() == 2, "dbs {:?}", cd.dbs.keys());

    eprintln!("--- keeper{s0} rejoins with the same uid and a new db");
    c.keepers[s0].start()?;
    c.wait_keeper_count(3, secs(60)).await?;
    c.wait_rows(s0, "table01", 1, secs(120)).await?;
    let new_db = db_uid(&c, s0).await?;
    ensure!(
        new_db.is_some() && new_db != old_db,
        "db {old_db:?} -> {new_db:?}"
    );
    // Writes go on (the removed DB no longer blocks commits) and reach the new standby.
    c.write_row(2, secs(60)).await?;
    c.wait_rows(s0, "table01", 2, secs(60)).await?;
    c.pass();
    Ok(())
}

// ------------------------------------------------------------------------ standby can't sync

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn standby_cant_sync() -> Result<()> {
    // TestStandbyCantSync: standby0 is down while the WAL it needs is recycled; after a
    // failover to standby1 the sentinel sees standby0 cannot sync and gives it a new DB (full
    // resync).
    let (mut c, m) = setup(
        3,
        json!({ "pgParameters": { "max_wal_size": "40MB", "min_wal_size": "40MB" } }),
    )
    .await?;
    let s: Vec<usize> = (0..3).filter(|&i| i != m).collect();
    let (s0, s1) = (s[0], s[1]);
    c.wait_right_master(m, secs(60)).await?;
    c.create_table(secs(30)).await?;
    c.write_row(1, secs(30)).await?;
    c.wait_rows(s0, "table01", 1, secs(60)).await?;
    c.wait_rows(s1, "table01", 1, secs(60)).await?;
    let old_db = db_uid(&c, s0).await?.context("standby0 has no db")?;

    eprintln!("--- stop standby0 (keeper{s0}); switch WAL 10 times; checkpoint");
    c.keepers[s0].stop().await?;
    let mport = c.keepers[m].pg_port;
    let client = stolon_it::pg::connect(mport).await?;
    stolon_it::pg::run_on(
        &client,
        "drop table if exists switchwal; create table switchwal (id int primary key)",
    )
    .await?;
    for i in 0..10 {
        stolon_it::pg::run_on(
            &client,
            &format!("insert into switchwal values ({i}); select pg_switch_wal()"),
        )
        .await?;
    }
    stolon_it::pg::run_on(&client, "drop table switchwal; checkpoint").await?;
    let lsn = stolon_it::pg::run_on(&client, "select pg_current_wal_lsn()::text")
        .await?
        .first()
        .and_then(|r| r.first().cloned().flatten())
        .context("no lsn")?;
    drop(client);
    // standby1 replays the master's checkpoint, so its restartpoint can drop the old WAL.
    let s1port = c.keepers[s1].pg_port;
    wait_for("standby1 to replay the checkpoint", secs(60), async || {
        let v = stolon_it::pg::query_value(
            s1port,
            &format!("select pg_last_wal_replay_lsn() >= '{lsn}'::pg_lsn"),
        )
        .await?;
        if v == "t" {
            Ok(())
        } else {
            bail!("not replayed yet")
        }
    })
    .await?;
    stolon_it::pg::exec(s1port, "checkpoint").await?;

    eprintln!("--- stop the master keeper{m}: standby1 (keeper{s1}) takes over");
    c.keepers[m].stop().await?;
    c.wait_master_is(s1, secs(60)).await?;
    c.wait_db_role(s1, true, secs(60)).await?;

    eprintln!("--- start standby0: it cannot sync and is recreated");
    c.keepers[s0].start()?;
    c.wait_right_master(s1, secs(60)).await?;
    c.write_row(2, secs(30)).await?;
    c.wait_rows(s0, "table01", 2, secs(180)).await?;
    let new_db = db_uid(&c, s0).await?;
    ensure!(
        new_db.as_deref().is_some_and(|d| d != old_db),
        "standby0's db should have been replaced: {old_db} -> {new_db:?}"
    );
    c.wait_db_role(s0, false, secs(30)).await?;
    c.pass();
    Ok(())
}

// ------------------------------------------------------------------------ timeline fork

/// TestTimelineFork variants (Stolon's steps: 2 keepers, then a third): standby0 misses row 2,
/// the master and standby1 stop, standby0 starts alone. Async: it is elected on a new
/// timeline though behind, and standby1 (ahead on the old timeline) is resynced. Sync: it is
/// not a synchronous standby anymore, so it must not be elected.
async fn timeline_fork_scenario(sync: bool, pgrewind: bool) -> Result<()> {
    // maxStandbyLag 1 MiB (the default) rather than the suite's 50 KiB: standby0 misses only
    // row 2, but the full-page images the master writes after a checkpoint can put it more than
    // 50 KiB behind, and then (correctly) it is never elected.
    let (mut c, m, s0) = two_keepers_with_spec(json!({
        "synchronousReplication": sync,
        "usePgrewind": pgrewind,
        "maxStandbyLag": 1048576,
    }))
    .await?;
    eprintln!("--- standby1 joins");
    let s1 = c.add_keeper()?;
    c.wait_rows(s1, "table01", 1, secs(120)).await?;

    eprintln!("--- stop standby0 (keeper{s0}); row 2 reaches standby1 (keeper{s1}) only");
    c.keepers[s0].stop().await?;
    // With sync replication this blocks until standby1 replaces standby0 as sync standby.
    c.write_row(2, secs(60)).await?;
    c.wait_rows(s1, "table01", 2, secs(60)).await?;
    if sync {
        c.wait_sync_standbys(&[s1], secs(60)).await?;
    }
    // Let the sentinel record the master's position before it goes.
    c.wait_synced_xlogpos(&[m, s1], secs(60)).await?;

    eprintln!("--- stop standby1 and the master, start standby0");
    // Standby1 first, and declared failed before the master stops: otherwise the sentinel may
    // see the master failed while standby1's last info is still within failInterval, and elect
    // it.
    c.keepers[s1].stop().await?;
    wait_keeper_unhealthy(&c, s1, secs(30)).await?;
    c.keepers[m].stop().await?;
    c.keepers[s0].start()?;
    c.wait_db_up(s0, secs(60)).await?;
    if sync {
        // standby0 is healthy and converged as far as the sentinel knows...
        wait_db_healthy(&c, s0, secs(60)).await?;
        // ...but not a synchronous standby.
        ensure_never(
            "standby0, no longer a synchronous standby, must not be elected",
            secs(20),
            async || is_master_anywhere(&c, s0).await,
        )
        .await?;
        c.pass();
        return Ok(());
    }
    c.wait_master_is(s0, secs(90)).await?;
    c.wait_db_role(s0, true, secs(60)).await?;
    c.wait_right_master(s0, secs(60)).await?;
    c.write_row(3, secs(30)).await?;
    c.write_row(4, secs(30)).await?;
    c.wait_rows(s0, "table01", 3, secs(10)).await?;

    eprintln!("--- standby1 (ahead on the old timeline) returns and is resynced");
    c.keepers[s1].start()?;
    c.wait_rows(s1, "table01", 3, secs(180)).await?;
    c.wait_db_role(s1, false, secs(60)).await?;
    c.write_row(5, secs(30)).await?;
    c.wait_rows(s1, "table01", 4, secs(60)).await?;
    c.pass();
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn timeline_fork_sync_repl() -> Result<()> {
    // TestTimelineForkSyncRepl: the behind standby is not elected with sync replication.
    timeline_fork_scenario(true, false).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn timeline_fork_pgrewind() -> Result<()> {
    // TestTimelineForkPgrewind: as TestTimelineFork with usePgrewind (pg_rewind may fail, then
    // a full resync).
    timeline_fork_scenario(false, true).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn timeline_fork_sync_repl_pgrewind() -> Result<()> {
    // TestTimelineForkSyncReplPgrewind.
    timeline_fork_scenario(true, true).await
}

// ------------------------------------------------------------------------ min sync standbys 0

fn sync0_spec(pgrewind: bool) -> Value {
    json!({
        "synchronousReplication": true,
        "minSynchronousStandbys": 0,
        "usePgrewind": pgrewind,
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn old_master_restart_sync_repl0() -> Result<()> {
    old_master_restart_sync0(false).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn old_master_restart_sync_repl0_pgrewind() -> Result<()> {
    old_master_restart_sync0(true).await
}

/// TestOldMasterRestartSyncRepl0(Pgrewind): sync with minSynchronousStandbys 0 and no third
/// keeper: writes on the new master do not block; the old master returns as its standby.
async fn old_master_restart_sync0(pgrewind: bool) -> Result<()> {
    let (mut c, m, s) = two_keepers_with_spec(sync0_spec(pgrewind)).await?;
    eprintln!("--- stop the master keeper{m}");
    c.keepers[m].stop().await?;
    c.wait_master_is(s, secs(60)).await?;
    c.wait_db_role(s, true, secs(60)).await?;
    c.wait_rows(s, "table01", 1, secs(10)).await?;
    c.wait_right_master(s, secs(60)).await?;
    // Without any standby: must not block (bounded, with retries over the 10 s statement
    // timeout while the sentinel drops the dead synchronous standby).
    c.write_row(2, secs(60)).await?;
    c.wait_rows(s, "table01", 2, secs(10)).await?;

    eprintln!("--- the old master keeper{m} returns as a standby");
    c.keepers[m].start()?;
    c.wait_rows(m, "table01", 2, secs(120)).await?;
    c.wait_db_role(m, false, secs(60)).await?;
    c.wait_right_master(s, secs(30)).await?;
    c.pass();
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn partition1_sync_repl0() -> Result<()> {
    partition1_sync0(false).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn partition1_sync_repl0_pgrewind() -> Result<()> {
    partition1_sync0(true).await
}

/// TestPartition1SyncRepl0(Pgrewind): the master keeper and its postgres are frozen (SIGSTOP;
/// there is no netem); with minSynchronousStandbys 0 and no third keeper the new master accepts
/// writes; once resumed the old master becomes its standby.
async fn partition1_sync0(pgrewind: bool) -> Result<()> {
    let (c, m, s) = two_keepers_with_spec(sync0_spec(pgrewind)).await?;
    eprintln!("--- SIGSTOP keeper{m} and its postgres");
    c.keepers[m].pause_with_postgres()?;
    let res = async {
        c.wait_master_is(s, secs(60)).await?;
        c.wait_db_role(s, true, secs(60)).await?;
        c.wait_rows(s, "table01", 1, secs(10)).await?;
        c.wait_right_master(s, secs(60)).await?;
        c.write_row(2, secs(60)).await
    }
    .await;
    eprintln!("--- SIGCONT keeper{m} and its postgres");
    c.keepers[m].resume_with_postgres()?;
    res?;
    c.wait_rows(m, "table01", 2, secs(120)).await?;
    c.wait_db_role(m, false, secs(60)).await?;
    // The proxy never routed back to the old master.
    c.wait_right_master(s, secs(10)).await?;
    c.pass();
    Ok(())
}

/// One HTTP request to a keeper's metrics/health listener: (status code, body).
fn http(port: u16, method: &str, target: &str) -> Result<(u16, String)> {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port))?;
    s.set_read_timeout(Some(secs(10)))?;
    s.write_all(
        format!("{method} {target} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
            .as_bytes(),
    )?;
    let mut out = String::new();
    s.read_to_string(&mut out)?;
    let code = out
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .with_context(|| format!("no status line in {out:?}"))?;
    let body = out.split_once("\r\n\r\n").map(|(_, b)| b).unwrap_or("");
    Ok((code, body.trim().to_string()))
}

/// The codes of /health, /primary, /replica, /read-only on keeper port `port`.
fn health_codes(port: u16) -> Result<[u16; 4]> {
    let mut codes = [0; 4];
    for (c, t) in codes
        .iter_mut()
        .zip(["/health", "/primary", "/replica", "/read-only"])
    {
        *c = http(port, "GET", t)?.0;
    }
    Ok(codes)
}

async fn wait_health(port: u16, want: [u16; 4], what: &str) -> Result<()> {
    wait_for(what, secs(120), async || {
        let got = health_codes(port)?;
        ensure!(
            got == want,
            "/health, /primary, /replica, /read-only: {got:?}"
        );
        Ok(())
    })
    .await
}

/// The keepers' HTTP health checks (Patroni-style, on `--metrics-listen-address`) follow the
/// cluster through a failover: the primary answers /primary, the standby /replica; after the
/// master's keeper stops, the new master answers /primary, and the old one, back as a standby,
/// /replica.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_endpoints_follow_a_failover() -> Result<()> {
    let mut c = Cluster::start(ClusterConfig::new(test_spec(json!({})), 1, 0, 1)).await?;
    let mut ports = Vec::new();
    for _ in 0..2 {
        let port = stolon_pg::testing::free_port();
        c.add_keeper_with(KeeperOpts {
            extra_args: vec![format!("--metrics-listen-address=127.0.0.1:{port}")],
            ..Default::default()
        })?;
        ports.push(port);
    }
    let m = c.wait_ready(secs(180)).await?;
    let s = other(m);
    c.create_table(secs(30)).await?;
    c.write_row(1, secs(30)).await?;
    c.wait_rows(s, "table01", 1, secs(60)).await?;
    wait_health(ports[m], [200, 200, 503, 200], "master's health codes").await?;
    wait_health(ports[s], [200, 503, 200, 200], "standby's health codes").await?;

    let (code, body) = http(ports[s], "GET", "/replica?lag=1GB")?;
    ensure!(code == 200, "{code} {body}");
    let v: Value = serde_json::from_str(&body).context("json body")?;
    ensure!(
        v["role"] == "standby" && v["assigned_role"] == "standby" && v["lag"].is_u64(),
        "{v}"
    );
    let (code, body) = http(ports[m], "GET", "/replica")?;
    let v: Value = serde_json::from_str(&body).context("json body")?;
    ensure!(
        code == 503 && v["reason"] == "postgres is not in recovery",
        "{code} {v}"
    );
    let (code, body) = http(ports[s], "GET", "/replica?lag=ten")?;
    ensure!(
        code == 400 && body.contains("is not a size"),
        "{code} {body}"
    );
    let (code, body) = http(ports[m], "HEAD", "/primary")?;
    ensure!(code == 200 && body.is_empty(), "HEAD: {code} {body:?}");
    let (code, body) = http(ports[m], "OPTIONS", "/primary")?;
    ensure!(code == 200 && body.contains("\"ok\":true"), "{code} {body}");
    let (code, _) = http(ports[m], "GET", "/nothing")?;
    ensure!(code == 404);
    let (code, body) = http(ports[m], "GET", "/metrics")?;
    ensure!(
        code == 200 && body.contains("stolon_keeper_local_role"),
        "{code}"
    );

    eprintln!("--- stop the master keeper{m}");
    c.keepers[m].stop().await?;
    c.wait_master_is(s, secs(60)).await?;
    wait_health(ports[s], [200, 200, 503, 200], "new master's health codes").await?;
    eprintln!("--- keeper{m} returns as a standby");
    c.keepers[m].start()?;
    wait_health(ports[m], [200, 503, 200, 200], "old master's health codes").await?;
    c.wait_rows(m, "table01", 1, secs(60)).await?;
    c.pass();
    Ok(())
}
