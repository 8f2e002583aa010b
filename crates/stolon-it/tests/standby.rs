//! Standby clusters (docs/architecture.md §11: Stolon's standby-cluster scenarios, and the standby-cluster variants of its high-availability ones): a
//! second stolon cluster replicating from the first one's primary, its failover and its
//! promotion to a primary cluster; a standby cluster fed only through archive recovery and then
//! promoted; failover with synchronous replication requested (ignored in a standby cluster) and
//! with too much lag; the old standby-cluster master coming back; the master changing its
//! address; a forced failover.

use std::path::Path;
use std::time::Duration;

use anyhow::{Context, Result, bail, ensure};
use serde_json::{Value, json};
use stolon_it::{Cluster, ClusterConfig, pg, test_spec, wait_for};
use stolon_pg::testing::TestDir;

fn secs(n: u64) -> Duration {
    Duration::from_secs(n)
}

fn other(m: usize) -> usize {
    if m == 0 { 1 } else { 0 }
}

/// A primary cluster (one keeper, `primary_extra` merged into its spec) with table01 and row 1.
async fn primary(primary_extra: Value) -> Result<Cluster> {
    let p = Cluster::start(ClusterConfig::new(test_spec(primary_extra), 1, 1, 1)).await?;
    p.wait_ready(secs(120)).await?;
    p.wait_right_master(0, secs(60)).await?;
    p.create_table(secs(30)).await?;
    p.write_row(1, secs(30)).await?;
    Ok(p)
}

/// The `initMode: pitr, role: standby` spec of a standby cluster of `p` whose data comes from
/// `pg_basebackup` of `p`'s primary (with `basebackup_args`), plus `extra` merged on top.
fn standby_spec(p: &Cluster, basebackup_args: &str, extra: Value) -> Result<Value> {
    let pgpass = p.write_secret(
        "pgpass",
        &format!("*:*:*:{}:{}\n", pg::REPL_USER, pg::REPL_PASSWORD),
    )?;
    let port = p.keepers[0].pg_port;
    let mut spec = test_spec(json!({
        "initMode": "pitr",
        "role": "standby",
        "pitrConfig": {
            "dataRestoreCommand": format!(
                "PGPASSFILE={} pg_basebackup -D %d -h 127.0.0.1 -p {port} -U {}{basebackup_args}",
                pgpass.display(),
                pg::REPL_USER
            ),
        },
    }));
    stolon_it::cluster::merge(&mut spec, extra);
    Ok(spec)
}

/// `primaryConninfo` standby settings pointing at `p`'s primary.
fn streaming_config(p: &Cluster) -> Value {
    json!({
        "standbySettings": {
            "primaryConninfo": format!(
                "sslmode=disable host=127.0.0.1 port={} user={} password={}",
                p.keepers[0].pg_port,
                pg::REPL_USER,
                pg::REPL_PASSWORD
            ),
        },
    })
}

/// A primary cluster with table01 and row 1, and a standby cluster of `keepers` keepers
/// streaming from it (`extra` merged into the standby cluster's spec). Returns the standby
/// cluster's master index; when `keepers > 1` its standby has row 1 and is caught up.
async fn primary_and_standby(keepers: usize, extra: Value) -> Result<(Cluster, Cluster, usize)> {
    let p = primary(json!({})).await?;
    let mut extra = extra;
    stolon_it::cluster::merge(&mut extra, json!({ "standbyConfig": streaming_config(&p) }));
    let spec = standby_spec(&p, "", extra)?;
    let s = Cluster::start(ClusterConfig::new(spec, 1, keepers, 1)).await?;
    let sm = s.wait_ready(secs(180)).await?;
    s.wait_rows(sm, "table01", 1, secs(60)).await?;
    for i in (0..keepers).filter(|&i| i != sm) {
        s.wait_rows(i, "table01", 1, secs(60)).await?;
        s.wait_db_role(i, false, secs(30)).await?;
    }
    if keepers > 1 {
        let all: Vec<usize> = (0..keepers).collect();
        s.wait_synced_xlogpos(&all, secs(60)).await?;
    }
    Ok((p, s, sm))
}

