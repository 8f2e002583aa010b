//! Planned switchover (docs/switchover.md) with the real binaries, etcd and PostgreSQL: a
//! writer runs through the proxy, one new connection per write, while `stolonctl switchover`
//! moves the primary, asynchronous and synchronous. Checked: the target ends as master, no
//! acknowledged write is lost, no connection attempt through the proxy fails during the switch,
//! and the old primary is a streaming standby of the new one with its own DB (no resync: no
//! pg_rewind, no base backup) and its system identifier. Then the refusals: `--to` a keeper that
//! may not be master, an unknown keeper, an unhealthy one, each one line with the clusterdata's
//! switchover record and master unchanged. Last, the leader sentinel SIGKILLed as soon as it
//! logs each phase: the second sentinel finishes (or rolls back) with one writable primary and
//! no acknowledged write lost.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, ensure};
use serde_json::json;
use stolon_core::model::{DbRole, FollowType};
use stolon_it::{Cluster, ClusterConfig, KeeperOpts, pg, test_spec};
use tokio::sync::Mutex;

fn secs(n: u64) -> Duration {
    Duration::from_secs(n)
}

/// What the writer saw.
#[derive(Debug, Default)]
struct Writes {
    /// Ids whose insert was acknowledged (committed), with when.
    acked: Vec<(i64, Instant)>,
    /// Connection attempts through the proxy that failed.
    refused: Vec<String>,
    /// Inserts that failed on an established connection (not acknowledged: not counted lost).
    failed: usize,
}

/// Writes rows `first..` through the proxy, one new connection each, until `stop` (bounded: at
/// most 100 000 rows and 5 minutes).
async fn writer(port: u16, first: i64, stop: Arc<AtomicBool>, out: Arc<Mutex<Writes>>) {
    let begin = Instant::now();
    for id in first..first + 100_000 {
        if stop.load(Ordering::Relaxed) || begin.elapsed() > secs(300) {
            return;
        }
        let client = match tokio::time::timeout(secs(60), pg::connect(port)).await {
            Ok(Ok(c)) => c,
            Ok(Err(e)) => {
                out.lock().await.refused.push(format!("{e:#}"));
                tokio::time::sleep(Duration::from_millis(20)).await;
                continue;
            }
            Err(_) => {
                out.lock().await.refused.push("connect timed out".into());
                continue;
            }
        };
        let sql = format!("insert into table01 values ({id}, 'w')");
        match client.batch_execute(&sql).await {
            Ok(()) => out.lock().await.acked.push((id, Instant::now())),
            Err(_) => out.lock().await.failed += 1,
        }
    }
}

/// The acknowledged ids (from 1000 on) missing on the server at `port`.
async fn lost_writes(port: u16, acked: &[(i64, Instant)]) -> Result<Vec<i64>> {
    let rows = pg::query_rows(port, "select id::text from table01 where id >= 1000").await?;
    let present: std::collections::BTreeSet<i64> = rows
        .iter()
        .filter_map(|r| r.first().cloned().flatten())
        .filter_map(|v| v.parse().ok())
        .collect();
    Ok(acked
        .iter()
        .map(|(id, _)| *id)
        .filter(|id| !present.contains(id))
        .collect())
}

async fn system_id(port: u16) -> Result<String> {
    pg::query_value(
        port,
        "select system_identifier::text from pg_control_system()",
    )
    .await
}

