//! The README walk-through as a test: two sentinels, three keepers, one proxy; a row written
//! through the proxy; the primary's keeper and its postgres SIGKILLed together; within 30 s the
//! row is read and a new write succeeds through the proxy, and the leader sentinel logged the
//! failover in Stolon's words.

use std::time::Duration;

use serde_json::json;
use stolon_it::{Cluster, ClusterConfig, pg};

const SECS: fn(u64) -> Duration = Duration::from_secs;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn walkthrough_failover_through_proxy() -> anyhow::Result<()> {
    let spec = json!({
        "initMode": "new",
        "sleepInterval": "1s",
        "failInterval": "3s",
        "convergenceTimeout": "30s",
    });
    let mut c = Cluster::start(ClusterConfig::new(spec, 2, 3, 1)).await?;

    eprintln!("--- cluster up: a primary with two streaming standbys, proxy routing to it");
    let m = c.wait_ready(SECS(180)).await?;
    c.wait_standbys_streaming(m, 2, SECS(120)).await?;
    c.wait_right_master(m, SECS(60)).await?;

    eprintln!("--- create a table and insert a row through the proxy");
    c.proxy_exec(
        "create table if not exists test (id int primary key, value text); \
         insert into test values (1, 'value1') on conflict (id) do nothing",
        SECS(30),
    )
    .await?;
    let standbys: Vec<usize> = (0..3).filter(|&i| i != m).collect();
    for &s in &standbys {
        c.wait_rows(s, "test", 1, SECS(60)).await?;
    }

    eprintln!("--- SIGKILL keeper{m} and its postgres");
    let killed_at = c.keepers[m].kill_with_postgres()?;
    // Clients reconnect and find the same row, then write, all within 30 s of the kill.
    let v = c
        .proxy_value("select value from test where id = 1", SECS(30))
        .await?;
    anyhow::ensure!(v == "value1", "read {v:?} through the proxy after failover");
    let left = SECS(30).saturating_sub(killed_at.elapsed());
    c.proxy_exec(
        "insert into test values (2, 'value2') on conflict (id) do nothing",
        left,
    )
    .await?;
    eprintln!(
        "--- read and write through the proxy {:.1?} after the kill",
        killed_at.elapsed()
    );

    let nm = c.wait_master_changed(m, SECS(10)).await?;
    anyhow::ensure!(standbys.contains(&nm));
    c.wait_right_master(nm, SECS(30)).await?;
    let n = c.proxy_value("select count(*) from test", SECS(10)).await?;
    anyhow::ensure!(n == "2", "{n} rows through the proxy");

    eprintln!("--- the leader sentinel logged the failover");
    let s = c.wait_sentinel_log("master db is failed", SECS(10)).await?;
    for line in [
        "trying to find a new master to replace failed master",
        "electing db as the new master",
    ] {
        c.sentinels[s].wait_log_line(line, SECS(10)).await?;
    }

    eprintln!("--- the other standby follows the new master");
    let other = standbys
        .into_iter()
        .find(|&i| i != nm)
        .expect("two standbys");
    c.wait_rows(other, "test", 2, SECS(60)).await?;
    c.wait_db_role(other, false, SECS(30)).await?;
    let direct = pg::query_value(c.keepers[nm].pg_port, "select count(*) from test").await?;
    anyhow::ensure!(direct == "2");
    c.pass();
    Ok(())
}
