//! Failsafe mode (docs/failsafe.md) with the real binaries, etcd and PostgreSQL: three keepers in
//! synchronous replication, one sentinel, two proxies, and two writers through the proxies (one
//! on a connection it keeps, one opening a new connection for every write). Then etcd is stopped.
//!
//! - Failsafe on: for the whole outage no client connection is closed, new connections are
//!   routed, and writes keep being acknowledged; once etcd is back the cluster is ready again with
//!   the same master, and no acknowledged write is lost.
//! - Failsafe off, the same outage: the proxies fence themselves after `proxyTimeout` and the
//!   writers see it (the behaviour Stolon users know; it also shows the first test can fail).
//! - Failsafe on, a planned switchover: the target, which had acknowledged the old master, does
//!   not wait for its promise (the old master is stopped first), and the switch completes.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, ensure};
use serde_json::json;
use stolon_it::{Cluster, KeeperOpts, pg, test_spec};
use tokio::sync::Mutex;

fn secs(n: u64) -> Duration {
    Duration::from_secs(n)
}

/// `proxyTimeout` of these clusters (and their `failInterval`, which may not be shorter in
/// failsafe mode).
const PROXY_TIMEOUT: Duration = Duration::from_secs(6);

/// What the writers saw.
#[derive(Debug, Default)]
struct Seen {
    /// Acknowledged ids, with when.
    acked: Vec<(i64, Instant)>,
    /// Errors on the writer's kept connection (each one closes it; the writer reconnects).
    kept_errors: Vec<(Instant, String)>,
    /// Failed connection attempts or writes of the reconnecting writer.
    new_errors: Vec<(Instant, String)>,
}

