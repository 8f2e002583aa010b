//! Failover benchmark: a three-keeper cluster (two sentinels, one proxy) with synchronous
//! replication off and on; while a client writes through the proxy (sequential inserts of
//! increasing ids, each acknowledged commit recorded), the primary's keeper and its postgres are
//! SIGKILLed together. Measured: time from the kill to the first successful write through the
//! proxy, and acknowledged writes missing afterwards on the new primary.
//!
//! Runs `RUNS` (default 5) failovers per configuration: spec timings `sleepInterval 1s,
//! failInterval 3s` and the defaults, each with sync replication off and on. `CONFIGS` may
//! restrict the set (comma list of `fast-async`, `fast-sync`, `default-async`, `default-sync`).
//! The stolon binaries are taken next to this executable (build them with the same profile).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use serde_json::{Value, json};
use stolon_it::{Cluster, ClusterConfig, pg};
use tokio::sync::mpsc;
use tokio_postgres::{Client, NoTls};

/// One acknowledged insert.
#[derive(Debug, Clone, Copy)]
struct Ack {
    id: i64,
    sent: Instant,
    acked: Instant,
}

/// The result of one failover.
#[derive(Debug)]
struct RunResult {
    downtime: Duration,
    acked: usize,
    lost: usize,
}

struct Config {
    name: &'static str,
    spec: Value,
}

fn configs() -> Vec<Config> {
    let fast = |sync: bool| {
        json!({
            "initMode": "new",
            "sleepInterval": "1s",
            "failInterval": "3s",
            "synchronousReplication": sync,
        })
    };
    let default = |sync: bool| json!({ "initMode": "new", "synchronousReplication": sync });
    vec![
        Config {
            name: "fast-async",
            spec: fast(false),
        },
        Config {
            name: "fast-sync",
            spec: fast(true),
        },
        Config {
            name: "default-async",
            spec: default(false),
        },
        Config {
            name: "default-sync",
            spec: default(true),
        },
    ]
}

async fn connect(port: u16) -> Result<Client> {
    let conninfo = format!(
        "host=127.0.0.1 port={port} user={} dbname=postgres connect_timeout=2 \
         application_name=failover-bench",
        pg::SU_USER
    );
    let mut cfg: tokio_postgres::Config = conninfo.parse()?;
    cfg.password(pg::SU_PASSWORD);
    let (client, conn) = tokio::time::timeout(Duration::from_secs(3), cfg.connect(NoTls))
        .await
        .context("connect timed out")??;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    Ok(client)
}

