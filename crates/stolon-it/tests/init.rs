//! Cluster initialisation scenarios (docs/architecture.md §11): a new cluster, users and
//! passwords (and password files ending with a new line), the initial cluster spec, the data
//! dir lock, pgParameters merging, several keepers at init.

use std::time::Duration;

use anyhow::{Context, Result, bail, ensure};
use serde_json::json;
use stolon_core::model::ClusterPhase;
use stolon_it::{Cluster, ClusterConfig, KeeperOpts, pg, test_spec, wait_for};

fn secs(n: u64) -> Duration {
    Duration::from_secs(n)
}

fn user(name: &str, password: &str) -> Option<(String, String)> {
    Some((name.to_string(), password.to_string()))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn init_single_keeper() -> Result<()> {
    // TestInit, plus: the proxy reaches it and it is writable.
    let c = Cluster::start(ClusterConfig::new(test_spec(json!({})), 1, 1, 1)).await?;
    c.wait_db_up(0, secs(120)).await?;
    c.wait_master_is(0, secs(60)).await?;
    c.wait_right_master(0, secs(60)).await?;
    c.create_table(secs(30)).await?;
    c.write_row(1, secs(30)).await?;
    c.wait_rows(0, "table01", 1, secs(10)).await?;
    c.pass();
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn init_users_and_passwords_checks() -> Result<()> {
    // TestInitUsers (a) and TestPasswordTrailingNewLine: startup checks, no cluster needed.
    let mut c = Cluster::empty(test_spec(json!({}))).await?;
    let cases: Vec<(KeeperOpts, Vec<&str>)> = vec![
        (
            KeeperOpts {
                su: user("user01", "password01"),
                repl: user("user01", "password02"),
                ..Default::default()
            },
            vec![
                "provided superuser name and replication user name are the same but provided passwords are different",
            ],
        ),
        (
            KeeperOpts {
                su: user(pg::SU_USER, "supassword\n"),
                repl: user(pg::REPL_USER, "replpassword\n"),
                ..Default::default()
            },
            vec![
                "superuser password contain trailing new line, removing",
                "replication user password contain trailing new line, removing",
            ],
        ),
        (
            KeeperOpts {
                repl: user(pg::REPL_USER, "\n"),
                ..Default::default()
            },
            vec!["replication user password is empty after removing trailing new line"],
        ),
        (
            KeeperOpts {
                su: user(pg::SU_USER, "\n"),
                ..Default::default()
            },
            vec!["superuser password is empty after removing trailing new line"],
        ),
    ];
    for (opts, lines) in cases {
        let i = c.add_keeper_with(opts)?;
        for l in lines {
            c.keepers[i].proc.wait_log_line(l, secs(30)).await?;
        }
        c.keepers[i].kill()?;
    }
    c.pass();
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn init_users_su_is_repl() -> Result<()> {
    // TestInitUsers (b): one user for both roles gets the replication role added.
    let mut c = Cluster::start(ClusterConfig::new(test_spec(json!({})), 1, 0, 0)).await?;
    c.add_keeper_with(KeeperOpts {
        su: user("user01", "password"),
        repl: user("user01", "password"),
        ..Default::default()
    })?;
    c.wait_phase(ClusterPhase::Initializing, secs(30)).await?;
    c.keepers[0]
        .proc
        .wait_log_line("replication role added to superuser", secs(120))
        .await?;
    c.pass();
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn init_users_separate() -> Result<()> {
    // TestInitUsers (c): su user01, repl user02.
    let mut c = Cluster::start(ClusterConfig::new(test_spec(json!({})), 1, 0, 0)).await?;
    c.add_keeper_with(KeeperOpts {
        su: user("user01", "password01"),
        repl: user("user02", "password02"),
        ..Default::default()
    })?;
    let k = &c.keepers[0].proc;
    k.wait_log_line("superuser password set", secs(120)).await?;
    k.wait_log_line("replication role created", secs(60))
        .await?;
    let text = k.log_text();
    ensure!(
        text.lines()
            .any(|l| l.contains("replication role created") && l.contains("user02")),
        "no `replication role created` line naming user02"
    );
    c.pass();
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn initial_cluster_spec_is_stored() -> Result<()> {
    // TestInitialClusterSpec.
    let c = Cluster::start(ClusterConfig::new(
        test_spec(json!({ "synchronousReplication": true })),
        1,
        0,
        0,
    ))
    .await?;
    c.wait_phase(ClusterPhase::Initializing, secs(60)).await?;
    let cd = c.cluster_data().await?.context("clusterdata")?;
    let spec = cd.cluster.and_then(|c| c.spec).context("spec")?;
    let v = serde_json::to_value(&spec)?;
    ensure!(
        v.get("synchronousReplication") == Some(&json!(true)),
        "stored spec {v}"
    );
    c.pass();
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exclusive_data_dir_lock() -> Result<()> {
    // TestExclusiveLock.
    let mut c = Cluster::empty(test_spec(json!({}))).await?;
    c.add_keeper()?;
    c.keepers[0]
        .proc
        .wait_log_line("exclusive lock on data dir taken", secs(60))
        .await?;
    let j = c.add_keeper_with(KeeperOpts {
        same_as: Some(0),
        ..Default::default()
    })?;
    c.keepers[j]
        .proc
        .wait_log_line("cannot take exclusive lock on data dir", secs(60))
        .await?;
    c.pass();
    Ok(())
}

async fn init_new_merge(merge: bool) -> Result<()> {
    // TestInitNewMerge / TestInitNewNoMerge.
    let c = Cluster::start(ClusterConfig::new(
        test_spec(json!({ "mergePgParameters": merge, "failInterval": "10s" })),
        1,
        1,
        0,
    ))
    .await?;
    c.wait_phase(ClusterPhase::Normal, secs(120)).await?;
    c.wait_db_up(0, secs(60)).await?;
    let cd = c.cluster_data().await?.context("clusterdata")?;
    let spec = cd.cluster.and_then(|c| c.spec).context("spec")?;
    let v = serde_json::to_value(&spec)?;
    let has = v
        .get("pgParameters")
        .and_then(|p| p.get("max_connections"))
        .is_some();
    ensure!(
        has == merge,
        "merge {merge}: spec pgParameters {:?}",
        v.get("pgParameters")
    );
    c.pass();
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn init_new_merge_pg_parameters() -> Result<()> {
    init_new_merge(true).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn init_new_no_merge_pg_parameters() -> Result<()> {
    init_new_merge(false).await
}

/// TestInitExistingMerge / TestInitExistingNoMerge: re-init the cluster in `existing` mode on
/// the keeper's data; the data is kept, and the instance's own `archive_mode` is taken into the
/// spec only with `mergePgParameters` (without it, it is gone from the running configuration).
async fn init_existing(merge: bool) -> Result<()> {
    let c = Cluster::start(ClusterConfig::new(
        test_spec(json!({ "pgParameters": { "archive_mode": "on" } })),
        1,
        1,
        1,
    ))
    .await?;
    c.wait_ready(secs(120)).await?;
    let port = c.keepers[0].pg_port;
    ensure!(
        pg::setting_from_conf_file(port, "archive_mode")
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
        "mergePgParameters": merge,
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
    let want = if merge { "on" } else { "off" };
    // archive_mode needs a restart: the keeper may still be bringing the instance to the new
    // configuration right after phase normal, so wait (bounded) for it.
    wait_for(&format!("archive_mode {want}"), secs(60), async || {
        let v = pg::setting(port, "archive_mode").await?;
        if v == want {
            Ok(())
        } else {
            bail!("archive_mode {v}")
        }
    })
    .await?;
    let cd = c.cluster_data().await?.context("clusterdata")?;
    let stored = serde_json::to_value(cd.cluster.and_then(|c| c.spec).context("spec")?)?;
    let merged = stored.pointer("/pgParameters/archive_mode");
    ensure!(
        merged == merge.then(|| json!("on")).as_ref(),
        "spec pgParameters {:?}",
        stored.get("pgParameters")
    );
    c.wait_right_master(0, secs(60)).await?;
    c.pass();
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn init_existing_merge() -> Result<()> {
    init_existing(true).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn init_existing_no_merge() -> Result<()> {
    init_existing(false).await
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
