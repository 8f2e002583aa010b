//! The failover story with every component in a container of the project's image, as on
//! Kubernetes: on a private network of the Docker engine, three etcd members, three keepers on
//! named volumes, two sentinels and two proxies. A row written through a proxy survives
//! `docker kill` of the master keeper's container: a sentinel elects a standby, both proxies
//! route to it, the row is there; the killed container, started again on its volume, rejoins as
//! a streaming standby of the new master.
//!
//! It needs a Docker engine and the images made by `scripts/image.sh` (names in
//! `STOLON_IT_IMAGE` and `STOLON_IT_ETCD_IMAGE`, default `stolon-rs:ci` and `stolon-rs-etcd:ci`),
//! so it is ignored by a plain `cargo test`; `scripts/test.sh` builds the images and runs it with
//! `cargo nextest run -p stolon-it --test container --run-ignored only`. Run that way it fails,
//! never skips, when the engine or an image is missing.

use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use serde_json::json;
use stolon_core::model::{ClusterData, ClusterPhase};
use stolon_it::docker::{ContainerSpec, Docker, Network};
use stolon_it::pg::{self, REPL_PASSWORD, REPL_USER, SU_PASSWORD, SU_USER};
use stolon_it::{test_spec, wait_for};
use stolon_store::{Store, StoreBackend, StoreConfig};

const CLUSTER: &str = "stolon-it";
const PG_PORT: u16 = 5432;
const KEEPERS: usize = 3;

/// Generous bounds (the machine may be shared): none of them is a timing assertion.
const START_LIMIT: Duration = Duration::from_secs(180);
const FAILOVER_LIMIT: Duration = Duration::from_secs(120);
const REJOIN_LIMIT: Duration = Duration::from_secs(180);

fn env_or(name: &str, default: &str) -> String {
    std::env::var(name)
        .ok()
        .filter(|v| !v.is_empty())
        .unwrap_or_else(|| default.to_string())
}

fn s(v: &[&str]) -> Vec<String> {
    v.iter().map(|x| x.to_string()).collect()
}

/// The master keeper's uid in `cd` (phase normal, master DB assigned).
fn master_keeper(cd: &ClusterData) -> Result<String> {
    let cluster = cd.cluster.as_ref().context("clusterdata has no cluster")?;
    if cluster.status.phase != Some(ClusterPhase::Normal) {
        bail!("cluster phase is {:?}", cluster.status.phase);
    }
    let m = &cluster.status.master;
    if m.is_empty() {
        bail!("no master db yet");
    }
    let db = cd
        .dbs
        .get(m)
        .with_context(|| format!("master db {m} missing"))?;
    let spec = db.spec.as_ref().context("master db has no spec")?;
    Ok(spec.keeper_uid.clone())
}

async fn cluster_data(store: &dyn Store) -> Result<ClusterData> {
    store
        .get_cluster_data()
        .await
        .map_err(|e| anyhow::anyhow!("read clusterdata: {e}"))?
        .data
        .context("no clusterdata in the store yet")
}

/// Waits until the instance at `ip` is a standby streaming from its primary and has row `id`.
async fn wait_streaming_standby(ip: &str, id: i64, limit: Duration) -> Result<()> {
    wait_for(&format!("{ip} to stream as a standby"), limit, async || {
        let rows = pg::query_rows_at(
            ip,
            PG_PORT,
            "select pg_is_in_recovery()::text, \
             (select status from pg_stat_wal_receiver limit 1)",
        )
        .await?;
        let row = rows.first().context("no row")?;
        let (recovery, receiver) = (row[0].as_deref(), row[1].as_deref());
        if recovery != Some("true") || receiver != Some("streaming") {
            bail!("pg_is_in_recovery {recovery:?}, wal receiver {receiver:?}");
        }
        let v = pg::query_value_at(
            ip,
            PG_PORT,
            &format!("select value from table01 where id = {id}"),
        )
        .await?;
        if v != format!("value{id}") {
            bail!("row {id} is {v:?}");
        }
        Ok(())
    })
    .await
}

/// Waits until the proxy at `proxy_ip` routes to the writable primary at `master_ip`.
async fn wait_routed_to(proxy_ip: &str, master_ip: &str, limit: Duration) -> Result<()> {
    wait_for(
        &format!("proxy {proxy_ip} to route to {master_ip}"),
        limit,
        async || {
            let rows = pg::query_rows_at(
                proxy_ip,
                PG_PORT,
                "select host(inet_server_addr()), pg_is_in_recovery()::text",
            )
            .await?;
            let row = rows.first().context("no row")?;
            match (row[0].as_deref(), row[1].as_deref()) {
                (Some(addr), Some("false")) if addr == master_ip => Ok(()),
                other => bail!("routed to {other:?}"),
            }
        },
    )
    .await
}

