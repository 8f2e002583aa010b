//! High availability scenarios (stolon-behaviour.md §5.2), checked through the proxy as well
//! as on the keepers: failover (async and sync), forced failover, the old primary returning
//! (with and without pg_rewind), a frozen primary (SIGSTOP), `maxStandbysPerSender`, keeper
//! removal with stolonctl.

use std::time::Duration;

use anyhow::{Result, ensure};
use serde_json::{Value, json};
use stolon_it::{Cluster, ClusterConfig, test_spec};

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
    let (c, m) = setup(2, sync_spec(sync, pgrewind)).await?;
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
    partition(false).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn partition_frozen_master_sync_repl() -> Result<()> {
    // TestPartition1SyncReplPgrewind: a third keeper becomes the new master's sync standby.
    partition(true).await
}

/// TestPartition1: SIGSTOP the master keeper and its whole postgres (postmaster and backends).
async fn partition(sync: bool) -> Result<()> {
    let (mut c, m, s) = two_keepers_with_row(sync, true).await?;
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
    // TestTimelineFork (async): standby0 misses row 2, the others stop, standby0 is elected on a
    // new timeline; standby1, ahead on the old timeline, must be fully resynced.
    let (mut c, m) = setup(3, json!({})).await?;
    let s: Vec<usize> = (0..3).filter(|&i| i != m).collect();
    let (s0, s1) = (s[0], s[1]);
    c.wait_right_master(m, secs(60)).await?;
    c.create_table(secs(30)).await?;
    c.write_row(1, secs(30)).await?;
    c.wait_rows(s0, "table01", 1, secs(60)).await?;
    c.wait_rows(s1, "table01", 1, secs(60)).await?;
    c.wait_synced_xlogpos(&[m, s0, s1], secs(60)).await?;

    eprintln!("--- stop standby0 (keeper{s0}); row 2 reaches standby1 (keeper{s1}) only");
    c.keepers[s0].stop().await?;
    c.write_row(2, secs(30)).await?;
    c.wait_rows(s1, "table01", 2, secs(60)).await?;
    // Let the sentinel record the master's position before it goes.
    c.wait_synced_xlogpos(&[m, s1], secs(60)).await?;

    eprintln!("--- stop the master and standby1, start standby0");
    c.keepers[m].stop().await?;
    c.keepers[s1].stop().await?;
    c.keepers[s0].start()?;
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
