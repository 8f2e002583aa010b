//! Switchover benchmark: a two-keeper cluster (one sentinel, one proxy) with synchronous
//! replication off and on; a client writes through the proxy (a new connection per write, each
//! insert returning the port of the server that acknowledged it) while `stolonctl switchover`
//! moves the primary back and forth `RUNS` times (default 5). Measured per switchover: the write
//! pause (last acknowledgement by the old primary to the first by the new one), connection
//! attempts through the proxy that failed, inserts that failed on an established connection (a
//! connection the switch closed), and acknowledged writes missing at the end.
//!
//! Configurations: the default spec timings and `sleepInterval 1s`, each asynchronous and
//! synchronous; `CONFIGS` may restrict them (comma list of `default-async`, `default-sync`,
//! `fast-async`, `fast-sync`). The stolon binaries are taken next to this executable.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use serde_json::{Value, json};
use stolon_it::{Cluster, ClusterConfig, pg};
use tokio::sync::Mutex;
use tokio_postgres::NoTls;

struct Config {
    name: &'static str,
    spec: Value,
}

fn configs() -> Vec<Config> {
    let spec = |fast: bool, sync: bool| {
        let mut s = json!({ "initMode": "new", "synchronousReplication": sync });
        if fast {
            s["sleepInterval"] = json!("1s");
        }
        s
    };
    vec![
        Config {
            name: "default-async",
            spec: spec(false, false),
        },
        Config {
            name: "default-sync",
            spec: spec(false, true),
        },
        Config {
            name: "fast-async",
            spec: spec(true, false),
        },
        Config {
            name: "fast-sync",
            spec: spec(true, true),
        },
    ]
}

/// One acknowledged insert: its id, the acknowledging server's port, when.
#[derive(Debug, Clone, Copy)]
struct Ack {
    id: i64,
    port: u16,
    at: Instant,
}

#[derive(Debug, Default)]
struct Log {
    acks: Vec<Ack>,
    refused: Vec<Instant>,
    /// Inserts that failed on an established connection.
    failed: Vec<Instant>,
}

/// One insert on a new connection through the proxy: the acknowledging server's port, or
/// whether the connection attempt itself failed.
async fn insert(port: u16, id: i64) -> Result<u16, bool> {
    let conninfo = format!(
        "host=127.0.0.1 port={port} user={} dbname=postgres connect_timeout=60 \
         application_name=switchover-bench",
        pg::SU_USER
    );
    let mut cfg: tokio_postgres::Config = conninfo.parse().map_err(|_| true)?;
    cfg.password(pg::SU_PASSWORD);
    let (client, conn) =
        match tokio::time::timeout(Duration::from_secs(60), cfg.connect(NoTls)).await {
            Ok(Ok(c)) => c,
            _ => return Err(true),
        };
    tokio::spawn(async move {
        let _ = conn.await;
    });
    let row = tokio::time::timeout(
        Duration::from_secs(10),
        client.query_one(
            "insert into bench (id) values ($1) returning inet_server_port()",
            &[&id],
        ),
    )
    .await;
    match row {
        Ok(Ok(r)) => r
            .try_get::<_, i32>(0)
            .ok()
            .and_then(|p| u16::try_from(p).ok())
            .ok_or(false),
        _ => Err(false),
    }
}

