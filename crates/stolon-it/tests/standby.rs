//! Standby clusters (stolon-behaviour.md §5.7, and the standby-cluster variants of §5.2): a
//! second stolon cluster replicating from the first one's primary, its failover, and its
//! promotion to a primary cluster.

use std::time::Duration;

use anyhow::Result;
use serde_json::json;
use stolon_it::{Cluster, ClusterConfig, pg, test_spec};

fn secs(n: u64) -> Duration {
    Duration::from_secs(n)
}

/// A primary cluster (one keeper) with table01 and row 1, and a standby cluster of `keepers`
/// keepers following it.
async fn primary_and_standby(keepers: usize) -> Result<(Cluster, Cluster, usize)> {
    let p = Cluster::start(ClusterConfig::new(test_spec(json!({})), 1, 1, 1)).await?;
    p.wait_ready(secs(120)).await?;
    p.wait_right_master(0, secs(60)).await?;
    p.create_table(secs(30)).await?;
    p.write_row(1, secs(30)).await?;

    let pgpass = p.write_secret(
        "pgpass",
        &format!("*:*:*:{}:{}\n", pg::REPL_USER, pg::REPL_PASSWORD),
    )?;
    let port = p.keepers[0].pg_port;
    let spec = test_spec(json!({
        "initMode": "pitr",
        "role": "standby",
        "pitrConfig": {
            "dataRestoreCommand": format!(
                "PGPASSFILE={} pg_basebackup -D %d -h 127.0.0.1 -p {port} -U {}",
                pgpass.display(),
                pg::REPL_USER
            ),
        },
        "standbyConfig": {
            "standbySettings": {
                "primaryConninfo": format!(
                    "sslmode=disable host=127.0.0.1 port={port} user={} password={}",
                    pg::REPL_USER,
                    pg::REPL_PASSWORD
                ),
            },
        },
    }));
    let s = Cluster::start(ClusterConfig::new(spec, 1, keepers, 1)).await?;
    let sm = s.wait_ready(secs(180)).await?;
    Ok((p, s, sm))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn standby_cluster_init_and_promote() -> Result<()> {
    // TestInitStandbyCluster + TestPromoteStandbyCluster.
    let (p, s, sm) = primary_and_standby(1).await?;
    s.wait_db_role(sm, false, secs(30)).await?;
    s.wait_rows(sm, "table01", 1, secs(60)).await?;
    // Reads through the standby cluster's proxy reach its (read-only) master.
    let n = s
        .proxy_value("select count(*) from table01", secs(60))
        .await?;
    anyhow::ensure!(n == "1", "{n} rows through the standby cluster's proxy");
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
    let (p, mut s, sm) = primary_and_standby(2).await?;
    let other = if sm == 0 { 1 } else { 0 };
    s.wait_rows(other, "table01", 1, secs(60)).await?;
    s.wait_synced_xlogpos(&[sm, other], secs(60)).await?;
    eprintln!("--- stop the standby cluster's master keeper{sm}");
    s.keepers[sm].stop().await?;
    s.wait_master_is(other, secs(60)).await?;
    p.write_row(2, secs(30)).await?;
    s.wait_rows(other, "table01", 2, secs(60)).await?;
    s.wait_db_role(other, false, secs(10)).await?;
    p.pass();
    s.pass();
    Ok(())
}