/// `show <name>` on keeper `i`.
async fn show(c: &Cluster, i: usize, name: &str) -> Result<String> {
    pg::query_value(c.keepers[i].pg_port, &format!("show {name}")).await
}

/// Waits until keeper `i` of `c` is in recovery streaming from `port` (its `primary_conninfo`
/// names that port), as Stolon's `WaitDBRole` for a standby cluster's master.
async fn wait_follows(c: &Cluster, i: usize, port: u16, limit: Duration) -> Result<()> {
    let want = format!("port={port}");
    wait_for(
        &format!("keeper{i} following port {port}"),
        limit,
        async || {
            let info = show(c, i, "primary_conninfo").await?;
            let in_recovery =
                pg::query_value(c.keepers[i].pg_port, "select pg_is_in_recovery()").await?;
            if in_recovery == "t" && info.split_whitespace().any(|kv| kv == want) {
                Ok(())
            } else {
                bail!("in recovery {in_recovery}, primary_conninfo {info:?}")
            }
        },
    )
    .await
}

/// The JSON of the DB spec of keeper `i` in `c`'s clusterdata.
async fn db_spec(c: &Cluster, i: usize) -> Result<Value> {
    let cd = c.cluster_data().await?.context("clusterdata")?;
    let db = c.keeper_db(&cd, i).context("no db for the keeper")?;
    Ok(serde_json::to_value(db.spec.as_ref().context("db spec")?)?)
}

