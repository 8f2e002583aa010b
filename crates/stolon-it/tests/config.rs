//! Configuration scenarios (docs/architecture.md §11): pgParameters changes and reloads,
//! wal_level, ALTER SYSTEM blocked, additional replication slots, automatic restart,
//! advertised address, WAL retention (`wal_keep_size` on PostgreSQL 15).

use std::collections::BTreeSet;
use std::time::Duration;

use anyhow::{Context, Result, bail, ensure};
use serde_json::{Value, json};
use stolon_it::{Cluster, ClusterConfig, KeeperOpts, pg, test_spec, wait_for};

fn secs(n: u64) -> Duration {
    Duration::from_secs(n)
}

const CHANGED: &str = "postgres parameters changed, reloading postgres instance";
const NOT_CHANGED: &str = "postgres parameters not changed";

async fn one_keeper(extra: Value) -> Result<Cluster> {
    let c = Cluster::start(ClusterConfig::new(test_spec(extra), 1, 1, 1)).await?;
    c.wait_ready(secs(120)).await?;
    c.wait_right_master(0, secs(60)).await?;
    Ok(c)
}

async fn restart_keeper(c: &mut Cluster, i: usize) -> Result<()> {
    c.keepers[i].stop().await?;
    c.keepers[i].start()
}