/// Writes ids 1, 2, ... until `stop` (bounded: one hour).
async fn writer(port: u16, stop: Arc<AtomicBool>, log: Arc<Mutex<Log>>) {
    let begin = Instant::now();
    let mut id = 0i64;
    while !stop.load(Ordering::SeqCst) && begin.elapsed() < Duration::from_secs(3600) {
        id += 1;
        match insert(port, id).await {
            Ok(p) => log.lock().await.acks.push(Ack {
                id,
                port: p,
                at: Instant::now(),
            }),
            Err(true) => {
                log.lock().await.refused.push(Instant::now());
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            Err(false) => log.lock().await.failed.push(Instant::now()),
        }
    }
}

struct Switch {
    pause: Duration,
    refused: usize,
    failed: usize,
}

async fn run_config(cfg: &Config, runs: usize) -> Result<(Vec<Switch>, usize, usize)> {
    let c = Cluster::start(ClusterConfig::new(cfg.spec.clone(), 1, 2, 1)).await?;
    let mut m = c.wait_ready(Duration::from_secs(300)).await?;
    c.wait_standbys_streaming(m, 1, Duration::from_secs(180))
        .await?;
    c.wait_right_master(m, Duration::from_secs(120)).await?;
    c.proxy_exec(
        "create table if not exists bench (id bigint primary key)",
        Duration::from_secs(30),
    )
    .await?;
    let stop = Arc::new(AtomicBool::new(false));
    let log = Arc::new(Mutex::new(Log::default()));
    let w = tokio::spawn(writer(c.proxy_port(), stop.clone(), log.clone()));
    let mut switches = Vec::new();
    for run in 1..=runs {
        let s = if m == 0 { 1 } else { 0 };
        // Standby caught up and (sync) listed before each switch.
        c.wait_standbys_streaming(m, 1, Duration::from_secs(180))
            .await?;
        if cfg.spec["synchronousReplication"] == json!(true) {
            c.wait_sync_standbys(&[s], Duration::from_secs(120)).await?;
        }
        tokio::time::sleep(Duration::from_secs(2)).await;
        let (old_port, new_port) = (c.keepers[m].pg_port, c.keepers[s].pg_port);
        let start = Instant::now();
        let to = c.keepers[s].uid.clone();
        c.stolonctl_ok(&["switchover", "--to", &to, "-y"]).await?;
        c.wait_right_master(s, Duration::from_secs(60)).await?;
        // Wait for the first acknowledgement by the new primary.
        let mut pause = None;
        for _ in 0..600 {
            let l = log.lock().await;
            let last_old = l
                .acks
                .iter()
                .filter(|a| a.port == old_port && a.at >= start)
                .map(|a| a.at)
                .max();
            let first_new = l
                .acks
                .iter()
                .filter(|a| a.port == new_port && a.at >= start)
                .map(|a| a.at)
                .min();
            if let Some(n) = first_new {
                pause = Some(n.duration_since(last_old.unwrap_or(start)));
                break;
            }
            drop(l);
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let pause = pause.context("no write acknowledged by the new primary")?;
        let (refused, failed) = {
            let l = log.lock().await;
            let since = |v: &[Instant]| v.iter().filter(|t| **t >= start).count();
            (since(&l.refused), since(&l.failed))
        };
        println!(
            "{} switchover {run}: keeper{m} -> keeper{s}: write pause {:.3} s, {refused} refused connections, {failed} inserts failed on an open connection",
            cfg.name,
            pause.as_secs_f64()
        );
        switches.push(Switch {
            pause,
            refused,
            failed,
        });
        m = s;
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    stop.store(true, Ordering::SeqCst);
    let _ = tokio::time::timeout(Duration::from_secs(30), w).await;
    let l = log.lock().await;
    let rows = pg::query_rows(c.keepers[m].pg_port, "select id::text from bench").await?;
    let present: BTreeSet<i64> = rows
        .into_iter()
        .filter_map(|r| r.into_iter().next().flatten())
        .filter_map(|v| v.parse().ok())
        .collect();
    let lost = l.acks.iter().filter(|a| !present.contains(&a.id)).count();
    let acked = l.acks.len();
    drop(l);
    c.pass();
    Ok((switches, acked, lost))
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
        match run_config(&cfg, runs).await {
            Ok((switches, acked, lost)) => {
                let mut pauses: Vec<Duration> = switches.iter().map(|s| s.pause).collect();
                let max = pauses.iter().max().copied().unwrap_or_default();
                let med = stolon_it::bench::median(&mut pauses);
                let refused: usize = switches.iter().map(|s| s.refused).sum();
                let failed: usize = switches.iter().map(|s| s.failed).sum();
                summary.push(format!(
                    "{:<14} switchovers {:>2}  write pause median {:>6.3} s  max {:>6.3} s  \
                     refused connections {refused}  failed on an open connection {failed}  \
                     acknowledged {acked}  lost acknowledged {lost}",
                    cfg.name,
                    switches.len(),
                    med.as_secs_f64(),
                    max.as_secs_f64(),
                ));
            }
            Err(e) => summary.push(format!("{:<14} FAILED: {e:#}", cfg.name)),
        }
    }
    println!("\n== switchover benchmark (last write on the old primary -> first on the new one)");
    for s in &summary {
        println!("{s}");
    }
    Ok(())
}