fn path(p: &Path) -> String {
    p.display().to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn standby_cluster_init_and_promote() -> Result<()> {
    // TestInitStandbyCluster + TestPromoteStandbyCluster.
    let (p, s, sm) = primary_and_standby(1, json!({})).await?;
    s.wait_db_role(sm, false, secs(30)).await?;
    // Reads through the standby cluster's proxy reach its (read-only) master.
    let n = s
        .proxy_value("select count(*) from table01", secs(60))
        .await?;
    ensure!(n == "1", "{n} rows through the standby cluster's proxy");
    p.write_row(2, secs(30)).await?;
    s.wait_rows(sm, "table01", 2, secs(60)).await?;

    eprintln!("--- stolonctl promote");
    s.stolonctl_ok(&["promote", "-y"]).await?;
    s.wait_db_role(sm, true, secs(60)).await?;
    s.wait_right_master(sm, secs(60)).await?;
    s.write_row(3, secs(30)).await?;
    s.wait_rows(sm, "table01", 3, secs(10)).await?;
    p.pass();
    s.pass();
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn standby_cluster_failover() -> Result<()> {
    // TestFailoverStandbyCluster: the standby cluster's standby becomes its master, following
    // the primary cluster.
    let (p, mut s, sm) = primary_and_standby(2, json!({})).await?;
    let o = other(sm);
    eprintln!("--- stop the standby cluster's master keeper{sm}");
    s.keepers[sm].stop().await?;
    s.wait_master_is(o, secs(60)).await?;
    wait_follows(&s, o, p.keepers[0].pg_port, secs(60)).await?;
    p.write_row(2, secs(30)).await?;
    s.wait_rows(o, "table01", 2, secs(60)).await?;
    p.pass();
    s.pass();
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn promote_standby_cluster_archive_recovery() -> Result<()> {
    // TestPromoteStandbyClusterArchiveRecovery: the primary archives its WAL into a directory;
    // the standby cluster is made with `pg_basebackup -X stream` and then fed only through
    // `standbyConfig.archiveRecoverySettings.restoreCommand` (no primary_conninfo); promoted, it
    // becomes a writable primary.
    let archive = TestDir::new("stolon-it-archive-");
    let dir = archive.path().to_path_buf();
    let p = primary(json!({ "pgParameters": {
        "archive_mode": "on",
        "archive_command": format!("cp %p {}/%f", path(&dir)),
    }}))
    .await?;
    // As in Stolon's test, the restore command is given for the initial recovery (pitrConfig)
    // and for following the primary afterwards (standbyConfig).
    let restore = json!({ "restoreCommand": format!("cp {}/%f %p", path(&dir)) });
    let mut spec = standby_spec(
        &p,
        " -X stream",
        json!({ "standbyConfig": { "archiveRecoverySettings": restore.clone() } }),
    )?;
    spec["pitrConfig"]["archiveRecoverySettings"] = restore;
    let s = Cluster::start(ClusterConfig::new(spec, 1, 1, 1)).await?;
    let sm = s.wait_ready(secs(120)).await?;
    s.wait_db_role(sm, false, secs(30)).await?;
    s.wait_rows(sm, "table01", 1, secs(60)).await?;
    let info = show(&s, sm, "primary_conninfo").await?;
    ensure!(info.is_empty(), "primary_conninfo is set: {info:?}");
    let rc = show(&s, sm, "restore_command").await?;
    ensure!(rc.contains(&path(&dir)), "restore_command {rc:?}");

    eprintln!("--- row 2 and a WAL switch on the primary: replayed from the archive");
    p.write_row(2, secs(30)).await?;
    let seg = pg::query_value(
        p.keepers[0].pg_port,
        "select pg_walfile_name(pg_switch_wal())",
    )
    .await?;
    wait_for("the WAL segment archived", secs(60), async || {
        if dir.join(&seg).exists() {
            Ok(())
        } else {
            bail!("{seg} not in the archive")
        }
    })
    .await?;
    s.wait_rows(sm, "table01", 2, secs(60)).await?;

    eprintln!("--- stolonctl promote");
    s.stolonctl_ok(&["promote", "-y"]).await?;
    s.wait_db_role(sm, true, secs(60)).await?;
    s.wait_right_master(sm, secs(60)).await?;
    s.write_row(3, secs(30)).await?;
    s.wait_rows(sm, "table01", 3, secs(10)).await?;
    p.pass();
    s.pass();
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failover_sync_repl_standby_cluster() -> Result<()> {
    // TestFailoverSyncReplStandbyCluster: synchronousReplication is ignored in a standby
    // cluster (docs/architecture.md §6.7); its standby still takes over when the master keeper stops, and follows
    // the primary cluster.
    let (p, mut s, sm) = primary_and_standby(2, json!({ "synchronousReplication": true })).await?;
    let o = other(sm);
    let spec = db_spec(&s, sm).await?;
    ensure!(
        spec.get("synchronousReplication") != Some(&json!(true)),
        "synchronous replication on a standby cluster's master: {spec}"
    );
    ensure!(
        show(&s, sm, "synchronous_standby_names").await?.is_empty(),
        "synchronous_standby_names set on a standby cluster's master"
    );
    eprintln!("--- stop the standby cluster's master keeper{sm}");
    s.keepers[sm].stop().await?;
    s.wait_master_is(o, secs(60)).await?;
    wait_follows(&s, o, p.keepers[0].pg_port, secs(60)).await?;
    s.wait_rows(o, "table01", 1, secs(10)).await?;
    p.write_row(2, secs(30)).await?;
    s.wait_rows(o, "table01", 2, secs(60)).await?;
    p.pass();
    s.pass();
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failover_too_much_lag_standby_cluster() -> Result<()> {
    // TestFailoverTooMuchLagStandbyCluster: the standby cluster's standby is stopped, ~100 KiB
    // are written on the primary cluster (more than maxStandbyLag, 50 KiB) and reach the standby
    // cluster's master; then that master stops and the lagging standby restarts: it must not be
    // elected.
    let (p, mut s, sm) = primary_and_standby(2, json!({})).await?;
    let o = other(sm);
    eprintln!("--- stop the standby keeper{o}, write ~100 KiB on the primary");
    s.keepers[o].stop().await?;
    p.proxy_exec(
        "insert into table01 select g, repeat('x', 100) from generate_series(10, 1009) g \
         on conflict (id) do nothing",
        secs(30),
    )
    .await?;
    s.wait_rows(sm, "table01", 1001, secs(60)).await?;
    // Let the sentinel see the standby cluster master's new xLogPos (what it replayed).
    let lsn: u64 = pg::query_value(
        s.keepers[sm].pg_port,
        "select (pg_last_wal_replay_lsn() - '0/0')::bigint",
    )
    .await?
    .parse()?;
    wait_for(
        "the master's xLogPos in clusterdata",
        secs(30),
        async || {
            let cd = s.cluster_data().await?.context("clusterdata")?;
            let got = s.keeper_db(&cd, sm).context("master db")?.status.xlog_pos;
            let behind = s.keeper_db(&cd, o).context("standby db")?.status.xlog_pos;
            if got >= lsn && got.saturating_sub(behind) > 51200 {
                Ok(())
            } else {
                bail!("master xLogPos {got} (replayed {lsn}), standby {behind}")
            }
        },
    )
    .await?;
    eprintln!("--- stop the master keeper{sm}, start the lagging keeper{o}");
    s.keepers[sm].stop().await?;
    s.keepers[o].start()?;
    s.wait_db_up(o, secs(60)).await?;
    let elected = s.wait_master_is(o, secs(30)).await;
    ensure!(
        elected.is_err(),
        "a standby behind by more than maxStandbyLag was elected"
    );
    p.pass();
    s.pass();
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn old_master_restart_standby_cluster() -> Result<()> {
    // TestOldMasterRestartStandbyCluster: after a failover inside the standby cluster, the old
    // master keeper restarts and comes back as a standby of the new standby-cluster master.
    let (p, mut s, sm) = primary_and_standby(2, json!({})).await?;
    let o = other(sm);
    eprintln!("--- stop the standby cluster's master keeper{sm}");
    s.keepers[sm].stop().await?;
    s.wait_master_is(o, secs(60)).await?;
    wait_follows(&s, o, p.keepers[0].pg_port, secs(60)).await?;
    p.write_row(2, secs(30)).await?;
    s.wait_rows(o, "table01", 2, secs(60)).await?;

    eprintln!("--- restart the old master keeper{sm}");
    s.keepers[sm].start()?;
    wait_follows(&s, sm, s.keepers[o].pg_port, secs(120)).await?;
    s.wait_rows(sm, "table01", 2, secs(60)).await?;
    p.write_row(3, secs(30)).await?;
    s.wait_rows(sm, "table01", 3, secs(60)).await?;
    s.wait_master_is(o, secs(10)).await?;
    let spec = db_spec(&s, sm).await?;
    let follows = s
        .cluster_data()
        .await?
        .and_then(|cd| s.keeper_db(&cd, o).map(|d| d.uid.clone()))
        .context("new master db")?;
    ensure!(
        spec.pointer("/followConfig/dbuid") == Some(&json!(follows)),
        "old master's db spec {spec}"
    );
    p.pass();
    s.pass();
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn master_changed_address_standby_cluster() -> Result<()> {
    // TestMasterChangedAddressStandbyCluster: the standby cluster's master keeper restarts on
    // another pg port; it stays master (following the primary) and its standby follows the new
    // address.
    let (p, mut s, sm) = primary_and_standby(2, json!({})).await?;
    let o = other(sm);
    eprintln!("--- restart keeper{sm} on a new pg port");
    s.keepers[sm].stop().await?;
    s.keepers[sm].set_pg_port(stolon_pg::testing::free_port());
    s.keepers[sm].start()?;
    s.wait_db_up(sm, secs(60)).await?;
    s.wait_master_is(sm, secs(30)).await?;
    wait_follows(&s, sm, p.keepers[0].pg_port, secs(60)).await?;
    wait_follows(&s, o, s.keepers[sm].pg_port, secs(90)).await?;
    p.write_row(2, secs(30)).await?;
    s.wait_rows(o, "table01", 2, secs(60)).await?;
    p.pass();
    s.pass();
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn force_fail_standby_cluster() -> Result<()> {
    // TestForceFailStandbyCluster: `stolonctl failkeeper <master>` in a standby cluster: its
    // standby becomes the master, following the primary cluster.
    force_fail_in_standby_cluster(json!({})).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn force_fail_sync_repl_standby_cluster() -> Result<()> {
    // TestForceFailSyncReplStandbyCluster: the same with synchronousReplication, which a
    // standby cluster ignores.
    force_fail_in_standby_cluster(json!({ "synchronousReplication": true })).await
}

async fn force_fail_in_standby_cluster(extra: Value) -> Result<()> {
    let (p, s, sm) = primary_and_standby(2, extra).await?;
    let o = other(sm);
    eprintln!("--- stolonctl failkeeper keeper{sm}");
    s.stolonctl_ok(&["failkeeper", &s.keepers[sm].uid.clone()])
        .await?;
    s.wait_master_is(o, secs(60)).await?;
    wait_follows(&s, o, p.keepers[0].pg_port, secs(60)).await?;
    s.wait_rows(o, "table01", 1, secs(10)).await?;
    p.write_row(2, secs(30)).await?;
    s.wait_rows(o, "table01", 2, secs(60)).await?;
    p.pass();
    s.pass();
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn partition1_standby_cluster() -> Result<()> {
    // TestPartition1StandbyCluster: the standby cluster's master keeper and its postgres are
    // frozen (SIGSTOP; there is no netem). Its standby becomes the cluster master following the
    // primary cluster; once resumed, the old master follows the new one.
    let (p, s, sm) = primary_and_standby(2, json!({})).await?;
    let o = other(sm);
    eprintln!("--- SIGSTOP keeper{sm} and its postgres");
    s.keepers[sm].pause_with_postgres()?;
    let res = async {
        s.wait_master_is(o, secs(60)).await?;
        wait_follows(&s, o, p.keepers[0].pg_port, secs(60)).await?;
        p.write_row(2, secs(30)).await?;
        s.wait_rows(o, "table01", 2, secs(60)).await
    }
    .await;
    eprintln!("--- SIGCONT keeper{sm} and its postgres");
    s.keepers[sm].resume_with_postgres()?;
    res?;
    wait_follows(&s, sm, s.keepers[o].pg_port, secs(120)).await?;
    p.write_row(3, secs(30)).await?;
    s.wait_rows(sm, "table01", 3, secs(120)).await?;
    s.wait_master_is(o, secs(10)).await?;
    p.pass();
    s.pass();
    Ok(())
}

/// TestFailoverFailed(Sync)StandbyCluster: as `ha::failover_failed_scenario`, in a standby
/// cluster: the standby-cluster master keeper stops, its standby keeper is frozen and the master
/// force-failed so the frozen standby is elected; it is killed before it acts, and the old
/// master returns. A standby cluster ignores synchronousReplication, so in both variants the
/// old master is elected again and follows the primary cluster.
async fn failover_failed_in_standby_cluster(sync: bool) -> Result<()> {
    // maxStandbyLag 1 MiB: the frozen standby's last report may trail the master's by more
    // than the suite's 50 KiB (WAL from the primary cluster in between), and then it is never
    // elected.
    let (p, mut s, sm) = primary_and_standby(
        2,
        json!({
            "synchronousReplication": sync,
            "failInterval": "10s",
            "maxStandbyLag": 1048576,
        }),
    )
    .await?;
    let o = other(sm);
    eprintln!(
        "--- stop the master keeper{sm}, freeze the standby keeper{o}, force-fail the master"
    );
    s.keepers[sm].stop().await?;
    s.keepers[o].proc.pause()?;
    s.stolonctl_ok(&["failkeeper", &s.keepers[sm].uid.clone()])
        .await?;
    s.wait_master_is(o, secs(30)).await?;
    eprintln!("--- kill the elected (frozen) standby keeper{o} and its postgres");
    s.keepers[o].kill_with_postgres()?;
    eprintln!("--- the old master keeper{sm} returns");
    s.keepers[sm].start()?;
    s.wait_master_is(sm, secs(60)).await?;
    wait_follows(&s, sm, p.keepers[0].pg_port, secs(60)).await?;
    p.write_row(2, secs(30)).await?;
    s.wait_rows(sm, "table01", 2, secs(60)).await?;
    p.pass();
    s.pass();
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failover_failed_standby_cluster() -> Result<()> {
    failover_failed_in_standby_cluster(false).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failover_failed_sync_standby_cluster() -> Result<()> {
    failover_failed_in_standby_cluster(true).await
}
