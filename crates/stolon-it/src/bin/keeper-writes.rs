//! Keeper store-write benchmark: how often each keeper writes its `KeeperInfo` to etcd at idle.
//!
//! Starts a cluster (one sentinel, `KEEPERS` keepers, default 3; no proxy) with
//! `sleepInterval 1s`, waits until the master and its standbys are ready and streaming, lets it
//! settle for `SETTLE` seconds (default 5), then reads the etcd `version` of every
//! `keepers/info/<uid>` key (it counts the writes to the key since it was created) at the start
//! and the end of a `WINDOW`-second window (default 30). Prints the writes per keeper per
//! `sleepInterval`. The stolon binaries are taken next to this executable (build them with the
//! same profile), etcdctl from `PATH`.

use std::collections::BTreeMap;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use serde_json::{Value, json};
use stolon_it::{Cluster, ClusterConfig};

fn env_num(name: &str, default: u64) -> Result<u64> {
    std::env::var(name)
        .ok()
        .filter(|v| !v.is_empty())
        .map(|v| {
            v.parse()
                .with_context(|| format!("{name} must be a number"))
        })
        .transpose()
        .map(|v| v.unwrap_or(default))
}

/// The etcd `version` (writes since creation) of every key under `prefix`.
fn versions(endpoint: &str, prefix: &str) -> Result<BTreeMap<String, u64>> {
    let out = std::process::Command::new("etcdctl")
        .env("ETCDCTL_API", "3")
        .args([
            "--endpoints",
            endpoint,
            "get",
            "--prefix",
            prefix,
            "-w",
            "json",
        ])
        .output()
        .context("run etcdctl")?;
    if !out.status.success() {
        bail!("etcdctl failed: {}", String::from_utf8_lossy(&out.stderr));
    }
    let v: Value = serde_json::from_slice(&out.stdout).context("parse etcdctl output")?;
    let mut m = BTreeMap::new();
    for kv in v["kvs"].as_array().into_iter().flatten() {
        // etcdctl's JSON carries the keys base64-encoded.
        let key = base64_decode(kv["key"].as_str().unwrap_or_default());
        let version = kv["version"].as_u64().unwrap_or(0);
        m.insert(key, version);
    }
    Ok(m)
}

/// Standard base64 (with padding) to text; undecodable input comes back as it is.
fn base64_decode(s: &str) -> String {
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut bits = 0u32;
    let mut n = 0;
    let mut out = Vec::new();
    for c in s.bytes().filter(|&c| c != b'=') {
        let Some(v) = ALPHABET.iter().position(|&a| a == c) else {
            return s.to_string();
        };
        bits = (bits << 6) | v as u32;
        n += 6;
        if n >= 8 {
            n -= 8;
            out.push((bits >> n) as u8);
        }
    }
    String::from_utf8(out).unwrap_or_else(|_| s.to_string())
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> Result<()> {
    let keepers = env_num("KEEPERS", 3)? as usize;
    let settle = Duration::from_secs(env_num("SETTLE", 5)?);
    let window = Duration::from_secs(env_num("WINDOW", 30)?);
    let sleep_interval = Duration::from_secs(1);
    let spec = json!({ "initMode": "new", "sleepInterval": "1s", "failInterval": "5s" });
    let c = Cluster::start(ClusterConfig::new(spec, 1, keepers, 0)).await?;
    let master = c.wait_ready(Duration::from_secs(120)).await?;
    if keepers > 1 {
        c.wait_standbys_streaming(master, keepers - 1, Duration::from_secs(60))
            .await?;
    }
    tokio::time::sleep(settle).await;
    let endpoint = c.etcd.endpoint();
    let prefix = format!("stolon/cluster/{}/keepers/info/", c.name);
    let before = versions(&endpoint, &prefix)?;
    if before.len() != keepers {
        bail!(
            "found {} keeper infos under {prefix}, expected {keepers}",
            before.len()
        );
    }
    tokio::time::sleep(window).await;
    let after = versions(&endpoint, &prefix)?;
    let intervals = window.as_secs_f64() / sleep_interval.as_secs_f64();
    let mut total = 0u64;
    for (key, &v0) in &before {
        let v1 = after
            .get(key)
            .copied()
            .context("a keeper info disappeared")?;
        if v1 < v0 {
            bail!("a keeper info was re-created during the window");
        }
        total += v1 - v0;
        println!(
            "keeper info {key}: {} writes in {:.0} s = {:.2} per sleepInterval",
            v1 - v0,
            window.as_secs_f64(),
            (v1 - v0) as f64 / intervals
        );
    }
    println!(
        "{keepers} keepers, idle: {:.2} keeper info writes per keeper per sleepInterval",
        total as f64 / intervals / keepers as f64
    );
    c.pass();
    Ok(())
}
