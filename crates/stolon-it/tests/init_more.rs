//! More initialisation scenarios (stolon-behaviour.md §5.1, §5.2, §5.3): `existing` init mode
//! without merging pgParameters, password files ending with a new line, several keepers at init,
//! and the WAL retention parameter on PostgreSQL 15 (`wal_keep_size`).

use std::time::Duration;

use anyhow::{Context, Result, bail, ensure};
use serde_json::{Value, json};
use stolon_core::model::ClusterPhase;
use stolon_it::{Cluster, ClusterConfig, KeeperOpts, pg, test_spec, wait_for};

fn secs(n: u64) -> Duration {
    Duration::from_secs(n)
}

/// The stored cluster spec as JSON.
async fn stored_spec(c: &Cluster) -> Result<Value> {
    let cd = c.cluster_data().await?.context("clusterdata")?;
    let spec = cd.cluster.and_then(|c| c.spec).context("spec")?;
    Ok(serde_json::to_value(&spec)?)
}

/// `setting` of `name` in `pg_settings` on keeper `i`, or `None` when it does not come from a
/// configuration file.
async fn setting_from_conf_file(c: &Cluster, i: usize, name: &str) -> Result<Option<String>> {
    let rows = pg::query_rows(
        c.keepers[i].pg_port,
        &format!(
            "select setting from pg_settings where name = '{name}' \
             and source = 'configuration file'"
        ),
    )
    .await?;
    Ok(rows
        .into_iter()
        .next()
        .and_then(|r| r.into_iter().next().flatten()))
}