/// Inserts ids 1, 2, 3, ... through the proxy until `stop`; every acknowledged commit is sent on
/// `tx`. A failed or timed-out insert is not retried (its id is skipped): only acknowledged ids
/// count.
async fn writer(port: u16, stop: Arc<AtomicBool>, tx: mpsc::UnboundedSender<Ack>) {
    let mut client: Option<Client> = None;
    let mut id: i64 = 0;
    while !stop.load(Ordering::SeqCst) {
        if client.as_ref().is_none_or(|c| c.is_closed()) {
            match connect(port).await {
                Ok(c) => client = Some(c),
                Err(_) => {
                    client = None;
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            }
        }
        let Some(c) = client.as_ref() else { continue };
        id += 1;
        let sent = Instant::now();
        let res = tokio::time::timeout(
            Duration::from_secs(5),
            c.execute("insert into bench (id) values ($1)", &[&id]),
        )
        .await;
        match res {
            Ok(Ok(_)) => {
                let _ = tx.send(Ack {
                    id,
                    sent,
                    acked: Instant::now(),
                });
            }
            _ => {
                client = None;
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}

async fn one_run(cfg: &Config) -> Result<RunResult> {
    let mut c = Cluster::start(ClusterConfig::new(cfg.spec.clone(), 2, 3, 1)).await?;
    let m = c.wait_ready(Duration::from_secs(300)).await?;
    c.wait_standbys_streaming(m, 2, Duration::from_secs(180))
        .await?;
    if cfg.spec["synchronousReplication"] == json!(true) {
        stolon_it::wait_for(
            "a synchronous standby",
            Duration::from_secs(120),
            async || {
                let cd = c.cluster_data().await?.context("clusterdata")?;
                let db = c.keeper_db(&cd, m).context("master db")?;
                let n = db.status.synchronous_standbys.as_ref().map_or(0, Vec::len);
                if n >= 1 {
                    Ok(())
                } else {
                    bail!("no synchronous standby yet")
                }
            },
        )
        .await?;
    }
    c.wait_right_master(m, Duration::from_secs(120)).await?;
    c.proxy_exec(
        "create table if not exists bench (id bigint primary key)",
        Duration::from_secs(30),
    )
    .await?;

    let stop = Arc::new(AtomicBool::new(false));
    let (tx, mut rx) = mpsc::unbounded_channel();
    let w = tokio::spawn(writer(c.proxy_port(), stop.clone(), tx));
    let mut acks: Vec<Ack> = Vec::new();

    // Steady writes for a moment before the kill.
    let warm = Instant::now();
    while acks.len() < 50 || warm.elapsed() < Duration::from_secs(2) {
        match tokio::time::timeout(Duration::from_secs(30), rx.recv()).await {
            Ok(Some(a)) => acks.push(a),
            _ => bail!("the writer made no progress before the kill"),
        }
    }
    // SIGKILL the keeper and its postgres back to back; the clock starts once both signals are
    // sent, so nothing sent afterwards can be acknowledged by the old primary.
    let killed_at = c.keepers[m].kill_with_postgres()?;
    if std::env::var_os("STOLON_IT_DUMP_LOGS").is_some() {
        // Wall-clock kill time, to line up with the component logs.
        let unix = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default();
        eprintln!("killed keeper{m} at unix {:.3}", unix.as_secs_f64());
    }

    // First write acknowledged that was sent after the kill.
    let mut first_after: Option<Ack> = None;
    let deadline = killed_at + Duration::from_secs(180);
    while first_after.is_none() {
        let left = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, rx.recv()).await {
            Ok(Some(a)) => {
                if a.sent > killed_at {
                    first_after = Some(a);
                }
                acks.push(a);
            }
            _ => break,
        }
    }
    let first = first_after.context("no write succeeded within 180 s of the kill")?;
    let downtime = first.acked.duration_since(killed_at);
    // A little more traffic on the new primary, then stop.
    tokio::time::sleep(Duration::from_secs(2)).await;
    stop.store(true, Ordering::SeqCst);
    let _ = tokio::time::timeout(Duration::from_secs(15), w).await;
    while let Ok(a) = rx.try_recv() {
        acks.push(a);
    }

    let nm = c.wait_master_changed(m, Duration::from_secs(30)).await?;
    let rows = pg::query_rows(c.keepers[nm].pg_port, "select id from bench").await?;
    let present: std::collections::HashSet<i64> = rows
        .into_iter()
        .filter_map(|r| r.into_iter().next().flatten())
        .filter_map(|v| v.parse().ok())
        .collect();
    let lost = acks.iter().filter(|a| !present.contains(&a.id)).count();
    c.pass();
    Ok(RunResult {
        downtime,
        acked: acks.len(),
        lost,
    })
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> Result<()> {
    let runs = stolon_it::bench::runs_from_env(5)?;
    let only = stolon_it::bench::configs_from_env();
    let mut summary = Vec::new();
    for cfg in configs() {
        if !stolon_it::bench::selected(&only, cfg.name) {
            continue;
        }
        let mut downtimes = Vec::new();
        let mut lost = 0usize;
        let mut acked = 0usize;
        let mut failed = 0usize;
        for run in 1..=runs {
            match one_run(&cfg).await {
                Ok(r) => {
                    println!(
                        "{} run {run}: kill -> first write {:.2} s, {} acknowledged writes, {} lost",
                        cfg.name,
                        r.downtime.as_secs_f64(),
                        r.acked,
                        r.lost
                    );
                    downtimes.push(r.downtime);
                    lost += r.lost;
                    acked += r.acked;
                }
                Err(e) => {
                    failed += 1;
                    println!("{} run {run}: FAILED: {e:#}", cfg.name);
                }
            }
        }
        let max = downtimes.iter().max().copied().unwrap_or_default();
        let med = stolon_it::bench::median(&mut downtimes);
        summary.push(format!(
            "{:<14} runs {:>2} ok {:>2} failed {:>2}  median {:>6.2} s  max {:>6.2} s  \
             acknowledged {:>6}  lost acknowledged {}",
            cfg.name,
            runs,
            downtimes.len(),
            failed,
            med.as_secs_f64(),
            max.as_secs_f64(),
            acked,
            lost
        ));
    }
    println!(
        "\n== failover benchmark (kill of primary keeper + postgres -> first write through the proxy)"
    );
    for s in &summary {
        println!("{s}");
    }
    Ok(())
}
