//! While the clusterdata in the store cannot be decoded, each daemon says so once, not on every
//! retry, keeps retrying with a bounded backoff, and carries on once the clusterdata is readable
//! again. Real etcd and the real sentinel, keeper and proxy binaries.

use std::process::Command;
use std::time::Duration;

use anyhow::{Context, Result, ensure};
use serde_json::json;
use stolon_it::{Cluster, test_spec, wait_for};

/// The value of `flag` in the cluster's common flags.
fn flag(c: &Cluster, flag: &str) -> Result<String> {
    let f = c.common_flags();
    let i = f
        .iter()
        .position(|x| x == flag)
        .with_context(|| format!("{flag} not in {f:?}"))?;
    f.get(i + 1).cloned().context("flag without a value")
}

fn etcdctl(c: &Cluster, args: &[&str]) -> Result<()> {
    let out = Command::new("etcdctl")
        .env("ETCDCTL_API", "3")
        .arg(format!("--endpoints={}", flag(c, "--store-endpoints")?))
        .args(args)
        .output()
        .context("run etcdctl")?;
    ensure!(
        out.status.success(),
        "etcdctl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn undecodable_clusterdata_is_said_once_per_daemon_and_retried() -> Result<()> {
    let mut c = Cluster::empty(test_spec(json!({}))).await?;
    let key = format!("stolon/cluster/{}/clusterdata", flag(&c, "--cluster-name")?);
    etcdctl(&c, &["put", &key, "{this is not json"])?;
    let s = c.add_sentinel()?;
    let k = c.add_keeper()?;
    let p = c.add_proxy()?;
    // Each daemon reads (and fails) many times in this window: the store watch fires on every
    // info another daemon publishes, and the resync tick runs every second.
    tokio::time::sleep(Duration::from_secs(10)).await;
    let logs = [
        (
            "sentinel",
            c.sentinels[s].log_text(),
            "error retrieving cluster data",
        ),
        (
            "keeper",
            c.keepers[k].proc.log_text(),
            "error retrieving cluster data",
        ),
        (
            "proxy",
            c.proxies[p].proc.log_text(),
            "check function error",
        ),
    ];
    for (who, log, text) in &logs {
        let n = log.lines().filter(|l| l.contains(text)).count();
        ensure!(
            n == 1,
            "{who}: {n} lines with {text:?} while the same error repeated:\n{log}"
        );
    }
    // Readable again: the sentinel initialises the cluster, and the keeper and the proxy carry on.
    etcdctl(&c, &["del", &key])?;
    c.wait_ready(Duration::from_secs(120)).await?;
    wait_for(
        "the proxy routing to the master",
        Duration::from_secs(60),
        || async {
            Ok(c.proxy_value("select 1", Duration::from_secs(5))
                .await
                .ok()
                .filter(|v| v == "1"))
        },
    )
    .await?;
    c.pass();
    Ok(())
}
