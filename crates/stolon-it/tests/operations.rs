//! Operations of docs/operations.md against the real binaries, etcd and PostgreSQL: keeper
//! priority decides which of two equally advanced standbys replaces a killed master; a keeper
//! started with `--can-be-master=false` never becomes the initial master; a paused cluster does
//! not replace a killed master, nor restart PostgreSQL for a changed parameter, until
//! `stolonctl resume`; elections appear in `stolonctl history`.

use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use serde_json::{Value, json};
use stolon_it::{Cluster, ClusterConfig, KeeperOpts, test_spec, wait_for};

fn secs(n: u64) -> Duration {
    Duration::from_secs(n)
}

/// `failInterval` of [`test_spec`].
const FAIL_INTERVAL: Duration = Duration::from_secs(5);

/// The last entry of `stolonctl history -f json`.
async fn last_history_entry(c: &Cluster) -> Result<Value> {
    let out = c.stolonctl_ok(&["history", "-f", "json"]).await?;
    let v: Value = serde_json::from_str(&out).context("history json")?;
    v.as_array()
        .and_then(|a| a.last())
        .cloned()
        .context("empty history")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn higher_priority_standby_is_elected_although_the_other_is_as_far_ahead() -> Result<()> {
    let mut c = Cluster::empty(test_spec(json!({}))).await?;
    c.add_sentinel()?;
    // keeper0 alone first, so it is the initial master.
    c.add_keeper()?;
    let m = c.wait_master(secs(180)).await?;
    ensure!(m == 0, "master is keeper{m}");
    c.add_keeper()?;
    c.add_keeper()?;
    c.add_proxy()?;
    c.wait_ready(secs(180)).await?;

    // Between two standbys at the same position the sentinel would elect the one whose DB UID
    // sorts first: give the other one the higher priority (a restart with `--priority=5`).
    let cd = c.cluster_data().await?.context("no clusterdata")?;
    let db = |i: usize| {
        c.keeper_db(&cd, i)
            .map(|d| d.uid.clone())
            .with_context(|| format!("keeper{i} has no db"))
    };
    let (favoured, preferred) = if db(1)? < db(2)? { (1, 2) } else { (2, 1) };
    eprintln!("--- restart keeper{preferred} with --priority=5 (keeper{favoured} wins ties)");
    c.keepers[preferred].stop().await?;
    c.keepers[preferred].set_extra_args(vec!["--priority=5".into()]);
    c.keepers[preferred].start()?;
    let preferred_uid = c.keepers[preferred].uid.clone();
    wait_for("the keeper priority in clusterdata", secs(60), async || {
        let cd = c.cluster_data().await?.context("no clusterdata")?;
        let p = cd
            .keepers
            .get(&preferred_uid)
            .and_then(|k| k.status.priority);
        if p == Some(5) {
            Ok(())
        } else {
            bail!("priority {p:?}")
        }
    })
    .await?;
    c.wait_db_up(preferred, secs(60)).await?;

    c.wait_right_master(0, secs(60)).await?;
    c.create_table(secs(30)).await?;
    c.write_row(1, secs(30)).await?;
    for i in [1, 2] {
        c.wait_rows(i, "table01", 1, secs(60)).await?;
    }
    // Both standbys as far ahead as the master, as the sentinel sees them.
    c.wait_synced_xlogpos(&[0, 1, 2], secs(60)).await?;

    eprintln!("--- SIGKILL of keeper0 and its postgres");
    c.keepers[0].kill_with_postgres()?;
    let new = c.wait_master_changed(0, secs(60)).await?;
    ensure!(
        new == preferred,
        "keeper{new} was elected, not keeper{preferred} (priority 5)"
    );
    c.wait_db_role(preferred, true, secs(60)).await?;
    c.wait_rows(preferred, "table01", 1, secs(10)).await?;
    c.wait_right_master(preferred, secs(60)).await?;

    let e = last_history_entry(&c).await?;
    ensure!(
        e["reason"] == "failed"
            && e["oldMasterKeeperUid"] == "keeper0"
            && e["newMasterKeeperUid"] == preferred_uid.as_str()
            && e["oldMasterLastLsn"].is_string(),
        "history entry {e}"
    );
    c.pass();
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn paused_cluster_does_not_fail_over_until_resumed() -> Result<()> {
    let mut c = Cluster::start(ClusterConfig::new(test_spec(json!({})), 1, 2, 1)).await?;
    let m = c.wait_ready(secs(180)).await?;
    let s = if m == 0 { 1 } else { 0 };
    c.wait_right_master(m, secs(60)).await?;
    c.create_table(secs(30)).await?;
    c.write_row(1, secs(30)).await?;
    c.wait_rows(s, "table01", 1, secs(60)).await?;
    c.wait_synced_xlogpos(&[m, s], secs(60)).await?;

    let out = c.stolonctl_ok(&["pause"]).await?;
    ensure!(out.contains("cluster paused"), "pause said {out:?}");
    let status = c.stolonctl_ok(&["status"]).await?;
    ensure!(
        status.lines().next().is_some_and(|l| l.contains("PAUSED")),
        "status first line: {status}"
    );

    eprintln!("--- paused: SIGKILL of keeper{m} and its postgres");
    let killed_at = c.keepers[m].kill_with_postgres()?;
    let master_uid = c.keepers[m].uid.clone();
    // The failure is noticed (the keeper is declared unhealthy) ...
    wait_for(
        "the master's keeper declared unhealthy",
        secs(60),
        async || {
            let cd = c.cluster_data().await?.context("no clusterdata")?;
            match cd.keepers.get(&master_uid) {
                Some(k) if !k.status.healthy => Ok(()),
                _ => bail!("still healthy"),
            }
        },
    )
    .await?;
    // ... yet for 3 x failInterval after the kill the master stays where it was.
    let until = killed_at + 3 * FAIL_INTERVAL;
    let mut checks = 0;
    while Instant::now() < until {
        let cd = c.cluster_data().await?.context("no clusterdata")?;
        let now_master = c.master_of(&cd)?;
        ensure!(
            now_master == m,
            "failover to keeper{now_master} while paused"
        );
        checks += 1;
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    ensure!(checks > 0, "no check made");
    ensure!(
        c.stolonctl_ok(&["history"])
            .await?
            .contains("No master changes recorded"),
        "history not empty while paused"
    );

    eprintln!("--- resume");
    c.stolonctl_ok(&["resume"]).await?;
    c.wait_master_is(s, secs(60)).await?;
    c.wait_db_role(s, true, secs(60)).await?;
    c.wait_rows(s, "table01", 1, secs(10)).await?;
    c.wait_right_master(s, secs(60)).await?;
    let e = last_history_entry(&c).await?;
    ensure!(
        e["reason"] == "failed" && e["newMasterKeeperUid"] == c.keepers[s].uid.as_str(),
        "history entry {e}"
    );
    let status = c.stolonctl_ok(&["status"]).await?;
    ensure!(!status.contains("PAUSED"), "status still paused: {status}");
    c.pass();
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keeper_that_cannot_be_master_is_never_the_initial_master() -> Result<()> {
    let mut c = Cluster::empty(test_spec(json!({}))).await?;
    c.add_sentinel()?;
    // keeper0 alone, `--can-be-master=false`: registered, but no master is created on it.
    c.add_keeper_with(KeeperOpts {
        extra_args: vec!["--can-be-master=false".into()],
        ..Default::default()
    })?;
    wait_for("keeper0 registered", secs(60), async || {
        let cd = c.cluster_data().await?.context("no clusterdata")?;
        match cd.keepers.get("keeper0") {
            Some(k) if k.status.can_be_master == Some(false) => Ok(()),
            _ => bail!("keeper0 not registered yet"),
        }
    })
    .await?;
    // A few sentinel rounds (sleepInterval 1s) with keeper0 as the only keeper.
    let until = Instant::now() + 3 * FAIL_INTERVAL;
    while Instant::now() < until {
        let cd = c.cluster_data().await?.context("no clusterdata")?;
        let master = cd.cluster.as_ref().map(|c| c.status.master.clone());
        ensure!(
            master.as_deref().unwrap_or("").is_empty(),
            "initial master {master:?} created with only keeper0"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    // keeper1 may be master: the cluster is initialised on it, keeper0 becomes its standby.
    c.add_keeper()?;
    c.add_proxy()?;
    let m = c.wait_ready(secs(180)).await?;
    ensure!(m == 1, "master is keeper{m}");
    c.wait_db_role(0, false, secs(60)).await?;
    c.pass();
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn paused_keeper_does_not_restart_for_a_parameter_until_resumed() -> Result<()> {
    let c = Cluster::start(ClusterConfig::new(
        test_spec(json!({
            "automaticPgRestart": true,
            "pgParameters": { "max_connections": "100" },
        })),
        1,
        1,
        0,
    ))
    .await?;
    c.wait_ready(secs(180)).await?;
    let port = c.keepers[0].pg_port;
    let show = async || stolon_it::pg::query_value(port, "show max_connections").await;
    ensure!(show().await? == "100");
    let pid = c.keepers[0].postmaster_pid().context("no postmaster pid")?;

    c.stolonctl_ok(&["pause"]).await?;
    c.patch_spec(&json!({ "pgParameters": { "max_connections": "150" } }))
        .await?;
    // The keeper writes the new value and reloads: PostgreSQL says a restart is pending (and
    // a keeper that restarted it anyway is caught here already).
    let pending = wait_for("max_connections pending a restart", secs(60), async || {
        if c.keepers[0].postmaster_pid() != Some(pid) || show().await? != "100" {
            return Ok(false);
        }
        let v = stolon_it::pg::query_value(
            port,
            "select pending_restart from pg_settings where name = 'max_connections'",
        )
        .await?;
        if v == "t" {
            Ok(true)
        } else {
            bail!("pending_restart {v}")
        }
    })
    .await?;
    ensure!(pending, "postgres restarted while paused");
    // ... but for several keeper rounds (sleepInterval 1s) nothing restarts it.
    let until = Instant::now() + 3 * FAIL_INTERVAL;
    while Instant::now() < until {
        ensure!(
            c.keepers[0].postmaster_pid() == Some(pid),
            "postgres restarted while paused"
        );
        ensure!(
            show().await? == "100",
            "max_connections changed while paused"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }

    c.stolonctl_ok(&["resume"]).await?;
    wait_for("max_connections 150 after resume", secs(60), async || {
        let v = show().await?;
        if v == "150" {
            Ok(())
        } else {
            bail!("max_connections {v}")
        }
    })
    .await?;
    ensure!(
        c.keepers[0].postmaster_pid() != Some(pid),
        "same postmaster after the restart"
    );
    c.pass();
    Ok(())
}
