//! Quorum commit against real PostgreSQL (docs/synchronous-replication.md): three keepers with
//! `quorumCommit`, `minSynchronousStandbys: 1`, `maxSynchronousStandbys: 2`, so the master
//! renders `ANY 1 (...)` with both standbys. A frozen standby does not stall commits; a killed
//! master's failover loses no acknowledged write.

use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use serde_json::json;
use stolon_it::{Cluster, ClusterConfig, test_spec, wait_for};

fn secs(n: u64) -> Duration {
    Duration::from_secs(n)
}

/// Three keepers, one sentinel, one proxy, quorum commit; both standbys listed and known, the
/// table created. Returns the cluster, the master and the two standbys.
async fn quorum_cluster() -> Result<(Cluster, usize, [usize; 2])> {
    let spec = test_spec(json!({
        "synchronousReplication": true,
        "quorumCommit": true,
        "minSynchronousStandbys": 1,
        "maxSynchronousStandbys": 2,
        // The walsender of a frozen standby ends only after this: without quorum commit every
        // commit would wait this long.
        "pgParameters": { "wal_sender_timeout": "60s" },
    }));
    let c = Cluster::start(ClusterConfig::new(spec, 1, 3, 1)).await?;
    let m = c.wait_ready(secs(180)).await?;
    let standbys: Vec<usize> = (0..3).filter(|&i| i != m).collect();
    let standbys = [standbys[0], standbys[1]];
    c.wait_sync_standbys(&standbys, secs(90)).await?;
    c.wait_right_master(m, secs(60)).await?;
    let port = c.keepers[m].pg_port;
    wait_for(
        "synchronous_standby_names in quorum form",
        secs(60),
        async || {
            let v = stolon_it::pg::query_value(port, "show synchronous_standby_names").await?;
            if v.starts_with("ANY 1 (") && v.matches("stolon_").count() == 2 {
                Ok(())
            } else {
                bail!("synchronous_standby_names = {v}")
            }
        },
    )
    .await?;
    c.create_table(secs(30)).await?;
    Ok((c, m, standbys))
}

/// Inserts `id` through the proxy once (no retry); the time it took.
async fn insert_once(c: &Cluster, id: i64) -> Result<Duration> {
    let t = Instant::now();
    stolon_it::pg::exec(
        c.proxy_port(),
        &format!("insert into table01 (id, value) values ({id}, 'v{id}')"),
    )
    .await?;
    Ok(t.elapsed())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quorum_commit_keeps_committing_with_a_frozen_standby() -> Result<()> {
    let (c, m, [s1, s2]) = quorum_cluster().await?;
    c.write_row(1, secs(30)).await?;
    eprintln!("--- freeze keeper{s1} and its postgres (SIGSTOP)");
    c.keepers[s1].pause_with_postgres()?;
    // Every insert is acknowledged by the other standby alone; none waits for the frozen one
    // (which only wal_sender_timeout, 60 s, would notice).
    let mut slowest = Duration::ZERO;
    for id in 2..=21 {
        let took = tokio::time::timeout(secs(30), insert_once(&c, id))
            .await
            .with_context(|| format!("insert {id} still waiting after 30 s"))??;
        slowest = slowest.max(took);
    }
    eprintln!("20 inserts with keeper{s1} frozen: slowest took {slowest:?}");
    c.wait_rows(s2, "table01", 21, secs(30)).await?;
    // The sentinel drops the frozen standby from the list once its keeper failed.
    let frozen = c
        .keeper_db(&c.cluster_data().await?.context("clusterdata")?, s1)
        .map(|d| d.uid.clone())
        .context("frozen standby's db")?;
    wait_for(
        "the frozen standby no longer listed",
        secs(60),
        async || {
            let cd = c.cluster_data().await?.context("clusterdata")?;
            let listed = c
                .keeper_db(&cd, m)
                .and_then(|d| d.spec.as_ref())
                .and_then(|s| s.synchronous_standbys.clone())
                .unwrap_or_default();
            if listed.contains(&frozen) {
                bail!("still listed: {listed:?}")
            } else {
                Ok(())
            }
        },
    )
    .await?;
    c.keepers[s1].resume_with_postgres()?;
    c.wait_rows(s1, "table01", 21, secs(90)).await?;
    c.pass();
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quorum_commit_master_kill_loses_no_acknowledged_write() -> Result<()> {
    let (mut c, m, _) = quorum_cluster().await?;
    // Insert one row at a time through the proxy, recording every acknowledged id, kill the
    // master's keeper and postgres after 20 of them, and keep inserting (bounded) until a new
    // master acknowledges 10 more.
    let mut acked: Vec<i64> = Vec::new();
    let mut id = 0i64;
    let mut killed_at: Option<Instant> = None;
    let mut first_after_kill = None;
    let mut after_kill = 0;
    let deadline = Instant::now() + secs(180);
    while after_kill < 10 {
        ensure!(
            Instant::now() < deadline,
            "no new master acknowledged 10 writes within 180 s ({} acknowledged)",
            acked.len()
        );
        id += 1;
        match tokio::time::timeout(secs(10), insert_once(&c, id)).await {
            Ok(Ok(_)) => {
                acked.push(id);
                if let Some(t) = killed_at {
                    after_kill += 1;
                    first_after_kill.get_or_insert(t.elapsed());
                }
            }
            _ => tokio::time::sleep(Duration::from_millis(200)).await,
        }
        if acked.len() == 20 && killed_at.is_none() {
            eprintln!("--- kill keeper{m} and its postgres");
            killed_at = Some(c.keepers[m].kill_with_postgres()?);
        }
    }
    let new = c.wait_master_changed(m, secs(60)).await?;
    eprintln!(
        "new master keeper{new}; {} writes acknowledged; the first after the kill was \
         acknowledged {first_after_kill:?} after it",
        acked.len()
    );
    let port = c.keepers[new].pg_port;
    let rows = stolon_it::pg::query_rows(port, "select id::text from table01").await?;
    let present: std::collections::BTreeSet<i64> = rows
        .iter()
        .filter_map(|r| r.first().cloned().flatten())
        .filter_map(|v| v.parse().ok())
        .collect();
    let lost: Vec<i64> = acked
        .iter()
        .copied()
        .filter(|i| !present.contains(i))
        .collect();
    ensure!(lost.is_empty(), "acknowledged writes lost: {lost:?}");
    c.pass();
    Ok(())
}
