//! Proxy and sentinel scenarios (stolon-behaviour.md §5.5, §5.6): when the proxy listens as the
//! store comes and goes or hangs, and which proxies the sentinel enables.

use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use serde_json::json;
use stolon_core::model::ClusterData;
use stolon_it::{Cluster, ClusterConfig, test_spec, wait_for};

fn secs(n: u64) -> Duration {
    Duration::from_secs(n)
}

fn listening(port: u16) -> bool {
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    TcpStream::connect_timeout(&addr, Duration::from_secs(1)).is_ok()
}

async fn wait_listening(port: u16, want: bool, limit: Duration) -> Result<()> {
    let what = if want { "listening" } else { "not listening" };
    wait_for(&format!("proxy {what}"), limit, async || {
        if listening(port) == want {
            Ok(())
        } else {
            bail!(
                "proxy is {}",
                if want { "not listening" } else { "listening" }
            )
        }
    })
    .await
}

/// Fails if the proxy stops listening at any point during `d`.
async fn keeps_listening(port: u16, d: Duration) -> Result<()> {
    let end = Instant::now() + d;
    while Instant::now() < end {
        if !listening(port) {
            bail!("the proxy stopped listening");
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    Ok(())
}

fn clusterdata_with_master(master: &str) -> Result<ClusterData> {
    let v = json!({
        "formatVersion": 1,
        "cluster": {
            "uid": "01",
            "generation": 1,
            "spec": { "initMode": "new", "failInterval": "10s" },
            "status": { "phase": "normal", "master": "01" },
        },
        "keepers": {},
        "dbs": {
            "01": {
                "uid": "01",
                "generation": 1,
                "spec": { "keeperUID": "01", "role": "master", "followers": [] },
                "status": { "healthy": false },
            },
        },
        "proxy": { "generation": 1, "spec": { "masterDbUid": master } },
    });
    serde_json::from_value(v).context("build clusterdata")
}

fn etcdctl_put(c: &Cluster, key: &str, value: &str) -> Result<()> {
    let out = std::process::Command::new("etcdctl")
        .env("ETCDCTL_API", "3")
        .args(["--endpoints", &c.etcd.endpoint(), "put", key, value])
        .output()
        .context("run etcdctl")?;
    if !out.status.success() {
        bail!(
            "etcdctl put failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn proxy_listening() -> Result<()> {
    let mut c = Cluster::empty(test_spec(json!({}))).await?;
    eprintln!("--- store down: the proxy does not listen");
    c.etcd.stop_async().await;
    c.add_proxy()?;
    let port = c.proxy_port();
    let end = Instant::now() + secs(10);
    while Instant::now() < end {
        if listening(port) {
            bail!("the proxy listens while the store is down");
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }

    eprintln!("--- store up with a master db: listens");
    c.etcd.restart_async().await?;
    c.store()
        .force_put_cluster_data(&clusterdata_with_master("01")?)
        .await
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    wait_listening(port, true, secs(30)).await?;

    eprintln!("--- store stopped: stops listening");
    c.etcd.stop_async().await;
    wait_listening(port, false, secs(60)).await?;
    eprintln!("--- store back: listens");
    c.etcd.restart_async().await?;
    wait_listening(port, true, secs(30)).await?;

    eprintln!("--- a short store outage (< proxyTimeout): keeps listening");
    c.etcd.stop_async().await;
    let down = Instant::now();
    keeps_listening(port, secs(5)).await?;
    c.etcd.restart_async().await?;
    if down.elapsed() < secs(12) {
        keeps_listening(port, secs(10)).await?;
    }
    wait_listening(port, true, secs(30)).await?;

    eprintln!("--- master cleared, restored, clusterdata null: keeps listening");
    let cd = c
        .store()
        .get_cluster_data()
        .await
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    c.store()
        .put_cluster_data(&clusterdata_with_master("")?, cd.revision.as_ref())
        .await
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    keeps_listening(port, secs(10)).await?;
    c.store()
        .force_put_cluster_data(&clusterdata_with_master("01")?)
        .await
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    keeps_listening(port, secs(5)).await?;
    etcdctl_put(&c, "stolon/cluster/stolon-it/clusterdata", "null")?;
    keeps_listening(port, secs(10)).await?;

    eprintln!("--- store hung (SIGSTOP): stops listening; SIGCONT: listens again");
    c.etcd.pause()?;
    let res = wait_listening(port, false, secs(60)).await;
    c.etcd.resume()?;
    res?;
    wait_listening(port, true, secs(30)).await?;
    c.pass();
    Ok(())
}

async fn enabled_proxies(c: &Cluster) -> Result<Vec<String>> {
    let cd = c.cluster_data().await?.context("clusterdata")?;
    Ok(cd.proxy.map(|p| p.spec.enabled_proxies).unwrap_or_default())
}

async fn wait_enabled_count(c: &Cluster, n: usize, limit: Duration) -> Result<()> {
    wait_for(&format!("{n} enabled proxies"), limit, async || {
        let e = enabled_proxies(c).await?;
        if e.len() == n {
            Ok(())
        } else {
            bail!("enabled {e:?}")
        }
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sentinel_enabled_proxies() -> Result<()> {
    let mut c = Cluster::start(ClusterConfig::new(test_spec(json!({})), 1, 1, 1)).await?;
    c.wait_ready(secs(120)).await?;
    c.wait_right_master(0, secs(60)).await?;
    let before = enabled_proxies(&c).await?;
    anyhow::ensure!(before.len() == 1, "enabled proxies {before:?}");

    eprintln!("--- restart the sentinel: the enabled proxies stay");
    c.sentinels[0].stop().await?;
    c.sentinels[0].start()?;
    tokio::time::sleep(secs(10)).await;
    anyhow::ensure!(enabled_proxies(&c).await? == before);
    c.wait_right_master(0, secs(30)).await?;

    eprintln!("--- a second proxy gets enabled");
    c.add_proxy()?;
    wait_enabled_count(&c, 2, secs(30)).await?;
    eprintln!("--- SIGSTOP the second proxy: disabled; SIGCONT: enabled again");
    c.proxies[1].proc.pause()?;
    let res = wait_enabled_count(&c, 1, secs(90)).await;
    c.proxies[1].proc.resume()?;
    res?;
    wait_enabled_count(&c, 2, secs(30)).await?;
    c.pass();
    Ok(())
}