/// `setting` of `name` in `pg_settings` on keeper `i`.
async fn setting(c: &Cluster, i: usize, name: &str) -> Result<String> {
    pg::query_value(
        c.keepers[i].pg_port,
        &format!("select setting from pg_settings where name = '{name}'"),
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn init_existing_no_merge() -> Result<()> {
    // TestInitExistingNoMerge: re-init in `existing` mode on the keeper's data with
    // mergePgParameters false: the data is kept, the instance's own `archive_mode` is not taken
    // into the spec, so it is gone from the running configuration too.
    let c = Cluster::start(ClusterConfig::new(
        test_spec(json!({ "pgParameters": { "archive_mode": "on" } })),
        1,
        1,
        1,
    ))
    .await?;
    c.wait_ready(secs(120)).await?;
    ensure!(
        setting_from_conf_file(&c, 0, "archive_mode")
            .await?
            .as_deref()
            == Some("on"),
        "archive_mode not on before the re-init"
    );
    c.create_table(secs(30)).await?;
    c.write_row(1, secs(30)).await?;
    let spec = json!({
        "initMode": "existing",
        "sleepInterval": "1s",
        "failInterval": "5s",
        "existingConfig": { "keeperUID": c.keepers[0].uid },
        "mergePgParameters": false,
        "pgParameters": { "log_destination": "stderr", "logging_collector": "false" },
    });
    let f = c.dir().join("existing-spec.json");
    std::fs::write(&f, spec.to_string())?;
    c.stolonctl_ok(&["init", "-y", "-f", &f.display().to_string()])
        .await?;
    c.wait_phase(ClusterPhase::Initializing, secs(60)).await?;
    c.wait_phase(ClusterPhase::Normal, secs(120)).await?;
    c.wait_db_up(0, secs(60)).await?;
    c.wait_rows(0, "table01", 1, secs(30)).await?;
    // archive_mode needs a restart: the keeper may still be bringing the instance to the new
    // configuration right after phase normal, so wait (bounded) for it to be gone.
    wait_for(
        "archive_mode gone from the configuration",
        secs(60),
        async || match setting_from_conf_file(&c, 0, "archive_mode").await? {
            None => Ok(()),
            Some(v) => bail!("archive_mode = {v} from the configuration file"),
        },
    )
    .await?;
    let v = setting(&c, 0, "archive_mode").await?;
    ensure!(v == "off", "running archive_mode {v}");
    let spec = stored_spec(&c).await?;
    ensure!(
        spec.pointer("/pgParameters/archive_mode").is_none(),
        "archive_mode merged into spec pgParameters {:?}",
        spec.get("pgParameters")
    );
    c.wait_right_master(0, secs(60)).await?;
    c.pass();
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn password_trailing_new_line() -> Result<()> {
    // TestPasswordTrailingNewLine: both password files end with "\n"; the keepers log that they
    // strip it, and the stripped passwords are the ones set: the superuser logs in with the
    // bare password and the standby authenticates for replication with the bare one.
    let mut c = Cluster::empty(test_spec(json!({}))).await?;
    c.add_sentinel()?;
    let with_nl = || KeeperOpts {
        su: Some((pg::SU_USER.into(), format!("{}\n", pg::SU_PASSWORD))),
        repl: Some((pg::REPL_USER.into(), format!("{}\n", pg::REPL_PASSWORD))),
        ..Default::default()
    };
    for _ in 0..2 {
        let i = c.add_keeper_with(with_nl())?;
        let k = &c.keepers[i].proc;
        k.wait_log_line(
            "superuser password contain trailing new line, removing",
            secs(30),
        )
        .await?;
        k.wait_log_line(
            "replication user password contain trailing new line, removing",
            secs(30),
        )
        .await?;
    }
    c.add_proxy()?;
    let m = c.wait_ready(secs(180)).await?;
    let s = if m == 0 { 1 } else { 0 };
    c.wait_db_role(s, false, secs(30)).await?;
    c.wait_standbys_streaming(m, 1, secs(60)).await?;
    // The password with the new line is not the superuser's password.
    let bad = format!("{}\n", pg::SU_PASSWORD);
    ensure!(
        pg::connect_as(c.keepers[m].pg_port, pg::SU_USER, &bad)
            .await
            .is_err(),
        "the superuser logged in with the password including the new line"
    );
    c.wait_right_master(m, secs(60)).await?;
    c.create_table(secs(30)).await?;
    c.write_row(1, secs(30)).await?;
    c.wait_rows(s, "table01", 1, secs(60)).await?;
    c.pass();
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn init_with_multiple_keepers() -> Result<()> {
    // TestInitWithMultipleKeepers: 3 keepers and 2 sentinels at init: exactly one master is
    // elected and initialised, the two others become its standbys.
    let c = Cluster::start(ClusterConfig::new(
        test_spec(json!({ "failInterval": "10s" })),
        2,
        3,
        1,
    ))
    .await?;
    let m = c.wait_master(secs(120)).await?;
    c.wait_db_up(m, secs(60)).await?;
    c.wait_db_role(m, true, secs(60)).await?;
    let m2 = c.wait_ready(secs(180)).await?;
    ensure!(
        m2 == m,
        "master moved from keeper{m} to keeper{m2} during init"
    );
    c.wait_db_count(3, secs(30)).await?;
    for i in (0..3).filter(|&i| i != m) {
        c.wait_db_role(i, false, secs(60)).await?;
    }
    c.wait_standbys_streaming(m, 2, secs(60)).await?;
    c.wait_right_master(m, secs(60)).await?;
    c.create_table(secs(30)).await?;
    c.write_row(1, secs(30)).await?;
    for i in 0..3 {
        c.wait_rows(i, "table01", 1, secs(60)).await?;
    }
    // Still one master.
    let m3 = c.wait_master(secs(10)).await?;
    ensure!(m3 == m, "master moved from keeper{m} to keeper{m3}");
    c.pass();
    Ok(())
}

async fn restart_keeper(c: &mut Cluster, i: usize) -> Result<()> {
    c.keepers[i].stop().await?;
    c.keepers[i].start()?;
    c.wait_db_up(i, secs(60)).await
}

async fn wait_setting(
    c: &Cluster,
    i: usize,
    name: &str,
    want: &str,
    limit: Duration,
) -> Result<()> {
    wait_for(&format!("{name} = {want}"), limit, async || {
        let v = setting(c, i, name).await?;
        if v == want {
            Ok(())
        } else {
            bail!("{name} = {v}")
        }
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wal_keep_segments() -> Result<()> {
    // TestWalKeepSegments, PostgreSQL 15 variant. Stolon skips its test for pg >= 13 because
    // `wal_keep_segments` no longer exists there; its keeper (§4.9.1) then manages
    // `wal_keep_size` instead: the user value verbatim if set, else "128" (8 segments of 16 MB),
    // and never writes `wal_keep_segments` (PostgreSQL 15 would refuse to start on an unknown
    // parameter in postgresql.conf). Same steps as Stolon's test, each checked after a keeper
    // restart: default 128 (MB); a user wal_keep_size is honoured; a user wal_keep_segments is
    // dropped (the instance still starts, the size stays at its default).
    let c = Cluster::start(ClusterConfig::new(test_spec(json!({})), 1, 1, 0)).await?;
    let mut c = c;
    c.wait_ready(secs(120)).await?;
    let v = pg::query_value(c.keepers[0].pg_port, "show server_version_num").await?;
    ensure!(
        v.parse::<u32>().unwrap_or(0) >= 130000,
        "server_version_num {v}: this variant is for PostgreSQL >= 13"
    );
    wait_setting(&c, 0, "wal_keep_size", "128", secs(30)).await?;
    ensure!(
        setting_from_conf_file(&c, 0, "wal_keep_size")
            .await?
            .as_deref()
            == Some("128"),
        "wal_keep_size not written by the keeper"
    );

    eprintln!("--- wal_keep_size 1GB");
    c.patch_spec(&json!({ "pgParameters": { "wal_keep_size": "1GB" } }))
        .await?;
    restart_keeper(&mut c, 0).await?;
    wait_setting(&c, 0, "wal_keep_size", "1024", secs(30)).await?;

    eprintln!("--- wal_keep_segments 20 is dropped on PostgreSQL 15");
    c.patch_spec(&json!({ "pgParameters": { "wal_keep_size": null, "wal_keep_segments": "20" } }))
        .await?;
    restart_keeper(&mut c, 0).await?;
    wait_setting(&c, 0, "wal_keep_size", "128", secs(30)).await?;
    let n = pg::query_value(
        c.keepers[0].pg_port,
        "select count(*) from pg_settings where name = 'wal_keep_segments'",
    )
    .await?;
    ensure!(n == "0", "wal_keep_segments exists on this server");
    ensure!(
        c.keepers[0].proc.is_running(),
        "the keeper exited after wal_keep_segments was set"
    );
    c.pass();
    Ok(())
}
