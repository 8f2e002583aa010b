//! Point-in-time recovery (docs/architecture.md §11): a cluster archiving WAL, a tar base backup,
//! then `stolonctl init` with a `pitr` spec restoring it (with and without a recovery target).

use std::path::Path;
use std::time::Duration;

use anyhow::{Context, Result, bail, ensure};
use serde_json::{Value, json};
use stolon_core::model::ClusterPhase;
use stolon_it::{Cluster, ClusterConfig, pg, test_spec, wait_for};

fn secs(n: u64) -> Duration {
    Duration::from_secs(n)
}

async fn pitr(with_target: bool) -> Result<()> {
    // The archive dir must be known when the spec is written: make the cluster, then point
    // archive_command at a dir inside it through a spec patch before any WAL matters.
    let c = Cluster::start(ClusterConfig::new(test_spec(json!({})), 1, 1, 1)).await?;
    let archive = c.subdir("archive");
    let backup = c.subdir("backup");
    c.wait_ready(secs(120)).await?;
    c.patch_spec(&json!({ "pgParameters": {
        "archive_mode": "on",
        "archive_command": format!("cp %p {}/%f", archive.display()),
    }}))
    .await?;
    // archive_mode needs a restart.
    let mut c = c;
    c.keepers[0].stop().await?;
    c.keepers[0].start()?;
    c.wait_db_up(0, secs(60)).await?;
    wait_for("archive_mode on", secs(60), async || {
        let v = pg::query_value(c.keepers[0].pg_port, "show archive_mode").await?;
        if v == "on" {
            Ok(())
        } else {
            bail!("archive_mode {v}")
        }
    })
    .await?;
    c.create_table(secs(60)).await?;
    c.write_row(1, secs(30)).await?;

    eprintln!("--- tar base backup");
    let port = c.keepers[0].pg_port.to_string();
    let basebackup = stolon_pg::testing::pg_bin_dir().join("pg_basebackup");
    c.run_as_postgres(
        &basebackup,
        &[
            "-D",
            &backup.display().to_string(),
            "-Ft",
            "-X",
            "none",
            "-h",
            "127.0.0.1",
            "-p",
            &port,
            "-U",
            pg::REPL_USER,
        ],
        &[("PGPASSWORD", pg::REPL_PASSWORD)],
        secs(120),
    )
    .await?;
    let mut target: Option<String> = None;
    if with_target {
        // A target between row 1 and row 2: the restored cluster has row 1 only.
        tokio::time::sleep(secs(1)).await;
        target = Some(pg::query_value(c.keepers[0].pg_port, "select now()::text").await?);
        tokio::time::sleep(secs(1)).await;
        c.write_row(2, secs(30)).await?;
    }
    let seg = pg::query_value(
        c.keepers[0].pg_port,
        "select pg_walfile_name(pg_switch_wal())",
    )
    .await?;
    wait_for("the last WAL segment archived", secs(60), async || {
        if archive.join(&seg).exists() {
            Ok(())
        } else {
            bail!("{seg} not in the archive")
        }
    })
    .await?;

    eprintln!("--- stolonctl init with a pitr spec");
    let mut spec: Value = json!({
        "initMode": "pitr",
        "sleepInterval": "1s",
        "failInterval": "5s",
        "pitrConfig": {
            "dataRestoreCommand": format!("tar xvf {}/base.tar -C %d", backup.display()),
            "archiveRecoverySettings": {
                "restoreCommand": format!("cp {}/%f %p", archive.display()),
            },
        },
        "pgParameters": { "max_prepared_transactions": "100" },
    });
    if let Some(t) = &target {
        spec["pitrConfig"]["recoveryTargetSettings"] = json!({ "recoveryTargetTime": t });
    }
    let f = c.dir().join("pitr-spec.json");
    std::fs::write(&f, spec.to_string())?;
    c.stolonctl_ok(&["init", "-y", "-f", &path(&f)]).await?;
    c.wait_phase(ClusterPhase::Normal, secs(180)).await?;
    c.wait_master_is(0, secs(60)).await?;
    c.wait_db_up(0, secs(60)).await?;
    c.wait_db_role(0, true, secs(60)).await?;
    c.wait_rows(0, "table01", 1, secs(30)).await?;
    let v = pg::query_value(c.keepers[0].pg_port, "show max_prepared_transactions").await?;
    ensure!(v == "100", "max_prepared_transactions {v}");
    c.wait_right_master(0, secs(60)).await?;
    let n = c
        .proxy_value("select count(*) from table01", secs(30))
        .await
        .context("count through the proxy")?;
    ensure!(n == "1", "{n} rows through the proxy");
    c.pass();
    Ok(())
}

fn path(p: &Path) -> String {
    p.display().to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pitr_restore() -> Result<()> {
    pitr(false).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pitr_recovery_target_time() -> Result<()> {
    pitr(true).await
}