async fn switchover(sync: bool) -> Result<()> {
    let extra = json!({ "synchronousReplication": sync });
    let c = Cluster::start(ClusterConfig::new(test_spec(extra), 1, 2, 1)).await?;
    let m = c.wait_ready(secs(180)).await?;
    let s = if m == 0 { 1 } else { 0 };
    if sync {
        c.wait_sync_standbys(&[s], secs(60)).await?;
    }
    c.wait_right_master(m, secs(60)).await?;
    c.create_table(secs(30)).await?;
    c.write_row(1, secs(30)).await?;
    c.wait_rows(s, "table01", 1, secs(60)).await?;
    c.wait_standbys_streaming(m, 1, secs(60)).await?;
    let cd = c.cluster_data().await?.context("clusterdata")?;
    let old_db = c.keeper_db(&cd, m).context("old master db")?.uid.clone();
    let old_system = system_id(c.keepers[m].pg_port).await?;

    let stop = Arc::new(AtomicBool::new(false));
    let writes = Arc::new(Mutex::new(Writes::default()));
    let task = tokio::spawn(writer(
        c.proxy_port(),
        1000,
        Arc::clone(&stop),
        Arc::clone(&writes),
    ));
    // Some writes before the switch.
    tokio::time::sleep(secs(2)).await;
    let to = c.keepers[s].uid.clone();
    let out = c
        .stolonctl_ok(&["switchover", "--to", &to, "--timeout", "30s", "-y"])
        .await?;
    ensure!(
        out.contains("switchover completed"),
        "stolonctl said: {out}"
    );
    c.wait_master_is(s, secs(60)).await?;
    c.wait_right_master(s, secs(60)).await?;
    // Some writes after it.
    let after = writes.lock().await.acked.len();
    for _ in 0..200 {
        if writes.lock().await.acked.len() > after + 20 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    stop.store(true, Ordering::Relaxed);
    task.await?;

    let w = writes.lock().await;
    ensure!(
        w.acked.len() > after + 20,
        "too few writes after the switchover"
    );
    // Zero acknowledged writes lost: every acked id is on the new master.
    let lost = lost_writes(c.keepers[s].pg_port, &w.acked).await?;
    ensure!(lost.is_empty(), "lost acknowledged writes: {lost:?}");
    // Connection attempts through the proxy: none fails. Every attempt made once the proxy
    // holds is held and then served by the new master; one the proxy had already sent to the
    // old primary and that the old primary had not answered yet is held too and replayed to the
    // new master; one in the middle of its authentication finishes it on the old primary and
    // is then closed as an established connection (its insert fails on an open connection,
    // counted in `failed`, not here).
    ensure!(
        w.refused.is_empty(),
        "{} connection attempts failed: {:?}",
        w.refused.len(),
        w.refused
    );
    // The longest gap between two acknowledgements (printed, not asserted).
    let pause = w
        .acked
        .windows(2)
        .map(|p| p[1].1 - p[0].1)
        .max()
        .unwrap_or_default();
    eprintln!(
        "switchover (sync {sync}): {} acked, {} failed on an open connection, {} refused, 0 lost, longest write pause {pause:?}",
        w.acked.len(),
        w.failed,
        w.refused.len()
    );

    // The old primary follows the new one, same DB (no resync), same system, streaming.
    c.wait_db_role(m, false, secs(60)).await?;
    c.wait_standbys_streaming(s, 1, secs(90)).await?;
    let cd = c.cluster_data().await?.context("clusterdata")?;
    let db = c.keeper_db(&cd, m).context("old master db")?;
    ensure!(
        db.uid == old_db,
        "the old master was recreated: {} -> {}",
        old_db,
        db.uid
    );
    let spec = db.spec.as_ref().context("spec")?;
    ensure!(spec.role == Some(DbRole::Standby));
    let follows = spec.follow_config.as_ref().context("follow config")?;
    ensure!(follows.kind == Some(FollowType::Internal));
    ensure!(Some(&follows.db_uid) == c.keeper_db(&cd, s).map(|d| &d.uid));
    ensure!(system_id(c.keepers[m].pg_port).await? == old_system);
    let log = c.keepers[m].proc.log_text();
    for word in ["pg_rewind", "resyncing", "pg_basebackup"] {
        ensure!(!log.contains(word), "the old master's keeper ran {word}");
    }
    ensure!(log.contains("switchover: following the new master without rewind"));
    c.pass();
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn switchover_async_keeps_every_write_and_holds_new_connections() -> Result<()> {
    switchover(false).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn switchover_sync_keeps_every_write_and_holds_new_connections() -> Result<()> {
    switchover(true).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn switchover_refusals_are_one_line_and_change_nothing() -> Result<()> {
    let mut c = Cluster::start(ClusterConfig::new(test_spec(json!({})), 1, 2, 1)).await?;
    let m = c.wait_ready(secs(180)).await?;
    let s = if m == 0 { 1 } else { 0 };
    let k = c.add_keeper_with(KeeperOpts {
        extra_args: vec!["--can-be-master=false".into()],
        ..Default::default()
    })?;
    c.wait_db_up(k, secs(120)).await?;
    let refused = async |c: &Cluster, to: &str, want: &str| -> Result<()> {
        let before = c.cluster_data().await?.context("clusterdata")?;
        let out = c.stolonctl(&["switchover", "--to", to, "-y"]).await?;
        ensure!(!out.status.success(), "switchover --to {to} was accepted");
        let err = String::from_utf8_lossy(&out.stderr).trim().to_string();
        ensure!(err.lines().count() == 1, "not one line: {err:?}");
        ensure!(err.contains(want), "{err:?} does not say {want:?}");
        let after = c.cluster_data().await?.context("clusterdata")?;
        ensure!(after.switchover.is_none(), "a switchover was recorded");
        ensure!(
            after.cluster.as_ref().map(|c| &c.status.master)
                == before.cluster.as_ref().map(|c| &c.status.master)
        );
        Ok(())
    };
    let ku = c.keepers[k].uid.clone();
    refused(&c, &ku, "keeper cannot be master").await?;
    refused(&c, "nokeeper", "keeper nokeeper does not exist").await?;
    // An unhealthy target.
    let su = c.keepers[s].uid.clone();
    c.keepers[s].stop().await?;
    stolon_it::wait_for("the standby to be unhealthy", secs(60), async || {
        let cd = c.cluster_data().await?.context("clusterdata")?;
        let healthy = cd.keepers.get(&su).is_some_and(|k| k.status.healthy);
        ensure!(!healthy, "still healthy");
        Ok(())
    })
    .await?;
    refused(&c, &su, "keeper not healthy").await?;
    ensure!(c.master_of(&c.cluster_data().await?.context("cd")?)? == m);
    c.pass();
    Ok(())
}

/// A switchover with the leader sentinel SIGKILLed as soon as it logs `marker` (one phase of
/// the sequence); a second sentinel takes over. The request is written straight into the store
/// (stolonctl's own wait is bounded below the new leader's election). Ends with exactly one
/// writable primary, the target master when the switchover completed or the old one when it
/// was rolled back, and no acknowledged write lost.
async fn leader_killed_at(marker: &str) -> Result<()> {
    let mut c = Cluster::start(ClusterConfig::new(test_spec(json!({})), 2, 2, 1)).await?;
    let m = c.wait_ready(secs(180)).await?;
    let s = if m == 0 { 1 } else { 0 };
    c.wait_right_master(m, secs(60)).await?;
    c.create_table(secs(30)).await?;
    c.write_row(1, secs(30)).await?;
    c.wait_standbys_streaming(m, 1, secs(60)).await?;
    let stop = Arc::new(AtomicBool::new(false));
    let writes = Arc::new(Mutex::new(Writes::default()));
    let task = tokio::spawn(writer(
        c.proxy_port(),
        1000,
        Arc::clone(&stop),
        Arc::clone(&writes),
    ));
    tokio::time::sleep(secs(1)).await;
    // The request, by compare-and-swap (retried on a concurrent write), as stolonctl writes it.
    stolon_it::wait_for("the request written", secs(30), async || {
        let read = c.store().get_cluster_data().await?;
        let mut cd = read.data.context("clusterdata")?;
        cd.switchover = Some(stolon_core::model::Switchover::request(
            "itsw0001".into(),
            c.keepers[s].uid.clone(),
            stolon_core::duration::GoDuration::from_secs(90),
            stolon_core::Timestamp::from_unix_nanos(0),
        ));
        c.store()
            .put_cluster_data(&cd, read.revision.as_ref())
            .await?;
        Ok(())
    })
    .await?;
    let leader = c.wait_sentinel_log(marker, secs(60)).await?;
    c.sentinels[leader].kill()?;
    eprintln!("killed sentinel{leader} after it logged {marker:?}");
    let outcome = stolon_it::wait_for("the switchover to end", secs(180), async || {
        let cd = c.cluster_data().await?.context("clusterdata")?;
        let sw = cd.switchover.context("no record")?;
        ensure!(!sw.phase.in_progress(), "phase {}", sw.phase.as_str());
        Ok(sw)
    })
    .await?;
    let want = if outcome.phase == stolon_core::model::SwitchoverPhase::Completed {
        s
    } else {
        m
    };
    c.wait_right_master(want, secs(90)).await?;
    tokio::time::sleep(secs(2)).await;
    stop.store(true, Ordering::Relaxed);
    task.await?;
    // Exactly one writable primary.
    let mut writable = 0;
    for k in &c.keepers {
        if let Ok(v) = pg::query_value(k.pg_port, "select pg_is_in_recovery()::text").await
            && v == "false"
        {
            writable += 1;
        }
    }
    ensure!(writable == 1, "{writable} writable primaries");
    let w = writes.lock().await;
    let lost = lost_writes(c.keepers[want].pg_port, &w.acked).await?;
    ensure!(lost.is_empty(), "lost acknowledged writes: {lost:?}");
    eprintln!(
        "leader killed at {marker:?}: outcome {} ({}), {} acked, 0 lost",
        outcome.phase.as_str(),
        outcome.reason,
        w.acked.len()
    );
    drop(w);
    c.pass();
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn switchover_leader_killed_when_accepted() -> Result<()> {
    leader_killed_at("switchover accepted").await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn switchover_leader_killed_when_stopping() -> Result<()> {
    leader_killed_at("switchover: proxies fenced").await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn switchover_leader_killed_when_the_old_master_stopped() -> Result<()> {
    leader_killed_at("switchover: the old master stopped").await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn switchover_leader_killed_when_promoting() -> Result<()> {
    leader_killed_at("switchover: the target caught up").await
}