/// Keeps one connection through the proxy at `port` and writes ids `first..` on it every 50 ms
/// until `stop` (bounded: 20 000 writes); an error is recorded and the connection opened again.
async fn kept_writer(port: u16, first: i64, stop: Arc<AtomicBool>, out: Arc<Mutex<Seen>>) {
    let mut client = None;
    for id in first..first + 20_000 {
        if stop.load(Ordering::Relaxed) {
            return;
        }
        if client.is_none() {
            match tokio::time::timeout(secs(10), pg::connect(port)).await {
                Ok(Ok(c)) => client = Some(c),
                Ok(Err(e)) => out
                    .lock()
                    .await
                    .kept_errors
                    .push((Instant::now(), format!("{e:#}"))),
                Err(_) => out
                    .lock()
                    .await
                    .kept_errors
                    .push((Instant::now(), "connect timed out".into())),
            }
        }
        if let Some(c) = &client {
            let sql = format!("insert into table01 values ({id}, 'kept')");
            match tokio::time::timeout(secs(10), c.batch_execute(&sql)).await {
                Ok(Ok(())) => out.lock().await.acked.push((id, Instant::now())),
                Ok(Err(e)) => {
                    out.lock()
                        .await
                        .kept_errors
                        .push((Instant::now(), e.to_string()));
                    client = None;
                }
                Err(_) => {
                    out.lock()
                        .await
                        .kept_errors
                        .push((Instant::now(), "write timed out".into()));
                    client = None;
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Writes ids `first..` through the proxy at `port`, one new connection each, every 250 ms until
/// `stop` (bounded: 5 000 writes).
async fn new_conn_writer(port: u16, first: i64, stop: Arc<AtomicBool>, out: Arc<Mutex<Seen>>) {
    for id in first..first + 5_000 {
        if stop.load(Ordering::Relaxed) {
            return;
        }
        let r = async {
            let c = tokio::time::timeout(secs(10), pg::connect(port))
                .await
                .context("connect timed out")??;
            tokio::time::timeout(
                secs(10),
                c.batch_execute(&format!("insert into table01 values ({id}, 'new')")),
            )
            .await
            .context("write timed out")??;
            anyhow::Ok(())
        }
        .await;
        match r {
            Ok(()) => out.lock().await.acked.push((id, Instant::now())),
            Err(e) => out
                .lock()
                .await
                .new_errors
                .push((Instant::now(), format!("{e:#}"))),
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// A cluster of 1 sentinel, 3 keepers and 2 proxies, failsafe mode on or off (with the keepers'
/// HTTP listeners and the shared secret either way, so that only the spec differs).
async fn cluster(failsafe: bool) -> Result<Cluster> {
    let spec = test_spec(json!({
        "synchronousReplication": true,
        "proxyTimeout": "6s",
        "failInterval": "6s",
        "proxyCheckInterval": "1s",
        "failsafeMode": failsafe,
    }));
    let mut c = Cluster::empty(spec).await?;
    let secret = c.write_secret("failsafe", "failsafe-secret-of-this-test-cluster\n")?;
    let secret_flag = format!("--failsafe-secret-file={}", secret.display());
    c.add_sentinel()?;
    for _ in 0..3 {
        c.add_keeper_with(KeeperOpts {
            extra_args: vec![
                format!(
                    "--metrics-listen-address=127.0.0.1:{}",
                    stolon_pg::testing::free_port()
                ),
                secret_flag.clone(),
            ],
            ..KeeperOpts::default()
        })?;
    }
    for _ in 0..2 {
        c.add_proxy_with(vec![secret_flag.clone()])?;
    }
    Ok(c)
}

/// Runs the writers through both proxies across an etcd outage of `outage`; what they saw, the
/// outage's start, and the master before it.
async fn across_an_outage(c: &mut Cluster, outage: Duration) -> Result<(Seen, Instant, usize)> {
    let m = c.wait_ready(secs(180)).await?;
    c.wait_right_master(m, secs(60)).await?;
    c.create_table(secs(30)).await?;
    c.wait_standbys_streaming(m, 2, secs(60)).await?;
    // Every DB reports where its keeper answers failsafe requests before the outage starts.
    stolon_it::wait_for(
        "failsafe addresses in the clusterdata",
        secs(60),
        async || {
            let cd = c.cluster_data().await?.context("no clusterdata")?;
            let missing: Vec<usize> = (0..3)
                .filter(|i| {
                    c.keeper_db(&cd, *i)
                        .is_none_or(|db| db.status.failsafe_address.is_empty())
                })
                .collect();
            ensure!(
                missing.is_empty(),
                "keepers {missing:?} report no failsafe address"
            );
            Ok(())
        },
    )
    .await?;
    let stop = Arc::new(AtomicBool::new(false));
    let seen = Arc::new(Mutex::new(Seen::default()));
    let tasks = [
        tokio::spawn(kept_writer(
            c.proxies[0].port,
            1_000_000,
            Arc::clone(&stop),
            Arc::clone(&seen),
        )),
        tokio::spawn(new_conn_writer(
            c.proxies[1].port,
            2_000_000,
            Arc::clone(&stop),
            Arc::clone(&seen),
        )),
    ];
    // Writes flow and the keepers hold their acknowledgements (a few renewals) before the outage.
    tokio::time::sleep(secs(5)).await;
    ensure!(
        !seen.lock().await.acked.is_empty(),
        "no write acknowledged before the outage"
    );
    let start = Instant::now();
    c.etcd.stop_async().await;
    eprintln!("etcd stopped for {outage:?}");
    tokio::time::sleep(outage).await;
    c.etcd.restart_async().await.context("restart etcd")?;
    eprintln!("etcd back after {:?}", start.elapsed());
    c.wait_ready(secs(120)).await?;
    tokio::time::sleep(secs(3)).await;
    stop.store(true, Ordering::Relaxed);
    for t in tasks {
        t.await.context("writer task")?;
    }
    let seen = Arc::try_unwrap(seen)
        .map_err(|_| anyhow::anyhow!("writers still hold their log"))?
        .into_inner();
    Ok((seen, start, m))
}

/// The acknowledged ids missing on the master.
async fn lost(c: &Cluster, acked: &[(i64, Instant)]) -> Result<Vec<i64>> {
    let m = c.wait_master(secs(60)).await?;
    let rows = pg::query_rows(
        c.keepers[m].pg_port,
        "select id::text from table01 where id >= 1000000",
    )
    .await?;
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

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn with_failsafe_a_store_outage_closes_no_client_connection() -> Result<()> {
    let mut c = cluster(true).await?;
    let outage = secs(60);
    let (seen, start, m) = across_an_outage(&mut c, outage).await?;
    let end = start + outage;
    let during: usize = seen
        .acked
        .iter()
        .filter(|(_, at)| *at > start + PROXY_TIMEOUT + secs(2) && *at < end)
        .count();
    eprintln!(
        "acknowledged {} writes, {during} of them during the outage after proxyTimeout; \
         kept-connection errors {:?}; new-connection errors {:?}",
        seen.acked.len(),
        seen.kept_errors,
        seen.new_errors
    );
    ensure!(
        seen.kept_errors.is_empty(),
        "a kept client connection was closed: {:?}",
        seen.kept_errors
    );
    ensure!(
        seen.new_errors.is_empty(),
        "a new client connection or its write failed: {:?}",
        seen.new_errors
    );
    ensure!(
        during >= 100,
        "only {during} writes acknowledged during the outage"
    );
    c.wait_right_master(m, secs(60)).await?;
    c.write_row(1, secs(30)).await?;
    let lost = lost(&c, &seen.acked).await?;
    ensure!(lost.is_empty(), "acknowledged writes lost: {lost:?}");
    c.pass();
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn without_failsafe_a_store_outage_fences_the_proxies() -> Result<()> {
    let mut c = cluster(false).await?;
    let outage = secs(15);
    let (seen, start, _) = across_an_outage(&mut c, outage).await?;
    let end = start + outage;
    let in_outage =
        |v: &[(Instant, String)]| v.iter().filter(|(at, _)| *at > start && *at < end).count();
    eprintln!(
        "kept-connection errors {:?}; new-connection errors {:?}",
        seen.kept_errors, seen.new_errors
    );
    ensure!(
        in_outage(&seen.kept_errors) > 0,
        "the proxy kept a client connection through the outage without failsafe mode"
    );
    ensure!(
        in_outage(&seen.new_errors) > 0,
        "the proxy routed new connections through the outage without failsafe mode"
    );
    let lost = lost(&c, &seen.acked).await?;
    ensure!(lost.is_empty(), "acknowledged writes lost: {lost:?}");
    c.pass();
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn with_failsafe_a_switchover_target_does_not_wait_for_its_promise() -> Result<()> {
    let c = cluster(true).await?;
    let m = c.wait_ready(secs(180)).await?;
    c.wait_right_master(m, secs(60)).await?;
    c.create_table(secs(30)).await?;
    c.wait_standbys_streaming(m, 2, secs(60)).await?;
    // In synchronous mode the target must be the synchronous standby.
    let s = stolon_it::wait_for("a synchronous standby", secs(60), async || {
        let cd = c.cluster_data().await?.context("no clusterdata")?;
        let listed = cd
            .master_db()
            .and_then(|d| d.spec.as_ref())
            .and_then(|sp| sp.synchronous_standbys.clone())
            .unwrap_or_default();
        (0..3)
            .find(|i| {
                *i != m
                    && c.keeper_db(&cd, *i)
                        .is_some_and(|db| listed.contains(&db.uid))
            })
            .context("no keeper's db in the synchronous set yet")
    })
    .await?;
    // The standbys acknowledge the master's keeper: wait until the target has promised.
    let target_log = &c.keepers[s].proc;
    stolon_it::wait_for(
        "the target acknowledging the master",
        secs(60),
        async || {
            let cd = c.cluster_data().await?.context("no clusterdata")?;
            let ready = (0..3).all(|i| {
                c.keeper_db(&cd, i)
                    .is_some_and(|db| !db.status.failsafe_address.is_empty())
            });
            ensure!(ready, "failsafe addresses not all reported");
            Ok(())
        },
    )
    .await?;
    tokio::time::sleep(PROXY_TIMEOUT).await;
    let mark = target_log.log_mark();
    let to = c.keepers[s].uid.clone();
    let out = c
        .stolonctl_ok(&["switchover", "--to", &to, "--timeout", "60s", "-y"])
        .await?;
    ensure!(
        out.contains("switchover completed"),
        "stolonctl said: {out}"
    );
    c.wait_right_master(s, secs(60)).await?;
    let during = target_log.log_since(mark);
    ensure!(
        !during.contains("until the failsafe promise"),
        "the switchover's target waited for its failsafe promise:\n{during}"
    );
    c.write_row(1, secs(30)).await?;
    c.pass();
    Ok(())
}