async fn setting(c: &Cluster, i: usize, name: &str) -> Result<String> {
    pg::setting(c.keepers[i].pg_port, name).await
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
async fn server_parameters() -> Result<()> {
    let mut c = one_keeper(json!({})).await?;
    let mark = c.keepers[0].proc.log_mark();
    c.patch_spec(&json!({ "pgParameters": { "unexistent_parameter": "value" } }))
        .await?;
    c.keepers[0]
        .proc
        .wait_log_since(mark, CHANGED, secs(30))
        .await?;
    let mark = c.keepers[0].proc.log_mark();
    c.keepers[0]
        .proc
        .wait_log_since(mark, NOT_CHANGED, secs(30))
        .await?;
    eprintln!("--- restart the keeper: postgres refuses the bad parameter");
    restart_keeper(&mut c, 0).await?;
    c.keepers[0]
        .proc
        .wait_log_line("failed to start postgres", secs(60))
        .await?;
    c.patch_spec(&json!({ "pgParameters": null })).await?;
    c.wait_db_up(0, secs(60)).await?;
    c.wait_right_master(0, secs(60)).await?;
    c.pass();
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wal_level() -> Result<()> {
    let mut c = one_keeper(json!({})).await?;
    let mark = c.keepers[0].proc.log_mark();
    c.patch_spec(&json!({ "pgParameters": { "wal_level": "archive" } }))
        .await?;
    c.keepers[0]
        .proc
        .wait_log_since(mark, NOT_CHANGED, secs(30))
        .await?;
    restart_keeper(&mut c, 0).await?;
    c.wait_db_up(0, secs(60)).await?;
    let v = setting(&c, 0, "wal_level").await?;
    ensure!(v == "replica" || v == "hot_standby", "wal_level {v}");
    let mark = c.keepers[0].proc.log_mark();
    c.patch_spec(&json!({ "pgParameters": { "wal_level": "logical" } }))
        .await?;
    c.keepers[0]
        .proc
        .wait_log_since(mark, CHANGED, secs(30))
        .await?;
    restart_keeper(&mut c, 0).await?;
    c.wait_db_up(0, secs(60)).await?;
    wait_setting(&c, 0, "wal_level", "logical", secs(30)).await?;
    c.pass();
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn alter_system_is_blocked() -> Result<()> {
    let mut c = one_keeper(json!({})).await?;
    let client = pg::connect(c.keepers[0].pg_port).await?;
    let err = match pg::run_on(&client, "alter system set archive_mode to on").await {
        Ok(_) => bail!("ALTER SYSTEM succeeded"),
        Err(e) => format!("{e:#}"),
    };
    ensure!(
        err.contains("could not fsync file \"postgresql.auto.conf\": Invalid argument"),
        "unexpected ALTER SYSTEM error: {err}"
    );
    // Also through the proxy.
    let client = pg::connect(c.proxy_port()).await?;
    ensure!(
        pg::run_on(&client, "alter system set archive_mode to on")
            .await
            .is_err()
    );
    restart_keeper(&mut c, 0).await?;
    c.wait_db_up(0, secs(60)).await?;
    let v = setting(&c, 0, "archive_mode").await?;
    ensure!(v != "on", "archive_mode is {v} after restart");
    c.pass();
    Ok(())
}

async fn slots(c: &Cluster, i: usize) -> Result<BTreeSet<String>> {
    let rows = pg::query_rows(
        c.keepers[i].pg_port,
        "select slot_name from pg_replication_slots",
    )
    .await?;
    Ok(rows
        .into_iter()
        .filter_map(|r| r.into_iter().next().flatten())
        .collect())
}

async fn wait_slots(c: &Cluster, i: usize, want: &[&str], limit: Duration) -> Result<()> {
    let want: BTreeSet<String> = want.iter().map(|s| s.to_string()).collect();
    wait_for(&format!("slots {want:?} on keeper{i}"), limit, async || {
        let got = slots(c, i).await?;
        if got == want {
            Ok(())
        } else {
            bail!("slots {got:?}")
        }
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn additional_replication_slots() -> Result<()> {
    let c = Cluster::start(ClusterConfig::new(test_spec(json!({})), 1, 2, 1)).await?;
    let m = c.wait_ready(secs(180)).await?;
    let s = if m == 0 { 1 } else { 0 };
    let cd = c.cluster_data().await?.context("clusterdata")?;
    let sdb = format!("stolon_{}", c.keeper_db(&cd, s).context("standby db")?.uid);
    c.patch_spec(&json!({ "additionalMasterReplicationSlots": ["replslot01", "replslot02"] }))
        .await?;
    wait_slots(
        &c,
        m,
        &[&sdb, "stolon_replslot01", "stolon_replslot02"],
        secs(30),
    )
    .await?;
    wait_slots(&c, s, &[], secs(10)).await?;
    c.patch_spec(&json!({ "additionalMasterReplicationSlots": ["replslot01"] }))
        .await?;
    wait_slots(&c, m, &[&sdb, "stolon_replslot01"], secs(30)).await?;
    c.patch_spec(&json!({ "additionalMasterReplicationSlots": null }))
        .await?;
    wait_slots(&c, m, &[&sdb], secs(30)).await?;
    c.patch_spec(&json!({ "additionalMasterReplicationSlots": ["replslot01", "replslot02"] }))
        .await?;
    wait_slots(
        &c,
        m,
        &[&sdb, "stolon_replslot01", "stolon_replslot02"],
        secs(30),
    )
    .await?;

    eprintln!("--- manual slots: ours kept, one with the stolon_ prefix dropped");
    pg::exec(
        c.keepers[m].pg_port,
        "select pg_create_physical_replication_slot('manualreplslot'); \
         select pg_create_physical_replication_slot('stolon_manualreplslot')",
    )
    .await?;
    wait_slots(
        &c,
        m,
        &[
            &sdb,
            "stolon_replslot01",
            "stolon_replslot02",
            "manualreplslot",
        ],
        secs(30),
    )
    .await?;
    c.pass();
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn automatic_pg_restart() -> Result<()> {
    let c = one_keeper(json!({
        "automaticPgRestart": true,
        "pgParameters": { "max_connections": "100" },
    }))
    .await?;
    c.patch_spec(&json!({ "pgParameters": { "max_connections": "150" } }))
        .await?;
    wait_setting(&c, 0, "max_connections", "150", secs(60)).await?;
    c.patch_spec(&json!({ "automaticPgRestart": false }))
        .await?;
    c.patch_spec(&json!({ "pgParameters": { "max_connections": "200" } }))
        .await?;
    // Without automatic restart the new value waits for a manual restart.
    tokio::time::sleep(secs(10)).await;
    let v = setting(&c, 0, "max_connections").await?;
    ensure!(v == "150", "max_connections {v} without automatic restart");
    c.pass();
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn advertise_address() -> Result<()> {
    // No proxy and one keeper: nothing ever connects to the advertised (unreachable) address.
    let mut c = Cluster::start(ClusterConfig::new(test_spec(json!({})), 1, 0, 0)).await?;
    c.add_keeper_with(KeeperOpts {
        extra_args: vec![
            "--pg-advertise-address=6.6.6.6".into(),
            "--pg-advertise-port=6666".into(),
        ],
        ..Default::default()
    })?;
    c.wait_master(secs(120)).await?;
    c.wait_db_up(0, secs(60)).await?;
    let port = c.keepers[0].pg_port.to_string();
    ensure!(setting(&c, 0, "port").await? == port);
    ensure!(setting(&c, 0, "listen_addresses").await? == "127.0.0.1");
    wait_for("advertised address in clusterdata", secs(30), async || {
        let cd = c.cluster_data().await?.context("clusterdata")?;
        for db in cd.dbs.values() {
            if db.status.listen_address != "6.6.6.6" || db.status.port != "6666" {
                bail!(
                    "db {} status {}:{}",
                    db.uid,
                    db.status.listen_address,
                    db.status.port
                );
            }
        }
        Ok(())
    })
    .await?;
    c.pass();
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wal_keep_segments() -> Result<()> {
    // TestWalKeepSegments, PostgreSQL 15 variant. Stolon skips its test for pg >= 13 because
    // `wal_keep_segments` no longer exists there; its keeper (§7.2) then manages
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
        pg::setting_from_conf_file(c.keepers[0].pg_port, "wal_keep_size")
            .await?
            .as_deref()
            == Some("128"),
        "wal_keep_size not written by the keeper"
    );

    eprintln!("--- wal_keep_size 1GB");
    c.patch_spec(&json!({ "pgParameters": { "wal_keep_size": "1GB" } }))
        .await?;
    restart_keeper(&mut c, 0).await?;
    c.wait_db_up(0, secs(60)).await?;
    wait_setting(&c, 0, "wal_keep_size", "1024", secs(30)).await?;

    eprintln!("--- wal_keep_segments 20 is dropped on PostgreSQL 15");
    c.patch_spec(&json!({ "pgParameters": { "wal_keep_size": null, "wal_keep_segments": "20" } }))
        .await?;
    restart_keeper(&mut c, 0).await?;
    c.wait_db_up(0, secs(60)).await?;
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
