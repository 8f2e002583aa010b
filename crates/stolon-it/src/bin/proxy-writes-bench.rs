//! Store writes of an idle proxy: the quick start's cluster (its spec; two sentinels, three
//! keepers, one proxy) on loopback with real etcd and PostgreSQL. Once the cluster is up and the
//! standbys have joined, it counts for `DURATION_SECS` (default 60) how often the proxy published its
//! ProxyInfo (each publish carries a new info UID; the info is polled every 100 ms) and, for
//! comparison, how often clusterdata was rewritten.
//!
//! The stolon binaries are taken next to this executable (build them with the same profile);
//! `STPROXY_BIN` runs another proxy binary, e.g. an older build, on the same cluster setup.

use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use serde_json::json;
use stolon_it::{Cluster, ClusterConfig, wait_for};

const POLL: Duration = Duration::from_millis(100);

#[tokio::main]
async fn main() -> Result<()> {
    let seconds: u64 = match std::env::var("DURATION_SECS") {
        Ok(s) => s
            .parse()
            .with_context(|| format!("DURATION_SECS={s:?}: not a number of seconds"))?,
        Err(_) => 60,
    };
    let spec = json!({
        "initMode": "new",
        "sleepInterval": "2s",
        "failInterval": "5s",
        "convergenceTimeout": "30s",
        "usePgrewind": true,
    });
    let c = Cluster::start(ClusterConfig::new(spec, 2, 3, 1)).await?;
    c.wait_master(Duration::from_secs(120)).await?;
    wait_for(
        "two healthy standbys",
        Duration::from_secs(120),
        async || {
            let cd = c.cluster_data().await?.context("no clusterdata")?;
            let healthy = cd
                .dbs
                .values()
                .filter(|db| db.status.healthy && !db.uid.is_empty())
                .count();
            if healthy < 3 {
                bail!("{healthy} healthy dbs");
            }
            Ok(())
        },
    )
    .await?;
    wait_for("the proxy's info", Duration::from_secs(60), async || {
        let infos = c.store().get_proxies_info().await?;
        if infos.is_empty() {
            bail!("no proxy info");
        }
        Ok(())
    })
    .await?;
    // Let the cluster settle (initial convergence, first checkpoints).
    tokio::time::sleep(Duration::from_secs(15)).await;

    let mut last_info: Option<String> = None;
    let mut last_rev = None;
    let (mut publishes, mut cd_writes) = (0u64, 0u64);
    let start = Instant::now();
    let end = start + Duration::from_secs(seconds);
    while Instant::now() < end {
        let infos = c.store().get_proxies_info().await?;
        let uid = infos.values().next().map(|i| i.info_uid.clone());
        if last_info.is_some() && uid.is_some() && uid != last_info {
            publishes += 1;
        }
        if uid.is_some() {
            last_info = uid;
        }
        let rev = c.store().get_cluster_data().await?.revision;
        if last_rev.is_some() && rev != last_rev {
            cd_writes += 1;
        }
        last_rev = rev;
        tokio::time::sleep(POLL).await;
    }
    let secs = start.elapsed().as_secs_f64();
    let every = |n: u64| {
        if n == 0 {
            "never".to_string()
        } else {
            format!("one every {:.1} s", secs / n as f64)
        }
    };
    println!(
        "idle for {secs:.0} s: proxy ProxyInfo writes {publishes} ({}), clusterdata writes {cd_writes} ({})",
        every(publishes),
        every(cd_writes)
    );
    c.pass();
    Ok(())
}
