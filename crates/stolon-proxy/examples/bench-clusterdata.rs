//! Prints the clusterdata JSON `bench/proxy-bench.sh` writes to etcd to benchmark the real
//! stolon-proxy: one healthy master DB at `--master host:port`, named in `proxy.spec`, with the
//! proxies given by `--enable` (repeatable) enabled.

use anyhow::{Context, bail};
use stolon_core::Timestamp;
use stolon_core::model::*;

fn main() -> anyhow::Result<()> {
    let mut master: Option<String> = None;
    let mut enabled = Vec::new();
    let mut args = std::env::args().skip(1);
    while let Some(flag) = args.next() {
        let value = args
            .next()
            .with_context(|| format!("{flag} needs a value"))?;
        match flag.as_str() {
            "--master" => master = Some(value),
            "--enable" => enabled.push(value),
            other => bail!("unknown flag {other}"),
        }
    }
    let master = master.context("--master host:port is required")?;
    let (host, port) = master
        .rsplit_once(':')
        .context("--master must be host:port")?;

    let cluster = Cluster {
        uid: "bench".into(),
        generation: 1,
        spec: Some(ClusterSpec::new_init(ClusterInitMode::New)),
        status: ClusterStatus {
            phase: Some(ClusterPhase::Normal),
            master: "m".into(),
            ..Default::default()
        },
        ..Default::default()
    };
    let mut cd = ClusterData::new(cluster, Timestamp::zero());
    cd.dbs.insert(
        "m".into(),
        Db {
            uid: "m".into(),
            generation: 1,
            spec: Some(DbSpec {
                keeper_uid: "k".into(),
                role: Some(DbRole::Master),
                ..Default::default()
            }),
            status: DbStatus {
                healthy: true,
                listen_address: host.into(),
                port: port.into(),
                ..Default::default()
            },
            ..Default::default()
        },
    );
    cd.proxy = Some(Proxy {
        generation: 1,
        spec: ProxySpec {
            master_db_uid: "m".into(),
            enabled_proxies: enabled,
        },
        ..Default::default()
    });
    println!("{}", serde_json::to_string(&cd)?);
    Ok(())
}