fn keeper_ip(net: &Network, i: usize) -> String {
    net.ip(20 + i as u8)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs a Docker engine and the images of scripts/image.sh; scripts/test.sh runs it"]
async fn container_failover() -> Result<()> {
    let image = env_or("STOLON_IT_IMAGE", "stolon-rs:ci");
    let etcd_image = env_or("STOLON_IT_ETCD_IMAGE", "stolon-rs-etcd:ci");
    let t0 = Instant::now();
    let mut d = Docker::new().await?;
    d.require_image(&image).await?;
    d.require_image(&etcd_image).await?;
    let net = d.create_network("net").await?;
    eprintln!(
        "run {} on network {} ({})",
        d.run_id(),
        net.name,
        net.subnet()
    );
    let on_net = |ip: String| Some((net.name.clone(), ip));

    // etcd: three members with fixed addresses.
    let etcd_ips: Vec<String> = (0..3).map(|i| net.ip(10 + i)).collect();
    let initial = etcd_ips
        .iter()
        .enumerate()
        .map(|(i, ip)| format!("etcd{i}=http://{ip}:2380"))
        .collect::<Vec<_>>()
        .join(",");
    let mut etcd_ids = Vec::new();
    for (i, ip) in etcd_ips.iter().enumerate() {
        let name = format!("etcd{i}");
        let args = vec![
            "--name".into(),
            name.clone(),
            "--data-dir".into(),
            "/tmp/etcd".into(),
            "--listen-client-urls".into(),
            format!("http://{ip}:2379"),
            "--advertise-client-urls".into(),
            format!("http://{ip}:2379"),
            "--listen-peer-urls".into(),
            format!("http://{ip}:2380"),
            "--initial-advertise-peer-urls".into(),
            format!("http://{ip}:2380"),
            "--initial-cluster".into(),
            initial.clone(),
            "--initial-cluster-state".into(),
            "new".into(),
            "--initial-cluster-token".into(),
            d.run_id().to_string(),
        ];
        let spec = ContainerSpec {
            name,
            image: etcd_image.clone(),
            network: on_net(ip.clone()),
            args,
            ..Default::default()
        };
        etcd_ids.push(d.run(&spec).await?);
    }
    let endpoints: Vec<String> = etcd_ips
        .iter()
        .map(|ip| format!("http://{ip}:2379"))
        .collect();
    let store_flags = [
        "--cluster-name".to_string(),
        CLUSTER.into(),
        "--store-backend".into(),
        "etcdv3".into(),
        "--store-endpoints".into(),
        endpoints.join(","),
    ];

    // The test reads clusterdata with the store client, from the host, on the network's
    // addresses. A read needs a quorum, so it answering means the members reach each other.
    let store_cfg = StoreConfig {
        backend: StoreBackend::EtcdV3,
        endpoints: endpoints.clone(),
        timeout: Duration::from_secs(5),
        prefix: "stolon/cluster".into(),
        cluster_name: CLUSTER.into(),
        cert_file: None,
        key_file: None,
        ca_file: None,
        skip_tls_verify: false,
        kube_resource_kind: None,
    };
    let (store, _election) = wait_for("the store client to connect", START_LIMIT, async || {
        stolon_store::connect(&store_cfg)
            .await
            .map_err(|e| anyhow::anyhow!("{e}"))
    })
    .await?;
    wait_for(
        "the etcd members to form a cluster (do containers on the test network reach each \
         other? the engine sets the FORWARD policy to DROP)",
        START_LIMIT,
        async || {
            store
                .get_cluster_data()
                .await
                .map(|_| ())
                .map_err(|e| anyhow::anyhow!("{e}"))
        },
    )
    .await?;

    // Keepers on named volumes; passwords through the environment (not on a command line).
    let mut keeper_ids = Vec::new();
    for i in 0..KEEPERS {
        let vol = d.create_volume(&format!("keeper{i}")).await?;
        let ip = keeper_ip(&net, i);
        let mut args = s(&["stolon-keeper"]);
        args.extend(store_flags.iter().cloned());
        args.extend([
            "--uid".into(),
            format!("keeper{i}"),
            "--data-dir".into(),
            "/stolon-data".into(),
            "--pg-listen-address".into(),
            ip.clone(),
            "--pg-port".into(),
            PG_PORT.to_string(),
            "--pg-su-username".into(),
            SU_USER.into(),
            "--pg-repl-username".into(),
            REPL_USER.into(),
        ]);
        let spec = ContainerSpec {
            name: format!("keeper{i}"),
            image: image.clone(),
            network: on_net(ip),
            volumes: vec![(vol, "/stolon-data".into())],
            env: vec![
                ("STKEEPER_PG_SU_PASSWORD".into(), SU_PASSWORD.into()),
                ("STKEEPER_PG_REPL_PASSWORD".into(), REPL_PASSWORD.into()),
            ],
            args,
        };
        keeper_ids.push(d.run(&spec).await?);
    }
    let mut sentinel_ids = Vec::new();
    for i in 0..2 {
        let mut args = s(&["stolon-sentinel"]);
        args.extend(store_flags.iter().cloned());
        let spec = ContainerSpec {
            name: format!("sentinel{i}"),
            image: image.clone(),
            network: on_net(net.ip(30 + i)),
            args,
            ..Default::default()
        };
        sentinel_ids.push(d.run(&spec).await?);
    }
    let proxy_ips: Vec<String> = (0..2).map(|i| net.ip(40 + i)).collect();
    for (i, ip) in proxy_ips.iter().enumerate() {
        let mut args = s(&["stolon-proxy"]);
        args.extend(store_flags.iter().cloned());
        args.extend([
            "--listen-address".into(),
            ip.clone(),
            "--port".into(),
            PG_PORT.to_string(),
        ]);
        let spec = ContainerSpec {
            name: format!("proxy{i}"),
            image: image.clone(),
            network: on_net(ip.clone()),
            args,
            ..Default::default()
        };
        d.run(&spec).await?;
    }

    // `stolonctl init` from inside a sentinel's container, as an operator would.
    let spec = test_spec(json!({})).to_string();
    let mut init = vec!["stolonctl"];
    init.extend(store_flags.iter().map(String::as_str));
    init.extend(["init", "--yes", spec.as_str()]);
    d.exec(&sentinel_ids[0], &init).await?;

    let master = wait_for("a master keeper", START_LIMIT, async || {
        master_keeper(&cluster_data(store.as_ref()).await?)
    })
    .await?;
    let m: usize = master
        .strip_prefix("keeper")
        .and_then(|n| n.parse().ok())
        .with_context(|| format!("unexpected master keeper uid {master:?}"))?;
    let master_ip = keeper_ip(&net, m);
    eprintln!("master: {master} at {master_ip}");
    wait_for("two streaming standbys", START_LIMIT, async || {
        let v = pg::query_value_at(
            &master_ip,
            PG_PORT,
            "select count(*) from pg_stat_replication where state = 'streaming'",
        )
        .await?;
        if v.parse::<usize>().unwrap_or(0) >= 2 {
            Ok(())
        } else {
            bail!("{v} streaming")
        }
    })
    .await?;

    // A row through proxy 0, replicated to both standbys before the kill.
    for ip in &proxy_ips {
        wait_routed_to(ip, &master_ip, START_LIMIT).await?;
    }
    wait_for("the row written through proxy 0", START_LIMIT, async || {
        pg::query_rows_at(
            &proxy_ips[0],
            PG_PORT,
            "create table if not exists table01 (id int primary key, value text); \
             insert into table01 values (1, 'value1') on conflict (id) do nothing",
        )
        .await
        .map(|_| ())
    })
    .await?;
    for i in (0..KEEPERS).filter(|&i| i != m) {
        wait_streaming_standby(&keeper_ip(&net, i), 1, START_LIMIT).await?;
    }
    eprintln!("cluster ready after {:?}", t0.elapsed());

    // The fault: the master keeper's container dies with its PostgreSQL.
    let killed_at = Instant::now();
    d.kill(&keeper_ids[m]).await?;
    if d.is_running(&keeper_ids[m]).await? {
        bail!("keeper{m}'s container still runs after docker kill");
    }
    let new_master = wait_for(
        "a sentinel to elect a standby",
        FAILOVER_LIMIT,
        async || {
            let k = master_keeper(&cluster_data(store.as_ref()).await?)?;
            if k == master {
                bail!("master is still {k}");
            }
            Ok(k)
        },
    )
    .await?;
    let n: usize = new_master
        .strip_prefix("keeper")
        .and_then(|x| x.parse().ok())
        .with_context(|| format!("unexpected master keeper uid {new_master:?}"))?;
    let new_ip = keeper_ip(&net, n);
    for ip in &proxy_ips {
        wait_routed_to(ip, &new_ip, FAILOVER_LIMIT).await?;
    }
    eprintln!(
        "new master {new_master} at {new_ip}, routed by both proxies {:?} after the kill",
        killed_at.elapsed()
    );
    let v = pg::query_value_at(
        &proxy_ips[1],
        PG_PORT,
        "select value from table01 where id = 1",
    )
    .await?;
    assert_eq!(v, "value1", "the row written before the failover");
    pg::query_rows_at(
        &proxy_ips[1],
        PG_PORT,
        "insert into table01 values (2, 'value2')",
    )
    .await?;

    // The old master's container again, on the same volume and address: it rejoins as a
    // standby of the new master and receives the row written after the failover.
    d.start(&keeper_ids[m]).await?;
    wait_streaming_standby(&master_ip, 2, REJOIN_LIMIT).await?;
    wait_for(
        "the new master to stream to the old one",
        FAILOVER_LIMIT,
        async || {
            let v = pg::query_value_at(
                &new_ip,
                PG_PORT,
                &format!(
                    "select count(*) from pg_stat_replication \
                     where state = 'streaming' and client_addr = '{master_ip}'"
                ),
            )
            .await?;
            if v == "1" {
                Ok(())
            } else {
                bail!("{v} streaming replication connections from {master_ip}")
            }
        },
    )
    .await?;
    eprintln!("old master rejoined; whole story {:?}", t0.elapsed());
    d.pass();
    Ok(())
}
